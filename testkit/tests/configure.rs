//! `dfdaemon configure containerd|podman|docker` (the real binary) writes each engine's mirror
//! configuration into a user's existing files, and the real engines read the result: containerd
//! (`ctr --hosts-dir`), podman (a registries.conf drop-in, and an edited main file) and dockerd
//! (daemon.json, applied live on SIGHUP) each pull an image through a dfdaemon. A second run
//! changes nothing and makes no backup; a file that does not parse is left alone.
//!
//! Needs root and the Debian packages scripts/setup.sh installs (docker.io is installed when
//! missing); uses the workspace binaries (`cargo build --bins` first).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context;
use damselfly_testkit::{
    bin_path, ensure_docker, ensure_success, eventually_some, Cluster, ClusterOpts, Containerd, Dfdaemon, DfdaemonOpts,
    Dockerd, ImageFormat, Platform, Podman, Registry, RegistryOpts, TestImage,
};

const MIB: usize = 1 << 20;

/// A registry holding `image`, and one dfdaemon mirroring it (plain HTTP, also its upstream).
async fn setup(image: &TestImage) -> anyhow::Result<(Registry, Cluster)> {
    let registry = Registry::start(RegistryOpts::default()).await?;
    image.push(&registry, None).await?;
    let args = ["--registry".to_string(), registry.url(), "--insecure-registry".to_string(), registry.host()];
    let opts = ClusterOpts { daemon: DfdaemonOpts::default().args(args), ..Default::default() };
    let cluster = Cluster::start(1, opts).await?;
    Ok((registry, cluster))
}

/// `dfdaemon configure ARGS...`, which must succeed; returns its stdout.
fn configure(args: &[&str]) -> anyhow::Result<String> {
    let output = configure_output(args)?;
    ensure_success(&output, &format!("dfdaemon configure {}", args.join(" ")))?;
    let stdout = String::from_utf8(output.stdout)?;
    println!("$ dfdaemon configure {}\n{stdout}", args.join(" "));
    Ok(stdout)
}

fn configure_output(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(bin_path("dfdaemon")?).arg("configure").args(args).output().context("run dfdaemon configure")
}

/// The backups `dfdaemon configure` left beside `file`.
fn backups_of(file: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = file.file_name().context("file name")?.to_string_lossy().into_owned();
    let dir = file.parent().context("parent")?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.bak-"))) {
            found.push(path);
        }
    }
    Ok(found)
}

/// Runs the same configure command again: it must report the file unchanged, leave its bytes
/// and make no backup.
fn assert_second_run_changes_nothing(args: &[&str], file: &Path) -> anyhow::Result<()> {
    let (bytes, backups) = (std::fs::read(file)?, backups_of(file)?);
    let out = configure(args)?;
    assert!(out.contains("already configured, unchanged"), "{out}");
    assert_eq!(std::fs::read(file)?, bytes, "the second run rewrote {}", file.display());
    assert_eq!(backups_of(file)?, backups, "the second run made a backup");
    Ok(())
}

/// Every blob byte of `image` reached the engine through `daemon` (the swarm), none from the
/// daemon's own fallback to the registry.
async fn assert_pulled_through(daemon: &Dfdaemon, image: &TestImage) -> anyhow::Result<()> {
    let m = daemon.metrics().await?;
    let from = |source| m.get_labeled("damselfly_dfdaemon_download_bytes_total", &[("source", source)]);
    assert_eq!(from("peer") + from("supernode"), image.total_blob_bytes() as f64, "pulled through the mirror");
    assert_eq!(from("origin"), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_pulls_through_the_hosts_toml_it_writes_into_an_existing_one() -> anyhow::Result<()> {
    let image = TestImage::generate("demo/configured", "v1", &[2 * MIB, 1000, 0], 51);
    let (registry, cluster) = setup(&image).await?;
    let daemon = &cluster.daemons[0];
    let certs_d = tempfile::tempdir()?;
    let file = certs_d.path().join(registry.host()).join("hosts.toml");
    // The user's file: a comment, and a host that is down (containerd would try it first were
    // the mirror not put before it, and fall through to the next).
    let user = format!(
        "# team registry\nserver = \"http://{}\"\n\n[host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        registry.host()
    );
    std::fs::create_dir_all(file.parent().context("dir")?)?;
    std::fs::write(&file, &user)?;

    let dir = certs_d.path().to_string_lossy().into_owned();
    let reg = registry.url();
    let mirror = daemon.proxy_url();
    let args = ["containerd", "--config-dir", &dir, "--registry", &reg, "--mirror", &mirror];
    let dry = configure(&[&args[..], &["--dry-run"]].concat())?;
    assert!(dry.contains(&format!("+[host.\"{mirror}\"]")), "{dry}");
    assert_eq!(std::fs::read_to_string(&file)?, user, "a dry run writes nothing");

    let out = configure(&args)?;
    assert!(out.contains("updated (previous content in"), "{out}");
    let backups = backups_of(&file)?;
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(&backups[0])?, user);
    let text = std::fs::read_to_string(&file)?;
    assert!(text.starts_with("# team registry\n"), "{text}");
    assert!(text.find(&mirror) < text.find("127.0.0.1:9"), "the mirror comes first:\n{text}");

    let containerd = Containerd::start().await?;
    let reference = image.reference(&registry.host());
    ensure_success(&containerd.pull(&reference, certs_d.path()).await?, "ctr images pull")?;
    let check = containerd.image_check(&reference).await?.context("containerd has the image")?;
    assert_eq!(check.digest, image.manifest_digest);
    assert!(check.complete && check.unpacked, "{check:?}");
    assert_pulled_through(daemon, &image).await?;

    assert_second_run_changes_nothing(&args, &file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn podman_pulls_through_a_drop_in_and_through_an_edited_main_file() -> anyhow::Result<()> {
    let image = TestImage::generate("demo/configured", "v1", &[MIB + 7, 300 << 10], 52);
    let (registry, cluster) = setup(&image).await?;
    let daemon = &cluster.daemons[0];
    let reference = image.reference(&registry.host());
    let reg = registry.url();
    let mirror = daemon.proxy_url();

    // A drop-in: podman's sandbox mounts its temp dir's registries.conf.d over
    // /etc/containers/registries.conf.d.
    let podman = Podman::new()?;
    let main = podman.temp_dir().join("registries.conf");
    std::fs::write(&main, "unqualified-search-registries = []\n")?;
    let drop_in = podman.temp_dir().join("registries.conf.d/50-damselfly.conf");
    let drop_in_arg = drop_in.to_string_lossy().into_owned();
    let args = ["podman", "--file", &drop_in_arg, "--registry", &reg, "--mirror", &mirror];
    let out = configure(&args)?;
    assert!(out.contains("50-damselfly.conf: written"), "{out}");
    ensure_success(&podman.pull(&reference, &main).await?, "podman pull (drop-in)")?;
    assert_eq!(podman.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
    assert_pulled_through(daemon, &image).await?;
    assert_second_run_changes_nothing(&args, &drop_in)?;

    // The main file: Debian's (comments only) plus an entry of the user's.
    let edited = tempfile::tempdir()?;
    let file = edited.path().join("registries.conf");
    let debian = std::fs::read_to_string("/etc/containers/registries.conf")?;
    let user = format!("{debian}\n[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.io\"\n");
    std::fs::write(&file, &user)?;
    let file_arg = file.to_string_lossy().into_owned();
    let args = ["podman", "--file", &file_arg, "--registry", &reg, "--mirror", &mirror];
    configure(&args)?;
    let text = std::fs::read_to_string(&file)?;
    assert!(text.starts_with(&debian[..200]) && text.contains("prefix = \"quay.io\""), "{text}");
    let fresh = Podman::new()?;
    ensure_success(&fresh.pull(&reference, &file).await?, "podman pull (main file)")?;
    assert_eq!(fresh.image_digest(&reference).await?.as_deref(), Some(image.manifest_digest.as_str()));
    // The daemon served the second pull from its cache: the registry still served each blob
    // once in all (a pull that bypassed the mirror would have fetched them again).
    let log = registry.access_log().await?;
    for blob in image.blobs() {
        assert_eq!(log.blob_gets(&blob.digest), 1, "blob {} left the registry once", blob.digest);
    }
    assert_second_run_changes_nothing(&args, &file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerd_applies_the_daemon_json_it_writes_on_sighup_and_pulls_through_it() -> anyhow::Result<()> {
    ensure_docker()?;
    let image = TestImage::generate_as(
        ImageFormat::Docker,
        &Platform::linux_amd64(),
        "library/dmfconf",
        "v1",
        &[MIB, 4096],
        53,
    );
    let (_registry, cluster) = setup(&image).await?;
    let daemon = &cluster.daemons[0];
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("daemon.json");
    let user =
        "{\n    \"labels\": [\"team=infra\"],\n    \"max-concurrent-downloads\": 2,\n    \"log-level\": \"info\"\n}\n";
    std::fs::write(&file, user)?;
    let dockerd = Dockerd::start_with_config_file(&file).await?;
    assert_eq!(dockerd.info().await?["RegistryConfig"]["Mirrors"], serde_json::json!([]));

    let file_arg = file.to_string_lossy().into_owned();
    let mirror = daemon.proxy_url();
    let args = ["docker", "--file", &file_arg, "--mirror", &mirror];
    let out = configure(&args)?;
    assert!(out.contains("updated (previous content in"), "{out}");
    assert_eq!(std::fs::read_to_string(&backups_of(&file)?[0])?, user);

    dockerd.reload()?;
    let info = wait_for_mirror(&dockerd, &mirror).await?;
    assert_eq!(info["Labels"], serde_json::json!(["team=infra"]), "the user's settings were kept");
    ensure_success(&dockerd.pull("dmfconf:v1").await?, "docker pull dmfconf:v1")?;
    let pulled = dockerd.image("dmfconf:v1").await?.context("docker has the image")?;
    assert_eq!(pulled.id, image.config.digest);
    assert_pulled_through(daemon, &image).await?;

    assert_second_run_changes_nothing(&args, &file)
}

/// Polls `docker info` until dockerd lists `mirror` (SIGHUP reloads asynchronously).
async fn wait_for_mirror(dockerd: &Dockerd, mirror: &str) -> anyhow::Result<serde_json::Value> {
    let want = serde_json::json!([format!("{mirror}/")]);
    let applied =
        eventually_some("dockerd applies the new registry-mirrors on SIGHUP", Duration::from_secs(10), || async {
            let info = dockerd.info().await?;
            Ok((info["RegistryConfig"]["Mirrors"] == want).then_some(info))
        })
        .await;
    applied.with_context(|| dockerd.log_tail(20))
}

#[test]
fn files_that_do_not_parse_are_an_error_and_left_as_they_are() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("daemon.json", "{\"debug\": true,}", "docker"),
        ("registries.conf", "[[registry]\nprefix = \"x\"", "podman"),
        ("hosts.toml", "server = ", "containerd"),
    ];
    for (name, text, engine) in cases {
        let file = match engine {
            "containerd" => dir.path().join("docker.io").join(name),
            _ => dir.path().join(name),
        };
        std::fs::create_dir_all(file.parent().context("dir")?)?;
        std::fs::write(&file, text)?;
        let path = dir.path().to_string_lossy().into_owned();
        let file_arg = file.to_string_lossy().into_owned();
        let args = match engine {
            "containerd" => vec![engine, "--config-dir", &path],
            _ => vec![engine, "--file", &file_arg],
        };
        let output = configure_output(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{engine}: {stderr}");
        assert!(stderr.contains("left unchanged") && stderr.contains("not valid"), "{engine}: {stderr}");
        assert_eq!(std::fs::read_to_string(&file)?, text, "{engine}: the file was touched");
        assert!(backups_of(&file)?.is_empty(), "{engine}: a backup of a file that was not changed");
    }
    Ok(())
}
