//! The HTTP client the handles use to poll health, metrics and JSON endpoints.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::Metrics;

/// An `Authorization: Basic` value for `user` and `password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64_standard(format!("{user}:{password}").as_bytes()))
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_standard(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A reqwest client for talking to the test servers: ignores proxy variables (every target is on
/// loopback), 5 s connect timeout.
///
/// Installs ring as the process's rustls provider first: reqwest is built with
/// `rustls-no-provider` and panics when a client is built without one.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A client like [`http_client`] that sends `Authorization: Bearer TOKEN` with every request,
/// as the supernode's API requires.
pub(crate) fn bearer_client(token: &str) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
    value.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()?)
}

/// `GET url` expecting 200, returning the body as text.
pub(crate) async fn get_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response =
        client.get(url).timeout(Duration::from_secs(30)).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("read the body of GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url} answered {status}: {body}");
    }
    Ok(body)
}

/// `GET url` and parse it as a Prometheus page.
pub(crate) async fn get_metrics(client: &reqwest::Client, url: &str) -> anyhow::Result<Metrics> {
    let text = get_text(client, url).await?;
    Metrics::parse(&text).with_context(|| format!("parse the metrics page {url}"))
}

/// `GET url` and parse it as JSON.
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let text = get_text(client, url).await?;
    serde_json::from_str(&text).with_context(|| format!("GET {url} returned no JSON: {text}"))
}
