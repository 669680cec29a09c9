//! Corruption on real files: torn tails are truncated, other damage is a typed error.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use taskbroker_storage::io::{open_disk, BackendChoice, Disk, SimDisk};
use taskbroker_storage::log::frame::{decode_frame, encode_frame};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};
use taskbroker_storage::StorageError;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8192,
        index_interval_bytes: 512,
        preallocate: false,
        ..LogConfig::default()
    }
}

fn disk() -> Arc<dyn Disk> {
    open_disk(BackendChoice::Std).unwrap()
}

async fn fill(dir: &Path, frames: u64) {
    let log = Log::open(disk(), dir, config()).await.unwrap();
    for i in 0..frames {
        let p = Bytes::from(vec![i as u8; 500]);
        log.append(vec![FrameIn {
            payload: p,
            record_count: 2,
        }])
        .unwrap()
        .await
        .unwrap();
    }
    log.close().await.unwrap();
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[tokio::test]
async fn cut_tail_mid_frame_is_truncated() {
    let t = tmp();
    fill(t.path(), 40).await;
    let last = segments(t.path()).pop().unwrap();
    // The last frame's data ends at the file's last non-zero byte (its payload is 39s); the
    // group padding and marker (zeros) follow it.
    let bytes = std::fs::read(&last).unwrap();
    let data_end = bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    f.set_len(data_end - 100).unwrap();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    assert_eq!(log.next_index(), 39);
    assert_eq!(log.next_offset(), 78);
    let frames = log.read(0, 100, usize::MAX).await.unwrap();
    assert_eq!(frames.len(), 39);
    assert!(frames
        .iter()
        .all(|f| f.payload[..] == [f.index as u8; 500][..]));
    // appends continue where the intact data ends
    log.append(vec![FrameIn {
        payload: "x".into(),
        record_count: 1,
    }])
    .unwrap()
    .await
    .unwrap();
    log.close().await.unwrap();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    assert_eq!(log.next_index(), 40);
}

#[tokio::test]
async fn flipped_byte_in_a_middle_frame_is_corrupt() {
    let t = tmp();
    fill(t.path(), 40).await;
    // in the tail segment (valid frames follow) and in a sealed segment
    for seg in [
        segments(t.path()).pop().unwrap(),
        segments(t.path())[0].clone(),
    ] {
        let mut bytes = std::fs::read(&seg).unwrap();
        let orig = bytes.clone();
        bytes[32 + 48 + 10] ^= 0xff; // payload of the first frame
        std::fs::write(&seg, &bytes).unwrap();
        let _ = std::fs::remove_file(seg.with_extension("index"));
        match Log::open(disk(), t.path(), config()).await {
            Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, seg),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        std::fs::write(&seg, &orig).unwrap();
    }
    Log::open(disk(), t.path(), config()).await.unwrap();
}

#[tokio::test]
async fn corrupt_frame_read_through_a_valid_index_is_a_typed_error() {
    let t = tmp();
    fill(t.path(), 40).await;
    let seg = segments(t.path())[0].clone();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + 40] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        log.read(0, 1, 1).await,
        Err(StorageError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn missing_or_damaged_index_is_rebuilt() {
    let t = tmp();
    fill(t.path(), 40).await;
    let segs = segments(t.path());
    assert!(segs.len() >= 3);
    std::fs::remove_file(segs[0].with_extension("index")).unwrap();
    let idx1 = segs[1].with_extension("index");
    let mut b = std::fs::read(&idx1).unwrap();
    b[20] ^= 0x55;
    std::fs::write(&idx1, &b).unwrap();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    assert_eq!(log.next_index(), 40);
    let frames = log.read(0, 100, usize::MAX).await.unwrap();
    assert_eq!(frames.len(), 40);
    assert_eq!(
        log.locate_offset(41).await.unwrap().map(|p| p.index),
        Some(20)
    );
    assert!(segs[0].with_extension("index").exists(), "index rewritten");
}

#[tokio::test]
async fn damaged_meta_slot_falls_back_to_the_other() {
    let t = tmp();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    log.put_meta(b"one".to_vec()).unwrap().await.unwrap();
    log.put_meta(b"two".to_vec()).unwrap().await.unwrap();
    log.close().await.unwrap();
    // "two" has seq 2 → slot 0; damage it
    let meta = t.path().join("meta");
    let mut b = std::fs::read(&meta).unwrap();
    b[24] ^= 0xff;
    std::fs::write(&meta, &b).unwrap();
    let log = Log::open(disk(), t.path(), config()).await.unwrap();
    assert_eq!(log.meta(), Some(Bytes::from("one")));
    assert!(matches!(
        log.put_meta(vec![0; 5000]),
        Err(StorageError::MetaTooLarge { .. })
    ));
}

fn valid_frame() -> Vec<u8> {
    let mut b = Vec::new();
    encode_frame(&mut b, 3, 2, b"some payload bytes here");
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..200), max in any::<u32>()) {
        let _ = decode_frame(&bytes, max);
    }

    #[test]
    fn decode_rejects_mutated_frames(pos in 0usize..80, xor in 1u8..=255, cut in 0usize..90) {
        let mut b = valid_frame();
        let in_padding = pos >= 32 + 23 && pos < b.len();
        if pos < b.len() { b[pos] ^= xor; }
        let r = decode_frame(&b, 1 << 20);
        if pos < b.len() && !in_padding { prop_assert!(r.is_err()); }
        let _ = decode_frame(&b[..cut.min(b.len())], 1 << 20);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Recovery of segment files full of garbage (or garbage after valid frames) never panics.
    #[test]
    fn recovery_never_panics_on_garbage(garbage in prop::collection::vec(any::<u8>(), 0..3000), keep_header in any::<bool>(), seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let disk = SimDisk::new(seed);
            let log = Log::open(Arc::new(disk.clone()), "/f", config()).await.unwrap();
            log.append(vec![FrameIn { payload: "abc".into(), record_count: 1 }]).unwrap().await.unwrap();
            log.close().await.unwrap();
            let seg = Path::new("/f/00000000000000000000.log");
            let mut content = disk.file_content(seg).unwrap();
            if keep_header { content.extend_from_slice(&garbage); } else { content = garbage.clone(); }
            disk.set_file_content(seg, content);
            if let Ok(log) = Log::open(Arc::new(disk.clone()), "/f", config()).await {
                let n = log.next_index();
                if n > log.first_index() {
                    let _ = log.read(log.first_index(), 100, 1 << 20).await;
                }
            }
        });
    }
}

fn recycling_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8192,
        index_interval_bytes: 512,
        preallocate: true,
        recycle_segments_max: 4,
        ..LogConfig::default()
    }
}

/// Fills a log whose tail segment is a recycled file (stale frames of another life after
/// its data); returns the tail segment's path and the log's next index.
async fn fill_recycled(dir: &Path) -> (PathBuf, u64) {
    let log = Log::open(disk(), dir, recycling_config()).await.unwrap();
    let append = |i: u64| {
        log.append(vec![FrameIn {
            payload: Bytes::from(vec![i as u8; 500]),
            record_count: 1,
        }])
        .unwrap()
    };
    for i in 0..60 {
        append(i).await.unwrap();
    }
    log.purge_before(log.next_index()).unwrap().await.unwrap();
    // Each group commit takes a 4 KiB block: two frames fill an 8 KiB segment, so the tail
    // is the first recycled file reused, and other recycled files remain.
    let start = log.next_index();
    for i in start..start + 2 {
        append(i).await.unwrap();
    }
    let next = log.next_index();
    log.close().await.unwrap();
    let recycled = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("recycled-")
        })
        .count();
    assert!(recycled > 0, "no recycled files");
    (segments(dir).pop().unwrap(), next)
}

#[tokio::test]
async fn recycled_tail_reopens_at_full_size_and_reports_damage() {
    let t = tmp();
    let (tail, next) = fill_recycled(t.path()).await;
    // A clean reopen stops at the end-of-data marker before the stale frames: nothing is
    // cut, the file keeps its full size.
    let len = std::fs::metadata(&tail).unwrap().len();
    assert!(len >= 8192, "{len}");
    let log = Log::open(disk(), t.path(), recycling_config())
        .await
        .unwrap();
    assert_eq!(log.next_index(), next);
    log.close().await.unwrap();
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), len);

    // A zeroed (lost) page in the middle of the tail, valid frames after it: Corrupt.
    let orig = std::fs::read(&tail).unwrap();
    let mut bytes = orig.clone();
    bytes[32..32 + 48].fill(0);
    std::fs::write(&tail, &bytes).unwrap();
    match Log::open(disk(), t.path(), recycling_config()).await {
        Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, tail),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A flipped payload byte in a middle frame of the recycled tail: Corrupt.
    let mut bytes = orig.clone();
    bytes[32 + 48 + 10] ^= 0xff;
    std::fs::write(&tail, &bytes).unwrap();
    assert!(matches!(
        Log::open(disk(), t.path(), recycling_config()).await,
        Err(StorageError::Corrupt { .. })
    ));
    // Restored: it opens again, nothing lost.
    std::fs::write(&tail, &orig).unwrap();
    let log = Log::open(disk(), t.path(), recycling_config())
        .await
        .unwrap();
    assert_eq!(log.next_index(), next);
    log.close().await.unwrap();
}

#[tokio::test]
async fn an_older_format_segment_is_a_typed_error_not_deleted() {
    let t = tmp();
    fill(t.path(), 3).await;
    let seg = segments(t.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[4] = 1; // format version 1 (before segment salts)
    std::fs::write(&seg, &bytes).unwrap();
    match Log::open(disk(), t.path(), config()).await {
        Err(StorageError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, seg);
            assert!(reason.contains("version"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(seg.exists());
}
