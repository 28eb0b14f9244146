//! Preheat against real processes: a real registry (`docker-registry`), a real supernode and
//! dfdaemons, the real `dfget`. Each test checks the registry's own access log (or the test
//! origin's counters) for what was fetched, and when.

use std::time::Duration;

use anyhow::{bail, Context};
use damselfly_testkit::{
    dfget, ensure_success, eventually_some, file_sha256, http_client, run_all, Cluster, ClusterOpts, DfdaemonOpts,
    DfgetRun, ImageFormat, Origin, Registry, RegistryOpts, Supernode, SupernodeOpts, TestImage, TestIndex,
};
use serde_json::{json, Value};

const MIB: usize = 1 << 20;

/// A cluster whose supernode and daemons reach `registry_host` over plain HTTP.
async fn cluster(daemons: usize, registry_host: &str) -> anyhow::Result<Cluster> {
    let insecure = ["--insecure-registry", registry_host];
    let opts = ClusterOpts {
        supernode: SupernodeOpts::default().args(insecure),
        daemon: DfdaemonOpts::default().args(insecure),
        ..ClusterOpts::default()
    };
    Cluster::start(daemons, opts).await
}

/// `POST path` on `sn`'s API (with its API token) with `body`; the status and the JSON answer.
async fn post(sn: &Supernode, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let url = format!("{}{path}", sn.http_url());
    let resp = sn.api_client()?.post(&url).json(body).timeout(Duration::from_secs(60)).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).with_context(|| format!("POST {url} answered {status}: {text}"))?;
    Ok((status, value))
}

/// `POST /api/v1/preheat`, expecting 202; returns the job id.
async fn start_preheat(sn: &Supernode, body: Value) -> anyhow::Result<String> {
    let (status, job) = post(sn, "/api/v1/preheat", &body).await?;
    if status != 202 {
        bail!("preheat {body} answered {status}: {job}");
    }
    Ok(job["id"].as_str().context("job id")?.to_owned())
}

/// Polls `path` until `done(view)`; fails after 120 s.
async fn poll_until(sn: &Supernode, path: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let what = format!("{path} reaches the expected state");
    eventually_some(&what, Duration::from_secs(120), || async {
        let view = sn.get_json(path).await?;
        Ok(done(&view).then_some(view))
    })
    .await
}

/// Waits for the end of job `id` and returns its view.
async fn job_end(sn: &Supernode, id: &str) -> anyhow::Result<Value> {
    poll_until(sn, &format!("/api/v1/preheat/{id}"), |v| matches!(v["state"].as_str(), Some("succeeded" | "failed")))
        .await
}

fn blob_url(registry_url: &str, name: &str, digest: &str) -> String {
    format!("{registry_url}/v2/{name}/blobs/{digest}")
}

/// Every daemon downloads every blob (by blob URL and digest) at once; checks each file.
async fn pull_everywhere(cluster: &Cluster, base: &str, images: &[&TestImage]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    let mut want = Vec::new();
    for (d, daemon) in cluster.daemons.iter().enumerate() {
        for image in images {
            for blob in image.blobs() {
                let out = dir.path().join(format!("{d}-{}", blob.digest.replace(':', "_")));
                runs.push(daemon.dfget(&blob_url(base, &image.name, &blob.digest), out).digest(&blob.digest));
                want.push(blob.digest.trim_start_matches("sha256:").to_owned());
            }
        }
    }
    for ((run, output), hex) in runs.iter().zip(run_all(&runs).await?).zip(want) {
        ensure_success(&output, &run.to_string())?;
        assert_eq!(file_sha256(run.output_path())?, hex, "{run}");
    }
    Ok(())
}

fn digests(view: &Value) -> Vec<String> {
    view["blobs"]
        .as_array()
        .map(|b| b.iter().filter_map(|x| x["digest"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preheated_image_is_pulled_by_every_daemon_without_touching_the_registry() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/app", "v1", &[3 * MIB, MIB + 1, 0, 5 * MIB], 11);
    image.push(&registry, None).await?;
    let cluster = cluster(3, &registry.host()).await?;
    let sn = &cluster.supernode;

    let id = start_preheat(sn, json!({ "image": image.reference(&registry.host()) })).await?;
    let view = job_end(sn, &id).await?;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["manifest_digest"], image.manifest_digest.as_str());
    let want: Vec<String> = image.blobs().map(|b| b.digest.clone()).collect();
    assert_eq!(digests(&view), want, "config then layers");
    for b in view["blobs"].as_array().context("blobs")? {
        assert_eq!(b["state"], "succeeded", "{b}");
        assert_eq!(b["bytes_landed"], b["size"], "{b}");
    }
    assert_eq!(view["bytes_landed"].as_u64(), Some(image.total_blob_bytes()));
    for blob in image.blobs() {
        assert_eq!(registry.blob_gets(&blob.digest).await?, 1, "{} fetched once by the preheat", blob.digest);
    }

    let mark = registry.mark().await?;
    pull_everywhere(&cluster, &registry.url(), &[&image]).await?;
    let during = registry.since(mark).await?;
    assert_eq!(
        during.all_blob_gets(),
        0,
        "pulls after a preheat fetch nothing from the registry: {:?}",
        during.records()
    );
    // What does reach it: the supernode's authorization check, at most once per repository.
    assert!(during.blob_heads_per_repository().values().all(|&n| n <= 1), "{:?}", during.records());
    let metrics = sn.metrics().await?;
    assert_eq!(metrics.get("damselfly_supernode_origin_bytes_total"), image.total_blob_bytes() as f64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preheat_of_an_index_takes_one_platform_or_all() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let platforms = [("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")];
    // A Docker manifest list (the OCI index path is covered by dfget_preheat below).
    let index = TestIndex::generate_as(ImageFormat::Docker, "demo/multi", "v2", &platforms, &[2 * MIB, 300_000], 5);
    index.push(&registry, None).await?;
    let cluster = cluster(2, &registry.host()).await?;
    let sn = &cluster.supernode;
    let reference = index.reference(&registry.host());

    let arm = index.image("linux", "arm64").context("arm64")?;
    let id = start_preheat(sn, json!({ "image": reference, "platform": "linux/arm64" })).await?;
    let view = job_end(sn, &id).await?;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(view["media_type"], index.media_type);
    assert_eq!(digests(&view), arm.blobs().map(|b| b.digest.clone()).collect::<Vec<_>>());
    assert!(view["blobs"].as_array().context("blobs")?.iter().all(|b| b["platform"] == "linux/arm64"), "{view}");
    let other = index.image("linux", "amd64").context("amd64")?;
    for blob in other.blobs() {
        assert_eq!(registry.blob_gets(&blob.digest).await?, 0, "other platforms untouched");
    }

    // "all": the other two platforms are fetched; arm64's blobs are cache hits, not refetched.
    let id = start_preheat(sn, json!({ "image": reference, "platform": "all" })).await?;
    let view = job_end(sn, &id).await?;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert_eq!(digests(&view).len(), 3 * 3);
    for image in &index.images {
        for blob in image.blobs() {
            assert_eq!(registry.blob_gets(&blob.digest).await?, 1, "{} fetched once in total", blob.digest);
        }
    }

    let mark = registry.mark().await?;
    let images: Vec<&TestImage> = index.images.iter().collect();
    pull_everywhere(&cluster, &registry.url(), &images).await?;
    let during = registry.since(mark).await?;
    assert_eq!(during.all_blob_gets(), 0, "{:?}", during.records());
    assert!(during.blob_heads_per_repository().values().all(|&n| n <= 1), "{:?}", during.records());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_during_the_preheat_joins_it_and_nothing_is_fetched_twice() -> anyhow::Result<()> {
    // The test origin stands in for the registry here: it can serve a layer slowly, so that the
    // pulls start while the preheat's fetch of it is in the middle.
    let origin = Origin::start()?;
    let image = TestImage::generate("demo/slow", "v1", &[6 * MIB, 200_000], 21);
    let path = |d: &str| format!("/v2/demo/slow/blobs/{d}");
    origin.add("/v2/demo/slow/manifests/v1", image.manifest_bytes.clone());
    origin.add(&path(&image.config.digest), image.config.bytes.clone());
    origin.add_throttled(&path(&image.layers[0].digest), image.layers[0].bytes.clone(), 2 * MIB as u64);
    origin.add(&path(&image.layers[1].digest), image.layers[1].bytes.clone());
    let host = origin.addr().to_string();
    let cluster = cluster(2, &host).await?;
    let sn = &cluster.supernode;

    let id = start_preheat(sn, json!({ "image": format!("{host}/demo/slow:v1") })).await?;
    let slow = image.layers[0].digest.clone();
    let size = image.layers[0].size();
    let mid = poll_until(sn, &format!("/api/v1/preheat/{id}"), |v| {
        v["blobs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["digest"] == slow.as_str() && b["bytes_landed"].as_u64().is_some_and(|n| n > 0 && n < size))
    })
    .await?;
    assert_eq!(mid["state"], "running");

    pull_everywhere(&cluster, &origin.url(""), &[&image]).await?;
    let view = job_end(sn, &id).await?;
    assert_eq!(view["state"], "succeeded", "{view}");
    for blob in image.blobs() {
        assert_eq!(origin.gets(&path(&blob.digest)), 1, "{} fetched once in total", blob.digest);
    }
    assert_eq!(origin.bytes_served(), image.total_blob_bytes() + image.manifest_bytes.len() as u64);
    Ok(())
}

/// What Harbor's Dragonfly driver posts (`dragonflyCreateJobRequest`, zero values included).
fn harbor_job(url: &str, headers: Value) -> Value {
    json!({
        "type": "preheat",
        "args": {
            "type": "image", "url": url, "tag": "", "filtered_query_params": "", "headers": headers,
            "scope": "single_seed_peer", "concurrent_count": 0, "timeout": 0
        },
        "scheduler_cluster_ids": null
    })
}

/// Polls `GET /oapi/v1/jobs/{id}` as Harbor does until the state is no longer `PENDING`.
async fn harbor_end(sn: &Supernode, id: u64) -> anyhow::Result<Value> {
    poll_until(sn, &format!("/oapi/v1/jobs/{id}"), |v| v["state"] != "PENDING").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn harbor_creates_and_polls_jobs() -> anyhow::Result<()> {
    let user = ("harbor", "Harbor12345");
    let opts = RegistryOpts { htpasswd: Some((user.0.into(), user.1.into())), ..RegistryOpts::default() };
    let registry = Registry::start(opts).await?;
    let image = TestImage::generate("library/app", "v1", &[2 * MIB, 1000], 31);
    image.push(&registry, Some(user)).await?;
    let cluster = cluster(1, &registry.host()).await?;
    let sn = &cluster.supernode;
    let client = http_client();

    assert_eq!(client.get(format!("{}/healthy", sn.http_url())).send().await?.status(), 200);

    // Harbor passes the registry credential it minted as a header.
    let auth = damselfly_testkit::basic_auth(user.0, user.1);
    let url = format!("{}/v2/library/app/manifests/v1", registry.url());
    let (status, created) = post(sn, "/oapi/v1/jobs", &harbor_job(&url, json!({ "Authorization": auth }))).await?;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_u64().context("Harbor reads the id as an integer")?;
    assert_eq!(created["state"], "PENDING");
    assert!(created["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{created}");
    let done = harbor_end(sn, id).await?;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let results = &done["result"]["job_states"][0]["results"][0];
    assert_eq!(results["success_tasks"].as_array().map(Vec::len), Some(image.blobs().count()), "{done}");
    assert!(results["failure_tasks"].as_array().is_some_and(Vec::is_empty));
    for blob in image.blobs() {
        assert_eq!(registry.blob_gets(&blob.digest).await?, 1);
    }
    assert!(!done.to_string().contains(&auth), "credentials never in API output");
    assert!(!sn.output().contains(&auth), "credentials never in the log");

    // A bad image is a job too, and it reads FAILURE with the reason, as Dragonfly's do.
    let missing = format!("{}/v2/library/app/manifests/nope", registry.url());
    let (status, created) = post(sn, "/oapi/v1/jobs", &harbor_job(&missing, json!({ "Authorization": auth }))).await?;
    assert_eq!(status, 200, "{created}");
    let failed = harbor_end(sn, created["id"].as_u64().context("id")?).await?;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    let error = failed["result"]["job_states"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("not found"), "{failed}");
    // No credentials: the registry's refusal is the reason.
    let (_, created) = post(sn, "/oapi/v1/jobs", &harbor_job(&url, Value::Null)).await?;
    let failed = harbor_end(sn, created["id"].as_u64().context("id")?).await?;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    assert!(
        failed["result"]["job_states"][0]["error"].as_str().unwrap_or_default().contains("credentials"),
        "{failed}"
    );

    // Malformed requests are refused outright.
    let mut wrong = harbor_job(&url, Value::Null);
    wrong["type"] = json!("sync_peers");
    let (status, body) = post(sn, "/oapi/v1/jobs", &wrong).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("preheat")), "{body}");
    let unknown = sn.api_client()?.get(format!("{}/oapi/v1/jobs/999999", sn.http_url())).send().await?;
    assert_eq!(unknown.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_clear_4xx_at_once() -> anyhow::Result<()> {
    let user = ("alice", "s3cret");
    let opts = RegistryOpts { htpasswd: Some((user.0.into(), user.1.into())), ..RegistryOpts::default() };
    let private = Registry::start(opts).await?;
    let image = TestImage::generate("team/private", "v1", &[MIB], 41);
    image.push(&private, Some(user)).await?;

    // A fake registry serving what a real one would refuse to store.
    let origin = Origin::start()?;
    let schema1 = r#"{"schemaVersion":1,"name":"old/app","tag":"v1","fsLayers":[],"history":[]}"#;
    origin.add("/v2/old/app/manifests/v1", schema1);
    let corrupt = TestImage::generate("bad/app", "v1", &[MIB, 1000], 42);
    origin.add("/v2/bad/app/manifests/v1", corrupt.manifest_bytes.clone());
    origin.add(&format!("/v2/bad/app/blobs/{}", corrupt.config.digest), corrupt.config.bytes.clone());
    origin.add(&format!("/v2/bad/app/blobs/{}", corrupt.layers[0].digest), vec![7u8; MIB + 10]);
    origin.add(&format!("/v2/bad/app/blobs/{}", corrupt.layers[1].digest), corrupt.layers[1].bytes.clone());

    let sn = Supernode::start(SupernodeOpts::default().args([
        "--insecure-registry",
        &private.host(),
        "--insecure-registry",
        &origin.addr().to_string(),
    ]))
    .await?;
    let host = private.host();
    let cases = [
        (json!({ "image": "Not/Valid" }), 400, "lowercase"),
        (json!({ "image": "x:bad tag" }), 400, "not a tag"),
        (json!({ "image": "x@sha256:123" }), 400, "digest"),
        (json!({ "image": format!("{host}/team/private:v1"), "platform": "linux" }), 400, "platform"),
        (json!({ "image": format!("{host}/team/private:v1"), "peers": ["not a peer"] }), 400, "peer"),
        (json!({ "image": format!("{host}/team/private:v1"), "peers": ["http://127.0.0.1:65001"] }), 400, "is a URL"),
        (json!({ "img": "x" }), 400, "bad preheat request"),
        (json!({ "image": format!("{host}/team/private:v1") }), 403, "credentials"),
        (
            json!({ "image": format!("{host}/team/private:v1"), "username": user.0, "password": "wrong" }),
            403,
            "refused",
        ),
        (
            json!({ "image": format!("{host}/team/nothing:v1"), "username": user.0, "password": user.1 }),
            404,
            "not found",
        ),
        (
            json!({ "image": format!("{host}/team/private:v9"), "username": user.0, "password": user.1 }),
            404,
            "not found",
        ),
        (json!({ "image": format!("{}/old/app:v1", origin.addr()) }), 415, "schema 1"),
        (json!({ "image": "127.0.0.1:9/x:v1" }), 502, "cannot reach"),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = post(&sn, "/api/v1/preheat", &body).await?;
        let message = answer["error"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{body}: {answer}");
        assert!(message.contains(needle), "{body}: expected {needle:?} in {message:?}");
    }
    let unknown = sn.api_client()?.get(format!("{}/api/v1/preheat/0123", sn.http_url())).send().await?;
    assert_eq!(unknown.status(), 404);

    // Private registry with the right credentials: the blob fetches authenticate too.
    let body = json!({ "image": format!("{host}/team/private:v1"), "username": user.0, "password": user.1 });
    let id = start_preheat(&sn, body).await?;
    let view = job_end(&sn, &id).await?;
    assert_eq!(view["state"], "succeeded", "{view}");
    assert!(!view.to_string().contains(user.1) && !sn.output().contains(user.1), "password never shown or logged");

    // A blob whose bytes do not match its digest fails the job, and nothing of it stays servable.
    let id = start_preheat(&sn, json!({ "image": format!("{}/bad/app:v1", origin.addr()) })).await?;
    let view = job_end(&sn, &id).await?;
    assert_eq!(view["state"], "failed", "{view}");
    assert!(
        view["error"].as_str().is_some_and(|e| e.contains(&corrupt.layers[0].digest) && e.contains("digest")),
        "{view}"
    );
    let tasks = sn.get_json("/api/v1/tasks").await?;
    for t in tasks.as_array().into_iter().flatten() {
        if t["id"] == corrupt.layers[0].digest.as_str() {
            assert_eq!(t["state"], "failed", "{t}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_preheat_shows_progress_warms_peers_and_fails_with_the_reason() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let index = TestIndex::generate("demo/cli", "v1", &[("linux", "amd64"), ("linux", "arm64")], &[2 * MIB, 10], 51);
    index.push(&registry, None).await?;
    let cluster = cluster(2, &registry.host()).await?;
    let api = cluster.supernode.http_url();
    let reference = index.reference(&registry.host());
    // Daemons by their QUIC address (the supernode reaches them only over authenticated QUIC).
    let peers: Vec<String> = cluster.daemons.iter().map(|d| d.peer_addr().to_string()).collect();
    let token_file = cluster.supernode.data_dir().join("api-token");
    let token_file = token_file.to_string_lossy();

    let mut args = vec!["preheat", reference.as_str(), "--supernode-api", api.as_str(), "--token-file", &token_file];
    for p in &peers {
        args.extend(["--peer", p.as_str()]);
    }
    let out = dfget(&args, &[]).await?;
    ensure_success(&out, "dfget preheat")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("preheated") && stdout.contains("on 2 peers"), "{stdout}");
    let amd = index.image("linux", "amd64").context("amd64")?;
    for blob in amd.blobs() {
        let short = &blob.digest[..19];
        assert!(stderr.contains(short) && stderr.contains("succeeded"), "per-layer lines: {stderr}");
        assert_eq!(registry.blob_gets(&blob.digest).await?, 1);
        // Every peer holds it now.
        for d in &cluster.daemons {
            let status = d.get_json(&format!("/api/v1/tasks/{}", blob.digest)).await?;
            assert_eq!(status["status"], "done", "{status}");
        }
    }
    let arm = index.image("linux", "arm64").context("arm64")?;
    assert_eq!(registry.blob_gets(&arm.layers[0].digest).await?, 0, "default platform is linux/amd64");

    // --no-wait prints the job id; the environment names the API and carries the token.
    let token = cluster.supernode.api_token()?;
    let env = [("DFGET_SUPERNODE_API", api.as_str()), ("DAMSELFLY_API_TOKEN", token.as_str())];
    // A daemon by its peer id (known to the supernode since it registered for the blobs above).
    let peer_id = std::fs::read_to_string(cluster.daemons[1].data_dir().join("tls/peer_id"))?;
    let out = dfget(&["preheat", &reference, "--platform", "linux/arm64", "--no-wait", "--peer", peer_id.trim()], &env)
        .await?;
    ensure_success(&out, "dfget preheat --no-wait")?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 32, "job id on stdout: {id:?}");
    assert_eq!(job_end(&cluster.supernode, &id).await?["state"], "succeeded");
    let status = cluster.daemons[1].get_json(&format!("/api/v1/tasks/{}", arm.layers[0].digest)).await?;
    assert_eq!(status["status"], "done", "warmed by peer id: {status}");

    // Peers are enrolled daemons reached over QUIC: another service at the address fails the job.
    let id = start_preheat(&cluster.supernode, json!({ "image": reference, "peers": [registry.host()] })).await?;
    let end = job_end(&cluster.supernode, &id).await?;
    assert_eq!(end["state"], "failed", "{end}");
    let error = end["error"].as_str().unwrap_or_default();
    assert!(error.contains("not an enrolled dfdaemon") || error.contains("no answer"), "{end}");

    // Failure: non-zero exit and the supernode's reason.
    let missing = format!("{}/demo/cli:nope", registry.host());
    let out = dfget(&["preheat", &missing, "--supernode-api", &api, "--token-file", &token_file], &[]).await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found") && stderr.contains("nope"), "{stderr}");
    let out = dfget(
        &["preheat", &reference, "--platform", "windows/amd64", "--supernode-api", &api, "--token-file", &token_file],
        &[],
    )
    .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no windows/amd64 manifest"), "{out:?}");

    // The download form is unchanged.
    let dir = tempfile::tempdir()?;
    let blob = &amd.layers[0];
    let run = DfgetRun::new(&blob_url(&registry.url(), &index.name, &blob.digest), dir.path().join("o"))
        .daemon(&cluster.daemons[0].proxy_url())
        .digest(&blob.digest);
    run.run_ok().await?;
    Ok(())
}

/// Measures a preheat of a 1 GiB image, the first pull after it, and a cold pull on a fresh
/// cluster (every blob at once on one daemon, as an engine pulls). Not a regression test: run it
/// by hand and read the numbers:
/// `cargo nextest run -p damselfly-testkit --test preheat --run-ignored only --no-capture slow_measure`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement (1 GiB), run by hand"]
async fn slow_measure_preheat_vs_cold_pull_of_1_gib() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/big", "v1", &[128 * MIB; 8], 61);
    image.push(&registry, None).await?;
    let gib = image.total_blob_bytes() as f64 / (1u64 << 30) as f64;

    let warm = cluster(1, &registry.host()).await?;
    let t = std::time::Instant::now();
    let id = start_preheat(&warm.supernode, json!({ "image": image.reference(&registry.host()) })).await?;
    assert_eq!(job_end(&warm.supernode, &id).await?["state"], "succeeded");
    let preheat = t.elapsed();
    let mark = registry.mark().await?;
    let t = std::time::Instant::now();
    pull_everywhere(&warm, &registry.url(), &[&image]).await?;
    let after = t.elapsed();
    let during = registry.since(mark).await?;
    assert_eq!(during.all_blob_gets(), 0, "{:?}", during.records());
    assert!(during.blob_heads_per_repository().values().all(|&n| n <= 1), "{:?}", during.records());
    drop(warm);

    let cold = cluster(1, &registry.host()).await?;
    let t = std::time::Instant::now();
    pull_everywhere(&cold, &registry.url(), &[&image]).await?;
    let cold_pull = t.elapsed();
    eprintln!(
        "{gib:.2} GiB in 8 layers: preheat {:.1}s, first pull after preheat {:.1}s, cold pull {:.1}s",
        preheat.as_secs_f64(),
        after.as_secs_f64(),
        cold_pull.as_secs_f64()
    );
    Ok(())
}
