//! Bandwidth limits with real processes: a daemon's download, upload and origin-fallback limits
//! and a supernode's origin limits take effect (their metrics count time spent waiting for
//! them) and every download still completes, verified. No assertion here depends on timing:
//! the machine is shared; the measured rates are in `benches/results/rate-limit.md`.

use anyhow::Context;
use damselfly_testkit::{
    ensure_success, file_sha256, random_bytes, run_all, sha256_digest, sha256_hex, Cluster, ClusterOpts, Dfdaemon,
    Metrics, Origin, SupernodeOpts,
};

const MIB: u64 = 1 << 20;

fn limit(m: &Metrics, direction: &str) -> f64 {
    m.get_labeled("damselfly_dfdaemon_rate_limit_bytes_per_second", &[("direction", direction)])
}

fn throttled(m: &Metrics, direction: &str) -> f64 {
    m.get_labeled("damselfly_dfdaemon_rate_throttled_seconds_total", &[("direction", direction)])
}

fn downloaded(m: &Metrics, source: &str) -> f64 {
    m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", source)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_download_and_upload_limits_throttle_and_downloads_complete() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let mut cluster = Cluster::start(0, ClusterOpts::default()).await?;
    let uploader = Dfdaemon::start(cluster.daemon_opts().args(["--upload-rate", "4MiB"])).await?;
    let downloader = Dfdaemon::start(cluster.daemon_opts().args(["--download-rate", "1MiB/s"])).await?;
    cluster.daemons.extend([uploader, downloader]);
    let blob = random_bytes(6 * MIB as usize, 7);
    origin.add("/blob", blob.clone());
    let dir = tempfile::tempdir()?;
    // The upload-limited daemon first (from the supernode), then the download-limited one: the
    // scheduler prefers a peer holding the pieces over the supernode, so its pieces come from
    // the upload-limited daemon, each side waiting for its own limit.
    for (i, d) in cluster.daemons.iter().enumerate() {
        let out = dir.path().join(format!("out{i}"));
        d.dfget(&origin.url("/blob"), &out).digest(&sha256_digest(&blob)).run_ok().await?;
        assert_eq!(file_sha256(&out)?, sha256_hex(&blob), "daemon {i}");
    }
    assert_eq!(origin.gets("/blob"), 1, "the supernode fetched the blob once; no daemon fell back");

    let (up, down) = (cluster.daemons[0].metrics().await?, cluster.daemons[1].metrics().await?);
    assert_eq!(limit(&up, "upload"), (4 * MIB) as f64);
    assert_eq!(limit(&up, "download"), 0.0, "no download limit on the uploader");
    assert!(up.get("damselfly_dfdaemon_upload_bytes_total") > 0.0, "the uploader served pieces");
    assert!(throttled(&up, "upload") > 0.0, "uploads waited for the upload limit");
    assert_eq!(throttled(&up, "download"), 0.0, "nothing waits without a limit");

    assert_eq!(limit(&down, "download"), MIB as f64);
    assert!(throttled(&down, "download") > 0.0, "the download waited for the download limit");
    let total = downloaded(&down, "peer") + downloaded(&down, "supernode");
    assert_eq!(total, blob.len() as f64, "the limited daemon received the blob once, from the swarm");

    // The status page shows each host's limits as the daemon registered them.
    let status = cluster.supernode.get_json("/api/v1/status").await?;
    let hosts = status["hosts"].as_array().context("hosts")?;
    let row = |addr: std::net::SocketAddr| {
        hosts.iter().find(|h| h["addr"] == addr.to_string()).with_context(|| format!("no host row for {addr}"))
    };
    let up_row = row(cluster.daemons[0].peer_addr())?;
    assert_eq!(up_row["limits"]["upload"], 4 * MIB);
    assert_eq!(up_row["limits"]["download"], 0);
    let down_row = row(cluster.daemons[1].peer_addr())?;
    assert_eq!(down_row["limits"]["download"], MIB);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_fallback_waits_for_the_origin_limit() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let mut cluster = Cluster::start(0, ClusterOpts::default()).await?;
    let daemon = Dfdaemon::start(cluster.daemon_opts().args(["--origin-rate", "1MiB"])).await?;
    cluster.daemons.push(daemon);
    let blob = random_bytes(3 * MIB as usize, 8);
    origin.add("/fallback", blob.clone());
    // Without its supernode the daemon fetches the origin itself.
    cluster.supernode.kill().await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    cluster.daemons[0].dfget(&origin.url("/fallback"), &out).digest(&sha256_digest(&blob)).run_ok().await?;
    assert_eq!(file_sha256(&out)?, sha256_hex(&blob));
    let m = cluster.daemons[0].metrics().await?;
    assert_eq!(downloaded(&m, "origin"), blob.len() as f64, "the blob came from the origin fallback");
    assert_eq!(limit(&m, "origin"), MIB as f64);
    assert!(throttled(&m, "origin") > 0.0, "the fallback waited for the origin limit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supernode_origin_limits_queue_fetches_and_peers_wait_for_them() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let supernode = SupernodeOpts::default().args(["--origin-rate", "1MiB", "--max-origin-fetches", "1"]);
    let cluster = Cluster::start(3, ClusterOpts { supernode, ..ClusterOpts::default() }).await?;
    // Three blobs of 4 MiB at 1 MiB/s, one fetch at a time, each daemon pulling one of them:
    // the last daemon's only task waits for a slot longer than its stall timeout (6 s) with
    // nothing else arriving on its host. The supernode keeps telling it that the fetch is
    // waiting, so it does not fall back to the origin (without that it would).
    let blobs: Vec<_> = (0..3).map(|i| random_bytes(4 * MIB as usize, 20 + i)).collect();
    for (i, b) in blobs.iter().enumerate() {
        origin.add(&format!("/queued-{i}"), b.clone());
    }
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for (i, (daemon, b)) in cluster.daemons.iter().zip(&blobs).enumerate() {
        let out = dir.path().join(format!("out{i}"));
        runs.push((daemon.dfget(&origin.url(&format!("/queued-{i}")), out).digest(&sha256_digest(b)), i));
    }
    let only_runs: Vec<_> = runs.iter().map(|(r, _)| r.clone()).collect();
    for ((run, i), output) in runs.iter().zip(run_all(&only_runs).await?) {
        ensure_success(&output, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blobs[*i]), "{run}");
    }
    for i in 0..3 {
        assert_eq!(origin.gets(&format!("/queued-{i}")), 1, "blob {i}: one origin fetch, no fallback");
    }
    assert_eq!(origin.bytes_served(), 12 * MIB, "each blob left the origin once");
    assert_eq!(origin.max_concurrent_bodies(), 1, "never two origin fetches at once");
    for m in cluster.daemon_metrics().await? {
        assert_eq!(downloaded(&m, "origin"), 0.0, "no daemon fell back to the origin");
    }
    let sn = cluster.supernode.metrics().await?;
    let label = [("direction", "origin")];
    assert_eq!(sn.get_labeled("damselfly_supernode_rate_limit_bytes_per_second", &label), MIB as f64);
    assert!(sn.get_labeled("damselfly_supernode_rate_throttled_seconds_total", &label) > 0.0);
    assert_eq!(sn.get("damselfly_supernode_origin_fetches_limit"), 1.0);
    assert_eq!(sn.get("damselfly_supernode_origin_fetches_queued"), 0.0);
    assert_eq!(sn.get("damselfly_supernode_origin_fetches_running"), 0.0);
    let status = cluster.supernode.get_json("/api/v1/status").await?;
    assert_eq!(status["origin_limits"]["rate"], MIB);
    assert_eq!(status["origin_limits"]["max_fetches"], 1);
    Ok(())
}
