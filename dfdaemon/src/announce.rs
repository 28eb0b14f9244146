//! What the daemon tells the supernode about its cache, outside downloads.
//!
//! * Whenever a connection to a supernode is new (daemon start, supernode restart, failover),
//!   every finished task that supernode owns now ([`crate::supernodes`]) is re-announced on a
//!   short control stream (`Register { announce_only, have: all pieces }` then `TaskDone`), so
//!   the supernode schedules this node as a parent for it right away. When a supernode goes
//!   down, the tasks it owned are announced to the next supernode in each one's order.
//! * At startup a partial task is resumed as a download whose `Register.have` lists the pieces already here
//!   (verified first), so only the missing pieces are fetched.
//! * A finished task whose pieces fail verification later ([`StoreEvent::Repair`]) is resumed
//!   the same way.
//! * An evicted task ([`StoreEvent::Evicted`]) is reported with `Register { announce_only,
//!   have: [] }` then `Leave`, so the supernode stops sending children here for it.
//!
//! Announcements carry no headers (none are stored): with `announce_only` the supernode starts
//! no origin fetch for them. A resumed download has no headers either; if the supernode must go
//! to the origin for it and the origin wants credentials, the resume fails and the next request
//! from an engine or dfget (with its credentials) starts the task again.

use std::sync::Arc;

use damselfly_net::transport::write_frame;
use damselfly_proto as pb;
use damselfly_types::id::TaskId;
use tracing::{debug, info, warn};

use crate::download::{self, DownloadRequest};
use crate::storage::{LocalTask, StoreEvent, TaskStatus};
use crate::Daemon;

/// Announcements written at once at startup.
const ANNOUNCE_PARALLELISM: usize = 32;

/// Announces and resumes what the store loaded, then serves the store's events until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    let Some(mut events) = daemon.store.take_events() else { return };
    startup(&daemon).await;
    while let Some(event) = events.recv().await {
        match event {
            StoreEvent::Repair(id) => {
                if let Some(task) = daemon.store.get(&id) {
                    resume(&daemon, &task);
                }
            }
            StoreEvent::Evicted { id, url, digest } => {
                let d = daemon.clone();
                tokio::spawn(async move {
                    if let Err(e) = announce(&d, &id, url, digest, Vec::new(), (0, None)).await {
                        debug!(task = %id, error = %e, "cannot report eviction to the supernode");
                    }
                });
            }
        }
    }
}

async fn startup(daemon: &Arc<Daemon>) {
    let partial: Vec<_> = daemon.store.tasks().into_iter().filter(|t| t.view().status != TaskStatus::Done).collect();
    for task in &partial {
        resume(daemon, task);
    }
    if !partial.is_empty() {
        info!(resumed = partial.len(), "resuming partial downloads");
    }
}

/// Link `index` has a new connection: re-announces every finished task its supernode owns now.
pub fn connected(daemon: &Arc<Daemon>, index: usize) {
    let d = daemon.clone();
    tokio::spawn(async move {
        let owned = |t: &TaskId| d.supernodes.owner(t) == Some(index);
        reannounce(&d, &owned, &d.supernodes.links()[index].name).await;
    });
}

/// Link `index` went down: announces the finished tasks it owned to their next owner.
pub fn disconnected(daemon: &Arc<Daemon>, index: usize) {
    let d = daemon.clone();
    tokio::spawn(async move {
        let moved = |t: &TaskId| {
            let order = d.supernodes.order(t);
            let rank = |i| order.iter().position(|&x| x == i);
            d.supernodes.owner(t).is_some_and(|owner| rank(index) < rank(owner))
        };
        reannounce(&d, &moved, "the next supernodes").await;
    });
}

/// Announces every finished task `which` selects to its owner.
async fn reannounce(daemon: &Arc<Daemon>, which: &(dyn Fn(&TaskId) -> bool + Sync), to: &str) {
    let started = std::time::Instant::now();
    let done: Vec<_> =
        daemon.store.tasks().into_iter().filter(|t| t.view().status == TaskStatus::Done && which(&t.id)).collect();
    if done.is_empty() {
        return;
    }
    let mut set = tokio::task::JoinSet::new();
    let mut failed = 0usize;
    for task in done.iter().cloned() {
        while set.len() >= ANNOUNCE_PARALLELISM {
            if let Some(Ok(Err(_))) = set.join_next().await {
                failed += 1;
            }
        }
        let d = daemon.clone();
        set.spawn(async move {
            let (url, digest) = task.origin();
            let table = task.with_view(|v| (v.piece_size, v.content_length));
            announce(&d, &task.id, url, digest, task.held_pieces(), table).await
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Err(e)) = r {
            debug!(error = %e, "re-announce failed");
            failed += 1;
        }
    }
    info!(
        supernode = %to,
        finished = done.len(),
        failed,
        took_ms = started.elapsed().as_millis() as u64,
        "cache re-announced"
    );
}

/// Starts a download for an incomplete task loaded from disk (or repaired), unless one runs.
pub fn resume(daemon: &Arc<Daemon>, task: &Arc<LocalTask>) {
    let (url, digest) = task.origin();
    let Some(url) = url.and_then(|u| url::Url::parse(&u).ok()) else {
        warn!(task = %task.id, "cannot resume a task without a recorded URL");
        return;
    };
    if !task.claim_download() {
        return;
    }
    info!(task = %task.id, have = task.held_pieces().len(), "resuming download");
    // A resumed task's group was not recorded: it resumes on its own.
    let req = DownloadRequest { url, digest, headers: Vec::new(), group: None };
    let (d, t) = (daemon.clone(), task.clone());
    tokio::spawn(async move {
        download::run(d, t.clone(), req).await;
        t.release_download();
    });
}

/// Tells the supernode which pieces of `id` this node holds (`have` empty: none any more), in a
/// table of `table.0`-byte pieces of a `table.1`-byte file.
async fn announce(
    daemon: &Daemon,
    id: &TaskId,
    url: Option<String>,
    digest: Option<String>,
    have: Vec<u32>,
    table: (u32, Option<u64>),
) -> anyhow::Result<()> {
    let Some(url) = url else { anyhow::bail!("no URL recorded for task {id}") };
    let owner = daemon.supernodes.owner(id).ok_or_else(|| anyhow::anyhow!("no supernode is up"))?;
    let link = &daemon.supernodes.links()[owner];
    let conn = link.connection().ok_or_else(|| anyhow::anyhow!("supernode {} is not connected", link.name))?;
    let (mut send, _recv) = conn.open_bi().await?;
    let leaving = have.is_empty();
    let register = pb::Register {
        task_id: id.to_string(),
        url,
        digest: digest.unwrap_or_default(),
        headers: Vec::new(),
        peer_id: daemon.identity.peer_id().to_string(),
        peer_addr: daemon.advertise.to_string(),
        have,
        announce_only: true,
        limits: Some(daemon.limits.to_proto()),
        piece_size: table.0,
        content_length: table.1,
        // A re-announce joins no swarm: it only tells what is here.
        group: String::new(),
    };
    let up = |kind| pb::ControlUp { kind: Some(kind) };
    let first = pb::Request { kind: Some(pb::request::Kind::Control(up(pb::control_up::Kind::Register(register)))) };
    write_frame(&mut send, &first).await?;
    let last =
        if leaving { pb::control_up::Kind::Leave(pb::Leave {}) } else { pb::control_up::Kind::Done(pb::TaskDone {}) };
    write_frame(&mut send, &up(last)).await?;
    let _ = send.finish();
    Ok(())
}
