//! Real Docker Engines (`dockerd`), each isolated in a temp dir, pulling through
//! `registry-mirrors`.
//!
//! Debian's `docker.io` (20.10) runs here without systemd: each [`Dockerd`] gets its own data
//! root, exec root, pid file, socket and `daemon.json`, no iptables, no bridge, the `vfs` storage
//! driver, and starts its own containerd under its exec root. Several run at once.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::containerd::{unmount_under, wait_until_dead};
use crate::ensure_success;
use crate::process::ScratchDir;
use crate::templates::DOCKER_DAEMON_JSON;

/// Time for a started dockerd to answer `GET /_ping` (measured: ~5 s, three at once on 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time one `docker` command may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Time dockerd gets to shut down cleanly (it stops its containerd) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The mirror address `deploy/docker/daemon.json` names (dfdaemon's default `--proxy-listen`).
const DEFAULT_MIRROR: &str = "127.0.0.1:65001";

/// Installs Debian's `docker.io` with apt-get when `dockerd` is missing (root; the package's
/// postinst fails to start a service without an init system, harmlessly: tests start their own).
pub fn ensure_docker() -> anyhow::Result<()> {
    let have = |program: &str| {
        std::process::Command::new("sh")
            .args(["-c", "command -v \"$1\" >/dev/null", "sh", program])
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("dockerd") && have("docker") {
        return Ok(());
    }
    eprintln!("testkit: dockerd missing: apt-get install docker.io");
    let script = "apt-get update -qq && apt-get install -y -qq docker.io >/dev/null";
    let output = std::process::Command::new("sh")
        .args(["-c", script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .context("run apt-get")?;
    ensure_success(&output, "apt-get install docker.io (needs root)")?;
    if !have("dockerd") {
        bail!("apt-get installed docker.io but dockerd is still not on PATH");
    }
    Ok(())
}

/// `deploy/docker/daemon.json` with its mirror (`127.0.0.1:65001`) replaced by `mirror_host`
/// (`HOST:PORT`, a dfdaemon's proxy address) in `registry-mirrors` and `insecure-registries`.
pub fn docker_daemon_json_for(mirror_host: &str) -> anyhow::Result<serde_json::Value> {
    let mirror_host = mirror_host.trim_start_matches("http://").trim_end_matches('/');
    let text = DOCKER_DAEMON_JSON.replace(DEFAULT_MIRROR, mirror_host);
    serde_json::from_str(&text).context("deploy/docker/daemon.json is not valid JSON")
}

/// What `docker image inspect` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerImage {
    /// The image id: the digest of its config blob.
    pub id: String,
    /// `NAME@sha256:...`: the manifest digests it was pulled by.
    pub repo_digests: Vec<String>,
}

/// A running `dockerd --config-file FILE` with everything else in a temp dir.
///
/// Dropping it stops dockerd (SIGTERM, SIGKILL after 20 s; its containerd with it), and unmounts
/// what it left mounted under its temp dir (the default network namespace under the exec root).
///
/// ```no_run
/// # async fn example(dfdaemon_proxy: &str) -> anyhow::Result<()> {
/// use damselfly_testkit::{docker_daemon_json_for, ensure_docker, ensure_success, Dockerd};
///
/// ensure_docker()?;
/// let dockerd = Dockerd::start(&docker_daemon_json_for(dfdaemon_proxy)?).await?;
/// ensure_success(&dockerd.pull("library/app:v1").await?, "docker pull")?;
/// let image = dockerd.image("app:v1").await?;
/// # Ok(()) }
/// ```
pub struct Dockerd {
    child: Option<tokio::process::Child>,
    pid: u32,
    config_file: PathBuf,
    dir: ScratchDir,
}

impl Dockerd {
    /// Writes `daemon_json` to `TMP/daemon.json`, starts dockerd with it and waits until it
    /// answers.
    pub async fn start(daemon_json: &serde_json::Value) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("damselfly-dockerd-")?;
        let config_file = dir.path().join("daemon.json");
        std::fs::write(&config_file, serde_json::to_string_pretty(daemon_json)?)?;
        Self::start_in(dir, config_file).await
    }

    /// Starts dockerd with `config_file` as it is (the file under test), and waits until it
    /// answers. A config dockerd rejects fails here with dockerd's message.
    pub async fn start_with_config_file(config_file: &Path) -> anyhow::Result<Self> {
        let dir = ScratchDir::new("damselfly-dockerd-")?;
        Self::start_in(dir, config_file.to_path_buf()).await
    }

    async fn start_in(dir: ScratchDir, config_file: PathBuf) -> anyhow::Result<Self> {
        let d = dir.path();
        for sub in ["data", "exec", "client"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let mut command = Command::new("dockerd");
        command
            .arg("--config-file")
            .arg(&config_file)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command.spawn().context("spawn dockerd (Debian package docker.io; see ensure_docker)")?;
        let pid = child.id().context("dockerd exited at once")?;
        let mut dockerd = Dockerd { child: Some(child), pid, config_file, dir };
        if let Err(e) = dockerd.wait_ready().await {
            bail!("dockerd did not start: {e:#}\n--- dockerd log (last lines) ---\n{}", dockerd.log_tail(40));
        }
        Ok(dockerd)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("dockerd exited ({status})");
                }
            }
            if self.ping().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("GET /_ping on {} did not answer OK within {READY_TIMEOUT:?}", self.socket().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /_ping` over the socket answered `OK`.
    async fn ping(&self) -> bool {
        let attempt = async {
            let mut stream = tokio::net::UnixStream::connect(self.socket()).await?;
            stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"))
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), attempt).await, Ok(Ok(true)))
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `unix://SOCKET`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The `--config-file` it runs with.
    pub fn config_file(&self) -> &Path {
        &self.config_file
    }

    /// The temp dir (data root, exec root, socket, log).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// dockerd's log (its own and its containerd's messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("dockerd.log")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `docker ARGS...` against this daemon (its own client config dir, so nothing of the
    /// machine's `~/.docker` is read) and collects the output; check `status` yourself or use
    /// [`ensure_success`].
    pub async fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("docker {}", args.join(" "));
        tokio::time::timeout(DOCKER_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{what} did not finish within {DOCKER_TIMEOUT:?}"))?
            .with_context(|| format!("run {what}"))
    }

    /// `docker pull REFERENCE`.
    pub async fn pull(&self, reference: &str) -> anyhow::Result<Output> {
        self.docker(&["pull", reference]).await
    }

    /// `docker image inspect REFERENCE`: `None` when the daemon has no such image.
    pub async fn image(&self, reference: &str) -> anyhow::Result<Option<DockerImage>> {
        let output = self.docker(&["image", "inspect", reference]).await?;
        if !output.status.success() {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).context("parse docker image inspect")?;
        let first = &value[0];
        let id = first["Id"].as_str().context("docker image inspect: no Id")?.to_string();
        let repo_digests = first["RepoDigests"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok(Some(DockerImage { id, repo_digests }))
    }

    /// `docker info` as JSON (`RegistryConfig.Mirrors`, `RegistryConfig.IndexConfigs`, ...).
    pub async fn info(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.docker(&["info", "--format", "{{json .}}"]).await?;
        ensure_success(&output, "docker info")?;
        serde_json::from_slice(&output.stdout).context("parse docker info")
    }

    /// Sends SIGHUP: dockerd re-reads its config file and applies what it can change live
    /// (`registry-mirrors`, `insecure-registries`, labels, debug, ...).
    pub fn reload(&self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-s", "HUP", &self.pid.to_string()])
            .status()
            .context("run kill -s HUP")?;
        if !status.success() {
            bail!("kill -s HUP {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Stops dockerd: SIGTERM, up to 20 s, then SIGKILL (and its containerd, should it remain).
    fn stop_now(&mut self) {
        let signal = |sig: &str, pid: &str| {
            let _ = std::process::Command::new("kill").args(["-s", sig, pid]).stderr(Stdio::null()).status();
        };
        // Held until dockerd is gone: dropping the handle would SIGKILL it (`kill_on_drop`).
        if let Some(child) = self.child.take() {
            let pid = self.pid.to_string();
            signal("TERM", &pid);
            wait_until_dead(self.pid, STOP_GRACE);
            signal("KILL", &pid);
            wait_until_dead(self.pid, Duration::from_secs(5));
            drop(child);
        }
        let containerd_pid = self.dir.path().join("exec/containerd/containerd.pid");
        if let Ok(pid) = std::fs::read_to_string(containerd_pid) {
            let pid = pid.trim();
            if let Ok(n) = pid.parse::<u32>() {
                if std::fs::read_to_string(format!("/proc/{n}/cmdline")).is_ok_and(|c| c.contains("containerd")) {
                    signal("KILL", pid);
                    wait_until_dead(n, Duration::from_secs(5));
                }
            }
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd {} log (last 40 lines) ---\n{}\n--- end ---", self.host(), self.log_tail(40));
        }
        self.stop_now();
    }
}

impl std::fmt::Debug for Dockerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dockerd").field("pid", &self.pid).field("dir", &self.dir.path()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_json_template_takes_the_mirror() -> anyhow::Result<()> {
        let value = docker_daemon_json_for("http://127.0.0.9:4000/")?;
        assert_eq!(value["registry-mirrors"], serde_json::json!(["http://127.0.0.9:4000"]));
        assert_eq!(value["insecure-registries"], serde_json::json!(["127.0.0.9:4000"]));
        Ok(())
    }
}
