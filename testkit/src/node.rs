//! The part every server handle shares: a process started on free ports of one loopback address,
//! in a scratch directory, with its log, and the way it ends.
//!
//! [`crate::Supernode`], [`crate::Dfdaemon`] and [`crate::Registry`] each hold a [`Node`] and
//! dereference to it, so `kill`, `stop`, `restart`, `pid`, `output`, `metrics`, ... are written
//! once, here; the handles add only what differs (their flags, their addresses' names, their
//! files).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitStatus;

use crate::process::{self, ManagedProcess, ScratchDir, Spec};
use crate::{http, Metrics};

/// A started server process: its address, its ports, its scratch directory and its log.
pub struct Node {
    ip: Ipv4Addr,
    /// The HTTP listener's port (the health check, `/metrics`).
    tcp_port: u16,
    /// A UDP port picked alongside (QUIC), for the processes that listen on one.
    udp_port: u16,
    process: ManagedProcess,
    dir: ScratchDir,
}

impl Node {
    /// Starts the process `make_spec(tcp_port, udp_port)` describes on free ports of `ip`, in
    /// `dir`, and waits until it is ready.
    pub(crate) async fn start(
        ip: Ipv4Addr,
        dir: ScratchDir,
        make_spec: impl FnMut(u16, u16) -> Spec,
    ) -> anyhow::Result<Self> {
        let (process, tcp_port, udp_port) = process::start_on_free_ports(ip, make_spec).await?;
        Ok(Node { ip, tcp_port, udp_port, process, dir })
    }

    /// The loopback address it binds: its "host".
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The HTTP listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.tcp_port))
    }

    /// The UDP (QUIC) port chosen with the HTTP one.
    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.udp_port))
    }

    /// `http://IP:PORT` of the HTTP listener, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.tcp_addr())
    }

    /// The temp dir holding its files and the log.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file (stdout and stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.process.spec().log_path
    }

    /// Everything the current (or last) run printed.
    pub fn output(&self) -> String {
        self.process.output_since_spawn()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// How the last run ended, if it did.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// `GET /metrics` on the HTTP listener, parsed.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        http::get_metrics(self.process.client(), &format!("{}/metrics", self.base_url())).await
    }

    /// SIGKILL and wait: a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill().await
    }

    /// SIGTERM, up to 10 s for a clean exit, then SIGKILL. Returns the exit status.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.process.stop().await
    }

    /// Stops it if it runs, then starts it again on the same addresses and files and waits until
    /// it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await
    }

    /// The command-line arguments it was started with.
    pub(crate) fn args(&self) -> &[OsString] {
        &self.process.spec().args
    }

    /// The HTTP client of its health checks (no credentials).
    pub(crate) fn client(&self) -> &reqwest::Client {
        self.process.client()
    }
}

/// `Deref` and `DerefMut` from a handle to the [`Node`] in its `node` field.
macro_rules! deref_to_node {
    ($handle:ty) => {
        impl std::ops::Deref for $handle {
            type Target = $crate::node::Node;

            fn deref(&self) -> &$crate::node::Node {
                &self.node
            }
        }

        impl std::ops::DerefMut for $handle {
            fn deref_mut(&mut self) -> &mut $crate::node::Node {
                &mut self.node
            }
        }
    };
}
pub(crate) use deref_to_node;
