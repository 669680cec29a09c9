//! What a Raft entry of a taskbroker group carries, and what applying it answers.
//!
//! Commands are our own types (never openraft's), so the node and the simulator build them
//! without touching openraft.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state_machine::metadata::{MetaCommand, MetaResponse};
use crate::state_machine::partition::{ProduceOutcome, QueueOp, QueueResult};

/// The application payload of one Raft entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A metadata change (metadata group only).
    Meta(MetaCommand),
    /// A producer's record batch, exactly as the producer encoded it (validated by the leader
    /// before proposing). Stored in the log unchanged; its records take dense offsets.
    Produce {
        /// The leader's clock when it proposed the batch (decides whether a task with a
        /// not-before time is delayed, and task ages).
        now_ms: u64,
        /// The encoded record batch (`taskbroker_client::batch`).
        batch: Bytes,
    },
    /// Queue operations batched by the partition leader into one entry.
    Queue {
        /// The leader's clock when it proposed the entry: every lease expiry and delay is
        /// decided against this, so all replicas agree.
        now_ms: u64,
        /// The operations, applied in order.
        ops: Vec<QueueOp>,
    },
}

/// The result of applying one entry, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum Response {
    /// Blank and membership entries.
    #[default]
    None,
    /// The metadata state machine's answer.
    Meta(MetaResponse),
    /// Where a produced batch landed (or that it was a duplicate of an earlier one).
    Produce(ProduceOutcome),
    /// One result per queue operation, in order.
    Queue(Vec<QueueResult>),
    /// The command did not fit the group (e.g. a produce sent to the metadata group).
    Rejected(String),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Meta(m) => write!(f, "meta({m:?})"),
            Command::Produce { batch, .. } => write!(f, "produce({} bytes)", batch.len()),
            Command::Queue { now_ms, ops } => write!(f, "queue(now={now_ms}, {} ops)", ops.len()),
        }
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::None => write!(f, "none"),
            Response::Meta(m) => write!(f, "meta({m:?})"),
            Response::Produce(p) => write!(f, "produce({p:?})"),
            Response::Queue(q) => write!(f, "queue({} results)", q.len()),
            Response::Rejected(r) => write!(f, "rejected({r})"),
        }
    }
}
