//! Tickets: the supernode's signed permission for one peer to get one task's pieces.
//!
//! A private blob may reach a host only if that host proved it can read it at the origin. The
//! supernode checks that when the host registers for the task (its credentials, or none for
//! public content, accepted by the origin) and then issues a [`Ticket`] naming the task, the
//! peer id of the host's certificate and an expiry, signed with the cluster CA's key. Every
//! parent (dfdaemons and the supernode itself) serves a piece only against a ticket that
//! verifies with the CA certificate it already trusts, names the task asked for and the peer id
//! of the certificate the request came with, and has not expired. So a host that knows a
//! digest and holds a valid certificate still gets nothing without having been admitted.
//!
//! The signed bytes are canonical, independent of protobuf encoding:
//! `"damselfly-ticket/1\n" task_id "\n" peer_id "\n" expires_unix_ms (decimal)`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use damselfly_proto::Ticket;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::tls::ClusterCa;

/// Domain separation for ticket signatures.
const CONTEXT: &[u8] = b"damselfly-ticket/1\n";

/// Why a ticket could not be issued or was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// The request carried no ticket.
    #[error("no ticket: the supernode admits a peer to a task before any parent serves it")]
    Missing,
    /// The ticket names another task or another peer than the request.
    #[error("ticket is for {what} {ticket:?}, not {request:?}")]
    Mismatch {
        /// "task" or "peer".
        what: &'static str,
        /// What the ticket names.
        ticket: String,
        /// What the request is for.
        request: String,
    },
    /// The ticket's expiry has passed.
    #[error("ticket expired {0:?} ago")]
    Expired(Duration),
    /// The signature does not verify with the cluster CA.
    #[error("ticket signature does not verify with the cluster CA")]
    BadSignature,
    /// The CA's key type cannot sign or verify tickets.
    #[error("the cluster CA's key ({0}) cannot sign tickets: use an ECDSA P-256/P-384 or Ed25519 CA")]
    UnsupportedKey(String),
}

/// The bytes a ticket's signature covers.
fn signed_bytes(task_id: &str, peer_id: &str, expires_unix_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + task_id.len() + peer_id.len() + 24);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(task_id.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(peer_id.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(expires_unix_ms.to_string().as_bytes());
    m
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

enum SigningKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs tickets with the cluster CA's key (the supernode's side).
pub struct TicketSigner {
    key: SigningKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner").finish_non_exhaustive()
    }
}

impl TicketSigner {
    /// A signer holding the CA's key.
    pub fn from_ca(ca: &ClusterCa) -> Result<Self, TicketError> {
        let pkcs8 = ca.key_pkcs8_der();
        let rng = SystemRandom::new();
        for alg in [&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &signature::ECDSA_P384_SHA384_ASN1_SIGNING] {
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &rng) {
                return Ok(Self { key: SigningKey::Ecdsa(k), rng });
            }
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8) {
            return Ok(Self { key: SigningKey::Ed25519(k), rng });
        }
        Err(TicketError::UnsupportedKey("not ECDSA P-256/P-384 or Ed25519".into()))
    }

    /// A ticket for `peer_id` to get pieces of `task_id` until `expires`.
    pub fn issue(&self, task_id: &str, peer_id: &str, expires: SystemTime) -> Ticket {
        let expires_unix_ms = unix_ms(expires);
        let msg = signed_bytes(task_id, peer_id, expires_unix_ms);
        let signature = match &self.key {
            // Signing fails only when the system's random source does: then no ticket verifies
            // and peers fall back to the origin, which is visible rather than unsafe.
            SigningKey::Ecdsa(k) => k.sign(&self.rng, &msg).map(|s| s.as_ref().to_vec()).unwrap_or_default(),
            SigningKey::Ed25519(k) => k.sign(&msg).as_ref().to_vec(),
        };
        Ticket { task_id: task_id.to_owned(), peer_id: peer_id.to_owned(), expires_unix_ms, signature }
    }

    /// The public key tickets verify with, to check a signer against a verifier in tests.
    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            SigningKey::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
        }
    }
}

/// Signature checks remembered per verifier (see [`TicketVerifier::verify`]); when full, the
/// expired entries go, and if none had expired all of them, so it never holds more than this
/// many.
const VERIFIED_CACHE: usize = 4096;
/// Longest signature any supported CA key makes (ECDSA P-384, ASN.1 DER: 104 bytes), rounded up.
const MAX_SIGNATURE: usize = 132;

/// Checks tickets against the cluster CA certificate (every parent's side).
pub struct TicketVerifier {
    key: UnparsedPublicKey<Vec<u8>>,
    /// sha256 of (signed bytes, signature) of tickets whose signature verified. A child sends the
    /// same ticket with every piece request of a task: the signature is checked once, not per
    /// piece (an ECDSA P-256 verification costs more than the rest of serving a piece's request).
    /// The task, peer and expiry are still compared for every request. Each entry keeps its
    /// ticket's expiry: a full cache drops the expired ones first.
    verified: Mutex<HashMap<[u8; 32], u64>>,
    /// Signature verifications done (tests check that a remembered ticket costs none).
    #[cfg(test)]
    signature_checks: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for TicketVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketVerifier").finish_non_exhaustive()
    }
}

impl TicketVerifier {
    /// A verifier for tickets signed by the key of the CA certificate `ca`.
    pub fn from_ca_cert(ca: &CertificateDer<'_>) -> Result<Self, TicketError> {
        let (_, cert) = x509_parser::parse_x509_certificate(ca)
            .map_err(|e| TicketError::UnsupportedKey(format!("unparsable CA certificate: {e}")))?;
        let spki = cert.public_key();
        let key = spki.subject_public_key.data.to_vec();
        let oid = spki.algorithm.algorithm.to_id_string();
        let alg: &'static dyn signature::VerificationAlgorithm = match oid.as_str() {
            // id-ecPublicKey: the curve is the algorithm's parameter.
            "1.2.840.10045.2.1" => {
                let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => &signature::ECDSA_P256_SHA256_ASN1,
                    Some("1.3.132.0.34") => &signature::ECDSA_P384_SHA384_ASN1,
                    other => return Err(TicketError::UnsupportedKey(format!("EC curve {other:?}"))),
                }
            }
            "1.3.101.112" => &signature::ED25519,
            other => return Err(TicketError::UnsupportedKey(format!("key algorithm {other}"))),
        };
        Ok(Self {
            key: UnparsedPublicKey::new(alg, key),
            verified: Mutex::default(),
            #[cfg(test)]
            signature_checks: Default::default(),
        })
    }

    /// Checks that `ticket` lets `peer_id` get pieces of `task_id` at `now`.
    pub fn verify(
        &self,
        ticket: Option<&Ticket>,
        task_id: &str,
        peer_id: &str,
        now: SystemTime,
    ) -> Result<(), TicketError> {
        let t = ticket.ok_or(TicketError::Missing)?;
        if t.task_id != task_id {
            return Err(TicketError::Mismatch { what: "task", ticket: t.task_id.clone(), request: task_id.into() });
        }
        if t.peer_id != peer_id {
            return Err(TicketError::Mismatch { what: "peer", ticket: t.peer_id.clone(), request: peer_id.into() });
        }
        let now_ms = unix_ms(now);
        if now_ms > t.expires_unix_ms {
            return Err(TicketError::Expired(Duration::from_millis(now_ms - t.expires_unix_ms)));
        }
        // No signature of the supported keys is longer (ECDSA P-384 in ASN.1: at most 104 bytes):
        // a longer one is refused before it costs a hash.
        if t.signature.len() > MAX_SIGNATURE {
            return Err(TicketError::BadSignature);
        }
        let signed = signed_bytes(&t.task_id, &t.peer_id, t.expires_unix_ms);
        let digest: [u8; 32] = Sha256::new()
            .chain_update((signed.len() as u64).to_be_bytes())
            .chain_update(&signed)
            .chain_update(&t.signature)
            .finalize()
            .into();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.contains_key(&digest) {
            return Ok(());
        }
        drop(verified);
        #[cfg(test)]
        self.signature_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.key.verify(&signed, &t.signature).map_err(|_| TicketError::BadSignature)?;
        verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CACHE {
            verified.retain(|_, &mut expires| expires >= now_ms);
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
        }
        verified.insert(digest, t.expires_unix_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TicketSigner, TicketVerifier) {
        let ca = ClusterCa::generate().unwrap();
        (TicketSigner::from_ca(&ca).unwrap(), TicketVerifier::from_ca_cert(&ca.cert_der()).unwrap())
    }

    #[test]
    fn a_ticket_verifies_only_for_its_task_peer_and_time() {
        let (signer, verifier) = pair();
        let now = SystemTime::now();
        let t = signer.issue("sha256:aa", "peer1", now + Duration::from_secs(60));
        assert_eq!(verifier.verify(Some(&t), "sha256:aa", "peer1", now), Ok(()));
        assert!(matches!(verifier.verify(Some(&t), "sha256:bb", "peer1", now), Err(TicketError::Mismatch { .. })));
        assert!(matches!(verifier.verify(Some(&t), "sha256:aa", "peer2", now), Err(TicketError::Mismatch { .. })));
        let later = now + Duration::from_secs(61);
        assert!(matches!(verifier.verify(Some(&t), "sha256:aa", "peer1", later), Err(TicketError::Expired(_))));
        assert_eq!(verifier.verify(None, "sha256:aa", "peer1", now), Err(TicketError::Missing));
    }

    #[test]
    fn a_verified_signature_is_remembered_and_everything_else_still_checked() {
        let (signer, verifier) = pair();
        let now = SystemTime::now();
        let t = signer.issue("sha256:aa", "peer1", now + Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(verifier.verify(Some(&t), "sha256:aa", "peer1", now), Ok(()));
        }
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        let checks = || verifier.signature_checks.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(checks(), 1, "one signature check for one ticket, however often it comes");
        // The remembered signature vouches for these exact bytes only.
        let mut stretched = t.clone();
        stretched.expires_unix_ms += 3_600_000;
        assert_eq!(verifier.verify(Some(&stretched), "sha256:aa", "peer1", now), Err(TicketError::BadSignature));
        let mut renamed = t.clone();
        renamed.peer_id = "peer2".into();
        assert_eq!(verifier.verify(Some(&renamed), "sha256:aa", "peer2", now), Err(TicketError::BadSignature));
        // Expiry, task and peer are compared on every request.
        let later = now + Duration::from_secs(61);
        assert!(matches!(verifier.verify(Some(&t), "sha256:aa", "peer1", later), Err(TicketError::Expired(_))));
        assert!(matches!(verifier.verify(Some(&t), "sha256:bb", "peer1", now), Err(TicketError::Mismatch { .. })));
        assert!(matches!(verifier.verify(Some(&t), "sha256:aa", "peer2", now), Err(TicketError::Mismatch { .. })));
        // A refused signature is not remembered: it is checked (and refused) again.
        let before = checks();
        for _ in 0..2 {
            assert_eq!(verifier.verify(Some(&stretched), "sha256:aa", "peer1", now), Err(TicketError::BadSignature));
        }
        assert_eq!(checks(), before + 2);
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
        // An oversized signature is refused before any work.
        let mut junk = t.clone();
        junk.signature = vec![0x30; 4 << 20];
        assert_eq!(verifier.verify(Some(&junk), "sha256:aa", "peer1", now), Err(TicketError::BadSignature));
        assert_eq!(checks(), before + 2);
    }

    #[test]
    fn a_full_cache_drops_expired_tickets_first() {
        let (signer, verifier) = pair();
        let now = SystemTime::now();
        let live = signer.issue("sha256:aa", "peer1", now + Duration::from_secs(3600));
        verifier.verify(Some(&live), "sha256:aa", "peer1", now).unwrap();
        // Fill the rest with entries that expired long ago (as a long-running daemon would
        // accumulate them), then one more verification.
        {
            let mut v = verifier.verified.lock().unwrap();
            for i in 0..(VERIFIED_CACHE - 1) as u64 {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&i.to_le_bytes());
                k[31] = 1;
                v.insert(k, 1);
            }
            assert_eq!(v.len(), VERIFIED_CACHE);
        }
        let other = signer.issue("sha256:bb", "peer1", now + Duration::from_secs(3600));
        verifier.verify(Some(&other), "sha256:bb", "peer1", now).unwrap();
        assert_eq!(verifier.verified.lock().unwrap().len(), 2, "the expired entries went, the live one stayed");
        let checks = verifier.signature_checks.load(std::sync::atomic::Ordering::Relaxed);
        verifier.verify(Some(&live), "sha256:aa", "peer1", now).unwrap();
        assert_eq!(verifier.signature_checks.load(std::sync::atomic::Ordering::Relaxed), checks);
    }

    #[test]
    fn forged_and_foreign_tickets_are_refused() {
        let (signer, verifier) = pair();
        let now = SystemTime::now();
        let mut t = signer.issue("sha256:aa", "peer1", now + Duration::from_secs(60));
        // Stretching the expiry breaks the signature.
        t.expires_unix_ms += 3_600_000;
        assert_eq!(verifier.verify(Some(&t), "sha256:aa", "peer1", now), Err(TicketError::BadSignature));
        // A ticket from another cluster's CA.
        let (other, _) = pair();
        let foreign = other.issue("sha256:aa", "peer1", now + Duration::from_secs(60));
        assert_eq!(verifier.verify(Some(&foreign), "sha256:aa", "peer1", now), Err(TicketError::BadSignature));
        // Renaming the peer of a valid ticket.
        let mut renamed = signer.issue("sha256:aa", "peer1", now + Duration::from_secs(60));
        renamed.peer_id = "peer2".into();
        assert_eq!(verifier.verify(Some(&renamed), "sha256:aa", "peer2", now), Err(TicketError::BadSignature));
    }
}
