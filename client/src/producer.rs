//! [`Producer`]: batches tasks per partition and sends them, idempotently, to partition leaders.
//!
//! # Design notes
//! - A background task per producer owns the open batches (one per partition). A batch is
//!   sealed when the next task would not fit in `batch_bytes_max`, or when its first task has
//!   waited `linger` and the partition has no batch in flight or waiting (else it keeps
//!   filling until the partition is free: batches grow with the load instead of queueing up
//!   as many small ones); [`Producer::flush`] seals all of them at once.
//! - Idempotence: a producer has a random id; each partition has a sequence counter. A batch
//!   gets its `first_sequence` when it is opened and keeps its encoded bytes until answered, so
//!   every retry (after a timeout, a lost answer, a leader change) presents the same
//!   `(producer_id, first_sequence)` and the broker stores it once (answering `duplicate`).
//! - At most [`BATCHES_IN_FLIGHT_PER_PARTITION_MAX`] batch is in flight per partition: batches
//!   of a partition are stored in send order even across retries.
//! - Memory is bounded by a byte semaphore of `in_flight_bytes_max`: a task holds its bytes'
//!   permits from `send` until its answer, so `send` waits (backpressure) when the cluster is
//!   slower than the producers.
//!
//! # Invariants
//! - Every accepted task's future resolves exactly once: with its offset, or with the error
//!   that ended its batch's retries (outcome then unknown if the error is retryable).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::batch::{BatchBuilder, BatchError, BatchLimits, Header, TaskRecord};
use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::proto::{ProduceRequest, ProduceResponse};

/// Default linger: how long a task may wait for others to share its batch.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);
/// Default target size of a batch, in bytes.
pub const DEFAULT_BATCH_BYTES_MAX: usize = 1 << 20;
/// Default bound on the bytes of tasks sent but not yet answered, per producer.
pub const DEFAULT_IN_FLIGHT_BYTES_MAX: usize = 64 << 20;
/// Messages queued from `send` to the background task. Why: the byte semaphore is the real
/// bound; this only caps the channel's bookkeeping.
pub const PRODUCER_QUEUE_MAX: usize = 4096;
/// Batches in flight per partition: one keeps a partition's batches in send order.
pub const BATCHES_IN_FLIGHT_PER_PARTITION_MAX: usize = 1;
/// Bytes charged per task on top of its data, for the record's envelope.
const TASK_OVERHEAD_BYTES: usize = 64;

/// The 64-bit FNV-1a hash of `bytes`: the key partitioner's hash.
///
/// Stable across versions and platforms by definition (offset basis `0xcbf29ce484222325`,
/// prime `0x100000001b3`), so a key maps to the same partition for every client as long as the
/// topic's partition count does not change.
///
/// ```
/// use taskbroker_client::producer::fnv1a64;
/// assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `key` in a topic with `partitions` partitions: `fnv1a64(key) % partitions`.
///
/// ```
/// use taskbroker_client::producer::partition_for_key;
/// assert_eq!(partition_for_key(b"user-42", 12), partition_for_key(b"user-42", 12));
/// assert!(partition_for_key(b"user-42", 12) < 12);
/// ```
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    // The remainder is below `partitions`, a u32.
    (fnv1a64(key) % u64::from(partitions.max(1))) as u32
}

/// A task to produce: payload plus optional key, headers, delay, priority and partition.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use taskbroker_client::Task;
///
/// let task = Task::new(&b"{\"image\": \"cat.png\"}"[..])
///     .key("user-42")
///     .header("trace-id", "abc123")
///     .delay(Duration::from_secs(30))
///     .priority(5);
/// assert_eq!(task.payload().len(), 20);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    payload: Bytes,
    key: Option<Bytes>,
    headers: Vec<Header>,
    delay: Option<Duration>,
    not_before_ms: Option<u64>,
    priority: u8,
    partition: Option<u32>,
}

impl Task {
    /// A task with this payload.
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("hello");
    /// assert_eq!(t.payload(), &b"hello"[..]);
    /// ```
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Task {
            payload: payload.into(),
            ..Task::default()
        }
    }

    /// Sets the key: tasks with the same key go to the same partition (see [`fnv1a64`]).
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").key("user-1");
    /// # let _ = t;
    /// ```
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").header("content-type", "application/json");
    /// # let _ = t;
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// Delays delivery: the task is not delivered before `now + delay` (now = when it is
    /// sent, by the client's wall clock).
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").delay(std::time::Duration::from_secs(60));
    /// # let _ = t;
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Delays delivery until an absolute time, in ms since the Unix epoch.
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").not_before_ms(1_900_000_000_000);
    /// # let _ = t;
    /// ```
    pub fn not_before_ms(mut self, at_ms: u64) -> Self {
        self.not_before_ms = Some(at_ms);
        self
    }

    /// Sets the priority (higher is more urgent; default 0).
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").priority(9);
    /// # let _ = t;
    /// ```
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sends the task to this partition, bypassing the partitioner.
    ///
    /// ```
    /// let t = taskbroker_client::Task::new("x").partition(3);
    /// # let _ = t;
    /// ```
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The payload.
    ///
    /// ```
    /// assert!(taskbroker_client::Task::new("").payload().is_empty());
    /// ```
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    fn data_len(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Where a task was stored.
///
/// ```
/// let o = taskbroker_client::TaskOffset { partition: 2, offset: 41 };
/// assert_eq!(o.partition, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskOffset {
    /// The partition.
    pub partition: u32,
    /// The task's offset in the partition.
    pub offset: u64,
}

/// Configures a [`Producer`].
///
/// ```no_run
/// # async fn demo(client: taskbroker_client::Client) {
/// use std::time::Duration;
/// let producer = client
///     .producer()
///     .linger(Duration::from_millis(10))
///     .batch_bytes_max(512 * 1024)
///     .in_flight_bytes_max(32 << 20)
///     .build();
/// # let _ = producer; }
/// ```
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    client: Client,
    linger: Duration,
    batch_bytes_max: usize,
    in_flight_bytes_max: usize,
    idempotent: bool,
}

impl ProducerBuilder {
    pub(crate) fn new(client: Client) -> Self {
        ProducerBuilder {
            client,
            linger: DEFAULT_LINGER,
            batch_bytes_max: DEFAULT_BATCH_BYTES_MAX,
            in_flight_bytes_max: DEFAULT_IN_FLIGHT_BYTES_MAX,
            idempotent: true,
        }
    }

    /// How long a task may wait for more tasks to share its batch ([`DEFAULT_LINGER`]).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.producer().linger(std::time::Duration::ZERO); }
    /// ```
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Target batch size in bytes ([`DEFAULT_BATCH_BYTES_MAX`]; capped by the format's limit).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.producer().batch_bytes_max(64 * 1024); }
    /// ```
    pub fn batch_bytes_max(mut self, bytes: usize) -> Self {
        self.batch_bytes_max = bytes;
        self
    }

    /// Bound on bytes sent but not yet answered ([`DEFAULT_IN_FLIGHT_BYTES_MAX`]); `send`
    /// waits when it is reached.
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.producer().in_flight_bytes_max(8 << 20); }
    /// ```
    pub fn in_flight_bytes_max(mut self, bytes: usize) -> Self {
        self.in_flight_bytes_max = bytes;
        self
    }

    /// Turns idempotence off (producer id 0: the broker never deduplicates). On by default.
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.producer().idempotent(false); }
    /// ```
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }

    /// Starts the producer's background task (needs a tokio runtime).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { let p = c.producer().build(); }
    /// ```
    pub fn build(self) -> Producer {
        let producer_id = if self.idempotent {
            self.client.random_u64().max(1)
        } else {
            0
        };
        let in_flight_bytes_max = self.in_flight_bytes_max.clamp(1, Semaphore::MAX_PERMITS);
        let in_flight_permits = u32::try_from(in_flight_bytes_max).unwrap_or(u32::MAX);
        let (tx, rx) = mpsc::channel(PRODUCER_QUEUE_MAX);
        let batch_bytes_max = self.batch_bytes_max.clamp(1, crate::batch::BATCH_BYTES_MAX);
        let sender = Sender {
            client: self.client.clone(),
            producer_id,
            linger: self.linger,
            limits: BatchLimits {
                batch_bytes_max,
                ..BatchLimits::default()
            },
            parts: BTreeMap::new(),
            in_flight: JoinSet::new(),
        };
        tokio::spawn(sender.run(rx));
        debug!(producer_id, "producer started");
        Producer {
            shared: Arc::new(Shared {
                client: self.client,
                tx,
                bytes: Arc::new(Semaphore::new(in_flight_permits as usize)),
                in_flight_permits,
                round_robin: AtomicU32::new(0),
                producer_id,
                batch_bytes_max,
            }),
        }
    }
}

struct Shared {
    client: Client,
    tx: mpsc::Sender<Msg>,
    bytes: Arc<Semaphore>,
    in_flight_permits: u32,
    round_robin: AtomicU32,
    producer_id: u64,
    batch_bytes_max: usize,
}

/// Sends tasks to a cluster: cheap to clone, `Send + Sync`. Dropping the last clone sends what
/// is buffered and stops the background task.
///
/// # Example
/// ```no_run
/// use taskbroker_client::{Client, Task};
///
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let client = Client::connect(["127.0.0.1:7070"]).await?;
/// let producer = client.producer().build();
/// // Wait for each task's commit:
/// let at = producer.send("emails", Task::new("welcome user-1").key("user-1")).await?;
/// // Or pipeline: enqueue many, then await their offsets.
/// let mut pending = Vec::new();
/// for i in 0..1000 {
///     pending.push(producer.enqueue("emails", Task::new(format!("task {i}"))).await?);
/// }
/// for delivery in pending {
///     delivery.await?;
/// }
/// producer.flush().await?;
/// # let _ = at; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("producer_id", &self.shared.producer_id)
            .finish_non_exhaustive()
    }
}

/// The future of a task's committed offset, returned by [`Producer::send`].
///
/// ```no_run
/// # async fn demo(p: taskbroker_client::Producer) -> Result<(), taskbroker_client::Error> {
/// let fut: taskbroker_client::SendFuture = p.send("t", taskbroker_client::Task::new("x"));
/// let offset = fut.await?;
/// # let _ = offset; Ok(()) }
/// ```
#[must_use = "a SendFuture does nothing unless awaited"]
pub struct SendFuture {
    inner: Pin<Box<dyn Future<Output = Result<TaskOffset>> + Send + 'static>>,
}

impl std::fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture").finish_non_exhaustive()
    }
}

impl Future for SendFuture {
    type Output = Result<TaskOffset>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// A task accepted by the producer: resolves to its committed offset.
/// Returned by [`Producer::enqueue`]; dropping it does not cancel the send.
///
/// ```no_run
/// # async fn demo(p: taskbroker_client::Producer) -> Result<(), taskbroker_client::Error> {
/// let delivery = p.enqueue("t", taskbroker_client::Task::new("x")).await?;
/// let offset = delivery.await?;
/// # let _ = offset; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a Delivery tells whether the task was stored"]
pub struct Delivery {
    rx: oneshot::Receiver<Result<TaskOffset>>,
}

impl Future for Delivery {
    type Output = Result<TaskOffset>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or(Err(Error::Closed {
                what: "the producer",
            }))
        })
    }
}

impl Producer {
    /// Sends a task to `topic` and resolves to its committed offset.
    ///
    /// The future does nothing until polled; to pipeline many tasks, poll many at once (e.g.
    /// `futures::future::join_all`) or use [`enqueue`](Self::enqueue).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::UnknownPartition`], [`Error::TooLarge`], or the error
    /// that ended the retries of the task's batch.
    ///
    /// ```no_run
    /// # async fn demo(p: taskbroker_client::Producer) -> Result<(), taskbroker_client::Error> {
    /// let offset = p.send("emails", taskbroker_client::Task::new("hi")).await?;
    /// # let _ = offset; Ok(()) }
    /// ```
    pub fn send(&self, topic: &str, task: Task) -> SendFuture {
        let this = self.clone();
        let topic = topic.to_string();
        SendFuture {
            inner: Box::pin(async move { this.enqueue(&topic, task).await?.await }),
        }
    }

    /// Accepts a task into a batch, waiting only for buffer space (backpressure), and returns
    /// the [`Delivery`] of its offset.
    ///
    /// # Errors
    /// As [`send`](Self::send), for the errors known before sending.
    ///
    /// ```no_run
    /// # async fn demo(p: taskbroker_client::Producer) -> Result<(), taskbroker_client::Error> {
    /// let d = p.enqueue("emails", taskbroker_client::Task::new("hi")).await?;
    /// # let _ = d; Ok(()) }
    /// ```
    pub async fn enqueue(&self, topic: &str, task: Task) -> Result<Delivery> {
        let s = &self.shared;
        let size = task.data_len() + TASK_OVERHEAD_BYTES;
        let limit = BatchLimits::default().task_bytes_max.min(s.batch_bytes_max);
        if task.data_len() > limit || size > s.in_flight_permits as usize {
            return Err(Error::TooLarge {
                size: task.data_len() as u64,
                max: limit.min(s.in_flight_permits as usize) as u64,
            });
        }
        let partition = self.choose_partition(topic, &task).await?;
        let permits = u32::try_from(size).unwrap_or(u32::MAX);
        let permit = s
            .bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Error::Closed {
                what: "the producer",
            })?;
        let now_ms = (s.client.inner.config.wall_clock)();
        let not_before_ms = match (task.not_before_ms, task.delay) {
            (Some(at), _) => Some(at),
            (None, Some(d)) => {
                Some(now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }
            (None, None) => None,
        };
        let record = TaskRecord {
            // Zero-copy when the payload is a uniquely owned buffer (e.g. from a Vec).
            key: task.key.map(Vec::from),
            payload: Vec::from(task.payload),
            headers: task.headers,
            timestamp_ms: now_ms,
            not_before_ms,
            priority: task.priority,
        };
        let (tx, rx) = oneshot::channel();
        s.tx.send(Msg::Task(Pending {
            topic: topic.to_string(),
            partition,
            record,
            waiter: Waiter {
                tx,
                _permit: permit,
            },
        }))
        .await
        .map_err(|_| Error::Closed {
            what: "the producer",
        })?;
        Ok(Delivery { rx })
    }

    async fn choose_partition(&self, topic: &str, task: &Task) -> Result<u32> {
        let client = &self.shared.client;
        let mut count = client.partition_count(topic).await?;
        if let Some(p) = task.partition {
            if p >= count {
                // Maybe partitions were added since the cache was filled.
                client.refresh_metadata(vec![topic.to_string()]).await?;
                count = client.cached_partition_count(topic).unwrap_or(0);
                if p >= count {
                    return Err(Error::UnknownPartition {
                        topic: topic.to_string(),
                        partition: p,
                    });
                }
            }
            return Ok(p);
        }
        if count == 0 {
            return Err(Error::Unavailable {
                reason: format!("topic {topic:?} has no partitions"),
            });
        }
        Ok(match &task.key {
            Some(key) => partition_for_key(key, count),
            None => self.shared.round_robin.fetch_add(1, Ordering::Relaxed) % count,
        })
    }

    /// Sends every buffered task now and waits until every task accepted before (and during)
    /// the call is answered.
    ///
    /// # Errors
    /// [`Error::Closed`] if the background task stopped. Individual task failures are reported
    /// through their own futures.
    ///
    /// ```no_run
    /// # async fn demo(p: taskbroker_client::Producer) -> Result<(), taskbroker_client::Error> {
    /// p.flush().await?;
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        let closed = || Error::Closed {
            what: "the producer",
        };
        self.shared
            .tx
            .send(Msg::Flush)
            .await
            .map_err(|_| closed())?;
        let all = self
            .shared
            .bytes
            .acquire_many(self.shared.in_flight_permits)
            .await
            .map_err(|_| closed())?;
        drop(all);
        Ok(())
    }

    /// This producer's idempotence id (0 when idempotence is off).
    ///
    /// ```no_run
    /// # fn f(p: taskbroker_client::Producer) { println!("{}", p.producer_id()); }
    /// ```
    pub fn producer_id(&self) -> u64 {
        self.shared.producer_id
    }
}

enum Msg {
    Task(Pending),
    Flush,
}

struct Waiter {
    tx: oneshot::Sender<Result<TaskOffset>>,
    _permit: OwnedSemaphorePermit,
}

struct Pending {
    topic: String,
    partition: u32,
    record: TaskRecord,
    waiter: Waiter,
}

/// A batch being filled.
struct Open {
    builder: BatchBuilder,
    base_ms: u64,
    waiters: Vec<Waiter>,
    deadline: Instant,
}

/// A batch ready to send (or being sent): its bytes never change, so retries are identical.
struct Sealed {
    bytes: Bytes,
    waiters: Vec<Waiter>,
}

#[derive(Default)]
struct Part {
    next_sequence: u64,
    open: Option<Open>,
    ready: VecDeque<Sealed>,
    in_flight: Option<Vec<Waiter>>,
}

type Key = (String, u32);

/// The background task: batching state per partition (sans-IO decisions; IO is spawned).
struct Sender {
    client: Client,
    producer_id: u64,
    linger: Duration,
    limits: BatchLimits,
    parts: BTreeMap<Key, Part>,
    in_flight: JoinSet<(Key, Result<ProduceResponse>)>,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut open = true;
        loop {
            // A busy partition's open batch waits for its turn, not for its linger.
            let next_deadline = self
                .parts
                .values()
                .filter(|p| !p.is_busy())
                .filter_map(|p| p.open.as_ref().map(|o| o.deadline))
                .min();
            tokio::select! {
                biased;
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok((key, result)) => self.complete(key, result),
                        Err(e) => warn!(error = %e, "produce task failed"),
                    }
                }
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Task(p)) => self.push(p, Instant::now()),
                    Some(Msg::Flush) => self.seal_all(None),
                    None => {
                        open = false;
                        self.seal_all(None);
                    }
                },
                _ = sleep_until(next_deadline) => {
                    self.seal_all(Some(Instant::now()));
                }
            }
            self.dispatch();
            if !open && self.in_flight.is_empty() && self.parts.values().all(Part::is_idle) {
                debug!(producer_id = self.producer_id, "producer stopped");
                return;
            }
        }
    }

    fn push(&mut self, p: Pending, now: Instant) {
        let part = self.parts.entry((p.topic, p.partition)).or_default();
        let record = p.record;
        if let Some(o) = &part.open {
            if let Err(e) = o.builder.check(&record) {
                if is_full(&e) {
                    seal(part);
                }
            }
        }
        if part.open.is_none() {
            part.open = Some(Open {
                builder: BatchBuilder::with_limits(
                    self.producer_id,
                    part.next_sequence,
                    record.timestamp_ms,
                    self.limits,
                ),
                base_ms: record.timestamp_ms,
                waiters: Vec::new(),
                deadline: now + self.linger,
            });
        }
        let Some(o) = part.open.as_mut() else {
            return;
        };
        let mut record = record;
        // The wall clock may step back: keep timestamps within the batch's range.
        record.timestamp_ms = record.timestamp_ms.max(o.builder_base());
        match o.builder.push(record) {
            Ok(()) => {
                o.waiters.push(p.waiter);
                part.next_sequence += 1;
            }
            Err(e) => {
                let _ = p.waiter.tx.send(Err(batch_error(e)));
            }
        }
        if part.open.as_ref().is_some_and(|o| o.builder.is_empty()) {
            part.open = None;
        }
    }

    /// Seals every open batch (`None`: flush), or those whose linger ended by `expired_at`
    /// on partitions that are not busy (see [`Part::is_busy`]).
    fn seal_all(&mut self, expired_at: Option<Instant>) {
        for part in self.parts.values_mut() {
            let due = match (&part.open, expired_at) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(o), Some(now)) => o.deadline <= now && !part.is_busy(),
            };
            if due {
                seal(part);
            }
        }
    }

    fn dispatch(&mut self) {
        for (key, part) in self.parts.iter_mut() {
            if part.in_flight.is_some() {
                continue;
            }
            let Some(batch) = part.ready.pop_front() else {
                continue;
            };
            part.in_flight = Some(batch.waiters);
            let client = self.client.clone();
            let key = key.clone();
            let bytes = batch.bytes;
            self.in_flight.spawn(async move {
                let result = produce(&client, &key.0, key.1, bytes).await;
                (key, result)
            });
        }
    }

    fn complete(&mut self, key: Key, result: Result<ProduceResponse>) {
        let Some(part) = self.parts.get_mut(&key) else {
            return;
        };
        let waiters = part.in_flight.take().unwrap_or_default();
        // What gathered while the partition was busy goes out now if its linger is over.
        if !part.is_busy()
            && part
                .open
                .as_ref()
                .is_some_and(|o| o.deadline <= Instant::now())
        {
            seal(part);
        }
        match result {
            Ok(resp) => {
                if resp.duplicate {
                    debug!(topic = %key.0, partition = key.1, base_offset = resp.base_offset, "batch was a duplicate of a stored one");
                }
                if resp.count as usize != waiters.len() {
                    warn!(topic = %key.0, partition = key.1, expected = waiters.len(), got = resp.count, "produce answer has an unexpected record count");
                }
                for (i, w) in waiters.into_iter().enumerate() {
                    let _ = w.tx.send(Ok(TaskOffset {
                        partition: key.1,
                        offset: resp.base_offset + i as u64,
                    }));
                }
            }
            Err(e) => {
                warn!(topic = %key.0, partition = key.1, error = %e, tasks = waiters.len(), "produce failed");
                for w in waiters {
                    let _ = w.tx.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Part {
    /// A batch is in flight or sealed and waiting. Why it matters: only one batch per
    /// partition is in flight, so sealing a small batch on linger while the partition is busy
    /// would only queue it behind the others; keeping it open lets it grow until the partition
    /// is free (one Raft entry and one fsync for all of them), so batches adapt to the load.
    fn is_busy(&self) -> bool {
        self.in_flight.is_some() || !self.ready.is_empty()
    }

    fn is_idle(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.in_flight.is_none()
    }
}

impl Open {
    fn builder_base(&self) -> u64 {
        self.base_ms
    }
}

fn seal(part: &mut Part) {
    if let Some(o) = part.open.take() {
        let batch = o.builder.finish();
        part.ready.push_back(Sealed {
            bytes: batch.into_bytes(),
            waiters: o.waiters,
        });
    }
}

fn is_full(e: &BatchError) -> bool {
    matches!(
        e,
        BatchError::TooLarge { .. }
            | BatchError::TooManyRecords { .. }
            | BatchError::TimestampOutOfRange { .. }
    )
}

fn batch_error(e: BatchError) -> Error {
    match e {
        BatchError::TaskTooLarge { len, max, .. } => Error::TooLarge {
            size: len as u64,
            max: max as u64,
        },
        BatchError::TooLarge { len, max } => Error::TooLarge {
            size: len as u64,
            max: max as u64,
        },
        other => Error::InvalidArgument {
            reason: other.to_string(),
        },
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn produce(
    client: &Client,
    topic: &str,
    partition: u32,
    batch: Bytes,
) -> Result<ProduceResponse> {
    client
        .call(
            Route::Partition { topic, partition },
            Duration::ZERO,
            |c, ctx| {
                let req = ProduceRequest {
                    topic: topic.to_string(),
                    partition,
                    batch: batch.clone(),
                };
                async move { c.produce(ctx, req).await }
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchHeader;

    fn sender(batch_bytes_max: usize, linger: Duration) -> Sender {
        Sender {
            client: Client::unconnected_for_tests(),
            producer_id: 99,
            linger,
            limits: BatchLimits {
                batch_bytes_max,
                ..BatchLimits::default()
            },
            parts: BTreeMap::new(),
            in_flight: JoinSet::new(),
        }
    }

    fn pending(
        sem: &Arc<Semaphore>,
        partition: u32,
        payload: &[u8],
    ) -> (Pending, oneshot::Receiver<Result<TaskOffset>>) {
        let (tx, rx) = oneshot::channel();
        let permit = sem.clone().try_acquire_owned().unwrap();
        (
            Pending {
                topic: "t".into(),
                partition,
                record: TaskRecord::new(payload.to_vec(), 1_000),
                waiter: Waiter {
                    tx,
                    _permit: permit,
                },
            },
            rx,
        )
    }

    fn headers(s: &Sender, partition: u32) -> Vec<BatchHeader> {
        s.parts[&("t".to_string(), partition)]
            .ready
            .iter()
            .map(|b| BatchHeader::decode(&b.bytes).unwrap())
            .collect()
    }

    #[test]
    fn fnv1a64_values_are_pinned() {
        // Reference values of the FNV-1a 64 specification; never change them.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // The partitions of a few keys: changing these breaks key affinity across versions.
        let got: Vec<u32> = ["user-1", "user-2", "order-42", ""]
            .iter()
            .map(|k| partition_for_key(k.as_bytes(), 12))
            .collect();
        let want: Vec<u32> = ["user-1", "user-2", "order-42", ""]
            .iter()
            .map(|k| (fnv1a64(k.as_bytes()) % 12) as u32)
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            partition_for_key(b"", 12),
            (0xcbf2_9ce4_8422_2325u64 % 12) as u32
        );
        assert_eq!(
            partition_for_key(b"x", 0),
            0,
            "zero partitions does not divide by zero"
        );
    }

    #[test]
    fn sequences_are_per_partition_and_contiguous() {
        let sem = Arc::new(Semaphore::new(100));
        let mut s = sender(1 << 20, Duration::from_millis(5));
        let now = Instant::now();
        let mut rxs = Vec::new();
        for (p, n) in [(0, 3), (1, 2)] {
            for _ in 0..n {
                let (pe, rx) = pending(&sem, p, b"x");
                s.push(pe, now);
                rxs.push(rx);
            }
        }
        s.seal_all(None);
        for _ in 0..2 {
            let (pe, rx) = pending(&sem, 0, b"y");
            s.push(pe, now);
            rxs.push(rx);
        }
        s.seal_all(None);
        let p0 = headers(&s, 0);
        assert_eq!(
            p0.iter()
                .map(|h| (h.producer_id, h.first_sequence, h.record_count))
                .collect::<Vec<_>>(),
            vec![(99, 0, 3), (99, 3, 2)]
        );
        let p1 = headers(&s, 1);
        assert_eq!(p1.len(), 1);
        assert_eq!((p1[0].first_sequence, p1[0].record_count), (0, 2));
        // Permits are held until the tasks are answered.
        assert_eq!(sem.available_permits(), 100 - 7);
    }

    #[test]
    fn batches_are_sealed_by_size() {
        let sem = Arc::new(Semaphore::new(1000));
        let mut s = sender(1024, Duration::from_secs(60));
        let now = Instant::now();
        let mut rxs = Vec::new();
        for _ in 0..20 {
            let (pe, rx) = pending(&sem, 0, &[7u8; 200]);
            s.push(pe, now);
            rxs.push(rx);
        }
        let sealed = headers(&s, 0);
        assert!(
            sealed.len() >= 4,
            "20 x 200 B in 1 KiB batches: {}",
            sealed.len()
        );
        for h in &sealed {
            assert!(h.total_len() <= 1024);
        }
        // Sequences stay contiguous across size-sealed batches.
        let mut next = 0;
        for h in &sealed {
            assert_eq!(h.first_sequence, next);
            next += u64::from(h.record_count);
        }
    }

    #[test]
    fn batches_are_sealed_by_linger() {
        let sem = Arc::new(Semaphore::new(10));
        let linger = Duration::from_millis(5);
        let mut s = sender(1 << 20, linger);
        let now = Instant::now();
        let (pe, _rx) = pending(&sem, 0, b"x");
        s.push(pe, now);
        s.seal_all(Some(now + linger / 2));
        assert!(headers(&s, 0).is_empty(), "not sealed before the linger");
        s.seal_all(Some(now + linger));
        assert_eq!(headers(&s, 0).len(), 1, "sealed at the linger");
    }

    #[test]
    fn a_busy_partition_keeps_filling_its_batch_past_the_linger() {
        let sem = Arc::new(Semaphore::new(10));
        let now = Instant::now();
        // Zero linger: every deadline has passed by the time it is checked.
        let mut s = sender(1 << 20, Duration::ZERO);
        let (pe, _rx1) = pending(&sem, 0, b"a");
        s.push(pe, now);
        s.seal_all(Some(now));
        assert_eq!(
            headers(&s, 0).len(),
            1,
            "an idle partition seals at the linger"
        );
        // The first batch goes out; the partition is busy from now on.
        let part = s.parts.get_mut(&("t".to_string(), 0)).expect("part");
        let first = part.ready.pop_front().expect("sealed");
        part.in_flight = Some(first.waiters);
        let (pe, _rx2) = pending(&sem, 0, b"b");
        s.push(pe, now);
        let (pe, _rx3) = pending(&sem, 0, b"c");
        s.push(pe, now);
        s.seal_all(Some(now + Duration::from_secs(1)));
        let part = &s.parts[&("t".to_string(), 0)];
        assert!(part.ready.is_empty(), "not sealed while busy");
        assert_eq!(part.open.as_ref().map(|o| o.waiters.len()), Some(2));
        // The answer frees the partition: the grown batch is sealed at once.
        s.complete(
            ("t".to_string(), 0),
            Ok(ProduceResponse {
                base_offset: 0,
                count: 1,
                duplicate: false,
            }),
        );
        assert!(s.parts[&("t".to_string(), 0)].open.is_none());
        let h = headers(&s, 0);
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].record_count, h[0].first_sequence), (2, 1));
    }

    #[test]
    fn an_oversize_task_fails_alone() {
        let sem = Arc::new(Semaphore::new(10));
        let mut s = sender(1024, Duration::from_secs(1));
        let now = Instant::now();
        let (pe, mut rx) = pending(&sem, 0, &[0u8; 4096]);
        s.push(pe, now);
        assert!(matches!(rx.try_recv(), Ok(Err(Error::TooLarge { .. }))));
        let (pe, _rx) = pending(&sem, 0, b"ok");
        s.push(pe, now);
        s.seal_all(None);
        let h = headers(&s, 0);
        assert_eq!((h[0].first_sequence, h[0].record_count), (0, 1));
    }

    #[test]
    fn task_builder_and_sizes() {
        let t = Task::new("abc").key("k").header("h", "vv");
        assert_eq!(t.data_len(), 3 + 1 + 1 + 2);
    }
}
