//! Recovery on open: rebuild the in-memory view of the log from its directory.
//!
//! Steps: read `meta` and `anchor`; list segments; for each sealed segment, validate its
//! header and load its `.index` (rebuilding it by a full scan if missing, damaged or
//! inconsistent); scan the tail segment frame by frame; check that segments are contiguous;
//! drop segments entirely below the anchor (a purge that crashed half-way).
//!
//! *Invariants:* a bad frame at the end of the tail segment with no valid frame after it is a
//! torn write: cut (its header is zeroed and fdatasync'd; logged at `warn`). Any other bad
//! byte — in a sealed segment, or followed by a valid frame — is [`StorageError::Corrupt`]:
//! never silently dropped, because it may hold acknowledged data.
//!
//! *Recycled files:* a segment's data ends at an all-zero header or at a frame whose salt is
//! not the segment's (a stale frame of the file's previous life, see [`super::frame`]); in
//! the tail segment, recovery then checks that no valid frame of *this* salt with a later
//! index follows anywhere in the file (that would be damage, reported as `Corrupt`). The
//! tail segment is fdatasync'd after recovery, so frames it accepted from the page cache
//! (written, never synced, by a process that died) are durable before anyone relies on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::frame::FRAME_HEADER_BYTES;
use super::frame::{decode_frame, skip_padding, FrameError, FRAME_ALIGN_BYTES, FRAME_MAGIC};
use super::index::{decode_index, encode_index, IndexData};
use super::segment::{
    decode_segment_header, index_file_name, parse_segment_name, Segment, SegmentHeader,
    SEGMENT_HEADER_BYTES,
};
use super::LogConfig;
use crate::io::{read_exact_at, Disk, DiskFile};
use crate::meta::{SlotFile, ANCHOR_MAGIC, META_MAGIC};
use crate::StorageError;

/// Name of the opaque meta record file.
pub const META_FILE_NAME: &str = "meta";
/// Name of the anchor (first index/offset) record file.
pub const ANCHOR_FILE_NAME: &str = "anchor";

/// What recovery hands to the log.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Segment>,
    pub(crate) first_index: u64,
    pub(crate) first_offset: u64,
    pub(crate) next_index: u64,
    pub(crate) next_offset: u64,
    pub(crate) meta: Option<Vec<u8>>,
    pub(crate) meta_file: SlotFile,
    pub(crate) anchor_file: SlotFile,
}

pub(crate) fn encode_anchor(index: u64, offset: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&index.to_le_bytes());
    a[8..].copy_from_slice(&offset.to_le_bytes());
    a
}

fn decode_anchor(path: &Path, data: &[u8]) -> Result<(u64, u64), StorageError> {
    let (Some(i), Some(o)) = (data.get(..8), data.get(8..16)) else {
        return Err(StorageError::corrupt(
            path,
            0,
            "anchor record has the wrong length",
        ));
    };
    let mut a = [0u8; 8];
    a.copy_from_slice(i);
    let index = u64::from_le_bytes(a);
    a.copy_from_slice(o);
    Ok((index, u64::from_le_bytes(a)))
}

/// Result of scanning a whole segment buffer.
struct Scan {
    seg: Segment,
    /// Position of a torn tail to truncate at, if any.
    torn_at: Option<u64>,
    /// The data ends at a stale frame (at this position, after any group padding), not at an
    /// all-zero header or the end of the file: recovery writes the end-of-data marker there.
    stale_at: Option<u64>,
}

/// Scans frames in `buf` (a whole segment file). `tail` allows a torn end.
fn scan_segment(
    buf: &[u8],
    mut seg: Segment,
    config: &LogConfig,
    tail: bool,
) -> Result<Scan, StorageError> {
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    let max = config.frame_payload_bytes_max;
    loop {
        // Skip group padding (zeros up to the block boundary), if any: a frame never starts
        // with a zero byte, so this never skips one.
        pos = skip_padding(pos as u64, buf.get(pos..).unwrap_or(&[])) as usize;
        if pos >= buf.len() {
            return Ok(Scan {
                seg,
                torn_at: None,
                stale_at: None,
            });
        }
        match decode_frame(&buf[pos..], max) {
            Ok(f) if f.header.salt != seg.salt => {
                // A stale frame of the file's previous life: the end of this life's data.
                return end_of_data(buf, pos, seg, max, tail, true);
            }
            Ok(f) => {
                let expected = seg.next_index();
                if f.header.index != expected {
                    return Err(StorageError::corrupt(
                        &seg.path,
                        pos as u64,
                        format!("expected frame index {expected}, found {}", f.header.index),
                    ));
                }
                let off = seg.end_offset;
                seg.push_frame(
                    expected,
                    off,
                    f.header.record_count,
                    pos as u64,
                    f.frame_len as u64,
                    config.index_interval_bytes,
                );
                pos += f.frame_len;
            }
            Err(FrameError::EndOfData) => return end_of_data(buf, pos, seg, max, tail, false),
            Err(e) => {
                if !tail {
                    return Err(StorageError::corrupt(
                        &seg.path,
                        pos as u64,
                        format!("invalid frame in a sealed segment: {e}"),
                    ));
                }
                if let Some(later) = valid_frame_after(
                    buf,
                    pos + FRAME_ALIGN_BYTES,
                    seg.next_index(),
                    Some(seg.salt),
                    max,
                ) {
                    return Err(StorageError::corrupt(
                        &seg.path,
                        pos as u64,
                        format!("invalid frame ({e}) followed by a valid frame at byte {later}"),
                    ));
                }
                return Ok(Scan {
                    torn_at: Some(pos as u64),
                    seg,
                    stale_at: None,
                });
            }
        }
    }
}

/// The clean end of a segment's data at `pos` (zeros or a stale frame). In the tail segment,
/// a valid frame of this segment life with a later index anywhere after it is damage.
fn end_of_data(
    buf: &[u8],
    pos: usize,
    seg: Segment,
    max: u32,
    tail: bool,
    stale_end: bool,
) -> Result<Scan, StorageError> {
    if tail {
        if let Some(later) = valid_frame_after(
            buf,
            pos + FRAME_ALIGN_BYTES,
            seg.next_index(),
            Some(seg.salt),
            max,
        ) {
            return Err(StorageError::corrupt(
                &seg.path,
                pos as u64,
                format!("the data ends here, but a valid frame follows at byte {later}"),
            ));
        }
    }
    Ok(Scan {
        seg,
        torn_at: None,
        stale_at: stale_end.then_some(pos as u64),
    })
}

/// First 16-aligned position at or after `from` holding a valid frame with index >=
/// `min_index` (and salt `salt`, if given).
fn valid_frame_after(
    buf: &[u8],
    from: usize,
    min_index: u64,
    salt: Option<u32>,
    max: u32,
) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut pos = from.next_multiple_of(FRAME_ALIGN_BYTES);
    while pos + 4 <= buf.len() {
        if buf[pos..pos + 4] == magic {
            // Cheap header checks first: stale frames of a recycled file fail on the salt.
            let candidate = super::frame::decode_header(&buf[pos..], max)
                .is_ok_and(|h| h.index >= min_index && salt.is_none_or(|s| s == h.salt));
            if candidate && decode_frame(&buf[pos..], max).is_ok() {
                return Some(pos);
            }
        }
        pos += FRAME_ALIGN_BYTES;
    }
    None
}

async fn read_whole(file: &dyn DiskFile, path: &Path) -> Result<Vec<u8>, StorageError> {
    let len = file
        .len()
        .await
        .map_err(|e| StorageError::io("stat", path, e))?;
    let len = usize::try_from(len).map_err(|_| StorageError::corrupt(path, 0, "file too large"))?;
    read_exact_at(file, len, 0)
        .await
        .map_err(|e| StorageError::io("read", path, e))
}

/// Opens and recovers the log in `dir`.
pub(crate) async fn recover(
    disk: &dyn Disk,
    dir: &Path,
    config: &LogConfig,
) -> Result<Recovered, StorageError> {
    disk.create_dir_all(dir)
        .await
        .map_err(|e| StorageError::io("create_dir_all", dir, e))?;
    let (meta_file, meta, c1) = SlotFile::open(disk, &dir.join(META_FILE_NAME), META_MAGIC).await?;
    let anchor_path = dir.join(ANCHOR_FILE_NAME);
    let (anchor_file, anchor, c2) = SlotFile::open(disk, &anchor_path, ANCHOR_MAGIC).await?;
    let (anchor_index, anchor_offset) = match anchor {
        Some(a) => decode_anchor(&anchor_path, &a)?,
        None => (0, 0),
    };
    let names = disk
        .list_dir(dir)
        .await
        .map_err(|e| StorageError::io("list_dir", dir, e))?;
    let bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    let mut dir_dirty = c1 || c2;
    let mut segments: BTreeMap<u64, Segment> = BTreeMap::new();
    for (i, base) in bases.iter().copied().enumerate() {
        let is_tail = i + 1 == bases.len();
        let path = dir.join(super::segment::segment_file_name(base));
        let file = disk
            .open_direct(&path, false)
            .await
            .map_err(|e| StorageError::io("open", &path, e))?;
        let seg = if is_tail {
            match recover_tail(disk, dir, &path, file, base, config).await? {
                Some(seg) => seg,
                None => {
                    dir_dirty = true;
                    continue;
                }
            }
        } else {
            load_sealed(disk, dir, &path, file, base, config, false).await?
        };
        let mut seg = seg;
        let len = seg
            .file
            .len()
            .await
            .map_err(|e| StorageError::io("stat", &path, e))?;
        seg.capacity = recovered_capacity(config, len, seg.end_pos);
        segments.insert(base, seg);
    }
    // Contiguity: each segment starts where the previous one ends. A sealed segment loaded
    // from a stale index gets one more chance with a full scan.
    let keys: Vec<u64> = segments.keys().copied().collect();
    for w in keys.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (b_index, b_offset) = {
            let s = &segments[&b];
            (s.base_index, s.base_offset)
        };
        let ok = |s: &Segment| s.next_index() == b_index && s.end_offset == b_offset;
        if !ok(&segments[&a]) {
            let s = &segments[&a];
            let rescanned =
                load_sealed(disk, dir, &s.path.clone(), s.file.clone(), a, config, true).await?;
            if !ok(&rescanned) {
                return Err(StorageError::corrupt(
                    &rescanned.path,
                    rescanned.end_pos,
                    format!(
                        "segment ends at index {} offset {}, but the next starts at index \
                         {b_index} offset {b_offset}",
                        rescanned.next_index(),
                        rescanned.end_offset
                    ),
                ));
            }
            let mut rescanned = rescanned;
            rescanned.capacity = segments[&a].capacity;
            segments.insert(a, rescanned);
        }
    }
    // Segments entirely below the anchor are leftovers of an interrupted purge.
    let below: Vec<u64> = segments
        .values()
        .filter(|s| {
            s.next_index() <= anchor_index
                && !(s.offsets.is_empty() && s.base_index == anchor_index)
        })
        .map(|s| s.base_index)
        .collect();
    for base in below {
        if let Some(s) = segments.remove(&base) {
            remove_segment_files(disk, dir, &s.path, base).await?;
            dir_dirty = true;
        }
    }
    let (first_index, first_offset, next_index, next_offset) = match (
        segments.values().next(),
        segments.values().next_back(),
    ) {
        (Some(first), Some(last)) => {
            if first.base_index > anchor_index {
                return Err(StorageError::corrupt(
                    &first.path,
                    0,
                    format!(
                        "the first segment starts at index {}, after the first index {anchor_index}",
                        first.base_index
                    ),
                ));
            }
            let fo = first.offset_of(anchor_index).unwrap_or(last.end_offset);
            (anchor_index, fo, last.next_index(), last.end_offset)
        }
        _ => (anchor_index, anchor_offset, anchor_index, anchor_offset),
    };
    if dir_dirty {
        disk.sync_dir(dir)
            .await
            .map_err(|e| StorageError::io("fsync dir", dir, e))?;
    }
    Ok(Recovered {
        segments,
        first_index,
        first_offset,
        next_index,
        next_offset,
        meta,
        meta_file,
        anchor_file,
    })
}

pub(crate) async fn remove_segment_files(
    disk: &dyn Disk,
    dir: &Path,
    path: &Path,
    base: u64,
) -> Result<(), StorageError> {
    disk.remove_file(path)
        .await
        .map_err(|e| StorageError::io("remove", path, e))?;
    remove_index_file(disk, dir, base).await
}

pub(crate) async fn remove_index_file(
    disk: &dyn Disk,
    dir: &Path,
    base: u64,
) -> Result<(), StorageError> {
    let ipath = dir.join(index_file_name(base));
    match disk.remove_file(&ipath).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", ipath, e)),
    }
}

async fn read_header(
    file: &dyn DiskFile,
    path: &Path,
) -> Result<Result<SegmentHeader, String>, StorageError> {
    let (n, buf) = file
        .read_at(vec![0u8; SEGMENT_HEADER_BYTES as usize], 0)
        .await
        .map_err(|e| StorageError::io("read", path, e))?;
    Ok(decode_segment_header(&buf[..n]))
}

/// Loads a sealed segment from its index, or by a full scan (`force_scan`, or a bad index).
async fn load_sealed(
    disk: &dyn Disk,
    dir: &Path,
    path: &Path,
    file: Arc<dyn DiskFile>,
    base: u64,
    config: &LogConfig,
    force_scan: bool,
) -> Result<Segment, StorageError> {
    let h = read_header(file.as_ref(), path)
        .await?
        .map_err(|r| StorageError::corrupt(path, 0, r))?;
    if h.base_index != base {
        return Err(StorageError::corrupt(
            path,
            0,
            format!("segment header says base index {}", h.base_index),
        ));
    }
    let ipath = dir.join(index_file_name(base));
    if !force_scan {
        match load_index(disk, &ipath, file.as_ref(), h).await {
            Ok(d) => {
                let mut seg = Segment::new(h, path.to_path_buf(), file);
                seg.offsets = d.offsets;
                seg.end_offset = d.end_offset;
                seg.sparse = d.sparse;
                seg.end_pos = d.end_pos;
                return Ok(seg);
            }
            Err(reason) => {
                tracing::warn!(path = %ipath.display(), %reason, "rebuilding segment index");
            }
        }
    }
    let buf = read_whole(file.as_ref(), path).await?;
    let scan = scan_segment(
        &buf,
        Segment::new(h, path.to_path_buf(), file),
        config,
        false,
    )?;
    write_index(disk, dir, &scan.seg).await;
    Ok(scan.seg)
}

async fn load_index(
    disk: &dyn Disk,
    ipath: &Path,
    seg_file: &dyn DiskFile,
    h: SegmentHeader,
) -> Result<IndexData, String> {
    let f = disk
        .open(ipath, false)
        .await
        .map_err(|e| format!("cannot open: {e}"))?;
    let len = f.len().await.map_err(|e| e.to_string())?;
    let buf = read_exact_at(f.as_ref(), len as usize, 0)
        .await
        .map_err(|e| e.to_string())?;
    let d = decode_index(&buf)?;
    if d.base_index != h.base_index || d.base_offset != h.base_offset || d.salt != h.salt {
        return Err("index belongs to another segment (or another life of its file)".into());
    }
    let seg_len = seg_file.len().await.map_err(|e| e.to_string())?;
    if d.end_pos > seg_len {
        return Err("index ends past the segment file".into());
    }
    Ok(d)
}

/// Writes a segment's index file (best effort, not synced: it can be rebuilt).
pub(crate) async fn write_index(disk: &dyn Disk, dir: &Path, seg: &Segment) {
    let ipath = dir.join(index_file_name(seg.base_index));
    let data = encode_index(&IndexData {
        base_index: seg.base_index,
        base_offset: seg.base_offset,
        offsets: seg.offsets.clone(),
        end_offset: seg.end_offset,
        sparse: seg.sparse.clone(),
        end_pos: seg.end_pos,
        salt: seg.salt,
    });
    let res = async {
        let f = disk.open(&ipath, true).await?;
        f.set_len(0).await?;
        f.write_all_at(data, 0).await?;
        std::io::Result::Ok(())
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(path = %ipath.display(), error = %e, "cannot write segment index; it will be rebuilt");
    }
}

/// Recovers the tail segment; `None` if it was a torn creation and has been removed.
async fn recover_tail(
    disk: &dyn Disk,
    dir: &Path,
    path: &Path,
    file: Arc<dyn DiskFile>,
    base: u64,
    config: &LogConfig,
) -> Result<Option<Segment>, StorageError> {
    let buf = read_whole(file.as_ref(), path).await?;
    let h = match decode_segment_header(&buf) {
        Ok(h) => h,
        Err(reason) => {
            let magic = super::segment::SEGMENT_MAGIC.to_le_bytes();
            if buf.len() > 4
                && buf[0..4] == magic
                && buf[4] != super::segment::SEGMENT_VERSION
                && buf[4] != 0
            {
                // Another format version (not a torn header): never delete it.
                return Err(StorageError::corrupt(path, 0, reason));
            }
            // Recycled files get their new header durably before they are renamed into
            // place, so a segment with a bad header is either a never-written one (zeros)
            // or damaged: any valid frame in it says damaged.
            if let Some(at) = valid_frame_after(
                &buf,
                SEGMENT_HEADER_BYTES as usize,
                0,
                None,
                config.frame_payload_bytes_max,
            ) {
                return Err(StorageError::corrupt(
                    path,
                    0,
                    format!("{reason}, but a valid frame follows at byte {at}"),
                ));
            }
            tracing::warn!(path = %path.display(), %reason, "removing a torn, never-written tail segment");
            remove_segment_files(disk, dir, path, base).await?;
            return Ok(None);
        }
    };
    if h.base_index != base {
        return Err(StorageError::corrupt(
            path,
            0,
            format!("segment header says base index {}", h.base_index),
        ));
    }
    // A stale index of the tail segment must not be trusted later; it is rewritten on seal.
    remove_index_file(disk, dir, base).await?;
    let scan = scan_segment(
        &buf,
        Segment::new(h, path.to_path_buf(), file.clone()),
        config,
        true,
    )?;
    let marker_at = match scan.torn_at {
        Some(at) => {
            tracing::warn!(
                path = %path.display(),
                position = at,
                next_index = scan.seg.next_index(),
                "cutting a torn tail"
            );
            Some(at)
        }
        None => scan.stale_at,
    };
    // The end-of-data marker (an all-zero frame header) over the torn frame or the stale
    // bytes, and the group padding after the last frame: zeros from the end of data up to the
    // block boundary past the marker, so the next group (written at the next block boundary)
    // continues a sequence that readers can follow, and the data ends at zeros. Written
    // rather than shrinking the file: a recycled or pre-zeroed segment keeps its full size,
    // and once sealed it scans to a clean end. No valid frame of this life follows (checked by
    // the scan). Zeros that are already there are not rewritten: the block holding the last
    // acknowledged frames is written only if its padding is not zeros (a file written before
    // group padding).
    let end_pos = scan.seg.end_pos;
    let zero_to = (marker_at.unwrap_or(end_pos).max(end_pos) + FRAME_HEADER_BYTES as u64)
        .next_multiple_of(crate::io::BLOCK_BYTES as u64)
        .min(buf.len() as u64);
    if let Some(range) = dirty_range(&buf, end_pos, zero_to) {
        file.write_all_at(vec![0u8; (range.end - range.start) as usize], range.start)
            .await
            .map_err(|e| StorageError::io("write", path, e))?;
    }
    // Whatever the scan accepted may so far exist only in the page cache (a process that
    // died between its write and its fdatasync): make it durable before it is reported so.
    file.sync_data()
        .await
        .map_err(|e| StorageError::io("fdatasync", path, e))?;
    Ok(Some(scan.seg))
}

/// The smallest range within `[from, to)` of `buf` that covers its non-zero bytes, if any.
fn dirty_range(buf: &[u8], from: u64, to: u64) -> Option<std::ops::Range<u64>> {
    let (from, to) = (from as usize, (to as usize).min(buf.len()));
    let region = buf.get(from..to)?;
    let first = region.iter().position(|b| *b != 0)?;
    let last = region.iter().rposition(|b| *b != 0)?;
    Some((from + first) as u64..(from + last + 1) as u64)
}

/// The capacity of a recovered segment whose file is `len` bytes with data up to `end_pos`:
/// its file's size, rounded up to a planned segment size holding the data and the end-of-data
/// marker (a pre-zeroed or recycled file is exactly its capacity; a file created in place,
/// or shrunk by a truncation, grows again up to it).
pub(crate) fn recovered_capacity(config: &LogConfig, len: u64, end_pos: u64) -> u64 {
    len.max(config.segment_bytes_holding(end_pos + FRAME_HEADER_BYTES as u64))
}

/// Paths used by the log directory.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(super::segment::segment_file_name(base))
}
