//! Replicated append throughput and commit latency: 3 in-process nodes over loopback TCP,
//! replication 3, fdatasync before every acknowledgement (the storage's group commit).
//!
//! `cargo run --release -p taskbroker-raft --example replication_bench -- GROUPS RECORDS_PER_BATCH WRITERS_PER_GROUP SECONDS`
//!
//! Each writer proposes one produce entry (a record batch of RECORDS_PER_BATCH 1 KiB records)
//! at a time to its group's leader and waits for it to be committed and applied; latency is
//! measured per entry, from proposal to commit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use taskbroker_client::batch::{BatchBuilder, TaskRecord};
use taskbroker_raft::{Command, GroupId};
use taskbroker_storage::io::BackendChoice;

const RECORD_BYTES: usize = 1024;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let groups = *args.first().unwrap_or(&1) as u32;
    let batch = *args.get(1).unwrap_or(&16) as usize;
    let writers = *args.get(2).unwrap_or(&8);
    let seconds = *args.get(3).unwrap_or(&10);
    let backend = match std::env::var("BACKEND").as_deref() {
        Ok("std") => BackendChoice::Std,
        _ => BackendChoice::Auto,
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
        let nodes = common::start_nodes(3, dir.path(), common::default_timing(), backend).await;
        let ids: Vec<GroupId> = (0..groups).map(|p| GroupId::for_partition(1, p)).collect();
        common::open_groups(&nodes, &ids).await;
        let kind = nodes[0].node.disk().kind();

        let mut b = BatchBuilder::new(0, 0, 0);
        for i in 0..batch {
            b.push(TaskRecord::new(vec![(i % 251) as u8; RECORD_BYTES], 0)).unwrap();
        }
        let bytes = b.finish().into_bytes();

        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(AtomicU64::new(0));
        let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()));
        let mut tasks = Vec::new();
        let t0 = Instant::now();
        for g in &ids {
            let leader = common::leader_of(&nodes, *g).expect("leader");
            let group = leader.node.group(*g).unwrap();
            for _ in 0..writers {
                let (group, stop, entries, hist, bytes) =
                    (group.clone(), stop.clone(), entries.clone(), hist.clone(), bytes.clone());
                tasks.push(tokio::spawn(async move {
                    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        // A just-elected leader may refuse writes until its first entry commits:
                        // retry as a client would.
                        let mut tries = 0;
                        while let Err(e) = group
                            .write(Command::Produce { now_ms: 0, batch: bytes.clone() })
                            .await
                        {
                            tries += 1;
                            assert!(e.is_retryable() && tries < 500, "write: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        local.record(t.elapsed().as_micros() as u64).unwrap();
                        entries.fetch_add(1, Ordering::Relaxed);
                    }
                    hist.lock().unwrap().add(&local).unwrap();
                }));
            }
        }
        let cpu0 = common::process_cpu_seconds();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = common::process_cpu_seconds() - cpu0;
        let n = entries.load(Ordering::Relaxed) as f64;
        let records = n * batch as f64;
        let h = hist.lock().unwrap();
        println!(
            "| {groups} | {batch} | {writers} | {kind} | {:.0} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} |",
            records / wall,
            records * RECORD_BYTES as f64 / wall / 1_048_576.0,
            n / wall,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            cpu / records * 1e6,
        );
    });
}
