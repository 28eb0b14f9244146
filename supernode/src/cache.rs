//! The supernode's content cache: one file per task under `DATA_DIR/tasks/`, pieces recorded as
//! they land from the origin so that they are servable before the fetch has finished.
//!
//! Complete tasks are durable ([`durable`]): their piece tables are in RocksDB under
//! `DATA_DIR/meta` and a restarted supernode verifies and serves them again without going to the
//! origin ([`restore`]). A disk quota and an optional TTL evict the least recently used idle
//! complete tasks ([`gc`]).

pub mod durable;
pub mod gc;
pub mod restore;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use damselfly_store::meta::{now_ms, MetaDb};

use damselfly_net::upload::{PieceLocation, PieceSource};
use damselfly_types::id::TaskId;
use dashmap::DashMap;
use serde::Serialize;

use damselfly_scheduler::PieceMeta;

/// Where a cached task stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// The origin fetch is running; landed pieces are servable.
    Fetching,
    /// Every piece landed and the file was verified.
    Complete,
    /// The origin fetch failed; nothing is served.
    Failed,
}

/// One task's content on disk.
pub struct CachedTask {
    /// The task.
    pub id: TaskId,
    /// The content file (pieces at their offsets).
    pub file: Arc<std::fs::File>,
    path: PathBuf,
    inner: RwLock<Inner>,
    /// Bumped on every landed piece and state change, so that waiters (preheat jobs) can await
    /// progress instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
    /// Last registration or upload, ms since the epoch: LRU eviction and TTL go by it.
    last_access: AtomicU64,
    /// Set when `last_access` changed since it was last persisted.
    access_dirty: AtomicBool,
    /// Bytes charged against the quota.
    charged: AtomicU64,
    /// Loaded from disk at startup and not verified yet: its recorded piece table.
    restoring: Mutex<Option<durable::Recorded>>,
}

struct Inner {
    state: CacheState,
    pieces: Vec<PieceMeta>,
    content_length: Option<u64>,
    /// Why the fetch failed (no credentials: origin errors name the URL without user-info).
    error: Option<String>,
}

impl CachedTask {
    /// Records a landed piece (its bytes are already in the file). Pieces land in order.
    pub fn add_piece(&self, meta: PieceMeta) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(meta.number as usize, g.pieces.len());
        g.pieces.push(meta);
        drop(g);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Sets the state (and the final length when complete).
    pub fn set_state(&self, state: CacheState, content_length: Option<u64>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        g.state = state;
        if content_length.is_some() {
            g.content_length = content_length;
        }
        drop(g);
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees a change after every landed piece and state change from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Why the fetch failed, once it has.
    pub fn error(&self) -> Option<String> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).error.clone()
    }

    /// Current state.
    pub fn state(&self) -> CacheState {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).state.clone()
    }

    /// Bytes landed so far.
    pub fn landed_bytes(&self) -> u64 {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        g.pieces.iter().map(|p| u64::from(p.size)).sum()
    }

    fn locate(&self, piece: u32) -> Option<PieceLocation> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if g.state == CacheState::Failed {
            return None;
        }
        let meta = g.pieces.get(piece as usize)?;
        self.touch();
        Some(PieceLocation { file: self.file.clone(), offset: meta.offset, len: meta.size })
    }

    /// Notes an access (LRU and TTL go by it).
    fn touch(&self) {
        self.last_access.store(now_ms(), Ordering::Relaxed);
        self.access_dirty.store(true, Ordering::Relaxed);
    }

    /// Bytes charged against the quota.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }
}

/// All cached tasks.
pub struct Cache {
    dir: PathBuf,
    tasks: DashMap<TaskId, Arc<CachedTask>>,
    db: MetaDb,
    /// Bytes the content may take; `None`: unbounded.
    quota: Option<u64>,
    /// Bytes charged by the tasks held.
    used: Mutex<u64>,
    metrics: crate::metrics::CacheMetrics,
    /// Restored tasks waiting to be verified, next first.
    restore_queue: Mutex<VecDeque<TaskId>>,
}

impl Cache {
    /// Opens the cache under `data_dir` (content in `tasks/`, metadata in `meta/`), creating it,
    /// and loads the complete tasks it held (servable once [`restore::run`] verified them).
    pub fn open(data_dir: &Path, quota: Option<u64>, metrics: crate::metrics::CacheMetrics) -> std::io::Result<Self> {
        let dir = data_dir.join("tasks");
        std::fs::create_dir_all(&dir)?;
        let db = MetaDb::open(&data_dir.join("meta")).map_err(std::io::Error::other)?;
        metrics.quota_bytes.set(quota.map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX)));
        let cache = Self {
            dir,
            tasks: DashMap::new(),
            db,
            quota,
            used: Mutex::new(0),
            metrics,
            restore_queue: Mutex::new(VecDeque::new()),
        };
        cache.load().map_err(std::io::Error::other)?;
        Ok(cache)
    }

    /// The task if it is cached (in any state).
    pub fn get(&self, id: &TaskId) -> Option<Arc<CachedTask>> {
        self.tasks.get(id).map(|t| t.clone())
    }

    /// Creates the entry for `id` unless a usable one (fetching or complete) exists. Returns the
    /// new entry when the caller must start the origin fetch: this is the coalescing point.
    pub fn create_if_absent(&self, id: &TaskId) -> std::io::Result<Option<Arc<CachedTask>>> {
        use dashmap::mapref::entry::Entry;
        match self.tasks.entry(id.clone()) {
            Entry::Occupied(mut e) => {
                if e.get().state() != CacheState::Failed {
                    e.get().touch();
                    self.promote(id);
                    return Ok(None);
                }
                let fresh = self.new_task(id)?;
                e.insert(fresh.clone());
                Ok(Some(fresh))
            }
            Entry::Vacant(v) => {
                let fresh = self.new_task(id)?;
                v.insert(fresh.clone());
                Ok(Some(fresh))
            }
        }
    }

    fn new_task(&self, id: &TaskId) -> std::io::Result<Arc<CachedTask>> {
        let path = self.dir.join(format!("{}.data", id.file_name()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        Ok(Arc::new(CachedTask {
            id: id.clone(),
            file: Arc::new(file),
            path,
            inner: RwLock::new(Inner {
                state: CacheState::Fetching,
                pieces: Vec::new(),
                content_length: None,
                error: None,
            }),
            changes: tokio::sync::watch::Sender::new(0),
            last_access: AtomicU64::new(now_ms()),
            access_dirty: AtomicBool::new(false),
            charged: AtomicU64::new(0),
            restoring: Mutex::new(None),
        }))
    }

    /// Marks a task failed and removes its content file and metadata (nothing partial stays
    /// servable).
    pub fn fail(&self, task: &CachedTask) {
        task.set_state(CacheState::Failed, None);
        self.delete(task);
        self.release(task);
    }

    /// [`Cache::fail`], recording why (shown to preheat jobs waiting on the task).
    pub fn fail_with(&self, task: &CachedTask, error: String) {
        task.inner.write().unwrap_or_else(|e| e.into_inner()).error = Some(error);
        self.fail(task);
    }

    /// Total bytes landed in the cache.
    pub fn used_bytes(&self) -> u64 {
        self.tasks.iter().map(|t| t.landed_bytes()).sum()
    }
}

impl PieceSource for Cache {
    fn locate(&self, task: &TaskId, piece: u32) -> Option<PieceLocation> {
        self.tasks.get(task)?.locate(piece)
    }
}
