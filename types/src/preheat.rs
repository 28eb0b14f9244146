//! The preheat API's JSON: the request `POST /api/v1/preheat` takes and the job view that it and
//! `GET /api/v1/preheat/{id}` answer with. The supernode serves these types and `dfget preheat`
//! reads them, so the two cannot drift apart.
//!
//! ```
//! use damselfly_types::preheat::{ItemState, JobState, JobView};
//!
//! let job: JobView = serde_json::from_str(
//!     r#"{"id":"ab","image":"r/x:1","platform":"all","state":"running","created_at":"t",
//!         "updated_at":"t","blobs":[{"digest":"sha256:01","kind":"layer","size":10,
//!         "bytes_landed":4,"state":"running"}]}"#,
//! )?;
//! assert_eq!(job.state, JobState::Running);
//! assert_eq!(job.blobs[0].state, ItemState::Running);
//! assert!(!job.state.is_final());
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Body of `POST /api/v1/preheat`. Unknown fields are refused, so a misspelt option fails
/// instead of being ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    /// `registry/name:tag`, `name@sha256:...`, or a manifest URL.
    pub image: String,
    /// `os/arch[/variant]` or `all`; default `linux/amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Registry user name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password or access token (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Headers for every registry request, e.g. `{"Authorization": "Bearer ..."}`; a list of
    /// `[name, value]` pairs is accepted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderList>,
    /// Enrolled dfdaemons (peer id or QUIC `HOST:PORT`) that should fetch the image too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Headers as a map or as `[name, value]` pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderList {
    /// `{"Name": "value"}`.
    Map(BTreeMap<String, String>),
    /// `[["Name", "value"]]`.
    Pairs(Vec<(String, String)>),
}

impl HeaderList {
    /// The headers as `(name, value)` pairs.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        match self {
            Self::Map(m) => m.into_iter().collect(),
            Self::Pairs(p) => p,
        }
    }
}

/// Error body of the preheat API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person to read.
    pub error: String,
}

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted; no blob started yet.
    Pending,
    /// Blobs (then peers) are being fetched.
    Running,
    /// Every blob is in the supernode's cache (and on every requested peer).
    Succeeded,
    /// Something failed; `error` says what.
    Failed,
}

impl JobState {
    /// Whether the job has ended (succeeded or failed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Where one blob (or one peer) of a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Not started.
    Pending,
    /// Being fetched.
    Running,
    /// Done.
    Succeeded,
    /// Failed; its `error` says why.
    Failed,
    /// Not attempted because the job failed first.
    Skipped,
}

impl ItemState {
    /// The name the API uses: `pending`, `running`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a blob is to its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// The image config.
    Config,
    /// A filesystem layer.
    Layer,
}

impl fmt::Display for BlobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Layer => "layer",
        })
    }
}

/// A job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The image.
    pub image: String,
    /// Platform filter.
    pub platform: String,
    /// Where the job stands.
    pub state: JobState,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Digest of the manifest the image resolved to.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// Its media type.
    #[serde(default)]
    pub media_type: Option<String>,
    /// When the job was accepted (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Sum of the blob sizes.
    #[serde(default)]
    pub total_bytes: u64,
    /// Bytes in the supernode's cache so far.
    #[serde(default)]
    pub bytes_landed: u64,
    /// Blobs, configs and layers.
    #[serde(default)]
    pub blobs: Vec<BlobView>,
    /// Peers asked to fetch the image too.
    #[serde(default)]
    pub peers: Vec<PeerView>,
}

/// One blob of a job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobView {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Config or layer.
    pub kind: BlobKind,
    /// Platform(s) it belongs to, when the image is an index.
    #[serde(default)]
    pub platform: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Bytes in the supernode's cache so far.
    #[serde(default)]
    pub bytes_landed: u64,
    /// Where it stands.
    pub state: ItemState,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One peer of a job as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// The dfdaemon address as given.
    pub peer: String,
    /// Where it stands.
    pub state: ItemState,
    /// Blobs it has fetched.
    #[serde(default)]
    pub blobs_done: usize,
    /// Bytes it has received.
    #[serde(default)]
    pub bytes: u64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_headers_as_a_map_or_pairs_and_refuse_unknown_fields() {
        let r: PreheatRequest = serde_json::from_str(r#"{"image":"x","headers":{"A":"1"}}"#).unwrap();
        assert_eq!(r.headers.map(HeaderList::into_pairs), Some(vec![("A".to_owned(), "1".to_owned())]));
        let r: PreheatRequest = serde_json::from_str(r#"{"image":"x","headers":[["B","2"]]}"#).unwrap();
        assert_eq!(r.headers.map(HeaderList::into_pairs), Some(vec![("B".to_owned(), "2".to_owned())]));
        assert!(serde_json::from_str::<PreheatRequest>(r#"{"image":"x","platfrom":"all"}"#).is_err());
        let minimal = serde_json::to_string(&PreheatRequest { image: "x".into(), ..Default::default() }).unwrap();
        assert_eq!(minimal, r#"{"image":"x"}"#);
    }

    #[test]
    fn views_round_trip_with_snake_case_states() {
        let view = JobView {
            id: "ab".into(),
            image: "r/x:1".into(),
            platform: "all".into(),
            state: JobState::Failed,
            error: Some("blob 2 failed".into()),
            manifest_digest: None,
            media_type: None,
            created_at: "t0".into(),
            updated_at: "t1".into(),
            finished_at: Some("t1".into()),
            total_bytes: 10,
            bytes_landed: 10,
            blobs: vec![BlobView {
                digest: "sha256:01".into(),
                kind: BlobKind::Config,
                platform: None,
                size: 10,
                bytes_landed: 10,
                state: ItemState::Skipped,
                error: None,
            }],
            peers: vec![PeerView {
                peer: "p:1".into(),
                state: ItemState::Pending,
                blobs_done: 0,
                bytes: 0,
                error: None,
            }],
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["blobs"][0]["state"], "skipped");
        assert_eq!(json["blobs"][0]["kind"], "config");
        let back: JobView = serde_json::from_value(json).unwrap();
        assert_eq!(back.blobs[0].kind, BlobKind::Config);
        assert!(back.state.is_final());
        assert_eq!(ItemState::Succeeded.to_string(), "succeeded");
    }
}
