//! [`Client`]: connections to the cluster, routing, and the retry loop every operation uses.
//!
//! # Design notes
//! - One tarpc connection per node address, opened lazily and dropped on any transport failure
//!   or timeout (the next call reconnects: this is how node restarts are survived).
//! - Every call goes through `Client::call`: resolve the partition's leader from the
//!   [`RoutingTable`], call with a deadline, and on `NotLeader` retry at the hinted leader at
//!   once; on connection loss, `Unavailable` or timeouts back off and refresh metadata from any
//!   node. The loop is bounded by the [`RetryPolicy`].
//! - Metadata refreshes never go through `call` (no recursion): they try each known node once.
//!
//! # Invariants
//! - No tarpc type escapes this module's `pub` API.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tarpc::client::RpcError;
use tarpc::context::Context;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::Framed;
use tracing::{debug, warn};

use crate::admin::Admin;
use crate::builder::{ClientBuilder, ClientConfig};
use crate::error::{Error, Result};
use crate::producer::ProducerBuilder;
use crate::proto::{framing, ApiError, BrokerApiClient, ClusterMeta};
use crate::retry::RetryPolicy;
use crate::routing::RoutingTable;
use crate::stream::StreamConsumerBuilder;
use crate::transport::{ConnKind, Preamble, Transport};
use crate::worker::WorkerBuilder;

/// Most node addresses the client keeps a connection to. Why: a cluster has a handful of
/// nodes; a bound stops a stream of bogus `NotLeader` hints from growing the pool.
pub const CONNECTIONS_MAX: usize = 64;

/// Slack added to tarpc's own deadline so the client's timeout (on the runtime's clock, which
/// turmoil drives) fires first and is the one reported.
const TARPC_DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// Where a call must go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Any node (metadata, admin: nodes forward to the controller).
    Any,
    /// The leader of a partition.
    Partition { topic: &'a str, partition: u32 },
}

type ConnSlot = Arc<tokio::sync::Mutex<Option<BrokerApiClient>>>;

pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    transport: Arc<dyn Transport>,
    routing: Mutex<RoutingTable>,
    conns: Mutex<BTreeMap<String, ConnSlot>>,
    rng: Mutex<StdRng>,
    any_cursor: AtomicUsize,
}

/// A connection to a taskbroker cluster: cheap to clone, `Send + Sync`, shared by every
/// producer, worker, consumer and admin made from it.
///
/// # Example
/// ```no_run
/// use taskbroker_client::{Client, Task};
///
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let client = Client::connect(["127.0.0.1:7070"]).await?;
/// let producer = client.producer().build();
/// let offset = producer.send("images", Task::new("resize img-1.png").key("img-1")).await?;
/// println!("stored at partition {} offset {}", offset.partition, offset.offset);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.config.seeds)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Flattens an error and its sources into one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Client {
    /// Connects with default settings to a cluster reachable through any of `seeds`.
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), taskbroker_client::Error> {
    /// let client = taskbroker_client::Client::connect(["127.0.0.1:7070"]).await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub async fn connect<I, S>(seeds: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new().seeds(seeds).connect().await
    }

    /// A builder for a client with non-default settings.
    ///
    /// ```
    /// let builder = taskbroker_client::Client::builder();
    /// # let _ = builder;
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    pub(crate) async fn start(
        config: ClientConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Client> {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                transport,
                routing: Mutex::new(RoutingTable::new()),
                conns: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(rng),
                any_cursor: AtomicUsize::new(0),
            }),
        };
        client.discover().await?;
        Ok(client)
    }

    /// A client that has not discovered anything (no IO): for unit tests of the layers above.
    #[cfg(test)]
    pub(crate) fn unconnected_for_tests() -> Client {
        let builder = ClientBuilder::new().seeds(["127.0.0.1:1"]).seed(7);
        let (config, transport) = builder.into_parts();
        Client {
            inner: Arc::new(ClientInner {
                config,
                transport,
                routing: Mutex::new(RoutingTable::new()),
                conns: Mutex::new(BTreeMap::new()),
                rng: Mutex::new(StdRng::seed_from_u64(7)),
                any_cursor: AtomicUsize::new(0),
            }),
        }
    }

    /// Initial discovery: asks the seeds in turn until one answers, within the connect timeout.
    async fn discover(&self) -> Result<()> {
        let cfg = &self.inner.config;
        let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
        let mut last: Option<Error> = None;
        let mut round = 0u32;
        loop {
            for seed in &cfg.seeds {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match self
                    .metadata_from(seed, Vec::new(), remaining.min(cfg.request_timeout))
                    .await
                {
                    Ok(meta) => {
                        debug!(seed = %seed, version = meta.version, nodes = meta.nodes.len(), "discovered cluster");
                        lock(&self.inner.routing).apply(&meta);
                        return Ok(());
                    }
                    Err(e) => {
                        debug!(seed = %seed, error = %e, "seed did not answer");
                        last = Some(e);
                    }
                }
            }
            round += 1;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            tokio::time::sleep(self.backoff(&cfg.retry, round).min(remaining)).await;
        }
        Err(last.unwrap_or(Error::Timeout {
            after: cfg.connect_timeout,
        }))
    }

    pub(crate) fn backoff(&self, policy: &RetryPolicy, retry: u32) -> Duration {
        let draw: f64 = lock(&self.inner.rng).random();
        policy.backoff(retry, 0.5 + draw / 2.0)
    }

    /// A random `u64` from the client's RNG (seeded with [`ClientBuilder::seed`]).
    pub(crate) fn random_u64(&self) -> u64 {
        lock(&self.inner.rng).random()
    }

    /// The configured client id.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) {
    /// println!("{}", client.client_id());
    /// # }
    /// ```
    pub fn client_id(&self) -> &str {
        &self.inner.config.client_id
    }

    /// A producer builder; `.build()` starts its background batching task.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) {
    /// let producer = client.producer().linger(std::time::Duration::from_millis(2)).build();
    /// # let _ = producer; }
    /// ```
    pub fn producer(&self) -> ProducerBuilder {
        ProducerBuilder::new(self.clone())
    }

    /// A worker builder for a queue group of `topic`.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// let worker = client.worker("emails", "senders").concurrency(4).build().await?;
    /// # let _ = worker; Ok(()) }
    /// ```
    pub fn worker(&self, topic: impl Into<String>, group: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(self.clone(), topic.into(), group.into())
    }

    /// A stream consumer builder for a stream group of `topic`.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// let consumer = client.stream_consumer("events", "indexer").build().await?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn stream_consumer(
        &self,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> StreamConsumerBuilder {
        StreamConsumerBuilder::new(self.clone(), topic.into(), group.into())
    }

    /// Topic, group and cluster administration.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// for topic in client.admin().list_topics().await? {
    ///     println!("{} ({} partitions)", topic.name, topic.partitions.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// The number of partitions of `topic` (from the cache, or fetched).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`], or the failure of the metadata refresh.
    ///
    /// ```no_run
    /// # async fn demo(client: taskbroker_client::Client) -> Result<(), taskbroker_client::Error> {
    /// let n = client.partition_count("emails").await?;
    /// # let _ = n; Ok(()) }
    /// ```
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        if let Some(n) = lock(&self.inner.routing).partition_count(topic) {
            return Ok(n);
        }
        self.refresh_metadata(vec![topic.to_string()]).await?;
        lock(&self.inner.routing)
            .partition_count(topic)
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_string(),
            })
    }

    /// The cached partition count, if known (no IO).
    pub(crate) fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        lock(&self.inner.routing).partition_count(topic)
    }

    /// The cached metadata of a topic, if any (no IO).
    pub(crate) fn cached_topic(&self, topic: &str) -> Option<crate::proto::TopicMeta> {
        lock(&self.inner.routing).topic(topic).cloned()
    }

    /// Fetches metadata from any node (known nodes first, then the seeds) and caches it.
    pub(crate) async fn refresh_metadata(&self, topics: Vec<String>) -> Result<ClusterMeta> {
        let mut addrs = {
            let r = lock(&self.inner.routing);
            let mut addrs = Vec::new();
            if let Some(c) = r.controller_addr() {
                addrs.push(c);
            }
            addrs.extend(r.node_addrs());
            addrs
        };
        addrs.extend(self.inner.config.seeds.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        addrs.retain(|a| seen.insert(a.clone()));
        let mut last = None;
        for addr in addrs {
            match self
                .metadata_from(&addr, topics.clone(), self.inner.config.request_timeout)
                .await
            {
                Ok(meta) => {
                    let mut r = lock(&self.inner.routing);
                    r.apply(&meta);
                    for t in &topics {
                        if !meta.topics.iter().any(|m| &m.name == t) {
                            r.forget_topic(t);
                        }
                    }
                    return Ok(meta);
                }
                Err(e) => {
                    debug!(addr = %addr, error = %e, "metadata refresh failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::Unavailable {
            reason: "no node to ask for metadata".into(),
        }))
    }

    async fn metadata_from(
        &self,
        addr: &str,
        topics: Vec<String>,
        timeout: Duration,
    ) -> Result<ClusterMeta> {
        let client = self.connection(addr).await?;
        let ctx = deadline_ctx(timeout);
        match tokio::time::timeout(timeout, client.metadata(ctx, topics)).await {
            Err(_) => {
                self.drop_connection(addr).await;
                Err(Error::Timeout { after: timeout })
            }
            Ok(Err(e)) => {
                self.drop_connection(addr).await;
                Err(protocol_error(addr, &e))
            }
            Ok(Ok(r)) => r.map_err(Error::from),
        }
    }

    fn slot(&self, addr: &str) -> ConnSlot {
        let mut conns = lock(&self.inner.conns);
        if !conns.contains_key(addr) && conns.len() >= CONNECTIONS_MAX {
            // Evict an idle-looking entry: the first in order. Its client is dropped when the
            // last in-flight call using it finishes.
            if let Some(first) = conns.keys().next().cloned() {
                conns.remove(&first);
            }
        }
        conns.entry(addr.to_string()).or_default().clone()
    }

    async fn connection(&self, addr: &str) -> Result<BrokerApiClient> {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let timeout = self.inner.config.connect_timeout;
        let connect_err = |reason: String| Error::Connect {
            addr: addr.to_string(),
            reason,
        };
        let conn = tokio::time::timeout(timeout, async {
            let mut conn = self.inner.transport.connect(addr).await?;
            Preamble {
                kind: ConnKind::Client,
            }
            .write(&mut conn)
            .await?;
            Ok::<_, std::io::Error>(conn)
        })
        .await
        .map_err(|_| connect_err(format!("timed out after {timeout:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
        let framed = Framed::new(conn, framing::codec());
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        let client = BrokerApiClient::new(tarpc::client::Config::default(), transport).spawn();
        debug!(addr = %addr, "connected");
        *guard = Some(client.clone());
        Ok(client)
    }

    async fn drop_connection(&self, addr: &str) {
        let slot = lock(&self.inner.conns).get(addr).cloned();
        if let Some(slot) = slot {
            *slot.lock().await = None;
        }
    }

    async fn resolve(&self, route: Route<'_>) -> Result<String> {
        match route {
            Route::Any => {
                let mut addrs = lock(&self.inner.routing).node_addrs();
                addrs.extend(self.inner.config.seeds.iter().cloned());
                let i = self.inner.any_cursor.fetch_add(1, Ordering::Relaxed);
                addrs
                    .get(i % addrs.len().max(1))
                    .cloned()
                    .ok_or_else(|| Error::Config {
                        reason: "no node address known".into(),
                    })
            }
            Route::Partition { topic, partition } => {
                if let Some((_, addr)) = lock(&self.inner.routing).leader(topic, partition) {
                    return Ok(addr);
                }
                self.refresh_metadata(vec![topic.to_string()]).await?;
                let r = lock(&self.inner.routing);
                if let Some((_, addr)) = r.leader(topic, partition) {
                    return Ok(addr);
                }
                match r.partition_count(topic) {
                    None => Err(Error::UnknownTopic {
                        topic: topic.to_string(),
                    }),
                    Some(n) if partition >= n => Err(Error::UnknownPartition {
                        topic: topic.to_string(),
                        partition,
                    }),
                    Some(_) => Err(Error::Unavailable {
                        reason: format!("partition {partition} of {topic:?} has no leader"),
                    }),
                }
            }
        }
    }

    /// Runs one operation with routing and retries. `f` builds and sends the request on a
    /// connection; it is called once per attempt. `extra` is added to the request timeout
    /// (a long poll's wait).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        route: Route<'_>,
        extra: Duration,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(BrokerApiClient, Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, ApiError>, RpcError>>,
    {
        let policy = self.inner.config.retry;
        let timeout = self.inner.config.request_timeout + extra;
        let mut attempt = 0u32;
        let mut retries = 0u32;
        let mut hinted: Option<String> = None;
        let mut last: Option<Error> = None;
        loop {
            attempt += 1;
            if !policy.allows(attempt) {
                let err = last.unwrap_or(Error::Timeout { after: timeout });
                warn!(?route, attempts = attempt - 1, error = %err, "retry budget spent");
                return Err(err);
            }
            let addr = match hinted.take() {
                Some(addr) => addr,
                None => {
                    if attempt > 1 {
                        retries += 1;
                        tokio::time::sleep(self.backoff(&policy, retries)).await;
                    }
                    match self.resolve(route).await {
                        Ok(addr) => addr,
                        Err(e) if e.is_retryable() => {
                            last = Some(e);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let client = match self.connection(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(?route, addr = %addr, error = %e, "connect failed");
                    self.on_node_failure(route);
                    last = Some(e);
                    continue;
                }
            };
            match tokio::time::timeout(timeout, f(client, deadline_ctx(timeout))).await {
                Err(_) => {
                    debug!(?route, addr = %addr, "request timed out");
                    self.drop_connection(&addr).await;
                    self.on_node_failure(route);
                    last = Some(Error::Timeout { after: timeout });
                }
                Ok(Err(e)) => {
                    debug!(?route, addr = %addr, error = %chain(&e), "connection failed");
                    self.drop_connection(&addr).await;
                    self.on_node_failure(route);
                    last = Some(protocol_error(&addr, &e));
                }
                Ok(Ok(Ok(v))) => return Ok(v),
                Ok(Ok(Err(ApiError::NotLeader {
                    leader_hint,
                    leader_addr,
                }))) => {
                    debug!(?route, addr = %addr, ?leader_hint, ?leader_addr, "not leader");
                    hinted = match route {
                        Route::Partition { topic, partition } => lock(&self.inner.routing)
                            .on_not_leader(topic, partition, leader_hint, leader_addr.as_deref()),
                        Route::Any => leader_addr.clone(),
                    };
                    if hinted.as_deref() == Some(addr.as_str()) {
                        // The node names itself: it is mid-election; back off instead.
                        hinted = None;
                    }
                    last = Some(Error::NotLeader {
                        leader_hint,
                        leader_addr,
                    });
                }
                Ok(Ok(Err(e))) if e.is_retryable() => {
                    debug!(?route, addr = %addr, error = %e, "retryable error");
                    if let ApiError::Timeout = e {
                        last = Some(Error::Timeout { after: timeout });
                    } else {
                        self.on_node_failure(route);
                        last = Some(e.into());
                    }
                }
                Ok(Ok(Err(e))) => {
                    if let (ApiError::UnknownTopic { .. }, Route::Partition { topic, .. }) =
                        (&e, route)
                    {
                        lock(&self.inner.routing).forget_topic(topic);
                    }
                    return Err(e.into());
                }
            }
        }
    }

    fn on_node_failure(&self, route: Route<'_>) {
        if let Route::Partition { topic, partition } = route {
            lock(&self.inner.routing).clear_leader(topic, partition);
        }
    }
}

fn deadline_ctx(timeout: Duration) -> Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout + TARPC_DEADLINE_SLACK;
    ctx
}

fn protocol_error(addr: &str, e: &RpcError) -> Error {
    let reason = match e {
        RpcError::Shutdown => {
            "connection closed by the peer (not a taskbroker node, or it restarted)".to_string()
        }
        other => format!("no valid taskbroker answer ({})", chain(other)),
    };
    Error::Protocol {
        addr: addr.to_string(),
        reason,
    }
}
