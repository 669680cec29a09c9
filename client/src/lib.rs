//! taskbroker-client: the wire crate of taskbroker and the client that workers and producers use.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`batch`] | The record-batch wire format: encoded once by a producer, validated by the broker, stored and served unchanged. Sans-IO and fuzzed. |
//! | [`transport`] | The network seam (`Transport`/`Listener`, the tokio TCP implementation) and the connection preamble. Shared with `raft` and `node`; simulations plug in turmoil. |
//!
//! To come (see the project's DESIGN.md): `proto/` (tarpc service traits, messages, error codes
//! with `is_retryable()`) and the worker and producer client built on them.
//!
//! # Design notes
//!
//! This crate depends on none of the other taskbroker crates, so the broker and every client
//! agree on the wire format by linking the same code.

pub mod batch;
pub mod transport;
