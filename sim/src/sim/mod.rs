//! A discrete-event simulator that drives the supernode's real scheduler
//! ([`damselfly_scheduler::Scheduler`], the same code the supernode runs) with thousands of
//! simulated hosts.
//!
//! # What is simulated
//! - **Hosts** (`0..N`) with an upload and a download rate, each pulling every layer of an image
//!   at once (one task per layer), like a dfdaemon: it registers (each layer's registration up
//!   to `register_jitter` late, at random), fetches each assigned piece from the parent the
//!   scheduler names, reports it finished, and reports done once it holds every piece and knows
//!   the piece count.
//! - **The supernode**: its uplink serves the pieces the scheduler assigns to itself; it fetches
//!   each task from the origin once, in order, starting when the first host registers, and
//!   every piece is announced to the scheduler as it lands ([`Event::PieceLanded`]).
//! - **The network**: flows share each node's uplink and downlink (see the `net` module for the exact
//!   model), of which only `wire_efficiency` carries payload (packet headers, acknowledgements).
//!   Every message (registration, assignment, report, piece request) takes half a round trip
//!   plus `queue_delay` for each link on its way that is carrying a flow at that moment: a
//!   saturated link has a standing queue (tbf's `latency 50ms` in the netns benchmark, a
//!   router's buffer in production) and a control message waits behind the piece bytes in it.
//!   A piece transfer starts after its request reached the parent and the first byte came back.
//! - **Per-piece cost**: a host reports a piece `piece_overhead` after its last byte arrived
//!   (hashing, writing, the report itself).
//! - **Ticks** every `tick` seconds, as the supernode's shell sends them.
//!
//! Everything is deterministic: the same [`SimConfig`] gives the same result.

mod net;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use damselfly_scheduler::{Action, Down, Event, Parent, PieceMeta, Scheduler, SchedulerConfig};
use damselfly_types::id::{PeerId, TaskId};
use damselfly_types::piece::{piece_count, piece_range, piece_size, Piece};

use crate::bound::{lower_bound, Bound};
use net::{Cargo, Due, Net, NodeId};

/// What to simulate. Rates are in bytes per second, times in seconds.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of hosts.
    pub hosts: usize,
    /// Size of each layer (one task each); the image is their sum.
    pub layers: Vec<u64>,
    /// Every host's upload rate.
    pub host_up: f64,
    /// Every host's download rate.
    pub host_down: f64,
    /// The supernode's upload rate.
    pub sn_up: f64,
    /// The supernode's download rate (from the origin).
    pub sn_down: f64,
    /// The origin's upload rate (to the supernode).
    pub origin_up: f64,
    /// Round-trip time between any two nodes (idle links).
    pub rtt: f64,
    /// Extra one-way delay of a message crossing a link that is carrying a flow (its standing
    /// queue), per busy link on the way. 0: queues never build.
    pub queue_delay: f64,
    /// Fraction of every link's rate that carries payload. 1: no overhead.
    pub wire_efficiency: f64,
    /// Time from a piece's last byte to its report leaving the host.
    pub piece_overhead: f64,
    /// Hosts join at uniformly spread times in `0..join_spread` (0: all at once).
    pub join_spread: f64,
    /// Each of a host's registrations (one per layer) reaches the supernode up to this much
    /// later, uniformly at random: a real host's downloads of an image's blobs are separate
    /// requests, so the first host to register is not the same for every blob (0: all at once,
    /// in host order).
    pub register_jitter: f64,
    /// Interval of [`Event::Tick`].
    pub tick: f64,
    /// Give up after this much simulated time.
    pub time_limit: f64,
    /// The scheduler's tuning (its defaults are the supernode's).
    pub scheduler: SchedulerConfig,
    /// Seed of the join times (the scheduler has its own in `scheduler.seed`).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            hosts: 1000,
            layers: vec![256 << 20],
            host_up: 125e6,
            host_down: 125e6,
            sn_up: 1.25e9,
            sn_down: 1.25e9,
            origin_up: 1.25e9,
            rtt: 0.001,
            queue_delay: 0.0,
            wire_efficiency: 1.0,
            piece_overhead: 0.0,
            join_spread: 0.0,
            register_jitter: 0.0,
            tick: 0.5,
            time_limit: 3600.0,
            scheduler: SchedulerConfig::default(),
            seed: 1,
        }
    }
}

impl SimConfig {
    /// Bytes of the whole image.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// The distribution lower bound for this setup, at the links' nominal rates: hosts get bytes
    /// only from the supernode and each other, and the supernode's first copy cannot come faster
    /// than the origin sends it.
    pub fn bound(&self) -> Bound {
        let n = self.hosts;
        let f = self.image_bytes() as f64;
        let mut b = lower_bound(f, self.sn_up, &vec![self.host_up; n], &vec![self.host_down; n]);
        b.sources = b.sources.max(f / self.origin_up.min(self.sn_down));
        b.seconds = b.seconds.max(b.sources);
        b
    }
}

/// What a simulation measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimResult {
    /// Each host's completion time (from its join to holding every layer), seconds; `None` for a
    /// host that had not finished at the time limit.
    pub completion: Vec<Option<f64>>,
    /// Bytes the supernode uploaded to hosts.
    pub supernode_upload: u64,
    /// Bytes hosts uploaded to each other.
    pub peer_upload: u64,
    /// Bytes the origin sent.
    pub origin_upload: u64,
    /// Simulated time at the end.
    pub sim_seconds: f64,
    /// Scheduler events processed.
    pub scheduler_events: u64,
    /// Wall time spent inside [`Scheduler::on_event`].
    pub scheduler_wall: Duration,
    /// Wall time of the whole simulation.
    pub wall: Duration,
    /// Scheduler cost by event kind: (kind, events, wall time inside `on_event`).
    pub scheduler_by_kind: Vec<(String, u64, Duration)>,
    /// Piece assignments the scheduler made (supernode and peers).
    pub assignments: u64,
    /// Assignments of a piece the host already held or was fetching (ignored, as dfdaemon does).
    pub duplicate_assignments: u64,
    /// Largest number of flows in progress at once.
    pub peak_flows: usize,
}

/// What happens next, in time order.
#[derive(Debug)]
enum Ev {
    /// A host registers for every layer.
    Join(usize),
    /// One registration (host, layer) reaches the supernode.
    Register(usize, usize),
    /// The origin's response headers for a task arrive at the supernode.
    OriginStart(usize),
    /// An event reaches the scheduler.
    Sched(Event),
    /// A scheduler message reaches a host.
    ToHost { host: usize, task: usize, msg: Down },
    /// A piece transfer begins (request sent, first byte arriving).
    Transfer { from: NodeId, host: usize, task: usize, piece: u32 },
    /// A flow may be done (stale if its version moved on).
    Due(Due),
    /// The periodic tick.
    Tick,
}

/// Per host, per task.
#[derive(Clone, Debug, Default)]
struct HostTask {
    have: Vec<bool>,
    have_count: u32,
    fetching: Vec<bool>,
    complete_known: bool,
    done: bool,
}

struct Sim {
    cfg: SimConfig,
    sched: Scheduler,
    net: Net,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<usize>,
    seq: u64,
    now: f64,
    tasks: Vec<TaskId>,
    task_index: HashMap<TaskId, usize>,
    peers: Vec<PeerId>,
    peer_index: HashMap<PeerId, usize>,
    hosts: Vec<Vec<HostTask>>,
    joined_at: Vec<f64>,
    finished_at: Vec<Option<f64>>,
    hosts_left: usize,
    origin_started: Vec<bool>,
    sn: NodeId,
    origin: NodeId,
    dues: Vec<Due>,
    /// Draws the registration jitter.
    jitter: SplitMix,
    result: SimResult,
}

/// Runs one simulation.
pub fn run(cfg: SimConfig) -> SimResult {
    let started = Instant::now();
    let mut sim = Sim::new(cfg);
    sim.run();
    sim.result.wall = started.elapsed();
    sim.result
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let mut net = Net::default();
        let eff = cfg.wire_efficiency;
        for _ in 0..cfg.hosts {
            net.add_node(cfg.host_up * eff, cfg.host_down * eff);
        }
        let sn = net.add_node(cfg.sn_up * eff, cfg.sn_down * eff);
        let origin = net.add_node(cfg.origin_up * eff, f64::INFINITY);
        let tasks: Vec<TaskId> = (0..cfg.layers.len()).map(|i| TaskId::new(format!("{:064x}", i + 1))).collect();
        let peers: Vec<PeerId> = (0..cfg.hosts).map(|i| PeerId::new(format!("h{i}"))).collect();
        let host_tasks: Vec<HostTask> = cfg
            .layers
            .iter()
            .map(|&len| {
                let n = piece_count(len, piece_size(Some(len))) as usize;
                HostTask { have: vec![false; n], fetching: vec![false; n], ..HostTask::default() }
            })
            .collect();
        let n = cfg.hosts;
        let result = SimResult {
            completion: Vec::new(),
            supernode_upload: 0,
            peer_upload: 0,
            origin_upload: 0,
            sim_seconds: 0.0,
            scheduler_events: 0,
            scheduler_wall: Duration::ZERO,
            wall: Duration::ZERO,
            scheduler_by_kind: Vec::new(),
            assignments: 0,
            duplicate_assignments: 0,
            peak_flows: 0,
        };
        Sim {
            sched: Scheduler::new(cfg.scheduler.clone()),
            net,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            seq: 0,
            now: 0.0,
            task_index: tasks.iter().cloned().enumerate().map(|(i, t)| (t, i)).collect(),
            tasks,
            peer_index: peers.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect(),
            peers,
            hosts: vec![host_tasks; n],
            joined_at: vec![0.0; n],
            finished_at: vec![None; n],
            hosts_left: n,
            origin_started: vec![false; cfg.layers.len()],
            sn,
            origin,
            dues: Vec::new(),
            jitter: SplitMix(cfg.seed ^ 0x6a09_e667_f3bc_c908),
            result,
            cfg,
        }
    }

    fn at(&mut self, time: f64, ev: Ev) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s] = Some(ev);
                s
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() - 1
            }
        };
        self.seq += 1;
        let ns = (time.max(self.now) * 1e9).round() as u64;
        self.queue.push(Reverse((ns, self.seq, slot)));
    }

    fn run(&mut self) {
        let mut rng = SplitMix(self.cfg.seed);
        for host in 0..self.cfg.hosts {
            let t = if self.cfg.join_spread > 0.0 { rng.unit() * self.cfg.join_spread } else { 0.0 };
            self.joined_at[host] = t;
            self.at(t, Ev::Join(host));
        }
        self.at(self.cfg.tick, Ev::Tick);
        while let Some(Reverse((ns, _, slot))) = self.queue.pop() {
            self.now = ns as f64 / 1e9;
            if self.now > self.cfg.time_limit || self.hosts_left == 0 {
                break;
            }
            self.free.push(slot);
            if let Some(ev) = self.slab[slot].take() {
                self.handle(ev);
            }
            self.result.peak_flows = self.result.peak_flows.max(self.net.active());
        }
        self.result.sim_seconds = self.now;
        self.result.completion = self.finished_at.iter().zip(&self.joined_at).map(|(f, j)| f.map(|f| f - j)).collect();
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(host) => {
                let half = self.hop(host, self.sn);
                for task in 0..self.tasks.len() {
                    let jitter = self.jitter.unit() * self.cfg.register_jitter;
                    self.at(self.now + half + jitter, Ev::Register(host, task));
                }
            }
            Ev::Register(host, task) => {
                if !self.origin_started[task] {
                    self.origin_started[task] = true;
                    // The supernode's origin request goes out and the response headers come back.
                    self.at(self.now + self.cfg.rtt, Ev::OriginStart(task));
                }
                // One image pull: every registration names the same group (the scheduler's
                // `image_swarms` decides whether that makes the blobs one swarm).
                self.schedule(Event::Grouped { task: self.tasks[task].clone(), group: "image".into() });
                let event = Event::PeerJoined {
                    task: self.tasks[task].clone(),
                    peer: self.peers[host].clone(),
                    addr: peer_addr(host),
                    have: Vec::new(),
                };
                self.schedule(event);
            }
            Ev::OriginStart(task) => {
                let len = self.cfg.layers[task];
                let psize = piece_size(Some(len));
                let event =
                    Event::TaskStarted { task: self.tasks[task].clone(), content_length: Some(len), piece_size: psize };
                self.schedule(event);
                self.start_origin_piece(task, 0);
            }
            Ev::Sched(event) => self.schedule(event),
            Ev::ToHost { host, task, msg } => self.deliver(host, task, msg),
            Ev::Transfer { from, host, task, piece } => self.start_piece(from, host, task, piece),
            Ev::Due(due) => {
                if self.net.current(&due).is_none() {
                    return;
                }
                let mut dues = std::mem::take(&mut self.dues);
                let flow = self.net.finish(self.now, due.flow, &mut dues);
                self.push_dues(&mut dues);
                self.dues = dues;
                if let Some(flow) = flow {
                    self.flow_done(flow.from, flow.to, flow.bytes, flow.cargo);
                }
            }
            Ev::Tick => {
                self.schedule(Event::Tick);
                self.at(self.now + self.cfg.tick, Ev::Tick);
            }
        }
    }

    /// One-way delay of a message from `from` to `to` now: half a round trip plus the standing
    /// queue of each busy link it crosses.
    fn hop(&self, from: NodeId, to: NodeId) -> f64 {
        let q = self.cfg.queue_delay;
        let busy = u8::from(self.net.up_busy(from)) + u8::from(self.net.down_busy(to));
        self.cfg.rtt / 2.0 + q * f64::from(busy)
    }

    fn push_dues(&mut self, dues: &mut Vec<Due>) {
        for due in dues.drain(..) {
            self.at(due.at, Ev::Due(due));
        }
    }

    fn start_origin_piece(&mut self, task: usize, piece: u32) {
        let len = self.cfg.layers[task];
        let Some((_, size)) = piece_range(len, piece_size(Some(len)), piece) else {
            return;
        };
        let mut dues = std::mem::take(&mut self.dues);
        self.net.start(self.now, self.origin, self.sn, u64::from(size), Cargo::Origin { task, piece }, &mut dues);
        self.push_dues(&mut dues);
        self.dues = dues;
    }

    /// Starts sending piece `piece` of `task` from `from` to `host`.
    fn start_piece(&mut self, from: NodeId, host: usize, task: usize, piece: u32) {
        let len = self.cfg.layers[task];
        let size = piece_range(len, piece_size(Some(len)), piece).map_or(0, |(_, s)| s);
        let mut dues = std::mem::take(&mut self.dues);
        self.net.start(self.now, from, host, u64::from(size), Cargo::Piece { task, piece }, &mut dues);
        self.push_dues(&mut dues);
        self.dues = dues;
    }

    fn flow_done(&mut self, from: NodeId, to: NodeId, bytes: u64, cargo: Cargo) {
        match cargo {
            Cargo::Origin { task, piece } => {
                self.result.origin_upload += bytes;
                let len = self.cfg.layers[task];
                let psize = piece_size(Some(len));
                let Some((offset, size)) = piece_range(len, psize, piece) else {
                    return;
                };
                let meta = PieceMeta { number: piece, piece: Piece { offset, size, sha256: [0; 32] } };
                self.schedule(Event::PieceLanded { task: self.tasks[task].clone(), piece: meta });
                let total = piece_count(len, psize);
                if piece + 1 < total {
                    self.start_origin_piece(task, piece + 1);
                } else {
                    let id = self.tasks[task].clone();
                    self.schedule(Event::OriginComplete { task: id, total_pieces: total, content_length: len });
                }
            }
            Cargo::Piece { task, piece } => {
                if from == self.sn {
                    self.result.supernode_upload += bytes;
                } else {
                    self.result.peer_upload += bytes;
                }
                let host = to;
                let ht = &mut self.hosts[host][task];
                let i = piece as usize;
                ht.fetching[i] = false;
                if !ht.have[i] {
                    ht.have[i] = true;
                    ht.have_count += 1;
                }
                let event =
                    Event::PieceFinished { task: self.tasks[task].clone(), peer: self.peers[host].clone(), piece };
                let report = self.cfg.piece_overhead + self.hop(host, self.sn);
                self.at(self.now + report, Ev::Sched(event));
                self.check_done(host, task);
            }
        }
    }

    /// Feeds `event` to the scheduler now and carries out its actions.
    fn schedule(&mut self, event: Event) {
        let kind = event_kind(&event);
        // The supernode's trace lines (`RUST_LOG=damselfly_sched=debug`), in simulated seconds,
        // so that a simulated swarm can be read with the same tools as a netns run.
        let trace = tracing::enabled!(target: "damselfly_sched", tracing::Level::DEBUG);
        if let (Event::PieceFinished { task, peer, piece }, true) = (&event, trace) {
            let task = task.short();
            tracing::debug!(target: "damselfly_sched", t = self.now, task, child = %peer, piece, "finished");
        }
        let t0 = Instant::now();
        let actions = self.sched.on_event(Duration::from_secs_f64(self.now), event);
        let took = t0.elapsed();
        self.result.scheduler_wall += took;
        self.result.scheduler_events += 1;
        match self.result.scheduler_by_kind.iter_mut().find(|(k, _, _)| k == kind) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += took;
            }
            None => self.result.scheduler_by_kind.push((kind.to_string(), 1, took)),
        }
        for action in actions {
            let Action::Send { peer, task, msg } = action else {
                continue;
            };
            if let (Down::Assign(list), true) = (&msg, trace) {
                for a in list {
                    let parent = a.parent.trace_name();
                    tracing::debug!(
                        target: "damselfly_sched",
                        t = self.now,
                        task = task.short(),
                        child = %peer,
                        piece = a.piece,
                        parent,
                        "assign"
                    );
                }
            }
            if !matches!(msg, Down::Assign(_) | Down::Complete { .. } | Down::Failed { .. }) {
                continue; // piece tables: the simulated hosts know the piece math
            }
            let (Some(&host), Some(&task)) = (self.peer_index.get(&peer), self.task_index.get(&task)) else {
                continue;
            };
            let delay = self.hop(self.sn, host);
            self.at(self.now + delay, Ev::ToHost { host, task, msg });
        }
    }

    fn deliver(&mut self, host: usize, task: usize, msg: Down) {
        match msg {
            Down::Assign(list) => {
                for a in list {
                    self.result.assignments += 1;
                    let ht = &mut self.hosts[host][task];
                    let i = a.piece as usize;
                    if i >= ht.have.len() || ht.have[i] || ht.fetching[i] {
                        self.result.duplicate_assignments += 1;
                        continue;
                    }
                    ht.fetching[i] = true;
                    let from = match a.parent {
                        Parent::Supernode => self.sn,
                        Parent::Peer { id, .. } => match self.peer_index.get(&id) {
                            Some(&p) => p,
                            None => continue,
                        },
                    };
                    // The request reaches the parent, the first byte comes back.
                    let delay = self.hop(host, from) + self.hop(from, host);
                    self.at(self.now + delay, Ev::Transfer { from, host, task, piece: a.piece });
                }
            }
            Down::Complete { .. } => {
                self.hosts[host][task].complete_known = true;
                self.check_done(host, task);
            }
            _ => {}
        }
    }

    fn check_done(&mut self, host: usize, task: usize) {
        let ht = &mut self.hosts[host][task];
        if ht.done || !ht.complete_known || ht.have_count as usize != ht.have.len() {
            return;
        }
        ht.done = true;
        let event = Event::PeerDone { task: self.tasks[task].clone(), peer: self.peers[host].clone() };
        let delay = self.hop(host, self.sn);
        self.at(self.now + delay, Ev::Sched(event));
        if self.hosts[host].iter().all(|t| t.done) && self.finished_at[host].is_none() {
            self.finished_at[host] = Some(self.now);
            self.hosts_left -= 1;
        }
    }
}

fn event_kind(event: &Event) -> &'static str {
    match event {
        Event::TaskStarted { .. } => "TaskStarted",
        Event::PieceLanded { .. } => "PieceLanded",
        Event::OriginComplete { .. } => "OriginComplete",
        Event::OriginFailed { .. } => "OriginFailed",
        Event::PeerJoined { .. } => "PeerJoined",
        Event::PieceFinished { .. } => "PieceFinished",
        Event::PieceFailed { .. } => "PieceFailed",
        Event::PeerDone { .. } => "PeerDone",
        Event::PeerLeft { .. } => "PeerLeft",
        Event::PeerGone { .. } => "PeerGone",
        Event::Tick => "Tick",
        Event::Grouped { .. } => "Grouped",
    }
}

/// A made-up peer address (never dialled): host `i` as `127.x.y.z:65002`.
fn peer_addr(i: usize) -> SocketAddr {
    let i = i as u32 + 1;
    SocketAddr::from((Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8), 65002))
}

/// SplitMix64 for join times.
struct SplitMix(u64);

impl SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(hosts: usize) -> SimConfig {
        SimConfig {
            hosts,
            layers: vec![8 << 20, 3 << 20],
            host_up: 10e6,
            host_down: 10e6,
            sn_up: 20e6,
            sn_down: 20e6,
            origin_up: 20e6,
            ..SimConfig::default()
        }
    }

    #[test]
    fn every_host_finishes_and_bytes_add_up() {
        let cfg = small(20);
        let image = cfg.image_bytes();
        let r = run(cfg.clone());
        assert!(r.completion.iter().all(Option::is_some), "{:?}", r.completion);
        assert_eq!(r.origin_upload, image);
        assert_eq!(r.supernode_upload + r.peer_upload, 20 * image);
        let bound = cfg.bound().seconds;
        for c in r.completion.iter().flatten() {
            assert!(*c >= bound * 0.999, "completion {c} below the bound {bound}");
        }
        // Same config, same result.
        let again = run(cfg);
        assert_eq!(again.completion, r.completion);
    }

    #[test]
    fn standing_queues_and_header_overhead_slow_a_small_window_most() {
        let p50 = |window: usize, queue_delay: f64, wire_efficiency: f64| {
            let scheduler = SchedulerConfig { window_per_peer: window, ..SchedulerConfig::default() };
            let cfg = SimConfig { queue_delay, wire_efficiency, scheduler, ..small(8) };
            let r = run(cfg);
            let mut c: Vec<f64> = r.completion.iter().flatten().copied().collect();
            assert_eq!(c.len(), 8);
            c.sort_by(f64::total_cmp);
            c[4]
        };
        // Headers alone: every transfer slower by the same factor, roughly.
        let (plain, headers) = (p50(8, 0.0, 1.0), p50(8, 0.0, 0.9));
        assert!(headers > plain * 1.05, "{headers} vs {plain}");
        // A 50 ms standing queue on busy links: each piece waits for a control round trip
        // through full queues, so the swarm slows down, and a small window cannot hide it.
        let (queued2, queued8) = (p50(2, 0.05, 1.0), p50(8, 0.05, 1.0));
        assert!(queued2 > p50(2, 0.0, 1.0) * 1.2, "queues must cost a window of 2");
        assert!(queued2 > queued8, "window 2: {queued2:.2} s, window 8: {queued8:.2} s");
    }

    /// The asymmetric benchmark's swarm: 16 hosts at 50 Mbit/s, the supernode and the origin
    /// at 200, registrations spread over 20 ms.
    fn asymmetric16(layers: Vec<u64>) -> SimConfig {
        SimConfig {
            hosts: 16,
            layers,
            host_up: 6.25e6,
            host_down: 6.25e6,
            sn_up: 25e6,
            sn_down: 25e6,
            origin_up: 25e6,
            rtt: 0.0002,
            queue_delay: 0.001,
            register_jitter: 0.02,
            ..SimConfig::default()
        }
    }

    /// The median completion time of a run of 16 hosts that all finish.
    fn median_of_16(cfg: SimConfig) -> f64 {
        let r = run(cfg);
        let mut c: Vec<f64> = r.completion.iter().flatten().copied().collect();
        assert_eq!(c.len(), 16);
        c.sort_by(f64::total_cmp);
        c[8]
    }

    #[test]
    fn registrations_in_host_order_put_every_first_copy_through_the_first_host() {
        // Four layers, every host registering for all of them at the same instant in host
        // order: host 0 is first in every task and holds all of the supernode's links (one per
        // task), so every first copy goes through its one downlink and uplink. Spread over a few
        // milliseconds, as real requests arrive, the first registrant differs per task. (Blob by
        // blob: in an image swarm the supernode's links span the blobs.)
        let p50 = |register_jitter: f64| {
            let scheduler = SchedulerConfig { image_swarms: false, ..SchedulerConfig::default() };
            let layers = vec![16 << 20, 8 << 20, 4 << 20, 4 << 20];
            median_of_16(SimConfig { register_jitter, scheduler, ..asymmetric16(layers) })
        };
        let (in_order, jittered) = (p50(0.0), p50(0.02));
        assert!(jittered * 1.1 < in_order, "jittered {jittered:.2} s, in order {in_order:.2} s");
    }

    #[test]
    fn an_image_swarm_of_four_layers_finishes_as_one_blob_does() {
        let p50 = |layers: Vec<u64>, image_swarms: bool| {
            let scheduler = SchedulerConfig { image_swarms, ..SchedulerConfig::default() };
            let cfg = SimConfig { wire_efficiency: 0.94, piece_overhead: 0.002, scheduler, ..asymmetric16(layers) };
            median_of_16(cfg)
        };
        let layers = vec![16 << 20, 8 << 20, 4 << 20, 4 << 20];
        let one = p50(vec![32 << 20], true);
        let (swarm, blob_by_blob) = (p50(layers.clone(), true), p50(layers, false));
        assert!(swarm < one * 1.03, "image swarm {swarm:.2} s, one blob {one:.2} s");
        assert!(swarm * 1.03 < blob_by_blob, "image swarm {swarm:.2} s, blob by blob {blob_by_blob:.2} s");
    }

    #[test]
    fn a_single_host_is_served_by_the_supernode() {
        let r = run(small(1));
        assert_eq!(r.peer_upload, 0);
        assert_eq!(r.supernode_upload, 11 << 20);
    }
}
