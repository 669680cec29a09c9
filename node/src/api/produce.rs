//! Produce: validate a record batch on the partition leader and propose it unchanged.

use bytes::Bytes;
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

impl Api {
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
        match self.propose(&group, cmd).await? {
            Response::Produce(o) => Ok(outcome(o)),
            Response::Rejected(reason) => Err(ApiError::InvalidBatch { reason }),
            other => Err(ApiError::Internal {
                reason: format!("unexpected produce response {other}"),
            }),
        }
    }
}
