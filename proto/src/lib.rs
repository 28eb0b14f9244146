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

#[cfg(any(test, feature = "proptest"))]
pub mod strategy;

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::strategy::*;
    use super::*;
    use proptest::prelude::*;

    /// A message survives encoding, alone and as a frame: the body is `encoded_len` bytes, the
    /// frame is its big-endian length then the body, and decoding either gives the message back.
    fn round_trip<M: Message + Default + PartialEq + Clone + Debug>(msg: &M) -> Result<(), TestCaseError> {
        let body = msg.encode_to_vec();
        prop_assert_eq!(body.len(), msg.encoded_len());
        prop_assert_eq!(&M::decode(body.as_slice())?, msg);
        let frame = encode_frame(msg);
        prop_assert_eq!(&frame[..FRAME_PREFIX_LEN], &(body.len() as u32).to_be_bytes()[..]);
        prop_assert_eq!(&frame[FRAME_PREFIX_LEN..], &body[..]);
        let decoded = decode_frame::<M>(&frame)?;
        prop_assert_eq!(decoded.as_ref(), Some(&(msg.clone(), frame.len())));
        Ok(())
    }

    macro_rules! every_message_round_trips {
        ($($name:ident: $strategy:expr;)*) => {
            proptest! {
                $(
                    #[test]
                    fn $name(msg in $strategy) {
                        round_trip(&msg)?;
                    }
                )*
            }
        };
    }

    // One property per message of damselfly.proto (25): a message added there needs a
    // strategy in `strategy.rs` and a line here.
    every_message_round_trips! {
        request_round_trips: request();
        warm_round_trips: warm();
        warm_status_round_trips: warm_status();
        enroll_request_round_trips: enroll_request();
        renew_request_round_trips: renew_request();
        enroll_response_round_trips: enroll_response();
        header_round_trips: header();
        register_round_trips: register();
        limits_round_trips: limits();
        waiting_round_trips: waiting();
        piece_done_round_trips: piece_done();
        piece_failed_round_trips: piece_failed();
        task_done_round_trips: task_done();
        leave_round_trips: leave();
        control_up_round_trips: control_up();
        piece_meta_round_trips: piece_meta();
        task_info_round_trips: task_info();
        pieces_round_trips: pieces();
        parent_round_trips: parent();
        assignment_round_trips: assignment();
        assign_round_trips: assign();
        complete_round_trips: complete();
        failed_round_trips: failed();
        control_down_round_trips: control_down();
        piece_request_round_trips: piece_request();
        ticket_round_trips: ticket();
        piece_response_round_trips: piece_response();
    }

    /// What a reader does with bytes as they arrive: append each chunk to a buffer and take
    /// every whole frame off its front. Returns the messages and the bytes left over.
    fn receive<M: Message + Default>(chunks: &[&[u8]]) -> Result<(Vec<M>, usize), FrameError> {
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((msg, used)) = decode_frame::<M>(&buf)? {
                out.push(msg);
                buf.drain(..used);
            }
        }
        Ok((out, buf.len()))
    }

    fn wire<M: Message>(msgs: &[M]) -> Vec<u8> {
        msgs.iter().flat_map(|m| encode_frame(m).to_vec()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Frames cut in two at every byte boundary decode to the same messages, in order.
        #[test]
        fn frames_split_at_every_boundary(msgs in proptest::collection::vec(control_up(), 1..4)) {
            let wire = wire(&msgs);
            for cut in 0..=wire.len() {
                let (got, left) = receive::<ControlUp>(&[&wire[..cut], &wire[cut..]])?;
                prop_assert_eq!(&got, &msgs, "cut at {}", cut);
                prop_assert_eq!(left, 0);
            }
        }

        /// Frames cut at any set of boundaries (down to one byte per chunk) decode the same.
        #[test]
        fn frames_split_anywhere(msgs in proptest::collection::vec(control_down(), 1..6),
                                 cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..32),
                                 bytewise in any::<bool>()) {
            let wire = wire(&msgs);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            if bytewise {
                at = (0..=wire.len()).collect();
            }
            at.extend([0, wire.len()]);
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            let (got, left) = receive::<ControlDown>(&chunks)?;
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(left, 0);
        }

        /// Every strict prefix of a frame is "incomplete", never an error or a wrong message;
        /// bytes after a whole frame are not consumed.
        #[test]
        fn truncated_frames_are_incomplete(msg in request(), extra in bytes()) {
            let frame = encode_frame(&msg);
            for cut in 0..frame.len() {
                prop_assert!(decode_frame::<Request>(&frame[..cut])?.is_none(), "cut at {}", cut);
            }
            let mut longer = frame.to_vec();
            longer.extend_from_slice(&extra);
            prop_assert_eq!(decode_frame::<Request>(&longer)?, Some((msg, frame.len())));
        }
    }

    proptest! {
        /// A prefix over the limit is refused from its 4 bytes alone, whatever follows (the
        /// reader must not wait for, or allocate, a body it will refuse); one within is accepted.
        #[test]
        fn oversized_frames_are_refused(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX, tail in bytes(),
                                        ok in 0..=MAX_FRAME_LEN as u32) {
            let prefix = len.to_be_bytes();
            prop_assert!(matches!(frame_len(prefix), Err(FrameError::TooLarge(n)) if n == len as usize));
            let mut buf = prefix.to_vec();
            buf.extend_from_slice(&tail);
            prop_assert!(matches!(decode_frame::<Request>(&buf), Err(FrameError::TooLarge(n)) if n == len as usize));
            prop_assert_eq!(frame_len(ok.to_be_bytes())?, ok as usize);
        }

        #[test]
        fn corrupted_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_frame::<ControlDown>(&bytes);
            let _ = decode_frame::<PieceResponse>(&bytes);
        }

        /// Any one byte of a valid frame changed: decoding may fail or give another message,
        /// but never panics and never reads past the frame.
        #[test]
        fn flipped_bytes_never_panic(msg in control_down(), at in any::<prop::sample::Index>(), flip in 1..=255u8) {
            let mut frame = encode_frame(&msg).to_vec();
            let i = at.index(frame.len());
            frame[i] ^= flip;
            if let Ok(Some((_, used))) = decode_frame::<ControlDown>(&frame) {
                prop_assert!(used <= frame.len());
            }
        }
    }

    #[test]
    fn the_largest_frame_is_accepted_and_one_more_byte_is_not() {
        assert_eq!(frame_len((MAX_FRAME_LEN as u32).to_be_bytes()).unwrap(), MAX_FRAME_LEN);
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(frame_len(prefix), Err(FrameError::TooLarge(n)) if n == MAX_FRAME_LEN + 1));
    }
}
