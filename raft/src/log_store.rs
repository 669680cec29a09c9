//! openraft's log storage on the segment log of `taskbroker-storage`.
//!
//! The Raft log *is* the partition log: each entry is one frame (see [`crate::codec`]), a produce
//! entry carries the client's batch bytes unchanged and its record count, so the frame offsets are
//! the task offsets. There is no second copy.
//!
//! # Durability contract
//! - `append` returns once the entries are readable (the segment log keeps unwritten frames in
//!   memory); openraft's flush callback is answered only after the group commit's fdatasync.
//!   Callbacks are answered in append order by one completion task per store.
//! - The vote and the last purged log id are persisted (durably, before the call returns) in the
//!   log's metadata record, which goes through the same ordered IO queue as appends.
//! - The committed log id is kept in memory and persisted with the next metadata write (vote,
//!   purge, close): a stale committed id on restart is safe, openraft only applies less on start
//!   and learns the rest from the leader. Writing it on every commit would double the fsyncs.
//! - `purge` is clamped by the retention floor: a partition keeps every frame that holds a task
//!   some group still needs, even when openraft considers it purged (it never reads it again).
//! - Restarting the log at an index past its end (`purge` past the last entry, or the first
//!   `append` to an empty log at a later index) takes the next offset from the state machine's
//!   applied position when it is at that index. openraft only does this right after a snapshot
//!   install or on start with the state machine ahead of the log, where it always matches; the
//!   storage conformance suite does it with no state behind it, where the log falls back to
//!   its own next offset (and warns: the skipped entries' record counts are unknown).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use serde::{Deserialize, Serialize};
use taskbroker_storage::{Log, Position, Ticket};
use tokio::sync::mpsc;

use crate::codec;
use crate::types::{typ, TypeConfig};

/// Most flush callbacks waiting for their fdatasync per store; appends wait beyond it.
const PENDING_FLUSHES_MAX: usize = 4096;
/// Most bytes returned by one log read (openraft asks for ranges; we answer in chunks).
const READ_BYTES_MAX: usize = 8 << 20;

/// The persisted Raft metadata of a log, stored in the segment log's metadata record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RaftMeta {
    vote: Option<typ::Vote>,
    committed: Option<typ::LogId>,
    last_purged: Option<typ::LogId>,
}

/// Shared with the state machine: what the log may physically purge, and where the offsets
/// continue after a snapshot installed past the end of the log.
#[derive(Debug, Default)]
pub struct LogHints {
    /// Lowest task offset any group still needs (u64::MAX: nothing to keep, e.g. metadata).
    pub retention_floor_offset: AtomicU64,
    /// `(index, next_offset)` of the state machine's applied state: the last entry applied,
    /// snapshot installed or snapshot loaded on open. The log restarts after it when openraft
    /// purges past the end of the log (after a snapshot install, or on start when the state
    /// machine is ahead of the log).
    pub applied_position: Mutex<Option<(u64, u64)>>,
}

impl LogHints {
    /// Hints for a log whose frames hold no task payloads (the metadata group).
    pub fn unretained() -> Arc<LogHints> {
        let h = LogHints::default();
        h.retention_floor_offset.store(u64::MAX, Ordering::Relaxed);
        Arc::new(h)
    }
}

/// The openraft log store of one group.
#[derive(Clone)]
pub struct LogStore {
    log: Log,
    inner: Arc<Mutex<Inner>>,
    hints: Arc<LogHints>,
    flush_tx: mpsc::Sender<(Ticket<Position>, IOFlushed<TypeConfig>)>,
}

#[derive(Debug)]
struct Inner {
    meta: RaftMeta,
    last_log_id: Option<typ::LogId>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogStore {
    /// Wraps an opened segment log. Reads the persisted vote/purge point and the last entry.
    pub async fn open(log: Log, hints: Arc<LogHints>) -> io::Result<LogStore> {
        let meta: RaftMeta = match log.meta() {
            Some(bytes) => bincode::deserialize(&bytes).map_err(io_err)?,
            None => RaftMeta::default(),
        };
        let last_log_id = if log.next_index() > log.first_index() {
            let frames = log
                .read(log.next_index() - 1, 1, usize::MAX)
                .await
                .map_err(io_err)?;
            let frame = frames.first().ok_or_else(|| io_err("last frame missing"))?;
            Some(codec::decode(frame).map_err(io_err)?.log_id())
        } else {
            None
        };
        let (flush_tx, mut flush_rx) =
            mpsc::channel::<(Ticket<Position>, IOFlushed<TypeConfig>)>(PENDING_FLUSHES_MAX);
        tokio::spawn(async move {
            while let Some((ticket, callback)) = flush_rx.recv().await {
                let result = ticket.await.map(|_| ()).map_err(io_err);
                callback.io_completed(result);
            }
        });
        Ok(LogStore {
            log,
            inner: Arc::new(Mutex::new(Inner { meta, last_log_id })),
            hints,
            flush_tx,
        })
    }

    /// The underlying segment log (the node reads task payloads from it).
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it: a bug; keep serving what we have.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn write_meta(&self, meta: RaftMeta) -> io::Result<()> {
        let bytes = bincode::serialize(&meta).map_err(io_err)?;
        let ticket = self.log.put_meta(bytes).map_err(io_err)?;
        ticket.await.map_err(io_err)
    }

    async fn read_range(&self, start: u64, end: u64) -> io::Result<Vec<typ::Entry>> {
        let start = start.max(self.log.first_index());
        let end = end.min(self.log.next_index());
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(4096) as usize);
        let mut next = start;
        while next < end {
            let want = (end - next) as usize;
            let frames = self
                .log
                .read(next, want, READ_BYTES_MAX)
                .await
                .map_err(io_err)?;
            if frames.is_empty() {
                break;
            }
            for frame in frames.iter().take(want) {
                out.push(codec::decode(frame).map_err(io_err)?);
                next = frame.index + 1;
            }
        }
        Ok(out)
    }
}

impl LogStore {
    /// The offset at which the log restarts when its next entry is `index`, past its end.
    fn restart_offset(&self, index: u64) -> u64 {
        let applied = *self
            .hints
            .applied_position
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match applied {
            Some((applied_index, next_offset)) if applied_index + 1 == index => next_offset,
            _ => {
                tracing::warn!(
                    dir = %self.log.dir().display(),
                    index,
                    ?applied,
                    "restarting the log past its end without the state machine there; offsets continue from the log's end"
                );
                self.log.next_offset()
            }
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<typ::Entry>, io::Error> {
        let (start, end) = bounds(&range);
        self.read_range(start, end).await
    }

    async fn read_vote(&mut self) -> Result<Option<typ::Vote>, io::Error> {
        Ok(self.lock().meta.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = self.lock();
        let last_purged = inner.meta.last_purged;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: inner.last_log_id.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &typ::Vote) -> Result<(), io::Error> {
        let meta = {
            let mut inner = self.lock();
            inner.meta.vote = Some(*vote);
            inner.meta.clone()
        };
        self.write_meta(meta).await
    }

    async fn save_committed(&mut self, committed: Option<typ::LogId>) -> Result<(), io::Error> {
        self.lock().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<typ::LogId>, io::Error> {
        Ok(self.lock().meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = typ::Entry> + Send,
        I::IntoIter: Send,
    {
        let mut frames = Vec::new();
        let mut last = None;
        let mut restart = None;
        for entry in entries {
            // Only an empty log may restart at a later index (see the module docs).
            if frames.is_empty()
                && entry.index() > self.log.next_index()
                && self.log.first_index() == self.log.next_index()
            {
                restart = Some(entry.index());
            }
            let expected = restart.unwrap_or_else(|| self.log.next_index()) + frames.len() as u64;
            if entry.index() != expected {
                return Err(io_err(format!(
                    "append out of order: entry {} but log expects {}",
                    entry.index(),
                    expected
                )));
            }
            last = Some(entry.log_id());
            frames.push(codec::encode(&entry).map_err(io_err)?);
        }
        if frames.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        if let Some(index) = restart {
            // Ordered before the append in the log's IO queue: durable when the append is.
            let offset = self.restart_offset(index);
            drop(self.log.reset(Position { index, offset }).map_err(io_err)?);
        }
        let ticket = self.log.append(frames).map_err(io_err)?;
        self.lock().last_log_id = last;
        self.flush_tx
            .send((ticket, callback))
            .await
            .map_err(|_| io_err("flush task stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<typ::LogId>) -> Result<(), io::Error> {
        let ticket = match last_log_id {
            Some(id) => self.log.truncate_after(id.index).map_err(io_err)?,
            None => {
                let first = self.log.first_position();
                self.log.reset(first).map_err(io_err)?
            }
        };
        {
            let mut inner = self.lock();
            match last_log_id {
                // Truncating after an id at or past the last entry keeps the log as it is.
                Some(id) => {
                    if inner.last_log_id.is_some_and(|l| l.index > id.index) {
                        inner.last_log_id = Some(id);
                    }
                }
                None => inner.last_log_id = inner.meta.last_purged,
            }
        }
        ticket.await.map_err(io_err)
    }

    async fn purge(&mut self, log_id: typ::LogId) -> Result<(), io::Error> {
        let meta = {
            let mut inner = self.lock();
            inner.meta.last_purged = Some(log_id);
            if inner.last_log_id.is_none_or(|l| l.index < log_id.index) {
                inner.last_log_id = Some(log_id);
            }
            inner.meta.clone()
        };
        self.write_meta(meta).await?;
        let upto = log_id.index + 1;
        if upto > self.log.next_index() {
            // A snapshot was installed past our end: restart the log after it.
            let ticket = self
                .log
                .reset(Position {
                    index: upto,
                    offset: self.restart_offset(upto),
                })
                .map_err(io_err)?;
            return ticket.await.map_err(io_err);
        }
        // Keep frames that still hold tasks some group needs.
        let floor = self.hints.retention_floor_offset.load(Ordering::Acquire);
        let mut physical = upto;
        if floor != u64::MAX {
            if let Some(pos) = self.log.locate_offset(floor).await.map_err(io_err)? {
                physical = physical.min(pos.index);
            }
        }
        if physical > self.log.first_index() {
            let ticket = self.log.purge_before(physical).map_err(io_err)?;
            ticket.await.map_err(io_err)?;
        }
        Ok(())
    }
}
