//! Idle cost of many Raft groups: 3 in-process nodes over loopback TCP host N partition groups
//! (replication 3) with default timing; after every group has a leader, measure the process CPU
//! (all 3 nodes together) over a quiet window.
//!
//! `cargo run --release -p taskbroker-raft --example idle_cpu -- 200 20`
//! (groups, seconds).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use taskbroker_raft::GroupId;
use taskbroker_storage::io::BackendChoice;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let groups: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
        let nodes = common::start_nodes(3, dir.path(), common::default_timing(), BackendChoice::Auto).await;
        let ids: Vec<GroupId> = (0..groups).map(|p| GroupId::for_partition(1, p)).collect();
        let t = Instant::now();
        common::open_groups(&nodes, &ids).await;
        println!("{groups} groups x 3 replicas up in {:.1}s", t.elapsed().as_secs_f64());
        // Let start-up elections and the first heartbeats settle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu0 = common::process_cpu_seconds();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu = common::process_cpu_seconds() - cpu0;
        let wall = t0.elapsed().as_secs_f64();
        let leaders: Vec<usize> = nodes
            .iter()
            .map(|n| ids.iter().filter(|g| n.node.group(**g).unwrap().is_leader()).count())
            .collect();
        println!(
            "idle: {groups} groups, 3 nodes: {:.2}% of one core ({cpu:.2} CPU-s over {wall:.1}s); leaders per node {leaders:?}",
            100.0 * cpu / wall
        );
    });
}
