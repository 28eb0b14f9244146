//! Damselfly's on-disk store, shared by the supernode's cache and every dfdaemon: RocksDB
//! metadata ([`meta`]) and the cache metrics both node kinds export ([`cache_metrics`]).

pub mod cache_metrics;
pub mod meta;
