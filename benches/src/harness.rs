//! Process plumbing for the benchmark binaries: starting the workspace binaries, waiting for
//! them, reading their peak RSS and their Prometheus metrics, and a tiny HTTP client and file
//! server for loopback use (no dependency on an HTTP stack in the harness itself).

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The directory holding the workspace binaries: `$DAMSELFLY_BIN_DIR`, else the directory of the
/// running executable (the benchmark binaries are built into the same `target/<profile>/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DAMSELFLY_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("find the running executable")?;
    Ok(exe.parent().context("executable has no directory")?.to_path_buf())
}

/// The path of workspace binary `name`, failing with the build command when it is missing.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!("{} not found: run `cargo build --release --bins` first", path.display());
    }
    Ok(path)
}

/// A started child process with its output in a log file. Killed (SIGKILL) when dropped.
pub struct Proc {
    /// Name in messages.
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Spawns `program args...` with output appended to `log`.
    pub fn spawn(name: &str, log: &Path, program: &Path, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_with(name, log, Command::new(program).args(args))
    }

    /// Spawns a prepared command with output appended to `log`.
    pub fn spawn_with(name: &str, log: &Path, cmd: &mut Command) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self { name: name.into(), log: log.to_path_buf(), child })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident set size so far (VmHWM), bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss(self.pid()?)
    }

    /// CPU time used so far, seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Peak resident set size (VmHWM) of process `pid`, bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) process `pid` has used so far, seconds (`/proc/PID/stat`, at the
/// usual 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the state (field 3) here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time (user + system) of the waited-for children of the calling process, seconds.
pub fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 16 (cutime) and 17 (cstime) of stat(5).
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    Some((cutime + cstime) / 100.0)
}

/// Busy CPU time of the whole machine so far, seconds: user + nice + system + irq + softirq +
/// steal of the `cpu` line of `/proc/stat` (guest time is already inside user), at the usual 100
/// ticks per second. The difference of two readings is what every process and the kernel (the
/// bridge, `tbf`, softirqs of the network stack) used in between, whoever they belong to.
pub fn machine_busy_seconds() -> Option<f64> {
    parse_proc_stat_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The busy seconds of the aggregate `cpu` line of a `/proc/stat` text (see
/// [`machine_busy_seconds`]).
///
/// ```
/// use damselfly_benches::harness::parse_proc_stat_busy;
/// let stat = "cpu  100 20 30 1000 5 1 2 3 0 0\ncpu0 50 10 15 500 2 0 1 1 0 0\n";
/// assert_eq!(parse_proc_stat_busy(stat), Some(1.56)); // (100+20+30+1+2+3) / 100
/// ```
pub fn parse_proc_stat_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(busy as f64 / 100.0)
}

/// The command name of process `pid` (`/proc/PID/comm`).
pub fn comm(pid: u32) -> Option<String> {
    Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string())
}

/// A CPU-accounting cgroup holding the calling process and every process it starts afterwards
/// (children inherit it, also through `ip netns exec`), so that their CPU time can be read
/// together whatever else the machine runs: cgroup v1 `cpuacct` where mounted, else cgroup v2.
/// Dropping it moves the caller back and removes the group (once its other processes are gone).
#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
    parent: PathBuf,
    v2: bool,
}

impl CpuGroup {
    /// Creates group `name` below the caller's current one and moves the caller into it. `None`
    /// where cgroups cannot be written (not root, no cpuacct and no cgroup v2).
    pub fn join(name: &str) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let v1 = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "cpuacct").then(|| path.to_string())
        });
        let v2 = own.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string));
        let candidates = [
            v1.map(|p| (PathBuf::from("/sys/fs/cgroup/cpuacct").join(p.trim_start_matches('/')), false)),
            v2.clone().map(|p| (PathBuf::from("/sys/fs/cgroup").join(p.trim_start_matches('/')), true)),
            v2.map(|p| (PathBuf::from("/sys/fs/cgroup/unified").join(p.trim_start_matches('/')), true)),
        ];
        for (parent, v2) in candidates.into_iter().flatten() {
            let stat = if v2 { "cpu.stat" } else { "cpuacct.usage" };
            if !parent.join(stat).is_file() {
                continue;
            }
            let dir = parent.join(name);
            if std::fs::create_dir(&dir).is_err() && !dir.is_dir() {
                continue;
            }
            let group = CpuGroup { dir, parent, v2 };
            if std::fs::write(group.dir.join("cgroup.procs"), std::process::id().to_string()).is_ok()
                && group.usage_seconds().is_some()
            {
                return Some(group);
            }
            drop(group);
        }
        None
    }

    /// CPU time (user + system) used so far by the processes of the group, living and exited,
    /// seconds.
    pub fn usage_seconds(&self) -> Option<f64> {
        if self.v2 {
            let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
            let usec: f64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
            Some(usec / 1e6)
        } else {
            let ns: f64 = std::fs::read_to_string(self.dir.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
            Some(ns / 1e9)
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.procs"), std::process::id().to_string());
        for _ in 0..20 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Interrupt and softirq time of the whole machine so far, seconds (`/proc/stat`): mostly the
/// kernel's packet processing (veth, bridge, `tbf`), which no process is charged for.
pub fn machine_irq_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    Some((v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0)) as f64 / 100.0)
}

/// A TCP port on `ip` that was free a moment ago.
pub fn free_tcp_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A UDP port on `ip` that was free a moment ago.
pub fn free_udp_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// `GET http://addr/path` over HTTP/1.1 with `Connection: close`; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `GET http://addr/healthz` answers 200, failing early if `proc` exits.
pub async fn wait_healthy(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(addr, "/healthz").await {
            return Ok(());
        }
        if !proc.running() {
            bail!("{} exited before answering /healthz:\n{}", proc.name, proc.tail(20));
        }
        if Instant::now() > deadline {
            bail!("{} did not answer /healthz within {timeout:?}:\n{}", proc.name, proc.tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of the samples of metric `name` on a Prometheus text page whose labels contain
/// `label_filter` (empty: all).
///
/// ```
/// use damselfly_benches::harness::metric;
/// let page = "# TYPE x counter\nx_total{source=\"peer\"} 10\nx_total{source=\"origin\"} 5\n";
/// assert_eq!(metric(page, "x_total", ""), 15.0);
/// assert_eq!(metric(page, "x_total", "source=\"peer\""), 10.0);
/// ```
pub fn metric(page: &str, name: &str, label_filter: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, rest) = match l.rfind('}') {
                Some(close) => (&l[..close + 1], &l[close + 1..]),
                None => l.split_once(' ')?,
            };
            let metric_name = series.split('{').next()?;
            if metric_name != name || !series.contains(label_filter) {
                return None;
            }
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Serves files from `dir` over HTTP/1.1 on `listener` (GET only, whole files, one request per
/// connection): a stand-in origin on loopback. Runs until the task is dropped.
pub async fn serve_files(listener: tokio::net::TcpListener, dir: PathBuf) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let dir = dir.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
                if got == buf.len() {
                    return;
                }
            }
            let head = String::from_utf8_lossy(&buf[..got]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let file = if path.contains("..") { None } else { tokio::fs::File::open(dir.join(&path)).await.ok() };
            let Some(mut file) = file else {
                let _ =
                    stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                return;
            };
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(header.as_bytes()).await.is_ok() && !head.starts_with("HEAD ") {
                let _ = tokio::io::copy(&mut file, &mut stream).await;
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Writes `len` pseudo-random bytes to `path` and returns their `sha256:<hex>` digest.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> anyhow::Result<String> {
    use sha2::Digest;
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = sha2::Sha256::new();
    let mut state = seed | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
