//! The preheat routes: the native API (`POST /api/v1/preheat`, `GET /api/v1/preheat/{id}`) and
//! Harbor's (`GET /healthy`, `POST /oapi/v1/jobs`, `GET /oapi/v1/jobs/{id}`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::reference::{ImageRef, PlatformFilter};
use super::registry::Credentials;
use super::{harbor, submit, JobSpec, PreheatError};
use crate::Shared;

/// The preheat routes, to merge into the supernode's API router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/preheat", post(create))
        .route("/api/v1/preheat/{id}", get(status))
        .route("/healthy", get(|| async { "ok\n" }))
        .route("/oapi/v1/jobs", post(harbor::create))
        .route("/oapi/v1/jobs/{id}", get(harbor::status))
}

/// Body of `POST /api/v1/preheat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreheatRequest {
    /// `registry/name:tag`, `name@sha256:...`, or a manifest URL.
    pub image: String,
    /// `os/arch[/variant]` or `all`; default `linux/amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Registry user name (with `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Registry password or access token (with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Headers for every registry request, e.g. `{"Authorization": "Bearer ..."}`; a list of
    /// `[name, value]` pairs is accepted too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderList>,
    /// dfdaemon addresses (`HOST:PORT` of their HTTP API) that should fetch the image too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Headers as a map or as `[name, value]` pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderList {
    /// `{"Name": "value"}`.
    Map(BTreeMap<String, String>),
    /// `[["Name", "value"]]`.
    Pairs(Vec<(String, String)>),
}

impl HeaderList {
    fn into_pairs(self) -> Vec<(String, String)> {
        match self {
            Self::Map(m) => m.into_iter().collect(),
            Self::Pairs(p) => p,
        }
    }
}

/// Error body of the preheat API.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, for a person to read.
    pub error: String,
}

/// `status` with `{"error": message}`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

/// Credentials from the username/password or headers of a request.
pub fn credentials(
    username: Option<String>,
    password: Option<String>,
    headers: Vec<(String, String)>,
) -> Result<Credentials, PreheatError> {
    for (name, value) in &headers {
        let name_ok = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok();
        if !name_ok || reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(PreheatError::BadRequest(format!("header {name:?} is not a valid HTTP header")));
        }
    }
    match (username, password, headers.is_empty()) {
        (None, None, true) => Ok(Credentials::Anonymous),
        (None, None, false) => Ok(Credentials::Headers(headers)),
        (Some(username), Some(password), true) => Ok(Credentials::Basic { username, password }),
        (Some(_), Some(_), false) => {
            Err(PreheatError::BadRequest("give either username/password or headers, not both".into()))
        }
        _ => Err(PreheatError::BadRequest("username and password go together".into())),
    }
}

impl PreheatRequest {
    /// Validates the request into a job spec.
    pub fn into_spec(self) -> Result<JobSpec, PreheatError> {
        let image = ImageRef::parse(&self.image)?;
        let platform = match self.platform.as_deref() {
            None | Some("") => PlatformFilter::default(),
            Some(p) => PlatformFilter::parse(p)?,
        };
        let headers = self.headers.map(HeaderList::into_pairs).unwrap_or_default();
        let creds = credentials(self.username, self.password, headers)?;
        Ok(JobSpec { image, platform, creds, peers: self.peers })
    }
}

async fn create(State(shared): State<Arc<Shared>>, body: Result<Json<PreheatRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad preheat request: {}", e.body_text())),
    };
    let spec = match req.into_spec() {
        Ok(s) => s,
        Err(e) => return error(e.status(), e.to_string()),
    };
    match submit(&shared, spec).await {
        Ok(job) => {
            let mut resp = (StatusCode::ACCEPTED, Json(job.view())).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/preheat/{}", job.id)) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Err(e) => error(e.status(), e.to_string()),
    }
}

async fn status(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.preheat.get(&id) {
        Some(job) => Json(job.view()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no preheat job {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<JobSpec, PreheatError> {
        serde_json::from_str::<PreheatRequest>(json).unwrap().into_spec()
    }

    #[test]
    fn requests_validate() {
        let s = req(r#"{"image":"localhost:5000/x:1"}"#).unwrap();
        assert_eq!(s.platform, PlatformFilter::default());
        assert!(matches!(s.creds, Credentials::Anonymous));
        let s = req(r#"{"image":"x","platform":"all","username":"u","password":"p","peers":["a:1"]}"#).unwrap();
        assert_eq!(s.platform, PlatformFilter::All);
        assert!(matches!(s.creds, Credentials::Basic { .. }));
        assert_eq!(s.peers, vec!["a:1".to_owned()]);
        let s = req(r#"{"image":"x","headers":{"Authorization":"Bearer t"}}"#).unwrap();
        assert!(matches!(s.creds, Credentials::Headers(ref h) if h[0].0 == "Authorization"));
        let s = req(r#"{"image":"x","headers":[["X-A","1"]]}"#).unwrap();
        assert!(matches!(s.creds, Credentials::Headers(ref h) if h[0].1 == "1"));

        for (json, needle) in [
            (r#"{"image":"Bad"}"#, "lowercase"),
            (r#"{"image":"x","platform":"linux"}"#, "platform"),
            (r#"{"image":"x","username":"u"}"#, "together"),
            (r#"{"image":"x","username":"u","password":"p","headers":{"A":"b"}}"#, "not both"),
            (r#"{"image":"x","headers":{"Bad Name":"b"}}"#, "not a valid"),
        ] {
            let e = req(json).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{json}");
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
        assert!(serde_json::from_str::<PreheatRequest>(r#"{"image":"x","platfrom":"all"}"#).is_err());
    }
}
