//! Durable snapshots of a group's state machine: two alternating checksummed slot files.
//!
//! A snapshot is the queue state (or the metadata state), never task payloads, so it is small
//! and written whole. The slot with the highest valid sequence number wins on load; a torn or
//! corrupt slot is ignored, so a crash while writing keeps the previous snapshot.

use std::path::PathBuf;
use std::sync::Arc;

use taskbroker_storage::io::Disk;

const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"TBSN");
const SLOT_HEADER_LEN: usize = 32;
/// Largest snapshot we load: a bound against a corrupt length field (the queue state of a
/// partition with tens of millions of tasks stays well below it).
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// Reads and writes one group's snapshot slots.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

fn slot_path(dir: &std::path::Path, slot: u64) -> PathBuf {
    dir.join(format!("snapshot.{slot}"))
}

impl SnapshotStore {
    /// A store for the snapshots of the group whose directory is `dir`.
    pub fn new(disk: Arc<dyn Disk>, dir: PathBuf) -> SnapshotStore {
        SnapshotStore { disk, dir }
    }

    async fn read_slot(&self, slot: u64) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let names = self.disk.list_dir(&self.dir).await?;
        let name = format!("snapshot.{slot}");
        if !names.iter().any(|n| n == &name) {
            return Ok(None);
        }
        let file = self.disk.open(&slot_path(&self.dir, slot), false).await?;
        let len = file.len().await?;
        if len < SLOT_HEADER_LEN as u64 {
            return Ok(None);
        }
        let (n, header) = file.read_at(vec![0u8; SLOT_HEADER_LEN], 0).await?;
        if n < SLOT_HEADER_LEN {
            return Ok(None);
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&header[r]);
            u64::from_le_bytes(b)
        };
        let magic = word(0..4) as u32;
        let seq = word(8..16);
        let data_len = word(16..24);
        let crc = word(24..28) as u32;
        if magic != SLOT_MAGIC
            || data_len > SNAPSHOT_BYTES_MAX
            || SLOT_HEADER_LEN as u64 + data_len > len
        {
            return Ok(None);
        }
        let (n, data) = file
            .read_at(vec![0u8; data_len as usize], SLOT_HEADER_LEN as u64)
            .await?;
        if n as u64 != data_len || crc32c::crc32c(&data) != crc {
            tracing::warn!(dir = %self.dir.display(), slot, "ignoring a damaged snapshot slot");
            return Ok(None);
        }
        Ok(Some((seq, data)))
    }

    /// The newest intact snapshot and its sequence number.
    pub async fn load(&self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        let a = self.read_slot(0).await?;
        let b = self.read_slot(1).await?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    /// Durably writes `data` as snapshot number `seq` (into the slot the previous one is not in).
    pub async fn save(&self, seq: u64, data: &[u8]) -> std::io::Result<()> {
        let path = slot_path(&self.dir, seq % 2);
        let file = self.disk.open(&path, true).await?;
        let mut buf = Vec::with_capacity(SLOT_HEADER_LEN + data.len());
        buf.extend_from_slice(&SLOT_MAGIC.to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        buf.extend_from_slice(data);
        let total = buf.len() as u64;
        file.write_all_at(buf, 0).await?;
        file.set_len(total).await?;
        file.sync_data().await?;
        self.disk.sync_dir(&self.dir).await
    }
}
