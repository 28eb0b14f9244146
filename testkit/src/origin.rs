//! An in-process HTTP origin that serves blobs from memory and counts every body byte it sends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Size of the body chunks handed to the server: bytes are counted per chunk as the server
/// pulls it, so an aborted download is counted up to about one chunk past what the server wrote.
const CHUNK: usize = 64 << 10;

/// An HTTP server on `127.0.0.1:0`, in the test process, standing in for a registry or any origin.
///
/// It runs on its own thread and runtime, so it keeps serving whatever the test does with its own
/// runtime (even blocking calls), and stops when dropped. Served paths honour `HEAD` and a single
/// `Range: bytes=a-b` (206, or 416 when unsatisfiable).
///
/// ```
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{random_bytes, Origin};
///
/// let origin = Origin::start()?;
/// let blob = random_bytes(10 << 20, 1);
/// origin.add("/blob", blob.clone());
/// origin.add_status("/gone", 404);
/// // ... let the swarm download origin.url("/blob") ...
/// assert!(origin.bytes_served() <= blob.len() as u64, "origin fetched more than once");
/// assert_eq!(origin.requests("/blob"), 0);
/// # Ok(()) }
/// ```
pub struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a request looked like, for asserting on forwarded headers (auth, range, user agent).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Headers as received (names lower-case); non-UTF-8 values are replaced lossily.
    pub headers: Vec<(String, String)>,
}

impl RequestRecord {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
enum Entry {
    File {
        data: Bytes,
        /// Bytes per second, for serving slowly; `None` is as fast as the client reads.
        rate: Option<u64>,
    },
    Status(StatusCode),
    Redirect {
        status: StatusCode,
        location: String,
    },
}

#[derive(Default)]
struct PathCounters {
    bytes: AtomicU64,
    requests: AtomicU64,
}

#[derive(Default)]
struct OriginState {
    entries: Mutex<HashMap<String, Entry>>,
    /// Header that must be present with this exact value, per path; otherwise 401.
    required: Mutex<HashMap<String, (String, String)>>,
    counters: Mutex<HashMap<String, Arc<PathCounters>>>,
    /// `ETag` per path ([`Origin::set_etag`]).
    etags: Mutex<HashMap<String, String>>,
    total_bytes: AtomicU64,
    log: Mutex<Vec<RequestRecord>>,
    /// Bodies being sent now (from the response until its last byte was handed over) and the
    /// most at once ([`Origin::max_concurrent_bodies`]).
    active_bodies: AtomicU64,
    max_active_bodies: AtomicU64,
}

/// Counts one body as active until its last byte was handed to the server (or it was dropped).
struct ActiveBody {
    state: Arc<OriginState>,
    done: std::sync::atomic::AtomicBool,
}

impl ActiveBody {
    fn new(state: Arc<OriginState>) -> Self {
        let now = state.active_bodies.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_active_bodies.fetch_max(now, Ordering::SeqCst);
        Self { state, done: std::sync::atomic::AtomicBool::new(false) }
    }

    fn finish(&self) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.state.active_bodies.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ActiveBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Locks a mutex, ignoring poisoning: the data are plain maps that a panicking test cannot break.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl OriginState {
    fn counters(&self, path: &str) -> Arc<PathCounters> {
        lock(&self.counters).entry(path.to_string()).or_default().clone()
    }
}

impl Origin {
    /// Starts the server on `127.0.0.1` and a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Starts the server on `ip` and a free port.
    pub fn start_on(ip: Ipv4Addr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("bind the test origin on {ip}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(OriginState::default());
        let app = Router::new().fallback(serve).with_state(state.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-origin")
            .enable_all()
            .build()
            .context("build the test origin's runtime")?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("test-origin-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return eprintln!("test origin {addr}: {e}"),
                    };
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            if let Err(e) = result {
                                eprintln!("test origin {addr} stopped: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels open connections, slow downloads included.
            })
            .context("spawn the test origin thread")?;
        Ok(Origin { addr, state, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// Serves `data` at `path` (replacing what was there).
    pub fn add(&self, path: &str, data: impl Into<Bytes>) {
        self.insert(path, Entry::File { data: data.into(), rate: None });
    }

    /// Serves `data` at `path` at about `bytes_per_sec`, so a test can act while a download is
    /// in progress (kill a daemon, start a second one, ...).
    pub fn add_throttled(&self, path: &str, data: impl Into<Bytes>, bytes_per_sec: u64) {
        let rate = Some(bytes_per_sec.max(1));
        self.insert(path, Entry::File { data: data.into(), rate });
    }

    /// Answers every request for `path` with `status` and an empty body.
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status code (100..=999).
    pub fn add_status(&self, path: &str, status: u16) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status code");
        self.insert(path, Entry::Status(status));
    }

    /// Answers every request for `path` with a redirect (`status`: 301, 302, 303, 307 or 308)
    /// to `location`.
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status code.
    pub fn add_redirect(&self, path: &str, status: u16, location: &str) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status code");
        self.insert(path, Entry::Redirect { status, location: location.to_string() });
    }

    /// Answers requests for `path` that lack header `name: value` with 401, like a private
    /// registry that wants credentials.
    pub fn require_header(&self, path: &str, name: &str, value: &str) {
        lock(&self.state.required).insert(path.to_string(), (name.to_ascii_lowercase(), value.to_string()));
    }

    /// Sends `ETag: etag` with the file at `path`, and honours `If-Range` against it: a range
    /// request whose `If-Range` is not this tag gets the whole file (200), as after a change.
    /// Paths without a tag send none, and ignore `Range` when `If-Range` comes with it.
    pub fn set_etag(&self, path: &str, etag: &str) {
        lock(&self.state.etags).insert(path.to_string(), etag.to_string());
    }

    /// Stops serving `path` (404 from then on).
    pub fn remove(&self, path: &str) {
        lock(&self.state.entries).remove(path);
    }

    fn insert(&self, path: &str, entry: Entry) {
        lock(&self.state.entries).insert(path.to_string(), entry);
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The most response bodies that were being sent at the same time (a body counts from its
    /// response until its last byte was handed to the server).
    pub fn max_concurrent_bodies(&self) -> u64 {
        self.state.max_active_bodies.load(Ordering::SeqCst)
    }

    /// Body bytes handed to the connections, over all paths.
    pub fn bytes_served(&self) -> u64 {
        self.state.total_bytes.load(Ordering::SeqCst)
    }

    /// Body bytes handed to the connections for `path`.
    pub fn bytes_served_for(&self, path: &str) -> u64 {
        self.state.counters(path).bytes.load(Ordering::SeqCst)
    }

    /// Requests received for `path` (any method, any answer).
    pub fn requests(&self, path: &str) -> u64 {
        self.state.counters(path).requests.load(Ordering::SeqCst)
    }

    /// `GET` requests received for `path`: how often the content was asked for (a `HEAD`, as
    /// the supernode's authorization check sends, fetches nothing).
    pub fn gets(&self, path: &str) -> u64 {
        lock(&self.state.log).iter().filter(|r| r.method == "GET" && r.path == path).count() as u64
    }

    /// `HEAD` requests received for `path`.
    pub fn heads(&self, path: &str) -> u64 {
        lock(&self.state.log).iter().filter(|r| r.method == "HEAD" && r.path == path).count() as u64
    }

    /// Requests received over all paths.
    pub fn total_requests(&self) -> u64 {
        lock(&self.state.log).len() as u64
    }

    /// Every request received so far, in arrival order.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin").field("addr", &self.addr).finish()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(State(state): State<Arc<OriginState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    lock(&state.log).push(RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_string),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
    });
    let counters = state.counters(&path);
    counters.requests.fetch_add(1, Ordering::SeqCst);

    if let Some((name, value)) = lock(&state.required).get(&path).cloned() {
        if headers.get(&name).and_then(|v| v.to_str().ok()) != Some(value.as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let entry = lock(&state.entries).get(&path).cloned();
    let (data, rate) = match entry {
        None => return StatusCode::NOT_FOUND.into_response(),
        Some(Entry::Status(status)) => return status.into_response(),
        Some(Entry::Redirect { status, location }) => {
            let mut response = status.into_response();
            insert_header(&mut response, header::LOCATION, location);
            return response;
        }
        Some(Entry::File { data, rate }) => (data, rate),
    };
    if method != Method::GET && method != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }

    let total = data.len() as u64;
    let etag = lock(&state.etags).get(&path).cloned();
    // RFC 9110 13.1.5: a range under a validator that does not match is ignored.
    let if_range = headers.get(header::IF_RANGE).map(|v| v.to_str().ok());
    let range_applies = if_range.is_none_or(|v| v.is_some() && v == etag.as_deref());
    let range = headers
        .get(header::RANGE)
        .filter(|_| range_applies)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, total));
    let (status, start, end) = match range {
        None | Some(RangeSpec::Ignored) => (StatusCode::OK, 0, total),
        Some(RangeSpec::Unsatisfiable) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            insert_header(&mut response, header::CONTENT_RANGE, format!("bytes */{total}"));
            return response;
        }
        Some(RangeSpec::Bytes { start, end }) => (StatusCode::PARTIAL_CONTENT, start, end),
    };

    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let slice = data.slice(start as usize..end as usize);
        counted_body(slice, rate, counters, state.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    insert_header(&mut response, header::CONTENT_LENGTH, (end - start).to_string());
    insert_header(&mut response, header::ACCEPT_RANGES, "bytes".to_string());
    insert_header(&mut response, header::CONTENT_TYPE, "application/octet-stream".to_string());
    if let Some(etag) = etag {
        insert_header(&mut response, header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{total}", end - 1);
        insert_header(&mut response, header::CONTENT_RANGE, range);
    }
    response
}

fn insert_header(response: &mut Response, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

/// A body that yields `data` in chunks, counting each chunk as the server pulls it, optionally
/// paced to `rate` bytes per second.
fn counted_body(data: Bytes, rate: Option<u64>, counters: Arc<PathCounters>, state: Arc<OriginState>) -> Body {
    let chunk = match rate {
        Some(rate) => (rate / 10).clamp(1 << 10, CHUNK as u64) as usize,
        None => CHUNK,
    };
    let started = Instant::now();
    // Counted before the first byte and until the last one is produced: a client can only
    // finish reading a body after it stopped counting here.
    let active = Arc::new(ActiveBody::new(state.clone()));
    let stream = futures_util::stream::unfold(0usize, move |offset| {
        let data = data.clone();
        let counters = counters.clone();
        let state = state.clone();
        let active = active.clone();
        async move {
            if offset >= data.len() {
                active.finish();
                return None;
            }
            if let Some(rate) = rate {
                let due = started + Duration::from_secs_f64(offset as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
            let end = (offset + chunk).min(data.len());
            let piece = data.slice(offset..end);
            let n = piece.len() as u64;
            counters.bytes.fetch_add(n, Ordering::SeqCst);
            state.total_bytes.fetch_add(n, Ordering::SeqCst);
            if end == data.len() {
                active.finish();
            }
            Some((Ok::<_, Infallible>(piece), end))
        }
    });
    Body::from_stream(stream)
}

#[derive(Debug, PartialEq)]
enum RangeSpec {
    /// A syntactically valid range `start..end` (end exclusive) within the body.
    Bytes { start: u64, end: u64 },
    /// A range that starts beyond the body: 416.
    Unsatisfiable,
    /// A header we do not handle (several ranges, other units, garbage): serve the whole body,
    /// which RFC 9110 allows.
    Ignored,
}

/// The one range the origin serves: `http-range-header` parses and checks the header against
/// the body's length; several ranges are served as the whole body.
fn parse_range(value: &str, total: u64) -> RangeSpec {
    use http_range_header::RangeUnsatisfiableError;
    let validated = http_range_header::parse_range_header(value).and_then(|r| r.validate(total));
    match validated.as_deref() {
        Ok([one]) => RangeSpec::Bytes { start: *one.start(), end: one.end() + 1 },
        // A suffix range of an empty body selects nothing: there is nothing to send a part of.
        Ok([]) | Err(RangeUnsatisfiableError::Unsatisfiable) => RangeSpec::Unsatisfiable,
        Ok(_) | Err(_) => RangeSpec::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_bytes;

    fn client() -> reqwest::Client {
        crate::http_client()
    }

    #[test]
    fn range_parsing() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes { start: 0, end: 10 });
        assert_eq!(parse_range("bytes=90-", 100), Bytes { start: 90, end: 100 });
        assert_eq!(parse_range("bytes=90-200", 100), Bytes { start: 90, end: 100 });
        assert_eq!(parse_range("bytes=-10", 100), Bytes { start: 90, end: 100 });
        assert_eq!(parse_range("bytes=-200", 100), Bytes { start: 0, end: 100 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignored);
        assert_eq!(parse_range("items=0-1", 100), Ignored);
        assert_eq!(parse_range("bytes=x-1", 100), Ignored);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 1), Bytes { start: 0, end: 1 });
    }

    #[tokio::test]
    async fn serves_and_counts_whole_files() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(CHUNK * 3 + 5, 1);
        origin.add("/a", data.clone());
        origin.add("/empty", Bytes::new());
        let got = client().get(origin.url("/a")).send().await?;
        assert_eq!(got.status(), 200);
        assert_eq!(got.content_length(), Some(data.len() as u64));
        assert_eq!(got.bytes().await?, data);
        let empty = client().get(origin.url("/empty")).send().await?;
        assert_eq!(empty.status(), 200);
        assert!(empty.bytes().await?.is_empty());
        assert_eq!(origin.bytes_served(), data.len() as u64);
        assert_eq!(origin.bytes_served_for("/a"), data.len() as u64);
        assert_eq!(origin.requests("/a"), 1);
        assert_eq!(origin.requests("/empty"), 1);
        assert_eq!(origin.total_requests(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn honours_ranges() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(1000, 2);
        origin.add("/r", data.clone());
        let part = client().get(origin.url("/r")).header("Range", "bytes=100-199").send().await?;
        assert_eq!(part.status(), 206);
        assert_eq!(part.headers().get("content-range").map(|v| v.as_bytes()), Some(&b"bytes 100-199/1000"[..]));
        assert_eq!(part.bytes().await?, data.slice(100..200));
        let tail = client().get(origin.url("/r")).header("Range", "bytes=-10").send().await?;
        assert_eq!(tail.status(), 206);
        assert_eq!(tail.bytes().await?, data.slice(990..));
        let beyond = client().get(origin.url("/r")).header("Range", "bytes=1000-").send().await?;
        assert_eq!(beyond.status(), 416);
        assert_eq!(beyond.headers().get("content-range").map(|v| v.as_bytes()), Some(&b"bytes */1000"[..]));
        assert_eq!(origin.bytes_served(), 110);
        Ok(())
    }

    #[tokio::test]
    async fn if_range_with_a_stale_etag_gets_the_whole_file() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(1000, 7);
        origin.add("/e", data.clone());
        origin.set_etag("/e", "\"v2\"");
        let same =
            client().get(origin.url("/e")).header("Range", "bytes=900-").header("If-Range", "\"v2\"").send().await?;
        assert_eq!(same.status(), 206);
        assert_eq!(same.headers().get("etag").map(|v| v.as_bytes()), Some(&b"\"v2\""[..]));
        assert_eq!(same.bytes().await?, data.slice(900..));
        let stale =
            client().get(origin.url("/e")).header("Range", "bytes=900-").header("If-Range", "\"v1\"").send().await?;
        assert_eq!(stale.status(), 200);
        assert_eq!(stale.bytes().await?, data);
        Ok(())
    }

    #[tokio::test]
    async fn head_sends_length_but_no_body() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        origin.add("/h", random_bytes(4321, 3));
        let head = client().head(origin.url("/h")).send().await?;
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers().get("content-length").map(|v| v.as_bytes()), Some(&b"4321"[..]));
        assert_eq!(origin.bytes_served(), 0);
        assert_eq!(origin.requests("/h"), 1);
        Ok(())
    }

    #[tokio::test]
    async fn statuses_and_missing_paths() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        origin.add_status("/missing", 404);
        origin.add_status("/broken", 503);
        for (path, status) in [("/missing", 404), ("/broken", 503), ("/never-added", 404)] {
            let response = client().get(origin.url(path)).send().await?;
            assert_eq!(response.status(), status, "{path}");
            assert_eq!(origin.requests(path), 1);
        }
        origin.add("/gone", Bytes::from_static(b"x"));
        origin.remove("/gone");
        assert_eq!(client().get(origin.url("/gone")).send().await?.status(), 404);
        assert_eq!(origin.bytes_served(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn required_header_gates_access_and_is_logged() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        origin.add("/private", Bytes::from_static(b"secret"));
        origin.require_header("/private", "Authorization", "Bearer t0ken");
        let denied = client().get(origin.url("/private")).send().await?;
        assert_eq!(denied.status(), 401);
        let allowed = client().get(origin.url("/private?x=1")).header("authorization", "Bearer t0ken").send().await?;
        assert_eq!(allowed.status(), 200);
        assert_eq!(allowed.bytes().await?, &b"secret"[..]);
        let log = origin.request_log();
        assert_eq!(log.len(), 2);
        assert_eq!(log[1].header("Authorization"), Some("Bearer t0ken"));
        assert_eq!(log[1].query.as_deref(), Some("x=1"));
        Ok(())
    }

    #[tokio::test]
    async fn early_disconnect_is_not_counted_in_full() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(64 << 20, 4);
        origin.add("/big", data.clone());
        let mut response = client().get(origin.url("/big")).send().await?;
        let first = response.chunk().await?.map_or(0, |c| c.len());
        assert!(first > 0);
        drop(response);
        // The server notices the reset within moments; counting stops there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let served = origin.bytes_served();
        assert!(served > 0);
        assert!(served < data.len() as u64 / 2, "counted {served} of {} after an early disconnect", data.len());
        Ok(())
    }

    #[tokio::test]
    async fn throttled_paths_are_slow() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(200 << 10, 5);
        origin.add_throttled("/slow", data.clone(), 400 << 10);
        let started = std::time::Instant::now();
        let got = client().get(origin.url("/slow")).send().await?.bytes().await?;
        let took = started.elapsed();
        assert_eq!(got, data);
        assert!(took >= Duration::from_millis(400), "took only {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(origin.bytes_served(), data.len() as u64);
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_clients_are_all_counted() -> anyhow::Result<()> {
        let origin = Origin::start()?;
        let data = random_bytes(1 << 20, 6);
        origin.add("/c", data.clone());
        let fetches = (0..8).map(|_| {
            let url = origin.url("/c");
            async move { client().get(url).send().await?.bytes().await }
        });
        for body in futures_util::future::join_all(fetches).await {
            assert_eq!(body?, data);
        }
        assert_eq!(origin.bytes_served(), 8 * data.len() as u64);
        assert_eq!(origin.requests("/c"), 8);
        Ok(())
    }
}
