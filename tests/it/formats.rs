//! The committed fixtures (`tests/fixtures/pg15`, real PostgreSQL output of
//! `tests/fixtures/generate.sh`): the three log formats of one run give the
//! same statements, the report agrees with that run's pg_stat_statements
//! dump, and a stderr log with a prefix lacking `%t` and `%p` still counts
//! what it can.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use crate::support::compare::one_line;
use crate::support::fixtures_dir;
use crate::support::report::{Key, QueryRow, Report, analyze, assert_consistent, by_key};
use crate::support::workload::{PGBENCH_TRANSACTIONS, assert_full_run_agrees, key, log_line_prefix};

/// `log_line_prefix` of the minimal-prefix run (generate.sh, run 2).
const MINIMAL_PREFIX: &str = "%u@%d ";

fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join("pg15").join(name)
}

/// (statement, calls, total ms in hundredths, errors) — what must not depend
/// on the log format.
type Summary = BTreeSet<(Key, u64, i64, u64)>;

fn summary(report: &Report) -> Summary {
    report.queries.iter().map(|q| (q.key(), q.calls, (q.total_ms * 100.0).round() as i64, q.error_count())).collect()
}

fn assert_same(a_name: &str, a: &Report, b_name: &str, b: &Report) {
    let (sa, sb) = (summary(a), summary(b));
    if sa == sb {
        return;
    }
    let text: BTreeMap<Key, String> =
        a.queries.iter().chain(&b.queries).map(|q| (q.key(), one_line(&q.query, 100))).collect();
    let show = |s: &Summary, t: &Summary| -> String {
        s.difference(t)
            .map(|(k, calls, cents, errors)| {
                format!(
                    "    calls {calls}, total {:.2} ms, errors {errors}: {} {}",
                    *cents as f64 / 100.0,
                    k,
                    text.get(k).map_or("", String::as_str)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{a_name} and {b_name} of the same run give different statements:\n  only in {a_name}:\n{}\n  only in {b_name}:\n{}",
        show(&sa, &sb),
        show(&sb, &sa)
    );
}

fn assert_clean_input(name: &str, report: &Report) {
    assert_consistent(report, &[&fixture(name)]);
    assert!(report.input.entries > 300, "{name}: only {} entries", report.input.entries);
    // Every line of these files is PostgreSQL's own output.
    assert_eq!(report.input.unparsed, 0, "{name}: unparsed entries in real PostgreSQL output");
}

#[test]
fn stderr_csvlog_and_jsonlog_give_the_same_statements() {
    let prefix = log_line_prefix();
    let stderr = analyze(["--prefix".as_ref(), prefix.as_ref(), fixture("postgresql.log").as_os_str()]);
    let csv = analyze([fixture("postgresql.csv")]);
    let json = analyze([fixture("postgresql.json")]);
    for (name, r) in [("postgresql.log", &stderr), ("postgresql.csv", &csv), ("postgresql.json", &json)] {
        assert_clean_input(name, r);
    }
    assert_same("csvlog", &csv, "stderr", &stderr);
    assert_same("csvlog", &csv, "jsonlog", &json);

    // Not vacuous: the pgbench statements are there, with the workload's
    // call counts (2 clients x 50 simple, 25 extended, 25 prepared).
    let rows = by_key(&csv);
    let update = key("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", "bench", "bench");
    assert_eq!(rows.get(&update).map(|q| q.calls), Some(PGBENCH_TRANSACTIONS), "{update}");

    let findings = |r: &Report| -> BTreeSet<(String, String)> {
        r.findings.iter().map(|f| (f.kind.clone(), f.subject.clone())).collect()
    };
    assert_eq!(findings(&csv), findings(&stderr), "findings: csvlog vs stderr");
    assert_eq!(findings(&csv), findings(&json), "findings: csvlog vs jsonlog");
}

#[test]
fn fixture_report_agrees_with_its_pg_stat_statements_dump() {
    let dump = fs::read_to_string(fixture("pg_stat_statements.csv")).expect("reading the fixture dump");
    let report = analyze([fixture("postgresql.csv")]);
    assert_full_run_agrees(&report, &dump, "fixture pg15/postgresql.csv");
}

/// Without `%t` and `%p` nothing tells sessions apart, so
/// - the `log_duration` + `log_statement` pairs (the postgres@app session of
///   duration-only.sql) cannot be paired reliably: never more calls or time
///   than the csvlog says;
/// - the `parse`/`bind` durations of `pgbench -M extended` (bench@bench)
///   cannot be tied to the execution they belong to: exact calls, total time
///   at most the csvlog's (the execute durations at least);
/// - everything else has its text on its duration line and must count
///   exactly as in the csvlog written by the same run.
#[test]
fn minimal_prefix_counts_what_it_can() {
    let minimal = analyze([
        "--log-format".as_ref(),
        "stderr".as_ref(),
        "--prefix".as_ref(),
        MINIMAL_PREFIX.as_ref(),
        fixture("minimal-prefix.log").as_os_str(),
    ]);
    let reference = analyze([fixture("minimal-prefix.csv")]);
    assert_clean_input("minimal-prefix.log", &minimal);
    assert_clean_input("minimal-prefix.csv", &reference);

    let got = by_key(&minimal);
    let want = by_key(&reference);
    let pairing_only = |k: &Key| k.user == "postgres" && k.database == "app";
    let extended_protocol = |k: &Key| k.user == "bench" && k.database == "bench";
    let mut problems = Vec::new();
    let mut exact = 0;
    for (k, w) in &want {
        let g = got.get(k);
        let (calls, total, errors) = g.map_or((0, 0.0, 0), |g| (g.calls, g.total_ms, g.error_count()));
        let line = |what: &str| {
            format!(
                "{what}: {} {k}\n    minimal prefix: calls {calls}, total {total:.3} ms, errors {errors}\n    csvlog:         calls {}, total {:.3} ms, errors {}",
                one_line(&w.query, 100),
                w.calls,
                w.total_ms,
                w.error_count()
            )
        };
        if pairing_only(k) {
            // Honest degradation: never more than really happened.
            if calls > w.calls || total > w.total_ms + 0.01 {
                problems.push(line("over-counted without session pairing"));
            }
            continue;
        }
        let total_ok = if extended_protocol(k) {
            total <= w.total_ms + 0.01 && total > 0.0
        } else {
            (total - w.total_ms).abs() <= 0.01
        };
        if calls != w.calls || !total_ok || errors != w.error_count() {
            problems.push(line("differs"));
        } else {
            exact += 1;
        }
    }
    for (k, g) in &got {
        if !want.contains_key(k) && (g.calls > 0 || !pairing_only(k)) {
            problems.push(format!("only with the minimal prefix: {k} {}: {g:?}", one_line(&g.query, 100)));
        }
    }
    let extended = key("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", "bench", "bench");
    if got.get(&extended).map(|q: &QueryRow| q.calls) != Some(20) {
        problems.push(format!("pgbench -M extended -c 2 -t 10: expected 20 calls of {extended}"));
    }
    if exact < 25 {
        problems.push(format!("only {exact} statements matched exactly; expected at least 25"));
    }
    eprintln!("minimal prefix: {exact} of {} statements as in the csvlog", want.len());
    assert!(problems.is_empty(), "minimal-prefix.log vs minimal-prefix.csv:\n\n{}", problems.join("\n\n"));
}
