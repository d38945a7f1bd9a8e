//! The latency histogram both sides keep.
//!
//! HDR histogram of microseconds with two significant digits: HDR then uses
//! 256 sub-buckets per power of two, a relative error of at most 1/128
//! (0.78%), which keeps percentiles within the 1% the design promises. Two
//! digits rather than three keeps one histogram at a few KiB, which matters
//! when tens of thousands of statement shapes are tracked. The histogram
//! auto-resizes, so it only grows as far as the slowest value seen.

use hdrhistogram::Histogram;
use std::time::Duration;

const SIGFIG: u8 = 2;

/// Latency distribution of one statement shape, in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // Bounds: 1 µs .. 2 µs initially; auto-resize grows the top bound.
        #[allow(clippy::unwrap_used)] // constant, valid arguments
        let mut hist = Histogram::new_with_bounds(1, 2, SIGFIG).unwrap();
        hist.auto(true);
        Self { hist }
    }

    /// Records one duration (rounded to whole microseconds; sub-microsecond
    /// durations count as 1 µs, the histogram's lowest discernible value).
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Records `n` executions of the same duration (what a decoder does with
    /// one bucket of a received histogram). Rounding as in [`Self::record`].
    pub fn record_n(&mut self, d: Duration, n: u64) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        // Cannot fail with auto-resize on except for values beyond u64 range.
        let _ = self.hist.record_n(us, n);
    }

    /// Adds all of `other` into `self`. Exact: same layout on both sides.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // With auto-resize on, add only fails if other's range cannot be
        // represented, which cannot happen for two histograms of this type.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0.0..=1.0), as a duration.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.hist.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    /// Underlying HDR histogram, for encoders that need the buckets.
    pub fn hdr(&self) -> &Histogram<u64> {
        &self.hist
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        // HDR's definition: the smallest value v such that at least q of the
        // values are <= v.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    proptest! {
        #[test]
        fn percentiles_within_one_percent(values in prop::collection::vec(1u64..50_000_000, 1..2000)) {
            let mut h = LatencyHistogram::new();
            for v in &values { h.record(Duration::from_micros(*v)); }
            let mut sorted = values.clone();
            sorted.sort_unstable();
            for q in [0.5, 0.95, 0.99, 1.0] {
                let exact = exact_quantile(&sorted, q) as f64;
                let got = h.quantile(q).as_micros() as f64;
                prop_assert!((got - exact).abs() <= exact * 0.01, "q={q} exact={exact} got={got}");
            }
        }

        #[test]
        fn merge_equals_recording_everything(a in prop::collection::vec(1u64..10_000_000, 0..500),
                                             b in prop::collection::vec(1u64..10_000_000, 0..500)) {
            let (mut ha, mut hb, mut all) = (LatencyHistogram::new(), LatencyHistogram::new(), LatencyHistogram::new());
            for v in &a { ha.record(Duration::from_micros(*v)); all.record(Duration::from_micros(*v)); }
            for v in &b { hb.record(Duration::from_micros(*v)); all.record(Duration::from_micros(*v)); }
            ha.merge(&hb);
            prop_assert_eq!(ha.count(), all.count());
            for q in [0.5, 0.9, 0.99, 1.0] {
                prop_assert_eq!(ha.quantile(q), all.quantile(q));
            }
        }
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = LatencyHistogram::new();
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn record_n_equals_n_records() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        a.record_n(Duration::from_micros(1234), 5);
        for _ in 0..5 {
            b.record(Duration::from_micros(1234));
        }
        assert_eq!(a.count(), 5);
        assert_eq!(a.hdr(), b.hdr());
    }

    #[test]
    fn sub_microsecond_counts_as_one() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_nanos(10));
        assert_eq!(h.count(), 1);
        assert_eq!(h.quantile(1.0), Duration::from_micros(1));
    }
}
