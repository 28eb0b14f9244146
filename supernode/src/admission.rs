//! Per-task authorization: a host is admitted to a task only once the origin accepted that
//! host's own credentials for the content (or serves it to anyone).
//!
//! The check is a `HEAD` of the task's URL with the host's forwarded headers, through the
//! policy-checked [`OriginClient`]. Its answer is cached per (scope, credentials) for
//! [`SupernodeConfig::auth_ttl`](crate::SupernodeConfig): the scope of a registry blob URL
//! (`/v2/<name>/blobs/<digest>`) is its repository, so one check covers every layer of an image
//! and a warm pull costs no request at all; any other URL is its own scope. Credentials are
//! keyed by a sha256 of the headers that reach the origin, never stored or logged themselves.
//! Concurrent registrations with the same key share one request.
//!
//! A refusal (401, 403, 404) is final for the host and reaches its engine as the registry's own
//! status (the dfdaemon then fetches the registry's challenge for it); an origin that cannot
//! answer makes the registration fail without a verdict, and the host falls back to the origin
//! itself, which will ask for the same credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use damselfly_proto as pb;
use reqwest::Method;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use url::Url;

use crate::origin::client::{OriginClient, SendError};

/// Longest wait for the origin's answer to an authorization check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached verdicts kept at most; expired ones are dropped first, then everything.
const MAX_ENTRIES: usize = 100_000;

/// Why a host is not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The origin refused this host's credentials (or their absence) for the content.
    #[error("the origin refused this host's credentials for {scope}: HTTP {status}")]
    Denied {
        /// The origin's status (401, 403 or 404).
        status: u16,
        /// The repository or URL the check was for (no credentials, no query string).
        scope: String,
    },
    /// The origin policy refused the URL, a redirect hop or a resolved address: final, the
    /// host must not fetch it itself either.
    #[error("{0}")]
    Policy(String),
    /// The origin could not be asked (unreachable, 5xx): no verdict.
    #[error("cannot check access at the origin: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    scope: String,
    credentials: [u8; 32],
}

type Verdict = Result<(), Refusal>;

/// The cache of verdicts, shared by every registration.
#[derive(Debug)]
pub struct Admissions {
    ttl: Duration,
    /// Each key's check; a cell is replaced once its verdict is older than `ttl`.
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Origin requests made for checks (for the cost report and tests).
    checks: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Entry {
    cell: OnceCell<Verdict>,
    created: Instant,
}

impl Admissions {
    /// Verdicts are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()), checks: Default::default() }
    }

    /// Origin requests made so far for checks.
    pub fn checks_made(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a host presenting `headers` may get the content at `url`.
    pub async fn check(&self, origins: &OriginClient, url: &Url, headers: &[pb::Header]) -> Verdict {
        let key = Key { scope: scope_of(url), credentials: credentials_hash(headers) };
        let entry = self.entry(&key);
        let verdict = entry
            .cell
            .get_or_init(|| async {
                self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ask_origin(origins, url, headers, &key.scope).await
            })
            .await
            .clone();
        if matches!(verdict, Err(Refusal::Unavailable(_))) {
            // No verdict: the next registration asks again.
            self.forget(&key, &entry);
        }
        verdict
    }

    fn entry(&self, key: &Key) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(e) = entries.get(key).filter(|e| now.duration_since(e.created) < self.ttl) {
            return e.clone();
        }
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now.duration_since(e.created) < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let e = Arc::new(Entry { cell: OnceCell::new(), created: now });
        entries.insert(key.clone(), e.clone());
        e
    }

    fn forget(&self, key: &Key, entry: &Arc<Entry>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(key);
        }
    }
}

/// `HEAD url` with the host's headers: 2xx admits, 401/403/404 refuse; a server that does not
/// know `HEAD` is asked with `GET`, of which only the status is read.
async fn ask_origin(origins: &OriginClient, url: &Url, headers: &[pb::Header], scope: &str) -> Verdict {
    let pairs: Vec<(&str, &[u8])> = headers.iter().map(|h| (h.name.as_str(), h.value.as_slice())).collect();
    let failed = |e: SendError| match e {
        SendError::Refused(r) => Refusal::Policy(r.to_string()),
        other => Refusal::Unavailable(other.to_string()),
    };
    let mut status = origins.send(Method::HEAD, url, &pairs, Some(CHECK_TIMEOUT)).await.map_err(failed)?.status();
    if matches!(status.as_u16(), 405 | 501) {
        status = origins.send(Method::GET, url, &pairs, Some(CHECK_TIMEOUT)).await.map_err(failed)?.status();
    }
    match status.as_u16() {
        200..=299 => Ok(()),
        code @ (401 | 403 | 404) => Err(Refusal::Denied { status: code, scope: scope.to_owned() }),
        code => Err(Refusal::Unavailable(format!("the origin answered HTTP {code}"))),
    }
}

/// What one check covers: a registry blob URL's repository (`host:port/v2/<name>/`), or the
/// URL itself (without user info) for anything else.
fn scope_of(url: &Url) -> String {
    let origin = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = url.path();
    if let Some(rest) = path.strip_prefix("/v2/") {
        if let Some((name, _)) = rest.rsplit_once("/blobs/") {
            return format!("{origin}{port}/v2/{name}/");
        }
    }
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{origin}{port}{path}{query}")
}

/// A digest of the headers the origin would see (names lower-cased, sorted): hosts presenting
/// the same credentials share a verdict; the credentials themselves are never kept.
fn credentials_hash(headers: &[pb::Header]) -> [u8; 32] {
    const NOT_CREDENTIALS: &[&str] = &["accept", "accept-language", "user-agent"];
    let mut pairs: Vec<(String, &[u8])> = headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.as_slice()))
        .filter(|(n, _)| !NOT_CREDENTIALS.contains(&n.as_str()))
        .collect();
    pairs.sort();
    let mut h = Sha256::new();
    for (name, value) in pairs {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_blob_is_checked_per_repository() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(scope_of(&u("http://r:5000/v2/team/app/blobs/sha256:aa")), "http://r:5000/v2/team/app/");
        assert_eq!(
            scope_of(&u("http://r:5000/v2/team/app/blobs/sha256:bb")),
            scope_of(&u("http://r:5000/v2/team/app/blobs/sha256:aa"))
        );
        assert_ne!(
            scope_of(&u("http://r:5000/v2/team/other/blobs/sha256:aa")),
            scope_of(&u("http://r:5000/v2/team/app/blobs/sha256:aa"))
        );
        assert_eq!(scope_of(&u("https://user:pw@files.example/a/b.iso?sig=1")), "https://files.example/a/b.iso?sig=1");
    }

    #[test]
    fn credentials_are_keyed_by_a_digest_in_any_order() {
        let h = |n: &str, v: &str| pb::Header { name: n.into(), value: v.as_bytes().to_vec() };
        let a = credentials_hash(&[h("Authorization", "Basic x"), h("accept", "*/*")]);
        let b = credentials_hash(&[h("user-agent", "containerd"), h("authorization", "Basic x")]);
        assert_eq!(a, b, "only credentials count");
        assert_ne!(a, credentials_hash(&[h("authorization", "Basic y"), h("accept", "*/*")]));
        assert_ne!(a, credentials_hash(&[]));
    }
}
