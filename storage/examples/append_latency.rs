//! Per-append latency probe: one appender, `BATCH` × 1 KiB frames per append, on the uring
//! (or `std`, with `PROBE_BACKEND=std`) backend, beside raw `pwrite` + `fdatasync` of the
//! same size overwriting a pre-zeroed file. Prints median / mean / p90 per append.
//!
//! `CARGO_TARGET_DIR=/work/target cargo run --release -p taskbroker-storage --example append_latency`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use taskbroker_storage::io::{open_disk, BackendChoice};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

const FRAME_BYTES: usize = 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(name: &str, mut v: Vec<Duration>, bytes: usize) {
    v.sort();
    let med = v[v.len() / 2];
    let p90 = v[v.len() * 9 / 10];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    let mibs = bytes as f64 / mean.as_secs_f64() / (1 << 20) as f64;
    println!(
        "{name:<28} median {:>7.1} µs  mean {:>7.1} µs  p90 {:>7.1} µs  ({mibs:.0} MiB/s by mean)",
        med.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6,
    );
}

fn main() {
    let batch = env("BATCH", 256);
    let n = env("N", 4000);
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/work/target/bench-data".into());
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let bytes = batch * FRAME_BYTES;

    // Raw: overwrite a pre-zeroed 64 MiB file, wrapping.
    let raw = {
        let path = dir.path().join("raw");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let file_len = 64u64 << 20;
        let zeros = vec![0u8; 1 << 20];
        let mut pos = 0;
        while pos < file_len {
            file.write_all_at(&zeros, pos).expect("zero");
            pos += zeros.len() as u64;
        }
        file.sync_all().expect("sync");
        let buf = vec![0x5au8; bytes];
        let mut pos = 0u64;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            if pos + bytes as u64 > file_len {
                pos = 0;
            }
            let t = Instant::now();
            file.write_all_at(&buf, pos).expect("write");
            file.sync_data().expect("fdatasync");
            v.push(t.elapsed());
            pos += bytes as u64;
        }
        v
    };

    let backend = match std::env::var("PROBE_BACKEND").as_deref() {
        Ok("std") => BackendChoice::Std,
        _ => BackendChoice::Uring,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let log_lat = rt.block_on(async {
        let disk = open_disk(backend).expect("disk");
        let log = Log::open(disk, dir.path().join("log"), LogConfig::default())
            .await
            .expect("open");
        let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
        let keep_bytes = 192u64 << 20;
        let per_frame = (FRAME_BYTES + 32) as u64;
        let mut v = Vec::with_capacity(n);
        // Warm up to steady state: fill past the retention bound once.
        let warm = (320u64 << 20) / bytes as u64;
        for i in 0..(warm as usize + n) {
            let frames = (0..batch)
                .map(|_| FrameIn {
                    payload: payload.clone(),
                    record_count: 1,
                })
                .collect();
            let t = Instant::now();
            log.append(frames).expect("append").await.expect("durable");
            if i >= warm as usize {
                v.push(t.elapsed());
            }
            if log.stats().bytes > 256 << 20 {
                let keep = keep_bytes / per_frame;
                log.purge_before(log.next_index() - keep)
                    .expect("purge")
                    .await
                    .expect("purge");
            }
        }
        log.close().await.expect("close");
        v
    });
    report("raw pwrite+fdatasync", raw, bytes);
    report(&format!("log {backend} 1 appender"), log_lat, bytes);
}
