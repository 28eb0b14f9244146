//! The scheduler's messages as the daemon reads them off its control stream: the inverse of
//! `supernode::control::to_proto` for the parts that are more than a field read (piece table
//! entries and parents). The tests check the round trip from the supernode's scheduler types.

use damselfly_proto as pb;

use super::Source;
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use damselfly_proto::strategy;
    use damselfly_scheduler::{Assignment, Down, Parent, PieceMeta};
    use damselfly_types::id::PeerId;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use supernode::control::to_proto;

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
    }
}
