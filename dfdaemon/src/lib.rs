//! The Damselfly dfdaemon: the per-host peer.
//!
//! It downloads tasks piece by piece from parents the supernode assigns ([`download`]), keeps
//! them in its local [`storage`], serves every piece it holds to other peers over QUIC, and
//! exposes an HTTP API on the proxy port for dfget ([`http`]). dfget's embedded mode runs the
//! same [`Daemon`] in-process.

pub mod announce;
pub mod config;
pub mod download;
pub mod fallback;
pub mod gc;
pub mod http;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod storage;
pub mod supernodes;
pub mod verify;
mod warm;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context};
use damselfly_net::config::Layered as _;
use damselfly_net::headers::ForwardHeaders;
use damselfly_net::ticket::TicketVerifier;
use damselfly_net::tls;
use damselfly_net::transport::{bind_endpoint, read_first_frame, ConnectionPool};
use damselfly_net::upload::{serve_piece, Requester, Served};
use damselfly_proto as pb;
use damselfly_types::id::TaskId;
use quinn::Endpoint;
use tracing::{debug, info, warn};

pub use config::DaemonConfig;
use download::DownloadRequest;
use identity::PeerIdentity;
use storage::{LocalTask, Store};

pub use damselfly_net::shutdown::ShutdownSignal;

/// The running daemon, shared by its HTTP handlers, downloads and uploads.
pub struct Daemon {
    /// Configuration in force.
    pub config: DaemonConfig,
    /// The headers a download passes on to the supernode and the origin (`config.forward_headers`
    /// plus the ones always forwarded).
    pub forward_headers: ForwardHeaders,
    /// Identity in the cluster.
    pub identity: PeerIdentity,
    /// Where other peers reach this one.
    pub advertise: SocketAddr,
    /// Local tasks.
    pub store: Store,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// Connections to parents and the supernode.
    pub pool: ConnectionPool,
    /// HTTP client for registries and origins (mirror pass-through, origin fallback).
    pub http: reqwest::Client,
    /// Registry mirror state: coalesced manifest requests and the manifest cache.
    pub mirror: mirror::MirrorState,
    /// The region's supernodes and the links to them.
    pub supernodes: supernodes::Supernodes,
    /// Client configuration for supernode connections ([`supernodes::supernode_client`]).
    supernode_client: quinn::ClientConfig,
    /// Bandwidth limits (download, upload, origin fallback).
    pub limits: limits::Limits,
    /// When any task last received a piece from the swarm. A task waiting for upload slots
    /// that other tasks of this host occupy is not stalled: the swarm is working for it.
    swarm_progress: std::sync::Mutex<tokio::time::Instant>,
}

impl Daemon {
    /// Records that a piece arrived from the swarm.
    pub fn swarm_progressed(&self) {
        *self.swarm_progress.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }

    /// When a piece last arrived from the swarm, for any task, or (under a download limit)
    /// bytes last passed the limit: throttled pieces take long, but bytes keep coming.
    pub fn last_swarm_progress(&self) -> tokio::time::Instant {
        let piece = *self.swarm_progress.lock().unwrap_or_else(|e| e.into_inner());
        self.limits.download.last_grant().map_or(piece, |bytes| bytes.max(piece))
    }

    /// Starts (or joins) the download of `task`; returns its local entry at once.
    pub fn download(self: &Arc<Self>, task: &TaskId, req: DownloadRequest) -> std::io::Result<Arc<LocalTask>> {
        let (entry, fresh) = self.store.get_or_create(task)?;
        if fresh {
            entry.set_origin(&req.url, req.digest.as_deref());
            let (daemon, task) = (self.clone(), entry.clone());
            tokio::spawn(async move {
                download::run(daemon, task.clone(), req).await;
                task.release_download();
            });
        }
        Ok(entry)
    }
}

/// Addresses a started daemon listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// HTTP (proxy / API) address.
    pub proxy: SocketAddr,
    /// QUIC peer address as advertised.
    pub peer: SocketAddr,
}

/// Starts the daemon: enrolls if needed, binds both listeners; returns once it serves.
pub async fn start(
    config: DaemonConfig,
    shutdown: ShutdownSignal,
) -> anyhow::Result<(Bound, Arc<Daemon>, tokio::task::JoinHandle<()>)> {
    config.validate()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    if config.supernodes.is_empty() {
        bail!("no supernode configured: pass --supernode HOST:PORT");
    }
    let supernodes = supernodes::Supernodes::new(&config.supernodes);
    let endpoint = bind_endpoint(config.peer_listen, None)?;
    // Without a supernode at start a daemon with an origin fallback starts anyway and enrolls
    // later; dfget's embedded peer (no fallback) has nothing to offer without one.
    let identity = identity::load_or_enroll(&config, &endpoint, &supernodes, config.origin_fallback).await?;
    if !identity.enrolled() {
        supernodes.all_down("unreachable at start");
    }
    endpoint.set_server_config(Some(server_config(&identity)?));
    let local = endpoint.local_addr()?;
    let advertise = SocketAddr::new(advertise_ip(&config, local, &supernodes).await?, local.port());
    // Both configurations read the identity at every handshake: renewals need no rebuild.
    let client = identity.tls.client_config()?;
    let supernode_client = supernodes::supernode_client(client.clone());
    let metrics = metrics::Metrics::new();
    let store_config = storage::config(config.cache_quota.map(|q| q.as_u64()));
    let store = Store::open_with(&config.data_dir, store_config, metrics.cache.clone())?;
    let limits = limits::Limits::new(&config, &metrics.rate);
    let daemon = Arc::new(Daemon {
        limits,
        store,
        metrics,
        pool: ConnectionPool::new(endpoint.clone(), client),
        http: upstream_client()?,
        mirror: mirror::MirrorState::default(),
        identity,
        advertise,
        supernodes,
        supernode_client,
        swarm_progress: std::sync::Mutex::new(tokio::time::Instant::now()),
        forward_headers: ForwardHeaders::from_names(&config.forward_headers),
        config,
    });
    let listener = tokio::net::TcpListener::bind(daemon.config.proxy_listen)
        .await
        .with_context(|| format!("cannot listen on {}", daemon.config.proxy_listen))?;
    let bound = Bound { proxy: listener.local_addr()?, peer: advertise };
    info!(proxy = %bound.proxy, peer = %bound.peer, id = %daemon.identity.peer_id(), "dfdaemon listening");
    let d = daemon.clone();
    let handle = tokio::spawn(async move {
        let uploads = tokio::spawn(serve_uploads(d.clone(), endpoint.clone()));
        // Cache lifecycle: re-announce and resume what the store loaded, repairs, eviction
        // reports, TTL.
        let lifecycle = tokio::spawn(announce::run(d.clone()));
        let gc = tokio::spawn(gc::run(d.clone()));
        // Certificate renewal and re-enrollment.
        let upkeep = tokio::spawn(identity::maintain(d.clone()));
        // One supervised link per supernode: enrollment, connection, re-announcement.
        let links: Vec<_> =
            (0..d.supernodes.links().len()).map(|i| tokio::spawn(supernodes::supervise(d.clone(), i))).collect();
        http::serve(d.clone(), listener, shutdown).await;
        lifecycle.abort();
        gc.abort();
        upkeep.abort();
        links.iter().for_each(tokio::task::JoinHandle::abort);
        d.store.persist_access_times();
        d.store.flush();
        uploads.abort();
        endpoint.close(0u32.into(), b"shutdown");
    });
    Ok((bound, daemon, handle))
}

/// Runs the daemon until `shutdown` turns true.
pub async fn run(config: DaemonConfig, shutdown: ShutdownSignal) -> anyhow::Result<()> {
    let (_, _, handle) = start(config, shutdown).await?;
    handle.await?;
    Ok(())
}

/// Time allowed to connect to a registry or origin (mirror pass-through, origin fallback).
pub const UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest silence of a registry or origin (response headers, then between two reads of the
/// body) before the request fails.
pub const UPSTREAM_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn upstream_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(UPSTREAM_CONNECT_TIMEOUT)
        .read_timeout(UPSTREAM_READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(10))
        .user_agent(concat!("damselfly-dfdaemon/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn server_config(id: &PeerIdentity) -> anyhow::Result<quinn::ServerConfig> {
    let mut server = id.tls.peer_server_config()?;
    server.transport_config(damselfly_net::transport::transport_config());
    Ok(server)
}

/// The IP other peers should dial: the listen IP, `--advertise-ip`, or the local side of the
/// route to the first supernode that resolves (found by connecting a UDP socket, which sends
/// nothing).
async fn advertise_ip(
    config: &DaemonConfig,
    local: SocketAddr,
    supernodes: &supernodes::Supernodes,
) -> anyhow::Result<IpAddr> {
    if let Some(ip) = config.advertise_ip {
        return Ok(ip);
    }
    if !local.ip().is_unspecified() {
        return Ok(local.ip());
    }
    let mut why = Vec::new();
    for link in supernodes.links() {
        match link.addr().await {
            Ok(addr) => {
                let probe = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
                probe.connect(addr)?;
                return Ok(probe.local_addr()?.ip());
            }
            Err(e) => why.push(e),
        }
    }
    bail!("cannot tell which address other peers reach this host at ({}): pass --advertise-ip", why.join("; "))
}

/// Serves piece requests from other peers (mutual TLS: only cluster members get here), each
/// against a ticket the supernode issued for the task and the requester's certificate.
async fn serve_uploads(daemon: Arc<Daemon>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return debug!(error = %e, "peer handshake failed"),
            };
            let Some(peer_id) = damselfly_net::tls::client_peer_id(&conn).map(Arc::<str>::from) else {
                return debug!("peer connection without a peer certificate: closed");
            };
            let supernode = tls::client_is_supernode(&conn);
            // Tickets verify with the CA in force when the connection came (it changes only on
            // re-enrollment into another cluster, which also ends this peer's connections).
            let tickets = match TicketVerifier::from_ca_cert(&daemon.identity.tls.ca()) {
                Ok(v) => Arc::new(v),
                Err(e) => return warn!(error = %e, "cannot check tickets: closing the connection"),
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let (daemon, peer_id, tickets) = (daemon.clone(), peer_id.clone(), tickets.clone());
                tokio::spawn(async move { serve_upload(&daemon, &peer_id, supernode, &tickets, send, recv).await });
            }
        });
    }
}

/// One request from `peer_id`: a piece, or (from the supernode only) a preheat.
async fn serve_upload(
    daemon: &Arc<Daemon>,
    peer_id: &str,
    supernode: bool,
    tickets: &TicketVerifier,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Ok(Some(req)) = read_first_frame::<pb::Request>(&mut recv, damselfly_proto::MAX_FRAME_LEN).await else {
        return;
    };
    let p = match req.kind {
        Some(pb::request::Kind::Piece(p)) => p,
        Some(pb::request::Kind::Warm(w)) if supernode => return warm::serve(daemon, w, send).await,
        Some(pb::request::Kind::Warm(_)) => {
            daemon.metrics.refused_piece_requests.inc();
            warn!(peer = %peer_id, "preheat request from a peer that is not the supernode: refused");
            let _ = send.reset(3u32.into());
            return;
        }
        _ => {
            let _ = send.reset(2u32.into());
            return;
        }
    };
    if TaskId::is_valid(&p.task_id) {
        // Pieces loaded from disk are hashed before their first upload.
        daemon.store.prepare_upload(&TaskId::new(p.task_id.clone()), p.piece).await;
    }
    match serve_piece(&daemon.store, &p, Requester { peer_id, tickets }, &mut send, &daemon.limits.upload).await {
        Ok(Served::Bytes(n)) => {
            daemon.metrics.upload_bytes.inc_by(n);
        }
        Ok(Served::Refused) => {
            daemon.metrics.refused_piece_requests.inc();
        }
        Ok(Served::NotHeld) => {}
        Err(e) => debug!(error = %e, "upload failed"),
    }
}
