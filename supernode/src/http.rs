//! The supernode's HTTP API: `/healthz`, `/metrics`, `/api/v1/tasks`, `/api/v1/peers`, the
//! preheat routes ([`crate::preheat::api::routes`]: `/api/v1/preheat`, Harbor's `/oapi/v1/jobs`)
//! and the status page ([`crate::status::routes`]: `/status`, `/api/v1/status`).
//!
//! Every route but `/healthz`, `/healthy` and `/metrics` requires the API token
//! ([`crate::auth::require_api_token`], applied to the whole router, unknown paths included).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::cache::CacheState;
use crate::{Shared, ShutdownSignal};

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/peers", get(peers))
        .merge(crate::preheat::api::routes())
        .merge(crate::status::routes())
        .layer(axum::middleware::from_fn_with_state(shared.clone(), crate::auth::require_api_token))
        .with_state(shared)
}

/// Serves the API until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, mut shutdown: ShutdownSignal) {
    let app = router(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            damselfly_net::shutdown::requested(&mut shutdown).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.render())
}

/// One task as the API shows it. No URL is shown: URLs may carry signed query strings.
#[derive(Serialize)]
struct TaskView {
    id: String,
    state: Option<CacheState>,
    #[serde(flatten)]
    summary: damselfly_scheduler::TaskSummary,
}

async fn tasks(State(shared): State<Arc<Shared>>) -> Json<Vec<TaskView>> {
    let views = shared.with_scheduler(|s| {
        s.tasks().into_iter().filter_map(|id| s.task_summary(&id).map(|summary| (id, summary))).collect::<Vec<_>>()
    });
    Json(
        views
            .into_iter()
            .map(|(id, summary)| TaskView {
                state: shared.cache.get(&id).map(|t| t.state()),
                id: id.to_string(),
                summary,
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct PeersView {
    connected: usize,
    bad: Vec<BadPeer>,
}

#[derive(Serialize)]
struct BadPeer {
    id: String,
    strikes: u32,
}

async fn peers(State(shared): State<Arc<Shared>>) -> Json<PeersView> {
    let (connected, bad) = shared.with_scheduler(|s| (s.peer_count(), s.bad_peers()));
    Json(PeersView {
        connected,
        bad: bad.into_iter().map(|(id, strikes)| BadPeer { id: id.to_string(), strikes }).collect(),
    })
}
