//! The real seams of a production node: tokio TCP, the configured disk backend and the system
//! clock. Simulations build an [`Env`] from turmoil's network, the simulated disk and their own
//! clock instead.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use taskbroker_client::transport::{TokioTransport, Transport};
use taskbroker_raft::RaftNode;
use taskbroker_storage::io::{open_disk, BackendChoice, Disk};
use taskbroker_storage::StorageError;

/// Wall-clock time as the node sees it. Every `now_ms` the node writes into a Raft command
/// (lease expiries, delays, creation times) comes from here, so simulations control time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The production clock: `SystemTime`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken host; 0 keeps the node running (leases then expire
        // late rather than the node crashing).
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// What a node takes from the outside world.
#[derive(Clone, Debug)]
pub struct Env {
    /// Network.
    pub transport: Arc<dyn Transport>,
    /// Disk.
    pub disk: Arc<dyn Disk>,
    /// Clock for every timestamp written into commands.
    pub clock: Arc<dyn Clock>,
    /// Where [`run`](crate::run) puts its [`RaftNode`], if set: simulations read replica state
    /// through it. Production leaves it `None`.
    pub raft_slot: Option<RaftSlot>,
}

/// A place to publish a running node's [`RaftNode`] (see [`Env::raft_slot`]).
pub type RaftSlot = Arc<std::sync::Mutex<Option<Arc<RaftNode>>>>;

impl Env {
    /// Tokio TCP, the disk backend `choice` (io_uring falls back to std with a warning) and the
    /// system clock.
    pub fn production(choice: BackendChoice) -> Result<Env, StorageError> {
        Ok(Env {
            transport: Arc::new(TokioTransport),
            disk: open_disk(choice)?,
            clock: Arc::new(SystemClock),
            raft_slot: None,
        })
    }
}
