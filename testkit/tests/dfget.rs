//! dfget against real daemons and a real supernode: the embedded peer and every error case a
//! user meets (non-zero exit, one readable line). Join tokens and certificates: `trust.rs`.

use damselfly_testkit::{
    file_sha256, free_tcp_port, free_udp_port, random_bytes, sha256_digest, sha256_hex, Cluster, ClusterOpts, DfgetRun,
    Origin,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn expect_failure(run: DfgetRun, needle: &str) -> anyhow::Result<()> {
    let out = run.run().await?;
    let err = stderr(&out);
    assert!(!out.status.success(), "{run} must fail; stderr: {err}");
    assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{run}: expected {needle:?} in: {err}");
    assert!(!run.output_path().exists(), "{run}: no output file after a failure");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_errors_exit_non_zero_with_a_reason() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(100_000, 1);
    origin.add("/ok", blob.clone());
    origin.add_status("/missing", 404);
    origin.add_status("/broken", 500);
    let cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let d = &cluster.daemons[0];
    let dir = tempfile::tempdir()?;

    expect_failure(d.dfget(&origin.url("/missing"), dir.path().join("a")), "404").await?;
    expect_failure(d.dfget(&origin.url("/broken"), dir.path().join("b")), "500").await?;
    let wrong = sha256_digest(b"something else");
    expect_failure(d.dfget(&origin.url("/ok"), dir.path().join("c")).digest(&wrong), "digest").await?;
    expect_failure(d.dfget(&origin.url("/ok"), dir.path().join("c")).digest("sha256:xyz"), "digest").await?;
    let nowhere = format!("http://127.0.0.1:{}", free_tcp_port([127, 0, 0, 1].into())?);
    expect_failure(DfgetRun::new(&origin.url("/ok"), dir.path().join("d")).daemon(&nowhere), "no dfdaemon").await?;
    let dead_sn = format!("127.0.0.1:{}", free_udp_port([127, 0, 0, 1].into())?);
    expect_failure(
        DfgetRun::new(&origin.url("/ok"), dir.path().join("e")).daemon(&nowhere).supernode(&dead_sn),
        "supernode",
    )
    .await?;
    let unwritable = dir.path().join("no/such/dir/out");
    expect_failure(d.dfget(&origin.url("/ok"), &unwritable), "cannot write").await?;
    // After all that, a good download through the same daemon still works.
    let good = d.dfget(&origin.url("/ok"), dir.path().join("f"));
    good.run_ok().await?;
    assert_eq!(file_sha256(good.output_path())?, sha256_hex(&blob));
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
    let nowhere = format!("http://127.0.0.1:{}", free_tcp_port([127, 0, 0, 1].into())?);
    let run = DfgetRun::new(&origin.url("/blob"), dir.path().join("out"))
        .daemon(&nowhere)
        .supernode(&cluster.supernode.quic_addr().to_string())
        .join_token_file(&cluster.supernode.join_token_path())
        .digest(&digest);
    run.run_ok().await?;
    assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
    assert_eq!(origin.bytes_served(), blob.len() as u64);
    let up = cluster.daemons[0].metrics().await?.get("damselfly_dfdaemon_upload_bytes_total");
    assert_eq!(up, blob.len() as f64, "the embedded peer fetched from the seeding daemon");
    Ok(())
}
