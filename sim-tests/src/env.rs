//! The simulated environment: turmoil's network behind the [`Transport`] seam, and Raft nodes on
//! simulated disks.
//!
//! # Design notes
//! - turmoil's TCP does not retransmit: a segment sent across a partition is lost and the
//!   connection breaks. The Raft network drops a connection after a transport error or a
//!   timeout and reconnects on the next call, so this is the same as a real network failure.
//! - A [`SimNode`]'s disk lives outside the host's runtime (the `SimDisk` is an `Arc` inside), so
//!   a crashed and restarted host reopens the same data, with unsynced writes lost or torn by
//!   [`SimDisk::crash`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use taskbroker_client::transport::{BoxConn, ConnKind, IoFuture, Listener, Preamble, Transport};
use taskbroker_raft::{NodeId, RaftNode, RaftNodeConfig, RaftTiming};
use taskbroker_storage::io::SimDisk;
use taskbroker_storage::LogConfig;

/// The port every simulated node serves Raft (and later client) connections on.
pub const NODE_PORT: u16 = 7000;

/// turmoil's TCP behind the network seam. Only usable inside a turmoil host or client.
#[derive(Debug, Default, Clone, Copy)]
pub struct TurmoilTransport;

impl Transport for TurmoilTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> IoFuture<'a, BoxConn> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> IoFuture<'a, Box<dyn Listener>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TurmoilListener(listener)) as Box<dyn Listener>)
        })
    }
}

struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    fn accept(&mut self) -> IoFuture<'_, (BoxConn, SocketAddr)> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The turmoil host name of node `id`.
pub fn host_name(id: NodeId) -> String {
    format!("n{id}")
}

/// The Raft address of node `id` (`n<id>:7000`, resolved by turmoil's DNS).
pub fn node_addr(id: NodeId) -> String {
    format!("{}:{NODE_PORT}", host_name(id))
}

/// Timing for simulations: fast elections (simulated time is cheap, but bounded).
pub fn sim_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_every_entries: 1_000_000,
        snapshot_timeout_ms: 10_000,
        rpc_timeout_ms: 1_000,
        quiesce: true,
    }
}

/// One simulated node: its disk (kept across restarts) and, while its host runs, its
/// [`RaftNode`].
#[derive(Debug, Clone)]
pub struct SimNode {
    /// The node id.
    pub id: NodeId,
    /// The node's disk; survives host crashes (see [`SimDisk::crash`]).
    pub disk: SimDisk,
    running: Arc<Mutex<Option<Arc<RaftNode>>>>,
}

impl SimNode {
    /// A node with an empty disk seeded `disk_seed`.
    pub fn new(id: NodeId, disk_seed: u64) -> SimNode {
        SimNode {
            id,
            disk: SimDisk::new(disk_seed),
            running: Arc::new(Mutex::new(None)),
        }
    }

    /// The running [`RaftNode`], if the host has started it.
    pub fn raft(&self) -> Option<Arc<RaftNode>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The host's software: builds a [`RaftNode`] on this node's disk, opens `groups`, and
    /// serves Raft connections on [`NODE_PORT`] until the host is crashed. Run it from a
    /// `turmoil::Sim::host` closure (it is called again when the host restarts).
    pub async fn run(
        self,
        timing: RaftTiming,
        groups: Vec<taskbroker_raft::GroupId>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let transport: Arc<dyn Transport> = Arc::new(TurmoilTransport);
        let config = RaftNodeConfig {
            id: self.id,
            data_dir: PathBuf::from(format!("/data/{}", host_name(self.id))),
            timing,
            log: LogConfig {
                segment_bytes_max: 1 << 20,
                ..LogConfig::default()
            },
        };
        let node = RaftNode::new(config, Arc::new(self.disk.clone()), transport.clone());
        let mut listener = transport.bind(&format!("0.0.0.0:{NODE_PORT}")).await?;
        for g in groups {
            node.open_group(g).await?;
        }
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
        loop {
            let (mut conn, _) = listener.accept().await?;
            let node = node.clone();
            tokio::spawn(async move {
                if let Ok(p) = Preamble::read(&mut conn).await {
                    if p.kind == ConnKind::Raft {
                        node.serve_connection(conn).await;
                    }
                }
            });
        }
    }
}

/// Members map (id -> Raft address) of nodes `ids`, for `Group::initialize`.
pub fn members(ids: impl IntoIterator<Item = NodeId>) -> BTreeMap<NodeId, String> {
    ids.into_iter().map(|id| (id, node_addr(id))).collect()
}

/// The Unix time (ms) at which every simulation starts: fixed, so timestamps replay.
pub const SIM_EPOCH_MS: u64 = 1_700_000_000_000;

/// Simulated wall-clock: [`SIM_EPOCH_MS`] + turmoil's simulated elapsed time + a per-node
/// offset that the nemesis can move (clock jumps). Never reads the host's clock.
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl SimClock {
    /// Milliseconds since the Unix epoch as this clock reads them.
    pub fn now(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64;
        let off = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (SIM_EPOCH_MS as i64 + elapsed + off).max(0) as u64
    }

    /// Moves the clock by `delta_ms` (a clock jump; negative goes back).
    pub fn jump(&self, delta_ms: i64) {
        self.offset_ms
            .fetch_add(delta_ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl taskbroker_node::env::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now()
    }
}

/// The simulated disk behind a switch that makes it lie about `sync_data` (reports success
/// without making anything durable): the deliberately broken variant that shows the checker
/// catches lost acknowledged writes. Honest unless [`FaultyDisk::set_lie_about_fsync`].
#[derive(Debug, Clone)]
pub struct FaultyDisk {
    /// The real simulated disk (crash it with [`SimDisk::crash`]).
    pub inner: SimDisk,
    lie: Arc<std::sync::atomic::AtomicBool>,
}

impl FaultyDisk {
    /// An honest wrapper around `inner`.
    pub fn new(inner: SimDisk) -> FaultyDisk {
        FaultyDisk {
            inner,
            lie: Arc::default(),
        }
    }

    /// Whether `sync_data` lies from now on.
    pub fn set_lie_about_fsync(&self, lie: bool) {
        self.lie.store(lie, std::sync::atomic::Ordering::Relaxed);
    }
}

use std::path::Path;
use taskbroker_storage::io::{BackendKind, Disk, DiskFile, IoFuture as DiskFuture};

impl Disk for FaultyDisk {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn open(&self, path: &Path, create: bool) -> DiskFuture<'_, Arc<dyn DiskFile>> {
        let path = path.to_path_buf();
        Box::pin(async move {
            let f = self.inner.open(&path, create).await?;
            Ok(Arc::new(FaultyFile {
                inner: f,
                lie: self.lie.clone(),
            }) as Arc<dyn DiskFile>)
        })
    }
    fn create_dir_all(&self, path: &Path) -> DiskFuture<'_, ()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> DiskFuture<'_, Vec<String>> {
        self.inner.list_dir(path)
    }
    fn remove_file(&self, path: &Path) -> DiskFuture<'_, ()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> DiskFuture<'_, ()> {
        self.inner.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> DiskFuture<'_, ()> {
        self.inner.rename(from, to)
    }
    fn random_u64(&self) -> u64 {
        self.inner.random_u64()
    }
    fn spawn(&self, task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        self.inner.spawn(task)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn DiskFile>,
    lie: Arc<std::sync::atomic::AtomicBool>,
}

impl DiskFile for FaultyFile {
    fn read_at(&self, buf: Vec<u8>, pos: u64) -> DiskFuture<'_, (usize, Vec<u8>)> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> DiskFuture<'_, Vec<u8>> {
        self.inner.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> DiskFuture<'_, ()> {
        if self.lie.load(std::sync::atomic::Ordering::Relaxed) {
            Box::pin(async { Ok(()) })
        } else {
            self.inner.sync_data()
        }
    }
    fn len(&self) -> DiskFuture<'_, u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> DiskFuture<'_, ()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> DiskFuture<'_, ()> {
        self.inner.allocate(len)
    }
    fn write_all_at_and_sync(&self, buf: Vec<u8>, pos: u64) -> DiskFuture<'_, Vec<u8>> {
        if self.lie.load(std::sync::atomic::Ordering::Relaxed) {
            self.inner.write_all_at(buf, pos)
        } else {
            self.inner.write_all_at_and_sync(buf, pos)
        }
    }
}
