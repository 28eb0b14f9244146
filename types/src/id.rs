//! Identifiers: task ids, peer ids and OCI-style sha256 digests.
//!
//! A task is one file moving through the swarm. Its id is the blob digest when the caller knows
//! it (`sha256:<hex>`, so every URL and registry namespace of the same blob shares one cache
//! entry), otherwise the hex sha256 of the normalised URL. Ids never contain credentials: they
//! are derived from the URL without its user-info.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Identifies one task (one file) across the whole cluster.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

/// Identifies one peer (a dfdaemon, or dfget's embedded peer); given by the supernode at
/// enrollment and kept across restarts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PeerId(String);

macro_rules! string_id {
    ($ty:ident) => {
        impl $ty {
            /// Wraps a string that is already a valid id.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.0)
            }
        }
    };
}
string_id!(TaskId);
string_id!(PeerId);

impl TaskId {
    /// The task id for `url`, or for `digest` when the caller knows the content's digest.
    pub fn for_url(url: &url::Url, digest: Option<&Sha256Digest>) -> Self {
        match digest {
            Some(d) => Self(d.to_string()),
            None => {
                let normalised = normalise_url(url);
                Self(hex::encode(Sha256::digest(normalised.as_bytes())))
            }
        }
    }

    /// True when `s` has the shape of a task id (digest form or 64 lowercase hex digits). Ids
    /// become file names, so anything else is refused before it reaches storage.
    pub fn is_valid(s: &str) -> bool {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// A file-system safe form of the id (`:` replaced).
    pub fn file_name(&self) -> String {
        self.0.replace(':', "_")
    }

    /// The last 12 bytes of the id (a valid id's last 12 hex digits): enough to tell one
    /// image's blobs apart in a trace or a log line. The whole id if that would split a UTF-8
    /// character.
    pub fn short(&self) -> &str {
        self.0.get(self.0.len().saturating_sub(12)..).unwrap_or(&self.0)
    }
}

/// The URL as used for task ids: no user-info (credentials never reach an id), no fragment;
/// `url` already lower-cases scheme and host and drops default ports.
pub fn normalise_url(url: &url::Url) -> String {
    let mut u = url.clone();
    // Both setters only fail for URLs that cannot have credentials, which is fine to ignore.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    u.to_string()
}

/// A `sha256:<64 hex>` content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestParseError {
    /// Only sha256 digests are supported.
    #[error("unsupported digest algorithm in {0:?}: only sha256:<64 hex digits> is supported")]
    Algorithm(String),
    /// The hex part is not 64 lowercase hex digits.
    #[error("malformed digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Malformed(String),
}

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex_part) = s.strip_prefix("sha256:") else {
            return Err(DigestParseError::Algorithm(s.to_owned()));
        };
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(DigestParseError::Malformed(s.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| DigestParseError::Malformed(s.to_owned()))?;
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trip_and_errors() {
        let d = Sha256Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(s.parse::<Sha256Digest>(), Ok(d));
        assert!(matches!("md5:00".parse::<Sha256Digest>(), Err(DigestParseError::Algorithm(_))));
        assert!(matches!("sha256:abc".parse::<Sha256Digest>(), Err(DigestParseError::Malformed(_))));
        let upper = format!("sha256:{}", d.hex().to_uppercase());
        assert!(upper.parse::<Sha256Digest>().is_err());
    }

    #[test]
    fn a_short_task_id_is_the_digest_tail() {
        let d = Sha256Digest::of(b"hello");
        let id = TaskId::for_url(&url::Url::parse("http://r/v2/x/blobs/a").unwrap(), Some(&d));
        assert_eq!(id.short(), &d.to_string()[d.to_string().len() - 12..]);
        assert_eq!(TaskId::new("abc").short(), "abc");
        assert_eq!(TaskId::new("éééééééa").short(), "éééééééa", "never splits a character");
    }

    #[test]
    fn task_id_ignores_credentials_and_fragment() {
        let a = url::Url::parse("http://user:secret@Example.com:80/a?x=1#frag").unwrap();
        let b = url::Url::parse("http://example.com/a?x=1").unwrap();
        assert_eq!(TaskId::for_url(&a, None), TaskId::for_url(&b, None));
        assert!(!TaskId::for_url(&a, None).as_str().contains("secret"));
        assert!(TaskId::is_valid(TaskId::for_url(&a, None).as_str()));
        let d = Sha256Digest::of(b"x");
        assert_eq!(TaskId::for_url(&a, Some(&d)).as_str(), d.to_string());
        assert!(TaskId::is_valid(&d.to_string()));
        assert!(!TaskId::is_valid("../../etc/passwd"));
    }
}
