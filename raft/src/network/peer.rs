//! Outgoing Raft connections: one tarpc client per peer node, shared by every group.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use tarpc::tokio_util::codec::Framed;
use taskbroker_client::transport::{ConnKind, Preamble, Transport};

use super::frames::BincodeFrames;
use super::service::{RaftRpcClient, RpcFailure};
use crate::types::{typ, GroupId, NodeId, TypeConfig};

/// How long establishing a connection (TCP + preamble) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack added to tarpc's own deadline so our timeout (on the runtime's clock) fires first.
const TARPC_DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// Errors of an outgoing Raft RPC.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connecting failed.
    #[error("connect to node {node} at {addr}: {reason}")]
    Connect {
        /// Target node.
        node: NodeId,
        /// Its address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The call did not finish before its deadline.
    #[error("rpc to node {node} timed out after {after:?}")]
    Timeout {
        /// Target node.
        node: NodeId,
        /// The deadline.
        after: Duration,
    },
    /// The connection broke during the call.
    #[error("rpc to node {node}: {reason}")]
    Transport {
        /// Target node.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The peer answered with a failure.
    #[error("node {node} refused: {failure}")]
    Remote {
        /// Target node.
        node: NodeId,
        /// Its answer.
        failure: RpcFailure,
    },
}

struct Peer {
    addr: String,
    client: Option<RaftRpcClient>,
    /// Calls that timed out in a row on the current connection.
    timeouts_in_row: u32,
}

/// Timeouts in a row after which a connection is presumed dead and replaced. One slow answer
/// does not mean a broken stream (tarpc multiplexes every group's calls on it), so a single
/// timeout must not tear down the connection all groups share.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// The outgoing connections of one node to its peers.
#[derive(Clone)]
pub struct Peers {
    transport: Arc<dyn Transport>,
    peers: Arc<Mutex<BTreeMap<NodeId, Arc<tokio::sync::Mutex<Peer>>>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Connection pool over `transport`.
    pub fn new(transport: Arc<dyn Transport>) -> Peers {
        Peers {
            transport,
            peers: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn peer(&self, node: NodeId, addr: &str) -> Arc<tokio::sync::Mutex<Peer>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry(node)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Peer {
                    addr: addr.to_string(),
                    client: None,
                    timeouts_in_row: 0,
                }))
            })
            .clone()
    }

    async fn client(&self, node: NodeId, addr: &str) -> Result<RaftRpcClient, PeerError> {
        let peer = self.peer(node, addr);
        let mut p = peer.lock().await;
        if p.addr != addr {
            p.addr = addr.to_string();
            p.client = None;
        }
        if let Some(c) = &p.client {
            return Ok(c.clone());
        }
        let connect_err = |reason: String| PeerError::Connect {
            node,
            addr: addr.to_string(),
            reason,
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut conn = self.transport.connect(addr).await?;
            Preamble {
                kind: ConnKind::Raft,
            }
            .write(&mut conn)
            .await?;
            Ok::<_, std::io::Error>(conn)
        })
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
        let transport = Framed::new(conn, BincodeFrames::new(super::FRAME_BYTES_MAX));
        let client = RaftRpcClient::new(tarpc::client::Config::default(), transport).spawn();
        p.client = Some(client.clone());
        Ok(client)
    }

    /// Drops the connection to `node` so the next call reconnects.
    async fn reset(&self, node: NodeId, addr: &str) {
        let peer = self.peer(node, addr);
        let mut p = peer.lock().await;
        p.client = None;
        p.timeouts_in_row = 0;
    }

    /// Counts a timeout; replaces the connection after [`TIMEOUTS_BEFORE_RECONNECT`] in a row.
    async fn note_timeout(&self, node: NodeId, addr: &str) {
        let peer = self.peer(node, addr);
        let mut p = peer.lock().await;
        p.timeouts_in_row += 1;
        if p.timeouts_in_row >= TIMEOUTS_BEFORE_RECONNECT {
            p.client = None;
            p.timeouts_in_row = 0;
        }
    }

    async fn note_success(&self, node: NodeId, addr: &str) {
        let peer = self.peer(node, addr);
        peer.lock().await.timeouts_in_row = 0;
    }

    /// Runs one RPC to `node` with a deadline; drops the connection on transport failure or
    /// timeout.
    async fn call<T, F, Fut>(
        &self,
        node: NodeId,
        addr: &str,
        timeout: Duration,
        f: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(RaftRpcClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = Result<Result<T, RpcFailure>, tarpc::client::RpcError>>,
    {
        let client = self.client(node, addr).await?;
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + timeout + TARPC_DEADLINE_SLACK;
        match tokio::time::timeout(timeout, f(client, ctx)).await {
            Err(_) => {
                self.note_timeout(node, addr).await;
                Err(PeerError::Timeout {
                    node,
                    after: timeout,
                })
            }
            Ok(Err(e)) => {
                self.reset(node, addr).await;
                Err(PeerError::Transport {
                    node,
                    reason: e.to_string(),
                })
            }
            Ok(Ok(Err(failure))) => {
                self.note_success(node, addr).await;
                Err(PeerError::Remote { node, failure })
            }
            Ok(Ok(Ok(v))) => {
                self.note_success(node, addr).await;
                Ok(v)
            }
        }
    }
}

impl Peers {
    /// Pings `node`: the groups it leads, or an error if it does not answer within `timeout`.
    pub async fn ping(
        &self,
        node: NodeId,
        addr: &str,
        from: NodeId,
        timeout: Duration,
    ) -> Result<(u64, Vec<GroupId>), PeerError> {
        self.call(node, addr, timeout, |c, ctx| async move {
            c.ping(ctx, from).await.map(Ok)
        })
        .await
    }
}

/// openraft's network factory for one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    group: GroupId,
    peers: Peers,
    snapshot_timeout: Duration,
    rpc_timeout: Duration,
}

impl GroupNetworkFactory {
    /// The factory for `group`, sending over `peers`. `rpc_timeout` is the floor of every
    /// append/vote deadline: openraft's own deadline for appends is the heartbeat interval,
    /// which a slow link or a busy peer easily exceeds.
    pub fn new(
        group: GroupId,
        peers: Peers,
        snapshot_timeout: Duration,
        rpc_timeout: Duration,
    ) -> Self {
        GroupNetworkFactory {
            group,
            peers,
            snapshot_timeout,
            rpc_timeout,
        }
    }
}

/// openraft's connection to one peer for one group.
pub struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    addr: String,
    peers: Peers,
    snapshot_timeout: Duration,
    rpc_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GroupNetwork {
        GroupNetwork {
            group: self.group,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            snapshot_timeout: self.snapshot_timeout,
            rpc_timeout: self.rpc_timeout,
        }
    }
}

fn unreachable(e: PeerError) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let group = self.group;
        self.peers
            .call(
                self.target,
                &self.addr,
                option.hard_ttl().max(self.rpc_timeout),
                |c, ctx| async move { c.append_entries(ctx, group, rpc).await },
            )
            .await
            .map_err(unreachable)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let group = self.group;
        self.peers
            .call(
                self.target,
                &self.addr,
                option.hard_ttl().max(self.rpc_timeout),
                |c, ctx| async move { c.vote(ctx, group, rpc).await },
            )
            .await
            .map_err(unreachable)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let group = self.group;
        self.peers
            .call(
                self.target,
                &self.addr,
                option.hard_ttl().max(self.rpc_timeout),
                |c, ctx| async move { c.pre_vote(ctx, group, rpc).await },
            )
            .await
            .map_err(unreachable)
    }

    async fn full_snapshot(
        &mut self,
        vote: typ::Vote,
        snapshot: typ::Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let group = self.group;
        let call = self.peers.call(
            self.target,
            &self.addr,
            self.snapshot_timeout,
            |c, ctx| async move {
                c.full_snapshot(ctx, group, vote, snapshot.meta, snapshot.snapshot)
                    .await
            },
        );
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = call => r.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e))),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let group = self.group;
        self.peers
            .call(
                self.target,
                &self.addr,
                option.hard_ttl().max(self.rpc_timeout),
                |c, ctx| async move { c.transfer_leader(ctx, group, req).await },
            )
            .await
            .map(Ok)
            .map_err(unreachable)
    }
}
