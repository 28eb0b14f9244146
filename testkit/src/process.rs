//! One started binary: its command line, its log file, readiness, and how it ends.
//!
//! [`crate::Supernode`] and [`crate::Dfdaemon`] are thin wrappers that choose addresses and
//! arguments; everything about the process itself lives here.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// Lines of the log shown when a process fails to start or a test panics.
pub(crate) const TAIL_LINES: usize = 50;

/// How long [`ManagedProcess::stop`] waits after SIGTERM before it sends SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Default time for a process to answer `/healthz` with 200.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run and how to tell it is ready.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Shown in messages: `supernode 127.0.0.7`.
    pub(crate) name: String,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, String)>,
    /// Working directory: stray files land in the process's temp dir.
    pub(crate) cwd: PathBuf,
    /// stdout and stderr are appended here, across restarts.
    pub(crate) log_path: PathBuf,
    /// Polled until it answers 200.
    pub(crate) health_url: String,
    pub(crate) ready_timeout: Duration,
}

/// A running (or stopped) child process. SIGKILLed when dropped; its log tail is printed when it
/// is dropped during a panic, so a failing test shows what the daemon said.
pub(crate) struct ManagedProcess {
    spec: Spec,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
    /// Length of the log when the current child was spawned: where its own output begins.
    log_start: u64,
    client: reqwest::Client,
}

impl ManagedProcess {
    /// Spawns the process and waits until it is ready.
    pub(crate) async fn start(spec: Spec) -> anyhow::Result<Self> {
        let mut process =
            ManagedProcess { spec, child: None, last_exit: None, log_start: 0, client: crate::http_client() };
        process.spawn_and_wait_ready().await?;
        Ok(process)
    }

    pub(crate) fn spec(&self) -> &Spec {
        &self.spec
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The operating system's id of the running child, `None` once it was killed or stopped.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the child is still running (reaps it if it exited).
    pub(crate) fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// How the last child ended, if it did.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.last_exit
    }

    /// Sends SIGKILL and waits for the child to be gone. No-op when it is not running.
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.with_context(|| format!("kill {}", self.spec.name))?;
            self.last_exit = child.try_wait().ok().flatten();
            let status = self.last_exit.map_or("status unknown".into(), |s| s.to_string());
            self.note(&format!("killed by the test (SIGKILL): {status}"));
        }
        Ok(())
    }

    /// Sends SIGTERM, waits up to 10 s for a clean exit, then SIGKILLs. Returns how it exited
    /// (the last exit status when it was not running).
    pub(crate) async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return self.last_exit.with_context(|| format!("{} was never started", self.spec.name));
        };
        let status = match child.id() {
            Some(pid) => {
                send_sigterm(pid).await?;
                match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        self.note("did not exit within 10 s of SIGTERM: SIGKILL");
                        child.kill().await?;
                        child.wait().await?
                    }
                }
            }
            None => child.wait().await?,
        };
        self.note(&format!("stopped by the test (SIGTERM): {status}"));
        self.last_exit = Some(status);
        Ok(status)
    }

    /// Stops the child if it runs (SIGTERM, like [`Self::stop`]), then starts it again with the
    /// same command line, and waits until it is ready.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop().await?;
        }
        self.spawn_and_wait_ready().await
    }

    /// The last [`TAIL_LINES`] lines of the log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.spec.log_path, 0, TAIL_LINES)
    }

    /// The whole output of the current (or last) child, for matching on its messages.
    pub(crate) fn output_since_spawn(&self) -> String {
        log_tail(&self.spec.log_path, self.log_start, usize::MAX)
    }

    async fn spawn_and_wait_ready(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        if let Err(e) = self.wait_ready().await {
            let _ = self.kill().await;
            return Err(anyhow::anyhow!(
                "{} did not start: {e:#}\n--- log {} (last {TAIL_LINES} lines) ---\n{}--- end of log ---",
                self.spec.name,
                self.spec.log_path.display(),
                self.log_tail()
            ));
        }
        Ok(())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let spec = &self.spec;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .with_context(|| format!("open log {}", spec.log_path.display()))?;
        self.log_start = log.metadata()?.len();
        let command_line = std::iter::once(spec.program.as_os_str())
            .chain(spec.args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(log, "=== testkit: starting {}: {command_line}", spec.name)?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            // Plain text in log files; `opts.env` may override it.
            .env("NO_COLOR", "1")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("spawn {}", spec.program.display()))?;
        self.child = Some(child);
        self.last_exit = None;
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.spec.ready_timeout;
        loop {
            if !self.is_running() {
                bail!(
                    "{} exited before it was ready ({})",
                    self.spec.name,
                    self.last_exit.map_or("unknown status".into(), |s| s.to_string())
                );
            }
            let response = self.client.get(&self.spec.health_url).timeout(Duration::from_secs(2)).send().await;
            if let Ok(response) = &response {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let last = match response {
                    Ok(r) => format!("last answer {}", r.status()),
                    Err(e) => format!("last error {e}"),
                };
                bail!(
                    "{} not ready: GET {} did not answer 200 within {:?} ({last})",
                    self.spec.name,
                    self.spec.health_url,
                    self.spec.ready_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Appends a testkit line to the process's log, so the log tells what the test did.
    fn note(&self, message: &str) {
        if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&self.spec.log_path) {
            let _ = writeln!(log, "=== testkit: {}: {message}", self.spec.name);
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} log {} (last {TAIL_LINES} lines) ---\n{}--- end of {} log ---",
                self.spec.name,
                self.spec.log_path.display(),
                self.log_tail(),
                self.spec.name
            );
        }
    }
}

/// SIGTERM through the shell's `kill` builtin: the workspace forbids `unsafe`, so no `libc::kill`.
async fn send_sigterm(pid: u32) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s TERM \"$1\"", "sh", &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .await
        .context("run sh to send SIGTERM")?;
    if !status.success() {
        bail!("kill -s TERM {pid} failed: {status}");
    }
    Ok(())
}

/// The last `lines` lines of the file from byte `from` on, reading at most the last 256 KiB.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    const MAX_READ: u64 = 256 << 10;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::from("(no log)\n");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX_READ));
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::from("(unreadable log)\n");
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
    tail.push('\n');
    tail
}

/// Environment variable that keeps the temp dirs (data dirs and logs) of a test that panicked.
pub const KEEP_DIRS_ENV: &str = "DAMSELFLY_KEEP_TEST_DIRS";

/// A process's temp dir (data dir and log): removed on drop, unless the test panicked and
/// `DAMSELFLY_KEEP_TEST_DIRS=1` is set.
pub(crate) struct ScratchDir(tempfile::TempDir);

impl ScratchDir {
    pub(crate) fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().context("create a temp dir for a test process")?;
        Ok(ScratchDir(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os(KEEP_DIRS_ENV).is_some_and(|v| v == "1") {
            self.0.disable_cleanup(true);
            eprintln!("kept {} ({KEEP_DIRS_ENV}=1)", self.0.path().display());
        }
    }
}

/// How many times a process is started on fresh ports when another process took one of them
/// between [`crate::free_tcp_port`] and the bind.
const START_ATTEMPTS: usize = 3;

/// Starts the process `make_spec(tcp_port, udp_port)` describes on free ports of `ip`, retrying
/// with new ports when the log says an address was in use. Returns the process and its ports.
pub(crate) async fn start_on_free_ports(
    ip: std::net::Ipv4Addr,
    mut make_spec: impl FnMut(u16, u16) -> Spec,
) -> anyhow::Result<(ManagedProcess, u16, u16)> {
    let mut attempt = 1;
    loop {
        let tcp = crate::free_tcp_port(ip)?;
        let udp = crate::free_udp_port(ip)?;
        match ManagedProcess::start(make_spec(tcp, udp)).await {
            Ok(process) => return Ok((process, tcp, udp)),
            Err(e) if attempt < START_ATTEMPTS && is_port_conflict(&e) => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

fn is_port_conflict(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}").to_ascii_lowercase();
    text.contains("address already in use") || text.contains("addrinuse")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, script: &str, health_url: String) -> Spec {
        Spec {
            name: "test-child".into(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            cwd: dir.to_path_buf(),
            log_path: dir.join("child.log"),
            health_url,
            ready_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn early_exit_fails_with_log_tail() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let spec = spec(dir.path(), "echo boom-marker >&2; exit 3", "http://127.0.0.1:9/".into());
        let err = ManagedProcess::start(spec).await.err().context("must fail")?;
        let msg = format!("{err:#}");
        assert!(msg.contains("boom-marker"), "{msg}");
        assert!(msg.contains("exited before it was ready"), "{msg}");
        Ok(())
    }

    #[tokio::test]
    async fn ready_stop_and_restart() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let origin = crate::Origin::start()?;
        origin.add("/healthz", bytes::Bytes::from_static(b"ok"));
        let script = "trap 'echo got-term; exit 0' TERM; while true; do sleep 0.05; done";
        let mut process = ManagedProcess::start(spec(dir.path(), script, origin.url("/healthz"))).await?;
        assert!(process.is_running());
        let status = process.stop().await?;
        assert!(status.success(), "{status}");
        assert!(process.output_since_spawn().contains("got-term"));
        assert!(!process.is_running());
        process.restart().await?;
        let pid = process.pid().context("running")?;
        assert!(pid > 0);
        process.kill().await?;
        assert!(!process.is_running());
        assert!(process.log_tail().contains("killed by the test"));
        Ok(())
    }

    #[test]
    fn port_conflicts_are_recognised() {
        let conflict = anyhow::anyhow!("bind 127.0.0.5:4000: Address already in use (os error 98)");
        assert!(is_port_conflict(&conflict.context("supernode did not start")));
        assert!(!is_port_conflict(&anyhow::anyhow!("unknown flag --quic-listen")));
    }

    #[test]
    fn tail_keeps_last_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text)?;
        let tail = log_tail(&path, 0, 3);
        assert_eq!(tail, "line 97\nline 98\nline 99\n");
        assert_eq!(log_tail(&dir.path().join("none"), 0, 3), "(no log)\n");
        Ok(())
    }
}
