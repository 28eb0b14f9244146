//! The supernode's side of the cache quota and TTL (the algorithm is the store's:
//! [`damselfly_store::EvictionGuard`]).
//!
//! A task is "in use", and not evicted, while a control stream of a downloading peer, an upload
//! or a preheat job holds its entry (the store sees those), while it is a restored copy not
//! verified yet, and while the scheduler has a downloader for it. An evicted task is forgotten by
//! the scheduler too ([`damselfly_scheduler::Scheduler::forget_task`]), under the same lock as
//! its removal, so the next registration fetches it from the origin again.

use std::sync::{Arc, Weak};

use damselfly_store::{Evict, EvictionGuard};
use damselfly_types::id::TaskId;

use crate::Shared;

/// The scheduler's say in evictions.
struct SchedulerGuard(Weak<Shared>);

impl EvictionGuard for SchedulerGuard {
    fn evict(&self, id: &TaskId, remove: &mut dyn FnMut() -> bool) -> Evict {
        let Some(shared) = self.0.upgrade() else { return Evict::Busy };
        if shared.cache.is_restoring(id) {
            return Evict::Busy;
        }
        let now = shared.started.elapsed();
        let mut core = shared.core.lock().unwrap_or_else(|e| e.into_inner());
        if core.scheduler.has_downloaders(id) {
            return Evict::Busy;
        }
        // Under the scheduler's lock: no registration can join the task meanwhile, and one that
        // comes later finds no entry and starts a new fetch.
        if !remove() {
            return Evict::Raced;
        }
        core.scheduler.forget_task(now, id);
        Evict::Removed
    }
}

/// Gives the scheduler its say in the cache's evictions.
pub fn install(shared: &Arc<Shared>) {
    shared.cache.store().set_eviction_guard(Arc::new(SchedulerGuard(Arc::downgrade(shared))));
}

/// Housekeeping until aborted: access times reach the metadata, expired tasks are evicted.
pub async fn run(shared: Arc<Shared>) {
    shared.cache.store().housekeeping(shared.config.cache_ttl).await;
}
