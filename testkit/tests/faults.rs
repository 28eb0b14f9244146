//! Faults of the supernode, end to end with real processes: a daemon that starts while its
//! supernode is down serves through the origin and joins once it answers; daemons re-announce
//! what they hold on every new supernode connection; a supernode killed in the middle of pulls
//! costs no pull; several supernodes share the tasks by rendezvous hashing and take over each
//! other's tasks. Timings are printed (the fault suite in benches/ measures them on real
//! namespaces); the assertions are about outcomes only.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use damselfly_testkit::{
    eventually, file_sha256, random_bytes, run_all, sha256_digest, sha256_hex, Dfdaemon, DfdaemonOpts, DfgetRun,
    Origin, Supernode, SupernodeOpts,
};
use dfdaemon::supernodes::rendezvous_order;

const MIB: usize = 1 << 20;

/// The peers the supernode lists for task `id` (`GET /api/v1/tasks`).
async fn peers_of(sn: &Supernode, id: &str) -> anyhow::Result<usize> {
    let tasks = sn.get_json("/api/v1/tasks").await?;
    let task = tasks.as_array().and_then(|t| t.iter().find(|t| t["id"] == id));
    Ok(task.and_then(|t| t["peers"].as_array()).map_or(0, Vec::len))
}

fn task_id(blob: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(blob))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_starts_without_its_supernode_and_joins_and_re_announces_when_it_answers() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blobs: Vec<_> = (0..2u64).map(|i| random_bytes(3 * MIB, 70 + i)).collect();
    for (i, b) in blobs.iter().enumerate() {
        origin.add(&format!("/b{i}"), b.clone());
    }
    let dir = tempfile::tempdir()?;
    let mut sn = Supernode::start(SupernodeOpts::default()).await?;
    sn.stop().await?;

    // Down at start: the daemon starts anyway (no enrollment yet) and serves from the origin.
    let mut d1 = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
    let started = Instant::now();
    let pull = |d: &Dfdaemon, i: usize, name: &str| {
        d.dfget(&origin.url(&format!("/b{i}")), dir.path().join(name)).digest(&sha256_digest(&blobs[i]))
    };
    pull(&d1, 0, "d1-b0").run_ok().await?;
    println!("pull with the supernode down since before the daemon started: {:?}", started.elapsed());
    ensure!(d1.is_running(), "the daemon keeps running");
    assert_eq!(origin.bytes_served_for("/b0"), blobs[0].len() as u64, "fetched once, from the origin");
    assert!(!d1.data_dir().join("tls/peer.crt").exists(), "not enrolled while the supernode is down");

    // The supernode comes up: the daemon enrolls and announces what it fetched meanwhile.
    sn.restart().await?;
    let id0 = task_id(&blobs[0]);
    eventually("enrolled and re-announced", Duration::from_secs(30), || async { Ok(peers_of(&sn, &id0).await? == 1) })
        .await?;
    assert_eq!(sn.metrics().await?.get("damselfly_supernode_enrollments_total"), 1.0);

    // A second daemon gets that blob from the first one.
    let mut d2 = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
    pull(&d2, 0, "d2-b0").run_ok().await?;
    let from_peer = d2.metrics().await?.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")]);
    assert!(from_peer > 0.0, "d2 fetched pieces of b0 from d1");

    // A crash and restart of the supernode: both daemons announce b0 again on their new
    // connections, so it schedules them as parents without any download asking.
    sn.kill().await?;
    sn.restart().await?;
    eventually("re-announced after a restart", Duration::from_secs(30), || async {
        Ok(peers_of(&sn, &id0).await? == 2)
    })
    .await?;
    pull(&d1, 1, "d1-b1").run_ok().await?;
    assert_eq!(origin.bytes_served_for("/b1"), blobs[1].len() as u64);
    ensure!(d1.is_running() && d2.is_running());
    Ok(())
}

/// Three supernodes of one region (shared CA and token) and `n` daemons given all three.
async fn region(n: usize) -> anyhow::Result<(Vec<Supernode>, Vec<Dfdaemon>)> {
    let first = Supernode::start(SupernodeOpts::default()).await?;
    let ca = first.ca_cert_path().to_string_lossy().into_owned();
    let key = first.data_dir().join("tls/ca.key").to_string_lossy().into_owned();
    let token = first.join_token_path().to_string_lossy().into_owned();
    let shared = ["--ca-cert", &ca, "--ca-key", &key, "--join-token-file", &token];
    let mut sns = vec![first];
    for _ in 0..2 {
        sns.push(Supernode::start(SupernodeOpts::default().args(shared)).await?);
    }
    let opts = DfdaemonOpts {
        supernodes: sns.iter().map(Supernode::quic_addr).collect(),
        ..DfdaemonOpts::for_supernode(&sns[0])
    };
    let mut daemons = Vec::new();
    for _ in 0..n {
        daemons.push(Dfdaemon::start(opts.clone()).await?);
    }
    Ok((sns, daemons))
}

/// Every daemon pulls every blob `paths[i]` at once; checks each output against its digest.
async fn pull_all(
    origin: &Origin,
    daemons: &[Dfdaemon],
    blobs: &[(String, bytes::Bytes)],
    out: &Path,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    let mut expect = Vec::new();
    for (d, daemon) in daemons.iter().enumerate() {
        for (path, blob) in blobs {
            let file = out.join(format!("d{d}{}", path.replace('/', "-")));
            runs.push(
                DfgetRun::new(&origin.url(path), &file)
                    .daemon(&daemon.proxy_url())
                    .digest(&sha256_digest(blob))
                    .quiet(),
            );
            expect.push((file, sha256_hex(blob)));
        }
    }
    run_all(&runs).await?;
    for (file, sha) in expect {
        ensure!(file_sha256(&file)? == sha, "{} has the wrong content", file.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_supernodes_share_the_blobs_and_take_over_from_one_killed_mid_pull() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let (mut sns, daemons) = region(6).await?;
    let dir = tempfile::tempdir()?;

    // Wave 1: 9 blobs, 3 owned by each supernode, each fetched from the origin once.
    let names: Vec<String> = sns.iter().map(|s| s.quic_addr().to_string()).collect();
    let wave1 = owned_blobs(&names, "/w1", 2 * MIB, 100, &[3, 3, 3]);
    for (path, blob) in &wave1 {
        origin.add(path, blob.clone());
    }
    let started = Instant::now();
    pull_all(&origin, &daemons, &wave1, dir.path()).await?;
    let steady = started.elapsed();
    for (path, blob) in &wave1 {
        assert_eq!(origin.bytes_served_for(path), blob.len() as u64, "{path} left the origin once");
    }
    let mut per_sn = Vec::new();
    for sn in &sns {
        per_sn.push(sn.metrics().await?.get("damselfly_supernode_origin_bytes_total"));
    }
    println!("wave 1: 6 daemons x 9 blobs of 2 MiB in {steady:?}; origin bytes per supernode {per_sn:?}");
    // Each supernode fetched exactly the blobs rendezvous placement gives it, and no blob twice.
    assert_eq!(per_sn, vec![(3 * 2 * MIB) as f64; 3], "origin bytes per supernode");

    // Reference for wave 2: the same kind of blobs, no fault.
    let reference: Vec<(String, bytes::Bytes)> =
        (0..6u64).map(|i| (format!("/ref/{i}"), random_bytes(4 * MIB, 300 + i))).collect();
    for (path, blob) in &reference {
        origin.add_throttled(path, blob.clone(), 4_000_000);
    }
    let started = Instant::now();
    pull_all(&origin, &daemons, &reference, dir.path()).await?;
    let without_fault = started.elapsed();

    // Wave 2: slower blobs, 2 owned by each supernode; the second one is killed once the pulls
    // are under way, so its 2 blobs move to the others.
    let wave2 = owned_blobs(&names, "/w2", 4 * MIB, 200, &[2, 2, 2]);
    for (path, blob) in &wave2 {
        origin.add_throttled(path, blob.clone(), 4_000_000);
    }
    let before = origin.bytes_served();
    let started = Instant::now();
    let pulls = pull_all(&origin, &daemons, &wave2, dir.path());
    let killer = async {
        let under_way = || std::future::ready(Ok(origin.bytes_served() > before));
        eventually("the wave 2 pulls are under way", Duration::from_secs(30), under_way).await?;
        sns[1].kill().await
    };
    let (pulled, killed) = tokio::join!(pulls, killer);
    killed?;
    pulled.context("every pull completes with the right content")?;
    let extra = origin.bytes_served() - before - (6 * 4 * MIB) as u64;
    println!(
        "wave 2: 6 daemons x 6 blobs of 4 MiB with a supernode killed once they were under way: {:?} (the same without the kill: \
         {without_fault:?}); origin bytes beyond one copy of each blob: {:.1} MiB",
        started.elapsed(),
        extra as f64 / MIB as f64
    );
    for d in &daemons {
        let m = d.metrics().await?;
        println!(
            "  daemon {}: from peers {:.1} MiB, supernodes {:.1} MiB, origin {:.1} MiB",
            d.ip(),
            m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")]) / MIB as f64,
            m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "supernode")]) / MIB as f64,
            m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "origin")]) / MIB as f64,
        );
    }
    Ok(())
}

/// Random blobs of `size` (seeds from `seed`), `per_owner[i]` of them owned by supernode
/// `names[i]` under rendezvous placement, at `{prefix}/{seed}`. Supernodes listen on ports that
/// differ from run to run, and so does the placement: blobs picked for this run's names make
/// "each supernode owns some" hold every time (with 9 blobs picked blindly, one of 3 owns none
/// in ~8 % of runs).
fn owned_blobs(
    names: &[String],
    prefix: &str,
    size: usize,
    seed: u64,
    per_owner: &[usize],
) -> Vec<(String, bytes::Bytes)> {
    assert_eq!(names.len(), per_owner.len(), "one count per supernode");
    let mut left = per_owner.to_vec();
    let mut blobs = Vec::new();
    // Each seed lands on a given supernode with probability 1/n: 64 seeds are plenty, and the
    // waves' seed ranges (100.., 200.., 300..) stay apart.
    for seed in seed..seed + 64 {
        if left.iter().all(|&n| n == 0) {
            return blobs;
        }
        let blob = random_bytes(size, seed);
        let owner = rendezvous_order(&sha256_digest(&blob), names.iter().map(String::as_str))[0];
        if left[owner] > 0 {
            left[owner] -= 1;
            blobs.push((format!("{prefix}/{seed}"), blob));
        }
    }
    assert!(left.iter().all(|&n| n == 0), "64 seeds from {seed} did not give {per_owner:?}");
    blobs
}

/// Mounts a tmpfs of `size` at `dir`; `None` when this host cannot (not root): the test is
/// then skipped with a note.
fn small_tmpfs(dir: &Path, size: &str) -> Option<TmpfsMount> {
    std::fs::create_dir_all(dir).ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| TmpfsMount(dir.to_path_buf()))
}

/// Unmounts on drop.
struct TmpfsMount(std::path::PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_download_locally_and_blames_no_parent() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let small = random_bytes(2 * MIB, 80);
    let big = random_bytes(16 * MIB, 81);
    origin.add("/small", small.clone());
    origin.add("/big", big.clone());
    let sn = Supernode::start(SupernodeOpts::default()).await?;
    let mut seed = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
    let dir = tempfile::tempdir()?;
    seed.dfget(&origin.url("/big"), dir.path().join("seed-big")).digest(&sha256_digest(&big)).run_ok().await?;

    // A daemon whose data dir is a 12 MiB tmpfs (RocksDB takes about 4 MiB of it).
    let mnt = dir.path().join("tmpfs");
    let Some(_mount) = small_tmpfs(&mnt, "12m") else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let opts = DfdaemonOpts { data_dir: Some(mnt.join("d")), ..DfdaemonOpts::for_supernode(&sn) };
    let mut full = Dfdaemon::start(opts).await?;
    full.dfget(&origin.url("/small"), dir.path().join("small")).digest(&sha256_digest(&small)).run_ok().await?;
    let out = dir.path().join("big");
    let run = full.dfget(&origin.url("/big"), &out).digest(&sha256_digest(&big)).run().await?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("dfget on a full disk: {:?}: {}", run.status.code(), stderr.trim());
    ensure!(!run.status.success(), "the download fails");
    ensure!(
        stderr.contains("No space left on device") && stderr.contains(&mnt.to_string_lossy().into_owned()),
        "the error names the cause and the path: {stderr}"
    );
    ensure!(!out.exists(), "nothing half-written is left as the output");
    let reports = sn.metrics().await?.get("damselfly_supernode_piece_failure_reports_total");
    assert_eq!(reports, 0.0, "no parent was blamed for this host's disk");
    // The daemon keeps serving what it holds.
    full.dfget(&origin.url("/small"), dir.path().join("small-again")).digest(&sha256_digest(&small)).run_ok().await?;
    ensure!(full.is_running() && seed.is_running());
    Ok(())
}
