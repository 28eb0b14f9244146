//! The store: every task a node holds, its quota, its flusher and its metadata database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use damselfly_types::id::TaskId;
use damselfly_types::piece::{Piece, PieceLocation, PieceSource};
use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::cache_metrics::CacheMetrics;
use crate::clock::Clock;
use crate::durable::{next_serial, FlushStats, Flusher};
use crate::meta::{MetaBatch, MetaDb, MetaError, TaskRecord, TaskState};
use crate::quota::{EvictionGuard, Quota};
use crate::task::{LocalTask, TaskFailure, TaskStatus, TaskView};
/// What the store needs the node to do; see [`Store::take_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// Pieces of the task failed verification and were dropped: fetch them again.
    Repair(TaskId),
    /// The task was evicted: tell the supernode this node no longer holds it.
    Evicted {
        /// The task.
        id: TaskId,
        /// Its origin URL (without credentials), which the supernode checks the id against.
        url: Option<String>,
        /// Its digest, when known.
        digest: Option<String>,
    },
}

/// When a task's pieces reach the metadata database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every piece is recorded (group-committed by the flusher) as it lands; a partial task
    /// survives a restart and is resumed. The dfdaemon's choice: it downloads piece by piece from
    /// many parents and a resumed download fetches only the missing pieces.
    #[default]
    EveryPiece,
    /// Nothing is recorded until the task is complete ([`LocalTask::complete`]: content synced,
    /// then record and piece table in one batch); partial content is deleted at startup. The
    /// supernode's choice: an interrupted origin fetch starts over anyway (it fetches whole
    /// bodies), so recording its pieces would only cost syncs.
    Complete,
}

/// How the store manages its disk.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The node kind, named in quota errors and logs (`supernode`, `dfdaemon`).
    pub node: &'static str,
    /// Bytes the cached content may take; `None`: unbounded.
    pub quota: Option<u64>,
    /// When pieces are recorded; see [`Durability`].
    pub durability: Durability,
    /// Where access times and the TTL's cutoff come from; tests pass a
    /// [`ManualClock`](crate::clock::ManualClock).
    pub clock: Arc<dyn Clock>,
}

impl Default for StoreConfig {
    /// A store named `node`, without a quota, recording every piece, on the system clock.
    fn default() -> Self {
        Self { node: "node", quota: None, durability: Durability::EveryPiece, clock: crate::clock::system() }
    }
}

impl StoreConfig {
    /// The defaults for the node kind `node`.
    pub fn new(node: &'static str) -> Self {
        Self { node, ..Self::default() }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The content directory could not be created or read.
    #[error("cannot use the cache directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// The store's shared state (tasks hold a weak reference to it).
pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) dir: PathBuf,
    pub(crate) tasks: DashMap<TaskId, Arc<LocalTask>>,
    pub(crate) db: MetaDb,
    /// Held around every metadata write and around marking a task dead, so that nothing is
    /// written for a task after its rows were deleted.
    pub(crate) meta_lock: Mutex<()>,
    pub(crate) quota: Quota,
    pub(crate) flusher: Flusher,
    pub(crate) events: mpsc::UnboundedSender<StoreEvent>,
    pub(crate) metrics: CacheMetrics,
    pub(crate) flush_stats: FlushStats,
    /// What the node adds to "in use" before an eviction (none: the store's view is all).
    pub(crate) guard: OnceLock<Arc<dyn EvictionGuard>>,
}

impl Inner {
    /// Writes a batch built by `f` for `task` unless the task is dead (or, with
    /// [`Durability::Complete`], not recorded complete yet).
    pub(crate) fn write_meta(&self, task: &LocalTask, f: impl FnOnce(&mut MetaBatch<'_>, &TaskRecord)) {
        let _g = self.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
        if task.dead.load(Ordering::Acquire) {
            return;
        }
        let mut b = self.db.batch();
        {
            let r = task.record.lock().unwrap_or_else(|e| e.into_inner());
            if self.config.durability == Durability::Complete && r.state != TaskState::Complete {
                return;
            }
            f(&mut b, &r);
        }
        if let Err(e) = b.commit() {
            warn!(task = %task.id, error = %e, "cannot write cache metadata");
        }
    }

    /// Writes `task` as complete (its content is synced): the record with `content_length` and
    /// `total` pieces, the piece `table` and every piece present, in one batch, unless the task
    /// died meanwhile.
    pub(crate) fn record_complete(&self, task: &LocalTask, content_length: u64, total: u32, table: &[(u32, Piece)]) {
        let _g = self.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
        if task.dead.load(Ordering::Acquire) {
            return;
        }
        let mut r = task.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = TaskRecord {
            content_length: Some(content_length),
            total_pieces: Some(total),
            state: TaskState::Complete,
            last_access_ms: task.last_access_ms(),
            ..r.clone()
        };
        record.bytes = record.bytes.max(content_length);
        let mut b = self.db.batch();
        b.put_task(&task.id, &record);
        for (n, p) in table {
            b.put_piece(&task.id, *n, p).set_present(&task.id, *n);
        }
        match b.commit() {
            Ok(()) => r.state = TaskState::Complete,
            Err(e) => warn!(task = %task.id, error = %e, "cannot record the complete task"),
        }
    }

    /// Marks `task` dead and deletes its rows and its content file (the caller releases its
    /// quota charge).
    pub(crate) fn delete(&self, task: &LocalTask) {
        {
            let _g = self.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            task.dead.store(true, Ordering::Release);
            let mut b = self.db.batch();
            b.delete_task(&task.id);
            if let Err(e) = b.commit() {
                warn!(task = %task.id, error = %e, "cannot delete cache metadata");
            }
        }
        let _ = std::fs::remove_file(&task.path);
    }

    pub(crate) fn new_task(
        self: &Arc<Self>,
        id: &TaskId,
        file: Option<std::fs::File>,
        view: TaskView,
        record: TaskRecord,
    ) -> LocalTask {
        let path = self.dir.join(format!("{}.data", id.file_name()));
        let cell = OnceLock::new();
        if let Some(f) = file {
            let _ = cell.set(Arc::new(f));
        }
        LocalTask {
            id: id.clone(),
            serial: next_serial(),
            path,
            file: cell,
            write_gate: Arc::default(),
            view: watch::Sender::new(view),
            verified: Mutex::new(Vec::new()),
            last_access: AtomicU64::new(record.last_access_ms),
            record: Mutex::new(record),
            access_dirty: AtomicBool::new(false),
            known_mtime: AtomicU64::new(0),
            downloading: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            clock: self.config.clock.clone(),
            store: Arc::downgrade(self),
        }
    }
}

/// Free bytes kept on the data dir's file system for the metadata database: content writes fail
/// (locally, naming the file) before the disk is full.
pub const METADATA_HEADROOM: u64 = 4 << 20;

/// Every task this node holds or is downloading.
pub struct Store {
    inner: Arc<Inner>,
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
}

impl Store {
    /// [`Store::open_with`] with the default config (no quota, every piece recorded) and metrics
    /// nobody reads (tests, benches).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, StoreConfig::default(), CacheMetrics::default())
    }

    /// Opens the store under `data_dir` (content in `tasks/`, metadata in `meta/`), creating it,
    /// and loads every task it held before.
    pub fn open_with(data_dir: &Path, config: StoreConfig, metrics: CacheMetrics) -> Result<Self, StoreError> {
        let dir = data_dir.join("tasks");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir { path: dir.clone(), source })?;
        let db = MetaDb::open(&data_dir.join("meta"))?;
        let (events, rx) = mpsc::unbounded_channel();
        metrics.quota_bytes.set(config.quota.map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX)));
        let inner = Arc::new_cyclic(|weak| Inner {
            dir,
            tasks: DashMap::new(),
            db,
            meta_lock: Mutex::new(()),
            quota: Quota::new(config.quota),
            flusher: Flusher::start(weak.clone(), config.node),
            events,
            metrics,
            flush_stats: FlushStats::default(),
            guard: OnceLock::new(),
            config,
        });
        crate::restore::load(&inner)?;
        Ok(Self { inner, events: Mutex::new(Some(rx)) })
    }

    /// Installs the node's [`EvictionGuard`] (once; later calls are ignored). Until then, and
    /// without one, the store's own view of "in use" is all.
    pub fn set_eviction_guard(&self, guard: Arc<dyn EvictionGuard>) {
        let _ = self.inner.guard.set(guard);
    }

    /// The store's requests to the node (repairs, eviction reports); `Some` once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The task if held (in any state).
    pub fn get(&self, id: &TaskId) -> Option<Arc<LocalTask>> {
        self.inner.tasks.get(id).map(|t| t.clone())
    }

    /// Every task held, in no particular order.
    pub fn tasks(&self) -> Vec<Arc<LocalTask>> {
        self.inner.tasks.iter().map(|t| t.clone()).collect()
    }

    /// Returns `(task, true)` when the caller must start a download for the task: it is new, or
    /// it is incomplete and no download runs for it (a task loaded at restart, or one whose
    /// pieces failed verification); the caller then owns the claim
    /// ([`LocalTask::release_download`]). A usable entry is otherwise shared (`false`). A failed
    /// entry is replaced.
    pub fn get_or_create(&self, id: &TaskId) -> std::io::Result<(Arc<LocalTask>, bool)> {
        use dashmap::mapref::entry::Entry;
        match self.inner.tasks.entry(id.clone()) {
            Entry::Occupied(mut e) => {
                if !matches!(e.get().view.borrow().status, TaskStatus::Failed(_)) {
                    let claimed = e.get().claim_download();
                    return Ok((e.get().clone(), claimed));
                }
                let fresh = self.create(id)?;
                e.insert(fresh.clone());
                Ok((fresh, true))
            }
            Entry::Vacant(v) => {
                let fresh = self.create(id)?;
                v.insert(fresh.clone());
                Ok((fresh, true))
            }
        }
    }

    fn create(&self, id: &TaskId) -> std::io::Result<Arc<LocalTask>> {
        let path = self.inner.dir.join(format!("{}.data", id.file_name()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let record = TaskRecord { last_access_ms: self.inner.config.clock.now_ms(), ..TaskRecord::default() };
        let task = Arc::new(self.inner.new_task(id, Some(file), TaskView::new(), record));
        task.downloading.store(true, Ordering::Release);
        Ok(task)
    }

    /// Marks a task failed and removes its content and metadata (nothing partial stays
    /// servable). The entry stays, so that clients can ask why; the next download of the task
    /// replaces it.
    pub fn fail(&self, task: &LocalTask, failure: TaskFailure) {
        task.update(|v| v.status = TaskStatus::Failed(failure));
        self.inner.delete(task);
        self.inner.release(task);
    }

    /// Before uploading `piece` of `task` to a peer: verifies it if it was loaded from disk
    /// (dropping it when bad, so that the upload is refused rather than corrupt).
    pub async fn prepare_upload(&self, task: &TaskId, piece: u32) {
        if let Some(t) = self.get(task) {
            if let Err(e) = t.ensure_verified(piece).await {
                warn!(task = %task, piece, error = %e, "cannot verify piece for upload");
            }
        }
    }

    /// Bytes charged against the quota by the tasks held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.quota.used()
    }

    /// What durability cost so far: (flush rounds, file syncs, pieces recorded, time spent
    /// syncing).
    pub fn flush_stats(&self) -> (u64, u64, u64, Duration) {
        let s = &self.inner.flush_stats;
        (
            s.rounds.load(Ordering::Relaxed),
            s.syncs.load(Ordering::Relaxed),
            s.pieces.load(Ordering::Relaxed),
            Duration::from_micros(s.sync_micros.load(Ordering::Relaxed)),
        )
    }

    /// Evicts finished, idle tasks not accessed for `ttl`; returns how many.
    pub fn evict_expired(&self, ttl: Duration) -> usize {
        let cutoff = self.inner.config.clock.now_ms().saturating_sub(ttl.as_millis() as u64);
        self.inner.evict_where(|t| t.last_access_ms() < cutoff)
    }

    /// Writes the access times that changed since the last call.
    pub fn persist_access_times(&self) {
        for t in self.tasks() {
            if t.access_dirty.swap(false, Ordering::Relaxed) {
                t.record.lock().unwrap_or_else(|e| e.into_inner()).last_access_ms = t.last_access_ms();
                self.inner.write_meta(&t, |b, r| {
                    b.put_task(&t.id, r);
                });
            }
        }
    }

    /// Waits until every piece stored so far is durable (data synced, present rows written).
    pub fn flush(&self) {
        self.inner.flusher.barrier();
    }

    /// Housekeeping until aborted: access times reach the metadata and, with a `ttl`, finished
    /// tasks nobody used for that long are evicted. Quota evictions happen inline, when a task
    /// needs room.
    pub async fn housekeeping(&self, ttl: Option<Duration>) {
        let period =
            ttl.map_or(HOUSEKEEPING_PERIOD, |t| (t / 4).clamp(Duration::from_millis(200), HOUSEKEEPING_PERIOD));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.persist_access_times();
            if let Some(ttl) = ttl {
                let n = self.evict_expired(ttl);
                if n > 0 {
                    info!(evicted = n, ttl_ms = ttl.as_millis() as u64, "expired tasks evicted");
                }
            }
        }
    }
}

/// Longest pause between two housekeeping rounds.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(30);

impl Drop for Store {
    fn drop(&mut self) {
        // Let the flusher finish what is queued and let go of the store.
        self.inner.flusher.barrier();
    }
}

impl PieceSource for Store {
    fn locate(&self, task: &TaskId, piece: u32) -> Option<PieceLocation> {
        self.inner.tasks.get(task)?.locate(piece)
    }
}
