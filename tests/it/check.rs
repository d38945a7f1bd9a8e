//! `querywatch check` against real throwaway clusters: a badly configured
//! one must exit 1 with the FAIL/warn lines and their fixes; one set up as
//! the fixture workload's postgresql.conf, with a `pg_monitor` role and a
//! reachable collector port, must exit 0.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::{ClusterOptions, PgCluster, skip_pg};

/// Writes the agent config for `cluster` and runs `querywatch check` on it.
fn check(dir: &Path, cluster: &PgCluster, user: &str, endpoint: &str, logs_extra: &str) -> Output {
    let config = dir.join("agent.toml");
    fs::write(
        &config,
        format!(
            "node = \"check-1\"\nstate_dir = {state:?}\n[logs]\ndirectory = {logs:?}\n{logs_extra}\n\
             [database]\ndsn = \"host={host} port={port} user={user} dbname=postgres connect_timeout=5\"\n\
             [export]\nendpoint = {endpoint:?}\n",
            state = dir.join("state"),
            logs = cluster.log_dir(),
            host = cluster.host(),
            port = cluster.port(),
        ),
    )
    .expect("writing agent.toml");
    Command::new(env!("CARGO_BIN_EXE_querywatch"))
        .args(["check", "--config"])
        .arg(&config)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("QUERYWATCH_DSN")
        .output()
        .expect("running querywatch check")
}

/// The line of `name` with the given status, and the fix line under it.
fn line_and_fix<'a>(out: &'a str, status: &str, name: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = out.lines().collect();
    let start = format!("{status:<4} {name}: ");
    let i = lines.iter().position(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no `{start}` line in:\n{out}"));
    let fix = lines.get(i + 1).copied().filter(|l| l.trim_start().starts_with("fix: ")).unwrap_or_default();
    (lines[i], fix)
}

#[test]
fn a_badly_configured_server_fails_with_the_fixes() {
    if skip_pg("a_badly_configured_server_fails_with_the_fixes") {
        return;
    }
    let cluster = PgCluster::start(
        &ClusterOptions::default()
            .set("logging_collector", "on")
            .set("log_directory", "log")
            .set("log_min_duration_statement", "-1")
            .set("log_line_prefix", "%t "),
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a collector port");
    let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
    let out = check(tmp.path(), &cluster, "postgres", &endpoint, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));

    let (line, fix) = line_and_fix(&stdout, "FAIL", "log_min_duration_statement");
    assert!(line.contains("-1"), "{line}");
    assert!(fix.contains("ALTER SYSTEM SET log_min_duration_statement = 0; SELECT pg_reload_conf();"), "{fix}");
    let (_, fix) = line_and_fix(&stdout, "FAIL", "shared_preload_libraries");
    assert!(fix.contains("shared_preload_libraries = 'pg_stat_statements'"), "{fix}");
    let (_, fix) = line_and_fix(&stdout, "FAIL", "pg_stat_statements extension");
    assert!(fix.contains("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"), "{fix}");
    let (line, fix) = line_and_fix(&stdout, "warn", "log_line_prefix");
    assert!(line.contains("no %p or %c"), "{line}");
    assert!(fix.contains("log_line_prefix = '[%p] %t '"), "{fix}");
    // What is right is said to be right.
    line_and_fix(&stdout, "ok", "lc_messages");
    line_and_fix(&stdout, "ok", "collector");
    line_and_fix(&stdout, "ok", "log directory");
}

#[test]
fn a_well_configured_server_passes() {
    if skip_pg("a_well_configured_server_passes") {
        return;
    }
    let cluster = PgCluster::start(&ClusterOptions::workload());
    cluster.psql_in(
        "postgres",
        "postgres",
        &[
            "-c",
            "CREATE EXTENSION pg_stat_statements",
            "-c",
            "CREATE ROLE querywatch LOGIN; GRANT pg_monitor TO querywatch",
        ],
    );
    // psql prints the value and a newline; the prefix's own trailing space stays.
    let prefix = cluster.psql("SHOW log_line_prefix");
    let prefix = prefix.strip_suffix('\n').unwrap_or(&prefix);
    let tmp = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a collector port");
    let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
    let logs = format!("pattern = \"postgresql.*\"\nformat = \"stderr\"\nprefix = {prefix:?}");
    let out = check(tmp.path(), &cluster, "querywatch", &endpoint, &logs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for name in [
        "log_min_duration_statement",
        "shared_preload_libraries",
        "pg_stat_statements extension",
        "log_line_prefix",
        "[logs] prefix",
        "log_destination",
        "compute_query_id",
        "lc_messages",
        "privileges",
        "log directory",
        "collector",
    ] {
        line_and_fix(&stdout, "ok", name);
    }

    // The same setup without the collector: FAIL, exit 1.
    drop(listener);
    let out = check(tmp.path(), &cluster, "querywatch", &endpoint, &logs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    line_and_fix(&stdout, "FAIL", "collector");
}
