//! The per-segment `.index` file, written when a segment is sealed and on close.
//!
//! ```text
//! header (64 bytes) = magic u32 "TBIX" | version u32 | base_index u64 | base_offset u64
//!                     | frame_count u64 | end_pos u64 | end_offset u64 | sparse_count u64
//!                     | salt u64 (the segment life's salt: binds the index to one life)
//! record_count u32 × frame_count         (dense: rebuilds every frame's offset)
//! (index u64, offset u64, pos u64) × sparse_count   (every index_interval_bytes)
//! crc32c u32 over everything before it
//! ```
//!
//! *Design notes:* the file is not fsynced: it can always be rebuilt by scanning its segment,
//! which recovery does whenever it is missing, fails its checksum or disagrees with the
//! segment (e.g. a stale copy that survived a crash).

/// `"TBIX"` little-endian.
pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"TBIX");
/// Index format version.
pub const INDEX_VERSION: u32 = 2;
const HEADER_BYTES: usize = 64;

/// The decoded contents of an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexData {
    /// First index of the segment.
    pub base_index: u64,
    /// First offset of the segment.
    pub base_offset: u64,
    /// Base offset of each frame.
    pub offsets: Vec<u64>,
    /// Offset after the last frame.
    pub end_offset: u64,
    /// Sparse `(index, pos)` entries.
    pub sparse: Vec<(u64, u64)>,
    /// End of valid data.
    pub end_pos: u64,
    /// Salt of the segment life the index describes.
    pub salt: u32,
}

/// Encodes an index file.
pub fn encode_index(d: &IndexData) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + d.offsets.len() * 4 + d.sparse.len() * 24 + 4);
    out.extend_from_slice(&INDEX_MAGIC.to_le_bytes());
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    for v in [
        d.base_index,
        d.base_offset,
        d.offsets.len() as u64,
        d.end_pos,
        d.end_offset,
        d.sparse.len() as u64,
        u64::from(d.salt),
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, off) in d.offsets.iter().enumerate() {
        let next = d.offsets.get(i + 1).copied().unwrap_or(d.end_offset);
        let count = u32::try_from(next.saturating_sub(*off)).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
    }
    for (idx, pos) in &d.sparse {
        let off = idx
            .checked_sub(d.base_index)
            .and_then(|i| d.offsets.get(i as usize))
            .copied()
            .unwrap_or(0);
        for v in [*idx, off, *pos] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (a, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*a))
    }
    fn u64(&mut self) -> Option<u64> {
        let (a, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*a))
    }
}

/// Decodes and verifies an index file; `Err` says why it must be rebuilt. Never panics.
pub fn decode_index(buf: &[u8]) -> Result<IndexData, String> {
    let Some((body, crc)) = buf.split_last_chunk::<4>() else {
        return Err("index file too short".into());
    };
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err("index checksum mismatch".into());
    }
    let mut r = Rd(body);
    let bad = || "index truncated".to_string();
    if r.u32().ok_or_else(bad)? != INDEX_MAGIC || r.u32().ok_or_else(bad)? != INDEX_VERSION {
        return Err("bad index magic or version".into());
    }
    let base_index = r.u64().ok_or_else(bad)?;
    let base_offset = r.u64().ok_or_else(bad)?;
    let frame_count = r.u64().ok_or_else(bad)?;
    let end_pos = r.u64().ok_or_else(bad)?;
    let end_offset = r.u64().ok_or_else(bad)?;
    let sparse_count = r.u64().ok_or_else(bad)?;
    let salt = u32::try_from(r.u64().ok_or_else(bad)?).map_err(|_| "bad index salt")?;
    let expect = frame_count
        .checked_mul(4)
        .and_then(|a| sparse_count.checked_mul(24).and_then(|b| a.checked_add(b)));
    if expect != Some(r.0.len() as u64) {
        return Err("index length does not match its counts".into());
    }
    let mut offsets = Vec::with_capacity(frame_count as usize);
    let mut off = base_offset;
    for _ in 0..frame_count {
        offsets.push(off);
        off = off
            .checked_add(u64::from(r.u32().ok_or_else(bad)?))
            .ok_or("index offset overflow")?;
    }
    if off != end_offset {
        return Err("index record counts do not add up to end_offset".into());
    }
    let mut sparse = Vec::with_capacity(sparse_count as usize);
    for _ in 0..sparse_count {
        let idx = r.u64().ok_or_else(bad)?;
        let _off = r.u64().ok_or_else(bad)?;
        let pos = r.u64().ok_or_else(bad)?;
        if idx < base_index || idx - base_index >= frame_count || pos >= end_pos {
            return Err("index entry out of range".into());
        }
        sparse.push((idx, pos));
    }
    Ok(IndexData {
        base_index,
        base_offset,
        offsets,
        end_offset,
        sparse,
        end_pos,
        salt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_damage() {
        let d = IndexData {
            base_index: 10,
            base_offset: 100,
            offsets: vec![100, 103, 103, 110],
            end_offset: 111,
            sparse: vec![(10, 32), (12, 4096)],
            end_pos: 9000,
            salt: 77,
        };
        let enc = encode_index(&d);
        assert_eq!(decode_index(&enc), Ok(d));
        for i in 0..enc.len() {
            let mut b = enc.clone();
            b[i] ^= 0x10;
            assert!(decode_index(&b).is_err());
        }
        assert!(decode_index(&enc[..enc.len() - 1]).is_err());
        assert!(decode_index(&[]).is_err());
    }
}
