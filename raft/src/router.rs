//! Multi-raft: one [`RaftNode`] per process hosts the metadata group and any number of
//! partition groups, starts and stops them at run time, and dispatches incoming Raft RPCs by
//! group id.
//!
//! # Layout on disk
//! `<data_dir>/groups/<group id, 20 digits>/log/` holds the segment log (entries, vote, purge
//! point); `.../snap/` the two snapshot slots.
//!
//! # Design notes
//! - All groups share one connection per peer ([`crate::network::peer::Peers`]).
//! - Idle cost: every group heartbeats on its own timer. Timing is tunable ([`RaftTiming`]);
//!   the defaults trade a ~1–2 s failover for a low idle cost with hundreds of groups.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use taskbroker_client::transport::{BoxConn, Transport};
use taskbroker_storage::io::Disk;
use taskbroker_storage::{Log, LogConfig};

use crate::apply::{GroupStateMachine, SharedState};
use crate::command::{Command, Response};
use crate::error::RaftError;
use crate::log_store::{LogHints, LogStore};
use crate::network::peer::{GroupNetworkFactory, Peers};
use crate::snapshot::SnapshotStore;
use crate::types::{typ, GroupId, NodeId};

/// Election and heartbeat timing, shared by every group of a node.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat period, ms.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout, ms (> 2x heartbeat).
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Deadline for sending one whole snapshot, ms (snapshots are queue state, but can be
    /// tens of MB for partitions with millions of queued tasks).
    pub snapshot_timeout_ms: u64,
    /// Deadline for one AppendEntries/Vote RPC, ms.
    pub rpc_timeout_ms: u64,
    /// Quiesce idle groups (see [`crate::quiesce`]): no ticks or heartbeats while idle.
    pub quiesce: bool,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval_ms: 300,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every_entries: 20_000,
            snapshot_timeout_ms: 120_000,
            rpc_timeout_ms: 2_000,
            quiesce: true,
        }
    }
}

/// Settings of a [`RaftNode`].
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// Where the groups' logs and snapshots live.
    pub data_dir: PathBuf,
    /// Timing of every group.
    pub timing: RaftTiming,
    /// Segment log settings of every group.
    pub log: LogConfig,
}

/// A hosted group: its Raft instance, applied state and log.
#[derive(Clone)]
pub struct Group {
    id: GroupId,
    node: NodeId,
    raft: typ::Raft,
    state: SharedState,
    log: Log,
}

/// A point-in-time view of one group's Raft state (for metrics and status).
#[derive(Debug, Clone, Default)]
pub struct GroupMetrics {
    /// Current term.
    pub term: u64,
    /// Whether this node leads the group.
    pub is_leader: bool,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Committed index.
    pub commit_index: Option<u64>,
    /// Applied index.
    pub applied_index: Option<u64>,
    /// Index up to which openraft considers the log purged (entries before it are reached
    /// only through a snapshot; frames whose tasks are still needed stay on disk).
    pub purged_index: Option<u64>,
    /// Voter ids.
    pub voters: Vec<NodeId>,
    /// Learner ids.
    pub learners: Vec<NodeId>,
    /// Leader only: per follower, entries it is behind the leader's last log index.
    pub follower_lag: BTreeMap<NodeId, u64>,
}

fn members_to_nodes(members: &BTreeMap<NodeId, String>) -> BTreeMap<NodeId, BasicNode> {
    members
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect()
}

impl Group {
    /// The group id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    pub(crate) fn raft_handle(&self) -> &typ::Raft {
        &self.raft
    }

    /// The applied state (read-only).
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The group's segment log (the partition log: task payloads are read from it).
    pub fn log(&self) -> &Log {
        &self.log
    }

    fn err_stopped(&self, e: impl std::fmt::Display) -> RaftError {
        RaftError::Stopped {
            group: self.id,
            reason: e.to_string(),
        }
    }

    fn map_write_err(
        &self,
        e: openraft::errors::RaftError<crate::TypeConfig, ClientWriteError<crate::TypeConfig>>,
    ) -> RaftError {
        match e {
            openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                RaftError::NotLeader {
                    group: self.id,
                    leader_hint: f.leader_id,
                }
            }
            openraft::errors::RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => {
                RaftError::Membership {
                    group: self.id,
                    reason: m.to_string(),
                }
            }
            openraft::errors::RaftError::APIError(other) => RaftError::Unavailable {
                group: self.id,
                reason: other.to_string(),
            },
            openraft::errors::RaftError::Fatal(f) => self.err_stopped(f),
        }
    }

    /// Forms the group with `members` (id -> Raft address) as voters. Idempotent: a group that
    /// is already initialised (here or through a peer) is left as it is.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, String>) -> Result<(), RaftError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| self.err_stopped(e))?
        {
            return Ok(());
        }
        match self.raft.initialize(members_to_nodes(members)).await {
            Ok(()) => Ok(()),
            Err(openraft::errors::RaftError::APIError(e)) => {
                tracing::debug!(group = %self.id, error = %e, "initialize: already initialised");
                Ok(())
            }
            Err(openraft::errors::RaftError::Fatal(f)) => Err(self.err_stopped(f)),
        }
    }

    /// Forms the group without an election storm: the replica of `rank` 0 (the preferred
    /// leader) initialises at once; the replica of rank k waits `k * step` and initialises only
    /// if by then the group is still uninitialised here and no leader is known (the preferred
    /// replica is down). Several replicas initialising at the same instant would all vote for
    /// themselves in the same term and split the first election.
    ///
    /// Returns at once; the delayed initialisation runs in the background.
    pub async fn bootstrap(
        &self,
        members: &BTreeMap<NodeId, String>,
        rank: usize,
        step: Duration,
    ) -> Result<(), RaftError> {
        if rank == 0 {
            return self.initialize(members).await;
        }
        let g = self.clone();
        let members = members.clone();
        tokio::spawn(async move {
            tokio::time::sleep(step * rank as u32).await;
            let initialised = g.raft.is_initialized().await.unwrap_or(true);
            if !initialised && g.leader().is_none() {
                tracing::info!(group = %g.id, rank, "preferred replica silent; initialising");
                if let Err(e) = g.initialize(&members).await {
                    tracing::warn!(group = %g.id, error = %e, "delayed initialise");
                }
            }
        });
        Ok(())
    }

    /// Proposes `cmd` and waits until it is committed and applied; returns the state machine's
    /// answer. Fails with [`RaftError::NotLeader`] on a follower.
    pub async fn write(&self, cmd: Command) -> Result<Response, RaftError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(self.map_write_err(e)),
        }
    }

    /// Whether this node currently leads the group.
    ///
    /// A node that just initialised the group counts itself leader of term 0 for a moment
    /// before its first real election; that is not leadership anyone can use, so it is ignored.
    pub fn is_leader(&self) -> bool {
        self.raft.is_leader() && self.raft.metrics().borrow_watched().current_term > 0
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        if m.current_term == 0 {
            return None;
        }
        m.current_leader
    }

    /// Waits until the group has a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                {
                    let m = rx.borrow_watched();
                    if let (Some(l), true) = (m.current_leader, m.current_term > 0) {
                        return l;
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Waits until this node has applied at least `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if rx
                    .borrow_watched()
                    .last_applied
                    .is_some_and(|l| l.index >= index)
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// A snapshot of the group's Raft metrics.
    pub fn metrics(&self) -> GroupMetrics {
        let m = self.raft.metrics().borrow_watched().clone();
        let last = m.last_log_index;
        let follower_lag = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != self.node)
                    .map(|(id, matched)| {
                        let matched = matched.map(|l| l.index + 1).unwrap_or(0);
                        (
                            *id,
                            last.map(|l| l + 1).unwrap_or(0).saturating_sub(matched),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let membership = m.membership_config.membership();
        GroupMetrics {
            term: m.current_term,
            is_leader: m.state == ServerState::Leader,
            leader: m.current_leader,
            last_log_index: last,
            commit_index: m.local_committed.map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            follower_lag,
        }
    }

    /// Adds `node` (Raft address `addr`) as a learner and waits until it has caught up.
    pub async fn add_learner(&self, node: NodeId, addr: &str) -> Result<(), RaftError> {
        self.raft
            .add_learner(node, BasicNode { addr: addr.into() }, true)
            .await
            .map(|_| ())
            .map_err(|e| self.map_write_err(e))
    }

    /// Makes exactly `voters` the voting members (they must be members already, e.g. learners);
    /// removed voters stay as learners only if `keep_removed` is set.
    pub async fn change_voters(
        &self,
        voters: BTreeSet<NodeId>,
        keep_removed: bool,
    ) -> Result<(), RaftError> {
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters), keep_removed)
            .await
            .map(|_| ())
            .map_err(|e| self.map_write_err(e))
    }

    /// Asks the leader to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| self.err_stopped(e))
    }

    /// Builds a snapshot now.
    pub async fn snapshot(&self) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| self.err_stopped(e))
    }

    /// Purges the Raft log up to `index` (inclusive) once a snapshot covers it; the physical
    /// purge keeps frames whose tasks some group still needs.
    pub async fn purge_log(&self, index: u64) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| self.err_stopped(e))
    }
}

/// The multi-raft host of one node.
pub struct RaftNode {
    config: RaftNodeConfig,
    disk: Arc<dyn Disk>,
    peers: Peers,
    groups: RwLock<BTreeMap<GroupId, Group>>,
    opening: tokio::sync::Mutex<()>,
    quiescer: Option<Arc<crate::quiesce::Quiescer>>,
    incarnation: u64,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.config.id)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// A node with no groups yet. Incoming Raft connections are handed to
    /// [`RaftNode::serve_connection`]; outgoing ones use `transport`.
    ///
    /// Must be called inside a tokio runtime: with `timing.quiesce` it spawns the quiescence
    /// loop, which ends when the node is dropped.
    pub fn new(
        config: RaftNodeConfig,
        disk: Arc<dyn Disk>,
        transport: Arc<dyn Transport>,
    ) -> Arc<RaftNode> {
        let quiesce = config.timing.quiesce;
        let interval = Duration::from_millis(config.timing.heartbeat_interval_ms);
        let alive_within = Duration::from_millis(config.timing.election_timeout_min_ms);
        let quiescer = quiesce.then(|| Arc::new(crate::quiesce::Quiescer::default()));
        let disk_for_seed = disk.clone();
        let node = Arc::new(RaftNode {
            config,
            disk,
            peers: Peers::new(transport),
            groups: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            quiescer: quiescer.clone(),
            incarnation: disk_for_seed.random_u64(),
        });
        if let Some(q) = quiescer {
            tokio::spawn(crate::quiesce::run(
                Arc::downgrade(&node),
                q,
                interval,
                alive_within,
            ));
        }
        node
    }

    /// A random number drawn when this node started (seeded by the disk backend, so
    /// simulations stay deterministic): peers see a restart as a new incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// How many hosted groups are quiesced (not ticking) right now.
    pub fn quiesced_groups(&self) -> usize {
        self.quiescer.as_ref().map_or(0, |q| q.quiet_count())
    }

    /// The groups this node currently leads.
    pub fn led_groups(&self) -> Vec<GroupId> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|g| g.is_leader())
            .map(|g| g.id)
            .collect()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The disk backend the groups write to.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub(crate) fn raft_of(&self, group: GroupId) -> Option<typ::Raft> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .map(|g| g.raft.clone())
    }

    /// A hosted group.
    pub fn group(&self, group: GroupId) -> Option<Group> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// The ids of every hosted group.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    fn group_dir(&self, group: GroupId) -> PathBuf {
        self.config
            .data_dir
            .join("groups")
            .join(format!("{:020}", group.0))
    }

    fn openraft_config(&self, group: GroupId) -> Result<Config, RaftError> {
        let t = &self.config.timing;
        let config = Config {
            cluster_name: format!("taskbroker-{group}"),
            heartbeat_interval: t.heartbeat_interval_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            install_snapshot_timeout: t.snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            // Keep a long tail of entries behind each snapshot: a lagging follower catches up from
            // the log (payloads included) and needs a snapshot only when it is this far behind.
            max_in_snapshot_log_to_keep: 100_000,
            max_payload_entries: 256,
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        config.validate().map_err(|e| RaftError::Unavailable {
            group,
            reason: format!("invalid raft config: {e}"),
        })
    }

    /// Opens (or returns the already open) `group`: its log, snapshot and Raft instance.
    pub async fn open_group(&self, group: GroupId) -> Result<Group, RaftError> {
        let _guard = self.opening.lock().await;
        if let Some(g) = self.group(group) {
            return Ok(g);
        }
        let dir = self.group_dir(group);
        self.disk.create_dir_all(&dir.join("snap")).await?;
        let log = Log::open(self.disk.clone(), dir.join("log"), self.config.log.clone()).await?;
        let hints = if group.is_metadata() {
            LogHints::unretained()
        } else {
            Arc::new(LogHints::default())
        };
        let log_store = LogStore::open(log.clone(), hints.clone()).await?;
        let snapshots = SnapshotStore::new(self.disk.clone(), dir.join("snap"));
        let sm = GroupStateMachine::open(group, snapshots, hints).await?;
        let state = sm.shared();
        let network = GroupNetworkFactory::new(
            group,
            self.peers.clone(),
            Duration::from_millis(self.config.timing.snapshot_timeout_ms),
            Duration::from_millis(self.config.timing.rpc_timeout_ms),
        );
        let config = Arc::new(self.openraft_config(group)?);
        let raft = typ::Raft::new(self.config.id, config, network, log_store, sm)
            .await
            .map_err(|e| RaftError::Stopped {
                group,
                reason: e.to_string(),
            })?;
        let g = Group {
            id: group,
            node: self.config.id,
            raft,
            state,
            log,
        };
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, g.clone());
        tracing::debug!(node = self.config.id, %group, "group opened");
        Ok(g)
    }

    /// Stops `group` (its Raft instance and log); its data stays on disk.
    pub async fn close_group(&self, group: GroupId) -> Result<(), RaftError> {
        let g = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        if let Some(g) = g {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(%group, error = %e, "raft shutdown");
            }
            g.log.close().await?;
        }
        Ok(())
    }

    /// Stops `group` and deletes its data (the group was moved away or its topic deleted).
    pub async fn delete_group(&self, group: GroupId) -> Result<(), RaftError> {
        self.close_group(group).await?;
        let dir = self.group_dir(group);
        for sub in ["log", "snap"] {
            let d = dir.join(sub);
            if let Ok(names) = self.disk.list_dir(&d).await {
                for name in names {
                    self.disk.remove_file(&d.join(name)).await?;
                }
                self.disk.sync_dir(&d).await?;
            }
        }
        Ok(())
    }

    /// Whether peer `node` answered a liveness ping within `within`; `None` when this node
    /// runs without quiescence (no pings, so no liveness signal).
    pub fn peer_alive(&self, node: NodeId, within: Duration) -> Option<bool> {
        self.quiescer.as_ref().map(|q| q.peer_alive(node, within))
    }

    /// Every group with a directory under this node's data directory, open or not (a group
    /// deleted by [`RaftNode::delete_group`] keeps its empty directory).
    pub async fn groups_on_disk(&self) -> Vec<GroupId> {
        let dir = self.config.data_dir.join("groups");
        let names = self.disk.list_dir(&dir).await.unwrap_or_default();
        names
            .iter()
            .filter_map(|n| n.parse::<u64>().ok())
            .map(GroupId)
            .collect()
    }

    /// Whether `group` has any log or snapshot file on disk.
    pub async fn group_has_data(&self, group: GroupId) -> bool {
        let dir = self.group_dir(group);
        for sub in ["log", "snap"] {
            if self
                .disk
                .list_dir(&dir.join(sub))
                .await
                .is_ok_and(|names| !names.is_empty())
            {
                return true;
            }
        }
        false
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for id in self.group_ids() {
            if let Err(e) = self.close_group(id).await {
                tracing::warn!(group = %id, error = %e, "closing group");
            }
        }
    }

    /// Serves Raft RPCs on an accepted connection whose preamble said `Raft`.
    pub async fn serve_connection(self: Arc<Self>, conn: BoxConn) {
        crate::network::service::serve_connection(self, conn).await
    }
}
