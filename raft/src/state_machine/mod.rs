//! Replicated state machines: pure, sans-IO, deterministic.
//!
//! - [`metadata`]: the cluster metadata group (nodes, topics, placement, consumer groups).
//! - [`placement`]: the controller's pure placement function.
//! - [`partition`]: the queue state of one partition (leases, acks, retries, dead letters).
//!
//! # Invariants
//!
//! Every replica applying the same commands in the same order reaches identical state: no clock
//! reads (time arrives as `now_ms` written into commands by the leader), no randomness, no IO,
//! and only ordered collections (`BTreeMap`/`BTreeSet`), so iteration order never depends on a
//! hasher. All state is `serde` serializable: it *is* the Raft snapshot (never task payloads).

pub mod metadata;
pub mod partition;
pub mod placement;

pub use metadata::{GroupId, GroupMode, MetaCommand, MetaError, MetaResponse, MetadataState};
pub use partition::{
    GroupConfig, LeaseToken, PartitionState, ProduceOutcome, ProducerInfo, QueueError, QueueOp,
    QueueResult, RecordMeta,
};
pub use placement::{place, PlacementError};
