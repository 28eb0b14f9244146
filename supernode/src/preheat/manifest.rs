//! Manifest parsing and resolution: from a reference to the list of blobs (configs and layers)
//! to preheat, through OCI indexes / Docker manifest lists and OCI / Docker schema-2 manifests.

use std::collections::HashSet;

use damselfly_types::id::Sha256Digest;
use damselfly_types::preheat::BlobKind;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::reference::{ImageRef, Platform, PlatformFilter, Reference};
use super::registry::{RegistryClient, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::PreheatError;

/// What the `mediaType` is decided from: the fields that say which kind of manifest a body is.
/// The body is then read whole into `oci-spec`'s [`ImageIndex`] or [`ImageManifest`], which
/// take Docker's schema-2 manifest lists and manifests as well (same shape, Docker media types).
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
}

/// A parsed manifest (boxed: `oci-spec`'s types are several hundred bytes each).
#[derive(Clone, Debug)]
pub enum Manifest {
    /// An OCI index or Docker manifest list.
    Index(Box<ImageIndex>),
    /// An OCI or Docker schema-2 image manifest.
    Image(Box<ImageManifest>),
}

/// Parses a manifest; its media type comes from `Content-Type` when that names a manifest type,
/// else from the `mediaType` field, else from its shape.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<(String, Manifest), PreheatError> {
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| PreheatError::Registry(format!("the registry sent a manifest that is not valid JSON: {e}")))?;
    let generic = |t: &&str| matches!(*t, "application/json" | "text/plain" | "application/octet-stream");
    let inferred = match (&probe.manifests, &probe.config) {
        (Some(_), _) => Some(OCI_INDEX),
        (None, Some(_)) => Some(OCI_MANIFEST),
        _ => None,
    };
    let media_type = content_type
        .filter(|t| !generic(t))
        .map(str::to_owned)
        .or(probe.media_type)
        .or(inferred.map(str::to_owned))
        .unwrap_or_default();
    if probe.schema_version == Some(1) || media_type.contains("distribution.manifest.v1") {
        return Err(PreheatError::Unsupported(
            "Docker schema 1 manifests are not supported: push the image again with a current client".into(),
        ));
    }
    let malformed = |e: serde_json::Error| malformed(&media_type, &e.to_string());
    let manifest = match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => Manifest::Index(Box::new(serde_json::from_slice(body).map_err(malformed)?)),
        OCI_MANIFEST | DOCKER_MANIFEST => Manifest::Image(Box::new(serde_json::from_slice(body).map_err(malformed)?)),
        "" => return Err(PreheatError::Unsupported("the registry sent a manifest without a media type".into())),
        other => {
            return Err(PreheatError::Unsupported(format!(
                "unsupported manifest media type {other:?}: supported are {OCI_INDEX}, {DOCKER_LIST}, \
                 {OCI_MANIFEST} and {DOCKER_MANIFEST}"
            )))
        }
    };
    Ok((media_type, manifest))
}

fn malformed(media_type: &str, what: &str) -> PreheatError {
    PreheatError::Registry(format!("the registry sent a malformed {media_type} manifest: {what}"))
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
        Manifest::Image(m) => add_image(&mut resolved.blobs, &m, None)?,
        Manifest::Index(index) => {
            let chosen = select(index.manifests(), filter, image)?;
            for (desc, platform) in chosen {
                let want = parse_digest(desc)?;
                let child = client.manifest(desc.digest().as_ref()).await?;
                check_digest(&child.digest, &want, &format!("{image} ({platform})"))?;
                match parse(child.content_type.as_deref(), &child.body)? {
                    (_, Manifest::Image(m)) => add_image(&mut resolved.blobs, &m, Some(&platform))?,
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
    let named = |d: &Descriptor| {
        d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string().to_ascii_lowercase(),
            architecture: p.architecture().to_string().to_ascii_lowercase(),
            variant: p.variant().as_ref().filter(|v| !v.is_empty()).map(|v| v.to_ascii_lowercase()),
        })
    };
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

fn add_image(blobs: &mut Vec<BlobSpec>, manifest: &ImageManifest, platform: Option<&str>) -> Result<(), PreheatError> {
    let platform = platform.map(str::to_owned);
    let config = manifest.config();
    blobs.push(BlobSpec {
        digest: parse_digest(config)?,
        size: config.size(),
        kind: BlobKind::Config,
        platform: platform.clone(),
    });
    for layer in manifest.layers() {
        // Foreign (non-distributable) layers live elsewhere; the registry does not serve them.
        if is_foreign(layer.media_type()) && layer.urls().as_ref().is_some_and(|u| !u.is_empty()) {
            continue;
        }
        blobs.push(BlobSpec {
            digest: parse_digest(layer)?,
            size: layer.size(),
            kind: BlobKind::Layer,
            platform: platform.clone(),
        });
    }
    Ok(())
}

/// OCI's non-distributable layer types and Docker's foreign ones.
fn is_foreign(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => true,
        MediaType::Other(t) => t.contains("foreign") || t.contains("nondistributable"),
        _ => false,
    }
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

/// The descriptor's digest as a task id: only sha256 is supported.
fn parse_digest(desc: &Descriptor) -> Result<Sha256Digest, PreheatError> {
    let d = desc.digest().as_ref();
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

    fn layer_json(media_type: &str, n: u8, urls: &[&str]) -> String {
        let urls = if urls.is_empty() { String::new() } else { format!(r#","urls":{urls:?}"#) };
        format!(r#"{{"mediaType":"{media_type}","digest":"{}","size":{n}{urls}}}"#, d(n))
    }

    fn image_json(media_type: Option<&str>, config: u8, layers: &[u8]) -> String {
        let layers: Vec<String> =
            layers.iter().map(|l| layer_json("application/vnd.oci.image.layer.v1.tar+gzip", *l, &[])).collect();
        let mt = media_type.map(|m| format!(r#""mediaType":"{m}","#)).unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":[{}]}}"#,
            d(config),
            layers.join(",")
        )
    }

    fn image(body: &str) -> ImageManifest {
        match parse(None, body.as_bytes()).unwrap().1 {
            Manifest::Image(m) => *m,
            Manifest::Index(_) => panic!("an index"),
        }
    }

    #[test]
    fn media_types_come_from_header_field_or_shape() {
        let body = image_json(Some(DOCKER_MANIFEST), 1, &[2, 3]);
        let (mt, m) = parse(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        assert!(matches!(m, Manifest::Image(ref m) if m.layers().len() == 2));
        assert_eq!(parse(Some("application/json"), body.as_bytes()).unwrap().0, DOCKER_MANIFEST);
        let bare = image_json(None, 1, &[2]);
        assert_eq!(parse(None, bare.as_bytes()).unwrap().0, OCI_MANIFEST);
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, layer_json(OCI_MANIFEST, 9, &[]));
        assert!(
            matches!(parse(None, index.as_bytes()).unwrap(), (ref t, Manifest::Index(ref i)) if t == OCI_INDEX && i.manifests().len() == 1)
        );
        assert_eq!(parse(Some(DOCKER_LIST), index.as_bytes()).unwrap().0, DOCKER_LIST);
    }

    /// Docker's schema-2 shapes as `docker push` writes them: `oci-spec`'s OCI types read them.
    #[test]
    fn docker_schema2_manifests_and_lists_parse() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
               "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"{}"}},
               "layers":[{},{}]}}"#,
            d(1),
            layer_json("application/vnd.docker.image.rootfs.diff.tar.gzip", 2, &[]),
            layer_json("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", 3, &["https://example.invalid/l"]),
        );
        let (mt, m) = parse(Some(DOCKER_MANIFEST), manifest.as_bytes()).unwrap();
        assert_eq!(mt, DOCKER_MANIFEST);
        let Manifest::Image(m) = m else { panic!("not an image manifest") };
        let mut blobs = Vec::new();
        add_image(&mut blobs, &m, None).unwrap();
        let digests: Vec<_> = blobs.iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(digests, vec![d(1), d(2)], "the foreign layer is skipped");
        assert_eq!(blobs[0].size, 1469);

        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
                {{"mediaType":"{DOCKER_MANIFEST}","size":528,"digest":"{}","platform":{{"architecture":"amd64","os":"linux"}}}},
                {{"mediaType":"{DOCKER_MANIFEST}","size":528,"digest":"{}","platform":{{"architecture":"arm","os":"linux","variant":"v7","features":["x"]}}}},
                {{"mediaType":"{DOCKER_MANIFEST}","size":528,"digest":"{}","platform":{{"architecture":"amd64","os":"windows","os.version":"10.0.17763.1"}}}}]}}"#,
            d(4),
            d(5),
            d(6)
        );
        let (mt, m) = parse(Some(DOCKER_LIST), list.as_bytes()).unwrap();
        assert_eq!(mt, DOCKER_LIST);
        let Manifest::Index(index) = m else { panic!("not a list") };
        let image = ImageRef::parse("localhost:5000/x:1").unwrap();
        let all = select(index.manifests(), &PlatformFilter::All, &image).unwrap();
        let names: Vec<_> = all.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm/v7", "windows/amd64"]);
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
        let no_config = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#);
        let e = parse(None, no_config.as_bytes()).unwrap_err();
        assert!(matches!(e, PreheatError::Registry(ref m) if m.contains("config")), "{e}");
        let no_list = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#);
        assert!(matches!(parse(None, no_list.as_bytes()).unwrap_err(), PreheatError::Registry(_)));
    }

    fn entry(n: u8, os: &str, arch: &str, variant: Option<&str>) -> Descriptor {
        let variant = variant.map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
        let json = format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"{variant}}}}}"#,
            d(n)
        );
        serde_json::from_str(&json).unwrap()
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
                .map(|v| v.into_iter().map(|(d, p)| (d.digest().to_string(), p)).collect::<Vec<_>>())
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
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let with_layers = |config: u8, layers: &[String]| {
            image(&format!(
                r#"{{"schemaVersion":2,"config":{},"layers":[{}]}}"#,
                layer_json("application/vnd.oci.image.config.v1+json", config, &[]),
                layers.join(",")
            ))
        };
        let foreign = layer_json("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", 9, &["https://x/y"]);
        let amd = with_layers(1, &[layer_json(gz, 2, &[]), layer_json(gz, 3, &[]), foreign]);
        let arm = with_layers(4, &[layer_json(gz, 2, &[]), layer_json(gz, 5, &[])]);
        let mut blobs = Vec::new();
        add_image(&mut blobs, &amd, Some("linux/amd64")).unwrap();
        add_image(&mut blobs, &arm, Some("linux/arm64")).unwrap();
        dedup(&mut blobs);
        let digests: Vec<_> = blobs.iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(digests, vec![d(1), d(2), d(3), d(4), d(5)]);
        assert_eq!(blobs[1].platform.as_deref(), Some("linux/amd64,linux/arm64"));
        assert_eq!(blobs[0].kind, BlobKind::Config);
        let sha512 = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"sha512:{}","size":1}},"layers":[]}}"#,
            "ab".repeat(64)
        );
        assert!(matches!(add_image(&mut blobs, &image(&sha512), None), Err(PreheatError::Unsupported(_))));
    }
}
