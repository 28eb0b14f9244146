//! The swarm end to end: a real supernode, real dfdaemon processes on their own loopback
//! addresses, real QUIC between them, and an origin that counts every byte it serves.

use std::time::Instant;

use anyhow::Context;
use damselfly_testkit::{
    ensure_success, file_sha256, random_bytes, run_all, sha256_digest, sha256_hex, Cluster, ClusterOpts, Metrics,
    Origin,
};

/// The piece size of every file under 64 MiB.
const PIECE: usize = damselfly_types::piece::MIN_PIECE_SIZE as usize;

/// Bytes the daemons received, by source, summed over all daemons.
#[derive(Debug, Default, Clone, Copy)]
struct Split {
    peer: f64,
    supernode: f64,
    origin: f64,
}

impl Split {
    fn of(metrics: &[Metrics]) -> Self {
        let by = |s: &str| -> f64 {
            metrics.iter().map(|m| m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", s)])).sum()
        };
        Split { peer: by("peer"), supernode: by("supernode"), origin: by("origin") }
    }

    fn minus(self, before: Split) -> Split {
        Split {
            peer: self.peer - before.peer,
            supernode: self.supernode - before.supernode,
            origin: self.origin - before.origin,
        }
    }

    fn total(self) -> f64 {
        self.peer + self.supernode + self.origin
    }
}

/// Every daemon of `cluster` downloads `path` at the same moment; checks every output and the
/// origin's count; returns the byte split of this round.
async fn round(cluster: &Cluster, origin: &Origin, path: &str, blob: &[u8]) -> anyhow::Result<Split> {
    let before = Split::of(&cluster.daemon_metrics().await?);
    let origin_before = origin.bytes_served();
    let dir = tempfile::tempdir()?;
    let runs: Vec<_> = cluster
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&origin.url(path), dir.path().join(format!("out{i}"))).digest(&sha256_digest(blob)))
        .collect();
    for (run, output) in runs.iter().zip(run_all(&runs).await?) {
        ensure_success(&output, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, sha256_hex(blob), "{run}");
    }
    assert_eq!(origin.bytes_served() - origin_before, blob.len() as u64, "origin must serve {path} exactly once");
    assert_eq!(origin.gets(path), 1, "one origin GET for {path}");
    assert!(origin.heads(path) <= 1, "at most one authorization check for {path}");
    Ok(Split::of(&cluster.daemon_metrics().await?).minus(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_daemons_fetch_every_interesting_size_once_from_the_origin() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let cluster = Cluster::start(8, ClusterOpts::default()).await?;
    for (i, size) in [0, 1, PIECE - 1, PIECE, PIECE + 1, 5 * PIECE + 123].into_iter().enumerate() {
        let blob = random_bytes(size, i as u64);
        let path = format!("/size-{size}");
        origin.add(&path, blob.clone());
        let split = round(&cluster, &origin, &path, &blob).await.with_context(|| format!("size {size}"))?;
        assert_eq!(split.total(), 8.0 * size as f64, "size {size}: every daemon received the file once: {split:?}");
        assert_eq!(split.origin, 0.0, "size {size}: no daemon went to the origin: {split:?}");
        if size > 0 {
            assert!(split.peer > split.total() / 2.0, "size {size}: most bytes must come from peers: {split:?}");
        }
    }
    let sn = cluster.supernode.metrics().await?;
    let total: usize = [0, 1, PIECE - 1, PIECE, PIECE + 1, 5 * PIECE + 123].iter().sum();
    assert_eq!(sn.get("damselfly_supernode_origin_bytes_total"), total as f64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_eight_daemons_share_256_mib() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(256 << 20, 42);
    origin.add("/big", blob.clone());
    let cluster = Cluster::start(8, ClusterOpts::default()).await?;
    let sn_before = cluster.supernode.metrics().await?;
    let started = Instant::now();
    let split = round(&cluster, &origin, "/big", &blob).await?;
    let wall = started.elapsed();
    let sn = cluster.supernode.metrics().await?;
    let sn_upload =
        sn.get("damselfly_supernode_upload_bytes_total") - sn_before.get("damselfly_supernode_upload_bytes_total");
    let mib = |b: f64| b / f64::from(1 << 20);
    println!(
        "256 MiB x 8 daemons: wall {:.2}s; origin {:.0} MiB; supernode upload {:.0} MiB; daemons received {:.0} MiB from peers, {:.0} MiB from the supernode ({:.1}% peer)",
        wall.as_secs_f64(),
        mib(origin.bytes_served() as f64),
        mib(sn_upload),
        mib(split.peer),
        mib(split.supernode),
        100.0 * split.peer / split.total()
    );
    assert!(split.peer > split.total() / 2.0, "most bytes must come from peers: {split:?}");
    assert_eq!(split.supernode, sn_upload, "daemons' supernode bytes match the supernode's upload count");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_serving_corrupt_pieces_is_reported_and_downloads_still_complete() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(24 * PIECE, 7);
    origin.add("/blob", blob.clone());
    let cluster = Cluster::start(4, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let digest = sha256_digest(&blob);
    // Daemon 0 downloads the file and becomes its seed; then its disk goes bad.
    cluster.daemons[0].dfget(&origin.url("/blob"), dir.path().join("seed")).digest(&digest).run_ok().await?;
    let task_file = cluster.daemons[0].data_dir().join("tasks").join(format!("{}.data", digest.replace(':', "_")));
    let mut bytes = std::fs::read(&task_file).with_context(|| format!("read {}", task_file.display()))?;
    for piece in bytes.chunks_mut(PIECE) {
        piece[0] ^= 0xff;
    }
    // Silent corruption (bit rot, a bad controller) leaves the modification time alone; a write
    // through the file system would make the daemon hash every piece again and never serve them.
    let mtime = std::fs::metadata(&task_file)?.modified()?;
    std::fs::write(&task_file, &bytes)?;
    std::fs::OpenOptions::new().write(true).open(&task_file)?.set_modified(mtime)?;
    let bad_id = std::fs::read_to_string(cluster.daemons[0].data_dir().join("tls/peer_id"))?;

    let runs: Vec<_> = cluster.daemons[1..]
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&origin.url("/blob"), dir.path().join(format!("out{i}"))).digest(&digest))
        .collect();
    for (run, output) in runs.iter().zip(run_all(&runs).await?) {
        ensure_success(&output, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
    }
    let bad_pieces: f64 =
        cluster.daemon_metrics().await?.iter().map(|m| m.get("damselfly_dfdaemon_bad_pieces_total")).sum();
    assert!(bad_pieces >= 1.0, "the corrupt pieces were detected");
    let peers = cluster.supernode.get_json("/api/v1/peers").await?;
    let reported: Vec<&str> =
        peers["bad"].as_array().context("bad list")?.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(reported, vec![bad_id.trim()], "the corrupting daemon is reported: {peers}");
    assert_eq!(origin.gets("/blob"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_parent_mid_download_does_not_stop_the_others() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(48 * PIECE, 9);
    // A slow origin keeps the swarm busy long enough to kill a parent in the middle.
    origin.add_throttled("/slow", blob.clone(), 16 << 20);
    let mut cluster = Cluster::start(6, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let digest = sha256_digest(&blob);
    let runs: Vec<_> = cluster
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| d.dfget(&origin.url("/slow"), dir.path().join(format!("out{i}"))).digest(&digest))
        .collect();
    let children: Vec<_> = runs.iter().map(|r| r.spawn()).collect::<anyhow::Result<_>>()?;
    // Wait until some daemon serves pieces to others, then kill -9 it mid-transfer.
    let victim = damselfly_testkit::eventually_some("a daemon uploads", std::time::Duration::from_secs(60), || async {
        let metrics = cluster.daemon_metrics().await?;
        Ok(metrics.iter().position(|m| m.get("damselfly_dfdaemon_upload_bytes_total") > 0.0))
    })
    .await?;
    cluster.daemons[victim].kill().await?;
    for (i, (child, run)) in children.into_iter().zip(&runs).enumerate() {
        let output = child.wait().await?;
        if i == victim {
            continue;
        }
        ensure_success(&output, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob), "{run}");
    }
    assert_eq!(origin.gets("/slow"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_task_is_served_from_the_local_cache() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(3 * PIECE + 5, 3);
    origin.add("/again", blob.clone());
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let d = &cluster.daemons[0];
    d.dfget(&origin.url("/again"), dir.path().join("a")).run_ok().await?;
    d.dfget(&origin.url("/again"), dir.path().join("b")).run_ok().await?;
    assert_eq!(file_sha256(dir.path().join("b"))?, sha256_hex(&blob));
    assert_eq!(origin.bytes_served(), blob.len() as u64);
    let received = Split::of(&cluster.daemon_metrics().await?).total();
    assert_eq!(received, blob.len() as f64, "the second download moved no bytes");
    Ok(())
}
