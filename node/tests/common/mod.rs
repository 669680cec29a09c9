//! Test harness: real `taskbroker serve` processes on loopback, with free ports and temporary
//! data directories, and raw `BrokerApi` clients.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::Decoder;
use taskbroker_client::batch::{BatchBuilder, TaskRecord};
use taskbroker_client::proto::{
    ApiError, BrokerApiClient, ClusterMeta, ProduceRequest, ProduceResponse,
};
use taskbroker_client::transport::{ConnKind, Preamble};

/// How long a cluster may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one RPC from a test.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// A free loopback port (bound and released; a race with other processes is unlikely).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One node of a test cluster.
pub struct Node {
    pub id: u64,
    pub listen: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// N `taskbroker serve` processes.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub peers: String,
    _dir: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_taskbroker")
}

/// Arguments of `taskbroker serve` for a node (fast Raft timing for quick failover).
pub fn serve_args(id: u64, listen: &str, http: &str, data_dir: &Path, peers: &str) -> Vec<String> {
    [
        "serve",
        "--node-id",
        &id.to_string(),
        "--listen",
        listen,
        "--http",
        http,
        "--data-dir",
        &data_dir.display().to_string(),
        "--peers",
        peers,
        "--storage-backend",
        "std",
        "--heartbeat-interval-ms",
        "100",
        "--election-timeout-min-ms",
        "500",
        "--election-timeout-max-ms",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Cluster {
    /// Starts `n` nodes and waits until every one is ready. The ports come from the OS and are
    /// free when chosen, but another test may take one before the node binds it: then the whole
    /// cluster starts again on fresh ports (at most 3 times).
    pub fn start(n: u64) -> Cluster {
        for _ in 0..2 {
            let mut c = Cluster::spawn_all(n);
            if (1..=n).all(|id| !c.lost_its_port(id)) {
                for id in 1..=n {
                    c.wait_ready(id);
                }
                return c;
            }
            eprintln!("a node's port was taken before it could bind it; starting again");
        }
        let c = Cluster::spawn_all(n);
        for id in 1..=n {
            c.wait_ready(id);
        }
        c
    }

    /// True if node `id` exited because its address was taken (checked for up to 2 s).
    fn lost_its_port(&mut self, id: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let exited = self.nodes[(id - 1) as usize]
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                return self.log(id).contains("Address already in use");
            }
            if http_get(&self.node(id).http, "/health").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn spawn_all(n: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(Node {
                id,
                listen: format!("127.0.0.1:{}", free_port()),
                http: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node{id}")),
                child: None,
                log: dir.path().join(format!("node{id}.log")),
            });
        }
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.listen))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            nodes,
            peers,
            _dir: dir,
        };
        for id in 1..=n {
            c.spawn(id);
        }
        c
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Starts node `id` (again).
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let n = &mut self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log file");
        let child = Command::new(bin())
            .args(serve_args(id, &n.listen, &n.http, &n.data_dir, &peers))
            .env("RUST_LOG", "info,openraft=info,tarpc=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn taskbroker");
        n.child = Some(child);
    }

    /// Waits for `/ready` on node `id`.
    pub fn wait_ready(&self, id: u64) {
        let n = self.node(id);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if http_get(&n.http, "/ready")
                .is_some_and(|r| r.starts_with("HTTP/1.") && r.contains(" 200 "))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "node {id} not ready in {READY_TIMEOUT:?}; log:\n{}",
            self.log(id)
        );
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let mut c = self.nodes[(id - 1) as usize].child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// A client connected to node `id`.
    pub async fn client(&self, id: u64) -> BrokerApiClient {
        connect(&self.node(id).listen).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // The nodes' logs are the only record of what the cluster did: show their tails.
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- node {} log (last {} lines) ---", n.id, tail.len());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A plain HTTP/1.0 GET; the whole response, or `None` if the node does not answer.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// A raw `BrokerApi` client: preamble `Client`, then length-delimited bincode.
pub async fn connect(addr: &str) -> BrokerApiClient {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    Preamble {
        kind: ConnKind::Client,
    }
    .write(&mut conn)
    .await
    .expect("preamble");
    let framed = taskbroker_client::proto::framing::codec().framed(conn);
    let transport = tarpc::serde_transport::new(framed, Bincode::default());
    BrokerApiClient::new(tarpc::client::Config::default(), transport).spawn()
}

/// A context with the test RPC deadline.
pub fn ctx() -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = std::time::Instant::now() + RPC_TIMEOUT;
    c
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// A batch of `payloads` (optionally all with a not-before time).
pub fn batch(producer: u64, seq: u64, payloads: &[&str], not_before_ms: Option<u64>) -> Bytes {
    let now = now_ms();
    let mut b = BatchBuilder::new(producer, seq, now);
    for p in payloads {
        let mut r = TaskRecord::new(p.as_bytes().to_vec(), now);
        r.not_before_ms = not_before_ms;
        b.push(r).expect("push");
    }
    b.finish().into_bytes()
}

/// Polls `f` until it returns `Some`, up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cluster metadata from any of `clients`.
pub async fn metadata(client: &BrokerApiClient) -> ClusterMeta {
    client
        .metadata(ctx(), vec![])
        .await
        .expect("rpc")
        .expect("metadata")
}

/// Produces `req` to whichever node leads the partition, following `NotLeader` hints and
/// retrying `Unavailable`/`Timeout`; returns the answer and the node id that took it.
pub async fn produce_routed(
    cluster: &Cluster,
    start: u64,
    topic: &str,
    partition: u32,
    bytes: Bytes,
    timeout: Duration,
) -> (ProduceResponse, u64) {
    let deadline = Instant::now() + timeout;
    let mut node = start;
    loop {
        let client = cluster.client(node).await;
        let r = client
            .produce(
                ctx(),
                ProduceRequest {
                    topic: topic.into(),
                    partition,
                    batch: bytes.clone(),
                },
            )
            .await;
        match r {
            Ok(Ok(resp)) => return (resp, node),
            Ok(Err(ApiError::NotLeader {
                leader_hint: Some(l),
                ..
            })) if cluster.node(l).child.is_some() => node = l,
            Ok(Err(e)) if e.is_retryable() || matches!(e, ApiError::NotLeader { .. }) => {}
            Ok(Err(e)) => panic!("produce failed: {e}"),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "produce to {topic}/{partition} did not succeed in {timeout:?}"
        );
        // Try the next live node when the hint does not help.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if cluster.node(node).child.is_none() {
            node = cluster
                .nodes
                .iter()
                .find(|n| n.child.is_some())
                .map(|n| n.id)
                .expect("a live node");
        }
    }
}
