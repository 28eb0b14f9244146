//! Forgetting a task whose content the supernode evicted from its cache.
//!
//! The scheduler treats every landed piece as servable by the supernode. Once the cache drops a
//! task, that must stop: the task is removed (its seeds with it), so that the next registration
//! starts a new origin fetch and the scheduler learns the pieces again as they land. The cache
//! only evicts a task nobody is downloading, so only seeds are dropped; they keep their copy and
//! are known again when they re-register.

use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::Core;

impl Core {
    /// True when a peer of `task` is still downloading it (such a task must not be forgotten).
    pub(crate) fn has_downloaders(&self, task: &TaskId) -> bool {
        self.tasks.get(task).is_some_and(|t| t.members().any(|(_, m)| !m.done))
    }

    /// Forgets `task` and its seeds (no-op for an unknown task). Returns false, changing nothing,
    /// when a peer is still downloading it.
    pub(crate) fn forget_task(&mut self, now: Duration, task: &TaskId) -> bool {
        if self.has_downloaders(task) {
            return false;
        }
        let seeds: Vec<PeerId> =
            self.tasks.get(task).map(|t| t.members().map(|(_, m)| m.id.clone()).collect()).unwrap_or_default();
        let mut out = Vec::new();
        for peer in seeds {
            // Seeds only: nothing to assign to anyone, so the actions are empty.
            self.peer_left(now, task, &peer, &mut out);
        }
        self.tasks.remove(task);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Piece, PieceMeta, Scheduler, SchedulerConfig};
    use super::*;

    #[test]
    fn a_forgotten_task_starts_over_and_downloaders_protect_it() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let t = TaskId::new(format!("sha256:{}", "ab".repeat(32)));
        let now = Duration::ZERO;
        let (seed, child) = (PeerId::new("seed"), PeerId::new("child"));
        s.on_event(now, Event::TaskStarted { task: t.clone(), content_length: Some(4), piece_size: 4 });
        let piece = PieceMeta { number: 0, piece: Piece { offset: 0, size: 4, sha256: [1; 32] } };
        s.on_event(now, Event::PieceLanded { task: t.clone(), piece });
        s.on_event(now, Event::OriginComplete { task: t.clone(), total_pieces: 1, content_length: 4 });
        let addr = "127.0.0.1:1".parse().unwrap();
        s.on_event(now, Event::PeerJoined { task: t.clone(), peer: child.clone(), addr, have: vec![] });
        assert!(s.has_downloaders(&t));
        assert!(!s.forget_task(now, &t));
        s.on_event(now, Event::PeerLeft { task: t.clone(), peer: child });
        s.on_event(now, Event::PeerJoined { task: t.clone(), peer: seed.clone(), addr, have: vec![0] });
        s.on_event(now, Event::PeerDone { task: t.clone(), peer: seed });
        assert!(s.forget_task(now, &t));
        assert!(s.task_summary(&t).is_none());
        assert_eq!(s.peer_count(), 0);
    }
}
