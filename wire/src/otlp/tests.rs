//! Tests of the OTLP codec as a whole: known answers for the contract
//! (names, attributes, temporality), round trips, strictness, and the
//! properties the collector relies on (exact counts, ≤ 1% percentiles,
//! merge before or after decoding is the same).

use super::*;
use crate::names;
use crate::observations::{LockKey, LockStats, StatementKey};
use crate::stats::{PlanSample, StatementStats};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use proptest::prelude::*;
use prost::Message;
use std::time::Duration;

const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
const T0: i64 = 1_700_000_001_000; // ms, inside INTERVAL

fn key(text: &str) -> StatementKey {
    StatementKey { database: "shop".into(), user: "app".into(), text: text.into() }
}

fn resource() -> ResourceInfo {
    ResourceInfo {
        service_version: "0.1.0".into(),
        service_instance_id: "agent-7f3a".into(),
        host_name: "db-1.example".into(),
        server_address: "10.0.0.5".into(),
        server_port: Some(5432),
        node: "db-1".into(),
        cluster: "shop-eu".into(),
        extra: vec![KeyValue {
            key: "deployment.environment.name".into(),
            value: Some(AnyValue { value: Some(Value::StringValue("test".into())) }),
            key_strindex: 0,
        }],
    }
}

/// A little of everything `Observations` can hold.
fn observations() -> Observations {
    let mut obs = Observations::default();
    let sel = key("SELECT * FROM orders WHERE id = $1");
    let s = obs.statements.entry(sel).or_default();
    for (i, ms) in [1u64, 2, 3].into_iter().enumerate() {
        s.record_call(Duration::from_millis(ms), Some(T0 + i as i64), "SELECT * FROM orders WHERE id = $1");
    }
    s.record_error("23505", "duplicate key value violates unique constraint \"orders_pkey\"", Some(T0));
    s.record_error("23505", "second message is not kept", Some(T0));
    s.record_error("57014", "canceling statement due to statement timeout", Some(T0));
    s.record_temp_file(8192, Some(T0));
    s.record_plan(PlanSample {
        duration: Duration::from_micros(2_500),
        timestamp: Some(T0 + 5),
        format: "json",
        plan: r#"{"Plan": {"Node Type": "Seq Scan", "Filter": "(id = $1)"}}"#.into(),
    });
    let ins = obs.statements.entry(key("/* app */ insert into orders values ($1, $2)")).or_default();
    ins.record_call(Duration::from_micros(250), Some(T0), "insert into orders values ($1, $2)");
    ins.rows = Some(1);
    // Errors only: no duration, no sample.
    obs.statements.entry(key("DELETE FROM orders WHERE id = $1")).or_default().record_error("40P01", "deadlock", None);
    obs.overflow_calls = 4;
    obs.overflow_locks = 1;
    obs.locks.insert(
        LockKey {
            database: "shop".into(),
            waiter: "UPDATE orders SET state = $1 WHERE id = $2".into(),
            blocker: "DELETE FROM orders WHERE id = $1".into(),
            mode: "ShareLock".into(),
            object: "transaction".into(),
        },
        LockStats {
            waits: 2,
            max_wait: Duration::from_millis(1500),
            acquired_wait: Duration::from_millis(2100),
            acquired: 2,
            deadlocks: 1,
        },
    );
    obs.unattributed_errors.insert("XX000".into(), 3);
    obs.unattributed_temp_files = 2;
    obs.unattributed_temp_bytes = 1 << 20;
    obs.classes.insert("duration", 4);
    obs.classes.insert("error", 4);
    obs.classes.insert("plan_unparsed", 1);
    obs.input = crate::observations::InputStats {
        files: 1,
        bytes: 123_456,
        lines: 789,
        entries: 700,
        unparsed: 3,
        truncated: 1,
        invalid_utf8: 2,
        unattributed_durations: 5,
        unreadable_files: 0,
        forgotten_sessions: 6,
        dropped_session_texts: 7,
    };
    obs.agent = agent_health();
    obs.first_seen = Some(T0);
    obs.last_seen = Some(T0 + 5);
    obs
}

/// Every field of the agent's health set, each to a different value.
fn agent_health() -> crate::health::AgentHealth {
    use crate::health::{AgentHealth, FileRead};
    let mut h = AgentHealth {
        export_retryable_failures: 3,
        export_throttled: 2,
        export_permanent_failures: 1,
        export_retries: 5,
        spool_dropped_batches: 4,
        spool_dropped_bytes: 40_960,
        spool_batches: Some(6),
        spool_bytes: Some(61_440),
        last_export_unix_s: Some(1_700_000_009),
        poller_reconnects: 7,
        poller_connect_failures: 8,
        poller_connections_lost: 9,
        poller_poll_failures: 10,
        ..AgentHealth::default()
    };
    h.files.insert("postgresql-2026-11-24_120000.csv".into(), FileRead { bytes: 100_000, lines: 900 });
    h.files.insert("postgresql-2026-11-24_120100.csv".into(), FileRead { bytes: 23_456, lines: 0 });
    h
}

/// Decodes both requests and merges them per node, as the collector will.
fn round_trip(obs: &Observations) -> (ResourceInfo, Observations) {
    let m = decode_metrics(&encode_metrics(obs, &resource(), INTERVAL)).unwrap();
    let l = decode_logs(&encode_logs(obs, &resource(), INTERVAL)).unwrap();
    assert_eq!((m.ignored, l.ignored), (0, 0));
    let (mut batches, logs) = (m.batches, l.batches);
    assert_eq!(batches.len(), 1);
    let (res, mut back) = batches.pop().unwrap();
    for (r, o) in logs {
        assert_eq!(r, res);
        back.merge(o);
    }
    (res, back)
}

fn hdr_buckets(s: &StatementStats) -> Vec<(u64, u64)> {
    s.hist.buckets().collect()
}

fn str_attrs(a: &[KeyValue]) -> Vec<(String, String)> {
    a.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => format!("int:{i}"),
                Some(Value::DoubleValue(d)) => format!("double:{d}"),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn find<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
    req.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name).unwrap()
}

// --- Known answers ------------------------------------------------------------

#[test]
fn resource_and_scope_attributes() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    let rm = &req.resource_metrics[0];
    assert_eq!(
        str_attrs(&rm.resource.as_ref().unwrap().attributes),
        pairs(&[
            ("service.name", "querywatch-agent"),
            ("db.system.name", "postgresql"),
            ("querywatch.node", "db-1"),
            ("service.version", "0.1.0"),
            ("service.instance.id", "agent-7f3a"),
            ("host.name", "db-1.example"),
            ("server.address", "10.0.0.5"),
            ("querywatch.cluster", "shop-eu"),
            ("server.port", "int:5432"),
            ("deployment.environment.name", "test"),
        ])
    );
    let scope = rm.scope_metrics[0].scope.as_ref().unwrap();
    assert_eq!((scope.name.as_str(), scope.version.as_str()), ("querywatch", env!("CARGO_PKG_VERSION")));
    // Extra attributes that collide with a field lose to the field.
    let mut r = resource();
    r.extra.push(KeyValue { key: "querywatch.node".into(), value: None, key_strindex: 0 });
    let attrs = r.to_otlp().attributes;
    assert_eq!(attrs.iter().filter(|kv| kv.key == "querywatch.node").count(), 1);
}

#[test]
fn metric_names_types_and_temporality() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    let got: Vec<_> = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| {
            let kind = match &m.data {
                Some(Data::ExponentialHistogram(h)) => {
                    assert_eq!(h.aggregation_temporality, AggregationTemporality::Delta as i32, "{}", m.name);
                    "exphist"
                }
                Some(Data::Sum(s)) => {
                    assert_eq!(s.aggregation_temporality, AggregationTemporality::Delta as i32, "{}", m.name);
                    assert!(s.is_monotonic, "{}", m.name);
                    "sum"
                }
                Some(Data::Gauge(_)) => "gauge",
                other => panic!("{}: {other:?}", m.name),
            };
            (m.name.as_str(), m.unit.as_str(), kind)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("querywatch.query.duration", "s", "exphist"),
            ("querywatch.statement.errors", "{error}", "sum"),
            ("querywatch.statement.temp_files", "{file}", "sum"),
            ("querywatch.statement.temp_bytes", "By", "sum"),
            ("querywatch.statement.rows", "{row}", "sum"),
            ("querywatch.unattributed.errors", "{error}", "sum"),
            ("querywatch.unattributed.temp_files", "{file}", "sum"),
            ("querywatch.unattributed.temp_bytes", "By", "sum"),
            ("querywatch.lock.waits", "{wait}", "sum"),
            ("querywatch.lock.deadlocks", "{deadlock}", "sum"),
            ("querywatch.lock.acquired", "{lock}", "sum"),
            ("querywatch.lock.acquired_wait", "s", "sum"),
            ("querywatch.lock.max_wait", "s", "gauge"),
            ("querywatch.log.entries", "{entry}", "sum"),
            ("querywatch.agent.files_read", "{file}", "sum"),
            ("querywatch.agent.bytes_read", "By", "sum"),
            ("querywatch.agent.lines_read", "{line}", "sum"),
            ("querywatch.agent.entries_read", "{entry}", "sum"),
            ("querywatch.agent.parse_failures", "{line}", "sum"),
            ("querywatch.agent.truncated", "{entry}", "sum"),
            ("querywatch.agent.invalid_utf8", "{entry}", "sum"),
            ("querywatch.agent.unattributed_durations", "{entry}", "sum"),
            ("querywatch.agent.unreadable_files", "{file}", "sum"),
            ("querywatch.agent.sessions_forgotten", "{session}", "sum"),
            ("querywatch.agent.session_texts_dropped", "{statement}", "sum"),
            ("querywatch.agent.overflow", "{event}", "sum"),
            ("querywatch.agent.file.bytes_read", "By", "sum"),
            ("querywatch.agent.file.lines_read", "{line}", "sum"),
            ("querywatch.agent.export.failures", "{failure}", "sum"),
            ("querywatch.agent.export.retries", "{retry}", "sum"),
            ("querywatch.agent.spool.dropped_batches", "{batch}", "sum"),
            ("querywatch.agent.spool.dropped_bytes", "By", "sum"),
            ("querywatch.agent.poller.reconnects", "{connection}", "sum"),
            ("querywatch.agent.poller.connect_failures", "{attempt}", "sum"),
            ("querywatch.agent.poller.connections_lost", "{connection}", "sum"),
            ("querywatch.agent.poller.poll_failures", "{poll}", "sum"),
            ("querywatch.agent.spool.batches", "{batch}", "gauge"),
            ("querywatch.agent.spool.size", "By", "gauge"),
            ("querywatch.agent.export.last_success", "s", "gauge"),
        ]
    );
}

#[test]
fn duration_point_carries_exact_statistics_and_statement_attributes() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    let Some(Data::ExponentialHistogram(h)) = &find(&req, names::METRIC_QUERY_DURATION).data else { panic!() };
    // Sorted by key: the INSERT (text starts with `/`) comes before the SELECT.
    assert_eq!(h.data_points.len(), 2);
    let ins = &h.data_points[0];
    assert_eq!(
        str_attrs(&ins.attributes),
        pairs(&[
            ("db.namespace", "shop"),
            ("querywatch.db.user", "app"),
            ("db.query.text", "/* app */ insert into orders values ($1, $2)"),
            ("db.operation.name", "INSERT"),
            ("querywatch.source", "log"),
        ])
    );
    let p = &h.data_points[1];
    assert_eq!(str_attrs(&p.attributes)[3], ("db.operation.name".into(), "SELECT".into()));
    assert_eq!((p.start_time_unix_nano, p.time_unix_nano), INTERVAL);
    assert_eq!((p.count, p.sum, p.min, p.max), (3, Some(0.006), Some(0.001), Some(0.003)));
    assert_eq!((p.scale, p.zero_count, p.zero_threshold), (8, 0, 0.0));
    assert!(p.negative.is_none());
    // 1, 2 and 3 ms fall in HDR buckets centred on 1001.5, 2003.5 and
    // 2999.5 µs: OTLP buckets -2551, -2295 and -2146 at scale 8.
    let pos = p.positive.as_ref().unwrap();
    assert_eq!(pos.offset, -2551);
    assert_eq!(pos.bucket_counts.len(), 406);
    let nonzero: Vec<_> = pos.bucket_counts.iter().enumerate().filter(|(_, c)| **c > 0).collect();
    assert_eq!(nonzero, [(0, &1), (256, &1), (405, &1)]);
}

#[test]
fn counters_carry_their_attributes() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    let sum_points = |name| match &find(&req, name).data {
        Some(Data::Sum(s)) => s.data_points.clone(),
        _ => panic!("{name}"),
    };
    let value = |p: &NumberDataPoint| match p.value {
        Some(number_data_point::Value::AsInt(i)) => i,
        _ => panic!(),
    };
    let errors = sum_points(names::METRIC_STATEMENT_ERRORS);
    let summary: Vec<_> = errors
        .iter()
        .map(|p| (str_attrs(&p.attributes).pop().unwrap().1, str_attrs(&p.attributes)[2].1.clone(), value(p)))
        .collect();
    assert_eq!(
        summary,
        [
            ("40P01".to_owned(), "DELETE FROM orders WHERE id = $1".to_owned(), 1),
            ("23505".into(), "SELECT * FROM orders WHERE id = $1".into(), 2),
            ("57014".into(), "SELECT * FROM orders WHERE id = $1".into(), 1),
        ]
    );
    assert_eq!(str_attrs(&errors[0].attributes)[5].0, "db.response.status_code");
    let waits = sum_points(names::METRIC_LOCK_WAITS);
    assert_eq!(
        str_attrs(&waits[0].attributes),
        pairs(&[
            ("db.namespace", "shop"),
            ("querywatch.lock.waiter", "UPDATE orders SET state = $1 WHERE id = $2"),
            ("querywatch.lock.blocker", "DELETE FROM orders WHERE id = $1"),
            ("querywatch.lock.mode", "ShareLock"),
            ("querywatch.lock.object", "transaction"),
        ])
    );
    let Some(Data::Gauge(g)) = &find(&req, names::METRIC_LOCK_MAX_WAIT).data else { panic!() };
    assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(1.5)));
    let classes: Vec<_> =
        sum_points(names::METRIC_LOG_ENTRIES).iter().map(|p| (str_attrs(&p.attributes)[0].clone(), value(p))).collect();
    assert_eq!(
        classes,
        [
            (("querywatch.log.class".into(), "duration".into()), 4),
            (("querywatch.log.class".into(), "error".into()), 4),
            (("querywatch.log.class".into(), "plan_unparsed".into()), 1)
        ]
    );
    assert_eq!(value(&sum_points(names::METRIC_AGENT_BYTES_READ)[0]), 123_456);
    assert_eq!(value(&sum_points(names::METRIC_AGENT_UNREADABLE_FILES)[0]), 0, "health counters go out at zero");
}

#[test]
fn sample_and_error_events() {
    let req = encode_logs(&observations(), &resource(), INTERVAL);
    let records = &req.resource_logs[0].scope_logs[0].log_records;
    let events: Vec<_> =
        records.iter().map(|r| (r.event_name.as_str(), str_attrs(&r.attributes)[2].1.clone())).collect();
    assert_eq!(
        events,
        [
            ("querywatch.query.sample", "/* app */ insert into orders values ($1, $2)".to_owned()),
            ("querywatch.query.error", "DELETE FROM orders WHERE id = $1".into()),
            ("querywatch.query.sample", "SELECT * FROM orders WHERE id = $1".into()),
            ("querywatch.query.error", "SELECT * FROM orders WHERE id = $1".into()),
            ("querywatch.query.error", "SELECT * FROM orders WHERE id = $1".into()),
        ]
    );
    let sample = &records[2];
    assert_eq!((sample.severity_number, sample.severity_text.as_str()), (9, "INFO"));
    assert_eq!(sample.time_unix_nano, (T0 as u64 + 2) * 1_000_000, "the slowest call's time");
    assert_eq!(sample.observed_time_unix_nano, INTERVAL.1);
    assert_eq!(
        sample.body.as_ref().unwrap().value,
        Some(Value::StringValue("SELECT * FROM orders WHERE id = $1".into()))
    );
    assert_eq!(
        str_attrs(&sample.attributes)[5..],
        pairs(&[
            ("querywatch.duration_ms", "double:3"),
            ("querywatch.plan.text", r#"{"Plan": {"Node Type": "Seq Scan", "Filter": "(id = $1)"}}"#),
            ("querywatch.plan.format", "json"),
            ("querywatch.plan.duration_ms", "double:2.5"),
            (names::QW_PLAN_TIMESTAMP_MS, &format!("int:{}", T0 + 5)),
        ])
    );
    let error = &records[3];
    assert_eq!((error.severity_number, error.severity_text.as_str(), error.time_unix_nano), (17, "ERROR", 0));
    assert_eq!(str_attrs(&error.attributes)[5], ("db.response.status_code".into(), "23505".into()));
}

// --- Round trips ----------------------------------------------------------------

fn assert_statements_equal(a: &Observations, b: &Observations) {
    let mut keys: Vec<_> = a.statements.keys().collect();
    keys.sort();
    let mut other: Vec<_> = b.statements.keys().collect();
    other.sort();
    assert_eq!(keys, other);
    for k in keys {
        let (x, y) = (&a.statements[k], &b.statements[k]);
        assert_eq!((x.calls, x.total, x.min, x.max), (y.calls, y.total, y.min, y.max), "{k:?}");
        assert_eq!(hdr_buckets(x), hdr_buckets(y), "{k:?}");
        assert_eq!(
            (x.rows, &x.errors, x.temp_files, x.temp_bytes),
            (y.rows, &y.errors, y.temp_files, y.temp_bytes),
            "{k:?}"
        );
        assert_eq!((&x.slowest, &x.slowest_plan), (&y.slowest, &y.slowest_plan), "{k:?}");
    }
}

#[test]
fn everything_survives_encode_and_decode() {
    let obs = observations();
    let (res, back) = round_trip(&obs);
    assert_eq!(res, resource());
    assert_statements_equal(&obs, &back);
    assert_eq!(back.locks, obs.locks);
    assert_eq!((back.overflow_calls, back.overflow_locks), (4, 1));
    assert_eq!(back.unattributed_errors, obs.unattributed_errors);
    assert_eq!((back.unattributed_temp_files, back.unattributed_temp_bytes), (2, 1 << 20));
    assert_eq!(back.classes, obs.classes);
    assert_eq!(back.input, obs.input);
    assert_eq!(back.agent, obs.agent);
    // Times become the interval's (ms), the documented loss.
    let interval_ms = (Some(1_700_000_000_000), Some(1_700_000_010_000));
    assert_eq!((back.first_seen, back.last_seen), interval_ms);
    let sel = &back.statements[&key("SELECT * FROM orders WHERE id = $1")];
    assert_eq!((sel.first_seen, sel.last_seen), interval_ms);
}

#[test]
fn empty_observations_still_report_health() {
    let req = encode_metrics(&Observations::default(), &resource(), INTERVAL);
    // 11 input counters, overflow, export failures (3 classes), 7 more
    // agent counters; no per-file points and no gauges without values.
    assert_eq!(req.resource_metrics[0].scope_metrics[0].metrics.len(), 20);
    let d = decode_metrics(&req).unwrap();
    assert_eq!(d.batches.len(), 1);
    assert!(d.batches[0].1.statements.is_empty());
    assert_eq!(d.batches[0].1.agent, crate::health::AgentHealth::default());
    let logs = encode_logs(&Observations::default(), &resource(), INTERVAL);
    assert!(logs.resource_logs[0].scope_logs[0].log_records.is_empty());
    assert!(decode_logs(&logs).unwrap().batches.is_empty());
}

#[test]
fn unknown_log_class_arrives_as_other() {
    let mut obs = Observations::default();
    obs.classes.insert("from_a_newer_agent", 2);
    obs.classes.insert("other", 1);
    let back = decode_metrics(&encode_metrics(&obs, &resource(), INTERVAL)).unwrap();
    assert_eq!(back.batches[0].1.classes.get("other"), Some(&3));
}

// --- What is not ours, and what is wrong ------------------------------------------

fn gauge_metric(name: &str, n: usize) -> Metric {
    let p = NumberDataPoint { value: Some(number_data_point::Value::AsDouble(1.0)), ..Default::default() };
    Metric { name: name.into(), data: Some(Data::Gauge(Gauge { data_points: vec![p; n] })), ..Default::default() }
}

#[test]
fn foreign_data_is_ignored_and_counted() {
    let mut req = encode_metrics(&observations(), &resource(), INTERVAL);
    // Another service's resource: no querywatch.node, and that is fine.
    req.resource_metrics.insert(
        0,
        ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![gauge_metric("process.cpu.utilization", 3), gauge_metric("http.server.active", 2)],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let ours = &mut req.resource_metrics[1].scope_metrics[0].metrics;
    // A querywatch metric this decoder does not know (a newer agent's).
    ours.push(gauge_metric("querywatch.table.seq_scans", 4));
    // A duration from pg_stat_statements: not merged into log statistics.
    let mut stmts = ours[0].clone();
    let Some(Data::ExponentialHistogram(h)) = &mut stmts.data else { panic!() };
    h.data_points.truncate(1);
    for kv in &mut h.data_points[0].attributes {
        if kv.key == names::QW_SOURCE {
            kv.value = Some(AnyValue { value: Some(Value::StringValue("statements".into())) });
        }
    }
    ours.push(stmts);

    let d = decode_metrics(&req).unwrap();
    assert_eq!(d.ignored, 3 + 2 + 4 + 1);
    assert_eq!(d.batches.len(), 1);
    assert_eq!(d.batches[0].0.node, "db-1");
    let sel = &d.batches[0].1.statements[&key("/* app */ insert into orders values ($1, $2)")];
    assert_eq!(sel.calls, 1, "the statements-source point was not added");

    let mut logs = encode_logs(&observations(), &resource(), INTERVAL);
    let records = &mut logs.resource_logs[0].scope_logs[0].log_records;
    let mut foreign = records[0].clone();
    foreign.event_name = "app.checkout".into();
    records.push(foreign);
    records.push(Default::default());
    let d = decode_logs(&logs).unwrap();
    assert_eq!((d.ignored, d.batches.len()), (2, 1));
}

#[test]
fn old_style_event_name_attribute_is_read() {
    let mut logs = encode_logs(&observations(), &resource(), INTERVAL);
    let r = &mut logs.resource_logs[0].scope_logs[0].log_records[0];
    r.attributes.push(KeyValue {
        key: "event.name".into(),
        value: Some(AnyValue { value: Some(Value::StringValue(std::mem::take(&mut r.event_name))) }),
        key_strindex: 0,
    });
    assert_eq!(decode_logs(&logs).unwrap().ignored, 0);
}

/// The first duration data point of an encoded request, for corrupting.
fn first_duration_point(
    req: &mut ExportMetricsServiceRequest,
) -> &mut opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint {
    let m = &mut req.resource_metrics[0].scope_metrics[0].metrics[0];
    let Some(Data::ExponentialHistogram(h)) = &mut m.data else { panic!() };
    &mut h.data_points[0]
}

#[test]
fn claims_to_be_ours_but_is_not_valid() {
    let fresh = || encode_metrics(&observations(), &resource(), INTERVAL);
    let err = |req: &ExportMetricsServiceRequest| decode_metrics(req).unwrap_err();

    let mut req = fresh();
    first_duration_point(&mut req).attributes.retain(|kv| kv.key != names::DB_QUERY_TEXT);
    let e = err(&req);
    assert_eq!(
        e,
        DecodeError::MissingAttribute { item: "querywatch.query.duration".into(), attribute: "db.query.text" }
    );
    assert_eq!(e.to_string(), "querywatch.query.duration: required attribute `db.query.text` is missing");

    let mut req = fresh();
    let Some(Data::ExponentialHistogram(h)) = &mut req.resource_metrics[0].scope_metrics[0].metrics[0].data else {
        panic!()
    };
    h.aggregation_temporality = AggregationTemporality::Cumulative as i32;
    assert_eq!(
        err(&req).to_string(),
        "querywatch.query.duration: aggregation temporality must be DELTA, found AGGREGATION_TEMPORALITY_CUMULATIVE"
    );

    let mut req = fresh();
    first_duration_point(&mut req).count += 1;
    assert!(matches!(err(&req), DecodeError::Invalid { item, .. } if item == "querywatch.query.duration"));

    let mut req = fresh();
    first_duration_point(&mut req).sum = None;
    assert_eq!(err(&req), DecodeError::MissingField { item: "querywatch.query.duration".into(), field: "sum" });

    let mut req = fresh();
    first_duration_point(&mut req).min = Some(-1.0);
    assert!(matches!(err(&req), DecodeError::Invalid { .. }));

    let mut req = fresh();
    first_duration_point(&mut req).scale = 21;
    assert!(matches!(err(&req), DecodeError::Invalid { .. }));

    let mut req = fresh();
    req.resource_metrics[0].resource.as_mut().unwrap().attributes.retain(|kv| kv.key != names::QW_NODE);
    assert_eq!(err(&req), DecodeError::MissingAttribute { item: "resource".into(), attribute: "querywatch.node" });

    let mut req = fresh();
    let m = &mut req.resource_metrics[0].scope_metrics[0].metrics;
    let errors = m.iter_mut().find(|m| m.name == names::METRIC_STATEMENT_ERRORS).unwrap();
    *errors = gauge_metric(names::METRIC_STATEMENT_ERRORS, 1);
    assert_eq!(err(&req).to_string(), "querywatch.statement.errors: expected sum data, found gauge",);

    let mut req = fresh();
    let m = &mut req.resource_metrics[0].scope_metrics[0].metrics;
    let Some(Data::Sum(Sum { data_points, .. })) =
        &mut m.iter_mut().find(|m| m.name == names::METRIC_LOCK_WAITS).unwrap().data
    else {
        panic!()
    };
    data_points[0].value = Some(number_data_point::Value::AsInt(-2));
    assert_eq!(
        err(&req),
        DecodeError::Invalid { item: "querywatch.lock.waits".into(), reason: "negative count -2".into() }
    );

    let mut req = fresh();
    let m = &mut req.resource_metrics[0].scope_metrics[0].metrics;
    let Some(Data::Sum(Sum { data_points, .. })) =
        &mut m.iter_mut().find(|m| m.name == names::METRIC_LOCK_WAITS).unwrap().data
    else {
        panic!()
    };
    data_points[0].attributes.retain(|kv| kv.key != names::QW_LOCK_MODE);
    assert_eq!(
        err(&req),
        DecodeError::MissingAttribute { item: "querywatch.lock.waits".into(), attribute: "querywatch.lock.mode" }
    );

    let mut logs = encode_logs(&observations(), &resource(), INTERVAL);
    let r = &mut logs.resource_logs[0].scope_logs[0].log_records[0];
    r.attributes.retain(|kv| kv.key != names::QW_DURATION_MS);
    assert_eq!(
        decode_logs(&logs).unwrap_err(),
        DecodeError::MissingAttribute { item: "querywatch.query.sample".into(), attribute: "querywatch.duration_ms" }
    );
}

// --- Properties ---------------------------------------------------------------

/// HDR's definition of a percentile: the smallest value with at least `q`
/// of the values at or below it.
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats_of(micros: &[u64]) -> StatementStats {
    let mut s = StatementStats::default();
    for (i, us) in micros.iter().enumerate() {
        s.record_call(Duration::from_micros(*us), Some(T0 + i as i64), "SELECT $1");
    }
    s
}

fn one_statement(s: StatementStats) -> Observations {
    let mut obs = Observations::default();
    obs.statements.insert(key("SELECT $1"), s);
    obs
}

fn decoded(s: &StatementStats) -> StatementStats {
    let (_, mut back) = round_trip(&one_statement(s.clone()));
    back.statements.remove(&key("SELECT $1")).unwrap()
}

proptest! {
    #[test]
    fn counts_exact_and_percentiles_within_one_percent(
        micros in prop::collection::vec(1u64..60_000_000, 1..1500),
    ) {
        let s = stats_of(&micros);
        let back = decoded(&s);
        prop_assert_eq!((back.calls, back.total, back.min, back.max), (s.calls, s.total, s.min, s.max));
        let mut sorted = micros.clone();
        sorted.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let exact = exact_quantile(&sorted, q) as f64;
            let got = back.hist.quantile(q).as_micros() as f64;
            prop_assert!((got - exact).abs() <= exact * 0.01, "q={} exact={} got={}", q, exact, got);
        }
        // Stronger than the bound: the agent's histogram arrives unchanged.
        prop_assert_eq!(hdr_buckets(&back), hdr_buckets(&s));
    }

    #[test]
    fn decoded_histogram_answers_as_recorded(
        micros in prop::collection::vec(1u64..100_000_000_000, 1..500),
        qs in prop::collection::vec(0.0f64..=1.0, 16),
    ) {
        // The agent records into the dense form, the decoder builds the
        // sparse one: every answer is the same, to the microsecond.
        let s = stats_of(&micros);
        let back = decoded(&s);
        prop_assert_eq!(hdr_buckets(&back), hdr_buckets(&s));
        prop_assert_eq!(back.hist.count(), s.hist.count());
        for q in qs.into_iter().chain([0.0, 1.0]) {
            prop_assert_eq!(back.hist.quantile(q), s.hist.quantile(q), "q={}", q);
        }
    }

    #[test]
    fn totals_exact_to_the_nanosecond(nanos in prop::collection::vec(0u64..100_000_000_000, 1..500)) {
        let mut s = StatementStats::default();
        for n in &nanos {
            s.record_call(Duration::from_nanos(*n), None, "SELECT $1");
        }
        let back = decoded(&s);
        prop_assert_eq!((back.calls, back.total, back.min, back.max), (s.calls, s.total, s.min, s.max));
        prop_assert_eq!(back.slowest, s.slowest);
    }

    #[test]
    fn merging_decoded_equals_decoding_merged(
        a in prop::collection::vec(1u64..10_000_000, 1..300),
        b in prop::collection::vec(1u64..10_000_000, 1..300),
    ) {
        let (sa, sb) = (stats_of(&a), stats_of(&b));
        let mut after = decoded(&sa);
        after.merge(&decoded(&sb));
        let mut merged = sa.clone();
        merged.merge(&sb);
        let before = decoded(&merged);
        prop_assert_eq!((after.calls, after.total, after.min, after.max), (before.calls, before.total, before.min, before.max));
        for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
            prop_assert_eq!(after.hist.quantile(q), before.hist.quantile(q), "q={}", q);
        }
        prop_assert_eq!(after.slowest, before.slowest);
    }

    #[test]
    fn protobuf_bytes_decode_to_the_same_request(
        calls in prop::collection::vec((0usize..4, 1u64..5_000_000), 0..200),
    ) {
        let mut obs = observations();
        for (shape, us) in calls {
            let text = format!("SELECT {shape}");
            obs.statements.entry(key(&text)).or_default().record_call(Duration::from_micros(us), Some(T0), &text);
        }
        let m = encode_metrics(&obs, &resource(), INTERVAL);
        prop_assert_eq!(&ExportMetricsServiceRequest::decode(&m.encode_to_vec()[..]).unwrap(), &m);
        let l = encode_logs(&obs, &resource(), INTERVAL);
        prop_assert_eq!(&ExportLogsServiceRequest::decode(&l.encode_to_vec()[..]).unwrap(), &l);
        // And the bytes are deterministic: equal input, equal output.
        prop_assert_eq!(encode_metrics(&obs, &resource(), INTERVAL).encode_to_vec(), m.encode_to_vec());
    }
}

// --- Statistics poller deltas (pg_stat_statements, tables, activity) -----------------

fn pgss_key(queryid: i64, toplevel: bool, text: &str) -> crate::dbstats::PgssKey {
    crate::dbstats::PgssKey { database: "shop".into(), user: "app".into(), queryid, toplevel, text: text.into() }
}

/// `observations()` plus one of everything the statistics poller sends.
fn with_db_stats() -> Observations {
    use crate::dbstats::{ActivityKey, PgssDelta, TableDelta, TableKey};
    let mut obs = observations();
    let db = &mut obs.db;
    db.statements.insert(
        pgss_key(-4_611_686_018_427_387_904, true, "SELECT * FROM orders WHERE id = $1"),
        PgssDelta {
            calls: 37,
            exec_time: Duration::from_nanos(12_345_678),
            plan_time: Duration::from_nanos(1_000_001),
            rows: 37,
            shared_blks_hit: 111,
            shared_blks_read: 3,
            temp_blks_written: 0,
        },
    );
    // Nested (toplevel = false), no calls this interval but temp blocks.
    db.statements.insert(
        pgss_key(42, false, "SELECT count(*) FROM items"),
        PgssDelta { temp_blks_written: 9, ..PgssDelta::default() },
    );
    // All zero: must still arrive (calls always travels).
    db.statements.insert(pgss_key(7, true, "COMMIT"), PgssDelta::default());
    let orders =
        TableKey { database: "shop".into(), relation: "public.orders_2024_01".into(), parent: "public.orders".into() };
    db.tables.insert(
        orders,
        TableDelta {
            seq_scan: 2,
            seq_tup_read: 2000,
            idx_scan: 5,
            n_tup_ins: 10,
            n_tup_upd: 3,
            n_tup_del: 1,
            heap_blks_read: 4,
            heap_blks_hit: 40,
            size_bytes: Some(65_536),
        },
    );
    db.tables.insert(
        TableKey { database: "shop".into(), relation: "public.items".into(), parent: String::new() },
        TableDelta::default(),
    );
    db.activity.insert(
        ActivityKey {
            database: "shop".into(),
            wait_event_type: "Lock".into(),
            wait_event: "transactionid".into(),
            state: "active".into(),
            text: "UPDATE orders SET state = $1 WHERE id = $2".into(),
        },
        7,
    );
    db.activity.insert(
        ActivityKey {
            database: String::new(),
            wait_event_type: String::new(),
            wait_event: String::new(),
            state: "active".into(),
            text: "SELECT pg_sleep($1)".into(),
        },
        2,
    );
    obs
}

#[test]
fn db_statistics_survive_encode_and_decode() {
    let obs = with_db_stats();
    let (_, back) = round_trip(&obs);
    assert_eq!(back.db, obs.db);
    // The log statistics are untouched by the statements-source rows.
    assert_statements_equal(&obs, &back);
    // And through protobuf bytes.
    let req = encode_metrics(&obs, &resource(), INTERVAL);
    let bytes = req.encode_to_vec();
    let again = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
    assert_eq!(again, req);
    let d = decode_metrics(&again).unwrap();
    assert_eq!(d.ignored, 0);
    assert_eq!(d.batches[0].1.db, obs.db);
}

#[test]
fn db_metric_names_types_and_attributes() {
    let req = encode_metrics(&with_db_stats(), &resource(), INTERVAL);
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    for (name, unit, gauge) in [
        ("querywatch.statement.calls", "{call}", false),
        ("querywatch.statement.exec_time", "s", false),
        ("querywatch.statement.plan_time", "s", false),
        ("querywatch.statement.rows", "{row}", false),
        ("querywatch.statement.shared_blks_hit", "{block}", false),
        ("querywatch.statement.shared_blks_read", "{block}", false),
        ("querywatch.statement.temp_blks_written", "{block}", false),
        ("querywatch.table.seq_scan", "{scan}", false),
        ("querywatch.table.seq_tup_read", "{tuple}", false),
        ("querywatch.table.idx_scan", "{scan}", false),
        ("querywatch.table.n_tup_ins", "{tuple}", false),
        ("querywatch.table.n_tup_upd", "{tuple}", false),
        ("querywatch.table.n_tup_del", "{tuple}", false),
        ("querywatch.table.heap_blks_read", "{block}", false),
        ("querywatch.table.heap_blks_hit", "{block}", false),
        ("querywatch.table.size", "By", true),
        ("querywatch.activity.samples", "{sample}", false),
    ] {
        assert_eq!(metrics.iter().filter(|m| m.name == name).count(), 1, "{name}: one metric per name");
        let m = find(&req, name);
        assert_eq!(m.unit, unit, "{name}");
        match &m.data {
            Some(Data::Sum(s)) => {
                assert!(!gauge, "{name}");
                assert!(s.is_monotonic, "{name}");
                assert_eq!(s.aggregation_temporality, AggregationTemporality::Delta as i32, "{name}");
            }
            Some(Data::Gauge(_)) => assert!(gauge, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let Some(Data::Sum(calls)) = &find(&req, names::METRIC_STATEMENT_CALLS).data else { panic!() };
    assert_eq!(calls.data_points.len(), 3, "zero calls travel too");
    let p = calls.data_points.iter().find(|p| p.value == Some(number_data_point::Value::AsInt(37))).unwrap();
    let mut a = str_attrs(&p.attributes);
    let toplevel = p.attributes.iter().find(|kv| kv.key == names::QW_TOPLEVEL).unwrap();
    assert_eq!(toplevel.value.as_ref().unwrap().value, Some(Value::BoolValue(true)));
    a.retain(|(k, _)| k != names::QW_TOPLEVEL);
    assert_eq!(
        a,
        pairs(&[
            ("db.namespace", "shop"),
            ("querywatch.db.user", "app"),
            ("db.query.text", "SELECT * FROM orders WHERE id = $1"),
            ("querywatch.source", "statements"),
            ("querywatch.queryid", "-4611686018427387904"),
        ])
    );
    let Some(Data::Gauge(size)) = &find(&req, names::METRIC_TABLE_SIZE).data else { panic!() };
    assert_eq!(
        str_attrs(&size.data_points[0].attributes),
        pairs(&[
            ("db.namespace", "shop"),
            ("db.collection.name", "public.orders_2024_01"),
            ("querywatch.partition.parent", "public.orders"),
        ])
    );
    let Some(Data::Sum(act)) = &find(&req, names::METRIC_ACTIVITY_SAMPLES).data else { panic!() };
    assert_eq!(
        str_attrs(&act.data_points[1].attributes),
        pairs(&[
            ("db.namespace", "shop"),
            ("querywatch.wait_event_type", "Lock"),
            ("querywatch.wait_event", "transactionid"),
            ("querywatch.state", "active"),
            ("db.query.text", "UPDATE orders SET state = $1 WHERE id = $2"),
        ])
    );
}

#[test]
fn statement_sums_of_another_source_are_ignored_and_bad_ones_rejected() {
    let mut req = encode_metrics(&with_db_stats(), &resource(), INTERVAL);
    let metrics = &mut req.resource_metrics[0].scope_metrics[0].metrics;
    // A calls point claiming the log source (not ours to merge) and one of
    // an unknown source (a newer agent's): both skipped and counted.
    let mut other = metrics.iter().find(|m| m.name == names::METRIC_STATEMENT_CALLS).unwrap().clone();
    let Some(Data::Sum(s)) = &mut other.data else { panic!() };
    s.data_points.truncate(2);
    for (p, source) in s.data_points.iter_mut().zip(["log", "pg_stat_monitor"]) {
        for kv in &mut p.attributes {
            if kv.key == names::QW_SOURCE {
                kv.value = Some(AnyValue { value: Some(Value::StringValue(source.into())) });
            }
        }
    }
    metrics.push(other);
    let d = decode_metrics(&req).unwrap();
    assert_eq!(d.ignored, 2);
    assert_eq!(d.batches[0].1.db, with_db_stats().db);

    // A statements-source point without its queryid is an error naming the metric.
    let mut req = encode_metrics(&with_db_stats(), &resource(), INTERVAL);
    let m = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter_mut()
        .find(|m| m.name == names::METRIC_STATEMENT_ROWS)
        .unwrap();
    let Some(Data::Sum(s)) = &mut m.data else { panic!() };
    for p in &mut s.data_points {
        p.attributes.retain(|kv| kv.key != names::QW_QUERYID);
    }
    assert_eq!(
        decode_metrics(&req).unwrap_err(),
        DecodeError::MissingAttribute { item: names::METRIC_STATEMENT_ROWS.into(), attribute: names::QW_QUERYID }
    );
    // A table point without its parent attribute, likewise.
    let mut req = encode_metrics(&with_db_stats(), &resource(), INTERVAL);
    let m = req.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter_mut()
        .find(|m| m.name == names::METRIC_TABLE_SEQ_SCAN)
        .unwrap();
    let Some(Data::Sum(s)) = &mut m.data else { panic!() };
    s.data_points[0].attributes.retain(|kv| kv.key != names::QW_PARTITION_PARENT);
    assert!(matches!(decode_metrics(&req), Err(DecodeError::MissingAttribute { .. })));
}

#[test]
fn db_statistics_merge_before_or_after_decoding_alike() {
    let a = with_db_stats();
    let b = Observations { db: a.db.clone(), ..Observations::default() };
    let (_, da) = round_trip(&a);
    let (_, db) = round_trip(&b);
    let mut after = da;
    after.merge(db);
    let mut merged = a.clone();
    merged.merge(b);
    let (_, before) = round_trip(&merged);
    assert_eq!(after.db, before.db);
    assert_eq!(before.db.statements.values().map(|d| d.calls).sum::<u64>(), 74);
}

// --- The agent's health ----------------------------------------------------------

#[test]
fn agent_health_points_carry_their_attributes() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    let sum_points = |name: &str| match &find(&req, name).data {
        Some(Data::Sum(s)) => s
            .data_points
            .iter()
            .map(|p| {
                let Some(number_data_point::Value::AsInt(v)) = p.value else { panic!("{name}: {p:?}") };
                (str_attrs(&p.attributes), v)
            })
            .collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    let file = |f: &str| pairs(&[("querywatch.log.file", f)]);
    assert_eq!(
        sum_points(names::METRIC_AGENT_FILE_BYTES_READ),
        [(file("postgresql-2026-11-24_120000.csv"), 100_000), (file("postgresql-2026-11-24_120100.csv"), 23_456)]
    );
    let class = |c: &str| pairs(&[("querywatch.failure.class", c)]);
    assert_eq!(
        sum_points(names::METRIC_AGENT_EXPORT_FAILURES),
        [(class("retryable"), 3), (class("throttled"), 2), (class("permanent"), 1)]
    );
    assert_eq!(sum_points(names::METRIC_AGENT_POLLER_RECONNECTS), [(vec![], 7)]);
    let Some(Data::Gauge(g)) = &find(&req, names::METRIC_AGENT_EXPORT_LAST_SUCCESS).data else { panic!() };
    assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsInt(1_700_000_009)));
}

#[test]
fn agent_health_merges_before_or_after_decoding_alike() {
    let (a, mut b) = (agent_health(), agent_health());
    b.spool_batches = Some(0);
    b.spool_bytes = None;
    b.last_export_unix_s = Some(1_700_000_019);
    b.files.insert("postgresql-2026-11-24_120200.csv".into(), crate::health::FileRead { bytes: 1, lines: 1 });
    let obs = |h: &crate::health::AgentHealth| Observations { agent: h.clone(), ..Observations::default() };
    let mut merged = a.clone();
    merged.merge(&b);
    let mut decoded = round_trip(&obs(&a)).1;
    decoded.merge(round_trip(&obs(&b)).1);
    assert_eq!(decoded.agent, merged);
    assert_eq!(merged.spool_batches, Some(0));
    assert_eq!(merged.spool_bytes, Some(61_440));
    assert_eq!(merged.last_export_unix_s, Some(1_700_000_019));
    assert_eq!(merged.export_retries, 10);
}

#[test]
fn agent_health_of_another_kind_is_ignored_and_bad_points_rejected() {
    let point = |attrs: Vec<KeyValue>, v: number_data_point::Value| NumberDataPoint {
        attributes: attrs,
        value: Some(v),
        ..Default::default()
    };
    let class = |c: &str| {
        vec![KeyValue {
            key: names::QW_FAILURE_CLASS.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(c.into())) }),
            key_strindex: 0,
        }]
    };
    let sum = |name: &str, points: Vec<NumberDataPoint>| Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let request = |metrics: Vec<Metric>| {
        let mut req = encode_metrics(&Observations::default(), &resource(), INTERVAL);
        req.resource_metrics[0].scope_metrics[0].metrics = metrics;
        req
    };
    let int = number_data_point::Value::AsInt;
    // A failure class from a newer agent: skipped and counted, the rest kept.
    let d = decode_metrics(&request(vec![sum(
        names::METRIC_AGENT_EXPORT_FAILURES,
        vec![point(class("retryable"), int(2)), point(class("cosmic_ray"), int(1))],
    )]))
    .unwrap();
    assert_eq!((d.ignored, d.batches[0].1.agent.export_retryable_failures), (1, 2));
    // Claims to be ours but is not valid: an error naming the metric.
    let bad = [
        sum(names::METRIC_AGENT_FILE_BYTES_READ, vec![point(vec![], int(1))]),
        sum(names::METRIC_AGENT_POLLER_RECONNECTS, vec![point(vec![], int(-1))]),
        sum(names::METRIC_AGENT_EXPORT_RETRIES, vec![point(vec![], number_data_point::Value::AsDouble(1.0))]),
        gauge_metric(names::METRIC_AGENT_EXPORT_RETRIES, 1),
        sum(names::METRIC_AGENT_SPOOL_SIZE, vec![point(vec![], int(1))]),
    ];
    for m in bad {
        let name = m.name.clone();
        let e = decode_metrics(&request(vec![m])).unwrap_err();
        assert!(e.to_string().contains(&name), "{name}: {e}");
    }
}

// --- The in-place decoder (raw.rs) against prost ---------------------------------

/// Both decoders' answers for `bytes`, as comparable text. Debug output is
/// exact here: both insert into the same deterministic maps in the same order.
fn both_decoders(bytes: &[u8]) -> (String, String) {
    let prost = ExportMetricsServiceRequest::decode(bytes).map(decode_metrics_per_resource);
    let raw = match decode_metrics_bytes(bytes) {
        Ok(parts) => Ok(parts),
        Err(BytesError::Malformed(e)) => Err(e),
        // The cost walk found it malformed before prost did: the same
        // answer if prost refuses it too.
        Err(BytesError::Unreadable(e)) => {
            let ours = format!("unreadable ({e}); prost refuses it too: {}", prost.is_err());
            return (ours, format!("unreadable ({e}); prost refuses it too: true"));
        }
        Err(e @ BytesError::TooCostly(_)) => panic!("{e}"),
    };
    (canonical(&raw), canonical(&prost))
}

/// `r`'s Debug with the statement and lock maps in key order: the two
/// decoders may size those maps differently, and a hash map's Debug order
/// follows its capacity.
fn canonical(r: &Result<ResourceParts, prost::DecodeError>) -> String {
    let Ok(parts) = r else { return format!("{r:?}") };
    let parts: Vec<String> = parts
        .iter()
        .map(|(n, d)| {
            let Ok(d) = d else { return format!("({n}, {d:?})") };
            let batches: Vec<String> = d
                .batches
                .iter()
                .map(|(res, obs)| {
                    let statements: std::collections::BTreeMap<_, _> = obs.statements.iter().collect();
                    let locks: std::collections::BTreeMap<_, _> = obs.locks.iter().collect();
                    let rest =
                        Observations { statements: Default::default(), locks: Default::default(), ..obs.clone() };
                    format!("({res:?}, statements {statements:?}, locks {locks:?}, {rest:?})")
                })
                .collect();
            format!("({n}, Ok(ignored {}, [{}]))", d.ignored, batches.join(", "))
        })
        .collect();
    format!("Ok([{}])", parts.join(", "))
}

/// `bytes` decode alike both ways, and on the fast path (no fallback).
fn assert_fast_and_equal(bytes: &[u8]) {
    assert!(raw::fast(bytes).is_some(), "the in-place decoder fell back on our own encoding");
    let (raw, prost) = both_decoders(bytes);
    assert_eq!(raw, prost);
}

fn two_resources(a: &Observations, b: &Observations) -> ExportMetricsServiceRequest {
    let mut req = encode_metrics(a, &resource(), INTERVAL);
    let other = ResourceInfo { node: "db-2".into(), ..resource() };
    req.resource_metrics.extend(encode_metrics(b, &other, INTERVAL).resource_metrics);
    req
}

#[test]
fn in_place_decoder_agrees_with_prost_on_our_requests() {
    let mut health = observations();
    health.agent = agent_health();
    for obs in [observations(), with_db_stats(), health, Observations::default()] {
        assert_fast_and_equal(&encode_metrics(&obs, &resource(), INTERVAL).encode_to_vec());
    }
    let req = two_resources(&observations(), &with_db_stats());
    assert_fast_and_equal(&req.encode_to_vec());
    let parts = decode_metrics_bytes(&req.encode_to_vec()).unwrap();
    assert_eq!(parts.len(), 2);
    let total = |r: &ResourceMetrics| r.scope_metrics.iter().flat_map(|s| &s.metrics).map(metrics::points).sum::<u64>();
    assert_eq!(parts[1].0, total(&req.resource_metrics[1]));
    assert!(parts[1].0 > 0);
    assert_eq!(parts[1].1.as_ref().unwrap().batches[0].0.node, "db-2");
    // Not a request at all: prost's error.
    assert!(decode_metrics_bytes(&[0x0a, 0x05, 0x01]).is_err());
}

#[test]
fn in_place_decoder_gives_prost_errors_for_invalid_points() {
    let fresh = || encode_metrics(&observations(), &resource(), INTERVAL);
    let mut cases: Vec<ExportMetricsServiceRequest> = Vec::new();
    let mut req = fresh();
    first_duration_point(&mut req).attributes.retain(|kv| kv.key != names::DB_QUERY_TEXT);
    cases.push(req);
    let mut req = fresh();
    first_duration_point(&mut req).count += 1;
    cases.push(req);
    let mut req = fresh();
    first_duration_point(&mut req).sum = None;
    cases.push(req);
    let mut req = fresh();
    first_duration_point(&mut req).scale = 21;
    cases.push(req);
    let mut req = fresh();
    first_duration_point(&mut req).negative = first_duration_point(&mut req).positive.clone();
    cases.push(req);
    let mut req = fresh();
    first_duration_point(&mut req).attributes[0].value = Some(AnyValue { value: Some(Value::IntValue(3)) });
    cases.push(req);
    let mut req = fresh();
    req.resource_metrics[0].resource.as_mut().unwrap().attributes.retain(|kv| kv.key != names::QW_NODE);
    cases.push(req);
    for (i, req) in cases.iter().enumerate() {
        let bytes = req.encode_to_vec();
        let (raw, prost) = both_decoders(&bytes);
        assert_eq!(raw, prost, "case {i}");
        assert!(raw.contains("Err("), "case {i} is refused: {raw}");
    }
}

#[test]
fn in_place_decoder_hands_unusual_encodings_to_prost() {
    let req = encode_metrics(&observations(), &resource(), INTERVAL);
    // An attribute whose value is an array, and one that is unset.
    let mut odd = req.clone();
    let p = first_duration_point(&mut odd);
    p.attributes.push(KeyValue {
        key: "tags".into(),
        value: Some(AnyValue {
            value: Some(Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![AnyValue { value: Some(Value::StringValue("x".into())) }],
            })),
        }),
        key_strindex: 0,
    });
    p.attributes.insert(0, KeyValue { key: names::QW_DB_USER.into(), value: None, key_strindex: 0 });
    let bytes = odd.encode_to_vec();
    assert!(raw::fast(&bytes).is_none());
    let (raw, prost) = both_decoders(&bytes);
    assert_eq!(raw, prost);
    // A point's `positive` sent twice (prost merges the two messages:
    // offset from the second, counts of both), and counts unpacked.
    let point = first_duration_point(&mut req.clone()).clone();
    let positive = point.positive.clone().unwrap();
    let mut dp = point.encode_to_vec();
    dp.extend(len_field(8, &positive.encode_to_vec()));
    let bytes = request_with_point(&req, &dp);
    assert!(raw::fast(&bytes).is_none());
    let (raw, prost) = both_decoders(&bytes);
    assert_eq!(raw, prost);
    assert!(raw.contains("buckets hold"), "the doubled counts no longer add up to `count`: {raw}");
    let mut dp =
        opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint { positive: None, ..point.clone() }
            .encode_to_vec();
    let mut unpacked = Vec::new();
    prost::encoding::sint32::encode(1, &positive.offset, &mut unpacked);
    for c in &positive.bucket_counts {
        prost::encoding::uint64::encode(2, c, &mut unpacked);
    }
    dp.extend(len_field(8, &unpacked));
    let bytes = request_with_point(&req, &dp);
    assert!(raw::fast(&bytes).is_none());
    let (raw, prost) = both_decoders(&bytes);
    assert_eq!(raw, prost);
    assert!(raw.starts_with("Ok([(1, Ok("), "unpacked counts are valid protobuf: {raw}");
}

/// Field `tag` holding `bytes`.
fn len_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::bytes::encode(tag, &bytes.to_vec(), &mut out);
    out
}

/// `req`'s resource with one `querywatch.query.duration` metric holding one
/// data point given as raw bytes.
fn request_with_point(req: &ExportMetricsServiceRequest, point: &[u8]) -> Vec<u8> {
    let mut hist = len_field(1, point);
    prost::encoding::int32::encode(2, &(AggregationTemporality::Delta as i32), &mut hist);
    let mut metric = Vec::new();
    prost::encoding::string::encode(1, &names::METRIC_QUERY_DURATION.to_owned(), &mut metric);
    metric.extend(len_field(10, &hist));
    let mut rm = len_field(1, &req.resource_metrics[0].resource.as_ref().unwrap().encode_to_vec());
    rm.extend(len_field(2, &len_field(2, &metric)));
    len_field(1, &rm)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn in_place_decoder_agrees_with_prost_on_any_statements(
        calls in prop::collection::vec((0usize..40, 1u64..5_000_000), 0..300),
    ) {
        let mut obs = observations();
        for (shape, us) in calls {
            let text = format!("SELECT {shape} FROM t WHERE a = $1");
            obs.statements.entry(key(&text)).or_default().record_call(Duration::from_micros(us), Some(T0), &text);
        }
        let bytes = two_resources(&obs, &with_db_stats()).encode_to_vec();
        prop_assert!(raw::fast(&bytes).is_some());
        let (raw, prost) = both_decoders(&bytes);
        prop_assert_eq!(raw, prost);
    }

    /// Damaged bytes: the in-place decoder never accepts what prost refuses,
    /// nor reads anything differently.
    #[test]
    fn in_place_decoder_agrees_with_prost_on_damaged_bytes(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode_metrics(&observations(), &resource(), INTERVAL).encode_to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let (raw, prost) = both_decoders(&bytes);
        prop_assert_eq!(raw, prost);
    }
}
