//! `swarm-bench`: the swarm benchmark on real hosts with real bandwidth (network namespaces
//! with `tbf` caps), Damselfly against two baselines in the same run.
//!
//! For every image and every N it runs, on the same namespaces and caps:
//! - `damselfly`: a supernode on the supernode's host, a dfdaemon per host, every host fetching
//!   every blob of the image with `dfget` at the same moment, each naming the image as its
//!   `--group` (one image pull is one swarm, as through the registry mirror; `--no-group`: blob
//!   by blob);
//! - `direct`: every host fetching every blob straight from the origin registry (`curl`);
//! - `proxy`: every host fetching through a `docker-registry` pull-through cache on the
//!   supernode's host (`curl`), cold at the start of each run;
//! - `bittorrent`: opentracker and a seeding aria2c (holding every blob already) on the seed host,
//!   one private multi-file torrent of all the image's blobs (256 KiB pieces), an aria2c leecher
//!   per host started at the same moment; leechers keep seeding until every host has finished.
//!
//! Two topologies: `split` (the origin registry and the supernode each on a host of their own) and
//! `symmetric` (origin, supernode, cache, tracker and seeder on ONE seed host, capped like any
//! other host, so that the sources' uplink is as scarce as every host's).
//!
//! It records each host's completion time, the origin's blob bytes (its access log), the bytes
//! leaving the source hosts' interfaces, the supernode's (or seeder's) upload bytes and peak RSS,
//! the machine's busy CPU time during the run, and divides completion times by the lower bound
//! `max(F/u_s, F/d_min, N·F/(u_s+Σu_i))`. Run as root (see `benches/scripts/swarm.sh` and
//! `benches/scripts/swarm-symmetric.sh`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use damselfly_benches::bound::{lower_bound, Bound};
use damselfly_benches::harness::{
    bin, children_cpu_seconds, comm, cpu_seconds, machine_busy_seconds, machine_irq_seconds, metric, peak_rss,
    CpuGroup, Proc,
};
use damselfly_benches::limited::{self, parse_limited, LimitedHost, Sample};
use damselfly_benches::netns::{self, cleanup_prefix, Host, Topology};
use damselfly_benches::report::{Chart, Series, Table};
use damselfly_benches::stats::{summarize, Summary};
use damselfly_benches::units::{fmt_bytes, fmt_rate, parse_rate, parse_size};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

#[derive(Parser, Debug)]
#[command(about = "Swarm benchmark: N capped hosts in network namespaces pull one image at once")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Host counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    hosts: Vec<usize>,
    /// An image as NAME=LAYER,LAYER,...[@N,N,...] (repeatable; default: two sizes). A `@N,...`
    /// suffix runs this image at those host counts instead of `--hosts`.
    #[arg(long = "image")]
    images: Vec<String>,
    /// Systems to run at each N, comma-separated: damselfly, direct, proxy, bittorrent.
    #[arg(long, value_delimiter = ',', default_value = "damselfly,direct,proxy")]
    systems: Vec<String>,
    /// `split`: the origin registry and the supernode on hosts of their own (capped by
    /// `--origin-rate` and `--sn-rate`); `symmetric`: origin, supernode, pull-through cache and
    /// BitTorrent tracker + seeder all on ONE seed host capped by `--sn-rate` both ways (the
    /// supernode reaches the origin over that host's own address, uncapped), so u_s is that
    /// host's upload alone.
    #[arg(long, value_enum, default_value_t = TopologyKind::Split)]
    topology: TopologyKind,
    /// Shorthand for `--topology symmetric`.
    #[arg(long)]
    colocate: bool,
    /// Upload cap of every host.
    #[arg(long, value_parser = parse_rate, default_value = "50mbit")]
    host_up: f64,
    /// Download cap of every host.
    #[arg(long, value_parser = parse_rate, default_value = "50mbit")]
    host_down: f64,
    /// Upload and download cap of the origin registry's host.
    #[arg(long, value_parser = parse_rate, default_value = "200mbit")]
    origin_rate: f64,
    /// Upload and download cap of the supernode's host (in the symmetric topology: of the seed
    /// host holding origin, supernode, cache, tracker and seeder).
    #[arg(long, value_parser = parse_rate, default_value = "200mbit")]
    sn_rate: f64,
    /// Prefix of the namespace names (default `dfb<pid>-`).
    #[arg(long)]
    prefix: Option<String>,
    /// Directory for the results (markdown, JSON, SVG).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    /// Stem of the result files.
    #[arg(long, default_value = "swarm")]
    name: String,
    /// The repository root (for scripts/make-image.py).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,
    /// A pull that has not finished after this many times the bound (plus 60 s) is stopped.
    #[arg(long, default_value_t = 20.0)]
    timeout_factor: f64,
    /// Keep the work directory (logs, data dirs).
    #[arg(long)]
    keep: bool,
    /// Before each run, wait until fewer than this many cores are busy with other work (sampled
    /// over 1 s), for at most `--quiet-wait` seconds: the machine may be shared.
    #[arg(long)]
    quiet_below: Option<f64>,
    /// The longest wait for `--quiet-below`, seconds.
    #[arg(long, default_value_t = 60.0)]
    quiet_wait: f64,
    /// Host i starts its pull i times this many milliseconds after host 0 (0: all at once), as
    /// when a rollout reaches hosts one after another: the first host is then the first to
    /// register for every blob. Completion times are from each host's own start.
    #[arg(long, default_value_t = 0)]
    stagger_ms: u64,
    /// A line describing the machine, date and commit, recorded in every run of the JSON.
    #[arg(long, default_value = "")]
    machine: String,
    /// Only redraw the SVG charts from a `swarm.json` of an earlier run (into `--results`).
    #[arg(long)]
    charts_from: Option<PathBuf>,
    /// A dfdaemon TOML config file given to every dfdaemon (`--config`), for experiments such
    /// as a longer `stall_timeout`; flags still win.
    #[arg(long)]
    daemon_config: Option<PathBuf>,
    /// A supernode TOML config file (`--config`), for experiments such as other `[scheduler]`
    /// settings; flags still win.
    #[arg(long)]
    supernode_config: Option<PathBuf>,
    /// A dfdaemon TOML config for one host, as `IDX=FILE` (repeatable), e.g. `0=limits.toml`
    /// with `download_rate = "4MiB"`: host IDX's daemon gets it instead of `--daemon-config`,
    /// its `/metrics` are sampled every 200 ms during the run, and the report compares its
    /// measured rates with its limits ("Rate-limited hosts").
    #[arg(long = "limited", value_parser = parse_limited)]
    limited: Vec<(usize, PathBuf)>,
    /// Damselfly's dfgets name no `--group`: each blob is a swarm of its own instead of the
    /// image being one (to compare the two).
    #[arg(long)]
    no_group: bool,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// (internal) Runs inside a host's namespace: waits for the start time, fetches every blob
    /// at once, prints a JSON report.
    Agent {
        /// Start time, milliseconds since the Unix epoch.
        #[arg(long)]
        start_at_ms: u64,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// `dfget` or `curl`.
        #[arg(long)]
        tool: String,
        /// dfget's daemon URL.
        #[arg(long, default_value = "")]
        daemon: String,
        /// Path of dfget.
        #[arg(long, default_value = "dfget")]
        dfget: PathBuf,
        /// dfget's `--group` for every blob (none: each blob on its own).
        #[arg(long)]
        group: Option<String>,
        /// URL@DIGEST of each blob (aria2c: the file's path under the output directory).
        #[arg(long = "blob")]
        blobs: Vec<String>,
        /// aria2c: the .torrent file.
        #[arg(long)]
        torrent: Option<PathBuf>,
        /// aria2c: its `--bt-max-peers`.
        #[arg(long, default_value_t = 55)]
        bt_max_peers: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TopologyKind {
    /// Origin registry and supernode on hosts of their own.
    Split,
    /// Origin registry, supernode, cache, tracker and seeder on one seed host.
    Symmetric,
}

const ORIGIN_PORT: u16 = 5000;
const SN_QUIC: u16 = 8002;
const SN_HTTP: u16 = 8001;
/// Not 5000: in the symmetric topology the cache shares its host (and address) with the origin.
const PROXY_PORT: u16 = 5001;
const DAEMON_HTTP: u16 = 65001;
const DAEMON_PEER: u16 = 65002;
const REPO: &str = "bench/app";
const TRACKER_PORT: u16 = 6969;
const BT_PORT: u16 = 6881;
const SEEDER_RPC: u16 = 6800;
const RPC_SECRET: &str = "swarmbench";
/// The systems `--systems` knows.
const SYSTEMS: [&str; 4] = ["damselfly", "direct", "proxy", "bittorrent"];

#[derive(Debug, Serialize, Deserialize)]
struct AgentReport {
    /// Each blob's finish time, ms since the epoch (None: failed).
    ends_ms: Vec<Option<f64>>,
    errors: Vec<String>,
    /// CPU seconds of the fetch processes (dfget or curl) together.
    #[serde(default)]
    client_cpu: f64,
}

#[derive(Clone, Debug)]
struct Image {
    name: String,
    layers: Vec<u64>,
    /// (digest, size) of the config and every layer.
    blobs: Vec<(String, u64)>,
    /// The host counts to run it at.
    hosts: Vec<usize>,
    /// Its torrent, when `bittorrent` is among the systems.
    torrent: Option<Torrent>,
}

/// One private multi-file torrent holding every blob of an image (files named by their hex
/// digest), and a directory that already holds the files (the seeder's `--dir`).
#[derive(Clone, Debug)]
struct Torrent {
    file: PathBuf,
    /// Directory containing `name/`.
    root: PathBuf,
    /// The torrent's name: the directory the files are in.
    name: String,
    info_hash: String,
}

impl Image {
    fn bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.1).sum()
    }
}

/// One (system, N, image) run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunResult {
    system: String,
    image: String,
    image_bytes: u64,
    hosts: usize,
    bound: Bound,
    completion: Vec<Option<f64>>,
    summary: Option<Summary>,
    origin_blob_bytes: u64,
    origin_blob_requests: u64,
    supernode_upload: f64,
    supernode_origin: f64,
    peer_bytes: f64,
    host_origin_fallback: f64,
    proxy_served: u64,
    supernode_peak_rss: u64,
    daemon_peak_rss_max: u64,
    /// CPU seconds used by the fetching clients (dfget or curl) of every host.
    #[serde(default)]
    client_cpu: f64,
    /// CPU seconds used by the serving processes (supernode and dfdaemons, or the cache, or the
    /// tracker and seeder).
    #[serde(default)]
    server_cpu: f64,
    /// `split` or `symmetric`.
    #[serde(default)]
    topology: String,
    /// Machine, date and commit (`--machine`).
    #[serde(default)]
    measured: String,
    /// BitTorrent: payload bytes the seeder uploaded (aria2c's own count).
    #[serde(default)]
    seed_upload: f64,
    /// Bytes that left the source hosts' interfaces during the run (frames, headers included).
    #[serde(default)]
    sources_wire_bytes: f64,
    /// Busy CPU seconds of the whole machine from the common start to the last host's end.
    #[serde(default)]
    machine_cpu: f64,
    /// That window, seconds.
    #[serde(default)]
    window: f64,
    /// CPU seconds of the benchmark's own processes (its cgroup: registry, servers, agents,
    /// clients) in that window; `None` without a cgroup to read. With tick-based accounting (no
    /// `CONFIG_IRQ_TIME_ACCOUNTING`) this includes the softirq work (packet processing) done in
    /// those processes' context.
    #[serde(default)]
    bench_cpu: Option<f64>,
    /// Interrupt + softirq time of the whole machine in that window, seconds (`/proc/stat`; with
    /// tick-based accounting partly inside `bench_cpu` already).
    #[serde(default)]
    irq_cpu: f64,
    /// Cores busy on the machine during the second before the system was started (load from
    /// outside the benchmark).
    #[serde(default)]
    background_cores: f64,
    /// Distinct WARN/ERROR messages of the Damselfly processes, with counts.
    warnings: Vec<(String, usize)>,
    errors: Vec<String>,
    /// Hosts run with their own daemon config (`--limited`), measured against their limits.
    #[serde(default)]
    limited: Vec<LimitedHost>,
    /// Damselfly: the dfgets named the image as their `--group` (one swarm for the image);
    /// false with `--no-group`, for the other systems, and in runs from before groups.
    #[serde(default)]
    grouped: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match &args.role {
        Some(Role::Agent { start_at_ms, out, tool, daemon, dfget, group, blobs, torrent, bt_max_peers }) => {
            if tool == "aria2c" {
                let torrent = torrent.as_deref().context("--tool aria2c needs --torrent")?;
                rt.block_on(agent_bittorrent(*start_at_ms, out, torrent, *bt_max_peers, blobs))
            } else {
                rt.block_on(agent(
                    *start_at_ms,
                    out,
                    tool,
                    Dfget { daemon, path: dfget, group: group.as_deref() },
                    blobs,
                ))
            }
        }
        None if args.charts_from.is_some() => redraw(&args),
        None => {
            let prefix = args.prefix.clone().unwrap_or_else(|| format!("dfb{}-", std::process::id() % 100_000));
            // Every process started from here on is accounted in this group.
            let cpu_group = CpuGroup::join(&format!("{prefix}cpu"));
            if cpu_group.is_none() {
                eprintln!("no cgroup for CPU accounting: the benchmark's own CPU will not be reported");
            }
            let result = rt.block_on(async {
                tokio::select! {
                    r = orchestrate(&args, &prefix, cpu_group.as_ref()) => r,
                    _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
                }
            });
            rt.shutdown_timeout(Duration::from_secs(2));
            let left = cleanup_prefix(&prefix);
            if left > 0 {
                eprintln!("removed {left} leftover namespaces {prefix}*");
            }
            drop(cpu_group);
            result
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// How an agent runs dfget.
struct Dfget<'a> {
    /// The daemon's URL.
    daemon: &'a str,
    /// The binary.
    path: &'a Path,
    /// `--group` for every blob.
    group: Option<&'a str>,
}

async fn agent(start_at_ms: u64, out: &Path, tool: &str, dfget: Dfget<'_>, blobs: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let wait = start_at_ms as f64 - epoch_ms();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
    }
    let mut tasks = Vec::new();
    for blob in blobs {
        let (url, digest) = blob.rsplit_once('@').context("blob must be URL@DIGEST")?;
        let file = out.join(digest.trim_start_matches("sha256:"));
        let mut cmd = match tool {
            "dfget" => {
                let mut c = Command::new(dfget.path);
                c.args([
                    url,
                    "-O",
                    &file.display().to_string(),
                    "--digest",
                    digest,
                    "--no-progress",
                    "--daemon",
                    dfget.daemon,
                ]);
                if let Some(group) = dfget.group {
                    c.args(["--group", group]);
                }
                c
            }
            "curl" => {
                let mut c = Command::new("curl");
                c.args(["-fsS", "--noproxy", "*", "-o", &file.display().to_string(), url]);
                c
            }
            other => bail!("unknown tool {other}"),
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
        let (digest, tool) = (digest.to_string(), tool.to_string());
        tasks.push(tokio::spawn(async move {
            let output = cmd.output().await;
            let end = epoch_ms();
            match output {
                Ok(o) if o.status.success() => {
                    if tool == "curl" {
                        let got = sha256_file(&file).await?;
                        if got != digest {
                            bail!("{digest}: downloaded {got}");
                        }
                    }
                    Ok(end)
                }
                Ok(o) => bail!("{digest}: {} {}", o.status, String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => bail!("{digest}: {e}"),
            }
        }));
    }
    let mut report = AgentReport { ends_ms: Vec::new(), errors: Vec::new(), client_cpu: 0.0 };
    for t in tasks {
        match t.await {
            Ok(Ok(end)) => report.ends_ms.push(Some(end)),
            Ok(Err(e)) => {
                report.ends_ms.push(None);
                report.errors.push(e.to_string());
            }
            Err(e) => {
                report.ends_ms.push(None);
                report.errors.push(e.to_string());
            }
        }
    }
    let _ = std::fs::remove_dir_all(out);
    report.client_cpu = children_cpu_seconds().unwrap_or(0.0);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// The aria2c flags of the seeder and of every leecher: no DHT, no local peer discovery, no peer
/// exchange (the tracker is the only way to find peers), no upload limit, and seeding with no
/// ratio or time limit (a finished leecher keeps serving the others until the harness kills it
/// once every host has finished; aria2c's default ratio of 1.0 would stop it early).
fn aria2c_flags(max_peers: usize) -> Vec<String> {
    [
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-ratio=0.0",
        "--max-overall-upload-limit=0",
        "--max-upload-limit=0",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--disable-ipv6=true",
        "--auto-save-interval=0",
        "--allow-overwrite=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--listen-port={BT_PORT}"), format!("--bt-max-peers={max_peers}")])
    .collect()
}

/// The agent of the `bittorrent` system: at the start time it starts an aria2c leecher that keeps
/// running (and seeding) after this agent has reported; aria2c's `--on-bt-download-complete`
/// hook (run when the download is complete, before seeding) stamps the completion time. Then the
/// agent checks every blob's sha256, prints its report and exits, leaving aria2c to the harness.
async fn agent_bittorrent(
    start_at_ms: u64,
    out: &Path,
    torrent: &Path,
    max_peers: usize,
    blobs: &[String],
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(out)?;
    let done = out.join("bt-done");
    let hook = out.join("bt-hook.sh");
    let quoted = |p: &Path| format!("'{}'", p.display());
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ndate +%s%N > {tmp} && mv {tmp} {done}\n",
            tmp = quoted(&out.join("bt-done.tmp")),
            done = quoted(&done)
        ),
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let log_path = out.join("aria2c.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new("aria2c");
    cmd.args(aria2c_flags(max_peers))
        .arg(format!("--dir={}", out.display()))
        .arg(format!("--on-bt-download-complete={}", hook.display()))
        .arg(torrent)
        .current_dir(out)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let wait = start_at_ms as f64 - epoch_ms();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
    }
    let mut report = AgentReport { ends_ms: Vec::new(), errors: Vec::new(), client_cpu: 0.0 };
    // Not killed on drop: it goes on seeding after this agent exits.
    let mut child = cmd.spawn().context("cannot start aria2c")?;
    let end_ms = loop {
        if let Ok(text) = std::fs::read_to_string(&done) {
            if let Ok(ns) = text.trim().parse::<f64>() {
                break Some(ns / 1e6);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            report.errors.push(format!("aria2c exited ({status}) before completing: {}", tail.join(" / ")));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for blob in blobs {
        let (path, digest) = blob.rsplit_once('@').context("blob must be PATH@DIGEST")?;
        if end_ms.is_none() {
            report.ends_ms.push(None);
            continue;
        }
        match sha256_file(&out.join(path)).await {
            Ok(got) if got == digest => report.ends_ms.push(end_ms),
            Ok(got) => {
                report.ends_ms.push(None);
                report.errors.push(format!("{digest}: downloaded {got}"));
            }
            Err(e) => {
                report.ends_ms.push(None);
                report.errors.push(format!("{digest}: {e}"));
            }
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    drop(child);
    Ok(())
}

/// `curl -d BODY` (a JSON POST) inside a namespace; returns the body.
async fn ns_post(ns: &str, url: &str, body: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-fsS", "--max-time", "10", "--noproxy", "*"])
        .args(["-H", "Content-Type: application/json", "-d", body, url])
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!("POST {url} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `curl` inside a namespace; returns the body.
async fn ns_get(ns: &str, url: &str, headers: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-fsS", "--max-time", "10", "--noproxy", "*"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!("GET {url} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `url` answers inside `ns`, failing early if `proc` exits.
async fn ns_wait(ns: &str, url: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ns_get(ns, url, &[]).await.is_ok() {
            return Ok(());
        }
        if !proc.running() {
            bail!("{} exited:\n{}", proc.name, proc.tail(20));
        }
        if Instant::now() > deadline {
            bail!("{} did not answer {url} within 30 s:\n{}", proc.name, proc.tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ns_spawn(name: &str, log: &Path, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    Proc::spawn_with(name, log, &mut cmd)
}

fn registry_config(path: &Path, root: &Path, addr: &str, proxy: Option<&str>) -> anyhow::Result<()> {
    let proxy = proxy.map(|url| format!("proxy:\n  remoteurl: {url}\n")).unwrap_or_default();
    let yaml = format!(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    \
         rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{proxy}",
        root.display()
    );
    std::fs::write(path, yaml)?;
    Ok(())
}

/// Blob bytes and GET requests with a 2xx status in a registry access log, from byte `from` on.
fn access_log_blob_bytes(log: &Path, from: u64) -> (u64, u64) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let mut bytes = 0;
    let mut requests = 0;
    for line in text.lines() {
        let Some(start) = line.find("\"GET ") else { continue };
        let rest = &line[start + 5..];
        let Some((path, after)) = rest.split_once('"') else { continue };
        if !path.contains("/blobs/sha256:") {
            continue;
        }
        let mut fields = after.split_whitespace();
        let (Some(status), Some(size)) = (fields.next(), fields.next()) else { continue };
        if status.starts_with('2') {
            bytes += size.parse::<u64>().unwrap_or(0);
            requests += 1;
        }
    }
    (bytes, requests)
}

struct Bench<'a> {
    args: &'a Args,
    cpu_group: Option<&'a CpuGroup>,
    kind: TopologyKind,
    work: PathBuf,
    topo: Topology,
    origin_log: PathBuf,
    runs: usize,
}

impl Bench<'_> {
    /// How many source hosts precede the N hosts: origin and supernode, or the one seed host.
    fn sources(&self) -> usize {
        match self.kind {
            TopologyKind::Split => 2,
            TopologyKind::Symmetric => 1,
        }
    }

    fn origin(&self) -> &Host {
        &self.topo.hosts()[0]
    }

    /// The supernode's host, which also holds the pull-through cache and the BitTorrent tracker
    /// and seeder (the origin's host in the symmetric topology).
    fn sn(&self) -> &Host {
        &self.topo.hosts()[self.sources() - 1]
    }

    /// Samples each `--limited` host's counters every 200 ms while `on` holds.
    fn start_samplers(
        &self,
        n: usize,
        start_at: f64,
        on: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Vec<(usize, tokio::task::JoinHandle<Vec<Sample>>)> {
        let mut out = Vec::new();
        for &(i, _) in self.args.limited.iter().filter(|(i, _)| *i < n) {
            let h = self.host(i).clone();
            let on = on.clone();
            out.push((
                i,
                tokio::spawn(async move {
                    let url = format!("http://{}:{DAEMON_HTTP}/metrics", h.ip);
                    let mut samples = Vec::new();
                    let mut every = tokio::time::interval(Duration::from_millis(200));
                    while on.load(std::sync::atomic::Ordering::Relaxed) {
                        every.tick().await;
                        // Stamped at the middle of the request: the page was written then.
                        let asked = epoch_ms();
                        if let Ok(page) = ns_get(&h.ns, &url, &[]).await {
                            let t = ((asked + epoch_ms()) / 2.0 - start_at) / 1000.0;
                            samples.push(Sample::from_page(t, &page));
                        }
                    }
                    samples
                }),
            ));
        }
        out
    }

    fn host(&self, i: usize) -> &Host {
        &self.topo.hosts()[self.sources() + i]
    }

    /// When host `i` starts its pull (epoch ms), the run starting at `start_at`: `--stagger-ms`.
    fn host_start(&self, start_at: f64, i: usize) -> f64 {
        start_at + (i as u64 * self.args.stagger_ms) as f64
    }

    /// u_s: the upload of every source host.
    fn sources_up(&self) -> f64 {
        self.topo.hosts()[..self.sources()].iter().map(|h| h.up).sum()
    }

    /// Bytes sent so far by the source hosts' interfaces.
    fn sources_tx(&self) -> u64 {
        self.topo.hosts()[..self.sources()].iter().filter_map(|h| netns::tx_bytes(&h.ns, "eth0")).sum()
    }

    /// The tracker's announce URL.
    fn tracker_url(&self) -> String {
        format!("http://{}:{TRACKER_PORT}/announce", self.sn().ip)
    }

    /// Lays out the image's blobs (from the OCI layout `oci`) as the files of one torrent and
    /// makes the private torrent: 256 KiB pieces, the tracker on the seed host.
    async fn make_torrent(&self, name: &str, oci: &Path, blobs: &[(String, u64)]) -> anyhow::Result<Torrent> {
        let root = self.work.join(format!("bt-{name}"));
        let tname = format!("image-{name}");
        let dir = root.join(&tname);
        std::fs::create_dir_all(&dir)?;
        for (digest, _) in blobs {
            let hex = digest.trim_start_matches("sha256:");
            let from = oci.join("blobs/sha256").join(hex);
            if std::fs::hard_link(&from, dir.join(hex)).is_err() {
                std::fs::copy(&from, dir.join(hex)).with_context(|| format!("blob {digest} not in the layout"))?;
            }
        }
        let file = self.work.join(format!("{name}.torrent"));
        let out = Command::new("mktorrent")
            .args(["-a", &self.tracker_url(), "-l", "18", "-p", "-o"])
            .arg(&file)
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .await
            .context("cannot run mktorrent")?;
        if !out.status.success() {
            bail!("mktorrent failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let show = Command::new("aria2c").arg("-S").arg(&file).stdin(Stdio::null()).output().await?;
        let text = String::from_utf8_lossy(&show.stdout);
        let info_hash = text
            .lines()
            .find_map(|l| l.strip_prefix("Info Hash: "))
            .map(|h| h.trim().to_ascii_lowercase())
            .context("aria2c -S shows no info hash")?;
        Ok(Torrent { file, root, name: tname, info_hash })
    }

    async fn push_image(&self, name: &str, layers: &[u64], seed: u64) -> anyhow::Result<Image> {
        let dir = self.work.join(format!("oci-{name}"));
        let sizes: Vec<String> = layers.iter().map(u64::to_string).collect();
        let script = self.args.repo.join("scripts/make-image.py");
        let out = Command::new("python3")
            .arg(&script)
            .args(["--out", &dir.display().to_string(), "--tag", "v1", "--seed", &seed.to_string()])
            .args(["--layers", &sizes.join(",")])
            .output()
            .await
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !out.status.success() {
            bail!("make-image.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let origin = self.origin();
        let dest = format!("docker://{}:{ORIGIN_PORT}/{REPO}-{name}:v1", origin.ip);
        let status = Command::new("ip")
            .args([
                "netns",
                "exec",
                &origin.ns,
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("oci:{}:v1", dir.display()))
            .arg(&dest)
            .status()
            .await?;
        if !status.success() {
            bail!("skopeo could not push {dest}");
        }
        let manifest = ns_get(
            &origin.ns,
            &format!("http://{}:{ORIGIN_PORT}/v2/{REPO}-{name}/manifests/v1", origin.ip),
            &["Accept: application/vnd.oci.image.manifest.v1+json"],
        )
        .await?;
        let m: serde_json::Value = serde_json::from_str(&manifest)?;
        let mut blobs = Vec::new();
        let entry = |v: &serde_json::Value| -> Option<(String, u64)> {
            Some((v.get("digest")?.as_str()?.to_string(), v.get("size")?.as_u64()?))
        };
        blobs.extend(entry(&m["config"]));
        for l in m["layers"].as_array().context("manifest without layers")? {
            blobs.extend(entry(l));
        }
        let torrent = if self.args.systems.iter().any(|s| s == "bittorrent") {
            Some(self.make_torrent(name, &dir, &blobs).await?)
        } else {
            None
        };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Image { name: name.to_string(), layers: layers.to_vec(), blobs, hosts: Vec::new(), torrent })
    }

    async fn run_one(&mut self, system: &str, n: usize, image: &Image) -> anyhow::Result<RunResult> {
        self.runs += 1;
        let run = self.work.join(format!("run{}-{system}-{n}-{}", self.runs, image.name));
        std::fs::create_dir_all(&run)?;
        let f = image.bytes() as f64;
        let bound = lower_bound(f, self.sources_up(), &vec![self.args.host_up; n], &vec![self.args.host_down; n]);
        let mut procs: Vec<Proc> = Vec::new();
        let mut result = RunResult {
            system: system.into(),
            image: image.name.clone(),
            image_bytes: image.bytes(),
            hosts: n,
            bound,
            completion: Vec::new(),
            summary: None,
            origin_blob_bytes: 0,
            origin_blob_requests: 0,
            supernode_upload: 0.0,
            supernode_origin: 0.0,
            peer_bytes: 0.0,
            host_origin_fallback: 0.0,
            proxy_served: 0,
            supernode_peak_rss: 0,
            daemon_peak_rss_max: 0,
            client_cpu: 0.0,
            server_cpu: 0.0,
            topology: format!("{:?}", self.kind).to_lowercase(),
            measured: self.args.machine.clone(),
            seed_upload: 0.0,
            sources_wire_bytes: 0.0,
            machine_cpu: 0.0,
            window: 0.0,
            bench_cpu: None,
            irq_cpu: 0.0,
            background_cores: 0.0,
            warnings: Vec::new(),
            errors: Vec::new(),
            limited: Vec::new(),
            grouped: system == "damselfly" && !self.args.no_group,
        };
        let (sn_ns, sn_ip, origin_ip) = (self.sn().ns.clone(), self.sn().ip, self.origin().ip);
        let origin_addr = format!("{origin_ip}:{ORIGIN_PORT}");
        let base = match system {
            "damselfly" | "direct" => format!("http://{origin_addr}"),
            "proxy" => format!("http://{sn_ip}:{PROXY_PORT}"),
            "bittorrent" => String::new(),
            other => bail!("unknown system {other}"),
        };
        // Load from outside the benchmark (the machine is shared), for the record; with
        // `--quiet-below`, wait (a bounded time) for it to drop first.
        let waiting_since = Instant::now();
        loop {
            let (busy0, t0) = (machine_busy_seconds(), Instant::now());
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let (Some(a), Some(b)) = (busy0, machine_busy_seconds()) {
                result.background_cores = (b - a) / t0.elapsed().as_secs_f64();
            }
            let quiet = self.args.quiet_below.is_none_or(|limit| result.background_cores < limit);
            if quiet || waiting_since.elapsed().as_secs_f64() >= self.args.quiet_wait {
                break;
            }
        }
        let bt_max_peers = (2 * n + 8).max(55);
        let start_result = self.start_system(system, n, image, bt_max_peers, &run, &mut procs).await;
        if let Err(e) = start_result {
            stop_all(procs).await;
            return Err(e);
        }
        let log_offset = std::fs::metadata(&self.origin_log).map(|m| m.len()).unwrap_or(0);
        let tx0 = self.sources_tx();
        let start_at = epoch_ms() + 2000.0;
        let exe = std::env::current_exe()?;
        let dfget = bin("dfget")?;
        let mut agents = Vec::new();
        for i in 0..n {
            let h = self.host(i).clone();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &h.ns]).arg(&exe).arg("agent");
            cmd.args(["--start-at-ms", &(self.host_start(start_at, i) as u64).to_string()]);
            cmd.args(["--out", &run.join(format!("out{i}")).display().to_string()]);
            match (system, &image.torrent) {
                ("damselfly", _) => {
                    cmd.args(["--tool", "dfget", "--daemon", &format!("http://{}:{DAEMON_HTTP}", h.ip)]);
                    cmd.arg("--dfget").arg(&dfget);
                    // One image pull is one swarm, as through the registry mirror.
                    if !self.args.no_group {
                        cmd.args(["--group", &image.name]);
                    }
                }
                ("bittorrent", Some(t)) => {
                    cmd.args(["--tool", "aria2c", "--bt-max-peers", &bt_max_peers.to_string()]);
                    cmd.arg("--torrent").arg(&t.file);
                }
                ("bittorrent", None) => bail!("image {} has no torrent", image.name),
                _ => {
                    cmd.args(["--tool", "curl"]);
                }
            }
            for (digest, _) in &image.blobs {
                let blob = match &image.torrent {
                    Some(t) if system == "bittorrent" => {
                        format!("{}/{}@{digest}", t.name, digest.trim_start_matches("sha256:"))
                    }
                    _ => format!("{base}/v2/{REPO}-{}/blobs/{digest}@{digest}", image.name),
                };
                cmd.args(["--blob", &blob]);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            agents.push(cmd.spawn()?);
        }
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let samplers = if system == "damselfly" { self.start_samplers(n, start_at, &sampling) } else { Vec::new() };
        let limit = Duration::from_secs_f64(bound.seconds * self.args.timeout_factor + 60.0);
        let wait_all = async {
            // The CPU window opens at the common start (the agents only sleep until then).
            let wait = start_at - epoch_ms();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
            }
            let busy_start = machine_busy_seconds();
            let own_start = self.cpu_group.and_then(CpuGroup::usage_seconds).zip(machine_irq_seconds());
            let mut outs = Vec::new();
            for a in agents {
                outs.push(a.wait_with_output().await);
            }
            (outs, busy_start, own_start)
        };
        let waited = tokio::time::timeout(limit + Duration::from_secs(2), wait_all).await;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok((_, busy_start, own_start)) = &waited {
            if let (Some(a), Some(b)) = (busy_start, machine_busy_seconds()) {
                result.machine_cpu = b - a;
            }
            let own_end = self.cpu_group.and_then(CpuGroup::usage_seconds).zip(machine_irq_seconds());
            if let (Some((cg0, irq0)), Some((cg1, irq1))) = (own_start, own_end) {
                result.bench_cpu = Some(cg1 - cg0);
                result.irq_cpu = irq1 - irq0;
            }
            result.window = (epoch_ms() - start_at) / 1000.0;
        }
        result.sources_wire_bytes = self.sources_tx().saturating_sub(tx0) as f64;
        match waited.map(|w| w.0) {
            Ok(outs) => {
                for (i, out) in outs.into_iter().enumerate() {
                    let parsed = out
                        .map_err(anyhow::Error::from)
                        .and_then(|o| Ok(serde_json::from_slice::<AgentReport>(&o.stdout)?));
                    match parsed {
                        Ok(r) if r.errors.is_empty() => {
                            result.client_cpu += r.client_cpu;
                            let end = r.ends_ms.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                            result.completion.push(Some((end - self.host_start(start_at, i)) / 1000.0));
                        }
                        Ok(r) => {
                            result.completion.push(None);
                            result.errors.push(format!("host {i}: {}", r.errors.join("; ")));
                        }
                        Err(e) => {
                            result.completion.push(None);
                            result.errors.push(format!("host {i}: agent: {e}"));
                        }
                    }
                }
            }
            Err(_) => result.errors.push(format!("pull did not finish within {limit:?}")),
        }
        if result.errors.len() > 3 {
            let more = result.errors.len() - 3;
            result.errors.truncate(3);
            result.errors.push(format!("(+{more} more)"));
        }
        for e in &mut result.errors {
            if e.len() > 300 {
                let cut = (0..=300).rev().find(|&i| e.is_char_boundary(i)).unwrap_or(0);
                e.truncate(cut);
                e.push('…');
            }
        }
        let done: Vec<f64> = result.completion.iter().flatten().copied().collect();
        if !done.is_empty() {
            result.summary = Some(summarize(&done));
        }
        // Let the access log flush.
        tokio::time::sleep(Duration::from_millis(300)).await;
        (result.origin_blob_bytes, result.origin_blob_requests) = access_log_blob_bytes(&self.origin_log, log_offset);
        self.collect(system, n, &sn_ns, sn_ip, &run, &procs, &mut result).await;
        for (i, sampler) in samplers {
            let samples = sampler.await.unwrap_or_default();
            let h = self.host(i);
            let page = ns_get(&h.ns, &format!("http://{}:{DAEMON_HTTP}/metrics", h.ip), &[]).await.unwrap_or_default();
            let completion = result.completion.get(i).copied().flatten();
            result.limited.push(LimitedHost::measure(i, &page, samples, result.image_bytes as f64, completion));
        }
        if system == "bittorrent" {
            // The leechers outlived their agents (they seeded to the others until now).
            self.stop_leechers(n, &mut result);
        }
        stop_all(procs).await;
        if !self.args.keep {
            let _ = std::fs::remove_dir_all(&run);
        }
        Ok(result)
    }

    async fn start_system(
        &self,
        system: &str,
        n: usize,
        image: &Image,
        bt_max_peers: usize,
        run: &Path,
        procs: &mut Vec<Proc>,
    ) -> anyhow::Result<()> {
        let (sn_ns, sn_ip, origin_ip) = (self.sn().ns.clone(), self.sn().ip, self.origin().ip);
        match system {
            "bittorrent" => {
                let t = image.torrent.as_ref().context("no torrent made (bittorrent not in --systems?)")?;
                // A fresh tracker per run: no peers remembered from an earlier run.
                let chroot = run.join("tracker");
                std::fs::create_dir_all(&chroot)?;
                std::fs::write(chroot.join("whitelist"), format!("{}\n", t.info_hash))?;
                let ip = sn_ip.to_string();
                let port = TRACKER_PORT.to_string();
                let args: Vec<String> = ["-i", &ip, "-p", &port, "-P", &port, "-A", &ip, "-w", "/whitelist", "-d"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([chroot.display().to_string()])
                    .collect();
                let program = which("opentracker")?;
                procs.push(ns_spawn("opentracker", &run.join("tracker.log"), &sn_ns, &program, &args)?);
                let stats = format!("http://{sn_ip}:{TRACKER_PORT}/stats?mode=peer");
                let p = procs.last_mut().context("no tracker")?;
                ns_wait(&sn_ns, &stats, p).await?;
                let mut args = aria2c_flags(bt_max_peers);
                args.extend([
                    format!("--dir={}", t.root.display()),
                    "--check-integrity=false".into(),
                    "--bt-seed-unverified=true".into(),
                    "--enable-rpc=true".into(),
                    format!("--rpc-listen-port={SEEDER_RPC}"),
                    format!("--rpc-secret={RPC_SECRET}"),
                    t.file.display().to_string(),
                ]);
                procs.push(ns_spawn("seeder", &run.join("seeder.log"), &sn_ns, &which("aria2c")?, &args)?);
                // Ready when the tracker knows the seeder.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let peers = ns_get(&sn_ns, &stats, &[]).await.unwrap_or_default();
                    if peers.lines().next().and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0) >= 1 {
                        break;
                    }
                    let seeder = procs.last_mut().context("no seeder")?;
                    if !seeder.running() {
                        bail!("the seeder exited:\n{}", seeder.tail(20));
                    }
                    if Instant::now() > deadline {
                        bail!("the seeder did not announce itself within 30 s:\n{}", seeder.tail(20));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            "damselfly" => {
                let mut args = vec![
                    "--quic-listen".into(),
                    format!("{sn_ip}:{SN_QUIC}"),
                    "--http-listen".into(),
                    format!("{sn_ip}:{SN_HTTP}"),
                    "--data-dir".into(),
                    run.join("sn").display().to_string(),
                    "--insecure-registry".into(),
                    format!("{origin_ip}:{ORIGIN_PORT}"),
                ];
                if let Some(config) = &self.args.supernode_config {
                    args.extend(["--config".to_string(), config.display().to_string()]);
                }
                procs.push(ns_spawn("supernode", &run.join("supernode.log"), &sn_ns, &bin("supernode")?, &args)?);
                let sn = procs.last_mut().context("no supernode")?;
                ns_wait(&sn_ns, &format!("http://{sn_ip}:{SN_HTTP}/healthz"), sn).await?;
                for i in 0..n {
                    let h = self.host(i).clone();
                    let args = vec![
                        "--supernode".into(),
                        format!("{sn_ip}:{SN_QUIC}"),
                        "--proxy-listen".into(),
                        format!("{}:{DAEMON_HTTP}", h.ip),
                        "--peer-listen".into(),
                        format!("{}:{DAEMON_PEER}", h.ip),
                        "--data-dir".into(),
                        run.join(format!("d{i}")).display().to_string(),
                        "--join-token-file".into(),
                        run.join("sn/join-token").display().to_string(),
                        "--insecure-registry".into(),
                        format!("{origin_ip}:{ORIGIN_PORT}"),
                    ];
                    let mut args = args;
                    let own = self.args.limited.iter().find(|(idx, _)| *idx == i).map(|(_, f)| f);
                    if let Some(config) = own.or(self.args.daemon_config.as_ref()) {
                        args.extend(["--config".to_string(), config.display().to_string()]);
                    }
                    let log = run.join(format!("d{i}.log"));
                    procs.push(ns_spawn(&format!("dfdaemon {i}"), &log, &h.ns, &bin("dfdaemon")?, &args)?);
                }
                for i in 0..n {
                    let h = self.host(i).clone();
                    let p = &mut procs[1 + i];
                    ns_wait(&h.ns, &format!("http://{}:{DAEMON_HTTP}/healthz", h.ip), p).await?;
                }
            }
            "proxy" => {
                let config = run.join("proxy.yml");
                let addr = format!("{sn_ip}:{PROXY_PORT}");
                registry_config(
                    &config,
                    &run.join("cache"),
                    &addr,
                    Some(&format!("http://{origin_ip}:{ORIGIN_PORT}")),
                )?;
                let args = vec!["serve".to_string(), config.display().to_string()];
                let program = which("docker-registry")?;
                procs.push(ns_spawn("pull-through cache", &run.join("proxy.log"), &sn_ns, &program, &args)?);
                let p = procs.last_mut().context("no proxy")?;
                ns_wait(&sn_ns, &format!("http://{addr}/v2/"), p).await?;
            }
            _ => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn collect(
        &self,
        system: &str,
        n: usize,
        sn_ns: &str,
        sn_ip: Ipv4Addr,
        run: &Path,
        procs: &[Proc],
        result: &mut RunResult,
    ) {
        result.server_cpu = procs.iter().filter_map(Proc::cpu_seconds).sum();
        match system {
            "damselfly" => {
                if let Ok(page) = ns_get(sn_ns, &format!("http://{sn_ip}:{SN_HTTP}/metrics"), &[]).await {
                    result.supernode_upload = metric(&page, "damselfly_supernode_upload_bytes_total", "");
                    result.supernode_origin = metric(&page, "damselfly_supernode_origin_bytes_total", "");
                }
                result.supernode_peak_rss = procs.first().and_then(Proc::peak_rss).unwrap_or(0);
                for i in 0..n {
                    let h = self.host(i);
                    if let Ok(page) = ns_get(&h.ns, &format!("http://{}:{DAEMON_HTTP}/metrics", h.ip), &[]).await {
                        let name = "damselfly_dfdaemon_download_bytes_total";
                        result.peer_bytes += metric(&page, name, "source=\"peer\"");
                        result.host_origin_fallback += metric(&page, name, "source=\"origin\"");
                    }
                    let rss = procs.get(1 + i).and_then(Proc::peak_rss).unwrap_or(0);
                    result.daemon_peak_rss_max = result.daemon_peak_rss_max.max(rss);
                }
                result.warnings = warnings(procs.iter().map(|p| p.log.as_path()));
            }
            "proxy" => {
                result.proxy_served = access_log_blob_bytes(&run.join("proxy.log"), 0).0;
                result.supernode_peak_rss = procs.first().and_then(Proc::peak_rss).unwrap_or(0);
            }
            "bittorrent" => {
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":"1","method":"aria2.tellActive","params":["token:{RPC_SECRET}",["uploadLength"]]}}"#
                );
                let url = format!("http://127.0.0.1:{SEEDER_RPC}/jsonrpc");
                match ns_post(sn_ns, &url, &body).await {
                    Ok(text) => {
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        result.seed_upload = v["result"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|d| d["uploadLength"].as_str()?.parse::<f64>().ok()).sum())
                            .unwrap_or(0.0);
                    }
                    Err(e) => result.errors.push(format!("seeder statistics: {e}")),
                }
                result.supernode_peak_rss = procs.get(1).and_then(Proc::peak_rss).unwrap_or(0);
            }
            _ => {}
        }
    }

    /// Reads the peak RSS and CPU time of the aria2c leechers left running in the first `n`
    /// hosts, then SIGKILLs them (they are ours: started by our agents in our namespaces).
    fn stop_leechers(&self, n: usize, result: &mut RunResult) {
        for i in 0..n {
            for pid in netns::pids(&self.host(i).ns) {
                if comm(pid).as_deref() != Some("aria2c") {
                    continue;
                }
                result.daemon_peak_rss_max = result.daemon_peak_rss_max.max(peak_rss(pid).unwrap_or(0));
                result.client_cpu += cpu_seconds(pid).unwrap_or(0.0);
                let _ =
                    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            }
        }
    }
}

/// Distinct WARN and ERROR messages in tracing logs (timestamps, spans and ids stripped), most
/// frequent first.
fn warnings<'a>(logs: impl Iterator<Item = &'a Path>) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().map(strip_ansi).filter(|l| l.contains(" WARN ") || l.contains("ERROR ")) {
            let msg = line.split_once(": ").map_or(line.as_str(), |(_, m)| m);
            let msg: String = msg
                .split_whitespace()
                .map(|w| if w.chars().filter(char::is_ascii_hexdigit).count() >= 16 { "…" } else { w })
                .collect::<Vec<_>>()
                .join(" ");
            *counts.entry(msg.chars().take(160).collect()).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(5);
    v
}

/// `text` without ANSI colour escapes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn stop_all(procs: Vec<Proc>) {
    for p in procs.into_iter().rev() {
        p.stop(Duration::from_secs(3)).await;
    }
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found: run `bash scripts/setup.sh`"))
}

/// `NAME=SIZE,SIZE,...[@N,N,...]`: the image's name, its layer sizes and, if given, its own host
/// counts.
fn parse_image(spec: &str) -> anyhow::Result<(String, Vec<u64>, Option<Vec<usize>>)> {
    let (name, rest) = spec.split_once('=').context("--image must be NAME=SIZE,SIZE,...[@N,N,...]")?;
    let (sizes, hosts) = match rest.split_once('@') {
        Some((sizes, hosts)) => {
            let hosts = hosts
                .split(',')
                .map(|h| h.trim().parse::<usize>().with_context(|| format!("bad host count {h:?} in {spec:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (sizes, Some(hosts))
        }
        None => (rest, None),
    };
    let layers = sizes.split(',').map(|s| parse_size(s).map_err(anyhow::Error::msg)).collect::<anyhow::Result<_>>()?;
    Ok((name.to_string(), layers, hosts))
}

async fn orchestrate(args: &Args, prefix: &str, cpu_group: Option<&CpuGroup>) -> anyhow::Result<()> {
    for system in &args.systems {
        if !SYSTEMS.contains(&system.as_str()) {
            bail!("unknown system {system:?} (known: {})", SYSTEMS.join(", "));
        }
    }
    for tool in ["ip", "tc", "curl", "skopeo", "docker-registry", "python3"] {
        which(tool)?;
    }
    if args.systems.iter().any(|s| s == "bittorrent") {
        for tool in ["aria2c", "opentracker", "mktorrent"] {
            which(tool).context("the bittorrent system needs Debian's aria2, opentracker and mktorrent")?;
        }
    }
    for b in ["supernode", "dfdaemon", "dfget"] {
        bin(b)?;
    }
    let kind = if args.colocate { TopologyKind::Symmetric } else { args.topology };
    let images: Vec<(String, Vec<u64>, Option<Vec<usize>>)> = if args.images.is_empty() {
        vec![
            ("small".into(), vec![16 << 20, 8 << 20, 4 << 20, 4 << 20], None),
            ("large".into(), vec![64 << 20, 32 << 20, 16 << 20, 16 << 20], None),
        ]
    } else {
        args.images.iter().map(|s| parse_image(s)).collect::<anyhow::Result<_>>()?
    };
    let max_n = images
        .iter()
        .flat_map(|(_, _, hosts)| hosts.as_deref().unwrap_or(&args.hosts).iter().copied())
        .max()
        .unwrap_or(2);
    let temp = tempfile::Builder::new().prefix("dfbench-swarm-").tempdir()?;
    let work = temp.path().to_path_buf();
    let mut spec: Vec<(String, f64, f64)> = match kind {
        TopologyKind::Split => {
            eprintln!("namespaces {prefix}*: origin, supernode and {max_n} hosts; work dir {}", work.display());
            vec![("reg".into(), args.origin_rate, args.origin_rate), ("sn".into(), args.sn_rate, args.sn_rate)]
        }
        TopologyKind::Symmetric => {
            eprintln!(
                "namespaces {prefix}*: one seed host (origin, supernode, cache, tracker, seeder) and {max_n} hosts; \
                 work dir {}",
                work.display()
            );
            vec![("seed".into(), args.sn_rate, args.sn_rate)]
        }
    };
    spec.extend((0..max_n).map(|i| (format!("h{i}"), args.host_up, args.host_down)));
    let spec_ref: Vec<(&str, f64, f64)> = spec.iter().map(|(n, u, d)| (n.as_str(), *u, *d)).collect();
    let topo = Topology::create(prefix, &spec_ref)?;

    let origin_log = work.join("origin.log");
    let mut bench = Bench { args, cpu_group, kind, work: work.clone(), topo, origin_log: origin_log.clone(), runs: 0 };
    let config = work.join("origin.yml");
    let origin_addr = format!("{}:{ORIGIN_PORT}", bench.origin().ip);
    registry_config(&config, &work.join("registry"), &origin_addr, None)?;
    let mut origin = ns_spawn(
        "origin registry",
        &origin_log,
        &bench.origin().ns.clone(),
        &which("docker-registry")?,
        &["serve".into(), config.display().to_string()],
    )?;
    ns_wait(&bench.origin().ns.clone(), &format!("http://{origin_addr}/v2/"), &mut origin).await?;

    let mut pushed = Vec::new();
    for (i, (name, layers, hosts)) in images.iter().enumerate() {
        let mut image = bench.push_image(name, layers, 7 + i as u64).await?;
        image.hosts = hosts.clone().unwrap_or_else(|| args.hosts.clone());
        eprintln!("pushed image {name}: {} blobs, {}", image.blobs.len(), fmt_bytes(image.bytes() as f64));
        pushed.push(image);
    }
    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    for image in &pushed {
        for &n in &image.hosts {
            for system in &args.systems {
                let t0 = Instant::now();
                let r = bench.run_one(system, n, image).await?;
                eprintln!(
                    "[{:>5.0} s] {:<10} N={n:<3} {:<6} p50 {} max {} bound {:.2} s; origin/seed {:.2} F; \
                     {:.1} CPU-s/GiB (own {}, background {:.1} cores); {} ({:.0} s)",
                    started.elapsed().as_secs_f64(),
                    system,
                    image.name,
                    r.summary.map_or("-".into(), |s| format!("{:.2} s", s.p50)),
                    r.summary.map_or("-".into(), |s| format!("{:.2} s", s.max)),
                    r.bound.seconds,
                    origin_or_seed(&r) / image.bytes() as f64,
                    cpu_per_gib(&r),
                    bench_cpu_per_gib(&r).map_or("-".into(), |c| format!("{c:.1}")),
                    r.background_cores,
                    if r.errors.is_empty() { "ok".to_string() } else { r.errors.join(" | ") },
                    t0.elapsed().as_secs_f64()
                );
                for (msg, count) in &r.warnings {
                    eprintln!("          {count:>4} × {msg}");
                }
                results.push(r);
                write_results(args, kind, &pushed, &results, started.elapsed())?;
            }
        }
    }
    origin.stop(Duration::from_secs(3)).await;
    if args.keep {
        eprintln!("kept {}", temp.keep().display());
    }
    let failed: Vec<&RunResult> = results.iter().filter(|r| !r.errors.is_empty()).collect();
    if !failed.is_empty() {
        bail!("{} of {} runs had failed pulls (see the results)", failed.len(), results.len());
    }
    Ok(())
}

fn ratio(v: f64, bound: f64) -> String {
    format!("{:.2}", v / bound)
}

/// The bytes the sources sent for the run: the origin registry's blob bytes (its access log), or
/// for BitTorrent the seeder's upload (aria2c's count).
fn origin_or_seed(r: &RunResult) -> f64 {
    if r.system == "bittorrent" {
        r.seed_upload
    } else {
        r.origin_blob_bytes as f64
    }
}

/// GiB delivered in a run: N copies of the image.
fn gib_delivered(r: &RunResult) -> f64 {
    r.hosts as f64 * r.image_bytes as f64 / (1u64 << 30) as f64
}

/// Busy CPU seconds of the whole machine per GiB delivered.
fn cpu_per_gib(r: &RunResult) -> f64 {
    r.machine_cpu / gib_delivered(r)
}

/// CPU seconds of the benchmark's own processes per GiB delivered.
fn bench_cpu_per_gib(r: &RunResult) -> Option<f64> {
    Some(r.bench_cpu? / gib_delivered(r))
}

fn write_results(
    args: &Args,
    kind: TopologyKind,
    images: &[Image],
    results: &[RunResult],
    took: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.results)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let topology = match kind {
        TopologyKind::Split => format!(
            "every host {} up / {} down, the origin registry's host {} both ways, the supernode's host {} both ways \
             (so u_s = {}; the pull-through cache and the BitTorrent tracker and seeder run on the supernode's host)",
            fmt_rate(args.host_up),
            fmt_rate(args.host_down),
            fmt_rate(args.origin_rate),
            fmt_rate(args.sn_rate),
            fmt_rate(args.origin_rate + args.sn_rate),
        ),
        TopologyKind::Symmetric => format!(
            "every host {} up / {} down; **symmetric topology**: the origin registry, the supernode, the \
             pull-through cache and the BitTorrent tracker and seeder share ONE seed host capped at {} both ways \
             (so u_s = {}, the seed host's upload alone; the supernode reaches the origin over its own address, \
             uncapped)",
            fmt_rate(args.host_up),
            fmt_rate(args.host_down),
            fmt_rate(args.sn_rate),
            fmt_rate(args.sn_rate),
        ),
    };
    let stagger = match args.stagger_ms {
        0 => String::new(),
        ms => format!(" (host i starts i × {ms} ms after host 0, `--stagger-ms`)"),
    };
    let group = match args.no_group {
        false => "naming the image as its `--group`, so the image is one swarm",
        true => "naming no group (`--no-group`): each blob is a swarm of its own",
    };
    let mut md = format!(
        "# Swarm benchmark\n\nHosts are network namespaces on one machine, joined by a bridge, capped with `tbf`: \
         {topology}. Every host fetches every blob of the image at the same moment{stagger} \
         (Damselfly: `dfget` per blob through its dfdaemon, {group}; direct and cache: `curl` per blob; BitTorrent: one \
         aria2c per host on one private torrent of all the blobs, 256 KiB pieces, opentracker, DHT, LPD and PEX \
         off, leechers seeding until every host is done). Completion time is from the host's start to its \
         last blob; the bound is max(F/u_s, F/d_min, N·F/(u_s+Σu_i)). \
         \"origin/seed ÷ F\" is the blob bytes the origin registry served (its access log) over the image size, \
         for BitTorrent the bytes the seeder uploaded (aria2c's count); \"source uplink ÷ F\" is the bytes that \
         left the source hosts' interfaces (frames with headers{}). \"CPU-s per GiB (machine)\" is the busy CPU \
         time of the whole machine (/proc/stat: user+nice+system+irq+softirq+steal, kernel networking included) \
         from the common start until the last host finished, per GiB delivered to all hosts (N·F); it also counts \
         whatever else the machine ran: \"background\" is the cores busy in the second before the run started, \
         and with the machine saturated the figure is just cores × window. \"CPU-s per GiB (own)\" counts only \
         the benchmark's processes (a cgroup holding registry, servers, agents and clients) in the same window, \
         including the packet processing (veth, bridge, tbf) the kernel did in their context. \"CPU cores busy\" is the CPU time of the serving processes (supernode and dfdaemons, or \
         the cache, or tracker and seeder) and of the fetching clients (dfget, curl, aria2c leechers) over the \
         slowest host's completion time; the machine has {cores} cores. Total run time {:.0} s.\n\n",
        if kind == TopologyKind::Split { "; the origin-to-supernode copy is counted too" } else { "" },
        took.as_secs_f64()
    );
    for image in images {
        let layers: Vec<String> = image.layers.iter().map(|&l| fmt_bytes(l as f64)).collect();
        md.push_str(&format!(
            "## Image `{}`: {} ({} layer{}: {}, plus config)\n\n![completion time against N]({}-{}.svg)\n\n",
            image.name,
            fmt_bytes(image.bytes() as f64),
            image.layers.len(),
            if image.layers.len() == 1 { "" } else { "s" },
            layers.join(", "),
            args.name,
            image.name
        ));
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.image == image.name).collect();
        let mut head = Table::new([
            "N",
            "system",
            "bound (s)",
            "p50 ÷ bound",
            "max ÷ bound",
            "origin/seed ÷ F",
            "source uplink ÷ F",
            "CPU-s per GiB (machine)",
            "CPU-s per GiB (own)",
            "background (cores)",
            "server peak RSS",
            "peer peak RSS (max)",
            "errors",
        ]);
        let rss = |b: u64| if b > 0 { fmt_bytes(b as f64) } else { "-".into() };
        let errors =
            |r: &RunResult| if r.errors.is_empty() { String::new() } else { r.errors.join("; ").replace('|', "/") };
        for r in &mine {
            let f = r.image_bytes as f64;
            let rel = |v: Option<f64>| v.map_or("-".to_string(), |v| ratio(v, r.bound.seconds));
            head.row([
                r.hosts.to_string(),
                r.system.clone(),
                format!("{:.2}", r.bound.seconds),
                rel(r.summary.map(|s| s.p50)),
                rel(r.summary.map(|s| s.max)),
                format!("{:.2}", origin_or_seed(r) / f),
                format!("{:.2}", r.sources_wire_bytes / f),
                format!("{:.1}", cpu_per_gib(r)),
                bench_cpu_per_gib(r).map_or("-".into(), |c| format!("{c:.1}")),
                format!("{:.2}", r.background_cores),
                rss(r.supernode_peak_rss),
                rss(r.daemon_peak_rss_max),
                errors(r),
            ]);
        }
        md.push_str(&head.to_markdown());
        let limited: Vec<_> =
            mine.iter().flat_map(|r| r.limited.iter().map(move |h| (r.hosts, r.system.as_str(), h))).collect();
        if !limited.is_empty() {
            md.push_str(
                "\nRate-limited hosts (`--limited`): completion rate = image bytes ÷ the host's completion time; \
                 sustained = 80 % of its bytes ÷ the time between 10 % and 90 % of them; peak = the most bytes \
                 in any 4 s ÷ 4 s (samples of `/metrics` every 200 ms, interpolated; a limited direction counts \
                 the bytes through its limit, 64 KiB steps, an unlimited one whole verified pieces); waited = \
                 time its transfers spent waiting for the limit, summed over transfers. Rates in Mbit/s: \
                 1 MiB/s = 8.39 Mbit/s.\n\n",
            );
            md.push_str(&limited::table(limited).to_markdown());
        }
        md.push_str(
            "\nServer: supernode, cache or BitTorrent seeder; peer: the largest dfdaemon or aria2c leecher. \
             Details:\n\n",
        );
        let mut t = Table::new([
            "N",
            "system",
            "bound (s)",
            "p50 (s)",
            "p95 (s)",
            "max (s)",
            "p50 ÷ bound",
            "p95 ÷ bound",
            "max ÷ bound",
            "origin ÷ F",
            "origin GETs",
            "supernode / cache / seeder upload ÷ F",
            "from peers ÷ (N·F)",
            "supernode / cache / seeder peak RSS",
            "dfdaemon / aria2c peak RSS (max)",
            "CPU cores busy (servers + clients)",
            "errors",
        ]);
        for r in &mine {
            let f = r.image_bytes as f64;
            let s = r.summary;
            let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let rel = |v: Option<f64>| v.map_or("-".to_string(), |v| ratio(v, r.bound.seconds));
            let upload = match r.system.as_str() {
                "damselfly" => format!("{:.2}", r.supernode_upload / f),
                "proxy" => format!("{:.2}", r.proxy_served as f64 / f),
                "bittorrent" => format!("{:.2}", r.seed_upload / f),
                _ => "-".into(),
            };
            t.row([
                r.hosts.to_string(),
                r.system.clone(),
                format!("{:.2}", r.bound.seconds),
                cell(s.map(|s| s.p50)),
                cell(s.map(|s| s.p95)),
                cell(s.map(|s| s.max)),
                rel(s.map(|s| s.p50)),
                rel(s.map(|s| s.p95)),
                rel(s.map(|s| s.max)),
                format!("{:.2}", r.origin_blob_bytes as f64 / f),
                r.origin_blob_requests.to_string(),
                upload,
                match r.system.as_str() {
                    "damselfly" => format!("{:.2}", r.peer_bytes / (f * r.hosts as f64)),
                    "bittorrent" => {
                        format!("{:.2}", (f * r.hosts as f64 - r.seed_upload).max(0.0) / (f * r.hosts as f64))
                    }
                    _ => "-".into(),
                },
                rss(r.supernode_peak_rss),
                rss(r.daemon_peak_rss_max),
                s.map_or("-".into(), |s| format!("{:.2}", (r.server_cpu + r.client_cpu) / s.max)),
                errors(r),
            ]);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
        std::fs::write(args.results.join(format!("{}-{}.svg", args.name, image.name)), chart(image, &mine).to_svg())?;
    }
    std::fs::write(args.results.join(format!("{}.md", args.name)), md)?;
    std::fs::write(args.results.join(format!("{}.json", args.name)), serde_json::to_string_pretty(results)?)?;
    Ok(())
}

fn redraw(args: &Args) -> anyhow::Result<()> {
    let path = args.charts_from.as_deref().context("no --charts-from")?;
    let results: Vec<RunResult> = serde_json::from_slice(&std::fs::read(path)?)?;
    let mut names: Vec<&str> = results.iter().map(|r| r.image.as_str()).collect();
    names.dedup();
    for name in names {
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.image == name).collect();
        let bytes = mine.first().map_or(0, |r| r.image_bytes);
        let image = Image {
            name: name.to_string(),
            layers: Vec::new(),
            blobs: vec![(String::new(), bytes)],
            hosts: Vec::new(),
            torrent: None,
        };
        std::fs::write(args.results.join(format!("{}-{name}.svg", args.name)), chart(&image, &mine).to_svg())?;
    }
    Ok(())
}

fn chart(image: &Image, results: &[&RunResult]) -> Chart {
    let series = |system: &str, label: &str, color: &str| {
        let mine: Vec<&&RunResult> = results.iter().filter(|r| r.system == system && r.summary.is_some()).collect();
        let mut s =
            Series::line(label, color, mine.iter().filter_map(|r| Some((r.hosts as f64, r.summary?.p50))).collect());
        s.whiskers = mine.iter().filter_map(|r| Some((r.hosts as f64, r.summary?.p50, r.summary?.max))).collect();
        s
    };
    let mut bound_points: Vec<(f64, f64)> = results.iter().map(|r| (r.hosts as f64, r.bound.seconds)).collect();
    bound_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    bound_points.dedup_by(|a, b| a.0 == b.0);
    let mut bound = Series::line("lower bound", "black", bound_points);
    bound.dashed = true;
    Chart {
        title: format!(
            "Image {} ({}): completion time, p50 (bar: p50..max)",
            image.name,
            fmt_bytes(image.bytes() as f64)
        ),
        x_label: "hosts N".into(),
        y_label: "seconds".into(),
        series: vec![
            series("damselfly", "Damselfly", "#1f77b4"),
            series("direct", "direct from origin", "#d62728"),
            series("proxy", "pull-through cache", "#ff7f0e"),
            series("bittorrent", "BitTorrent (aria2c)", "#2ca02c"),
            bound,
        ]
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs() {
        let (name, layers, hosts) = parse_image("one96=96MiB@8").unwrap();
        assert_eq!((name.as_str(), layers, hosts), ("one96", vec![96 << 20], Some(vec![8])));
        let (_, layers, hosts) = parse_image("large=64MiB,32MiB@8,16").unwrap();
        assert_eq!((layers, hosts), (vec![64 << 20, 32 << 20], Some(vec![8, 16])));
        assert_eq!(parse_image("small=1MiB").unwrap().2, None);
        assert!(parse_image("bad=1MiB@x").is_err());
        assert!(parse_image("1MiB").is_err());
    }

    #[test]
    fn leechers_keep_seeding() {
        let flags = aria2c_flags(55);
        for f in ["--seed-ratio=0.0", "--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false"] {
            assert!(flags.iter().any(|x| x == f), "{f} missing");
        }
        assert!(!flags.iter().any(|x| x.starts_with("--seed-time")));
    }
}
