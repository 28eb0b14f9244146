//! `swarm-bench`: the swarm benchmark on real hosts with real bandwidth (network namespaces
//! with `tbf` caps), Damselfly against two baselines in the same run.
//!
//! For every image and every N it runs, on the same namespaces and caps:
//! - `damselfly`: a supernode on its own host, a dfdaemon per host, every host fetching every
//!   blob of the image with `dfget` at the same moment;
//! - `direct`: every host fetching every blob straight from the origin registry (`curl`);
//! - `proxy`: every host fetching through a `docker-registry` pull-through cache on the
//!   supernode's host (`curl`), cold at the start of each run.
//!
//! It records each host's completion time, the origin's blob bytes (its access log), the
//! supernode's upload bytes and peak RSS, and divides completion times by the lower bound
//! `max(F/u_s, F/d_min, N·F/(u_s+Σu_i))`. Run as root (see `benches/scripts/swarm.sh`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use damselfly_benches::bound::{lower_bound, Bound};
use damselfly_benches::harness::{bin, children_cpu_seconds, metric, Proc};
use damselfly_benches::netns::{cleanup_prefix, Host, Topology};
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
    /// An image as NAME=LAYER,LAYER,... (repeatable; default: two sizes).
    #[arg(long = "image")]
    images: Vec<String>,
    /// Systems to run at each N, comma-separated: damselfly, direct, proxy.
    #[arg(long, value_delimiter = ',', default_value = "damselfly,direct,proxy")]
    systems: Vec<String>,
    /// Upload cap of every host.
    #[arg(long, value_parser = parse_rate, default_value = "50mbit")]
    host_up: f64,
    /// Download cap of every host.
    #[arg(long, value_parser = parse_rate, default_value = "50mbit")]
    host_down: f64,
    /// Upload and download cap of the origin registry's host.
    #[arg(long, value_parser = parse_rate, default_value = "200mbit")]
    origin_rate: f64,
    /// Upload and download cap of the supernode's host.
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
    /// Only redraw the SVG charts from a `swarm.json` of an earlier run (into `--results`).
    #[arg(long)]
    charts_from: Option<PathBuf>,
    /// A dfdaemon TOML config file given to every dfdaemon (`--config`), for experiments such
    /// as a longer `stall_timeout`; flags still win.
    #[arg(long)]
    daemon_config: Option<PathBuf>,
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
        /// URL@DIGEST of each blob.
        #[arg(long = "blob")]
        blobs: Vec<String>,
    },
}

const ORIGIN_PORT: u16 = 5000;
const SN_QUIC: u16 = 8002;
const SN_HTTP: u16 = 8001;
const PROXY_PORT: u16 = 5000;
const DAEMON_HTTP: u16 = 65001;
const DAEMON_PEER: u16 = 65002;
const REPO: &str = "bench/app";

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
    /// CPU seconds used by the serving processes (supernode and dfdaemons, or the cache).
    #[serde(default)]
    server_cpu: f64,
    /// Distinct WARN/ERROR messages of the Damselfly processes, with counts.
    warnings: Vec<(String, usize)>,
    errors: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match &args.role {
        Some(Role::Agent { start_at_ms, out, tool, daemon, dfget, blobs }) => {
            rt.block_on(agent(*start_at_ms, out, tool, daemon, dfget, blobs))
        }
        None if args.charts_from.is_some() => redraw(&args),
        None => {
            let prefix = args.prefix.clone().unwrap_or_else(|| format!("dfb{}-", std::process::id() % 100_000));
            let result = rt.block_on(async {
                tokio::select! {
                    r = orchestrate(&args, &prefix) => r,
                    _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
                }
            });
            rt.shutdown_timeout(Duration::from_secs(2));
            let left = cleanup_prefix(&prefix);
            if left > 0 {
                eprintln!("removed {left} leftover namespaces {prefix}*");
            }
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

async fn agent(
    start_at_ms: u64,
    out: &Path,
    tool: &str,
    daemon: &str,
    dfget: &Path,
    blobs: &[String],
) -> anyhow::Result<()> {
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
                let mut c = Command::new(dfget);
                c.args([
                    url,
                    "-O",
                    &file.display().to_string(),
                    "--digest",
                    digest,
                    "--no-progress",
                    "--daemon",
                    daemon,
                ]);
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
    work: PathBuf,
    topo: Topology,
    origin_log: PathBuf,
    runs: usize,
}

impl Bench<'_> {
    fn origin(&self) -> &Host {
        &self.topo.hosts()[0]
    }

    fn sn(&self) -> &Host {
        &self.topo.hosts()[1]
    }

    fn host(&self, i: usize) -> &Host {
        &self.topo.hosts()[2 + i]
    }

    fn sources_up(&self) -> f64 {
        self.args.origin_rate + self.args.sn_rate
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
        let _ = std::fs::remove_dir_all(&dir);
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
        Ok(Image { name: name.to_string(), layers: layers.to_vec(), blobs })
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
            warnings: Vec::new(),
            errors: Vec::new(),
        };
        let (sn_ns, sn_ip, origin_ip) = (self.sn().ns.clone(), self.sn().ip, self.origin().ip);
        let origin_addr = format!("{origin_ip}:{ORIGIN_PORT}");
        let base = match system {
            "damselfly" | "direct" => format!("http://{origin_addr}"),
            "proxy" => format!("http://{sn_ip}:{PROXY_PORT}"),
            other => bail!("unknown system {other}"),
        };
        let start_result = self.start_system(system, n, &run, &mut procs).await;
        if let Err(e) = start_result {
            stop_all(procs).await;
            return Err(e);
        }
        let log_offset = std::fs::metadata(&self.origin_log).map(|m| m.len()).unwrap_or(0);
        let start_at = epoch_ms() + 2000.0;
        let exe = std::env::current_exe()?;
        let dfget = bin("dfget")?;
        let mut agents = Vec::new();
        for i in 0..n {
            let h = self.host(i).clone();
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &h.ns]).arg(&exe).arg("agent");
            cmd.args(["--start-at-ms", &(start_at as u64).to_string()]);
            cmd.args(["--out", &run.join(format!("out{i}")).display().to_string()]);
            if system == "damselfly" {
                cmd.args(["--tool", "dfget", "--daemon", &format!("http://{}:{DAEMON_HTTP}", h.ip)]);
                cmd.arg("--dfget").arg(&dfget);
            } else {
                cmd.args(["--tool", "curl"]);
            }
            for (digest, _) in &image.blobs {
                cmd.args(["--blob", &format!("{base}/v2/{REPO}-{}/blobs/{digest}@{digest}", image.name)]);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            agents.push(cmd.spawn()?);
        }
        let limit = Duration::from_secs_f64(bound.seconds * self.args.timeout_factor + 60.0);
        let wait_all = async {
            let mut outs = Vec::new();
            for a in agents {
                outs.push(a.wait_with_output().await);
            }
            outs
        };
        match tokio::time::timeout(limit + Duration::from_secs(2), wait_all).await {
            Ok(outs) => {
                for (i, out) in outs.into_iter().enumerate() {
                    let parsed = out
                        .map_err(anyhow::Error::from)
                        .and_then(|o| Ok(serde_json::from_slice::<AgentReport>(&o.stdout)?));
                    match parsed {
                        Ok(r) if r.errors.is_empty() => {
                            result.client_cpu += r.client_cpu;
                            let end = r.ends_ms.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                            result.completion.push(Some((end - start_at) / 1000.0));
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
        stop_all(procs).await;
        if !self.args.keep {
            let _ = std::fs::remove_dir_all(&run);
        }
        Ok(result)
    }

    async fn start_system(&self, system: &str, n: usize, run: &Path, procs: &mut Vec<Proc>) -> anyhow::Result<()> {
        let (sn_ns, sn_ip, origin_ip) = (self.sn().ns.clone(), self.sn().ip, self.origin().ip);
        match system {
            "damselfly" => {
                let args = vec![
                    "--quic-listen".into(),
                    format!("{sn_ip}:{SN_QUIC}"),
                    "--http-listen".into(),
                    format!("{sn_ip}:{SN_HTTP}"),
                    "--data-dir".into(),
                    run.join("sn").display().to_string(),
                    "--insecure-registry".into(),
                    format!("{origin_ip}:{ORIGIN_PORT}"),
                ];
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
                        "--ca-cert".into(),
                        run.join("sn/tls/ca.crt").display().to_string(),
                        "--insecure-registry".into(),
                        format!("{origin_ip}:{ORIGIN_PORT}"),
                    ];
                    let mut args = args;
                    if let Some(config) = &self.args.daemon_config {
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
            _ => {}
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

fn parse_image(spec: &str) -> anyhow::Result<(String, Vec<u64>)> {
    let (name, sizes) = spec.split_once('=').context("--image must be NAME=SIZE,SIZE,...")?;
    let layers = sizes.split(',').map(|s| parse_size(s).map_err(anyhow::Error::msg)).collect::<anyhow::Result<_>>()?;
    Ok((name.to_string(), layers))
}

async fn orchestrate(args: &Args, prefix: &str) -> anyhow::Result<()> {
    for tool in ["ip", "tc", "curl", "skopeo", "docker-registry", "python3"] {
        which(tool)?;
    }
    for b in ["supernode", "dfdaemon", "dfget"] {
        bin(b)?;
    }
    let images: Vec<(String, Vec<u64>)> = if args.images.is_empty() {
        vec![
            ("small".into(), vec![16 << 20, 8 << 20, 4 << 20, 4 << 20]),
            ("large".into(), vec![64 << 20, 32 << 20, 16 << 20, 16 << 20]),
        ]
    } else {
        args.images.iter().map(|s| parse_image(s)).collect::<anyhow::Result<_>>()?
    };
    let max_n = args.hosts.iter().copied().max().unwrap_or(2);
    let temp = tempfile::Builder::new().prefix("dfbench-swarm-").tempdir()?;
    let work = temp.path().to_path_buf();
    eprintln!("namespaces {prefix}*: origin, supernode and {max_n} hosts; work dir {}", work.display());
    let mut spec: Vec<(String, f64, f64)> =
        vec![("reg".into(), args.origin_rate, args.origin_rate), ("sn".into(), args.sn_rate, args.sn_rate)];
    spec.extend((0..max_n).map(|i| (format!("h{i}"), args.host_up, args.host_down)));
    let spec_ref: Vec<(&str, f64, f64)> = spec.iter().map(|(n, u, d)| (n.as_str(), *u, *d)).collect();
    let topo = Topology::create(prefix, &spec_ref)?;

    let origin_log = work.join("origin.log");
    let mut bench = Bench { args, work: work.clone(), topo, origin_log: origin_log.clone(), runs: 0 };
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
    for (i, (name, layers)) in images.iter().enumerate() {
        let image = bench.push_image(name, layers, 7 + i as u64).await?;
        eprintln!("pushed image {name}: {} blobs, {}", image.blobs.len(), fmt_bytes(image.bytes() as f64));
        pushed.push(image);
    }
    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    for image in &pushed {
        for &n in &args.hosts {
            for system in &args.systems {
                let t0 = Instant::now();
                let r = bench.run_one(system, n, image).await?;
                eprintln!(
                    "[{:>5.0} s] {:<9} N={n:<3} {:<6} p50 {} max {} bound {:.2} s; origin {:.2} F; {} ({:.0} s)",
                    started.elapsed().as_secs_f64(),
                    system,
                    image.name,
                    r.summary.map_or("-".into(), |s| format!("{:.2} s", s.p50)),
                    r.summary.map_or("-".into(), |s| format!("{:.2} s", s.max)),
                    r.bound.seconds,
                    r.origin_blob_bytes as f64 / image.bytes() as f64,
                    if r.errors.is_empty() { "ok".to_string() } else { r.errors.join(" | ") },
                    t0.elapsed().as_secs_f64()
                );
                for (msg, count) in &r.warnings {
                    eprintln!("          {count:>4} × {msg}");
                }
                results.push(r);
                write_results(args, &pushed, &results, started.elapsed())?;
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

fn write_results(args: &Args, images: &[Image], results: &[RunResult], took: Duration) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.results)?;
    let mut md = format!(
        "# Swarm benchmark\n\nHosts are network namespaces on one machine, joined by a bridge, capped with `tbf`: \
         every host {} up / {} down, the origin registry's host {} both ways, the supernode's host {} both ways \
         (so u_s = {}). Every host fetches every blob of the image at the same moment \
         (Damselfly: `dfget` per blob through its dfdaemon; baselines: `curl` per blob). Completion time is \
         from the common start to the host's last blob; the bound is max(F/u_s, F/d_min, N·F/(u_s+Σu_i)). \
         \"origin ÷ F\" is the blob bytes the origin registry served (its access log) over the image size. \
         \"CPU cores busy\" is the CPU time of the serving processes (supernode and dfdaemons, or the cache) \
         and of the fetching clients (dfget, curl) over the slowest host's completion time; the machine has \
         {} cores, and kernel time spent in the bridge and tbf is not counted. \
         Total run time {:.0} s.\n\n",
        fmt_rate(args.host_up),
        fmt_rate(args.host_down),
        fmt_rate(args.origin_rate),
        fmt_rate(args.sn_rate),
        fmt_rate(args.origin_rate + args.sn_rate),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        took.as_secs_f64()
    );
    for image in images {
        let layers: Vec<String> = image.layers.iter().map(|&l| fmt_bytes(l as f64)).collect();
        md.push_str(&format!(
            "## Image `{}`: {} ({} layers: {}, plus config)\n\n![completion time against N]({}-{}.svg)\n\n",
            image.name,
            fmt_bytes(image.bytes() as f64),
            image.layers.len(),
            layers.join(", "),
            args.name,
            image.name
        ));
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
            "supernode / cache upload ÷ F",
            "from peers ÷ (N·F)",
            "supernode / cache peak RSS",
            "dfdaemon peak RSS (max)",
            "CPU cores busy (servers + clients)",
            "errors",
        ]);
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.image == image.name).collect();
        for r in &mine {
            let f = r.image_bytes as f64;
            let s = r.summary;
            let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let rel = |v: Option<f64>| v.map_or("-".to_string(), |v| ratio(v, r.bound.seconds));
            let upload = match r.system.as_str() {
                "damselfly" => format!("{:.2}", r.supernode_upload / f),
                "proxy" => format!("{:.2}", r.proxy_served as f64 / f),
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
                if r.system == "damselfly" {
                    format!("{:.2}", r.peer_bytes / (f * r.hosts as f64))
                } else {
                    "-".into()
                },
                if r.supernode_peak_rss > 0 { fmt_bytes(r.supernode_peak_rss as f64) } else { "-".into() },
                if r.daemon_peak_rss_max > 0 { fmt_bytes(r.daemon_peak_rss_max as f64) } else { "-".into() },
                s.map_or("-".into(), |s| format!("{:.2}", (r.server_cpu + r.client_cpu) / s.max)),
                if r.errors.is_empty() { String::new() } else { r.errors.join("; ").replace('|', "/") },
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
        let image = Image { name: name.to_string(), layers: Vec::new(), blobs: vec![(String::new(), bytes)] };
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
            bound,
        ],
    }
}
