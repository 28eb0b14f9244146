//! The supernode's content cache: one file per task under `DATA_DIR/tasks/`, pieces recorded as
//! they land from the origin so that they are servable before the fetch has finished.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use damselfly_common::id::TaskId;
use damselfly_common::upload::{PieceLocation, PieceSource};
use dashmap::DashMap;
use serde::Serialize;

use crate::scheduler::PieceMeta;

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
}

struct Inner {
    state: CacheState,
    pieces: Vec<PieceMeta>,
    content_length: Option<u64>,
}

impl CachedTask {
    /// Records a landed piece (its bytes are already in the file). Pieces land in order.
    pub fn add_piece(&self, meta: PieceMeta) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(meta.number as usize, g.pieces.len());
        g.pieces.push(meta);
    }

    /// Sets the state (and the final length when complete).
    pub fn set_state(&self, state: CacheState, content_length: Option<u64>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        g.state = state;
        if content_length.is_some() {
            g.content_length = content_length;
        }
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
        Some(PieceLocation { file: self.file.clone(), offset: meta.offset, len: meta.size })
    }
}

/// All cached tasks.
pub struct Cache {
    dir: PathBuf,
    tasks: DashMap<TaskId, Arc<CachedTask>>,
}

impl Cache {
    /// Opens the cache under `data_dir/tasks`, creating it.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("tasks");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, tasks: DashMap::new() })
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
            inner: RwLock::new(Inner { state: CacheState::Fetching, pieces: Vec::new(), content_length: None }),
        }))
    }

    /// Marks a task failed and removes its content file (nothing partial stays servable).
    pub fn fail(&self, task: &CachedTask) {
        task.set_state(CacheState::Failed, None);
        let _ = std::fs::remove_file(&task.path);
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
