//! Cluster bootstrap, node registration, the partition reconciler, forwarding to the metadata
//! leader and leadership hand-off.
//!
//! Every initial voter opens the metadata group and initialises it with the same voter set
//! (from `--peers`). Identical initialisations are consistent, so the cluster forms from its
//! peer list with no manual step and no designated first node; a restarted node finds its group
//! already initialised and simply resumes.
//!
//! # Invariants
//! - The reconciler only opens groups the metadata places on this node, and only deletes groups
//!   it opened itself whose topic has since left the metadata, or unopened groups whose topic
//!   id is known as deleted: it never deletes data because its metadata is behind.
//! - Every replica initialises a partition group with the same membership (the placement's
//!   replica set), so concurrent initialisations agree.
//!
//! # Design notes
//! - Preferred leader: the first replica of each partition (placement spreads them evenly).
//!   [`rebalance_loop`] hands leadership back to it once it is alive by the quiescence pings
//!   (a stale lag of 0 alone could name a dead node and leave the partition without a leader)
//!   and caught up, in two consecutive checks. `--rebalance-leaders false` turns it off.
//! - Groups of topics deleted while this node was down were never opened by the reconciler:
//!   a sweep after every metadata change deletes the data of unopened groups whose topic id
//!   the metadata knows as deleted (ids are never reused, so this is safe even when the local
//!   metadata is behind).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::Decoder;
use taskbroker_client::proto::{ApiError, BrokerApiClient, NodeId};
use taskbroker_client::transport::{ConnKind, Preamble, Transport};
use taskbroker_raft::{Group, GroupId, RaftNode};

use crate::api::Api;
use crate::config::NodeConfig;

/// How long connecting to another node (TCP + preamble) may take.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How far past a forwarded call's own timeout its tarpc deadline lies (see [`Forwarder::call`]).
const TARPC_DEADLINE_SLACK: Duration = Duration::from_secs(5);
/// Pause between registration attempts (the metadata leader may not be elected yet).
pub const REGISTER_RETRY: Duration = Duration::from_millis(500);
/// The reconciler re-checks even without a metadata change this often (to retry failures and
/// pick up registrations).
pub const RECONCILE_TICK: Duration = Duration::from_secs(2);
/// Most groups the reconciler opens per pass: bounds one pass's work; the next pass continues.
pub const GROUPS_OPENED_PER_PASS_MAX: usize = 256;

/// A replica of rank k initialises a leaderless group only after k times this (see
/// `Group::bootstrap`): long enough for the preferred replica's first election to finish.
pub const BOOTSTRAP_STEP: Duration = Duration::from_secs(4);

/// Opens the metadata group and makes sure it gets initialised: the lowest-id peer forms it,
/// the others step in one after another only if it stays silent.
pub async fn bootstrap(
    raft: &RaftNode,
    config: &NodeConfig,
) -> Result<Group, taskbroker_raft::RaftError> {
    let meta = raft.open_group(GroupId::METADATA).await?;
    let rank = config
        .peers
        .keys()
        .position(|id| *id == config.node_id)
        .unwrap_or(0);
    meta.bootstrap(&config.peers, rank, BOOTSTRAP_STEP).await?;
    Ok(meta)
}

/// Registers this node (id, advertised client address, advertised HTTP address: never a
/// wildcard bind address, see [`NodeConfig::advertised_http`]) in the metadata, retrying
/// until it succeeds (or forever while there is no metadata leader).
pub async fn register(api: Api, config: NodeConfig) {
    let mut attempts: u64 = 0;
    loop {
        let registered = api
            .meta()
            .state()
            .read()
            .metadata()
            .and_then(|m| m.node(config.node_id).cloned());
        let http = config.advertised_http();
        if let Some(n) = registered {
            if n.addr == config.advertise && n.http_addr.as_deref() == Some(http.as_str()) {
                tracing::info!(node = config.node_id, "registered in the cluster metadata");
                return;
            }
        }
        match api
            .register_node_via_controller(
                config.node_id,
                config.advertise.clone(),
                Some(http.clone()),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(node = config.node_id, "registered in the cluster metadata");
                return;
            }
            Err(e) => {
                attempts += 1;
                if attempts.is_multiple_of(20) {
                    tracing::warn!(error = %e, attempts, "node registration still failing");
                } else {
                    tracing::debug!(error = %e, "node registration failed, retrying");
                }
            }
        }
        tokio::time::sleep(REGISTER_RETRY).await;
    }
}

/// Watches the metadata and opens, initialises and deletes this node's partition groups.
pub async fn reconcile_loop(api: Api) {
    let mut watch = api.meta().state().watch_applied();
    let mut opened: BTreeSet<GroupId> = BTreeSet::new();
    let mut swept_version = None;
    loop {
        reconcile_once(&api, &mut opened).await;
        sweep_deleted_topics(&api, &mut swept_version).await;
        tokio::select! {
            biased;
            changed = watch.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(RECONCILE_TICK) => {}
        }
    }
}

async fn reconcile_once(api: &Api, opened: &mut BTreeSet<GroupId>) {
    let me = api.settings().node_id;
    // (group, replicas) placed on this node.
    let wanted: BTreeMap<GroupId, Vec<NodeId>> = {
        let guard = api.meta().state().read();
        let Some(m) = guard.metadata() else { return };
        m.partitions_on_node(me)
            .map(|(_, p)| (GroupId(p.group_id), p.replicas.clone()))
            .collect()
    };
    let raft = api.raft().clone();
    let mut opened_now = 0;
    for (gid, replicas) in &wanted {
        if raft.group(*gid).is_some() && opened.contains(gid) {
            continue;
        }
        if opened_now >= GROUPS_OPENED_PER_PASS_MAX {
            break;
        }
        opened_now += 1;
        let members: Option<BTreeMap<NodeId, String>> = replicas
            .iter()
            .map(|id| api.raft_addr(*id).map(|a| (*id, a)))
            .collect();
        let Some(members) = members else {
            tracing::debug!(group = %gid, "replica address unknown yet; retrying later");
            continue;
        };
        match raft.open_group(*gid).await {
            Ok(g) => match g
                .bootstrap(
                    &members,
                    replicas.iter().position(|r| *r == me).unwrap_or(0),
                    BOOTSTRAP_STEP,
                )
                .await
            {
                Ok(()) => {
                    opened.insert(*gid);
                    tracing::info!(group = %gid, ?replicas, "partition group running");
                }
                Err(e) => tracing::warn!(group = %gid, error = %e, "initialising partition group"),
            },
            Err(e) => tracing::warn!(group = %gid, error = %e, "opening partition group"),
        }
    }
    let gone: Vec<GroupId> = opened
        .iter()
        .filter(|g| !wanted.contains_key(g))
        .copied()
        .collect();
    for gid in gone {
        api.forget_batcher(gid);
        match raft.delete_group(gid).await {
            Ok(()) => {
                opened.remove(&gid);
                tracing::info!(group = %gid, "partition group deleted");
            }
            Err(e) => tracing::warn!(group = %gid, error = %e, "deleting partition group"),
        }
    }
}

/// Deletes the on-disk data of partition groups whose topic has been deleted and that this
/// node is not running (their topic was deleted while the node was down, so the reconciler
/// never opened them). Runs once per metadata version.
async fn sweep_deleted_topics(api: &Api, swept_version: &mut Option<u64>) {
    let version = api.meta().state().read().metadata().map(|m| m.version());
    if version.is_none() || version == *swept_version {
        return;
    }
    let raft = api.raft().clone();
    let mut failed = false;
    for gid in raft.groups_on_disk().await {
        if gid.is_metadata() || raft.group(gid).is_some() {
            continue;
        }
        let deleted = api
            .meta()
            .state()
            .read()
            .metadata()
            .is_some_and(|m| m.is_deleted_topic_id(gid.topic_id()));
        if !deleted || !raft.group_has_data(gid).await {
            continue;
        }
        match raft.delete_group(gid).await {
            Ok(()) => {
                tracing::info!(group = %gid, "deleted the data of a deleted topic's partition")
            }
            Err(e) => {
                failed = true;
                tracing::warn!(group = %gid, error = %e, "deleting a deleted topic's partition data");
            }
        }
    }
    if !failed {
        *swept_version = version;
    }
}

/// How often a node checks whether to hand partitions back to their preferred replicas.
pub const REBALANCE_TICK: Duration = Duration::from_secs(3);
/// A preferred replica gets leadership back only after it was seen alive and fully caught up
/// in this many consecutive checks: a node that just restarted settles first.
pub const REBALANCE_STABLE_CHECKS: u32 = 2;
/// A peer counts as alive if it answered a liveness ping this recently.
pub const REBALANCE_ALIVE_WITHIN: Duration = Duration::from_secs(2);
/// Most leadership transfers one node starts per check: spreads a restarted node's
/// elections over a few seconds instead of one burst.
pub const REBALANCE_TRANSFERS_PER_CHECK_MAX: usize = 16;

/// Hands the partitions this node leads back to their preferred replica (the first replica
/// in placement, which placement spreads evenly) once that node is alive (answers liveness
/// pings) and its log has caught up with this leader's, in [`REBALANCE_STABLE_CHECKS`]
/// consecutive checks. After a node restarts, leadership thus returns to it and partitions
/// are spread again. Needs quiescence pings for liveness (on by default); without them it
/// does nothing.
pub async fn rebalance_loop(api: Api) {
    let mut stable: BTreeMap<GroupId, u32> = BTreeMap::new();
    loop {
        tokio::time::sleep(REBALANCE_TICK).await;
        rebalance_once(&api, &mut stable).await;
    }
}

async fn rebalance_once(api: &Api, stable: &mut BTreeMap<GroupId, u32>) {
    let me = api.settings().node_id;
    let raft = api.raft().clone();
    let mut eligible: BTreeMap<GroupId, NodeId> = BTreeMap::new();
    for gid in raft.led_groups() {
        if gid.is_metadata() {
            continue;
        }
        let Some(g) = raft.group(gid) else { continue };
        let preferred = api
            .meta()
            .state()
            .read()
            .metadata()
            .and_then(|m| m.partition_by_group_id(gid.0))
            .and_then(|(_, p)| p.replicas.first().copied());
        let Some(preferred) = preferred.filter(|p| *p != me) else {
            continue;
        };
        let m = g.metrics();
        let caught_up = m.is_leader
            && m.voters.contains(&preferred)
            && m.follower_lag.get(&preferred) == Some(&0);
        let alive = raft.peer_alive(preferred, REBALANCE_ALIVE_WITHIN) == Some(true);
        if caught_up && alive {
            eligible.insert(gid, preferred);
        }
    }
    stable.retain(|gid, _| eligible.contains_key(gid));
    let mut started = 0;
    for (gid, preferred) in eligible {
        let seen = stable.entry(gid).or_insert(0);
        *seen += 1;
        if *seen < REBALANCE_STABLE_CHECKS || started >= REBALANCE_TRANSFERS_PER_CHECK_MAX {
            continue;
        }
        let Some(g) = raft.group(gid) else { continue };
        match g.transfer_leader(preferred).await {
            Ok(()) => {
                started += 1;
                stable.remove(&gid);
                tracing::info!(group = %gid, to = preferred, "handing leadership back to the preferred replica");
            }
            Err(e) => tracing::debug!(group = %gid, error = %e, "leadership transfer refused"),
        }
    }
}

/// Hands leadership of every group this node leads to another voter, waiting briefly for each.
pub async fn hand_off_leadership(raft: &RaftNode, config: &NodeConfig) {
    for id in raft.group_ids() {
        let Some(g) = raft.group(id) else { continue };
        if !g.is_leader() {
            continue;
        }
        let m = g.metrics();
        let Some(to) = m.voters.iter().copied().find(|v| *v != config.node_id) else {
            continue;
        };
        if let Err(e) = g.transfer_leader(to).await {
            tracing::warn!(group = %id, error = %e, "leadership hand-off failed");
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while g.is_leader() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A small pool of `BrokerApi` clients to other nodes (one per node), for forwarding metadata
/// writes and asking about partitions hosted elsewhere. A client is dropped after a transport
/// error or timeout, so the next call reconnects.
#[derive(Clone)]
pub struct Forwarder {
    transport: Arc<dyn Transport>,
    clients: Arc<tokio::sync::Mutex<BTreeMap<NodeId, (String, BrokerApiClient)>>>,
}

impl Forwarder {
    /// A pool connecting over `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Forwarder {
        Forwarder {
            transport,
            clients: Arc::new(tokio::sync::Mutex::new(BTreeMap::new())),
        }
    }

    async fn client(&self, node: NodeId, addr: &str) -> Result<BrokerApiClient, ApiError> {
        let mut clients = self.clients.lock().await;
        if let Some((a, c)) = clients.get(&node) {
            if a == addr {
                return Ok(c.clone());
            }
        }
        let unavailable = |reason: String| ApiError::Unavailable {
            reason: format!("cannot reach node {node} at {addr}: {reason}"),
        };
        let conn = tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, async {
            let mut conn = self.transport.connect(addr).await?;
            Preamble {
                kind: ConnKind::Client,
            }
            .write(&mut conn)
            .await?;
            Ok::<_, std::io::Error>(conn)
        })
        .await
        .map_err(|_| unavailable("connect timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        let framed = taskbroker_client::proto::framing::codec().framed(conn);
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        let client = BrokerApiClient::new(tarpc::client::Config::default(), transport).spawn();
        clients.insert(node, (addr.to_string(), client.clone()));
        Ok(client)
    }

    async fn drop_client(&self, node: NodeId) {
        self.clients.lock().await.remove(&node);
    }

    /// Calls `node` at `addr` with a deadline of `timeout`.
    pub async fn call<T, F, Fut>(
        &self,
        node: NodeId,
        addr: &str,
        timeout: Duration,
        f: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(BrokerApiClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, ApiError>, tarpc::client::RpcError>>,
    {
        let client = self.client(node, addr).await?;
        let mut ctx = tarpc::context::current();
        // tarpc turns the deadline into a timer from the wall clock; our own (tokio-clock)
        // timeout must be the one that fires, or the outcome depends on real time (and a
        // simulation stops replaying its seed).
        ctx.deadline = std::time::Instant::now() + timeout + TARPC_DEADLINE_SLACK;
        match tokio::time::timeout(timeout, f(client, ctx)).await {
            Err(_) => {
                self.drop_client(node).await;
                Err(ApiError::Timeout)
            }
            Ok(Err(e)) => {
                self.drop_client(node).await;
                Err(ApiError::Unavailable {
                    reason: format!("node {node}: {e}"),
                })
            }
            Ok(Ok(r)) => r,
        }
    }
}
