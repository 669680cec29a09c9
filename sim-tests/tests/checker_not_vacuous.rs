//! The checker is not vacuous.
//!
//! - With disks that acknowledge fsync without syncing (the broken variant,
//!   `SimOptions::lie_about_fsync`) and a whole-cluster power loss in the schedule, acknowledged
//!   produces are lost and committed entries change; the checker must say so within a bounded
//!   number of seeds.
//! - A metadata history recorded from a real run is linearizable, and the same history with one
//!   confirmed delete moved before everything else is not.

use taskbroker_sim_tests::campaign::{init_tracing, run_seed, DEFAULT_SEED_BASE};
use taskbroker_sim_tests::cluster::{describe_history, SimOptions};
use taskbroker_sim_tests::linearizability::{
    check, check_by_key, MetaOp, MetaResult, TopicModel, Verdict,
};

/// Seeds the broken variant gets before the test gives up.
const SEEDS_MAX: u64 = 10;

fn broken(seed: u64) -> SimOptions {
    SimOptions {
        lie_about_fsync: true,
        force_crash_all: true,
        ..SimOptions::for_seed(seed)
    }
}

#[test]
fn lying_fsync_is_caught() {
    init_tracing();
    for seed in DEFAULT_SEED_BASE..DEFAULT_SEED_BASE + SEEDS_MAX {
        let r = run_seed(&broken(seed));
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

#[test]
fn lying_fsync_changes_committed_entries_and_the_audit_sees_it() {
    init_tracing();
    for seed in DEFAULT_SEED_BASE..DEFAULT_SEED_BASE + SEEDS_MAX {
        let r = run_seed(&broken(seed));
        if let Some(v) = r
            .violations
            .iter()
            .find(|v| v.starts_with("committed entry changed"))
        {
            println!("committed-entry change caught on seed {seed}: {v}");
            return;
        }
    }
    panic!(
        "no committed entry changed in {SEEDS_MAX} seeds of a cluster whose disks lie about fsync"
    );
}

#[test]
fn a_reordered_metadata_history_is_not_linearizable() {
    init_tracing();
    for seed in DEFAULT_SEED_BASE..DEFAULT_SEED_BASE + SEEDS_MAX {
        let r = run_seed(&SimOptions::for_seed(seed));
        assert!(
            check_by_key(&TopicModel, &r.meta_history, 2_000_000).is_empty(),
            "seed {seed}: the recorded metadata history is not linearizable"
        );
        // A topic whose history has a confirmed delete: move that delete before every other
        // operation (when the topic cannot exist yet, so the model says "unknown topic").
        for topic in ["m0", "m1"] {
            let mut ops: Vec<_> = r
                .meta_history
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, o)| o.clone())
                .collect();
            let Some(k) = ops.iter().position(|o| {
                o.input == MetaOp::Delete && matches!(o.completed, Some((_, MetaResult::Ok)))
            }) else {
                continue;
            };
            assert_eq!(check(&TopicModel, &ops, 2_000_000), Verdict::Linearizable);
            let first = ops.iter().map(|o| o.invoked).min().unwrap_or(0);
            ops[k].invoked = 0;
            ops[k].completed = Some((0, MetaResult::Ok));
            assert!(first > 0, "operations start after the cluster formed");
            let v = check(&TopicModel, &ops, 2_000_000);
            println!(
                "seed {seed}, topic {topic}: reordered history -> {v:?}\n{}",
                describe_history(&ops)
            );
            assert!(
                matches!(v, Verdict::NotLinearizable { .. }),
                "a delete confirmed before the topic was ever created was accepted"
            );
            return;
        }
    }
    panic!("no run in {SEEDS_MAX} seeds confirmed a topic delete");
}
