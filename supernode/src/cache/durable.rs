//! What the supernode's cache keeps across restarts.
//!
//! A task is recorded once its origin fetch completed and verified: the content file is
//! `fdatasync`ed first, then one RocksDB batch writes the task record and its whole piece table
//! (with each piece's sha256). A fetch interrupted by a crash leaves no record, and its file is
//! deleted at the next start: the origin fetch starts over, as it would have anyway (the
//! supernode fetches whole bodies). Recorded tasks come back at startup as entries that are
//! verified piece by piece before they are served ([`super::restore`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use damselfly_store::meta::{MetaError, PieceRecord, StoredTask, TaskRecord, TaskState};
use damselfly_types::id::TaskId;
use damselfly_types::piece::piece_size;
use tracing::{info, warn};

use super::{Cache, CacheState, CachedTask};
use damselfly_scheduler::PieceMeta;

/// A complete task as recorded on disk, waiting to be verified.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Length of the content.
    pub content_length: u64,
    /// Piece size.
    pub piece_size: u32,
    /// The piece table, in order.
    pub pieces: Vec<PieceMeta>,
}

impl Cache {
    /// Loads the recorded tasks (as restoring entries) and deletes everything else.
    pub(super) fn load(&self) -> Result<(), MetaError> {
        let started = std::time::Instant::now();
        let mut keep = HashSet::new();
        let mut restored: Vec<(u64, TaskId)> = Vec::new();
        let mut used = 0u64;
        for st in self.db.load_all()? {
            let id = st.id.clone();
            match self.restore_entry(st) {
                Some(entry) => {
                    keep.insert(format!("{}.data", id.file_name()));
                    used += entry.charged();
                    restored.push((entry.last_access.load(Ordering::Relaxed), id.clone()));
                    self.tasks.insert(id, entry);
                }
                None => {
                    let mut b = self.db.batch();
                    b.delete_task(&id);
                    b.commit()?;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Most recently used first: the likeliest to be asked for.
        restored.sort_by_key(|r| std::cmp::Reverse(r.0));
        let n = restored.len();
        self.restore_queue.lock().unwrap_or_else(|e| e.into_inner()).extend(restored.into_iter().map(|(_, id)| id));
        *self.used.lock().unwrap_or_else(|e| e.into_inner()) = used;
        self.metrics.bytes.set(i64::try_from(used).unwrap_or(i64::MAX));
        if n > 0 {
            info!(tasks = n, bytes = used, took_ms = started.elapsed().as_millis() as u64, "cache loaded");
        }
        Ok(())
    }

    fn restore_entry(&self, st: StoredTask) -> Option<Arc<CachedTask>> {
        let r = &st.record;
        let (TaskState::Complete, Some(len), Some(total)) = (r.state, r.content_length, r.total_pieces) else {
            return None;
        };
        let path = self.dir.join(format!("{}.data", st.id.file_name()));
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).ok()?;
        if file.metadata().ok()?.len() != len || st.pieces.len() != total as usize {
            warn!(task = %st.id, "cached content does not match its record: dropping it");
            return None;
        }
        let pieces: Vec<PieceMeta> = st
            .pieces
            .iter()
            .enumerate()
            .map(|(i, (n, p))| {
                (i as u32 == *n).then_some(PieceMeta { number: *n, offset: p.offset, size: p.size, sha256: p.sha256 })
            })
            .collect::<Option<_>>()?;
        let entry = self.entry(&st.id, file, path);
        entry.last_access.store(r.last_access_ms, Ordering::Relaxed);
        entry.charged.store(r.bytes.max(len), Ordering::Relaxed);
        *entry.restoring.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Recorded { content_length: len, piece_size: r.piece_size, pieces });
        Some(entry)
    }

    fn entry(&self, id: &TaskId, file: std::fs::File, path: std::path::PathBuf) -> Arc<CachedTask> {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        Arc::new(CachedTask {
            id: id.clone(),
            file: Arc::new(file),
            path,
            inner: std::sync::RwLock::new(super::Inner {
                state: CacheState::Fetching,
                pieces: Vec::new(),
                content_length: None,
                error: None,
            }),
            changes: tokio::sync::watch::Sender::new(0),
            last_access: AtomicU64::new(0),
            access_dirty: AtomicBool::new(false),
            charged: AtomicU64::new(0),
            restoring: std::sync::Mutex::new(None),
        })
    }

    /// Records `entry` durably (content synced first, then the record and piece table in one
    /// batch) and then marks it complete: a task the API shows complete survives a crash.
    pub async fn complete(&self, entry: &Arc<CachedTask>, content_length: u64) {
        entry.inner.write().unwrap_or_else(|e| e.into_inner()).content_length = Some(content_length);
        entry.touch();
        self.record(entry).await;
        entry.set_state(CacheState::Complete, Some(content_length));
    }

    async fn record(&self, entry: &Arc<CachedTask>) {
        let pieces = entry.inner.read().unwrap_or_else(|e| e.into_inner()).pieces.clone();
        let Some(record) = self.db_record(entry) else { return };
        let file = entry.file.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_data()).await;
        if !matches!(synced, Ok(Ok(()))) {
            warn!(task = %entry.id, "cannot sync cached content: not recorded, a restart fetches it again");
            return;
        }
        let mut b = self.db.batch();
        b.put_task(&entry.id, &record);
        for p in &pieces {
            b.put_piece(&entry.id, p.number, &PieceRecord { offset: p.offset, size: p.size, sha256: p.sha256 });
        }
        // Deleted meanwhile (evicted or failed): write nothing.
        if self.tasks.get(&entry.id).is_some_and(|t| Arc::ptr_eq(&t, entry)) {
            if let Err(e) = b.commit() {
                warn!(task = %entry.id, error = %e, "cannot record cached task");
            }
        }
    }

    /// Deletes `task`'s metadata and content file.
    pub(super) fn delete(&self, task: &CachedTask) {
        let mut b = self.db.batch();
        b.delete_task(&task.id);
        if let Err(e) = b.commit() {
            warn!(task = %task.id, error = %e, "cannot delete cache metadata");
        }
        let _ = std::fs::remove_file(&task.path);
    }

    /// Moves a restored task that is still waiting for verification to the front of the queue.
    pub(super) fn promote(&self, id: &TaskId) {
        let mut q = self.restore_queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.iter().position(|t| t == id) {
            if i > 0 {
                if let Some(t) = q.remove(i) {
                    q.push_front(t);
                }
            }
        }
    }

    /// The next restored task to verify.
    pub(super) fn next_restoring(&self) -> Option<TaskId> {
        self.restore_queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }

    /// Writes the access times of complete tasks that changed since the last call.
    pub fn persist_access_times(&self) {
        let mut b = self.db.batch();
        for t in self.tasks.iter() {
            if t.state() == CacheState::Complete && t.access_dirty.swap(false, Ordering::Relaxed) {
                let stored = self.db_record(&t);
                if let Some(mut r) = stored {
                    r.last_access_ms = t.last_access.load(Ordering::Relaxed);
                    b.put_task(&t.id, &r);
                }
            }
        }
        if let Err(e) = b.commit() {
            warn!(error = %e, "cannot record access times");
        }
    }

    /// The record of a complete task, rebuilt from memory.
    fn db_record(&self, t: &CachedTask) -> Option<TaskRecord> {
        let g = t.inner.read().unwrap_or_else(|e| e.into_inner());
        let len = g.content_length?;
        let psize = match g.pieces.as_slice() {
            [first, _, ..] => first.size,
            [only] => only.size.max(piece_size(Some(len))),
            [] => piece_size(Some(len)),
        };
        Some(TaskRecord {
            content_length: Some(len),
            piece_size: psize,
            total_pieces: Some(g.pieces.len() as u32),
            state: TaskState::Complete,
            last_access_ms: t.last_access.load(Ordering::Relaxed),
            bytes: t.charged().max(len),
            ..TaskRecord::default()
        })
    }
}
