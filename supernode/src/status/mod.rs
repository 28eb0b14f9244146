//! The status page: what the swarm is doing, for people (ARCHITECTURE.md, "Trust and access").
//!
//! - `GET /status`: totals (origin bytes, bytes delivered to peers, offload, rates, tasks,
//!   peers, cache), a chart of delivered vs origin bytes per second over the last ten minutes,
//!   the tasks (size, progress, origin offload) and the hosts (share of uploads and downloads,
//!   live rates, failures, bans).
//! - `GET /status/task/{id}`: one task and each host's share of its pieces and bytes.
//! - `GET /api/v1/status` and `GET /api/v1/status/task/{id}`: the same data as JSON.
//! - `GET /status/app.js`: the little script that refreshes the page every 2 s.
//!
//! Server-rendered HTML with inline SVG and CSS, no build step. Like every endpoint but the
//! probes and metrics, it needs the API token: a browser opens `/status?token=TOKEN` once and
//! is kept signed in by a cookie ([`crate::auth`]). The page shows ids, addresses and numbers,
//! never URLs (they may carry signed query strings) or credentials, and escapes everything it
//! prints.
//!
//! The numbers come from the scheduler (tasks, pieces, peers, bad peers), the metrics (origin
//! bytes, cache), and [`stats::Stats`], which the scheduler's shell feeds with every event and
//! action to attribute delivered bytes to uploaders and downloaders.

mod chart;
mod html;
pub mod model;
mod overview;
pub mod stats;
mod task;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use damselfly_types::id::TaskId;

use crate::Shared;
use damselfly_scheduler::Scheduler;

pub use stats::Stats;

/// What the pages may load: their own script, inline styles (bars are sized by `style`), and
/// nothing from anywhere else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("app.js");

/// The status routes (the API token middleware is applied by [`crate::http::router`]).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/status", get(overview_page))
        .route("/status/task/{id}", get(task_page))
        .route("/status/app.js", get(script))
        .route("/api/v1/status", get(overview_json))
        .route("/api/v1/status/task/{id}", get(task_json))
}

async fn overview_page(State(shared): State<Arc<Shared>>) -> Response {
    html(StatusCode::OK, overview::render(&model::overview(&shared)))
}

async fn task_page(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match known_task(&shared, &id) {
        Some(detail) => html(StatusCode::OK, task::render(&detail)),
        None => html(StatusCode::NOT_FOUND, task::render_unknown(&id)),
    }
}

async fn overview_json(State(shared): State<Arc<Shared>>) -> Response {
    no_store(Json(model::overview(&shared)).into_response())
}

async fn task_json(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match known_task(&shared, &id) {
        Some(detail) => no_store(Json(detail).into_response()),
        None => {
            let body = serde_json::json!({ "error": "the scheduler does not know this task" });
            no_store((StatusCode::NOT_FOUND, Json(body)).into_response())
        }
    }
}

fn known_task(shared: &Shared, id: &str) -> Option<model::TaskDetail> {
    if !TaskId::is_valid(id) {
        return None;
    }
    model::task(shared, &TaskId::new(id))
}

async fn script() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The status page's access to the supernode's core, kept here rather than in `lib.rs` so that
/// the page stays one module (a child module may reach the core's private fields).
impl Shared {
    /// Runs `f` on the scheduler and the status counters, with the scheduler's clock, under the
    /// core's lock (the status page's views: one consistent snapshot).
    pub fn with_status<R>(&self, f: impl FnOnce(Duration, &Scheduler, &Stats) -> R) -> R {
        let now = self.started.elapsed();
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        f(now, &core.scheduler, &core.stats)
    }

    /// Records the bandwidth limits `peer` registered with (shown in its host row).
    pub fn record_host_limits(&self, peer: &damselfly_types::id::PeerId, limits: Option<&damselfly_proto::Limits>) {
        let Some(l) = limits else { return };
        let limits = stats::HostLimits { download: l.download_rate, upload: l.upload_rate, origin: l.origin_rate };
        let now = self.started.elapsed();
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.stats.host_limits(now, peer, limits);
    }

    /// Counts `bytes` that `task`'s origin fetch landed (the status page's origin bytes per
    /// task; a task restored from the cache after a restart cost none).
    pub fn count_origin_bytes(&self, task: &TaskId, bytes: u64) {
        let now = self.started.elapsed();
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.stats.origin(now, task, bytes);
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
