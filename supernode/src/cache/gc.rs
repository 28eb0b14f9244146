//! The supernode's disk quota and TTL.
//!
//! Every task is charged its content length when the origin announces it (its high-water mark
//! when the origin announces none) before its bytes are written; when that exceeds the quota,
//! the least recently used complete tasks that nobody uses are evicted first. "Nobody uses" means
//! no control stream of a downloading peer holds the entry, no upload is reading its file, no
//! preheat job holds it and the scheduler has no downloader for it. An evicted task is forgotten
//! by the scheduler too ([`damselfly_scheduler::Scheduler::forget_task`]), so the next registration
//! fetches it from the origin again. A fetch that cannot fit fails with a clear error.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use damselfly_store::meta::now_ms;
use damselfly_types::id::TaskId;
use damselfly_types::size::ByteSize;
use tracing::info;

use super::{CacheState, CachedTask};
use crate::Shared;

/// Longest pause between two housekeeping rounds.
const PERIOD: Duration = Duration::from_secs(30);

/// A fetch that does not fit in the cache quota.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaError {
    /// The task alone is larger than the whole quota.
    #[error("the task needs {}, more than the supernode's whole cache quota of {}", ByteSize(*needed), ByteSize(*quota))]
    TooLarge {
        /// Bytes the task needs.
        needed: u64,
        /// The quota.
        quota: u64,
    },
    /// Not enough room even after evicting every idle complete task.
    #[error(
        "supernode cache quota exceeded: the task needs {} more but only {} of the {} quota are free \
         and every other task is in use",
        ByteSize(*needed), ByteSize(*free), ByteSize(*quota)
    )]
    Full {
        /// Bytes needed beyond what the task holds.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The quota.
        quota: u64,
    },
}

impl Shared {
    /// Raises `entry`'s charge to `total` bytes, evicting idle complete tasks (least recently
    /// used first) to make room.
    pub fn reserve_cache(&self, entry: &CachedTask, total: u64) -> std::io::Result<()> {
        let cache = &self.cache;
        let mut used = cache.used.lock().unwrap_or_else(|e| e.into_inner());
        let current = entry.charged();
        if total <= current {
            return Ok(());
        }
        let delta = total - current;
        if let Some(limit) = cache.quota {
            if total > limit {
                return Err(std::io::Error::other(QuotaError::TooLarge { needed: total, quota: limit }));
            }
            while *used + delta > limit {
                if !self.evict_one(&mut used, &|t| t.id != entry.id) {
                    let free = limit.saturating_sub(*used);
                    return Err(std::io::Error::other(QuotaError::Full { needed: delta, free, quota: limit }));
                }
            }
        }
        *used += delta;
        entry.charged.store(total, Ordering::Relaxed);
        cache.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Evicts the least recently used idle complete task matching `pred`; false when none.
    fn evict_one(&self, used: &mut u64, pred: &dyn Fn(&CachedTask) -> bool) -> bool {
        let cache = &self.cache;
        let idle = |t: &Arc<CachedTask>| {
            t.state() == CacheState::Complete && Arc::strong_count(t) == 1 && Arc::strong_count(&t.file) == 1
        };
        let mut busy: HashSet<TaskId> = HashSet::new();
        loop {
            let victim = cache
                .tasks
                .iter()
                .filter(|t| !busy.contains(&t.id) && pred(t) && idle(t.value()))
                .min_by_key(|t| t.last_access.load(Ordering::Relaxed))
                .map(|t| t.id.clone());
            let Some(id) = victim else { return false };
            let now = self.started.elapsed();
            let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
            if core.scheduler.has_downloaders(&id) {
                busy.insert(id);
                continue;
            }
            // Re-checked under the map's lock: no registration can take the entry meanwhile, and
            // one that comes later finds no entry and starts a new fetch.
            let Some((_, task)) = cache.tasks.remove_if(&id, |_, t| idle(t)) else { continue };
            core.scheduler.forget_task(now, &id);
            drop(core);
            cache.delete(&task);
            let charged = task.charged.swap(0, Ordering::Relaxed);
            *used = used.saturating_sub(charged);
            cache.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
            cache.metrics.evictions.inc();
            info!(task = %id, bytes = charged, "evicted from the cache");
            return true;
        }
    }

    /// Evicts idle complete tasks not accessed for `ttl`; returns how many.
    pub fn evict_expired(&self, ttl: Duration) -> usize {
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        let mut used = self.cache.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while self.evict_one(&mut used, &|t| t.last_access.load(Ordering::Relaxed) < cutoff) {
            n += 1;
        }
        n
    }
}

impl super::Cache {
    /// Releases `task`'s whole charge (it was deleted).
    pub(super) fn release(&self, task: &CachedTask) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(task.charged.swap(0, Ordering::Relaxed));
        self.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
    }
}

/// Housekeeping until aborted: access times reach the metadata, expired tasks are evicted.
pub async fn run(shared: Arc<Shared>) {
    let ttl = shared.config.cache_ttl;
    let period = ttl.map_or(PERIOD, |t| (t / 4).clamp(Duration::from_millis(200), PERIOD));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.cache.persist_access_times();
        if let Some(ttl) = ttl {
            let n = shared.evict_expired(ttl);
            if n > 0 {
                info!(evicted = n, "expired tasks evicted");
            }
        }
    }
}
