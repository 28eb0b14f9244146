//! Whole-content verification: a task whose digest is known is done only when its whole
//! content file hashes to that digest, whichever mix of sources filled it (parents, the
//! supernode, the origin fallback, pieces kept from before a restart).
//!
//! The check follows the download: [`Follower`] hashes the content front to back as pieces
//! become present, reading each piece back from the page cache once, so when the last piece
//! lands only the tail is left to hash. Readers (the registry mirror, the dfget API) never hash:
//! they hold the last byte back until the task is done (see [`crate::http`]), and the done state
//! is set only after this check passed.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use damselfly_types::id::Sha256Digest;
use sha2::{Digest as _, Sha256};

use crate::storage::{LocalTask, TaskFailure};

/// Bytes read back per step.
const STEP: usize = 1 << 20;

/// Hashes a task's content in order as its pieces become present.
pub struct Follower {
    task: Arc<LocalTask>,
    expected: Sha256Digest,
    hasher: Sha256,
    /// Next piece to hash.
    next: u32,
    /// The piece table generation the hash so far relied on; a change restarts the hash.
    generation: u64,
    buf: Vec<u8>,
}

impl Follower {
    /// A follower checking `task` against `expected`.
    pub fn new(task: Arc<LocalTask>, expected: Sha256Digest) -> Self {
        let generation = task.with_view(|v| v.generation);
        Self { task, expected, hasher: Sha256::new(), next: 0, generation, buf: Vec::new() }
    }

    /// Follows the download until every piece is present and hashed; then compares. Returns
    /// early (with `Ok`) only when the task failed, which its downloader reports.
    pub async fn run(mut self) -> Result<(), TaskFailure> {
        let mut rx = self.task.subscribe();
        loop {
            let next = self.next;
            let state = rx
                .wait_for(|v| v.has(next) || v.generation != self.generation || v.complete() || v.failed())
                .await
                .map(|v| (v.failed(), v.generation, v.complete(), v.has(next)));
            let Ok((failed, generation, all, has_next)) = state else { return Ok(()) };
            if failed {
                return Ok(());
            }
            if generation != self.generation {
                self.restart(generation);
                continue;
            }
            if has_next {
                self.hash_present().await?;
                continue;
            }
            if all {
                return self.compare();
            }
        }
    }

    fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.next = 0;
        self.hasher = Sha256::new();
    }

    /// Hashes every present piece from `next` on, in order.
    async fn hash_present(&mut self) -> Result<(), TaskFailure> {
        loop {
            let n = self.next;
            let info = self
                .task
                .with_view(|v| (v.generation == self.generation && v.has(n)).then(|| v.piece(n).cloned()).flatten());
            let Some(info) = info else { return Ok(()) };
            // Pieces loaded from disk are checked on their own first (a bad one is dropped and
            // fetched again; the loop then waits for it).
            if !self.task.ensure_verified(n).await.map_err(|e| self.local(e))? {
                return Ok(());
            }
            let file = self.task.content_file().map_err(|e| self.local(e))?;
            let (hasher, buf) = (std::mem::take(&mut self.hasher), std::mem::take(&mut self.buf));
            let (hasher, buf, read) =
                tokio::task::spawn_blocking(move || hash_range(file, info.offset, info.size, hasher, buf))
                    .await
                    .map_err(|e| self.local(std::io::Error::other(e)))?;
            self.hasher = hasher;
            self.buf = buf;
            read.map_err(|e| self.local(e))?;
            self.next += 1;
        }
    }

    fn compare(self) -> Result<(), TaskFailure> {
        let got = Sha256Digest(self.hasher.finalize().into());
        if got == self.expected {
            return Ok(());
        }
        Err(TaskFailure {
            origin_status: None,
            message: format!("content digest {got} does not match {}", self.expected),
        })
    }

    fn local(&self, e: std::io::Error) -> TaskFailure {
        TaskFailure {
            origin_status: None,
            message: format!("cannot read back {} to verify it: {e}", self.task.content_path().display()),
        }
    }
}

/// Feeds `len` bytes of `file` at `offset` to `hasher`, reading through `buf`.
fn hash_range(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u32,
    mut hasher: Sha256,
    mut buf: Vec<u8>,
) -> (Sha256, Vec<u8>, std::io::Result<()>) {
    buf.resize(STEP.min(len as usize), 0);
    let mut done = 0u64;
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(STEP as u64) as usize;
        if let Err(e) = file.read_exact_at(&mut buf[..n], offset + done) {
            return (hasher, buf, Err(e));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    (hasher, buf, Ok(()))
}
