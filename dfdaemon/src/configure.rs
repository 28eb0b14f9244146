//! `dfdaemon configure ENGINE`: writes a container engine's registry-mirror configuration so
//! that it pulls through the local dfdaemon.
//!
//! | engine | file | what is merged in |
//! |---|---|---|
//! | `containerd` | `<config dir>/<registry>/hosts.toml` (default dir `/etc/containerd/certs.d`) | `server` (when missing), a `[host."<mirror>"]` first, pull + resolve |
//! | `crio`, `podman` | `/etc/containers/registries.conf.d/50-damselfly.conf` (or any registries.conf) | the registry's `[[registry]]`, a `[[registry.mirror]]` first |
//! | `docker` | `/etc/docker/daemon.json` | the mirror first in `registry-mirrors`, plus `insecure-registries` for an http mirror |
//!
//! Every run is idempotent: the file is parsed (TOML with `toml_edit`, which keeps comments and
//! layout; JSON keeping the key order and every untouched value's text), the mirror merged in,
//! and the file written only when that changes it, atomically, with a backup of the previous
//! content (`FILE.bak-<UTC timestamp>`). Everything else in the file is kept. A file that does
//! not parse is an error and stays as it is. Entries this command wrote carry a marker comment
//! (TOML), so a later run with another `--mirror` replaces them instead of piling up.
//! `--dry-run` prints the diff and writes nothing.

mod containerd;
mod docker;
mod files;
mod registries_conf;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use dfdaemon::DaemonConfig;

use files::{Change, Outcome};

/// Written into the comment above every TOML table this command adds: how a later run tells
/// its own entries from the user's.
const MARKER: &str = "Damselfly mirror (dfdaemon configure)";

/// The mirror when neither `--mirror` nor `--config` says otherwise: dfdaemon's default
/// `--proxy-listen`.
const DEFAULT_MIRROR: &str = "http://127.0.0.1:65001";

/// Docker Hub as image references name it.
const DOCKER_HUB: &str = "docker.io";

/// Write a container engine's configuration so that it pulls through this host's dfdaemon.
#[derive(Parser, Debug)]
#[command(name = "dfdaemon configure", bin_name = "dfdaemon configure")]
pub(crate) struct ConfigureArgs {
    #[command(subcommand)]
    engine: Engine,
}

#[derive(Subcommand, Debug)]
enum Engine {
    /// containerd (Kubernetes CRI, ctr, nerdctl): one hosts.toml per registry.
    Containerd {
        #[command(flatten)]
        common: Common,
        /// Registry to pull through the mirror: as image references name it (`docker.io`,
        /// `registry.example.com:5000`), or `http(s)://HOST[:PORT]` to set how containerd
        /// reaches it (`server`); repeatable [default: docker.io].
        #[arg(long = "registry", value_name = "REGISTRY")]
        registries: Vec<String>,
        /// containerd's registry config directory (CRI `config_path`, `ctr --hosts-dir`).
        #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
        config_dir: PathBuf,
    },
    /// CRI-O: a registries.conf drop-in (CRI-O applies it on reload).
    Crio(ContainersArgs),
    /// podman, skopeo, buildah: a registries.conf drop-in (read at every pull).
    Podman(ContainersArgs),
    /// Docker Engine: registry-mirrors in daemon.json (used for Docker Hub images only).
    Docker {
        #[command(flatten)]
        common: Common,
        /// Docker's daemon configuration file.
        #[arg(long, value_name = "FILE", default_value = "/etc/docker/daemon.json")]
        file: PathBuf,
    },
}

/// Flags of the engines that read registries.conf (containers/image).
#[derive(Args, Debug)]
struct ContainersArgs {
    #[command(flatten)]
    common: Common,
    /// Registry to pull through the mirror, as image references name it, or
    /// `http(s)://HOST[:PORT]` (http: reached over plain HTTP). These engines do not tell the
    /// mirror which registry they want, so it must be the registry dfdaemon forwards to (its
    /// `--registry`) [default: that registry, from --config; else docker.io].
    #[arg(long, value_name = "REGISTRY")]
    registry: Option<String>,
    /// The registries.conf file to merge into: a drop-in (default) or the main file.
    #[arg(long, value_name = "FILE", default_value = "/etc/containers/registries.conf.d/50-damselfly.conf")]
    file: PathBuf,
}

/// Flags every engine takes.
#[derive(Args, Debug)]
struct Common {
    /// dfdaemon's registry mirror as the engine reaches it, `http://HOST:PORT` [default: from
    /// --config's proxy_listen, else http://127.0.0.1:65001].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// The dfdaemon config file: the mirror address (proxy_listen) and upstream registry come
    /// from it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print what would change (a diff) and write nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `dfdaemon configure ...` with `argv[0]` = `configure`. Returns the process exit code.
pub(crate) fn main(argv: &[std::ffi::OsString]) -> i32 {
    let args = ConfigureArgs::parse_from(argv);
    let mut out = std::io::stdout().lock();
    match run(args, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dfdaemon configure: error: {e:#}");
            1
        }
    }
}

fn run(args: ConfigureArgs, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    match args.engine {
        Engine::Containerd { common, registries, config_dir } => {
            let ctx = LocalDaemon::load(&common)?;
            let registries = if registries.is_empty() { vec![DOCKER_HUB.to_string()] } else { registries };
            for registry in &registries {
                let registry = RegistryRef::parse(registry)?;
                let path = config_dir.join(&registry.name).join("hosts.toml");
                let before = files::read_optional(&path)?;
                let server = match &registry.scheme {
                    Some(scheme) => containerd::Server::Set(format!("{scheme}://{}", registry.upstream_host())),
                    None => containerd::Server::IfMissing(ctx.default_server(&registry)),
                };
                let after = containerd::merge_hosts_toml(before.as_deref(), &registry.name, &server, &ctx.mirror)
                    .with_context(|| in_file(&path))?;
                report(&Change { path, before, after }, common.dry_run, out)?;
            }
            containerd_hint(&config_dir, out)
        }
        Engine::Crio(args) => {
            configure_containers(args, "CRI-O applies it on SIGHUP (`systemctl reload crio`) or restart", out)
        }
        Engine::Podman(args) => configure_containers(args, "podman, skopeo and buildah read it at every pull", out),
        Engine::Docker { common, file } => {
            let ctx = LocalDaemon::load(&common)?;
            let before = files::read_optional(&file)?;
            let after = docker::merge_daemon_json(before.as_deref(), &ctx.mirror).with_context(|| in_file(&file))?;
            report(&Change { path: file, before, after }, common.dry_run, out)?;
            if let Some(upstream) = ctx.upstream.as_ref().filter(|u| u.name != DOCKER_HUB) {
                writeln!(out, "note: this dfdaemon sends Docker Hub pulls to {} (its `registry`)", upstream.name)?;
            }
            writeln!(
                out,
                "Docker sends only Docker Hub images to registry-mirrors. dockerd applies the change on \
                 SIGHUP (`systemctl reload docker`) or restart."
            )?;
            Ok(())
        }
    }
}

/// crio / podman: one `[[registry]]` with our mirror in a registries.conf file.
fn configure_containers(args: ContainersArgs, hint: &str, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let ctx = LocalDaemon::load(&args.common)?;
    let registry = match (&args.registry, &ctx.upstream) {
        (Some(r), _) => RegistryRef::parse(r)?,
        (None, Some(upstream)) => upstream.clone(),
        (None, None) => RegistryRef::parse(DOCKER_HUB)?,
    };
    match &ctx.upstream {
        Some(upstream) if upstream.name != registry.name => bail!(
            "these engines do not tell the mirror which registry they pull from, and this dfdaemon forwards \
             such pulls to {} (its `registry`), not {}: run a dfdaemon with --registry for {} instead",
            upstream.name,
            registry.name,
            registry.name
        ),
        Some(_) => {}
        None if registry.name != DOCKER_HUB => writeln!(
            out,
            "note: these engines do not name the registry to the mirror: run dfdaemon with --registry {}://{}",
            registry.scheme.as_deref().unwrap_or("https"),
            registry.upstream_host()
        )?,
        None => {}
    }
    let entry = registries_conf::Upstream {
        prefix: registry.name.clone(),
        location: registry.name.clone(),
        insecure: registry.scheme.as_deref() == Some("http") || ctx.insecure.contains(&registry.name),
    };
    let path = &args.file;
    let before = files::read_optional(path)?;
    let base = match registries_conf::main_file_of(path) {
        Some(main) => registries_conf::entry_in(&main, &registry.name)?,
        None => None,
    };
    let after = registries_conf::merge_registries_conf(before.as_deref(), &entry, base.as_ref(), &ctx.mirror)
        .with_context(|| in_file(path))?;
    report(&Change { path: path.clone(), before, after }, args.common.dry_run, out)?;
    let others = registries_conf::other_drop_ins_with(path, &registry.name);
    if !others.is_empty() {
        let names: Vec<String> = others.iter().map(|p| p.display().to_string()).collect();
        writeln!(
            out,
            "warning: {} also configure {}: drop-ins are read in name order and the last entry for a registry wins",
            names.join(", "),
            registry.name
        )?;
    }
    writeln!(out, "{hint}.")?;
    Ok(())
}

/// `FILE is left unchanged` context for a merge error.
fn in_file(path: &Path) -> String {
    format!("{} (left unchanged)", path.display())
}

/// Applies `change` and says what happened.
fn report(change: &Change, dry_run: bool, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let path = change.path.display();
    match change.apply(dry_run, out)? {
        Outcome::Unchanged => writeln!(out, "{path}: already configured, unchanged")?,
        Outcome::Created => writeln!(out, "{path}: written")?,
        Outcome::Replaced { backup } => writeln!(out, "{path}: updated (previous content in {})", backup.display())?,
        Outcome::DryRun => writeln!(out, "{path}: dry run, not written")?,
    }
    Ok(())
}

/// Reminds how containerd is pointed at the directory, unless its config already names it.
fn containerd_hint(config_dir: &Path, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let config = std::fs::read_to_string("/etc/containerd/config.toml").unwrap_or_default();
    let dir = config_dir.display();
    if !config.contains(&*dir.to_string()) {
        writeln!(
            out,
            "containerd reads {dir} at every pull once it is told where it is:\n  \
             CRI (Kubernetes): config_path = \"{dir}\" under [plugins.\"io.containerd.grpc.v1.cri\".registry] \
             in /etc/containerd/config.toml, then restart containerd\n  \
             ctr: ctr images pull --hosts-dir {dir} REF"
        )?;
    }
    Ok(())
}

/// What `--mirror` and `--config` say: the mirror, and the daemon's upstream when known.
struct LocalDaemon {
    mirror: Mirror,
    /// The dfdaemon's `registry` (from `--config`).
    upstream: Option<RegistryRef>,
    /// The dfdaemon's `insecure_registries` (from `--config`).
    insecure: Vec<String>,
}

impl LocalDaemon {
    fn load(common: &Common) -> anyhow::Result<Self> {
        let config = match &common.config {
            Some(path) => Some(damselfly_net::config::load::<DaemonConfig>(path)?),
            None => None,
        };
        let mirror = match (&common.mirror, &config) {
            (Some(url), _) => Mirror::parse(url)?,
            (None, Some(c)) => Mirror::from_listen(c.proxy_listen),
            (None, None) => Mirror::parse(DEFAULT_MIRROR)?,
        };
        let upstream = match &config {
            Some(c) => Some(RegistryRef::parse(&c.registry).context("the dfdaemon config's `registry`")?),
            None => None,
        };
        let insecure = config.map(|c| c.insecure_registries).unwrap_or_default();
        Ok(LocalDaemon { mirror, upstream, insecure })
    }

    /// containerd's `server` for a registry named without a scheme.
    fn default_server(&self, registry: &RegistryRef) -> String {
        let scheme = if self.insecure.contains(&registry.name) { "http" } else { "https" };
        format!("{scheme}://{}", registry.upstream_host())
    }
}

/// dfdaemon's registry mirror as an engine reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    /// `http` or `https`.
    scheme: String,
    /// `HOST:PORT` (`[v6]:PORT`).
    host: String,
}

impl Mirror {
    /// `http://HOST:PORT`, `https://HOST[:PORT]` or `HOST:PORT` (http).
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let (scheme, host) = split_url(text, "http")?;
        Ok(Mirror { scheme, host })
    }

    /// The mirror of a daemon listening on `listen`: loopback when it listens on every address.
    fn from_listen(listen: std::net::SocketAddr) -> Self {
        let ip = match listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        Mirror { scheme: "http".into(), host: std::net::SocketAddr::new(ip, listen.port()).to_string() }
    }

    /// `http://HOST:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// `HOST:PORT`.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Reached without TLS: engines must be told it is insecure.
    pub(crate) fn is_plain_http(&self) -> bool {
        self.scheme == "http"
    }
}

/// A registry as image references name it (`docker.io`, `reg.example.com:5000`), with the
/// scheme when the user gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegistryRef {
    name: String,
    scheme: Option<String>,
}

impl RegistryRef {
    /// `docker.io`, `HOST[:PORT]` or `http(s)://HOST[:PORT]`; Docker Hub's API hosts
    /// (`registry-1.docker.io`, `index.docker.io`) are named `docker.io`, as references name it.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let explicit = text.contains("://");
        let (scheme, host) = split_url(text, "https")?;
        let name = match host.as_str() {
            "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB.to_string(),
            _ => host,
        };
        Ok(RegistryRef { name, scheme: explicit.then_some(scheme) })
    }

    /// The host serving the registry API: Docker Hub's is `registry-1.docker.io`.
    fn upstream_host(&self) -> &str {
        if self.name == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.name
        }
    }
}

/// Splits `scheme://host[:port]` (a bare `host[:port]` gets `default_scheme`); nothing else (no
/// path, user, query) is allowed.
fn split_url(text: &str, default_scheme: &str) -> anyhow::Result<(String, String)> {
    let text = text.trim().trim_end_matches('/');
    let full = if text.contains("://") { text.to_string() } else { format!("{default_scheme}://{text}") };
    let url = url::Url::parse(&full).with_context(|| format!("{text:?} is not HOST[:PORT] or a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("{text:?}: the scheme must be http or https");
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
        bail!("{text:?}: give only the scheme, host and port");
    }
    let host = url.host_str().with_context(|| format!("{text:?} names no host"))?;
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((url.scheme().to_string(), host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_and_registries_parse() -> anyhow::Result<()> {
        let m = Mirror::parse("127.0.0.2:4000")?;
        assert_eq!((m.url(), m.host(), m.is_plain_http()), ("http://127.0.0.2:4000".into(), "127.0.0.2:4000", true));
        assert_eq!(Mirror::parse("https://mirror.local/")?.url(), "https://mirror.local");
        assert_eq!(Mirror::from_listen("0.0.0.0:65001".parse()?).url(), "http://127.0.0.1:65001");
        assert_eq!(Mirror::from_listen("[::]:7".parse()?).url(), "http://[::1]:7");
        assert!(Mirror::parse("http://h:1/path").is_err());
        assert!(Mirror::parse("ftp://h:1").is_err());

        let hub = RegistryRef::parse("https://registry-1.docker.io")?;
        assert_eq!((hub.name.as_str(), hub.upstream_host()), ("docker.io", "registry-1.docker.io"));
        let plain = RegistryRef::parse("http://127.0.0.1:5000")?;
        assert_eq!((plain.name.as_str(), plain.scheme.as_deref()), ("127.0.0.1:5000", Some("http")));
        assert_eq!(RegistryRef::parse("reg.example.com:5000")?.scheme, None);
        Ok(())
    }

    fn run_to_string(argv: &[&str]) -> anyhow::Result<String> {
        let mut argv: Vec<std::ffi::OsString> = argv.iter().map(Into::into).collect();
        argv.insert(0, "configure".into());
        let mut out = Vec::new();
        run(ConfigureArgs::try_parse_from(argv)?, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn containerd_is_written_once_then_left_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_string_lossy().into_owned();
        let argv = ["containerd", "--config-dir", &d, "--registry", "docker.io", "--registry", "http://10.0.0.1:5000"];
        let first = run_to_string(&argv)?;
        assert!(first.contains("docker.io/hosts.toml: written"), "{first}");
        let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml"))?;
        assert!(hub.contains("server = \"https://registry-1.docker.io\""), "{hub}");
        let local = std::fs::read_to_string(dir.path().join("10.0.0.1:5000/hosts.toml"))?;
        assert!(local.contains("server = \"http://10.0.0.1:5000\""), "{local}");
        let second = run_to_string(&argv)?;
        assert_eq!(second.matches("already configured, unchanged").count(), 2, "{second}");
        assert_eq!(std::fs::read_dir(dir.path().join("docker.io"))?.count(), 1, "no backup without a change");
        Ok(())
    }

    #[test]
    fn podman_refuses_a_registry_the_daemon_does_not_forward_to() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("dfdaemon.toml");
        std::fs::write(&config, "registry = \"http://127.0.0.1:5000\"\nproxy_listen = \"0.0.0.0:7001\"\n")?;
        let file = dir.path().join("50-damselfly.conf");
        let (c, f) = (config.to_string_lossy().into_owned(), file.to_string_lossy().into_owned());
        let err = run_to_string(&["podman", "--config", &c, "--file", &f, "--registry", "quay.io"])
            .expect_err("the daemon forwards to another registry");
        assert!(format!("{err:#}").contains("not quay.io"), "{err:#}");
        assert!(!file.exists());
        run_to_string(&["podman", "--config", &c, "--file", &f])?;
        let text = std::fs::read_to_string(&file)?;
        assert!(text.contains("prefix = \"127.0.0.1:5000\""), "{text}");
        assert!(text.contains("location = \"127.0.0.1:7001\""), "the mirror from proxy_listen: {text}");
        Ok(())
    }

    #[test]
    fn dry_run_prints_a_diff_and_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("daemon.json");
        std::fs::write(&file, "{\"debug\": true}\n")?;
        let f = file.to_string_lossy().into_owned();
        let out = run_to_string(&["docker", "--file", &f, "--mirror", "http://127.0.0.1:65001", "--dry-run"])?;
        assert!(out.contains("+  \"registry-mirrors\": [\"http://127.0.0.1:65001\"]"), "{out}");
        assert!(out.contains("dry run, not written"), "{out}");
        assert_eq!(std::fs::read_to_string(&file)?, "{\"debug\": true}\n");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn an_unparsable_file_is_an_error_and_left_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("daemon.json");
        std::fs::write(&file, "{\"debug\": tru")?;
        let f = file.to_string_lossy().into_owned();
        let err = run_to_string(&["docker", "--file", &f]).expect_err("invalid JSON");
        let msg = format!("{err:#}");
        assert!(msg.contains("left unchanged") && msg.contains("not valid JSON"), "{msg}");
        assert_eq!(std::fs::read_to_string(&file)?, "{\"debug\": tru");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "no backup, no temp file");
        Ok(())
    }
}
