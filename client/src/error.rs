//! The client's error type: what the producer, worker, stream consumer and admin return.
//!
//! # Design notes
//! - Retryable failures (`NotLeader`, connection loss, `Unavailable`, timeouts) are retried inside
//!   the client within the [`RetryPolicy`](crate::RetryPolicy) budget; what reaches the caller is
//!   either an error retrying cannot fix (e.g. [`Error::UnknownTopic`]) or the last retryable
//!   error once the budget is spent ([`Error::is_retryable`] then says a later retry may work).
//! - No tarpc or openraft type appears here: transport failures are flattened into strings.

use std::time::Duration;

use crate::proto::ApiError;

/// Everything that can go wrong talking to a taskbroker cluster.
///
/// # Example
/// ```
/// use taskbroker_client::Error;
/// let e = Error::UnknownTopic { topic: "emails".into() };
/// assert!(!e.is_retryable());
/// assert_eq!(e.to_string(), "unknown topic \"emails\"");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// The broker refused a record batch as invalid.
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// Why.
        reason: String,
    },
    /// A task or batch exceeds a limit (the broker's or the producer's).
    #[error("too large: {size} bytes, max {max}")]
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The lease is no longer current: it expired and the task was redelivered, or the task was
    /// already settled. The work done under it must be treated as superseded.
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
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// Why.
        reason: String,
    },
    /// The cluster (or the partition) has no leader or quorum right now.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// An operation did not finish within its deadline; its outcome is unknown.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// Could not open a connection to a node.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer does not speak the taskbroker protocol, or the connection broke mid-call.
    #[error("protocol error with {addr}: {reason}")]
    Protocol {
        /// The address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A node reported an internal failure.
    #[error("internal broker error: {reason}")]
    Internal {
        /// What happened.
        reason: String,
    },
    /// The producer, worker or consumer was shut down.
    #[error("{what} is shut down")]
    Closed {
        /// Which component.
        what: &'static str,
    },
    /// The client was configured wrongly (e.g. no seed address).
    #[error("invalid configuration: {reason}")]
    Config {
        /// Why.
        reason: String,
    },
    /// A node answered `NotLeader` and re-routing did not find the leader within the retry
    /// budget.
    #[error("not the leader (hint: node {leader_hint:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader the node knows of.
        leader_hint: Option<u64>,
        /// Its address.
        leader_addr: Option<String>,
    },
}

impl Error {
    /// Whether trying again later may succeed (the cluster was unreachable, leaderless or slow).
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskbroker_client::Error;
    /// assert!(Error::Timeout { after: Duration::from_secs(1) }.is_retryable());
    /// assert!(!Error::StaleLease { offset: 4 }.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout { .. }
                | Error::Connect { .. }
                | Error::Protocol { .. }
                | Error::NotLeader { .. }
        )
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotLeader {
                leader_hint,
                leader_addr,
            } => Error::NotLeader {
                leader_hint,
                leader_addr,
            },
            ApiError::UnknownTopic { topic } => Error::UnknownTopic { topic },
            ApiError::UnknownPartition { topic, partition } => {
                Error::UnknownPartition { topic, partition }
            }
            ApiError::UnknownGroup { topic, group } => Error::UnknownGroup { topic, group },
            ApiError::InvalidBatch { reason } => Error::InvalidBatch { reason },
            ApiError::TooLarge { size, max } => Error::TooLarge { size, max },
            ApiError::StaleLease { offset } => Error::StaleLease { offset },
            ApiError::TopicConflict { topic } => Error::TopicConflict { topic },
            ApiError::InvalidArgument { reason } => Error::InvalidArgument { reason },
            ApiError::Unavailable { reason } => Error::Unavailable { reason },
            ApiError::Timeout => Error::Timeout {
                after: Duration::ZERO,
            },
            ApiError::Internal { reason } => Error::Internal { reason },
        }
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_their_retryability() {
        let cases = [
            ApiError::NotLeader {
                leader_hint: Some(1),
                leader_addr: None,
            },
            ApiError::UnknownTopic { topic: "t".into() },
            ApiError::StaleLease { offset: 1 },
            ApiError::Unavailable { reason: "x".into() },
            ApiError::Timeout,
            ApiError::TooLarge { size: 2, max: 1 },
            ApiError::Internal { reason: "x".into() },
        ];
        for api in cases {
            assert_eq!(
                api.is_retryable(),
                Error::from(api.clone()).is_retryable(),
                "{api:?}"
            );
        }
    }
}
