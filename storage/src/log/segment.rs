//! Segment files: naming, the 32-byte segment header, and the in-memory view of a segment.
//!
//! ```text
//! segment header (32 bytes) = magic u32 "TBSG" | version u8 | 3 reserved | base_index u64
//!                             | base_offset u64 | salt u32 | crc32c u32 (over bytes 0..28)
//! ```
//!
//! The *salt* (version 2) is drawn at random ([`crate::io::Disk::random_u64`]) for every
//! segment life and written into every frame of the segment (see [`super::frame`]): segment
//! files are recycled, and frames of a file's previous life carry another salt, so they read
//! as the end of data.
//!
//! *Group padding (block-aligned group commits):* each group commit starts at a fresh 4 KiB
//! block ([`crate::io::BLOCK_BYTES`]) and is written as whole blocks (`O_DIRECT`), ending in
//! zeros: the last frame of a group is followed by zeros up to the next block boundary (and,
//! if it ends on a boundary, by one whole zero block: the end-of-data marker). So a block that
//! holds acknowledged frames is never written again by a later append, and a torn write of a
//! group (even one that garbles whole 4 KiB blocks) can only damage that group's own,
//! unacknowledged frames. Readers skip the padding: after a frame ending at `p`, if the bytes
//! up to the next block boundary `b` are all zero, the next frame (if any) is at `b`
//! (`super::frame::skip_padding`); a frame never starts with a zero byte, so this is
//! unambiguous. Space cost: up to 4 KiB - 16 bytes per group commit (see `BENCHMARKS.md`).
//! Files written before padding (frames back to back) read the same way.
//!
//! *Invariants:* a segment knows its first index and offset without reading earlier segments;
//! frames follow the header back to back within a group, each at a 16-aligned position; after
//! the last frame (`end_pos`) the bytes up to the block boundary past `end_pos + 32` are zeros
//! on disk (the next group is written at `end_pos` rounded up to a block); `offsets` is dense
//! (one entry per frame) so offset lookups and truncation points need no I/O, while file
//! positions are kept sparsely (`sparse`, every `index_interval_bytes`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::io::DiskFile;

/// Length of the segment header; frames start here.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// `"TBSG"` little-endian.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"TBSG");
/// Current segment format version.
pub const SEGMENT_VERSION: u8 = 2;

/// `<base index, 20 digits>.log`.
pub fn segment_file_name(base_index: u64) -> String {
    format!("{base_index:020}.log")
}

/// `<base index, 20 digits>.index`.
pub fn index_file_name(base_index: u64) -> String {
    format!("{base_index:020}.index")
}

/// Parses a segment file name back to its base index.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Index of the segment's first frame.
    pub base_index: u64,
    /// Offset of the segment's first frame.
    pub base_offset: u64,
    /// The salt every frame of this segment life carries.
    pub salt: u32,
}

/// Encodes a segment header.
pub fn encode_segment_header(h: SegmentHeader) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    b[4] = SEGMENT_VERSION;
    b[8..16].copy_from_slice(&h.base_index.to_le_bytes());
    b[16..24].copy_from_slice(&h.base_offset.to_le_bytes());
    b[24..28].copy_from_slice(&h.salt.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes and verifies a segment header.
pub fn decode_segment_header(buf: &[u8]) -> Result<SegmentHeader, String> {
    if buf.len() < SEGMENT_HEADER_BYTES as usize {
        return Err(format!("segment header truncated ({} bytes)", buf.len()));
    }
    let mut w4 = [0u8; 4];
    w4.copy_from_slice(&buf[0..4]);
    if u32::from_le_bytes(w4) != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    if buf[4] != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {}", buf[4]));
    }
    w4.copy_from_slice(&buf[28..32]);
    if crc32c::crc32c(&buf[0..28]) != u32::from_le_bytes(w4) {
        return Err("segment header checksum mismatch".into());
    }
    let mut w8 = [0u8; 8];
    w8.copy_from_slice(&buf[8..16]);
    let base_index = u64::from_le_bytes(w8);
    w8.copy_from_slice(&buf[16..24]);
    let base_offset = u64::from_le_bytes(w8);
    w4.copy_from_slice(&buf[24..28]);
    Ok(SegmentHeader {
        base_index,
        base_offset,
        salt: u32::from_le_bytes(w4),
    })
}

/// The in-memory view of one segment (registered frames only: written to the file).
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) base_index: u64,
    pub(crate) base_offset: u64,
    /// Salt of this segment life: frames with another salt are stale (end of data).
    pub(crate) salt: u32,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<dyn DiskFile>,
    /// Base offset of every frame, dense.
    pub(crate) offsets: Vec<u64>,
    /// Offset after the last frame.
    pub(crate) end_offset: u64,
    /// `(index, file position)` every `index_interval_bytes`, always including the first frame.
    pub(crate) sparse: Vec<(u64, u64)>,
    /// End of valid data (the next frame's position).
    pub(crate) end_pos: u64,
    /// Bytes the segment may hold before the log rolls to the next one (segments grow:
    /// see `LogConfig::segment_bytes_min`): its file's size when it was created (or
    /// recycled), or on recovery its file's size rounded up to a planned segment size.
    pub(crate) capacity: u64,
}

impl Segment {
    pub(crate) fn new(h: SegmentHeader, path: PathBuf, file: Arc<dyn DiskFile>) -> Self {
        let (base_index, base_offset) = (h.base_index, h.base_offset);
        Segment {
            base_index,
            base_offset,
            salt: h.salt,
            path,
            file,
            offsets: Vec::new(),
            end_offset: base_offset,
            sparse: Vec::new(),
            end_pos: SEGMENT_HEADER_BYTES,
            capacity: 0,
        }
    }

    pub(crate) fn next_index(&self) -> u64 {
        self.base_index + self.offsets.len() as u64
    }

    /// Registers a frame written at `pos` with on-disk length `len`.
    pub(crate) fn push_frame(
        &mut self,
        index: u64,
        offset: u64,
        count: u32,
        pos: u64,
        len: u64,
        interval: u32,
    ) {
        debug_assert_eq!(index, self.next_index());
        self.offsets.push(offset);
        self.end_offset = offset + u64::from(count);
        let due = self
            .sparse
            .last()
            .is_none_or(|(_, p)| pos - p >= u64::from(interval));
        if due {
            self.sparse.push((index, pos));
        }
        self.end_pos = pos + len;
    }

    /// The sparse entry at or before `index`: where to start scanning for it.
    pub(crate) fn scan_start(&self, index: u64) -> (u64, u64) {
        let i = self.sparse.partition_point(|(idx, _)| *idx <= index);
        if i == 0 {
            (self.base_index, SEGMENT_HEADER_BYTES)
        } else {
            self.sparse[i - 1]
        }
    }

    /// Base offset of frame `index` (which must be in this segment).
    pub(crate) fn offset_of(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(self.base_index)?;
        self.offsets.get(usize::try_from(i).ok()?).copied()
    }

    /// Drops frames `>= from`, whose first byte is at `pos`.
    pub(crate) fn truncate_frames(&mut self, from: u64, pos: u64) {
        if let Some(off) = self.offset_of(from) {
            self.end_offset = off;
        }
        let keep = from.saturating_sub(self.base_index) as usize;
        self.offsets.truncate(keep);
        self.sparse.retain(|(idx, _)| *idx < from);
        self.end_pos = pos;
    }

    /// Frame whose `[base_offset, base_offset + count)` contains `offset`, if any.
    pub(crate) fn locate(&self, offset: u64) -> Option<(u64, u64)> {
        let j = self.offsets.partition_point(|o| *o <= offset);
        if j == 0 {
            return None;
        }
        let i = j - 1;
        let start = self.offsets[i];
        let end = self.offsets.get(i + 1).copied().unwrap_or(self.end_offset);
        (offset < end).then_some((self.base_index + i as u64, start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_header() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        let sh = SegmentHeader {
            base_index: 5,
            base_offset: 77,
            salt: 0x1234_5678,
        };
        let h = encode_segment_header(sh);
        assert_eq!(decode_segment_header(&h), Ok(sh));
        for i in 0..32 {
            let mut bad = h;
            bad[i] ^= 1;
            assert!(decode_segment_header(&bad).is_err(), "byte {i}");
        }
    }
}
