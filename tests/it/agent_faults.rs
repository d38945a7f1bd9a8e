//! The live agent under faults, end to end: the real `querywatch agent`
//! binary, a real PostgreSQL, an OTLP/gRPC receiver in this test. Each test
//! breaks one thing in the path and then checks that what arrived agrees
//! with PostgreSQL's own counts (pg_stat_statements calls per statement
//! shape): nothing lost, nothing twice.
//!
//! - the collector down for a while, then back: the agent retries, spools,
//!   then drains the spool (the full workload, compared statement by
//!   statement like `agent_live`);
//! - the log rotated by size many times while the agent reads (the full
//!   workload again);
//! - PostgreSQL restarted mid-run (`pg_ctl restart`): the log goes on in a
//!   new file, the statistics poller reconnects (its reconnect counter
//!   arrives in the agent's exported health), and no delta is counted twice;
//! - `pg_stat_statements_reset()` mid-run: the statistics source reports
//!   after the reset exactly what ran after it.
//!
//! Nothing here kills the agent between an acknowledgement and its
//! checkpoint, so at-least-once delivery must show as exactly once.
//!
//! The restart and reset tests run a small workload of their own as role
//! `app`: three statement shapes, each run a known number of times in one
//! psql session per phase, so the expected counts are exact.

// A test: a failed unwrap is a failed test, with the error.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use querywatch_wire::Observations;

use crate::support::agent::{
    AgentSetup, Receiver, agent_dsn, create_agent_role, fingerprint, pgss_dump, poller_polls, read, report_of,
    start_agent, stop_agent, wait_for, wait_for_dump, wait_for_polls, write_agent_config, write_config,
};
use crate::support::cluster::SERVER_USER;
use crate::support::workload::assert_full_run_agrees;
use crate::support::{ClusterOptions, PgCluster, skip_pg};

/// A log file name per second: each rotation, by size or by a restart,
/// starts a new file (within one second PostgreSQL reopens the same name).
const ROTATING_NAME: &str = "postgresql-%Y%m%d_%H%M%S.log";
const ROTATING_CSV: &str = "postgresql-*.csv";

fn csv_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    names.sort();
    names
}

/// Spooled batches on disk (whole files, not ones being written).
fn spool_files(state_dir: &Path) -> usize {
    fs::read_dir(state_dir.join("spool"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".otlp")).count())
        .unwrap_or(0)
}

#[test]
fn agent_spools_while_the_collector_is_down_and_sends_everything_once_when_it_is_back() {
    if skip_pg("agent_spools_while_the_collector_is_down_and_sends_everything_once_when_it_is_back") {
        return;
    }
    let started = Instant::now();
    let cluster = PgCluster::start(&ClusterOptions::workload());
    let mut receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let (config, state_dir) = write_config(work.path(), &cluster, &receiver);
    let stderr = work.path().join("agent.stderr");
    let mut agent = start_agent(&config, &stderr);

    thread::scope(|s| {
        let workload = s.spawn(|| cluster.run_workload("full", Duration::from_secs(300)));
        // Down once the collector has acknowledged something: mid-run.
        wait_for(&receiver, &mut agent, &stderr, Duration::from_secs(60), "a first acknowledged call", |o| {
            (o.statements.values().map(|s| s.calls).sum::<u64>() > 0).then_some(())
        });
        receiver.down();
        workload.join().unwrap();
        // The batch in flight is retried for its time budget (15 s), then
        // spooled; the batches behind it go straight to the spool.
        let deadline = Instant::now() + Duration::from_secs(45);
        while spool_files(&state_dir) < 2 {
            assert!(agent.try_wait().unwrap().is_none(), "the agent exited; stderr:\n{}", read(&stderr));
            assert!(Instant::now() < deadline, "nothing spooled within 45s; stderr:\n{}", read(&stderr));
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("collector down; {} batches spooled after {:?}", spool_files(&state_dir), started.elapsed());
        receiver.up();
    });

    let dump = pgss_dump(&cluster);
    let obs = wait_for_dump(&receiver, &mut agent, &stderr);
    assert_full_run_agrees(
        &report_of(&obs),
        &dump,
        &format!("collector down, then back (agent stderr:\n{})", read(&stderr)),
    );

    // The agent said what happened in its own health metrics: failures to
    // export, retries, a non-empty spool; and then an empty one.
    let requests = receiver.requests();
    let most_spooled = requests.iter().filter_map(|o| o.agent.spool_batches).max().unwrap_or(0);
    let ((), merged) =
        wait_for(&receiver, &mut agent, &stderr, Duration::from_secs(30), "an empty spool reported", |o| {
            (o.agent.spool_batches == Some(0)).then_some(())
        });
    let h = &merged.agent;
    eprintln!("agent health over the run: {h:?}; at most {most_spooled} batches spooled in a report");
    assert!(most_spooled >= 1, "no report showed a spooled batch: {h:?}");
    assert!(h.export_retryable_failures >= 1, "no retryable export failure reported: {h:?}");
    assert!(h.export_retries >= 1, "no export retry reported: {h:?}");
    assert_eq!((h.spool_dropped_batches, h.export_permanent_failures), (0, 0), "{h:?}");
    assert_eq!(spool_files(&state_dir), 0, "spool files left after the drain");
    let err = stop_agent(&mut agent, &stderr);
    assert!(err.contains("spooling to"), "the agent did not say it spooled:\n{err}");
    eprintln!("collector-down test took {:?}", started.elapsed());
}

#[test]
fn agent_reads_a_log_rotated_by_size_without_loss_or_duplicates() {
    if skip_pg("agent_reads_a_log_rotated_by_size_without_loss_or_duplicates") {
        return;
    }
    let started = Instant::now();
    // The smallest unit of log_rotation_size is 1kB; 100kB rotates the
    // csvlog (about 850 kB for the full run) at every second boundary.
    let options = ClusterOptions::workload().set("log_filename", ROTATING_NAME).set("log_rotation_size", "100kB");
    let cluster = PgCluster::start(&options);
    let receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let (config, _state_dir) = write_agent_config(
        work.path(),
        &AgentSetup { logs: Some((cluster.log_dir(), ROTATING_CSV)), dsn: None, receiver: &receiver },
    );
    let stderr = work.path().join("agent.stderr");
    let mut agent = start_agent(&config, &stderr);

    // The full run alone lasts a few seconds (a new file each second at
    // most): first more traffic, while the agent reads, until the log has
    // rotated into 8 files. It is in pg_stat_statements too, and compared
    // like the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0;
    while csv_files(&cluster.log_dir()).len() < 8 {
        assert!(Instant::now() < deadline, "the log did not rotate into 8 files within 30s");
        let sql: Vec<String> =
            (0..300).map(|i| format!("SELECT {i} + {round} AS rotated FROM pg_class WHERE relname = 'r{i}'")).collect();
        let args: Vec<&str> = sql.iter().flat_map(|s| ["-c", s.as_str()]).collect();
        cluster.psql_in("postgres", "postgres", &args);
        round += 1;
    }
    cluster.run_workload("full", Duration::from_secs(300));
    let dump = pgss_dump(&cluster);
    let obs = wait_for_dump(&receiver, &mut agent, &stderr);
    let files = csv_files(&cluster.log_dir());
    assert!(files.len() >= 8, "the log rotated too little to mean anything: {files:?}");
    let rotated = fingerprint("SELECT $1 + $2 AS rotated FROM pg_class WHERE relname = $3");
    let calls: u64 = obs.statements.iter().filter(|(k, _)| fingerprint(&k.text) == rotated).map(|(_, s)| s.calls).sum();
    assert_eq!(calls, 300 * round, "the rotation traffic's calls");
    assert_full_run_agrees(
        &report_of(&obs),
        &dump,
        &format!("log rotated by size into {} files (agent stderr:\n{})", files.len(), read(&stderr)),
    );
    // Health: every file read is named (fewer than the per-interval cap
    // each second), and the per-file bytes add up to the total.
    let named: Vec<&String> = obs.agent.files.keys().collect();
    assert!(named.len() >= 3 && named.iter().all(|n| files.contains(n)), "files in the health metrics: {named:?}");
    let per_file: u64 = obs.agent.files.values().map(|r| r.bytes).sum();
    assert_eq!(per_file, obs.input.bytes, "per-file bytes vs bytes read");
    stop_agent(&mut agent, &stderr);
    eprintln!("rotation test: {} csv files, took {:?}", files.len(), started.elapsed());
}

// --- A workload of known counts (restart and reset) ----------------------------------

/// The shapes of [`run_phase`], as pg_stat_statements normalizes them.
const SHAPES: [&str; 3] = [
    "SELECT count(*) FROM plain WHERE id = $1",
    "UPDATE plain SET v = $1 WHERE id = $2",
    "SELECT v FROM plain WHERE id > $1 ORDER BY id LIMIT $2",
];

/// A cluster logging every statement into per-second csv files, the agent's
/// role, role `app` and its table.
fn counted_cluster() -> PgCluster {
    let cluster = PgCluster::start(&ClusterOptions::workload().set("log_filename", ROTATING_NAME));
    create_agent_role(&cluster);
    cluster.psql_in(
        "postgres",
        "postgres",
        &[
            "-c",
            "CREATE ROLE app LOGIN",
            "-c",
            "CREATE TABLE plain (id int, v text); \
             INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 100) g; \
             GRANT SELECT, UPDATE ON plain TO app",
        ],
    );
    cluster
}

/// Runs the shapes `counts[i]` times each, as `app`, in one session.
fn run_phase(cluster: &PgCluster, counts: [u64; 3]) {
    let mut sql = Vec::new();
    for i in 0..counts[0] {
        sql.push(format!("SELECT count(*) FROM plain WHERE id = {}", i + 1));
    }
    for i in 0..counts[1] {
        sql.push(format!("UPDATE plain SET v = 'phase value {i}' WHERE id = {}", i + 1));
    }
    for i in 0..counts[2] {
        sql.push(format!("SELECT v FROM plain WHERE id > {} ORDER BY id LIMIT 2", i + 1));
    }
    let args: Vec<&str> = sql.iter().flat_map(|s| ["-c", s.as_str()]).collect();
    cluster.psql_in("app", "postgres", &args);
}

fn add(a: [u64; 3], b: [u64; 3]) -> [u64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

/// Calls of `app`'s statements per shape (by fingerprint): from the log
/// source, and from the statistics source.
fn app_calls(obs: &Observations) -> ([u64; 3], [u64; 3]) {
    let fps: Vec<String> = SHAPES.iter().map(|s| fingerprint(s)).collect();
    let (mut log, mut stats) = ([0; 3], [0; 3]);
    for (k, s) in obs.statements.iter().filter(|(k, _)| k.user == "app") {
        let i = fps.iter().position(|f| *f == fingerprint(&k.text));
        let i = i.unwrap_or_else(|| panic!("an app statement of no known shape from the log: {k:?}"));
        log[i] += s.calls;
    }
    for (k, d) in obs.db.statements.iter().filter(|(k, _)| k.user == "app") {
        let i = fps.iter().position(|f| *f == fingerprint(&k.text));
        let i = i.unwrap_or_else(|| panic!("an app statement of no known shape from the statistics: {k:?}"));
        stats[i] += d.calls;
    }
    (log, stats)
}

/// pg_stat_statements' own calls of `app`'s statements per shape.
fn pgss_calls(cluster: &PgCluster) -> [u64; 3] {
    let fps: Vec<String> = SHAPES.iter().map(|s| fingerprint(s)).collect();
    let rows = cluster.psql(
        "SELECT s.calls || ' ' || s.query FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
         WHERE r.rolname = 'app' AND s.toplevel",
    );
    let mut calls = [0; 3];
    for line in rows.lines().filter(|l| !l.trim().is_empty()) {
        let (n, query) = line.split_once(' ').unwrap();
        let i = fps.iter().position(|f| *f == fingerprint(query));
        let i = i.unwrap_or_else(|| panic!("an app statement of no known shape in pg_stat_statements: {query}"));
        calls[i] += n.parse::<u64>().unwrap();
    }
    calls
}

/// Waits until both sources have reported `want` (log) and `want_stats`
/// (statistics); fails at once when either goes past it (a duplicate).
fn wait_for_counts(
    receiver: &Receiver,
    agent: &mut Child,
    stderr: &Path,
    want: [u64; 3],
    want_stats: [u64; 3],
    what: &str,
) -> Observations {
    let probe = |obs: &Observations| {
        let (log, stats) = app_calls(obs);
        let over = (0..3).any(|i| log[i] > want[i] || stats[i] > want_stats[i]);
        assert!(
            !over,
            "{what}: more calls than executed: log {log:?} statistics {stats:?}, want {want:?} / {want_stats:?}"
        );
        (log == want && stats == want_stats).then_some(())
    };
    wait_for(receiver, agent, stderr, Duration::from_secs(40), what, probe).1
}

/// After the counts are complete: `n` more batches arrive (the poller polls
/// every second, the agent exports every second) and nothing changes.
fn assert_settled(receiver: &Receiver, agent: &mut Child, stderr: &Path, before: &Observations, what: &str) {
    let seen = receiver.requests().len();
    wait_for(receiver, agent, stderr, Duration::from_secs(20), "three more batches", |_| {
        (receiver.requests().len() >= seen + 3).then_some(())
    });
    let (now, then) = (app_calls(&receiver.observations()), app_calls(before));
    assert_eq!(now, then, "{what}: counts changed after settling (log, statistics)");
}

/// `pg_ctl restart -m fast` of the harness's cluster, as the server user
/// (the same as `stats_poll`'s: the harness has no restart).
fn pg_ctl_restart(cluster: &PgCluster) {
    let data = cluster.psql("SHOW data_directory").trim().to_owned();
    let log = Path::new(&data).parent().unwrap().join("restart.log");
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    let out = cmd
        .args(["-D", &data, "-m", "fast", "-w", "-t", "60", "-l", log.to_str().unwrap(), "restart"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn start_both_sources(cluster: &PgCluster, receiver: &Receiver, dir: &Path) -> (Child, std::path::PathBuf) {
    let (config, _state_dir) = write_agent_config(
        dir,
        &AgentSetup { logs: Some((cluster.log_dir(), ROTATING_CSV)), dsn: Some(agent_dsn(cluster)), receiver },
    );
    let stderr = dir.join("agent.stderr");
    let mut agent = start_agent(&config, &stderr);
    // The first poll is a baseline; after the second, what runs is a delta.
    wait_for_polls(cluster, 2, &mut agent, &stderr);
    (agent, stderr)
}

#[test]
fn agent_follows_a_postgresql_restart_without_loss_or_double_counting() {
    if skip_pg("agent_follows_a_postgresql_restart_without_loss_or_double_counting") {
        return;
    }
    const PHASE_1: [u64; 3] = [30, 20, 10];
    const PHASE_2: [u64; 3] = [15, 10, 5];
    let started = Instant::now();
    let cluster = counted_cluster();
    let receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let (mut agent, stderr) = start_both_sources(&cluster, &receiver, work.path());

    run_phase(&cluster, PHASE_1);
    let obs = wait_for_counts(&receiver, &mut agent, &stderr, PHASE_1, PHASE_1, "phase 1");
    assert_eq!(obs.agent.poller_reconnects, 0, "a reconnect before the restart: {:?}", obs.agent);
    let files_before = csv_files(&cluster.log_dir());

    pg_ctl_restart(&cluster);
    // The poller lost its connection and made a new one: its health says so.
    let (reconnects, _) =
        wait_for(&receiver, &mut agent, &stderr, Duration::from_secs(40), "a poller reconnect reported", |o| {
            (o.agent.poller_reconnects >= 1).then_some(o.agent.poller_reconnects)
        });
    // pg_stat_statements keeps its counters across a clean restart (they are
    // saved at shutdown); the first poll after the restart is a new
    // baseline, so wait for the one after it before phase 2.
    let polls = poller_polls(&cluster);
    crate::support::agent::wait_for_polls_since(&cluster, polls, 2, &mut agent, &stderr);

    run_phase(&cluster, PHASE_2);
    let total = add(PHASE_1, PHASE_2);
    let obs = wait_for_counts(&receiver, &mut agent, &stderr, total, total, "after the restart");
    assert_eq!(pgss_calls(&cluster), total, "pg_stat_statements (kept across the restart) vs the workload");
    assert_settled(&receiver, &mut agent, &stderr, &obs, "after the restart");

    let files_after = csv_files(&cluster.log_dir());
    assert!(
        files_after.iter().any(|f| !files_before.contains(f)),
        "no new log file after the restart: before {files_before:?}, after {files_after:?}"
    );
    let h = receiver.observations().agent;
    eprintln!("agent health over the run: {h:?}");
    // One reconnect per connection the restart broke (the poller keeps one
    // per database and one for activity sampling).
    assert!(h.poller_connections_lost >= 1, "the lost connections are not counted: {h:?}");
    assert!(reconnects >= 1 && h.poller_reconnects <= h.poller_connections_lost, "{h:?}");
    let err = stop_agent(&mut agent, &stderr);
    assert!(err.contains("reconnected"), "the poller did not say it reconnected:\n{err}");
    eprintln!("restart test took {:?}", started.elapsed());
}

#[test]
fn agent_statistics_after_pg_stat_statements_reset_are_what_ran_after_it() {
    if skip_pg("agent_statistics_after_pg_stat_statements_reset_are_what_ran_after_it") {
        return;
    }
    const PHASE_1: [u64; 3] = [12, 8, 4];
    const PHASE_2: [u64; 3] = [21, 14, 7];
    let started = Instant::now();
    let cluster = counted_cluster();
    let receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let (mut agent, stderr) = start_both_sources(&cluster, &receiver, work.path());

    run_phase(&cluster, PHASE_1);
    let obs = wait_for_counts(&receiver, &mut agent, &stderr, PHASE_1, PHASE_1, "phase 1");
    assert_eq!(pgss_calls(&cluster), PHASE_1, "pg_stat_statements before the reset");
    let stats_before = app_calls(&obs).1;

    cluster.psql("SELECT pg_stat_statements_reset()");
    run_phase(&cluster, PHASE_2);
    let total = add(PHASE_1, PHASE_2);
    // Counters that went down are never a negative delta (and could not
    // travel as one): the statistics source reports what ran since the
    // reset, exactly, on top of what it had reported before.
    let obs = wait_for_counts(&receiver, &mut agent, &stderr, total, total, "after the reset");
    let pgss_after = pgss_calls(&cluster);
    assert_eq!(pgss_after, PHASE_2, "pg_stat_statements after the reset vs the workload");
    let stats_after = app_calls(&obs).1;
    let since_reset: Vec<u64> = (0..3).map(|i| stats_after[i] - stats_before[i]).collect();
    assert_eq!(since_reset, pgss_after, "statistics-source calls since the reset vs pg_stat_statements");
    assert_settled(&receiver, &mut agent, &stderr, &obs, "after the reset");
    // Every batch's statistics deltas, one by one: none more than the
    // workload ran in all (a reset mistaken for growth would resend the
    // counters of before it).
    for (i, o) in receiver.requests().iter().enumerate() {
        let (_, stats) = app_calls(o);
        assert!((0..3).all(|s| stats[s] <= total[s]), "batch {i}: statistics calls {stats:?} > {total:?}");
    }
    stop_agent(&mut agent, &stderr);
    eprintln!("reset test took {:?}", started.elapsed());
}
