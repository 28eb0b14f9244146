//! Whole-content verification: a task whose digest is known is done only when its whole
//! content file hashes to that digest, whichever mix of sources filled it (parents, the
//! supernode, the origin fallback, pieces kept from before a restart).
//!
//! The check follows the download: [`Follower`] hashes the content front to back as pieces
//! become present, reading each piece back from the page cache once, so when the last piece
//! lands only the tail is left to hash. Readers (the registry mirror, the dfget API) never hash:
//! they hold the last byte back until the task is done (see [`crate::http`]), and the done state
//! is set only after this check passed.
//!
//! A piece table a supernode vouched for (see [`crate::storage::TaskView::is_vouched`]) makes the
//! second hash redundant: the supernode announced the task complete only after the content it
//! cut the table from matched the digest (the task id *is* that digest), and every piece here
//! matched its entry in the table. While the table is vouched for, the follower only makes sure
//! each present piece was checked against it; it hashes again from where it stopped if the
//! table changes (another supernode, the origin fallback), so a mix of sources is still checked
//! whole. This saves one sha256 pass over every byte of every download.

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
    /// Whether a vouched table may stand in for the hash: only for a task named by the expected
    /// digest, and no longer once a vouched, complete task failed its piece checks.
    trust_vouch: bool,
    buf: Vec<u8>,
}

impl Follower {
    /// A follower checking `task` against `expected`.
    pub fn new(task: Arc<LocalTask>, expected: Sha256Digest) -> Self {
        let generation = task.with_view(|v| v.generation);
        let trust_vouch = task.id.as_str() == expected.to_string();
        Self { task, expected, hasher: Sha256::new(), next: 0, generation, trust_vouch, buf: Vec::new() }
    }

    /// Follows the download until every piece is present and hashed; then compares. Returns
    /// early (with `Ok`) only when the task failed, which its downloader reports.
    pub async fn run(mut self) -> Result<(), TaskFailure> {
        let mut rx = self.task.subscribe();
        loop {
            let trust_vouch = self.trust_vouch;
            let next = self.next;
            let state = rx
                .wait_for(|v| {
                    let hash_next = v.has(next) && !(trust_vouch && v.is_vouched());
                    hash_next || v.generation != self.generation || v.complete() || v.failed()
                })
                .await
                .map(|v| (v.failed(), v.generation, v.complete(), v.has(next), trust_vouch && v.is_vouched()));
            let Ok((failed, generation, all, has_next, vouched)) = state else { return Ok(()) };
            if failed {
                return Ok(());
            }
            if generation != self.generation {
                self.restart(generation);
                continue;
            }
            if vouched && all {
                if self.all_verified().await? {
                    return Ok(());
                }
                // A piece counted present is not (or no longer): the vouch cannot stand in for
                // the hash here. Hash the content whole; a hole then ends in a mismatch, and
                // the download fetches the content again, instead of waiting for a change
                // that may never come.
                self.trust_vouch = false;
                continue;
            }
            if has_next && !vouched {
                self.hash_present().await?;
                continue;
            }
            if all {
                return self.compare();
            }
        }
    }

    /// Under a vouched table: true when every piece is present and was checked against its
    /// entry (pieces loaded from disk are hashed now; a bad one is dropped and fetched again).
    async fn all_verified(&self) -> Result<bool, TaskFailure> {
        let total = self.task.with_view(|v| v.total_pieces.unwrap_or(0));
        for n in 0..total {
            if !self.task.ensure_verified(n).await.map_err(|e| self.local(e))? {
                return Ok(false);
            }
        }
        Ok(true)
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
            if self.trust_vouch && self.task.with_view(|v| v.is_vouched()) {
                // The table was vouched for meanwhile: the rest needs no second hash.
                return Ok(());
            }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use damselfly_types::id::TaskId;
    use damselfly_types::piece::Piece;

    use super::*;
    use crate::storage::Store;

    const PIECE: usize = 4096;

    /// A task of three pieces of `content` (their table cut from `table_from`), the first
    /// `present` of them present.
    async fn task_with(store: &Store, id: &TaskId, content: &[u8], table_from: &[u8], present: u32) -> Arc<LocalTask> {
        let (task, _) = store.get_or_create(id).expect("task");
        task.set_info(Some(content.len() as u64), PIECE as u32).expect("info");
        let n = content.len().div_ceil(PIECE) as u32;
        task.add_pieces((0..n).map(|i| {
            let at = i as usize * PIECE;
            let end = (at + PIECE).min(content.len());
            (i, Piece::of(at as u64, &table_from[at..end]))
        }));
        task.update(|v| v.total_pieces = Some(n));
        for i in 0..n.min(present) {
            let at = i as usize * PIECE;
            let end = (at + PIECE).min(content.len());
            task.store_piece(i, at as u64, Bytes::copy_from_slice(&content[at..end])).await.expect("store");
        }
        task
    }

    fn content(fill: u8) -> Vec<u8> {
        (0..3 * PIECE - 100).map(|i| (i as u8).wrapping_mul(7) ^ fill).collect()
    }

    #[tokio::test]
    async fn an_unvouched_table_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (good, other) = (content(0), content(1));
        let digest = Sha256Digest::of(&good);
        let id = TaskId::for_url(&"http://o/x".parse().unwrap(), Some(&digest));
        // Every piece matches its table entry, but the table is of other content.
        let task = task_with(&store, &id, &other, &other, 3).await;
        let err = Follower::new(task, digest).run().await.expect_err("must not match");
        assert!(err.message.contains("does not match"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_vouched_table_needs_no_second_hash_but_any_change_to_it_brings_the_hash_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = content(0);
        let digest = Sha256Digest::of(&good);
        let id = TaskId::for_url(&"http://o/x".parse().unwrap(), Some(&digest));
        let task = task_with(&store, &id, &good, &good, 3).await;
        task.update(|v| v.vouched = Some(v.generation));
        Follower::new(task.clone(), digest).run().await.expect("vouched and matching");

        // The vouch is what the follower relies on: a vouched table of other content passes
        // (the supernode checked the digest, not this host) ...
        let other = content(1);
        let id2 = TaskId::for_url(&"http://o/z".parse().unwrap(), Some(&Sha256Digest::of(&other)));
        let vouched_other = task_with(&store, &id2, &good, &good, 3).await;
        vouched_other.update(|v| v.vouched = Some(v.generation));
        Follower::new(vouched_other.clone(), Sha256Digest::of(&other)).run().await.expect("trusts the vouch");

        // ... but only for the generation vouched for: an entry replaced during the download
        // voids it, and the content is hashed whole again.
        let third = content(2);
        let id3 = TaskId::for_url(&"http://o/w".parse().unwrap(), Some(&Sha256Digest::of(&third)));
        let mixed = task_with(&store, &id3, &third, &third, 2).await;
        mixed.update(|v| v.vouched = Some(v.generation));
        let follower = tokio::spawn(Follower::new(mixed.clone(), Sha256Digest::of(&third)).run());
        tokio::task::yield_now().await;
        mixed.add_pieces([(0, Piece::of(0, &other[..PIECE]))]);
        mixed.store_piece(0, 0, Bytes::copy_from_slice(&other[..PIECE])).await.unwrap();
        let last = 2 * PIECE;
        mixed.store_piece(2, last as u64, Bytes::copy_from_slice(&third[last..])).await.unwrap();
        let err = follower.await.unwrap().expect_err("the mix does not match");
        assert!(err.message.contains("does not match"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_vouch_counts_only_for_a_task_named_by_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (good, other) = (content(0), content(1));
        // A URL task (id not the digest) whose caller expects `good`'s digest.
        let id = TaskId::for_url(&"http://o/x".parse().unwrap(), None);
        let task = task_with(&store, &id, &other, &other, 3).await;
        task.update(|v| v.vouched = Some(v.generation));
        let err = Follower::new(task, Sha256Digest::of(&good)).run().await.expect_err("must be hashed");
        assert!(err.message.contains("does not match"), "{}", err.message);
    }
}
