//! Manifest parsing and resolution: from a reference to the list of blobs (configs and layers)
//! to preheat, through OCI indexes / Docker manifest lists and OCI / Docker schema-2 manifests.

use std::collections::HashSet;

use damselfly_types::id::Sha256Digest;
use serde::{Deserialize, Serialize};

use super::reference::{ImageRef, Platform, PlatformFilter, Reference};
use super::registry::{RegistryClient, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::PreheatError;

/// A content descriptor (the fields preheat needs).
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Index entries: the platform of the manifest.
    #[serde(default)]
    pub platform: Option<PlatformDesc>,
    /// Foreign layers: where they live instead of the registry.
    #[serde(default)]
    pub urls: Vec<String>,
}

/// A platform as an index entry describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct PlatformDesc {
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformDesc {
    fn platform(&self) -> Platform {
        Platform {
            os: self.os.to_ascii_lowercase(),
            architecture: self.architecture.to_ascii_lowercase(),
            variant: self.variant.as_ref().filter(|v| !v.is_empty()).map(|v| v.to_ascii_lowercase()),
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// An OCI index or Docker manifest list.
    Index(Vec<Descriptor>),
    /// An OCI or Docker schema-2 image manifest.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layers, in order.
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest; its media type comes from `Content-Type` when that names a manifest type,
/// else from the `mediaType` field, else from its shape.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<(String, Manifest), PreheatError> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| PreheatError::Registry(format!("the registry sent a manifest that is not valid JSON: {e}")))?;
    let generic = |t: &&str| matches!(*t, "application/json" | "text/plain" | "application/octet-stream");
    let inferred = match (&raw.manifests, &raw.config) {
        (Some(_), _) => Some(OCI_INDEX),
        (None, Some(_)) => Some(OCI_MANIFEST),
        _ => None,
    };
    let media_type = content_type
        .filter(|t| !generic(t))
        .map(str::to_owned)
        .or(raw.media_type.clone())
        .or(inferred.map(str::to_owned))
        .unwrap_or_default();
    if raw.schema_version == Some(1) || media_type.contains("distribution.manifest.v1") {
        return Err(PreheatError::Unsupported(
            "Docker schema 1 manifests are not supported: push the image again with a current client".into(),
        ));
    }
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let list = raw.manifests.ok_or_else(|| malformed(&media_type, "no \"manifests\""))?;
            Ok((media_type, Manifest::Index(list)))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.ok_or_else(|| malformed(&media_type, "no \"config\""))?;
            Ok((media_type, Manifest::Image { config, layers: raw.layers.unwrap_or_default() }))
        }
        "" => Err(PreheatError::Unsupported("the registry sent a manifest without a media type".into())),
        other => Err(PreheatError::Unsupported(format!(
            "unsupported manifest media type {other:?}: supported are {OCI_INDEX}, {DOCKER_LIST}, {OCI_MANIFEST} \
             and {DOCKER_MANIFEST}"
        ))),
    }
}

fn malformed(media_type: &str, what: &str) -> PreheatError {
    PreheatError::Registry(format!("the registry sent a malformed {media_type} manifest: {what}"))
}

/// What a blob is to its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// The image config.
    Config,
    /// A filesystem layer.
    Layer,
}

/// One blob to preheat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobSpec {
    /// Its digest (the task id of its fetch).
    pub digest: Sha256Digest,
    /// Its size, as the manifest says.
    pub size: u64,
    /// Config or layer.
    pub kind: BlobKind,
    /// The platform(s) of the manifest(s) it belongs to, when known.
    pub platform: Option<String>,
}

/// A resolved image: its manifest digest and the blobs to preheat.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Digest of the manifest the reference resolved to (index or image manifest).
    pub manifest_digest: Sha256Digest,
    /// Its media type.
    pub media_type: String,
    /// The platforms selected (empty for a single-platform manifest).
    pub platforms: Vec<String>,
    /// Blobs, configs and layers, each once.
    pub blobs: Vec<BlobSpec>,
}

/// Resolves `image` at the registry: the manifest (checked against its digest when the reference
/// is one), then the selected platforms' manifests when it is an index.
pub async fn resolve(
    client: &RegistryClient,
    image: &ImageRef,
    filter: &PlatformFilter,
) -> Result<Resolved, PreheatError> {
    let top = client.manifest(&image.reference.to_string()).await?;
    if let Reference::Digest(want) = &image.reference {
        check_digest(&top.digest, want, &image.to_string())?;
    }
    let (media_type, manifest) = parse(top.content_type.as_deref(), &top.body)?;
    let mut resolved = Resolved { manifest_digest: top.digest, media_type, platforms: Vec::new(), blobs: Vec::new() };
    match manifest {
        Manifest::Image { config, layers } => add_image(&mut resolved.blobs, &config, &layers, None)?,
        Manifest::Index(entries) => {
            let chosen = select(&entries, filter, image)?;
            for (desc, platform) in chosen {
                let want = parse_digest(&desc.digest)?;
                let child = client.manifest(&desc.digest).await?;
                check_digest(&child.digest, &want, &format!("{image} ({platform})"))?;
                match parse(child.content_type.as_deref(), &child.body)? {
                    (_, Manifest::Image { config, layers }) => {
                        add_image(&mut resolved.blobs, &config, &layers, Some(&platform))?
                    }
                    (_, Manifest::Index(_)) => {
                        return Err(PreheatError::Unsupported(format!(
                            "{image}: the {platform} entry is itself an index; nested indexes are not supported"
                        )))
                    }
                }
                resolved.platforms.push(platform);
            }
        }
    }
    dedup(&mut resolved.blobs);
    Ok(resolved)
}

/// The index entries wanted by `filter`, with their platform names.
fn select<'a>(
    entries: &'a [Descriptor],
    filter: &PlatformFilter,
    image: &ImageRef,
) -> Result<Vec<(&'a Descriptor, String)>, PreheatError> {
    let named = |d: &Descriptor| d.platform.as_ref().map(PlatformDesc::platform);
    let mut chosen: Vec<(&Descriptor, String)> = entries
        .iter()
        .filter(|d| filter.wants(named(d).as_ref()))
        .map(|d| (d, named(d).map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())))
        .collect();
    if let PlatformFilter::One(_) = filter {
        chosen.truncate(1);
    }
    if chosen.is_empty() {
        let available: Vec<String> = entries.iter().filter_map(named).map(|p| p.to_string()).collect();
        return Err(PreheatError::NotFound(format!(
            "image {image} has no {filter} manifest (it has: {})",
            if available.is_empty() { "none".to_owned() } else { available.join(", ") }
        )));
    }
    Ok(chosen)
}

fn add_image(
    blobs: &mut Vec<BlobSpec>,
    config: &Descriptor,
    layers: &[Descriptor],
    platform: Option<&str>,
) -> Result<(), PreheatError> {
    let platform = platform.map(str::to_owned);
    blobs.push(BlobSpec {
        digest: parse_digest(&config.digest)?,
        size: config.size,
        kind: BlobKind::Config,
        platform: platform.clone(),
    });
    for layer in layers {
        // Foreign (non-distributable) layers live elsewhere; the registry does not serve them.
        let foreign = layer.media_type.contains("foreign") || layer.media_type.contains("nondistributable");
        if foreign && !layer.urls.is_empty() {
            continue;
        }
        blobs.push(BlobSpec {
            digest: parse_digest(&layer.digest)?,
            size: layer.size,
            kind: BlobKind::Layer,
            platform: platform.clone(),
        });
    }
    Ok(())
}

/// Keeps the first occurrence of each digest; a blob shared by platforms lists all of them.
fn dedup(blobs: &mut Vec<BlobSpec>) {
    let mut seen = HashSet::new();
    let mut merged: Vec<BlobSpec> = Vec::with_capacity(blobs.len());
    for b in blobs.drain(..) {
        if seen.insert(b.digest) {
            merged.push(b);
        } else if let Some(first) = merged.iter_mut().find(|m| m.digest == b.digest) {
            if let (Some(p), Some(q)) = (&mut first.platform, &b.platform) {
                if !p.split(',').any(|x| x == q) {
                    p.push(',');
                    p.push_str(q);
                }
            }
        }
    }
    *blobs = merged;
}

fn parse_digest(d: &str) -> Result<Sha256Digest, PreheatError> {
    d.parse::<Sha256Digest>().map_err(|e| PreheatError::Unsupported(format!("the manifest references {d:?}: {e}")))
}

fn check_digest(got: &Sha256Digest, want: &Sha256Digest, what: &str) -> Result<(), PreheatError> {
    if got == want {
        Ok(())
    } else {
        Err(PreheatError::Registry(format!(
            "the registry served a manifest for {what} whose digest is {got}, not {want}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn image_json(media_type: Option<&str>, config: u8, layers: &[u8]) -> String {
        let layers: Vec<String> = layers
            .iter()
            .map(|l| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{l}}}"#,
                    d(*l)
                )
            })
            .collect();
        let mt = media_type.map(|m| format!(r#""mediaType":"{m}","#)).unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":[{}]}}"#,
            d(config),
            layers.join(",")
        )
    }

    #[test]
    fn media_types_come_from_header_field_or_shape() {
        let body = image_json(Some(DOCKER_MANIFEST), 1, &[2, 3]);
        let (mt, m) = parse(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        assert!(matches!(m, Manifest::Image { ref layers, .. } if layers.len() == 2));
        assert_eq!(parse(Some("application/json"), body.as_bytes()).unwrap().0, DOCKER_MANIFEST);
        let bare = image_json(None, 1, &[2]);
        assert_eq!(parse(None, bare.as_bytes()).unwrap().0, OCI_MANIFEST);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":1}}]}}"#, d(9));
        assert!(
            matches!(parse(None, index.as_bytes()).unwrap(), (ref t, Manifest::Index(ref l)) if t == OCI_INDEX && l.len() == 1)
        );
        assert_eq!(parse(Some(DOCKER_LIST), index.as_bytes()).unwrap().0, DOCKER_LIST);
    }

    #[test]
    fn unsupported_and_malformed_manifests_are_refused() {
        let v1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let e = parse(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), v1.as_bytes()).unwrap_err();
        assert!(matches!(e, PreheatError::Unsupported(ref m) if m.contains("schema 1")), "{e}");
        let e = parse(Some("application/vnd.example.thing+json"), b"{}").unwrap_err();
        assert!(matches!(e, PreheatError::Unsupported(ref m) if m.contains("vnd.example.thing")), "{e}");
        assert!(matches!(parse(None, b"{}").unwrap_err(), PreheatError::Unsupported(_)));
        assert!(matches!(parse(None, b"not json").unwrap_err(), PreheatError::Registry(_)));
        let no_config = format!(r#"{{"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        assert!(matches!(parse(None, no_config.as_bytes()).unwrap_err(), PreheatError::Registry(_)));
    }

    fn entry(n: u8, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d(n),
            size: 1,
            platform: Some(PlatformDesc { os: os.into(), architecture: arch.into(), variant: variant.map(Into::into) }),
            urls: vec![],
        }
    }

    #[test]
    fn platform_selection_picks_one_or_all() {
        let image = ImageRef::parse("localhost:5000/x:1").unwrap();
        let entries = vec![
            entry(1, "linux", "amd64", None),
            entry(2, "linux", "arm64", Some("v8")),
            entry(3, "linux", "arm", Some("v7")),
            entry(4, "unknown", "unknown", None),
        ];
        let pick = |f: &str| {
            select(&entries, &PlatformFilter::parse(f).unwrap(), &image)
                .map(|v| v.into_iter().map(|(d, p)| (d.digest.clone(), p)).collect::<Vec<_>>())
        };
        assert_eq!(pick("linux/amd64").unwrap(), vec![(d(1), "linux/amd64".to_owned())]);
        assert_eq!(pick("linux/arm64").unwrap(), vec![(d(2), "linux/arm64/v8".to_owned())]);
        assert_eq!(pick("all").unwrap().len(), 3, "attestations (unknown/unknown) are skipped");
        let e = pick("linux/s390x").unwrap_err();
        assert!(
            matches!(e, PreheatError::NotFound(ref m) if m.contains("linux/s390x") && m.contains("linux/arm/v7")),
            "{e}"
        );
    }

    #[test]
    fn shared_blobs_are_listed_once_and_foreign_layers_skipped() {
        let mut blobs = Vec::new();
        let cfg = |n: u8| Descriptor { media_type: String::new(), digest: d(n), size: 1, platform: None, urls: vec![] };
        let mut foreign = cfg(9);
        foreign.media_type = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip".into();
        foreign.urls = vec!["https://example.invalid/x".into()];
        add_image(&mut blobs, &cfg(1), &[cfg(2), cfg(3), foreign], Some("linux/amd64")).unwrap();
        add_image(&mut blobs, &cfg(4), &[cfg(2), cfg(5)], Some("linux/arm64")).unwrap();
        dedup(&mut blobs);
        let digests: Vec<_> = blobs.iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(digests, vec![d(1), d(2), d(3), d(4), d(5)]);
        assert_eq!(blobs[1].platform.as_deref(), Some("linux/amd64,linux/arm64"));
        assert_eq!(blobs[0].kind, BlobKind::Config);
        let mut bad = cfg(1);
        bad.digest = "sha512:abcd".into();
        assert!(matches!(add_image(&mut blobs, &bad, &[], None), Err(PreheatError::Unsupported(_))));
    }
}
