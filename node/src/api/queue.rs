//! Queue groups: the per-partition op batcher, fetch (lease + long-poll), settle, describe and
//! requeue.
//!
//! # Design notes
//! - [`Batcher`]: one task per led partition. While one `Command::Queue` entry is in flight it
//!   gathers the ops of concurrent requests (each request's ops stay together and in order) and
//!   proposes them as the next entry, up to [`QUEUE_OPS_PER_ENTRY_MAX`] ops.
//! - Group policy: a fetch creates the group (metadata `CreateGroup` as a queue group, then
//!   `EnsureGroup` in the partition) with the topic's visibility timeout and max attempts.
//!   `dead_letter` is always true: exhausted tasks are kept as dead letters, in the group
//!   (requeued in place) or, when the topic names a dead-letter topic, until the leader has
//!   forwarded them there (`dead_letter`).
//! - Long-poll: a fetch that leased nothing waits for the partition's applied watch (a produce
//!   or a settle) or [`LONG_POLL_RECHECK`] (delayed tasks and expiring leases become due by
//!   time alone), and only proposes another `Lease` if the local state says something may be
//!   leasable, so idle workers do not write an entry per tick.

use std::collections::BTreeMap;
use std::time::Duration;

use taskbroker_client::proto::{
    ApiError, FetchRequest, FetchResponse, GroupDescription, GroupMode, GroupPartitionState, Lease,
    LeaseToken as WireToken, NodeId, Settle, SettleRequest, SettleResponse, StoredBatch,
};
use taskbroker_raft::codec::decode_command;
use taskbroker_raft::state_machine::partition::{
    GroupConfig, LeaseToken, QueueError, QueueOp, QueueResult,
};
use taskbroker_raft::{Command, Group, GroupId, Response};
use tokio::sync::{mpsc, oneshot};

use super::{from_raft_mode, Api, FETCH_WAIT_MS_MAX, HANDLER_DEADLINE};

/// Most ops in one queue entry: bounds the entry's size and apply time.
pub const QUEUE_OPS_PER_ENTRY_MAX: usize = 4_096;
/// Requests waiting for a partition's batcher; senders wait beyond it (back-pressure).
pub const QUEUE_REQUESTS_PENDING_MAX: usize = 1_024;
/// A batcher with no work for this long stops (it is restarted on demand).
pub const BATCHER_IDLE: Duration = Duration::from_secs(60);
/// How often a long-polling fetch re-checks for tasks that became due by time alone.
pub const LONG_POLL_RECHECK: Duration = Duration::from_millis(250);
/// Most tasks one fetch leases (a larger `max_tasks` is clamped): bounds the response size.
pub const FETCH_TASKS_MAX: u32 = 256;
/// Largest payload read from the log per stored batch lookup (at least one frame is read).
pub const FRAME_READ_BYTES_MAX: usize = 1 << 20;
/// Most items in one settle request.
pub const SETTLE_ITEMS_MAX: usize = 4_096;

type Reply = oneshot::Sender<Result<Vec<QueueResult>, ApiError>>;

/// The queue-op batcher of one partition (a handle to its task).
#[derive(Clone)]
pub(super) struct Batcher {
    tx: mpsc::Sender<(Vec<QueueOp>, Reply)>,
}

impl Batcher {
    fn start(api: Api, group: Group) -> Batcher {
        let (tx, mut rx) = mpsc::channel::<(Vec<QueueOp>, Reply)>(QUEUE_REQUESTS_PENDING_MAX);
        tokio::spawn(async move {
            loop {
                let first = match tokio::time::timeout(BATCHER_IDLE, rx.recv()).await {
                    Ok(Some(first)) => first,
                    Ok(None) | Err(_) => break,
                };
                let mut ops = first.0;
                let mut replies = vec![(ops.len(), first.1)];
                while ops.len() < QUEUE_OPS_PER_ENTRY_MAX {
                    match rx.try_recv() {
                        Ok((more, reply)) => {
                            replies.push((more.len(), reply));
                            ops.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                let cmd = Command::Queue {
                    now_ms: api.now_ms(),
                    ops,
                };
                let result = api.propose(&group, cmd).await;
                match result {
                    Ok(Response::Queue(results)) => {
                        let mut results = results.into_iter();
                        for (n, reply) in replies {
                            let _ = reply.send(Ok(results.by_ref().take(n).collect()));
                        }
                    }
                    Ok(other) => {
                        for (_, reply) in replies {
                            let _ = reply.send(Err(ApiError::Internal {
                                reason: format!("unexpected queue response {other}"),
                            }));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            api.forget_batcher(group.id());
        });
        Batcher { tx }
    }
}

fn token_in(t: WireToken) -> LeaseToken {
    LeaseToken {
        offset: t.offset,
        attempt: t.attempt,
        epoch: t.epoch,
    }
}

fn token_out(t: LeaseToken) -> WireToken {
    WireToken {
        offset: t.offset,
        attempt: t.attempt,
        epoch: t.epoch,
    }
}

fn queue_err(topic: &str, e: QueueError) -> ApiError {
    match e {
        QueueError::UnknownGroup { group } => ApiError::UnknownGroup {
            topic: topic.into(),
            group,
        },
        QueueError::StaleLease { offset, .. } | QueueError::AlreadyAcked { offset } => {
            ApiError::StaleLease { offset }
        }
        other => ApiError::InvalidArgument {
            reason: other.to_string(),
        },
    }
}

impl Api {
    /// Stops using the batcher of `group` (its task ends when idle or its group is gone).
    pub fn forget_batcher(&self, group: GroupId) {
        self.inner
            .batchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    /// Runs `ops` in the next queue entry of the partition `group` leads.
    pub(super) async fn queue_ops(
        &self,
        group: &Group,
        ops: Vec<QueueOp>,
    ) -> Result<Vec<QueueResult>, ApiError> {
        let n = ops.len();
        let mut ops = Some(ops);
        for _ in 0..2 {
            let batcher = {
                let mut map = self
                    .inner
                    .batchers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                map.entry(group.id())
                    .or_insert_with(|| Batcher::start(self.clone(), group.clone()))
                    .clone()
            };
            let (tx, rx) = oneshot::channel();
            let Some(o) = ops.take() else { break };
            match batcher.tx.send((o, tx)).await {
                Ok(()) => {
                    let results = rx.await.map_err(|_| ApiError::Unavailable {
                        reason: "partition batcher stopped".into(),
                    })??;
                    if results.len() != n {
                        return Err(ApiError::Internal {
                            reason: format!("{} results for {n} queue ops", results.len()),
                        });
                    }
                    return Ok(results);
                }
                Err(mpsc::error::SendError((o, _))) => {
                    // The batcher stopped (idle); start a new one.
                    ops = Some(o);
                    self.forget_batcher(group.id());
                }
            }
        }
        Err(ApiError::Unavailable {
            reason: "partition batcher unavailable".into(),
        })
    }

    /// Makes sure the queue group exists in the metadata and in the partition.
    async fn ensure_queue_group(
        &self,
        topic: &str,
        group_name: &str,
        group: &Group,
        config: GroupConfig,
    ) -> Result<(), ApiError> {
        match self.with_meta(|m| m.group_mode(topic, group_name))? {
            Some(mode) if from_raft_mode(mode) == GroupMode::Queue => {}
            Some(_) => {
                return Err(ApiError::InvalidArgument {
                    reason: format!("group {group_name:?} is a stream group"),
                })
            }
            None => {
                self.do_create_group(topic.into(), group_name.into(), GroupMode::Queue)
                    .await?
            }
        }
        let present = group
            .state()
            .read()
            .partition()
            .is_some_and(|p| p.groups().any(|(g, _)| g == group_name));
        if !present {
            let r = self
                .queue_ops(
                    group,
                    vec![QueueOp::EnsureGroup {
                        group: group_name.into(),
                        mode: super::to_raft_mode(GroupMode::Queue),
                        config,
                    }],
                )
                .await?;
            if let Some(QueueResult::Err(e)) = r.into_iter().next() {
                return Err(queue_err(topic, e));
            }
        }
        Ok(())
    }

    /// Whether a `Lease` could grant something now, judging from the local state.
    fn maybe_leasable(group: &Group, name: &str, now_ms: u64, timer: bool) -> bool {
        let guard = group.state().read();
        let Some(stats) = guard.partition().and_then(|p| p.group_stats(name, now_ms)) else {
            return true;
        };
        stats.ready > 0 || (timer && (stats.delayed > 0 || stats.in_flight > 0))
    }

    pub(super) async fn do_fetch(&self, req: FetchRequest) -> Result<FetchResponse, ApiError> {
        let route = self.route(&req.topic, req.partition)?;
        let group = self.leader_group(&route)?;
        let config = GroupConfig {
            visibility_timeout_ms: route.topic.config.visibility_timeout_ms,
            max_attempts: route.topic.config.max_attempts,
            dead_letter: true,
            ..GroupConfig::default()
        };
        self.ensure_queue_group(&req.topic, &req.group, &group, config)
            .await?;
        let wait = Duration::from_millis(req.wait_ms.min(FETCH_WAIT_MS_MAX));
        let until = tokio::time::Instant::now() + wait;
        let max_tasks = req.max_tasks.clamp(1, FETCH_TASKS_MAX);
        let mut applied = group.state().watch_applied();
        let mut timer_due = true;
        loop {
            applied.borrow_and_update();
            if Self::maybe_leasable(&group, &req.group, self.now_ms(), timer_due) {
                let r = self
                    .queue_ops(
                        &group,
                        vec![QueueOp::Lease {
                            group: req.group.clone(),
                            worker: req.worker.clone(),
                            max_tasks,
                            visibility_timeout_ms: req.visibility_timeout_ms,
                        }],
                    )
                    .await?;
                match r.into_iter().next() {
                    Some(QueueResult::Leased(tasks)) if !tasks.is_empty() => {
                        return self.fetch_response(&group, tasks).await;
                    }
                    Some(QueueResult::Err(e)) => return Err(queue_err(&req.topic, e)),
                    _ => {}
                }
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(FetchResponse::default());
            }
            let tick = LONG_POLL_RECHECK.min(until - now);
            timer_due = tokio::select! {
                biased;
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(ApiError::Unavailable { reason: "partition stopped".into() });
                    }
                    false
                }
                _ = tokio::time::sleep(tick) => true,
            };
            if !group.is_leader() {
                return Err(self.not_leader(group.leader()));
            }
        }
    }

    /// The stored batches holding `tasks`, plus their leases.
    async fn fetch_response(
        &self,
        group: &Group,
        tasks: Vec<taskbroker_raft::state_machine::partition::LeasedTask>,
    ) -> Result<FetchResponse, ApiError> {
        let mut batches: BTreeMap<u64, StoredBatch> = BTreeMap::new();
        let mut leases = Vec::with_capacity(tasks.len());
        for t in tasks {
            leases.push(Lease {
                token: token_out(t.token),
                expires_at_ms: t.expires_at_ms,
            });
            if batches
                .range(..=t.offset)
                .next_back()
                .is_some_and(|(_, b)| {
                    t.offset
                        < b.base_offset
                            + u64::from(taskbroker_raft::codec::batch_record_count(&b.bytes))
                })
            {
                continue;
            }
            let b = read_batch(group, t.offset).await?;
            batches.insert(b.base_offset, b);
        }
        Ok(FetchResponse {
            leases,
            batches: batches.into_values().collect(),
        })
    }

    pub(super) async fn do_settle(&self, req: SettleRequest) -> Result<SettleResponse, ApiError> {
        if req.items.len() > SETTLE_ITEMS_MAX {
            return Err(ApiError::InvalidArgument {
                reason: format!("{} items, max {SETTLE_ITEMS_MAX}", req.items.len()),
            });
        }
        let route = self.route(&req.topic, req.partition)?;
        let group = self.leader_group(&route)?;
        if req.items.is_empty() {
            return Ok(Vec::new());
        }
        let ops = req
            .items
            .iter()
            .map(|(token, settle)| {
                let token = token_in(*token);
                let group = req.group.clone();
                match settle {
                    Settle::Ack => QueueOp::Ack { group, token },
                    Settle::Nack {
                        retry_after_ms,
                        reason,
                    } => QueueOp::Nack {
                        group,
                        token,
                        retry_after_ms: *retry_after_ms,
                        reason: reason.clone(),
                    },
                    Settle::Extend {
                        visibility_timeout_ms,
                    } => QueueOp::Extend {
                        group,
                        token,
                        visibility_timeout_ms: *visibility_timeout_ms,
                    },
                }
            })
            .collect();
        let results = self.queue_ops(&group, ops).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                QueueResult::Err(e) => Err(queue_err(&req.topic, e)),
                _ => Ok(()),
            })
            .collect())
    }

    /// A group's state on one partition, from the replica hosted here.
    pub(super) fn local_partition_state(
        &self,
        topic: &str,
        group_name: &str,
        partition: u32,
    ) -> Result<GroupPartitionState, ApiError> {
        let route = self.route(topic, partition)?;
        let group = self
            .raft()
            .group(route.group_id)
            .ok_or_else(|| self.not_leader(route.replicas.first().copied()))?;
        let guard = group.state().read();
        let p = guard.partition().ok_or_else(|| ApiError::Internal {
            reason: "partition group holds no partition state".into(),
        })?;
        let hw = p.next_offset();
        Ok(match p.group_stats(group_name, self.now_ms()) {
            Some(s) => GroupPartitionState {
                partition,
                ready: s.ready,
                delayed: s.delayed,
                in_flight: s.in_flight,
                acked_total: s.acked_total,
                dead_letters: s.dead_letters,
                lag: s.lag,
                committed_offset: s.committed_offset,
                high_watermark: hw,
            },
            // The group has not touched this partition yet: everything retained is waiting.
            None => GroupPartitionState {
                partition,
                lag: hw.saturating_sub(p.log_start_offset()),
                high_watermark: hw,
                ..Default::default()
            },
        })
    }

    pub(super) async fn do_describe_group(
        &self,
        topic: String,
        group: String,
    ) -> Result<GroupDescription, ApiError> {
        let (mode, parts) = self.with_meta(|m| {
            (
                m.group_mode(&topic, &group),
                m.topic(&topic).map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (p.partition, GroupId(p.group_id), p.replicas.clone()))
                        .collect::<Vec<_>>()
                }),
            )
        })?;
        let parts = parts.ok_or_else(|| ApiError::UnknownTopic {
            topic: topic.clone(),
        })?;
        let mode = mode.ok_or_else(|| ApiError::UnknownGroup {
            topic: topic.clone(),
            group: group.clone(),
        })?;
        let mut out: BTreeMap<u32, GroupPartitionState> = BTreeMap::new();
        let mut remote: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for (p, gid, replicas) in parts {
            if self.raft().group(gid).is_some() {
                out.insert(p, self.local_partition_state(&topic, &group, p)?);
            } else if let Some(n) = replicas.first() {
                remote.entry(*n).or_default().push(p);
            }
        }
        for (node, ps) in remote {
            let addr = self.node_addr(node).ok_or_else(|| ApiError::Unavailable {
                reason: format!("no address for node {node}"),
            })?;
            let (t, g, list) = (topic.clone(), group.clone(), ps.clone());
            let answers = self
                .forwarder()
                .call(node, &addr, HANDLER_DEADLINE, |c, ctx| async move {
                    c.describe_partitions(ctx, t, g, list).await
                })
                .await?;
            for (p, a) in ps.into_iter().zip(answers) {
                out.insert(p, a?);
            }
        }
        Ok(GroupDescription {
            topic,
            group,
            mode: from_raft_mode(mode),
            partitions: out.into_values().collect(),
        })
    }

    /// Requeues a group's dead letters on one partition this node leads.
    pub(super) async fn requeue_local(
        &self,
        topic: &str,
        group_name: &str,
        partition: u32,
    ) -> Result<u64, ApiError> {
        let route = self.route(topic, partition)?;
        let group = self.leader_group(&route)?;
        let present = group
            .state()
            .read()
            .partition()
            .is_some_and(|p| p.groups().any(|(g, _)| g == group_name));
        if !present {
            return Ok(0);
        }
        let r = self
            .queue_ops(
                &group,
                vec![QueueOp::Requeue {
                    group: group_name.into(),
                    offsets: Vec::new(),
                }],
            )
            .await?;
        match r.into_iter().next() {
            Some(QueueResult::Requeued(n)) => Ok(u64::from(n)),
            Some(QueueResult::Err(e)) => Err(queue_err(topic, e)),
            other => Err(ApiError::Internal {
                reason: format!("unexpected requeue result {other:?}"),
            }),
        }
    }

    pub(super) async fn do_requeue(&self, topic: String, group: String) -> Result<u64, ApiError> {
        let parts = self.with_meta(|m| {
            if m.group_mode(&topic, &group).is_none() {
                return Err(ApiError::UnknownGroup {
                    topic: topic.clone(),
                    group: group.clone(),
                });
            }
            m.topic(&topic)
                .map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (p.partition, GroupId(p.group_id), p.replicas.clone()))
                        .collect::<Vec<_>>()
                })
                .ok_or_else(|| ApiError::UnknownTopic {
                    topic: topic.clone(),
                })
        })??;
        let mut total = 0;
        for (p, gid, replicas) in parts {
            let mut target = self.partition_leader_wait(gid, &replicas).await;
            // One retry on the leader a wrong guess names.
            for _ in 0..2 {
                let node = target.ok_or_else(|| ApiError::Unavailable {
                    reason: format!("no leader known for partition {p}"),
                })?;
                let r = if node == self.settings().node_id {
                    self.requeue_local(&topic, &group, p).await
                } else {
                    let addr = self.node_addr(node).ok_or_else(|| ApiError::Unavailable {
                        reason: format!("no address for node {node}"),
                    })?;
                    let (t, g) = (topic.clone(), group.clone());
                    self.forwarder()
                        .call(node, &addr, HANDLER_DEADLINE, |c, ctx| async move {
                            c.requeue_partitions(ctx, t, g, vec![p]).await
                        })
                        .await
                        .and_then(|v| {
                            v.into_iter().next().unwrap_or(Err(ApiError::Internal {
                                reason: "no answer for partition".into(),
                            }))
                        })
                };
                match r {
                    Ok(n) => {
                        total += n;
                        break;
                    }
                    Err(ApiError::NotLeader { leader_hint, .. }) if leader_hint != target => {
                        target = leader_hint;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(total + self.requeue_from_dead_letter_topic(&topic, &group).await?)
    }
}

/// Reads the stored batch holding `offset` from the partition log.
pub(super) async fn read_batch(group: &Group, offset: u64) -> Result<StoredBatch, ApiError> {
    let internal = |e: String| ApiError::Internal { reason: e };
    let pos = group
        .log()
        .locate_offset(offset)
        .await
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| internal(format!("offset {offset} is not in the log")))?;
    let frames = group
        .log()
        .read(pos.index, 1, FRAME_READ_BYTES_MAX)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let frame = frames
        .first()
        .ok_or_else(|| internal(format!("no frame at index {}", pos.index)))?;
    batch_of(frame)?.ok_or_else(|| internal(format!("frame {} is not a produce", frame.index)))
}

/// The producer's batch stored in `frame`, if it is a produce entry.
pub(super) fn batch_of(frame: &taskbroker_storage::Frame) -> Result<Option<StoredBatch>, ApiError> {
    let cmd = decode_command(frame).map_err(|e| ApiError::Internal {
        reason: e.to_string(),
    })?;
    Ok(match cmd {
        Some(Command::Produce { batch, .. }) => Some(StoredBatch {
            base_offset: frame.base_offset,
            bytes: batch,
        }),
        _ => None,
    })
}
