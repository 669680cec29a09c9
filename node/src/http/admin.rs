//! The JSON admin API under `/api/v1` (documented in `node/openapi.yaml`): cluster status,
//! topics and groups. The CLI's `--output json` prints these same shapes.
//!
//! # Design notes
//! - Handlers call the node's own [`Api`] (the `BrokerApi` implementation), so any node
//!   answers: reads come from its metadata replica, writes are forwarded to the metadata leader
//!   and group operations to the partitions' leaders, all within the API's handler deadline.
//! - Every error is `{"error": {"kind": "...", "message": "..."}}` with a status code that fits
//!   it (see [`status_of`]); a malformed body is a 400 in the same shape, never axum's plain text.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tarpc::context;
use taskbroker_client::proto::{ApiError, BrokerApi, TopicSpec};

use super::views;
use crate::api::Api;

/// `POST /api/v1/topics`: the topic's name and its settings (absent = the broker's default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopicRequest {
    /// Topic name.
    pub name: String,
    /// Settings.
    #[serde(flatten)]
    pub spec: TopicSpec,
}

/// `POST /api/v1/topics/{name}/partitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPartitionsRequest {
    /// Partitions to add.
    pub count: u32,
}

/// Answer of `DELETE /api/v1/topics/{name}` (and `taskbroker topic delete --output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDeleted {
    /// The topic.
    pub topic: String,
    /// Always true.
    pub deleted: bool,
}

/// Answer of `POST .../groups/{group}/requeue` (and `taskbroker group requeue --output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requeued {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Dead letters moved back to ready.
    pub requeued: u64,
}

/// The error document of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable kind (`unknown_topic`, `topic_conflict`, `invalid_argument`,
    /// `unavailable`, ...).
    pub kind: String,
    /// For humans.
    pub message: String,
}

/// The HTTP status and kind of an API error.
pub fn status_of(e: &ApiError) -> (StatusCode, &'static str) {
    match e {
        ApiError::UnknownTopic { .. } => (StatusCode::NOT_FOUND, "unknown_topic"),
        ApiError::UnknownPartition { .. } => (StatusCode::NOT_FOUND, "unknown_partition"),
        ApiError::UnknownGroup { .. } => (StatusCode::NOT_FOUND, "unknown_group"),
        ApiError::TopicConflict { .. } => (StatusCode::CONFLICT, "topic_conflict"),
        ApiError::StaleLease { .. } => (StatusCode::CONFLICT, "stale_lease"),
        ApiError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
        ApiError::InvalidBatch { .. } => (StatusCode::BAD_REQUEST, "invalid_batch"),
        ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ApiError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
        ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        ApiError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// An error answer.
pub struct HttpError(StatusCode, ErrorBody);

impl HttpError {
    /// A 400 with kind `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        HttpError(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: ErrorDetail {
                    kind: "invalid_argument".into(),
                    message: message.into(),
                },
            },
        )
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        let (status, kind) = status_of(&e);
        HttpError(
            status,
            ErrorBody {
                error: ErrorDetail {
                    kind: kind.into(),
                    message: e.to_string(),
                },
            },
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

type Answer<T> = Result<Json<T>, HttpError>;

fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| HttpError::invalid(format!("bad JSON body: {e}")))
}

async fn cluster(State(api): State<Api>) -> Answer<taskbroker_client::ClusterStatus> {
    Ok(Json(api.cluster_status(context::current()).await?))
}

async fn list_topics(State(api): State<Api>) -> Answer<Vec<taskbroker_client::TopicMeta>> {
    Ok(Json(
        api.metadata(context::current(), Vec::new()).await?.topics,
    ))
}

async fn describe_topic(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Answer<taskbroker_client::TopicMeta> {
    let meta = api.metadata(context::current(), vec![name.clone()]).await?;
    meta.topics
        .into_iter()
        .find(|t| t.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::UnknownTopic { topic: name }.into())
}

async fn create_topic(
    State(api): State<Api>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<taskbroker_client::TopicMeta>), HttpError> {
    let req: CreateTopicRequest = body(&bytes)?;
    if req.name.is_empty() {
        return Err(HttpError::invalid("the topic name is empty"));
    }
    let t = api
        .create_topic(context::current(), req.name, req.spec)
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn delete_topic(State(api): State<Api>, Path(name): Path<String>) -> Answer<TopicDeleted> {
    api.delete_topic(context::current(), name.clone()).await?;
    Ok(Json(TopicDeleted {
        topic: name,
        deleted: true,
    }))
}

async fn add_partitions(
    State(api): State<Api>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer<taskbroker_client::TopicMeta> {
    let req: AddPartitionsRequest = body(&bytes)?;
    if req.count == 0 {
        return Err(HttpError::invalid("count must be at least 1"));
    }
    Ok(Json(
        api.add_partitions(context::current(), name, req.count)
            .await?,
    ))
}

async fn describe_group(
    State(api): State<Api>,
    Path((topic, group)): Path<(String, String)>,
) -> Answer<taskbroker_client::GroupDescription> {
    Ok(Json(
        api.describe_group(context::current(), topic, group).await?,
    ))
}

async fn requeue(
    State(api): State<Api>,
    Path((topic, group)): Path<(String, String)>,
) -> Answer<Requeued> {
    let requeued = api
        .requeue_dead_letters(context::current(), topic.clone(), group.clone())
        .await?;
    Ok(Json(Requeued {
        topic,
        group,
        requeued,
    }))
}

async fn node(State(api): State<Api>) -> Json<views::NodeStatus> {
    Json(views::node_status(&api))
}

async fn nodes(State(api): State<Api>) -> Answer<Vec<views::NodeEntry>> {
    Ok(Json(views::cluster_nodes(&api).await?))
}

/// One entry of `GET /api/v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Delivery mode.
    pub mode: taskbroker_client::proto::GroupMode,
}

async fn groups(State(api): State<Api>) -> Json<Vec<GroupEntry>> {
    Json(
        views::all_groups(&api)
            .into_iter()
            .map(|(topic, group, mode)| GroupEntry { topic, group, mode })
            .collect(),
    )
}

/// Query of `GET .../partitions/{p}/tasks`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct BrowseQuery {
    /// First offset (default 0: the oldest retained).
    pub from: Option<u64>,
    /// Most tasks (default 50, at most [`views::BROWSE_TASKS_MAX`]).
    pub limit: Option<u32>,
}

/// Default page size of a browse request.
pub const BROWSE_LIMIT_DEFAULT: u32 = 50;

/// Whether another node forwarded this request (answer locally, never forward again).
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(super::peer::FORWARDED_HEADER)
}

async fn browse(
    State(api): State<Api>,
    Path((name, partition)): Path<(String, u32)>,
    headers: HeaderMap,
    query: Result<Query<BrowseQuery>, QueryRejection>,
) -> Answer<views::BrowsePage> {
    let Query(q) = query.map_err(|e| HttpError::invalid(e.body_text()))?;
    Ok(Json(
        views::browse(
            &api,
            &name,
            partition,
            q.from.unwrap_or(0),
            q.limit.unwrap_or(BROWSE_LIMIT_DEFAULT),
            is_forwarded(&headers),
        )
        .await?,
    ))
}

async fn produce_task(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<views::ProducedTask>), HttpError> {
    let req: views::ProduceTaskRequest = body(&bytes)?;
    let t = views::produce_task(&api, &name, req, is_forwarded(&headers)).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

async fn not_found() -> HttpError {
    HttpError(
        StatusCode::NOT_FOUND,
        ErrorBody {
            error: ErrorDetail {
                kind: "not_found".into(),
                message: "no such endpoint (see node/openapi.yaml)".into(),
            },
        },
    )
}

/// The `/api/v1` routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/node", get(node))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/groups", get(groups))
        .route(
            "/api/v1/topics/{name}/partitions/{partition}/tasks",
            get(browse),
        )
        .route("/api/v1/topics/{name}/tasks", post(produce_task))
        .route("/api/v1/topics", get(list_topics).post(create_topic))
        .route(
            "/api/v1/topics/{name}",
            get(describe_topic).delete(delete_topic),
        )
        .route("/api/v1/topics/{name}/partitions", post(add_partitions))
        .route("/api/v1/topics/{name}/groups/{group}", get(describe_group))
        .route(
            "/api/v1/topics/{name}/groups/{group}/requeue",
            post(requeue),
        )
        .fallback(not_found)
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_flattens_the_spec() {
        let r: CreateTopicRequest =
            serde_json::from_str(r#"{"name":"t","partitions":4,"max_attempts":3}"#).expect("parse");
        assert_eq!(r.name, "t");
        assert_eq!(r.spec.partitions, Some(4));
        assert_eq!(r.spec.max_attempts, Some(3));
        assert_eq!(r.spec.replication_factor, None);
    }

    /// `(path, methods)` of every `.route(...)` in this file's router.
    fn routes_in_source() -> Vec<(String, Vec<String>)> {
        let src = include_str!("admin.rs");
        let router = &src[src.find("pub fn router").expect("router fn")..];
        let router = &router[..router.find("#[cfg(test)]").expect("tests")];
        let mut out = Vec::new();
        for part in router.split(".route(").skip(1) {
            let path = part.split('"').nth(1).expect("route path").to_string();
            let methods = ["get", "post", "delete"]
                .iter()
                .filter(|m| part.contains(&format!("{m}(")))
                .map(|m| m.to_string())
                .collect();
            out.push((path, methods));
        }
        out
    }

    /// `(path, methods)` of every path in `node/openapi.yaml`.
    fn routes_in_openapi() -> Vec<(String, Vec<String>)> {
        let doc = include_str!("../../openapi.yaml");
        let paths = &doc
            [doc.find("\npaths:").expect("paths")..doc.find("\ncomponents:").expect("components")];
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for line in paths.lines() {
            if let Some(p) = line.strip_prefix("  /") {
                out.push((format!("/{}", p.trim_end_matches(':')), Vec::new()));
            } else if let Some(m) = line.strip_prefix("    ") {
                let m = m.trim_end_matches(':');
                if ["get", "post", "delete"].contains(&m) {
                    out.last_mut().expect("a path").1.push(m.to_string());
                }
            }
        }
        out
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let mut code = routes_in_source();
        let mut doc = routes_in_openapi();
        for v in [&mut code, &mut doc] {
            for (_, m) in v.iter_mut() {
                m.sort();
            }
            v.sort();
        }
        assert!(code.len() >= 11, "{code:?}");
        assert_eq!(code, doc, "node/openapi.yaml and the admin router disagree");
    }

    #[test]
    fn errors_map_to_fitting_statuses() {
        let cases = [
            (ApiError::UnknownTopic { topic: "t".into() }, 404),
            (ApiError::TopicConflict { topic: "t".into() }, 409),
            (ApiError::InvalidArgument { reason: "x".into() }, 400),
            (ApiError::Unavailable { reason: "x".into() }, 503),
        ];
        for (e, code) in cases {
            assert_eq!(status_of(&e).0.as_u16(), code, "{e:?}");
        }
    }
}
