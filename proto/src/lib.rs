//! The Damselfly wire protocol (`damselfly.v1`): protobuf messages compiled by prost from
//! `proto/damselfly.proto`, and the frame codec. This crate does no I/O.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of one protobuf message.
//! Piece bytes are never framed: they follow a `PieceResponse` raw on the stream.

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/damselfly.v1.rs"));
}
pub use generated::*;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// ALPN protocol id of this protocol version.
pub const ALPN: &[u8] = b"damselfly/1";

/// Largest frame accepted. Control frames are small; a piece table of 10,000 pieces is < 1 MiB.
pub const MAX_FRAME_LEN: usize = 4 << 20;

/// Length of the frame prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`]: a bug or a hostile peer.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Encodes `msg` as one frame.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(FRAME_PREFIX_LEN + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    msg.encode_raw(&mut buf);
    buf.freeze()
}

/// Reads the body length from a frame prefix, refusing oversized frames.
pub fn frame_len(prefix: [u8; FRAME_PREFIX_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one complete frame from the start of `buf`; returns the message and the bytes
/// consumed, or `Ok(None)` when `buf` does not hold a whole frame yet.
pub fn decode_frame<M: Message + Default>(buf: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
    let Some(prefix) = buf.get(..FRAME_PREFIX_LEN) else {
        return Ok(None);
    };
    let mut p = [0u8; FRAME_PREFIX_LEN];
    p.copy_from_slice(prefix);
    let len = frame_len(p)?;
    let Some(body) = buf.get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((M::decode(body)?, FRAME_PREFIX_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn register(task: String, have: Vec<u32>, hdr: Vec<u8>) -> Request {
        Request {
            kind: Some(request::Kind::Control(ControlUp {
                kind: Some(control_up::Kind::Register(Register {
                    task_id: task,
                    url: "http://example.com/x".into(),
                    headers: vec![Header { name: "authorization".into(), value: hdr }],
                    have,
                    ..Default::default()
                })),
            })),
        }
    }

    proptest! {
        #[test]
        fn frames_round_trip(task in ".{0,80}", have in proptest::collection::vec(any::<u32>(), 0..200),
                             hdr in proptest::collection::vec(any::<u8>(), 0..64)) {
            let msg = register(task, have, hdr);
            let frame = encode_frame(&msg);
            let (back, used) = decode_frame::<Request>(&frame).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, frame.len());
            // Every strict prefix is "incomplete", never an error or a wrong message.
            for cut in 0..frame.len() {
                prop_assert!(decode_frame::<Request>(&frame[..cut]).unwrap().is_none());
            }
        }

        #[test]
        fn corrupted_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<ControlDown>(&bytes);
            let _ = decode_frame::<PieceResponse>(&bytes);
        }
    }

    #[test]
    fn oversized_frame_is_refused() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(frame_len(prefix), Err(FrameError::TooLarge(_))));
        let mut buf = prefix.to_vec();
        buf.extend_from_slice(&[0; 16]);
        assert!(decode_frame::<Request>(&buf).is_err());
    }
}
