//! The cluster's two shared secrets (ARCHITECTURE.md, "Trust and access"): the **join token** a
//! dfdaemon enrolls with, and the **API token** of the supernode's HTTP API.
//!
//! # Join token
//!
//! `dfjt1.<ca-sha256>.<secret>`, for example
//! `dfjt1.5c0e…(64 hex)….9f3a…(64 hex)…`:
//!
//! - `dfjt1`: the format and its version ("Damselfly join token", version 1);
//! - `<ca-sha256>`: 64 lowercase hex digits, the sha256 of the cluster CA certificate in DER form
//!   (`openssl x509 -in ca.crt -outform der | sha256sum`). Like kubeadm's discovery-token CA hash,
//!   it lets a daemon authenticate the supernode with nothing but the token: it accepts a
//!   supernode only if the certificate chain it presents contains a certificate with that hash
//!   and the leaf verifies against it ([`crate::tls::pinned_client_config`]). A daemon with a
//!   token needs no CA file and never trusts on first use;
//! - `<secret>`: 64 lowercase hex digits (256 random bits). The daemon sends it in its
//!   `EnrollRequest` only after the handshake verified the supernode; the supernode compares it
//!   in constant time.
//!
//! Every supernode of a region holds the same CA and the same token. Regenerating the CA makes a
//! new token (its hash changes): every daemon needs the new one to enroll again.
//!
//! # API token
//!
//! Any string of 16 to 1024 printable ASCII characters without spaces; the supernode generates
//! 64 hex digits. Clients send it as `Authorization: Bearer <token>`.
//!
//! Both are secrets: their `Debug` output is redacted, they have no `Display`, and no error in
//! this module contains one. Token files are written with mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// First field of every join token: format and version.
pub const JOIN_TOKEN_PREFIX: &str = "dfjt1";
/// Hex digits of a join token's secret (256 bits).
const SECRET_HEX_LEN: usize = 64;
/// Bounds of an API token's length, in characters.
const API_TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=1024;

/// A token that cannot be read, written or parsed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("cannot read the {what} file {path}: {source}; check the path and that this user may read it")]
    Read {
        /// Which token ("join token", "API token").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be written.
    #[error("cannot write the {what} file {path}: {source}; check that this user may write there")]
    Write {
        /// Which token.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a token of the expected format (the text itself is never shown).
    #[error("the {what} from {origin} is malformed ({reason}); {hint}")]
    Malformed {
        /// Which token.
        what: &'static str,
        /// Where it came from: a file path or an environment variable.
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
        /// What a valid one looks like and where to get it.
        hint: &'static str,
    },
}

const JOIN_HINT: &str =
    "a join token is dfjt1.<64 hex digits>.<64 hex digits>, as the supernode writes it to DATA_DIR/join-token";
const API_HINT: &str =
    "an API token is 16 to 1024 printable characters without spaces, as the supernode writes it to DATA_DIR/api-token";

/// The sha256 of a CA certificate (DER), the hash a join token pins.
pub fn ca_sha256(ca: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(ca.as_ref()).into()
}

/// Compares two secrets in time independent of where they differ.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    // Lengths are not secret (fixed by the formats); contents are.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A join token: the hash of the cluster CA and the enrollment secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA certificate (DER).
    ca_sha256: [u8; 32],
    /// 64 lowercase hex digits.
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("ca_sha256", &hex::encode(self.ca_sha256)).finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for `ca` with a fresh random secret.
    pub fn generate(ca: &CertificateDer<'_>) -> Self {
        let secret: [u8; SECRET_HEX_LEN / 2] = rand::random();
        Self { ca_sha256: ca_sha256(ca), secret: hex::encode(secret) }
    }

    /// Parses `dfjt1.<ca-sha256>.<secret>` (surrounding whitespace ignored). `origin` names where
    /// the text came from, for the error.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenError> {
        let malformed =
            |reason| TokenError::Malformed { what: "join token", origin: origin.to_owned(), reason, hint: JOIN_HINT };
        let mut fields = text.trim().split('.');
        let (Some(prefix), Some(hash), Some(secret), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed("it does not have three fields separated by dots"));
        };
        if prefix != JOIN_TOKEN_PREFIX {
            return Err(malformed("it does not start with dfjt1."));
        }
        if !is_lower_hex(hash, 64) {
            return Err(malformed("the CA hash is not 64 lowercase hex digits"));
        }
        if !is_lower_hex(secret, SECRET_HEX_LEN) {
            return Err(malformed("the secret is not 64 lowercase hex digits"));
        }
        let mut ca_sha256 = [0u8; 32];
        hex::decode_to_slice(hash, &mut ca_sha256).map_err(|_| malformed("the CA hash is not hex"))?;
        Ok(Self { ca_sha256, secret: secret.to_owned() })
    }

    /// Reads and parses a token file.
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        Self::parse(&read_secret(path, "join token")?, &path.display().to_string())
    }

    /// Writes the token to `path` (mode 0600, atomically), followed by a newline.
    pub fn write_file(&self, path: &Path) -> Result<(), TokenError> {
        write_secret(path, &self.encode(), "join token")
    }

    /// The token's text, `dfjt1.<ca-sha256>.<secret>`. A secret: never log it.
    pub fn encode(&self) -> String {
        format!("{JOIN_TOKEN_PREFIX}.{}.{}", hex::encode(self.ca_sha256), self.secret)
    }

    /// The pinned CA hash.
    pub fn ca_sha256(&self) -> [u8; 32] {
        self.ca_sha256
    }

    /// The pinned CA hash as `sha256:<hex>`, for messages (not a secret).
    pub fn ca_fingerprint(&self) -> String {
        format!("sha256:{}", hex::encode(self.ca_sha256))
    }

    /// Whether `ca` is the CA this token pins.
    pub fn pins(&self, ca: &CertificateDer<'_>) -> bool {
        ca_sha256(ca) == self.ca_sha256
    }

    /// The secret a daemon sends when it enrolls.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is this token's secret (constant time).
    pub fn secret_matches(&self, presented: &str) -> bool {
        secrets_equal(self.secret.as_bytes(), presented.as_bytes())
    }
}

/// The fingerprint of a CA certificate as `sha256:<hex>`, for messages.
pub fn ca_fingerprint(ca: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(ca_sha256(ca)))
}

/// The supernode's HTTP API bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A new random token: 64 hex digits.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(hex::encode(bytes))
    }

    /// Parses a token (surrounding whitespace ignored). `origin` names where it came from.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let malformed =
            |reason| TokenError::Malformed { what: "API token", origin: origin.to_owned(), reason, hint: API_HINT };
        if !API_TOKEN_LEN.contains(&text.len()) {
            return Err(malformed("its length is not between 16 and 1024 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed("it contains spaces, control or non-ASCII characters"));
        }
        Ok(Self(text.to_owned()))
    }

    /// Reads and parses a token file.
    pub fn read_file(path: &Path) -> Result<Self, TokenError> {
        Self::parse(&read_secret(path, "API token")?, &path.display().to_string())
    }

    /// Writes the token to `path` (mode 0600, atomically), followed by a newline.
    pub fn write_file(&self, path: &Path) -> Result<(), TokenError> {
        write_secret(path, &self.0, "API token")
    }

    /// The token's text. A secret: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token (constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        secrets_equal(self.0.as_bytes(), presented)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_secret(path: &Path, what: &'static str) -> Result<String, TokenError> {
    std::fs::read_to_string(path).map_err(|source| TokenError::Read { what, path: path.to_owned(), source })
}

fn write_secret(path: &Path, text: &str, what: &'static str) -> Result<(), TokenError> {
    crate::tls::write_file_atomic(path, format!("{text}\n").as_bytes(), true).map_err(|source| TokenError::Write {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateDer<'static> {
        crate::tls::ClusterCa::generate().expect("CA").cert_der()
    }

    #[test]
    fn join_token_round_trips_and_pins_its_ca() {
        let (ca, other) = (ca(), self::ca());
        let token = JoinToken::generate(&ca);
        let text = token.encode();
        assert!(text.starts_with("dfjt1.") && text.len() == 5 + 1 + 64 + 1 + 64, "{text}");
        let parsed = JoinToken::parse(&format!("  {text}\n"), "test").expect("parse");
        assert_eq!(parsed, token);
        assert!(parsed.pins(&ca) && !parsed.pins(&other));
        assert_eq!(parsed.ca_fingerprint(), ca_fingerprint(&ca));
        assert!(token.secret_matches(parsed.secret()));
        assert!(!token.secret_matches(JoinToken::generate(&ca).secret()));
        assert!(!token.secret_matches(""));
        assert_ne!(JoinToken::generate(&ca).secret(), token.secret(), "secrets are random");
    }

    #[test]
    fn malformed_join_tokens_are_refused_without_echoing_them() {
        let good = JoinToken::generate(&ca()).encode();
        let (hash, secret) = (&good[6..70], &good[71..]);
        let cases = [
            String::new(),
            "dfjt1".to_owned(),
            format!("dfjt2.{hash}.{secret}"),
            format!("dfjt1.{}.{secret}", &hash[1..]),
            format!("dfjt1.{hash}.{}", secret.to_uppercase()),
            format!("dfjt1.{hash}.{secret}.extra"),
            format!("dfjt1.{hash}.{}zz", &secret[2..]),
        ];
        for text in cases {
            let err = JoinToken::parse(&text, "DAMSELFLY_JOIN_TOKEN").expect_err(&text);
            let message = err.to_string();
            assert!(message.contains("DAMSELFLY_JOIN_TOKEN") && message.contains("DATA_DIR/join-token"), "{message}");
            assert!(!message.contains(secret), "the error must not show the secret: {message}");
        }
    }

    #[test]
    fn token_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = JoinToken::generate(&ca());
        let path = dir.path().join("join-token");
        token.write_file(&path).expect("write");
        assert_eq!(JoinToken::read_file(&path).expect("read"), token);
        let api = ApiToken::generate();
        let api_path = dir.path().join("api-token");
        api.write_file(&api_path).expect("write");
        assert_eq!(ApiToken::read_file(&api_path).expect("read"), api);
        #[cfg(unix)]
        for p in [&path, &api_path] {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777, 0o600);
        }
        let err = JoinToken::read_file(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(err, TokenError::Read { .. }), "{err}");
    }

    #[test]
    fn api_tokens_compare_and_validate() {
        let token = ApiToken::parse("0123456789abcdef-operator\n", "test").expect("parse");
        assert!(token.matches(b"0123456789abcdef-operator"));
        assert!(!token.matches(b"0123456789abcdef-operatoR"));
        assert!(!token.matches(b"0123456789abcdef"));
        assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
        for bad in ["short", "has a space in the middle", &"x".repeat(1025), "tab\tinside-the-token"] {
            assert!(ApiToken::parse(bad, "test").is_err(), "{bad:?}");
        }
        assert_eq!(ApiToken::generate().expose().len(), 64);
    }
}
