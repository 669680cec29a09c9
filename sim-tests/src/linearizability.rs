//! A linearizability checker (Wing & Gong's search, with the memoisation of Lowe and of
//! Knossos/Porcupine) and the sequential model of the metadata state machine's topic operations.
//!
//! A *history* is a list of [`Operation`]s: what a client asked, when it asked (invocation), and
//! what it was told and when (completion), both on the simulated clock. An operation whose
//! outcome is unknown (a timeout, a lost connection, `unavailable`) has no completion: it may have
//! taken effect at any time after its invocation, or never.
//!
//! The history is *linearizable* if its operations can be put in one sequential order that
//! (a) respects real time: an operation that completed before another was invoked comes first,
//! and (b) the [`Model`] accepts: applying the operations in that order to the sequential object
//! gives every completed operation the result its client saw. [`check`] searches for such an
//! order: at each step it tries every operation that may go next (invoked no later than the
//! earliest completion among the operations not yet placed), depth first, remembering the
//! `(placed set, model state)` pairs it has already explored. Operations with unknown outcome
//! may be placed with any result, or left out. The search is bounded by a step budget; past it
//! the verdict is [`Verdict::Inconclusive`].
//!
//! Two unknown-outcome operations with equal inputs are interchangeable, so only the earliest
//! invoked of them is tried at each step (this keeps histories with many timeouts tractable
//! without changing the verdict).
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable iff its restriction to
//! every object is, so [`check_by_key`] checks each topic name on its own.
//!
//! # Example
//! ```
//! use taskbroker_sim_tests::linearizability::{check, MetaOp, MetaResult, Operation, TopicModel, Verdict};
//!
//! // Two clients: A creates the topic while B deletes it; B was told "deleted", so A's create
//! // must have come first.
//! let history = vec![
//!     Operation::done("a", MetaOp::Create { visibility_ms: 1_000, partitions: 1 }, 0, 10, MetaResult::Topic { partitions: 1 }),
//!     Operation::done("b", MetaOp::Delete, 5, 15, MetaResult::Ok),
//! ];
//! assert_eq!(check(&TopicModel, &history, 10_000), Verdict::Linearizable);
//! // Had B deleted before A was even invoked, no order explains "deleted".
//! let history = vec![
//!     Operation::done("a", MetaOp::Create { visibility_ms: 1_000, partitions: 1 }, 20, 30, MetaResult::Topic { partitions: 1 }),
//!     Operation::done("b", MetaOp::Delete, 5, 15, MetaResult::Ok),
//! ];
//! assert!(matches!(check(&TopicModel, &history, 10_000), Verdict::NotLinearizable { .. }));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

/// A sequential specification.
pub trait Model {
    /// The object's state.
    type State: Clone + Ord + Debug;
    /// What a client asks.
    type Input: Clone + Eq + Debug;
    /// What a client is told.
    type Output: Clone + Eq + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. `output` is what the client was told (`None`: unknown, any
    /// result is acceptable). Returns the next state, or `None` if the sequential object could
    /// not have answered `output` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Who issued it (for reports).
    pub client: String,
    /// What was asked.
    pub input: I,
    /// When it was invoked (simulated ns).
    pub invoked: u64,
    /// When it completed and what the client was told; `None` if the outcome is unknown.
    pub completed: Option<(u64, O)>,
}

impl<I, O> Operation<I, O> {
    /// An operation that completed at `completed` with `output`.
    pub fn done(client: &str, input: I, invoked: u64, completed: u64, output: O) -> Self {
        Operation {
            client: client.to_string(),
            input,
            invoked,
            completed: Some((completed.max(invoked), output)),
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client: &str, input: I, invoked: u64) -> Self {
        Operation {
            client: client.to_string(),
            input,
            invoked,
            completed: None,
        }
    }

    fn completed_at(&self) -> u64 {
        self.completed.as_ref().map_or(u64::MAX, |(t, _)| *t)
    }
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid sequential order exists.
    Linearizable,
    /// No order explains the history. `placed` is the longest prefix of a candidate order the
    /// search found (operation indices); `unplaced` are the completed operations it could not
    /// place after it.
    NotLinearizable {
        /// Longest valid prefix found.
        placed: Vec<usize>,
        /// Completed operations left over after that prefix.
        unplaced: Vec<usize>,
    },
    /// The step budget ran out before an answer.
    Inconclusive {
        /// Steps taken.
        steps: u64,
    },
}

struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [Operation<M::Input, M::Output>],
    /// Operation indices by invocation time.
    order: Vec<usize>,
    placed: Vec<bool>,
    path: Vec<usize>,
    best: Vec<usize>,
    best_completed: usize,
    completed_left: usize,
    seen: BTreeSet<(Vec<u64>, M::State)>,
    steps: u64,
    max_steps: u64,
}

enum Outcome {
    Found,
    Exhausted,
    OutOfSteps,
}

impl<M: Model> Search<'_, M> {
    fn key(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.placed.len().div_ceil(64)];
        for (i, p) in self.placed.iter().enumerate() {
            if *p {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    fn run(&mut self, state: &M::State) -> Outcome {
        if self.completed_left == 0 {
            return Outcome::Found;
        }
        self.steps += 1;
        if self.steps > self.max_steps {
            return Outcome::OutOfSteps;
        }
        if !self.seen.insert((self.key(), state.clone())) {
            return Outcome::Exhausted;
        }
        let placed_completed = self
            .path
            .iter()
            .filter(|i| self.ops[**i].completed.is_some());
        let n_completed = placed_completed.count();
        if n_completed > self.best_completed || self.best.is_empty() {
            self.best_completed = n_completed;
            self.best = self.path.clone();
        }
        // The earliest completion among the operations not yet placed bounds which may go next.
        let horizon = (0..self.ops.len())
            .filter(|i| !self.placed[*i])
            .map(|i| self.ops[i].completed_at())
            .min()
            .unwrap_or(u64::MAX);
        // Completed operations first: unknown ones are placed only when nothing else fits.
        let mut candidates: Vec<usize> = Vec::new();
        for pass_unknown in [false, true] {
            for &i in &self.order {
                let op = &self.ops[i];
                if op.invoked > horizon {
                    break;
                }
                if !self.placed[i] && op.completed.is_none() == pass_unknown {
                    candidates.push(i);
                }
            }
        }
        let mut tried_unknown: Vec<&M::Input> = Vec::new();
        for i in candidates {
            let op = &self.ops[i];
            if op.completed.is_none() {
                if tried_unknown.contains(&&op.input) {
                    continue;
                }
                tried_unknown.push(&op.input);
            }
            let output = op.completed.as_ref().map(|(_, o)| o);
            let Some(next) = self.model.step(state, &op.input, output) else {
                continue;
            };
            self.placed[i] = true;
            self.path.push(i);
            if op.completed.is_some() {
                self.completed_left -= 1;
            }
            let r = self.run(&next);
            if op.completed.is_some() {
                self.completed_left += 1;
            }
            self.path.pop();
            self.placed[i] = false;
            match r {
                Outcome::Exhausted => {}
                found_or_out => return found_or_out,
            }
        }
        Outcome::Exhausted
    }
}

/// Checks `history` against `model` with at most `max_steps` search steps.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Verdict {
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|i| (history[*i].invoked, *i));
    let mut s = Search {
        model,
        ops: history,
        order,
        placed: vec![false; history.len()],
        path: Vec::new(),
        best: Vec::new(),
        best_completed: 0,
        completed_left: history.iter().filter(|o| o.completed.is_some()).count(),
        seen: BTreeSet::new(),
        steps: 0,
        max_steps,
    };
    match s.run(&model.init()) {
        Outcome::Found => Verdict::Linearizable,
        Outcome::OutOfSteps => Verdict::Inconclusive { steps: s.steps },
        Outcome::Exhausted => {
            let placed = s.best;
            let unplaced = (0..history.len())
                .filter(|i| history[*i].completed.is_some() && !placed.contains(i))
                .collect();
            Verdict::NotLinearizable { placed, unplaced }
        }
    }
}

/// Checks each key's sub-history on its own (linearizability is local); returns the verdict of
/// every key that is not linearizable or was inconclusive, with its sub-history.
#[allow(clippy::type_complexity)]
pub fn check_by_key<K: Ord + Clone, M: Model>(
    model: &M,
    history: &[(K, Operation<M::Input, M::Output>)],
    max_steps: u64,
) -> Vec<(K, Verdict, Vec<Operation<M::Input, M::Output>>)> {
    let mut by_key: BTreeMap<K, Vec<Operation<M::Input, M::Output>>> = BTreeMap::new();
    for (k, op) in history {
        by_key.entry(k.clone()).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .filter_map(|(k, ops)| match check(model, &ops, max_steps) {
            Verdict::Linearizable => None,
            v => Some((k, v, ops)),
        })
        .collect()
}

/// A topic operation the simulation's metadata clients issue (per topic name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaOp {
    /// `create_topic` with this visibility timeout and partition count (other settings fixed).
    Create {
        /// Visibility timeout, ms (two values are used, so creates can conflict).
        visibility_ms: u64,
        /// Partition count.
        partitions: u32,
    },
    /// `delete_topic`.
    Delete,
    /// `add_partitions`.
    AddPartitions {
        /// Partitions added.
        count: u32,
    },
}

/// What a metadata client was told (definite answers only; anything else is unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaResult {
    /// `create_topic` succeeded; the topic has this many partitions.
    Topic {
        /// Partition count in the answer.
        partitions: u32,
    },
    /// `delete_topic` or `add_partitions` succeeded.
    Ok,
    /// `unknown topic`.
    UnknownTopic,
    /// `topic exists with another configuration`.
    Conflict,
}

/// One topic in the sequential metadata state machine: absent, or present with its
/// configuration (the visibility timeout the workload varies) and partition count. Mirrors
/// `MetadataState::apply` for `CreateTopic` (idempotent by configuration, partition count
/// included), `DeleteTopic` and `AddPartitions` (which raises the configured count).
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicModel;

/// The state of one topic in [`TopicModel`]: `(visibility_ms, partitions)` when it exists.
pub type TopicState = Option<(u64, u32)>;

impl Model for TopicModel {
    type State = TopicState;
    type Input = MetaOp;
    type Output = MetaResult;

    fn init(&self) -> TopicState {
        None
    }

    fn step(&self, s: &TopicState, op: &MetaOp, out: Option<&MetaResult>) -> Option<TopicState> {
        let (next, expect) = match (op, s) {
            (
                MetaOp::Create {
                    visibility_ms,
                    partitions,
                },
                None,
            ) => (
                Some((*visibility_ms, *partitions)),
                MetaResult::Topic {
                    partitions: *partitions,
                },
            ),
            (
                MetaOp::Create {
                    visibility_ms,
                    partitions,
                },
                Some((v, p)),
            ) => {
                if v == visibility_ms && p == partitions {
                    (*s, MetaResult::Topic { partitions: *p })
                } else {
                    (*s, MetaResult::Conflict)
                }
            }
            (MetaOp::Delete, Some(_)) => (None, MetaResult::Ok),
            (MetaOp::Delete, None) => (None, MetaResult::UnknownTopic),
            (MetaOp::AddPartitions { count }, Some((v, p))) => {
                (Some((*v, p + count)), MetaResult::Ok)
            }
            (MetaOp::AddPartitions { .. }, None) => (None, MetaResult::UnknownTopic),
        };
        match out {
            Some(o) if *o != expect => None,
            _ => Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MetaOp = MetaOp::Create {
        visibility_ms: 1_000,
        partitions: 1,
    };
    const B: MetaOp = MetaOp::Create {
        visibility_ms: 2_000,
        partitions: 1,
    };
    const TOPIC1: MetaResult = MetaResult::Topic { partitions: 1 };
    const TOPIC2: MetaResult = MetaResult::Topic { partitions: 2 };
    const ADD: MetaOp = MetaOp::AddPartitions { count: 1 };

    fn done(c: &str, i: MetaOp, a: u64, b: u64, o: MetaResult) -> Operation<MetaOp, MetaResult> {
        Operation::done(c, i, a, b, o)
    }

    fn verdict(h: &[Operation<MetaOp, MetaResult>]) -> Verdict {
        check(&TopicModel, h, 1_000_000)
    }

    #[test]
    fn sequential_history_follows_the_model() {
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            done("a", B, 2, 3, MetaResult::Conflict),
            done("a", ADD, 4, 5, MetaResult::Ok),
            done("a", A, 6, 7, MetaResult::Conflict),
            done(
                "a",
                MetaOp::Create {
                    visibility_ms: 1_000,
                    partitions: 2,
                },
                8,
                9,
                TOPIC2,
            ),
            done("a", MetaOp::Delete, 10, 11, MetaResult::Ok),
            done("a", MetaOp::Delete, 12, 13, MetaResult::UnknownTopic),
            done("a", ADD, 14, 15, MetaResult::UnknownTopic),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two concurrent creates with different settings: whichever went first wins, the other
        // conflicts; either answer pattern is linearizable.
        let h = vec![
            done("a", A, 0, 10, MetaResult::Conflict),
            done("b", B, 1, 9, TOPIC1),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // A delete concurrent with a create may see the topic or not.
        let h = vec![
            done("a", A, 0, 10, TOPIC1),
            done("b", MetaOp::Delete, 1, 9, MetaResult::UnknownTopic),
            done("c", A, 11, 12, TOPIC1),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_of_a_deleted_topic_is_rejected() {
        // The topic was deleted (confirmed) before c was invoked; c's create must find it
        // absent and create it, but c was told the old (grown) topic is in the way.
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            done("a", ADD, 2, 3, MetaResult::Ok),
            done("b", MetaOp::Delete, 4, 5, MetaResult::Ok),
            done("c", A, 6, 7, MetaResult::Conflict),
        ];
        let Verdict::NotLinearizable { placed, unplaced } = verdict(&h) else {
            panic!("accepted a stale read")
        };
        assert_eq!(placed, vec![0, 1, 2]);
        assert_eq!(unplaced, vec![3]);
    }

    #[test]
    fn reordering_a_history_in_real_time_makes_it_non_linearizable() {
        let ok = vec![
            done("a", A, 0, 10, TOPIC1),
            done("b", MetaOp::Delete, 20, 30, MetaResult::Ok),
            done("a", MetaOp::Delete, 40, 50, MetaResult::UnknownTopic),
        ];
        assert_eq!(verdict(&ok), Verdict::Linearizable);
        // The same answers, but the successful delete now completes before the create starts.
        let mut reordered = ok.clone();
        reordered[1].invoked = 0;
        reordered[1].completed = Some((1, MetaResult::Ok));
        reordered[0].invoked = 2;
        assert!(matches!(
            verdict(&reordered),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_lost_update_is_rejected() {
        // Two confirmed adds, then a create that reports 2 partitions: one add was lost.
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            done("a", ADD, 2, 3, MetaResult::Ok),
            done("b", ADD, 2, 4, MetaResult::Ok),
            done(
                "c",
                MetaOp::Create {
                    visibility_ms: 1_000,
                    partitions: 2,
                },
                5,
                6,
                TOPIC2,
            ),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        // b's delete timed out: it may take effect after c's create was confirmed (d then
        // finds nothing) ...
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            Operation::unknown("b", MetaOp::Delete, 2),
            done("c", A, 10, 11, TOPIC1),
            done("d", MetaOp::Delete, 20, 21, MetaResult::UnknownTopic),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // ... or never (the topic is still there).
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            Operation::unknown("b", MetaOp::Delete, 2),
            done("c", ADD, 30, 31, MetaResult::Ok),
        ];
        assert_eq!(verdict(&h), Verdict::Linearizable);
        // But not before it was invoked.
        let h = vec![
            done("a", A, 0, 1, TOPIC1),
            done("c", ADD, 2, 3, MetaResult::UnknownTopic),
            Operation::unknown("b", MetaOp::Delete, 5),
        ];
        assert!(matches!(verdict(&h), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn many_timeouts_stay_tractable_and_budget_is_reported() {
        let mut h = vec![done("a", A, 0, 1, TOPIC1)];
        for i in 0..60u64 {
            h.push(Operation::unknown("t", MetaOp::Delete, 2 + i));
            h.push(Operation::unknown("t", A, 2 + i));
            h.push(Operation::unknown("t", ADD, 2 + i));
        }
        for i in 0..40u64 {
            let t = 100 + 10 * i;
            let r = if i % 2 == 0 {
                MetaResult::Ok
            } else {
                MetaResult::UnknownTopic
            };
            h.push(done("d", MetaOp::Delete, t, t + 5, r));
            h.push(done("c", A, t + 6, t + 7, TOPIC1));
        }
        // Every other delete finds nothing although a create was confirmed just before it: only
        // a concurrent unknown delete explains it, and there are enough of them.
        assert_eq!(check(&TopicModel, &h, 2_000_000), Verdict::Linearizable);
        assert!(matches!(
            check(&TopicModel, &h, 3),
            Verdict::Inconclusive { .. }
        ));
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            ("x".to_string(), done("a", A, 0, 1, TOPIC1)),
            (
                "y".to_string(),
                done("a", MetaOp::Delete, 2, 3, MetaResult::Ok),
            ),
            (
                "x".to_string(),
                done("b", MetaOp::Delete, 4, 5, MetaResult::Ok),
            ),
        ];
        let bad = check_by_key(&TopicModel, &h, 10_000);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "y");
    }
}
