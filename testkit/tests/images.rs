//! The container images (`scripts/build-images.sh`, `deploy/images/`), built and run for real:
//! the script builds both images from the workspace binaries with a dockerd it starts itself and
//! pushes them to a real registry; the test pulls them back from that registry and runs them the
//! way `deploy/kubernetes` does. The supernode runs as its unprivileged user on a read-only root
//! and answers `/healthz`; a dfdaemon from its image (its data dir as shipped) enrolls with it
//! and answers `/healthz`; the dfdaemon image's node-setup init step, as root with only the
//! capabilities the DaemonSet grants, writes the engine configuration into a scratch "host".
//!
//! Needs root (dockerd) and the Debian packages the script installs; uses the binaries the
//! workspace build made (`target/debug` in CI), like every other test here.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use damselfly_testkit::{
    bin_path, ensure_success, free_tcp_port, free_udp_port, http_client, loopback_ip, Registry, RegistryOpts,
};
use tokio::process::Command;
use tokio::time::Instant;

/// The tag the test builds and pushes (the registry is the test's own).
const TAG: &str = "test";

/// The user both images run as (`scripts/build-images.sh`, `APP_UID`).
const APP_UID: u32 = 65532;

/// How long a container may take to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The dockerd `build-images.sh` starts under a temp dir (`--docker-dir`, `--keep-dockerd`) and
/// the containers the test starts on it. Dropping it removes the containers, stops dockerd
/// (SIGTERM, then SIGKILL after 30 s), unmounts what it left mounted and removes the dir.
struct Docker {
    dir: tempfile::TempDir,
    containers: Vec<String>,
}

impl Docker {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("damselfly-images-").tempdir()?;
        Ok(Docker { dir, containers: Vec::new() })
    }

    fn docker_dir(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// `unix://TMP/docker.sock`: where the script starts dockerd, since nothing answers there.
    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn command(&self) -> Command {
        let mut command = Command::new("docker");
        command.env("DOCKER_HOST", self.host()).stdin(Stdio::null());
        command
    }

    /// Runs `docker ARGS...`; fails with its output unless it succeeds. Returns stdout, trimmed.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.command().args(args).output().await.with_context(|| format!("run docker {args:?}"))?;
        ensure_success(&output, &format!("docker {}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `docker run -d --name NAME ARGS...`; the container is removed when `self` is dropped.
    async fn run_detached(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        self.containers.push(name.to_string());
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        self.run(&all).await.map(drop)
    }

    /// Polls `url` until it answers 200, failing early (with the container's log) when the
    /// container stops.
    async fn wait_healthy(&self, container: &str, url: &str) -> anyhow::Result<()> {
        let client = http_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = client.get(url).timeout(Duration::from_secs(2)).send().await;
            if answer.as_ref().is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(());
            }
            let running = self.run(&["inspect", "--format", "{{.State.Running}}", container]).await?;
            if running != "true" || Instant::now() >= deadline {
                let logs = self.command().args(["logs", container]).output().await?;
                bail!(
                    "container {container}: GET {url} did not answer 200 (last: {answer:?}; running: {running})\n\
                     --- docker logs ---\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        let host = self.host();
        let docker = |args: &[&str]| {
            let _ = std::process::Command::new("docker")
                .env("DOCKER_HOST", &host)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for name in &self.containers {
            docker(&["rm", "-f", name]);
        }
        let pid = std::fs::read_to_string(self.docker_dir().join("dockerd.pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() {
            let signal = |sig: &str| {
                let _ = std::process::Command::new("kill").args(["-s", sig, pid]).stderr(Stdio::null()).status();
            };
            signal("TERM");
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while proc_dir.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if proc_dir.exists() {
                signal("KILL");
            }
        }
        // dockerd leaves its default network namespace (EXEC_ROOT/netns/default) mounted.
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&prefix)).collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in ours {
            let _ = std::process::Command::new("umount").args(["-l", mount]).stderr(Stdio::null()).status();
        }
    }
}

/// `scripts/build-images.sh --bin-dir DIR --tag test --push REGISTRY`, starting its own dockerd.
async fn build_and_push(docker: &Docker, bin_dir: &Path, registry: &str) -> anyhow::Result<String> {
    let mut args: Vec<OsString> = vec!["scripts/build-images.sh".into(), "--bin-dir".into(), bin_dir.into()];
    args.extend(["--tag", TAG, "--push", registry, "--keep-dockerd", "--docker-dir"].map(OsString::from));
    args.push(docker.docker_dir().into());
    let output = Command::new("bash")
        .args(args)
        .current_dir(workspace_root())
        .env("DOCKER_HOST", docker.host())
        .stdin(Stdio::null())
        .output()
        .await
        .context("run scripts/build-images.sh")?;
    ensure_success(&output, "scripts/build-images.sh")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Pulls `REGISTRY/damselfly/NAME:test` after removing every local copy, so that what runs is
/// what the registry holds. Returns the reference and prints the image's size.
async fn pull_from_registry(docker: &Docker, registry: &str, name: &str) -> anyhow::Result<String> {
    let local = format!("damselfly/{name}:{TAG}");
    let pushed = format!("{registry}/{local}");
    docker.run(&["rmi", &local, &pushed]).await?;
    docker.run(&["pull", "--quiet", &pushed]).await?;
    let size: f64 = docker.run(&["image", "inspect", "--format", "{{.Size}}", &pushed]).await?.parse()?;
    println!("image {pushed}: {:.1} MiB (from the {name} binary)", size / 1048576.0);
    let user = docker.run(&["image", "inspect", "--format", "{{.Config.User}}", &pushed]).await?;
    assert_eq!(user, format!("{APP_UID}:{APP_UID}"), "{pushed} must run as the unprivileged user");
    Ok(pushed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_build_push_pull_and_run() -> anyhow::Result<()> {
    let bin_dir = bin_path("supernode")?.parent().context("binary dir")?.to_path_buf();
    bin_path("dfdaemon")?;
    let registry = Registry::start(RegistryOpts::default()).await?;
    let mut docker = Docker::new()?;

    let report = build_and_push(&docker, &bin_dir, &registry.host()).await?;
    print!("{report}");
    for name in ["supernode", "dfdaemon"] {
        let (content_type, _) = registry.get_manifest(&format!("damselfly/{name}"), TAG).await?;
        assert!(content_type.contains("manifest"), "{name}: {content_type}");
    }
    let supernode_image = pull_from_registry(&docker, &registry.host(), "supernode").await?;
    let dfdaemon_image = pull_from_registry(&docker, &registry.host(), "dfdaemon").await?;

    // The supernode as the StatefulSet runs it: its user, a read-only root, the data dir a
    // volume owned by that user (here a host dir), the node's network standing in for the pod's.
    let sn_ip = loopback_ip();
    let (sn_http, sn_quic) = (free_tcp_port(sn_ip)?, free_udp_port(sn_ip)?);
    let sn_data = docker.dir.path().join("supernode-data");
    std::fs::create_dir(&sn_data)?;
    std::os::unix::fs::chown(&sn_data, Some(APP_UID), Some(APP_UID))?;
    let sn_name = format!("damselfly-test-supernode-{}", std::process::id());
    let volume = format!("{}:/var/lib/damselfly/supernode", sn_data.display());
    let (quic, http) = (format!("{sn_ip}:{sn_quic}"), format!("{sn_ip}:{sn_http}"));
    docker
        .run_detached(
            &sn_name,
            &[
                "--network=host",
                "--read-only",
                "--tmpfs=/tmp",
                "--cap-drop=ALL",
                "--volume",
                &volume,
                &supernode_image,
                "--quic-listen",
                &quic,
                "--http-listen",
                &http,
                "--data-dir",
                "/var/lib/damselfly/supernode",
            ],
        )
        .await?;
    docker.wait_healthy(&sn_name, &format!("http://{http}/healthz")).await?;

    // A dfdaemon from its image, data dir as shipped (owned by the image's user). A supernode
    // that writes a join token (ARCHITECTURE "Trust and access") gets it passed on.
    let d_ip = loopback_ip();
    let (proxy, peer) = (format!("{d_ip}:{}", free_tcp_port(d_ip)?), format!("{d_ip}:{}", free_udp_port(d_ip)?));
    let d_name = format!("damselfly-test-dfdaemon-{}", std::process::id());
    let mut args: Vec<String> = ["--network=host", "--cap-drop=ALL"].map(String::from).to_vec();
    if let Ok(token) = std::fs::read_to_string(sn_data.join("join-token")) {
        args.extend(["--env".to_string(), format!("DAMSELFLY_JOIN_TOKEN={}", token.trim())]);
    }
    args.push(dfdaemon_image.clone());
    args.extend(
        [
            "--supernode",
            &quic,
            "--proxy-listen",
            &proxy,
            "--peer-listen",
            &peer,
            "--data-dir",
            "/var/lib/damselfly/dfdaemon",
        ]
        .map(String::from),
    );
    docker.run_detached(&d_name, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    docker.wait_healthy(&d_name, &format!("http://{proxy}/healthz")).await?;

    run_node_setup(&docker, &dfdaemon_image).await
}

/// The DaemonSet's init step in the dfdaemon image, as root with the DaemonSet's capabilities,
/// against a scratch directory standing for the node's `/`.
async fn run_node_setup(docker: &Docker, image: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    let hosts = docker.dir.path().join("containerd-hosts");
    std::fs::create_dir(&hosts)?;
    std::fs::copy(root.join("deploy/kubernetes/hosts-docker.io.toml"), hosts.join("docker.io"))?;
    let node = docker.dir.path().join("node");
    let mounts = [
        format!("{}:/setup:ro", root.join("deploy/kubernetes").canonicalize()?.display()),
        format!("{}:/config/containerd-hosts:ro", hosts.display()),
        format!("{}:/host", node.display()),
    ];
    let mut args = vec![
        "run",
        "--rm",
        "--network=none",
        "--user=0:0",
        "--read-only",
        "--tmpfs=/tmp",
        "--cap-drop=ALL",
        "--cap-add=CHOWN",
        "--cap-add=DAC_OVERRIDE",
        "--cap-add=FOWNER",
        "--entrypoint=/bin/busybox",
    ];
    for mount in &mounts {
        args.extend(["--volume", mount.as_str()]);
    }
    args.extend([image, "sh", "/setup/node-setup.sh"]);
    let first = docker.run(&args).await?;
    let hosts_toml = std::fs::read_to_string(node.join("etc/containerd/certs.d/docker.io/hosts.toml"))?;
    assert!(hosts_toml.contains("[host.\"http://127.0.0.1:65001\"]"), "{first}\n{hosts_toml}");
    let dropin = std::fs::read_to_string(node.join("etc/containers/registries.conf.d/damselfly.conf"))?;
    assert!(dropin.contains("location = \"127.0.0.1:65001\""), "{first}\n{dropin}");
    let data = std::fs::metadata(node.join("var/lib/damselfly/dfdaemon"))?;
    assert_eq!((data.uid(), data.gid(), data.mode() & 0o777), (APP_UID, APP_UID, 0o750), "{first}");
    let second = docker.run(&args).await?;
    assert!(!second.contains("wrote") && !second.contains("now owned"), "a second run changed the node:\n{second}");
    Ok(())
}
