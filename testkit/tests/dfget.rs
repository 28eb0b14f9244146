//! dfget against real daemons, a real supernode and a real origin: the three modes (daemon,
//! embedded peer, straight from the origin), `-O -`, resuming an interrupted download, and
//! every error case a user meets (its exit code, one readable line). Join tokens and
//! certificates: `trust.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use damselfly_testkit::{
    file_sha256, free_tcp_port, free_udp_port, random_bytes, sha256_digest, sha256_hex, Cluster, ClusterOpts, DfgetRun,
    Origin,
};

/// Exit codes, as `dfget --help` documents them.
const NOT_FOUND: i32 = 2;
const DENIED: i32 = 3;
const ORIGIN_FAILED: i32 = 5;
const DIGEST: i32 = 6;
const USAGE: i32 = 1;
const LOCAL: i32 = 7;
const NO_SWARM: i32 = 8;
const DAEMON: i32 = 9;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A daemon URL where nothing listens.
fn nowhere() -> anyhow::Result<String> {
    Ok(format!("http://127.0.0.1:{}", free_tcp_port([127, 0, 0, 1].into())?))
}

/// A URL on a port where nothing listens.
fn unreachable_origin() -> anyhow::Result<String> {
    Ok(format!("http://127.0.0.1:{}/blob", free_tcp_port([127, 0, 0, 1].into())?))
}

/// Runs `run`, expects exit `code` with `needle` in stderr and no output file.
async fn expect_failure(run: DfgetRun, code: i32, needle: &str) -> anyhow::Result<Output> {
    let out = run.run().await?;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{run}: exit code; stderr: {err}");
    assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{run}: expected {needle:?} in: {err}");
    if run.output_path() != Path::new("-") {
        assert!(!run.output_path().exists(), "{run}: no output file after a failure");
    }
    Ok(out)
}

/// The partial file of a direct download to `output`.
fn part_of(output: &Path) -> PathBuf {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    output.with_file_name(format!(".dfget-{name}.part"))
}

/// Waits until `check` holds, polling (up to 30 s).
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    damselfly_testkit::eventually(what, Duration::from_secs(30), || {
        let holds = check();
        async move { Ok(holds) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_errors_exit_with_their_code_and_a_reason() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(100_000, 1);
    origin.add("/ok", blob.clone());
    origin.add("/private", blob.clone());
    origin.require_header("/private", "Authorization", "Bearer right");
    origin.add_status("/missing", 404);
    origin.add_status("/broken", 500);
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let d = &cluster.daemons[0];
    let dir = tempfile::tempdir()?;
    let out = |name: &str| dir.path().join(name);

    expect_failure(d.dfget(&origin.url("/missing"), out("a")), NOT_FOUND, "404").await?;
    expect_failure(d.dfget(&origin.url("/private"), out("a")), DENIED, "401").await?;
    expect_failure(d.dfget(&origin.url("/broken"), out("b")), ORIGIN_FAILED, "500").await?;
    expect_failure(d.dfget(&unreachable_origin()?, out("b")), ORIGIN_FAILED, "origin").await?;
    let wrong = sha256_digest(b"something else");
    expect_failure(d.dfget(&origin.url("/ok"), out("c")).digest(&wrong), DIGEST, "digest").await?;
    expect_failure(d.dfget(&origin.url("/ok"), out("c")).digest("sha256:xyz"), USAGE, "digest").await?;
    expect_failure(d.dfget("ftp://host/file", out("c")), USAGE, "scheme").await?;
    expect_failure(d.dfget(&origin.url("/ok"), out("c")).arg("--no-such-flag"), USAGE, "--no-such-flag").await?;
    let dead_sn = format!("127.0.0.1:{}", free_udp_port([127, 0, 0, 1].into())?);
    let embedded = DfgetRun::new(&origin.url("/ok"), out("e")).daemon(&nowhere()?).cache_dir(&out("cache"));
    expect_failure(embedded.clone().supernode(&dead_sn), NO_SWARM, "join token").await?;
    let with_token = embedded.supernode(&dead_sn).join_token_file(&cluster.supernode.join_token_path());
    expect_failure(with_token, NO_SWARM, "supernode").await?;
    expect_failure(d.dfget(&origin.url("/ok"), out("no/such/dir/out")), LOCAL, "cannot write").await?;
    // After all that, a good download through the same daemon still works.
    let good = d.dfget(&origin.url("/private"), out("f")).header("Authorization: Bearer right");
    good.run_ok().await?;
    assert_eq!(file_sha256(good.output_path())?, sha256_hex(&blob));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_without_daemon_or_supernode_downloads_from_the_origin() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(3 << 20, 2);
    origin.add("/blob", blob.clone());
    origin.add("/private", blob.clone());
    origin.require_header("/private", "Authorization", "Bearer right");
    origin.add_redirect("/moved", 302, "/blob");
    origin.add_status("/missing", 404);
    origin.add_status("/broken", 500);
    let dir = tempfile::tempdir()?;
    let nowhere = nowhere()?;
    let direct = |path: &str, name: &str| DfgetRun::new(&origin.url(path), dir.path().join(name)).daemon(&nowhere);

    // Said once on stderr, no progress junk (stderr is not a terminal), redirects followed.
    let run = direct("/moved", "a").default_progress().digest(&sha256_digest(&blob));
    let out = run.run_ok().await?;
    assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("straight from the origin") && err.contains(&nowhere), "{err}");
    // Headers reach the origin, except Range.
    let run = direct("/private", "b").header("Authorization: Bearer right").header("Range: bytes=0-9").quiet();
    let out = run.run_ok().await?;
    assert!(out.stderr.is_empty(), "--quiet: {}", stderr(&out));
    assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
    let last = origin.request_log().into_iter().rev().find(|r| r.path == "/private");
    assert_eq!(last.as_ref().and_then(|r| r.header("range")), None, "Range from -H is not forwarded");

    expect_failure(direct("/missing", "c"), NOT_FOUND, "404").await?;
    expect_failure(direct("/private", "c"), DENIED, "401").await?;
    expect_failure(direct("/broken", "c"), ORIGIN_FAILED, "500").await?;
    let unreachable = DfgetRun::new(&unreachable_origin()?, dir.path().join("c")).daemon(&nowhere);
    expect_failure(unreachable, ORIGIN_FAILED, "cannot reach the origin").await?;
    let wrong = sha256_digest(b"something else");
    expect_failure(direct("/blob", "c").digest(&wrong), DIGEST, "digest mismatch").await?;
    assert!(!part_of(&dir.path().join("c")).exists(), "no partial file left after a mismatch or a refusal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_writes_to_stdout_in_every_mode() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(5 << 20, 3);
    origin.add("/blob", blob.clone());
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let d = &cluster.daemons[0];
    let digest = sha256_digest(&blob);
    let wrong = sha256_digest(b"something else");
    let nowhere = nowhere()?;
    let dir = tempfile::tempdir()?;

    // Through a daemon: the bytes on stdout, nothing on stderr.
    let out = d.dfget(&origin.url("/blob"), "-").default_progress().digest(&digest).run_ok().await?;
    assert!(out.stdout == blob, "stdout carries the content ({} of {} bytes)", out.stdout.len(), blob.len());
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    // Straight from the origin.
    let direct = || DfgetRun::new(&origin.url("/blob"), "-").daemon(&nowhere);
    let out = direct().default_progress().run_ok().await?;
    assert!(out.stdout == blob);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // Through an embedded peer.
    let embedded = direct()
        .supernode(&cluster.supernode.quic_addr().to_string())
        .join_token_file(&cluster.supernode.join_token_path())
        .cache_dir(&dir.path().join("cache"))
        .digest(&digest)
        .quiet();
    let out = embedded.run_ok().await?;
    assert!(out.stdout == blob);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    // A mismatch: exit code 6, and the reader sees a short stream.
    for run in [d.dfget(&origin.url("/blob"), "-").digest(&wrong), direct().digest(&wrong)] {
        let out = expect_failure(run, DIGEST, "digest").await?;
        assert!(out.stdout.len() < blob.len(), "the stream stops short");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_direct_download_resumes_where_it_stopped() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(8 << 20, 4);
    let len = blob.len() as u64;
    origin.add_throttled("/blob", blob.clone(), 2 << 20);
    origin.set_etag("/blob", "\"v1\"");
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out");
    let run = DfgetRun::new(&origin.url("/blob"), &output).daemon(&nowhere()?).digest(&sha256_digest(&blob));

    let mut child = run.spawn()?;
    let part = part_of(&output);
    wait_until("half the file is on disk", || std::fs::metadata(&part).is_ok_and(|m| m.len() >= 3 << 20)).await?;
    child.kill().await?;
    let kept = std::fs::metadata(&part)?.len();
    assert!(kept < len && !output.exists(), "killed halfway: {kept} of {len} bytes kept, no output yet");

    // The rerun asks for the rest under the same validator and gets only that.
    origin.add("/blob", blob.clone());
    let before = origin.bytes_served_for("/blob");
    let out = run.run_ok().await?;
    assert_eq!(file_sha256(&output)?, sha256_hex(&blob));
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    let last = origin.request_log().into_iter().rev().find(|r| r.path == "/blob").expect("a request");
    assert_eq!(last.header("range"), Some(format!("bytes={kept}-").as_str()));
    assert_eq!(last.header("if-range"), Some("\"v1\""));
    assert_eq!(origin.bytes_served_for("/blob") - before, len - kept, "only the rest was fetched");
    let left: Vec<_> = std::fs::read_dir(dir.path())?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    assert_eq!(left, vec![std::ffi::OsString::from("out")], "no partial file or record left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_direct_download_starts_over_when_the_origin_changed() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let old = random_bytes(6 << 20, 5);
    origin.add_throttled("/blob", old, 2 << 20);
    origin.set_etag("/blob", "\"v1\"");
    let dir = tempfile::tempdir()?;
    let output = dir.path().join("out");
    let run = DfgetRun::new(&origin.url("/blob"), &output).daemon(&nowhere()?);

    let mut child = run.spawn()?;
    let part = part_of(&output);
    wait_until("part of the file is on disk", || std::fs::metadata(&part).is_ok_and(|m| m.len() >= 2 << 20)).await?;
    child.kill().await?;

    let new = random_bytes(5 << 20, 6);
    origin.add("/blob", new.clone());
    origin.set_etag("/blob", "\"v2\"");
    let before = origin.bytes_served_for("/blob");
    let out = run.run_ok().await?;
    assert_eq!(file_sha256(&output)?, sha256_hex(&new), "the new content, not a splice of both");
    assert!(stderr(&out).contains("starting over"), "{}", stderr(&out));
    let last = origin.request_log().into_iter().rev().find(|r| r.path == "/blob").expect("a request");
    assert_eq!(last.header("if-range"), Some("\"v1\""), "the rerun asked under the old validator");
    assert_eq!(origin.bytes_served_for("/blob") - before, new.len() as u64);
    assert!(!part.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_without_a_daemon_runs_an_embedded_peer() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(4 << 20, 5);
    origin.add("/blob", blob.clone());
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    // One daemon seeds it first, so the embedded peer gets it from a peer.
    let digest = sha256_digest(&blob);
    cluster.daemons[0].dfget(&origin.url("/blob"), dir.path().join("seed")).digest(&digest).run_ok().await?;
    let run = DfgetRun::new(&origin.url("/blob"), dir.path().join("out"))
        .daemon(&nowhere()?)
        .supernode(&cluster.supernode.quic_addr().to_string())
        .join_token_file(&cluster.supernode.join_token_path())
        .cache_dir(&dir.path().join("cache"))
        .digest(&digest);
    run.run_ok().await?;
    assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
    assert_eq!(origin.bytes_served(), blob.len() as u64);
    let up = cluster.daemons[0].metrics().await?.get("damselfly_dfdaemon_upload_bytes_total");
    assert_eq!(up, blob.len() as f64, "the embedded peer fetched from the seeding daemon");

    // The embedded peer's cache has a quota: a file beyond it fails and says which flag to raise.
    let small = DfgetRun::new(&origin.url("/blob"), dir.path().join("small"))
        .daemon(&nowhere()?)
        .supernode(&cluster.supernode.quic_addr().to_string())
        .join_token_file(&cluster.supernode.join_token_path())
        .cache_dir(&dir.path().join("small-cache"))
        .arg("--cache-quota")
        .arg("1MiB");
    expect_failure(small, DAEMON, "--cache-quota").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_embedded_download_fetches_only_the_missing_pieces() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(16 << 20, 7);
    let len = blob.len() as u64;
    origin.add_throttled("/blob", blob.clone(), 4 << 20);
    let cluster = Cluster::start(0, ClusterOpts::default()).await?;
    let sn = &cluster.supernode;
    let dir = tempfile::tempdir()?;
    let nowhere = nowhere()?;
    let run = |name: &str| {
        DfgetRun::new(&origin.url("/blob"), dir.path().join(name))
            .daemon(&nowhere)
            .supernode(&sn.quic_addr().to_string())
            .join_token_file(&sn.join_token_path())
            .cache_dir(&dir.path().join("cache"))
            .digest(&sha256_digest(&blob))
    };
    let uploaded =
        || async { Ok::<_, anyhow::Error>(sn.metrics().await?.get("damselfly_supernode_upload_bytes_total") as u64) };

    let mut child = run("out").spawn()?;
    damselfly_testkit::eventually("the embedded peer gets 8 MiB of pieces", Duration::from_secs(30), || async {
        Ok(uploaded().await? >= 8 << 20)
    })
    .await?;
    child.kill().await?;
    let first = uploaded().await?;
    assert!(first < len, "killed halfway ({first} of {len} bytes)");
    wait_until("the supernode has the whole file", || origin.bytes_served_for("/blob") == len).await?;

    run("out").run_ok().await?;
    assert_eq!(file_sha256(dir.path().join("out"))?, sha256_hex(&blob));
    let second = uploaded().await? - first;
    // Pieces in flight when dfget was killed (a window of 12 of 256 KiB) or not yet recorded
    // may be fetched again; nothing else is.
    let slack = 4 << 20;
    assert!(first + second <= len + slack, "the rerun fetched {second} bytes after {first} of {len}");
    assert!(second <= len - slack, "the rerun fetched {second} of {len} bytes: it did not resume");
    assert_eq!(origin.bytes_served_for("/blob"), len, "the origin served the file once");

    // A finished download is in the cache: another run fetches nothing.
    run("again").run_ok().await?;
    assert_eq!(file_sha256(dir.path().join("again"))?, sha256_hex(&blob));
    assert_eq!(uploaded().await?, first + second, "served from the embedded peer's cache");
    Ok(())
}
