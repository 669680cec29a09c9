//! The binary's subcommands: `serve` runs a node, `local` a whole loopback cluster, and the
//! client commands (`topic`, `produce`, `consume`, `work`, `group`, `cluster`, `bench`) talk to a
//! cluster through the `taskbroker-client` library.
//!
//! # Design notes
//! - Client commands take `--brokers` (or `TASKBROKER_BROKERS`) and `--output text|json`; they
//!   print results on stdout and report a failure as one line on stderr with exit code 1
//!   (usage errors exit 2, from clap).

pub mod admin;
pub mod bench;
pub mod common;
pub mod consume;
pub mod local;
pub mod produce;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::PartialConfig;

/// taskbroker: a distributed, replicated task broker.
#[derive(Debug, Parser)]
#[command(name = "taskbroker", version, about)]
pub struct Cli {
    /// What to do (default: `serve`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (with no settings: a single node on 127.0.0.1:7070, HTTP on 127.0.0.1:8080,
    /// data in ./taskbroker-data).
    Serve(ServeArgs),
    /// Start a cluster of child `serve` processes on loopback; Ctrl-C stops them all.
    Local(LocalArgs),
    /// Create, list, describe, delete topics; add partitions.
    Topic(admin::TopicArgs),
    /// Produce one task per line of stdin; prints the count once all are committed.
    Produce(produce::ProduceArgs),
    /// Lease tasks and print their payloads, one per line.
    Consume(consume::ConsumeArgs),
    /// Run a shell command per task (payload on stdin): exit 0 acks, non-zero nacks.
    Work(consume::WorkArgs),
    /// Describe a consumer group; requeue its dead letters.
    Group(admin::GroupArgs),
    /// Cluster status: nodes, metadata leader, partition leaders, lagging replicas.
    Cluster(admin::ClusterArgs),
    /// Load generators (produce, work, e2e): throughput, latency percentiles, CPU per task.
    Bench(bench::BenchArgs),
}

impl Command {
    /// Whether this runs a node (or nodes), rather than a client command.
    pub fn is_server(&self) -> bool {
        matches!(self, Command::Serve(_) | Command::Local(_))
    }

    /// Runs a client command.
    ///
    /// # Errors
    /// The command's failure, to be shown as one line.
    ///
    /// # Panics
    /// On `serve` or `local` (see [`Command::is_server`]).
    pub async fn run_client(self) -> Result<(), common::CliError> {
        match self {
            Command::Topic(a) => admin::topic(a).await,
            Command::Produce(a) => produce::run(a).await,
            Command::Consume(a) => consume::consume(a).await,
            Command::Work(a) => consume::work(a).await,
            Command::Group(a) => admin::group(a).await,
            Command::Cluster(a) => admin::cluster(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Serve(_) | Command::Local(_) => {
                unreachable!("serve and local are not client commands")
            }
        }
    }
}

/// Flags of `taskbroker serve` (they override `--config` and `TASKBROKER_*` variables).
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id (>= 1).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Client API and Raft address, HOST:PORT.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address others use to reach this node (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Separate Raft address (optional).
    #[arg(long)]
    pub raft_listen: Option<String>,
    /// HTTP address (metrics, health, UI).
    #[arg(long)]
    pub http: Option<String>,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initial cluster: ID=HOST:PORT,... naming every initial node.
    #[arg(long)]
    pub peers: Option<String>,
    /// Storage backend: auto, uring or std.
    #[arg(long)]
    pub storage_backend: Option<String>,
    /// Raft heartbeat period, ms.
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// Raft election timeout lower bound, ms.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Raft election timeout upper bound, ms.
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Hand partition leadership back to each partition's preferred replica once it is up and
    /// caught up again (true or false; default true).
    #[arg(long)]
    pub rebalance_leaders: Option<bool>,
}

impl ServeArgs {
    /// The settings given as flags.
    pub fn to_partial(&self) -> PartialConfig {
        PartialConfig {
            node_id: self.node_id,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            raft_listen: self.raft_listen.clone(),
            http: self.http.clone(),
            data_dir: self.data_dir.clone(),
            peers: self.peers.clone(),
            storage_backend: self.storage_backend.clone(),
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            rebalance_leaders: self.rebalance_leaders,
            ..PartialConfig::default()
        }
    }
}

/// Flags of `taskbroker local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// First client port; node i listens on base+i-1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// First HTTP port; node i serves HTTP on base+i-1.
    #[arg(long, default_value_t = 8001)]
    pub base_http_port: u16,
    /// Parent of the nodes' data directories.
    #[arg(long, default_value = "./taskbroker-local")]
    pub data_dir: PathBuf,
    /// Storage backend for every node.
    #[arg(long, default_value = "auto")]
    pub storage_backend: String,
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
