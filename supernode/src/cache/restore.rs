//! Bringing recorded tasks back after a restart, without the origin.
//!
//! Each restored task is replayed to the scheduler as if its origin fetch ran again, reading
//! from the local file instead of the network: `TaskStarted`, then `PieceLanded` for each piece
//! *after* its bytes were hashed and matched the recorded sha256, then `OriginComplete`. So a
//! piece is servable only once verified, peers that register meanwhile get pieces as they are
//! checked, and a registration for a task still in the queue moves it to the front. A piece
//! that does not match fails the task like a failed origin fetch (its file and record are
//! deleted), and the next registration fetches it from the origin again.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::durable::Recorded;
use super::{CacheState, CachedTask};
use crate::Shared;
use damselfly_scheduler::{Event, PieceMeta};

/// Verifies and announces every restored task, one at a time; returns when none is left.
pub async fn run(shared: Arc<Shared>) {
    let started = std::time::Instant::now();
    let (mut tasks, mut bytes) = (0usize, 0u64);
    while let Some(id) = shared.cache.next_restoring() {
        let Some(entry) = shared.cache.get(&id) else { continue };
        let recorded = entry.restoring.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(recorded) = recorded else { continue };
        bytes += recorded.content_length;
        tasks += 1;
        replay(&shared, &entry, recorded).await;
    }
    if tasks > 0 {
        let secs = started.elapsed().as_secs_f64();
        info!(tasks, bytes, secs, mib_per_s = bytes as f64 / 1048576.0 / secs.max(1e-9), "cached tasks verified");
    }
}

async fn replay(shared: &Shared, entry: &Arc<CachedTask>, r: Recorded) {
    let task = entry.id.clone();
    shared.handle(Event::TaskStarted {
        task: task.clone(),
        content_length: Some(r.content_length),
        piece_size: r.piece_size,
    });
    let total = r.pieces.len() as u32;
    for piece in r.pieces {
        let (file, p) = (entry.file.clone(), piece.clone());
        let good = tokio::task::spawn_blocking(move || matches(&file, &p)).await.unwrap_or(false);
        if !good {
            warn!(task = %task, piece = piece.number, "cached piece does not match its sha256: dropping the task");
            shared.metrics.cache.corrupt_pieces.inc();
            let message = "the supernode's cached copy failed verification; it is fetched again".to_owned();
            shared.cache.fail_with(entry, message.clone());
            shared.handle(Event::OriginFailed { task, status: None, refused: false, message });
            return;
        }
        entry.add_piece(piece.clone());
        shared.handle(Event::PieceLanded { task: task.clone(), piece });
    }
    entry.set_state(CacheState::Complete, Some(r.content_length));
    shared.handle(Event::OriginComplete { task, total_pieces: total, content_length: r.content_length });
}

/// True when the piece's bytes hash to its recorded sha256.
fn matches(file: &std::fs::File, p: &PieceMeta) -> bool {
    let mut buf = vec![0u8; p.size as usize];
    if file.read_exact_at(&mut buf, p.offset).is_err() {
        return false;
    }
    let got: [u8; 32] = Sha256::digest(&buf).into();
    got == p.sha256
}
