//! The event trace of one run: what the harness saw (faults, acknowledged produces, leases,
//! settles), in simulated-time order. Its hash is the run's fingerprint: the same seed must give
//! the same hash (tests/determinism.rs).

use std::sync::{Arc, Mutex};

/// One recorded event: simulated time (ms since the run began) and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Simulated ms since the start of the run.
    pub at_ms: u64,
    /// What happened (a stable, human-readable line).
    pub what: String,
}

/// A shared, append-only trace.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    events: Arc<Mutex<Vec<Event>>>,
}

/// Simulated ms since the run began (0 outside a simulation).
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64
}

impl Trace {
    /// Records `what` at the current simulated time.
    pub fn record(&self, what: impl Into<String>) {
        self.record_at(sim_ms(), what);
    }

    /// Records `what` at `at_ms`.
    pub fn record_at(&self, at_ms: u64, what: impl Into<String>) {
        let what = what.into();
        tracing::debug!(at_ms, %what, "trace");
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Event { at_ms, what });
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// FNV-1a over every event: equal traces have equal hashes.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for e in self.events() {
            for b in e
                .at_ms
                .to_le_bytes()
                .iter()
                .chain(e.what.as_bytes())
                .chain(b"\n")
            {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The last `n` events, one per line, for failure reports.
    pub fn tail(&self, n: usize) -> String {
        let ev = self.events();
        let start = ev.len().saturating_sub(n);
        ev[start..]
            .iter()
            .map(|e| format!("  {:>7} ms  {}", e.at_ms, e.what))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
