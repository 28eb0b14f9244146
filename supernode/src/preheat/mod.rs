//! Preheat: load every blob of an image into the supernode's cache before anyone pulls it, and
//! optionally onto chosen hosts.
//!
//! # Flow
//! 1. `POST /api/v1/preheat` (or Harbor's `POST /oapi/v1/jobs`) names an image. The manifest is
//!    resolved **before** the answer ([`manifest::resolve`]): the reference is parsed
//!    ([`reference`](mod@reference)), the registry is asked for the manifest with every supported `Accept` type,
//!    authenticating as it asks ([`registry`]: token auth, Basic auth, or the caller's headers),
//!    an OCI index / Docker manifest list is narrowed to the requested platform (default
//!    `linux/amd64`, or `all`) and each chosen platform's manifest is fetched. So a bad
//!    reference, an unknown image or platform, refused credentials, an unsupported media type or
//!    an unreachable registry come back at once as 400 / 404 / 403 / 415 / 502.
//! 2. The job is recorded (in memory, [`job::Preheats`]) and answered `202` with its id; it then
//!    runs in the background (`run`): each blob (configs and layers, each digest once) is
//!    fetched into the cache through [`crate::origin::start_fetch`], the coalescing point every
//!    peer registration goes through too: task id = blob digest, one origin fetch per task. A
//!    pull that arrives during the preheat joins the running fetch (its pieces are servable as
//!    they land) and a preheat that arrives during a pull joins that pull's fetch; nothing is
//!    fetched twice. Four blobs at a time; after the first failure no new blob starts.
//! 3. The blob URL is `{scheme}://{host}/v2/{name}/blobs/{digest}` (plain HTTP for
//!    `--insecure-registry` hosts), fetched with the `Authorization` the job obtained. That
//!    header lives only in the job's registry client and the origin request: it is not logged,
//!    not part of any id, never in API output.
//! 4. With `peers` (enrolled dfdaemons, by peer id or QUIC address `HOST:PORT`; never URLs),
//!    the supernode connects to each daemon over mutually authenticated QUIC (its certificate
//!    must chain to the cluster CA; the daemon accepts the request only from the supernode's
//!    certificate) and asks it to fetch every blob (`Warm`), i.e. from the swarm, which has them
//!    now; the job's registry credentials travel only in that connection (see [`warm`]). A peer
//!    failure fails the job (the caller asked for those hosts) and is shown per peer.
//! 5. Failure never leaves partial content servable: a failed origin fetch marks its cache entry
//!    failed and removes its file (see [`crate::origin`]); only verified blobs are complete.
//!
//! # Harbor
//! Harbor's "Dragonfly" P2P provider (goharbor/harbor `src/pkg/p2p/preheat/provider/dragonfly.go`)
//! talks to Dragonfly 2's manager open API. The supernode answers the same shapes ([`harbor`]),
//! so a Harbor instance configured with the supernode's HTTP address as its Dragonfly endpoint
//! preheats through Damselfly unchanged:
//!
//! | Harbor sends | supernode |
//! |---|---|
//! | `GET /healthy` | `200` |
//! | `POST /oapi/v1/jobs` `{"type":"preheat","args":{"type":"image","url":"https://harbor/v2/proj/app/manifests/tag","headers":{"Authorization":"Bearer ..."}}}` | the same job as `POST /api/v1/preheat` with `image` = the manifest URL (its scheme is used as given), the headers as registry credentials, platform `args.platform` or `linux/amd64`; answers `200` with `{"id": N, "task_id": "<job id>", "state": "PENDING", "created_at", "updated_at", ...}` |
//! | `GET /oapi/v1/jobs/{N}` | `state`: `PENDING` while pending or running, `SUCCESS`, `FAILURE`; `result.job_states[0]` holds `error` and `results[0].success_tasks` / `failure_tasks` (one per blob URL on the supernode, one per blob and peer for peers) |
//!
//! Harbor reads job ids as integers, so each job also has a sequence number (`N`). Unlike the
//! native API, a Harbor job whose image cannot be resolved is still created (`200`) and reads
//! `FAILURE` with the reason, as Dragonfly does: Harbor then shows the reason in its UI.
//! Malformed requests (not JSON, `type` not `preheat`, `args.type` not `image`, URL not a
//! manifest URL) get `400`. Other Dragonfly fields (`scope`, `scheduler_cluster_ids`,
//! `concurrent_count`, `timeout`, `filtered_query_params`) are accepted and ignored.

pub mod api;
pub mod harbor;
pub mod job;
pub mod manifest;
pub mod reference;
pub mod registry;
mod run;
pub mod warm;

use std::sync::Arc;

use axum::http::StatusCode;
use tracing::info;

pub use job::{JobState, JobView, Preheats};
use reference::{ImageRef, PlatformFilter};
use registry::{Credentials, RegistryClient};

use crate::Shared;

/// Why a preheat request was refused. Each variant maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreheatError {
    /// The request itself is wrong (reference syntax, platform, peer address): `400`.
    #[error("{0}")]
    BadRequest(String),
    /// The image, tag or platform does not exist at the registry: `404`.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials, or `--allow-origin` does not allow it: `403`.
    #[error("{0}")]
    Denied(String),
    /// A manifest media type (or digest algorithm) preheat cannot handle: `415`.
    #[error("{0}")]
    Unsupported(String),
    /// The registry is unreachable or misbehaved (5xx, malformed manifest): `502`; a retry
    /// later may succeed.
    #[error("{0}")]
    Registry(String),
}

impl PreheatError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Registry(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A validated preheat request.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The image.
    pub image: ImageRef,
    /// Which platforms of an index.
    pub platform: PlatformFilter,
    /// Registry credentials.
    pub creds: Credentials,
    /// dfdaemon API addresses (`HOST:PORT` or `http://HOST:PORT`) that fetch the image too.
    pub peers: Vec<String>,
}

/// Resolves the image, records the job and starts it. Errors are the request's (nothing is
/// recorded then).
pub async fn submit(shared: &Arc<Shared>, spec: JobSpec) -> Result<Arc<job::Job>, PreheatError> {
    let (job, client, resolved, peers) = prepare(shared, spec).await?;
    let urls = resolved.blobs.iter().map(|b| client.blob_url(&b.digest)).collect();
    job.set_plan(&resolved, urls, peers);
    info!(
        job = %job.id,
        image = %job.image,
        manifest = %resolved.manifest_digest,
        platforms = %resolved.platforms.join(","),
        blobs = resolved.blobs.len(),
        bytes = resolved.blobs.iter().map(|b| b.size).sum::<u64>(),
        "preheat job accepted"
    );
    tokio::spawn(run::run(shared.clone(), job.clone(), Arc::new(client)));
    Ok(job)
}

type Prepared = (Arc<job::Job>, RegistryClient, manifest::Resolved, Vec<(String, warm::PeerTarget)>);

async fn prepare(shared: &Arc<Shared>, spec: JobSpec) -> Result<Prepared, PreheatError> {
    let peers = spec
        .peers
        .iter()
        .map(|p| warm::parse_peer(p).map(|t| (p.trim().to_owned(), t)))
        .collect::<Result<Vec<_>, _>>()?;
    let insecure = shared.config.insecure_registries.iter().any(|h| h.eq_ignore_ascii_case(&spec.image.registry));
    let client = RegistryClient::new(shared.origins.clone(), &spec.image, insecure, spec.creds)?;
    // Checked again on every request (redirects, resolved addresses, the token realm).
    if let Err(refused) = shared.origins.policy().check_url(client.base(), None) {
        return Err(PreheatError::Denied(format!("registry {}: {refused}", spec.image.registry)));
    }
    let resolved = manifest::resolve(&client, &spec.image, &spec.platform).await?;
    let job = shared.preheat.create(spec.image.to_string(), spec.platform.to_string());
    Ok((job, client, resolved, peers))
}

/// Records a job that failed before it could start (Harbor wants a job to poll even then).
pub fn record_failure(shared: &Shared, image: String, platform: String, error: &PreheatError) -> Arc<job::Job> {
    let job = shared.preheat.create(image, platform);
    job.finish(Some(error.to_string()));
    job
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(PreheatError::BadRequest(String::new()).status(), 400);
        assert_eq!(PreheatError::NotFound(String::new()).status(), 404);
        assert_eq!(PreheatError::Denied(String::new()).status(), 403);
        assert_eq!(PreheatError::Unsupported(String::new()).status(), 415);
        assert_eq!(PreheatError::Registry(String::new()).status(), 502);
    }
}
