//! Dead-letter topics: forwarding exhausted tasks there, and requeueing them to their origin.
//!
//! A topic whose config names a `dead_letter_topic` does not keep its dead letters: the leader
//! of each of its partitions forwards them ([`forward_loop`]). A topic without one keeps them
//! in the group (visible in `group describe`, requeued in place by `group requeue`).
//!
//! # Forwarding
//! For every dead letter (group `G`, offset `o`) of a partition it leads, the leader reads the
//! task from the log and produces it, with its key, payload, priority and headers plus the
//! origin headers of [`taskbroker_client::proto::headers`], to partition `p % n` of the
//! dead-letter topic through the normal produce path (the dead-letter partition's leader,
//! replicated and committed), then proposes `DiscardDeadLetters` for it in the source
//! partition. A missing dead-letter topic is created with the source's partition count and
//! replication factor.
//!
//! # Invariants
//! - Exactly once into the dead-letter topic across crashes and leader changes: the produce
//!   is idempotent with a producer id derived from (topic id, partition, group) and a sequence
//!   derived from (offset, dead-letter time), the same on every replica. A leader that dies
//!   after the append but before the discard leaves the letter in the group; the next leader
//!   forwards it again and the dead-letter partition answers `Duplicate`. At most
//!   [`FORWARD_ROUND_MAX`] letters of one producer are between append and discard at any time,
//!   so the retry always finds its original in the dedup window (`PRODUCER_BATCHES_MAX`).
//! - A letter is discarded only after its append committed; a failure leaves it in the group.
//!
//! # Requeue
//! `requeue_dead_letters(T, G)` requeues G's in-group dead letters of T and then, per partition
//! of T's dead-letter topic D (on that partition's leader), reads D from the offset a stream
//! group `taskbroker-requeue.T.G` of D has committed, produces every record that came from
//! (T, G) back to its origin partition of T with the header `taskbroker-requeue-group: G` (so
//! only G receives it again), and commits past it. The produce is idempotent again (producer
//! from (D, partition, T, G), sequence = the record's offset in D) and at most
//! [`FORWARD_ROUND_MAX`] produces precede a commit, so a requeue interrupted anywhere and
//! repeated moves each task once. Records of D stay in D's log (other groups of D, e.g. an
//! alerting consumer, still see them); only the requeue group's offset moves.
//!
//! # Design notes
//! - One record per produce: dead letters are rare, and a one-record batch keeps the
//!   idempotence argument simple (the batch for a given sequence is always the same record).
//! - A letter that cannot be forwarded at all (too large once the origin headers are added)
//!   stays in its group with an error logged; it can still be requeued in place.
//! - Requeue works within [`REQUEUE_BUDGET`] per dead-letter partition (all partitions in
//!   parallel) so the call answers inside its deadline; a huge backlog may need another
//!   `group requeue`, which continues where the last one stopped.
//! - Adding partitions to the dead-letter topic changes `p % n` for later letters; a letter
//!   in flight across that change could be appended twice (never lost).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskbroker_client::batch::{aligned_copy, BatchBuilder, BatchView, Header, TaskRecord};
use taskbroker_client::proto::{
    headers, ApiError, GroupMode, NodeId, ProduceRequest, ProduceResponse, TopicSpec,
};
use taskbroker_raft::state_machine::metadata::{TopicInfo, GROUP_NAME_BYTES_MAX};
use taskbroker_raft::state_machine::partition::{
    FailureKind, GroupConfig, QueueOp, QueueResult, PRODUCER_BATCHES_MAX,
};
use taskbroker_raft::{Group, GroupId};

use super::queue::{batch_of, read_batch};
use super::{to_raft_mode, Api, HANDLER_DEADLINE};

/// How often a node looks for dead letters to forward when it found none last time.
pub const FORWARD_TICK: Duration = Duration::from_millis(500);
/// Dead letters of one (partition, group) appended before they are discarded together: the
/// idempotent-producer window, so a retry after a crash always finds its original.
pub const FORWARD_ROUND_MAX: usize = PRODUCER_BATCHES_MAX;
/// Letters remembered as unforwardable (too large): bounds memory; the set is cleared when
/// full and they are retried (and logged) again.
pub const UNFORWARDABLE_MAX: usize = 10_000;
/// How long requeueing one dead-letter partition may run per call: inside the handler deadline.
pub const REQUEUE_BUDGET: Duration = Duration::from_secs(5);
/// Most log frames read at once while scanning a dead-letter partition.
pub const REQUEUE_FRAMES_PER_READ_MAX: usize = 64;
/// Most bytes read at once while scanning a dead-letter partition.
pub const REQUEUE_READ_BYTES_MAX: usize = 4 << 20;
/// Prefix of the stream group of a dead-letter topic that remembers what has been requeued.
pub const REQUEUE_GROUP_PREFIX: &str = "taskbroker-requeue.";

/// FNV-1a 64 over `parts`, each followed by a 0xff separator (not valid UTF-8, so no two
/// different lists of names hash the same input).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The idempotent producer id of the forwarder of (topic id, partition, group): the same on
/// every node, never 0 (0 = not idempotent).
pub fn forward_producer_id(topic_id: u32, partition: u32, group: &str) -> u64 {
    fnv(&[
        b"dead-letter",
        &topic_id.to_le_bytes(),
        &partition.to_le_bytes(),
        group.as_bytes(),
    ])
    .max(1)
}

/// The sequence of one dead-lettering of the task at `offset` (a task requeued in place and
/// dead-lettered again gets a new one). Kept below 2^62 so `sequence + 1` never overflows.
pub fn forward_sequence(offset: u64, dead_lettered_at_ms: u64) -> u64 {
    fnv(&[&offset.to_le_bytes(), &dead_lettered_at_ms.to_le_bytes()]) >> 2
}

/// The stream group of a dead-letter topic that tracks requeues of (topic, group).
pub fn requeue_group_name(topic: &str, group: &str) -> String {
    let readable = format!("{REQUEUE_GROUP_PREFIX}{topic}.{group}");
    if readable.len() <= GROUP_NAME_BYTES_MAX {
        readable
    } else {
        format!(
            "{REQUEUE_GROUP_PREFIX}{:016x}",
            fnv(&[topic.as_bytes(), group.as_bytes()])
        )
    }
}

/// One dead letter to forward.
struct Letter {
    offset: u64,
    attempts: u32,
    at_ms: u64,
    last_error: String,
}

/// The record that goes to the dead-letter topic: the task with its broker headers replaced by
/// the origin headers.
fn dead_letter_record(
    task: TaskRecord,
    topic: &str,
    partition: u32,
    group: &str,
    letter: &Letter,
) -> TaskRecord {
    let mut headers: Vec<Header> = task
        .headers
        .into_iter()
        .filter(|h| !headers::is_reserved(&h.name))
        .collect();
    headers.extend([
        Header::new(headers::ORIGIN_TOPIC, topic),
        Header::new(headers::ORIGIN_PARTITION, partition.to_string()),
        Header::new(headers::ORIGIN_OFFSET, letter.offset.to_string()),
        Header::new(headers::ORIGIN_GROUP, group),
        Header::new(headers::ATTEMPTS, letter.attempts.to_string()),
        Header::new(headers::LAST_ERROR, letter.last_error.as_str()),
        Header::new(headers::DEAD_LETTERED_AT_MS, letter.at_ms.to_string()),
    ]);
    TaskRecord {
        headers,
        not_before_ms: None,
        ..task
    }
}

/// A dead letter of the dead-letter topic on its way back: origin headers removed, only
/// `group` receives it.
fn requeued_record(task: TaskRecord, group: &str) -> TaskRecord {
    let mut headers: Vec<Header> = task
        .headers
        .into_iter()
        .filter(|h| !headers::is_reserved(&h.name))
        .collect();
    headers.push(Header::new(headers::REQUEUE_GROUP, group));
    TaskRecord {
        headers,
        not_before_ms: None,
        ..task
    }
}

/// A stored batch's bytes, 16-byte aligned for zero-copy reading.
fn aligned(bytes: Bytes) -> Bytes {
    if (bytes.as_ptr() as usize).is_multiple_of(16) {
        bytes
    } else {
        aligned_copy(&bytes)
    }
}

/// Forwards dead letters of every partition this node leads whose topic names a dead-letter
/// topic, until the task is aborted (node shutdown).
pub async fn forward_loop(api: Api) {
    let mut unforwardable: BTreeSet<(GroupId, String, u64, u64)> = BTreeSet::new();
    loop {
        let mut busy = false;
        for gid in api.raft().led_groups() {
            if gid.is_metadata() {
                continue;
            }
            match api.forward_partition(gid, &mut unforwardable).await {
                Ok(more) => busy |= more,
                Err(e) => {
                    tracing::debug!(group = %gid, error = %e, "dead-letter forwarding paused")
                }
            }
        }
        if unforwardable.len() > UNFORWARDABLE_MAX {
            unforwardable.clear();
        }
        if !busy {
            tokio::time::sleep(FORWARD_TICK).await;
        }
    }
}

impl Api {
    /// Forwards up to [`FORWARD_ROUND_MAX`] dead letters per group of the partition `gid`;
    /// `Ok(true)` if it forwarded any (more may be waiting).
    async fn forward_partition(
        &self,
        gid: GroupId,
        unforwardable: &mut BTreeSet<(GroupId, String, u64, u64)>,
    ) -> Result<bool, ApiError> {
        let Some(group) = self.raft().group(gid) else {
            return Ok(false);
        };
        if !group.is_leader() {
            return Ok(false);
        }
        let Some((topic, partition, dlq)) = self.with_meta(|m| {
            let (t, p) = m.partition_by_group_id(gid.0)?;
            let dlq = t.config.dead_letter_topic.clone()?;
            Some((t.clone(), p.partition, dlq))
        })?
        else {
            return Ok(false);
        };
        // (group, letters) with something to forward, read briefly under the state lock.
        let work: Vec<(String, Vec<Letter>)> = {
            let guard = group.state().read();
            let Some(p) = guard.partition() else {
                return Ok(false);
            };
            p.groups()
                .filter(|(_, mode)| *mode == taskbroker_raft::state_machine::GroupMode::Queue)
                .filter_map(|(name, _)| {
                    let letters: Vec<Letter> = p
                        .dead_letters(name)?
                        .filter(|d| {
                            !unforwardable.contains(&(
                                gid,
                                name.to_owned(),
                                d.offset,
                                d.dead_lettered_at_ms,
                            ))
                        })
                        .take(FORWARD_ROUND_MAX)
                        .map(|d| Letter {
                            offset: d.offset,
                            attempts: d.attempts,
                            at_ms: d.dead_lettered_at_ms,
                            last_error: d
                                .failures
                                .back()
                                .map(|f| match (&f.reason, f.kind) {
                                    (Some(r), _) => r.clone(),
                                    (None, FailureKind::LeaseExpired) => "lease expired".into(),
                                    (None, FailureKind::Nack) => "nacked".into(),
                                })
                                .unwrap_or_default(),
                        })
                        .collect();
                    (!letters.is_empty()).then(|| (name.to_owned(), letters))
                })
                .collect()
        };
        if work.is_empty() {
            return Ok(false);
        }
        let dlq_info = self.dead_letter_topic(&topic, &dlq).await?;
        let target = partition % dlq_info.config.partitions.max(1);
        let mut forwarded_any = false;
        for (group_name, letters) in work {
            let producer_id = forward_producer_id(topic.id, partition, &group_name);
            let mut done = Vec::with_capacity(letters.len());
            for letter in &letters {
                let stored = read_batch(&group, letter.offset).await?;
                let bytes = aligned(stored.bytes);
                let view = BatchView::new(&bytes).map_err(|e| ApiError::Internal {
                    reason: format!("stored batch at {}: {e}", stored.base_offset),
                })?;
                let record = usize::try_from(letter.offset - stored.base_offset)
                    .ok()
                    .and_then(|i| view.record(i))
                    .ok_or_else(|| ApiError::Internal {
                        reason: format!("offset {} not in its stored batch", letter.offset),
                    })?
                    .to_task_record();
                let record =
                    dead_letter_record(record, &topic.name, partition, &group_name, letter);
                let mut builder = BatchBuilder::with_limits(
                    producer_id,
                    forward_sequence(letter.offset, letter.at_ms),
                    record.timestamp_ms,
                    self.settings().limits,
                );
                if let Err(e) = builder.push(record) {
                    tracing::error!(
                        topic = %topic.name, partition, group = %group_name, offset = letter.offset,
                        error = %e,
                        "dead letter cannot be forwarded (kept in its group, requeue it in place)"
                    );
                    unforwardable.insert((gid, group_name.clone(), letter.offset, letter.at_ms));
                    continue;
                }
                let batch = builder.finish().into_bytes();
                match self.produce_to(&dlq, target, batch).await {
                    Ok(_) => done.push(letter.offset),
                    Err(e @ (ApiError::InvalidBatch { .. } | ApiError::TooLarge { .. })) => {
                        tracing::error!(
                            topic = %topic.name, partition, group = %group_name,
                            offset = letter.offset, error = %e,
                            "dead-letter topic refused a dead letter (kept in its group)"
                        );
                        unforwardable.insert((
                            gid,
                            group_name.clone(),
                            letter.offset,
                            letter.at_ms,
                        ));
                    }
                    Err(e) => {
                        // Discard what is appended, retry the rest later.
                        self.discard_forwarded(&group, &group_name, done).await?;
                        return Err(e);
                    }
                }
            }
            if !done.is_empty() {
                forwarded_any = true;
                tracing::debug!(
                    topic = %topic.name, partition, group = %group_name, count = done.len(),
                    dead_letter_topic = %dlq, "dead letters forwarded"
                );
            }
            self.discard_forwarded(&group, &group_name, done).await?;
        }
        Ok(forwarded_any)
    }

    /// Forgets dead letters whose append to the dead-letter topic has committed.
    async fn discard_forwarded(
        &self,
        group: &Group,
        group_name: &str,
        offsets: Vec<u64>,
    ) -> Result<(), ApiError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let r = self
            .queue_ops(
                group,
                vec![QueueOp::DiscardDeadLetters {
                    group: group_name.into(),
                    offsets,
                }],
            )
            .await?;
        match r.into_iter().next() {
            Some(QueueResult::Discarded(_)) => Ok(()),
            other => Err(ApiError::Internal {
                reason: format!("unexpected discard result {other:?}"),
            }),
        }
    }

    /// The dead-letter topic `name` of `source`, created (with the source's partition count
    /// and replication factor) if it does not exist.
    async fn dead_letter_topic(
        &self,
        source: &TopicInfo,
        name: &str,
    ) -> Result<TopicInfo, ApiError> {
        if let Some(t) = self.with_meta(|m| m.topic(name).cloned())? {
            return Ok(t);
        }
        let spec = TopicSpec {
            partitions: Some(source.config.partitions),
            replication_factor: Some(source.config.replication_factor),
            ..TopicSpec::default()
        };
        match self.do_create_topic(name.into(), spec).await {
            Ok(_) | Err(ApiError::TopicConflict { .. }) => {}
            Err(e) => return Err(e),
        }
        tracing::info!(topic = %source.name, dead_letter_topic = %name, "created the dead-letter topic");
        // The creation committed on the metadata leader; wait until this replica has it.
        let mut watch = self.meta().state().watch_applied();
        let until = tokio::time::Instant::now() + HANDLER_DEADLINE;
        loop {
            if let Some(t) = self.with_meta(|m| m.topic(name).cloned())? {
                return Ok(t);
            }
            match tokio::time::timeout_at(until, watch.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(ApiError::Unavailable {
                        reason: format!("dead-letter topic {name} not visible yet"),
                    })
                }
            }
        }
    }

    /// Produces `batch` to `topic/partition` through its leader (this node or another),
    /// following one `NotLeader` hint.
    pub(super) async fn produce_to(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<ProduceResponse, ApiError> {
        let route = self.route(topic, partition)?;
        let mut target = self
            .partition_leader_wait(route.group_id, &route.replicas)
            .await;
        let req = ProduceRequest {
            topic: topic.into(),
            partition,
            batch,
        };
        let mut last = None;
        for _ in 0..3 {
            let Some(node) = target else { break };
            let r = self.call_node(node, req.clone()).await;
            match r {
                Err(ApiError::NotLeader {
                    leader_hint: Some(h),
                    ..
                }) if Some(h) != target => {
                    target = Some(h);
                    last = None;
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
                Ok(v) => return Ok(v),
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Unavailable {
            reason: format!("no leader known for {topic}/{partition}"),
        }))
    }

    async fn call_node(
        &self,
        node: NodeId,
        req: ProduceRequest,
    ) -> Result<ProduceResponse, ApiError> {
        if node == self.settings().node_id {
            return self.do_produce(req).await;
        }
        let addr = self.node_addr(node).ok_or_else(|| ApiError::Unavailable {
            reason: format!("no address for node {node}"),
        })?;
        self.forwarder()
            .call(node, &addr, HANDLER_DEADLINE, |c, ctx| async move {
                c.produce(ctx, req).await
            })
            .await
    }

    /// Requeues, from every partition of `topic`'s dead-letter topic, the dead letters of
    /// (`topic`, `group`) back to `topic` (see the module docs); 0 without a dead-letter topic.
    pub(super) async fn requeue_from_dead_letter_topic(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<u64, ApiError> {
        let dlq = self.with_meta(|m| {
            let dlq = m.topic(topic)?.config.dead_letter_topic.clone()?;
            m.topic(&dlq).cloned()
        })?;
        let Some(dlq) = dlq else { return Ok(0) };
        let calls = dlq.partitions.iter().map(|p| {
            let (dlq_name, gid, replicas) =
                (dlq.name.clone(), GroupId(p.group_id), p.replicas.clone());
            let partition = p.partition;
            async move {
                let mut target = self.partition_leader_wait(gid, &replicas).await;
                for _ in 0..2 {
                    let Some(node) = target else { break };
                    let r = if node == self.settings().node_id {
                        self.requeue_dead_letter_partition_local(&dlq_name, partition, topic, group)
                            .await
                    } else {
                        let addr = self.node_addr(node).ok_or_else(|| ApiError::Unavailable {
                            reason: format!("no address for node {node}"),
                        })?;
                        let (d, t, g) = (dlq_name.clone(), topic.to_owned(), group.to_owned());
                        self.forwarder()
                            .call(node, &addr, HANDLER_DEADLINE, |c, ctx| async move {
                                c.requeue_dead_letter_partition(ctx, d, partition, t, g)
                                    .await
                            })
                            .await
                    };
                    match r {
                        Err(ApiError::NotLeader {
                            leader_hint: Some(h),
                            ..
                        }) if Some(h) != target => target = Some(h),
                        other => return other,
                    }
                }
                Err(ApiError::Unavailable {
                    reason: format!("no leader known for {dlq_name}/{partition}"),
                })
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut total = 0;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(n) => total += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            // Requeueing is safe to repeat: what moved stays moved, the rest moves next time.
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Requeues the dead letters of (`topic`, `group`) found in partition `partition` of the
    /// dead-letter topic `dlq`, which this node must lead (see the module docs).
    pub(super) async fn requeue_dead_letter_partition_local(
        &self,
        dlq: &str,
        partition: u32,
        topic: &str,
        group_name: &str,
    ) -> Result<u64, ApiError> {
        let started = tokio::time::Instant::now();
        let route = self.route(dlq, partition)?;
        let group = self.leader_group(&route)?;
        let origin = self
            .with_meta(|m| m.topic(topic).cloned())?
            .ok_or_else(|| ApiError::UnknownTopic {
                topic: topic.into(),
            })?;
        let tracker = requeue_group_name(topic, group_name);
        let lock = self.requeue_lock(group.id(), &tracker);
        let _held = lock.lock().await;
        self.do_create_group(dlq.into(), tracker.clone(), GroupMode::Stream)
            .await?;
        let ensure = QueueOp::EnsureGroup {
            group: tracker.clone(),
            mode: to_raft_mode(GroupMode::Stream),
            config: GroupConfig::default(),
        };
        if let Some(QueueResult::Err(e)) = self.queue_ops(&group, vec![ensure]).await?.pop() {
            return Err(ApiError::Internal {
                reason: e.to_string(),
            });
        }
        let (mut next, hw) = {
            let guard = group.state().read();
            let p = guard.partition().ok_or_else(|| ApiError::Internal {
                reason: "partition group holds no partition state".into(),
            })?;
            let committed = p
                .group_stats(&tracker, self.now_ms())
                .and_then(|s| s.committed_offset)
                .unwrap_or(0);
            (committed.max(p.log_start_offset()), p.next_offset())
        };
        let producer_id = fnv(&[
            b"requeue",
            &route.topic.id.to_le_bytes(),
            &partition.to_le_bytes(),
            topic.as_bytes(),
            group_name.as_bytes(),
        ])
        .max(1);
        let mut moved: u64 = 0;
        let mut uncommitted = 0usize;
        let mut index = match group.log().locate_offset(next).await {
            Ok(Some(pos)) => Some(pos.index),
            Ok(None) => None,
            Err(e) => {
                return Err(ApiError::Internal {
                    reason: e.to_string(),
                })
            }
        };
        let outcome: Result<(), ApiError> = 'scan: loop {
            let Some(i) = index else { break Ok(()) };
            if next >= hw || started.elapsed() >= REQUEUE_BUDGET {
                break Ok(());
            }
            let frames = match group
                .log()
                .read(i, REQUEUE_FRAMES_PER_READ_MAX, REQUEUE_READ_BYTES_MAX)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    break Err(ApiError::Internal {
                        reason: e.to_string(),
                    })
                }
            };
            let Some(last) = frames.last() else {
                break Ok(());
            };
            index = Some(last.index + 1);
            for frame in &frames {
                if frame.base_offset >= hw {
                    break 'scan Ok(());
                }
                if frame.record_count == 0 {
                    continue;
                }
                let stored = match batch_of(frame) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => break 'scan Err(e),
                };
                let bytes = aligned(stored.bytes);
                let view = match BatchView::new(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        break 'scan Err(ApiError::Internal {
                            reason: format!("stored batch at {}: {e}", stored.base_offset),
                        })
                    }
                };
                for (offset, r) in (stored.base_offset..).zip(view.records()) {
                    if offset < next {
                        continue;
                    }
                    if started.elapsed() >= REQUEUE_BUDGET {
                        break 'scan Ok(());
                    }
                    let from_here = r.header(headers::ORIGIN_TOPIC) == Some(topic.as_bytes())
                        && r.header(headers::ORIGIN_GROUP) == Some(group_name.as_bytes());
                    if from_here {
                        let parts = origin.config.partitions.max(1);
                        let target = headers::parse_u64(r.header(headers::ORIGIN_PARTITION))
                            .and_then(|p| u32::try_from(p).ok())
                            .filter(|p| *p < parts)
                            .unwrap_or((offset % u64::from(parts)) as u32);
                        let record = requeued_record(r.to_task_record(), group_name);
                        let mut b = BatchBuilder::with_limits(
                            producer_id,
                            offset,
                            record.timestamp_ms,
                            self.settings().limits,
                        );
                        let pushed = b.push(record);
                        if let Err(e) = pushed {
                            tracing::error!(
                                dead_letter_topic = dlq, partition, offset, error = %e,
                                "dead letter cannot be requeued (skipped)"
                            );
                        } else if let Err(e) = self
                            .produce_to(topic, target, b.finish().into_bytes())
                            .await
                        {
                            break 'scan Err(e);
                        } else {
                            moved += 1;
                            uncommitted += 1;
                        }
                    }
                    next = offset + 1;
                    if uncommitted >= FORWARD_ROUND_MAX {
                        if let Err(e) = self.commit_requeued(&group, &tracker, next).await {
                            break 'scan Err(e);
                        }
                        uncommitted = 0;
                    }
                }
            }
        };
        self.commit_requeued(&group, &tracker, next).await?;
        outcome?;
        if moved > 0 {
            tracing::info!(
                dead_letter_topic = dlq,
                partition,
                topic,
                group = group_name,
                moved,
                "dead letters requeued to their origin topic"
            );
        }
        Ok(moved)
    }

    async fn commit_requeued(
        &self,
        group: &Group,
        tracker: &str,
        offset: u64,
    ) -> Result<(), ApiError> {
        let op = QueueOp::CommitOffset {
            group: tracker.into(),
            offset,
        };
        match self.queue_ops(group, vec![op]).await?.pop() {
            Some(QueueResult::Err(e)) => Err(ApiError::Internal {
                reason: e.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The lock that serialises requeues of one tracker group on one dead-letter partition.
    fn requeue_lock(&self, gid: GroupId, tracker: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .requeue_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if locks.len() > 1_024 {
            // Drop the locks nobody holds (bounded map).
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry((gid, tracker.to_owned()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }
}

/// The requeue locks map of [`Api`](super::Api).
pub(super) type RequeueLocks = BTreeMap<(GroupId, String), Arc<tokio::sync::Mutex<()>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_and_sequences_are_stable_and_distinct() {
        assert_eq!(
            forward_producer_id(1, 2, "g"),
            forward_producer_id(1, 2, "g")
        );
        assert_ne!(
            forward_producer_id(1, 2, "g"),
            forward_producer_id(1, 3, "g")
        );
        assert_ne!(
            forward_producer_id(1, 2, "g"),
            forward_producer_id(1, 2, "h")
        );
        assert_ne!(forward_producer_id(1, 2, "g"), 0);
        assert_eq!(forward_sequence(7, 100), forward_sequence(7, 100));
        assert_ne!(forward_sequence(7, 100), forward_sequence(7, 101));
        assert!(forward_sequence(u64::MAX, u64::MAX) < 1 << 62);
    }

    #[test]
    fn requeue_group_names_fit_the_limit() {
        assert_eq!(requeue_group_name("jobs", "g"), "taskbroker-requeue.jobs.g");
        let long = requeue_group_name(&"t".repeat(249), &"g".repeat(255));
        assert!(long.len() <= GROUP_NAME_BYTES_MAX && long.starts_with(REQUEUE_GROUP_PREFIX));
        assert_ne!(long, requeue_group_name(&"t".repeat(249), &"h".repeat(255)));
    }

    #[test]
    fn records_swap_their_broker_headers() {
        let task = TaskRecord {
            key: Some(b"k".to_vec()),
            payload: b"p".to_vec(),
            headers: vec![
                Header::new("trace", "1"),
                Header::new(headers::REQUEUE_GROUP, "old"),
            ],
            timestamp_ms: 5,
            not_before_ms: Some(9),
            priority: 3,
        };
        let letter = Letter {
            offset: 42,
            attempts: 3,
            at_ms: 1_000,
            last_error: "boom".into(),
        };
        let dead = dead_letter_record(task, "jobs", 2, "g", &letter);
        let names: Vec<&str> = dead.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names[0], "trace");
        assert!(!names.contains(&headers::REQUEUE_GROUP));
        let get = |n: &str| {
            dead.headers
                .iter()
                .find(|h| h.name == n)
                .map(|h| h.value.clone())
        };
        assert_eq!(get(headers::ORIGIN_OFFSET), Some(b"42".to_vec()));
        assert_eq!(get(headers::LAST_ERROR), Some(b"boom".to_vec()));
        assert_eq!(
            (dead.priority, dead.not_before_ms, dead.key.clone()),
            (3, None, Some(b"k".to_vec()))
        );
        let back = requeued_record(dead, "g");
        let names: Vec<&str> = back.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["trace", headers::REQUEUE_GROUP]);
        assert_eq!(back.payload, b"p");
    }
}
