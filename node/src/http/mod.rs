//! HTTP: `/health` (process up), `/ready` (member of a cluster with a metadata leader),
//! `/metrics` (Prometheus text format) and the JSON admin API under `/api/v1` ([`admin`],
//! documented in `node/openapi.yaml`).

pub mod admin;
pub mod metrics;
pub mod peer;
pub mod views;

pub use metrics::Metrics;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use taskbroker_raft::{GroupId, RaftNode};

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The multi-raft host.
    pub raft: Arc<RaftNode>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This node's id.
    pub node_id: u64,
    /// The node's client API, which the admin API calls.
    pub api: crate::api::Api,
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    match s.raft.group(GroupId::METADATA).and_then(|g| g.leader()) {
        Some(leader) => (
            StatusCode::OK,
            format!("ready: metadata leader is node {leader}\n"),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no metadata leader\n".to_string(),
        ),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(&s.raft, s.api.now_ms()),
    )
}

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) {
    let admin = admin::router(state.api.clone());
    let api = state.api.clone();
    let (state_metrics, state_raft) = (state.metrics.clone(), state.raft.clone());
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(crate::ui::router(api))
        .merge(admin);
    // The sampler lives as long as the server (both stop when this task is aborted).
    let r = tokio::select! {
        r = std::future::IntoFuture::into_future(axum::serve(listener, app)) => r,
        () = metrics::sample_loop(state_metrics, state_raft) => Ok(()),
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "http server stopped");
    }
}
