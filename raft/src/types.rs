//! The openraft type configuration and our own names for the types that leave this crate.
//!
//! Every openraft type stays inside `taskbroker-raft`: other crates see [`GroupId`], [`NodeId`],
//! [`Command`] and the handles in [`crate::router`], so an openraft
//! upgrade touches one crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// A node's id in the cluster (what `--node-id` sets).
pub type NodeId = u64;

/// Identifies one Raft group hosted by the cluster: the metadata group or one partition's group.
///
/// Encoding: `0` is the metadata group; a partition's group is `(topic_id << 32) | partition`,
/// with topic ids starting at 1 and never reused, so a deleted and re-created topic never shares
/// a group (and its on-disk directory) with its predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The cluster metadata group.
    pub const METADATA: GroupId = GroupId(0);

    /// The group of partition `partition` of topic `topic_id`.
    ///
    /// ```
    /// use taskbroker_raft::GroupId;
    /// let g = GroupId::for_partition(3, 7);
    /// assert_eq!((g.topic_id(), g.partition()), (3, 7));
    /// assert!(!g.is_metadata());
    /// ```
    pub fn for_partition(topic_id: u32, partition: u32) -> GroupId {
        GroupId(((topic_id as u64) << 32) | partition as u64)
    }

    /// The topic id of a partition group (0 for the metadata group).
    pub fn topic_id(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The partition number of a partition group.
    pub fn partition(self) -> u32 {
        self.0 as u32
    }

    /// Whether this is the metadata group.
    pub fn is_metadata(self) -> bool {
        self == GroupId::METADATA
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_metadata() {
            write!(f, "meta")
        } else {
            write!(f, "t{}p{}", self.topic_id(), self.partition())
        }
    }
}

openraft::declare_raft_types!(
    /// The openraft configuration shared by every group (metadata and partitions).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = crate::runtime::SeedableTokio,
);

/// openraft aliases used inside this crate.
pub(crate) mod typ {
    use super::TypeConfig;

    pub type Raft = openraft::Raft<TypeConfig, crate::apply::GroupStateMachine>;
    pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    pub type Vote = openraft::alias::VoteOf<TypeConfig>;
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
}
