//! A peer's control stream for one task: registration (checked against the peer's
//! certificate, admitted by the origin's verdict on its credentials), its ticket, the
//! scheduler's messages down and the peer's reports up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use damselfly_net::transport::{read_frame, write_frame, TransportError};
use damselfly_proto as pb;
use damselfly_types::id::{PeerId, Sha256Digest, TaskId};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::admission::Refusal;
use crate::origin::OriginRequest;
use crate::quic::{Client, ConnPeers};
use crate::{Shared, ToPeer, CONTROL_QUEUE};
use damselfly_scheduler::{Down, Event, FailReason, Parent};

/// Checks a registration before anything is fetched for it: a well-formed request, a URL the
/// origin policy allows (refused: final, the peer must not fetch it itself either), the peer id
/// of the peer's own certificate. The address children will dial is the one the connection
/// comes from, with the port the peer serves on: a peer cannot point children at another host.
fn validate_register(
    shared: &Shared,
    client: &Client,
    r: &pb::Register,
) -> Result<(url::Url, Option<Sha256Digest>, SocketAddr), pb::Failed> {
    let invalid = |message: String| pb::Failed { status: 0, message, refused: false };
    let url = url::Url::parse(&r.url).map_err(|e| invalid(format!("invalid url: {e}")))?;
    if let Err(refused) = shared.origins.policy().check_url(&url, None) {
        return Err(pb::Failed { status: 0, message: refused.to_string(), refused: true });
    }
    let digest = if r.digest.is_empty() {
        None
    } else {
        Some(r.digest.parse::<Sha256Digest>().map_err(|e| invalid(e.to_string()))?)
    };
    if TaskId::for_url(&url, digest.as_ref()).as_str() != r.task_id {
        return Err(invalid("task id does not match the url/digest".into()));
    }
    let advertised = r
        .peer_addr
        .parse::<SocketAddr>()
        .map_err(|e| invalid(format!("invalid peer address {:?}: {e}", r.peer_addr)))?;
    if client.peer_id.as_deref() != Some(r.peer_id.as_str()) {
        return Err(pb::Failed {
            status: 0,
            message: format!("peer id {:?} is not the one of this peer's certificate", r.peer_id),
            refused: true,
        });
    }
    let addr = SocketAddr::new(client.remote.ip(), advertised.port());
    if addr != advertised {
        debug!(%advertised, %addr, "peer advertises another address than it connects from: using its source address");
    }
    Ok((url, digest, addr))
}

/// The pieces `reg` says its peer holds, if its numbers name the byte ranges this supernode's
/// table does: a peer whose table was cut with another piece size (another version's rule, a
/// task this supernode evicted and cuts afresh) holds other ranges under the same numbers, and
/// every child would fail the supernode's sha256 on them and strike the peer. Such a peer is
/// not a holder here; a downloading one fetches the pieces again under this table.
fn usable_have(shared: &Shared, task: &TaskId, reg: &pb::Register) -> Vec<u32> {
    if reg.have.is_empty() || cut_alike(shared.cache.get(task).map(|t| t.piece_size()), reg) {
        return reg.have.clone();
    }
    debug!(task = %task, theirs = reg.piece_size, "the peer's pieces are cut otherwise: not a holder");
    Vec::new()
}

/// Whether `reg`'s pieces are cut like this supernode's table: the piece size of its cached
/// copy (`cached`, 0 before the origin answered), else the one it would cut for the length the
/// peer recorded. A peer that names no piece size (older versions) is taken at its word.
fn cut_alike(cached: Option<u32>, reg: &pb::Register) -> bool {
    if reg.piece_size == 0 {
        return true;
    }
    let ours = cached
        .filter(|&size| size != 0)
        .or_else(|| reg.content_length.map(|len| damselfly_types::piece::piece_size(Some(len))));
    ours.is_none_or(|size| size == reg.piece_size)
}

/// Sends one message on a control stream that has not started its writer yet, and closes it.
async fn refuse(send: &mut SendStream, failed: pb::Failed) -> Result<(), TransportError> {
    let down = pb::ControlDown { kind: Some(pb::control_down::Kind::Failed(failed)) };
    write_frame(send, &down).await?;
    let _ = send.finish();
    Ok(())
}

/// Serves one control stream (opened by a `Register`) until the peer is done or leaves.
pub(crate) async fn control(
    shared: Arc<Shared>,
    client: Client,
    peers: ConnPeers,
    reg: pb::Register,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), TransportError> {
    let remote = client.remote;
    let (url, digest, addr) = match validate_register(&shared, &client, &reg) {
        Ok(v) => v,
        Err(failed) => {
            warn!(%remote, error = %failed.message, "registration refused");
            return refuse(&mut send, failed).await;
        }
    };
    let task = TaskId::new(reg.task_id.clone());
    let peer = PeerId::new(reg.peer_id.clone());
    let _ = send.set_priority(damselfly_net::transport::CONTROL_PRIORITY);
    let have = usable_have(&shared, &task, &reg);
    if reg.announce_only {
        return announce(shared, peers, task, peer, addr, have, recv).await;
    }
    // Admission: this host's own credentials, accepted by the origin for this content.
    let verdict = match shared.config.check_access {
        true => shared.admissions.check(&shared.origins, &url, &reg.headers).await,
        false => Ok(()),
    };
    if let Err(refusal) = verdict {
        let (status, refused) = match &refusal {
            Refusal::Denied { status, .. } => {
                shared.metrics.admissions_refused.inc();
                (u32::from(*status), false)
            }
            Refusal::Policy(_) => (0, true),
            Refusal::Unavailable(_) => (0, false),
        };
        debug!(%remote, task = %task, error = %refusal, "registration not admitted");
        return refuse(&mut send, pb::Failed { status, message: refusal.to_string(), refused }).await;
    }
    let group = swarm_group(&url, &reg.group);
    let span = tracing::info_span!("control", task = %task, peer = %peer);
    async move {
        peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone());
        claim_conn(&shared, &peer, &peers, addr);
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        // The ticket goes first: every assignment that follows can be fetched with it.
        let _ = tx.try_send(ToPeer::Ticket(issue_ticket(&shared, &task, &peer)));
        shared.attach(&peer, &task, tx.clone());
        let writer = tokio::spawn(write_downs(rx, send));
        let renewer = tokio::spawn(renew_tickets(shared.clone(), task.clone(), peer.clone(), tx.clone()));
        // The blob's image swarm, named right before the registration it belongs to.
        if let Some(group) = group {
            debug!(%group, "the registration names an image swarm");
            shared.handle(Event::Grouped { task: task.clone(), group });
        }
        // Joined first, so that a fetch failing at once still reaches this peer.
        shared.handle(Event::PeerJoined { task: task.clone(), peer: peer.clone(), addr, have });
        shared.record_host_limits(&peer, reg.limits.as_ref());
        // Held while the peer downloads: the cache never evicts an entry in use.
        let _entry = start_origin_if_needed(&shared, &task, url, digest, &reg.headers);
        let result = read_ups(&shared, &task, &peer, &mut recv).await;
        shared.detach(&peer, &task, &tx);
        renewer.abort();
        writer.abort();
        result
    }
    .instrument(span)
    .await
}

/// The scheduler's group for a registration naming `group` (empty: none) for content at `url`:
/// scoped to the origin, so that the keys of two registries never meet. A group that fails the
/// check is ignored (it is a hint: the download goes on without it).
fn swarm_group(url: &url::Url, group: &str) -> Option<String> {
    if group.is_empty() {
        return None;
    }
    if let Err(e) = damselfly_types::group::check(group) {
        debug!(error = %e, "registration names an invalid group: ignored");
        return None;
    }
    Some(format!("{} {group}", url.origin().ascii_serialization()))
}

/// A ticket for `peer` to get pieces of `task` for the configured lifetime.
fn issue_ticket(shared: &Shared, task: &TaskId, peer: &PeerId) -> pb::Ticket {
    shared.tickets.issue(task.as_str(), peer.as_str(), SystemTime::now() + shared.config.ticket_ttl)
}

/// Sends a fresh ticket at half of each ticket's life, while the control stream lasts.
async fn renew_tickets(shared: Arc<Shared>, task: TaskId, peer: PeerId, tx: mpsc::Sender<ToPeer>) {
    let every = shared.config.ticket_ttl / 2;
    loop {
        tokio::time::sleep(every).await;
        if tx.send(ToPeer::Ticket(issue_ticket(&shared, &task, &peer))).await.is_err() {
            return;
        }
    }
}

fn start_origin_if_needed(
    shared: &Arc<Shared>,
    task: &TaskId,
    url: url::Url,
    digest: Option<Sha256Digest>,
    headers: &[pb::Header],
) -> Option<Arc<crate::cache::CachedTask>> {
    let headers = headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    let req = OriginRequest { task: task.clone(), url, digest, headers };
    match crate::origin::start_fetch(shared, req) {
        Ok((entry, _)) => Some(entry),
        Err(e) => {
            warn!(error = %e, "cannot create cache entry");
            shared.handle(Event::OriginFailed {
                task: task.clone(),
                status: None,
                refused: false,
                message: format!("supernode cache error: {e}"),
            });
            None
        }
    }
}

/// A peer tells what it holds without downloading (`Register.announce_only`): after a restart
/// it re-announces a finished task (`have`: every piece, then `TaskDone`), after an eviction it
/// leaves (`have` empty). No origin fetch starts and nothing is sent back.
async fn announce(
    shared: Arc<Shared>,
    peers: ConnPeers,
    task: TaskId,
    peer: PeerId,
    addr: SocketAddr,
    have: Vec<u32>,
    mut recv: RecvStream,
) -> Result<(), TransportError> {
    if have.is_empty() {
        debug!(task = %task, peer = %peer, "peer dropped the task");
        shared.handle(Event::PeerLeft { task, peer });
        return Ok(());
    }
    peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone());
    claim_conn(&shared, &peer, &peers, addr);
    shared.handle(Event::PeerJoined { task: task.clone(), peer: peer.clone(), addr, have });
    read_ups(&shared, &task, &peer, &mut recv).await
}

/// Records `peers`' connection as the one `peer` registered on last.
pub(crate) fn claim_conn(shared: &Shared, peer: &PeerId, peers: &ConnPeers, addr: SocketAddr) {
    let key = Arc::as_ptr(peers) as usize;
    shared.peer_conns.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone(), key);
    shared.peer_addrs.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone(), addr);
}

/// Forgets `peer`'s connection if it is `peers`' one; false when the peer registered on a newer
/// connection since.
pub(crate) fn release_conn(shared: &Shared, peer: &PeerId, peers: &ConnPeers) -> bool {
    let key = Arc::as_ptr(peers) as usize;
    let mut conns = shared.peer_conns.lock().unwrap_or_else(|e| e.into_inner());
    match conns.get(peer) {
        Some(k) if *k != key => false,
        _ => {
            conns.remove(peer);
            true
        }
    }
}

async fn write_downs(mut rx: mpsc::Receiver<ToPeer>, mut send: SendStream) {
    while let Some(msg) = rx.recv().await {
        let (down, last) = match msg {
            ToPeer::Down(down) => {
                let failed = matches!(down, Down::Failed { .. });
                (to_proto(down), failed)
            }
            ToPeer::Ticket(t) => (pb::ControlDown { kind: Some(pb::control_down::Kind::Ticket(t)) }, false),
            ToPeer::Waiting(w) => (pb::ControlDown { kind: Some(pb::control_down::Kind::Waiting(w)) }, false),
        };
        if write_frame(&mut send, &down).await.is_err() {
            return;
        }
        if last {
            let _ = send.finish();
            return;
        }
    }
}

async fn read_ups(shared: &Shared, task: &TaskId, peer: &PeerId, recv: &mut RecvStream) -> Result<(), TransportError> {
    loop {
        let Some(up) = read_frame::<pb::ControlUp>(recv).await? else {
            shared.handle(Event::PeerLeft { task: task.clone(), peer: peer.clone() });
            return Ok(());
        };
        if let Some(pb::control_up::Kind::PieceFailed(f)) = &up.kind {
            shared.metrics.piece_failure_reports.inc();
            debug!(piece = f.piece, parent = %f.parent_id, detail = %f.detail, "piece failure reported");
        }
        match from_proto(task, peer, up) {
            Up::Report(event) => shared.handle(event),
            Up::Last(event) => {
                // Done: the peer keeps seeding; either way its control stream may now close.
                shared.handle(event);
                return Ok(());
            }
            Up::Ignored => {}
        }
    }
}

/// A peer's report as the scheduler takes it.
#[derive(Debug, PartialEq)]
pub enum Up {
    /// A piece finished or failed; more reports follow.
    Report(Event),
    /// The peer is done with the task or leaves it: the last message on the stream.
    Last(Event),
    /// Nothing for the scheduler (a repeated registration, an empty or unknown message).
    Ignored,
}

/// A report from `peer` on its control stream for `task`, in the scheduler's terms: the
/// inverse of what the dfdaemon writes (`dfdaemon::download::wire`, whose tests check the round
/// trip). An unknown failure reason counts as a transfer failure, the lighter strike.
pub fn from_proto(task: &TaskId, peer: &PeerId, up: pb::ControlUp) -> Up {
    use pb::control_up::Kind;
    let (task, peer) = (task.clone(), peer.clone());
    match up.kind {
        Some(Kind::PieceDone(d)) => Up::Report(Event::PieceFinished { task, peer, piece: d.piece }),
        Some(Kind::PieceFailed(f)) => {
            let reason =
                if f.reason == pb::FailReason::Digest as i32 { FailReason::Digest } else { FailReason::Transfer };
            let parent = (!f.parent_id.is_empty()).then(|| PeerId::new(f.parent_id));
            Up::Report(Event::PieceFailed { task, peer, piece: f.piece, parent, reason })
        }
        Some(Kind::Done(_)) => Up::Last(Event::PeerDone { task, peer }),
        Some(Kind::Leave(_)) => Up::Last(Event::PeerLeft { task, peer }),
        Some(Kind::Register(_)) | None => Up::Ignored,
    }
}

/// A scheduler message as it goes down the control stream; the dfdaemon reads it back in
/// `Conductor::on_down` and `download::wire` (`dfdaemon/src/download/wire.rs` tests the round trip).
pub fn to_proto(down: Down) -> pb::ControlDown {
    use pb::control_down::Kind;
    let kind = match down {
        Down::TaskInfo { content_length, piece_size } => Kind::TaskInfo(pb::TaskInfo { content_length, piece_size }),
        Down::Pieces(pieces) => Kind::Pieces(pb::Pieces {
            pieces: pieces
                .into_iter()
                .map(|p| pb::PieceMeta {
                    number: p.number,
                    offset: p.piece.offset,
                    size: p.piece.size,
                    sha256: p.piece.sha256.to_vec(),
                })
                .collect(),
        }),
        Down::Assign(list) => Kind::Assign(pb::Assign {
            assignments: list
                .into_iter()
                .map(|a| pb::Assignment {
                    piece: a.piece,
                    parent: Some(match a.parent {
                        Parent::Supernode => pb::Parent::default(),
                        Parent::Peer { id, addr } => pb::Parent { peer_id: id.to_string(), addr: addr.to_string() },
                    }),
                })
                .collect(),
        }),
        Down::Complete { total_pieces, content_length } => {
            Kind::Complete(pb::Complete { total_pieces, content_length })
        }
        Down::Failed { status, refused, message } => {
            Kind::Failed(pb::Failed { status: u32::from(status.unwrap_or(0)), message, refused })
        }
    };
    pb::ControlDown { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use damselfly_proto::strategy;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn groups_are_scoped_to_the_origin_and_invalid_ones_ignored() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        let a = url("https://registry.example/v2/app/blobs/sha256:00");
        assert_eq!(swarm_group(&a, "sha256:ab").as_deref(), Some("https://registry.example sha256:ab"));
        // Two registries' keys never meet; the port is part of the origin, the path is not.
        let b = url("http://127.0.0.1:5000/v2/app/blobs/sha256:00");
        assert_eq!(swarm_group(&b, "sha256:ab").as_deref(), Some("http://127.0.0.1:5000 sha256:ab"));
        assert_eq!(swarm_group(&url("https://registry.example/other"), "k"), swarm_group(&a, "k"));
        // None named, or one the check refuses: the registration goes on without a group.
        assert_eq!(swarm_group(&a, ""), None);
        assert_eq!(swarm_group(&a, "a\nb"), None);
        assert_eq!(swarm_group(&a, &"g".repeat(damselfly_types::group::MAX_LEN + 1)), None);
        assert!(swarm_group(&a, &"g".repeat(damselfly_types::group::MAX_LEN)).is_some());
    }

    #[test]
    fn a_peer_whose_pieces_are_cut_otherwise_is_not_a_holder() {
        const MIB: u64 = 1 << 20;
        let reg = |piece_size: u32, content_length: Option<u64>| pb::Register {
            have: vec![0, 1, 2],
            piece_size,
            content_length,
            ..Default::default()
        };
        // An older peer names no piece size: taken at its word.
        assert!(cut_alike(Some(512 << 10), &reg(0, None)));
        // Against the supernode's cached copy.
        assert!(cut_alike(Some(512 << 10), &reg(512 << 10, Some(96 * MIB))));
        assert!(!cut_alike(Some(512 << 10), &reg(256 << 10, Some(96 * MIB))));
        // Nothing cached (evicted, or a fresh supernode): the table it would cut for that length.
        // 96 MiB in 512 KiB pieces was the rule before 2026-12-03; it is 256 KiB now.
        assert!(!cut_alike(None, &reg(512 << 10, Some(96 * MIB))));
        assert!(cut_alike(None, &reg(256 << 10, Some(96 * MIB))));
        // A cached task whose origin has not answered yet has no piece size: the length decides.
        assert!(!cut_alike(Some(0), &reg(512 << 10, Some(96 * MIB))));
        // No length and nothing cached: nothing to compare against.
        assert!(cut_alike(None, &reg(512 << 10, None)));
    }

    proptest! {
        /// Every report a peer can send, whatever its fields, becomes the event that names the
        /// same task, peer, piece and parent; only the detail text stays behind (it is logged).
        #[test]
        fn every_report_reaches_the_scheduler_with_its_fields(up in strategy::control_up()) {
            use pb::control_up::Kind;
            let (task, peer) = (TaskId::new("t1"), PeerId::new("p1"));
            let got = from_proto(&task, &peer, up.clone());
            let (t, p) = (task.clone(), peer.clone());
            let want = match up.kind {
                Some(Kind::PieceDone(d)) => Up::Report(Event::PieceFinished { task: t, peer: p, piece: d.piece }),
                Some(Kind::PieceFailed(f)) => Up::Report(Event::PieceFailed {
                    task: t,
                    peer: p,
                    piece: f.piece,
                    parent: (!f.parent_id.is_empty()).then(|| PeerId::new(f.parent_id.clone())),
                    reason: match pb::FailReason::try_from(f.reason) {
                        Ok(pb::FailReason::Digest) => FailReason::Digest,
                        _ => FailReason::Transfer,
                    },
                }),
                Some(Kind::Done(_)) => Up::Last(Event::PeerDone { task: t, peer: p }),
                Some(Kind::Leave(_)) => Up::Last(Event::PeerLeft { task: t, peer: p }),
                Some(Kind::Register(_)) | None => Up::Ignored,
            };
            prop_assert_eq!(got, want);
        }
    }
}
