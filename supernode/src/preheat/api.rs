//! The preheat routes: the native API (`POST /api/v1/preheat`, `GET /api/v1/preheat/{id}`) and
//! Harbor's (`GET /healthy`, `POST /oapi/v1/jobs`, `GET /oapi/v1/jobs/{id}`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use damselfly_types::preheat::{ApiError, HeaderList, PreheatRequest};

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

/// Validates a request into a job spec.
pub fn into_spec(req: PreheatRequest) -> Result<JobSpec, PreheatError> {
    let image = ImageRef::parse(&req.image)?;
    let platform = match req.platform.as_deref() {
        None | Some("") => PlatformFilter::default(),
        Some(p) => PlatformFilter::parse(p)?,
    };
    let headers = req.headers.map(HeaderList::into_pairs).unwrap_or_default();
    let creds = credentials(req.username, req.password, headers)?;
    Ok(JobSpec { image, platform, creds, peers: req.peers })
}

async fn create(State(shared): State<Arc<Shared>>, body: Result<Json<PreheatRequest>, JsonRejection>) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad preheat request: {}", e.body_text())),
    };
    let spec = match into_spec(req) {
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
        into_spec(serde_json::from_str::<PreheatRequest>(json).unwrap())
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
    }
}
