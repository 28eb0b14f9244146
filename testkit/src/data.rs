//! Test data: deterministic random bytes and sha256 helpers.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Bytes generated per independently seeded block: blocks are filled on all cores at once.
const BLOCK: usize = 4 << 20;

/// `len` pseudo-random bytes, the same for the same `(len, seed)` on every run and machine.
///
/// Fast enough for large blobs (256 MiB in well under two seconds, even in debug builds): the
/// buffer is cut into 4 MiB blocks, each filled by its own [`SmallRng`] seeded from `seed` and
/// the block number, on all cores at once.
///
/// ```
/// let a = damselfly_testkit::random_bytes(1000, 7);
/// assert_eq!(a, damselfly_testkit::random_bytes(1000, 7));
/// assert_ne!(a, damselfly_testkit::random_bytes(1000, 8));
/// ```
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut buf = vec![0u8; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocks: Vec<(usize, &mut [u8])> = buf.chunks_mut(BLOCK).enumerate().collect();
    let per_thread = blocks.len().div_ceil(threads).max(1);
    let mut blocks = blocks.into_iter();
    std::thread::scope(|scope| loop {
        let batch: Vec<_> = blocks.by_ref().take(per_thread).collect();
        if batch.is_empty() {
            break;
        }
        scope.spawn(move || {
            for (index, block) in batch {
                let block_seed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                SmallRng::seed_from_u64(block_seed).fill_bytes(block);
            }
        });
    });
    Bytes::from(buf)
}

/// Lower-case hex sha256 of `bytes`.
///
/// ```
/// assert_eq!(
///     damselfly_testkit::sha256_hex(b""),
///     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The OCI digest of `bytes`: `sha256:` followed by [`sha256_hex`].
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Lower-case hex sha256 of the file at `path`, read in 1 MiB pieces (blocking I/O: from async
/// code wrap it in `tokio::task::spawn_blocking` for large files).
pub fn file_sha256(path: impl AsRef<Path>) -> anyhow::Result<String> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).with_context(|| format!("open {} to hash it", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_is_deterministic_and_sized() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17] {
            let a = random_bytes(len, 42);
            assert_eq!(a.len(), len);
            assert_eq!(a, random_bytes(len, 42));
        }
        assert_ne!(random_bytes(64, 1), random_bytes(64, 2));
    }

    #[test]
    fn blocks_differ_from_each_other() {
        let data = random_bytes(2 * BLOCK, 5);
        assert_ne!(data[..64], data[BLOCK..BLOCK + 64]);
    }

    #[test]
    fn random_bytes_is_fast() {
        let start = std::time::Instant::now();
        let data = random_bytes(256 << 20, 1);
        let took = start.elapsed();
        assert_eq!(data.len(), 256 << 20);
        // Typically 0.3 s on two idle cores (debug build); the margin is for a loaded CI machine.
        assert!(took.as_secs_f64() < 3.0, "256 MiB took {took:?}");
    }

    #[test]
    fn file_hash_matches_memory_hash() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let data = random_bytes((1 << 20) + 3, 9);
        std::fs::write(&path, &data)?;
        assert_eq!(file_sha256(&path)?, sha256_hex(&data));
        assert_eq!(sha256_digest(b"abc"), format!("sha256:{}", sha256_hex(b"abc")));
        Ok(())
    }
}
