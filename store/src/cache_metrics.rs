//! The cache metrics both node kinds export (`damselfly_<component>_cache_*`), defined once.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The cache's metrics, shared with the cache that keeps them current.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    /// Bytes charged against the quota by the tasks held (content lengths, reserved up front).
    pub bytes: Gauge,
    /// The quota (0: unbounded).
    pub quota_bytes: Gauge,
    /// Tasks evicted (quota or TTL).
    pub evictions: Counter,
    /// Pieces on disk whose bytes did not match their sha256 (dropped, fetched again).
    pub corrupt_pieces: Counter,
}

impl CacheMetrics {
    /// Registers every metric as `damselfly_<component>_cache_*`.
    pub fn register(&self, registry: &mut Registry, component: &str) {
        let name = |what: &str| format!("damselfly_{component}_cache_{what}");
        registry.register(name("bytes"), "Bytes held in the cache (charged to the quota)", self.bytes.clone());
        registry.register(name("quota_bytes"), "Cache quota (0: unbounded)", self.quota_bytes.clone());
        registry.register(name("evictions"), "Tasks evicted from the cache", self.evictions.clone());
        registry.register(
            name("corrupt_pieces"),
            "Pieces on disk whose bytes did not match their sha256 (dropped, fetched again)",
            self.corrupt_pieces.clone(),
        );
    }
}
