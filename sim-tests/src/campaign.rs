//! Running seeds: `SIM_SEED=<n>` replays one, `SIM_SEEDS=<count>` runs many (from
//! `SIM_SEED_BASE`, default a fixed base so CI is reproducible).

use crate::cluster::{self, SimOptions, SimReport};

/// The first seed of a campaign unless `SIM_SEED_BASE` says otherwise.
pub const DEFAULT_SEED_BASE: u64 = 0x7a5b_0000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// The seeds to run: `SIM_SEED` alone if set, else `SIM_SEEDS` (default `default_count`)
/// consecutive seeds from `SIM_SEED_BASE`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(s) = env_u64("SIM_SEED") {
        return vec![s];
    }
    let base = env_u64("SIM_SEED_BASE").unwrap_or(DEFAULT_SEED_BASE);
    let count = env_u64("SIM_SEEDS").unwrap_or(default_count);
    (base..base + count).collect()
}

/// Installs a test tracing subscriber (`RUST_LOG`, default `error`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs one seed, printing its seed first and a readable report on failure.
pub fn run_seed(opts: &SimOptions) -> SimReport {
    println!("SIM_SEED={} nodes={}", opts.seed, opts.nodes);
    let r = cluster::run(opts);
    for k in &r.known {
        println!("known bug (SIM_SEED={}): {k}", r.seed);
    }
    if !r.violations.is_empty() {
        println!(
            "FAILED SIM_SEED={} nodes={} (replay: SIM_SEED={} cargo test -p taskbroker-sim-tests)\nviolations:\n  {}\nfaults:\n  {}\ntrace tail:\n{}",
            r.seed,
            r.nodes,
            r.seed,
            r.violations.join("\n  "),
            r.faults.join("\n  "),
            r.trace_tail
        );
    }
    r
}
