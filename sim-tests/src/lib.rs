//! taskbroker sim-tests: whole clusters under turmoil (simulated network and clock) with the
//! simulated disk.
//!
//! # Module map
//!
//! | Module | What it holds |
//! |---|---|
//! | [`env`] | the seams under simulation: [`env::TurmoilTransport`] (turmoil TCP behind the `Transport` trait), simulated disks, Raft nodes built on them |
//!
//! Tests live in `tests/` (e.g. `raft_turmoil.rs`: replication across a leader partition).
//!
//! # Determinism
//! turmoil seeds the network (latency, message order) and each host's tokio scheduler from
//! one seed (`turmoil::Builder::rng_seed`; tokio's scheduler seeding needs `--cfg
//! tokio_unstable`, set in the root `.cargo/config.toml`), and [`taskbroker_storage::io::SimDisk`]
//! takes its own seed. Not yet deterministic: openraft draws its election timeouts from
//! `rand::rng()` (OS-seeded) through its `TokioRuntime`, so two runs with one seed can elect
//! different leaders. A seed reproduces the network schedule, not the whole run.

pub mod env;
