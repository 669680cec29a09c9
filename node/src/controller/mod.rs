//! Cluster bootstrap and leadership hand-off.
//!
//! Every initial voter opens the metadata group and initialises it with the same voter set
//! (from `--peers`). Identical initialisations are consistent, so the cluster forms from its
//! peer list with no manual step and no designated first node; a restarted node finds its group
//! already initialised and simply resumes.

use std::time::Duration;

use taskbroker_raft::{Group, GroupId, RaftNode};

use crate::config::NodeConfig;

/// Opens the metadata group and makes sure it is initialised.
pub async fn bootstrap(
    raft: &RaftNode,
    config: &NodeConfig,
) -> Result<Group, taskbroker_raft::RaftError> {
    let meta = raft.open_group(GroupId::METADATA).await?;
    meta.initialize(&config.peers).await?;
    Ok(meta)
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
