//! [`StreamConsumer`]: ordered, offset-based consumption for `stream` groups.
//!
//! # Design notes
//! - Each assigned partition has a position (the next offset to read); records come back in
//!   offset order per partition, partitions round-robin.
//! - Positions start at the group's committed offsets (0 when none); [`StreamConsumer::commit`]
//!   stores the positions, [`StreamConsumer::seek`] moves one. Committing is explicit: a crash
//!   re-reads from the last commit (at-least-once).
//! - Assignment: by default every partition of the topic; pass `.partitions([..])` to split a
//!   topic between members yourself (the broker has no membership protocol yet).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;

use crate::batch::{aligned_copy, BatchView};
use crate::client::{Client, Route};
use crate::error::Result;
use crate::proto::{GroupMode, StreamFetchRequest};

/// Default most bytes of batches per stream fetch.
pub const DEFAULT_STREAM_FETCH_BYTES_MAX: u32 = 4 << 20;
/// Records decoded ahead of [`StreamConsumer::next`]. Why: bounds memory between fetches.
pub const STREAM_BUFFER_RECORDS_MAX: usize = 10_000;

/// Configures a [`StreamConsumer`].
///
/// ```no_run
/// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
/// let consumer = client
///     .stream_consumer("events", "indexer")
///     .partitions([0, 1])
///     .wait(std::time::Duration::from_millis(200))
///     .build()
///     .await?;
/// # let _ = consumer; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct StreamConsumerBuilder {
    client: Client,
    topic: String,
    group: String,
    partitions: Option<Vec<u32>>,
    wait: Duration,
    fetch_bytes_max: u32,
}

impl StreamConsumerBuilder {
    pub(crate) fn new(client: Client, topic: String, group: String) -> Self {
        StreamConsumerBuilder {
            client,
            topic,
            group,
            partitions: None,
            wait: Duration::from_millis(500),
            fetch_bytes_max: DEFAULT_STREAM_FETCH_BYTES_MAX,
        }
    }

    /// Consume only these partitions (default: all).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.stream_consumer("t", "g").partitions([3]); }
    /// ```
    pub fn partitions(mut self, partitions: impl IntoIterator<Item = u32>) -> Self {
        self.partitions = Some(partitions.into_iter().collect());
        self
    }

    /// How long a fetch waits on the broker when a partition has nothing new.
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.stream_consumer("t", "g").wait(std::time::Duration::ZERO); }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Most bytes of batches per fetch ([`DEFAULT_STREAM_FETCH_BYTES_MAX`]).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.stream_consumer("t", "g").fetch_bytes_max(1 << 20); }
    /// ```
    pub fn fetch_bytes_max(mut self, bytes: u32) -> Self {
        self.fetch_bytes_max = bytes.max(1);
        self
    }

    /// Joins (creating if needed) the stream group and loads its committed offsets.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`](crate::Error::UnknownTopic), a group of the other mode
    /// ([`Error::InvalidArgument`](crate::Error::InvalidArgument)), or the failure to reach
    /// the cluster.
    ///
    /// ```no_run
    /// # async fn demo(c: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// let consumer = c.stream_consumer("t", "g").build().await?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub async fn build(self) -> Result<StreamConsumer> {
        let client = self.client;
        let (topic, group) = (self.topic, self.group);
        client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (t, g) = (topic.clone(), group.clone());
                async move { c.create_group(ctx, t, g, GroupMode::Stream).await }
            })
            .await?;
        let count = client.partition_count(&topic).await?;
        let partitions = self.partitions.unwrap_or_else(|| (0..count).collect());
        let description = client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (t, g) = (topic.clone(), group.clone());
                async move { c.describe_group(ctx, t, g).await }
            })
            .await?;
        let positions = partitions
            .iter()
            .map(|p| {
                let committed = description
                    .partitions
                    .iter()
                    .find(|s| s.partition == *p)
                    .and_then(|s| s.committed_offset)
                    .unwrap_or(0);
                (*p, committed)
            })
            .collect();
        Ok(StreamConsumer {
            client,
            topic,
            group,
            positions,
            cursor: 0,
            buffer: VecDeque::new(),
            wait: self.wait,
            fetch_bytes_max: self.fetch_bytes_max,
        })
    }
}

/// One record read from a stream group.
///
/// ```no_run
/// # async fn demo(mut c: taskbroker_client::StreamConsumer) -> Result<(), taskbroker_client::Error> {
/// let record = c.next().await?;
/// println!("{}:{} {:?}", record.partition, record.offset, record.payload);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
    /// The headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// When the producer sent it (ms since the Unix epoch).
    pub timestamp_ms: u64,
}

/// Reads a topic in offset order per partition, with committed offsets. Not `Clone`: it owns
/// its positions; it is `Send`, so move it into the task that consumes.
///
/// ```no_run
/// use taskbroker_client::Client;
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let client = Client::connect(["127.0.0.1:7070"]).await?;
/// let mut consumer = client.stream_consumer("events", "indexer").build().await?;
/// for _ in 0..100 {
///     let record = consumer.next().await?;
///     println!("{}:{}", record.partition, record.offset);
/// }
/// consumer.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StreamConsumer {
    client: Client,
    topic: String,
    group: String,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<u32, u64>,
    cursor: usize,
    buffer: VecDeque<StreamRecord>,
    wait: Duration,
    fetch_bytes_max: u32,
}

impl StreamConsumer {
    /// The next record (waits until one is available).
    ///
    /// # Errors
    /// The failure to reach the cluster within the retry budget, or an unknown topic.
    ///
    /// ```no_run
    /// # async fn demo(mut c: taskbroker_client::StreamConsumer) -> Result<(), taskbroker_client::Error> {
    /// let r = c.next().await?;
    /// # let _ = r; Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Result<StreamRecord> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                self.positions.insert(r.partition, r.offset + 1);
                return Ok(r);
            }
            self.fill().await?;
        }
    }

    /// Fetches from the next partition in turn (long-polling only after a whole empty sweep).
    async fn fill(&mut self) -> Result<()> {
        let partitions: Vec<u32> = self.positions.keys().copied().collect();
        if partitions.is_empty() {
            tokio::time::sleep(self.wait).await;
            return Ok(());
        }
        for i in 0..partitions.len() {
            let partition = partitions[(self.cursor + i) % partitions.len()];
            let last = i + 1 == partitions.len();
            let wait = if last { self.wait } else { Duration::ZERO };
            let got = self.fetch_partition(partition, wait).await?;
            if got > 0 {
                self.cursor = (self.cursor + i + 1) % partitions.len();
                return Ok(());
            }
        }
        self.cursor = (self.cursor + 1) % partitions.len();
        Ok(())
    }

    async fn fetch_partition(&mut self, partition: u32, wait: Duration) -> Result<usize> {
        let offset = self.positions.get(&partition).copied().unwrap_or(0);
        let topic = self.topic.as_str();
        let max_bytes = self.fetch_bytes_max;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let resp = self
            .client
            .call(Route::Partition { topic, partition }, wait, |c, ctx| {
                let req = StreamFetchRequest {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    max_bytes,
                    wait_ms,
                };
                async move { c.stream_fetch(ctx, req).await }
            })
            .await?;
        let mut added = 0;
        for batch in resp.batches {
            let bytes = aligned_copy(&batch.bytes);
            let view = match BatchView::new(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    debug!(partition, base_offset = batch.base_offset, error = %e, "undecodable stored batch skipped");
                    continue;
                }
            };
            for record in view.records() {
                let at = batch.base_offset + record.index() as u64;
                if at < offset || self.buffer.len() >= STREAM_BUFFER_RECORDS_MAX {
                    continue;
                }
                self.buffer.push_back(StreamRecord {
                    partition,
                    offset: at,
                    key: record.key().map(|k| bytes.slice_ref(k)),
                    payload: bytes.slice_ref(record.payload()),
                    headers: record
                        .headers()
                        .map(|(n, v)| (n.to_string(), bytes.slice_ref(v)))
                        .collect(),
                    timestamp_ms: record.timestamp_ms(),
                });
                added += 1;
            }
        }
        Ok(added)
    }

    /// Commits the current positions (the offset after the last record returned) of every
    /// assigned partition.
    ///
    /// # Errors
    /// The first partition whose commit failed after retries.
    ///
    /// ```no_run
    /// # async fn demo(mut c: taskbroker_client::StreamConsumer) -> Result<(), taskbroker_client::Error> {
    /// c.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(&mut self) -> Result<()> {
        let positions: Vec<(u32, u64)> = self.positions.iter().map(|(p, o)| (*p, *o)).collect();
        for (partition, offset) in positions {
            let topic = self.topic.as_str();
            let group = self.group.as_str();
            self.client
                .call(
                    Route::Partition { topic, partition },
                    Duration::ZERO,
                    |c, ctx| {
                        let (t, g) = (topic.to_string(), group.to_string());
                        async move { c.commit_offset(ctx, t, partition, g, offset).await }
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Moves a partition's position: the next record read from it has offset `offset` (or
    /// the first one after it). Records already buffered for that partition are dropped.
    ///
    /// ```no_run
    /// # fn f(mut c: taskbroker_client::StreamConsumer) { c.seek(0, 1_000); }
    /// ```
    pub fn seek(&mut self, partition: u32, offset: u64) {
        self.buffer.retain(|r| r.partition != partition);
        self.positions.insert(partition, offset);
    }

    /// The position (next offset to read) of each assigned partition.
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::StreamConsumer) { println!("{:?}", c.positions()); }
    /// ```
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }
}
