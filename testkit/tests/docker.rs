//! Docker for real: three Docker Engines (`dockerd`, Debian's docker.io) pull a Docker Hub name
//! through their hosts' dfdaemons, configured with `deploy/docker/daemon.json`
//! (`registry-mirrors`), and the registry serves each blob once.
//!
//! Docker sends only Docker Hub names to `registry-mirrors`, so the daemons' `--registry` (the
//! upstream of requests that name no registry) stands in for Docker Hub: a real docker-registry
//! on loopback holding `library/dmfapp:v1`. Without internet, a pull that did not go through the
//! mirror (registry-1.docker.io) could not succeed.
//!
//! Needs root and Debian's docker.io (installed when missing); uses the workspace binaries
//! (`cargo build --bins` first).

use std::time::Instant;

use anyhow::Context;
use damselfly_testkit::{
    docker_daemon_json_for, ensure_docker, ensure_success, Cluster, ClusterOpts, DfdaemonOpts, Dockerd, ImageFormat,
    Platform, Registry, RegistryOpts, TestImage,
};
use futures_util::future::try_join_all;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_docker_engines_pull_through_registry_mirrors_and_each_blob_leaves_the_registry_once(
) -> anyhow::Result<()> {
    ensure_docker()?;
    let started = Instant::now();
    let registry = Registry::start(RegistryOpts::default()).await?;
    // Docker Hub images: Docker media types, official images under `library/`.
    let layers = [4 * MIB, MIB + 1, 0, 300 << 10, 6 * MIB];
    let image =
        TestImage::generate_as(ImageFormat::Docker, &Platform::linux_amd64(), "library/dmfapp", "v1", &layers, 41);
    image.push(&registry, None).await?;

    let args = ["--registry".to_string(), registry.url(), "--insecure-registry".to_string(), registry.host()];
    let cluster =
        Cluster::start(3, ClusterOpts { daemon: DfdaemonOpts::default().args(args), ..Default::default() }).await?;
    let configs = cluster
        .daemons
        .iter()
        .map(|d| docker_daemon_json_for(&d.proxy_addr().to_string()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let engines = try_join_all(configs.iter().map(Dockerd::start)).await?;
    println!("registry, supernode, 3 dfdaemons and 3 dockerd ready in {:.1?}", started.elapsed());
    for (engine, daemon) in engines.iter().zip(&cluster.daemons) {
        let info = engine.info().await?;
        let mirrors = &info["RegistryConfig"]["Mirrors"];
        assert_eq!(mirrors, &serde_json::json!([format!("{}/", daemon.proxy_url())]), "dockerd read daemon.json");
    }

    let mark = registry.mark().await?;
    let pull_started = Instant::now();
    let outputs = try_join_all(engines.iter().map(|e| e.pull("dmfapp:v1"))).await?;
    for output in &outputs {
        ensure_success(output, "docker pull dmfapp:v1")?;
    }
    println!(
        "3 x docker pull dmfapp:v1 ({} bytes of blobs) in {:.1?}",
        image.total_blob_bytes(),
        pull_started.elapsed()
    );

    for engine in &engines {
        let pulled = engine.image("dmfapp:v1").await?.context("docker has dmfapp:v1")?;
        assert_eq!(pulled.id, image.config.digest, "the image id is the config's digest");
        let by_digest = format!("dmfapp@{}", image.manifest_digest);
        assert!(pulled.repo_digests.contains(&by_digest), "{:?} has {by_digest}", pulled.repo_digests);
    }
    let log = registry.since(mark).await?;
    for blob in image.blobs() {
        assert_eq!(log.blob_gets(&blob.digest), 1, "blob {} left the registry once: {:?}", blob.digest, log.records());
    }
    assert_eq!(log.blob_bytes_served(), image.total_blob_bytes());
    // Every engine got every blob byte from its own dfdaemon (the swarm or, for the one that
    // fetched first, the supernode), none straight from the registry.
    for (i, metrics) in cluster.daemon_metrics().await?.iter().enumerate() {
        let from = |source| metrics.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", source)]);
        assert_eq!(from("origin"), 0.0, "daemon {i} fell back to the registry");
        assert_eq!(from("peer") + from("supernode"), image.total_blob_bytes() as f64, "daemon {i}");
    }
    drop(engines);
    println!("whole test in {:.1?}", started.elapsed());
    Ok(())
}
