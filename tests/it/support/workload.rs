//! What `tests/fixtures/workload/run.sh full` is known to do, for checking
//! reports of its logs: the documented differences from pg_stat_statements
//! and the errors it provokes on purpose.

use std::fs;

use super::cluster::workload_dir;
use super::compare::{Exclusion, Expect};
use super::pgss::fingerprint_of;
use super::report::Key;

/// pgbench transactions of the full run: 2 clients x (50 simple + 25
/// extended + 25 prepared), as in run.sh.
pub const PGBENCH_TRANSACTIONS: u64 = 2 * (50 + 25 + 25);

pub fn key(sql: &str, database: &str, user: &str) -> Key {
    Key { fingerprint: fingerprint_of(sql), database: database.to_owned(), user: user.to_owned() }
}

/// `log_line_prefix` of the full run, read from the workload's
/// `postgresql.conf` (the one place it is set).
pub fn log_line_prefix() -> String {
    let path = workload_dir().join("postgresql.conf");
    let conf = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    conf.lines()
        .find_map(|l| {
            let value = l.strip_prefix("log_line_prefix")?.trim_start().strip_prefix('=')?.trim();
            let value = value.strip_prefix('\'')?;
            Some(value[..value.find('\'')?].to_owned())
        })
        .unwrap_or_else(|| panic!("no log_line_prefix = '...' line in {}", path.display()))
}

/// The pg_stat_statements dump statement (`pgss-dump.sql`).
pub fn pgss_dump_sql() -> String {
    let path = workload_dir().join("pgss-dump.sql");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Statements of the full run that pg_stat_statements cannot match.
pub fn full_run_exclusions() -> Vec<Exclusion> {
    let mut v = vec![Exclusion {
        key: key(&pgss_dump_sql(), "postgres", "postgres"),
        why: "the pg_stat_statements dump itself: recorded only after it has run",
        expect: Expect::LogOnly { calls: 1 },
    }];
    // pg_query gives END and COMMIT one fingerprint, and `pgbench -i` sends
    // one `begin` and one `commit` of its own: one more call than the
    // transactions of the runs.
    for sql in ["BEGIN", "END"] {
        v.push(Exclusion {
            key: key(sql, "bench", "bench"),
            why: "pgbench's BEGIN/END: with -M prepared, pg_stat_statements counts a \
                  protocol-level prepared utility statement only on its first execution \
                  in a session (PostgreSQL 15), the log shows every execution",
            expect: Expect::PgssUndercounts { log_calls: PGBENCH_TRANSACTIONS + 1 },
        });
    }
    v
}

/// The statements of `errors.sql`: they only fail.
pub fn failed_only() -> Vec<Key> {
    [
        "INSERT INTO items (id, name) VALUES (42, 'the answer, again')",
        "SELECT id / (id - 42) FROM items WHERE id = 42",
        "SELEC id FROM items WHERE id = 1",
    ]
    .iter()
    .map(|sql| key(sql, "app", "app"))
    .collect()
}

/// Statements that fail once but also succeed: the deadlock victim's UPDATE
/// has the shape of the lock-wait UPDATEs that succeed.
pub fn also_failed_once() -> Vec<Key> {
    vec![key("UPDATE accounts SET balance = balance + 20 WHERE id = 1", "app", "app")]
}

/// Checks a report of a full run's log against the pg_stat_statements dump
/// of the same run: every statement agrees (see [`super::compare`]) or is
/// one of the documented differences, and the provoked errors are there.
/// Panics with every mismatch, the statement and both numbers.
pub fn assert_full_run_agrees(report: &super::report::Report, pgss_dump: &str, context: &str) {
    use super::compare::compare;
    use super::pgss::{group, parse_dump};
    use super::report::by_key;

    let rows = by_key(report);
    let pgss = group(&parse_dump(pgss_dump));
    let outcome = compare(&rows, &pgss, &full_run_exclusions());
    eprintln!(
        "{context}: report calls, total ms | pg_stat_statements calls, total ms | errors | statement\n{}",
        outcome.table
    );
    let mut problems = outcome.mismatches;
    for q in report.queries.iter().filter(|q| q.key().database.is_empty() || q.key().user.is_empty()) {
        problems.push(format!(
            "a report row without database or user: {} ({:?}). Every statement of this workload \
             runs in a session with both; a parallel worker's lines carry neither, but name their \
             leader (leader_pid in csvlog/jsonlog, %P in this stderr prefix) whose session has them",
            q.key(),
            q.query
        ));
    }

    let want_failed: std::collections::BTreeSet<Key> = failed_only().into_iter().collect();
    if outcome.failed_only != want_failed {
        problems.push(format!(
            "failed-only statements differ from errors.sql's:\n    missing: {:?}\n    unexpected: {:?}",
            want_failed.difference(&outcome.failed_only).collect::<Vec<_>>(),
            outcome.failed_only.difference(&want_failed).collect::<Vec<_>>()
        ));
    }
    for k in failed_only().into_iter().chain(also_failed_once()) {
        let errors = rows.get(&k).map_or(0, super::report::QueryRow::error_count);
        if errors != 1 {
            problems.push(format!("{k}: expected 1 error in the report, got {errors}"));
        }
    }
    let total_errors: u64 = rows.values().map(super::report::QueryRow::error_count).sum();
    if total_errors != 4 {
        problems.push(format!(
            "expected 4 statement errors in all (unique violation, division by zero, syntax error, deadlock), got {total_errors}"
        ));
    }
    // Not vacuous: the workload has about 90 distinct statements.
    if outcome.compared < 60 {
        problems.push(format!("only {} statements compared; expected at least 60", outcome.compared));
    }
    assert!(
        problems.is_empty(),
        "{context}: the report disagrees with pg_stat_statements ({} problems):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
