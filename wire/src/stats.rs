//! Statistics of one statement shape, and how two of them merge.
//!
//! Merging is what lets the collector combine nodes and time windows and
//! lets `analyze` combine files processed in parallel: every field merges
//! associatively and commutatively (sums, min/max, histogram add, "keep the
//! slowest"), so the order in which partial results arrive never matters.

use crate::histogram::LatencyHistogram;
use std::collections::BTreeMap;
use std::time::Duration;

/// Milliseconds since the Unix epoch, as written in the log (UTC when the
/// log's time zone was given as an offset or as UTC).
pub type EpochMillis = i64;

/// One concrete execution kept as an example: the slowest one.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub duration: Duration,
    pub timestamp: Option<EpochMillis>,
    /// Masked statement text (no literal values).
    pub text: String,
}

/// The slowest plan seen for a statement shape (from auto_explain), masked.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSample {
    pub duration: Duration,
    pub timestamp: Option<EpochMillis>,
    /// `json` or `text`, as auto_explain logged it.
    pub format: &'static str,
    pub plan: String,
}

/// Errors of one SQLSTATE raised by a statement shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorStat {
    pub count: u64,
    /// The first message seen, masked (messages can quote values).
    pub message: String,
}

/// Everything known about one statement shape (per database and user).
#[derive(Clone, Debug, Default)]
pub struct StatementStats {
    pub calls: u64,
    pub total: Duration,
    pub min: Option<Duration>,
    pub max: Duration,
    pub hist: LatencyHistogram,
    /// Rows returned or affected, when the source knows it (pg_stat_statements).
    pub rows: Option<u64>,
    /// Errors by SQLSTATE (`"?????"` when the log format does not carry it).
    pub errors: BTreeMap<String, ErrorStat>,
    pub temp_files: u64,
    pub temp_bytes: u64,
    pub slowest: Option<Sample>,
    pub slowest_plan: Option<PlanSample>,
    pub first_seen: Option<EpochMillis>,
    pub last_seen: Option<EpochMillis>,
}

impl StatementStats {
    /// Records one execution.
    pub fn record_call(&mut self, duration: Duration, timestamp: Option<EpochMillis>, text: &str) {
        self.calls += 1;
        self.total += duration;
        self.min = Some(self.min.map_or(duration, |m| m.min(duration)));
        self.max = self.max.max(duration);
        self.hist.record(duration);
        self.see(timestamp);
        if self.slowest.as_ref().is_none_or(|s| duration > s.duration) {
            self.slowest = Some(Sample { duration, timestamp, text: text.to_owned() });
        }
    }

    /// Records one error of this shape.
    pub fn record_error(&mut self, sqlstate: &str, message: &str, timestamp: Option<EpochMillis>) {
        let e = self.errors.entry(sqlstate.to_owned()).or_default();
        if e.count == 0 {
            e.message = message.to_owned();
        }
        e.count += 1;
        self.see(timestamp);
    }

    /// Records one plan; kept when it is the slowest seen.
    pub fn record_plan(&mut self, plan: PlanSample) {
        if self.slowest_plan.as_ref().is_none_or(|p| plan.duration > p.duration) {
            self.slowest_plan = Some(plan);
        }
    }

    pub fn record_temp_file(&mut self, bytes: u64, timestamp: Option<EpochMillis>) {
        self.temp_files += 1;
        self.temp_bytes += bytes;
        self.see(timestamp);
    }

    fn see(&mut self, ts: Option<EpochMillis>) {
        if let Some(t) = ts {
            self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    pub fn mean(&self) -> Duration {
        match u128::from(self.calls) {
            0 => Duration::ZERO,
            n => Duration::from_nanos(u64::try_from(self.total.as_nanos() / n).unwrap_or(u64::MAX)),
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &StatementStats) {
        self.calls += other.calls;
        self.total += other.total;
        self.min = merge_min(self.min, other.min);
        self.max = self.max.max(other.max);
        self.hist.merge(&other.hist);
        self.rows = merge_rows(self.rows, other.rows);
        merge_errors(&mut self.errors, &other.errors);
        self.temp_files += other.temp_files;
        self.temp_bytes += other.temp_bytes;
        keep_slowest(&mut self.slowest, other.slowest.as_ref(), |s| s.duration);
        keep_slowest(&mut self.slowest_plan, other.slowest_plan.as_ref(), |p| p.duration);
        if let Some(t) = other.first_seen {
            self.see(Some(t));
        }
        if let Some(t) = other.last_seen {
            self.see(Some(t));
        }
    }
}

// The merge rules, shared with the collector's per-minute rows (which keep
// a sparse histogram instead of a dense one but merge everything else the
// same way).

/// The smaller of two optional minimums.
pub fn merge_min(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The sum of two optional row counts (unknown + known = known).
pub fn merge_rows(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// Adds error counts by SQLSTATE, keeping the first message known.
pub fn merge_errors(into: &mut BTreeMap<String, ErrorStat>, from: &BTreeMap<String, ErrorStat>) {
    for (state, e) in from {
        let mine = into.entry(state.clone()).or_default();
        // On the message, not the count: the OTLP decoder delivers counts
        // (metrics) and messages (log records) as separate partial stats,
        // and either may be merged first.
        if mine.message.is_empty() {
            mine.message.clone_from(&e.message);
        }
        mine.count += e.count;
    }
}

/// Keeps the slower of `mine` and `other` (by `duration`); ties keep `mine`.
pub fn keep_slowest<T: Clone>(mine: &mut Option<T>, other: Option<&T>, duration: fn(&T) -> Duration) {
    if let Some(o) = other
        && mine.as_ref().is_none_or(|m| duration(o) > duration(m))
    {
        *mine = Some(o.clone());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats_from(durs: &[u64]) -> StatementStats {
        let mut s = StatementStats::default();
        for (i, d) in durs.iter().enumerate() {
            s.record_call(Duration::from_micros(*d), Some(i as i64), "SELECT $1");
        }
        s
    }

    proptest! {
        #[test]
        fn merge_is_order_independent(a in prop::collection::vec(1u64..1_000_000, 0..50),
                                      b in prop::collection::vec(1u64..1_000_000, 0..50),
                                      c in prop::collection::vec(1u64..1_000_000, 0..50)) {
            let (sa, sb, sc) = (stats_from(&a), stats_from(&b), stats_from(&c));
            let mut left = sa.clone(); left.merge(&sb); left.merge(&sc);
            let mut right = sc.clone(); right.merge(&sb); right.merge(&sa);
            prop_assert_eq!(left.calls, right.calls);
            prop_assert_eq!(left.total, right.total);
            prop_assert_eq!(left.min, right.min);
            prop_assert_eq!(left.max, right.max);
            prop_assert_eq!(left.hist.quantile(0.95), right.hist.quantile(0.95));
            prop_assert_eq!(left.slowest.map(|s| s.duration), right.slowest.map(|s| s.duration));
            prop_assert_eq!(left.first_seen, right.first_seen);
        }
    }

    #[test]
    fn mean_is_total_over_calls() {
        let s = stats_from(&[100, 200, 600]);
        assert_eq!(s.mean(), Duration::from_micros(300));
        assert_eq!(StatementStats::default().mean(), Duration::ZERO);
    }

    #[test]
    fn errors_keep_first_message_and_count() {
        let mut s = StatementStats::default();
        s.record_error("23505", "first", None);
        s.record_error("23505", "second", None);
        let mut t = StatementStats::default();
        t.record_error("23505", "third", None);
        t.record_error("22012", "div", None);
        s.merge(&t);
        assert_eq!(s.errors["23505"].count, 3);
        assert_eq!(s.errors["23505"].message, "first");
        assert_eq!(s.error_count(), 4);
    }
}
