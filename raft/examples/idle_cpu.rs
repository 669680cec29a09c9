//! Idle cost of many Raft groups: 3 nodes (separate processes, as in production) over loopback
//! TCP host N partition groups with replication 3 and default timing; after every group has a
//! leader, measure the CPU (user + system) of all 3 processes over a quiet window.
//!
//! `cargo run --release -p taskbroker-raft --example idle_cpu -- 200 20` (groups, seconds).
//! Set `SEGMENT_BYTES` to shrink each log's pre-zeroed segment when hosting thousands of groups.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use taskbroker_client::transport::{TokioTransport, Transport};
use taskbroker_raft::{GroupId, RaftNode, RaftNodeConfig};
use taskbroker_storage::io::{open_disk, BackendChoice};

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]);
    }
    let groups: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        })
        .collect();
    let t = Instant::now();
    let mut children: Vec<_> = (1..=3u64)
        .map(|id| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "child",
                    &id.to_string(),
                    &groups.to_string(),
                    &addrs.join(","),
                ])
                .arg(dir.path().join(format!("n{id}")))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.iter_mut() {
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "child said {line:?}");
    }
    println!(
        "{groups} groups x 3 replicas up in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Let start-up elections settle and idle groups quiesce.
    std::thread::sleep(Duration::from_secs(8));
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "idle: {groups} groups, 3 node processes: {:.2}% of one core ({cpu:.2} CPU-s over {wall:.1}s)",
        100.0 * cpu / wall
    );
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn child(args: &[String]) {
    let id: u64 = args[0].parse().unwrap();
    let groups: u32 = args[1].parse().unwrap();
    let addrs: Vec<String> = args[2].split(',').map(String::from).collect();
    let data_dir = std::path::PathBuf::from(&args[3]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let transport: Arc<dyn Transport> = Arc::new(TokioTransport);
        let listener = transport.bind(&addrs[(id - 1) as usize]).await.unwrap();
        let node = RaftNode::new(
            RaftNodeConfig {
                id,
                data_dir,
                timing: common::default_timing(),
                log: common::log_config(),
            },
            open_disk(BackendChoice::Auto).unwrap(),
            transport.clone(),
        );
        common::spawn_raft_server(listener, node.clone());
        let members: BTreeMap<u64, String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| (i as u64 + 1, a.clone()))
            .collect();
        let ids: Vec<GroupId> = (0..groups).map(|p| GroupId::for_partition(1, p)).collect();
        for g in &ids {
            let grp = node.open_group(*g).await.unwrap();
            // Spread preferred leaders over the nodes, as placement does.
            let rank = ((id - 1) as usize + 3 - (g.partition() as usize % 3)) % 3;
            grp.bootstrap(&members, rank, Duration::from_secs(3600))
                .await
                .unwrap();
        }
        for g in &ids {
            node.group(*g)
                .unwrap()
                .wait_for_leader(Duration::from_secs(120))
                .await
                .expect("leader");
        }
        println!("ready");
        std::future::pending::<()>().await;
    });
}
