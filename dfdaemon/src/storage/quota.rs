//! The disk quota: charging tasks and evicting the least recently used idle finished ones.
//!
//! A task is charged its content length as soon as the length is known (its high-water mark
//! when the origin announced none), before any byte is written, so the content never exceeds the
//! quota even while many downloads run at once. Only finished tasks that nobody holds (no reader,
//! no upload in flight, no download) can be evicted.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use damselfly_types::size::ByteSize;
use tracing::info;

use super::{Inner, LocalTask, StoreEvent};

/// A task that does not fit in the cache quota.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaError {
    /// The task alone is larger than the whole quota.
    #[error("the task needs {}, more than the whole cache quota of {}: raise --cache-quota", ByteSize(*needed), ByteSize(*quota))]
    TooLarge {
        /// Bytes the task needs.
        needed: u64,
        /// The quota.
        quota: u64,
    },
    /// Not enough room even after evicting every idle finished task.
    #[error(
        "cache quota exceeded: the task needs {} more but only {} of the {} quota are free and every \
         other task is being downloaded or served; retry later or raise --cache-quota",
        ByteSize(*needed), ByteSize(*free), ByteSize(*quota)
    )]
    Full {
        /// Bytes the task needs beyond what it already holds.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The quota.
        quota: u64,
    },
}

/// Bytes charged so far, against an optional limit.
pub(super) struct Quota {
    limit: Option<u64>,
    used: Mutex<u64>,
}

impl Quota {
    pub(super) fn new(limit: Option<u64>) -> Self {
        Self { limit, used: Mutex::new(0) }
    }

    pub(super) fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set_used(&self, n: u64) {
        *self.used.lock().unwrap_or_else(|e| e.into_inner()) = n;
    }
}

impl Inner {
    /// Raises `task`'s charge to `total` bytes, evicting idle finished tasks (least recently
    /// used first) to make room.
    pub(super) fn charge(&self, task: &LocalTask, total: u64) -> Result<(), QuotaError> {
        let mut used = self.quota.used.lock().unwrap_or_else(|e| e.into_inner());
        let current = task.charged();
        if total <= current {
            return Ok(());
        }
        let delta = total - current;
        if let Some(limit) = self.quota.limit {
            if total > limit {
                return Err(QuotaError::TooLarge { needed: total, quota: limit });
            }
            let mut waited = false;
            while *used + delta > limit {
                if self.evict_one(&mut used, &|t| t.id != task.id) {
                    continue;
                }
                if waited {
                    return Err(QuotaError::Full { needed: delta, free: limit.saturating_sub(*used), quota: limit });
                }
                // The flusher holds the tasks it is syncing for a moment: let it finish, retry.
                self.flusher.barrier();
                waited = true;
            }
        }
        *used += delta;
        task.record.lock().unwrap_or_else(|e| e.into_inner()).bytes = total;
        self.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Releases `task`'s whole charge (it was deleted).
    pub(super) fn release(&self, task: &LocalTask) {
        let mut used = self.quota.used.lock().unwrap_or_else(|e| e.into_inner());
        let charged = std::mem::take(&mut task.record.lock().unwrap_or_else(|e| e.into_inner()).bytes);
        *used = used.saturating_sub(charged);
        self.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
    }

    /// Evicts every idle finished task matching `pred`; returns how many.
    pub(super) fn evict_where(&self, pred: impl Fn(&LocalTask) -> bool) -> usize {
        let mut used = self.quota.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while self.evict_one(&mut used, &pred) {
            n += 1;
        }
        n
    }

    /// Evicts the least recently used idle finished task matching `pred`. Returns false when
    /// there is none.
    fn evict_one(&self, used: &mut u64, pred: &dyn Fn(&LocalTask) -> bool) -> bool {
        loop {
            let victim = self
                .tasks
                .iter()
                .filter(|t| t.is_done() && pred(t) && t.idle(t.value()))
                .min_by_key(|t| t.last_access.load(Ordering::Relaxed))
                .map(|t| t.id.clone());
            let Some(id) = victim else { return false };
            // Re-checked under the map's lock: nobody can take a new reference meanwhile.
            let Some((_, task)) = self.tasks.remove_if(&id, |_, t| t.is_done() && t.idle(t)) else {
                continue;
            };
            let (url, digest) = task.origin();
            self.delete(&task);
            let charged = std::mem::take(&mut task.record.lock().unwrap_or_else(|e| e.into_inner()).bytes);
            *used = used.saturating_sub(charged);
            self.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
            self.metrics.evictions.inc();
            info!(task = %id, bytes = charged, "evicted from the cache");
            let _ = self.events.send(StoreEvent::Evicted { id, url, digest });
            return true;
        }
    }
}
