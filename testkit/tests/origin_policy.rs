//! The supernode's origin policy (no SSRF) and header allow-list, against real processes: a
//! real supernode and dfdaemon, the real `dfget`, test origins that log every request.
//!
//! Each refusal must reach the user at once as a clear error, and the refused origin must see
//! no request at all: neither from the supernode nor from the daemon's origin fallback.

use std::time::Duration;

use damselfly_testkit::{
    file_sha256, http_client, loopback_ip, random_bytes, sha256_hex, Cluster, ClusterOpts, DfdaemonOpts, DfgetRun,
    Origin, Supernode, SupernodeOpts,
};

/// A refused download must fail well before this.
const REFUSAL_LIMIT: Duration = Duration::from_secs(20);

/// Runs `run`, expecting a failure whose stderr contains every one of `needles`.
async fn expect_refused(run: DfgetRun, needles: &[&str]) -> anyhow::Result<()> {
    let out = tokio::time::timeout(REFUSAL_LIMIT, run.run())
        .await
        .map_err(|_| anyhow::anyhow!("{run} did not end within {REFUSAL_LIMIT:?}"))??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{run} must fail; stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{run}: expected {needle:?} in: {err}");
    }
    assert!(!run.output_path().exists(), "{run}: no output file after a refusal");
    Ok(())
}

/// A supernode with its default origin policy (no `--allow-origin`) and one daemon.
async fn default_policy_cluster() -> anyhow::Result<Cluster> {
    let supernode = SupernodeOpts { default_origin_policy: true, ..SupernodeOpts::default() };
    Cluster::start(1, ClusterOpts { supernode, ..ClusterOpts::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_policy_refuses_loopback_metadata_and_names_that_resolve_to_them() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    origin.add("/x", random_bytes(100_000, 1));
    let cluster = default_policy_cluster().await?;
    let d = &cluster.daemons[0];
    let dir = tempfile::tempdir()?;
    let port = origin.addr().port();

    let literal = d.dfget(&origin.url("/x"), dir.path().join("a"));
    let loopback = format!("origin 127.0.0.1:{port} is not allowed: 127.0.0.1 is a loopback address");
    expect_refused(literal, &[&loopback, "name it with --allow-origin"]).await?;
    // A name that resolves to loopback: refused by the supernode's resolver, mid-fetch.
    let name = d.dfget(&format!("http://localhost:{port}/x"), dir.path().join("b"));
    expect_refused(name, &["resolves to loopback address 127.0.0.1", "--allow-origin"]).await?;
    let metadata = d.dfget("http://169.254.169.254/latest/meta-data", dir.path().join("c"));
    expect_refused(metadata, &["169.254.169.254 is a cloud metadata address"]).await?;
    let google = d.dfget("http://metadata.google.internal/computeMetadata/v1/", dir.path().join("d"));
    expect_refused(google, &["names a cloud metadata service"]).await?;
    let mapped = d.dfget(&format!("http://[::ffff:127.0.0.1]:{port}/x"), dir.path().join("e"));
    expect_refused(mapped, &["loopback address"]).await?;

    assert_eq!(origin.request_log().len(), 0, "the origin saw requests: {:?}", origin.request_log());
    let sn = cluster.supernode.metrics().await?;
    assert_eq!(sn.get("damselfly_supernode_origin_bytes_total"), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn default_policy_refuses_a_loopback_preheat_with_403() -> anyhow::Result<()> {
    let registry = Origin::start()?;
    let sn = Supernode::start(SupernodeOpts {
        default_origin_policy: true,
        ..SupernodeOpts::default().args(["--insecure-registry", &registry.addr().to_string()])
    })
    .await?;
    let mut req = http_client()
        .post(format!("{}/api/v1/preheat", sn.http_url()))
        .json(&serde_json::json!({ "image": format!("{}/team/app:v1", registry.addr()) }))
        .timeout(REFUSAL_LIMIT);
    // The API token, where the supernode writes one.
    if let Ok(token) = std::fs::read_to_string(sn.data_dir().join("api-token")) {
        req = req.bearer_auth(token.trim());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("127.0.0.1 is a loopback address") && body.contains("--allow-origin"), "{body}");
    assert_eq!(registry.request_log().len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_hops_are_checked_and_only_allowed_headers_reach_the_origin() -> anyhow::Result<()> {
    let blob = random_bytes(300_000, 2);
    // `named` and `other_port` listen on 127.0.0.1, which the testkit names; `unnamed` on
    // another loopback address, which nobody named.
    let named = Origin::start()?;
    let other_port = Origin::start()?;
    let unnamed = Origin::start_on(loopback_ip())?;
    unnamed.add("/blob", blob.clone());
    other_port.add("/blob", blob.clone());
    named.add_redirect("/to-unnamed", 302, &unnamed.url("/blob"));
    named.add_redirect("/to-other-port", 307, &other_port.url("/blob"));
    named.add("/direct", blob.clone());
    let extra = ["--forward-header", "PRIVATE-TOKEN"];
    let opts = ClusterOpts {
        supernode: SupernodeOpts::default().args(extra),
        daemon: DfdaemonOpts::default().args(extra),
        ..ClusterOpts::default()
    };
    let cluster = Cluster::start(1, opts).await?;
    let d = &cluster.daemons[0];
    let dir = tempfile::tempdir()?;

    // A redirect to an origin that is not named: refused, it never sees a request, and the
    // daemon does not fetch around the refusal (the named origin saw one request: the
    // supernode's).
    let run = d.dfget(&named.url("/to-unnamed"), dir.path().join("a"));
    let expected = format!("origin {} (a redirect from {}) is not allowed", unnamed.addr(), named.addr());
    expect_refused(run, &[&expected, "name it with --allow-origin"]).await?;
    assert_eq!(unnamed.request_log().len(), 0);
    assert_eq!(named.gets("/to-unnamed"), 0, "refused at the authorization check: nothing fetched");

    // Client headers: only the allow-listed ones reach the origin; Range never does (the
    // download is the whole blob).
    let with_headers = |run: DfgetRun| {
        run.header("Authorization: Bearer s3cret")
            .header("PRIVATE-TOKEN: glpat")
            .header("Range: bytes=0-9")
            .header("X-Forwarded-For: 10.9.9.9")
            .header("X-Custom: 1")
    };
    let direct = with_headers(d.dfget(&named.url("/direct"), dir.path().join("b")));
    direct.run_ok().await?;
    assert_eq!(file_sha256(direct.output_path())?, sha256_hex(&blob));
    let log = named.request_log();
    let record = log.iter().find(|r| r.path == "/direct").expect("a request for /direct");
    assert_eq!(record.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(record.header("private-token"), Some("glpat"));
    for dropped in ["range", "x-forwarded-for", "x-custom"] {
        assert_eq!(record.header(dropped), None, "{dropped} reached the origin: {record:?}");
    }

    // A redirect to another origin: followed, but the credentials stay with the first one.
    let moved = with_headers(d.dfget(&named.url("/to-other-port"), dir.path().join("c")));
    moved.run_ok().await?;
    assert_eq!(file_sha256(moved.output_path())?, sha256_hex(&blob));
    let log = named.request_log();
    let first = log.iter().find(|r| r.path == "/to-other-port").expect("a request for /to-other-port");
    assert_eq!(first.header("private-token"), Some("glpat"));
    // The hop sees the authorization check (HEAD) and the fetch (GET), neither with credentials.
    let hop = other_port.request_log();
    assert_eq!(hop.iter().filter(|r| r.method == "GET").count(), 1, "{hop:?}");
    for record in &hop {
        for credential in ["authorization", "private-token", "cookie", "referer"] {
            assert_eq!(record.header(credential), None, "{credential} followed the redirect: {record:?}");
        }
    }
    Ok(())
}
