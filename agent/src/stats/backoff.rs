//! Exponential backoff with jitter for reconnecting: many agents that lost
//! the same server must not reconnect in lockstep when it comes back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delay `initial × 2^failures`, capped at `max`, of which a random half is
/// kept ("equal jitter": never less than half the nominal delay, so a
/// flapping server still sees backoff).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), failures: 0 }
    }

    /// The delay before the next attempt after one more failure.
    pub fn fail(&mut self) -> Duration {
        let nominal = self.initial.saturating_mul(2u32.saturating_pow(self.failures.min(31))).min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        half + half.mul_f64(unit_random())
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A number in [0, 1) from the process's randomly keyed hasher: enough for
/// jitter, and no dependency for it.
fn unit_random() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut nominal = Duration::from_millis(100);
        for _ in 0..10 {
            let d = b.fail();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} outside [{:?}, {nominal:?}]", nominal / 2);
            nominal = (nominal * 2).min(Duration::from_secs(2));
        }
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.fail() <= Duration::from_millis(100));
        let mut many = Backoff::new(Duration::from_millis(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(many.fail() <= Duration::from_secs(60));
        }
        // Jitter: not every delay of the same step is the same.
        let delays: std::collections::BTreeSet<_> =
            (0..20).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).fail()).collect();
        assert!(delays.len() > 1);
    }
}
