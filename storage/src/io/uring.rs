//! The io_uring backend: tokio-uring on one dedicated OS thread, fed by a bounded channel.
//!
//! The node runs on tokio's multi-thread runtime; tokio-uring needs its own current-thread
//! runtime. So one `storage-uring` thread runs `tokio_uring::start`, receives `Req`s
//! (each carrying its owned buffer and a oneshot for the reply) and spawns one uring task per
//! request, so many reads and writes are in flight at once.
//!
//! *Invariants:* if the uring thread dies, its receiver and every pending reply sender are
//! dropped, so every in-flight and later call returns an I/O error instead of hanging.
//!
//! *Design notes:* reads, writes, `fdatasync` and `fallocate` go through io_uring — the append
//! path. Opening, `len`, `set_len` and directory operations are rare and use std calls on the
//! blocking pool (tokio-uring 0.5 has no `ftruncate`/`fstat` on a `File`), through a duplicate
//! of the descriptor. [`DiskFile::write_all_at_and_sync`] submits the fdatasync right after the
//! write completes on the uring thread: one channel round trip instead of two. Linked
//! write + fdatasync SQEs (`IOSQE_IO_LINK`) are not used: tokio-uring 0.5 has no API for them,
//! and although it accepts a raw `io_uring` SQE (`UnsubmittedOneshot::new`, used below), it
//! flushes its submission queue whenever the queue is full, so two SQEs pushed in a row can
//! reach the kernel in two `io_uring_enter` calls, where the link no longer holds and the
//! fdatasync could complete before the write. Instead, with `TASKBROKER_DIRECT_SYNC=rwf`
//! (see `super::direct`) a direct block write is one SQE with `RWF_DSYNC` (same crate, same
//! ring; the `io-uring` crate only builds the SQE). Spare segments are zeroed with
//! [`DiskFile::write_blocks_at`] through the direct descriptor too (no page cache).
//! Segment files opened with [`Disk::open_direct`] also register an `O_DIRECT` descriptor
//! (see `super::direct`); [`DiskFile::write_blocks_at_and_sync`] writes through it from an
//! [`AlignedBuf`] (which implements tokio-uring's `IoBuf`, the module's only `unsafe`).
//! Logs' writer tasks also run on this thread ([`Disk::spawn`]), so a group commit's
//! request and completion never cross threads; only the appenders' tickets do.
#![allow(unsafe_code)] // `IoBuf` for `AlignedBuf`; see the SAFETY comment.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_uring::buf::BoundedBuf;

use super::direct::{self, DirectMode};
use super::{AlignedBuf, BackendKind, Disk, DiskFile, IoFuture};
use crate::StorageError;

/// Capacity of the request channel to the uring thread: bounds queued (not in-flight) I/O.
pub const URING_QUEUE_OPS_MAX: usize = 1024;
/// Submission queue entries of the uring thread's ring.
pub const URING_RING_ENTRIES: u32 = 256;

type Reply<T> = oneshot::Sender<std::io::Result<T>>;

// SAFETY: `AlignedBuf`'s pointer is to a heap allocation that does not move while the buffer
// is owned (moving the struct moves only the pointer), `len` bytes are initialised and
// `capacity` bytes are allocated; tokio-uring owns the buffer for the whole operation.
unsafe impl tokio_uring::buf::IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
}

/// How a block write is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockSync {
    /// Not by this request (an `O_DSYNC` descriptor makes every write durable, or a later
    /// `fdatasync` will).
    None,
    /// A separate `fdatasync` submission after the write completes.
    Fdatasync,
    /// The write SQE carries `RWF_DSYNC`: durable when its completion arrives.
    Rwf,
}

/// Data an `RWF_DSYNC` write owns while the kernel uses it: the file (so its descriptor
/// stays open) and the buffer (so the memory the SQE points into stays valid). tokio-uring
/// keeps it until the completion arrives, even if the waiting future is dropped.
struct RwfWrite {
    _file: Rc<tokio_uring::fs::File>,
    buf: AlignedBuf,
}

/// Turns the completion of an [`RwfWrite`] into `(bytes written, buffer)`.
struct RwfWritten;

impl tokio_uring::OneshotOutputTransform for RwfWritten {
    type Output = (std::io::Result<usize>, AlignedBuf);
    type StoredData = RwfWrite;

    fn transform_oneshot_output(
        self,
        data: RwfWrite,
        cqe: io_uring::cqueue::Entry,
    ) -> Self::Output {
        let res = cqe.result();
        let r = if res >= 0 {
            Ok(res as usize)
        } else {
            Err(std::io::Error::from_raw_os_error(-res))
        };
        (r, data.buf)
    }
}

/// Writes all of `buf` at `pos` with `RWF_DSYNC` writes (one SQE each; more only after a
/// short write): when it returns `Ok`, the bytes are durable, as after write + `fdatasync`.
///
/// *Why not linked write + fdatasync SQEs:* tokio-uring flushes its submission queue to the
/// kernel whenever it is full, so two SQEs pushed one after the other may land in different
/// `io_uring_enter` calls, and a link does not survive that: the fdatasync could then run
/// before the write. A single `RWF_DSYNC` write has the same effect with no ordering hazard.
async fn write_rwf_dsync(
    file: Rc<tokio_uring::fs::File>,
    buf: AlignedBuf,
    pos: u64,
) -> (std::io::Result<()>, AlignedBuf) {
    use std::os::unix::io::AsRawFd;
    let fd = io_uring::types::Fd(file.as_raw_fd());
    let mut buf = buf;
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let sqe = io_uring::opcode::Write::new(fd, rest.as_ptr(), len)
            .offset(pos + done as u64)
            .rw_flags(libc::RWF_DSYNC)
            .build();
        // The SQE points into `buf`'s heap allocation and names `file`'s descriptor; both are
        // moved into the operation's stable data, which tokio-uring holds until the kernel's
        // completion for this SQE has arrived, so neither is freed or closed while in use.
        let op = tokio_uring::UnsubmittedOneshot::new(
            RwfWrite {
                _file: file.clone(),
                buf,
            },
            RwfWritten,
            sqe,
        );
        let (r, b) = op.submit().await;
        buf = b;
        match r {
            Ok(0) => {
                return (
                    Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "RWF_DSYNC write wrote no bytes",
                    )),
                    buf,
                )
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// A task to run on the uring thread (a log's writer).
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// A request to the uring thread.
enum Req {
    Spawn(Task),
    Register {
        id: u64,
        file: std::fs::File,
    },
    Close {
        id: u64,
    },
    Read {
        id: u64,
        buf: Vec<u8>,
        pos: u64,
        reply: Reply<(usize, Vec<u8>)>,
    },
    Write {
        id: u64,
        buf: Vec<u8>,
        pos: u64,
        sync: bool,
        reply: Reply<Vec<u8>>,
    },
    Sync {
        id: u64,
        reply: Reply<()>,
    },
    WriteBlocks {
        id: u64,
        buf: AlignedBuf,
        pos: u64,
        sync: BlockSync,
        reply: oneshot::Sender<(std::io::Result<()>, AlignedBuf)>,
    },
    Fallocate {
        id: u64,
        len: u64,
        reply: Reply<()>,
    },
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Req::Spawn(_) => "Spawn",
            Req::Register { .. } => "Register",
            Req::Close { .. } => "Close",
            Req::Read { .. } => "Read",
            Req::Write { .. } => "Write",
            Req::Sync { .. } => "Sync",
            Req::WriteBlocks { .. } => "WriteBlocks",
            Req::Fallocate { .. } => "Fallocate",
        })
    }
}

fn dead() -> std::io::Error {
    std::io::Error::other("the io_uring storage thread has stopped")
}

/// The io_uring backend.
#[derive(Debug, Clone)]
pub struct UringDisk {
    tx: mpsc::Sender<Req>,
    next_id: Arc<AtomicU64>,
}

impl UringDisk {
    /// Starts the uring thread. Call [`crate::io::probe::probe_uring`] first: ring setup
    /// failure inside the thread is caught and reported, but probing is cheaper.
    pub fn start() -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel(URING_QUEUE_OPS_MAX);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("storage-uring".into())
            .spawn(move || {
                // `tokio_uring` panics if the ring cannot be set up; a panic ends this thread,
                // drops `ready_tx` and the caller sees the failure.
                tokio_uring::builder()
                    .entries(URING_RING_ENTRIES)
                    .start(async move {
                        let _ = ready_tx.send(());
                        run(rx).await;
                    });
            })
            .map_err(|e| StorageError::UringUnavailable {
                reason: format!("cannot spawn the uring thread: {e}"),
            })?;
        ready_rx
            .recv()
            .map_err(|_| StorageError::UringUnavailable {
                reason: "the uring runtime failed to start (ring setup failed)".into(),
            })?;
        Ok(UringDisk {
            tx,
            next_id: Arc::new(AtomicU64::new(0)),
        })
    }
}

async fn run(mut rx: mpsc::Receiver<Req>) {
    let files: Rc<RefCell<BTreeMap<u64, Rc<tokio_uring::fs::File>>>> = Rc::default();
    let get = |id: u64| {
        files
            .borrow()
            .get(&id)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("uring: unknown file id {id}")))
    };
    while let Some(req) = rx.recv().await {
        match req {
            Req::Spawn(task) => {
                tokio_uring::spawn(task);
            }
            Req::Register { id, file } => {
                files
                    .borrow_mut()
                    .insert(id, Rc::new(tokio_uring::fs::File::from_std(file)));
            }
            Req::Close { id } => {
                files.borrow_mut().remove(&id);
            }
            Req::Read {
                id,
                buf,
                pos,
                reply,
            } => match get(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(f) => {
                    tokio_uring::spawn(async move {
                        let want = buf.len();
                        let mut done = 0;
                        let mut buf = buf;
                        let res = loop {
                            if done == want {
                                break Ok(());
                            }
                            let (r, slice) =
                                f.read_at(buf.slice(done..want), pos + done as u64).await;
                            buf = slice.into_inner();
                            match r {
                                Ok(0) => break Ok(()),
                                Ok(n) => done += n,
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(e) => break Err(e),
                            }
                        };
                        let _ = reply.send(res.map(|()| (done, buf)));
                    });
                }
            },
            Req::Write {
                id,
                buf,
                pos,
                sync,
                reply,
            } => match get(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(f) => {
                    tokio_uring::spawn(async move {
                        let (r, buf) = f.write_all_at(buf, pos).await;
                        let r = match r {
                            Ok(()) if sync => f.sync_data().await,
                            other => other,
                        };
                        let _ = reply.send(r.map(|()| buf));
                    });
                }
            },
            Req::WriteBlocks {
                id,
                buf,
                pos,
                sync,
                reply,
            } => match get(id) {
                Err(e) => {
                    let _ = reply.send((Err(e), buf));
                }
                Ok(f) => {
                    tokio_uring::spawn(async move {
                        let (r, buf) = if sync == BlockSync::Rwf {
                            write_rwf_dsync(f, buf, pos).await
                        } else {
                            let (r, buf) = f.write_all_at(buf, pos).await;
                            let r = match r {
                                Ok(()) if sync == BlockSync::Fdatasync => f.sync_data().await,
                                other => other,
                            };
                            (r, buf)
                        };
                        let _ = reply.send((r, buf));
                    });
                }
            },
            Req::Sync { id, reply } => match get(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(f) => {
                    tokio_uring::spawn(async move {
                        let _ = reply.send(f.sync_data().await);
                    });
                }
            },
            Req::Fallocate { id, len, reply } => match get(id) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(f) => {
                    tokio_uring::spawn(async move {
                        let r = match f.fallocate(0, len, 0).await {
                            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                            other => other,
                        };
                        let _ = reply.send(r);
                    });
                }
            },
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("blocking I/O task failed: {e}")))?
}

impl Disk for UringDisk {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let p = path.clone();
            let (file, dup) = blocking(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&p)?;
                let dup = f.try_clone()?;
                Ok((f, dup))
            })
            .await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.tx
                .send(Req::Register { id, file })
                .await
                .map_err(|_| dead())?;
            Ok(Arc::new(UringFile {
                id,
                direct: None,
                direct_ok: AtomicBool::new(false),
                tx: self.tx.clone(),
                std: Arc::new(dup),
                path,
            }) as Arc<dyn DiskFile>)
        })
    }

    fn open_direct(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let p = path.clone();
            let (file, dup, direct) = blocking(move || {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(&p)?;
                let dup = f.try_clone()?;
                Ok((f, dup, direct::open_direct_fd(&p)?))
            })
            .await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            // Build the handle first: if a send fails, its `Drop` closes what was registered.
            let mut handle = UringFile {
                id,
                direct: None,
                direct_ok: AtomicBool::new(false),
                tx: self.tx.clone(),
                std: Arc::new(dup),
                path,
            };
            self.tx
                .send(Req::Register { id, file })
                .await
                .map_err(|_| dead())?;
            if let Some(d) = direct {
                let did = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.tx
                    .send(Req::Register { id: did, file: d })
                    .await
                    .map_err(|_| dead())?;
                handle.direct = Some(did);
                handle.direct_ok = AtomicBool::new(true);
            }
            Ok(Arc::new(handle) as Arc<dyn DiskFile>)
        })
    }

    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::create_dir_all(path)))
    }

    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || super::std::list_dir_sync(&path)))
    }

    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::remove_file(path)))
    }

    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(blocking(move || std::fs::File::open(path)?.sync_all()))
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        Box::pin(blocking(move || std::fs::rename(from, to)))
    }

    fn spawn(&self, task: Task) {
        // The writer runs next to the ring: its write + fdatasync requests and their
        // completions stay on this thread. If the queue is full or the thread is gone, run
        // it on the caller's runtime instead (its I/O then fails or crosses threads).
        if let Err(
            mpsc::error::TrySendError::Full(Req::Spawn(task))
            | mpsc::error::TrySendError::Closed(Req::Spawn(task)),
        ) = self.tx.try_send(Req::Spawn(task))
        {
            tokio::spawn(task);
        }
    }
}

/// A file of the io_uring backend.
#[derive(Debug)]
pub struct UringFile {
    id: u64,
    /// Id of the registered `O_DIRECT` write descriptor ([`Disk::open_direct`]), if any.
    direct: Option<u64>,
    /// False once a direct write was refused (`EINVAL`): block writes go buffered.
    direct_ok: AtomicBool,
    tx: mpsc::Sender<Req>,
    std: Arc<std::fs::File>,
    path: PathBuf,
}

impl UringFile {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Req) -> std::io::Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| dead())?;
        rx.await.map_err(|_| dead())?
    }

    /// The path this file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn write_blocks(
        &self,
        id: u64,
        buf: AlignedBuf,
        pos: u64,
        sync: BlockSync,
    ) -> std::io::Result<(std::io::Result<()>, AlignedBuf)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Req::WriteBlocks {
                id,
                buf,
                pos,
                sync,
                reply,
            })
            .await
            .map_err(|_| dead())?;
        rx.await.map_err(|_| dead())
    }
}

impl Drop for UringFile {
    fn drop(&mut self) {
        // Best effort: if the queue is full or the thread is gone the descriptor leaks until
        // the uring thread exits, which is harmless.
        let _ = self.tx.try_send(Req::Close { id: self.id });
        if let Some(id) = self.direct {
            let _ = self.tx.try_send(Req::Close { id });
        }
    }
}

impl DiskFile for UringFile {
    fn read_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)> {
        let id = self.id;
        Box::pin(self.call(move |reply| Req::Read {
            id,
            buf,
            pos,
            reply,
        }))
    }

    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        let id = self.id;
        Box::pin(self.call(move |reply| Req::Write {
            id,
            buf,
            pos,
            sync: false,
            reply,
        }))
    }

    fn write_all_at_and_sync(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        let id = self.id;
        Box::pin(self.call(move |reply| Req::Write {
            id,
            buf,
            pos,
            sync: true,
            reply,
        }))
    }

    fn write_blocks_at_and_sync(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        Box::pin(async move {
            let mut buf = buf;
            if let Some(did) = self.direct.filter(|_| self.is_direct()) {
                let sync = if direct::mode() == DirectMode::Dsync {
                    BlockSync::None
                } else if direct::use_rwf_dsync() {
                    BlockSync::Rwf
                } else {
                    BlockSync::Fdatasync
                };
                let (mut r, mut b) = self.write_blocks(did, buf, pos, sync).await?;
                if sync == BlockSync::Rwf && r.as_ref().is_err_and(direct::rwf_refused) {
                    // Nothing was written: retry as write + fdatasync (from now on, always).
                    (r, b) = self.write_blocks(did, b, pos, BlockSync::Fdatasync).await?;
                }
                match r {
                    Ok(()) => return Ok(b),
                    Err(e) if direct::is_einval(&e) => {
                        self.direct_ok.store(false, Ordering::Relaxed);
                        direct::warn_once(&self.path, &e);
                        buf = b;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (r, b) = self
                .write_blocks(self.id, buf, pos, BlockSync::Fdatasync)
                .await?;
            r.map(|()| b)
        })
    }

    fn write_blocks_at(&self, buf: AlignedBuf, pos: u64) -> IoFuture<'_, AlignedBuf> {
        Box::pin(async move {
            let mut buf = buf;
            if let Some(did) = self.direct.filter(|_| self.is_direct()) {
                let (r, b) = self.write_blocks(did, buf, pos, BlockSync::None).await?;
                match r {
                    Ok(()) => return Ok(b),
                    Err(e) if direct::is_einval(&e) => {
                        self.direct_ok.store(false, Ordering::Relaxed);
                        direct::warn_once(&self.path, &e);
                        buf = b;
                    }
                    Err(e) => return Err(e),
                }
            }
            let (r, b) = self
                .write_blocks(self.id, buf, pos, BlockSync::None)
                .await?;
            r.map(|()| b)
        })
    }

    fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_ok.load(Ordering::Relaxed)
    }

    fn sync_data(&self) -> IoFuture<'_, ()> {
        let id = self.id;
        Box::pin(self.call(move |reply| Req::Sync { id, reply }))
    }

    fn len(&self) -> IoFuture<'_, u64> {
        let f = self.std.clone();
        Box::pin(blocking(move || Ok(f.metadata()?.len())))
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        let f = self.std.clone();
        Box::pin(blocking(move || f.set_len(len)))
    }

    fn allocate(&self, len: u64) -> IoFuture<'_, ()> {
        let id = self.id;
        Box::pin(self.call(move |reply| Req::Fallocate { id, len, reply }))
    }
}
