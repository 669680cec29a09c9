//! Start-up cost of many fresh logs in one process (a node hosts one log per partition
//! replica): opens `N` (default 200) new logs concurrently, appends one 1 KiB frame to each
//! and awaits it (a fresh log creates its first segment on its first append), then reports
//! the wall time and the disk space the log directories use (allocated blocks), then closes
//! them and reports the space again.
//!
//! `CARGO_TARGET_DIR=/work/target cargo run --release -p taskbroker-storage --example open_cost`
//! (`PROBE_BACKEND=std` for the std backend, `N=...` for the number of logs).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use taskbroker_storage::io::{open_disk, BackendChoice};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

/// (allocated bytes, apparent bytes, files) under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64, usize) {
    let mut total = (0, 0, 0);
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let md = entry.metadata().expect("metadata");
        if md.is_dir() {
            let (a, b, c) = disk_usage(&entry.path());
            total = (total.0 + a, total.1 + b, total.2 + c);
        } else {
            total = (total.0 + md.blocks() * 512, total.1 + md.len(), total.2 + 1);
        }
    }
    total
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let backend = match std::env::var("PROBE_BACKEND").as_deref() {
        Ok("std") => BackendChoice::Std,
        _ => BackendChoice::Uring,
    };
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/work/target/bench-data".into());
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let disk = open_disk(backend).expect("disk");
        let payload = Bytes::from(vec![0x5au8; 1024]);
        let t = Instant::now();
        let logs = futures::future::join_all((0..n).map(|i| {
            let disk = disk.clone();
            let path = dir.path().join(format!("log-{i}"));
            let payload = payload.clone();
            async move {
                let log = Log::open(disk, path, LogConfig::default())
                    .await
                    .expect("open");
                log.append(vec![FrameIn {
                    payload,
                    record_count: 1,
                }])
                .expect("append")
                .await
                .expect("durable");
                log
            }
        }))
        .await;
        let elapsed = t.elapsed();
        let (alloc, apparent, files) = disk_usage(dir.path());
        println!(
            "{backend}: {n} fresh logs opened + first append durable in {:.2} s; disk: {:.1} MiB \
             allocated ({:.1} MiB apparent) in {files} files ({:.2} MiB per log)",
            elapsed.as_secs_f64(),
            mib(alloc),
            mib(apparent),
            mib(alloc) / n as f64,
        );
        let t = Instant::now();
        for log in logs {
            log.close().await.expect("close");
        }
        let (alloc, _, files) = disk_usage(dir.path());
        println!(
            "{backend}: closed in {:.2} s; disk after close: {:.1} MiB allocated in {files} files",
            t.elapsed().as_secs_f64(),
            mib(alloc),
        );
    });
}
