//! The tarpc service carrying Raft RPCs for every group, and its server.

use std::sync::Arc;

use futures::StreamExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_util::codec::Framed;
use taskbroker_client::transport::BoxConn;

use super::frames::BincodeFrames;
use crate::router::RaftNode;
use crate::types::{typ, GroupId, NodeId, TypeConfig};

/// Why a Raft RPC failed on the receiving node.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum RpcFailure {
    /// The receiving node does not host the group (yet, or any more).
    #[error("node {node} does not host group {group}")]
    UnknownGroup {
        /// The receiving node.
        node: NodeId,
        /// The group named in the request.
        group: GroupId,
    },
    /// openraft refused the request (e.g. the group is shutting down).
    #[error("raft: {0}")]
    Raft(String),
}

/// Raft RPCs, each tagged with the group it is for.
#[tarpc::service]
pub trait RaftRpc {
    /// AppendEntries (also heartbeats).
    async fn append_entries(
        group: GroupId,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcFailure>;
    /// RequestVote.
    async fn vote(
        group: GroupId,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure>;
    /// Pre-vote (does not disturb a healthy leader).
    async fn pre_vote(
        group: GroupId,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure>;
    /// A whole snapshot (queue state, never task payloads, so it is sent in one message).
    async fn full_snapshot(
        group: GroupId,
        vote: typ::Vote,
        meta: typ::SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<SnapshotResponse<TypeConfig>, RpcFailure>;
    /// Node-level liveness for quiescence: answers with this process's incarnation (random at
    /// start, so a restart is visible) and the groups this node leads.
    async fn ping(from: NodeId) -> (u64, Vec<GroupId>);
    /// Leadership hand-off.
    async fn transfer_leader(
        group: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
    ) -> Result<(), RpcFailure>;
}

#[derive(Clone)]
struct Server {
    node: Arc<RaftNode>,
}

impl Server {
    fn raft(&self, group: GroupId) -> Result<typ::Raft, RpcFailure> {
        self.node.raft_of(group).ok_or(RpcFailure::UnknownGroup {
            node: self.node.id(),
            group,
        })
    }
}

fn fail(e: impl std::fmt::Display) -> RpcFailure {
    RpcFailure::Raft(e.to_string())
}

impl RaftRpc for Server {
    async fn append_entries(
        self,
        _: tarpc::context::Context,
        group: GroupId,
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcFailure> {
        self.raft(group)?.append_entries(req).await.map_err(fail)
    }

    async fn vote(
        self,
        _: tarpc::context::Context,
        group: GroupId,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure> {
        self.raft(group)?.vote(req).await.map_err(fail)
    }

    async fn pre_vote(
        self,
        _: tarpc::context::Context,
        group: GroupId,
        req: VoteRequest<TypeConfig>,
    ) -> Result<VoteResponse<TypeConfig>, RpcFailure> {
        self.raft(group)?.pre_vote(req).await.map_err(fail)
    }

    async fn full_snapshot(
        self,
        _: tarpc::context::Context,
        group: GroupId,
        vote: typ::Vote,
        meta: typ::SnapshotMeta,
        data: Vec<u8>,
    ) -> Result<SnapshotResponse<TypeConfig>, RpcFailure> {
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: data,
        };
        self.raft(group)?
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(fail)
    }

    async fn ping(self, _: tarpc::context::Context, _from: NodeId) -> (u64, Vec<GroupId>) {
        (self.node.incarnation(), self.node.led_groups())
    }

    async fn transfer_leader(
        self,
        _: tarpc::context::Context,
        group: GroupId,
        req: TransferLeaderRequest<TypeConfig>,
    ) -> Result<(), RpcFailure> {
        self.raft(group)?
            .handle_transfer_leader(req)
            .await
            .map(|_| ())
            .map_err(fail)
    }
}

/// Serves Raft RPCs on one accepted connection (after its preamble) until it closes.
///
/// Requests are handled concurrently; openraft tolerates reordered and stale messages, and each
/// replication stream waits for one append's answer before sending the next.
pub async fn serve_connection(node: Arc<RaftNode>, conn: BoxConn) {
    let transport = Framed::new(conn, BincodeFrames::new(super::FRAME_BYTES_MAX));
    let server = Server { node };
    BaseChannel::with_defaults(transport)
        .execute(server.serve())
        .for_each(|fut| async {
            tokio::spawn(fut);
        })
        .await;
}
