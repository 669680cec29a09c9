//! Write amplification probe: payload bytes vs. what the kernel and the device write, for one
//! appender doing `N` appends of one 64 KiB frame each, every one awaited (write + fdatasync).
//!
//! Modes (`PROBE_MODE`, default all): `raw-buffered` (pwrite of 65,600 bytes, the frame's size
//! on disk, + fdatasync, sequentially over a pre-zeroed file), `raw-direct` (the same payload
//! with O_DIRECT: each write starts at a fresh 4 KiB block and is padded to whole blocks, as
//! the log now writes), `log-std`, `log-uring` (a `Log` on that backend; segment pre-zeroing
//! is included in its counts). Reports `/proc/self/io` `write_bytes` and the device's sectors
//! written (`/sys/block/$PROBE_DEV/stat`, default `vda`) per payload byte.
//!
//! `cargo run --release -p taskbroker-storage --example write_amp`
//! (`PROBE_N` appends, default 4000; `BENCH_DIR` for the data, default
//! `/work/target/bench-data`; `TASKBROKER_DIRECT_IO=off` for the log's old buffered path).

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use bytes::Bytes;
use taskbroker_storage::io::{open_disk, AlignedBuf, BackendChoice, BLOCK_BYTES};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

const PAYLOAD: usize = 64 * 1024;
/// A 64 KiB frame on disk: 32-byte header + payload (already 16-aligned) + 32-byte marker.
const RECORD: usize = PAYLOAD + 64;

fn proc_write_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn dev_bytes_written() -> u64 {
    let dev = std::env::var("PROBE_DEV").unwrap_or_else(|_| "vda".into());
    let s = std::fs::read_to_string(format!("/sys/block/{dev}/stat")).unwrap_or_default();
    // Field 7 (1-based): sectors written, 512 bytes each.
    s.split_whitespace()
        .nth(6)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 512
}

fn prezeroed(path: &std::path::Path, len: u64) -> File {
    let f = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        f.write_all_at(&zeros, pos).expect("zero");
        pos += zeros.len() as u64;
    }
    f.sync_all().expect("fsync");
    f
}

fn report(mode: &str, n: usize, t: Instant, wb0: u64, dev0: u64) {
    let secs = t.elapsed().as_secs_f64();
    let payload = (n * PAYLOAD) as f64;
    let wb = (proc_write_bytes() - wb0) as f64;
    let dev = (dev_bytes_written() - dev0) as f64;
    println!(
        "{mode:13} n={n} payload={:.0} MB  write_bytes={:.0} MB ({:.2}x)  device={:.0} MB ({:.2}x, whole device)  {:.2} s  {:.1} MB/s payload  {:.0} µs/append",
        payload / 1e6,
        wb / 1e6,
        wb / payload,
        dev / 1e6,
        dev / payload,
        secs,
        payload / 1e6 / secs,
        secs * 1e6 / n as f64,
    );
}

fn main() {
    let n: usize = std::env::var("PROBE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let only = std::env::var("PROBE_MODE").ok();
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/work/target/bench-data".into());
    std::fs::create_dir_all(&base).expect("dir");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let want = |m: &str| only.as_deref().is_none_or(|o| o == m);
    let data = vec![0x5au8; RECORD];

    if want("raw-buffered") {
        let f = prezeroed(
            &dir.path().join("raw-buffered"),
            (n * RECORD) as u64 + (1 << 20),
        );
        let (wb0, dev0, t) = (proc_write_bytes(), dev_bytes_written(), Instant::now());
        for i in 0..n {
            // Overlapping by the 32-byte marker, like the log's old groups.
            f.write_all_at(&data, (i * (RECORD - 32)) as u64)
                .expect("write");
            f.sync_data().expect("fdatasync");
        }
        report("raw-buffered", n, t, wb0, dev0);
    }
    if want("raw-direct") {
        let stride = RECORD.next_multiple_of(BLOCK_BYTES);
        let path = dir.path().join("raw-direct");
        drop(prezeroed(&path, (n * stride) as u64 + (1 << 20)));
        let f = File::options()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT");
        let mut buf = AlignedBuf::with_capacity(stride);
        buf.extend_from_slice(&data);
        buf.pad_zeros_to(stride);
        let (wb0, dev0, t) = (proc_write_bytes(), dev_bytes_written(), Instant::now());
        for i in 0..n {
            f.write_all_at(&buf, (i * stride) as u64).expect("write");
            f.sync_data().expect("fdatasync");
        }
        report("raw-direct", n, t, wb0, dev0);
    }
    for (mode, choice) in [
        ("log-std", BackendChoice::Std),
        ("log-uring", BackendChoice::Uring),
    ] {
        if !want(mode) {
            continue;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("rt");
        let disk = match open_disk(choice) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipping {mode}: {e}");
                continue;
            }
        };
        let path = dir.path().join(mode);
        rt.block_on(async {
            let log = Log::open(disk, path, LogConfig::default())
                .await
                .expect("open");
            let payload = Bytes::from(vec![0x5au8; PAYLOAD]);
            let (wb0, dev0, t) = (proc_write_bytes(), dev_bytes_written(), Instant::now());
            for _ in 0..n {
                log.append(vec![FrameIn {
                    payload: payload.clone(),
                    record_count: 1,
                }])
                .expect("append")
                .await
                .expect("durable");
            }
            report(mode, n, t, wb0, dev0);
            log.close().await.expect("close");
        });
    }
}
