//! The data directory's identity: which node and which cluster it belongs to.
//!
//! Written on first start; checked on every later start so a node never serves (and never
//! votes with) the data of another node or another cluster.

use std::sync::Arc;

use taskbroker_storage::io::Disk;

use crate::config::NodeConfig;

const FILE: &str = "IDENTITY";

/// The data directory does not belong to this node.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The directory was created by another node id.
    #[error("data directory {dir} belongs to node {found}, not node {expected}")]
    OtherNode {
        /// Directory.
        dir: String,
        /// Its node id.
        found: u64,
        /// Ours.
        expected: u64,
    },
    /// The directory belongs to another cluster.
    #[error("data directory {dir} belongs to another cluster (initial peers {found}, this node was started with {expected}); use an empty directory or the right peers")]
    OtherCluster {
        /// Directory.
        dir: String,
        /// Its cluster.
        found: String,
        /// Ours.
        expected: String,
    },
    /// The identity file is unreadable.
    #[error("data directory {dir}: {reason}")]
    Unusable {
        /// Directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// The cluster fingerprint: the initial voter set as given in `--peers` (ids only, so moving a
/// node to a new address does not orphan its data).
pub fn cluster_fingerprint(config: &NodeConfig) -> String {
    config
        .peers
        .keys()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the identity record in the data directory, creating it on first start.
pub async fn check_or_create(
    disk: &Arc<dyn Disk>,
    config: &NodeConfig,
) -> Result<(), IdentityError> {
    let dir = config.data_dir.display().to_string();
    let unusable = |e: &dyn std::fmt::Display| IdentityError::Unusable {
        dir: dir.clone(),
        reason: e.to_string(),
    };
    disk.create_dir_all(&config.data_dir)
        .await
        .map_err(|e| unusable(&e))?;
    let names = disk
        .list_dir(&config.data_dir)
        .await
        .map_err(|e| unusable(&e))?;
    let path = config.data_dir.join(FILE);
    let expected = cluster_fingerprint(config);
    if names.iter().any(|n| n == FILE) {
        let file = disk.open(&path, false).await.map_err(|e| unusable(&e))?;
        let len = file.len().await.map_err(|e| unusable(&e))?.min(4096) as usize;
        let (n, buf) = file
            .read_at(vec![0; len], 0)
            .await
            .map_err(|e| unusable(&e))?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let mut node = None;
        let mut cluster = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("node_id=") {
                node = v.trim().parse::<u64>().ok();
            } else if let Some(v) = line.strip_prefix("cluster=") {
                cluster = Some(v.trim().to_string());
            }
        }
        let (Some(node), Some(cluster)) = (node, cluster) else {
            return Err(unusable(&"IDENTITY file is damaged"));
        };
        if node != config.node_id {
            return Err(IdentityError::OtherNode {
                dir,
                found: node,
                expected: config.node_id,
            });
        }
        if cluster != expected {
            return Err(IdentityError::OtherCluster {
                dir,
                found: cluster,
                expected,
            });
        }
        return Ok(());
    }
    if names.iter().any(|n| n == "groups") {
        return Err(unusable(
            &"holds Raft data but no IDENTITY file; refusing to guess whose it is",
        ));
    }
    let text = format!("node_id={}\ncluster={}\n", config.node_id, expected);
    let file = disk.open(&path, true).await.map_err(|e| unusable(&e))?;
    file.write_all_at(text.into_bytes(), 0)
        .await
        .map_err(|e| unusable(&e))?;
    file.sync_data().await.map_err(|e| unusable(&e))?;
    disk.sync_dir(&config.data_dir)
        .await
        .map_err(|e| unusable(&e))?;
    Ok(())
}
