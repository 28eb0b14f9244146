//! Which request headers travel to an origin.

/// Request headers that make sense to forward to an origin: hop-by-hop and framing headers are
/// the HTTP client's business, and `Range` would cut the body the piece table describes.
pub fn forwardable(name: &str) -> bool {
    const SKIP: &[&str] = &[
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "range",
        "accept-encoding",
    ];
    !SKIP.iter().any(|s| s.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_forwarded_but_hop_by_hop_headers_are_not() {
        assert!(forwardable("Authorization"));
        assert!(!forwardable("Host"));
        assert!(!forwardable("range"));
    }
}
