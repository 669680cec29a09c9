//! The real seams of a production node: tokio TCP and the configured disk backend.
//! Simulations build an [`Env`] from turmoil's network and the simulated disk instead.

use std::sync::Arc;

use taskbroker_client::transport::{TokioTransport, Transport};
use taskbroker_storage::io::{open_disk, BackendChoice, Disk};
use taskbroker_storage::StorageError;

/// What a node takes from the outside world.
#[derive(Clone, Debug)]
pub struct Env {
    /// Network.
    pub transport: Arc<dyn Transport>,
    /// Disk.
    pub disk: Arc<dyn Disk>,
}

impl Env {
    /// Tokio TCP and the disk backend `choice` (io_uring falls back to std with a warning).
    pub fn production(choice: BackendChoice) -> Result<Env, StorageError> {
        Ok(Env {
            transport: Arc::new(TokioTransport),
            disk: open_disk(choice)?,
        })
    }
}
