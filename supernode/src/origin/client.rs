//! The supernode's only HTTP client for origins (origin fetches, preheat registry and token
//! requests): every request obeys the [`OriginPolicy`] and the header allow-list.
//!
//! - The first URL and every redirect hop are checked against the policy before a connection
//!   is made (scheme, allow-list, IP literals, metadata names).
//! - Every name is resolved by `PolicyResolver`, which refuses the name when any address it
//!   resolves to is refused: the connection only ever goes to addresses that passed, so DNS
//!   rebinding (a name that answered a public address at check time and `127.0.0.1` at
//!   connect time) cannot get around the check, on the first request or on any redirect hop.
//! - Only allow-listed headers ([`ForwardHeaders`]) are sent. Redirects are followed here, not
//!   by reqwest, so that a hop to another origin (scheme, host or port) carries only `Accept`
//!   and `User-Agent`: credentials (`Authorization`, `Cookie`, extra headers such as
//!   `PRIVATE-TOKEN`) travel only to the origin they were given for (reqwest's own redirect
//!   handling strips only `Authorization` and `Cookie`, and sends a `Referer`).
//! - Proxies from the environment (`HTTP_PROXY`, ...) are ignored: through a proxy the
//!   supernode could not check where a connection goes.
//!
//! A refusal is a [`SendError::Refused`] whose message names the origin, the reason and the
//! fix ("name it with --allow-origin to allow it").

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use damselfly_net::headers::ForwardHeaders;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use tracing::debug;
use url::Url;

use super::policy::{OriginPolicy, Refused};

/// Redirect hops followed before a request fails.
pub const MAX_REDIRECTS: usize = 10;

/// Headers that a redirect to another origin keeps (lower-case): nothing that authenticates.
const CROSS_ORIGIN_HEADERS: &[&str] = &["accept", "user-agent"];

/// Why a request to an origin failed before it had an answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The origin policy refused the URL, a redirect hop or an address a name resolved to.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The origin could not be reached or broke off (the message carries the whole cause, no
    /// URL).
    #[error("{0}")]
    Request(String),
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("origin {0} redirected more than {MAX_REDIRECTS} times")]
    TooManyRedirects(String),
    /// A redirect without a usable `Location`.
    #[error("origin {0} sent a redirect without a usable Location")]
    BadRedirect(String),
}

/// The policy-checked origin client; cheap to clone (shares its connection pool).
#[derive(Clone)]
pub struct OriginClient {
    http: reqwest::Client,
    policy: Arc<OriginPolicy>,
    headers: ForwardHeaders,
}

impl std::fmt::Debug for OriginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginClient").field("policy", &self.policy).field("headers", &self.headers).finish()
    }
}

impl OriginClient {
    /// A client that fetches only what `policy` allows and forwards only `headers`.
    pub fn new(policy: OriginPolicy, headers: ForwardHeaders, connect_timeout: Duration) -> reqwest::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Arc::new(policy);
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .dns_resolver(PolicyResolver { policy: policy.clone() })
            .user_agent(concat!("damselfly-supernode/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, policy, headers })
    }

    /// The policy in force.
    pub fn policy(&self) -> &OriginPolicy {
        &self.policy
    }

    /// Sends `method url` with the allow-listed ones of `headers`, following up to
    /// [`MAX_REDIRECTS`] redirects, each hop checked; `timeout` bounds each hop (headers and
    /// body). The answer is the first one that is not a redirect.
    pub async fn send<N, V>(
        &self,
        method: Method,
        url: &Url,
        headers: &[(N, V)],
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, SendError>
    where
        N: AsRef<str> + Clone,
        V: AsRef<[u8]> + Clone,
    {
        let headers = header_map(&self.headers.filter(headers));
        let mut current = url.clone();
        let mut previous: Option<Url> = None;
        for _ in 0..=MAX_REDIRECTS {
            self.policy.check_url(&current, previous.as_ref())?;
            let mut req = self.http.request(method.clone(), current.clone());
            req = req.headers(hop_headers(&headers, url, &current));
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let resp = req.send().await.map_err(|e| send_error(e, &current, previous.as_ref()))?;
            if !is_redirect(resp.status()) {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| current.join(l).ok())
                .ok_or_else(|| SendError::BadRedirect(super::policy::origin_of(&current)))?;
            debug!(status = resp.status().as_u16(), to = %super::policy::origin_of(&next), "origin redirects");
            previous = Some(std::mem::replace(&mut current, next));
        }
        Err(SendError::TooManyRedirects(super::policy::origin_of(url)))
    }
}

/// Resolves names and refuses those that resolve to an address the policy refuses.
struct PolicyResolver {
    policy: Arc<OriginPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            policy.check_resolved(&host, &ips)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The valid ones of the (already allow-listed) `headers`.
fn header_map<N: AsRef<str>, V: AsRef<[u8]>>(headers: &[(N, V)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        match (HeaderName::from_bytes(name.as_ref().as_bytes()), HeaderValue::from_bytes(value.as_ref())) {
            (Ok(n), Ok(v)) => {
                map.append(n, v);
            }
            _ => debug!(header = name.as_ref(), "request header with an invalid name or value not forwarded"),
        }
    }
    map
}

/// The headers for a hop to `current` of a request that started at `first`: all of them on the
/// first origin, only [`CROSS_ORIGIN_HEADERS`] on another one.
fn hop_headers(headers: &HeaderMap, first: &Url, current: &Url) -> HeaderMap {
    let same_origin = first.scheme() == current.scheme()
        && first.host_str() == current.host_str()
        && first.port_or_known_default() == current.port_or_known_default();
    if same_origin {
        return headers.clone();
    }
    let mut kept = HeaderMap::new();
    let mut dropped = Vec::new();
    for (name, value) in headers {
        if CROSS_ORIGIN_HEADERS.contains(&name.as_str()) {
            kept.append(name.clone(), value.clone());
        } else if !dropped.contains(&name.as_str()) {
            dropped.push(name.as_str());
        }
    }
    if !dropped.is_empty() {
        debug!(dropped = %dropped.join(", "), "redirect to another origin: credentials not forwarded");
    }
    kept
}

/// A transport error, or the policy's refusal when the resolver refused the name.
fn send_error(e: reqwest::Error, current: &Url, previous: Option<&Url>) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return SendError::Refused(Refused {
                origin: super::policy::origin_of(current),
                redirected_from: previous.map(super::policy::origin_of),
                reason: refused.reason.clone(),
            });
        }
        source = s.source();
    }
    SendError::Request(describe(&e.without_url()))
}

/// An error with its causes, e.g. "error sending request: client error (Connect): tcp connect
/// error: Connection refused (os error 111)".
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1:0 that answers `?to=URL` with a 302 to URL, `/loop` with a 302 to
    /// itself, anything else with `body`, and records the headers of every request it gets.
    async fn server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<(String, HeaderMap)>>>) {
        use axum::extract::{Query, Request};
        use axum::response::IntoResponse;
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = log.clone();
        let app = axum::Router::new().fallback(move |q: Query<Vec<(String, String)>>, req: Request| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((req.uri().path().to_owned(), req.headers().clone()));
                if req.uri().path() == "/loop" {
                    return (StatusCode::FOUND, [("location", "/loop".to_owned())]).into_response();
                }
                match q.0.iter().find(|(k, _)| k == "to") {
                    Some((_, to)) => (StatusCode::FOUND, [("location", to.clone())]).into_response(),
                    None => "body".into_response(),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, log)
    }

    fn client(allow: &[String], extra: &[&str]) -> OriginClient {
        let policy = OriginPolicy::new(allow).unwrap();
        OriginClient::new(policy, ForwardHeaders::new(extra).unwrap(), Duration::from_secs(5)).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[tokio::test]
    async fn default_mode_refuses_loopback_literals_and_names_before_connecting() {
        let (addr, log) = server().await;
        let c = client(&[], &[]);
        let no_headers: &[(&str, &str)] = &[];
        let e = c.send(Method::GET, &url(&format!("http://{addr}/x")), no_headers, None).await.unwrap_err();
        assert!(matches!(e, SendError::Refused(_)), "{e}");
        assert!(e.to_string().contains("is a loopback address"), "{e}");
        // A name that resolves to loopback: refused by the resolver.
        let e = c.send(Method::GET, &url(&format!("http://localhost:{}/x", addr.port())), no_headers, None).await;
        let e = e.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "origin localhost:{} is not allowed: resolves to loopback address 127.0.0.1; name it with \
                 --allow-origin to allow it",
                addr.port()
            )
        );
        assert!(log.lock().unwrap().is_empty(), "nothing reached the server");
    }

    #[tokio::test]
    async fn every_redirect_hop_is_checked_and_credentials_stay_with_their_origin() {
        let (a, a_log) = server().await;
        let (b, b_log) = server().await;
        let c = client(&[a.to_string(), b.to_string()], &["private-token"]);
        let headers = [
            ("Authorization", "Bearer t"),
            ("PRIVATE-TOKEN", "glpat"),
            ("Accept", "*/*"),
            ("Range", "bytes=0-1"),
            ("X-Other", "x"),
        ];
        // Same origin: every allowed header on every hop.
        let to_self = url(&format!("http://{a}/hop?to=http://{a}/final"));
        let resp = c.send(Method::GET, &to_self, &headers, None).await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "body");
        {
            let log = a_log.lock().unwrap();
            assert_eq!(log.len(), 2);
            for (_, h) in log.iter() {
                assert_eq!(h.get("authorization").unwrap(), "Bearer t");
                assert_eq!(h.get("private-token").unwrap(), "glpat");
                assert!(h.get("range").is_none() && h.get("x-other").is_none());
            }
        }
        // To another allowed origin: only Accept and User-Agent follow.
        let to_b = url(&format!("http://{a}/hop?to=http://{b}/final"));
        c.send(Method::GET, &to_b, &headers, None).await.unwrap();
        let log = b_log.lock().unwrap().clone();
        assert_eq!(log.len(), 1);
        let h = &log[0].1;
        assert!(h.get("authorization").is_none() && h.get("private-token").is_none() && h.get("referer").is_none());
        assert_eq!(h.get("accept").unwrap(), "*/*");

        // To an origin that is not listed: refused, the server never sees the hop.
        let (other, other_log) = server().await;
        let c = client(&[a.to_string()], &[]);
        let to_other = url(&format!("http://{a}/hop?to=http://{other}/secret"));
        let e = c.send(Method::GET, &to_other, &headers, None).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "origin {other} (a redirect from {a}) is not allowed: it is not on this supernode's --allow-origin \
                 list; name it with --allow-origin to allow it"
            )
        );
        assert!(other_log.lock().unwrap().is_empty());
        // Nor to a scheme other than http(s).
        let to_file = url(&format!("http://{a}/hop?to=file:///etc/passwd"));
        let e = c.send(Method::GET, &to_file, &headers, None).await.unwrap_err();
        assert!(e.to_string().contains("redirected to a \"file\" URL"), "{e}");
    }

    #[tokio::test]
    async fn redirect_loops_end() {
        let (a, log) = server().await;
        let c = client(&[a.to_string()], &[]);
        let no_headers: &[(&str, &str)] = &[];
        let looping = url(&format!("http://{a}/loop"));
        let e = c.send(Method::GET, &looping, no_headers, None).await.unwrap_err();
        assert!(matches!(e, SendError::TooManyRedirects(_)), "{e}");
        assert_eq!(log.lock().unwrap().len(), MAX_REDIRECTS + 1);
    }
}
