//! Image references (`registry/name:tag`, `name@sha256:...`), Harbor-style manifest URLs
//! (`https://host/v2/name/manifests/tag`) and platform filters (`linux/amd64`, `all`).
//!
//! References are parsed by `oci-spec`'s [`oci_spec::distribution::Reference`], the distribution
//! reference grammar engines use: the first path component is a registry when it contains a `.`
//! or a `:` or is `localhost`; otherwise the image is on Docker Hub, where one-component names
//! live under `library/`. No tag and no digest means `latest`; with both, the digest wins.
//! Repository names in manifest URLs are checked by [`damselfly_types::repository`], the check
//! the dfdaemon's mirror applies too.

use std::fmt;

use damselfly_types::id::Sha256Digest;

use super::PreheatError;

/// The registry name that stands for Docker Hub in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's registry API host (what `docker.io` and `index.docker.io` resolve to).
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Longest tag the distribution spec allows.
const MAX_TAG: usize = 128;

/// A tag or a manifest digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A tag (`latest`, `v1.2`).
    Tag(String),
    /// A manifest digest: the resolved manifest must hash to it.
    Digest(Sha256Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => f.write_str(t),
            Self::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (`--insecure-registry`, or a manifest URL that says `http://`).
    Http,
    /// HTTPS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A parsed image reference. Never holds credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry as named (`docker.io`, `localhost:5000`, `harbor.example.com`).
    pub registry: String,
    /// Repository (`library/alpine`, `team/app`).
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
    /// The scheme a manifest URL named; `None`: `--insecure-registry` decides.
    pub scheme: Option<Scheme>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

impl ImageRef {
    /// Parses `[registry/]name[:tag][@sha256:hex]`, or an `http(s)://host/v2/name/manifests/ref`
    /// URL (what Harbor sends).
    pub fn parse(s: &str) -> Result<Self, PreheatError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("empty image reference"));
        }
        if s.contains("://") {
            return Self::parse_manifest_url(s);
        }
        let parsed = oci_spec::distribution::Reference::try_from(s).map_err(|e| {
            // oci-spec names no part: point at a bad digest or tag, the parts people mistype.
            let (name, digest) = s.split_once('@').map_or((s, None), |(n, d)| (n, Some(d)));
            let tag = name.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t);
            match (digest.map(|d| parse_digest(d, s)), tag.map(|t| validate_tag(t, s))) {
                (Some(Err(reason)), _) | (_, Some(Err(reason))) => reason,
                _ => bad(format!(
                    "bad image reference {s:?}: {e} (expected [REGISTRY[:PORT]/]NAME[:TAG][@sha256:HEX], NAME in \
                     lowercase letters and digits separated by '.', '_', '__', '-' or '/')"
                )),
            }
        })?;
        let reference = match (parsed.digest(), parsed.tag()) {
            (Some(d), _) => Reference::Digest(parse_digest(d, s)?),
            (None, Some(t)) => Reference::Tag(validate_tag(t, s)?.to_owned()),
            (None, None) => Reference::Tag("latest".into()),
        };
        Ok(Self {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            reference,
            scheme: None,
        })
    }

    /// Parses a registry manifest URL, `http(s)://host[:port]/v2/<name>/manifests/<tag|digest>`.
    pub fn parse_manifest_url(s: &str) -> Result<Self, PreheatError> {
        let url = url::Url::parse(s).map_err(|e| bad(format!("invalid manifest URL {s:?}: {e}")))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(bad(format!("unsupported scheme {other:?} in {s:?}: only http and https"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the manifest URL are not accepted: pass them as headers"));
        }
        let host = url.host_str().ok_or_else(|| bad(format!("manifest URL {s:?} has no host")))?;
        let registry = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = url.path();
        let shape = || bad(format!("manifest URL {s:?} is not of the form SCHEME://HOST/v2/NAME/manifests/TAG"));
        let inner = path.strip_prefix("/v2/").ok_or_else(shape)?;
        let (name, reference) = inner.rsplit_once("/manifests/").ok_or_else(shape)?;
        validate_repository(name, s)?;
        let reference = if reference.contains(':') {
            Reference::Digest(parse_digest(reference, s)?)
        } else {
            Reference::Tag(validate_tag(reference, s)?.to_owned())
        };
        Ok(Self { registry, repository: name.to_owned(), reference, scheme: Some(scheme) })
    }

    /// The host (and port) of the registry API: Docker Hub's names map to its API host.
    pub fn api_host(&self) -> &str {
        if is_docker_hub(&self.registry) {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

fn is_docker_hub(registry: &str) -> bool {
    ["docker.io", "index.docker.io", "registry-1.docker.io"].iter().any(|h| h.eq_ignore_ascii_case(registry))
}

fn bad(message: impl Into<String>) -> PreheatError {
    PreheatError::BadRequest(message.into())
}

fn parse_digest(d: &str, whole: &str) -> Result<Sha256Digest, PreheatError> {
    d.parse::<Sha256Digest>().map_err(|e| bad(format!("bad image reference {whole:?}: {e}")))
}

fn validate_repository(name: &str, whole: &str) -> Result<(), PreheatError> {
    damselfly_types::repository::check(name).map_err(|e| bad(format!("bad image reference {whole:?}: {e}")))
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag<'a>(tag: &'a str, whole: &str) -> Result<&'a str, PreheatError> {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let ok = !b.is_empty() && b.len() <= MAX_TAG && word(b[0]) && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok {
        Ok(tag)
    } else {
        Err(bad(format!(
            "bad image reference {whole:?}: {tag:?} is not a tag (letters, digits, '_', '.', '-'; at most 128)"
        )))
    }
}

/// One platform, as OCI indexes describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... when given.
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Which manifests of an index to preheat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformFilter {
    /// Every platform of the index (attestation and other `unknown/unknown` entries excluded).
    All,
    /// One platform; without a variant, the first entry of that os/architecture matches.
    One(Platform),
}

impl Default for PlatformFilter {
    fn default() -> Self {
        Self::One(Platform { os: "linux".into(), architecture: "amd64".into(), variant: None })
    }
}

impl fmt::Display for PlatformFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::One(p) => p.fmt(f),
        }
    }
}

impl PlatformFilter {
    /// Parses `all` or `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, PreheatError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let parts: Vec<&str> = s.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(part_ok) {
            return Err(bad(format!(
                "bad platform {s:?}: expected OS/ARCH[/VARIANT] (e.g. linux/arm64/v8) or \"all\""
            )));
        }
        Ok(Self::One(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        }))
    }

    /// Whether an index entry for `platform` is wanted (`None`: the entry names no platform).
    pub fn wants(&self, platform: Option<&Platform>) -> bool {
        match (self, platform) {
            (Self::All, Some(p)) => p.os != "unknown" && p.architecture != "unknown",
            (Self::All, None) => true,
            (Self::One(_), None) => false,
            (Self::One(want), Some(p)) => {
                want.os == p.os
                    && want.architecture == p.architecture
                    && (want.variant.is_none() || want.variant == p.variant)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(registry: &str, repo: &str, t: &str) -> ImageRef {
        ImageRef {
            registry: registry.into(),
            repository: repo.into(),
            reference: Reference::Tag(t.into()),
            scheme: None,
        }
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_docker_defaults() {
        assert_eq!(ImageRef::parse("alpine").unwrap(), tag("docker.io", "library/alpine", "latest"));
        assert_eq!(ImageRef::parse("alpine:3.19").unwrap(), tag("docker.io", "library/alpine", "3.19"));
        assert_eq!(ImageRef::parse("bitnami/redis:7").unwrap(), tag("docker.io", "bitnami/redis", "7"));
        assert_eq!(ImageRef::parse("docker.io/alpine").unwrap(), tag("docker.io", "library/alpine", "latest"));
        assert_eq!(ImageRef::parse("localhost:5000/x").unwrap(), tag("localhost:5000", "x", "latest"));
        assert_eq!(ImageRef::parse("localhost/x:1").unwrap(), tag("localhost", "x", "1"));
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/team/app:v1.2-rc_1").unwrap(),
            tag("127.0.0.1:5000", "team/app", "v1.2-rc_1")
        );
        assert_eq!(ImageRef::parse("ghcr.io/a/b/c:t").unwrap(), tag("ghcr.io", "a/b/c", "t"));
        let d = ImageRef::parse(&format!("localhost:5000/x:tag@sha256:{HEX}")).unwrap();
        assert_eq!(d.reference, Reference::Digest(format!("sha256:{HEX}").parse().unwrap()));
        assert_eq!(d.to_string(), format!("localhost:5000/x@sha256:{HEX}"));
        assert_eq!(ImageRef::parse("alpine").unwrap().api_host(), "registry-1.docker.io");
        assert_eq!(ImageRef::parse("localhost:5000/x").unwrap().api_host(), "localhost:5000");
        assert_eq!(ImageRef::parse("a.b/c__d/e.f-g---h").unwrap().repository, "c__d/e.f-g---h");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        let format = "invalid reference format";
        for (input, needle) in [
            ("", "empty"),
            ("Alpine", "lowercase"),
            ("localhost:5000/", format),
            ("a//b", format),
            ("-a", format),
            ("a_", format),
            ("a...b", format),
            ("alpine:", "not a tag"),
            ("alpine:.x", "not a tag"),
            ("alpine:a b", "not a tag"),
            ("alpine@sha256:abc", "malformed digest"),
            ("alpine@md5:abc", "unsupported digest algorithm"),
            ("local host:5000/x", format),
            ("reg.io:50x0/x", format),
            ("ftp://host/v2/x/manifests/y", "unsupported scheme"),
        ] {
            let err = ImageRef::parse(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
        let sha512 = format!("alpine@sha512:{HEX}{HEX}");
        let err = ImageRef::parse(&sha512).expect_err("sha512").to_string();
        assert!(err.contains("unsupported digest algorithm"), "{err}");
        assert!(ImageRef::parse("alpine:tägé").is_err(), "tags are ASCII");
        let long = format!("alpine:{}", "x".repeat(129));
        assert!(ImageRef::parse(&long).is_err());
    }

    #[test]
    fn harbor_manifest_urls_parse() {
        let r = ImageRef::parse("https://harbor.example.com/v2/library/app/manifests/v1").unwrap();
        assert_eq!(r.registry, "harbor.example.com");
        assert_eq!(r.repository, "library/app");
        assert_eq!(r.reference, Reference::Tag("v1".into()));
        assert_eq!(r.scheme, Some(Scheme::Https));
        let r = ImageRef::parse(&format!("http://127.0.0.1:5000/v2/a/b/manifests/sha256:{HEX}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert!(matches!(r.reference, Reference::Digest(_)));
        assert_eq!(r.scheme, Some(Scheme::Http));
        let hub = ImageRef::parse("https://index.docker.io/v2/library/alpine/manifests/3.19").unwrap();
        assert_eq!(hub.api_host(), "registry-1.docker.io");
        for bad in [
            "https://h/v1/x/manifests/t",
            "https://h/v2/x/tags/list",
            "https://u:p@h/v2/x/manifests/t",
            "https://h/v2/X/manifests/t",
            "https://h/v2/a//b/manifests/t",
            "https://h/v2/a/manifests/.t",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_parse_and_select() {
        assert_eq!(PlatformFilter::parse("all").unwrap(), PlatformFilter::All);
        assert_eq!(PlatformFilter::default().to_string(), "linux/amd64");
        let arm = PlatformFilter::parse("linux/arm64").unwrap();
        let arm_v8 = PlatformFilter::parse("linux/arm64/v8").unwrap();
        assert_eq!(arm_v8.to_string(), "linux/arm64/v8");
        let p = |os: &str, arch: &str, v: Option<&str>| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: v.map(Into::into),
        };
        assert!(arm.wants(Some(&p("linux", "arm64", Some("v8")))));
        assert!(arm_v8.wants(Some(&p("linux", "arm64", Some("v8")))));
        assert!(!arm_v8.wants(Some(&p("linux", "arm64", None))));
        assert!(!arm.wants(Some(&p("linux", "amd64", None))));
        assert!(!arm.wants(None));
        assert!(PlatformFilter::All.wants(Some(&p("windows", "amd64", None))));
        assert!(!PlatformFilter::All.wants(Some(&p("unknown", "unknown", None))));
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64", ""] {
            assert!(PlatformFilter::parse(bad).is_err(), "{bad:?}");
        }
    }
}
