//! The same seed replays the same run: the event-trace hash of a seed is the same in two
//! separate processes (how `SIM_SEED=<n>` replays a failure).
//!
//! Each run happens in a child process (this test binary re-run with `SIM_DETERMINISM_CHILD`),
//! because process-wide counters (e.g. in tokio and tarpc) carry over between runs inside one
//! process.

use std::process::Command;

use taskbroker_sim_tests::campaign::{init_tracing, run_seed, seeds};
use taskbroker_sim_tests::cluster::SimOptions;

const CHILD: &str = "SIM_DETERMINISM_CHILD";

fn hash_in_child(seed: u64) -> String {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "a_seed_replays_the_same_trace", "--nocapture"])
        .env(CHILD, "1")
        .env("SIM_SEED", seed.to_string())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("TRACE_HASH="))
        .unwrap_or_else(|| panic!("child for seed {seed} printed no hash:\n{stdout}"))
        .to_string()
}

#[test]
fn a_seed_replays_the_same_trace() {
    init_tracing();
    if std::env::var(CHILD).is_ok() {
        for seed in seeds(1) {
            let r = run_seed(&SimOptions::for_seed(seed));
            println!("TRACE_HASH={:016x}", r.trace_hash);
        }
        return;
    }
    // One 3-node and one 5-node seed (or SIM_SEED alone).
    for seed in seeds(2) {
        let (a, b) = (hash_in_child(seed), hash_in_child(seed));
        println!("seed {seed}: trace {a} vs {b}");
        assert_eq!(a, b, "seed {seed} did not replay");
    }
}
