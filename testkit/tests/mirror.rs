//! The registry mirror with real engines: containerd (ctr), podman and skopeo pull a multi-layer
//! image from a real docker-registry through dfdaemons.

use std::time::Duration;

use anyhow::Context;
use damselfly_testkit::{
    hosts_dir_for, http_client, registries_conf_for, sha256_hex, skopeo_copy_via_mirror, Cluster, ClusterOpts,
    Containerd, DfdaemonOpts, Podman, Registry, RegistryOpts, TestImage,
};

const MIB: usize = 1 << 20;

fn layer_sizes() -> Vec<usize> {
    vec![3 * MIB, MIB + 1, 0, 300 << 10, 5 * MIB]
}

/// Daemons that mirror `registry` (plain HTTP), also as their default upstream.
fn mirror_opts(registry: &Registry) -> ClusterOpts {
    let args = ["--insecure-registry".to_string(), registry.host(), "--registry".to_string(), registry.url()];
    ClusterOpts { daemon: DfdaemonOpts::default().args(args), ..Default::default() }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_owned()
}

fn ok(out: &std::process::Output, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_podman_and_skopeo_pull_through_three_daemons_and_each_blob_leaves_the_registry_once(
) -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/app", "v1", &layer_sizes(), 11);
    image.push(&registry, None).await?;
    let cluster = Cluster::start(3, mirror_opts(&registry)).await?;
    let reference = image.reference(&registry.host());
    let containerd = Containerd::start().await?;
    let hosts = hosts_dir_for(&registry.host(), &host_of(&cluster.daemons[0].proxy_url()))?;
    let podman = Podman::new()?;
    let podman_conf =
        registries_conf_for(&registry.host(), &registry.host(), &host_of(&cluster.daemons[1].proxy_url()))?;
    let skopeo_conf =
        registries_conf_for(&registry.host(), &registry.host(), &host_of(&cluster.daemons[2].proxy_url()))?;
    let skopeo_out = tempfile::tempdir()?;

    let mark = registry.mark().await?;
    let (c, p, s) = tokio::join!(
        containerd.pull(&reference, hosts.path()),
        podman.pull(&reference, podman_conf.path()),
        skopeo_copy_via_mirror(&reference, skopeo_conf.path(), skopeo_out.path()),
    );
    ok(&c?, "ctr pull")?;
    ok(&p?, "podman pull")?;
    ok(&s?, "skopeo copy")?;

    let check = containerd.image_check(&reference).await?.context("containerd has the image")?;
    assert_eq!(check.digest, image.manifest_digest, "containerd stored the source manifest");
    assert!(check.complete && check.unpacked, "containerd has every blob and unpacked it: {check:?}");
    assert_eq!(podman.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
    for blob in image.layers.iter().chain([&image.config]) {
        let file = skopeo_out.path().join(blob.digest.trim_start_matches("sha256:"));
        let bytes = std::fs::read(&file).with_context(|| format!("skopeo wrote {}", file.display()))?;
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), blob.digest);
    }
    let log = registry.since(mark).await?;
    for blob in image.layers.iter().chain([&image.config]) {
        assert_eq!(log.blob_gets(&blob.digest), 1, "blob {} left the registry once: {:?}", blob.digest, log.records());
    }
    assert_eq!(log.blob_bytes_served(), image.total_blob_bytes());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_registry_pulls_with_the_right_credentials_and_refuses_wrong_ones() -> anyhow::Result<()> {
    let registry =
        Registry::start(RegistryOpts { htpasswd: Some(("alice".into(), "s3cret".into())), ..Default::default() })
            .await?;
    let image = TestImage::generate("private/app", "v1", &[2 * MIB, 4096], 12);
    image.push(&registry, Some(("alice", "s3cret"))).await?;
    let cluster = Cluster::start(1, mirror_opts(&registry)).await?;
    let reference = image.reference(&registry.host());
    let containerd = Containerd::start().await?;
    let hosts = hosts_dir_for(&registry.host(), &host_of(&cluster.daemons[0].proxy_url()))?;

    let wrong = containerd.pull_with(&reference, hosts.path(), &["--user", "alice:wrong"]).await?;
    assert!(!wrong.status.success(), "wrong credentials must fail");
    let text = format!("{}{}", String::from_utf8_lossy(&wrong.stdout), String::from_utf8_lossy(&wrong.stderr));
    assert!(text.contains("401") || text.to_lowercase().contains("unauthorized"), "engine saw a 401: {text}");

    let mark = registry.mark().await?;
    ok(
        &containerd.pull_with(&reference, hosts.path(), &["--user", "alice:s3cret"]).await?,
        "ctr pull with credentials",
    )?;
    let check = containerd.image_check(&reference).await?.context("image present")?;
    assert_eq!(check.digest, image.manifest_digest);
    // The blobs came through the swarm (the supernode fetched them with the engine's credentials).
    let m = cluster.daemons[0].metrics().await?;
    let swarm = m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "supernode")])
        + m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "peer")]);
    assert_eq!(swarm, image.total_blob_bytes() as f64, "every blob byte came through the swarm");
    let log = registry.since(mark).await?;
    for blob in image.layers.iter().chain([&image.config]) {
        assert_eq!(log.blob_gets(&blob.digest), 1);
    }
    // No credential reached a log.
    let logs = std::fs::read_to_string(cluster.supernode.log_path())?
        + &std::fs::read_to_string(cluster.daemons[0].log_path())?;
    assert!(!logs.contains("s3cret") && !logs.contains("YWxpY2U6czNjcmV0"), "credentials leaked into a log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_supernode_down_the_mirror_falls_back_to_the_registry() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/fallback", "v1", &[2 * MIB, 1000], 13);
    image.push(&registry, None).await?;
    let mut cluster = Cluster::start(1, mirror_opts(&registry)).await?;
    cluster.supernode.kill().await?;
    let reference = image.reference(&registry.host());
    let containerd = Containerd::start().await?;
    let hosts = hosts_dir_for(&registry.host(), &host_of(&cluster.daemons[0].proxy_url()))?;
    ok(&containerd.pull(&reference, hosts.path()).await?, "ctr pull with the supernode down")?;
    let check = containerd.image_check(&reference).await?.context("image present")?;
    assert_eq!(check.digest, image.manifest_digest);
    let m = cluster.daemons[0].metrics().await?;
    let from_origin = m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", "origin")]);
    assert_eq!(from_origin, image.total_blob_bytes() as f64, "the daemon itself fetched every blob from the registry");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_head_and_errors_follow_the_distribution_spec() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/spec", "v1", &[3 * MIB + 17], 14);
    image.push(&registry, None).await?;
    let cluster = Cluster::start(1, mirror_opts(&registry)).await?;
    let base = format!("{}/v2/demo/spec", cluster.daemons[0].proxy_url());
    let ns = format!("ns={}", registry.host());
    let layer = &image.layers[0];
    let blob_url = format!("{base}/blobs/{}?{ns}", layer.digest);
    let http = http_client();

    let head = http.head(&blob_url).send().await?;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], layer.size().to_string().as_str());
    assert_eq!(head.headers()["docker-content-digest"], layer.digest.as_str());

    let ranged = http.get(&blob_url).header("Range", "bytes=1048570-1048599").send().await?;
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["content-range"], format!("bytes 1048570-1048599/{}", layer.size()).as_str());
    assert_eq!(ranged.bytes().await?, layer.bytes.slice(1048570..1048600));
    let tail = http.get(&blob_url).header("Range", "bytes=-5").send().await?;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await?, layer.bytes.slice(layer.bytes.len() - 5..));
    let beyond = http.get(&blob_url).header("Range", format!("bytes={}-", layer.size() + 10)).send().await?;
    assert_eq!(beyond.status(), 416);

    let full = http.get(&blob_url).send().await?;
    assert_eq!(full.status(), 200);
    assert_eq!(full.bytes().await?, layer.bytes);

    let manifest = http
        .head(format!("{base}/manifests/v1?{ns}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await?;
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["docker-content-digest"], image.manifest_digest.as_str());
    assert_eq!(manifest.headers()["content-type"], image.manifest_media_type);

    let unknown = format!("sha256:{}", "0".repeat(64));
    let missing = http.get(format!("{base}/blobs/{unknown}?{ns}")).send().await?;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await?;
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
    let bad = http.get(format!("{base}/blobs/sha256:nothex?{ns}")).send().await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_that_does_not_match_its_digest_is_broken_off_and_never_served() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    let image = TestImage::generate("demo/corrupt", "v1", &[2 * MIB + 3], 15);
    image.push(&registry, None).await?;
    // The registry's disk goes bad: same length, different bytes.
    let layer = &image.layers[0];
    let hex = layer.digest.trim_start_matches("sha256:");
    let data = registry.storage_dir().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = std::fs::read(&data).with_context(|| format!("read {}", data.display()))?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes)?;

    let cluster = Cluster::start(1, mirror_opts(&registry)).await?;
    let url =
        format!("{}/v2/demo/corrupt/blobs/{}?ns={}", cluster.daemons[0].proxy_url(), layer.digest, registry.host());
    for attempt in 0..2 {
        let resp = http_client().get(&url).timeout(Duration::from_secs(60)).send().await?;
        if !resp.status().is_success() {
            continue; // refused before the first byte: fine too
        }
        // An error here is the body breaking off: what an engine must see.
        if let Ok(b) = resp.bytes().await {
            anyhow::ensure!(b.len() < layer.bytes.len(), "attempt {attempt}: a corrupt blob was delivered whole");
        }
    }
    Ok(())
}
