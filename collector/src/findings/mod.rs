//! Detectors: each a pure function of a [`Snapshot`] that returns findings —
//! what is wrong, how sure we are, the numbers behind it, and what to do.
//! Thresholds live in [`DetectorConfig`]; the defaults are DESIGN.md's.
//!
//! - [`statements`] — per fingerprint: top consumers (cluster-wide and per
//!   node), latency regressions against a baseline snapshot, temp-file
//!   spills, error hot spots, cache candidates.
//! - [`plans`] — from the slowest auto_explain plan per fingerprint: seq
//!   scans filtering most rows away (index candidates), sorts and hashes
//!   spilling to disk, nested loops over large outer sides.
//! - [`locks`] — lock waits grouped by waiting statement, blocking
//!   statement and locked object, per node; deadlocks.
//! - [`partition`] — hot partitions (per node and partition parent) and
//!   hot shards (one plain table loaded unevenly across nodes).
//! - [`nodes`] — hot nodes, and statements much slower on one node.
//! - [`lifecycle`] — the [`FindingTracker`]: findings open, stay open and
//!   resolve with hysteresis across evaluations.
//!
//! [`detect`] runs what a single snapshot can tell (the offline report
//! uses it); [`detect_live`] adds what needs a baseline.
//!
//! A finding's `id` is a hash of what identifies it — kind, subject, node,
//! and for lock groups the two statements — never of its numbers, so the
//! same problem keeps its id from one evaluation to the next.

pub mod lifecycle;
pub mod locks;
pub mod nodes;
pub mod partition;
pub mod plans;
pub mod statements;
#[cfg(test)]
pub(crate) mod testkit;

pub use lifecycle::{FindingTracker, TrackerConfig};

use crate::fingerprint::Fingerprint;
use crate::snapshot::Snapshot;
use querywatch_wire::stats::EpochMillis;
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::Duration;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What kind of problem a finding names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    TopConsumer,
    SeqScanFilter,
    PlanSpill,
    NestedLoop,
    LockContention,
    Deadlock,
    TempSpill,
    ErrorHotspot,
    LatencyRegression,
    HotPartition,
    HotShard,
    HotNode,
    SlowNode,
    CacheCandidate,
}

impl Kind {
    /// The name used in JSON and in `/metrics` labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TopConsumer => "top_consumer",
            Kind::SeqScanFilter => "seq_scan_filter",
            Kind::PlanSpill => "plan_spill",
            Kind::NestedLoop => "nested_loop",
            Kind::LockContention => "lock_contention",
            Kind::Deadlock => "deadlock",
            Kind::TempSpill => "temp_spill",
            Kind::ErrorHotspot => "error_hotspot",
            Kind::LatencyRegression => "latency_regression",
            Kind::HotPartition => "hot_partition",
            Kind::HotShard => "hot_shard",
            Kind::HotNode => "hot_node",
            Kind::SlowNode => "slow_node",
            Kind::CacheCandidate => "cache_candidate",
        }
    }
}

/// Whether the condition still holds (see [`FindingTracker`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Open,
    Resolved,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// Stable identity, 16 hex digits: a hash of kind, subject, node (and
    /// for lock groups the waiting and blocking statements). The numbers
    /// do not enter it, so re-detection finds the same finding.
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    /// What it is about: `fingerprint:<hex>`, `partition:<node>/<db>/<relation>`,
    /// `shard:<node>/<db>/<relation>`, `node:<name>`, `lock:<mode> on <object>`,
    /// `deadlock:<statement>`.
    pub subject: String,
    /// The node it is about; `null` for cluster-wide findings (and offline).
    pub node: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The numbers that justify it.
    pub evidence: Map<String, Value>,
    /// One-line suggested action.
    pub action: String,
    /// When it was first detected (ms since the epoch). From a detector:
    /// the start of the snapshot; once tracked: the evaluation that opened it.
    pub first_seen: EpochMillis,
    /// When it was last detected (ms): the snapshot's end, or the latest
    /// evaluation that found it.
    pub last_seen: EpochMillis,
    pub state: State,
    /// When the tracker declared it resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<EpochMillis>,
}

impl Finding {
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }
}

/// What a detector fills in; [`Draft::build`] adds identity and times.
pub(crate) struct Draft {
    pub kind: Kind,
    pub severity: Severity,
    pub subject: String,
    /// Empty for cluster-wide.
    pub node: String,
    /// Extra identity beyond kind, subject and node (lock groups).
    pub key: String,
    pub summary: String,
    pub evidence: Map<String, Value>,
    pub action: String,
}

impl Draft {
    pub fn build(self, snap: &Snapshot) -> Finding {
        let id = finding_id(self.kind, &self.subject, &self.node, &self.key);
        Finding {
            id,
            kind: self.kind,
            severity: self.severity,
            subject: self.subject,
            node: (!self.node.is_empty()).then_some(self.node),
            summary: self.summary,
            evidence: self.evidence,
            action: self.action,
            first_seen: snap.from,
            last_seen: (snap.to - 1).max(snap.from),
            state: State::Open,
            resolved_at: None,
        }
    }
}

/// FNV-1a, 64 bits: stable across processes and Rust versions (std's
/// hashers promise neither), which an id shown to people must be.
pub fn finding_id(kind: Kind, subject: &str, node: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [kind.as_str(), subject, node, key] {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Thresholds of the detectors. Defaults are DESIGN.md's "Detectors".
/// Read from the collector's `[detect]` table (every field optional).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Share of total database time that makes a fingerprint a top
    /// consumer, cluster-wide and within one node (default 0.20).
    pub top_consumer_share: f64,
    /// A node's database time below which its per-node top consumers are
    /// not reported: on an idle node any statement is "most of the time"
    /// (default 1 s over the snapshot).
    #[serde(with = "humantime_serde")]
    pub top_consumer_node_min_time: Duration,
    /// Recent p95 over baseline p95 that makes a latency regression
    /// (default 2.0).
    pub regression_ratio: f64,
    /// Timed executions needed on each side (recent and baseline) for
    /// their p95 to mean something (default 20).
    pub regression_min_calls: u64,
    /// ... and the least the p95 must grow by, so sub-millisecond jitter
    /// of fast statements is no regression (default 1 ms).
    #[serde(with = "humantime_serde")]
    pub regression_min_increase: Duration,
    /// Rows removed by a seq scan's filter (per execution) that make it a
    /// finding (default 10,000).
    pub seq_scan_min_rows_removed: u64,
    /// ... and the fraction of scanned rows they must be (default 0.9).
    pub seq_scan_min_removed_fraction: f64,
    /// Outer rows of a nested loop that make it a finding (default 10,000).
    pub nested_loop_min_outer_rows: u64,
    /// Errors of one statement that make a hot spot (default 10) ...
    pub error_min_count: u64,
    /// ... or the share of its executions that failed (default 0.05),
    /// counted from `error_min_count_for_share` errors on (default 3; a
    /// failed statement has no duration line, so one typo would otherwise
    /// be "100% failing").
    pub error_min_share: f64,
    pub error_min_count_for_share: u64,
    /// Hot partition: a partition's share of its parent's load on one node
    /// must reach `k / n`, n the partitions of that parent seen on that
    /// node (default k = 3; must be > 1; with n ≤ k the partition must
    /// carry k × the others' mean, see [`partition::partition_threshold`]).
    pub hot_partition_k: f64,
    /// Load (scans + tuples, see [`partition`]) of the parent on the node
    /// below which it is not judged (default 1,000).
    pub hot_partition_min_volume: u64,
    /// Hot shard: one node's load on a plain table at least this many
    /// times the mean of the other nodes that use it (default 3; the
    /// same as a share ≥ k / (k + n − 1) of n nodes — 0.75 of 2, 0.6 of 3).
    pub hot_shard_ratio: f64,
    /// Load of the table summed over nodes below which it is not judged
    /// (default 1,000).
    pub hot_shard_min_volume: u64,
    /// Hot node: database time at least this many times the median
    /// node's (default 3; with two nodes, the other node's).
    pub hot_node_ratio: f64,
    /// Database time of the node below which it is not judged (default
    /// 5 s over the snapshot).
    #[serde(with = "humantime_serde")]
    pub hot_node_min_time: Duration,
    /// Slow on one node: a fingerprint's mean time on one node at least
    /// this many times its median over the other nodes (default 3).
    pub slow_node_ratio: f64,
    /// Executions needed on each node compared (default 20).
    pub slow_node_min_calls: u64,
    /// ... and the least the mean must exceed the others' by (default 1 ms).
    #[serde(with = "humantime_serde")]
    pub slow_node_min_increase: Duration,
    /// Cache candidate: executions per second over the snapshot (default 10).
    pub cache_min_calls_per_second: f64,
    /// ... its p99 over its p50 at most this (default 2.0: stable latency,
    /// the result does not depend much on parameters) ...
    pub cache_max_p99_over_p50: f64,
    /// ... its share of all executions at least this (default 0.10) ...
    pub cache_min_call_share: f64,
    /// ... judged from at least this many timed executions (default 20).
    pub cache_min_timed_calls: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            top_consumer_share: 0.20,
            top_consumer_node_min_time: Duration::from_secs(1),
            regression_ratio: 2.0,
            regression_min_calls: 20,
            regression_min_increase: Duration::from_millis(1),
            seq_scan_min_rows_removed: 10_000,
            seq_scan_min_removed_fraction: 0.9,
            nested_loop_min_outer_rows: 10_000,
            error_min_count: 10,
            error_min_share: 0.05,
            error_min_count_for_share: 3,
            hot_partition_k: 3.0,
            hot_partition_min_volume: 1_000,
            hot_shard_ratio: 3.0,
            hot_shard_min_volume: 1_000,
            hot_node_ratio: 3.0,
            hot_node_min_time: Duration::from_secs(5),
            slow_node_ratio: 3.0,
            slow_node_min_calls: 20,
            slow_node_min_increase: Duration::from_millis(1),
            cache_min_calls_per_second: 10.0,
            cache_max_p99_over_p50: 2.0,
            cache_min_call_share: 0.10,
            cache_min_timed_calls: 20,
        }
    }
}

/// Runs every detector that one snapshot can feed (all but the
/// regression, which needs a baseline): what `querywatch analyze` reports.
/// Sorted by severity (highest first), kind, subject, node.
pub fn detect(snap: &Snapshot, cfg: &DetectorConfig) -> Vec<Finding> {
    detect_live(snap, None, cfg)
}

/// The live collector's pass: everything [`detect`] runs over the recent
/// `window`, plus latency regressions against `baseline` (the preceding
/// hour) when given. Sorted like [`detect`].
pub fn detect_live(window: &Snapshot, baseline: Option<&Snapshot>, cfg: &DetectorConfig) -> Vec<Finding> {
    // Merged once: every per-fingerprint detector reads the same rows.
    let fps = window.by_fingerprint();
    let mut out = Vec::new();
    statements::top_consumers(window, &fps, cfg, &mut out);
    statements::top_consumers_per_node(window, &fps, cfg, &mut out);
    if let Some(base) = baseline {
        statements::regressions(window, &fps, base, cfg, &mut out);
    }
    plans::plan_problems(window, &fps, cfg, &mut out);
    locks::lock_contention(window, &mut out);
    statements::temp_spills(window, &fps, &mut out);
    statements::error_hotspots(window, &fps, cfg, &mut out);
    statements::cache_candidates(window, &fps, cfg, &mut out);
    partition::hot_partitions(window, cfg, &mut out);
    partition::hot_shards(window, cfg, &mut out);
    nodes::hot_nodes(window, cfg, &mut out);
    nodes::slow_on_one_node(window, cfg, &mut out);
    sort(&mut out);
    out
}

fn sort(out: &mut [Finding]) {
    out.sort_by(|a, b| {
        b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)).then(a.subject.cmp(&b.subject)).then(a.node.cmp(&b.node))
    });
}

/// Milliseconds with µs precision, for evidence.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A ratio rounded to 3 decimals, for evidence.
pub(crate) fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `part / whole`, 0 when there is no whole.
pub(crate) fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// A statement on one line, cut to 80 characters.
pub(crate) fn short(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= 80 { flat } else { flat.chars().take(77).collect::<String>() + "..." }
}

pub(crate) fn fp_subject(f: Fingerprint) -> String {
    format!("fingerprint:{f}")
}

/// The median of `v` (sorted here); 0 for none.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use testkit::Snap;

    #[test]
    fn ids_are_stable_and_depend_on_identity_only() {
        let a = finding_id(Kind::HotNode, "node:n1", "n1", "");
        assert_eq!(a, finding_id(Kind::HotNode, "node:n1", "n1", ""));
        assert_eq!(a.len(), 16);
        assert_ne!(a, finding_id(Kind::HotNode, "node:n2", "n2", ""));
        assert_ne!(a, finding_id(Kind::SlowNode, "node:n1", "n1", ""));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(finding_id(Kind::HotNode, "ab", "c", ""), finding_id(Kind::HotNode, "a", "bc", ""));
        // Pinned: ids are shown to people and kept by the tracker.
        assert_eq!(finding_id(Kind::TopConsumer, "fingerprint:0000000000000001", "", ""), "c8c329af06cf9416");
    }

    #[test]
    fn nothing_to_find_in_an_empty_snapshot() {
        let cfg = DetectorConfig::default();
        assert!(detect(&Snapshot::default(), &cfg).is_empty());
        assert!(detect_live(&Snapshot::default(), Some(&Snapshot::default()), &cfg).is_empty());
    }

    /// The end-to-end scenario in miniature: three nodes with one
    /// partitioned table, skewed on n2 only; a slow unindexed query on n1
    /// (its table used nowhere else); a lock wait on n3.
    #[test]
    fn the_three_node_scenario_names_each_problem_once() {
        use querywatch_wire::observations::{LockKey, LockStats};
        let slow = "SELECT id, pad FROM big WHERE val = $1";
        let lookup = "SELECT count(*) FROM events WHERE k = $1 AND v = $2";
        let mut b = Snap::new();
        for node in ["n1", "n2", "n3"] {
            for p in 0..8u64 {
                let scans = match (node, p) {
                    ("n2", 3) => 5475,
                    ("n2", _) => 75,
                    _ => 750,
                };
                b = b.table(node, &format!("public.events_p{p}"), "public.events", scans, 0);
            }
            b = b.query(node, lookup, 6000, 1);
        }
        let wait = LockStats { waits: 1, max_wait: Duration::from_millis(1500), ..LockStats::default() };
        let key = LockKey {
            database: "shop".into(),
            waiter: "UPDATE accounts SET v = v + $1 WHERE id = $2".into(),
            blocker: "UPDATE accounts SET v = v + $1 WHERE id = $2".into(),
            mode: "ShareLock".into(),
            object: "transaction".into(),
        };
        let s = b
            .query("n1", slow, 60, 300)
            .plan("n1", slow, 310, include_str!("../../../tests/fixtures/plans/seqscan_filter.txt"))
            .table("n1", "public.big", "", 60, 18_000_000)
            .table("n3", "public.accounts", "", 2, 2)
            .lock("n3", key, wait)
            .build();
        let all = detect(&s, &DetectorConfig::default());
        let of = |k: Kind| all.iter().filter(|f| f.kind == k).collect::<Vec<_>>();
        let hot = of(Kind::HotPartition);
        assert_eq!(hot.len(), 1, "{all:#?}");
        assert_eq!(hot[0].subject, "partition:n2/db/public.events_p3");
        assert!(of(Kind::HotShard).is_empty(), "{all:#?}");
        let top: Vec<&str> = of(Kind::TopConsumer).iter().map(|f| f.subject.as_str()).collect();
        assert!(top.contains(&format!("fingerprint:{}", testkit::fp_of(slow)).as_str()), "{all:#?}");
        let seq = of(Kind::SeqScanFilter);
        assert_eq!(seq.len(), 1);
        assert!(top.contains(&seq[0].subject.as_str()));
        let locks = of(Kind::LockContention);
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].node.as_deref(), Some("n3"));
        for side in ["waiting_statement", "blocking_statement"] {
            assert!(locks[0].evidence[side].as_str().unwrap().starts_with("UPDATE accounts"), "{side}");
        }
        assert_eq!(locks[0].summary.matches("UPDATE accounts").count(), 2, "{}", locks[0].summary);
    }

    #[test]
    fn regressions_need_the_live_baseline() {
        let cfg = DetectorConfig::default();
        let base = Snap::new().query("n1", "SELECT a FROM t", 100, 10).query("n1", "SELECT b FROM t", 100, 10).build();
        let now = Snap::new().query("n1", "SELECT a FROM t", 30, 40).query("n1", "SELECT b FROM t", 30, 10).build();
        let kinds = |v: Vec<Finding>| v.into_iter().filter(|f| f.kind == Kind::LatencyRegression).count();
        assert_eq!(kinds(detect(&now, &cfg)), 0);
        assert_eq!(kinds(detect_live(&now, None, &cfg)), 0);
        assert_eq!(kinds(detect_live(&now, Some(&base), &cfg)), 1);
        assert_eq!(kinds(detect_live(&base, Some(&base), &cfg)), 0);
    }

    #[test]
    fn kind_names_match_serde() {
        for k in [Kind::TopConsumer, Kind::HotPartition, Kind::HotShard, Kind::LatencyRegression, Kind::CacheCandidate]
        {
            assert_eq!(serde_json::to_value(k).unwrap(), Value::String(k.as_str().into()));
        }
    }

    #[test]
    fn findings_serialize_with_every_documented_field() {
        let s = Snap::new().query("n1", "SELECT a FROM t", 10, 50).query("n1", "SELECT b FROM t", 10, 1).build();
        let f = detect(&s, &DetectorConfig::default());
        let v = serde_json::to_value(&f[0]).unwrap();
        for field in [
            "id",
            "kind",
            "severity",
            "subject",
            "node",
            "summary",
            "evidence",
            "action",
            "first_seen",
            "last_seen",
            "state",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert_eq!(v["state"], "open");
    }
}
