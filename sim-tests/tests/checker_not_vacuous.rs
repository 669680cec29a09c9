//! The checker is not vacuous: with disks that acknowledge fsync without syncing (the broken
//! variant, `SimOptions::lie_about_fsync`) and a whole-cluster power loss in the schedule,
//! acknowledged produces are lost, and the checker must say so within a bounded number of
//! seeds.

use taskbroker_sim_tests::campaign::{init_tracing, run_seed, DEFAULT_SEED_BASE};
use taskbroker_sim_tests::cluster::SimOptions;

/// Seeds the broken variant gets before the test gives up.
const SEEDS_MAX: u64 = 10;

#[test]
fn lying_fsync_is_caught() {
    init_tracing();
    for seed in DEFAULT_SEED_BASE..DEFAULT_SEED_BASE + SEEDS_MAX {
        let opts = SimOptions {
            lie_about_fsync: true,
            force_crash_all: true,
            ..SimOptions::for_seed(seed)
        };
        let r = run_seed(&opts);
        if !r.violations.is_empty() {
            println!(
                "broken variant caught on seed {seed}: {}",
                r.violations.first().map(String::as_str).unwrap_or("")
            );
            return;
        }
    }
    panic!("the checker passed {SEEDS_MAX} seeds of a cluster whose disks lie about fsync");
}
