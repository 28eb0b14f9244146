//! Reading content off disk for uploads and local readers.

use std::sync::Arc;

use bytes::Bytes;

/// Reads `len` bytes at `offset` of `file` on the blocking pool. The buffer is allocated here, on
/// the runtime's worker thread, not in the blocking thread: glibc's malloc gives every thread its
/// own arena and returns a freed block to the arena it came from, so buffers allocated on dozens
/// of blocking threads (and freed on a worker once sent) left that many arenas holding freed
/// chunks. An uploading daemon's peak RSS was 75 MiB after serving 3 GiB; with the buffers from
/// the workers' arenas it matches glibc limited to 2 arenas (benches/results/transfer.md).
///
/// The buffer is not zeroed first: `pread` fills its spare capacity directly.
pub async fn read_exact_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    tokio::task::spawn_blocking(move || {
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            let before = buf.len();
            rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), at).map_err(std::io::Error::from)?;
            if buf.len() == before {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{len} bytes at {offset} asked, the file ends after {before}"),
                ));
            }
        }
        // The spare capacity may exceed `len` (an allocator's rounding): never return more.
        buf.truncate(len);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
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
        let err = read_exact_at(f, 99_000, 2_000).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
