//! Append throughput: group-committed `Log` appends on the uring and std backends versus raw
//! `pwrite` + `fdatasync` baselines (appending to a fresh, growing file, and overwriting a
//! pre-zeroed one, buffered and with `O_DIRECT`). See `storage/BENCHMARKS.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use taskbroker_storage::io::{open_disk, AlignedBuf, BackendChoice, Disk, BLOCK_BYTES};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

const FRAME_BYTES: usize = 1024;
/// Retention: once the bench log holds more than this, purge it down to `LOG_BYTES_KEEP`
/// (about one 64 MiB segment per purge, like a size-based retention policy), so the bench
/// does not fill the disk and purged segments are recycled.
const LOG_BYTES_MAX: u64 = 256 * 1024 * 1024;
const LOG_BYTES_KEEP: u64 = 192 * 1024 * 1024;
/// On-disk bytes of one bench frame (header + 1 KiB payload).
const FRAME_DISK_BYTES: u64 = FRAME_BYTES as u64 + 32;

async fn retain(log: &Log) {
    if log.stats().bytes > LOG_BYTES_MAX {
        let keep = LOG_BYTES_KEEP / FRAME_DISK_BYTES;
        log.purge_before(log.next_index().saturating_sub(keep))
            .expect("purge")
            .await
            .expect("purge");
    }
}

/// Fills a new log past its retention bound once (outside the timed region), so the
/// measurement sees the steady state: segments are recycled files, not zeroed ones.
async fn warm_up(log: &Log) {
    let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
    while log.stats().bytes <= LOG_BYTES_MAX {
        let frames = (0..1024)
            .map(|_| FrameIn {
                payload: payload.clone(),
                record_count: 1,
            })
            .collect();
        log.append(frames).expect("append").await.expect("durable");
    }
    retain(log).await;
}

fn bench_dir() -> tempfile::TempDir {
    // CARGO_TARGET_TMPDIR is not set for benches; stay on the target's filesystem (not tmpfs).
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/work/target/bench-data".into());
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

fn log_appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("log_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for backend in [BackendChoice::Uring, BackendChoice::Std] {
        let disk: Arc<dyn Disk> = match open_disk(backend) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipping {backend}: {e}");
                continue;
            }
        };
        for appenders in [1usize, 64] {
            for batch in [1usize, 16, 256] {
                let dir = bench_dir();
                let log = rt
                    .block_on(Log::open(
                        disk.clone(),
                        dir.path().join("log"),
                        LogConfig::default(),
                    ))
                    .expect("open");
                rt.block_on(warm_up(&log));
                let payload = Bytes::from(vec![0x5au8; FRAME_BYTES]);
                g.throughput(Throughput::Bytes((appenders * batch * FRAME_BYTES) as u64));
                let id = BenchmarkId::new(
                    format!("{backend}/appenders={appenders}"),
                    format!("batch={batch}"),
                );
                g.bench_function(id, |b| {
                    b.to_async(&rt).iter(|| {
                        let log = log.clone();
                        let payload = payload.clone();
                        async move {
                            let tickets: Vec<_> = (0..appenders)
                                .map(|_| {
                                    let frames = (0..batch)
                                        .map(|_| FrameIn {
                                            payload: payload.clone(),
                                            record_count: 1,
                                        })
                                        .collect();
                                    log.append(frames).expect("append")
                                })
                                .collect();
                            for t in tickets {
                                t.await.expect("durable");
                            }
                            retain(&log).await;
                        }
                    })
                });
                rt.block_on(log.close()).expect("close");
            }
        }
    }
    g.finish();
}

/// Bytes a raw file is written to before it starts over (fresh: a new file; pre-zeroed: the
/// same blocks again). Equal to the log's default segment size.
const RAW_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn open_new(path: &std::path::Path) -> File {
    File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("open")
}

/// A file of `RAW_FILE_BYTES` zeros, written and fsynced: what a pre-zeroed log segment is.
fn prezeroed(path: &std::path::Path) -> File {
    let file = open_new(path);
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < RAW_FILE_BYTES {
        file.write_all_at(&zeros, pos).expect("zero");
        pos += zeros.len() as u64;
    }
    file.sync_all().expect("fsync");
    file
}

/// One sequential writer doing `write` + `fdatasync` of `buf` per iteration, with plain std
/// calls. `fresh`: appends to a new file that grows (every fdatasync also commits the new
/// size and block allocation to the journal); when it reaches `RAW_FILE_BYTES` it is replaced
/// by a new empty file, outside the timed region. Otherwise: overwrites a pre-zeroed file
/// sequentially, wrapping to its start (data-only fdatasync), like the log's steady state.
fn raw_writer<'b>(
    path: &std::path::Path,
    fresh: bool,
    buf: &'b [u8],
    per_iter: usize,
) -> impl FnMut(u64) -> Duration + 'b {
    let mut file = if fresh {
        open_new(path)
    } else {
        prezeroed(path)
    };
    let mut pos = 0u64;
    let path = path.to_path_buf();
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if pos + (per_iter * buf.len()) as u64 > RAW_FILE_BYTES {
                pos = 0;
                if fresh {
                    drop(std::mem::replace(&mut file, open_new(&path)));
                }
            }
            let t = Instant::now();
            for _ in 0..per_iter {
                file.write_all_at(buf, pos).expect("write");
                file.sync_data().expect("fdatasync");
                pos += buf.len() as u64;
            }
            total += t.elapsed();
        }
        total
    }
}

/// Like [`raw_writer`] on a pre-zeroed file, but with `O_DIRECT` (and `O_DSYNC` if `dsync`,
/// with no separate fdatasync): `payload` bytes padded to whole 4 KiB blocks, each write at
/// the next block boundary, from a block-aligned buffer: what the log's group commits are
/// since appends went direct (the like-for-like baseline).
fn raw_direct_writer(
    path: &std::path::Path,
    dsync: bool,
    payload: usize,
) -> impl FnMut(u64) -> Duration {
    use std::os::unix::fs::OpenOptionsExt;
    drop(prezeroed(path));
    let mut flags = libc::O_DIRECT;
    if dsync {
        flags |= libc::O_DSYNC;
    }
    let file = File::options()
        .write(true)
        .custom_flags(flags)
        .open(path)
        .expect("open O_DIRECT");
    let mut buf = AlignedBuf::new();
    buf.extend_from_slice(&vec![0x5au8; payload]);
    buf.pad_zeros_to(payload.next_multiple_of(BLOCK_BYTES));
    let mut pos = 0u64;
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if pos + buf.len() as u64 > RAW_FILE_BYTES {
                pos = 0;
            }
            let t = Instant::now();
            file.write_all_at(&buf, pos).expect("write");
            if !dsync {
                file.sync_data().expect("fdatasync");
            }
            pos += buf.len() as u64;
            total += t.elapsed();
        }
        total
    }
}

fn raw_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_std");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let dir = bench_dir();
    for (kind, fresh) in [("fresh", true), ("prezeroed", false)] {
        // 4096 × 1 KiB = 4 MiB = `group_commit_bytes_max`: the size of the merged writes of
        // 64 appenders × batch 256.
        for batch in [1usize, 16, 256, 4096] {
            let buf = vec![0x5au8; batch * FRAME_BYTES];
            g.throughput(Throughput::Bytes(buf.len() as u64));
            let mut run = raw_writer(
                &dir.path().join(format!("raw-{kind}-{batch}")),
                fresh,
                &buf,
                1,
            );
            g.bench_function(
                BenchmarkId::new(format!("{kind}/write+fdatasync"), format!("batch={batch}")),
                |b| b.iter_custom(&mut run),
            );
        }
    }
    for (kind, dsync) in [
        ("prezeroed-direct", false),
        ("prezeroed-direct-dsync", true),
    ] {
        for batch in [1usize, 16, 256, 4096] {
            if dsync && batch < 256 {
                continue;
            }
            g.throughput(Throughput::Bytes((batch * FRAME_BYTES) as u64));
            let mut run = raw_direct_writer(
                &dir.path().join(format!("raw-{kind}-{batch}")),
                dsync,
                batch * FRAME_BYTES,
            );
            g.bench_function(
                BenchmarkId::new(format!("{kind}/write+fdatasync"), format!("batch={batch}")),
                |b| b.iter_custom(&mut run),
            );
        }
    }
    // What 64 appenders of batch 1 get without group commit: one write + fdatasync each, on
    // a pre-zeroed file like the log's (so the ratio measures group commit alone).
    let buf = vec![0x5au8; FRAME_BYTES];
    let mut run = raw_writer(&dir.path().join("raw-nogc"), false, &buf, 64);
    g.throughput(Throughput::Bytes(64 * FRAME_BYTES as u64));
    g.bench_function(
        BenchmarkId::new("prezeroed/fdatasync_per_append", "appenders=64/batch=1"),
        |b| b.iter_custom(&mut run),
    );
    g.finish();
}

criterion_group!(benches, raw_baseline, log_appends);
criterion_main!(benches);
