//! Decoding: [`validate`] and the zero-copy [`BatchView`].

use bytes::Bytes;
use rkyv::util::AlignedVec;

use super::header::{batch_crc32c, BATCH_HEADER_LEN, BODY_ALIGN};
use super::record::{ArchivedWireBody, ArchivedWireRecord};
use super::{BatchError, BatchHeader, Header, TaskRecord, BATCH_BYTES_MAX};

/// Limits a batch must respect, checked by [`validate`] and enforced by the
/// [`BatchBuilder`](super::BatchBuilder). Normally per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest batch (header plus body) in bytes. Capped at [`BATCH_BYTES_MAX`] whatever is set.
    pub batch_bytes_max: usize,
    /// Largest task: key + payload + header names and values, in bytes.
    pub task_bytes_max: usize,
    /// Most records in one batch.
    pub records_max: u32,
}

impl Default for BatchLimits {
    /// 16 MiB per batch, 1 MiB per task, 100 000 records per batch.
    fn default() -> Self {
        BatchLimits {
            batch_bytes_max: 16 << 20,
            task_bytes_max: 1 << 20,
            records_max: 100_000,
        }
    }
}

impl BatchLimits {
    /// The loosest limits any decoder accepts: only the structural bound [`BATCH_BYTES_MAX`].
    /// Used by [`BatchView::new`] for batches that were already validated with their topic's
    /// limits on arrival.
    pub const HARD: BatchLimits = BatchLimits {
        batch_bytes_max: BATCH_BYTES_MAX,
        task_bytes_max: BATCH_BYTES_MAX,
        records_max: u32::MAX,
    };

    /// `batch_bytes_max` capped at [`BATCH_BYTES_MAX`].
    pub fn effective_batch_bytes_max(&self) -> usize {
        self.batch_bytes_max.min(BATCH_BYTES_MAX)
    }
}

/// Validates a received batch and returns its header: header fields, lengths, limits, CRC32C,
/// alignment, rkyv bytecheck of the body, record count, and the per-task size limit.
///
/// This is what the broker runs on arrival, before proposing the bytes unchanged to Raft.
/// Never panics, whatever `bytes` holds.
///
/// **Alignment:** `bytes` must start on a 16-byte boundary in memory (more precisely, its body
/// at offset [`BATCH_HEADER_LEN`] must), otherwise [`BatchError::Misaligned`] is returned after
/// the CRC check; [`aligned_copy`] makes such a copy.
///
/// # Errors
///
/// The first failed check, in this order: [`BatchError::Truncated`] (shorter than a header),
/// [`BatchError::BadMagic`], [`BatchError::UnsupportedVersion`], [`BatchError::UnknownFlags`],
/// [`BatchError::ReservedNotZero`], [`BatchError::SequenceOverflow`],
/// [`BatchError::TooLarge`] (by the announced length, so a stream reader can refuse before
/// reading the body), [`BatchError::TooManyRecords`], [`BatchError::Truncated`] /
/// [`BatchError::TrailingBytes`], [`BatchError::CrcMismatch`], [`BatchError::Misaligned`],
/// [`BatchError::Malformed`], [`BatchError::RecordCountMismatch`], [`BatchError::TaskTooLarge`].
///
/// # Example
///
/// ```
/// use taskbroker_client::batch::{validate, BatchBuilder, BatchError, BatchLimits, TaskRecord};
///
/// let mut builder = BatchBuilder::new(1, 0, 1_000);
/// builder.push(TaskRecord::new(b"payload".to_vec(), 1_000))?;
/// let batch = builder.finish();
/// let header = validate(batch.as_bytes(), &BatchLimits::default())?;
/// assert_eq!(header.record_count, 1);
///
/// let mut corrupt = batch.as_bytes().to_vec();
/// *corrupt.last_mut().expect("not empty") ^= 0xff;
/// let corrupt = taskbroker_client::batch::aligned_copy(&corrupt);
/// assert!(matches!(
///     validate(&corrupt, &BatchLimits::default()),
///     Err(BatchError::CrcMismatch { .. })
/// ));
/// # Ok::<(), BatchError>(())
/// ```
pub fn validate(bytes: &[u8], limits: &BatchLimits) -> Result<BatchHeader, BatchError> {
    BatchView::with_limits(bytes, limits).map(|view| view.header)
}

/// Copies `bytes` into a new buffer whose start is 16-byte aligned, for input that
/// [`validate`] or [`BatchView`] refused with [`BatchError::Misaligned`] (e.g. a slice at an
/// arbitrary offset of a network or file buffer).
pub fn aligned_copy(bytes: &[u8]) -> Bytes {
    let mut buf = AlignedVec::<BODY_ALIGN>::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    Bytes::from_owner(buf)
}

/// A validated batch, read in place: no record is copied or deserialized.
///
/// Requires the same 16-byte alignment as [`validate`].
///
/// # Example
///
/// ```
/// use taskbroker_client::batch::{BatchBuilder, BatchView, TaskRecord};
///
/// let mut builder = BatchBuilder::new(1, 0, 5_000);
/// for i in 0..3u8 {
///     let mut task = TaskRecord::new(vec![i; 4], 5_000 + u64::from(i));
///     task.priority = i;
///     builder.push(task)?;
/// }
/// let batch = builder.finish();
/// let view = BatchView::new(batch.as_bytes())?;
/// let priorities: Vec<u8> = view.records().map(|r| r.priority()).collect();
/// assert_eq!(priorities, [0, 1, 2]);
/// assert_eq!(view.records().last().map(|r| r.timestamp_ms()), Some(5_002));
/// # Ok::<(), taskbroker_client::batch::BatchError>(())
/// ```
#[derive(Clone, Copy)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    header: BatchHeader,
    body: &'a ArchivedWireBody,
}

impl std::fmt::Debug for BatchView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchView")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<'a> BatchView<'a> {
    /// Validates `bytes` against the structural limits only ([`BatchLimits::HARD`]) and gives
    /// access to the records. For batches already validated with their topic's limits (read
    /// back from the log); on arrival use [`with_limits`](Self::with_limits).
    ///
    /// # Errors
    ///
    /// As [`validate`].
    pub fn new(bytes: &'a [u8]) -> Result<Self, BatchError> {
        Self::with_limits(bytes, &BatchLimits::HARD)
    }

    /// Validates `bytes` like [`validate`] and gives access to the records.
    ///
    /// # Errors
    ///
    /// As [`validate`].
    pub fn with_limits(bytes: &'a [u8], limits: &BatchLimits) -> Result<Self, BatchError> {
        let header = BatchHeader::decode(bytes)?;
        let total = header.total_len();
        let max = limits.effective_batch_bytes_max();
        if total > max {
            return Err(BatchError::TooLarge { len: total, max });
        }
        if header.record_count > limits.records_max {
            return Err(BatchError::TooManyRecords {
                count: u64::from(header.record_count),
                max: limits.records_max,
            });
        }
        if bytes.len() < total {
            return Err(BatchError::Truncated {
                needed: total,
                got: bytes.len(),
            });
        }
        if bytes.len() > total {
            return Err(BatchError::TrailingBytes {
                expected: total,
                got: bytes.len(),
            });
        }
        let (head, body) = bytes.split_at(BATCH_HEADER_LEN);
        let head: &[u8; BATCH_HEADER_LEN] = head.try_into().map_err(|_| BatchError::Truncated {
            needed: BATCH_HEADER_LEN,
            got: bytes.len(),
        })?;
        let actual = batch_crc32c(head, body);
        if actual != header.crc32c {
            return Err(BatchError::CrcMismatch {
                expected: header.crc32c,
                actual,
            });
        }
        if body.as_ptr().addr() % BODY_ALIGN != 0 {
            return Err(BatchError::Misaligned);
        }
        let body = rkyv::access::<ArchivedWireBody, rkyv::rancor::Error>(body)
            .map_err(|e| BatchError::Malformed(e.to_string()))?;
        if body.records.len() != header.record_count as usize {
            return Err(BatchError::RecordCountMismatch {
                header: header.record_count,
                body: body.records.len(),
            });
        }
        for (index, record) in body.records.iter().enumerate() {
            let len = record.data_len();
            if len > limits.task_bytes_max {
                return Err(BatchError::TaskTooLarge {
                    index,
                    len,
                    max: limits.task_bytes_max,
                });
            }
        }
        Ok(BatchView {
            bytes,
            header,
            body,
        })
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch as received (header plus body), e.g. to store or forward unchanged.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.body.records.len()
    }

    /// Whether the batch holds no records.
    pub fn is_empty(&self) -> bool {
        self.body.records.is_empty()
    }

    /// The record at `index` within the batch, if any.
    pub fn record(&self, index: usize) -> Option<RecordView<'a>> {
        let base_timestamp_ms = self.header.base_timestamp_ms;
        self.body.records.get(index).map(|record| RecordView {
            record,
            index,
            base_timestamp_ms,
        })
    }

    /// The records in batch order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = RecordView<'a>> + DoubleEndedIterator {
        let base_timestamp_ms = self.header.base_timestamp_ms;
        let body: &'a ArchivedWireBody = self.body;
        body.records
            .iter()
            .enumerate()
            .map(move |(index, record)| RecordView {
                record,
                index,
                base_timestamp_ms,
            })
    }
}

/// One record of a [`BatchView`], read in place.
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    record: &'a ArchivedWireRecord,
    index: usize,
    base_timestamp_ms: u64,
}

impl std::fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordView")
            .field("index", &self.index)
            .field("key", &self.key())
            .field("payload_len", &self.payload().len())
            .field("headers", &self.headers().len())
            .field("timestamp_ms", &self.timestamp_ms())
            .field("not_before_ms", &self.not_before_ms())
            .field("priority", &self.priority())
            .finish()
    }
}

impl<'a> RecordView<'a> {
    /// Position of the record within its batch; its producer sequence number is
    /// `header.first_sequence + index`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The key, if the producer set one.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.record.key.as_ref().map(|k| k.as_slice())
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.record.payload.as_slice()
    }

    /// The headers as `(name, value)` pairs, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + 'a {
        let record: &'a ArchivedWireRecord = self.record;
        record
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Absolute not-before time (ms since the Unix epoch) of a delayed task.
    pub fn not_before_ms(&self) -> Option<u64> {
        self.record.not_before_ms.as_ref().map(|t| t.to_native())
    }

    /// The priority; higher is more urgent.
    pub fn priority(&self) -> u8 {
        self.record.priority
    }

    /// The record's timestamp in ms since the Unix epoch: the batch's base timestamp plus the
    /// stored delta (saturating, for a hostile base timestamp near `u64::MAX`).
    pub fn timestamp_ms(&self) -> u64 {
        self.base_timestamp_ms
            .saturating_add(u64::from(self.record.timestamp_delta_ms.to_native()))
    }

    /// Copies the record out into an owned [`TaskRecord`].
    pub fn to_task_record(&self) -> TaskRecord {
        TaskRecord {
            key: self.key().map(<[u8]>::to_vec),
            payload: self.payload().to_vec(),
            headers: self.headers().map(|(n, v)| Header::new(n, v)).collect(),
            timestamp_ms: self.timestamp_ms(),
            not_before_ms: self.not_before_ms(),
            priority: self.priority(),
        }
    }
}
