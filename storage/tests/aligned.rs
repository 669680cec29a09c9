//! Block-aligned group commits: every group is written as whole 4 KiB blocks starting at a
//! fresh block, never over a block that holds acknowledged frames; a torn write that garbles
//! the whole block it was cut in (a device with 4 KiB physical blocks) never damages
//! acknowledged frames; recently written frames are read from memory.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use taskbroker_storage::io::{
    open_disk, AlignedBuf, BackendChoice, BackendKind, Disk, DiskFile, IoFuture, SimDisk,
    BLOCK_BYTES,
};
use taskbroker_storage::log::{FrameIn, Log, LogConfig};

fn payload(index: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (index as usize * 13 + i) as u8 | 1)
            .collect::<Vec<u8>>(),
    )
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_min: 16 * 1024,
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 512,
        group_commit_bytes_max: 8192,
        ..LogConfig::default()
    }
}

/// Records what the log writes through the block path, and checks each write as it comes.
#[derive(Debug, Default)]
struct Audit {
    /// `(path, pos, len)` of every block write.
    writes: Mutex<Vec<(PathBuf, u64, usize)>>,
    reads: AtomicU64,
    /// Write, yield to the scheduler, then fdatasync (so a crash can find the write unsynced).
    yield_before_sync: bool,
}

#[derive(Debug, Clone)]
struct AuditDisk {
    inner: SimDisk,
    audit: Arc<Audit>,
}

#[derive(Debug)]
struct AuditFile {
    inner: Arc<dyn DiskFile>,
    path: PathBuf,
    audit: Arc<Audit>,
}

impl Disk for AuditDisk {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let inner = self.inner.open(&path, create).await?;
            Ok(Arc::new(AuditFile {
                inner,
                path,
                audit: self.audit.clone(),
            }) as Arc<dyn DiskFile>)
        })
    }
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        self.inner.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        self.inner.rename(from, to)
    }
    fn random_u64(&self) -> u64 {
        self.inner.random_u64()
    }
}

impl DiskFile for AuditFile {
    fn read_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)> {
        self.audit.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> IoFuture<'_, ()> {
        self.inner.sync_data()
    }
    fn len(&self) -> IoFuture<'_, u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> IoFuture<'_, ()> {
        self.inner.allocate(len)
    }
    fn write_blocks_at_and_sync(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        Box::pin(async move {
            assert_eq!(pos % BLOCK_BYTES as u64, 0, "unaligned position {pos}");
            assert_eq!(buf.len() % BLOCK_BYTES, 0, "unaligned length {}", buf.len());
            assert_eq!(buf.as_ptr() as usize % BLOCK_BYTES, 0, "unaligned buffer");
            // Fresh (pre-zeroed, never recycled) segments: a group write may only cover
            // zeros (padding, the end-of-data marker, never-written blocks), except the
            // segment header it writes itself in block 0.
            let (n, old) = self.inner.read_at(vec![0u8; buf.len()], pos).await?;
            let from = if pos == 0 { 32 } else { 0 };
            if let Some(i) = old[..n].iter().skip(from).position(|b| *b != 0) {
                panic!(
                    "{}: a group write at {pos} overwrites written byte {}",
                    self.path.display(),
                    pos as usize + from + i
                );
            }
            self.audit
                .writes
                .lock()
                .unwrap()
                .push((self.path.clone(), pos, buf.len()));
            if self.audit.yield_before_sync {
                let buf = self
                    .inner
                    .write_all_at(buf.to_vec(), pos)
                    .await
                    .map(|_| buf)?;
                tokio::task::yield_now().await;
                self.inner.sync_data().await?;
                return Ok(buf);
            }
            self.inner.write_blocks_at_and_sync(buf, pos).await
        })
    }
}

/// Group writes are whole, aligned blocks that never cover a written byte (so never a block
/// holding acknowledged frames), also across reopens and rolls; what was written reads back.
#[tokio::test]
async fn group_writes_are_whole_fresh_blocks() {
    let sim = SimDisk::new(5);
    let audit = Arc::new(Audit::default());
    let disk = AuditDisk {
        inner: sim.clone(),
        audit: audit.clone(),
    };
    let dir = Path::new("/a");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut lens = Vec::new();
    for _round in 0..3 {
        let log = Log::open(
            Arc::new(disk.clone()),
            dir,
            LogConfig {
                recycle_segments_max: 0,
                ..config()
            },
        )
        .await
        .unwrap();
        for _ in 0..60 {
            // Sometimes several appends in one group, sometimes one.
            let k = rng.random_range(1..4);
            let mut tickets = Vec::new();
            for _ in 0..k {
                let i = log.next_index();
                let len = rng.random_range(0..3000);
                lens.push(len);
                tickets.push(
                    log.append(vec![FrameIn {
                        payload: payload(i, len),
                        record_count: 1,
                    }])
                    .unwrap(),
                );
            }
            for t in tickets {
                t.await.unwrap();
            }
        }
        let frames = log.read(0, usize::MAX, usize::MAX).await.unwrap();
        assert_eq!(frames.len(), lens.len());
        for f in &frames {
            assert_eq!(f.payload, payload(f.index, lens[f.index as usize]));
        }
        log.close().await.unwrap();
    }
    let writes = audit.writes.lock().unwrap().len();
    assert!(writes >= 180, "{writes} block writes");
    assert!(Log::open(Arc::new(sim), dir, config()).await.is_ok());
}

/// Space cost of the padding: one appender of small frames, one group per append, takes a
/// block per append; merged groups share blocks.
#[tokio::test]
async fn padding_costs_at_most_a_block_per_group() {
    let disk = SimDisk::new(9);
    let cfg = LogConfig {
        segment_bytes_min: 64 * 1024,
        ..config()
    };
    let log = Log::open(Arc::new(disk.clone()), "/p", cfg).await.unwrap();
    for i in 0..10 {
        log.append(vec![FrameIn {
            payload: payload(i, 100),
            record_count: 1,
        }])
        .unwrap()
        .await
        .unwrap();
    }
    // 10 groups of one 144-byte frame: the 10th frame starts in the 10th block.
    assert_eq!(log.stats().bytes, 9 * 4096 + 144);
    let tickets: Vec<_> = (10..20)
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
    // The next 10 went in at most two groups (the first alone, the rest merged): packed.
    assert!(
        log.stats().bytes <= 11 * 4096 + 9 * 144,
        "{}",
        log.stats().bytes
    );
    log.close().await.unwrap();
}

/// Crash at every scheduler step of a workload of small appends (many frames per block,
/// groups of one or more appends; each group write is left unsynced for a scheduler turn, so
/// crashes tear it) on a device whose torn writes garble the whole 4 KiB block
/// they were cut in: recovery never reports corruption and every acknowledged frame is
/// intact. (Rewriting the partial last block with the next group, instead of starting a fresh
/// block, fails this: the garbled block holds acknowledged frames.)
#[tokio::test]
async fn torn_block_garbling_never_damages_acknowledged_frames() {
    let dir = Path::new("/t");
    for turns in 0..160u64 {
        let sim = SimDisk::new(300 + turns);
        sim.set_torn_write_garbles_block(BLOCK_BYTES as u64);
        let disk = AuditDisk {
            inner: sim.clone(),
            audit: Arc::new(Audit {
                yield_before_sync: true,
                ..Audit::default()
            }),
        };
        let mut acked: Vec<(u64, usize)> = Vec::new();
        for cycle in 0..2u64 {
            let log = Log::open(Arc::new(disk.clone()), dir, config())
                .await
                .unwrap_or_else(|e| panic!("turns {turns} cycle {cycle}: {e}"));
            for (index, len) in &acked {
                let f = log.read(*index, 1, usize::MAX).await.unwrap();
                assert_eq!(f[0].payload, payload(*index, *len), "frame {index} damaged");
            }
            let mut handles = Vec::new();
            for a in 0..2u64 {
                let log = log.clone();
                handles.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    for k in 0..40u64 {
                        let len = ((a * 131 + k * 57 + turns) % 700) as usize;
                        let index = log.next_index();
                        let Ok(t) = log.append(vec![FrameIn {
                            payload: payload(index, len),
                            record_count: 1,
                        }]) else {
                            break;
                        };
                        match t.await {
                            Ok(_) => done.push((index, len)),
                            Err(_) => break,
                        }
                    }
                    done
                }));
            }
            for _ in 0..(turns + cycle * 37) {
                tokio::task::yield_now().await;
            }
            sim.crash();
            for h in handles {
                acked.extend(h.await.unwrap());
            }
            drop(log);
            tokio::task::yield_now().await;
        }
        let log = Log::open(Arc::new(disk.clone()), dir, config())
            .await
            .unwrap_or_else(|e| panic!("turns {turns}: {e}"));
        for (index, len) in &acked {
            let f = log.read(*index, 1, usize::MAX).await.unwrap();
            assert_eq!(f[0].payload, payload(*index, *len), "frame {index} damaged");
        }
        // The log keeps working.
        log.append(vec![FrameIn {
            payload: payload(log.next_index(), 10),
            record_count: 1,
        }])
        .unwrap()
        .await
        .unwrap();
    }
}

/// The most recently written frames are served from memory (`read_cache_bytes`), older
/// ones from the files; truncation and purge keep the cache consistent.
#[tokio::test]
async fn recent_frames_are_read_from_memory() {
    let audit = Arc::new(Audit::default());
    let disk = AuditDisk {
        inner: SimDisk::new(3),
        audit: audit.clone(),
    };
    let cfg = LogConfig {
        read_cache_bytes: 10 * 1000,
        ..config()
    };
    let log = Log::open(Arc::new(disk), "/r", cfg).await.unwrap();
    for i in 0..40 {
        log.append(vec![FrameIn {
            payload: payload(i, 1000),
            record_count: 1,
        }])
        .unwrap()
        .await
        .unwrap();
    }
    let before = audit.reads.load(Ordering::Relaxed);
    let frames = log.read(30, 100, usize::MAX).await.unwrap();
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| f.payload == payload(f.index, 1000)));
    assert_eq!(
        audit.reads.load(Ordering::Relaxed),
        before,
        "read from disk"
    );
    let frames = log.read(20, 100, usize::MAX).await.unwrap();
    assert_eq!(frames.len(), 20);
    assert!(frames.iter().all(|f| f.payload == payload(f.index, 1000)));
    assert!(audit.reads.load(Ordering::Relaxed) > before);
    // Truncate into the cached range, append other bytes: the new ones are read.
    log.truncate_after(34).unwrap().await.unwrap();
    for i in 35..38 {
        log.append(vec![FrameIn {
            payload: payload(i + 1000, 1000),
            record_count: 1,
        }])
        .unwrap()
        .await
        .unwrap();
    }
    let frames = log.read(30, 100, usize::MAX).await.unwrap();
    assert_eq!(frames.len(), 8);
    for f in &frames {
        let tag = if f.index >= 35 {
            f.index + 1000
        } else {
            f.index
        };
        assert_eq!(f.payload, payload(tag, 1000), "frame {}", f.index);
    }
    log.purge_before(36).unwrap().await.unwrap();
    assert!(log.read(35, 1, usize::MAX).await.is_err());
    assert_eq!(log.read(36, 100, usize::MAX).await.unwrap().len(), 2);
    log.close().await.unwrap();
}

/// On real files (std and, where available, io_uring): segment files get a direct write
/// descriptor where the filesystem supports it, and a log written through it reads back
/// (also after a reopen, i.e. from the files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_files_round_trip_through_direct_writes() {
    for choice in [BackendChoice::Std, BackendChoice::Uring] {
        let Ok(disk) = open_disk(choice) else {
            continue;
        };
        let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let f = disk.open_direct(&t.path().join("f"), true).await.unwrap();
        let mut buf = AlignedBuf::new();
        buf.extend_from_slice(b"direct");
        buf.pad_zeros_to(2 * BLOCK_BYTES);
        let buf = f.write_blocks_at_and_sync(buf, 4096).await.unwrap();
        assert_eq!(buf.len(), 2 * BLOCK_BYTES);
        let (n, back) = f.read_at(vec![0u8; 8], 4096).await.unwrap();
        assert_eq!((n, &back[..6]), (8, &b"direct"[..]));
        eprintln!("{choice}: direct = {}", f.is_direct());
        let dir = t.path().join("log");
        let lens: Vec<usize> = (0..300).map(|i| (i * 37) % 5000).collect();
        let log = Log::open(disk.clone(), &dir, config()).await.unwrap();
        for (i, len) in lens.iter().enumerate() {
            log.append(vec![FrameIn {
                payload: payload(i as u64, *len),
                record_count: 1,
            }])
            .unwrap()
            .await
            .unwrap();
        }
        log.close().await.unwrap();
        let log = Log::open(disk.clone(), &dir, config()).await.unwrap();
        let frames = log.read(0, usize::MAX, usize::MAX).await.unwrap();
        assert_eq!(frames.len(), lens.len());
        for f in &frames {
            assert_eq!(f.payload, payload(f.index, lens[f.index as usize]));
        }
        log.close().await.unwrap();
    }
}
