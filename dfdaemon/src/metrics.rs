//! The dfdaemon's Prometheus metrics, all in one place (`damselfly_dfdaemon_*`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use damselfly_net::rate::RateMetrics;
pub use damselfly_store::cache_metrics::CacheMetrics;

/// Where downloaded bytes came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `peer`, `supernode` or `origin`.
    pub source: &'static str,
}

/// Counters and gauges the daemon exports on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    registry: Registry,
    /// Verified piece bytes received, by source.
    pub download_bytes: Family<SourceLabel, Counter>,
    /// Piece bytes uploaded to other peers.
    pub upload_bytes: Counter,
    /// Piece requests refused for a missing or invalid ticket.
    pub refused_piece_requests: Counter,
    /// Pieces whose bytes did not match the supernode's sha256.
    pub bad_pieces: Counter,
    /// Piece transfers that failed (connection, timeout, refusal).
    pub failed_transfers: Counter,
    /// Tasks completed.
    pub tasks_completed: Counter,
    /// Tasks failed.
    pub tasks_failed: Counter,
    /// Tasks being downloaded now.
    pub tasks_running: Gauge,
    /// Cache usage, quota and evictions.
    pub cache: CacheMetrics,
    /// Bandwidth limits and the time spent waiting for them (`damselfly_dfdaemon_rate_*`).
    pub rate: RateMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Self::default();
        let r = &mut m.registry;
        r.register("damselfly_dfdaemon_download_bytes", "Verified bytes received, by source", m.download_bytes.clone());
        r.register("damselfly_dfdaemon_upload_bytes", "Piece bytes uploaded to other peers", m.upload_bytes.clone());
        r.register(
            "damselfly_dfdaemon_refused_piece_requests",
            "Piece requests refused for a missing or invalid ticket",
            m.refused_piece_requests.clone(),
        );
        r.register("damselfly_dfdaemon_bad_pieces", "Pieces that failed sha256 verification", m.bad_pieces.clone());
        r.register("damselfly_dfdaemon_failed_transfers", "Piece transfers that failed", m.failed_transfers.clone());
        r.register("damselfly_dfdaemon_tasks_completed", "Tasks completed", m.tasks_completed.clone());
        r.register("damselfly_dfdaemon_tasks_failed", "Tasks failed", m.tasks_failed.clone());
        r.register("damselfly_dfdaemon_tasks_running", "Tasks being downloaded", m.tasks_running.clone());
        m.cache.register(r, "dfdaemon");
        m.rate.register(r, "dfdaemon");
        m
    }

    /// Counts `n` verified bytes from `source`.
    pub fn downloaded(&self, source: &'static str, n: u64) {
        self.download_bytes.get_or_create(&SourceLabel { source }).inc_by(n);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
