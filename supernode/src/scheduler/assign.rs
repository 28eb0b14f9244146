//! Choosing pieces and parents: filling a peer's window rarest first, picking the least loaded
//! usable parent (the supernode only as a last resort), slot accounting, and offering new
//! capacity to waiting peers.

use std::ops::Bound;
use std::time::Duration;

use super::state::{Outbox, PieceState, Source, TaskState, Upload};
use super::{Assignment, Parent, Shared};

/// At most this many candidate pieces are tried per fill (keeps a fill cheap when most pieces
/// have no parent right now).
const CANDIDATE_SCAN: usize = 64;
/// At most this many holders are looked at when choosing a parent.
const HOLDER_SCAN: usize = 64;

/// Capacity that appeared while handling an event: who may be able to serve waiting peers now.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    /// Member slots that gained a free upload slot or a piece.
    pub(super) peers: Vec<u32>,
    /// The supernode gained a free upload slot or a piece it may serve.
    pub(super) supernode: bool,
    /// Reconsider every waiting peer (ticks, or too much changed to track).
    pub(super) all: bool,
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

    fn is_empty(&self) -> bool {
        self.peers.is_empty() && !self.supernode && !self.all
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
    /// when room and candidates remain without a parent. Returns whether the supernode got a new
    /// upload.
    pub(super) fn fill(&mut self, task: &mut TaskState, slot: u32, now: Duration, out: &mut Outbox) -> bool {
        let Some(m) = task.member(slot) else {
            return false;
        };
        let mut room =
            if task.downloading(m) { self.config.window_per_peer.saturating_sub(m.assigned.len()) } else { 0 };
        if room == 0 {
            task.set_waiting(slot, false);
            return false;
        }
        let (candidates, total) = self.candidates(task, slot);
        let mut used_supernode = false;
        let mut assigned = 0;
        for piece in candidates {
            if room == 0 {
                break;
            }
            let Some(pick) = self.choose_parent(task, slot, piece, now) else {
                continue;
            };
            used_supernode |= matches!(pick, Pick::Supernode);
            self.assign(task, slot, piece, pick, now, out);
            room -= 1;
            assigned += 1;
        }
        task.set_waiting(slot, room > 0 && total > assigned);
        used_supernode
    }

    /// Landed pieces `slot` neither holds nor was assigned: the `CANDIDATE_SCAN` rarest (fewest
    /// holders + assignments in flight, ties in random order), and how many there are in all.
    fn candidates(&mut self, task: &TaskState, slot: u32) -> (Vec<u32>, usize) {
        let Some(m) = task.member(slot) else {
            return (Vec::new(), 0);
        };
        let rng = &mut self.rng;
        let mut keyed: Vec<(u32, u64, u32)> = task
            .landed
            .iter()
            .copied()
            .filter(|&p| !m.held.contains(p) && !m.assigned.contains_key(&p))
            .map(|p| {
                let copies = task.pieces.get(p as usize).map_or(0, |ps| ps.holder_count + ps.inflight);
                (copies, rng.next_u64(), p)
            })
            .collect();
        let total = keyed.len();
        if keyed.len() > CANDIDATE_SCAN {
            keyed.select_nth_unstable(CANDIDATE_SCAN - 1);
            keyed.truncate(CANDIDATE_SCAN);
        }
        keyed.sort_unstable();
        (keyed.into_iter().map(|(_, _, p)| p).collect(), total)
    }

    /// The parent for `child` to fetch `piece` from now, if any: the least loaded usable holder
    /// with a free slot; else the supernode if no usable peer holds the piece at all, no recent
    /// supernode copy is in flight and the supernode has a free slot.
    fn choose_parent(&mut self, task: &TaskState, child: u32, piece: u32, now: Duration) -> Option<Pick> {
        let ps = task.pieces.get(piece as usize)?;
        let failed = task.member(child)?.failed.get(&piece);
        if ps.holder_count > 0 {
            let start = self.rng.below(ps.holders.capacity());
            let mut usable = false;
            let mut best: Option<(usize, u32)> = None;
            let holders = ps.holders.iter_from(start).filter(|&s| s != child);
            for slot in holders.take(HOLDER_SCAN) {
                let Some(h) = task.member(slot) else {
                    continue;
                };
                if failed.is_some_and(|f| f.contains(&h.id)) {
                    continue;
                }
                let Some(rec) = self.peers.get(h.gid).filter(|r| !r.bad) else {
                    continue;
                };
                usable = true;
                let load = rec.uploads.len();
                if load < self.config.max_uploads_per_peer && best.is_none_or(|(b, _)| load < b) {
                    best = Some((load, slot));
                    if load == 0 {
                        break;
                    }
                }
            }
            if let Some((_, slot)) = best {
                return Some(Pick::Peer(slot));
            }
            if usable {
                // Busy holders exist: wait for them rather than load the supernode.
                return None;
            }
        }
        let free = self.sn_uploads < self.config.max_supernode_uploads;
        (free && !self.recent_supernode_copy(ps, now)).then_some(Pick::Supernode)
    }

    /// Whether a supernode copy of the piece started less than `stalled_after` ago is in flight.
    fn recent_supernode_copy(&self, ps: &PieceState, now: Duration) -> bool {
        let stalled_after = self.config.stalled_after;
        ps.sn_copies.iter().any(|&(_, start)| now.saturating_sub(start) < stalled_after)
    }

    /// Records the assignment of `piece` to `child` from `pick` and queues it for sending.
    fn assign(&mut self, task: &mut TaskState, child: u32, piece: u32, pick: Pick, now: Duration, out: &mut Outbox) {
        let (source, parent) = match pick {
            Pick::Supernode => {
                self.sn_uploads += 1;
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
            Source::Supernode => self.sn_uploads = self.sn_uploads.saturating_sub(1),
            Source::Peer { gid: Some(gid), .. } => {
                if let Some(rec) = self.peers.get_mut(*gid) {
                    rec.uploads.retain(|u| !(u.child == child && u.piece == piece && u.task == task.id));
                }
            }
            Source::Peer { gid: None, .. } => {}
        }
        Some(source)
    }

    /// Offers new capacity to the task's waiting peers, longest waiting first, until the
    /// capacity is used up (or, with `fresh.all`, to every waiting peer).
    pub(super) fn drain(&mut self, task: &mut TaskState, fresh: &Fresh, now: Duration, out: &mut Outbox) {
        if fresh.is_empty() || task.failed() {
            return;
        }
        let mut sn_open = if fresh.supernode { self.supernode_open(task, now) } else { Vec::new() };
        let mut cursor: Option<(u64, u32)> = None;
        loop {
            let open_peer = fresh.peers.iter().any(|&s| self.can_upload(task, s));
            if !fresh.all && sn_open.is_empty() && !open_peer {
                break;
            }
            let next = match cursor {
                None => task.waiting.first(),
                Some(c) => task.waiting.range((Bound::Excluded(c), Bound::Unbounded)).next(),
            };
            let Some(&key) = next else {
                break;
            };
            cursor = Some(key);
            if !fresh.all && !self.may_gain(task, key.1, &fresh.peers, &sn_open) {
                continue;
            }
            if self.fill(task, key.1, now, out) && !sn_open.is_empty() {
                sn_open = self.supernode_open(task, now);
            }
        }
    }

    /// Pieces the supernode could serve right now (no usable holder, no recent copy in
    /// flight), or none when it has no free slot.
    fn supernode_open(&self, task: &TaskState, now: Duration) -> Vec<u32> {
        if self.sn_uploads >= self.config.max_supernode_uploads {
            return Vec::new();
        }
        task.sn_candidates
            .iter()
            .copied()
            .filter(|&p| task.pieces.get(p as usize).is_some_and(|ps| !self.recent_supernode_copy(ps, now)))
            .collect()
    }

    /// Whether member `slot` can take another upload (and has something to upload).
    fn can_upload(&self, task: &TaskState, slot: u32) -> bool {
        task.member(slot).is_some_and(|m| {
            m.held_count > 0
                && self.peers.get(m.gid).is_some_and(|r| !r.bad && r.uploads.len() < self.config.max_uploads_per_peer)
        })
    }

    /// Cheap pre-check: could the waiting member `slot` use the fresh capacity? (False
    /// positives only cost a fill.)
    fn may_gain(&self, task: &TaskState, slot: u32, fresh_peers: &[u32], sn_open: &[u32]) -> bool {
        let Some(w) = task.member(slot) else {
            return false;
        };
        let from_peer = fresh_peers.iter().any(|&s| {
            s != slot && self.can_upload(task, s) && task.member(s).is_some_and(|p| p.held.has_any_not_in(&w.held))
        });
        from_peer || sn_open.iter().any(|&p| !w.held.contains(p) && !w.assigned.contains_key(&p))
    }
}
