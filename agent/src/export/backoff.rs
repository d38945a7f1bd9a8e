//! Exponential backoff with full jitter: the delay before retry `n` is
//! uniform in `[0, min(max, initial × 2^n))`. Full jitter (rather than the
//! reconnect backoff's "equal jitter" in `stats`) spreads a fleet of agents
//! that lost the same collector as widely as possible, so they do not come
//! back in waves; a per-batch time budget (`RetryPolicy::max_elapsed`)
//! bounds the total instead of a floor on each delay.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How hard to retry one batch before it goes to the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Ceiling of any delay (also paces spool draining while the collector
    /// is unreachable).
    pub max: Duration,
    /// Time budget of one batch's attempts; past it the batch is spooled.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Short enough that a 10 s interval's batches do not pile up behind a
    /// dead collector: after 15 s the batch is on disk and the next ones
    /// go straight to the spool.
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(15),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Backoff { initial: policy.initial, max: policy.max.max(policy.initial), failures: 0 }
    }

    /// The delay after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_ceiling().mul_f64(unit_random())
    }

    /// The wait after one more throttled attempt: what the collector asked
    /// for, and at least half of the backoff's ceiling (equal jitter). A
    /// collector or proxy that asks for no wait at all (`Retry-After: 0`,
    /// a date already past through clock skew, a zero `RetryInfo`) was
    /// otherwise asked again at once, in a loop, by every agent.
    pub(crate) fn throttled(&mut self, asked: Duration) -> Duration {
        let ceiling = self.next_ceiling();
        asked.max(ceiling / 2 + (ceiling / 2).mul_f64(unit_random()))
    }

    /// The ceiling for this failure, counted.
    fn next_ceiling(&mut self) -> Duration {
        let ceiling = self.initial.saturating_mul(2u32.saturating_pow(self.failures.min(31))).min(self.max);
        self.failures = self.failures.saturating_add(1);
        ceiling
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in [0, 1) from a freshly keyed std hasher: enough for jitter,
/// and no dependency for it.
fn unit_random() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms doubling up to 1 s.
    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
        }
    }

    #[test]
    fn full_jitter_under_a_doubling_capped_ceiling() {
        let policy = policy();
        let mut b = Backoff::new(&policy);
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..40 {
            assert!(b.next_delay() < ceiling.max(Duration::from_nanos(1)));
            ceiling = (ceiling * 2).min(Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
        let delays: std::collections::BTreeSet<_> = (0..20).map(|_| Backoff::new(&policy).next_delay()).collect();
        assert!(delays.len() > 1, "jitter");
    }

    #[test]
    fn a_throttle_asking_for_no_wait_still_backs_off() {
        let policy = policy();
        let mut b = Backoff::new(&policy);
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..10 {
            let w = b.throttled(Duration::ZERO);
            assert!(w >= ceiling / 2 && w < ceiling, "{w:?} for a ceiling of {ceiling:?}");
            ceiling = (ceiling * 2).min(Duration::from_secs(1));
        }
        // What the collector asks for, when longer, is waited in full.
        assert_eq!(Backoff::new(&policy).throttled(Duration::from_secs(7)), Duration::from_secs(7));
    }
}
