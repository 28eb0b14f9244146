//! The status page's counters: who uploaded and downloaded how many bytes, per host and per
//! task, and per-second totals for the chart and live rates.
//!
//! [`Stats`] lives beside the scheduler, under the same lock, and [`crate::Shared::handle`]
//! feeds it every event and action: an `Assign` records which parent serves which piece to which
//! child (`(task, child, piece) → parent`), and the child's `PieceFinished` report attributes
//! the piece's bytes to both (sizes from the task's piece size and length, as the scheduler got
//! them with `TaskStarted` / `PieceLanded`). A failure report strikes the parent recorded for the
//! piece. Origin bytes come from the origin fetch itself ([`Stats::origin`]), so a task restored
//! from the cache after a restart cost none.
//!
//! Cheap: every event is O(1) (a peer's connection closing is O(tasks)). Bounded: outstanding
//! assignments leave the map when they finish or fail or their child leaves; at most
//! [`MAX_TASKS`] tasks (the least recently active idle one goes first) and [`MAX_HOSTS`] hosts
//! (the least recently active eighth goes when full); [`SERIES_SECS`] seconds of totals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};
use serde::Serialize;

use damselfly_scheduler::{Action, Down, Event, FailReason, Parent};

/// Tasks whose counters are kept (beyond it the least recently active idle task is forgotten).
pub const MAX_TASKS: usize = 512;
/// Hosts whose counters are kept (beyond it the least recently active eighth is forgotten).
pub const MAX_HOSTS: usize = 4096;
/// Seconds of per-second totals kept for the chart.
pub const SERIES_SECS: usize = 600;
/// Live rates average this many complete seconds.
pub const RATE_SECS: u64 = 5;

/// Who serves an assigned piece.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Uploader {
    Supernode,
    Peer(PeerId),
}

/// Bytes a peer reported receiving, for the `delivered_bytes` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The supernode served them (else a peer).
    pub from_supernode: bool,
    /// Piece bytes.
    pub bytes: u64,
}

/// Bytes per second over the last few seconds: one bucket per second, O(1) to add.
#[derive(Clone, Copy, Debug, Default)]
struct Rate {
    secs: [u64; 8],
    bytes: [u64; 8],
}

impl Rate {
    fn add(&mut self, sec: u64, n: u64) {
        let i = (sec % 8) as usize;
        if self.secs[i] != sec {
            self.secs[i] = sec;
            self.bytes[i] = 0;
        }
        self.bytes[i] += n;
    }

    /// Average over the [`RATE_SECS`] complete seconds before `now_sec` (fewer right after
    /// start).
    fn per_sec(&self, now_sec: u64) -> u64 {
        let from = now_sec.saturating_sub(RATE_SECS);
        let sum: u64 = (0..8).filter(|&i| self.secs[i] >= from && self.secs[i] < now_sec).map(|i| self.bytes[i]).sum();
        sum / (now_sec - from).max(1)
    }
}

/// One second of totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Seconds since the supernode started.
    pub t: u64,
    /// Piece bytes peers received from other peers.
    pub from_peers: u64,
    /// Piece bytes peers received from the supernode.
    pub from_supernode: u64,
    /// Bytes the supernode fetched from origins.
    pub origin: u64,
}

/// The last [`SERIES_SECS`] seconds, a ring indexed by second.
#[derive(Debug)]
struct Series {
    slots: Vec<Point>,
}

impl Default for Series {
    fn default() -> Self {
        Self { slots: vec![Point { t: u64::MAX, ..Point::default() }; SERIES_SECS] }
    }
}

impl Series {
    fn slot(&mut self, sec: u64) -> &mut Point {
        let slot = &mut self.slots[(sec % SERIES_SECS as u64) as usize];
        if slot.t != sec {
            *slot = Point { t: sec, ..Point::default() };
        }
        slot
    }

    /// The complete seconds of the window ending before `now_sec`, oldest first (zeros where
    /// nothing happened).
    fn points(&self, now_sec: u64) -> Vec<Point> {
        let start = now_sec.saturating_sub(SERIES_SECS as u64 - 1);
        (start..now_sec)
            .map(|sec| {
                let slot = self.slots[(sec % SERIES_SECS as u64) as usize];
                if slot.t == sec {
                    slot
                } else {
                    Point { t: sec, ..Point::default() }
                }
            })
            .collect()
    }
}

/// One host's counters, as the page shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostCounters {
    /// Its peer address, as it last registered.
    pub addr: Option<SocketAddr>,
    /// Piece bytes it uploaded to children (reported finished by them).
    pub uploaded: u64,
    /// Piece bytes it downloaded from the swarm (from peers and the supernode).
    pub downloaded: u64,
    /// Of `downloaded`, the bytes the supernode served.
    pub downloaded_from_supernode: u64,
    /// Pieces it uploaded.
    pub pieces_up: u64,
    /// Pieces it downloaded.
    pub pieces_down: u64,
    /// Failures children reported against it as their parent (digest and transfer).
    pub upload_failures: u64,
    /// Of `upload_failures`, pieces that did not match their sha256.
    pub bad_digests: u64,
    /// Pieces it failed to get (whoever's fault).
    pub download_failures: u64,
    /// The scheduler reported it bad: no longer used as a parent.
    pub reported: bool,
    /// Its connection to the supernode is up (as far as the scheduler was told).
    pub connected: bool,
    /// Upload rate over the last few seconds, bytes/s.
    pub upload_rate: u64,
    /// Download rate over the last few seconds, bytes/s.
    pub download_rate: u64,
    /// The bandwidth limits the host registered with (`None`: it did not say).
    pub limits: Option<HostLimits>,
}

/// A daemon's bandwidth limits, bytes per second; 0: none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostLimits {
    /// Everything it receives for tasks.
    pub download: u64,
    /// Piece bytes it uploads.
    pub upload: u64,
    /// Its origin fallback.
    pub origin: u64,
}

#[derive(Debug, Default)]
struct Host {
    counters: HostCounters,
    up: Rate,
    down: Rate,
    last_active: Duration,
}

impl Host {
    fn view(&self, now_sec: u64) -> HostCounters {
        HostCounters {
            upload_rate: self.up.per_sec(now_sec),
            download_rate: self.down.per_sec(now_sec),
            ..self.counters.clone()
        }
    }
}

/// One task's counters, as the page shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TaskCounters {
    /// Bytes the supernode fetched from the origin for it (0 when restored from the cache).
    pub origin_bytes: u64,
    /// Piece bytes peers received from other peers.
    pub from_peers: u64,
    /// Piece bytes peers received from the supernode.
    pub from_supernode: u64,
    /// Failure reports.
    pub failures: u64,
    /// Assignments outstanding.
    pub in_flight: usize,
}

/// One host's part in one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskHost {
    /// Piece bytes it uploaded in this task.
    pub uploaded: u64,
    /// Piece bytes it downloaded in this task.
    pub downloaded: u64,
}

#[derive(Debug, Default)]
struct Task {
    piece_size: u32,
    content_length: Option<u64>,
    /// Outstanding assignments: child → piece → who serves it.
    assigned: HashMap<PeerId, HashMap<u32, Uploader>>,
    counters: TaskCounters,
    hosts: HashMap<PeerId, TaskHost>,
    last_active: Duration,
}

impl Task {
    /// Length of `piece`: the piece size, less for the last piece of a known length.
    fn piece_bytes(&self, piece: u32) -> u64 {
        let size = u64::from(self.piece_size);
        match self.content_length {
            Some(len) => size.min(len.saturating_sub(u64::from(piece) * size)),
            None => size,
        }
    }

    fn in_flight(&self) -> usize {
        self.assigned.values().map(HashMap::len).sum()
    }
}

/// Swarm-wide totals since start.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    /// Piece bytes peers received from other peers.
    pub from_peers: u64,
    /// Piece bytes peers received from the supernode.
    pub from_supernode: u64,
    /// Bytes fetched from origins.
    pub origin: u64,
    /// Delivery rate (peers + supernode) over the last few seconds, bytes/s.
    pub delivery_rate: u64,
    /// Origin rate over the last few seconds, bytes/s.
    pub origin_rate: u64,
}

/// The collector. See the [module documentation](self).
#[derive(Debug, Default)]
pub struct Stats {
    tasks: HashMap<TaskId, Task>,
    hosts: HashMap<PeerId, Host>,
    supernode: Host,
    series: Series,
    totals: Totals,
    delivery_rate: Rate,
    origin_rate: Rate,
}

impl Stats {
    /// Takes in one event before the scheduler sees it; returns the bytes a finished piece
    /// delivered, if any.
    pub fn on_event(&mut self, now: Duration, event: &Event) -> Option<Delivery> {
        match event {
            Event::TaskStarted { task, content_length, piece_size } => {
                let t = self.task(now, task);
                t.piece_size = *piece_size;
                t.content_length = *content_length;
            }
            Event::PieceLanded { task, piece } => {
                let t = self.task(now, task);
                if t.piece_size == 0 {
                    t.piece_size = piece.piece.size;
                }
                if piece.piece.size < t.piece_size {
                    // A short piece is the last one: now the length is known.
                    t.content_length = Some(piece.piece.end());
                }
            }
            Event::OriginComplete { task, content_length, .. } => {
                self.task(now, task).content_length = Some(*content_length);
            }
            Event::PeerJoined { task, peer, addr, .. } => {
                // A registration replaces the peer's earlier one in the task.
                self.task(now, task).assigned.remove(peer);
                let host = self.host(now, peer);
                host.counters.addr = Some(*addr);
                host.counters.connected = true;
            }
            Event::PieceFinished { task, peer, piece } => return self.finished(now, task, peer, *piece),
            Event::PieceFailed { task, peer, piece, parent, reason } => {
                self.failed(now, task, peer, *piece, parent.as_ref(), *reason)
            }
            Event::PeerDone { task, peer } | Event::PeerLeft { task, peer } => {
                if let Some(t) = self.tasks.get_mut(task) {
                    t.assigned.remove(peer);
                }
            }
            Event::PeerGone { peer } => {
                for t in self.tasks.values_mut() {
                    t.assigned.remove(peer);
                }
                if let Some(h) = self.hosts.get_mut(peer) {
                    h.counters.connected = false;
                }
            }
            // A group changes how the blob is scheduled, not what the page shows of it.
            Event::OriginFailed { .. } | Event::Tick | Event::Grouped { .. } => {}
        }
        None
    }

    /// Takes in one of the scheduler's actions: assignments and reported peers.
    pub fn on_action(&mut self, now: Duration, action: &Action) {
        match action {
            Action::Send { peer, task, msg: Down::Assign(list) } => {
                let t = self.task(now, task);
                if !t.assigned.contains_key(peer) {
                    t.assigned.insert(peer.clone(), HashMap::new());
                }
                if let Some(pieces) = t.assigned.get_mut(peer) {
                    for a in list {
                        let uploader = match &a.parent {
                            Parent::Supernode => Uploader::Supernode,
                            Parent::Peer { id, .. } => Uploader::Peer(id.clone()),
                        };
                        pieces.insert(a.piece, uploader);
                    }
                }
            }
            Action::PeerReported { peer, .. } => self.host(now, peer).counters.reported = true,
            Action::Send { .. } | Action::TaskIdle { .. } => {}
        }
    }

    /// Records the bandwidth limits `peer` registered with.
    pub fn host_limits(&mut self, now: Duration, peer: &PeerId, limits: HostLimits) {
        self.host(now, peer).counters.limits = Some(limits);
    }

    /// Counts `bytes` the supernode's origin fetch of `task` landed.
    pub fn origin(&mut self, now: Duration, task: &TaskId, bytes: u64) {
        let sec = now.as_secs();
        self.task(now, task).counters.origin_bytes += bytes;
        self.series.slot(sec).origin += bytes;
        self.origin_rate.add(sec, bytes);
        self.totals.origin += bytes;
    }

    fn finished(&mut self, now: Duration, task: &TaskId, child: &PeerId, piece: u32) -> Option<Delivery> {
        let t = self.tasks.get_mut(task)?;
        let pieces = t.assigned.get_mut(child)?;
        // A piece nobody was assigned to serve (the child fetched it elsewhere) is not the
        // swarm's delivery.
        let uploader = pieces.remove(&piece)?;
        if pieces.is_empty() {
            t.assigned.remove(child);
        }
        let bytes = t.piece_bytes(piece);
        t.last_active = now;
        let from_supernode = uploader == Uploader::Supernode;
        if from_supernode {
            t.counters.from_supernode += bytes;
        } else {
            t.counters.from_peers += bytes;
        }
        t.hosts.entry(child.clone()).or_default().downloaded += bytes;
        if let Uploader::Peer(parent) = &uploader {
            t.hosts.entry(parent.clone()).or_default().uploaded += bytes;
        }

        let sec = now.as_secs();
        let point = self.series.slot(sec);
        if from_supernode {
            point.from_supernode += bytes;
            self.totals.from_supernode += bytes;
        } else {
            point.from_peers += bytes;
            self.totals.from_peers += bytes;
        }
        self.delivery_rate.add(sec, bytes);
        let parent = match &uploader {
            Uploader::Supernode => &mut self.supernode,
            Uploader::Peer(id) => self.host(now, id),
        };
        parent.counters.uploaded += bytes;
        parent.counters.pieces_up += 1;
        parent.up.add(sec, bytes);
        parent.last_active = now;
        let down = self.host(now, child);
        down.counters.downloaded += bytes;
        down.counters.pieces_down += 1;
        if from_supernode {
            down.counters.downloaded_from_supernode += bytes;
        }
        down.down.add(sec, bytes);
        Some(Delivery { from_supernode, bytes })
    }

    fn failed(
        &mut self,
        now: Duration,
        task: &TaskId,
        child: &PeerId,
        piece: u32,
        reported: Option<&PeerId>,
        reason: FailReason,
    ) {
        let recorded = self.tasks.get_mut(task).and_then(|t| {
            t.counters.failures += 1;
            let pieces = t.assigned.get_mut(child)?;
            let uploader = pieces.remove(&piece);
            if pieces.is_empty() {
                t.assigned.remove(child);
            }
            uploader
        });
        let uploader = recorded.unwrap_or_else(|| match reported {
            Some(id) => Uploader::Peer(id.clone()),
            None => Uploader::Supernode,
        });
        let parent = match &uploader {
            Uploader::Supernode => &mut self.supernode,
            Uploader::Peer(id) => self.host(now, id),
        };
        parent.counters.upload_failures += 1;
        if reason == FailReason::Digest {
            parent.counters.bad_digests += 1;
        }
        self.host(now, child).counters.download_failures += 1;
    }

    /// The task's counters, created when unknown (forgetting the least recently active idle
    /// task when full).
    fn task(&mut self, now: Duration, id: &TaskId) -> &mut Task {
        if !self.tasks.contains_key(id) && self.tasks.len() >= MAX_TASKS {
            let oldest = self
                .tasks
                .iter()
                .min_by_key(|(_, t)| (!t.assigned.is_empty(), t.last_active))
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.tasks.remove(&oldest);
            }
        }
        let t = self.tasks.entry(id.clone()).or_default();
        t.last_active = now;
        t
    }

    /// The host's counters, created when unknown (forgetting the least recently active eighth
    /// of the hosts when full).
    fn host(&mut self, now: Duration, id: &PeerId) -> &mut Host {
        if !self.hosts.contains_key(id) && self.hosts.len() >= MAX_HOSTS {
            let mut by_age: Vec<(Duration, PeerId)> =
                self.hosts.iter().map(|(id, h)| (h.last_active, id.clone())).collect();
            let drop = (MAX_HOSTS / 8).max(1);
            by_age.select_nth_unstable(drop - 1);
            for (_, id) in &by_age[..drop] {
                self.hosts.remove(id);
            }
        }
        let h = self.hosts.entry(id.clone()).or_default();
        h.last_active = now;
        h
    }

    /// Totals since start, with live rates.
    pub fn totals(&self, now: Duration) -> Totals {
        let sec = now.as_secs();
        Totals {
            delivery_rate: self.delivery_rate.per_sec(sec),
            origin_rate: self.origin_rate.per_sec(sec),
            ..self.totals
        }
    }

    /// Per-second totals of the last [`SERIES_SECS`] complete seconds, oldest first.
    pub fn series(&self, now: Duration) -> Vec<Point> {
        self.series.points(now.as_secs())
    }

    /// The supernode's own uploads.
    pub fn supernode(&self, now: Duration) -> HostCounters {
        self.supernode.view(now.as_secs())
    }

    /// Every host with counters, in no particular order.
    pub fn hosts(&self, now: Duration) -> Vec<(PeerId, HostCounters)> {
        let sec = now.as_secs();
        self.hosts.iter().map(|(id, h)| (id.clone(), h.view(sec))).collect()
    }

    /// One host's counters.
    pub fn host_view(&self, now: Duration, id: &PeerId) -> Option<HostCounters> {
        self.hosts.get(id).map(|h| h.view(now.as_secs()))
    }

    /// A task's counters, if kept.
    pub fn task_counters(&self, id: &TaskId) -> Option<TaskCounters> {
        self.tasks.get(id).map(|t| TaskCounters { in_flight: t.in_flight(), ..t.counters.clone() })
    }

    /// When the task last saw activity (`None`: no counters kept).
    pub fn task_activity(&self, id: &TaskId) -> Option<Duration> {
        self.tasks.get(id).map(|t| t.last_active)
    }

    /// Each host's part in a task.
    pub fn task_hosts(&self, id: &TaskId) -> HashMap<PeerId, TaskHost> {
        self.tasks.get(id).map(|t| t.hosts.clone()).unwrap_or_default()
    }

    /// Tasks and hosts with counters kept.
    pub fn sizes(&self) -> (usize, usize) {
        (self.tasks.len(), self.hosts.len())
    }
}
