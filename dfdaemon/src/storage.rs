//! The daemon's local task store: one content file per task under `DATA_DIR/tasks/`, pieces
//! written at their offsets, and each task's progress in a `watch` channel so that readers
//! (dfget streams, the registry mirror, uploads to other peers) follow it as pieces land.
//!
//! A piece is marked present only after its bytes were verified against the supernode's sha256
//! and written.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use damselfly_common::id::TaskId;
use damselfly_common::upload::{PieceLocation, PieceSource};
use dashmap::DashMap;
use tokio::sync::watch;

/// A piece as the supernode described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceInfo {
    /// Offset in the file.
    pub offset: u64,
    /// Length.
    pub size: u32,
    /// sha256 of the piece's bytes, from the supernode (never from a parent).
    pub sha256: [u8; 32],
}

/// Why a task failed, as callers report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// Origin HTTP status, when the origin answered with an error.
    pub origin_status: Option<u16>,
    /// What went wrong, for humans.
    pub message: String,
}

/// Where a task stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    /// Registered, waiting for the origin's headers.
    Pending,
    /// Pieces are arriving.
    Running,
    /// Every piece is present and verified.
    Done,
    /// Failed; nothing more will arrive.
    Failed(TaskFailure),
}

/// A task's progress, published on every change.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// Total length, when known.
    pub content_length: Option<u64>,
    /// Piece size (0 until known).
    pub piece_size: u32,
    /// Piece table, indexed by piece number (None: not announced yet).
    pub pieces: Vec<Option<PieceInfo>>,
    /// Which pieces are present here.
    pub have: Vec<bool>,
    /// Number of present pieces.
    pub have_count: u32,
    /// Number of pieces, once the supernode knows it.
    pub total_pieces: Option<u32>,
    /// State.
    pub status: TaskStatus,
}

impl TaskView {
    fn new() -> Self {
        Self {
            content_length: None,
            piece_size: 0,
            pieces: Vec::new(),
            have: Vec::new(),
            have_count: 0,
            total_pieces: None,
            status: TaskStatus::Pending,
        }
    }

    /// True once every piece is present.
    pub fn complete(&self) -> bool {
        self.total_pieces.is_some_and(|t| t == self.have_count)
    }

    /// Info of piece `n`, if announced.
    pub fn piece(&self, n: u32) -> Option<&PieceInfo> {
        self.pieces.get(n as usize).and_then(|p| p.as_ref())
    }

    /// True when piece `n` is present.
    pub fn has(&self, n: u32) -> bool {
        self.have.get(n as usize).copied().unwrap_or(false)
    }
}

/// One task's content file and progress.
pub struct LocalTask {
    /// The task.
    pub id: TaskId,
    file: Arc<std::fs::File>,
    path: PathBuf,
    view: watch::Sender<TaskView>,
}

impl LocalTask {
    /// Subscribes to progress.
    pub fn subscribe(&self) -> watch::Receiver<TaskView> {
        self.view.subscribe()
    }

    /// A snapshot of the progress.
    pub fn view(&self) -> TaskView {
        self.view.borrow().clone()
    }

    /// Applies `f` to the progress and notifies readers.
    pub fn update(&self, f: impl FnOnce(&mut TaskView)) {
        self.view.send_modify(f);
    }

    /// Records the length and piece size; pre-sizes the file.
    pub fn set_info(&self, content_length: Option<u64>, piece_size: u32) -> std::io::Result<()> {
        if let Some(len) = content_length {
            self.file.set_len(len)?;
        }
        self.update(|v| {
            v.content_length = content_length;
            v.piece_size = piece_size;
            if v.status == TaskStatus::Pending {
                v.status = TaskStatus::Running;
            }
        });
        Ok(())
    }

    /// Adds piece table entries.
    pub fn add_pieces(&self, pieces: impl IntoIterator<Item = (u32, PieceInfo)>) {
        self.update(|v| {
            for (n, info) in pieces {
                let i = n as usize;
                if v.pieces.len() <= i {
                    v.pieces.resize(i + 1, None);
                    v.have.resize(i + 1, false);
                }
                v.pieces[i] = Some(info);
            }
        });
    }

    /// Writes verified piece bytes and marks the piece present (in that order).
    pub async fn store_piece(&self, n: u32, offset: u64, data: Bytes) -> std::io::Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(std::io::Error::other)??;
        self.update(|v| {
            if let Some(h) = v.have.get_mut(n as usize) {
                if !*h {
                    *h = true;
                    v.have_count += 1;
                }
            }
        });
        Ok(())
    }

    /// Reads `len` bytes at `offset` (of present pieces).
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    fn locate(&self, piece: u32) -> Option<PieceLocation> {
        let v = self.view.borrow();
        if matches!(v.status, TaskStatus::Failed(_)) || !v.has(piece) {
            return None;
        }
        let info = v.piece(piece)?;
        Some(PieceLocation { file: self.file.clone(), offset: info.offset, len: info.size })
    }
}

/// Every task this daemon holds or is downloading.
pub struct Store {
    dir: PathBuf,
    tasks: DashMap<TaskId, Arc<LocalTask>>,
}

impl Store {
    /// Opens the store under `data_dir/tasks`, creating it.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("tasks");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, tasks: DashMap::new() })
    }

    /// The task if held (in any state).
    pub fn get(&self, id: &TaskId) -> Option<Arc<LocalTask>> {
        self.tasks.get(id).map(|t| t.clone())
    }

    /// Returns `(task, true)` when a new entry was created and its download must be started;
    /// an existing usable entry is shared (`false`). A failed entry is replaced.
    pub fn get_or_create(&self, id: &TaskId) -> std::io::Result<(Arc<LocalTask>, bool)> {
        use dashmap::mapref::entry::Entry;
        match self.tasks.entry(id.clone()) {
            Entry::Occupied(mut e) => {
                if !matches!(e.get().view.borrow().status, TaskStatus::Failed(_)) {
                    return Ok((e.get().clone(), false));
                }
                let fresh = self.new_task(id)?;
                e.insert(fresh.clone());
                Ok((fresh, true))
            }
            Entry::Vacant(v) => {
                let fresh = self.new_task(id)?;
                v.insert(fresh.clone());
                Ok((fresh, true))
            }
        }
    }

    fn new_task(&self, id: &TaskId) -> std::io::Result<Arc<LocalTask>> {
        let path = self.dir.join(format!("{}.data", id.file_name()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        Ok(Arc::new(LocalTask {
            id: id.clone(),
            file: Arc::new(file),
            path,
            view: watch::Sender::new(TaskView::new()),
        }))
    }

    /// Marks a task failed and removes its content (nothing partial stays servable). The entry
    /// stays, so that clients can ask why; the next download of the task replaces it.
    pub fn fail(&self, task: &LocalTask, failure: TaskFailure) {
        task.update(|v| v.status = TaskStatus::Failed(failure));
        let _ = std::fs::remove_file(&task.path);
    }
}

impl PieceSource for Store {
    fn locate(&self, task: &TaskId, piece: u32) -> Option<PieceLocation> {
        self.tasks.get(task)?.locate(piece)
    }
}
