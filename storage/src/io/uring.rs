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
//! of the descriptor. tokio-uring 0.5 does not expose linked SQEs, so
//! [`DiskFile::write_all_at_and_sync`] submits the fdatasync right after the write completes
//! on the uring thread: one channel round trip instead of two, without `IOSQE_IO_LINK`.
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
        sync: bool,
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
                        let (r, buf) = f.write_all_at(buf, pos).await;
                        let r = match r {
                            Ok(()) if sync => f.sync_data().await,
                            other => other,
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
        sync: bool,
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
                let sync = direct::mode() != DirectMode::Dsync;
                let (r, b) = self.write_blocks(did, buf, pos, sync).await?;
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
            let (r, b) = self.write_blocks(self.id, buf, pos, true).await?;
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
