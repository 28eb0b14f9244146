//! The disk quota: charging tasks and evicting the least recently used idle finished ones, for
//! both node kinds.
//!
//! A task is charged its content length as soon as the length is known (its high-water mark
//! when the origin announced none), before any byte is written, so the content never exceeds the
//! quota even while many downloads run at once. Only finished tasks that nobody holds (no reader,
//! no upload in flight, no download, nothing the node's [`EvictionGuard`] says it still needs) can
//! be evicted, least recently used first. The TTL evicts the same tasks once they were not used
//! for that long ([`crate::Store::evict_expired`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use damselfly_types::id::TaskId;
use damselfly_types::size::ByteSize;
use tracing::info;

use crate::store::{Inner, StoreEvent};
use crate::task::LocalTask;

/// A task that does not fit in the cache quota.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuotaError {
    /// The task alone is larger than the whole quota.
    #[error(
        "the task needs {}, more than the whole cache quota of {} on the {node}: raise its --cache-quota",
        ByteSize(*needed), ByteSize(*quota)
    )]
    TooLarge {
        /// The node kind whose quota it is (`supernode`, `dfdaemon`).
        node: &'static str,
        /// Bytes the task needs.
        needed: u64,
        /// The quota.
        quota: u64,
    },
    /// Not enough room even after evicting every idle finished task.
    #[error(
        "{node} cache quota exceeded: the task needs {} more but only {} of the {} quota are free and every \
         other task is being downloaded or served; retry later or raise --cache-quota",
        ByteSize(*needed), ByteSize(*free), ByteSize(*quota)
    )]
    Full {
        /// The node kind whose quota it is (`supernode`, `dfdaemon`).
        node: &'static str,
        /// Bytes the task needs beyond what it already holds.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The quota.
        quota: u64,
    },
}

/// What a node knows about its tasks beyond the store, asked before each eviction.
///
/// The store alone sees readers, uploads and downloads of *this* node (references to a task and
/// its file, the download claim). The supernode also must not evict a task while peers download
/// it through the scheduler, and must make the scheduler forget a task it evicts, atomically with
/// the removal; the dfdaemon needs nothing more ([`Store`](crate::Store) then just removes).
pub trait EvictionGuard: Send + Sync {
    /// The store chose `id` (least recently used, finished, idle). Return [`Evict::Busy`] when the
    /// node still uses it; otherwise call `remove`, which takes the task out of the store if it is
    /// still idle (re-checked under the store's map lock) and says whether it did, and return
    /// what it said. Runs under the quota's lock: do not call back into the store.
    fn evict(&self, id: &TaskId, remove: &mut dyn FnMut() -> bool) -> Evict;
}

/// What an [`EvictionGuard`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evict {
    /// The node uses the task: keep it and look for another.
    Busy,
    /// The task was removed from the store.
    Removed,
    /// Someone took the task meanwhile: keep it and look again.
    Raced,
}

/// Bytes charged so far, against an optional limit.
pub(crate) struct Quota {
    limit: Option<u64>,
    used: Mutex<u64>,
}

impl Quota {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self { limit, used: Mutex::new(0) }
    }

    pub(crate) fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_used(&self, n: u64) {
        *self.used.lock().unwrap_or_else(|e| e.into_inner()) = n;
    }
}

impl Inner {
    /// Raises `task`'s charge to `total` bytes, evicting idle finished tasks (least recently
    /// used first) to make room.
    pub(crate) fn charge(&self, task: &LocalTask, total: u64) -> Result<(), QuotaError> {
        let mut used = self.quota.used.lock().unwrap_or_else(|e| e.into_inner());
        let current = task.charged();
        if total <= current {
            return Ok(());
        }
        let delta = total - current;
        if let Some(limit) = self.quota.limit {
            let node = self.config.node;
            if total > limit {
                return Err(QuotaError::TooLarge { node, needed: total, quota: limit });
            }
            let mut waited = false;
            while *used + delta > limit {
                if self.evict_one(&mut used, &|t| t.id != task.id) {
                    continue;
                }
                if waited {
                    let free = limit.saturating_sub(*used);
                    return Err(QuotaError::Full { node, needed: delta, free, quota: limit });
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
    pub(crate) fn release(&self, task: &LocalTask) {
        let mut used = self.quota.used.lock().unwrap_or_else(|e| e.into_inner());
        self.uncharge(&mut used, task);
    }

    /// Takes `task`'s charge off `used`; returns it.
    fn uncharge(&self, used: &mut u64, task: &LocalTask) -> u64 {
        let charged = std::mem::take(&mut task.record.lock().unwrap_or_else(|e| e.into_inner()).bytes);
        *used = used.saturating_sub(charged);
        self.metrics.bytes.set(i64::try_from(*used).unwrap_or(i64::MAX));
        charged
    }

    /// Evicts every idle finished task matching `pred`; returns how many.
    pub(crate) fn evict_where(&self, pred: impl Fn(&LocalTask) -> bool) -> usize {
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
        let evictable = |t: &Arc<LocalTask>| t.is_done() && t.idle(t);
        let mut busy: HashSet<TaskId> = HashSet::new();
        loop {
            let victim = self
                .tasks
                .iter()
                .filter(|t| !busy.contains(&t.id) && pred(t) && evictable(t.value()))
                .min_by_key(|t| t.last_access_ms())
                .map(|t| t.id.clone());
            let Some(id) = victim else { return false };
            let mut removed = None;
            let mut remove = || {
                // Re-checked under the map's lock: nobody can take a new reference meanwhile.
                removed = self.tasks.remove_if(&id, |_, t| evictable(t)).map(|(_, t)| t);
                removed.is_some()
            };
            let verdict = match self.guard.get() {
                Some(guard) => guard.evict(&id, &mut remove),
                None if remove() => Evict::Removed,
                None => Evict::Raced,
            };
            let task = match (verdict, removed) {
                (Evict::Removed, Some(task)) => task,
                (Evict::Busy, _) => {
                    busy.insert(id);
                    continue;
                }
                _ => continue,
            };
            let (url, digest) = task.origin();
            self.delete(&task);
            let charged = self.uncharge(used, &task);
            self.metrics.evictions.inc();
            info!(task = %id, bytes = charged, "evicted from the cache");
            let _ = self.events.send(StoreEvent::Evicted { id, url, digest });
            return true;
        }
    }
}

impl LocalTask {
    /// Last read, upload, download or registration, ms since the epoch: LRU eviction and the TTL
    /// go by it.
    pub fn last_access_ms(&self) -> u64 {
        self.last_access.load(Ordering::Relaxed)
    }
}
