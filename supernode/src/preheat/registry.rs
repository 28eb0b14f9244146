//! A small OCI distribution client: manifests with every supported `Accept` type, token auth
//! (`401` + `WWW-Authenticate: Bearer realm=...` → token service → `Authorization: Bearer`),
//! plain Basic auth (htpasswd registries), or headers the caller supplies (Harbor's token).
//!
//! Every request (manifests, the token service named by the registry's `WWW-Authenticate`
//! realm) goes through the supernode's [`OriginClient`], so the origin policy applies to the
//! registry, to the token realm and to every redirect: a registry cannot send the supernode to
//! an address it may not fetch from. A refusal is a [`PreheatError::Denied`] (403).
//!
//! The `Authorization` value it ends up with is what the supernode forwards to the origin fetch
//! of every blob of the job. It is never logged, never part of an id, never shown by the API
//! (the [`Credentials`] and [`RegistryClient`] `Debug` forms redact it).

use std::time::{Duration, Instant};

use bytes::Bytes;
use damselfly_types::id::Sha256Digest;
use futures_util::StreamExt;
use serde::Deserialize;

use super::reference::{ImageRef, Scheme};
use super::PreheatError;
use crate::origin::client::{OriginClient, SendError};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest accepted (registries themselves cap them at 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Time allowed for one manifest or token request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Token lifetime when the token service names none (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// How to authenticate to the registry.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Anonymous (a token service may still hand out anonymous pull tokens).
    #[default]
    Anonymous,
    /// Username and password: sent to the token service, or as Basic auth to registries that
    /// ask for it.
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// Headers sent as given on every registry request (Harbor passes `Authorization: Bearer`).
    Headers(Vec<(String, String)>),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Headers(h) => write!(f, "Headers({} redacted)", h.len()),
        }
    }
}

/// One `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower-cased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters, names lower-cased, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a `WWW-Authenticate` value into its challenges (RFC 7235: `scheme k=v, k="v", ...`,
/// several challenges separated by commas) with `http-auth`'s parser; schemes and parameter
/// names lower-cased, values unquoted. A syntax error ends the list: the challenges before it
/// are kept, so one malformed challenge after a usable `Bearer` does not lose the `Bearer`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    http_auth::parser::ChallengeParser::new(header)
        .map_while(Result::ok)
        .map(|c| Challenge {
            scheme: c.scheme.to_ascii_lowercase(),
            params: c.params.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_unescaped())).collect(),
        })
        .collect()
}

/// Standard base64 (with padding), for Basic auth.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A manifest as the registry served it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// `Content-Type` without parameters, when the registry sent one.
    pub content_type: Option<String>,
    /// The bytes.
    pub body: Bytes,
    /// sha256 of the bytes (the manifest's digest).
    pub digest: Sha256Digest,
}

/// Authentication obtained so far.
#[derive(Default)]
struct AuthState {
    /// The `Authorization` value in force.
    header: Option<String>,
    /// The Bearer challenge it came from, to fetch a fresh token when it ages.
    challenge: Option<Challenge>,
    /// When the token was obtained, and for how long it is good.
    obtained: Option<(Instant, Duration)>,
}

/// A client for one repository of one registry.
pub struct RegistryClient {
    http: OriginClient,
    base: url::Url,
    repository: String,
    creds: Credentials,
    auth: tokio::sync::Mutex<AuthState>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .field("repository", &self.repository)
            .field("creds", &self.creds)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct RegistryErrors {
    #[serde(default)]
    errors: Vec<RegistryErrorEntry>,
}

#[derive(Deserialize)]
struct RegistryErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl RegistryClient {
    /// A client for `image`'s repository; `insecure` (the registry is listed with
    /// `--insecure-registry`) means plain HTTP unless the reference named a scheme.
    pub fn new(http: OriginClient, image: &ImageRef, insecure: bool, creds: Credentials) -> Result<Self, PreheatError> {
        let scheme = image.scheme.unwrap_or(if insecure { Scheme::Http } else { Scheme::Https });
        let base = url::Url::parse(&format!("{}://{}/", scheme.as_str(), image.api_host()))
            .map_err(|e| PreheatError::BadRequest(format!("bad registry {:?}: {e}", image.registry)))?;
        Ok(Self { http, base, repository: image.repository.clone(), creds, auth: Default::default() })
    }

    /// `scheme://host/`.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// The blob URL the origin fetch uses: `{scheme}://{host}/v2/{name}/blobs/{digest}`.
    pub fn blob_url(&self, digest: &Sha256Digest) -> url::Url {
        let mut u = self.base.clone();
        u.set_path(&format!("/v2/{}/blobs/{digest}", self.repository));
        u
    }

    fn manifest_url(&self, reference: &str) -> url::Url {
        let mut u = self.base.clone();
        u.set_path(&format!("/v2/{}/manifests/{reference}", self.repository));
        u
    }

    fn host(&self) -> String {
        self.base
            .host_str()
            .map(|h| match self.base.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
            .unwrap_or_default()
    }

    /// Fetches a manifest by tag or digest, authenticating when the registry asks.
    pub async fn manifest(&self, reference: &str) -> Result<FetchedManifest, PreheatError> {
        let url = self.manifest_url(reference);
        let what = format!("{}/{}:{reference}", self.host(), self.repository);
        let mut authenticated = false;
        loop {
            let resp = self.send_manifest_request(&url).await?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && !authenticated {
                let challenges = resp
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect::<Vec<_>>();
                self.authenticate(&challenges).await?;
                authenticated = true;
                continue;
            }
            if !status.is_success() {
                return Err(self.status_error(resp, &what).await);
            }
            return read_manifest(resp, &what).await;
        }
    }

    async fn send_manifest_request(&self, url: &url::Url) -> Result<reqwest::Response, PreheatError> {
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let mut headers = vec![("Accept".to_owned(), accept)];
        headers.extend(self.request_headers().await);
        self.http.send(reqwest::Method::GET, url, &headers, Some(REQUEST_TIMEOUT)).await.map_err(|e| match e {
            SendError::Refused(r) => PreheatError::Denied(r.to_string()),
            e => PreheatError::Registry(format!("cannot reach registry {}: {e}", self.host())),
        })
    }

    /// Explicit headers plus the `Authorization` obtained by authentication.
    async fn request_headers(&self) -> Vec<(String, String)> {
        let mut headers = match &self.creds {
            Credentials::Headers(h) => h.clone(),
            _ => Vec::new(),
        };
        if let Some(auth) = &self.auth.lock().await.header {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
            headers.push(("Authorization".into(), auth.clone()));
        }
        headers
    }

    /// The headers the origin fetch of a blob must send (credentials included), refreshing a
    /// token that is about to expire.
    pub async fn forward_headers(&self) -> Result<Vec<(String, Vec<u8>)>, PreheatError> {
        let stale = {
            let auth = self.auth.lock().await;
            match (&auth.challenge, auth.obtained) {
                (Some(c), Some((at, life))) if at.elapsed() >= life * 3 / 4 => Some(c.clone()),
                _ => None,
            }
        };
        if let Some(challenge) = stale {
            self.fetch_token(&challenge).await?;
        }
        Ok(self.request_headers().await.into_iter().map(|(n, v)| (n, v.into_bytes())).collect())
    }

    async fn authenticate(&self, challenges: &[Challenge]) -> Result<(), PreheatError> {
        let host = self.host();
        if let Credentials::Headers(h) = &self.creds {
            if h.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
                return Err(PreheatError::Denied(format!(
                    "registry {host} refused the Authorization header given for {}",
                    self.repository
                )));
            }
        }
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.fetch_token(bearer).await;
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Credentials::Basic { username, password } = &self.creds else {
                return Err(PreheatError::Denied(format!(
                    "registry {host} requires credentials for {}: give username and password",
                    self.repository
                )));
            };
            let value = format!("Basic {}", base64(format!("{username}:{password}").as_bytes()));
            self.auth.lock().await.header = Some(value);
            return Ok(());
        }
        Err(PreheatError::Denied(format!("registry {host} answered 401 without a usable WWW-Authenticate challenge")))
    }

    async fn fetch_token(&self, challenge: &Challenge) -> Result<(), PreheatError> {
        let host = self.host();
        let realm = challenge.param("realm").ok_or_else(|| {
            PreheatError::Registry(format!("registry {host} sent a Bearer challenge without a realm"))
        })?;
        let mut url =
            url::Url::parse(realm).ok().filter(|u| matches!(u.scheme(), "http" | "https")).ok_or_else(|| {
                PreheatError::Registry(format!("registry {host} named an unusable token realm {realm:?}"))
            })?;
        let scope = match challenge.param("scope") {
            Some(s) => s.to_owned(),
            None => format!("repository:{}:pull", self.repository),
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                q.append_pair("service", service);
            }
            q.append_pair("scope", &scope);
        }
        let token_host = url.host_str().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        if let Credentials::Basic { username, password } = &self.creds {
            headers.push(("Authorization", format!("Basic {}", base64(format!("{username}:{password}").as_bytes()))));
        }
        let resp =
            self.http.send(reqwest::Method::GET, &url, &headers, Some(REQUEST_TIMEOUT)).await.map_err(|e| match e {
                SendError::Refused(r) => PreheatError::Denied(format!("token service of registry {host}: {r}")),
                e => PreheatError::Registry(format!("cannot reach token service {token_host}: {e}")),
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(PreheatError::Denied(format!(
                "token service {token_host} refused the credentials for {} (HTTP {})",
                self.repository,
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(PreheatError::Registry(format!(
                "token service {token_host} answered HTTP {}",
                status.as_u16()
            )));
        }
        let body: TokenResponse = resp.json().await.map_err(|e| {
            PreheatError::Registry(format!("token service {token_host} sent an unreadable answer: {e}"))
        })?;
        let token =
            body.token.or(body.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                PreheatError::Registry(format!("token service {token_host} answered without a token"))
            })?;
        let life = body.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let mut auth = self.auth.lock().await;
        auth.header = Some(format!("Bearer {token}"));
        auth.challenge = Some(challenge.clone());
        auth.obtained = Some((Instant::now(), life));
        Ok(())
    }

    async fn status_error(&self, resp: reqwest::Response, what: &str) -> PreheatError {
        let status = resp.status().as_u16();
        let detail = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<RegistryErrors>(&b).ok())
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| format!(" ({}: {})", e.code, e.message))
            .unwrap_or_default();
        let anonymous = matches!(self.creds, Credentials::Anonymous);
        match status {
            404 => PreheatError::NotFound(format!("image {what} not found{detail}")),
            401 | 403 if anonymous => PreheatError::Denied(format!(
                "registry refused anonymous access to {what}{detail}: the image does not exist or needs credentials"
            )),
            401 | 403 => PreheatError::Denied(format!("registry refused the credentials for {what}{detail}")),
            400..=499 => {
                PreheatError::BadRequest(format!("registry rejected the request for {what}: HTTP {status}{detail}"))
            }
            _ => PreheatError::Registry(format!("registry answered HTTP {status} for {what}{detail}")),
        }
    }
}

async fn read_manifest(resp: reqwest::Response, what: &str) -> Result<FetchedManifest, PreheatError> {
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            PreheatError::Registry(format!("reading manifest {what} failed: {}", error_chain(&e.without_url())))
        })?;
        if body.len() + chunk.len() > MAX_MANIFEST {
            return Err(PreheatError::Unsupported(format!("manifest {what} is larger than {MAX_MANIFEST} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let digest = Sha256Digest::of(&body);
    Ok(FetchedManifest { content_type, body: body.into(), digest })
}

/// An error with its sources ("error sending request: connection refused").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#;
        let c = parse_challenges(h);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/alpine:pull,push"));
    }

    #[test]
    fn basic_unquoted_escaped_and_several_challenges_parse() {
        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            c,
            vec![Challenge { scheme: "basic".into(), params: vec![("realm".into(), "Registry Realm".into())] }]
        );
        let c = parse_challenges(r#"Bearer Realm="http://h/t" , service = "a \"b\"", Basic realm=x"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some("http://h/t"));
        assert_eq!(c[0].param("service"), Some(r#"a "b""#));
        assert_eq!(c[1].scheme, "basic");
        assert_eq!(c[1].param("realm"), Some("x"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Negotiate")[0].scheme, "negotiate");
        // Malformed input does not panic, and what came before the error is kept.
        assert!(parse_challenges(r#"Bearer realm="abc"#).is_empty());
        let kept = parse_challenges(r#"Bearer realm="r", Basic realm="x" garbage "#);
        assert_eq!(kept.first().and_then(|c| c.param("realm")), Some("r"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("user:pa ss", "dXNlcjpwYSBzcw=="),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let c = Credentials::Basic { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
        let h = Credentials::Headers(vec![("Authorization".into(), "Bearer sekrit".into())]);
        assert!(!format!("{h:?}").contains("sekrit"));
    }

    /// An origin client that may fetch from 127.0.0.1 only (any port).
    fn loopback_client() -> OriginClient {
        let policy = crate::origin::policy::OriginPolicy::new(&["127.0.0.1"]).unwrap();
        OriginClient::new(policy, Default::default(), Duration::from_secs(5)).unwrap()
    }

    /// A registry that wants a Bearer token from its token service (`/token`, which wants Basic
    /// `u:p` and hands out `good` for the pull scope), on `127.0.0.1:0`.
    async fn token_registry() -> std::net::SocketAddr {
        token_registry_with_realm(None).await
    }

    /// [`token_registry`], naming `realm` (default: its own `/token`) as its token service.
    async fn token_registry_with_realm(realm: Option<String>) -> std::net::SocketAddr {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let realm = realm.unwrap_or_else(|| format!("http://{addr}/token"));
        let manifest = move |headers: HeaderMap| {
            let realm = realm.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                if auth == "Bearer good" {
                    return ([("content-type", OCI_MANIFEST)], "{}").into_response();
                }
                let challenge = format!(r#"Bearer realm="{realm}",service="test",scope="repository:team/app:pull""#);
                (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response()
            }
        };
        let token = |headers: HeaderMap, q: axum::extract::RawQuery| async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let query = q.0.unwrap_or_default();
            let ok = auth == format!("Basic {}", base64(b"u:p"))
                && query.contains("service=test")
                && query.contains("scope=repository%3Ateam%2Fapp%3Apull");
            if ok {
                r#"{"access_token":"good","expires_in":300}"#.into_response()
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        };
        let app = axum::Router::new()
            .route("/v2/team/app/manifests/v1", axum::routing::get(manifest))
            .route("/token", axum::routing::get(token));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn token_auth_gets_a_bearer_token_and_forwards_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = token_registry().await;
        let image = ImageRef::parse(&format!("{addr}/team/app:v1")).unwrap();
        let creds = Credentials::Basic { username: "u".into(), password: "p".into() };
        let client = RegistryClient::new(loopback_client(), &image, true, creds).unwrap();
        let m = client.manifest("v1").await.unwrap();
        assert_eq!(m.content_type.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(&m.body[..], b"{}");
        let headers = client.forward_headers().await.unwrap();
        assert_eq!(headers, vec![("Authorization".to_owned(), b"Bearer good".to_vec())]);

        let wrong = Credentials::Basic { username: "u".into(), password: "nope".into() };
        let client = RegistryClient::new(loopback_client(), &image, true, wrong).unwrap();
        let e = client.manifest("v1").await.unwrap_err();
        assert!(matches!(e, PreheatError::Denied(ref m) if m.contains("token service")), "{e}");
        let anonymous = RegistryClient::new(loopback_client(), &image, true, Credentials::Anonymous).unwrap();
        assert!(matches!(anonymous.manifest("v1").await.unwrap_err(), PreheatError::Denied(_)));
    }

    #[tokio::test]
    async fn the_token_realm_and_the_registry_obey_the_origin_policy() {
        // A realm on an origin the supernode may not fetch from (nothing listens there: were
        // it not refused, the error would be "cannot reach", a 502).
        let addr = token_registry_with_realm(Some("http://127.0.0.2:9/token".into())).await;
        let image = ImageRef::parse(&format!("{addr}/team/app:v1")).unwrap();
        let creds = Credentials::Basic { username: "u".into(), password: "p".into() };
        let client = RegistryClient::new(loopback_client(), &image, true, creds.clone()).unwrap();
        let e = client.manifest("v1").await.unwrap_err();
        assert_eq!(
            e,
            PreheatError::Denied(format!(
                "token service of registry {addr}: origin 127.0.0.2:9 is not allowed: it is not on this \
                 supernode's --allow-origin list; name it with --allow-origin to allow it"
            ))
        );
        // Without --allow-origin a loopback registry is refused before any request.
        let default_mode = OriginClient::new(Default::default(), Default::default(), Duration::from_secs(5)).unwrap();
        let client = RegistryClient::new(default_mode, &image, true, creds).unwrap();
        let e = client.manifest("v1").await.unwrap_err();
        assert!(matches!(&e, PreheatError::Denied(m) if m.contains("127.0.0.1 is a loopback address")), "{e}");
    }

    #[test]
    fn urls_follow_the_distribution_api() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let image = ImageRef::parse("localhost:5000/team/app:v1").unwrap();
        let c = RegistryClient::new(loopback_client(), &image, true, Credentials::Anonymous).unwrap();
        let d = Sha256Digest::of(b"x");
        assert_eq!(c.blob_url(&d).as_str(), format!("http://localhost:5000/v2/team/app/blobs/{d}"));
        assert_eq!(c.manifest_url("v1").as_str(), "http://localhost:5000/v2/team/app/manifests/v1");
        let hub = ImageRef::parse("alpine").unwrap();
        let c = RegistryClient::new(loopback_client(), &hub, false, Credentials::Anonymous).unwrap();
        assert_eq!(c.base().as_str(), "https://registry-1.docker.io/");
    }
}
