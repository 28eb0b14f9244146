//! Piece arithmetic: how a file is cut into pieces.
//!
//! The rule: a file of `len` bytes is cut into pieces of
//! `clamp(next_power_of_two(ceil(len / 256)), 1 MiB, 16 MiB)` bytes, the last piece holding the
//! remainder. Files up to 256 MiB therefore get 1 MiB pieces (small enough that a swarm pipelines
//! even a modest layer, large enough that per-piece overhead stays under a percent), larger files
//! keep about 128-256 pieces until the 16 MiB cap (4 GiB and beyond). A file whose length the
//! origin does not announce uses [`UNKNOWN_LENGTH_PIECE_SIZE`]. An empty file has no pieces.

/// Smallest piece size.
pub const MIN_PIECE_SIZE: u32 = 1 << 20;
/// Largest piece size.
pub const MAX_PIECE_SIZE: u32 = 16 << 20;
/// Piece size used when the origin sends no `Content-Length`.
pub const UNKNOWN_LENGTH_PIECE_SIZE: u32 = 4 << 20;
/// Target number of pieces a file is cut into (before clamping).
const TARGET_PIECES: u64 = 256;

/// Piece size for a file of `len` bytes (`None`: length not known in advance).
pub fn piece_size(len: Option<u64>) -> u32 {
    let Some(len) = len else {
        return UNKNOWN_LENGTH_PIECE_SIZE;
    };
    let per_piece = len.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    per_piece.clamp(u64::from(MIN_PIECE_SIZE), u64::from(MAX_PIECE_SIZE)) as u32
}

/// Number of pieces of a file of `len` bytes cut in pieces of `piece_size` bytes.
pub fn piece_count(len: u64, piece_size: u32) -> u32 {
    let n = len.div_ceil(u64::from(piece_size.max(1)));
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Offset and length of piece `number` of a file of `len` bytes, or `None` past the end.
pub fn piece_range(len: u64, piece_size: u32, number: u32) -> Option<(u64, u32)> {
    let offset = u64::from(number) * u64::from(piece_size);
    if offset >= len {
        return None;
    }
    let size = (len - offset).min(u64::from(piece_size)) as u32;
    Some((offset, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn piece_size_rule() {
        assert_eq!(piece_size(Some(0)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(1)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(256 * MIB)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(256 * MIB + 1)), 2 << 20);
        assert_eq!(piece_size(Some(1 << 30)), 4 << 20);
        assert_eq!(piece_size(Some(100 << 30)), MAX_PIECE_SIZE);
        assert_eq!(piece_size(None), UNKNOWN_LENGTH_PIECE_SIZE);
    }

    #[test]
    fn interesting_sizes() {
        let p = MIN_PIECE_SIZE;
        let pu = u64::from(p);
        for (len, count) in [(0, 0), (1, 1), (pu - 1, 1), (pu, 1), (pu + 1, 2), (3 * pu + 7, 4)] {
            assert_eq!(piece_count(len, p), count, "len {len}");
            let total: u64 = (0..count).map(|n| u64::from(piece_range(len, p, n).expect("in range").1)).sum();
            assert_eq!(total, len);
            assert_eq!(piece_range(len, p, count), None);
        }
    }
}
