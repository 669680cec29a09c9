//! Shared by the raft benchmark examples: an in-process cluster of `RaftNode`s over loopback TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use taskbroker_client::transport::{ConnKind, Listener, Preamble, TokioTransport, Transport};
use taskbroker_raft::{GroupId, RaftNode, RaftNodeConfig, RaftTiming};
use taskbroker_storage::io::{open_disk, BackendChoice};
use taskbroker_storage::LogConfig;

pub struct Node {
    pub id: u64,
    pub addr: String,
    pub node: Arc<RaftNode>,
}

/// Starts `n` nodes with data under `dir`, serving Raft on loopback.
pub async fn start_nodes(
    n: u64,
    dir: &Path,
    timing: RaftTiming,
    backend: BackendChoice,
) -> Vec<Node> {
    let transport: Arc<dyn Transport> = Arc::new(TokioTransport);
    let mut nodes = Vec::new();
    for id in 1..=n {
        let listener = transport.bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = RaftNode::new(
            RaftNodeConfig {
                id,
                data_dir: dir.join(format!("n{id}")),
                timing: timing.clone(),
                log: log_config(),
            },
            open_disk(backend).unwrap(),
            transport.clone(),
        );
        spawn_raft_server(listener, node.clone());
        nodes.push(Node { id, addr, node });
    }
    nodes
}

/// Opens `groups` on every node, initialises them, and waits for every leader.
pub async fn open_groups(nodes: &[Node], groups: &[GroupId]) {
    let members: BTreeMap<u64, String> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    for g in groups {
        for n in nodes {
            n.node.open_group(*g).await.unwrap();
        }
        // Spread initial leadership: the node that initialises usually wins the first election.
        let first = &nodes[(g.partition() as usize) % nodes.len()];
        first
            .node
            .group(*g)
            .unwrap()
            .initialize(&members)
            .await
            .unwrap();
    }
    for g in groups {
        let grp = nodes[0].node.group(*g).unwrap();
        grp.wait_for_leader(Duration::from_secs(30))
            .await
            .expect("leader");
    }
}

/// The node currently leading `g`.
pub fn leader_of(nodes: &[Node], g: GroupId) -> Option<&Node> {
    nodes
        .iter()
        .find(|n| n.node.group(g).is_some_and(|x| x.is_leader()))
}

/// CPU seconds (user+system) this process has used.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

pub fn default_timing() -> RaftTiming {
    RaftTiming::default()
}

/// Log settings of the examples: `SEGMENT_BYTES` caps each log's segment (many groups).
pub fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: std::env::var("SEGMENT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LogConfig::default().segment_bytes_max),
        ..LogConfig::default()
    }
}

/// Serves Raft connections accepted on `listener` until it fails.
pub fn spawn_raft_server(mut listener: Box<dyn Listener>, node: Arc<RaftNode>) {
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            let n = node.clone();
            tokio::spawn(async move {
                if let Ok(p) = Preamble::read(&mut conn).await {
                    if p.kind == ConnKind::Raft {
                        n.serve_connection(conn).await;
                    }
                }
            });
        }
    });
}
