//! Joining the cluster and staying in it (ARCHITECTURE.md, "Trust and access").
//!
//! The daemon's certificate lives under `DATA_DIR/tls/` (`peer.crt`, `peer.key`, `peer_id`, and
//! `ca.crt` for operators). It is obtained by **enrolling** with the cluster's join token
//! (`--join-token-file FILE`, else `DAMSELFLY_JOIN_TOKEN`): the connection to the supernode is
//! verified against the CA the token pins by hash before the token's secret is sent, so a daemon
//! with a token needs no CA file and never trusts on first use. Without a stored certificate
//! and without a token the daemon does not start. A daemon that has a token but reaches no
//! supernode at start starts anyway, unenrolled ([`PeerIdentity::enrolled`] false: a throwaway
//! certificate no one trusts, so it neither serves nor fetches pieces) and serves through the
//! origin fallback; the first link that reaches a supernode enrolls it ([`enroll_late`]).
//! A refused enrollment (wrong token, another cluster's CA) still stops the start: that is a
//! misconfiguration, not an outage.
//!
//! While the daemon runs, [`maintain`] keeps the certificate valid:
//! - **renewal** at two thirds of its remaining life: a new CSR over a connection authenticated
//!   by the current certificate (same peer id, no token). [`LiveIdentity::replace`] puts the new
//!   one in force for new handshakes (the pool's connections, the upload server); connections
//!   already up keep working, so downloads never notice;
//! - **re-enrollment** with the join token (read again, so a replaced token file is picked up)
//!   when the certificate expired (e.g. the supernode was unreachable for a third of its life) or
//!   the supernode refuses it or presents a CA the daemon no longer trusts (the cluster CA was
//!   regenerated). The reason is logged. At start the same happens to a stored certificate that
//!   expired while the daemon was down or that is not from the token's CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use damselfly_net::tls::{self, Identity, LiveIdentity, PeerKeyRequest};
use damselfly_net::token::{ca_fingerprint, JoinToken, TokenError};
use damselfly_net::transport::{read_frame, with_transport, write_frame, TransportError};
use damselfly_proto as pb;
use damselfly_types::id::PeerId;
use quinn::{Connection, Endpoint};
use rustls_pki_types::CertificateDer;
use tracing::{debug, info, warn};

use crate::config::DaemonConfig;
use crate::supernodes::{Supernodes, SUPERNODE_CONNECT_TIMEOUT};
use crate::Daemon;

/// The environment variable that carries the join token when no token file is configured.
pub const JOIN_TOKEN_ENV: &str = "DAMSELFLY_JOIN_TOKEN";
/// A certificate this close to its end counts as expired: a handshake would not outlive it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);
/// Longest wait before trying again after a failed renewal.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Wait before trying again to enroll after a failed re-enrollment.
const REENROLL_RETRY: Duration = Duration::from_secs(5);
/// Longest the enrollment exchange (request and answer, after the handshake) may take.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);
/// The peer id an unenrolled daemon goes by until it enrolls (never sent to a supernode).
const UNENROLLED: &str = "unenrolled";
/// How to hand a daemon the token, for error messages.
const HOW_TO_GIVE_THE_TOKEN: &str = "pass --join-token-file FILE (or join_token_file in the config file) or set \
     the environment variable DAMSELFLY_JOIN_TOKEN to the cluster's join token; the supernode writes it to its \
     DATA_DIR/join-token on first start, unless its --join-token-file names one";

/// Where the join token comes from. Read again at every enrollment, so a token file replaced
/// while the daemon runs (a new cluster CA) is picked up.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// `--join-token-file` / `join_token_file`.
    File(PathBuf),
    /// The environment variable [`JOIN_TOKEN_ENV`].
    Env,
}

impl TokenSource {
    /// The configured file, else the environment variable when it is set; `None` without either.
    pub fn from_config(config: &DaemonConfig) -> Option<Self> {
        if let Some(path) = &config.join_token_file {
            return Some(Self::File(path.clone()));
        }
        std::env::var(JOIN_TOKEN_ENV).ok().filter(|v| !v.trim().is_empty()).map(|_| Self::Env)
    }

    /// Reads and parses the token.
    pub fn read(&self) -> Result<JoinToken, TokenError> {
        match self {
            Self::File(path) => JoinToken::read_file(path),
            Self::Env => JoinToken::parse(&std::env::var(JOIN_TOKEN_ENV).unwrap_or_default(), JOIN_TOKEN_ENV),
        }
    }
}

/// This daemon's identity in the cluster.
pub struct PeerIdentity {
    /// Peer id given by the supernode at the first enrollment; kept for the daemon's life
    /// (set once by a late enrollment).
    peer_id: std::sync::RwLock<PeerId>,
    /// False while the daemon runs on a placeholder certificate, before its first enrollment.
    enrolled: std::sync::atomic::AtomicBool,
    /// Serialises late enrollments (several links may reach a supernode at once).
    enrolling: tokio::sync::Mutex<()>,
    /// Certificate, key and CA in force; the QUIC configurations read it at every handshake.
    pub tls: Arc<LiveIdentity>,
    /// Where the join token comes from, for re-enrollment.
    token: Option<TokenSource>,
    /// `DATA_DIR/tls`.
    dir: PathBuf,
    /// Signalled when the supernode refused a handshake for a TLS reason.
    refused: tokio::sync::Notify,
}

impl PeerIdentity {
    /// The peer id (the CN of this daemon's certificate).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether the daemon holds a certificate of the cluster (false until a late enrollment).
    pub fn enrolled(&self) -> bool {
        self.enrolled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Tells [`maintain`] that a handshake with the supernode was refused for a certificate
    /// reason: it checks at once whether the daemon must enroll again.
    pub fn handshake_refused(&self) {
        self.refused.notify_one();
    }
}

/// Loads the stored identity, or enrolls with the first of `supernodes` that answers (see the
/// module documentation for when). With `lazy`, a daemon that reaches none starts unenrolled.
pub async fn load_or_enroll(
    config: &DaemonConfig,
    endpoint: &Endpoint,
    supernodes: &Supernodes,
    lazy: bool,
) -> anyhow::Result<PeerIdentity> {
    let dir = config.data_dir.join("tls");
    let source = TokenSource::from_config(config);
    let token = source.as_ref().map(TokenSource::read).transpose()?;
    let given_ca = config.ca_cert.as_deref().map(tls::load_ca_cert).transpose()?;
    if let (Some(token), Some(ca), Some(path)) = (&token, &given_ca, &config.ca_cert) {
        if !token.pins(ca) {
            bail!(
                "--ca-cert {} is the CA {}, but the join token pins {}: they must name the same cluster CA \
                 (the token alone is enough: drop --ca-cert)",
                path.display(),
                ca_fingerprint(ca),
                token.ca_fingerprint()
            );
        }
    }
    let identity = |peer_id, live| PeerIdentity {
        peer_id: std::sync::RwLock::new(peer_id),
        enrolled: std::sync::atomic::AtomicBool::new(true),
        enrolling: tokio::sync::Mutex::new(()),
        tls: live,
        token: source.clone(),
        dir: dir.clone(),
        refused: tokio::sync::Notify::new(),
    };
    let stored = load_stored(&dir)?;
    let previous = match stored {
        Some((peer_id, stored)) => match stale(&stored, token.as_ref(), given_ca.as_ref()) {
            None => return Ok(identity(peer_id, LiveIdentity::new(&stored)?)),
            Some(reason) => {
                if token.is_none() {
                    bail!("{reason}, and there is no join token to enroll again: {HOW_TO_GIVE_THE_TOKEN}");
                }
                warn!(reason = %reason, "enrolling again with the join token");
                Some(peer_id)
            }
        },
        None => None,
    };
    let Some(token) = token else {
        bail!(
            "this dfdaemon has no certificate yet ({}) and no join token to enroll with: {HOW_TO_GIVE_THE_TOKEN}",
            dir.join("peer.crt").display()
        );
    };
    let mut unreachable = Vec::new();
    for link in supernodes.links() {
        let addr = match link.addr().await {
            Ok(addr) => addr,
            Err(e) => {
                unreachable.push(e);
                continue;
            }
        };
        match enroll(endpoint, addr, &token, previous.as_ref()).await {
            Ok((peer_id, enrolled)) => {
                let live = LiveIdentity::new(&enrolled)?;
                save(&dir, &peer_id, &enrolled)?;
                return Ok(identity(peer_id, live));
            }
            Err(EnrollError::Unreachable(e)) => unreachable.push(format!("{e:#}")),
            Err(EnrollError::Refused(e)) => return Err(e),
        }
    }
    if !lazy {
        bail!("{}", unreachable.join("; "));
    }
    warn!(
        why = %unreachable.join("; "),
        "no supernode reachable to enroll: serving through the origin fallback, enrolling as soon as one answers"
    );
    // A throwaway CA's certificate: nobody trusts it and the key of its CA is gone, so this
    // daemon can neither serve nor fetch pieces until it enrolls.
    let placeholder = tls::ClusterCa::generate()?.issue_peer_identity(UNENROLLED)?;
    let unenrolled = identity(previous.unwrap_or_else(|| PeerId::new(UNENROLLED)), LiveIdentity::new(&placeholder)?);
    unenrolled.enrolled.store(false, std::sync::atomic::Ordering::Release);
    Ok(unenrolled)
}

/// Enrolls a daemon that started unenrolled, with the supernode at `addr` (once: later calls
/// return at once).
pub async fn enroll_late(daemon: &Daemon, addr: SocketAddr) -> anyhow::Result<()> {
    let identity = &daemon.identity;
    let _guard = identity.enrolling.lock().await;
    if identity.enrolled() {
        return Ok(());
    }
    let Some(source) = &identity.token else { bail!("no join token to enroll with: {HOW_TO_GIVE_THE_TOKEN}") };
    let token = source.read()?;
    let previous = identity.peer_id();
    let previous = (previous.as_str() != UNENROLLED).then_some(previous);
    let (peer_id, enrolled) = match enroll(daemon.pool.endpoint(), addr, &token, previous.as_ref()).await {
        Ok(v) => v,
        Err(EnrollError::Unreachable(e) | EnrollError::Refused(e)) => return Err(e),
    };
    identity.tls.replace(&enrolled)?;
    save(&identity.dir, &peer_id, &enrolled)?;
    *identity.peer_id.write().unwrap_or_else(std::sync::PoisonError::into_inner) = peer_id;
    identity.enrolled.store(true, std::sync::atomic::Ordering::Release);
    Ok(())
}

/// Why an enrollment did not happen.
#[derive(Debug)]
enum EnrollError {
    /// The supernode could not be reached or did not answer in time: try again later.
    Unreachable(anyhow::Error),
    /// The supernode or the token refused it: a misconfiguration.
    Refused(anyhow::Error),
}

/// Why a stored identity cannot be used, if it cannot.
fn stale(stored: &Identity, token: Option<&JoinToken>, given_ca: Option<&CertificateDer<'_>>) -> Option<String> {
    let ca = stored.chain.last()?;
    if let Some(token) = token {
        if !token.pins(ca) {
            return Some(format!(
                "the stored certificate is from the cluster CA {}, not the CA {} the join token pins (the CA was regenerated?)",
                ca_fingerprint(ca),
                token.ca_fingerprint()
            ));
        }
    }
    if given_ca.is_some_and(|given| given != ca) {
        return Some("the stored certificate is not from the CA --ca-cert names".to_owned());
    }
    match tls::not_after(&stored.chain[0]) {
        Ok(end) if end > SystemTime::now() + EXPIRY_MARGIN => None,
        Ok(end) => Some(format!("the stored certificate expired at {}", humantime::format_rfc3339_seconds(end))),
        Err(e) => Some(format!("the stored certificate cannot be read: {e}")),
    }
}

fn load_stored(dir: &Path) -> anyhow::Result<Option<(PeerId, Identity)>> {
    let Some(identity) = Identity::load(dir, "peer")? else { return Ok(None) };
    match std::fs::read_to_string(dir.join("peer_id")) {
        Ok(id) if !id.trim().is_empty() => Ok(Some((PeerId::new(id.trim()), identity))),
        _ => Ok(None),
    }
}

fn save(dir: &Path, peer_id: &PeerId, identity: &Identity) -> anyhow::Result<()> {
    identity.save(dir, "peer")?;
    if let Some(ca) = identity.chain.last() {
        tls::save_ca_cert(&dir.join("ca.crt"), ca)?;
    }
    let path = dir.join("peer_id");
    std::fs::write(&path, peer_id.to_string()).with_context(|| format!("cannot write {}", path.display()))
}

/// Enrolls with the join token: verifies the supernode against the CA the token pins, then
/// sends a CSR with the token's secret. `previous`: the peer id to keep.
async fn enroll(
    endpoint: &Endpoint,
    supernode: SocketAddr,
    token: &JoinToken,
    previous: Option<&PeerId>,
) -> Result<(PeerId, Identity), EnrollError> {
    let refused = EnrollError::Refused;
    let (client, report) = tls::pinned_client_config(token.ca_sha256()).map_err(|e| refused(e.into()))?;
    let connecting = endpoint
        .connect_with(with_transport(client), supernode, tls::SUPERNODE_SERVER_NAME)
        .map_err(|e| refused(e.into()))?;
    let timed_out = |after: Duration| anyhow!("no answer within {after:?}");
    let conn = match tokio::time::timeout(SUPERNODE_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Err(_) => {
            return Err(EnrollError::Unreachable(
                timed_out(SUPERNODE_CONNECT_TIMEOUT).context(format!("cannot reach supernode {supernode} to enroll")),
            ))
        }
        Ok(Err(e)) => match report.presented_ca() {
            Some(presented) => {
                return Err(refused(anyhow!(
                    "supernode {supernode} presents the cluster CA sha256:{}, but the join token pins {}: the token \
                 belongs to another cluster, or the supernode's CA was regenerated (give this daemon the supernode's \
                 current join token); the token's secret was not sent",
                    hex::encode(presented),
                    token.ca_fingerprint()
                )))
            }
            None => {
                return Err(EnrollError::Unreachable(
                    anyhow!(e).context(format!("cannot reach supernode {supernode} to enroll")),
                ))
            }
        },
    };
    let request = PeerKeyRequest::new().map_err(|e| refused(e.into()))?;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    let enroll = pb::EnrollRequest {
        csr_der: request.csr_der().to_vec(),
        hostname,
        join_secret: token.secret().to_owned(),
        peer_id: previous.map(ToString::to_string).unwrap_or_default(),
    };
    let resp = tokio::time::timeout(ENROLL_TIMEOUT, exchange(&conn, pb::request::Kind::Enroll(enroll))).await;
    conn.close(0u32.into(), b"enrolled");
    let resp = match resp {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return Err(EnrollError::Unreachable(anyhow!("enrollment with supernode {supernode} failed: {e}")))
        }
        Err(_) => {
            return Err(EnrollError::Unreachable(
                timed_out(ENROLL_TIMEOUT).context(format!("enrollment with supernode {supernode}")),
            ))
        }
    };
    if !resp.error.is_empty() {
        return Err(refused(anyhow!("supernode {supernode} refused to enroll this daemon: {}", resp.error)));
    }
    let ca = CertificateDer::from(resp.ca_der);
    if !token.pins(&ca) {
        return Err(refused(anyhow!("supernode {supernode} answered with a CA the join token does not pin")));
    }
    if previous.is_some_and(|p| p.as_str() != resp.peer_id) {
        warn!(peer = %resp.peer_id, "the supernode gave a new peer id");
    }
    info!(peer = %resp.peer_id, %supernode, ca = %token.ca_fingerprint(), "enrolled with the join token");
    Ok((PeerId::new(resp.peer_id), request.into_identity(CertificateDer::from(resp.cert_der), ca)))
}

/// Sends one request on a new stream and reads the `EnrollResponse`.
async fn exchange(conn: &Connection, kind: pb::request::Kind) -> Result<pb::EnrollResponse, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &pb::Request { kind: Some(kind) }).await?;
    let _ = send.finish();
    read_frame(&mut recv).await?.ok_or(TransportError::Truncated)
}

/// Whether a QUIC error is a refusal at the TLS level (a certificate the other side did not
/// accept) rather than an unreachable or broken peer.
pub fn is_tls_refusal(error: &TransportError) -> bool {
    let code = match error {
        TransportError::Connection { source, .. } | TransportError::Stream(source) => match source {
            quinn::ConnectionError::TransportError(e) => e.code,
            quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
            _ => return false,
        },
        _ => return false,
    };
    // QUIC carries TLS alerts as the transport error codes 0x100-0x1ff (RFC 9001, 4.8).
    (0x100..0x200).contains(&u64::from(code))
}

/// Why a renewal did not happen.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    /// The supernode (or this daemon) refused the handshake or the request: enroll again.
    #[error("{0}")]
    Refused(String),
    /// The supernode could not be reached or the exchange broke: try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Keeps the certificate valid while the daemon runs (see the module documentation).
pub async fn maintain(daemon: Arc<Daemon>) {
    let identity = &daemon.identity;
    let mut next = renewal_due(identity.tls.not_after());
    loop {
        // A refused handshake is checked at once: renewing over a fresh connection tells whether
        // the supernode still accepts this certificate, and enrolls again if not.
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = identity.refused.notified() => {}
        }
        if !identity.enrolled() {
            // The placeholder needs no renewal: the links enroll the daemon.
            next = tokio::time::Instant::now() + REENROLL_RETRY;
            continue;
        }
        let remaining = remaining(identity.tls.not_after());
        let outcome = if remaining.is_zero() {
            let end = humantime::format_rfc3339_seconds(identity.tls.not_after());
            re_enroll(&daemon, format!("the certificate expired at {end}")).await
        } else {
            match renew(&daemon).await {
                Ok(()) => Ok(()),
                Err(RenewError::Refused(why)) => re_enroll(&daemon, why).await,
                Err(RenewError::Unavailable(why)) => Err(anyhow!("cannot renew the certificate: {why}")),
            }
        };
        next = match outcome {
            Ok(()) => renewal_due(identity.tls.not_after()),
            Err(e) => {
                let retry = retry_after(remaining);
                warn!(error = %format!("{e:#}"), retry_in = ?retry, "certificate not renewed");
                tokio::time::Instant::now() + retry
            }
        };
    }
}

/// Renews over a connection authenticated by the current certificate.
async fn renew(daemon: &Daemon) -> Result<(), RenewError> {
    let classify = |e: TransportError| {
        if is_tls_refusal(&e) {
            RenewError::Refused(format!(
                "a handshake with the supernode failed on a certificate (the cluster CA changed, or the supernode \
                 no longer accepts this daemon's certificate): {e}"
            ))
        } else {
            RenewError::Unavailable(e.to_string())
        }
    };
    // The link's connection when one is up (as before: no handshake on the way), else a fresh
    // one, which also tells whether the supernode still accepts this certificate.
    let (conn, fresh) = match daemon.supernodes.any_up() {
        Some((_, conn)) => (conn, false),
        None => (dial_any(daemon).await.map_err(classify)?, true),
    };
    let request = PeerKeyRequest::new().map_err(|e| RenewError::Unavailable(e.to_string()))?;
    let renew = pb::RenewRequest { csr_der: request.csr_der().to_vec() };
    let resp = exchange(&conn, pb::request::Kind::Renew(renew)).await;
    if fresh {
        conn.close(0u32.into(), b"renewed");
    }
    let resp = resp.map_err(classify)?;
    if !resp.error.is_empty() {
        return Err(RenewError::Refused(format!("the supernode refused the renewal: {}", resp.error)));
    }
    let ca = daemon.identity.tls.ca();
    if resp.ca_der != ca.as_ref() {
        return Err(RenewError::Refused("the supernode's CA changed".into()));
    }
    let renewed = request.into_identity(CertificateDer::from(resp.cert_der), ca);
    install(daemon, &renewed).map_err(|e| RenewError::Unavailable(format!("{e:#}")))?;
    debug!(until = %humantime::format_rfc3339_seconds(daemon.identity.tls.not_after()), "certificate renewed");
    Ok(())
}

/// Enrolls again with the join token, keeping the peer id; logs why.
async fn re_enroll(daemon: &Daemon, why: String) -> anyhow::Result<()> {
    let identity = &daemon.identity;
    let Some(source) = &identity.token else {
        bail!("{why}, and there is no join token to enroll again: {HOW_TO_GIVE_THE_TOKEN}");
    };
    warn!(reason = %why, "enrolling again with the join token");
    let token = source.read()?;
    let endpoint = daemon.pool.endpoint();
    let mut why = Vec::new();
    for link in daemon.supernodes.links() {
        let addr = match link.addr().await {
            Ok(addr) => addr,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        match enroll(endpoint, addr, &token, Some(&identity.peer_id())).await {
            Ok((_, enrolled)) => {
                identity.tls.replace(&enrolled)?;
                // The links were refused with the old certificate: they try again at once.
                daemon.supernodes.links().iter().for_each(|l| l.retry_now());
                return save(&identity.dir, &identity.peer_id(), &enrolled);
            }
            Err(EnrollError::Unreachable(e) | EnrollError::Refused(e)) => why.push(format!("{e:#}")),
        }
    }
    bail!("{}", why.join("; "))
}

/// A fresh connection to the first supernode that answers (no link is up: a refused handshake
/// must be seen to enroll again).
async fn dial_any(daemon: &Daemon) -> Result<Connection, TransportError> {
    let mut last = None;
    for link in daemon.supernodes.links() {
        let Ok(addr) = link.addr().await else { continue };
        match crate::supernodes::dial(daemon, addr).await {
            Ok(conn) => return Ok(conn),
            Err(e) if is_tls_refusal(&e) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(TransportError::Timeout(crate::supernodes::SUPERNODE_CONNECT_TIMEOUT)))
}

/// Puts a new certificate in force and stores it.
fn install(daemon: &Daemon, next: &Identity) -> anyhow::Result<()> {
    let identity = &daemon.identity;
    identity.tls.replace(next)?;
    save(&identity.dir, &identity.peer_id(), next)
}

/// Time left until `end`, zero when it is (nearly) over.
fn remaining(end: SystemTime) -> Duration {
    end.duration_since(SystemTime::now() + EXPIRY_MARGIN).unwrap_or(Duration::ZERO)
}

/// When to renew a certificate valid until `end`: after two thirds of its remaining life.
fn renewal_due(end: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now() + remaining(end) * 2 / 3
}

/// How long to wait after a failed attempt, with `remaining` life left.
fn retry_after(remaining: Duration) -> Duration {
    if remaining.is_zero() {
        REENROLL_RETRY
    } else {
        (remaining / 4).clamp(Duration::from_secs(1), MAX_RETRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds_and_retries_stay_inside_the_life_left() {
        let now = tokio::time::Instant::now();
        let due = renewal_due(SystemTime::now() + Duration::from_secs(301)) - now;
        assert!(due > Duration::from_secs(198) && due < Duration::from_secs(201), "{due:?}");
        assert!(renewal_due(SystemTime::now() - Duration::from_secs(5)) - now < Duration::from_millis(50));
        assert_eq!(retry_after(Duration::ZERO), REENROLL_RETRY);
        assert_eq!(retry_after(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(retry_after(Duration::from_secs(40)), Duration::from_secs(10));
        assert_eq!(retry_after(Duration::from_secs(24 * 3600)), MAX_RETRY);
    }

    #[test]
    fn stored_identities_are_judged_against_the_token_and_the_clock() {
        let ca = tls::ClusterCa::generate().expect("CA");
        let stored = ca.issue_peer_identity("p").expect("identity");
        let token = JoinToken::generate(&ca.cert_der());
        assert_eq!(stale(&stored, Some(&token), Some(&ca.cert_der())), None);
        assert_eq!(stale(&stored, None, None), None);
        let other = tls::ClusterCa::generate().expect("CA");
        let reason = stale(&stored, Some(&JoinToken::generate(&other.cert_der())), None).expect("other CA");
        assert!(reason.contains("not the CA"), "{reason}");
        assert!(stale(&stored, None, Some(&other.cert_der())).is_some());

        let request = PeerKeyRequest::new().expect("request");
        let leaf = ca.sign_peer_csr(request.csr_der(), "p", Duration::from_secs(1)).expect("sign");
        let short = request.into_identity(leaf, ca.cert_der());
        let reason = stale(&short, Some(&token), None).expect("about to expire");
        assert!(reason.contains("expired"), "{reason}");
    }
}
