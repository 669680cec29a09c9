//! One simulated run: a whole taskbroker cluster (the production `taskbroker_node::run` on each
//! turmoil host), producer and worker clients (the real client crate), a nemesis, and the
//! checker.
//!
//! # Timeline of a run (simulated time)
//! 1. `0 s`: nodes start from empty simulated disks and form the cluster from their peer list;
//!    the driver creates the topic (retrying until the metadata group has a leader).
//! 2. workload + faults until `FAULT_WINDOW_END_MS`: producers send tasks, workers lease,
//!    process, ack or nack them; the nemesis applies its episodes.
//! 3. heal: every partition repaired, holds released, crashed nodes restarted, disks fast again;
//!    workers keep working until every acknowledged produce is acked in the group (or
//!    `SETTLE_MS` passes).
//! 4. check: the replicas of every group are compared (logs up to the commit index, dense
//!    offsets, the group's task states) against what the clients were told; at most one leader
//!    per term per group (sampled every few ms); the lease invariants (`oracle.rs`).
//!
//! # Determinism
//! turmoil (network, host order, each host's tokio scheduler) is seeded by `rng_seed(seed)`,
//! openraft's randomness by `taskbroker_raft::runtime::seed_thread_rng`, each disk, client and
//! the nemesis by streams derived from the seed. Clocks are [`SimClock`]s. Remaining source of
//! nondeterminism we know of: tarpc carries deadlines as `std::time::Instant` (real time), which
//! only matters if a request runs into its deadline on the server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use taskbroker_client::batch::{aligned_copy, BatchView};
use taskbroker_client::proto::TopicSpec;
use taskbroker_client::{Client, Task};
use taskbroker_node::config::{NodeConfig, PartialConfig};
use taskbroker_node::env::{Env, RaftSlot};
use taskbroker_raft::state_machine::partition::TaskStatus;
use taskbroker_raft::{Command, GroupId, NodeId, RaftNode};
use taskbroker_storage::io::SimDisk;
use taskbroker_storage::LogConfig;

use crate::env::{host_name, node_addr, FaultyDisk, SimClock, TurmoilTransport, SIM_EPOCH_MS};
use crate::nemesis::{self, Episode, Fault, FaultMix};
use crate::oracle::{LeaseSeen, Oracle};
use crate::trace::{sim_ms, Trace};

/// The topic every run uses, and its queue group.
pub const TOPIC: &str = "jobs";
/// The queue group the workers share.
pub const GROUP: &str = "workers";
/// Lease duration the workers ask for, ms.
pub const VISIBILITY_MS: u64 = 2_000;
/// Faults start after the cluster has had time to form.
pub const FAULT_WINDOW_START_MS: u64 = 4_000;
/// Faults and new produces stop here; then the cluster is healed.
pub const FAULT_WINDOW_END_MS: u64 = 30_000;
/// How long after healing workers may take to finish every acknowledged task.
pub const SETTLE_MS: u64 = 60_000;
/// Hard bound on simulated time.
const SIM_DURATION: Duration = Duration::from_secs(200);
/// Leader sampling period, ms.
const LEADER_SAMPLE_MS: u64 = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The run's seed (everything derives from it).
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub nodes: u64,
    /// The broken variant: every disk acknowledges fsync without syncing.
    pub lie_about_fsync: bool,
    /// Always include a whole-cluster power loss.
    pub force_crash_all: bool,
    /// Whether the nemesis injects faults at all.
    pub faults: bool,
}

impl SimOptions {
    /// The default options for `seed`: 3 or 5 nodes (drawn from the seed), all faults.
    pub fn for_seed(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            lie_about_fsync: false,
            force_crash_all: false,
            faults: true,
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: u64,
    /// Hash of the event trace.
    pub trace_hash: u64,
    /// Fault episodes applied.
    pub faults: Vec<String>,
    /// Acknowledged produces.
    pub produced: usize,
    /// Produces with an unknown outcome.
    pub produce_unknown: u64,
    /// Leases received by workers.
    pub leases: usize,
    /// Invariant violations (empty = the run passed).
    pub violations: Vec<String>,
    /// Findings of known, reported bugs (not counted as violations; see README "Findings").
    pub known: Vec<String>,
    /// The last events, for failure reports.
    pub trace_tail: String,
    /// Simulated time the run took, ms.
    pub sim_ms: u64,
}

#[derive(Clone)]
struct SimNodeHandle {
    id: NodeId,
    disk: FaultyDisk,
    clock: SimClock,
    slot: RaftSlot,
    config: NodeConfig,
}

impl SimNodeHandle {
    fn raft(&self) -> Option<Arc<RaftNode>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn clear(&self) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn node_config(id: NodeId, ids: &[NodeId]) -> NodeConfig {
    let peers = ids
        .iter()
        .map(|i| format!("{i}={}", node_addr(*i)))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = NodeConfig::resolve(PartialConfig {
        node_id: Some(id),
        listen: Some(format!("0.0.0.0:{}", crate::env::NODE_PORT)),
        advertise: Some(node_addr(id)),
        http: Some("127.0.0.1:1".into()),
        data_dir: Some(format!("/data/{}", host_name(id)).into()),
        peers: Some(peers),
        heartbeat_interval_ms: Some(100),
        election_timeout_min_ms: Some(500),
        election_timeout_max_ms: Some(1_000),
        ..PartialConfig::default()
    })
    .expect("valid simulated node config");
    // No HTTP listener: a simulated node binds no real socket.
    c.http = String::new();
    // Small segments, no pre-zeroing: the simulated disk holds everything in memory.
    c.log = LogConfig {
        segment_bytes_max: 1 << 20,
        preallocate: false,
        recycle_segments_max: 0,
        ..LogConfig::default()
    };
    c
}

/// Shared flags between the harness loop and the client hosts.
#[derive(Default)]
struct Flags {
    topic_ready: AtomicBool,
    stop_producing: AtomicBool,
    stop_workers: AtomicBool,
    healed: AtomicBool,
    done: AtomicBool,
}

fn client_builder(seed: u64, id: &str) -> taskbroker_client::ClientBuilder {
    let clock = SimClock::default();
    Client::builder()
        .seeds((1..=5).map(node_addr).collect::<Vec<_>>())
        .transport(Arc::new(TurmoilTransport))
        .seed(seed)
        .client_id(id)
        .request_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(2))
        .wall_clock(Arc::new(move || clock.now()))
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Runs one seed and checks it. Never panics on a violation: the report lists them.
pub fn run(opts: &SimOptions) -> SimReport {
    let seed = opts.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    taskbroker_raft::runtime::seed_thread_rng(rng.random());
    let ids: Vec<NodeId> = (1..=opts.nodes).collect();
    let trace = Trace::default();
    let oracle = Oracle::default();
    let flags = Arc::new(Flags::default());
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let known = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIM_DURATION)
        .max_message_latency(Duration::from_millis(10))
        .enable_random_order()
        .build();

    let nodes: Vec<SimNodeHandle> = ids
        .iter()
        .map(|&id| {
            let disk = FaultyDisk::new(SimDisk::new(rng.random()));
            SimNodeHandle {
                id,
                disk,
                clock: SimClock::default(),
                slot: Arc::new(Mutex::new(None)),
                config: node_config(id, &ids),
            }
        })
        .collect();
    for n in &nodes {
        let n = n.clone();
        sim.host(host_name(n.id), move || {
            let n = n.clone();
            async move {
                let env = Env {
                    transport: Arc::new(TurmoilTransport),
                    disk: Arc::new(n.disk.clone()),
                    clock: Arc::new(n.clock.clone()),
                    raft_slot: Some(n.slot.clone()),
                };
                taskbroker_node::run(n.config.clone(), env, std::future::pending::<()>())
                    .await
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
            }
        });
    }

    // Driver: creates the topic, waits for the heal, waits until every acknowledged produce is
    // acked, then checks the replicas.
    {
        let known = known.clone();
        let (trace, oracle, flags, violations, nodes) = (
            trace.clone(),
            oracle.clone(),
            flags.clone(),
            violations.clone(),
            nodes.clone(),
        );
        let partitions = rng.random_range(1..=3u32);
        let rf = opts.nodes.min(3) as u32;
        let client_seed = rng.random();
        sim.client("driver", async move {
            let client = loop {
                match client_builder(client_seed, "driver").connect().await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let spec = TopicSpec {
                partitions: Some(partitions),
                replication_factor: Some(rf),
                visibility_timeout_ms: Some(VISIBILITY_MS),
                max_attempts: Some(0),
                ..TopicSpec::default()
            };
            loop {
                match client.admin().create_topic(TOPIC, spec.clone()).await {
                    Ok(_) => break,
                    Err(e) => {
                        if client.admin().describe_topic(TOPIC).await.is_ok() {
                            break;
                        }
                        tracing::debug!(error = %e, "create topic");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            trace.record(format!("topic created: {partitions} partitions, rf {rf}"));
            flags.topic_ready.store(true, Ordering::SeqCst);
            while !flags.healed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let deadline = sim_ms() + SETTLE_MS;
            loop {
                let missing = unacked(&nodes, &oracle);
                if missing.is_empty() {
                    break;
                }
                if sim_ms() > deadline {
                    violations.lock().unwrap_or_else(|p| p.into_inner()).push(format!(
                        "liveness: {} acknowledged tasks not acked {SETTLE_MS} ms after healing, e.g. {:?}",
                        missing.len(),
                        &missing[..missing.len().min(5)]
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            flags.stop_workers.store(true, Ordering::SeqCst);
            trace.record("settled");
            let mut known_found = Vec::new();
            let found = check_replicas(&nodes, &oracle, &mut known_found).await;
            known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(known_found);
            violations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(found);
            flags.done.store(true, Ordering::SeqCst);
            Ok(()) as HostResult
        });
    }

    // Producers.
    for p in 0..2u64 {
        let (trace, oracle, flags) = (trace.clone(), oracle.clone(), flags.clone());
        let client_seed: u64 = rng.random();
        let name = format!("producer{p}");
        sim.client(name.clone(), async move {
            while !flags.topic_ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(client_seed);
            let client = client_builder(client_seed, &name).connect().await?;
            let producer = client
                .producer()
                .idempotent(true)
                .linger(Duration::from_millis(5))
                .build();
            let mut sends = tokio::task::JoinSet::new();
            let mut k = 0u64;
            while !flags.stop_producing.load(Ordering::SeqCst) {
                let id = (p + 1) * 1_000_000 + k;
                k += 1;
                let mut payload = b"SIMTASK!".to_vec();
                payload.extend_from_slice(&id.to_le_bytes());
                let task = Task::new(payload).key(id.to_le_bytes().to_vec());
                let send = producer.send(TOPIC, task);
                let (trace, oracle) = (trace.clone(), oracle.clone());
                sends.spawn(async move {
                    match send.await {
                        Ok(o) => {
                            trace.record(format!("produce {id} -> p{}@{}", o.partition, o.offset));
                            oracle.with(|ob| ob.produced.insert(id, (o.partition, o.offset)));
                        }
                        Err(e) => {
                            trace.record(format!("produce {id} unknown ({e})"));
                            oracle.with(|ob| ob.produce_unknown += 1);
                        }
                    }
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
            }
            while sends.join_next().await.is_some() {}
            Ok(()) as HostResult
        });
    }

    // Workers.
    for w in 0..2u64 {
        let (trace, oracle, flags) = (trace.clone(), oracle.clone(), flags.clone());
        let client_seed: u64 = rng.random();
        let name = format!("worker{w}");
        sim.client(name.clone(), async move {
            while !flags.topic_ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(client_seed);
            let client = client_builder(client_seed, &name).connect().await?;
            let worker = loop {
                match client
                    .worker(TOPIC, GROUP)
                    .worker_id(name.clone())
                    .concurrency(1)
                    .prefetch(1)
                    .visibility_timeout(Duration::from_millis(VISIBILITY_MS))
                    .wait(Duration::from_millis(200))
                    .auto_extend(false)
                    .build()
                    .await
                {
                    Ok(w) => break w,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            while !flags.stop_workers.load(Ordering::SeqCst) {
                let task =
                    match tokio::time::timeout(Duration::from_millis(500), worker.next()).await {
                        Ok(Ok(Some(t))) => t,
                        Ok(Ok(None)) => break,
                        Ok(Err(_)) | Err(_) => continue,
                    };
                let (p, off) = (task.partition(), task.offset());
                let tok = task.lease_token();
                trace.record(format!(
                    "{name} leased p{p}@{off} epoch {} attempt {} until {}",
                    tok.epoch,
                    tok.attempt,
                    task.lease_expires_at_ms() - SIM_EPOCH_MS
                ));
                oracle.with(|o| {
                    o.leases.entry((p, off)).or_default().push(LeaseSeen {
                        worker: name.clone(),
                        epoch: tok.epoch,
                        attempt: tok.attempt,
                        expires_at_ms: task.lease_expires_at_ms(),
                        released: false,
                        acked: false,
                    })
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
                let mark = |f: &dyn Fn(&mut LeaseSeen)| {
                    oracle.with(|o| {
                        if let Some(l) = o
                            .leases
                            .get_mut(&(p, off))
                            .and_then(|v| v.iter_mut().find(|l| l.epoch == tok.epoch))
                        {
                            f(l)
                        }
                    })
                };
                if rng.random_bool(0.1) {
                    mark(&|l| l.released = true);
                    let r = task.nack(Duration::ZERO).await;
                    trace.record(format!(
                        "{name} nack p{p}@{off} epoch {}: {}",
                        tok.epoch,
                        r.is_ok()
                    ));
                } else {
                    match task.ack().await {
                        Ok(()) => {
                            mark(&|l| l.acked = true);
                            oracle.with(|o| o.acks_ok += 1);
                            trace.record(format!("{name} ack p{p}@{off} epoch {}", tok.epoch));
                        }
                        Err(e) => {
                            oracle.with(|o| o.acks_failed += 1);
                            trace.record(format!(
                                "{name} ack p{p}@{off} epoch {} failed: {e}",
                                tok.epoch
                            ));
                        }
                    }
                }
            }
            let _ = worker.shutdown().await;
            Ok(()) as HostResult
        });
    }

    // The harness loop: nemesis, leader sampling, heal.
    let mix = FaultMix {
        crash_all: true,
        force_crash_all: opts.force_crash_all,
    };
    let episodes = if opts.faults {
        nemesis::schedule(
            &mut rng,
            &ids,
            FAULT_WINDOW_START_MS,
            FAULT_WINDOW_END_MS,
            mix,
        )
    } else {
        Vec::new()
    };
    let mut applied: Vec<String> = Vec::new();
    let mut active: Option<(Episode, Vec<NodeId>)> = None;
    let mut next_episode = 0usize;
    let mut leaders: BTreeMap<(GroupId, u64), BTreeSet<NodeId>> = BTreeMap::new();
    let mut next_sample = 0u64;
    let mut healed = false;
    let mut sim_error: Option<String> = None;
    let mut lying = false;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        // The broken variant starts lying once the cluster has formed (a lie about the identity
        // file would only stop the node from starting).
        if opts.lie_about_fsync && !lying && now >= FAULT_WINDOW_START_MS {
            lying = true;
            for n in &nodes {
                n.disk.set_lie_about_fsync(true);
            }
            trace.record_at(now, "broken variant: disks lie about fsync from now on");
        }
        if now >= next_sample {
            next_sample = now + LEADER_SAMPLE_MS;
            sample_leaders(&nodes, &mut leaders);
        }
        if let Some((ep, _)) = &active {
            if now >= ep.start_ms + ep.duration_ms {
                let (ep, touched) = active.take().expect("active episode");
                undo(&mut sim, &nodes, &ids, &ep.fault, &touched);
                trace.record_at(now, format!("nemesis: end {:?}", ep.fault));
            }
        }
        if active.is_none() && !healed {
            if let Some(ep) = episodes.get(next_episode) {
                if now >= ep.start_ms {
                    next_episode += 1;
                    let touched = apply(&mut sim, &nodes, &ids, &ep.fault, &mut rng);
                    let line = format!("{:?} on {touched:?} for {} ms", ep.fault, ep.duration_ms);
                    trace.record_at(now, format!("nemesis: {line}"));
                    applied.push(format!("@{}ms {line}", ep.start_ms));
                    active = Some((ep.clone(), touched));
                }
            }
        }
        if !healed && now >= FAULT_WINDOW_END_MS {
            flags.stop_producing.store(true, Ordering::SeqCst);
            if let Some((ep, touched)) = active.take() {
                undo(&mut sim, &nodes, &ids, &ep.fault, &touched);
            }
            heal(&mut sim, &nodes, &ids);
            trace.record_at(now, "nemesis: healed");
            healed = true;
            flags.healed.store(true, Ordering::SeqCst);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    drop(sim);
    taskbroker_raft::runtime::unseed_thread_rng();

    let mut violations = std::mem::take(&mut *violations.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(e) = sim_error {
        violations.push(format!("simulation error: {e}"));
    } else if !flags.done.load(Ordering::SeqCst) {
        violations.push("the driver did not finish".into());
    }
    for ((g, term), who) in &leaders {
        if who.len() > 1 {
            violations.push(format!("group {g}: term {term} had leaders {who:?}"));
        }
    }
    violations.extend(oracle.check_leases(VISIBILITY_MS));
    let (produced, produce_unknown, leases) = oracle.with(|o| {
        (
            o.produced.len(),
            o.produce_unknown,
            o.leases.values().map(Vec::len).sum(),
        )
    });
    let known_found = std::mem::take(&mut *known.lock().unwrap_or_else(|p| p.into_inner()));
    SimReport {
        seed,
        nodes: opts.nodes,
        trace_hash: trace.hash(),
        faults: applied,
        produced,
        produce_unknown,
        leases,
        violations,
        known: known_found,
        trace_tail: trace.tail(40),
        sim_ms,
    }
}

fn sample_leaders(
    nodes: &[SimNodeHandle],
    leaders: &mut BTreeMap<(GroupId, u64), BTreeSet<NodeId>>,
) {
    for n in nodes {
        let Some(raft) = n.raft() else { continue };
        for gid in raft.group_ids() {
            let Some(g) = raft.group(gid) else { continue };
            let m = g.metrics();
            if m.is_leader {
                leaders.entry((gid, m.term)).or_default().insert(n.id);
            }
        }
    }
}

/// The current leader of the metadata group or of some partition group.
fn find_leader(nodes: &[SimNodeHandle], meta: bool) -> Option<NodeId> {
    nodes.iter().find_map(|n| {
        let raft = n.raft()?;
        raft.group_ids()
            .into_iter()
            .filter(|g| g.is_metadata() == meta)
            .find(|g| raft.group(*g).is_some_and(|g| g.is_leader()))
            .map(|_| n.id)
    })
}

fn crash(sim: &mut turmoil::Sim<'_>, n: &SimNodeHandle) {
    sim.crash(host_name(n.id));
    n.clear();
    n.disk.inner.crash();
}

/// Applies `fault`; returns the nodes it touched (to undo it).
fn apply(
    sim: &mut turmoil::Sim<'_>,
    nodes: &[SimNodeHandle],
    ids: &[NodeId],
    fault: &Fault,
    rng: &mut ChaCha8Rng,
) -> Vec<NodeId> {
    let cut = |sim: &mut turmoil::Sim<'_>, side: &[NodeId]| {
        for a in side {
            for b in ids.iter().filter(|b| !side.contains(b)) {
                sim.partition(host_name(*a), host_name(*b));
            }
        }
    };
    match fault {
        Fault::IsolateLeader { meta } => {
            let l = find_leader(nodes, *meta).unwrap_or(ids[rng.random_range(0..ids.len())]);
            cut(sim, &[l]);
            vec![l]
        }
        Fault::SplitMajority { minority } => {
            cut(sim, minority);
            minority.clone()
        }
        Fault::Hold { a, b } => {
            sim.hold(host_name(*a), host_name(*b));
            vec![*a, *b]
        }
        Fault::Latency { max_ms } => {
            sim.set_max_message_latency(Duration::from_millis(*max_ms));
            vec![]
        }
        Fault::Crash { node } => {
            crash(sim, &nodes[(*node - 1) as usize]);
            vec![*node]
        }
        Fault::CrashAll => {
            for n in nodes {
                crash(sim, n);
            }
            ids.to_vec()
        }
        Fault::SlowDisk { node, latency_ms } => {
            nodes[(*node - 1) as usize]
                .disk
                .inner
                .set_latency(Duration::from_millis(*latency_ms));
            vec![*node]
        }
        Fault::ClockJump { node, delta_ms } => {
            nodes[(*node - 1) as usize].clock.jump(*delta_ms);
            vec![*node]
        }
    }
}

fn undo(
    sim: &mut turmoil::Sim<'_>,
    nodes: &[SimNodeHandle],
    ids: &[NodeId],
    fault: &Fault,
    touched: &[NodeId],
) {
    match fault {
        Fault::IsolateLeader { .. } | Fault::SplitMajority { .. } => {
            for a in touched {
                for b in ids.iter().filter(|b| !touched.contains(b)) {
                    sim.repair(host_name(*a), host_name(*b));
                }
            }
        }
        Fault::Hold { a, b } => sim.release(host_name(*a), host_name(*b)),
        Fault::Latency { .. } => sim.set_max_message_latency(Duration::from_millis(10)),
        Fault::Crash { .. } | Fault::CrashAll => {
            for id in touched {
                sim.bounce(host_name(*id));
            }
        }
        Fault::SlowDisk { node, .. } => nodes[(*node - 1) as usize]
            .disk
            .inner
            .set_latency(Duration::ZERO),
        Fault::ClockJump { .. } => {}
    }
}

fn heal(sim: &mut turmoil::Sim<'_>, nodes: &[SimNodeHandle], ids: &[NodeId]) {
    for a in ids {
        for b in ids {
            if a < b {
                sim.repair(host_name(*a), host_name(*b));
                sim.release(host_name(*a), host_name(*b));
            }
        }
    }
    sim.set_max_message_latency(Duration::from_millis(10));
    for n in nodes {
        n.disk.inner.set_latency(Duration::ZERO);
        if !sim.is_host_running(host_name(n.id)) {
            sim.bounce(host_name(n.id));
        }
    }
}

/// A group's leader replica, if any node leads it.
fn leader_raft(nodes: &[SimNodeHandle], gid: GroupId) -> Option<Arc<RaftNode>> {
    nodes
        .iter()
        .filter_map(SimNodeHandle::raft)
        .find(|r| r.group(gid).is_some_and(|g| g.is_leader()))
}

fn partition_group(nodes: &[SimNodeHandle], partition: u32) -> Option<GroupId> {
    nodes.iter().filter_map(SimNodeHandle::raft).find_map(|r| {
        r.group_ids()
            .into_iter()
            .find(|g| !g.is_metadata() && g.partition() == partition)
    })
}

/// Acknowledged produces not (yet) acked in the group, by the leader's applied state.
fn unacked(nodes: &[SimNodeHandle], oracle: &Oracle) -> Vec<(u32, u64)> {
    let produced: Vec<(u32, u64)> = oracle.with(|o| o.produced.values().copied().collect());
    produced
        .into_iter()
        .filter(|(p, off)| {
            let Some(gid) = partition_group(nodes, *p) else {
                return true;
            };
            let Some(raft) = leader_raft(nodes, gid) else {
                return true;
            };
            let Some(g) = raft.group(gid) else {
                return true;
            };
            let state = g.state().read();
            !matches!(
                state.partition().and_then(|s| s.task_state(GROUP, *off)),
                Some(TaskStateView {
                    status: TaskStatus::Acked,
                    ..
                })
            )
        })
        .collect()
}

use taskbroker_raft::state_machine::partition::TaskStateView;

/// A replica's log as `(index, base_offset, record_count, payload)` up to `upto`.
async fn frames(
    raft: &RaftNode,
    gid: GroupId,
    upto: u64,
) -> Option<Vec<taskbroker_storage::Frame>> {
    let g = raft.group(gid)?;
    let log = g.log();
    let mut out = Vec::new();
    let mut next = log.first_index();
    while next < log.next_index() && next <= upto {
        let batch = log.read(next, 1024, 4 << 20).await.ok()?;
        if batch.is_empty() {
            break;
        }
        for f in batch {
            next = f.index + 1;
            if f.index <= upto {
                out.push(f);
            }
        }
    }
    Some(out)
}

/// Compares the replicas of every group and checks them against the oracle.
async fn check_replicas(
    nodes: &[SimNodeHandle],
    oracle: &Oracle,
    known: &mut Vec<String>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let mut gids = BTreeSet::new();
    for r in nodes.iter().filter_map(SimNodeHandle::raft) {
        gids.extend(r.group_ids());
    }
    let produced = oracle.with(|o| o.produced.clone());
    let mut seen_ids: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    for gid in gids {
        let replicas: Vec<Arc<RaftNode>> = nodes
            .iter()
            .filter_map(SimNodeHandle::raft)
            .filter(|r| r.group(gid).is_some())
            .collect();
        let Some(commit) = replicas
            .iter()
            .filter_map(|r| r.group(gid)?.metrics().commit_index)
            .max()
        else {
            continue;
        };
        let mut reference: Option<(NodeId, Vec<taskbroker_storage::Frame>)> = None;
        for r in &replicas {
            let Some(g) = r.group(gid) else { continue };
            // Known bug (see README, "Findings"): a follower of a quiesced group does not learn
            // that the last entry committed (the next AppendEntries would carry it; quiescence
            // suppresses it), so it does not apply it. Its log is still compared below; its
            // applied state is skipped.
            let applied = g.wait_applied(commit, Duration::from_secs(10)).await;
            if !applied {
                known.push(format!(
                    "group {gid}: node {} did not apply up to {commit} within 10 s of settling: {:?}",
                    r.id(),
                    g.metrics()
                ));
            }
            let Some(fs) = frames(r, gid, commit).await else {
                bad.push(format!("group {gid}: node {} log unreadable", r.id()));
                continue;
            };
            // Offsets are dense: each frame starts where the previous one ended.
            for w in fs.windows(2) {
                if w[1].base_offset != w[0].base_offset + u64::from(w[0].record_count) {
                    bad.push(format!(
                        "group {gid}: node {}: offsets not dense at index {} ({} + {} != {})",
                        r.id(),
                        w[1].index,
                        w[0].base_offset,
                        w[0].record_count,
                        w[1].base_offset
                    ));
                }
            }
            match &reference {
                None => reference = Some((r.id(), fs)),
                Some((rid, rfs)) => {
                    let (a, b) = (rfs.len().min(fs.len()), rfs.len().max(fs.len()));
                    if rfs[rfs.len() - a..] != fs[fs.len() - a..]
                        || (a != b && rfs.first().map(|f| f.index) == fs.first().map(|f| f.index))
                    {
                        bad.push(format!(
                            "group {gid}: logs of nodes {rid} and {} differ up to commit {commit}",
                            r.id()
                        ));
                    }
                }
            }
            // The group's task states: every acknowledged produce is acked, none dead-lettered.
            if applied && !gid.is_metadata() {
                let state = g.state().read();
                if let Some(p) = state.partition() {
                    for (id, (part, off)) in &produced {
                        if *part != gid.partition() {
                            continue;
                        }
                        match p.task_state(GROUP, *off).map(|v| v.status) {
                            Some(TaskStatus::Acked) => {}
                            other => bad.push(format!(
                                "group {gid}: node {}: task {id} at offset {off} is {other:?}, not acked",
                                r.id()
                            )),
                        }
                    }
                }
            }
        }
        // Every acknowledged produce is in the log at its offset, and no task is stored twice.
        if let Some((_, fs)) = reference.filter(|_| !gid.is_metadata()) {
            let mut at: BTreeMap<u64, u64> = BTreeMap::new();
            for f in &fs {
                let Ok(Some(Command::Produce { batch, .. })) =
                    taskbroker_raft::codec::decode_command(f)
                else {
                    continue;
                };
                let batch = aligned_copy(&batch);
                let Ok(view) = BatchView::new(&batch) else {
                    bad.push(format!(
                        "group {gid}: undecodable batch at index {}",
                        f.index
                    ));
                    continue;
                };
                for (i, rec) in view.records().enumerate() {
                    let payload = rec.payload();
                    if payload.len() < 16 || &payload[..8] != b"SIMTASK!" {
                        continue;
                    }
                    let id = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
                    let off = f.base_offset + i as u64;
                    at.insert(off, id);
                    if let Some(prev) = seen_ids.insert(id, (gid.partition(), off)) {
                        bad.push(format!(
                            "task {id} stored twice: p{}@{} and p{}@{off} (idempotent produce)",
                            prev.0,
                            prev.1,
                            gid.partition()
                        ));
                    }
                }
            }
            for (id, (part, off)) in &produced {
                if *part == gid.partition() && at.get(off) != Some(id) {
                    bad.push(format!(
                        "acknowledged produce {id} (p{part}@{off}) lost: the log has {:?} there",
                        at.get(off)
                    ));
                }
            }
        }
    }
    bad
}
