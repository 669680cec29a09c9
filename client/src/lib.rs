//! taskbroker-client: the wire crate of taskbroker and the client that workers and producers use.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`batch`] | The record-batch wire format: encoded once by a producer, validated by the broker, stored and served unchanged. Sans-IO and fuzzed. |
//! | [`proto`] | The client API: the tarpc `BrokerApi` service, its messages and typed error codes (`ApiError::is_retryable`). |
//! | [`transport`] | The network seam (`Transport`/`Listener`, the tokio TCP implementation) and the connection preamble. Shared with `raft` and `node`; simulations plug in turmoil. |
//!
//! To come (see the project's DESIGN.md): the worker and producer client built on `proto`.
//!
//! # Design notes
//!
//! This crate depends on none of the other taskbroker crates, so the broker and every client
//! agree on the wire format by linking the same code.

pub mod batch;
pub mod proto;
pub mod transport;
