//! Writing piece bytes into a content file.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// A content file as its writers see it: one write at a time.
///
/// Several pieces of a task land at once, each written from its own blocking thread. ext4 takes
/// the inode's lock for every buffered write, and a writer that finds it taken spins while the
/// holder copies: on a 2-core host one core spun for a sixth of a download's CPU time
/// (`rwsem_spin_on_owner` in `perf`). Waiting on this mutex sleeps instead, leaving the core to
/// the network.
#[derive(Clone, Debug)]
pub struct ContentWriter {
    file: Arc<std::fs::File>,
    gate: Arc<Mutex<()>>,
}

impl ContentWriter {
    /// A writer of `file` with a gate of its own (for a file written by nothing else).
    pub fn new(file: Arc<std::fs::File>) -> Self {
        Self { file, gate: Arc::default() }
    }

    pub(crate) fn with_gate(file: Arc<std::fs::File>, gate: Arc<Mutex<()>>) -> Self {
        Self { file, gate }
    }

    /// Writes all of `buf` at `offset` (blocking), after any other write of this file.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let _turn = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.file.write_all_at(buf, offset)
    }
}
