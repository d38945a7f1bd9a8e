//! The statistics poller (`querywatch_agent::stats`) against a real
//! PostgreSQL: a known workload must come out as exactly its counts, with
//! partition parents, masked texts, without the agent's own statements,
//! and without a negative (or inflated) delta across
//! `pg_stat_statements_reset()` and a server restart. Activity sampling
//! must see a lock wait and a `pg_sleep` with their wait events.
//!
//! The poller connects as a least-privileged role (`pg_monitor` only), the
//! workload runs as another role, so privileges are part of the test.
//! Every wait is a condition polled until a deadline, never a fixed sleep.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use querywatch_agent::mask::mask;
use querywatch_agent::stats::{
    ActivityKey, Databases, DeltaOrigin, Poller, PollerConfig, PollerHealth, StatementDelta, StatsMessage, TableDelta,
};
use tokio::runtime::Runtime;

use crate::support::cluster::SERVER_USER;
use crate::support::{ClusterOptions, PgCluster, skip_pg};

const DEADLINE: Duration = Duration::from_secs(30);

/// The statement run 37 times (with different literals).
const PLAIN_SELECT: &str = "SELECT count(*) FROM plain WHERE id = $1";
const EVENTS_INSERT: &str = "INSERT INTO events VALUES ($1, $2)";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// A cluster with pg_stat_statements, the agent's role, a workload role, a
/// plain table and a partitioned one.
fn start_cluster() -> PgCluster {
    let cluster = PgCluster::start(&ClusterOptions::default().set("shared_preload_libraries", "pg_stat_statements"));
    cluster.psql_in(
        "postgres",
        "postgres",
        &[
            "-c",
            "CREATE EXTENSION pg_stat_statements",
            "-c",
            // The least privilege the module doc promises is enough.
            "CREATE ROLE querywatch LOGIN; GRANT pg_monitor TO querywatch",
            "-c",
            "CREATE ROLE app LOGIN",
            "-c",
            "CREATE TABLE plain (id int, v text); \
             INSERT INTO plain SELECT g, 'v' || g FROM generate_series(1, 100) g",
            "-c",
            "CREATE TABLE events (id int, region text) PARTITION BY LIST (region); \
             CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu'); \
             CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')",
            "-c",
            "GRANT SELECT, INSERT ON plain, events TO app",
        ],
    );
    cluster
}

fn poller_config(cluster: &PgCluster) -> PollerConfig {
    let mut c = PollerConfig::new(format!(
        "host={} port={} user=querywatch dbname=postgres connect_timeout=5",
        cluster.host(),
        cluster.port()
    ));
    c.statements_interval = Duration::from_millis(300);
    c.activity_interval = Duration::from_millis(100);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

/// Runs `n` executions of [`PLAIN_SELECT`] (literals `first..first+n`) as
/// the workload role, each its own statement.
fn run_selects(cluster: &PgCluster, first: u32, n: u32) {
    let sql: Vec<String> = (first..first + n).map(|i| format!("SELECT count(*) FROM plain WHERE id = {i}")).collect();
    let args: Vec<&str> = sql.iter().flat_map(|s| ["-c", s.as_str()]).collect();
    cluster.psql_in("app", "postgres", &args);
}

fn run_inserts(cluster: &PgCluster, first: u32, n: u32) {
    let sql: Vec<String> = (first..first + n).map(|i| format!("INSERT INTO events VALUES ({i}, 'eu')")).collect();
    let args: Vec<&str> = sql.iter().flat_map(|s| ["-c", s.as_str()]).collect();
    cluster.psql_in("app", "postgres", &args);
}

/// Everything polled so far, per statement text and per relation.
#[derive(Default)]
struct Seen {
    statements: Vec<StatementDelta>,
    tables: Vec<TableDelta>,
}

impl Seen {
    fn add(&mut self, messages: Vec<StatsMessage>) {
        for m in messages {
            match m {
                StatsMessage::Statements(b) => {
                    assert!(b.since <= b.until, "interval backwards: {b:?}");
                    self.statements.extend(b.deltas);
                }
                StatsMessage::Tables(b) => self.tables.extend(b.deltas),
                StatsMessage::Activity(_) => {}
            }
        }
    }

    fn calls(&self, text: &str) -> u64 {
        let masked = mask(text);
        self.statements.iter().filter(|d| *d.query == *masked).map(|d| d.counters.calls).sum()
    }

    fn table(&self, relname: &str) -> Vec<&TableDelta> {
        self.tables.iter().filter(|d| &*d.name.relname == relname).collect()
    }

    fn seq_scans(&self, relname: &str) -> u64 {
        self.table(relname).iter().map(|d| d.counters.seq_scan).sum()
    }

    fn inserts(&self, relname: &str) -> u64 {
        self.table(relname).iter().map(|d| d.counters.n_tup_ins).sum()
    }
}

/// Polls until `done(seen)` or the deadline (then fails with `what`).
fn poll_until(rt: &Runtime, poller: &mut Poller, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        seen.add(rt.block_on(poller.poll_stats()));
        if done(seen) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {DEADLINE:?}; statements: {:#?}\ntables: {:#?}\nnotices: {:?}",
            seen.statements,
            seen.tables,
            poller.notices()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(c: &AtomicU64) -> u64 {
    PollerHealth::get(c)
}

#[test]
fn stats_poll_deltas_equal_a_known_workload() {
    if skip_pg("stats_poll_deltas_equal_a_known_workload") {
        return;
    }
    let cluster = start_cluster();
    // A second database: its tables come over a connection of their own.
    cluster.psql("CREATE DATABASE shop");
    cluster.psql_in("postgres", "shop", &["-c", "CREATE TABLE orders (id int); GRANT INSERT ON orders TO app"]);
    let rt = runtime();
    let mut config = poller_config(&cluster);
    config.databases = Databases::All;
    let mut poller = Poller::new(config).expect("valid config");
    let health = poller.health();

    // First poll: a baseline, nothing to report.
    let first = rt.block_on(poller.poll_stats());
    assert!(first.is_empty(), "the first snapshot is a baseline: {first:?}");
    assert_eq!(get(&health.connects), 2, "the primary (postgres) and shop");

    // 37 selects with literals nobody else uses, 3 inserts into one partition.
    run_selects(&cluster, 900_001, 37);
    run_inserts(&cluster, 900_101, 3);
    cluster.psql_in("app", "shop", &["-c", "INSERT INTO orders VALUES (900201), (900202)"]);

    let mut seen = Seen::default();
    // Table statistics reach shared memory when the backend flushes them
    // (at exit, asynchronously to psql): wait for all of them.
    poll_until(&rt, &mut poller, &mut seen, "the workload", |s| {
        s.calls(PLAIN_SELECT) >= 37
            && s.calls(EVENTS_INSERT) >= 3
            && s.seq_scans("plain") >= 37
            && s.inserts("events_eu") >= 3
            && s.inserts("orders") >= 2
    });
    // One more poll: nothing beyond the workload trickles in.
    seen.add(rt.block_on(poller.poll_stats()));

    assert_eq!(seen.calls(PLAIN_SELECT), 37);
    assert_eq!(seen.calls(EVENTS_INSERT), 3);
    let select = seen.statements.iter().find(|d| *d.query == *mask(PLAIN_SELECT)).expect("the select's delta");
    assert_eq!((&*select.datname, &*select.rolname), ("postgres", "app"));
    assert_eq!(select.origin, DeltaOrigin::New, "created after the baseline");
    assert_eq!(select.counters.rows, 37);
    assert!(select.counters.total_exec_time > Duration::ZERO);
    assert!(select.counters.shared_blks_hit + select.counters.shared_blks_read >= 37, "{select:?}");

    assert_eq!(seen.seq_scans("plain"), 37);
    assert_eq!(seen.table("plain").iter().map(|d| d.counters.seq_tup_read).sum::<u64>(), 37 * 100);
    assert_eq!(seen.inserts("events_eu"), 3);
    assert_eq!(seen.inserts("events_us"), 0);
    assert_eq!(seen.inserts("orders"), 2);
    assert_eq!(&*seen.table("orders")[0].datname, "shop");
    // pg_stat_statements is cluster-wide: the shop insert came through the
    // primary connection, under its own database.
    let shop = seen.statements.iter().find(|d| d.query.contains("orders")).expect("the shop insert");
    assert_eq!((&*shop.datname, shop.counters.calls, shop.counters.rows), ("shop", 1, 2));
    let plain = seen.table("plain")[0];
    assert_eq!((plain.partition_parent.as_ref(), plain.partition_root.as_ref()), (None, None), "a plain table");
    assert!(plain.size_bytes.is_some_and(|b| b >= 8192), "{plain:?}");
    assert_eq!(&*plain.datname, "postgres");
    let eu = seen.table("events_eu")[0];
    assert_eq!(eu.partition_parent.as_ref().map(ToString::to_string).as_deref(), Some("public.events"));
    assert_eq!(eu.partition_root.as_ref().map(ToString::to_string).as_deref(), Some("public.events"));

    // The agent's own statements are in pg_stat_statements, and not in
    // what it reports.
    let own: u64 = cluster
        .psql("SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%/* querywatch */%'")
        .trim()
        .parse()
        .expect("a count");
    assert!(own >= 3, "the agent's statements should be in pg_stat_statements ({own})");
    for d in &seen.statements {
        for own_word in ["pg_stat_statements", "pg_stat_activity", "pg_postmaster_start_time", "pg_stat_user_tables"] {
            assert!(!d.query.contains(own_word), "the agent reported itself: {d:?}");
        }
        // Masked: no literal of the workload.
        assert!(!d.query.contains("9001"), "a literal leaked: {d:?}");
    }
    assert_eq!(get(&health.unattributed_rows), 0, "pg_monitor sees every role's statements");
    assert!(poller.notices().is_empty(), "{:?}", poller.notices());

    // Without pg_monitor: one clear message with the fix, and it keeps
    // going with what it can see.
    cluster.psql("CREATE ROLE nomonitor LOGIN");
    let mut config = poller_config(&cluster);
    config.dsn = config.dsn.replace("user=querywatch", "user=nomonitor");
    let mut weak = Poller::new(config).expect("valid config");
    assert!(rt.block_on(weak.poll_stats()).is_empty(), "baseline");
    run_selects(&cluster, 1, 2);
    let _ = rt.block_on(weak.poll_stats());
    let notices = weak.notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("GRANT pg_monitor TO nomonitor;"), "{notices:?}");
    assert!(get(&weak.health().unattributed_rows) > 0, "other roles' rows are counted as unattributable");
    assert!(get(&weak.health().polls) >= 4, "statements and tables were still polled");
}

/// `pg_ctl restart` of the harness's cluster (the harness has no restart):
/// same data directory and port (`postmaster.opts`), as the server user.
fn restart(cluster: &PgCluster) {
    let data = cluster.psql("SHOW data_directory").trim().to_owned();
    let log = Path::new(&data).parent().expect("the cluster dir").join("restart.log");
    let pg_ctl = cluster.bin_dir().join("pg_ctl");
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    let log = log.to_str().expect("a UTF-8 path").to_owned();
    let out = cmd
        .args(["-D", &data, "-m", "fast", "-w", "-t", "60", "-l", &log, "restart"])
        .stdin(Stdio::null())
        .output()
        .expect("running pg_ctl restart");
    assert!(out.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stats_poll_reset_and_restart_never_go_negative() {
    if skip_pg("stats_poll_reset_and_restart_never_go_negative") {
        return;
    }
    let cluster = start_cluster();
    let rt = runtime();
    let mut poller = Poller::new(poller_config(&cluster)).expect("valid config");
    let health = poller.health();
    assert!(rt.block_on(poller.poll_stats()).is_empty(), "baseline");

    // Phase 1: plain growth.
    let mut seen = Seen::default();
    run_selects(&cluster, 1, 10);
    poll_until(&rt, &mut poller, &mut seen, "10 selects", |s| s.calls(PLAIN_SELECT) >= 10);
    assert_eq!(seen.calls(PLAIN_SELECT), 10);

    // Phase 2: 5 more, a reset, then 4: the 5 happened between the last
    // poll and the reset and are lost; the 4 are reported, as a reset.
    run_selects(&cluster, 11, 5);
    cluster.psql("SELECT pg_stat_statements_reset()");
    run_selects(&cluster, 16, 4);
    let mut seen = Seen::default();
    poll_until(&rt, &mut poller, &mut seen, "4 selects after the reset", |s| s.calls(PLAIN_SELECT) >= 4);
    seen.add(rt.block_on(poller.poll_stats()));
    assert_eq!(seen.calls(PLAIN_SELECT), 4, "{:#?}", seen.statements);
    assert!(seen.statements.iter().filter(|d| *d.query == *mask(PLAIN_SELECT)).all(|d| d.origin == DeltaOrigin::Reset));
    assert!(get(&health.resets) >= 1);
    // Everything after a reset is bounded by what really ran since: the
    // agent's own statements are excluded, so only workload statements
    // appear, each at most as often as it ran.
    for d in &seen.statements {
        assert!(d.counters.calls <= 4, "inflated after a reset: {d:?}");
    }

    // Phase 3: a restart. The poller loses its connection, reconnects,
    // and makes the first snapshot after the restart a new baseline.
    let restarts_before = get(&health.restarts);
    run_inserts(&cluster, 1, 2);
    restart(&cluster);
    let mut seen = Seen::default();
    poll_until(&rt, &mut poller, &mut seen, "the restart", |_| get(&health.restarts) != restarts_before);
    // The 2 inserts before the restart may have been reported before the
    // restart was detected, never more; nothing went negative or doubled.
    assert!(seen.inserts("events_eu") <= 2, "{:#?}", seen.tables);
    assert!(seen.calls(PLAIN_SELECT) == 0, "no selects ran: {:#?}", seen.statements);
    assert!(get(&health.connections_lost) >= 1);
    // Let both sources (statements, tables) take their post-restart baseline.
    seen.add(rt.block_on(poller.poll_stats()));

    // Phase 4: sensible deltas after the restart.
    let mut seen = Seen::default();
    run_selects(&cluster, 21, 6);
    run_inserts(&cluster, 3, 5);
    poll_until(&rt, &mut poller, &mut seen, "the workload after the restart", |s| {
        s.calls(PLAIN_SELECT) >= 6 && s.inserts("events_eu") >= 5 && s.seq_scans("plain") >= 6
    });
    seen.add(rt.block_on(poller.poll_stats()));
    assert_eq!(seen.calls(PLAIN_SELECT), 6, "{:#?}", seen.statements);
    assert_eq!(seen.calls(EVENTS_INSERT), 5);
    assert_eq!(seen.inserts("events_eu"), 5);
    assert_eq!(seen.seq_scans("plain"), 6);
}

/// `ALTER EXTENSION pg_stat_statements UPDATE` from 1.8 (no
/// `stats_reset`) to the server's version: the poll after it is a
/// baseline, not every entry's lifetime as one interval's delta.
#[test]
fn stats_poll_extension_update_is_a_baseline() {
    if skip_pg("stats_poll_extension_update_is_a_baseline") {
        return;
    }
    let cluster = start_cluster();
    cluster.psql("DROP EXTENSION pg_stat_statements; CREATE EXTENSION pg_stat_statements VERSION '1.8'");
    // Nested statements too: 1.8 cannot tell them from top-level ones,
    // which PostgreSQL 14 and later keep apart.
    cluster.psql_in(
        "postgres",
        "postgres",
        &["-c", "ALTER SYSTEM SET pg_stat_statements.track = 'all'", "-c", "SELECT pg_reload_conf()"],
    );
    cluster.psql(
        "CREATE FUNCTION count_plain() RETURNS void LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM count(*) FROM plain; END $$; GRANT SELECT ON plain TO app",
    );
    let rt = runtime();
    let mut poller = Poller::new(poller_config(&cluster)).expect("valid config");
    let health = poller.health();
    assert!(rt.block_on(poller.poll_stats()).is_empty(), "baseline");
    let mut seen = Seen::default();
    run_selects(&cluster, 1, 10);
    let count_plain = "SELECT count(*) FROM plain";
    let mut args = vec!["-c", count_plain, "-c", count_plain, "-c", count_plain];
    args.extend(["-c", "SELECT count_plain()"].repeat(5));
    cluster.psql_in("app", "postgres", &args);
    poll_until(&rt, &mut poller, &mut seen, "10 selects on 1.8", |s| {
        s.calls(PLAIN_SELECT) >= 10 && s.calls(count_plain) >= 8
    });
    seen.add(rt.block_on(poller.poll_stats()));
    assert_eq!(seen.calls(PLAIN_SELECT), 10);
    assert_eq!(seen.calls(count_plain), 8, "3 top-level and 5 nested: {:#?}", seen.statements);

    cluster.psql("ALTER EXTENSION pg_stat_statements UPDATE");
    let version = cluster.psql("SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'");
    assert_ne!(version.trim(), "1.8", "the update did nothing");
    // The first poll of the new version: a baseline, nothing reported.
    let mut seen = Seen::default();
    let polls = get(&health.polls);
    poll_until(&rt, &mut poller, &mut seen, "a poll after the update", |_| get(&health.polls) != polls);
    assert_eq!(seen.calls(PLAIN_SELECT), 0, "lifetime counters sent as a delta: {:#?}", seen.statements);
    run_selects(&cluster, 11, 4);
    poll_until(&rt, &mut poller, &mut seen, "4 selects on the new version", |s| s.calls(PLAIN_SELECT) >= 4);
    seen.add(rt.block_on(poller.poll_stats()));
    assert_eq!(seen.calls(PLAIN_SELECT), 4, "{:#?}", seen.statements);
}

/// `pg_stat_reset_single_table_counters` resets a table's own counters,
/// not its indexes': the interval after it carries the index scans that
/// happened in it, not the indexes' lifetime.
#[test]
fn stats_poll_single_table_reset_keeps_index_scans_by_difference() {
    if skip_pg("stats_poll_single_table_reset_keeps_index_scans_by_difference") {
        return;
    }
    let cluster = start_cluster();
    cluster.psql("CREATE INDEX plain_id ON plain (id); ANALYZE plain");
    let index_scans = |first: u32, n: u32| {
        let sql: Vec<String> = (first..first + n)
            .map(|i| format!("SET enable_seqscan = off; SELECT count(*) FROM plain WHERE id = {i}"))
            .collect();
        let args: Vec<&str> = sql.iter().flat_map(|s| ["-c", s.as_str()]).collect();
        cluster.psql_in("app", "postgres", &args);
    };
    let rt = runtime();
    let mut poller = Poller::new(poller_config(&cluster)).expect("valid config");
    let health = poller.health();
    let idx = |s: &Seen| s.table("plain").iter().map(|d| d.counters.idx_scan).sum::<u64>();
    assert!(rt.block_on(poller.poll_stats()).is_empty(), "baseline");
    let mut seen = Seen::default();
    index_scans(1, 30);
    poll_until(&rt, &mut poller, &mut seen, "30 index scans", |s| idx(s) >= 30);

    cluster.psql("SELECT pg_stat_reset_single_table_counters('plain'::regclass)");
    let lifetime = cluster.psql("SELECT idx_scan FROM pg_stat_user_tables WHERE relname = 'plain'");
    assert!(lifetime.trim().parse::<u64>().is_ok_and(|n| n >= 30), "the index kept its scans: {lifetime}");
    index_scans(100, 2);
    run_selects(&cluster, 1, 1);
    let resets = get(&health.entries_reset);
    let mut seen = Seen::default();
    poll_until(&rt, &mut poller, &mut seen, "the scans after the reset", |s| idx(s) >= 2 && s.seq_scans("plain") >= 1);
    seen.add(rt.block_on(poller.poll_stats()));
    assert_eq!(idx(&seen), 2, "{:#?}", seen.tables);
    assert!(get(&health.entries_reset) > resets, "not taken for a reset");
}

/// A psql session in the background, terminated and reaped on drop.
struct Session(Child);

impl Session {
    fn start(cluster: &PgCluster, user: &str, statements: &[&str]) -> Session {
        let mut cmd = cluster.client("psql");
        cmd.args(["-X", "-q", "-U", user, "-d", "postgres"]);
        for s in statements {
            cmd.args(["-c", s]);
        }
        Session(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting psql"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stats_poll_samples_lock_waits_and_sleeps() {
    if skip_pg("stats_poll_samples_lock_waits_and_sleeps") {
        return;
    }
    let cluster = start_cluster();
    cluster.psql("GRANT ALL ON plain TO app");
    let rt = runtime();
    let poller = Poller::new(poller_config(&cluster)).expect("valid config");
    let health = poller.health();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    // The holder sleeps with the table locked; the waiter queues behind it.
    let _holder = Session::start(
        &cluster,
        "app",
        &["BEGIN", "LOCK TABLE plain IN ACCESS EXCLUSIVE MODE", "SELECT pg_sleep(300)"],
    );
    // Only once the lock is held, or the waiter could run first and finish.
    let deadline = Instant::now() + DEADLINE;
    while cluster
        .psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE c.relname = 'plain' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        )
        .trim()
        != "1"
    {
        assert!(Instant::now() < deadline, "the holder never got its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _waiter = Session::start(&cluster, "app", &["SELECT count(*) FROM plain WHERE id = 4711"]);

    let counts: BTreeMap<ActivityKey, u64> = rt.block_on(async {
        let task = tokio::spawn(poller.run(tx, async move {
            let _ = stopped.await;
        }));
        let mut counts: BTreeMap<ActivityKey, u64> = BTreeMap::new();
        let lock_wait = |k: &ActivityKey| {
            k.wait_event_type.as_deref() == Some("Lock")
                && k.wait_event.as_deref() == Some("relation")
                && *k.query == *mask("SELECT count(*) FROM plain WHERE id = $1")
        };
        let sleep = |k: &ActivityKey| {
            k.wait_event_type.as_deref() == Some("Timeout")
                && k.wait_event.as_deref() == Some("PgSleep")
                && *k.query == *mask("SELECT pg_sleep($1)")
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        // Several samples of each, so it is sampling, not luck.
        while !(counts.iter().any(|(k, n)| lock_wait(k) && *n >= 3) && counts.iter().any(|(k, n)| sleep(k) && *n >= 3))
        {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(StatsMessage::Activity(a))) => {
                    assert!(a.since <= a.until);
                    for (k, n) in a.counts {
                        *counts.entry(k).or_default() += n;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the poller stopped"),
                Err(_) => panic!(
                    "lock wait and sleep not sampled within {DEADLINE:?}: {counts:#?}; samples {}, failures {}, connects {}",
                    PollerHealth::get(&health.activity_samples),
                    PollerHealth::get(&health.activity_failures),
                    PollerHealth::get(&health.connects)
                ),
            }
        }
        stop.send(()).expect("the poller is running");
        tokio::time::timeout(DEADLINE, task).await.expect("stops on shutdown").expect("no panic");
        counts
    });

    for k in counts.keys() {
        assert!(!k.query.contains("4711"), "a literal leaked: {k:?}");
        assert!(!k.query.contains("pg_stat_activity"), "the agent sampled itself: {k:?}");
        assert!(k.state.as_ref() != "idle", "{k:?}");
    }
    let waiter = counts.keys().find(|k| k.wait_event_type.as_deref() == Some("Lock")).expect("the waiter");
    assert_eq!((waiter.datname.as_deref(), &*waiter.state), (Some("postgres"), "active"));
    assert!(PollerHealth::get(&health.activity_samples) >= 3);
    assert_eq!(PollerHealth::get(&health.activity_failures), 0);
    // Release the sessions before the cluster goes (Session's drop kills
    // psql; the backends go with the cluster).
    cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'");
}
