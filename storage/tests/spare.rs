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

// ---- recycled segments ----

fn recycled_files(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.starts_with("recycled-") && n.ends_with(".spare"))
        .cloned()
        .collect()
}

/// Purged segments become recycled spares (up to the bound), the next rolls reuse them, no
/// segment is zeroed while recycled files are available, and stale frames of the files'
/// previous lives never show up (clean reopen and crash reopen).
#[tokio::test]
async fn purged_segments_are_recycled_and_reused() {
    let disk = SimDisk::new(21);
    let dir = Path::new("/r");
    let cfg = LogConfig {
        recycle_segments_max: 3,
        ..config()
    };
    let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
        .await
        .unwrap();
    append_n(&log, 5, 60).await;
    let segs_before = log.stats().segments;
    assert!(segs_before >= 6, "{segs_before}");
    log.purge_before(log.next_index() - 2)
        .unwrap()
        .await
        .unwrap();
    let names = disk.list_dir(dir).await.unwrap();
    assert_eq!(recycled_files(&names).len(), 3, "{names:?}");
    // A spare being zeroed now would be wasted work; with recycled files there is none.
    let zeroing = names.contains(&SPARE.to_string());
    // Roll into the recycled files: they are consumed, none zeroed meanwhile.
    append_n(&log, 5, 20).await;
    let names = disk.list_dir(dir).await.unwrap();
    assert!(recycled_files(&names).len() < 3, "{names:?}");
    if !zeroing {
        assert!(!names.contains(&SPARE.to_string()), "{names:?}");
    }
    // Segments keep their full size (recycled files are overwritten, not grown).
    for name in segment_files(&disk, dir).await {
        let len = disk.file_content(&dir.join(&name)).unwrap().len() as u64;
        assert!(len >= SEGMENT_BYTES, "{name}: {len}");
    }
    let (first, next) = (log.first_index(), log.next_index());
    let frames = log.read(first, usize::MAX, usize::MAX).await.unwrap();
    assert_eq!(frames.len() as u64, next - first);
    for f in &frames {
        assert_eq!(f.payload, payload(5, f.index, frame_len(f.index)));
    }
    log.close().await.unwrap();
    for crash in [false, true] {
        if crash {
            disk.crash();
        }
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        assert_eq!((log.first_index(), log.next_index()), (first, next));
        let frames = log.read(first, usize::MAX, usize::MAX).await.unwrap();
        assert_eq!(frames.len() as u64, next - first);
        log.close().await.unwrap();
    }
}

/// Builds a log at `dir` with recycled files in its pool and its active segment on a
/// recycled file. Returns the config.
async fn log_on_recycled_files(disk: &SimDisk, dir: &Path) -> LogConfig {
    let cfg = LogConfig {
        recycle_segments_max: 4,
        ..config()
    };
    let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
        .await
        .unwrap();
    append_n(&log, 1, 60).await;
    log.purge_before(log.next_index()).unwrap().await.unwrap();
    // Rolls into a recycled file (each group takes a 4 KiB block: one per segment here), and
    // leaves two in the pool.
    append_n(&log, 1, 2).await;
    log.close().await.unwrap();
    let names = disk.list_dir(dir).await.unwrap();
    assert!(!recycled_files(&names).is_empty(), "{names:?}");
    cfg
}

/// Crash at every scheduler step while appends roll through recycled files and purges
/// recycle more: acknowledged frames survive, nothing stale is read, recovery never reports
/// corruption, and the log keeps working afterwards.
#[tokio::test]
async fn recycling_survives_a_crash_at_any_point() {
    let dir = Path::new("/rc");
    for turns in 0..200u64 {
        let disk = SimDisk::new(1000 + turns);
        let cfg = log_on_recycled_files(&disk, dir).await;
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        let start = log.next_index();
        let worker = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..40u64 {
                    let i = log.next_index();
                    let Ok(t) = log.append(vec![FrameIn {
                        payload: payload(2, i, frame_len(i)),
                        record_count: 1,
                    }]) else {
                        break;
                    };
                    match t.await {
                        Ok(_) => acked.push(i),
                        Err(_) => break,
                    }
                    if k % 9 == 8 {
                        let Ok(t) = log.purge_before(i) else { break };
                        if t.await.is_err() {
                            break;
                        }
                    }
                }
                acked
            })
        };
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        disk.crash();
        let acked = worker.await.unwrap();
        drop(log);
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("turns={turns}: {e}"));
        let (first, next) = (log.first_index(), log.next_index());
        assert!(
            acked.iter().all(|i| *i < next),
            "turns={turns}: acknowledged frame lost (next_index {next})"
        );
        if next > first {
            let frames = log.read(first, usize::MAX, usize::MAX).await.unwrap();
            assert_eq!(frames.len() as u64, next - first, "turns={turns}");
            for f in &frames {
                let tag = if f.index < start { 1 } else { 2 };
                assert_eq!(
                    f.payload,
                    payload(tag, f.index, frame_len(f.index)),
                    "turns={turns}: frame {}",
                    f.index
                );
            }
        }
        // Keep going: more rolls through recycled files, then a clean reopen.
        for _ in 0..20 {
            let i = log.next_index();
            log.append(vec![FrameIn {
                payload: payload(2, i, frame_len(i)),
                record_count: 1,
            }])
            .unwrap()
            .await
            .unwrap();
        }
        let next = log.next_index();
        log.close().await.unwrap();
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        assert_eq!(log.next_index(), next, "turns={turns}");
        log.close().await.unwrap();
    }
}

/// The dangerous truncation case on a recycled (and hence never-shrunk) segment: frames of
/// the same length as the truncated ones are re-appended, fewer of them, and the power fails.
/// Without zeroing the cut, the scan would walk from the new frames straight into the old,
/// truncated ones (same salt, continuing indexes) and resurrect them.
#[tokio::test]
async fn truncation_on_a_recycled_segment_never_resurrects_frames() {
    let dir = Path::new("/t");
    for turns in 0..80u64 {
        let disk = SimDisk::new(500 + turns);
        let cfg = log_on_recycled_files(&disk, dir).await;
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        // Small frames, so the old suffix and its replacement stay in one segment.
        let small = |tag: u8, i: u64| FrameIn {
            payload: payload(tag, i, 96),
            record_count: 1,
        };
        let cut = log.next_index();
        let old: Vec<FrameIn> = (cut..cut + 6).map(|i| small(7, i)).collect();
        log.append(old).unwrap().await.unwrap();
        log.truncate_from(cut).unwrap().await.unwrap();
        let worker = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in cut..cut + 3 {
                    let Ok(t) = log.append(vec![small(8, i)]) else {
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
        let acked = worker.await.unwrap();
        drop(log);
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("turns={turns}: {e}"));
        let next = log.next_index();
        assert!(acked.iter().all(|i| *i < next), "turns={turns}");
        assert!(
            next <= cut + 3,
            "turns={turns}: truncated frames resurrected (next_index {next}, cut {cut})"
        );
        if next > cut {
            for f in log.read(cut, usize::MAX, usize::MAX).await.unwrap() {
                assert_eq!(f.payload, payload(8, f.index, 96), "turns={turns}");
            }
        }
        log.close().await.unwrap();
    }
}

/// A recycled file holding a real segment image of another log, with the same indexes at the
/// same positions, is reused: only the salt keeps its frames out.
#[tokio::test]
async fn a_recycled_file_with_matching_stale_frames_is_safe() {
    let disk = SimDisk::new(31);
    let a = Path::new("/ra");
    let log = Log::open(Arc::new(disk.clone()), a, config())
        .await
        .unwrap();
    append_n(&log, 0xA0, 6).await;
    log.close().await.unwrap();
    let image = disk
        .file_content(&a.join("00000000000000000000.log"))
        .unwrap();
    assert!(image.len() as u64 >= SEGMENT_BYTES);

    let b = Path::new("/rb");
    disk.create_dir_all(b).await.unwrap();
    let planted = b.join("recycled-00000000000000000000.spare");
    let f = disk.open(&planted, true).await.unwrap();
    f.write_all_at(image, 0).await.unwrap();
    f.sync_data().await.unwrap();
    disk.sync_dir(b).await.unwrap();
    drop(f);

    let log = Log::open(Arc::new(disk.clone()), b, config())
        .await
        .unwrap();
    append_n(&log, 0xB0, 2).await;
    let names = disk.list_dir(b).await.unwrap();
    assert!(recycled_files(&names).is_empty(), "not reused: {names:?}");
    log.close().await.unwrap();
    for crash in [false, true] {
        if crash {
            disk.crash();
        }
        let log = Log::open(Arc::new(disk.clone()), b, config())
            .await
            .unwrap();
        assert_eq!(log.next_index(), 2, "stale frames were resurrected");
        verify(&log, 0xB0).await;
        log.close().await.unwrap();
    }
}

// ---- growing segments ----

const MIN: u64 = 4096;
const MAX: u64 = 32768;

/// Segments of 4, 8, 16, then 32 KiB.
fn growing() -> LogConfig {
    LogConfig {
        segment_bytes_min: MIN,
        segment_bytes_max: MAX,
        recycle_segments_max: 4,
        ..config()
    }
}

/// Payload length of frame `index` in the growing tests: mostly small, every 10th one larger
/// than the first segment sizes (but below `MAX`).
fn grow_len(index: u64) -> usize {
    if index % 10 == 9 {
        5000
    } else {
        frame_len(index)
    }
}

/// Segment file lengths, in log order.
async fn segment_sizes(disk: &SimDisk, dir: &Path) -> Vec<u64> {
    let mut names = segment_files(disk, dir).await;
    names.sort();
    names
        .iter()
        .map(|n| disk.file_content(&dir.join(n)).unwrap().len() as u64)
        .collect()
}

async fn append_len(log: &Log, tag: u8, len: usize) {
    let i = log.next_index();
    log.append(vec![FrameIn {
        payload: payload(tag, i, len),
        record_count: 1,
    }])
    .unwrap()
    .await
    .unwrap();
}

/// Checks every readable frame against `tag` and its length in `lens` (by index).
async fn verify_lens(log: &Log, tag: u8, lens: &[usize]) {
    let (first, next) = (log.first_index(), log.next_index());
    if next == first {
        return;
    }
    let frames = log.read(first, usize::MAX, usize::MAX).await.unwrap();
    assert_eq!(frames.len() as u64, next - first);
    for f in &frames {
        let len = lens[f.index as usize];
        assert_eq!(f.payload, payload(tag, f.index, len), "frame {}", f.index);
    }
}

/// A new log's first segment is `segment_bytes_min`, each next one doubles up to
/// `segment_bytes_max`, every segment keeps its pre-zeroed size, a frame larger than the
/// planned size gets a segment large enough for it, and the sizes continue after a reopen.
#[tokio::test]
async fn segments_grow_from_min_to_max() {
    let disk = SimDisk::new(41);
    let dir = Path::new("/g");
    let log = Log::open(Arc::new(disk.clone()), dir, growing())
        .await
        .unwrap();
    let mut lens = Vec::new();
    append_len(&log, 4, 300).await;
    lens.push(300);
    assert_eq!(segment_sizes(&disk, dir).await, vec![MIN]);
    // (A 4 KiB first segment is full after one group commit: each group starts at a fresh
    // block, so the spare for the next segment may already be on its way.)
    while log.stats().segments < 7 {
        let len = frame_len(log.next_index());
        append_len(&log, 4, len).await;
        lens.push(len);
    }
    let sizes = segment_sizes(&disk, dir).await;
    let planned: Vec<u64> = (0..7).map(|k| (MIN << k).min(MAX)).collect();
    assert_eq!(sizes, planned);
    // A frame larger than a whole segment: its segment is as large as it needs (rounded up
    // to 4 KiB), and the next one is planned from the grid again (capped at the maximum).
    while log.stats().segments < 8 {
        append_len(&log, 4, 40_000).await;
        lens.push(40_000);
    }
    assert_eq!(*segment_sizes(&disk, dir).await.last().unwrap(), 40_960);
    while log.stats().segments < 9 {
        let len = frame_len(log.next_index());
        append_len(&log, 4, len).await;
        lens.push(len);
    }
    assert_eq!(*segment_sizes(&disk, dir).await.last().unwrap(), MAX);
    verify_lens(&log, 4, &lens).await;
    log.close().await.unwrap();
    for crash in [false, true] {
        if crash {
            disk.crash();
        }
        let log = Log::open(Arc::new(disk.clone()), dir, growing())
            .await
            .unwrap();
        assert_eq!(log.next_index(), lens.len() as u64);
        verify_lens(&log, 4, &lens).await;
        log.close().await.unwrap();
    }
}

/// A big first frame makes the first segment large enough; growth continues from it, and a
/// reopen in the middle of the growth continues it (not from the minimum again).
#[tokio::test]
async fn growth_continues_from_a_big_first_frame_and_across_reopen() {
    let disk = SimDisk::new(42);
    let dir = Path::new("/gb");
    let log = Log::open(Arc::new(disk.clone()), dir, growing())
        .await
        .unwrap();
    let mut lens = vec![6000];
    append_len(&log, 5, 6000).await;
    assert_eq!(segment_sizes(&disk, dir).await, vec![8192]);
    log.close().await.unwrap();
    let log = Log::open(Arc::new(disk.clone()), dir, growing())
        .await
        .unwrap();
    while log.stats().segments < 3 {
        let len = frame_len(log.next_index());
        append_len(&log, 5, len).await;
        lens.push(len);
    }
    assert_eq!(segment_sizes(&disk, dir).await, vec![8192, 16384, 32768]);
    verify_lens(&log, 5, &lens).await;
    // A reset starts over at the minimum (the zeroed spare, if any, is used at its size).
    log.reset(taskbroker_storage::Position {
        index: 1000,
        offset: 1000,
    })
    .unwrap()
    .await
    .unwrap();
    log.append(vec![FrameIn {
        payload: payload(5, 1000, 100),
        record_count: 1,
    }])
    .unwrap()
    .await
    .unwrap();
    let sizes = segment_sizes(&disk, dir).await;
    assert_eq!(sizes.len(), 1);
    assert!(sizes[0] >= MIN && sizes[0] <= MAX, "{sizes:?}");
    log.close().await.unwrap();
}

/// Recycled files are used only when they fit, smallest first and at their own size (even
/// above `segment_bytes_max`); files too small for the next segment are deleted on open and
/// on purge instead of kept; purges during the growth do not keep the small segments.
#[tokio::test]
async fn recycled_files_of_mixed_sizes_are_used_when_they_fit() {
    let disk = SimDisk::new(43);
    let dir = Path::new("/gm");
    disk.create_dir_all(dir).await.unwrap();
    // Stale junk of three sizes, out of size order.
    for (seq, len) in [(0u64, 65536usize), (1, MIN as usize), (2, 8192)] {
        let f = disk
            .open(&dir.join(format!("recycled-{seq:020}.spare")), true)
            .await
            .unwrap();
        f.write_all_at(vec![0xEE; len], 0).await.unwrap();
        f.sync_data().await.unwrap();
    }
    disk.sync_dir(dir).await.unwrap();
    let log = Log::open(Arc::new(disk.clone()), dir, growing())
        .await
        .unwrap();
    let mut lens = Vec::new();
    while log.stats().segments < 4 {
        let len = frame_len(log.next_index());
        append_len(&log, 6, len).await;
        lens.push(len);
    }
    // 4 KiB and 8 KiB from the pool, 16 KiB wanted: the 64 KiB file at its own size; then
    // the grid resumes at the maximum.
    assert_eq!(segment_sizes(&disk, dir).await, vec![MIN, 8192, 65536, MAX]);
    assert!(recycled_files(&disk.list_dir(dir).await.unwrap()).is_empty());
    // Purge all but the tail: only files at least as large as the next segment are kept.
    log.purge_before(log.next_index() - 1)
        .unwrap()
        .await
        .unwrap();
    let names = disk.list_dir(dir).await.unwrap();
    let kept: Vec<u64> = recycled_files(&names)
        .iter()
        .map(|n| disk.file_content(&dir.join(n)).unwrap().len() as u64)
        .collect();
    assert_eq!(kept, vec![65536], "{names:?}");
    log.close().await.unwrap();
    // A file too small for the next segment, left by someone, is deleted on open.
    let small = dir.join(format!("recycled-{:020}.spare", 99));
    let f = disk.open(&small, true).await.unwrap();
    f.write_all_at(vec![0; 8192], 0).await.unwrap();
    f.sync_data().await.unwrap();
    disk.sync_dir(dir).await.unwrap();
    drop(f);
    for crash in [false, true] {
        if crash {
            disk.crash();
        }
        let log = Log::open(Arc::new(disk.clone()), dir, growing())
            .await
            .unwrap();
        assert_eq!(log.next_index(), lens.len() as u64);
        verify_lens(&log, 6, &lens).await;
        log.put_meta(vec![1]).unwrap().await.unwrap(); // the writer has loaded its pool
        let names = disk.list_dir(dir).await.unwrap();
        assert!(!names.contains(&small.file_name().unwrap().to_str().unwrap().to_string()));
        log.close().await.unwrap();
    }
}

/// Crash at every scheduler step while a new log grows through its first sizes (spares
/// zeroed inline, then in the background, at growing sizes; big frames forcing larger
/// segments): acknowledged frames survive, spares never count as segments, and the log
/// keeps growing after recovery.
#[tokio::test]
async fn growing_segments_survive_a_crash_at_any_point() {
    let dir = Path::new("/gc");
    for turns in 0..200u64 {
        let disk = SimDisk::new(2000 + turns);
        let log = Log::open(Arc::new(disk.clone()), dir, growing())
            .await
            .unwrap();
        let appender = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for _ in 0..60 {
                    let i = log.next_index();
                    let Ok(t) = log.append(vec![FrameIn {
                        payload: payload(7, i, grow_len(i)),
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
        let lens: Vec<usize> = (0..200).map(grow_len).collect();
        let log = Log::open(Arc::new(disk.clone()), dir, growing())
            .await
            .unwrap_or_else(|e| panic!("turns={turns}: {e}"));
        assert!(
            acked.iter().all(|i| *i < log.next_index()),
            "turns={turns}: acknowledged frame lost (next_index {})",
            log.next_index()
        );
        verify_lens(&log, 7, &lens).await;
        assert_eq!(
            log.stats().segments,
            segment_files(&disk, dir).await.len(),
            "turns={turns}"
        );
        for _ in 0..40 {
            let i = log.next_index();
            append_len(&log, 7, grow_len(i)).await;
        }
        verify_lens(&log, 7, &lens).await;
        for len in segment_sizes(&disk, dir).await {
            assert!(len <= 8192 + MAX, "turns={turns}: segment of {len} bytes");
        }
        let next = log.next_index();
        log.close().await.unwrap();
        let log = Log::open(Arc::new(disk.clone()), dir, growing())
            .await
            .unwrap();
        assert_eq!(log.next_index(), next, "turns={turns}");
        verify_lens(&log, 7, &lens).await;
        log.close().await.unwrap();
    }
}

/// Payload length of frame `index` in the mixed-recycling test: every 7th one needs a
/// segment larger than `MAX` (36 KiB), so the pool holds files of two sizes.
fn mixed_len(index: u64) -> usize {
    if index % 7 == 6 {
        36_000
    } else {
        frame_len(index)
    }
}

/// Crash at every scheduler step while appends roll through a pool of recycled files of
/// mixed sizes (32 KiB and 36 KiB: big frames take the larger ones) and purges refill it:
/// acknowledged frames survive, stale frames never show up, recovery never reports
/// corruption, and the log keeps working.
#[tokio::test]
async fn recycling_mixed_sizes_survives_a_crash_at_any_point() {
    let dir = Path::new("/gx");
    for turns in 0..200u64 {
        let disk = SimDisk::new(3000 + turns);
        let cfg = growing();
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        for _ in 0..60 {
            let i = log.next_index();
            append_len(&log, 1, mixed_len(i)).await;
        }
        log.purge_before(log.next_index()).unwrap().await.unwrap();
        let names = disk.list_dir(dir).await.unwrap();
        let mut pool: Vec<u64> = recycled_files(&names)
            .iter()
            .map(|n| disk.file_content(&dir.join(n)).unwrap().len() as u64)
            .collect();
        pool.sort();
        pool.dedup();
        assert_eq!(pool, vec![MAX, 36_864], "{names:?}");
        log.close().await.unwrap();

        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        let start = log.next_index();
        let worker = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for k in 0..40u64 {
                    let i = log.next_index();
                    let Ok(t) = log.append(vec![FrameIn {
                        payload: payload(2, i, mixed_len(i)),
                        record_count: 1,
                    }]) else {
                        break;
                    };
                    match t.await {
                        Ok(_) => acked.push(i),
                        Err(_) => break,
                    }
                    if k % 9 == 8 {
                        let Ok(t) = log.purge_before(i) else { break };
                        if t.await.is_err() {
                            break;
                        }
                    }
                }
                acked
            })
        };
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        disk.crash();
        let acked = worker.await.unwrap();
        drop(log);
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("turns={turns}: {e}"));
        let (first, next) = (log.first_index(), log.next_index());
        assert!(
            acked.iter().all(|i| *i < next),
            "turns={turns}: acknowledged frame lost (next_index {next})"
        );
        if next > first {
            let frames = log.read(first, usize::MAX, usize::MAX).await.unwrap();
            assert_eq!(frames.len() as u64, next - first, "turns={turns}");
            for f in &frames {
                let tag = if f.index < start { 1 } else { 2 };
                assert_eq!(
                    f.payload,
                    payload(tag, f.index, mixed_len(f.index)),
                    "turns={turns}: frame {}",
                    f.index
                );
            }
        }
        for _ in 0..20 {
            let i = log.next_index();
            append_len(&log, 2, mixed_len(i)).await;
        }
        let next = log.next_index();
        log.close().await.unwrap();
        let log = Log::open(Arc::new(disk.clone()), dir, cfg.clone())
            .await
            .unwrap();
        assert_eq!(log.next_index(), next, "turns={turns}");
        log.close().await.unwrap();
    }
}
