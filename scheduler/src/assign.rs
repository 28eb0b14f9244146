//! Choosing pieces and parents: filling a peer's window rarest first, picking a free, least
//! loaded usable parent (the supernode only as a last resort), upload slot accounting, and
//! offering new capacity to waiting peers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::{Bound, ControlFlow};
use std::time::Duration;

use super::state::{Member, Outbox, PeerRec, PieceState, Source, TaskState, Upload};
use super::{Assignment, Parent, Shared};
use damselfly_types::id::TaskId;

/// At most this many candidate pieces are tried per fill (keeps a fill cheap when most pieces
/// have no parent right now).
const CANDIDATE_SCAN: usize = 64;
/// A parent is the least loaded of at most this many free holders, found from a random start.
const PARENT_SAMPLE: usize = 8;
/// At most this many fresh peers are tracked per event; more are left to the ticks.
const FRESH_PEERS_MAX: usize = 16;
/// In the endgame the supernode sends another copy of a piece only while fewer than this many
/// copies are held or on their way from it.
pub(super) const ENDGAME_RARE: usize = 3;
/// A drain stops after this many waiting peers in a row could not use the new capacity.
const DRAIN_MISSES: usize = 64;

/// Candidate pieces keyed (copies, random tie-break, piece), popping the rarest first.
type Candidates = BinaryHeap<Reverse<(u32, u64, u32)>>;

/// Capacity that appeared while handling an event: who may be able to serve waiting peers now.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    /// Member slots that gained a free upload slot or a piece.
    pub(super) peers: Vec<u32>,
    /// The supernode gained a free upload slot or a piece it may serve.
    pub(super) supernode: bool,
}

impl Fresh {
    /// Records that the parent of a just-ended assignment has a free slot again.
    pub(super) fn add_source(&mut self, task: &TaskState, source: &Source) {
        match source {
            Source::Supernode => self.supernode = true,
            Source::Peer { gid: Some(gid), .. } => self.peers.extend(task.slot_of(*gid)),
            Source::Peer { gid: None, .. } => {}
        }
    }
}

/// The parent chosen for one piece.
#[derive(Clone, Copy, Debug)]
enum Pick {
    Supernode,
    /// A member slot of the task.
    Peer(u32),
}

impl Shared {
    /// Fills the free window of member `slot`, rarest pieces first; puts it in the waiting queue
    /// when room and candidates remain without a parent.
    pub(super) fn fill(&mut self, task: &mut TaskState, slot: u32, now: Duration, out: &mut Outbox) {
        let Some(m) = task.member(slot) else {
            return;
        };
        let mut room =
            if task.downloading(m) { self.config.window_per_peer.saturating_sub(m.assigned.len()) } else { 0 };
        if room == 0 {
            task.set_waiting(slot, false);
            return;
        }
        let (mut candidates, total) = self.candidates(task, slot, now);
        let mut assigned = 0;
        for _ in 0..CANDIDATE_SCAN {
            let Some(Reverse((_, _, piece))) = candidates.pop().filter(|_| room > 0) else {
                break;
            };
            if let Some(pick) = self.choose_parent(task, slot, piece, now) {
                self.assign(task, slot, piece, pick, now, out);
                room -= 1;
                assigned += 1;
            }
        }
        task.set_waiting(slot, room > 0 && total > assigned);
    }

    /// Landed pieces `slot` neither holds nor was assigned and that may have a parent now (a
    /// free holder, or none at all and the supernode may serve), as a heap that pops the rarest
    /// first (fewest holders + assignments in flight, ties in random order); and how many
    /// pieces it lacks in all.
    fn candidates(&mut self, task: &TaskState, slot: u32, now: Duration) -> (Candidates, usize) {
        let Some(m) = task.member(slot) else {
            return (BinaryHeap::new(), 0);
        };
        let sn_free = self.supernode_can_serve(task, slot);
        let endgame = endgame(task) && starving(m);
        let linked = self.links_with_room(task, slot);
        let mut total = 0;
        let mut keyed = Vec::new();
        for &p in &task.landed {
            let Some(ps) = task.pieces.get(p as usize) else {
                continue;
            };
            if m.held.contains(p) || m.assigned.contains_key(&p) || !m.wants(p) {
                continue;
            }
            total += 1;
            let supernode = sn_free
                && (ps.holder_count == 0 && !self.recent_supernode_copy(ps, now) || endgame && endgame_piece(ps));
            let via_link = linked.iter().any(|&(s, _)| ps.holders.contains(s));
            // A child's failure reports may leave it no usable holder: let `choose_parent` judge.
            if ps.open_holders > 0 || supernode || via_link || m.failed.contains_key(&p) {
                keyed.push(Reverse((ps.holder_count + ps.inflight, self.rng.next_u64(), p)));
            }
        }
        (BinaryHeap::from(keyed), total)
    }

    /// The parent for `child` to fetch `piece` from now, if any: the least loaded of a few free
    /// usable holders; else the supernode if no usable peer holds the piece at all (busy
    /// holders count: the child waits for them), no recent supernode copy is in flight and the
    /// supernode has a free slot.
    fn choose_parent(&mut self, task: &TaskState, child: u32, piece: u32, now: Duration) -> Option<Pick> {
        let ps = task.pieces.get(piece as usize)?;
        let failed = task.member(child)?.failed.get(&piece);
        let avoid = &task.member(child)?.avoid;
        let excluded = |slot: u32| {
            task.member(slot).is_some_and(|h| failed.is_some_and(|f| f.contains(&h.id)) || avoid.contains(&h.id))
        };
        // A parent already sending to this child with room on the link: the piece queues behind
        // the one in flight on the same connection, so the link never idles between pieces.
        let linked = self.links_with_room(task, child);
        let on_link = linked
            .iter()
            .filter(|&&(s, _)| ps.holders.contains(s) && !excluded(s))
            .min_by_key(|&&(_, queued)| queued)
            .map(|&(s, _)| s);
        if let Some(slot) = on_link {
            return Some(Pick::Peer(slot));
        }
        if ps.open_holders > 0 {
            let start = self.rng.below(ps.holders.capacity());
            let mut best: Option<(usize, u32)> = None;
            let mut seen = 0;
            ps.holders.for_each_common_from(&task.open, start, |slot| {
                if slot == child || excluded(slot) || self.link_full(task, child, slot) {
                    return ControlFlow::Continue(());
                }
                let Some(load) = self.load(task, slot) else {
                    return ControlFlow::Continue(());
                };
                if best.is_none_or(|(b, _)| load < b) {
                    best = Some((load, slot));
                }
                seen += 1;
                if load == 0 || seen >= PARENT_SAMPLE {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            if let Some((_, slot)) = best {
                return Some(Pick::Peer(slot));
            }
        }
        let endgame = endgame(task) && endgame_piece(ps) && starving(task.member(child)?);
        if ps.holder_count > 0 && !endgame {
            // Holders this child reported for this piece or avoids altogether: if that is all
            // of them, waiting would never end.
            let mut unusable: Vec<u32> = failed
                .into_iter()
                .flatten()
                .chain(avoid.iter())
                .filter_map(|id| self.peers.gid(id).and_then(|g| task.slot_of(g)))
                .filter(|&s| ps.holders.contains(s))
                .collect();
            unusable.sort_unstable();
            unusable.dedup();
            let unusable = unusable.len();
            if ps.holder_count as usize > unusable {
                return None;
            }
        }
        let free = self.supernode_can_serve(task, child);
        (free && (endgame || !self.recent_supernode_copy(ps, now))).then_some(Pick::Supernode)
    }

    /// Current uploads of member `slot`, if it may take another one.
    fn load(&self, task: &TaskState, slot: u32) -> Option<usize> {
        let rec = self.peers.get(task.member(slot)?.gid)?;
        let load = self.load_of(rec);
        (!rec.bad && load < self.config.max_uploads_per_peer).then_some(load)
    }

    /// A peer's upload load, across tasks: its uploads in flight, or with
    /// [`super::SchedulerConfig::link_depth`] above 1 the children it is sending to (each link
    /// carries up to that many pieces).
    pub(super) fn load_of(&self, rec: &PeerRec) -> usize {
        if self.config.link_depth <= 1 {
            return rec.uploads.len();
        }
        // A parent whose links carry `slots × link_depth` pieces in all takes nothing more, however
        // few children it has (see `link_cap`).
        if self.at_budget(rec) {
            return self.config.max_uploads_per_peer;
        }
        let mut links: Vec<(&TaskId, u32)> = rec.uploads.iter().map(|u| (&u.task, u.child)).collect();
        links.sort_unstable();
        links.dedup();
        links.len()
    }

    /// Pieces one link of a parent with `links` children and `slots` upload slots may carry:
    /// `link_depth`, or more while the parent has fewer children than slots, so that a lone
    /// child gets as many pieces in flight from a parent as it would with a depth of 1. A parent
    /// never carries more than `slots × link_depth` pieces in all (a lone child's long link
    /// counts when others join).
    pub(super) fn link_cap(&self, links: usize, slots: usize) -> usize {
        self.config.link_depth.max(slots / links.max(1))
    }

    /// Whether a peer's links carry `slots × link_depth` pieces in all.
    fn at_budget(&self, rec: &PeerRec) -> bool {
        rec.uploads.len() >= self.config.max_uploads_per_peer * self.config.link_depth
    }

    /// Whether a link of peer `rec` that carries `on_link` pieces may take another.
    fn link_has_room(&self, rec: &PeerRec, on_link: usize) -> bool {
        !self.at_budget(rec) && on_link < self.link_cap(self.load_of(rec), self.config.max_uploads_per_peer)
    }

    /// Whether `child`'s link with `parent` already carries as many pieces as it may (never with
    /// a depth of 1: then every piece is its own upload slot).
    fn link_full(&self, task: &TaskState, child: u32, parent: u32) -> bool {
        let depth = self.config.link_depth;
        if depth <= 1 {
            return false;
        }
        let (Some(m), Some(p)) = (task.member(child), task.member(parent)) else { return false };
        let on_link =
            m.assigned.values().filter(|s| matches!(s, Source::Peer { gid: Some(g), .. } if *g == p.gid)).count();
        self.peers.get(p.gid).map_or(on_link >= depth, |rec| !self.link_has_room(rec, on_link))
    }

    /// The parents `child` has a link with that can take another piece: (member slot, pieces on
    /// the link). Empty unless links carry several pieces.
    fn links_with_room(&self, task: &TaskState, child: u32) -> Vec<(u32, usize)> {
        let depth = self.config.link_depth;
        let Some(m) = task.member(child).filter(|_| depth > 1) else {
            return Vec::new();
        };
        let mut links: Vec<(u32, usize)> = Vec::new();
        for source in m.assigned.values() {
            let Source::Peer { gid: Some(gid), .. } = source else { continue };
            let Some(slot) = task.slot_of(*gid) else { continue };
            match links.iter_mut().find(|(s, _)| *s == slot) {
                Some(l) => l.1 += 1,
                None => links.push((slot, 1)),
            }
        }
        links.retain(|&(slot, queued)| {
            task.member(slot)
                .and_then(|p| self.peers.get(p.gid))
                .is_some_and(|r| !r.bad && self.link_has_room(r, queued))
        });
        links
    }

    /// Whether member `slot` can take another upload and has something to upload.
    fn can_upload(&self, task: &TaskState, slot: u32) -> bool {
        task.member(slot).is_some_and(|m| m.held_count > 0) && self.load(task, slot).is_some()
    }

    /// Brings the member's bit in `task.open` up to date with its peer's load; other tasks of
    /// the peer are updated by [`super::Scheduler::sync_open`] after the event.
    pub(super) fn refresh_open(&mut self, task: &mut TaskState, gid: u32) {
        let Some(rec) = self.peers.get(gid) else {
            return;
        };
        if let Some(slot) = task.slot_of(gid) {
            task.set_open(slot, !rec.bad && self.load_of(rec) < self.config.max_uploads_per_peer);
        }
        if rec.tasks.len() > 1 {
            self.dirty.push(gid);
        }
    }

    /// Whether the supernode can send `child` another piece: a free upload slot, or (links of
    /// several pieces) a link to `child` with room or a free link.
    pub(super) fn supernode_can_serve(&self, task: &TaskState, child: u32) -> bool {
        let depth = self.config.link_depth;
        if depth <= 1 {
            return self.sn_uploads < self.config.max_supernode_uploads;
        }
        let slots = self.config.max_supernode_uploads;
        if self.sn_uploads >= slots * depth {
            return false;
        }
        match self.sn_links.get(&(task.id.clone(), child)) {
            Some(&n) => (n as usize) < self.link_cap(self.sn_links.len(), slots),
            None => self.sn_links.len() < slots,
        }
    }

    /// Whether the supernode can take no new link (or upload) for anyone.
    fn supernode_full(&self) -> bool {
        if self.config.link_depth <= 1 {
            return self.sn_uploads >= self.config.max_supernode_uploads;
        }
        let slots = self.config.max_supernode_uploads;
        self.sn_uploads >= slots * self.config.link_depth
            || (self.sn_links.len() >= slots && self.sn_links.values().all(|&n| n as usize >= self.config.link_depth))
    }

    /// Whether a supernode copy of the piece is in flight that is not stalled yet (see
    /// [`Shared::stall_limit`]).
    fn recent_supernode_copy(&self, ps: &PieceState, now: Duration) -> bool {
        recent_copy(ps, now, self.stall_limit())
    }

    /// How long a supernode copy may run before another copy of the piece may be sent:
    /// `stalled_after`, or four times the average copy time when the supernode is busier.
    pub(super) fn stall_limit(&self) -> Duration {
        let typical = self.sn_copy_time.map_or(Duration::ZERO, |t| t * 4);
        self.config.stalled_after.max(typical)
    }

    /// Records that a supernode copy started at `started` finished at `now`.
    pub(super) fn note_supernode_copy(&mut self, started: Duration, now: Duration) {
        let took = now.saturating_sub(started);
        self.sn_copy_time = Some(match self.sn_copy_time {
            None => took,
            // An exponential moving average with weight 1/8 for the newest sample.
            Some(avg) => (avg * 7 + took) / 8,
        });
    }

    /// Records the assignment of `piece` to `child` from `pick` and queues it for sending.
    fn assign(&mut self, task: &mut TaskState, child: u32, piece: u32, pick: Pick, now: Duration, out: &mut Outbox) {
        let (source, parent) = match pick {
            Pick::Supernode => {
                self.sn_uploads += 1;
                *self.sn_links.entry((task.id.clone(), child)).or_default() += 1;
                if let Some(ps) = task.pieces.get_mut(piece as usize) {
                    ps.sn_copies.push((child, now));
                }
                (Source::Supernode, Parent::Supernode)
            }
            Pick::Peer(slot) => {
                let Some(h) = task.member(slot) else {
                    return;
                };
                let (gid, id, addr) = (h.gid, h.id.clone(), h.addr);
                if let Some(rec) = self.peers.get_mut(gid) {
                    rec.uploads.push(Upload { task: task.id.clone(), child, piece });
                }
                self.refresh_open(task, gid);
                (Source::Peer { id: id.clone(), gid: Some(gid) }, Parent::Peer { id, addr })
            }
        };
        if let Some(ps) = task.pieces.get_mut(piece as usize) {
            ps.inflight += 1;
        }
        if let Some(m) = task.member_mut(child) {
            m.assigned.insert(piece, source);
        }
        out.assigns.entry(child).or_default().push(Assignment { piece, parent });
    }

    /// Ends `child`'s assignment of `piece` (finished, failed or abandoned) and frees its
    /// parent's upload slot. Returns where it was from, or `None` if there was no such
    /// assignment.
    pub(super) fn release(&mut self, task: &mut TaskState, child: u32, piece: u32) -> Option<Source> {
        let source = task.member_mut(child)?.assigned.remove(&piece)?;
        if let Some(ps) = task.pieces.get_mut(piece as usize) {
            ps.inflight = ps.inflight.saturating_sub(1);
            if matches!(source, Source::Supernode) {
                ps.sn_copies.retain(|&(c, _)| c != child);
            }
        }
        match &source {
            Source::Supernode => {
                self.sn_uploads = self.sn_uploads.saturating_sub(1);
                let key = (task.id.clone(), child);
                if let Some(n) = self.sn_links.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.sn_links.remove(&key);
                    }
                }
            }
            Source::Peer { gid: Some(gid), .. } => {
                if let Some(rec) = self.peers.get_mut(*gid) {
                    rec.uploads.retain(|u| !(u.child == child && u.piece == piece && u.task == task.id));
                }
                self.refresh_open(task, *gid);
            }
            Source::Peer { gid: None, .. } => {}
        }
        Some(source)
    }

    /// Offers the capacity that appeared to the task's waiting peers, round robin from where the
    /// last offer stopped, one piece per peer per visit, until the capacity is used up or
    /// `DRAIN_MISSES` peers in a row (or the whole queue) could not use it. Capacity left over
    /// stays available: a peer finds it with its next fill, and ticks refill waiting peers.
    pub(super) fn drain(&mut self, task: &mut TaskState, fresh: &Fresh, now: Duration, out: &mut Outbox) {
        if task.failed() {
            return;
        }
        let mut peers = fresh.peers.clone();
        peers.sort_unstable();
        peers.dedup();
        peers.truncate(FRESH_PEERS_MAX);
        let mut sn_open = if fresh.supernode { self.supernode_open(task, now) } else { Vec::new() };
        let mut cursor = task.drain_cursor;
        loop {
            if sn_open.is_empty() && !peers.iter().any(|&s| self.can_upload(task, s)) {
                break;
            }
            // The next waiting members from the cursor, those with the fewest pieces in flight
            // first: capacity goes to the hosts that have least of it.
            let mut batch: Vec<(u64, u32)> = task
                .waiting
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .chain(task.waiting.range(..=cursor))
                .take(DRAIN_MISSES)
                .copied()
                .collect();
            if batch.is_empty() {
                break;
            }
            batch.sort_by_key(|&(seq, slot)| (task.member(slot).map_or(usize::MAX, |m| m.assigned.len()), seq));
            let mut gave = false;
            for key in batch {
                if sn_open.is_empty() && !peers.iter().any(|&s| self.can_upload(task, s)) {
                    break;
                }
                if self.offer(task, key.1, &peers, &mut sn_open, now, out) {
                    cursor = key;
                    gave = true;
                    break;
                }
            }
            if !gave {
                break;
            }
        }
        task.drain_cursor = cursor;
    }

    /// Gives waiting member `w` one piece from a fresh peer or, failing that, from the
    /// supernode's newly servable pieces. Returns whether it got one.
    fn offer(
        &mut self,
        task: &mut TaskState,
        w: u32,
        peers: &[u32],
        sn_open: &mut Vec<u32>,
        now: Duration,
        out: &mut Outbox,
    ) -> bool {
        let window = self.config.window_per_peer;
        if !task.member(w).is_some_and(|m| task.downloading(m) && m.assigned.len() < window) {
            task.set_waiting(w, false);
            return false;
        }
        let mut pick = None;
        for &p in peers {
            if p != w && self.can_upload(task, p) && !self.link_full(task, w, p) {
                if let Some(piece) = self.pick_from(task, w, p) {
                    pick = Some((piece, Pick::Peer(p)));
                    break;
                }
            }
        }
        if pick.is_none() && self.supernode_can_serve(task, w) {
            pick = self.pick_supernode_piece(task, w, sn_open, now).map(|piece| (piece, Pick::Supernode));
        }
        let Some((piece, pick)) = pick else {
            return false;
        };
        self.assign(task, w, piece, pick, now, out);
        if matches!(pick, Pick::Supernode) && !endgame(task) {
            sn_open.retain(|&p| p != piece);
        }
        if task.member(w).is_some_and(|m| m.assigned.len() >= window) {
            task.set_waiting(w, false);
        }
        true
    }

    /// The rarest piece parent `p` can give child `w` (landed, held by `p`, not held by or
    /// assigned to `w`, `p` not reported failing it for `w`); ties random.
    fn pick_from(&mut self, task: &TaskState, w: u32, p: u32) -> Option<u32> {
        let (child, parent) = (task.member(w)?, task.member(p)?);
        let usable = |piece: u32| {
            task.is_landed(piece)
                && child.wants(piece)
                && !child.assigned.contains_key(&piece)
                && !child.failed.get(&piece).is_some_and(|f| f.contains(&parent.id))
                && !child.avoid.contains(&parent.id)
        };
        let pieces = parent.held.and_not_iter(&child.held).filter(|&piece| usable(piece));
        self.rarest(task, pieces)
    }

    /// The rarest of `sn_open` that `w` neither holds nor was assigned and that the supernode
    /// may still serve; ties random.
    fn pick_supernode_piece(&mut self, task: &TaskState, w: u32, sn_open: &[u32], now: Duration) -> Option<u32> {
        let child = task.member(w)?;
        let (endgame, stall_limit) = (endgame(task), self.stall_limit());
        // `sn_open` was listed when the capacity appeared; the copies assigned since (in this
        // same drain) count: an endgame piece stays rare, a first copy goes out once.
        let servable =
            |p: u32| task.pieces.get(p as usize).is_some_and(|ps| sn_servable(ps, endgame, now, stall_limit));
        // An endgame piece (held by a busy peer) only for a child with nothing else to do.
        let held_elsewhere = |p: u32| task.pieces.get(p as usize).is_some_and(|ps| ps.holder_count > 0);
        let pieces = sn_open.iter().copied().filter(|&p| {
            !child.held.contains(p)
                && child.wants(p)
                && !child.assigned.contains_key(&p)
                && (!held_elsewhere(p) || starving(child))
                && servable(p)
        });
        self.rarest(task, pieces)
    }

    /// The piece with the fewest copies among `pieces`, ties broken at random (reservoir).
    fn rarest(&mut self, task: &TaskState, pieces: impl Iterator<Item = u32>) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0;
        for piece in pieces {
            let key = copies(task, piece);
            match best {
                Some((k, _)) if key > k => {}
                Some((k, _)) if key == k => {
                    ties += 1;
                    if self.rng.below(ties + 1) == 0 {
                        best = Some((key, piece));
                    }
                }
                _ => {
                    best = Some((key, piece));
                    ties = 0;
                }
            }
        }
        best.map(|(_, piece)| piece)
    }

    /// Pieces the supernode could serve right now (no usable holder, no recent copy in
    /// flight), or none when it has no free slot.
    pub(super) fn supernode_open(&self, task: &TaskState, now: Duration) -> Vec<u32> {
        if self.supernode_full() {
            return Vec::new();
        }
        let (endgame, stall_limit) = (endgame(task), self.stall_limit());
        // In the endgame every piece has reached a peer: the supernode's spare uplink helps with
        // the pieces whose holders are all busy. Before, it sends the pieces no peer holds.
        let servable =
            |p: &u32| task.pieces.get(*p as usize).is_some_and(|ps| sn_servable(ps, endgame, now, stall_limit));
        if endgame {
            task.landed.iter().copied().filter(servable).collect()
        } else {
            task.sn_candidates.iter().copied().filter(servable).collect()
        }
    }

    /// Tick: fully refills up to `limit` waiting members, continuing where the last tick
    /// stopped, so that every waiting member is reconsidered within a few ticks.
    pub(super) fn refill_waiting(&mut self, task: &mut TaskState, limit: usize, now: Duration, out: &mut Outbox) {
        let from = task.tick_cursor;
        let mut batch: Vec<(u64, u32)> = task.waiting.range((from, 0)..).take(limit).copied().collect();
        if batch.len() < limit {
            let more = limit - batch.len();
            batch.extend(task.waiting.range(..(from, 0)).take(more).copied());
        }
        task.tick_cursor = batch.last().map_or(0, |&(seq, _)| seq + 1);
        for (_, slot) in batch {
            self.fill(task, slot, now, out);
        }
    }
}

/// Whether the task is in its endgame: the origin fetch is complete and every piece has reached
/// at least one peer, so the supernode (whose first copies are all out) may serve pieces whose
/// holders are all busy instead of idling.
fn endgame(task: &TaskState) -> bool {
    task.total_pieces().is_some() && task.sn_candidates.is_empty()
}

/// Whether a child has (almost) nothing in flight: only such a child gets an endgame copy from
/// the supernode. A child busy with pieces from peers waits for them, so the supernode does not
/// serve a second copy to a host that a seed is already feeding.
fn starving(m: &Member) -> bool {
    m.assigned.len() < 2
}

/// In the endgame, the pieces the supernode may send again: still rare (fewer than
/// [`ENDGAME_RARE`] copies held or on their way from it) and with every holder busy. Rare only,
/// so the supernode's extra copies stay a small fraction of the file however big the swarm.
fn endgame_piece(ps: &PieceState) -> bool {
    ps.open_holders == 0 && (ps.holder_count as usize + ps.sn_copies.len()) < ENDGAME_RARE
}

/// Whether the supernode may send a copy of the piece now: in the endgame a rare piece whose
/// holders are all busy ([`endgame_piece`]), before it a piece no peer holds and no recent
/// supernode copy of which is in flight.
fn sn_servable(ps: &PieceState, endgame: bool, now: Duration, stall_limit: Duration) -> bool {
    if endgame {
        endgame_piece(ps)
    } else {
        ps.holder_count == 0 && !recent_copy(ps, now, stall_limit)
    }
}

/// Whether a supernode copy of the piece started less than `limit` before `now`.
fn recent_copy(ps: &PieceState, now: Duration, limit: Duration) -> bool {
    ps.sn_copies.iter().any(|&(_, start)| now.saturating_sub(start) < limit)
}

/// Copies of `piece` in the swarm or on their way: usable holders + assignments in flight.
fn copies(task: &TaskState, piece: u32) -> u32 {
    task.pieces.get(piece as usize).map_or(0, |ps| ps.holder_count + ps.inflight)
}
