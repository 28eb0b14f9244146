//! A real containerd daemon, isolated in a temp dir, and `ctr` pulls through `hosts.toml`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use crate::ensure_success;
use crate::process::{self, ManagedProcess, ScratchDir, Spec};
use crate::templates::{fill_template, write_file, CONTAINERD_HOSTS_TOML};

/// Time for `ctr version` to answer once the metrics endpoint is up.
const CTR_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Time one `ctr` command may take (a pull of large layers on a loaded machine).
const CTR_TIMEOUT: Duration = Duration::from_secs(600);

/// A running `containerd --config TMP/config.toml`: its own root, state, socket and plugin dirs in
/// a temp dir, the CRI plugin disabled, no systemd. Its output goes to `TMP/containerd.log`.
///
/// Dropping it SIGKILLs containerd, waits for it to be gone, and unmounts anything mounted under
/// its temp dir (snapshot mounts a killed containerd may leave) before the dir is removed.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{ensure_success, hosts_dir_for, Containerd, Registry, RegistryOpts, TestImage};
///
/// let registry = Registry::start(RegistryOpts::default()).await?;
/// let image = TestImage::generate("demo/app", "v1", &[1 << 20], 1);
/// image.push(&registry, None).await?;
/// let containerd = Containerd::start().await?;
/// let hosts = hosts_dir_for(&registry.host(), "127.0.0.1:65001")?; // dfdaemon's proxy
/// let reference = image.reference(&registry.host());
/// ensure_success(&containerd.pull(&reference, hosts.path()).await?, "ctr images pull")?;
/// assert_eq!(containerd.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
/// # Ok(()) }
/// ```
pub struct Containerd {
    socket: PathBuf,
    root: PathBuf,
    process: ManagedProcess,
    dir: ScratchDir,
}

/// What `ctr images check` says about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCheck {
    /// The reference it is stored under.
    pub reference: String,
    /// Media type of its manifest or index.
    pub media_type: String,
    /// Digest of the manifest or index pulled.
    pub digest: String,
    /// Every blob of the default platform is in the content store (`complete (n/n)`).
    pub complete: bool,
    /// The layers are unpacked into the default snapshotter.
    pub unpacked: bool,
}

impl Containerd {
    /// Writes the config, starts containerd, waits until its metrics endpoint and then
    /// `ctr version` answer.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = ScratchDir::new("damselfly-containerd-")?;
        let socket = dir.path().join("containerd.sock");
        let root = dir.path().join("root");
        let config_path = dir.path().join("config.toml");
        let make_spec = |metrics_port: u16, _udp: u16| {
            let config = config_toml(dir.path(), &socket, metrics_port);
            if let Err(e) = std::fs::write(&config_path, config) {
                eprintln!("write {}: {e}", config_path.display());
            }
            Spec {
                name: format!("containerd {}", socket.display()),
                program: "containerd".into(),
                args: vec!["--config".into(), config_path.clone().into_os_string()],
                env: vec![],
                cwd: dir.path().to_path_buf(),
                log_path: dir.path().join("containerd.log"),
                health_url: format!("http://127.0.0.1:{metrics_port}/v1/metrics"),
                ready_timeout: process::READY_TIMEOUT,
            }
        };
        let (process, _, _) = process::start_on_free_ports(std::net::Ipv4Addr::LOCALHOST, make_spec)
            .await
            .context("start containerd (Debian package containerd; scripts/setup.sh installs it)")?;
        let containerd = Containerd { socket, root, process, dir };
        containerd.wait_for_ctr().await?;
        Ok(containerd)
    }

    async fn wait_for_ctr(&self) -> anyhow::Result<()> {
        let what = format!("ctr -a {} version", self.socket.display());
        let answered = crate::eventually(&what, CTR_READY_TIMEOUT, || async {
            let output = self.ctr(&["version"]).await?;
            ensure_success(&output, &what).map(|_| true)
        })
        .await;
        answered.with_context(|| format!("containerd log:\n{}", self.process.log_tail()))
    }

    /// The gRPC socket (`ctr -a SOCKET`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's `root` (content store, snapshots, metadata).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The temp dir holding config, root, state, socket and log.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.process.spec().log_path
    }

    /// Runs `ctr -a SOCKET ARGS...` and collects its output (check `status` yourself, or use
    /// [`ensure_success`]). Fails only when `ctr` cannot run or takes over 10 minutes.
    pub async fn ctr(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut command = Command::new("ctr");
        command
            .arg("-a")
            .arg(&self.socket)
            .args(args)
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("ctr {}", args.join(" "));
        tokio::time::timeout(CTR_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{what} did not finish within {CTR_TIMEOUT:?}"))?
            .with_context(|| format!("run {what}"))
    }

    /// `ctr images pull --hosts-dir DIR REFERENCE`: resolves, fetches and unpacks (linux/amd64).
    ///
    /// No `--plain-http`: `hosts.toml` names the scheme of every host, and containerd 1.6 talks
    /// plain HTTP to loopback registries it finds no `hosts.toml` for.
    pub async fn pull(&self, reference: &str, hosts_dir: &Path) -> anyhow::Result<Output> {
        self.pull_with(reference, hosts_dir, &[]).await
    }

    /// Like [`Containerd::pull`] with extra `ctr images pull` flags (`--user U:P`,
    /// `--platform linux/arm64`, `--all-platforms`, `--http-dump`, ...).
    pub async fn pull_with(&self, reference: &str, hosts_dir: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let hosts = hosts_dir.to_string_lossy();
        let mut args = vec!["images", "pull", "--hosts-dir", hosts.as_ref()];
        args.extend_from_slice(extra);
        args.push(reference);
        self.ctr(&args).await
    }

    /// `ctr images check name==REFERENCE`: `None` when containerd has no such image.
    pub async fn image_check(&self, reference: &str) -> anyhow::Result<Option<ImageCheck>> {
        let filter = format!("name=={reference}");
        let output = self.ctr(&["images", "check", &filter]).await?;
        ensure_success(&output, "ctr images check")?;
        Ok(parse_images_check(&String::from_utf8_lossy(&output.stdout)).into_iter().find(|c| c.reference == reference))
    }

    /// The digest of the manifest (or index) stored under `reference`, `None` if there is none.
    pub async fn image_digest(&self, reference: &str) -> anyhow::Result<Option<String>> {
        Ok(self.image_check(reference).await?.map(|c| c.digest))
    }

    /// Whether `reference` is complete and unpacked.
    pub async fn unpacked(&self, reference: &str) -> anyhow::Result<bool> {
        Ok(self.image_check(reference).await?.is_some_and(|c| c.complete && c.unpacked))
    }

    /// Removes every image and all content, so that the next pull fetches every blob again.
    /// (Snapshots stay: they are keyed by layer and only unpacking reuses them.)
    pub async fn forget_images(&self) -> anyhow::Result<()> {
        let images = self.ctr(&["images", "ls", "-q"]).await?;
        ensure_success(&images, "ctr images ls -q")?;
        let refs: Vec<String> = String::from_utf8_lossy(&images.stdout).lines().map(str::to_string).collect();
        if !refs.is_empty() {
            let mut args = vec!["images", "rm", "--sync"];
            args.extend(refs.iter().map(String::as_str));
            ensure_success(&self.ctr(&args).await?, "ctr images rm")?;
        }
        let content = self.ctr(&["content", "ls", "-q"]).await?;
        ensure_success(&content, "ctr content ls -q")?;
        let digests: Vec<String> = String::from_utf8_lossy(&content.stdout).lines().map(str::to_string).collect();
        if !digests.is_empty() {
            let mut args = vec!["content", "rm"];
            args.extend(digests.iter().map(String::as_str));
            ensure_success(&self.ctr(&args).await?, "ctr content rm")?;
        }
        Ok(())
    }

    /// Everything containerd printed since it started.
    pub fn output(&self) -> String {
        self.process.output_since_spawn()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(pid) = self.process.pid() {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            wait_until_dead(pid, Duration::from_secs(5));
        }
        unmount_under(self.dir.path());
    }
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd").field("socket", &self.socket).finish()
    }
}

/// containerd's config: everything under `dir`, the CRI plugin and snapshotters that cannot work
/// here disabled, metrics on `127.0.0.1:metrics_port` (the readiness probe).
fn config_toml(dir: &Path, socket: &Path, metrics_port: u16) -> String {
    let quote = |p: PathBuf| toml_string(&p.to_string_lossy());
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[metrics]
  address = "127.0.0.1:{metrics_port}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
        root = quote(dir.join("root")),
        state = quote(dir.join("state")),
        socket = quote(socket.to_path_buf()),
        ttrpc = quote(dir.join("containerd.sock.ttrpc")),
        opt = quote(dir.join("opt")),
    )
}

/// A TOML basic string (JSON string escaping is valid TOML).
fn toml_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Parses `ctr images check` output:
/// `REF TYPE DIGEST STATUS SIZE UNPACKED`, where STATUS is `complete (3/3)` and SIZE `1.0 MiB/1.0 MiB`.
fn parse_images_check(text: &str) -> Vec<ImageCheck> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (reference, media_type, digest) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            if !digest.starts_with("sha256:") {
                return None;
            }
            Some(ImageCheck {
                reference: reference.to_string(),
                media_type: media_type.to_string(),
                digest: digest.to_string(),
                complete: fields.get(3) == Some(&"complete"),
                unpacked: fields.last() == Some(&"true"),
            })
        })
        .collect()
}

/// Writes `deploy/containerd/hosts.toml`, filled for `registry_host` and `mirror_host` (both
/// `HOST:PORT`), to `<new temp dir>/<registry_host>/hosts.toml`; pass the dir to `--hosts-dir`.
///
/// To test an engine straight against the registry, give the registry itself as the mirror.
pub fn hosts_dir_for(registry_host: &str, mirror_host: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("damselfly-hosts-").tempdir().context("create a hosts dir")?;
    let mirror_host = mirror_host.trim_start_matches("http://").trim_end_matches('/');
    let text = fill_template(CONTAINERD_HOSTS_TOML, &[("REGISTRY", registry_host), ("MIRROR", mirror_host)])?;
    write_file(&dir.path().join(registry_host).join("hosts.toml"), &text)?;
    Ok(dir)
}

/// Polls `/proc/PID/stat` until the process is gone or a zombie.
pub(crate) fn wait_until_dead(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) if !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) => {}
            _ => return,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points under `dir`, deepest first, from `/proc/self/mountinfo`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\NNN` (octal).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `umount -l` every mount under `dir` (lazy: works even while something still uses it).
pub(crate) fn unmount_under(dir: &Path) {
    for mount in mounts_under(dir) {
        let status = std::process::Command::new("umount").arg("-l").arg(&mount).stderr(Stdio::null()).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("testkit: could not unmount {} (left by containerd)", mount.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Registry, RegistryOpts, TestImage, TestIndex};

    #[test]
    fn parses_images_check() {
        let text = "REF                        TYPE                                       DIGEST                                                                  STATUS         SIZE            UNPACKED \n\
127.0.0.1:5987/demo/app:v1 application/vnd.oci.image.manifest.v1+json sha256:88dd6baf0e11e562819b175f12ae876fc3815790fff872b494940fc4d33e28ed complete (3/3) 1.0 MiB/1.0 MiB true\n\
127.0.0.1:5987/demo/b:v1 application/vnd.oci.image.index.v1+json sha256:00 incomplete (1/3) 1.0 KiB/1.0 MiB false\n";
        let checks = parse_images_check(text);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].reference, "127.0.0.1:5987/demo/app:v1");
        assert_eq!(checks[0].digest, "sha256:88dd6baf0e11e562819b175f12ae876fc3815790fff872b494940fc4d33e28ed");
        assert!(checks[0].complete && checks[0].unpacked);
        assert!(!checks[1].complete && !checks[1].unpacked);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn hosts_dir_holds_the_filled_template() -> anyhow::Result<()> {
        let dir = hosts_dir_for("127.0.0.1:5000", "http://127.0.0.9:65001")?;
        let text = std::fs::read_to_string(dir.path().join("127.0.0.1:5000/hosts.toml"))?;
        assert!(text.contains("server = \"http://127.0.0.1:5000\""), "{text}");
        assert!(text.contains("[host.\"http://127.0.0.9:65001\"]"), "{text}");
        Ok(())
    }

    /// Pulls three ways through the `hosts.toml` template: with the registry as its own mirror,
    /// through a real mirror (a pull-through cache registry on another address), and with that
    /// mirror down (containerd falls back to `server`).
    #[tokio::test]
    async fn containerd_pulls_through_hosts_toml_mirrors_and_falls_back() -> anyhow::Result<()> {
        let registry = Registry::start(RegistryOpts::default()).await?;
        let image = TestImage::generate("demo/ctr", "v1", &[1 << 20, 0, 4096], 21);
        image.push(&registry, None).await?;
        let containerd = Containerd::start().await?;
        let reference = image.reference(&registry.host());

        // 1. The registry as its own mirror: containerd adds no `ns` (same host as the reference).
        let hosts = hosts_dir_for(&registry.host(), &registry.host())?;
        let mark = registry.mark().await?;
        ensure_success(&containerd.pull(&reference, hosts.path()).await?, "ctr images pull")?;
        let check = containerd.image_check(&reference).await?.context("image stored")?;
        assert_eq!(check.digest, image.manifest_digest);
        assert!(check.complete && check.unpacked, "{check:?}");
        assert!(containerd.unpacked(&reference).await?);
        let log = registry.since(mark).await?;
        for blob in image.blobs() {
            assert_eq!(log.blob_gets(&blob.digest), 1, "{}", blob.digest);
        }
        assert_eq!(log.blob_bytes_served(), image.total_blob_bytes());
        assert!(log.records().iter().all(|r| r.query.is_none()), "{:?}", log.records());

        // 2. A mirror on another address gets every request, each with `?ns=<registry>`.
        let opts =
            RegistryOpts { proxy_remote: Some(registry.url()), ip: Some(crate::loopback_ip()), ..Default::default() };
        let mut mirror = Registry::start(opts).await?;
        let hosts = hosts_dir_for(&registry.host(), &mirror.host())?;
        containerd.forget_images().await?;
        assert_eq!(containerd.image_digest(&reference).await?, None);
        let mark = registry.mark().await?;
        ensure_success(&containerd.pull(&reference, hosts.path()).await?, "ctr images pull via the mirror")?;
        let through_mirror = mirror.access_log().await?;
        for blob in image.blobs() {
            assert_eq!(through_mirror.blob_gets(&blob.digest), 1, "{}", blob.digest);
        }
        let ns = Some(registry.host());
        assert!(through_mirror.records().iter().all(|r| r.query_param("ns") == ns), "{:?}", through_mirror.records());
        let direct = registry.since(mark).await?.by_user_agent("containerd");
        assert!(direct.records().is_empty(), "containerd went to the registry: {:?}", direct.records());

        // 3. Mirror down: containerd falls back to `server`.
        mirror.kill().await?;
        assert_eq!(
            mirror.access_log().await?.records().len(),
            through_mirror.records().len(),
            "a killed registry's log is read"
        );
        containerd.forget_images().await?;
        let mark = registry.mark().await?;
        ensure_success(&containerd.pull(&reference, hosts.path()).await?, "ctr images pull, mirror down")?;
        let fallback = registry.since(mark).await?.by_user_agent("containerd");
        assert_eq!(fallback.blob_bytes_served(), image.total_blob_bytes());
        Ok(())
    }

    /// A mirror that answers 500 (then 404) to everything: containerd falls back to `server` for
    /// manifests and blobs alike. The mirror's request log records what containerd sends.
    #[tokio::test]
    async fn containerd_falls_back_when_the_mirror_answers_errors() -> anyhow::Result<()> {
        let registry = Registry::start(RegistryOpts::default()).await?;
        let image = TestImage::generate("demo/errors", "v1", &[5000], 22);
        image.push(&registry, None).await?;
        let containerd = Containerd::start().await?;
        let reference = image.reference(&registry.host());
        let mirror = crate::Origin::start_on(crate::loopback_ip())?;
        let hosts = hosts_dir_for(&registry.host(), &mirror.addr().to_string())?;
        let v2 = format!("/v2/{}", image.name);
        let mut paths =
            vec![format!("{v2}/manifests/{}", image.tag), format!("{v2}/manifests/{}", image.manifest_digest)];
        paths.extend(image.blobs().map(|b| format!("{v2}/blobs/{}", b.digest)));

        for status in [500, 404] {
            for path in &paths {
                match status {
                    500 => mirror.add_status(path, 500),
                    _ => mirror.remove(path),
                }
            }
            containerd.forget_images().await?;
            let before = mirror.total_requests() as usize;
            ensure_success(
                &containerd.pull(&reference, hosts.path()).await?,
                &format!("pull, mirror answers {status}"),
            )?;
            assert_eq!(containerd.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
            let asked: Vec<_> = mirror.request_log().into_iter().skip(before).collect();
            for blob in image.blobs() {
                let path = format!("{v2}/blobs/{}", blob.digest);
                assert!(
                    asked.iter().any(|r| r.method == "GET" && r.path == path),
                    "{status}: mirror not asked for {path}"
                );
            }
            let ns = format!("ns={}", registry.host().replace(':', "%3A"));
            for request in &asked {
                assert_eq!(request.query.as_deref(), Some(ns.as_str()), "{request:?}");
                assert!(request.header("user-agent").is_some_and(|ua| ua.starts_with("containerd/")), "{request:?}");
            }
            let head = asked.first().context("a first request")?;
            assert_eq!(
                (head.method.as_str(), head.path.as_str()),
                ("HEAD", paths[0].as_str()),
                "resolves by tag first"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn containerd_pulls_its_platform_from_an_index_with_credentials() -> anyhow::Result<()> {
        let opts = RegistryOpts { htpasswd: Some(("bob".into(), "pw".into())), ..RegistryOpts::default() };
        let registry = Registry::start(opts).await?;
        let index = TestIndex::generate("demo/multi", "v1", &[("linux", "arm64"), ("linux", "amd64")], &[2048], 5);
        index.push(&registry, Some(("bob", "pw"))).await?;
        let containerd = Containerd::start().await?;
        let hosts = hosts_dir_for(&registry.host(), &registry.host())?;
        let reference = index.reference(&registry.host());

        let denied = containerd.pull(&reference, hosts.path()).await?;
        assert!(!denied.status.success(), "pulled without credentials");
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(stderr.contains("401 Unauthorized"), "{stderr}");

        let mark = registry.mark().await?;
        ensure_success(&containerd.pull_with(&reference, hosts.path(), &["--user", "bob:pw"]).await?, "pull")?;
        assert_eq!(containerd.image_digest(&reference).await?.as_deref(), Some(index.index_digest.as_str()));
        let log = registry.since(mark).await?;
        let amd64 = index.image("linux", "amd64").context("amd64")?;
        let arm64 = index.image("linux", "arm64").context("arm64")?;
        assert_eq!(log.blob_gets(&amd64.layers[0].digest), 1);
        assert_eq!(log.blob_gets(&arm64.layers[0].digest), 0, "only the host's platform is fetched");
        Ok(())
    }

    #[tokio::test]
    async fn dropping_containerd_leaves_no_mounts() -> anyhow::Result<()> {
        let containerd = Containerd::start().await?;
        let dir = containerd.temp_dir().to_path_buf();
        // A bind mount under its dir stands in for a snapshot mount a killed containerd left.
        let (source, target) = (dir.join("source"), dir.join("leftover"));
        std::fs::create_dir_all(&source)?;
        std::fs::create_dir_all(&target)?;
        let status = std::process::Command::new("mount").arg("--bind").arg(&source).arg(&target).status()?;
        assert!(status.success());
        assert_eq!(mounts_under(&dir), vec![target]);
        drop(containerd);
        assert!(mounts_under(&dir).is_empty());
        assert!(!dir.exists(), "temp dir removed");
        Ok(())
    }
}
