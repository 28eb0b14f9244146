//! The flusher: makes stored pieces durable in groups (with [`crate::Durability::EveryPiece`]).
//!
//! [`LocalTask::store_piece`] writes a piece's bytes and hands the piece to this thread. The
//! thread takes everything queued, `fdatasync`s each content file concerned once, and only then
//! writes the present rows (and the `complete` state of tasks that finished) in one RocksDB
//! batch. While one round syncs, the next pieces queue up, so a sync is shared by all of them
//! (group commit) and downloads never wait for the disk; under load a round starts at most every
//! [`ROUND_INTERVAL`]. A task deleted in the meantime (failed, evicted, replaced) gets nothing
//! written: liveness is checked under the store's metadata lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use damselfly_types::id::TaskId;
use tracing::{debug, warn};

use crate::meta::TaskState;
use crate::store::Inner;
use crate::task::LocalTask;

/// Numbers task instances, so that a job for a replaced task is recognised.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// A fresh task serial.
pub(crate) fn next_serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

enum Job {
    /// Piece `n` of the task was written: sync, then mark it present.
    Present { id: TaskId, serial: u64, n: u32 },
    /// Every piece of the task is present: sync, then record it complete.
    Complete { id: TaskId, serial: u64 },
    /// Answer once everything queued before is durable.
    Barrier(SyncSender<()>),
}

/// Handle to the flusher thread; the thread ends when the handle is dropped.
pub(crate) struct Flusher {
    tx: Mutex<Sender<Job>>,
}

/// Totals for the report of what durability costs.
#[derive(Debug, Default)]
pub(crate) struct FlushStats {
    pub(crate) rounds: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) pieces: AtomicU64,
    pub(crate) sync_micros: AtomicU64,
}

impl Flusher {
    /// Starts the thread for the store behind `store` of the node kind `node`.
    pub(crate) fn start(store: Weak<Inner>, node: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name(format!("{node}-flusher")).spawn(move || run(&rx, &store));
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the flusher thread: pieces will not be recorded on disk");
        }
        Self { tx: Mutex::new(tx) }
    }

    fn send(&self, job: Job) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    }

    /// Queues piece `n` of `task`.
    pub(crate) fn present(&self, task: &LocalTask, n: u32) {
        self.send(Job::Present { id: task.id.clone(), serial: task.serial, n });
    }

    /// Queues the completion of `task`.
    pub(crate) fn complete(&self, task: &LocalTask) {
        self.send(Job::Complete { id: task.id.clone(), serial: task.serial });
    }

    /// Waits until everything queued so far is durable.
    pub(crate) fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(Job::Barrier(tx));
        let _ = rx.recv();
    }
}

/// Least time from the start of one round to the start of the next. Pieces that land meanwhile
/// wait and share the next round's syncs: each `fdatasync` costs a journal commit and a device
/// flush however few pages it writes, and a busy daemon lands dozens of pieces a second. A
/// barrier is answered without waiting.
const ROUND_INTERVAL: Duration = Duration::from_millis(100);

/// Most jobs taken in one round.
const ROUND_JOBS: usize = 65_536;

fn run(rx: &Receiver<Job>, store: &Weak<Inner>) {
    let mut last_round: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        let mut barrier = matches!(first, Job::Barrier(_));
        let mut jobs = vec![first];
        let due = last_round.map(|t| t + ROUND_INTERVAL);
        while jobs.len() < ROUND_JOBS {
            let wait = due.filter(|_| !barrier).and_then(|due| due.checked_duration_since(Instant::now()));
            let next = match wait {
                Some(wait) => rx.recv_timeout(wait).map_err(|_| ()),
                None => rx.try_recv().map_err(|_| ()),
            };
            let Ok(job) = next else { break };
            barrier |= matches!(job, Job::Barrier(_));
            jobs.push(job);
        }
        last_round = Some(Instant::now());
        // The store is released before barriers are answered: a waiter that then drops the
        // last handle really closes the database.
        let barriers = match store.upgrade() {
            Some(inner) => flush(&inner, jobs),
            None => return,
        };
        for tx in barriers {
            let _ = tx.send(());
        }
    }
}

/// The live task `id` with `serial`, if it still exists.
fn live(inner: &Inner, id: &TaskId, serial: u64) -> Option<Arc<LocalTask>> {
    let t = inner.tasks.get(id)?.clone();
    (t.serial == serial && !t.dead.load(Ordering::Acquire)).then_some(t)
}

/// Makes `jobs` durable; returns the barriers to answer.
fn flush(inner: &Inner, jobs: Vec<Job>) -> Vec<SyncSender<()>> {
    let started = Instant::now();
    // 1. Sync each content file concerned, once.
    let mut synced: Vec<(u64, Arc<LocalTask>)> = Vec::new();
    let mut barriers = Vec::new();
    let mut work = Vec::new();
    for job in jobs {
        let (id, serial) = match &job {
            Job::Present { id, serial, .. } | Job::Complete { id, serial } => (id.clone(), *serial),
            Job::Barrier(tx) => {
                barriers.push(tx.clone());
                continue;
            }
        };
        if !synced.iter().any(|(s, _)| *s == serial) {
            let Some(task) = live(inner, &id, serial) else { continue };
            if let Some(file) = task.file.get() {
                if let Err(e) = file.sync_data() {
                    warn!(task = %id, error = %e, "cannot sync content file: its pieces stay unrecorded");
                    continue;
                }
            }
            synced.push((serial, task));
        }
        work.push(job);
    }
    let sync_time = started.elapsed();
    // 2. Record what was synced, unless the task died meanwhile.
    let _g = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = inner.db.batch();
    let mut pieces = 0u64;
    for job in &work {
        let (id, serial) = match job {
            Job::Present { id, serial, .. } | Job::Complete { id, serial } => (id, *serial),
            Job::Barrier(_) => continue,
        };
        let Some((_, task)) = synced.iter().find(|(s, _)| *s == serial) else { continue };
        if task.dead.load(Ordering::Acquire) {
            continue;
        }
        match job {
            Job::Present { n, .. } if task.view.borrow().has(*n) => {
                b.set_present(id, *n);
                pieces += 1;
            }
            Job::Complete { .. } if task.is_done() => {
                let mut r = task.record.lock().unwrap_or_else(|e| e.into_inner());
                r.state = TaskState::Complete;
                b.put_task(id, &r);
            }
            _ => {}
        }
    }
    if let Err(e) = b.commit() {
        warn!(error = %e, "cannot record stored pieces");
    }
    let s = &inner.flush_stats;
    s.rounds.fetch_add(1, Ordering::Relaxed);
    s.syncs.fetch_add(synced.len() as u64, Ordering::Relaxed);
    s.pieces.fetch_add(pieces, Ordering::Relaxed);
    s.sync_micros.fetch_add(sync_time.as_micros() as u64, Ordering::Relaxed);
    if pieces > 0 {
        debug!(pieces, files = synced.len(), sync_ms = sync_time.as_secs_f64() * 1e3, "pieces recorded");
    }
    barriers
}
