//! `[forward]`: a `querywatch collector` pushes its own metrics over
//! OTLP/HTTP to a plain HTTP sink in this test, and the official Python
//! `opentelemetry-proto` package (the venv `scripts/deps.sh` creates at
//! `target/pyenv`), a decoder querywatch did not write, parses what
//! arrived. The pushed series must be `/metrics`' own: the statement an
//! agent sent shows up with the same calls and a histogram whose buckets
//! add up. The sink refuses a point of each push (an OTLP partial
//! success), which is counted and said once with its reason. A second
//! collector pushes to a closed port: it counts the failures, says so
//! once, and keeps serving.
#![allow(clippy::unwrap_used)]

use crate::collector_e2e::{http_get, start_collector};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse};
use prost::Message;
use querywatch_wire::otlp::{ResourceInfo, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

const TOKEN: &str = "fwd-secret";
const REFUSAL: &str = "this sink keeps no exemplars";
const CALLS: u64 = 5;

/// One request the sink received: path, headers (lower-case names), body.
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Serves one keep-alive connection: every request is answered 200 with
/// `answer` as its protobuf body and handed to `tx`.
fn serve(stream: TcpStream, answer: &[u8], tx: &mpsc::Sender<Received>) {
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        let sent = out.write_all(head.as_bytes()).and_then(|()| out.write_all(answer));
        if sent.is_err() || tx.send(Received { path, headers, body }).is_err() {
            return;
        }
    }
}

/// An OTLP/HTTP sink on a free port that answers every push with a
/// partial success refusing one data point: its address and what it
/// receives.
fn sink() -> (String, mpsc::Receiver<Received>) {
    let answer = ExportMetricsServiceResponse {
        partial_success: Some(ExportMetricsPartialSuccess {
            rejected_data_points: 1,
            error_message: REFUSAL.to_owned(),
        }),
    }
    .encode_to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (tx, answer) = (tx.clone(), answer.clone());
            thread::spawn(move || serve(stream, &answer, &tx));
        }
    });
    (addr, rx)
}

/// The Python package's reading of an `ExportMetricsServiceRequest`.
fn decode(python: &Path, dir: &Path, body: &[u8]) -> Value {
    let file = dir.join("pushed.pb");
    std::fs::write(&file, body).unwrap();
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("wire/tests/decode_otlp.py"))
        .arg("metrics")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "decode_otlp.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

/// One agent batch: a statement with [`CALLS`] calls, over gRPC.
fn send_statement(grpc: &str) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    let end_ms = i64::try_from(now.as_millis()).unwrap();
    let mut obs = Observations::default();
    let text = "SELECT total FROM invoices WHERE customer_id = $1";
    let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.into() };
    let s = obs.statements.entry(key).or_default();
    for ms in 1..=CALLS {
        s.record_call(Duration::from_millis(ms * 3), Some(end_ms - 1_000), text);
    }
    let resource = ResourceInfo { node: "n1".into(), ..ResourceInfo::default() };
    let end_ns = u64::try_from(now.as_nanos()).unwrap();
    let request = encode_metrics(&obs, &resource, (end_ns - 10_000_000_000, end_ns));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = MetricsServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        client.export(request).await.unwrap();
    });
}

/// The value of the first `/metrics` sample whose line starts with `prefix`.
fn metric_value(api: &str, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(api, "/metrics");
    body.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn attr<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"].as_array()?.iter().find(|kv| kv[0] == key)?[1]["string"].as_str()
}

fn double(v: &Value) -> f64 {
    f64::from_bits(v["double"].as_u64().unwrap())
}

#[test]
fn forward_pushes_the_metrics_endpoint_over_otlp_http() {
    let test = "forward_pushes_the_metrics_endpoint_over_otlp_http";
    let Some(python) = crate::support::venv_bin(test, "python") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (sink_addr, received) = sink();
    let config = format!("[forward]\nendpoint = \"http://{sink_addr}\"\ninterval = \"1s\"\ntoken = \"{TOKEN}\"\n");
    let (_collector, grpc, api) = start_collector(dir.path(), &config);

    // A port nothing listens on: the second collector's pushes all fail.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let broken_dir = tempfile::tempdir().unwrap();
    let broken_config = format!("[forward]\nendpoint = \"http://{closed}/v1/metrics\"\ninterval = \"1s\"\n");
    let (_broken, _, broken_api) = start_collector(broken_dir.path(), &broken_config);

    send_statement(&grpc);
    let deadline = Instant::now() + Duration::from_secs(60);
    let fingerprint = loop {
        let (_, body) = http_get(&api, "/metrics");
        let line =
            body.lines().find(|l| l.starts_with("querywatch_query_calls_total{") && l.ends_with(&format!(" {CALLS}")));
        if let Some(l) = line {
            break l.split("fingerprint=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the statement never reached /metrics:\n{body}");
        thread::sleep(Duration::from_millis(100));
    };

    // Pushes arrive every second; wait for one that carries the statement.
    let (push, decoded) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let push = received.recv_timeout(left).expect("no push with the statement within 60 s");
        let body = if push.header("content-encoding") == Some("gzip") { gunzip(&push.body) } else { push.body.clone() };
        let decoded = decode(&python, dir.path(), &body);
        let has = decoded.to_string().contains(&fingerprint);
        if has {
            break (push, decoded);
        }
    };
    assert_eq!(push.path, "/v1/metrics", "the base URL gets OTLP's path");
    assert_eq!(push.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(push.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(push.header("content-encoding"), Some("gzip"), "gzip by default");

    let rm = &decoded["resource_metrics"][0];
    let resource = &rm["resource"];
    assert!(resource.to_string().contains("querywatch-collector"), "{resource}");
    let metrics = rm["scopes"][0]["metrics"].as_array().unwrap();
    let by_name = |n: &str| metrics.iter().find(|m| m["name"] == n).unwrap_or_else(|| panic!("no {n} in the push"));

    let calls = by_name("querywatch_query_calls");
    assert_eq!((calls["kind"].as_str(), calls["monotonic"].as_bool()), (Some("sum"), Some(true)));
    assert_eq!(calls["temporality"], "AGGREGATION_TEMPORALITY_CUMULATIVE");
    let point =
        calls["points"].as_array().unwrap().iter().find(|p| attr(p, "fingerprint") == Some(&fingerprint)).unwrap();
    assert_eq!(attr(point, "node"), Some("n1"));
    #[allow(clippy::cast_precision_loss)]
    let want = CALLS as f64;
    assert!((double(&point["value"]) - want).abs() < f64::EPSILON, "{point}");
    assert!(
        point["start"].as_u64().unwrap() < point["time"].as_u64().unwrap(),
        "cumulative since the collector started"
    );

    let hist = by_name("querywatch_query_duration_seconds");
    assert_eq!(hist["kind"], "histogram");
    let p = hist["points"].as_array().unwrap().iter().find(|p| attr(p, "fingerprint") == Some(&fingerprint)).unwrap();
    let counts: Vec<u64> = p["bucket_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    let bounds = p["explicit_bounds"].as_array().unwrap().len();
    assert_eq!(counts.len(), bounds + 1, "one count per bound and one above them: {p}");
    assert_eq!((counts.iter().sum::<u64>(), p["count"].as_u64()), (CALLS, Some(CALLS)), "{p}");
    assert!(p["attributes"].as_array().unwrap().iter().all(|kv| kv[0] != "le"), "{p}");
    let sum = f64::from_bits(p["sum"].as_u64().unwrap());
    assert!((sum - 0.045).abs() < 1e-6, "3 + 6 + 9 + 12 + 15 ms: {sum}");

    assert_eq!(by_name("querywatch_collector_ingest_duration_seconds")["kind"], "summary");
    assert_eq!(by_name("querywatch_collector_nodes")["kind"], "gauge");

    // Every pushed metric is a family of /metrics (counters without `_total`).
    let (_, text) = http_get(&api, "/metrics");
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            if kind == "counter" { name.trim_end_matches("_total").to_owned() } else { name.to_owned() }
        })
        .collect();
    let pushed: BTreeSet<String> = metrics.iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
    let unknown: Vec<_> = pushed.difference(&families).collect();
    assert!(unknown.is_empty(), "pushed but not in /metrics: {unknown:?}");
    assert!(pushed.len() > 30, "{pushed:?}");
    let ok = metric_value(&api, "querywatch_collector_forward_requests_total{result=\"ok\"}").unwrap();
    assert!(ok >= 1.0, "{ok}");

    // The sink refuses one point of every push: counted per push, said once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&api, "querywatch_collector_forward_data_points_total{result=\"rejected\"}").unwrap_or(0.0) < 2.0
    {
        assert!(Instant::now() < deadline, "the sink's refusals were not counted");
        thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(dir.path().join("collector.stderr")).unwrap();
    assert_eq!(log.matches(REFUSAL).count(), 1, "the refusal and its reason are said once:\n{log}");
    assert!(log.contains("refused 1 of"), "{log}");

    // The unreachable endpoint: failures counted, said once, serving on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_value(&broken_api, "querywatch_collector_forward_requests_total{result=\"failed\"}").unwrap_or(0.0)
        < 2.0
    {
        assert!(Instant::now() < deadline, "the closed port's pushes were not counted as failed");
        thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(broken_dir.path().join("collector.stderr")).unwrap();
    assert_eq!(log.matches("forwarding metrics to").count(), 1, "said once:\n{log}");
    assert!(log.contains(&closed.to_string()), "{log}");
    assert_eq!(http_get(&broken_api, "/healthz").0, 200);
}
