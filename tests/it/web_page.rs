//! The built-in web page in a real browser: a `querywatch collector`
//! process receives agent-shaped OTLP (three nodes over twenty minutes, one
//! partitioned table skewed on `n2`, one slow statement), its detection
//! passes open findings, and headless Chromium driven by Playwright
//! (`tests/it/web_page.mjs`) checks what a person would see: no console
//! errors, the hot-partition finding, sorting both ways, the hot heatmap
//! cell, a sparkline per statement. The screenshot is kept as
//! `target/test-artifacts/web-page.png`.
//!
//! Needs Debian's `chromium`, `node` and `playwright-core` in `target/node`
//! (all installed by `scripts/deps.sh`). Missing, the test fails under
//! `CI=true` and skips loudly elsewhere.
#![allow(clippy::unwrap_used)]

use crate::collector_e2e::{Proc, http_get, start_collector, start_collector_with};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use querywatch_wire::dbstats::{TableDelta, TableKey};
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

const CHROMIUM: &str = "/usr/bin/chromium";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PARTITIONS: u64 = 8;
const HOT: u64 = 3;
const MINUTES: i64 = 20;
const TOKEN: &str = "page-secret";

/// (text, the nodes that run it, calls per minute, duration ms). Chosen so
/// that the order by calls and the order by p95 differ. The last one is
/// what an agent with `[export] query_text = "fingerprint"` sends instead
/// of the text, and no other node sends its text.
const STATEMENTS: [(&str, &[&str], u64, u64); 6] = [
    ("SELECT id, note FROM orders WHERE note LIKE $1", &["n1"], 6, 450),
    ("SELECT v FROM events WHERE k = $1 AND v = $2", &["n1", "n2", "n3"], 240, 2),
    ("INSERT INTO events (k, v) VALUES ($1, $2)", &["n1", "n2", "n3"], 120, 1),
    ("UPDATE accounts SET v = v + $1 WHERE id = $2", &["n2", "n3"], 30, 8),
    ("SELECT date_trunc($1, created_at), count(*) FROM orders GROUP BY 1", &["n3"], 1, 900),
    ("/* querywatch withheld fingerprint=00000000000000ab method=parsed read_only=true */", &["n3"], 20, 15),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser test needs, or why it cannot run.
fn browser_tools() -> Result<PathBuf, String> {
    if !Path::new(CHROMIUM).is_file() {
        return Err(format!("{CHROMIUM} not found"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node not found".into());
    }
    let modules = repo().join("target/node/node_modules");
    if !modules.join("playwright-core/package.json").is_file() {
        return Err(format!("playwright-core not found under {}", modules.display()));
    }
    Ok(modules)
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// One node's agent batch for the minute ending at `end_ms`: what the agent
/// would send after tailing the log and reading pg_stat_user_tables.
fn batch(node: &str, minute: i64, end_ms: i64) -> Observations {
    let mut obs = Observations::default();
    for (i, (text, on, per_minute, ms)) in STATEMENTS.iter().enumerate() {
        if !on.contains(&node) {
            continue;
        }
        // A wave over the minutes, different per statement, so the
        // sparklines have a shape.
        let wave = [0, 2, 4, 5, 4, 2, 0, 1][usize::try_from(minute).unwrap().wrapping_add(i * 3) % 8];
        let calls = per_minute + per_minute * wave / 8;
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: (*text).into() };
        let s = obs.statements.entry(key).or_default();
        for c in 0..calls {
            // Spread durations over ±50% so p50, p95 and p99 differ.
            let d = Duration::from_micros(ms * 1000 / 2 + ms * 1000 * (c % 10) / 10);
            s.record_call(d, Some(end_ms - 1000), text);
        }
    }
    for p in 0..PARTITIONS {
        let scans = if node == "n2" && p == HOT { 900 } else { 15 };
        let key = TableKey {
            database: "shop".into(),
            relation: format!("public.events_p{p}"),
            parent: "public.events".into(),
        };
        obs.db.tables.insert(key, TableDelta { idx_scan: scans, n_tup_ins: scans / 3, ..TableDelta::default() });
    }
    obs
}

/// Twenty minutes of three agents, sent over OTLP/gRPC as agents do.
fn send_history(grpc: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let endpoint = format!("http://{grpc}");
        let mut metrics = MetricsServiceClient::connect(endpoint.clone()).await.unwrap();
        let mut logs = LogsServiceClient::connect(endpoint).await.unwrap();
        let now = now_ms();
        for minute in (0..MINUTES).rev() {
            let end = now - minute * 60_000;
            for node in NODES {
                let obs = batch(node, minute, end);
                let resource = ResourceInfo {
                    node: node.into(),
                    cluster: "shop".into(),
                    host_name: format!("db-{node}"),
                    ..ResourceInfo::default()
                };
                let end_ns = u64::try_from(end).unwrap() * 1_000_000;
                let interval = (end_ns - 60_000_000_000, end_ns);
                metrics.export(encode_metrics(&obs, &resource, interval)).await.unwrap();
                logs.export(encode_logs(&obs, &resource, interval)).await.unwrap();
            }
        }
    });
}

/// A second collector, with `[http] token` set; returns it with its API address.
fn start_collector_with_token(dir: &Path) -> (Proc, String) {
    let config = format!(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    );
    let (proc, _, api) = start_collector_with(dir, "collector-token", &config);
    (proc, api)
}

fn findings(api: &str) -> Vec<Value> {
    let (status, body) = http_get(api, "/api/v1/findings");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["findings"].as_array().cloned().unwrap_or_default()
}

#[test]
fn the_web_page_shows_findings_sorts_statements_and_marks_the_hot_partition() {
    let test = "the_web_page_shows_findings_sorts_statements_and_marks_the_hot_partition";
    let modules = match browser_tools() {
        Ok(m) => m,
        Err(why) => {
            let why = format!("{why}: run scripts/deps.sh (as root it installs chromium and playwright-core)");
            crate::support::missing_tool(test, &why);
            return;
        }
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (_collector, grpc, api) = start_collector(dir.path(), "");
    send_history(&grpc);

    // Detection runs every second ([detect] interval = "1s").
    let subject = format!("partition:n2/shop/public.events_p{HOT}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let list = findings(&api);
        let has = |k: &str| list.iter().any(|f| f["kind"] == k);
        if has("hot_partition") && has("top_consumer") {
            break list;
        }
        let log = std::fs::read_to_string(dir.path().join("collector.stderr")).unwrap_or_default();
        assert!(Instant::now() < deadline, "no hot partition and top consumer within 60s: {list:?}\n{log}");
        thread::sleep(Duration::from_millis(250));
    };
    let hot: Vec<&Value> = list.iter().filter(|f| f["kind"] == "hot_partition").collect();
    assert_eq!(hot.len(), 1, "{list:?}");
    assert_eq!(hot[0]["subject"], subject.as_str());

    // The sparklines' data: `series=1`, one bucket a minute, adding up to the row.
    let (status, body) = http_get(&api, "/api/v1/queries?range=1h&series=1");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let rows = answer["queries"].as_array().unwrap();
    assert_eq!(rows.len(), STATEMENTS.len(), "{body}");
    for q in rows {
        let series = q["series"].as_array().unwrap();
        assert_eq!(series.len(), usize::try_from(MINUTES).unwrap(), "one bucket per minute sent: {q}");
        let calls: u64 = series.iter().map(|b| b["calls"].as_u64().unwrap()).sum();
        assert_eq!(calls, q["calls"].as_u64().unwrap(), "{q}");
        assert!(series.iter().all(|b| b["seconds"] == 60 && b["p95_ms"].as_f64().unwrap() > 0.0), "{q}");
    }
    let (status, body) = http_get(&api, "/api/v1/queries?series=1&limit=101");
    assert!(status == 400 && body.contains("limit=100"), "{status} {body}");
    let (_, body) = http_get(&api, "/api/v1/queries");
    assert!(!body.contains("\"series\""), "no series unless asked for");

    let (_guarded, guarded_api) = start_collector_with_token(dir.path());

    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(repo().join("tests/it/web_page.mjs"))
        .env("QW_URL", format!("http://{api}/"))
        .env("QW_NODE_MODULES", &modules)
        .env("QW_CHROMIUM", CHROMIUM)
        .env("QW_PROFILE", dir.path().join("chromium-profile"))
        .env("QW_SCREENSHOT", &screenshot)
        .env("QW_HOT_SUBJECT", &subject)
        .env("QW_HOT_NODE", "n2")
        .env("QW_HOT_RELATION", format!("public.events_p{HOT}"))
        .env("QW_STATEMENTS", STATEMENTS.len().to_string())
        .env("QW_TOKEN_URL", format!("http://{guarded_api}/"))
        .env("QW_TOKEN", TOKEN)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", out.status);
    eprint!("{stdout}");
    assert!(screenshot.is_file(), "no screenshot at {}", screenshot.display());
    eprintln!("{test}: screenshot {} ({:.1?} in all)", screenshot.display(), started.elapsed());
}
