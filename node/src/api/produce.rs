//! Produce: validate a record batch on the partition leader and propose it unchanged.

use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use taskbroker_client::batch::{aligned_copy, validate, BatchError, BODY_ALIGN};
use taskbroker_client::proto::{ApiError, ProduceRequest, ProduceResponse};
use taskbroker_raft::state_machine::partition::{ProduceOutcome, ProducerInfo};
use taskbroker_raft::{Command, Response};

use super::Api;

fn batch_err(e: BatchError) -> ApiError {
    match e {
        BatchError::TooLarge { len, max } => ApiError::TooLarge {
            size: len as u64,
            max: max as u64,
        },
        BatchError::TaskTooLarge { len, max, .. } => ApiError::TooLarge {
            size: len as u64,
            max: max as u64,
        },
        BatchError::TooManyRecords { count, max } => ApiError::TooLarge {
            size: count,
            max: u64::from(max),
        },
        other => ApiError::InvalidBatch {
            reason: other.to_string(),
        },
    }
}

fn outcome(o: ProduceOutcome) -> ProduceResponse {
    match o {
        ProduceOutcome::Appended { base_offset, count } => ProduceResponse {
            base_offset,
            count,
            duplicate: false,
        },
        ProduceOutcome::Duplicate { base_offset, count } => ProduceResponse {
            base_offset,
            count,
            duplicate: true,
        },
    }
}

/// A produce proposal that a retry of the same batch can wait on.
pub(super) type SharedProduce = Shared<BoxFuture<'static, Result<ProduceResponse, ApiError>>>;

/// How long a new leader may take to apply the entries it inherited before answering produces.
const INHERITED_APPLY_WAIT: Duration = Duration::from_secs(5);

impl Api {
    /// Waits, once per term, until this leader has applied every entry in its log at the time
    /// it is asked: entries of earlier terms may hold the original of a retried batch, and the
    /// duplicate check reads the applied state.
    async fn catch_up_inherited(&self, group: &taskbroker_raft::Group) -> Result<(), ApiError> {
        let m = group.metrics();
        let ready = self
            .inner
            .produce_ready_term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group.id())
            == Some(&m.term);
        if ready {
            return Ok(());
        }
        if let Some(last) = m.last_log_index {
            if !group.wait_applied(last, INHERITED_APPLY_WAIT).await {
                return Err(ApiError::Unavailable {
                    reason: "new leader still applying inherited entries".into(),
                });
            }
        }
        self.inner
            .produce_ready_term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.id(), m.term);
        Ok(())
    }

    pub(super) async fn do_produce(
        &self,
        req: ProduceRequest,
    ) -> Result<ProduceResponse, ApiError> {
        let route = self.route(&req.topic, req.partition)?;
        let group = self.leader_group(&route)?;
        // Deserialisation puts the bytes wherever the allocator did; zero-copy validation needs
        // the body 16-byte aligned, so copy once if it is not.
        let batch: Bytes = if (req.batch.as_ptr() as usize).is_multiple_of(BODY_ALIGN) {
            req.batch
        } else {
            aligned_copy(&req.batch)
        };
        let header = validate(&batch, &self.settings().limits).map_err(batch_err)?;
        if header.record_count == 0 {
            return Err(ApiError::InvalidBatch {
                reason: "empty batch".into(),
            });
        }
        let producer = ProducerInfo {
            producer_id: header.producer_id,
            first_sequence: header.first_sequence,
            record_count: header.record_count,
        };
        if producer.producer_id != 0 {
            self.catch_up_inherited(&group).await?;
        }
        if let Some(dup) = group
            .state()
            .read()
            .partition()
            .and_then(|p| p.is_duplicate(&producer))
        {
            return Ok(outcome(dup));
        }
        let cmd = Command::Produce {
            now_ms: self.now_ms(),
            batch,
        };
        if producer.producer_id == 0 {
            return self.propose_produce(group, cmd).await;
        }
        let key = (group.id(), producer.producer_id, producer.first_sequence);
        let (fut, ours) = {
            let mut map = self
                .inner
                .produces_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let api = self.clone();
                    let f = async move { api.propose_produce(group, cmd).await }
                        .boxed()
                        .shared();
                    map.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        let r = fut.await;
        if ours {
            self.inner
                .produces_in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        r
    }

    async fn propose_produce(
        &self,
        group: taskbroker_raft::Group,
        cmd: Command,
    ) -> Result<ProduceResponse, ApiError> {
        match self.propose(&group, cmd).await? {
            Response::Produce(o) => Ok(outcome(o)),
            Response::Rejected(reason) => Err(ApiError::InvalidBatch { reason }),
            other => Err(ApiError::Internal {
                reason: format!("unexpected produce response {other}"),
            }),
        }
    }
}
