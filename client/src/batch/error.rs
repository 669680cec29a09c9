//! The error type of the batch codec.

/// Why a record batch was rejected (by [`validate`](super::validate), [`BatchView`](super::BatchView)
/// or the [`BatchBuilder`](super::BatchBuilder)).
///
/// Every variant is an *expected* outcome of untrusted input or of a producer exceeding a
/// limit; none of them indicates a bug in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The input ends before the header or the body it announces.
    #[error("record batch truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed to decode what was announced so far.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The batch (header plus body) is larger than the limit in force.
    #[error("record batch of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or actual length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The input has bytes after the end of the body the header announces.
    #[error("record batch has trailing bytes: expected {expected} bytes, got {got}")]
    TrailingBytes {
        /// Length announced by the header (header plus body).
        expected: usize,
        /// Length of the input.
        got: usize,
    },
    /// The first four bytes are not `b"TBRB"`.
    #[error("not a record batch: bad magic {found:02x?}")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The format version is not one this decoder understands.
    #[error("unsupported record batch format version {found} (supported: {supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u8,
        /// The version this decoder supports.
        supported: u8,
    },
    /// The header sets flag bits this decoder does not know; they could change the meaning of
    /// the body, so the batch cannot be read.
    #[error("record batch has unknown flags {flags:#04x}")]
    UnknownFlags {
        /// The flags byte.
        flags: u8,
    },
    /// A reserved header field is not zero.
    #[error("record batch header field at offset {offset} is reserved and must be zero")]
    ReservedNotZero {
        /// Byte offset of the reserved field in the header.
        offset: usize,
    },
    /// The body does not start on a 16-byte boundary in memory, so it cannot be accessed in
    /// place. Copy the batch with [`aligned_copy`](super::aligned_copy) and retry.
    #[error("record batch body is not 16-byte aligned in memory")]
    Misaligned,
    /// The checksum does not match the bytes: the batch was corrupted.
    #[error(
        "record batch CRC32C mismatch: header says {expected:#010x}, bytes give {actual:#010x}"
    )]
    CrcMismatch {
        /// CRC32C stored in the header.
        expected: u32,
        /// CRC32C computed over the bytes.
        actual: u32,
    },
    /// The body passed the checksum but is not a valid archive (rkyv bytecheck failed).
    #[error("record batch body is malformed: {0}")]
    Malformed(String),
    /// The header and the body disagree on the number of records.
    #[error("record batch header says {header} records, body holds {body}")]
    RecordCountMismatch {
        /// Count in the header.
        header: u32,
        /// Count in the body.
        body: usize,
    },
    /// One record is larger than the per-task limit.
    #[error("record {index} is {len} bytes, over the per-task limit of {max} bytes")]
    TaskTooLarge {
        /// Index of the record within the batch.
        index: usize,
        /// Size of the record (key + payload + header names and values).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The batch holds more records than allowed.
    #[error("record batch holds {count} records, over the limit of {max}")]
    TooManyRecords {
        /// Number of records (announced, or after a push).
        count: u64,
        /// The limit in force.
        max: u32,
    },
    /// `first_sequence + record_count` does not fit in a `u64`.
    #[error(
        "record batch sequence range overflows: first {first_sequence} + {record_count} records"
    )]
    SequenceOverflow {
        /// First sequence number of the batch.
        first_sequence: u64,
        /// Number of records.
        record_count: u64,
    },
    /// A record's timestamp cannot be expressed relative to the batch's base timestamp (it is
    /// earlier than the base or more than `u32::MAX` ms after it).
    #[error(
        "record timestamp {timestamp_ms} ms is outside [{base_timestamp_ms}, base + u32::MAX] ms"
    )]
    TimestampOutOfRange {
        /// The record's timestamp.
        timestamp_ms: u64,
        /// The batch's base timestamp.
        base_timestamp_ms: u64,
    },
}
