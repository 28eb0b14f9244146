//! Pushing blobs and manifests over the registry HTTP API (distribution spec), monolithic uploads.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use reqwest::{header, Method, StatusCode, Url};

use crate::Blob;

/// Time for one push request: large layers on a loaded machine.
const PUSH_TIMEOUT: Duration = Duration::from_secs(600);

/// Pushes into one repository of one registry.
pub(crate) struct Pusher {
    client: reqwest::Client,
    base: String,
    name: String,
    auth: Option<(String, String)>,
}

impl Pusher {
    /// `base` is `http://HOST:PORT`; `auth` is sent as basic auth on every request.
    pub(crate) fn new(base: &str, name: &str, auth: Option<(&str, &str)>) -> Self {
        Pusher {
            client: crate::http_client(),
            base: base.trim_end_matches('/').to_string(),
            name: name.to_string(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    fn request(&self, method: Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, url).timeout(PUSH_TIMEOUT);
        match &self.auth {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    /// Uploads `blob` unless the registry has it: `HEAD`, then `POST .../blobs/uploads/` and
    /// `PUT <Location>&digest=...` with the whole body.
    pub(crate) async fn blob(&self, blob: &Blob) -> anyhow::Result<()> {
        let blob_url = format!("{}/v2/{}/blobs/{}", self.base, self.name, blob.digest);
        let head = self.request(Method::HEAD, &blob_url).send().await.with_context(|| format!("HEAD {blob_url}"))?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        check_auth(head.status(), &blob_url)?;

        let start_url = format!("{}/v2/{}/blobs/uploads/", self.base, self.name);
        let started =
            self.request(Method::POST, &start_url).send().await.with_context(|| format!("POST {start_url}"))?;
        let status = started.status();
        if status != StatusCode::ACCEPTED {
            bail!("POST {start_url} answered {status}: {}", started.text().await.unwrap_or_default());
        }
        let location = started
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("POST {start_url} answered 202 without a Location"))?;
        let mut upload =
            Url::parse(&self.base)?.join(location).with_context(|| format!("upload location {location}"))?;
        upload.query_pairs_mut().append_pair("digest", &blob.digest);

        let put = self
            .request(Method::PUT, upload.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, blob.bytes.len())
            .body(blob.bytes.clone())
            .send()
            .await
            .with_context(|| format!("PUT {upload} ({} bytes)", blob.bytes.len()))?;
        let status = put.status();
        if status != StatusCode::CREATED {
            bail!("PUT blob {} answered {status}: {}", blob.digest, put.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// `PUT /v2/<name>/manifests/<reference>` with `media_type`; checks the digest the registry
    /// computed.
    pub(crate) async fn manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &Bytes,
        digest: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.name);
        let response = self
            .request(Method::PUT, &url)
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes.clone())
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = response.status();
        let stored = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        if status != StatusCode::CREATED {
            bail!("PUT {url} ({media_type}) answered {status}: {}", response.text().await.unwrap_or_default());
        }
        if let Some(stored) = stored {
            if stored != digest {
                bail!("PUT {url}: the registry stored digest {stored}, the testkit computed {digest}");
            }
        }
        Ok(())
    }
}

/// Fails with a hint when the registry wants credentials it did not get.
fn check_auth(status: StatusCode, url: &str) -> anyhow::Result<()> {
    if status == StatusCode::UNAUTHORIZED {
        bail!("{url} answered 401: the registry wants credentials (push with Some((user, password)))");
    }
    Ok(())
}
