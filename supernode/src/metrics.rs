//! The supernode's Prometheus metrics, all in one place (`damselfly_supernode_*`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use damselfly_net::rate::RateMetrics;
pub use damselfly_store::cache_metrics::CacheMetrics;

use crate::origin::limits::FetchGauges;

/// Who served delivered bytes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `peer` or `supernode`.
    pub source: &'static str,
}

/// Counters and gauges the supernode exports on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    /// Body bytes received from origins.
    pub origin_bytes: Counter,
    /// Origin fetches started (one per task, however many peers asked).
    pub origin_fetches: Counter,
    /// Origin fetches that failed.
    pub origin_failures: Counter,
    /// Piece bytes uploaded by the supernode to peers.
    pub upload_bytes: Counter,
    /// Pieces uploaded to peers.
    pub upload_pieces: Counter,
    /// Piece bytes peers reported receiving, by who served them (the swarm's delivery; with
    /// `origin_bytes`, the origin offload).
    pub delivered_bytes: Family<SourceLabel, Counter>,
    /// Tasks known to the scheduler.
    pub tasks: Gauge,
    /// Peers connected.
    pub peers: Gauge,
    /// Piece failures reported by peers (bad digest or transfer).
    pub piece_failure_reports: Counter,
    /// Peers reported as bad (no longer used as parents).
    pub bad_peers: Counter,
    /// Peers enrolled (certificates issued).
    pub enrollments: Counter,
    /// Enrollments refused (no or wrong join token).
    pub enrollments_refused: Counter,
    /// Peer certificates renewed.
    pub renewals: Counter,
    /// Registrations the origin's verdict refused (the host's credentials do not read the
    /// content).
    pub admissions_refused: Counter,
    /// Piece requests refused for a missing or invalid ticket.
    pub refused_piece_requests: Counter,
    /// Cache usage, quota and evictions.
    pub cache: CacheMetrics,
    /// The origin bandwidth limit and the time fetches waited for it (`damselfly_supernode_rate_*`).
    pub rate: RateMetrics,
    /// Origin fetches running, queued for a slot, and the cap.
    pub origin_fetch_gauges: FetchGauges,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self::default();
        let r = &mut m.registry;
        r.register("damselfly_supernode_origin_bytes", "Body bytes received from origins", m.origin_bytes.clone());
        r.register("damselfly_supernode_origin_fetches", "Origin fetches started", m.origin_fetches.clone());
        r.register("damselfly_supernode_origin_failures", "Origin fetches that failed", m.origin_failures.clone());
        r.register("damselfly_supernode_upload_bytes", "Piece bytes uploaded to peers", m.upload_bytes.clone());
        r.register("damselfly_supernode_upload_pieces", "Pieces uploaded to peers", m.upload_pieces.clone());
        r.register(
            "damselfly_supernode_delivered_bytes",
            "Piece bytes peers reported receiving, by source (peer or supernode)",
            m.delivered_bytes.clone(),
        );
        r.register("damselfly_supernode_tasks", "Tasks known to the scheduler", m.tasks.clone());
        r.register("damselfly_supernode_peers", "Peers connected", m.peers.clone());
        r.register(
            "damselfly_supernode_piece_failure_reports",
            "Piece failures reported by peers",
            m.piece_failure_reports.clone(),
        );
        r.register("damselfly_supernode_bad_peers", "Peers reported as bad", m.bad_peers.clone());
        r.register("damselfly_supernode_enrollments", "Peer certificates issued", m.enrollments.clone());
        r.register(
            "damselfly_supernode_enrollments_refused",
            "Enrollments refused for a missing or wrong join token",
            m.enrollments_refused.clone(),
        );
        r.register("damselfly_supernode_renewals", "Peer certificates renewed", m.renewals.clone());
        r.register(
            "damselfly_supernode_admissions_refused",
            "Registrations refused because the origin did not accept the host's credentials",
            m.admissions_refused.clone(),
        );
        r.register(
            "damselfly_supernode_refused_piece_requests",
            "Piece requests refused for a missing or invalid ticket",
            m.refused_piece_requests.clone(),
        );
        m.cache.register(r, "supernode");
        m.rate.register(r, "supernode");
        let g = &m.origin_fetch_gauges;
        r.register("damselfly_supernode_origin_fetches_running", "Origin fetches running now", g.running.clone());
        r.register(
            "damselfly_supernode_origin_fetches_queued",
            "Origin fetches waiting for a slot (max_origin_fetches)",
            g.queued.clone(),
        );
        r.register(
            "damselfly_supernode_origin_fetches_limit",
            "Cap on concurrent origin fetches (0: none)",
            g.cap.clone(),
        );
        m
    }

    /// Counts `bytes` a peer reported receiving from the supernode or from another peer.
    pub fn delivered(&self, from_supernode: bool, bytes: u64) {
        let source = if from_supernode { "supernode" } else { "peer" };
        self.delivered_bytes.get_or_create(&SourceLabel { source }).inc_by(bytes);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
