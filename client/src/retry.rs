//! Retry budget and exponential backoff with jitter.
//!
//! # Design notes
//! - Sans-IO: [`RetryPolicy::backoff`] maps an attempt number and a random draw to a delay; the
//!   caller sleeps (on the runtime's clock, which turmoil drives in simulations) and supplies the
//!   randomness (a seeded RNG when [`ClientBuilder::seed`](crate::ClientBuilder::seed) is set).
//! - The budget is counted in attempts *and* bounded in time by the caller's deadline: a retry
//!   loop never runs longer than `max_attempts` calls nor past the operation's deadline.

use std::time::Duration;

/// How often, and how patiently, the client retries failures that retrying can fix
/// (`NotLeader`, connection loss, no quorum, timeouts).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use taskbroker_client::RetryPolicy;
///
/// let policy = RetryPolicy {
///     max_attempts: 5,
///     initial_backoff: Duration::from_millis(10),
///     max_backoff: Duration::from_millis(500),
/// };
/// // Without jitter (draw = 1.0) the delay doubles per attempt up to the cap.
/// assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(10));
/// assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(40));
/// assert_eq!(policy.backoff(30, 1.0), Duration::from_millis(500));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per operation, the first included (at least 1). Why bounded: a caller must
    /// learn that the cluster is down instead of hanging.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Cap on the delay between attempts.
    pub max_backoff: Duration,
}

/// Attempts of [`RetryPolicy::default`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
/// First retry delay of [`RetryPolicy::default`]: a `NotLeader` with a fresh leader is
/// usually fixed within one round trip.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Delay cap of [`RetryPolicy::default`]: once an outage lasts, retry every 1–2 s.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Default for RetryPolicy {
    /// 20 attempts, 50 ms doubling up to 2 s: the 19 sleeps add up to 29.2 s before jitter,
    /// so at least 14.6 s (equal jitter halves a delay at most) and about 22 s on average,
    /// plus the time the attempts themselves take.
    ///
    /// Why that long: a leader killed without warning (e.g. `kill -9` or a container stopped
    /// in Docker) is only replaced after the election timeout, and clients first have to see
    /// their connection to it fail; measured under Docker this took longer than the 4 s the
    /// previous default allowed. ~15 s covers such a failover with headroom; callers that
    /// prefer to fail fast set a smaller policy with
    /// [`ClientBuilder::retry`](crate::ClientBuilder::retry).
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskbroker_client::RetryPolicy;
    ///
    /// let p = RetryPolicy::default();
    /// let slept: Duration = (1..p.max_attempts).map(|r| p.backoff(r, 0.5)).sum();
    /// assert!(slept >= Duration::from_secs(14), "at least ~15 s of patience: {slept:?}");
    /// ```
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    ///
    /// ```
    /// use taskbroker_client::RetryPolicy;
    /// assert_eq!(RetryPolicy::none().max_attempts, 1);
    /// ```
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay before retry number `retry` (1 = the first retry): `initial_backoff *
    /// 2^(retry-1)`, capped at `max_backoff`, scaled by `draw` (clamped to `0.5..=1.0`: "equal
    /// jitter", so retries of many clients spread out but never collapse to zero).
    pub fn backoff(&self, retry: u32, draw: f64) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        base.mul_f64(draw.clamp(0.5, 1.0))
    }

    /// Whether attempt number `attempt` (1 = the first call) may still be made.
    ///
    /// ```
    /// use taskbroker_client::RetryPolicy;
    /// let p = RetryPolicy { max_attempts: 2, ..RetryPolicy::default() };
    /// assert!(p.allows(2));
    /// assert!(!p.allows(3));
    /// ```
    pub fn allows(&self, attempt: u32) -> bool {
        attempt <= self.max_attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_bounds() {
        let p = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(p.backoff(4, 1.0), Duration::from_millis(700));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_millis(700));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.75), Duration::from_millis(150));
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(100));
        assert!(p.allows(1) && p.allows(4) && !p.allows(5));
        assert!(RetryPolicy::none().allows(1) && !RetryPolicy::none().allows(2));
        let zero = RetryPolicy {
            max_attempts: 0,
            ..p
        };
        assert!(zero.allows(1), "at least one attempt is always made");
    }

    #[test]
    fn default_budget_covers_a_failover_of_15_seconds() {
        let p = RetryPolicy::default();
        let sleeps =
            |draw: f64| -> Duration { (1..p.max_attempts).map(|r| p.backoff(r, draw)).sum() };
        // Shortest case (every draw at the jitter floor) and longest case.
        assert!(
            sleeps(0.5) >= Duration::from_millis(14_500),
            "{:?}",
            sleeps(0.5)
        );
        assert!(sleeps(1.0) <= Duration::from_secs(30), "{:?}", sleeps(1.0));
        // The first retries stay quick: a NotLeader is usually fixed at once.
        assert!(p.backoff(1, 1.0) <= Duration::from_millis(50));
    }
}
