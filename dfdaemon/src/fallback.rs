//! Origin fallback: when the swarm cannot deliver (no supernode reachable, or no progress for
//! `stall_timeout`), the daemon fetches the task from the origin itself. Damselfly may then be
//! as slow as a direct pull, never broken.
//!
//! The body is cut into pieces by the same rule as the supernode's, hashed and stored through
//! the same [`LocalTask`] path, so readers streaming the task see no difference. Pieces already
//! present (fetched from the swarm before the stall) are kept; their bytes are identical.

use damselfly_types::id::Sha256Digest;
use damselfly_types::piece::{piece_size, CutPiece, PieceCutter};
use futures_util::StreamExt;
use tracing::{info, instrument};

use crate::download::DownloadRequest;
use crate::storage::{LocalTask, TaskFailure};
use crate::Daemon;

/// Wait before the one retry of an origin request that failed with a 5xx or no answer.
pub const ORIGIN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Downloads `req` from its origin into `task`.
#[instrument(skip_all, fields(task = %task.id))]
pub async fn from_origin(daemon: &Daemon, task: &LocalTask, req: &DownloadRequest) -> Result<(), TaskFailure> {
    let fail = |message: String| TaskFailure { origin_status: None, message };
    info!(url = %damselfly_types::id::normalise_url(&req.url), "fetching from the origin directly");
    let send = || {
        let mut builder = daemon.http.get(req.url.clone());
        for (name, value) in daemon.forward_headers.filter(&req.headers) {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        builder.send()
    };
    let mut resp = send().await;
    if resp.as_ref().map_or(true, |r| r.status().is_server_error()) {
        // One more try for a failure that may pass (a flapping origin, a reset connection).
        tokio::time::sleep(ORIGIN_RETRY_AFTER).await;
        resp = send().await;
    }
    let resp = resp.map_err(|e| fail(format!("origin unreachable: {}", e.without_url())))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        return Err(TaskFailure { origin_status: Some(status), message: format!("origin answered HTTP {status}") });
    }
    let len = resp.content_length();
    let psize = piece_size(len);
    let current = task.view();
    if current.piece_size != 0 && current.piece_size != psize {
        return Err(fail("origin length differs from the swarm's record".into()));
    }
    task.set_info(len, psize)
        .map_err(|e| fail(format!("cannot size the content file {}: {e}", task.content_path().display())))?;
    let mut cutter = PieceCutter::new(psize);
    let mut body = resp.bytes_stream();
    let limit = daemon.limits.origin_flows(task.id.as_str());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| fail(format!("origin body broke off: {}", e.without_url())))?;
        limit.take(chunk.len() as u64).await;
        for piece in cutter.push(chunk) {
            store(daemon, task, piece).await?;
        }
    }
    let whole = cutter.whole_digest();
    if let Some(piece) = cutter.finish() {
        store(daemon, task, piece).await?;
    }
    let total = cutter.total();
    if len.is_some_and(|l| l != total) {
        return Err(fail(format!("origin sent {total} bytes but announced {}", len.unwrap_or_default())));
    }
    if let Some(expected) = req.digest.as_deref().and_then(|d| d.parse::<Sha256Digest>().ok()) {
        if expected.0 != whole {
            return Err(fail(format!("content digest {} does not match {expected}", Sha256Digest(whole))));
        }
    }
    let count = cutter.count();
    task.update(|v| {
        v.set_total(count);
        v.content_length = Some(total);
    });
    if total == 0 {
        task.set_info(Some(0), psize).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

async fn store(daemon: &Daemon, task: &LocalTask, piece: CutPiece) -> Result<(), TaskFailure> {
    let n = piece.number;
    if task.view().has(n) {
        return Ok(());
    }
    task.add_pieces([(n, piece.piece)]);
    let len = piece.data.len() as u64;
    task.store_piece(n, piece.piece.offset, piece.data).await.map_err(|e| TaskFailure {
        origin_status: None,
        message: format!("cannot store piece {n} in {}: {e}", task.content_path().display()),
    })?;
    daemon.metrics.downloaded("origin", len);
    Ok(())
}
