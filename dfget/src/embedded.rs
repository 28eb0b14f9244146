//! The embedded peer: with no daemon on the host and `--supernode` given, dfget runs a
//! [`dfdaemon`] in-process for the download (no origin fallback: without the swarm it has
//! nothing to add).
//!
//! Its data dir is a persistent per-user cache, `--cache-dir` / `$DFGET_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/damselfly/dfget`, else `~/.cache/damselfly/dfget` (mode 0700: it holds the
//! peer's key). So a rerun of an interrupted download finds the partial task in the store,
//! which re-hashes the pieces it holds and registers with them as `have`: only the missing
//! pieces are fetched. A rerun of a finished download takes the file from the cache.
//!
//! dfgets running at once each take a numbered slot `DIR/N` (a RocksDB store has one writer),
//! locked with `flock` on `DIR/N.lock`; the lock dies with the process, so a killed dfget's
//! slot is the next run's. With every slot taken, or no home directory, a temporary dir serves
//! for this download only. Each slot is bounded by `--cache-quota` (least recently used
//! finished downloads are evicted first) and forgets what was not read for [`CACHE_TTL`].

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_types::size::ByteSize;
use rustix::fs::{flock, FlockOperation};

use crate::exit::{self, Exit, Failure, OrExit};
use crate::output::Ui;

/// Slots tried before falling back to a temporary cache.
const SLOTS: u32 = 8;
/// Finished downloads not read for this long leave the cache.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait for the embedded peer to join the supernode.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the embedded peer to record its state at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run the embedded peer.
#[derive(Debug, Clone)]
pub(crate) struct EmbeddedOpts {
    /// Supernode `HOST:PORT`.
    pub(crate) supernode: String,
    /// The cluster's join token file.
    pub(crate) join_token_file: Option<PathBuf>,
    /// The cluster CA (optional: the token pins it).
    pub(crate) ca_cert: Option<PathBuf>,
    /// Cache root; `None`: the per-user default.
    pub(crate) cache_dir: Option<PathBuf>,
    /// Disk quota of a slot.
    pub(crate) cache_quota: ByteSize,
}

/// A running in-process peer.
pub(crate) struct Embedded {
    /// Its dfget API.
    pub(crate) url: String,
    _dir: CacheDir,
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// The data dir in use, held for the peer's lifetime.
enum CacheDir {
    /// A slot of the persistent cache, and its lock (held until the peer stops).
    Slot { path: PathBuf, _lock: std::fs::File },
    /// A temporary dir, removed at the end.
    Temp(tempfile::TempDir),
}

impl CacheDir {
    fn path(&self) -> &Path {
        match self {
            Self::Slot { path, .. } => path,
            Self::Temp(dir) => dir.path(),
        }
    }
}

impl Embedded {
    /// Starts the peer: enrolls (when its slot has no valid certificate yet) and serves its API.
    pub(crate) async fn start(opts: &EmbeddedOpts, ui: &Ui) -> exit::Result<Self> {
        let dir = claim(opts.cache_dir.clone().or_else(default_root), ui)?;
        let config = dfdaemon::DaemonConfig {
            supernodes: vec![opts.supernode.clone()],
            proxy_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            data_dir: dir.path().to_owned(),
            ca_cert: opts.ca_cert.clone(),
            join_token_file: opts.join_token_file.clone(),
            cache_quota: Some(opts.cache_quota),
            cache_ttl: Some(CACHE_TTL),
            origin_fallback: false,
            ..Default::default()
        };
        let (stop, rx) = tokio::sync::watch::channel(false);
        let sn = &opts.supernode;
        let (bound, _, handle) = tokio::time::timeout(START_TIMEOUT, dfdaemon::start(config, rx))
            .await
            .map_err(|_| Failure::new(Exit::NoSwarm, format!("supernode {sn} unreachable (timed out)")))?
            .or_exit_with(Exit::NoSwarm, || format!("cannot start an embedded peer with supernode {sn}"))?;
        Ok(Self { url: format!("http://{}", bound.proxy), _dir: dir, stop, handle })
    }

    /// Stops the peer, letting it record what it holds (a rerun resumes from there).
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.handle).await;
    }
}

/// `$XDG_CACHE_HOME/damselfly/dfget`, else `$HOME/.cache/damselfly/dfget`.
fn default_root() -> Option<PathBuf> {
    let absolute = |var: &str| std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute("XDG_CACHE_HOME").or_else(|| absolute("HOME").map(|home| home.join(".cache")))?;
    Some(base.join("damselfly").join("dfget"))
}

/// The first free slot under `root`, or a temporary dir.
fn claim(root: Option<PathBuf>, ui: &Ui) -> exit::Result<CacheDir> {
    let Some(root) = root else { return temporary() };
    let what = || format!("cannot use the cache dir {} (choose another with --cache-dir)", root.display());
    private_dir(&root).or_exit_with(Exit::Local, what)?;
    for slot in 0..SLOTS {
        let lock = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(root.join(format!("{slot}.lock")))
            .or_exit_with(Exit::Local, what)?;
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                let path = root.join(slot.to_string());
                private_dir(&path).or_exit_with(Exit::Local, what)?;
                return Ok(CacheDir::Slot { path, _lock: lock });
            }
            Err(e) if std::io::Error::from(e).kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(std::io::Error::from(e)).or_exit_with(Exit::Local, what),
        }
    }
    ui.info(format!("every cache slot under {} is in use: this download uses a temporary cache", root.display()));
    temporary()
}

fn temporary() -> exit::Result<CacheDir> {
    let dir = tempfile::Builder::new()
        .prefix("dfget-peer-")
        .tempdir()
        .or_exit_with(Exit::Local, || "cannot create a temporary directory for the embedded peer")?;
    Ok(CacheDir::Temp(dir))
}

/// Creates `path` (and its parents) readable by this user only.
fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_one_per_process_and_freed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let ui = Ui::new(true, true);
        let first = claim(Some(root.path().to_owned()), &ui).unwrap();
        let second = claim(Some(root.path().to_owned()), &ui).unwrap();
        assert_eq!(first.path(), root.path().join("0"));
        assert_eq!(second.path(), root.path().join("1"));
        drop(first);
        let again = claim(Some(root.path().to_owned()), &ui).unwrap();
        assert_eq!(again.path(), root.path().join("0"), "a freed slot is reused, so a rerun resumes");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.path().join("0")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn with_every_slot_taken_a_temporary_dir_serves() {
        let root = tempfile::tempdir().unwrap();
        let ui = Ui::new(true, true);
        let held: Vec<_> = (0..SLOTS).map(|_| claim(Some(root.path().to_owned()), &ui).unwrap()).collect();
        let extra = claim(Some(root.path().to_owned()), &ui).unwrap();
        assert!(matches!(extra, CacheDir::Temp(_)));
        drop(held);
    }
}
