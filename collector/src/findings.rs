//! Detectors: each a pure function of a store snapshot that returns
//! findings — what is wrong, how sure we are, the numbers behind it, and
//! what to do. Thresholds live in [`DetectorConfig`].
//!
//! The offline set (what a log alone can tell): top time consumers, plan
//! problems from auto_explain (seq scans filtering most rows away, sorts
//! and hashes spilling to disk, nested loops over large outer sides), lock
//! contention and deadlocks, temp-file spills, and error hot spots.

use crate::fingerprint::Fingerprint;
use crate::plan::{PlanInsights, analyze_plan};
use crate::store::{OVERFLOW_FINGERPRINT, Store};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What kind of problem a finding names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    /// `fingerprint:<hex>`, `relation:<name>`, `lock:<mode> on <object>`.
    pub subject: String,
    pub summary: String,
    pub evidence: Map<String, Value>,
    /// One-line suggested action.
    pub action: String,
}

/// Thresholds of the detectors.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// Share of total statement time that makes a top consumer.
    pub top_consumer_share: f64,
    /// Rows removed by a seq scan's filter (per execution) that make it a finding.
    pub seq_scan_min_rows_removed: u64,
    /// ... and the fraction of scanned rows they must be.
    pub seq_scan_min_removed_fraction: f64,
    /// Outer rows of a nested loop that make it a finding.
    pub nested_loop_min_outer_rows: u64,
    /// Errors of one statement that make a hot spot ...
    pub error_min_count: u64,
    /// ... or the share of its executions that failed, counted from this
    /// many errors on (a failed statement has no duration line, so one
    /// typo would otherwise be "100% failing").
    pub error_min_share: f64,
    pub error_min_count_for_share: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            top_consumer_share: 0.20,
            seq_scan_min_rows_removed: 10_000,
            seq_scan_min_removed_fraction: 0.9,
            nested_loop_min_outer_rows: 10_000,
            error_min_count: 10,
            error_min_share: 0.05,
            error_min_count_for_share: 3,
        }
    }
}

/// Runs every offline detector; findings sorted by severity, then kind.
pub fn detect(store: &Store, cfg: &DetectorConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    top_consumers(store, cfg, &mut out);
    plan_problems(store, cfg, &mut out);
    lock_contention(store, &mut out);
    temp_spills(store, &mut out);
    error_hotspots(store, cfg, &mut out);
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)).then(a.subject.cmp(&b.subject)));
    out
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn short(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= 80 { flat } else { flat.chars().take(77).collect::<String>() + "..." }
}

fn fp_subject(f: Fingerprint) -> String {
    format!("fingerprint:{f}")
}

/// A fingerprint taking at least `top_consumer_share` of all statement time.
pub fn top_consumers(store: &Store, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let rows = store.by_fingerprint();
    let total: f64 = rows.iter().map(|r| r.2.total.as_secs_f64()).sum();
    if total <= 0.0 {
        return;
    }
    for (fp, entry, stats) in rows {
        if fp == OVERFLOW_FINGERPRINT {
            continue;
        }
        let share = stats.total.as_secs_f64() / total;
        if share < cfg.top_consumer_share {
            continue;
        }
        let severity = if share >= 0.5 { Severity::Critical } else { Severity::Warning };
        let mut ev = Map::new();
        ev.insert("share".into(), json!((share * 1000.0).round() / 1000.0));
        ev.insert("total_ms".into(), json!(ms(stats.total)));
        ev.insert("calls".into(), json!(stats.calls));
        ev.insert("mean_ms".into(), json!(ms(stats.mean())));
        ev.insert("query".into(), json!(entry.text));
        out.push(Finding {
            kind: Kind::TopConsumer,
            severity,
            subject: fp_subject(fp),
            summary: format!("{:.0}% of all statement time: {}", share * 100.0, short(&entry.text)),
            evidence: ev,
            action: if stats.mean().as_millis() >= 100 {
                "Each call is slow: look at its plan (EXPLAIN ANALYZE) for missing indexes or bad estimates.".into()
            } else {
                "Each call is fast but there are many: batch them, cache the result, or call less often.".into()
            },
        });
    }
}

/// Seq scans that filter most rows away, spills, large nested loops — from
/// the slowest auto_explain plan kept per statement.
pub fn plan_problems(store: &Store, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    for (fp, entry, stats) in store.by_fingerprint() {
        let Some(plan) = &stats.slowest_plan else { continue };
        let Ok(insights) = analyze_plan(&plan.plan) else { continue };
        plan_findings(fp, &entry.text, &insights, plan.duration, cfg, out);
    }
}

fn plan_findings(
    fp: Fingerprint,
    text: &str,
    p: &PlanInsights,
    duration: std::time::Duration,
    cfg: &DetectorConfig,
    out: &mut Vec<Finding>,
) {
    for scan in &p.seq_scans {
        let removed = scan.rows_removed_by_filter.unwrap_or(0);
        let kept = scan.actual_rows.unwrap_or(0);
        let scanned = removed + kept;
        if removed < cfg.seq_scan_min_rows_removed
            || scanned == 0
            || (removed as f64 / scanned as f64) < cfg.seq_scan_min_removed_fraction
        {
            continue;
        }
        let cols = scan.filter_columns.join(", ");
        let mut ev = Map::new();
        ev.insert("relation".into(), json!(scan.relation));
        ev.insert("filter".into(), json!(scan.filter));
        ev.insert("filter_columns".into(), json!(scan.filter_columns));
        ev.insert("rows_removed_by_filter".into(), json!(removed));
        ev.insert("rows_returned".into(), json!(kept));
        ev.insert("plan_duration_ms".into(), json!(ms(duration)));
        ev.insert("fingerprint".into(), json!(fp.to_string()));
        ev.insert("query".into(), json!(text));
        out.push(Finding {
            kind: Kind::SeqScanFilter,
            severity: Severity::Warning,
            subject: format!("relation:{}", scan.relation),
            summary: format!(
                "Seq scan on {} discards {removed} of {scanned} rows ({:.1}%) by filter on {}",
                scan.relation,
                removed as f64 * 100.0 / scanned as f64,
                if cols.is_empty() { "?" } else { &cols }
            ),
            evidence: ev,
            action: if cols.is_empty() {
                format!("Add an index matching the filter on {}.", scan.relation)
            } else {
                format!("Index candidate: CREATE INDEX ON {} ({cols});", scan.relation)
            },
        });
    }
    for spill in &p.spills {
        let mut ev = Map::new();
        ev.insert("node".into(), json!(spill.node));
        ev.insert("what".into(), json!(spill.what));
        ev.insert("disk_kb".into(), json!(spill.disk_kb));
        ev.insert("query".into(), json!(text));
        out.push(Finding {
            kind: Kind::PlanSpill,
            severity: Severity::Warning,
            subject: fp_subject(fp),
            summary: format!("{} spilled to disk ({}): {}", spill.node, spill.what, short(text)),
            evidence: ev,
            action: "Raise work_mem for this statement (SET LOCAL work_mem) or reduce the rows it sorts/hashes.".into(),
        });
    }
    for nl in &p.nested_loops {
        let outer = nl.outer_rows.unwrap_or(0);
        if outer < cfg.nested_loop_min_outer_rows {
            continue;
        }
        let mut ev = Map::new();
        ev.insert("outer_rows".into(), json!(outer));
        ev.insert("inner_loops".into(), json!(nl.inner_loops));
        ev.insert("query".into(), json!(text));
        out.push(Finding {
            kind: Kind::NestedLoop,
            severity: Severity::Warning,
            subject: fp_subject(fp),
            summary: format!("Nested loop over {outer} outer rows: {}", short(text)),
            evidence: ev,
            action: "Check the join's row estimates (ANALYZE the tables) and index the inner join key.".into(),
        });
    }
}

/// Lock waits grouped by waiter, blocker and object; deadlocks.
pub fn lock_contention(store: &Store, out: &mut Vec<Finding>) {
    for (k, v) in &store.rest.locks {
        let mut ev = Map::new();
        ev.insert("database".into(), json!(k.database));
        ev.insert("waiting_statement".into(), json!(k.waiter));
        ev.insert("blocking_statement".into(), json!(k.blocker));
        if v.deadlocks > 0 {
            ev.insert("deadlocks".into(), json!(v.deadlocks));
            out.push(Finding {
                kind: Kind::Deadlock,
                severity: Severity::Critical,
                subject: format!("deadlock:{}", short(&k.waiter)),
                summary: format!("{} deadlock(s) between: {} AND {}", v.deadlocks, short(&k.waiter), short(&k.blocker)),
                evidence: ev,
                action: "Make the transactions take their row locks in the same order (e.g. ORDER BY id … FOR UPDATE)."
                    .into(),
            });
            continue;
        }
        if v.waits == 0 && v.acquired == 0 {
            continue;
        }
        ev.insert("mode".into(), json!(k.mode));
        ev.insert("object".into(), json!(k.object));
        ev.insert("waits".into(), json!(v.waits));
        ev.insert("max_wait_ms".into(), json!(ms(v.max_wait)));
        ev.insert("acquired".into(), json!(v.acquired));
        ev.insert("acquired_wait_ms".into(), json!(ms(v.acquired_wait)));
        let severity = if v.max_wait.as_secs() >= 5 { Severity::Critical } else { Severity::Warning };
        let blocker = if k.blocker.is_empty() { "an unknown statement".to_owned() } else { short(&k.blocker) };
        out.push(Finding {
            kind: Kind::LockContention,
            severity,
            subject: format!("lock:{} on {}", k.mode, k.object),
            summary: format!(
                "{} wait(s) up to {:.0} ms for {} on {}: {} blocked by {}",
                v.waits.max(v.acquired),
                ms(v.max_wait),
                k.mode,
                k.object,
                short(&k.waiter),
                blocker
            ),
            evidence: ev,
            action:
                "Shorten the blocking transaction (commit sooner, no user think-time inside it) or set lock_timeout."
                    .into(),
        });
    }
}

/// Statements that wrote temporary files.
pub fn temp_spills(store: &Store, out: &mut Vec<Finding>) {
    for (fp, entry, stats) in store.by_fingerprint() {
        if stats.temp_files == 0 {
            continue;
        }
        let mut ev = Map::new();
        ev.insert("temp_files".into(), json!(stats.temp_files));
        ev.insert("temp_bytes".into(), json!(stats.temp_bytes));
        ev.insert("query".into(), json!(entry.text));
        out.push(Finding {
            kind: Kind::TempSpill,
            severity: if stats.temp_bytes >= 1 << 30 { Severity::Critical } else { Severity::Warning },
            subject: fp_subject(fp),
            summary: format!(
                "{} temp file(s), {:.1} MiB written: {}",
                stats.temp_files,
                stats.temp_bytes as f64 / 1_048_576.0,
                short(&entry.text)
            ),
            evidence: ev,
            action: "Raise work_mem for this statement, or make it sort/hash fewer rows (index for ORDER BY).".into(),
        });
    }
}

/// Statements that fail often.
pub fn error_hotspots(store: &Store, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    for (fp, entry, stats) in store.by_fingerprint() {
        let errors = stats.error_count();
        if errors == 0 {
            continue;
        }
        let share = errors as f64 / (errors + stats.calls) as f64;
        if errors < cfg.error_min_count && (share < cfg.error_min_share || errors < cfg.error_min_count_for_share) {
            continue;
        }
        let mut ev = Map::new();
        let states: Map<String, Value> =
            stats.errors.iter().map(|(s, e)| (s.clone(), json!({"count": e.count, "message": e.message}))).collect();
        ev.insert("errors".into(), json!(errors));
        ev.insert("calls".into(), json!(stats.calls));
        ev.insert("error_share".into(), json!((share * 1000.0).round() / 1000.0));
        ev.insert("sqlstates".into(), Value::Object(states));
        ev.insert("query".into(), json!(entry.text));
        let top = stats.errors.iter().max_by_key(|(_, e)| e.count).map(|(s, e)| format!("{s} {}", e.message));
        out.push(Finding {
            kind: Kind::ErrorHotspot,
            severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
            subject: fp_subject(fp),
            summary: format!(
                "{errors} error(s) ({:.0}% of executions), mostly {}: {}",
                share * 100.0,
                top.unwrap_or_default(),
                short(&entry.text)
            ),
            evidence: ev,
            action: "Fix the caller: the SQLSTATE says why (23xxx constraint, 22xxx data, 40xxx retry, 42xxx bad SQL)."
                .into(),
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use querywatch_wire::observations::{LockKey, LockStats};
    use querywatch_wire::{Observations, StatementKey};
    use std::time::Duration;

    fn store(rows: &[(&str, u64, u64)]) -> Store {
        let mut o = Observations::default();
        for (text, calls, ms_each) in rows {
            let key = StatementKey { database: "db".into(), user: "u".into(), text: (*text).into() };
            let s = o.statements.entry(key).or_default();
            for _ in 0..*calls {
                s.record_call(Duration::from_millis(*ms_each), None, text);
            }
        }
        let mut st = Store::new(StoreConfig::default());
        st.ingest(o);
        st
    }

    #[test]
    fn top_consumer_known_answer() {
        let s = store(&[("SELECT a FROM t", 10, 50), ("SELECT b FROM t", 100, 1), ("SELECT c FROM t", 100, 1)]);
        let mut out = Vec::new();
        top_consumers(&s, &DetectorConfig::default(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["share"], json!(0.714));
        assert!(out[0].summary.contains("SELECT a FROM t"));
        assert_eq!(out[0].severity, Severity::Critical);
    }

    #[test]
    fn top_consumer_nothing_when_load_is_even() {
        let rows: Vec<(String, u64, u64)> = (0..10).map(|i| (format!("SELECT c{i} FROM t"), 10, 1)).collect();
        let rows: Vec<(&str, u64, u64)> = rows.iter().map(|(t, c, m)| (t.as_str(), *c, *m)).collect();
        let mut out = Vec::new();
        top_consumers(&store(&rows), &DetectorConfig::default(), &mut out);
        assert!(out.is_empty());
        assert!(detect(&store(&[]), &DetectorConfig::default()).is_empty());
    }

    #[test]
    fn error_hotspot_thresholds() {
        let with_errors = |n: usize| {
            let mut s = store(&[("INSERT INTO t VALUES ($1)", 27, 1), ("SELECT 1", 100, 1)]);
            for e in s.queries.values_mut() {
                if e.text.starts_with("INSERT") {
                    for _ in 0..n {
                        e.stats.record_error(
                            "23505",
                            "duplicate key value violates unique constraint \"t_pkey\"",
                            None,
                        );
                    }
                }
            }
            let mut out = Vec::new();
            error_hotspots(&s, &DetectorConfig::default(), &mut out);
            out
        };
        let out = with_errors(3);
        assert_eq!(out.len(), 1, "3 of 30 executions failed: over the 5% share with 3 errors");
        assert_eq!(out[0].evidence["sqlstates"]["23505"]["count"], json!(3));
        assert!(with_errors(1).is_empty(), "a single failure is no hot spot");
        let mut out = Vec::new();
        error_hotspots(&store(&[("SELECT 1", 100, 1)]), &DetectorConfig::default(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn lock_contention_and_deadlock_known_answer() {
        let mut s = store(&[]);
        let key = LockKey {
            database: "db".into(),
            waiter: "UPDATE t SET v = $1 WHERE id = $2".into(),
            blocker: "UPDATE t SET v = $1 WHERE id = $2".into(),
            mode: "ShareLock".into(),
            object: "transaction".into(),
        };
        s.rest
            .locks
            .insert(key.clone(), LockStats { waits: 2, max_wait: Duration::from_millis(1200), ..LockStats::default() });
        s.rest
            .locks
            .insert(LockKey { mode: "deadlock".into(), ..key }, LockStats { deadlocks: 1, ..LockStats::default() });
        let out = detect(&s, &DetectorConfig::default());
        let kinds: Vec<Kind> = out.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![Kind::Deadlock, Kind::LockContention]);
        assert_eq!(out[1].evidence["max_wait_ms"], json!(1200.0));
    }

    #[test]
    fn temp_spill_known_answer_and_nothing() {
        let mut s = store(&[("SELECT * FROM t ORDER BY a", 1, 10)]);
        let mut out = Vec::new();
        temp_spills(&s, &mut out);
        assert!(out.is_empty());
        s.queries.values_mut().next().unwrap().stats.record_temp_file(2_097_152, None);
        temp_spills(&s, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["temp_bytes"], json!(2_097_152));
    }
}
