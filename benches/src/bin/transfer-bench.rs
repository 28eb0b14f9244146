//! `transfer-bench`: the single-transfer ceiling on loopback, all in one run.
//!
//! 1. plain TCP: one tokio TCP connection moving the file between two processes;
//! 2. plain quinn: one QUIC connection (the workspace's TLS and transport settings, mutual TLS
//!    with cluster certificates), one stream and `--streams` streams, between two processes;
//! 3. Damselfly: `dfget` of the file through a fresh dfdaemon while one warm dfdaemon (and the
//!    supernode) already hold it: the supernode prefers the warm peer as parent.
//!
//! Repeated `--reps` times, interleaved, so the machine's noise hits every method alike. Also
//! records the peak RSS (VmHWM) of the supernode and of both dfdaemons.
//!
//! ```text
//! cargo build --release --bins && ./target/release/transfer-bench --size 1GiB --reps 3
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use damselfly_benches::harness::{
    bin, cpu_seconds, free_tcp_port, free_udp_port, http_get, metric, serve_files, wait_healthy, write_random_file,
    Proc,
};
use damselfly_benches::report::Table;
use damselfly_benches::units::{fmt_bytes, parse_size};
use damselfly_net::tls::{self, ClusterCa, Identity};
use damselfly_net::transport::{bind_endpoint, transport_config, with_transport};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

#[derive(Parser, Debug)]
#[command(about = "Single-transfer ceiling: dfget from a warm peer vs plain quinn vs plain TCP")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Bytes to move.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    size: u64,
    /// Repetitions of every method (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Streams of the multi-stream quinn transfer (0: skip it).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Work directory for data dirs and logs (default: a temp dir, removed at the end).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where dfget writes (default: the work directory, on the same filesystem as the daemons'
    /// caches, where the plain quinn receiver writes too; dfget then takes the finished file
    /// from its daemon's cache by hard link).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Write the markdown results here as well.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// (internal) Serve `size` bytes over one QUIC connection, split over the streams the client
    /// opens, then exit.
    QuicServer {
        #[arg(long)]
        identity_dir: PathBuf,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        streams: usize,
    },
    /// (internal) Serve `size` bytes over one TCP connection, then exit.
    TcpServer {
        #[arg(long)]
        size: u64,
    },
}

const CHUNK: usize = 1 << 20;
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.role {
        Some(Role::QuicServer { identity_dir, size, streams }) => quic_server(&identity_dir, size, streams).await,
        Some(Role::TcpServer { size }) => tcp_server(size).await,
        None => orchestrate(&args).await,
    }
}

/// Spawns this binary in a server role and returns it with the address it printed.
type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Spawns this binary in a server role and returns it with the address it printed and the rest
/// of its output (it prints `CPU <seconds>` when done).
async fn spawn_server(args: &[String]) -> anyhow::Result<(tokio::process::Child, SocketAddr, Lines)> {
    let exe = std::env::current_exe()?;
    let mut child =
        Command::new(exe).args(args).stdout(Stdio::piped()).stdin(Stdio::null()).kill_on_drop(true).spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??.context("server said nothing")?;
    let addr = line.strip_prefix("LISTEN ").context("unexpected server output")?.parse()?;
    Ok((child, addr, lines))
}

/// The CPU seconds a server role reported when it finished.
async fn server_cpu(lines: &mut Lines) -> f64 {
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    line.ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|l| l.strip_prefix("CPU ").and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

async fn tcp_server(size: u64) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await?;
    println!("LISTEN {}", listener.local_addr()?);
    let (mut stream, _) = listener.accept().await?;
    let buf = vec![0x5au8; CHUNK];
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    println!("CPU {}", own_cpu());
    Ok(())
}

async fn tcp_fetch(addr: SocketAddr, size: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != size {
        bail!("TCP moved {got} bytes, expected {size}");
    }
    Ok(start.elapsed())
}

async fn quic_server(identity_dir: &Path, size: u64, streams: usize) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = Identity::load(identity_dir, "server")?.context("no server identity")?;
    let ca = tls::load_ca_cert(&identity_dir.join("ca.crt"))?;
    let mut server = tls::peer_server_config(&identity, &ca)?;
    server.transport_config(transport_config());
    let endpoint = bind_endpoint(SocketAddr::new(LOOPBACK, 0), Some(server))?;
    println!("LISTEN {}", endpoint.local_addr()?);
    let conn = endpoint.accept().await.context("endpoint closed")?.await?;
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut go = [0u8; 1];
        recv.read_exact(&mut go).await?;
        let share = size / streams as u64 + u64::from((i as u64) < size % streams as u64);
        let chunk = chunk.clone();
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                send.write_chunk(chunk.slice(..n)).await?;
                left -= n as u64;
            }
            send.finish()?;
            send.stopped().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    println!("CPU {}", own_cpu());
    Ok(())
}

/// Fetches over QUIC; with `sink`, every byte is also written at its offset into that (new)
/// file, as a store would.
async fn quic_fetch(
    identity_dir: &Path,
    addr: SocketAddr,
    size: u64,
    streams: usize,
    sink: Option<&Path>,
) -> anyhow::Result<Duration> {
    let sink = match sink {
        Some(path) => Some(std::sync::Arc::new(std::fs::File::create(path)?)),
        None => None,
    };
    let identity = Identity::load(identity_dir, "client")?.context("no client identity")?;
    let ca = tls::load_ca_cert(&identity_dir.join("ca.crt"))?;
    let client = with_transport(tls::client_config(Some(&identity), &ca)?);
    let endpoint = bind_endpoint(SocketAddr::new(LOOPBACK, 0), None)?;
    let start = Instant::now();
    let conn = endpoint.connect_with(client, addr, tls::PEER_SERVER_NAME)?.await?;
    let mut tasks = Vec::new();
    for i in 0..streams {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&[1]).await?;
        let sink = sink.clone();
        let base = (size / streams as u64) * i as u64 + (i as u64).min(size % streams as u64);
        tasks.push(tokio::spawn(async move {
            // Like a store would: collect 1 MiB, then write it at its offset on a blocking
            // thread while the next block arrives.
            let mut got = 0u64;
            let mut block: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut busy: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
            loop {
                let chunk = recv.read_chunk(usize::MAX, true).await?;
                let end = chunk.is_none();
                if let Some(chunk) = &chunk {
                    got += chunk.bytes.len() as u64;
                    block.extend_from_slice(&chunk.bytes);
                }
                if let (Some(file), true) = (&sink, block.len() >= CHUNK || end && !block.is_empty()) {
                    use std::os::unix::fs::FileExt;
                    if let Some(b) = busy.take() {
                        b.await??;
                    }
                    let data = std::mem::replace(&mut block, Vec::with_capacity(CHUNK));
                    let (file, at) = (file.clone(), base + got - data.len() as u64);
                    busy = Some(tokio::task::spawn_blocking(move || file.write_all_at(&data, at)));
                } else if sink.is_none() {
                    block.clear();
                }
                if end {
                    break;
                }
            }
            if let Some(b) = busy.take() {
                b.await??;
            }
            anyhow::Ok(got)
        }));
    }
    let mut got = 0;
    for t in tasks {
        got += t.await??;
    }
    let took = start.elapsed();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    if got != size {
        bail!("QUIC moved {got} bytes, expected {size}");
    }
    Ok(took)
}

/// One measured transfer.
struct Sample {
    method: String,
    seconds: f64,
    /// CPU seconds of every process involved (both ends; for dfget also both dfdaemons and the
    /// supernode).
    cpu: f64,
    note: String,
}

struct Cluster {
    work: PathBuf,
    supernode: Proc,
    sn_http: SocketAddr,
    sn_quic: SocketAddr,
    warm: Proc,
    warm_http: SocketAddr,
}

async fn start_daemon(work: &Path, name: &str, ip: IpAddr, sn_quic: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
    let http = SocketAddr::new(ip, free_tcp_port(ip)?);
    let peer = SocketAddr::new(ip, free_udp_port(ip)?);
    let data = work.join(name);
    let args = vec![
        "--supernode".into(),
        sn_quic.to_string(),
        "--proxy-listen".into(),
        http.to_string(),
        "--peer-listen".into(),
        peer.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--join-token-file".into(),
        work.join("sn/join-token").display().to_string(),
    ];
    let mut proc = Proc::spawn(name, &work.join(format!("{name}.log")), &bin("dfdaemon")?, &args)?;
    wait_healthy(http, &mut proc, Duration::from_secs(30)).await?;
    Ok((proc, http))
}

/// Runs dfget; returns its wall time and CPU seconds.
async fn dfget(url: &str, digest: &str, daemon: SocketAddr, out: &Path, log: &Path) -> anyhow::Result<(Duration, f64)> {
    let start = Instant::now();
    let times = log.with_extension("time");
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%U %S", "-o", &times.display().to_string()])
        .arg(bin("dfget")?)
        .args([url, "-O", &out.display().to_string(), "--digest", digest, "--no-progress"])
        .arg("--daemon")
        .arg(format!("http://{daemon}"))
        .stdout(Stdio::from(std::fs::File::create(log)?))
        .stderr(Stdio::from(std::fs::File::create(log.with_extension("err"))?))
        .status()
        .await?;
    let took = start.elapsed();
    if !status.success() {
        bail!("dfget failed ({status}): {}", std::fs::read_to_string(log.with_extension("err")).unwrap_or_default());
    }
    let cpu = std::fs::read_to_string(&times)
        .ok()
        .and_then(|t| t.lines().last().map(|l| l.split_whitespace().filter_map(|v| v.parse::<f64>().ok()).sum()))
        .unwrap_or(f64::NAN);
    Ok((took, cpu))
}

async fn start_cluster(work: &Path, url: &str, digest: &str, output_dir: &Path) -> anyhow::Result<Cluster> {
    let sn_ip = LOOPBACK;
    let sn_http = SocketAddr::new(sn_ip, free_tcp_port(sn_ip)?);
    let sn_quic = SocketAddr::new(sn_ip, free_udp_port(sn_ip)?);
    // The origin listens on loopback, which a supernode fetches from only when it is named.
    let origin = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    let args = vec![
        "--quic-listen".into(),
        sn_quic.to_string(),
        "--http-listen".into(),
        sn_http.to_string(),
        "--data-dir".into(),
        work.join("sn").display().to_string(),
        "--allow-origin".into(),
        origin,
    ];
    let mut supernode = Proc::spawn("supernode", &work.join("supernode.log"), &bin("supernode")?, &args)?;
    wait_healthy(sn_http, &mut supernode, Duration::from_secs(30)).await?;
    let (warm, warm_http) = start_daemon(work, "warm", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), sn_quic).await?;
    let out = output_dir.join(format!("dfbench-transfer-warm-{}", std::process::id()));
    let took = dfget(url, digest, warm_http, &out, &work.join("dfget-warm.log")).await;
    let _ = std::fs::remove_file(&out);
    eprintln!("warmed the first dfdaemon in {:.2} s", took?.0.as_secs_f64());
    Ok(Cluster { work: work.to_path_buf(), supernode, sn_http, sn_quic, warm, warm_http })
}

async fn damselfly_rep(c: &Cluster, rep: usize, url: &str, digest: &str, output_dir: &Path) -> anyhow::Result<Sample> {
    let name = format!("cold{rep}");
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3 + rep as u8));
    let (daemon, http) = start_daemon(&c.work, &name, ip, c.sn_quic).await?;
    let out = output_dir.join(format!("dfbench-transfer-{}-{rep}", std::process::id()));
    eprintln!(
        "rep {rep}: downloading dfdaemon pid {:?}, uploading dfdaemon pid {:?}, supernode pid {:?} (for perf -p)",
        daemon.pid(),
        c.warm.pid(),
        c.supernode.pid()
    );
    let cpu_before = [c.supernode.cpu_seconds(), c.warm.cpu_seconds(), daemon.cpu_seconds()];
    let took = dfget(url, digest, http, &out, &c.work.join(format!("dfget-{name}.log"))).await;
    let cpu_after = [c.supernode.cpu_seconds(), c.warm.cpu_seconds(), daemon.cpu_seconds()];
    let _ = std::fs::remove_file(&out);
    let (took, dfget_cpu) = took?;
    let cpu_each: Vec<f64> =
        cpu_before.iter().zip(&cpu_after).map(|(b, a)| a.unwrap_or(f64::NAN) - b.unwrap_or(f64::NAN)).collect();
    let cpu = dfget_cpu + cpu_each.iter().sum::<f64>();
    let (_, page) = http_get(http, "/metrics").await?;
    let from_peer = metric(&page, "damselfly_dfdaemon_download_bytes_total", "source=\"peer\"");
    let from_sn = metric(&page, "damselfly_dfdaemon_download_bytes_total", "source=\"supernode\"");
    let from_origin = metric(&page, "damselfly_dfdaemon_download_bytes_total", "source=\"origin\"");
    let rss = daemon.peak_rss().unwrap_or(0);
    daemon.stop(Duration::from_secs(5)).await;
    Ok(Sample {
        method: "dfget from a warm peer".into(),
        seconds: took.as_secs_f64(),
        cpu,
        note: format!(
            "CPU s: dfget {dfget_cpu:.2}, downloading dfdaemon {:.2}, uploading dfdaemon {:.2}, supernode {:.2}; \
             from peer {}, supernode {}, origin {}; downloading dfdaemon peak RSS {}",
            cpu_each[2],
            cpu_each[1],
            cpu_each[0],
            fmt_bytes(from_peer),
            fmt_bytes(from_sn),
            fmt_bytes(from_origin),
            fmt_bytes(rss as f64)
        ),
    })
}

async fn orchestrate(args: &Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let temp = tempfile::Builder::new().prefix("dfbench-transfer-").tempdir()?;
    let work = args.work_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(work.join("origin"))?;
    let output_dir = args.output_dir.clone().unwrap_or_else(|| work.join("out"));
    std::fs::create_dir_all(&output_dir)?;

    // Certificates for the plain quinn transfer, from a cluster CA like the product's.
    let ids = work.join("ids");
    let ca = ClusterCa::generate()?;
    ca.issue_peer_identity("bench-server")?.save(&ids, "server")?;
    ca.issue_peer_identity("bench-client")?.save(&ids, "client")?;
    tls::save_ca_cert(&ids.join("ca.crt"), &ca.cert_der())?;

    eprintln!("writing a {} origin file ...", fmt_bytes(args.size as f64));
    let digest = write_random_file(&work.join("origin/blob"), args.size, 42)?;
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await?;
    let url = format!("http://{}/blob", listener.local_addr()?);
    let origin = tokio::spawn(serve_files(listener, work.join("origin")));

    let cluster = start_cluster(&work, &url, &digest, &output_dir).await?;
    let mut samples = Vec::new();
    for rep in 0..args.reps {
        let (child, addr, mut lines) =
            spawn_server(&["tcp-server".into(), "--size".into(), args.size.to_string()]).await?;
        let before = own_cpu();
        let took = tcp_fetch(addr, args.size).await?;
        let cpu = own_cpu() - before + server_cpu(&mut lines).await;
        drop(child);
        samples.push(Sample {
            method: "plain TCP (tokio), 1 connection".into(),
            seconds: took.as_secs_f64(),
            cpu,
            note: String::new(),
        });

        let sink = work.join(format!("quinn-sink-{rep}"));
        for (streams, store) in [(1, false), (args.streams, false), (1, true)].into_iter().filter(|&(s, _)| s > 0) {
            let role = vec![
                "quic-server".into(),
                "--identity-dir".into(),
                ids.display().to_string(),
                "--size".into(),
                args.size.to_string(),
                "--streams".into(),
                streams.to_string(),
            ];
            let (mut child, addr, mut lines) = spawn_server(&role).await?;
            let before = own_cpu();
            let took = quic_fetch(&ids, addr, args.size, streams, store.then_some(sink.as_path())).await?;
            let _ = std::fs::remove_file(&sink);
            let cpu = own_cpu() - before + server_cpu(&mut lines).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            samples.push(Sample {
                cpu,
                method: format!(
                    "plain quinn, 1 connection, {streams} stream{}{}",
                    if streams == 1 { "" } else { "s" },
                    if store { ", receiver writes a new file" } else { "" }
                ),
                seconds: took.as_secs_f64(),
                note: String::new(),
            });
        }

        let sample = damselfly_rep(&cluster, rep, &url, &digest, &output_dir).await?;
        eprintln!("rep {rep}: dfget {:.2} s ({})", sample.seconds, sample.note);
        samples.push(sample);
    }

    let (_, sn_page) = http_get(cluster.sn_http, "/metrics").await?;
    let (_, warm_page) = http_get(cluster.warm_http, "/metrics").await?;
    let sn_rss = cluster.supernode.peak_rss().unwrap_or(0);
    let warm_rss = cluster.warm.peak_rss().unwrap_or(0);
    let warm_upload = metric(&warm_page, "damselfly_dfdaemon_upload_bytes_total", "");
    let sn_upload = metric(&sn_page, "damselfly_supernode_upload_bytes_total", "");
    cluster.warm.stop(Duration::from_secs(5)).await;
    cluster.supernode.stop(Duration::from_secs(5)).await;
    origin.abort();

    let md = render(args, &samples, sn_rss, warm_rss, warm_upload, sn_upload);
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, &md)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn render(args: &Args, samples: &[Sample], sn_rss: u64, warm_rss: u64, warm_upload: f64, sn_upload: f64) -> String {
    let size = args.size as f64;
    let mut methods: Vec<&str> = Vec::new();
    for s in samples {
        if !methods.contains(&s.method.as_str()) {
            methods.push(&s.method);
        }
    }
    let rate = |m: &str| median(samples.iter().filter(|s| s.method == m).map(|s| size / s.seconds / 1e9).collect());
    let quinn = rate("plain quinn, 1 connection, 1 stream");
    let mut t = Table::new([
        "method",
        "GB/s per repetition",
        "median GB/s",
        "÷ plain quinn (1 stream)",
        "CPU s per GiB, all processes (median)",
    ]);
    for m in &methods {
        let reps: Vec<String> =
            samples.iter().filter(|s| s.method == *m).map(|s| format!("{:.3}", size / s.seconds / 1e9)).collect();
        let cpu =
            median(samples.iter().filter(|s| s.method == *m).map(|s| s.cpu / size * f64::from(1u32 << 30)).collect());
        t.row([
            m.to_string(),
            reps.join(", "),
            format!("{:.3}", rate(m)),
            format!("{:.2}", rate(m) / quinn),
            format!("{cpu:.2}"),
        ]);
    }
    let notes: Vec<String> = samples
        .iter()
        .filter(|s| !s.note.is_empty())
        .map(|s| format!("- {}: {:.2} s; {}", s.method, s.seconds, s.note))
        .collect();
    format!(
        "Moving {} once between two processes on loopback, {} repetitions interleaved.\n\n{}\n\
         Peak RSS (VmHWM) over the whole run: supernode {}, warm (uploading) dfdaemon {}; the \
         downloading dfdaemons' are in the notes. Bytes uploaded: warm dfdaemon {}, supernode {} \
         (includes the warm-up).\n\n{}\n",
        fmt_bytes(size),
        args.reps,
        t.to_markdown(),
        fmt_bytes(sn_rss as f64),
        fmt_bytes(warm_rss as f64),
        fmt_bytes(warm_upload),
        fmt_bytes(sn_upload),
        notes.join("\n")
    )
}
