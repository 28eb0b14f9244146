//! The download of one task through the swarm: a control stream to the supernode, and piece
//! fetches from the parents it assigns, several at once.
//!
//! Every piece is checked against the sha256 the supernode announced (never a digest a parent
//! claims) before it is stored; a bad or failed piece is reported with the parent's id so the
//! supernode assigns it elsewhere.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use damselfly_net::rate::{self, Flow};
use damselfly_net::tls;
use damselfly_net::transport::{read_frame, write_frame, TransportError};
use damselfly_proto as pb;
use damselfly_types::id::{Sha256Digest, TaskId};
use quinn::{Connection, SendStream};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tracing::{debug, instrument, warn};

use crate::storage::{ContentWriter, LocalTask, Piece, TaskFailure, TaskStatus};
use crate::Daemon;

mod wire;

/// What a download needs besides the task id.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    /// Origin URL.
    pub url: url::Url,
    /// `sha256:<hex>` when known.
    pub digest: Option<String>,
    /// Headers for the origin (credentials included; never logged).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The swarm group the registration names (`Register.group`): downloads of one image pull
    /// name the same one, and the supernode schedules their blobs as one swarm. Checked by
    /// `damselfly_types::group::check`. Concurrent downloads of one task are one download: the
    /// first request's group is the one sent.
    pub group: Option<String>,
}

/// Why a piece fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Bytes did not match the supernode's sha256 (or the parent sent the wrong size): the
    /// parent is at fault and must be reported.
    #[error("piece failed verification: {0}")]
    Digest(String),
    /// Connection, stream, refusal or timeout: another parent may well succeed.
    #[error("transfer failed: {0}")]
    Transfer(String),
    /// This host could not store the piece (disk full, unwritable data dir): no parent is at
    /// fault, and fetching elsewhere will not help.
    #[error("{0}")]
    Local(String),
}

impl From<TransportError> for FetchError {
    fn from(e: TransportError) -> Self {
        Self::Transfer(e.to_string())
    }
}

/// Where a piece came from.
#[derive(Clone, Debug)]
struct Source {
    /// Parent peer id; None for the supernode.
    peer: Option<String>,
    addr: Option<SocketAddr>,
}

struct Fetched {
    piece: u32,
    source: Source,
    /// The table entry the bytes were checked against, when they were.
    result: Result<Piece, FetchError>,
}

/// Why the swarm did not deliver a task.
#[derive(Debug)]
enum SwarmError {
    /// The swarm cannot deliver now (no supernode reachable, no progress): the origin may.
    Unavailable(String),
    /// The task's supernode went away mid-download: the next one in the task's order may
    /// take over, with the pieces already here.
    Lost(String),
    /// The task itself failed (origin error, digest mismatch, local storage): final.
    Failed(TaskFailure),
}

impl From<TaskFailure> for SwarmError {
    fn from(f: TaskFailure) -> Self {
        Self::Failed(f)
    }
}

/// Runs the download of `task` to its end (done or failed). A task with a digest is done only
/// once its whole content matched it ([`crate::verify`]); a mismatch after a swarm download
/// drops every piece and fetches the content once more straight from the origin.
#[instrument(skip_all, fields(task = %task.id))]
pub async fn run(daemon: Arc<Daemon>, task: Arc<LocalTask>, req: DownloadRequest) {
    daemon.metrics.tasks_running.inc();
    let expected = req.digest.as_deref().and_then(|d| d.parse::<Sha256Digest>().ok());
    let mut outcome = fetch_verified(&daemon, &task, &req, expected, false).await;
    if let (Err(Mismatch::Content(f)), true) = (&outcome, daemon.config.origin_fallback) {
        warn!(error = %f.message, "content does not match its digest: fetching it again from the origin");
        daemon.metrics.bad_pieces.inc();
        task.reset_content();
        outcome = fetch_verified(&daemon, &task, &req, expected, true).await;
    }
    daemon.metrics.tasks_running.dec();
    match outcome {
        Ok(()) => {
            task.update(|v| v.status = TaskStatus::Done);
            daemon.metrics.tasks_completed.inc();
        }
        Err(Mismatch::Content(failure) | Mismatch::Fetch(failure)) => {
            warn!(error = %failure.message, "download failed");
            daemon.metrics.tasks_failed.inc();
            daemon.store.fail(&task, failure);
        }
    };
}

/// How a verified fetch failed.
enum Mismatch {
    /// Every piece arrived but the whole content does not match the digest.
    Content(TaskFailure),
    /// The fetch itself failed.
    Fetch(TaskFailure),
}

/// Fills the task from the swarm (or the origin when the swarm cannot, or `origin_only`) while
/// checking the whole content against `expected` as it lands.
async fn fetch_verified(
    daemon: &Arc<Daemon>,
    task: &Arc<LocalTask>,
    req: &DownloadRequest,
    expected: Option<Sha256Digest>,
    origin_only: bool,
) -> Result<(), Mismatch> {
    let follower = expected.map(|d| tokio::spawn(crate::verify::Follower::new(task.clone(), d).run()));
    let fetched = if origin_only {
        crate::fallback::from_origin(daemon, task, req).await
    } else {
        match drive(daemon, task, req).await {
            Ok(()) => Ok(()),
            Err(SwarmError::Failed(f)) => Err(f),
            Err(SwarmError::Unavailable(reason) | SwarmError::Lost(reason)) if daemon.config.origin_fallback => {
                warn!(%reason, "swarm unavailable: falling back to the origin");
                crate::fallback::from_origin(daemon, task, req).await
            }
            Err(SwarmError::Unavailable(reason) | SwarmError::Lost(reason)) => {
                Err(TaskFailure { origin_status: None, message: reason })
            }
        }
    };
    match (fetched, follower) {
        (Err(f), Some(follower)) => {
            follower.abort();
            Err(Mismatch::Fetch(f))
        }
        (Err(f), None) => Err(Mismatch::Fetch(f)),
        (Ok(()), None) => Ok(()),
        (Ok(()), Some(follower)) => match follower.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(Mismatch::Content(f)),
            Err(e) => Err(Mismatch::Fetch(TaskFailure {
                origin_status: None,
                message: format!("content verification stopped: {e}"),
            })),
        },
    }
}

/// Runs the download through the task's supernode; when that one is lost midway, through the
/// next in the task's order (the pieces already here are kept: `Register.have`).
///
/// A task whose supernode is lost waits up to [`LOST_SUPERNODE_WAIT`] for one to take it (the
/// next in its order at once, or the same one restarted) rather than sending every host of the
/// region to the origin at the same moment; only then does it fall back.
async fn drive(daemon: &Arc<Daemon>, task: &Arc<LocalTask>, req: &DownloadRequest) -> Result<(), SwarmError> {
    let links = daemon.supernodes.links();
    let (mut link, mut sn) = daemon
        .supernodes
        .connection_for(&task.id, &[])
        .await
        .map_err(|e| SwarmError::Unavailable(format!("no supernode reachable: {e}")))?;
    for _ in 0..=MAX_MOVES {
        let why = match drive_with(daemon, task, req, sn.clone()).await {
            Err(SwarmError::Lost(why)) => why,
            other => return other,
        };
        links[link].broke(&sn, &why);
        let stall = LOST_SUPERNODE_WAIT;
        warn!(supernode = %links[link].name, %why, "lost the task's supernode: waiting up to {stall:?} for one to take the task");
        (link, sn) =
            daemon.supernodes.wait_for_owner(&task.id, stall).await.ok_or_else(|| {
                SwarmError::Unavailable(format!("{why}; no supernode took the task within {stall:?}"))
            })?;
        debug!(supernode = %links[link].name, "the task goes on with the pieces already here");
    }
    Err(SwarmError::Unavailable(format!("the task's supernode was lost {MAX_MOVES} times")))
}

/// How long a download that lost its supernode waits for another one (or the same one back)
/// before it falls back to the origin. A supernode restarted by its supervisor is back within it.
pub const LOST_SUPERNODE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How many times one download moves to another (or a restarted) supernode before it falls
/// back to the origin.
const MAX_MOVES: usize = 3;

async fn drive_with(
    daemon: &Arc<Daemon>,
    task: &Arc<LocalTask>,
    req: &DownloadRequest,
    sn: Connection,
) -> Result<(), SwarmError> {
    let lost = |m: String| SwarmError::Lost(m);
    let (mut send, recv) = sn.open_bi().await.map_err(|e| lost(format!("supernode connection broke: {e}")))?;
    let _ = send.set_priority(damselfly_net::transport::CONTROL_PRIORITY);
    let (piece_size, content_length) = task.with_view(|v| (v.piece_size, v.content_length));
    let register = pb::Register {
        task_id: task.id.to_string(),
        url: req.url.to_string(),
        digest: req.digest.clone().unwrap_or_default(),
        // Only allow-listed headers leave the host (the supernode applies its own list too).
        headers: daemon
            .forward_headers
            .filter(&req.headers)
            .into_iter()
            .map(|(name, value)| pb::Header { name, value })
            .collect(),
        peer_id: daemon.identity.peer_id().to_string(),
        peer_addr: daemon.advertise.to_string(),
        // Resume: pieces already here (verified first) are not fetched again.
        have: task.present_pieces().await,
        announce_only: false,
        limits: Some(daemon.limits.to_proto()),
        piece_size,
        content_length,
        group: req.group.clone().unwrap_or_default(),
    };
    let first = pb::Request {
        kind: Some(pb::request::Kind::Control(pb::ControlUp { kind: Some(pb::control_up::Kind::Register(register)) })),
    };
    write_frame(&mut send, &first).await.map_err(|e| lost(format!("cannot register with the supernode: {e}")))?;
    let (down_tx, mut down_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_downs(recv, down_tx));
    let mut state = Conductor {
        daemon: daemon.clone(),
        task: task.clone(),
        sn,
        send,
        fetching: HashSet::new(),
        fetches: JoinSet::new(),
        writes: TaskTracker::new(),
        ticket: None,
        complete: false,
    };
    let result = state.run(&mut down_rx).await;
    reader.abort();
    state.drain().await;
    if result.is_err() {
        let leave = pb::ControlUp { kind: Some(pb::control_up::Kind::Leave(pb::Leave {})) };
        let _ = write_frame(&mut state.send, &leave).await;
        let _ = state.send.finish();
    }
    result
}

/// Forwards the supernode's messages, so the conductor can select on them safely.
async fn read_downs(mut recv: quinn::RecvStream, tx: mpsc::UnboundedSender<Result<pb::ControlDown, TransportError>>) {
    loop {
        match read_frame::<pb::ControlDown>(&mut recv).await {
            Ok(Some(m)) => {
                if tx.send(Ok(m)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

struct Conductor {
    daemon: Arc<Daemon>,
    task: Arc<LocalTask>,
    sn: Connection,
    send: SendStream,
    fetching: HashSet<u32>,
    fetches: JoinSet<Fetched>,
    /// The blocking writes of piece bytes (see [`Conductor::drain`]).
    writes: TaskTracker,
    /// The supernode's latest ticket for this task: every parent asks for it.
    ticket: Option<Arc<pb::Ticket>>,
    complete: bool,
}

type DownRx = mpsc::UnboundedReceiver<Result<pb::ControlDown, TransportError>>;

impl Conductor {
    async fn run(&mut self, down_rx: &mut DownRx) -> Result<(), SwarmError> {
        let lost = |m: String| SwarmError::Lost(format!("lost the supernode: {m}"));
        let stall = self.daemon.config.stall_timeout;
        let mut last_progress = tokio::time::Instant::now();
        loop {
            if self.complete && self.task.with_view(|v| v.complete()) {
                let done = pb::ControlUp { kind: Some(pb::control_up::Kind::Done(pb::TaskDone {})) };
                let _ = write_frame(&mut self.send, &done).await;
                let _ = self.send.finish();
                return Ok(());
            }
            tokio::select! {
                down = down_rx.recv() => {
                    // Only news of content counts as progress: assignments and tickets keep
                    // coming while nothing lands (e.g. every parent fails).
                    if down.as_ref().is_some_and(|d| d.as_ref().is_ok_and(is_content_news)) {
                        last_progress = tokio::time::Instant::now();
                    }
                    match down {
                        Some(Ok(msg)) => self.on_down(msg).await?,
                        Some(Err(e)) => return Err(lost(e.to_string())),
                        None => return Err(lost("control stream closed".into())),
                    }
                },
                Some(joined) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    let f = joined.map_err(|e| TaskFailure { origin_status: None, message: format!("piece fetch panicked: {e}") })?;
                    if f.result.is_ok() {
                        last_progress = tokio::time::Instant::now();
                        self.daemon.swarm_progressed();
                    }
                    self.on_fetched(f).await?;
                }
                _ = tokio::time::sleep_until(last_progress + stall) => {
                    // Stalled only if the swarm delivers nothing to this host at all: under load
                    // a task may wait for upload slots its siblings hold.
                    let host = self.daemon.last_swarm_progress();
                    if host.elapsed() < stall {
                        last_progress = host;
                        continue;
                    }
                    return Err(SwarmError::Unavailable(format!("no progress through the swarm for {stall:?}")));
                }
            }
        }
    }

    async fn on_down(&mut self, msg: pb::ControlDown) -> Result<(), SwarmError> {
        use pb::control_down::Kind;
        match msg.kind {
            Some(Kind::TaskInfo(info)) => {
                self.task.set_info(info.content_length, info.piece_size).map_err(|e| TaskFailure {
                    origin_status: None,
                    message: format!("cannot size the content file {}: {e}", self.task.content_path().display()),
                })?
            }
            Some(Kind::Pieces(p)) => self.task.add_pieces(p.pieces.into_iter().filter_map(wire::piece_from_proto)),
            Some(Kind::Assign(a)) => {
                for assignment in a.assignments {
                    self.start_fetch(assignment);
                }
            }
            Some(Kind::Complete(c)) => {
                self.task.update(|v| {
                    v.set_total(c.total_pieces);
                    v.content_length = Some(c.content_length);
                    // The supernode announces the end of a task only after the content it cut
                    // the piece table from matched the task's digest (when it has one).
                    v.vouched = Some(v.generation);
                });
                if c.content_length == 0 {
                    self.task
                        .set_info(Some(0), 0)
                        .map_err(|e| TaskFailure { origin_status: None, message: e.to_string() })?;
                }
                self.complete = true;
            }
            Some(Kind::Failed(f)) => return Err(wire::failure_from_proto(f)),
            Some(Kind::Ticket(t)) => self.ticket = Some(Arc::new(t)),
            // The supernode's origin fetch waits for its limits: the swarm is slow, not stalled.
            Some(Kind::Waiting(w)) => debug!(queued = w.queued, "the supernode's origin fetch is waiting"),
            None => {}
        }
        Ok(())
    }

    fn start_fetch(&mut self, a: pb::Assignment) {
        let piece = a.piece;
        let (held, info) = self.task.with_view(|v| (v.has(piece), v.piece(piece).cloned()));
        if held || !self.fetching.insert(piece) {
            return;
        }
        let source = wire::source_from_proto(a.parent);
        let (daemon, sn, task, writes) = (self.daemon.clone(), self.sn.clone(), self.task.clone(), self.writes.clone());
        let ticket = self.ticket.clone();
        self.fetches.spawn(async move {
            let result = match info {
                None => Err(FetchError::Transfer(format!("piece {piece} assigned before it was announced"))),
                Some(info) => {
                    let timeout = daemon.config.piece_timeout;
                    let what = PieceRef { task: &task.id, piece, info: &info, ticket: ticket.as_deref() };
                    let flow = daemon.limits.download.flow(task.id.as_str());
                    let fetch = fetch_from(&daemon, &sn, &source, &task, what, &writes, &flow);
                    // Time spent waiting for this host's own download limit is not the parent's.
                    match rate::timeout_unthrottled(timeout, &flow, fetch).await {
                        Ok(r) => r.map(|()| info),
                        Err(_) => Err(FetchError::Transfer(format!("timed out after {timeout:?}"))),
                    }
                }
            };
            Fetched { piece, source, result }
        });
    }

    /// Handles a finished fetch: marks the piece present and reports it, or reports the failure
    /// naming the parent. A local failure (the piece cannot be stored here) ends the download:
    /// no parent is at fault and no other parent would help.
    async fn on_fetched(&mut self, f: Fetched) -> Result<(), SwarmError> {
        self.fetching.remove(&f.piece);
        let source_label = if f.source.peer.is_some() { "peer" } else { "supernode" };
        let current = self.task.with_view(|v| v.piece(f.piece).cloned());
        let up = match f.result {
            // Checked against the entry the table holds now: present. (An entry replaced while
            // the bytes were on their way leaves them unchecked against the new one.)
            Ok(checked) if current == Some(checked) => {
                self.task.mark_present(f.piece);
                self.daemon.metrics.downloaded(source_label, u64::from(checked.size));
                wire::piece_done(f.piece)
            }
            Ok(_) => {
                debug!(piece = f.piece, "the piece table changed during the fetch: fetching it again");
                wire::piece_failed(f.piece, &f.source, pb::FailReason::Transfer, "piece table changed".into())
            }
            Err(FetchError::Local(message)) => {
                return Err(SwarmError::Failed(TaskFailure { origin_status: None, message }));
            }
            Err(FetchError::Digest(detail)) => {
                warn!(piece = f.piece, parent = ?f.source.peer, %detail, "bad piece from parent");
                self.daemon.metrics.bad_pieces.inc();
                wire::piece_failed(f.piece, &f.source, pb::FailReason::Digest, detail)
            }
            Err(FetchError::Transfer(detail)) => {
                debug!(piece = f.piece, parent = ?f.source.peer, %detail, "piece transfer failed");
                self.daemon.metrics.failed_transfers.inc();
                if let Some(addr) = f.source.addr {
                    self.daemon.pool.forget(&addr);
                }
                wire::piece_failed(f.piece, &f.source, pb::FailReason::Transfer, detail)
            }
        };
        write_frame(&mut self.send, &pb::ControlUp { kind: Some(up) })
            .await
            .map_err(|e| SwarmError::Lost(format!("lost the supernode: {e}")))
    }

    /// Lets every fetch still running end before the task changes hands (fallback, failure): a
    /// fetch cut off in the middle of a write could otherwise land its bytes after the origin
    /// fallback wrote and verified the same piece.
    async fn drain(&mut self) {
        self.fetches.abort_all();
        while self.fetches.join_next().await.is_some() {}
        self.writes.close();
        self.writes.wait().await;
    }
}

/// Whether a message from the supernode says that the content moved on: its size, new pieces
/// at the supernode, the end.
fn is_content_news(msg: &pb::ControlDown) -> bool {
    use pb::control_down::Kind;
    // `Waiting`: the supernode's origin fetch is held back by its limits; the swarm is slow by
    // configuration, not stalled.
    matches!(
        msg.kind,
        Some(Kind::TaskInfo(_) | Kind::Pieces(_) | Kind::Complete(_) | Kind::Failed(_) | Kind::Waiting(_))
    )
}

async fn fetch_from(
    daemon: &Daemon,
    sn: &Connection,
    source: &Source,
    task: &LocalTask,
    what: PieceRef<'_>,
    writes: &TaskTracker,
    flow: &Flow,
) -> Result<(), FetchError> {
    let info = what.info;
    let local = |what: &str, e: std::io::Error| {
        FetchError::Local(format!("cannot {what} {}: {e}", task.content_path().display()))
    };
    task.reserve(info.offset + u64::from(info.size)).map_err(|e| local("make room for", e))?;
    task.ensure_room(u64::from(info.size)).map_err(|e| local("write the piece to", e))?;
    let file = task.content_writer().map_err(|e| local("open", e))?;
    let conn = match (&source.peer, source.addr) {
        (None, _) => sn.clone(),
        (Some(_), Some(addr)) => quiet_limit(daemon.pool.get(addr, tls::PEER_SERVER_NAME)).await??,
        (Some(p), None) => return Err(FetchError::Transfer(format!("parent {p} has no valid address"))),
    };
    fetch_piece(&conn, what, &file, writes, flow).await.map_err(|e| match e {
        // A local failure names the file: the operator must find which disk is full.
        FetchError::Local(m) => FetchError::Local(format!("{m} ({})", task.content_path().display())),
        other => other,
    })
}

/// One piece to fetch: which, what the supernode says it is, and the ticket that lets this peer
/// have it.
#[derive(Debug, Clone, Copy)]
pub struct PieceRef<'a> {
    /// The task.
    pub task: &'a TaskId,
    /// The piece number.
    pub piece: u32,
    /// Its offset, size and sha256 from the supernode.
    pub info: &'a Piece,
    /// The supernode's ticket for this peer and task.
    pub ticket: Option<&'a pb::Ticket>,
}

/// Longest silence tolerated from a parent in the middle of a piece. A parent killed with -9
/// is otherwise only noticed at the QUIC idle timeout; this lets the piece move elsewhere long
/// before the download's stall timeout sends it to the origin.
pub const PIECE_SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn quiet_limit<T>(read: impl std::future::Future<Output = T>) -> Result<T, FetchError> {
    tokio::time::timeout(PIECE_SILENCE_LIMIT, read)
        .await
        .map_err(|_| FetchError::Transfer(format!("parent silent for {PIECE_SILENCE_LIMIT:?}")))
}

/// Bytes collected from the stream before they are hashed and written in one go.
const WRITE_BLOCK: usize = 512 << 10;

/// Fetches one piece on a new stream of `conn`, writing its bytes into `file` at the piece's
/// offset as they arrive and hashing them on the way; succeeds only when the whole piece arrived
/// and matches `info.sha256`. Bytes of a failed fetch may be left in the file: the piece is not
/// present until the caller marks it so.
///
/// Hashing and writing happen on a blocking thread, one block behind the network: while a block
/// is hashed and written, the next one is received. Under a download limit the bytes are read
/// in steps of at most [`rate::RATE_CHUNK`], each paid to `flow` as it arrives: a stream not
/// read stops its sender by flow control, so the parent is slowed, not just the disk.
pub async fn fetch_piece(
    conn: &Connection,
    what: PieceRef<'_>,
    file: &ContentWriter,
    writes: &TaskTracker,
    flow: &Flow,
) -> Result<(), FetchError> {
    let info = what.info;
    // Every step is bounded: a parent that died without closing its connection must cost
    // seconds, not the connection's idle timeout.
    let (mut send, mut recv) = quiet_limit(conn.open_bi()).await?.map_err(TransportError::from)?;
    let request = pb::PieceRequest { task_id: what.task.to_string(), piece: what.piece, ticket: what.ticket.cloned() };
    let req = pb::Request { kind: Some(pb::request::Kind::Piece(request)) };
    quiet_limit(write_frame(&mut send, &req)).await??;
    let _ = send.finish();
    let resp: pb::PieceResponse = quiet_limit(read_frame(&mut recv))
        .await??
        .ok_or_else(|| FetchError::Transfer("parent closed the stream".into()))?;
    if resp.error != pb::PieceError::None as i32 {
        return Err(FetchError::Transfer(format!("parent refused: {}", resp.message)));
    }
    if resp.size != info.size {
        return Err(FetchError::Digest(format!("parent announced {} bytes, the piece has {}", resp.size, info.size)));
    }
    let size = info.size as usize;
    let mut writer = BlockWriter::new(file.clone(), info.offset, writes.clone());
    let mut received = 0usize;
    while received < size {
        let step = flow.chunk(size - received);
        let chunk = quiet_limit(recv.read_chunk(step, true)).await?.map_err(TransportError::from)?;
        let Some(chunk) = chunk else {
            return Err(FetchError::Transfer(format!("stream ended after {received} of {size} bytes")));
        };
        flow.take(chunk.bytes.len() as u64).await;
        received += chunk.bytes.len();
        writer.push(chunk.bytes, received == size).await?;
    }
    let got = writer.finish().await?;
    if got != info.sha256 {
        return Err(FetchError::Digest(format!(
            "sha256 {} does not match the supernode's {}",
            hex::encode(got),
            hex::encode(info.sha256)
        )));
    }
    Ok(())
}

/// A block being hashed and written: hands back the hasher, the emptied chunk list and the
/// result.
type BlockJob = tokio::task::JoinHandle<(Sha256, Vec<Bytes>, std::io::Result<()>)>;

/// Collects a piece's chunks as the stream hands them over (no copy: each is a slice of a
/// received datagram) into blocks of about [`WRITE_BLOCK`] bytes, and hashes and writes each
/// block on a blocking thread (one `pwritev`), keeping at most one block in flight there.
struct BlockWriter {
    file: ContentWriter,
    /// Tracks the blocking writes, so that a download can wait for them even after the fetch
    /// that started them was cancelled.
    writes: TaskTracker,
    /// File offset of the next block.
    offset: u64,
    block: Vec<Bytes>,
    /// Bytes in `block`.
    block_len: usize,
    /// The block being hashed and written, with the hasher; hands both back with an emptied list.
    busy: Option<BlockJob>,
    hasher: Option<Sha256>,
    spare: Vec<Bytes>,
}

impl BlockWriter {
    fn new(file: ContentWriter, offset: u64, writes: TaskTracker) -> Self {
        Self {
            file,
            writes,
            offset,
            block: Vec::new(),
            block_len: 0,
            busy: None,
            hasher: Some(Sha256::new()),
            spare: Vec::new(),
        }
    }

    /// Appends a chunk; hands a full block (or the last one) to the blocking thread.
    async fn push(&mut self, chunk: Bytes, last: bool) -> Result<(), FetchError> {
        self.block_len += chunk.len();
        self.block.push(chunk);
        if self.block_len >= WRITE_BLOCK || (last && self.block_len > 0) {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the block in flight, then starts hashing and writing the current one.
    async fn flush(&mut self) -> Result<(), FetchError> {
        self.settle().await?;
        let next = std::mem::take(&mut self.spare);
        let chunks = std::mem::replace(&mut self.block, next);
        let (file, offset) = (self.file.clone(), self.offset);
        self.offset += self.block_len as u64;
        self.block_len = 0;
        let mut hasher = self.hasher.take().unwrap_or_default();
        self.busy = Some(self.writes.spawn_blocking(move || {
            chunks.iter().for_each(|c| hasher.update(c));
            let written = file.write_all_vectored_at(&chunks, offset);
            let mut chunks = chunks;
            chunks.clear();
            (hasher, chunks, written)
        }));
        Ok(())
    }

    /// Waits for the block in flight, if any.
    async fn settle(&mut self) -> Result<(), FetchError> {
        let Some(busy) = self.busy.take() else { return Ok(()) };
        let (hasher, buf, written) = busy.await.map_err(|e| FetchError::Local(format!("piece writer failed: {e}")))?;
        self.hasher = Some(hasher);
        self.spare = buf;
        written.map_err(|e| FetchError::Local(format!("cannot write the piece: {e}")))
    }

    /// Waits for the last block; the sha256 of everything pushed.
    async fn finish(mut self) -> Result<[u8; 32], FetchError> {
        self.settle().await?;
        Ok(self.hasher.take().unwrap_or_default().finalize().into())
    }
}
