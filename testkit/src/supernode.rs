//! Starting a real `supernode` process on loopback.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::node::Node;
use crate::process::{self, ScratchDir, Spec};
use crate::{bin_path, http, loopback_ip};

/// How to start a [`Supernode`]. `Default` picks a fresh loopback address and names the test
/// origins (`--allow-origin 127.0.0.1`, see [`SupernodeOpts::default_origin_policy`]).
#[derive(Debug, Clone, Default)]
pub struct SupernodeOpts {
    /// Address to bind both listeners to; default [`loopback_ip`].
    pub ip: Option<Ipv4Addr>,
    /// Extra command-line arguments, appended after the testkit's own
    /// (`--cache-quota 64MiB`, `--allow-origin 127.0.0.1`, ...).
    pub args: Vec<String>,
    /// Extra environment variables (`RUST_LOG`, ...).
    pub env: Vec<(String, String)>,
    /// Time to answer `/healthz` with 200; default 30 s.
    pub ready_timeout: Option<Duration>,
    /// `false` (default): the testkit passes `--allow-origin 127.0.0.1` (every port), where
    /// [`crate::Origin`] and [`crate::Registry`] listen, since a supernode without
    /// `--allow-origin` refuses loopback origins. `true`: no `--allow-origin` of the testkit's
    /// own, so the supernode runs with its default origin policy (or only what `args` name).
    pub default_origin_policy: bool,
}

impl SupernodeOpts {
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

/// A running `supernode --quic-listen IP:UDP --http-listen IP:TCP --data-dir TMP/sn`.
///
/// Its stdout and stderr go to `TMP/supernode.log` (printed, last 50 lines, when it fails to
/// start or the test panics). SIGKILLed when dropped. The process's lifecycle (`kill`, `stop`,
/// `restart`, `output`, `metrics`, ...) is [`Node`]'s, which it dereferences to.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{Supernode, SupernodeOpts};
///
/// let mut sn = Supernode::start(SupernodeOpts::default()).await?;
/// let metrics = sn.metrics().await?;
/// assert_eq!(metrics.get("damselfly_supernode_origin_bytes_total"), 0.0);
/// sn.restart().await?; // same ports, same data dir
/// # Ok(()) }
/// ```
pub struct Supernode {
    data_dir: PathBuf,
    node: Node,
}

crate::node::deref_to_node!(Supernode);

impl Supernode {
    /// Starts a supernode on free ports and waits until `GET /healthz` answers 200.
    pub async fn start(opts: SupernodeOpts) -> anyhow::Result<Self> {
        let program = bin_path("supernode")?;
        let ip = opts.ip.unwrap_or_else(loopback_ip);
        let dir = ScratchDir::new("damselfly-supernode-")?;
        let data_dir = dir.path().join("sn");
        let cwd = dir.path().to_path_buf();
        let make_spec = |http_port: u16, quic_port: u16| {
            let mut args: Vec<OsString> = vec![
                "--quic-listen".into(),
                format!("{ip}:{quic_port}").into(),
                "--http-listen".into(),
                format!("{ip}:{http_port}").into(),
                "--data-dir".into(),
                data_dir.clone().into(),
            ];
            if !opts.default_origin_policy {
                args.extend(["--allow-origin".into(), "127.0.0.1".into()]);
            }
            args.extend(opts.args.iter().map(OsString::from));
            Spec {
                name: format!("supernode {ip}"),
                program: program.clone(),
                args,
                env: opts.env.clone(),
                cwd: cwd.clone(),
                log_path: cwd.join("supernode.log"),
                health_url: format!("http://{ip}:{http_port}/healthz"),
                ready_timeout: opts.ready_timeout.unwrap_or(process::READY_TIMEOUT),
            }
        };
        let node = Node::start(ip, dir, make_spec).await?;
        Ok(Supernode { data_dir, node })
    }

    /// The QUIC address peers connect to (`--supernode` of dfdaemon).
    pub fn quic_addr(&self) -> SocketAddr {
        self.node.udp_addr()
    }

    /// The HTTP address of the REST API.
    pub fn http_addr(&self) -> SocketAddr {
        self.node.tcp_addr()
    }

    /// `http://IP:PORT` of the REST API, without a trailing slash.
    pub fn http_url(&self) -> String {
        self.node.base_url()
    }

    /// `--data-dir`, kept across restarts (`Node::restart`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The CA certificate the supernode writes at `DATA_DIR/tls/ca.crt` (or `--ca-cert`'s).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.flag("--ca-cert").unwrap_or_else(|| self.data_dir.join("tls").join("ca.crt"))
    }

    /// The join token daemons enroll with: `--join-token-file`'s, else the `DATA_DIR/join-token`
    /// the supernode writes on first start.
    pub fn join_token_path(&self) -> PathBuf {
        self.flag("--join-token-file").unwrap_or_else(|| self.data_dir.join("join-token"))
    }

    /// The API token (`--api-token-file`'s, else `DATA_DIR/api-token`), which every API call but
    /// `/healthz`, `/healthy` and `/metrics` needs.
    pub fn api_token(&self) -> anyhow::Result<String> {
        let path = self.flag("--api-token-file").unwrap_or_else(|| self.data_dir.join("api-token"));
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
        Ok(text.trim().to_owned())
    }

    /// An HTTP client that sends the API token (`Authorization: Bearer`) with every request.
    pub fn api_client(&self) -> anyhow::Result<reqwest::Client> {
        http::bearer_client(&self.api_token()?)
    }

    /// The value of a `--flag VALUE` or `--flag=VALUE` the supernode was started with.
    fn flag(&self, name: &str) -> Option<PathBuf> {
        let args = self.node.args();
        args.iter().enumerate().find_map(|(i, arg)| {
            let arg = arg.to_str()?;
            if arg == name {
                args.get(i + 1).map(PathBuf::from)
            } else {
                arg.strip_prefix(name)?.strip_prefix('=').map(PathBuf::from)
            }
        })
    }

    /// `GET path` (such as `/healthz` or an API path) on the HTTP port with the API token,
    /// parsed as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        http::get_json(&self.api_client()?, &format!("{}{path}", self.http_url())).await
    }
}

impl std::fmt::Debug for Supernode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supernode")
            .field("quic", &self.quic_addr())
            .field("http", &self.http_addr())
            .field("data_dir", &self.data_dir)
            .finish()
    }
}
