//! `collector/openapi.json` against the running collector: every route of
//! the API's router (`collector/src/api.rs`) is in the document and the
//! document lists no other, and live answers of every JSON endpoint — with
//! data in them: statements, a partitioned table, a node, a finding — match
//! the schema the document gives for that status, checked by the Python
//! `jsonschema` package (`tests/it/openapi_check.py`; the venv
//! `scripts/deps.sh` creates). The schemas forbid fields they do not name,
//! so an answer that gains or loses a field fails here until the document
//! says so.
#![allow(clippy::unwrap_used)]

use crate::collector_e2e::{http_get, start_collector};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use querywatch_wire::dbstats::{TableDelta, TableKey};
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One node's batch: two statements (one slow enough to be the top
/// consumer) and a partitioned table's deltas.
fn send(grpc: &str) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let end_ms = i64::try_from(now.as_millis()).unwrap();
    let mut obs = Observations::default();
    for (text, calls, ms) in
        [("SELECT id FROM orders WHERE note LIKE $1", 20, 400), ("UPDATE accounts SET v = v + $1 WHERE id = $2", 50, 2)]
    {
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.into() };
        let s = obs.statements.entry(key).or_default();
        for _ in 0..calls {
            s.record_call(Duration::from_millis(ms), Some(end_ms - 1_000), text);
        }
    }
    for p in 0..4 {
        let key = TableKey {
            database: "shop".into(),
            relation: format!("public.events_p{p}"),
            parent: "public.events".into(),
        };
        obs.db.tables.insert(key, TableDelta { idx_scan: 10 + p * 100, n_tup_ins: 5, ..TableDelta::default() });
    }
    let resource = ResourceInfo { node: "n1".into(), cluster: "shop".into(), ..ResourceInfo::default() };
    let end_ns = u64::try_from(now.as_nanos()).unwrap();
    let interval = (end_ns - 10_000_000_000, end_ns);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut metrics = MetricsServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        metrics.export(encode_metrics(&obs, &resource, interval)).await.unwrap();
        // The slowest samples travel as log records.
        let mut logs = LogsServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        logs.export(encode_logs(&obs, &resource, interval)).await.unwrap();
    });
}

/// The schema reference the document gives for `path`'s answer `status`.
fn schema_ref(spec: &Value, path: &str, status: &str) -> String {
    let r = &spec["paths"][path]["get"]["responses"][status];
    let r = match r["$ref"].as_str() {
        // A shared response: `#/components/responses/<name>`.
        Some(shared) => &spec["components"]["responses"][shared.rsplit('/').next().unwrap()],
        None => r,
    };
    r["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON schema for {path} {status}"))
        .to_owned()
}

/// What checking an answer needs.
struct Ctx {
    python: PathBuf,
    dir: PathBuf,
    spec: Value,
    api: String,
}

impl Ctx {
    /// GETs `url` (an instance of the document's `path`), expects `status`,
    /// and validates the answer against the schema the document gives.
    fn check(&self, path: &str, url: &str, status: u16) -> Value {
        let (got, body) = http_get(&self.api, url);
        assert_eq!(got, status, "GET {url}: {body}");
        let file = self.dir.join("answer.json");
        std::fs::write(&file, &body).unwrap();
        let reference = schema_ref(&self.spec, path, &status.to_string());
        let out = Command::new(&self.python)
            .arg(repo().join("tests/it/openapi_check.py"))
            .arg(repo().join("collector/openapi.json"))
            .arg(&reference)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "GET {url} ({status}) does not match {reference}:\n{}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&body).unwrap()
    }
}

#[test]
fn the_openapi_document_lists_every_route_and_matches_live_answers() {
    let test = "the_openapi_document_lists_every_route_and_matches_live_answers";
    let Some(python) = crate::support::venv_bin(test, "python") else { return };
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("collector/openapi.json")).unwrap()).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));

    // Routes: the router's, and the document's.
    let api_rs = std::fs::read_to_string(repo().join("collector/src/api.rs")).unwrap();
    let routes: BTreeSet<&str> = api_rs.split(".route(\"").skip(1).map(|r| r.split('"').next().unwrap()).collect();
    let documented: BTreeSet<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(routes.len() >= 9, "{routes:?}");
    assert_eq!(routes, documented, "routes of collector/src/api.rs vs paths of collector/openapi.json");

    let dir = tempfile::tempdir().unwrap();
    let (_collector, grpc, api) = start_collector(dir.path(), "");
    send(&grpc);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (fingerprint, _) = loop {
        let (_, body) = http_get(&api, "/api/v1/findings");
        let f: Value = serde_json::from_str(&body).unwrap();
        let top = f["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "top_consumer").cloned();
        if let Some(top) = top {
            let fp = top["subject"].as_str().unwrap().trim_start_matches("fingerprint:").to_owned();
            break (fp, top);
        }
        assert!(Instant::now() < deadline, "no top_consumer finding within 60 s: {body}");
        thread::sleep(Duration::from_millis(200));
    };

    let c = Ctx { python, dir: dir.path().to_owned(), spec, api };
    let q = c.check("/api/v1/queries", "/api/v1/queries", 200);
    assert_eq!(q["queries"].as_array().unwrap().len(), 2, "{q}");
    let q = c.check("/api/v1/queries", "/api/v1/queries?range=1h&series=1&sort=p95&order=asc", 200);
    assert!(q["queries"][0]["series"].as_array().is_some_and(|s| !s.is_empty()), "{q}");
    c.check("/api/v1/queries", "/api/v1/queries?sort=bogus", 400);
    let one = "/api/v1/queries/{fingerprint}";
    let detail = c.check(one, &format!("/api/v1/queries/{fingerprint}?range=1h"), 200);
    let kinds: Vec<&str> = detail["findings"].as_array().unwrap().iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(kinds.contains(&"top_consumer"), "its finding is listed: {detail}");
    assert!(detail["slowest"].is_object(), "{detail}");
    assert_eq!(detail["query"]["databases"], serde_json::json!(["shop"]), "{detail}");
    assert_eq!(detail["per_node"][0]["databases"], serde_json::json!(["shop"]), "{detail}");
    c.check(one, "/api/v1/queries/00000000000000ff", 404);
    c.check(one, "/api/v1/queries/xyz", 400);
    // What the document's pattern takes, the handler takes, and no more.
    let upper = c.check(one, &format!("/api/v1/queries/{}?range=1h", fingerprint.to_uppercase()), 200);
    assert_eq!(upper["query"]["fingerprint"], detail["query"]["fingerprint"], "{upper}");
    c.check(one, "/api/v1/queries/+ff", 400);
    let f = c.check("/api/v1/findings", "/api/v1/findings?state=all", 200);
    assert!(!f["findings"].as_array().unwrap().is_empty());
    c.check("/api/v1/findings", "/api/v1/findings?state=maybe", 400);
    let p = c.check("/api/v1/partitions", "/api/v1/partitions?range=1h", 200);
    assert_eq!(p["parents"][0]["partitions"].as_array().unwrap().len(), 4, "{p}");
    c.check("/api/v1/partitions", "/api/v1/partitions?range=soon", 400);
    let n = c.check("/api/v1/nodes", "/api/v1/nodes", 200);
    assert_eq!(n["nodes"][0]["node"], "n1", "{n}");
    let (status, served) = http_get(&c.api, "/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&served).unwrap(), c.spec, "the collector serves this very document");
}
