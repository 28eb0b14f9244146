//! The Damselfly supernode: the regional seed and scheduler.
//!
//! It accepts QUIC connections from peers (enrollment, one control stream per task, piece
//! requests), fetches each task's origin URL exactly once into its cache, and runs the
//! [`damselfly_scheduler`] — a pure state machine — to tell every peer which piece to fetch from whom.
//! This crate's async shell only moves events into the scheduler and its actions out to the
//! peers' control streams.

pub mod admission;
pub mod auth;
pub mod cache;
pub mod config;
pub mod control;
pub mod enroll;
pub mod http;
pub mod metrics;
pub mod origin;
pub mod preheat;
pub mod quic;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use damselfly_net::config::Layered as _;
use damselfly_net::headers::ForwardHeaders;
use damselfly_net::tls::ClusterCa;
use damselfly_types::id::{PeerId, TaskId};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::SupernodeConfig;
use damselfly_scheduler::{Action, Down, Event, Scheduler};

pub use damselfly_net::shutdown::ShutdownSignal;

/// State shared by every connection, the origin fetchers and the HTTP API.
pub struct Shared {
    /// Configuration in force.
    pub config: SupernodeConfig,
    /// Content cache.
    pub cache: cache::Cache,
    /// Metrics.
    pub metrics: metrics::Metrics,
    /// The only client for origins (origin fetches, preheat registry and token requests): it
    /// enforces the origin policy (`--allow-origin`, no loopback / link-local / metadata
    /// addresses otherwise) and the header allow-list.
    pub origins: origin::client::OriginClient,
    /// The cluster CA (signs peer certificates).
    pub ca: ClusterCa,
    /// The join token enrollment requires and the API token the HTTP API requires.
    pub tokens: auth::Tokens,
    /// Preheat jobs (in memory).
    pub preheat: preheat::Preheats,
    /// Verdicts of the origin on hosts' credentials, per repository (per-task authorization).
    pub admissions: admission::Admissions,
    /// Signs the tickets that let admitted peers get a task's pieces from any parent.
    pub tickets: damselfly_net::ticket::TicketSigner,
    /// Checks the tickets of pieces requested from the supernode itself.
    pub ticket_verifier: damselfly_net::ticket::TicketVerifier,
    /// The origin bandwidth limit and the cap on concurrent origin fetches.
    pub origin_limits: origin::limits::OriginLimits,
    started: Instant,
    core: Mutex<Core>,
    /// The connection (its peer set's address) each peer registered on last: when an older
    /// connection of a restarted peer closes, the peer's newer registrations stay.
    peer_conns: Mutex<HashMap<PeerId, usize>>,
    /// The address each peer last registered from (its upload port): how a preheat job that
    /// names a daemon by peer id reaches it.
    peer_addrs: Mutex<HashMap<PeerId, std::net::SocketAddr>>,
}

/// The scheduler and the routes to the peers' control streams. Actions are dispatched while the
/// lock is held so that messages to one peer keep the order the scheduler produced them in.
struct Core {
    scheduler: Scheduler,
    /// Bytes per host and task for the status page, fed beside the scheduler.
    stats: status::Stats,
    routes: HashMap<(PeerId, TaskId), mpsc::Sender<ToPeer>>,
}

/// A message for one peer's control stream of one task.
#[derive(Debug)]
pub enum ToPeer {
    /// From the scheduler.
    Down(Down),
    /// A (renewed) ticket.
    Ticket(damselfly_proto::Ticket),
    /// The task's origin fetch waits for the origin limits (see `origin::limits`).
    Waiting(damselfly_proto::Waiting),
}

/// Messages queued per control stream before the peer counts as too slow to keep: its stream
/// is then dropped (and it falls back to the origin) rather than the supernode's memory grow.
pub const CONTROL_QUEUE: usize = 4096;

impl Shared {
    /// The address `peer` last registered from, if it ever did.
    pub fn peer_addr(&self, peer: &PeerId) -> Option<std::net::SocketAddr> {
        self.peer_addrs.lock().unwrap_or_else(|e| e.into_inner()).get(peer).copied()
    }

    /// Feeds one event to the scheduler and dispatches its actions.
    pub fn handle(&self, event: Event) {
        let now = self.started.elapsed();
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        tracing::trace!(?event, "scheduler event");
        let sched_trace = tracing::enabled!(target: "damselfly_sched", tracing::Level::DEBUG);
        if let (Event::PieceFinished { task, peer, piece }, true) = (&event, sched_trace) {
            // One compact line per transfer for offline analysis of a swarm
            // (`RUST_LOG=info,damselfly_sched=debug`).
            let task = task.short();
            tracing::debug!(target: "damselfly_sched", t = now.as_secs_f64(), task, child = %peer, piece, "finished");
        }
        if let Some(d) = core.stats.on_event(now, &event) {
            self.metrics.delivered(d.from_supernode, d.bytes);
        }
        let actions = core.scheduler.on_event(now, event);
        for action in actions {
            tracing::trace!(?action, "scheduler action");
            core.stats.on_action(now, &action);
            if let (Action::Send { peer, task, msg: Down::Assign(list) }, true) = (&action, sched_trace) {
                let task = task.short();
                for a in list {
                    let parent = a.parent.trace_name();
                    tracing::debug!(
                        target: "damselfly_sched",
                        t = now.as_secs_f64(),
                        task,
                        child = %peer,
                        piece = a.piece,
                        parent,
                        "assign"
                    );
                }
            }
            match action {
                Action::Send { peer, task, msg } => {
                    let key = (peer, task);
                    let full = core.routes.get(&key).is_some_and(|tx| tx.try_send(ToPeer::Down(msg)).is_err());
                    if full {
                        warn!(peer = %key.0, task = %key.1, "peer does not read its control stream: dropped");
                        core.routes.remove(&key);
                    }
                }
                Action::PeerReported { peer, task, strikes } => {
                    warn!(peer = %peer, task = %task, strikes, "peer reported bad: no longer used as a parent");
                    self.metrics.bad_peers.inc();
                }
                Action::TaskIdle { .. } => {}
            }
        }
        self.metrics.tasks.set(core.scheduler.task_count() as i64);
        self.metrics.peers.set(core.scheduler.peer_count() as i64);
    }

    /// Routes the scheduler's messages for (`peer`, `task`) to `tx`.
    pub fn attach(&self, peer: &PeerId, task: &TaskId, tx: mpsc::Sender<ToPeer>) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.routes.insert((peer.clone(), task.clone()), tx);
    }

    /// Removes the route for (`peer`, `task`) if it is still `tx`'s: a control stream of a
    /// connection that died late (a daemon restarted, its old connection timing out after it
    /// registered again) must not take away the route of the new one.
    pub fn detach(&self, peer: &PeerId, task: &TaskId, tx: &mpsc::Sender<ToPeer>) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let key = (peer.clone(), task.clone());
        if core.routes.get(&key).is_some_and(|current| current.same_channel(tx)) {
            core.routes.remove(&key);
        }
    }

    /// Runs `f` on the scheduler (read-only views for the API).
    pub fn with_scheduler<R>(&self, f: impl FnOnce(&Scheduler) -> R) -> R {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        f(&core.scheduler)
    }
}

/// A running supernode's bound addresses.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// QUIC address actually bound.
    pub quic: std::net::SocketAddr,
    /// HTTP address actually bound.
    pub http: std::net::SocketAddr,
}

/// Starts the supernode; returns once it listens. It stops when `shutdown` turns true.
pub async fn start(
    config: SupernodeConfig,
    shutdown: ShutdownSignal,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<()>)> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let ca = match (&config.ca_cert, &config.ca_key) {
        (Some(c), Some(k)) => ClusterCa::load(c, k)?,
        _ => ClusterCa::load_or_generate(&config.data_dir.join("tls"))?,
    };
    let tokens = auth::Tokens::load(&config, &ca)?;
    let tickets = damselfly_net::ticket::TicketSigner::from_ca(&ca)?;
    let ticket_verifier = damselfly_net::ticket::TicketVerifier::from_ca_cert(&ca.cert_der())?;
    let origins = origin_client(&config)?;
    let metrics = metrics::Metrics::new();
    let quota = config.cache_quota.map(|q| q.as_u64());
    let origin_limits = origin::limits::OriginLimits::new(&config, &metrics.rate, metrics.origin_fetch_gauges.clone());
    let shared = Arc::new(Shared {
        origin_limits,
        tokens,
        cache: cache::Cache::open(&config.data_dir, quota, metrics.cache.clone())?,
        metrics,
        origins,
        ca,
        preheat: preheat::Preheats::default(),
        admissions: admission::Admissions::new(config.auth_ttl),
        tickets,
        ticket_verifier,
        started: Instant::now(),
        core: Mutex::new(Core {
            scheduler: Scheduler::new(config.scheduler.clone()),
            stats: status::Stats::default(),
            routes: HashMap::new(),
        }),
        peer_conns: Mutex::new(HashMap::new()),
        peer_addrs: Mutex::new(HashMap::new()),
        config,
    });
    cache::gc::install(&shared);
    let endpoint = quic::bind(&shared)?;
    let listener = tokio::net::TcpListener::bind(shared.config.http_listen).await?;
    let bound = Bound { quic: endpoint.local_addr()?, http: listener.local_addr()? };
    info!(quic = %bound.quic, http = %bound.http, data_dir = %shared.config.data_dir.display(), "supernode listening");

    let handle = tokio::spawn(async move {
        let ticker = tokio::spawn(tick_loop(shared.clone()));
        // Cached tasks from before a restart: verified, then known to the scheduler again.
        let restore = tokio::spawn(cache::restore::run(shared.clone()));
        let gc = tokio::spawn(cache::gc::run(shared.clone()));
        let quic_task = tokio::spawn(quic::serve(shared.clone(), endpoint.clone(), shutdown.clone()));
        let http_task = tokio::spawn(http::serve(shared.clone(), listener, shutdown.clone()));
        let _ = http_task.await;
        let _ = quic_task.await;
        ticker.abort();
        restore.abort();
        gc.abort();
        shared.cache.persist_access_times();
        endpoint.close(0u32.into(), b"shutdown");
        endpoint.wait_idle().await;
    });
    Ok((bound, handle))
}

/// Runs the supernode until `shutdown` turns true.
pub async fn run(config: SupernodeConfig, shutdown: ShutdownSignal) -> anyhow::Result<()> {
    let (_, handle) = start(config, shutdown).await?;
    handle.await?;
    Ok(())
}

async fn tick_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    loop {
        interval.tick().await;
        shared.handle(Event::Tick);
    }
}

fn origin_client(config: &SupernodeConfig) -> anyhow::Result<origin::client::OriginClient> {
    let policy = origin::policy::OriginPolicy::new(&config.allow_origins).map_err(anyhow::Error::msg)?;
    if policy.is_allow_list() {
        info!(origins = %config.allow_origins.join(", "), "fetching only from the --allow-origin list");
    } else {
        info!("fetching from any origin except loopback, link-local and cloud metadata addresses");
    }
    let headers = ForwardHeaders::from_names(&config.forward_headers);
    Ok(origin::client::OriginClient::new(policy, headers, config.origin_connect_timeout)?)
}
