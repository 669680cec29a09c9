//! openraft's state machine for one group: applies entries to the pure state machines in
//! [`crate::state_machine`], builds, persists and installs snapshots.
//!
//! The applied state is shared ([`SharedState`]) so the node reads queue state, offsets and
//! metadata without a round trip through openraft; only this module writes it.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use taskbroker_client::batch::{aligned_copy, BatchView};
use taskbroker_client::proto::headers;
use tokio::sync::watch;

use crate::command::{Command, Response};
use crate::log_store::LogHints;
use crate::snapshot::SnapshotStore;
use crate::state_machine::metadata::MetadataState;
use crate::state_machine::partition::{PartitionState, ProducerInfo, RecordMeta};
use crate::types::{typ, GroupId, TypeConfig};

/// The replicated state of one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupData {
    /// The cluster metadata (group 0).
    Metadata(MetadataState),
    /// A partition's queue state.
    Partition(PartitionState),
}

/// Everything applied so far, plus what openraft needs back on restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupState {
    /// The last applied log id.
    pub(crate) last_applied: Option<typ::LogId>,
    /// The last applied membership.
    pub(crate) membership: typ::StoredMembership,
    /// The next task offset (the committed, applied high watermark).
    pub next_offset: u64,
    /// The state machine proper.
    pub data: GroupData,
}

impl GroupState {
    fn new(group: GroupId) -> GroupState {
        GroupState {
            last_applied: None,
            membership: Default::default(),
            next_offset: 0,
            data: if group.is_metadata() {
                GroupData::Metadata(MetadataState::default())
            } else {
                GroupData::Partition(PartitionState::new())
            },
        }
    }

    /// The Raft index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.last_applied.map(|l| l.index)
    }

    /// The partition state, if this is a partition group.
    pub fn partition(&self) -> Option<&PartitionState> {
        match &self.data {
            GroupData::Partition(p) => Some(p),
            GroupData::Metadata(_) => None,
        }
    }

    /// The metadata state, if this is the metadata group.
    pub fn metadata(&self) -> Option<&MetadataState> {
        match &self.data {
            GroupData::Metadata(m) => Some(m),
            GroupData::Partition(_) => None,
        }
    }

    fn apply(&mut self, entry: &typ::Entry) -> Response {
        self.last_applied = Some(entry.log_id());
        match &entry.payload {
            EntryPayload::Blank => Response::None,
            EntryPayload::Membership(m) => {
                self.membership = openraft::StoredMembership::new(Some(entry.log_id()), m.clone());
                Response::None
            }
            EntryPayload::Normal(cmd) => self.apply_command(cmd),
        }
    }

    fn apply_command(&mut self, cmd: &Command) -> Response {
        match (cmd, &mut self.data) {
            (Command::Meta(c), GroupData::Metadata(m)) => Response::Meta(m.apply(c)),
            (Command::Produce { batch, now_ms }, GroupData::Partition(p)) => {
                let base = self.next_offset;
                let owned;
                let bytes: &[u8] = if (batch.as_ptr() as usize).is_multiple_of(16) {
                    batch
                } else {
                    owned = aligned_copy(batch);
                    &owned
                };
                match BatchView::new(bytes) {
                    Ok(view) => {
                        let h = view.header();
                        self.next_offset += u64::from(h.record_count);
                        let producer = ProducerInfo {
                            producer_id: h.producer_id,
                            first_sequence: h.first_sequence,
                            record_count: h.record_count,
                        };
                        let records = view.records().map(|r| RecordMeta {
                            key: r.key(),
                            not_before_ms: r.not_before_ms(),
                            priority: r.priority(),
                            group: r
                                .header(headers::REQUEUE_GROUP)
                                .and_then(|g| std::str::from_utf8(g).ok()),
                        });
                        Response::Produce(p.apply_produce(base, *now_ms, producer, records))
                    }
                    Err(e) => {
                        // Validated by the leader and checksummed on disk: reaching this is a
                        // bug or an undetected corruption. The frame's record count still took
                        // offsets in the log, so keep the offsets aligned with it.
                        tracing::error!(error = %e, base, "applied an invalid record batch");
                        self.next_offset += u64::from(crate::codec::batch_record_count(batch));
                        Response::Rejected(format!("invalid record batch: {e}"))
                    }
                }
            }
            (Command::Queue { now_ms, ops }, GroupData::Partition(p)) => {
                Response::Queue(p.apply_queue(*now_ms, ops))
            }
            (c, _) => Response::Rejected(format!(
                "command {} does not belong to this group",
                match c {
                    Command::Meta(_) => "meta",
                    Command::Produce { .. } => "produce",
                    Command::Queue { .. } => "queue",
                }
            )),
        }
    }
}

/// A read handle on a group's applied state, shared with the node.
#[derive(Debug, Clone)]
pub struct SharedState {
    inner: Arc<RwLock<GroupState>>,
    applied: watch::Receiver<u64>,
}

impl SharedState {
    /// Reads the applied state. Hold the guard briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, GroupState> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever entries are applied (value: next task offset).
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// openraft's state machine of one group.
pub struct GroupStateMachine {
    group: GroupId,
    state: Arc<RwLock<GroupState>>,
    applied_tx: watch::Sender<u64>,
    applied_rx: watch::Receiver<u64>,
    hints: Arc<LogHints>,
    snapshots: SnapshotStore,
    snapshot_seq: u64,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl GroupStateMachine {
    /// Opens the state machine of `group`, restoring the newest persisted snapshot.
    pub async fn open(
        group: GroupId,
        snapshots: SnapshotStore,
        hints: Arc<LogHints>,
    ) -> io::Result<GroupStateMachine> {
        let (state, seq) = match snapshots.load().await? {
            Some((seq, data)) => (
                bincode::deserialize::<GroupState>(&data).map_err(io_err)?,
                seq,
            ),
            None => (GroupState::new(group), 0),
        };
        let (applied_tx, applied_rx) = watch::channel(state.next_offset);
        let sm = GroupStateMachine {
            group,
            state: Arc::new(RwLock::new(state)),
            applied_tx,
            applied_rx,
            hints,
            snapshots,
            snapshot_seq: seq,
        };
        sm.update_hints();
        Ok(sm)
    }

    /// A shared read handle on the applied state.
    pub fn shared(&self) -> SharedState {
        SharedState {
            inner: self.state.clone(),
            applied: self.applied_rx.clone(),
        }
    }

    fn update_hints(&self) {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        // Also on open: a snapshot installed just before a crash can be ahead of the log, and
        // openraft then purges the log up to it on start.
        *self
            .hints
            .applied_position
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = s.last_applied.map(|l| (l.index, s.next_offset));
        if let GroupData::Partition(p) = &s.data {
            self.hints
                .retention_floor_offset
                .store(p.retention_floor(), Ordering::Release);
        }
    }

    fn encode_state(&self) -> io::Result<(Option<typ::LogId>, typ::StoredMembership, Vec<u8>)> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let data = bincode::serialize(&*s).map_err(io_err)?;
        Ok((s.last_applied, s.membership.clone(), data))
    }
}

/// Builds snapshots from a copy of the state taken when the builder was created.
pub struct GroupSnapshotBuilder {
    last_applied: Option<typ::LogId>,
    membership: typ::StoredMembership,
    data: Vec<u8>,
    snapshots: SnapshotStore,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<typ::Snapshot, io::Error> {
        self.snapshots.save(self.seq, &self.data).await?;
        Ok(openraft::Snapshot {
            meta: openraft::SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            snapshot: std::mem::take(&mut self.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<typ::LogId>, typ::StoredMembership), io::Error> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
                s.apply(&entry)
            };
            if let Some(r) = responder {
                r.send(response);
            }
        }
        let next = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next_offset;
        self.applied_tx.send_replace(next);
        self.update_hints();
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let (last_applied, membership, data) = match self.encode_state() {
            Ok(v) => v,
            Err(e) => {
                // Serialising plain in-memory data cannot fail short of a bug.
                tracing::error!(group = %self.group, error = %e, "snapshot encoding failed");
                (None, Default::default(), Vec::new())
            }
        };
        GroupSnapshotBuilder {
            last_applied,
            membership,
            data,
            snapshots: self.snapshots.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &typ::SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut state: GroupState = bincode::deserialize(&snapshot).map_err(io_err)?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.snapshot_seq += 1;
        self.snapshots.save(self.snapshot_seq, &snapshot).await?;
        let next = state.next_offset;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        self.applied_tx.send_replace(next);
        self.update_hints();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<typ::Snapshot>, io::Error> {
        let Some((_, data)) = self.snapshots.load().await? else {
            return Ok(None);
        };
        let state: GroupState = bincode::deserialize(&data).map_err(io_err)?;
        Ok(Some(openraft::Snapshot {
            meta: openraft::SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            },
            snapshot: data,
        }))
    }
}
