//! Preheat from the supernode: a `Warm` request on a connection whose client certificate is the
//! supernode's makes this daemon fetch one blob through the swarm now, as a dfget would, and
//! report its progress until the blob is complete and verified here (or failed).
//!
//! This replaces the supernode calling the daemon's HTTP API: the job's registry credentials
//! travel only over the mutually authenticated QUIC connection, and the supernode reaches only
//! enrolled daemons (their certificates chain to the cluster CA), never an arbitrary URL.

use std::sync::Arc;
use std::time::Duration;

use damselfly_net::transport::write_frame;
use damselfly_proto as pb;
use damselfly_types::id::{Sha256Digest, TaskId};
use quinn::SendStream;
use tracing::{debug, info};

use crate::download::DownloadRequest;
use crate::storage::{LocalTask, TaskStatus};
use crate::Daemon;

/// How often a status frame goes out while the blob downloads.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Serves one `Warm` request: status frames until the blob is done or failed.
pub(crate) async fn serve(daemon: &Arc<Daemon>, warm: pb::Warm, mut send: SendStream) {
    let task = match start(daemon, warm) {
        Ok(task) => task,
        Err(error) => {
            let _ = write_frame(&mut send, &pb::WarmStatus { error, ..Default::default() }).await;
            let _ = send.finish();
            return;
        }
    };
    info!(task = %task.id, "preheat: fetching for the supernode");
    let mut rx = task.subscribe();
    loop {
        let status = status_of(&task);
        let last = status.done || !status.error.is_empty();
        if write_frame(&mut send, &status).await.is_err() {
            // The supernode went away: the download goes on, like one a dfget left.
            return debug!(task = %task.id, "preheat: the supernode stopped listening");
        }
        if last {
            let _ = send.finish();
            return;
        }
        let _ = tokio::time::timeout(STATUS_EVERY, rx.changed()).await;
    }
}

/// Checks the request and starts (or joins) the download.
fn start(daemon: &Arc<Daemon>, warm: pb::Warm) -> Result<Arc<LocalTask>, String> {
    let url = match url::Url::parse(&warm.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => return Err(format!("unsupported scheme {:?}", u.scheme())),
        Err(e) => return Err(format!("invalid url: {e}")),
    };
    let digest: Sha256Digest = warm.digest.parse().map_err(|e| format!("{e}"))?;
    let task_id = TaskId::for_url(&url, Some(&digest));
    let headers = warm.headers.into_iter().map(|h| (h.name, h.value)).collect();
    // A `Warm` names one blob, not the image it belongs to: no group.
    let req = DownloadRequest { url, digest: Some(digest.to_string()), headers, group: None };
    daemon.download(&task_id, req).map_err(|e| format!("local storage error: {e}"))
}

/// The task's state as a status frame.
fn status_of(task: &LocalTask) -> pb::WarmStatus {
    task.with_view(|v| {
        let mut s =
            pb::WarmStatus { bytes: v.present_bytes(), total: v.content_length.unwrap_or(0), ..Default::default() };
        match &v.status {
            TaskStatus::Done => s.done = true,
            TaskStatus::Failed(f) => {
                s.error = f.message.clone();
                s.origin_status = f.origin_status.map_or(0, u32::from);
            }
            TaskStatus::Pending | TaskStatus::Running => {}
        }
        s
    })
}
