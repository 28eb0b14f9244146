//! `dfget preheat IMAGE`: asks the supernode to load every layer of an image into its cache
//! (optionally onto chosen hosts too) and shows per-layer progress until the job ends.
//!
//! The supernode's API requires its API token (`--token-file FILE` or `DAMSELFLY_API_TOKEN`),
//! sent as `Authorization: Bearer`.
//!
//! The supernode resolves the image before it answers, so a bad reference, an unknown image or
//! an unreachable registry fail at once with the supernode's reason. Progress is one bar per blob
//! on a terminal, plain lines otherwise; the exit status is non-zero with the reason when the job
//! fails.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use damselfly_types::preheat::{ApiError, BlobView, ItemState, JobState, JobView, PreheatRequest};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

/// How often the job is polled.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// Consecutive failed polls before giving up on the supernode.
const POLL_RETRIES: u32 = 20;
/// The environment variable with the supernode's API token, when no `--token-file` is given.
const API_TOKEN_ENV: &str = "DAMSELFLY_API_TOKEN";
/// How to give the API token, for error messages.
const HOW_TO_GIVE_THE_TOKEN: &str = "pass --token-file FILE or set DAMSELFLY_API_TOKEN to the supernode's API token \
     (its DATA_DIR/api-token, or the file its --api-token-file names)";

/// Load every layer of an image into the Damselfly supernode's cache (and optionally onto hosts)
/// before a rollout.
#[derive(Parser, Debug)]
#[command(name = "dfget preheat", bin_name = "dfget preheat", version)]
pub(crate) struct PreheatArgs {
    /// Image: [REGISTRY/]NAME[:TAG][@sha256:HEX] (Docker Hub when no registry is named).
    image: String,
    /// Platform of a multi-platform image: OS/ARCH[/VARIANT], or "all" [default: linux/amd64].
    #[arg(long)]
    platform: Option<String>,
    /// Supernode REST API.
    #[arg(long, env = "DFGET_SUPERNODE_API", default_value = "http://127.0.0.1:8001")]
    supernode_api: String,
    /// File holding the supernode's API token (its DATA_DIR/api-token) [default: $DAMSELFLY_API_TOKEN].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Enrolled dfdaemon that should fetch the image too: its peer id or its QUIC address
    /// HOST:PORT (the supernode asks it over authenticated QUIC); repeatable.
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<String>,
    /// Start the job, print its id and exit without waiting.
    #[arg(long)]
    no_wait: bool,
    /// Registry user name; the password is read from $DFGET_REGISTRY_PASSWORD.
    #[arg(long)]
    username: Option<String>,
    /// No progress bars (they are also off when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Runs `dfget preheat`.
pub(crate) async fn run(args: PreheatArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = args.supernode_api.trim_end_matches('/').to_owned();
    let password = std::env::var("DFGET_REGISTRY_PASSWORD").ok();
    if args.username.is_some() && password.is_none() {
        bail!("--username needs the password in $DFGET_REGISTRY_PASSWORD");
    }
    let token = api_token(args.token_file.as_deref())?;
    let client = api_client(token.as_deref())?;
    let body = PreheatRequest {
        image: args.image.clone(),
        platform: args.platform.clone(),
        password: args.username.as_ref().and(password),
        username: args.username.clone(),
        headers: None,
        peers: args.peers.clone(),
    };
    let started = Instant::now();
    let resp = client
        .post(format!("{api}/api/v1/preheat"))
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow!("supernode API at {api} unreachable: {}", chain(&e.without_url())))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        match token {
            Some(_) => bail!("the supernode at {api} refused the API token: {HOW_TO_GIVE_THE_TOKEN}"),
            None => bail!("the supernode at {api} requires its API token: {HOW_TO_GIVE_THE_TOKEN}"),
        }
    }
    if !status.is_success() {
        let reason = resp.json::<ApiError>().await.map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
        bail!("preheat of {} refused: {reason}", args.image);
    }
    let job: JobView = resp.json().await.context("the supernode sent an unreadable answer")?;
    if args.no_wait {
        println!("{}", job.id);
        return Ok(());
    }
    let mut display = Display::new(&job, args.no_progress || !std::io::stderr().is_terminal());
    let last = wait(&client, &api, job, &mut display).await?;
    display.finish();
    match last.state {
        JobState::Succeeded => {
            println!(
                "preheated {}: {} blobs, {} in {:.1}s{}",
                last.image,
                last.blobs.len(),
                HumanBytes(last.total_bytes),
                started.elapsed().as_secs_f64(),
                if last.peers.is_empty() { String::new() } else { format!(", on {} peers", last.peers.len()) }
            );
            Ok(())
        }
        _ => bail!("preheat of {} failed: {}", last.image, last.error.unwrap_or_else(|| "no reason given".into())),
    }
}

/// The API token from `--token-file`, else `DAMSELFLY_API_TOKEN`; `None` without either.
fn api_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token file {}", path.display()))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                bail!("the API token file {} is empty", path.display());
            }
            token
        }
        None => match std::env::var(API_TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => return Ok(None),
        },
    };
    Ok(Some(token))
}

/// The HTTP client for the supernode's API, sending the token with every request.
fn api_client(token: Option<&str>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| anyhow!("the API token contains characters an HTTP header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).default_headers(headers).build()?)
}

/// An error with its sources ("error sending request: ... Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s = format!("{s}: {text}");
        }
        source = inner.source();
    }
    s
}

/// Polls the job until it succeeds or fails, updating the display.
async fn wait(client: &reqwest::Client, api: &str, mut job: JobView, display: &mut Display) -> anyhow::Result<JobView> {
    let url = format!("{api}/api/v1/preheat/{}", job.id);
    let mut failures = 0;
    loop {
        display.update(&job);
        if job.state.is_final() {
            return Ok(job);
        }
        tokio::time::sleep(POLL_EVERY).await;
        match poll(client, &url).await {
            Ok(v) => {
                failures = 0;
                job = v;
            }
            Err(e) if failures < POLL_RETRIES => {
                failures += 1;
                tracing::debug!(error = %e, "poll failed");
            }
            Err(e) => bail!("lost the supernode while preheat job {} ran: {e:#}", job.id),
        }
    }
}

async fn poll(client: &reqwest::Client, url: &str) -> anyhow::Result<JobView> {
    let resp = client.get(url).timeout(Duration::from_secs(10)).send().await?;
    let status = resp.status();
    if !status.is_success() {
        let reason = resp.json::<ApiError>().await.map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
        bail!("{reason}");
    }
    Ok(resp.json().await?)
}

/// Short digest for display: `sha256:0123456789ab`.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn blob_label(b: &BlobView) -> String {
    match &b.platform {
        Some(p) => format!("{} {} ({p})", b.kind, short(&b.digest)),
        None => format!("{} {}", b.kind, short(&b.digest)),
    }
}

/// Progress output: bars on a terminal, one line per change otherwise.
struct Display {
    plain: bool,
    bars: MultiProgress,
    blob_bars: HashMap<String, ProgressBar>,
    /// Last state printed per blob / peer (plain mode).
    seen: HashMap<String, ItemState>,
}

impl Display {
    fn new(job: &JobView, plain: bool) -> Self {
        let mut d = Self { plain, bars: MultiProgress::new(), blob_bars: HashMap::new(), seen: HashMap::new() };
        if plain {
            eprintln!(
                "preheat job {}: {} ({} blobs, {})",
                job.id,
                job.image,
                job.blobs.len(),
                HumanBytes(job.total_bytes)
            );
            return d;
        }
        let style = ProgressStyle::with_template("{prefix:40} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        for b in &job.blobs {
            let bar = d.bars.add(ProgressBar::new(b.size));
            bar.set_style(style.clone());
            bar.set_prefix(blob_label(b));
            d.blob_bars.insert(b.digest.clone(), bar);
        }
        d
    }

    fn update(&mut self, job: &JobView) {
        for b in &job.blobs {
            if let Some(bar) = self.blob_bars.get(&b.digest) {
                bar.set_position(b.bytes_landed);
                bar.set_message(match &b.error {
                    Some(e) => format!("failed: {e}"),
                    None => b.state.to_string(),
                });
            }
            if self.plain && self.seen.get(&b.digest) != Some(&b.state) && b.state != ItemState::Pending {
                self.seen.insert(b.digest.clone(), b.state);
                match &b.error {
                    Some(e) => eprintln!("{} {}: {} ({e})", blob_label(b), HumanBytes(b.size), b.state),
                    None => eprintln!("{} {}: {}", blob_label(b), HumanBytes(b.size), b.state),
                }
            }
        }
        for p in &job.peers {
            let key = format!("peer {}", p.peer);
            if self.seen.get(&key) != Some(&p.state) && p.state != ItemState::Pending {
                self.seen.insert(key.clone(), p.state);
                let line = match &p.error {
                    Some(e) => format!("{key}: {} after {} blobs ({e})", p.state, p.blobs_done),
                    None => format!("{key}: {} ({} blobs)", p.state, p.blobs_done),
                };
                if self.plain {
                    eprintln!("{line}");
                } else {
                    let _ = self.bars.println(line);
                }
            }
        }
    }

    fn finish(&self) {
        for bar in self.blob_bars.values() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse_with_defaults() {
        let a = PreheatArgs::parse_from(["dfget preheat", "localhost:5000/x:1"]);
        assert_eq!(a.image, "localhost:5000/x:1");
        assert!(a.platform.is_none() && a.peers.is_empty() && !a.no_wait);
        let a = PreheatArgs::parse_from([
            "dfget preheat",
            "x",
            "--platform",
            "all",
            "--peer",
            "a:1",
            "--peer",
            "b:2",
            "--no-wait",
            "--supernode-api",
            "http://sn:8001/",
        ]);
        assert_eq!(a.peers, vec!["a:1", "b:2"]);
        assert_eq!(a.supernode_api, "http://sn:8001/");
        assert!(a.no_wait);
    }

    #[test]
    fn the_api_token_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(api_token(Some(&path)).unwrap().as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&path, "\n").unwrap();
        assert!(api_token(Some(&path)).unwrap_err().to_string().contains("empty"));
        assert!(api_token(Some(&dir.path().join("missing"))).is_err());
        assert!(api_client(Some("bad\ntoken")).is_err());
    }

    #[test]
    fn job_views_parse_and_label() {
        let v: JobView = serde_json::from_str(
            r#"{"id":"ab","image":"r/x:1","platform":"all","state":"running","error":null,"total_bytes":10,
                "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:01Z",
                "bytes_landed":4,"blobs":[{"digest":"sha256:0123456789abcdef0123","kind":"layer","platform":"linux/arm64",
                "size":10,"bytes_landed":4,"state":"running","error":null}],"peers":[],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(blob_label(&v.blobs[0]), "layer sha256:0123456789ab (linux/arm64)");
        assert_eq!(short("sha256:ab"), "sha256:ab");
    }
}
