//! Queue state of one partition: which tasks each consumer group still holds, which are leased
//! to whom until when, retries, dead letters, committed offsets of stream groups, and the
//! idempotent-producer window.
//!
//! Inputs are Raft entries of the partition's group: produces ([`PartitionState::apply_produce`])
//! and batches of queue operations ([`PartitionState::apply_queue`]), each with the leader's
//! timestamp `now_ms`. Payloads never enter this state; it is the partition's Raft snapshot.
//!
//! # Invariants
//!
//! - Deterministic: ordered collections only, no clock, no randomness, no IO.
//! - Every task held by a queue group is in exactly one of that group's indexes: `ready`,
//!   `delayed`, `expiry` (leased) or `dead`. A group keeps a per-task `entries` record only for
//!   tasks that are not pristine (not ready, or delivered before, or with failure history).
//! - `tasks` holds exactly the tasks held by at least one queue group, with the number of
//!   holders; `unclaimed` holds tasks produced while no queue group existed.
//! - Within a group a task has at most one lease; a lease token's epoch is unique per partition,
//!   so a token from an earlier lease never matches the current one.
//! - A failed operation changes nothing.
//! - Attempts of a task only grow, except through an explicit `Requeue` of a dead letter.
//!
//! # Choices
//!
//! - Expired leases are reclaimed only by `Lease` operations (a `Lease` with `max_tasks: 0` is
//!   a pure "tick"). Until then, the holder's `Ack`/`Nack`/`Extend` with the matching token is
//!   still accepted: the task was never given to anyone else, so accepting is safe and saves a
//!   redelivery.
//! - Dead-lettering happens as soon as the last allowed attempt fails (nack or reclaimed expiry)
//!   and, as a safety net (after a config change lowered `max_attempts`), when a grant would
//!   exceed `max_attempts`. With `dead_letter: false` such a task is dropped: forgotten by the
//!   group like an acked task, counted in `dropped_total`.
//! - Idempotent producers: a batch is a duplicate only if its `(producer_id, first_sequence)`
//!   is one of the last [`PRODUCER_BATCHES_MAX`] batches remembered for that producer. Sequence
//!   gaps or older sequences are not errors here: such a batch is simply appended (the client
//!   owns sequence discipline; the window only absorbs retries). A duplicate still advances
//!   `next_offset` (its entry is in the log and occupies offsets) but adds no tasks.
//! - A new queue group sees every retained task: those still held by another queue group and
//!   those unclaimed. Tasks acked by every queue group are gone for later groups.
//! - Stream groups only commit offsets; a commit never moves backwards (an older commit is an
//!   accepted no-op, so retries and reordered commits are harmless; rewinding will be an
//!   explicit admin operation).
//! - Retention: [`PartitionState::retention_floor`] is the lowest offset still needed by a
//!   group. After the node deleted segments below some offset (time/size retention allowing),
//!   it proposes [`QueueOp::TrimLog`], which forgets unclaimed tasks and moves stream groups'
//!   committed offsets up; it is refused below a task a queue group still holds.
//!
//! # Design notes (scheduling features to come, DESIGN.md)
//!
//! - **Per-key ordering**: tasks keep `key_hash`. A group would add `active_keys:
//!   BTreeMap<u64, u64>` (key hash -> leased offset) and `blocked: BTreeMap<u64, BTreeSet<u64>>`
//!   (key -> waiting offsets); the scheduler step in `lease` skips a candidate whose key is
//!   active and, on ack/nack/expiry, moves the key's next offset into `ready`.
//! - **Priorities**: done: `ready` is ordered by (priority high first, offset).
//! - **Per-key / per-tenant concurrency limits and fairness**: counters of leased tasks per key
//!   or tenant, checked in the scheduler step; fairness by round-robin over per-tenant ready
//!   sets instead of one global set.
//! - **Worker sessions**: leases would name a session instead of a worker string; a session
//!   heartbeat op extends all its leases (an index session -> offsets), and "lease clock starts
//!   at hand-off" becomes a `Started { token }` op that sets `expires_at_ms`.
//! - **Requirements/capabilities**: a per-task requirement set id in [`TaskMeta`]; `Lease`
//!   carries the worker's capabilities and the scheduler step skips unmatched tasks (with
//!   per-requirement ready sets to stay O(log n)).
//! - **Retry jitter**: `Nack { retry_after_ms: Some(..) }` lets the leader supply a jittered
//!   delay computed from its own seeded RNG; the state machine itself never draws randomness.
//! - **Progress and cancellation**: small per-lease fields updated by new ops, shown through
//!   [`PartitionState::task_state`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::metadata::GroupMode;

/// Batches remembered per idempotent producer: Kafka's limit of in-flight batches per producer,
/// which is what a retry can overlap with.
pub const PRODUCER_BATCHES_MAX: usize = 5;

/// Idempotent producers remembered per partition; the least recently seen is evicted first.
/// Bounds snapshot size; a producer idle for this many others' batches loses dedup.
pub const PRODUCERS_MAX: usize = 4_096;

/// Failure records kept per task (the newest): enough to diagnose, bounded for snapshots.
pub const FAILURES_KEPT_MAX: usize = 8;

/// Longest failure reason kept, in bytes (longer ones are truncated at a char boundary).
pub const FAILURE_REASON_BYTES_MAX: usize = 1_024;

/// Most tasks one `Lease` op grants (larger requests are clamped): bounds one entry's work.
pub const LEASE_BATCH_MAX: u32 = 1_024;

/// Longest visibility timeout (SQS's 12 h): a lost worker cannot hold a task for days.
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 60 * 60 * 1_000;

/// Longest nack retry delay (larger ones are clamped): 7 days.
pub const RETRY_DELAY_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1_000;

/// Most consumer groups per partition: every queue group costs memory per retained task.
pub const GROUPS_MAX: usize = 256;

/// Longest group or worker name, in bytes: both are stored in the state.
pub const NAME_BYTES_MAX: usize = 255;

/// Most offsets listed in one `Requeue`/`DiscardDeadLetters`: bounds one entry's size.
pub const OFFSETS_PER_OP_MAX: usize = 10_000;

/// Metadata of one record, as decoded from a record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta<'a> {
    /// Ordering/partitioning key, if any; only its hash is kept.
    pub key: Option<&'a [u8]>,
    /// The task is not deliverable before this time.
    pub not_before_ms: Option<u64>,
    /// Higher is delivered first.
    pub priority: u8,
    /// Only this queue group holds the task (a dead letter requeued from the dead-letter
    /// topic for the group it failed in); `None` = every queue group, as usual.
    pub group: Option<&'a str>,
}

/// The producer fields of a batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerInfo {
    /// Producer id; 0 = not idempotent (never deduplicated).
    pub producer_id: u64,
    /// Sequence number of the batch's first record.
    pub first_sequence: u64,
    /// Records in the batch.
    pub record_count: u32,
}

/// What a produce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProduceOutcome {
    /// New tasks at `base_offset..base_offset + count`.
    Appended {
        /// First offset.
        base_offset: u64,
        /// Number of tasks.
        count: u32,
    },
    /// A retried batch: nothing added; these are the offsets the original batch got.
    Duplicate {
        /// First offset of the original batch.
        base_offset: u64,
        /// Tasks in the original batch.
        count: u32,
    },
}

/// Per-group delivery policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Default lease duration, `1..=VISIBILITY_TIMEOUT_MS_MAX`.
    pub visibility_timeout_ms: u64,
    /// Deliveries before a task is dead-lettered; 0 = unlimited.
    pub max_attempts: u32,
    /// Keep exhausted tasks as dead letters (true) or drop them (false).
    pub dead_letter: bool,
    /// Backoff after the first failed attempt, when a nack names no delay.
    pub retry_backoff_base_ms: u64,
    /// Cap of the exponential backoff.
    pub retry_backoff_max_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            visibility_timeout_ms: 30_000,
            max_attempts: 5,
            dead_letter: true,
            retry_backoff_base_ms: 1_000,
            retry_backoff_max_ms: 5 * 60 * 1_000,
        }
    }
}

impl GroupConfig {
    fn validate(&self) -> Result<(), QueueError> {
        validate_visibility(self.visibility_timeout_ms)?;
        if self.retry_backoff_base_ms > self.retry_backoff_max_ms {
            return Err(QueueError::InvalidConfig {
                reason: "retry_backoff_base_ms exceeds retry_backoff_max_ms".into(),
            });
        }
        Ok(())
    }

    /// Delay before the next delivery after failed attempt number `attempt` (1-based):
    /// `base * 2^(attempt - 1)`, capped at `retry_backoff_max_ms`. No jitter: jitter must come
    /// from the leader as an input (`Nack::retry_after_ms`).
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(63);
        self.retry_backoff_base_ms
            .saturating_mul(factor)
            .min(self.retry_backoff_max_ms)
    }
}

/// Proof of a lease: presented with ack, nack and extend; usable as a fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseToken {
    /// The task's offset.
    pub offset: u64,
    /// Delivery number (1 = first delivery).
    pub attempt: u32,
    /// Per-partition counter, bumped by every grant: unique per lease.
    pub epoch: u64,
}

/// One operation of a queue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueOp {
    /// Creates the group, or updates its config if it exists with the same mode.
    EnsureGroup {
        /// Group name.
        group: String,
        /// Delivery mode (cannot change).
        mode: GroupMode,
        /// Policy (used by queue groups).
        config: GroupConfig,
    },
    /// Reclaims expired leases, releases due delayed tasks, then grants up to `max_tasks`.
    Lease {
        /// Group name.
        group: String,
        /// Worker identity, shown in task state.
        worker: String,
        /// Most tasks to grant (clamped to [`LEASE_BATCH_MAX`]); 0 = only reclaim.
        max_tasks: u32,
        /// Lease duration; `None` = the group's default.
        visibility_timeout_ms: Option<u64>,
    },
    /// The task is done for this group.
    Ack {
        /// Group name.
        group: String,
        /// The current lease's token.
        token: LeaseToken,
    },
    /// The attempt failed: retry later (or dead-letter if it was the last attempt).
    Nack {
        /// Group name.
        group: String,
        /// The current lease's token.
        token: LeaseToken,
        /// Delay before redelivery; `None` = the group's backoff policy.
        retry_after_ms: Option<u64>,
        /// Why it failed (kept in the failure history).
        reason: Option<String>,
    },
    /// Still working: the lease now expires at `now + visibility_timeout_ms`.
    Extend {
        /// Group name.
        group: String,
        /// The current lease's token.
        token: LeaseToken,
        /// New lease duration from now.
        visibility_timeout_ms: u64,
    },
    /// Dead letters back to ready with attempts reset.
    Requeue {
        /// Group name.
        group: String,
        /// Offsets to requeue; empty = all dead letters.
        offsets: Vec<u64>,
    },
    /// Forgets dead letters (after the node forwarded them to the dead-letter topic).
    DiscardDeadLetters {
        /// Group name.
        group: String,
        /// Offsets to discard; empty = all dead letters.
        offsets: Vec<u64>,
    },
    /// Stream groups: commit the next offset to consume (never moves backwards).
    CommitOffset {
        /// Group name.
        group: String,
        /// Next offset to consume.
        offset: u64,
    },
    /// Removes the group and releases everything it held.
    DeleteGroup {
        /// Group name.
        group: String,
    },
    /// The node deleted the log below `below_offset` (retention).
    TrimLog {
        /// New log start offset.
        below_offset: u64,
    },
}

/// Result of one [`QueueOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueResult {
    /// Done.
    Ok,
    /// Granted leases (possibly none).
    Leased(Vec<LeasedTask>),
    /// Dead letters moved back to ready.
    Requeued(u32),
    /// Dead letters forgotten.
    Discarded(u32),
    /// Refused; nothing changed.
    Err(QueueError),
}

/// One granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedTask {
    /// The task's offset.
    pub offset: u64,
    /// Token to present with ack/nack/extend.
    pub token: LeaseToken,
    /// Delivery number (1 = first).
    pub attempt: u32,
    /// When the lease expires unless extended.
    pub expires_at_ms: u64,
}

/// Why a [`QueueOp`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QueueError {
    /// No such group on this partition.
    #[error("unknown consumer group {group:?}")]
    UnknownGroup {
        /// Group name.
        group: String,
    },
    /// The operation needs the other delivery mode.
    #[error("group {group:?} is a {actual:?} group; the operation needs a {expected:?} group")]
    WrongMode {
        /// Group name.
        group: String,
        /// Mode the operation needs.
        expected: GroupMode,
        /// The group's mode.
        actual: GroupMode,
    },
    /// `EnsureGroup` with another mode than the existing group's.
    #[error("group {group:?} exists in mode {existing:?}, not {requested:?}")]
    GroupModeConflict {
        /// Group name.
        group: String,
        /// Existing mode.
        existing: GroupMode,
        /// Requested mode.
        requested: GroupMode,
    },
    /// The token is not the task's current lease (it expired and was reclaimed or re-leased,
    /// or was nacked).
    #[error("stale lease on offset {offset}: epoch {presented_epoch}, current {current_epoch:?}")]
    StaleLease {
        /// The task's offset.
        offset: u64,
        /// Epoch of the presented token.
        presented_epoch: u64,
        /// Epoch of the current lease, if the task is leased.
        current_epoch: Option<u64>,
    },
    /// The group no longer holds the task: acked (by someone, maybe another worker after a
    /// redelivery), dropped after its last attempt, or discarded as a dead letter.
    #[error("offset {offset} is already acked (or otherwise done) in this group")]
    AlreadyAcked {
        /// The task's offset.
        offset: u64,
    },
    /// No task at this offset yet.
    #[error("no task at offset {offset}")]
    UnknownTask {
        /// The offset.
        offset: u64,
    },
    /// Visibility timeout outside `1..=VISIBILITY_TIMEOUT_MS_MAX`.
    #[error("visibility timeout {ms} ms is outside 1..={VISIBILITY_TIMEOUT_MS_MAX}")]
    InvalidVisibilityTimeout {
        /// The requested timeout.
        ms: u64,
    },
    /// Invalid group config.
    #[error("invalid group config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// Empty or too long group/worker name.
    #[error("{what} name must be 1..={NAME_BYTES_MAX} bytes")]
    InvalidName {
        /// `"group"` or `"worker"`.
        what: String,
    },
    /// The partition has [`GROUPS_MAX`] groups.
    #[error("too many consumer groups (max {max})")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// Too many offsets in one op.
    #[error("{count} offsets in one operation (max {max})")]
    TooManyOffsets {
        /// Offsets given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An offset beyond the end of the partition.
    #[error("offset {offset} is beyond the partition's next offset {next_offset}")]
    OffsetOutOfRange {
        /// The offset.
        offset: u64,
        /// The partition's next offset.
        next_offset: u64,
    },
    /// `TrimLog` below a task some queue group still holds.
    #[error("cannot trim below {requested}: a queue group still holds offset {floor}")]
    RetentionBlocked {
        /// Requested trim offset.
        requested: u64,
        /// Lowest offset still held.
        floor: u64,
    },
}

/// What the state keeps of a task (never the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// FNV-1a 64 hash of the key (stable across versions and replicas), for per-key scheduling.
    pub key_hash: Option<u64>,
    /// Not deliverable before this time.
    pub not_before_ms: Option<u64>,
    /// Higher is delivered first.
    pub priority: u8,
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The worker nacked.
    Nack,
    /// The lease expired.
    LeaseExpired,
}

/// One failed attempt, kept in a task's bounded failure history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The failed attempt's number.
    pub attempt: u32,
    /// When it was recorded.
    pub at_ms: u64,
    /// Nack or expiry.
    pub kind: FailureKind,
    /// The worker's reason, if it gave one (truncated to [`FAILURE_REASON_BYTES_MAX`]).
    pub reason: Option<String>,
}

/// A task's state in one queue group, for browsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// Deliverable now.
    Ready,
    /// Not deliverable before `until_ms` (not-before time or retry backoff).
    Delayed {
        /// When it becomes ready.
        until_ms: u64,
    },
    /// Leased (possibly expired but not reclaimed yet).
    Leased {
        /// The worker holding it.
        worker: String,
        /// When the lease expires.
        expires_at_ms: u64,
        /// The current lease token.
        token: LeaseToken,
    },
    /// No longer held by the group: acked, or dropped/discarded after its last attempt.
    Acked,
    /// Exhausted its attempts; waiting to be forwarded, requeued or discarded.
    DeadLettered {
        /// When it was dead-lettered.
        at_ms: u64,
    },
}

/// [`PartitionState::task_state`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStateView {
    /// State in the group.
    pub status: TaskStatus,
    /// Deliveries so far (since the last requeue).
    pub attempts: u32,
    /// Failure history, oldest first.
    pub failures: Vec<FailureRecord>,
}

/// A dead letter, for forwarding to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterView<'a> {
    /// The task's offset (the node reads the payload from the log).
    pub offset: u64,
    /// Deliveries made.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_lettered_at_ms: u64,
    /// Failure history, oldest first.
    pub failures: &'a VecDeque<FailureRecord>,
}

/// Counters of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Delivery mode.
    pub mode: GroupMode,
    /// Deliverable tasks (as of the last `Lease`; due delayed tasks are counted in `delayed`).
    pub ready: u64,
    /// Tasks waiting for a not-before or retry time.
    pub delayed: u64,
    /// Leased tasks (including expired, not yet reclaimed).
    pub in_flight: u64,
    /// Current dead letters.
    pub dead_letters: u64,
    /// Acks ever.
    pub acked_total: u64,
    /// Tasks ever dead-lettered.
    pub dead_lettered_total: u64,
    /// Tasks dropped after their last attempt (groups without dead letters).
    pub dropped_total: u64,
    /// Queue: tasks not done (ready + delayed + in flight); stream: next offset - committed.
    pub lag: u64,
    /// Age of the oldest ready task since it was produced.
    pub oldest_ready_age_ms: Option<u64>,
    /// Stream groups: the committed offset.
    pub committed_offset: Option<u64>,
}

/// Key of the ready set: priority high first, then offset ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct ReadyKey {
    /// `u8::MAX - priority`, so that ascending order is priority descending.
    rank: u8,
    offset: u64,
}

impl ReadyKey {
    fn new(priority: u8, offset: u64) -> Self {
        Self {
            rank: u8::MAX - priority,
            offset,
        }
    }
}

/// Key of time-ordered sets: `(at_ms, offset)`.
type TimeKey = (u64, u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RetainedTask {
    meta: TaskMeta,
    /// Queue groups still holding the task (>= 1).
    holders: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum EntryState {
    Ready,
    Delayed {
        until_ms: u64,
    },
    Leased {
        worker: String,
        token: LeaseToken,
        expires_at_ms: u64,
    },
    DeadLettered {
        at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TaskEntry {
    state: EntryState,
    attempts: u32,
    failures: VecDeque<FailureRecord>,
}

impl TaskEntry {
    fn pristine(&self) -> bool {
        self.state == EntryState::Ready && self.attempts == 0 && self.failures.is_empty()
    }

    fn record_failure(&mut self, at_ms: u64, kind: FailureKind, reason: Option<&str>) {
        if self.failures.len() == FAILURES_KEPT_MAX {
            self.failures.pop_front();
        }
        self.failures.push_back(FailureRecord {
            attempt: self.attempts,
            at_ms,
            kind,
            reason: reason.map(truncate_reason),
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QueueGroup {
    config: GroupConfig,
    ready: BTreeSet<ReadyKey>,
    delayed: BTreeSet<TimeKey>,
    expiry: BTreeSet<TimeKey>,
    dead: BTreeSet<u64>,
    entries: BTreeMap<u64, TaskEntry>,
    acked_total: u64,
    dead_lettered_total: u64,
    dropped_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StreamGroup {
    committed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Group {
    Queue(QueueGroup),
    Stream(StreamGroup),
}

impl Group {
    fn mode(&self) -> GroupMode {
        match self {
            Group::Queue(_) => GroupMode::Queue,
            Group::Stream(_) => GroupMode::Stream,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerWindow {
    /// Value of `producer_clock` when last seen (key into `producer_lru`).
    last_seen: u64,
    /// `(first_sequence, base_offset, count)` of the newest batches, oldest first.
    batches: VecDeque<(u64, u64, u32)>,
}

/// The replicated queue state of one partition (its Raft snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    next_offset: u64,
    log_start_offset: u64,
    next_epoch: u64,
    tasks: BTreeMap<u64, RetainedTask>,
    unclaimed: BTreeMap<u64, TaskMeta>,
    /// Batch base offset -> the leader's time of the produce, for ages; pruned below the
    /// lowest retained task.
    produce_times: BTreeMap<u64, u64>,
    producers: BTreeMap<u64, ProducerWindow>,
    producer_lru: BTreeMap<u64, u64>,
    producer_clock: u64,
    groups: BTreeMap<String, Group>,
}

impl PartitionState {
    /// An empty partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a produce entry whose first record has offset `base_offset` (the sum of record
    /// counts of all earlier entries, so `>= next_offset`; asserted). `now_ms` is the leader's
    /// time of the entry. The record count comes from `records`, not from `producer`.
    pub fn apply_produce<'a>(
        &mut self,
        base_offset: u64,
        now_ms: u64,
        producer: ProducerInfo,
        records: impl Iterator<Item = RecordMeta<'a>>,
    ) -> ProduceOutcome {
        assert!(
            base_offset >= self.next_offset,
            "produce at {base_offset} below next offset {}: offsets must be dense",
            self.next_offset
        );
        if let Some(duplicate) = self.is_duplicate(&producer) {
            let count = records.count() as u64;
            self.next_offset = base_offset + count;
            return duplicate;
        }
        let queue_groups: u32 = self
            .groups
            .values()
            .filter(|g| matches!(g, Group::Queue(_)))
            .count() as u32;
        let mut count: u32 = 0;
        for (offset, record) in (base_offset..).zip(records) {
            count += 1;
            let meta = TaskMeta {
                key_hash: record.key.map(fnv1a64),
                not_before_ms: record.not_before_ms,
                priority: record.priority,
            };
            if let Some(target) = record.group {
                // Held by its target group only; nobody else ever sees it (if the group is
                // gone, the task is done at once, like a task acked by every group).
                if let Some(Group::Queue(q)) = self.groups.get_mut(target) {
                    self.tasks.insert(offset, RetainedTask { meta, holders: 1 });
                    q.hold(offset, &meta, now_ms);
                }
                continue;
            }
            if queue_groups == 0 {
                self.unclaimed.insert(offset, meta);
                continue;
            }
            self.tasks.insert(
                offset,
                RetainedTask {
                    meta,
                    holders: queue_groups,
                },
            );
            for group in self.groups.values_mut() {
                if let Group::Queue(q) = group {
                    q.hold(offset, &meta, now_ms);
                }
            }
        }
        if count > 0 {
            self.produce_times.insert(base_offset, now_ms);
        }
        self.next_offset = base_offset + u64::from(count);
        if producer.producer_id != 0 {
            self.remember_batch(producer, base_offset, count);
        }
        ProduceOutcome::Appended { base_offset, count }
    }

    /// The leader's pre-check before proposing a batch: `Some(Duplicate { .. })` if the batch
    /// was already applied (within the dedup window).
    pub fn is_duplicate(&self, producer: &ProducerInfo) -> Option<ProduceOutcome> {
        if producer.producer_id == 0 {
            return None;
        }
        let window = self.producers.get(&producer.producer_id)?;
        window
            .batches
            .iter()
            .find(|(seq, _, _)| *seq == producer.first_sequence)
            .map(|(_, base_offset, count)| ProduceOutcome::Duplicate {
                base_offset: *base_offset,
                count: *count,
            })
    }

    /// Applies one queue entry (many ops, in order); one result per op.
    pub fn apply_queue(&mut self, now_ms: u64, ops: &[QueueOp]) -> Vec<QueueResult> {
        let results = ops
            .iter()
            .map(|op| match self.apply_op(now_ms, op) {
                Ok(result) => result,
                Err(e) => QueueResult::Err(e),
            })
            .collect();
        self.prune_produce_times();
        results
    }

    /// One past the highest applied offset.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Lowest offset still in the log, as far as this state knows (raised by `TrimLog`).
    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// Lowest offset some group still needs: every task below is done in every queue group and
    /// below every stream group's committed offset. The node may delete segments below it
    /// (when time/size retention also allows), then propose `TrimLog`.
    pub fn retention_floor(&self) -> u64 {
        let queue = self
            .tasks
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_offset);
        let stream = self
            .groups
            .values()
            .filter_map(|g| match g {
                Group::Stream(s) => Some(s.committed),
                Group::Queue(_) => None,
            })
            .min()
            .unwrap_or(self.next_offset);
        queue.min(stream).min(self.next_offset)
    }

    /// All groups with their modes, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, GroupMode)> + '_ {
        self.groups
            .iter()
            .map(|(name, g)| (name.as_str(), g.mode()))
    }

    /// Counters of one group; `now_ms` is used for ages.
    pub fn group_stats(&self, group: &str, now_ms: u64) -> Option<GroupStats> {
        Some(match self.groups.get(group)? {
            Group::Stream(s) => GroupStats {
                mode: GroupMode::Stream,
                ready: 0,
                delayed: 0,
                in_flight: 0,
                dead_letters: 0,
                acked_total: 0,
                dead_lettered_total: 0,
                dropped_total: 0,
                lag: self.next_offset.saturating_sub(s.committed),
                oldest_ready_age_ms: None,
                committed_offset: Some(s.committed),
            },
            Group::Queue(q) => {
                // The oldest ready task is the lowest offset of any priority class.
                let oldest = (0..=u8::MAX)
                    .filter_map(|rank| {
                        q.ready
                            .range(
                                ReadyKey { rank, offset: 0 }..=ReadyKey {
                                    rank,
                                    offset: u64::MAX,
                                },
                            )
                            .next()
                            .map(|k| k.offset)
                    })
                    .min();
                let oldest_ready_age_ms = oldest.and_then(|offset| {
                    let (_, produced) = self.produce_times.range(..=offset).next_back()?;
                    Some(now_ms.saturating_sub(*produced))
                });
                let (ready, delayed, in_flight) = (
                    q.ready.len() as u64,
                    q.delayed.len() as u64,
                    q.expiry.len() as u64,
                );
                GroupStats {
                    mode: GroupMode::Queue,
                    ready,
                    delayed,
                    in_flight,
                    dead_letters: q.dead.len() as u64,
                    acked_total: q.acked_total,
                    dead_lettered_total: q.dead_lettered_total,
                    dropped_total: q.dropped_total,
                    lag: ready + delayed + in_flight,
                    oldest_ready_age_ms,
                    committed_offset: None,
                }
            }
        })
    }

    /// The workers holding leases in a queue group, with how many tasks each holds (expired
    /// leases not yet reclaimed included); `None` for an unknown or stream group. Costs one
    /// pass over the group's in-flight tasks.
    pub fn lease_holders(&self, group: &str) -> Option<BTreeMap<String, u64>> {
        let Group::Queue(q) = self.groups.get(group)? else {
            return None;
        };
        let mut out = BTreeMap::new();
        for k in &q.expiry {
            if let Some(TaskEntry {
                state: EntryState::Leased { worker, .. },
                ..
            }) = q.entries.get(&k.1)
            {
                *out.entry(worker.clone()).or_insert(0) += 1;
            }
        }
        Some(out)
    }

    /// A task's state in a queue group; `None` for an unknown or stream group, or an offset
    /// never produced.
    pub fn task_state(&self, group: &str, offset: u64) -> Option<TaskStateView> {
        let Group::Queue(q) = self.groups.get(group)? else {
            return None;
        };
        if offset >= self.next_offset {
            return None;
        }
        if let Some(entry) = q.entries.get(&offset) {
            let status = match &entry.state {
                EntryState::Ready => TaskStatus::Ready,
                EntryState::Delayed { until_ms } => TaskStatus::Delayed {
                    until_ms: *until_ms,
                },
                EntryState::Leased {
                    worker,
                    token,
                    expires_at_ms,
                } => TaskStatus::Leased {
                    worker: worker.clone(),
                    expires_at_ms: *expires_at_ms,
                    token: *token,
                },
                EntryState::DeadLettered { at_ms } => TaskStatus::DeadLettered { at_ms: *at_ms },
            };
            return Some(TaskStateView {
                status,
                attempts: entry.attempts,
                failures: entry.failures.iter().cloned().collect(),
            });
        }
        let held = self
            .tasks
            .get(&offset)
            .is_some_and(|t| q.ready.contains(&ReadyKey::new(t.meta.priority, offset)));
        Some(TaskStateView {
            status: if held {
                TaskStatus::Ready
            } else {
                TaskStatus::Acked
            },
            attempts: 0,
            failures: Vec::new(),
        })
    }

    /// The dead letters of a queue group, by offset; `None` for an unknown or stream group.
    pub fn dead_letters(
        &self,
        group: &str,
    ) -> Option<impl Iterator<Item = DeadLetterView<'_>> + '_> {
        let Group::Queue(q) = self.groups.get(group)? else {
            return None;
        };
        Some(q.dead.iter().map(|offset| {
            let entry = q
                .entries
                .get(offset)
                .expect("invariant: dead letters have entries");
            let at_ms = match entry.state {
                EntryState::DeadLettered { at_ms } => at_ms,
                _ => unreachable!("invariant: entries of dead letters are DeadLettered"),
            };
            DeadLetterView {
                offset: *offset,
                attempts: entry.attempts,
                dead_lettered_at_ms: at_ms,
                failures: &entry.failures,
            }
        }))
    }

    fn apply_op(&mut self, now_ms: u64, op: &QueueOp) -> Result<QueueResult, QueueError> {
        match op {
            QueueOp::EnsureGroup {
                group,
                mode,
                config,
            } => self.ensure_group(now_ms, group, *mode, config),
            QueueOp::Lease {
                group,
                worker,
                max_tasks,
                visibility_timeout_ms,
            } => self.lease(now_ms, group, worker, *max_tasks, *visibility_timeout_ms),
            QueueOp::Ack { group, token } => self.ack(group, *token),
            QueueOp::Nack {
                group,
                token,
                retry_after_ms,
                reason,
            } => self.nack(now_ms, group, *token, *retry_after_ms, reason.as_deref()),
            QueueOp::Extend {
                group,
                token,
                visibility_timeout_ms,
            } => self.extend(now_ms, group, *token, *visibility_timeout_ms),
            QueueOp::Requeue { group, offsets } => self.requeue(group, offsets),
            QueueOp::DiscardDeadLetters { group, offsets } => self.discard(group, offsets),
            QueueOp::CommitOffset { group, offset } => self.commit(group, *offset),
            QueueOp::DeleteGroup { group } => self.delete_group(group),
            QueueOp::TrimLog { below_offset } => self.trim(*below_offset),
        }
    }

    fn ensure_group(
        &mut self,
        now_ms: u64,
        name: &str,
        mode: GroupMode,
        config: &GroupConfig,
    ) -> Result<QueueResult, QueueError> {
        validate_name("group", name)?;
        if mode == GroupMode::Queue {
            config.validate()?;
        }
        if let Some(existing) = self.groups.get_mut(name) {
            return match (existing, mode) {
                (Group::Queue(q), GroupMode::Queue) => {
                    q.config = config.clone();
                    Ok(QueueResult::Ok)
                }
                (Group::Stream(_), GroupMode::Stream) => Ok(QueueResult::Ok),
                (existing, requested) => Err(QueueError::GroupModeConflict {
                    group: name.to_owned(),
                    existing: existing.mode(),
                    requested,
                }),
            };
        }
        if self.groups.len() >= GROUPS_MAX {
            return Err(QueueError::TooManyGroups { max: GROUPS_MAX });
        }
        let group = match mode {
            GroupMode::Stream => Group::Stream(StreamGroup {
                committed: self.log_start_offset,
            }),
            GroupMode::Queue => {
                // Claim unclaimed tasks (only present while no queue group exists), then hold
                // every retained task. O(retained tasks): group creation is rare.
                for (offset, meta) in std::mem::take(&mut self.unclaimed) {
                    self.tasks.insert(offset, RetainedTask { meta, holders: 0 });
                }
                let mut q = QueueGroup::new(config.clone());
                for (offset, task) in &mut self.tasks {
                    task.holders += 1;
                    q.hold(*offset, &task.meta, now_ms);
                }
                Group::Queue(q)
            }
        };
        self.groups.insert(name.to_owned(), group);
        Ok(QueueResult::Ok)
    }

    fn queue_group(&mut self, name: &str) -> Result<(&mut QueueGroup, &mut Tasks), QueueError> {
        let tasks = &mut self.tasks;
        match self.groups.get_mut(name) {
            None => Err(QueueError::UnknownGroup {
                group: name.to_owned(),
            }),
            Some(Group::Stream(_)) => Err(QueueError::WrongMode {
                group: name.to_owned(),
                expected: GroupMode::Queue,
                actual: GroupMode::Stream,
            }),
            Some(Group::Queue(q)) => Ok((q, tasks)),
        }
    }

    fn lease(
        &mut self,
        now_ms: u64,
        group: &str,
        worker: &str,
        max_tasks: u32,
        visibility_timeout_ms: Option<u64>,
    ) -> Result<QueueResult, QueueError> {
        validate_name("worker", worker)?;
        if let Some(ms) = visibility_timeout_ms {
            validate_visibility(ms)?;
        }
        let mut epoch = self.next_epoch;
        let (q, tasks) = self.queue_group(group)?;
        q.reclaim_expired(now_ms, tasks);
        q.release_due(now_ms, tasks);
        let visibility = visibility_timeout_ms.unwrap_or(q.config.visibility_timeout_ms);
        let expires_at_ms = now_ms.saturating_add(visibility);
        let want = max_tasks.min(LEASE_BATCH_MAX) as usize;
        let mut granted = Vec::with_capacity(want);
        let mut cursor = Bound::Unbounded;
        while granted.len() < want {
            let Some(key) = q.ready.range((cursor, Bound::Unbounded)).next().copied() else {
                break;
            };
            cursor = Bound::Excluded(key);
            // Scheduler step: per-key ordering, concurrency limits and requirement matching
            // plug in here by skipping `key` (see the module's design notes).
            let offset = key.offset;
            q.ready.remove(&key);
            let entry = q.entries.entry(offset).or_insert_with(TaskEntry::new_ready);
            let attempt = entry.attempts + 1;
            if q.config.max_attempts > 0 && attempt > q.config.max_attempts {
                q.exhaust(offset, now_ms, tasks);
                continue;
            }
            let token = LeaseToken {
                offset,
                attempt,
                epoch,
            };
            epoch += 1;
            entry.attempts = attempt;
            entry.state = EntryState::Leased {
                worker: worker.to_owned(),
                token,
                expires_at_ms,
            };
            q.expiry.insert((expires_at_ms, offset));
            granted.push(LeasedTask {
                offset,
                token,
                attempt,
                expires_at_ms,
            });
        }
        self.next_epoch = epoch;
        Ok(QueueResult::Leased(granted))
    }

    fn ack(&mut self, group: &str, token: LeaseToken) -> Result<QueueResult, QueueError> {
        let next_offset = self.next_offset;
        let (q, tasks) = self.queue_group(group)?;
        let expires_at_ms = q.check_lease(token, tasks, next_offset)?;
        q.expiry.remove(&(expires_at_ms, token.offset));
        q.entries.remove(&token.offset);
        q.acked_total += 1;
        release(tasks, token.offset);
        Ok(QueueResult::Ok)
    }

    fn nack(
        &mut self,
        now_ms: u64,
        group: &str,
        token: LeaseToken,
        retry_after_ms: Option<u64>,
        reason: Option<&str>,
    ) -> Result<QueueResult, QueueError> {
        let next_offset = self.next_offset;
        let (q, tasks) = self.queue_group(group)?;
        let expires_at_ms = q.check_lease(token, tasks, next_offset)?;
        q.expiry.remove(&(expires_at_ms, token.offset));
        let entry = q.entry_mut(token.offset);
        entry.record_failure(now_ms, FailureKind::Nack, reason);
        let attempts = entry.attempts;
        let delay = retry_after_ms
            .unwrap_or_else(|| q.config.backoff_ms(attempts))
            .min(RETRY_DELAY_MS_MAX);
        q.fail(token.offset, now_ms, delay, tasks);
        Ok(QueueResult::Ok)
    }

    fn extend(
        &mut self,
        now_ms: u64,
        group: &str,
        token: LeaseToken,
        visibility_timeout_ms: u64,
    ) -> Result<QueueResult, QueueError> {
        validate_visibility(visibility_timeout_ms)?;
        let next_offset = self.next_offset;
        let (q, tasks) = self.queue_group(group)?;
        let old = q.check_lease(token, tasks, next_offset)?;
        let new = now_ms.saturating_add(visibility_timeout_ms);
        q.expiry.remove(&(old, token.offset));
        q.expiry.insert((new, token.offset));
        if let EntryState::Leased { expires_at_ms, .. } = &mut q.entry_mut(token.offset).state {
            *expires_at_ms = new;
        }
        Ok(QueueResult::Ok)
    }

    fn selected_dead_letters(q: &QueueGroup, offsets: &[u64]) -> Result<Vec<u64>, QueueError> {
        if offsets.len() > OFFSETS_PER_OP_MAX {
            return Err(QueueError::TooManyOffsets {
                count: offsets.len(),
                max: OFFSETS_PER_OP_MAX,
            });
        }
        Ok(if offsets.is_empty() {
            q.dead.iter().copied().collect()
        } else {
            let wanted: BTreeSet<u64> = offsets.iter().copied().collect();
            wanted.into_iter().filter(|o| q.dead.contains(o)).collect()
        })
    }

    fn requeue(&mut self, group: &str, offsets: &[u64]) -> Result<QueueResult, QueueError> {
        let (q, tasks) = self.queue_group(group)?;
        let selected = Self::selected_dead_letters(q, offsets)?;
        for offset in &selected {
            q.dead.remove(offset);
            let entry = q.entry_mut(*offset);
            entry.attempts = 0;
            entry.state = EntryState::Ready;
            q.ready
                .insert(ReadyKey::new(priority_of(tasks, *offset), *offset));
        }
        Ok(QueueResult::Requeued(selected.len() as u32))
    }

    fn discard(&mut self, group: &str, offsets: &[u64]) -> Result<QueueResult, QueueError> {
        let (q, tasks) = self.queue_group(group)?;
        let selected = Self::selected_dead_letters(q, offsets)?;
        for offset in &selected {
            q.dead.remove(offset);
            q.entries.remove(offset);
            release(tasks, *offset);
        }
        Ok(QueueResult::Discarded(selected.len() as u32))
    }

    fn commit(&mut self, group: &str, offset: u64) -> Result<QueueResult, QueueError> {
        let next_offset = self.next_offset;
        match self.groups.get_mut(group) {
            None => Err(QueueError::UnknownGroup {
                group: group.to_owned(),
            }),
            Some(Group::Queue(_)) => Err(QueueError::WrongMode {
                group: group.to_owned(),
                expected: GroupMode::Stream,
                actual: GroupMode::Queue,
            }),
            Some(Group::Stream(_)) if offset > next_offset => Err(QueueError::OffsetOutOfRange {
                offset,
                next_offset,
            }),
            Some(Group::Stream(s)) => {
                s.committed = s.committed.max(offset);
                Ok(QueueResult::Ok)
            }
        }
    }

    fn delete_group(&mut self, name: &str) -> Result<QueueResult, QueueError> {
        let group = self
            .groups
            .remove(name)
            .ok_or_else(|| QueueError::UnknownGroup {
                group: name.to_owned(),
            })?;
        let Group::Queue(q) = group else {
            return Ok(QueueResult::Ok);
        };
        let last_queue_group = !self.groups.values().any(|g| matches!(g, Group::Queue(_)));
        let held = q
            .ready
            .iter()
            .map(|k| k.offset)
            .chain(q.delayed.iter().map(|(_, o)| *o))
            .chain(q.expiry.iter().map(|(_, o)| *o))
            .chain(q.dead.iter().copied());
        if last_queue_group {
            // Its unacked tasks become unclaimed again, as if produced with no group around.
            for offset in held {
                let task = self
                    .tasks
                    .remove(&offset)
                    .expect("invariant: held tasks are retained");
                self.unclaimed.insert(offset, task.meta);
            }
            assert!(self.tasks.is_empty(), "tasks held by no queue group");
        } else {
            for offset in held {
                release(&mut self.tasks, offset);
            }
        }
        Ok(QueueResult::Ok)
    }

    fn trim(&mut self, below_offset: u64) -> Result<QueueResult, QueueError> {
        if below_offset > self.next_offset {
            return Err(QueueError::OffsetOutOfRange {
                offset: below_offset,
                next_offset: self.next_offset,
            });
        }
        if let Some(floor) = self.tasks.keys().next().copied() {
            if below_offset > floor {
                return Err(QueueError::RetentionBlocked {
                    requested: below_offset,
                    floor,
                });
            }
        }
        self.log_start_offset = self.log_start_offset.max(below_offset);
        let kept = self.unclaimed.split_off(&below_offset);
        self.unclaimed = kept;
        for group in self.groups.values_mut() {
            if let Group::Stream(s) = group {
                s.committed = s.committed.max(below_offset);
            }
        }
        Ok(QueueResult::Ok)
    }

    fn remember_batch(&mut self, producer: ProducerInfo, base_offset: u64, count: u32) {
        self.producer_clock += 1;
        let clock = self.producer_clock;
        let window = self
            .producers
            .entry(producer.producer_id)
            .or_insert_with(|| ProducerWindow {
                last_seen: clock,
                batches: VecDeque::new(),
            });
        self.producer_lru.remove(&window.last_seen);
        window.last_seen = clock;
        if window.batches.len() == PRODUCER_BATCHES_MAX {
            window.batches.pop_front();
        }
        window
            .batches
            .push_back((producer.first_sequence, base_offset, count));
        self.producer_lru.insert(clock, producer.producer_id);
        while self.producers.len() > PRODUCERS_MAX {
            let (_, evicted) = self
                .producer_lru
                .pop_first()
                .expect("invariant: lru mirrors producers");
            self.producers.remove(&evicted);
        }
    }

    fn prune_produce_times(&mut self) {
        let floor = [
            self.tasks.keys().next(),
            self.unclaimed.keys().next(),
            Some(&self.next_offset),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
        .unwrap_or(self.next_offset);
        // Keep the batch containing `floor`: drop an entry once the next one starts at or below.
        while let Some(second) = self.produce_times.keys().nth(1).copied() {
            if second > floor {
                break;
            }
            self.produce_times.pop_first();
        }
    }
}

type Tasks = BTreeMap<u64, RetainedTask>;

fn priority_of(tasks: &Tasks, offset: u64) -> u8 {
    tasks
        .get(&offset)
        .expect("invariant: tasks held by a group are retained")
        .meta
        .priority
}

/// One holder is done with the task; it leaves the index when no queue group holds it.
fn release(tasks: &mut Tasks, offset: u64) {
    let task = tasks
        .get_mut(&offset)
        .expect("invariant: tasks held by a group are retained");
    task.holders -= 1;
    if task.holders == 0 {
        tasks.remove(&offset);
    }
}

impl TaskEntry {
    fn new_ready() -> Self {
        Self {
            state: EntryState::Ready,
            attempts: 0,
            failures: VecDeque::new(),
        }
    }
}

impl QueueGroup {
    fn new(config: GroupConfig) -> Self {
        Self {
            config,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            expiry: BTreeSet::new(),
            dead: BTreeSet::new(),
            entries: BTreeMap::new(),
            acked_total: 0,
            dead_lettered_total: 0,
            dropped_total: 0,
        }
    }

    fn entry_mut(&mut self, offset: u64) -> &mut TaskEntry {
        self.entries
            .get_mut(&offset)
            .expect("invariant: non-ready tasks have entries")
    }

    /// Starts holding a new task: ready, or delayed until its not-before time.
    fn hold(&mut self, offset: u64, meta: &TaskMeta, now_ms: u64) {
        match meta.not_before_ms {
            Some(until_ms) if until_ms > now_ms => {
                self.delayed.insert((until_ms, offset));
                self.entries.insert(
                    offset,
                    TaskEntry {
                        state: EntryState::Delayed { until_ms },
                        attempts: 0,
                        failures: VecDeque::new(),
                    },
                );
            }
            _ => {
                self.ready.insert(ReadyKey::new(meta.priority, offset));
            }
        }
    }

    /// Validates a token; returns the lease's expiry. An expired but unreclaimed lease is
    /// still valid (see the module docs).
    fn check_lease(
        &self,
        token: LeaseToken,
        tasks: &Tasks,
        next_offset: u64,
    ) -> Result<u64, QueueError> {
        let stale = |current_epoch| QueueError::StaleLease {
            offset: token.offset,
            presented_epoch: token.epoch,
            current_epoch,
        };
        match self.entries.get(&token.offset) {
            Some(TaskEntry {
                state:
                    EntryState::Leased {
                        token: current,
                        expires_at_ms,
                        ..
                    },
                ..
            }) => {
                if *current == token {
                    Ok(*expires_at_ms)
                } else {
                    Err(stale(Some(current.epoch)))
                }
            }
            Some(_) => Err(stale(None)),
            None if token.offset >= next_offset => Err(QueueError::UnknownTask {
                offset: token.offset,
            }),
            None => {
                let held = tasks.get(&token.offset).is_some_and(|t| {
                    self.ready
                        .contains(&ReadyKey::new(t.meta.priority, token.offset))
                });
                if held {
                    Err(stale(None))
                } else {
                    Err(QueueError::AlreadyAcked {
                        offset: token.offset,
                    })
                }
            }
        }
    }

    /// Moves expired leases back to ready (or dead letters after the last attempt).
    fn reclaim_expired(&mut self, now_ms: u64, tasks: &mut Tasks) {
        while let Some(&(at_ms, offset)) = self.expiry.first() {
            if at_ms > now_ms {
                break;
            }
            self.expiry.pop_first();
            self.entry_mut(offset)
                .record_failure(now_ms, FailureKind::LeaseExpired, None);
            self.fail(offset, now_ms, 0, tasks);
        }
    }

    /// After a failed attempt (no longer in `expiry`): dead-letter/drop if it was the last
    /// attempt, else ready after `delay_ms`.
    fn fail(&mut self, offset: u64, now_ms: u64, delay_ms: u64, tasks: &mut Tasks) {
        let max_attempts = self.config.max_attempts;
        let entry = self.entry_mut(offset);
        if max_attempts > 0 && entry.attempts >= max_attempts {
            self.exhaust(offset, now_ms, tasks);
        } else if delay_ms == 0 {
            entry.state = EntryState::Ready;
            self.ready
                .insert(ReadyKey::new(priority_of(tasks, offset), offset));
        } else {
            let until_ms = now_ms.saturating_add(delay_ms);
            entry.state = EntryState::Delayed { until_ms };
            self.delayed.insert((until_ms, offset));
        }
    }

    /// The task used up its attempts (it is in no index now): dead letter or drop.
    fn exhaust(&mut self, offset: u64, now_ms: u64, tasks: &mut Tasks) {
        if self.config.dead_letter {
            self.entry_mut(offset).state = EntryState::DeadLettered { at_ms: now_ms };
            self.dead.insert(offset);
            self.dead_lettered_total += 1;
        } else {
            self.entries.remove(&offset);
            self.dropped_total += 1;
            release(tasks, offset);
        }
    }

    /// Moves delayed tasks whose time came to ready.
    fn release_due(&mut self, now_ms: u64, tasks: &Tasks) {
        while let Some(&(at_ms, offset)) = self.delayed.first() {
            if at_ms > now_ms {
                break;
            }
            self.delayed.pop_first();
            let entry = self.entry_mut(offset);
            entry.state = EntryState::Ready;
            if entry.pristine() {
                self.entries.remove(&offset);
            }
            self.ready
                .insert(ReadyKey::new(priority_of(tasks, offset), offset));
        }
    }
}

fn validate_visibility(ms: u64) -> Result<(), QueueError> {
    if (1..=VISIBILITY_TIMEOUT_MS_MAX).contains(&ms) {
        Ok(())
    } else {
        Err(QueueError::InvalidVisibilityTimeout { ms })
    }
}

fn validate_name(what: &str, name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(QueueError::InvalidName { what: what.into() });
    }
    Ok(())
}

fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(FAILURE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// FNV-1a 64: tiny, stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "workers";

    fn rec(priority: u8, not_before_ms: Option<u64>) -> RecordMeta<'static> {
        RecordMeta {
            key: Some(b"k"),
            not_before_ms,
            priority,
            group: None,
        }
    }

    fn anon(count: u32) -> ProducerInfo {
        ProducerInfo {
            producer_id: 0,
            first_sequence: 0,
            record_count: count,
        }
    }

    fn config(max_attempts: u32) -> GroupConfig {
        GroupConfig {
            visibility_timeout_ms: 1_000,
            max_attempts,
            dead_letter: true,
            retry_backoff_base_ms: 100,
            retry_backoff_max_ms: 1_000,
        }
    }

    /// A partition with queue group `G` and `n` ready tasks of priority 0.
    fn setup(n: u32, max_attempts: u32) -> PartitionState {
        let mut p = PartitionState::new();
        ensure(&mut p, G, GroupMode::Queue, config(max_attempts));
        produce(&mut p, n, 0);
        p
    }

    fn ensure(p: &mut PartitionState, group: &str, mode: GroupMode, config: GroupConfig) {
        let op = QueueOp::EnsureGroup {
            group: group.into(),
            mode,
            config,
        };
        assert_eq!(p.apply_queue(0, &[op]), vec![QueueResult::Ok]);
    }

    fn produce(p: &mut PartitionState, n: u32, now_ms: u64) -> ProduceOutcome {
        let base = p.next_offset();
        p.apply_produce(base, now_ms, anon(n), (0..n).map(|_| rec(0, None)))
    }

    fn one(p: &mut PartitionState, now_ms: u64, op: QueueOp) -> QueueResult {
        let mut results = p.apply_queue(now_ms, &[op]);
        assert_eq!(results.len(), 1);
        results.remove(0)
    }

    fn lease(p: &mut PartitionState, now_ms: u64, worker: &str, max: u32) -> Vec<LeasedTask> {
        let op = QueueOp::Lease {
            group: G.into(),
            worker: worker.into(),
            max_tasks: max,
            visibility_timeout_ms: None,
        };
        match one(p, now_ms, op) {
            QueueResult::Leased(tasks) => tasks,
            other => panic!("lease failed: {other:?}"),
        }
    }

    fn ack(p: &mut PartitionState, now_ms: u64, token: LeaseToken) -> QueueResult {
        one(
            p,
            now_ms,
            QueueOp::Ack {
                group: G.into(),
                token,
            },
        )
    }

    fn nack(
        p: &mut PartitionState,
        now_ms: u64,
        token: LeaseToken,
        retry: Option<u64>,
    ) -> QueueResult {
        one(
            p,
            now_ms,
            QueueOp::Nack {
                group: G.into(),
                token,
                retry_after_ms: retry,
                reason: Some("boom".into()),
            },
        )
    }

    fn offsets(tasks: &[LeasedTask]) -> Vec<u64> {
        tasks.iter().map(|t| t.offset).collect()
    }

    #[test]
    fn a_task_for_one_group_is_held_by_that_group_only() {
        let mut p = setup(0, 3);
        ensure(&mut p, "other", GroupMode::Queue, config(3));
        let targeted = |group| RecordMeta {
            key: None,
            not_before_ms: None,
            priority: 0,
            group: Some(group),
        };
        let base = p.next_offset();
        let out = p.apply_produce(
            base,
            0,
            anon(3),
            [targeted(G), targeted("gone"), rec(0, None)].into_iter(),
        );
        assert_eq!(
            out,
            ProduceOutcome::Appended {
                base_offset: 0,
                count: 3
            }
        );
        // G holds its own task and the untargeted one; "other" only the untargeted one; the
        // task for a group that does not exist is done at once.
        assert_eq!(p.group_stats(G, 0).map(|s| s.ready), Some(2));
        assert_eq!(p.group_stats("other", 0).map(|s| s.ready), Some(1));
        assert_eq!(
            p.task_state("other", 0).map(|t| t.status),
            Some(TaskStatus::Acked)
        );
        assert_eq!(
            p.task_state(G, 1).map(|t| t.status),
            Some(TaskStatus::Acked)
        );
        let leased = lease(&mut p, 0, "w", 10);
        assert_eq!(offsets(&leased), vec![0, 2]);
        for t in &leased {
            assert_eq!(ack(&mut p, 0, t.token), QueueResult::Ok);
        }
        assert_eq!(p.group_stats(G, 0).map(|s| s.lag), Some(0));
        // Offset 0 was only G's: gone from the retained tasks once G acked it.
        assert_eq!(p.retention_floor(), 2);
    }

    #[test]
    fn lease_ack_happy_path() {
        let mut p = setup(3, 5);
        let got = lease(&mut p, 10, "w1", 2);
        assert_eq!(offsets(&got), vec![0, 1]);
        assert_eq!(got[0].attempt, 1);
        assert_eq!(got[0].expires_at_ms, 1_010);
        assert_ne!(got[0].token.epoch, got[1].token.epoch);
        // Leased tasks are not granted again.
        assert_eq!(offsets(&lease(&mut p, 20, "w2", 10)), vec![2]);
        assert_eq!(lease(&mut p, 30, "w3", 10), vec![]);
        assert_eq!(ack(&mut p, 40, got[0].token), QueueResult::Ok);
        assert_eq!(
            ack(&mut p, 41, got[0].token),
            QueueResult::Err(QueueError::AlreadyAcked { offset: 0 })
        );
        assert_eq!(
            p.task_state(G, 0).map(|v| v.status),
            Some(TaskStatus::Acked)
        );
        let stats = p.group_stats(G, 50).expect("group exists");
        assert_eq!((stats.ready, stats.in_flight, stats.acked_total), (0, 2, 1));
        assert_eq!(stats.lag, 2);
    }

    #[test]
    fn lease_holders_count_leases_per_worker() {
        let mut p = setup(4, 5);
        assert_eq!(p.lease_holders(G), Some(BTreeMap::new()));
        let a = lease(&mut p, 10, "w1", 2);
        lease(&mut p, 11, "w2", 1);
        let holders = p.lease_holders(G).expect("queue group");
        assert_eq!(holders.get("w1"), Some(&2));
        assert_eq!(holders.get("w2"), Some(&1));
        assert_eq!(ack(&mut p, 12, a[0].token), QueueResult::Ok);
        assert_eq!(p.lease_holders(G).expect("group").get("w1"), Some(&1));
        assert_eq!(p.lease_holders("nope"), None);
    }

    #[test]
    fn stale_token_after_expiry_and_relase_is_refused() {
        let mut p = setup(1, 5);
        let first = lease(&mut p, 0, "slow", 1)[0].clone();
        // Expired but not reclaimed: the holder's ack would still be accepted.
        let view = p.task_state(G, 0).expect("exists");
        assert!(matches!(view.status, TaskStatus::Leased { ref worker, .. } if worker == "slow"));
        let second = lease(&mut p, 1_000, "fast", 1)[0].clone();
        assert_eq!(second.offset, 0);
        assert_eq!(second.attempt, 2);
        assert_eq!(
            ack(&mut p, 1_001, first.token),
            QueueResult::Err(QueueError::StaleLease {
                offset: 0,
                presented_epoch: first.token.epoch,
                current_epoch: Some(second.token.epoch),
            })
        );
        assert_eq!(ack(&mut p, 1_002, second.token), QueueResult::Ok);
        let failures = p.group_stats(G, 0).expect("exists");
        assert_eq!(failures.acked_total, 1);
    }

    #[test]
    fn expired_but_unreclaimed_lease_can_still_be_acked() {
        let mut p = setup(1, 5);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        assert_eq!(ack(&mut p, 5_000, t), QueueResult::Ok);
        assert_eq!(lease(&mut p, 6_000, "w", 1), vec![]);
    }

    #[test]
    fn nack_with_delay_holds_the_task_back() {
        let mut p = setup(1, 5);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        assert_eq!(nack(&mut p, 10, t, Some(500)), QueueResult::Ok);
        assert_eq!(
            p.task_state(G, 0).map(|v| v.status),
            Some(TaskStatus::Delayed { until_ms: 510 })
        );
        assert_eq!(
            nack(&mut p, 11, t, None),
            QueueResult::Err(QueueError::StaleLease {
                offset: 0,
                presented_epoch: t.epoch,
                current_epoch: None
            })
        );
        assert_eq!(lease(&mut p, 509, "w", 1), vec![]);
        let again = lease(&mut p, 510, "w", 1);
        assert_eq!(again[0].attempt, 2);
        let view = p.task_state(G, 0).expect("exists");
        assert_eq!(view.failures.len(), 1);
        assert_eq!(view.failures[0].reason.as_deref(), Some("boom"));
        assert_eq!(view.failures[0].kind, FailureKind::Nack);
    }

    #[test]
    fn nack_without_delay_uses_exponential_backoff() {
        let c = config(0);
        assert_eq!(c.backoff_ms(1), 100);
        assert_eq!(c.backoff_ms(2), 200);
        assert_eq!(c.backoff_ms(4), 800);
        assert_eq!(c.backoff_ms(5), 1_000);
        assert_eq!(c.backoff_ms(u32::MAX), 1_000);
        let mut p = setup(1, 0);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        nack(&mut p, 0, t, None);
        assert_eq!(lease(&mut p, 99, "w", 1), vec![]);
        let t = lease(&mut p, 100, "w", 1)[0].token;
        nack(&mut p, 100, t, None);
        assert_eq!(lease(&mut p, 299, "w", 1), vec![]);
        assert_eq!(lease(&mut p, 300, "w", 1).len(), 1);
    }

    #[test]
    fn extend_moves_the_expiry() {
        let mut p = setup(1, 5);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        let op = QueueOp::Extend {
            group: G.into(),
            token: t,
            visibility_timeout_ms: 5_000,
        };
        assert_eq!(one(&mut p, 900, op), QueueResult::Ok);
        assert_eq!(lease(&mut p, 5_899, "x", 1), vec![]);
        assert_eq!(ack(&mut p, 5_899, t), QueueResult::Ok);
        let bad = QueueOp::Extend {
            group: G.into(),
            token: t,
            visibility_timeout_ms: 0,
        };
        assert_eq!(
            one(&mut p, 0, bad),
            QueueResult::Err(QueueError::InvalidVisibilityTimeout { ms: 0 })
        );
    }

    #[test]
    fn max_attempts_dead_letters_and_requeue_brings_back() {
        let mut p = setup(1, 2);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        nack(&mut p, 0, t, Some(0));
        let t = lease(&mut p, 0, "w", 1)[0].token;
        assert_eq!(t.attempt, 2);
        // The second attempt expires: dead-lettered on reclaim.
        assert_eq!(lease(&mut p, 1_000, "w", 1), vec![]);
        assert_eq!(
            p.task_state(G, 0).map(|v| v.status),
            Some(TaskStatus::DeadLettered { at_ms: 1_000 })
        );
        let dead: Vec<_> = p.dead_letters(G).expect("queue group").collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].attempts, 2);
        let kinds: Vec<_> = dead[0].failures.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FailureKind::Nack, FailureKind::LeaseExpired]);
        assert_eq!(p.retention_floor(), 0);
        let requeue = QueueOp::Requeue {
            group: G.into(),
            offsets: vec![],
        };
        assert_eq!(one(&mut p, 2_000, requeue), QueueResult::Requeued(1));
        let again = lease(&mut p, 2_000, "w", 1);
        assert_eq!(again[0].attempt, 1);
        assert_eq!(ack(&mut p, 2_001, again[0].token), QueueResult::Ok);
        assert_eq!(p.retention_floor(), 1);
    }

    #[test]
    fn exhausted_tasks_are_dropped_without_dead_letter() {
        let mut p = PartitionState::new();
        let c = GroupConfig {
            dead_letter: false,
            ..config(1)
        };
        ensure(&mut p, G, GroupMode::Queue, c);
        produce(&mut p, 1, 0);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        nack(&mut p, 0, t, None);
        let stats = p.group_stats(G, 0).expect("exists");
        assert_eq!(
            (stats.dropped_total, stats.dead_letters, stats.lag),
            (1, 0, 0)
        );
        assert_eq!(p.retention_floor(), 1);
    }

    #[test]
    fn discard_dead_letters_releases_retention() {
        let mut p = setup(2, 1);
        for t in lease(&mut p, 0, "w", 2) {
            nack(&mut p, 0, t.token, None);
        }
        let discard = QueueOp::DiscardDeadLetters {
            group: G.into(),
            offsets: vec![1, 7],
        };
        assert_eq!(one(&mut p, 0, discard), QueueResult::Discarded(1));
        assert_eq!(p.retention_floor(), 0);
        let discard = QueueOp::DiscardDeadLetters {
            group: G.into(),
            offsets: vec![],
        };
        assert_eq!(one(&mut p, 0, discard), QueueResult::Discarded(1));
        assert_eq!(p.retention_floor(), 2);
    }

    #[test]
    fn delayed_tasks_are_not_delivered_early() {
        let mut p = PartitionState::new();
        ensure(&mut p, G, GroupMode::Queue, config(5));
        p.apply_produce(
            0,
            100,
            anon(2),
            [rec(0, Some(1_000)), rec(0, Some(50))].into_iter(),
        );
        assert_eq!(offsets(&lease(&mut p, 100, "w", 10)), vec![1]);
        assert_eq!(lease(&mut p, 999, "w", 10), vec![]);
        assert_eq!(offsets(&lease(&mut p, 1_000, "w", 10)), vec![0]);
    }

    #[test]
    fn priorities_first_then_offsets() {
        let mut p = PartitionState::new();
        ensure(&mut p, G, GroupMode::Queue, config(5));
        let records = [
            rec(1, None),
            rec(9, None),
            rec(1, None),
            rec(9, None),
            rec(0, None),
        ];
        p.apply_produce(0, 0, anon(5), records.into_iter());
        assert_eq!(offsets(&lease(&mut p, 0, "w", 10)), vec![1, 3, 0, 2, 4]);
    }

    #[test]
    fn idempotent_producer_duplicates_are_not_added() {
        let mut p = setup(0, 5);
        let producer = |seq| ProducerInfo {
            producer_id: 7,
            first_sequence: seq,
            record_count: 2,
        };
        let batch = || [rec(0, None), rec(0, None)].into_iter();
        assert_eq!(
            p.apply_produce(0, 0, producer(0), batch()),
            ProduceOutcome::Appended {
                base_offset: 0,
                count: 2
            }
        );
        assert_eq!(
            p.is_duplicate(&producer(0)),
            Some(ProduceOutcome::Duplicate {
                base_offset: 0,
                count: 2
            })
        );
        // A duplicate that raced into the log still occupies its offsets but adds no tasks.
        assert_eq!(
            p.apply_produce(2, 0, producer(0), batch()),
            ProduceOutcome::Duplicate {
                base_offset: 0,
                count: 2
            }
        );
        assert_eq!(p.next_offset(), 4);
        assert_eq!(p.group_stats(G, 0).expect("exists").ready, 2);
        // Older batches fall out of the window; gaps are simply new batches.
        for seq in 1..=PRODUCER_BATCHES_MAX as u64 {
            let base = p.next_offset();
            p.apply_produce(base, 0, producer(seq * 10), batch());
        }
        assert_eq!(p.is_duplicate(&producer(0)), None);
        assert!(p.is_duplicate(&producer(10)).is_some());
        assert_eq!(p.is_duplicate(&anon(2)), None);
    }

    #[test]
    fn producer_table_is_bounded() {
        let mut p = PartitionState::new();
        for id in 1..=(PRODUCERS_MAX as u64 + 3) {
            let base = p.next_offset();
            let producer = ProducerInfo {
                producer_id: id,
                first_sequence: 0,
                record_count: 1,
            };
            p.apply_produce(base, 0, producer, [rec(0, None)].into_iter());
        }
        assert_eq!(p.producers.len(), PRODUCERS_MAX);
        assert_eq!(p.producer_lru.len(), PRODUCERS_MAX);
        let first = ProducerInfo {
            producer_id: 1,
            first_sequence: 0,
            record_count: 1,
        };
        assert_eq!(p.is_duplicate(&first), None);
    }

    #[test]
    fn new_group_sees_retained_unacked_tasks() {
        let mut p = PartitionState::new();
        produce(&mut p, 3, 0); // no group yet: unclaimed
        ensure(&mut p, G, GroupMode::Queue, config(5));
        let got = lease(&mut p, 0, "w", 10);
        assert_eq!(offsets(&got), vec![0, 1, 2]);
        ack(&mut p, 0, got[0].token);
        ensure(&mut p, "late", GroupMode::Queue, config(5));
        let late = one(
            &mut p,
            0,
            QueueOp::Lease {
                group: "late".into(),
                worker: "w".into(),
                max_tasks: 10,
                visibility_timeout_ms: Some(10),
            },
        );
        let QueueResult::Leased(late) = late else {
            panic!("{late:?}");
        };
        assert_eq!(offsets(&late), vec![1, 2]);
        // Offset 1 is needed until both groups ack it.
        ack(&mut p, 0, got[1].token);
        assert_eq!(p.retention_floor(), 1);
        let delete = QueueOp::DeleteGroup {
            group: "late".into(),
        };
        assert_eq!(one(&mut p, 0, delete), QueueResult::Ok);
        assert_eq!(p.retention_floor(), 2);
    }

    #[test]
    fn stream_groups_commit_forward_only() {
        let mut p = setup(5, 5);
        ensure(&mut p, "audit", GroupMode::Stream, GroupConfig::default());
        let commit = |offset| QueueOp::CommitOffset {
            group: "audit".into(),
            offset,
        };
        assert_eq!(p.retention_floor(), 0);
        assert_eq!(one(&mut p, 0, commit(3)), QueueResult::Ok);
        assert_eq!(one(&mut p, 0, commit(1)), QueueResult::Ok);
        assert_eq!(
            p.group_stats("audit", 0).expect("exists").committed_offset,
            Some(3)
        );
        assert!(matches!(
            one(&mut p, 0, commit(9)),
            QueueResult::Err(QueueError::OffsetOutOfRange { .. })
        ));
        let lease = QueueOp::Lease {
            group: "audit".into(),
            worker: "w".into(),
            max_tasks: 1,
            visibility_timeout_ms: None,
        };
        assert!(matches!(
            one(&mut p, 0, lease),
            QueueResult::Err(QueueError::WrongMode { .. })
        ));
        assert!(matches!(
            one(
                &mut p,
                0,
                QueueOp::CommitOffset {
                    group: G.into(),
                    offset: 1
                }
            ),
            QueueResult::Err(QueueError::WrongMode { .. })
        ));
        let conflict = QueueOp::EnsureGroup {
            group: "audit".into(),
            mode: GroupMode::Queue,
            config: GroupConfig::default(),
        };
        assert!(matches!(
            one(&mut p, 0, conflict),
            QueueResult::Err(QueueError::GroupModeConflict { .. })
        ));
        assert_eq!(
            p.groups().collect::<Vec<_>>(),
            vec![("audit", GroupMode::Stream), (G, GroupMode::Queue)]
        );
    }

    #[test]
    fn retention_floor_and_trim() {
        let mut p = setup(4, 5);
        let got = lease(&mut p, 0, "w", 4);
        ack(&mut p, 0, got[0].token);
        ack(&mut p, 0, got[2].token);
        assert_eq!(p.retention_floor(), 1);
        let trim = |below_offset| QueueOp::TrimLog { below_offset };
        assert_eq!(
            one(&mut p, 0, trim(2)),
            QueueResult::Err(QueueError::RetentionBlocked {
                requested: 2,
                floor: 1
            })
        );
        ack(&mut p, 0, got[1].token);
        ack(&mut p, 0, got[3].token);
        assert_eq!(p.retention_floor(), 4);
        assert_eq!(one(&mut p, 0, trim(4)), QueueResult::Ok);
        assert_eq!(p.log_start_offset(), 4);
    }

    #[test]
    fn unknown_group_and_bad_inputs_are_typed_errors() {
        let mut p = setup(1, 5);
        let token = LeaseToken {
            offset: 0,
            attempt: 1,
            epoch: 99,
        };
        assert!(matches!(
            one(
                &mut p,
                0,
                QueueOp::Ack {
                    group: "nope".into(),
                    token
                }
            ),
            QueueResult::Err(QueueError::UnknownGroup { .. })
        ));
        assert!(matches!(
            ack(&mut p, 0, token),
            QueueResult::Err(QueueError::StaleLease {
                current_epoch: None,
                ..
            })
        ));
        let beyond = LeaseToken { offset: 5, ..token };
        assert_eq!(
            ack(&mut p, 0, beyond),
            QueueResult::Err(QueueError::UnknownTask { offset: 5 })
        );
        let bad = GroupConfig {
            visibility_timeout_ms: 0,
            ..GroupConfig::default()
        };
        assert!(matches!(
            one(
                &mut p,
                0,
                QueueOp::EnsureGroup {
                    group: "x".into(),
                    mode: GroupMode::Queue,
                    config: bad
                }
            ),
            QueueResult::Err(QueueError::InvalidVisibilityTimeout { ms: 0 })
        ));
        assert!(matches!(
            one(
                &mut p,
                0,
                QueueOp::Lease {
                    group: G.into(),
                    worker: String::new(),
                    max_tasks: 1,
                    visibility_timeout_ms: None
                }
            ),
            QueueResult::Err(QueueError::InvalidName { .. })
        ));
    }

    #[test]
    fn oldest_ready_age_uses_produce_time() {
        let mut p = setup(0, 5);
        produce(&mut p, 2, 1_000);
        produce(&mut p, 2, 2_000);
        let stats = p.group_stats(G, 5_000).expect("exists");
        assert_eq!(stats.oldest_ready_age_ms, Some(4_000));
        let got = lease(&mut p, 5_000, "w", 2);
        for t in got {
            ack(&mut p, 5_000, t.token);
        }
        assert_eq!(p.produce_times.len(), 1);
        let stats = p.group_stats(G, 5_000).expect("exists");
        assert_eq!(stats.oldest_ready_age_ms, Some(3_000));
    }

    #[test]
    fn snapshot_copy_is_equal_and_replays_identically() {
        let mut p = setup(3, 2);
        let t = lease(&mut p, 0, "w", 1)[0].token;
        nack(&mut p, 0, t, None);
        let snapshot = p.clone();
        assert_eq!(snapshot, p);
        let mut restored = snapshot;
        let a = p.apply_queue(
            500,
            &[QueueOp::Lease {
                group: G.into(),
                worker: "w".into(),
                max_tasks: 3,
                visibility_timeout_ms: None,
            }],
        );
        let b = restored.apply_queue(
            500,
            &[QueueOp::Lease {
                group: G.into(),
                worker: "w".into(),
                max_tasks: 3,
                visibility_timeout_ms: None,
            }],
        );
        assert_eq!(a, b);
        assert_eq!(p, restored);
    }
}

/// Model test: random produce/lease/ack/nack/extend/advance-time sequences against the
/// invariants (single live lease, acked never returns, attempts grow, eventual completion).
#[cfg(test)]
mod model_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    const G: &str = "g";
    const MAX_ATTEMPTS: u32 = 4;
    const VISIBILITY_MS: u64 = 100;

    #[derive(Debug, Clone)]
    enum Op {
        Produce {
            count: u32,
            priority: u8,
            delay_ms: Option<u64>,
        },
        Lease {
            worker: u8,
            max: u32,
        },
        Ack {
            pick: usize,
            stale: bool,
        },
        Nack {
            pick: usize,
            retry_ms: Option<u64>,
        },
        Extend {
            pick: usize,
        },
        Advance {
            ms: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..4, 0u8..3, prop::option::of(0u64..300)).prop_map(
                |(count, priority, delay_ms)| Op::Produce {
                    count,
                    priority,
                    delay_ms
                }
            ),
            (0u8..3, 0u32..4).prop_map(|(worker, max)| Op::Lease { worker, max }),
            (any::<usize>(), any::<bool>()).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
            (any::<usize>(), prop::option::of(0u64..200))
                .prop_map(|(pick, retry_ms)| Op::Nack { pick, retry_ms }),
            any::<usize>().prop_map(|pick| Op::Extend { pick }),
            (1u64..150).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    #[derive(Default)]
    struct Model {
        now: u64,
        /// offset -> (current token, expires_at) of leases the model believes are live.
        live: BTreeMap<u64, (LeaseToken, u64)>,
        /// Every token ever granted, for stale presentations.
        old_tokens: Vec<LeaseToken>,
        acked: BTreeSet<u64>,
        last_attempt: BTreeMap<u64, u32>,
    }

    fn cfg() -> GroupConfig {
        GroupConfig {
            visibility_timeout_ms: VISIBILITY_MS,
            max_attempts: MAX_ATTEMPTS,
            dead_letter: true,
            retry_backoff_base_ms: 10,
            retry_backoff_max_ms: 80,
        }
    }

    fn lease_op(worker: u8, max: u32) -> QueueOp {
        QueueOp::Lease {
            group: G.into(),
            worker: format!("w{worker}"),
            max_tasks: max,
            visibility_timeout_ms: None,
        }
    }

    fn check_grants(m: &mut Model, p: &PartitionState, granted: &[LeasedTask]) {
        for t in granted {
            assert!(
                !m.acked.contains(&t.offset),
                "acked task {} came back",
                t.offset
            );
            if let Some((_, expires)) = m.live.get(&t.offset) {
                assert!(
                    *expires <= m.now,
                    "task {} leased twice while live",
                    t.offset
                );
            }
            let last = m.last_attempt.insert(t.offset, t.attempt).unwrap_or(0);
            assert!(t.attempt > last, "attempts must grow");
            assert!(t.attempt <= MAX_ATTEMPTS);
            assert_eq!(t.token.attempt, t.attempt);
            m.live.insert(t.offset, (t.token, t.expires_at_ms));
            m.old_tokens.push(t.token);
        }
        // A reclaim may have turned model-live (expired) leases into ready/dead tasks.
        m.live.retain(|offset, (token, _)| {
            matches!(p.task_state(G, *offset).map(|v| v.status),
                Some(TaskStatus::Leased { token: current, .. }) if current == *token)
        });
    }

    fn run(ops: &[Op]) -> (PartitionState, Model) {
        let mut p = PartitionState::new();
        let ensure = QueueOp::EnsureGroup {
            group: G.into(),
            mode: GroupMode::Queue,
            config: cfg(),
        };
        assert_eq!(p.apply_queue(0, &[ensure]), vec![QueueResult::Ok]);
        let mut m = Model::default();
        for op in ops {
            let pick_live = |m: &Model, pick: usize| {
                (!m.live.is_empty())
                    .then(|| *m.live.values().nth(pick % m.live.len()).expect("in range"))
            };
            match op {
                Op::Produce {
                    count,
                    priority,
                    delay_ms,
                } => {
                    let base = p.next_offset();
                    let not_before = delay_ms.map(|d| m.now + d);
                    let records = (0..*count).map(|_| RecordMeta {
                        key: None,
                        not_before_ms: not_before,
                        priority: *priority,
                        group: None,
                    });
                    p.apply_produce(
                        base,
                        m.now,
                        ProducerInfo {
                            producer_id: 0,
                            first_sequence: 0,
                            record_count: *count,
                        },
                        records,
                    );
                }
                Op::Lease { worker, max } => {
                    let r = p.apply_queue(m.now, &[lease_op(*worker, *max)]);
                    let [QueueResult::Leased(granted)] = r.as_slice() else {
                        panic!("{r:?}");
                    };
                    check_grants(&mut m, &p, granted);
                }
                Op::Ack { pick, stale } => {
                    let token = if *stale && !m.old_tokens.is_empty() {
                        m.old_tokens[pick % m.old_tokens.len()]
                    } else if let Some((token, _)) = pick_live(&m, *pick) {
                        token
                    } else {
                        continue;
                    };
                    let expected_ok = m.live.get(&token.offset).is_some_and(|(t, _)| *t == token);
                    let r = p.apply_queue(
                        m.now,
                        &[QueueOp::Ack {
                            group: G.into(),
                            token,
                        }],
                    );
                    assert_eq!(r[0] == QueueResult::Ok, expected_ok, "ack {token:?}: {r:?}");
                    if expected_ok {
                        m.live.remove(&token.offset);
                        m.acked.insert(token.offset);
                    }
                }
                Op::Nack { pick, retry_ms } => {
                    let Some((token, _)) = pick_live(&m, *pick) else {
                        continue;
                    };
                    let r = p.apply_queue(
                        m.now,
                        &[QueueOp::Nack {
                            group: G.into(),
                            token,
                            retry_after_ms: *retry_ms,
                            reason: None,
                        }],
                    );
                    assert_eq!(r, vec![QueueResult::Ok]);
                    m.live.remove(&token.offset);
                }
                Op::Extend { pick } => {
                    let Some((token, _)) = pick_live(&m, *pick) else {
                        continue;
                    };
                    let r = p.apply_queue(
                        m.now,
                        &[QueueOp::Extend {
                            group: G.into(),
                            token,
                            visibility_timeout_ms: VISIBILITY_MS,
                        }],
                    );
                    assert_eq!(r, vec![QueueResult::Ok]);
                    m.live.insert(token.offset, (token, m.now + VISIBILITY_MS));
                }
                Op::Advance { ms } => m.now += ms,
            }
            let stats = p.group_stats(G, m.now).expect("group exists");
            assert_eq!(stats.acked_total, m.acked.len() as u64);
            assert_eq!(stats.in_flight, m.live.len() as u64);
        }
        (p, m)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn queue_invariants_hold(ops in prop::collection::vec(op(), 0..120)) {
            let (mut p, mut m) = run(&ops);
            // Determinism: a replica replaying the same ops reaches the same state.
            let (replica, _) = run(&ops);
            prop_assert_eq!(&replica, &p);
            // Liveness: workers that keep leasing and acking finish every task.
            for _ in 0..100 {
                m.now += 1_000;
                let r = p.apply_queue(m.now, &[lease_op(0, LEASE_BATCH_MAX)]);
                let [QueueResult::Leased(granted)] = r.as_slice() else { panic!("{r:?}") };
                let granted = granted.clone();
                check_grants(&mut m, &p, &granted);
                for t in &granted {
                    let r = p.apply_queue(m.now, &[QueueOp::Ack { group: G.into(), token: t.token }]);
                    prop_assert_eq!(&r, &vec![QueueResult::Ok]);
                    m.live.remove(&t.offset);
                    m.acked.insert(t.offset);
                }
                let s = p.group_stats(G, m.now).expect("group exists");
                if s.lag == 0 {
                    break;
                }
            }
            let dead: BTreeSet<u64> = p.dead_letters(G).expect("queue group").map(|d| d.offset).collect();
            for offset in 0..p.next_offset() {
                prop_assert!(m.acked.contains(&offset) ^ dead.contains(&offset), "offset {} unfinished", offset);
            }
            prop_assert_eq!(p.retention_floor(), dead.first().copied().unwrap_or(p.next_offset()));
        }
    }
}
