//! A live run: the workload of the fixture generator against a throwaway
//! cluster, then `querywatch analyze` of its csvlog must agree with
//! pg_stat_statements, statement by statement (calls equal, total time within
//! the tolerance of `support::compare`), except the documented differences
//! of `support::workload`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::report::{analyze, assert_consistent};
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
