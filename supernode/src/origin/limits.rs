//! The supernode's origin limits: a bandwidth limit shared by every origin fetch (fair between
//! tasks, [`damselfly_net::rate`]) and a cap on the fetches running at once. A fetch over
//! the cap waits for a slot, in arrival order; it does not fail.
//!
//! While a fetch waits (for a slot, or under the bandwidth limit) its peers would see no piece
//! land and, after their stall timeout, fetch the origin themselves: exactly the load the
//! limits exist to prevent. So while a fetch runs under limits, every peer registered for the
//! task gets a `Waiting` message every [`WAITING_EVERY`], which keeps it waiting for the swarm
//! (the supernode is alive and working on the task). The scheduler needs no change: a task
//! whose origin fetch is queued simply has no pieces yet.

use std::sync::Arc;
use std::time::Duration;

use damselfly_net::rate::{RateLimiter, RateMetrics};
use damselfly_types::id::TaskId;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::SupernodeConfig;
use crate::{Shared, ToPeer};

/// How often the peers of a fetch that runs under limits hear that it is still waiting; well
/// under the daemons' stall timeout (6 s).
pub const WAITING_EVERY: Duration = Duration::from_secs(2);

/// The origin bandwidth limit and the cap on concurrent fetches.
pub struct OriginLimits {
    /// Bytes per second from origins, all fetches together.
    pub rate: RateLimiter,
    slots: Option<Arc<Semaphore>>,
    /// Fetches running (holding a slot) and waiting for one.
    pub gauges: FetchGauges,
}

/// Origin fetches running and queued, for `/metrics` and the status page.
#[derive(Clone, Debug, Default)]
pub struct FetchGauges {
    /// Fetches running now.
    pub running: Gauge,
    /// Fetches waiting for a slot.
    pub queued: Gauge,
    /// The cap (0: none).
    pub cap: Gauge,
}

impl OriginLimits {
    /// The limits `config` asks for, shown by the given metrics.
    pub fn new(config: &SupernodeConfig, rate_metrics: &RateMetrics, gauges: FetchGauges) -> Self {
        let slots = config.max_origin_fetches.map(|n| Arc::new(Semaphore::new(n)));
        gauges.cap.set(config.max_origin_fetches.unwrap_or(0) as i64);
        Self { rate: rate_metrics.limiter("origin", config.origin_rate), slots, gauges }
    }

    /// True when any origin limit is configured.
    pub fn any(&self) -> bool {
        self.slots.is_some() || self.rate.limit().is_some()
    }

    /// Waits for a fetch slot (at once without a cap); the fetch runs while the slot is held.
    pub async fn admit(&self) -> FetchSlot {
        let permit = match &self.slots {
            None => None,
            Some(slots) => {
                self.gauges.queued.inc();
                let permit = slots.clone().acquire_owned().await.ok();
                self.gauges.queued.dec();
                permit
            }
        };
        self.gauges.running.inc();
        FetchSlot { _permit: permit, running: self.gauges.running.clone() }
    }
}

/// A running fetch's slot; released when dropped.
pub struct FetchSlot {
    _permit: Option<OwnedSemaphorePermit>,
    running: Gauge,
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.running.dec();
    }
}

impl Shared {
    /// Tells every peer registered for `task` that its origin fetch is waiting for the limits.
    fn tell_waiting(&self, task: &TaskId, queued: bool) {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        for ((_, t), tx) in &core.routes {
            if t == task {
                // A full queue means the peer is behind anyway; it has messages to read.
                let _ = tx.try_send(ToPeer::Waiting(damselfly_proto::Waiting { queued }));
            }
        }
    }
}

/// While a fetch runs under limits, tells its peers every [`WAITING_EVERY`] that it is still
/// waiting (`queued` until it holds a slot). Runs until aborted.
pub async fn keep_peers_waiting(shared: Arc<Shared>, task: TaskId, queued: Arc<std::sync::atomic::AtomicBool>) {
    let mut every = tokio::time::interval(WAITING_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        shared.tell_waiting(&task, queued.load(std::sync::atomic::Ordering::Relaxed));
    }
}
