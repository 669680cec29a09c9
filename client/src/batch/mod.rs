//! The record-batch wire format: what a producer sends for one partition.
//!
//! A batch is encoded once by the producer ([`BatchBuilder`]), validated by the broker on
//! arrival ([`validate`]), stored unchanged as one Raft entry of the partition's log, and served
//! back to workers unchanged, who read it in place ([`BatchView`]). This module is sans-IO: no
//! IO, no clock reads, no spawning; timestamps come from the caller.
//!
//! # Layout
//!
//! ```text
//! offset 0                                48 (16-byte aligned)
//!        +--------------------------------+------------------------------------------+
//!        | BatchHeader: 48 bytes, LE      | body: rkyv 0.8 archive of the records    |
//!        | magic "TBRB", version, flags,  | (body_len bytes; root at the end)        |
//!        | body_len, crc32c, record_count,|                                          |
//!        | base_timestamp_ms, producer_id,|                                          |
//!        | first_sequence                 |                                          |
//!        +--------------------------------+------------------------------------------+
//! ```
//!
//! See [`BatchHeader`] for the field offsets. Each archived record holds its key, payload,
//! headers, not-before time, timestamp (as a `u32` delta from the base) and priority; the broker
//! reads them through [`RecordView`] without copying or deserializing.
//!
//! # Invariants
//!
//! - A batch that passed [`validate`] can be read with [`BatchView`] without further failure,
//!   and reading it never panics; neither does validating arbitrary bytes.
//! - The CRC32C covers every byte except the CRC field (header and body), so corruption of the
//!   producer id or sequence, which drive deduplication, is detected like payload corruption.
//! - The record count in the header equals the number of archived records; the broker computes
//!   dense offsets from the header alone.
//! - `first_sequence + record_count` does not overflow a `u64`.
//! - Zero-copy access requires the body to be 16-byte aligned in memory. Functions that need it
//!   ([`validate`], [`BatchView::new`], [`BatchView::with_limits`]) return
//!   [`BatchError::Misaligned`] otherwise; never UB. [`aligned_copy`] recovers.
//!   [`EncodedBatch`] and [`aligned_copy`] always produce aligned buffers.
//!
//! # Design notes
//!
//! - The header is hand-written and fixed so a reader can frame a batch from a stream
//!   ([`BatchHeader::decode`] on the first 48 bytes gives the total length) and the broker can
//!   check the cheap things (length, limits, CRC) before touching the archive.
//! - The body's archived form depends on rkyv's format features, which Cargo unifies across the
//!   whole dependency graph: enabling `big_endian`, `unaligned` or a `pointer_width_*` feature
//!   of rkyv anywhere in the workspace changes the wire format. A golden-bytes test pins it.
//! - The wire types (`WireRecord`, ...) are private: the public API is [`TaskRecord`] in and
//!   [`RecordView`] out, so the archive can change under a new format version without
//!   breaking callers.
//! - Every check is bounded by [`BatchLimits`] and the hard cap [`BATCH_BYTES_MAX`].

mod builder;
mod error;
mod header;
mod record;
mod view;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use builder::{BatchBuilder, EncodedBatch};
pub use error::BatchError;
pub use header::{
    batch_crc32c, BatchHeader, BATCH_FLAGS_KNOWN, BATCH_FORMAT_VERSION, BATCH_HEADER_LEN,
    BATCH_MAGIC, BODY_ALIGN,
};
pub use record::{Header, TaskRecord};
pub use view::{aligned_copy, validate, BatchLimits, BatchView, RecordView};

/// The largest batch (header plus body) any decoder accepts, whatever the configured limits:
/// 64 MiB.
///
/// Why: `body_len` is a `u32`, so without a cap a 48-byte header could make a reader wait for,
/// or allocate (e.g. in [`aligned_copy`]), 4 GiB. One batch is also one Raft entry, replicated
/// in one append and written to one segment; 64 MiB keeps that within what the RPC frame and
/// segment limits can carry while leaving 4× headroom over the default 16 MiB limit.
pub const BATCH_BYTES_MAX: usize = 64 << 20;
