//! Records: what a producer fills in ([`TaskRecord`]) and their archived wire form.

/// A named header attached to a task (like an HTTP header; names need not be unique).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Header {
    /// Header name (UTF-8).
    pub name: String,
    /// Header value (opaque bytes).
    pub value: Vec<u8>,
}

impl Header {
    /// Creates a header.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One task as the producer fills it in, and as [`RecordView::to_task_record`] copies it out.
///
/// Owned so that [`BatchBuilder::push`](super::BatchBuilder::push) can move the buffers in: the
/// only copy of the payload is the one into the encoded batch.
///
/// [`RecordView::to_task_record`]: super::RecordView::to_task_record
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TaskRecord {
    /// Optional ordering/partitioning key.
    pub key: Option<Vec<u8>>,
    /// The task's payload (opaque bytes).
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// When the task was created, in ms since the Unix epoch (the producer's clock, supplied by
    /// the caller). Must lie in `base_timestamp_ms ..= base_timestamp_ms + u32::MAX` of its batch.
    pub timestamp_ms: u64,
    /// For delayed tasks: absolute time in ms since the Unix epoch before which the task must not
    /// be delivered.
    pub not_before_ms: Option<u64>,
    /// Priority; higher is more urgent. 0 is the default.
    pub priority: u8,
}

impl TaskRecord {
    /// A record with the given payload and timestamp and everything else empty or default.
    pub fn new(payload: impl Into<Vec<u8>>, timestamp_ms: u64) -> Self {
        TaskRecord {
            payload: payload.into(),
            timestamp_ms,
            ..TaskRecord::default()
        }
    }

    /// Bytes of user data this record carries: key, payload, and header names and values. This
    /// is what [`BatchLimits::task_bytes_max`](super::BatchLimits::task_bytes_max) limits.
    pub fn data_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + self.payload.len() + headers
    }
}

/// The root of the archived body. A struct rather than a bare `Vec` so the root type has a name.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub(crate) struct WireBody {
    pub(crate) records: Vec<WireRecord>,
}

/// One record in the archive. Field order is part of the wire format.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub(crate) struct WireRecord {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Vec<WireHeader>,
    pub(crate) not_before_ms: Option<u64>,
    pub(crate) timestamp_delta_ms: u32,
    pub(crate) priority: u8,
}

/// One header in the archive.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub(crate) struct WireHeader {
    pub(crate) name: String,
    pub(crate) value: Vec<u8>,
}

impl ArchivedWireRecord {
    /// Same as [`TaskRecord::data_len`], on the archived form.
    pub(crate) fn data_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum();
        self.key.as_ref().map_or(0, |k| k.len()) + self.payload.len() + headers
    }
}
