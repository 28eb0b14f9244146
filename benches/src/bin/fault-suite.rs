//! `fault-suite`: real process faults during a pull of several layers by several hosts, each host
//! a network namespace capped with `tbf` (see `benches/README.md`, "Fault suite").
//!
//! For each case a fresh supernode and fresh daemons start; every puller runs one `dfget
//! --digest` per layer through its own daemon, all at once; the fault is injected while they
//! run. Each row says how many pulls completed, how many failed (and whether each failure said
//! why), how many bytes of wrong content reached an output (must be 0), how many bytes the
//! origin sent beyond one copy of the image, and the time added against the baseline case (the
//! same pulls without a fault, run first, and again at the end: the mean of both).
//!
//! The origin is this binary too (`fault-suite origin`): a file server in its own namespace
//! whose behaviour (`ok`, `flap`, `reset`, `slow`) is read from a control file at each request,
//! and which records the bytes it sent in a stats file.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use damselfly_benches::harness::{bin, write_random_file, Proc};
use damselfly_benches::netns::{cleanup_prefix, run, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Every case, in the order they run.
const CASES: &[&str] = &[
    "baseline",
    "baseline-cold",
    "supernode-dead",
    "supernode-killed-at-start",
    "supernode-kill-restart",
    "parent-kill",
    "parent-stall",
    "parent-wrong-bytes",
    "loss-1pct",
    "loss-5pct",
    "origin-5xx",
    "origin-reset",
    "origin-slow",
    "disk-full",
    "daemon-restart",
];
/// The short subset CI runs.
const CI_CASES: &str = "baseline,baseline-cold,supernode-kill-restart,parent-kill,origin-5xx";

/// Whether a case starts cold (no seed, the supernode fetches from the origin during the
/// pulls): the origin faults must hit that fetch.
fn cold(case: &str) -> bool {
    case == "baseline-cold" || case.starts_with("origin-")
}
/// A pull still running after this long counts as hung (failed without a clear error).
const PULL_LIMIT: Duration = Duration::from_secs(150);
const HTTP_PORT: u16 = 8080;

#[derive(Parser, Debug)]
#[command(about = "Fault suite: real process faults during pulls by several hosts in network namespaces")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Cases to run (comma-separated; `ci` for the CI subset, `all` for every case).
    #[arg(long, default_value = "all")]
    cases: String,
    /// Hosts that pull (plus one seed host that pulls first and is the parent faults hit).
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Layer sizes in MiB.
    #[arg(long, default_value = "8,8,4")]
    layers: String,
    /// Upload and download cap of every host, Mbit/s.
    #[arg(long, default_value_t = 50)]
    rate_mbit: u64,
    /// Seconds after the pulls start when a mid-pull fault strikes.
    #[arg(long, default_value_t = 1.0)]
    fault_after: f64,
    /// Markdown table to write (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Namespace name prefix.
    #[arg(long)]
    prefix: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// The origin: serves files from `dir` on `listen`, misbehaving as `control` says.
    Origin {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        control: PathBuf,
        #[arg(long)]
        stats: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if let Some(Role::Origin { listen, dir, control, stats }) = &args.role {
        return rt.block_on(origin(*listen, dir.clone(), control.clone(), stats.clone()));
    }
    let prefix = args.prefix.clone().unwrap_or_else(|| format!("dff{}-", std::process::id() % 100_000));
    let result = rt.block_on(suite(&args, &prefix));
    rt.shutdown_timeout(Duration::from_secs(2));
    cleanup_prefix(&prefix);
    result
}

// ---------------------------------------------------------------------------------------------
// The origin.

async fn origin(listen: std::net::SocketAddr, dir: PathBuf, control: PathBuf, stats: PathBuf) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let gets: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    loop {
        let (mut stream, _) = listener.accept().await?;
        let (dir, control, stats, sent, gets) =
            (dir.clone(), control.clone(), stats.clone(), sent.clone(), gets.clone());
        tokio::spawn(async move {
            let Some((method, path)) = read_head(&mut stream).await else { return };
            let mode = std::fs::read_to_string(&control).unwrap_or_default().trim().to_owned();
            let data =
                (!path.contains("..")).then(|| std::fs::read(dir.join(path.trim_start_matches('/'))).ok()).flatten();
            let Some(data) = data else {
                let _ =
                    stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                return;
            };
            let nth = if method == "GET" {
                let mut g = gets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = g.entry(path.clone()).or_default();
                *n += 1;
                *n
            } else {
                0
            };
            if mode == "flap" && nth % 2 == 1 {
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
            if stream.write_all(head.as_bytes()).await.is_err() || method != "GET" {
                return;
            }
            let (cut, rate) = match mode.as_str() {
                "reset" if nth == 1 => (data.len() / 2, None),
                "slow" => (data.len(), Some(1_000_000u64)),
                _ => (data.len(), None),
            };
            for chunk in data[..cut].chunks(64 << 10) {
                if stream.write_all(chunk).await.is_err() {
                    break;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if let Some(rate) = rate {
                    tokio::time::sleep(Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
                }
            }
            if cut < data.len() {
                // A connection reset in the middle of the body.
                let _ = stream.set_zero_linger();
                drop(stream);
            }
            // Under the lock: a connection that ends later must not write an older total.
            let _g = gets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = std::fs::write(&stats, sent.load(Ordering::Relaxed).to_string());
        });
    }
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = vec![0u8; 8192];
    let mut got = 0;
    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf[got..]).await.ok()?;
        if n == 0 || got + n == buf.len() {
            return None;
        }
        got += n;
    }
    let head = String::from_utf8_lossy(&buf[..got]).into_owned();
    let mut words = head.split_whitespace();
    Some((words.next()?.to_owned(), words.next()?.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// The suite.

/// One layer of the image.
struct Layer {
    name: String,
    len: u64,
    digest: String,
}

/// The namespaces and the things that outlive a case.
struct World {
    topo: Topology,
    work: PathBuf,
    layers: Vec<Layer>,
    origin_ip: Ipv4Addr,
    _origin: Proc,
    /// Pullers are hosts 1..; host 0 is the seed.
    hosts: usize,
    fault_after: Duration,
}

/// A case's result.
#[derive(Debug, Default)]
struct Row {
    case: String,
    pulls: usize,
    completed: usize,
    failed_clear: usize,
    failed_unclear: usize,
    corrupt_bytes: u64,
    extra_origin_bytes: i64,
    wall: Duration,
    example_error: String,
}

async fn suite(args: &Args, prefix: &str) -> anyhow::Result<()> {
    let cases: Vec<&str> = match args.cases.as_str() {
        "all" => CASES.to_vec(),
        "ci" => CI_CASES.split(',').collect(),
        list => list.split(',').collect(),
    };
    for c in &cases {
        if !CASES.contains(c) {
            bail!("unknown case {c}; cases: {}", CASES.join(", "));
        }
    }
    cleanup_prefix(prefix);
    let rate = args.rate_mbit as f64 * 1e6 / 8.0;
    let mut specs: Vec<(String, f64, f64)> =
        vec![("origin".into(), rate * 4.0, rate * 4.0), ("sn".into(), rate * 2.0, rate * 2.0)];
    for i in 0..=args.hosts {
        specs.push((format!("h{i}"), rate, rate));
    }
    let spec_refs: Vec<(&str, f64, f64)> = specs.iter().map(|(n, u, d)| (n.as_str(), *u, *d)).collect();
    let topo = Topology::create(prefix, &spec_refs)?;
    let work = tempfile::Builder::new().prefix("dffault").tempdir()?.keep();
    let files = work.join("origin");
    std::fs::create_dir_all(&files)?;
    let mut layers = Vec::new();
    for (i, mib) in args.layers.split(',').enumerate() {
        let len = mib.trim().parse::<u64>().context("--layers: sizes in MiB")? << 20;
        let name = format!("layer{i}");
        let digest = write_random_file(&files.join(&name), len, 1000 + 2 * i as u64)?;
        layers.push(Layer { name, len, digest });
    }
    let origin_host = topo.hosts()[0].clone();
    std::fs::write(work.join("origin-mode"), "ok")?;
    let me = std::env::current_exe()?;
    let origin_args = [
        "origin".to_string(),
        "--listen".into(),
        format!("{}:{HTTP_PORT}", origin_host.ip),
        "--dir".into(),
        files.display().to_string(),
        "--control".into(),
        work.join("origin-mode").display().to_string(),
        "--stats".into(),
        work.join("origin-sent").display().to_string(),
    ];
    let origin_proc = ns_spawn("origin", &work.join("origin.log"), &origin_host.ns, &me, &origin_args)?;
    let world = World {
        origin_ip: origin_host.ip,
        topo,
        work,
        layers,
        _origin: origin_proc,
        hosts: args.hosts,
        fault_after: Duration::from_secs_f64(args.fault_after),
    };
    let mut rows = Vec::new();
    // The machine is shared: a second baseline at the end shows how much the reference moved.
    let mut cases = cases;
    if cases.len() > 3 && cases.contains(&"baseline") {
        cases.push("baseline");
    }
    for (n, case) in cases.into_iter().enumerate() {
        eprintln!("==== case {case}");
        let row = run_case(&world, case, n).await.with_context(|| format!("case {case}"))?;
        eprintln!("{row:?}");
        rows.push(row);
    }
    let table = table(&rows, args, &world);
    println!("{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, &table)?;
    }
    let corrupt: u64 = rows.iter().map(|r| r.corrupt_bytes).sum();
    let unclear: usize = rows.iter().map(|r| r.failed_unclear).sum();
    if corrupt > 0 || unclear > 0 {
        eprintln!("work dir (logs of the failed cases): {}", world.work.display());
        bail!("{corrupt} corrupt bytes delivered, {unclear} failures without a clear error");
    }
    drop(world._origin);
    if std::env::var_os("FAULT_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&world.work);
    } else {
        eprintln!("work dir (logs): {}", world.work.display());
    }
    Ok(())
}

fn ns_spawn(name: &str, log: &Path, ns: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new("ip");
    let log_filter = std::env::var("FAULT_RUST_LOG").unwrap_or_else(|_| "info".into());
    cmd.args(["netns", "exec", ns]).arg(program).args(args).env("RUST_LOG", log_filter);
    Proc::spawn_with(name, log, &mut cmd)
}

/// Runs `program args` inside `ns` and waits; stdout on success.
async fn ns_run(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(["netns", "exec", ns, program]).args(args).stdin(Stdio::null()).output().await?;
    if !out.status.success() {
        bail!("{program} {} in {ns}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `http://addr/healthz` answers inside `ns`.
async fn wait_healthy(ns: &str, addr: &str, proc: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let url = format!("http://{addr}/healthz");
    loop {
        if ns_run(ns, "curl", &["-fsS", "--max-time", "2", "--noproxy", "*", &url]).await.is_ok() {
            return Ok(());
        }
        if !proc.running() {
            bail!("{} exited:\n{}", proc.name, proc.tail(20));
        }
        if Instant::now() > deadline {
            bail!("{} did not answer {url}:\n{}", proc.name, proc.tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The processes of one case.
struct Case<'w> {
    world: &'w World,
    dir: PathBuf,
    sn: Option<Proc>,
    sn_args: Vec<String>,
    daemons: Vec<Option<Proc>>,
    daemon_args: Vec<Vec<String>>,
}

impl<'w> Case<'w> {
    async fn start(world: &'w World, name: &str) -> anyhow::Result<Case<'w>> {
        let dir = world.work.join(name);
        std::fs::create_dir_all(&dir)?;
        let sn_host = &world.topo.hosts()[1];
        let sn_args: Vec<String> = [
            "--quic-listen",
            &format!("{}:8002", sn_host.ip),
            "--http-listen",
            &format!("{}:8001", sn_host.ip),
            "--data-dir",
            &dir.join("sn").display().to_string(),
            "--allow-origin",
            &format!("{}:{HTTP_PORT}", world.origin_ip),
        ]
        .map(String::from)
        .to_vec();
        let mut case = Case { world, dir, sn: None, sn_args, daemons: Vec::new(), daemon_args: Vec::new() };
        case.start_supernode().await?;
        for i in 0..=world.hosts {
            let host = &world.topo.hosts()[2 + i];
            let data = case.dir.join(format!("h{i}"));
            let args: Vec<String> = [
                "--supernode",
                &format!("{}:8002", sn_host.ip),
                "--proxy-listen",
                &format!("{}:65001", host.ip),
                "--peer-listen",
                &format!("{}:65002", host.ip),
                "--data-dir",
                &data.display().to_string(),
                "--join-token-file",
                &case.dir.join("sn/join-token").display().to_string(),
            ]
            .map(String::from)
            .to_vec();
            case.daemon_args.push(args);
            case.daemons.push(None);
        }
        Ok(case)
    }

    async fn start_supernode(&mut self) -> anyhow::Result<()> {
        let host = &self.world.topo.hosts()[1];
        let mut p =
            ns_spawn("supernode", &self.dir.join("supernode.log"), &host.ns, &bin("supernode")?, &self.sn_args)?;
        wait_healthy(&host.ns, &format!("{}:8001", host.ip), &mut p).await?;
        self.sn = Some(p);
        Ok(())
    }

    async fn start_daemon(&mut self, i: usize) -> anyhow::Result<()> {
        let host = &self.world.topo.hosts()[2 + i];
        let log = self.dir.join(format!("dfdaemon-h{i}.log"));
        let mut p = ns_spawn(&format!("dfdaemon h{i}"), &log, &host.ns, &bin("dfdaemon")?, &self.daemon_args[i])?;
        wait_healthy(&host.ns, &format!("{}:65001", host.ip), &mut p).await?;
        self.daemons[i] = Some(p);
        Ok(())
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("h{i}"))
    }

    async fn stop(mut self) {
        for d in self.daemons.iter_mut().filter_map(Option::take) {
            d.stop(Duration::from_secs(3)).await;
        }
        if let Some(sn) = self.sn.take() {
            sn.stop(Duration::from_secs(3)).await;
        }
    }
}

/// What one `dfget` did.
struct Pull {
    ok: bool,
    clear_error: bool,
    corrupt_bytes: u64,
    error: String,
}

/// One `dfget --digest` of `layer` by host `i` into `dir`.
async fn pull(world: &World, i: usize, layer: &Layer, dir: &Path, retry_once: bool) -> Pull {
    let host = &world.topo.hosts()[2 + i];
    let out = dir.join(format!("h{i}-{}", layer.name));
    let url = format!("http://{}:{HTTP_PORT}/{}", world.origin_ip, layer.name);
    let daemon = format!("http://{}:65001", host.ip);
    let mut attempts = if retry_once { 2 } else { 1 };
    loop {
        attempts -= 1;
        let dfget = bin("dfget").map(|p| p.display().to_string()).unwrap_or_default();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, &dfget, &url, "-O"])
            .arg(&out)
            .args(["--digest", &layer.digest, "--daemon", &daemon, "-q"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let result = tokio::time::timeout(PULL_LIMIT, cmd.output()).await;
        let (ok, error) = match result {
            Err(_) => (false, format!("hung: still running after {PULL_LIMIT:?}")),
            Ok(Err(e)) => (false, format!("cannot run dfget: {e}")),
            Ok(Ok(o)) => (o.status.success(), String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        };
        // Whatever the outcome, an output file must never hold wrong bytes.
        let corrupt_bytes = match std::fs::read(&out) {
            Ok(bytes) => {
                use sha2::Digest as _;
                let got = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
                if got == layer.digest {
                    0
                } else {
                    bytes.len() as u64
                }
            }
            Err(_) => 0,
        };
        if ok || attempts == 0 {
            let clear_error = !ok && !error.is_empty() && !error.starts_with("hung");
            return Pull { ok: ok && corrupt_bytes == 0, clear_error, corrupt_bytes, error };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn origin_sent(world: &World) -> u64 {
    std::fs::read_to_string(world.work.join("origin-sent")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn image_bytes(world: &World) -> u64 {
    world.layers.iter().map(|l| l.len).sum()
}

async fn set_loss(world: &World, probability: Option<f64>) -> anyhow::Result<()> {
    for host in world.topo.hosts() {
        match probability {
            Some(p) => {
                let p = p.to_string();
                ns_run(
                    &host.ns,
                    "iptables",
                    &["-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
                )
                .await?;
            }
            None => {
                ns_run(&host.ns, "iptables", &["-F", "INPUT"]).await?;
            }
        }
    }
    Ok(())
}

/// Flips bytes in the middle of every content file of host `i` (a parent that then serves
/// wrong bytes for pieces it verified when it fetched them).
fn corrupt_content(case: &Case<'_>, i: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    for entry in std::fs::read_dir(case.data_dir(i).join("tasks"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "data") {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            let len = f.metadata()?.len();
            for k in 0..8u64 {
                f.write_all_at(&[0x5a; 4096], (len / 9) * (k + 1))?;
            }
        }
    }
    Ok(())
}

fn signal(proc: &Option<Proc>, sig: &str) {
    if let Some(pid) = proc.as_ref().and_then(Proc::pid) {
        let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
    }
}

async fn run_case(world: &World, name: &str, n: usize) -> anyhow::Result<Row> {
    // Its own directory even when a case runs twice (fresh caches).
    let mut case = Case::start(world, &format!("{n:02}-{name}")).await?;
    // Cold cases have no seed: host 0 pulls with the others.
    let pullers: Vec<usize> = if cold(name) { (0..=world.hosts).collect() } else { (1..=world.hosts).collect() };
    let mut mount = None;
    if name == "disk-full" {
        // Host 1's data dir on a tmpfs smaller than the image.
        let dir = case.data_dir(1);
        std::fs::create_dir_all(&dir)?;
        let size = format!("{}k", image_bytes(world) / 2 / 1024);
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &dir.display().to_string()])?;
        mount = Some(dir);
    }
    for i in 0..=world.hosts {
        case.start_daemon(i).await?;
    }
    // The seed pulls first: the parent the parent faults hit.
    let seed_dir = case.dir.join("out-seed");
    std::fs::create_dir_all(&seed_dir)?;
    let seeded = if cold(name) { &world.layers[..0] } else { &world.layers[..] };
    for layer in seeded {
        let p = pull(world, 0, layer, &seed_dir, false).await;
        if !p.ok {
            bail!("the seed could not pull {}: {}", layer.name, p.error);
        }
    }
    match name {
        "parent-wrong-bytes" => corrupt_content(&case, 0)?,
        "loss-1pct" => set_loss(world, Some(0.01)).await?,
        "loss-5pct" => set_loss(world, Some(0.05)).await?,
        "origin-5xx" => std::fs::write(world.work.join("origin-mode"), "flap")?,
        "origin-reset" => std::fs::write(world.work.join("origin-mode"), "reset")?,
        "origin-slow" => std::fs::write(world.work.join("origin-mode"), "slow")?,
        "supernode-dead" | "supernode-killed-at-start" => {
            signal(&case.sn, "-KILL");
            case.sn = None;
            if name == "supernode-dead" {
                // Dead for longer than the daemons' idle timeout on it: they know.
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
        _ => {}
    }
    let sent_before = origin_sent(world);
    let out = case.dir.join("out");
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let retry = name == "daemon-restart";
    let pulls = futures_join(world, &pullers, &out, retry);
    let fault = inject(&mut case, name, world.fault_after);
    let (results, fault_result) = tokio::join!(pulls, fault);
    let wall = started.elapsed();
    let sent = origin_sent(world).saturating_sub(sent_before);
    // Undo the environment faults before the next case.
    std::fs::write(world.work.join("origin-mode"), "ok")?;
    if name.starts_with("loss") {
        set_loss(world, None).await?;
    }
    signal(&case.daemons[0], "-CONT");
    let case_dir = case.dir.clone();
    case.stop().await;
    if let Some(dir) = mount {
        let _ = run("umount", &["-l", &dir.display().to_string()]);
    }
    fault_result?;
    let mut row = Row { case: name.into(), pulls: results.len(), wall, ..Row::default() };
    for p in &results {
        row.corrupt_bytes += p.corrupt_bytes;
        if p.ok {
            row.completed += 1;
        } else if p.clear_error {
            row.failed_clear += 1;
        } else {
            row.failed_unclear += 1;
        }
        if !p.ok && row.example_error.is_empty() {
            row.example_error = p.error.lines().last().unwrap_or_default().chars().take(320).collect();
        }
    }
    // Warm cases: the seed fetched the image before `sent_before`, so every origin byte during
    // the pulls is extra. Cold cases: one copy is what the supernode fetches without a fault.
    row.extra_origin_bytes = sent as i64 - if cold(name) { image_bytes(world) as i64 } else { 0 };
    if row.corrupt_bytes == 0 && row.failed_unclear == 0 && std::env::var_os("FAULT_KEEP").is_none() {
        // Caches and outputs of a case that went well: hundreds of MiB each.
        let _ = std::fs::remove_dir_all(&case_dir);
    }
    Ok(row)
}

async fn futures_join(world: &World, pullers: &[usize], out: &Path, retry: bool) -> Vec<Pull> {
    let mut futs = Vec::new();
    for &i in pullers {
        for layer in &world.layers {
            futs.push(pull(world, i, layer, out, retry));
        }
    }
    join_all(futs).await
}

/// Polls every future to completion concurrently (no extra dependency for `join_all`).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, r) in pinned.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *r = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// The mid-pull faults.
async fn inject(case: &mut Case<'_>, name: &str, after: Duration) -> anyhow::Result<()> {
    tokio::time::sleep(after).await;
    match name {
        "supernode-kill-restart" => {
            signal(&case.sn, "-KILL");
            case.sn = None;
            tokio::time::sleep(Duration::from_secs(2)).await;
            case.start_supernode().await?;
        }
        "parent-kill" => {
            signal(&case.daemons[0], "-KILL");
            case.daemons[0] = None;
        }
        "parent-stall" => signal(&case.daemons[0], "-STOP"),
        "daemon-restart" => {
            signal(&case.daemons[1], "-KILL");
            case.daemons[1] = None;
            tokio::time::sleep(Duration::from_millis(300)).await;
            case.start_daemon(1).await?;
        }
        _ => {}
    }
    Ok(())
}

fn table(rows: &[Row], args: &Args, world: &World) -> String {
    let base_of = |case: &str| {
        let name = if cold(case) { "baseline-cold" } else { "baseline" };
        let walls: Vec<f64> = rows.iter().filter(|r| r.case == name).map(|r| r.wall.as_secs_f64()).collect();
        (!walls.is_empty()).then(|| Duration::from_secs_f64(walls.iter().sum::<f64>() / walls.len() as f64))
    };
    let mut t = format!(
        "# Fault suite\n\n{} pulling hosts + 1 seed host (the parent that parent faults hit), each a network namespace \
         capped at {} Mbit/s up and down; image of {} layers ({} MiB); every puller runs one `dfget --digest` per \
         layer through its own dfdaemon, all at once; mid-pull faults strike {:.1} s after the pulls start. Fresh \
         supernode and daemons per case; the seed pulls the image first (from the origin, not counted), except in the \
         cold cases (`baseline-cold`, `origin-*`: every host pulls at once and the supernode fetches from the origin \
         meanwhile, so the origin faults hit that fetch; they are compared with `baseline-cold`). Extra origin bytes: \
         what the origin sent during the pulls beyond one copy of the image in cold cases, beyond nothing in warm \
         ones.\n\n\
         | case | pulls completed | failed, clear error | failed, unclear | corrupt bytes delivered | extra origin bytes | wall time | added vs baseline | example error |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.hosts,
        args.rate_mbit,
        world.layers.len(),
        image_bytes(world) >> 20,
        world.fault_after.as_secs_f64()
    );
    for r in rows {
        let added = match base_of(&r.case) {
            Some(b) if !r.case.starts_with("baseline") => format!("{:+.1} s", r.wall.as_secs_f64() - b.as_secs_f64()),
            _ => "—".into(),
        };
        t.push_str(&format!(
            "| {} | {}/{} | {} | {} | {} | {:.1} MiB | {:.1} s | {} | {} |\n",
            r.case,
            r.completed,
            r.pulls,
            r.failed_clear,
            r.failed_unclear,
            r.corrupt_bytes,
            r.extra_origin_bytes as f64 / (1 << 20) as f64,
            r.wall.as_secs_f64(),
            added,
            r.example_error.replace('|', "/"),
        ));
    }
    t
}
