//! One task's content file, progress and record: what both node kinds write pieces into, read
//! and upload from, and follow as pieces land.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use damselfly_types::id::TaskId;
use damselfly_types::piece::{Piece, PieceLocation};
use tokio::sync::watch;
use tracing::warn;

use crate::clock::Clock;
use crate::meta::{TaskRecord, TaskState};
use crate::store::{Durability, Inner, StoreEvent, METADATA_HEADROOM};
use crate::verify::piece_matches;
use crate::write::ContentWriter;

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
    pub pieces: Vec<Option<Piece>>,
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
    /// The generation whose piece table a supernode vouched for: it cut those pieces from
    /// content it verified against the task's digest. Any change of the table ends the vouch.
    pub vouched: Option<u64>,
}

impl TaskView {
    pub(crate) fn new() -> Self {
        Self {
            content_length: None,
            piece_size: 0,
            pieces: Vec::new(),
            have: Vec::new(),
            have_count: 0,
            total_pieces: None,
            status: TaskStatus::Pending,
            generation: 0,
            vouched: None,
        }
    }

    /// True while the current piece table is vouched for (see [`TaskView::vouched`]): content
    /// whose every piece matches it matches the task's digest.
    pub fn is_vouched(&self) -> bool {
        self.vouched == Some(self.generation)
    }

    /// Fixes the number of pieces at `total`: the table and the present flags end there, and a
    /// present piece beyond it (a table cut with another piece size) no longer counts. Cutting
    /// one off changes the table, so the generation moves on.
    pub fn set_total(&mut self, total: u32) {
        let n = total as usize;
        if self.have.get(n..).is_some_and(|cut| cut.iter().any(|h| *h)) {
            self.generation += 1;
        }
        self.total_pieces = Some(total);
        self.pieces.resize(n, None);
        self.have.resize(n, false);
        self.have_count = self.have.iter().filter(|h| **h).count() as u32;
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
    pub fn piece(&self, n: u32) -> Option<&Piece> {
        self.pieces.get(n as usize).and_then(|p| p.as_ref())
    }

    /// True when piece `n` is present.
    pub fn has(&self, n: u32) -> bool {
        self.have.get(n as usize).copied().unwrap_or(false)
    }

    /// Present pieces, ascending.
    pub(crate) fn present(&self) -> Vec<u32> {
        self.have.iter().enumerate().filter(|(_, h)| **h).map(|(i, _)| i as u32).collect()
    }
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
    pub(crate) serial: u64,
    pub(crate) path: PathBuf,
    /// Opened on first use (tasks loaded at restart hold no descriptor until read).
    pub(crate) file: OnceLock<Arc<std::fs::File>>,
    /// Serialises the writes of piece bytes into the content file (see [`ContentWriter`]).
    pub(crate) write_gate: Arc<Mutex<()>>,
    pub(crate) view: watch::Sender<TaskView>,
    /// Pieces hashed in this process (received and checked, or re-read and checked): only these
    /// are ever served.
    pub(crate) verified: Mutex<Vec<bool>>,
    /// The stored record; `bytes` is what the task is charged against the quota.
    pub(crate) record: Mutex<TaskRecord>,
    /// Last read, upload, download or registration, ms since the epoch (persisted lazily by
    /// [`crate::Store::housekeeping`]).
    pub(crate) last_access: AtomicU64,
    /// Modification time (ns since the epoch) of the content file when the task was last done; 0
    /// while it is not. A different one later means something outside the daemon wrote to the
    /// file (a client that hard-linked the finished file, then wrote to its copy): every piece is
    /// hashed again before it is read or uploaded. (Not the ctime: linking and unlinking change
    /// that without touching a byte.)
    pub(crate) known_mtime: AtomicU64,
    /// Set when `last_access` changed since it was last persisted.
    pub(crate) access_dirty: AtomicBool,
    /// A download (or repair, or the supernode's origin fetch) is running for the task.
    pub(crate) downloading: AtomicBool,
    /// Deleted (failed, evicted or replaced): nothing more is persisted for it.
    pub(crate) dead: AtomicBool,
    /// The store's clock (access times).
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) store: Weak<Inner>,
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
        let recorded_complete = {
            let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
            r.content_length = after.content_length;
            r.piece_size = after.piece_size;
            r.total_pieces = after.total_pieces;
            if before.done && !after.done {
                r.state = TaskState::Partial;
            }
            r.state == TaskState::Complete
        };
        let Some(inner) = self.store.upgrade() else { return };
        if after.done != before.done {
            self.known_mtime.store(if after.done { self.mtime_ns() } else { 0 }, Ordering::Release);
        }
        if after.done && !before.done {
            // Recorded by the flusher once the pieces are durable, unless `complete` already did
            // (nothing else records a task with `Durability::Complete`).
            if inner.config.durability == Durability::EveryPiece && !recorded_complete {
                inner.flusher.complete(self);
            }
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

    pub(crate) fn file(&self) -> std::io::Result<Arc<std::fs::File>> {
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        Ok(self.file.get_or_init(|| Arc::new(f)).clone())
    }

    /// Records the length and piece size; charges the length to the quota (evicting others, or
    /// failing with [`QuotaError`](crate::QuotaError)) and pre-sizes the file.
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
    pub fn add_pieces(&self, pieces: impl IntoIterator<Item = (u32, Piece)>) {
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
                changed.push((n, info));
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
        let file = self.content_writer()?;
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
    /// [`LocalTask::set_info`]). Fails with a [`QuotaError`](crate::QuotaError) when it cannot fit.
    pub fn reserve(&self, end: u64) -> std::io::Result<()> {
        let unknown_length = self.view.borrow().content_length.is_none();
        if let (Some(inner), true) = (self.store.upgrade(), unknown_length) {
            inner.charge(self, end).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// The task's content file, for readers.
    pub fn content_file(&self) -> std::io::Result<Arc<std::fs::File>> {
        self.file()
    }

    /// The task's content file for writers that put piece bytes in place themselves (then
    /// [`LocalTask::mark_present`] once the bytes are verified). Bytes written there are never
    /// served before that.
    pub fn content_writer(&self) -> std::io::Result<ContentWriter> {
        Ok(ContentWriter::with_gate(self.file()?, self.write_gate.clone()))
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
            if inner.config.durability == Durability::EveryPiece {
                inner.flusher.present(self, n);
            }
        }
    }

    /// Records the task complete, durably first, then shows it [`TaskStatus::Done`] and ends the
    /// download claim: the content file is synced, then one batch writes the record (complete,
    /// `content_length` bytes), the whole piece table and every present row, so a task readers
    /// see done survives a crash. How [`Durability::Complete`] nodes (the supernode) finish a
    /// task; with [`Durability::EveryPiece`] the flusher records a task that
    /// [`LocalTask::update`] made done. If the sync fails the task is done in memory only and a
    /// restart fetches it again.
    pub async fn complete(&self, content_length: u64) {
        self.touch();
        let (total, table) = self.with_view(|v| {
            let table: Vec<(u32, Piece)> =
                v.pieces.iter().enumerate().filter_map(|(n, p)| Some((n as u32, (*p)?))).collect();
            (v.pieces.len() as u32, table)
        });
        if let Some(inner) = self.store.upgrade() {
            let synced = match self.file() {
                Ok(file) => tokio::task::spawn_blocking(move || file.sync_data()).await.map_err(std::io::Error::other),
                Err(e) => Err(e),
            };
            match synced.and_then(|r| r) {
                Ok(()) => inner.record_complete(self, content_length, total, &table),
                Err(e) => {
                    warn!(task = %self.id, error = %e, "cannot sync content: not recorded, a restart fetches it again")
                }
            }
        }
        self.update(|v| {
            v.content_length = Some(content_length);
            v.total_pieces = Some(total);
            v.status = TaskStatus::Done;
        });
        self.release_download();
    }

    /// Reads `len` bytes at `offset` (of present pieces). Pieces not verified in this process
    /// (loaded from disk) are hashed first; a bad one is dropped and the read waits for it to be
    /// fetched again.
    pub async fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.touch();
        self.verify_range(offset, len).await?;
        crate::read_exact_at(self.file()?, offset, len).await
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
                (true, Some(info)) => *info,
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
    pub fn touch(&self) {
        self.last_access.store(self.clock.now_ms(), Ordering::Relaxed);
        self.access_dirty.store(true, Ordering::Relaxed);
    }

    pub(crate) fn locate(&self, piece: u32) -> Option<PieceLocation> {
        let info = {
            let v = self.view.borrow();
            if matches!(v.status, TaskStatus::Failed(_)) || !v.has(piece) {
                return None;
            }
            *v.piece(piece)?
        };
        if !self.is_verified(piece) {
            return None;
        }
        self.touch();
        Some(PieceLocation { file: self.file().ok()?, offset: info.offset, len: info.size })
    }

    /// Bytes the task is charged against the quota.
    pub fn charged(&self) -> u64 {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    pub(crate) fn is_done(&self) -> bool {
        self.view.borrow().status == TaskStatus::Done
    }

    /// Nobody but the store holds the task, and no download or upload uses it.
    pub(crate) fn idle(&self, this: &Arc<LocalTask>) -> bool {
        Arc::strong_count(this) == 1
            && !self.downloading.load(Ordering::Acquire)
            && self.file.get().is_none_or(|f| Arc::strong_count(f) == 1)
    }
}
