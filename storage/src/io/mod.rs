//! The disk seam: every byte the log reads or writes goes through [`Disk`] and [`DiskFile`].
//!
//! Three backends implement it: [`uring`] (io_uring on a dedicated thread, the hot path),
//! `std` (positional I/O on tokio's blocking pool, the portable fallback) and
//! [`sim`] (in memory, with power-loss semantics, for deterministic simulation).
//! [`open_disk`] probes and chooses.
//!
//! *Design notes:* buffers are owned (`Vec<u8>` in, `Vec<u8>` back) so an io_uring submission
//! can own its buffer while the kernel uses it; the caller gets the allocation back for reuse.
//! Futures are boxed (`IoFuture`) to keep the traits object-safe; one allocation per I/O is
//! noise next to a syscall.

use ::std::fmt;
use ::std::future::Future;
use ::std::path::Path;
use ::std::pin::Pin;
use ::std::str::FromStr;
use ::std::sync::Arc;

pub mod aligned;
pub(crate) mod direct;
pub mod probe;
pub mod sim;
pub mod std;
#[cfg(target_os = "linux")]
pub mod uring;

pub use aligned::{AlignedBuf, BLOCK_BYTES};
pub use probe::open_disk;
pub use sim::SimDisk;

/// A boxed, `Send` I/O future.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = ::std::io::Result<T>> + Send + 'a>>;

/// Which backend a [`Disk`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// io_uring on a dedicated thread.
    Uring,
    /// std positional I/O on the blocking pool.
    Std,
    /// The in-memory simulated disk.
    Sim,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "uring",
            BackendKind::Std => "std",
            BackendKind::Sim => "sim",
        })
    }
}

/// What the operator asked for (e.g. a `--disk-backend` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// io_uring if the probe succeeds, else std with one warning.
    #[default]
    Auto,
    /// io_uring or a typed error.
    Uring,
    /// Always std.
    Std,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Std => "std",
        })
    }
}

/// Error returned when parsing an unknown [`BackendChoice`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown disk backend {0:?}; expected \"auto\", \"uring\" or \"std\"")]
pub struct ParseBackendChoiceError(pub String);

impl FromStr for BackendChoice {
    type Err = ParseBackendChoiceError;

    /// ```
    /// use taskbroker_storage::io::BackendChoice;
    /// assert_eq!("uring".parse::<BackendChoice>().unwrap(), BackendChoice::Uring);
    /// assert!("nvme".parse::<BackendChoice>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" => Ok(BackendChoice::Uring),
            "std" => Ok(BackendChoice::Std),
            other => Err(ParseBackendChoiceError(other.to_owned())),
        }
    }
}

/// A filesystem: opens files and manages directory entries.
///
/// *Durability contract:* a created or removed directory entry is durable only after
/// [`Disk::sync_dir`] of its parent; file contents only after [`DiskFile::sync_data`].
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Opens `path` for reading and writing, creating it if `create` (never truncates).
    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()>;
    /// Names of the regular files in `path`, sorted.
    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>>;
    /// Removes a file (durable after `sync_dir` of its parent).
    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()>;
    /// Makes creations and removals in directory `path` durable.
    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()>;
    /// Atomically renames `from` to `to` (same directory), replacing `to` if it exists.
    /// Open handles stay valid. Durable after `sync_dir` of the parent. Backends that cannot
    /// rename return `ErrorKind::Unsupported` (the default), and the log then creates new
    /// segments in place instead of renaming a pre-zeroed spare.
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let _ = (from, to);
        Box::pin(async {
            Err(::std::io::Error::new(
                ::std::io::ErrorKind::Unsupported,
                "rename is not supported by this disk backend",
            ))
        })
    }
    /// Opens a log segment file: like [`Disk::open`], and the handle's
    /// [`DiskFile::write_blocks_at_and_sync`] writes with `O_DIRECT` where the backend and the
    /// filesystem support it (the std and io_uring backends; reads and other writes stay
    /// buffered). The default is [`Disk::open`] (block writes then take the buffered path).
    fn open_direct(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        self.open(path, create)
    }
    /// A random value (segment salts). Real backends use the OS-seeded thread RNG; the
    /// simulated disk draws from its own seeded RNG, so simulations stay deterministic.
    fn random_u64(&self) -> u64 {
        rand::random()
    }
    /// Runs a log's writer task. The default spawns it on the current tokio runtime; the
    /// io_uring backend runs it on its own thread, next to the ring, so a group's
    /// write + fdatasync completes without a thread hop back to the writer.
    fn spawn(&self, task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>) {
        tokio::spawn(task);
    }
}

/// An open file with positional, owned-buffer I/O.
#[allow(clippy::len_without_is_empty)] // `len` is an async file length, not a container size.
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns the count (short only at end of file).
    fn read_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)>;
    /// Writes all of `buf` at `pos`; returns the buffer for reuse. Not durable until synced.
    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>>;
    /// `fdatasync`: makes all earlier writes and length changes durable.
    fn sync_data(&self) -> IoFuture<'_, ()>;
    /// Current length in bytes.
    fn len(&self) -> IoFuture<'_, u64>;
    /// Sets the length (truncates or zero-extends). Durable after `sync_data`.
    fn set_len(&self, len: u64) -> IoFuture<'_, ()>;
    /// Preallocates `len` bytes (may extend the file with zeros). May be a no-op.
    fn allocate(&self, len: u64) -> IoFuture<'_, ()>;
    /// Writes `buf` at `pos` then `fdatasync`s; backends may do this in one round trip.
    fn write_all_at_and_sync(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let buf = self.write_all_at(buf, pos).await?;
            self.sync_data().await?;
            Ok(buf)
        })
    }
    /// Writes whole blocks durably: `buf.len()` and `pos` are multiples of [`BLOCK_BYTES`].
    /// When it returns `Ok`, these bytes (and the metadata needed to read them) are durable;
    /// earlier writes through [`DiskFile::write_all_at`] are not necessarily (sync them
    /// first). Backends with a direct descriptor ([`Disk::open_direct`]) write with
    /// `O_DIRECT`, bypassing the page cache; the default copies into a `Vec` and calls
    /// [`DiskFile::write_all_at_and_sync`]. Returns the buffer for reuse.
    fn write_blocks_at_and_sync(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        Box::pin(async move {
            debug_assert!(
                buf.len().is_multiple_of(BLOCK_BYTES) && pos.is_multiple_of(BLOCK_BYTES as u64)
            );
            self.write_all_at_and_sync(buf.to_vec(), pos).await?;
            Ok(buf)
        })
    }
    /// Writes whole blocks like [`DiskFile::write_blocks_at_and_sync`] (same alignment rules,
    /// `O_DIRECT` where the handle has a direct descriptor), but not durably: durable after a
    /// later [`DiskFile::sync_data`]. For bulk writes that need no page cache (zeroing a spare
    /// segment). The default copies into a `Vec` and calls [`DiskFile::write_all_at`].
    /// Returns the buffer for reuse.
    fn write_blocks_at(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        Box::pin(async move {
            debug_assert!(
                buf.len().is_multiple_of(BLOCK_BYTES) && pos.is_multiple_of(BLOCK_BYTES as u64)
            );
            self.write_all_at(buf.to_vec(), pos).await?;
            Ok(buf)
        })
    }
    /// True if [`DiskFile::write_blocks_at_and_sync`] currently writes with `O_DIRECT`.
    fn is_direct(&self) -> bool {
        false
    }
}

/// Reads exactly `len` bytes at `pos`, or fails with `UnexpectedEof`.
pub async fn read_exact_at(
    file: &dyn DiskFile,
    len: usize,
    pos: u64,
) -> ::std::io::Result<Vec<u8>> {
    let (n, mut buf) = file.read_at(vec![0u8; len], pos).await?;
    if n < len {
        buf.truncate(n);
        return Err(::std::io::Error::new(
            ::std::io::ErrorKind::UnexpectedEof,
            format!("short read: wanted {len} bytes at {pos}, got {n}"),
        ));
    }
    Ok(buf)
}
