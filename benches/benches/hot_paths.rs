//! Micro-benchmarks of the hot paths: piece hashing, the dfdaemon's piece store, one piece over
//! QUIC (real TLS, the real `serve_piece` and `fetch_piece`), and the ticket check every piece
//! request goes through.
//!
//! ```text
//! cargo bench -p damselfly-benches --bench hot_paths
//! ```

use std::hint::black_box;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use damselfly_net::rate::{Flow, RateLimiter};
use damselfly_net::ticket::{TicketSigner, TicketVerifier};
use damselfly_net::tls::{self, ClusterCa};
use damselfly_net::transport::{bind_endpoint, read_frame, transport_config, with_transport};
use damselfly_net::upload::{serve_piece, PieceLocation, PieceSource, Requester};
use damselfly_proto as pb;
use damselfly_types::id::TaskId;
use damselfly_types::piece::PieceCutter;
use dfdaemon::download::{fetch_piece, PieceRef};
use dfdaemon::storage::{Piece, Store};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
const PIECE_SIZES: [usize; 3] = [MIB, 4 * MIB, 16 * MIB];

fn data(len: usize) -> Bytes {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.extend_from_slice(&state.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("piece_hash");
    for size in PIECE_SIZES {
        let bytes = data(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("sha256", size / MIB), &bytes, |b, bytes| {
            b.iter(|| black_box(Sha256::digest(black_box(bytes))))
        });
    }
    // The supernode's origin path: cut a 64 MiB body arriving in 64 KiB chunks into 1 MiB
    // pieces, hashing each piece and the whole.
    let body = data(64 * MIB);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(10);
    g.bench_function("cutter_64MiB_in_64KiB_chunks", |b| {
        b.iter(|| {
            let mut cutter = PieceCutter::new(MIB as u32);
            let mut n = 0;
            for chunk in body.chunks(64 << 10) {
                n += cutter.push(body.slice_ref(chunk)).len();
            }
            n += usize::from(cutter.finish().is_some());
            black_box((n, cutter.whole_digest()))
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let mut g = c.benchmark_group("piece_store");
    for size in PIECE_SIZES {
        let pieces = 16u32;
        let task_id = TaskId::new(format!("{:064x}", size));
        let (task, _) = store.get_or_create(&task_id).expect("task");
        let len = size as u64 * u64::from(pieces);
        task.set_info(Some(len), size as u32).expect("set_info");
        let bytes = data(size);
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        task.add_pieces(
            (0..pieces).map(|n| (n, Piece { offset: u64::from(n) * size as u64, size: size as u32, sha256: sha })),
        );
        g.throughput(Throughput::Bytes(size as u64));
        let mut n = 0u32;
        g.bench_function(BenchmarkId::new("write", size / MIB), |b| {
            b.iter(|| {
                let piece = n % pieces;
                n += 1;
                rt.block_on(task.store_piece(piece, u64::from(piece) * size as u64, bytes.clone())).expect("store");
            })
        });
        let mut n = 0u32;
        g.bench_function(BenchmarkId::new("read", size / MIB), |b| {
            b.iter(|| {
                let piece = n % pieces;
                n += 1;
                black_box(rt.block_on(task.read_at(u64::from(piece) * size as u64, size)).expect("read"))
            })
        });
    }
    g.finish();
}

/// Serves one task from a file: the piece upload side as a dfdaemon runs it.
struct FileSource {
    task: TaskId,
    file: Arc<std::fs::File>,
    size: u32,
}

impl PieceSource for FileSource {
    fn locate(&self, task: &TaskId, piece: u32) -> Option<PieceLocation> {
        (task == &self.task && piece == 0).then(|| PieceLocation { file: self.file.clone(), offset: 0, len: self.size })
    }
}

fn quic_piece(c: &mut Criterion) {
    let rt = runtime();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = ClusterCa::generate().expect("ca");
    let server_id = ca.issue_peer_identity("bench-server").expect("server identity");
    let client_id = ca.issue_peer_identity("bench-client").expect("client identity");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("quic_piece");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for size in PIECE_SIZES {
        let bytes = data(size);
        let path = dir.path().join(format!("piece-{size}"));
        let file = std::fs::File::create_new(&path).expect("piece file");
        file.write_all_at(&bytes, 0).expect("write piece");
        let task = TaskId::new(format!("{:064x}", size + 1));
        let source = Arc::new(FileSource { task: task.clone(), file: Arc::new(file), size: size as u32 });
        let info = Piece { offset: 0, size: size as u32, sha256: Sha256::digest(&bytes).into() };
        let (conn, server) = rt.block_on(async {
            let mut server_cfg = tls::peer_server_config(&server_id, &ca.cert_der()).expect("server config");
            server_cfg.transport_config(transport_config());
            let server = bind_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), Some(server_cfg)).expect("server");
            let addr = server.local_addr().expect("addr");
            let verifier = Arc::new(TicketVerifier::from_ca_cert(&ca.cert_der()).expect("verifier"));
            tokio::spawn(serve(server.clone(), source, verifier));
            let client = bind_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None).expect("client");
            let client_cfg =
                with_transport(tls::client_config(Some(&client_id), &ca.cert_der()).expect("client config"));
            let conn = client
                .connect_with(client_cfg, addr, tls::PEER_SERVER_NAME)
                .expect("connect")
                .await
                .expect("handshake");
            (conn, server)
        });
        g.throughput(Throughput::Bytes(size as u64));
        let out = std::fs::File::create_new(dir.path().join(format!("out-{size}"))).expect("output file");
        let out = dfdaemon::storage::ContentWriter::new(Arc::new(out));
        let writes = tokio_util::task::TaskTracker::new();
        let ticket = TicketSigner::from_ca(&ca).expect("signer").issue(
            task.as_str(),
            "bench-client",
            std::time::SystemTime::now() + Duration::from_secs(3600),
        );
        let what = PieceRef { task: &task, piece: 0, info: &info, ticket: Some(&ticket) };
        g.bench_function(BenchmarkId::new("fetch_piece", size / MIB), |b| {
            b.iter(|| rt.block_on(fetch_piece(&conn, what, &out, &writes, &Flow::unlimited())).expect("fetch"))
        });
        conn.close(0u32.into(), b"done");
        server.close(0u32.into(), b"done");
    }
    g.finish();
}

/// The ticket check of a piece request: a ticket seen for the first time (its signature is
/// verified) against the same ticket again (every later piece of the task from that child).
fn ticket(c: &mut Criterion) {
    let ca = ClusterCa::generate().expect("ca");
    let signer = TicketSigner::from_ca(&ca).expect("signer");
    let verifier = TicketVerifier::from_ca_cert(&ca.cert_der()).expect("verifier");
    let task = format!("sha256:{:064x}", 1);
    let now = std::time::SystemTime::now();
    let mut g = c.benchmark_group("ticket");
    let mut expiry = 0u64;
    g.bench_function("verify_new", |b| {
        b.iter_batched(
            || {
                expiry += 1;
                signer.issue(&task, "bench-client", now + Duration::from_secs(3600 + expiry))
            },
            |t| verifier.verify(Some(&t), &task, "bench-client", now).expect("valid"),
            criterion::BatchSize::SmallInput,
        )
    });
    let t = signer.issue(&task, "bench-client", now + Duration::from_secs(3600));
    g.bench_function("verify_again", |b| {
        b.iter(|| verifier.verify(Some(black_box(&t)), &task, "bench-client", now).expect("valid"))
    });
    g.finish();
}

async fn serve(endpoint: quinn::Endpoint, source: Arc<FileSource>, tickets: Arc<TicketVerifier>) {
    while let Some(incoming) = endpoint.accept().await {
        let (source, tickets) = (source.clone(), tickets.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let peer_id: Arc<str> = tls::client_peer_id(&conn).unwrap_or_default().into();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let (source, tickets, peer_id) = (source.clone(), tickets.clone(), peer_id.clone());
                tokio::spawn(async move {
                    if let Ok(Some(pb::Request { kind: Some(pb::request::Kind::Piece(p)) })) =
                        read_frame::<pb::Request>(&mut recv).await
                    {
                        let requester = Requester { peer_id: &peer_id, tickets: &tickets };
                        let _ = serve_piece(source.as_ref(), &p, requester, &mut send, &RateLimiter::unlimited()).await;
                    }
                });
            }
        });
    }
}

criterion_group!(benches, hashing, store, quic_piece, ticket);
criterion_main!(benches);
