//! The error type of `taskbroker-raft`.

use crate::types::{GroupId, NodeId};

/// Errors of the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// The segment log failed (a poisoned log means the node must stop).
    #[error("storage: {0}")]
    Storage(#[from] taskbroker_storage::StorageError),
    /// Other IO (snapshot files, state machine recovery).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// This node does not lead the group; `leader_hint` is the leader it knows of.
    #[error("not the leader of group {group}; leader is {leader_hint:?}")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The group is not hosted on this node.
    #[error("group {0} is not hosted here")]
    UnknownGroup(GroupId),
    /// The group has no leader or quorum right now (retryable).
    #[error("group {group} unavailable: {reason}")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
    /// A membership change was refused.
    #[error("membership change in group {group}: {reason}")]
    Membership {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
    /// The group's Raft instance stopped (shutdown or a fatal storage error).
    #[error("group {group} stopped: {reason}")]
    Stopped {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },
}

impl RaftError {
    /// Whether retrying (possibly against another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RaftError::NotLeader { .. }
                | RaftError::Unavailable { .. }
                | RaftError::UnknownGroup(_)
        )
    }
}
