//! The routing cache: which node leads which partition, and where nodes listen.
//!
//! Sans-IO: metadata answers and `NotLeader` hints go in, addresses come out. The
//! [`Client`](crate::Client) refreshes it from any node when it is missing or proven stale.
//!
//! # Invariants
//! - An older metadata answer (lower `version`) never replaces a newer one's topics or nodes;
//!   leader hints from `NotLeader` errors are applied on top, since leadership changes do not
//!   necessarily bump the metadata version.
//! - Iteration order is deterministic (`BTreeMap`): the same inputs give the same routing.

use std::collections::BTreeMap;

use crate::proto::{ClusterMeta, NodeId, TopicMeta};

/// A node id the cache invents for a leader address learnt from a `NotLeader` hint whose node
/// is not (yet) in the metadata. Real node ids are small; these count down from `u64::MAX`.
const SYNTHETIC_NODE_ID_BASE: NodeId = u64::MAX;

/// Cached cluster metadata.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    version: u64,
    controller: Option<NodeId>,
    nodes: BTreeMap<NodeId, String>,
    topics: BTreeMap<String, TopicMeta>,
    next_synthetic: u64,
}

impl RoutingTable {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The metadata version last applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies a metadata answer. Returns false (and changes nothing) if it is older than what
    /// the cache already holds.
    pub fn apply(&mut self, meta: &ClusterMeta) -> bool {
        if meta.version < self.version {
            return false;
        }
        self.version = meta.version;
        self.controller = meta.controller;
        self.nodes
            .retain(|id, _| *id >= SYNTHETIC_NODE_ID_BASE - self.next_synthetic);
        for node in &meta.nodes {
            self.nodes.insert(node.id, node.addr.clone());
        }
        for topic in &meta.topics {
            self.topics.insert(topic.name.clone(), topic.clone());
        }
        true
    }

    /// Forgets a topic (e.g. after the broker said it does not exist).
    pub fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// A cached topic.
    pub fn topic(&self, topic: &str) -> Option<&TopicMeta> {
        self.topics.get(topic)
    }

    /// The number of partitions of a cached topic.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics
            .get(topic)
            .map(|t| u32::try_from(t.partitions.len()).unwrap_or(u32::MAX))
    }

    /// The leader of a partition and its address, if both are known.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<(NodeId, String)> {
        let meta = self.topics.get(topic)?;
        let p = meta.partitions.iter().find(|p| p.partition == partition)?;
        let leader = p.leader?;
        let addr = self.nodes.get(&leader)?;
        Some((leader, addr.clone()))
    }

    /// The address of the metadata leader, if known.
    pub fn controller_addr(&self) -> Option<String> {
        self.controller.and_then(|c| self.nodes.get(&c).cloned())
    }

    /// Every known node address, in node id order.
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.values().cloned().collect()
    }

    /// Applies a `NotLeader { leader_hint, leader_addr }` answer for a partition: records the
    /// hinted leader (and its address). Returns the address to retry at, if the hint names one
    /// the cache can resolve; `None` means "refresh metadata first".
    pub fn on_not_leader(
        &mut self,
        topic: &str,
        partition: u32,
        leader_hint: Option<NodeId>,
        leader_addr: Option<&str>,
    ) -> Option<String> {
        let leader = match (leader_hint, leader_addr) {
            (Some(id), Some(addr)) => {
                self.nodes.insert(id, addr.to_string());
                Some(id)
            }
            (Some(id), None) => self.nodes.contains_key(&id).then_some(id),
            (None, Some(addr)) => Some(self.synthetic_node(addr)),
            (None, None) => None,
        };
        let part = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.iter_mut().find(|p| p.partition == partition));
        if let Some(p) = part {
            p.leader = leader;
        }
        leader.and_then(|id| self.nodes.get(&id).cloned())
    }

    /// Marks the leader of a partition unknown (its node stopped answering).
    pub fn clear_leader(&mut self, topic: &str, partition: u32) {
        if let Some(p) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.partitions.iter_mut().find(|p| p.partition == partition))
        {
            p.leader = None;
        }
    }

    fn synthetic_node(&mut self, addr: &str) -> NodeId {
        if let Some((id, _)) = self.nodes.iter().find(|(_, a)| a.as_str() == addr) {
            return *id;
        }
        let id = SYNTHETIC_NODE_ID_BASE - self.next_synthetic;
        self.next_synthetic += 1;
        self.nodes.insert(id, addr.to_string());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{NodeMeta, PartitionMeta};

    fn meta(version: u64, leaders: &[Option<NodeId>]) -> ClusterMeta {
        ClusterMeta {
            version,
            controller: Some(1),
            nodes: (1..=3)
                .map(|id| NodeMeta {
                    id,
                    addr: format!("10.0.0.{id}:7070"),
                    http_addr: None,
                })
                .collect(),
            topics: vec![TopicMeta {
                name: "t".into(),
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(i, l)| PartitionMeta {
                        partition: i as u32,
                        replicas: vec![1, 2, 3],
                        leader: *l,
                    })
                    .collect(),
                replication_factor: 3,
                retention_ms: None,
                retention_bytes: None,
                visibility_timeout_ms: 30_000,
                max_attempts: 5,
                dead_letter_topic: None,
            }],
        }
    }

    #[test]
    fn leaders_resolve_and_stale_metadata_is_ignored() {
        let mut r = RoutingTable::new();
        assert!(r.apply(&meta(5, &[Some(1), Some(2), None])));
        assert_eq!(r.leader("t", 0), Some((1, "10.0.0.1:7070".into())));
        assert_eq!(r.leader("t", 2), None);
        assert_eq!(r.leader("t", 9), None);
        assert_eq!(r.partition_count("t"), Some(3));
        assert_eq!(r.controller_addr().as_deref(), Some("10.0.0.1:7070"));
        assert!(!r.apply(&meta(4, &[Some(3), Some(3), Some(3)])));
        assert_eq!(r.leader("t", 0), Some((1, "10.0.0.1:7070".into())));
    }

    #[test]
    fn not_leader_hints_update_the_cache() {
        let mut r = RoutingTable::new();
        r.apply(&meta(1, &[Some(1), Some(1)]));
        // Known node by id.
        assert_eq!(
            r.on_not_leader("t", 0, Some(2), None).as_deref(),
            Some("10.0.0.2:7070")
        );
        assert_eq!(r.leader("t", 0), Some((2, "10.0.0.2:7070".into())));
        // A new node with its address.
        assert_eq!(
            r.on_not_leader("t", 1, Some(4), Some("10.0.0.4:7070"))
                .as_deref(),
            Some("10.0.0.4:7070")
        );
        assert_eq!(r.leader("t", 1), Some((4, "10.0.0.4:7070".into())));
        // Only an address.
        let addr = r.on_not_leader("t", 0, None, Some("10.0.0.9:7070"));
        assert_eq!(addr.as_deref(), Some("10.0.0.9:7070"));
        assert_eq!(r.leader("t", 0).map(|(_, a)| a), addr);
        // An unknown id without address: leader unknown, refresh needed.
        assert_eq!(r.on_not_leader("t", 0, Some(77), None), None);
        assert_eq!(r.leader("t", 0), None);
        // No hint at all.
        assert_eq!(r.on_not_leader("t", 1, None, None), None);
        assert_eq!(r.leader("t", 1), None);
        // A newer answer replaces the hints.
        r.apply(&meta(2, &[Some(3), Some(3)]));
        assert_eq!(r.leader("t", 0), Some((3, "10.0.0.3:7070".into())));
        r.clear_leader("t", 0);
        assert_eq!(r.leader("t", 0), None);
        r.forget_topic("t");
        assert_eq!(r.partition_count("t"), None);
    }
}
