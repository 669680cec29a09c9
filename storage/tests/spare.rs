//! Pre-zeroed segments: the spare next segment (zeroed and fdatasync'd ahead of time, then
//! renamed into place on roll) under crashes, stale leftovers and disks that cannot rename.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use taskbroker_storage::io::{BackendKind, Disk, DiskFile, IoFuture, SimDisk};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

/// The spare's file name inside a log directory (an implementation detail, pinned here so
/// the tests notice if it changes).
const SPARE: &str = "next-segment.spare";
const SEGMENT_BYTES: u64 = 4096;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: SEGMENT_BYTES,
        index_interval_bytes: 512,
        group_commit_bytes_max: 2048,
        preallocate: true,
        ..LogConfig::default()
    }
}

fn payload(tag: u8, index: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| tag ^ (index as usize * 13 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn frame_len(index: u64) -> usize {
    300 + (index as usize * 97) % 400
}

async fn segment_files(disk: &dyn Disk, dir: &Path) -> Vec<String> {
    disk.list_dir(dir)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect()
}

/// Reads the whole log and checks every frame against `tag`'s payloads.
async fn verify(log: &Log, tag: u8) {
    let next = log.next_index();
    if next == 0 {
        return;
    }
    let frames = log.read(0, usize::MAX, usize::MAX).await.unwrap();
    assert_eq!(frames.len() as u64, next);
    for f in &frames {
        assert_eq!(f.payload, payload(tag, f.index, frame_len(f.index)));
    }
}

async fn append_n(log: &Log, tag: u8, n: u64) {
    for _ in 0..n {
        let i = log.next_index();
        log.append(vec![FrameIn {
            payload: payload(tag, i, frame_len(i)),
            record_count: 1,
        }])
        .unwrap()
        .await
        .unwrap();
    }
}

/// Crash after every number of scheduler turns in turn, so the crash lands during zeroing of
/// the spare, between its fdatasync and the rename, between the rename and the header's
/// fdatasync, and before the directory fsync; recovery must ignore the spare (and a renamed,
/// still all-zero segment) and keep every acknowledged frame.
#[tokio::test]
async fn prezeroed_spare_survives_a_crash_at_any_point() {
    let dir = Path::new("/log");
    for turns in 0..160u64 {
        let disk = SimDisk::new(turns);
        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap();
        let appender = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for _ in 0..40 {
                    let i = log.next_index();
                    let Ok(t) = log.append(vec![FrameIn {
                        payload: payload(1, i, frame_len(i)),
                        record_count: 1,
                    }]) else {
                        break;
                    };
                    match t.await {
                        Ok(_) => acked.push(i),
                        Err(_) => break,
                    }
                }
                acked
            })
        };
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        disk.crash();
        let acked = appender.await.unwrap();
        drop(log);

        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap();
        assert!(
            acked.iter().all(|i| *i < log.next_index()),
            "turns={turns}: acknowledged frame lost (next_index {})",
            log.next_index()
        );
        verify(&log, 1).await;
        assert_eq!(
            log.stats().segments,
            segment_files(&disk, dir).await.len(),
            "turns={turns}: the spare must not count as a segment"
        );
        // Keep going across several more rolls, then check a clean reopen.
        append_n(&log, 1, 25).await;
        verify(&log, 1).await;
        let next = log.next_index();
        log.close().await.unwrap();
        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap();
        assert_eq!(log.next_index(), next, "turns={turns}");
        verify(&log, 1).await;
        log.close().await.unwrap();
    }
}

/// Segments come pre-zeroed at their full size and appends never extend them; the spare is
/// prepared in the background and removed on close.
#[tokio::test]
async fn segments_are_prezeroed_and_appends_do_not_grow_them() {
    let disk = SimDisk::new(9);
    let dir = Path::new("/z");
    let log = Log::open(Arc::new(disk.clone()), dir, config())
        .await
        .unwrap();
    append_n(&log, 2, 40).await;
    let segs = segment_files(&disk, dir).await;
    assert!(segs.len() >= 4, "expected several rolls, got {segs:?}");
    for name in &segs {
        let content = disk.file_content(&dir.join(name)).unwrap();
        assert_eq!(content.len() as u64, SEGMENT_BYTES, "{name}");
    }
    // The active segment is past half full by now, or a spare was just used: either way the
    // spare exists or is being prepared; after close it is gone.
    log.close().await.unwrap();
    assert!(!disk.list_dir(dir).await.unwrap().contains(&SPARE.into()));
    let log = Log::open(Arc::new(disk.clone()), dir, config())
        .await
        .unwrap();
    verify(&log, 2).await;
    log.close().await.unwrap();
}

/// A leftover spare holding valid-looking frames (here: a real segment of another log, with
/// the same frame sizes, so positions line up) is deleted and re-zeroed, never reused.
#[tokio::test]
async fn a_stale_spare_is_never_reused() {
    let disk = SimDisk::new(4);
    let a = Path::new("/a");
    let log = Log::open(Arc::new(disk.clone()), a, config())
        .await
        .unwrap();
    append_n(&log, 0xA0, 6).await;
    log.close().await.unwrap();
    let image = disk
        .file_content(&a.join("00000000000000000000.log"))
        .unwrap();

    let b = Path::new("/b");
    disk.create_dir_all(b).await.unwrap();
    let f = disk.open(&b.join(SPARE), true).await.unwrap();
    f.write_all_at(image, 0).await.unwrap();
    f.sync_data().await.unwrap();
    disk.sync_dir(b).await.unwrap();
    drop(f);

    let log = Log::open(Arc::new(disk.clone()), b, config())
        .await
        .unwrap();
    append_n(&log, 0xB0, 2).await;
    log.close().await.unwrap();
    disk.crash();
    let log = Log::open(Arc::new(disk.clone()), b, config())
        .await
        .unwrap();
    assert_eq!(log.next_index(), 2, "stale frames were resurrected");
    verify(&log, 0xB0).await;
    log.close().await.unwrap();
}

/// A disk without `rename` (the trait's default) gets segments created in place.
#[derive(Debug)]
struct NoRename(SimDisk);

impl Disk for NoRename {
    fn kind(&self) -> BackendKind {
        self.0.kind()
    }
    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        self.0.open(path, create)
    }
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        self.0.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        self.0.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        self.0.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        self.0.sync_dir(path)
    }
}

#[tokio::test]
async fn disks_without_rename_create_segments_in_place() {
    let sim = SimDisk::new(11);
    let disk: Arc<dyn Disk> = Arc::new(NoRename(sim.clone()));
    let dir = PathBuf::from("/n");
    let log = Log::open(disk.clone(), &dir, config()).await.unwrap();
    append_n(&log, 3, 30).await;
    assert!(log.stats().segments >= 3);
    log.close().await.unwrap();
    sim.crash();
    let log = Log::open(disk.clone(), &dir, config()).await.unwrap();
    assert_eq!(log.next_index(), 30);
    verify(&log, 3).await;
    log.close().await.unwrap();
}
