//! Choosing a backend: probe io_uring, fall back to std with exactly one warning.
//!
//! *Design notes:* `tokio_uring::start` panics when ring setup fails (e.g. `EPERM` under
//! Docker's default seccomp profile, `ENOSYS` on old kernels, or
//! `kernel.io_uring_disabled=2`), so we first try `io_uring::IoUring::new(8)` — a plain
//! `io_uring_setup` returning an error — and only then start the uring thread (whose panic we
//! also catch, see [`super::uring::UringDisk::start`]).

use std::sync::Arc;

use super::std::StdDisk;
use super::{BackendChoice, Disk};
use crate::StorageError;

/// Checks whether this process may set up an io_uring; returns why not.
pub fn probe_uring() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        match io_uring::IoUring::new(8) {
            Ok(_ring) => Ok(()),
            Err(e) => Err(format!("io_uring_setup failed: {e}")),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("io_uring exists only on Linux".into())
    }
}

#[cfg(target_os = "linux")]
fn start_uring() -> Result<Arc<dyn Disk>, StorageError> {
    probe_uring().map_err(|reason| StorageError::UringUnavailable { reason })?;
    Ok(Arc::new(super::uring::UringDisk::start()?))
}

#[cfg(not(target_os = "linux"))]
fn start_uring() -> Result<Arc<dyn Disk>, StorageError> {
    Err(StorageError::UringUnavailable {
        reason: "io_uring exists only on Linux".into(),
    })
}

/// Opens the disk backend for `choice`.
///
/// `Auto` tries io_uring and falls back to std, logging one `warn!` line with the reason;
/// `Uring` returns [`StorageError::UringUnavailable`] instead; `Std` always succeeds.
///
/// ```
/// use taskbroker_storage::io::{open_disk, BackendChoice, BackendKind};
/// let disk = open_disk(BackendChoice::Std).unwrap();
/// assert_eq!(disk.kind(), BackendKind::Std);
/// ```
pub fn open_disk(choice: BackendChoice) -> Result<Arc<dyn Disk>, StorageError> {
    match choice {
        BackendChoice::Std => Ok(Arc::new(StdDisk::new())),
        BackendChoice::Uring => start_uring(),
        BackendChoice::Auto => match start_uring() {
            Ok(disk) => Ok(disk),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "io_uring unavailable, using the std disk backend (positional I/O on the \
                     blocking pool); allow io_uring (e.g. seccomp profile) for the faster path"
                );
                Ok(Arc::new(StdDisk::new()))
            }
        },
    }
}
