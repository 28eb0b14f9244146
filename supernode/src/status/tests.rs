//! The status counters against a real scheduler, and the views' escaping.

use std::net::SocketAddr;
use std::time::Duration;

use damselfly_types::id::{PeerId, TaskId};
use damselfly_types::piece::Piece;

use super::model::{HostRow, OriginLimitsView, Overview, TaskDetail, TaskPeer, TaskRow};
use super::stats::{
    Delivery, HostCounters, HostLimits, Stats, TaskCounters, Totals, MAX_HOSTS, MAX_TASKS, SERIES_SECS,
};
use damselfly_scheduler::{Action, Assignment, Down, Event, FailReason, Parent, PieceMeta, Scheduler, SchedulerConfig};

const PIECE: u32 = 256 << 10;

fn tid(i: usize) -> TaskId {
    TaskId::new(format!("sha256:{i:064x}"))
}

fn pid(i: usize) -> PeerId {
    PeerId::new(format!("p{i}"))
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 20_000 + i as u16))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The scheduler and the counters, fed as `Shared::handle` feeds them.
struct Shell {
    sched: Scheduler,
    stats: Stats,
    now: Duration,
    /// Assignments not carried out yet: (child, piece, parent).
    pending: Vec<(PeerId, u32, Parent)>,
    delivered: u64,
}

impl Shell {
    fn new() -> Self {
        let sched = Scheduler::new(SchedulerConfig::default());
        Self { sched, stats: Stats::default(), now: Duration::ZERO, pending: Vec::new(), delivered: 0 }
    }

    fn handle(&mut self, event: Event) -> Option<Delivery> {
        let delivery = self.stats.on_event(self.now, &event);
        if let Some(d) = delivery {
            self.delivered += d.bytes;
        }
        for action in self.sched.on_event(self.now, event) {
            self.stats.on_action(self.now, &action);
            if let Action::Send { peer, msg: Down::Assign(list), .. } = action {
                self.pending.extend(list.into_iter().map(|a| (peer.clone(), a.piece, a.parent)));
            }
        }
        delivery
    }

    /// The origin fetch of `len` bytes as `origin::fetch` reports it.
    fn origin(&mut self, task: &TaskId, len: u64) {
        self.handle(Event::TaskStarted { task: task.clone(), content_length: Some(len), piece_size: PIECE });
        let mut offset = 0;
        let mut number = 0;
        while offset < len {
            let size = (len - offset).min(u64::from(PIECE)) as u32;
            self.stats.origin(self.now, task, u64::from(size));
            let piece = PieceMeta { number, piece: Piece { offset, size, sha256: [0; 32] } };
            self.handle(Event::PieceLanded { task: task.clone(), piece });
            offset += u64::from(size);
            number += 1;
        }
        self.handle(Event::OriginComplete { task: task.clone(), total_pieces: number, content_length: len });
    }

    /// Carries out every assignment until nothing is pending; one second passes per round.
    fn run(&mut self, task: &TaskId) {
        while !self.pending.is_empty() {
            self.now += secs(1);
            for (peer, piece, _) in std::mem::take(&mut self.pending) {
                self.handle(Event::PieceFinished { task: task.clone(), peer, piece });
            }
        }
    }
}

#[test]
fn every_delivered_byte_is_attributed_to_one_uploader_and_one_downloader() {
    let mut shell = Shell::new();
    let task = tid(1);
    let len = 10 * u64::from(PIECE) + 123;
    for i in 0..6 {
        shell.handle(Event::PeerJoined { task: task.clone(), peer: pid(i), addr: addr(i), have: vec![] });
    }
    shell.origin(&task, len);
    shell.run(&task);

    let t = shell.stats.task_counters(&task).expect("task counters");
    assert_eq!(t.origin_bytes, len);
    assert_eq!(t.from_peers + t.from_supernode, 6 * len, "every peer got the whole file once");
    assert_eq!(shell.delivered, 6 * len);
    assert_eq!(t.in_flight, 0);
    let hosts = shell.stats.hosts(shell.now);
    assert_eq!(hosts.len(), 6);
    let uploaded: u64 = hosts.iter().map(|(_, h)| h.uploaded).sum::<u64>() + shell.stats.supernode(shell.now).uploaded;
    assert_eq!(uploaded, 6 * len, "uploads add up to deliveries");
    for (id, h) in &hosts {
        assert_eq!(h.downloaded, len, "{id}");
        assert!(h.connected && h.addr.is_some());
    }
    assert_eq!(shell.stats.supernode(shell.now).uploaded, t.from_supernode);
    let parts = shell.stats.task_hosts(&task);
    assert_eq!(parts.values().map(|p| p.downloaded).sum::<u64>(), 6 * len);
    assert_eq!(parts.values().map(|p| p.uploaded).sum::<u64>(), t.from_peers);
    let totals = shell.stats.totals(shell.now);
    assert_eq!((totals.from_peers, totals.from_supernode, totals.origin), (t.from_peers, t.from_supernode, len));
    let series = shell.stats.series(shell.now + secs(1));
    assert_eq!(series.iter().map(|p| p.from_peers + p.from_supernode).sum::<u64>(), 6 * len);
    assert_eq!(series.iter().map(|p| p.origin).sum::<u64>(), len);
}

fn assign(stats: &mut Stats, now: Duration, task: &TaskId, child: usize, piece: u32, parent: Option<usize>) {
    let parent = match parent {
        None => Parent::Supernode,
        Some(p) => Parent::Peer { id: pid(p), addr: addr(p) },
    };
    let msg = Down::Assign(vec![Assignment { piece, parent }]);
    stats.on_action(now, &Action::Send { peer: pid(child), task: task.clone(), msg });
}

fn finished(stats: &mut Stats, now: Duration, task: &TaskId, child: usize, piece: u32) -> Option<Delivery> {
    stats.on_event(now, &Event::PieceFinished { task: task.clone(), peer: pid(child), piece })
}

#[test]
fn failures_strike_the_recorded_parent_and_unassigned_pieces_count_nothing() {
    let mut stats = Stats::default();
    let (task, now) = (tid(1), secs(3));
    let started =
        Event::TaskStarted { task: task.clone(), content_length: Some(3 * u64::from(PIECE)), piece_size: PIECE };
    stats.on_event(now, &started);
    assign(&mut stats, now, &task, 1, 0, Some(2));
    let failed = Event::PieceFailed {
        task: task.clone(),
        peer: pid(1),
        piece: 0,
        parent: Some(pid(2)),
        reason: FailReason::Digest,
    };
    assert_eq!(stats.on_event(now, &failed), None);
    let parent = stats.host_view(now, &pid(2)).expect("parent");
    assert_eq!((parent.upload_failures, parent.bad_digests, parent.uploaded), (1, 1, 0));
    assert_eq!(stats.host_view(now, &pid(1)).expect("child").download_failures, 1);
    assert_eq!(finished(&mut stats, now, &task, 1, 0), None, "the failed assignment is gone");
    assert_eq!(finished(&mut stats, now, &task, 1, 1), None, "never assigned");

    // A peer that leaves takes its assignments with it; a reported peer is marked.
    assign(&mut stats, now, &task, 1, 2, None);
    stats.on_event(now, &Event::PeerLeft { task: task.clone(), peer: pid(1) });
    assert_eq!(finished(&mut stats, now, &task, 1, 2), None);
    assert_eq!(stats.task_counters(&task).expect("task").in_flight, 0);
    stats.on_action(now, &Action::PeerReported { peer: pid(2), task: task.clone(), strikes: 2 });
    assert!(stats.host_view(now, &pid(2)).expect("parent").reported);
    stats.on_event(now, &Event::PeerJoined { task: task.clone(), peer: pid(3), addr: addr(3), have: vec![] });
    stats.on_event(now, &Event::PeerGone { peer: pid(3) });
    assert!(!stats.host_view(now, &pid(3)).expect("gone").connected);
}

#[test]
fn the_last_piece_counts_its_own_length() {
    let mut stats = Stats::default();
    let (task, now) = (tid(1), secs(1));
    // No length announced: the short last piece tells it.
    stats.on_event(now, &Event::TaskStarted { task: task.clone(), content_length: None, piece_size: PIECE });
    let last = PieceMeta { number: 1, piece: Piece { offset: u64::from(PIECE), size: 10, sha256: [0; 32] } };
    stats.on_event(now, &Event::PieceLanded { task: task.clone(), piece: last });
    assign(&mut stats, now, &task, 1, 0, None);
    assign(&mut stats, now, &task, 1, 1, None);
    assert_eq!(
        finished(&mut stats, now, &task, 1, 0),
        Some(Delivery { from_supernode: true, bytes: u64::from(PIECE) })
    );
    assert_eq!(finished(&mut stats, now, &task, 1, 1), Some(Delivery { from_supernode: true, bytes: 10 }));
}

#[test]
fn rates_average_the_last_complete_seconds_and_the_series_keeps_ten_minutes() {
    let mut stats = Stats::default();
    let task = tid(1);
    stats.on_event(secs(0), &Event::TaskStarted { task: task.clone(), content_length: None, piece_size: PIECE });
    for s in 10..15 {
        assign(&mut stats, secs(s), &task, 1, s as u32, Some(2));
        finished(&mut stats, secs(s), &task, 1, s as u32);
    }
    let now = secs(15);
    assert_eq!(stats.totals(now).delivery_rate, u64::from(PIECE));
    assert_eq!(stats.host_view(now, &pid(2)).expect("parent").upload_rate, u64::from(PIECE));
    assert_eq!(stats.host_view(now, &pid(1)).expect("child").download_rate, u64::from(PIECE));
    assert_eq!(stats.totals(secs(30)).delivery_rate, 0, "rates fall to zero when idle");
    let series = stats.series(now);
    assert_eq!(series.len(), 15);
    assert_eq!(series.iter().filter(|p| p.from_peers == u64::from(PIECE)).count(), 5);
    let later = stats.series(secs(10_000));
    assert_eq!(later.len(), SERIES_SECS - 1);
    assert!(later.iter().all(|p| p.from_peers == 0), "old seconds are not shown again");
}

#[test]
fn tasks_and_hosts_stay_bounded_and_busy_tasks_are_kept() {
    let mut stats = Stats::default();
    let busy = tid(0);
    stats.on_event(secs(0), &Event::TaskStarted { task: busy.clone(), content_length: None, piece_size: PIECE });
    assign(&mut stats, secs(0), &busy, 1, 0, None);
    for i in 1..MAX_TASKS + 50 {
        let e = Event::TaskStarted { task: tid(i), content_length: None, piece_size: PIECE };
        stats.on_event(secs(i as u64), &e);
    }
    assert_eq!(stats.sizes().0, MAX_TASKS);
    assert!(stats.task_counters(&busy).is_some(), "a task with assignments outstanding stays");
    for i in 0..MAX_HOSTS + 50 {
        let e = Event::PeerJoined { task: busy.clone(), peer: pid(i), addr: addr(i), have: vec![] };
        stats.on_event(secs(1000 + i as u64), &e);
    }
    assert!(stats.sizes().1 <= MAX_HOSTS);
    assert!(stats.host_view(secs(0), &pid(MAX_HOSTS + 49)).is_some(), "the newest host stays");
}

const EVIL: &str = r#"<script>alert("x")</script>"#;

fn evil_overview() -> Overview {
    let counters = HostCounters { uploaded: 5, downloaded: 7, ..HostCounters::default() };
    Overview {
        uptime_secs: 61,
        generated_ms: 61_000,
        origin_bytes: 100,
        totals: Totals { from_peers: 150, from_supernode: 50, origin: 100, ..Totals::default() },
        tasks_total: 1,
        peers: 1,
        bad_peers: 1,
        cache_bytes: 100,
        cache_quota: 0,
        series: vec![],
        tasks: vec![evil_task()],
        supernode: HostCounters { uploaded: 50, ..HostCounters::default() },
        hosts: vec![HostRow { id: EVIL.into(), strikes: Some(2), counters }],
        hosts_total: 1,
        origin_limits: OriginLimitsView::default(),
    }
}

fn evil_task() -> TaskRow {
    TaskRow {
        id: EVIL.into(),
        phase: "complete",
        cache: None,
        size: Some(100),
        piece_size: Some(PIECE),
        landed_pieces: 1,
        total_pieces: Some(1),
        peers: 1,
        peers_done: 1,
        pieces_held: 1,
        counters: TaskCounters { origin_bytes: 100, from_peers: 150, from_supernode: 50, ..TaskCounters::default() },
    }
}

#[test]
fn pages_escape_ids_they_did_not_make() {
    let page = super::overview::render(&evil_overview());
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)"));
    assert!(page.contains(r#"data-metric="origin-bytes" data-value="100""#));
    assert!(page.contains(r#"data-uploaded="5""#) && page.contains("reported bad"));
    assert!(page.contains("2.0×"), "offload: 200 delivered bytes per 100 origin bytes");

    let detail = TaskDetail {
        generated_ms: 1,
        task: evil_task(),
        failure: Some(EVIL.into()),
        supernode_uploaded: 50,
        peers: vec![TaskPeer {
            id: EVIL.into(),
            addr: EVIL.into(),
            pieces_held: 1,
            in_flight: 0,
            done: true,
            uploaded: 150,
            downloaded: 200,
            bad: false,
        }],
    };
    let page = super::task::render(&detail);
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains(r#"data-pieces="1""#) && page.contains("seeding"));
    let unknown = super::task::render_unknown(EVIL);
    assert!(!unknown.contains("<script>alert"));
}

#[test]
fn limits_show_in_a_tile_and_in_host_rows() {
    let mut o = evil_overview();
    o.origin_limits = OriginLimitsView { rate: 1 << 20, max_fetches: 2, running: 2, queued: 3, throttled_secs: 4.0 };
    o.hosts[0].counters.limits = Some(HostLimits { download: 2 << 20, upload: 0, origin: 1 << 20 });
    let page = super::overview::render(&o);
    assert!(page.contains(r#"data-metric="origin-limit" data-value="1048576""#), "{page}");
    assert!(page.contains("2 fetching of 2, 3 queued, waited 4 s"), "{page}");
    assert!(page.contains(r#"data-download-limit="2097152" data-upload-limit="0" data-origin-limit="1048576""#));
    assert!(page.contains("down 2.00 MiB/s, origin 1.00 MiB/s"), "{page}");
    let unlimited = super::overview::render(&evil_overview());
    assert!(unlimited.contains("no limit"), "{unlimited}");
}

#[test]
fn an_empty_swarm_renders() {
    let mut o = evil_overview();
    o.tasks.clear();
    o.hosts.clear();
    o.series = Stats::default().series(secs(700));
    let page = super::overview::render(&o);
    assert!(page.contains("No tasks yet"));
    assert!(page.contains("<svg"));
}
