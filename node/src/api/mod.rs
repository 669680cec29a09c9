//! The client API of a node: the [`BrokerApi`] tarpc service, one file per operation.
//!
//! # Invariants
//! - Every handler runs under a deadline ([`HANDLER_DEADLINE`], or the fetch wait plus it);
//!   a handler that runs out answers [`ApiError::Timeout`] (the outcome is unknown).
//! - Partition operations run on the partition's Raft leader only; any other node answers
//!   `NotLeader` with the leader it knows of (or the preferred replica as a hint when it hosts
//!   no replica), or `Unavailable` when no leader is known.
//! - Every `now_ms` written into a command comes from [`Env::clock`](crate::env::Env).
//!
//! # Design notes
//! - Metadata writes run on the metadata leader; other nodes forward the same call there over
//!   `BrokerApi` ([`crate::controller::Forwarder`]). One hop: a forwarded call that lands on a
//!   node that lost leadership meanwhile is forwarded again, bounded by the deadline.
//! - Queue operations of concurrent requests are gathered into one Raft entry per partition
//!   (`queue::Batcher`).
//! - Dead letters of topics with a dead-letter topic are forwarded there by the partition
//!   leader and requeued from there to their origin ([`forward_dead_letters`]).

mod dead_letter;
mod produce;
mod queue;
mod stream;
mod topics;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::Decoder;
use taskbroker_client::batch::BatchLimits;
use taskbroker_client::proto::{
    ApiError, BrokerApi, BrokerApiClient, ClusterMeta, ClusterStatus, FetchRequest, FetchResponse,
    GroupDescription, GroupMode, GroupPartitionState, NodeId, ProduceRequest, ProduceResponse,
    Settle, SettleRequest, SettleResponse, StreamFetchRequest, StreamFetchResponse, TopicMeta,
    TopicSpec,
};
use taskbroker_client::transport::BoxConn;
use taskbroker_raft::state_machine::metadata::{self as meta, MetadataState, TopicInfo};
use taskbroker_raft::{Group, GroupId, RaftError, RaftNode};

use crate::controller::Forwarder;
use crate::env::Clock;
use crate::http::Metrics;

/// Deadline of every handler (and of every proposal it makes): long enough for a leader
/// election (election timeout 1–2 s) plus a commit, short enough that a client retries soon.
pub const HANDLER_DEADLINE: Duration = Duration::from_secs(10);
/// Longest long-poll a fetch may ask for: a client's wait is clamped to it.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// How long an operation that fans out to partition leaders waits for a partition that has
/// no leader right now (elections take about one election timeout).
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// Most requests one client connection runs at once; more wait in the connection's buffer
/// (bounds memory and tasks per connection).
pub const REQUESTS_PER_CONNECTION_MAX: usize = 256;

/// What the API needs to know about this node.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// This node's id.
    pub node_id: NodeId,
    /// Initial peers (id -> listen address): the fallback address of a node that has not
    /// registered yet, and the Raft address of initial voters.
    pub peers: BTreeMap<NodeId, String>,
    /// Limits checked on every produced batch.
    pub limits: BatchLimits,
}

struct Inner {
    raft: Arc<RaftNode>,
    meta: Group,
    settings: ApiSettings,
    clock: Arc<dyn Clock>,
    forwarder: Forwarder,
    batchers: Mutex<BTreeMap<GroupId, queue::Batcher>>,
    /// Idempotent produces being proposed, by (group, producer id, first sequence): a retry
    /// that arrives while its original is still in flight waits for the original's answer
    /// instead of appending the batch a second time.
    produces_in_flight: Mutex<BTreeMap<(GroupId, u64, u64), produce::SharedProduce>>,
    /// Per partition group, the term in which this leader has applied every entry it
    /// inherited: from then on the applied duplicate table is complete.
    produce_ready_term: Mutex<BTreeMap<GroupId, u64>>,
    metrics: Arc<Metrics>,
    /// Serialises requeues from one dead-letter partition for one (topic, group).
    requeue_locks: Mutex<dead_letter::RequeueLocks>,
}

/// The node's [`BrokerApi`] implementation (cheap to clone).
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

/// Where a partition lives and who leads it, from the local metadata.
struct PartitionRoute {
    topic: TopicInfo,
    group_id: GroupId,
    replicas: Vec<NodeId>,
}

impl Api {
    /// The API of a node hosting `raft`, with the metadata group `meta` already open.
    pub fn new(
        raft: Arc<RaftNode>,
        meta: Group,
        settings: ApiSettings,
        clock: Arc<dyn Clock>,
        forwarder: Forwarder,
        metrics: Arc<Metrics>,
    ) -> Api {
        Api {
            inner: Arc::new(Inner {
                raft,
                meta,
                settings,
                clock,
                forwarder,
                batchers: Mutex::new(BTreeMap::new()),
                produces_in_flight: Mutex::new(BTreeMap::new()),
                produce_ready_term: Mutex::new(BTreeMap::new()),
                metrics,
                requeue_locks: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The multi-raft host.
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.inner.raft
    }

    /// The metadata group.
    pub fn meta(&self) -> &Group {
        &self.inner.meta
    }

    /// The clock every command timestamp comes from.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// This node's settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    /// Serves the client API on an accepted connection whose preamble said `Client`, until the
    /// peer closes it or sends a malformed frame (closed with a logged reason).
    pub async fn serve_connection(self, conn: BoxConn, peer: String) {
        use futures::StreamExt;
        let framed = taskbroker_client::proto::framing::codec().framed(conn);
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        let mut requests = BaseChannel::with_defaults(transport)
            .max_concurrent_requests(REQUESTS_PER_CONNECTION_MAX)
            .requests();
        let serve = self.serve();
        while let Some(request) = requests.next().await {
            match request {
                Ok(request) => {
                    tokio::spawn(request.execute(serve.clone()));
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing client connection: malformed or broken stream");
                    break;
                }
            }
        }
    }

    /// The local metadata state (read briefly).
    fn with_meta<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> Result<T, ApiError> {
        let guard = self.inner.meta.state().read();
        match guard.metadata() {
            Some(m) => Ok(f(m)),
            None => Err(ApiError::Internal {
                reason: "metadata group holds no metadata state".into(),
            }),
        }
    }

    /// The client address of `node`: registered, else its initial peer address.
    fn node_addr(&self, node: NodeId) -> Option<String> {
        let registered = self
            .with_meta(|m| m.node(node).map(|n| n.addr.clone()))
            .ok()
            .flatten();
        registered.or_else(|| self.inner.settings.peers.get(&node).cloned())
    }

    /// The Raft address of `node`: initial peers use their listed address (the metadata group
    /// was formed with it), later nodes their registered address.
    pub fn raft_addr(&self, node: NodeId) -> Option<String> {
        self.inner
            .settings
            .peers
            .get(&node)
            .cloned()
            .or_else(|| self.node_addr(node))
    }

    fn not_leader(&self, hint: Option<NodeId>) -> ApiError {
        match hint {
            Some(id) if id != self.inner.settings.node_id => ApiError::NotLeader {
                leader_hint: Some(id),
                leader_addr: self.node_addr(id),
            },
            _ => ApiError::Unavailable {
                reason: format!("no leader known (hint {hint:?})"),
            },
        }
    }

    /// Maps a replication error to what a client can act on.
    fn raft_err(&self, e: RaftError) -> ApiError {
        match e {
            RaftError::NotLeader { leader_hint, .. } => self.not_leader(leader_hint),
            RaftError::Unavailable { reason, .. } => ApiError::Unavailable { reason },
            RaftError::UnknownGroup(g) => ApiError::Unavailable {
                reason: format!("group {g} is not hosted here"),
            },
            RaftError::Stopped { reason, .. } => ApiError::Unavailable { reason },
            RaftError::Membership { reason, .. } => ApiError::Unavailable { reason },
            other => ApiError::Internal {
                reason: other.to_string(),
            },
        }
    }

    /// Proposes `cmd` on `group` with the handler deadline.
    async fn propose(
        &self,
        group: &Group,
        cmd: taskbroker_raft::Command,
    ) -> Result<taskbroker_raft::Response, ApiError> {
        match tokio::time::timeout(HANDLER_DEADLINE, group.write(cmd)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.raft_err(e)),
            Err(_) => Err(ApiError::Timeout),
        }
    }

    fn route(&self, topic: &str, partition: u32) -> Result<PartitionRoute, ApiError> {
        let info = self
            .with_meta(|m| m.topic(topic).cloned())?
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: topic.into(),
            })?;
        let p = info
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| ApiError::UnknownPartition {
                topic: topic.into(),
                partition,
            })?;
        Ok(PartitionRoute {
            topic: info,
            group_id: GroupId(p.group_id),
            replicas: p.replicas,
        })
    }

    /// The partition's group, if this node leads it; otherwise the error to answer.
    fn leader_group(&self, route: &PartitionRoute) -> Result<Group, ApiError> {
        match self.inner.raft.group(route.group_id) {
            Some(g) if g.is_leader() => Ok(g),
            Some(g) => Err(self.not_leader(g.leader())),
            None => Err(self.not_leader(route.replicas.first().copied())),
        }
    }

    /// The leader of a partition as this node knows it (the preferred replica when it hosts
    /// none).
    fn partition_leader(&self, group_id: GroupId, replicas: &[NodeId]) -> Option<NodeId> {
        match self.inner.raft.group(group_id) {
            Some(g) => g.leader(),
            None => replicas.first().copied(),
        }
    }

    /// As [`Api::partition_leader`], but waits up to [`LEADER_WAIT`] for a hosted group that
    /// has no leader right now (an election or a leadership transfer in progress).
    async fn partition_leader_wait(
        &self,
        group_id: GroupId,
        replicas: &[NodeId],
    ) -> Option<NodeId> {
        match self.inner.raft.group(group_id) {
            Some(g) => match g.leader() {
                Some(l) => Some(l),
                None => g.wait_for_leader(LEADER_WAIT).await,
            },
            None => replicas.first().copied(),
        }
    }

    /// Runs `local` if this node leads the metadata group, else forwards with `remote` to the
    /// metadata leader.
    async fn on_controller<T, L, R, Fut>(&self, local: L, remote: R) -> Result<T, ApiError>
    where
        L: Future<Output = Result<T, ApiError>>,
        R: FnOnce(BrokerApiClient, Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, tarpc::client::RpcError>>,
    {
        if self.inner.meta.is_leader() {
            return local.await;
        }
        let leader = self
            .inner
            .meta
            .leader()
            .filter(|l| *l != self.inner.settings.node_id)
            .ok_or_else(|| ApiError::Unavailable {
                reason: "no metadata leader".into(),
            })?;
        let addr = self
            .node_addr(leader)
            .ok_or_else(|| ApiError::Unavailable {
                reason: format!("no address known for metadata leader {leader}"),
            })?;
        self.forwarder()
            .call(leader, &addr, HANDLER_DEADLINE, remote)
            .await
    }
}

/// Runs a handler and records its latency, count and error kind under `api`.
async fn observed<T>(
    metrics: Arc<Metrics>,
    api: &'static str,
    f: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let start = tokio::time::Instant::now();
    let r = f.await;
    metrics.observe_request(api, start.elapsed(), &r);
    r
}

pub use dead_letter::forward_loop as forward_dead_letters;

/// Runs a handler under `deadline`.
async fn deadline<T>(
    d: Duration,
    f: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or(Err(ApiError::Timeout))
}

fn to_raft_mode(m: GroupMode) -> meta::GroupMode {
    match m {
        GroupMode::Queue => meta::GroupMode::Queue,
        GroupMode::Stream => meta::GroupMode::Stream,
    }
}

fn from_raft_mode(m: meta::GroupMode) -> GroupMode {
    match m {
        meta::GroupMode::Queue => GroupMode::Queue,
        meta::GroupMode::Stream => GroupMode::Stream,
    }
}

impl BrokerApi for Api {
    async fn metadata(self, _: Context, topics: Vec<String>) -> Result<ClusterMeta, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "metadata",
            deadline(HANDLER_DEADLINE, self.do_metadata(topics)),
        )
        .await
    }

    async fn create_topic(
        self,
        _: Context,
        name: String,
        spec: TopicSpec,
    ) -> Result<TopicMeta, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "create_topic",
            deadline(HANDLER_DEADLINE, self.do_create_topic(name, spec)),
        )
        .await
    }

    async fn delete_topic(self, _: Context, name: String) -> Result<(), ApiError> {
        observed(
            self.inner.metrics.clone(),
            "delete_topic",
            deadline(HANDLER_DEADLINE, self.do_delete_topic(name)),
        )
        .await
    }

    async fn add_partitions(
        self,
        _: Context,
        name: String,
        count: u32,
    ) -> Result<TopicMeta, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "add_partitions",
            deadline(HANDLER_DEADLINE, self.do_add_partitions(name, count)),
        )
        .await
    }

    async fn create_group(
        self,
        _: Context,
        topic: String,
        group: String,
        mode: GroupMode,
    ) -> Result<(), ApiError> {
        observed(
            self.inner.metrics.clone(),
            "create_group",
            deadline(HANDLER_DEADLINE, self.do_create_group(topic, group, mode)),
        )
        .await
    }

    async fn produce(self, _: Context, req: ProduceRequest) -> Result<ProduceResponse, ApiError> {
        let r = observed(
            self.inner.metrics.clone(),
            "produce",
            deadline(HANDLER_DEADLINE, self.do_produce(req)),
        )
        .await;
        if let Ok(p) = &r {
            if !p.duplicate {
                self.inner
                    .metrics
                    .count_tasks("produced", u64::from(p.count));
            }
        }
        r
    }

    async fn fetch(self, _: Context, req: FetchRequest) -> Result<FetchResponse, ApiError> {
        let wait = Duration::from_millis(req.wait_ms.min(FETCH_WAIT_MS_MAX));
        let r = observed(
            self.inner.metrics.clone(),
            "fetch",
            deadline(HANDLER_DEADLINE + wait, self.do_fetch(req)),
        )
        .await;
        if let Ok(f) = &r {
            self.inner
                .metrics
                .count_tasks("leased", f.leases.len() as u64);
        }
        r
    }

    async fn settle(self, _: Context, req: SettleRequest) -> Result<SettleResponse, ApiError> {
        let kinds: Vec<&'static str> = req
            .items
            .iter()
            .map(|(_, s)| match s {
                Settle::Ack => "acked",
                Settle::Nack { .. } => "nacked",
                Settle::Extend { .. } => "extended",
            })
            .collect();
        let r = observed(
            self.inner.metrics.clone(),
            "settle",
            deadline(HANDLER_DEADLINE, self.do_settle(req)),
        )
        .await;
        if let Ok(results) = &r {
            for (kind, res) in kinds.iter().zip(results) {
                if res.is_ok() {
                    self.inner.metrics.count_tasks(kind, 1);
                }
            }
        }
        r
    }

    async fn stream_fetch(
        self,
        _: Context,
        req: StreamFetchRequest,
    ) -> Result<StreamFetchResponse, ApiError> {
        let wait = Duration::from_millis(req.wait_ms.min(FETCH_WAIT_MS_MAX));
        let r = observed(
            self.inner.metrics.clone(),
            "stream_fetch",
            deadline(HANDLER_DEADLINE + wait, self.do_stream_fetch(req)),
        )
        .await;
        if let Ok(f) = &r {
            let n = f
                .batches
                .iter()
                .map(|b| u64::from(taskbroker_raft::codec::batch_record_count(&b.bytes)))
                .sum();
            self.inner.metrics.count_tasks("streamed", n);
        }
        r
    }

    async fn commit_offset(
        self,
        _: Context,
        topic: String,
        partition: u32,
        group: String,
        offset: u64,
    ) -> Result<(), ApiError> {
        observed(
            self.inner.metrics.clone(),
            "commit_offset",
            deadline(
                HANDLER_DEADLINE,
                self.do_commit_offset(topic, partition, group, offset),
            ),
        )
        .await
    }

    async fn describe_group(
        self,
        _: Context,
        topic: String,
        group: String,
    ) -> Result<GroupDescription, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "describe_group",
            deadline(HANDLER_DEADLINE, self.do_describe_group(topic, group)),
        )
        .await
    }

    async fn requeue_dead_letters(
        self,
        _: Context,
        topic: String,
        group: String,
    ) -> Result<u64, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "requeue_dead_letters",
            deadline(HANDLER_DEADLINE, self.do_requeue(topic, group)),
        )
        .await
    }

    async fn cluster_status(self, _: Context) -> Result<ClusterStatus, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "cluster_status",
            deadline(HANDLER_DEADLINE, self.do_cluster_status()),
        )
        .await
    }

    async fn replica_lag(self, _: Context) -> Result<Vec<(String, u32, NodeId, u64)>, ApiError> {
        observed(self.inner.metrics.clone(), "replica_lag", async {
            Ok(self.led_replica_lag())
        })
        .await
    }

    async fn register_node(
        self,
        _: Context,
        id: NodeId,
        addr: String,
        http_addr: Option<String>,
    ) -> Result<(), ApiError> {
        observed(
            self.inner.metrics.clone(),
            "register_node",
            deadline(HANDLER_DEADLINE, self.do_register_node(id, addr, http_addr)),
        )
        .await
    }

    async fn describe_partitions(
        self,
        _: Context,
        topic: String,
        group: String,
        partitions: Vec<u32>,
    ) -> Result<Vec<Result<GroupPartitionState, ApiError>>, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "describe_partitions",
            deadline(HANDLER_DEADLINE, async {
                Ok(partitions
                    .into_iter()
                    .map(|p| self.local_partition_state(&topic, &group, p))
                    .collect())
            }),
        )
        .await
    }

    async fn requeue_dead_letter_partition(
        self,
        _: Context,
        dead_letter_topic: String,
        partition: u32,
        topic: String,
        group: String,
    ) -> Result<u64, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "requeue_dead_letter_partition",
            deadline(
                HANDLER_DEADLINE,
                self.requeue_dead_letter_partition_local(
                    &dead_letter_topic,
                    partition,
                    &topic,
                    &group,
                ),
            ),
        )
        .await
    }

    async fn requeue_partitions(
        self,
        _: Context,
        topic: String,
        group: String,
        partitions: Vec<u32>,
    ) -> Result<Vec<Result<u64, ApiError>>, ApiError> {
        observed(
            self.inner.metrics.clone(),
            "requeue_partitions",
            deadline(HANDLER_DEADLINE, async {
                let mut out = Vec::with_capacity(partitions.len());
                for p in partitions {
                    out.push(self.requeue_local(&topic, &group, p).await);
                }
                Ok(out)
            }),
        )
        .await
    }
}
