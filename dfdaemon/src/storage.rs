//! The daemon's local task store: one content file per task under `DATA_DIR/tasks/`, pieces
//! written at their offsets, metadata in RocksDB under `DATA_DIR/meta`
//! ([`damselfly_store::meta`]), and each task's progress in a `watch` channel so that readers
//! (dfget streams, the registry mirror, uploads to other peers) follow it as pieces land.
//!
//! # Durability
//! * A piece becomes present in memory (and servable) once its bytes were verified against the
//!   supernode's sha256 and written. It becomes present *on disk* a moment later: a flusher
//!   thread `fdatasync`s the content files that received pieces, then writes the present rows of
//!   every piece written before the sync in one RocksDB batch (group commit: the cost of a sync is
//!   shared by every piece that landed while the previous one ran). After `kill -9` at any moment a
//!   present row therefore always describes bytes on disk; pieces whose rows were not written yet
//!   are fetched again.
//! * The piece table (with the supernode's sha256) is written as it is announced; the task record
//!   (URL without credentials, digest, sizes, state, last access, bytes) on every change of its
//!   fields. Request headers are never stored.
//! * Restart ([`Store::open`]) loads every task: finished ones are servable at once, partial ones
//!   are resumed by the daemon ([`crate::announce`]).
//!
//! # Verification on read
//! Pieces loaded from disk are not trusted until hashed again in this process: every read for an
//! engine or dfget ([`LocalTask::read_at`]) and every upload to a peer
//! ([`Store::prepare_upload`]) first hashes the pieces it touches that were not verified yet
//! (once per piece per process), and resuming a partial task hashes all its present pieces
//! ([`LocalTask::present_pieces`]). A piece whose bytes do not match is dropped and fetched again
//! ([`StoreEvent::Repair`]); readers wait for it instead of failing.
//!
//! # Quota
//! With a quota, every task is charged its content length when the length becomes known (its
//! high-water mark when the origin sent none) and the least recently used finished tasks that
//! nobody reads, uploads or downloads are evicted to make room ([`StoreEvent::Evicted`]). A task
//! that cannot fit fails with [`QuotaError`] instead of filling the disk.

mod durable;
mod quota;
mod restore;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use damselfly_net::upload::{PieceLocation, PieceSource};
use damselfly_store::meta::{now_ms, MetaDb, MetaError, PieceRecord, TaskRecord, TaskState};
use damselfly_types::id::TaskId;
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::warn;

pub use quota::QuotaError;

use crate::metrics::CacheMetrics;

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
    /// Bumped whenever a piece table entry is replaced or every piece is dropped: a whole-content
    /// hash computed under an older generation is void.
    pub generation: u64,
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
            generation: 0,
        }
    }

    /// Bytes of the pieces present.
    pub fn present_bytes(&self) -> u64 {
        self.have
            .iter()
            .zip(&self.pieces)
            .filter(|(h, _)| **h)
            .filter_map(|(_, p)| p.as_ref())
            .map(|p| u64::from(p.size))
            .sum()
    }

    /// True when the task failed.
    pub fn failed(&self) -> bool {
        matches!(self.status, TaskStatus::Failed(_))
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

    /// Present pieces, ascending.
    fn present(&self) -> Vec<u32> {
        self.have.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i as u32).collect()
    }
}

/// What the store needs the daemon to do; see [`Store::take_events`].
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

/// How the store manages its disk.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    /// Bytes the cached content may take; `None`: unbounded.
    pub quota: Option<u64>,
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

/// The persisted fields of a view, to notice changes that must reach the task record.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Persisted {
    content_length: Option<u64>,
    piece_size: u32,
    total_pieces: Option<u32>,
    done: bool,
}

impl Persisted {
    fn of(v: &TaskView) -> Self {
        Self {
            content_length: v.content_length,
            piece_size: v.piece_size,
            total_pieces: v.total_pieces,
            done: v.status == TaskStatus::Done,
        }
    }
}

/// One task's content file, progress and record.
pub struct LocalTask {
    /// The task.
    pub id: TaskId,
    /// Tells this instance from an earlier or later one of the same task (flusher jobs).
    serial: u64,
    path: PathBuf,
    /// Opened on first use (tasks loaded at restart hold no descriptor until read).
    file: OnceLock<Arc<std::fs::File>>,
    view: watch::Sender<TaskView>,
    /// Pieces hashed in this process (received and checked, or re-read and checked): only these
    /// are ever served.
    verified: Mutex<Vec<bool>>,
    /// The stored record; `bytes` is what the task is charged against the quota.
    record: Mutex<TaskRecord>,
    /// Last read, upload or download, ms since the epoch (persisted lazily by the GC loop).
    last_access: AtomicU64,
    /// Modification time (ns since the epoch) of the content file when the task was last done; 0
    /// while it is not. A different one later means something outside the daemon wrote to the
    /// file (a client that hard-linked the finished file, then wrote to its copy): every piece is
    /// hashed again before it is read or uploaded. (Not the ctime: linking and unlinking change
    /// that without touching a byte.)
    known_mtime: AtomicU64,
    access_dirty: AtomicBool,
    /// A download (or repair) is running for the task.
    downloading: AtomicBool,
    /// Deleted (failed, evicted or replaced): nothing more is persisted for it.
    dead: AtomicBool,
    store: Weak<Inner>,
}

impl LocalTask {
    /// Subscribes to progress.
    pub fn subscribe(&self) -> watch::Receiver<TaskView> {
        self.view.subscribe()
    }

    /// A snapshot of the progress (a copy of the whole piece table: prefer
    /// [`LocalTask::with_view`] on hot paths).
    pub fn view(&self) -> TaskView {
        self.view.borrow().clone()
    }

    /// Runs `f` on the current progress without copying it (do not block inside).
    pub fn with_view<R>(&self, f: impl FnOnce(&TaskView) -> R) -> R {
        f(&self.view.borrow())
    }

    /// Applies `f` to the progress and notifies readers; changes of the length, piece size,
    /// piece count or completion are persisted (completion only after the pieces' data and
    /// present rows reached the disk).
    pub fn update(&self, f: impl FnOnce(&mut TaskView)) {
        let mut change = None;
        self.view.send_modify(|v| {
            let before = Persisted::of(v);
            f(v);
            let after = Persisted::of(v);
            if before != after {
                change = Some((before, after));
            }
        });
        if let Some((before, after)) = change {
            self.persist_change(before, after);
        }
    }

    fn persist_change(&self, before: Persisted, after: Persisted) {
        {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            r.content_length = after.content_length;
            r.piece_size = after.piece_size;
            r.total_pieces = after.total_pieces;
            if before.done && !after.done {
                r.state = TaskState::Partial;
            }
        }
        let Some(inner) = self.store.upgrade() else { return };
        if after.done != before.done {
            self.known_mtime.store(if after.done { self.mtime_ns() } else { 0 }, Ordering::Release);
        }
        if after.done && !before.done {
            inner.flusher.complete(self);
        } else {
            inner.write_meta(self, |b, r| {
                b.put_task(&self.id, r);
            });
        }
    }

    /// Records where the task comes from (the URL without credentials; never headers).
    pub fn set_origin(&self, url: &url::Url, digest: Option<&str>) {
        {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            r.url = Some(damselfly_types::id::normalise_url(url));
            r.digest = digest.map(str::to_owned);
        }
        if let Some(inner) = self.store.upgrade() {
            inner.write_meta(self, |b, r| {
                b.put_task(&self.id, r);
            });
        }
    }

    /// The origin URL (without credentials) and digest recorded for the task.
    pub fn origin(&self) -> (Option<String>, Option<String>) {
        let r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        (r.url.clone(), r.digest.clone())
    }

    fn file(&self) -> std::io::Result<Arc<std::fs::File>> {
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        Ok(self.file.get_or_init(|| Arc::new(f)).clone())
    }

    /// Records the length and piece size; charges the length to the quota (evicting others, or
    /// failing with [`QuotaError`]) and pre-sizes the file.
    pub fn set_info(&self, content_length: Option<u64>, piece_size: u32) -> std::io::Result<()> {
        if let Some(len) = content_length {
            if let Some(inner) = self.store.upgrade() {
                inner.charge(self, len).map_err(std::io::Error::other)?;
            }
            self.file()?.set_len(len)?;
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

    /// Adds piece table entries (persisting them). A present piece whose entry changes is
    /// dropped: its bytes were checked against another digest.
    pub fn add_pieces(&self, pieces: impl IntoIterator<Item = (u32, PieceInfo)>) {
        let mut changed = Vec::new();
        let mut dropped = Vec::new();
        self.update(|v| {
            for (n, info) in pieces {
                let i = n as usize;
                if v.pieces.len() <= i {
                    v.pieces.resize(i + 1, None);
                    v.have.resize(i + 1, false);
                }
                if v.pieces[i].as_ref() == Some(&info) {
                    continue;
                }
                if v.pieces[i].is_some() {
                    v.generation += 1;
                    if v.have[i] {
                        v.have[i] = false;
                        v.have_count -= 1;
                        dropped.push(n);
                    }
                }
                changed.push((n, PieceRecord { offset: info.offset, size: info.size, sha256: info.sha256 }));
                v.pieces[i] = Some(info);
            }
        });
        if changed.is_empty() {
            return;
        }
        for &n in &dropped {
            self.set_verified(n, false);
        }
        if let Some(inner) = self.store.upgrade() {
            inner.write_meta(self, |b, _| {
                for (n, p) in &changed {
                    b.put_piece(&self.id, *n, p);
                }
                for &n in &dropped {
                    b.clear_present(&self.id, n);
                }
            });
        }
    }

    /// Writes verified piece bytes and marks the piece present (in that order); the present row
    /// reaches the disk after the bytes do.
    pub async fn store_piece(&self, n: u32, offset: u64, data: Bytes) -> std::io::Result<()> {
        self.reserve(offset + data.len() as u64)?;
        self.ensure_room(data.len() as u64)?;
        let file = self.content_file()?;
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(std::io::Error::other)??;
        self.mark_present(n);
        Ok(())
    }

    /// Fails with `StorageFull` unless the file system of the content file has room for
    /// `bytes` more and still [`METADATA_HEADROOM`] after them: content must never take the last
    /// bytes of the disk, which the metadata database needs to record what is held (RocksDB
    /// aborts the process when a write of its own fails).
    pub fn ensure_room(&self, bytes: u64) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(&self.path);
        let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        if free < bytes.saturating_add(METADATA_HEADROOM) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "No space left on device: {free} bytes free, {bytes} needed plus {METADATA_HEADROOM} kept for the \
                     metadata"
                ),
            ));
        }
        Ok(())
    }

    /// Makes room for content up to byte `end` before it is written: when the length is unknown
    /// the task is charged its high-water mark as it grows (a known length was charged whole by
    /// [`LocalTask::set_info`]). Fails with a [`QuotaError`] when it cannot fit.
    pub fn reserve(&self, end: u64) -> std::io::Result<()> {
        let unknown_length = self.view.borrow().content_length.is_none();
        if let (Some(inner), true) = (self.store.upgrade(), unknown_length) {
            inner.charge(self, end).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// The task's content file, for writers that put piece bytes in place themselves (then
    /// [`LocalTask::mark_present`] once the bytes are verified). Bytes written there are never
    /// served before that.
    pub fn content_file(&self) -> std::io::Result<Arc<std::fs::File>> {
        self.file()
    }

    /// Path of the content file (complete and verified once the task is done).
    pub fn content_path(&self) -> &Path {
        &self.path
    }

    /// Marks piece `n` present: its bytes are in the content file and were verified against the
    /// piece table in this process. Its present row reaches the disk after the bytes do.
    pub fn mark_present(&self, n: u32) {
        self.set_verified(n, true);
        self.update(|v| {
            if let Some(h) = v.have.get_mut(n as usize) {
                if !*h {
                    *h = true;
                    v.have_count += 1;
                }
            }
        });
        self.touch();
        if let Some(inner) = self.store.upgrade() {
            inner.flusher.present(self, n);
        }
    }

    /// Reads `len` bytes at `offset` (of present pieces). Pieces not verified in this process
    /// (loaded from disk) are hashed first; a bad one is dropped and the read waits for it to be
    /// fetched again.
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.touch();
        self.verify_range(offset, len).await?;
        let file = self.file()?;
        // Allocated on the worker, not the blocking thread (see `damselfly_net::upload`).
        let mut buf = vec![0u8; len];
        tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Makes sure every piece overlapping `offset..offset+len` is present and verified. The
    /// caller saw them present: one that is not any more was dropped by a failed verification,
    /// so this waits for the repair to bring it back (or for the task to fail).
    async fn verify_range(&self, offset: u64, len: usize) -> std::io::Result<()> {
        let psize = u64::from(self.view.borrow().piece_size);
        if psize == 0 || len == 0 {
            return Ok(());
        }
        let (first, last) = ((offset / psize) as u32, ((offset + len as u64 - 1) / psize) as u32);
        for n in first..=last {
            while !self.ensure_verified(n).await? {
                let mut rx = self.subscribe();
                let back = rx.wait_for(|v| v.has(n) || matches!(v.status, TaskStatus::Failed(_))).await;
                match back.map(|v| v.status.clone()) {
                    Ok(TaskStatus::Failed(f)) => return Err(std::io::Error::other(f.message)),
                    Ok(_) => {}
                    Err(_) => return Err(std::io::Error::other("task vanished")),
                }
            }
        }
        Ok(())
    }

    /// Hashes piece `n` if it is present and not verified yet. Returns true when it is present
    /// and verified; a mismatch drops the piece (and asks for a repair) and returns false.
    pub async fn ensure_verified(&self, n: u32) -> std::io::Result<bool> {
        self.guard_external_changes();
        if self.is_verified(n) {
            return Ok(true);
        }
        let info = {
            let v = self.view.borrow();
            match (v.has(n), v.piece(n)) {
                (true, Some(info)) => info.clone(),
                _ => return Ok(false),
            }
        };
        let file = self.file()?;
        let good =
            tokio::task::spawn_blocking(move || piece_matches(&file, &info)).await.map_err(std::io::Error::other)?;
        if good {
            self.set_verified(n, true);
            return Ok(true);
        }
        warn!(task = %self.id, piece = n, "piece on disk does not match its sha256: dropped, fetching it again");
        self.drop_piece(n);
        Ok(false)
    }

    /// Present pieces, every one of them verified first (bad ones are dropped): what a resumed
    /// download registers as held.
    pub async fn present_pieces(&self) -> Vec<u32> {
        let present = self.view.borrow().present();
        for n in present {
            if let Err(e) = self.ensure_verified(n).await {
                warn!(task = %self.id, piece = n, error = %e, "cannot read piece: dropped");
                self.drop_piece(n);
            }
        }
        self.view.borrow().present()
    }

    /// Drops every piece (the whole content did not match its digest): the task is fetched again
    /// from scratch into the same entry.
    pub fn reset_content(&self) {
        let present = self.view.borrow().present();
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.update(|v| {
            v.have.iter_mut().for_each(|h| *h = false);
            v.pieces.iter_mut().for_each(|p| *p = None);
            v.have_count = 0;
            v.generation += 1;
            if v.status == TaskStatus::Done {
                v.status = TaskStatus::Running;
            }
        });
        if let Some(inner) = self.store.upgrade() {
            inner.write_meta(self, |b, _| {
                for &n in &present {
                    b.clear_present(&self.id, n);
                }
            });
        }
    }

    /// Hashes every present piece not verified in this process yet (pieces loaded from disk);
    /// bad ones are dropped and fetched again. True when every present piece is verified and
    /// none was dropped: what must hold before the whole file is handed out without reading it.
    pub async fn verify_all(&self) -> std::io::Result<bool> {
        let present = self.view.borrow().present();
        let mut all = true;
        for n in present {
            all &= self.ensure_verified(n).await?;
        }
        Ok(all)
    }

    /// Present pieces as recorded, without verifying them (uploads verify each piece first).
    pub fn held_pieces(&self) -> Vec<u32> {
        self.view.borrow().present()
    }

    fn drop_piece(&self, n: u32) {
        self.set_verified(n, false);
        let mut dropped = false;
        self.update(|v| {
            if let Some(h) = v.have.get_mut(n as usize) {
                if *h {
                    *h = false;
                    v.have_count -= 1;
                    dropped = true;
                }
            }
            if v.status == TaskStatus::Done {
                v.status = TaskStatus::Running;
            }
        });
        if !dropped {
            return;
        }
        if let Some(inner) = self.store.upgrade() {
            inner.write_meta(self, |b, _| {
                b.clear_present(&self.id, n);
            });
            inner.metrics.corrupt_pieces.inc();
            let _ = inner.events.send(StoreEvent::Repair(self.id.clone()));
        }
    }

    /// The content file's modification time in ns, 0 when unknown.
    fn mtime_ns(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Some(meta) = self.file.get().and_then(|f| f.metadata().ok()) else { return 0 };
        (meta.mtime().max(0) as u64).saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec().max(0) as u64)
    }

    /// Forgets which pieces were verified when the content file of a done task changed outside
    /// the daemon (see `known_mtime`), so that each is hashed again before its next use.
    fn guard_external_changes(&self) {
        let known = self.known_mtime.load(Ordering::Acquire);
        if known == 0 {
            return;
        }
        let now = self.mtime_ns();
        if now == 0 || now == known {
            return;
        }
        if self.known_mtime.compare_exchange(known, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            warn!(task = %self.id, "content file written outside the daemon: verifying every piece again");
            self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    fn is_verified(&self, n: u32) -> bool {
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).get(n as usize).copied().unwrap_or(false)
    }

    fn set_verified(&self, n: u32, ok: bool) {
        let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() <= n as usize {
            v.resize(n as usize + 1, false);
        }
        v[n as usize] = ok;
    }

    /// Claims the task's download: true when no download runs for it and the caller must start
    /// one (and call [`LocalTask::release_download`] when it ends).
    pub fn claim_download(&self) -> bool {
        let v = self.view.borrow();
        if v.status == TaskStatus::Done || matches!(v.status, TaskStatus::Failed(_)) {
            return false;
        }
        drop(v);
        !self.downloading.swap(true, Ordering::AcqRel)
    }

    /// Ends a claim taken with [`LocalTask::claim_download`].
    pub fn release_download(&self) {
        self.downloading.store(false, Ordering::Release);
    }

    /// Notes an access (LRU and TTL go by it).
    fn touch(&self) {
        self.last_access.store(now_ms(), Ordering::Relaxed);
        self.access_dirty.store(true, Ordering::Relaxed);
    }

    fn locate(&self, piece: u32) -> Option<PieceLocation> {
        let info = {
            let v = self.view.borrow();
            if matches!(v.status, TaskStatus::Failed(_)) || !v.has(piece) {
                return None;
            }
            v.piece(piece)?.clone()
        };
        if !self.is_verified(piece) {
            return None;
        }
        self.touch();
        Some(PieceLocation { file: self.file().ok()?, offset: info.offset, len: info.size })
    }

    fn charged(&self) -> u64 {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    fn is_done(&self) -> bool {
        self.view.borrow().status == TaskStatus::Done
    }

    /// Nobody but the store holds the task, and no download or upload uses it.
    fn idle(&self, this: &Arc<LocalTask>) -> bool {
        Arc::strong_count(this) == 1
            && !self.downloading.load(Ordering::Acquire)
            && self.file.get().is_none_or(|f| Arc::strong_count(f) == 1)
    }
}

/// True when the piece's bytes in `file` hash to its recorded sha256.
fn piece_matches(file: &std::fs::File, info: &PieceInfo) -> bool {
    const STEP: usize = 1 << 20;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; STEP.min(info.size as usize)];
    let mut done = 0u64;
    while done < u64::from(info.size) {
        let n = (u64::from(info.size) - done).min(STEP as u64) as usize;
        if file.read_exact_at(&mut buf[..n], info.offset + done).is_err() {
            return false;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    got == info.sha256
}

/// The store's shared state (tasks hold a weak reference to it).
struct Inner {
    dir: PathBuf,
    tasks: DashMap<TaskId, Arc<LocalTask>>,
    db: MetaDb,
    /// Held around every metadata write and around marking a task dead, so that nothing is
    /// written for a task after its rows were deleted.
    meta_lock: Mutex<()>,
    quota: quota::Quota,
    flusher: durable::Flusher,
    events: mpsc::UnboundedSender<StoreEvent>,
    metrics: CacheMetrics,
    flush_stats: durable::FlushStats,
}

impl Inner {
    /// Writes a batch built by `f` for `task` unless the task is dead.
    fn write_meta(&self, task: &LocalTask, f: impl FnOnce(&mut damselfly_store::meta::MetaBatch<'_>, &TaskRecord)) {
        let _g = self.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
        if task.dead.load(Ordering::Acquire) {
            return;
        }
        let mut b = self.db.batch();
        {
            let r = task.record.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut b, &r);
        }
        if let Err(e) = b.commit() {
            warn!(task = %task.id, error = %e, "cannot write cache metadata");
        }
    }

    /// Marks `task` dead and deletes its rows and its content file (the caller releases its
    /// quota charge).
    fn delete(&self, task: &LocalTask) {
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

    fn new_task(
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
            serial: durable::next_serial(),
            path,
            file: cell,
            view: watch::Sender::new(view),
            verified: Mutex::new(Vec::new()),
            last_access: AtomicU64::new(record.last_access_ms),
            record: Mutex::new(record),
            access_dirty: AtomicBool::new(false),
            known_mtime: AtomicU64::new(0),
            downloading: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            store: Arc::downgrade(self),
        }
    }
}

/// Free bytes kept on the data dir's file system for the metadata database: content writes fail
/// (locally, naming the file) before the disk is full.
pub const METADATA_HEADROOM: u64 = 4 << 20;

/// Every task this daemon holds or is downloading.
pub struct Store {
    inner: Arc<Inner>,
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
}

impl Store {
    /// [`Store::open_with`] without a quota and with metrics nobody reads (tests, benches).
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
            quota: quota::Quota::new(config.quota),
            flusher: durable::Flusher::start(weak.clone()),
            events,
            metrics,
            flush_stats: durable::FlushStats::default(),
        });
        restore::load(&inner)?;
        Ok(Self { inner, events: Mutex::new(Some(rx)) })
    }

    /// The store's requests to the daemon (repairs, eviction reports); `Some` once.
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
        let record = TaskRecord { last_access_ms: now_ms(), ..TaskRecord::default() };
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
    pub fn flush_stats(&self) -> (u64, u64, u64, std::time::Duration) {
        let s = &self.inner.flush_stats;
        (
            s.rounds.load(Ordering::Relaxed),
            s.syncs.load(Ordering::Relaxed),
            s.pieces.load(Ordering::Relaxed),
            std::time::Duration::from_micros(s.sync_micros.load(Ordering::Relaxed)),
        )
    }

    /// Evicts finished, idle tasks not accessed for `ttl`; returns how many.
    pub fn evict_expired(&self, ttl: std::time::Duration) -> usize {
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        self.inner.evict_where(|t| t.last_access.load(Ordering::Relaxed) < cutoff)
    }

    /// Writes the access times that changed since the last call.
    pub fn persist_access_times(&self) {
        for t in self.tasks() {
            if t.access_dirty.swap(false, Ordering::Relaxed) {
                t.record.lock().unwrap_or_else(|e| e.into_inner()).last_access_ms =
                    t.last_access.load(Ordering::Relaxed);
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
}

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

#[cfg(test)]
mod tests;
