//! The supernode's QUIC side: enrollment and renewal ([`crate::enroll`]), per-task control
//! streams and piece uploads.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use damselfly_common::id::{PeerId, Sha256Digest, TaskId};
use damselfly_common::tls;
use damselfly_common::transport::{bind_endpoint, read_frame, write_frame, TransportError};
use damselfly_common::upload::serve_piece;
use damselfly_proto as pb;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::origin::OriginRequest;
use crate::scheduler::{Down, Event, FailReason, Parent};
use crate::{Shared, ShutdownSignal};

/// Binds the QUIC endpoint with the supernode's identity.
pub fn bind(shared: &Shared) -> anyhow::Result<Endpoint> {
    let identity = shared.ca.issue_supernode_identity()?;
    let server = tls::supernode_server_config(&identity, &shared.ca.cert_der())?;
    Ok(bind_endpoint(shared.config.quic_listen, Some(server))?)
}

/// Accepts connections until shutdown.
pub async fn serve(shared: Arc<Shared>, endpoint: Endpoint, mut shutdown: ShutdownSignal) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let shared = shared.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => handle_connection(shared, conn).await,
                        Err(e) => debug!(error = %e, "handshake failed"),
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Peers that registered on one connection, so that its loss removes them everywhere.
type ConnPeers = Arc<Mutex<HashSet<PeerId>>>;

async fn handle_connection(shared: Arc<Shared>, conn: Connection) {
    let remote = conn.remote_address();
    let authenticated = tls::has_client_identity(&conn);
    // The peer id of the client certificate, for renewals.
    let client: Option<Arc<str>> = tls::client_peer_id(&conn).map(Arc::from);
    debug!(%remote, authenticated, "peer connected");
    let peers: ConnPeers = Arc::default();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%remote, reason = %e, "peer connection closed");
                break;
            }
        };
        let (shared, peers, client) = (shared.clone(), peers.clone(), client.clone());
        tokio::spawn(async move {
            if let Err(e) = handle_stream(shared, authenticated, client, remote, peers, send, recv).await {
                debug!(%remote, error = %e, "stream ended with an error");
            }
        });
    }
    let gone: Vec<PeerId> = peers.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for peer in gone {
        if !release_conn(&shared, &peer, &peers) {
            // The peer restarted and registered on a newer connection: its tasks stay.
            continue;
        }
        info!(peer = %peer, "peer gone");
        shared.handle(Event::PeerGone { peer });
    }
}

async fn handle_stream(
    shared: Arc<Shared>,
    authenticated: bool,
    client: Option<Arc<str>>,
    remote: SocketAddr,
    peers: ConnPeers,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), TransportError> {
    let Some(req) = read_frame::<pb::Request>(&mut recv).await? else {
        return Ok(());
    };
    match req.kind {
        Some(pb::request::Kind::Enroll(e)) => crate::enroll::enroll(&shared, remote, e, &mut send).await,
        Some(_) if !authenticated => {
            // Only enrollment is open to peers without a cluster certificate.
            let _ = send.reset(2u32.into());
            Ok(())
        }
        Some(pb::request::Kind::Piece(p)) => {
            let sent = serve_piece(&shared.cache, &p, &mut send).await?;
            if sent > 0 {
                shared.metrics.upload_bytes.inc_by(sent);
                shared.metrics.upload_pieces.inc();
            }
            Ok(())
        }
        Some(pb::request::Kind::Renew(r)) => {
            crate::enroll::renew(&shared, remote, client.as_deref(), r, &mut send).await
        }
        Some(pb::request::Kind::Control(c)) => match c.kind {
            Some(pb::control_up::Kind::Register(r)) => control(shared, remote, peers, r, send, recv).await,
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

/// Checks a registration before anything is fetched for it. A refusal by the origin policy is
/// marked `refused` (final for the peer: no fallback to the origin).
fn validate_register(
    shared: &Shared,
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
    let addr = r
        .peer_addr
        .parse::<SocketAddr>()
        .map_err(|e| invalid(format!("invalid peer address {:?}: {e}", r.peer_addr)))?;
    if r.peer_id.is_empty() {
        return Err(invalid("missing peer id".into()));
    }
    Ok((url, digest, addr))
}

async fn control(
    shared: Arc<Shared>,
    remote: SocketAddr,
    peers: ConnPeers,
    reg: pb::Register,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), TransportError> {
    let (url, digest, addr) = match validate_register(&shared, &reg) {
        Ok(v) => v,
        Err(failed) => {
            warn!(%remote, error = %failed.message, "registration refused");
            let down = pb::ControlDown { kind: Some(pb::control_down::Kind::Failed(failed)) };
            write_frame(&mut send, &down).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let task = TaskId::new(reg.task_id.clone());
    let peer = PeerId::new(reg.peer_id.clone());
    let _ = send.set_priority(damselfly_common::transport::CONTROL_PRIORITY);
    if reg.announce_only {
        return announce(shared, peers, task, peer, addr, reg.have, recv).await;
    }
    let span = tracing::info_span!("control", task = %task, peer = %peer);
    async move {
        peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone());
        claim_conn(&shared, &peer, &peers);
        let (tx, rx) = mpsc::unbounded_channel();
        shared.attach(&peer, &task, tx);
        let writer = tokio::spawn(write_downs(rx, send));
        // Joined first, so that a fetch failing at once still reaches this peer.
        shared.handle(Event::PeerJoined { task: task.clone(), peer: peer.clone(), addr, have: reg.have.clone() });
        // Held while the peer downloads: the cache never evicts an entry in use.
        let _entry = start_origin_if_needed(&shared, &task, url, digest, &reg.headers);
        let result = read_ups(&shared, &task, &peer, &mut recv).await;
        shared.detach(&peer, &task);
        writer.abort();
        result
    }
    .instrument(span)
    .await
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
    claim_conn(&shared, &peer, &peers);
    shared.handle(Event::PeerJoined { task: task.clone(), peer: peer.clone(), addr, have });
    read_ups(&shared, &task, &peer, &mut recv).await
}

/// Records `peers`' connection as the one `peer` registered on last.
fn claim_conn(shared: &Shared, peer: &PeerId, peers: &ConnPeers) {
    let key = Arc::as_ptr(peers) as usize;
    shared.peer_conns.lock().unwrap_or_else(|e| e.into_inner()).insert(peer.clone(), key);
}

/// Forgets `peer`'s connection if it is `peers`' one; false when the peer registered on a newer
/// connection since.
fn release_conn(shared: &Shared, peer: &PeerId, peers: &ConnPeers) -> bool {
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

async fn write_downs(mut rx: mpsc::UnboundedReceiver<Down>, mut send: SendStream) {
    while let Some(down) = rx.recv().await {
        let failed = matches!(down, Down::Failed { .. });
        if write_frame(&mut send, &to_proto(down)).await.is_err() {
            return;
        }
        if failed {
            let _ = send.finish();
            return;
        }
    }
}

async fn read_ups(shared: &Shared, task: &TaskId, peer: &PeerId, recv: &mut RecvStream) -> Result<(), TransportError> {
    use pb::control_up::Kind;
    loop {
        let Some(up) = read_frame::<pb::ControlUp>(recv).await? else {
            shared.handle(Event::PeerLeft { task: task.clone(), peer: peer.clone() });
            return Ok(());
        };
        let event = match up.kind {
            Some(Kind::PieceDone(d)) => Event::PieceFinished { task: task.clone(), peer: peer.clone(), piece: d.piece },
            Some(Kind::PieceFailed(f)) => {
                shared.metrics.piece_failure_reports.inc();
                let reason =
                    if f.reason == pb::FailReason::Digest as i32 { FailReason::Digest } else { FailReason::Transfer };
                let parent = (!f.parent_id.is_empty()).then(|| PeerId::new(f.parent_id));
                debug!(piece = f.piece, ?parent, detail = %f.detail, "piece failure reported");
                Event::PieceFailed { task: task.clone(), peer: peer.clone(), piece: f.piece, parent, reason }
            }
            Some(Kind::Done(_)) => {
                // The peer keeps seeding; its control stream may now close.
                shared.handle(Event::PeerDone { task: task.clone(), peer: peer.clone() });
                return Ok(());
            }
            Some(Kind::Leave(_)) => {
                shared.handle(Event::PeerLeft { task: task.clone(), peer: peer.clone() });
                return Ok(());
            }
            Some(Kind::Register(_)) | None => continue,
        };
        shared.handle(event);
    }
}

fn to_proto(down: Down) -> pb::ControlDown {
    use pb::control_down::Kind;
    let kind = match down {
        Down::TaskInfo { content_length, piece_size } => Kind::TaskInfo(pb::TaskInfo { content_length, piece_size }),
        Down::Pieces(pieces) => Kind::Pieces(pb::Pieces {
            pieces: pieces
                .into_iter()
                .map(|p| pb::PieceMeta { number: p.number, offset: p.offset, size: p.size, sha256: p.sha256.to_vec() })
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
