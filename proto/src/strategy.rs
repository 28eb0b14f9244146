//! proptest strategies for every message of the protocol (feature `proptest`, and this crate's
//! own tests).
//!
//! Each strategy draws every field from its whole domain: strings of any Unicode, bytes of any
//! value, integers over their full range, enum fields as any `i32` (values this version does not
//! know must survive a round trip too), and each `oneof` as any of its cases or none. Lengths
//! are kept small so that a case stays cheap; [`MAX_LIST`] bounds repeated fields.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::*;

/// Longest repeated field drawn.
pub const MAX_LIST: usize = 16;

/// Any string (any Unicode scalar values) of up to 40 characters.
pub fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

/// Any bytes, up to 64 of them.
pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

/// An enum field as prost stores it: a known value most of the time, otherwise any `i32`.
fn enum_field(known: &'static [i32]) -> impl Strategy<Value = i32> {
    prop_oneof![4 => proptest::sample::select(known), 1 => any::<i32>()]
}

/// Any [`FailReason`] value, unknown ones included.
pub fn fail_reason() -> impl Strategy<Value = i32> {
    enum_field(&[FailReason::Unspecified as i32, FailReason::Digest as i32, FailReason::Transfer as i32])
}

/// Any [`PieceError`] value, unknown ones included.
pub fn piece_error() -> impl Strategy<Value = i32> {
    enum_field(&[
        PieceError::None as i32,
        PieceError::NotFound as i32,
        PieceError::Busy as i32,
        PieceError::Unauthenticated as i32,
        PieceError::Internal as i32,
    ])
}

/// Any [`Header`].
pub fn header() -> impl Strategy<Value = Header> {
    (text(), bytes()).prop_map(|(name, value)| Header { name, value })
}

/// Any [`Warm`].
pub fn warm() -> impl Strategy<Value = Warm> {
    (text(), text(), vec(header(), 0..4)).prop_map(|(url, digest, headers)| Warm { url, digest, headers })
}

/// Any [`WarmStatus`].
pub fn warm_status() -> impl Strategy<Value = WarmStatus> {
    (any::<u64>(), any::<u64>(), any::<bool>(), text(), any::<u32>())
        .prop_map(|(bytes, total, done, error, origin_status)| WarmStatus { bytes, total, done, error, origin_status })
}

/// Any [`EnrollRequest`].
pub fn enroll_request() -> impl Strategy<Value = EnrollRequest> {
    (bytes(), text(), text(), text()).prop_map(|(csr_der, hostname, join_secret, peer_id)| EnrollRequest {
        csr_der,
        hostname,
        join_secret,
        peer_id,
    })
}

/// Any [`RenewRequest`].
pub fn renew_request() -> impl Strategy<Value = RenewRequest> {
    bytes().prop_map(|csr_der| RenewRequest { csr_der })
}

/// Any [`EnrollResponse`].
pub fn enroll_response() -> impl Strategy<Value = EnrollResponse> {
    (text(), bytes(), bytes(), text()).prop_map(|(peer_id, cert_der, ca_der, error)| EnrollResponse {
        peer_id,
        cert_der,
        ca_der,
        error,
    })
}

/// Any [`Limits`].
pub fn limits() -> impl Strategy<Value = Limits> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(download_rate, upload_rate, origin_rate)| Limits {
        download_rate,
        upload_rate,
        origin_rate,
    })
}

/// Any [`Register`], with or without its limits and its table's shape.
pub fn register() -> impl Strategy<Value = Register> {
    (
        (text(), text(), text(), vec(header(), 0..4)),
        (text(), text(), vec(any::<u32>(), 0..MAX_LIST), any::<bool>(), option::of(limits())),
        (any::<u32>(), option::of(any::<u64>()), text()),
    )
        .prop_map(
            |(
                (task_id, url, digest, headers),
                (peer_id, peer_addr, have, announce_only, limits),
                (piece_size, content_length, group),
            )| {
                Register {
                    task_id,
                    url,
                    digest,
                    headers,
                    peer_id,
                    peer_addr,
                    have,
                    announce_only,
                    limits,
                    piece_size,
                    content_length,
                    group,
                }
            },
        )
}

/// Any [`PieceDone`].
pub fn piece_done() -> impl Strategy<Value = PieceDone> {
    any::<u32>().prop_map(|piece| PieceDone { piece })
}

/// Any [`PieceFailed`].
pub fn piece_failed() -> impl Strategy<Value = PieceFailed> {
    (any::<u32>(), text(), fail_reason(), text()).prop_map(|(piece, parent_id, reason, detail)| PieceFailed {
        piece,
        parent_id,
        reason,
        detail,
    })
}

/// The one [`TaskDone`].
pub fn task_done() -> impl Strategy<Value = TaskDone> {
    Just(TaskDone {})
}

/// The one [`Leave`].
pub fn leave() -> impl Strategy<Value = Leave> {
    Just(Leave {})
}

/// Any [`ControlUp`], each case of its `oneof` or none.
pub fn control_up() -> impl Strategy<Value = ControlUp> {
    use control_up::Kind;
    let kind = prop_oneof![
        register().prop_map(Kind::Register),
        piece_done().prop_map(Kind::PieceDone),
        piece_failed().prop_map(Kind::PieceFailed),
        task_done().prop_map(Kind::Done),
        leave().prop_map(Kind::Leave),
    ];
    option::of(kind).prop_map(|kind| ControlUp { kind })
}

/// Any [`PieceMeta`] (its sha256 of any length, not only 32 bytes).
pub fn piece_meta() -> impl Strategy<Value = PieceMeta> {
    (any::<u32>(), any::<u64>(), any::<u32>(), prop_oneof![vec(any::<u8>(), 32), bytes()])
        .prop_map(|(number, offset, size, sha256)| PieceMeta { number, offset, size, sha256 })
}

/// Any [`TaskInfo`].
pub fn task_info() -> impl Strategy<Value = TaskInfo> {
    (option::of(any::<u64>()), any::<u32>())
        .prop_map(|(content_length, piece_size)| TaskInfo { content_length, piece_size })
}

/// Any [`Pieces`].
pub fn pieces() -> impl Strategy<Value = Pieces> {
    vec(piece_meta(), 0..MAX_LIST).prop_map(|pieces| Pieces { pieces })
}

/// Any [`Parent`].
pub fn parent() -> impl Strategy<Value = Parent> {
    (text(), text()).prop_map(|(peer_id, addr)| Parent { peer_id, addr })
}

/// Any [`Assignment`], with or without its parent.
pub fn assignment() -> impl Strategy<Value = Assignment> {
    (any::<u32>(), option::of(parent())).prop_map(|(piece, parent)| Assignment { piece, parent })
}

/// Any [`Assign`].
pub fn assign() -> impl Strategy<Value = Assign> {
    vec(assignment(), 0..MAX_LIST).prop_map(|assignments| Assign { assignments })
}

/// Any [`Complete`].
pub fn complete() -> impl Strategy<Value = Complete> {
    (any::<u32>(), any::<u64>()).prop_map(|(total_pieces, content_length)| Complete { total_pieces, content_length })
}

/// Any [`Failed`].
pub fn failed() -> impl Strategy<Value = Failed> {
    (any::<u32>(), text(), any::<bool>()).prop_map(|(status, message, refused)| Failed { status, message, refused })
}

/// Any [`Ticket`].
pub fn ticket() -> impl Strategy<Value = Ticket> {
    (text(), text(), any::<u64>(), bytes()).prop_map(|(task_id, peer_id, expires_unix_ms, signature)| Ticket {
        task_id,
        peer_id,
        expires_unix_ms,
        signature,
    })
}

/// Any [`Waiting`].
pub fn waiting() -> impl Strategy<Value = Waiting> {
    any::<bool>().prop_map(|queued| Waiting { queued })
}

/// Any [`ControlDown`], each case of its `oneof` or none.
pub fn control_down() -> impl Strategy<Value = ControlDown> {
    use control_down::Kind;
    let kind = prop_oneof![
        task_info().prop_map(Kind::TaskInfo),
        pieces().prop_map(Kind::Pieces),
        assign().prop_map(Kind::Assign),
        complete().prop_map(Kind::Complete),
        failed().prop_map(Kind::Failed),
        ticket().prop_map(Kind::Ticket),
        waiting().prop_map(Kind::Waiting),
    ];
    option::of(kind).prop_map(|kind| ControlDown { kind })
}

/// Any [`PieceRequest`], with or without its ticket.
pub fn piece_request() -> impl Strategy<Value = PieceRequest> {
    (text(), any::<u32>(), option::of(ticket())).prop_map(|(task_id, piece, ticket)| PieceRequest {
        task_id,
        piece,
        ticket,
    })
}

/// Any [`PieceResponse`].
pub fn piece_response() -> impl Strategy<Value = PieceResponse> {
    (piece_error(), text(), any::<u32>()).prop_map(|(error, message, size)| PieceResponse { error, message, size })
}

/// Any [`Request`], each case of its `oneof` or none.
pub fn request() -> impl Strategy<Value = Request> {
    use request::Kind;
    let kind = prop_oneof![
        enroll_request().prop_map(Kind::Enroll),
        control_up().prop_map(Kind::Control),
        piece_request().prop_map(Kind::Piece),
        renew_request().prop_map(Kind::Renew),
        warm().prop_map(Kind::Warm),
    ];
    option::of(kind).prop_map(|kind| Request { kind })
}
