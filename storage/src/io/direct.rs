//! Opening the `O_DIRECT` write descriptor of a log segment, shared by the std and io_uring
//! backends.
//!
//! *Why:* small buffered writes into ext4's large page-cache folios dirty (and make
//! `fdatasync` write back) whole folios of up to several MiB, so each group commit rewrote
//! megabytes (measured: 18x the payload in `write_bytes`, ~22x at the device). Direct writes
//! of whole 4 KiB blocks bypass the page cache: the device sees exactly the blocks written.
//!
//! *Knobs* (environment, read once per process; for measurement and for filesystems where
//! direct I/O misbehaves):
//! * `TASKBROKER_DIRECT_IO=off` — never open `O_DIRECT` descriptors (buffered writes, as
//!   before);
//! * `TASKBROKER_DIRECT_SYNC` — how a direct group write is made durable:
//!   * `fdatasync` (the default): `O_DIRECT` write, then `fdatasync` (on io_uring: a second
//!     submission once the write completed; the fdatasync runs in an io_uring worker thread);
//!   * `rwf`: each direct write carries `RWF_DSYNC` (io_uring: the SQE's `rw_flags`; std:
//!     `pwritev2`), so it is durable when it completes — one submission and one completion
//!     instead of two (`FUA` on devices that support it, else the kernel flushes after the
//!     write, from its dio-completion workqueue). Where the kernel refuses the flag
//!     (`EOPNOTSUPP`/`ENOSYS`), the backend falls back to `fdatasync` for the rest of the
//!     process. Not the default: on the shared 2-vCPU benchmark VM (no FUA, CPUs saturated
//!     by other builds) it measured ~10x slower per append than `fdatasync` (median ~3.5 ms vs
//!     ~0.35 ms, three back-to-back pairs; see `storage/BENCHMARKS.md`): the completion then
//!     waits for a kernel worker to get a CPU, while io_uring's own worker does not;
//!   * `dsync`: open the direct descriptor with `O_DSYNC`, so every write through it is durable
//!     (same semantics and cost as `rwf`, set per descriptor instead of per write).
//!
//! *Fallback:* where `open(O_DIRECT)` fails with `EINVAL` (e.g. tmpfs on older kernels) the
//! file has no direct descriptor and block writes take the buffered path; one warning per
//! process says so. A direct write failing with `EINVAL` (a device with logical blocks larger
//! than 4 KiB) falls back the same way for that file (nothing was written, so the buffered
//! retry is safe).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// How a direct block write is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirectMode {
    /// No direct descriptors (buffered writes + `fdatasync`).
    Off,
    /// `O_DIRECT` write, then `fdatasync`.
    Fdatasync,
    /// `O_DIRECT` write with `RWF_DSYNC`: the write itself is durable.
    Rwf,
    /// `O_DIRECT | O_DSYNC`: the write itself is durable.
    Dsync,
}

pub(crate) fn mode() -> DirectMode {
    static MODE: OnceLock<DirectMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let off = std::env::var("TASKBROKER_DIRECT_IO").is_ok_and(|v| v == "off" || v == "0");
        let sync = std::env::var("TASKBROKER_DIRECT_SYNC").unwrap_or_default();
        match (off, sync.as_str()) {
            (true, _) => DirectMode::Off,
            (false, "dsync") => DirectMode::Dsync,
            (false, "rwf") => DirectMode::Rwf,
            (false, "fdatasync" | "") => DirectMode::Fdatasync,
            (false, other) => {
                tracing::warn!(
                    value = other,
                    "unknown TASKBROKER_DIRECT_SYNC (expected fdatasync, rwf or dsync); using fdatasync"
                );
                DirectMode::Fdatasync
            }
        }
    })
}

static WARNED: AtomicBool = AtomicBool::new(false);

/// Warns once per process that direct I/O is not used, with the reason.
pub(crate) fn warn_once(path: &Path, why: &dyn std::fmt::Display) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            path = %path.display(),
            reason = %why,
            "O_DIRECT is not supported here; log appends use buffered writes + fdatasync \
             (slower on ext4/xfs with large folios: each group commit may rewrite whole folios)"
        );
    }
}

/// Opens `path` write-only with `O_DIRECT` (and `O_DSYNC` in that mode); `None` if direct
/// I/O is off or unsupported by the filesystem (`EINVAL`, warned once).
pub(crate) fn open_direct_fd(path: &Path) -> std::io::Result<Option<File>> {
    let mode = mode();
    if mode == DirectMode::Off {
        return Ok(None);
    }
    let mut flags = libc::O_DIRECT;
    if mode == DirectMode::Dsync {
        flags |= libc::O_DSYNC;
    }
    match OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            warn_once(path, &e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

static RWF_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// True if direct writes should carry `RWF_DSYNC` (the mode asks for it and the kernel has
/// not refused it in this process).
pub(crate) fn use_rwf_dsync() -> bool {
    mode() == DirectMode::Rwf && !RWF_UNSUPPORTED.load(Ordering::Relaxed)
}

/// True if `e` says the kernel does not support `RWF_DSYNC` on this write (nothing was
/// written); records it so later writes use `fdatasync`, with one warning.
pub(crate) fn rwf_refused(e: &std::io::Error) -> bool {
    let refused = matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    );
    if refused && !RWF_UNSUPPORTED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "RWF_DSYNC writes are not supported here; log appends use write + fdatasync");
    }
    refused
}

/// True if `e` says the direct write was refused for its alignment (nothing was written).
pub(crate) fn is_einval(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}
