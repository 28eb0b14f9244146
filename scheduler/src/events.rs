//! Event handlers: update the books, tell the task's peers what changed, then refill windows
//! (the reporting peer's first, then waiting peers with the capacity that appeared).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::assign::Fresh;
use super::state::{BitSet, Member, Origin, Outbox, Source, TaskInfo, TaskState};
use super::{Action, Core, Down, FailReason, PieceMeta, Shared};

/// Waiting members fully reconsidered per task per tick (a safety net: events offer new
/// capacity to waiting members as it appears).
const TICK_REFILL: usize = 256;
/// At most this many of a parent's other tasks are offered a freed upload slot per event (see
/// `Scheduler::offer_elsewhere`).
const OFFER_TASKS: usize = 8;

impl Core {
    pub(super) fn task_started(
        &mut self,
        now: Duration,
        id: &TaskId,
        content_length: Option<u64>,
        piece_size: u32,
        out: &mut Vec<Action>,
    ) {
        if self.tasks.get(id).is_some_and(TaskState::failed) {
            // A new origin fetch after a failed one (a flapping origin): a new attempt. The
            // members of the failed one were told and are leaving; they go now, with the failed
            // state. Ignoring this attempt instead would lose the pieces it lands, and once
            // those members left, the task the cache then holds complete would be unknown here.
            let members: Vec<PeerId> = self.tasks[id].members().map(|(_, m)| m.id.clone()).collect();
            for peer in members {
                self.peer_left(now, id, &peer, out);
            }
            self.tasks.remove(id);
        }
        // A fetch that no peer has joined yet (a preheat) creates the task, so that the pieces
        // it lands are known to peers that join later.
        let task = self.tasks.entry(id.clone()).or_insert_with(|| TaskState::new(id.clone()));
        task.info = Some(TaskInfo { content_length, piece_size });
        broadcast(task, out, || Down::TaskInfo { content_length, piece_size });
    }

    pub(super) fn piece_landed(&mut self, now: Duration, id: &TaskId, meta: PieceMeta, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let n = meta.number;
        if task.failed() || n >= task.piece_bound() || task.is_landed(n) {
            return;
        }
        if task.pieces.len() <= n as usize {
            task.pieces.resize_with(n as usize + 1, Default::default);
        }
        if let Some(ps) = task.pieces.get_mut(n as usize) {
            ps.meta = Some(meta.clone());
        }
        task.landed.push(n);
        task.sn_candidates.insert(n);
        let mut fresh = Fresh { supernode: true, ..Fresh::default() };
        let holders: Vec<(u32, bool)> = task
            .members()
            .filter(|(_, m)| m.held.contains(n))
            .map(|(s, m)| (s, self.shared.is_bad_gid(m.gid)))
            .collect();
        for (slot, bad) in holders {
            task.add_holder(slot, n, bad);
            fresh.peers.push(slot);
        }
        broadcast(task, out, || Down::Pieces(vec![meta.clone()]));
        let window = self.shared.config.window_per_peer;
        let lacking: Vec<u32> = task
            .members()
            .filter(|(_, m)| task.downloading(m) && m.wants(n) && !m.held.contains(n) && m.assigned.len() < window)
            .map(|(s, _)| s)
            .collect();
        for slot in lacking {
            task.set_waiting(slot, true);
        }
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
    }

    pub(super) fn origin_complete(
        &mut self,
        id: &TaskId,
        total_pieces: u32,
        content_length: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        if !matches!(task.origin, Origin::Fetching) {
            return;
        }
        task.origin = Origin::Complete { total_pieces, content_length };
        broadcast(task, out, || Down::Complete { total_pieces, content_length });
        self.finish(id, out);
    }

    pub(super) fn origin_failed(
        &mut self,
        id: &TaskId,
        status: Option<u16>,
        refused: bool,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        if !matches!(task.origin, Origin::Fetching) {
            return;
        }
        broadcast(task, out, || Down::Failed { status, refused, message: message.clone() });
        task.origin = Origin::Failed { status, refused, message };
        let waiting: Vec<u32> = task.waiting.iter().map(|&(_, slot)| slot).collect();
        for slot in waiting {
            task.set_waiting(slot, false);
        }
        self.finish(id, out);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn peer_joined(
        &mut self,
        now: Duration,
        id: TaskId,
        peer: PeerId,
        addr: SocketAddr,
        have: &[u32],
        wants: Option<Vec<(u32, u32)>>,
        out: &mut Vec<Action>,
    ) {
        if self.tasks.get(&id).is_some_and(|t| self.shared.slot(t, &peer).is_some()) {
            // Re-registration: start over from what the peer says it holds now.
            self.peer_left(now, &id, &peer, out);
        }
        let bad = self.shared.is_bad(&peer);
        let gid = self.shared.peers.intern(&peer, bad);
        if let Some(rec) = self.shared.peers.get_mut(gid) {
            rec.tasks.insert(id.clone());
        }
        let task = self.tasks.entry(id.clone()).or_insert_with(|| TaskState::new(id.clone()));
        let bound = task.piece_bound();
        let mut held = BitSet::default();
        let mut held_count = 0;
        for &p in have.iter().filter(|&&p| p < bound) {
            held_count += u32::from(held.insert(p));
        }
        let landed_held: Vec<u32> = held.iter().filter(|&p| task.is_landed(p)).collect();
        let member = Member {
            gid,
            id: peer,
            addr,
            held,
            held_count,
            assigned: BTreeMap::new(),
            failed: BTreeMap::new(),
            avoid: Vec::new(),
            done: false,
            wait_seq: None,
            wants,
        };
        let slot = task.add_member(member);
        self.shared.refresh_open(task, gid);
        for &p in &landed_held {
            task.add_holder(slot, p, bad);
        }
        send_state(task, slot, out);
        let mut outbox = Outbox::default();
        self.shared.fill(task, slot, now, &mut outbox);
        let mut fresh = Fresh::default();
        if !landed_held.is_empty() && !bad {
            fresh.peers.push(slot);
        }
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
        self.finish(&id, out);
    }

    pub(super) fn piece_finished(
        &mut self,
        now: Duration,
        id: &TaskId,
        peer: &PeerId,
        piece: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(slot) = self.shared.slot(task, peer) else {
            return;
        };
        if piece >= task.piece_bound() {
            return;
        }
        let mut fresh = Fresh::default();
        let sn_start =
            task.pieces.get(piece as usize).and_then(|ps| ps.sn_copies.iter().find(|c| c.0 == slot)).map(|c| c.1);
        let mut freed_parent = None;
        if let Some(source) = self.shared.release(task, slot, piece) {
            if let (Source::Supernode, Some(start)) = (&source, sn_start) {
                self.shared.note_supernode_copy(start, now);
            }
            if let Source::Peer { gid: Some(gid), .. } = source {
                freed_parent = Some(gid);
            }
            fresh.add_source(task, &source);
        }
        if let Some(gid) = freed_parent {
            // The parent's slot goes to its other tasks first, in turn, then back to this one:
            // a slot freed in a task went straight back to the same task, so a host pulling
            // several blobs served them one after another while the later ones' pieces,
            // already in the swarm, were not traded.
            self.offer_elsewhere(now, gid, id, out);
        }
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(m) = task.member_mut(slot) else {
            return;
        };
        m.failed.remove(&piece);
        if m.held.insert(piece) {
            m.held_count += 1;
        }
        let bad = self.shared.is_bad_gid(m.gid);
        task.add_holder(slot, piece, bad);
        if !bad {
            fresh.peers.push(slot);
        }
        let mut outbox = Outbox::default();
        // The freed capacity goes to the waiting members with the fewest pieces in flight first
        // (the reporter among them); then the reporter fills what is left of its window.
        task.set_waiting(slot, true);
        self.shared.drain(task, &fresh, now, &mut outbox);
        self.shared.fill(task, slot, now, &mut outbox);
        flush(task, outbox, out);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn piece_failed(
        &mut self,
        now: Duration,
        id: &TaskId,
        peer: &PeerId,
        piece: u32,
        parent: Option<&PeerId>,
        reason: FailReason,
        out: &mut Vec<Action>,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(slot) = self.shared.slot(task, peer) else {
            return;
        };
        // Only a report about the parent we actually assigned counts: a child cannot strike
        // arbitrary peers.
        let Some(source) = self.shared.release(task, slot, piece) else {
            return;
        };
        let mut fresh = Fresh::default();
        fresh.add_source(task, &source);
        let blamed = match (&source, parent) {
            (Source::Peer { id: assigned, .. }, Some(reported)) if assigned == reported => Some(reported),
            _ => None,
        };
        let mut parent_slot = None;
        if let Some(blamed) = blamed {
            if let Some(m) = task.member_mut(slot) {
                m.failed.entry(piece).or_default().push(blamed.clone());
                let reports = m.failed.values().filter(|f| f.contains(blamed)).count();
                if reports >= 2 && !m.avoid.contains(blamed) {
                    m.avoid.push(blamed.clone());
                }
            }
            parent_slot = self.shared.slot(task, blamed);
            if let (FailReason::Digest, Some(ps)) = (reason, parent_slot) {
                fresh.supernode |= drop_holding(task, ps, piece);
            }
        }
        // A transfer from a parent that already left was bound to fail: no strike for that.
        let departed = matches!(source, Source::Peer { gid: None, .. });
        if let Some(blamed) = blamed.filter(|_| !(departed && reason == FailReason::Transfer)) {
            fresh.supernode |= self.strike(now, blamed, peer, id, reason, out);
        }
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let mut outbox = Outbox::default();
        self.shared.fill(task, slot, now, &mut outbox);
        if let Some(ps) = parent_slot {
            // After a digest failure the parent may need the piece again itself.
            self.shared.fill(task, ps, now, &mut outbox);
        }
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
    }

    pub(super) fn peer_done(&mut self, now: Duration, id: &TaskId, peer: &PeerId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(slot) = self.shared.slot(task, peer) else {
            return;
        };
        if task.member(slot).is_none_or(|m| m.done) {
            return;
        }
        let mut fresh = Fresh::default();
        let assigned: Vec<u32> = task.member(slot).map(|m| m.assigned.keys().copied().collect()).unwrap_or_default();
        for piece in assigned {
            if let Some(source) = self.shared.release(task, slot, piece) {
                fresh.add_source(task, &source);
            }
        }
        task.set_waiting(slot, false);
        task.mark_done(slot);
        let mut all: Vec<u32> = match task.total_pieces() {
            Some(total) => (0..total).collect(),
            None => task.landed.clone(),
        };
        // In an image swarm: the pieces of the blobs it registered for, not the whole image.
        if let Some(m) = task.member(slot) {
            all.retain(|&p| m.wants(p));
        }
        let bad = task.member(slot).is_some_and(|m| self.shared.is_bad_gid(m.gid));
        if let Some(m) = task.member_mut(slot) {
            for &p in &all {
                m.held_count += u32::from(m.held.insert(p));
            }
        }
        for p in all {
            task.add_holder(slot, p, bad);
        }
        if !bad {
            fresh.peers.push(slot);
        }
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
        self.finish(id, out);
    }

    pub(super) fn peer_left(&mut self, now: Duration, id: &TaskId, peer: &PeerId, out: &mut Vec<Action>) {
        let Some(gid) = self.shared.peers.gid(peer) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let Some(slot) = task.slot_of(gid) else {
            return;
        };
        let fresh = self.shared.remove_member(task, slot);
        let mut outbox = Outbox::default();
        self.shared.drain(task, &fresh, now, &mut outbox);
        flush(task, outbox, out);
        if let Some(rec) = self.shared.peers.get_mut(gid) {
            rec.tasks.remove(id);
        }
        self.shared.peers.release_if_unused(gid);
        self.finish(id, out);
    }

    pub(super) fn peer_gone(&mut self, now: Duration, peer: &PeerId, out: &mut Vec<Action>) {
        let Some(rec) = self.shared.peers.gid(peer).and_then(|gid| self.shared.peers.get(gid)) else {
            return;
        };
        let tasks: Vec<TaskId> = rec.tasks.iter().cloned().collect();
        for id in tasks {
            self.sync_open(now, out);
            self.peer_left(now, &id, peer, out);
        }
    }

    /// Tick: stalled supernode copies may be retried, and a batch of waiting members is fully
    /// reconsidered.
    pub(super) fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        let cfg = self.shared.config.clone();
        for peer in self.shared.strikes.expire(&cfg, now) {
            self.unban(now, &peer, out);
        }
        let fresh = Fresh { supernode: true, ..Fresh::default() };
        let ids: Vec<TaskId> =
            self.tasks.iter().filter(|(_, t)| !t.waiting.is_empty()).map(|(id, _)| id.clone()).collect();
        for id in ids {
            self.sync_open(now, out);
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let mut outbox = Outbox::default();
            self.shared.drain(task, &fresh, now, &mut outbox);
            self.shared.refill_waiting(task, TICK_REFILL, now, &mut outbox);
            flush(task, outbox, out);
        }
    }

    /// Offers peer `gid`'s free upload capacity to the waiting members of its tasks other than
    /// `except`: up to [`OFFER_TASKS`] of them, starting with a different task each time.
    fn offer_elsewhere(&mut self, now: Duration, gid: u32, except: &TaskId, out: &mut Vec<Action>) {
        let Some(rec) = self.shared.peers.get_mut(gid) else { return };
        if rec.tasks.len() < 2 {
            return;
        }
        // A seed of a large cache is in many tasks: look at a few per event, in turn.
        let count = rec.tasks.len() - 1;
        let start = rec.next_task % count;
        rec.next_task = rec.next_task.wrapping_add(1);
        let others: Vec<TaskId> = rec
            .tasks
            .iter()
            .filter(|t| *t != except)
            .cycle()
            .skip(start)
            .take(count.min(OFFER_TASKS))
            .cloned()
            .collect();
        let max = self.shared.config.max_uploads_per_peer;
        for id in &others {
            if self.shared.peers.get(gid).is_none_or(|r| r.bad || self.shared.load_of(r) >= max) {
                break;
            }
            let Some(task) = self.tasks.get_mut(id) else { continue };
            let Some(pslot) = task.slot_of(gid) else { continue };
            if task.waiting.is_empty() {
                continue;
            }
            let mut outbox = Outbox::default();
            self.shared.drain(task, &Fresh { peers: vec![pslot], supernode: false }, now, &mut outbox);
            flush(task, outbox, out);
        }
    }

    /// A peer's ban ended: it serves again what it holds, in every task it is in.
    fn unban(&mut self, now: Duration, peer: &PeerId, out: &mut Vec<Action>) {
        let Some(gid) = self.shared.peers.gid(peer) else { return };
        let Some(rec) = self.shared.peers.get_mut(gid) else { return };
        rec.bad = false;
        let tasks: Vec<TaskId> = rec.tasks.iter().cloned().collect();
        for id in tasks {
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            let Some(slot) = task.slot_of(gid) else { continue };
            let held: Vec<u32> = task.member(slot).map(|m| m.held.iter().collect()).unwrap_or_default();
            for p in held {
                task.add_holder(slot, p, false);
            }
            self.shared.refresh_open(task, gid);
            let mut outbox = Outbox::default();
            self.shared.drain(task, &Fresh { peers: vec![slot], supernode: false }, now, &mut outbox);
            flush(task, outbox, out);
        }
    }

    /// Refreshes the `open` bits of peers whose load changed in another task, and offers a peer
    /// that gained a free upload slot to the waiting members of those tasks at once (a slot
    /// freed in one task is used by another without waiting for a tick).
    pub(super) fn sync_open(&mut self, now: Duration, out: &mut Vec<Action>) {
        let max = self.shared.config.max_uploads_per_peer;
        let mut opened: Vec<(TaskId, u32)> = Vec::new();
        for gid in std::mem::take(&mut self.shared.dirty) {
            let Some(rec) = self.shared.peers.get(gid) else {
                continue;
            };
            let open = !rec.bad && self.shared.load_of(rec) < max;
            for id in &rec.tasks {
                let Some(task) = self.tasks.get_mut(id) else {
                    continue;
                };
                if let Some(slot) = task.slot_of(gid) {
                    if open && !task.open.contains(slot) && !task.waiting.is_empty() {
                        opened.push((id.clone(), slot));
                    }
                    task.set_open(slot, open);
                }
            }
        }
        for (id, slot) in opened {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let fresh = Fresh { peers: vec![slot], supernode: false };
            let mut outbox = Outbox::default();
            self.shared.drain(task, &fresh, now, &mut outbox);
            flush(task, outbox, out);
        }
    }

    /// Records `reporter`'s failure report against `peer`; when that makes `peer` bad (see
    /// [`super::strikes`]), reports it and stops using it as a parent in every task. Returns
    /// whether that made a piece of `current` supernode-servable (the caller refills `current`;
    /// other tasks are refilled here).
    fn strike(
        &mut self,
        now: Duration,
        peer: &PeerId,
        reporter: &PeerId,
        current: &TaskId,
        reason: FailReason,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(after) = self.shared.strikes.report(&self.shared.config, peer, reporter, reason, now) else {
            return false;
        };
        out.push(Action::PeerReported { peer: peer.clone(), task: current.clone(), strikes: after });
        let Some(gid) = self.shared.peers.gid(peer) else {
            return false;
        };
        let Some(rec) = self.shared.peers.get_mut(gid) else {
            return false;
        };
        rec.bad = true;
        let tasks: Vec<TaskId> = rec.tasks.iter().cloned().collect();
        let mut current_orphaned = false;
        for id in tasks {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let Some(slot) = task.slot_of(gid) else {
                continue;
            };
            task.set_open(slot, false);
            let held: Vec<u32> = task.member(slot).map(|m| m.held.iter().collect()).unwrap_or_default();
            let mut orphaned = false;
            for p in held {
                orphaned |= task.remove_holder(slot, p);
            }
            if id == *current {
                current_orphaned = orphaned;
            } else if orphaned {
                let mut outbox = Outbox::default();
                let fresh = Fresh { supernode: true, ..Fresh::default() };
                self.shared.drain(task, &fresh, now, &mut outbox);
                flush(task, outbox, out);
            }
        }
        current_orphaned
    }

    /// After an event: reports the task idle when nobody downloads it any more and the origin
    /// finished; forgets a failed task once its last peer left.
    pub(super) fn finish(&mut self, id: &TaskId, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        let idle = match task.origin {
            Origin::Fetching => false,
            Origin::Complete { .. } => task.active == 0,
            Origin::Failed { .. } => true,
        };
        if idle && !task.idle_reported {
            out.push(Action::TaskIdle { task: id.clone() });
        }
        task.idle_reported = idle;
        if task.failed() && task.member_count() == 0 {
            self.tasks.remove(id);
        }
    }
}

impl Shared {
    /// The member slot of `peer` in `task`.
    pub(super) fn slot(&self, task: &TaskState, peer: &PeerId) -> Option<u32> {
        self.peers.gid(peer).and_then(|gid| task.slot_of(gid))
    }

    /// Whether `peer` is at or over the strike threshold.
    fn is_bad(&self, peer: &PeerId) -> bool {
        self.strikes.is_bad(peer)
    }

    pub(super) fn is_bad_gid(&self, gid: u32) -> bool {
        self.peers.get(gid).is_some_and(|r| r.bad)
    }

    /// Removes member `slot` from `task`: ends its assignments (freeing its parents' slots),
    /// drops its holdings, and orphans the assignments it was serving (the children keep them
    /// until they report). Returns the capacity that appeared.
    fn remove_member(&mut self, task: &mut TaskState, slot: u32) -> Fresh {
        task.set_waiting(slot, false);
        let mut fresh = self.release_pieces(task, slot, None);
        task.take_member(slot);
        fresh.peers.retain(|&s| s != slot);
        fresh
    }

    /// Ends member `slot`'s part in the pieces of `range` (`None`: all of them): ends its
    /// assignments (freeing its parents' slots), drops its holdings, and orphans the assignments
    /// it was serving (the children keep them until they report). Returns the capacity that
    /// appeared.
    pub(super) fn release_pieces(&mut self, task: &mut TaskState, slot: u32, range: Option<(u32, u32)>) -> Fresh {
        let mut fresh = Fresh::default();
        let within = |p: u32| range.is_none_or(|(a, b)| (a..b).contains(&p));
        let Some(m) = task.member(slot) else {
            return fresh;
        };
        let gid = m.gid;
        let assigned: Vec<u32> = m.assigned.keys().copied().filter(|&p| within(p)).collect();
        let held: Vec<u32> = match range {
            Some((a, b)) => m.held.range(a, b).collect(),
            None => m.held.iter().collect(),
        };
        for piece in assigned {
            if let Some(source) = self.release(task, slot, piece) {
                fresh.add_source(task, &source);
            }
        }
        for piece in held {
            fresh.supernode |= task.remove_holder(slot, piece);
            if range.is_some() {
                if let Some(m) = task.member_mut(slot) {
                    m.held_count -= u32::from(m.held.remove(piece));
                }
            }
        }
        if let Some(rec) = self.peers.get_mut(gid) {
            let (mine, rest) =
                std::mem::take(&mut rec.uploads).into_iter().partition(|u| u.task == task.id && within(u.piece));
            rec.uploads = rest;
            if rec.tasks.len() > 1 {
                self.dirty.push(gid);
            }
            for upload in mine {
                let child = task.member_mut(upload.child).and_then(|c| c.assigned.get_mut(&upload.piece));
                if let Some(Source::Peer { gid, .. }) = child {
                    *gid = None;
                }
            }
            if range.is_some() {
                // It stays a member: its slots freed, it may take uploads again.
                self.refresh_open(task, gid);
                fresh.peers.push(slot);
            }
        }
        fresh
    }
}

/// Drops `piece` from member `slot` after it served a bad copy: it is no longer a holder (and may
/// be assigned the piece itself). Returns whether the piece has no holder left.
fn drop_holding(task: &mut TaskState, slot: u32, piece: u32) -> bool {
    if let Some(m) = task.member_mut(slot) {
        if m.held.remove(piece) {
            m.held_count -= 1;
        }
    }
    task.remove_holder(slot, piece)
}

/// Sends `msg()` to every member of `task`.
fn broadcast(task: &TaskState, out: &mut Vec<Action>, msg: impl Fn() -> Down) {
    for (_, m) in task.members() {
        out.push(Action::Send { peer: m.id.clone(), task: task.id.clone(), msg: msg() });
    }
}

/// Tells a new member everything known about the task so far.
fn send_state(task: &TaskState, slot: u32, out: &mut Vec<Action>) {
    let Some(m) = task.member(slot) else {
        return;
    };
    let mut send = |msg| out.push(Action::Send { peer: m.id.clone(), task: task.id.clone(), msg });
    if let Some(info) = task.info {
        send(Down::TaskInfo { content_length: info.content_length, piece_size: info.piece_size });
    }
    let pieces: Vec<PieceMeta> = task.pieces.iter().filter_map(|p| p.meta.clone()).collect();
    if !pieces.is_empty() {
        send(Down::Pieces(pieces));
    }
    match &task.origin {
        Origin::Fetching => {}
        Origin::Complete { total_pieces, content_length } => {
            send(Down::Complete { total_pieces: *total_pieces, content_length: *content_length })
        }
        Origin::Failed { status, refused, message } => {
            send(Down::Failed { status: *status, refused: *refused, message: message.clone() })
        }
    }
}

/// Sends the assignments gathered while handling an event: one `Assign` per peer.
pub(super) fn flush(task: &TaskState, outbox: Outbox, out: &mut Vec<Action>) {
    for (slot, list) in outbox.assigns {
        if let Some(m) = task.member(slot) {
            out.push(Action::Send { peer: m.id.clone(), task: task.id.clone(), msg: Down::Assign(list) });
        }
    }
}
