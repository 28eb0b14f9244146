//! Image swarms (module `group`), driven by an in-memory swarm of several blobs: every message is
//! checked against what the peers registered for and know, in each blob's own piece numbers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};

use super::state::SplitMix64;
use super::tests::View;
use super::*;

const PIECE: u32 = 1 << 20;

fn blob(b: usize) -> TaskId {
    TaskId::new(format!("blob{b}"))
}

fn pid(i: usize) -> PeerId {
    PeerId::new(format!("p{i}"))
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16))
}

/// Piece `n` of blob `b`: its sha256 names both, so a piece delivered under another blob's or
/// number's name is caught.
fn meta(b: usize, n: u32) -> PieceMeta {
    let mut sha256 = [0; 32];
    sha256[0] = b as u8;
    sha256[1..5].copy_from_slice(&n.to_le_bytes());
    PieceMeta { number: n, piece: Piece { offset: u64::from(n) * u64::from(PIECE), size: PIECE, sha256 } }
}

/// One transfer in progress.
#[derive(Clone, Debug, PartialEq)]
struct Transfer {
    child: usize,
    blob: usize,
    piece: u32,
    parent: Option<usize>,
}

struct Image {
    s: Scheduler,
    cfg: SchedulerConfig,
    now: Duration,
    /// Pieces per blob.
    sizes: Vec<u32>,
    /// (peer, blob) registrations in force, with what the peer was told and holds.
    views: BTreeMap<(usize, usize), View>,
    transfers: Vec<Transfer>,
    /// Supernode copies per (blob, piece).
    sn_copies: BTreeMap<(usize, u32), usize>,
    rng: SplitMix64,
    /// Every blob is in the swarm, so a peer's window spans all of them (a blob whose origin
    /// answered before anyone registered is a task of its own, with its own window).
    one_window: bool,
    /// Check the supernode's slots against the transfers after every event (off while a
    /// blob of its own fails: its peers keep their assignments until they leave).
    count_slots: bool,
}

impl Image {
    fn new(sizes: &[u32], cfg: SchedulerConfig) -> Self {
        Self {
            s: Scheduler::new(cfg.clone()),
            cfg,
            now: Duration::ZERO,
            sizes: sizes.to_vec(),
            views: BTreeMap::new(),
            transfers: Vec::new(),
            sn_copies: BTreeMap::new(),
            rng: SplitMix64::new(7),
            one_window: true,
            count_slots: true,
        }
    }

    fn blob_index(task: &TaskId) -> usize {
        task.as_str()["blob".len()..].parse().unwrap()
    }

    fn peer_index(peer: &PeerId) -> usize {
        peer.as_str()[1..].parse().unwrap()
    }

    fn event(&mut self, e: Event) -> Vec<Action> {
        let shown = format!("{e:?}");
        let actions = self.s.on_event(self.now, e);
        for action in &actions {
            if let Action::Send { peer, task, msg } = action {
                assert!(!task.as_str().starts_with("image:"), "a message about the swarm itself: {msg:?}");
                self.deliver(Self::peer_index(peer), Self::blob_index(task), msg);
            }
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.s.check_invariants())).is_err() {
            panic!("books wrong after {shown}");
        }
        if self.count_slots {
            let sn = self.transfers.iter().filter(|t| t.parent.is_none()).count();
            assert_eq!(self.s.supernode_uploads_in_flight(), sn, "supernode slot accounting after {shown}");
        }
        actions
    }

    fn deliver(&mut self, i: usize, b: usize, msg: &Down) {
        let view = self.views.get_mut(&(i, b));
        let view = view.unwrap_or_else(|| panic!("p{i} told about blob{b}, which it did not register for: {msg:?}"));
        match msg {
            Down::TaskInfo { content_length, piece_size } => {
                let len = u64::from(self.sizes[b]) * u64::from(PIECE);
                assert!(content_length.is_none_or(|l| l == len) && *piece_size == PIECE);
                view.info = true;
            }
            Down::Pieces(list) => {
                for m in list {
                    assert_eq!(*m, meta(b, m.number), "p{i} got another blob's table entry as blob{b}'s");
                    view.known.insert(m.number);
                }
            }
            Down::Complete { total_pieces, .. } => view.total = Some(*total_pieces),
            Down::Failed { .. } => view.failed = true,
            Down::Assign(list) => {
                for a in list {
                    let view = &self.views[&(i, b)];
                    assert!(
                        view.info && view.known.contains(&a.piece),
                        "p{i} assigned unknown piece {}/{}",
                        b,
                        a.piece
                    );
                    assert!(!view.held.contains(&a.piece) && !view.done && !view.failed);
                    let parent = match &a.parent {
                        Parent::Supernode => {
                            *self.sn_copies.entry((b, a.piece)).or_default() += 1;
                            None
                        }
                        Parent::Peer { id, addr: at } => {
                            let p = Self::peer_index(id);
                            assert_eq!(*at, addr(p));
                            let pv = self.views.get(&(p, b));
                            assert!(pv.is_some_and(|v| v.held.contains(&a.piece)), "parent p{p} lacks {b}/{}", a.piece);
                            Some(p)
                        }
                    };
                    let t = Transfer { child: i, blob: b, piece: a.piece, parent };
                    assert!(!self.transfers.iter().any(|x| (x.child, x.blob, x.piece) == (i, b, a.piece)));
                    self.transfers.push(t);
                    let in_flight = self.transfers.iter().filter(|x| x.child == i).count();
                    let window = self.cfg.window_per_peer * if self.one_window { 1 } else { self.sizes.len() };
                    assert!(in_flight <= window, "p{i}'s window spans the image");
                }
            }
        }
    }

    fn join(&mut self, i: usize, b: usize, have: Vec<u32>) {
        let v = View { held: have.iter().copied().collect(), ..View::default() };
        self.views.insert((i, b), v);
        self.event(Event::Grouped { task: blob(b), group: "img".into() });
        self.event(Event::PeerJoined { task: blob(b), peer: pid(i), addr: addr(i), have });
    }

    fn start(&mut self, b: usize) {
        let len = Some(u64::from(self.sizes[b]) * u64::from(PIECE));
        self.event(Event::TaskStarted { task: blob(b), content_length: len, piece_size: PIECE });
    }

    fn land_all(&mut self, b: usize) {
        for n in 0..self.sizes[b] {
            self.event(Event::PieceLanded { task: blob(b), piece: meta(b, n) });
        }
        let (total_pieces, content_length) = (self.sizes[b], u64::from(self.sizes[b]) * u64::from(PIECE));
        self.event(Event::OriginComplete { task: blob(b), total_pieces, content_length });
    }

    /// Every peer of `peers` registers for every blob of `blobs`, blob by blob.
    fn join_all(&mut self, peers: std::ops::Range<usize>, blobs: std::ops::Range<usize>) {
        for i in peers {
            for b in blobs.clone() {
                self.join(i, b, vec![]);
            }
        }
    }

    /// The origin answers for every blob, then every piece lands.
    fn serve_all(&mut self) {
        for b in 0..self.sizes.len() {
            self.start(b);
        }
        for b in 0..self.sizes.len() {
            self.land_all(b);
        }
    }

    /// Settles every transfer (each fails with probability `fail` in 1024), then reports done
    /// the registrations that hold every piece.
    fn step(&mut self, fail: u32) {
        self.now += Duration::from_millis(100);
        for t in self.transfers.clone() {
            self.transfers.retain(|x| *x != t);
            let parent = t.parent.map(pid);
            if self.rng.below(1024) < fail {
                let reason = FailReason::Transfer;
                self.event(Event::PieceFailed {
                    task: blob(t.blob),
                    peer: pid(t.child),
                    piece: t.piece,
                    parent,
                    reason,
                });
                continue;
            }
            self.views.get_mut(&(t.child, t.blob)).unwrap().held.insert(t.piece);
            self.event(Event::PieceFinished { task: blob(t.blob), peer: pid(t.child), piece: t.piece });
        }
        let done: Vec<(usize, usize)> = self
            .views
            .iter()
            .filter(|(_, v)| !v.done && v.total.is_some_and(|t| (0..t).all(|n| v.held.contains(&n))))
            .map(|(&k, _)| k)
            .collect();
        for (i, b) in done {
            self.views.get_mut(&(i, b)).unwrap().done = true;
            self.event(Event::PeerDone { task: blob(b), peer: pid(i) });
        }
    }

    fn run(&mut self, fail: u32) {
        for _ in 0..2_000 {
            self.step(fail);
            if self.transfers.is_empty() {
                self.event(Event::Tick);
                if self.transfers.is_empty() {
                    return;
                }
            }
        }
        panic!("the swarm did not settle");
    }

    fn done(&self, i: usize, b: usize) -> bool {
        self.views.get(&(i, b)).is_some_and(|v| v.done)
    }
}

#[test]
fn an_image_swarm_delivers_every_blob_with_about_one_supernode_copy() {
    let mut img = Image::new(&[5, 3, 8], SchedulerConfig::default());
    for i in 0..6 {
        // Each host registers the blobs in its own order, as separate requests do.
        for k in 0..3 {
            img.join(i, (i + k) % 3, vec![]);
        }
    }
    for b in 0..3 {
        img.start(b);
    }
    for b in [2, 0, 1] {
        img.land_all(b);
    }
    img.run(0);
    for i in 0..6 {
        for b in 0..3 {
            assert!(img.done(i, b), "p{i} not done with blob{b}");
        }
    }
    // One swarm: its blobs are summarised each on its own, the swarm not at all.
    assert_eq!(img.s.tasks(), vec![blob(0), blob(1), blob(2)]);
    let sum = img.s.task_summary(&blob(2)).unwrap();
    assert_eq!((sum.landed_pieces, sum.total_pieces, sum.peers.len()), (8, Some(8), 6));
    assert_eq!(sum.image_swarm.as_deref(), Some("img"));
    assert!(sum.peers.iter().all(|p| p.done && p.pieces_held == 8));
    // The supernode sent each piece about once: the swarm passed them on.
    let copies: usize = img.sn_copies.values().sum();
    assert!(copies <= 16 + 4, "{copies} supernode copies of 16 pieces");
}

#[test]
fn a_member_is_assigned_only_the_blobs_it_registered_for() {
    let mut img = Image::new(&[4, 6], SchedulerConfig::default());
    img.join(0, 0, vec![]);
    img.join_all(1..4, 0..2);
    img.serve_all();
    img.run(0);
    // `deliver` panics on any message to p0 about blob1.
    assert!(img.done(0, 0) && !img.views.contains_key(&(0, 1)));
    assert!((1..4).all(|i| img.done(i, 0) && img.done(i, 1)));
    let sum = img.s.task_summary(&blob(1)).unwrap();
    assert!(!sum.peers.iter().any(|p| p.id == pid(0)));
    // It registers for the other blob later: it gets it, from the seeds.
    img.join(0, 1, vec![]);
    img.run(0);
    assert!(img.done(0, 1));
}

#[test]
fn peers_that_register_before_the_origin_answers_wait_for_their_blob_to_be_placed() {
    let mut img = Image::new(&[3, 2], SchedulerConfig::default());
    img.join(0, 0, vec![]);
    img.join(0, 1, vec![]);
    let sum = img.s.task_summary(&blob(1)).unwrap();
    assert_eq!((sum.phase, sum.peers.len()), (TaskPhase::Pending, 1));
    assert_eq!(img.s.peer_count(), 1);
    // Blob 1 answers first: it takes the swarm's first pieces.
    img.start(1);
    img.land_all(1);
    img.start(0);
    img.land_all(0);
    img.join(1, 0, vec![]);
    img.join(1, 1, vec![1]);
    img.run(0);
    assert!((0..2).all(|i| img.done(i, 0) && img.done(i, 1)));
    assert_eq!(img.s.peer_count(), 2);
}

#[test]
fn a_blob_whose_length_is_unknown_is_a_task_of_its_own() {
    let mut img = Image::new(&[3, 2], SchedulerConfig::default());
    img.join_all(0..3, 0..2);
    img.start(0);
    img.event(Event::TaskStarted { task: blob(1), content_length: None, piece_size: PIECE });
    img.land_all(0);
    img.land_all(1);
    img.run(0);
    assert!((0..3).all(|i| img.done(i, 0) && img.done(i, 1)));
    let sum = img.s.task_summary(&blob(1)).unwrap();
    assert_eq!((sum.content_length, sum.peers.len(), sum.image_swarm), (Some(2 * u64::from(PIECE)), 3, None));
}

#[test]
fn a_blob_left_or_failed_midway_leaves_the_rest_of_the_swarm_going() {
    let mut img = Image::new(&[6, 6, 4], SchedulerConfig::default());
    img.join_all(0..5, 0..3);
    for b in 0..3 {
        img.start(b);
    }
    img.land_all(0);
    img.land_all(1);
    for n in 0..2 {
        img.event(Event::PieceLanded { task: blob(2), piece: meta(2, n) });
    }
    img.step(0);
    img.step(0);
    // p4 gives up blob 1 halfway: its transfers there end, the ones it serves are orphaned.
    img.transfers.retain(|t| !(t.child == 4 && t.blob == 1));
    img.views.remove(&(4, 1));
    img.event(Event::PeerLeft { task: blob(1), peer: pid(4) });
    let orphaned: Vec<Transfer> =
        img.transfers.iter().filter(|t| t.parent == Some(4) && t.blob == 1).cloned().collect();
    for t in orphaned {
        img.transfers.retain(|x| *x != t);
        let (task, peer, parent) = (blob(1), pid(t.child), Some(pid(4)));
        img.event(Event::PieceFailed { task, peer, piece: t.piece, parent, reason: FailReason::Transfer });
    }
    // Blob 2's origin fetch fails: its peers hear so, on blob 2 only, and drop it (the
    // scheduler ends their blob 2 assignments at once).
    img.transfers.retain(|t| t.blob != 2);
    img.event(Event::OriginFailed { task: blob(2), status: Some(502), refused: false, message: "bad gateway".into() });
    assert!((0..5).all(|i| img.views[&(i, 2)].failed));
    for i in 0..5 {
        img.views.remove(&(i, 2));
        img.event(Event::PeerLeft { task: blob(2), peer: pid(i) });
    }
    img.run(0);
    assert!((0..5).all(|i| img.done(i, 0)));
    assert!((0..4).all(|i| img.done(i, 1)));
    // A new fetch of the failed blob is a task of its own; its pieces are fetched again.
    img.join(0, 2, vec![]);
    img.start(2);
    img.land_all(2);
    img.run(0);
    assert!(img.done(0, 2));
}

#[test]
fn an_evicted_blob_is_forgotten_and_the_rest_stays_served() {
    let mut img = Image::new(&[3, 3], SchedulerConfig::default());
    img.join_all(0..3, 0..2);
    img.start(0);
    img.start(1);
    img.land_all(0);
    assert!(!img.s.forget_task(img.now, &blob(0)), "downloaders protect a blob");
    img.land_all(1);
    img.run(0);
    assert!(img.s.forget_task(img.now, &blob(0)));
    assert!(img.s.task_summary(&blob(0)).is_none());
    for i in 0..3 {
        img.views.remove(&(i, 0));
    }
    // A newcomer gets blob 1 from the seeds; blob 0 is fetched afresh, placed again.
    img.join(3, 1, vec![]);
    img.join(3, 0, vec![]);
    img.start(0);
    img.land_all(0);
    img.run(0);
    assert!(img.done(3, 0) && img.done(3, 1));
    assert!(img.s.forget_task(img.now, &blob(0)) && img.s.forget_task(img.now, &blob(1)));
    img.event(Event::Tick);
    assert!(img.s.tasks().is_empty());
}

#[test]
fn without_image_swarms_every_blob_is_a_task_of_its_own() {
    let cfg = SchedulerConfig { image_swarms: false, ..SchedulerConfig::default() };
    let mut img = Image::new(&[2, 2], cfg);
    img.join_all(0..3, 0..2);
    img.serve_all();
    img.run(0);
    assert!((0..3).all(|i| img.done(i, 0) && img.done(i, 1)));
    assert_eq!(img.s.swarm_counts(), (0, 0));
}

#[test]
fn a_blob_cached_before_any_group_joins_the_swarm_with_its_seeds() {
    let mut img = Image::new(&[4, 3], SchedulerConfig::default());
    // Blob 0 was fetched and seeded on its own (a preheat, or restored after a restart).
    img.start(0);
    img.land_all(0);
    img.views.insert((0, 0), View { held: (0..4).collect(), ..View::default() });
    img.event(Event::PeerJoined { task: blob(0), peer: pid(0), addr: addr(0), have: (0..4).collect() });
    img.views.get_mut(&(0, 0)).unwrap().done = true;
    img.event(Event::PeerDone { task: blob(0), peer: pid(0) });
    // An image pull names a group for it and a new blob: both are one swarm, the seed with it.
    img.join_all(1..4, 0..2);
    assert_eq!(img.s.swarm_counts(), (2, 1));
    img.start(1);
    img.land_all(1);
    img.run(0);
    assert!((1..4).all(|i| img.done(i, 0) && img.done(i, 1)));
    let sum = img.s.task_summary(&blob(0)).unwrap();
    assert_eq!((sum.landed_pieces, sum.total_pieces, sum.peers.len()), (4, Some(4), 4));
    // Nobody fetched blob 0 from the supernode: the seed served it.
    assert!(!img.sn_copies.keys().any(|&(b, _)| b == 0));
}

#[test]
fn a_blob_being_downloaded_on_its_own_stays_on_its_own() {
    let mut img = Image::new(&[4, 3], SchedulerConfig::default());
    img.start(0);
    img.views.insert((0, 0), View::default());
    img.event(Event::PeerJoined { task: blob(0), peer: pid(0), addr: addr(0), have: vec![] });
    img.join(1, 0, vec![]);
    img.join(1, 1, vec![]);
    assert_eq!(img.s.swarm_counts(), (1, 1));
    img.land_all(0);
    img.start(1);
    img.land_all(1);
    img.run(0);
    assert!(img.done(0, 0) && img.done(1, 0) && img.done(1, 1));
}

#[test]
fn a_swarm_whose_last_waiting_blob_goes_on_its_own_completes() {
    let mut img = Image::new(&[3, 2], SchedulerConfig::default());
    img.one_window = false;
    img.join_all(0..2, 0..2);
    img.start(0);
    img.land_all(0);
    // Blob 1's origin does not announce a length: it becomes a task of its own.
    img.event(Event::TaskStarted { task: blob(1), content_length: None, piece_size: PIECE });
    img.land_all(1);
    img.run(0);
    assert!((0..2).all(|i| img.done(i, 0) && img.done(i, 1)));
    let sid = TaskId::new("image:img");
    let phase = img.s.task_summary(&sid).map(|s| s.phase);
    assert!(
        matches!(phase, Some(TaskPhase::Complete)),
        "swarm phase {phase:?}: every placed blob landed, none pending"
    );
}

/// One random history of a swarm (two groups, some registrations without one, lengths the
/// origin does not announce, re-registrations, hosts that fetch from the origin themselves,
/// failures, departures, evictions); every event is checked as `Image::event` checks it, and
/// whoever is still registered at the end finishes.
fn random_history(seed: u64, steps: usize) {
    let mut rng = SplitMix64::new(seed);
    let sizes: Vec<u32> = (0..2 + rng.below(3)).map(|_| 1 + rng.below(6)).collect();
    let cfg = SchedulerConfig {
        window_per_peer: 2 + rng.below(4) as usize,
        max_uploads_per_peer: 1 + rng.below(3) as usize,
        max_supernode_uploads: 1 + rng.below(3) as usize,
        link_depth: 1 + rng.below(2) as usize,
        seed,
        ..SchedulerConfig::default()
    };
    let mut img = Image::new(&sizes, cfg);
    img.rng = SplitMix64::new(seed ^ 0x5eed);
    img.one_window = false;
    let blobs = sizes.len();
    let mut started = vec![false; blobs];
    let mut landed = vec![0u32; blobs];
    for _ in 0..steps {
        let (i, b) = (rng.below(6) as usize, rng.below(blobs as u32) as usize);
        match rng.below(16) {
            0..=2 if !img.views.contains_key(&(i, b)) => {
                let have: Vec<u32> = (0..sizes[b]).filter(|_| rng.below(5) == 0).collect();
                let group = if rng.below(3) == 0 { "img2" } else { "img" };
                img.views.insert((i, b), View { held: have.iter().copied().collect(), ..View::default() });
                img.event(Event::Grouped { task: blob(b), group: group.into() });
                img.event(Event::PeerJoined { task: blob(b), peer: pid(i), addr: addr(i), have });
            }
            3 if !started[b] => {
                started[b] = true;
                if rng.below(4) == 0 {
                    img.event(Event::TaskStarted { task: blob(b), content_length: None, piece_size: PIECE });
                } else {
                    img.start(b);
                }
            }
            4 if started[b] && landed[b] < sizes[b] => {
                img.event(Event::PieceLanded { task: blob(b), piece: meta(b, landed[b]) });
                landed[b] += 1;
                if landed[b] == sizes[b] {
                    let len = u64::from(sizes[b]) * u64::from(PIECE);
                    img.event(Event::OriginComplete { task: blob(b), total_pieces: sizes[b], content_length: len });
                }
            }
            5 if img.views.contains_key(&(i, b)) && rng.below(3) == 0 => {
                img.transfers.retain(|t| !(t.child == i && t.blob == b));
                img.views.remove(&(i, b));
                img.event(Event::PeerLeft { task: blob(b), peer: pid(i) });
            }
            6 if rng.below(6) == 0 => {
                img.transfers.retain(|t| t.child != i);
                img.views.retain(|&(p, _), _| p != i);
                img.event(Event::PeerGone { peer: pid(i) });
            }
            7 => {
                img.event(Event::Tick);
            }
            8 if started[b] && landed[b] < sizes[b] && rng.below(3) == 0 => {
                img.transfers.retain(|t| t.blob != b);
                let failed = Event::OriginFailed { task: blob(b), status: None, refused: false, message: "x".into() };
                img.count_slots = false;
                img.event(failed);
                let peers: Vec<usize> = img.views.keys().filter(|k| k.1 == b).map(|k| k.0).collect();
                for p in peers {
                    let v = img.views.remove(&(p, b)).unwrap();
                    assert!(v.failed || v.done || !v.info, "p{p} not told blob{b} failed");
                    img.event(Event::PeerLeft { task: blob(b), peer: pid(p) });
                }
                img.count_slots = true;
                img.event(Event::Tick);
                (started[b], landed[b]) = (false, 0);
            }
            9 if started[b] && landed[b] == sizes[b] && !img.s.has_downloaders(&blob(b)) => {
                assert!(img.s.forget_task(img.now, &blob(b)));
                img.views.retain(|k, _| k.1 != b);
                (started[b], landed[b]) = (false, 0);
            }
            10 if img.views.get(&(i, b)).is_some_and(|v| !v.done) => {
                // Re-registration with what it holds now.
                img.transfers.retain(|t| !(t.child == i && t.blob == b));
                let held: Vec<u32> = img.views[&(i, b)].held.iter().copied().collect();
                img.views.remove(&(i, b));
                img.count_slots = false;
                img.views.insert((i, b), View { held: held.iter().copied().collect(), ..View::default() });
                img.event(Event::Grouped { task: blob(b), group: "img".into() });
                img.count_slots = true;
                img.event(Event::PeerJoined { task: blob(b), peer: pid(i), addr: addr(i), have: held });
            }
            12 | 13 if !img.views.contains_key(&(i, b)) => {
                // A registration without a group.
                let have: Vec<u32> = (0..sizes[b]).filter(|_| rng.below(5) == 0).collect();
                img.views.insert((i, b), View { held: have.iter().copied().collect(), ..View::default() });
                img.event(Event::PeerJoined { task: blob(b), peer: pid(i), addr: addr(i), have });
            }
            11 if img.views.get(&(i, b)).is_some_and(|v| !v.done) && rng.below(3) == 0 => {
                // Fetched it from the origin itself.
                img.transfers.retain(|t| !(t.child == i && t.blob == b));
                let v = img.views.get_mut(&(i, b)).unwrap();
                v.held = (0..sizes[b]).collect();
                v.done = true;
                img.event(Event::PeerDone { task: blob(b), peer: pid(i) });
            }
            _ => img.step(64),
        }
        let dead: Vec<Transfer> = img
            .transfers
            .iter()
            .filter(|t| t.parent.is_some_and(|p| !img.views.contains_key(&(p, t.blob))))
            .cloned()
            .collect();
        for t in dead {
            img.transfers.retain(|x| *x != t);
            let (task, peer, parent) = (blob(t.blob), pid(t.child), t.parent.map(pid));
            img.event(Event::PieceFailed { task, peer, piece: t.piece, parent, reason: FailReason::Transfer });
        }
    }
    for b in 0..blobs {
        if !started[b] {
            img.start(b);
        }
        for n in landed[b]..sizes[b] {
            img.event(Event::PieceLanded { task: blob(b), piece: meta(b, n) });
        }
        if landed[b] < sizes[b] {
            let len = u64::from(sizes[b]) * u64::from(PIECE);
            img.event(Event::OriginComplete { task: blob(b), total_pieces: sizes[b], content_length: len });
        }
    }
    img.run(0);
    let registered: Vec<(usize, usize)> = img.views.keys().copied().collect();
    for (i, b) in registered {
        assert!(img.done(i, b), "seed {seed}: p{i} not done with blob{b}");
    }
}

#[test]
fn random_image_swarms_keep_their_books() {
    for seed in 0..64 {
        random_history(seed, 200);
    }
}

#[test]
fn an_adopted_seed_that_got_its_blob_from_the_origin_is_not_assigned_it() {
    let mut img = Image::new(&[2, 1], SchedulerConfig::default());
    img.one_window = false;
    img.start(0);
    for i in 0..2 {
        img.views.insert((i, 0), View::default());
        img.event(Event::PeerJoined { task: blob(0), peer: pid(i), addr: addr(i), have: vec![] });
    }
    // p0 got blob 0 from the origin itself, before the supernode's copy landed anything.
    let v = img.views.get_mut(&(0, 0)).unwrap();
    v.held = (0..2).collect();
    v.done = true;
    img.event(Event::PeerDone { task: blob(0), peer: pid(0) });
    img.land_all(0);
    img.run(0);
    assert!(img.done(1, 0));
    // An image pull groups blob 0: it is adopted with its seeds p0 and p1.
    // `deliver` panics when p0, done, is sent an Assign.
    img.join(2, 0, vec![]);
    img.run(0);
    assert!(img.done(2, 0));
}
