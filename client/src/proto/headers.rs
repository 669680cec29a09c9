//! Task headers the broker itself reads or writes. Every name starts with `taskbroker-`; a
//! producer should not set these names on its own tasks (the broker strips and rewrites them
//! when it moves a task to or from a dead-letter topic).
//!
//! A dead letter forwarded to a topic's dead-letter topic keeps its key, payload, priority and
//! headers and gains the `ORIGIN_*`, [`ATTEMPTS`], [`LAST_ERROR`] and [`DEAD_LETTERED_AT_MS`]
//! headers (numbers as decimal ASCII). Requeueing it sends it back to its origin topic and
//! partition with [`REQUEUE_GROUP`], so only the group it failed in receives it again.
//!
//! # Example
//! ```
//! use taskbroker_client::batch::{BatchBuilder, BatchView};
//! use taskbroker_client::proto::headers;
//!
//! # let bytes = {
//! #     let mut b = BatchBuilder::new(0, 0, 0);
//! #     let mut r = taskbroker_client::batch::TaskRecord::new(b"job".to_vec(), 0);
//! #     r.headers.push(taskbroker_client::batch::Header::new(headers::ORIGIN_TOPIC, "jobs"));
//! #     r.headers.push(taskbroker_client::batch::Header::new(headers::ATTEMPTS, "5"));
//! #     b.push(r)?;
//! #     b.finish().into_bytes()
//! # };
//! // A worker consuming the dead-letter topic reads where a task came from:
//! let view = BatchView::new(&bytes)?;
//! let task = view.records().next().expect("one record");
//! assert_eq!(task.header(headers::ORIGIN_TOPIC), Some(&b"jobs"[..]));
//! assert_eq!(headers::parse_u64(task.header(headers::ATTEMPTS)), Some(5));
//! # Ok::<(), taskbroker_client::batch::BatchError>(())
//! ```

/// Prefix of every header name the broker reserves.
pub const RESERVED_PREFIX: &str = "taskbroker-";
/// Dead letter: the topic the task failed in.
pub const ORIGIN_TOPIC: &str = "taskbroker-origin-topic";
/// Dead letter: its partition there.
pub const ORIGIN_PARTITION: &str = "taskbroker-origin-partition";
/// Dead letter: its offset there.
pub const ORIGIN_OFFSET: &str = "taskbroker-origin-offset";
/// Dead letter: the consumer group it failed in.
pub const ORIGIN_GROUP: &str = "taskbroker-origin-group";
/// Dead letter: deliveries made before it was dead-lettered.
pub const ATTEMPTS: &str = "taskbroker-attempts";
/// Dead letter: why the last attempt failed (the worker's nack reason, or `lease expired`).
pub const LAST_ERROR: &str = "taskbroker-last-error";
/// Dead letter: when it was dead-lettered (the leader's clock, ms since the Unix epoch).
pub const DEAD_LETTERED_AT_MS: &str = "taskbroker-dead-lettered-at-ms";
/// Requeued task: only this consumer group of the topic receives it.
pub const REQUEUE_GROUP: &str = "taskbroker-requeue-group";

/// Whether `name` is reserved for the broker.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// A decimal header value as a number (`None` if absent or not a number).
pub fn parse_u64(value: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}
