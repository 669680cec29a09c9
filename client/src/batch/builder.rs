//! Encoding: [`BatchBuilder`] collects records and encodes them once into an [`EncodedBatch`].

use std::mem::{align_of, size_of};

use bytes::Bytes;
use rkyv::util::AlignedVec;

use super::header::{batch_crc32c, BATCH_HEADER_LEN, BODY_ALIGN};
use super::record::{ArchivedWireBody, ArchivedWireHeader, ArchivedWireRecord};
use super::record::{WireBody, WireHeader, WireRecord};
use super::{BatchError, BatchHeader, BatchLimits, BatchView, TaskRecord};

/// Collects the records of one batch for one partition and encodes them with [`finish`].
///
/// The builder enforces the same [`BatchLimits`] the broker checks, so a batch it produces is
/// never rejected for size: [`push`] refuses a record that would not fit, and the producer then
/// finishes this batch and starts the next. The builder reads no clock: the base timestamp and
/// every record's timestamp come from the caller.
///
/// Encoding allocates once: [`finish`] reserves [`encoded_size_estimate`] bytes (an upper
/// bound), writes the header placeholder, serializes the body after it and patches the header.
///
/// [`finish`]: BatchBuilder::finish
/// [`push`]: BatchBuilder::push
/// [`encoded_size_estimate`]: BatchBuilder::encoded_size_estimate
///
/// # Example
///
/// ```
/// use taskbroker_client::batch::{BatchBuilder, BatchView, Header, TaskRecord};
///
/// let now_ms = 1_700_000_000_000; // from the caller's clock
/// let mut builder = BatchBuilder::new(/* producer_id */ 7, /* first_sequence */ 100, now_ms);
/// builder.push(TaskRecord::new(b"resize image 1".to_vec(), now_ms))?;
/// builder.push(TaskRecord {
///     key: Some(b"user-42".to_vec()),
///     payload: b"send email".to_vec(),
///     headers: vec![Header::new("trace-id", "abc")],
///     timestamp_ms: now_ms + 5,
///     not_before_ms: Some(now_ms + 60_000),
///     priority: 3,
/// })?;
/// let batch = builder.finish();
/// assert_eq!(batch.header().record_count, 2);
/// assert_eq!(batch.header().sequences(), 100..102);
///
/// // What the broker does on arrival, and a worker after a fetch:
/// let view = BatchView::new(batch.as_bytes())?;
/// let second = view.records().nth(1).expect("two records");
/// assert_eq!(second.key(), Some(&b"user-42"[..]));
/// assert_eq!(second.not_before_ms(), Some(now_ms + 60_000));
/// # Ok::<(), taskbroker_client::batch::BatchError>(())
/// ```
#[derive(Debug)]
pub struct BatchBuilder {
    producer_id: u64,
    first_sequence: u64,
    base_timestamp_ms: u64,
    limits: BatchLimits,
    records: Vec<WireRecord>,
    /// Upper bound on the encoded size of the records pushed so far, header included.
    estimate: usize,
}

/// Bytes the archive needs besides the records: padding before the record array and the root.
const FIXED_OVERHEAD: usize = align_of::<ArchivedWireRecord>() - 1 + align_of::<ArchivedWireBody>()
    - 1
    + size_of::<ArchivedWireBody>();

impl BatchBuilder {
    /// Starts an empty batch with the default [`BatchLimits`].
    ///
    /// `base_timestamp_ms` is the producer's wall-clock time (ms since the Unix epoch) read by
    /// the caller; record timestamps are stored relative to it.
    pub fn new(producer_id: u64, first_sequence: u64, base_timestamp_ms: u64) -> Self {
        Self::with_limits(
            producer_id,
            first_sequence,
            base_timestamp_ms,
            BatchLimits::default(),
        )
    }

    /// Starts an empty batch that [`push`](Self::push) keeps within `limits` (which should be the
    /// limits of the topic the batch is for). `limits.batch_bytes_max` is capped at
    /// [`BATCH_BYTES_MAX`](super::BATCH_BYTES_MAX).
    pub fn with_limits(
        producer_id: u64,
        first_sequence: u64,
        base_timestamp_ms: u64,
        limits: BatchLimits,
    ) -> Self {
        BatchBuilder {
            producer_id,
            first_sequence,
            base_timestamp_ms,
            limits,
            records: Vec::new(),
            estimate: BATCH_HEADER_LEN + FIXED_OVERHEAD,
        }
    }

    /// Checks whether `record` can be pushed, without pushing it. [`push`](Self::push) fails
    /// exactly when this does; call it first to keep the record when the batch is full.
    ///
    /// # Errors
    ///
    /// [`BatchError::TooManyRecords`], [`BatchError::SequenceOverflow`],
    /// [`BatchError::TimestampOutOfRange`], [`BatchError::TaskTooLarge`], or
    /// [`BatchError::TooLarge`] if the batch would outgrow `batch_bytes_max`.
    pub fn check(&self, record: &TaskRecord) -> Result<(), BatchError> {
        let count = self.records.len() as u64 + 1;
        if count > u64::from(self.limits.records_max) {
            return Err(BatchError::TooManyRecords {
                count,
                max: self.limits.records_max,
            });
        }
        if self.first_sequence.checked_add(count).is_none() {
            return Err(BatchError::SequenceOverflow {
                first_sequence: self.first_sequence,
                record_count: count,
            });
        }
        self.timestamp_delta_ms(record.timestamp_ms)?;
        let len = record.data_len();
        if len > self.limits.task_bytes_max {
            return Err(BatchError::TaskTooLarge {
                index: self.records.len(),
                len,
                max: self.limits.task_bytes_max,
            });
        }
        let estimate = self.estimate.saturating_add(record_size_bound(record));
        let max = self.limits.effective_batch_bytes_max();
        if estimate > max {
            return Err(BatchError::TooLarge { len: estimate, max });
        }
        Ok(())
    }

    /// Adds a record, moving its buffers in (no copy until [`finish`](Self::finish)).
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check); the builder is unchanged and the record is dropped.
    pub fn push(&mut self, record: TaskRecord) -> Result<(), BatchError> {
        self.check(&record)?;
        let timestamp_delta_ms = self.timestamp_delta_ms(record.timestamp_ms)?;
        self.estimate += record_size_bound(&record);
        self.records.push(WireRecord {
            key: record.key,
            payload: record.payload,
            headers: record
                .headers
                .into_iter()
                .map(|h| WireHeader {
                    name: h.name,
                    value: h.value,
                })
                .collect(),
            not_before_ms: record.not_before_ms,
            timestamp_delta_ms,
            priority: record.priority,
        });
        Ok(())
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record has been pushed yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// An upper bound on the size in bytes of the batch [`finish`](Self::finish) would encode
    /// now (header included). Never more than the limits' `batch_bytes_max`.
    pub fn encoded_size_estimate(&self) -> usize {
        self.estimate
    }

    /// Encodes the batch: header, then the rkyv archive of the records, in one 16-byte aligned
    /// allocation. A batch with no records is valid.
    pub fn finish(self) -> EncodedBatch {
        let estimate = self.estimate;
        let record_count = u32::try_from(self.records.len())
            .expect("push keeps the record count within records_max, a u32");
        let mut buf = AlignedVec::<BODY_ALIGN>::with_capacity(estimate);
        buf.extend_from_slice(&[0u8; BATCH_HEADER_LEN]);
        let body = WireBody {
            records: self.records,
        };
        // Positions in the archive are relative, and padding is computed from the absolute
        // position, which equals the body-relative one as the header length is a multiple of
        // BODY_ALIGN: the body bytes are the same as if serialized on their own.
        let mut buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&body, buf)
            .expect("serializing bytes and strings into memory within the size limits cannot fail");
        debug_assert!(buf.len() <= estimate, "size estimate is an upper bound");
        let body_len = u32::try_from(buf.len() - BATCH_HEADER_LEN)
            .expect("push keeps the batch under BATCH_BYTES_MAX");
        let mut header = BatchHeader {
            record_count,
            base_timestamp_ms: self.base_timestamp_ms,
            producer_id: self.producer_id,
            first_sequence: self.first_sequence,
            flags: 0,
            body_len,
            crc32c: 0,
        };
        header.crc32c = batch_crc32c(&header.encode(), &buf[BATCH_HEADER_LEN..]);
        buf[..BATCH_HEADER_LEN].copy_from_slice(&header.encode());
        EncodedBatch {
            bytes: Bytes::from_owner(buf),
            header,
        }
    }

    fn timestamp_delta_ms(&self, timestamp_ms: u64) -> Result<u32, BatchError> {
        timestamp_ms
            .checked_sub(self.base_timestamp_ms)
            .and_then(|d| u32::try_from(d).ok())
            .ok_or(BatchError::TimestampOutOfRange {
                timestamp_ms,
                base_timestamp_ms: self.base_timestamp_ms,
            })
    }
}

/// Upper bound on the archive bytes one record adds: its slot in the record array, its byte
/// strings, and its header array with the worst-case alignment padding.
fn record_size_bound(record: &TaskRecord) -> usize {
    // rkyv aligns the writer before a header array even when it is empty.
    let headers = align_of::<ArchivedWireHeader>() - 1
        + record.headers.len() * size_of::<ArchivedWireHeader>();
    size_of::<ArchivedWireRecord>() + record.data_len() + headers
}

/// An encoded record batch: the bytes to send, store and serve, unchanged.
///
/// The bytes start on a 16-byte boundary, so [`BatchView::new`] can read them in place.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    bytes: Bytes,
    header: BatchHeader,
}

impl EncodedBatch {
    /// The encoded bytes (header plus body).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded bytes as a [`Bytes`], without copying. Its start stays 16-byte aligned (as
    /// long as it is not sliced at an offset that is not a multiple of 16).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The batch's header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// A zero-copy view of the records (validating the bytes again, with the hard limits only).
    ///
    /// # Errors
    ///
    /// None for a batch produced by [`BatchBuilder`]; the signature is that of [`BatchView::new`].
    pub fn view(&self) -> Result<BatchView<'_>, BatchError> {
        BatchView::new(&self.bytes)
    }
}
