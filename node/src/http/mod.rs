//! HTTP: `/health` (process up), `/ready` (member of a cluster with a metadata leader),
//! `/metrics` (Prometheus text format) and the JSON admin API under `/api/v1` ([`admin`],
//! documented in `node/openapi.yaml`).

pub mod admin;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use taskbroker_raft::{GroupId, RaftNode};
use taskbroker_storage::io::BackendKind;

/// The node's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    /// Open client and Raft connections.
    pub connections_open: IntGauge,
    /// Errors by kind.
    pub errors: IntCounterVec,
    /// 1 for the storage backend in use.
    pub storage_backend: IntGaugeVec,
    /// Per group: 1 if this node leads it.
    pub group_leader: IntGaugeVec,
    /// Per group: current term.
    pub group_term: IntGaugeVec,
    /// Per group: commit index.
    pub group_commit_index: IntGaugeVec,
    /// Per group: applied index.
    pub group_applied_index: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric; `backend` is the storage backend in use.
    pub fn new(backend: BackendKind) -> Metrics {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let connections_open = IntGauge::new(
            "taskbroker_connections_open",
            "Open connections (client and Raft)",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(connections_open.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let errors = IntCounterVec::new(
            Opts::new("taskbroker_errors_total", "Errors by kind"),
            &["kind"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(errors.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let storage_backend = gauge_vec(
            "taskbroker_storage_backend",
            "1 for the storage backend in use",
            &["backend"],
        );
        storage_backend
            .with_label_values(&[&backend.to_string()])
            .set(1);
        Metrics {
            connections_open,
            errors,
            storage_backend,
            group_leader: gauge_vec(
                "taskbroker_raft_leader",
                "1 if this node leads the group",
                &["group"],
            ),
            group_term: gauge_vec(
                "taskbroker_raft_term",
                "Current Raft term of the group",
                &["group"],
            ),
            group_commit_index: gauge_vec(
                "taskbroker_raft_commit_index",
                "Commit index of the group",
                &["group"],
            ),
            group_applied_index: gauge_vec(
                "taskbroker_raft_applied_index",
                "Applied index of the group",
                &["group"],
            ),
            registry,
        }
    }

    fn refresh(&self, raft: &RaftNode) {
        for id in raft.group_ids() {
            let Some(g) = raft.group(id) else { continue };
            let m = g.metrics();
            let label = id.to_string();
            let l = [label.as_str()];
            self.group_leader
                .with_label_values(&l)
                .set(i64::from(m.is_leader));
            self.group_term.with_label_values(&l).set(m.term as i64);
            self.group_commit_index
                .with_label_values(&l)
                .set(m.commit_index.map_or(-1, |i| i as i64));
            self.group_applied_index
                .with_label_values(&l)
                .set(m.applied_index.map_or(-1, |i| i as i64));
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self, raft: &RaftNode) -> String {
        self.refresh(raft);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

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
        s.metrics.render(&s.raft),
    )
}

/// Serves HTTP on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState) {
    let admin = admin::router(state.api.clone());
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(admin);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}
