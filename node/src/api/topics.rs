//! Metadata operations: routing metadata, cluster status, topics, groups, node registration.
//!
//! Reads answer from the local metadata replica (any node); writes run on the metadata leader
//! (forwarded there by other nodes), which fills in defaults, places partitions and proposes.

use std::collections::BTreeMap;
use std::time::Duration;

use taskbroker_client::proto::{
    ApiError, ClusterMeta, ClusterStatus, GroupMode, NodeId, NodeMeta, PartitionMeta, TopicMeta,
    TopicSpec,
};

use taskbroker_raft::state_machine::metadata::{
    MetaCommand, MetaError, MetaResponse, MetadataState, NodeInfo, TopicConfig, TopicInfo,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PARTITIONS, DEFAULT_REPLICATION_FACTOR,
    DEFAULT_VISIBILITY_TIMEOUT_MS,
};
use taskbroker_raft::state_machine::placement::{place, PlacementError};
use taskbroker_raft::{Command, GroupId, Response};

use super::{to_raft_mode, Api};

/// A follower this many entries behind its leader is reported as lagging: below it, lag is
/// normal in-flight replication.
pub const LAGGING_REPLICA_ENTRIES_MIN: u64 = 100;
/// How long `cluster status` waits for another node's replica lag.
pub const STATUS_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a node waits for its own metadata replica to show a write it forwarded.
const LOCAL_META_WAIT: Duration = Duration::from_secs(5);

fn meta_err(e: MetaError) -> ApiError {
    match e {
        MetaError::TopicConflict { name, .. } => ApiError::TopicConflict { topic: name },
        MetaError::UnknownTopic { name } => ApiError::UnknownTopic { topic: name },
        MetaError::UnknownGroup { topic, group } => ApiError::UnknownGroup { topic, group },
        other => ApiError::InvalidArgument {
            reason: other.to_string(),
        },
    }
}

impl Api {
    fn topic_meta(&self, t: &TopicInfo) -> TopicMeta {
        TopicMeta {
            name: t.name.clone(),
            partitions: t
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    partition: p.partition,
                    replicas: p.replicas.clone(),
                    leader: self.partition_leader(GroupId(p.group_id), &p.replicas),
                })
                .collect(),
            replication_factor: t.config.replication_factor,
            retention_ms: t.config.retention_ms,
            retention_bytes: t.config.retention_bytes,
            visibility_timeout_ms: t.config.visibility_timeout_ms,
            max_attempts: t.config.max_attempts,
            dead_letter_topic: t.config.dead_letter_topic.clone(),
        }
    }

    /// Routing metadata from the local replica.
    pub(super) fn cluster_meta(&self, topics: &[String]) -> Result<ClusterMeta, ApiError> {
        let (version, nodes, infos) = self.with_meta(|m| {
            let nodes: Vec<NodeMeta> = m
                .nodes()
                .map(|n| NodeMeta {
                    id: n.id,
                    addr: n.addr.clone(),
                    http_addr: n.http_addr.clone(),
                })
                .collect();
            let infos: Vec<TopicInfo> = m
                .topics()
                .filter(|t| topics.is_empty() || topics.contains(&t.name))
                .cloned()
                .collect();
            (m.version(), nodes, infos)
        })?;
        Ok(ClusterMeta {
            version,
            controller: self.meta().leader(),
            nodes,
            topics: infos.iter().map(|t| self.topic_meta(t)).collect(),
        })
    }

    /// Routing metadata for a client: from the local replica, unless it lacks a topic asked for
    /// by name. Then the local replica may just be behind (the topic was created through another
    /// node a moment ago), so the metadata leader answers instead; a topic unknown there is
    /// really unknown. Without a reachable leader the local view is the answer.
    pub(super) async fn do_metadata(&self, topics: Vec<String>) -> Result<ClusterMeta, ApiError> {
        let local = self.cluster_meta(&topics)?;
        let complete = topics
            .iter()
            .all(|name| local.topics.iter().any(|t| &t.name == name));
        if complete || self.meta().is_leader() {
            return Ok(local);
        }
        let asked = topics.clone();
        match self
            .on_controller(async { Ok(local.clone()) }, |c, ctx| async move {
                c.metadata(ctx, asked).await
            })
            .await
        {
            Ok(fresh) => Ok(fresh),
            Err(e) => {
                tracing::debug!(error = %e, "metadata leader not reached for a missing topic");
                Ok(local)
            }
        }
    }

    /// Lagging followers of the partitions this node leads: (topic, partition, node, entries
    /// behind).
    pub(super) fn led_replica_lag(&self) -> Vec<(String, u32, NodeId, u64)> {
        let mut lagging = Vec::new();
        for gid in self.raft().led_groups() {
            if gid.is_metadata() {
                continue;
            }
            let Some(g) = self.raft().group(gid) else {
                continue;
            };
            let m = g.metrics();
            if !m.is_leader {
                continue;
            }
            let Some(topic) = self
                .with_meta(|s| s.partition_by_group_id(gid.0).map(|(t, _)| t.name.clone()))
                .ok()
                .flatten()
            else {
                continue;
            };
            for (node, lag) in m.follower_lag {
                if lag >= LAGGING_REPLICA_ENTRIES_MIN {
                    lagging.push((topic.clone(), gid.partition(), node, lag));
                }
            }
        }
        lagging
    }

    /// Cluster status with the lagging replicas of every partition: each partition's lag is
    /// known to its leader, so every other registered node is asked for the partitions it
    /// leads (in parallel, [`STATUS_PEER_TIMEOUT`] each). A node that does not answer is
    /// skipped: the partitions it led have new leaders, which report it as lagging.
    pub(super) async fn do_cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let meta = self.cluster_meta(&[])?;
        let me = self.settings().node_id;
        let asks = meta.nodes.iter().filter(|n| n.id != me).map(|n| {
            let (id, addr) = (n.id, n.addr.clone());
            async move {
                self.forwarder()
                    .call(id, &addr, STATUS_PEER_TIMEOUT, |c, ctx| async move {
                        c.replica_lag(ctx).await
                    })
                    .await
                    .map_err(|e| tracing::debug!(node = id, error = %e, "no replica lag from node"))
                    .unwrap_or_default()
            }
        });
        let remote = futures::future::join_all(asks).await;
        // One entry per (topic, partition, node); two nodes that both believe they lead (one of
        // them stale) may both answer: keep the larger lag.
        let mut lag: BTreeMap<(String, u32, NodeId), u64> = BTreeMap::new();
        for (topic, partition, node, behind) in self
            .led_replica_lag()
            .into_iter()
            .chain(remote.into_iter().flatten())
        {
            let e = lag.entry((topic, partition, node)).or_insert(0);
            *e = (*e).max(behind);
        }
        Ok(ClusterStatus {
            meta,
            lagging_replicas: lag.into_iter().map(|((t, p, n), l)| (t, p, n, l)).collect(),
        })
    }

    /// Proposes a metadata command on this node (the metadata leader).
    async fn meta_write(&self, cmd: MetaCommand) -> Result<MetaResponse, ApiError> {
        let meta = self.meta().clone();
        match self.propose(&meta, Command::Meta(cmd)).await? {
            Response::Meta(MetaResponse::Err(e)) => Err(meta_err(e)),
            Response::Meta(r) => Ok(r),
            other => Err(ApiError::Internal {
                reason: format!("unexpected metadata response {other}"),
            }),
        }
    }

    pub(super) async fn do_register_node(
        &self,
        id: NodeId,
        addr: String,
        http_addr: Option<String>,
    ) -> Result<(), ApiError> {
        let (a, h) = (addr.clone(), http_addr.clone());
        self.on_controller(
            async {
                self.meta_write(MetaCommand::RegisterNode(NodeInfo {
                    id,
                    addr,
                    http_addr,
                }))
                .await
                .map(|_| ())
            },
            |c, ctx| async move { c.register_node(ctx, id, a, h).await },
        )
        .await
    }

    /// Registration used by the controller's registration loop.
    pub async fn register_node_via_controller(
        &self,
        id: NodeId,
        addr: String,
        http_addr: Option<String>,
    ) -> Result<(), ApiError> {
        super::deadline(
            super::HANDLER_DEADLINE,
            self.do_register_node(id, addr, http_addr),
        )
        .await
    }

    /// Too few registered nodes is retryable while the initial peers are still registering.
    fn placement_err(&self, e: PlacementError) -> ApiError {
        let forming = match &e {
            PlacementError::NoNodes => true,
            PlacementError::NotEnoughNodes { replication, .. } => {
                *replication as usize <= self.settings().peers.len()
            }
            PlacementError::ZeroReplication => false,
        };
        if forming {
            ApiError::Unavailable {
                reason: format!("{e} (nodes are still registering)"),
            }
        } else {
            ApiError::InvalidArgument {
                reason: e.to_string(),
            }
        }
    }

    fn resolve_spec(&self, spec: &TopicSpec, nodes: usize) -> TopicConfig {
        let default_rf = DEFAULT_REPLICATION_FACTOR.min(u32::try_from(nodes).unwrap_or(u32::MAX));
        TopicConfig {
            partitions: spec.partitions.unwrap_or(DEFAULT_PARTITIONS),
            replication_factor: spec.replication_factor.unwrap_or(default_rf.max(1)),
            retention_ms: spec.retention_ms,
            retention_bytes: spec.retention_bytes,
            visibility_timeout_ms: spec
                .visibility_timeout_ms
                .unwrap_or(DEFAULT_VISIBILITY_TIMEOUT_MS),
            max_attempts: spec.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            dead_letter_topic: spec.dead_letter_topic.clone(),
        }
    }

    async fn create_topic_local(
        &self,
        name: String,
        spec: TopicSpec,
    ) -> Result<TopicMeta, ApiError> {
        let (nodes, load, existing) = self.with_meta(|m| {
            (
                m.nodes().map(|n| n.id).collect::<Vec<_>>(),
                m.node_load(),
                m.topic(&name).cloned(),
            )
        })?;
        let config = self.resolve_spec(&spec, nodes.len());
        // Always proposed, even when the local state already has the topic: this node's state
        // may be stale (a deposed leader that has not noticed yet, or a new leader that has not
        // applied what it inherited), and answering from it is not linearizable (the simulation
        // found a create answered from a stale state). The state machine decides by existence
        // first: the same settings answer `AlreadyExists`, others `TopicConflict`.
        let placement = match place(&nodes, &load, config.partitions, config.replication_factor) {
            Ok(p) => p,
            // The placement is unused if the topic exists; if it does not, the state machine
            // refuses the empty placement.
            Err(_) if existing.is_some() => Vec::new(),
            Err(e) => return Err(self.placement_err(e)),
        };
        let r = self
            .meta_write(MetaCommand::CreateTopic {
                name,
                config,
                placement,
                now_ms: self.now_ms(),
            })
            .await?;
        match r {
            MetaResponse::TopicCreated(t) | MetaResponse::AlreadyExists(t) => {
                Ok(self.topic_meta(&t))
            }
            other => Err(ApiError::Internal {
                reason: format!("unexpected create-topic response {other:?}"),
            }),
        }
    }

    pub(super) async fn do_create_topic(
        &self,
        name: String,
        spec: TopicSpec,
    ) -> Result<TopicMeta, ApiError> {
        let (n, s) = (name.clone(), spec.clone());
        let r = self
            .on_controller(
                self.create_topic_local(name.clone(), spec),
                |c, ctx| async move { c.create_topic(ctx, n, s).await },
            )
            .await?;
        self.await_local_meta(|m| m.topic(&name).is_some()).await;
        Ok(r)
    }

    pub(super) async fn do_delete_topic(&self, name: String) -> Result<(), ApiError> {
        let n = name.clone();
        self.on_controller(
            async {
                self.meta_write(MetaCommand::DeleteTopic { name: name.clone() })
                    .await
                    .map(|_| ())
            },
            |c, ctx| async move { c.delete_topic(ctx, n).await },
        )
        .await?;
        self.await_local_meta(|m| m.topic(&name).is_none()).await;
        Ok(())
    }

    /// Read-your-writes through this node: after a metadata write forwarded to the leader
    /// succeeded, waits (bounded) until this node's own copy of the metadata shows it, so a
    /// describe or list sent to the same node right after sees the change. Returns at once on
    /// the leader (it applied the write before answering); after the bound it returns anyway
    /// (the write is committed; only this replica is slow).
    async fn await_local_meta(&self, done: impl Fn(&MetadataState) -> bool) {
        let deadline = tokio::time::Instant::now() + LOCAL_META_WAIT;
        while !self.with_meta(&done).unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!("local metadata did not show a forwarded write in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A write through the metadata log (this node's own registration, unchanged): once it is
    /// applied here, the local state holds everything committed before it, so a read of it is
    /// linearizable.
    async fn meta_barrier(&self) -> Result<(), ApiError> {
        let id = self.settings().node_id;
        let me = self
            .with_meta(|m| m.node(id).cloned())?
            .ok_or_else(|| ApiError::Unavailable {
                reason: format!("node {id} is not registered yet"),
            })?;
        self.meta_write(MetaCommand::RegisterNode(me))
            .await
            .map(|_| ())
    }

    async fn add_partitions_local(&self, name: String, count: u32) -> Result<TopicMeta, ApiError> {
        if self.with_meta(|m| m.topic(&name).is_none())? {
            // Not in the local state, which may be stale: look again after a barrier.
            self.meta_barrier().await?;
        }
        let (nodes, load, topic) = self.with_meta(|m| {
            (
                m.nodes().map(|n| n.id).collect::<Vec<_>>(),
                m.node_load(),
                m.topic(&name).cloned(),
            )
        })?;
        let topic = topic.ok_or_else(|| ApiError::UnknownTopic {
            topic: name.clone(),
        })?;
        let placement =
            place(&nodes, &load, count, topic.config.replication_factor).map_err(|e| {
                ApiError::InvalidArgument {
                    reason: e.to_string(),
                }
            })?;
        self.meta_write(MetaCommand::AddPartitions {
            name: name.clone(),
            placement,
        })
        .await?;
        let t = self
            .with_meta(|m| m.topic(&name).cloned())?
            .ok_or(ApiError::UnknownTopic { topic: name })?;
        Ok(self.topic_meta(&t))
    }

    pub(super) async fn do_add_partitions(
        &self,
        name: String,
        count: u32,
    ) -> Result<TopicMeta, ApiError> {
        let n = name.clone();
        let r = self
            .on_controller(
                self.add_partitions_local(name.clone(), count),
                |c, ctx| async move { c.add_partitions(ctx, n, count).await },
            )
            .await?;
        let want = r.partitions.len() as u32;
        self.await_local_meta(|m| {
            m.topic(&name)
                .is_some_and(|t| t.partitions.len() as u32 >= want)
        })
        .await;
        Ok(r)
    }

    pub(super) async fn do_create_group(
        &self,
        topic: String,
        group: String,
        mode: GroupMode,
    ) -> Result<(), ApiError> {
        // Already there with this mode: nothing to write (the common case of every fetch).
        let existing = self.with_meta(|m| m.group_mode(&topic, &group))?;
        if existing == Some(to_raft_mode(mode)) {
            return Ok(());
        }
        let (t, g) = (topic.clone(), group.clone());
        self.on_controller(
            async {
                self.meta_write(MetaCommand::CreateGroup {
                    topic: topic.clone(),
                    group: group.clone(),
                    mode: to_raft_mode(mode),
                })
                .await
                .map(|_| ())
            },
            |c, ctx| async move { c.create_group(ctx, t, g, mode).await },
        )
        .await?;
        self.await_local_meta(|m| m.group_mode(&topic, &group).is_some())
            .await;
        Ok(())
    }
}
