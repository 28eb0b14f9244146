//! An identity that changes while the node runs (renewal, re-enrollment under a new CA), read by
//! rustls at every handshake.
//!
//! The daemon builds its QUIC client and server configurations once, from a [`LiveIdentity`]:
//! the certificate both sides present comes from a resolver ([`ResolvesClientCert`],
//! [`ResolvesServerCert`]) and the peer's certificate is checked by verifiers that delegate to
//! webpki verifiers built for the current CA. [`LiveIdentity::replace`] swaps all of it at once:
//! handshakes from then on use the new certificate (and CA); connections already up are not
//! touched, so transfers in flight never notice a renewal.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{config_error, provider, quic_client_config, roots, Identity, TlsError, ALPN};

/// A node's current certificate, key and CA, replaceable while configurations built from it are
/// in use.
#[derive(Debug)]
pub struct LiveIdentity {
    current: RwLock<Arc<Current>>,
}

/// One generation of the identity: everything a handshake needs, built together.
#[derive(Debug)]
struct Current {
    /// The chain `[leaf, ca]` and the leaf's signing key.
    certified: Arc<CertifiedKey>,
    /// The cluster CA: the only root of both verifiers.
    ca: CertificateDer<'static>,
    /// When the leaf expires.
    not_after: SystemTime,
    /// Verifies servers (the supernode, parents) against `ca`.
    server_verifier: Arc<WebPkiServerVerifier>,
    /// Verifies the client certificates of peers that download from this node (mandatory).
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Current {
    fn new(identity: &Identity) -> Result<Self, TlsError> {
        let provider = provider();
        let Some(ca) = identity.chain.last().filter(|_| identity.chain.len() >= 2).cloned() else {
            return Err(TlsError::Config {
                what: "live identity",
                detail: "the chain must be the leaf followed by the cluster CA".into(),
            });
        };
        let certified = CertifiedKey::from_der(identity.chain.clone(), identity.key.clone_key(), &provider)
            .map_err(config_error("live identity"))?;
        let roots = roots(&ca)?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(config_error("server certificate verifier"))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(config_error("client certificate verifier"))?;
        let not_after = super::not_after(&identity.chain[0])?;
        Ok(Self { certified: Arc::new(certified), ca, not_after, server_verifier, client_verifier })
    }
}

impl LiveIdentity {
    /// Starts with `identity` (chain `[leaf, ca]`). Fails when the key does not belong to the
    /// leaf or the CA is not a usable root.
    pub fn new(identity: &Identity) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(Arc::new(Current::new(identity)?)) }))
    }

    /// Makes `identity` the one every later handshake uses. Checked first: on an error the old
    /// identity stays in force.
    pub fn replace(&self, identity: &Identity) -> Result<(), TlsError> {
        let next = Arc::new(Current::new(identity)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The cluster CA in force.
    pub fn ca(&self) -> CertificateDer<'static> {
        self.current().ca.clone()
    }

    /// When the current certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// Client configuration for the supernode and for parents: presents the current certificate,
    /// verifies the server against the current CA (callers pass the server name to `connect`).
    pub fn client_config(self: &Arc<Self>) -> Result<quinn::ClientConfig, TlsError> {
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error("client TLS config"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(LiveResolver(self.clone())));
        quic_client_config(tls)
    }

    /// Server configuration of a peer's upload endpoint: presents the current certificate and
    /// requires a client certificate that verifies against the current CA.
    pub fn peer_server_config(self: &Arc<Self>) -> Result<quinn::ServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error("server TLS config"))?
            .with_client_cert_verifier(Arc::new(LiveClientVerifier(self.clone())))
            .with_cert_resolver(Arc::new(LiveResolver(self.clone())));
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(config_error("QUIC server config"))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Presents the current certificate, as client and as server.
#[derive(Debug)]
struct LiveResolver(Arc<LiveIdentity>);

impl ResolvesClientCert for LiveResolver {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

/// Verifies a server with webpki against the current CA.
#[derive(Debug)]
struct LiveServerVerifier(Arc<LiveIdentity>);

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verifier = self.0.current().server_verifier.clone();
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().server_verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().server_verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().server_verifier.supported_verify_schemes()
    }
}

/// Verifies a peer's client certificate with webpki against the current CA; a certificate is
/// required.
#[derive(Debug)]
struct LiveClientVerifier(Arc<LiveIdentity>);

impl ClientCertVerifier for LiveClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; peers present their one certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().client_verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().client_verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.current().client_verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}
