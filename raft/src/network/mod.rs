//! Raft RPCs between nodes over tarpc, multiplexed for every group on one connection per peer.
//!
//! - [`service`]: the tarpc service ([`service::RaftRpc`]) and its server side, which dispatches
//!   requests to the group named in each request.
//! - [`peer`]: per-peer connections (one tarpc client shared by all groups, reconnected after a
//!   failure or timeout) and openraft's network factory on top of them.
//!
//! # Design notes
//! - The byte stream comes from the [`taskbroker_client::transport::Transport`] seam, so the same
//!   code runs over tokio TCP and turmoil TCP.
//! - Every call has a deadline enforced by `tokio::time::timeout` (the simulated clock under
//!   turmoil); tarpc's own deadline is set a little later so ours fires first.
//! - Frames are length-delimited with a limit ([`FRAME_BYTES_MAX`]) well above the largest append
//!   openraft sends (bounded by `max_payload_entries` times the batch limit); [`frames`] encodes
//!   them with one copy per message (the wire format of tarpc's bincode `serde_transport`).

pub mod frames;
pub mod peer;
pub mod service;

/// Largest RPC frame accepted on a Raft connection: snapshots and large append batches fit.
pub const FRAME_BYTES_MAX: usize = 512 << 20;
