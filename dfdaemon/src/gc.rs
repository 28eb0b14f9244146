//! The cache's periodic housekeeping ([`damselfly_store::Store::housekeeping`]): access times
//! reach the metadata, and with a TTL (`--cache-ttl`) finished tasks nobody read for that long
//! are evicted. Quota evictions happen inline, when a download needs room; every eviction is
//! reported to the supernode ([`crate::announce`]).

use std::sync::Arc;

use crate::Daemon;

/// Runs until aborted.
pub async fn run(daemon: Arc<Daemon>) {
    daemon.store.housekeeping(daemon.config.cache_ttl).await;
}
