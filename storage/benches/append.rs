//! Append throughput: group-committed `Log` appends on the uring and std backends versus raw
//! `pwrite` + `fdatasync` baselines. See `storage/BENCHMARKS.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use taskbroker_storage::io::{open_disk, BackendChoice, Disk};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

const FRAME_BYTES: usize = 1024;
/// Purge the bench log beyond this, so the bench does not fill the disk.
const LOG_BYTES_MAX: u64 = 512 * 1024 * 1024;
const RAW_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

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
                            if log.stats().bytes > LOG_BYTES_MAX {
                                log.purge_before(log.next_index())
                                    .expect("purge")
                                    .await
                                    .expect("purge");
                            }
                        }
                    })
                });
                rt.block_on(log.close()).expect("close");
            }
        }
    }
    g.finish();
}

fn raw_baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_std");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let dir = bench_dir();
    for batch in [1usize, 16, 256] {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join(format!("raw-{batch}")))
            .expect("open");
        let buf = vec![0x5au8; batch * FRAME_BYTES];
        let mut pos = 0u64;
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(
            BenchmarkId::new("write+fdatasync", format!("batch={batch}")),
            |b| {
                b.iter(|| {
                    file.write_all_at(&buf, pos).expect("write");
                    file.sync_data().expect("fdatasync");
                    pos = (pos + buf.len() as u64) % RAW_FILE_BYTES_MAX;
                })
            },
        );
    }
    // What 64 appenders of batch 1 get without group commit: one write + fdatasync each.
    let file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("raw-nogc"))
        .expect("open");
    let buf = vec![0x5au8; FRAME_BYTES];
    let mut pos = 0u64;
    g.throughput(Throughput::Bytes(64 * FRAME_BYTES as u64));
    g.bench_function(
        BenchmarkId::new("fdatasync_per_append", "appenders=64/batch=1"),
        |b| {
            b.iter(|| {
                for _ in 0..64 {
                    file.write_all_at(&buf, pos).expect("write");
                    file.sync_data().expect("fdatasync");
                    pos = (pos + buf.len() as u64) % RAW_FILE_BYTES_MAX;
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, raw_baseline, log_appends);
criterion_main!(benches);
