//! Shared harness: in-process taskbroker-raft nodes over a [`Transport`].
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskbroker_client::batch::{BatchBuilder, TaskRecord};
use taskbroker_client::transport::{ConnKind, Preamble, Transport};
use taskbroker_raft::{Command, GroupId, RaftNode, RaftNodeConfig, RaftTiming};
use taskbroker_storage::io::Disk;
use taskbroker_storage::LogConfig;

/// Timing for tests: fast elections.
pub fn fast_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_every_entries: 1_000_000,
        snapshot_timeout_ms: 10_000,
        rpc_timeout_ms: 1_000,
        quiesce: true,
    }
}

/// A running test node.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub node: Arc<RaftNode>,
    accept: tokio::task::JoinHandle<()>,
}

impl TestNode {
    /// Stops the node: its groups and its listener (as if the process died, minus the disk).
    pub async fn stop(self) {
        self.accept.abort();
        self.node.shutdown().await;
    }
}

/// Starts node `id` listening on `addr` with data in `dir`.
pub async fn start_node(
    id: u64,
    addr: &str,
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    transport: Arc<dyn Transport>,
    timing: RaftTiming,
) -> TestNode {
    let config = RaftNodeConfig {
        id,
        data_dir: dir,
        timing,
        log: LogConfig {
            segment_bytes_max: 1 << 20,
            ..LogConfig::default()
        },
    };
    let node = RaftNode::new(config, disk, transport.clone());
    let mut listener = transport.bind(addr).await.expect("bind");
    let n = node.clone();
    let accept = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                break;
            };
            let n = n.clone();
            conns.spawn(async move {
                if let Ok(p) = Preamble::read(&mut conn).await {
                    if p.kind == ConnKind::Raft {
                        n.serve_connection(conn).await;
                    }
                }
            });
        }
    });
    TestNode {
        id,
        addr: addr.to_string(),
        node,
        accept,
    }
}

/// A one-record produce command with a `size`-byte payload tagged with `n`.
pub fn produce(n: u64, size: usize) -> Command {
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&n.to_le_bytes());
    let mut b = BatchBuilder::new(0, 0, 1_000);
    b.push(TaskRecord::new(payload, 1_000)).expect("push");
    Command::Produce {
        now_ms: 1_000,
        batch: b.finish().into_bytes(),
    }
}

/// Members map for `initialize`.
pub fn members(nodes: &[(u64, String)]) -> BTreeMap<u64, String> {
    nodes.iter().cloned().collect()
}

/// Every frame payload of `group` on `node`, from the first retained index.
pub async fn log_payloads(node: &RaftNode, group: GroupId) -> Vec<(u64, u64, Bytes)> {
    let g = node.group(group).expect("group");
    let log = g.log();
    let mut out = Vec::new();
    let mut next = log.first_index();
    while next < log.next_index() {
        let frames = log.read(next, 1024, 4 << 20).await.expect("read");
        for f in frames {
            next = f.index + 1;
            out.push((f.index, f.base_offset, f.payload));
        }
    }
    out
}

/// Waits until `cond` holds, polling every 20 ms, up to `timeout`.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut cond: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
