//! The fixed 48-byte little-endian batch header.

use super::BatchError;

/// Length of the fixed header in bytes. A multiple of [`BODY_ALIGN`], so a buffer whose start is
/// 16-byte aligned also has a 16-byte aligned body.
pub const BATCH_HEADER_LEN: usize = 48;

/// Alignment, in bytes, that the body must have in memory to be accessed in place.
///
/// The archived records need at most 8; 16 leaves room for future fields (e.g. `u128`).
pub const BODY_ALIGN: usize = 16;

/// The four magic bytes every batch starts with.
pub const BATCH_MAGIC: [u8; 4] = *b"TBRB";

/// The only format version this crate writes and reads.
pub const BATCH_FORMAT_VERSION: u8 = 1;

/// Flag bits defined by format version 1: none. Unknown bits are rejected because a future flag
/// (e.g. compression) would change how the body must be read.
pub const BATCH_FLAGS_KNOWN: u8 = 0;

// Byte offsets of the header fields. Any change here is a new format version.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_FLAGS: usize = 5;
const OFF_RESERVED_A: usize = 6; // u16
const OFF_BODY_LEN: usize = 8;
const OFF_CRC: usize = 12;
const OFF_RECORD_COUNT: usize = 16;
const OFF_RESERVED_B: usize = 20; // u32
const OFF_BASE_TIMESTAMP: usize = 24;
const OFF_PRODUCER_ID: usize = 32;
const OFF_FIRST_SEQUENCE: usize = 40;

/// The decoded header of a record batch.
///
/// On the wire (all integers little-endian):
///
/// | Offset | Size | Field |
/// |---:|---:|---|
/// | 0 | 4 | magic `b"TBRB"` |
/// | 4 | 1 | format version (1) |
/// | 5 | 1 | flags (none defined in version 1) |
/// | 6 | 2 | reserved, zero |
/// | 8 | 4 | `body_len` |
/// | 12 | 4 | `crc32c` |
/// | 16 | 4 | `record_count` |
/// | 20 | 4 | reserved, zero |
/// | 24 | 8 | `base_timestamp_ms` |
/// | 32 | 8 | `producer_id` |
/// | 40 | 8 | `first_sequence` |
///
/// The CRC32C covers every byte of the batch except the CRC field itself: header bytes
/// `0..12`, then `16..48`, then the body. See [`batch_crc32c`].
///
/// # Example
///
/// Reading a batch from a stream: decode the header first to learn how many bytes follow.
///
/// ```
/// use taskbroker_client::batch::{BatchBuilder, BatchHeader, BATCH_HEADER_LEN};
///
/// let batch = BatchBuilder::new(7, 0, 1_700_000_000_000).finish();
/// let header = BatchHeader::decode(&batch.as_bytes()[..BATCH_HEADER_LEN])?;
/// assert_eq!(header.producer_id, 7);
/// assert_eq!(header.total_len(), batch.as_bytes().len());
/// # Ok::<(), taskbroker_client::batch::BatchError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchHeader {
    /// Number of records in the body.
    pub record_count: u32,
    /// The producer's wall-clock time in ms since the Unix epoch, supplied by the caller; record
    /// timestamps are stored as deltas from it.
    pub base_timestamp_ms: u64,
    /// Idempotent producer id.
    pub producer_id: u64,
    /// Sequence number of the first record; the batch covers
    /// `first_sequence .. first_sequence + record_count`.
    pub first_sequence: u64,
    /// Flag bits (none defined in format version 1).
    pub flags: u8,
    /// Length of the body in bytes (the rkyv archive after the header).
    pub body_len: u32,
    /// CRC32C of the batch without the CRC field (see [`batch_crc32c`]).
    pub crc32c: u32,
}

impl BatchHeader {
    /// Decodes and checks a header: length, magic, version, flags, reserved fields and the
    /// sequence range. Reads only the first [`BATCH_HEADER_LEN`] bytes of `bytes`; it checks
    /// neither the body nor the CRC (use [`validate`](super::validate) for that). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchError> {
        let Some(h) = bytes.first_chunk::<BATCH_HEADER_LEN>() else {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_LEN,
                got: bytes.len(),
            });
        };
        let magic = array::<4>(h, OFF_MAGIC);
        if magic != BATCH_MAGIC {
            return Err(BatchError::BadMagic { found: magic });
        }
        let version = h[OFF_VERSION];
        if version != BATCH_FORMAT_VERSION {
            return Err(BatchError::UnsupportedVersion {
                found: version,
                supported: BATCH_FORMAT_VERSION,
            });
        }
        let flags = h[OFF_FLAGS];
        if flags & !BATCH_FLAGS_KNOWN != 0 {
            return Err(BatchError::UnknownFlags { flags });
        }
        if array::<2>(h, OFF_RESERVED_A) != [0; 2] {
            return Err(BatchError::ReservedNotZero {
                offset: OFF_RESERVED_A,
            });
        }
        if array::<4>(h, OFF_RESERVED_B) != [0; 4] {
            return Err(BatchError::ReservedNotZero {
                offset: OFF_RESERVED_B,
            });
        }
        let header = BatchHeader {
            record_count: u32::from_le_bytes(array(h, OFF_RECORD_COUNT)),
            base_timestamp_ms: u64::from_le_bytes(array(h, OFF_BASE_TIMESTAMP)),
            producer_id: u64::from_le_bytes(array(h, OFF_PRODUCER_ID)),
            first_sequence: u64::from_le_bytes(array(h, OFF_FIRST_SEQUENCE)),
            flags,
            body_len: u32::from_le_bytes(array(h, OFF_BODY_LEN)),
            crc32c: u32::from_le_bytes(array(h, OFF_CRC)),
        };
        header.check_sequence_range()?;
        Ok(header)
    }

    /// Encodes the header into its 48 wire bytes.
    pub fn encode(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut h = [0u8; BATCH_HEADER_LEN];
        h[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&BATCH_MAGIC);
        h[OFF_VERSION] = BATCH_FORMAT_VERSION;
        h[OFF_FLAGS] = self.flags;
        h[OFF_BODY_LEN..OFF_BODY_LEN + 4].copy_from_slice(&self.body_len.to_le_bytes());
        h[OFF_CRC..OFF_CRC + 4].copy_from_slice(&self.crc32c.to_le_bytes());
        h[OFF_RECORD_COUNT..OFF_RECORD_COUNT + 4].copy_from_slice(&self.record_count.to_le_bytes());
        h[OFF_BASE_TIMESTAMP..OFF_BASE_TIMESTAMP + 8]
            .copy_from_slice(&self.base_timestamp_ms.to_le_bytes());
        h[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_le_bytes());
        h[OFF_FIRST_SEQUENCE..OFF_FIRST_SEQUENCE + 8]
            .copy_from_slice(&self.first_sequence.to_le_bytes());
        h
    }

    /// Length of the whole batch (header plus body) in bytes.
    pub fn total_len(&self) -> usize {
        BATCH_HEADER_LEN + self.body_len as usize
    }

    /// The producer sequence numbers this batch covers:
    /// `first_sequence .. first_sequence + record_count`.
    ///
    /// Saturates at `u64::MAX`; a decoded or built header never does, as its range is checked.
    pub fn sequences(&self) -> std::ops::Range<u64> {
        self.first_sequence
            ..self
                .first_sequence
                .saturating_add(u64::from(self.record_count))
    }

    fn check_sequence_range(&self) -> Result<(), BatchError> {
        match self
            .first_sequence
            .checked_add(u64::from(self.record_count))
        {
            Some(_) => Ok(()),
            None => Err(BatchError::SequenceOverflow {
                first_sequence: self.first_sequence,
                record_count: u64::from(self.record_count),
            }),
        }
    }
}

/// Computes the CRC32C a batch's header must carry: over `header[0..12]`, `header[16..48]` and
/// `body`, i.e. everything but the CRC field itself, so that a flipped bit in the producer id,
/// sequence or timestamp is caught as surely as one in a payload.
pub fn batch_crc32c(header: &[u8; BATCH_HEADER_LEN], body: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..OFF_CRC]);
    let crc = crc32c::crc32c_append(crc, &header[OFF_CRC + 4..]);
    crc32c::crc32c_append(crc, body)
}

/// `N` bytes of the header from `at`; the offsets are constants well inside the header.
fn array<const N: usize>(h: &[u8; BATCH_HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BatchHeader {
        BatchHeader {
            record_count: 3,
            base_timestamp_ms: 1_700_000_000_123,
            producer_id: 0xdead_beef,
            first_sequence: 42,
            flags: 0,
            body_len: 160,
            crc32c: 0x1234_5678,
        }
    }

    #[test]
    fn encode_decode_roundtrip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"TBRB");
        assert_eq!(bytes[4], BATCH_FORMAT_VERSION);
        assert_eq!(BatchHeader::decode(&bytes), Ok(h));
        assert_eq!(h.total_len(), 48 + 160);
        assert_eq!(h.sequences(), 42..45);
    }

    #[test]
    fn header_len_keeps_body_aligned() {
        assert_eq!(BATCH_HEADER_LEN % BODY_ALIGN, 0);
    }

    #[test]
    fn decode_rejects_short_input() {
        let bytes = sample().encode();
        for len in 0..BATCH_HEADER_LEN {
            assert_eq!(
                BatchHeader::decode(&bytes[..len]),
                Err(BatchError::Truncated {
                    needed: BATCH_HEADER_LEN,
                    got: len
                })
            );
        }
    }

    #[test]
    fn decode_rejects_bad_magic() {
        let mut bytes = sample().encode();
        bytes[0] = b'X';
        assert_eq!(
            BatchHeader::decode(&bytes),
            Err(BatchError::BadMagic { found: *b"XBRB" })
        );
    }

    #[test]
    fn decode_rejects_other_versions() {
        let mut bytes = sample().encode();
        for version in [0u8, 2, 255] {
            bytes[OFF_VERSION] = version;
            assert_eq!(
                BatchHeader::decode(&bytes),
                Err(BatchError::UnsupportedVersion {
                    found: version,
                    supported: 1
                })
            );
        }
    }

    #[test]
    fn decode_rejects_unknown_flags() {
        let mut bytes = sample().encode();
        bytes[OFF_FLAGS] = 0x80;
        assert_eq!(
            BatchHeader::decode(&bytes),
            Err(BatchError::UnknownFlags { flags: 0x80 })
        );
    }

    #[test]
    fn decode_rejects_nonzero_reserved() {
        for offset in [6, 7, 20, 21, 22, 23] {
            let mut bytes = sample().encode();
            bytes[offset] = 1;
            let field = if offset < 8 { 6 } else { 20 };
            assert_eq!(
                BatchHeader::decode(&bytes),
                Err(BatchError::ReservedNotZero { offset: field })
            );
        }
    }

    #[test]
    fn decode_rejects_sequence_overflow() {
        let mut h = sample();
        h.first_sequence = u64::MAX - 1;
        assert_eq!(
            BatchHeader::decode(&h.encode()),
            Err(BatchError::SequenceOverflow {
                first_sequence: u64::MAX - 1,
                record_count: 3
            })
        );
        h.record_count = 1;
        assert!(BatchHeader::decode(&h.encode()).is_ok());
    }

    #[test]
    fn crc_skips_only_the_crc_field() {
        let h = sample().encode();
        let crc = batch_crc32c(&h, b"body");
        for i in 0..BATCH_HEADER_LEN {
            let mut m = h;
            m[i] ^= 1;
            let covered = !(OFF_CRC..OFF_CRC + 4).contains(&i);
            assert_eq!(batch_crc32c(&m, b"body") != crc, covered, "byte {i}");
        }
        assert_ne!(batch_crc32c(&h, b"bodz"), crc);
    }
}
