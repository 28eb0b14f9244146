//! Durable cache, end to end with real processes: restart keeps the cache, kill -9 resumes and
//! fetches only what is missing, corruption on disk is never served, the quota holds during a
//! workload several times its size, and a restarted supernode does not go back to the origin.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use damselfly_testkit::{
    eventually, eventually_some, file_sha256, http_client, random_bytes, sha256_digest, sha256_hex, Cluster,
    ClusterOpts, Dfdaemon, DfdaemonOpts, Metrics, Origin, Supernode, SupernodeOpts,
};
use futures_util::StreamExt;

/// The piece size of every file under 64 MiB (the tests' small files).
const PIECE: usize = damselfly_types::piece::MIN_PIECE_SIZE as usize;
const MB: usize = 1 << 20;
const MIB: f64 = (1 << 20) as f64;

/// Every verified byte the daemon received since it (re)started, whatever the source.
fn received(m: &Metrics) -> f64 {
    m.get("damselfly_dfdaemon_download_bytes_total")
}

/// The daemon's view of a task (`GET /api/v1/tasks/{id}`), `None` while it does not know it.
async fn task_status(daemon: &Dfdaemon, id: &str) -> Option<serde_json::Value> {
    daemon.get_json(&format!("/api/v1/tasks/{id}")).await.ok()
}

/// Waits until `cond` holds for the task, polling its status.
async fn wait_task(
    daemon: &Dfdaemon,
    id: &str,
    timeout: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let cond = &cond;
    eventually_some(&format!("task {id} in the expected state"), timeout, || async move {
        Ok(task_status(daemon, id).await.filter(|v| cond(v)))
    })
    .await
}

/// Sum of the sizes of the content files under `data_dir/tasks`.
fn content_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("tasks"))
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The content file of `task_id` under `data_dir`.
fn content_file(data_dir: &Path, task_id: &str) -> PathBuf {
    data_dir.join("tasks").join(format!("{}.data", task_id.replace(':', "_")))
}

/// Pieces present at restart, as the daemon logs when it resumes a task.
fn resumed_have(log: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("resuming download"))?;
    let rest = &line[line.find("have=")? + 5..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_kill_9_halfway_resumes_and_fetches_only_the_missing_pieces() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let len = 96 * MB;
    let piece = damselfly_types::piece::piece_size(Some(len as u64)) as usize;
    let blob = random_bytes(len, 11);
    let digest = sha256_digest(&blob);
    origin.add_throttled("/big", blob.clone(), 24 << 20);
    let mut cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let url = origin.url("/big");
    let first = cluster.daemons[0].dfget(&url, dir.path().join("first")).digest(&digest).spawn()?;

    // Kill -9 halfway.
    let half = (len / piece / 2) as u64;
    let daemon = &mut cluster.daemons[0];
    wait_task(daemon, &digest, Duration::from_secs(60), |v| v["pieces_present"].as_u64() >= Some(half)).await?;
    let before = received(&daemon.metrics().await?);
    daemon.kill().await?;
    let _ = first.wait().await;

    // Restart: the partial task is resumed at once, with the pieces already here.
    let restarted = Instant::now();
    daemon.restart().await?;
    let ready = restarted.elapsed();
    let done = wait_task(daemon, &digest, Duration::from_secs(60), |v| v["status"] == "done").await?;
    assert_eq!(done["pieces_present"].as_u64(), Some((len / piece) as u64));
    let after = received(&daemon.metrics().await?);
    let have = resumed_have(&daemon.output()).context("the restarted daemon logs the resumed task")?;
    let missing = (len as u64 - have * piece as u64) as f64;
    // At most a download window of pieces (the scheduler's default, 8) is in flight at the kill.
    let window = 8.0 * piece as f64;
    println!(
        "kill -9 at {:.0} MiB received; restart ready in {:.0} ms; {} of {} pieces present after restart; \
         fetched after restart {:.0} MiB for {:.0} MiB missing (lost to the kill: {:.1} MiB)",
        before / MIB,
        ready.as_secs_f64() * 1e3,
        have,
        len / piece,
        after / MIB,
        missing / MIB,
        (before - have as f64 * piece as f64).max(0.0) / MIB
    );
    // Pieces become durable in flusher rounds, at most one per 100 ms under load
    // (store::durable): what arrived in the last round or two before the kill may be lost. At
    // the origin's 24 MiB/s that is up to ~19 pieces of 256 KiB, plus a few in the sync itself.
    let lost_max = ((24 << 20) as f64 * 0.2 / piece as f64).ceil() as u64 + 6;
    assert!(have >= half.saturating_sub(lost_max), "pieces stored before the kill survive it (have {have} of {half})");
    assert!(after <= missing + window, "fetched {after} bytes after restart for {missing} missing");
    assert!(after >= missing, "every missing piece was fetched: {after} < {missing}");

    // The file is complete and right, served from the restarted daemon's cache.
    let out = dir.path().join("second");
    daemon.dfget(&url, &out).digest(&digest).run_ok().await?;
    assert_eq!(file_sha256(&out)?, sha256_hex(&blob));
    assert_eq!(received(&daemon.metrics().await?), after, "the second read came from the cache");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_supernode_serves_its_cache_without_the_origin_and_drops_a_corrupt_copy() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let (a, b) = (random_bytes(5 * PIECE + 77, 21), random_bytes(3 * PIECE, 22));
    origin.add("/a", a.clone());
    origin.add("/b", b.clone());
    let mut cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    for (path, blob) in [("/a", &a), ("/b", &b)] {
        let out = dir.path().join(path.trim_start_matches('/'));
        cluster.daemons[0].dfget(&origin.url(path), &out).digest(&sha256_digest(blob)).run_ok().await?;
    }
    let served = origin.bytes_served();
    assert_eq!(served, (a.len() + b.len()) as u64);
    // Complete in the API means recorded on disk.
    let sn = &mut cluster.supernode;
    eventually("every supernode task complete", Duration::from_secs(10), || async {
        let tasks = sn.get_json("/api/v1/tasks").await?;
        Ok(tasks.as_array().is_some_and(|t| t.iter().all(|t| t["state"] == "complete")))
    })
    .await?;
    sn.kill().await?;
    // Flip a byte of /b's cached copy while the supernode is down.
    let b_file = content_file(sn.data_dir(), &sha256_digest(&b));
    let mut bytes = std::fs::read(&b_file)?;
    bytes[PIECE + 3] ^= 0x40;
    std::fs::write(&b_file, &bytes)?;
    sn.restart().await?;

    // A daemon with an empty cache gets /a from the restarted supernode: no origin byte.
    let fresh = cluster.add_daemon().await?;
    let out = dir.path().join("a-again");
    fresh.dfget(&origin.url("/a"), &out).digest(&sha256_digest(&a)).run_ok().await?;
    assert_eq!(file_sha256(&out)?, sha256_hex(&a));
    assert_eq!(origin.bytes_served(), served, "a restarted supernode must not refetch what it holds");
    let m = cluster.supernode.metrics().await?;
    assert_eq!(m.get("damselfly_supernode_origin_bytes_total"), 0.0);

    // /b's corrupt copy is never served: the supernode drops it and fetches /b again.
    let fresh = cluster.daemons.last().context("the daemon just added")?;
    let out = dir.path().join("b-again");
    fresh.dfget(&origin.url("/b"), &out).digest(&sha256_digest(&b)).run_ok().await?;
    assert_eq!(file_sha256(&out)?, sha256_hex(&b));
    let m = cluster.supernode.metrics().await?;
    assert!(m.get("damselfly_supernode_cache_corrupt_pieces_total") >= 1.0, "corruption detected");
    for d in cluster.daemon_metrics().await? {
        assert_eq!(d.get("damselfly_dfdaemon_bad_pieces_total"), 0.0, "no daemon ever received a bad piece");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_piece_on_a_daemons_disk_is_never_served_and_is_fetched_again() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(8 * PIECE, 31);
    let digest = sha256_digest(&blob);
    origin.add("/blob", blob.clone());
    let mut cluster = Cluster::start(2, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    cluster.daemons[0].dfget(&origin.url("/blob"), dir.path().join("a")).digest(&digest).run_ok().await?;
    let a = &mut cluster.daemons[0];
    a.stop().await?;
    let file = content_file(a.data_dir(), &digest);
    let mut bytes = std::fs::read(&file)?;
    for i in 0..64 {
        bytes[3 * PIECE + 1000 + i] ^= 0xa5;
    }
    std::fs::write(&file, &bytes)?;
    a.restart().await?;

    // Another daemon fetches the file: the restarted one (a seed again) never uploads the bad
    // piece.
    cluster.daemons[1].dfget(&origin.url("/blob"), dir.path().join("b")).digest(&digest).run_ok().await?;
    assert_eq!(file_sha256(dir.path().join("b"))?, sha256_hex(&blob));
    let b = cluster.daemons[1].metrics().await?;
    assert_eq!(b.get("damselfly_dfdaemon_bad_pieces_total"), 0.0, "a peer never received a corrupt piece");

    // Reading it from the restarted daemon: the bad piece is dropped, fetched again, and the
    // right bytes come out.
    let a = &cluster.daemons[0];
    let out = dir.path().join("a-again");
    a.dfget(&origin.url("/blob"), &out).digest(&digest).run_ok().await?;
    assert_eq!(file_sha256(&out)?, sha256_hex(&blob));
    let m = a.metrics().await?;
    assert!(m.get("damselfly_dfdaemon_cache_corrupt_pieces_total") >= 1.0, "corruption detected");
    assert_eq!(received(&m), PIECE as f64, "only the corrupt piece was fetched again");
    assert_eq!(origin.bytes_served(), blob.len() as u64);
    Ok(())
}

/// Reads `url` through the daemon's API slowly (a long-running reader of an in-use task).
async fn slow_read(proxy: String, url: String, digest: String, stop_early: Arc<AtomicBool>) -> anyhow::Result<Bytes> {
    let body = serde_json::json!({ "url": url, "digest": digest });
    let resp = http_client().post(format!("{proxy}/api/v1/download")).json(&body).send().await?;
    ensure!(resp.status().is_success(), "download answered {}", resp.status());
    let mut stream = resp.bytes_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
        if !stop_early.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    Ok(Bytes::from(out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_quota_holds_through_a_workload_four_times_its_size() -> anyhow::Result<()> {
    const QUOTA: u64 = 32 << 20;
    let origin = Origin::start()?;
    let files: Vec<Bytes> = (0..16).map(|i| random_bytes(8 * MB, 100 + i)).collect();
    for (i, f) in files.iter().enumerate() {
        origin.add(&format!("/f{i}"), f.clone());
    }
    let too_big = random_bytes(40 * MB, 99);
    origin.add("/too-big", too_big.clone());
    let quota = ["--cache-quota".to_owned(), "32MiB".to_owned()];
    let opts = ClusterOpts {
        supernode: SupernodeOpts::default().args(quota.clone()),
        daemon: DfdaemonOpts::default().args(quota),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(1, opts).await?;
    let daemon = &cluster.daemons[0];

    // Watch the disk during the run: both caches, every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watched = [daemon.data_dir().to_path_buf(), cluster.supernode.data_dir().to_path_buf()];
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for d in &watched {
                    peak.fetch_max(content_bytes(d), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // A slow reader holds f0 while everything else streams through.
    let dir = tempfile::tempdir()?;
    let fast = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(slow_read(daemon.proxy_url(), origin.url("/f0"), sha256_digest(&files[0]), fast.clone()));
    wait_task(daemon, &sha256_digest(&files[0]), Duration::from_secs(30), |v| v["status"] == "done").await?;
    for (i, f) in files.iter().enumerate().skip(1) {
        let out = dir.path().join(format!("f{i}"));
        daemon.dfget(&origin.url(&format!("/f{i}")), &out).digest(&sha256_digest(f)).run_ok().await?;
        assert_eq!(file_sha256(&out)?, sha256_hex(f), "f{i}");
        let m = daemon.metrics().await?;
        assert!(m.get("damselfly_dfdaemon_cache_bytes") <= QUOTA as f64, "daemon over quota after f{i}");
        let s = cluster.supernode.metrics().await?;
        assert!(s.get("damselfly_supernode_cache_bytes") <= QUOTA as f64, "supernode over quota after f{i}");
    }
    fast.store(true, Ordering::Relaxed);
    let read = reader.await??;
    assert_eq!(sha256_hex(&read), sha256_hex(&files[0]), "the in-use task was never evicted under its reader");

    // Evicted tasks come back on demand, correct.
    for i in [1usize, 2, 3] {
        let out = dir.path().join(format!("again{i}"));
        daemon.dfget(&origin.url(&format!("/f{i}")), &out).digest(&sha256_digest(&files[i])).run_ok().await?;
        assert_eq!(file_sha256(&out)?, sha256_hex(&files[i]));
    }

    // Larger than the quota: a clear error, no disk filled.
    let out = dir.path().join("too-big");
    let run = daemon.dfget(&origin.url("/too-big"), &out).digest(&sha256_digest(&too_big)).run().await?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("quota"), "the error names the quota: {stderr}");

    // Evictions were reported: the supernode lists the daemon only for tasks it still holds.
    let sn = &cluster.supernode;
    eventually("the supernode forgets the daemon for evicted tasks", Duration::from_secs(10), || async {
        let mut stale = Vec::new();
        for t in sn.get_json("/api/v1/tasks").await?.as_array().context("task list")? {
            let id = t["id"].as_str().unwrap_or_default();
            let listed = t["peers"].as_array().is_some_and(|p| !p.is_empty());
            let held = task_status(daemon, id).await.is_some_and(|v| v["status"] == "done");
            if listed && !held {
                stale.push(id.to_owned());
            }
        }
        ensure!(stale.is_empty(), "still scheduled for {stale:?}");
        Ok(true)
    })
    .await?;

    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    let peak = peak.load(Ordering::Relaxed);
    let m = daemon.metrics().await?;
    let s = cluster.supernode.metrics().await?;
    println!(
        "quota 32 MiB, 128 MiB of files + a 40 MiB one: peak content on disk {:.1} MiB; evictions: daemon {}, supernode {}",
        peak as f64 / MIB,
        m.get("damselfly_dfdaemon_cache_evictions_total"),
        s.get("damselfly_supernode_cache_evictions_total")
    );
    assert!(peak <= QUOTA, "content on disk peaked at {peak} bytes, over the {QUOTA}-byte quota");
    assert!(m.get("damselfly_dfdaemon_cache_evictions_total") >= 12.0);
    assert!(s.get("damselfly_supernode_cache_evictions_total") >= 12.0);
    assert_eq!(m.get("damselfly_dfdaemon_cache_quota_bytes"), QUOTA as f64);
    assert_eq!(s.get("damselfly_supernode_cache_quota_bytes"), QUOTA as f64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_restart_with_1000_tasks() -> anyhow::Result<()> {
    const N: usize = 1000;
    let origin = Origin::start()?;
    let blobs: Vec<Bytes> = (0..N).map(|i| random_bytes(4096 + i, 5000 + i as u64)).collect();
    for (i, b) in blobs.iter().enumerate() {
        origin.add(&format!("/small/{i}"), b.clone());
    }
    let sn = Supernode::start(SupernodeOpts::default()).await?;
    let mut daemon = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
    // Baseline: the same restart with an empty cache.
    daemon.stop().await?;
    let started = Instant::now();
    daemon.restart().await?;
    let empty_ready = started.elapsed();
    let proxy = daemon.proxy_url();
    let client = http_client();
    let loaded = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(blobs.iter().enumerate())
        .map(|(i, b)| {
            let body = serde_json::json!({ "url": origin.url(&format!("/small/{i}")), "digest": sha256_digest(b) });
            let (client, proxy) = (client.clone(), proxy.clone());
            async move {
                let resp = client.post(format!("{proxy}/api/v1/download")).json(&body).send().await?;
                ensure!(resp.status().is_success(), "task {i}: {}", resp.status());
                let got = resp.bytes().await?;
                ensure!(got.len() == 4096 + i, "task {i}: short body");
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        r?;
    }
    println!("1000 tasks downloaded in {:.1}s", loaded.elapsed().as_secs_f64());
    daemon.stop().await?;

    let started = Instant::now();
    daemon.restart().await?;
    let ready = started.elapsed();
    // Every task is there, finished, and served from the cache.
    for (i, b) in blobs.iter().enumerate().step_by(97) {
        let v = task_status(&daemon, &sha256_digest(b)).await.context("task known after restart")?;
        if v["status"] != "done" {
            bail!("task {i} not done after restart: {v}");
        }
    }
    eventually("the restarted daemon re-announces its cache", Duration::from_secs(30), || async {
        Ok(daemon.output().contains("cache re-announced"))
    })
    .await?;
    let log = daemon.output();
    let line = |what: &str| log.lines().find(|l| l.contains(what)).unwrap_or("").to_owned();
    println!(
        "restart of a daemon holding {N} tasks: ready (GET /healthz 200) after {:.0} ms (empty cache: {:.0} ms)\n  {}\n  {}",
        ready.as_secs_f64() * 1e3,
        empty_ready.as_secs_f64() * 1e3,
        line("cache loaded"),
        line("cache re-announced")
    );
    // The supernode schedules the restarted daemon as a seed of every task again.
    let seeded = || async {
        let tasks = sn.get_json("/api/v1/tasks").await?;
        let seeds = |t: &serde_json::Value| t["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["done"] == true));
        anyhow::Ok(tasks.as_array().map_or(0, |t| t.iter().filter(|t| seeds(t)).count()))
    };
    eventually("the supernode knows the daemon as a seed of every task", Duration::from_secs(30), || async {
        let n = seeded().await?;
        ensure!(n >= N, "a seed of {n} of {N} tasks");
        Ok(true)
    })
    .await?;
    println!("  seed of all {N} tasks again {:.0} ms after the restart began", started.elapsed().as_secs_f64() * 1e3);
    let m = daemon.metrics().await?;
    assert_eq!(received(&m), 0.0, "nothing refetched after a restart");
    daemon.kill().await?;
    drop(sn);
    Ok(())
}
