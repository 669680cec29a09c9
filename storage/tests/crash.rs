//! Power-loss tests with the simulated disk: acknowledged appends survive, torn tails go.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use taskbroker_storage::io::SimDisk;
use taskbroker_storage::log::{FrameIn, Log, LogConfig};
use taskbroker_storage::StorageError;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8192,
        index_interval_bytes: 512,
        group_commit_bytes_max: 4096,
        ..LogConfig::default()
    }
}

/// Growing segments: 4 KiB, 8 KiB, 16 KiB, then 32 KiB; recycling on (the default), so
/// purges (none here) and rolls meet segments of different sizes.
fn growing_config() -> LogConfig {
    LogConfig {
        segment_bytes_min: 4096,
        segment_bytes_max: 32768,
        ..config()
    }
}

fn payload(index: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (index as usize * 7 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// One crash cycle: concurrent appenders, crash at a random point, reopen and verify.
async fn crash_cycle(seed: u64, config: fn() -> LogConfig) {
    let disk = SimDisk::new(seed);
    let dir = Path::new("/node/log");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Acknowledged (index, len, count) across all cycles.
    let mut acked: Vec<(u64, usize, u32)> = Vec::new();
    for _cycle in 0..4 {
        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap();
        let start = log.next_index();
        assert!(acked.iter().all(|(i, _, _)| *i < start), "acked frame lost");
        // verify everything acknowledged is intact and offsets are dense
        if start > 0 {
            let frames = log.read(0, usize::MAX, usize::MAX).await.unwrap();
            assert_eq!(frames.len() as u64, start);
            let mut off = 0;
            for f in &frames {
                assert_eq!(f.base_offset, off);
                off += u64::from(f.record_count);
                assert_eq!(f.payload, payload(f.index, f.payload.len()));
            }
            assert_eq!(log.next_offset(), off);
        }
        let appenders = rng.random_range(1..6);
        let mut handles = Vec::new();
        for a in 0..appenders {
            let log = log.clone();
            let n = rng.random_range(1..20);
            let lens: Vec<(usize, u32)> = (0..n)
                .map(|_| (rng.random_range(0..900), rng.random_range(0..3)))
                .collect();
            handles.push(tokio::spawn(async move {
                let mut done = Vec::new();
                for (len, count) in lens {
                    let index = log.next_index();
                    let _ = a;
                    let t = match log.append(vec![FrameIn {
                        payload: payload(index, len),
                        record_count: count,
                    }]) {
                        Ok(t) => t,
                        Err(_) => break,
                    };
                    let pos = *t.value();
                    assert_eq!(
                        pos.index, index,
                        "single-threaded runtime: no interleaving here"
                    );
                    match t.await {
                        Ok(_) => done.push((pos.index, len, count)),
                        Err(_) => break,
                    }
                }
                done
            }));
        }
        // Let the workload run for a random number of scheduler turns, then pull the plug.
        let turns = rng.random_range(0..200);
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        disk.crash();
        for h in handles {
            acked.extend(h.await.unwrap());
        }
        drop(log);
        tokio::task::yield_now().await;
        // after the crash: acknowledged frames must be there
        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap();
        for (index, len, _count) in &acked {
            let f = log.read(*index, 1, usize::MAX).await.unwrap();
            assert_eq!(
                f[0].payload,
                payload(*index, *len),
                "acked frame {index} damaged"
            );
        }
        // nothing past the end is readable
        assert!(matches!(
            log.read(log.next_index(), 1, 1).await,
            Err(StorageError::OutOfRange { .. })
        ));
        log.close().await.unwrap();
    }
}

#[tokio::test]
async fn crash_at_random_points_keeps_acknowledged_appends() {
    for seed in 0..40 {
        crash_cycle(seed, config).await;
    }
}

/// The same with growing segments: crashes land while rolling from one segment size to the
/// next (while the next, larger spare is zeroed inline or in the background).
#[tokio::test]
async fn crash_at_random_points_across_growing_segments() {
    for seed in 100..140 {
        crash_cycle(seed, growing_config).await;
    }
}

#[tokio::test]
async fn failed_fsync_poisons_the_log() {
    let disk = SimDisk::new(3);
    let log = Log::open(Arc::new(disk.clone()), "/p", config())
        .await
        .unwrap();
    log.append(vec![FrameIn {
        payload: "a".into(),
        record_count: 1,
    }])
    .unwrap()
    .await
    .unwrap();
    disk.set_fail_sync(true);
    let err = log
        .append(vec![FrameIn {
            payload: "b".into(),
            record_count: 1,
        }])
        .unwrap()
        .await;
    assert!(matches!(err, Err(StorageError::Poisoned { .. })), "{err:?}");
    disk.set_fail_sync(false);
    // fail-stop: no retry, every later call fails
    assert!(matches!(
        log.append(vec![FrameIn {
            payload: "c".into(),
            record_count: 1
        }]),
        Err(StorageError::Poisoned { .. })
    ));
    assert!(matches!(
        log.read(0, 1, 1).await,
        Err(StorageError::Poisoned { .. })
    ));
    assert!(matches!(
        log.put_meta(vec![1]),
        Err(StorageError::Poisoned { .. })
    ));
    assert!(log.to_owned().close().await.is_err());
    // a restart recovers what was durable
    disk.crash();
    let log = Log::open(Arc::new(disk.clone()), "/p", config())
        .await
        .unwrap();
    assert_eq!(
        log.read(0, 10, 100).await.unwrap()[0].payload,
        Bytes::from("a")
    );
}

#[tokio::test]
async fn group_commit_batches_concurrent_appends() {
    let disk = SimDisk::new(5);
    let log = Log::open(Arc::new(disk.clone()), "/g", LogConfig::default())
        .await
        .unwrap();
    // The first append creates (and pre-zeroes, with its own fdatasync) the first segment.
    log.append(vec![FrameIn {
        payload: payload(1000, 100),
        record_count: 1,
    }])
    .unwrap()
    .await
    .unwrap();
    let before = disk.sync_count();
    let tickets: Vec<_> = (0..64)
        .map(|i| {
            log.append(vec![FrameIn {
                payload: payload(i, 100),
                record_count: 1,
            }])
            .unwrap()
        })
        .collect();
    for t in tickets {
        t.await.unwrap();
    }
    let syncs = disk.sync_count() - before;
    assert!(syncs <= 2, "64 queued appends took {syncs} fdatasyncs");
    assert_eq!(log.durable_index(), Some(64));
}

#[tokio::test]
async fn meta_is_never_durable_before_earlier_appends() {
    for seed in 0..20 {
        let disk = SimDisk::new(seed);
        let log = Log::open(Arc::new(disk.clone()), "/m", config())
            .await
            .unwrap();
        let _a = log
            .append(vec![FrameIn {
                payload: payload(0, 300),
                record_count: 1,
            }])
            .unwrap();
        let m = log.put_meta(b"after-append".to_vec()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..rng.random_range(0..10) {
            tokio::task::yield_now().await;
        }
        disk.crash();
        let _ = m.await;
        drop(log);
        let log = Log::open(Arc::new(disk.clone()), "/m", config())
            .await
            .unwrap();
        if log.meta().is_some() {
            assert_eq!(
                log.next_index(),
                1,
                "meta durable but the earlier append is not"
            );
        }
    }
}
