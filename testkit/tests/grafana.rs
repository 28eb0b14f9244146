//! The Grafana dashboard (`deploy/grafana/damselfly.json`) and the Prometheus examples
//! (`deploy/prometheus/`) against the code:
//! - every metric the dashboard's PromQL names is on a running supernode's or dfdaemon's
//!   `/metrics` after a download, so the dashboard cannot silently drift when a metric is
//!   renamed or removed;
//! - a real Prometheus (Debian's) scrapes a running supernode and two daemons while they
//!   download, and every query of every panel evaluates without error and returns data;
//! - the scrape examples pass `promtool check config`, and the Kubernetes one selects the labels
//!   and port names the manifests in `deploy/kubernetes` carry;
//! - the dashboard's shape: panel ids, grid, the data source variable.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use damselfly_testkit::{
    ensure_success, promtool_check_config, random_bytes, run_all, sha256_digest, Cluster, ClusterOpts, DfdaemonOpts,
    Metrics, Origin, Prometheus, ScrapeJob, SupernodeOpts,
};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy").join(path)
}

fn dashboard() -> anyhow::Result<Value> {
    let path = deploy("grafana/damselfly.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression of every panel's targets.
fn expressions(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// The `damselfly_*` metric names an expression references.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("damselfly_") {
        let preceded = rest[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Whether `name`, as PromQL writes it, is exposed on `page`: a sample of that exact name, or a
/// declared family without samples yet (a labelled counter nobody incremented: `# TYPE x
/// counter` for `x_total`).
fn exposes(page: &Metrics, name: &str) -> bool {
    if page.all().iter().any(|s| s.name == name) {
        return true;
    }
    match name.strip_suffix("_total") {
        Some(base) => page.metric_type(base) == Some("counter"),
        None => page.metric_type(name).is_some_and(|t| t != "counter"),
    }
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let expr = r#"sum(increase(damselfly_supernode_delivered_bytes_total{source="peer"}[$__range])) / sum(rate(damselfly_supernode_origin_bytes_total[5m])) + my_damselfly_other"#;
    assert_eq!(
        metric_names(expr),
        ["damselfly_supernode_delivered_bytes_total", "damselfly_supernode_origin_bytes_total"]
    );
    assert!(metric_names("topk(10, up)").is_empty());
}

#[test]
fn the_dashboard_is_well_formed() -> anyhow::Result<()> {
    let d = dashboard()?;
    assert_eq!(d["uid"], "damselfly");
    let vars = d["templating"]["list"].as_array().context("templating")?;
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().context("panel id")?;
        ensure!(ids.insert(id), "panel id {id} used twice");
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().context("x")?, grid["w"].as_u64().context("w")?);
        ensure!(x + w <= 24, "panel {id} ({}) is wider than the grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        ensure!(
            p["datasource"]["uid"] == "${datasource}",
            "panel {id} ({}) must use the datasource variable",
            p["title"]
        );
        let targets = p["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {id} ({}) has no query", p["title"]);
        for t in targets {
            ensure!(t["expr"].as_str().is_some_and(|e| !metric_names(e).is_empty()), "panel {id}: {t}");
        }
    }
    ensure!(expressions(&d).len() >= 20, "the dashboard lost panels");
    Ok(())
}

#[test]
fn the_prometheus_examples_are_valid_and_scrape_both_components() -> anyhow::Result<()> {
    let path = deploy("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    for needle in ["job_name: damselfly-supernode", "job_name: damselfly-dfdaemon", ":8001", ":65001", "/metrics"] {
        ensure!(text.contains(needle), "{} does not mention {needle}", path.display());
    }
    promtool_check_config(&path, false)?;
    let agent = deploy("prometheus/agent.yml");
    promtool_check_config(&agent, true)?;
    ensure!(std::fs::read_to_string(&agent)?.contains("127.0.0.1:65001"), "agent.yml scrapes the local daemon");
    Ok(())
}

/// Debian's promtool has no Kubernetes discovery: the Kubernetes example is checked against the
/// manifests it must find instead (the pods' label and the name of the HTTP port).
#[test]
fn the_kubernetes_example_selects_what_the_manifests_label() -> anyhow::Result<()> {
    let example = std::fs::read_to_string(deploy("prometheus/kubernetes.yml"))?;
    let manifest = std::fs::read_to_string(deploy("kubernetes/supernode.yaml"))?;
    let namespace = std::fs::read_to_string(deploy("kubernetes/kustomization.yaml"))?;
    ensure!(example.contains("__meta_kubernetes_pod_label_app_kubernetes_io_name]\n        regex: damselfly-supernode"));
    ensure!(manifest.contains("labels: {app.kubernetes.io/name: damselfly-supernode}"), "supernode pods' label");
    ensure!(example.contains("__meta_kubernetes_pod_container_port_name]\n        regex: http\n"));
    ensure!(manifest.contains("{name: http, containerPort: 8001, protocol: TCP}"), "supernode's port named http");
    ensure!(example.contains("namespaces: {names: [damselfly]}") && namespace.contains("namespace: damselfly"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_queries_is_exported() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(3 << 20, 5);
    origin.add("/small", blob.clone());
    let cluster = Cluster::start(2, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let runs: Vec<_> = cluster
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&origin.url("/small"), dir.path().join(format!("out{i}"))).digest(&sha256_digest(&blob)))
        .collect();
    for (run, output) in runs.iter().zip(run_all(&runs).await?) {
        ensure_success(&output, &run.to_string())?;
    }
    let supernode = cluster.supernode.metrics().await?;
    let daemons = cluster.daemon_metrics().await?;

    let names: BTreeSet<String> = expressions(&dashboard()?).iter().flat_map(|e| metric_names(e)).collect();
    ensure!(names.len() >= 20, "only {} metrics on the dashboard: {names:?}", names.len());
    let missing: Vec<&String> =
        names.iter().filter(|n| !exposes(&supernode, n) && !daemons.iter().any(|m| exposes(m, n))).collect();
    ensure!(
        missing.is_empty(),
        "deploy/grafana/damselfly.json queries metrics that neither the supernode nor a dfdaemon exports: {missing:?}"
    );
    // Not a failure: metrics nobody charts yet, for whoever adds the next panel.
    let exported: BTreeSet<&str> =
        supernode.all().iter().chain(daemons.iter().flat_map(|m| m.all())).map(|s| s.name.as_str()).collect();
    let uncharted: Vec<&&str> = exported.iter().filter(|n| !names.contains(**n)).collect();
    println!("dashboard charts {} metrics; exported but not charted: {uncharted:?}", names.len());
    Ok(())
}

/// Grafana's variables, as a dashboard over a short test run would set them.
fn grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s").replace("$__range", "5m").replace("$__interval", "5s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_evaluates_every_panel_against_a_running_swarm() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(6 << 20, 6);
    // Slow enough that Prometheus scrapes the download while it runs: rates need two samples.
    origin.add_throttled("/layer", blob.clone(), 2 << 20);
    // A quota, so that the quota panels have something to show.
    let opts = ClusterOpts {
        supernode: SupernodeOpts::default().args(["--cache-quota", "1GiB"]),
        daemon: DfdaemonOpts::default().args(["--cache-quota", "1GiB"]),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(2, opts).await?;
    let prometheus = Prometheus::start(&[
        ScrapeJob { name: "damselfly-supernode".into(), targets: vec![cluster.supernode.http_addr()] },
        ScrapeJob {
            name: "damselfly-dfdaemon".into(),
            targets: cluster.daemons.iter().map(|d| d.proxy_addr()).collect(),
        },
    ])
    .await?;
    let targets = 1 + cluster.daemons.len();
    prometheus.wait_for("sum(up)", Duration::from_secs(30), |up| up == targets as f64).await?;

    let dir = tempfile::tempdir()?;
    let runs: Vec<_> = cluster
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&origin.url("/layer"), dir.path().join(format!("out{i}"))).digest(&sha256_digest(&blob)))
        .collect();
    for (run, output) in runs.iter().zip(run_all(&runs).await?) {
        ensure_success(&output, &run.to_string())?;
    }
    // Prometheus has scraped the end of the download.
    let delivered = (runs.len() * blob.len()) as f64;
    let total = "sum(damselfly_supernode_delivered_bytes_total)";
    prometheus.wait_for(total, Duration::from_secs(30), |v| v == delivered).await?;

    let mut failures = Vec::new();
    for expr in expressions(&dashboard()?) {
        let query = grafana_variables(&expr);
        match prometheus.query(&query).await {
            Ok(result) if result.is_empty() => failures.push(format!("{query}: no data")),
            Ok(result) => println!("{query}: {} series, first {}", result.len(), result[0]["value"][1]),
            Err(e) => failures.push(format!("{query}: {e:#}")),
        }
    }
    ensure!(
        failures.is_empty(),
        "dashboard queries that fail or show nothing on a running swarm:\n{}",
        failures.join("\n")
    );

    // The headline panel: bytes delivered per origin byte, two daemons from one origin fetch.
    let d = dashboard()?;
    let panel = panels(&d).into_iter().find(|p| p["title"] == "Origin offload").context("Origin offload panel")?;
    let offload = grafana_variables(panel["targets"][0]["expr"].as_str().context("offload expr")?);
    let ratio = prometheus.value(&offload).await?.context("offload")?;
    ensure!((1.5..=2.5).contains(&ratio), "{offload} = {ratio}, expected about 2 (two daemons, one origin fetch)");
    Ok(())
}
