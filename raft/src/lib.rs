//! taskbroker-raft: the replication layer. Every partition log and the cluster metadata are
//! Raft groups (openraft), stored on the segment log of `taskbroker-storage`, talking over tarpc.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`types`] | [`GroupId`], [`NodeId`] and the openraft type configuration (kept inside this crate) |
//! | [`command`] | [`Command`]/[`Response`]: what an entry carries and what applying it answers |
//! | [`codec`] | Raft entries <-> storage frames (a produce's batch bytes are stored unchanged) |
//! | [`log_store`] | openraft's log storage on the segment log: the Raft log *is* the partition log |
//! | [`state_machine`] | the pure, deterministic state machines: partition queue state, metadata, placement |
//! | [`apply`] | openraft's state machine: applies entries to the pure ones, snapshots |
//! | [`snapshot`] | durable snapshot slots |
//! | [`network`] | the tarpc Raft service, per-peer connections, openraft's network |
//! | [`router`] | multi-raft: a node hosting many groups, RPC dispatch by group id |
//! | [`runtime`] | openraft's runtime: tokio with randomness a simulation can seed |
//! | [`quiesce`] | idle groups stop ticking and heartbeating; node-level pings detect dead leaders |
//! | [`error`] | [`RaftError`] |
//!
//! # Invariants
//! - Only committed entries are applied; the partition's task offsets are those of the frames.
//! - Time in replicated state comes from `now_ms` written into commands by the leader.

pub mod apply;
pub mod codec;
pub mod command;
pub mod error;
pub mod log_store;
pub mod network;
pub mod quiesce;
pub mod router;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use command::{Command, Response};
pub use error::RaftError;
pub use router::{Group, GroupMetrics, RaftNode, RaftNodeConfig, RaftTiming};
pub use types::{GroupId, NodeId, TypeConfig};
