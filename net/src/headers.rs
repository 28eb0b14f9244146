//! Which request headers travel to an origin: an allow-list.
//!
//! A client (an engine through the mirror, `dfget -H`, a Harbor preheat job) hands the node a
//! set of headers to use at the origin. Only the ones an origin needs travel: [`ALWAYS`]
//! (`Authorization`, `Accept`, `User-Agent`, `Cookie`) plus the extra names an operator lists
//! (`--forward-header PRIVATE-TOKEN`, for origins that take a token in their own header).
//! Everything else is dropped, with one debug line naming the dropped headers (never their
//! values). Some names can never be listed ([`NEVER`]): framing and hop-by-hop headers are the
//! HTTP client's business, `Range` / `If-*` would change the body the piece table describes,
//! and `Host` / `Forwarded` would let a client steer or spoof the request.

use serde::Deserialize;

/// Headers every origin request may carry (lower-case).
pub const ALWAYS: &[&str] = &["authorization", "accept", "user-agent", "cookie"];

/// Headers that are never forwarded and cannot be listed as extras (lower-case).
pub const NEVER: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "expect",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// An extra header name that cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderNameError {
    /// Not an HTTP header name (RFC 9110 token characters only).
    #[error("{0:?} is not an HTTP header name")]
    Invalid(String),
    /// A name on the [`NEVER`] list.
    #[error(
        "header {0:?} is never forwarded to an origin (framing, hop-by-hop, range, conditional or forwarding \
         header)"
    )]
    Never(String),
}

/// One extra header name an operator lists (`--forward-header NAME`, TOML `forward_headers`):
/// an HTTP header name that is not on the [`NEVER`] list, lower-case. Parsed from a flag
/// ([`FromStr`](std::str::FromStr)) and deserialized from TOML with the same check.
///
/// ```
/// use damselfly_net::headers::HeaderName;
///
/// let name: HeaderName = " PRIVATE-TOKEN ".parse().unwrap();
/// assert_eq!(name.as_ref(), "private-token");
/// assert!("Range".parse::<HeaderName>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderName(String);

impl std::str::FromStr for HeaderName {
    type Err = HeaderNameError;

    fn from_str(name: &str) -> Result<Self, HeaderNameError> {
        let name = name.trim();
        let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(is_token) {
            return Err(HeaderNameError::Invalid(name.to_owned()));
        }
        let lower = name.to_ascii_lowercase();
        if NEVER.contains(&lower.as_str()) {
            return Err(HeaderNameError::Never(name.to_owned()));
        }
        Ok(Self(lower))
    }
}

impl TryFrom<String> for HeaderName {
    type Error = HeaderNameError;

    fn try_from(name: String) -> Result<Self, HeaderNameError> {
        name.parse()
    }
}

impl AsRef<str> for HeaderName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The headers forwarded to origins: [`ALWAYS`] plus validated extra names.
///
/// Deserializes from a list of names (TOML `forward_headers = ["PRIVATE-TOKEN"]`), validating
/// each.
///
/// ```
/// use damselfly_net::headers::ForwardHeaders;
///
/// let list = ForwardHeaders::new(["PRIVATE-TOKEN"]).unwrap();
/// let headers = vec![
///     ("Authorization".to_string(), b"Bearer t".to_vec()),
///     ("Private-Token".to_string(), b"glpat".to_vec()),
///     ("Range".to_string(), b"bytes=0-9".to_vec()),
/// ];
/// let names: Vec<_> = list.filter(&headers).into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["Authorization", "Private-Token"]);
/// assert!(ForwardHeaders::new(["Range"]).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct ForwardHeaders {
    /// Extra names, lower-case, validated, without duplicates or [`ALWAYS`] names.
    extra: Vec<String>,
}

impl TryFrom<Vec<String>> for ForwardHeaders {
    type Error = HeaderNameError;

    fn try_from(names: Vec<String>) -> Result<Self, Self::Error> {
        Self::new(names)
    }
}

impl ForwardHeaders {
    /// [`ALWAYS`] plus `extra` names.
    pub fn new<I, S>(extra: I) -> Result<Self, HeaderNameError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Self::default();
        for name in extra {
            list.add(name.as_ref())?;
        }
        Ok(list)
    }

    /// Adds one extra name (case-insensitive; listing a name twice is harmless).
    pub fn add(&mut self, name: &str) -> Result<(), HeaderNameError> {
        let name: HeaderName = name.parse()?;
        self.push(&name);
        Ok(())
    }

    /// [`ALWAYS`] plus names already validated (a config's `forward_headers`).
    pub fn from_names(names: &[HeaderName]) -> Self {
        let mut list = Self::default();
        for name in names {
            list.push(name);
        }
        list
    }

    fn push(&mut self, name: &HeaderName) {
        if !self.allows(&name.0) {
            self.extra.push(name.0.clone());
        }
    }

    /// The extra names (lower-case), without the [`ALWAYS`] ones.
    pub fn extra(&self) -> &[String] {
        &self.extra
    }

    /// True when header `name` may travel to an origin.
    pub fn allows(&self, name: &str) -> bool {
        ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(name)) || self.extra.iter().any(|e| e.eq_ignore_ascii_case(name))
    }

    /// The headers of `headers` that may travel to an origin, in their order. Logs the names
    /// (never the values) of the dropped ones at debug level.
    pub fn filter<N, V>(&self, headers: &[(N, V)]) -> Vec<(N, V)>
    where
        N: AsRef<str> + Clone,
        V: Clone,
    {
        let mut kept = Vec::with_capacity(headers.len());
        let mut dropped: Vec<&str> = Vec::new();
        for (name, value) in headers {
            if self.allows(name.as_ref()) {
                kept.push((name.clone(), value.clone()));
            } else {
                dropped.push(name.as_ref());
            }
        }
        if !dropped.is_empty() {
            tracing::debug!(dropped = %dropped.join(", "), "request headers not forwarded to the origin");
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_headers_are_forwarded() {
        let list = ForwardHeaders::default();
        for name in ["Authorization", "accept", "USER-AGENT", "Cookie"] {
            assert!(list.allows(name), "{name}");
        }
        for name in ["Host", "range", "Proxy-Authorization", "X-Forwarded-For", "Private-Token", "X-Anything"] {
            assert!(!list.allows(name), "{name}");
        }
        let headers = vec![("Range", "bytes=0-1"), ("Authorization", "Bearer x"), ("X-Other", "y")];
        assert_eq!(list.filter(&headers), vec![("Authorization", "Bearer x")]);
    }

    #[test]
    fn extras_are_validated_and_case_insensitive() {
        let list = ForwardHeaders::new(["PRIVATE-TOKEN", "private-token", "Authorization", " X-Api-Key "]).unwrap();
        assert_eq!(list.extra(), ["private-token", "x-api-key"]);
        assert!(list.allows("Private-Token") && list.allows("x-api-key"));
        for never in ["Range", "host", "If-None-Match", "Transfer-Encoding", "Forwarded"] {
            assert!(matches!(ForwardHeaders::new([never]), Err(HeaderNameError::Never(_))), "{never}");
        }
        for bad in ["", "a b", "x:y", "caf\u{e9}"] {
            assert!(matches!(ForwardHeaders::new([bad]), Err(HeaderNameError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn deserializes_from_a_list_of_names() {
        #[derive(Deserialize)]
        struct C {
            h: ForwardHeaders,
        }
        let c: C = serde_json::from_str(r#"{"h": ["PRIVATE-TOKEN"]}"#).unwrap();
        assert_eq!(c.h.extra(), ["private-token"]);
        assert!(serde_json::from_str::<C>(r#"{"h": ["Range"]}"#).is_err());
    }

    #[test]
    fn validated_names_build_the_same_list() {
        let names: Vec<HeaderName> =
            ["PRIVATE-TOKEN", "private-token", "Authorization"].into_iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(ForwardHeaders::from_names(&names), ForwardHeaders::new(["PRIVATE-TOKEN"]).unwrap());
        let e = serde_json::from_str::<Vec<HeaderName>>(r#"["X-Ok", "Host"]"#).unwrap_err().to_string();
        assert!(e.contains("never forwarded"), "{e}");
    }
}
