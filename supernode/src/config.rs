//! Supernode configuration: one struct for the flags and the TOML file (`--config FILE`),
//! layered by [`damselfly_net::config`]: defaults < file < flags. Repeatable flags
//! (`--insecure-registry`, `--allow-origin`, `--forward-header`) add to the file's lists.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use damselfly_net::config::{append_to, ConfigError, Layered};
use damselfly_net::headers::HeaderName;
use damselfly_net::rate::{parse_rate, validate_rate, ByteRate};
use damselfly_types::size::{parse_size, ByteSize};
use serde::Deserialize;

use damselfly_scheduler::SchedulerConfig;

/// Everything the supernode needs to run: its flags and its TOML keys (the flags' long names
/// with `_`, plural for the repeatable ones). Every field has a default; see each field for it.
///
/// A field's doc comment is also its flag's help (`supernode --help`), so it says what the code
/// does; fields without a flag (`#[arg(skip)]`) are TOML keys only.
#[derive(Clone, Debug, Deserialize, clap::Args)]
#[command(about = "Damselfly supernode: regional seed and piece scheduler.", long_about = None)]
#[serde(default, deny_unknown_fields)]
pub struct SupernodeConfig {
    /// QUIC listen address for peers: control streams and pieces [default: 0.0.0.0:8002].
    #[arg(long, value_name = "ADDR")]
    pub quic_listen: SocketAddr,
    /// HTTP listen address: REST API, status page, /healthz, /metrics [default: 0.0.0.0:8001].
    #[arg(long, value_name = "ADDR")]
    pub http_listen: SocketAddr,
    /// Data directory: cached content, metadata, the cluster CA and the token files
    /// [default: /var/lib/damselfly/supernode].
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Disk quota for cached content, e.g. 20GiB; least recently used finished tasks are evicted
    /// to stay under it [default: none, unbounded].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_quota: Option<ByteSize>,
    /// Evict finished tasks not read for this long, e.g. 24h [default: none, only the quota
    /// evicts].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Registry (HOST:PORT, as image references name it) that preheat reaches over plain HTTP;
    /// repeatable, adds to the file's list. Blob fetches use the scheme of the URL a peer
    /// registers.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Origin the supernode may fetch from (HOST: every port, or HOST:PORT), every redirect hop
    /// included; repeatable, adds to the file's list: only those [default: any origin except
    /// loopback, link-local and cloud metadata addresses].
    #[arg(long = "allow-origin", value_name = "HOST[:PORT]")]
    pub allow_origins: Vec<String>,
    /// Request header forwarded to origins besides Authorization, Accept, User-Agent and Cookie
    /// (e.g. PRIVATE-TOKEN); repeatable, adds to the file's list. Every other client header is
    /// dropped; framing, Range, conditional and forwarding headers cannot be listed.
    #[arg(long = "forward-header", value_name = "NAME")]
    pub forward_headers: Vec<HeaderName>,
    /// Cluster CA certificate (PEM), with --ca-key [default: DATA_DIR/tls/ca.crt, generated on
    /// first start].
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Cluster CA private key (PEM), with --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Join token file (dfjt1.<ca-sha256>.<secret>) shared by the region's supernodes; it must
    /// pin this supernode's CA [default: DATA_DIR/join-token, written on first start and
    /// again when the CA changed].
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// API bearer token file [default: DATA_DIR/api-token, written on first start].
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Lifetime of the peer certificates this supernode issues, e.g. 90m; daemons renew theirs
    /// at two thirds of it; at least 1s, at most 366 days [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub peer_cert_ttl: Duration,
    /// Time allowed to connect to an origin. Default 10 s.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub origin_connect_timeout: Duration,
    /// Longest pause between two chunks of an origin body before the fetch fails. Default 60 s.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub origin_read_timeout: Duration,
    /// Longest wait for an origin's response headers (each redirect hop) before the fetch fails:
    /// a hung origin must not hold a task, and every peer that joins it, forever. Default 30 s.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub origin_header_timeout: Duration,
    /// How long the origin's verdict on a host's credentials for a repository (or URL) is
    /// trusted before the next registration asks again (`HEAD` of the blob). Default 5 min.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// Admit a host to a task only once the origin accepted its credentials (see
    /// `admission`). Default true. `false` is for a cluster that mirrors only public content
    /// and wants to spare the origin the one `HEAD` per repository and `auth_ttl`: every host
    /// that registers is then admitted, and private blobs reach any enrolled host (as in
    /// Dragonfly, Kraken and Spegel). Tickets and the other checks stay.
    #[arg(skip)]
    pub check_access: bool,
    /// Lifetime of the tickets that let an admitted peer get a task's pieces; renewed at half
    /// life while the peer stays registered. Default 10 min; at least 2 s.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// The piece scheduler's settings (`[scheduler]` in the TOML file): download window, upload
    /// slots, stall detection. See [`SchedulerConfig`] for each field and its default.
    #[arg(skip)]
    pub scheduler: SchedulerConfig,
    /// Limit on everything this supernode fetches from origins, bytes per second, e.g. 200MiB
    /// or 1GB/s; shared fairly between the tasks being fetched; at least 64KiB [default: none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub origin_rate: Option<ByteRate>,
    /// At most N origin fetches at once; more wait for a slot in arrival order (they do not
    /// fail, and their peers are told to keep waiting) [default: none].
    #[arg(long, value_name = "N")]
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
            forward_headers: Vec::new(),
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

impl Layered for SupernodeConfig {
    /// Checks values that serde and clap cannot.
    fn validate(&self) -> Result<(), ConfigError> {
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

    /// Flags replace the file's values, except the repeatable ones, which add to its lists.
    fn apply_flags(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let registries = std::mem::take(&mut self.insecure_registries);
        let origins = std::mem::take(&mut self.allow_origins);
        let headers = std::mem::take(&mut self.forward_headers);
        self.update_from_arg_matches(matches)?;
        append_to(&mut self.insecure_registries, registries);
        append_to(&mut self.allow_origins, origins);
        append_to(&mut self.forward_headers, headers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_net::config;

    fn layered(toml: &str, flags: &[&str]) -> Result<SupernodeConfig, ConfigError> {
        config::try_parse_with_file("supernode", toml, flags)
    }

    #[test]
    fn layering_holds_and_help_states_the_real_defaults() {
        assert_eq!(
            config::check_layering::<SupernodeConfig>("supernode", true),
            ["--quic-listen", "--http-listen", "--data-dir", "--peer-cert-ttl"]
        );
    }

    #[test]
    fn flags_override_the_file_and_repeatable_flags_add_to_its_lists() {
        let file = "quic_listen = \"127.0.0.1:9002\"\nhttp_listen = \"127.0.0.1:9001\"\ncache_quota = \"20GiB\"\n\
                    allow_origins = [\"a.local\"]\ninsecure_registries = [\"a.local:5000\"]\n\
                    forward_headers = [\"X-One\"]\nauth_ttl = \"1m\"\n[scheduler]\nwindow_per_peer = 3\n";
        let c = layered(file, &[]).unwrap();
        assert_eq!((c.quic_listen.port(), c.http_listen.port()), (9002, 9001));
        assert_eq!(c.cache_quota, Some(ByteSize::gib(20)));
        assert_eq!((c.auth_ttl, c.scheduler.window_per_peer), (Duration::from_secs(60), 3));
        let flags = [
            "--quic-listen=127.0.0.1:7002",
            "--cache-quota=1GiB",
            "--allow-origin=b.local",
            "--insecure-registry=b.local:5000",
            "--forward-header=X-Two",
            "--origin-rate=200MiB",
        ];
        let c = layered(file, &flags).unwrap();
        assert_eq!((c.quic_listen.port(), c.http_listen.port()), (7002, 9001), "the file's value where no flag");
        assert_eq!(c.cache_quota, Some(ByteSize::gib(1)));
        assert_eq!(c.allow_origins, ["a.local", "b.local"]);
        assert_eq!(c.insecure_registries, ["a.local:5000", "b.local:5000"]);
        let headers: Vec<&str> = c.forward_headers.iter().map(AsRef::as_ref).collect();
        assert_eq!(headers, ["x-one", "x-two"]);
        assert_eq!(c.origin_rate, Some(ByteRate(200 << 20)));
        assert_eq!((c.auth_ttl, c.scheduler.window_per_peer), (Duration::from_secs(60), 3), "TOML-only keys stay");
        let c = layered("", &["--allow-origin", "b.local"]).unwrap();
        assert_eq!(c.allow_origins, ["b.local"]);
    }

    #[test]
    fn toml_keys_and_validation() {
        let c =
            layered("origin_read_timeout = \"5s\"\norigin_rate = \"200MiB/s\"\nmax_origin_fetches = 4", &[]).unwrap();
        assert_eq!(c.origin_read_timeout, Duration::from_secs(5));
        assert_eq!((c.origin_rate, c.max_origin_fetches), (Some(ByteRate(200 << 20)), Some(4)));
        let err = layered("forward_headers = [\"Range\"]", &[]).unwrap_err().to_string();
        assert!(err.contains("never forwarded") && err.contains("supernode-"), "{err}");
        let err = layered("", &["--forward-header", "Range"]).unwrap_err().to_string();
        assert!(err.contains("--forward-header") && err.contains("never forwarded"), "{err}");
        let err = layered("cache_quota = \"lots\"", &[]).unwrap_err().to_string();
        assert!(err.contains("cache_quota") && err.contains("line 1"), "{err}");
        let err = layered("", &["--allow-origin", "registry:port"]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
        for flags in [["--max-origin-fetches", "0"], ["--origin-rate", "10"], ["--peer-cert-ttl", "0s"]] {
            assert!(matches!(layered("", &flags), Err(ConfigError::Invalid(_))), "{flags:?}");
        }
        assert!(matches!(layered("ca_cert = \"x\"", &[]), Err(ConfigError::Invalid(_))));
        assert!(matches!(layered("", &["--ca-cert", "x"]), Err(ConfigError::Flags(_))), "--ca-cert needs --ca-key");
        let c = layered("", &["--ca-cert", "c.pem", "--ca-key", "k.pem"]).unwrap();
        assert_eq!((c.ca_cert.unwrap(), c.ca_key.unwrap()), ("c.pem".into(), "k.pem".into()));
        assert!(matches!(layered("ticket_ttl = \"1s\"", &[]), Err(ConfigError::Invalid(_))));
    }
}
