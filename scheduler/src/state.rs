//! The scheduler's bookkeeping: peers, tasks, pieces, and the small data structures behind them.
//!
//! Peers get a global index (`gid`) for O(1) load lookups; inside a task each member gets a dense
//! local slot so that a piece's holders are a bitset over the task's members, not over every peer
//! the supernode knows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::{Assignment, PieceMeta};

/// Piece numbers at or above this are ignored: at least 1 MiB per piece makes this a 1 TiB file,
/// and it bounds what a peer's `have` list can make us allocate (128 KiB of bits).
pub(super) const MAX_PIECES: u32 = 1 << 20;

/// A growable set of small integers.
#[derive(Clone, Debug, Default)]
pub(super) struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// Whether `i` is in the set.
    pub(super) fn contains(&self, i: u32) -> bool {
        self.words.get((i / 64) as usize).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    /// Adds `i`; true if it was not there.
    pub(super) fn insert(&mut self, i: u32) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        fresh
    }

    /// Removes `i`; true if it was there.
    pub(super) fn remove(&mut self, i: u32) -> bool {
        let Some(word) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        let was = *word & bit != 0;
        *word &= !bit;
        was
    }

    /// One past the largest integer the set has room for.
    pub(super) fn capacity(&self) -> u32 {
        u32::try_from(self.words.len() * 64).unwrap_or(u32::MAX)
    }

    /// The members in `from..to`, ascending.
    pub(super) fn range(&self, from: u32, to: u32) -> impl Iterator<Item = u32> + '_ {
        ones(move |i| self.words[i], from, to.min(self.capacity()))
    }

    /// All members, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.range(0, self.capacity())
    }

    /// Calls `f` on the members of both `self` and `other`, starting at `start` and wrapping
    /// around, until `f` breaks. A tight loop over words: empty stretches cost little.
    pub(super) fn for_each_common_from(&self, other: &BitSet, start: u32, mut f: impl FnMut(u32) -> ControlFlow<()>) {
        let n = self.words.len().min(other.words.len());
        if n == 0 {
            return;
        }
        let start = start as usize % (n * 64);
        let (sw, high) = (start / 64, !0u64 << (start % 64));
        let mut visit = |wi: usize, mask: u64| {
            let mut w = self.words[wi] & other.words[wi] & mask;
            while w != 0 {
                let bit = w.trailing_zeros();
                w &= w - 1;
                f((wi * 64) as u32 + bit)?;
            }
            ControlFlow::Continue(())
        };
        let _ = (|| {
            visit(sw, high)?;
            for wi in (sw + 1..n).chain(0..sw) {
                visit(wi, !0)?;
            }
            visit(sw, !high)
        })();
    }

    /// Members of `self` that are not in `other`, ascending.
    pub(super) fn and_not_iter<'a>(&'a self, other: &'a BitSet) -> impl Iterator<Item = u32> + 'a {
        let word = move |i: usize| self.words[i] & !other.words.get(i).copied().unwrap_or(0);
        ones(word, 0, self.capacity())
    }
}

/// The set bits in `from..to` of the words `word(0)`, `word(1)`, ... (which must cover `to`).
fn ones(word: impl Fn(usize) -> u64 + Copy, from: u32, to: u32) -> impl Iterator<Item = u32> {
    let first = from / 64;
    let last = to.div_ceil(64);
    (first..last.max(first)).flat_map(move |wi| {
        let mut w = if from < to { word(wi as usize) } else { 0 };
        if wi == first {
            w &= !0u64 << (from % 64);
        }
        if wi + 1 == last && !to.is_multiple_of(64) {
            w &= (1u64 << (to % 64)) - 1;
        }
        let base = wi * 64;
        std::iter::from_fn(move || {
            (w != 0).then(|| {
                let bit = w.trailing_zeros();
                w &= w - 1;
                base + bit
            })
        })
    })
}

/// SplitMix64: a tiny, good-enough PRNG for tie-breaking; seeded, so runs are reproducible.
#[derive(Clone, Debug)]
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(super) fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// One upload slot a peer gives to a child.
#[derive(Clone, Debug)]
pub(super) struct Upload {
    pub(super) task: TaskId,
    /// The child's slot in `task`.
    pub(super) child: u32,
    pub(super) piece: u32,
}

/// What the scheduler knows about a peer across tasks.
#[derive(Debug)]
pub(super) struct PeerRec {
    pub(super) id: PeerId,
    /// Tasks it is registered for (to remove it from all of them when its connection goes).
    pub(super) tasks: BTreeSet<TaskId>,
    /// Upload slots in use, across tasks (never more than `max_uploads_per_peer` by our doing).
    pub(super) uploads: Vec<Upload>,
    /// At or over the strike threshold: never chosen as a parent.
    pub(super) bad: bool,
    /// Where the next offer of a freed upload slot to its other tasks starts (rotates).
    pub(super) next_task: usize,
}

/// Peers by global index, with index reuse.
#[derive(Debug, Default)]
pub(super) struct PeerTable {
    recs: Vec<Option<PeerRec>>,
    index: HashMap<PeerId, u32>,
    free: Vec<u32>,
}

impl PeerTable {
    pub(super) fn gid(&self, id: &PeerId) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub(super) fn get(&self, gid: u32) -> Option<&PeerRec> {
        self.recs.get(gid as usize).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, gid: u32) -> Option<&mut PeerRec> {
        self.recs.get_mut(gid as usize).and_then(Option::as_mut)
    }

    /// The index of `id`, registering it if new.
    pub(super) fn intern(&mut self, id: &PeerId, bad: bool) -> u32 {
        if let Some(gid) = self.gid(id) {
            return gid;
        }
        let rec = PeerRec { id: id.clone(), tasks: BTreeSet::new(), uploads: Vec::new(), bad, next_task: 0 };
        let gid = match self.free.pop() {
            Some(gid) => {
                self.recs[gid as usize] = Some(rec);
                gid
            }
            None => {
                self.recs.push(Some(rec));
                (self.recs.len() - 1) as u32
            }
        };
        self.index.insert(id.clone(), gid);
        gid
    }

    /// Forgets the peer if it is registered for no task any more.
    pub(super) fn release_if_unused(&mut self, gid: u32) {
        let Some(slot) = self.recs.get_mut(gid as usize) else {
            return;
        };
        if slot.as_ref().is_some_and(|r| r.tasks.is_empty()) {
            if let Some(rec) = slot.take() {
                self.index.remove(&rec.id);
                self.free.push(gid);
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Every registered peer with its index (for invariant checks).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &PeerRec)> + '_ {
        self.recs.iter().enumerate().filter_map(|(i, r)| Some((i as u32, r.as_ref()?)))
    }
}

/// Where a task's origin fetch stands.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    Fetching,
    Complete { total_pieces: u32, content_length: u64 },
    Failed { status: Option<u16>, refused: bool, message: String },
}

/// What the origin's response headers said.
#[derive(Clone, Copy, Debug)]
pub(super) struct TaskInfo {
    pub(super) content_length: Option<u64>,
    pub(super) piece_size: u32,
}

/// Where an outstanding assignment fetches from.
#[derive(Clone, Debug)]
pub(super) enum Source {
    Supernode,
    /// A peer; `gid` is `None` once the parent left the task (its slot is no longer counted, but
    /// the child keeps the assignment until it reports).
    Peer {
        id: PeerId,
        gid: Option<u32>,
    },
}

/// Per-piece state of a task.
#[derive(Clone, Debug, Default)]
pub(super) struct PieceState {
    /// `Some` once landed.
    pub(super) meta: Option<PieceMeta>,
    /// Member slots that hold the piece and may serve it (bad peers excluded).
    pub(super) holders: BitSet,
    pub(super) holder_count: u32,
    /// Holders that may take another upload (in `TaskState::open`): 0 means no peer can serve
    /// the piece right now, without scanning the holders.
    pub(super) open_holders: u32,
    /// Outstanding assignments of the piece, any parent.
    pub(super) inflight: u32,
    /// Supernode copies in flight: (child slot, start time).
    pub(super) sn_copies: Vec<(u32, Duration)>,
}

/// A peer's registration for one task.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) gid: u32,
    pub(super) id: PeerId,
    pub(super) addr: SocketAddr,
    /// Pieces it holds (including ones not landed at the supernode yet).
    pub(super) held: BitSet,
    pub(super) held_count: u32,
    /// Outstanding assignments by piece.
    pub(super) assigned: BTreeMap<u32, Source>,
    /// Parents it reported failing for a piece: never assigned to it again for that piece.
    pub(super) failed: BTreeMap<u32, Vec<PeerId>>,
    /// Parents it reported failing for two pieces or more: never assigned to it again in this
    /// task. (A parent is banned for everyone only when several children report it.)
    pub(super) avoid: Vec<PeerId>,
    pub(super) done: bool,
    /// Position in the task's waiting queue, if waiting.
    pub(super) wait_seq: Option<u64>,
    /// In an image swarm, the piece ranges (`start..end`, disjoint, in order) of the blobs it
    /// registered for: it is assigned no other piece. `None`: every piece of the task.
    pub(super) wants: Option<Vec<(u32, u32)>>,
}

impl Member {
    /// Whether the member downloads `piece` (see `wants`).
    pub(super) fn wants(&self, piece: u32) -> bool {
        let Some(ranges) = &self.wants else { return true };
        // The last range starting at or before `piece`.
        let i = ranges.partition_point(|&(a, _)| a <= piece);
        i > 0 && piece < ranges[i - 1].1
    }

    /// Adds the range `r` (disjoint from the others) to what the member downloads.
    pub(super) fn add_wants(&mut self, r: (u32, u32)) {
        let ranges = self.wants.get_or_insert_with(Vec::new);
        let i = ranges.partition_point(|&(a, _)| a < r.0);
        ranges.insert(i, r);
    }
}

/// Assignments produced while handling one event, one `Assign` message per peer.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub(super) assigns: BTreeMap<u32, Vec<Assignment>>,
}

/// One task.
#[derive(Debug)]
pub(super) struct TaskState {
    pub(super) id: TaskId,
    pub(super) info: Option<TaskInfo>,
    pub(super) origin: Origin,
    /// Indexed by piece number; grows as pieces land.
    pub(super) pieces: Vec<PieceState>,
    /// Landed piece numbers, in landing order.
    pub(super) landed: Vec<u32>,
    /// Landed pieces with no usable holder: the only ones the supernode may serve.
    pub(super) sn_candidates: BTreeSet<u32>,
    members: Vec<Option<Member>>,
    by_gid: HashMap<u32, u32>,
    free_slots: Vec<u32>,
    /// Members with free window and something to fetch that got nothing: (seq, slot), FIFO.
    pub(super) waiting: BTreeSet<(u64, u32)>,
    next_seq: u64,
    /// Where the next tick's refill of waiting members starts (a waiting seq).
    pub(super) tick_cursor: u64,
    /// The waiting entry the last drain stopped at: the next one continues after it.
    pub(super) drain_cursor: (u64, u32),
    /// Members that may take another upload (not bad, below the upload limit): with a piece's
    /// holders, finds a free parent without looking at busy ones. Change with `set_open`.
    pub(super) open: BitSet,
    /// Members that have not reported done.
    pub(super) active: usize,
    pub(super) idle_reported: bool,
}

impl TaskState {
    pub(super) fn new(id: TaskId) -> Self {
        Self {
            id,
            info: None,
            origin: Origin::Fetching,
            pieces: Vec::new(),
            landed: Vec::new(),
            sn_candidates: BTreeSet::new(),
            members: Vec::new(),
            by_gid: HashMap::new(),
            free_slots: Vec::new(),
            waiting: BTreeSet::new(),
            next_seq: 0,
            tick_cursor: 0,
            drain_cursor: (0, 0),
            open: BitSet::default(),
            active: 0,
            idle_reported: false,
        }
    }

    pub(super) fn member(&self, slot: u32) -> Option<&Member> {
        self.members.get(slot as usize).and_then(Option::as_ref)
    }

    pub(super) fn member_mut(&mut self, slot: u32) -> Option<&mut Member> {
        self.members.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Members with their slots, in slot order.
    pub(super) fn members(&self) -> impl Iterator<Item = (u32, &Member)> + '_ {
        self.members.iter().enumerate().filter_map(|(i, m)| Some((i as u32, m.as_ref()?)))
    }

    pub(super) fn slot_of(&self, gid: u32) -> Option<u32> {
        self.by_gid.get(&gid).copied()
    }

    pub(super) fn add_member(&mut self, member: Member) -> u32 {
        if !member.done {
            self.active += 1;
        }
        let gid = member.gid;
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.members[slot as usize] = Some(member);
                slot
            }
            None => {
                self.members.push(Some(member));
                (self.members.len() - 1) as u32
            }
        };
        self.by_gid.insert(gid, slot);
        slot
    }

    /// Unregisters the member (its assignments and holdings must be released already).
    pub(super) fn take_member(&mut self, slot: u32) -> Option<Member> {
        let m = self.members.get_mut(slot as usize)?.take()?;
        self.by_gid.remove(&m.gid);
        self.set_open(slot, false);
        self.free_slots.push(slot);
        if !m.done {
            self.active = self.active.saturating_sub(1);
        }
        Some(m)
    }

    pub(super) fn total_pieces(&self) -> Option<u32> {
        match self.origin {
            Origin::Complete { total_pieces, .. } => Some(total_pieces),
            _ => None,
        }
    }

    /// Piece numbers at or above this are ignored.
    pub(super) fn piece_bound(&self) -> u32 {
        self.total_pieces().unwrap_or(MAX_PIECES).min(MAX_PIECES)
    }

    pub(super) fn is_landed(&self, piece: u32) -> bool {
        self.pieces.get(piece as usize).is_some_and(|p| p.meta.is_some())
    }

    pub(super) fn failed(&self) -> bool {
        matches!(self.origin, Origin::Failed { .. })
    }

    /// Whether the member may get assignments at all.
    pub(super) fn downloading(&self, m: &Member) -> bool {
        !m.done && !self.failed()
    }

    /// Makes `slot` a holder of `piece` (if landed); `bad` peers never become holders.
    pub(super) fn add_holder(&mut self, slot: u32, piece: u32, bad: bool) {
        if bad {
            return;
        }
        let Some(p) = self.pieces.get_mut(piece as usize) else {
            return;
        };
        if p.meta.is_some() && p.holders.insert(slot) {
            p.holder_count += 1;
            p.open_holders += u32::from(self.open.contains(slot));
            self.sn_candidates.remove(&piece);
        }
    }

    /// `slot` no longer serves `piece`. Returns whether that left the landed piece without any
    /// holder (so the supernode may serve it again).
    pub(super) fn remove_holder(&mut self, slot: u32, piece: u32) -> bool {
        let Some(p) = self.pieces.get_mut(piece as usize) else {
            return false;
        };
        if !p.holders.remove(slot) {
            return false;
        }
        p.holder_count -= 1;
        p.open_holders -= u32::from(self.open.contains(slot));
        if p.holder_count == 0 && p.meta.is_some() {
            self.sn_candidates.insert(piece);
            return true;
        }
        false
    }

    /// Records whether member `slot` may take another upload, keeping the pieces'
    /// `open_holders` counts in step.
    pub(super) fn set_open(&mut self, slot: u32, open: bool) {
        let changed = if open { self.open.insert(slot) } else { self.open.remove(slot) };
        let Some(m) = self.members.get(slot as usize).and_then(Option::as_ref).filter(|_| changed) else {
            return;
        };
        for piece in m.held.iter() {
            if let Some(p) = self.pieces.get_mut(piece as usize).filter(|p| p.holders.contains(slot)) {
                if open {
                    p.open_holders += 1;
                } else {
                    p.open_holders -= 1;
                }
            }
        }
    }

    /// Marks the member as downloading again (an image swarm member that registered another blob).
    pub(super) fn mark_active(&mut self, slot: u32) {
        if let Some(m) = self.members.get_mut(slot as usize).and_then(Option::as_mut) {
            if m.done {
                m.done = false;
                self.active += 1;
            }
        }
    }

    /// Marks the member done (it downloads no more).
    pub(super) fn mark_done(&mut self, slot: u32) {
        if let Some(m) = self.members.get_mut(slot as usize).and_then(Option::as_mut) {
            if !m.done {
                m.done = true;
                self.active = self.active.saturating_sub(1);
            }
        }
    }

    /// Number of registered members.
    pub(super) fn member_count(&self) -> usize {
        self.by_gid.len()
    }

    /// Puts `slot` in (keeping its place if there already) or out of the waiting queue.
    pub(super) fn set_waiting(&mut self, slot: u32, waiting: bool) {
        let seq = self.next_seq;
        let Some(m) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        match (m.wait_seq, waiting) {
            (None, true) => {
                m.wait_seq = Some(seq);
                self.next_seq += 1;
                self.waiting.insert((seq, slot));
            }
            (Some(old), false) => {
                m.wait_seq = None;
                self.waiting.remove(&(old, slot));
            }
            _ => {}
        }
    }
}
