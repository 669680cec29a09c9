//! taskbroker storage: a segmented, checksummed, group-committed log behind a disk seam.
//!
//! # Module map
//!
//! * [`io`] — the [`Disk`](io::Disk)/[`DiskFile`](io::DiskFile) seam and its backends:
//!   io_uring (`io::uring`), std (`io::std`), simulated (`io::sim`), and `io::probe`, which
//!   picks one ([`io::open_disk`]).
//! * [`log`] — the [`Log`]: frames (`log::frame`), segments (`log::segment`),
//!   sparse indexes (`log::index`), the group-commit writer, readers and recovery.
//! * [`meta`] — two-slot checksummed records (the log's opaque meta record and its anchor).
//! * `testing` — conformance suites shared by the tests (hidden from the docs).
//! * [`StorageError`] — the crate's one error type.
//!
//! # Durability contract
//!
//! * An append is **visible** to readers when [`Log::append`](log::Log::append) returns and
//!   **durable** when its ticket resolves `Ok`; resolution implies every earlier queued
//!   operation (append, meta, truncate, purge, reset) is durable too.
//! * Every frame, segment header, index file and meta slot carries a CRC32C; recovery
//!   truncates a torn tail (a bad frame at the very end of the last segment) and reports any
//!   other damage as [`StorageError::Corrupt`] instead of dropping data.
//! * Directories are fsynced after segment creation and deletion.
//! * A failed write or fdatasync poisons the log ([`StorageError::Poisoned`]); nothing is
//!   retried (fail-stop).

pub mod error;
pub mod io;
pub mod log;
pub mod meta;
#[doc(hidden)]
pub mod testing;

pub use error::StorageError;
pub use log::{Frame, FrameIn, Log, LogConfig, LogStats, Position, Ticket};
