//! taskbroker sim-tests: whole clusters under turmoil (simulated network and clock) with the
//! simulated disk, under a seeded nemesis, checked against the guarantees we promise.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`mod@env`] | the seams under simulation: [`env::TurmoilTransport`], [`env::SimClock`], [`env::FaultyDisk`] (the simulated disk, optionally lying about fsync), Raft-only nodes ([`env::SimNode`]) |
//! | [`cluster`] | one run: production nodes, producer and worker clients, nemesis, replica checks |
//! | [`nemesis`] | the seeded fault schedule and the fault model |
//! | [`oracle`] | what clients were told, and the lease invariants |
//! | [`linearizability`] | the linearizability checker and the sequential model of topic metadata |
//! | [`committed`] | committed entries never change: every committed entry seen, by group and index |
//! | [`trace`] | the event trace and its hash (determinism) |
//! | [`campaign`] | running one seed or many (`SIM_SEED`, `SIM_SEEDS`) |
//!
//! Tests live in `tests/`; see `README.md` for the guarantees, the fault model and campaigns.
//!
//! # Determinism
//! turmoil seeds the network and each host's tokio scheduler (`--cfg tokio_unstable`, set in
//! the root `.cargo/config.toml`); openraft's randomness comes from
//! `taskbroker_raft::runtime::seed_thread_rng`; disks, clients and the nemesis draw from
//! streams derived from the run's seed; clocks are simulated. `tests/determinism.rs` checks that
//! a seed replays the same event trace.

pub mod campaign;
pub mod cluster;
pub mod committed;
pub mod env;
pub mod linearizability;
pub mod nemesis;
pub mod oracle;
pub mod trace;
