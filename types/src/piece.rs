//! Piece arithmetic: how a file is cut into pieces.
//!
//! The rule: a file of `len` bytes is cut into pieces of
//! `clamp(next_power_of_two(ceil(len / 512)), 256 KiB, 16 MiB)` bytes, the last piece holding
//! the remainder. Files up to 128 MiB therefore get 256 KiB pieces, 256 MiB 512 KiB, 1 GiB 2 MiB;
//! larger files keep about 256-512 pieces until the 16 MiB cap (8 GiB and beyond). Small pieces
//! let a swarm pipeline: a host passes a piece on only once it holds all of it, so the piece size
//! is the delay per hop, the ramp at the start and the length of the tail. Measured on 8 hosts
//! at 100 Mbit/s with a 96 MiB file, p50 over the bound, interleaved runs of the same build:
//! 512 KiB pieces 1.18-1.23, 256 KiB 1.13-1.18, 128 KiB 1.13-1.14. 128 KiB costs CPU where CPU is
//! short: on 16 hosts (files of 16-64 MiB, this 2-core machine) 1.54-1.61 against 1.33-1.38 with
//! 256 KiB, so 256 KiB stays the floor. A file whose length the origin does not announce uses
//! [`UNKNOWN_LENGTH_PIECE_SIZE`]. An empty file has no pieces.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Smallest piece size.
pub const MIN_PIECE_SIZE: u32 = 256 << 10;
/// Largest piece size.
pub const MAX_PIECE_SIZE: u32 = 16 << 20;
/// Piece size used when the origin sends no `Content-Length`.
pub const UNKNOWN_LENGTH_PIECE_SIZE: u32 = 4 << 20;
/// Target number of pieces a file is cut into (before clamping).
const TARGET_PIECES: u64 = 512;

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

/// One piece of a file as every node records it: where it is and the sha256 of its bytes (as the
/// supernode computed it when the piece came from the origin; peers check every piece against
/// it). The scheduler's piece table, the stores' piece tables and the RocksDB piece rows all hold
/// this record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Piece {
    /// Byte offset of the piece in the file.
    pub offset: u64,
    /// Length of the piece in bytes.
    pub size: u32,
    /// sha256 of the piece's bytes.
    pub sha256: [u8; 32],
}

impl Piece {
    /// The piece of `data` at `offset`, hashed.
    pub fn of(offset: u64, data: &[u8]) -> Self {
        Self { offset, size: data.len() as u32, sha256: Sha256::digest(data).into() }
    }

    /// The offset just past the piece.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.size)
    }
}

/// Where the bytes of a piece this node holds live (what the upload server reads).
#[derive(Clone, Debug)]
pub struct PieceLocation {
    /// The task's content file.
    pub file: std::sync::Arc<std::fs::File>,
    /// Offset of the piece in the file.
    pub offset: u64,
    /// Length of the piece.
    pub len: u32,
}

/// What a node can serve: its store (the upload server asks it for every requested piece).
pub trait PieceSource: Send + Sync + 'static {
    /// The piece's location when this node holds the piece (verified and complete).
    fn locate(&self, task: &crate::id::TaskId, piece: u32) -> Option<PieceLocation>;
}

/// A piece cut from the body: its record and its bytes.
pub struct CutPiece {
    /// Piece number.
    pub number: u32,
    /// Where it is and its sha256.
    pub piece: Piece,
    /// The bytes.
    pub data: Bytes,
}

/// Cuts a byte stream into pieces of a fixed size, hashing each piece and the whole.
pub struct PieceCutter {
    piece_size: usize,
    buf: BytesMut,
    total: u64,
    count: u32,
    whole: Sha256,
}

impl PieceCutter {
    /// A cutter for pieces of `piece_size` bytes.
    pub fn new(piece_size: u32) -> Self {
        Self { piece_size: piece_size as usize, buf: BytesMut::new(), total: 0, count: 0, whole: Sha256::new() }
    }

    /// Feeds the next bytes of the stream; returns the pieces they completed.
    pub fn push(&mut self, mut chunk: Bytes) -> Vec<CutPiece> {
        self.whole.update(&chunk);
        self.total += chunk.len() as u64;
        let mut out = Vec::new();
        while !chunk.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve(self.piece_size);
            }
            let take = (self.piece_size - self.buf.len()).min(chunk.len());
            self.buf.extend_from_slice(&chunk.split_to(take));
            if self.buf.len() == self.piece_size {
                out.push(self.cut());
            }
        }
        out
    }

    /// The last, partial piece at the end of the stream.
    pub fn finish(&mut self) -> Option<CutPiece> {
        (!self.buf.is_empty()).then(|| self.cut())
    }

    /// Bytes fed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Pieces cut so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// sha256 of every byte fed so far.
    pub fn whole_digest(&self) -> [u8; 32] {
        self.whole.clone().finalize().into()
    }

    fn cut(&mut self) -> CutPiece {
        let data = self.buf.split().freeze();
        let offset = u64::from(self.count) * self.piece_size as u64;
        let piece = CutPiece { number: self.count, piece: Piece::of(offset, &data), data };
        self.count += 1;
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn piece_size_rule() {
        assert_eq!(piece_size(Some(0)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(1)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(96 * MIB)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(128 * MIB)), MIN_PIECE_SIZE);
        assert_eq!(piece_size(Some(128 * MIB + 1)), 512 << 10);
        assert_eq!(piece_size(Some(256 * MIB)), 512 << 10);
        assert_eq!(piece_size(Some(256 * MIB + 1)), 1 << 20);
        assert_eq!(piece_size(Some(1 << 30)), 2 << 20);
        assert_eq!(piece_size(Some(8 << 30)), MAX_PIECE_SIZE);
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

    #[test]
    fn cutter_handles_interesting_sizes_and_chunkings() {
        let p = 1024usize;
        for len in [0, 1, p - 1, p, p + 1, 3 * p + 5] {
            for chunk in [1, 7, p - 1, p, p + 3, 10 * p] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut c = PieceCutter::new(p as u32);
                let mut pieces = Vec::new();
                for part in data.chunks(chunk) {
                    pieces.extend(c.push(Bytes::copy_from_slice(part)));
                }
                pieces.extend(c.finish());
                assert_eq!(pieces.len(), len.div_ceil(p), "len {len} chunk {chunk}");
                let mut joined = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    assert_eq!(piece.number as usize, i);
                    assert_eq!(piece.piece.offset as usize, i * p);
                    assert_eq!(piece.piece.size as usize, piece.data.len());
                    assert_eq!(piece.piece.sha256, <[u8; 32]>::from(Sha256::digest(&piece.data)));
                    joined.extend_from_slice(&piece.data);
                }
                assert_eq!(joined, data);
                assert_eq!(c.total as usize, len);
            }
        }
    }
}
