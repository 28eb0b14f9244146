//! dfdaemon configuration: one struct for the flags and the TOML file (`--config FILE`),
//! layered by [`damselfly_net::config`]: defaults < file < flags. `--supernode` replaces the
//! file's list; `--insecure-registry` and `--forward-header` add to theirs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};
use damselfly_net::config::{append_to, ConfigError, Layered};
use damselfly_net::headers::HeaderName;
use damselfly_net::rate::{parse_rate, validate_rate, ByteRate};
use damselfly_types::size::{parse_size, ByteSize};
use serde::Deserialize;

/// Everything a dfdaemon (or dfget's embedded peer) needs: its flags and its TOML keys (the
/// flags' long names with `_`, plural for the repeatable ones). Every field has a default.
///
/// A field's doc comment is also its flag's help (`dfdaemon --help`), so it says what the code
/// does; fields without a flag (`#[arg(skip)]`) are TOML keys only.
#[derive(Clone, Debug, Deserialize, clap::Args)]
#[command(about = "Damselfly dfdaemon: the per-host peer, registry mirror and dfget API.", long_about = None)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Supernode HOST:PORT; required; repeatable, replaces the file's list. Each task goes to one
    /// of them by rendezvous hashing of its id over these names (give every host the same
    /// names), and to the next in its order while that one is down.
    #[arg(long = "supernode", value_name = "HOST:PORT")]
    pub supernodes: Vec<String>,
    /// HTTP listen address: registry mirror, dfget API, /metrics [default: 127.0.0.1:65001].
    #[arg(long, value_name = "ADDR")]
    pub proxy_listen: SocketAddr,
    /// QUIC listen address for serving pieces to other peers [default: 0.0.0.0:65002].
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: SocketAddr,
    /// IP other peers dial to reach this host's --peer-listen port [default: the --peer-listen
    /// IP; when that is unspecified (0.0.0.0), the local address of the route to a supernode].
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Data directory: cached content, metadata, the peer identity
    /// [default: /var/lib/damselfly/dfdaemon].
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Upstream registry for mirror requests that name none (no ns= parameter)
    /// [default: https://registry-1.docker.io].
    #[arg(long, value_name = "URL")]
    pub registry: String,
    /// Registry (HOST:PORT, as engines name it in ns=) the mirror reaches over plain HTTP;
    /// repeatable, adds to the file's list.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// Request header a download passes on to the supernode and to the origin (fallback)
    /// besides Authorization, Accept, User-Agent and Cookie (e.g. PRIVATE-TOKEN); repeatable,
    /// adds to the file's list. The supernode forwards it only if its own --forward-header
    /// lists it too.
    #[arg(long = "forward-header", value_name = "NAME")]
    pub forward_headers: Vec<HeaderName>,
    /// Disk quota for cached content, e.g. 20GiB; least recently used finished tasks are
    /// evicted to stay under it [default: none, unbounded].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_quota: Option<ByteSize>,
    /// Evict finished tasks not read for this long, e.g. 24h [default: none, only the quota
    /// evicts].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Option<Duration>,
    /// Cluster CA certificate (PEM); optional: the join token pins the CA by hash, and when
    /// both are given they must name the same CA.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The cluster's join token file (the supernode's DATA_DIR/join-token) [default: none, the
    /// token itself from the environment variable DAMSELFLY_JOIN_TOKEN].
    ///
    /// Needed to enroll: at first start, and again when the certificate expired while the
    /// daemon was down or the cluster CA changed; re-read at every enrollment.
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Longest time one piece transfer may take before it is failed and fetched elsewhere.
    /// Default 30 s.
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// A download that makes no progress through the swarm for this long falls back to the
    /// origin (when `origin_fallback` allows). Default 6 s (above the scheduler's 3 s retry of a stuck supernode copy).
    #[arg(skip)]
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Fetch from the origin directly when no supernode is reachable. Default true (dfget's
    /// embedded peer turns it off: without a swarm it has nothing to add).
    #[arg(skip)]
    pub origin_fallback: bool,
    /// Limit on everything this daemon receives for tasks (pieces from parents and the
    /// supernode, and the origin fallback), bytes per second, e.g. 50MiB or 100MB/s; shared
    /// fairly between tasks; at least 64KiB [default: none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub download_rate: Option<ByteRate>,
    /// Limit on piece bytes uploaded to other peers, bytes per second, e.g. 20MiB; shared fairly
    /// between tasks; at least 64KiB [default: none].
    ///
    /// Keep it above about 2MiB: a child gives up on a piece after its piece_timeout (30 s) and
    /// the supernode gives a peer up to 4 uploads of pieces up to 16MiB.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_rate: Option<ByteRate>,
    /// Limit on the origin fallback, bytes per second, e.g. 10MiB; its bytes also count against
    /// --download-rate; at least 64KiB [default: none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
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
            forward_headers: Vec::new(),
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

impl Layered for DaemonConfig {
    /// Checks values that serde and clap cannot.
    fn validate(&self) -> Result<(), ConfigError> {
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

    /// Flags replace the file's values (`--supernode` its whole list), except
    /// `--insecure-registry` and `--forward-header`, which add to its lists.
    fn apply_flags(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let registries = std::mem::take(&mut self.insecure_registries);
        let headers = std::mem::take(&mut self.forward_headers);
        self.update_from_arg_matches(matches)?;
        append_to(&mut self.insecure_registries, registries);
        append_to(&mut self.forward_headers, headers);
        Ok(())
    }
}

impl DaemonConfig {
    /// True when `host` (as engines name it, `HOST:PORT`) is reached over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure_registries.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_net::config;

    fn layered(toml: &str, flags: &[&str]) -> Result<DaemonConfig, ConfigError> {
        config::try_parse_with_file("dfdaemon", toml, flags)
    }

    #[test]
    fn layering_holds_and_help_states_the_real_defaults() {
        assert_eq!(
            config::check_layering::<DaemonConfig>("dfdaemon", true),
            ["--proxy-listen", "--peer-listen", "--data-dir", "--registry"]
        );
    }

    #[test]
    fn supernode_flags_replace_the_file_list_other_lists_grow() {
        let file = "supernodes = [\"a:8002\", \"b:8002\"]\ninsecure_registries = [\"r1:5000\"]\n\
                    forward_headers = [\"X-One\"]\npiece_timeout = \"3s\"\ncache_quota = \"1GiB\"\n";
        let c = layered(file, &[]).unwrap();
        assert_eq!(c.supernodes, ["a:8002", "b:8002"]);
        assert_eq!((c.piece_timeout, c.cache_quota), (Duration::from_secs(3), Some(ByteSize::gib(1))));
        let flags = ["--supernode", "c:8002", "--insecure-registry", "r2:5000", "--forward-header", "X-Two"];
        let c = layered(file, &flags).unwrap();
        assert_eq!(c.supernodes, ["c:8002"]);
        assert_eq!(c.insecure_registries, ["r1:5000", "r2:5000"]);
        assert!(c.is_insecure("R2:5000"));
        let headers: Vec<&str> = c.forward_headers.iter().map(AsRef::as_ref).collect();
        assert_eq!(headers, ["x-one", "x-two"]);
        assert_eq!(c.piece_timeout, Duration::from_secs(3), "TOML-only keys stay");
        let c =
            layered(file, &["--cache-quota", "2GiB", "--advertise-ip", "10.0.0.7", "--join-token-file", "t"]).unwrap();
        assert_eq!(c.cache_quota, Some(ByteSize::gib(2)));
        assert_eq!(c.advertise_ip, Some(IpAddr::from([10, 0, 0, 7])));
        assert_eq!(c.join_token_file, Some(PathBuf::from("t")));
    }

    #[test]
    fn rates_and_validation() {
        let c = layered("download_rate = \"50MiB\"\nupload_rate = \"10MiB/s\"\norigin_rate = 1048576", &[]).unwrap();
        assert_eq!(c.download_rate, Some(ByteRate(50 << 20)));
        assert_eq!(c.upload_rate, Some(ByteRate(10 << 20)));
        assert_eq!(c.origin_rate, Some(ByteRate(1 << 20)));
        let c = layered("download_rate = \"50MiB\"", &["--download-rate", "5MiB"]).unwrap();
        assert_eq!(c.download_rate, Some(ByteRate(5 << 20)));
        let err = layered("", &["--upload-rate", "1000"]).unwrap_err().to_string();
        assert!(err.contains("upload_rate must be at least"), "{err}");
        let err = layered("upload_rate = \"fast\"", &[]).unwrap_err().to_string();
        assert!(err.contains("upload_rate") && err.contains("invalid rate"), "{err}");
        assert!(matches!(layered("", &["--supernode", "nohost"]), Err(ConfigError::Invalid(_))));
        assert!(matches!(layered("registry = \"not a url\"", &[]), Err(ConfigError::Invalid(_))));
        assert!(matches!(layered("stall_timeout = \"0s\"", &[]), Err(ConfigError::Invalid(_))));
        assert!(matches!(layered("", &["--advertise-ip", "host"]), Err(ConfigError::Flags(_))));
    }
}
