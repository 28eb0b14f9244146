//! podman and skopeo (containers/image) pulling through `registries.conf`, without touching the
//! machine's container state.
//!
//! Both tools keep state in system places whatever their flags say: podman writes
//! `/etc/containers/networks`, `/run/libpod` and `/dev/shm/libpod_lock` unless told otherwise and
//! `/run/containers/networks` always, and both write a blob-info cache to
//! `/var/lib/containers/cache` when run as root. skopeo 1.9 also reads only
//! `/etc/containers/registries.conf`. So every command runs in a private mount namespace
//! (`unshare -m`) where tmpfs covers `/run` and `/dev/shm` and the temp dir's own files are
//! bind-mounted over `/var/lib/containers` and `/etc/containers/registries.conf(.d)`, and podman
//! gets its own root, runroot, tmpdir and network config dir.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::process::ScratchDir;
use crate::templates::{fill_template, write_file, REGISTRIES_CONF};

/// Time one podman or skopeo command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

/// Where containers/image keeps its blob-info cache when run as root.
const VAR_LIB_CONTAINERS: &str = "/var/lib/containers";
const SYSTEM_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";

/// The shell run by `unshare -m`: private `/run` (podman 4.3 hard-codes netavark's
/// `/run/containers/networks`) and `/dev/shm`, then `$1` = var-lib dir, `$2` = empty dir,
/// `$3` = registries.conf or empty (system file kept), then the command.
const SANDBOX_SCRIPT: &str = r#"set -e
mount -t tmpfs -o size=16m,mode=755 tmpfs /run
mount -t tmpfs -o size=64m tmpfs /dev/shm
mount --bind "$1" /var/lib/containers
if [ -d /etc/containers/registries.conf.d ]; then mount --bind "$2" /etc/containers/registries.conf.d; fi
if [ -n "$3" ]; then mount --bind "$3" /etc/containers/registries.conf; fi
shift 3
exec "$@""#;

/// A temp dir with the state one podman or skopeo "host" keeps, and the sandboxed command line.
struct Sandbox {
    dir: ScratchDir,
}

impl Sandbox {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = ScratchDir::new(prefix)?;
        for sub in ["var-lib-containers", "registries.conf.d", "tmp", "home"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        // podman fails when REGISTRY_AUTH_FILE names a missing file.
        std::fs::write(dir.path().join("auth.json"), r#"{"auths":{}}"#)?;
        // The bind target must exist; podman and skopeo would create it on first use anyway.
        std::fs::create_dir_all(VAR_LIB_CONTAINERS).with_context(|| format!("create {VAR_LIB_CONTAINERS}"))?;
        if !Path::new(SYSTEM_REGISTRIES_CONF).is_file() {
            bail!("{SYSTEM_REGISTRIES_CONF} is missing: install podman and skopeo (scripts/setup.sh)");
        }
        Ok(Sandbox { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `unshare -m sh -c SCRIPT ... program args`, with environment pointing into the temp dir.
    async fn run(&self, registries_conf: Option<&Path>, program: &str, args: &[OsString]) -> anyhow::Result<Output> {
        let conf = match registries_conf {
            Some(path) => path.canonicalize().with_context(|| format!("registries.conf {}", path.display()))?,
            None => PathBuf::new(),
        };
        let mut command = Command::new("unshare");
        command
            .args(["-m", "--propagation", "private", "sh", "-c", SANDBOX_SCRIPT, "sh"])
            .arg(self.path().join("var-lib-containers"))
            .arg(self.path().join("registries.conf.d"))
            .arg(&conf)
            .arg(program)
            .args(args)
            .env("TMPDIR", self.path().join("tmp"))
            .env("HOME", self.path().join("home"))
            .env("REGISTRY_AUTH_FILE", self.path().join("auth.json"))
            .env("CONTAINERS_STORAGE_CONF", self.path().join("storage.conf"))
            .env("NO_COLOR", "1")
            .current_dir(self.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if registries_conf.is_some() {
            command.env("CONTAINERS_REGISTRIES_CONF", &conf);
        }
        let what = format!("{program} {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{what} did not finish within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("run {what} (in unshare -m)"))
    }

    /// Adds `user:password` for `host` to the temp dir's `auth.json` (`REGISTRY_AUTH_FILE`).
    fn add_credentials(&self, host: &str, user: &str, password: &str) -> anyhow::Result<()> {
        let path = self.path().join("auth.json");
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let mut auth: serde_json::Value =
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
        let token = crate::base64_standard(format!("{user}:{password}").as_bytes());
        auth["auths"][host] = serde_json::json!({ "auth": token });
        std::fs::write(&path, auth.to_string()).with_context(|| format!("write {}", path.display()))
    }
}

/// One podman "host": its own image store (vfs driver) and state in a temp dir, every command in
/// a private mount namespace so that nothing of the machine's container state is read or written.
///
/// ```no_run
/// # async fn example(registry: &damselfly_testkit::Registry, image: &damselfly_testkit::TestImage) -> anyhow::Result<()> {
/// use damselfly_testkit::{ensure_success, registries_conf_for, Podman};
///
/// let conf = registries_conf_for(&registry.host(), &registry.host(), "127.0.0.1:65001")?;
/// let podman = Podman::new()?;
/// let reference = image.reference(&registry.host());
/// ensure_success(&podman.pull(&reference, conf.path()).await?, "podman pull")?;
/// assert_eq!(podman.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
/// # Ok(()) }
/// ```
pub struct Podman {
    sandbox: Sandbox,
}

impl Podman {
    /// A fresh, empty podman store in a temp dir (removed on drop).
    pub fn new() -> anyhow::Result<Self> {
        let sandbox = Sandbox::new("damselfly-podman-")?;
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            toml_string(&sandbox.path().join("root")),
            toml_string(&sandbox.path().join("runroot")),
        );
        std::fs::write(sandbox.path().join("storage.conf"), storage)?;
        Ok(Podman { sandbox })
    }

    /// The temp dir (store, state, `auth.json`).
    pub fn temp_dir(&self) -> &Path {
        self.sandbox.path()
    }

    /// Runs `podman <isolation flags> ARGS...` with `registries_conf` as the registries
    /// configuration (the machine's when `None`). Check `status` yourself or use
    /// [`crate::ensure_success`].
    pub async fn podman(&self, args: &[&str], registries_conf: Option<&Path>) -> anyhow::Result<Output> {
        let dir = self.sandbox.path();
        let mut full: Vec<OsString> = Vec::new();
        for (flag, value) in [
            ("--root", dir.join("root")),
            ("--runroot", dir.join("runroot")),
            ("--tmpdir", dir.join("libpod")),
            ("--network-config-dir", dir.join("networks")),
            ("--volumepath", dir.join("volumes")),
        ] {
            full.push(flag.into());
            full.push(value.into_os_string());
        }
        for arg in ["--storage-driver", "vfs", "--events-backend", "none", "--cgroup-manager", "cgroupfs"] {
            full.push(arg.into());
        }
        full.extend(args.iter().map(OsString::from));
        self.sandbox.run(registries_conf, "podman", &full).await
    }

    /// `podman pull REFERENCE` with `registries_conf`.
    pub async fn pull(&self, reference: &str, registries_conf: &Path) -> anyhow::Result<Output> {
        self.pull_with(reference, registries_conf, &[]).await
    }

    /// `podman pull EXTRA... REFERENCE` (`--platform linux/arm64`, `--creds U:P`, ...).
    pub async fn pull_with(&self, reference: &str, registries_conf: &Path, extra: &[&str]) -> anyhow::Result<Output> {
        let mut args = vec!["pull"];
        args.extend_from_slice(extra);
        args.push(reference);
        self.podman(&args, Some(registries_conf)).await
    }

    /// Credentials podman sends to `host` (a registry or a mirror: containers/image looks them up
    /// by the address it contacts, and does not send `--creds` to mirrors).
    pub fn add_credentials(&self, host: &str, user: &str, password: &str) -> anyhow::Result<()> {
        self.sandbox.add_credentials(host, user, password)
    }

    /// The manifest digest podman recorded for `reference` (`podman image inspect`), `None` when
    /// it has no such image.
    pub async fn image_digest(&self, reference: &str) -> anyhow::Result<Option<String>> {
        let output = self.podman(&["image", "inspect", "--format", "{{.Digest}}", reference], None).await?;
        if !output.status.success() {
            return Ok(None);
        }
        let digest = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Ok(Some(digest).filter(|d| d.starts_with("sha256:")))
    }
}

impl std::fmt::Debug for Podman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podman").field("dir", &self.sandbox.path()).finish()
    }
}

/// `podman pull REFERENCE` into a fresh, throw-away store, with `registries_conf`.
pub async fn podman_pull(reference: &str, registries_conf: &Path) -> anyhow::Result<Output> {
    Podman::new()?.pull(reference, registries_conf).await
}

/// `skopeo copy docker://REFERENCE dir:OUT_DIR` reading `registries_conf` (bind-mounted over
/// `/etc/containers/registries.conf` in a private mount namespace: skopeo 1.9 ignores
/// `CONTAINERS_REGISTRIES_CONF`). `OUT_DIR` receives `manifest.json` and one file per blob.
pub async fn skopeo_copy_via_mirror(reference: &str, registries_conf: &Path, out_dir: &Path) -> anyhow::Result<Output> {
    skopeo_copy_with(reference, registries_conf, out_dir, &[]).await
}

/// [`skopeo_copy_via_mirror`] with extra `skopeo copy` flags (`--src-creds U:P`, ...).
pub async fn skopeo_copy_with(
    reference: &str,
    registries_conf: &Path,
    out_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Output> {
    let sandbox = Sandbox::new("damselfly-skopeo-")?;
    let policy = sandbox.path().join("policy.json");
    std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let mut args: Vec<OsString> = vec!["--policy".into(), policy.into_os_string(), "copy".into()];
    args.extend(extra.iter().map(OsString::from));
    args.push(format!("docker://{reference}").into());
    let mut dest = OsString::from("dir:");
    dest.push(out_dir);
    args.push(dest);
    sandbox.run(Some(registries_conf), "skopeo", &args).await
}

/// A `registries.conf` from `deploy/podman/registries.conf`: images named `prefix/...` are pulled
/// from `registry_host` through the mirror `mirror_host` (both `HOST:PORT`, plain HTTP). To test
/// an engine straight against the registry, give the registry itself as the mirror.
pub fn registries_conf_for(
    prefix: &str,
    registry_host: &str,
    mirror_host: &str,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let mirror_host = mirror_host.trim_start_matches("http://").trim_end_matches('/');
    let text =
        fill_template(REGISTRIES_CONF, &[("PREFIX", prefix), ("REGISTRY", registry_host), ("MIRROR", mirror_host)])?;
    let file = tempfile::Builder::new().prefix("damselfly-registries-").suffix(".conf").tempfile()?;
    write_file(file.path(), &text)?;
    Ok(file)
}

fn toml_string(path: &Path) -> String {
    serde_json::Value::from(path.to_string_lossy()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ensure_success, Registry, RegistryOpts, TestImage};

    #[test]
    fn registries_conf_is_the_filled_template() -> anyhow::Result<()> {
        let conf = registries_conf_for("central.local", "127.0.0.1:5000", "http://127.0.0.3:65001")?;
        let text = std::fs::read_to_string(conf.path())?;
        assert!(text.contains("prefix = \"central.local\""), "{text}");
        assert!(text.contains("location = \"127.0.0.3:65001\""), "{text}");
        Ok(())
    }

    /// Files in system places whose modification time is after `since`.
    fn touched_system_files(since: std::time::SystemTime) -> Vec<PathBuf> {
        let mut touched = Vec::new();
        // Not /var/tmp or all of /dev/shm: other processes on the machine use them.
        for root in ["/etc/containers", "/run/containers", "/run/libpod", "/var/lib/containers", "/dev/shm/libpod_lock"]
        {
            let mut stack = vec![PathBuf::from(root)];
            while let Some(path) = stack.pop() {
                let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
                if meta.modified().is_ok_and(|m| m > since) {
                    touched.push(path.clone());
                }
                if meta.is_dir() {
                    if let Ok(entries) = std::fs::read_dir(&path) {
                        stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
                    }
                }
            }
        }
        touched
    }

    /// Pulls straight from a registry (the registry as its own mirror), privately and with a
    /// mirror entry, and checks that no system file changed.
    #[tokio::test]
    async fn podman_and_skopeo_pull_through_registries_conf_without_touching_the_system() -> anyhow::Result<()> {
        let registry = Registry::start(RegistryOpts::default()).await?;
        let image = TestImage::generate("demo/podman", "v1", &[256 << 10, 0], 31);
        image.push(&registry, None).await?;
        let conf = registries_conf_for(&registry.host(), &registry.host(), &registry.host())?;
        let reference = image.reference(&registry.host());

        let before = std::time::SystemTime::now();
        let mark = registry.mark().await?;
        let podman = Podman::new()?;
        ensure_success(&podman.pull(&reference, conf.path()).await?, "podman pull")?;
        assert_eq!(podman.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
        let log = registry.since(mark).await?.by_user_agent("containers/");
        for blob in image.blobs() {
            assert_eq!(log.blob_gets(&blob.digest), 1, "{}", blob.digest);
        }

        let out = tempfile::tempdir()?;
        let mark = registry.mark().await?;
        let output = skopeo_copy_via_mirror(&reference, conf.path(), &out.path().join("image")).await?;
        ensure_success(&output, "skopeo copy")?;
        for blob in image.blobs() {
            let hex = blob.digest.trim_start_matches("sha256:");
            assert_eq!(crate::file_sha256(out.path().join("image").join(hex))?, hex);
        }
        assert_eq!(registry.since(mark).await?.by_user_agent("skopeo").blob_bytes_served(), image.total_blob_bytes());

        // Through a real mirror (a pull-through cache on another address): requests carry no
        // registry name, and the registry itself is not asked.
        let opts =
            RegistryOpts { proxy_remote: Some(registry.url()), ip: Some(crate::loopback_ip()), ..Default::default() };
        let mirror = Registry::start(opts).await?;
        let conf = registries_conf_for(&registry.host(), &registry.host(), &mirror.host())?;
        let mark = registry.mark().await?;
        ensure_success(&podman_pull(&reference, conf.path()).await?, "podman pull via the mirror")?;
        let out = tempfile::tempdir()?;
        ensure_success(&skopeo_copy_via_mirror(&reference, conf.path(), out.path()).await?, "skopeo via the mirror")?;
        let through_mirror = mirror.access_log().await?;
        for agent in ["containers/", "skopeo"] {
            let log = through_mirror.by_user_agent(agent);
            assert_eq!(log.blob_bytes_served(), image.total_blob_bytes(), "{agent}: {:?}", log.records());
            assert!(log.records().iter().all(|r| r.query.is_none()), "{:?}", log.records());
        }
        let direct = registry.since(mark).await?;
        assert!(direct.by_user_agent("containers/").records().is_empty(), "{:?}", direct.records());
        assert!(direct.by_user_agent("skopeo").records().is_empty(), "{:?}", direct.records());

        let touched = touched_system_files(before);
        assert!(touched.is_empty(), "podman/skopeo touched system files: {touched:?}");
        Ok(())
    }

    /// containers/image sends credentials looked up by the address it contacts: an auth.json
    /// entry for the registry lets podman pull a private image.
    #[tokio::test]
    async fn podman_pulls_a_private_image_with_auth_json() -> anyhow::Result<()> {
        let opts = RegistryOpts { htpasswd: Some(("carol".into(), "pw".into())), ..RegistryOpts::default() };
        let registry = Registry::start(opts).await?;
        let image = TestImage::generate("demo/private", "v1", &[1000], 32);
        image.push(&registry, Some(("carol", "pw"))).await?;
        let conf = registries_conf_for(&registry.host(), &registry.host(), &registry.host())?;
        let reference = image.reference(&registry.host());

        let podman = Podman::new()?;
        let denied = podman.pull(&reference, conf.path()).await?;
        assert!(!denied.status.success(), "pulled a private image without credentials");
        let stderr = String::from_utf8_lossy(&denied.stderr);
        assert!(stderr.contains("unauthorized") || stderr.contains("401"), "{stderr}");
        podman.add_credentials(&registry.host(), "carol", "pw")?;
        ensure_success(&podman.pull(&reference, conf.path()).await?, "podman pull with auth.json")?;
        assert_eq!(podman.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
        Ok(())
    }
}
