//! dfdaemon configuration: a TOML file (`--config FILE`) overridden by flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_net::headers::ForwardHeaders;
use damselfly_net::rate::{validate_rate, ByteRate};
use damselfly_types::size::ByteSize;
use serde::Deserialize;

/// Everything a dfdaemon (or dfget's embedded peer) needs. Every field has a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Supernodes (`HOST:PORT`) of the region. Each task goes to one of them by rendezvous
    /// hashing of its id over these names (give every host the same names), and to the next in
    /// its order while that one is down ([`crate::supernodes`]). Required.
    pub supernodes: Vec<String>,
    /// HTTP listen address: dfget API and registry mirror. Default `127.0.0.1:65001`.
    pub proxy_listen: SocketAddr,
    /// QUIC listen address for serving pieces to other peers. Default `0.0.0.0:65002`.
    pub peer_listen: SocketAddr,
    /// Address other peers reach this one at, when `peer_listen` is unspecified (0.0.0.0).
    /// Default: the local address of the route to the supernode.
    pub advertise_ip: Option<IpAddr>,
    /// Cache, metadata and identity. Default `/var/lib/damselfly/dfdaemon`.
    pub data_dir: PathBuf,
    /// Upstream registry for mirror requests that name none. Default `https://registry-1.docker.io`.
    pub registry: String,
    /// Registries (`HOST:PORT`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Request headers a download passes on to the supernode and to the origin (fallback)
    /// besides `Authorization`, `Accept`, `User-Agent` and `Cookie` (e.g. `PRIVATE-TOKEN`; the
    /// supernode forwards it only if its own `forward_headers` lists it too). Default none.
    pub forward_headers: ForwardHeaders,
    /// Disk quota for cached content; `None`: unbounded.
    pub cache_quota: Option<ByteSize>,
    /// Finished tasks not read for this long are evicted (`24h`, `90m`); `None`: kept until
    /// the quota needs their room.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Cluster CA certificate (PEM). Optional: the join token pins the CA by hash; when both
    /// are given they must name the same CA.
    pub ca_cert: Option<PathBuf>,
    /// The cluster's join token file (`dfjt1.<ca-sha256>.<secret>`, the supernode's
    /// `DATA_DIR/join-token`). Without it the environment variable `DAMSELFLY_JOIN_TOKEN` is
    /// used. Needed to enroll (first start, and again when the certificate expired while the
    /// daemon was down or the cluster CA changed); re-read at every re-enrollment.
    pub join_token_file: Option<PathBuf>,
    /// Longest time one piece transfer may take before it is failed and fetched elsewhere.
    /// Default 30 s.
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// A download that makes no progress through the swarm for this long falls back to the
    /// origin (when `origin_fallback` allows). Default 6 s (above the scheduler's 3 s retry of a stuck supernode copy).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Fetch from the origin directly when no supernode is reachable. Default true (dfget's
    /// embedded peer turns it off: without a swarm it has nothing to add).
    pub origin_fallback: bool,
    /// Bandwidth limit on everything this daemon receives for tasks (pieces from parents and
    /// the supernode, and the origin fallback), in bytes per second (`50MiB`, `100MB/s`),
    /// shared fairly between tasks. Default none. At least 64 KiB/s.
    pub download_rate: Option<ByteRate>,
    /// Bandwidth limit on piece bytes uploaded to other peers, bytes per second, shared
    /// fairly between tasks. Default none. Keep it above about 2 MiB/s: a child gives up on a
    /// piece after its `piece_timeout` (30 s) and the supernode gives a peer up to 4 uploads
    /// of pieces up to 16 MiB.
    pub upload_rate: Option<ByteRate>,
    /// Bandwidth limit on the origin fallback, bytes per second (fallback bytes also count
    /// against `download_rate`). Default none.
    pub origin_rate: Option<ByteRate>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            supernodes: Vec::new(),
            proxy_listen: SocketAddr::from(([127, 0, 0, 1], 65001)),
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 65002)),
            advertise_ip: None,
            data_dir: PathBuf::from("/var/lib/damselfly/dfdaemon"),
            registry: "https://registry-1.docker.io".into(),
            insecure_registries: Vec::new(),
            forward_headers: ForwardHeaders::default(),
            cache_quota: None,
            cache_ttl: None,
            ca_cert: None,
            join_token_file: None,
            piece_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(6),
            origin_fallback: true,
            download_rate: None,
            upload_rate: None,
            origin_rate: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl DaemonConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for s in &self.supernodes {
            if !s.contains(':') {
                return Err(ConfigError::Invalid(format!("supernode {s:?} must be HOST:PORT")));
            }
        }
        if self.piece_timeout.is_zero() || self.stall_timeout.is_zero() {
            return Err(ConfigError::Invalid("piece_timeout and stall_timeout must be greater than zero".into()));
        }
        validate_rate("download_rate", self.download_rate).map_err(ConfigError::Invalid)?;
        validate_rate("upload_rate", self.upload_rate).map_err(ConfigError::Invalid)?;
        validate_rate("origin_rate", self.origin_rate).map_err(ConfigError::Invalid)?;
        url::Url::parse(&self.registry)
            .map_err(|e| ConfigError::Invalid(format!("registry {:?} is not a URL: {e}", self.registry)))?;
        Ok(())
    }

    /// True when `host` (as engines name it, `HOST:PORT`) is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure_registries.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_validation() {
        let c: DaemonConfig =
            toml::from_str("supernodes = [\"sn:8002\"]\npiece_timeout = \"3s\"\ncache_quota = \"1GiB\"").unwrap();
        assert_eq!(c.piece_timeout, Duration::from_secs(3));
        c.validate().unwrap();
        let bad = DaemonConfig { supernodes: vec!["nohost".into()], ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<DaemonConfig>("unknown = 1").is_err());
        let c: DaemonConfig =
            toml::from_str("download_rate = \"50MiB\"\nupload_rate = \"10MiB/s\"\norigin_rate = 1048576").unwrap();
        assert_eq!(c.download_rate, Some(ByteRate(50 << 20)));
        assert_eq!(c.upload_rate, Some(ByteRate(10 << 20)));
        assert_eq!(c.origin_rate, Some(ByteRate(1 << 20)));
        c.validate().unwrap();
        let slow = DaemonConfig { upload_rate: Some(ByteRate(1000)), ..Default::default() };
        assert!(slow.validate().unwrap_err().to_string().contains("upload_rate must be at least"));
    }
}
