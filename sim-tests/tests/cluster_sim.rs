//! Whole clusters under faults: every seed must pass the checker.
//!
//! `SIM_SEED=<n>` replays one seed; `SIM_SEEDS=<count>` runs that many (default
//! [`CI_SEEDS`]); `SIM_SEED_BASE` moves the window. Seeds alternate 3- and 5-node clusters.
//! CI runs `cargo test --release -p taskbroker-sim-tests`.

use taskbroker_sim_tests::campaign::{init_tracing, run_seed, seeds};
use taskbroker_sim_tests::cluster::SimOptions;

/// Seeds per CI run (mixed 3/5 nodes, all fault kinds): 200 with `--release` (about 6 minutes
/// on 2 cores), a smoke run of 4 in debug builds (about 30 times slower).
const CI_SEEDS: u64 = if cfg!(debug_assertions) { 4 } else { 200 };

#[test]
fn clusters_under_faults_keep_their_guarantees() {
    init_tracing();
    let mut failed = Vec::new();
    let seeds = seeds(CI_SEEDS);
    let started = std::time::Instant::now();
    let mut faults = 0;
    for seed in &seeds {
        let r = run_seed(&SimOptions::for_seed(*seed));
        faults += r.faults.len();
        println!(
            "seed {seed}: {} nodes, {} faults, {} produced ({} unknown), {} leases, {} sim ms, trace {:016x}",
            r.nodes, r.faults.len(), r.produced, r.produce_unknown, r.leases, r.sim_ms, r.trace_hash
        );
        if !r.violations.is_empty() {
            failed.push(*seed);
        }
    }
    println!(
        "{} seeds, {faults} faults injected, {} failed, {:?}",
        seeds.len(),
        failed.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}
