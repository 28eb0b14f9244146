//! Starting a real `dfdaemon` process on loopback.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::node::Node;
use crate::process::{self, ScratchDir, Spec};
use crate::{bin_path, http, loopback_ip, DfgetRun, Supernode};

/// How to start a [`Dfdaemon`].
#[derive(Debug, Clone, Default)]
pub struct DfdaemonOpts {
    /// `--supernode` addresses (QUIC), in order.
    pub supernodes: Vec<SocketAddr>,
    /// `--ca-cert`: the CA that signed the supernodes' certificates; not passed when `None`
    /// (the join token pins the CA).
    pub ca_cert: Option<PathBuf>,
    /// `--join-token-file`: the cluster's join token; not passed when `None` (then a daemon
    /// without a stored certificate enrolls only with `DAMSELFLY_JOIN_TOKEN` in `env`).
    pub join_token_file: Option<PathBuf>,
    /// Address to bind both listeners to; default [`loopback_ip`].
    pub ip: Option<Ipv4Addr>,
    /// Extra command-line arguments, appended after the testkit's own
    /// (`--registry http://127.0.0.1:5000`, `--cache-quota 64MiB`, ...).
    pub args: Vec<String>,
    /// Extra environment variables (`RUST_LOG`, ...).
    pub env: Vec<(String, String)>,
    /// Time to answer `/healthz` with 200; default 30 s.
    pub ready_timeout: Option<Duration>,
    /// `--data-dir`; default a fresh directory in the daemon's scratch dir (e.g. a small tmpfs
    /// for disk-full tests).
    pub data_dir: Option<PathBuf>,
}

impl DfdaemonOpts {
    /// Options for a daemon of `supernode`: its QUIC address and its join token file (which
    /// also pins its CA), as the deployment passes them.
    pub fn for_supernode(supernode: &Supernode) -> Self {
        DfdaemonOpts {
            supernodes: vec![supernode.quic_addr()],
            join_token_file: Some(supernode.join_token_path()),
            ..DfdaemonOpts::default()
        }
    }

    /// Adds command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// Numbers the daemons' data dirs (`d1`, `d2`, ...) so logs and dirs are told apart.
static DAEMON_NUMBER: AtomicUsize = AtomicUsize::new(1);

/// A running `dfdaemon --supernode SN --proxy-listen IP:TCP --peer-listen IP:UDP --data-dir TMP/dN`.
///
/// Its stdout and stderr go to `TMP/dfdaemon.log` (printed, last 50 lines, when it fails to
/// start or the test panics). SIGKILLed when dropped. The process's lifecycle (`kill`, `stop`,
/// `restart`, `output`, `metrics`, ...) is [`Node`]'s, which it dereferences to.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{Dfdaemon, DfdaemonOpts, Supernode, SupernodeOpts};
///
/// let sn = Supernode::start(SupernodeOpts::default()).await?;
/// let mut daemon = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
/// let m = daemon.metrics().await?;
/// assert_eq!(m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")]), 0.0);
/// daemon.kill().await?; // a crash
/// daemon.restart().await?; // same ports and data dir
/// # Ok(()) }
/// ```
pub struct Dfdaemon {
    data_dir: PathBuf,
    node: Node,
}

crate::node::deref_to_node!(Dfdaemon);

impl Dfdaemon {
    /// Starts a daemon on free ports and waits until `GET /healthz` answers 200.
    pub async fn start(opts: DfdaemonOpts) -> anyhow::Result<Self> {
        let program = bin_path("dfdaemon")?;
        let ip = opts.ip.unwrap_or_else(loopback_ip);
        let number = DAEMON_NUMBER.fetch_add(1, Ordering::Relaxed);
        let dir = ScratchDir::new(&format!("damselfly-dfdaemon{number}-"))?;
        let data_dir = opts.data_dir.clone().unwrap_or_else(|| dir.path().join(format!("d{number}")));
        let cwd = dir.path().to_path_buf();
        let make_spec = |proxy_port: u16, peer_port: u16| {
            let mut args: Vec<OsString> = Vec::new();
            for supernode in &opts.supernodes {
                args.push("--supernode".into());
                args.push(supernode.to_string().into());
            }
            args.extend([
                "--proxy-listen".into(),
                format!("{ip}:{proxy_port}").into(),
                "--peer-listen".into(),
                format!("{ip}:{peer_port}").into(),
                "--data-dir".into(),
                data_dir.clone().into_os_string(),
            ]);
            if let Some(ca) = &opts.ca_cert {
                args.push("--ca-cert".into());
                args.push(ca.clone().into_os_string());
            }
            if let Some(token) = &opts.join_token_file {
                args.push("--join-token-file".into());
                args.push(token.clone().into_os_string());
            }
            args.extend(opts.args.iter().map(OsString::from));
            Spec {
                name: format!("dfdaemon d{number} {ip}"),
                program: program.clone(),
                args,
                env: opts.env.clone(),
                cwd: cwd.clone(),
                log_path: cwd.join("dfdaemon.log"),
                health_url: format!("http://{ip}:{proxy_port}/healthz"),
                ready_timeout: opts.ready_timeout.unwrap_or(process::READY_TIMEOUT),
            }
        };
        let node = Node::start(ip, dir, make_spec).await?;
        Ok(Dfdaemon { data_dir, node })
    }

    /// `http://IP:PORT` of the proxy / registry mirror / dfget API, without a trailing slash
    /// (what `dfget --daemon` and `DFGET_DAEMON` take).
    pub fn proxy_url(&self) -> String {
        self.node.base_url()
    }

    /// The HTTP address (`--proxy-listen`).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.node.tcp_addr()
    }

    /// The QUIC peer address (`--peer-listen`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.node.udp_addr()
    }

    /// `--data-dir`, kept across restarts (`Node::restart`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A `dfget URL -O output --daemon <this daemon>` invocation, to run or spawn.
    pub fn dfget(&self, url: &str, output: impl AsRef<Path>) -> DfgetRun {
        DfgetRun::new(url, output).daemon(&self.proxy_url())
    }

    /// `GET path` on the HTTP port, parsed as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        http::get_json(self.node.client(), &format!("{}{path}", self.proxy_url())).await
    }
}

impl std::fmt::Debug for Dfdaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dfdaemon")
            .field("proxy", &self.proxy_addr())
            .field("peer", &self.peer_addr())
            .field("data_dir", &self.data_dir)
            .finish()
    }
}
