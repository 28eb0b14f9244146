//! QUIC transport: endpoint construction, transport parameters, framed messages on streams and
//! a pool that keeps one connection per remote endpoint.
//!
//! Every request is one bidirectional stream on a long-lived connection; the first frame on the
//! stream is a `damselfly.v1.Request` (see the `damselfly-proto` crate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use damselfly_proto::{encode_frame, frame_len, FrameError, FRAME_PREFIX_LEN};
use dashmap::DashMap;
use prost::Message;
use quinn::{ClientConfig, Connection, Endpoint, RecvStream, SendStream, ServerConfig};

/// How long a silent connection lives. Keep-alives run at a fraction of it, so only a dead or
/// unreachable peer reaches it: that is how a kill -9'd parent is noticed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// Keep-alive interval on every connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Per-stream receive window. Pieces on one connection are sent one after the other (see
/// [`transport_config`]), so one stream's window is what keeps a parent's link busy: 8 MiB covers
/// 1 Gbit/s at 60 ms or 10 Gbit/s at 6 ms of round trip.
const STREAM_WINDOW: u32 = 8 << 20;
/// Per-connection receive window: a little more than one stream's, so the next piece's first
/// bytes are already on their way while the current one drains.
const CONNECTION_WINDOW: u32 = 12 << 20;
/// Per-connection send window: unacknowledged bytes a sender buffers. Bounds an uploader's
/// memory per child (the measured peak with 64 MiB was 105 MiB uploading to a few children).
const SEND_WINDOW: u64 = 8 << 20;
/// Largest UDP payload MTU discovery searches for. Paths with a standard Ethernet MTU settle at
/// 1452 bytes as before; loopback and jumbo-frame networks get larger datagrams, which cuts the
/// per-packet cost (headers, ACKs, system calls) of bulk transfer.
const MTU_UPPER_BOUND: u16 = 65_527;
/// Send priority of control streams: their frames go out before any piece bytes queued on the
/// same connection, so a report or an assignment never waits behind a piece.
pub const CONTROL_PRIORITY: i32 = 100;

/// Errors moving frames and bytes over QUIC.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not bind the UDP socket.
    #[error("cannot bind QUIC endpoint on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Connecting failed before the handshake finished.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Remote address.
        addr: SocketAddr,
        /// Underlying error.
        source: quinn::ConnectError,
    },
    /// The connection failed (handshake refused, peer gone, idle timeout).
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// Remote address.
        addr: SocketAddr,
        /// Underlying error.
        source: quinn::ConnectionError,
    },
    /// Opening or using a stream failed because the connection broke.
    #[error("stream failed: {0}")]
    Stream(#[from] quinn::ConnectionError),
    /// Reading from a stream failed.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// Reading an exact amount hit the end of the stream or failed.
    #[error("read failed: {0}")]
    ReadExact(#[from] quinn::ReadExactError),
    /// Writing to a stream failed.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The peer sent a frame that is not a valid message.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The peer sent nothing for this long where a frame was due.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

/// Transport parameters used by every endpoint, client and server side.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_params())
}

/// [`transport_config`], owned, to adjust.
pub fn transport_params() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The values are well inside quinn's VarInt range, so the conversions cannot fail.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(SEND_WINDOW);
    // Streams of equal priority are sent in the order they were written, not round robin: two
    // pieces requested from one parent arrive one after the other at full speed, so the first
    // is verified and servable to others sooner, and a child can queue its next request
    // without splitting the link.
    t.send_fairness(false);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
}

/// Concurrent streams an authenticated peer may open on one connection.
pub const MAX_STREAMS: u32 = 4096;
/// Concurrent streams a connection may open before its certificate was checked (enrollment
/// needs one).
pub const PRE_AUTH_STREAMS: u32 = 2;
/// Largest frame accepted before the peer's certificate was checked (an enrollment request: a
/// CSR and a token are well under it).
pub const PRE_AUTH_MAX_FRAME: usize = 16 << 10;
/// Longest wait for the first frame of a stream: a peer that opens a stream and says nothing
/// holds no resources past it.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Transport parameters of a server that also accepts peers without a client certificate
/// (the supernode, for enrollment): such a connection may open only [`PRE_AUTH_STREAMS`]
/// streams and gets a small receive window until the server raises both for an authenticated
/// connection ([`raise_for_authenticated`]).
pub fn pre_auth_server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = transport_params();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(PRE_AUTH_STREAMS));
    t.receive_window(quinn::VarInt::from_u32(64 << 10));
    t.stream_receive_window(quinn::VarInt::from_u32(32 << 10));
    Arc::new(t)
}

/// Gives an authenticated connection of a [`pre_auth_server_transport`] server the usual
/// stream limit and receive window.
pub fn raise_for_authenticated(conn: &Connection) {
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    conn.set_receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
}

/// Binds a QUIC endpoint on `addr`; with `server` it also accepts connections.
pub fn bind_endpoint(addr: SocketAddr, server: Option<ServerConfig>) -> Result<Endpoint, TransportError> {
    bind_endpoint_with(addr, server, transport_config())
}

/// [`bind_endpoint`] with the server's transport parameters given.
pub fn bind_endpoint_with(
    addr: SocketAddr,
    server: Option<ServerConfig>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<Endpoint, TransportError> {
    let server = server.map(|mut s| {
        s.transport_config(transport);
        s
    });
    let socket = std::net::UdpSocket::bind(addr).map_err(|source| TransportError::Bind { addr, source })?;
    let runtime = Arc::new(quinn::TokioRuntime);
    Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(|source| TransportError::Bind { addr, source })
}

/// Applies [`transport_config`] to a client config.
pub fn with_transport(mut client: ClientConfig) -> ClientConfig {
    client.transport_config(transport_config());
    client
}

/// Writes one frame holding `msg`.
pub async fn write_frame<M: Message>(send: &mut SendStream, msg: &M) -> Result<(), TransportError> {
    send.write_chunk(encode_frame(msg)).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before a new frame.
pub async fn read_frame<M: Message + Default>(recv: &mut RecvStream) -> Result<Option<M>, TransportError> {
    read_frame_limited(recv, damselfly_proto::MAX_FRAME_LEN).await
}

/// The first frame of a stream, within [`FIRST_FRAME_TIMEOUT`] and `max_len` bytes.
pub async fn read_first_frame<M: Message + Default>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<Option<M>, TransportError> {
    tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame_limited(recv, max_len))
        .await
        .map_err(|_| TransportError::Timeout(FIRST_FRAME_TIMEOUT))?
}

/// [`read_frame`] refusing frames over `max_len` bytes.
pub async fn read_frame_limited<M: Message + Default>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<Option<M>, TransportError> {
    let mut prefix = [0u8; FRAME_PREFIX_LEN];
    let mut got = 0;
    while got < FRAME_PREFIX_LEN {
        match recv.read(&mut prefix[got..]).await? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => return Err(TransportError::Truncated),
        }
    }
    let len = frame_len(prefix)?;
    if len > max_len {
        return Err(FrameError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => TransportError::Truncated,
        other => TransportError::ReadExact(other),
    })?;
    Ok(Some(M::decode(Bytes::from(body)).map_err(FrameError::from)?))
}

/// One connection per remote endpoint, opened on first use and replaced when it breaks.
pub struct ConnectionPool {
    endpoint: Endpoint,
    client: ClientConfig,
    conns: DashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<Connection>>>>,
}

impl ConnectionPool {
    /// A pool that dials from `endpoint` with `client` (its transport config is set here).
    pub fn new(endpoint: Endpoint, client: ClientConfig) -> Self {
        Self { endpoint, client: with_transport(client), conns: DashMap::new() }
    }

    /// The live connection to `addr` (verified as `server_name`), connecting if needed.
    pub async fn get(&self, addr: SocketAddr, server_name: &str) -> Result<Connection, TransportError> {
        let slot = self.conns.entry(addr).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, server_name)
            .map_err(|source| TransportError::Connect { addr, source })?;
        let conn = connecting.await.map_err(|source| TransportError::Connection { addr, source })?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets (and closes) the connection to `addr`, e.g. after a protocol violation.
    pub fn forget(&self, addr: &SocketAddr) {
        if let Some((_, slot)) = self.conns.remove(addr) {
            if let Ok(guard) = slot.try_lock() {
                if let Some(conn) = guard.as_ref() {
                    conn.close(0u32.into(), b"forgotten");
                }
            }
        }
    }

    /// The endpoint the pool dials from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}
