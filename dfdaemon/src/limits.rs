//! The daemon's bandwidth limits (`--download-rate`, `--upload-rate`, `--origin-rate`), each a
//! [`RateLimiter`] shared by every task and fair between them (see [`damselfly_net::rate`]).
//!
//! - **download**: every byte this daemon takes in for a task, from parents, the supernode and
//!   the origin fallback alike, so the limit is what the host's workloads can count on;
//! - **upload**: piece bytes served to other peers;
//! - **origin**: the origin fallback's share of the download, so a host that falls back spares
//!   the registry too. A fallback byte waits for both the origin and the download limit.

use damselfly_net::rate::{Flow, RateLimiter, RateMetrics};

use crate::config::DaemonConfig;

/// The three limiters; unlimited ones cost nothing.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Bytes received for tasks (swarm and origin fallback).
    pub download: RateLimiter,
    /// Piece bytes uploaded to other peers.
    pub upload: RateLimiter,
    /// Bytes fetched from the origin by the fallback.
    pub origin: RateLimiter,
}

impl Limits {
    /// The limits `config` asks for, shown by `metrics`.
    pub fn new(config: &DaemonConfig, metrics: &RateMetrics) -> Self {
        Self {
            download: metrics.limiter("download", config.download_rate),
            upload: metrics.limiter("upload", config.upload_rate),
            origin: metrics.limiter("origin", config.origin_rate),
        }
    }

    /// The limits as registrations tell the supernode (for its status page).
    pub fn to_proto(&self) -> damselfly_proto::Limits {
        let rate = |l: &RateLimiter| l.limit().unwrap_or(0);
        damselfly_proto::Limits {
            download_rate: rate(&self.download),
            upload_rate: rate(&self.upload),
            origin_rate: rate(&self.origin),
        }
    }

    /// The flows an origin fallback of `task` pays its bytes to.
    pub fn origin_flows(&self, task: &str) -> OriginFlows {
        OriginFlows { origin: self.origin.flow(task), download: self.download.flow(task) }
    }
}

/// An origin fallback's place under both the origin and the download limit.
#[derive(Clone, Debug)]
pub struct OriginFlows {
    origin: Flow,
    download: Flow,
}

impl OriginFlows {
    /// Returns once `bytes` just received from the origin fit under both limits.
    pub async fn take(&self, bytes: u64) {
        self.origin.take(bytes).await;
        self.download.take(bytes).await;
    }
}
