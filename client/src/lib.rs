//! taskbroker-client: the wire crate of taskbroker and the client that workers and producers use.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use taskbroker_client::{Client, Task, TopicSpec};
//!
//! # async fn demo() -> Result<(), taskbroker_client::Error> {
//! let client = Client::connect(["127.0.0.1:7070"]).await?;
//! client
//!     .admin()
//!     .create_topic("thumbnails", TopicSpec { partitions: Some(4), ..TopicSpec::default() })
//!     .await?;
//!
//! // Produce: batched per partition, idempotent, answered after commit.
//! let producer = client.producer().build();
//! let at = producer
//!     .send("thumbnails", Task::new("cat.png").key("user-42").priority(1))
//!     .await?;
//! println!("stored at {}:{}", at.partition, at.offset);
//!
//! // Work: leases are extended automatically while the handler runs; Ok acks, Err nacks.
//! let worker = client
//!     .worker("thumbnails", "resizers")
//!     .concurrency(8)
//!     .visibility_timeout(Duration::from_secs(30))
//!     .build()
//!     .await?;
//! let runner = worker.clone();
//! tokio::spawn(async move {
//!     runner
//!         .run(|task| async move {
//!             println!("resizing {:?} (attempt {})", task.payload(), task.attempt());
//!             Ok::<(), String>(())
//!         })
//!         .await
//! });
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! worker.shutdown().await?; // finishes or releases tasks in flight
//! # Ok(()) }
//! ```
//!
//! See `client/examples/` for a producer, a worker, a GPU worker (one long task at a time)
//! and a stream consumer.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`client`] | [`Client`]: discovery, connections, routing and the retry loop. |
//! | [`builder`] | [`ClientBuilder`]: seeds, timeouts, retry policy, client id, transport, clock. |
//! | [`producer`] | [`Producer`]: batching per partition, partitioner (FNV-1a), idempotence, backpressure. |
//! | [`worker`] | [`Worker`] and [`LeasedTask`]: leasing, ack/nack/extend, automatic extension, shutdown. |
//! | [`stream`] | [`StreamConsumer`]: ordered consumption of stream groups, commit, seek. |
//! | [`admin`] | [`Admin`]: topics, groups, cluster status. |
//! | [`routing`] | The routing cache (sans-IO): partition leaders, node addresses, `NotLeader` hints. |
//! | [`retry`] | [`RetryPolicy`]: bounded attempts, exponential backoff with jitter (sans-IO). |
//! | [`error`] | [`Error`]: typed failures with `is_retryable()`. |
//! | [`batch`] | The record-batch wire format: encoded once by a producer, validated by the broker, stored and served unchanged. Sans-IO and fuzzed. |
//! | [`proto`] | The client API: the tarpc `BrokerApi` service, its messages and typed error codes (`ApiError::is_retryable`). |
//! | [`transport`] | The network seam (`Transport`/`Listener`, the tokio TCP implementation) and the connection preamble. Shared with `raft` and `node`; simulations plug in turmoil. |
//!
//! # Design notes
//!
//! This crate depends on none of the other taskbroker crates, so the broker and every client
//! agree on the wire format by linking the same code. The producer/worker API exposes no tarpc
//! or openraft type: [`proto`] holds the wire contract; the admin API reuses its plain data
//! types ([`TopicSpec`], [`TopicMeta`], [`GroupDescription`], [`ClusterStatus`]).

pub mod admin;
pub mod batch;
pub mod builder;
pub mod client;
pub mod error;
pub mod producer;
pub mod proto;
pub mod retry;
pub mod routing;
pub mod stream;
pub mod transport;
pub mod worker;

pub use admin::Admin;
pub use builder::{ClientBuilder, WallClock};
pub use client::Client;
pub use error::{Error, Result};
pub use producer::{Delivery, Producer, ProducerBuilder, SendFuture, Task, TaskOffset};
pub use proto::{ClusterStatus, GroupDescription, GroupPartitionState, TopicMeta, TopicSpec};
pub use retry::RetryPolicy;
pub use stream::{StreamConsumer, StreamConsumerBuilder, StreamRecord};
pub use worker::{LeaseToken, LeasedTask, Worker, WorkerBuilder};
