//! Replication of one partition group across a leader partition, under turmoil (simulated
//! network and clock) with the simulated disk.
//!
//! Three hosts each run a `RaftNode` hosting one partition group; a `driver` client
//! initialises the group, writes through the leader, cuts the leader off from both followers,
//! keeps writing through the new leader (writes on the isolated old leader must not be
//! acknowledged), heals the network and checks:
//! - every acknowledged write is in the applied state of every node, at the offset it was
//!   acknowledged with;
//! - the logs and the applied high watermark (`next_offset`) agree on every node;
//! - at most one leader was seen per term.
//!
//! A write that failed or timed out has an unknown outcome and is not checked either way.
//!
//! Reproduce with `SIM_SEED=<seed> cargo test -p taskbroker-sim-tests --test raft_turmoil`.
//! Not yet fully deterministic: openraft draws election timeouts from the OS-seeded
//! `rand::rng()` through its `TokioRuntime`, so a seed fixes the network schedule and the disk
//! but not which node wins an election.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use taskbroker_client::batch::{BatchBuilder, TaskRecord};
use taskbroker_raft::state_machine::partition::ProduceOutcome;
use taskbroker_raft::{Command, Group, GroupId, NodeId, RaftNode, Response};
use taskbroker_sim_tests::env::{host_name, members, sim_timing, SimNode};

/// The partition group under test (topic 1, partition 0).
const G: GroupId = GroupId(1 << 32);
const NODES: [NodeId; 3] = [1, 2, 3];
/// Writes before the partition, during it (through the new leader), and tried on the
/// isolated old leader.
const WRITES_BEFORE: u64 = 40;
const WRITES_DURING: u64 = 40;
const WRITES_ISOLATED: u64 = 5;
/// How long one write may take before its outcome counts as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on simulated time for the whole scenario.
const SIM_DURATION: Duration = Duration::from_secs(120);
const DEFAULT_SEED: u64 = 0x5eed_7a5b;
/// One-way message latency bound: a LAN. Kept well below the 50 ms heartbeat because the Raft
/// network times every AppendEntries out after openraft's `RPCOption::hard_ttl()` (= the
/// heartbeat interval) and then drops the shared connection (`raft/src/network/peer.rs`); with
/// turmoil's default 100 ms bound nearly every RPC times out. See the report on `rpc_timeout_ms`.
const MAX_MESSAGE_LATENCY: Duration = Duration::from_millis(10);

type SimResult = Result<(), Box<dyn std::error::Error>>;
/// A log as `(index, base_offset, payload)` per frame.
type Frames = Vec<(u64, u64, Bytes)>;

fn seed() -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// A marker stored at the start of each task payload so the checks can find a write.
fn tag(n: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(b"SIMWRITE");
    t[8..].copy_from_slice(&n.to_le_bytes());
    t
}

/// A one-record produce command whose payload starts with `tag(n)`.
fn produce(n: u64) -> Command {
    let mut payload = tag(n).to_vec();
    payload.resize(64, 0);
    let mut b = BatchBuilder::new(0, 0, 1_000);
    b.push(TaskRecord::new(payload, 1_000)).expect("push");
    Command::Produce {
        now_ms: 1_000,
        batch: b.finish().into_bytes(),
    }
}

fn group(node: &SimNode) -> Option<Group> {
    node.raft()?.group(G)
}

/// The node that currently leads, among `candidates`.
fn leader_among(nodes: &[SimNode], candidates: &[NodeId]) -> Option<(NodeId, Group)> {
    nodes
        .iter()
        .filter(|n| candidates.contains(&n.id))
        .filter_map(|n| group(n).map(|g| (n.id, g)))
        .find(|(_, g)| g.is_leader())
}

async fn wait_leader_among(nodes: &[SimNode], candidates: &[NodeId]) -> (NodeId, Group) {
    loop {
        if let Some(l) = leader_among(nodes, candidates) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `ns` through whichever of `candidates` leads, retrying refusals (not appended), as
/// a client would. Returns the acknowledged writes and their offsets.
async fn write_through_leader(
    nodes: &[SimNode],
    candidates: &[NodeId],
    ns: std::ops::Range<u64>,
) -> BTreeMap<u64, u64> {
    let done = stream::iter(ns)
        .map(|n| async move {
            for _ in 0..50 {
                let Some((_, g)) = leader_among(nodes, candidates) else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match tokio::time::timeout(WRITE_TIMEOUT, g.write(produce(n))).await {
                    Ok(Ok(Response::Produce(ProduceOutcome::Appended { base_offset, .. }))) => {
                        return Some((n, base_offset))
                    }
                    Ok(Ok(other)) => panic!("write {n}: unexpected response {other:?}"),
                    Ok(Err(e)) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Ok(Err(e)) => panic!("write {n}: {e}"),
                    // Unknown outcome: it may still commit, so it is not retried.
                    Err(_) => {
                        tracing::warn!(n, metrics = ?g.metrics(), elapsed = ?turmoil::elapsed(), "write timed out");
                        return None;
                    }
                }
            }
            None
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    done.into_iter().flatten().collect()
}

/// Every frame `(index, base_offset, payload)` of `G` on `node`, from its first index.
async fn log_frames(node: &RaftNode) -> Frames {
    let g = node.group(G).expect("group");
    let log = g.log();
    let mut out = Vec::new();
    let mut next = log.first_index();
    while next < log.next_index() {
        let frames = log.read(next, 1024, 4 << 20).await.expect("read");
        for f in frames {
            next = f.index + 1;
            out.push((f.index, f.base_offset, f.payload));
        }
    }
    out
}

/// Samples every node's (term, is_leader) until the driver ends; records leaders per term.
async fn watch_leaders(nodes: Vec<SimNode>, seen: Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>) {
    loop {
        for n in &nodes {
            if let Some(g) = group(n) {
                let m = g.metrics();
                if m.is_leader {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(m.term)
                        .or_default()
                        .insert(n.id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn driver(nodes: Vec<SimNode>) -> SimResult {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = tokio::spawn(watch_leaders(nodes.clone(), seen.clone()));
    while nodes.iter().any(|n| group(n).is_none()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    group(&nodes[0])
        .expect("group")
        .initialize(&members(NODES))
        .await?;
    let (old_leader, _) = wait_leader_among(&nodes, &NODES).await;
    tracing::info!(old_leader, "leader elected");

    let mut acked = write_through_leader(&nodes, &NODES, 0..WRITES_BEFORE).await;
    assert_eq!(
        acked.len() as u64,
        WRITES_BEFORE,
        "every write on a healthy cluster is acknowledged"
    );

    // Cut the leader off from both followers.
    let followers: Vec<NodeId> = NODES.into_iter().filter(|i| *i != old_leader).collect();
    for f in &followers {
        turmoil::partition(host_name(old_leader), host_name(*f));
    }
    tracing::info!(old_leader, "leader partitioned");

    // Writes on the isolated old leader cannot reach a quorum: none may be acknowledged.
    let isolated = group(&nodes[(old_leader - 1) as usize]).expect("group");
    let isolated_writes = stream::iter(1_000..1_000 + WRITES_ISOLATED)
        .map(|n| {
            let g = isolated.clone();
            async move { tokio::time::timeout(WRITE_TIMEOUT, g.write(produce(n))).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let (isolated_results, (new_leader, new_group)) =
        tokio::join!(isolated_writes, wait_leader_among(&nodes, &followers));
    for r in &isolated_results {
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a write on the isolated old leader was acknowledged: {r:?}"
        );
    }
    tracing::info!(new_leader, term = new_group.metrics().term, "new leader");

    let during = write_through_leader(
        &nodes,
        &followers,
        WRITES_BEFORE..WRITES_BEFORE + WRITES_DURING,
    )
    .await;
    assert_eq!(
        during.len() as u64,
        WRITES_DURING,
        "the majority side acknowledges every write"
    );
    acked.extend(during);

    // Heal; the old leader rejoins, drops its unreplicated entries and catches up.
    for f in &followers {
        turmoil::repair(host_name(old_leader), host_name(*f));
    }
    // The isolated node may still believe it leads its old term: take the highest commit
    // index any node knows (the new leader's covers every acknowledged write).
    let commit = nodes
        .iter()
        .filter_map(|n| group(n)?.metrics().commit_index)
        .max()
        .expect("commit index");
    for n in &nodes {
        let g = group(n).expect("group");
        assert!(
            g.wait_applied(commit, Duration::from_secs(30)).await,
            "node {} did not apply up to {commit}",
            n.id
        );
    }
    watcher.abort();

    // The logs agree up to the commit index, and so do the applied high watermarks.
    let mut reference: Option<(NodeId, Frames, u64)> = None;
    for n in &nodes {
        let raft = n.raft().expect("running");
        let frames: Frames = log_frames(&raft)
            .await
            .into_iter()
            .filter(|(i, _, _)| *i <= commit)
            .collect();
        let next_offset = raft.group(G).expect("group").state().read().next_offset;
        // Every acknowledged write is applied on this node, at the offset it was acked with.
        let by_offset: BTreeMap<u64, &Bytes> = frames.iter().map(|(_, o, p)| (*o, p)).collect();
        for (w, offset) in &acked {
            assert!(
                *offset < next_offset,
                "node {}: write {w} not applied",
                n.id
            );
            let payload = by_offset
                .get(offset)
                .unwrap_or_else(|| panic!("node {}: no frame at offset {offset}", n.id));
            assert!(
                payload.windows(16).any(|win| win == tag(*w)),
                "node {}: frame at offset {offset} is not write {w}",
                n.id
            );
        }
        match &reference {
            None => reference = Some((n.id, frames, next_offset)),
            Some((rid, rframes, roffset)) => {
                assert_eq!(*roffset, next_offset, "next_offset of {rid} vs {}", n.id);
                assert!(
                    *rframes == frames,
                    "logs of nodes {rid} and {} differ",
                    n.id
                );
            }
        }
    }

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (term, leaders) in &seen {
        assert!(leaders.len() <= 1, "term {term} had leaders {leaders:?}");
    }
    tracing::info!(acked = acked.len(), terms = ?seen, "checks passed");
    Ok(())
}

#[test]
fn leader_partition_keeps_acknowledged_writes() -> SimResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let seed = seed();
    println!("SIM_SEED={seed}");
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIM_DURATION)
        .max_message_latency(MAX_MESSAGE_LATENCY)
        .build();
    let nodes: Vec<SimNode> = NODES
        .into_iter()
        .map(|id| SimNode::new(id, seed.wrapping_add(id)))
        .collect();
    for n in &nodes {
        let n = n.clone();
        sim.host(host_name(n.id), move || {
            n.clone().run(sim_timing(), vec![G])
        });
    }
    sim.client("driver", driver(nodes.clone()));
    sim.run()
}
