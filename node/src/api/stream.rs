//! Stream groups: read committed batches from an offset, commit offsets.
//!
//! Only batches below the applied high watermark are returned: everything applied is committed,
//! so a reader never sees an entry a leader change could still truncate.

use std::time::Duration;

use taskbroker_client::proto::{ApiError, GroupMode, StreamFetchRequest, StreamFetchResponse};
use taskbroker_raft::state_machine::partition::{GroupConfig, QueueOp, QueueResult};

use super::queue::batch_of;
use super::{to_raft_mode, Api, FETCH_WAIT_MS_MAX};

/// Most frames read per log read while looking for batches (queue entries sit between them).
pub const STREAM_FRAMES_PER_READ_MAX: usize = 256;
/// Most log reads one stream fetch makes: bounds a fetch over a long run of queue entries.
pub const STREAM_READS_MAX: usize = 16;
/// Largest `max_bytes` a stream fetch may ask for.
pub const STREAM_FETCH_BYTES_MAX: u32 = 32 << 20;

impl Api {
    pub(super) async fn do_stream_fetch(
        &self,
        req: StreamFetchRequest,
    ) -> Result<StreamFetchResponse, ApiError> {
        let route = self.route(&req.topic, req.partition)?;
        let group = self.leader_group(&route)?;
        let wait = Duration::from_millis(req.wait_ms.min(FETCH_WAIT_MS_MAX));
        let mut applied = group.state().watch_applied();
        let hw = {
            let until = tokio::time::Instant::now() + wait;
            loop {
                let hw = *applied.borrow_and_update();
                if hw > req.offset {
                    break hw;
                }
                match tokio::time::timeout_at(until, applied.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        return Err(ApiError::Unavailable {
                            reason: "partition stopped".into(),
                        })
                    }
                    Err(_) => {
                        return Ok(StreamFetchResponse {
                            batches: Vec::new(),
                            high_watermark: hw,
                        })
                    }
                }
            }
        };
        let max_bytes = req.max_bytes.clamp(1, STREAM_FETCH_BYTES_MAX) as usize;
        let log = group.log();
        let start = log
            .locate_offset(req.offset)
            .await
            .map_err(|e| ApiError::InvalidArgument {
                reason: e.to_string(),
            })?
            .ok_or_else(|| ApiError::Internal {
                reason: format!(
                    "offset {} below the high watermark is not in the log",
                    req.offset
                ),
            })?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let mut index = start.index;
        'reads: for _ in 0..STREAM_READS_MAX {
            let frames = log
                .read(index, STREAM_FRAMES_PER_READ_MAX, max_bytes)
                .await
                .map_err(|e| ApiError::Internal {
                    reason: e.to_string(),
                })?;
            let Some(last) = frames.last() else { break };
            index = last.index + 1;
            for f in &frames {
                if f.base_offset >= hw {
                    break 'reads;
                }
                if f.record_count == 0 {
                    continue;
                }
                if let Some(b) = batch_of(f)? {
                    if !batches.is_empty() && bytes + b.bytes.len() > max_bytes {
                        break 'reads;
                    }
                    bytes += b.bytes.len();
                    batches.push(b);
                }
            }
            if !batches.is_empty() {
                break;
            }
        }
        Ok(StreamFetchResponse {
            batches,
            high_watermark: hw,
        })
    }

    pub(super) async fn do_commit_offset(
        &self,
        topic: String,
        partition: u32,
        group_name: String,
        offset: u64,
    ) -> Result<(), ApiError> {
        let route = self.route(&topic, partition)?;
        let group = self.leader_group(&route)?;
        self.do_create_group(topic.clone(), group_name.clone(), GroupMode::Stream)
            .await?;
        let ops = vec![
            QueueOp::EnsureGroup {
                group: group_name.clone(),
                mode: to_raft_mode(GroupMode::Stream),
                config: GroupConfig::default(),
            },
            QueueOp::CommitOffset {
                group: group_name.clone(),
                offset,
            },
        ];
        let r = self.queue_ops(&group, ops).await?;
        for res in r {
            if let QueueResult::Err(e) = res {
                return Err(ApiError::InvalidArgument {
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }
}
