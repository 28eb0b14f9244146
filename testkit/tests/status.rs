//! The supernode's status page, in a real browser: a real supernode and four dfdaemons pull a
//! multi-MiB file from a throttled origin; headless Chromium (Debian's, driven by playwright from
//! `status/browse.py`) signs in with `/status?token=` before the pull starts, stays signed in by
//! its cookie, watches the page refresh itself, reads it while the pull runs (between two reads
//! of `/metrics`) and again when every peer is done; the test checks what it showed against the
//! supernode's and the daemons' `/metrics`. Screenshots (laptop and phone width, during and
//! after the pull) are kept under `target/test-artifacts/`.
//!
//! The browser tools are installed when missing (`apt-get install chromium`, playwright from PyPI
//! into a venv under `target/test-tools/`); when that is impossible the test fails, saying why.
//! `DAMSELFLY_SKIP_BROWSER=1` skips the browser part instead (loudly; the HTTP checks of the
//! sign-in flow and the JSON checks still run), for machines that cannot have a browser.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use damselfly_testkit::{
    ensure_success, file_sha256, http_client, random_bytes, sha256_digest, sha256_hex, target_dir, Cluster,
    ClusterOpts, DfgetChild, DfgetRun, Metrics, Origin,
};
use reqwest::header;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const DAEMONS: usize = 4;
const BLOB: usize = 24 << 20;
/// Set to 1 to run the test without its browser part when no browser can be installed.
const SKIP_BROWSER_ENV: &str = "DAMSELFLY_SKIP_BROWSER";
/// A signed query string, as object stores hand out: it must never reach the page.
const SECRET_QUERY: &str = "X-Amz-Signature=0badc0ffee5ecre7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_shows_the_swarm_in_a_real_browser() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(BLOB, 2024);
    // Slow enough that the page sees the pull in progress, fast enough for CI.
    origin.add_throttled("/layer", blob.clone(), 4 << 20);
    let cluster = Cluster::start(DAEMONS, ClusterOpts::default()).await?;
    let sn = &cluster.supernode;
    let token = sn.api_token()?;
    sign_in_over_http(&sn.http_url(), &token).await?;

    // The browser signs in first, so that it sees the whole pull.
    let browser = match browser_tools().await? {
        Some(tools) => Some(Browser::sign_in(&tools, &sn.http_url(), &token).await?),
        None => None,
    };
    let url = format!("{}?{SECRET_QUERY}", origin.url("/layer"));
    let dir = tempfile::tempdir()?;
    let runs: Vec<DfgetRun> = cluster
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&url, dir.path().join(format!("out{i}"))).digest(&sha256_digest(&blob)))
        .collect();
    let children = runs.iter().map(DfgetRun::spawn).collect::<anyhow::Result<Vec<_>>>()?;
    let pulls = tokio::spawn(futures_util::future::join_all(children.into_iter().map(DfgetChild::wait)));

    let seen = match browser {
        Some(browser) => Some(browser.finish().await?),
        None => None,
    };
    for (run, output) in runs.iter().zip(pulls.await?) {
        ensure_success(&output?, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob), "{run}");
    }

    let sn_metrics = sn.metrics().await?;
    let daemon_metrics = cluster.daemon_metrics().await?;
    let api = sn.get_json("/api/v1/status").await?;
    check_api(&api, &sn_metrics, &daemon_metrics)?;
    no_url_anywhere(&sn.http_url(), &token, &api).await?;
    let Some(seen) = seen else { return Ok(()) };
    check_live(&seen)?;
    check_browser(&seen, &sn_metrics, &daemon_metrics, &cluster)?;
    for (name, path) in seen["screenshots"].as_object().context("screenshots")? {
        println!("status page screenshot ({name}): {}", path.as_str().unwrap_or("?"));
    }
    Ok(())
}

/// The sign-in flow over plain HTTP: 401 without a token, 303 + cookie with it, then the
/// cookie alone reads the page and its JSON (and nothing may be changed with it).
async fn sign_in_over_http(base: &str, token: &str) -> anyhow::Result<()> {
    http_client(); // installs the rustls provider reqwest needs
    let client = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build()?;
    let anonymous = client.get(format!("{base}/status")).send().await?;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key(header::WWW_AUTHENTICATE));
    let wrong = client.get(format!("{base}/status?token=not-the-token")).send().await?;
    assert_eq!(wrong.status(), 401);
    assert_eq!(client.get(format!("{base}/api/v1/status")).send().await?.status(), 401);

    let signed = client.get(format!("{base}/status?token={token}")).send().await?;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()[header::LOCATION], "/status");
    let set_cookie = signed.headers()[header::SET_COOKIE].to_str()?.to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(token), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().context("cookie pair")?.to_owned();

    let page = client.get(format!("{base}/status")).header(header::COOKIE, &cookie).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str()?.to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(page.headers()[header::CONTENT_TYPE].to_str()?.starts_with("text/html"));
    let html = page.text().await?;
    assert!(html.contains(r#"<main id="live""#) && html.contains("/status/app.js"), "{html}");
    let script = client.get(format!("{base}/status/app.js")).header(header::COOKIE, &cookie).send().await?;
    assert_eq!(script.status(), 200);
    let json = client.get(format!("{base}/api/v1/status")).header(header::COOKIE, &cookie).send().await?;
    assert_eq!(json.status(), 200);
    let json: Value = json.json().await?;
    assert!(json["series"].is_array(), "{json}");
    let unknown = format!("{base}/status/task/sha256:{}", "0".repeat(64));
    assert_eq!(client.get(unknown).header(header::COOKIE, &cookie).send().await?.status(), 404);
    let post = client.post(format!("{base}/api/v1/preheat")).header(header::COOKIE, &cookie).send().await?;
    assert_eq!(post.status(), 401, "a browser session only reads");
    Ok(())
}

/// `/api/v1/status` against the counters: what the page is rendered from.
fn check_api(api: &Value, sn: &Metrics, daemons: &[Metrics]) -> anyhow::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    let blob = BLOB as u64;
    let delivered = DAEMONS as u64 * blob;
    assert_eq!(n(&api["origin_bytes"]), blob);
    assert_eq!(sn.get("damselfly_supernode_origin_bytes_total") as u64, blob);
    let totals = &api["totals"];
    assert_eq!(n(&totals["from_peers"]) + n(&totals["from_supernode"]), delivered, "{totals}");
    assert_eq!(sn.get("damselfly_supernode_delivered_bytes_total") as u64, delivered);
    let from_peers: f64 =
        daemons.iter().map(|m| m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")])).sum();
    assert_eq!(n(&totals["from_peers"]), from_peers as u64, "peer bytes as the daemons count them");
    assert_eq!(n(&api["supernode"]["uploaded"]), sn.get("damselfly_supernode_upload_bytes_total") as u64);
    assert_eq!(n(&api["tasks_total"]), sn.get("damselfly_supernode_tasks") as u64);
    assert_eq!(n(&api["peers"]), sn.get("damselfly_supernode_peers") as u64);
    let tasks = api["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 1, "{api}");
    assert_eq!(n(&tasks[0]["counters"]["origin_bytes"]), blob);
    assert_eq!(n(&tasks[0]["peers_done"]), DAEMONS as u64);
    Ok(())
}

/// Neither the URL's path nor its signed query string appears in any view.
async fn no_url_anywhere(base: &str, token: &str, api: &Value) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let get = |path: String| client.get(format!("{base}{path}")).bearer_auth(token).send();
    let task = api["tasks"][0]["id"].as_str().context("task id")?;
    let views = [
        get("/status".into()).await?.text().await?,
        get(format!("/status/task/{task}")).await?.text().await?,
        get(format!("/api/v1/status/task/{task}")).await?.text().await?,
        api.to_string(),
    ];
    for view in views {
        ensure!(!view.contains("0badc0ffee") && !view.contains("/layer"), "a view shows the URL: {view}");
    }
    Ok(())
}

/// What Chromium saw while the pull ran, against `/metrics` read just before and just after
/// that render: the supernode's counters bracket what the page showed, and the pull was
/// visibly under way.
fn check_live(seen: &Value) -> anyhow::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    let metrics = |key: &str| Metrics::parse(seen[key].as_str().unwrap_or_default()).context(key.to_owned());
    let (before, after) = (metrics("live_metrics_before")?, metrics("live_metrics_after")?);
    let live = &seen["live"];
    let tile = |key: &str| n(&live["tiles"][key]["value"]);
    let between = |key: &str, metric: &str| {
        let (low, high) = (before.get(metric) as u64, after.get(metric) as u64);
        let shown = tile(key);
        println!("while the pull ran: {key} {shown} (metric {metric} {low}..={high})");
        ensure!(low <= shown && shown <= high, "the page showed {key} {shown}, /metrics said {low} then {high}");
        Ok(())
    };
    between("origin-bytes", "damselfly_supernode_origin_bytes_total")?;
    between("delivered-bytes", "damselfly_supernode_delivered_bytes_total")?;
    between("tasks", "damselfly_supernode_tasks")?;
    between("peers", "damselfly_supernode_peers")?;
    // The supernode counts an upload when it has sent it, the page when the child reports it.
    let sent = after.get("damselfly_supernode_upload_bytes_total") as u64;
    ensure!(tile("supernode-upload-bytes") <= sent, "supernode uploads shown above the bytes it sent");

    let tasks = live["tasks"].as_array().context("live tasks")?;
    ensure!(tasks.len() == 1, "one task while the pull runs: {tasks:?}");
    let task = &tasks[0];
    ensure!(n(&task["delivered"]) > 0, "the live view shows bytes delivered: {task}");
    ensure!(n(&task["delivered"]) == tile("delivered-bytes"), "the only task holds every delivered byte: {task}");
    ensure!(n(&task["peers_done"]) < DAEMONS as u64, "the live view was taken while the pull ran: {task}");
    ensure!(n(&task["delivered"]) < (DAEMONS * BLOB) as u64, "not everything delivered yet: {task}");
    Ok(())
}

/// What Chromium saw after the pull, against the metrics.
fn check_browser(seen: &Value, sn: &Metrics, daemons: &[Metrics], cluster: &Cluster) -> anyhow::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    assert_eq!(seen["console_errors"], Value::Array(vec![]), "no script or CSP errors");
    assert_eq!(seen["anonymous_status"], 401);
    assert_eq!(seen["sign_in_status"], 200, "the sign-in redirect lands on the page");
    assert!(seen["sign_in_url"].as_str().is_some_and(|u| u.ends_with("/status")), "the token leaves the address bar");
    let cookies = seen["cookies"].as_array().context("cookies")?;
    assert!(
        cookies.iter().any(|c| c["name"] == "damselfly_session"
            && c["http_only"] == true
            && c["same_site"] == "Strict"
            && c["holds_token"] == false),
        "{cookies:?}"
    );
    assert_eq!(seen["reload_status"], 200, "signed in by the cookie alone");
    assert_eq!(seen["refreshed_in_place"], true, "the page refreshed itself");

    let o = &seen["overview"];
    let tile = |key: &str| n(&o["tiles"][key]["value"]);
    assert_eq!(tile("origin-bytes"), sn.get("damselfly_supernode_origin_bytes_total") as u64);
    assert_eq!(tile("delivered-bytes"), sn.get("damselfly_supernode_delivered_bytes_total") as u64);
    assert_eq!(tile("delivered-bytes"), (DAEMONS * BLOB) as u64);
    assert_eq!(tile("supernode-upload-bytes"), sn.get("damselfly_supernode_upload_bytes_total") as u64);
    assert_eq!(tile("tasks"), sn.get("damselfly_supernode_tasks") as u64);
    assert_eq!(tile("peers"), sn.get("damselfly_supernode_peers") as u64);
    assert!(n(&o["chart_paths"]) >= 3, "the chart drew its series");
    let tasks = o["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 1);
    assert_eq!((n(&tasks[0]["size"]), n(&tasks[0]["origin"])), (BLOB as u64, BLOB as u64));
    assert_eq!(n(&tasks[0]["delivered"]), (DAEMONS * BLOB) as u64);

    // Each daemon's row: its uploads and downloads as its own /metrics count them.
    let hosts = o["hosts"].as_array().context("hosts")?;
    let delivered = tile("delivered-bytes") as f64;
    for (daemon, m) in cluster.daemons.iter().zip(daemons) {
        let addr = daemon.peer_addr().to_string();
        let row = hosts.iter().find(|h| h["addr"] == addr.as_str()).with_context(|| format!("no row for {addr}"))?;
        let uploaded = m.get("damselfly_dfdaemon_upload_bytes_total");
        let downloaded = m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")])
            + m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "supernode")]);
        assert_eq!(n(&row["uploaded"]), uploaded as u64, "{addr}: upload bytes");
        assert_eq!(n(&row["downloaded"]), downloaded as u64, "{addr}: download bytes");
        println!("{addr}: uploaded {:.1}% of the bytes delivered", 100.0 * uploaded / delivered);
    }
    let text = o["text"].as_str().unwrap_or_default();
    ensure!(!text.contains("0badc0ffee") && !text.contains("/layer"), "the page shows the URL");

    let task = &seen["task"];
    assert_eq!(task["task"], tasks[0]["id"]);
    let peers = task["peers"].as_array().context("task peers")?;
    assert_eq!(peers.len(), DAEMONS);
    let pieces = BLOB as u64 / u64::from(damselfly_types::piece::piece_size(Some(BLOB as u64)));
    for p in peers {
        assert_eq!(n(&p["pieces"]), pieces, "every host holds every piece: {p}");
        assert_eq!(n(&p["downloaded"]), BLOB as u64, "{p}");
    }
    assert!(n(&task["segments"]) >= 2, "the supernode and at least one peer served the task");
    assert_eq!(seen["phone_fits"], true, "the overview fits a phone's width");
    assert_eq!(seen["phone_task_fits"], true, "the task view fits a phone's width");
    Ok(())
}

/// A python3 that imports playwright, and Chromium.
struct Tools {
    python: PathBuf,
    chromium: PathBuf,
}

/// Finds or installs the browser tools; when that is impossible, an error, or `None` (after a
/// loud message) with `DAMSELFLY_SKIP_BROWSER=1`.
async fn browser_tools() -> anyhow::Result<Option<Tools>> {
    let found = tokio::task::spawn_blocking(|| -> Result<Tools, String> {
        let chromium = chromium()?;
        let python = python_with_playwright()?;
        Ok(Tools { python, chromium })
    })
    .await?;
    match found {
        Ok(tools) => Ok(Some(tools)),
        Err(why) if std::env::var_os(SKIP_BROWSER_ENV).is_some_and(|v| v == "1") => {
            let bar = "!".repeat(100);
            eprintln!(
                "{bar}\n!!! SKIPPING the browser part of the status page test ({SKIP_BROWSER_ENV}=1): {why}\n{bar}"
            );
            Ok(None)
        }
        Err(why) => bail!("no headless browser for the status page test: {why} ({SKIP_BROWSER_ENV}=1 skips that part)"),
    }
}

fn chromium() -> Result<PathBuf, String> {
    let find = || {
        std::env::var_os("DAMSELFLY_CHROMIUM")
            .map(PathBuf::from)
            .into_iter()
            .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
            .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    apt_install("chromium")?;
    find().ok_or_else(|| "apt-get installed chromium but /usr/bin/chromium is missing".into())
}

fn python_with_playwright() -> Result<PathBuf, String> {
    let imports = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import playwright.sync_api"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let system = PathBuf::from(std::env::var_os("DAMSELFLY_PYTHON").unwrap_or_else(|| "python3".into()));
    if imports(&system) {
        return Ok(system);
    }
    // Debian's python refuses `pip install` outside a venv (PEP 668): install into our own.
    let venv = target_dir().map_err(|e| e.to_string())?.join("test-tools").join("playwright-venv");
    let python = venv.join("bin").join("python3");
    if imports(&python) {
        return Ok(python);
    }
    if !run(&system, &["-m", "venv", &venv.to_string_lossy()]) {
        apt_install("python3-venv")?;
        if !run(&system, &["-m", "venv", &venv.to_string_lossy()]) {
            return Err(format!("cannot create a venv at {}", venv.display()));
        }
    }
    eprintln!("installing playwright into {} (pip)", venv.display());
    if !run(&python, &["-m", "pip", "install", "--quiet", "playwright"]) {
        return Err("pip install playwright failed (no network to PyPI?)".into());
    }
    if imports(&python) {
        Ok(python)
    } else {
        Err("playwright installed but does not import".into())
    }
}

fn apt_install(package: &str) -> Result<(), String> {
    let root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !root {
        return Err(format!("{package} is missing and installing it needs root (apt-get install {package})"));
    }
    eprintln!("installing {package} (apt-get)");
    let apt = Path::new("apt-get");
    let _ = run(apt, &["update", "-qq"]);
    if run(apt, &["install", "-y", "-qq", package]) {
        Ok(())
    } else {
        Err(format!("apt-get install {package} failed"))
    }
}

fn run(program: &Path, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `status/browse.py` driving Chromium: started and signed in by [`Browser::sign_in`], read to
/// the end by [`Browser::finish`].
struct Browser {
    script: PathBuf,
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Browser {
    /// Starts the script and waits until the browser is signed in to the status page.
    async fn sign_in(tools: &Tools, base: &str, token: &str) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/status/browse.py");
        let config = serde_json::json!({
            "base": base,
            "token": token,
            "chromium": tools.chromium,
            "out_dir": target_dir()?.join("test-artifacts"),
            "peers": DAEMONS,
            "timeout_s": 90,
        });
        let mut child = tokio::process::Command::new(&tools.python)
            .arg(&script)
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", script.display()))?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut stderr = child.stderr.take().context("stderr")?;
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut browser = Self { script, child, stdout, stderr };
        let line = tokio::time::timeout(Duration::from_secs(120), browser.stdout.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == "signed-in" => Ok(browser),
            Ok(Ok(line)) => Err(browser.failed(&format!("printed {line:?} instead of signed-in")).await),
            Ok(Err(e)) => Err(browser.failed(&format!("stdout: {e}")).await),
            Err(_) => Err(browser.failed("did not sign in within 120 s").await),
        }
    }

    /// Waits for the script's end and returns what it saw.
    async fn finish(mut self) -> anyhow::Result<Value> {
        let rest = async {
            let mut last = None;
            while let Some(line) = self.stdout.next_line().await? {
                last = Some(line);
            }
            let status = self.child.wait().await?;
            anyhow::Ok((last, status))
        };
        let (last, status) = match tokio::time::timeout(Duration::from_secs(180), rest).await {
            Ok(result) => result?,
            Err(_) => return Err(self.failed("did not finish within 180 s").await),
        };
        if !status.success() {
            return Err(self.failed(&format!("exited with {status}")).await);
        }
        let stderr = self.stderr.await.unwrap_or_default();
        let last = last.unwrap_or_default();
        serde_json::from_str(&last)
            .with_context(|| format!("{} printed no JSON: {last}\n{stderr}", self.script.display()))
    }

    /// The script failed: stops it and names the failure, with its stderr.
    async fn failed(mut self, what: &str) -> anyhow::Error {
        let _ = self.child.kill().await;
        let stderr = self.stderr.await.unwrap_or_default();
        anyhow::anyhow!("{} {what}:\n{stderr}", self.script.display())
    }
}
