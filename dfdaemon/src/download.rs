//! The download of one task through the swarm: a control stream to the supernode, and piece
//! fetches from the parents it assigns, several at once.
//!
//! Every piece is checked against the sha256 the supernode announced (never a digest a parent
//! claims) before it is stored; a bad or failed piece is reported with the parent's id so the
//! supernode assigns it elsewhere.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use damselfly_common::id::TaskId;
use damselfly_common::tls;
use damselfly_common::transport::{read_frame, write_frame, TransportError};
use damselfly_proto as pb;
use quinn::{Connection, SendStream};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, instrument, warn};

use crate::storage::{LocalTask, PieceInfo, TaskFailure, TaskStatus};
use crate::Daemon;

/// What a download needs besides the task id.
#[derive(Clone, Debug)]
pub struct DownloadRequest {
    /// Origin URL.
    pub url: url::Url,
    /// `sha256:<hex>` when known.
    pub digest: Option<String>,
    /// Headers for the origin (credentials included; never logged).
    pub headers: Vec<(String, Vec<u8>)>,
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
    result: Result<Bytes, FetchError>,
}

/// Why the swarm did not deliver a task.
#[derive(Debug)]
enum SwarmError {
    /// The swarm cannot deliver now (supernode unreachable or lost, no progress): the origin may.
    Unavailable(String),
    /// The task itself failed (origin error, digest mismatch, local storage): final.
    Failed(TaskFailure),
}

impl From<TaskFailure> for SwarmError {
    fn from(f: TaskFailure) -> Self {
        Self::Failed(f)
    }
}

/// Runs the download of `task` to its end (done or failed).
#[instrument(skip_all, fields(task = %task.id))]
pub async fn run(daemon: Arc<Daemon>, task: Arc<LocalTask>, req: DownloadRequest) {
    daemon.metrics.tasks_running.inc();
    let outcome = match drive(&daemon, &task, &req).await {
        Ok(()) => Ok(()),
        Err(SwarmError::Failed(f)) => Err(f),
        Err(SwarmError::Unavailable(reason)) if daemon.config.origin_fallback => {
            warn!(%reason, "swarm unavailable: falling back to the origin");
            crate::fallback::from_origin(&daemon, &task, &req).await
        }
        Err(SwarmError::Unavailable(reason)) => Err(TaskFailure { origin_status: None, message: reason }),
    };
    daemon.metrics.tasks_running.dec();
    match outcome {
        Ok(()) => {
            task.update(|v| v.status = TaskStatus::Done);
            daemon.metrics.tasks_completed.inc();
        }
        Err(failure) => {
            warn!(error = %failure.message, "download failed");
            daemon.metrics.tasks_failed.inc();
            daemon.store.fail(&task, failure);
        }
    };
}

async fn drive(daemon: &Arc<Daemon>, task: &Arc<LocalTask>, req: &DownloadRequest) -> Result<(), SwarmError> {
    let unavailable = |m: String| SwarmError::Unavailable(m);
    let sn = daemon.supernode_connection().await.map_err(|e| unavailable(format!("supernode unreachable: {e:#}")))?;
    let (mut send, recv) = sn.open_bi().await.map_err(|e| unavailable(format!("supernode connection broke: {e}")))?;
    let register = pb::Register {
        task_id: task.id.to_string(),
        url: req.url.to_string(),
        digest: req.digest.clone().unwrap_or_default(),
        headers: req.headers.iter().map(|(n, v)| pb::Header { name: n.clone(), value: v.clone() }).collect(),
        peer_id: daemon.identity.peer_id.to_string(),
        peer_addr: daemon.advertise.to_string(),
        // Resume: pieces already here (verified first) are not fetched again.
        have: task.present_pieces().await,
        announce_only: false,
    };
    let first = pb::Request {
        kind: Some(pb::request::Kind::Control(pb::ControlUp { kind: Some(pb::control_up::Kind::Register(register)) })),
    };
    write_frame(&mut send, &first)
        .await
        .map_err(|e| unavailable(format!("cannot register with the supernode: {e}")))?;
    let (down_tx, mut down_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_downs(recv, down_tx));
    let mut state = Conductor {
        daemon: daemon.clone(),
        task: task.clone(),
        sn,
        send,
        fetching: HashSet::new(),
        fetches: JoinSet::new(),
        complete: false,
    };
    let result = state.run(&mut down_rx).await;
    reader.abort();
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
    complete: bool,
}

type DownRx = mpsc::UnboundedReceiver<Result<pb::ControlDown, TransportError>>;

impl Conductor {
    async fn run(&mut self, down_rx: &mut DownRx) -> Result<(), SwarmError> {
        let lost = |m: String| SwarmError::Unavailable(format!("lost the supernode: {m}"));
        let stall = self.daemon.config.stall_timeout;
        let mut last_progress = tokio::time::Instant::now();
        loop {
            if self.complete && self.task.view().complete() {
                let done = pb::ControlUp { kind: Some(pb::control_up::Kind::Done(pb::TaskDone {})) };
                let _ = write_frame(&mut self.send, &done).await;
                let _ = self.send.finish();
                return Ok(());
            }
            tokio::select! {
                down = down_rx.recv() => {
                    last_progress = tokio::time::Instant::now();
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
                    self.on_fetched(f).await.map_err(|e| lost(e.to_string()))?;
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
            Some(Kind::TaskInfo(info)) => self.task.set_info(info.content_length, info.piece_size).map_err(|e| {
                TaskFailure { origin_status: None, message: format!("cannot size the content file: {e}") }
            })?,
            Some(Kind::Pieces(p)) => self.task.add_pieces(p.pieces.into_iter().filter_map(|m| {
                let sha: [u8; 32] = m.sha256.as_slice().try_into().ok()?;
                Some((m.number, PieceInfo { offset: m.offset, size: m.size, sha256: sha }))
            })),
            Some(Kind::Assign(a)) => {
                for assignment in a.assignments {
                    self.start_fetch(assignment);
                }
            }
            Some(Kind::Complete(c)) => {
                self.task.update(|v| {
                    v.total_pieces = Some(c.total_pieces);
                    v.content_length = Some(c.content_length);
                    v.pieces.resize(c.total_pieces as usize, None);
                    v.have.resize(c.total_pieces as usize, false);
                });
                if c.content_length == 0 {
                    self.task
                        .set_info(Some(0), 0)
                        .map_err(|e| TaskFailure { origin_status: None, message: e.to_string() })?;
                }
                self.complete = true;
            }
            Some(Kind::Failed(f)) if f.status != 0 => {
                // The origin answered with an error: final, the daemon would get the same.
                return Err(SwarmError::Failed(TaskFailure {
                    origin_status: Some(f.status as u16),
                    message: f.message,
                }));
            }
            Some(Kind::Failed(f)) => {
                // The supernode could not deliver (origin unreachable from it, bad content,
                // refused registration): the origin itself may still serve this host.
                return Err(SwarmError::Unavailable(format!("supernode: {}", f.message)));
            }
            None => {}
        }
        Ok(())
    }

    fn start_fetch(&mut self, a: pb::Assignment) {
        let piece = a.piece;
        let view = self.task.view();
        if view.has(piece) || !self.fetching.insert(piece) {
            return;
        }
        let parent = a.parent.unwrap_or_default();
        let source = if parent.peer_id.is_empty() {
            Source { peer: None, addr: None }
        } else {
            Source { peer: Some(parent.peer_id), addr: parent.addr.parse().ok() }
        };
        let info = view.piece(piece).cloned();
        let (daemon, sn, task_id) = (self.daemon.clone(), self.sn.clone(), self.task.id.clone());
        self.fetches.spawn(async move {
            let result = match info {
                None => Err(FetchError::Transfer(format!("piece {piece} assigned before it was announced"))),
                Some(info) => {
                    let timeout = daemon.config.piece_timeout;
                    match tokio::time::timeout(timeout, fetch_from(&daemon, &sn, &source, &task_id, piece, &info)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err(FetchError::Transfer(format!("timed out after {timeout:?}"))),
                    }
                }
            };
            Fetched { piece, source, result }
        });
    }

    async fn on_fetched(&mut self, f: Fetched) -> Result<(), TransportError> {
        self.fetching.remove(&f.piece);
        let source_label = if f.source.peer.is_some() { "peer" } else { "supernode" };
        let up = match f.result {
            Ok(bytes) => {
                let len = bytes.len() as u64;
                let offset = self.task.view().piece(f.piece).map(|p| p.offset).unwrap_or(0);
                match self.task.store_piece(f.piece, offset, bytes).await {
                    Ok(()) => {
                        self.daemon.metrics.downloaded(source_label, len);
                        pb::control_up::Kind::PieceDone(pb::PieceDone { piece: f.piece })
                    }
                    Err(e) => failed(f.piece, &f.source, pb::FailReason::Transfer, format!("cannot store piece: {e}")),
                }
            }
            Err(FetchError::Digest(detail)) => {
                warn!(piece = f.piece, parent = ?f.source.peer, %detail, "bad piece from parent");
                self.daemon.metrics.bad_pieces.inc();
                failed(f.piece, &f.source, pb::FailReason::Digest, detail)
            }
            Err(FetchError::Transfer(detail)) => {
                debug!(piece = f.piece, parent = ?f.source.peer, %detail, "piece transfer failed");
                self.daemon.metrics.failed_transfers.inc();
                if let Some(addr) = f.source.addr {
                    self.daemon.pool.forget(&addr);
                }
                failed(f.piece, &f.source, pb::FailReason::Transfer, detail)
            }
        };
        write_frame(&mut self.send, &pb::ControlUp { kind: Some(up) }).await
    }
}

fn failed(piece: u32, source: &Source, reason: pb::FailReason, detail: String) -> pb::control_up::Kind {
    pb::control_up::Kind::PieceFailed(pb::PieceFailed {
        piece,
        parent_id: source.peer.clone().unwrap_or_default(),
        reason: reason as i32,
        detail,
    })
}

async fn fetch_from(
    daemon: &Daemon,
    sn: &Connection,
    source: &Source,
    task: &TaskId,
    piece: u32,
    info: &PieceInfo,
) -> Result<Bytes, FetchError> {
    let conn = match (&source.peer, source.addr) {
        (None, _) => sn.clone(),
        (Some(_), Some(addr)) => quiet_limit(daemon.pool.get(addr, tls::PEER_SERVER_NAME)).await??,
        (Some(p), None) => return Err(FetchError::Transfer(format!("parent {p} has no valid address"))),
    };
    fetch_piece(&conn, task, piece, info).await
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

/// Fetches one piece on a new stream of `conn` and verifies it against `info.sha256`.
pub async fn fetch_piece(conn: &Connection, task: &TaskId, piece: u32, info: &PieceInfo) -> Result<Bytes, FetchError> {
    // Every step is bounded: a parent that died without closing its connection must cost
    // seconds, not the connection's idle timeout.
    let (mut send, mut recv) = quiet_limit(conn.open_bi()).await?.map_err(TransportError::from)?;
    let req =
        pb::Request { kind: Some(pb::request::Kind::Piece(pb::PieceRequest { task_id: task.to_string(), piece })) };
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
    let mut buf = BytesMut::with_capacity(info.size as usize);
    let mut hasher = Sha256::new();
    while buf.len() < info.size as usize {
        let want = info.size as usize - buf.len();
        let chunk = quiet_limit(recv.read_chunk(want, true)).await?.map_err(TransportError::from)?;
        let Some(chunk) = chunk else {
            return Err(FetchError::Transfer(format!("stream ended after {} of {} bytes", buf.len(), info.size)));
        };
        hasher.update(&chunk.bytes);
        buf.extend_from_slice(&chunk.bytes);
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != info.sha256 {
        return Err(FetchError::Digest(format!(
            "sha256 {} does not match the supernode's {}",
            hex::encode(got),
            hex::encode(info.sha256)
        )));
    }
    Ok(buf.freeze())
}
