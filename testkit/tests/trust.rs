//! Trust and access (ARCHITECTURE.md) against real processes: join tokens, the CA they pin,
//! short-lived certificates renewed under load, re-enrollment after a new cluster CA, and the
//! API token on the supernode's HTTP API.

use std::time::Duration;

use anyhow::Context;
use damselfly_testkit::{
    dfget, eventually, file_sha256, http_client, random_bytes, sha256_digest, sha256_hex, Cluster, ClusterOpts,
    Dfdaemon, DfdaemonOpts, Origin, Supernode, SupernodeOpts,
};

const MIB: usize = 1 << 20;

/// The daemon failed to start; its error (with the log tail) as text.
async fn start_fails(opts: DfdaemonOpts) -> String {
    // Without a backtrace the error is the log's last lines.
    match Dfdaemon::start(opts.env("RUST_BACKTRACE", "0")).await {
        Ok(d) => panic!("{d:?} started but must not"),
        Err(e) => format!("{e:#}"),
    }
}

/// The join token's text with another secret (same CA hash).
fn with_other_secret(token: &str) -> String {
    let (head, secret) = token.trim().rsplit_once('.').expect("token has a secret");
    let flipped: String = secret.chars().map(|c| if c == '0' { '1' } else { '0' }).collect();
    format!("{head}.{flipped}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_enrolls_only_with_the_join_token() -> anyhow::Result<()> {
    let sn = Supernode::start(SupernodeOpts::default()).await?;
    let token = std::fs::read_to_string(sn.join_token_path())?;
    assert!(token.starts_with("dfjt1.") && token.trim().len() == 135, "{token}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(sn.join_token_path())?.permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Neither a stored certificate nor a token: it does not start, and says how to give one.
    let bare = DfdaemonOpts { supernodes: vec![sn.quic_addr()], ..DfdaemonOpts::default() };
    let err = start_fails(bare.clone()).await;
    for needle in ["no join token", "--join-token-file", "DAMSELFLY_JOIN_TOKEN", "DATA_DIR/join-token"] {
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    }
    // A token of this cluster's CA with a wrong secret: the supernode refuses it.
    let err = start_fails(bare.clone().env("DAMSELFLY_JOIN_TOKEN", &with_other_secret(&token))).await;
    assert!(err.contains("join token is wrong"), "{err}");
    let err = start_fails(bare.clone().env("DAMSELFLY_JOIN_TOKEN", "not-a-token")).await;
    assert!(err.contains("malformed") && err.contains("DAMSELFLY_JOIN_TOKEN"), "{err}");
    let refused = sn.metrics().await?.get("damselfly_supernode_enrollments_refused_total");
    assert_eq!(refused, 1.0, "only the well-formed wrong token reached the supernode");

    // With the token, from the environment or a file; --ca-cert must then be the same CA.
    let from_env = Dfdaemon::start(bare.clone().env("DAMSELFLY_JOIN_TOKEN", token.trim())).await?;
    let from_file = Dfdaemon::start(DfdaemonOpts::for_supernode(&sn)).await?;
    let both = DfdaemonOpts { ca_cert: Some(sn.ca_cert_path()), ..DfdaemonOpts::for_supernode(&sn) };
    let with_ca = Dfdaemon::start(both).await?;
    assert_eq!(sn.metrics().await?.get("damselfly_supernode_enrollments_total"), 3.0);
    let ca = std::fs::read(sn.ca_cert_path())?;
    for d in [&from_env, &from_file, &with_ca] {
        assert_eq!(std::fs::read(d.data_dir().join("tls/ca.crt"))?, ca, "{d:?}");
    }

    // A restart uses the stored certificate: no new enrollment.
    let mut from_file = from_file;
    from_file.restart().await?;
    assert_eq!(sn.metrics().await?.get("damselfly_supernode_enrollments_total"), 3.0, "no new enrollment");

    // The supernode never logs the token's secret.
    let secret = token.trim().rsplit('.').next().context("secret")?;
    assert!(!sn.output().contains(secret), "the join token's secret is in the supernode's log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_never_sends_the_token_to_a_supernode_of_another_ca() -> anyhow::Result<()> {
    let ours = Supernode::start(SupernodeOpts::default()).await?;
    let theirs = Supernode::start(SupernodeOpts::default()).await?;
    // Our token, their address: the handshake fails before anything is sent.
    let opts = DfdaemonOpts { supernodes: vec![theirs.quic_addr()], ..DfdaemonOpts::for_supernode(&ours) };
    let err = start_fails(opts).await;
    assert!(err.contains("presents the cluster CA") && err.contains("secret was not sent"), "{err}");
    let m = theirs.metrics().await?;
    assert_eq!(m.get("damselfly_supernode_enrollments_total"), 0.0);
    assert_eq!(m.get("damselfly_supernode_enrollments_refused_total"), 0.0, "no enrollment request arrived");

    // --ca-cert of another CA than the token's: refused before any connection.
    let opts = DfdaemonOpts { ca_cert: Some(theirs.ca_cert_path()), ..DfdaemonOpts::for_supernode(&ours) };
    let err = start_fails(opts).await;
    assert!(err.contains("--ca-cert") && err.contains("join token pins"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supernodes_of_a_region_share_the_ca_and_the_token() -> anyhow::Result<()> {
    let first = Supernode::start(SupernodeOpts::default()).await?;
    let (ca, key) = (first.ca_cert_path(), first.data_dir().join("tls/ca.key"));
    let ca_args = ["--ca-cert", &ca.to_string_lossy(), "--ca-key", &key.to_string_lossy()].map(String::from);
    let token_file = first.join_token_path().to_string_lossy().into_owned();

    // A replica with the CA and the shared token: a daemon with that token enrolls with it.
    let replica =
        Supernode::start(SupernodeOpts::default().args(ca_args.clone()).args(["--join-token-file", &token_file]))
            .await?;
    assert!(!replica.data_dir().join("join-token").exists(), "a named token file is used, not copied");
    let opts = DfdaemonOpts { supernodes: vec![replica.quic_addr()], ..DfdaemonOpts::for_supernode(&first) };
    Dfdaemon::start(opts).await?;
    assert_eq!(replica.metrics().await?.get("damselfly_supernode_enrollments_total"), 1.0);

    // With the CA but no token file it writes a token for that CA (what make-secrets.sh takes).
    let maker = Supernode::start(SupernodeOpts::default().args(ca_args)).await?;
    let made = std::fs::read_to_string(maker.join_token_path())?;
    let shared = std::fs::read_to_string(first.join_token_path())?;
    assert_eq!(made.split('.').nth(1), shared.split('.').nth(1), "same CA hash");

    // A token file for another CA is refused at start.
    let opts = SupernodeOpts::default().args(["--join-token-file", &token_file]).env("RUST_BACKTRACE", "0");
    let wrong = Supernode::start(opts).await;
    let err = format!("{:#}", wrong.expect_err("a token of another CA"));
    assert!(err.contains("pins the cluster CA") && err.contains("this supernode's CA"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_certificates_are_renewed_while_pulls_run() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blob = random_bytes(12 * MIB, 21);
    // About 10 s at 1.2 MiB/s: several certificate lifetimes.
    origin.add_throttled("/slow", blob.clone(), 1_200_000);
    let ttl = 3;
    let opts = ClusterOpts {
        supernode: SupernodeOpts::default().args(["--peer-cert-ttl", &format!("{ttl}s")]),
        ..ClusterOpts::default()
    };
    let mut cluster = Cluster::start(2, opts).await?;
    let first_cert = std::fs::read(cluster.daemons[0].data_dir().join("tls/peer.crt"))?;
    let dir = tempfile::tempdir()?;
    let digest = sha256_digest(&blob);
    let first = cluster.daemons[0].dfget(&origin.url("/slow"), dir.path().join("a")).digest(&digest).spawn()?;

    // Once the first daemon's original certificate has expired, the second one joins: it
    // dials the first over a new connection, which only its renewed certificate can open.
    tokio::time::sleep(Duration::from_secs(ttl + 2)).await;
    let second = cluster.daemons[1].dfget(&origin.url("/slow"), dir.path().join("b")).digest(&digest).spawn()?;
    for (child, name) in [(first, "a"), (second, "b")] {
        let out = child.wait().await?;
        assert!(out.status.success(), "dfget {name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(file_sha256(dir.path().join(name))?, sha256_hex(&blob));
    }
    assert_eq!(origin.bytes_served(), blob.len() as u64, "the swarm carried every pull");
    let up = cluster.daemons[0].metrics().await?.get("damselfly_dfdaemon_upload_bytes_total");
    assert!(up > 0.0, "the second daemon fetched from the first after its first certificate expired");
    let m = cluster.supernode.metrics().await?;
    assert!(m.get("damselfly_supernode_renewals_total") >= 4.0, "renewals: {m:?}");
    assert_eq!(m.get("damselfly_supernode_enrollments_total"), 2.0, "renewed, never enrolled again");
    assert_ne!(std::fs::read(cluster.daemons[0].data_dir().join("tls/peer.crt"))?, first_cert);
    for d in &cluster.daemons {
        assert!(!d.output().contains("enrolling again"), "{}", d.output());
    }

    // A certificate that expired while the daemon was down: it enrolls again at start.
    let daemon = &mut cluster.daemons[1];
    let peer_id = std::fs::read_to_string(daemon.data_dir().join("tls/peer_id"))?;
    daemon.stop().await?;
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    daemon.restart().await?;
    let log = daemon.output();
    assert!(log.contains("enrolling again") && log.contains("expired"), "{log}");
    assert_eq!(std::fs::read_to_string(daemon.data_dir().join("tls/peer_id"))?, peer_id, "same peer id");
    assert_eq!(cluster.supernode.metrics().await?.get("damselfly_supernode_enrollments_total"), 3.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_enrolls_again_when_the_cluster_ca_is_regenerated() -> anyhow::Result<()> {
    let origin = Origin::start()?;
    let blobs: Vec<_> = (0..3u64).map(|i| random_bytes(2 * MIB, 30 + i)).collect();
    for (i, b) in blobs.iter().enumerate() {
        origin.add(&format!("/b{i}"), b.clone());
    }
    let mut cluster = Cluster::start(1, ClusterOpts::default()).await?;
    let dir = tempfile::tempdir()?;
    let pull = |i: usize| {
        cluster.daemons[0]
            .dfget(&origin.url(&format!("/b{i}")), dir.path().join(format!("o{i}")))
            .digest(&sha256_digest(&blobs[i]))
    };
    pull(0).run_ok().await?;
    let daemon_dir = cluster.daemons[0].data_dir().to_path_buf();
    let peer_id = std::fs::read_to_string(daemon_dir.join("tls/peer_id"))?;

    // A new cluster CA: the supernode forgets its CA and token and makes new ones; the daemon's
    // token file (the supernode's) now holds the new token.
    let sn = &mut cluster.supernode;
    sn.stop().await?;
    std::fs::remove_dir_all(sn.data_dir().join("tls"))?;
    std::fs::remove_file(sn.join_token_path())?;
    sn.restart().await?;
    let new_ca = std::fs::read(sn.ca_cert_path())?;

    // The daemon's link finds the supernode's certificate untrusted and the daemon enrolls again
    // with the token; the next pull falls back to the origin meanwhile, or (when the daemon was
    // faster) already goes through the new supernode.
    pull(1).run_ok().await?;
    let sn = &cluster.supernode;
    // Enrolled again once the daemon stored the certificate of the new CA.
    eventually("re-enrollment", Duration::from_secs(30), || async {
        Ok(std::fs::read(daemon_dir.join("tls/ca.crt"))? == new_ca)
    })
    .await?;
    assert_eq!(sn.metrics().await?.get("damselfly_supernode_enrollments_total"), 1.0);
    let log = cluster.daemons[0].output();
    assert!(log.contains("enrolling again"), "the daemon logs why: {log}");
    assert_eq!(std::fs::read_to_string(daemon_dir.join("tls/peer_id"))?, peer_id, "same peer id");

    // Then pulls go through the new supernode again.
    pull(2).run_ok().await?;
    let tasks = sn.get_json("/api/v1/tasks").await?;
    let last = format!("sha256:{}", damselfly_testkit::sha256_hex(&blobs[2]));
    let known =
        tasks.as_array().is_some_and(|t| t.iter().any(|t| t["id"] == last.as_str() && t["phase"] == "complete"));
    assert!(known, "the last pull went through the supernode: {tasks}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_needs_the_token_except_probes_and_metrics() -> anyhow::Result<()> {
    let sn = Supernode::start(SupernodeOpts::default()).await?;
    let token = sn.api_token()?;
    let url = sn.http_url();
    let _ = http_client(); // installs the TLS provider reqwest needs
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build()?;

    for path in ["/healthz", "/healthy", "/metrics"] {
        assert_eq!(client.get(format!("{url}{path}")).send().await?.status(), 200, "{path}");
    }
    for path in ["/api/v1/tasks", "/api/v1/peers", "/api/v1/preheat/0123", "/oapi/v1/jobs/1", "/status"] {
        let resp = client.get(format!("{url}{path}")).send().await?;
        assert_eq!(resp.status(), 401, "{path}");
        let challenge = resp.headers().get("www-authenticate").context("challenge")?.to_str()?.to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let wrong = client.get(format!("{url}{path}")).bearer_auth("wrong-token-0123456789").send().await?;
        assert_eq!(wrong.status(), 401, "{path}");
    }
    // Harbor's "OAuth" mode sends the token as a bearer token; so does every API client.
    let harbor = client.post(format!("{url}/oapi/v1/jobs")).json(&serde_json::json!({})).send().await?;
    assert_eq!(harbor.status(), 401);
    let harbor = client.post(format!("{url}/oapi/v1/jobs")).bearer_auth(&token).json(&serde_json::json!({}));
    assert_eq!(harbor.send().await?.status(), 400, "past the token: a malformed job");
    let tasks = client.get(format!("{url}/api/v1/tasks")).bearer_auth(&token).send().await?;
    assert_eq!(tasks.status(), 200);

    // A browser signs in once with ?token= and then reads with its cookie.
    let resp = client.get(format!("{url}/status?token={token}")).send().await?;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers().get("location").context("location")?, "/status");
    let cookie = resp.headers().get("set-cookie").context("cookie")?.to_str()?.to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(&token), "{cookie}");
    let pair = cookie.split(';').next().context("cookie pair")?.to_owned();
    let read = client.get(format!("{url}/api/v1/tasks")).header("cookie", &pair).send().await?;
    assert_eq!(read.status(), 200);
    let write = client.post(format!("{url}/api/v1/preheat")).header("cookie", &pair).json(&serde_json::json!({}));
    assert_eq!(write.send().await?.status(), 401, "a browser session only reads");
    assert_eq!(client.get(format!("{url}/status?token=nope")).send().await?.status(), 401);
    assert!(!sn.output().contains(&token), "the API token is in the supernode's log");

    // --api-token-file names the token instead.
    let file = sn.temp_dir().join("operator-token");
    std::fs::write(&file, "operator-chosen-token-0123456789\n")?;
    let named = Supernode::start(SupernodeOpts::default().args(["--api-token-file", &file.to_string_lossy()])).await?;
    assert!(!named.data_dir().join("api-token").exists());
    let resp = client.get(format!("{}/api/v1/tasks", named.http_url())).bearer_auth("operator-chosen-token-0123456789");
    assert_eq!(resp.send().await?.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_preheat_sends_the_api_token() -> anyhow::Result<()> {
    let sn = Supernode::start(SupernodeOpts::default()).await?;
    let api = sn.http_url();
    let token_file = sn.data_dir().join("api-token");
    let token_file = token_file.to_string_lossy();
    // An invalid reference: the supernode answers 400 once it let the request in.
    let image = "Not/Valid";

    let out = dfget(&["preheat", image, "--supernode-api", &api], &[]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("requires its API token") && stderr.contains("--token-file"), "{stderr}");

    let out = dfget(&["preheat", image, "--supernode-api", &api], &[("DAMSELFLY_API_TOKEN", "wrong-token-0123456789")])
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("refused the API token"), "{stderr}");

    for (args, env) in [
        (vec!["preheat", image, "--supernode-api", &api, "--token-file", &token_file], vec![]),
        (vec!["preheat", image, "--supernode-api", &api], vec![("DAMSELFLY_API_TOKEN", sn.api_token()?)]),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = dfget(&args, &env).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("lowercase"), "past the token: {stderr}");
    }
    Ok(())
}
