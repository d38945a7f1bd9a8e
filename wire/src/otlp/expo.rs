//! The latency histogram ([`LatencyHistogram`], HDR, µs) as OTLP
//! exponential-histogram buckets (seconds) and back.
//!
//! # Why scale 8
//!
//! At scale `s` an OTLP bucket `i` holds `(b^i, b^(i+1)]`, `b = 2^(2^-s)`.
//! The encoder maps each HDR bucket `[lo, hi]` (integers, µs) by its centre
//! `c = (lo + hi) / 2` to the OTLP bucket holding `c`; the decoder records
//! each OTLP bucket's count at its representative `r` (the point of least
//! worst-case relative error, `2·L·U / (L + U)`, at most `(b-1)/(b+1)` from
//! anything in the bucket), rounded to the nearest µs.
//!
//! HDR with two significant digits splits each power of two `[2^m, 2^(m+1))`
//! into 128 buckets of width `w = 2^(m-7)` µs (below 256 µs, width 1). `r`
//! lands back in the *same* HDR bucket when `|r - c| < w / 2`; relative to `c`
//! the half-width is at least `2^(m-8) / 2^(m+1) = 1/512 ≈ 0.195%`.
//!
//! - scale 8: `(b-1)/(b+1) = 0.135% < 0.195%` — every count returns to the
//!   HDR bucket it left (below 256 µs, `r` is within 0.35 µs of the integer
//!   and rounds back to it). Decoding is therefore bucket-for-bucket the
//!   agent's histogram: percentiles are exactly the agent's (HDR's own bound,
//!   < 1/128 = 0.78% above the true value), and merging decoded histograms
//!   equals decoding the merged one.
//! - scale 7: `0.271% > 0.195%` — in the upper part of each power of two a
//!   count can move to the next HDR bucket, and HDR reports a bucket's top
//!   value: true value at the bottom of one bucket, reported at the top of the
//!   next, is up to `2·w/lo ≈ 1.09%` off. Over the 1% promised, so not 7.
//!
//! A consumer that reads the buckets directly (not through this decoder)
//! sees at most 0.39% (HDR bucket centre vs. the true value) plus 0.27%
//! (a whole OTLP bucket at scale 8) = 0.66%, taking the bucket's upper bound.
//!
//! The cost: 256 buckets per power of two, but only between the fastest and
//! the slowest call of the interval, and empty buckets cost one byte each in
//! protobuf's packed encoding (and next to nothing gzipped).
//!
//! Other producers' scales decode too (the representative rule is the same),
//! with their own, coarser, error: about `(2^(2^-s) - 1) / 2` plus HDR's.

use crate::histogram::{self, LatencyHistogram};

/// The scale the agent encodes at (see the module documentation).
pub const SCALE: i32 = 8;

/// The scales OTLP allows.
pub(super) const SCALES: std::ops::RangeInclusive<i32> = -10..=20;

/// Positive buckets of one exponential histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Buckets {
    pub zero_count: u64,
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// The index of the bucket holding `value` (> 0) at `scale`.
#[allow(clippy::cast_possible_truncation)] // |log2| < 1100 for any positive f64, × 2^20 fits i32
fn index(value: f64, scale: i32) -> i32 {
    // Floating point can put a value that sits exactly on a boundary into the
    // neighbouring bucket; the representative of either is within one
    // bucket's relative error of it, which the argument above allows for.
    (value.log2() * f64::from(scale).exp2()).ceil() as i32 - 1
}

/// The representative values of the buckets at one scale: of each bucket,
/// the point whose largest relative error to anything in the bucket is
/// smallest. What depends on the scale alone is computed once (the decoder
/// asks for every non-empty bucket of every point).
struct Representatives {
    step: f64,
    base: f64,
}

impl Representatives {
    fn new(scale: i32) -> Self {
        let step = f64::from(-scale).exp2();
        Representatives { step, base: step.exp2() }
    }

    fn of(&self, index: i64) -> f64 {
        #[allow(clippy::cast_precision_loss)] // bucket indexes are far below 2^53
        let lower = (index as f64 * self.step).exp2();
        // In this order, as it always was: the bucket a value lands in
        // must not move by a rounding.
        lower * 2.0 * self.base / (1.0 + self.base)
    }
}

/// The HDR histogram as buckets at [`SCALE`], in seconds.
pub(super) fn from_hdr(h: &LatencyHistogram) -> Buckets {
    let mut out = Buckets::default();
    let mut first: Option<i32> = None;
    for (hi, n) in h.buckets() {
        if hi == 0 {
            // LatencyHistogram never records 0 (it clamps to 1 µs), but if it
            // did, OTLP's zero bucket is where 0 belongs.
            out.zero_count += n;
            continue;
        }
        let lo = histogram::lowest_equivalent(hi);
        #[allow(clippy::cast_precision_loss)] // µs values are far below 2^53
        let centre_secs = (lo as f64 + hi as f64) / 2.0 / 1e6;
        let i = index(centre_secs, SCALE);
        // Buckets come in ascending order, so the first index is the offset.
        let offset = *first.get_or_insert(i);
        let slot = usize::try_from(i - offset).unwrap_or(0);
        if out.counts.len() <= slot {
            out.counts.resize(slot + 1, 0);
        }
        out.counts[slot] += n;
    }
    out.offset = first.unwrap_or(0);
    out
}

/// Buckets (any OTLP scale, seconds), given as the non-empty ones (index
/// from `offset`, count), as an HDR histogram: each bucket's
/// count goes to the HDR bucket of its representative value (counts of
/// OTLP buckets that share an HDR bucket add up). The zero bucket goes to
/// 1 µs, the smallest value a [`LatencyHistogram`] holds.
///
/// The result is the histogram's sparse form, built from the non-empty
/// buckets alone: no dense HDR array, however wide the range.
pub(super) fn to_hdr(
    zero_count: u64,
    offset: i32,
    nonzero: impl IntoIterator<Item = (usize, u64)>,
    scale: i32,
) -> LatencyHistogram {
    let rep = Representatives::new(scale);
    let buckets = nonzero.into_iter().map(|(i, n)| {
        let index = i64::from(offset) + i64::try_from(i).unwrap_or(i64::MAX);
        let micros = (rep.of(index) * 1e6).round();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive; `as` saturates
        (micros as u64, n)
    });
    LatencyHistogram::from_micros_counts(std::iter::once((1, zero_count)).chain(buckets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn buckets_of(h: &LatencyHistogram) -> Vec<(u64, u64)> {
        h.buckets().collect()
    }

    fn dense(values: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values {
            h.record(Duration::from_micros(*v));
        }
        h
    }

    /// What the collector gets for `h`: encoded at [`SCALE`], decoded.
    fn round_trip(h: &LatencyHistogram) -> LatencyHistogram {
        let b = from_hdr(h);
        let back = to_hdr(b.zero_count, b.offset, b.counts.iter().copied().enumerate().filter(|c| c.1 > 0), SCALE);
        assert!(back.is_sparse(), "the decoder builds no dense array");
        back
    }

    /// Same buckets, count and quantiles (at `qs` and at the edges).
    fn assert_same(got: &LatencyHistogram, want: &LatencyHistogram, qs: &[f64]) -> Result<(), TestCaseError> {
        prop_assert_eq!(buckets_of(got), buckets_of(want));
        prop_assert_eq!(got.count(), want.count());
        for &q in qs.iter().chain(&[0.0, 0.5, 0.99, 1.0]) {
            prop_assert_eq!(got.quantile(q), want.quantile(q), "q={}", q);
        }
        Ok(())
    }

    #[test]
    fn bucket_boundaries_follow_otlp() {
        // Scale 0: bucket 0 is (1, 2], bucket -1 is (0.5, 1]; upper bounds inclusive.
        assert_eq!(index(1.0, 0), -1);
        assert_eq!(index(1.5, 0), 0);
        assert_eq!(index(2.0, 0), 0);
        assert_eq!(index(2.0001, 0), 1);
        assert_eq!(index(4.0, 2), 7);
        // The representative lies inside its bucket.
        for scale in [-2, 0, 3, 8, 20] {
            for i in [-5000i64, -1, 0, 1, 77] {
                let r = Representatives::new(scale).of(i);
                let step = f64::from(-scale).exp2();
                if (i as f64 * step).abs() > 1000.0 {
                    continue; // 2^±1000 and beyond: not a latency, and not representable
                }
                #[allow(clippy::cast_precision_loss)]
                let (lo, hi) = ((i as f64 * step).exp2(), ((i + 1) as f64 * step).exp2());
                assert!(lo < r && r < hi, "scale {scale} index {i}: {lo} < {r} < {hi}");
            }
        }
    }

    #[test]
    fn every_hdr_bucket_survives_the_round_trip() {
        // One value in every HDR bucket from 1 µs to ~1.1 h: the exhaustive
        // form of the argument in the module documentation.
        let mut h = LatencyHistogram::new();
        let mut v = 1u64;
        while v < 4_000_000_000 {
            h.record(Duration::from_micros(v));
            v = histogram::layout().next_non_equivalent(v);
        }
        let b = from_hdr(&h);
        assert_eq!(b.zero_count, 0);
        assert_eq!(
            buckets_of(&to_hdr(
                b.zero_count,
                b.offset,
                b.counts.iter().copied().enumerate().filter(|c| c.1 > 0),
                SCALE
            )),
            buckets_of(&h)
        );
    }

    #[test]
    fn scale_seven_would_not_be_enough() {
        // The same exhaustive check at scale 7 finds buckets that move, which
        // is why SCALE is 8 (see the module documentation).
        let hdr = histogram::layout();
        let mut v = 1u64;
        let mut moved = 0;
        while v < 100_000_000 {
            let one = {
                let mut one = LatencyHistogram::new();
                one.record(Duration::from_micros(v));
                one
            };
            let lo = hdr.lowest_equivalent(v);
            let hi = hdr.highest_equivalent(v);
            #[allow(clippy::cast_precision_loss)]
            let i = index((lo as f64 + hi as f64) / 2.0 / 1e6, 7);
            let b = Buckets { zero_count: 0, offset: i, counts: vec![1] };
            if buckets_of(&to_hdr(b.zero_count, b.offset, b.counts.iter().copied().enumerate().filter(|c| c.1 > 0), 7))
                != buckets_of(&one)
            {
                moved += 1;
            }
            v = hdr.next_non_equivalent(v);
        }
        assert!(moved > 0);
    }

    #[test]
    fn empty_histogram_has_no_buckets() {
        let b = from_hdr(&LatencyHistogram::new());
        assert_eq!(b, Buckets::default());
        assert_eq!(
            to_hdr(b.zero_count, b.offset, b.counts.iter().copied().enumerate().filter(|c| c.1 > 0), SCALE).count(),
            0
        );
    }

    proptest! {
        #[test]
        fn round_trip_is_bucket_exact(values in prop::collection::vec(1u64..100_000_000_000, 1..300),
                                      qs in prop::collection::vec(0.0f64..=1.0, 8)) {
            // The decoded (sparse) histogram answers as the recorded (dense) one.
            let h = dense(&values);
            assert_same(&round_trip(&h), &h, &qs)?;
        }

        #[test]
        fn decoded_merges_as_recorded(a in prop::collection::vec(1u64..100_000_000_000, 0..200),
                                      b in prop::collection::vec(1u64..100_000_000_000, 0..200),
                                      qs in prop::collection::vec(0.0f64..=1.0, 8)) {
            let (da, db) = (dense(&a), dense(&b));
            let mut want = da.clone();
            want.merge(&db);
            let (ra, rb) = (round_trip(&da), round_trip(&db));
            for (left, right) in [(&ra, &rb), (&ra, &db), (&da, &rb)] {
                let mut got = left.clone();
                got.merge(right);
                assert_same(&got, &want, &qs)?;
            }
            // And decoding the merged histogram gives the same again.
            assert_same(&round_trip(&want), &want, &qs)?;
        }
    }
}
