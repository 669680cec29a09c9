//! The accept loop: every connection announces what it carries in its preamble; Raft
//! connections go to the multi-raft host, client connections to the [`Api`]. A malformed
//! preamble or frame closes that connection with a logged reason and the node keeps serving
//! everyone else.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskbroker_client::transport::{ConnKind, Listener, Preamble};
use taskbroker_raft::RaftNode;
use tokio::sync::Semaphore;

use crate::api::Api;
use crate::http::Metrics;

/// Most connections served at once; further connections wait in the accept backlog.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long a new connection may take to send its preamble.
pub const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared by every accept loop of a node.
#[derive(Clone)]
pub struct Server {
    raft: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    api: Arc<OnceLock<Api>>,
}

impl Server {
    /// A server dispatching to `raft`.
    pub fn new(raft: Arc<RaftNode>, metrics: Arc<Metrics>) -> Server {
        Server {
            raft,
            metrics,
            permits: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
            api: Arc::new(OnceLock::new()),
        }
    }

    /// Starts serving client connections with `api` (until then they are refused: the node has
    /// not joined its metadata group yet).
    pub fn set_api(&self, api: Api) {
        if self.api.set(api).is_err() {
            tracing::warn!("client API set twice; keeping the first");
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn accept_loop(self, mut listener: Box<dyn Listener>) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let (mut conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                this.metrics.connections_open.inc();
                let preamble =
                    tokio::time::timeout(PREAMBLE_TIMEOUT, Preamble::read(&mut conn)).await;
                match preamble {
                    Ok(Ok(Preamble {
                        kind: ConnKind::Raft,
                    })) => {
                        let conn = Box::new(this.metrics.count_conn(conn, "raft"));
                        this.raft.clone().serve_connection(conn).await;
                    }
                    Ok(Ok(Preamble {
                        kind: ConnKind::Client,
                    })) => match this.api.get() {
                        Some(api) => {
                            let conn = Box::new(this.metrics.count_conn(conn, "client"));
                            api.clone().serve_connection(conn, peer.to_string()).await
                        }
                        None => tracing::info!(
                            %peer,
                            "client connection refused: the node is still starting"
                        ),
                    },
                    Ok(Err(e)) => {
                        this.metrics
                            .errors
                            .with_label_values(&["bad_preamble"])
                            .inc();
                        tracing::warn!(%peer, error = %e, "closing connection");
                    }
                    Err(_) => {
                        this.metrics
                            .errors
                            .with_label_values(&["preamble_timeout"])
                            .inc();
                        tracing::warn!(%peer, "closing connection: no preamble within {PREAMBLE_TIMEOUT:?}");
                    }
                }
                this.metrics.connections_open.dec();
            });
        }
    }
}
