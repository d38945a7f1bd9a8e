//! A snapshot: everything the collector knows about one time range, merged
//! across the minutes in it — what detectors, the API and `/metrics` read.
//!
//! Rows are per (fingerprint, database, node): the node dimension is what
//! tells a hot node from a hot cluster, and users are folded (they multiply
//! rows without telling operators where load is). Tables are per (node,
//! database, relation) with the partition parent, so one partition hot on
//! one node is visible as such.
//!
//! A snapshot owns its data (plain values, no borrows into the store), so
//! the store's lock is held only while it is built, and detectors are pure
//! functions of it. `querywatch analyze` builds one from its file-wide
//! [`Store`](crate::store::Store) with [`Snapshot::from_store`], so the
//! offline report and the live collector run the same detectors.

use crate::fingerprint::{Fingerprint, Method};
use crate::sparse::SparseHistogram;
use crate::store::{OVERFLOW_FINGERPRINT, Store};
use querywatch_wire::Observations;
use querywatch_wire::dbstats::{ActivityKey, PgssDelta, TableDelta};
use querywatch_wire::observations::{LockKey, LockStats};
use querywatch_wire::otlp::ResourceInfo;
use querywatch_wire::stats::{self, EpochMillis, ErrorStat, PlanSample, Sample, StatementStats};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Statistics of one row (or of several merged): the log source's
/// durations and the statistics source's pg_stat_statements deltas.
#[derive(Clone, Debug, Default)]
pub struct RowStats {
    /// Executions seen in the log (with a duration).
    pub calls: u64,
    pub total: Duration,
    pub min: Option<Duration>,
    pub max: Duration,
    pub hist: SparseHistogram,
    pub rows: Option<u64>,
    /// Errors by SQLSTATE.
    pub errors: BTreeMap<String, ErrorStat>,
    pub temp_files: u64,
    pub temp_bytes: u64,
    pub slowest: Option<Sample>,
    pub slowest_plan: Option<PlanSample>,
    /// pg_stat_statements deltas of the same fingerprint.
    pub pgss: PgssDelta,
    /// A pg_stat_statements `queryid` seen for it (for cross-reference).
    pub queryid: Option<i64>,
    pub first_seen: Option<EpochMillis>,
    pub last_seen: Option<EpochMillis>,
}

impl RowStats {
    /// From the log source's statistics of one statement shape, taken
    /// over (the histogram's buckets are not copied).
    pub fn from_statement(s: StatementStats) -> Self {
        RowStats {
            calls: s.calls,
            total: s.total,
            min: s.min,
            max: s.max,
            hist: SparseHistogram::from_owned(s.hist),
            rows: s.rows,
            errors: s.errors,
            temp_files: s.temp_files,
            temp_bytes: s.temp_bytes,
            slowest: s.slowest,
            slowest_plan: s.slowest_plan,
            pgss: PgssDelta::default(),
            queryid: None,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
        }
    }

    /// Adds `o` into `self` (associative and commutative, like
    /// [`StatementStats::merge`]).
    pub fn merge(&mut self, o: &RowStats) {
        self.merge_without_samples(o);
        stats::keep_slowest(&mut self.slowest, o.slowest.as_ref(), |s| s.duration);
        stats::keep_slowest(&mut self.slowest_plan, o.slowest_plan.as_ref(), |p| p.duration);
    }

    /// [`RowStats::merge`] without the slowest sample and plan: for lists
    /// that show numbers only (`/api/v1/queries`), where cloning the
    /// slowest statement text and plan of every fingerprint would cost
    /// more than the whole answer.
    pub fn merge_without_samples(&mut self, o: &RowStats) {
        self.calls += o.calls;
        self.total += o.total;
        self.min = stats::merge_min(self.min, o.min);
        self.max = self.max.max(o.max);
        self.hist.merge(&o.hist);
        self.rows = stats::merge_rows(self.rows, o.rows);
        stats::merge_errors(&mut self.errors, &o.errors);
        self.temp_files += o.temp_files;
        self.temp_bytes += o.temp_bytes;
        self.pgss.merge(&o.pgss);
        self.queryid = self.queryid.or(o.queryid);
        self.first_seen = opt(self.first_seen, o.first_seen, i64::min);
        self.last_seen = opt(self.last_seen, o.last_seen, i64::max);
    }

    /// Adds another row's counts and times, but not its histogram, sample,
    /// plan or errors: for rows folded into `<other>` in a bounded
    /// snapshot, where merging thousands of histograms would cost more than
    /// the snapshot saves, and the `<other>` row is never a finding.
    pub fn merge_totals(&mut self, o: &RowStats) {
        self.calls += o.calls;
        self.total += o.total;
        self.min = stats::merge_min(self.min, o.min);
        self.max = self.max.max(o.max);
        self.rows = stats::merge_rows(self.rows, o.rows);
        self.temp_files += o.temp_files;
        self.temp_bytes += o.temp_bytes;
        self.pgss.merge(&o.pgss);
        self.first_seen = opt(self.first_seen, o.first_seen, i64::min);
        self.last_seen = opt(self.last_seen, o.last_seen, i64::max);
    }

    /// Executions: pg_stat_statements' count when the statistics source
    /// saw the statement (it counts every call; the log only those over
    /// `log_min_duration_statement`), else the log's.
    pub fn exec_calls(&self) -> u64 {
        if self.pgss.calls > 0 { self.pgss.calls } else { self.calls }
    }

    /// Rows returned or affected: pg_stat_statements' count when the
    /// statistics source saw the statement, else the log's (when it has one).
    pub fn rows_returned(&self) -> Option<u64> {
        if self.pgss.calls > 0 { Some(self.pgss.rows) } else { self.rows }
    }

    /// Database time spent: pg_stat_statements' execution + planning time
    /// when it saw the statement, else the log's total duration.
    pub fn db_time(&self) -> Duration {
        if self.pgss.calls > 0 { self.pgss.exec_time + self.pgss.plan_time } else { self.total }
    }

    /// Mean of the log's durations.
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.calls) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.total / n,
            Err(_) => Duration::from_secs_f64(self.total.as_secs_f64() / self.calls as f64),
        }
    }

    /// Quantile of the log's durations, clamped to the exact min and max
    /// (HDR reports a bucket's top value, which can exceed the true max).
    pub fn quantile(&self, q: f64) -> Duration {
        let v = self.hist.quantile(q);
        match self.min {
            Some(min) if self.calls > 0 => v.clamp(min, self.max.max(min)),
            _ => v,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }

    /// Heap bytes held, roughly (the store's memory estimate).
    pub fn heap_bytes(&self) -> usize {
        // Each heap block costs its capacity and the allocator's overhead.
        let block = |cap: usize| if cap == 0 { 0 } else { cap + crate::window::ALLOC_OVERHEAD };
        let sample = self.slowest.as_ref().map_or(0, |s| block(s.text.capacity()));
        let plan = self.slowest_plan.as_ref().map_or(0, |p| block(p.plan.capacity()));
        let errors: usize =
            self.errors.iter().map(|(k, e)| block(k.capacity()) + block(e.message.capacity()) + 64).sum();
        block(self.hist.heap_bytes()) + sample + plan + errors
    }
}

fn opt<T: Copy>(a: Option<T>, b: Option<T>, f: fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, y) => x.or(y),
    }
}

/// One statement row.
#[derive(Clone, Debug)]
pub struct QueryRow {
    pub fingerprint: Fingerprint,
    pub database: Arc<str>,
    /// `querywatch.node` of the agent (empty in `analyze`).
    pub node: Arc<str>,
    /// The first masked shape seen for the fingerprint (literal-free).
    pub text: Arc<str>,
    /// How the fingerprint was obtained (pg_query parse or fallback hash).
    pub method: Method,
    pub stats: RowStats,
}

/// One relation on one node, over the range.
#[derive(Clone, Debug)]
pub struct TableRow {
    pub node: Arc<str>,
    pub database: Arc<str>,
    /// Schema-qualified name.
    pub relation: Arc<str>,
    /// Partition parent, empty for a plain table.
    pub parent: Arc<str>,
    pub delta: TableDelta,
}

/// One lock-wait group on one node.
#[derive(Clone, Debug)]
pub struct LockRow {
    pub node: Arc<str>,
    pub key: LockKey,
    pub stats: LockStats,
}

/// Sampled backends of one kind on one node.
#[derive(Clone, Debug)]
pub struct ActivityRow {
    pub node: Arc<str>,
    pub key: ActivityKey,
    pub samples: u64,
}

/// One node: who it is and what it sent besides statements.
#[derive(Clone, Debug)]
pub struct NodeRow {
    pub node: Arc<str>,
    /// The resource of its latest batch.
    pub resource: ResourceInfo,
    /// When its latest batch arrived (ms since the epoch, collector clock).
    pub last_seen: EpochMillis,
    /// Everything not per statement, lock, table or activity row: input
    /// and agent health counters, log classes, unattributed errors and
    /// temp files, the agent's own overflow counts. (`statements`, `locks`
    /// and `db` are empty here: they are the rows above.)
    pub rest: Observations,
}

/// What was folded away by the collector's caps within the range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OverflowCounts {
    /// Calls folded into the `<other>` fingerprint (collector caps).
    pub query_calls: u64,
    /// Table rows folded into the `<other>` relation.
    pub tables: u64,
    /// Lock waits of groups past the cap.
    pub locks: u64,
    /// Batches from nodes past the node cap (folded into node `<other>`).
    pub node_batches: u64,
    /// Calls the agents themselves folded into `<other>` (their caps).
    pub agent_calls: u64,
}

/// Everything known about one time range.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Range covered, ms since the epoch: `[from, to)`.
    pub from: EpochMillis,
    pub to: EpochMillis,
    pub queries: Vec<QueryRow>,
    pub tables: Vec<TableRow>,
    pub locks: Vec<LockRow>,
    pub activity: Vec<ActivityRow>,
    pub nodes: Vec<NodeRow>,
    pub overflow: OverflowCounts,
}

/// One fingerprint cluster-wide: its rows merged across databases and nodes.
#[derive(Clone, Debug)]
pub struct FingerprintRow {
    pub fingerprint: Fingerprint,
    pub text: Arc<str>,
    pub method: Method,
    pub stats: RowStats,
    /// Nodes that ran it.
    pub nodes: Vec<Arc<str>>,
    pub databases: Vec<Arc<str>>,
}

impl Snapshot {
    /// Rows merged per fingerprint (cluster-wide), in no particular order.
    pub fn by_fingerprint(&self) -> Vec<FingerprintRow> {
        let mut map: FxHashMap<Fingerprint, FingerprintRow> = FxHashMap::default();
        for q in &self.queries {
            let row = map.entry(q.fingerprint).or_insert_with(|| FingerprintRow {
                fingerprint: q.fingerprint,
                text: q.text.clone(),
                method: q.method,
                stats: RowStats::default(),
                nodes: Vec::new(),
                databases: Vec::new(),
            });
            row.stats.merge(&q.stats);
            if !row.nodes.contains(&q.node) {
                row.nodes.push(q.node.clone());
            }
            if !row.databases.contains(&q.database) {
                row.databases.push(q.database.clone());
            }
        }
        map.into_values().collect()
    }

    /// Rows merged per (fingerprint, node).
    pub fn by_fingerprint_and_node(&self) -> Vec<QueryRow> {
        let mut map: FxHashMap<(Fingerprint, Arc<str>), QueryRow> = FxHashMap::default();
        for q in &self.queries {
            map.entry((q.fingerprint, q.node.clone()))
                .and_modify(|r| r.stats.merge(&q.stats))
                .or_insert_with(|| q.clone());
        }
        map.into_values().collect()
    }

    /// Database time per node (every row of the node).
    pub fn db_time_by_node(&self) -> BTreeMap<Arc<str>, Duration> {
        let mut out: BTreeMap<Arc<str>, Duration> = BTreeMap::new();
        for n in &self.nodes {
            out.entry(n.node.clone()).or_default();
        }
        for q in &self.queries {
            *out.entry(q.node.clone()).or_default() += q.stats.db_time();
        }
        out
    }

    /// Total database time of the range.
    pub fn total_db_time(&self) -> Duration {
        self.queries.iter().map(|q| q.stats.db_time()).sum()
    }

    /// The snapshot of an offline analysis: one node named `node` (empty
    /// for `analyze`), users folded, the store's caps' overflow kept.
    pub fn from_store(store: &Store, node: &str) -> Snapshot {
        let node: Arc<str> = node.into();
        let mut rows: FxHashMap<(Fingerprint, String), QueryRow> = FxHashMap::default();
        for (k, e) in &store.queries {
            let stats = RowStats::from_statement(e.stats.clone());
            rows.entry((k.fingerprint, k.database.clone())).and_modify(|r| r.stats.merge(&stats)).or_insert_with(
                || QueryRow {
                    fingerprint: k.fingerprint,
                    database: k.database.as_str().into(),
                    node: node.clone(),
                    text: e.text.as_str().into(),
                    method: if k.fingerprint == OVERFLOW_FINGERPRINT { Method::Fallback } else { e.method },
                    stats,
                },
            );
        }
        let rest = &store.rest;
        let tables = rest
            .db
            .tables
            .iter()
            .map(|(k, d)| TableRow {
                node: node.clone(),
                database: k.database.as_str().into(),
                relation: k.relation.as_str().into(),
                parent: k.parent.as_str().into(),
                delta: *d,
            })
            .collect();
        let locks =
            rest.locks.iter().map(|(k, s)| LockRow { node: node.clone(), key: k.clone(), stats: s.clone() }).collect();
        let activity = rest
            .db
            .activity
            .iter()
            .map(|(k, n)| ActivityRow { node: node.clone(), key: k.clone(), samples: *n })
            .collect();
        let mut node_rest = rest.clone();
        node_rest.locks.clear();
        node_rest.db = Default::default();
        Snapshot {
            from: rest.first_seen.unwrap_or(0),
            to: rest.last_seen.map_or(0, |t| t + 1),
            queries: rows.into_values().collect(),
            tables,
            locks,
            activity,
            nodes: vec![NodeRow {
                node,
                resource: ResourceInfo::default(),
                last_seen: rest.last_seen.unwrap_or(0),
                rest: node_rest,
            }],
            overflow: OverflowCounts {
                query_calls: store.overflow_calls,
                locks: store.overflow_locks,
                agent_calls: rest.overflow_calls,
                ..OverflowCounts::default()
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use querywatch_wire::StatementKey;

    #[test]
    fn from_store_folds_users_and_keeps_totals() {
        let mut o = Observations::default();
        for (user, ms) in [("a", 3), ("b", 5)] {
            let key = StatementKey { database: "db".into(), user: user.into(), text: "SELECT x FROM t".into() };
            o.statements.entry(key).or_default().record_call(Duration::from_millis(ms), Some(1), "SELECT x FROM t");
        }
        let mut store = Store::new(StoreConfig::default());
        store.ingest(o);
        let snap = Snapshot::from_store(&store, "n1");
        assert_eq!(snap.queries.len(), 1);
        let q = &snap.queries[0];
        assert_eq!((q.stats.calls, q.stats.total), (2, Duration::from_millis(8)));
        assert_eq!(q.stats.hist.count(), 2);
        assert_eq!(&*q.node, "n1");
        assert_eq!(snap.db_time_by_node()[&Arc::<str>::from("n1")], Duration::from_millis(8));
    }

    #[test]
    fn statistics_source_wins_for_calls_and_time() {
        let mut r = RowStats { calls: 2, total: Duration::from_millis(10), ..RowStats::default() };
        assert_eq!((r.exec_calls(), r.db_time()), (2, Duration::from_millis(10)));
        r.pgss = PgssDelta { calls: 7, exec_time: Duration::from_millis(30), ..PgssDelta::default() };
        assert_eq!((r.exec_calls(), r.db_time()), (7, Duration::from_millis(30)));
    }
}
