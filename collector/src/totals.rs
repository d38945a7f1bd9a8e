//! Cumulative counters since the collector started: what `/metrics`
//! exposes as Prometheus counters and histograms, so that `rate()` works
//! and several collector replicas sum in PromQL (DESIGN.md, "Scale-out").
//!
//! Windows answer "what happened in this range"; Prometheus wants counters
//! that only go up. Series are per (fingerprint, node) for *admitted*
//! fingerprints only — the first ones seen, then the top ones by time as
//! the collector re-ranks them — and everything else adds to one
//! `fingerprint="other"` series per node. A series, once created, only
//! ever grows: a fingerprint admitted later starts at zero (its earlier
//! calls stay in `other`), and an evicted one disappears (Prometheus marks
//! it stale) — never a counter that goes down.

use crate::fingerprint::Fingerprint;
use crate::snapshot::RowStats;
use querywatch_wire::Observations;
use querywatch_wire::dbstats::TableDelta;
use querywatch_wire::stats::EpochMillis;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets: SQL latencies
/// from sub-millisecond point lookups to half-minute reports.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Which fingerprint a series is for: an admitted one, or all the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesFingerprint {
    One(Fingerprint),
    Other,
}

/// Counters of one (fingerprint, node) series.
#[derive(Clone, Debug, Default)]
pub struct QueryTotals {
    /// When the series started (ms): it counts from zero from then on (a
    /// fingerprint admitted again after an eviction starts over). OTLP
    /// consumers read it as the series' start time.
    pub since: EpochMillis,
    /// Executions (the statistics source's count when it has one).
    pub calls: u64,
    /// Database time, seconds.
    pub time: f64,
    pub rows: u64,
    pub errors: u64,
    pub temp_bytes: u64,
    pub shared_blks_hit: u64,
    pub shared_blks_read: u64,
    /// Log durations: cumulative counts per [`LATENCY_BUCKETS`] bound
    /// (non-cumulative here; the exposition sums them), then `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the log durations, seconds.
    pub duration_sum: f64,
}

/// What a statement row added to the store: how much its row's calls,
/// database time and rows grew (see [`NodeQueries::count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub calls: u64,
    pub time: Duration,
    pub rows: u64,
}

impl Counted {
    /// A row's calls, time and rows as the API shows them: the statistics
    /// source's when it saw the statement, else the log's.
    pub fn of(s: &RowStats) -> Counted {
        Counted { calls: s.exec_calls(), time: s.db_time(), rows: s.rows_returned().unwrap_or(0) }
    }

    /// The growth from `before` (never below zero: counters only go up).
    pub fn since(self, before: Counted) -> Counted {
        Counted {
            calls: self.calls.saturating_sub(before.calls),
            time: self.time.saturating_sub(before.time),
            rows: self.rows.saturating_sub(before.rows),
        }
    }
}

impl QueryTotals {
    /// What the log measured (the histogram, errors, temp files) and the
    /// statistics source's block counts; calls, time and rows come with
    /// [`NodeQueries::count`].
    fn add_measures(&mut self, s: &RowStats) {
        self.errors += s.error_count();
        self.temp_bytes += s.temp_bytes;
        self.shared_blks_hit += s.pgss.shared_blks_hit;
        self.shared_blks_read += s.pgss.shared_blks_read;
        for &(us, n) in s.hist.buckets() {
            // Classify by the HDR bucket's lowest value: a duration of
            // exactly 1 ms then counts as `le="0.001"`, as Prometheus'
            // `le` means; the bucket's few µs of width are HDR's error.
            #[allow(clippy::cast_precision_loss)] // µs values far below 2^52
            let secs = lowest_equivalent(us) as f64 / 1e6;
            let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
            self.buckets[i] += n;
        }
        self.duration_sum += s.total.as_secs_f64();
    }
}

/// The lowest value of the HDR bucket (2 significant digits: 128
/// sub-buckets per power of two from 256 µs on) whose highest is `us`.
fn lowest_equivalent(us: u64) -> u64 {
    if us < 256 {
        return us;
    }
    let width = 1u64 << (63 - us.leading_zeros() - 7);
    us + 1 - width
}

/// Counters of one relation on one node.
#[derive(Clone, Debug, Default)]
pub struct TableTotals {
    /// When the series started (ms): a node forgotten and seen again
    /// starts its series over (see [`Totals::forget_node`]).
    pub since: EpochMillis,
    pub delta: TableDelta,
}

/// Counters of one node.
#[derive(Clone, Debug, Default)]
pub struct NodeTotals {
    /// When its series started (ms), as [`TableTotals::since`].
    pub since: EpochMillis,
    pub batches: u64,
    pub calls: u64,
    /// Database time, seconds.
    pub time: f64,
    pub last_seen: EpochMillis,
    /// The agent's own counters (input, log classes, overflow), summed.
    pub rest: Observations,
}

/// Key of a table series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableSeries {
    pub node: Arc<str>,
    pub database: Arc<str>,
    pub relation: Arc<str>,
    pub parent: Arc<str>,
}

/// One node's batch of statement rows on its way into the totals.
///
/// Calls, time and rows are counted as the growth of the row the store
/// merged the statement into, not as the statement's own numbers: an agent
/// sends a statement's log row and its pg_stat_statements row separately
/// (in one batch or, with `statements_interval` ≠ `interval`, in two), the
/// store merges them into one row that takes the statistics source's
/// numbers, and adding both here counted every execution twice.
pub struct NodeQueries<'a> {
    admitted: &'a mut FxHashSet<Fingerprint>,
    max_fingerprints: usize,
    series: &'a mut FxHashMap<SeriesFingerprint, QueryTotals>,
    node: &'a mut NodeTotals,
    now: EpochMillis,
}

impl NodeQueries<'_> {
    /// Adds what `stats` measured to the series of `fp` (or `other`), and
    /// says which series that is.
    pub fn add(&mut self, fp: Fingerprint, stats: &RowStats) -> SeriesFingerprint {
        let admitted = self.admitted.contains(&fp)
            || (self.admitted.len() < self.max_fingerprints && fp != crate::store::OVERFLOW_FINGERPRINT && {
                self.admitted.insert(fp);
                true
            });
        let key = if admitted { SeriesFingerprint::One(fp) } else { SeriesFingerprint::Other };
        self.entry(key).add_measures(stats);
        key
    }

    /// Counts the calls, time and rows a row of series `key` added.
    pub fn count(&mut self, key: SeriesFingerprint, c: Counted) {
        let t = self.entry(key);
        t.calls += c.calls;
        t.time += c.time.as_secs_f64();
        t.rows += c.rows;
        self.node.calls += c.calls;
        self.node.time += c.time.as_secs_f64();
    }

    fn entry(&mut self, key: SeriesFingerprint) -> &mut QueryTotals {
        let now = self.now;
        self.series.entry(key).or_insert_with(|| QueryTotals { since: now, ..QueryTotals::default() })
    }
}

/// All cumulative counters.
#[derive(Debug, Default)]
pub struct Totals {
    max_fingerprints: usize,
    max_tables: usize,
    admitted: FxHashSet<Fingerprint>,
    /// Per node, then per fingerprint: a batch is one node's, so its rows
    /// look up the node once and then by a number. Keyed by the pair, each
    /// row hashed a node name and cloned its `Arc` twice (ingest's serial
    /// step spent 5% here).
    queries: FxHashMap<Arc<str>, FxHashMap<SeriesFingerprint, QueryTotals>>,
    pub tables: FxHashMap<TableSeries, TableTotals>,
    /// Table deltas of relations past `max_tables` (counted, not exposed per relation).
    pub tables_folded: u64,
    pub nodes: FxHashMap<Arc<str>, NodeTotals>,
}

impl Totals {
    /// `max_fingerprints` series per node at most (plus `other`),
    /// `max_tables` relation series.
    pub fn new(max_fingerprints: usize, max_tables: usize) -> Self {
        Totals { max_fingerprints, max_tables, ..Totals::default() }
    }

    /// Starts adding the statement rows of one node's batch.
    pub fn node_queries(&mut self, node: &Arc<str>, now: EpochMillis) -> NodeQueries<'_> {
        NodeQueries {
            admitted: &mut self.admitted,
            max_fingerprints: self.max_fingerprints,
            series: self.queries.entry(node.clone()).or_default(),
            node: self.nodes.entry(node.clone()).or_default(),
            now,
        }
    }

    /// Adds statement rows of one node, each counted whole (as a row new
    /// to the store would be). The store counts through [`Self::node_queries`];
    /// this is the tests' shorthand.
    #[cfg(test)]
    fn add_queries<'a>(
        &mut self,
        node: &Arc<str>,
        now: EpochMillis,
        rows: impl IntoIterator<Item = (Fingerprint, &'a RowStats)>,
    ) {
        let mut q = self.node_queries(node, now);
        for (fp, stats) in rows {
            let key = q.add(fp, stats);
            q.count(key, Counted::of(stats));
        }
    }

    /// The series of one fingerprint (or `other`) on one node.
    pub fn query(&self, fp: SeriesFingerprint, node: &str) -> Option<&QueryTotals> {
        self.queries.get(node)?.get(&fp)
    }

    /// Every (fingerprint, node) series, sorted by fingerprint and node.
    pub fn query_series(&self) -> Vec<(SeriesFingerprint, &Arc<str>, &QueryTotals)> {
        let mut q: Vec<_> =
            self.queries.iter().flat_map(|(node, fps)| fps.iter().map(move |(fp, t)| (*fp, node, t))).collect();
        q.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        q
    }

    pub fn add_table(&mut self, key: TableSeries, d: &TableDelta, now: EpochMillis) {
        if !self.tables.contains_key(&key) && self.tables.len() >= self.max_tables {
            self.tables_folded += 1;
            return;
        }
        self.tables.entry(key).or_insert_with(|| TableTotals { since: now, ..TableTotals::default() }).delta.merge(d);
    }

    /// Adds what a batch carries besides statements, tables, locks and
    /// activity (those are already taken out of `rest`).
    pub fn add_rest(&mut self, node: &Arc<str>, rest: &Observations) {
        let n = self.nodes.entry(node.clone()).or_default();
        n.rest.merge(rest.clone());
    }

    /// A batch of `node` came in: the first call for a node starts its
    /// series.
    pub fn saw_node(&mut self, node: &Arc<str>, now: EpochMillis) {
        let n = self.nodes.entry(node.clone()).or_insert_with(|| NodeTotals { since: now, ..NodeTotals::default() });
        n.batches += 1;
        n.last_seen = now;
    }

    /// Drops every series of `node` (its statements, relations and own
    /// counters): the store forgot it, having nothing of it left. Without
    /// this, nodes that come and go (pods named anew at each restart)
    /// would add series for good.
    pub fn forget_node(&mut self, node: &str) {
        self.queries.remove(node);
        self.nodes.remove(node);
        self.tables.retain(|k, _| *k.node != *node);
    }

    /// Re-ranks: `top` (best first) are the fingerprints that should have
    /// series. Admitted fingerprints not in `top` are evicted (their
    /// series end), then `top` ones are admitted while there is room.
    /// `<other>` is never admitted: the rows folded into it add to the
    /// `other` series like every fingerprint without one.
    pub fn rerank(&mut self, top: &[Fingerprint]) {
        let keep: FxHashSet<Fingerprint> = top
            .iter()
            .filter(|f| **f != crate::store::OVERFLOW_FINGERPRINT)
            .take(self.max_fingerprints)
            .copied()
            .collect();
        let evicted: Vec<Fingerprint> = self.admitted.iter().filter(|f| !keep.contains(f)).copied().collect();
        for f in &evicted {
            self.admitted.remove(f);
        }
        if !evicted.is_empty() {
            for fps in self.queries.values_mut() {
                fps.retain(|k, _| match k {
                    SeriesFingerprint::One(f) => !evicted.contains(f),
                    SeriesFingerprint::Other => true,
                });
            }
        }
        self.admitted.extend(keep);
    }

    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sparse::SparseHistogram;
    use querywatch_wire::LatencyHistogram;

    fn stats(ms: &[u64]) -> RowStats {
        let mut h = LatencyHistogram::new();
        for m in ms {
            h.record(Duration::from_millis(*m));
        }
        RowStats {
            calls: ms.len() as u64,
            total: Duration::from_millis(ms.iter().sum()),
            hist: SparseHistogram::from_latency(&h),
            ..RowStats::default()
        }
    }

    #[test]
    fn admitted_fingerprints_get_series_the_rest_go_to_other() {
        let mut t = Totals::new(1, 10);
        let n: Arc<str> = "n1".into();
        t.add_queries(&n, 10, [(Fingerprint(1), &stats(&[1, 3])), (Fingerprint(2), &stats(&[200]))]);
        let one = t.query(SeriesFingerprint::One(Fingerprint(1)), &n).unwrap();
        assert_eq!(one.calls, 2);
        assert_eq!((one.buckets[1], one.buckets[3]), (1, 1), "1 ms and 3 ms land in the 1 ms and 5 ms buckets");
        let other = t.query(SeriesFingerprint::Other, &n).unwrap();
        assert_eq!((other.calls, other.since), (1, 10));
        assert_eq!(other.buckets[8], 1, "200 ms is in the 250 ms bucket");
        // Fingerprint 2 becomes the top one: 1's series ends, 2's starts at zero.
        t.rerank(&[Fingerprint(2)]);
        t.add_queries(&n, 20, [(Fingerprint(2), &stats(&[100]))]);
        assert!(t.query(SeriesFingerprint::One(Fingerprint(1)), &n).is_none());
        let two = t.query(SeriesFingerprint::One(Fingerprint(2)), &n).unwrap();
        assert_eq!((two.calls, two.since), (1, 20), "a series admitted later starts then, at zero");
        assert_eq!(t.query(SeriesFingerprint::Other, &n).unwrap().calls, 1, "other never goes down");
        assert_eq!(t.query_series().len(), 2);
        // The evicted fingerprint comes back: it has no series any more.
        t.add_queries(&n, 30, [(Fingerprint(1), &stats(&[5]))]);
        assert!(t.query(SeriesFingerprint::One(Fingerprint(1)), &n).is_none());
        assert_eq!(t.query(SeriesFingerprint::Other, &n).unwrap().calls, 2);
        assert_eq!(t.nodes[&n].calls, 5);
    }

    #[test]
    fn the_stores_other_never_gets_a_series_of_its_own() {
        let mut t = Totals::new(1, 10);
        let n: Arc<str> = "n1".into();
        let overflow = crate::store::OVERFLOW_FINGERPRINT;
        // `<other>` ranked first, as detection's list can have it.
        t.rerank(&[overflow, Fingerprint(2)]);
        t.add_queries(&n, 10, [(overflow, &stats(&[1])), (Fingerprint(2), &stats(&[1, 2]))]);
        assert!(t.query(SeriesFingerprint::One(overflow), &n).is_none());
        assert_eq!(t.query(SeriesFingerprint::One(Fingerprint(2)), &n).unwrap().calls, 2, "the next one has it");
        assert_eq!(t.query(SeriesFingerprint::Other, &n).unwrap().calls, 1);
    }

    #[test]
    fn lowest_equivalent_matches_hdr() {
        // The layout of `LatencyHistogram`: lowest value 1 µs, 2 digits.
        let hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 2, 2).unwrap();
        let mut h = LatencyHistogram::new();
        for us in [1u64, 255, 256, 1000, 1003, 2992, 3000, 1_000_000] {
            h.record(Duration::from_micros(us));
        }
        for (hi, _) in SparseHistogram::from_latency(&h).buckets() {
            assert_eq!(hdr.lowest_equivalent(*hi), lowest_equivalent(*hi), "{hi}");
        }
    }

    #[test]
    fn table_series_are_capped_and_counted() {
        let mut t = Totals::new(1, 1);
        let key =
            |r: &str| TableSeries { node: "n".into(), database: "d".into(), relation: r.into(), parent: "".into() };
        let d = TableDelta { seq_scan: 1, ..TableDelta::default() };
        t.add_table(key("a"), &d, 10);
        t.add_table(key("a"), &d, 20);
        t.add_table(key("b"), &d, 30);
        assert_eq!(t.tables[&key("a")].delta.seq_scan, 2);
        assert_eq!(t.tables[&key("a")].since, 10, "from its first delta");
        assert_eq!(t.tables_folded, 1);
    }

    #[test]
    fn a_forgotten_node_loses_its_series_and_starts_over() {
        let mut t = Totals::new(10, 10);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let table = |n: &Arc<str>| TableSeries {
            node: n.clone(),
            database: "d".into(),
            relation: "r".into(),
            parent: "".into(),
        };
        for n in [&a, &b] {
            t.saw_node(n, 10);
            t.add_queries(n, 10, [(Fingerprint(1), &stats(&[1]))]);
            t.add_table(table(n), &TableDelta { seq_scan: 1, ..TableDelta::default() }, 10);
        }
        t.forget_node("a");
        assert!(t.query(SeriesFingerprint::One(Fingerprint(1)), "a").is_none());
        assert!(!t.nodes.contains_key("a") && !t.tables.contains_key(&table(&a)));
        assert_eq!(t.query(SeriesFingerprint::One(Fingerprint(1)), "b").unwrap().calls, 1, "b keeps its own");
        assert!(t.nodes.contains_key("b") && t.tables.contains_key(&table(&b)));
        // Back again: its series start at zero, from then.
        t.saw_node(&a, 50);
        assert_eq!((t.nodes[&a].since, t.nodes[&a].batches), (50, 1));
    }
}
