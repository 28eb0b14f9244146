//! A supernode and its daemons, each on its own loopback address.

use futures_util::future::try_join_all;

use crate::{Dfdaemon, DfdaemonOpts, Metrics, Supernode, SupernodeOpts};

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOpts {
    /// Options of the supernode.
    pub supernode: SupernodeOpts,
    /// Template for every daemon: its `args` and `env` are used; its `ip` is replaced by a fresh
    /// loopback address per daemon, and the cluster's supernode is put first in `supernodes`.
    pub daemon: DfdaemonOpts,
    /// Pass `--join-token-file` (the supernode's join token, which also pins its CA) to the
    /// daemons. Default `true`: a daemon enrolls only with the token.
    pub join_token: bool,
    /// Also pass `--ca-cert SN_DATA/tls/ca.crt`. Default `false`: the token is enough.
    pub ca_cert: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            supernode: SupernodeOpts::default(),
            daemon: DfdaemonOpts::default(),
            join_token: true,
            ca_cert: false,
        }
    }
}

/// One supernode and `n` dfdaemons, each on its own `127.0.0.N` (a "host" each).
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{random_bytes, sha256_digest, Cluster, ClusterOpts, Origin};
///
/// let origin = Origin::start()?;
/// let blob = random_bytes(32 << 20, 1);
/// origin.add("/blob", blob.clone());
/// let cluster = Cluster::start(3, ClusterOpts::default()).await?;
/// let dir = tempfile::tempdir()?;
/// cluster.daemons[0]
///     .dfget(&origin.url("/blob"), dir.path().join("out"))
///     .digest(&sha256_digest(&blob))
///     .run_ok()
///     .await?;
/// let sn = cluster.supernode.metrics().await?;
/// assert_eq!(sn.get("damselfly_supernode_origin_bytes_total"), blob.len() as f64);
/// # Ok(()) }
/// ```
pub struct Cluster {
    /// The supernode.
    pub supernode: Supernode,
    /// The daemons, in start order.
    pub daemons: Vec<Dfdaemon>,
    template: DfdaemonOpts,
    join_token: bool,
    ca_cert: bool,
}

impl Cluster {
    /// Starts the supernode, waits until it is ready, then starts `n_daemons` daemons at once.
    pub async fn start(n_daemons: usize, opts: ClusterOpts) -> anyhow::Result<Self> {
        let supernode = Supernode::start(opts.supernode).await?;
        let mut cluster = Cluster {
            supernode,
            daemons: Vec::new(),
            template: opts.daemon,
            join_token: opts.join_token,
            ca_cert: opts.ca_cert,
        };
        let starts = (0..n_daemons).map(|_| Dfdaemon::start(cluster.daemon_opts()));
        cluster.daemons = try_join_all(starts).await?;
        Ok(cluster)
    }

    /// The options a new daemon of this cluster gets (before its fresh loopback address).
    pub fn daemon_opts(&self) -> DfdaemonOpts {
        let mut opts = self.template.clone();
        opts.ip = None;
        opts.supernodes.insert(0, self.supernode.quic_addr());
        if self.join_token {
            opts.join_token_file = Some(self.supernode.join_token_path());
        }
        if self.ca_cert {
            opts.ca_cert = Some(self.supernode.ca_cert_path());
        }
        opts
    }

    /// Starts one more daemon (a late joiner) and returns it.
    pub async fn add_daemon(&mut self) -> anyhow::Result<&mut Dfdaemon> {
        let daemon = Dfdaemon::start(self.daemon_opts()).await?;
        self.daemons.push(daemon);
        let last = self.daemons.len() - 1;
        Ok(&mut self.daemons[last])
    }

    /// Every daemon's `/metrics`, in daemon order.
    pub async fn daemon_metrics(&self) -> anyhow::Result<Vec<Metrics>> {
        try_join_all(self.daemons.iter().map(|d| d.metrics())).await
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("supernode", &self.supernode).field("daemons", &self.daemons).finish()
    }
}
