//! Who may use the supernode (ARCHITECTURE.md, "Trust and access").
//!
//! - The **join token** ([`damselfly_net::token::JoinToken`]) admits a dfdaemon to
//!   enrollment. `--join-token-file FILE` names one (all supernodes of a region share it, and
//!   the CA it pins must be this supernode's); otherwise the supernode keeps its own in
//!   `DATA_DIR/join-token`, written on first start (and written anew, with a warning, when the CA
//!   it pins was replaced).
//! - The **API token** ([`damselfly_net::token::ApiToken`]) guards every HTTP endpoint except
//!   the probes and metrics ([`OPEN_PATHS`]). `--api-token-file FILE`, else
//!   `DATA_DIR/api-token`, written on first start. Clients send `Authorization: Bearer TOKEN`
//!   (dfget preheat, Harbor's "OAuth" provider mode). A browser opens `GET /status?token=TOKEN`
//!   once: it gets an HttpOnly, SameSite=Strict session cookie and a redirect to `/status`;
//!   the cookie then admits read-only requests (GET, HEAD), so a page of another origin can never
//!   make the browser change anything.
//!
//! Tokens are compared in constant time and never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use damselfly_net::tls::ClusterCa;
use damselfly_net::token::{ca_fingerprint, secrets_equal, ApiToken, JoinToken, TokenError};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use crate::{Shared, SupernodeConfig};

/// Where the supernode keeps its own join token inside `--data-dir`.
pub const JOIN_TOKEN_FILE: &str = "join-token";
/// Where the supernode keeps its own API token inside `--data-dir`.
pub const API_TOKEN_FILE: &str = "api-token";
/// HTTP paths open without a token: the probes and the metrics.
pub const OPEN_PATHS: [&str; 3] = ["/healthz", "/healthy", "/metrics"];
/// The status page, where a browser signs in with `?token=`.
pub const STATUS_PATH: &str = "/status";
/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "damselfly_session";

/// The tokens could not be set up: the supernode does not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// `--join-token-file` names a token made for another cluster CA.
    #[error(
        "the join token in {path} pins the cluster CA {pinned}, but this supernode's CA is {actual}: \
         give every supernode of the region the same --ca-cert/--ca-key and the join token made for that CA \
         (deploy/kubernetes/make-secrets.sh makes both)"
    )]
    OtherCa {
        /// The token file.
        path: PathBuf,
        /// The CA the token pins (`sha256:<hex>`).
        pinned: String,
        /// This supernode's CA (`sha256:<hex>`).
        actual: String,
    },
    /// A token file cannot be read, parsed or written.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The supernode's secrets, loaded once at start.
#[derive(Debug)]
pub struct Tokens {
    /// What enrolling daemons must present.
    pub join: JoinToken,
    /// What the HTTP API requires.
    pub api: ApiAccess,
}

impl Tokens {
    /// Reads the token files the configuration names, or the supernode's own under `data_dir`,
    /// creating them (mode 0600) on first start.
    pub fn load(config: &SupernodeConfig, ca: &ClusterCa) -> Result<Self, AuthSetupError> {
        let join = join_token(config.join_token_file.as_deref(), &config.data_dir, ca)?;
        let api = api_token(config.api_token_file.as_deref(), &config.data_dir)?;
        Ok(Self { join, api: ApiAccess::new(api) })
    }
}

fn join_token(file: Option<&Path>, data_dir: &Path, ca: &ClusterCa) -> Result<JoinToken, AuthSetupError> {
    let ca = ca.cert_der();
    if let Some(path) = file {
        let token = JoinToken::read_file(path)?;
        if !token.pins(&ca) {
            return Err(AuthSetupError::OtherCa {
                path: path.to_owned(),
                pinned: token.ca_fingerprint(),
                actual: ca_fingerprint(&ca),
            });
        }
        info!(file = %path.display(), ca = %token.ca_fingerprint(), "using the join token file");
        return Ok(token);
    }
    let path = data_dir.join(JOIN_TOKEN_FILE);
    if path.exists() {
        let token = JoinToken::read_file(&path)?;
        if token.pins(&ca) {
            info!(file = %path.display(), ca = %token.ca_fingerprint(), "using the join token of an earlier start");
            return Ok(token);
        }
        warn!(
            file = %path.display(),
            old_ca = %token.ca_fingerprint(),
            ca = %ca_fingerprint(&ca),
            "the join token was made for another cluster CA (the CA was replaced): writing a new one; \
             every dfdaemon needs the new token to enroll again"
        );
    }
    let token = JoinToken::generate(&ca);
    token.write_file(&path)?;
    info!(
        file = %path.display(),
        ca = %token.ca_fingerprint(),
        "wrote the join token: give it to the dfdaemons (--join-token-file FILE or DAMSELFLY_JOIN_TOKEN)"
    );
    Ok(token)
}

fn api_token(file: Option<&Path>, data_dir: &Path) -> Result<ApiToken, TokenError> {
    if let Some(path) = file {
        return ApiToken::read_file(path);
    }
    let path = data_dir.join(API_TOKEN_FILE);
    if path.exists() {
        return ApiToken::read_file(&path);
    }
    let token = ApiToken::generate();
    token.write_file(&path)?;
    info!(file = %path.display(), "wrote the API token: clients send it as Authorization: Bearer (dfget preheat --token-file)");
    Ok(token)
}

/// The API token and the browser session derived from it.
#[derive(Debug)]
pub struct ApiAccess {
    token: ApiToken,
    /// The session cookie's value: a hash of the token, so the cookie is not the token itself,
    /// is the same on every replica and across restarts, and dies when the token is rotated.
    session: String,
}

/// What the API does with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass it on to the handler.
    Pass,
    /// A browser signed in with `?token=`: set the session cookie and redirect to the page.
    SignIn,
    /// 401, with the reason; `presented` when a wrong token or cookie was sent.
    Deny {
        /// Why, for the client.
        reason: &'static str,
        /// A credential was presented and was wrong (RFC 6750 `error="invalid_token"`).
        presented: bool,
    },
}

impl ApiAccess {
    /// Access guarded by `token`.
    pub fn new(token: ApiToken) -> Self {
        let session =
            hex::encode(Sha256::new_with_prefix(b"damselfly-session-v1\0").chain_update(token.expose()).finalize());
        Self { token, session }
    }

    /// Decides on a request from its method, path, query and headers. Pure: no I/O.
    pub fn decide(&self, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> Decision {
        if OPEN_PATHS.contains(&path) {
            return Decision::Pass;
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            return match bearer(value.as_bytes()) {
                Some(token) if self.token.matches(token) => Decision::Pass,
                Some(_) => Decision::Deny { reason: "wrong API token", presented: true },
                None => Decision::Deny { reason: "the Authorization header is not 'Bearer TOKEN'", presented: true },
            };
        }
        if method == Method::GET && path == STATUS_PATH {
            if let Some(token) = query_token(query) {
                return if self.token.matches(token.as_bytes()) {
                    Decision::SignIn
                } else {
                    Decision::Deny { reason: "wrong API token", presented: true }
                };
            }
        }
        if let Some(cookie) = session_cookie(headers) {
            if !secrets_equal(cookie.as_bytes(), self.session.as_bytes()) {
                return Decision::Deny { reason: "the session has expired: sign in again", presented: true };
            }
            if matches!(*method, Method::GET | Method::HEAD) {
                return Decision::Pass;
            }
            return Decision::Deny { reason: "a browser session may only read: send the token", presented: false };
        }
        Decision::Deny { reason: "the API token is required", presented: false }
    }

    /// The `Set-Cookie` value that signs a browser in.
    fn set_cookie(&self) -> String {
        format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", self.session)
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().as_bytes())
}

fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Axum middleware: applies [`ApiAccess::decide`] to every request.
pub async fn require_api_token(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let access = &shared.tokens.api;
    match access.decide(req.method(), req.uri().path(), req.uri().query(), req.headers()) {
        Decision::Pass => next.run(req).await,
        Decision::SignIn => sign_in(access),
        Decision::Deny { reason, presented } => {
            debug!(path = %req.uri().path(), reason, "API request refused");
            unauthorized(reason, presented)
        }
    }
}

fn sign_in(access: &ApiAccess) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(STATUS_PATH));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(cookie) = HeaderValue::from_str(&access.set_cookie()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

fn unauthorized(reason: &'static str, presented: bool) -> Response {
    let challenge =
        if presented { "Bearer realm=\"damselfly\", error=\"invalid_token\"" } else { "Bearer realm=\"damselfly\"" };
    let body = serde_json::json!({
        "error": format!(
            "{reason}: send Authorization: Bearer <the supernode's API token> \
             (--api-token-file, or DATA_DIR/api-token where the supernode wrote it)"
        )
    });
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn access() -> ApiAccess {
        ApiAccess::new(ApiToken::parse(TOKEN, "test").expect("token"))
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    fn deny(decision: &Decision) -> bool {
        matches!(decision, Decision::Deny { .. })
    }

    #[test]
    fn probes_and_metrics_are_open_everything_else_needs_the_token() {
        let a = access();
        let none = HeaderMap::new();
        for path in OPEN_PATHS {
            assert_eq!(a.decide(&Method::GET, path, None, &none), Decision::Pass, "{path}");
        }
        for path in ["/api/v1/tasks", "/api/v1/preheat", "/oapi/v1/jobs", "/status", "/healthz/x", "/unknown"] {
            assert!(deny(&a.decide(&Method::GET, path, None, &none)), "{path}");
        }
        let good = headers(&[(header::AUTHORIZATION, &format!("Bearer {TOKEN}"))]);
        assert_eq!(a.decide(&Method::POST, "/api/v1/preheat", None, &good), Decision::Pass);
        // What Harbor's "OAuth" mode sends; the scheme is case-insensitive.
        let harbor = headers(&[(header::AUTHORIZATION, &format!("bearer {TOKEN}"))]);
        assert_eq!(a.decide(&Method::POST, "/oapi/v1/jobs", None, &harbor), Decision::Pass);
        for wrong in [format!("Bearer {TOKEN}x"), format!("Basic {TOKEN}"), TOKEN.to_owned(), "Bearer".to_owned()] {
            let h = headers(&[(header::AUTHORIZATION, &wrong)]);
            assert!(deny(&a.decide(&Method::GET, "/api/v1/tasks", None, &h)), "{wrong}");
        }
    }

    #[test]
    fn a_browser_signs_in_once_and_then_reads_with_its_cookie() {
        let a = access();
        let none = HeaderMap::new();
        let query = format!("token={TOKEN}");
        assert_eq!(a.decide(&Method::GET, STATUS_PATH, Some(&query), &none), Decision::SignIn);
        assert!(deny(&a.decide(&Method::GET, STATUS_PATH, Some("token=nope"), &none)));
        // `?token=` signs in on the status page only.
        assert!(deny(&a.decide(&Method::GET, "/api/v1/tasks", Some(&query), &none)));

        let cookie = a.set_cookie();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains(TOKEN));
        let pair = cookie.split(';').next().expect("pair");
        let with_cookie = headers(&[(header::COOKIE, &format!("theme=dark; {pair}"))]);
        assert_eq!(a.decide(&Method::GET, STATUS_PATH, None, &with_cookie), Decision::Pass);
        assert_eq!(a.decide(&Method::GET, "/api/v1/tasks", None, &with_cookie), Decision::Pass);
        assert!(deny(&a.decide(&Method::POST, "/api/v1/preheat", None, &with_cookie)), "a cookie only reads");
        let stale = headers(&[(header::COOKIE, &format!("{SESSION_COOKIE}=0000"))]);
        assert!(deny(&a.decide(&Method::GET, STATUS_PATH, None, &stale)));
        let other = ApiAccess::new(ApiToken::generate());
        assert!(deny(&other.decide(&Method::GET, STATUS_PATH, None, &with_cookie)), "a rotated token ends sessions");
    }

    #[test]
    fn tokens_are_created_once_and_a_token_for_another_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate().expect("CA");
        let first = join_token(None, dir.path(), &ca).expect("create");
        assert_eq!(join_token(None, dir.path(), &ca).expect("reuse"), first);
        let api = api_token(None, dir.path()).expect("create");
        assert_eq!(api_token(None, dir.path()).expect("reuse"), api);

        // A replaced CA gets a new token in the data dir...
        let other = ClusterCa::generate().expect("CA");
        let renewed = join_token(None, dir.path(), &other).expect("replace");
        assert!(renewed.pins(&other.cert_der()) && !renewed.pins(&ca.cert_der()));
        // ...but a token file the operator names must match.
        let named = dir.path().join("shared-token");
        first.write_file(&named).expect("write");
        let err = join_token(Some(&named), dir.path(), &other).expect_err("other CA");
        assert!(matches!(err, AuthSetupError::OtherCa { .. }), "{err}");
        assert!(err.to_string().contains(&ca_fingerprint(&other.cert_der())), "{err}");
        assert_eq!(join_token(Some(&named), dir.path(), &ca).expect("matching"), first);
    }
}
