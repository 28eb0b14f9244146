//! A real OCI registry (`docker-registry serve`, the CNCF distribution) on loopback, and its
//! access log parsed into records a test can count.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;

use crate::access_log::{AccessLog, AccessMark, LogReader, SYNC_QUERY};
use crate::eventually;
use crate::node::Node;
use crate::process::{self, ScratchDir, Spec};

/// The registry binary, from Debian's `docker-registry` package.
const REGISTRY_PROGRAM: &str = "docker-registry";

/// Every manifest media type the testkit produces, for `Accept` headers.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How to start a [`Registry`]. `Default`: an open registry on `127.0.0.1`.
#[derive(Debug, Clone, Default)]
pub struct RegistryOpts {
    /// `(user, password)`: the registry wants HTTP basic auth for everything (`auth.htpasswd`,
    /// bcrypt file made by `htpasswd -Bbn`), like a private registry.
    pub htpasswd: Option<(String, String)>,
    /// `http://HOST:PORT` of another registry: this one becomes a pull-through cache of it
    /// (`proxy.remoteurl`), the "regional mirror" people run today. Pushes are refused then.
    pub proxy_remote: Option<String>,
    /// Address to listen on; default `127.0.0.1`.
    pub ip: Option<Ipv4Addr>,
}

/// A running `docker-registry serve TMP/config.yml` on a free port, storing blobs under
/// `TMP/storage`, with its access log on.
///
/// Its output goes to `TMP/registry.log` (last 50 lines printed when it fails to start or the
/// test panics). SIGKILLed when dropped. The access log (combined log format, one line per
/// request) is parsed by [`Registry::access_log`]:
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use damselfly_testkit::{Registry, RegistryOpts, TestImage};
///
/// let registry = Registry::start(RegistryOpts::default()).await?;
/// let image = TestImage::generate("demo/app", "v1", &[1 << 20, 0], 7);
/// image.push(&registry, None).await?;
/// let mark = registry.mark().await?;
/// // ... let an engine pull image.reference(&registry.host()) ...
/// let log = registry.since(mark).await?;
/// for layer in &image.layers {
///     assert_eq!(log.blob_gets(&layer.digest), 1);
/// }
/// assert_eq!(log.blob_bytes_served(), image.total_blob_bytes());
/// # Ok(()) }
/// ```
pub struct Registry {
    auth: Option<(String, String)>,
    log: Mutex<LogReader>,
    next_sync: AtomicU64,
    node: Node,
}

// The process's lifecycle (`kill`: the registry is down, engines then fail or fall back;
// `restart`: same port and storage, the access log carries on and marks taken before stay
// valid) is `Node`'s.
crate::node::deref_to_node!(Registry);

impl Registry {
    /// Writes the config (and the htpasswd file), starts the registry on a free port of `opts.ip`
    /// and waits until `GET /v2/` answers 200 (with the credentials when `htpasswd` is set).
    pub async fn start(opts: RegistryOpts) -> anyhow::Result<Self> {
        let ip = opts.ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let dir = ScratchDir::new("damselfly-registry-")?;
        let htpasswd_path = match &opts.htpasswd {
            Some((user, password)) => Some(write_htpasswd(dir.path(), user, password).await?),
            None => None,
        };
        let log_path = dir.path().join("registry.log");
        let cwd = dir.path().to_path_buf();
        let make_spec = |port: u16, _udp: u16| {
            let config = config_yaml(&cwd, SocketAddr::from((ip, port)), htpasswd_path.as_deref(), &opts);
            let config_path = cwd.join("config.yml");
            let written = std::fs::write(&config_path, config);
            let userinfo = match &opts.htpasswd {
                Some((user, password)) => format!("{user}:{password}@"),
                None => String::new(),
            };
            if let Err(e) = written {
                eprintln!("write {}: {e}", config_path.display());
            }
            Spec {
                name: format!("registry {ip}:{port}"),
                program: REGISTRY_PROGRAM.into(),
                args: vec!["serve".into(), config_path.into_os_string()],
                env: vec![],
                cwd: cwd.clone(),
                log_path: log_path.clone(),
                // reqwest turns the URL's userinfo into a basic auth header. The marker query
                // keeps readiness probes out of the access records.
                health_url: format!("http://{userinfo}{ip}:{port}/v2/?{SYNC_QUERY}=0"),
                ready_timeout: process::READY_TIMEOUT,
            }
        };
        let node = Node::start(ip, dir, make_spec)
            .await
            .context("start docker-registry (Debian package docker-registry; scripts/setup.sh installs it)")?;
        Ok(Registry {
            auth: opts.htpasswd,
            log: Mutex::new(LogReader::new(log_path)),
            next_sync: AtomicU64::new(1),
            node,
        })
    }

    /// `IP:PORT`, as image references and engine configs name the registry.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.node.base_url()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.node.tcp_addr()
    }

    /// The credentials it wants, when started with `htpasswd`.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// `storage.filesystem.rootdirectory`.
    pub fn storage_dir(&self) -> PathBuf {
        self.temp_dir().join("storage")
    }

    /// Every access record so far, in the order the registry logged them.
    ///
    /// Settles first (see [`Registry::mark`]), so that requests whose responses a client has
    /// fully read are in the result. Marker requests are left out.
    pub async fn access_log(&self) -> anyhow::Result<AccessLog> {
        self.sync().await?;
        Ok(self.reader().all())
    }

    /// A point in the access log: [`Registry::since`] counts only the requests after it.
    ///
    /// The registry writes a request's log line only after the response's last byte went out,
    /// and on a loaded machine that can come after the client read the whole body (measured:
    /// a proxied blob's upstream GET logged after the next request). So this and every other
    /// log reader settle first: send a marker request, wait until it shows in the log, then
    /// wait until the log has been quiet for 100 ms (at most 3 s). Take marks and read counts
    /// once the pulls the test counts have finished.
    pub async fn mark(&self) -> anyhow::Result<AccessMark> {
        self.sync().await?;
        Ok(self.reader().mark())
    }

    /// The access records logged after `mark`.
    pub async fn since(&self, mark: AccessMark) -> anyhow::Result<AccessLog> {
        self.sync().await?;
        Ok(self.reader().since(mark))
    }

    /// `GET .../blobs/<digest>` answered 200 or 206, over the whole log.
    pub async fn blob_gets(&self, digest: &str) -> anyhow::Result<usize> {
        Ok(self.access_log().await?.blob_gets(digest))
    }

    /// Requests of any method to any `.../blobs/...` path (uploads included), over the whole log.
    pub async fn blob_requests(&self) -> anyhow::Result<usize> {
        Ok(self.access_log().await?.blob_requests())
    }

    /// Body bytes of all blob `GET`s, over the whole log.
    pub async fn blob_bytes_served(&self) -> anyhow::Result<u64> {
        Ok(self.access_log().await?.blob_bytes_served())
    }

    /// `GET /v2/<name>/manifests/<reference>` accepting every manifest type, with the registry's
    /// credentials. Returns the `Content-Type` and the body; fails unless the answer is 200.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> anyhow::Result<(String, Bytes)> {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.url());
        let response = self
            .request(reqwest::Method::GET, &url)
            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.bytes().await.with_context(|| format!("read the body of GET {url}"))?;
        if status != reqwest::StatusCode::OK {
            bail!("GET {url} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok((content_type, body))
    }

    /// `GET /v2/<name>/blobs/<digest>` with the registry's credentials; fails unless 200.
    pub async fn get_blob(&self, name: &str, digest: &str) -> anyhow::Result<Bytes> {
        let url = format!("{}/v2/{name}/blobs/{digest}", self.url());
        let response = self.request(reqwest::Method::GET, &url).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| format!("read the body of GET {url}"))?;
        if status != reqwest::StatusCode::OK {
            bail!("GET {url} answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// A request with the registry's credentials, if it has any.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let builder = self.node.client().request(method, url).timeout(Duration::from_secs(60));
        match &self.auth {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, LogReader> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `GET /v2/?damselfly-testkit-sync=N` and waits until the registry logged it. A
    /// registry the test killed or stopped has written all it will: its log is just read.
    async fn sync(&self) -> anyhow::Result<()> {
        if self.pid().is_none() {
            return self.reader().refresh();
        }
        let n = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/v2/?{SYNC_QUERY}={n}", self.url());
        // Any answer (even 401) is logged; a failed request is not, so report it.
        self.request(reqwest::Method::GET, &url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {url} (access log marker): is the registry running?"))?;
        let what = format!("registry {}: the access log marker {n} in {}", self.addr(), self.log_path().display());
        eventually(&what, Duration::from_secs(10), || std::future::ready(self.reader().saw_sync(n))).await?;
        self.wait_quiet().await
    }
}

impl Registry {
    /// Waits until the log file stops growing for [`QUIET`] (at most [`QUIET_MAX`]): lines of
    /// requests that finished just before are written by then.
    async fn wait_quiet(&self) -> anyhow::Result<()> {
        let len = || std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let mut last = (len(), tokio::time::Instant::now());
        let quiet = eventually("the registry log stops growing", QUIET_MAX, || {
            let now = len();
            if now != last.0 {
                last = (now, tokio::time::Instant::now());
            }
            std::future::ready(Ok(last.1.elapsed() >= QUIET))
        })
        .await;
        // A registry that keeps serving never is quiet: count what it has written by now.
        drop(quiet);
        self.reader().refresh()
    }
}

/// How long the access log must not grow before a count is taken.
const QUIET: Duration = Duration::from_millis(100);

/// Longest wait for a quiet log (a registry that keeps serving never is).
const QUIET_MAX: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("addr", &self.addr()).field("dir", &self.temp_dir()).finish()
    }
}

/// The registry's configuration: filesystem storage in `dir`, the access log on.
fn config_yaml(dir: &Path, addr: SocketAddr, htpasswd: Option<&Path>, opts: &RegistryOpts) -> String {
    // JSON strings are YAML strings: quoting by serde_json escapes any path.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let storage = dir.join("storage");
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {}\n  secret: damselfly-testkit-secret\n",
        quote(&storage.to_string_lossy()),
        quote(&addr.to_string()),
    );
    if let Some(path) = htpasswd {
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: damselfly-test\n    path: {}\n",
            quote(&path.to_string_lossy())
        ));
    }
    if let Some(remote) = &opts.proxy_remote {
        config.push_str(&format!("proxy:\n  remoteurl: {}\n", quote(remote)));
    }
    config
}

/// `htpasswd -Bbn user password > DIR/htpasswd` (bcrypt, which the registry requires).
async fn write_htpasswd(dir: &Path, user: &str, password: &str) -> anyhow::Result<PathBuf> {
    let output = tokio::process::Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .stdin(Stdio::null())
        .output()
        .await
        .context("run htpasswd (Debian package apache2-utils; scripts/setup.sh installs it)")?;
    crate::ensure_success(&output, "htpasswd -Bbn")?;
    let path = dir.join("htpasswd");
    std::fs::write(&path, &output.stdout).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_storage_access_log_auth_and_proxy() {
        let opts = RegistryOpts {
            htpasswd: Some(("u".into(), "p".into())),
            proxy_remote: Some("http://127.0.0.1:5000".into()),
            ip: None,
        };
        let dir = Path::new("/tmp/x y");
        let text = config_yaml(dir, "127.0.0.1:5001".parse().expect("addr"), Some(&dir.join("htpasswd")), &opts);
        assert!(text.contains("rootdirectory: \"/tmp/x y/storage\""), "{text}");
        assert!(text.contains("accesslog:\n    disabled: false"), "{text}");
        assert!(text.contains("addr: \"127.0.0.1:5001\""), "{text}");
        assert!(text.contains("path: \"/tmp/x y/htpasswd\""), "{text}");
        assert!(text.contains("remoteurl: \"http://127.0.0.1:5000\""), "{text}");
    }

    #[tokio::test]
    async fn open_registry_logs_blob_requests() -> anyhow::Result<()> {
        let registry = Registry::start(RegistryOpts::default()).await?;
        assert!(registry.host().starts_with("127.0.0.1:"));
        let first = registry.access_log().await?;
        assert!(first.records().is_empty(), "markers must be left out: {:?}", first.records());
        let mark = registry.mark().await?;
        let missing = format!("sha256:{}", "0".repeat(64));
        let response = crate::http_client().get(format!("{}/v2/x/blobs/{missing}", registry.url())).send().await?;
        assert_eq!(response.status(), 404);
        let log = registry.since(mark).await?;
        assert_eq!(log.records().len(), 1, "{:?}", log.records());
        let record = &log.records()[0];
        assert_eq!((record.method.as_str(), record.status), ("GET", 404));
        assert_eq!(record.path, format!("/v2/x/blobs/{missing}"));
        assert_eq!(log.blob_requests(), 1);
        assert_eq!(log.blob_gets(&missing), 0, "a 404 is not a blob served");
        assert!(registry.since(registry.mark().await?).await?.records().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn htpasswd_registry_wants_credentials() -> anyhow::Result<()> {
        let opts = RegistryOpts { htpasswd: Some(("alice".into(), "s3cret".into())), ..RegistryOpts::default() };
        let registry = Registry::start(opts).await?;
        let client = crate::http_client();
        let anonymous = client.get(format!("{}/v2/", registry.url())).send().await?;
        assert_eq!(anonymous.status(), 401);
        let challenge = anonymous.headers().get("www-authenticate").and_then(|v| v.to_str().ok());
        assert_eq!(challenge, Some("Basic realm=\"damselfly-test\""));
        let wrong = client.get(format!("{}/v2/", registry.url())).basic_auth("alice", Some("nope")).send().await?;
        assert_eq!(wrong.status(), 401);
        let right = client.get(format!("{}/v2/", registry.url())).basic_auth("alice", Some("s3cret")).send().await?;
        assert_eq!(right.status(), 200);
        let log = registry.access_log().await?;
        let statuses: Vec<u16> = log.records().iter().map(|r| r.status).collect();
        assert!(statuses.ends_with(&[401, 401, 200]), "{statuses:?}");
        Ok(())
    }
}
