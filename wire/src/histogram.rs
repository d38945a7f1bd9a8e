//! The latency histogram both sides keep.
//!
//! HDR histogram of microseconds with two significant digits: HDR then uses
//! 256 sub-buckets per power of two, a relative error of at most 1/128
//! (0.78%), which keeps percentiles within the 1% the design promises. Two
//! digits rather than three keeps one histogram at a few KiB, which matters
//! when tens of thousands of statement shapes are tracked. The histogram
//! auto-resizes, so it only grows as far as the slowest value seen.
//!
//! # Two forms, one histogram
//!
//! The agent records one duration at a time, which a dense HDR array does
//! in constant time. The collector only ever receives whole distributions
//! (decoded OTLP points), and a dense array of up to 14 KiB for a point
//! that fills a handful of buckets costs more to build and to read than the
//! rest of its decoding. So a [`LatencyHistogram`] is either:
//!
//! - **dense**: the HDR array, what [`LatencyHistogram::record`] writes to;
//! - **sparse**: the non-empty HDR buckets as `(highest equivalent value,
//!   count)` pairs, strictly ascending, what the decoder builds and what
//!   merging two sparse histograms keeps.
//!
//! The form is invisible: both hold HDR's buckets (the sparse one computes
//! a value's bucket with `hdrhistogram`'s own `lowest_equivalent`/
//! `highest_equivalent` on a histogram of the same layout), counts add
//! saturating as HDR's do, and [`LatencyHistogram::quantile`] follows
//! `Histogram::value_at_quantile` step for step, so every answer is the one
//! the dense form gives. A sparse histogram turns dense when something is
//! recorded into it, or when a dense one is merged into it.

use hdrhistogram::Histogram;
use hdrhistogram::iterators::{HistogramIterator, recorded};
use std::sync::LazyLock;
use std::time::Duration;

const SIGFIG: u8 = 2;

/// An empty dense histogram of this module's layout.
fn empty_dense() -> Histogram<u64> {
    // Bounds: 1 µs .. 2 µs initially; auto-resize grows the top bound.
    #[allow(clippy::unwrap_used)] // constant, valid arguments
    let mut hist = Histogram::new_with_bounds(1, 2, SIGFIG).unwrap();
    hist.auto(true);
    hist
}

/// Asked only for bucket bounds, which depend on the layout (lowest value,
/// significant digits), not on how far the histogram has grown.
static LAYOUT: LazyLock<Histogram<u64>> = LazyLock::new(empty_dense);

/// The value HDR reports for the bucket holding `us`: the bucket's highest
/// equivalent value, as `iter_recorded` and `value_at_quantile` compute it
/// (from the bucket's lowest value, which matters only at `u64::MAX`, where
/// `highest_equivalent` saturates differently).
fn bucket_value(us: u64) -> u64 {
    LAYOUT.highest_equivalent(LAYOUT.lowest_equivalent(us))
}

/// The lowest value (µs) of the HDR bucket holding `us`.
pub(crate) fn lowest_equivalent(us: u64) -> u64 {
    LAYOUT.lowest_equivalent(us)
}

/// A histogram of this module's layout, for tests that walk HDR's buckets.
#[cfg(test)]
pub(crate) fn layout() -> &'static Histogram<u64> {
    &LAYOUT
}

/// Whole microseconds of `d`, at least 1 (see [`LatencyHistogram::record`]).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Latency distribution of one statement shape, in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    repr: Repr,
}

#[derive(Clone, Debug)]
enum Repr {
    Dense(Histogram<u64>),
    /// `(bucket_value, count)`: values strictly increasing, counts > 0.
    Sparse(Vec<(u64, u64)>),
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram (sparse: allocates nothing until used).
    pub fn new() -> Self {
        Self { repr: Repr::Sparse(Vec::new()) }
    }

    /// A sparse histogram of `(µs, count)` pairs in any order, each value
    /// bucketed (and rounded up to 1 µs) as [`Self::record_n`] would.
    pub(crate) fn from_micros_counts(pairs: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let pairs = pairs.into_iter();
        // One allocation: the decoder's pairs know how many they are.
        let mut buckets: Vec<(u64, u64)> = Vec::with_capacity(pairs.size_hint().0);
        let mut sorted = true;
        for (us, n) in pairs {
            if n == 0 {
                continue;
            }
            let v = bucket_value(us.max(1));
            match buckets.last_mut() {
                Some(last) if last.0 == v => last.1 = last.1.saturating_add(n),
                Some(last) if last.0 > v => {
                    sorted = false;
                    buckets.push((v, n));
                }
                _ => buckets.push((v, n)),
            }
        }
        if !sorted {
            buckets.sort_unstable_by_key(|b| b.0);
            buckets.dedup_by(|b, a| {
                // `a` is the one kept (earlier), `b` the one removed.
                let same = a.0 == b.0;
                if same {
                    a.1 = a.1.saturating_add(b.1);
                }
                same
            });
        }
        Self { repr: Repr::Sparse(buckets) }
    }

    /// Records one duration (rounded to whole microseconds; sub-microsecond
    /// durations count as 1 µs, the histogram's lowest discernible value).
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Records `n` executions of the same duration. Rounding as in
    /// [`Self::record`].
    pub fn record_n(&mut self, d: Duration, n: u64) {
        // Cannot fail with auto-resize on except for values beyond u64 range.
        let _ = self.dense().record_n(micros(d), n);
    }

    /// The dense form, converting to it first if needed.
    fn dense(&mut self) -> &mut Histogram<u64> {
        if let Repr::Sparse(buckets) = &self.repr {
            let mut hist = empty_dense();
            for &(v, n) in buckets {
                // `v` is in the bucket it names: the same bucket, the same count.
                let _ = hist.record_n(v, n);
            }
            self.repr = Repr::Dense(hist);
        }
        match &mut self.repr {
            Repr::Dense(hist) => hist,
            Repr::Sparse(_) => unreachable!("converted to dense above"),
        }
    }

    /// Adds all of `other` into `self`. Exact in every combination of forms:
    /// both hold HDR's buckets. Two sparse histograms stay sparse (a merge
    /// of sorted lists); a dense one on either side makes the result dense.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        match (&mut self.repr, &other.repr) {
            (Repr::Sparse(mine), Repr::Sparse(theirs)) => merge_sorted(mine, theirs),
            // With auto-resize on, add only fails if other's range cannot be
            // represented, which cannot happen for two histograms of this type.
            (Repr::Dense(mine), Repr::Dense(theirs)) => {
                let _ = mine.add(theirs);
            }
            (Repr::Dense(mine), Repr::Sparse(theirs)) => {
                for &(v, n) in theirs {
                    let _ = mine.record_n(v, n);
                }
            }
            (Repr::Sparse(mine), Repr::Dense(theirs)) => {
                let mut hist = theirs.clone();
                for &(v, n) in mine.iter() {
                    let _ = hist.record_n(v, n);
                }
                self.repr = Repr::Dense(hist);
            }
        }
    }

    pub fn count(&self) -> u64 {
        match &self.repr {
            Repr::Dense(hist) => hist.len(),
            // Saturating, as HDR's total is.
            Repr::Sparse(buckets) => buckets.iter().fold(0u64, |t, b| t.saturating_add(b.1)),
        }
    }

    /// The value at quantile `q` (0.0..=1.0), as a duration.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count() == 0 {
            return Duration::ZERO;
        }
        let us = match &self.repr {
            Repr::Dense(hist) => hist.value_at_quantile(q),
            Repr::Sparse(buckets) => sparse_value_at_quantile(buckets, q),
        };
        Duration::from_micros(us)
    }

    /// Whether this is the sparse form (for tests of who builds which).
    #[cfg(test)]
    pub(crate) fn is_sparse(&self) -> bool {
        matches!(self.repr, Repr::Sparse(_))
    }

    /// [`Self::buckets`] as a vector, taken over without a copy from the
    /// sparse form.
    pub fn into_buckets(self) -> Vec<(u64, u64)> {
        match self.repr {
            Repr::Sparse(buckets) => buckets,
            Repr::Dense(_) => self.buckets().collect(),
        }
    }

    /// `(highest equivalent value in µs, count)` of every non-empty HDR
    /// bucket, ascending by value: the same buckets whichever the form.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        match &self.repr {
            Repr::Dense(hist) => BucketIter::Dense(hist.iter_recorded()),
            Repr::Sparse(buckets) => BucketIter::Sparse(buckets.iter()),
        }
    }
}

/// `Histogram::value_at_quantile` (hdrhistogram 7.5) over sparse buckets,
/// step for step: the same rank rule, the lowest equivalent value at
/// exactly `q == 0`, 0 when float rounding puts the rank past the total.
fn sparse_value_at_quantile(buckets: &[(u64, u64)], q: f64) -> u64 {
    let total = buckets.iter().fold(0u64, |t, b| t.saturating_add(b.1));
    let q = if q > 1.0 { 1.0 } else { q };
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)] // as HDR does
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for &(v, n) in buckets {
        // HDR adds without saturating; the two differ only where HDR
        // would overflow (more than 2^64 values in all).
        seen = seen.saturating_add(n);
        if seen >= rank {
            return if q == 0.0 { lowest_equivalent(v) } else { v };
        }
    }
    0
}

/// Adds the sorted buckets `theirs` into the sorted buckets `mine`
/// (`(value, count)`, values strictly increasing), in place.
///
/// The collector merges every incoming point into a row this way, so it
/// must not allocate when it need not: the counts of values both hold are
/// added where they are, and only values new to `mine` make it grow, once,
/// after which a merge from the back puts every bucket in its place. A
/// statement merged minute after minute mostly hits buckets it has.
pub fn merge_sorted(mine: &mut Vec<(u64, u64)>, theirs: &[(u64, u64)]) {
    let mut new = 0usize;
    let mut i = 0usize;
    for &(v, n) in theirs {
        while i < mine.len() && mine[i].0 < v {
            i += 1;
        }
        match mine.get_mut(i) {
            Some(b) if b.0 == v => {
                b.1 = b.1.saturating_add(n);
                i += 1;
            }
            _ => new += 1,
        }
    }
    if new == 0 {
        return;
    }
    // `a`, `b`: buckets of `mine` and `theirs` not yet placed; `k`: slots
    // not yet written. Shared values were added above: they move as `mine`'s.
    let (mut a, mut b) = (mine.len(), theirs.len());
    // Exactly: the store keeps hundreds of thousands of these, and its
    // memory bound counts their capacity.
    mine.reserve_exact(new);
    mine.resize(a + new, (0, 0));
    let mut k = a + new;
    while b > 0 {
        let (vb, nb) = theirs[b - 1];
        k -= 1;
        if a > 0 && mine[a - 1].0 >= vb {
            if mine[a - 1].0 == vb {
                b -= 1;
            }
            mine[k] = mine[a - 1];
            a -= 1;
        } else {
            mine[k] = (vb, nb);
            b -= 1;
        }
    }
}

/// [`LatencyHistogram::buckets`] of either form (one type, exact size for
/// the sparse form so collecting it allocates once).
enum BucketIter<'a> {
    Dense(HistogramIterator<'a, u64, recorded::Iter>),
    Sparse(std::slice::Iter<'a, (u64, u64)>),
}

impl Iterator for BucketIter<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        match self {
            BucketIter::Dense(it) => it.next().map(|v| (v.value_iterated_to(), v.count_at_value())),
            BucketIter::Sparse(it) => it.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            BucketIter::Dense(it) => it.size_hint(),
            BucketIter::Sparse(it) => it.size_hint(),
        }
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

    fn dense(values: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values {
            h.record(Duration::from_micros(*v));
        }
        assert!(values.is_empty() || !h.is_sparse());
        h
    }

    fn sparse(values: &[u64]) -> LatencyHistogram {
        let h = LatencyHistogram::from_micros_counts(values.iter().map(|&v| (v, 1)));
        assert!(h.is_sparse());
        h
    }

    fn buckets(h: &LatencyHistogram) -> Vec<(u64, u64)> {
        h.buckets().collect()
    }

    /// Every answer of `a` is `b`'s: buckets, count, quantiles (including
    /// the edges HDR treats apart: exactly 0, -0, below 0, above 1, NaN).
    fn assert_same(a: &LatencyHistogram, b: &LatencyHistogram, qs: &[f64]) -> Result<(), TestCaseError> {
        prop_assert_eq!(buckets(a), buckets(b));
        prop_assert_eq!(a.count(), b.count());
        let edges = [0.0, -0.0, -1.0, 1e-12, 0.5, 0.99, 1.0, 1.5, f64::NAN];
        for &q in qs.iter().chain(&edges) {
            prop_assert_eq!(a.quantile(q), b.quantile(q), "q={}", q);
        }
        Ok(())
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

        #[test]
        fn sparse_bucket_is_hdr_bucket(v in 1u64..=10_000_000_000) {
            // The sparse form's bucketing against the dense form's, one value.
            prop_assert_eq!(buckets(&sparse(&[v])), buckets(&dense(&[v])));
            let hdr = empty_dense();
            prop_assert_eq!(bucket_value(v), hdr.highest_equivalent(v));
            prop_assert_eq!(lowest_equivalent(v), hdr.lowest_equivalent(v));
        }

        #[test]
        fn sparse_answers_as_dense(values in prop::collection::vec(1u64..100_000_000_000, 0..400),
                                   qs in prop::collection::vec(0.0f64..=1.0, 8)) {
            let mut shuffled = values.clone();
            shuffled.reverse(); // the sparse builder takes any order
            assert_same(&sparse(&shuffled), &dense(&values), &qs)?;
        }

        #[test]
        fn merge_of_any_forms_equals_merge_of_dense(a in prop::collection::vec(1u64..10_000_000_000, 0..300),
                                                    b in prop::collection::vec(1u64..10_000_000_000, 0..300),
                                                    qs in prop::collection::vec(0.0f64..=1.0, 8)) {
            let mut want = dense(&a);
            want.merge(&dense(&b));
            for (left, right) in [(sparse(&a), sparse(&b)), (sparse(&a), dense(&b)), (dense(&a), sparse(&b))] {
                let mut got = left;
                got.merge(&right);
                assert_same(&got, &want, &qs)?;
            }
            // Sparse with sparse stays sparse.
            let mut ss = sparse(&a);
            ss.merge(&sparse(&b));
            prop_assert!(ss.is_sparse());
        }

        #[test]
        fn merge_sorted_adds_like_a_map(a in prop::collection::btree_map(0u64..64, 1u64..1000, 0..40),
                                        b in prop::collection::btree_map(0u64..64, 1u64..1000, 0..40)) {
            // Few distinct values, so shared and new values interleave.
            let mut want = a.clone();
            for (v, n) in &b {
                *want.entry(*v).or_default() += n;
            }
            let mut got: Vec<(u64, u64)> = a.into_iter().collect();
            merge_sorted(&mut got, &b.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn recording_into_sparse_equals_recording_into_dense(a in prop::collection::vec(1u64..10_000_000, 0..200),
                                                             b in prop::collection::vec(1u64..10_000_000, 1..50)) {
            let (mut s, mut d) = (sparse(&a), dense(&a));
            for v in &b {
                s.record(Duration::from_micros(*v));
                d.record(Duration::from_micros(*v));
            }
            assert_same(&s, &d, &[])?;
        }
    }

    #[test]
    fn empty_histogram_reports_zero() {
        for h in [LatencyHistogram::new(), sparse(&[]), dense(&[])] {
            assert_eq!(h.count(), 0);
            assert_eq!(h.quantile(0.99), Duration::ZERO);
            assert_eq!(h.buckets().count(), 0);
        }
    }

    #[test]
    fn record_n_equals_n_records() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        a.record_n(Duration::from_micros(1234), 5);
        for _ in 0..5 {
            b.record(Duration::from_micros(1234));
        }
        assert_eq!(a.count(), 5);
        assert_eq!(buckets(&a), buckets(&b));
    }

    #[test]
    fn sub_microsecond_counts_as_one() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_nanos(10));
        assert_eq!(h.count(), 1);
        assert_eq!(h.quantile(1.0), Duration::from_micros(1));
        assert_eq!(buckets(&LatencyHistogram::from_micros_counts([(0, 1)])), buckets(&h));
    }

    #[test]
    fn every_bucket_boundary_and_the_top_of_the_range() {
        // Both ends of every HDR bucket up to 2^40 µs, and the largest values.
        let hdr = empty_dense();
        let mut values = Vec::new();
        let mut v = 1u64;
        while v < 1 << 40 {
            values.extend([v, hdr.highest_equivalent(v)]);
            v = hdr.next_non_equivalent(v);
        }
        values.extend([u64::MAX - 1, u64::MAX]);
        assert_same(&sparse(&values), &dense(&values), &[0.25, 0.75]).unwrap();
        assert_same(&sparse(&[u64::MAX]), &dense(&[u64::MAX]), &[]).unwrap();
    }
}
