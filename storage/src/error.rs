//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the storage crate.
///
/// Expected conditions (out-of-range reads, oversized frames, corrupt bytes on disk) are
/// returned as structured variants; a failed `fdatasync` poisons the log for good
/// ([`StorageError::Poisoned`], fail-stop).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The operation that failed (e.g. `"write"`, `"fdatasync"`).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk that are not a torn tail failed validation; never silently truncated.
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage inside the file.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// An earlier write or fdatasync failed; the log cannot be trusted any more (fail-stop).
    #[error("log is poisoned (a previous {op} failed: {reason}); restart and recover from disk")]
    Poisoned {
        /// The operation that poisoned the log.
        op: &'static str,
        /// The original failure.
        reason: String,
    },
    /// The requested index is below the first readable index (purged or reset away).
    #[error("index {index} has been purged; the first readable index is {first_index}")]
    IndexPurged {
        /// The requested index.
        index: u64,
        /// The current first readable index.
        first_index: u64,
    },
    /// The requested offset is below the first readable frame's base offset.
    #[error("offset {offset} has been purged; the first readable offset is {first_offset}")]
    OffsetPurged {
        /// The requested offset.
        offset: u64,
        /// The base offset of the first readable frame.
        first_offset: u64,
    },
    /// The requested index is at or past the end of the log.
    #[error("index {index} is out of range; the next index to be written is {next_index}")]
    OutOfRange {
        /// The requested index.
        index: u64,
        /// The current next index.
        next_index: u64,
    },
    /// A frame payload is larger than `frame_payload_bytes_max`.
    #[error("frame payload of {len} bytes exceeds frame_payload_bytes_max ({max} bytes)")]
    FrameTooLarge {
        /// Payload length.
        len: usize,
        /// Configured maximum.
        max: u32,
    },
    /// A meta record is larger than a meta slot can hold.
    #[error("meta record of {len} bytes exceeds the {max}-byte slot capacity")]
    MetaTooLarge {
        /// Record length.
        len: usize,
        /// Maximum record length.
        max: usize,
    },
    /// The writer queue is full (more than `QUEUE_OPS_MAX` operations in flight).
    #[error("the log's write queue is full ({ops_max} operations in flight); retry later")]
    QueueFull {
        /// The queue capacity.
        ops_max: usize,
    },
    /// io_uring was explicitly requested but cannot be used on this host.
    #[error("io_uring is unavailable on this host: {reason}")]
    UringUnavailable {
        /// Why the probe failed (e.g. `EPERM` from a seccomp profile).
        reason: String,
    },
    /// A configuration value is out of its allowed range.
    #[error("invalid storage config: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// An argument is invalid for the log's current state.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// The log was closed, or its writer task stopped.
    #[error("the log is closed")]
    Closed,
}

impl StorageError {
    /// Wraps an [`std::io::Error`] with the operation and path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds a [`StorageError::Corrupt`].
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        StorageError::Corrupt {
            path: path.into(),
            position,
            reason: reason.into(),
        }
    }
}
