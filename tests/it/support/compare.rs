//! Checking a report against pg_stat_statements, statement by statement.
//!
//! # Tolerance on total time
//! For a statement, pg_stat_statements counts `total_exec_time +
//! total_plan_time`; the log's durations (simple protocol: one per call;
//! extended protocol: parse + bind + execute) span the whole message
//! processing, which contains planning and execution and adds parse/analyze,
//! the commit of an implicit transaction, sending the result and, for
//! statements auto_explain logs, formatting the plan. So per statement:
//!
//! - lower bound: `log >= pgss - 0.003 ms x calls - 0.01 ms - 1 ms x errors`.
//!   Durations are printed with 3 decimals (up to 0.0005 ms of rounding for
//!   each of up to 3 lines per call); 0.01 ms covers a report rounded to
//!   0.01 ms; pg_stat_statements also adds the planning time of executions
//!   that then failed (no duration line), well under 1 ms each here.
//! - upper bound: `log <= pgss + 0.5 ms x calls + 50 ms`. Measured on this
//!   workload (6 runs on 2 shared cores with a parallel cargo build):
//!   `log - pgss` was never negative, at most 0.055 ms per call for
//!   statements with many calls, and at most 5.3 ms for one call (plan
//!   formatting by auto_explain; CREATE EXTENSION). With the machine
//!   overloaded on purpose (4 busy loops on 2 cores, 10 runs) one statement
//!   once took 26.6 ms more than pg_stat_statements (a 0.5 ms INSERT
//!   preempted outside the executor); 50 ms covers such a stall with margin,
//!   and 0.5 ms per call is 10x the measured per-call overhead. What the
//!   bounds still catch: a duration counted twice (an auto_explain `plan:`
//!   line counted as a call or added to the total: +200-350 ms on the
//!   spilling sort), a lost protocol step (execute-only totals miss the
//!   planning done in bind: below the lower bound), durations paired with
//!   the wrong statement.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::pgss::PgssGroup;
use super::report::{Key, QueryRow};

/// Per-call slack above pg_stat_statements' time, ms.
pub const PER_CALL_MS: f64 = 0.5;
/// Constant slack above pg_stat_statements' time, ms.
pub const STALL_MS: f64 = 50.0;

/// A statement the comparison must not hold to equality, and why.
#[derive(Clone, Debug)]
pub struct Exclusion {
    pub key: Key,
    pub why: &'static str,
    pub expect: Expect,
}

#[derive(Clone, Debug)]
pub enum Expect {
    /// In the log only (pg_stat_statements cannot have it); the log must
    /// show exactly this many calls.
    LogOnly { calls: u64 },
    /// pg_stat_statements under-counts: it must have at most the log's
    /// calls, and the log exactly this many (known from the workload).
    PgssUndercounts { log_calls: u64 },
}

/// What a comparison found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Statements whose calls and time were compared and agreed.
    pub compared: usize,
    /// Statements that only failed: pg_stat_statements counts no call.
    pub failed_only: BTreeSet<Key>,
    pub mismatches: Vec<String>,
    /// One line per statement, for the test output.
    pub table: String,
}

/// Compares every statement of `report` with `pgss`, both grouped by
/// [`Key`]. Every statement is either compared (calls equal, time within
/// the tolerance), a failed-only statement (report: no call, at least one
/// error; pg_stat_statements: no call), or one of `exclusions`.
pub fn compare(report: &BTreeMap<Key, QueryRow>, pgss: &BTreeMap<Key, PgssGroup>, exclusions: &[Exclusion]) -> Outcome {
    let mut out = Outcome::default();
    let keys: BTreeSet<&Key> = report.keys().chain(pgss.keys()).collect();
    let excluded: BTreeMap<&Key, &Exclusion> = exclusions.iter().map(|e| (&e.key, e)).collect();
    for e in exclusions {
        if !report.contains_key(&e.key) {
            out.mismatches.push(format!("excluded statement {} ({}) is not in the report at all", e.key, e.why));
        }
    }
    for key in keys {
        let log = report.get(key);
        let ps = pgss.get(key);
        let text = log.map(|q| q.query.clone()).or_else(|| ps.map(|p| p.queries.join(" | "))).unwrap_or_default();
        let text = one_line(&text, 110);
        let (log_calls, log_ms, log_errors) = log.map_or((0, 0.0, 0), |q| (q.calls, q.total_ms, q.error_count()));
        let (ps_calls, ps_ms) = ps.map_or((0, 0.0), |p| (p.calls, p.total_ms));
        let _ = writeln!(
            out.table,
            "{:>5} {:>10.3} | {:>5} {:>10.3} | err {:>2} | {}@{} {}",
            log_calls, log_ms, ps_calls, ps_ms, log_errors, key.user, key.database, text
        );
        let mut fail = |what: String| {
            out.mismatches.push(format!(
                "{what}\n    statement: {text}\n    key: {key}\n    report: calls {log_calls}, total {log_ms:.3} ms, errors {log_errors}\n    pg_stat_statements: calls {ps_calls}, total_exec_time + total_plan_time {ps_ms:.3} ms{}",
                ps.map_or(String::new(), |p| format!(" (queryids {:?})", p.queryids))
            ));
        };

        if let Some(e) = excluded.get(key) {
            match e.expect {
                Expect::LogOnly { calls } => {
                    if ps.is_some() {
                        fail(format!("expected in the log only ({}), but pg_stat_statements has it", e.why));
                    }
                    if log_calls != calls {
                        fail(format!("expected {calls} calls in the log ({})", e.why));
                    }
                }
                Expect::PgssUndercounts { log_calls: want } => {
                    if log_calls != want {
                        fail(format!("expected {want} calls in the log ({})", e.why));
                    }
                    if ps_calls > log_calls {
                        fail(format!("pg_stat_statements counts more than the log ({})", e.why));
                    }
                }
            }
            continue;
        }

        if log.is_some() && log_calls == 0 && log_errors == 0 {
            fail("a report row with neither calls nor errors: nothing was executed under this key".into());
            continue;
        }
        if log_calls == 0 && ps_calls == 0 {
            // Failed statements: pg_stat_statements keeps at most their
            // planning time (calls = 0); the log has ERROR + STATEMENT.
            out.failed_only.insert(key.clone());
            continue;
        }
        if log.is_none() {
            fail("in pg_stat_statements, missing from the report".into());
            continue;
        }
        if ps.is_none() {
            fail("in the report, unknown to pg_stat_statements".into());
            continue;
        }
        if log_calls != ps_calls {
            fail(format!("calls differ: report {log_calls}, pg_stat_statements {ps_calls}"));
            continue;
        }
        let low = ps_ms - 0.003 * ps_calls as f64 - 0.01 - 1.0 * log_errors as f64;
        let high = ps_ms + PER_CALL_MS * ps_calls as f64 + STALL_MS;
        if !(low..=high).contains(&log_ms) {
            fail(format!(
                "total time outside [{low:.3}, {high:.3}] ms (pg_stat_statements - rounding, + {PER_CALL_MS} ms/call + {STALL_MS} ms)"
            ));
            continue;
        }
        out.compared += 1;
    }
    out
}

/// `text` on one line, cut to `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    //! The comparison must be able to fail: each rule on synthetic data.
    use super::*;

    fn key(f: &str) -> Key {
        Key { fingerprint: f.to_owned(), database: "db".to_owned(), user: "u".to_owned() }
    }

    fn row(f: &str, calls: u64, total_ms: f64, errors: u64) -> (Key, QueryRow) {
        let q = QueryRow {
            fingerprint: f.to_owned(),
            query: format!("SELECT {f}"),
            database: Some("db".to_owned()),
            user: Some("u".to_owned()),
            calls,
            total_ms,
            mean_ms: None,
            min_ms: None,
            max_ms: None,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            errors: serde_json::json!(errors),
        };
        (key(f), q)
    }

    fn pg(f: &str, calls: u64, total_ms: f64) -> (Key, PgssGroup) {
        (key(f), PgssGroup { calls, total_ms, queryids: vec![1], queries: vec![format!("SELECT {f}")] })
    }

    fn run(report: &[(Key, QueryRow)], pgss: &[(Key, PgssGroup)], ex: &[Exclusion]) -> Outcome {
        compare(&report.iter().cloned().collect(), &pgss.iter().cloned().collect(), ex)
    }

    #[test]
    fn agreeing_statements_pass() {
        let o = run(&[row("a", 10, 10.4, 0), row("b", 0, 0.0, 1)], &[pg("a", 10, 10.0), pg("b", 0, 0.1)], &[]);
        assert!(o.mismatches.is_empty(), "{:?}", o.mismatches);
        assert_eq!(o.compared, 1);
        assert_eq!(o.failed_only.into_iter().collect::<Vec<_>>(), vec![key("b")]);
    }

    #[test]
    fn each_disagreement_is_reported() {
        type Case<'a> = (&'a [(Key, QueryRow)], &'a [(Key, PgssGroup)], &'a str);
        let cases: &[Case] = &[
            (&[row("a", 11, 10.0, 0)], &[pg("a", 10, 10.0)], "calls differ"),
            // A plan duration counted twice: 2 x 300 ms for one call.
            (&[row("a", 1, 600.0, 0)], &[pg("a", 1, 300.0)], "total time outside"),
            // Planning in bind lost: below pg_stat_statements.
            (&[row("a", 100, 5.0, 0)], &[pg("a", 100, 8.0)], "total time outside"),
            (&[], &[pg("a", 3, 1.0)], "missing from the report"),
            (&[row("a", 3, 1.0, 0)], &[], "unknown to pg_stat_statements"),
            (&[row("a", 0, 0.0, 0)], &[], "neither calls nor errors"),
        ];
        for (report, pgss, want) in cases {
            let o = run(report, pgss, &[]);
            assert!(o.mismatches.iter().any(|m| m.contains(want)), "expected {want:?} in {:?}", o.mismatches);
        }
    }

    #[test]
    fn exclusions_are_checked_too() {
        let log_only = Exclusion { key: key("d"), why: "dump", expect: Expect::LogOnly { calls: 1 } };
        let under = Exclusion { key: key("e"), why: "end", expect: Expect::PgssUndercounts { log_calls: 201 } };
        let ok = run(
            &[row("d", 1, 1.0, 0), row("e", 201, 5.0, 0)],
            &[pg("e", 153, 0.1)],
            &[log_only.clone(), under.clone()],
        );
        assert!(ok.mismatches.is_empty(), "{:?}", ok.mismatches);
        let bad = run(
            &[row("d", 2, 1.0, 0), row("e", 200, 5.0, 0)],
            &[pg("d", 1, 1.0), pg("e", 153, 0.1)],
            &[log_only, under],
        );
        assert_eq!(bad.mismatches.len(), 3, "{:?}", bad.mismatches);
    }
}
