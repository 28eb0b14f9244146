//! TLS identities and QUIC crypto configurations for the supernode and the dfdaemons.
//!
//! # Trust model
//!
//! A **cluster CA**, owned by the supernode, is the root of trust. The supernode keeps
//! `ca.crt` / `ca.key` (PEM) in a directory and generates them on first start
//! ([`ClusterCa::load_or_generate`]). It issues itself a leaf certificate whose only SAN is the DNS
//! name [`SUPERNODE_SERVER_NAME`] ([`ClusterCa::issue_supernode_identity`]).
//!
//! A dfdaemon **enrolls** with the cluster's join token ([`crate::token::JoinToken`]): it
//! generates its own key pair and a CSR ([`PeerKeyRequest`]), connects to the supernode with
//! [`pinned_client_config`] (the supernode must present a chain containing the CA whose sha256
//! the token carries, and its leaf must verify against that CA), and only then sends the CSR
//! with the token's secret. The supernode signs a peer leaf certificate
//! ([`ClusterCa::sign_peer_csr`]) whose only SAN is [`PEER_SERVER_NAME`], whose CN is the peer id
//! and whose lifetime is the supernode's `peer_cert_ttl`. Every name the CSR asks for is
//! ignored, so a peer can never obtain a certificate for the supernode's name. The private key
//! never leaves the host. Before the certificate expires the daemon sends a new CSR over a
//! connection authenticated by the current certificate and gets the next one for the same peer
//! id (renewal); [`LiveIdentity`] swaps it in for new handshakes without touching connections
//! already up.
//!
//! Afterwards peers use **mutual TLS** between each other ([`LiveIdentity::peer_server_config`]
//! and [`LiveIdentity::client_config`], or the static [`peer_server_config`] and
//! [`client_config`]: both sides verify the other's chain against the CA) and present their
//! client certificate to the supernode ([`supernode_server_config`] verifies it when present;
//! [`has_client_identity`] tells the application whether it was, [`client_peer_id`] which peer
//! it is).
//!
//! # How a dfdaemon learns the CA
//!
//! - From the **join token**: it pins the CA by hash ([`pinned_client_config`]); the CA
//!   certificate itself comes with the enrollment answer and is checked against the hash.
//! - Or the operator gives the CA certificate file ([`load_ca_cert`]); with a token it must be
//!   the CA the token pins.
//! - Afterwards the CA is the last certificate of the daemon's stored chain.
//!
//! There is no trust on first use and no verifier that accepts any certificate in this module:
//! every verifier here ends in webpki's chain, validity and name checks against one CA.
//!
//! # Conventions
//!
//! Every configuration negotiates TLS 1.3 only (QUIC requires it), uses ALPN [`ALPN`] and the
//! *ring* crypto provider explicitly, so nothing depends on a process-wide default provider.
//! Transport parameters (timeouts, flow-control windows) are left to the caller. Keys are ECDSA
//! P-256. Leaf validity starts one hour in the past to tolerate clock skew between hosts.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

mod live;
pub use live::LiveIdentity;

/// ALPN protocol identifier of every Damselfly QUIC connection.
pub const ALPN: &[u8] = b"damselfly/1";

/// DNS name in the supernode's certificate; clients pass it to `connect` for a supernode.
pub const SUPERNODE_SERVER_NAME: &str = "supernode.damselfly.internal";

/// DNS name in every peer certificate; clients pass it to `connect` for a peer.
pub const PEER_SERVER_NAME: &str = "peer.damselfly.internal";

/// Common name of the cluster CA certificate.
const CA_COMMON_NAME: &str = "Damselfly cluster CA";
/// Common name of the supernode's leaf certificate.
const SUPERNODE_COMMON_NAME: &str = "Damselfly supernode";
/// Lifetime of the cluster CA: ten years.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the supernode's leaf certificate (issued anew at every start) and of
/// [`ClusterCa::issue_peer_identity`]'s: one year. Enrolled peers get the supernode's
/// `peer_cert_ttl` instead.
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start being valid this long before they are issued, for hosts whose clocks lag.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Longest peer id accepted as a certificate CN (X.520 upper bound for commonName).
const MAX_PEER_ID_LEN: usize = 64;
/// File names of the cluster CA inside its directory.
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// Everything that can go wrong while creating, storing or using TLS identities.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory could not be read or written.
    #[error("cannot access {path}: {source}; check that it exists and that this user may read and write it")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Generating a key pair or a certificate failed.
    #[error("cannot generate a key or certificate: {0}; this is a bug, please report it")]
    Generate(#[source] rcgen::Error),
    /// A file does not hold the PEM content expected.
    #[error("{path} does not hold {expected} ({detail}); replace it with a valid PEM file")]
    BadPem {
        /// The file concerned.
        path: PathBuf,
        /// What the file should hold, e.g. "a PEM certificate".
        expected: &'static str,
        /// Why it was rejected.
        detail: String,
    },
    /// The private key on disk does not belong to the certificate next to it.
    #[error("the private key in {key} does not belong to the certificate in {cert}; restore the matching pair")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Only one of a certificate/key pair exists on disk.
    #[error("{present} exists but {missing} does not; restore {missing}, or remove {present} to start over (a new cluster CA means every peer must enroll again)")]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A certificate signing request could not be parsed or its signature is wrong.
    #[error("invalid certificate signing request: {0}; the peer must send a DER PKCS#10 request signed by its own key and without extensions other than SAN, key usage and EKU")]
    BadCsr(#[source] rcgen::Error),
    /// A peer id cannot be used as a certificate common name.
    #[error("peer id {peer_id:?} cannot be put in a certificate: {reason}")]
    InvalidPeerId {
        /// The rejected peer id.
        peer_id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Signing a certificate with the cluster CA failed.
    #[error("cannot sign a certificate with the cluster CA: {0}; check that ca.key is an ECDSA, Ed25519 or RSA key")]
    Sign(#[source] rcgen::Error),
    /// A rustls or quinn configuration could not be built from the given certificates.
    #[error("cannot build the {what}: {detail}; check that the identity's certificate and key belong together and that the CA certificate is valid")]
    Config {
        /// Which configuration was being built.
        what: &'static str,
        /// The error reported by rustls or quinn.
        detail: String,
    },
}

/// The cluster certificate authority: its certificate and the key that signs every leaf.
pub struct ClusterCa {
    /// The self-signed CA certificate, handed to every verifier as the only root.
    cert: CertificateDer<'static>,
    /// Subject, key identifier and signing key used to issue leaves.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").field("cert_len", &self.cert.len()).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA: ECDSA P-256, CN "Damselfly cluster CA", valid for ten years, allowed
    /// to sign leaf certificates only (path length 0).
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(Self { cert: cert.der().clone(), issuer: Issuer::new(params, key) })
    }

    /// Loads `dir/ca.crt` and `dir/ca.key`, or generates and stores a new CA when neither
    /// exists. Creates `dir` if needed; the key file gets mode 0600. Fails when only one of the
    /// two files exists, rather than silently replacing the cluster's root of trust.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if pair_exists(&cert_path, &key_path)? {
            return Self::load(&cert_path, &key_path);
        }
        let ca = Self::generate()?;
        create_dir(dir)?;
        let key_pem = ca.issuer.key().serialize_pem();
        write_atomic(&key_path, key_pem.as_bytes(), true)?;
        // The certificate is written last: its presence implies the key's.
        save_ca_cert(&cert_path, &ca.cert)?;
        Ok(ca)
    }

    /// Loads a CA from a PEM certificate and a PEM PKCS#8 private key, checking that they belong
    /// together.
    pub fn load(cert_pem: &Path, key_pem: &Path) -> Result<Self, TlsError> {
        let cert = load_ca_cert(cert_pem)?;
        let key_der = read_private_key(key_pem)?;
        let bad_key = |detail: String| TlsError::BadPem {
            path: key_pem.to_path_buf(),
            expected: "a PKCS#8 private key (convert with `openssl pkcs8 -topk8 -nocrypt`)",
            detail,
        };
        let key = KeyPair::try_from(&key_der).map_err(|e| bad_key(e.to_string()))?;
        check_key_matches(std::slice::from_ref(&cert), &key_der, cert_pem, key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| TlsError::BadPem {
            path: cert_pem.to_path_buf(),
            expected: "a CA certificate",
            detail: e.to_string(),
        })?;
        Ok(Self { cert, issuer })
    }

    /// The CA's private key as PKCS#8 DER, for signing tickets ([`crate::ticket`]). Never logged
    /// or sent anywhere.
    pub fn key_pkcs8_der(&self) -> Vec<u8> {
        self.issuer.key().serialize_der()
    }

    /// The CA certificate (DER), to hand to verifiers or to peers.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// Issues the supernode's identity: a fresh key pair and a one-year leaf whose only SAN is
    /// [`SUPERNODE_SERVER_NAME`]. The chain is `[leaf, ca]`.
    pub fn issue_supernode_identity(&self) -> Result<Identity, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let params = leaf_params(SUPERNODE_SERVER_NAME, SUPERNODE_COMMON_NAME, LEAF_LIFETIME)?;
        let leaf = params.signed_by(&key, &self.issuer).map_err(TlsError::Sign)?;
        Ok(Identity { chain: vec![leaf.der().clone(), self.cert.clone()], key: pkcs8_key(&key) })
    }

    /// Signs a peer's CSR (DER PKCS#10). The certificate's only SAN is [`PEER_SERVER_NAME`] and
    /// its CN is `peer_id`; every name and extension requested in the CSR is ignored, only its
    /// public key is used (after checking the CSR's self-signature). Valid for `lifetime` from
    /// now (and `CLOCK_SKEW` before), usable for both server and client authentication.
    pub fn sign_peer_csr(
        &self,
        csr_der: &[u8],
        peer_id: &str,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, TlsError> {
        validate_peer_id(peer_id)?;
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(TlsError::BadCsr)?;
        let params = leaf_params(PEER_SERVER_NAME, peer_id, lifetime)?;
        let leaf = params.signed_by(&csr.public_key, &self.issuer).map_err(TlsError::Sign)?;
        Ok(leaf.der().clone())
    }

    /// For tests and benchmarks: a peer identity valid for one year without a CSR round trip
    /// (the certificate [`ClusterCa::sign_peer_csr`] would issue).
    pub fn issue_peer_identity(&self, peer_id: &str) -> Result<Identity, TlsError> {
        let request = PeerKeyRequest::new()?;
        let leaf = self.sign_peer_csr(request.csr_der(), peer_id, LEAF_LIFETIME)?;
        Ok(request.into_identity(leaf, self.cert_der()))
    }
}

/// A certificate chain and its private key: what a node presents in TLS handshakes.
pub struct Identity {
    /// `chain[0]` is the leaf, the last certificate is the cluster CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("chain_len", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Writes `dir/{name}.crt` (PEM chain) and `dir/{name}.key` (PEM, mode 0600), each
    /// atomically (temporary file + rename). Creates `dir` if needed.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        create_dir(dir)?;
        let (cert_path, key_path) = identity_paths(dir, name);
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let key_pem = pem_encode(label, self.key.secret_der());
        write_atomic(&key_path, key_pem.as_bytes(), true)?;
        let chain_pem: String = self.chain.iter().map(|cert| pem_encode("CERTIFICATE", cert)).collect();
        write_atomic(&cert_path, chain_pem.as_bytes(), false)
    }

    /// Loads an identity saved by [`Identity::save`]; `Ok(None)` when neither file exists.
    /// Fails when only one exists, when the chain has no CA after the leaf, or when the key
    /// does not belong to the leaf.
    pub fn load(dir: &Path, name: &str) -> Result<Option<Self>, TlsError> {
        let (cert_path, key_path) = identity_paths(dir, name);
        if !pair_exists(&cert_path, &key_path)? {
            return Ok(None);
        }
        let chain = read_certs(&cert_path)?;
        if chain.len() < 2 {
            return Err(TlsError::BadPem {
                path: cert_path,
                expected: "a certificate chain ending with the cluster CA",
                detail: format!("found {} certificate(s), need at least 2", chain.len()),
            });
        }
        let key = read_private_key(&key_path)?;
        check_key_matches(&chain, &key, &cert_path, &key_path)?;
        Ok(Some(Self { chain, key }))
    }
}

/// A fresh key pair and the CSR a dfdaemon sends to the supernode to enroll.
pub struct PeerKeyRequest {
    /// The peer's new key pair; it never leaves this process except into the [`Identity`].
    key: KeyPair,
    /// DER PKCS#10 request signed by `key`.
    csr: Vec<u8>,
}

impl fmt::Debug for PeerKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerKeyRequest").field("csr_len", &self.csr.len()).finish_non_exhaustive()
    }
}

impl PeerKeyRequest {
    /// Generates an ECDSA P-256 key pair and a CSR for it (no SANs: the supernode decides the
    /// names).
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("Damselfly peer");
        let csr = params.serialize_request(&key).map_err(TlsError::Generate)?;
        Ok(Self { key, csr: csr.der().to_vec() })
    }

    /// The CSR (DER PKCS#10) to send to the supernode.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr
    }

    /// Combines the key with the certificate the supernode issued and the CA into an identity
    /// (chain `[leaf, ca]`). A leaf that does not match the key is detected when the identity is
    /// used to build a configuration ([`TlsError::Config`]).
    pub fn into_identity(self, leaf: CertificateDer<'static>, ca: CertificateDer<'static>) -> Identity {
        Identity { chain: vec![leaf, ca], key: pkcs8_key(&self.key) }
    }
}

/// Reads the first certificate of a PEM file, e.g. a CA file given by the operator or pinned
/// by trust on first use.
pub fn load_ca_cert(path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    read_certs(path)?.into_iter().next().ok_or_else(|| TlsError::BadPem {
        path: path.to_path_buf(),
        expected: "a PEM certificate",
        detail: "no CERTIFICATE block found".to_owned(),
    })
}

/// Writes a CA certificate as PEM, atomically (temporary file + rename). The parent directory
/// must exist.
pub fn save_ca_cert(path: &Path, ca: &CertificateDer<'_>) -> Result<(), TlsError> {
    write_atomic(path, pem_encode("CERTIFICATE", ca).as_bytes(), false)
}

/// Server config for the supernode: client certs are verified against the CA when presented but
/// optional (enrollment comes without one). Use [`has_client_identity`] to tell them apart.
pub fn supernode_server_config(
    identity: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(config_error("client certificate verifier"))?;
    server_config(identity, verifier, provider)
}

/// Server config for a peer's upload endpoint: client certificate required and verified against
/// the CA.
pub fn peer_server_config(identity: &Identity, ca: &CertificateDer<'static>) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(config_error("client certificate verifier"))?;
    server_config(identity, verifier, provider)
}

/// Client config verifying the server against the CA (callers pass [`SUPERNODE_SERVER_NAME`] or
/// [`PEER_SERVER_NAME`] to `connect`), presenting `identity` as client cert when given.
pub fn client_config(
    identity: Option<&Identity>,
    ca: &CertificateDer<'static>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(config_error("server certificate verifier"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error("client TLS config"))?
        .with_webpki_verifier(verifier);
    let tls = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(config_error("client TLS config"))?,
        None => builder.with_no_client_auth(),
    };
    quic_client_config(tls)
}

/// Client config for enrollment: no client certificate, and the server is accepted only if the
/// chain it presents contains the CA certificate whose sha256 is `ca_sha256` (the join token's)
/// and its leaf verifies against that CA alone for the name passed to `connect` (webpki: chain,
/// validity, name; then the handshake signature). Callers pass [`SUPERNODE_SERVER_NAME`].
///
/// Nothing is sent to the server before this verification: the join token's secret goes on the
/// connection afterwards. When the server presents another CA, [`PinReport::presented_ca`] tells
/// which one, for the error message.
pub fn pinned_client_config(ca_sha256: [u8; 32]) -> Result<(quinn::ClientConfig, Arc<PinReport>), TlsError> {
    let provider = provider();
    let report = Arc::new(PinReport::default());
    let verifier = Arc::new(PinnedCaVerifier { provider: provider.clone(), ca_sha256, report: report.clone() });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error("enrollment TLS config"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((quic_client_config(tls)?, report))
}

/// What a [`pinned_client_config`] handshake saw when the server's chain lacked the pinned CA.
#[derive(Debug, Default)]
pub struct PinReport {
    /// sha256 of the last certificate of the chain presented (the server's CA, normally).
    presented: Mutex<Option<[u8; 32]>>,
}

impl PinReport {
    /// The sha256 of the CA the server presented instead of the pinned one, if a handshake was
    /// refused for that reason.
    pub fn presented_ca(&self) -> Option<[u8; 32]> {
        *self.presented.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Server certificate verifier pinned to a CA by hash: the CA must be in the presented chain,
/// and webpki verifies the leaf against it as the only root.
#[derive(Debug)]
struct PinnedCaVerifier {
    provider: Arc<CryptoProvider>,
    ca_sha256: [u8; 32],
    report: Arc<PinReport>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = |c: &&CertificateDer<'_>| crate::token::ca_sha256(c) == self.ca_sha256;
        let Some(ca) = intermediates.iter().find(pinned) else {
            let last = intermediates.last().unwrap_or(end_entity);
            *self.report.presented.lock().unwrap_or_else(PoisonError::into_inner) = Some(crate::token::ca_sha256(last));
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let rest: Vec<CertificateDer<'_>> = intermediates.iter().filter(|c| !pinned(c)).cloned().collect();
        verifier.verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// True when the connection's peer presented a client certificate (it was verified against the
/// CA by the handshake).
pub fn has_client_identity(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|chain| !chain.is_empty())
}

/// The peer id (certificate CN) of the client certificate the connection's peer presented, if
/// it presented one (verified against the CA by the handshake).
pub fn client_peer_id(conn: &quinn::Connection) -> Option<String> {
    let chain = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    common_name_of(chain.first()?)
}

/// Whether the connection's peer presented the supernode's client certificate (verified against
/// the CA by the handshake): its SAN is [`SUPERNODE_SERVER_NAME`], which no peer certificate
/// carries ([`ClusterCa::sign_peer_csr`] ignores the names a CSR asks for), and its CN the
/// supernode's, which no peer id may be.
pub fn client_is_supernode(conn: &quinn::Connection) -> bool {
    let Some(chain) = conn.peer_identity().and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok()) else {
        return false;
    };
    chain.first().is_some_and(is_supernode_cert)
}

/// Whether `cert` names the supernode (see [`client_is_supernode`]).
pub fn is_supernode_cert(cert: &CertificateDer<'_>) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let san = parsed.subject_alternative_name().ok().flatten().is_some_and(|ext| {
        ext.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == SUPERNODE_SERVER_NAME))
    });
    san && common_name_of(cert).as_deref() == Some(SUPERNODE_COMMON_NAME)
}

/// The CN of a certificate's subject.
pub fn common_name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// When a certificate stops being valid.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Config {
        what: "certificate validity",
        detail: format!("cannot parse the certificate: {e}"),
    })?;
    let secs = parsed.validity().not_after.timestamp();
    let after_epoch = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok(SystemTime::UNIX_EPOCH + after_epoch)
}

// ---- configuration helpers ----

/// The *ring* provider, passed explicitly to every builder.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding only the cluster CA.
fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(config_error("root store from the CA certificate"))?;
    Ok(Arc::new(roots))
}

fn config_error<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> TlsError {
    move |e| TlsError::Config { what, detail: e.to_string() }
}

fn server_config(
    identity: &Identity,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error("server TLS config"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(config_error("server TLS config"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(config_error("QUIC server config"))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

fn quic_client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(config_error("QUIC client config"))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

// ---- certificate helpers ----

fn common_name(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn);
    name
}

/// Parameters of a leaf certificate: `san` is its only name, usable for server and client auth.
fn leaf_params(san: &str, cn: &str, lifetime: Duration) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(vec![san.to_owned()]).map_err(TlsError::Generate)?;
    params.distinguished_name = common_name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, lifetime);
    Ok(params)
}

/// Valid from [`CLOCK_SKEW`] ago until `lifetime` from now.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now).into();
    params.not_after = now.checked_add(lifetime).unwrap_or(now).into();
}

/// A random positive 128-bit serial, so re-enrolling with the same key gives a distinct serial.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validate_peer_id(peer_id: &str) -> Result<(), TlsError> {
    let reason = if peer_id.is_empty() {
        "it is empty"
    } else if peer_id.len() > MAX_PEER_ID_LEN {
        "it is longer than 64 bytes"
    } else if peer_id.chars().any(char::is_control) {
        "it contains control characters"
    } else if peer_id == SUPERNODE_COMMON_NAME {
        "it is the supernode's name"
    } else {
        return Ok(());
    };
    Err(TlsError::InvalidPeerId { peer_id: peer_id.to_owned(), reason })
}

fn pkcs8_key(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

// ---- file helpers ----

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    path.try_exists().map_err(io_error(path))
}

/// Whether a certificate/key pair is on disk: `false` when neither file exists, an error when
/// only one does.
fn pair_exists(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    let (present, missing) = match (exists(cert)?, exists(key)?) {
        (true, true) => return Ok(true),
        (false, false) => return Ok(false),
        (true, false) => (cert, key),
        (false, true) => (key, cert),
    };
    Err(TlsError::Incomplete { present: present.to_path_buf(), missing: missing.to_path_buf() })
}

/// Checks that `key` (read from `key_path`) belongs to `chain[0]` (read from `cert_path`).
fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'_>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(TlsError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() })
        }
        Err(e) => Err(TlsError::BadPem {
            path: key_path.to_path_buf(),
            expected: "an ECDSA, Ed25519 or RSA private key",
            detail: e.to_string(),
        }),
    }
}

fn identity_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// Creates `dir` and its parents; new directories are private to this user (0700).
fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::BadPem {
        path: path.to_path_buf(),
        expected: "PEM certificates",
        detail: e.to_string(),
    })
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadPem {
        path: path.to_path_buf(),
        expected: "a PEM private key",
        detail: e.to_string(),
    })
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory is
/// written, synced and renamed over `path`. `private` files get mode 0600.
fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    write_file_atomic(path, contents, private).map_err(io_error(path))
}

/// [`write_atomic`] for callers with their own error type (the token files).
pub(crate) fn write_file_atomic(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let Some(file_name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"));
    };
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{}.{suffix:016x}.tmp", file_name.to_string_lossy()));
    let result = write_new_file(&tmp, contents, private).and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = result {
        // Best effort: the temporary file is garbage whether or not removing it works.
        let _ = fs::remove_file(&tmp);
        return Err(source);
    }
    // Make the rename durable; not every platform can sync a directory, so this is best effort.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_new_file(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// PEM-encodes `der` under `label`, 64 base64 characters per line, LF line endings.
fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(label, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    const TIMEOUT: Duration = Duration::from_secs(10);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// Result of one handshake: whether each side succeeded, and what the server saw.
    #[derive(Debug)]
    struct Outcome {
        client_ok: bool,
        /// `Some(has_client_identity)` when the server side completed the handshake.
        server: Option<bool>,
    }

    impl Outcome {
        fn ok(&self) -> bool {
            self.client_ok && self.server.is_some()
        }
    }

    /// Runs one QUIC handshake between real endpoints on loopback.
    async fn handshake(
        server_config: quinn::ServerConfig,
        client_config: quinn::ClientConfig,
        server_name: &str,
    ) -> Outcome {
        let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = quinn::Endpoint::server(server_config, localhost).expect("server endpoint");
        let addr = server.local_addr().expect("server address");
        let server_side = server.clone();
        let mut accept = tokio::spawn(async move {
            let incoming = server_side.accept().await.expect("incoming connection");
            let conn = incoming.await.ok()?;
            Some((has_client_identity(&conn), conn))
        });
        let mut client = quinn::Endpoint::client(localhost).expect("client endpoint");
        client.set_default_client_config(client_config);
        let connecting = client.connect(addr, server_name).expect("connect");
        let verdict = async {
            match connecting.await {
                Err(_) => (false, accept.await),
                // The server judges the client certificate after the client has finished, so
                // the client only knows it was accepted once the server's side completes.
                Ok(conn) => tokio::select! {
                    _ = conn.closed() => (false, accept.await),
                    joined = &mut accept => (joined.as_ref().is_ok_and(Option::is_some), joined),
                },
            }
        };
        let (client_ok, joined) = tokio::time::timeout(TIMEOUT, verdict).await.expect("handshake timed out");
        let server_conn = joined.expect("server task");
        let server_saw = server_conn.as_ref().map(|(has_identity, _)| *has_identity);
        if let Some((_, conn)) = server_conn {
            conn.close(0u32.into(), b"done");
        }
        server.wait_idle().await;
        client.wait_idle().await;
        Outcome { client_ok, server: server_saw }
    }

    fn ca() -> ClusterCa {
        ClusterCa::generate().expect("generate CA")
    }

    fn enroll(ca: &ClusterCa, peer_id: &str) -> Identity {
        let request = PeerKeyRequest::new().expect("key request");
        let leaf = ca.sign_peer_csr(request.csr_der(), peer_id, DAY).expect("sign CSR");
        request.into_identity(leaf, ca.cert_der())
    }

    #[test]
    fn only_the_supernode_certificate_names_the_supernode() {
        let ca = ca();
        let supernode = ca.issue_supernode_identity().expect("supernode identity");
        assert!(is_supernode_cert(&supernode.chain[0]));
        assert!(!is_supernode_cert(&enroll(&ca, "host-1").chain[0]));
        // A CSR asking for the supernode's names gets a peer certificate all the same.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec![SUPERNODE_SERVER_NAME.to_owned()]).expect("params");
        params.distinguished_name = common_name(SUPERNODE_COMMON_NAME);
        let csr = params.serialize_request(&key).expect("csr");
        let leaf = ca.sign_peer_csr(csr.der(), "rogue", DAY).expect("sign");
        assert!(!is_supernode_cert(&leaf));
        assert!(matches!(ca.sign_peer_csr(csr.der(), SUPERNODE_COMMON_NAME, DAY), Err(TlsError::InvalidPeerId { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supernode_is_verified_against_the_ca() {
        let ca = ca();
        let identity = ca.issue_supernode_identity().expect("supernode identity");
        let server = || supernode_server_config(&identity, &ca.cert_der()).expect("server config");

        let client = client_config(None, &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), client, SUPERNODE_SERVER_NAME).await;
        assert!(outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, Some(false), "no client certificate was presented");

        let other = ClusterCa::generate().expect("other CA");
        let client = client_config(None, &other.cert_der()).expect("client config");
        let outcome = handshake(server(), client, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok && outcome.server.is_none(), "{outcome:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supernode_sees_enrolled_client_identity() {
        let ca = ca();
        let identity = ca.issue_supernode_identity().expect("supernode identity");
        let server = supernode_server_config(&identity, &ca.cert_der()).expect("server config");
        let peer = enroll(&ca, "peer-1");
        let client = client_config(Some(&peer), &ca.cert_der()).expect("client config");
        let outcome = handshake(server, client, SUPERNODE_SERVER_NAME).await;
        assert!(outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, Some(true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn supernode_rejects_client_certificate_of_another_ca() {
        let ca = ca();
        let identity = ca.issue_supernode_identity().expect("supernode identity");
        let server = supernode_server_config(&identity, &ca.cert_der()).expect("server config");
        let stranger = ClusterCa::generate().expect("other CA");
        let peer = enroll(&stranger, "intruder");
        let client = client_config(Some(&peer), &ca.cert_der()).expect("client config");
        let outcome = handshake(server, client, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peers_use_mutual_tls() {
        let ca = ca();
        let uploader = enroll(&ca, "uploader");
        let server = || peer_server_config(&uploader, &ca.cert_der()).expect("server config");

        let downloader = enroll(&ca, "downloader");
        let client = client_config(Some(&downloader), &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), client, PEER_SERVER_NAME).await;
        assert!(outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, Some(true));

        let anonymous = client_config(None, &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), anonymous, PEER_SERVER_NAME).await;
        assert!(!outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, None, "server must reject a client without identity");

        let stranger = ClusterCa::generate().expect("other CA");
        let forged = enroll(&stranger, "downloader");
        // The forged client trusts the real CA, so only the server can catch it.
        let client = client_config(Some(&forged), &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), client, PEER_SERVER_NAME).await;
        assert!(!outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, None, "server must reject another CA's identity");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_cannot_obtain_the_supernode_name() {
        let ca = ca();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec![SUPERNODE_SERVER_NAME.to_owned()]).expect("params");
        params.distinguished_name = common_name("impostor-cn");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).expect("CSR");
        let leaf = ca.sign_peer_csr(csr.der(), "peer-7", DAY).expect("sign");
        let contains = |needle: &[u8]| leaf.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"peer-7") && contains(PEER_SERVER_NAME.as_bytes()));
        assert!(!contains(b"impostor-cn") && !contains(SUPERNODE_SERVER_NAME.as_bytes()));
        let impostor = Identity { chain: vec![leaf, ca.cert_der()], key: pkcs8_key(&key) };
        let server = || supernode_server_config(&impostor, &ca.cert_der()).expect("server");

        let client = client_config(None, &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), client, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok, "{outcome:?}");

        // Sanity: the same certificate is a valid peer certificate.
        let client = client_config(None, &ca.cert_der()).expect("client config");
        let outcome = handshake(server(), client, PEER_SERVER_NAME).await;
        assert!(outcome.ok(), "{outcome:?}");
    }

    /// A client pinned to `ca` by hash, as enrollment with a join token does.
    fn pinned(ca: &ClusterCa) -> (quinn::ClientConfig, Arc<PinReport>) {
        pinned_client_config(crate::token::ca_sha256(&ca.cert_der())).expect("pinned config")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pinned_client_accepts_the_supernode_of_the_pinned_ca() {
        let ca = ca();
        let identity = ca.issue_supernode_identity().expect("supernode identity");
        let server = supernode_server_config(&identity, &ca.cert_der()).expect("server config");
        let (client, report) = pinned(&ca);
        let outcome = handshake(server, client, SUPERNODE_SERVER_NAME).await;
        assert!(outcome.ok(), "{outcome:?}");
        assert_eq!(outcome.server, Some(false), "enrollment presents no client certificate");
        assert_eq!(report.presented_ca(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pinned_client_refuses_another_ca_and_reports_it() {
        let (ca, other) = (ca(), ca());
        let identity = other.issue_supernode_identity().expect("supernode identity");
        let server = supernode_server_config(&identity, &other.cert_der()).expect("server config");
        let (client, report) = pinned(&ca);
        let outcome = handshake(server, client, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok && outcome.server.is_none(), "{outcome:?}");
        assert_eq!(report.presented_ca(), Some(crate::token::ca_sha256(&other.cert_der())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pinned_client_refuses_a_leaf_the_pinned_ca_did_not_sign() {
        // The chain names the pinned CA, but another CA signed the leaf.
        let (ca, other) = (ca(), ca());
        let mut identity = other.issue_supernode_identity().expect("supernode identity");
        identity.chain = vec![identity.chain[0].clone(), ca.cert_der()];
        let server = supernode_server_config(&identity, &other.cert_der()).expect("server config");
        let (client, _) = pinned(&ca);
        let outcome = handshake(server, client, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok, "{outcome:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pinned_client_refuses_a_lone_leaf_and_a_peer_certificate() {
        let ca = ca();
        let mut identity = ca.issue_supernode_identity().expect("supernode identity");
        identity.chain.truncate(1);
        let server = supernode_server_config(&identity, &ca.cert_der()).expect("server config");
        let outcome = handshake(server, pinned(&ca).0, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok, "{outcome:?}");

        // A peer certificate of the right CA is not a supernode certificate.
        let peer = enroll(&ca, "peer-2");
        let server = supernode_server_config(&peer, &ca.cert_der()).expect("server config");
        let outcome = handshake(server, pinned(&ca).0, SUPERNODE_SERVER_NAME).await;
        assert!(!outcome.client_ok, "{outcome:?}");
    }

    /// The leaf certificate the server saw from the client in a handshake.
    async fn client_leaf_seen(server_config: quinn::ServerConfig, client: quinn::ClientConfig) -> Option<Vec<u8>> {
        let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let server = quinn::Endpoint::server(server_config, localhost).expect("server endpoint");
        let addr = server.local_addr().expect("address");
        let mut endpoint = quinn::Endpoint::client(localhost).expect("client endpoint");
        endpoint.set_default_client_config(client);
        let connecting = endpoint.connect(addr, PEER_SERVER_NAME).expect("connect");
        let accept = async { server.accept().await.expect("incoming").await };
        let (client_side, accepted) = tokio::time::timeout(TIMEOUT, async { tokio::join!(connecting, accept) })
            .await
            .expect("handshake timed out");
        let conn = accepted.ok()?;
        // The server judged the client's certificate: the client side completed too.
        client_side.ok()?;
        let chain = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        Some(chain[0].to_vec())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_identity_presents_the_replacement_in_new_handshakes() {
        let ca = ca();
        let uploader = LiveIdentity::new(&enroll(&ca, "uploader")).expect("live");
        let first = enroll(&ca, "downloader");
        let downloader = LiveIdentity::new(&first).expect("live");
        let server = || uploader.peer_server_config().expect("server config");
        let client = || downloader.client_config().expect("client config");
        assert_eq!(client_leaf_seen(server(), client()).await, Some(first.chain[0].to_vec()));

        // Renewal: same CA, next certificate; configurations built before see it.
        let renewed = enroll(&ca, "downloader");
        downloader.replace(&renewed).expect("replace");
        assert_eq!(client_leaf_seen(server(), client()).await, Some(renewed.chain[0].to_vec()));

        // A new cluster CA: the old side refuses the new identity until it moves too.
        let new_ca = ClusterCa::generate().expect("new CA");
        downloader.replace(&enroll(&new_ca, "downloader")).expect("replace");
        assert_eq!(downloader.ca(), new_ca.cert_der());
        assert_eq!(client_leaf_seen(server(), client()).await, None);
        uploader.replace(&enroll(&new_ca, "uploader")).expect("replace");
        assert!(client_leaf_seen(server(), client()).await.is_some());
    }

    #[test]
    fn live_identity_refuses_a_broken_replacement_and_keeps_the_old_one() {
        let ca = ca();
        let first = enroll(&ca, "a");
        let live = LiveIdentity::new(&first).expect("live");
        let other = enroll(&ca, "b");
        let mixed = Identity { chain: first.chain.clone(), key: other.key.clone_key() };
        assert!(live.replace(&mixed).is_err());
        let lone = Identity { chain: vec![other.chain[0].clone()], key: other.key.clone_key() };
        assert!(live.replace(&lone).is_err());
        assert_eq!(live.not_after(), not_after(&first.chain[0]).expect("not after"));
    }

    #[test]
    fn peer_certificates_carry_the_lifetime_and_the_peer_id() {
        let ca = ca();
        let request = PeerKeyRequest::new().expect("request");
        let before = SystemTime::now();
        let leaf = ca.sign_peer_csr(request.csr_der(), "peer-9", Duration::from_secs(5)).expect("sign");
        let expiry = not_after(&leaf).expect("not after");
        // X.509 times have whole seconds.
        assert!(expiry >= before + Duration::from_secs(4) && expiry <= before + Duration::from_secs(6));
        assert_eq!(common_name_of(&leaf).as_deref(), Some("peer-9"));
    }

    #[test]
    fn cluster_ca_round_trips_through_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("nested/ca");
        let first = ClusterCa::load_or_generate(&ca_dir).expect("generate");
        let second = ClusterCa::load_or_generate(&ca_dir).expect("load");
        assert_eq!(first.cert_der(), second.cert_der());
        assert_eq!(load_ca_cert(&ca_dir.join(CA_CERT_FILE)).expect("ca"), first.cert_der());
        assert_key_mode(&ca_dir.join(CA_KEY_FILE));
        // The reloaded CA signs certificates that chain to the original one.
        let peer = second.issue_peer_identity("peer-3").expect("peer identity");
        assert_eq!(peer.chain[1], first.cert_der());
        verify_leaf(&first.cert_der(), &peer.chain[0], PEER_SERVER_NAME);
    }

    #[test]
    fn cluster_ca_refuses_half_a_pair_and_a_foreign_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        ClusterCa::load_or_generate(dir.path()).expect("generate");
        let key = dir.path().join(CA_KEY_FILE);
        let saved_key = fs::read(&key).expect("read key");
        fs::remove_file(&key).expect("remove key");
        let err = ClusterCa::load_or_generate(dir.path()).expect_err("half a pair");
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");

        let foreign = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        fs::write(&key, foreign.serialize_pem()).expect("write key");
        let err = ClusterCa::load_or_generate(dir.path()).expect_err("foreign key");
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");

        fs::write(&key, saved_key).expect("restore key");
        fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("remove cert");
        let err = ClusterCa::load_or_generate(dir.path()).expect_err("half a pair");
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn identity_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Identity::load(dir.path(), "peer").expect("load").is_none());
        let ca = ca();
        let identity = ca.issue_peer_identity("peer-4").expect("identity");
        identity.save(dir.path(), "peer").expect("save");
        identity.save(dir.path(), "peer").expect("save again over the old files");
        let loaded = Identity::load(dir.path(), "peer").expect("load").expect("present");
        assert_eq!(loaded.chain, identity.chain);
        assert_eq!(loaded.key.secret_der(), identity.key.secret_der());
        assert_key_mode(&dir.path().join("peer.key"));
        let leftovers: Vec<_> =
            fs::read_dir(dir.path()).expect("read dir").map(|entry| entry.expect("entry").file_name()).collect();
        assert_eq!(leftovers.len(), 2, "temporary files left: {leftovers:?}");

        fs::remove_file(dir.path().join("peer.crt")).expect("remove");
        let err = Identity::load(dir.path(), "peer").expect_err("half a pair");
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn ca_cert_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pinned-ca.crt");
        let ca = ca();
        save_ca_cert(&path, &ca.cert_der()).expect("save");
        assert_eq!(load_ca_cert(&path).expect("load"), ca.cert_der());
        fs::write(&path, "not a certificate").expect("write");
        let err = load_ca_cert(&path).expect_err("garbage");
        assert!(matches!(err, TlsError::BadPem { .. }), "{err}");
        let err = load_ca_cert(&dir.path().join("missing.crt")).expect_err("missing");
        assert!(matches!(err, TlsError::Io { .. }), "{err}");
    }

    #[test]
    fn bad_csr_and_bad_peer_ids_are_rejected() {
        let ca = ca();
        let request = PeerKeyRequest::new().expect("request");
        let err = ca.sign_peer_csr(b"garbage", "peer", DAY).expect_err("garbage CSR");
        assert!(matches!(err, TlsError::BadCsr(_)), "{err}");
        let mut tampered = request.csr_der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert!(ca.sign_peer_csr(&tampered, "peer", DAY).is_err());
        for bad in ["", "a\nb", &"x".repeat(65)] {
            let err = ca.sign_peer_csr(request.csr_der(), bad, DAY).expect_err("bad id");
            assert!(matches!(err, TlsError::InvalidPeerId { .. }), "{err}");
        }
    }

    #[test]
    fn mismatched_leaf_and_key_are_a_config_error() {
        let ca = ca();
        let a = ca.issue_peer_identity("a").expect("a");
        let b = ca.issue_peer_identity("b").expect("b");
        let mixed = Identity { chain: a.chain.clone(), key: b.key.clone_key() };
        let err = peer_server_config(&mixed, &ca.cert_der()).expect_err("mismatch");
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
        let err = client_config(Some(&mixed), &ca.cert_der()).expect_err("mismatch");
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
    }

    #[test]
    fn pem_encoding_round_trips_through_the_parser() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            assert!(pem.lines().all(|line| line.len() <= 64));
            let parsed = CertificateDer::from_pem_slice(pem.as_bytes()).expect("parse");
            assert_eq!(parsed.as_ref(), der.as_slice());
        }
    }

    /// Verifies `leaf` for `name` against `ca` as a TLS client would.
    fn verify_leaf(ca: &CertificateDer<'static>, leaf: &CertificateDer<'_>, name: &str) {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca).expect("roots"), provider())
            .build()
            .expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("name");
        verifier.verify_server_cert(leaf, &[], &name, &[], UnixTime::now()).expect("leaf verifies against the CA");
    }

    fn assert_key_mode(path: &Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
}
