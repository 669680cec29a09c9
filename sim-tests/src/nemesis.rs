//! Faults from a seeded schedule.
//!
//! The schedule is drawn up front from the run's RNG (so it is part of what a seed replays) as
//! a sequence of non-overlapping *episodes*: a fault starts, lasts a while, and is undone. The
//! harness (`cluster.rs`) applies them between simulation steps, and heals everything at the end
//! of the fault window before the checker runs.
//!
//! # Fault model
//! - network: isolate the current leader of a group from the other nodes (clients still reach
//!   it), split the nodes into a minority and a majority, hold (delay) every message between two
//!   nodes and release them later, raise message latency;
//! - process: crash one node (its disk loses or tears unsynced writes, `SimDisk::crash`) and
//!   restart it; crash every node at once (correlated power loss) and restart them;
//! - disk: slow disk (latency on every operation);
//! - clock: jump one node's wall clock forward or back.
//!
//! turmoil's TCP does not retransmit, so message *loss* is modelled as partitions and holds: a
//! connection across a partition breaks and the Raft network and the client reconnect.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use taskbroker_raft::NodeId;

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Cut the current leader of the metadata group (`meta`) or of a partition group off from
    /// every other node.
    IsolateLeader {
        /// Whether to pick the metadata group's leader (else a partition's).
        meta: bool,
    },
    /// Partition `minority` from the other nodes.
    SplitMajority {
        /// The minority side.
        minority: Vec<NodeId>,
    },
    /// Hold every message between two nodes, release them at the end.
    Hold {
        /// One end.
        a: NodeId,
        /// The other end.
        b: NodeId,
    },
    /// Raise the maximum message latency.
    Latency {
        /// New bound, ms.
        max_ms: u64,
    },
    /// Crash a node; it restarts at the end of the episode.
    Crash {
        /// The node.
        node: NodeId,
    },
    /// Crash every node at once (power loss); they restart at the end of the episode.
    CrashAll,
    /// Every disk operation of a node takes `latency_ms` longer.
    SlowDisk {
        /// The node.
        node: NodeId,
        /// Added latency, ms.
        latency_ms: u64,
    },
    /// A node's wall clock jumps by `delta_ms` (and stays there).
    ClockJump {
        /// The node.
        node: NodeId,
        /// The jump, ms (negative goes back).
        delta_ms: i64,
    },
}

/// A fault applied at `start_ms` and undone at `start_ms + duration_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    /// Simulated ms when the fault starts.
    pub start_ms: u64,
    /// How long it lasts, ms.
    pub duration_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// What kinds of faults a schedule may contain.
#[derive(Debug, Clone, Copy)]
pub struct FaultMix {
    /// Allow crashing every node at once.
    pub crash_all: bool,
    /// Always include one `CrashAll` episode (for the broken-variant test).
    pub force_crash_all: bool,
}

/// Draws a schedule of episodes in `[from_ms, until_ms)` for `nodes`.
pub fn schedule(
    rng: &mut ChaCha8Rng,
    nodes: &[NodeId],
    from_ms: u64,
    until_ms: u64,
    mix: FaultMix,
) -> Vec<Episode> {
    let mut out = Vec::new();
    let mut t = from_ms + rng.random_range(0..2_000);
    let mut forced = !mix.force_crash_all;
    while t + 1_000 < until_ms {
        let duration_ms = rng.random_range(500..6_000).min(until_ms - t);
        let pick = |rng: &mut ChaCha8Rng| nodes[rng.random_range(0..nodes.len())];
        let fault = if !forced {
            forced = true;
            Fault::CrashAll
        } else {
            match rng.random_range(0..100) {
                0..=17 => Fault::IsolateLeader {
                    meta: rng.random_bool(0.3),
                },
                18..=31 => {
                    let mut shuffled = nodes.to_vec();
                    shuffled.shuffle(rng);
                    let k = rng.random_range(1..=(nodes.len() - 1) / 2);
                    let mut minority = shuffled[..k].to_vec();
                    minority.sort_unstable();
                    Fault::SplitMajority { minority }
                }
                32..=43 => {
                    let a = pick(rng);
                    let mut b = pick(rng);
                    while b == a {
                        b = pick(rng);
                    }
                    Fault::Hold {
                        a: a.min(b),
                        b: a.max(b),
                    }
                }
                44..=51 => Fault::Latency {
                    max_ms: rng.random_range(20..80),
                },
                52..=71 => Fault::Crash { node: pick(rng) },
                72..=77 if mix.crash_all => Fault::CrashAll,
                72..=87 => Fault::SlowDisk {
                    node: pick(rng),
                    latency_ms: rng.random_range(1..30),
                },
                _ => Fault::ClockJump {
                    node: pick(rng),
                    delta_ms: rng.random_range(-3_000..10_000),
                },
            }
        };
        out.push(Episode {
            start_ms: t,
            duration_ms,
            fault,
        });
        t += duration_ms + rng.random_range(500..4_000);
    }
    out
}
