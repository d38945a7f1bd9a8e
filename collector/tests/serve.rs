//! The running collector over real sockets: two nodes send over OTLP/HTTP;
//! the JSON API lists, sorts, filters and details what they sent; errors
//! say what to fix; the API token guards `/api/v1/*` and not `/metrics`;
//! `/metrics` carries the per-fingerprint series, the table series and the
//! collector's own health; a detection pass opens findings.
#![allow(clippy::unwrap_used)]

use prost::Message;
use querywatch_collector::config::{Config, Overrides, RawConfig};
use querywatch_collector::serve::{self, Running};
use querywatch_wire::dbstats::{TableDelta, TableKey};
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime};

const TOKEN: &str = "api-secret";
const FAST: &str = "SELECT name FROM items WHERE id = $1";
const SLOW: &str = "SELECT count(*) FROM orders WHERE note LIKE $1";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn start() -> Running {
    let raw: RawConfig = toml::from_str(&format!(
        "[receive]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\
         [detect]\ninterval = \"1h\"\n"
    ))
    .unwrap();
    serve::start(Config::resolve(raw, &Overrides::default()).unwrap()).await.unwrap()
}

/// `calls` executions of `text` taking `ms` each, and one partition's
/// scans, as the agent sends them: metrics, and logs (the slowest samples).
fn batch(node: &str, stmts: &[(&str, u64, u64)], scans: u64) -> (Vec<u8>, Vec<u8>) {
    let now = now_ms();
    let mut obs = Observations::default();
    for (text, calls, ms) in stmts {
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: (*text).into() };
        let s = obs.statements.entry(key).or_default();
        for _ in 0..*calls {
            s.record_call(Duration::from_millis(*ms), Some(now), text);
        }
    }
    let tk = TableKey { database: "shop".into(), relation: "public.orders_p1".into(), parent: "public.orders".into() };
    obs.db.tables.insert(tk, TableDelta { seq_scan: scans, ..TableDelta::default() });
    // The agent's own health travels in the same batch.
    obs.agent.spool_bytes = Some(4096);
    obs.agent.export_retries = 2;
    obs.input.forgotten_sessions = 3;
    let resource = ResourceInfo { node: node.into(), ..ResourceInfo::default() };
    let end = u64::try_from(now).unwrap() * 1_000_000;
    let interval = (end - 10_000_000_000, end);
    (encode_metrics(&obs, &resource, interval).encode_to_vec(), encode_logs(&obs, &resource, interval).encode_to_vec())
}

async fn get(client: &reqwest::Client, running: &Running, path: &str, token: bool) -> (u16, String) {
    let mut req = client.get(format!("http://{}{path}", running.api));
    if token {
        req = req.bearer_auth(TOKEN);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn json(client: &reqwest::Client, running: &Running, path: &str) -> Value {
    let (status, body) = get(client, running, path, true).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_show_what_two_nodes_sent() {
    let running = start().await;
    let client = reqwest::Client::new();
    let otlp = format!("http://{}/v1", running.otlp_http.unwrap());
    for (node, (metrics, logs)) in
        [("n1", batch("n1", &[(FAST, 100, 1), (SLOW, 5, 200)], 10)), ("n2", batch("n2", &[(FAST, 50, 2)], 20))]
    {
        for (signal, body) in [("metrics", metrics), ("logs", logs)] {
            let resp = client
                .post(format!("{otlp}/{signal}"))
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{node} {signal}");
        }
    }

    // Ingest is asynchronous (a queue): wait until both batches are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let v = json(&client, &running, "/api/v1/queries").await;
        if v["queries"].as_array().unwrap().len() == 2 && v["queries"][1]["calls"] == 150 {
            break v;
        }
        assert!(Instant::now() < deadline, "the batches never showed up: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Sorted by database time: the slow one first.
    let q = &list["queries"];
    assert_eq!(q[0]["text"], SLOW);
    assert_eq!((q[0]["calls"].as_u64(), q[0]["p50_ms"].as_f64()), (Some(5), Some(200.0)));
    assert_eq!(q[1]["nodes"], serde_json::json!(["n1", "n2"]));
    let fast_fp = q[1]["fingerprint"].as_str().unwrap().to_owned();

    let by_calls = json(&client, &running, "/api/v1/queries?sort=calls&limit=1").await;
    assert_eq!(by_calls["queries"][0]["text"], FAST);
    assert_eq!(by_calls["found"], 2);
    let asc = json(&client, &running, "/api/v1/queries?sort=calls&order=asc").await;
    assert_eq!(asc["queries"][0]["text"], SLOW);
    let n2 = json(&client, &running, "/api/v1/queries?node=n2").await;
    assert_eq!(n2["queries"].as_array().unwrap().len(), 1);
    assert_eq!(n2["queries"][0]["calls"], 50);
    let other_db = json(&client, &running, "/api/v1/queries?database=nope").await;
    assert_eq!(other_db["found"], 0);

    let detail = json(&client, &running, &format!("/api/v1/queries/{fast_fp}?range=1h")).await;
    assert_eq!(detail["query"]["calls"], 150);
    assert_eq!(detail["per_node"].as_array().unwrap().len(), 2);
    assert_eq!(detail["series"].as_array().unwrap().len(), 1, "one minute bucket");
    assert_eq!(detail["series"][0]["nodes"]["n2"]["calls"], 50);
    assert_eq!(detail["slowest"]["duration_ms"].as_f64(), Some(2.0), "the slowest sample, from the logs: {detail}");

    let nodes = json(&client, &running, "/api/v1/nodes").await;
    let names: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2"]);
    let parts = json(&client, &running, "/api/v1/partitions").await;
    assert_eq!(parts["parents"].as_array().unwrap().len(), 2, "one parent per node");

    // Errors say what to do.
    for (path, status, says) in [
        ("/api/v1/queries?sort=speed", 400, "use one of"),
        ("/api/v1/queries?range=yesterday", 400, "15m"),
        // Extreme times are clamped, not overflowed (a panic before).
        ("/api/v1/nodes?to=-9223372036854775808&range=1h", 400, "before"),
        ("/api/v1/queries?from=1", 200, "queries"),
        ("/api/v1/queries?from=soon", 400, "ms since the epoch"),
        ("/api/v1/queries?from=-9223372036854775808&to=-9223372036854775807", 400, "before"),
        ("/api/v1/nodes?from=-9223372036854775808&to=9223372036854775807", 200, "nodes"),
        ("/api/v1/queries/xyz", 400, "16 hex digits"),
        ("/api/v1/queries/00000000000000ff", 404, "not known"),
        ("/api/v1/findings?state=maybe", 400, "open, resolved or all"),
        ("/api/v2/anything", 404, "README"),
    ] {
        let (got, body) = get(&client, &running, path, true).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // The token guards the API, not /metrics or the probes.
    assert_eq!(get(&client, &running, "/api/v1/queries", false).await.0, 401);
    assert_eq!(get(&client, &running, "/healthz", false).await.0, 200);
    assert_eq!(get(&client, &running, "/readyz", false).await.0, 200);
    let (status, metrics) = get(&client, &running, "/metrics", false).await;
    assert_eq!(status, 200);
    let line = |prefix: &str| metrics.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
    let calls = line(&format!("querywatch_query_calls_total{{fingerprint=\"{fast_fp}\",node=\"n1\"}}")).unwrap();
    assert!(calls.ends_with(" 100"), "{calls}");
    let inf =
        format!("querywatch_query_duration_seconds_bucket{{fingerprint=\"{fast_fp}\",node=\"n2\",le=\"+Inf\"}} 50");
    assert!(metrics.contains(&inf), "{metrics}");
    let le =
        format!("querywatch_query_duration_seconds_bucket{{fingerprint=\"{fast_fp}\",node=\"n2\",le=\"0.001\"}} 0");
    assert!(metrics.contains(&le), "2 ms is not under 1 ms");
    assert!(
        line("querywatch_table_seq_scan_total{node=\"n2\",database=\"shop\",relation=\"public.orders_p1\"")
            .unwrap()
            .ends_with(" 20")
    );
    assert!(metrics.contains("querywatch_collector_ingest_data_points_total{result=\"accepted\"}"));
    assert!(line("querywatch_collector_store_fingerprints ").unwrap().ends_with(" 2"));
    // The process's real size, beside the store's estimate and its share
    // of the budget (the default 1024 MiB, 40%).
    let rss: f64 = line("process_resident_memory_bytes ").unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(rss > 1e6 && rss < 4e9, "{rss}");
    assert!(
        line("querywatch_collector_store_bytes_limit ").unwrap().ends_with(&format!(" {}", (1024u64 << 20) / 100 * 40))
    );
    assert!(metrics.contains("querywatch_agent_spool_bytes{node=\"n1\"} 4096"), "{metrics}");
    assert!(metrics.contains("querywatch_agent_export_retries_total{node=\"n2\"} 2"));
    assert!(line("querywatch_agent_sessions_forgotten_total{node=\"n1\"}").unwrap().contains("} 3"), "{metrics}");

    // A detection pass (normally every [detect] interval): the slow
    // statement takes most of the time, so it is a top consumer.
    serve::detect_pass(&running.shared, now_ms());
    let f = json(&client, &running, "/api/v1/findings").await;
    let kinds: Vec<&str> = f["findings"].as_array().unwrap().iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"top_consumer"), "{f}");
    let (_, metrics) = get(&client, &running, "/metrics", false).await;
    assert!(metrics.contains("querywatch_finding{") && metrics.contains("kind=\"top_consumer\""), "{metrics}");
    assert!(metrics.contains("querywatch_partition_load_share{node=\"n1\""));
    let page = get(&client, &running, "/", false).await;
    assert!(page.0 == 200 && page.1.contains("<title>querywatch</title>"));
    running.stop().await;
}
