//! The supernode's content cache: the store both node kinds share ([`damselfly_store`]), one
//! file per task under `DATA_DIR/tasks/` with its metadata in RocksDB under `DATA_DIR/meta`,
//! pieces servable as they land from the origin, before the fetch has finished.
//!
//! What is the supernode's own is small:
//! * [`Durability::Complete`]: a task is recorded once its origin fetch completed and verified
//!   ([`Cache::complete`]: content synced, then record and piece table in one batch); a fetch
//!   interrupted by a crash leaves no record and its file is deleted at the next start (the
//!   origin fetch starts over, as it would have anyway: the supernode fetches whole bodies).
//! * Restored tasks are verified eagerly, most recently used first, and replayed to the
//!   scheduler ([`restore`]); until then they show as fetching, serve nothing unverified and are
//!   not evicted.
//! * The eviction guard ([`gc`]): a task peers download through the scheduler is in use, and an
//!   evicted task is forgotten by the scheduler.

pub mod gc;
pub mod restore;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use damselfly_net::upload::{PieceLocation, PieceSource};
use damselfly_store::{Durability, LocalTask, Piece, Store, StoreConfig, TaskFailure, TaskStatus, TaskView};
use damselfly_types::id::TaskId;
use serde::Serialize;

use crate::metrics::CacheMetrics;

/// Where a cached task stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// The origin fetch is running (or a restored copy is being verified); landed pieces are
    /// servable.
    Fetching,
    /// Every piece landed and the file was verified.
    Complete,
    /// The origin fetch failed; nothing is served.
    Failed,
}

/// Restored tasks not verified yet: shown as fetching and never evicted until replayed.
#[derive(Debug, Default)]
struct Restoring {
    /// Next to verify first.
    queue: VecDeque<TaskId>,
    /// Queued or being verified.
    pending: HashSet<TaskId>,
}

/// One task's content on disk: a handle on the store's task (holding it keeps the task from
/// being evicted).
pub struct CachedTask {
    /// The task.
    pub id: TaskId,
    task: Arc<LocalTask>,
    restoring: Arc<Mutex<Restoring>>,
}

impl CachedTask {
    /// Current state.
    pub fn state(&self) -> CacheState {
        let restoring = self.restoring.lock().unwrap_or_else(|e| e.into_inner()).pending.contains(&self.id);
        self.task.with_view(|v| match v.status {
            TaskStatus::Failed(_) => CacheState::Failed,
            TaskStatus::Done if !restoring => CacheState::Complete,
            _ => CacheState::Fetching,
        })
    }

    /// A receiver that sees a change after every landed piece and state change from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<TaskView> {
        self.task.subscribe()
    }

    /// Why the fetch failed, once it has.
    pub fn error(&self) -> Option<String> {
        self.task.with_view(|v| match &v.status {
            TaskStatus::Failed(f) => Some(f.message.clone()),
            _ => None,
        })
    }

    /// Bytes landed (or verified, for a restored task) so far.
    pub fn landed_bytes(&self) -> u64 {
        self.task.with_view(TaskView::present_bytes)
    }

    /// The piece size of the task's table (0 until the origin answered).
    pub fn piece_size(&self) -> u32 {
        self.task.with_view(|v| v.piece_size)
    }

    /// Bytes charged against the quota.
    pub fn charged(&self) -> u64 {
        self.task.charged()
    }

    /// The origin answered: records the length (when it sent one) and the piece size, and
    /// charges the length to the quota before any byte is written (evicting idle complete tasks,
    /// or failing with [`damselfly_store::QuotaError`]).
    pub fn start(&self, content_length: Option<u64>, piece_size: u32) -> std::io::Result<()> {
        self.task.set_info(content_length, piece_size)
    }

    /// Writes piece `number` (charging its high-water mark when the length is unknown) and makes
    /// it servable. Pieces land in order.
    pub async fn land(&self, number: u32, piece: Piece, data: Bytes) -> std::io::Result<()> {
        self.task.add_pieces([(number, piece)]);
        self.task.store_piece(number, piece.offset, data).await
    }
}

/// All cached tasks.
pub struct Cache {
    store: Store,
    restoring: Arc<Mutex<Restoring>>,
}

impl Cache {
    /// Opens the cache under `data_dir` (content in `tasks/`, metadata in `meta/`), creating it,
    /// and loads the complete tasks it held (servable once [`restore::run`] verified them).
    pub fn open(data_dir: &Path, quota: Option<u64>, metrics: CacheMetrics) -> std::io::Result<Self> {
        let config = StoreConfig { quota, durability: Durability::Complete, ..StoreConfig::new("supernode") };
        let store = Store::open_with(data_dir, config, metrics).map_err(std::io::Error::other)?;
        // Repairs and eviction reports are the dfdaemon's business: the supernode fails a task
        // whose copy is bad, and its eviction guard tells the scheduler.
        drop(store.take_events());
        let mut restored = store.tasks();
        // Most recently used first: the likeliest to be asked for.
        restored.sort_by_key(|t| std::cmp::Reverse(t.last_access_ms()));
        let queue: VecDeque<TaskId> = restored.iter().map(|t| t.id.clone()).collect();
        let pending = queue.iter().cloned().collect();
        Ok(Self { store, restoring: Arc::new(Mutex::new(Restoring { queue, pending })) })
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn handle(&self, task: Arc<LocalTask>) -> Arc<CachedTask> {
        Arc::new(CachedTask { id: task.id.clone(), task, restoring: self.restoring.clone() })
    }

    /// The task if it is cached (in any state).
    pub fn get(&self, id: &TaskId) -> Option<Arc<CachedTask>> {
        self.store.get(id).map(|t| self.handle(t))
    }

    /// Creates the entry for `id` unless a usable one (fetching or complete) exists. Returns the
    /// new entry when the caller must start the origin fetch: this is the coalescing point.
    pub fn create_if_absent(&self, id: &TaskId) -> std::io::Result<Option<Arc<CachedTask>>> {
        let (task, fresh) = self.store.get_or_create(id)?;
        if fresh {
            return Ok(Some(self.handle(task)));
        }
        task.touch();
        self.promote(id);
        Ok(None)
    }

    /// Records `entry` durably (content synced first, then the record and piece table in one
    /// batch) and then marks it complete: a task the API shows complete survives a crash.
    pub async fn complete(&self, entry: &CachedTask, content_length: u64) {
        entry.task.complete(content_length).await;
    }

    /// Marks a task failed, recording why (shown to preheat jobs waiting on the task), and
    /// removes its content file and metadata (nothing partial stays servable).
    pub fn fail_with(&self, entry: &CachedTask, error: String) {
        self.store.fail(&entry.task, TaskFailure { origin_status: None, message: error });
    }

    /// Writes the access times of complete tasks that changed since the last call.
    pub fn persist_access_times(&self) {
        self.store.persist_access_times();
    }

    /// True while `id` is a restored task not verified yet.
    pub fn is_restoring(&self, id: &TaskId) -> bool {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner()).pending.contains(id)
    }

    /// Moves a restored task that is still waiting for verification to the front of the queue.
    fn promote(&self, id: &TaskId) {
        let mut r = self.restoring.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = r.queue.iter().position(|t| t == id) {
            if let Some(t) = r.queue.remove(i) {
                r.queue.push_front(t);
            }
        }
    }

    /// The next restored task to verify (it stays restoring until [`Cache::restored`]).
    fn next_restoring(&self) -> Option<TaskId> {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner()).queue.pop_front()
    }

    /// `id` was verified (or failed): it is an ordinary task from now on.
    fn restored(&self, id: &TaskId) {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner()).pending.remove(id);
        if let Some(task) = self.store.get(id) {
            // Wakes whoever waits for the task's state.
            task.update(|_| {});
        }
    }
}

impl PieceSource for Cache {
    fn locate(&self, task: &TaskId, piece: u32) -> Option<PieceLocation> {
        self.store.locate(task, piece)
    }
}
