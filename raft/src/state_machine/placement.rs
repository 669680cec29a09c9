//! Partition placement: which nodes hold the replicas of new partitions.
//!
//! The controller calls [`place`] before it proposes `CreateTopic` or `AddPartitions`; the
//! result travels inside the command, so replicas never recompute it (placement may change
//! between releases without breaking replay).
//!
//! # Design notes
//!
//! - Greedy and deterministic: for each new partition, the preferred leader is the node with the
//!   fewest leaderships among those with a low enough replica count (at most the
//!   `replication`-th lowest), and the followers are the other nodes with the fewest replicas
//!   (ties: *more* leaderships, so leader-poor nodes keep room to lead; then lower id). Counts include
//!   the existing load and the partitions placed so far in the same call, so repeated topic
//!   creations keep the cluster balanced.
//! - Racks/zones, node capacity weights and moving existing replicas are not modelled yet; they
//!   would enter as extra sort keys (rack diversity first) and a separate reassignment planner.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::metadata::NodeLoad;

/// Why no placement could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No nodes to place on.
    #[error("no nodes available for placement")]
    NoNodes,
    /// A replication factor of 0.
    #[error("replication factor must be at least 1")]
    ZeroReplication,
    /// More replicas per partition than nodes.
    #[error(
        "replication factor {replication} needs {replication} nodes, only {available} available"
    )]
    NotEnoughNodes {
        /// Requested replication factor.
        replication: u32,
        /// Distinct nodes available.
        available: usize,
    },
}

/// Places `partitions` new partitions with `replication` replicas each on `nodes` (duplicates
/// ignored), taking `load` (e.g. `MetadataState::node_load`) into account; nodes missing from
/// `load` count as empty, entries for nodes not in `nodes` are ignored. Returns one replica set
/// per new partition, preferred leader first.
pub fn place(
    nodes: &[u64],
    load: &BTreeMap<u64, NodeLoad>,
    partitions: u32,
    replication: u32,
) -> Result<Vec<Vec<u64>>, PlacementError> {
    let candidates: BTreeSet<u64> = nodes.iter().copied().collect();
    if candidates.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    if replication == 0 {
        return Err(PlacementError::ZeroReplication);
    }
    if replication as usize > candidates.len() {
        return Err(PlacementError::NotEnoughNodes {
            replication,
            available: candidates.len(),
        });
    }
    let mut load: BTreeMap<u64, NodeLoad> = candidates
        .iter()
        .map(|id| (*id, load.get(id).copied().unwrap_or_default()))
        .collect();
    let mut placement = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        // The leader comes from the nodes that are eligible as replicas at all (replica count
        // no higher than the `replication`-th lowest), picking the fewest leaderships; the
        // followers are then the remaining nodes with the fewest replicas.
        // Followers prefer nodes with *more* leaderships, so leader-poor nodes stay light on
        // replicas and remain eligible to lead.
        let mut ranked: Vec<(u64, Reverse<u64>, u64)> = load
            .iter()
            .map(|(id, l)| (l.replicas, Reverse(l.leaders), *id))
            .collect();
        ranked.sort_unstable();
        let cutoff = ranked[replication as usize - 1].0;
        let leader = ranked
            .iter()
            .filter(|(replicas, _, _)| *replicas <= cutoff)
            .min_by_key(|(replicas, Reverse(leaders), id)| (*leaders, *replicas, *id))
            .map(|(_, _, id)| *id)
            .expect("invariant: replication >= 1");
        let mut replicas = vec![leader];
        replicas.extend(
            ranked
                .iter()
                .map(|(_, _, id)| *id)
                .filter(|id| *id != leader)
                .take(replication as usize - 1),
        );
        for (i, id) in replicas.iter().enumerate() {
            let entry = load
                .get_mut(id)
                .expect("invariant: replicas are candidates");
            entry.replicas += 1;
            if i == 0 {
                entry.leaders += 1;
            }
        }
        placement.push(replicas);
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(placement: &[Vec<u64>]) -> BTreeMap<u64, NodeLoad> {
        let mut load: BTreeMap<u64, NodeLoad> = BTreeMap::new();
        for replicas in placement {
            for (i, id) in replicas.iter().enumerate() {
                let entry = load.entry(*id).or_default();
                entry.replicas += 1;
                if i == 0 {
                    entry.leaders += 1;
                }
            }
        }
        load
    }

    #[test]
    fn twelve_partitions_rf3_on_three_nodes_is_even() {
        let placement = place(&[1, 2, 3], &BTreeMap::new(), 12, 3).expect("placeable");
        assert_eq!(placement.len(), 12);
        for replicas in &placement {
            let distinct: BTreeSet<u64> = replicas.iter().copied().collect();
            assert_eq!(distinct.len(), 3);
        }
        let load = counts(&placement);
        for id in [1, 2, 3] {
            assert_eq!(
                load[&id],
                NodeLoad {
                    replicas: 12,
                    leaders: 4
                },
                "node {id}"
            );
        }
    }

    #[test]
    fn five_nodes_spread_leaders_and_replicas_within_one() {
        let placement = place(&[5, 4, 3, 2, 1], &BTreeMap::new(), 12, 3).expect("placeable");
        let load = counts(&placement);
        assert_eq!(load.len(), 5);
        let leaders: Vec<u64> = load.values().map(|l| l.leaders).collect();
        let replicas: Vec<u64> = load.values().map(|l| l.replicas).collect();
        let spread = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap();
        assert!(spread(&leaders) <= 1, "{leaders:?}");
        assert!(spread(&replicas) <= 1, "{replicas:?}");
    }

    #[test]
    fn existing_load_is_taken_into_account() {
        let first = place(&[1, 2, 3, 4], &BTreeMap::new(), 3, 2).expect("placeable");
        let mut existing = counts(&first);
        let second = place(&[1, 2, 3, 4], &existing, 5, 2).expect("placeable");
        for (id, l) in counts(&second) {
            let e = existing.entry(id).or_default();
            e.replicas += l.replicas;
            e.leaders += l.leaders;
        }
        let leaders: Vec<u64> = existing.values().map(|l| l.leaders).collect();
        let replicas: Vec<u64> = existing.values().map(|l| l.replicas).collect();
        let spread = |v: &[u64]| v.iter().max().unwrap() - v.iter().min().unwrap();
        assert!(spread(&leaders) <= 1, "{leaders:?}");
        assert!(spread(&replicas) <= 1, "{replicas:?}");
    }

    #[test]
    fn placement_is_deterministic() {
        let a = place(&[3, 1, 2, 2], &BTreeMap::new(), 7, 2).expect("placeable");
        let b = place(&[1, 2, 3], &BTreeMap::new(), 7, 2).expect("placeable");
        assert_eq!(a, b);
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(
            place(&[], &BTreeMap::new(), 1, 1),
            Err(PlacementError::NoNodes)
        );
        assert_eq!(
            place(&[1], &BTreeMap::new(), 1, 0),
            Err(PlacementError::ZeroReplication)
        );
        assert_eq!(
            place(&[1, 2, 2], &BTreeMap::new(), 1, 3),
            Err(PlacementError::NotEnoughNodes {
                replication: 3,
                available: 2
            })
        );
    }
}
