//! The daemon's local task store: the store both node kinds share ([`damselfly_store`]), opened
//! with [`Durability::EveryPiece`] so that every piece is recorded as it lands and a partial
//! download resumes after a restart. Pieces loaded from disk are hashed again before they are
//! read or uploaded; evictions and repairs reach the daemon as [`StoreEvent`]s
//! ([`crate::announce`]).

pub use damselfly_store::{
    ContentWriter, Durability, LocalTask, Piece, QuotaError, Store, StoreConfig, StoreError, StoreEvent, TaskFailure,
    TaskStatus, TaskView, METADATA_HEADROOM,
};

/// The daemon's store settings: `quota` bytes at most (`None`: unbounded), every piece recorded.
pub fn config(quota: Option<u64>) -> StoreConfig {
    StoreConfig { quota, durability: Durability::EveryPiece, ..StoreConfig::new("dfdaemon") }
}
