//! Reading content off disk for uploads and local readers.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Reads `len` bytes at `offset` of `file` on the blocking pool. The buffer is allocated here, on
/// the runtime's worker thread, not in the blocking thread: glibc's malloc gives every thread its
/// own arena and returns a freed block to the arena it came from, so buffers allocated on dozens
/// of blocking threads (and freed on a worker once sent) left that many arenas holding freed
/// chunks. An uploading daemon's peak RSS was 75 MiB after serving 3 GiB; with the buffers from
/// the workers' arenas it matches glibc limited to 2 arenas (benches/results/transfer.md).
///
/// Reads of at most 1 MiB (every upload and body chunk) use a recycled buffer
/// (see `Pool`), zeroed once when the pool first made it, never per read; a longer read fills a
/// new buffer's spare capacity directly.
pub async fn read_exact_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    read_pooled(&POOL, file, offset, len).await
}

async fn read_pooled(pool: &'static Pool, file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    if len <= POOLED_LEN {
        let mut buf = pool.take();
        let buf = tokio::task::spawn_blocking(move || {
            // Exactly `len` bytes: a pooled buffer stays initialised, so no spare capacity is read
            // into (that would read past the piece).
            file.read_exact_at(&mut buf[..len], offset)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(std::io::Error::other)??;
        return Ok(Bytes::from_owner(Pooled { buf, len, pool }));
    }
    let mut buf = Vec::with_capacity(len);
    buf = tokio::task::spawn_blocking(move || {
        fill(&file, &mut buf, offset, len)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(Bytes::from(buf))
}

/// Reads `len` bytes at `offset` into `buf` (emptied first) through its spare capacity.
fn fill(file: &std::fs::File, buf: &mut Vec<u8>, offset: u64, len: usize) -> std::io::Result<()> {
    buf.clear();
    buf.reserve_exact(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let before = buf.len();
        rustix::io::pread(file, rustix::buffer::spare_capacity(&mut *buf), at).map_err(std::io::Error::from)?;
        if buf.len() == before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} asked, the file ends after {before}"),
            ));
        }
    }
    // The spare capacity may exceed `len` (an allocator's rounding): never return more.
    buf.truncate(len);
    Ok(())
}

/// Capacity of a recycled read buffer: the upload and HTTP body chunk (1 MiB).
const POOLED_LEN: usize = 1 << 20;
/// Idle buffers kept for reuse; more are freed.
const POOL_KEEP: usize = 8;

static POOL: Pool = Pool::new();

/// Read buffers that keep their pages. A fresh 1 MiB buffer per read is mapped anew (glibc serves
/// it by `mmap` or from a heap top it trims again), and every page then faults in zeroed on
/// first write: page faults and `clear_page` were a tenth of an uploading daemon's samples
/// (`perf`, transfer bench), and on a VM whose host backs fresh pages on demand each one costs
/// more still. A buffer dropped by whoever held the bytes (quinn, once the peer acknowledged
/// them; hyper, once sent) comes back here, up to [`POOL_KEEP`] of them (8 MiB).
struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    const fn new() -> Self {
        Self { idle: Mutex::new(Vec::new()) }
    }

    /// A buffer of [`POOLED_LEN`] initialised bytes.
    fn take(&self) -> Vec<u8> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0; POOLED_LEN])
    }

    fn put(&self, buf: Vec<u8>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_KEEP && buf.len() == POOLED_LEN {
            idle.push(buf);
        }
    }
}

/// A pooled buffer lent to a [`Bytes`] (its first `len` bytes); back to its pool when the last
/// clone is dropped.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: &'static Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn reads_exactly_the_range_and_fails_past_the_end() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        assert_eq!(&read_exact_at(f.clone(), 0, 100_000).await.unwrap()[..], &data[..]);
        assert_eq!(&read_exact_at(f.clone(), 4_000, 70_001).await.unwrap()[..], &data[4_000..74_001]);
        assert!(read_exact_at(f.clone(), 0, 0).await.unwrap().is_empty());
        let err = read_exact_at(f.clone(), 99_000, 2_000).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        // A recycled buffer holds no bytes of an earlier read beyond the new length.
        for (at, len) in [(0, 90_000), (10, 5), (50_000, 50_000), (99_999, 1)] {
            let got = read_exact_at(f.clone(), at as u64, len).await.unwrap();
            assert_eq!(&got[..], &data[at..at + len]);
        }
    }

    #[tokio::test]
    async fn buffers_come_back_to_the_pool_when_the_bytes_are_dropped() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        let f = Arc::new(f);
        static OWN: Pool = Pool::new();
        let first = read_pooled(&OWN, f.clone(), 0, 4096).await.unwrap();
        let at = first.as_ptr();
        let clone = first.clone();
        drop(first);
        assert!(OWN.idle.lock().unwrap().is_empty(), "a clone still holds it");
        drop(clone);
        let again = read_pooled(&OWN, f.clone(), 0, 100).await.unwrap();
        assert_eq!(again.as_ptr(), at);
        assert_eq!(&again[..], &[7u8; 100][..]);
        // At most POOL_KEEP idle buffers are kept.
        let mut many = vec![again];
        for _ in 0..POOL_KEEP + 3 {
            many.push(read_pooled(&OWN, f.clone(), 0, 10).await.unwrap());
        }
        drop(many);
        assert_eq!(OWN.idle.lock().unwrap().len(), POOL_KEEP);
    }
}
