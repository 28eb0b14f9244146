//! Which image pull a blob belongs to, as the mirror saw it: an engine pulls an image's manifest
//! and then its config and layers, so when the mirror serves an image manifest it remembers
//! each blob the manifest names under the manifest's digest, and the blobs' downloads name that
//! digest as their swarm group (`Register.group`): the supernode then schedules the image's
//! blobs as one swarm.
//!
//! Only image manifests (OCI `application/vnd.oci.image.manifest.v1+json`, Docker
//! `application/vnd.docker.distribution.manifest.v2+json`) count: an index or manifest list
//! names manifests, not blobs, and the engine fetches the platform's manifest next, which is
//! remembered then. A group is a hint that grants nothing, so a manifest that does not parse is
//! simply not remembered, and a blob whose manifest is forgotten (expired, evicted, served
//! before this daemon started) downloads on its own as before.
//!
//! Bounded: at most [`MAX_BLOBS`] blobs, each forgotten [`TTL`] after its manifest was last
//! served, the oldest first when full. Time is an argument, so tests need no clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use damselfly_types::id::Sha256Digest;
use serde::Deserialize;

/// Blobs remembered at most (a few hundred images' worth).
pub(crate) const MAX_BLOBS: usize = 4096;
/// How long after its manifest was served a blob's group is remembered: an image pull fetches
/// its blobs within minutes of its manifest.
pub(crate) const TTL: Duration = Duration::from_secs(600);

/// The media types of image manifests.
const IMAGE_MANIFESTS: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

/// Blob digest → the group of the image manifest that last named it.
#[derive(Default)]
pub(crate) struct ImageGroups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Blob → (its group, its key in `order`).
    blobs: HashMap<Sha256Digest, (Arc<str>, Stamp)>,
    /// Blobs by when they were remembered, oldest first.
    order: BTreeMap<Stamp, Sha256Digest>,
    /// Breaks ties between blobs remembered at the same instant.
    next: u64,
}

/// When a blob was remembered, and a counter that orders blobs remembered at once.
type Stamp = (Instant, u64);

/// The parts of an image manifest that name its blobs (everything else is ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// The blobs (config, then layers) of `body` if it is an image manifest: its own `mediaType`,
/// else the `content_type` it was served with, says so. Digests other than sha256 are left out
/// (the swarm keys blobs by sha256). `None`: not an image manifest, or not one that parses.
pub(crate) fn blobs_of(content_type: Option<&str>, body: &[u8]) -> Option<Vec<Sha256Digest>> {
    let m: Manifest = serde_json::from_slice(body).ok()?;
    let served = content_type.map(|t| t.split(';').next().unwrap_or_default().trim());
    let media_type = m.media_type.as_deref().or(served)?;
    if !IMAGE_MANIFESTS.contains(&media_type) {
        return None;
    }
    let digests = std::iter::once(&m.config).chain(&m.layers);
    Some(digests.filter_map(|d| d.digest.parse().ok()).collect())
}

impl ImageGroups {
    /// Remembers the blobs of `manifest` (served with `content_type`) at `now`, under the
    /// manifest's digest; a blob named by an earlier manifest moves to this one. Anything but
    /// an image manifest is ignored. Returns how many blobs were remembered.
    pub(crate) fn remember(&self, now: Instant, content_type: Option<&str>, manifest: &[u8]) -> usize {
        let Some(blobs) = blobs_of(content_type, manifest) else {
            return 0;
        };
        let group: Arc<str> = Sha256Digest::of(manifest).to_string().into();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now);
        for blob in &blobs {
            inner.insert(now, *blob, group.clone());
        }
        blobs.len()
    }

    /// The group of `blob` at `now`: the digest of the image manifest that last named it, if
    /// that was served less than [`TTL`] ago.
    pub(crate) fn group_of(&self, now: Instant, blob: &Sha256Digest) -> Option<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expire(now);
        inner.blobs.get(blob).map(|(group, _)| group.to_string())
    }

    /// Blobs remembered now (expired ones may still count until the next call that expires).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).blobs.len()
    }

    /// Whether no blob is remembered.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn insert(&mut self, now: Instant, blob: Sha256Digest, group: Arc<str>) {
        let stamp = (now, self.next);
        self.next += 1;
        if let Some((_, old)) = self.blobs.insert(blob, (group, stamp)) {
            self.order.remove(&old);
        }
        self.order.insert(stamp, blob);
        while self.blobs.len() > MAX_BLOBS {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.blobs.remove(&oldest);
        }
    }

    /// Forgets the blobs remembered [`TTL`] or longer before `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.order.first_entry() {
            if now.saturating_duration_since(entry.key().0) < TTL {
                return;
            }
            let blob = entry.remove();
            self.blobs.remove(&blob);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

    fn digest(n: u32) -> Sha256Digest {
        Sha256Digest::of(&n.to_be_bytes())
    }

    /// An image manifest naming `config` and `layers`, with `media_type` in the body if given.
    fn manifest(media_type: Option<&str>, config: Sha256Digest, layers: &[Sha256Digest]) -> Vec<u8> {
        let desc = |d: &Sha256Digest| serde_json::json!({ "mediaType": "x", "digest": d.to_string(), "size": 1 });
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "config": desc(&config),
            "layers": layers.iter().map(desc).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.title": "t" },
        });
        if let Some(t) = media_type {
            m["mediaType"] = t.into();
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn image_manifests_name_their_config_and_layers() {
        let layers = [digest(1), digest(2), digest(3)];
        let want: Vec<_> = [digest(0)].into_iter().chain(layers).collect();
        // OCI and Docker, the type in the body or (OCI may leave it out) in the header.
        assert_eq!(blobs_of(None, &manifest(Some(OCI), digest(0), &layers)), Some(want.clone()));
        assert_eq!(blobs_of(Some("text/plain"), &manifest(Some(DOCKER), digest(0), &layers)), Some(want.clone()));
        assert_eq!(blobs_of(Some(OCI), &manifest(None, digest(0), &layers)), Some(want.clone()));
        assert_eq!(
            blobs_of(Some(&format!("{DOCKER}; charset=utf-8")), &manifest(None, digest(0), &layers)),
            Some(want)
        );
        // No layers is still an image (an artifact with only a config).
        assert_eq!(blobs_of(None, &manifest(Some(OCI), digest(0), &[])), Some(vec![digest(0)]));
        // Digests other than sha256 are left out.
        let mut other: serde_json::Value =
            serde_json::from_slice(&manifest(Some(OCI), digest(0), &[digest(1)])).unwrap();
        other["layers"][0]["digest"] = "sha512:00".into();
        assert_eq!(blobs_of(None, &serde_json::to_vec(&other).unwrap()), Some(vec![digest(0)]));
    }

    #[test]
    fn indexes_and_anything_else_name_nothing() {
        let entry = |d: Sha256Digest| serde_json::json!({ "mediaType": OCI, "digest": d.to_string(), "size": 1 });
        for t in
            ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"]
        {
            let index = serde_json::json!({ "schemaVersion": 2, "mediaType": t, "manifests": [entry(digest(1))] });
            assert_eq!(blobs_of(Some(t), &serde_json::to_vec(&index).unwrap()), None, "{t}");
        }
        // An index-typed body that happens to have a config and layers is still an index.
        let idx = "application/vnd.oci.image.index.v1+json";
        assert_eq!(blobs_of(None, &manifest(Some(idx), digest(0), &[digest(1)])), None);
        // No media type anywhere, another type, broken or truncated JSON, an old schema 1.
        assert_eq!(blobs_of(None, &manifest(None, digest(0), &[digest(1)])), None);
        assert_eq!(blobs_of(Some("application/json"), &manifest(None, digest(0), &[digest(1)])), None);
        let good = manifest(Some(OCI), digest(0), &[digest(1)]);
        assert_eq!(blobs_of(None, &good[..good.len() - 1]), None);
        assert_eq!(blobs_of(None, b"\xff\x00 not json"), None);
        assert_eq!(blobs_of(None, b""), None);
        let v1 = br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"sha256:00"}]}"#;
        assert_eq!(blobs_of(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), v1), None);
    }

    #[test]
    fn a_blob_belongs_to_the_manifest_that_last_named_it() {
        let groups = ImageGroups::default();
        let t0 = Instant::now();
        let a = manifest(Some(OCI), digest(0), &[digest(1), digest(2)]);
        assert_eq!(groups.remember(t0, None, &a), 3);
        let group_a = Some(Sha256Digest::of(&a).to_string());
        for n in 0..3 {
            assert_eq!(groups.group_of(t0, &digest(n)), group_a);
        }
        assert_eq!(groups.group_of(t0, &digest(9)), None);
        // Another image sharing a base layer takes it over.
        let b = manifest(Some(DOCKER), digest(10), &[digest(2), digest(11)]);
        assert_eq!(groups.remember(t0, None, &b), 3);
        assert_eq!(groups.group_of(t0, &digest(2)), Some(Sha256Digest::of(&b).to_string()));
        assert_eq!(groups.group_of(t0, &digest(1)), group_a);
        assert_eq!(groups.len(), 5);
        // Nothing that is not an image manifest is remembered.
        assert_eq!(groups.remember(t0, None, b"{}"), 0);
        assert_eq!(groups.len(), 5);
    }

    #[test]
    fn groups_expire_after_the_ttl_unless_served_again() {
        let groups = ImageGroups::default();
        let t0 = Instant::now();
        let a = manifest(Some(OCI), digest(0), &[digest(1)]);
        let b = manifest(Some(OCI), digest(5), &[digest(6)]);
        groups.remember(t0, None, &a);
        groups.remember(t0, None, &b);
        let group_a = Some(Sha256Digest::of(&a).to_string());
        assert_eq!(groups.group_of(t0 + TTL - Duration::from_millis(1), &digest(1)), group_a);
        // `a` is served again halfway: its blobs stay; `b`'s go at the TTL.
        groups.remember(t0 + TTL / 2, None, &a);
        assert_eq!(groups.group_of(t0 + TTL, &digest(6)), None);
        assert_eq!(groups.group_of(t0 + TTL, &digest(1)), group_a);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups.group_of(t0 + TTL / 2 + TTL, &digest(0)), None);
        assert!(groups.is_empty());
    }

    #[test]
    fn a_full_map_forgets_the_oldest_blobs() {
        let groups = ImageGroups::default();
        let t0 = Instant::now();
        // Images of 64 blobs, each served a second after the last: 80 of them overflow the map.
        let per = 64;
        let images: Vec<Vec<u8>> = (0..80u32)
            .map(|i| {
                let layers: Vec<_> = (1..per).map(|k| digest(i * per + k)).collect();
                manifest(Some(OCI), digest(i * per), &layers)
            })
            .collect();
        for (i, m) in images.iter().enumerate() {
            groups.remember(t0 + Duration::from_secs(i as u64), None, m);
            assert!(groups.len() <= MAX_BLOBS);
        }
        let now = t0 + Duration::from_secs(80);
        assert_eq!(groups.len(), MAX_BLOBS);
        // The first 16 images (1024 blobs) are forgotten, the other 64 remembered.
        let kept = MAX_BLOBS / per as usize;
        let first_kept = images.len() - kept;
        for (i, m) in images.iter().enumerate() {
            let want = (i >= first_kept).then(|| Sha256Digest::of(m).to_string());
            for k in [0, per - 1] {
                assert_eq!(groups.group_of(now, &digest(i as u32 * per + k)), want, "image {i} blob {k}");
            }
        }
    }

    #[test]
    fn blobs_remembered_at_one_instant_leave_in_the_order_they_came() {
        let groups = ImageGroups::default();
        let t0 = Instant::now();
        let big: Vec<_> = (1..MAX_BLOBS as u32).map(digest).collect();
        groups.remember(t0, None, &manifest(Some(OCI), digest(0), &big));
        assert_eq!(groups.len(), MAX_BLOBS);
        // One more blob at the same instant: the config, named first, goes.
        groups.remember(t0, None, &manifest(Some(OCI), digest(MAX_BLOBS as u32), &[]));
        assert_eq!(groups.group_of(t0, &digest(0)), None);
        assert!(groups.group_of(t0, &digest(1)).is_some());
        assert_eq!(groups.len(), MAX_BLOBS);
    }
}
