//! `supernode`: parses flags, loads config, starts tracing and runs [`supernode::run`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use damselfly_net::rate::{parse_rate, ByteRate};
use damselfly_types::size::{parse_size, ByteSize};
use supernode::SupernodeConfig;

/// Damselfly supernode: regional seed and piece scheduler.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// QUIC listen address for peers [default: 0.0.0.0:8002].
    #[arg(long)]
    quic_listen: Option<SocketAddr>,
    /// HTTP listen address (API, /healthz, /metrics) [default: 0.0.0.0:8001].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Data directory (cache, metadata, cluster CA).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Disk quota for the cache, e.g. 20GiB.
    #[arg(long, value_parser = parse_size)]
    cache_quota: Option<ByteSize>,
    /// Evict finished tasks not read for this long, e.g. 24h (default: only the quota evicts).
    #[arg(long, value_parser = humantime::parse_duration)]
    cache_ttl: Option<std::time::Duration>,
    /// Registry reached over plain HTTP (HOST:PORT); repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Origin the supernode may fetch from (HOST or HOST:PORT); repeatable: only those. Default:
    /// any origin except loopback, link-local and cloud metadata addresses.
    #[arg(long = "allow-origin")]
    allow_origins: Vec<String>,
    /// Request header forwarded to origins besides Authorization, Accept, User-Agent and Cookie
    /// (e.g. PRIVATE-TOKEN); repeatable.
    #[arg(long = "forward-header")]
    forward_headers: Vec<String>,
    /// Cluster CA certificate (PEM) instead of DATA_DIR/tls/ca.crt.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Cluster CA private key (PEM), with --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Join token file shared by the region's supernodes (it must pin this CA)
    /// [default: DATA_DIR/join-token, written on first start].
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// API bearer token file [default: DATA_DIR/api-token, written on first start].
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Lifetime of issued peer certificates, e.g. 24h; daemons renew at two thirds [default: 24h].
    #[arg(long, value_parser = humantime::parse_duration)]
    peer_cert_ttl: Option<std::time::Duration>,
    /// Limit on what this supernode fetches from origins, bytes per second, e.g. 200MiB; shared
    /// fairly between tasks [default: none].
    #[arg(long, value_parser = parse_rate)]
    origin_rate: Option<ByteRate>,
    /// At most N origin fetches at once; more wait for a slot (they do not fail) [default: none].
    #[arg(long, value_name = "N")]
    max_origin_fetches: Option<usize>,
}

fn config_from(args: Args) -> anyhow::Result<SupernodeConfig> {
    let mut c = match &args.config {
        Some(path) => SupernodeConfig::load(path)?,
        None => SupernodeConfig::default(),
    };
    if let Some(v) = args.quic_listen {
        c.quic_listen = v;
    }
    if let Some(v) = args.http_listen {
        c.http_listen = v;
    }
    if let Some(v) = args.data_dir {
        c.data_dir = v;
    }
    if args.cache_quota.is_some() {
        c.cache_quota = args.cache_quota;
    }
    if args.cache_ttl.is_some() {
        c.cache_ttl = args.cache_ttl;
    }
    c.insecure_registries.extend(args.insecure_registries);
    c.allow_origins.extend(args.allow_origins);
    for name in &args.forward_headers {
        c.forward_headers.add(name)?;
    }
    if args.ca_cert.is_some() {
        c.ca_cert = args.ca_cert;
        c.ca_key = args.ca_key;
    }
    if args.join_token_file.is_some() {
        c.join_token_file = args.join_token_file;
    }
    if args.api_token_file.is_some() {
        c.api_token_file = args.api_token_file;
    }
    if let Some(v) = args.peer_cert_ttl {
        c.peer_cert_ttl = v;
    }
    if args.origin_rate.is_some() {
        c.origin_rate = args.origin_rate;
    }
    if args.max_origin_fetches.is_some() {
        c.max_origin_fetches = args.max_origin_fetches;
    }
    c.validate()?;
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    damselfly_net::telemetry::init_tracing("info");
    let config = config_from(Args::parse())?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = tx.send(true);
    });
    supernode::run(config, rx).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
