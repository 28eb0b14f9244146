//! Origin fetch: one HTTP(S) GET per task, cut into pieces as the body arrives.
//!
//! Each piece is written at its offset, hashed, recorded in the cache (servable from then on)
//! and announced to the scheduler before the next one is complete. The whole body is hashed as
//! it streams and checked against the task's digest at the end; a mismatch, a short body or an
//! HTTP error fails the task and removes its content.
//!
//! Every request goes through [`client::OriginClient`], which enforces the [`policy`] (no SSRF)
//! and the header allow-list.

pub mod client;
pub mod limits;
pub mod policy;

use std::sync::Arc;

use damselfly_types::id::{Sha256Digest, TaskId};
use damselfly_types::piece::{piece_size, CutPiece, PieceCutter};
use futures_util::StreamExt;
use tracing::{debug, info, instrument, warn};

use crate::cache::{CacheState, CachedTask};
use crate::Shared;
use damselfly_scheduler::{Event, PieceMeta};

/// What to fetch.
pub struct OriginRequest {
    /// The task.
    pub task: TaskId,
    /// Origin URL.
    pub url: url::Url,
    /// Expected content digest, if known.
    pub digest: Option<Sha256Digest>,
    /// Headers the requesting peer asked to forward (credentials included; never logged). Only
    /// the allow-listed ones reach the origin.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why an origin fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The origin policy refused the URL, a redirect hop or an address the name resolved to.
    #[error(transparent)]
    Refused(#[from] policy::Refused),
    /// The origin answered with a non-success status.
    #[error("origin answered HTTP {status} for {url}")]
    Status {
        /// HTTP status.
        status: u16,
        /// URL without credentials.
        url: String,
    },
    /// Could not reach the origin or the body broke off.
    #[error("origin request to {url} failed: {message}")]
    Request {
        /// URL without credentials.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The body is shorter or longer than its `Content-Length`.
    #[error("origin sent {got} bytes but announced {expected}")]
    Length {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The content does not match the task's digest.
    #[error("content digest {got} does not match the expected {expected}")]
    Digest {
        /// Digest of what arrived.
        got: Sha256Digest,
        /// Digest asked for.
        expected: Sha256Digest,
    },
    /// Writing to the cache failed (disk full, I/O error).
    #[error("cannot write cached content: {0}")]
    Storage(#[from] std::io::Error),
}

impl OriginError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the origin policy refused the fetch: final for the peers too.
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// Attempts of an origin fetch that gets a 5xx before any byte.
const ORIGIN_ATTEMPTS: usize = 3;
/// Wait between two such attempts.
const ORIGIN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the origin fetch of `req.task` unless one is running or complete: the coalescing point
/// shared by peer registrations and preheat jobs, so that whoever asks first fetches and everyone
/// else joins. Returns the task's cache entry and whether this call started the fetch.
pub fn start_fetch(shared: &Arc<Shared>, req: OriginRequest) -> std::io::Result<(Arc<CachedTask>, bool)> {
    loop {
        if let Some(entry) = shared.cache.create_if_absent(&req.task)? {
            tokio::spawn(run(shared.clone(), entry.clone(), req));
            return Ok((entry, true));
        }
        // A usable entry exists (unless it failed or vanished in between: then try again).
        if let Some(entry) = shared.cache.get(&req.task).filter(|e| e.state() != CacheState::Failed) {
            return Ok((entry, false));
        }
    }
}

/// Runs the fetch to its end, reporting every step to the scheduler.
#[instrument(skip_all, fields(task = %req.task))]
pub async fn run(shared: Arc<Shared>, entry: Arc<CachedTask>, req: OriginRequest) {
    // Under limits the peers hear every few seconds that the fetch waits (see `limits`).
    let queued = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let waiting = shared
        .origin_limits
        .any()
        .then(|| tokio::spawn(limits::keep_peers_waiting(shared.clone(), req.task.clone(), queued.clone())));
    let slot = shared.origin_limits.admit().await;
    queued.store(false, std::sync::atomic::Ordering::Relaxed);
    shared.metrics.origin_fetches.inc();
    let url = damselfly_types::id::normalise_url(&req.url);
    info!(url = %url, "origin fetch started");
    let mut outcome = fetch(&shared, &entry, &req).await;
    for _ in 1..ORIGIN_ATTEMPTS {
        // A 5xx comes before any byte landed: asking again is safe, and cheaper than sending
        // every peer of the task to the origin itself.
        match &outcome {
            Err(e) if e.status().is_some_and(|s| s >= 500) => {
                debug!(error = %e, "origin failed: asking again");
                tokio::time::sleep(ORIGIN_RETRY_AFTER).await;
                outcome = fetch(&shared, &entry, &req).await;
            }
            _ => break,
        }
    }
    drop(slot);
    if let Some(w) = waiting {
        w.abort();
    }
    match outcome {
        Ok((len, pieces)) => {
            // Recorded durably (content synced first) for restarts, then complete.
            shared.cache.complete(&entry, len).await;
            info!(bytes = len, pieces, "origin fetch complete");
            shared.handle(Event::OriginComplete { task: req.task, total_pieces: pieces, content_length: len });
        }
        Err(e) => {
            warn!(error = %e, "origin fetch failed");
            shared.metrics.origin_failures.inc();
            shared.cache.fail_with(&entry, e.to_string());
            let (status, refused) = (e.status(), e.is_refused());
            shared.handle(Event::OriginFailed { task: req.task, status, refused, message: e.to_string() });
        }
    }
}

async fn fetch(shared: &Shared, entry: &CachedTask, req: &OriginRequest) -> Result<(u64, u32), OriginError> {
    let url_text = damselfly_types::id::normalise_url(&req.url);
    let request_err =
        |e: reqwest::Error| OriginError::Request { url: url_text.clone(), message: client::describe(&e.without_url()) };
    let headers_due = shared.config.origin_header_timeout;
    let send = shared.origins.send(reqwest::Method::GET, &req.url, &req.headers, None);
    let resp = tokio::time::timeout(headers_due, send)
        .await
        .map_err(|_| OriginError::Request {
            url: url_text.clone(),
            message: format!("no response within {headers_due:?}"),
        })?
        .map_err(|e| match e {
            client::SendError::Refused(r) => OriginError::Refused(r),
            other => OriginError::Request { url: url_text.clone(), message: other.to_string() },
        })?;
    if !resp.status().is_success() {
        return Err(OriginError::Status { status: resp.status().as_u16(), url: url_text });
    }
    let content_length = resp.content_length();
    let psize = piece_size(content_length);
    // Room in the cache quota before any byte is written (evicts idle tasks, or fails).
    entry.start(content_length, psize)?;
    shared.handle(Event::TaskStarted { task: req.task.clone(), content_length, piece_size: psize });

    let mut cutter = PieceCutter::new(psize);
    let mut body = resp.bytes_stream();
    let limit = shared.origin_limits.rate.flow(req.task.as_str());
    loop {
        let next = tokio::time::timeout(shared.config.origin_read_timeout, body.next()).await;
        let chunk = match next {
            Err(_) => return Err(OriginError::Request { url: url_text, message: "origin stopped sending".into() }),
            Ok(None) => break,
            Ok(Some(c)) => c.map_err(request_err)?,
        };
        shared.metrics.origin_bytes.inc_by(chunk.len() as u64);
        limit.take(chunk.len() as u64).await;
        for piece in cutter.push(chunk) {
            land(shared, entry, &req.task, piece).await?;
        }
    }
    let (total, whole) = (cutter.total(), cutter.whole_digest());
    if let Some(piece) = cutter.finish() {
        land(shared, entry, &req.task, piece).await?;
    }
    if let Some(expected) = content_length {
        if expected != total {
            return Err(OriginError::Length { got: total, expected });
        }
    }
    let got = Sha256Digest(whole);
    if let Some(expected) = req.digest {
        if expected != got {
            return Err(OriginError::Digest { got, expected });
        }
    }
    Ok((total, cutter.count()))
}

/// Writes a piece to the cache file, then makes it servable and tells the scheduler.
async fn land(shared: &Shared, entry: &CachedTask, task: &TaskId, piece: CutPiece) -> Result<(), OriginError> {
    // Charges the high-water mark when the length was not announced.
    entry.land(piece.number, piece.piece, piece.data).await?;
    let meta = PieceMeta { number: piece.number, piece: piece.piece };
    shared.count_origin_bytes(task, u64::from(meta.piece.size));
    shared.handle(Event::PieceLanded { task: task.clone(), piece: meta });
    Ok(())
}
