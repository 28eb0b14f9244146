//! The daemon's HTTP side on the proxy port: `/healthz`, `/metrics`, and the dfget API
//! `POST /api/v1/download`, which streams a task's bytes in order as its pieces arrive.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use damselfly_types::id::{Sha256Digest, TaskId};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::download::DownloadRequest;
use crate::storage::{LocalTask, TaskFailure, TaskStatus, TaskView};
use crate::{Daemon, ShutdownSignal};

/// Largest chunk a response body yields at once.
const BODY_CHUNK: usize = 1 << 20;

/// Body of `POST /api/v1/download`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DownloadBody {
    /// URL to download.
    pub url: String,
    /// Expected `sha256:<hex>` digest, if known.
    #[serde(default)]
    pub digest: Option<String>,
    /// Headers for the origin request (name, value).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The client shares this host's filesystem and takes the finished file from the cache
    /// itself (hard link or copy): the answer is a progress stream ([`ExportEvent`] lines)
    /// ending with the content file's location, not the bytes.
    #[serde(default)]
    pub local: bool,
    /// Swarm group: downloads of one image that name the same group are scheduled as one swarm
    /// (a hint, it grants nothing). At most 256 bytes, no control characters; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Content type of the progress stream of a local download.
pub const NDJSON: &str = "application/x-ndjson";

/// One line of a local download's progress stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportEvent {
    /// Bytes present so far, and the total once known.
    Progress {
        /// Bytes of present pieces.
        bytes: u64,
        /// Content length, once known.
        total: Option<u64>,
    },
    /// The task is done (complete and verified): the content file to link or copy.
    Done {
        /// Path of the content file on this host.
        path: String,
        /// Its device and inode, so the client can check it links the file the daemon means.
        dev: u64,
        /// Its inode number.
        ino: u64,
        /// Its length.
        size: u64,
    },
    /// The download failed.
    Failed {
        /// Why.
        error: String,
        /// The origin's status, when the origin refused.
        origin_status: Option<u16>,
    },
}

/// Error body of the API.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
    /// The origin's HTTP status, when the origin answered with an error.
    #[serde(default)]
    pub origin_status: Option<u16>,
}

/// Header naming the task id on download responses.
pub const TASK_HEADER: &str = "x-damselfly-task";

/// The routes.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/download", post(download))
        .route("/api/v1/tasks/{id}", get(task_status))
        .merge(crate::mirror::routes())
        .with_state(daemon)
}

/// Serves until shutdown.
pub async fn serve(daemon: Arc<Daemon>, listener: tokio::net::TcpListener, mut shutdown: ShutdownSignal) {
    let result = axum::serve(listener, router(daemon))
        .with_graceful_shutdown(async move {
            damselfly_net::shutdown::requested(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// A task's state as `GET /api/v1/tasks/{id}` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskStatusView {
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The origin's status when the origin refused.
    #[serde(default)]
    pub origin_status: Option<u16>,
    /// Total length, once known.
    #[serde(default)]
    pub content_length: Option<u64>,
    /// Pieces present here.
    pub pieces_present: u32,
    /// Pieces in all, once known.
    #[serde(default)]
    pub total_pieces: Option<u32>,
}

async fn task_status(State(daemon): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    let Some(task) = TaskId::is_valid(&id).then(|| daemon.store.get(&TaskId::new(id.clone()))).flatten() else {
        return error(StatusCode::NOT_FOUND, format!("no task {id} here"), None);
    };
    let v = task.view();
    let (status, error, origin_status) = match &v.status {
        TaskStatus::Pending => ("pending", None, None),
        TaskStatus::Running => ("running", None, None),
        TaskStatus::Done => ("done", None, None),
        TaskStatus::Failed(f) => ("failed", Some(f.message.clone()), f.origin_status),
    };
    Json(TaskStatusView {
        status: status.into(),
        error,
        origin_status,
        content_length: v.content_length,
        pieces_present: v.have_count,
        total_pieces: v.total_pieces,
    })
    .into_response()
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], daemon.metrics.render())
}

fn error(status: StatusCode, error: String, origin_status: Option<u16>) -> Response {
    (status, Json(ApiError { error, origin_status })).into_response()
}

async fn download(State(daemon): State<Arc<Daemon>>, Json(body): Json<DownloadBody>) -> Response {
    let url = match url::Url::parse(&body.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => return error(StatusCode::BAD_REQUEST, format!("unsupported scheme {:?}", u.scheme()), None),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid url: {e}"), None),
    };
    let digest = match body.digest.as_deref().map(str::parse::<Sha256Digest>).transpose() {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    let group = match checked_group(body.group) {
        Ok(g) => g,
        Err(e) => return error(StatusCode::BAD_REQUEST, e, None),
    };
    let task_id = TaskId::for_url(&url, digest.as_ref());
    let headers = body.headers.into_iter().map(|(n, v)| (n, v.into_bytes())).collect();
    let req = DownloadRequest { url, digest: digest.map(|d| d.to_string()), headers, group };
    let task = match daemon.download(&task_id, req) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("local storage error: {e}"), None),
    };
    if body.local {
        return export_task(task).await;
    }
    stream_task(task).await
}

/// The body's group, checked: `None` for none (absent or empty), the API's error message for one
/// that fails `damselfly_types::group::check`.
fn checked_group(group: Option<String>) -> Result<Option<String>, String> {
    match group {
        None => Ok(None),
        Some(g) if g.is_empty() => Ok(None),
        Some(g) => match damselfly_types::group::check(&g) {
            Ok(()) => Ok(Some(g)),
            Err(e) => Err(format!("invalid group: {e}")),
        },
    }
}

/// Answers a local download: progress lines while the task runs, then where its verified
/// content file is. The client puts the file in place itself, with its own permissions (the
/// daemon never writes where a client asks it to).
async fn export_task(task: Arc<LocalTask>) -> Response {
    if let Err(f) = wait_started(&task).await {
        return failure_response(f);
    }
    let task_id = task.id.to_string();
    let rx = task.subscribe();
    let lines = futures_util::stream::unfold((task, rx, true, false), |(task, mut rx, first, finished)| async move {
        if finished {
            return None;
        }
        let mut vanished = false;
        if !first {
            // At most one progress line per 50 ms: the watch channel keeps only the newest state.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            vanished = rx.changed().await.is_err();
        }
        let (mut event, mut last) = export_event(&task, vanished);
        if matches!(event, ExportEvent::Done { .. }) {
            // The file leaves without being read through this daemon: pieces loaded from disk
            // are hashed first, and a bad one is fetched again before the file is handed out.
            match task.verify_all().await {
                Ok(true) => {}
                Ok(false) => (event, last) = (export_progress(&task), false),
                Err(e) => {
                    let error = format!("cannot verify {}: {e}", task.content_path().display());
                    (event, last) = (ExportEvent::Failed { error, origin_status: None }, true);
                }
            }
        }
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), (task, rx, false, last)))
    });
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        resp.headers_mut().insert(TASK_HEADER, v);
    }
    resp
}

/// A progress event for the task now.
fn export_progress(task: &LocalTask) -> ExportEvent {
    let (bytes, total) = task.with_view(|v| (v.present_bytes(), v.content_length));
    ExportEvent::Progress { bytes, total }
}

/// The event describing the task now, and whether it is the last one.
fn export_event(task: &LocalTask, vanished: bool) -> (ExportEvent, bool) {
    let (status, bytes, total) = task.with_view(|v| (v.status.clone(), v.present_bytes(), v.content_length));
    match status {
        TaskStatus::Done => match std::fs::metadata(task.content_path()) {
            Ok(meta) => {
                use std::os::unix::fs::MetadataExt;
                let path = task.content_path().to_string_lossy().into_owned();
                (ExportEvent::Done { path, dev: meta.dev(), ino: meta.ino(), size: meta.len() }, true)
            }
            Err(e) => (ExportEvent::Failed { error: format!("content file vanished: {e}"), origin_status: None }, true),
        },
        TaskStatus::Failed(f) => (ExportEvent::Failed { error: f.message, origin_status: f.origin_status }, true),
        _ if vanished => (ExportEvent::Failed { error: "download vanished".into(), origin_status: None }, true),
        _ => (ExportEvent::Progress { bytes, total }, false),
    }
}

/// Answers with the task's bytes, streamed in order as pieces arrive. Errors before the first
/// byte become an error status; later ones break the body off (the client sees a short body).
pub async fn stream_task(task: Arc<LocalTask>) -> Response {
    let view = match wait_started(&task).await {
        Ok(v) => v,
        Err(f) => return failure_response(f),
    };
    let task_id = task.id.to_string();
    let end = view.content_length;
    let mut resp = Response::new(body(task, 0, end, Gate::LastByte));
    if let Some(len) = view.content_length {
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&task_id) {
        resp.headers_mut().insert(TASK_HEADER, v);
    }
    resp
}

/// The error answer for a task that failed before its first byte.
fn failure_response(f: TaskFailure) -> Response {
    let status = match f.origin_status {
        Some(404) => StatusCode::NOT_FOUND,
        Some(401) => StatusCode::UNAUTHORIZED,
        Some(403) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, f.message, f.origin_status)
}

/// Waits until the task's length and piece size are known (or it failed).
pub async fn wait_started(task: &LocalTask) -> Result<TaskView, TaskFailure> {
    let mut rx = task.subscribe();
    let view = rx
        .wait_for(|v| v.status != TaskStatus::Pending || v.complete())
        .await
        .map(|v| v.clone())
        .map_err(|_| TaskFailure { origin_status: None, message: "download vanished".into() })?;
    match view.status {
        TaskStatus::Failed(f) => Err(f),
        _ => Ok(view),
    }
}

/// What a body waits for before it hands out bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Bytes stream as pieces arrive; the last byte waits until the task is done (for a task
    /// with a digest: until its whole content matched it). A body cut off before the end is
    /// what a reader sees when the content turns out wrong.
    LastByte,
    /// Nothing is sent before the task is done (a range: its reader cannot tell a complete
    /// body from a verified one).
    Done,
}

/// A body streaming bytes `start..end` of the task (`end` None: to the end, length unknown).
pub fn body(task: Arc<LocalTask>, start: u64, end: Option<u64>, gate: Gate) -> Body {
    let rx = task.subscribe();
    let reader = Reader { task, rx, pos: start, end, gate, finished: false };
    Body::from_stream(futures_util::stream::unfold(reader, Reader::next))
}

/// Reads a task front to back, waiting for each piece.
struct Reader {
    task: Arc<LocalTask>,
    rx: watch::Receiver<TaskView>,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send, when known.
    end: Option<u64>,
    gate: Gate,
    finished: bool,
}

impl Reader {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        if self.finished || self.end.is_some_and(|e| self.pos >= e) {
            return None;
        }
        if self.gate == Gate::Done {
            if let Err(e) = self.wait_done().await {
                return Some((Err(e), self.stop()));
            }
        }
        let pos = self.pos;
        let ready = self
            .rx
            .wait_for(|v| {
                let n = piece_at(v, pos);
                n.is_some_and(|n| v.has(n)) || v.failed() || v.complete() && v.content_length.is_some_and(|l| pos >= l)
            })
            .await
            .map(|v| (v.status.clone(), v.content_length, piece_at(&v, pos).and_then(|n| v.piece(n).cloned())));
        let (status, len, info) = match ready {
            Ok(r) => r,
            Err(_) => return Some((Err(std::io::Error::other("download vanished")), self.stop())),
        };
        if let TaskStatus::Failed(f) = status {
            return Some((Err(std::io::Error::other(f.message)), self.stop()));
        }
        let Some(info) = info else {
            // Past the end of a file whose length was unknown until now.
            return if len.is_some_and(|l| pos >= l) {
                None
            } else {
                Some((Err(std::io::Error::other("piece table incomplete")), self.stop()))
            };
        };
        let piece_end = info.offset + u64::from(info.size);
        let stop_at = self.end.map_or(piece_end, |e| e.min(piece_end));
        let n = (stop_at - pos).min(BODY_CHUNK as u64) as usize;
        if len.is_some_and(|l| pos + n as u64 >= l) {
            // The last byte of the content: only once the task is done (verified).
            if let Err(e) = self.wait_done().await {
                return Some((Err(e), self.stop()));
            }
        }
        let chunk = match self.task.read_at(pos, n).await {
            Ok(c) => c,
            Err(e) => return Some((Err(e), self.stop())),
        };
        self.pos += n as u64;
        Some((Ok(chunk), self))
    }

    /// Waits until the task is done; an error when it failed instead.
    async fn wait_done(&mut self) -> std::io::Result<()> {
        let status = self
            .rx
            .wait_for(|v| v.status == TaskStatus::Done || v.failed())
            .await
            .map(|v| v.status.clone())
            .map_err(|_| std::io::Error::other("download vanished"))?;
        match status {
            TaskStatus::Failed(f) => Err(std::io::Error::other(f.message)),
            _ => Ok(()),
        }
    }

    /// After an error the next poll ends the stream.
    fn stop(mut self) -> Self {
        self.finished = true;
        self
    }
}

/// The number of the piece holding byte `pos`, once the piece size is known.
fn piece_at(v: &TaskView, pos: u64) -> Option<u32> {
    (v.piece_size > 0).then(|| (pos / u64::from(v.piece_size)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_names_a_group_or_none() {
        let body: DownloadBody = serde_json::from_str(r#"{"url":"http://o/x"}"#).expect("no group");
        assert_eq!(body.group, None);
        let body: DownloadBody = serde_json::from_str(r#"{"url":"http://o/x","group":"sha256:ab"}"#).expect("a group");
        assert_eq!(checked_group(body.group), Ok(Some("sha256:ab".to_owned())));
        // Empty is none; a client that names none sends no field.
        assert_eq!(checked_group(Some(String::new())), Ok(None));
        assert_eq!(checked_group(None), Ok(None));
        let none =
            DownloadBody { url: "http://o/x".into(), digest: None, headers: Vec::new(), local: false, group: None };
        assert!(!serde_json::to_string(&none).expect("serialises").contains("group"));
    }

    #[test]
    fn an_invalid_group_is_a_bad_request_that_says_why() {
        let long = checked_group(Some("g".repeat(damselfly_types::group::MAX_LEN + 1))).unwrap_err();
        assert!(long.starts_with("invalid group:") && long.contains("256 bytes"), "{long}");
        let control = checked_group(Some("a\nb".into())).unwrap_err();
        assert!(control.contains("control characters"), "{control}");
        assert_eq!(
            checked_group(Some("g".repeat(damselfly_types::group::MAX_LEN))),
            Ok(Some("g".repeat(damselfly_types::group::MAX_LEN)))
        );
    }
}
