//! Per-append latency probe: one appender, `BATCH` × 1 KiB frames per append, on the uring
//! (or `std`, with `PROBE_BACKEND=std`) backend, beside raw writers of the same size
//! overwriting a pre-zeroed file: buffered `pwrite` + `fdatasync`, and `O_DIRECT` (padded to
//! whole 4 KiB blocks, each write at a fresh block, like the log's group commits) with
//! `fdatasync` or with `O_DSYNC`. Runs `ROUNDS` rounds back to back (raw, log, raw, log, …;
//! `N` appends each) so a loaded machine disturbs both sides alike, and prints median / mean /
//! p90 per append for every round and the median of the rounds' medians.
//!
//! `CARGO_TARGET_DIR=/work/target cargo run --release -p taskbroker-storage --example append_latency`
//! (`RAW_BUFFERED=1` adds the buffered raw writer, which suffers from ext4 large folios.)

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use taskbroker_storage::io::{open_disk, AlignedBuf, BackendChoice, BLOCK_BYTES};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

const FRAME_BYTES: usize = 1024;
const RAW_FILE_BYTES: u64 = 64 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stats {
    median: Duration,
    mean: Duration,
    p90: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        median: v[v.len() / 2],
        mean: v.iter().sum::<Duration>() / v.len() as u32,
        p90: v[v.len() * 9 / 10],
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print_row(name: &str, s: &Stats, bytes: usize) {
    let mibs = bytes as f64 / s.median.as_secs_f64() / (1 << 20) as f64;
    println!(
        "  {name:<34} median {:>7.1} µs  mean {:>7.1} µs  p90 {:>7.1} µs  ({mibs:.0} MiB/s by median)",
        us(s.median),
        us(s.mean),
        us(s.p90),
    );
}

fn prezeroed(path: &Path) {
    let file = File::options()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("open");
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < RAW_FILE_BYTES {
        file.write_all_at(&zeros, pos).expect("zero");
        pos += zeros.len() as u64;
    }
    file.sync_all().expect("sync");
}

/// `n` sequential writes of `bytes` (plus padding to whole blocks if direct) and their
/// syncs, over a pre-zeroed file, wrapping.
fn raw(path: &Path, n: usize, bytes: usize, direct: bool, dsync: bool) -> Vec<Duration> {
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if dsync {
        flags |= libc::O_DSYNC;
    }
    let file = File::options()
        .write(true)
        .custom_flags(flags)
        .open(path)
        .expect("open raw");
    let mut buf = AlignedBuf::new();
    buf.extend_from_slice(&vec![0x5au8; bytes]);
    if direct {
        buf.pad_zeros_to(bytes.next_multiple_of(BLOCK_BYTES));
    }
    let mut pos = 0u64;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        if pos + buf.len() as u64 > RAW_FILE_BYTES {
            pos = 0;
        }
        let t = Instant::now();
        file.write_all_at(&buf, pos).expect("write");
        if !dsync {
            file.sync_data().expect("fdatasync");
        }
        v.push(t.elapsed());
        pos += buf.len() as u64;
    }
    v
}

async fn log_appends(log: &Log, n: usize, batch: usize, record: bool) -> Vec<Duration> {
    let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
    let keep_bytes = 192u64 << 20;
    let per_frame = (FRAME_BYTES + 32) as u64;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let frames = (0..batch)
            .map(|_| FrameIn {
                payload: payload.clone(),
                record_count: 1,
            })
            .collect();
        let t = Instant::now();
        log.append(frames).expect("append").await.expect("durable");
        if record {
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
    v
}

fn main() {
    let batch = env("BATCH", 256);
    let n = env("N", 1000);
    let rounds = env("ROUNDS", 3);
    let buffered = env("RAW_BUFFERED", 0) == 1;
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/work/target/bench-data".into());
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let bytes = batch * FRAME_BYTES;
    let raw_path = dir.path().join("raw");
    prezeroed(&raw_path);

    let backend = match std::env::var("PROBE_BACKEND").as_deref() {
        Ok("std") => BackendChoice::Std,
        _ => BackendChoice::Uring,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let disk = open_disk(backend).expect("disk");
    let log = rt
        .block_on(Log::open(
            disk,
            dir.path().join("log"),
            LogConfig::default(),
        ))
        .expect("open");
    // Warm up to steady state: fill past the retention bound once (recycled segments).
    let warm = ((320u64 << 20) / bytes as u64) as usize;
    rt.block_on(log_appends(&log, warm, batch, false));

    let mut medians: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut push = |name: &str, s: &Stats| match medians.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => v.push(s.median),
        None => medians.push((name.to_owned(), vec![s.median])),
    };
    for round in 1..=rounds {
        println!("round {round} (load {})", loadavg());
        let mut rows = Vec::new();
        if buffered {
            rows.push((
                "raw buffered pwrite+fdatasync".to_owned(),
                stats(raw(&raw_path, n, bytes, false, false)),
            ));
        }
        rows.push((
            "raw O_DIRECT pwrite+fdatasync".to_owned(),
            stats(raw(&raw_path, n, bytes, true, false)),
        ));
        rows.push((
            "raw O_DIRECT|O_DSYNC pwrite".to_owned(),
            stats(raw(&raw_path, n, bytes, true, true)),
        ));
        rows.push((
            format!("log {backend} 1 appender"),
            stats(rt.block_on(log_appends(&log, n, batch, true))),
        ));
        for (name, s) in &rows {
            print_row(name, s, bytes);
            push(name, s);
        }
    }
    rt.block_on(log.close()).expect("close");
    println!("median of {rounds} rounds' medians (batch {batch}, {n} appends per round):");
    let mut raw_best = None;
    for (name, mut v) in medians {
        v.sort();
        let m = v[v.len() / 2];
        let mibs = bytes as f64 / m.as_secs_f64() / (1 << 20) as f64;
        if name.starts_with("raw O_DIRECT pwrite+fdatasync") {
            raw_best = Some(m);
        }
        let pct = raw_best
            .filter(|_| name.starts_with("log"))
            .map(|r| {
                format!(
                    "  = {:.0}% of raw O_DIRECT+fdatasync",
                    100.0 * r.as_secs_f64() / m.as_secs_f64()
                )
            })
            .unwrap_or_default();
        println!("  {name:<34} {:>7.1} µs  {mibs:>6.0} MiB/s{pct}", us(m));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
