//! The frame format: a 32-byte little-endian header plus an opaque, zero-padded payload.
//!
//! ```text
//! off size field
//!   0    4 magic           FRAME_MAGIC ("TBFR")
//!   4    1 version         FRAME_VERSION
//!   5    1 flags           0 (reserved for future use)
//!   6    2 reserved        0
//!   8    4 payload_len     bytes of payload (padding excluded)
//!  12    4 record_count    records in the payload (dense offsets; may be 0)
//!  16    8 index           log index of this frame
//!  24    4 salt            the segment's salt (see below), in clear
//!  28    4 crc32c          over the payload (no padding), then header bytes 0..28 (salt incl.)
//!  32    …  payload, then zeros up to the next 16-byte boundary
//! ```
//!
//! *Invariants:* every frame starts at a 16-aligned file position, so every payload does too
//! (zero-copy rkyv access); an all-zero header marks the end of data (a pre-zeroed tail).
//!
//! *Design notes:* the CRC covers the payload because rkyv validation cannot notice flipped
//! payload bytes; it also covers the index, so a frame copied to the wrong place fails too.
//! Version 2 added the *salt*: a random per-segment value from the segment header. Segment
//! files are recycled (a purged segment's file becomes a later segment), so a file holds
//! stale frames of its previous life past the end of the current data; those carry another
//! salt, so a reader that checks `header.salt` against its segment's salt (the CRC covers the
//! salt, so a bit flip cannot forge a match) sees the end of data there, never a frame.
//! Version 1 (no salt; CRC at byte 24) is not readable by this version.

/// Frame header length in bytes.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Alignment of frames and payloads in segment files and read buffers.
pub const FRAME_ALIGN_BYTES: usize = 16;
/// `"TBFR"` little-endian.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TBFR");
/// Current frame format version.
pub const FRAME_VERSION: u8 = 2;

/// Why a byte range is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header is all zeros: end of data (preallocated or never-written tail).
    #[error("end of data (all-zero header)")]
    EndOfData,
    /// Fewer bytes than the header or the full frame.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The magic number does not match.
    #[error("bad frame magic {found:#010x}")]
    BadMagic {
        /// Magic found.
        found: u32,
    },
    /// Unknown format version.
    #[error("unsupported frame version {found}")]
    BadVersion {
        /// Version found.
        found: u8,
    },
    /// Reserved header bits are not zero.
    #[error("reserved frame header fields are not zero")]
    BadReserved,
    /// Payload length above the configured maximum.
    #[error("frame payload_len {len} exceeds the maximum {max}")]
    TooLarge {
        /// Declared payload length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// CRC mismatch.
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length (padding excluded).
    pub payload_len: u32,
    /// Records in the payload.
    pub record_count: u32,
    /// Log index.
    pub index: u64,
    /// The salt of the segment the frame was written for.
    pub salt: u32,
    /// Stored CRC32C.
    pub crc: u32,
}

impl FrameHeader {
    /// Total on-disk length of the frame: header + payload + padding.
    pub fn frame_len(&self) -> u64 {
        frame_len(self.payload_len as usize) as u64
    }
}

/// A decoded frame borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedFrame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The payload (padding excluded).
    pub payload: &'a [u8],
    /// Bytes consumed: header + payload + padding.
    pub frame_len: usize,
}

/// On-disk length of a frame with a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_BYTES + pad16(payload_len)
}

/// Rounds up to a multiple of 16.
pub(crate) fn pad16(n: usize) -> usize {
    n.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Bytes of the header covered by the CRC (everything before it).
const CRC_AT: usize = 28;

fn header_prefix(payload_len: u32, record_count: u32, index: u64, salt: u32) -> [u8; CRC_AT] {
    let mut h = [0u8; CRC_AT];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4] = FRAME_VERSION;
    h[8..12].copy_from_slice(&payload_len.to_le_bytes());
    h[12..16].copy_from_slice(&record_count.to_le_bytes());
    h[16..24].copy_from_slice(&index.to_le_bytes());
    h[24..28].copy_from_slice(&salt.to_le_bytes());
    h
}

/// CRC32C of a payload, for [`encode_frame_salted`] (computed once, by the appender).
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// Appends one encoded frame (header, payload, zero padding) to `out`.
///
/// `out.len()` should be a multiple of 16 on entry so the payload lands 16-aligned.
///
/// # Panics
/// If `payload.len()` does not fit in a `u32` (callers check `frame_payload_bytes_max` first).
///
/// ```
/// use taskbroker_storage::log::frame::{decode_frame, encode_frame};
/// let mut buf = Vec::new();
/// encode_frame(&mut buf, 7, 3, b"hello");
/// let f = decode_frame(&buf, 1024).unwrap();
/// assert_eq!((f.header.index, f.header.record_count, f.payload), (7, 3, &b"hello"[..]));
/// assert_eq!(buf.len(), 48);
/// ```
pub fn encode_frame(out: &mut Vec<u8>, index: u64, record_count: u32, payload: &[u8]) {
    encode_frame_salted(out, 0, index, record_count, payload, payload_crc(payload));
}

/// Appends one encoded frame of a segment with salt `salt`; `payload_crc` must be
/// [`payload_crc`]`(payload)` (precomputed so the CRC pass over the payload happens outside
/// the writer, which only continues it over the 28 header bytes).
///
/// # Panics
/// If `payload.len()` does not fit in a `u32` (callers check `frame_payload_bytes_max` first).
pub fn encode_frame_salted(
    out: &mut Vec<u8>,
    salt: u32,
    index: u64,
    record_count: u32,
    payload: &[u8],
    payload_crc: u32,
) {
    let header = frame_header(salt, index, record_count, payload, payload_crc);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let pad = pad16(payload.len()) - payload.len();
    out.extend_from_slice(&[0u8; FRAME_ALIGN_BYTES][..pad]);
}

/// [`encode_frame_salted`] into a block-aligned buffer (the writer's direct-I/O buffer).
pub(crate) fn encode_frame_aligned(
    out: &mut crate::io::AlignedBuf,
    salt: u32,
    index: u64,
    record_count: u32,
    payload: &[u8],
    payload_crc: u32,
) {
    let header = frame_header(salt, index, record_count, payload, payload_crc);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    let pad = pad16(payload.len()) - payload.len();
    out.extend_from_slice(&[0u8; FRAME_ALIGN_BYTES][..pad]);
}

fn frame_header(
    salt: u32,
    index: u64,
    record_count: u32,
    payload: &[u8],
    payload_crc: u32,
) -> [u8; FRAME_HEADER_BYTES] {
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let prefix = header_prefix(len, record_count, index, salt);
    // Payload first: the appender's CRC pass is continued over the header, no combine step.
    let crc = crc32c::crc32c_append(payload_crc, &prefix);
    let mut h = [0u8; FRAME_HEADER_BYTES];
    h[..CRC_AT].copy_from_slice(&prefix);
    h[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Group padding (see [`super::segment`]): if `pos` (just past a frame) is not block-aligned
/// and `rest` (the bytes from `pos` on) is all zeros up to the next block boundary, the next
/// frame, if any, starts at that boundary: returns it. Otherwise the next frame (or the end of
/// data) is at `pos`: returns `pos`. Unambiguous because a frame never starts with a zero
/// byte (its magic). `rest` shorter than the gap: `pos`.
pub(crate) fn skip_padding(pos: u64, rest: &[u8]) -> u64 {
    let block = crate::io::BLOCK_BYTES as u64;
    let next = pos.next_multiple_of(block);
    let gap = (next - pos) as usize;
    if gap == 0 || rest.len() < gap || rest[..gap].iter().any(|b| *b != 0) {
        return pos;
    }
    next
}

/// Parses and validates only the header (no CRC check: that needs the payload).
pub fn decode_header(buf: &[u8], payload_bytes_max: u32) -> Result<FrameHeader, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        if !buf.is_empty() && buf.iter().all(|b| *b == 0) {
            return Err(FrameError::EndOfData);
        }
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: buf.len(),
        });
    }
    let h = &buf[..FRAME_HEADER_BYTES];
    if h.iter().all(|b| *b == 0) {
        return Err(FrameError::EndOfData);
    }
    let magic = le_u32(h, 0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if h[4] != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: h[4] });
    }
    if h[5] != 0 || h[6] != 0 || h[7] != 0 {
        return Err(FrameError::BadReserved);
    }
    let payload_len = le_u32(h, 8);
    if payload_len > payload_bytes_max {
        return Err(FrameError::TooLarge {
            len: payload_len,
            max: payload_bytes_max,
        });
    }
    Ok(FrameHeader {
        payload_len,
        record_count: le_u32(h, 12),
        index: le_u64(h, 16),
        salt: le_u32(h, 24),
        crc: le_u32(h, CRC_AT),
    })
}

/// Decodes and verifies the frame at the start of `buf`. Never panics, whatever the bytes.
///
/// ```
/// use taskbroker_storage::log::frame::{decode_frame, FrameError};
/// assert_eq!(decode_frame(&[0u8; 32], 1024), Err(FrameError::EndOfData));
/// assert!(matches!(decode_frame(&[0xff; 40], 1024), Err(FrameError::BadMagic { .. })));
/// ```
pub fn decode_frame(buf: &[u8], payload_bytes_max: u32) -> Result<DecodedFrame<'_>, FrameError> {
    let header = decode_header(buf, payload_bytes_max)?;
    let payload_len = header.payload_len as usize;
    let total = frame_len(payload_len);
    if buf.len() < total {
        return Err(FrameError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(payload), &buf[..CRC_AT]);
    if crc != header.crc {
        return Err(FrameError::BadChecksum {
            stored: header.crc,
            computed: crc,
        });
    }
    Ok(DecodedFrame {
        header,
        payload,
        frame_len: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_padding() {
        for len in [0usize, 1, 15, 16, 17, 100] {
            let payload = vec![0xab; len];
            let mut buf = Vec::new();
            encode_frame(&mut buf, 42, 9, &payload);
            assert_eq!(buf.len(), frame_len(len));
            assert_eq!(buf.len() % 16, 0);
            let f = decode_frame(&buf, 1 << 20).unwrap();
            assert_eq!(f.payload, &payload[..]);
            assert_eq!(f.header.index, 42);
            assert_eq!(f.frame_len, buf.len());
            let mut salted = Vec::new();
            encode_frame_salted(
                &mut salted,
                0xdead_beef,
                42,
                9,
                &payload,
                payload_crc(&payload),
            );
            let f = decode_frame(&salted, 1 << 20).unwrap();
            assert_eq!((f.header.salt, f.payload), (0xdead_beef, &payload[..]));
            // The salt is covered by the CRC: a stale frame cannot be re-salted by a flip.
            salted[24] ^= 1;
            assert!(matches!(
                decode_frame(&salted, 1 << 20),
                Err(FrameError::BadChecksum { .. })
            ));
        }
    }

    #[test]
    fn detects_flips_and_limits() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 1, 1, b"payload bytes");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            // Flips in padding are harmless only where padding is not checked: payload padding.
            let padding = (FRAME_HEADER_BYTES + 13..buf.len()).contains(&i);
            assert_eq!(decode_frame(&b, 1024).is_ok(), padding, "byte {i}");
        }
        assert!(matches!(
            decode_frame(&buf, 4),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            decode_frame(&buf[..40], 1024),
            Err(FrameError::Truncated { .. })
        ));
    }
}
