//! Writing piece bytes into a content file.

use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

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

    /// Writes `bufs` one after the other from `offset` (blocking) with `pwritev`, so bytes that
    /// arrived in many small chunks reach the file without being gathered into one buffer first.
    pub fn write_all_vectored_at(&self, bufs: &[Bytes], mut offset: u64) -> std::io::Result<()> {
        let _turn = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let batch = rest.len().min(MAX_IOVECS);
            let n = match rustix::io::pwritev(&*self.file, &rest[..batch], offset) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            offset += n as u64;
            IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }
}

/// Slices per `pwritev` call (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_writes_land_in_order_past_the_iovec_limit() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let writer = ContentWriter::new(file.clone());
        // 3000 chunks of 1..=7 bytes, some empty: more than one pwritev's worth.
        let chunks: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(vec![(i % 251) as u8; (i % 8) as usize])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        writer.write_all_vectored_at(&chunks, 100).unwrap();
        let mut got = vec![0u8; expected.len()];
        file.read_exact_at(&mut got, 100).unwrap();
        assert_eq!(got, expected);
        assert_eq!(file.metadata().unwrap().len(), 100 + expected.len() as u64);
    }
}
