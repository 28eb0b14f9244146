//! Harbor's Dragonfly provider, answered by the supernode: the request and response shapes of
//! Dragonfly 2's manager open API that goharbor/harbor `src/pkg/p2p/preheat/provider/dragonfly.go`
//! uses, mapped onto preheat jobs (see the [module documentation](super) for the mapping).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::credentials;
use super::job::{rfc3339, ItemState, Job, JobState};
use super::reference::{ImageRef, PlatformFilter};
use super::{record_failure, submit, JobSpec, PreheatError};
use crate::Shared;

/// `POST /oapi/v1/jobs` as Harbor sends it. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateJobRequest {
    /// Job type: only `preheat`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// What to preheat.
    #[serde(default)]
    pub args: CreateJobArgs,
}

/// `args` of a Harbor job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateJobArgs {
    /// Preheat type: only `image`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Manifest URL, `https://host/v2/name/manifests/tag`.
    #[serde(default)]
    pub url: String,
    /// Headers for the registry (Harbor sends `Authorization: Bearer <token>`).
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Registry user name (Dragonfly's open API accepts these too).
    #[serde(default)]
    pub username: Option<String>,
    /// Registry password.
    #[serde(default)]
    pub password: Option<String>,
    /// Platform (`os/arch[/variant]` or `all`); default `linux/amd64`.
    #[serde(default)]
    pub platform: Option<String>,
}

/// A job as Harbor reads it (Dragonfly's `models.Job`, the fields Harbor uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResponse {
    /// Integer id (Harbor parses it as `int`).
    pub id: u64,
    /// The native job id.
    pub task_id: String,
    /// Always `preheat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `PENDING`, `SUCCESS` or `FAILURE`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Per-blob and per-peer outcomes.
    pub result: JobResult,
}

/// `result` of a Harbor job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobResult {
    /// One entry: this supernode's.
    pub job_states: Vec<JobStateEntry>,
}

/// One group's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStateEntry {
    /// `PENDING`, `SUCCESS` or `FAILURE`.
    pub state: String,
    /// Why the job failed (empty otherwise).
    pub error: String,
    /// One entry: this supernode's.
    pub results: Vec<ClusterResult>,
}

/// Outcomes in one (scheduler) cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterResult {
    /// Blobs (and peer fetches) that succeeded.
    pub success_tasks: Vec<TaskOutcome>,
    /// Blobs (and peer fetches) that failed.
    pub failure_tasks: Vec<TaskOutcome>,
    /// Always 0.
    pub scheduler_cluster_id: u64,
}

/// One blob on one host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// Blob URL.
    pub url: String,
    /// Host that fetched it (`supernode` or the peer's address).
    pub hostname: String,
    /// Its IP (or host name when the peer was named by one).
    pub ip: String,
    /// Why it failed (failure tasks only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn harbor_state(state: JobState) -> &'static str {
    match state {
        JobState::Pending | JobState::Running => "PENDING",
        JobState::Succeeded => "SUCCESS",
        JobState::Failed => "FAILURE",
    }
}

/// Harbor's view of `job`.
pub fn view(shared: &Shared, job: &Job) -> JobResponse {
    let state = harbor_state(job.state());
    let (created, updated) = job.times();
    let (blobs, peers) = job.harbor_items();
    let mut result = ClusterResult::default();
    let sn_ip = shared.config.http_listen.ip().to_string();
    for (url, blob_state, error) in &blobs {
        let outcome = |description: String| TaskOutcome {
            url: url.clone(),
            hostname: "supernode".into(),
            ip: sn_ip.clone(),
            description,
        };
        match blob_state {
            ItemState::Succeeded => result.success_tasks.push(outcome(String::new())),
            ItemState::Failed => result.failure_tasks.push(outcome(error.clone().unwrap_or_default())),
            _ => {}
        }
    }
    for (addr, peer_state, error) in &peers {
        let host = match super::warm::parse_peer(addr) {
            Ok(super::warm::PeerTarget::Addr(a)) => {
                a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            }
            _ => None,
        }
        .unwrap_or_default();
        for (url, _, _) in &blobs {
            let outcome = |description: String| TaskOutcome {
                url: url.clone(),
                hostname: addr.clone(),
                ip: host.clone(),
                description,
            };
            match peer_state {
                ItemState::Succeeded => result.success_tasks.push(outcome(String::new())),
                ItemState::Failed => result.failure_tasks.push(outcome(error.clone().unwrap_or_default())),
                _ => {}
            }
        }
    }
    JobResponse {
        id: job.number,
        task_id: job.id.clone(),
        kind: "preheat".into(),
        state: state.into(),
        created_at: rfc3339(created),
        updated_at: rfc3339(updated),
        result: JobResult {
            job_states: vec![JobStateEntry {
                state: state.into(),
                error: job.error().unwrap_or_default(),
                results: vec![result],
            }],
        },
    }
}

/// Dragonfly's error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct HarborError {
    /// What went wrong.
    pub message: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(HarborError { message })).into_response()
}

/// Validates a Harbor request into a job spec (without touching the registry).
pub fn spec(req: CreateJobRequest) -> Result<JobSpec, PreheatError> {
    if req.kind != "preheat" {
        return Err(PreheatError::BadRequest(format!("unsupported job type {:?}: only \"preheat\"", req.kind)));
    }
    if req.args.kind != "image" {
        return Err(PreheatError::BadRequest(format!("unsupported preheat type {:?}: only \"image\"", req.args.kind)));
    }
    let image = ImageRef::parse_manifest_url(&req.args.url)?;
    let platform = match req.args.platform.as_deref() {
        None | Some("") => PlatformFilter::default(),
        Some(p) => PlatformFilter::parse(p)?,
    };
    let headers: Vec<(String, String)> = req.args.headers.unwrap_or_default().into_iter().collect();
    let creds =
        credentials(req.args.username.filter(|u| !u.is_empty()), req.args.password.filter(|p| !p.is_empty()), headers)?;
    Ok(JobSpec { image, platform, creds, peers: Vec::new() })
}

/// `POST /oapi/v1/jobs`.
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<CreateJobRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad job request: {}", e.body_text())),
    };
    let spec = match spec(req) {
        Ok(s) => s,
        Err(e) => return error(e.status(), e.to_string()),
    };
    let (image, platform) = (spec.image.to_string(), spec.platform.to_string());
    let job = match submit(&shared, spec).await {
        Ok(job) => job,
        Err(e) => record_failure(&shared, image, platform, &e),
    };
    Json(view(&shared, &job)).into_response()
}

/// `GET /oapi/v1/jobs/{id}`.
pub(super) async fn status(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let job = id.parse::<u64>().ok().and_then(|n| shared.preheat.by_number(n));
    match job {
        Some(job) => Json(view(&shared, &job)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no job {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preheat::registry::Credentials;

    /// What Harbor's driver marshals (`dragonflyCreateJobRequest`), nil maps and zero values
    /// included.
    const HARBOR_BODY: &str = r#"{"type":"preheat","args":{"type":"image","url":"https://harbor.example.com/v2/library/app/manifests/v1","tag":"","filtered_query_params":"","headers":{"Authorization":"Bearer tok"},"scope":"single_seed_peer","concurrent_count":0,"timeout":0},"scheduler_cluster_ids":null}"#;

    #[test]
    fn harbor_requests_map_to_job_specs() {
        let req: CreateJobRequest = serde_json::from_str(HARBOR_BODY).unwrap();
        let s = spec(req).unwrap();
        assert_eq!(s.image.to_string(), "harbor.example.com/library/app:v1");
        assert_eq!(s.platform, PlatformFilter::default());
        assert!(
            matches!(s.creds, Credentials::Headers(ref h) if h == &[("Authorization".to_owned(), "Bearer tok".to_owned())])
        );

        let no_headers = HARBOR_BODY.replace(r#"{"Authorization":"Bearer tok"}"#, "null");
        let s = spec(serde_json::from_str(&no_headers).unwrap()).unwrap();
        assert!(matches!(s.creds, Credentials::Anonymous));

        for (body, needle) in [
            (HARBOR_BODY.replace(r#""type":"preheat""#, r#""type":"sync_peers""#), "job type"),
            (HARBOR_BODY.replace(r#""type":"image""#, r#""type":"file""#), "preheat type"),
            (HARBOR_BODY.replace("/v2/library/app/manifests/v1", "/library/app:v1"), "manifest URL"),
        ] {
            let e = spec(serde_json::from_str(&body).unwrap()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn harbor_states_and_response_shape() {
        assert_eq!(harbor_state(JobState::Pending), "PENDING");
        assert_eq!(harbor_state(JobState::Running), "PENDING");
        assert_eq!(harbor_state(JobState::Succeeded), "SUCCESS");
        assert_eq!(harbor_state(JobState::Failed), "FAILURE");
        let r = JobResponse {
            id: 7,
            task_id: "abc".into(),
            kind: "preheat".into(),
            state: "FAILURE".into(),
            created_at: rfc3339(std::time::UNIX_EPOCH),
            updated_at: rfc3339(std::time::UNIX_EPOCH),
            result: JobResult {
                job_states: vec![JobStateEntry {
                    state: "FAILURE".into(),
                    error: "image not found".into(),
                    results: vec![ClusterResult {
                        failure_tasks: vec![TaskOutcome {
                            url: "u".into(),
                            hostname: "h".into(),
                            ip: "1.2.3.4".into(),
                            description: "d".into(),
                        }],
                        ..Default::default()
                    }],
                }],
            },
        };
        // The fields and types Harbor's dragonflyJobResponse decodes.
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["id"].is_u64());
        assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["state"], "FAILURE");
        assert_eq!(v["result"]["job_states"][0]["error"], "image not found");
        let task = &v["result"]["job_states"][0]["results"][0]["failure_tasks"][0];
        assert_eq!(task["url"], "u");
        assert_eq!(task["hostname"], "h");
        assert_eq!(task["ip"], "1.2.3.4");
        assert_eq!(task["description"], "d");
        assert!(v["result"]["job_states"][0]["results"][0]["success_tasks"].as_array().unwrap().is_empty());
        assert_eq!(v["result"]["job_states"][0]["results"][0]["scheduler_cluster_id"], 0);
    }
}
