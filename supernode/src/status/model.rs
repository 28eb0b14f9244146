//! What the status views show, taken in one pass under the scheduler's lock and rendered
//! after it is released. Also the body of `GET /api/v1/status` (JSON).
//!
//! No URL is ever part of it (URLs may carry signed query strings), nor any credential: task
//! ids, peer ids, peer addresses and byte counts only.

use std::collections::BTreeMap;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};
use serde::Serialize;

use super::stats::{HostCounters, Point, Stats, TaskCounters, Totals};
use crate::cache::CacheState;
use crate::Shared;
use damselfly_scheduler::{Scheduler, TaskPhase, TaskSummary};

/// Most tasks the overview lists (the most recently active first).
pub const MAX_TASK_ROWS: usize = 100;
/// Most hosts the overview lists (the busiest first).
pub const MAX_HOST_ROWS: usize = 100;

/// The overview: swarm totals, the chart's series, tasks and hosts.
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// Seconds since the supernode started.
    pub uptime_secs: u64,
    /// Milliseconds since start when this was taken (changes on every refresh).
    pub generated_ms: u64,
    /// Bytes received from origins (the `damselfly_supernode_origin_bytes_total` counter).
    pub origin_bytes: u64,
    /// Delivery totals and live rates.
    pub totals: Totals,
    /// Tasks the scheduler knows.
    pub tasks_total: usize,
    /// Peers registered for at least one task.
    pub peers: usize,
    /// Peers reported bad (no longer used as parents).
    pub bad_peers: usize,
    /// Bytes held in the supernode's cache (charged to the quota).
    pub cache_bytes: u64,
    /// The cache quota (0: unbounded).
    pub cache_quota: u64,
    /// Per-second totals, oldest first.
    pub series: Vec<Point>,
    /// Tasks, most recently active first (at most [`MAX_TASK_ROWS`]).
    pub tasks: Vec<TaskRow>,
    /// The supernode as an uploader.
    pub supernode: HostCounters,
    /// Hosts, busiest first (at most [`MAX_HOST_ROWS`]).
    pub hosts: Vec<HostRow>,
    /// Hosts with counters, listed or not.
    pub hosts_total: usize,
    /// The supernode's origin limits and how busy they are.
    pub origin_limits: OriginLimitsView,
}

/// The supernode's origin limits (`origin_rate`, `max_origin_fetches`) and their state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OriginLimitsView {
    /// Bandwidth limit on origin fetches, bytes/s (0: none).
    pub rate: u64,
    /// Cap on concurrent origin fetches (0: none).
    pub max_fetches: u64,
    /// Origin fetches running.
    pub running: u64,
    /// Origin fetches waiting for a slot.
    pub queued: u64,
    /// Time origin fetches spent waiting for the bandwidth limit, seconds (summed).
    pub throttled_secs: f64,
}

/// One task in the overview.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRow {
    /// The task id (a digest, or the hash of the URL: never the URL).
    pub id: String,
    /// `pending`, `fetching`, `complete` or `failed`.
    pub phase: &'static str,
    /// The cache entry's state, if cached.
    pub cache: Option<CacheState>,
    /// Content length, once known.
    pub size: Option<u64>,
    /// Piece size, once the origin answered.
    pub piece_size: Option<u32>,
    /// Pieces landed at the supernode.
    pub landed_pieces: u32,
    /// Pieces of the whole file, once known.
    pub total_pieces: Option<u32>,
    /// Peers in the task.
    pub peers: usize,
    /// Peers holding every piece.
    pub peers_done: usize,
    /// Pieces held over all peers (progress = this / (peers × total pieces)).
    pub pieces_held: u64,
    /// Bytes, by source, and failures.
    pub counters: TaskCounters,
}

impl TaskRow {
    /// The peers' average progress, 0 to 1, once the number of pieces is known.
    pub fn progress(&self) -> Option<f64> {
        let total = self.total_pieces?;
        if self.peers == 0 {
            return None;
        }
        if total == 0 {
            return Some(1.0);
        }
        Some(self.pieces_held as f64 / (self.peers as f64 * f64::from(total)))
    }

    /// Bytes peers received (from peers and the supernode).
    pub fn delivered(&self) -> u64 {
        self.counters.from_peers + self.counters.from_supernode
    }
}

/// One host in the overview.
#[derive(Clone, Debug, Serialize)]
pub struct HostRow {
    /// Its peer id.
    pub id: String,
    /// Strikes when the scheduler reported it bad.
    pub strikes: Option<u32>,
    /// Its counters.
    #[serde(flatten)]
    pub counters: HostCounters,
}

/// One task and each host's part in it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskDetail {
    /// Milliseconds since start when this was taken.
    pub generated_ms: u64,
    /// The task as in the overview.
    pub task: TaskRow,
    /// Why the origin fetch failed, when it did: the origin's status only (the fetch's own
    /// message names the URL, which may carry a signed query string; the log has it).
    pub failure: Option<String>,
    /// Bytes the supernode uploaded in this task.
    pub supernode_uploaded: u64,
    /// The task's peers, most pieces first.
    pub peers: Vec<TaskPeer>,
}

/// One host's part in one task.
#[derive(Clone, Debug, Serialize)]
pub struct TaskPeer {
    /// Its peer id.
    pub id: String,
    /// Its peer address for this task.
    pub addr: String,
    /// Pieces it holds.
    pub pieces_held: u32,
    /// Assignments outstanding.
    pub in_flight: usize,
    /// It holds every piece (seeds).
    pub done: bool,
    /// Bytes it uploaded in this task.
    pub uploaded: u64,
    /// Bytes it downloaded in this task.
    pub downloaded: u64,
    /// Reported bad.
    pub bad: bool,
}

fn phase_name(phase: &TaskPhase) -> &'static str {
    match phase {
        TaskPhase::Pending => "pending",
        TaskPhase::Fetching => "fetching",
        TaskPhase::Complete => "complete",
        TaskPhase::Failed { .. } => "failed",
    }
}

fn task_row(id: &TaskId, s: &TaskSummary, counters: Option<TaskCounters>, cache: Option<CacheState>) -> TaskRow {
    let expected = s.total_pieces.or_else(|| match (s.content_length, s.piece_size) {
        (Some(len), Some(size)) if size > 0 => u32::try_from(len.div_ceil(u64::from(size))).ok(),
        _ => None,
    });
    TaskRow {
        id: id.to_string(),
        phase: phase_name(&s.phase),
        cache,
        size: s.content_length,
        piece_size: s.piece_size,
        landed_pieces: s.landed_pieces,
        total_pieces: expected,
        peers: s.peers.len(),
        peers_done: s.peers.iter().filter(|p| p.done).count(),
        pieces_held: s.peers.iter().map(|p| u64::from(p.pieces_held)).sum(),
        counters: counters.unwrap_or_default(),
    }
}

/// Takes the overview.
pub fn overview(shared: &Shared) -> Overview {
    let (now, taken) = shared.with_status(|now, sched, stats| (now, Taken::take(now, sched, stats)));
    let tasks = taken
        .tasks
        .into_iter()
        .map(|(id, summary, counters)| {
            let cache = shared.cache.get(&id).map(|t| t.state());
            task_row(&id, &summary, counters, cache)
        })
        .collect();
    let hosts_total = taken.hosts.len();
    let bad_peers = taken.bad.len();
    let hosts = busiest(taken.hosts, &taken.bad);
    Overview {
        uptime_secs: now.as_secs(),
        generated_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        origin_bytes: shared.metrics.origin_bytes.get(),
        totals: taken.totals,
        tasks_total: taken.tasks_total,
        peers: taken.peers,
        bad_peers,
        cache_bytes: u64::try_from(shared.metrics.cache.bytes.get()).unwrap_or(0),
        cache_quota: u64::try_from(shared.metrics.cache.quota_bytes.get()).unwrap_or(0),
        series: taken.series,
        tasks,
        supernode: taken.supernode,
        hosts,
        hosts_total,
        origin_limits: origin_limits(shared),
    }
}

fn origin_limits(shared: &Shared) -> OriginLimitsView {
    let l = &shared.origin_limits;
    let gauge = |g: &prometheus_client::metrics::gauge::Gauge| u64::try_from(g.get()).unwrap_or(0);
    OriginLimitsView {
        rate: l.rate.limit().unwrap_or(0),
        max_fetches: gauge(&l.gauges.cap),
        running: gauge(&l.gauges.running),
        queued: gauge(&l.gauges.queued),
        throttled_secs: l.rate.throttled().as_secs_f64(),
    }
}

/// What the overview needs from under the lock; the rest (sorting hosts, cache states)
/// happens after it is released.
struct Taken {
    tasks: Vec<(TaskId, TaskSummary, Option<TaskCounters>)>,
    tasks_total: usize,
    peers: usize,
    bad: BTreeMap<String, u32>,
    supernode: HostCounters,
    hosts: Vec<(PeerId, HostCounters)>,
    series: Vec<Point>,
    totals: Totals,
}

impl Taken {
    fn take(now: Duration, sched: &Scheduler, stats: &Stats) -> Self {
        let ids = sched.tasks();
        let tasks_total = ids.len();
        let mut ids: Vec<(Duration, TaskId)> =
            ids.into_iter().map(|id| (stats.task_activity(&id).unwrap_or_default(), id)).collect();
        ids.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        ids.truncate(MAX_TASK_ROWS);
        let tasks = ids
            .into_iter()
            .filter_map(|(_, id)| {
                let summary = sched.task_summary(&id)?;
                let counters = stats.task_counters(&id);
                Some((id, summary, counters))
            })
            .collect();
        Taken {
            tasks,
            tasks_total,
            peers: sched.peer_count(),
            bad: sched.bad_peers().into_iter().map(|(id, strikes)| (id.to_string(), strikes)).collect(),
            supernode: stats.supernode(now),
            hosts: stats.hosts(now),
            series: stats.series(now),
            totals: stats.totals(now),
        }
    }
}

/// The busiest hosts first (bytes moved, then id), at most [`MAX_HOST_ROWS`].
fn busiest(hosts: Vec<(PeerId, HostCounters)>, bad: &BTreeMap<String, u32>) -> Vec<HostRow> {
    let mut rows: Vec<HostRow> = hosts
        .into_iter()
        .map(|(id, counters)| {
            let id = id.to_string();
            HostRow { strikes: bad.get(&id).copied(), id, counters }
        })
        .collect();
    rows.sort_by(|a, b| {
        let moved = |h: &HostRow| h.counters.uploaded + h.counters.downloaded;
        moved(b).cmp(&moved(a)).then_with(|| a.id.cmp(&b.id))
    });
    rows.truncate(MAX_HOST_ROWS);
    rows
}

/// Takes one task's view; `None` when the scheduler does not know it.
pub fn task(shared: &Shared, id: &TaskId) -> Option<TaskDetail> {
    let (now, summary, counters, hosts, bad) = shared.with_status(|now, sched, stats| {
        let summary = sched.task_summary(id)?;
        let bad: BTreeMap<_, _> = sched.bad_peers().into_iter().collect();
        Some((now, summary, stats.task_counters(id), stats.task_hosts(id), bad))
    })?;
    let failure = match &summary.phase {
        TaskPhase::Failed { status: Some(status), .. } => Some(format!("the origin answered HTTP {status}")),
        TaskPhase::Failed { status: None, .. } => Some("the origin fetch failed (the supernode's log says why)".into()),
        _ => None,
    };
    let mut peers: Vec<TaskPeer> = summary
        .peers
        .iter()
        .map(|p| {
            let part = hosts.get(&p.id).copied().unwrap_or_default();
            TaskPeer {
                id: p.id.to_string(),
                addr: p.addr.to_string(),
                pieces_held: p.pieces_held,
                in_flight: p.in_flight,
                done: p.done,
                uploaded: part.uploaded,
                downloaded: part.downloaded,
                bad: bad.contains_key(&p.id),
            }
        })
        .collect();
    peers.sort_by(|a, b| b.pieces_held.cmp(&a.pieces_held).then_with(|| a.id.cmp(&b.id)));
    let cache = shared.cache.get(id).map(|t| t.state());
    let task = task_row(id, &summary, counters, cache);
    Some(TaskDetail {
        generated_ms: u64::try_from(now.as_millis()).unwrap_or(u64::MAX),
        supernode_uploaded: task.counters.from_supernode,
        task,
        failure,
        peers,
    })
}
