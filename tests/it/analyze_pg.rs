//! A live run: the workload of the fixture generator against a throwaway
//! cluster, then `querywatch analyze` of its csvlog must agree with
//! pg_stat_statements, statement by statement (calls equal, total time within
//! the tolerance of `support::compare`), except the documented differences
//! of `support::workload`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::compare::one_line;
use crate::support::report::{QueryRow, analyze, assert_consistent, by_key};
use crate::support::workload::assert_full_run_agrees;
use crate::support::{ClusterOptions, PgCluster, skip_pg, workload_dir};

#[test]
fn analyze_agrees_with_pg_stat_statements() {
    if skip_pg("analyze_agrees_with_pg_stat_statements") {
        return;
    }
    let mut cluster = PgCluster::start(&ClusterOptions::workload());
    cluster.run_workload("full", Duration::from_secs(300));

    // An evicted entry would make pg_stat_statements under-count.
    let dealloc = cluster.psql("SELECT dealloc FROM pg_stat_statements_info");
    assert_eq!(dealloc.trim(), "0", "pg_stat_statements evicted entries");
    let dump_sql = workload_dir().join("pgss-dump.sql");
    let dump = cluster.psql_in("postgres", "postgres", &["-f", &dump_sql.to_string_lossy()]);
    // A clean stop: the logging collector has written everything after it.
    cluster.stop();

    let csvlog = cluster.log_dir().join("postgresql.csv");
    // Kept for a post-mortem (the cluster dir goes away with the cluster).
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze_pg");
    fs::create_dir_all(&keep).expect("creating the post-mortem dir");
    fs::copy(&csvlog, keep.join("postgresql.csv")).expect("keeping the csvlog");
    fs::write(keep.join("pg_stat_statements.csv"), &dump).expect("keeping the dump");

    let report = analyze([&csvlog]);
    assert_consistent(&report, &[&csvlog]);
    assert_full_run_agrees(&report, &dump, &format!("live run (logs kept in {})", keep.display()));
}

/// Amazon RDS's default `log_line_prefix` (`%t:%r:%u@%d:[%p]:`, where the
/// time zone runs into the next literal) with `log_error_verbosity =
/// verbose` (the SQLSTATE before every message, a `LOCATION:` line after
/// it): the stderr log, its prefix found on its own, must give the csvlog's
/// statements, calls, time and errors by SQLSTATE.
#[test]
fn rds_prefix_and_verbose_messages_read_as_the_csvlog() {
    if skip_pg("rds_prefix_and_verbose_messages_read_as_the_csvlog") {
        return;
    }
    let options =
        ClusterOptions::workload().set("log_line_prefix", "%t:%r:%u@%d:[%p]:").set("log_error_verbosity", "verbose");
    let mut cluster = PgCluster::start(&options);
    cluster.run_workload("full", Duration::from_secs(300));
    cluster.stop();
    let (log, csvlog) = (cluster.log_dir().join("postgresql.log"), cluster.log_dir().join("postgresql.csv"));
    let text = fs::read_to_string(&log).expect("reading the stderr log");
    assert!(text.contains(" UTC:[local]:") || text.contains(" UTC:127.0.0.1("), "not the RDS prefix: {text:.300}");
    assert!(text.contains("ERROR:  23505: duplicate key"), "not verbose: {text:.300}");

    let stderr = analyze([&log]);
    let csv = analyze([&csvlog]);
    assert_consistent(&stderr, &[&log]);
    assert!(stderr.input.entries > 300, "only {} entries", stderr.input.entries);
    assert_eq!(stderr.input.unparsed, 0, "unparsed lines in PostgreSQL's own output");
    let (got, want) = (by_key(&stderr), by_key(&csv));
    let mut problems = Vec::new();
    for (k, w) in &want {
        match got.get(k) {
            Some(g) if g.calls == w.calls && (g.total_ms - w.total_ms).abs() <= 0.01 && g.errors == w.errors => {}
            g => problems.push(format!("{k} {}\n  stderr: {g:?}\n  csvlog: {w:?}", one_line(&w.query, 100))),
        }
    }
    // Without %P a parallel worker's lines (PostgreSQL writes no user or
    // database for them) cannot be tied to their leader's session: its
    // temporary file lands in a row of its own, with no calls.
    let worker_only = |g: &QueryRow| g.calls == 0 && g.error_count() == 0 && g.user.as_deref() == Some("");
    problems.extend(
        got.iter()
            .filter(|(k, g)| !want.contains_key(k) && !worker_only(g))
            .map(|(k, g)| format!("only in the stderr log: {k}: {g:?}")),
    );
    assert!(problems.is_empty(), "stderr (RDS prefix, verbose) vs csvlog:\n{}", problems.join("\n"));
    let errors: u64 = want.values().map(|q| q.error_count()).sum();
    assert!(want.len() > 25 && errors >= 4, "{} statements, {errors} errors", want.len());
}
