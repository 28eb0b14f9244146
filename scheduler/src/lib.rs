//! The piece scheduler: a pure, deterministic state machine that decides which peer fetches which
//! piece from whom.
//!
//! It does no I/O and reads no clock: the supernode's async shell feeds it [`Event`]s with the
//! current time (a [`Duration`] since an arbitrary epoch) and carries out the [`Action`]s it
//! returns, in order. The only randomness is a PRNG seeded from [`SchedulerConfig::seed`], so a
//! simulator replaying the same events gets the same decisions.
//!
//! # Policy
//! * **Pieces are servable as soon as they land.** Every peer of a task is told each piece's
//!   metadata (number, offset, size, sha256) as it lands at the supernode, and only landed pieces
//!   are ever assigned.
//! * **A download window per peer.** A downloading peer has at most
//!   [`SchedulerConfig::window_per_peer`] assignments outstanding per task; whenever it has room
//!   the scheduler fills it.
//! * **Rarest first.** Among the pieces a peer neither holds nor has been assigned, the ones with
//!   the fewest copies (holders + assignments in flight) come first; ties are broken by the
//!   seeded PRNG so concurrent peers spread over different pieces and then trade them.
//! * **Peers before the supernode.** For the chosen piece the parent is a usable holder with a
//!   free upload slot (not bad, not one this child reported failing for this piece, below
//!   [`SchedulerConfig::max_uploads_per_peer`] across all tasks): the least loaded of up to 8
//!   such holders found from a random starting point. The supernode serves a piece only when no
//!   usable peer holds it at all (busy holders still count: the child waits for them), no
//!   supernode copy of it started less than [`SchedulerConfig::stalled_after`] ago is still in
//!   flight, and the supernode is below [`SchedulerConfig::max_supernode_uploads`]. So the
//!   supernode sends about one copy of each piece however many peers join; the swarm forms a
//!   tree from there. Pieces without any parent right now are skipped for the next candidate (at
//!   most 64 candidates per fill).
//! * **Upload slots.** Each assignment holds one upload slot of its parent until the child
//!   reports the piece finished or failed, or leaves (a departed parent's slots are simply
//!   forgotten; its children keep their assignments until they report the failure, which costs
//!   the departed parent no strike). When a slot frees up or a peer gains a piece, that capacity
//!   is offered to the task's *waiting* peers (free window, nothing assignable at their last
//!   fill), round robin, one piece per visit — the rarest piece the fresh parent can give them.
//!   The offer stops when the capacity is used up or 64 waiting peers in a row cannot use it;
//!   leftovers are found by the next fill of any peer, and every [`Event::Tick`] retries stalled
//!   supernode copies and fully refills up to 256 waiting peers per task (round robin).
//! * **Strikes.** A failure report costs the parent 2 strikes for a bad digest, 1 for a transfer
//!   failure; only reports naming the parent actually assigned count, and each reporter counts
//!   once per parent (module `strikes`). With [`SchedulerConfig::bad_peer_strikes`] from at least
//!   [`SchedulerConfig::bad_peer_reporters`] distinct children within
//!   [`SchedulerConfig::strike_ttl`], the parent is reported once ([`Action::PeerReported`]) and
//!   not used as a parent, in any task, for `strike_ttl`. One child alone cannot ban a parent;
//!   it only stops getting that parent: never again for the failed piece, never again in the
//!   task after two failed pieces. A parent that served a bad digest stops holding that piece
//!   (it may be assigned the piece again to repair its copy).
//!
//! # Cost
//! No event walks all peers or all pairs. A piece's holders are a bitset over the task's members
//! with counts (holders, holders with a free slot, copies in flight); members with a free upload
//! slot are another bitset, so a free parent is found with a word-wise AND instead of looking at
//! busy holders; pieces with no free holder are skipped without a scan. Measured with a release
//! build driving 10,000 peers × 256 pieces (every transfer completing each round): about
//! 2.6 million events in 14–18 s, i.e. 5–7 µs per event. What remains, for the simulator to
//! watch: filling a peer's window is O(landed pieces) (the rarest-first ordering); offering fresh
//! capacity may visit up to 64 waiting peers (O(pieces / 64) bit operations each); a tick
//! refills up to 256 waiting peers per task; the origin events message every member of the task
//! (O(members), inherent); a peer leaving is O(its pieces).

mod assign;
mod events;
mod forget;
mod group;
#[cfg(test)]
mod group_tests;
mod state;
mod strikes;
mod swarm;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};
pub use damselfly_types::piece::Piece;
pub use group::Scheduler;
use serde::{Deserialize, Serialize};

use state::{Origin, PeerTable, SplitMix64, TaskState};

/// Tuning of the scheduler. Every field has a default (see each field).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Max piece assignments outstanding per downloading peer per task: its download
    /// parallelism. Default 12: measured on 8 hosts with 100 Mbit/s links (benchmark
    /// `swarm-symmetric`, 96 MiB in 256 KiB pieces, 6 interleaved runs each), 12 and 16 both
    /// bring the last host in at 1.14-1.17x the bound against 1.17-1.21x with 8 (p50 within
    /// noise, peak RSS unchanged, 16 hosts within noise); with 512 KiB pieces 4 to 16 had
    /// measured within noise of each other. 2 left every host at half its link (2.27x the
    /// bound), since a piece waits for a control round trip through full queues.
    pub window_per_peer: usize,
    /// Max concurrent uploads assigned to one peer across all tasks, so that a peer's uplink is
    /// shared by few children at full speed rather than many at a crawl. Default 4.
    pub max_uploads_per_peer: usize,
    /// Max concurrent uploads assigned to the supernode itself. Default 4: the supernode's
    /// first copies are the swarm's critical path, and each should land fast so that peers can
    /// pass it on; with 32 concurrent copies every first copy took ~3 s on a 100 Mbit/s link and
    /// peers idled for lack of pieces to trade (1.64x the bound against 1.29x with 4; 2 leaves
    /// the supernode's link partly idle between pieces).
    pub max_supernode_uploads: usize,
    /// Pieces one parent may have in flight to one child at once. Above 1, a parent's upload
    /// slots count children rather than pieces, and a child's next piece from a parent it is
    /// already fetching from queues behind the current one on the same connection (pieces on a
    /// connection are sent one after the other), so the link never idles for the round trip of
    /// a report and the next assignment. A parent with fewer children than upload slots lets a
    /// link carry up to slots ÷ children pieces, so a lone child has as many in flight as with a
    /// depth of 1. Default 2: it keeps the supernode's link, the bottleneck of a symmetric
    /// swarm, busy (8 hosts at 100 Mbit/s: p50 1.19x the bound in 3 of 3 interleaved runs
    /// against 1.19-1.23x with 1; max 1.19-1.23x against 1.22-1.29x), and dfget from a single
    /// warm peer is as fast as with 1: see DESIGN.md, "Swarm speed".
    pub link_depth: usize,
    /// After this long without a finish report for a supernode copy of a piece, another
    /// supernode copy of that piece may be assigned (the first child may be stuck). Default 3 s: well above a piece transfer, well below the download stall timeout.
    #[serde(with = "humantime_serde")]
    pub stalled_after: Duration,
    /// Strikes after which a peer is no longer used as a parent anywhere (a digest failure
    /// counts 2, a transfer failure 1; each reporter counts once, with its heaviest report).
    /// Default 3.
    pub bad_peer_strikes: u32,
    /// Distinct children that must have reported a peer before it is banned: one liar is not
    /// enough. Default 2.
    pub bad_peer_reporters: usize,
    /// Reports older than this are forgotten, and a ban lasts this long. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub strike_ttl: Duration,
    /// Seed of the PRNG that breaks ties; the same seed and events give the same decisions.
    /// Default 0.
    pub seed: u64,
    /// Schedules the blobs that registrations group together ([`Event::Grouped`]: the layers of
    /// one image pull) as one swarm, as BitTorrent does a torrent of several files. Default on:
    /// 16 hosts at 50 Mbit/s and a 200 Mbit/s supernode pulling 128 MiB in 4 layers finish at
    /// p50 1.11-1.18x the bound (median 1.15) against 1.22-1.23x blob by blob (one blob of that
    /// size: 1.10-1.12x); the simulator says 1.107 against 1.179 (DESIGN.md, "Image swarms").
    pub image_swarms: bool,
}

impl SchedulerConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_per_peer == 0
            || self.max_uploads_per_peer == 0
            || self.max_supernode_uploads == 0
            || self.link_depth == 0
        {
            return Err("scheduler: window_per_peer, max_uploads_per_peer, max_supernode_uploads and link_depth \
                        must be at least 1"
                .into());
        }
        if self.stalled_after.is_zero() || self.bad_peer_strikes == 0 || self.strike_ttl.is_zero() {
            return Err("scheduler: stalled_after, bad_peer_strikes and strike_ttl must be greater than zero".into());
        }
        if self.bad_peer_reporters == 0 {
            return Err("scheduler: bad_peer_reporters must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            window_per_peer: 12,
            max_uploads_per_peer: 4,
            max_supernode_uploads: 4,
            link_depth: 2,
            stalled_after: Duration::from_secs(3),
            bad_peer_strikes: 3,
            bad_peer_reporters: 2,
            strike_ttl: Duration::from_secs(600),
            seed: 0,
            image_swarms: true,
        }
    }
}

/// One entry of a task's piece table, as computed by the supernode while the piece landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceMeta {
    /// Piece number, from 0.
    pub number: u32,
    /// Where the piece is and the sha256 peers check it against (serialised inline:
    /// `offset`, `size`, `sha256` beside `number`).
    #[serde(flatten)]
    pub piece: Piece,
}

/// Where a peer fetches an assigned piece from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Parent {
    /// The supernode itself (over the peer's existing connection to it).
    Supernode,
    /// Another peer of the task.
    Peer {
        /// The parent's id (the child reports failures with it).
        id: PeerId,
        /// The parent's peer (QUIC) address, as it registered for this task.
        addr: SocketAddr,
    },
}

impl Parent {
    /// The parent as the scheduler trace names it (`RUST_LOG=damselfly_sched=debug`, printed by
    /// the supernode and the simulator alike): `SN`, or the peer's id.
    pub fn trace_name(&self) -> &str {
        match self {
            Parent::Supernode => "SN",
            Parent::Peer { id, .. } => id.as_str(),
        }
    }
}

/// One piece a peer should fetch now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// The piece number.
    pub piece: u32,
    /// Whom to fetch it from.
    pub parent: Parent,
}

/// Why a peer could not get a piece from a parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FailReason {
    /// The bytes arrived but did not match the piece's sha256: the parent served bad data.
    Digest,
    /// The transfer failed (connection, timeout, refusal): the parent may be overloaded or gone.
    Transfer,
}

/// Something that happened, fed to [`Scheduler::on_event`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Origin response headers arrived: total length if announced, chosen piece size. Creates
    /// the task when no peer has joined it yet (a preheat), so later peers learn its pieces.
    TaskStarted {
        /// The task.
        task: TaskId,
        /// Content length, when the origin announced it.
        content_length: Option<u64>,
        /// Piece size chosen for the task.
        piece_size: u32,
    },
    /// A piece finished landing at the supernode from the origin (its bytes are servable now).
    PieceLanded {
        /// The task.
        task: TaskId,
        /// The piece's table entry.
        piece: PieceMeta,
    },
    /// Origin fetch finished and the whole file verified.
    OriginComplete {
        /// The task.
        task: TaskId,
        /// Number of pieces of the file.
        total_pieces: u32,
        /// Length of the file in bytes.
        content_length: u64,
    },
    /// Origin fetch failed. Terminal: the task is forgotten once its last peer leaves.
    OriginFailed {
        /// The task.
        task: TaskId,
        /// The origin's HTTP status, when there was one.
        status: Option<u16>,
        /// The supernode's origin policy refused the fetch: the peers must not fetch the origin
        /// themselves either.
        refused: bool,
        /// What failed, for the peers' users.
        message: String,
    },
    /// A peer registers for a task, holding `have` pieces already (resume / re-announce). A
    /// peer that is already registered for the task is first removed, as by [`Event::PeerLeft`].
    PeerJoined {
        /// The task (created if unknown).
        task: TaskId,
        /// The peer.
        peer: PeerId,
        /// The peer's address for piece uploads.
        addr: SocketAddr,
        /// Pieces the peer holds already.
        have: Vec<u32>,
    },
    /// A peer stored and verified a piece: it is a holder from now on.
    PieceFinished {
        /// The task.
        task: TaskId,
        /// The peer that now holds the piece.
        peer: PeerId,
        /// The piece.
        piece: u32,
    },
    /// A peer failed to get `piece` from `parent` (`None`: from the supernode).
    PieceFailed {
        /// The task.
        task: TaskId,
        /// The peer that failed to get the piece.
        peer: PeerId,
        /// The piece.
        piece: u32,
        /// The parent it was fetching from (`None`: the supernode).
        parent: Option<PeerId>,
        /// What went wrong.
        reason: FailReason,
    },
    /// The peer has every piece and stops downloading; it stays a holder (seed) for the task.
    PeerDone {
        /// The task.
        task: TaskId,
        /// The peer.
        peer: PeerId,
    },
    /// The peer leaves the task (aborted or evicted): no longer a downloader nor a holder for it.
    PeerLeft {
        /// The task.
        task: TaskId,
        /// The peer.
        peer: PeerId,
    },
    /// The peer's connection is gone: remove it from every task.
    PeerGone {
        /// The peer.
        peer: PeerId,
    },
    /// Periodic: lets stalled supernode copies be retried and waiting peers be rescheduled.
    Tick,
    /// The peer whose registration follows names `group` for the blob `task`: the blobs one
    /// image pull registers name the same group (for a registry pull, the image's manifest). A
    /// blob not known yet joins that group's image swarm, whose blobs' pieces are scheduled as
    /// one task: rarest first across the image, and every link and window spanning all of its
    /// blobs. A blob known already stays where it is (a task of its own, or another swarm). Fed
    /// before the registration's [`Event::PeerJoined`]; ignored with
    /// [`SchedulerConfig::image_swarms`] off.
    Grouped {
        /// The blob.
        task: TaskId,
        /// The group the peer named.
        group: String,
    },
}

/// A message for one peer about one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Down {
    /// The origin answered: the task's length (if announced) and piece size.
    TaskInfo {
        /// Content length, when the origin announced it.
        content_length: Option<u64>,
        /// Piece size of the task.
        piece_size: u32,
    },
    /// Piece table entries the peer has not been told yet.
    Pieces(Vec<PieceMeta>),
    /// New pieces to fetch, each with its parent.
    Assign(Vec<Assignment>),
    /// The origin fetch finished: the piece table is complete.
    Complete {
        /// Number of pieces of the file.
        total_pieces: u32,
        /// Length of the file in bytes.
        content_length: u64,
    },
    /// The origin fetch failed: the peer should give up on the swarm for this task.
    Failed {
        /// The origin's HTTP status, when there was one.
        status: Option<u16>,
        /// The origin policy refused the fetch: final, no fallback to the origin either.
        refused: bool,
        /// What failed.
        message: String,
    },
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `peer` on its control stream for `task`.
    Send {
        /// The receiving peer.
        peer: PeerId,
        /// The task the message is about.
        task: TaskId,
        /// The message.
        msg: Down,
    },
    /// A peer crossed the strike threshold: log / count it; it is no longer used as a parent.
    PeerReported {
        /// The bad peer.
        peer: PeerId,
        /// The task in which the last failure was reported.
        task: TaskId,
        /// Its strikes so far.
        strikes: u32,
    },
    /// Nobody downloads the task any more and the origin finished (the shell may keep it
    /// cached; informational). Emitted once each time the task becomes idle.
    TaskIdle {
        /// The task.
        task: TaskId,
    },
}

/// Where a task's origin fetch stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum TaskPhase {
    /// Peers registered; the origin has not answered yet.
    Pending,
    /// The origin answered; pieces are landing.
    Fetching,
    /// Every piece landed and the file verified.
    Complete,
    /// The origin fetch failed.
    Failed {
        /// The origin's HTTP status, when there was one.
        status: Option<u16>,
        /// What failed.
        message: String,
    },
}

/// One peer of a task, for the API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSummary {
    /// The peer.
    pub id: PeerId,
    /// Its peer address for this task.
    pub addr: SocketAddr,
    /// Pieces it holds.
    pub pieces_held: u32,
    /// Assignments it has outstanding for this task.
    pub in_flight: usize,
    /// It reported having every piece (it seeds).
    pub done: bool,
}

/// One task, for the API and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskSummary {
    /// Pieces landed at the supernode so far.
    pub landed_pieces: u32,
    /// Number of pieces, once the origin fetch completed.
    pub total_pieces: Option<u32>,
    /// Content length, once known.
    pub content_length: Option<u64>,
    /// Piece size, once the origin answered.
    pub piece_size: Option<u32>,
    /// Where the origin fetch stands (flattened: `"phase": "fetching"`, ...).
    #[serde(flatten)]
    pub phase: TaskPhase,
    /// The task's peers.
    pub peers: Vec<PeerSummary>,
    /// The image swarm the blob is scheduled in (the group as the supernode scoped it: the
    /// origin, a space, the key the registrations named), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_swarm: Option<String>,
}

/// The scheduler of tasks as it sees them: one blob each, or one image swarm holding the
/// pieces of several blobs side by side (see [`group`]). [`Scheduler`] translates between the
/// two.
pub(crate) struct Core {
    /// Everything shared across tasks (config, PRNG, peers, strikes, supernode load).
    shared: Shared,
    /// Per-task state; a `BTreeMap` so that iteration (ticks, views) is deterministic.
    tasks: BTreeMap<TaskId, TaskState>,
}

/// State shared by all tasks, split from the task map so that both can be borrowed at once.
struct Shared {
    config: SchedulerConfig,
    rng: SplitMix64,
    peers: PeerTable,
    /// Strikes per peer id; kept after the peer leaves so that a bad peer stays bad.
    strikes: strikes::StrikeBook,
    /// Uploads assigned to the supernode and not yet finished, failed or abandoned.
    sn_uploads: usize,
    /// Pieces in flight from the supernode per (task, child slot): with links of several
    /// pieces the supernode's slots count these links.
    sn_links: BTreeMap<(TaskId, u32), u32>,
    /// Moving average of how long a supernode copy takes to finish: a copy counts as stalled
    /// only after several times this (and at least `stalled_after`), so a busy supernode does
    /// not send a second copy of a piece whose first copy is merely slow.
    sn_copy_time: Option<Duration>,
    /// Peers whose load changed while they are in several tasks: their bit in the other tasks'
    /// `open` sets is refreshed after the event.
    dirty: Vec<u32>,
}

impl Core {
    /// A scheduler with no tasks.
    pub(crate) fn new(config: SchedulerConfig) -> Self {
        let rng = SplitMix64::new(config.seed);
        let shared = Shared {
            config,
            rng,
            peers: PeerTable::default(),
            strikes: Default::default(),
            sn_uploads: 0,
            sn_links: BTreeMap::new(),
            sn_copy_time: None,
            dirty: Vec::new(),
        };
        Self { shared, tasks: BTreeMap::new() }
    }

    /// Applies one event at time `now` (monotonic, any epoch) and returns what to do, in order.
    /// Events about unknown tasks or peers are ignored, except [`Event::TaskStarted`], which
    /// creates its task.
    pub(crate) fn on_event(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::TaskStarted { task, content_length, piece_size } => {
                self.task_started(now, &task, content_length, piece_size, &mut out)
            }
            Event::PieceLanded { task, piece } => self.piece_landed(now, &task, piece, &mut out),
            Event::OriginComplete { task, total_pieces, content_length } => {
                self.origin_complete(&task, total_pieces, content_length, &mut out)
            }
            Event::OriginFailed { task, status, refused, message } => {
                self.origin_failed(&task, status, refused, message, &mut out)
            }
            Event::PeerJoined { task, peer, addr, have } => {
                self.peer_joined(now, task, peer, addr, &have, None, &mut out)
            }
            Event::PieceFinished { task, peer, piece } => self.piece_finished(now, &task, &peer, piece, &mut out),
            Event::PieceFailed { task, peer, piece, parent, reason } => {
                self.piece_failed(now, &task, &peer, piece, parent.as_ref(), reason, &mut out)
            }
            Event::PeerDone { task, peer } => self.peer_done(now, &task, &peer, &mut out),
            Event::PeerLeft { task, peer } => self.peer_left(now, &task, &peer, &mut out),
            Event::PeerGone { peer } => self.peer_gone(now, &peer, &mut out),
            Event::Tick => self.tick(now, &mut out),
            // Image swarms are formed by the `Scheduler` around this core.
            Event::Grouped { .. } => {}
        }
        self.settle(now, &mut out);
        out
    }

    /// After an event: draining one task may change loads seen by others, so their `open` bits
    /// are brought up to date until nothing is dirty.
    pub(crate) fn settle(&mut self, now: Duration, out: &mut Vec<Action>) {
        for _ in 0..4 {
            if self.shared.dirty.is_empty() {
                break;
            }
            self.sync_open(now, out);
        }
    }

    /// A summary of `task` (pieces, origin phase, peers), or `None` if unknown.
    pub(crate) fn task_summary(&self, task: &TaskId) -> Option<TaskSummary> {
        let t = self.tasks.get(task)?;
        let phase = match &t.origin {
            Origin::Fetching if t.info.is_none() => TaskPhase::Pending,
            Origin::Fetching => TaskPhase::Fetching,
            Origin::Complete { .. } => TaskPhase::Complete,
            Origin::Failed { status, message, .. } => TaskPhase::Failed { status: *status, message: message.clone() },
        };
        let (total_pieces, complete_len) = match t.origin {
            Origin::Complete { total_pieces, content_length } => (Some(total_pieces), Some(content_length)),
            _ => (None, None),
        };
        let peers = t
            .members()
            .map(|(_, m)| PeerSummary {
                id: m.id.clone(),
                addr: m.addr,
                pieces_held: m.held_count,
                in_flight: m.assigned.len(),
                done: m.done,
            })
            .collect();
        Some(TaskSummary {
            landed_pieces: t.landed.len() as u32,
            total_pieces,
            content_length: complete_len.or(t.info.and_then(|i| i.content_length)),
            piece_size: t.info.map(|i| i.piece_size),
            phase,
            peers,
            image_swarm: None,
        })
    }

    /// Number of known tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Every known task, in id order.
    pub(crate) fn tasks(&self) -> Vec<TaskId> {
        self.tasks.keys().cloned().collect()
    }

    /// Number of peers registered for at least one task.
    pub(crate) fn peer_count(&self) -> usize {
        self.shared.peers.len()
    }

    /// Peers banned now (not used as parents until their strikes expire), with their strikes,
    /// in id order.
    pub(crate) fn bad_peers(&self) -> Vec<(PeerId, u32)> {
        self.shared.strikes.banned()
    }

    /// Whether `peer` is registered for at least one task.
    pub(crate) fn knows_peer(&self, peer: &PeerId) -> bool {
        self.shared.peers.gid(peer).is_some()
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }

    /// Uploads currently assigned to the supernode.
    pub(crate) fn supernode_uploads_in_flight(&self) -> usize {
        self.shared.sn_uploads
    }
}
