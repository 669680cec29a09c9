//! The group-commit writer: one task per log owns every write, fed by one FIFO queue.
//!
//! The task takes the next operation; if it is an append, it also takes every append queued
//! right behind it (up to `group_commit_bytes_max`), encodes them into ONE buffer, issues
//! ONE write and ONE fdatasync, then answers every caller. Other operations (meta, truncate,
//! purge, reset, close) run one at a time in queue order, so none is durable before an earlier
//! append.
//!
//! *Invariants:* a failed write or fdatasync is never retried; the log is poisoned and every
//! queued and later operation fails (fail-stop: after a failed fsync the kernel may have
//! dropped the dirty pages, so a retry could "succeed" without the data).
//! A segment is fdatasync'd before the next one is created, so a sealed segment is complete.
//!
//! *Pre-zeroed segments* (`LogConfig::preallocate`): a new segment is not created in place but
//! renamed from a spare file ([`SPARE_FILE_NAME`]) that was filled with zeros and fdatasync'd
//! beforehand — in a background task started when the active segment is half full, or inline
//! for a log's first segment. Appends then overwrite allocated, already-written blocks at a
//! fixed file size, so each group's fdatasync flushes data only, with no extent conversion or
//! size change to commit to the filesystem journal. Crash safety: the spare's name is not a
//! segment name, so recovery never reads it; it is renamed only after its zeros are durable;
//! a renamed segment whose header is not yet durable reads as an all-zero (torn, never
//! written) tail segment, which recovery removes; an all-zero frame header is the end of data.
//! Every writer deletes and recreates the spare before zeroing it, so a stale or half-zeroed
//! spare left by a crash (or by a writer that is still shutting down) is never used.
//!
//! *Growing segments* (`LogConfig::segment_bytes_min`): a new log's first segment is
//! `segment_bytes_min` (zeroed inline: cheap), each next one is planned at twice the previous
//! one's size, up to `segment_bytes_max`, so a node's thousands of mostly idle logs cost a
//! small segment each, not a full-size one. A segment is never smaller than its first frame
//! needs (rounded up to 4 KiB), and a larger recycled file or spare is used at its own size;
//! the writer rolls when a frame and the end-of-data marker would not fit the segment's
//! capacity (its file's size), so a pre-zeroed file is never extended. Spares are zeroed at
//! the next segment's planned size; recycled files smaller than it are deleted (segments only
//! grow, so they would never fit). After a reopen, the tail segment's capacity is its file's
//! size (rounded up to a planned size), and growth continues from there; a reset starts over
//! at `segment_bytes_min`. Sizes are not recorded anywhere: recovery, indexes, purge and
//! truncation never depended on a segment's size.
//!
//! *End-of-data marker and block-aligned groups:* every group write starts at a block
//! boundary and carries zeros after its last frame up to the block boundary past 32 more
//! bytes (the padding; see [`super::segment`]), so every fdatasync'd segment ends at an
//! all-zero frame header, even in a recycled file whose old bytes there are the middle of a
//! stale frame. The next group starts at the next block boundary: it may overwrite the
//! marker's zero block but never a block holding an earlier group's frames, so a torn group
//! write cannot damage acknowledged frames. Groups are written with
//! [`DiskFile::write_blocks_at_and_sync`] from a block-aligned buffer: `O_DIRECT` on the std
//! and io_uring backends (segment files are opened with [`Disk::open_direct`]), which keeps
//! ext4's large page-cache folios out of the append path (a small buffered write into a
//! multi-MiB folio made each fdatasync write back the whole folio).
//!
//! *Recycled segments* (`LogConfig::recycle_segments_max`): a purge does not delete a
//! segment file at least as large as the next segment but renames it to `recycled-<n>.spare` (up to the bound; beyond it
//! files are deleted), and the next roll reuses it: in the steady state no segment is ever
//! zeroed, every byte is written once, over already-written blocks. Zeroing (above) happens
//! only when no recycled file is available (a new log, after a reset). Crash safety:
//! * a recycled file still holds its previous life's frames. Every segment life draws a new
//!   random salt ([`Disk::random_u64`]), stored in the checksummed segment header and in every
//!   frame (covered by the frame CRC); recovery and readers treat a frame with another salt
//!   as the end of data, so stale frames are never read (and, for purged files, their
//!   indexes are all below the new segment's base, so they could not continue the sequence
//!   even on a salt collision — recovery would report `Corrupt`, not resurrect them);
//! * the new header (base, offset, salt) is written and fdatasync'd into the spare *before*
//!   it is renamed to a segment name, so a segment file never carries its previous life's
//!   header; a crash before the rename is durable leaves an ordinary spare;
//! * the recycle rename in a purge happens after the anchor (the new first index) is durable;
//!   if a crash loses the rename, recovery finds the old segment below the anchor and deletes it;
//! * spare names are not segment names, so recovery never reads a spare; on open, recycled
//!   files shorter than the next segment's planned size are deleted, the rest are reused;
//! * truncation inside a segment zeroes the truncated bytes (up to
//!   [`TRUNCATE_ZERO_BYTES_MAX`]; a larger cut shrinks the file instead) and fdatasyncs
//!   before the truncation is acknowledged, so frames of the same life and salt past the cut
//!   can never be reached by a later, shorter append's scan after a crash.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::frame::{encode_frame_aligned, frame_len, FRAME_HEADER_BYTES};
use super::recovery::{
    encode_anchor, remove_index_file, remove_segment_files, segment_path, write_index,
};
use super::segment::{encode_segment_header, Segment, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::{LogConfig, Position, State};
use crate::io::{AlignedBuf, Disk, DiskFile, BLOCK_BYTES};
use crate::meta::SlotFile;
use crate::StorageError;

type Reply = oneshot::Sender<Result<(), StorageError>>;

/// Name of the pre-zeroed spare segment in a log directory. Not a segment name
/// (`<20 digits>.log`), so recovery and `list_dir` scans of segments ignore it.
pub(crate) const SPARE_FILE_NAME: &str = "next-segment.spare";
/// Segment sizes are rounded up to this (a filesystem block) when a frame needs more than
/// the planned size.
const SEGMENT_ALIGN_BYTES: u64 = 4096;
/// Group commits start at, and are written in, whole blocks of this size.
const BLOCK: u64 = BLOCK_BYTES as u64;
/// Bytes of zeros per write while pre-zeroing a spare: bounds the zero buffer.
const ZERO_CHUNK_BYTES: u64 = 1024 * 1024;
/// Recycled segment files are named `recycled-<20 digits>.spare` (not segment names).
const RECYCLED_PREFIX: &str = "recycled-";
const RECYCLED_SUFFIX: &str = ".spare";
/// A truncation inside a segment zeroes at most this many bytes (then fdatasyncs); a larger
/// cut shrinks the file instead (`set_len`: O(1), but later appends to that segment extend
/// the file, and it is not recycled). Bounds the cost of a Raft conflict truncation.
pub(crate) const TRUNCATE_ZERO_BYTES_MAX: u64 = 4 * 1024 * 1024;

fn recycled_seq(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(RECYCLED_PREFIX)?
        .strip_suffix(RECYCLED_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes zeros over `[from, to)` of `file` (in chunks of at most `ZERO_CHUNK_BYTES`).
async fn write_zeros(file: &dyn DiskFile, from: u64, to: u64) -> std::io::Result<()> {
    let mut zeros = vec![0u8; ZERO_CHUNK_BYTES.min(to.saturating_sub(from)) as usize];
    let mut pos = from;
    while pos < to {
        let n = ZERO_CHUNK_BYTES.min(to - pos) as usize;
        zeros.truncate(n);
        zeros = file.write_all_at(zeros, pos).await?;
        pos += n as u64;
    }
    Ok(())
}

/// Fills `[0, len)` of a new file with zeros. Whole blocks go through
/// [`DiskFile::write_blocks_at`] (`O_DIRECT` on the std and io_uring backends), so zeroing a
/// segment of up to 64 MiB does not copy it through the page cache (buffered zeroing of
/// fresh, growing segments was ~46% of all CPU in the 3-node Raft benchmark); a length that
/// is not a whole number of blocks, or a file without a direct descriptor, is zeroed with
/// buffered writes.
async fn write_zero_blocks(file: &dyn DiskFile, len: u64) -> std::io::Result<()> {
    if !file.is_direct() || !len.is_multiple_of(BLOCK) {
        return write_zeros(file, 0, len).await;
    }
    let chunk = ZERO_CHUNK_BYTES.min(len) as usize;
    let mut zeros = AlignedBuf::with_capacity(chunk);
    zeros.pad_zeros_to(chunk);
    let mut pos = 0;
    while pos < len {
        // Both are block multiples, so every write is whole blocks. The buffer only ever
        // holds zeros (allocated zeroed, never written), so shortening it keeps them.
        let n = ZERO_CHUNK_BYTES.min(len - pos) as usize;
        zeros.set_len_within_capacity(n);
        zeros = file.write_blocks_at(zeros, pos).await?;
        pos += n as u64;
    }
    Ok(())
}

/// The pre-zeroed spare segment.
#[derive(Debug)]
enum Spare {
    /// None on disk (or not usable).
    Absent,
    /// Being zeroed to this many bytes by a background task.
    Preparing(tokio::task::JoinHandle<std::io::Result<()>>, u64),
    /// Zeroed to this many bytes and fdatasync'd.
    Ready(u64),
}

/// Deletes any old `path`, creates it afresh and fills it with `len` zeros, then
/// fdatasyncs it. A fresh inode means a writer that is still running elsewhere on an old
/// handle can never write into the file this writer will use.
async fn prepare_spare(disk: Arc<dyn Disk>, path: PathBuf, len: u64) -> std::io::Result<()> {
    match disk.remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = disk.open_direct(&path, true).await?;
    write_zero_blocks(file.as_ref(), len).await?;
    file.sync_data().await
}

/// A frame waiting to be written.
#[derive(Debug)]
pub(crate) struct PendingFrame {
    pub(crate) index: u64,
    pub(crate) record_count: u32,
    pub(crate) payload: Bytes,
    /// CRC32C of `payload` (computed by the appender).
    pub(crate) crc: u32,
}

/// An operation in the writer queue.
#[derive(Debug)]
pub(crate) enum Op {
    Append {
        frames: Vec<PendingFrame>,
        base_offset: u64,
        last_id: u64,
        bytes: usize,
        reply: Reply,
    },
    PutMeta {
        data: Vec<u8>,
        reply: Reply,
    },
    Truncate {
        from: u64,
        from_offset: u64,
        epoch: u64,
        reply: Reply,
    },
    Purge {
        index: u64,
        offset: u64,
        reply: Reply,
    },
    Reset {
        next: Position,
        epoch: u64,
        reply: Reply,
    },
    Close {
        reply: Reply,
    },
}

impl Op {
    fn into_reply(self) -> Reply {
        match self {
            Op::Append { reply, .. }
            | Op::PutMeta { reply, .. }
            | Op::Truncate { reply, .. }
            | Op::Purge { reply, .. }
            | Op::Reset { reply, .. }
            | Op::Close { reply } => reply,
        }
    }
}

/// The segment being appended to.
struct Active {
    base: u64,
    salt: u32,
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    /// Roll when the next frame and the end-of-data marker would not fit in this many bytes.
    capacity: u64,
    /// Next write position: block-aligned at the start of a group (after `flush`), then
    /// advanced frame by frame while a group is encoded.
    pos: u64,
    next_index: u64,
    next_offset: u64,
}

/// Frames encoded for one write, not yet registered in the segment table.
struct Chunk {
    /// Starts at a block boundary (`pos`); padded to whole blocks by `flush`.
    buf: AlignedBuf,
    /// File position of `buf[0]`.
    pos: u64,
    /// `(index, offset, count, pos, len)`.
    regs: Vec<(u64, u64, u32, u64, u64)>,
    /// The segment was created by this chunk: sync the directory after writing.
    created: bool,
}

pub(crate) struct Writer {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    config: LogConfig,
    state: Arc<Mutex<State>>,
    rx: mpsc::Receiver<Op>,
    meta: SlotFile,
    anchor: SlotFile,
    active: Option<Active>,
    deferred: Option<Op>,
    /// Highest index durable in the files.
    file_durable: Option<u64>,
    /// Epoch of the last truncate/reset processed.
    epoch: u64,
    /// A cleared, block-aligned buffer to encode the next group into (reused).
    spare_buf: AlignedBuf,
    /// The pre-zeroed next segment.
    spare: Spare,
    /// The disk cannot rename: create segments in place (fallocate) instead.
    rename_unsupported: bool,
    /// Recycled segment files ready for reuse, with their lengths (content irrelevant).
    recycled: Vec<(PathBuf, u64)>,
    /// Capacity of the latest active segment (`None`: a new log, or after a reset): the next
    /// segment is planned at twice it (`LogConfig::segment_bytes_after`).
    last_capacity: Option<u64>,
    /// Sequence number for the next recycled file's name.
    recycle_seq: u64,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        disk: Arc<dyn Disk>,
        dir: PathBuf,
        config: LogConfig,
        state: Arc<Mutex<State>>,
        rx: mpsc::Receiver<Op>,
        meta: SlotFile,
        anchor: SlotFile,
        file_durable: Option<u64>,
    ) -> Self {
        let active = {
            let st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.segments.values().next_back().map(active_of)
        };
        let last_capacity = active.as_ref().map(|a| a.capacity);
        Writer {
            disk,
            dir,
            config,
            state,
            rx,
            meta,
            anchor,
            active,
            deferred: None,
            file_durable,
            epoch: 0,
            spare_buf: AlignedBuf::new(),
            spare: Spare::Absent,
            rename_unsupported: false,
            recycled: Vec::new(),
            last_capacity,
            recycle_seq: 0,
        }
    }

    /// Planned size of the next segment: `segment_bytes_min` for a new log, then twice the
    /// previous segment's, up to `segment_bytes_max`.
    fn next_segment_bytes(&self) -> u64 {
        match self.last_capacity {
            None => self.config.first_segment_bytes(),
            Some(c) => self.config.segment_bytes_after(c),
        }
    }

    /// A recycled file of `len` bytes can serve as the next segment (segments only grow, so
    /// a smaller file would never be used: it is deleted instead).
    fn recycle_fits(&self, len: u64) -> bool {
        len >= self.next_segment_bytes()
    }

    /// Adopts the recycled files a previous writer left (those that fit the next segment, up
    /// to the bound); deletes the others. Best effort: a failure only costs zeroing later.
    async fn load_recycled(&mut self) {
        let Ok(names) = self.disk.list_dir(&self.dir).await else {
            return;
        };
        for name in names {
            let Some(seq) = recycled_seq(&name) else {
                continue;
            };
            self.recycle_seq = self.recycle_seq.max(seq + 1);
            let path = self.dir.join(&name);
            let mut keep = None;
            if self.recycle_wanted() && self.recycled.len() < self.recycle_max() {
                if let Ok(f) = self.disk.open(&path, false).await {
                    keep = f.len().await.ok().filter(|l| self.recycle_fits(*l));
                }
            }
            if let Some(len) = keep {
                self.recycled.push((path, len));
            } else {
                let _ = self.disk.remove_file(&path).await;
            }
        }
    }

    fn recycle_max(&self) -> usize {
        self.config.recycle_segments_max
    }

    fn recycle_wanted(&self) -> bool {
        self.spare_wanted() && self.recycle_max() > 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn run(mut self) {
        self.load_recycled().await;
        loop {
            let op = match self.deferred.take() {
                Some(op) => op,
                None => match self.rx.recv().await {
                    Some(op) => op,
                    None => {
                        self.settle_spare().await;
                        return;
                    }
                },
            };
            if let Some(e) = self.lock().poison_error() {
                let _ = op.into_reply().send(Err(e));
                continue;
            }
            match op {
                Op::Append { .. } => self.append_group(op).await,
                Op::PutMeta { data, reply } => {
                    let r = self.meta.write(&data).await;
                    let r = self.check(r, "meta write");
                    let _ = reply.send(r);
                }
                Op::Truncate {
                    from,
                    from_offset,
                    epoch,
                    reply,
                } => {
                    let r = self.truncate(from, from_offset).await;
                    let r = self.check(r, "truncate");
                    self.epoch = epoch;
                    self.publish_durable();
                    let _ = reply.send(r);
                }
                Op::Purge {
                    index,
                    offset,
                    reply,
                } => {
                    let r = self.purge(index, offset).await;
                    let r = self.check(r, "purge");
                    let _ = reply.send(r);
                }
                Op::Reset { next, epoch, reply } => {
                    let r = self.reset(next).await;
                    let r = self.check(r, "reset");
                    self.epoch = epoch;
                    self.publish_durable();
                    let _ = reply.send(r);
                }
                Op::Close { reply } => {
                    if let Some(a) = &self.active {
                        let seg = self.lock().segments.get(&a.base).cloned();
                        if let Some(seg) = seg {
                            write_index(self.disk.as_ref(), &self.dir, &seg).await;
                        }
                    }
                    // No I/O of this log may still be in flight once `close` returns.
                    self.settle_spare().await;
                    if matches!(self.spare, Spare::Ready(_)) {
                        // Reclaim the space; the next writer zeroes a fresh spare anyway.
                        let _ = self.disk.remove_file(&self.spare_path()).await;
                    }
                    let _ = reply.send(Ok(()));
                    return;
                }
            }
        }
    }

    /// Poisons the log on any failure; returns the error to hand to the caller.
    fn check(&self, r: Result<(), StorageError>, op: &'static str) -> Result<(), StorageError> {
        let Err(e) = r else { return Ok(()) };
        let mut st = self.lock();
        if st.poisoned.is_none() {
            tracing::error!(dir = %self.dir.display(), error = %e, "{op} failed; the log is poisoned");
            st.poisoned = Some((op, e.to_string()));
        }
        Err(st.poison_error().unwrap_or(e))
    }

    fn publish_durable(&self) {
        let mut st = self.lock();
        if st.epoch == self.epoch {
            st.durable_index = self.file_durable.filter(|d| *d < st.next_index);
        }
    }

    async fn append_group(&mut self, first: Op) {
        let mut ops = vec![first];
        let mut bytes = match &ops[0] {
            Op::Append { bytes, .. } => *bytes,
            _ => 0,
        };
        while bytes < self.config.group_commit_bytes_max {
            match self.rx.try_recv() {
                Ok(op @ Op::Append { .. }) => {
                    if let Op::Append { bytes: b, .. } = &op {
                        bytes += b;
                    }
                    ops.push(op);
                }
                Ok(other) => {
                    self.deferred = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let r = self.write_group(&ops).await;
        let r = self.check(r, "append");
        let mut last = None;
        let mut last_id = None;
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::Append {
                frames,
                last_id: id,
                reply,
                ..
            } = op
            {
                last = frames.last().map(|f| f.index).or(last);
                last_id = Some(id);
                replies.push(reply);
            }
        }
        if r.is_ok() {
            if last.is_some() {
                self.file_durable = last;
            }
            if let Some(id) = last_id {
                self.lock().pop_tail(id, self.config.read_cache_bytes);
            }
            self.publish_durable();
        }
        for reply in replies {
            let _ = reply.send(match &r {
                Ok(()) => Ok(()),
                Err(_) => Err(self.lock().poison_error().unwrap_or(StorageError::Closed)),
            });
        }
    }

    async fn write_group(&mut self, ops: &[Op]) -> Result<(), StorageError> {
        let mut chunk: Option<Chunk> = None;
        for op in ops {
            let Op::Append {
                frames,
                base_offset,
                ..
            } = op
            else {
                continue;
            };
            let mut offset = *base_offset;
            for f in frames {
                let len = frame_len(f.payload.len()) as u64;
                // Room for the end-of-data marker too, so a full segment keeps its size.
                // The group's write is whole blocks: it ends at the block boundary past the
                // marker.
                let need_roll = self.active.as_ref().is_some_and(|a| {
                    a.pos > SEGMENT_HEADER_BYTES
                        && (a.pos + len + FRAME_HEADER_BYTES as u64).next_multiple_of(BLOCK)
                            > a.capacity
                });
                if need_roll {
                    if let Some(c) = chunk.take() {
                        self.flush(c).await?;
                    }
                    self.seal().await;
                }
                if self.active.is_none() {
                    chunk = Some(self.create_segment(f.index, offset, len).await?);
                }
                let (Some(a), c) = (self.active.as_mut(), &mut chunk) else {
                    return Err(StorageError::Closed);
                };
                let c = c.get_or_insert_with(|| Chunk {
                    buf: std::mem::take(&mut self.spare_buf),
                    pos: a.pos,
                    regs: Vec::new(),
                    created: false,
                });
                debug_assert_eq!(f.index, a.next_index);
                encode_frame_aligned(
                    &mut c.buf,
                    a.salt,
                    f.index,
                    f.record_count,
                    &f.payload,
                    f.crc,
                );
                c.regs.push((f.index, offset, f.record_count, a.pos, len));
                a.pos += len;
                a.next_index = f.index + 1;
                offset += u64::from(f.record_count);
                a.next_offset = offset;
            }
        }
        if let Some(c) = chunk {
            self.flush(c).await?;
        }
        Ok(())
    }

    /// Writes and fdatasyncs one chunk to the active segment, then registers its frames.
    async fn flush(&mut self, mut c: Chunk) -> Result<(), StorageError> {
        let Some(a) = &self.active else {
            return Err(StorageError::Closed);
        };
        let (file, path, base) = (a.file.clone(), a.path.clone(), a.base);
        // The end-of-data marker and the group padding: zeros from the last frame up to the
        // block boundary past an all-zero frame header (32 bytes). The next group starts at
        // the next block boundary, so it never rewrites a block holding these frames; a
        // recycled file's old bytes after them (possibly the middle of a stale frame) are
        // covered, so every synced segment ends cleanly at an all-zero header.
        debug_assert_eq!(c.pos % BLOCK, 0);
        let end = c.buf.len() + FRAME_HEADER_BYTES;
        c.buf.pad_zeros_to(end.next_multiple_of(BLOCK_BYTES));
        let mut buf = file
            .write_blocks_at_and_sync(c.buf, c.pos)
            .await
            .map_err(|e| StorageError::io("write+fdatasync", &path, e))?;
        if c.created {
            self.disk
                .sync_dir(&self.dir)
                .await
                .map_err(|e| StorageError::io("fsync dir", &self.dir, e))?;
        }
        {
            let interval = self.config.index_interval_bytes;
            let mut st = self.lock();
            if let Some(seg) = st.segments.get_mut(&base) {
                for (index, offset, count, pos, len) in c.regs {
                    seg.push_frame(index, offset, count, pos, len, interval);
                }
            }
        }
        buf.clear();
        self.spare_buf = buf;
        if let Some(a) = self.active.as_mut() {
            a.pos = a.pos.next_multiple_of(BLOCK);
        }
        self.maybe_start_spare();
        Ok(())
    }

    /// Writes the active segment's index and forgets it (it was fdatasync'd by `flush`).
    async fn seal(&mut self) {
        if let Some(a) = self.active.take() {
            let seg = self.lock().segments.get(&a.base).cloned();
            if let Some(seg) = seg {
                write_index(self.disk.as_ref(), &self.dir, &seg).await;
            }
        }
    }

    fn spare_path(&self) -> PathBuf {
        self.dir.join(SPARE_FILE_NAME)
    }

    fn spare_wanted(&self) -> bool {
        self.config.preallocate && !self.rename_unsupported
    }

    /// Starts zeroing the next segment (at its planned size) in the background once the
    /// active one is half full, unless a recycled file or a ready spare will do.
    fn maybe_start_spare(&mut self) {
        let half_full = self
            .active
            .as_ref()
            .is_some_and(|a| a.pos >= a.capacity / 2);
        if !half_full || !self.spare_wanted() {
            return;
        }
        let size = self.next_segment_bytes();
        if self.recycled.iter().any(|(_, l)| *l >= size) {
            return;
        }
        if matches!(self.spare, Spare::Ready(l) if l < size) {
            // Zeroed for a smaller segment (recycled files were used meanwhile): redo it at
            // the size needed now, off the append path (`prepare_spare` recreates the file).
            self.spare = Spare::Absent;
        }
        if matches!(self.spare, Spare::Absent) {
            let task = prepare_spare(self.disk.clone(), self.spare_path(), size);
            self.spare = Spare::Preparing(tokio::spawn(task), size);
        }
    }

    /// Waits for a background zeroing task, if any, to finish.
    async fn settle_spare(&mut self) {
        if let Spare::Preparing(task, len) = std::mem::replace(&mut self.spare, Spare::Absent) {
            self.spare = match task.await {
                Ok(Ok(())) => Spare::Ready(len),
                Ok(Err(e)) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot pre-zero the next segment");
                    Spare::Absent
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "the pre-zeroing task failed");
                    Spare::Absent
                }
            };
        }
    }

    /// Renames the (waited for, or zeroed now) spare of at least `size` bytes to `path`;
    /// returns it with its length (a larger spare is used at its own size), or `None`.
    async fn take_spare(
        &mut self,
        path: &Path,
        size: u64,
    ) -> Result<Option<(Arc<dyn DiskFile>, u64)>, StorageError> {
        if !self.spare_wanted() {
            return Ok(None);
        }
        self.settle_spare().await;
        let len = match self.spare {
            Spare::Ready(len) if len >= size => len,
            _ => {
                // No spare yet (a new log, or after a reset), or one too small for a large
                // frame: zero this segment inline, once (a new log's is the smallest size).
                let r = prepare_spare(self.disk.clone(), self.spare_path(), size).await;
                match r {
                    Ok(()) => size,
                    Err(e) => {
                        self.spare = Spare::Absent;
                        tracing::warn!(dir = %self.dir.display(), error = %e, "cannot pre-zero a segment; creating it in place");
                        return Ok(None);
                    }
                }
            }
        };
        self.spare = Spare::Absent;
        let spare = self.spare_path();
        match self.disk.rename(&spare, path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(dir = %self.dir.display(), "the disk cannot rename; segments are created in place");
                self.rename_unsupported = true;
                return Ok(None);
            }
            Err(e) => return Err(StorageError::io("rename", &spare, e)),
        }
        let file = self
            .disk
            .open_direct(path, false)
            .await
            .map_err(|e| StorageError::io("open", path, e))?;
        Ok(Some((file, len)))
    }

    /// Reuses the smallest recycled file of at least `size` bytes as segment `path` (at its
    /// own size): writes and fdatasyncs its new `header`, then renames it into place (made
    /// durable by the caller's directory fsync). Returns it with its length.
    async fn take_recycled(
        &mut self,
        path: &Path,
        header: &[u8; 32],
        size: u64,
    ) -> Result<Option<(Arc<dyn DiskFile>, u64)>, StorageError> {
        loop {
            let best = self
                .recycled
                .iter()
                .enumerate()
                .filter(|(_, (_, l))| *l >= size)
                .min_by_key(|(_, (_, l))| *l)
                .map(|(i, _)| i);
            let Some(i) = best else {
                return Ok(None);
            };
            let (spare, len) = self.recycled.swap_remove(i);
            let file = match self.disk.open_direct(&spare, false).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %spare.display(), error = %e, "cannot open a recycled segment file");
                    continue;
                }
            };
            file.write_all_at_and_sync(header.to_vec(), 0)
                .await
                .map_err(|e| StorageError::io("write+fdatasync", &spare, e))?;
            self.disk
                .rename(&spare, path)
                .await
                .map_err(|e| StorageError::io("rename", &spare, e))?;
            return Ok(Some((file, len)));
        }
    }

    /// A new salt for a segment life.
    fn new_salt(&self) -> u32 {
        // Truncation keeps the low 32 bits.
        self.disk.random_u64() as u32
    }

    /// Creates the next segment, starting with a frame of `frame_bytes`: at its planned size
    /// (`next_segment_bytes`), or larger if the frame needs it, or at the size of a larger
    /// recycled file or spare.
    async fn create_segment(
        &mut self,
        base: u64,
        base_offset: u64,
        frame_bytes: u64,
    ) -> Result<Chunk, StorageError> {
        let path = segment_path(&self.dir, base);
        let need = (SEGMENT_HEADER_BYTES + frame_bytes + FRAME_HEADER_BYTES as u64)
            .next_multiple_of(SEGMENT_ALIGN_BYTES);
        let size = self.next_segment_bytes().max(need);
        let h = SegmentHeader {
            base_index: base,
            base_offset,
            salt: self.new_salt(),
        };
        let header = encode_segment_header(h);
        let recycled = if self.recycle_wanted() {
            self.take_recycled(&path, &header, size).await?
        } else {
            None
        };
        // The rename replaces a leftover file of the same name (e.g. from a truncation).
        let spare = match recycled {
            Some(file) => Some(file),
            None => self.take_spare(&path, size).await?,
        };
        let (file, capacity) = match spare {
            Some(file) => file,
            None => {
                let file = self
                    .disk
                    .open_direct(&path, true)
                    .await
                    .map_err(|e| StorageError::io("create", &path, e))?;
                // A leftover file of the same name must not keep old bytes.
                file.set_len(0)
                    .await
                    .map_err(|e| StorageError::io("truncate", &path, e))?;
                if self.config.preallocate {
                    file.allocate(size)
                        .await
                        .map_err(|e| StorageError::io("fallocate", &path, e))?;
                }
                (file, size)
            }
        };
        let mut seg = Segment::new(h, path.clone(), file.clone());
        seg.capacity = capacity;
        self.lock().segments.insert(base, seg);
        self.last_capacity = Some(capacity);
        let mut buf = std::mem::take(&mut self.spare_buf);
        buf.extend_from_slice(&header);
        self.active = Some(Active {
            base,
            salt: h.salt,
            file,
            path,
            capacity,
            pos: SEGMENT_HEADER_BYTES,
            next_index: base,
            next_offset: base_offset,
        });
        Ok(Chunk {
            buf,
            pos: 0,
            regs: Vec::new(),
            created: true,
        })
    }

    async fn sync_dir(&self) -> Result<(), StorageError> {
        self.disk
            .sync_dir(&self.dir)
            .await
            .map_err(|e| StorageError::io("fsync dir", &self.dir, e))
    }

    async fn delete_segment(&mut self, base: u64) -> Result<(), StorageError> {
        let seg = self.lock().segments.remove(&base);
        if let Some(seg) = seg {
            remove_segment_files(self.disk.as_ref(), &self.dir, &seg.path, base).await?;
        }
        if self.active.as_ref().is_some_and(|a| a.base == base) {
            self.active = None;
        }
        Ok(())
    }

    async fn truncate(&mut self, from: u64, from_offset: u64) -> Result<(), StorageError> {
        let (doomed, containing, first_base) = {
            let st = self.lock();
            let doomed: Vec<u64> = st.segments.range(from..).map(|(b, _)| *b).collect();
            let containing = st
                .segments
                .range(..from)
                .next_back()
                .filter(|(_, s)| s.next_index() > from)
                .map(|(_, s)| s.clone());
            (doomed, containing, st.segments.keys().next().copied())
        };
        if first_base.is_some_and(|b| b >= from) {
            // Everything goes: record where the log continues first.
            self.anchor.write(&encode_anchor(from, from_offset)).await?;
        }
        let dir_dirty = !doomed.is_empty() || containing.is_some();
        for base in doomed.into_iter().rev() {
            self.delete_segment(base).await?;
        }
        if let Some(seg) = containing {
            let pos = super::reader::find_frame_pos(
                seg.file.as_ref(),
                &seg.path,
                seg.scan_start(from),
                from,
                seg.end_pos,
                seg.salt,
                self.config.frame_payload_bytes_max,
            )
            .await?;
            remove_index_file(self.disk.as_ref(), &self.dir, seg.base_index).await?;
            // Frames past the cut carry this life's salt and continuing indexes: make them
            // unreachable durably before acknowledging (zeroing keeps the file full-size).
            if seg.end_pos - pos <= TRUNCATE_ZERO_BYTES_MAX {
                write_zeros(seg.file.as_ref(), pos, seg.end_pos)
                    .await
                    .map_err(|e| StorageError::io("write zeros", &seg.path, e))?;
            } else {
                seg.file
                    .set_len(pos)
                    .await
                    .map_err(|e| StorageError::io("truncate", &seg.path, e))?;
            }
            seg.file
                .sync_data()
                .await
                .map_err(|e| StorageError::io("fdatasync", &seg.path, e))?;
            let mut st = self.lock();
            if let Some(s) = st.segments.get_mut(&seg.base_index) {
                s.truncate_frames(from, pos);
            }
        }
        if dir_dirty {
            self.sync_dir().await?;
        }
        let active = self.lock().segments.values().next_back().map(active_of);
        if let Some(a) = &active {
            self.last_capacity = Some(a.capacity);
        }
        self.active = active;
        self.file_durable = self.file_durable.min(from.checked_sub(1));
        Ok(())
    }

    async fn purge(&mut self, index: u64, offset: u64) -> Result<(), StorageError> {
        self.anchor.write(&encode_anchor(index, offset)).await?;
        let below: Vec<u64> = {
            let st = self.lock();
            st.segments
                .values()
                .filter(|s| s.next_index() <= index)
                .map(|s| s.base_index)
                .collect()
        };
        // Recycled files kept while the segments were smaller will never fit again.
        let mut dir_dirty = self.prune_recycled().await?;
        for base in &below {
            self.recycle_segment(*base).await?;
            dir_dirty = true;
        }
        if dir_dirty {
            self.sync_dir().await?;
        }
        Ok(())
    }

    /// Deletes the recycled files too small for the next segment; true if any was deleted.
    async fn prune_recycled(&mut self) -> Result<bool, StorageError> {
        let size = self.next_segment_bytes();
        let (small, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recycled)
            .into_iter()
            .partition(|(_, l)| *l < size);
        self.recycled = keep;
        for (spare, _) in &small {
            match self.disk.remove_file(spare).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", spare, e)),
            }
        }
        Ok(!small.is_empty())
    }

    /// Removes a purged segment from the table and keeps its file as a recycled spare (if
    /// it is large enough for the next segment and the pool has room) or deletes it. The
    /// caller fsyncs the directory.
    async fn recycle_segment(&mut self, base: u64) -> Result<(), StorageError> {
        let file = {
            let st = self.lock();
            st.segments.get(&base).map(|s| s.file.clone())
        };
        let keep = match file {
            Some(file) if self.recycle_wanted() && self.recycled.len() < self.recycle_max() => {
                file.len().await.ok().filter(|l| self.recycle_fits(*l))
            }
            _ => None,
        };
        let Some(len) = keep else {
            return self.delete_segment(base).await;
        };
        let Some(seg) = self.lock().segments.remove(&base) else {
            return Ok(());
        };
        if self.active.as_ref().is_some_and(|a| a.base == base) {
            self.active = None;
        }
        let spare = self.dir.join(format!(
            "{RECYCLED_PREFIX}{:020}{RECYCLED_SUFFIX}",
            self.recycle_seq
        ));
        self.recycle_seq += 1;
        self.disk
            .rename(&seg.path, &spare)
            .await
            .map_err(|e| StorageError::io("rename", &seg.path, e))?;
        remove_index_file(self.disk.as_ref(), &self.dir, base).await?;
        self.recycled.push((spare, len));
        Ok(())
    }

    async fn reset(&mut self, next: Position) -> Result<(), StorageError> {
        let all: Vec<u64> = self.lock().segments.keys().copied().collect();
        for base in all {
            self.delete_segment(base).await?;
        }
        // The log may continue below the indexes the recycled files held: drop them, so every
        // recycled file only ever holds indexes below the next segment's base.
        for (spare, _) in std::mem::take(&mut self.recycled) {
            match self.disk.remove_file(&spare).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", &spare, e)),
            }
        }
        self.sync_dir().await?;
        self.anchor
            .write(&encode_anchor(next.index, next.offset))
            .await?;
        // Everything before the reset point is, by definition, settled.
        self.file_durable = next.index.checked_sub(1);
        // The log starts over: its next segment is a first one (small, cheap to zero inline).
        self.last_capacity = None;
        Ok(())
    }
}

fn active_of(s: &Segment) -> Active {
    Active {
        base: s.base_index,
        salt: s.salt,
        file: s.file.clone(),
        path: s.path.clone(),
        capacity: s.capacity,
        // The group padding after `end_pos` is zeros (segment invariant): start a new block.
        pos: s.end_pos.next_multiple_of(BLOCK),
        next_index: s.next_index(),
        next_offset: s.end_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{open_disk, BackendChoice};

    /// A spare replacing a file full of old bytes reads back as exactly `len` zeros, on both
    /// real backends (direct block writes) and for a length that is not whole blocks
    /// (buffered path).
    #[test]
    fn prepare_spare_leaves_exactly_len_zeros() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for choice in [BackendChoice::Std, BackendChoice::Uring] {
                let Ok(disk) = open_disk(choice) else {
                    continue; // no io_uring here: the std pass still runs
                };
                let dir = tempfile::tempdir().expect("tempdir");
                for len in [3 * ZERO_CHUNK_BYTES + 8 * BLOCK, 5 * BLOCK + 100] {
                    let path = dir.path().join(SPARE_FILE_NAME);
                    std::fs::write(&path, vec![0xa5u8; (len + 3 * BLOCK) as usize])
                        .expect("old bytes");
                    prepare_spare(disk.clone(), path.clone(), len)
                        .await
                        .expect("prepare");
                    let bytes = std::fs::read(&path).expect("read back");
                    assert_eq!(bytes.len() as u64, len, "{choice} len {len}");
                    assert!(bytes.iter().all(|b| *b == 0), "{choice} len {len}");
                }
            }
        });
    }
}
