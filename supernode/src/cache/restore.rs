//! Bringing recorded tasks back after a restart, without the origin.
//!
//! Each restored task is replayed to the scheduler as if its origin fetch ran again, reading
//! from the local file instead of the network: `TaskStarted`, then `PieceLanded` for each piece
//! *after* its bytes were hashed and matched the recorded sha256 (the store's re-hash,
//! [`damselfly_store::LocalTask::ensure_verified`]), then `OriginComplete`. So a piece is
//! servable only once verified, peers that register meanwhile get pieces as they are checked,
//! and a registration for a task still in the queue moves it to the front. A piece that does
//! not match fails the task like a failed origin fetch (its file and record are deleted), and
//! the next registration fetches it from the origin again.

use std::sync::Arc;

use damselfly_scheduler::{Event, PieceMeta};
use tracing::{info, warn};

use super::CachedTask;
use crate::Shared;

/// Verifies and announces every restored task, one at a time; returns when none is left.
pub async fn run(shared: Arc<Shared>) {
    let started = std::time::Instant::now();
    let (mut tasks, mut bytes) = (0usize, 0u64);
    while let Some(id) = shared.cache.next_restoring() {
        if let Some(entry) = shared.cache.get(&id) {
            bytes += entry.task.with_view(|v| v.content_length.unwrap_or(0));
            tasks += 1;
            replay(&shared, &entry).await;
        }
        shared.cache.restored(&id);
    }
    if tasks > 0 {
        let secs = started.elapsed().as_secs_f64();
        info!(tasks, bytes, secs, mib_per_s = bytes as f64 / 1048576.0 / secs.max(1e-9), "cached tasks verified");
    }
}

async fn replay(shared: &Shared, entry: &CachedTask) {
    let task = entry.id.clone();
    let (content_length, piece_size, pieces) =
        entry.task.with_view(|v| (v.content_length.unwrap_or(0), v.piece_size, v.pieces.clone()));
    shared.handle(Event::TaskStarted { task: task.clone(), content_length: Some(content_length), piece_size });
    let total = pieces.len() as u32;
    for (number, piece) in (0..total).zip(pieces) {
        let verified = entry.task.ensure_verified(number).await.unwrap_or(false);
        let Some(piece) = piece.filter(|_| verified) else {
            warn!(task = %task, piece = number, "cached piece does not match its sha256: dropping the task");
            let message = "the supernode's cached copy failed verification; it is fetched again".to_owned();
            shared.cache.fail_with(entry, message.clone());
            shared.handle(Event::OriginFailed { task, status: None, refused: false, message });
            return;
        };
        shared.handle(Event::PieceLanded { task: task.clone(), piece: PieceMeta { number, piece } });
    }
    shared.handle(Event::OriginComplete { task, total_pieces: total, content_length });
}
