//! Model-based property test of `Log` against a simple in-memory model, on every backend.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use taskbroker_storage::io::{open_disk, BackendChoice, Disk, SimDisk};
use taskbroker_storage::log::{FrameIn, Log, LogConfig, Position};
use taskbroker_storage::StorageError;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(usize, u32)>),
    Read(u64, usize, usize),
    Locate(u64),
    Truncate(u64),
    Purge(u64),
    Reset(u64, u64),
    PutMeta(Vec<u8>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec((0usize..600, 0u32..4), 1..6).prop_map(Op::Append),
        4 => (any::<u64>(), 1usize..8, 0usize..2000).prop_map(|(a, b, c)| Op::Read(a, b, c)),
        2 => any::<u64>().prop_map(Op::Locate),
        1 => any::<u64>().prop_map(Op::Truncate),
        1 => any::<u64>().prop_map(Op::Purge),
        1 => (0u64..5, 0u64..20).prop_map(|(a, b)| Op::Reset(a, b)),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::PutMeta),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct MFrame {
    index: u64,
    offset: u64,
    count: u32,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Model {
    first: u64,
    first_offset: u64,
    frames: Vec<MFrame>,
    next_index: u64,
    next_offset: u64,
    meta: Option<Vec<u8>>,
}

impl Model {
    fn live(&self) -> impl Iterator<Item = &MFrame> {
        self.frames.iter().filter(move |f| f.index >= self.first)
    }
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .collect()
}

fn config(preallocate: bool) -> LogConfig {
    LogConfig {
        // Growing segments: 4 KiB, 8 KiB, then 16 KiB, so truncate, purge, reset and reopen
        // meet segments (and recycled files) of different sizes.
        segment_bytes_min: 4096,
        segment_bytes_max: 16384,
        index_interval_bytes: 256,
        group_commit_bytes_max: 8192,
        frame_payload_bytes_max: 1 << 20,
        preallocate,
        // Recycling on whenever pre-zeroing is: purges in the model feed later segments.
        recycle_segments_max: 2,
        // A small read cache: reads mix cached frames and frames read from the files.
        read_cache_bytes: 3000,
    }
}

async fn run(disk: Arc<dyn Disk>, dir: PathBuf, ops: Vec<Op>, preallocate: bool) {
    let mut log = Log::open(disk.clone(), &dir, config(preallocate))
        .await
        .unwrap();
    let mut m = Model::default();
    let mut tickets = Vec::new();
    let mut seed = 0u64;
    for op in ops {
        match op {
            Op::Append(spec) => {
                let frames: Vec<FrameIn> = spec
                    .iter()
                    .map(|(len, count)| {
                        seed += 1;
                        FrameIn {
                            payload: Bytes::from(payload(seed, *len)),
                            record_count: *count,
                        }
                    })
                    .collect();
                let t = log.append(frames.clone()).unwrap();
                assert_eq!(
                    *t.value(),
                    Position {
                        index: m.next_index,
                        offset: m.next_offset
                    }
                );
                for f in frames {
                    m.frames.push(MFrame {
                        index: m.next_index,
                        offset: m.next_offset,
                        count: f.record_count,
                        payload: f.payload.to_vec(),
                    });
                    m.next_index += 1;
                    m.next_offset += u64::from(f.record_count);
                }
                tickets.push(async move { t.await.map(|_| ()) }.boxed_local());
            }
            Op::Read(from, max_frames, max_bytes) => {
                let span = m.next_index - m.first + 2;
                let from = (m.first + from % span).saturating_sub(1);
                let got = log.read(from, max_frames, max_bytes).await;
                if from < m.first {
                    assert!(
                        matches!(got, Err(StorageError::IndexPurged { .. })),
                        "{got:?}"
                    );
                } else if from >= m.next_index {
                    assert!(
                        matches!(got, Err(StorageError::OutOfRange { .. })),
                        "{got:?}"
                    );
                } else {
                    let got = got.unwrap();
                    let want: Vec<&MFrame> = m
                        .live()
                        .filter(|f| f.index >= from)
                        .take(max_frames)
                        .collect();
                    assert!(!got.is_empty() && got.len() <= want.len());
                    let mut bytes = 0;
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            (g.index, g.base_offset, g.record_count),
                            (w.index, w.offset, w.count)
                        );
                        assert_eq!(&g.payload[..], &w.payload[..], "payload of {}", w.index);
                        assert_eq!(g.payload.as_ptr() as usize % 16, 0, "alignment");
                        if i > 0 {
                            assert!(bytes + g.payload.len() <= max_bytes);
                        }
                        bytes += g.payload.len();
                    }
                    if got.len() < want.len() {
                        assert!(
                            bytes + want[got.len()].payload.len() > max_bytes,
                            "stopped early"
                        );
                    }
                }
            }
            Op::Locate(o) => {
                let o = o % (m.next_offset + 2);
                let got = log.locate_offset(o).await;
                if o >= m.next_offset {
                    assert_eq!(got.unwrap(), None);
                } else if o < m.first_offset {
                    assert!(
                        matches!(got, Err(StorageError::OffsetPurged { .. })),
                        "{got:?}"
                    );
                } else {
                    let want = m
                        .live()
                        .find(|f| f.offset <= o && o < f.offset + u64::from(f.count))
                        .map(|f| Position {
                            index: f.index,
                            offset: f.offset,
                        });
                    assert_eq!(got.unwrap(), want, "locate {o}");
                }
            }
            Op::Truncate(k) => {
                let span = m.next_index - m.first + 1;
                let from = m.first + k % span;
                let t = log.truncate_from(from).unwrap();
                m.frames.retain(|f| f.index < from);
                if from < m.next_index {
                    m.next_offset = m
                        .frames
                        .last()
                        .map_or(m.first_offset, |f| f.offset + u64::from(f.count));
                    if m.frames.iter().all(|f| f.index < m.first) {
                        m.next_offset = m.first_offset;
                    }
                    m.next_index = from;
                }
                tickets.push(t.boxed_local());
            }
            Op::Purge(k) => {
                let span = m.next_index - m.first + 1;
                let to = m.first + k % span;
                let t = log.purge_before(to).unwrap();
                if to > m.first {
                    m.first_offset = m
                        .frames
                        .iter()
                        .find(|f| f.index == to)
                        .map_or(m.next_offset, |f| f.offset);
                    m.first = to;
                }
                tickets.push(t.boxed_local());
            }
            Op::Reset(di, doff) => {
                let next = Position {
                    index: m.next_index + di,
                    offset: m.next_offset + doff,
                };
                let t = log.reset(next).unwrap();
                m.frames.clear();
                m.first = next.index;
                m.first_offset = next.offset;
                m.next_index = next.index;
                m.next_offset = next.offset;
                tickets.push(t.boxed_local());
            }
            Op::PutMeta(b) => {
                tickets.push(log.put_meta(b.clone()).unwrap().boxed_local());
                m.meta = Some(b);
            }
            Op::Reopen => {
                for t in tickets.drain(..) {
                    t.await.unwrap();
                }
                assert_eq!(log.durable_index(), m.next_index.checked_sub(1));
                log.close().await.unwrap();
                log = Log::open(disk.clone(), &dir, config(preallocate))
                    .await
                    .unwrap();
            }
        }
        assert_eq!(log.first_index(), m.first);
        assert_eq!(log.next_index(), m.next_index);
        assert_eq!(log.next_offset(), m.next_offset);
        assert_eq!(
            log.first_position(),
            Position {
                index: m.first,
                offset: m.first_offset
            }
        );
        assert_eq!(log.meta().map(|b| b.to_vec()), m.meta);
    }
    for t in tickets.drain(..) {
        t.await.unwrap();
    }
    log.close().await.unwrap();
}

use futures::FutureExt;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_sim(ops in prop::collection::vec(op(), 1..60), seed in any::<u64>(), pre in any::<bool>()) {
        rt().block_on(run(Arc::new(SimDisk::new(seed)), PathBuf::from("/data/log"), ops, pre));
    }

    #[test]
    fn model_std(ops in prop::collection::vec(op(), 1..40), pre in any::<bool>()) {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let disk = open_disk(BackendChoice::Std).unwrap();
        rt().block_on(run(disk, tmp.path().join("log"), ops, pre));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn model_uring(ops in prop::collection::vec(op(), 1..40), pre in any::<bool>()) {
        let Ok(disk) = open_disk(BackendChoice::Uring) else {
            eprintln!("note: io_uring unavailable, skipping model_uring");
            return Ok(());
        };
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        rt().block_on(run(disk, tmp.path().join("log"), ops, pre));
    }
}
