//! Warming the dfdaemons a job names in `peers`: the supernode connects to each daemon's QUIC
//! port with its own client certificate (which only the supernode holds, see
//! [`damselfly_net::tls::client_is_supernode`]), checks that the daemon's certificate chains
//! to the cluster CA (so it is an enrolled daemon) and, when the job named it by peer id, that it
//! is that peer, and then asks it to fetch each blob through the swarm (`Warm`). The job's
//! registry credentials travel only inside that mutually authenticated connection.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use damselfly_net::tls;
use damselfly_net::transport::{read_frame_limited, write_frame};
use damselfly_proto as pb;
use damselfly_types::id::PeerId;

use super::PreheatError;
use crate::Shared;

/// A daemon a job's `peers` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTarget {
    /// Its QUIC (peer) address, `HOST:PORT`.
    Addr(String),
    /// Its peer id: the supernode dials the address it last registered from.
    Id(PeerId),
}

/// Longest status frame accepted from a daemon.
const MAX_STATUS_FRAME: usize = 64 * 1024;

/// Parses one `peers` entry: a peer id, or a `HOST:PORT` QUIC address. URLs are refused: the
/// supernode reaches daemons only over the cluster's authenticated QUIC channel.
pub fn parse_peer(entry: &str) -> Result<PeerTarget, PreheatError> {
    let entry = entry.trim();
    let bad = |why: &str| {
        PreheatError::BadRequest(format!(
            "peer {entry:?} {why}: name an enrolled dfdaemon by its peer id or its QUIC address HOST:PORT"
        ))
    };
    if entry.is_empty() {
        return Err(bad("is empty"));
    }
    if entry.contains("://") || entry.contains('/') {
        return Err(bad("is a URL"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains spaces"));
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Ok(PeerTarget::Addr(addr.to_string()));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(PeerTarget::Addr(entry.to_owned())),
        Some(_) => Err(bad("has no valid port")),
        None if entry.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) => {
            Ok(PeerTarget::Id(PeerId::new(entry)))
        }
        None => Err(bad("is neither a peer id nor HOST:PORT")),
    }
}

/// An authenticated connection to one daemon, for one job.
pub(super) struct DaemonLink {
    conn: quinn::Connection,
    /// The daemon's peer id (its certificate's CN).
    pub peer_id: String,
    _endpoint: quinn::Endpoint,
}

impl DaemonLink {
    /// Connects to `target` and checks who answers.
    pub(super) async fn connect(shared: &Shared, target: &PeerTarget) -> Result<Self, String> {
        let addr = match target {
            PeerTarget::Id(id) => shared
                .peer_addr(id)
                .ok_or_else(|| format!("no enrolled daemon {id} has registered with this supernode"))?,
            PeerTarget::Addr(a) => tokio::net::lookup_host(a.as_str())
                .await
                .map_err(|e| format!("cannot resolve {a}: {e}"))?
                .next()
                .ok_or_else(|| format!("{a} resolves to no address"))?,
        };
        let identity = shared.ca.issue_supernode_identity().map_err(|e| e.to_string())?;
        let config = tls::client_config(Some(&identity), &shared.ca.cert_der()).map_err(|e| e.to_string())?;
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|e| format!("cannot open a QUIC socket: {e}"))?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint.connect(addr, tls::PEER_SERVER_NAME).map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(shared.config.origin_connect_timeout, connecting)
            .await
            .map_err(|_| format!("no answer from {addr}"))?
            .map_err(|e| format!("{addr} is not an enrolled dfdaemon of this cluster: {e}"))?;
        let peer_id = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(tls::common_name_of))
            .ok_or_else(|| format!("{addr} presented no peer certificate"))?;
        if let PeerTarget::Id(id) = target {
            if id.as_str() != peer_id {
                conn.close(0u32.into(), b"wrong peer");
                return Err(format!("{addr} is peer {peer_id}, not {id}"));
            }
        }
        Ok(Self { conn, peer_id, _endpoint: endpoint })
    }

    /// Asks the daemon to fetch one blob; follows its status until done. Returns its size.
    pub(super) async fn warm(&self, shared: &Shared, warm: pb::Warm) -> Result<u64, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| format!("connection lost: {e}"))?;
        let req = pb::Request { kind: Some(pb::request::Kind::Warm(warm)) };
        write_frame(&mut send, &req).await.map_err(|e| format!("cannot send the request: {e}"))?;
        let _ = send.finish();
        let mut last = 0;
        loop {
            let frame = tokio::time::timeout(
                shared.config.origin_read_timeout,
                read_frame_limited::<pb::WarmStatus>(&mut recv, MAX_STATUS_FRAME),
            )
            .await;
            let status = match frame {
                Err(_) => return Err(format!("the dfdaemon went silent at {last} bytes")),
                Ok(Err(e)) => return Err(format!("the dfdaemon broke off at {last} bytes: {e}")),
                Ok(Ok(None)) => return Err(format!("the dfdaemon stopped answering at {last} bytes")),
                Ok(Ok(Some(s))) => s,
            };
            if !status.error.is_empty() {
                return Err(match status.origin_status {
                    0 => status.error,
                    code => format!("{} (origin answered HTTP {code})", status.error),
                });
            }
            last = status.bytes;
            if status.done {
                return Ok(status.total.max(status.bytes));
            }
        }
    }
}

impl Drop for DaemonLink {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_ids_or_quic_addresses_never_urls() {
        assert_eq!(parse_peer(" 127.0.0.2:65002 ").unwrap(), PeerTarget::Addr("127.0.0.2:65002".into()));
        assert_eq!(parse_peer("[::1]:7").unwrap(), PeerTarget::Addr("[::1]:7".into()));
        assert_eq!(parse_peer("node-3.example:65002").unwrap(), PeerTarget::Addr("node-3.example:65002".into()));
        assert_eq!(parse_peer("3f9a0c1b2d").unwrap(), PeerTarget::Id(PeerId::new("3f9a0c1b2d")));
        for bad in ["", "http://h:1", "https://h", "h:1/x", "a b:1", "h:port", "h:99999"] {
            let err = parse_peer(bad).expect_err(bad);
            assert!(matches!(err, PreheatError::BadRequest(_)), "{bad:?}");
        }
    }
}
