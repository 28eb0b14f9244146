//! The supernode's QUIC side: accepting connections (with limits before a peer's certificate
//! is checked), enrollment and renewal ([`crate::enroll`]), per-task control streams
//! ([`crate::control`]) and piece uploads (against a ticket).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use damselfly_net::rate::RateLimiter;
use damselfly_net::tls;
use damselfly_net::transport::{
    bind_endpoint_with, pre_auth_server_transport, raise_for_authenticated, read_first_frame, TransportError,
    PRE_AUTH_MAX_FRAME,
};
use damselfly_net::upload::{serve_piece, Requester, Served};
use damselfly_proto as pb;
use damselfly_types::id::PeerId;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tracing::{debug, info};

use crate::{Shared, ShutdownSignal};
use damselfly_scheduler::Event;

/// Connections one IP address may hold at once (a host runs one daemon, plus dfget's embedded
/// peers); more are refused before their handshake.
pub const MAX_CONNECTIONS_PER_IP: usize = 64;

/// Binds the QUIC endpoint with the supernode's identity. Connections start with the limits of
/// an unauthenticated peer ([`pre_auth_server_transport`]); a peer with a cluster certificate
/// gets the usual ones after its handshake.
pub fn bind(shared: &Shared) -> anyhow::Result<Endpoint> {
    let identity = shared.ca.issue_supernode_identity()?;
    let server = tls::supernode_server_config(&identity, &shared.ca.cert_der())?;
    Ok(bind_endpoint_with(shared.config.quic_listen, Some(server), pre_auth_server_transport())?)
}

/// Live connections per remote IP.
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Accepts connections until shutdown.
pub async fn serve(shared: Arc<Shared>, endpoint: Endpoint, mut shutdown: ShutdownSignal) {
    let per_ip: PerIp = Arc::default();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let ip = incoming.remote_address().ip();
                if !count_in(&per_ip, ip) {
                    debug!(%ip, "too many connections from one address: refused");
                    incoming.refuse();
                    continue;
                }
                let (shared, per_ip) = (shared.clone(), per_ip.clone());
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => handle_connection(shared, conn).await,
                        Err(e) => debug!(error = %e, "handshake failed"),
                    }
                    count_out(&per_ip, ip);
                });
            }
            () = damselfly_net::shutdown::requested(&mut shutdown) => break,
        }
    }
}

/// Counts a new connection from `ip`; false (not counted) when it has too many.
fn count_in(per_ip: &PerIp, ip: IpAddr) -> bool {
    let mut m = per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = m.entry(ip).or_default();
    if *n >= MAX_CONNECTIONS_PER_IP {
        return false;
    }
    *n += 1;
    true
}

fn count_out(per_ip: &PerIp, ip: IpAddr) {
    let mut m = per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = m.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            m.remove(&ip);
        }
    }
}

/// Peers that registered on one connection, so that its loss removes them everywhere.
pub(crate) type ConnPeers = Arc<Mutex<HashSet<PeerId>>>;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) remote: SocketAddr,
    /// The peer id of the client certificate; `None` before enrollment (no certificate).
    pub(crate) peer_id: Option<Arc<str>>,
}

async fn handle_connection(shared: Arc<Shared>, conn: Connection) {
    let remote = conn.remote_address();
    let peer_id: Option<Arc<str>> =
        tls::has_client_identity(&conn).then(|| tls::client_peer_id(&conn)).flatten().map(Arc::from);
    if peer_id.is_some() {
        raise_for_authenticated(&conn);
    }
    let client = Client { remote, peer_id };
    debug!(%remote, authenticated = client.peer_id.is_some(), "peer connected");
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
            if let Err(e) = handle_stream(shared, client, peers, send, recv).await {
                debug!(%remote, error = %e, "stream ended with an error");
            }
        });
    }
    let gone: Vec<PeerId> = peers.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
    for peer in gone {
        if !crate::control::release_conn(&shared, &peer, &peers) {
            // The peer restarted and registered on a newer connection: its tasks stay.
            continue;
        }
        info!(peer = %peer, "peer gone");
        shared.handle(Event::PeerGone { peer });
    }
}

async fn handle_stream(
    shared: Arc<Shared>,
    client: Client,
    peers: ConnPeers,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), TransportError> {
    // Before the certificate is known good, only a small enrollment request is read.
    let max = if client.peer_id.is_some() { damselfly_proto::MAX_FRAME_LEN } else { PRE_AUTH_MAX_FRAME };
    let Some(req) = read_first_frame::<pb::Request>(&mut recv, max).await? else {
        return Ok(());
    };
    let remote = client.remote;
    let Some(peer_id) = client.peer_id.clone() else {
        if let Some(pb::request::Kind::Enroll(e)) = req.kind {
            return crate::enroll::enroll(&shared, remote, e, &mut send).await;
        }
        // Only enrollment is open to peers without a cluster certificate.
        let _ = send.reset(2u32.into());
        return Ok(());
    };
    match req.kind {
        Some(pb::request::Kind::Enroll(e)) => crate::enroll::enroll(&shared, remote, e, &mut send).await,
        Some(pb::request::Kind::Piece(p)) => {
            let requester = Requester { peer_id: &peer_id, tickets: &shared.ticket_verifier };
            match serve_piece(&shared.cache, &p, requester, &mut send, &RateLimiter::unlimited()).await? {
                Served::Bytes(sent) => {
                    shared.metrics.upload_bytes.inc_by(sent);
                    shared.metrics.upload_pieces.inc();
                }
                Served::Refused => {
                    shared.metrics.refused_piece_requests.inc();
                }
                Served::NotHeld => {}
            }
            Ok(())
        }
        Some(pb::request::Kind::Renew(r)) => crate::enroll::renew(&shared, remote, Some(&peer_id), r, &mut send).await,
        Some(pb::request::Kind::Control(c)) => match c.kind {
            Some(pb::control_up::Kind::Register(r)) => {
                crate::control::control(shared, client, peers, r, send, recv).await
            }
            _ => Ok(()),
        },
        // The supernode asks daemons to warm, never the other way round.
        Some(pb::request::Kind::Warm(_)) => {
            let _ = send.reset(2u32.into());
            Ok(())
        }
        None => Ok(()),
    }
}
