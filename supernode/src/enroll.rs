//! Issuing peer certificates (ARCHITECTURE.md, "Trust and access").
//!
//! - **Enrollment** (`EnrollRequest`, on a connection without a client certificate): the daemon
//!   proves it holds the cluster's join token by sending its secret, which it does only after
//!   its handshake verified this supernode against the CA the token pins. The secret is compared
//!   in constant time; a missing or wrong one is refused with a reason the daemon shows.
//! - **Renewal** (`RenewRequest`, on a connection authenticated by the peer's current, still
//!   valid certificate): no token needed; the new certificate carries the same peer id, the CN
//!   of the certificate the connection presented.
//!
//! Both sign the peer's CSR with the cluster CA for `peer_cert_ttl`
//! ([`damselfly_net::tls::ClusterCa::sign_peer_csr`]).

use std::net::SocketAddr;

use damselfly_net::transport::{write_frame, TransportError};
use damselfly_proto as pb;
use quinn::SendStream;
use tracing::{debug, info, warn};

use crate::Shared;

/// Longest peer id a re-enrolling daemon may ask to keep.
const MAX_PEER_ID_LEN: usize = 64;

/// Answers an `EnrollRequest`.
pub(crate) async fn enroll(
    shared: &Shared,
    remote: SocketAddr,
    req: pb::EnrollRequest,
    send: &mut SendStream,
) -> Result<(), TransportError> {
    let resp = match check_join_secret(shared, &req.join_secret) {
        Err(reason) => {
            shared.metrics.enrollments_refused.inc();
            warn!(%remote, hostname = %req.hostname, reason, "enrollment refused");
            refusal(format!("enrollment refused: {reason}"))
        }
        Ok(()) => {
            let kept = is_valid_peer_id(&req.peer_id);
            let peer_id = if kept { req.peer_id.clone() } else { new_peer_id() };
            let resp = issue(shared, &req.csr_der, peer_id.clone());
            if resp.error.is_empty() {
                shared.metrics.enrollments.inc();
                info!(peer = %peer_id, hostname = %req.hostname, %remote, re_enrolled = kept, "peer enrolled");
            }
            resp
        }
    };
    answer(send, &resp).await
}

/// Answers a `RenewRequest`; `client` is the peer id of the connection's client certificate.
pub(crate) async fn renew(
    shared: &Shared,
    remote: SocketAddr,
    client: Option<&str>,
    req: pb::RenewRequest,
    send: &mut SendStream,
) -> Result<(), TransportError> {
    let resp = match client {
        Some(peer_id) if is_valid_peer_id(peer_id) => {
            let resp = issue(shared, &req.csr_der, peer_id.to_owned());
            if resp.error.is_empty() {
                shared.metrics.renewals.inc();
                debug!(peer = %peer_id, %remote, "peer certificate renewed");
            }
            resp
        }
        _ => {
            warn!(%remote, "renewal refused: the connection presented no peer certificate");
            refusal("renewal refused: renewing needs a connection authenticated by a peer certificate; enroll with the join token".into())
        }
    };
    answer(send, &resp).await
}

/// Checks the join token's secret sent by an enrolling daemon.
fn check_join_secret(shared: &Shared, presented: &str) -> Result<(), &'static str> {
    if presented.is_empty() {
        return Err("no join token was sent: start the dfdaemon with --join-token-file FILE or the environment \
                    variable DAMSELFLY_JOIN_TOKEN (the supernode keeps its token in DATA_DIR/join-token unless \
                    its --join-token-file names one)");
    }
    if !shared.tokens.join.secret_matches(presented) {
        return Err("the join token is wrong: give the dfdaemon this cluster's current join token (the \
                    supernode's DATA_DIR/join-token, or the file its --join-token-file names)");
    }
    Ok(())
}

/// Signs `csr` for `peer_id`; the answer carries the error when the CSR is unusable.
fn issue(shared: &Shared, csr: &[u8], peer_id: String) -> pb::EnrollResponse {
    match shared.ca.sign_peer_csr(csr, &peer_id, shared.config.peer_cert_ttl) {
        Ok(cert) => pb::EnrollResponse {
            peer_id,
            cert_der: cert.to_vec(),
            ca_der: shared.ca.cert_der().to_vec(),
            error: String::new(),
        },
        Err(e) => refusal(format!("certificate refused: {e}")),
    }
}

fn refusal(error: String) -> pb::EnrollResponse {
    pb::EnrollResponse { error, ..Default::default() }
}

async fn answer(send: &mut SendStream, resp: &pb::EnrollResponse) -> Result<(), TransportError> {
    write_frame(send, resp).await?;
    let _ = send.finish();
    Ok(())
}

fn new_peer_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

/// Peer ids a re-enrolling daemon may keep: what [`new_peer_id`] makes and similar plain ids.
fn is_valid_peer_id(id: &str) -> bool {
    (1..=MAX_PEER_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_peer_ids_are_plain() {
        assert!(is_valid_peer_id(&new_peer_id()));
        assert!(is_valid_peer_id("host-7.rack_2"));
        for bad in ["", "a b", "a\nb", "é", &"x".repeat(65)] {
            assert!(!is_valid_peer_id(bad), "{bad:?}");
        }
    }
}
