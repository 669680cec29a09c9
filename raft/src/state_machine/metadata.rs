//! The cluster metadata state machine (Raft group 0).
//!
//! It holds the nodes and their addresses, the topics with their configuration and partition
//! placement (replica sets), and the consumer groups of every topic. The controller (the
//! metadata group's leader) validates requests, computes placement with
//! [`super::placement::place`] and proposes [`MetaCommand`]s; every replica applies them with
//! [`MetadataState::apply`].
//!
//! # Invariants
//!
//! - `apply` is deterministic: same state + same command = same state and response on every
//!   replica. No clock (creation time arrives in the command), no randomness, no IO, only
//!   ordered maps.
//! - A command that fails validation changes nothing (not even the version).
//! - `version` is bumped by every command that changes the state, and only by those, so clients
//!   can cache routing and compare versions.
//! - Topic ids start at 1 and are never reused: a deleted-then-recreated topic gets new Raft
//!   group ids, so stale replicas of the old partitions can never join the new groups.
//! - Every replica set of every partition has `replication_factor` distinct node ids that were
//!   registered when the set was placed.
//!
//! # Design notes
//!
//! - Idempotence is by value: `CreateTopic` with an identical config answers
//!   [`MetaResponse::AlreadyExists`] (a success, so a retried request after a lost response
//!   succeeds); the placement of a retry is ignored because placement is the controller's choice,
//!   not the user's.
//! - Unregistering nodes and moving replicas (reassignment) are future commands; they will
//!   change `PartitionInfo::replicas` in place and bump the version like any other change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Identifier of a Raft group. [`METADATA_GROUP_ID`] is the metadata group; a partition's group
/// id is built by [`partition_group_id`].
pub type GroupId = u64;

/// The metadata group's id.
pub const METADATA_GROUP_ID: GroupId = 0;

/// Most partitions per topic: keeps one topic's Raft groups (and a node's share of them) bounded.
pub const PARTITIONS_MAX: u32 = 10_000;

/// Longest topic name, in bytes (Kafka's limit, so names carry over from the old deployment).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Longest consumer group name, in bytes: group names are keys in every partition's state.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// Most replicas per partition: every replica is a Raft voter, and large voter sets slow commits.
pub const REPLICATION_FACTOR_MAX: u32 = 7;

/// Default number of partitions of a new topic (what the Kafka deployment used).
pub const DEFAULT_PARTITIONS: u32 = 12;

/// Default replication factor; the controller clamps it to the number of nodes.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Default visibility timeout of a lease.
pub const DEFAULT_VISIBILITY_TIMEOUT_MS: u64 = 30_000;

/// Default number of deliveries before a task is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Returns the Raft group id of `partition` of the topic with id `topic_id`:
/// `(topic_id << 32) | partition`. Topic ids start at 1, so no partition collides with
/// [`METADATA_GROUP_ID`].
pub fn partition_group_id(topic_id: u32, partition: u32) -> GroupId {
    (u64::from(topic_id) << 32) | u64::from(partition)
}

/// Splits a partition group id into `(topic_id, partition)`; `None` for the metadata group.
pub fn decode_group_id(group_id: GroupId) -> Option<(u32, u32)> {
    let topic_id = (group_id >> 32) as u32;
    let partition = (group_id & u64::from(u32::MAX)) as u32;
    (topic_id != 0).then_some((topic_id, partition))
}

/// Delivery mode of a consumer group (DESIGN.md, "Task (queue) semantics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupMode {
    /// Tasks are leased to any number of workers, acked, nacked, retried and dead-lettered.
    Queue,
    /// Kafka-style ordered consumption with committed offsets.
    Stream,
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (also its Raft node id).
    pub id: u64,
    /// Address of the node's tarpc server (clients and Raft peers).
    pub addr: String,
    /// Address of the node's HTTP server (metrics, admin, UI), if it runs one.
    pub http_addr: Option<String>,
}

/// Configuration of a topic, as requested by the user (after the controller's defaults and
/// clamping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Number of partitions, `1..=PARTITIONS_MAX`.
    pub partitions: u32,
    /// Replicas per partition, `1..=REPLICATION_FACTOR_MAX`.
    pub replication_factor: u32,
    /// Time retention of acked/committed data; `None` = no time limit.
    pub retention_ms: Option<u64>,
    /// Size retention per partition; `None` = no size limit.
    pub retention_bytes: Option<u64>,
    /// Default visibility timeout of a lease, `> 0`.
    pub visibility_timeout_ms: u64,
    /// Deliveries before a task is dead-lettered; 0 = unlimited.
    pub max_attempts: u32,
    /// Topic that receives dead letters; `None` = no dead-letter topic.
    pub dead_letter_topic: Option<String>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            partitions: DEFAULT_PARTITIONS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            retention_ms: None,
            retention_bytes: None,
            visibility_timeout_ms: DEFAULT_VISIBILITY_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dead_letter_topic: None,
        }
    }
}

/// Placement of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition index within its topic.
    pub partition: u32,
    /// The partition's Raft group id.
    pub group_id: GroupId,
    /// Replica node ids; the first is the preferred leader.
    pub replicas: Vec<u64>,
}

/// A topic with its placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Topic id (never reused).
    pub id: u32,
    /// Configuration.
    pub config: TopicConfig,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionInfo>,
    /// Creation time (the controller's clock, written into the command).
    pub created_at_ms: u64,
}

/// A command of the metadata group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node or updates its addresses (idempotent upsert).
    RegisterNode(NodeInfo),
    /// Creates a topic; `placement[p]` is the replica set of partition `p`.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Configuration.
        config: TopicConfig,
        /// One replica set per partition, preferred leader first.
        placement: Vec<Vec<u64>>,
        /// Creation time (the controller's clock).
        now_ms: u64,
    },
    /// Deletes a topic and its consumer groups.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Appends partitions to a topic.
    AddPartitions {
        /// Topic name.
        name: String,
        /// Replica sets of the new partitions only.
        placement: Vec<Vec<u64>>,
    },
    /// Creates a consumer group (idempotent for the same mode).
    CreateGroup {
        /// Topic name.
        topic: String,
        /// Group name.
        group: String,
        /// Delivery mode.
        mode: GroupMode,
    },
    /// Deletes a consumer group.
    DeleteGroup {
        /// Topic name.
        topic: String,
        /// Group name.
        group: String,
    },
}

/// Result of applying a [`MetaCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied (or already in effect).
    Ok,
    /// The topic was created.
    TopicCreated(TopicInfo),
    /// The topic already exists with the same configuration: a success, nothing changed.
    AlreadyExists(TopicInfo),
    /// The command was refused; nothing changed.
    Err(MetaError),
}

/// Why a [`MetaCommand`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    /// A topic with this name exists with another configuration.
    #[error("topic {name:?} already exists with another configuration ({existing:?})")]
    TopicConflict {
        /// Topic name.
        name: String,
        /// The existing configuration.
        existing: Box<TopicConfig>,
    },
    /// No such topic.
    #[error("unknown topic {name:?}")]
    UnknownTopic {
        /// Topic name.
        name: String,
    },
    /// No such consumer group on the topic.
    #[error("unknown consumer group {group:?} on topic {topic:?}")]
    UnknownGroup {
        /// Topic name.
        topic: String,
        /// Group name.
        group: String,
    },
    /// The group exists with another delivery mode.
    #[error("group {group:?} on topic {topic:?} exists in mode {existing:?}, not {requested:?}")]
    GroupModeConflict {
        /// Topic name.
        topic: String,
        /// Group name.
        group: String,
        /// The existing mode.
        existing: GroupMode,
        /// The requested mode.
        requested: GroupMode,
    },
    /// The configuration, a name or a placement is invalid.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// All 2^32 - 1 topic ids have been used.
    #[error("topic ids exhausted")]
    TopicIdsExhausted,
}

fn invalid(reason: impl Into<String>) -> MetaError {
    MetaError::InvalidConfig {
        reason: reason.into(),
    }
}

/// Replica and preferred-leader counts of one node, input to placement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Partition replicas on the node.
    pub replicas: u64,
    /// Partitions whose preferred leader is the node.
    pub leaders: u64,
}

/// The metadata group's replicated state (its Raft snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    nodes: BTreeMap<u64, NodeInfo>,
    topics: BTreeMap<String, TopicInfo>,
    /// Topic id -> name, to resolve group ids.
    topic_ids: BTreeMap<u32, String>,
    /// Topic -> group -> mode (nested maps, not tuple keys, so any serde format can encode it).
    groups: BTreeMap<String, BTreeMap<String, GroupMode>>,
    /// Next topic id to hand out; 0 only before the first topic (ids start at 1).
    next_topic_id: u32,
    version: u64,
}

impl MetadataState {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command. Deterministic; a refused command changes nothing.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        let result = match cmd {
            MetaCommand::RegisterNode(info) => self.register_node(info),
            MetaCommand::CreateTopic {
                name,
                config,
                placement,
                now_ms,
            } => self.create_topic(name, config, placement, *now_ms),
            MetaCommand::DeleteTopic { name } => self.delete_topic(name),
            MetaCommand::AddPartitions { name, placement } => self.add_partitions(name, placement),
            MetaCommand::CreateGroup { topic, group, mode } => {
                self.create_group(topic, group, *mode)
            }
            MetaCommand::DeleteGroup { topic, group } => self.delete_group(topic, group),
        };
        result.unwrap_or_else(MetaResponse::Err)
    }

    /// Version of the state: bumped by every applied change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// All registered nodes, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, id: u64) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// All topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = &TopicInfo> + '_ {
        self.topics.values()
    }

    /// One topic.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// The consumer groups of a topic with their modes, by name (empty for an unknown topic).
    pub fn groups(&self, topic: &str) -> impl Iterator<Item = (&str, GroupMode)> + '_ {
        self.groups
            .get(topic)
            .into_iter()
            .flat_map(|groups| groups.iter().map(|(name, mode)| (name.as_str(), *mode)))
    }

    /// The mode of one consumer group.
    pub fn group_mode(&self, topic: &str, group: &str) -> Option<GroupMode> {
        self.groups.get(topic)?.get(group).copied()
    }

    /// Whether topic id `id` belonged to a topic that has been deleted: it was handed out
    /// (ids are never reused) and no current topic has it. Data of such a topic's partition
    /// groups can be deleted without risk, even by a node whose metadata is behind.
    pub fn is_deleted_topic_id(&self, id: u32) -> bool {
        id != 0 && id < self.next_topic_id && !self.topic_ids.contains_key(&id)
    }

    /// Resolves a partition's Raft group id to its topic and partition.
    pub fn partition_by_group_id(&self, group_id: GroupId) -> Option<(&TopicInfo, &PartitionInfo)> {
        let (topic_id, partition) = decode_group_id(group_id)?;
        let topic = self.topics.get(self.topic_ids.get(&topic_id)?)?;
        let info = topic.partitions.get(usize::try_from(partition).ok()?)?;
        Some((topic, info))
    }

    /// Every partition with a replica on `node` (what the node's reconciler must run).
    pub fn partitions_on_node(
        &self,
        node: u64,
    ) -> impl Iterator<Item = (&TopicInfo, &PartitionInfo)> + '_ {
        self.topics.values().flat_map(move |topic| {
            topic
                .partitions
                .iter()
                .filter(move |p| p.replicas.contains(&node))
                .map(move |p| (topic, p))
        })
    }

    /// Replica and preferred-leader counts per registered node (placement input). Every
    /// registered node appears, with zero counts if it holds nothing.
    pub fn node_load(&self) -> BTreeMap<u64, NodeLoad> {
        let mut load: BTreeMap<u64, NodeLoad> = self
            .nodes
            .keys()
            .map(|id| (*id, NodeLoad::default()))
            .collect();
        for topic in self.topics.values() {
            for partition in &topic.partitions {
                for (i, node) in partition.replicas.iter().enumerate() {
                    let entry = load.entry(*node).or_default();
                    entry.replicas += 1;
                    if i == 0 {
                        entry.leaders += 1;
                    }
                }
            }
        }
        load
    }

    fn bump(&mut self) {
        self.version += 1;
    }

    fn register_node(&mut self, info: &NodeInfo) -> Result<MetaResponse, MetaError> {
        if info.addr.is_empty() {
            return Err(invalid(format!("node {} has an empty address", info.id)));
        }
        if self.nodes.get(&info.id) != Some(info) {
            self.nodes.insert(info.id, info.clone());
            self.bump();
        }
        Ok(MetaResponse::Ok)
    }

    fn create_topic(
        &mut self,
        name: &str,
        config: &TopicConfig,
        placement: &[Vec<u64>],
        now_ms: u64,
    ) -> Result<MetaResponse, MetaError> {
        if let Some(existing) = self.topics.get(name) {
            return if existing.config == *config {
                Ok(MetaResponse::AlreadyExists(existing.clone()))
            } else {
                Err(MetaError::TopicConflict {
                    name: name.to_owned(),
                    existing: Box::new(existing.config.clone()),
                })
            };
        }
        validate_topic_name(name)?;
        validate_config(name, config)?;
        if placement.len() != config.partitions as usize {
            return Err(invalid(format!(
                "placement has {} replica sets for {} partitions",
                placement.len(),
                config.partitions
            )));
        }
        self.validate_placement(placement, config.replication_factor)?;
        let id = self.next_topic_id.max(1);
        let next = id.checked_add(1).ok_or(MetaError::TopicIdsExhausted)?;
        let partitions = (0u32..)
            .zip(placement)
            .map(|(partition, replicas)| PartitionInfo {
                partition,
                group_id: partition_group_id(id, partition),
                replicas: replicas.clone(),
            })
            .collect();
        let info = TopicInfo {
            name: name.to_owned(),
            id,
            config: config.clone(),
            partitions,
            created_at_ms: now_ms,
        };
        self.next_topic_id = next;
        self.topic_ids.insert(id, name.to_owned());
        self.topics.insert(name.to_owned(), info.clone());
        self.bump();
        Ok(MetaResponse::TopicCreated(info))
    }

    fn delete_topic(&mut self, name: &str) -> Result<MetaResponse, MetaError> {
        let info = self
            .topics
            .remove(name)
            .ok_or_else(|| MetaError::UnknownTopic {
                name: name.to_owned(),
            })?;
        self.topic_ids.remove(&info.id);
        self.groups.remove(name);
        self.bump();
        Ok(MetaResponse::Ok)
    }

    fn add_partitions(
        &mut self,
        name: &str,
        placement: &[Vec<u64>],
    ) -> Result<MetaResponse, MetaError> {
        let topic = self
            .topics
            .get(name)
            .ok_or_else(|| MetaError::UnknownTopic {
                name: name.to_owned(),
            })?;
        if placement.is_empty() {
            return Err(invalid("no partitions to add"));
        }
        let current = topic.config.partitions;
        let added = u32::try_from(placement.len()).unwrap_or(u32::MAX);
        let total = current.saturating_add(added);
        if total > PARTITIONS_MAX {
            return Err(invalid(format!(
                "{total} partitions exceed the maximum of {PARTITIONS_MAX}"
            )));
        }
        self.validate_placement(placement, topic.config.replication_factor)?;
        let topic_id = topic.id;
        let topic = self
            .topics
            .get_mut(name)
            .expect("invariant: topic looked up above");
        for (partition, replicas) in (current..).zip(placement) {
            topic.partitions.push(PartitionInfo {
                partition,
                group_id: partition_group_id(topic_id, partition),
                replicas: replicas.clone(),
            });
        }
        topic.config.partitions = total;
        self.bump();
        Ok(MetaResponse::Ok)
    }

    fn create_group(
        &mut self,
        topic: &str,
        group: &str,
        mode: GroupMode,
    ) -> Result<MetaResponse, MetaError> {
        if !self.topics.contains_key(topic) {
            return Err(MetaError::UnknownTopic {
                name: topic.to_owned(),
            });
        }
        if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
            return Err(invalid(format!(
                "group name must be 1..={GROUP_NAME_BYTES_MAX} bytes"
            )));
        }
        let groups = self.groups.entry(topic.to_owned()).or_default();
        match groups.get(group) {
            Some(existing) if *existing == mode => Ok(MetaResponse::Ok),
            Some(existing) => Err(MetaError::GroupModeConflict {
                topic: topic.to_owned(),
                group: group.to_owned(),
                existing: *existing,
                requested: mode,
            }),
            None => {
                groups.insert(group.to_owned(), mode);
                self.bump();
                Ok(MetaResponse::Ok)
            }
        }
    }

    fn delete_group(&mut self, topic: &str, group: &str) -> Result<MetaResponse, MetaError> {
        if !self.topics.contains_key(topic) {
            return Err(MetaError::UnknownTopic {
                name: topic.to_owned(),
            });
        }
        let groups = self.groups.get_mut(topic);
        if groups.and_then(|g| g.remove(group)).is_none() {
            return Err(MetaError::UnknownGroup {
                topic: topic.to_owned(),
                group: group.to_owned(),
            });
        }
        if self.groups.get(topic).is_some_and(BTreeMap::is_empty) {
            self.groups.remove(topic);
        }
        self.bump();
        Ok(MetaResponse::Ok)
    }

    fn validate_placement(
        &self,
        placement: &[Vec<u64>],
        replication: u32,
    ) -> Result<(), MetaError> {
        for (i, replicas) in placement.iter().enumerate() {
            if replicas.len() != replication as usize {
                return Err(invalid(format!(
                    "replica set {i} has {} nodes, replication factor is {replication}",
                    replicas.len()
                )));
            }
            let distinct: BTreeSet<u64> = replicas.iter().copied().collect();
            if distinct.len() != replicas.len() {
                return Err(invalid(format!("replica set {i} repeats a node")));
            }
            if let Some(unknown) = replicas.iter().find(|n| !self.nodes.contains_key(n)) {
                return Err(invalid(format!(
                    "replica set {i} names unknown node {unknown}"
                )));
            }
        }
        Ok(())
    }
}

fn validate_topic_name(name: &str) -> Result<(), MetaError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX || !valid_chars {
        return Err(invalid(format!(
            "topic name {name:?} must be 1..={TOPIC_NAME_BYTES_MAX} bytes of [A-Za-z0-9._-]"
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid("topic name cannot be '.' or '..'"));
    }
    Ok(())
}

fn validate_config(name: &str, config: &TopicConfig) -> Result<(), MetaError> {
    if !(1..=PARTITIONS_MAX).contains(&config.partitions) {
        return Err(invalid(format!(
            "partitions must be 1..={PARTITIONS_MAX}, got {}",
            config.partitions
        )));
    }
    if !(1..=REPLICATION_FACTOR_MAX).contains(&config.replication_factor) {
        return Err(invalid(format!(
            "replication factor must be 1..={REPLICATION_FACTOR_MAX}, got {}",
            config.replication_factor
        )));
    }
    if config.visibility_timeout_ms == 0 {
        return Err(invalid("visibility timeout must be > 0"));
    }
    if config.retention_ms == Some(0) || config.retention_bytes == Some(0) {
        return Err(invalid("retention limits must be > 0 (None = unlimited)"));
    }
    if let Some(dlq) = &config.dead_letter_topic {
        if dlq == name {
            return Err(invalid("a topic cannot be its own dead-letter topic"));
        }
        validate_topic_name(dlq)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> MetaCommand {
        MetaCommand::RegisterNode(NodeInfo {
            id,
            addr: format!("10.0.0.{id}:7000"),
            http_addr: None,
        })
    }

    fn cluster(n: u64) -> MetadataState {
        let mut state = MetadataState::new();
        for id in 1..=n {
            assert_eq!(state.apply(&node(id)), MetaResponse::Ok);
        }
        state
    }

    fn create(name: &str, config: TopicConfig) -> MetaCommand {
        let placement = (0..config.partitions)
            .map(|p| {
                (0..config.replication_factor)
                    .map(|r| u64::from((p + r) % 3 + 1))
                    .collect()
            })
            .collect();
        MetaCommand::CreateTopic {
            name: name.into(),
            config,
            placement,
            now_ms: 1_000,
        }
    }

    fn assert_invalid(response: MetaResponse) {
        assert!(
            matches!(response, MetaResponse::Err(MetaError::InvalidConfig { .. })),
            "{response:?}"
        );
    }

    #[test]
    fn deleted_topic_ids_are_known_as_deleted_and_only_those() {
        let mut state = cluster(3);
        assert!(!state.is_deleted_topic_id(1), "never handed out");
        assert!(matches!(
            state.apply(&create("a", TopicConfig::default())),
            MetaResponse::TopicCreated(_)
        ));
        let id = state.topic("a").map(|t| t.id).expect("created");
        assert!(!state.is_deleted_topic_id(id), "still exists");
        assert_eq!(
            state.apply(&MetaCommand::DeleteTopic { name: "a".into() }),
            MetaResponse::Ok
        );
        assert!(state.is_deleted_topic_id(id));
        assert!(!state.is_deleted_topic_id(id + 1), "not handed out yet");
        assert!(!state.is_deleted_topic_id(0), "the metadata group");
    }

    #[test]
    fn register_node_is_an_idempotent_upsert() {
        let mut state = cluster(3);
        let v = state.version();
        assert_eq!(state.apply(&node(2)), MetaResponse::Ok);
        assert_eq!(state.version(), v);
        let moved = NodeInfo {
            id: 2,
            addr: "10.0.1.2:7000".into(),
            http_addr: Some("10.0.1.2:8080".into()),
        };
        assert_eq!(
            state.apply(&MetaCommand::RegisterNode(moved.clone())),
            MetaResponse::Ok
        );
        assert_eq!(state.version(), v + 1);
        assert_eq!(state.node(2), Some(&moved));
        assert_eq!(state.nodes().count(), 3);
    }

    #[test]
    fn create_topic_is_idempotent_and_conflicts_on_other_config() {
        let mut state = cluster(3);
        let MetaResponse::TopicCreated(info) = state.apply(&create("jobs", TopicConfig::default()))
        else {
            panic!("not created");
        };
        assert_eq!(info.id, 1);
        assert_eq!(info.partitions.len(), 12);
        assert_eq!(info.created_at_ms, 1_000);
        let v = state.version();
        let again = state.apply(&create("jobs", TopicConfig::default()));
        assert_eq!(again, MetaResponse::AlreadyExists(info.clone()));
        assert_eq!(state.version(), v);
        let other = TopicConfig {
            max_attempts: 9,
            ..TopicConfig::default()
        };
        assert_eq!(
            state.apply(&create("jobs", other)),
            MetaResponse::Err(MetaError::TopicConflict {
                name: "jobs".into(),
                existing: Box::new(TopicConfig::default()),
            })
        );
        assert_eq!(state.version(), v);
    }

    #[test]
    fn group_ids_encode_topic_and_partition_and_are_never_reused() {
        let mut state = cluster(3);
        state.apply(&create("a", TopicConfig::default()));
        let a = state.topic("a").expect("created").clone();
        assert_eq!(a.partitions[5].group_id, (1u64 << 32) | 5);
        assert_eq!(decode_group_id(a.partitions[5].group_id), Some((1, 5)));
        assert_eq!(decode_group_id(METADATA_GROUP_ID), None);
        let (topic, partition) = state
            .partition_by_group_id(a.partitions[7].group_id)
            .expect("resolves");
        assert_eq!((topic.name.as_str(), partition.partition), ("a", 7));

        assert_eq!(
            state.apply(&MetaCommand::DeleteTopic { name: "a".into() }),
            MetaResponse::Ok
        );
        assert_eq!(state.partition_by_group_id(a.partitions[7].group_id), None);
        let MetaResponse::TopicCreated(again) = state.apply(&create("a", TopicConfig::default()))
        else {
            panic!("not recreated");
        };
        assert_eq!(again.id, 2);
        assert_eq!(again.partitions[0].group_id, 2u64 << 32);
    }

    #[test]
    fn delete_unknown_topic_is_refused() {
        let mut state = cluster(1);
        assert_eq!(
            state.apply(&MetaCommand::DeleteTopic { name: "x".into() }),
            MetaResponse::Err(MetaError::UnknownTopic { name: "x".into() })
        );
        assert_eq!(state.version(), 1);
    }

    #[test]
    fn add_partitions_appends_with_new_group_ids() {
        let mut state = cluster(3);
        state.apply(&create("t", TopicConfig::default()));
        let v = state.version();
        let cmd = MetaCommand::AddPartitions {
            name: "t".into(),
            placement: vec![vec![1, 2, 3], vec![2, 3, 1]],
        };
        assert_eq!(state.apply(&cmd), MetaResponse::Ok);
        assert_eq!(state.version(), v + 1);
        let topic = state.topic("t").expect("exists");
        assert_eq!(topic.config.partitions, 14);
        assert_eq!(topic.partitions[13].partition, 13);
        assert_eq!(topic.partitions[13].group_id, partition_group_id(1, 13));
        assert_eq!(topic.partitions[13].replicas, vec![2, 3, 1]);
        // Wrong replica count, unknown node, unknown topic.
        let bad = MetaCommand::AddPartitions {
            name: "t".into(),
            placement: vec![vec![1, 2]],
        };
        assert_invalid(state.apply(&bad));
        let bad = MetaCommand::AddPartitions {
            name: "t".into(),
            placement: vec![vec![1, 2, 9]],
        };
        assert_invalid(state.apply(&bad));
        let bad = MetaCommand::AddPartitions {
            name: "u".into(),
            placement: vec![vec![1, 2, 3]],
        };
        assert_eq!(
            state.apply(&bad),
            MetaResponse::Err(MetaError::UnknownTopic { name: "u".into() })
        );
        assert_eq!(state.version(), v + 1);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut state = cluster(3);
        let base = TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        };
        for config in [
            TopicConfig {
                partitions: 0,
                ..base.clone()
            },
            TopicConfig {
                partitions: PARTITIONS_MAX + 1,
                ..base.clone()
            },
            TopicConfig {
                replication_factor: 0,
                ..base.clone()
            },
            TopicConfig {
                visibility_timeout_ms: 0,
                ..base.clone()
            },
            TopicConfig {
                dead_letter_topic: Some("t".into()),
                ..base.clone()
            },
        ] {
            assert_invalid(state.apply(&MetaCommand::CreateTopic {
                name: "t".into(),
                placement: vec![vec![1, 2, 3]; config.partitions.min(3) as usize],
                config,
                now_ms: 0,
            }));
        }
        let placements: [Vec<Vec<u64>>; 4] = [
            vec![vec![1, 2, 3]],                // too few sets
            vec![vec![1, 2, 3], vec![1, 2]],    // wrong size
            vec![vec![1, 2, 3], vec![1, 1, 2]], // repeated node
            vec![vec![1, 2, 3], vec![1, 2, 4]], // unknown node
        ];
        for placement in placements {
            assert_invalid(state.apply(&MetaCommand::CreateTopic {
                name: "t".into(),
                config: base.clone(),
                placement,
                now_ms: 0,
            }));
        }
        for name in ["", "a b", "..", "x/y"] {
            assert_invalid(state.apply(&MetaCommand::CreateTopic {
                name: name.into(),
                config: base.clone(),
                placement: vec![vec![1, 2, 3]; 2],
                now_ms: 0,
            }));
        }
        assert_eq!(state.version(), 3);
        assert_eq!(state.topics().count(), 0);
    }

    #[test]
    fn groups_are_idempotent_and_deleted_with_their_topic() {
        let mut state = cluster(3);
        state.apply(&create("t", TopicConfig::default()));
        let cg = |group: &str, mode| MetaCommand::CreateGroup {
            topic: "t".into(),
            group: group.into(),
            mode,
        };
        assert_eq!(
            state.apply(&cg("workers", GroupMode::Queue)),
            MetaResponse::Ok
        );
        let v = state.version();
        assert_eq!(
            state.apply(&cg("workers", GroupMode::Queue)),
            MetaResponse::Ok
        );
        assert_eq!(state.version(), v);
        assert!(matches!(
            state.apply(&cg("workers", GroupMode::Stream)),
            MetaResponse::Err(MetaError::GroupModeConflict { .. })
        ));
        assert_eq!(
            state.apply(&cg("audit", GroupMode::Stream)),
            MetaResponse::Ok
        );
        assert_eq!(
            state.groups("t").collect::<Vec<_>>(),
            vec![("audit", GroupMode::Stream), ("workers", GroupMode::Queue)]
        );
        assert_eq!(
            state.apply(&MetaCommand::DeleteGroup {
                topic: "t".into(),
                group: "audit".into()
            }),
            MetaResponse::Ok
        );
        assert!(matches!(
            state.apply(&MetaCommand::DeleteGroup {
                topic: "t".into(),
                group: "audit".into()
            }),
            MetaResponse::Err(MetaError::UnknownGroup { .. })
        ));
        assert!(matches!(
            state.apply(&MetaCommand::CreateGroup {
                topic: "nope".into(),
                group: "g".into(),
                mode: GroupMode::Queue
            }),
            MetaResponse::Err(MetaError::UnknownTopic { .. })
        ));
        state.apply(&MetaCommand::DeleteTopic { name: "t".into() });
        assert_eq!(state.groups("t").count(), 0);
        assert_eq!(state.group_mode("t", "workers"), None);
    }

    #[test]
    fn node_load_and_partitions_on_node() {
        let mut state = cluster(3);
        state.apply(&create("t", TopicConfig::default()));
        let load = state.node_load();
        assert_eq!(load.len(), 3);
        for l in load.values() {
            assert_eq!(
                *l,
                NodeLoad {
                    replicas: 12,
                    leaders: 4
                }
            );
        }
        assert_eq!(state.partitions_on_node(2).count(), 12);
        assert_eq!(state.partitions_on_node(9).count(), 0);
    }

    #[test]
    fn snapshot_clone_is_equal() {
        let mut state = cluster(3);
        state.apply(&create("t", TopicConfig::default()));
        let copy = state.clone();
        assert_eq!(copy, state);
    }
}
