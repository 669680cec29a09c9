//! Quiescence: idle groups stop ticking and heartbeating, so a node can host thousands of
//! partition groups at a small idle cost.
//!
//! Every group heartbeating on its own timer costs CPU in proportion to the number of groups,
//! even when nothing happens. Instead, nodes exchange one cheap ping per peer pair
//! (every heartbeat interval, the heartbeat interval), and each ping answer lists the groups the
//! peer leads. Then:
//!
//! - a **leader** whose log has not moved and whose followers have all caught up for
//!   [`QUIESCE_AFTER_IDLE`] stops its ticker and heartbeats (openraft `tick(false)`,
//!   `heartbeat(false)`); any new write replicates at once (replication does not need the
//!   ticker), and the group stays awake until it is idle again;
//! - a **follower** whose leader's node answers pings *and* still reports leading the group
//!   stops its ticker and elections; as soon as that node stops answering (crash, partition) or
//!   stops leading the group, the follower ticks and may elect again.
//!
//! # Invariants
//! - Safety never depends on this module: it only switches openraft's timers. Raft's votes and
//!   terms decide leadership as always; a wrong guess here can delay an election, never make
//!   two leaders in a term.
//! - Failover time after a leader node dies: the ping timeout plus an election timeout.
//!
//! # Design notes
//! This is the "hibernating regions" idea of TiKV and CockroachDB's quiescence, at node level.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use crate::router::RaftNode;
use crate::types::{GroupId, NodeId};

/// How long a leader's group must be idle (log unchanged, followers caught up) to quiesce.
pub const QUIESCE_AFTER_IDLE: Duration = Duration::from_secs(3);
/// A quiet leader wakes for a couple of heartbeats this often, so a follower that missed the
/// last commit index or the leader's identity (a restart, a lost message) learns it.
pub const QUIET_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct PeerView {
    addr: String,
    last_ok: Option<Instant>,
    led: BTreeSet<GroupId>,
    /// The peer's process incarnation from its last answer.
    incarnation: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Awake,
    Quiet,
}

#[derive(Debug)]
struct GroupView {
    last_log: Option<u64>,
    idle_since: Instant,
    mode: Mode,
    /// When a quiet leader last woke to refresh its followers.
    refreshed: Instant,
}

/// Node-level liveness and per-group quiescence state.
#[derive(Debug, Default)]
pub struct Quiescer {
    peers: Mutex<BTreeMap<NodeId, PeerView>>,
    groups: Mutex<BTreeMap<GroupId, GroupView>>,
}

impl Quiescer {
    /// Groups currently quiesced.
    pub fn quiet_count(&self) -> usize {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.values().filter(|g| g.mode == Mode::Quiet).count()
    }

    /// Whether `node` answered a ping within `within` (a liveness signal for decisions such as
    /// handing leadership back to a preferred replica).
    pub fn peer_alive(&self, node: NodeId, within: Duration) -> bool {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get(&node)
            .is_some_and(|p| p.last_ok.is_some_and(|t| now.duration_since(t) <= within))
    }

    /// Whether `node` answered a ping within `within` and reports leading `group`.
    fn leader_alive(&self, node: NodeId, group: GroupId, within: Duration, now: Instant) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&node).is_some_and(|p| {
            p.led.contains(&group) && p.last_ok.is_some_and(|t| now.duration_since(t) <= within)
        })
    }

    /// Some live peer that reports leading `group`.
    fn live_leader_of(&self, group: GroupId, within: Duration, now: Instant) -> Option<NodeId> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .find(|(_, p)| {
                p.led.contains(&group) && p.last_ok.is_some_and(|t| now.duration_since(t) <= within)
            })
            .map(|(id, _)| *id)
    }
}

/// Runs the quiescence loop of `node` until the node is dropped.
pub(crate) async fn run(
    node: Weak<RaftNode>,
    quiescer: Arc<Quiescer>,
    interval: Duration,
    alive_within: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else { return };
        refresh_peers(&node, &quiescer);
        // Peers that (re)appeared since the last round: a restarted follower knows neither the
        // leader nor the commit index until the leader sends something.
        let woke: BTreeSet<NodeId> = ping_peers(&node, &quiescer, alive_within).await;
        let now = Instant::now();
        // A refresh wakes the group for a few heartbeats, then it may quiesce again.
        let refresh_idle_since = now
            .checked_sub(QUIESCE_AFTER_IDLE.saturating_sub(interval * 3))
            .unwrap_or(now);
        for id in node.group_ids() {
            let Some(g) = node.group(id) else { continue };
            let raft = g.raft_handle();
            let m = raft.metrics().borrow_watched().clone();
            let mut groups = quiescer.groups.lock().unwrap_or_else(|p| p.into_inner());
            let view = groups.entry(id).or_insert(GroupView {
                last_log: m.last_log_index,
                idle_since: now,
                mode: Mode::Awake,
                refreshed: now,
            });
            if view.last_log != m.last_log_index {
                view.last_log = m.last_log_index;
                view.idle_since = now;
            }
            let is_leader = m.state == openraft::ServerState::Leader;
            if is_leader {
                let member_woke = m
                    .membership_config
                    .membership()
                    .nodes()
                    .any(|(nid, _)| woke.contains(nid));
                let refresh_due =
                    view.mode == Mode::Quiet && now.duration_since(view.refreshed) >= QUIET_REFRESH;
                if member_woke || refresh_due {
                    view.refreshed = now;
                    view.idle_since = view.idle_since.max(refresh_idle_since);
                }
            }
            let want = if is_leader {
                let caught_up = m.replication.as_ref().is_some_and(|r| {
                    r.values()
                        .all(|matched| matched.map(|l| l.index) == m.last_log_index)
                });
                if caught_up && now.duration_since(view.idle_since) >= QUIESCE_AFTER_IDLE {
                    Mode::Quiet
                } else {
                    Mode::Awake
                }
            } else {
                let leader_alive = match m.current_leader {
                    Some(l) if l != node.id() => quiescer.leader_alive(l, id, alive_within, now),
                    Some(_) => false,
                    None => quiescer.live_leader_of(id, alive_within, now).is_some(),
                };
                if leader_alive {
                    Mode::Quiet
                } else {
                    Mode::Awake
                }
            };
            if want != view.mode {
                view.mode = want;
                let rc = raft.runtime_config();
                match (want, is_leader) {
                    (Mode::Quiet, true) => {
                        rc.heartbeat(false);
                        rc.tick(false);
                    }
                    (Mode::Quiet, false) => {
                        rc.elect(false);
                        rc.tick(false);
                    }
                    (Mode::Awake, _) => {
                        rc.heartbeat(true);
                        rc.elect(true);
                        rc.tick(true);
                    }
                }
                tracing::trace!(node = node.id(), group = %id, ?want, is_leader, "quiescence");
            }
        }
        // Forget closed groups.
        let open: BTreeSet<GroupId> = node.group_ids().into_iter().collect();
        quiescer
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|g, _| open.contains(g));
    }
}

/// Learns peers and their Raft addresses from the memberships of the hosted groups.
fn refresh_peers(node: &RaftNode, q: &Quiescer) {
    let mut found: BTreeMap<NodeId, String> = BTreeMap::new();
    for id in node.group_ids() {
        let Some(g) = node.group(id) else { continue };
        let m = g
            .raft_handle()
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        for (nid, n) in m.membership().nodes() {
            if *nid != node.id() {
                found.insert(*nid, n.addr.clone());
            }
        }
    }
    let mut peers = q.peers.lock().unwrap_or_else(|p| p.into_inner());
    for (id, addr) in found {
        let e = peers.entry(id).or_insert_with(|| PeerView {
            addr: addr.clone(),
            last_ok: None,
            led: BTreeSet::new(),
            incarnation: None,
        });
        e.addr = addr;
    }
}

/// Pings every peer; returns the peers that answered after not answering within
/// `timeout`, or with a new incarnation (they restarted).
async fn ping_peers(node: &RaftNode, q: &Quiescer, timeout: Duration) -> BTreeSet<NodeId> {
    let targets: Vec<(NodeId, String)> = q
        .peers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(id, p)| (*id, p.addr.clone()))
        .collect();
    let pings = targets.into_iter().map(|(id, addr)| async move {
        let r = node.peers().ping(id, &addr, node.id(), timeout).await;
        (id, r)
    });
    let results = futures::future::join_all(pings).await;
    let now = Instant::now();
    let mut woke = BTreeSet::new();
    let mut peers = q.peers.lock().unwrap_or_else(|p| p.into_inner());
    for (id, r) in results {
        if let (Ok((incarnation, led)), Some(p)) = (r, peers.get_mut(&id)) {
            let was_alive = p
                .last_ok
                .is_some_and(|t| now.duration_since(t) <= timeout * 2);
            if !was_alive || p.incarnation != Some(incarnation) {
                woke.insert(id);
            }
            p.last_ok = Some(now);
            p.led = led.into_iter().collect();
            p.incarnation = Some(incarnation);
        }
    }
    woke
}
