//! The simulated disk: in memory, deterministic, with power-loss semantics.
//!
//! Each file has *durable* content plus a list of unsynced operations (writes, length
//! changes). [`DiskFile::sync_data`] makes them durable. Directory entries (creations,
//! removals, renames) become durable only after [`Disk::sync_dir`] of their directory.
//! [`SimDisk::crash`] simulates power loss: every file keeps a seeded-random prefix of its
//! unsynced operations (the last kept write possibly torn at a random byte; optionally with
//! the whole block it was torn in garbled, [`SimDisk::set_torn_write_garbles_block`]), non-durable
//! creations vanish and non-durable removals come back. Handles opened before a crash fail
//! with an I/O error afterwards, like the file descriptors of a dead process.
//!
//! *Invariants (determinism):* all state sits behind one mutex in `BTreeMap`s; randomness
//! comes only from a `ChaCha8Rng` seeded by [`SimDisk::new`]; no threads, no wall clock, no
//! real files. Every call completes without another thread (optional latency uses
//! `tokio::time::sleep`, which a simulator controls).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{BackendKind, Disk, DiskFile, IoFuture};

#[derive(Debug, Clone)]
enum PendingOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(content: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { pos, data } => {
            let pos = *pos as usize;
            let end = pos + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[pos..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => content.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct Node {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
}

#[derive(Debug)]
struct State {
    rng: ChaCha8Rng,
    /// For [`Disk::random_u64`]; separate from `rng` so crash outcomes do not depend on how
    /// many values the log drew.
    salt_rng: ChaCha8Rng,
    /// Incremented by every crash; handles from older epochs are dead.
    epoch: u64,
    next_node: u64,
    nodes: BTreeMap<u64, Node>,
    /// The namespace as the running process sees it.
    current: BTreeMap<PathBuf, u64>,
    /// The namespace that survives a crash.
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    fail_sync: bool,
    latency: Duration,
    syncs: u64,
    /// 0, or the device block size: a torn write garbles the whole block it was cut in.
    garble_block: u64,
}

/// The simulated disk. `Clone` shares the same state, so it outlives a simulated node crash.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::path::Path;
/// use taskbroker_storage::io::{Disk, SimDisk};
/// let disk = SimDisk::new(7);
/// disk.create_dir_all(Path::new("/d")).await.unwrap();
/// let f = disk.open(Path::new("/d/a"), true).await.unwrap();
/// f.write_all_at(b"hello".to_vec(), 0).await.unwrap();
/// disk.sync_dir(Path::new("/d")).await.unwrap();
/// f.sync_data().await.unwrap();
/// disk.crash();
/// let f = disk.open(Path::new("/d/a"), false).await.unwrap();
/// assert_eq!(f.len().await.unwrap(), 5);
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// A new empty disk whose crash behaviour is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimDisk {
            state: Arc::new(Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                salt_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5a17_5a17_5a17_5a17),
                epoch: 0,
                next_node: 0,
                nodes: BTreeMap::new(),
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
                dirs,
                fail_sync: false,
                latency: Duration::ZERO,
                syncs: 0,
                garble_block: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to a test that is already failing; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates power loss (see the module docs). Open handles become unusable.
    pub fn crash(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        st.epoch += 1;
        for node in st.nodes.values_mut() {
            let pending = std::mem::take(&mut node.pending);
            if !pending.is_empty() {
                let keep = st.rng.random_range(0..=pending.len());
                for (i, op) in pending.into_iter().take(keep).enumerate() {
                    let torn = i + 1 == keep && st.rng.random_bool(0.5);
                    match op {
                        PendingOp::Write { pos, mut data } if torn && !data.is_empty() => {
                            let cut = st.rng.random_range(0..data.len());
                            data.truncate(cut);
                            apply(&mut node.durable, &PendingOp::Write { pos, data });
                            if st.garble_block > 0 {
                                // The block being written when power failed holds neither its
                                // old nor its new bytes (e.g. a half-programmed flash page).
                                let b = st.garble_block;
                                let from = (pos + cut as u64) / b * b;
                                let mut junk = vec![0u8; b as usize];
                                st.rng.fill(&mut junk[..]);
                                apply(
                                    &mut node.durable,
                                    &PendingOp::Write {
                                        pos: from,
                                        data: junk,
                                    },
                                );
                            }
                        }
                        op => apply(&mut node.durable, &op),
                    }
                }
            }
            node.current = node.durable.clone();
        }
        st.current = st.durable.clone();
        let live: BTreeSet<u64> = st.durable.values().copied().collect();
        st.nodes.retain(|id, _| live.contains(id));
    }

    /// Models a device whose torn writes destroy a whole block: on a crash, the block of
    /// `block` bytes (file-relative, e.g. 4096) in which a torn write was cut is filled with
    /// random bytes instead of keeping a clean prefix, whatever it held before (acknowledged
    /// bytes too, if the write rewrote a block holding them). `0` (the default) turns it off.
    pub fn set_torn_write_garbles_block(&self, block: u64) {
        self.lock().garble_block = block;
    }

    /// Makes every later `sync_data`/`sync_dir` fail (fsync error injection) while `true`.
    pub fn set_fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// Adds `latency` (tokio time) to every operation: slow-disk faults.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Number of successful `sync_data` calls so far (for group-commit assertions).
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// The current (not necessarily durable) content of a file, for tests that corrupt data.
    pub fn file_content(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let id = st.current.get(path)?;
        st.nodes.get(id).map(|n| n.current.clone())
    }

    /// Overwrites a file's content durably (test helper for corruption scenarios).
    pub fn set_file_content(&self, path: &Path, content: Vec<u8>) -> bool {
        let mut st = self.lock();
        let Some(id) = st.current.get(path).copied() else {
            return false;
        };
        let Some(node) = st.nodes.get_mut(&id) else {
            return false;
        };
        node.durable = content.clone();
        node.current = content;
        node.pending.clear();
        true
    }

    async fn delay(&self) {
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

fn not_found(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("sim: no such file or directory: {}", path.display()),
    )
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl Disk for SimDisk {
    fn kind(&self) -> BackendKind {
        BackendKind::Sim
    }

    fn open(&self, path: &Path, create: bool) -> IoFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            self.delay().await;
            let mut st = self.lock();
            let id = match st.current.get(&path) {
                Some(id) => *id,
                None if create => {
                    if !st.dirs.contains(&parent(&path)) {
                        return Err(not_found(&parent(&path)));
                    }
                    let id = st.next_node;
                    st.next_node += 1;
                    st.nodes.insert(id, Node::default());
                    st.current.insert(path.clone(), id);
                    id
                }
                None => return Err(not_found(&path)),
            };
            Ok(Arc::new(SimFile {
                disk: self.clone(),
                id,
                epoch: st.epoch,
                path,
            }) as Arc<dyn DiskFile>)
        })
    }

    fn create_dir_all(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            self.delay().await;
            let mut st = self.lock();
            for anc in path.ancestors() {
                if !anc.as_os_str().is_empty() {
                    st.dirs.insert(anc.to_path_buf());
                }
            }
            Ok(())
        })
    }

    fn list_dir(&self, path: &Path) -> IoFuture<'_, Vec<String>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            self.delay().await;
            let st = self.lock();
            if !st.dirs.contains(&path) {
                return Err(not_found(&path));
            }
            let mut names: Vec<String> = st
                .current
                .keys()
                .filter(|p| p.parent() == Some(path.as_path()))
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect();
            names.sort();
            Ok(names)
        })
    }

    fn remove_file(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            self.delay().await;
            let mut st = self.lock();
            match st.current.remove(&path) {
                Some(_) => Ok(()),
                None => Err(not_found(&path)),
            }
        })
    }

    fn sync_dir(&self, path: &Path) -> IoFuture<'_, ()> {
        let path = path.to_path_buf();
        Box::pin(async move {
            self.delay().await;
            let mut st = self.lock();
            if st.fail_sync {
                return Err(std::io::Error::other(
                    "sim: injected directory fsync failure",
                ));
            }
            if !st.dirs.contains(&path) {
                return Err(not_found(&path));
            }
            let in_dir = |p: &PathBuf| p.parent() == Some(path.as_path());
            st.durable.retain(|p, _| !in_dir(p));
            let entries: Vec<(PathBuf, u64)> = st
                .current
                .iter()
                .filter(|(p, _)| in_dir(p))
                .map(|(p, id)| (p.clone(), *id))
                .collect();
            st.durable.extend(entries);
            Ok(())
        })
    }
    fn rename(&self, from: &Path, to: &Path) -> IoFuture<'_, ()> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        Box::pin(async move {
            self.delay().await;
            let mut st = self.lock();
            if !st.dirs.contains(&parent(&to)) {
                return Err(not_found(&parent(&to)));
            }
            let Some(id) = st.current.remove(&from) else {
                return Err(not_found(&from));
            };
            st.current.insert(to, id);
            Ok(())
        })
    }
    fn random_u64(&self) -> u64 {
        self.lock().salt_rng.random()
    }
}

/// A file of the simulated disk.
#[derive(Debug)]
pub struct SimFile {
    disk: SimDisk,
    id: u64,
    epoch: u64,
    path: PathBuf,
}

impl SimFile {
    fn with_node<T>(
        &self,
        f: impl FnOnce(&mut State, u64) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut st = self.disk.lock();
        if st.epoch != self.epoch {
            return Err(std::io::Error::other(format!(
                "sim: handle for {} predates a crash",
                self.path.display()
            )));
        }
        if !st.nodes.contains_key(&self.id) {
            return Err(not_found(&self.path));
        }
        f(&mut st, self.id)
    }

    fn push(&self, op: PendingOp) -> std::io::Result<()> {
        self.with_node(|st, id| {
            if let Some(node) = st.nodes.get_mut(&id) {
                apply(&mut node.current, &op);
                node.pending.push(op);
            }
            Ok(())
        })
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, mut buf: Vec<u8>, pos: u64) -> IoFuture<'_, (usize, Vec<u8>)> {
        Box::pin(async move {
            self.disk.delay().await;
            self.with_node(|st, id| {
                let content = st.nodes.get(&id).map(|n| &n.current[..]).unwrap_or(&[]);
                let start = (pos as usize).min(content.len());
                let n = (content.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&content[start..start + n]);
                Ok((n, buf))
            })
        })
    }

    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> IoFuture<'_, Vec<u8>> {
        Box::pin(async move {
            self.disk.delay().await;
            self.push(PendingOp::Write {
                pos,
                data: buf.clone(),
            })?;
            Ok(buf)
        })
    }

    fn sync_data(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.disk.delay().await;
            self.with_node(|st, id| {
                if st.fail_sync {
                    return Err(std::io::Error::other("sim: injected fdatasync failure"));
                }
                st.syncs += 1;
                if let Some(node) = st.nodes.get_mut(&id) {
                    for op in std::mem::take(&mut node.pending) {
                        apply(&mut node.durable, &op);
                    }
                }
                Ok(())
            })
        })
    }

    fn len(&self) -> IoFuture<'_, u64> {
        Box::pin(async move {
            self.with_node(|st, id| Ok(st.nodes.get(&id).map_or(0, |n| n.current.len() as u64)))
        })
    }

    fn set_len(&self, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            self.disk.delay().await;
            self.push(PendingOp::SetLen(len))
        })
    }

    fn allocate(&self, _len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move { self.with_node(|_, _| Ok(())) })
    }
}
