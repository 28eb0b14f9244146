//! Image swarms end to end: the blobs of one image pull name one group, by `dfget --group` or by
//! the registry mirror (the manifest's digest), the supernode schedules them as one swarm, and
//! every blob still arrives intact and leaves the registry once.
//!
//! That the group reached the scheduler is read from the supernode's debug log (one line per
//! registration that names a group, fed to the scheduler as `Event::Grouped`).

use anyhow::Context;
use damselfly_testkit::{
    ensure_success, file_sha256, http_client, media_types, run_all, sha256_digest, Cluster, ClusterOpts, DfdaemonOpts,
    ImageFormat, Platform, Registry, RegistryOpts, SupernodeOpts, TestImage,
};

const MIB: usize = 1 << 20;
/// The supernode's line for a registration that names a group.
const GROUPED: &str = "the registration names an image swarm";

/// A cluster of three daemons whose supernode logs the groups registrations name.
fn opts() -> ClusterOpts {
    ClusterOpts {
        supernode: SupernodeOpts::default().env("RUST_LOG", "info,supernode::control=debug"),
        ..Default::default()
    }
}

/// Checks that the supernode's log has, for every blob of `image`, one grouped registration per
/// daemon, each naming `group` (as the supernode scopes it: the origin, a space, the key).
fn assert_grouped(cluster: &Cluster, image: &TestImage, group: &str) -> anyhow::Result<()> {
    let log = std::fs::read_to_string(cluster.supernode.log_path())?;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(GROUPED)).collect();
    for blob in image.blobs() {
        let named: Vec<&&str> = lines.iter().filter(|l| l.contains(&format!("task={}", blob.digest))).collect();
        assert_eq!(named.len(), cluster.daemons.len(), "every daemon's registration for {} names a group", blob.digest);
        for line in named {
            assert!(line.contains(&format!("group={group}")), "blob {} grouped otherwise: {line}", blob.digest);
        }
    }
    assert_eq!(lines.len(), cluster.daemons.len() * image.blobs().count(), "grouped registrations: {lines:#?}");
    Ok(())
}

/// Checks that the supernode schedules every blob of `image` in the swarm of `group` (its task
/// API, `image_swarm`).
async fn assert_one_swarm(cluster: &Cluster, image: &TestImage, group: &str) -> anyhow::Result<()> {
    let tasks = cluster.supernode.get_json("/api/v1/tasks").await?;
    let tasks = tasks.as_array().context("task list")?;
    for blob in image.blobs() {
        let task = tasks.iter().find(|t| t["id"] == blob.digest.as_str()).context("the blob's task")?;
        assert_eq!(task["image_swarm"], group, "blob {} is scheduled in the image's swarm: {task}", blob.digest);
    }
    Ok(())
}

/// Checks that every blob of `image` left `registry` exactly once since `mark`.
async fn assert_fetched_once(
    registry: &Registry,
    mark: damselfly_testkit::AccessMark,
    image: &TestImage,
) -> anyhow::Result<()> {
    let log = registry.since(mark).await?;
    for blob in image.blobs() {
        assert_eq!(log.blob_gets(&blob.digest), 1, "blob {} left the registry once: {:?}", blob.digest, log.records());
    }
    assert_eq!(log.blob_bytes_served(), image.total_blob_bytes());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_fetch_every_blob_of_an_image_as_one_dfget_group() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("swarm/app", "v1", &[3 * MIB, MIB + 1, 0, 700 << 10], 21);
    image.push(&registry, None).await?;
    let cluster = Cluster::start(3, opts()).await?;
    let group = "swarm/app:v1";
    let dir = tempfile::tempdir()?;
    let mark = registry.mark().await?;
    let mut runs = Vec::new();
    for (i, d) in cluster.daemons.iter().enumerate() {
        for (k, blob) in image.blobs().enumerate() {
            let url = format!("{}/v2/{}/blobs/{}", registry.url(), image.name, blob.digest);
            runs.push(d.dfget(&url, dir.path().join(format!("d{i}-b{k}"))).digest(&blob.digest).group(group));
        }
    }
    for (run, output) in runs.iter().zip(run_all(&runs).await?) {
        ensure_success(&output, &run.to_string())?;
    }
    for (i, _) in cluster.daemons.iter().enumerate() {
        for (k, blob) in image.blobs().enumerate() {
            let got = file_sha256(dir.path().join(format!("d{i}-b{k}")))?;
            assert_eq!(format!("sha256:{got}"), blob.digest, "daemon {i} blob {k}");
        }
    }
    assert_fetched_once(&registry, mark, &image).await?;
    assert_grouped(&cluster, &image, &format!("{} {group}", registry.url()))?;
    assert_one_swarm(&cluster, &image, &format!("{} {group}", registry.url())).await?;

    // A group the check refuses: dfget stops before asking anyone (exit 1, bad arguments)...
    let url = format!("{}/v2/{}/blobs/{}", registry.url(), image.name, image.config.digest);
    let bad = cluster.daemons[0].dfget(&url, dir.path().join("bad")).group("a\u{1b}b").run().await?;
    assert_eq!(bad.status.code(), Some(1), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--group"), "{}", String::from_utf8_lossy(&bad.stderr));
    // ... and the daemon's API answers 400 saying why.
    let body = serde_json::json!({ "url": url, "group": "g".repeat(257) });
    let resp =
        http_client().post(format!("{}/api/v1/download", cluster.daemons[0].proxy_url())).json(&body).send().await?;
    assert_eq!(resp.status(), 400);
    let error: serde_json::Value = resp.json().await?;
    let message = error["error"].as_str().context("an error message")?;
    assert!(message.contains("invalid group") && message.contains("256 bytes"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_pulled_through_three_mirrors_is_one_swarm_named_by_its_manifest() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    // Docker media types, as most images have (the OCI ones are what dfget's test pushes).
    let image = TestImage::generate_as(
        ImageFormat::Docker,
        &Platform::linux_amd64(),
        "swarm/mirror",
        "v1",
        &[2 * MIB + 5, 0, MIB, 300 << 10],
        22,
    );
    image.push(&registry, None).await?;
    let args = ["--insecure-registry".to_string(), registry.host(), "--registry".to_string(), registry.url()];
    let cluster = Cluster::start(3, ClusterOpts { daemon: DfdaemonOpts::default().args(args), ..opts() }).await?;
    let mark = registry.mark().await?;
    // Each daemon's engine: the manifest by tag, then every blob at once, as an engine pulls.
    let pulls = cluster.daemons.iter().map(|d| pull(d.proxy_url(), &registry, &image));
    futures_util::future::try_join_all(pulls).await?;
    assert_fetched_once(&registry, mark, &image).await?;
    assert_eq!(sha256_digest(&image.manifest_bytes), image.manifest_digest);
    assert_grouped(&cluster, &image, &format!("{} {}", registry.url(), image.manifest_digest))?;
    assert_one_swarm(&cluster, &image, &format!("{} {}", registry.url(), image.manifest_digest)).await?;
    Ok(())
}

/// GETs `image`'s manifest through the mirror at `mirror`, then all its blobs at once; checks
/// every answer's bytes.
async fn pull(mirror: String, registry: &Registry, image: &TestImage) -> anyhow::Result<()> {
    let http = http_client();
    let base = format!("{mirror}/v2/{}", image.name);
    let ns = format!("ns={}", registry.host());
    let accept = [media_types::DOCKER_MANIFEST, media_types::OCI_MANIFEST].join(", ");
    let manifest = http.get(format!("{base}/manifests/{}?{ns}", image.tag)).header("Accept", accept).send().await?;
    anyhow::ensure!(manifest.status() == 200, "manifest through {mirror}: {}", manifest.status());
    assert_eq!(manifest.bytes().await?, image.manifest_bytes, "manifest through {mirror}");
    let blobs = image.blobs().map(|blob| {
        let (http, url) = (http.clone(), format!("{base}/blobs/{}?{ns}", blob.digest));
        async move {
            let resp = http.get(&url).send().await?;
            anyhow::ensure!(resp.status() == 200, "{url}: {}", resp.status());
            let bytes = resp.bytes().await?;
            anyhow::ensure!(bytes == blob.bytes, "{url}: {} bytes that are not the blob", bytes.len());
            Ok(())
        }
    });
    futures_util::future::try_join_all(blobs).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_cached_before_a_supernode_restart_is_one_swarm_again() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("swarm/again", "v1", &[2 * MIB, MIB + 3, 500 << 10], 23);
    image.push(&registry, None).await?;
    let mut cluster = Cluster::start(2, opts()).await?;
    let group = "swarm/again:v1";
    let dir = tempfile::tempdir()?;
    let pull = |cluster: &Cluster, from: usize, tag: &str| {
        let mut runs = Vec::new();
        for (i, d) in cluster.daemons.iter().enumerate().skip(from) {
            for (k, blob) in image.blobs().enumerate() {
                let url = format!("{}/v2/{}/blobs/{}", registry.url(), image.name, blob.digest);
                let out = dir.path().join(format!("{tag}-d{i}-b{k}"));
                runs.push((d.dfget(&url, out.clone()).digest(&blob.digest).group(group), out, blob.digest.clone()));
            }
        }
        runs
    };
    let first = pull(&cluster, 0, "first");
    let calls: Vec<_> = first.iter().map(|(run, _, _)| run.clone()).collect();
    for (run, output) in calls.iter().zip(run_all(&calls).await?) {
        ensure_success(&output, &run.to_string())?;
    }
    let scoped = format!("{} {group}", registry.url());
    assert_one_swarm(&cluster, &image, &scoped).await?;

    // The supernode restarts: its cache comes back blob by blob, each a task of its own.
    cluster.supernode.restart().await?;
    let mark = registry.mark().await?;
    // Two new hosts pull the image with the group: the cached blobs join one swarm again, with
    // the first hosts as their seeds, and nothing leaves the registry.
    cluster.add_daemon().await?;
    cluster.add_daemon().await?;
    let second = pull(&cluster, 2, "second");
    let calls: Vec<_> = second.iter().map(|(run, _, _)| run.clone()).collect();
    for (run, output) in calls.iter().zip(run_all(&calls).await?) {
        ensure_success(&output, &run.to_string())?;
    }
    for (_, out, digest) in &second {
        assert_eq!(format!("sha256:{}", file_sha256(out)?), *digest);
    }
    let log = registry.since(mark).await?;
    assert_eq!(log.blob_bytes_served(), 0, "a restarted supernode serves what it holds: {:?}", log.records());
    assert_one_swarm(&cluster, &image, &scoped).await?;
    Ok(())
}
