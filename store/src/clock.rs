//! The store's clock: time is an input, so that LRU and TTL tests move it instead of sleeping.
//!
//! The store reads the time only to stamp accesses ([`crate::LocalTask`]'s last access, which LRU
//! eviction and the TTL go by) and to find the TTL's cutoff. Nodes pass [`SystemClock`]; tests pass
//! a [`ManualClock`] and [`ManualClock::advance`] it.
//!
//! ```
//! use std::time::Duration;
//! use damselfly_store::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance(Duration::from_millis(250));
//! assert_eq!(clock.now_ms(), 1_250);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in milliseconds since the Unix epoch (what
/// [`crate::meta::TaskRecord::last_access_ms`] stores).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests). Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `ms` milliseconds since the Unix epoch.
    pub fn new(ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(ms)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The system clock, shared (what a store uses unless told otherwise).
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}
