//! The control stream as the daemon speaks it: the scheduler's messages read off it (the
//! inverse of `supernode::control::to_proto` for the parts that are more than a field read:
//! piece table entries, parents, failures) and the reports written up (read back by
//! `supernode::control::from_proto`). The tests check both round trips against the supernode's
//! own translation.

use damselfly_proto as pb;

use super::{Source, SwarmError, TaskFailure};
use crate::storage::Piece;

/// A piece table entry, or `None` when its sha256 is not 32 bytes (the entry is ignored, and
/// the piece is never fetched against a digest that cannot match).
pub(super) fn piece_from_proto(m: pb::PieceMeta) -> Option<(u32, Piece)> {
    let sha256: [u8; 32] = m.sha256.as_slice().try_into().ok()?;
    Some((m.number, Piece { offset: m.offset, size: m.size, sha256 }))
}

/// Where to fetch an assigned piece: no parent or an empty peer id is the supernode; a peer's
/// address that does not parse is `None` (the fetch then fails as a transfer failure naming it).
pub(super) fn source_from_proto(parent: Option<pb::Parent>) -> Source {
    let parent = parent.unwrap_or_default();
    if parent.peer_id.is_empty() {
        Source { peer: None, addr: None }
    } else {
        Source { peer: Some(parent.peer_id), addr: parent.addr.parse().ok() }
    }
}

/// What a `Failed` from the supernode means for this host's download.
pub(super) fn failure_from_proto(f: pb::Failed) -> SwarmError {
    match f.status {
        // The origin failed for the supernode (a flapping origin): it may answer this host's
        // own request.
        500.. => SwarmError::Unavailable(format!("supernode: {}", f.message)),
        // The origin refused with a 4xx: final, the daemon would get the same.
        1.. => SwarmError::Failed(TaskFailure {
            origin_status: Some(u16::try_from(f.status).unwrap_or(u16::MAX)),
            message: f.message,
        }),
        // The supernode's origin policy refused it: fetching it here would get around the
        // policy, so this is final too.
        0 if f.refused => SwarmError::Failed(TaskFailure { origin_status: None, message: f.message }),
        // The supernode could not deliver (origin unreachable from it, bad content, refused
        // registration): the origin itself may still serve this host.
        0 => SwarmError::Unavailable(format!("supernode: {}", f.message)),
    }
}

/// The report that a piece is here and verified.
pub(super) fn piece_done(piece: u32) -> pb::control_up::Kind {
    pb::control_up::Kind::PieceDone(pb::PieceDone { piece })
}

/// The report that a piece could not be fetched from `source` (no peer: the supernode).
pub(super) fn piece_failed(
    piece: u32,
    source: &Source,
    reason: pb::FailReason,
    detail: String,
) -> pb::control_up::Kind {
    pb::control_up::Kind::PieceFailed(pb::PieceFailed {
        piece,
        parent_id: source.peer.clone().unwrap_or_default(),
        reason: reason as i32,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use damselfly_proto::strategy;
    use damselfly_scheduler::{Assignment, Down, Parent, PieceMeta};
    use damselfly_scheduler::{Event, FailReason};
    use damselfly_types::id::PeerId;
    use damselfly_types::id::TaskId;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use supernode::control::{from_proto, to_proto, Up};

    use super::*;

    /// Peer ids are never empty (enrollment checks them; empty on the wire means the supernode).
    /// Addresses are an IP and a port, as the supernode takes them from the connection: the wire
    /// carries `ip:port`, so an IPv6 flow label would not travel (proptest found that).
    fn parent() -> impl Strategy<Value = Parent> {
        prop_oneof![
            Just(Parent::Supernode),
            (".{1,40}", any::<IpAddr>(), any::<u16>())
                .prop_map(|(id, ip, port)| Parent::Peer { id: PeerId::new(id), addr: SocketAddr::new(ip, port) }),
        ]
    }

    fn down() -> impl Strategy<Value = Down> {
        let piece = (any::<u32>(), any::<u64>(), any::<u32>(), any::<[u8; 32]>())
            .prop_map(|(number, offset, size, sha256)| PieceMeta { number, piece: Piece { offset, size, sha256 } });
        let assignment = (any::<u32>(), parent()).prop_map(|(piece, parent)| Assignment { piece, parent });
        prop_oneof![
            (option::of(any::<u64>()), any::<u32>())
                .prop_map(|(content_length, piece_size)| Down::TaskInfo { content_length, piece_size }),
            vec(piece, 0..16).prop_map(Down::Pieces),
            vec(assignment, 0..16).prop_map(Down::Assign),
            (any::<u32>(), any::<u64>())
                .prop_map(|(total_pieces, content_length)| Down::Complete { total_pieces, content_length }),
            // An origin status is never 0: on the wire 0 means "no status".
            (option::of(1..=u16::MAX), any::<bool>(), ".{0,40}").prop_map(|(status, refused, message)| Down::Failed {
                status,
                refused,
                message
            }),
        ]
    }

    /// What the daemon takes from a control message, in the scheduler's terms: the pieces and
    /// parents through the functions above, the other fields as `Conductor::on_down` reads them.
    fn read_back(msg: pb::ControlDown) -> Option<Down> {
        use pb::control_down::Kind;
        Some(match msg.kind? {
            Kind::TaskInfo(i) => Down::TaskInfo { content_length: i.content_length, piece_size: i.piece_size },
            Kind::Pieces(p) => Down::Pieces(
                p.pieces
                    .into_iter()
                    .filter_map(piece_from_proto)
                    .map(|(number, piece)| PieceMeta { number, piece })
                    .collect(),
            ),
            Kind::Assign(a) => Down::Assign(
                a.assignments
                    .into_iter()
                    .map(|a| {
                        let parent = match source_from_proto(a.parent) {
                            Source { peer: None, .. } => Some(Parent::Supernode),
                            Source { peer: Some(id), addr } => Some(Parent::Peer { id: PeerId::new(id), addr: addr? }),
                        };
                        parent.map(|parent| Assignment { piece: a.piece, parent })
                    })
                    .collect::<Option<_>>()?,
            ),
            Kind::Complete(c) => Down::Complete { total_pieces: c.total_pieces, content_length: c.content_length },
            Kind::Failed(f) => Down::Failed {
                status: (f.status != 0).then_some(f.status as u16),
                refused: f.refused,
                message: f.message,
            },
            // Not scheduler messages: the shell sends them on its own.
            Kind::Ticket(_) | Kind::Waiting(_) => return None,
        })
    }

    proptest! {
            /// Whatever the scheduler says reaches the daemon unchanged: `to_proto`, then the
            /// frame codec, then the daemon's reading give back the scheduler's message.
            #[test]
            fn scheduler_messages_round_trip(down in down()) {
                let frame = pb::encode_frame(&to_proto(down.clone()));
                let (msg, _) = pb::decode_frame::<pb::ControlDown>(&frame)?.ok_or_else(|| TestCaseError::fail("incomplete"))?;
                prop_assert_eq!(read_back(msg), Some(down));
            }

            /// Any piece table entry or parent the wire can carry: an entry is kept exactly when its
            /// sha256 has 32 bytes, and only an empty peer id means the supernode.
            #[test]
            fn daemon_reads_any_entry_and_parent(m in strategy::piece_meta(), p in option::of(strategy::parent())) {
                let expected = (m.sha256.len() == 32).then(|| (m.number, m.offset, m.size, m.sha256.clone()));
                let got = piece_from_proto(m).map(|(n, i)| (n, i.offset, i.size, i.sha256.to_vec()));
                prop_assert_eq!(got, expected);
                let source = source_from_proto(p.clone());
                let p = p.unwrap_or_default();
                prop_assert_eq!(source.peer.is_none(), p.peer_id.is_empty());
                if let Some(peer) = source.peer {
                    prop_assert_eq!(peer, p.peer_id);
                    prop_assert_eq!(source.addr, p.addr.parse().ok());
                }
            }

            /// A failure the scheduler sends keeps its status and message, and is final exactly
            /// when the origin refused with a 4xx or the supernode's policy refused the URL.
            #[test]
            fn failures_keep_status_and_decide_finality(status in option::of(1..=u16::MAX), refused in any::<bool>(), message in ".{0,40}") {
                let down = Down::Failed { status, refused, message: message.clone() };
                let Some(pb::control_down::Kind::Failed(f)) = to_proto(down).kind else {
                    return Err(TestCaseError::fail("not a Failed"));
                };
                match (failure_from_proto(f), status) {
                    (SwarmError::Unavailable(m), Some(500..) ) => prop_assert_eq!(m, format!("supernode: {message}")),
                    (SwarmError::Failed(t), Some(s)) => {
                        prop_assert!(s < 500);
                        prop_assert_eq!(t.origin_status, Some(s));
                        prop_assert_eq!(t.message, message);
                    }
                    (SwarmError::Failed(t), None) => {
                        prop_assert!(refused);
                        prop_assert_eq!((t.origin_status, t.message), (None, message));
                    }
                    (SwarmError::Unavailable(m), None) => {
                        prop_assert!(!refused);
                        prop_assert_eq!(m, format!("supernode: {message}"));
                    }
                    (other, _) => return Err(TestCaseError::fail(format!("{other:?} for status {status:?}, refused {refused}"))),
                }
            }

            /// What the daemon reports reaches the scheduler as the event it means: the piece, the
            /// parent it blames (none for the supernode) and the weight of the failure.
            #[test]
            fn reports_reach_the_scheduler(piece in any::<u32>(), parent in option::of(".{1,40}"), digest in any::<bool>(), detail in ".{0,40}") {
                let (task, peer) = (TaskId::new("t1"), PeerId::new("me"));
                let up = |kind| pb::ControlUp { kind: Some(kind) };
                prop_assert_eq!(
                    from_proto(&task, &peer, up(piece_done(piece))),
                    Up::Report(Event::PieceFinished { task: task.clone(), peer: peer.clone(), piece })
                );
                let source = Source { peer: parent.clone(), addr: None };
                let (wire_reason, reason) =
                    if digest { (pb::FailReason::Digest, FailReason::Digest) } else { (pb::FailReason::Transfer, FailReason::Transfer) };
                prop_assert_eq!(
                    from_proto(&task, &peer, up(piece_failed(piece, &source, wire_reason, detail))),
                    Up::Report(Event::PieceFailed { task, peer, piece, parent: parent.map(PeerId::new), reason })
                );
            }
    }
}
