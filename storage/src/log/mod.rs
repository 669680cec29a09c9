//! The segmented, group-committed log: the public [`Log`] API.
//!
//! # Durability contract
//!
//! * [`Log::append`] assigns indexes and offsets at call time; the frames are **visible** to
//!   [`Log::read`] as soon as it returns and **durable** when its [`Ticket`] resolves `Ok`
//!   (after the `fdatasync` of the group that carried them).
//! * [`Log::truncate_after`], [`Log::purge_before`], [`Log::reset`] and [`Log::put_meta`]
//!   change what readers see at call time and are durable when their ticket resolves.
//! * All operations are applied to disk in call order through one FIFO queue: a ticket that
//!   resolves implies every earlier operation is durable too.
//! * A failed write or `fdatasync` poisons the log: every later call returns
//!   [`StorageError::Poisoned`]; nothing is retried (the page cache may have dropped the data).
//!
//! *Invariants:* offsets are dense — a frame's base offset is the previous frame's base offset
//! plus its record count; `first_index <= next_index`; readable frames are exactly
//! `[first_index, next_index)`.
//!
//! *Design notes:* frames not yet written live in an in-memory `tail`, so readers never wait
//! for the disk; the writer task (`writer`) owns all writes. Readers look at the tail first,
//! then at segment files through the in-memory segment table.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::io::Disk;
use crate::meta::META_RECORD_BYTES_MAX;
use crate::StorageError;

pub mod frame;
pub mod index;
pub mod reader;
pub mod recovery;
pub mod segment;
mod writer;

use segment::Segment;
use writer::{Op, PendingFrame, Writer};

/// Capacity of a log's write queue (operations, not bytes): bounds memory held by callers
/// that append faster than the disk syncs. `append` fails with `QueueFull` beyond it.
pub const QUEUE_OPS_MAX: usize = 16 * 1024;
/// Reads racing a truncation are retried this many times before reporting corruption.
const READ_RETRIES_MAX: usize = 3;

/// Tuning of a [`Log`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the next frame would exceed this: bounds purge granularity.
    pub segment_bytes_max: u64,
    /// Size of a new log's first segment; each next segment doubles the previous one, up to
    /// `segment_bytes_max`: a node hosts thousands of logs, and a new or idle log should cost
    /// (and pre-zero) this much disk, not `segment_bytes_max`. Clamped to `segment_bytes_max`.
    pub segment_bytes_min: u64,
    /// A sparse index entry every this many bytes: bounds the scan to find a frame.
    pub index_interval_bytes: u32,
    /// Bytes gathered into one write + fdatasync: bounds group-commit latency and memory.
    pub group_commit_bytes_max: usize,
    /// Largest frame payload accepted and decoded: bounds memory used by a corrupt length.
    pub frame_payload_bytes_max: u32,
    /// Pre-zero new segments to their full size (write zeros + fdatasync ahead of time,
    /// then rename into place), so appends overwrite written blocks and each fdatasync flushes
    /// data only. Costs one extra write of every segment byte, mostly in the background, and
    /// up to one spare segment (the next segment's size) of disk space per log. Falls back to `fallocate` where the disk
    /// cannot rename. Also enables segment recycling (`recycle_segments_max`).
    pub preallocate: bool,
    /// Purged segment files kept (renamed to spares) and reused as later segments instead of
    /// zeroing new ones: in the steady state every byte is written once, over written blocks.
    /// Bounds the disk space a log keeps after a purge (this many × `segment_bytes_max`).
    /// Only files at least as large as the next segment are kept (see `segment_bytes_min`).
    /// 0 disables recycling. Needs `preallocate` and a disk that can rename.
    pub recycle_segments_max: usize,
    /// Payload bytes of the most recently written frames kept in memory for readers. Appends
    /// are written with `O_DIRECT`, so just-written frames are not in the page cache; Raft followers and
    /// consumers mostly read the newest frames, which this serves without disk reads. Costs
    /// up to this much memory per log (thousands of logs: keep it small); 0 disables it.
    pub read_cache_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 64 * 1024 * 1024,
            segment_bytes_min: 1024 * 1024,
            index_interval_bytes: 4096,
            group_commit_bytes_max: 4 * 1024 * 1024,
            frame_payload_bytes_max: 32 * 1024 * 1024,
            preallocate: true,
            recycle_segments_max: 4,
            read_cache_bytes: 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Size of a new log's first segment (`segment_bytes_min`, at most `segment_bytes_max`).
    pub(crate) fn first_segment_bytes(&self) -> u64 {
        self.segment_bytes_min.min(self.segment_bytes_max)
    }

    /// Planned size of the segment after one of `capacity` bytes: twice the largest
    /// `first_segment_bytes() * 2^k` not above `capacity` (so a segment enlarged for one big
    /// frame, or a larger recycled file, does not knock the sizes off that grid), capped at
    /// `segment_bytes_max`.
    pub(crate) fn segment_bytes_after(&self, capacity: u64) -> u64 {
        let mut size = self.first_segment_bytes();
        while size.saturating_mul(2) <= capacity && size < self.segment_bytes_max {
            size = size.saturating_mul(2);
        }
        size.saturating_mul(2).min(self.segment_bytes_max)
    }

    /// The smallest planned size (`first_segment_bytes() * 2^k`, capped at
    /// `segment_bytes_max`) holding `bytes`, or `bytes` itself if none does.
    pub(crate) fn segment_bytes_holding(&self, bytes: u64) -> u64 {
        let mut size = self.first_segment_bytes();
        while size < bytes && size < self.segment_bytes_max {
            size = size.saturating_mul(2).min(self.segment_bytes_max);
        }
        size.max(bytes)
    }

    fn validate(&self) -> Result<(), StorageError> {
        let bad = |reason: &str| {
            Err(StorageError::InvalidConfig {
                reason: reason.into(),
            })
        };
        if self.segment_bytes_max < 4096 {
            return bad("segment_bytes_max must be at least 4096");
        }
        if self.segment_bytes_min < 4096 {
            return bad("segment_bytes_min must be at least 4096");
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive");
        }
        if self.group_commit_bytes_max == 0 {
            return bad("group_commit_bytes_max must be positive");
        }
        if u64::from(self.frame_payload_bytes_max) > (1 << 31) {
            return bad("frame_payload_bytes_max must be at most 2 GiB");
        }
        Ok(())
    }
}

/// A frame to append.
#[derive(Clone, Debug)]
pub struct FrameIn {
    /// Opaque payload (stored unchanged).
    pub payload: Bytes,
    /// Records in the payload: how many offsets the frame takes (0 for control frames).
    pub record_count: u32,
}

/// A frame read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Log index.
    pub index: u64,
    /// Offset of the frame's first record.
    pub base_offset: u64,
    /// Records in the payload.
    pub record_count: u32,
    /// The payload; `payload.as_ptr()` is 16-byte aligned.
    pub payload: Bytes,
}

/// An index and the matching base offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Log index.
    pub index: u64,
    /// Offset.
    pub offset: u64,
}

/// A snapshot of a log's size and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes in segment files plus payload bytes not yet written.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// First readable index.
    pub first_index: u64,
    /// Next index to be assigned.
    pub next_index: u64,
    /// Next offset to be assigned.
    pub next_offset: u64,
}

/// Completion of a queued operation: `value()` is known at once, `.await` waits for durability.
///
/// Dropping a ticket does not cancel the operation.
#[derive(Debug)]
#[must_use = "await the ticket to know the operation is durable"]
pub struct Ticket<T> {
    value: Option<T>,
    rx: Option<oneshot::Receiver<Result<(), StorageError>>>,
}

impl<T> Ticket<T> {
    fn new(value: T, rx: oneshot::Receiver<Result<(), StorageError>>) -> Self {
        Ticket {
            value: Some(value),
            rx: Some(rx),
        }
    }

    fn ready(value: T) -> Self {
        Ticket {
            value: Some(value),
            rx: None,
        }
    }

    /// The value assigned at call time (e.g. the first appended [`Position`]).
    ///
    /// # Panics
    /// If the ticket has already been polled to completion (it is consumed by `.await`).
    pub fn value(&self) -> &T {
        self.value
            .as_ref()
            .expect("Ticket::value called after completion")
    }
}

impl<T: Unpin> Future for Ticket<T> {
    type Output = Result<T, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let res = match this.rx.as_mut() {
            None => Ok(()),
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(_)) => Err(StorageError::Closed),
            },
        };
        this.rx = None;
        Poll::Ready(match (res, this.value.take()) {
            (Ok(()), Some(v)) => Ok(v),
            (Ok(()), None) => Err(StorageError::InvalidArgument {
                reason: "ticket polled after completion".into(),
            }),
            (Err(e), _) => Err(e),
        })
    }
}

#[derive(Debug)]
struct TailFrame {
    id: u64,
    frame: Frame,
}

/// State shared by the API and the writer task.
#[derive(Debug)]
pub(crate) struct State {
    first_index: u64,
    first_offset: u64,
    next_index: u64,
    next_offset: u64,
    pub(crate) segments: BTreeMap<u64, Segment>,
    tail: VecDeque<TailFrame>,
    tail_bytes: u64,
    /// Frames already written (and in the segment table), newest last, right before `tail`'s
    /// first frame: a read cache (`LogConfig::read_cache_bytes`).
    recent: VecDeque<Frame>,
    recent_bytes: u64,
    next_id: u64,
    meta: Option<Bytes>,
    pub(crate) durable_index: Option<u64>,
    /// Bumped by every truncate and reset call.
    pub(crate) epoch: u64,
    pub(crate) poisoned: Option<(&'static str, String)>,
    closed: bool,
}

impl State {
    pub(crate) fn poison_error(&self) -> Option<StorageError> {
        self.poisoned
            .as_ref()
            .map(|(op, reason)| StorageError::Poisoned {
                op,
                reason: reason.clone(),
            })
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        if let Some(e) = self.poison_error() {
            return Err(e);
        }
        if self.closed {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Moves written frames, up to operation id `last_id`, from the tail to the read cache,
    /// which then keeps at most `cache_bytes` of payload (the newest frames).
    pub(crate) fn pop_tail(&mut self, last_id: u64, cache_bytes: usize) {
        while self.tail.front().is_some_and(|t| t.id <= last_id) {
            if let Some(t) = self.tail.pop_front() {
                let len = t.frame.payload.len() as u64;
                self.tail_bytes -= len;
                self.recent_bytes += len;
                self.recent.push_back(t.frame);
            }
        }
        self.trim_recent(cache_bytes as u64, 0);
    }

    /// Drops cached frames from the front while over `bytes` or below index `first`.
    fn trim_recent(&mut self, bytes: u64, first: u64) {
        while let Some(f) = self.recent.front() {
            if self.recent_bytes <= bytes && f.index >= first {
                break;
            }
            self.recent_bytes -= f.payload.len() as u64;
            self.recent.pop_front();
        }
    }

    fn offset_of(&self, index: u64) -> Option<u64> {
        if index == self.next_index {
            return Some(self.next_offset);
        }
        if let Some(front) = self.tail.front() {
            if index >= front.frame.index {
                let i = usize::try_from(index - front.frame.index).ok()?;
                return self.tail.get(i).map(|t| t.frame.base_offset);
            }
        }
        self.segments
            .range(..=index)
            .next_back()?
            .1
            .offset_of(index)
    }

    fn position(&self) -> Position {
        Position {
            index: self.next_index,
            offset: self.next_offset,
        }
    }
}

struct Inner {
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<Op>,
    config: LogConfig,
    dir: PathBuf,
}

/// A segmented, checksummed, group-committed log of opaque frames.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use taskbroker_storage::io::SimDisk;
/// use taskbroker_storage::log::{FrameIn, Log, LogConfig};
/// let log = Log::open(Arc::new(SimDisk::new(1)), "/log", LogConfig::default()).await.unwrap();
/// let ticket = log
///     .append(vec![FrameIn { payload: "batch".into(), record_count: 3 }])
///     .unwrap();
/// assert_eq!(ticket.value().offset, 0); // assigned at once
/// ticket.await.unwrap(); // durable
/// let frames = log.read(0, 10, 1 << 20).await.unwrap();
/// assert_eq!((frames[0].base_offset, log.next_offset()), (0, 3));
/// log.close().await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (creating if missing) the log in `dir`, runs recovery and starts its writer task.
    ///
    /// Must be called inside a tokio runtime.
    pub async fn open(
        disk: Arc<dyn Disk>,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<Log, StorageError> {
        config.validate()?;
        let dir = dir.into();
        let rec = recovery::recover(disk.as_ref(), &dir, &config).await?;
        tracing::debug!(
            dir = %dir.display(),
            first_index = rec.first_index,
            next_index = rec.next_index,
            segments = rec.segments.len(),
            "log recovered"
        );
        let durable_index = rec.next_index.checked_sub(1);
        let state = Arc::new(Mutex::new(State {
            first_index: rec.first_index,
            first_offset: rec.first_offset,
            next_index: rec.next_index,
            next_offset: rec.next_offset,
            segments: rec.segments,
            tail: VecDeque::new(),
            tail_bytes: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            next_id: 0,
            meta: rec.meta.map(Bytes::from),
            durable_index,
            epoch: 0,
            poisoned: None,
            closed: false,
        }));
        let (tx, rx) = mpsc::channel(QUEUE_OPS_MAX);
        let disk_for_writer = disk.clone();
        let writer = Writer::new(
            disk,
            dir.clone(),
            config.clone(),
            state.clone(),
            rx,
            rec.meta_file,
            rec.anchor_file,
            durable_index,
        );
        disk_for_writer.spawn(Box::pin(writer.run()));
        Ok(Log {
            inner: Arc::new(Inner {
                state,
                tx,
                config,
                dir,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only mutated in short critical sections that do not panic.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Queues `make(reply)` while holding the state lock, after `mutate` succeeded.
    fn enqueue<T>(
        &self,
        st: &mut State,
        value: T,
        op: impl FnOnce(oneshot::Sender<Result<(), StorageError>>) -> Op,
        mutate: impl FnOnce(&mut State),
    ) -> Result<Ticket<T>, StorageError> {
        let permit = self.inner.tx.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => StorageError::QueueFull {
                ops_max: QUEUE_OPS_MAX,
            },
            mpsc::error::TrySendError::Closed(()) => StorageError::Closed,
        })?;
        mutate(st);
        let (reply, rx) = oneshot::channel();
        permit.send(op(reply));
        Ok(Ticket::new(value, rx))
    }

    /// Appends frames; returns the first frame's [`Position`] at once (via
    /// [`Ticket::value`]). The frames are readable immediately and durable when the ticket
    /// resolves. Fails with `FrameTooLarge`, `Poisoned`, `Closed` or `QueueFull`.
    pub fn append(&self, frames: Vec<FrameIn>) -> Result<Ticket<Position>, StorageError> {
        let max = self.inner.config.frame_payload_bytes_max;
        if let Some(f) = frames.iter().find(|f| f.payload.len() > max as usize) {
            return Err(StorageError::FrameTooLarge {
                len: f.payload.len(),
                max,
            });
        }
        // The payload CRC pass runs here, on the caller's thread and outside the lock; the
        // writer only combines it with the header's CRC.
        let crcs: Vec<u32> = frames
            .iter()
            .map(|f| frame::payload_crc(&f.payload))
            .collect();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_usable()?;
        let start = st.position();
        if frames.is_empty() {
            return Ok(Ticket::ready(start));
        }
        let mut pending = Vec::with_capacity(frames.len());
        let (mut index, mut offset) = (start.index, start.offset);
        let mut bytes = 0usize;
        let mut tail = Vec::with_capacity(frames.len());
        let mut id = st.next_id;
        for (f, crc) in frames.into_iter().zip(crcs) {
            let payload = reader::aligned(f.payload);
            bytes += frame::frame_len(payload.len());
            pending.push(PendingFrame {
                index,
                record_count: f.record_count,
                payload: payload.clone(),
                crc,
            });
            tail.push(TailFrame {
                id,
                frame: Frame {
                    index,
                    base_offset: offset,
                    record_count: f.record_count,
                    payload,
                },
            });
            id += 1;
            index += 1;
            offset += u64::from(f.record_count);
        }
        let last_id = id - 1;
        self.enqueue(
            st,
            start,
            |reply| Op::Append {
                frames: pending,
                base_offset: start.offset,
                last_id,
                bytes,
                reply,
            },
            |st| {
                for t in tail {
                    st.tail_bytes += t.frame.payload.len() as u64;
                    st.tail.push_back(t);
                }
                st.next_id = id;
                st.next_index = index;
                st.next_offset = offset;
            },
        )
    }

    /// Reads up to `max_frames` frames (and about `max_bytes` of payload) from `from_index`.
    ///
    /// Returns at least one frame if `from_index` is readable, even one larger than
    /// `max_bytes`. Errors: `IndexPurged` below [`Log::first_index`], `OutOfRange` at or past
    /// [`Log::next_index`], `Corrupt` if a frame fails its checksum.
    pub async fn read(
        &self,
        from_index: u64,
        max_frames: usize,
        max_bytes: usize,
    ) -> Result<Vec<Frame>, StorageError> {
        let mut attempt = 0;
        loop {
            let plan = self.plan_read(from_index, max_frames.max(1))?;
            match self.execute_read(&plan, max_bytes).await {
                Ok(frames) => return Ok(frames),
                Err(e) => {
                    attempt += 1;
                    let (epoch, first_index) = {
                        let st = self.lock();
                        (st.epoch, st.first_index)
                    };
                    if from_index < first_index {
                        // A purge raced the read (a purged file may have been recycled).
                        return Err(StorageError::IndexPurged {
                            index: from_index,
                            first_index,
                        });
                    }
                    let raced = epoch != plan.epoch;
                    if !raced || attempt >= READ_RETRIES_MAX {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn plan_read(&self, from: u64, max_frames: usize) -> Result<ReadPlan, StorageError> {
        let st = self.lock();
        if let Some(e) = st.poison_error() {
            return Err(e);
        }
        if from < st.first_index {
            return Err(StorageError::IndexPurged {
                index: from,
                first_index: st.first_index,
            });
        }
        if from >= st.next_index {
            return Err(StorageError::OutOfRange {
                index: from,
                next_index: st.next_index,
            });
        }
        let end = st.next_index.min(from.saturating_add(max_frames as u64));
        let tail_start = st.tail.front().map_or(st.next_index, |t| t.frame.index);
        // Frames from `mem_start` on are in memory: the read cache, then the unwritten tail.
        let mem_start = st.recent.front().map_or(tail_start, |f| f.index);
        let file_end = end.min(mem_start);
        let mut segs = Vec::new();
        if from < file_end {
            let first_base = st
                .segments
                .range(..=from)
                .next_back()
                .map_or(from, |(b, _)| *b);
            for seg in st.segments.range(first_base..file_end).map(|(_, s)| s) {
                let start = from.max(seg.base_index);
                let stop = file_end.min(seg.next_index());
                if start >= stop {
                    continue;
                }
                let lo = (start - seg.base_index) as usize;
                let hi = (stop - seg.base_index) as usize;
                segs.push(SegRead {
                    salt: seg.salt,
                    file: seg.file.clone(),
                    path: seg.path.clone(),
                    scan: seg.scan_start(start),
                    start,
                    stop,
                    end_pos: seg.end_pos,
                    offsets: seg.offsets[lo..hi].to_vec(),
                });
            }
        }
        let tail = if end > mem_start {
            let lo = (from.max(mem_start) - mem_start) as usize;
            let hi = (end - mem_start) as usize;
            st.recent
                .iter()
                .chain(st.tail.iter().map(|t| &t.frame))
                .skip(lo)
                .take(hi - lo)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        Ok(ReadPlan {
            segs,
            tail,
            epoch: st.epoch,
            from,
            payload_max: self.inner.config.frame_payload_bytes_max,
        })
    }

    async fn execute_read(
        &self,
        plan: &ReadPlan,
        max_bytes: usize,
    ) -> Result<Vec<Frame>, StorageError> {
        let mut out: Vec<Frame> = Vec::new();
        let mut bytes = 0usize;
        let mut expect = plan.from;
        let fits =
            |out: &Vec<Frame>, bytes: usize, len: usize| out.is_empty() || bytes + len <= max_bytes;
        for s in &plan.segs {
            let (mut idx, pos) = s.scan;
            let mut cur = reader::Cursor::new(
                s.file.as_ref(),
                &s.path,
                pos,
                s.end_pos,
                s.salt,
                plan.payload_max,
            );
            while idx < s.stop {
                let Some(f) = cur.next().await? else {
                    return Err(StorageError::corrupt(
                        &s.path,
                        cur.pos,
                        format!("frame {idx} missing"),
                    ));
                };
                if f.header.index != idx {
                    return Err(StorageError::corrupt(
                        &s.path,
                        f.pos,
                        format!("expected frame index {idx}, found {}", f.header.index),
                    ));
                }
                if idx >= s.start {
                    if !fits(&out, bytes, f.payload.len()) {
                        return Ok(out);
                    }
                    bytes += f.payload.len();
                    out.push(Frame {
                        index: idx,
                        base_offset: s.offsets[(idx - s.start) as usize],
                        record_count: f.header.record_count,
                        payload: f.payload,
                    });
                    expect = idx + 1;
                }
                idx += 1;
            }
        }
        for f in &plan.tail {
            if f.index != expect || !fits(&out, bytes, f.payload.len()) {
                break;
            }
            bytes += f.payload.len();
            out.push(f.clone());
            expect += 1;
        }
        Ok(out)
    }

    /// The frame whose `[base_offset, base_offset + record_count)` contains `offset`
    /// (frames with no records never match); `None` at or past [`Log::next_offset`].
    /// Fails with `OffsetPurged` below the first readable frame's base offset.
    pub async fn locate_offset(&self, offset: u64) -> Result<Option<Position>, StorageError> {
        let st = self.lock();
        if let Some(e) = st.poison_error() {
            return Err(e);
        }
        if offset >= st.next_offset {
            return Ok(None);
        }
        if offset < st.first_offset {
            return Err(StorageError::OffsetPurged {
                offset,
                first_offset: st.first_offset,
            });
        }
        if let Some(front) = st.tail.front() {
            if offset >= front.frame.base_offset {
                let j = st.tail.partition_point(|t| t.frame.base_offset <= offset);
                if let Some(t) = j.checked_sub(1).and_then(|i| st.tail.get(i)) {
                    if offset < t.frame.base_offset + u64::from(t.frame.record_count) {
                        return Ok(Some(Position {
                            index: t.frame.index,
                            offset: t.frame.base_offset,
                        }));
                    }
                }
            }
        }
        let tail_start = st.tail.front().map_or(st.next_index, |t| t.frame.index);
        for seg in st.segments.values() {
            if seg.base_offset > offset {
                break;
            }
            if let Some((index, base)) = seg.locate(offset) {
                if index >= st.first_index && index < tail_start {
                    return Ok(Some(Position {
                        index,
                        offset: base,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Drops frames after `index` (a Raft log conflict). Visible at once, durable when the
    /// ticket resolves; the segment file is physically truncated and later segments deleted,
    /// so recovery can never resurrect the dropped frames. Fails with `IndexPurged` if
    /// `index + 1 < first_index`.
    pub fn truncate_after(&self, index: u64) -> Result<Ticket<()>, StorageError> {
        match index.checked_add(1) {
            Some(from) => self.truncate_from(from),
            None => Ok(Ticket::ready(())),
        }
    }

    /// Drops frames at and after `index` (`truncate_after(index - 1)`, also for index 0).
    pub fn truncate_from(&self, index: u64) -> Result<Ticket<()>, StorageError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_usable()?;
        if index < st.first_index {
            return Err(StorageError::IndexPurged {
                index,
                first_index: st.first_index,
            });
        }
        if index >= st.next_index {
            return Ok(Ticket::ready(()));
        }
        let offset = st
            .offset_of(index)
            .ok_or_else(|| StorageError::InvalidArgument {
                reason: format!("no offset known for index {index}"),
            })?;
        let epoch = st.epoch + 1;
        self.enqueue(
            st,
            (),
            |reply| Op::Truncate {
                from: index,
                from_offset: offset,
                epoch,
                reply,
            },
            |st| {
                while st.tail.back().is_some_and(|t| t.frame.index >= index) {
                    if let Some(t) = st.tail.pop_back() {
                        st.tail_bytes -= t.frame.payload.len() as u64;
                    }
                }
                while st.recent.back().is_some_and(|f| f.index >= index) {
                    if let Some(f) = st.recent.pop_back() {
                        st.recent_bytes -= f.payload.len() as u64;
                    }
                }
                st.next_index = index;
                st.next_offset = offset;
                st.durable_index = st.durable_index.min(index.checked_sub(1));
                st.epoch = epoch;
            },
        )
    }

    /// Makes frames below `index` unreadable and deletes whole segments below it; the new
    /// first index is persisted (the `anchor` file) so a reopen reports it. A no-op if
    /// `index <= first_index`; `OutOfRange` if `index > next_index`.
    pub fn purge_before(&self, index: u64) -> Result<Ticket<()>, StorageError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_usable()?;
        if index <= st.first_index {
            return Ok(Ticket::ready(()));
        }
        if index > st.next_index {
            return Err(StorageError::OutOfRange {
                index,
                next_index: st.next_index,
            });
        }
        let offset = st
            .offset_of(index)
            .ok_or_else(|| StorageError::InvalidArgument {
                reason: format!("no offset known for index {index}"),
            })?;
        self.enqueue(
            st,
            (),
            |reply| Op::Purge {
                index,
                offset,
                reply,
            },
            |st| {
                st.first_index = index;
                st.first_offset = offset;
                st.trim_recent(u64::MAX, index);
            },
        )
    }

    /// Drops every frame (a snapshot was installed past our end): the next append gets
    /// `next`. Visible at once, durable (survives reopen) when the ticket resolves.
    pub fn reset(&self, next: Position) -> Result<Ticket<()>, StorageError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_usable()?;
        let epoch = st.epoch + 1;
        self.enqueue(
            st,
            (),
            |reply| Op::Reset { next, epoch, reply },
            |st| {
                st.tail.clear();
                st.tail_bytes = 0;
                st.recent.clear();
                st.recent_bytes = 0;
                st.first_index = next.index;
                st.first_offset = next.offset;
                st.next_index = next.index;
                st.next_offset = next.offset;
                st.durable_index = None;
                st.epoch = epoch;
            },
        )
    }

    /// Stores a small opaque record (at most [`META_RECORD_BYTES_MAX`] bytes), ordered with
    /// appends: durable when the ticket resolves, never before earlier appends.
    pub fn put_meta(&self, bytes: Vec<u8>) -> Result<Ticket<()>, StorageError> {
        if bytes.len() > META_RECORD_BYTES_MAX {
            return Err(StorageError::MetaTooLarge {
                len: bytes.len(),
                max: META_RECORD_BYTES_MAX,
            });
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_usable()?;
        let value = Bytes::from(bytes.clone());
        self.enqueue(
            st,
            (),
            |reply| Op::PutMeta { data: bytes, reply },
            |st| st.meta = Some(value),
        )
    }

    /// The latest record given to [`Log::put_meta`] (or recovered on open).
    pub fn meta(&self) -> Option<Bytes> {
        self.lock().meta.clone()
    }

    /// First readable index.
    pub fn first_index(&self) -> u64 {
        self.lock().first_index
    }

    /// Next index to be assigned.
    pub fn next_index(&self) -> u64 {
        self.lock().next_index
    }

    /// Next offset to be assigned.
    pub fn next_offset(&self) -> u64 {
        self.lock().next_offset
    }

    /// Index and base offset of the first readable frame (the next position if empty).
    pub fn first_position(&self) -> Position {
        let st = self.lock();
        Position {
            index: st.first_index,
            offset: st.first_offset,
        }
    }

    /// Highest index known to be fdatasync'd: every frame at or below it is durable
    /// (`None` before the first sync, and between a reset and its ticket resolving).
    pub fn durable_index(&self) -> Option<u64> {
        self.lock().durable_index
    }

    /// Size and bounds.
    pub fn stats(&self) -> LogStats {
        let st = self.lock();
        LogStats {
            bytes: st.segments.values().map(|s| s.end_pos).sum::<u64>() + st.tail_bytes,
            segments: st.segments.len(),
            first_index: st.first_index,
            next_index: st.next_index,
            next_offset: st.next_offset,
        }
    }

    /// Drains the queue, syncs, writes the active segment's index and stops the writer.
    /// Other clones of this `Log` fail with `Closed` afterwards.
    pub async fn close(self) -> Result<(), StorageError> {
        let rx = {
            let mut st = self.lock();
            if let Some(e) = st.poison_error() {
                return Err(e);
            }
            if st.closed {
                return Ok(());
            }
            let permit = self
                .inner
                .tx
                .try_reserve()
                .map_err(|_| StorageError::Closed);
            let (reply, rx) = oneshot::channel();
            match permit {
                Ok(p) => p.send(Op::Close { reply }),
                Err(e) => return Err(e),
            }
            st.closed = true;
            rx
        };
        rx.await.map_err(|_| StorageError::Closed)?
    }
}

struct SegRead {
    salt: u32,
    file: Arc<dyn crate::io::DiskFile>,
    path: PathBuf,
    scan: (u64, u64),
    start: u64,
    stop: u64,
    end_pos: u64,
    offsets: Vec<u64>,
}

struct ReadPlan {
    segs: Vec<SegRead>,
    tail: Vec<Frame>,
    epoch: u64,
    from: u64,
    payload_max: u32,
}

#[cfg(test)]
mod tests {
    use super::LogConfig;

    #[test]
    fn segment_sizes_double_on_a_grid_up_to_the_maximum() {
        let c = LogConfig::default();
        let mib = 1 << 20;
        assert_eq!(c.first_segment_bytes(), mib);
        let mut size = c.first_segment_bytes();
        let mut seen = vec![size];
        while size < c.segment_bytes_max {
            size = c.segment_bytes_after(size);
            seen.push(size);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64].map(|m| m * mib));
        assert_eq!(c.segment_bytes_after(64 * mib), 64 * mib);
        // Off-grid capacities (a segment enlarged for a big frame, a recycled file, the end-of
        // -data marker past a full segment) go back to the grid.
        assert_eq!(c.segment_bytes_after(3 * mib + 64), 4 * mib);
        assert_eq!(c.segment_bytes_after(64 * mib + 32), 64 * mib);
        assert_eq!(c.segment_bytes_after(200 * mib), 64 * mib);
        assert_eq!(c.segment_bytes_holding(100), mib);
        assert_eq!(c.segment_bytes_holding(mib + 1), 2 * mib);
        assert_eq!(c.segment_bytes_holding(65 * mib), 65 * mib);
        // A maximum below the minimum, or not a power-of-two multiple of it.
        let small = LogConfig {
            segment_bytes_max: 8192,
            ..LogConfig::default()
        };
        assert_eq!(small.first_segment_bytes(), 8192);
        assert_eq!(small.segment_bytes_after(8192), 8192);
        let odd = LogConfig {
            segment_bytes_min: 4096,
            segment_bytes_max: 24576,
            ..LogConfig::default()
        };
        assert_eq!(odd.segment_bytes_after(16384), 24576);
        assert_eq!(odd.segment_bytes_after(24576), 24576);
        assert_eq!(odd.segment_bytes_holding(20000), 24576);
    }
}
