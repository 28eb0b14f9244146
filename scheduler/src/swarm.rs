//! What the core does for image swarms (module `group`): a member that downloads only some of a
//! task's pieces (the blobs it registered for), gains or drops a blob's range of pieces, or is
//! done with one; a range forgotten when the supernode evicts its blob.

use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::assign::Fresh;
use super::events::flush;
use super::state::{Origin, Outbox, PieceState, TaskState};
use super::{Action, Core, Down, PeerSummary, PieceMeta, Shared};

/// A range of piece numbers, `start..end`.
pub(crate) type Span = (u32, u32);

impl Core {
    /// Whether `task` is known.
    pub(crate) fn has_task(&self, task: &TaskId) -> bool {
        self.tasks.contains_key(task)
    }

    /// `peer` downloads the pieces of `range` of `task` too (holding `have` of them already):
    /// it joins the task wanting only `range` if it is not a member yet. It is told the range's
    /// piece table, and its window is filled.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_wants(
        &mut self,
        now: Duration,
        id: &TaskId,
        peer: &PeerId,
        addr: SocketAddr,
        range: Span,
        have: &[u32],
        out: &mut Vec<Action>,
    ) {
        let Some(slot) = self.tasks.get(id).and_then(|t| self.shared.slot(t, peer)) else {
            self.peer_joined(now, id.clone(), peer.clone(), addr, have, Some(vec![range]), out);
            self.settle(now, out);
            return;
        };
        let Some(task) = self.tasks.get_mut(id) else { return };
        let Some(m) = task.member_mut(slot) else { return };
        let bad = self.shared.is_bad_gid(m.gid);
        m.add_wants(range);
        let mut fresh_held = Vec::new();
        for &p in have.iter().filter(|&&p| (range.0..range.1).contains(&p)) {
            if m.held.insert(p) {
                m.held_count += 1;
                fresh_held.push(p);
            }
        }
        task.mark_active(slot);
        let mut fresh = Fresh::default();
        fresh_held.retain(|&p| task.is_landed(p));
        if !bad && !fresh_held.is_empty() {
            fresh.peers.push(slot);
        }
        for p in fresh_held {
            task.add_holder(slot, p, bad);
        }
        let table: Vec<PieceMeta> = range_of(&task.pieces, range).iter().filter_map(|p| p.meta.clone()).collect();
        if !table.is_empty() {
            out.push(Action::Send { peer: peer.clone(), task: id.clone(), msg: Down::Pieces(table) });
        }
        let mut outbox = Outbox::default();
        self.shared.fill(task, slot, now, &mut outbox);
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
        self.finish(id, out);
        self.settle(now, out);
    }

    /// `peer` no longer downloads nor holds the pieces of `range` of `task` (it left that blob);
    /// it stays a member for its other ranges.
    pub(crate) fn drop_wants(&mut self, now: Duration, id: &TaskId, peer: &PeerId, range: Span, out: &mut Vec<Action>) {
        let Some(slot) = self.tasks.get(id).and_then(|t| self.shared.slot(t, peer)) else { return };
        let Some(task) = self.tasks.get_mut(id) else { return };
        let fresh = self.shared.unwant(task, slot, range);
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        self.shared.fill(task, slot, now, &mut outbox);
        flush(task, outbox, out);
        self.finish(id, out);
        self.settle(now, out);
    }

    /// Removes the pieces of `range` from `task` (their blob failed or was evicted): every
    /// member drops them (their assignments there end, their holdings go), and they are no
    /// longer landed. The members stay for their other ranges.
    pub(crate) fn remove_range(&mut self, now: Duration, id: &TaskId, range: Span, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(id) else { return };
        let slots: Vec<u32> = task
            .members()
            .filter(|(_, m)| m.wants.as_ref().is_some_and(|w| w.contains(&range)))
            .map(|(s, _)| s)
            .collect();
        let mut fresh = Fresh::default();
        for &slot in &slots {
            let freed = self.shared.unwant(task, slot, range);
            fresh.peers.extend(freed.peers);
            fresh.supernode |= freed.supernode;
        }
        self.forget_range(id, range);
        let Some(task) = self.tasks.get_mut(id) else { return };
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        for slot in slots {
            self.shared.fill(task, slot, now, &mut outbox);
        }
        flush(task, outbox, out);
        self.finish(id, out);
        self.settle(now, out);
    }

    /// `peer` holds every piece of `range` of `task` (it is done with that blob, however it got
    /// the bytes): its assignments there end and it serves the whole range.
    pub(crate) fn range_done(&mut self, now: Duration, id: &TaskId, peer: &PeerId, range: Span, out: &mut Vec<Action>) {
        let Some(slot) = self.tasks.get(id).and_then(|t| self.shared.slot(t, peer)) else { return };
        let Some(task) = self.tasks.get_mut(id) else { return };
        let mut fresh = Fresh::default();
        let assigned: Vec<u32> = task
            .member(slot)
            .map(|m| m.assigned.keys().copied().filter(|p| (range.0..range.1).contains(p)).collect())
            .unwrap_or_default();
        for piece in assigned {
            if let Some(source) = self.shared.release(task, slot, piece) {
                fresh.add_source(task, &source);
            }
        }
        let Some(m) = task.member_mut(slot) else { return };
        let bad = self.shared.is_bad_gid(m.gid);
        for p in range.0..range.1 {
            m.held_count += u32::from(m.held.insert(p));
        }
        for p in range.0..range.1 {
            task.add_holder(slot, p, bad);
        }
        if !bad {
            fresh.peers.push(slot);
        }
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        self.shared.fill(task, slot, now, &mut outbox);
        flush(task, outbox, out);
        self.settle(now, out);
    }

    /// More pieces will land in `task` (a blob joined its image swarm after the others had
    /// all landed).
    pub(crate) fn reopen(&mut self, id: &TaskId) {
        if let Some(task) = self.tasks.get_mut(id) {
            if matches!(task.origin, Origin::Complete { .. }) {
                task.origin = Origin::Fetching;
                task.idle_reported = false;
            }
        }
    }

    /// Forgets the pieces of `range` of `task`: they are no longer landed, and no member holds
    /// them. Nobody may want the range any more.
    fn forget_range(&mut self, id: &TaskId, range: Span) {
        let Some(task) = self.tasks.get_mut(id) else { return };
        let slots: Vec<u32> = task.members().map(|(s, _)| s).collect();
        for slot in slots {
            let held: Vec<u32> =
                task.member(slot).map(|m| m.held.range(range.0, range.1).collect()).unwrap_or_default();
            for p in held {
                task.remove_holder(slot, p);
                if let Some(m) = task.member_mut(slot) {
                    m.held_count -= u32::from(m.held.remove(p));
                }
            }
        }
        let end = (range.1 as usize).min(task.pieces.len());
        for ps in task.pieces.get_mut(range.0 as usize..end).into_iter().flatten() {
            *ps = PieceState::default();
        }
        let within = |p: &u32| (range.0..range.1).contains(p);
        task.landed.retain(|p| !within(p));
        task.sn_candidates.retain(|p| !within(p));
    }

    /// The landed pieces of `range` and the members `include` names, with what each holds and
    /// has in flight there.
    pub(crate) fn range_summary(
        &self,
        id: &TaskId,
        range: Span,
        include: impl Fn(&PeerId) -> Option<bool>,
    ) -> (u32, Vec<PeerSummary>) {
        let Some(task) = self.tasks.get(id) else { return (0, Vec::new()) };
        let within = |p: &u32| (range.0..range.1).contains(p);
        let landed = task.landed.iter().filter(|p| within(p)).count() as u32;
        let peers = task
            .members()
            .filter_map(|(_, m)| {
                let done = include(&m.id)?;
                Some(PeerSummary {
                    id: m.id.clone(),
                    addr: m.addr,
                    pieces_held: m.held.range(range.0, range.1).count() as u32,
                    in_flight: m.assigned.keys().filter(|p| within(p)).count(),
                    done,
                })
            })
            .collect();
        (landed, peers)
    }
}

impl Shared {
    /// Member `slot` of `task` no longer wants the pieces of `range`: its part in them ends
    /// (`release_pieces`) and so do its failure reports there. Returns the capacity that appeared.
    fn unwant(&mut self, task: &mut TaskState, slot: u32, range: Span) -> Fresh {
        let fresh = self.release_pieces(task, slot, Some(range));
        if let Some(m) = task.member_mut(slot) {
            if let Some(wants) = m.wants.as_mut() {
                wants.retain(|&r| r != range);
            }
            m.failed.retain(|&p, _| !(range.0..range.1).contains(&p));
        }
        fresh
    }
}

/// A task taken out of the core to be placed in an image swarm (`Core::take_task`).
pub(crate) struct Taken {
    pub(crate) content_length: u64,
    pub(crate) piece_size: u32,
    /// Its landed pieces, in landing order.
    pub(crate) landed: Vec<PieceMeta>,
    /// `Some(total pieces)` once the origin fetch completed.
    pub(crate) complete: Option<u32>,
    /// Its members, all seeds: id, address, pieces held.
    pub(crate) seeds: Vec<(PeerId, SocketAddr, Vec<u32>)>,
}

impl Core {
    /// The length and piece size of `task`, if nobody downloads it and its origin announced its
    /// length (a task that may be taken out: see [`Core::take_task`]).
    pub(crate) fn takeable(&self, id: &TaskId) -> Option<(u64, u32)> {
        let task = self.tasks.get(id)?;
        if task.failed() || task.members().any(|(_, m)| !m.done) {
            return None;
        }
        let info = task.info?;
        Some((info.content_length?, info.piece_size))
    }

    /// Takes `task` out (see [`Core::takeable`]): what landed and who seeds it, so that it can
    /// be placed in an image swarm.
    pub(crate) fn take_task(&mut self, now: Duration, id: &TaskId) -> Option<Taken> {
        let (content_length, piece_size) = self.takeable(id)?;
        let task = self.tasks.get(id)?;
        let landed = task.landed.iter().filter_map(|&p| task.pieces.get(p as usize)?.meta.clone()).collect();
        let seeds = task.members().map(|(_, m)| (m.id.clone(), m.addr, m.held.iter().collect())).collect();
        let complete = task.total_pieces();
        self.forget_task(now, id);
        Some(Taken { content_length, piece_size, landed, complete, seeds })
    }
}

/// The states of the pieces of `range` that exist so far.
fn range_of(pieces: &[PieceState], range: Span) -> &[PieceState] {
    let end = (range.1 as usize).min(pieces.len());
    pieces.get(range.0 as usize..end).unwrap_or(&[])
}
