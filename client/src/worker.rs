//! [`Worker`]: leases tasks of a queue group, hands them to your code, settles them.
//!
//! # Design notes
//! - A fetcher task leases tasks partition by partition, round-robin from a random start: after
//!   a partition gave tasks the next fetch starts at the next partition, so no partition is
//!   starved, and many workers of a group spread over the partitions whatever their number.
//!   When a whole sweep finds nothing it long-polls one partition (rotating) for `wait`.
//! - Two semaphores bound the tasks a worker holds: `concurrency` (handed to your code) and
//!   `concurrency + prefetch` (leased at all). The fetcher asks for no more than is free.
//! - Every leased, unsettled task is in a registry; a ticker extends all of their leases every
//!   `visibility_timeout / 3` (automatic extension), so a slow task is not redelivered while
//!   its worker is alive. A crashed worker stops extending and its tasks come back after the
//!   visibility timeout.
//! - Acks, nacks and extends go through a settler task that batches them per partition (one
//!   `settle` RPC carries many items); it lingers for more only while other tasks in hand may
//!   still settle, so a one-task-at-a-time worker's ack leaves at once.
//! - A [`LeasedTask`] dropped without being settled is released (nack with no delay), so a
//!   panicking handler never leaks a lease until expiry.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::batch::{aligned_copy, BatchView, BODY_ALIGN};
use crate::client::{Client, Route};
use crate::error::{Error, Result};
use crate::proto::{self, FetchRequest, FetchResponse, GroupMode, Settle, SettleRequest};

/// Default number of tasks handed to your code at once.
pub const DEFAULT_CONCURRENCY: usize = 1;
/// Default long-poll wait of a fetch when no task is ready.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// Default time to let in-flight tasks finish on shutdown before releasing them.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Most tasks asked for in one fetch. Why: bounds one response and keeps fetches fair.
pub const FETCH_TASKS_MAX: u32 = 256;
/// Most items in one settle RPC. Why: bounds the request and the Raft command it becomes.
pub const SETTLE_BATCH_MAX: usize = 1024;
/// Settle operations queued to the settler task.
pub const SETTLE_QUEUE_MAX: usize = 4096;
/// How long the settler waits for more acks to share an RPC.
pub const SETTLE_LINGER: Duration = Duration::from_millis(2);
/// A busy worker fetches again once `1 / FETCH_LOW_WATER_DIVISOR` of its slots are free.
const FETCH_LOW_WATER_DIVISOR: usize = 4;
/// Longest a busy worker waits for that many free slots before fetching anyway. Why: bounds
/// how long buffered work can run dry while waiting.
const FETCH_GATHER_MAX: Duration = Duration::from_millis(20);
/// Shortest automatic-extension period (for very short visibility timeouts).
const EXTEND_PERIOD_MIN: Duration = Duration::from_millis(50);

/// The lease on a delivered task: offset, attempt and epoch. The epoch grows with every lease
/// of a partition, so it can fence your own side effects (a store that refuses writes with an
/// older token than it has seen is safe against a redelivered task's slow first worker).
///
/// ```
/// use taskbroker_client::LeaseToken;
/// let t = LeaseToken { offset: 10, attempt: 2, epoch: 77 };
/// assert_eq!(t.fencing_token(), 77);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken {
    /// The task's offset in its partition.
    pub offset: u64,
    /// Delivery attempt (1 for the first delivery).
    pub attempt: u32,
    /// Lease epoch, unique per partition.
    pub epoch: u64,
}

impl LeaseToken {
    /// The epoch, as a monotonic fencing token within the task's partition.
    pub fn fencing_token(&self) -> u64 {
        self.epoch
    }

    fn to_proto(self) -> proto::LeaseToken {
        proto::LeaseToken {
            offset: self.offset,
            attempt: self.attempt,
            epoch: self.epoch,
        }
    }

    fn from_proto(t: proto::LeaseToken) -> Self {
        LeaseToken {
            offset: t.offset,
            attempt: t.attempt,
            epoch: t.epoch,
        }
    }
}

/// Configures a [`Worker`].
///
/// ```no_run
/// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
/// use std::time::Duration;
/// let worker = client
///     .worker("thumbnails", "resizers")
///     .concurrency(8)
///     .prefetch(8)
///     .visibility_timeout(Duration::from_secs(60))
///     .wait(Duration::from_millis(500))
///     .build()
///     .await?;
/// # let _ = worker; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    client: Client,
    topic: String,
    group: String,
    concurrency: usize,
    prefetch: Option<usize>,
    visibility_timeout: Option<Duration>,
    wait: Duration,
    auto_extend: bool,
    shutdown_timeout: Duration,
    worker_id: Option<String>,
}

impl WorkerBuilder {
    pub(crate) fn new(client: Client, topic: String, group: String) -> Self {
        WorkerBuilder {
            client,
            topic,
            group,
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            visibility_timeout: None,
            wait: DEFAULT_WAIT,
            auto_extend: true,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            worker_id: None,
        }
    }

    /// Tasks handed to your code at once ([`DEFAULT_CONCURRENCY`]; at least 1).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").concurrency(16); }
    /// ```
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, Semaphore::MAX_PERMITS / 4);
        self
    }

    /// Tasks leased ahead of your code (default: as many as `concurrency`; 0 fetches only
    /// when a slot is free, e.g. for one long GPU job at a time).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").prefetch(0); }
    /// ```
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n.min(Semaphore::MAX_PERMITS / 4));
        self
    }

    /// Lease length (default: the topic's visibility timeout). Leases of tasks being worked on
    /// are extended automatically every third of it.
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").visibility_timeout(std::time::Duration::from_secs(120)); }
    /// ```
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// How long a fetch waits on the broker when no task is ready ([`DEFAULT_WAIT`]).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").wait(std::time::Duration::from_secs(5)); }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Turns automatic lease extension off (on by default).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").auto_extend(false); }
    /// ```
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// How long [`Worker::shutdown`] lets tasks in flight finish before releasing them
    /// ([`DEFAULT_SHUTDOWN_TIMEOUT`]).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").shutdown_timeout(std::time::Duration::from_secs(5)); }
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// This worker's name as the broker shows it (default: the client id plus a random
    /// suffix).
    ///
    /// ```no_run
    /// # fn f(c: taskbroker_client::Client) { c.worker("t", "g").worker_id("gpu-0"); }
    /// ```
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Joins the group (creating it as a queue group if needed) and starts fetching.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], [`Error::InvalidArgument`] (the group exists in stream mode),
    /// or the failure to reach the cluster.
    ///
    /// ```no_run
    /// # async fn demo(c: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// let worker = c.worker("t", "g").build().await?;
    /// # let _ = worker; Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Worker> {
        let client = self.client;
        let (topic, group) = (self.topic, self.group);
        client
            .call(Route::Any, Duration::ZERO, |c, ctx| {
                let (t, g) = (topic.clone(), group.clone());
                async move { c.create_group(ctx, t, g, GroupMode::Queue).await }
            })
            .await?;
        let partitions = client.partition_count(&topic).await?;
        let visibility = match self.visibility_timeout {
            Some(v) => v,
            None => Duration::from_millis(
                client
                    .cached_topic(&topic)
                    .map_or(30_000, |t| t.visibility_timeout_ms),
            ),
        };
        let prefetch = self.prefetch.unwrap_or(self.concurrency);
        let worker_id = self.worker_id.unwrap_or_else(|| {
            format!("{}-{:08x}", client.client_id(), client.random_u64() as u32)
        });
        let capacity = self.concurrency + prefetch;
        let (buffer_tx, buffer_rx) = mpsc::channel(capacity.max(1));
        let (settle_tx, settle_rx) = mpsc::channel(SETTLE_QUEUE_MAX);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            client: client.clone(),
            topic: topic.clone(),
            group: group.clone(),
            worker_id: worker_id.clone(),
            visibility,
            concurrency: self.concurrency,
            capacity,
            shutdown_timeout: self.shutdown_timeout,
            registry: Mutex::new(BTreeMap::new()),
            settle_tx,
            slots: Arc::new(Semaphore::new(capacity)),
            handed: Arc::new(Semaphore::new(self.concurrency)),
            buffer: tokio::sync::Mutex::new(buffer_rx),
            shutdown: shutdown_tx,
            tasks: Mutex::new(Vec::new()),
        });
        let start = (client.random_u64() % u64::from(partitions.max(1))) as u32;
        let fetcher = tokio::spawn(fetch_loop(
            shared.clone(),
            buffer_tx,
            start,
            self.wait,
            shutdown_rx.clone(),
        ));
        let settler = tokio::spawn(settle_loop(shared.clone(), settle_rx));
        let mut tasks = vec![fetcher, settler];
        if self.auto_extend {
            tasks.push(tokio::spawn(extend_loop(shared.clone(), shutdown_rx)));
        }
        *lock(&shared.tasks) = tasks;
        info!(topic = %topic, group = %group, worker = %worker_id, partitions, ?visibility, concurrency = self.concurrency, prefetch, "worker started");
        Ok(Worker { shared })
    }
}

type LeaseKey = (u32, u64);

struct Shared {
    client: Client,
    topic: String,
    group: String,
    worker_id: String,
    visibility: Duration,
    concurrency: usize,
    /// Tasks leased at most (`concurrency + prefetch`).
    capacity: usize,
    shutdown_timeout: Duration,
    /// Leased, unsettled tasks: their current tokens (extended automatically).
    registry: Mutex<BTreeMap<LeaseKey, LeaseToken>>,
    settle_tx: mpsc::Sender<SettleOp>,
    slots: Arc<Semaphore>,
    handed: Arc<Semaphore>,
    buffer: tokio::sync::Mutex<mpsc::Receiver<LeasedTask>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct SettleOp {
    partition: u32,
    token: LeaseToken,
    settle: Settle,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// Processes tasks of one queue group: cheap to clone, `Send + Sync`.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use taskbroker_client::Client;
///
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let client = Client::connect(["127.0.0.1:7070"]).await?;
/// let worker = client.worker("emails", "senders").concurrency(4).build().await?;
/// while let Some(task) = worker.next().await? {
///     println!("attempt {} of offset {}", task.attempt(), task.offset());
///     match std::str::from_utf8(task.payload()) {
///         Ok(_) => task.ack().await?,
///         Err(_) => task.nack(Duration::from_secs(10)).await?,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("topic", &self.shared.topic)
            .field("group", &self.shared.group)
            .field("worker_id", &self.shared.worker_id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// The next task, once fewer than `concurrency` tasks are in your hands; `None` after
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    /// An error the fetcher cannot retry (e.g. the topic was deleted).
    ///
    /// ```no_run
    /// # async fn demo(w: taskbroker_client::Worker) -> Result<(), taskbroker_client::Error> {
    /// if let Some(task) = w.next().await? {
    ///     task.ack().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&self) -> Result<Option<LeasedTask>> {
        let s = &self.shared;
        let mut shutdown = s.shutdown.subscribe();
        if *shutdown.borrow() {
            return Ok(None);
        }
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return Ok(None),
            p = s.handed.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(None),
            },
        };
        let mut buffer = tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return Ok(None),
            b = s.buffer.lock() => b,
        };
        let task = tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return Ok(None),
            t = buffer.recv() => t,
        };
        Ok(task.map(|mut t| {
            t.handed = Some(permit);
            t
        }))
    }

    /// Runs `handler` on every task, `concurrency` at a time, until [`shutdown`](Self::shutdown):
    /// acks the task when the handler returns `Ok`, nacks it (broker's retry backoff) on `Err`
    /// or panic. The handler may also settle the task itself.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    ///
    /// ```no_run
    /// # async fn demo(w: taskbroker_client::Worker) -> Result<(), taskbroker_client::Error> {
    /// w.run(|task| async move {
    ///     let text = std::str::from_utf8(task.payload()).map_err(|e| e.to_string())?;
    ///     println!("processing {text}");
    ///     Ok::<(), String>(())
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut, E>(&self, handler: F) -> Result<()>
    where
        F: Fn(LeasedTask) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut running = tokio::task::JoinSet::new();
        let result = loop {
            let task = tokio::select! {
                biased;
                Some(_) = running.join_next(), if !running.is_empty() => continue,
                t = self.next() => t,
            };
            let mut task = match task {
                Ok(Some(t)) => t,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let permits = (task.handed.take(), task.slot.take());
            task.managed = true;
            let (partition, token) = (task.partition, task.token);
            let shared = self.shared.clone();
            let handler = handler.clone();
            running.spawn(async move {
                let outcome = std::panic::AssertUnwindSafe(handler(task))
                    .catch_unwind()
                    .await;
                let settle = match outcome {
                    Ok(Ok(())) => Settle::Ack,
                    Ok(Err(e)) => Settle::Nack {
                        retry_after_ms: None,
                        reason: Some(e.to_string()),
                    },
                    Err(_) => Settle::Nack {
                        retry_after_ms: None,
                        reason: Some("handler panicked".into()),
                    },
                };
                let still_ours = lock(&shared.registry).get(&(partition, token.offset)) == Some(&token);
                if still_ours {
                    if let Err(e) = settle_via(&shared, partition, token, settle).await {
                        warn!(partition, offset = token.offset, error = %e, "settling a task failed");
                    }
                }
                drop(permits);
            });
        };
        while running.join_next().await.is_some() {}
        result
    }

    /// Stops fetching, releases prefetched tasks, lets tasks in flight finish (up to the
    /// shutdown timeout), releases those still unsettled (nack without delay) and stops the
    /// background tasks. Idempotent.
    ///
    /// # Errors
    /// None so far; releasing is best effort (an unreleased lease expires by itself).
    ///
    /// ```no_run
    /// # async fn demo(w: taskbroker_client::Worker) -> Result<(), taskbroker_client::Error> {
    /// w.shutdown().await?;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) -> Result<()> {
        let s = &self.shared;
        if s.shutdown.send_replace(true) {
            return Ok(());
        }
        info!(worker = %s.worker_id, "worker shutting down");
        let tasks = std::mem::take(&mut *lock(&s.tasks));
        let mut tasks = tasks.into_iter();
        // The fetcher finishes its current fetch (at most `wait`) and stops.
        if let Some(fetcher) = tasks.next() {
            let _ = fetcher.await;
        }
        // Release what was prefetched but never handed out.
        {
            let mut buffer = s.buffer.lock().await;
            buffer.close();
            while let Ok(task) = buffer.try_recv() {
                drop(task); // Drop releases it.
            }
        }
        // Let tasks in flight finish.
        let all = u32::try_from(s.concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(s.shutdown_timeout, s.handed.acquire_many(all))
            .await
            .is_err()
        {
            warn!(worker = %s.worker_id, "tasks still running at shutdown timeout; releasing them");
        }
        let remaining: Vec<(LeaseKey, LeaseToken)> = std::mem::take(&mut *lock(&s.registry))
            .into_iter()
            .collect();
        let mut by_partition: BTreeMap<u32, Vec<(proto::LeaseToken, Settle)>> = BTreeMap::new();
        for ((partition, _), token) in remaining {
            by_partition
                .entry(partition)
                .or_default()
                .push((token.to_proto(), release()));
        }
        for (partition, items) in by_partition {
            if let Err(e) = settle_rpc(s, partition, items).await {
                warn!(partition, error = %e, "releasing tasks at shutdown failed");
            }
        }
        for t in tasks {
            t.abort();
        }
        info!(worker = %s.worker_id, "worker stopped");
        Ok(())
    }

    /// This worker's id.
    ///
    /// ```no_run
    /// # fn f(w: taskbroker_client::Worker) { println!("{}", w.worker_id()); }
    /// ```
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The lease length this worker asks for.
    ///
    /// ```no_run
    /// # fn f(w: taskbroker_client::Worker) { println!("{:?}", w.visibility_timeout()); }
    /// ```
    pub fn visibility_timeout(&self) -> Duration {
        self.shared.visibility
    }
}

fn release() -> Settle {
    Settle::Nack {
        retry_after_ms: Some(0),
        reason: Some("released by worker".into()),
    }
}

/// A task leased to this worker. Settle it with [`ack`](Self::ack) or [`nack`](Self::nack);
/// dropping it unsettled releases it for redelivery. While you hold it, its lease is extended
/// automatically (unless turned off).
///
/// ```no_run
/// # async fn demo(w: taskbroker_client::Worker) -> Result<(), taskbroker_client::Error> {
/// if let Some(task) = w.next().await? {
///     let token = task.lease_token().fencing_token();
///     println!("{} bytes, key {:?}, fencing token {token}", task.payload().len(), task.key());
///     task.ack().await?;
/// }
/// # Ok(()) }
/// ```
pub struct LeasedTask {
    shared: Arc<Shared>,
    partition: u32,
    token: LeaseToken,
    payload: Bytes,
    key: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    timestamp_ms: u64,
    priority: u8,
    expires_at_ms: u64,
    settled: bool,
    /// Run by [`Worker::run`], which settles it after the handler.
    managed: bool,
    slot: Option<OwnedSemaphorePermit>,
    handed: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for LeasedTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedTask")
            .field("topic", &self.shared.topic)
            .field("partition", &self.partition)
            .field("token", &self.token)
            .field("payload_len", &self.payload.len())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LeasedTask {
    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// The key, if the producer set one.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }
    /// The headers, in order.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.headers
    }
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    /// The delivery attempt (1 for the first delivery).
    pub fn attempt(&self) -> u32 {
        self.token.attempt
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }
    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }
    /// The offset in the partition.
    pub fn offset(&self) -> u64 {
        self.token.offset
    }
    /// The lease token (a fencing token for your side effects).
    pub fn lease_token(&self) -> LeaseToken {
        self.token
    }
    /// When the producer sent it (ms since the Unix epoch, the producer's clock).
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
    /// Its priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }
    /// When the lease given at fetch expires (the leader's clock, ms since the Unix epoch);
    /// automatic extension moves the real expiry on.
    pub fn lease_expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
    /// Whether the lease is still held (not settled, not lost to expiry as far as the worker
    /// knows).
    pub fn is_leased(&self) -> bool {
        !self.settled
            && lock(&self.shared.registry).get(&(self.partition, self.token.offset))
                == Some(&self.token)
    }

    /// Done: deletes the task for this group.
    ///
    /// # Errors
    /// [`Error::StaleLease`] if the lease was lost (the task was redelivered), or the failure
    /// to reach the partition's leader.
    pub async fn ack(mut self) -> Result<()> {
        self.settle(Settle::Ack).await
    }

    /// Failed: releases the task for redelivery after `delay`.
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn nack(mut self, delay: Duration) -> Result<()> {
        self.settle(Settle::Nack {
            retry_after_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            reason: None,
        })
        .await
    }

    /// Failed: releases the task with a reason kept in its failure history; `delay` `None`
    /// uses the broker's retry backoff.
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn nack_with_reason(
        mut self,
        delay: Option<Duration>,
        reason: impl Into<String>,
    ) -> Result<()> {
        self.settle(Settle::Nack {
            retry_after_ms: delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            reason: Some(reason.into()),
        })
        .await
    }

    /// Extends the lease to `by` from now (automatic extension does this for you).
    ///
    /// # Errors
    /// As [`ack`](Self::ack).
    pub async fn extend(&self, by: Duration) -> Result<()> {
        settle_via(
            &self.shared,
            self.partition,
            self.token,
            Settle::Extend {
                visibility_timeout_ms: u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            },
        )
        .await
    }

    async fn settle(&mut self, settle: Settle) -> Result<()> {
        self.settled = true;
        lock(&self.shared.registry).remove(&(self.partition, self.token.offset));
        let r = settle_via(&self.shared, self.partition, self.token, settle).await;
        self.slot = None;
        self.handed = None;
        r
    }
}

impl Drop for LeasedTask {
    fn drop(&mut self) {
        if self.settled || self.managed {
            return;
        }
        let key = (self.partition, self.token.offset);
        let ours = lock(&self.shared.registry).remove(&key) == Some(self.token);
        if ours {
            debug!(
                partition = self.partition,
                offset = self.token.offset,
                "task dropped unsettled; releasing it"
            );
            let _ = self.shared.settle_tx.try_send(SettleOp {
                partition: self.partition,
                token: self.token,
                settle: release(),
                reply: None,
            });
        }
    }
}

async fn settle_via(
    shared: &Shared,
    partition: u32,
    token: LeaseToken,
    settle: Settle,
) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    shared
        .settle_tx
        .send(SettleOp {
            partition,
            token,
            settle,
            reply: Some(tx),
        })
        .await
        .map_err(|_| Error::Closed { what: "the worker" })?;
    rx.await
        .unwrap_or(Err(Error::Closed { what: "the worker" }))
}

async fn settle_rpc(
    shared: &Shared,
    partition: u32,
    items: Vec<(proto::LeaseToken, Settle)>,
) -> Result<Vec<std::result::Result<(), proto::ApiError>>> {
    let topic = shared.topic.as_str();
    shared
        .client
        .call(
            Route::Partition { topic, partition },
            Duration::ZERO,
            |c, ctx| {
                let req = SettleRequest {
                    topic: topic.to_string(),
                    partition,
                    group: shared.group.clone(),
                    items: items.clone(),
                };
                async move { c.settle(ctx, req).await }
            },
        )
        .await
}

/// Batches settle operations per partition.
async fn settle_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<SettleOp>) {
    let weak = Arc::downgrade(&shared);
    drop(shared);
    while let Some(first) = rx.recv().await {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut ops = vec![first];
        let deadline = tokio::time::Instant::now() + SETTLE_LINGER;
        while ops.len() < SETTLE_BATCH_MAX {
            // Linger only while other tasks in hand may still settle: a worker processing
            // one task at a time would otherwise add the linger to every ack.
            if let Ok(op) = rx.try_recv() {
                ops.push(op);
                continue;
            }
            if tasks_in_hand(&shared) <= ops.len() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(op)) => ops.push(op),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_partition: BTreeMap<u32, Vec<SettleOp>> = BTreeMap::new();
        for op in ops {
            by_partition.entry(op.partition).or_default().push(op);
        }
        let calls = by_partition.into_iter().map(|(partition, ops)| {
            let shared = shared.clone();
            async move {
                let items = ops
                    .iter()
                    .map(|o| (o.token.to_proto(), o.settle.clone()))
                    .collect();
                let result = settle_rpc(&shared, partition, items).await;
                for (i, op) in ops.into_iter().enumerate() {
                    let r = match &result {
                        Ok(results) => match results.get(i) {
                            Some(Ok(())) => Ok(()),
                            Some(Err(e)) => Err(Error::from(e.clone())),
                            None => Err(Error::Protocol {
                                addr: String::new(),
                                reason: "settle answer is missing items".into(),
                            }),
                        },
                        Err(e) => Err(e.clone()),
                    };
                    if let Err(e) = &r {
                        if matches!(e, Error::StaleLease { .. }) {
                            let mut reg = lock(&shared.registry);
                            if reg.get(&(partition, op.token.offset)) == Some(&op.token) {
                                reg.remove(&(partition, op.token.offset));
                            }
                        }
                        if op.reply.is_none() {
                            debug!(partition, offset = op.token.offset, error = %e, "background settle failed");
                        }
                    }
                    if let Some(reply) = op.reply {
                        let _ = reply.send(r);
                    }
                }
            }
        });
        futures::future::join_all(calls).await;
    }
}

/// Tasks handed to the application and not yet released (their settles may be coming).
fn tasks_in_hand(shared: &Shared) -> usize {
    shared
        .concurrency
        .saturating_sub(shared.handed.available_permits())
}

/// Extends the leases of every leased, unsettled task every third of the visibility timeout.
async fn extend_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let period = (shared.visibility / 3).max(EXTEND_PERIOD_MIN);
    let visibility_timeout_ms = u64::try_from(shared.visibility.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return,
            _ = tick.tick() => {}
        }
        let leases: Vec<(LeaseKey, LeaseToken)> = lock(&shared.registry)
            .iter()
            .map(|(k, t)| (*k, *t))
            .collect();
        if leases.is_empty() {
            continue;
        }
        debug!(count = leases.len(), "extending leases");
        for ((partition, _), token) in leases {
            let op = SettleOp {
                partition,
                token,
                settle: Settle::Extend {
                    visibility_timeout_ms,
                },
                reply: None,
            };
            if shared.settle_tx.send(op).await.is_err() {
                return;
            }
        }
    }
}

/// Leases tasks round-robin over the partitions into the prefetch buffer.
async fn fetch_loop(
    shared: Arc<Shared>,
    buffer: mpsc::Sender<LeasedTask>,
    start: u32,
    wait: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cursor = start;
    let mut empty_in_a_row = 0u32;
    let mut failures = 0u32;
    loop {
        // Wait for a free slot, then take as many as are free (up to FETCH_TASKS_MAX).
        let first = tokio::select! {
            biased;
            _ = shutdown.wait_for(|v| *v) => return,
            p = shared.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = first;
        // Hysteresis: while enough tasks are buffered, wait (briefly) until a quarter of the
        // slots are free, so a busy worker leases many tasks per fetch instead of one per ack
        // (each fetch is a Raft entry and ships the tasks' stored batches).
        let want = (shared.capacity / FETCH_LOW_WATER_DIVISOR).max(1);
        let queued = buffer.max_capacity() - buffer.capacity();
        let free = 1 + shared.slots.available_permits();
        if queued >= want && free < want {
            let more = shared
                .slots
                .clone()
                .acquire_many_owned((want - free) as u32);
            if let Ok(Ok(more)) = tokio::time::timeout(FETCH_GATHER_MAX, more).await {
                permits.merge(more);
            }
        }
        let extra = shared
            .slots
            .available_permits()
            .min(FETCH_TASKS_MAX as usize - 1);
        if extra > 0 {
            if let Ok(more) = shared.slots.clone().try_acquire_many_owned(extra as u32) {
                permits.merge(more);
            }
        }
        let partitions = shared
            .client
            .cached_partition_count(&shared.topic)
            .unwrap_or(1)
            .max(1);
        let partition = cursor % partitions;
        // Long-poll only after a whole sweep found nothing.
        let wait_now = if empty_in_a_row >= partitions {
            wait
        } else {
            Duration::ZERO
        };
        let max_tasks = u32::try_from(permits.num_permits()).unwrap_or(FETCH_TASKS_MAX);
        let result = fetch(&shared, partition, max_tasks, wait_now).await;
        cursor = cursor.wrapping_add(1);
        let response = match result {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) => {
                failures += 1;
                warn!(topic = %shared.topic, partition, error = %e, "fetch failed");
                if matches!(e, Error::UnknownTopic { .. }) {
                    // Maybe deleted; refresh the partition count and try again later.
                    let _ = shared
                        .client
                        .refresh_metadata(vec![shared.topic.clone()])
                        .await;
                }
                let pause = shared
                    .client
                    .backoff(&shared.client.inner.config.retry, failures);
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|v| *v) => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        if response.leases.is_empty() {
            empty_in_a_row = empty_in_a_row.saturating_add(1);
            if empty_in_a_row > partitions {
                empty_in_a_row = 0;
            }
            continue;
        }
        empty_in_a_row = 0;
        let stopping = *shutdown.borrow();
        for mut task in decode(&shared, partition, response) {
            let Some(slot) = permits.split(1) else {
                warn!(
                    partition,
                    "broker leased more tasks than asked for; releasing the extra"
                );
                drop(task);
                continue;
            };
            task.slot = Some(slot);
            if stopping {
                drop(task); // Releases it.
                continue;
            }
            if let Err(mpsc::error::SendError(task)) = buffer.send(task).await {
                drop(task);
            }
        }
    }
}

async fn fetch(
    shared: &Shared,
    partition: u32,
    max_tasks: u32,
    wait: Duration,
) -> Result<FetchResponse> {
    let topic = shared.topic.as_str();
    let visibility_timeout_ms =
        Some(u64::try_from(shared.visibility.as_millis()).unwrap_or(u64::MAX));
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    shared
        .client
        .call(Route::Partition { topic, partition }, wait, |c, ctx| {
            let req = FetchRequest {
                topic: topic.to_string(),
                partition,
                group: shared.group.clone(),
                worker: shared.worker_id.clone(),
                max_tasks,
                visibility_timeout_ms,
                wait_ms,
            };
            async move { c.fetch(ctx, req).await }
        })
        .await
}

/// Turns a fetch answer into tasks, registering each lease. Leases whose record cannot be
/// found in the answer's batches are logged and left to expire.
fn decode(shared: &Arc<Shared>, partition: u32, response: FetchResponse) -> Vec<LeasedTask> {
    // Copied only when misaligned, and validated (checksum over the whole batch) once per
    // batch, not once per leased task: a fetch often leases many tasks of one large batch.
    let batches: Vec<(u64, Bytes)> = response
        .batches
        .into_iter()
        .map(|b| {
            let bytes = if (b.bytes.as_ptr() as usize).is_multiple_of(BODY_ALIGN) {
                b.bytes
            } else {
                aligned_copy(&b.bytes)
            };
            (b.base_offset, bytes)
        })
        .collect();
    let views: Vec<(u64, &Bytes, BatchView<'_>)> = batches
        .iter()
        .filter_map(|(base, bytes)| match BatchView::new(bytes) {
            Ok(v) => Some((*base, bytes, v)),
            Err(e) => {
                warn!(partition, base_offset = base, error = %e, "fetched batch is invalid");
                None
            }
        })
        .collect();
    let mut tasks = Vec::with_capacity(response.leases.len());
    for lease in response.leases {
        let token = LeaseToken::from_proto(lease.token);
        let found = views.iter().find_map(|(base, bytes, view)| {
            let index = token.offset.checked_sub(*base)?;
            let record = view.record(usize::try_from(index).ok()?)?;
            Some((*bytes, record))
        });
        let Some((bytes, record)) = found else {
            warn!(
                partition,
                offset = token.offset,
                "leased task not found in the fetched batches"
            );
            continue;
        };
        lock(&shared.registry).insert((partition, token.offset), token);
        tasks.push(LeasedTask {
            shared: shared.clone(),
            partition,
            token,
            payload: bytes.slice_ref(record.payload()),
            key: record.key().map(|k| bytes.slice_ref(k)),
            headers: record
                .headers()
                .map(|(n, v)| (n.to_string(), bytes.slice_ref(v)))
                .collect(),
            timestamp_ms: record.timestamp_ms(),
            priority: record.priority(),
            expires_at_ms: lease.expires_at_ms,
            settled: false,
            managed: false,
            slot: None,
            handed: None,
        });
    }
    tasks
}
