//! Test images built in memory: OCI (or Docker) manifests, configs and one-file tar layers of
//! random bytes, deterministic per seed, pushed over the registry HTTP API.

use bytes::Bytes;
use serde_json::json;

use crate::push::Pusher;
use crate::{random_bytes, sha256_digest, Registry};

/// The media types the testkit writes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index (multi-platform).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, uncompressed tar: its digest is its diff id.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (multi-platform).
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker layer, uncompressed tar.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

use media_types::*;

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// OCI media types (`application/vnd.oci.image.*`).
    #[default]
    Oci,
    /// Docker schema 2 media types (`application/vnd.docker.*`), as Docker Hub images have.
    Docker,
}

impl ImageFormat {
    /// The media type of a single-platform manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_MANIFEST,
            ImageFormat::Docker => DOCKER_MANIFEST,
        }
    }

    /// The media type of a multi-platform index / manifest list.
    pub fn index_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_INDEX,
            ImageFormat::Docker => DOCKER_MANIFEST_LIST,
        }
    }

    /// The media type of the config blob.
    pub fn config_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_CONFIG,
            ImageFormat::Docker => DOCKER_CONFIG,
        }
    }

    /// The media type of an uncompressed tar layer.
    pub fn layer_type(self) -> &'static str {
        match self {
            ImageFormat::Oci => OCI_LAYER_TAR,
            ImageFormat::Docker => DOCKER_LAYER_TAR,
        }
    }
}

/// An OS and CPU architecture, as image configs and index entries name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
}

impl Platform {
    /// `Platform::new("linux", "amd64")`.
    pub fn new(os: &str, architecture: &str) -> Self {
        Platform { os: os.to_string(), architecture: architecture.to_string() }
    }

    /// `linux/amd64`: what the engines run on here.
    pub fn linux_amd64() -> Self {
        Platform::new("linux", "amd64")
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// Content with its digest and media type: a layer, a config or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// What the bytes are (`application/vnd.oci.image.layer.v1.tar`, ...).
    pub media_type: &'static str,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// The content.
    pub bytes: Bytes,
}

impl Blob {
    /// Wraps `bytes`, computing the digest.
    pub fn new(media_type: &'static str, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Blob { media_type, digest: sha256_digest(&bytes), bytes }
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The OCI descriptor `{"mediaType", "digest", "size"}` that manifests use to point at it.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size() })
    }
}

/// A single-platform image: manifest, config and layers, all in memory.
///
/// Each layer is an uncompressed tar holding one file (`damselfly-<seed>-<i>.bin`) of that many
/// pseudo-random bytes, so the same arguments always give the same digests, and the layer digests
/// are also the config's `rootfs.diff_ids`. Distinct file names keep even empty layers distinct.
///
/// ```
/// use damselfly_testkit::TestImage;
///
/// let image = TestImage::generate("demo/app", "v1", &[4096, 0], 7);
/// assert_eq!(image.layers.len(), 2);
/// assert_ne!(image.layers[0].digest, image.layers[1].digest);
/// assert_eq!(image.manifest_digest, TestImage::generate("demo/app", "v1", &[4096, 0], 7).manifest_digest);
/// assert_eq!(image.reference("127.0.0.1:5000"), "127.0.0.1:5000/demo/app:v1");
/// ```
#[derive(Debug, Clone)]
pub struct TestImage {
    /// Repository name: `demo/app`.
    pub name: String,
    /// Tag it is pushed under.
    pub tag: String,
    /// OCI or Docker media types.
    pub format: ImageFormat,
    /// The platform its config names.
    pub platform: Platform,
    /// The manifest's media type (what it is pushed with).
    pub manifest_media_type: &'static str,
    /// The manifest, exactly as pushed.
    pub manifest_bytes: Bytes,
    /// `sha256:` of `manifest_bytes`.
    pub manifest_digest: String,
    /// The config blob.
    pub config: Blob,
    /// The layer blobs, in order.
    pub layers: Vec<Blob>,
}

impl TestImage {
    /// An OCI image for linux/amd64 with one layer per entry of `layer_sizes` (file sizes in
    /// bytes; 0 makes a layer holding an empty file).
    pub fn generate(name: &str, tag: &str, layer_sizes: &[usize], seed: u64) -> Self {
        Self::generate_as(ImageFormat::Oci, &Platform::linux_amd64(), name, tag, layer_sizes, seed)
    }

    /// Like [`TestImage::generate`] with the given media types and platform.
    pub fn generate_as(
        format: ImageFormat,
        platform: &Platform,
        name: &str,
        tag: &str,
        layer_sizes: &[usize],
        seed: u64,
    ) -> Self {
        let layers: Vec<Blob> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let file_name = format!("damselfly-{seed:016x}-{i}.bin");
                let content = random_bytes(size, mix(seed, i as u64));
                Blob::new(format.layer_type(), single_file_tar(&file_name, &content))
            })
            .collect();
        let config = Blob::new(format.config_type(), config_json(platform, name, &layers, seed));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.manifest_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest_bytes = Bytes::from(manifest.to_string());
        TestImage {
            name: name.to_string(),
            tag: tag.to_string(),
            format,
            platform: platform.clone(),
            manifest_media_type: format.manifest_type(),
            manifest_digest: sha256_digest(&manifest_bytes),
            manifest_bytes,
            config,
            layers,
        }
    }

    /// The config followed by the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Bytes of the config and all layers: what a full pull downloads besides the manifest.
    pub fn total_blob_bytes(&self) -> u64 {
        self.blobs().map(Blob::size).sum()
    }

    /// `HOST/name:tag`, the reference engines pull.
    pub fn reference(&self, registry_host: &str) -> String {
        format!("{registry_host}/{}:{}", self.name, self.tag)
    }

    /// `HOST/name@sha256:...`, the reference by manifest digest.
    pub fn digest_reference(&self, registry_host: &str) -> String {
        format!("{registry_host}/{}@{}", self.name, self.manifest_digest)
    }

    /// Pushes the blobs (skipping those the registry has), then the manifest under `tag`.
    ///
    /// `auth` is sent as HTTP basic auth on every request (what an `htpasswd` registry wants).
    pub async fn push(&self, registry: &Registry, auth: Option<(&str, &str)>) -> anyhow::Result<()> {
        self.push_to(&registry.url(), auth).await
    }

    /// [`TestImage::push`] to the registry at `base_url` (`http://HOST:PORT`).
    pub async fn push_to(&self, base_url: &str, auth: Option<(&str, &str)>) -> anyhow::Result<()> {
        let pusher = Pusher::new(base_url, &self.name, auth);
        self.push_with(&pusher, &self.tag).await
    }

    /// Pushes blobs and the manifest under `reference` (a tag, or the digest for index entries).
    pub(crate) async fn push_with(&self, pusher: &Pusher, reference: &str) -> anyhow::Result<()> {
        for blob in self.blobs() {
            pusher.blob(blob).await?;
        }
        pusher.manifest(reference, self.manifest_media_type, &self.manifest_bytes, &self.manifest_digest).await
    }
}

/// A multi-platform image: an OCI index (or Docker manifest list) of one [`TestImage`] per
/// platform, each with its own layers.
///
/// ```
/// use damselfly_testkit::{ImageFormat, TestIndex};
///
/// let index = TestIndex::generate("demo/multi", "v1", &[("linux", "amd64"), ("linux", "arm64")], &[1024], 3);
/// let amd64 = index.image("linux", "amd64").expect("amd64 is in the index");
/// let arm64 = index.image("linux", "arm64").expect("arm64 is in the index");
/// assert_ne!(amd64.layers[0].digest, arm64.layers[0].digest);
/// let list = TestIndex::generate_as(ImageFormat::Docker, "demo/multi", "v1", &[("linux", "amd64")], &[1024], 3);
/// assert_eq!(list.media_type, "application/vnd.docker.distribution.manifest.list.v2+json");
/// ```
#[derive(Debug, Clone)]
pub struct TestIndex {
    /// Repository name.
    pub name: String,
    /// Tag the index is pushed under.
    pub tag: String,
    /// OCI or Docker media types.
    pub format: ImageFormat,
    /// The index's media type (OCI index or Docker manifest list).
    pub media_type: &'static str,
    /// The index, exactly as pushed.
    pub index_bytes: Bytes,
    /// `sha256:` of `index_bytes`.
    pub index_digest: String,
    /// One image per platform, in the order given; pushed by digest only.
    pub images: Vec<TestImage>,
}

impl TestIndex {
    /// An OCI index of one image per `(os, architecture)`, each with layers of `layer_sizes`.
    pub fn generate(name: &str, tag: &str, platforms: &[(&str, &str)], layer_sizes: &[usize], seed: u64) -> Self {
        Self::generate_as(ImageFormat::Oci, name, tag, platforms, layer_sizes, seed)
    }

    /// Like [`TestIndex::generate`] with the given media types (Docker: a manifest list).
    pub fn generate_as(
        format: ImageFormat,
        name: &str,
        tag: &str,
        platforms: &[(&str, &str)],
        layer_sizes: &[usize],
        seed: u64,
    ) -> Self {
        let images: Vec<TestImage> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch))| {
                let platform = Platform::new(os, arch);
                TestImage::generate_as(format, &platform, name, tag, layer_sizes, mix(seed, 1_000_000 + i as u64))
            })
            .collect();
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|image| {
                json!({
                    "mediaType": image.manifest_media_type,
                    "digest": image.manifest_digest,
                    "size": image.manifest_bytes.len(),
                    "platform": { "architecture": image.platform.architecture, "os": image.platform.os },
                })
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": format.index_type(), "manifests": manifests });
        let index_bytes = Bytes::from(index.to_string());
        TestIndex {
            name: name.to_string(),
            tag: tag.to_string(),
            format,
            media_type: format.index_type(),
            index_digest: sha256_digest(&index_bytes),
            index_bytes,
            images,
        }
    }

    /// The image for `os`/`architecture`, if the index has one.
    pub fn image(&self, os: &str, architecture: &str) -> Option<&TestImage> {
        self.images.iter().find(|i| i.platform.os == os && i.platform.architecture == architecture)
    }

    /// Bytes of every platform's config and layers.
    pub fn total_blob_bytes(&self) -> u64 {
        self.images.iter().map(TestImage::total_blob_bytes).sum()
    }

    /// `HOST/name:tag`.
    pub fn reference(&self, registry_host: &str) -> String {
        format!("{registry_host}/{}:{}", self.name, self.tag)
    }

    /// `HOST/name@sha256:...` of the index.
    pub fn digest_reference(&self, registry_host: &str) -> String {
        format!("{registry_host}/{}@{}", self.name, self.index_digest)
    }

    /// Pushes every image (blobs, then its manifest by digest), then the index under `tag`.
    pub async fn push(&self, registry: &Registry, auth: Option<(&str, &str)>) -> anyhow::Result<()> {
        self.push_to(&registry.url(), auth).await
    }

    /// [`TestIndex::push`] to the registry at `base_url` (`http://HOST:PORT`).
    pub async fn push_to(&self, base_url: &str, auth: Option<(&str, &str)>) -> anyhow::Result<()> {
        let pusher = Pusher::new(base_url, &self.name, auth);
        for image in &self.images {
            image.push_with(&pusher, &image.manifest_digest).await?;
        }
        pusher.manifest(&self.tag, self.media_type, &self.index_bytes, &self.index_digest).await
    }
}

/// A seed for item `i` derived from `seed`, so items differ and each stays reproducible.
fn mix(seed: u64, i: u64) -> u64 {
    seed.rotate_left(17) ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The image config: platform, `rootfs.diff_ids` (= layer digests, the layers being uncompressed)
/// and labels naming the test image, so images of different names or seeds never share a config.
fn config_json(platform: &Platform, name: &str, layers: &[Blob], seed: u64) -> Vec<u8> {
    let epoch = "1970-01-01T00:00:00Z";
    let config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": epoch,
        "config": {
            "Cmd": ["/bin/sh"],
            "Labels": { "org.damselfly.test.name": name, "org.damselfly.test.seed": seed.to_string() },
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>() },
        "history": (0..layers.len())
            .map(|i| json!({ "created": epoch, "created_by": format!("damselfly testkit layer {i}") }))
            .collect::<Vec<_>>(),
    });
    config.to_string().into_bytes()
}

/// Tar block size.
const BLOCK: usize = 512;

/// A ustar archive holding one regular file `name` (mode 0644, owner root, mtime 0) with
/// `content`, followed by the two zero blocks that end an archive.
///
/// # Panics
/// When `name` is longer than 100 bytes or `content` is 8 GiB or more (ustar's limits).
fn single_file_tar(name: &str, content: &[u8]) -> Vec<u8> {
    assert!(name.len() <= 100, "tar member name {name:?} longer than 100 bytes");
    assert!((content.len() as u64) < 8 << 30, "layer file of {} bytes: ustar holds less than 8 GiB", content.len());
    let padded = content.len().div_ceil(BLOCK) * BLOCK;
    let mut tar = vec![0u8; BLOCK + padded + 2 * BLOCK];
    let header = &mut tar[..BLOCK];
    let mut put = |offset: usize, field: &[u8]| header[offset..offset + field.len()].copy_from_slice(field);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", content.len()).as_bytes());
    put(136, b"00000000000\0");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    put(265, b"root");
    put(297, b"root");
    // The checksum is computed with its own field as eight spaces.
    put(148, b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar[BLOCK..BLOCK + content.len()].copy_from_slice(content);
    tar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists a tar with the system's `tar`, so the hand-written header is checked by a real reader.
    fn tar_listing(tar: &[u8]) -> anyhow::Result<String> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("layer.tar");
        std::fs::write(&path, tar)?;
        let output = std::process::Command::new("tar").arg("-tvf").arg(&path).output()?;
        crate::ensure_success(&output, "tar -tvf")?;
        Ok(String::from_utf8(output.stdout)?)
    }

    #[test]
    fn layers_are_tars_that_tar_reads() -> anyhow::Result<()> {
        for size in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 100_000] {
            let content = random_bytes(size, 5);
            let tar = single_file_tar("damselfly-x-0.bin", &content);
            assert_eq!(tar.len() % BLOCK, 0);
            let listing = tar_listing(&tar)?;
            assert!(listing.contains("-rw-r--r-- root/root"), "{listing}");
            assert!(listing.contains(&format!(" {size} 1970-01-01")), "size {size}: {listing}");
            assert!(listing.trim_end().ends_with("damselfly-x-0.bin"), "{listing}");
            assert_eq!(&tar[BLOCK..BLOCK + size], &content[..]);
        }
        Ok(())
    }

    #[test]
    fn image_is_deterministic_and_consistent() -> anyhow::Result<()> {
        let image = TestImage::generate("demo/app", "v1", &[0, 0, 3000], 11);
        assert_eq!(image.manifest_digest, TestImage::generate("demo/app", "v1", &[0, 0, 3000], 11).manifest_digest);
        assert_ne!(image.manifest_digest, TestImage::generate("demo/app", "v1", &[0, 0, 3000], 12).manifest_digest);
        assert_ne!(image.layers[0].digest, image.layers[1].digest, "empty layers must differ");
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest_bytes));

        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes)?;
        assert_eq!(manifest["mediaType"], OCI_MANIFEST);
        assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
        assert_eq!(manifest["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(manifest["layers"][2]["size"], image.layers[2].size());
        assert_eq!(manifest["layers"][2]["mediaType"], OCI_LAYER_TAR);

        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes)?;
        assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
        let diff_ids: Vec<&str> =
            config["rootfs"]["diff_ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        let digests: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(diff_ids, digests);

        let expected: u64 = image.config.size() + image.layers.iter().map(Blob::size).sum::<u64>();
        assert_eq!(image.total_blob_bytes(), expected);
        assert!(image.layers[2].size() > 3000);
        Ok(())
    }

    #[test]
    fn docker_format_uses_docker_media_types() -> anyhow::Result<()> {
        let image = TestImage::generate_as(ImageFormat::Docker, &Platform::linux_amd64(), "a", "b", &[10], 1);
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest_bytes)?;
        assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(manifest["layers"][0]["mediaType"], DOCKER_LAYER_TAR);
        assert_eq!(image.manifest_media_type, DOCKER_MANIFEST);
        Ok(())
    }

    #[tokio::test]
    async fn pushed_image_reads_back_by_tag_and_digest() -> anyhow::Result<()> {
        let registry = crate::Registry::start(crate::RegistryOpts::default()).await?;
        let image = TestImage::generate("demo/app", "v1", &[300_000, 0, 1], 4);
        image.push(&registry, None).await?;
        for reference in [image.tag.as_str(), image.manifest_digest.as_str()] {
            let (media_type, body) = registry.get_manifest(&image.name, reference).await?;
            assert_eq!(media_type, OCI_MANIFEST);
            assert_eq!(body, image.manifest_bytes, "by {reference}");
        }
        for blob in image.blobs() {
            assert_eq!(registry.get_blob(&image.name, &blob.digest).await?, blob.bytes);
        }
        // A second push uploads nothing: every blob is there already.
        let mark = registry.mark().await?;
        image.push(&registry, None).await?;
        let log = registry.since(mark).await?;
        assert!(log.records().iter().all(|r| r.method != "POST"), "{:?}", log.records());
        Ok(())
    }

    #[tokio::test]
    async fn indexes_push_to_a_private_registry_and_serve_through_a_pull_through_cache() -> anyhow::Result<()> {
        let opts = crate::RegistryOpts { htpasswd: Some(("u".into(), "p".into())), ..Default::default() };
        let origin = crate::Registry::start(opts).await?;
        let platforms = [("linux", "amd64"), ("linux", "arm64")];
        let oci = TestIndex::generate("demo/multi", "oci", &platforms, &[5000], 8);
        let docker = TestIndex::generate_as(ImageFormat::Docker, "demo/multi", "docker", &platforms, &[5000], 9);
        let refused = oci.push(&origin, None).await.expect_err("pushed without credentials");
        assert!(format!("{refused:#}").contains("401"), "{refused:#}");
        for index in [&oci, &docker] {
            index.push(&origin, Some(("u", "p"))).await?;
            let (media_type, body) = origin.get_manifest(&index.name, &index.tag).await?;
            assert_eq!((media_type.as_str(), &body), (index.media_type, &index.index_bytes));
            for image in &index.images {
                let (media_type, body) = origin.get_manifest(&index.name, &image.manifest_digest).await?;
                assert_eq!((media_type.as_str(), &body), (index.format.manifest_type(), &image.manifest_bytes));
            }
        }

        let opts = crate::RegistryOpts { proxy_remote: Some(origin.url()), ..Default::default() };
        let cache = crate::Registry::start(opts).await?;
        let layer = &oci.images[0].layers[0];
        let client = crate::http_client();
        let url = format!("{}/v2/{}/blobs/{}", cache.url(), oci.name, layer.digest);
        let anonymous = client.get(&url).send().await?;
        assert!(!anonymous.status().is_success(), "the cache has no credentials for the private origin");
        Ok(())
    }

    #[tokio::test]
    async fn pull_through_cache_fetches_from_its_remote_then_serves_locally() -> anyhow::Result<()> {
        let origin = crate::Registry::start(crate::RegistryOpts::default()).await?;
        let image = TestImage::generate("demo/cached", "v1", &[10_000], 10);
        image.push(&origin, None).await?;
        let opts = crate::RegistryOpts { proxy_remote: Some(origin.url()), ..Default::default() };
        let cache = crate::Registry::start(opts).await?;
        let layer = &image.layers[0];
        let mark = origin.mark().await?;
        assert_eq!(cache.get_blob(&image.name, &layer.digest).await?, layer.bytes);
        // distribution 2.8 streams a miss from upstream and stores it with a second upstream GET
        // in the background: a miss costs up to two upstream GETs, and GETs before the store
        // finishes go upstream again (no coalescing).
        let upstream = origin.since(mark).await?.blob_gets(&layer.digest);
        assert!((1..=2).contains(&upstream), "{upstream} upstream GETs for one miss");

        let hex = layer.digest.trim_start_matches("sha256:");
        let link = cache
            .storage_dir()
            .join(format!("docker/registry/v2/repositories/{}/_layers/sha256/{hex}/link", image.name));
        let stored = format!("the cache stores {}", link.display());
        crate::eventually(&stored, std::time::Duration::from_secs(10), || std::future::ready(Ok(link.exists())))
            .await?;
        let mark = origin.mark().await?;
        assert_eq!(cache.get_blob(&image.name, &layer.digest).await?, layer.bytes);
        assert_eq!(origin.since(mark).await?.blob_gets(&layer.digest), 0, "a stored blob is served locally");
        assert_eq!(cache.blob_gets(&layer.digest).await?, 2);
        Ok(())
    }

    #[test]
    fn index_lists_each_platform_with_its_own_layers() -> anyhow::Result<()> {
        let platforms = [("linux", "amd64"), ("linux", "arm64"), ("windows", "amd64")];
        for format in [ImageFormat::Oci, ImageFormat::Docker] {
            let index = TestIndex::generate_as(format, "demo/multi", "v2", &platforms, &[100, 0], 9);
            let parsed: serde_json::Value = serde_json::from_slice(&index.index_bytes)?;
            assert_eq!(parsed["mediaType"], format.index_type());
            let entries = parsed["manifests"].as_array().cloned().unwrap_or_default();
            assert_eq!(entries.len(), 3);
            for (entry, image) in entries.iter().zip(&index.images) {
                assert_eq!(entry["digest"], image.manifest_digest.as_str());
                assert_eq!(entry["mediaType"], format.manifest_type());
                assert_eq!(entry["platform"]["architecture"], image.platform.architecture.as_str());
                assert_eq!(entry["platform"]["os"], image.platform.os.as_str());
                let config: serde_json::Value = serde_json::from_slice(&image.config.bytes)?;
                assert_eq!(config["architecture"], image.platform.architecture.as_str());
            }
            let mut layers: Vec<&str> =
                index.images.iter().flat_map(|i| i.layers.iter().map(|l| l.digest.as_str())).collect();
            layers.sort_unstable();
            layers.dedup();
            assert_eq!(layers.len(), 6, "every platform has its own layers");
            assert_eq!(index.total_blob_bytes(), index.images.iter().map(TestImage::total_blob_bytes).sum::<u64>());
            assert!(index.image("linux", "arm64").is_some());
            assert!(index.image("linux", "s390x").is_none());
        }
        Ok(())
    }
}
