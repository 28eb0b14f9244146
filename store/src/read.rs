//! Reading content off disk for uploads and local readers.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

/// Reads `len` bytes at `offset` of `file` on the blocking pool. The buffer is allocated here, on
/// the runtime's worker thread, not in the blocking thread: glibc's malloc gives every thread its
/// own arena and returns a freed block to the arena it came from, so buffers allocated on dozens
/// of blocking threads (and freed on a worker once sent) left that many arenas holding freed
/// chunks. An uploading daemon's peak RSS was 75 MiB after serving 3 GiB; with the buffers from
/// the workers' arenas it matches glibc limited to 2 arenas (benches/results/transfer.md).
pub async fn read_exact_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    tokio::task::spawn_blocking(move || {
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}
