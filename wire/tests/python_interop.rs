//! Interop with a decoder querywatch did not write: the official Python
//! `opentelemetry-proto` package (in the venv `scripts/deps.sh` creates at
//! `target/pyenv`) reads our OTLP bytes, and we read bytes it wrote.
//!
//! The comparison is field by field: `decode_otlp.py` prints every field of
//! what it parsed as JSON, this file builds the same JSON from the Rust
//! request, and the two must be equal; on top, known answers check that the
//! Python side saw the values the contract promises (names, attributes,
//! count/sum/min/max, scale, temporality, event names).
#![allow(clippy::unwrap_used)]

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, Metric, NumberDataPoint, metric::Data, number_data_point,
};
use prost::Message;
use querywatch_wire::observations::{LockKey, LockStats};
use querywatch_wire::otlp::{
    self, ExportLogsServiceRequest, ExportMetricsServiceRequest, ResourceInfo, decode_logs, decode_metrics,
};
use querywatch_wire::stats::PlanSample;
use querywatch_wire::{Observations, StatementKey};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
const T0: i64 = 1_700_000_001_000;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/deps.sh, which creates the venv with the Python opentelemetry-proto package",
        p.display()
    );
    p
}

fn script(command: &str, file: &Path) -> String {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/decode_otlp.py"))
        .arg(command)
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "decode_otlp.py {command} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn key(text: &str) -> StatementKey {
    StatementKey { database: "shop".into(), user: "app".into(), text: text.into() }
}

fn resource() -> ResourceInfo {
    ResourceInfo {
        service_version: "0.1.0".into(),
        service_instance_id: "agent-1".into(),
        host_name: "db-1.example".into(),
        server_address: "10.0.0.5".into(),
        server_port: Some(5432),
        node: "db-1".into(),
        cluster: "shop-eu".into(),
        extra: vec![KeyValue {
            key: "deployment.environment.name".into(),
            value: Some(AnyValue { value: Some(Any::StringValue("ci".into())) }),
            key_strindex: 0,
        }],
    }
}

fn observations() -> Observations {
    let mut obs = Observations::default();
    let text = "SELECT * FROM orders WHERE customer_id = $1";
    let s = obs.statements.entry(key(text)).or_default();
    for (i, us) in [1_000u64, 2_000, 3_000, 250_000].into_iter().enumerate() {
        s.record_call(Duration::from_micros(us), Some(T0 + i as i64), text);
    }
    s.record_error("57014", "canceling statement due to statement timeout", Some(T0));
    s.record_temp_file(8192, Some(T0));
    s.record_plan(PlanSample {
        duration: Duration::from_millis(250),
        timestamp: Some(T0 + 3),
        format: "text",
        plan: "Seq Scan on orders  (cost=0.00..1.00 rows=1 width=8)\n  Filter: (customer_id = $1)".into(),
    });
    obs.locks.insert(
        LockKey {
            database: "shop".into(),
            waiter: "UPDATE orders SET state = $1".into(),
            blocker: String::new(),
            mode: "ShareLock".into(),
            object: "transaction".into(),
        },
        LockStats { waits: 1, max_wait: Duration::from_millis(1_200), ..Default::default() },
    );
    obs.classes.insert("duration", 4);
    obs.input.bytes = 4096;
    obs.input.lines = 40;
    // The agent's own health: per-file reads, failures by class, gauges.
    obs.agent.files.insert("postgresql.csv".into(), querywatch_wire::health::FileRead { bytes: 4096, lines: 40 });
    obs.agent.export_retryable_failures = 2;
    obs.agent.export_retries = 2;
    obs.agent.spool_batches = Some(1);
    obs.agent.spool_bytes = Some(2048);
    obs.agent.last_export_unix_s = Some(1_700_000_009);
    obs.agent.poller_reconnects = 1;
    obs
}

// --- The Rust request as the same JSON decode_otlp.py prints ---------------------

fn bits(x: f64) -> Value {
    json!(x.to_bits())
}

fn any(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(Any::StringValue(s)) => json!({ "string": s }),
        Some(Any::IntValue(i)) => json!({ "int": i }),
        Some(Any::DoubleValue(d)) => json!({ "double": bits(*d) }),
        Some(Any::BoolValue(b)) => json!({ "bool": b }),
        Some(other) => panic!("querywatch does not send {other:?}"),
    }
}

fn attributes(a: &[KeyValue]) -> Value {
    a.iter().map(|kv| json!([kv.key, kv.value.as_ref().map_or(Value::Null, any)])).collect()
}

fn scope(s: &Option<InstrumentationScope>) -> Value {
    let s = s.clone().unwrap_or_default();
    json!({ "name": s.name, "version": s.version, "attributes": attributes(&s.attributes) })
}

fn temporality(t: i32) -> &'static str {
    AggregationTemporality::try_from(t).unwrap().as_str_name()
}

fn number_point(p: &NumberDataPoint) -> Value {
    json!({
        "attributes": attributes(&p.attributes),
        "start": p.start_time_unix_nano,
        "time": p.time_unix_nano,
        "flags": p.flags,
        "exemplars": p.exemplars.len(),
        "value": match p.value {
            None => Value::Null,
            Some(number_data_point::Value::AsInt(i)) => json!({ "int": i }),
            Some(number_data_point::Value::AsDouble(d)) => json!({ "double": bits(d) }),
        },
    })
}

fn buckets(b: &Option<Buckets>) -> Value {
    b.as_ref().map_or(Value::Null, |b| json!({ "offset": b.offset, "counts": b.bucket_counts }))
}

fn exp_point(p: &ExponentialHistogramDataPoint) -> Value {
    json!({
        "attributes": attributes(&p.attributes),
        "start": p.start_time_unix_nano,
        "time": p.time_unix_nano,
        "count": p.count,
        "sum": p.sum.map(bits),
        "min": p.min.map(bits),
        "max": p.max.map(bits),
        "scale": p.scale,
        "zero_count": p.zero_count,
        "zero_threshold": bits(p.zero_threshold),
        "positive": buckets(&p.positive),
        "negative": buckets(&p.negative),
        "flags": p.flags,
        "exemplars": p.exemplars.len(),
    })
}

fn metric(m: &Metric) -> Value {
    let mut out = json!({ "name": m.name, "unit": m.unit, "description": m.description });
    let o = out.as_object_mut().unwrap();
    match m.data.as_ref().unwrap() {
        Data::Sum(s) => {
            o.insert("kind".into(), json!("sum"));
            o.insert("temporality".into(), json!(temporality(s.aggregation_temporality)));
            o.insert("monotonic".into(), json!(s.is_monotonic));
            o.insert("points".into(), s.data_points.iter().map(number_point).collect());
        }
        Data::Gauge(g) => {
            o.insert("kind".into(), json!("gauge"));
            o.insert("points".into(), g.data_points.iter().map(number_point).collect());
        }
        Data::ExponentialHistogram(h) => {
            o.insert("kind".into(), json!("exponential_histogram"));
            o.insert("temporality".into(), json!(temporality(h.aggregation_temporality)));
            o.insert("points".into(), h.data_points.iter().map(exp_point).collect());
        }
        other => panic!("querywatch does not send {other:?}"),
    }
    out
}

fn summarize_metrics(req: &ExportMetricsServiceRequest) -> Value {
    let rms: Vec<Value> = req
        .resource_metrics
        .iter()
        .map(|rm| {
            json!({
                "resource": attributes(&rm.resource.as_ref().unwrap().attributes),
                "schema_url": rm.schema_url,
                "scopes": rm.scope_metrics.iter().map(|sm| json!({
                    "scope": scope(&sm.scope),
                    "schema_url": sm.schema_url,
                    "metrics": sm.metrics.iter().map(metric).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "resource_metrics": rms })
}

fn record(r: &LogRecord) -> Value {
    json!({
        "time": r.time_unix_nano,
        "observed_time": r.observed_time_unix_nano,
        "severity_number": r.severity_number,
        "severity_number_name": SeverityNumber::try_from(r.severity_number).unwrap().as_str_name(),
        "severity_text": r.severity_text,
        "body": r.body.as_ref().map_or(Value::Null, any),
        "attributes": attributes(&r.attributes),
        "event_name": r.event_name,
        "flags": r.flags,
        "trace_id": "",
        "span_id": "",
    })
}

fn summarize_logs(req: &ExportLogsServiceRequest) -> Value {
    assert!(
        req.resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|s| &s.log_records)
            .all(|r| r.trace_id.is_empty() && r.span_id.is_empty())
    );
    let rls: Vec<Value> = req
        .resource_logs
        .iter()
        .map(|rl| {
            json!({
                "resource": attributes(&rl.resource.as_ref().unwrap().attributes),
                "schema_url": rl.schema_url,
                "scopes": rl.scope_logs.iter().map(|sl| json!({
                    "scope": scope(&sl.scope),
                    "schema_url": sl.schema_url,
                    "records": sl.log_records.iter().map(record).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "resource_logs": rls })
}

/// Equal JSON, or a panic naming the first path where they differ.
fn assert_same(path: &str, rust: &Value, python: &Value) {
    match (rust, python) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<_> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                assert_same(&format!("{path}.{k}"), x, y);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: {} items in Rust, {} as Python read them", a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(&format!("{path}[{i}]"), x, y);
            }
        }
        _ => assert_eq!(rust, python, "{path}: Rust sent {rust}, Python read {python}"),
    }
}

fn attr<'a>(attrs: &'a Value, key: &str) -> &'a Value {
    attrs.as_array().unwrap().iter().find(|kv| kv[0] == key).map(|kv| &kv[1]).unwrap_or(&Value::Null)
}

fn f64_of(v: &Value) -> f64 {
    f64::from_bits(v.as_u64().unwrap())
}

// --- Tests ----------------------------------------------------------------------

#[test]
fn python_reads_our_metrics_field_by_field() {
    let req = otlp::encode_metrics(&observations(), &resource(), INTERVAL);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), req.encode_to_vec()).unwrap();
    let py: Value = serde_json::from_str(&script("metrics", file.path())).unwrap();
    assert_same("request", &summarize_metrics(&req), &py);

    // Known answers, read from what Python parsed.
    let rm = &py["resource_metrics"][0];
    for (k, v) in [
        ("service.name", json!({"string": "querywatch-agent"})),
        ("service.version", json!({"string": "0.1.0"})),
        ("service.instance.id", json!({"string": "agent-1"})),
        ("host.name", json!({"string": "db-1.example"})),
        ("db.system.name", json!({"string": "postgresql"})),
        ("server.address", json!({"string": "10.0.0.5"})),
        ("server.port", json!({"int": 5432})),
        ("querywatch.node", json!({"string": "db-1"})),
        ("querywatch.cluster", json!({"string": "shop-eu"})),
        ("deployment.environment.name", json!({"string": "ci"})),
    ] {
        assert_eq!(attr(&rm["resource"], k), &v, "resource {k}");
    }
    let metrics = rm["scopes"][0]["metrics"].as_array().unwrap();
    let by_name = |n: &str| metrics.iter().find(|m| m["name"] == n).unwrap_or_else(|| panic!("{n} missing"));
    let d = by_name("querywatch.query.duration");
    assert_eq!((d["kind"].as_str(), d["unit"].as_str()), (Some("exponential_histogram"), Some("s")));
    assert_eq!(d["temporality"], "AGGREGATION_TEMPORALITY_DELTA");
    let p = &d["points"][0];
    for (k, v) in [
        ("db.namespace", "shop"),
        ("querywatch.db.user", "app"),
        ("db.query.text", "SELECT * FROM orders WHERE customer_id = $1"),
        ("db.operation.name", "SELECT"),
        ("querywatch.source", "log"),
    ] {
        assert_eq!(attr(&p["attributes"], k), &json!({ "string": v }), "{k}");
    }
    assert_eq!(p["count"], 4);
    assert_eq!((f64_of(&p["sum"]), f64_of(&p["min"]), f64_of(&p["max"])), (0.256, 0.001, 0.25));
    assert_eq!((p["scale"].as_i64(), p["zero_count"].as_u64()), (Some(8), Some(0)));
    assert_eq!((p["start"].as_u64(), p["time"].as_u64()), (Some(INTERVAL.0), Some(INTERVAL.1)));
    let counts: Vec<u64> = p["positive"]["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 4);
    // Python's view of the buckets, turned back into values, brackets ours.
    let offset = p["positive"]["offset"].as_i64().unwrap();
    let upper = |i: usize| ((offset + i as i64 + 1) as f64 / 256.0).exp2();
    let lower = |i: usize| ((offset + i as i64) as f64 / 256.0).exp2();
    let filled: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
    for (i, want) in filled.iter().zip([0.001, 0.002, 0.003, 0.25]) {
        assert!(lower(*i) * 0.992 < want && want < upper(*i) * 1.008, "bucket {i} vs {want}");
    }
    for (name, kind) in [
        ("querywatch.statement.errors", "sum"),
        ("querywatch.statement.temp_files", "sum"),
        ("querywatch.statement.temp_bytes", "sum"),
        ("querywatch.lock.waits", "sum"),
        ("querywatch.lock.max_wait", "gauge"),
        ("querywatch.log.entries", "sum"),
        ("querywatch.agent.bytes_read", "sum"),
        ("querywatch.agent.lines_read", "sum"),
        ("querywatch.agent.parse_failures", "sum"),
        ("querywatch.agent.overflow", "sum"),
        ("querywatch.agent.file.bytes_read", "sum"),
        ("querywatch.agent.file.lines_read", "sum"),
        ("querywatch.agent.export.failures", "sum"),
        ("querywatch.agent.export.retries", "sum"),
        ("querywatch.agent.spool.dropped_batches", "sum"),
        ("querywatch.agent.spool.dropped_bytes", "sum"),
        ("querywatch.agent.poller.reconnects", "sum"),
        ("querywatch.agent.poller.connect_failures", "sum"),
        ("querywatch.agent.poller.connections_lost", "sum"),
        ("querywatch.agent.poller.poll_failures", "sum"),
        ("querywatch.agent.spool.batches", "gauge"),
        ("querywatch.agent.spool.size", "gauge"),
        ("querywatch.agent.export.last_success", "gauge"),
    ] {
        let m = by_name(name);
        assert_eq!(m["kind"], kind, "{name}");
        if kind == "sum" {
            assert_eq!(
                (m["temporality"].as_str(), m["monotonic"].as_bool()),
                (Some("AGGREGATION_TEMPORALITY_DELTA"), Some(true)),
                "{name}"
            );
        }
    }
    let e = &by_name("querywatch.statement.errors")["points"][0];
    assert_eq!(attr(&e["attributes"], "db.response.status_code"), &json!({"string": "57014"}));
    assert_eq!(e["value"], json!({"int": 1}));
    let w = &by_name("querywatch.lock.max_wait")["points"][0];
    assert_eq!(attr(&w["attributes"], "querywatch.lock.mode"), &json!({"string": "ShareLock"}));
    assert_eq!(f64_of(&w["value"]["double"]), 1.2);
    assert_eq!(by_name("querywatch.agent.bytes_read")["points"][0]["value"], json!({"int": 4096}));
    let f = &by_name("querywatch.agent.file.bytes_read")["points"][0];
    assert_eq!(attr(&f["attributes"], "querywatch.log.file"), &json!({"string": "postgresql.csv"}));
    assert_eq!(f["value"], json!({"int": 4096}));
    let failures = by_name("querywatch.agent.export.failures")["points"].as_array().unwrap();
    let retryable = failures
        .iter()
        .find(|p| attr(&p["attributes"], "querywatch.failure.class") == &json!({"string": "retryable"}))
        .unwrap();
    assert_eq!(retryable["value"], json!({"int": 2}));
    assert_eq!(by_name("querywatch.agent.spool.size")["points"][0]["value"], json!({"int": 2048}));
    assert_eq!(by_name("querywatch.agent.export.last_success")["points"][0]["value"], json!({"int": 1_700_000_009}));
    assert_eq!(by_name("querywatch.agent.poller.reconnects")["points"][0]["value"], json!({"int": 1}));
}

#[test]
fn python_reads_our_logs_field_by_field() {
    let req = otlp::encode_logs(&observations(), &resource(), INTERVAL);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), req.encode_to_vec()).unwrap();
    let py: Value = serde_json::from_str(&script("logs", file.path())).unwrap();
    assert_same("request", &summarize_logs(&req), &py);

    let records = py["resource_logs"][0]["scopes"][0]["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    let s = &records[0];
    assert_eq!(s["event_name"], "querywatch.query.sample");
    assert_eq!(
        (s["severity_number_name"].as_str(), s["severity_text"].as_str()),
        (Some("SEVERITY_NUMBER_INFO"), Some("INFO"))
    );
    assert_eq!(s["time"].as_u64(), Some((T0 as u64 + 3) * 1_000_000), "time of the slowest call");
    assert_eq!(s["observed_time"].as_u64(), Some(INTERVAL.1));
    assert_eq!(s["body"], json!({"string": "SELECT * FROM orders WHERE customer_id = $1"}));
    assert_eq!(f64_of(&attr(&s["attributes"], "querywatch.duration_ms")["double"]), 250.0);
    assert_eq!(attr(&s["attributes"], "querywatch.plan.format"), &json!({"string": "text"}));
    assert!(
        attr(&s["attributes"], "querywatch.plan.text")["string"]
            .as_str()
            .unwrap()
            .contains("Filter: (customer_id = $1)")
    );
    assert_eq!(attr(&s["attributes"], "db.operation.name"), &json!({"string": "SELECT"}));
    let e = &records[1];
    assert_eq!(e["event_name"], "querywatch.query.error");
    assert_eq!(e["severity_number_name"], "SEVERITY_NUMBER_ERROR");
    assert_eq!(attr(&e["attributes"], "db.response.status_code"), &json!({"string": "57014"}));
}

#[test]
fn we_read_what_python_wrote() {
    let file = tempfile::NamedTempFile::new().unwrap();
    script("build-metrics", file.path());
    let req = ExportMetricsServiceRequest::decode(&std::fs::read(file.path()).unwrap()[..]).unwrap();
    let d = decode_metrics(&req).unwrap();
    assert_eq!(d.ignored, 3, "another service's gauge point and two http histogram points");
    assert_eq!(d.batches.len(), 1);
    let (res, obs) = &d.batches[0];
    assert_eq!((res.node.as_str(), res.server_port), ("py-node", Some(5433)));
    assert_eq!(res.extra.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), ["py.extra"]);
    let s = &obs.statements[&key("SELECT * FROM t WHERE id = $1")];
    assert_eq!(
        (s.calls, s.total, s.min, s.max),
        (100, Duration::from_millis(5050), Some(Duration::from_millis(1)), Duration::from_millis(100))
    );
    assert_eq!(s.hist.count(), 100);
    assert_eq!(s.errors["23505"].count, 3);
    // Python wrote scale 3: buckets 9% wide, representative within ~4.3% of
    // any value in its bucket, plus HDR's 0.78%.
    let values: Vec<f64> = (1..=100).map(f64::from).collect(); // ms
    for q in [0.5, 0.95, 0.99] {
        let exact = values[((q * 100.0_f64).ceil() as usize).clamp(1, 100) - 1];
        let got = s.hist.quantile(q).as_secs_f64() * 1e3;
        assert!((got - exact).abs() <= exact * 0.052, "q={q}: exact {exact} ms, got {got} ms");
    }

    script("build-logs", file.path());
    let req = ExportLogsServiceRequest::decode(&std::fs::read(file.path()).unwrap()[..]).unwrap();
    let d = decode_logs(&req).unwrap();
    assert_eq!((d.ignored, d.batches.len()), (1, 1));
    let sample = d.batches[0].1.statements[&key("SELECT * FROM t WHERE id = $1")].slowest.clone().unwrap();
    assert_eq!(sample.duration, Duration::from_micros(12_500));
    assert_eq!(sample.timestamp, Some(1_700_000_001_234));
    assert_eq!(sample.text, "SELECT * FROM t WHERE id = $1");
}
