//! Faults from a seeded schedule.
//!
//! The schedule is drawn up front from the run's RNG (so it is part of what a seed replays) as
//! *episodes*: a fault starts, lasts a while, and is undone. Episodes come from three lanes
//! (network, process, disk/clock) that run at the same time, so faults overlap: a partition
//! while a node is crashed while another disk is slow, a clock jump during a partition. The
//! harness (`cluster.rs`) applies them between simulation steps (reference-counting links, down
//! nodes and slow disks, so undoing one episode never undoes another's fault), and heals
//! everything at the end of the fault window before the checker runs.
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

impl Fault {
    /// The fault's kind, for campaign statistics (`"crash"`, `"partition-leader"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::IsolateLeader { meta: true } => "isolate-meta-leader",
            Fault::IsolateLeader { meta: false } => "isolate-partition-leader",
            Fault::SplitMajority { .. } => "split-majority",
            Fault::Hold { .. } => "hold",
            Fault::Latency { .. } => "latency",
            Fault::Crash { .. } => "crash",
            Fault::CrashAll => "crash-all",
            Fault::SlowDisk { .. } => "slow-disk",
            Fault::ClockJump { .. } => "clock-jump",
        }
    }
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
    /// Let episodes of different lanes overlap (network, process, disk/clock); else one
    /// sequence of episodes, one at a time.
    pub overlap: bool,
}

/// The three independent lanes of a schedule. Within a lane episodes follow each other; lanes
/// run at the same time, so faults of different kinds overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Network,
    Process,
    DiskClock,
}

fn draw(rng: &mut ChaCha8Rng, lane: Lane, nodes: &[NodeId], mix: FaultMix) -> Fault {
    let pick = |rng: &mut ChaCha8Rng| nodes[rng.random_range(0..nodes.len())];
    match lane {
        Lane::Network => match rng.random_range(0..100) {
            0..=34 => Fault::IsolateLeader {
                meta: rng.random_bool(0.3),
            },
            35..=62 => {
                let mut shuffled = nodes.to_vec();
                shuffled.shuffle(rng);
                let k = rng.random_range(1..=(nodes.len() - 1) / 2);
                let mut minority = shuffled[..k].to_vec();
                minority.sort_unstable();
                Fault::SplitMajority { minority }
            }
            63..=85 => {
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
            _ => Fault::Latency {
                max_ms: rng.random_range(20..80),
            },
        },
        Lane::Process => {
            if mix.crash_all && rng.random_range(0..100) < 15 {
                Fault::CrashAll
            } else {
                Fault::Crash { node: pick(rng) }
            }
        }
        Lane::DiskClock => {
            if rng.random_bool(0.55) {
                Fault::SlowDisk {
                    node: pick(rng),
                    latency_ms: rng.random_range(1..30),
                }
            } else {
                Fault::ClockJump {
                    node: pick(rng),
                    delta_ms: rng.random_range(-3_000..10_000),
                }
            }
        }
    }
}

fn lane_episodes(
    rng: &mut ChaCha8Rng,
    lanes: &[Lane],
    nodes: &[NodeId],
    from_ms: u64,
    until_ms: u64,
    mix: FaultMix,
    force_crash_all: bool,
) -> Vec<Episode> {
    let mut out = Vec::new();
    let mut t = from_ms + rng.random_range(0..2_000);
    let mut forced = !force_crash_all;
    while t + 1_000 < until_ms {
        let duration_ms = rng.random_range(500..6_000).min(until_ms - t);
        let fault = if !forced {
            forced = true;
            Fault::CrashAll
        } else {
            let lane = lanes[rng.random_range(0..lanes.len())];
            draw(rng, lane, nodes, mix)
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

/// Draws a schedule of episodes in `[from_ms, until_ms)` for `nodes`, sorted by start time.
/// With `mix.overlap`, each lane (network, process, disk/clock) is present with probability
/// 3/4 (at least one is) and draws its own sequence, so episodes of different lanes overlap: a
/// partition while a node is down while a disk is slow, a clock jump during a partition.
pub fn schedule(
    rng: &mut ChaCha8Rng,
    nodes: &[NodeId],
    from_ms: u64,
    until_ms: u64,
    mix: FaultMix,
) -> Vec<Episode> {
    let all = [Lane::Network, Lane::Process, Lane::DiskClock];
    let mut out = if mix.overlap {
        let mut on: Vec<Lane> = all.into_iter().filter(|_| rng.random_bool(0.75)).collect();
        if on.is_empty() {
            on.push(all[rng.random_range(0..all.len())]);
        }
        if mix.force_crash_all && !on.contains(&Lane::Process) {
            on.push(Lane::Process);
        }
        let mut out = Vec::new();
        for lane in on {
            let force = mix.force_crash_all && lane == Lane::Process;
            out.extend(lane_episodes(
                rng,
                &[lane],
                nodes,
                from_ms,
                until_ms,
                mix,
                force,
            ));
        }
        out
    } else {
        lane_episodes(
            rng,
            &all,
            nodes,
            from_ms,
            until_ms,
            mix,
            mix.force_crash_all,
        )
    };
    out.sort_by_key(|e| e.start_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn overlaps(eps: &[Episode]) -> usize {
        let mut n = 0;
        for (i, a) in eps.iter().enumerate() {
            for b in &eps[i + 1..] {
                if b.start_ms < a.start_ms + a.duration_ms {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn schedules_replay_and_lanes_overlap() {
        let mix = FaultMix {
            crash_all: true,
            force_crash_all: false,
            overlap: true,
        };
        let nodes = [1, 2, 3, 4, 5];
        let draw_one = |seed| {
            schedule(
                &mut ChaCha8Rng::seed_from_u64(seed),
                &nodes,
                4_000,
                30_000,
                mix,
            )
        };
        assert_eq!(draw_one(7), draw_one(7));
        let total: usize = (0..50).map(|s| overlaps(&draw_one(s))).sum();
        assert!(total > 50, "lanes should overlap often, got {total}");
        for s in 0..50 {
            let eps = draw_one(s);
            assert!(eps.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
            assert!(eps.iter().all(|e| e.start_ms + e.duration_ms <= 30_000));
        }
        let sequential = FaultMix {
            overlap: false,
            ..mix
        };
        for s in 0..50 {
            let eps = schedule(
                &mut ChaCha8Rng::seed_from_u64(s),
                &nodes,
                4_000,
                30_000,
                sequential,
            );
            assert_eq!(overlaps(&eps), 0);
        }
    }

    #[test]
    fn forced_power_loss_is_in_every_schedule() {
        for overlap in [false, true] {
            let mix = FaultMix {
                crash_all: true,
                force_crash_all: true,
                overlap,
            };
            for s in 0..20 {
                let eps = schedule(
                    &mut ChaCha8Rng::seed_from_u64(s),
                    &[1, 2, 3],
                    4_000,
                    30_000,
                    mix,
                );
                assert!(eps.iter().any(|e| e.fault == Fault::CrashAll));
            }
        }
    }
}
