//! Detectors over statements (fingerprints): top consumers of database
//! time (cluster-wide and per node), latency regressions against a
//! baseline, temp-file spills, error hot spots and cache candidates.
//!
//! Time is [`RowStats::db_time`] and executions [`RowStats::exec_calls`]:
//! pg_stat_statements' numbers when the statistics source saw the
//! statement (it counts every call), else the log's. Percentiles come from
//! the log's histogram, the only source of latency distributions.

use super::{DetectorConfig, Draft, Finding, Kind, Severity, fp_subject, ms, r3, share, short};
use crate::fingerprint::Fingerprint;
use crate::snapshot::{FingerprintRow, RowStats, Snapshot};
use crate::store::OVERFLOW_FINGERPRINT;
use querywatch_wire::shape::is_read_only;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Mean database time per execution.
pub(crate) fn mean_time(s: &RowStats) -> Duration {
    let calls = s.exec_calls();
    if calls == 0 { Duration::ZERO } else { Duration::from_secs_f64(s.db_time().as_secs_f64() / calls as f64) }
}

fn consumer_action(s: &RowStats) -> String {
    if mean_time(s).as_millis() >= 100 {
        "Each call is slow: look at its plan (EXPLAIN ANALYZE) for missing indexes or bad estimates.".into()
    } else {
        "Each call is fast but there are many: batch them, cache the result, or call less often.".into()
    }
}

fn consumer_evidence(share: f64, s: &RowStats, text: &str) -> Map<String, Value> {
    let mut ev = Map::new();
    ev.insert("share".into(), json!(r3(share)));
    ev.insert("total_ms".into(), json!(ms(s.db_time())));
    ev.insert("calls".into(), json!(s.exec_calls()));
    ev.insert("mean_ms".into(), json!(ms(mean_time(s))));
    ev.insert("query".into(), json!(text));
    ev
}

/// A fingerprint taking at least `top_consumer_share` of the database time
/// of the whole snapshot.
pub(crate) fn top_consumers(snap: &Snapshot, fps: &[FingerprintRow], cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let total = snap.total_db_time().as_secs_f64();
    if total <= 0.0 {
        return;
    }
    for row in fps.iter().filter(|r| r.fingerprint != OVERFLOW_FINGERPRINT) {
        let share = row.stats.db_time().as_secs_f64() / total;
        if share < cfg.top_consumer_share {
            continue;
        }
        let mut ev = consumer_evidence(share, &row.stats, &row.text);
        let nodes: Vec<&str> = row.nodes.iter().map(|n| &**n).filter(|n| !n.is_empty()).collect();
        if !nodes.is_empty() {
            ev.insert("nodes".into(), json!(nodes));
        }
        out.push(
            Draft {
                kind: Kind::TopConsumer,
                severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
                subject: fp_subject(row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary: format!("{:.0}% of all database time: {}", share * 100.0, short(&row.text)),
                evidence: ev,
                action: consumer_action(&row.stats),
            }
            .build(snap),
        );
    }
}

/// A fingerprint taking at least `top_consumer_share` of one node's
/// database time without being a top consumer of the cluster (that one is
/// reported once, cluster-wide). Only with two nodes or more, and only on
/// nodes with at least `top_consumer_node_min_time` of database time.
pub(crate) fn top_consumers_per_node(
    snap: &Snapshot,
    fps: &[FingerprintRow],
    cfg: &DetectorConfig,
    out: &mut Vec<Finding>,
) {
    let by_node = snap.db_time_by_node();
    if by_node.keys().filter(|n| !n.is_empty()).count() < 2 {
        return;
    }
    let total = snap.total_db_time().as_secs_f64();
    let cluster_top: FxHashSet<Fingerprint> = fps
        .iter()
        .filter(|r| share(r.stats.db_time().as_secs_f64(), total) >= cfg.top_consumer_share)
        .map(|r| r.fingerprint)
        .collect();
    for row in snap.by_fingerprint_and_node() {
        if row.fingerprint == OVERFLOW_FINGERPRINT || row.node.is_empty() {
            continue;
        }
        let node_time = by_node.get(&row.node).copied().unwrap_or_default();
        if node_time < cfg.top_consumer_node_min_time || node_time.is_zero() {
            continue;
        }
        let share = row.stats.db_time().as_secs_f64() / node_time.as_secs_f64();
        if share < cfg.top_consumer_share || cluster_top.contains(&row.fingerprint) {
            continue;
        }
        let mut ev = consumer_evidence(share, &row.stats, &row.text);
        ev.insert("node_total_ms".into(), json!(ms(node_time)));
        out.push(
            Draft {
                kind: Kind::TopConsumer,
                severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
                subject: fp_subject(row.fingerprint),
                node: row.node.to_string(),
                key: String::new(),
                summary: format!("{:.0}% of node {}'s database time: {}", share * 100.0, row.node, short(&row.text)),
                evidence: ev,
                action: consumer_action(&row.stats),
            }
            .build(snap),
        );
    }
}

/// p95 of the recent window ≥ `regression_ratio` × the same fingerprint's
/// p95 over the baseline, with `regression_min_calls` timed executions on
/// both sides and a growth of at least `regression_min_increase`.
pub(crate) fn regressions(
    window: &Snapshot,
    fps: &[FingerprintRow],
    baseline: &Snapshot,
    cfg: &DetectorConfig,
    out: &mut Vec<Finding>,
) {
    let base: FxHashMap<_, _> = baseline.by_fingerprint().into_iter().map(|r| (r.fingerprint, r.stats)).collect();
    for row in fps {
        if row.fingerprint == OVERFLOW_FINGERPRINT {
            continue;
        }
        let Some(before) = base.get(&row.fingerprint) else { continue };
        let (n_now, n_before) = (row.stats.hist.count(), before.hist.count());
        if n_now < cfg.regression_min_calls || n_before < cfg.regression_min_calls {
            continue;
        }
        let (p_now, p_before) = (row.stats.quantile(0.95), before.quantile(0.95));
        if p_before.is_zero() || p_now < p_before + cfg.regression_min_increase {
            continue;
        }
        let ratio = p_now.as_secs_f64() / p_before.as_secs_f64();
        if ratio < cfg.regression_ratio {
            continue;
        }
        let mut ev = Map::new();
        ev.insert("p95_ms".into(), json!(ms(p_now)));
        ev.insert("baseline_p95_ms".into(), json!(ms(p_before)));
        ev.insert("ratio".into(), json!(r3(ratio)));
        ev.insert("calls".into(), json!(n_now));
        ev.insert("baseline_calls".into(), json!(n_before));
        ev.insert("baseline_from".into(), json!(baseline.from));
        ev.insert("baseline_to".into(), json!(baseline.to));
        ev.insert("query".into(), json!(&*row.text));
        out.push(
            Draft {
                kind: Kind::LatencyRegression,
                severity: if ratio >= 2.0 * cfg.regression_ratio { Severity::Critical } else { Severity::Warning },
                subject: fp_subject(row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary: format!(
                    "p95 {:.1} ms, {ratio:.1}x its baseline {:.1} ms: {}",
                    ms(p_now),
                    ms(p_before),
                    short(&row.text)
                ),
                evidence: ev,
                action: "Compare its plan with the baseline's (auto_explain samples), check for changed data \
                         volume, stale statistics (ANALYZE) or contention."
                    .into(),
            }
            .build(window),
        );
    }
}

/// Statements that wrote temporary files (the log's `temporary file:`
/// lines, or pg_stat_statements' `temp_blks_written` when the log has none).
pub(crate) fn temp_spills(snap: &Snapshot, fps: &[FingerprintRow], out: &mut Vec<Finding>) {
    // `<other>` folds many statements (the caps, detection's top-k): a
    // finding on it names no statement and its subject leads nowhere.
    for row in fps.iter().filter(|r| r.fingerprint != OVERFLOW_FINGERPRINT) {
        let s = &row.stats;
        let (files, bytes) = if s.temp_files > 0 {
            (Some(s.temp_files), s.temp_bytes)
        } else if s.pgss.temp_blks_written > 0 {
            (None, s.pgss.temp_blks_written.saturating_mul(8192))
        } else {
            continue;
        };
        let mut ev = Map::new();
        ev.insert("temp_files".into(), json!(files));
        ev.insert("temp_bytes".into(), json!(bytes));
        ev.insert("query".into(), json!(&*row.text));
        let mib = bytes as f64 / 1_048_576.0;
        out.push(
            Draft {
                kind: Kind::TempSpill,
                severity: if bytes >= 1 << 30 { Severity::Critical } else { Severity::Warning },
                subject: fp_subject(row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary: match files {
                    Some(n) => format!("{n} temp file(s), {mib:.1} MiB written: {}", short(&row.text)),
                    None => format!("{mib:.1} MiB of temp blocks written: {}", short(&row.text)),
                },
                evidence: ev,
                action: "Raise work_mem for this statement, or make it sort/hash fewer rows (index for ORDER BY)."
                    .into(),
            }
            .build(snap),
        );
    }
}

/// Statements that fail often.
pub(crate) fn error_hotspots(snap: &Snapshot, fps: &[FingerprintRow], cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    for row in fps.iter().filter(|r| r.fingerprint != OVERFLOW_FINGERPRINT) {
        let s = &row.stats;
        let errors = s.error_count();
        if errors == 0 {
            continue;
        }
        let calls = s.exec_calls();
        let share = errors as f64 / (errors + calls) as f64;
        if errors < cfg.error_min_count && (share < cfg.error_min_share || errors < cfg.error_min_count_for_share) {
            continue;
        }
        let states: Map<String, Value> =
            s.errors.iter().map(|(st, e)| (st.clone(), json!({"count": e.count, "message": e.message}))).collect();
        let mut ev = Map::new();
        ev.insert("errors".into(), json!(errors));
        ev.insert("calls".into(), json!(calls));
        ev.insert("error_share".into(), json!(r3(share)));
        ev.insert("sqlstates".into(), Value::Object(states));
        ev.insert("query".into(), json!(&*row.text));
        let top = s.errors.iter().max_by_key(|(_, e)| e.count).map(|(st, e)| format!("{st} {}", e.message));
        out.push(
            Draft {
                kind: Kind::ErrorHotspot,
                severity: if share >= 0.5 { Severity::Critical } else { Severity::Warning },
                subject: fp_subject(row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary: format!(
                    "{errors} error(s) ({:.0}% of executions), mostly {}: {}",
                    share * 100.0,
                    top.unwrap_or_default(),
                    short(&row.text)
                ),
                evidence: ev,
                action:
                    "Fix the caller: the SQLSTATE says why (23xxx constraint, 22xxx data, 40xxx retry, 42xxx bad SQL)."
                        .into(),
            }
            .build(snap),
        );
    }
}

/// A read-only statement executed often (`cache_min_calls_per_second`),
/// with a stable latency (p99/p50 ≤ `cache_max_p99_over_p50`) and a large
/// share of all executions (`cache_min_call_share`): its result is a
/// candidate for an application-side cache. Needs a snapshot range of a
/// second or more (for the rate) and `cache_min_timed_calls` timed
/// executions (for the variance).
pub(crate) fn cache_candidates(snap: &Snapshot, fps: &[FingerprintRow], cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let seconds = (snap.to - snap.from) as f64 / 1000.0;
    let all_calls: u64 = fps.iter().map(|r| r.stats.exec_calls()).sum();
    if seconds < 1.0 || all_calls == 0 {
        return;
    }
    for row in fps.iter().filter(|r| r.fingerprint != OVERFLOW_FINGERPRINT) {
        let s = &row.stats;
        let calls = s.exec_calls();
        let rate = calls as f64 / seconds;
        let call_share = calls as f64 / all_calls as f64;
        if rate < cfg.cache_min_calls_per_second
            || call_share < cfg.cache_min_call_share
            || s.hist.count() < cfg.cache_min_timed_calls
        {
            continue;
        }
        let (p50, p99) = (s.quantile(0.50), s.quantile(0.99));
        if p50.is_zero() {
            continue;
        }
        let spread = p99.as_secs_f64() / p50.as_secs_f64();
        if spread > cfg.cache_max_p99_over_p50 || !is_read_only(&row.text) {
            continue;
        }
        let mut ev = Map::new();
        ev.insert("calls".into(), json!(calls));
        ev.insert("calls_per_second".into(), json!(r3(rate)));
        ev.insert("call_share".into(), json!(r3(call_share)));
        ev.insert("p50_ms".into(), json!(ms(p50)));
        ev.insert("p99_ms".into(), json!(ms(p99)));
        ev.insert("p99_over_p50".into(), json!(r3(spread)));
        ev.insert("total_ms".into(), json!(ms(s.db_time())));
        ev.insert("query".into(), json!(&*row.text));
        out.push(
            Draft {
                kind: Kind::CacheCandidate,
                severity: Severity::Info,
                subject: fp_subject(row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary: format!(
                    "{rate:.0} calls/s ({:.0}% of all executions), p50 {:.2} ms, p99 {:.2} ms: {}",
                    call_share * 100.0,
                    ms(p50),
                    ms(p99),
                    short(&row.text)
                ),
                evidence: ev,
                action: "Cache the result in the application (or a read replica) if it may be a little stale; \
                         check it calls no function that writes."
                    .into(),
            }
            .build(snap),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testkit::{Snap, fp_of};
    use super::*;
    use crate::findings::detect;

    fn run(
        f: fn(&Snapshot, &[FingerprintRow], &DetectorConfig, &mut Vec<Finding>),
        s: &Snapshot,
        cfg: &DetectorConfig,
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        f(s, &s.by_fingerprint(), cfg, &mut out);
        out
    }

    #[test]
    fn top_consumer_known_answer() {
        let s = Snap::new()
            .query("", "SELECT a FROM t", 10, 50)
            .query("", "SELECT b FROM t", 100, 1)
            .query("", "SELECT c FROM t", 100, 1)
            .build();
        let out = run(top_consumers, &s, &DetectorConfig::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["share"], json!(0.714));
        assert_eq!(out[0].subject, format!("fingerprint:{}", fp_of("SELECT a FROM t")));
        assert!(out[0].summary.contains("SELECT a FROM t"));
        assert_eq!(out[0].severity, Severity::Critical);
        assert_eq!(out[0].node, None);
    }

    #[test]
    fn top_consumer_uses_the_statistics_source_time() {
        // The log saw few slow calls of b; pg_stat_statements saw many of a.
        let s = Snap::new()
            .query("n1", "SELECT a FROM t", 10, 1)
            .pgss("n1", "SELECT a FROM t", 1000, 900)
            .query("n1", "SELECT b FROM t", 1, 100)
            .build();
        let out = run(top_consumers, &s, &DetectorConfig::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, format!("fingerprint:{}", fp_of("SELECT a FROM t")));
        assert_eq!(out[0].evidence["calls"], json!(1000));
    }

    #[test]
    fn top_consumer_nothing_when_load_is_even() {
        let mut b = Snap::new();
        for i in 0..10 {
            b = b.query("", &format!("SELECT c{i} FROM t"), 10, 1);
        }
        assert!(run(top_consumers, &b.build(), &DetectorConfig::default()).is_empty());
    }

    #[test]
    fn top_consumer_per_node_known_answer_and_nothing() {
        // Cluster-wide, x is 2 s of 14.25 s (14%); on n3 it is 2 of 2.25 s.
        let base = || {
            let mut b = Snap::new();
            for (i, node) in ["n1", "n2"].iter().enumerate() {
                for j in 0..6 {
                    b = b.query(node, &format!("SELECT c{i}{j} FROM t"), 100, 10);
                }
            }
            b.query("n3", "SELECT y FROM t", 50, 5)
        };
        let s = base().query("n3", "SELECT x FROM t", 20, 100).build();
        let out = run(top_consumers_per_node, &s, &DetectorConfig::default());
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].node.as_deref(), Some("n3"));
        assert_eq!(out[0].evidence["share"], json!(0.889));
        assert!(run(top_consumers, &s, &DetectorConfig::default()).is_empty());
        // Without x, n3's 0.25 s is under the per-node minimum: nothing.
        assert!(run(top_consumers_per_node, &base().build(), &DetectorConfig::default()).is_empty());
        // One node (analyze): the cluster-wide finding says it all.
        let one = Snap::new().query("", "SELECT x FROM t", 20, 100).build();
        assert!(run(top_consumers_per_node, &one, &DetectorConfig::default()).is_empty());
    }

    #[test]
    fn regression_known_answer() {
        let cfg = DetectorConfig::default();
        let base = Snap::new().query("n1", "SELECT a FROM t", 100, 10).query("n1", "SELECT b FROM t", 100, 10).build();
        let now = Snap::new().query("n1", "SELECT a FROM t", 30, 35).query("n1", "SELECT b FROM t", 30, 12).build();
        let mut out = Vec::new();
        regressions(&now, &now.by_fingerprint(), &base, &cfg, &mut out);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].kind, Kind::LatencyRegression);
        assert_eq!(out[0].subject, format!("fingerprint:{}", fp_of("SELECT a FROM t")));
        let ratio = out[0].evidence["ratio"].as_f64().unwrap();
        assert!((ratio - 3.5).abs() < 0.05, "{ratio}");
        assert_eq!(out[0].severity, Severity::Warning);
    }

    #[test]
    fn regression_nothing_without_enough_calls_or_growth() {
        let cfg = DetectorConfig::default();
        let base = Snap::new().query("n1", "SELECT a FROM t", 10, 10).query("n1", "SELECT b FROM t", 100, 10).build();
        // a: too few baseline calls; b: faster than before.
        let now = Snap::new().query("n1", "SELECT a FROM t", 30, 50).query("n1", "SELECT b FROM t", 30, 5).build();
        let mut out = Vec::new();
        regressions(&now, &now.by_fingerprint(), &base, &cfg, &mut out);
        assert!(out.is_empty(), "{out:#?}");
        // Tripled, but from 0.1 ms to 0.3 ms: under the minimum increase.
        let base = Snap::new().query_us("n1", "SELECT c FROM t", 100, 100).build();
        let now = Snap::new().query_us("n1", "SELECT c FROM t", 100, 300).build();
        regressions(&now, &now.by_fingerprint(), &base, &cfg, &mut out);
        assert!(out.is_empty(), "{out:#?}");
        // A fingerprint new in the window has no baseline to regress from.
        let now = Snap::new().query("n1", "SELECT d FROM t", 100, 300).build();
        regressions(&now, &now.by_fingerprint(), &base, &cfg, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn error_hotspot_thresholds() {
        let with_errors = |n: u64| {
            let s = Snap::new()
                .query("", "INSERT INTO t VALUES ($1)", 27, 1)
                .errors("", "INSERT INTO t VALUES ($1)", "23505", n)
                .query("", "SELECT 1", 100, 1)
                .build();
            run(error_hotspots, &s, &DetectorConfig::default())
        };
        let out = with_errors(3);
        assert_eq!(out.len(), 1, "3 of 30 executions failed: over the 5% share with 3 errors");
        assert_eq!(out[0].evidence["sqlstates"]["23505"]["count"], json!(3));
        assert!(with_errors(1).is_empty(), "a single failure is no hot spot");
        assert!(with_errors(0).is_empty());
    }

    #[test]
    fn temp_spill_known_answer_and_nothing() {
        let s = Snap::new().query("", "SELECT * FROM t ORDER BY a", 1, 10).build();
        assert!(run(|s, f, _, o| temp_spills(s, f, o), &s, &DetectorConfig::default()).is_empty());
        let s = Snap::new()
            .query("", "SELECT * FROM t ORDER BY a", 1, 10)
            .temp("", "SELECT * FROM t ORDER BY a", 2_097_152)
            .build();
        let out = run(|s, f, _, o| temp_spills(s, f, o), &s, &DetectorConfig::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["temp_bytes"], json!(2_097_152));
    }

    #[test]
    fn other_is_never_a_temp_spill_or_an_error_hotspot() {
        let text = "INSERT INTO t SELECT * FROM u ORDER BY a";
        let mut s = Snap::new().query("", text, 10, 1).errors("", text, "23505", 10).temp("", text, 2_097_152).build();
        let cfg = DetectorConfig::default();
        assert_eq!(run(|s, f, _, o| temp_spills(s, f, o), &s, &cfg).len(), 1, "as a statement it is one");
        assert_eq!(run(error_hotspots, &s, &cfg).len(), 1, "as a statement it is one");
        // The same numbers folded into `<other>`.
        s.queries[0].fingerprint = OVERFLOW_FINGERPRINT;
        assert!(run(|s, f, _, o| temp_spills(s, f, o), &s, &cfg).is_empty());
        assert!(run(error_hotspots, &s, &cfg).is_empty());
    }

    #[test]
    fn cache_candidate_known_answer_and_nothing() {
        let cfg = DetectorConfig::default();
        // 300 s: 6000 calls is 20/s and 75% of the executions.
        let s = Snap::new()
            .query("n1", "SELECT name FROM users WHERE id = $1", 6000, 1)
            .query("n1", "UPDATE users SET seen = now() WHERE id = $1", 2000, 1)
            .build();
        let out = run(cache_candidates, &s, &cfg);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].kind, Kind::CacheCandidate);
        assert_eq!(out[0].severity, Severity::Info);
        assert_eq!(out[0].evidence["calls_per_second"], json!(20.0));
        assert_eq!(out[0].evidence["call_share"], json!(0.75));
        // The same rate locking its rows, or with a wide latency spread: nothing.
        let locking = Snap::new().query("n1", "SELECT name FROM users WHERE id = $1 FOR UPDATE", 6000, 1).build();
        assert!(run(cache_candidates, &locking, &cfg).is_empty());
        let spread = Snap::new()
            .query("n1", "SELECT name FROM users WHERE id = $1", 5000, 1)
            .query("n1", "SELECT name FROM users WHERE id = $1", 1000, 30)
            .build();
        assert!(run(cache_candidates, &spread, &cfg).is_empty());
        // Too slow a rate: 600 calls in 300 s.
        let rare = Snap::new().query("n1", "SELECT name FROM users WHERE id = $1", 600, 1).build();
        assert!(run(cache_candidates, &rare, &cfg).is_empty());
        // Without a time range (a log without times) there is no rate.
        let timeless = Snap::new().range(0, 0).query("n1", "SELECT name FROM users WHERE id = $1", 6000, 1).build();
        assert!(run(cache_candidates, &timeless, &cfg).is_empty());
        // Through detect: one candidate (next to the top consumers).
        let all = detect(&s, &cfg);
        assert_eq!(all.iter().filter(|f| f.kind == Kind::CacheCandidate).count(), 1, "{all:#?}");
    }
}
