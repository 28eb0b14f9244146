//! Image swarms: the blobs of one image pull scheduled as one task.
//!
//! A container engine pulls an image as several blobs (its layers and config), each a task of its
//! own on the wire: its own origin fetch, piece table, control stream and ticket. Scheduled one
//! by one, each blob has its own rarest-first order, windows and links: the supernode's links
//! stay with the blob they started in, so one blob's first copies go out last and it trails,
//! and a host's upload slot freed in one blob is not where the image's rarest piece is. (16
//! hosts pulling 128 MiB as four layers finished at 1.18-1.25x the bound, as one blob at
//! 1.10-1.13x: DESIGN.md, "Swarm speed".)
//!
//! So, as BitTorrent puts the files of a torrent side by side in one piece space, the blobs a
//! registration groups ([`Event::Grouped`]) are placed side by side in one core task, the
//! *swarm*: blob `k`'s piece `i` is the swarm's piece `base_k + i`. A blob is placed when the
//! origin's headers give its length (until then its peers wait here); a blob whose length the
//! origin does not announce is scheduled on its own. Each member of the swarm is assigned only
//! pieces of the blobs it registered for (`Member::wants`): registering for a blob is what the
//! supernode admits, so a swarm gives nobody a piece of a blob it was not admitted to.
//!
//! [`Scheduler`] sits around the core and translates: events about a placed blob become events
//! about its swarm, and the core's messages about the swarm become per-blob messages with the
//! blob's own piece numbers, on the control stream of that blob. Per-blob news (the origin's
//! length, completion, failure) is sent from here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use damselfly_types::piece::piece_count;

use super::state::MAX_PIECES;
use super::swarm::Span;
use super::{Action, Core, Down, Event, PeerSummary, SchedulerConfig, TaskPhase, TaskSummary};

/// The scheduler: blob tasks, and image swarms of several blobs. See the [crate
/// documentation](crate) for the policy and [this module](self) for the swarms.
pub struct Scheduler {
    core: Core,
    /// Blobs claimed for or placed in a swarm. A blob not here is a task of its own.
    blobs: HashMap<TaskId, Blob>,
    /// Swarms by their core task id.
    swarms: BTreeMap<TaskId, Swarm>,
    /// The swarms each peer is a member of.
    peer_swarms: HashMap<PeerId, BTreeSet<TaskId>>,
    /// Blobs claimed and not placed yet.
    pending: BTreeSet<TaskId>,
    /// Actions produced outside [`Scheduler::on_event`] (an eviction), sent with the next event's.
    deferred: Vec<Action>,
}

struct Blob {
    swarm: TaskId,
    place: Place,
}

enum Place {
    /// The origin has not answered: the number of pieces is unknown, its peers wait here.
    Pending(Vec<Joiner>),
    Placed(Placed),
}

/// A registration waiting for its blob to be placed.
struct Joiner {
    peer: PeerId,
    addr: SocketAddr,
    have: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Placed {
    /// The blob's pieces in the swarm.
    span: Span,
    content_length: u64,
    piece_size: u32,
    /// `Some(total pieces)` once the origin fetch completed.
    complete: Option<u32>,
}

#[derive(Default)]
struct Swarm {
    /// Placed blobs by their first piece in the swarm.
    spans: BTreeMap<u32, TaskId>,
    /// Where the next blob is placed.
    next: u32,
    /// The core knows the swarm as a task.
    started: bool,
    /// The core was told that every placed blob landed.
    complete: bool,
    /// Claimed blobs not placed yet.
    pending: usize,
    /// Each member's blobs, and whether it is done with each.
    members: BTreeMap<PeerId, BTreeMap<TaskId, bool>>,
}

/// The core task id of the swarm of `group`.
fn swarm_id(group: &str) -> TaskId {
    TaskId::new(format!("image:{group}"))
}

/// The group of the swarm `sid` (see [`swarm_id`]).
fn group_of(sid: &TaskId) -> Option<String> {
    sid.as_str().strip_prefix("image:").map(str::to_owned)
}

impl Scheduler {
    /// A scheduler with no tasks.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            core: Core::new(config),
            blobs: HashMap::new(),
            swarms: BTreeMap::new(),
            peer_swarms: HashMap::new(),
            pending: BTreeSet::new(),
            deferred: Vec::new(),
        }
    }

    /// Applies one event at time `now` (monotonic, any epoch) and returns what to do, in order.
    /// Events about unknown tasks or peers are ignored, except [`Event::TaskStarted`], which
    /// creates its task.
    pub fn on_event(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = std::mem::take(&mut self.deferred);
        match event {
            Event::Grouped { task, group } => self.claim(now, task, &group, &mut out),
            Event::TaskStarted { task, content_length, piece_size } if self.blobs.contains_key(&task) => {
                self.blob_started(now, &task, content_length, piece_size, &mut out)
            }
            Event::PieceLanded { task, mut piece } => match self.placed(&task) {
                Some((sid, p)) => {
                    if piece.number < p.span.1 - p.span.0 {
                        piece.number += p.span.0;
                        self.core_event(now, Event::PieceLanded { task: sid, piece }, &mut out);
                    }
                }
                None if self.blobs.contains_key(&task) => {}
                None => self.core_event(now, Event::PieceLanded { task, piece }, &mut out),
            },
            Event::OriginComplete { task, total_pieces, content_length } if self.blobs.contains_key(&task) => {
                self.blob_complete(now, &task, total_pieces, content_length, &mut out)
            }
            Event::OriginFailed { task, status, refused, message } if self.blobs.contains_key(&task) => {
                let failed = Down::Failed { status, refused, message };
                self.blob_failed(now, &task, failed, &mut out)
            }
            Event::PeerJoined { task, peer, addr, have } if self.blobs.contains_key(&task) => {
                self.blob_joined(now, &task, Joiner { peer, addr, have }, &mut out)
            }
            Event::PieceFinished { task, peer, piece } if self.blobs.contains_key(&task) => {
                if let Some((sid, piece)) = self.swarm_piece(&task, &peer, piece) {
                    self.core_event(now, Event::PieceFinished { task: sid, peer, piece }, &mut out);
                }
            }
            Event::PieceFailed { task, peer, piece, parent, reason } if self.blobs.contains_key(&task) => {
                if let Some((sid, piece)) = self.swarm_piece(&task, &peer, piece) {
                    self.core_event(now, Event::PieceFailed { task: sid, peer, piece, parent, reason }, &mut out);
                }
            }
            Event::PeerDone { task, peer } if self.blobs.contains_key(&task) => {
                self.blob_done(now, &task, &peer, &mut out)
            }
            Event::PeerLeft { task, peer } if self.blobs.contains_key(&task) => {
                self.blob_left(now, &task, &peer, &mut out)
            }
            Event::PeerGone { peer } => {
                self.core_event(now, Event::PeerGone { peer: peer.clone() }, &mut out);
                self.forget_peer(&peer);
            }
            event => self.core_event(now, event, &mut out),
        }
        out
    }

    /// A summary of `task` (pieces, origin phase, peers), or `None` if unknown. A blob of a
    /// swarm is summarised on its own: its pieces, and the peers that registered for it.
    pub fn task_summary(&self, task: &TaskId) -> Option<TaskSummary> {
        let Some(blob) = self.blobs.get(task) else {
            return self.core.task_summary(task);
        };
        let p = match &blob.place {
            Place::Pending(joiners) => {
                let peers = joiners
                    .iter()
                    .map(|j| PeerSummary {
                        id: j.peer.clone(),
                        addr: j.addr,
                        pieces_held: 0,
                        in_flight: 0,
                        done: false,
                    })
                    .collect();
                return Some(TaskSummary {
                    landed_pieces: 0,
                    total_pieces: None,
                    content_length: None,
                    piece_size: None,
                    phase: TaskPhase::Pending,
                    peers,
                    image_swarm: group_of(&blob.swarm),
                });
            }
            Place::Placed(p) => p,
        };
        let members = &self.swarms.get(&blob.swarm)?.members;
        let (landed_pieces, peers) =
            self.core.range_summary(&blob.swarm, p.span, |peer| members.get(peer)?.get(task).copied());
        Some(TaskSummary {
            landed_pieces,
            total_pieces: p.complete,
            content_length: Some(p.content_length),
            piece_size: Some(p.piece_size),
            phase: if p.complete.is_some() { TaskPhase::Complete } else { TaskPhase::Fetching },
            peers,
            image_swarm: group_of(&blob.swarm),
        })
    }

    /// Every known task (blob), in id order.
    pub fn tasks(&self) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = self.core.tasks().into_iter().filter(|t| !self.swarms.contains_key(t)).collect();
        tasks.extend(self.blobs.keys().cloned());
        tasks.sort();
        tasks
    }

    /// Number of known tasks (blobs): `tasks().len()` without listing them.
    pub fn task_count(&self) -> usize {
        self.core.task_count() - self.swarms.values().filter(|s| s.started).count() + self.blobs.len()
    }

    /// Number of peers registered for at least one task.
    pub fn peer_count(&self) -> usize {
        let waiting: BTreeSet<&PeerId> = self
            .pending
            .iter()
            .filter_map(|b| match &self.blobs.get(b)?.place {
                Place::Pending(joiners) => Some(joiners.iter().map(|j| &j.peer)),
                Place::Placed(_) => None,
            })
            .flatten()
            .filter(|p| !self.core.knows_peer(p))
            .collect();
        self.core.peer_count() + waiting.len()
    }

    /// Peers banned now (not used as parents until their strikes expire), with their strikes,
    /// in id order.
    pub fn bad_peers(&self) -> Vec<(PeerId, u32)> {
        self.core.bad_peers()
    }

    /// Uploads currently assigned to the supernode.
    pub fn supernode_uploads_in_flight(&self) -> usize {
        self.core.supernode_uploads_in_flight()
    }

    /// True when a peer of `task` is still downloading it (such a task must not be forgotten).
    pub fn has_downloaders(&self, task: &TaskId) -> bool {
        let Some(blob) = self.blobs.get(task) else {
            return self.core.has_downloaders(task);
        };
        match &blob.place {
            Place::Pending(_) => true,
            Place::Placed(_) => self
                .swarms
                .get(&blob.swarm)
                .is_some_and(|s| s.members.values().any(|blobs| blobs.get(task) == Some(&false))),
        }
    }

    /// Forgets `task` and its seeds (no-op for an unknown task), after the supernode evicted
    /// its content. Returns false, changing nothing, when a peer is still downloading it.
    pub fn forget_task(&mut self, now: Duration, task: &TaskId) -> bool {
        if !self.blobs.contains_key(task) {
            return self.core.forget_task(now, task);
        }
        if self.has_downloaders(task) {
            return false;
        }
        let Some((sid, p)) = self.placed(task) else { return false };
        let mut out = Vec::new();
        self.drop_blob(now, &sid, task, p.span, None, &mut out);
        self.deferred.extend(out);
        true
    }

    /// Feeds `event` to the core and translates what it answers.
    fn core_event(&mut self, now: Duration, event: Event, out: &mut Vec<Action>) {
        let actions = self.core.on_event(now, event);
        self.translate(actions, out);
    }

    /// The core's actions as the peers must get them: messages about a swarm become messages
    /// about its blobs, in their own piece numbers, to the members registered for each.
    fn translate(&self, actions: Vec<Action>, out: &mut Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { peer, task, msg } if self.swarms.contains_key(&task) => {
                    let swarm = &self.swarms[&task];
                    let Some(mine) = swarm.members.get(&peer) else { continue };
                    match msg {
                        Down::Pieces(list) => {
                            for (blob, list) in self.split(swarm, mine, list, |m| &mut m.number) {
                                out.push(Action::Send { peer: peer.clone(), task: blob, msg: Down::Pieces(list) });
                            }
                        }
                        Down::Assign(list) => {
                            for (blob, list) in self.split(swarm, mine, list, |a| &mut a.piece) {
                                out.push(Action::Send { peer: peer.clone(), task: blob, msg: Down::Assign(list) });
                            }
                        }
                        // Per blob: sent by this module.
                        Down::TaskInfo { .. } | Down::Complete { .. } | Down::Failed { .. } => {}
                    }
                }
                Action::TaskIdle { task } if self.swarms.contains_key(&task) => {}
                action => out.push(action),
            }
        }
    }

    /// Sorts `items` (piece table entries or assignments, numbered in the swarm) by blob,
    /// renumbered in the blob, keeping only the blobs `mine` is downloading.
    fn split<T>(
        &self,
        swarm: &Swarm,
        mine: &BTreeMap<TaskId, bool>,
        items: Vec<T>,
        number: impl Fn(&mut T) -> &mut u32,
    ) -> BTreeMap<TaskId, Vec<T>> {
        let mut by_blob: BTreeMap<TaskId, Vec<T>> = BTreeMap::new();
        for mut item in items {
            let n = number(&mut item);
            let Some((&base, blob)) = swarm.spans.range(..=*n).next_back() else { continue };
            let within = self.placed(blob).is_some_and(|(_, p)| *n < p.span.1);
            if !within || mine.get(blob) != Some(&false) {
                continue;
            }
            *n -= base;
            by_blob.entry(blob.clone()).or_default().push(item);
        }
        by_blob
    }

    /// The swarm and placement of `blob`, if it is placed.
    fn placed(&self, blob: &TaskId) -> Option<(TaskId, Placed)> {
        match self.blobs.get(blob)? {
            Blob { swarm, place: Place::Placed(p) } => Some((swarm.clone(), *p)),
            _ => None,
        }
    }

    /// `piece` of placed `blob` as the swarm numbers it, if `peer` is registered for the blob.
    fn swarm_piece(&self, blob: &TaskId, peer: &PeerId, piece: u32) -> Option<(TaskId, u32)> {
        let (sid, p) = self.placed(blob)?;
        let registered = self.swarms.get(&sid)?.members.get(peer)?.contains_key(blob);
        (registered && piece < p.span.1 - p.span.0).then_some((sid, p.span.0 + piece))
    }

    /// A registration names `group` for `blob`: an unknown blob is claimed for its swarm.
    fn claim(&mut self, now: Duration, blob: TaskId, group: &str, out: &mut Vec<Action>) {
        if !self.core.config().image_swarms || self.blobs.contains_key(&blob) {
            return;
        }
        let sid = swarm_id(group);
        if self.core.has_task(&blob) {
            self.adopt(now, sid, blob, out);
            return;
        }
        self.swarms.entry(sid.clone()).or_default().pending += 1;
        self.pending.insert(blob.clone());
        self.blobs.insert(blob, Blob { swarm: sid, place: Place::Pending(Vec::new()) });
    }

    /// Moves `blob`, known to the core as a task of its own (cached before any registration
    /// named a group: a preheat, or a supernode restart's restore), into swarm `sid` with what
    /// landed and its seeds, if nobody downloads it now and its length is known.
    fn adopt(&mut self, now: Duration, sid: TaskId, blob: TaskId, out: &mut Vec<Action>) {
        let Some(count) = self.core.takeable(&blob).and_then(|(len, ps)| self.room(&sid, Some(len), ps)) else {
            return;
        };
        let Some(taken) = self.core.take_task(now, &blob) else { return };
        let placed = self.place(now, &sid, &blob, (taken.content_length, taken.piece_size, count), taken.complete, out);
        for mut meta in taken.landed.into_iter().filter(|m| m.number < count) {
            meta.number += placed.span.0;
            self.core_event(now, Event::PieceLanded { task: sid.clone(), piece: meta }, out);
        }
        // Every member of a task that may be taken is done: it holds the whole blob, even the
        // pieces that had not landed when it got them (from the origin itself).
        for (peer, addr, _) in taken.seeds {
            let j = Joiner { peer: peer.clone(), addr, have: (0..count).collect() };
            self.enter(now, &sid, &blob, placed, j, out);
            self.blob_done(now, &blob, &peer, out);
        }
        self.complete_if_landed(now, &sid, out);
    }

    /// The number of pieces of a blob of `content_length` in `piece_size` pieces, if it can be
    /// placed in swarm `sid`: its length is known, it has pieces, and they fit.
    fn room(&self, sid: &TaskId, content_length: Option<u64>, piece_size: u32) -> Option<u32> {
        let count = piece_count(content_length?, piece_size);
        let next = self.swarms.get(sid).map_or(0, |s| s.next);
        (count > 0 && u64::from(next) + u64::from(count) <= u64::from(MAX_PIECES)).then_some(count)
    }

    /// Places `blob` (its length, piece size and number of pieces, checked by
    /// [`Scheduler::room`]) after the other blobs of swarm `sid`, starting or reopening the
    /// swarm in the core.
    fn place(
        &mut self,
        now: Duration,
        sid: &TaskId,
        blob: &TaskId,
        (content_length, piece_size, count): (u64, u32, u32),
        complete: Option<u32>,
        out: &mut Vec<Action>,
    ) -> Placed {
        let swarm = self.swarms.entry(sid.clone()).or_default();
        let base = swarm.next;
        swarm.next += count;
        swarm.spans.insert(base, blob.clone());
        let placed = Placed { span: (base, base + count), content_length, piece_size, complete };
        if !swarm.started {
            swarm.started = true;
            let event = Event::TaskStarted { task: sid.clone(), content_length: None, piece_size };
            self.core_event(now, event, out);
        } else if swarm.complete {
            swarm.complete = false;
            self.core.reopen(sid);
        }
        self.blobs.insert(blob.clone(), Blob { swarm: sid.clone(), place: Place::Placed(placed) });
        placed
    }

    /// The origin answered for a claimed blob: it is placed after the swarm's other blobs, or
    /// becomes a task of its own when its length is unknown (or the swarm is full).
    fn blob_started(
        &mut self,
        now: Duration,
        blob: &TaskId,
        content_length: Option<u64>,
        piece_size: u32,
        out: &mut Vec<Action>,
    ) {
        if !self.pending.remove(blob) {
            // A placed blob's fetch does not start again: it failed first, and was unplaced then.
            return;
        }
        let Some(Blob { swarm: sid, place: Place::Pending(joiners) }) = self.blobs.remove(blob) else { return };
        if let Some(swarm) = self.swarms.get_mut(&sid) {
            swarm.pending -= 1;
        }
        let (Some(count), Some(len)) = (self.room(&sid, content_length, piece_size), content_length) else {
            // On its own, as if never claimed.
            self.core_event(now, Event::TaskStarted { task: blob.clone(), content_length, piece_size }, out);
            for j in joiners {
                let event = Event::PeerJoined { task: blob.clone(), peer: j.peer, addr: j.addr, have: j.have };
                self.core_event(now, event, out);
            }
            // It may have been the last blob the swarm waited for.
            self.complete_if_landed(now, &sid, out);
            self.drop_if_empty(now, &sid, out);
            return;
        };
        let placed = self.place(now, &sid, blob, (len, piece_size, count), None, out);
        for j in joiners {
            self.enter(now, &sid, blob, placed, j, out);
        }
    }

    /// `j` registers for placed `blob`: it is told the blob's length, joins the swarm for the
    /// blob's pieces and gets the blob's piece table (and completion, if it is complete).
    fn enter(&mut self, now: Duration, sid: &TaskId, blob: &TaskId, p: Placed, j: Joiner, out: &mut Vec<Action>) {
        let info = Down::TaskInfo { content_length: Some(p.content_length), piece_size: p.piece_size };
        out.push(Action::Send { peer: j.peer.clone(), task: blob.clone(), msg: info });
        let count = p.span.1 - p.span.0;
        let have: Vec<u32> = j.have.iter().filter(|&&i| i < count).map(|&i| p.span.0 + i).collect();
        let Some(swarm) = self.swarms.get_mut(sid) else { return };
        swarm.members.entry(j.peer.clone()).or_default().insert(blob.clone(), false);
        self.peer_swarms.entry(j.peer.clone()).or_default().insert(sid.clone());
        let mut actions = Vec::new();
        self.core.add_wants(now, sid, &j.peer, j.addr, p.span, &have, &mut actions);
        self.translate(actions, out);
        if let Some(total_pieces) = p.complete {
            let msg = Down::Complete { total_pieces, content_length: p.content_length };
            out.push(Action::Send { peer: j.peer, task: blob.clone(), msg });
        }
    }

    fn blob_joined(&mut self, now: Duration, blob: &TaskId, j: Joiner, out: &mut Vec<Action>) {
        let Some(b) = self.blobs.get_mut(blob) else { return };
        let sid = b.swarm.clone();
        match &mut b.place {
            Place::Pending(joiners) => {
                joiners.retain(|w| w.peer != j.peer);
                joiners.push(j);
            }
            Place::Placed(p) => {
                let p = *p;
                // A registration again: start over from what the peer says it holds now.
                self.leave_blob(now, &sid, blob, &j.peer, out);
                self.enter(now, &sid, blob, p, j, out);
            }
        }
    }

    fn blob_done(&mut self, now: Duration, blob: &TaskId, peer: &PeerId, out: &mut Vec<Action>) {
        let Some((sid, p)) = self.placed(blob) else {
            // Done without the swarm (from the origin) before the blob was placed.
            self.forget_joiner(blob, peer);
            return;
        };
        let Some(mine) = self.swarms.get_mut(&sid).and_then(|s| s.members.get_mut(peer)) else { return };
        match mine.get_mut(blob) {
            Some(done) if !*done => *done = true,
            _ => return,
        }
        let all_done = mine.values().all(|&d| d);
        let mut actions = Vec::new();
        self.core.range_done(now, &sid, peer, p.span, &mut actions);
        self.translate(actions, out);
        if all_done {
            self.core_event(now, Event::PeerDone { task: sid, peer: peer.clone() }, out);
        }
    }

    fn blob_left(&mut self, now: Duration, blob: &TaskId, peer: &PeerId, out: &mut Vec<Action>) {
        match self.blobs.get(blob).map(|b| b.swarm.clone()) {
            Some(sid) if self.placed(blob).is_some() => self.leave_blob(now, &sid, blob, peer, out),
            _ => self.forget_joiner(blob, peer),
        }
    }

    /// `peer` leaves placed `blob` of swarm `sid`: it leaves the swarm with its last blob, or
    /// else drops the blob's pieces (and is done if its other blobs are).
    fn leave_blob(&mut self, now: Duration, sid: &TaskId, blob: &TaskId, peer: &PeerId, out: &mut Vec<Action>) {
        let Some((_, p)) = self.placed(blob) else { return };
        let Some(swarm) = self.swarms.get_mut(sid) else { return };
        let Some(mine) = swarm.members.get_mut(peer) else { return };
        if mine.remove(blob).is_none() {
            return;
        }
        if mine.is_empty() {
            swarm.members.remove(peer);
            self.unlink(peer, sid);
            self.core_event(now, Event::PeerLeft { task: sid.clone(), peer: peer.clone() }, out);
            return;
        }
        let all_done = mine.values().all(|&d| d);
        let mut actions = Vec::new();
        self.core.drop_wants(now, sid, peer, p.span, &mut actions);
        self.translate(actions, out);
        if all_done {
            self.core_event(now, Event::PeerDone { task: sid.clone(), peer: peer.clone() }, out);
        }
    }

    fn blob_complete(&mut self, now: Duration, blob: &TaskId, total: u32, len: u64, out: &mut Vec<Action>) {
        let Some(Blob { swarm: sid, place: Place::Placed(p) }) = self.blobs.get_mut(blob) else { return };
        if p.complete.is_some() {
            return;
        }
        p.complete = Some(total);
        let sid = sid.clone();
        let Some(swarm) = self.swarms.get(&sid) else { return };
        for (peer, blobs) in &swarm.members {
            if blobs.get(blob) == Some(&false) {
                let msg = Down::Complete { total_pieces: total, content_length: len };
                out.push(Action::Send { peer: peer.clone(), task: blob.clone(), msg });
            }
        }
        self.complete_if_landed(now, &sid, out);
    }

    /// Tells the core that the swarm is complete once every placed blob is (and none waits to
    /// be placed).
    fn complete_if_landed(&mut self, now: Duration, sid: &TaskId, out: &mut Vec<Action>) {
        let Some(swarm) = self.swarms.get(sid) else { return };
        if swarm.complete || !swarm.started || swarm.pending > 0 {
            return;
        }
        let mut content_length = 0;
        for blob in swarm.spans.values() {
            match self.placed(blob) {
                Some((_, Placed { complete: Some(_), content_length: len, .. })) => content_length += len,
                _ => return,
            }
        }
        let total_pieces = swarm.next;
        if let Some(swarm) = self.swarms.get_mut(sid) {
            swarm.complete = true;
        }
        self.core_event(now, Event::OriginComplete { task: sid.clone(), total_pieces, content_length }, out);
    }

    /// The origin fetch of a claimed or placed blob failed: its peers are told and leave it;
    /// its pieces are forgotten (the supernode's copy is gone), and a new fetch of it is a
    /// task of its own.
    fn blob_failed(&mut self, now: Duration, blob: &TaskId, failed: Down, out: &mut Vec<Action>) {
        let Some(b) = self.blobs.get(blob) else { return };
        let sid = b.swarm.clone();
        match &b.place {
            Place::Pending(joiners) => {
                for j in joiners {
                    out.push(Action::Send { peer: j.peer.clone(), task: blob.clone(), msg: failed.clone() });
                }
                self.pending.remove(blob);
                self.blobs.remove(blob);
                if let Some(swarm) = self.swarms.get_mut(&sid) {
                    swarm.pending -= 1;
                }
                self.complete_if_landed(now, &sid, out);
                self.drop_if_empty(now, &sid, out);
            }
            Place::Placed(p) => {
                let span = p.span;
                self.drop_blob(now, &sid, blob, span, Some(failed), out);
            }
        }
    }

    /// Removes placed `blob` from swarm `sid` (its origin fetch failed: `failed` tells its
    /// downloaders; or the supernode evicted it): every member drops it at once, then the
    /// members left without a blob leave the swarm.
    fn drop_blob(
        &mut self,
        now: Duration,
        sid: &TaskId,
        blob: &TaskId,
        span: Span,
        failed: Option<Down>,
        out: &mut Vec<Action>,
    ) {
        let members: Vec<(PeerId, bool)> = self.swarms[sid]
            .members
            .iter()
            .filter_map(|(peer, blobs)| Some((peer.clone(), *blobs.get(blob)?)))
            .collect();
        for (peer, done) in &members {
            if let (false, Some(msg)) = (done, &failed) {
                out.push(Action::Send { peer: peer.clone(), task: blob.clone(), msg: msg.clone() });
            }
        }
        let mut actions = Vec::new();
        self.core.remove_range(now, sid, span, &mut actions);
        self.translate(actions, out);
        for (peer, _) in members {
            let Some(swarm) = self.swarms.get_mut(sid) else { break };
            let Some(mine) = swarm.members.get_mut(&peer) else { continue };
            mine.remove(blob);
            if mine.is_empty() {
                swarm.members.remove(&peer);
                self.unlink(&peer, sid);
                self.core_event(now, Event::PeerLeft { task: sid.clone(), peer }, out);
            } else if mine.values().all(|&d| d) {
                self.core_event(now, Event::PeerDone { task: sid.clone(), peer }, out);
            }
        }
        self.unplace(now, sid, blob, span, out);
    }

    /// Forgets placed `blob`, whose pieces the swarm dropped, in swarm `sid`.
    fn unplace(&mut self, now: Duration, sid: &TaskId, blob: &TaskId, span: Span, out: &mut Vec<Action>) {
        self.blobs.remove(blob);
        if let Some(swarm) = self.swarms.get_mut(sid) {
            swarm.spans.remove(&span.0);
        }
        self.complete_if_landed(now, sid, out);
        self.drop_if_empty(now, sid, out);
    }

    /// Forgets swarm `sid` once it holds no blob, placed or waiting.
    fn drop_if_empty(&mut self, now: Duration, sid: &TaskId, out: &mut Vec<Action>) {
        let Some(swarm) = self.swarms.get(sid) else { return };
        if !swarm.spans.is_empty() || swarm.pending > 0 {
            return;
        }
        let members: Vec<PeerId> = swarm.members.keys().cloned().collect();
        for peer in members {
            self.core_event(now, Event::PeerLeft { task: sid.clone(), peer: peer.clone() }, out);
            self.unlink(&peer, sid);
        }
        self.core.forget_task(now, sid);
        let mut actions = Vec::new();
        self.core.settle(now, &mut actions);
        self.swarms.remove(sid);
        self.translate(actions, out);
    }

    /// `peer` is no longer a member of swarm `sid`.
    fn unlink(&mut self, peer: &PeerId, sid: &TaskId) {
        if let Some(set) = self.peer_swarms.get_mut(peer) {
            set.remove(sid);
            if set.is_empty() {
                self.peer_swarms.remove(peer);
            }
        }
    }

    /// `peer` no longer waits for claimed `blob` to be placed.
    fn forget_joiner(&mut self, blob: &TaskId, peer: &PeerId) {
        if let Some(Blob { place: Place::Pending(joiners), .. }) = self.blobs.get_mut(blob) {
            joiners.retain(|j| j.peer != *peer);
        }
    }

    /// `peer`'s connection is gone (the core removed it from every task already).
    fn forget_peer(&mut self, peer: &PeerId) {
        for sid in self.peer_swarms.remove(peer).unwrap_or_default() {
            if let Some(swarm) = self.swarms.get_mut(&sid) {
                swarm.members.remove(peer);
            }
        }
        let pending: Vec<TaskId> = self.pending.iter().cloned().collect();
        for blob in pending {
            self.forget_joiner(&blob, peer);
        }
    }

    /// Blobs in swarms and swarms, for tests.
    #[cfg(test)]
    pub(crate) fn swarm_counts(&self) -> (usize, usize) {
        (self.blobs.len(), self.swarms.len())
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.core.check_invariants();
        for (sid, swarm) in &self.swarms {
            for (peer, blobs) in &swarm.members {
                assert!(!blobs.is_empty(), "{peer} in {sid} for no blob");
                assert!(self.peer_swarms[peer].contains(sid));
            }
            let mut end = 0;
            for (&base, blob) in &swarm.spans {
                let (s, p) = self.placed(blob).expect("a placed blob");
                assert_eq!((&s, p.span.0), (sid, base));
                assert!(base >= end, "spans overlap");
                end = p.span.1;
            }
            assert!(end <= swarm.next);
        }
        for blob in &self.pending {
            assert!(matches!(self.blobs[blob].place, Place::Pending(_)));
        }
        assert_eq!(self.task_count(), self.tasks().len());
        // The wrapper's view of every swarm agrees with the core's.
        for (sid, swarm) in &self.swarms {
            let Some(task) = self.core.tasks.get(sid) else {
                assert!(!swarm.started, "{sid} started but unknown to the core");
                assert!(swarm.members.is_empty());
                continue;
            };
            let core_members: BTreeSet<PeerId> = task.members().map(|(_, m)| m.id.clone()).collect();
            let wrap_members: BTreeSet<PeerId> = swarm.members.keys().cloned().collect();
            assert_eq!(core_members, wrap_members, "members of {sid}");
            for (_, m) in task.members() {
                let mine = &swarm.members[&m.id];
                let mut spans: Vec<(u32, u32)> = mine.keys().map(|b| self.placed(b).expect("placed").1.span).collect();
                spans.sort();
                assert_eq!(m.wants.clone().unwrap_or_default(), spans, "wants of {} in {sid}", m.id);
                assert!(m.held.iter().all(|p| m.wants(p)), "{} holds pieces outside its wants", m.id);
                assert_eq!(m.done, mine.values().all(|&d| d), "done flag of {} in {sid}: {mine:?}", m.id);
            }
            let placed_complete =
                swarm.spans.values().all(|b| self.placed(b).is_some_and(|(_, p)| p.complete.is_some()));
            let core_complete = matches!(task.origin, super::state::Origin::Complete { .. });
            assert!(!core_complete || placed_complete, "{sid} Complete while a placed blob is fetched");
            if swarm.started && swarm.pending == 0 && placed_complete {
                assert!(core_complete, "{sid} Fetching though every blob landed and none is pending");
            }
        }
    }
}
