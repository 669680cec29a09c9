//! Small atomic records: two alternating checksummed 4 KiB slots in one file.
//!
//! Used for the log's opaque `meta` record (Raft vote, committed index…) and for its
//! `anchor` (first index/offset after a purge or reset).
//!
//! ```text
//! slot (4096 bytes) = magic u32 | len u32 | seq u64 | crc32c u32 | pad u32 | data[len] | zeros
//! crc32c covers magic, len, seq and data
//! ```
//!
//! *Invariants:* a write goes to slot `seq % 2`, never to the slot holding the newest valid
//! record, so a torn write can only destroy the record being written; the newest valid slot
//! wins on open. A slot is at most one 4 KiB page, so most devices write it atomically anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::{Disk, DiskFile};
use crate::StorageError;

/// Size of one slot.
pub const META_SLOT_BYTES: usize = 4096;
/// Slot header length.
const SLOT_HEADER_BYTES: usize = 24;
/// Largest record a slot can hold (a 4 KiB page minus the header, rounded down).
pub const META_RECORD_BYTES_MAX: usize = 4000;

/// Magic of the opaque meta record file (`"TBMT"`).
pub(crate) const META_MAGIC: u32 = u32::from_le_bytes(*b"TBMT");
/// Magic of the anchor file (`"TBAN"`).
pub(crate) const ANCHOR_MAGIC: u32 = u32::from_le_bytes(*b"TBAN");

/// Encodes one slot. `data.len()` must be at most [`META_RECORD_BYTES_MAX`].
pub fn encode_slot(magic: u32, seq: u64, data: &[u8]) -> Vec<u8> {
    let mut slot = vec![0u8; META_SLOT_BYTES];
    let len = data.len().min(META_RECORD_BYTES_MAX);
    slot[0..4].copy_from_slice(&magic.to_le_bytes());
    slot[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len].copy_from_slice(&data[..len]);
    let crc = slot_crc(&slot, len);
    slot[16..20].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn slot_crc(slot: &[u8], len: usize) -> u32 {
    let crc = crc32c::crc32c(&slot[0..16]);
    crc32c::crc32c_append(crc, &slot[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len])
}

/// Decodes one slot; `None` if it is empty, torn or belongs to another file kind.
pub fn decode_slot(magic: u32, slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() < SLOT_HEADER_BYTES {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([slot[at], slot[at + 1], slot[at + 2], slot[at + 3]]);
    if word(0) != magic {
        return None;
    }
    let len = word(4) as usize;
    if len > META_RECORD_BYTES_MAX || SLOT_HEADER_BYTES + len > slot.len() {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&slot[8..16]);
    if slot_crc(slot, len) != word(16) {
        return None;
    }
    Some((
        u64::from_le_bytes(seq),
        &slot[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len],
    ))
}

/// A two-slot record file.
#[derive(Debug)]
pub(crate) struct SlotFile {
    file: Arc<dyn DiskFile>,
    path: PathBuf,
    magic: u32,
    seq: u64,
}

impl SlotFile {
    /// Opens (creating if missing) and returns the newest valid record. Returns whether the
    /// file was created, so the caller can sync the directory.
    pub(crate) async fn open(
        disk: &dyn Disk,
        path: &Path,
        magic: u32,
    ) -> Result<(SlotFile, Option<Vec<u8>>, bool), StorageError> {
        let (file, created) = match disk.open(path, false).await {
            Ok(f) => (f, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                disk.open(path, true)
                    .await
                    .map_err(|e| StorageError::io("create", path, e))?,
                true,
            ),
            Err(e) => return Err(StorageError::io("open", path, e)),
        };
        let (n, buf) = file
            .read_at(vec![0u8; 2 * META_SLOT_BYTES], 0)
            .await
            .map_err(|e| StorageError::io("read", path, e))?;
        let buf = &buf[..n];
        let mut best: Option<(u64, Vec<u8>)> = None;
        for slot in buf.chunks(META_SLOT_BYTES) {
            match decode_slot(magic, slot) {
                Some((seq, data)) if best.as_ref().is_none_or(|(s, _)| seq > *s) => {
                    best = Some((seq, data.to_vec()));
                }
                Some(_) => {}
                None if slot.iter().any(|b| *b != 0) => {
                    tracing::warn!(path = %path.display(), "ignoring a damaged record slot");
                }
                None => {}
            }
        }
        let seq = best.as_ref().map_or(0, |(s, _)| *s);
        Ok((
            SlotFile {
                file,
                path: path.to_path_buf(),
                magic,
                seq,
            },
            best.map(|(_, d)| d),
            created,
        ))
    }

    /// Writes `data` to the older slot and `fdatasync`s.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let slot = encode_slot(self.magic, seq, data);
        let pos = (seq % 2) * META_SLOT_BYTES as u64;
        self.file
            .write_all_at_and_sync(slot, pos)
            .await
            .map_err(|e| StorageError::io("write+fdatasync", &self.path, e))?;
        self.seq = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_roundtrip_and_damage() {
        let slot = encode_slot(META_MAGIC, 9, b"vote");
        assert_eq!(decode_slot(META_MAGIC, &slot), Some((9, &b"vote"[..])));
        assert_eq!(decode_slot(ANCHOR_MAGIC, &slot), None);
        let mut bad = slot.clone();
        bad[SLOT_HEADER_BYTES] ^= 1;
        assert_eq!(decode_slot(META_MAGIC, &bad), None);
        assert_eq!(decode_slot(META_MAGIC, &slot[..10]), None);
    }
}
