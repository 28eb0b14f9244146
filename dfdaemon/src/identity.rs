//! Joining the cluster: the daemon's certificate, obtained once from the supernode by a CSR and
//! kept under `DATA_DIR/tls/` (peer.crt, peer.key, peer_id, ca.crt).
//!
//! Trust in the supernode comes from `--ca-cert` when given; otherwise from the CA pinned on an
//! earlier run; otherwise (first contact) the CA the supernode presents is accepted after its
//! chain and handshake verify, and pinned for every later connection (trust on first use).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use damselfly_common::id::PeerId;
use damselfly_common::tls::{self, Identity, PeerKeyRequest};
use damselfly_common::transport::{read_frame, with_transport, write_frame};
use damselfly_proto as pb;
use quinn::Endpoint;
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};

use crate::config::DaemonConfig;

/// This daemon's identity in the cluster.
#[derive(Clone)]
pub struct PeerIdentity {
    /// Peer id given by the supernode.
    pub peer_id: PeerId,
    /// Certificate chain and key.
    pub identity: Identity,
    /// The cluster CA.
    pub ca: CertificateDer<'static>,
}

/// Loads the identity from `data_dir`, or enrolls with the supernode at `supernode`.
pub async fn load_or_enroll(
    config: &DaemonConfig,
    endpoint: &Endpoint,
    supernode: SocketAddr,
) -> anyhow::Result<PeerIdentity> {
    let dir = config.data_dir.join("tls");
    let given_ca = match &config.ca_cert {
        Some(path) => Some(tls::load_ca_cert(path)?),
        None => None,
    };
    let pinned_path = dir.join("ca.crt");
    let pinned = if pinned_path.exists() { Some(tls::load_ca_cert(&pinned_path)?) } else { None };
    let trusted = given_ca.or(pinned);
    if let (Some(ca), Some(identity), Ok(id)) =
        (&trusted, Identity::load(&dir, "peer")?, std::fs::read_to_string(dir.join("peer_id")))
    {
        if identity.chain.last() == Some(ca) {
            return Ok(PeerIdentity { peer_id: PeerId::new(id.trim()), identity, ca: ca.clone() });
        }
        warn!("stored peer certificate is not from the configured CA: enrolling again");
    }
    enroll(endpoint, supernode, trusted, &dir).await
}

async fn enroll(
    endpoint: &Endpoint,
    supernode: SocketAddr,
    trusted: Option<CertificateDer<'static>>,
    dir: &Path,
) -> anyhow::Result<PeerIdentity> {
    let (client, tofu) = match &trusted {
        Some(ca) => (tls::client_config(None, ca)?, None),
        None => {
            let (c, capture) = tls::tofu_client_config()?;
            (c, Some(capture))
        }
    };
    let conn = endpoint
        .connect_with(with_transport(client), supernode, tls::SUPERNODE_SERVER_NAME)?
        .await
        .with_context(|| format!("cannot reach supernode {supernode} to enroll"))?;
    let ca = match (trusted, &tofu) {
        (Some(ca), _) => ca,
        (None, Some(capture)) => {
            let ca = capture.captured_ca().context("supernode presented no CA certificate")?;
            warn!(supernode = %supernode, "no --ca-cert given: trusting the supernode's CA on first use and pinning it");
            ca
        }
        (None, None) => bail!("no trust anchor for the supernode"),
    };
    let request = PeerKeyRequest::new()?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_owned();
    let req = pb::Request {
        kind: Some(pb::request::Kind::Enroll(pb::EnrollRequest { csr_der: request.csr_der().to_vec(), hostname })),
    };
    write_frame(&mut send, &req).await?;
    let _ = send.finish();
    let resp: pb::EnrollResponse = read_frame(&mut recv).await?.context("supernode closed the enrollment stream")?;
    conn.close(0u32.into(), b"enrolled");
    if !resp.error.is_empty() {
        bail!("supernode refused enrollment: {}", resp.error);
    }
    if resp.ca_der != ca.as_ref() {
        bail!("supernode's enrollment answer names a different CA than its TLS chain");
    }
    let identity = request.into_identity(CertificateDer::from(resp.cert_der), ca.clone());
    identity.save(dir, "peer")?;
    tls::save_ca_cert(&dir.join("ca.crt"), &ca)?;
    std::fs::write(dir.join("peer_id"), &resp.peer_id)?;
    info!(peer = %resp.peer_id, "enrolled with the supernode");
    Ok(PeerIdentity { peer_id: PeerId::new(resp.peer_id), identity, ca })
}
