//! The re-hash: a piece read back from a content file is served only once its bytes hash to the
//! sha256 in its record. Used for every piece loaded from disk (lazily on the dfdaemon, eagerly
//! when the supernode replays its cache after a restart) and by benchmarks of that cost.

use std::os::unix::fs::FileExt;

use damselfly_types::piece::Piece;
use sha2::{Digest as _, Sha256};

/// Bytes read and hashed at a time (a piece can be up to 16 MiB).
const STEP: usize = 1 << 20;

/// True when the bytes of `piece` in `file` hash to its sha256; false when they do not or cannot
/// be read (a short file).
pub fn piece_matches(file: &std::fs::File, piece: &Piece) -> bool {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; STEP.min(piece.size as usize)];
    let mut done = 0u64;
    while done < u64::from(piece.size) {
        let n = (u64::from(piece.size) - done).min(STEP as u64) as usize;
        if file.read_exact_at(&mut buf[..n], piece.offset + done).is_err() {
            return false;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    got == piece.sha256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_recorded_bytes_at_interesting_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        for len in [0usize, 1, STEP - 1, STEP, STEP + 1, 2 * STEP + 7] {
            let data: Vec<u8> = (0..len + 3).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            let piece = Piece::of(3, &data[3..]);
            assert!(piece_matches(&file, &piece), "len {len}");
            let shifted = Piece { offset: 2, ..piece };
            assert_eq!(piece_matches(&file, &shifted), len == 0, "len {len}");
            let past_end = Piece { offset: 4, ..piece };
            assert_eq!(piece_matches(&file, &past_end), len == 0, "len {len}");
        }
    }
}
