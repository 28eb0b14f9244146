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
/// [`transport_config`]), so one stream's window is what keeps a parent's link busy: 4 MiB covers
/// 1 Gbit/s at 30 ms or 10 Gbit/s at 3 ms of round trip.
const STREAM_WINDOW: u32 = 4 << 20;
/// Per-connection receive window: a little more than one stream's, so the next piece's first
/// bytes are already on their way while the current one drains. It is also what a receiver
/// buffers when its disk stalls: with 12 MiB a downloading daemon's anonymous memory swung
/// between 17 and 44 MiB over a 4 GiB transfer.
const CONNECTION_WINDOW: u32 = 6 << 20;
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

#[cfg(test)]
mod tests {
    //! `write_frame` / `read_frame` between two real endpoints on loopback, with the cluster's
    //! mutual TLS: one connection, a new stream per case.

    use std::future::Future;
    use std::net::Ipv4Addr;

    use damselfly_proto::strategy::{control_down, request};
    use damselfly_proto::{ControlDown, Request, MAX_FRAME_LEN};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    use super::*;
    use crate::tls;

    /// Longest a case may take: a reader that waits for bytes that never come fails here.
    const CASE_TIMEOUT: Duration = Duration::from_secs(5);

    /// Two QUIC endpoints on 127.0.0.1 and one mutually authenticated connection between them.
    struct Link {
        rt: tokio::runtime::Runtime,
        client: Connection,
        server: Connection,
        _endpoints: [Endpoint; 2],
    }

    impl Link {
        fn new() -> Self {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let (client, server, endpoints) = rt.block_on(async {
                let ca = tls::ClusterCa::generate().expect("CA");
                let identity = |id: &str| ca.issue_peer_identity(id).expect("peer identity");
                let server_config =
                    tls::peer_server_config(&identity("server"), &ca.cert_der()).expect("server config");
                let client_config =
                    tls::client_config(Some(&identity("client")), &ca.cert_der()).expect("client config");
                let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                let server_ep = bind_endpoint(localhost, Some(server_config)).expect("server endpoint");
                let client_ep = bind_endpoint(localhost, None).expect("client endpoint");
                let addr = server_ep.local_addr().expect("server address");
                let connecting = client_ep
                    .connect_with(with_transport(client_config), addr, tls::PEER_SERVER_NAME)
                    .expect("connect");
                let accepting = async { server_ep.accept().await.expect("incoming connection").await };
                let (client, server) = tokio::join!(connecting, accepting);
                (client.expect("client handshake"), server.expect("server handshake"), [client_ep, server_ep])
            });
            Self { rt, client, server, _endpoints: endpoints }
        }

        /// Opens a stream and runs `write` on the client's sending half and `read` on the
        /// server's receiving half at once; returns what `read` returns. `write` hands its stream
        /// back so that it stays open (not finished) until `read` is done.
        fn exchange<W, R, T>(
            &self,
            write: impl FnOnce(SendStream) -> W,
            read: impl FnOnce(RecvStream) -> R,
        ) -> Result<T, TestCaseError>
        where
            W: Future<Output = Result<SendStream, TestCaseError>>,
            R: Future<Output = T>,
        {
            self.rt.block_on(async {
                let (send, _) = self.client.open_bi().await.map_err(fail)?;
                // The server learns of the stream with its first byte or its end.
                let reader = async {
                    let (_, recv) = self.server.accept_bi().await.map_err(fail)?;
                    Ok::<_, TestCaseError>(read(recv).await)
                };
                let both = async { tokio::join!(write(send), reader) };
                let (sent, got) = tokio::time::timeout(CASE_TIMEOUT, both).await.map_err(|_| fail("case timed out"))?;
                let _open_until_now = sent?;
                got
            })
        }
    }

    fn fail(e: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    fn runner(cases: u32) -> TestRunner {
        // Few shrink steps: a case that hangs costs CASE_TIMEOUT each time.
        TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 16, ..Config::default() })
    }

    /// Reads frames until the stream ends cleanly.
    async fn read_all<M: Message + Default>(mut recv: RecvStream) -> Result<Vec<M>, TransportError> {
        let mut out = Vec::new();
        while let Some(msg) = read_frame(&mut recv).await? {
            out.push(msg);
        }
        Ok(out)
    }

    /// Writes `bytes` as separate writes cut at `cuts` (indices into it), then finishes.
    async fn write_cut(
        mut send: SendStream,
        bytes: Vec<u8>,
        cuts: Vec<usize>,
        finish: bool,
    ) -> Result<SendStream, TestCaseError> {
        let mut at: Vec<usize> = cuts.into_iter().chain([0, bytes.len()]).collect();
        at.sort_unstable();
        for w in at.windows(2) {
            send.write_all(&bytes[w[0]..w[1]]).await.map_err(fail)?;
            // Let each piece go out before the next is written.
            tokio::task::yield_now().await;
        }
        if finish {
            send.finish().map_err(fail)?;
        }
        Ok(send)
    }

    /// Whatever `write_frame` writes, `read_frame` reads back, in order, and then the clean end
    /// of the stream: as a frame per `write_frame`, and as the same bytes written in pieces cut
    /// anywhere (which boundaries the reader sees is up to QUIC; the codec's own properties in
    /// `damselfly-proto` cut at every one).
    #[test]
    fn frames_cross_a_real_stream() {
        let link = Link::new();
        let strategy = (vec(control_down(), 0..6), vec(any::<prop::sample::Index>(), 0..8));
        let result = runner(48).run(&strategy, |(msgs, cuts)| {
            let sent = msgs.clone();
            let got = link.exchange(
                |mut send| async move {
                    for msg in &sent {
                        write_frame(&mut send, msg).await.map_err(fail)?;
                    }
                    send.finish().map_err(fail)?;
                    Ok(send)
                },
                read_all::<ControlDown>,
            )?;
            prop_assert_eq!(got.map_err(fail)?, msgs.clone());

            let wire: Vec<u8> = msgs.iter().flat_map(|m| damselfly_proto::encode_frame(m).to_vec()).collect();
            let cuts = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            let got = link.exchange(|send| write_cut(send, wire, cuts, true), read_all::<ControlDown>)?;
            prop_assert_eq!(got.map_err(fail)?, msgs);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// A stream that ends inside a frame (in its prefix or its body) is `Truncated`; one that
    /// ends before any byte of a frame is a clean end.
    #[test]
    fn truncated_frames_over_a_real_stream() {
        let link = Link::new();
        let strategy = (request(), any::<prop::sample::Index>(), vec(any::<prop::sample::Index>(), 0..4));
        let result = runner(48).run(&strategy, |(msg, cut, splits)| {
            let frame = damselfly_proto::encode_frame(&msg).to_vec();
            let cut = cut.index(frame.len());
            let part = frame[..cut].to_vec();
            let splits = splits.iter().map(|i| i.index(cut + 1)).collect();
            let got = link.exchange(
                |send| write_cut(send, part, splits, true),
                |mut recv| async move { read_frame::<Request>(&mut recv).await },
            )?;
            match (cut, got) {
                (0, Ok(None)) | (_, Err(TransportError::Truncated)) => {}
                (cut, other) => prop_assert!(false, "stream cut at {} of {}: {:?}", cut, frame.len(), other),
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// A prefix over the reader's limit is refused as soon as its 4 bytes arrive: the writer
    /// keeps the stream open and sends no body, so a reader that waited for one would time out.
    /// A frame exactly at the limit is read.
    #[test]
    fn oversized_frames_over_a_real_stream() {
        let link = Link::new();
        let limits = prop_oneof![Just(MAX_FRAME_LEN), Just(PRE_AUTH_MAX_FRAME), 0..=MAX_FRAME_LEN];
        // Half the lengths within MAX_FRAME_LEN, where only the reader's own limit refuses them.
        let over = |max: usize| {
            let (first, within) = (max as u32 + 1, (MAX_FRAME_LEN as u32).max(max as u32 + 1));
            prop_oneof![first..=within, first..=u32::MAX]
        };
        let strategy = limits.prop_flat_map(move |max| (Just(max), over(max), request()));
        let result = runner(32).run(&strategy, |(max, len, msg)| {
            let got = link.exchange(
                |send| write_cut(send, len.to_be_bytes().to_vec(), vec![], false),
                |mut recv| async move { read_frame_limited::<Request>(&mut recv, max).await },
            )?;
            let refused = matches!(got, Err(TransportError::Frame(FrameError::TooLarge(n))) if n == len as usize);
            prop_assert!(refused, "{} bytes announced, limit {}: {:?}", len, max, got);

            let exact = msg.encoded_len();
            let got = link.exchange(
                |mut send| async move {
                    write_frame(&mut send, &msg).await.map_err(fail)?;
                    Ok(send)
                },
                |mut recv| async move { read_frame_limited::<Request>(&mut recv, exact).await },
            )?;
            prop_assert!(matches!(got, Ok(Some(_))), "a frame at the limit: {:?}", got);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// A body that is not the expected message is a frame error, not a panic or a hang.
    #[test]
    fn malformed_body_is_a_frame_error() {
        let link = Link::new();
        // Field 1 with wire type 7, which does not exist.
        let frame = vec![0, 0, 0, 1, 0x0f];
        let got = link
            .exchange(
                |send| write_cut(send, frame, vec![], false),
                |mut recv| async move { read_frame::<Request>(&mut recv).await },
            )
            .expect("exchange");
        assert!(matches!(got, Err(TransportError::Frame(FrameError::Decode(_)))), "{got:?}");
    }
}
