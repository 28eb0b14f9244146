//! Supernode configuration: a TOML file (`--config FILE`) overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use damselfly_net::headers::ForwardHeaders;
use damselfly_net::rate::{validate_rate, ByteRate};
use damselfly_types::size::ByteSize;
use serde::Deserialize;

use damselfly_scheduler::SchedulerConfig;

/// Everything the supernode needs to run. Every field has a default; see each field for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupernodeConfig {
    /// QUIC listen address for peers (control streams and pieces). Default `0.0.0.0:8002`.
    pub quic_listen: SocketAddr,
    /// HTTP listen address for the REST API, `/healthz` and `/metrics`. Default `0.0.0.0:8001`.
    pub http_listen: SocketAddr,
    /// Where cached content, metadata and the cluster CA live. Default `/var/lib/damselfly/supernode`.
    pub data_dir: PathBuf,
    /// Disk quota for cached content (enforced by the cache GC); `None`: unbounded.
    pub cache_quota: Option<ByteSize>,
    /// Finished tasks not read for this long are evicted (`24h`, `90m`); `None`: kept until
    /// the quota needs their room.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Registries (`HOST:PORT`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Origins (`HOST` or `HOST:PORT`) the supernode may fetch from, and only those (every
    /// redirect hop included). Empty: any origin except loopback, link-local and cloud metadata
    /// addresses (see `origin::policy`).
    pub allow_origins: Vec<String>,
    /// Request headers forwarded to origins besides `Authorization`, `Accept`, `User-Agent` and
    /// `Cookie` (e.g. `PRIVATE-TOKEN`); every other client header is dropped. Default none.
    pub forward_headers: ForwardHeaders,
    /// Cluster CA certificate (PEM). Default: `DATA_DIR/tls/ca.crt`, generated on first start.
    pub ca_cert: Option<PathBuf>,
    /// Cluster CA key (PEM), with `ca_cert`.
    pub ca_key: Option<PathBuf>,
    /// Join token file (`dfjt1.<ca-sha256>.<secret>`), shared by every supernode of a region;
    /// it must pin this supernode's CA. Default: `DATA_DIR/join-token`, written on first start.
    pub join_token_file: Option<PathBuf>,
    /// API bearer token file. Default: `DATA_DIR/api-token`, written on first start.
    pub api_token_file: Option<PathBuf>,
    /// Lifetime of the peer certificates this supernode issues (`24h`, `90m`); daemons renew
    /// theirs at two thirds of it. Default 24 h; at least 1 s, at most 366 days.
    #[serde(with = "humantime_serde")]
    pub peer_cert_ttl: Duration,
    /// Time allowed to connect to an origin. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub origin_connect_timeout: Duration,
    /// Longest pause between two chunks of an origin body before the fetch fails. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub origin_read_timeout: Duration,
    /// Longest wait for an origin's response headers (each redirect hop) before the fetch fails:
    /// a hung origin must not hold a task, and every peer that joins it, forever. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub origin_header_timeout: Duration,
    /// How long the origin's verdict on a host's credentials for a repository (or URL) is
    /// trusted before the next registration asks again (`HEAD` of the blob). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// Admit a host to a task only once the origin accepted its credentials (see
    /// `admission`). Default true. `false` is for a cluster that mirrors only public content
    /// and wants to spare the origin the one `HEAD` per repository and `auth_ttl`: every host
    /// that registers is then admitted, and private blobs reach any enrolled host (as in
    /// Dragonfly, Kraken and Spegel). Tickets and the other checks stay.
    pub check_access: bool,
    /// Lifetime of the tickets that let an admitted peer get a task's pieces; renewed at half
    /// life while the peer stays registered. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// The piece scheduler's settings (`[scheduler]` in the TOML file): download window, upload
    /// slots, stall detection. See [`SchedulerConfig`] for each field and its default.
    pub scheduler: SchedulerConfig,
    /// Bandwidth limit on everything this supernode fetches from origins, in bytes per second
    /// (`200MiB`, `1GB/s`), shared fairly between the tasks being fetched. Default none; at
    /// least 64 KiB/s.
    pub origin_rate: Option<ByteRate>,
    /// At most this many origin fetches at once; further fetches wait for a slot in arrival
    /// order (they do not fail, and their peers keep waiting for them). Default none.
    pub max_origin_fetches: Option<usize>,
}

impl Default for SupernodeConfig {
    fn default() -> Self {
        Self {
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 8002)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8001)),
            data_dir: PathBuf::from("/var/lib/damselfly/supernode"),
            cache_quota: None,
            cache_ttl: None,
            insecure_registries: Vec::new(),
            allow_origins: Vec::new(),
            forward_headers: ForwardHeaders::default(),
            ca_cert: None,
            ca_key: None,
            join_token_file: None,
            api_token_file: None,
            peer_cert_ttl: Duration::from_secs(24 * 3600),
            origin_connect_timeout: Duration::from_secs(10),
            origin_read_timeout: Duration::from_secs(60),
            origin_header_timeout: Duration::from_secs(30),
            auth_ttl: Duration::from_secs(300),
            ticket_ttl: Duration::from_secs(600),
            check_access: true,
            scheduler: SchedulerConfig::default(),
            origin_rate: None,
            max_origin_fetches: None,
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

impl SupernodeConfig {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            return Err(ConfigError::Invalid("ca_cert and ca_key must be given together".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(366 * 24 * 3600)).contains(&self.peer_cert_ttl) {
            return Err(ConfigError::Invalid("peer_cert_ttl must be between 1s and 366 days".into()));
        }
        if self.origin_connect_timeout.is_zero()
            || self.origin_read_timeout.is_zero()
            || self.origin_header_timeout.is_zero()
        {
            return Err(ConfigError::Invalid("origin timeouts must be greater than zero".into()));
        }
        self.scheduler.validate().map_err(ConfigError::Invalid)?;
        validate_rate("origin_rate", self.origin_rate).map_err(ConfigError::Invalid)?;
        if self.max_origin_fetches == Some(0) {
            return Err(ConfigError::Invalid("max_origin_fetches must be at least 1 (omit it for no cap)".into()));
        }
        if self.ticket_ttl < Duration::from_secs(2) {
            return Err(ConfigError::Invalid("ticket_ttl must be at least 2 s".into()));
        }
        for o in self.allow_origins.iter().chain(&self.insecure_registries) {
            if o.is_empty() || o.contains('/') {
                return Err(ConfigError::Invalid(format!("{o:?} is not HOST or HOST:PORT (no scheme, no path)")));
            }
        }
        crate::origin::policy::OriginPolicy::new(&self.allow_origins).map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_validation() {
        let c: SupernodeConfig = toml::from_str(
            "quic_listen = \"127.0.0.1:9002\"\ncache_quota = \"20GiB\"\norigin_read_timeout = \"5s\"\nallow_origins = [\"registry.local:5000\"]",
        )
        .unwrap();
        assert_eq!(c.quic_listen.port(), 9002);
        assert_eq!(c.cache_quota.unwrap().as_u64(), 20 << 30);
        assert_eq!(c.origin_read_timeout, Duration::from_secs(5));
        c.validate().unwrap();
        let bad: Result<SupernodeConfig, _> = toml::from_str("forward_headers = [\"Range\"]");
        assert!(bad.unwrap_err().to_string().contains("never forwarded"));
        let c: SupernodeConfig = toml::from_str("forward_headers = [\"PRIVATE-TOKEN\"]").unwrap();
        assert!(c.forward_headers.allows("private-token"));
        let bad = SupernodeConfig { allow_origins: vec!["registry:port".into()], ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<SupernodeConfig>("bogus = 1").is_err());
        let c: SupernodeConfig = toml::from_str("origin_rate = \"200MiB/s\"\nmax_origin_fetches = 4").unwrap();
        assert_eq!((c.origin_rate, c.max_origin_fetches), (Some(ByteRate(200 << 20)), Some(4)));
        c.validate().unwrap();
        assert!(SupernodeConfig { max_origin_fetches: Some(0), ..Default::default() }.validate().is_err());
        assert!(SupernodeConfig { origin_rate: Some(ByteRate(10)), ..Default::default() }.validate().is_err());
        let bad = SupernodeConfig { ca_cert: Some("x".into()), ..Default::default() };
        assert!(bad.validate().is_err());
    }
}
