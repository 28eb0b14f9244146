//! The registry mirror: the read side of the OCI distribution API on the proxy port.
//!
//! - `GET /v2/` and manifests go to the upstream registry directly (small, mutable by tag), with
//!   identical concurrent requests coalesced into one upstream request and manifests fetched by
//!   digest cached (immutable). Status, media type, `Docker-Content-Digest` and
//!   `WWW-Authenticate` pass through unchanged, so engines run their own token dance.
//! - Blobs go through the swarm, keyed by digest (never by URL: `ns` and query strings do not
//!   split the cache). The engine's `Authorization` travels with the task to the supernode's
//!   origin fetch. Bodies stream in order as pieces arrive; `Range` gets 206; a full body is
//!   hashed as it streams and broken off before its last byte when it does not match the digest.
//! - The blobs of one image pull are one swarm: an image manifest the mirror serves is parsed
//!   for the blobs it names, and their downloads name the manifest's digest as their group
//!   ([`groups`]).
//!
//! Which upstream: containerd names it in `?ns=<registry>`; otherwise `--registry`. Registries
//! listed with `--insecure-registry` are reached over plain HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use damselfly_types::id::{Sha256Digest, TaskId};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use sha2::{Digest as _, Sha256};

use crate::download::DownloadRequest;
use crate::http::{body, wait_started, Gate};
use crate::storage::{TaskFailure, TaskStatus};
use crate::Daemon;

mod groups;

/// Response headers passed through from the upstream registry.
const PASS_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "docker-content-digest",
    "docker-distribution-api-version",
    "www-authenticate",
    "etag",
];

/// Largest manifest accepted from an upstream (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// A buffered upstream answer (manifests, `/v2/`, refusals).
#[derive(Clone, Debug)]
struct Upstream {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

type Pending = Shared<BoxFuture<'static, Result<Arc<Upstream>, String>>>;

/// A cached manifest: hash of the `Authorization` that fetched it (None: anonymous), answer.
type CachedManifest = (Option<[u8; 32]>, Arc<Upstream>);

/// Mirror state: requests in flight (coalescing), manifests cached by digest, and the image
/// each recently seen blob belongs to.
#[derive(Default)]
pub struct MirrorState {
    in_flight: Mutex<HashMap<String, Pending>>,
    /// digest → (hash of the Authorization that fetched it, or None for anonymous; manifest).
    manifests: Mutex<HashMap<String, CachedManifest>>,
    /// Blob digest → the swarm group of the image manifest that named it ([`groups`]).
    groups: groups::ImageGroups,
}

/// The mirror's routes.
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new().route("/v2/", get(ping).head(ping)).route("/v2/{*rest}", get(dispatch).head(dispatch))
}

/// Registry-style error body (`{"errors":[{"code","message"}]}`).
fn registry_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message.into() }] });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    resp
}

fn upstream_base(daemon: &Daemon, query: &HashMap<String, String>) -> Result<url::Url, Box<Response>> {
    let base = match query.get("ns") {
        Some(ns) => {
            let host = if ns == "docker.io" { "registry-1.docker.io" } else { ns.as_str() };
            let scheme = if daemon.config.is_insecure(host) { "http" } else { "https" };
            format!("{scheme}://{host}")
        }
        None => daemon.config.registry.clone(),
    };
    url::Url::parse(&base).map_err(|e| {
        Box::new(registry_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", format!("bad registry {base:?}: {e}")))
    })
}

fn auth_hash(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers.get(header::AUTHORIZATION).map(|v| Sha256::digest(v.as_bytes()).into())
}

async fn ping(
    State(daemon): State<Arc<Daemon>>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let base = match upstream_base(&daemon, &q) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match base.join("/v2/") {
        Ok(url) => forward(&daemon, method, url, &headers).await,
        Err(e) => registry_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", e.to_string()),
    }
}

async fn dispatch(
    State(daemon): State<Arc<Daemon>>,
    Path(rest): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let base = match upstream_base(&daemon, &q) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let (name, kind, reference) = match (rest.rsplit_once("/manifests/"), rest.rsplit_once("/blobs/")) {
        (Some((name, r)), _) => (name, "manifests", r),
        (None, Some((name, r))) => (name, "blobs", r),
        (None, None) => {
            return registry_error(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                "only manifests and blobs are served by this mirror",
            )
        }
    };
    if let Err(e) = damselfly_types::repository::check(name) {
        return registry_error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {name:?}: {e}"),
        );
    }
    if kind == "manifests" {
        return manifest(&daemon, &base, name, reference, method, &headers).await;
    }
    blob(&daemon, &base, name, reference, method, &headers).await
}

async fn manifest(
    daemon: &Arc<Daemon>,
    base: &url::Url,
    name: &str,
    reference: &str,
    method: Method,
    headers: &HeaderMap,
) -> Response {
    let by_digest = reference.parse::<Sha256Digest>().ok();
    let auth = auth_hash(headers);
    if let Some(d) = &by_digest {
        let cached = daemon.mirror.manifests.lock().unwrap_or_else(|e| e.into_inner()).get(&d.to_string()).cloned();
        if let Some((owner, m)) = cached {
            if owner.is_none() || owner == auth {
                remember_blobs(daemon, &m);
                return respond(&m, method == Method::HEAD);
            }
        }
    }
    let url = match base.join(&format!("/v2/{name}/manifests/{reference}")) {
        Ok(u) => u,
        Err(e) => return registry_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()),
    };
    let result = coalesced(daemon, Method::GET, url, headers).await;
    let up = match result {
        Ok(up) => up,
        Err(e) => {
            return registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                format!("upstream registry unreachable: {e}"),
            )
        }
    };
    if let (Some(d), true) = (by_digest, up.status.is_success()) {
        if Sha256Digest::of(&up.body) == d {
            daemon.mirror.manifests.lock().unwrap_or_else(|e| e.into_inner()).insert(d.to_string(), (auth, up.clone()));
        }
    }
    if up.status.is_success() {
        remember_blobs(daemon, &up);
    }
    respond(&up, method == Method::HEAD)
}

/// Remembers the blobs an image manifest being served names, so that their downloads are one
/// swarm ([`groups`]); anything else, or a manifest that does not parse, is not remembered.
fn remember_blobs(daemon: &Daemon, manifest: &Upstream) {
    let content_type =
        manifest.headers.iter().find(|(n, _)| *n == header::CONTENT_TYPE).and_then(|(_, v)| v.to_str().ok());
    let blobs = daemon.mirror.groups.remember(Instant::now(), content_type, &manifest.body);
    if blobs > 0 {
        tracing::debug!(blobs, "image manifest served: its blobs are one swarm");
    }
}

fn respond(up: &Upstream, head: bool) -> Response {
    let body = if head { Body::empty() } else { Body::from(up.body.clone()) };
    let mut resp = Response::new(body);
    *resp.status_mut() = up.status;
    for (n, v) in &up.headers {
        resp.headers_mut().insert(n.clone(), v.clone());
    }
    resp
}

/// One upstream request per identical (url, accept, authorization) at a time.
async fn coalesced(
    daemon: &Arc<Daemon>,
    method: Method,
    url: url::Url,
    headers: &HeaderMap,
) -> Result<Arc<Upstream>, String> {
    let forwarded = forwarded_headers(headers);
    let key = {
        let mut h = Sha256::new();
        h.update(method.as_str());
        h.update(url.as_str());
        for (n, v) in &forwarded {
            h.update(n.as_str());
            h.update(v.as_bytes());
        }
        hex::encode(h.finalize())
    };
    let pending = {
        let mut map = daemon.mirror.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                let client = daemon.http.clone();
                async move { fetch_buffered(client, method, url, forwarded).await.map(Arc::new) }.boxed().shared()
            })
            .clone()
    };
    let result = pending.await;
    daemon.mirror.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    result
}

fn forwarded_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for name in [header::AUTHORIZATION, header::ACCEPT] {
        for v in headers.get_all(&name) {
            out.push((name.clone(), v.clone()));
        }
    }
    out
}

async fn fetch_buffered(
    client: reqwest::Client,
    method: Method,
    url: url::Url,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<Upstream, String> {
    let mut req = client.request(method, url);
    for (n, v) in headers {
        req = req.header(n, v);
    }
    let resp = req.send().await.map_err(|e| e.without_url().to_string())?;
    let status = resp.status();
    let headers: Vec<_> = resp
        .headers()
        .iter()
        .filter(|(n, _)| PASS_HEADERS.contains(&n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if resp.content_length().is_some_and(|l| l > MAX_MANIFEST as u64) {
        return Err(format!(
            "upstream answer of {} bytes is too large for a manifest",
            resp.content_length().unwrap_or(0)
        ));
    }
    let body = resp.bytes().await.map_err(|e| e.without_url().to_string())?;
    Ok(Upstream { status, headers, body })
}

/// A request passed to the upstream as it is (used for `/v2/` and refusals).
async fn forward(daemon: &Arc<Daemon>, method: Method, url: url::Url, headers: &HeaderMap) -> Response {
    let head = method == Method::HEAD;
    match coalesced(daemon, method, url, headers).await {
        Ok(up) => respond(&up, head),
        Err(e) => registry_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", format!("upstream registry unreachable: {e}")),
    }
}

async fn blob(
    daemon: &Arc<Daemon>,
    base: &url::Url,
    name: &str,
    digest: &str,
    method: Method,
    headers: &HeaderMap,
) -> Response {
    let Ok(d) = digest.parse::<Sha256Digest>() else {
        return registry_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", format!("invalid digest {digest:?}"));
    };
    let url = match base.join(&format!("/v2/{name}/blobs/{d}")) {
        Ok(u) => u,
        Err(e) => return registry_error(StatusCode::BAD_REQUEST, "BLOB_UNKNOWN", e.to_string()),
    };
    let task_id = TaskId::for_url(&url, Some(&d));
    if method == Method::HEAD {
        return head_blob(daemon, &task_id, &d, url, headers).await;
    }
    let auth: Vec<(String, Vec<u8>)> = headers
        .get(header::AUTHORIZATION)
        .map(|v| vec![("authorization".to_owned(), v.as_bytes().to_vec())])
        .unwrap_or_default();
    let group = daemon.mirror.groups.group_of(Instant::now(), &d);
    let req = DownloadRequest { url: url.clone(), digest: Some(d.to_string()), headers: auth, group };
    let task = match daemon.download(&task_id, req) {
        Ok(t) => t,
        Err(e) => {
            return registry_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", format!("local storage error: {e}"))
        }
    };
    let view = match wait_started(&task).await {
        Ok(v) => v,
        Err(f) => return refusal(daemon, &f, url, headers).await,
    };
    let Some(len) = view.content_length else {
        return registry_error(StatusCode::BAD_GATEWAY, "UNKNOWN", "upstream sent no length for the blob");
    };
    let range = match headers.get(header::RANGE).and_then(|r| r.to_str().ok()).map(|r| parse_range(r, len)) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(r))) => Some(r),
        Some(Err(Unsatisfiable)) => {
            let mut resp = registry_error(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN", "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    blob_response(task, &d, len, range)
}

fn blob_response(
    task: Arc<crate::storage::LocalTask>,
    d: &Sha256Digest,
    len: u64,
    range: Option<(u64, u64)>,
) -> Response {
    let (start, end) = range.unwrap_or((0, len));
    // A whole blob streams as it arrives and its last byte waits for the digest check; a range
    // is served from a verified blob only.
    let gate = if range.is_some() { Gate::Done } else { Gate::LastByte };
    let mut resp = Response::new(body(task, start, Some(end), gate));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
        h.insert("docker-content-digest", v);
    }
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    resp
}

/// `HEAD` on a blob: from the local cache when complete, else asked of the upstream (which
/// also checks the engine's credentials) without downloading anything.
async fn head_blob(
    daemon: &Arc<Daemon>,
    task_id: &TaskId,
    d: &Sha256Digest,
    url: url::Url,
    headers: &HeaderMap,
) -> Response {
    if let Some(task) = daemon.store.get(task_id) {
        let v = task.view();
        if v.status == TaskStatus::Done {
            let mut resp = Response::new(Body::empty());
            let h = resp.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(v.content_length.unwrap_or(0)));
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
            if let Ok(val) = HeaderValue::from_str(&d.to_string()) {
                h.insert("docker-content-digest", val);
            }
            return resp;
        }
    }
    forward(daemon, Method::HEAD, url, headers).await
}

/// A blob the swarm could not deliver. Auth refusals are re-asked of the upstream so the engine
/// gets the registry's own 401 with its `WWW-Authenticate` challenge.
async fn refusal(daemon: &Arc<Daemon>, f: &TaskFailure, url: url::Url, headers: &HeaderMap) -> Response {
    match f.origin_status {
        Some(401) | Some(403) => {
            let resp = forward(daemon, Method::HEAD, url, headers).await;
            if resp.status().is_client_error() {
                let (parts, _) = resp.into_parts();
                let code = if parts.status == StatusCode::UNAUTHORIZED { "UNAUTHORIZED" } else { "DENIED" };
                let mut out = registry_error(parts.status, code, f.message.clone());
                for (n, v) in parts.headers.iter().filter(|(n, _)| n.as_str() == "www-authenticate") {
                    out.headers_mut().insert(n.clone(), v.clone());
                }
                return out;
            }
            registry_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", f.message.clone())
        }
        Some(404) => registry_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", f.message.clone()),
        _ => registry_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", f.message.clone()),
    }
}

/// A `Range` that selects nothing of the blob: answered 416.
#[derive(Debug, PartialEq, Eq)]
struct Unsatisfiable;

/// The byte range `[start, end)` a `Range` header selects of a blob of `len` bytes, parsed and
/// checked by `http-range-header`. `Ok(None)`: the whole blob, for headers RFC 9110 lets a server
/// ignore (not `bytes=`, malformed, several ranges).
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    use http_range_header::RangeUnsatisfiableError as E;
    match http_range_header::parse_range_header(value).and_then(|r| r.validate(len)) {
        Ok(ranges) => match ranges.as_slice() {
            [only] => Ok(Some((*only.start(), only.end() + 1))),
            [] => Err(Unsatisfiable),
            _ => Ok(None),
        },
        Err(E::Unsatisfiable) => Err(Unsatisfiable),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-0", 0), Err(Unsatisfiable));
        // Ignored (the whole blob is served), as RFC 9110 allows.
        assert_eq!(parse_range("bytes=5-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }
}
