//! taskbroker-node: the `taskbroker` binary's library: a node of a taskbroker cluster.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`config`] | settings from flags, TOML and `TASKBROKER_*` variables, validated |
//! | [`mod@env`] | the real seams (tokio TCP, the disk backend) handed to [`run`] |
//! | [`identity`] | the data directory's identity record (which node, which cluster) |
//! | [`server`] | the accept loop: one address carries client API and Raft connections |
//! | [`api`] | the client API (`BrokerApi`): topics, produce, fetch, settle, groups |
//! | [`controller`] | bootstrap, node registration, reconciler, forwarding to the metadata leader |
//! | [`http`] | `/health`, `/ready`, `/metrics`, the JSON admin API (`/api/v1`) |
//! | [`ui`] | the built-in web UI (`/ui`): overview, topics, browse, consumer groups |
//! | [`cli`] | subcommands of the binary (`serve`, `local`, and the client commands `topic`, `produce`, `consume`, `work`, `group`, `cluster`) |
//!
//! Status: the node forms and resumes a replicated metadata group, registers itself, runs the
//! partition groups placed on it and serves the client API, health and metrics, and forwards
//! dead letters to dead-letter topics.

pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod env;
pub mod http;
pub mod identity;
pub mod server;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use taskbroker_raft::{RaftNode, RaftNodeConfig, RaftTiming};

use crate::config::NodeConfig;
use crate::env::Env;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory belongs to another node or cluster, or cannot be used.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// Replication layer failure.
    #[error(transparent)]
    Raft(#[from] taskbroker_raft::RaftError),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] taskbroker_storage::StorageError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs a node until `shutdown` resolves, then stops it gracefully: stop accepting, hand off
/// leadership where it can, flush the logs.
pub async fn run(
    config: NodeConfig,
    env: Env,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    identity::check_or_create(&env.disk, &config).await?;
    let metrics = Arc::new(http::Metrics::new(env.disk.kind()));
    // Real disks are timed for the storage metrics; a simulated disk's time is simulated.
    let disk = if env.disk.kind() == taskbroker_storage::io::BackendKind::Sim {
        env.disk.clone()
    } else {
        http::metrics::MeteredDisk::wrap(env.disk.clone(), &metrics)
    };
    let raft = RaftNode::new(
        RaftNodeConfig {
            id: config.node_id,
            data_dir: config.data_dir.clone(),
            timing: RaftTiming {
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                election_timeout_min_ms: config.election_timeout_min_ms,
                election_timeout_max_ms: config.election_timeout_max_ms,
                ..RaftTiming::default()
            },
            log: config.log.clone(),
        },
        disk,
        env.transport.clone(),
    );
    if let Some(slot) = &env.raft_slot {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(raft.clone());
    }
    let listener = env
        .transport
        .bind(&config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let raft_listener = match &config.raft_listen {
        Some(addr) => Some(
            env.transport
                .bind(addr)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: addr.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let server = server::Server::new(raft.clone(), metrics.clone());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(server.clone().accept_loop(listener));
    if let Some(l) = raft_listener {
        tasks.spawn(server.clone().accept_loop(l));
    }
    let meta = controller::bootstrap(&raft, &config).await?;
    let api = api::Api::new(
        raft.clone(),
        meta.clone(),
        api::ApiSettings {
            node_id: config.node_id,
            peers: config.peers.clone(),
            limits: taskbroker_client::batch::BatchLimits {
                batch_bytes_max: usize::try_from(config.max_batch_bytes).unwrap_or(usize::MAX),
                task_bytes_max: usize::try_from(config.max_task_bytes).unwrap_or(usize::MAX),
                ..Default::default()
            },
        },
        env.clock.clone(),
        controller::Forwarder::new(env.transport.clone()),
        metrics.clone(),
    );
    server.set_api(api.clone());
    tasks.spawn(controller::register(api.clone(), config.clone()));
    tasks.spawn(controller::reconcile_loop(api.clone()));
    tasks.spawn(api::forward_dead_letters(api.clone()));
    if config.rebalance_leaders {
        tasks.spawn(controller::rebalance_loop(api.clone()));
    }
    let http_state = http::HttpState {
        raft: raft.clone(),
        metrics,
        node_id: config.node_id,
        api: api.clone(),
    };
    // An empty HTTP address serves no HTTP (simulated nodes bind no real socket).
    if !config.http.is_empty() {
        let http_listener =
            tokio::net::TcpListener::bind(&config.http)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.http.clone(),
                    source,
                })?;
        tasks.spawn(http::serve(http_listener, http_state));
    }
    tracing::info!(
        node = config.node_id,
        listen = %config.listen,
        http = %config.http,
        backend = %env.disk.kind(),
        "taskbroker node started"
    );
    shutdown.await;
    tracing::info!(node = config.node_id, "shutting down");
    // Hand off leadership of every group this node leads, so clients fail over at once.
    controller::hand_off_leadership(&raft, &config).await;
    tasks.abort_all();
    drop(meta);
    raft.shutdown().await;
    tracing::info!(node = config.node_id, "stopped");
    Ok(())
}
