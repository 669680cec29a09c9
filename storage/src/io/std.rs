//! The portable backend: positional `pread`/`pwrite` + `fdatasync` on tokio's blocking pool.
//!
//! *Design notes:* each call is one `spawn_blocking`; the group-commit writer batches appends so
//! the per-call overhead is paid once per batch, not once per frame.
#![allow(unsafe_code)] // `fallocate` and `pwritev2` via libc; see the SAFETY comments.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::direct::{self, DirectMode};
use super::{AlignedBuf, BackendKind, Disk, DiskFile, IoFuture};

/// The std backend. Cheap to construct; holds no state.
#[derive(Debug, Default, Clone)]
pub struct StdDisk;

impl StdDisk {
    /// Creates the backend.
    pub fn new() -> Self {
        StdDisk
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("blocking I/O task failed: {e}")))?
}

impl Disk for StdDisk {
    fn kind(&self) -> BackendKind {
        BackendKind::Std
    }

    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let p = path.clone();
            let file = blocking(move || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&p)
            })
            .await?;
            Ok(Arc::new(StdFile {
                file: Arc::new(file),
                direct: None,
                direct_ok: Arc::new(AtomicBool::new(false)),
                path,
            }) as Arc<dyn DiskFile>)
        })
    }

    fn open_direct(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let p = path.clone();
            let (file, direct) = blocking(move || {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&p)?;
                Ok((file, direct::open_direct_fd(&p)?))
            })
            .await?;
            Ok(Arc::new(StdFile {
                file: Arc::new(file),
                direct_ok: Arc::new(AtomicBool::new(direct.is_some())),
                direct: direct.map(Arc::new),
                path,
            }) as Arc<dyn DiskFile>)
        })
    }

    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::create_dir_all(path)))
    }

    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || list_dir_sync(&path)))
    }

    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::remove_file(path)))
    }

    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || File::open(path)?.sync_all()))
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        Box::pin(blocking(move || std::fs::rename(from, to)))
    }
}

pub(crate) fn list_dir_sync(path: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// `fallocate(fd, 0, 0, len)`: extends the file with zeros and reserves the blocks.
/// `EOPNOTSUPP` (e.g. tmpfs on old kernels) is treated as success: preallocation is an
/// optimisation.
pub(crate) fn fallocate_sync(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "length too large"))?;
    // SAFETY: `fallocate` only reads its integer arguments; the fd is valid for the lifetime
    // of `file`, which we borrow for the duration of the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(err),
    }
}

/// A file of the std backend.
#[derive(Debug)]
pub struct StdFile {
    file: Arc<File>,
    /// The `O_DIRECT` write descriptor ([`Disk::open_direct`]), if any.
    direct: Option<Arc<File>>,
    /// False once a direct write was refused (`EINVAL`): block writes go buffered.
    direct_ok: Arc<AtomicBool>,
    path: PathBuf,
}

impl DiskFile for StdFile {
    fn read_at(&self, mut buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)> {
        let file = self.file.clone();
        Box::pin(blocking(move || {
            let mut done = 0;
            while done < buf.len() {
                match file.read_at(&mut buf[done..], pos + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((done, buf))
        }))
    }

    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        let file = self.file.clone();
        Box::pin(blocking(move || {
            file.write_all_at(&buf, pos)?;
            Ok(buf)
        }))
    }

    fn sync_data(&self) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking(move || file.sync_data()))
    }

    fn len(&self) -> IoFuture<'_, u64> {
        let file = self.file.clone();
        Box::pin(blocking(move || Ok(file.metadata()?.len())))
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking(move || file.set_len(len)))
    }

    fn allocate(&self, len: u64) -> IoFuture<'_, ()> {
        let file = self.file.clone();
        Box::pin(blocking(move || fallocate_sync(&file, len)))
    }

    fn write_all_at_and_sync(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        let file = self.file.clone();
        Box::pin(blocking(move || {
            file.write_all_at(&buf, pos)?;
            file.sync_data()?;
            Ok(buf)
        }))
    }

    fn write_blocks_at_and_sync(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        let file = self.file.clone();
        let direct = self.direct.clone().filter(|_| self.is_direct());
        let direct_ok = self.direct_ok.clone();
        let path = self.path.clone();
        Box::pin(blocking(move || {
            if let Some(d) = direct {
                let mut r = Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                let rwf = direct::use_rwf_dsync();
                if rwf {
                    r = write_all_at_rwf_dsync(&d, &buf, pos);
                }
                if !rwf || r.as_ref().is_err_and(direct::rwf_refused) {
                    r = d.write_all_at(&buf, pos).and_then(|()| {
                        if direct::mode() == DirectMode::Dsync {
                            Ok(())
                        } else {
                            d.sync_data()
                        }
                    });
                }
                match r {
                    Ok(()) => return Ok(buf),
                    Err(e) if direct::is_einval(&e) => {
                        direct_ok.store(false, Ordering::Relaxed);
                        direct::warn_once(&path, &e);
                    }
                    Err(e) => return Err(e),
                }
            }
            file.write_all_at(&buf, pos)?;
            file.sync_data()?;
            Ok(buf)
        }))
    }

    fn write_blocks_at(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        let file = self.file.clone();
        let direct = self.direct.clone().filter(|_| self.is_direct());
        let direct_ok = self.direct_ok.clone();
        let path = self.path.clone();
        Box::pin(blocking(move || {
            if let Some(d) = direct {
                match d.write_all_at(&buf, pos) {
                    Ok(()) => return Ok(buf),
                    Err(e) if direct::is_einval(&e) => {
                        direct_ok.store(false, Ordering::Relaxed);
                        direct::warn_once(&path, &e);
                    }
                    Err(e) => return Err(e),
                }
            }
            file.write_all_at(&buf, pos)?;
            Ok(buf)
        }))
    }

    fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_ok.load(Ordering::Relaxed)
    }
}

/// Writes all of `buf` at `pos` with `pwritev2(RWF_DSYNC)`: durable on return, like write +
/// `fdatasync`, in one system call (more only after a short write).
fn write_all_at_rwf_dsync(file: &File, buf: &[u8], pos: u64) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let off = libc::off_t::try_from(pos + done as u64)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: `iov` describes `rest`, a live, initialised slice that outlives the call;
        // the kernel only reads from it. The descriptor is open (borrowed from `file`).
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, off, libc::RWF_DSYNC) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl StdFile {
    /// The path this file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
