//! What clients observed, and the invariants checked against it.
//!
//! The oracle only records what a client was *told*: a produce acknowledged with an offset, a
//! lease received, an ack the broker confirmed. A request that failed or timed out has an
//! unknown outcome and is never assumed to have had no effect.
//!
//! # Invariants checked here (replica state is checked in `cluster.rs`)
//! - *No double lease*: within the queue group, a task's successive leases (by lease epoch)
//!   never overlap by the leader's timestamps: a lease starts (`expires_at - visibility`) no
//!   earlier than the previous lease's expiry, unless the previous holder released it (nack).
//!   Two workers never hold the same epoch.
//! - *Delivery counts only grow*: successive leases of a task carry strictly increasing attempts.
//! - *An ack is never undone*: no lease of a task after an acknowledged ack of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One lease a worker received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    /// The worker.
    pub worker: String,
    /// Lease epoch (unique per partition).
    pub epoch: u64,
    /// Delivery attempt.
    pub attempt: u32,
    /// Leader-written expiry, ms.
    pub expires_at_ms: u64,
    /// Whether the worker released it (nack) before finishing with it.
    pub released: bool,
    /// Whether the broker confirmed the worker's ack.
    pub acked: bool,
}

/// Everything clients observed in one run.
#[derive(Debug, Default)]
pub struct Observed {
    /// Acknowledged produces: task id -> (partition, offset).
    pub produced: BTreeMap<u64, (u32, u64)>,
    /// Produces whose outcome is unknown (failed or timed out).
    pub produce_unknown: u64,
    /// Leases per (partition, offset), in the order received.
    pub leases: BTreeMap<(u32, u64), Vec<LeaseSeen>>,
    /// Acks the broker confirmed: (partition, offset).
    pub acks_ok: u64,
    /// Acks that failed (stale lease, timeout, unavailable).
    pub acks_failed: u64,
}

/// The shared oracle.
#[derive(Debug, Clone, Default)]
pub struct Oracle {
    inner: Arc<Mutex<Observed>>,
}

impl Oracle {
    /// Runs `f` on the observations.
    pub fn with<T>(&self, f: impl FnOnce(&mut Observed) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks the lease invariants; returns one line per violation.
    pub fn check_leases(&self, visibility_ms: u64) -> Vec<String> {
        self.with(|o| check_leases(&o.leases, visibility_ms))
    }
}

/// See the module docs.
pub fn check_leases(
    leases: &BTreeMap<(u32, u64), Vec<LeaseSeen>>,
    visibility_ms: u64,
) -> Vec<String> {
    let mut bad = Vec::new();
    for ((p, off), seen) in leases {
        let mut by_epoch = seen.clone();
        by_epoch.sort_by_key(|l| l.epoch);
        for pair in by_epoch.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.epoch == b.epoch {
                bad.push(format!(
                    "p{p}@{off}: epoch {} leased to {} and {}",
                    a.epoch, a.worker, b.worker
                ));
                continue;
            }
            if b.attempt <= a.attempt {
                bad.push(format!(
                    "p{p}@{off}: attempt went from {} (epoch {}) to {} (epoch {})",
                    a.attempt, a.epoch, b.attempt, b.epoch
                ));
            }
            let b_start = b.expires_at_ms.saturating_sub(visibility_ms);
            if !a.released && b_start < a.expires_at_ms {
                bad.push(format!(
                    "p{p}@{off}: lease epoch {} ({}) starts at {b_start} before epoch {} ({}) expires at {}",
                    b.epoch, b.worker, a.epoch, a.worker, a.expires_at_ms
                ));
            }
        }
        if let Some(acked) = by_epoch.iter().find(|l| l.acked) {
            for later in by_epoch.iter().filter(|l| l.epoch > acked.epoch) {
                bad.push(format!(
                    "p{p}@{off}: leased again (epoch {}, {}) after the ack of epoch {} was confirmed",
                    later.epoch, later.worker, acked.epoch
                ));
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(worker: &str, epoch: u64, attempt: u32, expires: u64) -> LeaseSeen {
        LeaseSeen {
            worker: worker.into(),
            epoch,
            attempt,
            expires_at_ms: expires,
            released: false,
            acked: false,
        }
    }

    #[test]
    fn overlapping_leases_are_reported() {
        let mut m = BTreeMap::new();
        m.insert(
            (0, 5),
            vec![lease("a", 1, 1, 10_000), lease("b", 2, 2, 11_000)],
        );
        assert_eq!(check_leases(&m, 2_000).len(), 1);
        m.insert(
            (0, 5),
            vec![lease("a", 1, 1, 10_000), lease("b", 2, 2, 12_000)],
        );
        assert!(check_leases(&m, 2_000).is_empty());
    }

    #[test]
    fn lease_after_confirmed_ack_is_reported() {
        let mut first = lease("a", 1, 1, 10_000);
        first.acked = true;
        let mut m = BTreeMap::new();
        m.insert((0, 5), vec![first, lease("b", 2, 2, 20_000)]);
        assert_eq!(check_leases(&m, 2_000).len(), 1);
    }
}
