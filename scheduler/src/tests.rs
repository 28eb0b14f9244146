//! Deterministic tests of the scheduler, driven by a tiny in-memory swarm: every assignment is
//! carried out (or failed, or held) at the next step, and every message is checked against what
//! the peers know.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::assign::ENDGAME_RARE;
use super::state::Source;
use super::*;

const PIECE: u32 = 1 << 20;

fn tid() -> TaskId {
    TaskId::new("task")
}

fn pid(i: usize) -> PeerId {
    PeerId::new(format!("p{i}"))
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

fn meta(n: u32) -> PieceMeta {
    PieceMeta {
        number: n,
        piece: Piece { offset: u64::from(n) * u64::from(PIECE), size: PIECE, sha256: [n as u8; 32] },
    }
}

/// What happens to one transfer at a step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Finish,
    Fail(FailReason),
    /// Still transferring.
    Keep,
}

/// What one peer was told and holds (of one task; `group_tests`: of one blob).
#[derive(Default, Debug)]
pub(super) struct View {
    pub(super) held: BTreeSet<u32>,
    pub(super) known: BTreeSet<u32>,
    pub(super) info: bool,
    pub(super) total: Option<u32>,
    pub(super) failed: bool,
    pub(super) done: bool,
}

/// An in-memory swarm around one scheduler and one task.
struct Swarm {
    s: Scheduler,
    cfg: SchedulerConfig,
    now: Duration,
    /// Transfers in progress: (child, piece, parent).
    pending: Vec<(PeerId, u32, Parent)>,
    /// Transfers whose parent left: they no longer take one of its upload slots.
    orphans: Vec<(PeerId, u32, Parent)>,
    views: BTreeMap<PeerId, View>,
    /// Peers that left or are gone.
    gone: BTreeSet<PeerId>,
    /// Every assignment ever made, in order.
    log: Vec<(PeerId, Assignment)>,
    sn_assigned: usize,
    /// Current uploads per parent (`None`: the supernode), as the peers see them.
    uploads: HashMap<Option<PeerId>, usize>,
    peak_peer_uploads: usize,
    peak_sn_uploads: usize,
    reported: Vec<(PeerId, u32)>,
    idle: usize,
}

impl Swarm {
    fn new(cfg: SchedulerConfig) -> Self {
        Self {
            s: Scheduler::new(cfg.clone()),
            cfg,
            now: Duration::ZERO,
            pending: Vec::new(),
            orphans: Vec::new(),
            views: BTreeMap::new(),
            gone: BTreeSet::new(),
            log: Vec::new(),
            sn_assigned: 0,
            uploads: HashMap::new(),
            peak_peer_uploads: 0,
            peak_sn_uploads: 0,
            reported: Vec::new(),
            idle: 0,
        }
    }

    fn event(&mut self, e: Event) -> Vec<Action> {
        let actions = self.s.on_event(self.now, e);
        self.apply(&actions);
        let sn_pending = self.pending.iter().filter(|(_, _, p)| *p == Parent::Supernode).count();
        assert_eq!(self.s.supernode_uploads_in_flight(), sn_pending, "supernode slot accounting");
        self.s.check_invariants();
        actions
    }

    fn apply(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::Send { peer, task, msg } => {
                    assert_eq!(*task, tid());
                    assert!(!self.gone.contains(peer), "message to departed {peer}");
                    self.deliver(peer, msg);
                }
                Action::PeerReported { peer, strikes, .. } => self.reported.push((peer.clone(), *strikes)),
                Action::TaskIdle { .. } => self.idle += 1,
            }
        }
    }

    fn deliver(&mut self, peer: &PeerId, msg: &Down) {
        let view = self.views.entry(peer.clone()).or_default();
        match msg {
            Down::TaskInfo { .. } => view.info = true,
            Down::Pieces(list) => view.known.extend(list.iter().map(|m| m.number)),
            Down::Complete { total_pieces, .. } => view.total = Some(*total_pieces),
            Down::Failed { .. } => view.failed = true,
            Down::Assign(list) => {
                assert!(!list.is_empty());
                for a in list.clone() {
                    self.check_assignment(peer, &a);
                }
            }
        }
    }

    fn check_assignment(&mut self, child: &PeerId, a: &Assignment) {
        let view = &self.views[child];
        assert!(!view.held.contains(&a.piece), "{child} assigned piece {} it holds", a.piece);
        assert!(view.known.contains(&a.piece), "{child} assigned unknown piece {}", a.piece);
        assert!(!view.done && !view.failed);
        let mut all = self.pending.iter().chain(&self.orphans);
        assert!(!all.any(|(c, p, _)| c == child && *p == a.piece), "double assignment");
        let in_flight = self.pending.iter().chain(&self.orphans).filter(|(c, _, _)| c == child).count();
        assert!(in_flight < self.cfg.window_per_peer, "window exceeded");
        let key = match &a.parent {
            Parent::Supernode => {
                self.sn_assigned += 1;
                None
            }
            Parent::Peer { id, addr: parent_addr } => {
                assert_ne!(id, child);
                assert!(!self.gone.contains(id), "departed parent {id}");
                // Bans end after `strike_ttl`: only a parent banned now must not be used.
                assert!(!self.s.bad_peers().iter().any(|(r, _)| r == id), "bad parent {id}");
                assert!(self.views[id].held.contains(&a.piece), "parent {id} lacks piece {}", a.piece);
                let i: usize = id.as_str()[1..].parse().unwrap();
                assert_eq!(*parent_addr, addr(i));
                Some(id.clone())
            }
        };
        let n = self.uploads.entry(key.clone()).or_default();
        *n += 1;
        if key.is_some() {
            self.peak_peer_uploads = self.peak_peer_uploads.max(*n);
            assert!(*n <= self.cfg.max_uploads_per_peer * self.cfg.link_depth, "peer upload limit exceeded");
        } else {
            self.peak_sn_uploads = self.peak_sn_uploads.max(*n);
            assert!(*n <= self.cfg.max_supernode_uploads * self.cfg.link_depth, "supernode upload limit exceeded");
        }
        self.pending.push((child.clone(), a.piece, a.parent.clone()));
        self.log.push((child.clone(), a.clone()));
    }

    /// The origin fetch: headers, `pieces` pieces, completion.
    fn origin(&mut self, pieces: u32) {
        self.start();
        for n in 0..pieces {
            self.land(n);
        }
        self.complete(pieces);
    }

    fn start(&mut self) {
        let len = Some(u64::from(PIECE) * 64);
        self.event(Event::TaskStarted { task: tid(), content_length: len, piece_size: PIECE });
    }

    fn land(&mut self, n: u32) -> Vec<Action> {
        self.event(Event::PieceLanded { task: tid(), piece: meta(n) })
    }

    fn complete(&mut self, pieces: u32) {
        let len = u64::from(pieces) * u64::from(PIECE);
        self.event(Event::OriginComplete { task: tid(), total_pieces: pieces, content_length: len });
    }

    fn join(&mut self, i: usize, have: Vec<u32>) -> Vec<Action> {
        let view = self.views.entry(pid(i)).or_default();
        view.held = have.iter().copied().collect();
        self.gone.remove(&pid(i));
        self.event(Event::PeerJoined { task: tid(), peer: pid(i), addr: addr(i), have })
    }

    fn gone(&mut self, i: usize) {
        self.departed(i);
        self.event(Event::PeerGone { peer: pid(i) });
    }

    fn leave(&mut self, i: usize) {
        self.departed(i);
        self.event(Event::PeerLeft { task: tid(), peer: pid(i) });
    }

    /// The peers' side of a departure: the peer's downloads end, the transfers it serves no
    /// longer count against its upload slots (the children still report them).
    fn departed(&mut self, i: usize) {
        let id = pid(i);
        self.gone.insert(id.clone());
        self.pending.retain(|(c, _, _)| *c != id);
        self.orphans.retain(|(c, _, _)| *c != id);
        let (orphans, pending) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, _, parent)| matches!(parent, Parent::Peer { id: x, .. } if *x == id));
        self.pending = pending;
        self.orphans.extend::<Vec<_>>(orphans);
        self.recount();
        if let Some(v) = self.views.get_mut(&id) {
            *v = View::default();
        }
    }

    /// Recomputes the upload counts from the transfers in progress.
    fn recount(&mut self) {
        self.uploads.clear();
        for (_, _, parent) in &self.pending {
            *self.uploads.entry(parent_key(parent)).or_default() += 1;
        }
    }

    /// Settles every transfer in progress as `outcome` says, then reports peers that hold every
    /// piece as done.
    fn step(&mut self, mut outcome: impl FnMut(&Self, &PeerId, u32, &Parent) -> Outcome) {
        self.now += Duration::from_millis(100);
        let orphans = self.orphans.iter().map(|t| (t.clone(), true));
        let transfers: Vec<_> = self.pending.iter().map(|t| (t.clone(), false)).chain(orphans).collect();
        for ((child, piece, parent), orphan) in transfers {
            let result = outcome(self, &child, piece, &parent);
            if result == Outcome::Keep {
                continue;
            }
            // Still in progress unless its child departed meanwhile.
            let list = if orphan { &mut self.orphans } else { &mut self.pending };
            let Some(i) = list.iter().position(|(c, p, _)| *c == child && *p == piece) else {
                continue;
            };
            let (child, piece, parent) = list.remove(i);
            if !orphan {
                *self.uploads.get_mut(&parent_key(&parent)).unwrap() -= 1;
            }
            let parent = match parent {
                Parent::Supernode => None,
                Parent::Peer { id, .. } => Some(id),
            };
            match result {
                Outcome::Finish => {
                    self.views.get_mut(&child).unwrap().held.insert(piece);
                    self.event(Event::PieceFinished { task: tid(), peer: child, piece });
                }
                Outcome::Fail(reason) => {
                    if let (FailReason::Digest, Some(id)) = (reason, &parent) {
                        // The parent served a bad copy: it no longer holds the piece.
                        self.views.get_mut(id).map(|v| v.held.remove(&piece));
                    }
                    self.event(Event::PieceFailed { task: tid(), peer: child, piece, parent, reason });
                }
                Outcome::Keep => unreachable!(),
            }
        }
        self.report_done();
    }

    fn report_done(&mut self) {
        let done: Vec<PeerId> = self
            .views
            .iter()
            .filter(|(p, v)| {
                !self.gone.contains(*p) && !v.done && v.total.is_some_and(|t| (0..t).all(|n| v.held.contains(&n)))
            })
            .map(|(p, _)| p.clone())
            .collect();
        for peer in done {
            self.views.get_mut(&peer).unwrap().done = true;
            self.event(Event::PeerDone { task: tid(), peer });
        }
    }

    /// Steps until nothing is in flight (a tick in between); returns the number of steps.
    fn run(&mut self, mut outcome: impl FnMut(&Self, &PeerId, u32, &Parent) -> Outcome) -> usize {
        for steps in 1..=10_000 {
            self.step(&mut outcome);
            if self.pending.is_empty() && self.orphans.is_empty() {
                self.event(Event::Tick);
                if self.pending.is_empty() {
                    return steps;
                }
            }
        }
        panic!("swarm did not settle");
    }

    fn everyone_done(&self, peers: impl IntoIterator<Item = usize>) -> bool {
        peers.into_iter().all(|i| self.views[&pid(i)].done)
    }

    fn assigned_to(&self, i: usize) -> usize {
        self.log.iter().filter(|(c, _)| *c == pid(i)).count()
    }

    fn served_by(&self, i: usize) -> usize {
        self.log.iter().filter(|(_, a)| matches!(&a.parent, Parent::Peer { id, .. } if *id == pid(i))).count()
    }
}

impl Core {
    /// Recomputes every derived count and index from the assignments and holdings and checks
    /// that the incremental bookkeeping agrees.
    pub(crate) fn check_invariants(&self) {
        let max = self.shared.config.max_uploads_per_peer;
        let mut sn_uploads = 0;
        let mut uploads: BTreeMap<u32, usize> = BTreeMap::new();
        for task in self.tasks.values() {
            let bad = |gid: u32| self.shared.peers.get(gid).is_none_or(|r| r.bad);
            for (slot, m) in task.members() {
                let rec = self.shared.peers.get(m.gid).unwrap();
                assert!(rec.tasks.contains(&task.id));
                let load = self.shared.load_of(rec);
                assert_eq!(task.open.contains(slot), !rec.bad && load < max, "open bit of {}", m.id);
                assert_eq!(m.held_count as usize, m.held.iter().count());
                assert_eq!(m.wait_seq.is_some_and(|seq| task.waiting.contains(&(seq, slot))), m.wait_seq.is_some());
                assert!(m.assigned.len() <= self.shared.config.window_per_peer);
                for (&p, source) in &m.assigned {
                    assert!(task.is_landed(p) && !m.held.contains(p) && m.wants(p));
                    match source {
                        Source::Supernode => sn_uploads += 1,
                        Source::Peer { gid: Some(g), .. } => *uploads.entry(*g).or_default() += 1,
                        Source::Peer { gid: None, .. } => {}
                    }
                }
            }
            assert_eq!(task.waiting.len(), task.members().filter(|(_, m)| m.wait_seq.is_some()).count());
            assert_eq!(task.active, task.members().filter(|(_, m)| !m.done).count());
            for &p in &task.landed {
                let ps = &task.pieces[p as usize];
                let holders: Vec<u32> =
                    task.members().filter(|(_, m)| m.held.contains(p) && !bad(m.gid)).map(|(s, _)| s).collect();
                assert_eq!(ps.holders.iter().collect::<Vec<_>>(), holders, "holders of piece {p}");
                assert_eq!(ps.holder_count as usize, holders.len());
                let open = holders.iter().filter(|&&s| task.open.contains(s)).count();
                assert_eq!(ps.open_holders as usize, open, "open holders of piece {p}");
                let inflight = task.members().filter(|(_, m)| m.assigned.contains_key(&p)).count();
                assert_eq!(ps.inflight as usize, inflight, "in flight of piece {p}");
                let sn = task.members().filter(|(_, m)| matches!(m.assigned.get(&p), Some(Source::Supernode))).count();
                assert_eq!(ps.sn_copies.len(), sn);
                assert_eq!(task.sn_candidates.contains(&p), holders.is_empty());
            }
        }
        assert_eq!(self.shared.sn_uploads, sn_uploads);
        let depth = self.shared.config.link_depth;
        assert!(sn_uploads <= self.shared.config.max_supernode_uploads * depth);
        assert_eq!(self.shared.sn_links.values().map(|&n| n as usize).sum::<usize>(), sn_uploads);
        assert!(depth == 1 || self.shared.sn_links.len() <= self.shared.config.max_supernode_uploads);
        // A link carries `link_depth` pieces, or as many as the supernode has slots while it
        // has fewer children than slots.
        let sn_cap = depth.max(self.shared.config.max_supernode_uploads);
        assert!(self.shared.sn_links.values().all(|&n| n >= 1 && (depth == 1 || n as usize <= sn_cap)));
        for (gid, rec) in self.shared.peers.iter() {
            assert_eq!(rec.uploads.len(), uploads.get(&gid).copied().unwrap_or(0), "uploads of {}", rec.id);
            assert!(self.shared.load_of(rec) <= max);
            // No link carries more than `link_depth` pieces, or the parent's slots while it has
            // fewer children than slots.
            let mut per_link: BTreeMap<(&TaskId, u32), usize> = BTreeMap::new();
            for u in &rec.uploads {
                *per_link.entry((&u.task, u.child)).or_default() += 1;
            }
            let depth = self.shared.config.link_depth;
            let cap = depth.max(max);
            assert!(depth == 1 || per_link.values().all(|&n| n <= cap), "link depth of {}", rec.id);
            assert!(!rec.tasks.is_empty());
        }
    }
}

fn parent_key(parent: &Parent) -> Option<PeerId> {
    match parent {
        Parent::Supernode => None,
        Parent::Peer { id, .. } => Some(id.clone()),
    }
}

fn all_finish(_: &Swarm, _: &PeerId, _: u32, _: &Parent) -> Outcome {
    Outcome::Finish
}

fn sends_to(actions: &[Action], peer: &PeerId) -> Vec<Down> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { peer: p, msg, .. } if p == peer => Some(msg.clone()),
            _ => None,
        })
        .collect()
}

fn assigns_in(actions: &[Action]) -> Vec<(PeerId, Assignment)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { peer, msg: Down::Assign(list), .. } => Some((peer.clone(), list.clone())),
            _ => None,
        })
        .flat_map(|(p, list)| list.into_iter().map(move |a| (p.clone(), a)))
        .collect()
}

#[test]
fn eight_peers_one_piece_supernode_serves_one_copy() {
    for join_first in [false, true] {
        let mut sw = Swarm::new(SchedulerConfig::default());
        if join_first {
            (0..8).for_each(|i| drop(sw.join(i, vec![])));
            sw.origin(1);
        } else {
            sw.join(0, vec![]);
            sw.origin(1);
            (1..8).for_each(|i| drop(sw.join(i, vec![])));
        }
        sw.run(all_finish);
        assert!(sw.everyone_done(0..8));
        assert_eq!(sw.sn_assigned, 1, "supernode copies (join_first {join_first})");
        assert_eq!(sw.log.len(), 8);
        assert!(sw.peak_peer_uploads <= 4);
        assert_eq!(sw.s.supernode_uploads_in_flight(), 0);
    }
}

#[test]
fn eight_peers_sixty_four_pieces_everyone_completes_from_one_supernode_copy_each() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(0, vec![]);
    sw.origin(64);
    (1..8).for_each(|i| drop(sw.join(i, vec![])));
    let steps = sw.run(all_finish);
    assert!(sw.everyone_done(0..8));
    for i in 0..8 {
        assert_eq!(sw.views[&pid(i)].held.len(), 64);
        assert_eq!(sw.assigned_to(i), 64, "each piece assigned once to each peer");
    }
    // A second supernode copy of a piece needs a stalled first copy (none here: every step is
    // 100 ms, far below `stalled_after`), no usable holder (nobody leaves or fails), or the
    // endgame: once every piece reached a peer, the supernode's idle slots help with rare
    // pieces whose holders are all busy. So each piece goes out once, plus a few endgame copies.
    eprintln!("supernode copies: {}", sw.sn_assigned);
    assert!(sw.sn_assigned >= 64 && sw.sn_assigned <= 64 + 64 / 4, "{} supernode copies", sw.sn_assigned);
    // Upload slots count children; each link carries up to `link_depth` pieces.
    let cfg = SchedulerConfig::default();
    assert!(sw.peak_peer_uploads <= cfg.max_uploads_per_peer * cfg.link_depth && sw.peak_peer_uploads > 0);
    assert!(sw.peak_sn_uploads <= 32);
    assert!(steps < 64, "the swarm pipelines ({steps} steps)");
    let summary = sw.s.task_summary(&tid()).unwrap();
    assert_eq!(summary.phase, TaskPhase::Complete);
    assert!(summary.peers.iter().all(|p| p.done && p.pieces_held == 64 && p.in_flight == 0));
    assert_eq!(sw.idle, 1, "task idle once everybody is done");
}

#[test]
fn supernode_upload_stays_one_copy_however_many_peers_join() {
    let mut sw = Swarm::new(SchedulerConfig { seed: 7, ..SchedulerConfig::default() });
    sw.join(0, vec![]);
    sw.origin(16);
    (1..200).for_each(|i| drop(sw.join(i, vec![])));
    sw.run(all_finish);
    assert!(sw.everyone_done(0..200));
    // Each piece once, plus endgame copies of rare pieces to children with nothing else to do:
    // at most two more per piece, whatever the number of peers.
    assert!(sw.sn_assigned >= 16 && sw.sn_assigned <= 16 * 3, "{} supernode copies", sw.sn_assigned);
    let cfg = SchedulerConfig::default();
    assert!(sw.peak_peer_uploads <= cfg.max_uploads_per_peer * cfg.link_depth);
}

#[test]
fn rarest_first_spreads_initial_supernode_assignments_over_distinct_pieces() {
    // One piece per link, so that every assignment counts one supernode slot.
    let cfg =
        SchedulerConfig { window_per_peer: 6, max_supernode_uploads: 32, link_depth: 1, ..SchedulerConfig::default() };
    let mut sw = Swarm::new(cfg.clone());
    sw.join(0, vec![]);
    sw.origin(64);
    (1..5).for_each(|i| drop(sw.join(i, vec![])));
    let pieces: BTreeSet<u32> = sw.log.iter().map(|(_, a)| a.piece).collect();
    assert_eq!(sw.log.len(), 30, "5 peers x window 6");
    assert_eq!(pieces.len(), 30, "no piece fetched twice from the supernode");
    assert!(sw.log.iter().all(|(_, a)| a.parent == Parent::Supernode));
    assert_ne!(pieces, (0..30).collect(), "ties are broken at random, not by number");

    // A newcomer next to a peer holding the first half gets the rare second half first, even
    // though a peer parent is available for the first half.
    let mut sw2 = Swarm::new(cfg);
    sw2.join(0, (0..32).collect());
    sw2.start();
    (0..64).for_each(|n| drop(sw2.land(n)));
    let actions = sw2.join(1, vec![]);
    let got = assigns_in(&actions);
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|(_, a)| a.piece >= 32 && a.parent == Parent::Supernode), "{got:?}");
}

#[test]
fn peers_joining_before_the_origin_answers_get_pieces_as_they_land() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    for i in 0..3 {
        let actions = sw.join(i, vec![]);
        assert!(sends_to(&actions, &pid(i)).is_empty(), "nothing known yet");
    }
    sw.start();
    assert!((0..3).all(|i| sw.views[&pid(i)].info));
    assert!(sw.log.is_empty());
    for n in 0..4 {
        let actions = sw.land(n);
        for i in 0..3 {
            assert!(sends_to(&actions, &pid(i)).contains(&Down::Pieces(vec![meta(n)])));
        }
        let got = assigns_in(&actions);
        assert_eq!(got.len(), 1, "one supernode copy of piece {n}");
        assert_eq!(got[0].1, Assignment { piece: n, parent: Parent::Supernode });
    }
    sw.step(all_finish);
    for n in 4..8 {
        sw.land(n);
    }
    sw.complete(8);
    sw.run(all_finish);
    assert!(sw.everyone_done(0..3));
    assert_eq!(sw.sn_assigned, 8);
}

#[test]
fn a_fetch_nobody_joined_yet_is_known_to_peers_that_join_later() {
    // A preheat: the origin fetch starts, lands and completes before any peer registers.
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.start();
    for n in 0..2 {
        sw.land(n);
    }
    let early = sw.join(0, vec![]);
    assert_eq!(sends_to(&early, &pid(0))[1], Down::Pieces(vec![meta(0), meta(1)]), "pieces landed so far");
    for n in 2..4 {
        sw.land(n);
    }
    sw.complete(4);
    let late = sw.join(1, vec![]);
    let told = sends_to(&late, &pid(1));
    assert!(told.contains(&Down::Complete { total_pieces: 4, content_length: 4 * u64::from(PIECE) }), "{told:?}");
    sw.run(all_finish);
    assert!(sw.everyone_done(0..2));

    // A failed fetch nobody joined leaves nothing behind.
    let mut s = Scheduler::new(SchedulerConfig::default());
    let other = TaskId::new("preheat-failed");
    s.on_event(Duration::ZERO, Event::TaskStarted { task: other.clone(), content_length: None, piece_size: PIECE });
    s.on_event(
        Duration::ZERO,
        Event::OriginFailed { task: other.clone(), status: None, refused: false, message: "gone".into() },
    );
    assert!(s.tasks().is_empty());
}

#[test]
fn digest_failures_get_a_peer_reported_and_never_used_again() {
    let cfg = SchedulerConfig { bad_peer_strikes: 4, ..SchedulerConfig::default() };
    let mut sw = Swarm::new(cfg);
    sw.join(0, vec![]);
    sw.origin(8);
    sw.step(all_finish); // p0 fetched six pieces from the supernode
    let bad = pid(0);
    (1..6).for_each(|i| drop(sw.join(i, vec![])));
    assert!(sw.served_by(0) > 0, "p0 is used as a parent while it looks good");
    let served_before = sw.served_by(0);
    sw.run(|_, _, _, parent| match parent {
        Parent::Peer { id, .. } if *id == pid(0) => Outcome::Fail(FailReason::Digest),
        _ => Outcome::Finish,
    });
    assert_eq!(sw.reported.len(), 1, "reported exactly once: {:?}", sw.reported);
    assert_eq!(sw.reported[0].0, bad);
    assert!(sw.reported[0].1 >= 4);
    assert_eq!(sw.s.bad_peers().len(), 1);
    assert_eq!(sw.s.bad_peers()[0].0, bad);
    // At most one round of failures (its upload slots) happened before the report.
    assert!(sw.served_by(0) <= served_before + 4);
    assert!(sw.everyone_done(1..6), "the others complete without p0");

    // A late joiner never gets p0 either, even though p0 claims every piece.
    let actions = sw.join(9, vec![]);
    sw.run(all_finish);
    assert!(assigns_in(&actions).iter().all(|(_, a)| a.parent != Parent::Peer { id: bad.clone(), addr: addr(0) }));
    assert!(sw.everyone_done([9]));
}

#[test]
fn child_does_not_get_the_same_failing_parent_for_the_same_piece() {
    let mut sw = Swarm::new(SchedulerConfig { bad_peer_strikes: 100, ..SchedulerConfig::default() });
    sw.join(0, vec![0]);
    sw.origin(1);
    let actions = sw.join(1, vec![]);
    assert_eq!(assigns_in(&actions)[0].1.parent, Parent::Peer { id: pid(0), addr: addr(0) });
    sw.step(|_, _, _, _| Outcome::Fail(FailReason::Transfer));
    // p0 is the only holder but failed this piece for p1: the supernode serves it.
    assert_eq!(sw.pending, vec![(pid(1), 0, Parent::Supernode)]);
    sw.run(all_finish);
    assert!(sw.everyone_done([1]));
}

#[test]
fn a_holder_going_away_mid_download_does_not_stop_the_others() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(0, vec![]);
    sw.origin(32);
    (1..6).for_each(|i| drop(sw.join(i, vec![])));
    for _ in 0..3 {
        sw.step(all_finish);
    }
    assert!(!sw.views[&pid(0)].held.is_empty());
    let served_before = sw.served_by(0);
    assert!(served_before > 0);
    sw.gone(0);
    assert_eq!(sw.s.peer_count(), 5);
    // Transfers from the departed peer fail; the children report and get the piece elsewhere.
    sw.run(|sw, _, _, parent| match parent {
        Parent::Peer { id, .. } if sw.gone.contains(id) => Outcome::Fail(FailReason::Transfer),
        _ => Outcome::Finish,
    });
    assert_eq!(sw.served_by(0), served_before, "never assigned after it left");
    assert!(sw.everyone_done(1..6));
    assert!(sw.s.bad_peers().is_empty(), "transfer failures from a departed parent are no strikes");
}

#[test]
fn a_seed_joining_with_every_piece_serves_and_is_never_assigned() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(0, vec![]);
    sw.origin(16);
    sw.leave(0);
    let seed = 10;
    let actions = sw.join(seed, (0..16).collect());
    assert!(assigns_in(&actions).is_empty());
    let sn_before = sw.sn_assigned;
    (1..5).for_each(|i| drop(sw.join(i, vec![])));
    sw.run(all_finish);
    assert!(sw.everyone_done(1..5));
    assert_eq!(sw.assigned_to(seed), 0);
    assert!(sw.served_by(seed) > 0);
    // The seed holds everything, so only the endgame lets the supernode help: with rare pieces
    // (one holder) whose holder is busy. The seed serves most of the bytes.
    let sn = sw.sn_assigned - sn_before;
    eprintln!("supernode copies {sn}, seed served {}", sw.served_by(seed));
    assert!(sw.served_by(seed) > sn, "the seed serves more than the supernode ({sn} supernode copies)");
    assert!(sn <= 16 * 2, "at most two supernode copies per piece ({sn})");
}

#[test]
fn a_stalled_supernode_copy_is_retried_after_stalled_after() {
    let cfg = SchedulerConfig { stalled_after: Duration::from_secs(10), ..SchedulerConfig::default() };
    let mut sw = Swarm::new(cfg);
    sw.join(0, vec![]);
    sw.origin(1);
    assert_eq!(sw.sn_assigned, 1);
    sw.join(1, vec![]);
    assert_eq!(sw.sn_assigned, 1, "p1 waits for p0's copy");
    sw.now = Duration::from_secs(5);
    assert!(assigns_in(&sw.event(Event::Tick)).is_empty());
    sw.now = Duration::from_secs(10);
    let got = assigns_in(&sw.event(Event::Tick));
    assert_eq!(got, vec![(pid(1), Assignment { piece: 0, parent: Parent::Supernode })]);
    assert_eq!(sw.s.supernode_uploads_in_flight(), 2);
    // Later ticks add nothing: p1's copy is recent.
    sw.now = Duration::from_secs(11);
    assert!(assigns_in(&sw.event(Event::Tick)).is_empty());
    sw.run(all_finish);
    assert!(sw.everyone_done(0..2));
}

#[test]
fn origin_failure_reaches_every_peer_and_stops_assignments() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    (0..4).for_each(|i| drop(sw.join(i, vec![])));
    sw.start();
    sw.land(0);
    let actions =
        sw.event(Event::OriginFailed { task: tid(), status: Some(404), refused: false, message: "not found".into() });
    for i in 0..4 {
        let msgs = sends_to(&actions, &pid(i));
        assert_eq!(msgs, vec![Down::Failed { status: Some(404), refused: false, message: "not found".into() }]);
    }
    assert_eq!(sw.idle, 1);
    assert!(matches!(sw.s.task_summary(&tid()).unwrap().phase, TaskPhase::Failed { status: Some(404), .. }));
    // The transfer in flight ends; nothing new is assigned.
    sw.step(all_finish);
    assert!(sw.pending.is_empty());
    assert!(assigns_in(&sw.land(1)).is_empty());
    // A late joiner learns of the failure; the task is forgotten once everybody left.
    let actions = sw.join(7, vec![]);
    assert!(sends_to(&actions, &pid(7)).iter().any(|m| matches!(m, Down::Failed { .. })));
    for i in [0, 1, 2, 3, 7] {
        sw.gone(i);
    }
    assert!(sw.s.tasks().is_empty());
    assert_eq!(sw.s.peer_count(), 0);
}

#[test]
fn an_empty_file_completes_immediately() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(0, vec![]);
    sw.event(Event::TaskStarted { task: tid(), content_length: Some(0), piece_size: PIECE });
    sw.complete(0);
    assert_eq!(sw.idle, 0, "p0 has not reported done yet");
    let actions = sw.join(1, vec![]);
    assert_eq!(
        sends_to(&actions, &pid(1)),
        vec![
            Down::TaskInfo { content_length: Some(0), piece_size: PIECE },
            Down::Complete { total_pieces: 0, content_length: 0 },
        ]
    );
    sw.report_done();
    assert!(sw.everyone_done(0..2));
    assert!(sw.log.is_empty());
    assert_eq!(sw.idle, 1);
}

#[test]
fn events_for_unknown_tasks_and_peers_are_ignored() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let other = TaskId::new("nope");
    let now = Duration::ZERO;
    // (TaskStarted is not among them: it creates its task, see the preheat test below.)
    let events = vec![
        Event::PieceLanded { task: other.clone(), piece: meta(0) },
        Event::OriginComplete { task: other.clone(), total_pieces: 1, content_length: 1 },
        Event::OriginFailed { task: other.clone(), status: None, refused: false, message: String::new() },
        Event::PieceFinished { task: other.clone(), peer: pid(0), piece: 0 },
        Event::PieceFailed { task: other.clone(), peer: pid(0), piece: 0, parent: None, reason: FailReason::Digest },
        Event::PeerDone { task: other.clone(), peer: pid(0) },
        Event::PeerLeft { task: other.clone(), peer: pid(0) },
        Event::PeerGone { peer: pid(0) },
        Event::Tick,
    ];
    for e in events {
        assert!(s.on_event(now, e).is_empty());
    }
    assert!(s.tasks().is_empty());
    assert!(s.task_summary(&other).is_none());

    // Unknown peers (and unassigned pieces) on a known task.
    s.on_event(now, Event::PeerJoined { task: tid(), peer: pid(0), addr: addr(0), have: vec![u32::MAX] });
    let strangers = vec![
        Event::PieceFinished { task: tid(), peer: pid(5), piece: 0 },
        Event::PieceFailed { task: tid(), peer: pid(0), piece: 3, parent: Some(pid(5)), reason: FailReason::Digest },
        Event::PeerDone { task: tid(), peer: pid(5) },
        Event::PeerLeft { task: tid(), peer: pid(5) },
        Event::PeerGone { peer: pid(5) },
        Event::PieceLanded { task: tid(), piece: meta(u32::MAX) },
    ];
    for e in strangers {
        assert!(s.on_event(now, e).is_empty());
    }
    assert!(s.bad_peers().is_empty());
    assert_eq!(s.peer_count(), 1);
}

#[test]
fn a_parent_named_wrongly_in_a_failure_report_gets_no_strike() {
    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(1, vec![0]);
    sw.origin(1);
    sw.join(0, vec![]);
    // p0 got piece 0 from p1 (peers before the supernode); it blames p2 instead.
    assert_eq!(sw.pending, vec![(pid(0), 0, Parent::Peer { id: pid(1), addr: addr(1) })]);
    sw.pending.clear();
    sw.recount();
    sw.event(Event::PieceFailed {
        task: tid(),
        peer: pid(0),
        piece: 0,
        parent: Some(pid(2)),
        reason: FailReason::Digest,
    });
    assert!(sw.s.bad_peers().is_empty());
}

#[test]
fn summary_views_and_determinism() {
    let run = |seed| {
        let mut sw = Swarm::new(SchedulerConfig { seed, ..SchedulerConfig::default() });
        sw.join(0, vec![]);
        sw.origin(20);
        (1..6).for_each(|i| drop(sw.join(i, vec![])));
        sw.run(all_finish);
        sw.log
    };
    assert_eq!(run(1), run(1), "same seed, same decisions");
    assert_ne!(run(1), run(2), "the seed matters");

    let mut sw = Swarm::new(SchedulerConfig::default());
    sw.join(3, vec![1]);
    sw.start();
    sw.land(0);
    let s = sw.s.task_summary(&tid()).unwrap();
    assert_eq!(s.landed_pieces, 1);
    assert_eq!(s.total_pieces, None);
    assert_eq!(s.phase, TaskPhase::Fetching);
    assert_eq!(s.peers.len(), 1);
    assert_eq!((s.peers[0].pieces_held, s.peers[0].in_flight, s.peers[0].done), (1, 1, false));
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["phase"], "fetching");
    assert_eq!(sw.s.tasks(), vec![tid()]);
}

#[test]
fn a_lone_child_gets_every_upload_slot_of_its_parent_and_more_children_share_them_by_depth() {
    let cfg = SchedulerConfig { link_depth: 2, window_per_peer: 16, ..SchedulerConfig::default() };
    let slots = cfg.max_uploads_per_peer;
    let mut s = Scheduler::new(cfg);
    let t = TaskId::new("t");
    let now = Duration::ZERO;
    s.on_event(now, Event::TaskStarted { task: t.clone(), content_length: None, piece_size: PIECE });
    for n in 0..32 {
        s.on_event(now, Event::PieceLanded { task: t.clone(), piece: meta(n) });
    }
    let len = 32 * u64::from(PIECE);
    s.on_event(now, Event::OriginComplete { task: t.clone(), total_pieces: 32, content_length: len });
    s.on_event(now, Event::PeerJoined { task: t.clone(), peer: pid(0), addr: addr(0), have: (0..32).collect() });
    let from_seed = |actions: &[Action], child: &PeerId| -> usize {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { peer, msg: Down::Assign(list), .. } if peer == child => Some(list),
                _ => None,
            })
            .flatten()
            .filter(|x| matches!(&x.parent, Parent::Peer { id, .. } if *id == pid(0)))
            .count()
    };
    // Alone, the child has as many pieces in flight from the seed as the seed has upload slots,
    // as with a depth of 1 (not just `link_depth`).
    let first = s.on_event(now, Event::PeerJoined { task: t.clone(), peer: pid(1), addr: addr(1), have: vec![] });
    assert_eq!(from_seed(&first, &pid(1)), slots);
    // A second child gets `link_depth` pieces from the seed (its own link): the seed's slots now
    // count children.
    let second = s.on_event(now, Event::PeerJoined { task: t.clone(), peer: pid(2), addr: addr(2), have: vec![] });
    assert_eq!(from_seed(&second, &pid(2)), 2);
}

/// Starts `tasks`, each with `pieces` pieces fetched from the origin and held by one seed, p0.
fn seed_tasks(s: &mut Scheduler, tasks: &[&TaskId], pieces: u32) {
    let now = Duration::ZERO;
    for t in tasks {
        s.on_event(now, Event::TaskStarted { task: (*t).clone(), content_length: None, piece_size: PIECE });
        for n in 0..pieces {
            s.on_event(now, Event::PieceLanded { task: (*t).clone(), piece: meta(n) });
        }
        let len = u64::from(pieces) * u64::from(PIECE);
        s.on_event(now, Event::OriginComplete { task: (*t).clone(), total_pieces: pieces, content_length: len });
        s.on_event(
            now,
            Event::PeerJoined { task: (*t).clone(), peer: pid(0), addr: addr(0), have: (0..pieces).collect() },
        );
    }
}

#[test]
fn the_upload_limit_holds_across_tasks() {
    // One piece per link: the limit then counts pieces (with a deeper link it counts children,
    // which the random-swarm property checks at depth 2).
    let mut s = Scheduler::new(SchedulerConfig { link_depth: 1, ..SchedulerConfig::default() });
    let (a, b) = (TaskId::new("a"), TaskId::new("b"));
    let now = Duration::ZERO;
    seed_tasks(&mut s, &[&a, &b], 8);
    // Transfers from the seed p0 in progress, and how many each task got in all.
    let mut from_seed: Vec<(TaskId, PeerId, u32)> = Vec::new();
    let mut served: BTreeMap<TaskId, usize> = BTreeMap::new();
    let mut record = |actions: Vec<Action>, from_seed: &mut Vec<(TaskId, PeerId, u32)>| {
        for action in actions {
            if let Action::Send { peer, task, msg: Down::Assign(list) } = action {
                for x in list {
                    // The supernode may only help children with nothing else in flight (endgame).
                    if x.parent == Parent::Supernode {
                        continue;
                    }
                    if matches!(&x.parent, Parent::Peer { id, .. } if *id == pid(0)) {
                        *served.entry(task.clone()).or_default() += 1;
                        from_seed.push((task.clone(), peer.clone(), x.piece));
                    }
                }
            }
        }
        assert!(from_seed.len() <= 4, "seed uploads across tasks: {}", from_seed.len());
    };
    for i in 1..9 {
        let task = if i < 5 { &a } else { &b };
        let actions =
            s.on_event(now, Event::PeerJoined { task: task.clone(), peer: pid(i), addr: addr(i), have: vec![] });
        record(actions, &mut from_seed);
    }
    assert_eq!(from_seed.len(), 4);
    s.check_invariants();
    // Transfers from the seed finish one at a time (the others never do, so windows fill up);
    // ticks hand the seed's free slots to the other task's waiting peers too.
    while !from_seed.is_empty() {
        let (task, peer, piece) = from_seed.remove(0);
        record(s.on_event(now, Event::PieceFinished { task, peer, piece }), &mut from_seed);
        record(s.on_event(now, Event::Tick), &mut from_seed);
        s.check_invariants();
    }
    assert!(served[&a] > 0 && served[&b] > 0, "{served:?}");
}

#[test]
fn a_freed_upload_slot_goes_to_the_parents_other_task_first() {
    // A seed of two tasks, a's children first: they take every upload slot. When one of those
    // uploads ends, the slot goes to b's waiting child at once (no tick), not back to a; the
    // next one freed in b goes back to a.
    let mut s = Scheduler::new(SchedulerConfig { link_depth: 1, ..SchedulerConfig::default() });
    let slots = SchedulerConfig::default().max_uploads_per_peer;
    let (a, b) = (TaskId::new("a"), TaskId::new("b"));
    let now = Duration::ZERO;
    seed_tasks(&mut s, &[&a, &b], 16);
    let from_seed = |actions: &[Action]| -> Vec<(TaskId, PeerId, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { peer, task, msg: Down::Assign(list) } => Some((task, peer, list)),
                _ => None,
            })
            .flat_map(|(task, peer, list)| {
                list.iter()
                    .filter(|x| matches!(&x.parent, Parent::Peer { id, .. } if *id == pid(0)))
                    .map(move |x| (task.clone(), peer.clone(), x.piece))
            })
            .collect()
    };
    let mut uploads = Vec::new();
    for i in 1..=slots {
        let joined = s.on_event(now, Event::PeerJoined { task: a.clone(), peer: pid(i), addr: addr(i), have: vec![] });
        uploads.extend(from_seed(&joined));
    }
    assert_eq!(uploads.len(), slots, "a's children took every slot: {uploads:?}");
    let joined = s.on_event(now, Event::PeerJoined { task: b.clone(), peer: pid(9), addr: addr(9), have: vec![] });
    assert!(from_seed(&joined).is_empty(), "the seed is busy");
    let (task, peer, piece) = uploads.remove(0);
    let given = from_seed(&s.on_event(now, Event::PieceFinished { task, peer, piece }));
    assert_eq!(given.iter().map(|(t, ..)| t).collect::<Vec<_>>(), vec![&b], "the freed slot went to b: {given:?}");
    let (task, peer, piece) = given[0].clone();
    let given = from_seed(&s.on_event(now, Event::PieceFinished { task, peer, piece }));
    assert_eq!(given.iter().map(|(t, ..)| t).collect::<Vec<_>>(), vec![&a], "and b's back to a: {given:?}");
    s.check_invariants();
}

mod prop {
    //! Random join / land / finish / fail / leave / done / tick sequences, checked against the
    //! swarm's invariants after every event.

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Join(usize, Vec<u32>),
        Land,
        Complete,
        Finish(usize),
        Fail(usize, bool),
        Keep,
        Leave(usize),
        Gone(usize),
        Done(usize),
        Tick(u64),
    }

    const PEERS: usize = 6;
    const PIECES: u32 = 8;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..PEERS, proptest::collection::vec(0..PIECES, 0..4)).prop_map(|(p, h)| Op::Join(p, h)),
            2 => Just(Op::Land),
            1 => Just(Op::Complete),
            6 => (0..64usize).prop_map(Op::Finish),
            2 => (0..64usize, any::<bool>()).prop_map(|(i, d)| Op::Fail(i, d)),
            1 => Just(Op::Keep),
            1 => (0..PEERS).prop_map(Op::Leave),
            1 => (0..PEERS).prop_map(Op::Gone),
            1 => (0..PEERS).prop_map(Op::Done),
            1 => (0..15_000u64).prop_map(Op::Tick),
        ]
    }

    /// Checks invariants as the `Swarm` does, with the model updated for the peers' side.
    struct Model {
        sw: Swarm,
        members: BTreeSet<usize>,
        landed: u32,
        complete: bool,
    }

    impl Model {
        fn new(seed: u64) -> Self {
            let cfg = SchedulerConfig {
                window_per_peer: 3,
                max_uploads_per_peer: 2,
                max_supernode_uploads: 3,
                stalled_after: Duration::from_secs(5),
                bad_peer_strikes: 3,
                bad_peer_reporters: 1 + (seed % 3) as usize,
                strike_ttl: Duration::from_secs(5 + seed % 20),
                link_depth: 1 + (seed % 2) as usize,
                seed,
                image_swarms: true,
            };
            Self { sw: Swarm::new(cfg), members: BTreeSet::new(), landed: 0, complete: false }
        }

        fn apply(&mut self, op: Op) {
            let sw = &mut self.sw;
            // The shell starts the origin fetch when the first peer joins.
            let started = !sw.s.tasks().is_empty();
            match op {
                Op::Join(p, have) => {
                    if self.members.contains(&p) {
                        sw.departed(p);
                    }
                    self.members.insert(p);
                    sw.join(p, have);
                }
                Op::Land if started && !self.complete && self.landed < PIECES => {
                    if self.landed == 0 {
                        sw.start();
                    }
                    sw.land(self.landed);
                    self.landed += 1;
                }
                Op::Complete if started && !self.complete && self.landed > 0 => {
                    self.complete = true;
                    sw.complete(self.landed);
                }
                Op::Finish(i) | Op::Fail(i, _) if !sw.pending.is_empty() || !sw.orphans.is_empty() => {
                    self.settle(i, op)
                }
                Op::Keep => sw.now += Duration::from_millis(100),
                Op::Leave(p) if self.members.remove(&p) => sw.leave(p),
                Op::Gone(p) if self.members.remove(&p) => sw.gone(p),
                Op::Done(p) if self.members.contains(&p) => self.done(p),
                Op::Tick(ms) => {
                    sw.now += Duration::from_millis(ms);
                    sw.event(Event::Tick);
                }
                _ => {}
            }
        }

        fn settle(&mut self, i: usize, op: Op) {
            let sw = &mut self.sw;
            let i = i % (sw.pending.len() + sw.orphans.len());
            let (child, piece, parent) = if i < sw.pending.len() {
                let t = sw.pending.remove(i);
                *sw.uploads.get_mut(&parent_key(&t.2)).unwrap() -= 1;
                t
            } else {
                sw.orphans.remove(i - sw.pending.len())
            };
            let key = parent_key(&parent);
            match op {
                Op::Finish(_) => {
                    sw.views.get_mut(&child).unwrap().held.insert(piece);
                    sw.event(Event::PieceFinished { task: tid(), peer: child, piece });
                }
                Op::Fail(_, digest) => {
                    let reason = if digest { FailReason::Digest } else { FailReason::Transfer };
                    if let (true, Some(id)) = (digest, &key) {
                        // The parent served a bad copy: it no longer holds the piece.
                        if let Some(v) = sw.views.get_mut(id) {
                            v.held.remove(&piece);
                        }
                    }
                    sw.event(Event::PieceFailed { task: tid(), peer: child, piece, parent: key, reason });
                }
                _ => unreachable!(),
            }
        }

        fn done(&mut self, p: usize) {
            let id = pid(p);
            let sw = &mut self.sw;
            let v = sw.views.get_mut(&id).unwrap();
            if v.done {
                return;
            }
            v.done = true;
            v.held.extend(0..self.landed);
            sw.pending.retain(|(c, _, _)| *c != id);
            sw.orphans.retain(|(c, _, _)| *c != id);
            sw.recount();
            sw.event(Event::PeerDone { task: tid(), peer: id });
        }
    }

    impl Model {
        /// Liveness: once the origin completes and transfers succeed, every member finishes.
        fn finish_everyone(&mut self) -> usize {
            if self.sw.s.tasks().is_empty() {
                return 0;
            }
            while !self.complete && self.landed < PIECES {
                self.apply(Op::Land);
            }
            if !self.complete {
                self.complete = true;
                self.sw.complete(self.landed);
            }
            for round in 0..200 {
                self.sw.report_done();
                if self.members.iter().all(|&p| self.sw.views[&pid(p)].done) {
                    return round;
                }
                self.sw.step(|sw, _, _, parent| match parent {
                    Parent::Peer { id, .. } if sw.gone.contains(id) => Outcome::Fail(FailReason::Transfer),
                    _ => Outcome::Finish,
                });
                self.sw.now += Duration::from_secs(6);
                self.sw.event(Event::Tick);
            }
            panic!("members never finished: {:?}", self.sw.views);
        }
    }

    proptest! {
        // No regression file: this crate's tree is shared; a failure prints its minimal input.
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn random_swarms_keep_the_invariants(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..120)) {
            let mut m = Model::new(seed);
            for op in ops {
                m.apply(op);
                // The swarm's checks run on every event; cross-check the scheduler's own view.
                let summary = m.sw.s.task_summary(&tid());
                if let Some(summary) = summary {
                    for p in &summary.peers {
                        let i: usize = p.id.as_str()[1..].parse().unwrap();
                        prop_assert!(m.members.contains(&i));
                        prop_assert!(p.in_flight <= 3);
                    }
                }
            }
            m.finish_everyone();
            prop_assert_eq!(m.sw.s.supernode_uploads_in_flight(), 0);
        }
    }
}

#[test]
fn a_parent_killed_without_a_goodbye_is_routed_around_once_children_report_it() {
    // kill -9: the supernode does not see the parent go (its connection lingers until the idle
    // timeout), only the children's transfer failures.
    let mut sw = Swarm::new(SchedulerConfig::default());
    (0..6).for_each(|i| drop(sw.join(i, vec![])));
    sw.origin(48);
    for _ in 0..3 {
        sw.step(all_finish);
    }
    let dead = pid(0);
    let mut steps = 0;
    while !sw.everyone_done(1..6) {
        steps += 1;
        assert!(steps < 200, "the living peers are stuck: {:?}", sw.pending);
        sw.step(|_, child, _, parent| match parent {
            _ if *child == dead => Outcome::Keep,
            Parent::Peer { id, .. } if *id == dead => Outcome::Fail(FailReason::Transfer),
            _ => Outcome::Finish,
        });
        if sw.pending.iter().all(|(c, _, _)| *c == dead) {
            sw.event(Event::Tick);
        }
    }
}

/// The flapping origin (issue 12): a fetch fails while a peer is still a member, the next
/// registration starts a new fetch that lands every piece and completes, then the old members
/// leave. A later peer must get the task the cache now holds, not stall on a task the
/// scheduler forgot.
#[test]
fn a_new_fetch_after_a_failed_one_is_a_new_attempt_and_later_peers_get_its_pieces() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let now = Duration::ZERO;
    let t = tid();
    let join = |s: &mut Scheduler, i: usize| {
        s.on_event(now, Event::PeerJoined { task: t.clone(), peer: pid(i), addr: addr(i), have: vec![] })
    };
    let told = |out: &[Action], i: usize| -> Vec<Down> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { peer, msg, .. } if *peer == pid(i) => Some(msg.clone()),
                _ => None,
            })
            .collect()
    };
    let len = 2 * u64::from(PIECE);
    s.on_event(now, Event::TaskStarted { task: t.clone(), content_length: Some(len), piece_size: PIECE });
    join(&mut s, 1);
    let failed = s.on_event(
        now,
        Event::OriginFailed { task: t.clone(), status: Some(503), refused: false, message: "503".into() },
    );
    assert!(told(&failed, 1).iter().any(|m| matches!(m, Down::Failed { .. })), "p1 is told");
    // p2 registers while the task stands failed (it is told so and falls back to the origin);
    // its registration starts a new fetch, which succeeds.
    let out = join(&mut s, 2);
    assert!(told(&out, 2).iter().any(|m| matches!(m, Down::Failed { .. })));
    s.on_event(now, Event::TaskStarted { task: t.clone(), content_length: Some(len), piece_size: PIECE });
    for n in 0..2 {
        s.on_event(now, Event::PieceLanded { task: t.clone(), piece: meta(n) });
    }
    s.on_event(now, Event::OriginComplete { task: t.clone(), total_pieces: 2, content_length: len });
    // The members of the failed attempt leave late.
    s.on_event(now, Event::PeerLeft { task: t.clone(), peer: pid(1) });
    s.on_event(now, Event::PeerLeft { task: t.clone(), peer: pid(2) });
    let summary = s.task_summary(&t).expect("the task the cache holds stays known");
    assert_eq!(summary.phase, TaskPhase::Complete);
    // A later peer gets the piece table, the end, and assignments at once.
    let out = join(&mut s, 3);
    let msgs = told(&out, 3);
    assert!(msgs.iter().any(|m| matches!(m, Down::Pieces(p) if p.len() == 2)), "{msgs:?}");
    assert!(msgs.iter().any(|m| matches!(m, Down::Complete { total_pieces: 2, .. })), "{msgs:?}");
    assert!(msgs.iter().any(|m| matches!(m, Down::Assign(a) if !a.is_empty())), "{msgs:?}");
    assert!(!msgs.iter().any(|m| matches!(m, Down::Failed { .. })), "{msgs:?}");
}

#[test]
fn endgame_copies_from_the_supernode_stay_rare_when_one_finish_frees_many_waiting_peers() {
    // Eight peers wait for a small file; its last piece reaches its first holder while that
    // holder's upload slots are all taken by the other pieces. The capacity that finish offers
    // goes to every starving peer in one drain: each supernode copy must count against the
    // piece's rarity, or the supernode ends up sending the piece to most of the swarm.
    for seed in 0..16 {
        for pieces in 1..=3u32 {
            let mut sw = Swarm::new(SchedulerConfig { seed, ..SchedulerConfig::default() });
            sw.join(0, vec![]);
            sw.origin(pieces);
            (1..8).for_each(|i| drop(sw.join(i, vec![])));
            let slow = pieces - 1;
            sw.run(
                |sw, _, piece, _| {
                    if piece == slow && sw.now < Duration::from_millis(300) {
                        Outcome::Keep
                    } else {
                        Outcome::Finish
                    }
                },
            );
            assert!(sw.everyone_done(0..8));
            for p in 0..pieces {
                let copies = sw.log.iter().filter(|(_, a)| a.piece == p && a.parent == Parent::Supernode).count();
                assert!(
                    (1..=ENDGAME_RARE).contains(&copies),
                    "seed {seed}, {pieces} pieces: piece {p} went out {copies} times from the supernode"
                );
            }
        }
    }
}
