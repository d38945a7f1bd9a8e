//! The receiver's decode-cost reckoning (`querywatch_wire::otlp::cost`)
//! against what decoding really allocates.
//!
//! The reckoning is the guard against requests that are small on the wire
//! and huge decoded, so it must not undercount what a decoded request
//! holds; and it must leave real senders' requests well inside the bound
//! while requests of empty messages land far outside it. This binary
//! counts every allocation (the `cap` allocator wrapper) and takes the
//! high-water mark while prost or serde decode each request, in a child
//! process of its own (see [`peak`]), and compares.
#![allow(clippy::unwrap_used)]

use cap::Cap;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, EntityRef, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use querywatch_wire::otlp::cost::{self, MAX_FACTOR, Request};
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

fn string(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }), key_strindex: 0 }
}

fn resource(attributes: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource { attributes, ..Resource::default() })
}

fn metrics(resource_attrs: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(resource_attrs),
            scope_metrics: vec![ScopeMetrics { metrics, ..ScopeMetrics::default() }],
            schema_url: String::new(),
        }],
    }
}

fn logs(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(vec![string("service.name", "checkout")]),
            scope_logs: vec![ScopeLogs { log_records: records, ..ScopeLogs::default() }],
            schema_url: String::new(),
        }],
    }
}

fn metric(name: &str, data: Data) -> Metric {
    Metric { name: name.into(), unit: "s".into(), data: Some(data), ..Metric::default() }
}

/// What an agent sends for one interval of `n` statements.
fn agent(n: usize) -> (ExportMetricsServiceRequest, ExportLogsServiceRequest) {
    let mut obs = Observations::default();
    for i in 0..n {
        let text = format!("SELECT c_{i} FROM orders_{i} WHERE id = $1 AND status = $2");
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for k in 0..(1 + i % 5) {
            s.record_call(Duration::from_micros(100 + 997 * (i as u64 % 1000) + 31 * k as u64), None, &text);
        }
    }
    let resource = ResourceInfo { node: "db-1".into(), ..ResourceInfo::default() };
    let end = 1_800_000_000_000_000_000;
    let interval = (end - 10_000_000_000, end);
    (encode_metrics(&obs, &resource, interval), encode_logs(&obs, &resource, interval))
}

/// Shaped as the OpenTelemetry SDKs send: counters and histograms with a
/// few attributes per point.
fn sdk_metrics() -> ExportMetricsServiceRequest {
    let attrs = |i: usize| {
        vec![
            string("http.request.method", "GET"),
            string("http.route", &format!("/api/v1/item/{i}")),
            string("http.response.status_code", "200"),
        ]
    };
    let number = |i: usize| NumberDataPoint {
        attributes: attrs(i),
        start_time_unix_nano: 1,
        time_unix_nano: 2,
        value: Some(number_data_point::Value::AsInt(i as i64)),
        ..NumberDataPoint::default()
    };
    let histogram = |i: usize| HistogramDataPoint {
        attributes: attrs(i),
        count: 100,
        sum: Some(12.5),
        bucket_counts: (0..16).collect(),
        explicit_bounds: (0..15).map(f64::from).collect(),
        ..HistogramDataPoint::default()
    };
    let expo = |i: usize| ExponentialHistogramDataPoint {
        attributes: attrs(i),
        count: 300,
        scale: 3,
        positive: Some(Buckets { offset: -20, bucket_counts: (0..160).map(|b| b % 7).collect() }),
        ..ExponentialHistogramDataPoint::default()
    };
    metrics(
        vec![string("service.name", "checkout"), string("telemetry.sdk.language", "python")],
        vec![
            metric("requests", Data::Sum(Sum { data_points: (0..50).map(number).collect(), ..Sum::default() })),
            metric(
                "latency",
                Data::Histogram(Histogram { data_points: (0..50).map(histogram).collect(), ..Histogram::default() }),
            ),
            metric(
                "latency.expo",
                Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: (0..20).map(expo).collect(),
                    ..ExponentialHistogram::default()
                }),
            ),
        ],
    )
}

fn sdk_logs() -> ExportLogsServiceRequest {
    logs(
        (0..200)
            .map(|i| LogRecord {
                time_unix_nano: 1,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(AnyValue { value: Some(Value::StringValue(format!("order {i} shipped to the warehouse"))) }),
                attributes: vec![string("order.id", &i.to_string()), string("code.function", "ship")],
                trace_id: vec![7; 16],
                span_id: vec![9; 8],
                ..LogRecord::default()
            })
            .collect(),
    )
}

/// Requests of empty messages, two bytes each on the wire, and whether
/// they amplify past the bound (an empty string in a repeated field
/// amplifies 12–24×, about the bound, so it is reckoned but may pass).
fn dense(n: usize) -> Vec<(&'static str, Vec<u8>, Request, bool)> {
    let gauge =
        metrics(vec![], vec![metric("x", Data::Gauge(Gauge { data_points: vec![NumberDataPoint::default(); n] }))]);
    let attrs = metrics(vec![KeyValue::default(); n], vec![]);
    let entity = metrics(vec![], vec![]);
    let mut entity = entity;
    entity.resource_metrics[0].resource.as_mut().unwrap().entity_refs =
        vec![EntityRef { id_keys: vec![String::new(); n / 2], ..EntityRef::default() }];
    let records = logs(vec![LogRecord::default(); n]);
    let array = logs(vec![LogRecord {
        body: Some(AnyValue { value: Some(Value::ArrayValue(ArrayValue { values: vec![AnyValue::default(); n] })) }),
        ..LogRecord::default()
    }]);
    vec![
        ("empty gauge points", gauge.encode_to_vec(), Request::Metrics, true),
        ("empty resource attributes", attrs.encode_to_vec(), Request::Metrics, true),
        ("empty entity keys", entity.encode_to_vec(), Request::Metrics, false),
        ("empty log records", records.encode_to_vec(), Request::Logs, true),
        ("an array of empty values", array.encode_to_vec(), Request::Logs, true),
    ]
}

/// What the child's test harness may allocate while it decodes (its
/// output thread): the measured peak is that much less exact.
const HARNESS: usize = 4096;

/// How a request is encoded.
#[derive(Clone, Copy, Debug)]
enum Format {
    Protobuf,
    Json,
}

fn reckon(bytes: &[u8], format: Format, request: Request) -> usize {
    match format {
        Format::Protobuf => cost::protobuf(bytes, request).unwrap(),
        Format::Json => cost::json(&mut serde_json::Deserializer::from_slice(bytes), request).unwrap(),
    }
}

fn decode(bytes: &[u8], format: Format, request: Request) -> Box<dyn std::any::Any> {
    match (format, request) {
        (Format::Protobuf, Request::Metrics) => Box::new(ExportMetricsServiceRequest::decode(bytes).unwrap()),
        (Format::Protobuf, Request::Logs) => Box::new(ExportLogsServiceRequest::decode(bytes).unwrap()),
        (Format::Json, Request::Metrics) => {
            Box::new(serde_json::from_slice::<ExportMetricsServiceRequest>(bytes).unwrap())
        }
        (Format::Json, Request::Logs) => Box::new(serde_json::from_slice::<ExportLogsServiceRequest>(bytes).unwrap()),
    }
}

/// The most bytes allocated at once while `bytes` are decoded, measured
/// in a child process (this test binary, running [`decode_one`]): the
/// allocator's high-water mark cannot be reset, and in this process it
/// is set by building the requests.
fn peak(dir: &std::path::Path, bytes: &[u8], format: Format, request: Request) -> usize {
    let file = dir.join("request");
    std::fs::write(&file, bytes).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "decode_one", "--nocapture", "--test-threads=1"])
        .env("QW_DECODE", &file)
        .env("QW_DECODE_AS", format!("{format:?} {request:?}"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "decode_one failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    // The harness prints "test decode_one ... " on the same line.
    let (_, after) = stdout.split_once("PEAK ").unwrap_or_else(|| panic!("no PEAK in {stdout}"));
    after.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad PEAK in {stdout}"))
}

/// The child of [`peak`]; does nothing when run as a test of its own.
#[test]
fn decode_one() {
    let (Some(file), Ok(how)) = (std::env::var_os("QW_DECODE"), std::env::var("QW_DECODE_AS")) else { return };
    let bytes = std::fs::read(file).unwrap();
    let format = if how.starts_with("Json") { Format::Json } else { Format::Protobuf };
    let request = if how.ends_with("Logs") { Request::Logs } else { Request::Metrics };
    let (mark, before) = (ALLOC.max_allocated(), ALLOC.allocated());
    let decoded = decode(&bytes, format, request);
    let peak = ALLOC.max_allocated() - before;
    assert!(ALLOC.max_allocated() > mark, "decoding did not raise the high-water mark: nothing measured");
    drop(decoded);
    println!("PEAK {peak}");
}

#[test]
fn the_reckoning_covers_what_decoding_takes_and_tells_real_data_from_empty_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (agent_metrics, agent_logs) = agent(500);
    let (sdk_metrics, sdk_logs) = (sdk_metrics(), sdk_logs());
    let both = |m: &dyn ErasedMessage| [(Format::Protobuf, m.protobuf()), (Format::Json, m.json())];
    let real = [
        ("agent metrics", both(&agent_metrics), Request::Metrics),
        ("agent logs", both(&agent_logs), Request::Logs),
        ("SDK metrics", both(&sdk_metrics), Request::Metrics),
        ("SDK logs", both(&sdk_logs), Request::Logs),
    ];
    for (what, encodings, request) in real {
        for (format, bytes) in encodings {
            let (reckoned, peak) = (reckon(&bytes, format, request), peak(dir.path(), &bytes, format, request));
            let factor = reckoned as f64 / bytes.len() as f64;
            println!(
                "{what} ({format:?}): {} bytes, peak {peak} decoding, reckoned {reckoned} ({factor:.1}x)",
                bytes.len()
            );
            assert!(reckoned + HARNESS >= peak, "{what} ({format:?}): reckoned {reckoned} < the peak {peak}");
            assert!(reckoned <= 2 * peak, "{what} ({format:?}): reckoned {reckoned}, more than twice the peak {peak}");
            assert!(factor < 0.6 * MAX_FACTOR as f64, "{what} ({format:?}): {factor:.1}x is too close to the bound");
        }
    }

    for (what, bytes, request, refused) in dense(200_000) {
        let (reckoned, peak) =
            (reckon(&bytes, Format::Protobuf, request), peak(dir.path(), &bytes, Format::Protobuf, request));
        let factor = reckoned as f64 / bytes.len() as f64;
        println!("{what}: {} bytes, peak {peak} decoding, reckoned {reckoned} ({factor:.1}x)", bytes.len());
        assert!(reckoned + HARNESS >= peak, "{what}: reckoned {reckoned} < the peak {peak}");
        assert_eq!(!cost::affordable(reckoned, bytes.len()), refused, "{what}: {factor:.1}x");
    }
    // The same in OTLP/JSON: `{}` for each message.
    let empties = vec!["{}"; 200_000].join(",");
    let json = [
        (format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{empties}]}}]}}]}}"#), Request::Logs),
        (
            format!(
                r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"gauge":{{"dataPoints":[{empties}]}}}}]}}]}}]}}"#
            ),
            Request::Metrics,
        ),
    ];
    for (body, request) in json {
        let bytes = body.into_bytes();
        let (reckoned, peak) = (reckon(&bytes, Format::Json, request), peak(dir.path(), &bytes, Format::Json, request));
        let factor = reckoned as f64 / bytes.len() as f64;
        println!(
            "{request:?} of empty JSON objects: {} bytes, peak {peak} decoding, reckoned {reckoned} ({factor:.1}x)",
            bytes.len()
        );
        assert!(reckoned + HARNESS >= peak, "{request:?} of empty JSON objects: reckoned {reckoned} < the peak {peak}");
        assert!(!cost::affordable(reckoned, bytes.len()), "{request:?} of empty JSON objects: {factor:.1}x");
    }
    // The same shapes small enough are never refused: they cannot cost much.
    for (what, bytes, request, _) in dense(100) {
        assert!(cost::affordable(reckon(&bytes, Format::Protobuf, request), bytes.len()), "{what}");
    }
}

/// A request in both encodings.
trait ErasedMessage {
    fn protobuf(&self) -> Vec<u8>;
    fn json(&self) -> Vec<u8>;
}

impl<M: Message + serde::Serialize> ErasedMessage for M {
    fn protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap()
    }
}

#[test]
fn json_serde_takes_is_reckoned_or_refused_as_not_otlp() {
    // serde reads a struct from an array of its fields; the walker refuses
    // it (OTLP/JSON writes objects) rather than size it as nothing.
    let values = vec!["{}"; 1000].join(",");
    let body = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[[0,0,0,"",{{"arrayValue":{{"values":[{values}]}}}}]]}}]}}]}}"#
    );
    assert!(serde_json::from_str::<ExportLogsServiceRequest>(&body).is_ok(), "serde takes it");
    assert!(cost::json(&mut serde_json::Deserializer::from_str(&body), Request::Logs).is_err());
    // Nesting serde accepts is accepted.
    let mut value = r#"{"stringValue":"x"}"#.to_owned();
    for _ in 0..25 {
        value = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{value}}}]}}}}"#);
    }
    let body = format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{value}}}]}}]}}]}}"#);
    assert!(serde_json::from_str::<ExportLogsServiceRequest>(&body).is_ok());
    assert!(cost::json(&mut serde_json::Deserializer::from_str(&body), Request::Logs).is_ok());
}
