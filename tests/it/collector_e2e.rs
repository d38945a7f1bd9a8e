//! End to end: three real PostgreSQL clusters, an agent next to each, one
//! collector — the binaries as users run them.
//!
//! Every node gets the same partitioned table with the same uniform load,
//! except node `n2`, where one partition takes most of it. On `n1` a
//! deliberately slow, unindexed query runs with auto_explain; on `n3` one
//! session holds a row lock another waits for. The collector must name,
//! through `/api/v1/findings` and `/metrics`:
//! - exactly one hot partition: `n2`'s `events_p3`, nothing on `n1`/`n3`;
//! - the slow query as the top consumer, with a seq-scan finding whose
//!   index candidate is `big (val)`;
//! - the lock contention, with the waiting and the blocking statement.
#![allow(clippy::unwrap_used)]

use crate::support::{ClusterOptions, PgCluster, skip_pg};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 8;
const HOT: u32 = 3;

/// A child process killed when the test ends, however it ends.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from `addr`; (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// Starts `querywatch collector` on free ports, detecting every second;
/// returns it with its OTLP/gRPC and API addresses. `extra_config` is
/// appended to the file (more `[detect]` keys, or further tables).
pub(crate) fn start_collector(dir: &Path, extra_config: &str) -> (Proc, String, String) {
    let config = format!(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [detect]\ninterval = \"1s\"\n{extra_config}"
    );
    start_collector_with(dir, "collector", &config)
}

/// Starts `querywatch collector` with the configuration `config` (written
/// to `dir/NAME.toml`; its listeners must be on port 0 or free ports);
/// returns it with its OTLP/gRPC and API addresses, read from the line it
/// prints at start. Its stderr goes on to `dir/NAME.stderr`.
pub(crate) fn start_collector_with(dir: &Path, name: &str, config_text: &str) -> (Proc, String, String) {
    let config = dir.join(format!("{name}.toml"));
    fs::write(&config, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_querywatch"))
        .args(["collector", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting querywatch collector");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // The start line, and what came before it: a task started with the
    // collector (a `[forward]` push to a closed port) can say something
    // first.
    let mut before = Vec::new();
    let line = loop {
        match lines.next().and_then(Result::ok) {
            Some(l) if l.contains("OTLP gRPC ") => break l,
            Some(l) => before.push(l),
            None => break before.join("\n"),
        }
    };
    // Keep draining so the collector never blocks on a full pipe.
    let log = dir.join(format!("{name}.stderr"));
    thread::spawn(move || {
        let mut f = fs::File::create(log).unwrap();
        for l in before.into_iter().chain(lines.map_while(Result::ok)) {
            let _ = writeln!(f, "{l}");
        }
    });
    let field = |after: &str| -> String {
        let rest = line.split(after).nth(1).unwrap_or_else(|| panic!("collector start line: {line:?}"));
        rest.split([',', ' ']).find(|s| !s.is_empty()).unwrap().trim_start_matches("http://").to_owned()
    };
    let grpc = field("OTLP gRPC ");
    let api = field("/metrics on ");
    (Proc(child), grpc, api)
}

pub(crate) fn start_agent(dir: &Path, node: &str, cluster: &PgCluster, grpc: &str) -> Proc {
    let config = dir.join(format!("agent-{node}.toml"));
    fs::write(
        &config,
        format!(
            "node = {node:?}\ncluster = \"e2e\"\ninterval = \"1s\"\nstate_dir = {state:?}\n\
             [logs]\ndirectory = {logs:?}\npattern = \"postgresql.csv\"\nstart_at = \"beginning\"\n\
             [database]\ndsn = \"host={host} port={port} user=postgres dbname=shop\"\n\
             statements_interval = \"1s\"\n\
             [export]\nendpoint = \"http://{grpc}\"\n",
            state = dir.join(format!("state-{node}")).display().to_string(),
            logs = cluster.log_dir().display().to_string(),
            host = cluster.host(),
            port = cluster.port(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_querywatch"))
        .args(["agent", "--config"])
        .arg(&config)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("QUERYWATCH_DSN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join(format!("agent-{node}.stderr"))).unwrap())
        .spawn()
        .expect("starting querywatch agent");
    Proc(child)
}

/// A file name no other test in this process uses (tests run in threads
/// of one process, so the pid alone is not unique).
fn scratch_file(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("qw-e2e-{what}-{}-{n}.sql", std::process::id()))
}

pub(crate) fn schema() -> String {
    let mut sql = String::from(
        "CREATE EXTENSION pg_stat_statements;\n\
         CREATE TABLE events (k int NOT NULL, v int NOT NULL) PARTITION BY LIST (k);\n\
         CREATE TABLE big (id int, val int, pad text);\n\
         INSERT INTO big SELECT g, g % 100000, 'x' FROM generate_series(1, 600000) g;\n\
         CREATE TABLE accounts (id int PRIMARY KEY, v int);\n\
         INSERT INTO accounts VALUES (1, 0), (2, 0);\n",
    );
    for p in 0..PARTITIONS {
        sql.push_str(&format!("CREATE TABLE events_p{p} PARTITION OF events FOR VALUES IN ({p});\n"));
    }
    sql.push_str(
        "INSERT INTO events SELECT g % 8, g FROM generate_series(1, 16000) g;\n\
         CREATE INDEX ON events (v);\nANALYZE;\n",
    );
    sql
}

/// `n` lookups, each on one partition: uniform, or `hot_pct`% on `HOT`.
pub(crate) fn partition_load(cluster: &PgCluster, n: u32, hot_pct: u32) {
    let sql = format!(
        "DO $$ DECLARE c int; BEGIN FOR i IN 1..{n} LOOP \
           IF (i % 100) < {hot_pct} THEN SELECT count(*) INTO c FROM events WHERE k = {HOT} AND v = i; \
           ELSE SELECT count(*) INTO c FROM events WHERE k = i % {PARTITIONS} AND v = i; END IF; \
         END LOOP; END $$;"
    );
    cluster.psql_in("postgres", "shop", &["-c", &sql]);
}

fn slow_queries(cluster: &PgCluster) {
    let mut sql = String::from("SET auto_explain.log_min_duration = 0;\n");
    for i in 0..100 {
        sql.push_str(&format!("SELECT id, pad FROM big WHERE val = {};\n", 1000 + i));
    }
    let file = scratch_file("slow");
    fs::write(&file, sql).unwrap();
    cluster.psql_in("postgres", "shop", &["-f", &file.to_string_lossy()]);
    let _ = fs::remove_file(file);
}

/// One session holds a row lock for 1.5 s while another waits for it.
fn lock_convoy(cluster: &PgCluster) {
    // Statement by statement (-f), so the holder's UPDATE is logged, and
    // known to the agent as its session's last statement, before the wait.
    let file = scratch_file("lock");
    fs::write(&file, "BEGIN;\nUPDATE accounts SET v = v + 1 WHERE id = 1;\nSELECT pg_sleep(1.5);\nCOMMIT;\n").unwrap();
    thread::scope(|s| {
        let holder = s.spawn(|| cluster.psql_in("postgres", "shop", &["-f", &file.to_string_lossy()]));
        // The waiter must come after the holder's UPDATE: wait for the lock
        // to be held (visible in pg_locks), not for a fixed time.
        let deadline = Instant::now() + Duration::from_secs(20);
        while cluster
            .psql_in(
                "postgres",
                "shop",
                &["-c", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND state = 'active' AND pid <> pg_backend_pid()"],
            )
            .trim()
            == "0"
        {
            assert!(Instant::now() < deadline, "the lock holder never started");
            thread::sleep(Duration::from_millis(20));
        }
        cluster.psql_in("postgres", "shop", &["-c", "UPDATE accounts SET v = v + 2 WHERE id = 1"]);
        holder.join().unwrap();
    });
    let _ = fs::remove_file(&file);
}

/// Three clusters, each with the `shop` database and [`schema`].
pub(crate) fn three_nodes(dir: &Path) -> Vec<PgCluster> {
    let nodes: Vec<PgCluster> = (0..3).map(|_| PgCluster::start(&ClusterOptions::workload())).collect();
    let file = dir.join("schema.sql");
    fs::write(&file, schema()).unwrap();
    for c in &nodes {
        c.psql("CREATE DATABASE shop");
        c.psql_in("postgres", "shop", &["-f", &file.to_string_lossy()]);
    }
    nodes
}

/// An agent per node (`n1`, `n2`, …) sending to `grpc`; returns once the
/// collector at `api` has heard from all of them, so a workload started
/// then shows up whole as statistics deltas (each agent's first poll is
/// its baseline).
pub(crate) fn start_agents(dir: &Path, nodes: &[PgCluster], grpc: &str, api: &str) -> Vec<Proc> {
    let agents: Vec<Proc> =
        nodes.iter().enumerate().map(|(i, c)| start_agent(dir, &format!("n{}", i + 1), c, grpc)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(api, "/api/v1/nodes");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if v["nodes"].as_array().is_some_and(|n| n.len() == nodes.len()) {
            return agents;
        }
        assert!(Instant::now() < deadline, "the agents did not all report within 60s: {body}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn findings(api: &str) -> Vec<Value> {
    let (status, body) = http_get(api, "/api/v1/findings");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["findings"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn kind<'a>(list: &'a [Value], k: &str) -> Vec<&'a Value> {
    list.iter().filter(|f| f["kind"] == k).collect()
}

pub(crate) fn wait_for(api: &str, what: &str, dir: &Path, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = findings(api);
        if done(&list) {
            return list;
        }
        if Instant::now() > deadline {
            panic!(
                "{what} not found within 90s; findings:\n{}\n{}",
                serde_json::to_string_pretty(&list).unwrap(),
                process_logs(dir)
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `/api/v1/queries` on `node` has a statement whose text contains
/// `needle` with at least `n` logged calls.
fn wait_for_logged_calls(api: &str, node: &str, needle: &str, n: u64, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = http_get(api, &format!("/api/v1/queries?node={node}&limit=1000"));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let seen = v["queries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["text"].as_str().is_some_and(|t| t.contains(needle)))
            .filter_map(|q| q["logged_calls"].as_u64())
            .max()
            .unwrap_or(0);
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node}: {seen} of {n} calls of `{needle}` reached the collector within 90s\n{}",
            process_logs(dir)
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Every process's stderr in `dir`, for a failure message.
fn process_logs(dir: &Path) -> String {
    let logs: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
        .map(|p| format!("--- {}\n{}", p.display(), fs::read_to_string(&p).unwrap_or_default()))
        .collect();
    logs.join("\n")
}

pub(crate) fn workdir() -> PathBuf {
    // Readable by the PostgreSQL server user is not needed: only our processes use it.
    tempfile::tempdir().unwrap().keep()
}

#[test]
fn three_nodes_one_collector_name_the_hot_partition_the_bottleneck_and_the_lock() {
    if skip_pg("three_nodes_one_collector_name_the_hot_partition_the_bottleneck_and_the_lock") {
        return;
    }
    let dir = workdir();
    let nodes = three_nodes(&dir);
    let (_collector, grpc, api) = start_collector(&dir, "");
    let _agents = start_agents(&dir, &nodes, &grpc, &api);

    thread::scope(|s| {
        for (i, c) in nodes.iter().enumerate() {
            s.spawn(move || partition_load(c, 3_000, if i == 1 { 90 } else { 0 }));
        }
        s.spawn(|| slow_queries(&nodes[0]));
        s.spawn(|| lock_convoy(&nodes[2]));
    });

    // The workload is done; findings are judged once the collector holds all
    // of it (the agents' log tail and export interval lag behind). Judging
    // earlier raced: with 19 of the 100 slow calls in, the schema's INSERT
    // still led the ranking (a CI run failed on that).
    wait_for_logged_calls(&api, "n1", "FROM big WHERE val", 100, &dir);
    let list = wait_for(&api, "a hot partition, a top consumer with a seq scan, and lock contention", &dir, |l| {
        !kind(l, "hot_partition").is_empty()
            && !kind(l, "top_consumer").is_empty()
            && !kind(l, "seq_scan_filter").is_empty()
            && !kind(l, "lock_contention").is_empty()
    });
    let dump = || serde_json::to_string_pretty(&list).unwrap();
    // Shown with --nocapture: what an operator would read.
    eprintln!("{}", dump());

    // Exactly one hot partition: n2's events_p3.
    let hot = kind(&list, "hot_partition");
    assert_eq!(hot.len(), 1, "{}", dump());
    let subject = hot[0]["subject"].as_str().unwrap();
    assert!(subject.contains("n2") && subject.contains(&format!("events_p{HOT}")), "{subject}");
    assert_eq!(hot[0]["node"], "n2", "{}", dump());
    assert!(kind(&list, "hot_shard").is_empty(), "partitions are not shards: {}", dump());

    // The slow query is the top consumer, and its plan names the index candidate.
    let top = kind(&list, "top_consumer");
    let top_fp: Vec<&str> = top.iter().filter_map(|f| f["subject"].as_str()).collect();
    let seq = kind(&list, "seq_scan_filter");
    assert!(
        seq.iter().any(|f| {
            let action = f["action"].as_str().unwrap_or("");
            action.contains("CREATE INDEX ON")
                && action.ends_with("big (val);")
                && top_fp.contains(&f["subject"].as_str().unwrap_or(""))
        }),
        "no seq-scan finding on big (val) for the top consumer: {}",
        dump()
    );
    let (_, queries) = http_get(&api, "/api/v1/queries?sort=time&limit=1");
    let queries: Value = serde_json::from_str(&queries).unwrap();
    let first = &queries["queries"][0];
    assert!(first["text"].as_str().unwrap().contains("FROM big"), "not the slow query first: {queries}");
    assert!(
        top_fp.contains(&format!("fingerprint:{}", first["fingerprint"].as_str().unwrap()).as_str()),
        "the most expensive statement has no top-consumer finding: {queries}\n{}",
        dump()
    );

    // The lock: waiter and blocker statements named.
    let locks = kind(&list, "lock_contention");
    assert!(
        locks.iter().any(|f| f.to_string().matches("UPDATE accounts").count() >= 2),
        "lock contention without waiter and blocker statements: {}",
        dump()
    );
    assert!(locks.iter().all(|f| f["node"] == "n3"), "{}", dump());

    // The same through /metrics.
    let (status, metrics) = http_get(&api, "/metrics");
    assert_eq!(status, 200);
    let finding_line = metrics
        .lines()
        .find(|l| l.starts_with("querywatch_finding{") && l.contains("kind=\"hot_partition\""))
        .unwrap_or_else(|| panic!("no hot_partition series in /metrics"));
    assert!(finding_line.contains("node=\"n2\""), "{finding_line}");
    let share = metrics
        .lines()
        .find(|l| {
            l.starts_with("querywatch_partition_load_share{")
                && l.contains("node=\"n2\"")
                && l.contains(&format!("relation=\"public.events_p{HOT}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no load share of n2's hot partition in /metrics"));
    assert!(share > f64::from(HOT) / f64::from(PARTITIONS), "share {share}");
    assert!(metrics.contains("querywatch_query_duration_seconds_bucket{"));
    let _ = fs::remove_dir_all(dir);
}
