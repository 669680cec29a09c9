//! What the web UI and the admin API read beyond the client API: a node's own status, the
//! whole cluster's (gathered from every node), browsing a partition's tasks by offset, and
//! producing a test task.
//!
//! # Design notes
//! - A node knows only the replicas it hosts. Cluster-wide views ask every node for its
//!   [`NodeStatus`] over HTTP ([`super::peer`], at the registered `http_addr`); a node that
//!   does not answer is shown as down with the reason, never waited on beyond the peer
//!   deadline.
//! - Browsing and producing run on the partition's leader (its task states are the current
//!   ones); another node forwards the request there once ([`super::peer::FORWARDED_HEADER`]). A
//!   forwarded request is answered from a local replica if there is one, else refused, so
//!   requests never loop while leadership moves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tarpc::context;
use taskbroker_client::batch::{BatchBuilder, BatchView, Header, TaskRecord};
use taskbroker_client::proto::{ApiError, BrokerApi, GroupMode, NodeId, ProduceRequest};
use taskbroker_raft::codec::decode_command;
use taskbroker_raft::state_machine::metadata::GroupMode as RaftGroupMode;
use taskbroker_raft::state_machine::partition::TaskStatus;
use taskbroker_raft::{Command, GroupId};

use super::peer;
use crate::api::Api;

/// Most tasks one browse request returns (a larger `limit` is clamped).
pub const BROWSE_TASKS_MAX: u32 = 500;
/// Browse requests return at most this many payload bytes per task (the rest is cut and
/// `payload_truncated` set): pages stay small whatever the tasks hold.
pub const BROWSE_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// Frames read per log read while browsing.
const BROWSE_FRAMES_PER_READ: usize = 256;
/// Bytes read per log read while browsing.
const BROWSE_READ_BYTES_MAX: usize = 8 << 20;
/// Log reads one browse request makes at most (queue entries sit between produce entries).
const BROWSE_READS_MAX: usize = 32;

/// One consumer group's counters on a partition (from the partition's leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounters {
    /// Group name.
    pub group: String,
    /// Delivery mode.
    pub mode: GroupMode,
    /// Ready to lease.
    pub ready: u64,
    /// Waiting for a time.
    pub delayed: u64,
    /// Leased.
    pub in_flight: u64,
    /// Current dead letters.
    pub dead_letters: u64,
    /// Acks ever.
    pub acked_total: u64,
    /// Not done (queue) or not consumed (stream).
    pub lag: u64,
    /// Age of the oldest ready task, ms.
    pub oldest_ready_age_ms: Option<u64>,
    /// Queue groups: the workers holding leases now (a queue group's members).
    pub workers: Vec<String>,
}

/// One replica hosted by a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Topic (`__metadata` for the metadata group).
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Whether this node leads it.
    pub is_leader: bool,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Commit index.
    pub commit_index: Option<u64>,
    /// Applied index.
    pub applied_index: Option<u64>,
    /// Bytes of the replica's log.
    pub log_bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// First retained offset.
    pub log_start_offset: u64,
    /// Next offset (applied high watermark).
    pub high_watermark: u64,
    /// Leader only: entries each follower is behind.
    pub follower_lag: BTreeMap<NodeId, u64>,
    /// Leader only: every consumer group's counters.
    pub groups: Vec<GroupCounters>,
}

/// `GET /api/v1/node`: the answering node's own status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Whether this node leads the metadata group (is the controller).
    pub metadata_leader: bool,
    /// Whether the node knows a metadata leader (what `/ready` checks).
    pub ready: bool,
    /// Storage backend in use.
    pub backend: String,
    /// Bytes of every hosted log.
    pub disk_bytes: u64,
    /// Partition replicas hosted (without the metadata group).
    pub replicas: usize,
    /// Partitions led.
    pub partitions_led: usize,
    /// Task counters since the node started, by operation (`produced`, `leased`, `acked`, ...).
    pub tasks_total: BTreeMap<String, u64>,
    /// Client API requests since the node started.
    pub requests_total: u64,
    /// Every hosted replica (the metadata group included).
    pub partitions: Vec<ReplicaStatus>,
}

/// One entry of `GET /api/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub id: NodeId,
    /// Client API address.
    pub addr: String,
    /// HTTP address, if registered.
    pub http_addr: Option<String>,
    /// Whether the node answered.
    pub up: bool,
    /// Why not, if it did not.
    pub error: Option<String>,
    /// Its status, if it answered.
    pub status: Option<NodeStatus>,
}

/// A task's state in one queue group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroupState {
    /// Group.
    pub group: String,
    /// `ready`, `delayed`, `leased`, `acked` or `dead_lettered`.
    pub state: String,
    /// Deliveries so far.
    pub attempts: u32,
    /// Leased: the worker holding it.
    pub worker: Option<String>,
    /// Delayed: ready at; leased: lease expiry; dead-lettered: when (ms since the epoch).
    pub at_ms: Option<u64>,
    /// Failed attempts recorded (nacks and expiries).
    pub failures: usize,
}

/// One task of a browse page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Offset.
    pub offset: u64,
    /// Key (UTF-8, lossy).
    pub key: Option<String>,
    /// Headers (values UTF-8, lossy).
    pub headers: Vec<(String, String)>,
    /// Producer's timestamp, ms since the epoch.
    pub timestamp_ms: u64,
    /// Not deliverable before, ms since the epoch.
    pub not_before_ms: Option<u64>,
    /// Priority.
    pub priority: u8,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Payload (at most [`BROWSE_PAYLOAD_BYTES_MAX`] bytes), hex-encoded.
    pub payload_hex: String,
    /// Whether the payload was cut.
    pub payload_truncated: bool,
    /// State in each queue group of the topic.
    pub groups: Vec<TaskGroupState>,
}

/// `GET /api/v1/topics/{name}/partitions/{p}/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowsePage {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset asked for (raised to `log_start_offset` if below it).
    pub from: u64,
    /// First retained offset.
    pub log_start_offset: u64,
    /// Next offset.
    pub high_watermark: u64,
    /// The node that answered.
    pub node: NodeId,
    /// Tasks from `from`, in offset order.
    pub tasks: Vec<TaskView>,
}

/// `POST /api/v1/topics/{name}/tasks`: a test task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProduceTaskRequest {
    /// Partition (default: by key hash, else 0).
    pub partition: Option<u32>,
    /// Key.
    pub key: Option<String>,
    /// Payload (UTF-8 text).
    pub payload: String,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Priority (higher first).
    pub priority: Option<u8>,
    /// Not deliverable for this long, ms.
    pub delay_ms: Option<u64>,
}

/// Answer of a produced test task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducedTask {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The task's offset.
    pub offset: u64,
}

/// Where a forwarded call goes, or why it cannot.
fn http_addr_of(api: &Api, node: NodeId) -> Result<String, ApiError> {
    let g = api.meta().state().read();
    g.metadata()
        .and_then(|m| m.node(node).and_then(|n| n.http_addr.clone()))
        .ok_or_else(|| ApiError::Unavailable {
            reason: format!("no HTTP address known for node {node}"),
        })
}

/// The topic labels of every group id the metadata knows.
fn topic_of_groups(api: &Api) -> BTreeMap<GroupId, (String, u32)> {
    let mut out = BTreeMap::new();
    let g = api.meta().state().read();
    if let Some(m) = g.metadata() {
        for t in m.topics() {
            for p in &t.partitions {
                out.insert(GroupId(p.group_id), (t.name.clone(), p.partition));
            }
        }
    }
    out
}

/// This node's status.
pub fn node_status(api: &Api) -> NodeStatus {
    let raft = api.raft();
    let names = topic_of_groups(api);
    let now_ms = api.now_ms();
    let mut partitions = Vec::new();
    let mut disk_bytes = 0;
    for id in raft.group_ids() {
        let Some(g) = raft.group(id) else { continue };
        let (topic, partition) = if id.is_metadata() {
            (super::metrics::METADATA_TOPIC_LABEL.to_string(), 0)
        } else {
            match names.get(&id) {
                Some(n) => n.clone(),
                None => continue,
            }
        };
        let m = g.metrics();
        let st = g.log().stats();
        disk_bytes += st.bytes;
        let mut groups = Vec::new();
        let (mut start, mut hw) = (0, st.next_offset);
        {
            let guard = g.state().read();
            if let Some(p) = guard.partition() {
                start = p.log_start_offset();
                hw = p.next_offset();
                if m.is_leader {
                    for (name, mode) in p.groups() {
                        let Some(s) = p.group_stats(name, now_ms) else {
                            continue;
                        };
                        groups.push(GroupCounters {
                            group: name.to_string(),
                            mode: wire_mode(mode),
                            ready: s.ready,
                            delayed: s.delayed,
                            in_flight: s.in_flight,
                            dead_letters: s.dead_letters,
                            acked_total: s.acked_total,
                            lag: s.lag,
                            oldest_ready_age_ms: s.oldest_ready_age_ms,
                            workers: p
                                .lease_holders(name)
                                .map(|w| w.into_keys().collect())
                                .unwrap_or_default(),
                        });
                    }
                }
            }
        }
        partitions.push(ReplicaStatus {
            topic,
            partition,
            is_leader: m.is_leader,
            leader: m.leader,
            term: m.term,
            last_log_index: m.last_log_index,
            commit_index: m.commit_index,
            applied_index: m.applied_index,
            log_bytes: st.bytes,
            segments: st.segments,
            log_start_offset: start,
            high_watermark: hw,
            follower_lag: m.follower_lag,
            groups,
        });
    }
    let meta = api.meta();
    let (tasks_total, requests_total) = api.metrics().totals();
    NodeStatus {
        id: api.settings().node_id,
        metadata_leader: meta.is_leader(),
        ready: meta.leader().is_some(),
        backend: raft.disk().kind().to_string(),
        disk_bytes,
        replicas: partitions
            .iter()
            .filter(|p| p.topic != super::metrics::METADATA_TOPIC_LABEL)
            .count(),
        partitions_led: partitions
            .iter()
            .filter(|p| p.is_leader && p.topic != super::metrics::METADATA_TOPIC_LABEL)
            .count(),
        tasks_total,
        requests_total,
        partitions,
    }
}

/// Every registered node's status, asked in parallel (this node answers from memory).
pub async fn cluster_nodes(api: &Api) -> Result<Vec<NodeEntry>, ApiError> {
    let nodes = api
        .clone()
        .metadata(context::current(), Vec::new())
        .await?
        .nodes;
    let me = api.settings().node_id;
    let asks = nodes.into_iter().map(|n| async move {
        if n.id == me {
            return NodeEntry {
                id: n.id,
                addr: n.addr,
                http_addr: n.http_addr,
                up: true,
                error: None,
                status: Some(node_status(api)),
            };
        }
        let answer = match &n.http_addr {
            None => Err("no HTTP address registered".to_string()),
            Some(addr) => match peer::call(addr, "GET", "/api/v1/node", None).await {
                Ok(r) if r.status == 200 => serde_json::from_slice::<NodeStatus>(&r.body)
                    .map_err(|e| format!("bad status document: {e}")),
                Ok(r) => Err(format!("answered HTTP {}", r.status)),
                Err(e) => Err(e.to_string()),
            },
        };
        let (up, error, status) = match answer {
            Ok(s) => (true, None, Some(s)),
            Err(e) => (false, Some(e), None),
        };
        NodeEntry {
            id: n.id,
            addr: n.addr,
            http_addr: n.http_addr,
            up,
            error,
            status,
        }
    });
    Ok(futures::future::join_all(asks).await)
}

/// The partition's group id and the node to run a partition request on: this node if it
/// leads the partition (or, for a `forwarded` request, hosts a replica), else the leader.
fn partition_target(
    api: &Api,
    topic: &str,
    partition: u32,
    forwarded: bool,
) -> Result<(GroupId, Option<NodeId>), ApiError> {
    let (gid, replicas) = {
        let g = api.meta().state().read();
        let m = g.metadata().ok_or_else(|| ApiError::Internal {
            reason: "metadata group holds no metadata state".into(),
        })?;
        let t = m.topic(topic).ok_or_else(|| ApiError::UnknownTopic {
            topic: topic.into(),
        })?;
        let p = t
            .partitions
            .get(partition as usize)
            .ok_or(ApiError::UnknownPartition {
                topic: topic.into(),
                partition,
            })?;
        (GroupId(p.group_id), p.replicas.clone())
    };
    match api.raft().group(gid) {
        Some(g) if g.is_leader() => Ok((gid, None)),
        Some(_) if forwarded => Ok((gid, None)),
        Some(g) => match g.leader() {
            Some(l) if l != api.settings().node_id => Ok((gid, Some(l))),
            _ => Err(ApiError::Unavailable {
                reason: format!("partition {topic}/{partition} has no leader"),
            }),
        },
        None if forwarded => Err(ApiError::Unavailable {
            reason: format!("partition {topic}/{partition} is not hosted on the forwarded-to node"),
        }),
        None => {
            // Not hosted here: the preferred replica usually leads (a forwarded request that
            // lands on a follower is answered from that replica).
            match replicas.first().copied() {
                Some(l) => Ok((gid, Some(l))),
                None => Err(ApiError::Unavailable {
                    reason: format!("partition {topic}/{partition} has no replicas"),
                }),
            }
        }
    }
}

/// Calls the same admin path on `node` and decodes its answer (or its error document).
async fn forward<T: for<'de> Deserialize<'de>>(
    api: &Api,
    (topic, partition): (&str, u32),
    node: NodeId,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, ApiError> {
    let addr = http_addr_of(api, node)?;
    let r = peer::call(&addr, method, path, body)
        .await
        .map_err(|e| ApiError::Unavailable {
            reason: e.to_string(),
        })?;
    if (200..300).contains(&r.status) {
        return serde_json::from_slice(&r.body).map_err(|e| ApiError::Internal {
            reason: format!("node {node} answered an unreadable document: {e}"),
        });
    }
    let (kind, detail) = match serde_json::from_slice::<super::admin::ErrorBody>(&r.body) {
        Ok(b) => (b.error.kind, b.error.message),
        Err(_) => (String::new(), String::from_utf8_lossy(&r.body).into_owned()),
    };
    // The peer's error kind maps back to the same error, so the caller answers the same
    // status a direct request to the peer would have.
    Err(match kind.as_str() {
        "unknown_topic" => ApiError::UnknownTopic {
            topic: topic.into(),
        },
        "unknown_partition" => ApiError::UnknownPartition {
            topic: topic.into(),
            partition,
        },
        "invalid_argument" | "invalid_batch" => ApiError::InvalidArgument { reason: detail },
        "too_large" => ApiError::InvalidArgument { reason: detail },
        "timeout" => ApiError::Timeout,
        _ => ApiError::Unavailable {
            reason: format!("node {node} answered HTTP {}: {detail}", r.status),
        },
    })
}

fn wire_mode(m: RaftGroupMode) -> GroupMode {
    match m {
        RaftGroupMode::Queue => GroupMode::Queue,
        RaftGroupMode::Stream => GroupMode::Stream,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Tasks of a partition from offset `from` (at most `limit`), with their state in every queue
/// group; run on the partition's leader (forwarded there if needed).
pub async fn browse(
    api: &Api,
    topic: &str,
    partition: u32,
    from: u64,
    limit: u32,
    forwarded: bool,
) -> Result<BrowsePage, ApiError> {
    let limit = limit.clamp(1, BROWSE_TASKS_MAX);
    let (gid, remote) = partition_target(api, topic, partition, forwarded)?;
    if let Some(node) = remote {
        let path = format!(
            "/api/v1/topics/{}/partitions/{partition}/tasks?from={from}&limit={limit}",
            crate::ui::url_escape(topic)
        );
        return forward(api, (topic, partition), node, "GET", &path, None).await;
    }
    let group = api.raft().group(gid).ok_or_else(|| ApiError::Unavailable {
        reason: "partition closed".into(),
    })?;
    let (start, hw, queue_groups) = {
        let guard = group.state().read();
        let p = guard.partition().ok_or_else(|| ApiError::Internal {
            reason: "partition group holds no partition state".into(),
        })?;
        let groups: Vec<String> = p
            .groups()
            .filter(|(_, m)| *m == RaftGroupMode::Queue)
            .map(|(n, _)| n.to_string())
            .collect();
        (p.log_start_offset(), p.next_offset(), groups)
    };
    let from = from.max(start);
    let mut tasks: Vec<TaskView> = Vec::new();
    if from < hw {
        let log = group.log();
        let pos = log
            .locate_offset(from)
            .await
            .map_err(|e| ApiError::Internal {
                reason: e.to_string(),
            })?;
        if let Some(pos) = pos {
            let mut index = pos.index;
            'reads: for _ in 0..BROWSE_READS_MAX {
                if index >= log.next_index() {
                    break;
                }
                let frames = log
                    .read(index, BROWSE_FRAMES_PER_READ, BROWSE_READ_BYTES_MAX)
                    .await
                    .map_err(|e| ApiError::Internal {
                        reason: e.to_string(),
                    })?;
                let Some(last) = frames.last() else { break };
                index = last.index + 1;
                for f in &frames {
                    if f.base_offset >= hw || tasks.len() >= limit as usize {
                        break 'reads;
                    }
                    if f.record_count == 0 {
                        continue;
                    }
                    let cmd = decode_command(f).map_err(|e| ApiError::Internal {
                        reason: e.to_string(),
                    })?;
                    let Some(Command::Produce { batch, .. }) = cmd else {
                        continue;
                    };
                    let view = BatchView::new(&batch).map_err(|e| ApiError::Internal {
                        reason: format!("stored batch at {}: {e}", f.base_offset),
                    })?;
                    for r in view.records() {
                        let offset = f.base_offset + r.index() as u64;
                        if offset < from || offset >= hw {
                            continue;
                        }
                        if tasks.len() >= limit as usize {
                            break 'reads;
                        }
                        let payload = r.payload();
                        let shown = &payload[..payload.len().min(BROWSE_PAYLOAD_BYTES_MAX)];
                        tasks.push(TaskView {
                            offset,
                            key: r.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            headers: r
                                .headers()
                                .map(|(k, v)| {
                                    (k.to_string(), String::from_utf8_lossy(v).into_owned())
                                })
                                .collect(),
                            timestamp_ms: r.timestamp_ms(),
                            not_before_ms: r.not_before_ms(),
                            priority: r.priority(),
                            payload_bytes: payload.len(),
                            payload_hex: hex(shown),
                            payload_truncated: shown.len() < payload.len(),
                            groups: Vec::new(),
                        });
                    }
                }
            }
        }
    }
    {
        let guard = group.state().read();
        if let Some(p) = guard.partition() {
            for t in &mut tasks {
                for g in &queue_groups {
                    let Some(s) = p.task_state(g, t.offset) else {
                        continue;
                    };
                    let (state, worker, at_ms) = match s.status {
                        TaskStatus::Ready => ("ready", None, None),
                        TaskStatus::Delayed { until_ms } => ("delayed", None, Some(until_ms)),
                        TaskStatus::Leased {
                            worker,
                            expires_at_ms,
                            ..
                        } => ("leased", Some(worker), Some(expires_at_ms)),
                        TaskStatus::Acked => ("acked", None, None),
                        TaskStatus::DeadLettered { at_ms } => ("dead_lettered", None, Some(at_ms)),
                    };
                    t.groups.push(TaskGroupState {
                        group: g.clone(),
                        state: state.into(),
                        attempts: s.attempts,
                        worker,
                        at_ms,
                        failures: s.failures.len(),
                    });
                }
            }
        }
    }
    Ok(BrowsePage {
        topic: topic.into(),
        partition,
        from,
        log_start_offset: start,
        high_watermark: hw,
        node: api.settings().node_id,
        tasks,
    })
}

/// Produces one test task (producer id 0: not deduplicated), on the partition's leader.
pub async fn produce_task(
    api: &Api,
    topic: &str,
    req: ProduceTaskRequest,
    forwarded: bool,
) -> Result<ProducedTask, ApiError> {
    let partitions = {
        let g = api.meta().state().read();
        let m = g.metadata().ok_or_else(|| ApiError::Internal {
            reason: "metadata group holds no metadata state".into(),
        })?;
        m.topic(topic)
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: topic.into(),
            })?
            .partitions
            .len() as u32
    };
    let partition = match (req.partition, &req.key) {
        (Some(p), _) => p,
        (None, Some(k)) if partitions > 0 => {
            taskbroker_client::producer::partition_for_key(k.as_bytes(), partitions)
        }
        _ => 0,
    };
    let (_, remote) = partition_target(api, topic, partition, forwarded)?;
    if let Some(node) = remote {
        let body = serde_json::to_vec(&ProduceTaskRequest {
            partition: Some(partition),
            ..req
        })
        .map_err(|e| ApiError::Internal {
            reason: e.to_string(),
        })?;
        let path = format!("/api/v1/topics/{}/tasks", crate::ui::url_escape(topic));
        return forward(api, (topic, partition), node, "POST", &path, Some(&body)).await;
    }
    let now = api.now_ms();
    let mut record = TaskRecord::new(req.payload.into_bytes(), now);
    record.key = req.key.map(String::into_bytes);
    record.headers = req
        .headers
        .into_iter()
        .map(|(k, v)| Header::new(k, v.into_bytes()))
        .collect();
    record.priority = req.priority.unwrap_or(0);
    record.not_before_ms = req.delay_ms.filter(|d| *d > 0).map(|d| now + d);
    let mut b = BatchBuilder::new(0, 0, now);
    b.push(record).map_err(|e| ApiError::InvalidArgument {
        reason: e.to_string(),
    })?;
    let resp = api
        .clone()
        .produce(
            context::current(),
            ProduceRequest {
                topic: topic.into(),
                partition,
                batch: b.finish().into_bytes(),
            },
        )
        .await?;
    Ok(ProducedTask {
        topic: topic.into(),
        partition,
        offset: resp.base_offset,
    })
}

/// Every consumer group of every topic, `(topic, group, mode)`.
pub fn all_groups(api: &Api) -> Vec<(String, String, GroupMode)> {
    let g = api.meta().state().read();
    let Some(m) = g.metadata() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in m.topics() {
        for (name, mode) in m.groups(&t.name) {
            out.push((t.name.clone(), name.to_string(), wire_mode(mode)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodes_every_byte() {
        assert_eq!(hex(&[0, 15, 16, 255]), "000f10ff");
        assert_eq!(hex(b""), "");
    }
}
