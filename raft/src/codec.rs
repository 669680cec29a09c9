//! Raft entries <-> storage frames.
//!
//! The frame payload is a 32-byte entry header followed by the body:
//!
//! ```text
//! [0..8)   term (u64 LE)        [8..16) index (u64 LE)      [16] kind    [17..24) zero
//! [24..32) produce: the leader's now_ms (u64 LE), otherwise zero
//! [32..)   body: produce = the client's record batch, unchanged (16-byte aligned)
//!                 command/membership = bincode
//! ```
//!
//! # Invariants
//! - A produce entry's frame carries the batch's record count, so storage computes the same
//!   dense offsets as the partition state machine.
//! - The header length is a multiple of 16, so a 16-byte-aligned frame payload gives a
//!   16-byte-aligned batch for zero-copy access.

use bytes::{BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;
use taskbroker_client::batch::BATCH_HEADER_LEN;
use taskbroker_storage::{Frame, FrameIn};

use crate::command::Command;
use crate::types::typ;

/// Length of the entry header in front of every body.
pub const ENTRY_HEADER_LEN: usize = 32;

const KIND_BLANK: u8 = 0;
const KIND_MEMBERSHIP: u8 = 1;
const KIND_COMMAND: u8 = 2;
const KIND_PRODUCE: u8 = 3;

/// Errors decoding an entry from a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame is shorter than an entry header.
    #[error("entry frame too short: {len} bytes")]
    Short {
        /// The payload length.
        len: usize,
    },
    /// The header's index does not match where the frame sits in the log.
    #[error("entry header says index {header}, frame is at index {frame}")]
    IndexMismatch {
        /// Index in the entry header.
        header: u64,
        /// Index of the frame.
        frame: u64,
    },
    /// An unknown entry kind.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// A body that does not decode.
    #[error("entry body: {0}")]
    Body(String),
}

/// The record count of a produce batch (read from its header), 0 if it is too short to say.
pub fn batch_record_count(batch: &[u8]) -> u32 {
    // The batch was validated before it was proposed; bytes 16..20 hold the record count.
    if batch.len() >= BATCH_HEADER_LEN {
        u32::from_le_bytes([batch[16], batch[17], batch[18], batch[19]])
    } else {
        0
    }
}

/// Encodes an entry into a frame for the segment log.
pub fn encode(entry: &typ::Entry) -> Result<FrameIn, CodecError> {
    let log_id = entry.log_id();
    let (kind, count, body): (u8, u32, Option<(&Bytes, u64)>) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, 0, None),
        EntryPayload::Membership(_) => (KIND_MEMBERSHIP, 0, None),
        EntryPayload::Normal(Command::Produce { batch, now_ms }) => (
            KIND_PRODUCE,
            batch_record_count(batch),
            Some((batch, *now_ms)),
        ),
        EntryPayload::Normal(_) => (KIND_COMMAND, 0, None),
    };
    let mut buf = BytesMut::with_capacity(ENTRY_HEADER_LEN + body.map_or(64, |b| b.0.len()));
    buf.put_u64_le(log_id.leader_id.term);
    buf.put_u64_le(log_id.index);
    buf.put_u8(kind);
    buf.put_bytes(0, 7);
    buf.put_u64_le(body.map_or(0, |b| b.1));
    match (&entry.payload, body) {
        (_, Some((batch, _))) => buf.put_slice(batch),
        (EntryPayload::Membership(m), None) => {
            let v = bincode::serialize(m).map_err(|e| CodecError::Body(e.to_string()))?;
            buf.put_slice(&v);
        }
        (EntryPayload::Normal(c), None) => {
            let v = bincode::serialize(c).map_err(|e| CodecError::Body(e.to_string()))?;
            buf.put_slice(&v);
        }
        (EntryPayload::Blank, None) => {}
    }
    Ok(FrameIn {
        payload: buf.freeze(),
        record_count: count,
    })
}

/// The application command stored in `frame` (`None` for blank and membership entries), for
/// readers outside this crate that must not see openraft types (e.g. the node serving stored
/// batches to workers: a produce gives back the producer's batch bytes unchanged).
pub fn decode_command(frame: &Frame) -> Result<Option<Command>, CodecError> {
    Ok(match decode(frame)?.payload {
        EntryPayload::Normal(cmd) => Some(cmd),
        EntryPayload::Blank | EntryPayload::Membership(_) => None,
    })
}

/// Decodes the entry stored in `frame`.
pub fn decode(frame: &Frame) -> Result<typ::Entry, CodecError> {
    let p = &frame.payload;
    if p.len() < ENTRY_HEADER_LEN {
        return Err(CodecError::Short { len: p.len() });
    }
    let term = u64::from_le_bytes(
        p[0..8]
            .try_into()
            .map_err(|_| CodecError::Short { len: 0 })?,
    );
    let index = u64::from_le_bytes(
        p[8..16]
            .try_into()
            .map_err(|_| CodecError::Short { len: 0 })?,
    );
    if index != frame.index {
        return Err(CodecError::IndexMismatch {
            header: index,
            frame: frame.index,
        });
    }
    let body = frame.payload.slice(ENTRY_HEADER_LEN..);
    let log_id = openraft::LogId::new(
        openraft::alias::CommittedLeaderIdOf::<crate::TypeConfig>::from(term),
        index,
    );
    let payload = match p[16] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_MEMBERSHIP => EntryPayload::Membership(
            bincode::deserialize(&body).map_err(|e| CodecError::Body(e.to_string()))?,
        ),
        KIND_COMMAND => EntryPayload::Normal(
            bincode::deserialize(&body).map_err(|e| CodecError::Body(e.to_string()))?,
        ),
        KIND_PRODUCE => EntryPayload::Normal(Command::Produce {
            now_ms: u64::from_le_bytes(
                p[24..32]
                    .try_into()
                    .map_err(|_| CodecError::Short { len: 0 })?,
            ),
            batch: body,
        }),
        other => return Err(CodecError::UnknownKind(other)),
    };
    Ok(typ::Entry { log_id, payload })
}
