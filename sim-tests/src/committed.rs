//! *Committed entries never change*: every committed Raft entry any replica ever showed, by
//! `(group, index)`, with a hash of its frame. Observing a different frame at an index that some
//! replica had already shown committed (on another node, or on the same node later, e.g. after
//! a crash and restart) is a violation.
//!
//! The harness feeds it from an auditor that periodically reads every running replica's log up
//! to that replica's commit index, and once more from every replica after the run settles.
//!
//! # Example
//! ```
//! use taskbroker_sim_tests::committed::CommittedEntries;
//!
//! let mut c = CommittedEntries::default();
//! assert!(c.observe(7, 1, 0xaa, 1, 100).is_none());
//! assert!(c.observe(7, 1, 0xaa, 2, 200).is_none()); // another replica, same entry
//! assert!(c.observe(7, 1, 0xbb, 1, 300).is_some()); // the entry changed
//! ```

use std::collections::BTreeMap;

use taskbroker_raft::NodeId;
use taskbroker_storage::Frame;

/// Where and when an entry was first seen committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    hash: u64,
    node: NodeId,
    at_ms: u64,
}

/// The committed entries seen so far (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct CommittedEntries {
    seen: BTreeMap<(u64, u64), Seen>,
    observations: u64,
}

impl CommittedEntries {
    /// Records that `node` showed the entry at `(group, index)` with frame hash `hash` as
    /// committed at `at_ms`; returns a description if it differs from what was seen before.
    pub fn observe(
        &mut self,
        group: u64,
        index: u64,
        hash: u64,
        node: NodeId,
        at_ms: u64,
    ) -> Option<String> {
        self.observations += 1;
        let first = *self
            .seen
            .entry((group, index))
            .or_insert(Seen { hash, node, at_ms });
        (first.hash != hash).then(|| {
            format!(
                "committed entry changed: group {group} index {index}: node {} showed {:016x} at {} ms, node {node} shows {hash:016x} at {at_ms} ms",
                first.node, first.hash, first.at_ms
            )
        })
    }

    /// Distinct committed entries seen.
    pub fn entries(&self) -> usize {
        self.seen.len()
    }

    /// Observations made (one per replica per read of an entry).
    pub fn observations(&self) -> u64 {
        self.observations
    }
}

/// FNV-1a over a frame's index, base offset, record count and payload (the payload holds the
/// entry's term and index, so entries of different terms hash differently).
pub fn frame_hash(f: &Frame) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let header = [f.index, f.base_offset, u64::from(f.record_count)];
    for b in header
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .chain(f.payload.iter().copied())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(index: u64, payload: &'static [u8]) -> Frame {
        Frame {
            index,
            base_offset: index,
            record_count: 1,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_mutated_committed_entry_is_reported() {
        let mut c = CommittedEntries::default();
        let a = frame(5, b"term 2 entry");
        for node in 1..=3 {
            assert_eq!(c.observe(9, 5, frame_hash(&a), node, 10), None);
        }
        // Node 2 restarts and shows a different entry at the same index.
        let b = frame(5, b"term 3 entry");
        let v = c
            .observe(9, 5, frame_hash(&b), 2, 20)
            .expect("change reported");
        assert!(v.contains("group 9 index 5"), "{v}");
        assert_eq!(c.entries(), 1);
        assert_eq!(c.observations(), 4);
        // Other groups and indices are independent.
        assert_eq!(c.observe(10, 5, frame_hash(&b), 1, 30), None);
        assert_eq!(c.observe(9, 6, frame_hash(&b), 1, 30), None);
    }

    #[test]
    fn frame_hash_covers_index_offsets_and_payload() {
        let a = frame(5, b"x");
        let mut b = a.clone();
        assert_eq!(frame_hash(&a), frame_hash(&b));
        b.base_offset = 6;
        assert_ne!(frame_hash(&a), frame_hash(&b));
        let c = frame(5, b"y");
        assert_ne!(frame_hash(&a), frame_hash(&c));
    }
}
