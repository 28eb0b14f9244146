//! The serving side of piece transfer, shared by the supernode and every dfdaemon.
//!
//! A piece is served only against a ticket the supernode issued for the task and the
//! requester's certificate ([`crate::ticket`]): holding a cluster certificate and knowing a
//! digest is not enough to get a private blob.
//!
//! A `PieceRequest` names a task and a piece; the server answers with a `PieceResponse` frame
//! and, when it holds the piece, the piece's bytes raw on the stream. Bytes are read from the
//! task's content file in chunks of at most [`UPLOAD_CHUNK`], so an upload holds one chunk of
//! memory whatever the piece size. Under an upload limit ([`crate::rate`]) each chunk goes out
//! in steps of [`crate::rate::RATE_CHUNK`], each taken from the limit in turn with the other
//! tasks' uploads before it is written, so what leaves the node is shaped, not just counted.

use std::time::SystemTime;

use damselfly_proto::{PieceError, PieceRequest, PieceResponse};
use quinn::SendStream;

use crate::rate::RateLimiter;
use crate::ticket::TicketVerifier;
use crate::transport::{write_frame, TransportError};
use damselfly_types::id::TaskId;

/// Largest read per step of an upload.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// Where a held piece lives and what can serve pieces: defined beside the piece record so that
/// the store implements them without depending on the network crate.
pub use damselfly_types::piece::{PieceLocation, PieceSource};

/// Who asks for a piece, and what checks their permission.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The peer id of the certificate the request came with.
    pub peer_id: &'a str,
    /// Checks the request's ticket against the cluster CA.
    pub tickets: &'a TicketVerifier,
}

/// What became of a piece request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The piece was sent: this many bytes.
    Bytes(u64),
    /// This node does not hold the piece (or could not read it all).
    NotHeld,
    /// The requester's ticket was missing or invalid: nothing was sent.
    Refused,
}

/// Serves `req` on `send`, only against a valid ticket ([`crate::ticket`]) for the requester,
/// within `limit` (shared by every upload of this node, fair between tasks).
pub async fn serve_piece(
    source: &dyn PieceSource,
    req: &PieceRequest,
    requester: Requester<'_>,
    send: &mut SendStream,
    limit: &RateLimiter,
) -> Result<Served, TransportError> {
    if let Err(e) = requester.tickets.verify(req.ticket.as_ref(), &req.task_id, requester.peer_id, SystemTime::now()) {
        tracing::debug!(peer = requester.peer_id, task = %req.task_id, error = %e, "piece request refused");
        let resp =
            PieceResponse { error: PieceError::Unauthenticated as i32, message: format!("refused: {e}"), size: 0 };
        write_frame(send, &resp).await?;
        let _ = send.finish();
        return Ok(Served::Refused);
    }
    let task = TaskId::new(req.task_id.clone());
    let located = if TaskId::is_valid(task.as_str()) { source.locate(&task, req.piece) } else { None };
    let Some(loc) = located else {
        let resp = PieceResponse {
            error: PieceError::NotFound as i32,
            message: format!("piece {} of task {} is not held here", req.piece, req.task_id),
            size: 0,
        };
        write_frame(send, &resp).await?;
        let _ = send.finish();
        return Ok(Served::NotHeld);
    };
    write_frame(send, &PieceResponse { error: PieceError::None as i32, message: String::new(), size: loc.len }).await?;
    let flow = limit.flow(task.as_str());
    let mut sent = 0u64;
    while sent < u64::from(loc.len) {
        let n = (u64::from(loc.len) - sent).min(UPLOAD_CHUNK as u64) as usize;
        let chunk = damselfly_store::read_exact_at(loc.file.clone(), loc.offset + sent, n).await;
        match chunk {
            Ok(mut bytes) => {
                while !bytes.is_empty() {
                    let step = bytes.split_to(flow.chunk(bytes.len()));
                    flow.take(step.len() as u64).await;
                    send.write_chunk(step).await?;
                }
            }
            Err(e) => {
                // The content file is shorter than recorded or unreadable: break the stream so
                // the receiver reports a transfer failure instead of waiting.
                tracing::warn!(task = %task, piece = req.piece, error = %e, "cannot read piece for upload");
                let _ = send.reset(1u32.into());
                return Ok(Served::NotHeld);
            }
        }
        sent += n as u64;
    }
    let _ = send.finish();
    Ok(Served::Bytes(sent))
}
