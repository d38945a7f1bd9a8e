//! Samples, plans and error messages of [`Observations`] ↔
//! `ExportLogsServiceRequest`.
//!
//! What does not fit a metric travels as an event (a log record with an
//! `event_name`), one per statement shape:
//! - `querywatch.query.sample` (INFO): the slowest execution — text as the
//!   body, `querywatch.duration_ms`, time = when it ran — and, when known,
//!   the slowest plan with its own duration and time (auto_explain's
//!   threshold differs from the duration log's, so the two executions can
//!   differ);
//! - `querywatch.query.error` (ERROR): per SQLSTATE, the first masked
//!   message as the body. Its count travels as a metric.

use super::attrs::{self, kv_double, kv_int, kv_str};
use super::{DecodeError, Decoded, ResourceInfo, scope};
use crate::StatementKey;
use crate::names;
use crate::observations::Observations;
use crate::stats::{PlanSample, Sample, StatementStats};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};

fn record(
    event: &str,
    severity: SeverityNumber,
    time: u64,
    observed: u64,
    body: &str,
    attributes: Vec<KeyValue>,
) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: observed,
        severity_number: severity as i32,
        // The short name OTLP's data model gives each severity number.
        severity_text: severity.as_str_name().trim_start_matches("SEVERITY_NUMBER_").into(),
        body: Some(AnyValue { value: Some(Value::StringValue(body.to_owned())) }),
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        event_name: event.into(),
    }
}

/// The samples, plans and error messages in `obs` as OTLP log records from
/// `resource`; `interval.1` (Unix ns) is their observed time.
pub fn encode_logs(obs: &Observations, resource: &ResourceInfo, interval: (u64, u64)) -> ExportLogsServiceRequest {
    let observed = interval.1;
    let mut statements: Vec<_> = obs.statements.iter().collect();
    statements.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut records = Vec::new();
    for (key, s) in statements {
        if s.slowest.is_some() || s.slowest_plan.is_some() {
            let mut a = attrs::statement_attributes(key);
            if let Some(sample) = &s.slowest {
                a.push(kv_double(names::QW_DURATION_MS, attrs::millis(sample.duration)));
            }
            if let Some(plan) = &s.slowest_plan {
                a.push(kv_str(names::QW_PLAN_TEXT, &plan.plan));
                a.push(kv_str(names::QW_PLAN_FORMAT, plan.format));
                a.push(kv_double(names::QW_PLAN_DURATION_MS, attrs::millis(plan.duration)));
                if let Some(t) = plan.timestamp {
                    a.push(kv_int(names::QW_PLAN_TIMESTAMP_MS, t));
                }
            }
            let time = s.slowest.as_ref().map_or(s.slowest_plan.as_ref().and_then(|p| p.timestamp), |x| x.timestamp);
            let body = s.slowest.as_ref().map_or(key.text.as_str(), |x| x.text.as_str());
            let time = time.map_or(0, attrs::unix_nanos);
            records.push(record(names::EVENT_QUERY_SAMPLE, SeverityNumber::Info, time, observed, body, a));
        }
        for (state, e) in s.errors.iter().filter(|(_, e)| !e.message.is_empty()) {
            let mut a = attrs::statement_attributes(key);
            a.push(kv_str(names::DB_RESPONSE_STATUS_CODE, state));
            // The error's time is not kept per message: 0 is OTLP's "unknown".
            records.push(record(names::EVENT_QUERY_ERROR, SeverityNumber::Error, 0, observed, &e.message, a));
        }
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.to_otlp()),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// The querywatch events in `req`, one [`Observations`] per resource that
/// sent any. Statements carry only what the events say (samples, plans,
/// error messages with a count of 0); merge with the metrics' decoding for
/// the rest.
pub fn decode_logs(req: &ExportLogsServiceRequest) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    for rl in &req.resource_logs {
        let mut obs = Observations::default();
        let mut ours = 0u64;
        for r in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
            let used = match event_name(r) {
                names::EVENT_QUERY_SAMPLE => decode_sample(r, &mut obs)?,
                names::EVENT_QUERY_ERROR => decode_error(r, &mut obs)?,
                _ => false,
            };
            if used {
                ours += 1;
            } else {
                out.ignored += 1;
            }
        }
        if ours > 0 {
            out.batches.push((ResourceInfo::from_otlp(rl.resource.as_ref())?, obs));
        }
    }
    Ok(out)
}

/// `event_name`, or the older `event.name` attribute when that is empty.
fn event_name(r: &LogRecord) -> &str {
    if !r.event_name.is_empty() {
        return &r.event_name;
    }
    match attrs::opt_str(&r.attributes, names::EVENT_NAME_ATTRIBUTE, "") {
        Ok(Some(name)) => name,
        _ => "",
    }
}

fn body(r: &LogRecord, item: &str) -> Result<Option<String>, DecodeError> {
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        None => Ok(None),
        Some(Value::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DecodeError::Invalid { item: item.into(), reason: "the body should be a string".into() }),
    }
}

fn statement(obs: &mut Observations, key: StatementKey) -> &mut StatementStats {
    obs.statements.entry(key).or_default()
}

/// Returns whether the record was ours (false: another source's).
fn decode_sample(r: &LogRecord, obs: &mut Observations) -> Result<bool, DecodeError> {
    let item = names::EVENT_QUERY_SAMPLE;
    let a = &r.attributes;
    let Some(key) = attrs::statement_key(a, item)? else { return Ok(false) };
    let invalid = |reason: String| DecodeError::Invalid { item: item.into(), reason };
    let ms = |v: f64| attrs::duration_from_millis(v).ok_or_else(|| invalid(format!("{v} ms is not a duration")));
    let mut part = StatementStats::default();
    if let Some(d) = attrs::opt_double(a, names::QW_DURATION_MS, item)? {
        let text = body(r, item)?.unwrap_or_else(|| key.text.clone());
        part.slowest = Some(Sample { duration: ms(d)?, timestamp: attrs::epoch_millis(r.time_unix_nano), text });
    }
    if let Some(plan) = attrs::opt_str(a, names::QW_PLAN_TEXT, item)? {
        // PlanSample keeps the format as a static string: one of two.
        let format = match attrs::req_str(a, names::QW_PLAN_FORMAT, item)? {
            "json" => "json",
            "text" => "text",
            other => return Err(invalid(format!("plan format {other:?} is neither json nor text"))),
        };
        let d = attrs::opt_double(a, names::QW_PLAN_DURATION_MS, item)?.ok_or_else(|| {
            DecodeError::MissingAttribute { item: item.into(), attribute: names::QW_PLAN_DURATION_MS }
        })?;
        part.slowest_plan = Some(PlanSample {
            duration: ms(d)?,
            timestamp: attrs::opt_int(a, names::QW_PLAN_TIMESTAMP_MS, item)?,
            format,
            plan: plan.to_owned(),
        });
    }
    if part.slowest.is_none() && part.slowest_plan.is_none() {
        return Err(DecodeError::MissingAttribute { item: item.into(), attribute: names::QW_DURATION_MS });
    }
    statement(obs, key).merge(&part);
    Ok(true)
}

fn decode_error(r: &LogRecord, obs: &mut Observations) -> Result<bool, DecodeError> {
    let item = names::EVENT_QUERY_ERROR;
    let Some(key) = attrs::statement_key(&r.attributes, item)? else { return Ok(false) };
    let state = attrs::req_str(&r.attributes, names::DB_RESPONSE_STATUS_CODE, item)?.to_owned();
    let message = body(r, item)?.ok_or_else(|| DecodeError::MissingField { item: item.into(), field: "body" })?;
    let e = statement(obs, key).errors.entry(state).or_default();
    if e.message.is_empty() {
        e.message = message;
    }
    Ok(true)
}
