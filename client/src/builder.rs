//! [`ClientBuilder`]: seeds, timeouts, retry policy, client id and the network seam.

use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::transport::{TokioTransport, Transport};

/// Default bound on establishing a connection and on the initial cluster discovery.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one request (long polls add their wait on top).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a [`Client`].
#[derive(Clone)]
pub(crate) struct ClientConfig {
    pub(crate) seeds: Vec<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) client_id: String,
    pub(crate) seed: Option<u64>,
    pub(crate) wall_clock: WallClock,
}

/// The wall clock the client stamps tasks with: ms since the Unix epoch. A seam so that
/// simulations can supply their own (the default reads the system clock).
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("seeds", &self.seeds)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("client_id", &self.client_id)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`Client`].
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use taskbroker_client::{Client, RetryPolicy};
///
/// # async fn demo() -> Result<(), taskbroker_client::Error> {
/// let client = Client::builder()
///     .seeds(["10.0.0.1:7070", "10.0.0.2:7070"])
///     .connect_timeout(Duration::from_secs(2))
///     .request_timeout(Duration::from_secs(5))
///     .retry(RetryPolicy { max_attempts: 8, ..RetryPolicy::default() })
///     .client_id("thumbnailer-7")
///     .connect()
///     .await?;
/// # let _ = client; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: ClientConfig,
    transport: Arc<dyn Transport>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            config: ClientConfig {
                seeds: Vec::new(),
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                retry: RetryPolicy::default(),
                client_id: String::from("taskbroker-client"),
                seed: None,
                wall_clock: Arc::new(system_clock_ms),
            },
            transport: Arc::new(TokioTransport),
        }
    }
}

impl ClientBuilder {
    /// A builder with the defaults: no seeds, [`DEFAULT_CONNECT_TIMEOUT`],
    /// [`DEFAULT_REQUEST_TIMEOUT`], [`RetryPolicy::default`], TCP.
    ///
    /// ```
    /// let builder = taskbroker_client::ClientBuilder::new().seeds(["127.0.0.1:7070"]);
    /// # let _ = builder;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Addresses (`host:port`) to discover the cluster from; any reachable one suffices.
    ///
    /// ```
    /// let b = taskbroker_client::Client::builder().seeds(vec!["a:7070".to_string()]);
    /// # let _ = b;
    /// ```
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// Bound on opening one connection, and on the whole initial discovery in
    /// [`connect`](Self::connect).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = taskbroker_client::Client::builder().connect_timeout(Duration::from_secs(1));
    /// # let _ = b;
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Deadline of one request to a node (a long-polling fetch adds its wait time).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = taskbroker_client::Client::builder().request_timeout(Duration::from_secs(3));
    /// # let _ = b;
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How retryable failures are retried.
    ///
    /// ```
    /// let b = taskbroker_client::Client::builder().retry(taskbroker_client::RetryPolicy::none());
    /// # let _ = b;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// A name for this client, shown by the broker (worker ids derive from it).
    ///
    /// ```
    /// let b = taskbroker_client::Client::builder().client_id("gpu-box-3");
    /// # let _ = b;
    /// ```
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }

    /// Seeds the client's random choices (producer ids, backoff jitter, starting partitions),
    /// for reproducible simulations. Without it they come from the OS.
    ///
    /// ```
    /// let b = taskbroker_client::Client::builder().seed(42);
    /// # let _ = b;
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// The wall clock used for task timestamps and delays (ms since the Unix epoch). The
    /// default reads the system clock; simulations pass their simulated one.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let b = taskbroker_client::Client::builder().wall_clock(Arc::new(|| 1_700_000_000_000));
    /// # let _ = b;
    /// ```
    pub fn wall_clock(mut self, clock: WallClock) -> Self {
        self.config.wall_clock = clock;
        self
    }

    /// The network seam: [`TokioTransport`] by default; simulations pass turmoil's.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use taskbroker_client::transport::TokioTransport;
    /// let b = taskbroker_client::Client::builder().transport(Arc::new(TokioTransport));
    /// # let _ = b;
    /// ```
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = transport;
        self
    }

    #[cfg(test)]
    pub(crate) fn into_parts(self) -> (ClientConfig, Arc<dyn Transport>) {
        (self.config, self.transport)
    }

    /// Discovers the cluster from the seeds and returns a connected client.
    ///
    /// # Errors
    /// [`Error::Config`] without seeds; otherwise, if no seed answered within the connect
    /// timeout, the last failure: [`Error::Connect`] (nothing listening, unreachable),
    /// [`Error::Protocol`] (something that is not a taskbroker node answered) or
    /// [`Error::Timeout`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), taskbroker_client::Error> {
    /// let client = taskbroker_client::Client::builder().seeds(["127.0.0.1:7070"]).connect().await?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Client> {
        if self.config.seeds.is_empty() {
            return Err(Error::Config {
                reason: "no seed address given".into(),
            });
        }
        Client::start(self.config, self.transport).await
    }
}
