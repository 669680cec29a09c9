//! The client API between workers/producers/admins and broker nodes: a tarpc service
//! ([`BrokerApi`]), its messages, and typed error codes ([`ApiError`]).
//!
//! These types are the wire contract; the worker-facing API of this crate wraps them and never
//! exposes tarpc. A connection carrying this service starts with the
//! [`Preamble`](crate::transport::Preamble) `ConnKind::Client`, then length-delimited bincode
//! frames (see [`framing`]).
//!
//! # Design notes
//! - Produce carries one encoded record batch for one partition, unchanged from the producer
//!   ([`crate::batch`]); the broker validates and stores it as is.
//! - Fetch returns the stored batches that hold the leased tasks, plus one [`Lease`] per task:
//!   the client reads the records in place, the broker never re-encodes.
//! - Every call names its partition explicitly; routing is the client's job (metadata from any
//!   node, `NotLeader` corrects it).

pub mod framing;
pub mod headers;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node id.
pub type NodeId = u64;

/// Typed errors a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// This node does not lead the partition (or the metadata group); try `leader_hint`.
    #[error("not the leader; leader is {leader_hint:?} at {leader_addr:?}")]
    NotLeader {
        /// The leader this node knows of.
        leader_hint: Option<NodeId>,
        /// Its client address, if known.
        leader_addr: Option<String>,
    },
    /// No such topic.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// No such partition of an existing topic.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// No such consumer group on the topic.
    #[error("unknown group {group:?} on topic {topic:?}")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// The record batch failed validation.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// Why.
        reason: String,
    },
    /// A task or batch exceeds the configured maximum.
    #[error("too large: {size} bytes, max {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The lease token is not the current lease of the task (expired and redelivered, or done).
    #[error("stale lease for offset {offset}")]
    StaleLease {
        /// The task's offset.
        offset: u64,
    },
    /// A topic with this name exists with another configuration.
    #[error("topic {topic:?} exists with another configuration")]
    TopicConflict {
        /// The topic.
        topic: String,
    },
    /// The request is malformed or not allowed.
    #[error("invalid request: {reason}")]
    InvalidArgument {
        /// Why.
        reason: String,
    },
    /// No quorum or no leader right now; retry later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The operation did not finish in time; its outcome is unknown.
    #[error("timed out")]
    Timeout,
    /// A bug or an unexpected failure on the node.
    #[error("internal error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
}

impl ApiError {
    /// Whether retrying (after refreshing metadata, or later) may succeed.
    ///
    /// ```
    /// use taskbroker_client::proto::ApiError;
    /// assert!(ApiError::Timeout.is_retryable());
    /// assert!(!ApiError::UnknownTopic { topic: "t".into() }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. } | ApiError::Unavailable { .. } | ApiError::Timeout
        )
    }
}

/// Consumer group delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum GroupMode {
    /// Work queue: tasks leased to any number of workers, acked individually.
    #[default]
    Queue,
    /// Ordered consumption with committed offsets.
    Stream,
}

/// Topic settings (absent fields take the broker's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicSpec {
    /// Partitions (default 12).
    pub partitions: Option<u32>,
    /// Replication factor (default min(3, nodes)).
    pub replication_factor: Option<u32>,
    /// Time retention, ms.
    pub retention_ms: Option<u64>,
    /// Size retention per partition, bytes.
    pub retention_bytes: Option<u64>,
    /// Default visibility timeout, ms (default 30 s).
    pub visibility_timeout_ms: Option<u64>,
    /// Deliveries before dead-lettering (default 5; 0 = unlimited).
    pub max_attempts: Option<u32>,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

/// One partition as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Partition number.
    pub partition: u32,
    /// Replica node ids (first = preferred leader).
    pub replicas: Vec<NodeId>,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
}

/// A topic as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Resolved settings.
    pub partitions: Vec<PartitionMeta>,
    /// Replication factor.
    pub replication_factor: u32,
    /// Retention, ms.
    pub retention_ms: Option<u64>,
    /// Retention, bytes per partition.
    pub retention_bytes: Option<u64>,
    /// Default visibility timeout, ms.
    pub visibility_timeout_ms: u64,
    /// Max attempts.
    pub max_attempts: u32,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

/// A node as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Id.
    pub id: NodeId,
    /// Client API address.
    pub addr: String,
    /// HTTP address, if known.
    pub http_addr: Option<String>,
}

/// Routing information: any node answers; `NotLeader` errors correct stale answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// Metadata version (grows with every change).
    pub version: u64,
    /// The metadata leader (controller), if known.
    pub controller: Option<NodeId>,
    /// Nodes.
    pub nodes: Vec<NodeMeta>,
    /// Topics (all, or those asked for).
    pub topics: Vec<TopicMeta>,
}

/// Produce one batch to one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProduceRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The encoded record batch ([`crate::batch::EncodedBatch`] bytes).
    pub batch: Bytes,
}

/// Where a produced batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProduceResponse {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Records in the batch.
    pub count: u32,
    /// True if this was a retry of a batch already stored (nothing stored again).
    pub duplicate: bool,
}

/// A lease on one task: present it to ack, nack or extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    /// The task's offset in its partition.
    pub offset: u64,
    /// Delivery attempt (1 for the first delivery).
    pub attempt: u32,
    /// Lease epoch, unique per partition: a fencing token.
    pub epoch: u64,
}

/// One leased task (its record is in one of the response's batches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Token.
    pub token: LeaseToken,
    /// When the lease expires (leader's clock, ms since the epoch).
    pub expires_at_ms: u64,
}

/// Lease up to `max_tasks` tasks of one partition for a queue group (long-polls up to
/// `wait_ms` when none is ready).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Consumer group (created as a queue group on first use).
    pub group: String,
    /// Worker id (for display and diagnostics).
    pub worker: String,
    /// Most tasks to lease.
    pub max_tasks: u32,
    /// Lease length; `None` = the topic's default.
    pub visibility_timeout_ms: Option<u64>,
    /// How long to wait for a task when none is ready, ms.
    pub wait_ms: u64,
}

/// A stored batch, exactly as the producer encoded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBatch {
    /// Offset of its first record.
    pub base_offset: u64,
    /// The batch bytes.
    pub bytes: Bytes,
}

/// Leased tasks.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FetchResponse {
    /// Leases, one per task, in offset order within priority.
    pub leases: Vec<Lease>,
    /// The batches that hold the leased tasks.
    pub batches: Vec<StoredBatch>,
}

/// What to do with a leased task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Done: delete it for this group.
    Ack,
    /// Failed: release it for redelivery after `retry_after_ms` (`None`: the backoff policy).
    Nack {
        /// Delay before redelivery, ms.
        retry_after_ms: Option<u64>,
        /// Why it failed (kept in the failure history).
        reason: Option<String>,
    },
    /// Still working: extend the lease by `visibility_timeout_ms` from now.
    Extend {
        /// New lease length, ms.
        visibility_timeout_ms: u64,
    },
}

/// Settle several leases of one partition at once (acks are batched).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettleRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Group.
    pub group: String,
    /// The leases and what to do with each.
    pub items: Vec<(LeaseToken, Settle)>,
}

/// One result per settled item, in order (`Err(StaleLease)` for a stale token).
pub type SettleResponse = Vec<Result<(), ApiError>>;

/// Read a stream group's partition from an offset (no leases).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamFetchRequest {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Most bytes of batches to return (at least one batch is returned if any).
    pub max_bytes: u32,
    /// How long to wait when nothing is there, ms.
    pub wait_ms: u64,
}

/// Batches from a partition, in offset order.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StreamFetchResponse {
    /// Batches (the first may start before the requested offset).
    pub batches: Vec<StoredBatch>,
    /// The partition's committed high watermark (next offset).
    pub high_watermark: u64,
}

/// Per-partition state of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupPartitionState {
    /// Partition.
    pub partition: u32,
    /// Ready to lease.
    pub ready: u64,
    /// Waiting for a not-before or retry time.
    pub delayed: u64,
    /// Leased now.
    pub in_flight: u64,
    /// Acked since the group was created.
    pub acked_total: u64,
    /// Current dead letters.
    pub dead_letters: u64,
    /// Not done yet (queue) or not consumed (stream).
    pub lag: u64,
    /// Stream groups: committed offset.
    pub committed_offset: Option<u64>,
    /// The partition's next offset.
    pub high_watermark: u64,
}

/// A consumer group's state on a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Mode.
    pub mode: GroupMode,
    /// Per partition.
    pub partitions: Vec<GroupPartitionState>,
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Metadata.
    pub meta: ClusterMeta,
    /// Replicas that are behind their leader (topic, partition, node, entries behind).
    pub lagging_replicas: Vec<(String, u32, NodeId, u64)>,
}

/// The broker's client API.
#[tarpc::service]
pub trait BrokerApi {
    /// Routing information (all topics when `topics` is empty).
    async fn metadata(topics: Vec<String>) -> Result<ClusterMeta, ApiError>;
    /// Creates a topic (idempotent with the same settings); any node forwards to the controller.
    async fn create_topic(name: String, spec: TopicSpec) -> Result<TopicMeta, ApiError>;
    /// Deletes a topic.
    async fn delete_topic(name: String) -> Result<(), ApiError>;
    /// Adds partitions to a topic.
    async fn add_partitions(name: String, count: u32) -> Result<TopicMeta, ApiError>;
    /// Creates (or checks the mode of) a consumer group.
    async fn create_group(topic: String, group: String, mode: GroupMode) -> Result<(), ApiError>;
    /// Appends a batch to a partition (leader only); answered after commit.
    async fn produce(req: ProduceRequest) -> Result<ProduceResponse, ApiError>;
    /// Leases tasks of a partition for a queue group (leader only).
    async fn fetch(req: FetchRequest) -> Result<FetchResponse, ApiError>;
    /// Acks, nacks or extends leases of a partition (leader only).
    async fn settle(req: SettleRequest) -> Result<SettleResponse, ApiError>;
    /// Reads a partition from an offset (stream groups).
    async fn stream_fetch(req: StreamFetchRequest) -> Result<StreamFetchResponse, ApiError>;
    /// Commits a stream group's offset on a partition (leader only).
    async fn commit_offset(
        topic: String,
        partition: u32,
        group: String,
        offset: u64,
    ) -> Result<(), ApiError>;
    /// A group's state on every partition of its topic.
    async fn describe_group(topic: String, group: String) -> Result<GroupDescription, ApiError>;
    /// Moves dead letters of a group back to ready (all partitions), and requeues its dead
    /// letters from the topic's dead-letter topic back to the topic; returns how many.
    async fn requeue_dead_letters(topic: String, group: String) -> Result<u64, ApiError>;
    /// Nodes, controller, partition leaders and lagging replicas of every partition (the
    /// answering node asks each partition's leader).
    async fn cluster_status() -> Result<ClusterStatus, ApiError>;
    /// **Internal (node to node)**: registers a node's addresses in the cluster metadata; a node
    /// that is not the metadata leader forwards it there. Clients have no use for it.
    async fn register_node(
        id: NodeId,
        addr: String,
        http_addr: Option<String>,
    ) -> Result<(), ApiError>;
    /// **Internal (node to node)**: a group's state on the given partitions, answered from the
    /// replicas hosted on the called node (one result per partition, in order).
    async fn describe_partitions(
        topic: String,
        group: String,
        partitions: Vec<u32>,
    ) -> Result<Vec<Result<GroupPartitionState, ApiError>>, ApiError>;
    /// **Internal (node to node)**: the lagging followers (topic, partition, node, entries
    /// behind) of the partitions the called node leads; `cluster_status` gathers them from
    /// every node.
    async fn replica_lag() -> Result<Vec<(String, u32, NodeId, u64)>, ApiError>;
    /// **Internal (node to node)**: requeues the dead letters of (`topic`, `group`) held in
    /// partition `partition` of `topic`'s dead-letter topic `dead_letter_topic` back to `topic`;
    /// the called node must lead that partition. Returns how many moved.
    async fn requeue_dead_letter_partition(
        dead_letter_topic: String,
        partition: u32,
        topic: String,
        group: String,
    ) -> Result<u64, ApiError>;
    /// **Internal (node to node)**: requeues a group's dead letters on the given partitions,
    /// which the called node must lead (one count or error per partition, in order).
    async fn requeue_partitions(
        topic: String,
        group: String,
        partitions: Vec<u32>,
    ) -> Result<Vec<Result<u64, ApiError>>, ApiError>;
}
