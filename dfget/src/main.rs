//! `dfget`: download a URL through the Damselfly swarm.
//!
//! It asks the local dfdaemon (`--daemon`, else `$DFGET_DAEMON`, else
//! `http://127.0.0.1:65001`) to fetch the URL and streams the answer into a temporary file
//! beside the output, renamed into place only when complete (and verified, with `--digest`).
//! With no daemon reachable and `--supernode` given, it runs an embedded peer for the download;
//! the peer enrolls with the join token (`--join-token-file FILE` or `DAMSELFLY_JOIN_TOKEN`).
//!
//! `dfget preheat IMAGE ...` ([`preheat`]) asks the supernode to load an image into its cache.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use dfdaemon::http::{ApiError, DownloadBody, TaskStatusView, NDJSON, TASK_HEADER};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};

mod export;
mod preheat;

/// Download a URL through the Damselfly swarm.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Preheat an image into the supernode's cache: dfget preheat IMAGE (see dfget preheat --help)"
)]
struct Args {
    /// URL to download (http or https).
    url: String,
    /// Output file.
    #[arg(short = 'O', long = "output")]
    output: PathBuf,
    /// Expected digest, sha256:<hex>; the download fails on a mismatch.
    #[arg(long)]
    digest: Option<String>,
    /// Header for the origin request, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// dfdaemon API URL [default: $DFGET_DAEMON or http://127.0.0.1:65001].
    #[arg(long, env = "DFGET_DAEMON", default_value = "http://127.0.0.1:65001")]
    daemon: String,
    /// Supernode HOST:PORT for an embedded peer when no daemon is reachable.
    #[arg(long)]
    supernode: Option<String>,
    /// Join token file for the embedded peer (the supernode's DATA_DIR/join-token)
    /// [default: $DAMSELFLY_JOIN_TOKEN].
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Cluster CA certificate for the embedded peer; optional, the join token pins the CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    // `dfget preheat ...` is a subcommand; anything else is a download (`dfget URL -O FILE`), so
    // the download's flags and positional URL stay exactly as they were.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "preheat") {
        let args = preheat::PreheatArgs::parse_from(&argv[1..]);
        return block_on(preheat::run(args));
    }
    block_on(run(Args::parse_from(argv)))
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    damselfly_common::telemetry::init_tracing("warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dfget: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfget: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_header(h: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = h.split_once(':').ok_or_else(|| anyhow!("header {h:?} is not 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() || name.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_')) {
        bail!("header name {name:?} is not valid");
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let headers = args.headers.iter().map(|h| parse_header(h)).collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(d) = &args.digest {
        d.parse::<damselfly_common::id::Sha256Digest>()?;
    }
    if args.output.is_dir() {
        bail!("output {} is a directory", args.output.display());
    }
    let mut body = DownloadBody { url: args.url.clone(), digest: args.digest.clone(), headers, local: false };
    let client = reqwest::Client::new();
    let mut _embedded = None;
    let mut daemon_url = args.daemon.clone();
    // A daemon on this host shares its filesystem: take the finished file from its cache.
    body.local = is_loopback(&daemon_url);
    let resp = match post(&client, &args.daemon, &body).await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            let Some(sn) = &args.supernode else {
                bail!("no dfdaemon reachable at {} and no --supernode given for an embedded peer", args.daemon);
            };
            let embedded = Embedded::start(sn, args.join_token_file.clone(), args.ca_cert.clone()).await?;
            body.local = true;
            let r = post(&client, &embedded.url, &body).await.context("embedded peer failed")?;
            daemon_url = embedded.url.clone();
            _embedded = Some(embedded);
            r
        }
        Err(e) => bail!("dfdaemon at {} failed: {e}", args.daemon),
    };
    let resp = check_status(resp).await?;
    let is_export =
        resp.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == NDJSON.as_bytes());
    if is_export {
        let progress = progress_bar(None, args.no_progress);
        let outcome = export::follow(resp, &progress).await;
        progress.finish_and_clear();
        match outcome? {
            export::Outcome::Failed(error) => bail!("download failed: {error}"),
            export::Outcome::Done(done) => match export::place(&done, &args.output) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot take the file from the daemon's cache: streaming it");
                }
            },
        }
        body.local = false;
        let resp = check_status(post(&client, &daemon_url, &body).await?).await?;
        return stream_to_file(&client, &daemon_url, resp, &args).await;
    }
    stream_to_file(&client, &daemon_url, resp, &args).await
}

/// Turns an error answer into an error with the daemon's reason.
async fn check_status(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let err = resp.json::<ApiError>().await.map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
    bail!("{err}");
}

/// Whether the daemon URL names this host: a loopback address, or an address of one of this
/// host's interfaces (a daemon listening on the host's own IP, as in a network namespace).
fn is_loopback(daemon: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(daemon) else { return false };
    let ip: std::net::IpAddr = match url.host() {
        Some(url::Host::Domain(d)) => return d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        None => return false,
    };
    // Binding a socket to an address only works for this host's own addresses.
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Receives the content over HTTP into a temporary file beside the output, renamed into place
/// when complete (and matching `--digest`).
async fn stream_to_file(
    client: &reqwest::Client,
    daemon_url: &str,
    resp: reqwest::Response,
    args: &Args,
) -> anyhow::Result<()> {
    let tmp = temp_beside(&args.output)?;
    let expected_len = resp.content_length();
    let task = resp.headers().get(TASK_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let progress = progress_bar(expected_len, args.no_progress);
    let written = write_body(resp, tmp.as_file(), &progress).await;
    progress.finish_and_clear();
    let (written, digest) = match (written, task) {
        (Ok(w), _) => w,
        // The daemon breaks the body off when the download fails midway: ask it why.
        (Err(e), Some(task)) => {
            bail!("{}", failure_reason(client, daemon_url, &task).await.unwrap_or(format!("{e:#}")))
        }
        (Err(e), None) => return Err(e),
    };
    if let Some(len) = expected_len {
        if written != len {
            bail!("download broke off after {written} of {len} bytes");
        }
    }
    if let Some(expected) = &args.digest {
        let got = format!("sha256:{}", hex::encode(digest));
        if &got != expected {
            bail!("digest mismatch: got {got}, expected {expected}; nothing was written to {}", args.output.display());
        }
    }
    tmp.as_file().sync_all().context("cannot flush output")?;
    tmp.persist(&args.output).with_context(|| format!("cannot move the download to {}", args.output.display()))?;
    Ok(())
}

/// The daemon's account of a failed task, if it has one.
async fn failure_reason(client: &reqwest::Client, daemon: &str, task: &str) -> Option<String> {
    let url = format!("{}/api/v1/tasks/{task}", daemon.trim_end_matches('/'));
    let view: TaskStatusView = client.get(url).send().await.ok()?.json().await.ok()?;
    view.error.map(|e| format!("download failed: {e}"))
}

async fn post(client: &reqwest::Client, daemon: &str, body: &DownloadBody) -> reqwest::Result<reqwest::Response> {
    client.post(format!("{}/api/v1/download", daemon.trim_end_matches('/'))).json(body).send().await
}

/// A temporary file in the output's directory, so the final rename is atomic.
fn temp_beside(output: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if output.is_dir() {
        bail!("output {} is a directory", output.display());
    }
    tempfile::Builder::new()
        .prefix(".dfget-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write output {}", output.display()))
}

fn progress_bar(len: Option<u64>, disabled: bool) -> ProgressBar {
    if disabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len.unwrap_or(0));
    let template = if len.is_some() {
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

async fn write_body(
    resp: reqwest::Response,
    file: &std::fs::File,
    progress: &ProgressBar,
) -> anyhow::Result<(u64, [u8; 32])> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("download broke off after {written} bytes: {e}"))?;
        hasher.update(&chunk);
        out.write_all(&chunk).context("cannot write output")?;
        written += chunk.len() as u64;
        progress.set_position(written);
    }
    out.flush().context("cannot write output")?;
    Ok((written, hasher.finalize().into()))
}

/// An in-process peer for machines without a dfdaemon.
struct Embedded {
    url: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Embedded {
    async fn start(
        supernode: &str,
        join_token_file: Option<PathBuf>,
        ca_cert: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory for the embedded peer")?;
        let config = dfdaemon::DaemonConfig {
            supernodes: vec![supernode.to_owned()],
            proxy_listen: "127.0.0.1:0".parse()?,
            peer_listen: "0.0.0.0:0".parse()?,
            data_dir: dir.path().to_owned(),
            ca_cert,
            join_token_file,
            origin_fallback: false,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (bound, _, _) = tokio::time::timeout(std::time::Duration::from_secs(20), dfdaemon::start(config, rx))
            .await
            .map_err(|_| anyhow!("supernode {supernode} unreachable (timed out)"))?
            .with_context(|| format!("cannot start an embedded peer with supernode {supernode}"))?;
        Ok(Self { url: format!("http://{}", bound.proxy), _dir: dir, _stop: tx })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse() {
        assert_eq!(parse_header("Authorization: Bearer x:y").unwrap(), ("Authorization".into(), "Bearer x:y".into()));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
