//! Which origins the supernode may fetch from (no SSRF).
//!
//! The supernode fetches URLs that peers and preheat callers name, from inside the data centre:
//! without a policy, anyone who can register a task could make it fetch `http://127.0.0.1:8001/`
//! or a cloud metadata service (`http://169.254.169.254/latest/meta-data/iam/...`) and read the
//! answer back through the swarm. [`OriginPolicy`] decides, in one of two modes:
//!
//! - **Allow-list** (`--allow-origin HOST[:PORT]`, repeatable): only the listed origins. `HOST`
//!   allows every port of that host, `HOST:PORT` that port only (the scheme's default port when
//!   a URL names none). A listed host is trusted with whatever it resolves to, loopback
//!   included: naming it is the operator's decision.
//! - **Default** (no `--allow-origin`): any host, except addresses no origin of a data centre
//!   has any business being: loopback (`127.0.0.0/8`, `::1`), link-local (`169.254.0.0/16`,
//!   `fe80::/10`), unspecified (`0.0.0.0/8`, `::`) and cloud metadata services
//!   (`169.254.169.254`, `fd00:ec2::254`, Alibaba's `100.100.100.200`, and names such as
//!   `metadata.google.internal`). These are refused whether the URL names them as IP literals
//!   or a name **resolves** to them; private ranges (`10/8`, `172.16/12`, `192.168/16`,
//!   `fc00::/7`) are allowed: that is where registries live. To reach a refused origin, name it
//!   with `--allow-origin` (which switches to the allow-list).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), IPv4-compatible ones (`::a.b.c.d`) and the
//! NAT64 well-known prefix (`64:ff9b::a.b.c.d`) are judged by the IPv4 address they carry:
//! `::ffff:127.0.0.1` reaches loopback on a dual-stack socket just as `127.0.0.1` does.
//!
//! The policy is applied to the first URL, to every redirect hop and to every address a name
//! resolves to, by [`super::client::OriginClient`] — the only client the supernode has for
//! origins. Checking resolved addresses (not only names) is what defeats DNS rebinding: the
//! connection is made only to addresses that passed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Host names of cloud metadata services, refused in default mode (they also resolve to
/// link-local addresses, which are refused anyway; the names are refused even where a resolver
/// says otherwise).
pub const METADATA_NAMES: &[&str] =
    &["metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"];

/// Why an address is refused in default mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8`, `::` (connecting to them reaches the local host).
    Unspecified,
    /// A cloud metadata service: `169.254.169.254` (AWS, GCP, Azure, ...), `fd00:ec2::254`
    /// (AWS over IPv6), `100.100.100.200` (Alibaba Cloud).
    Metadata,
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::Unspecified => "unspecified",
            Self::Metadata => "cloud metadata",
        })
    }
}

impl AddressClass {
    /// The class of `ip` if default mode refuses it; `None` when it may be fetched from.
    pub fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Self::of_v4(v4),
            IpAddr::V6(v6) => Self::of_v6(v6),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<Self> {
        let o = ip.octets();
        if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
            Some(Self::Metadata)
        } else if ip.is_loopback() {
            Some(Self::Loopback)
        } else if ip.is_link_local() {
            Some(Self::LinkLocal)
        } else if o[0] == 0 {
            Some(Self::Unspecified)
        } else {
            None
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Option<Self> {
        let s = ip.segments();
        if ip.is_loopback() {
            return Some(Self::Loopback);
        }
        if ip.is_unspecified() {
            return Some(Self::Unspecified);
        }
        if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            return Some(Self::Metadata);
        }
        if s[0] & 0xffc0 == 0xfe80 {
            return Some(Self::LinkLocal);
        }
        // IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96) and NAT64 (64:ff9b::/96)
        // addresses carry an IPv4 address in their last 32 bits: judge that one.
        let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
        let compatible = s[..6] == [0; 6];
        let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
        if mapped || compatible || nat64 {
            let o = ip.octets();
            return Self::of_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
        }
        None
    }
}

/// Why a request to an origin was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not `http` or `https`.
    Scheme(String),
    /// Allow-list mode and the origin is not on it.
    NotListed,
    /// Default mode and the URL names (or the name resolves to) a refused address.
    Address {
        /// The address.
        addr: IpAddr,
        /// Its class.
        class: AddressClass,
        /// True when a name resolved to it, false for an IP literal.
        resolved: bool,
    },
    /// Default mode and the host is a cloud metadata service's name.
    MetadataName,
}

/// A request the origin policy refused. Its message says which origin, why, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// `HOST[:PORT]` of the refused origin (no path, no query: those may carry secrets).
    pub origin: String,
    /// `HOST[:PORT]` of the origin that redirected there, when a redirect led there.
    pub redirected_from: Option<String>,
    /// Why.
    pub reason: Reason,
}

impl std::error::Error for Refused {}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let via = match &self.redirected_from {
            Some(from) => format!(" (a redirect from {from})"),
            None => String::new(),
        };
        let why = match &self.reason {
            Reason::Scheme(s) => {
                return match &self.redirected_from {
                    Some(from) => write!(f, "origin {from} redirected to a {s:?} URL: only http and https are fetched"),
                    None => write!(f, "URL scheme {s:?} is not allowed: only http and https are fetched"),
                };
            }
            Reason::NotListed => "it is not on this supernode's --allow-origin list".to_owned(),
            Reason::Address { addr, class, resolved: true } => format!("resolves to {class} address {addr}"),
            Reason::Address { addr, class: AddressClass::Unspecified, resolved: false } => {
                format!("{addr} is an unspecified address")
            }
            Reason::Address { addr, class, resolved: false } => format!("{addr} is a {class} address"),
            Reason::MetadataName => "it names a cloud metadata service".to_owned(),
        };
        write!(f, "origin {}{via} is not allowed: {why}; name it with --allow-origin to allow it", self.origin)
    }
}

/// One `--allow-origin` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Allowed {
    host: Host<String>,
    /// `None`: every port.
    port: Option<u16>,
}

/// The supernode's origin policy; see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// The allow-list; empty: default mode.
    allowed: Vec<Allowed>,
}

impl OriginPolicy {
    /// The policy for `allow_origins` (`HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6
    /// address); empty: default mode. Fails on an entry that is not one of those.
    pub fn new<S: AsRef<str>>(allow_origins: &[S]) -> Result<Self, String> {
        let allowed = allow_origins.iter().map(|a| parse_entry(a.as_ref())).collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// True in allow-list mode.
    pub fn is_allow_list(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Checks a URL: the first of a request or a redirect hop (`redirected_from`: the URL that
    /// redirected). Names are checked again when they resolve ([`Self::check_resolved`]).
    pub fn check_url(&self, url: &Url, redirected_from: Option<&Url>) -> Result<(), Refused> {
        let refuse =
            |reason| Refused { origin: origin_of(url), redirected_from: redirected_from.map(origin_of), reason };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(Reason::Scheme(url.scheme().to_owned())));
        }
        let Some(host) = url.host().map(|h| normalise(h.to_owned())) else {
            return Err(refuse(Reason::NotListed));
        };
        if self.is_allow_list() {
            let port = url.port_or_known_default();
            let listed = self.allowed.iter().any(|a| a.host == host && (a.port.is_none() || a.port == port));
            return if listed { Ok(()) } else { Err(refuse(Reason::NotListed)) };
        }
        match host {
            Host::Ipv4(ip) => check_literal(IpAddr::V4(ip)).map_err(refuse),
            Host::Ipv6(ip) => check_literal(IpAddr::V6(ip)).map_err(refuse),
            Host::Domain(name) if METADATA_NAMES.contains(&name.as_str()) => Err(refuse(Reason::MetadataName)),
            Host::Domain(_) => Ok(()),
        }
    }

    /// Checks the addresses `name` resolved to: in allow-list mode a listed name is trusted;
    /// in default mode every address must pass (one refused address refuses the name).
    pub fn check_resolved(&self, name: &str, addrs: &[IpAddr]) -> Result<(), Refused> {
        let host = normalise(Host::parse(name).unwrap_or_else(|_| Host::Domain(name.to_owned())));
        let refuse = |reason| Refused { origin: name.to_owned(), redirected_from: None, reason };
        if self.is_allow_list() {
            return if self.allowed.iter().any(|a| a.host == host) { Ok(()) } else { Err(refuse(Reason::NotListed)) };
        }
        if matches!(&host, Host::Domain(d) if METADATA_NAMES.contains(&d.as_str())) {
            return Err(refuse(Reason::MetadataName));
        }
        for &addr in addrs {
            if let Some(class) = AddressClass::of(addr) {
                return Err(refuse(Reason::Address { addr, class, resolved: true }));
            }
        }
        Ok(())
    }
}

fn check_literal(addr: IpAddr) -> Result<(), Reason> {
    match AddressClass::of(addr) {
        Some(class) => Err(Reason::Address { addr, class, resolved: false }),
        None => Ok(()),
    }
}

/// `HOST[:PORT]` of `url`, as its authority shows it (IPv6 in brackets).
pub(crate) fn origin_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Lower-case names without a trailing dot (`Registry.Local.` is `registry.local`).
fn normalise(host: Host<String>) -> Host<String> {
    match host {
        Host::Domain(d) => Host::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
        other => other,
    }
}

fn parse_entry(entry: &str) -> Result<Allowed, String> {
    let bad = |why: &str| format!("--allow-origin {entry:?} is not HOST or HOST:PORT: {why}");
    let entry = entry.trim();
    if entry.is_empty() || entry.contains('/') || entry.contains('@') {
        return Err(bad("no scheme, user or path"));
    }
    let (host, port) = if entry.starts_with('[') {
        match entry.rsplit_once("]:") {
            Some((h, p)) => (format!("{h}]"), Some(p)),
            None => (entry.to_owned(), None),
        }
    } else if entry.matches(':').count() > 1 {
        (format!("[{entry}]"), None)
    } else {
        match entry.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (entry.to_owned(), None),
        }
    };
    let port = port.map(|p| p.parse::<u16>().map_err(|_| bad("bad port"))).transpose()?;
    let host = Host::parse(&host).map_err(|e| bad(&e.to_string()))?;
    Ok(Allowed { host: normalise(host), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn default_mode() -> OriginPolicy {
        OriginPolicy::new::<&str>(&[]).unwrap()
    }

    #[test]
    fn address_classes() {
        let cases: &[(&str, Option<AddressClass>)] = &[
            ("127.0.0.1", Some(AddressClass::Loopback)),
            ("127.255.0.9", Some(AddressClass::Loopback)),
            ("169.254.169.254", Some(AddressClass::Metadata)),
            ("169.254.0.1", Some(AddressClass::LinkLocal)),
            ("100.100.100.200", Some(AddressClass::Metadata)),
            ("0.0.0.0", Some(AddressClass::Unspecified)),
            ("0.1.2.3", Some(AddressClass::Unspecified)),
            ("::1", Some(AddressClass::Loopback)),
            ("::", Some(AddressClass::Unspecified)),
            ("fe80::1", Some(AddressClass::LinkLocal)),
            ("febf::1", Some(AddressClass::LinkLocal)),
            ("fd00:ec2::254", Some(AddressClass::Metadata)),
            // IPv4 carried in IPv6: judged by the IPv4 address.
            ("::ffff:127.0.0.1", Some(AddressClass::Loopback)),
            ("::ffff:169.254.169.254", Some(AddressClass::Metadata)),
            ("::127.0.0.1", Some(AddressClass::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(AddressClass::Metadata)),
            ("::ffff:10.0.0.1", None),
            // Private ranges and public addresses are fine.
            ("10.250.0.1", None),
            ("172.16.0.1", None),
            ("192.168.1.1", None),
            ("100.100.100.201", None),
            ("8.8.8.8", None),
            ("fd00::1", None),
            ("fec0::1", None),
            ("2001:db8::1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(AddressClass::of(ip.parse().unwrap()), *want, "{ip}");
        }
    }

    #[test]
    fn default_mode_refuses_internal_literals_and_metadata_names() {
        let p = default_mode();
        assert!(!p.is_allow_list());
        for ok in [
            "https://registry-1.docker.io/v2/",
            "http://10.250.0.1:5000/v2/x/blobs/sha256:0",
            "http://[2001:db8::1]/x",
            "https://metadata.example.com/x",
        ] {
            assert_eq!(p.check_url(&url(ok), None), Ok(()), "{ok}");
        }
        let e = p.check_url(&url("http://127.0.0.1:8080/x"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "origin 127.0.0.1:8080 is not allowed: 127.0.0.1 is a loopback address; name it with --allow-origin \
             to allow it"
        );
        for refused in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:5000/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0:8001/",
            "http://100.100.100.200/latest/meta-data",
            // The URL parser normalises other IPv4 spellings before the check sees them.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./computeMetadata/v1/",
            "http://metadata/",
        ] {
            assert!(p.check_url(&url(refused), None).is_err(), "{refused}");
        }
        let e = p.check_url(&url("ftp://example.com/x"), None).unwrap_err();
        assert!(matches!(e.reason, Reason::Scheme(_)), "{e}");
    }

    #[test]
    fn default_mode_checks_every_resolved_address() {
        let p = default_mode();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        let private: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(p.check_resolved("registry.example", &[public, private]), Ok(()));
        let e = p.check_resolved("rebind.example", &[public, "127.0.0.1".parse().unwrap()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "origin rebind.example is not allowed: resolves to loopback address 127.0.0.1; name it with \
             --allow-origin to allow it"
        );
        let mapped: IpAddr = "::ffff:169.254.169.254".parse().unwrap();
        assert!(matches!(
            p.check_resolved("x.example", &[mapped]).unwrap_err().reason,
            Reason::Address { class: AddressClass::Metadata, resolved: true, .. }
        ));
        assert!(p.check_resolved("metadata.google.internal", &[public]).is_err());
    }

    #[test]
    fn allow_list_mode_allows_only_listed_hosts_and_ports() {
        let p = OriginPolicy::new(&["registry.local:5000", "127.0.0.1", "Mirror.Example.", "[::1]:8080", "fe80::1"])
            .unwrap();
        assert!(p.is_allow_list());
        for ok in [
            "http://registry.local:5000/v2/",
            "http://REGISTRY.local:5000/v2/",
            "http://127.0.0.1:1234/x",
            "https://127.0.0.1/x",
            "https://mirror.example/x",
            "https://mirror.example.:8443/x",
            "http://[::1]:8080/",
            "http://[fe80::1]:9/",
        ] {
            assert_eq!(p.check_url(&url(ok), None), Ok(()), "{ok}");
        }
        for refused in [
            "http://registry.local/v2/",
            "https://registry.local/v2/",
            "http://registry.local:5001/v2/",
            "http://127.0.0.2:1234/x",
            "http://[::1]:8081/",
            "http://evil.example/",
            "http://169.254.169.254/",
        ] {
            let e = p.check_url(&url(refused), None).unwrap_err();
            assert_eq!(e.reason, Reason::NotListed, "{refused}");
        }
        // Listed names are trusted with whatever they resolve to, loopback included.
        assert_eq!(p.check_resolved("registry.local", &["127.0.0.1".parse().unwrap()]), Ok(()));
        assert!(p.check_resolved("evil.example", &["8.8.8.8".parse().unwrap()]).is_err());
        // The default port of the scheme counts as the URL's port.
        let p = OriginPolicy::new(&["r.example:443"]).unwrap();
        assert_eq!(p.check_url(&url("https://r.example/v2/"), None), Ok(()));
        assert!(p.check_url(&url("http://r.example/v2/"), None).is_err());
    }

    #[test]
    fn redirect_refusals_name_both_origins() {
        let p = OriginPolicy::new(&["127.0.0.1:4000"]).unwrap();
        let e = p
            .check_url(&url("http://127.0.0.2:5000/blob?sig=secret"), Some(&url("http://127.0.0.1:4000/x")))
            .unwrap_err();
        let text = e.to_string();
        assert_eq!(
            text,
            "origin 127.0.0.2:5000 (a redirect from 127.0.0.1:4000) is not allowed: it is not on this supernode's \
             --allow-origin list; name it with --allow-origin to allow it"
        );
        assert!(!text.contains("secret"));
    }

    #[test]
    fn bad_entries_are_rejected() {
        for bad in ["", "http://x", "x/y", "x:port", "x:70000", "u@x", "[::1", "a b"] {
            assert!(OriginPolicy::new(&[bad]).is_err(), "{bad:?}");
        }
    }
}
