//! Test toolkit for Damselfly: real processes and real servers on loopback, no mocks.
//!
//! Integration tests (in `testkit/tests/`) start the workspace binaries as child processes, each
//! on its own `127.0.0.N` address, and an in-process [`Origin`] that counts every byte it serves:
//!
//! ```no_run
//! use damselfly_testkit::{random_bytes, run_all, sha256_digest, ensure_success, file_sha256,
//!     sha256_hex, Cluster, ClusterOpts, Origin};
//!
//! #[tokio::test]
//! async fn three_daemons_fetch_once_from_the_origin() -> anyhow::Result<()> {
//!     let origin = Origin::start()?;
//!     let blob = random_bytes(64 << 20, 7);
//!     origin.add("/blob", blob.clone());
//!     let cluster = Cluster::start(3, ClusterOpts::default()).await?;
//!
//!     let dir = tempfile::tempdir()?;
//!     let runs: Vec<_> = cluster.daemons.iter().enumerate()
//!         .map(|(i, d)| d.dfget(&origin.url("/blob"), dir.path().join(format!("{i}")))
//!             .digest(&sha256_digest(&blob)))
//!         .collect();
//!     for (run, output) in runs.iter().zip(run_all(&runs).await?) {
//!         ensure_success(&output, &run.to_string())?;
//!         assert_eq!(file_sha256(run.output_path())?, sha256_hex(&blob));
//!     }
//!
//!     assert_eq!(origin.bytes_served(), blob.len() as u64);
//!     let sn = cluster.supernode.metrics().await?;
//!     assert_eq!(sn.get("damselfly_supernode_origin_bytes_total"), blob.len() as f64);
//!     for m in cluster.daemon_metrics().await? {
//!         let from_peers = m.get_labeled("damselfly_dfdaemon_download_bytes_total",
//!             &[("source", "peer")]);
//!         assert!(from_peers >= 0.0);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! - Binaries are looked up next to the test executable ([`bin_path`]): build them first with
//!   `cargo build --workspace --bins` (a test build does not build other packages' binaries).
//! - Each [`Supernode`] / [`Dfdaemon`] owns a temp dir with its data dir and a log file; the last
//!   50 lines of the log are printed when it fails to start or when the test panics
//!   (`DAMSELFLY_KEEP_TEST_DIRS=1` keeps the whole dir). Processes are SIGKILLed on drop.
//! - [`Origin`] runs on its own thread and runtime: it keeps serving whatever flavour of runtime
//!   the test uses.
//!
//! # Registries, images and container engines
//!
//! [`Registry`] runs the real CNCF registry (`docker-registry`, optionally private or a
//! pull-through cache) and counts what it served from its access log; [`TestImage`] and
//! [`TestIndex`] build deterministic OCI or Docker images in memory and push them; [`Containerd`],
//! [`Podman`], [`skopeo_copy_via_mirror`] and [`Dockerd`] pull with the real engines, configured
//! from the very files under `deploy/` ([`hosts_dir_for`], [`registries_conf_for`],
//! [`docker_daemon_json_for`]):
//!
//! ```no_run
//! # async fn example(mirror_host: &str) -> anyhow::Result<()> {
//! use damselfly_testkit::{ensure_success, hosts_dir_for, Containerd, Registry, RegistryOpts, TestImage};
//!
//! let registry = Registry::start(RegistryOpts::default()).await?;
//! let image = TestImage::generate("demo/app", "v1", &[8 << 20, 1 << 20, 0], 42);
//! image.push(&registry, None).await?;
//! let containerd = Containerd::start().await?;
//! let hosts = hosts_dir_for(&registry.host(), mirror_host)?; // mirror_host: a dfdaemon's proxy
//! let mark = registry.mark().await?;
//! ensure_success(&containerd.pull(&image.reference(&registry.host()), hosts.path()).await?, "pull")?;
//! let log = registry.since(mark).await?;
//! assert!(log.blob_bytes_served() <= image.total_blob_bytes());
//! # Ok(()) }
//! ```
//!
//! The engines need root (mounts, namespaces) and the Debian packages `scripts/setup.sh` installs.
//!
//! [`Prometheus`] runs a real Prometheus server scraping the test's processes, to evaluate the
//! Grafana dashboard's queries against a running node.

mod access_log;
mod bins;
mod cluster;
mod containerd;
mod data;
mod dfdaemon;
mod dfget;
mod docker;
mod http;
mod image;
mod metrics;
mod net;
mod node;
mod origin;
mod podman;
mod process;
mod prometheus;
mod push;
mod registry;
mod supernode;
mod templates;
mod wait;

pub use access_log::{AccessLog, AccessMark, AccessRecord};
pub use bins::{bin_path, target_dir, BIN_DIR_ENV};
pub use cluster::{Cluster, ClusterOpts};
pub use containerd::{hosts_dir_for, Containerd, ImageCheck};
pub use data::{file_sha256, random_bytes, sha256_digest, sha256_hex};
pub use dfdaemon::{Dfdaemon, DfdaemonOpts};
pub use dfget::{dfget, ensure_success, run_all, DfgetChild, DfgetRun};
pub use docker::{docker_daemon_json_for, ensure_docker, DockerImage, Dockerd};
pub use http::{base64_standard, basic_auth, http_client};
pub use image::{media_types, Blob, ImageFormat, Platform, TestImage, TestIndex};
pub use metrics::{Metrics, Sample};
pub use net::{free_tcp_port, free_udp_port, loopback_ip};
pub use node::Node;
pub use origin::{Origin, RequestRecord};
pub use podman::{podman_pull, registries_conf_for, skopeo_copy_via_mirror, skopeo_copy_with, Podman};
pub use process::KEEP_DIRS_ENV;
pub use prometheus::{
    prometheus_bin_dir, promtool_check_config, Prometheus, ScrapeJob, PROMETHEUS_DIR_ENV, SCRAPE_INTERVAL,
};
pub use registry::{Registry, RegistryOpts};
pub use supernode::{Supernode, SupernodeOpts};
pub use templates::{fill_template, CONTAINERD_HOSTS_TOML, DOCKER_DAEMON_JSON, REGISTRIES_CONF};
pub use wait::{eventually, eventually_some};
