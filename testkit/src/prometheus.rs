//! A real Prometheus server scraping the test's processes, for checking what the Grafana
//! dashboard and the scrape example in `deploy/` do against a running node.
//!
//! The binaries come from Debian's `prometheus` package. When they are not installed they are
//! unpacked from the package (`apt-get download` + `dpkg-deb -x`) into `target/test-tools/`:
//! installing the package would also start a system Prometheus service, and a test has no
//! business doing that. Debian builds Prometheus without the Kubernetes service discovery.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::process::{self, ManagedProcess, ScratchDir, Spec};

/// Environment variable naming a directory that holds `prometheus` and `promtool` (overrides
/// the lookup).
pub const PROMETHEUS_DIR_ENV: &str = "DAMSELFLY_PROMETHEUS_DIR";

/// How often the test server scrapes its targets.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// One scrape job: a name and the `HOST:PORT`s whose `/metrics` it reads.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    /// `job_name`, and the `job` label of the series.
    pub name: String,
    /// The targets.
    pub targets: Vec<SocketAddr>,
}

/// The directory holding `prometheus` and `promtool`, unpacking Debian's package into
/// `target/test-tools/prometheus` when neither [`PROMETHEUS_DIR_ENV`] nor `/usr/bin` has them.
pub fn prometheus_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PROMETHEUS_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let has_both = |dir: &Path| dir.join("prometheus").is_file() && dir.join("promtool").is_file();
    let system = PathBuf::from("/usr/bin");
    if has_both(&system) {
        return Ok(system);
    }
    let root = crate::target_dir()?.join("test-tools").join("prometheus");
    let dir = root.join("usr").join("bin");
    if has_both(&dir) {
        return Ok(dir);
    }
    unpack_debian_package(&root)
        .with_context(|| format!("get Prometheus (Debian package prometheus) into {}", root.display()))?;
    ensure!(has_both(&dir), "the prometheus package has no {}/prometheus and promtool", dir.display());
    Ok(dir)
}

fn unpack_debian_package(root: &Path) -> anyhow::Result<()> {
    let download = root.with_extension("download");
    std::fs::create_dir_all(&download).with_context(|| format!("create {}", download.display()))?;
    eprintln!("unpacking Debian's prometheus package into {} (apt-get download)", root.display());
    let fetch = || run_in(&download, "apt-get", &["download", "-qq", "prometheus"]);
    if !fetch()?.status.success() {
        // Stale or missing package lists.
        let _ = run_in(&download, "apt-get", &["update", "-qq"]);
        let output = fetch()?;
        ensure!(
            output.status.success(),
            "apt-get download prometheus failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download wrote no .deb")?;
    let output = run_in(&download, "dpkg-deb", &["-x", &deb.to_string_lossy(), &root.to_string_lossy()])?;
    ensure!(output.status.success(), "dpkg-deb -x failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    let _ = std::fs::remove_dir_all(&download);
    Ok(())
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<Output> {
    std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program}"))
}

/// `promtool check config [--agent] FILE`: fails with promtool's words when the file is not a
/// valid Prometheus configuration (for agent mode with `agent`).
pub fn promtool_check_config(file: &Path, agent: bool) -> anyhow::Result<()> {
    let promtool = prometheus_bin_dir()?.join("promtool");
    let output = std::process::Command::new(&promtool)
        .args(["check", "config"])
        .args(agent.then_some("--agent"))
        .arg(file)
        .output()
        .with_context(|| format!("run {}", promtool.display()))?;
    if !output.status.success() {
        bail!(
            "promtool check config {}:\n{}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A Prometheus server on loopback scraping the given jobs every [`SCRAPE_INTERVAL`]; killed
/// when dropped.
pub struct Prometheus {
    addr: SocketAddr,
    process: ManagedProcess,
    client: reqwest::Client,
    _dir: ScratchDir,
}

impl Prometheus {
    /// Writes the configuration, starts the server and waits until it is ready.
    pub async fn start(jobs: &[ScrapeJob]) -> anyhow::Result<Self> {
        let program = prometheus_bin_dir()?.join("prometheus");
        let dir = ScratchDir::new("damselfly-prometheus-")?;
        let config_path = dir.path().join("prometheus.yml");
        // JSON is YAML: no YAML writer needed.
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config(jobs))?)?;
        let ip = Ipv4Addr::LOCALHOST;
        let make_spec = |port: u16, _udp: u16| Spec {
            name: format!("prometheus 127.0.0.1:{port}"),
            program: program.clone(),
            args: vec![
                format!("--config.file={}", config_path.display()).into(),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
                format!("--web.listen-address={ip}:{port}").into(),
                "--log.level=warn".into(),
            ],
            env: vec![],
            cwd: dir.path().to_path_buf(),
            log_path: dir.path().join("prometheus.log"),
            health_url: format!("http://{ip}:{port}/-/ready"),
            ready_timeout: process::READY_TIMEOUT,
        };
        let (process, port, _) = process::start_on_free_ports(ip, make_spec).await?;
        Ok(Self { addr: SocketAddr::from((ip, port)), process, client: crate::http_client(), _dir: dir })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Evaluates `expr` now (`/api/v1/query`): the result vector, or the server's error (a
    /// PromQL syntax error, for instance).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(&format!("http://{}/api/v1/query", self.addr), [("query", expr)])?;
        let response = self.client.get(url.clone()).send().await?;
        let body: Value = response.json().await.with_context(|| format!("{url}: not JSON"))?;
        if body["status"] != "success" {
            bail!("{} ({})", body["error"].as_str().unwrap_or("no error message"), body["errorType"]);
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The single value of a query that yields one sample (`sum(...)`), if it does.
    pub async fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(expr).await?;
        let [sample] = result.as_slice() else { return Ok(None) };
        Ok(sample["value"][1].as_str().and_then(|v| v.parse().ok()))
    }

    /// Polls `expr` until `done` accepts its value, for up to `timeout`.
    pub async fn wait_for(&self, expr: &str, timeout: Duration, done: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
        let what = format!("Prometheus: {expr} reaches the expected value");
        let found = crate::eventually_some(&what, timeout, || async {
            let value = self.value(expr).await?;
            anyhow::Ok(value.filter(|v| done(*v)))
        })
        .await;
        found.with_context(|| format!("--- log ---\n{}", self.process.log_tail()))
    }
}

fn config(jobs: &[ScrapeJob]) -> Value {
    let secs = format!("{}s", SCRAPE_INTERVAL.as_secs());
    let jobs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let targets: Vec<String> = job.targets.iter().map(SocketAddr::to_string).collect();
            serde_json::json!({
                "job_name": job.name,
                "metrics_path": "/metrics",
                "static_configs": [{ "targets": targets }],
            })
        })
        .collect();
    serde_json::json!({
        "global": { "scrape_interval": secs, "scrape_timeout": secs, "evaluation_interval": secs },
        "scrape_configs": jobs,
    })
}
