//! `dfdaemon`: parses flags, loads config, starts tracing and runs [`dfdaemon::run`].
//! `dfdaemon configure ENGINE ...` writes a container engine's mirror configuration instead
//! ([`configure`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use damselfly_net::rate::{parse_rate, ByteRate};
use damselfly_types::size::{parse_size, ByteSize};
use dfdaemon::DaemonConfig;

mod configure;

/// Damselfly dfdaemon: the per-host peer, registry mirror and dfget API.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Point a container engine at this daemon: dfdaemon configure containerd|crio|podman|docker \
                  (see dfdaemon configure --help)"
)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Supernode HOST:PORT; repeatable: each task goes to one of them by rendezvous hashing of
    /// its id (give every host the same names), to the next while that one is down.
    #[arg(long = "supernode")]
    supernodes: Vec<String>,
    /// HTTP listen address (dfget API, registry mirror) [default: 127.0.0.1:65001].
    #[arg(long)]
    proxy_listen: Option<SocketAddr>,
    /// QUIC listen address for serving pieces [default: 0.0.0.0:65002].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// IP other peers dial when --peer-listen is unspecified.
    #[arg(long)]
    advertise_ip: Option<IpAddr>,
    /// Data directory (cache, metadata, identity).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Upstream registry for mirror requests that name none.
    #[arg(long)]
    registry: Option<String>,
    /// Registry reached over plain HTTP (HOST:PORT); repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Request header passed on to the supernode and the origin besides Authorization, Accept,
    /// User-Agent and Cookie (e.g. PRIVATE-TOKEN); repeatable.
    #[arg(long = "forward-header")]
    forward_headers: Vec<String>,
    /// Disk quota for the cache, e.g. 20GiB.
    #[arg(long, value_parser = parse_size)]
    cache_quota: Option<ByteSize>,
    /// Evict finished tasks not read for this long, e.g. 24h (default: only the quota evicts).
    #[arg(long, value_parser = humantime::parse_duration)]
    cache_ttl: Option<std::time::Duration>,
    /// Cluster CA certificate (PEM); optional, the join token pins the CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Join token file (the supernode's DATA_DIR/join-token) [default: $DAMSELFLY_JOIN_TOKEN].
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Limit on what this daemon receives for tasks (swarm and origin), bytes per second, e.g.
    /// 50MiB; shared fairly between tasks [default: none].
    #[arg(long, value_parser = parse_rate)]
    download_rate: Option<ByteRate>,
    /// Limit on piece bytes uploaded to other peers, bytes per second, e.g. 20MiB [default: none].
    #[arg(long, value_parser = parse_rate)]
    upload_rate: Option<ByteRate>,
    /// Limit on the origin fallback, bytes per second, e.g. 10MiB; also counts against
    /// --download-rate [default: none].
    #[arg(long, value_parser = parse_rate)]
    origin_rate: Option<ByteRate>,
}

fn config_from(args: Args) -> anyhow::Result<DaemonConfig> {
    let mut c = match &args.config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    if !args.supernodes.is_empty() {
        c.supernodes = args.supernodes;
    }
    if let Some(v) = args.proxy_listen {
        c.proxy_listen = v;
    }
    if let Some(v) = args.peer_listen {
        c.peer_listen = v;
    }
    if args.advertise_ip.is_some() {
        c.advertise_ip = args.advertise_ip;
    }
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if let Some(v) = args.registry {
        c.registry = v;
    }
    c.insecure_registries.extend(args.insecure_registries);
    for name in &args.forward_headers {
        c.forward_headers.add(name)?;
    }
    if args.cache_quota.is_some() {
        c.cache_quota = args.cache_quota;
    }
    if args.cache_ttl.is_some() {
        c.cache_ttl = args.cache_ttl;
    }
    if args.ca_cert.is_some() {
        c.ca_cert = args.ca_cert;
    }
    if args.join_token_file.is_some() {
        c.join_token_file = args.join_token_file;
    }
    for (flag, field) in [
        (args.download_rate, &mut c.download_rate),
        (args.upload_rate, &mut c.upload_rate),
        (args.origin_rate, &mut c.origin_rate),
    ] {
        if flag.is_some() {
            *field = flag;
        }
    }
    c.validate()?;
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    // `dfdaemon configure ...` is a subcommand; anything else runs the daemon, whose flags stay
    // exactly as they were.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "configure") {
        std::process::exit(configure::main(&argv[1..]));
    }
    serve(Args::parse_from(argv))
}

#[tokio::main]
async fn serve(args: Args) -> anyhow::Result<()> {
    damselfly_net::telemetry::init_tracing("info");
    let config = config_from(args)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    dfdaemon::run(config, rx).await
}
