//! Damselfly's on-disk store, one implementation for both node kinds: the supernode's cache of
//! origin content and every dfdaemon's local store.
//!
//! One content file per task under `DATA_DIR/tasks/`, pieces written at their offsets, metadata
//! in RocksDB under `DATA_DIR/meta` ([`meta`]), and each task's progress in a `watch` channel so
//! that readers (dfget streams, the registry mirror, preheat jobs, uploads to other peers) follow
//! it as pieces land ([`LocalTask`]).
//!
//! # What differs between the node kinds
//! Two values of [`StoreConfig`] and one hook, nothing else:
//! * [`Durability`]: the dfdaemon records every piece as it lands and resumes partial tasks after
//!   a restart ([`Durability::EveryPiece`]); the supernode fetches whole bodies, so it records a
//!   task only once it is complete ([`LocalTask::complete`]) and deletes partial content at
//!   startup ([`Durability::Complete`]).
//! * [`StoreConfig::node`]: the node's name in quota errors, logs and the flusher thread's name.
//! * [`EvictionGuard`]: what "in use" means beyond the store. The store sees this node's readers,
//!   uploads and downloads; the supernode's guard adds the peers the scheduler has downloading a
//!   task, and makes the scheduler forget a task it evicts.
//!
//! # Durability
//! * A piece becomes present in memory (and servable) once its bytes were verified against the
//!   supernode's sha256 and written. With [`Durability::EveryPiece`] it becomes present *on disk*
//!   a moment later: a flusher thread `fdatasync`s the content files that received pieces, then
//!   writes the present rows of every piece written before the sync in one RocksDB batch (group
//!   commit: the cost of a sync is shared by every piece that landed while the previous one ran).
//!   After `kill -9` at any moment a present row therefore always describes bytes on disk;
//!   pieces whose rows were not written yet are fetched again.
//! * The piece table (with the supernode's sha256) is written as it is announced; the task record
//!   (URL without credentials, digest, sizes, state, last access, bytes) on every change of its
//!   fields. Request headers are never stored.
//! * Restart ([`Store::open_with`]) loads every task: finished ones come back at once (their
//!   pieces unverified), partial ones are resumed by the dfdaemon.
//!
//! # Verification on load
//! Pieces loaded from disk are not trusted until hashed again in this process ([`verify`]): only
//! verified pieces are uploaded ([`Store::prepare_upload`] verifies first), every read
//! ([`LocalTask::read_at`]) first hashes the pieces it touches that were not verified yet (once
//! per piece per process), and resuming a partial task hashes all its present pieces
//! ([`LocalTask::present_pieces`]). The supernode verifies its restored tasks eagerly, piece by
//! piece ([`LocalTask::ensure_verified`]). A piece whose bytes do not match is dropped and fetched
//! again ([`StoreEvent::Repair`]); readers wait for it instead of failing.
//!
//! # Quota and TTL
//! With a quota, every task is charged its content length when the length becomes known (its
//! high-water mark when the origin sent none) and the least recently used finished tasks that
//! nobody reads, uploads or downloads are evicted to make room ([`StoreEvent::Evicted`]). A task
//! that cannot fit fails with [`QuotaError`] instead of filling the disk. A TTL evicts the same
//! tasks once unused for that long ([`Store::housekeeping`]). Time is an input ([`clock`]).

pub mod cache_metrics;
pub mod clock;
mod durable;
pub mod meta;
mod quota;
mod read;
mod restore;
mod store;
mod task;
pub mod verify;
mod write;

pub use damselfly_types::piece::Piece;
pub use quota::{Evict, EvictionGuard, QuotaError};
pub use read::read_exact_at;
pub use store::{Durability, Store, StoreConfig, StoreError, StoreEvent, METADATA_HEADROOM};
pub use task::{LocalTask, TaskFailure, TaskStatus, TaskView};
pub use write::ContentWriter;

#[cfg(test)]
mod tests;
