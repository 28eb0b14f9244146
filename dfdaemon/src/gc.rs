//! The cache's periodic housekeeping: access times reach the metadata, and with a TTL
//! (`--cache-ttl`) finished tasks nobody read for that long are evicted. Quota evictions happen
//! inline, when a download needs room ([`crate::storage`]); every eviction is reported to the
//! supernode ([`crate::announce`]).

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::Daemon;

/// Longest pause between two rounds.
const PERIOD: Duration = Duration::from_secs(30);

/// Runs until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    let ttl = daemon.config.cache_ttl;
    let period = ttl.map_or(PERIOD, |t| (t / 4).clamp(Duration::from_millis(200), PERIOD));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let store = &daemon.store;
        store.persist_access_times();
        if let Some(ttl) = ttl {
            let n = store.evict_expired(ttl);
            if n > 0 {
                info!(evicted = n, ttl = %humantime::format_duration(ttl), "expired tasks evicted");
            }
        }
    }
}
