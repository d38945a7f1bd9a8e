//! A latency histogram kept as its non-empty HDR buckets only.
//!
//! The agent's [`LatencyHistogram`] is a dense HDR array: about 1,800
//! counters (14 KiB) once a statement has taken a second. The collector
//! keeps one histogram per (fingerprint, database, node) *per minute*, and
//! in a minute a statement fills a handful of buckets, so it stores
//! `(bucket value, count)` pairs sorted by value: 16 bytes a bucket used.
//!
//! The bucket values are HDR's own (the highest value equivalent to the
//! bucket), so converting from a [`LatencyHistogram`] and back loses
//! nothing, two sparse histograms add exactly, and quantiles are HDR's
//! quantiles. What the decoder hands over is already in this form (the
//! sparse [`LatencyHistogram`]), so the store takes its buckets over
//! ([`SparseHistogram::from_owned`]) without a copy.

use querywatch_wire::LatencyHistogram;
use querywatch_wire::histogram;
use std::time::Duration;

/// Non-empty HDR buckets of one latency distribution, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseHistogram {
    /// `(highest equivalent value in µs, count)`, strictly increasing values.
    buckets: Vec<(u64, u64)>,
}

impl SparseHistogram {
    /// The non-empty buckets of `h` (a copy when `h` is in its sparse
    /// form, as decoded histograms are).
    pub fn from_latency(h: &LatencyHistogram) -> Self {
        SparseHistogram { buckets: h.buckets().collect() }
    }

    /// Takes `h`'s buckets (no copy when `h` is in its sparse form, as
    /// decoded histograms are).
    pub fn from_owned(h: LatencyHistogram) -> Self {
        SparseHistogram { buckets: h.into_buckets() }
    }

    /// As a [`LatencyHistogram`] (bucket for bucket the histogram it came from).
    pub fn to_latency(&self) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for &(v, n) in &self.buckets {
            h.record_n(Duration::from_micros(v), n);
        }
        h
    }

    /// Adds `other` into `self` (a merge of two sorted lists, in place).
    pub fn merge(&mut self, other: &SparseHistogram) {
        histogram::merge_sorted(&mut self.buckets, &other.buckets);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// The value at quantile `q` (0..=1), as HDR computes it: the bucket
    /// holding the `ceil(q × count)`-th value (at least the first).
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(v, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(v);
            }
        }
        Duration::from_micros(self.buckets.last().map_or(0, |b| b.0))
    }

    /// `(upper bound in µs, count)` of each non-empty bucket, ascending.
    pub fn buckets(&self) -> &[(u64, u64)] {
        &self.buckets
    }

    /// Heap bytes held (for the store's memory estimate).
    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u64, u64)>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dense(values: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values {
            h.record(Duration::from_micros(*v));
        }
        h
    }

    proptest! {
        #[test]
        fn sparse_quantiles_equal_hdr_and_merge_equals_merging_dense(
            a in prop::collection::vec(1u64..10_000_000, 1..200),
            b in prop::collection::vec(1u64..10_000_000, 0..200),
            q in 0.0f64..=1.0,
        ) {
            let (da, db) = (dense(&a), dense(&b));
            let mut sa = SparseHistogram::from_latency(&da);
            prop_assert_eq!(sa.quantile(q), da.quantile(q));
            sa.merge(&SparseHistogram::from_latency(&db));
            let mut dm = da.clone();
            dm.merge(&db);
            prop_assert_eq!(sa.count(), dm.count());
            prop_assert_eq!(sa.quantile(q), dm.quantile(q));
            prop_assert_eq!(SparseHistogram::from_latency(&sa.to_latency()), sa);
        }
    }

    #[test]
    fn empty_is_zero_and_keeps_nothing() {
        let s = SparseHistogram::default();
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantile(0.99), Duration::ZERO);
        assert_eq!(SparseHistogram::from_latency(&LatencyHistogram::new()), s);
    }
}
