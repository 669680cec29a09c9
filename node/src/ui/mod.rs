//! The built-in web UI, served by every node's HTTP port under `/ui` (`/` redirects there).
//!
//! Pages: overview (nodes, health, roles, disk use, cluster rates), topics (list, create),
//! topic detail (partitions, replicas, leaders, lag, sizes, offsets; add partitions; delete),
//! browse (tasks by partition and offset range, payload as text, pretty JSON or hex, state
//! per group; produce a test task), consumer groups (list; per-partition counters, requeue,
//! live charts).
//!
//! # Design notes
//! - Server-rendered HTML; every action is a plain HTML form (POST, then a redirect with a
//!   message), so the UI works without JavaScript. The one small script and stylesheet
//!   (`assets/`) are embedded with `include_str!` and add confirmations and live charts that
//!   poll the JSON admin API.
//! - Pages read through the same functions as the admin API ([`crate::http::views`] and the
//!   node's [`Api`]), so a page served by any node shows the whole cluster: metadata writes go
//!   to the metadata leader, group and browse reads to the partitions' leaders.
//! - Every value shown is HTML-escaped ([`esc`]); every path segment built into a link is
//!   URL-escaped ([`url_escape`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Form, Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tarpc::context;
use taskbroker_client::proto::{ApiError, BrokerApi, GroupMode, TopicMeta, TopicSpec};

use crate::api::Api;
use crate::http::views::{self, NodeEntry, ProduceTaskRequest};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// HTML-escapes `s`.
///
/// ```
/// assert_eq!(taskbroker_node::ui::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
/// ```
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `s` for one path segment or query value (RFC 3986 unreserved kept).
///
/// ```
/// assert_eq!(taskbroker_node::ui::url_escape("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
/// ```
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Human-readable bytes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ms_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Query parameters every page understands: a message to show after an action.
#[derive(Debug, Default, Deserialize)]
pub struct Flash {
    /// Success message.
    pub msg: Option<String>,
    /// Error message.
    pub err: Option<String>,
}

fn flash_html(f: &Flash) -> String {
    let mut s = String::new();
    if let Some(m) = &f.msg {
        let _ = write!(s, r#"<div class="flash ok" role="status">{}</div>"#, esc(m));
    }
    if let Some(e) = &f.err {
        let _ = write!(s, r#"<div class="flash bad" role="alert">{}</div>"#, esc(e));
    }
    s
}

fn page(api: &Api, title: &str, active: &str, body: &str) -> Html<String> {
    let nav = [
        ("overview", "/ui", "Overview"),
        ("topics", "/ui/topics", "Topics"),
        ("groups", "/ui/groups", "Consumer groups"),
    ]
    .iter()
    .map(|(key, href, label)| {
        format!(
            r#"<a href="{href}"{}>{label}</a>"#,
            if *key == active {
                r#" class="active""#
            } else {
                ""
            }
        )
    })
    .collect::<String>();
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · taskbroker</title>
<link rel="stylesheet" href="/ui/assets/app.css">
<script src="/ui/assets/app.js" defer></script>
</head><body>
<header class="top"><span class="brand">taskbroker</span><nav>{nav}</nav>
<span class="served">served by node {node}</span></header>
<main>{body}</main>
</body></html>"#,
        title = esc(title),
        node = api.settings().node_id,
    ))
}

fn error_page(api: &Api, title: &str, active: &str, e: &ApiError) -> Response {
    let (status, kind) = crate::http::admin::status_of(e);
    let body = format!(
        r#"<h1>{}</h1><div class="flash bad" role="alert">{}: {}</div>"#,
        esc(title),
        kind,
        esc(&e.to_string())
    );
    (status, page(api, title, active, &body)).into_response()
}

fn redirect_with(path: &str, key: &str, text: &str) -> Response {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}{key}={}", url_escape(text))).into_response()
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
}

async fn root() -> Redirect {
    Redirect::to("/ui")
}

async fn topics_meta(api: &Api) -> Result<Vec<TopicMeta>, ApiError> {
    Ok(api
        .clone()
        .metadata(context::current(), Vec::new())
        .await?
        .topics)
}

/// Leader replica status per (topic, partition), and all replica statuses, from the nodes.
type Replicas = BTreeMap<(String, u32), Vec<(u64, views::ReplicaStatus)>>;

fn replicas_of(nodes: &[NodeEntry]) -> Replicas {
    let mut out: Replicas = BTreeMap::new();
    for n in nodes {
        let Some(s) = &n.status else { continue };
        for p in &s.partitions {
            out.entry((p.topic.clone(), p.partition))
                .or_default()
                .push((n.id, p.clone()));
        }
    }
    out
}

fn leader_replica<'a>(
    r: &'a Replicas,
    topic: &str,
    partition: u32,
) -> Option<&'a views::ReplicaStatus> {
    r.get(&(topic.to_string(), partition))?
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.is_leader)
}

async fn overview(State(api): State<Api>, Query(f): Query<Flash>) -> Response {
    let nodes = match views::cluster_nodes(&api).await {
        Ok(n) => n,
        Err(e) => return error_page(&api, "Overview", "overview", &e),
    };
    let topics = topics_meta(&api).await.unwrap_or_default();
    let controller = api.meta().leader();
    let up = nodes.iter().filter(|n| n.up).count();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let leaderless = topics
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader.is_none())
        .count();
    let disk: u64 = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .map(|s| s.disk_bytes)
        .sum();
    let mut b = String::new();
    b.push_str("<h1>Cluster overview</h1>");
    b.push_str(&flash_html(&f));
    let _ = write!(
        b,
        r#"<div class="cards">
<div class="card"><div class="label">Nodes up</div><div class="value" data-live="nodes-up">{up} / {total}</div></div>
<div class="card"><div class="label">Metadata leader</div><div class="value">{ctl}</div></div>
<div class="card"><div class="label">Topics</div><div class="value">{nt}</div></div>
<div class="card"><div class="label">Partitions</div><div class="value">{partitions}{ll}</div></div>
<div class="card"><div class="label">Disk used</div><div class="value">{disk}</div></div>
<div class="card"><div class="label">Produced</div><div class="value" data-live="produce-rate">–</div></div>
<div class="card"><div class="label">Acked</div><div class="value" data-live="ack-rate">–</div></div>
</div>"#,
        total = nodes.len(),
        ctl = controller.map_or("none".to_string(), |c| format!("node {c}")),
        nt = topics.len(),
        ll = if leaderless > 0 {
            format!(r#" <span class="pill bad">{leaderless} without leader</span>"#)
        } else {
            String::new()
        },
        disk = bytes(disk),
    );
    b.push_str(r#"<h2>Nodes</h2><div class="panel"><table><thead><tr><th>Node</th><th>Client address</th><th>HTTP</th><th>Health</th><th>Role</th><th class="num">Partitions led</th><th class="num">Replicas</th><th class="num">Disk used</th><th>Storage</th></tr></thead><tbody>"#);
    for n in &nodes {
        let health = if n.up {
            match &n.status {
                Some(s) if s.ready => r#"<span class="pill ok">up</span>"#.to_string(),
                _ => r#"<span class="pill warn">up, not ready</span>"#.to_string(),
            }
        } else {
            format!(
                r#"<span class="pill bad" title="{}">down</span> <span class="muted">{}</span>"#,
                esc(n.error.as_deref().unwrap_or("")),
                esc(n.error.as_deref().unwrap_or(""))
            )
        };
        let role = if controller == Some(n.id) {
            r#"<span class="pill info">metadata leader</span>"#
        } else {
            "member"
        };
        let http = match &n.http_addr {
            Some(h) => format!(r#"<a href="http://{0}/ui">{0}</a>"#, esc(h)),
            None => "–".into(),
        };
        let (led, replicas, disk, backend) = match &n.status {
            Some(s) => (
                s.partitions_led.to_string(),
                s.replicas.to_string(),
                bytes(s.disk_bytes),
                esc(&s.backend),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let _ = write!(
            b,
            r#"<tr><td>node {id}</td><td class="mono">{addr}</td><td class="mono">{http}</td><td>{health}</td><td>{role}</td><td class="num">{led}</td><td class="num">{replicas}</td><td class="num">{disk}</td><td>{backend}</td></tr>"#,
            id = n.id,
            addr = esc(&n.addr),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str(r#"<h2>Cluster rates</h2><div class="panel" data-live-kind="overview"><canvas class="chart" aria-label="produce and ack rates"></canvas><div class="legend"><span style="--c:#2f6fde">produced/s</span><span style="--c:#1a7f46">acked/s</span><span class="muted" data-live-status>loading…</span></div></div>"#);
    page(&api, "Overview", "overview", &b).into_response()
}

fn topic_form() -> String {
    r#"<h2>Create a topic</h2><div class="panel"><form class="grid" method="post" action="/ui/topics" id="create-topic">
<label>Name<input name="name" required pattern="[A-Za-z0-9._\-]+" placeholder="jobs"></label>
<label>Partitions<input name="partitions" type="number" min="1" placeholder="12"></label>
<label>Replication factor<input name="replication_factor" type="number" min="1" placeholder="min(3, nodes)"></label>
<label>Visibility timeout (ms)<input name="visibility_timeout_ms" type="number" min="1" placeholder="30000"></label>
<label>Max attempts (0 = unlimited)<input name="max_attempts" type="number" min="0" placeholder="5"></label>
<label>Retention (ms)<input name="retention_ms" type="number" min="1" placeholder="none"></label>
<label>Retention (bytes per partition)<input name="retention_bytes" type="number" min="1" placeholder="none"></label>
<label>Dead-letter topic<input name="dead_letter_topic" placeholder="none"></label>
<div><button type="submit">Create topic</button></div>
</form></div>"#
        .to_string()
}

async fn topics(State(api): State<Api>, Query(f): Query<Flash>) -> Response {
    let topics = match topics_meta(&api).await {
        Ok(t) => t,
        Err(e) => return error_page(&api, "Topics", "topics", &e),
    };
    let nodes = views::cluster_nodes(&api).await.unwrap_or_default();
    let reps = replicas_of(&nodes);
    let mut b = String::from("<h1>Topics</h1>");
    b.push_str(&flash_html(&f));
    b.push_str(r#"<div class="panel" data-live-kind="topics"><table id="topics"><thead><tr><th>Topic</th><th class="num">Partitions</th><th class="num">Replication</th><th class="num">Retained tasks</th><th class="num">Size</th><th class="num">Produce rate</th><th>Settings</th></tr></thead><tbody>"#);
    if topics.is_empty() {
        b.push_str(
            r#"<tr><td colspan="7" class="muted">No topics yet: create one below.</td></tr>"#,
        );
    }
    for t in &topics {
        let (mut size, mut retained, mut known) = (0u64, 0u64, 0usize);
        for p in &t.partitions {
            if let Some(r) = leader_replica(&reps, &t.name, p.partition) {
                size += r.log_bytes;
                retained += r.high_watermark.saturating_sub(r.log_start_offset);
                known += 1;
            }
        }
        let partial = if known < t.partitions.len() {
            r#" <span class="pill warn" title="some partition leaders did not answer">partial</span>"#
        } else {
            ""
        };
        let _ = write!(
            b,
            r#"<tr><td><a href="/ui/topics/{u}">{n}</a></td><td class="num">{np}</td><td class="num">{rf}</td><td class="num">{retained}{partial}</td><td class="num">{size}</td><td class="num" data-topic-rate="{n}">–</td><td class="muted">visibility {vis}, max attempts {ma}{dlt}</td></tr>"#,
            u = url_escape(&t.name),
            n = esc(&t.name),
            np = t.partitions.len(),
            rf = t.replication_factor,
            size = bytes(size),
            vis = ms_text(t.visibility_timeout_ms),
            ma = t.max_attempts,
            dlt = t
                .dead_letter_topic
                .as_ref()
                .map(|d| format!(", dead letters to {}", esc(d)))
                .unwrap_or_default(),
        );
    }
    b.push_str("</tbody></table></div>");
    b.push_str(&topic_form());
    page(&api, "Topics", "topics", &b).into_response()
}

/// The create-topic form (every field optional but the name).
#[derive(Debug, Default, Deserialize)]
pub struct CreateTopicForm {
    /// Name.
    pub name: String,
    /// Numbers arrive as text; empty = default.
    pub partitions: Option<String>,
    /// See [`TopicSpec`].
    pub replication_factor: Option<String>,
    /// See [`TopicSpec`].
    pub visibility_timeout_ms: Option<String>,
    /// See [`TopicSpec`].
    pub max_attempts: Option<String>,
    /// See [`TopicSpec`].
    pub retention_ms: Option<String>,
    /// See [`TopicSpec`].
    pub retention_bytes: Option<String>,
    /// See [`TopicSpec`].
    pub dead_letter_topic: Option<String>,
}

fn opt_num<T: std::str::FromStr>(field: &str, v: &Option<String>) -> Result<Option<T>, String> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{field}: {s:?} is not a valid number")),
    }
}

impl CreateTopicForm {
    fn spec(&self) -> Result<TopicSpec, String> {
        Ok(TopicSpec {
            partitions: opt_num("partitions", &self.partitions)?,
            replication_factor: opt_num("replication factor", &self.replication_factor)?,
            retention_ms: opt_num("retention ms", &self.retention_ms)?,
            retention_bytes: opt_num("retention bytes", &self.retention_bytes)?,
            visibility_timeout_ms: opt_num("visibility timeout", &self.visibility_timeout_ms)?,
            max_attempts: opt_num("max attempts", &self.max_attempts)?,
            dead_letter_topic: self
                .dead_letter_topic
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }
}

async fn create_topic(State(api): State<Api>, Form(form): Form<CreateTopicForm>) -> Response {
    let name = form.name.trim().to_string();
    if name.is_empty() {
        return redirect_with("/ui/topics", "err", "the topic name is empty");
    }
    let spec = match form.spec() {
        Ok(s) => s,
        Err(e) => return redirect_with("/ui/topics", "err", &e),
    };
    match api
        .clone()
        .create_topic(context::current(), name.clone(), spec)
        .await
    {
        Ok(t) => redirect_with(
            &format!("/ui/topics/{}", url_escape(&t.name)),
            "msg",
            &format!("topic {} created", t.name),
        ),
        Err(e) => redirect_with("/ui/topics", "err", &format!("create {name}: {e}")),
    }
}

/// One topic's metadata, or `UnknownTopic`.
async fn describe_topic(api: &Api, name: &str) -> Result<TopicMeta, ApiError> {
    api.clone()
        .metadata(context::current(), vec![name.to_string()])
        .await?
        .topics
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ApiError::UnknownTopic {
            topic: name.to_string(),
        })
}

async fn topic_detail(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(f): Query<Flash>,
) -> Response {
    let t = match describe_topic(&api, &name).await {
        Ok(t) => t,
        Err(e) => return error_page(&api, &format!("Topic {name}"), "topics", &e),
    };
    let nodes = views::cluster_nodes(&api).await.unwrap_or_default();
    let reps = replicas_of(&nodes);
    let u = url_escape(&t.name);
    let mut b = format!(
        r#"<h1>Topic <span class="mono">{}</span></h1>{}"#,
        esc(&t.name),
        flash_html(&f)
    );
    let _ = write!(
        b,
        r#"<div class="row"><div class="panel"><dl class="settings">
<dt>Partitions</dt><dd>{}</dd><dt>Replication factor</dt><dd>{}</dd>
<dt>Visibility timeout</dt><dd>{}</dd><dt>Max attempts</dt><dd>{}</dd>
<dt>Retention</dt><dd>{}</dd><dt>Retention per partition</dt><dd>{}</dd>
<dt>Dead-letter topic</dt><dd>{}</dd></dl>
<p><a href="/ui/topics/{u}/browse">Browse tasks →</a></p></div>"#,
        t.partitions.len(),
        t.replication_factor,
        ms_text(t.visibility_timeout_ms),
        if t.max_attempts == 0 {
            "unlimited".to_string()
        } else {
            t.max_attempts.to_string()
        },
        t.retention_ms.map_or("none".into(), ms_text),
        t.retention_bytes.map_or("none".into(), bytes),
        t.dead_letter_topic.as_deref().map_or("none".into(), esc),
    );
    let groups: Vec<_> = views::all_groups(&api)
        .into_iter()
        .filter(|(topic, _, _)| *topic == t.name)
        .collect();
    b.push_str(r#"<div class="panel"><strong>Consumer groups</strong><ul>"#);
    if groups.is_empty() {
        b.push_str(r#"<li class="muted">none yet (a worker's first fetch creates its group)</li>"#);
    }
    for (_, g, mode) in &groups {
        let _ = write!(
            b,
            r#"<li><a href="/ui/groups/{u}/{gu}">{g}</a> <span class="muted">{mode:?}</span></li>"#,
            gu = url_escape(g),
            g = esc(g),
        );
    }
    b.push_str("</ul></div></div>");
    b.push_str(r#"<h2>Partitions</h2><div class="panel"><table id="partitions"><thead><tr><th class="num">Partition</th><th>Replicas</th><th>Leader</th><th class="num">Log start</th><th class="num">High watermark</th><th class="num">Size</th><th class="num">Segments</th><th>Replication lag (entries)</th><th>Term</th><th></th></tr></thead><tbody>"#);
    for p in &t.partitions {
        let r = leader_replica(&reps, &t.name, p.partition);
        let replicas = p
            .replicas
            .iter()
            .map(|n| format!("node {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let leader = match p.leader {
            Some(l) => format!(r#"<span class="pill ok">node {l}</span>"#),
            None => r#"<span class="pill bad">none</span>"#.into(),
        };
        let (start, hw, size, segs, lag, term) = match r {
            Some(r) => (
                r.log_start_offset.to_string(),
                r.high_watermark.to_string(),
                bytes(r.log_bytes),
                r.segments.to_string(),
                if r.follower_lag.is_empty() {
                    "no followers".into()
                } else {
                    r.follower_lag
                        .iter()
                        .map(|(n, l)| {
                            let cls = if *l == 0 {
                                "ok"
                            } else if *l < 100 {
                                "warn"
                            } else {
                                "bad"
                            };
                            format!(r#"<span class="pill {cls}">node {n}: {l}</span>"#)
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                },
                r.term.to_string(),
            ),
            None => (
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
                r#"<span class="muted">leader did not answer</span>"#.into(),
                "–".into(),
            ),
        };
        let _ = write!(
            b,
            r#"<tr><td class="num">{pn}</td><td>{replicas}</td><td>{leader}</td><td class="num">{start}</td><td class="num">{hw}</td><td class="num">{size}</td><td class="num">{segs}</td><td>{lag}</td><td>{term}</td><td><a href="/ui/topics/{u}/browse?partition={pn}">browse</a></td></tr>"#,
            pn = p.partition,
        );
    }
    b.push_str("</tbody></table></div>");
    let _ = write!(
        b,
        r#"<div class="row"><div><h2>Add partitions</h2><div class="panel"><form class="inline" method="post" action="/ui/topics/{u}/partitions">
<label>Partitions to add<input name="count" type="number" min="1" value="1" required></label><button type="submit">Add</button></form></div></div>
<div><h2>Delete topic</h2><div class="panel"><form class="inline" method="post" action="/ui/topics/{u}/delete" data-confirm="Delete topic {n} and all its tasks?">
<label>Type the topic name to confirm<input name="confirm" required autocomplete="off"></label><button class="danger" type="submit">Delete</button></form>
<p class="muted">Deleting removes every task of the topic on every node. It cannot be undone.</p></div></div></div>"#,
        n = esc(&t.name),
    );
    page(&api, &format!("Topic {}", t.name), "topics", &b).into_response()
}

/// The add-partitions form.
#[derive(Debug, Deserialize)]
pub struct AddPartitionsForm {
    /// How many.
    pub count: String,
}

async fn add_partitions(
    State(api): State<Api>,
    Path(name): Path<String>,
    Form(form): Form<AddPartitionsForm>,
) -> Response {
    let back = format!("/ui/topics/{}", url_escape(&name));
    let count = match form.count.trim().parse::<u32>() {
        Ok(c) if c >= 1 => c,
        _ => return redirect_with(&back, "err", "count must be a number of at least 1"),
    };
    match api
        .clone()
        .add_partitions(context::current(), name.clone(), count)
        .await
    {
        Ok(t) => redirect_with(
            &back,
            "msg",
            &format!("{} now has {} partitions", name, t.partitions.len()),
        ),
        Err(e) => redirect_with(&back, "err", &format!("add partitions: {e}")),
    }
}

/// The delete-topic form: the name typed again.
#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    /// Must equal the topic name.
    pub confirm: String,
}

async fn delete_topic(
    State(api): State<Api>,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    if form.confirm.trim() != name {
        return redirect_with(
            &format!("/ui/topics/{}", url_escape(&name)),
            "err",
            "the confirmation does not match the topic name; nothing was deleted",
        );
    }
    match api
        .clone()
        .delete_topic(context::current(), name.clone())
        .await
    {
        Ok(()) => redirect_with("/ui/topics", "msg", &format!("topic {name} deleted")),
        Err(e) => redirect_with(
            &format!("/ui/topics/{}", url_escape(&name)),
            "err",
            &format!("delete: {e}"),
        ),
    }
}

/// Query of the browse page.
#[derive(Debug, Default, Deserialize)]
pub struct BrowseForm {
    /// Partition (default 0).
    pub partition: Option<String>,
    /// First offset (default: the oldest retained).
    pub from: Option<String>,
    /// Page size.
    pub limit: Option<String>,
    /// `text`, `json` or `hex`.
    pub view: Option<String>,
    /// Message after producing.
    pub msg: Option<String>,
    /// Error message.
    pub err: Option<String>,
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|c| {
            let t = std::str::from_utf8(c).ok()?;
            u8::from_str_radix(t, 16).ok()
        })
        .collect()
}

fn hexdump(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in b.chunks(16).enumerate() {
        let _ = write!(s, "{:08x}  ", i * 16);
        for (j, x) in chunk.iter().enumerate() {
            let _ = write!(s, "{x:02x}{}", if j == 7 { "  " } else { " " });
        }
        for _ in chunk.len()..16 {
            s.push_str("   ");
        }
        s.push(' ');
        for x in chunk {
            s.push(if x.is_ascii_graphic() || *x == b' ' {
                char::from(*x)
            } else {
                '.'
            });
        }
        s.push('\n');
    }
    s
}

/// The payload as shown in `view` (`json` falls back to text when it is not JSON).
fn render_payload(payload: &[u8], view: &str) -> String {
    match view {
        "hex" => hexdump(payload),
        "json" => match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) => serde_json::to_string_pretty(&v)
                .unwrap_or_else(|_| String::from_utf8_lossy(payload).into_owned()),
            Err(_) => format!(
                "(not JSON) {}",
                String::from_utf8_lossy(payload).into_owned()
            ),
        },
        _ => String::from_utf8_lossy(payload).into_owned(),
    }
}

fn state_pill(state: &str) -> &'static str {
    match state {
        "ready" => "info",
        "acked" => "ok",
        "leased" | "delayed" => "warn",
        _ => "bad",
    }
}

async fn browse(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Query<BrowseForm>,
) -> Response {
    let t = match describe_topic(&api, &name).await {
        Ok(t) => t,
        Err(e) => return error_page(&api, &format!("Browse {name}"), "topics", &e),
    };
    let parse = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let partition: u32 = parse(&q.partition)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let from: u64 = parse(&q.from).and_then(|p| p.parse().ok()).unwrap_or(0);
    let limit: u32 = parse(&q.limit)
        .and_then(|p| p.parse().ok())
        .unwrap_or(crate::http::admin::BROWSE_LIMIT_DEFAULT)
        .clamp(1, views::BROWSE_TASKS_MAX);
    let view = match q.view.as_deref() {
        Some("json") => "json",
        Some("hex") => "hex",
        _ => "text",
    };
    let u = url_escape(&t.name);
    let mut b = format!(
        r#"<h1>Browse <a class="mono" href="/ui/topics/{u}">{}</a></h1>{}"#,
        esc(&t.name),
        flash_html(&Flash {
            msg: q.msg.clone(),
            err: q.err.clone()
        })
    );
    let options = t
        .partitions
        .iter()
        .map(|p| {
            format!(
                r#"<option value="{0}"{1}>{0}</option>"#,
                p.partition,
                if p.partition == partition {
                    " selected"
                } else {
                    ""
                }
            )
        })
        .collect::<String>();
    let view_opts = ["text", "json", "hex"]
        .iter()
        .map(|v| {
            format!(
                r#"<option value="{v}"{}>{}</option>"#,
                if *v == view { " selected" } else { "" },
                match *v {
                    "json" => "JSON (pretty)",
                    "hex" => "hex",
                    _ => "text",
                }
            )
        })
        .collect::<String>();
    let _ = write!(
        b,
        r#"<div class="panel"><form class="inline" method="get" action="/ui/topics/{u}/browse" id="browse-form">
<label>Partition<select name="partition" data-autosubmit>{options}</select></label>
<label>From offset<input name="from" type="number" min="0" value="{from}"></label>
<label>Tasks<input name="limit" type="number" min="1" max="{max}" value="{limit}"></label>
<label>Payload as<select name="view" data-autosubmit>{view_opts}</select></label>
<button type="submit" class="secondary">Show</button></form></div>"#,
        max = views::BROWSE_TASKS_MAX,
    );
    match views::browse(&api, &t.name, partition, from, limit, false).await {
        Err(e) => {
            let _ = write!(
                b,
                r#"<div class="flash bad" role="alert">browse failed: {}</div>"#,
                esc(&e.to_string())
            );
        }
        Ok(pg) => {
            let _ = write!(
                b,
                r#"<p class="muted">Partition {} · offsets {}..{} retained · answered by node {} · showing {} task(s) from offset {}</p>"#,
                pg.partition,
                pg.log_start_offset,
                pg.high_watermark,
                pg.node,
                pg.tasks.len(),
                pg.from
            );
            let link = |f: u64| {
                format!(
                    "/ui/topics/{u}/browse?partition={partition}&from={f}&limit={limit}&view={view}"
                )
            };
            let mut pager = String::from(r#"<div class="pager">"#);
            if pg.from > pg.log_start_offset {
                let _ = write!(
                    pager,
                    r#"<a href="{}">← previous</a>"#,
                    link(
                        pg.from
                            .saturating_sub(u64::from(limit))
                            .max(pg.log_start_offset)
                    )
                );
            }
            if let Some(last) = pg.tasks.last() {
                if last.offset + 1 < pg.high_watermark {
                    let _ = write!(pager, r#"<a href="{}">next →</a>"#, link(last.offset + 1));
                }
            }
            let _ = write!(
                pager,
                r#"<a href="{}">newest</a></div>"#,
                link(pg.high_watermark.saturating_sub(u64::from(limit)))
            );
            b.push_str(&pager);
            b.push_str(r#"<div class="panel"><table id="tasks"><thead><tr><th class="num">Offset</th><th>Key</th><th>Headers</th><th>Produced</th><th>Payload</th><th>State per group</th></tr></thead><tbody>"#);
            if pg.tasks.is_empty() {
                b.push_str(
                    r#"<tr><td colspan="6" class="muted">No tasks in this range.</td></tr>"#,
                );
            }
            for task in &pg.tasks {
                let headers = if task.headers.is_empty() {
                    "–".to_string()
                } else {
                    task.headers
                        .iter()
                        .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
                        .collect::<Vec<_>>()
                        .join("<br>")
                };
                let groups = if task.groups.is_empty() {
                    r#"<span class="muted">no queue groups</span>"#.to_string()
                } else {
                    task.groups
                        .iter()
                        .map(|g| {
                            format!(
                                r#"<div>{} <span class="pill {}">{}</span> <span class="muted">attempts {}{}</span></div>"#,
                                esc(&g.group),
                                state_pill(&g.state),
                                esc(&g.state),
                                g.attempts,
                                g.worker
                                    .as_ref()
                                    .map(|w| format!(", worker {}", esc(w)))
                                    .unwrap_or_default()
                            )
                        })
                        .collect()
                };
                let payload = unhex(&task.payload_hex);
                let _ = write!(
                    b,
                    r#"<tr data-offset="{off}"><td class="num mono">{off}</td><td class="mono">{key}</td><td>{headers}</td><td class="muted" data-ms="{ts}">{ts}</td><td><pre class="payload">{pl}</pre><span class="muted">{n} B{cut}{prio}</span></td><td>{groups}</td></tr>"#,
                    off = task.offset,
                    key = task.key.as_deref().map_or("–".into(), esc),
                    ts = task.timestamp_ms,
                    pl = esc(&render_payload(&payload, view)),
                    n = task.payload_bytes,
                    cut = if task.payload_truncated {
                        ", truncated"
                    } else {
                        ""
                    },
                    prio = if task.priority > 0 {
                        format!(", priority {}", task.priority)
                    } else {
                        String::new()
                    },
                );
            }
            b.push_str("</tbody></table></div>");
        }
    }
    let _ = write!(
        b,
        r#"<h2>Produce a test task</h2><div class="panel"><form class="grid" method="post" action="/ui/topics/{u}/produce" id="produce-form">
<label>Partition<select name="partition"><option value="">by key (or 0)</option>{options}</select></label>
<label>Key<input name="key" placeholder="optional"></label>
<label>Priority<input name="priority" type="number" min="0" max="255" placeholder="0"></label>
<label>Delay (ms)<input name="delay_ms" type="number" min="0" placeholder="0"></label>
<label style="grid-column: 1 / -1">Payload<textarea name="payload" required placeholder='{{"job": "resize", "image": "img-42.png"}}'></textarea></label>
<label style="grid-column: 1 / -1">Headers (one name=value per line)<textarea name="headers" placeholder="trace-id=abc"></textarea></label>
<div><button type="submit">Produce</button></div></form></div>"#,
        options = t
            .partitions
            .iter()
            .map(|p| format!(r#"<option value="{0}">{0}</option>"#, p.partition))
            .collect::<String>(),
    );
    page(&api, &format!("Browse {}", t.name), "topics", &b).into_response()
}

/// The produce-a-test-task form.
#[derive(Debug, Default, Deserialize)]
pub struct ProduceForm {
    /// Partition (empty = by key).
    pub partition: Option<String>,
    /// Key (empty = none).
    pub key: Option<String>,
    /// Payload text.
    pub payload: String,
    /// `name=value` lines.
    pub headers: Option<String>,
    /// Priority.
    pub priority: Option<String>,
    /// Delay, ms.
    pub delay_ms: Option<String>,
}

impl ProduceForm {
    fn request(self) -> Result<ProduceTaskRequest, String> {
        let mut headers = BTreeMap::new();
        for line in self.headers.as_deref().unwrap_or("").lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("header line {line:?} has no '='"))?;
            headers.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(ProduceTaskRequest {
            partition: opt_num("partition", &self.partition)?,
            key: self
                .key
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty()),
            payload: self.payload,
            headers,
            priority: opt_num("priority", &self.priority)?,
            delay_ms: opt_num("delay", &self.delay_ms)?,
        })
    }
}

async fn produce(
    State(api): State<Api>,
    Path(name): Path<String>,
    Form(form): Form<ProduceForm>,
) -> Response {
    let back = format!("/ui/topics/{}/browse", url_escape(&name));
    let req = match form.request() {
        Ok(r) => r,
        Err(e) => return redirect_with(&back, "err", &e),
    };
    match views::produce_task(&api, &name, req, false).await {
        Ok(p) => redirect_with(
            &format!("{back}?partition={}&from={}", p.partition, p.offset),
            "msg",
            &format!(
                "produced task at partition {} offset {}",
                p.partition, p.offset
            ),
        ),
        Err(e) => redirect_with(&back, "err", &format!("produce: {e}")),
    }
}

async fn groups(State(api): State<Api>, Query(f): Query<Flash>) -> Response {
    let all = views::all_groups(&api);
    let mut b = String::from("<h1>Consumer groups</h1>");
    b.push_str(&flash_html(&f));
    b.push_str(r#"<div class="panel"><table id="groups"><thead><tr><th>Group</th><th>Topic</th><th>Mode</th><th class="num">Lag</th><th class="num">Ready</th><th class="num">Delayed</th><th class="num">In flight</th><th class="num">Dead letters</th><th class="num">Acked</th></tr></thead><tbody>"#);
    if all.is_empty() {
        b.push_str(r#"<tr><td colspan="9" class="muted">No consumer groups yet: a worker's first fetch creates its group.</td></tr>"#);
    }
    let descs = futures::future::join_all(all.iter().map(|(t, g, _)| {
        api.clone()
            .describe_group(context::current(), t.clone(), g.clone())
    }))
    .await;
    for ((topic, group, mode), d) in all.iter().zip(descs) {
        let cells = match d {
            Ok(d) => {
                let sum = |f: fn(&taskbroker_client::GroupPartitionState) -> u64| {
                    d.partitions.iter().map(f).sum::<u64>().to_string()
                };
                format!(
                    r#"<td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td>"#,
                    sum(|p| p.lag),
                    sum(|p| p.ready),
                    sum(|p| p.delayed),
                    sum(|p| p.in_flight),
                    sum(|p| p.dead_letters),
                    sum(|p| p.acked_total)
                )
            }
            Err(e) => format!(
                r#"<td colspan="6" class="muted">unavailable: {}</td>"#,
                esc(&e.to_string())
            ),
        };
        let _ = write!(
            b,
            r#"<tr><td><a href="/ui/groups/{tu}/{gu}">{g}</a></td><td><a href="/ui/topics/{tu}">{t}</a></td><td>{mode}</td>{cells}</tr>"#,
            tu = url_escape(topic),
            gu = url_escape(group),
            g = esc(group),
            t = esc(topic),
            mode = mode_text(*mode),
        );
    }
    b.push_str("</tbody></table></div>");
    page(&api, "Consumer groups", "groups", &b).into_response()
}

fn mode_text(m: GroupMode) -> &'static str {
    match m {
        GroupMode::Queue => "queue",
        GroupMode::Stream => "stream",
    }
}

async fn group_detail(
    State(api): State<Api>,
    Path((topic, group)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let title = format!("Group {group} on {topic}");
    let d = match api
        .clone()
        .describe_group(context::current(), topic.clone(), group.clone())
        .await
    {
        Ok(d) => d,
        Err(e) => return error_page(&api, &title, "groups", &e),
    };
    let (tu, gu) = (url_escape(&topic), url_escape(&group));
    let total = |f: fn(&taskbroker_client::GroupPartitionState) -> u64| {
        d.partitions.iter().map(f).sum::<u64>()
    };
    let mut b = format!(
        r#"<h1>Group <span class="mono">{g}</span> on <a class="mono" href="/ui/topics/{tu}">{t}</a></h1>{flash}"#,
        g = esc(&group),
        t = esc(&topic),
        flash = flash_html(&f)
    );
    let _ = write!(
        b,
        r#"<div class="cards">
<div class="card"><div class="label">Mode</div><div class="value">{mode}</div></div>
<div class="card"><div class="label">Workers holding leases</div><div class="value">{members}</div></div>
<div class="card"><div class="label">Lag</div><div class="value" data-live="lag">{lag}</div></div>
<div class="card"><div class="label">Dead letters</div><div class="value" data-live="dead">{dead}</div></div>
<div class="card"><div class="label">Produced</div><div class="value" data-live="produce-rate">–</div></div>
<div class="card"><div class="label">Acked</div><div class="value" data-live="ack-rate">–</div></div>
</div>"#,
        mode = mode_text(d.mode),
        members = group_members(&api, &topic, &group).await,
        lag = total(|p| p.lag),
        dead = total(|p| p.dead_letters),
    );
    let _ = write!(
        b,
        r#"<div data-live-kind="group" data-topic="{t}" data-group="{g}"><div class="row">
<div class="panel"><strong>Rates</strong><canvas class="chart rates" aria-label="produce and ack rates"></canvas><div class="legend"><span style="--c:#2f6fde">produced/s</span><span style="--c:#1a7f46">acked/s</span><span class="muted" data-live-status>loading…</span></div></div>
<div class="panel"><strong>Queue depth</strong><canvas class="chart depth" aria-label="ready, in flight and dead letters"></canvas><div class="legend"><span style="--c:#2f6fde">ready</span><span style="--c:#b7791f">in flight</span><span style="--c:#c0392b">dead letters</span></div></div>
</div></div>"#,
        t = esc(&topic),
        g = esc(&group),
    );
    b.push_str(r#"<h2>Partitions</h2><div class="panel"><table id="group-partitions"><thead><tr><th class="num">Partition</th><th class="num">Ready</th><th class="num">Delayed</th><th class="num">In flight</th><th class="num">Dead letters</th><th class="num">Lag</th><th class="num">Acked</th><th class="num">Committed offset</th><th class="num">High watermark</th></tr></thead><tbody>"#);
    for p in &d.partitions {
        let cell = |f: &str, v: u64| {
            format!(
                r#"<td class="num" data-p="{}" data-f="{f}">{v}</td>"#,
                p.partition
            )
        };
        let _ = write!(
            b,
            r#"<tr><td class="num">{}</td>{}{}{}{}{}{}<td class="num">{}</td>{}</tr>"#,
            p.partition,
            cell("ready", p.ready),
            cell("delayed", p.delayed),
            cell("in_flight", p.in_flight),
            cell("dead_letters", p.dead_letters),
            cell("lag", p.lag),
            cell("acked_total", p.acked_total),
            p.committed_offset.map_or("–".into(), |o| o.to_string()),
            cell("high_watermark", p.high_watermark),
        );
    }
    b.push_str("</tbody></table></div>");
    if d.mode == GroupMode::Queue {
        let _ = write!(
            b,
            r#"<h2>Dead letters</h2><div class="panel"><form class="inline" method="post" action="/ui/groups/{tu}/{gu}/requeue" data-confirm="Move every dead letter of {g} back to ready?"><button type="submit">Requeue all dead letters</button></form><p class="muted">Requeued tasks get a fresh attempt count and are delivered again.</p></div>"#,
            g = esc(&group),
        );
    }
    page(&api, &title, "groups", &b).into_response()
}

/// Distinct workers holding leases in the group, from the partition leaders' task states
/// (queue groups have no registration: a worker is a member while it holds a lease).
async fn group_members(api: &Api, topic: &str, group: &str) -> String {
    let nodes = views::cluster_nodes(api).await.unwrap_or_default();
    let mut workers = std::collections::BTreeSet::new();
    let mut known = false;
    for n in &nodes {
        let Some(s) = &n.status else { continue };
        for p in &s.partitions {
            if p.topic == topic && p.is_leader {
                if let Some(g) = p.groups.iter().find(|g| g.group == group) {
                    known = true;
                    workers.extend(g.workers.iter().cloned());
                }
            }
        }
    }
    if !known {
        return "–".into();
    }
    if workers.is_empty() {
        return "0".into();
    }
    format!(
        r#"{} <span class="muted" style="font-size:12px">{}</span>"#,
        workers.len(),
        esc(&workers.into_iter().collect::<Vec<_>>().join(", "))
    )
}

async fn requeue(State(api): State<Api>, Path((topic, group)): Path<(String, String)>) -> Response {
    let back = format!("/ui/groups/{}/{}", url_escape(&topic), url_escape(&group));
    match api
        .clone()
        .requeue_dead_letters(context::current(), topic, group)
        .await
    {
        Ok(n) => redirect_with(&back, "msg", &format!("{n} dead letter(s) requeued")),
        Err(e) => redirect_with(&back, "err", &format!("requeue: {e}")),
    }
}

/// The UI routes (`/`, `/ui/...`).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(overview))
        .route("/ui/assets/app.css", get(css))
        .route("/ui/assets/app.js", get(js))
        .route("/ui/topics", get(topics).post(create_topic))
        .route("/ui/topics/{name}", get(topic_detail))
        .route("/ui/topics/{name}/partitions", post(add_partitions))
        .route("/ui/topics/{name}/delete", post(delete_topic))
        .route("/ui/topics/{name}/browse", get(browse))
        .route("/ui/topics/{name}/produce", post(produce))
        .route("/ui/groups", get(groups))
        .route("/ui/groups/{topic}/{group}", get(group_detail))
        .route("/ui/groups/{topic}/{group}/requeue", post(requeue))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_views() {
        assert_eq!(render_payload(br#"{"a":1}"#, "json"), "{\n  \"a\": 1\n}");
        assert!(render_payload(b"plain", "json").starts_with("(not JSON) plain"));
        assert_eq!(render_payload(b"hi", "text"), "hi");
        let h = render_payload(b"AB\x00", "hex");
        assert!(h.starts_with("00000000  41 42 00"), "{h}");
        assert!(h.trim_end().ends_with("AB."), "{h}");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex("00ff41"), vec![0, 255, 65]);
    }

    #[test]
    fn forms_parse_numbers_and_reject_garbage() {
        let f = CreateTopicForm {
            name: "t".into(),
            partitions: Some("4".into()),
            max_attempts: Some(String::new()),
            dead_letter_topic: Some("  ".into()),
            ..Default::default()
        };
        let s = f.spec().expect("spec");
        assert_eq!(s.partitions, Some(4));
        assert_eq!(s.max_attempts, None);
        assert_eq!(s.dead_letter_topic, None);
        let bad = CreateTopicForm {
            name: "t".into(),
            partitions: Some("four".into()),
            ..Default::default()
        };
        assert!(bad.spec().is_err());
        let p = ProduceForm {
            payload: "x".into(),
            headers: Some("a=1\n\nb = 2".into()),
            ..Default::default()
        }
        .request()
        .expect("request");
        assert_eq!(p.headers.get("b").map(String::as_str), Some("2"));
        assert!(ProduceForm {
            payload: "x".into(),
            headers: Some("novalue".into()),
            ..Default::default()
        }
        .request()
        .is_err());
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
