//! [`Observations`] ↔ `ExportMetricsServiceRequest`.
//!
//! One resource (the agent), one scope (`querywatch`), one metric per name;
//! data points sorted by their key so that equal input gives equal bytes.
//! Every sum is monotonic with DELTA temporality: the agent sends what
//! happened in the interval and the collector adds (DESIGN.md). Gauges
//! (table size, longest lock wait, the agent's spool and last export) are
//! the state at the interval's end.

use super::attrs::{self, kv_bool, kv_str};
use super::expo;
use super::raw::Counts;
use super::{DecodeError, Decoded, ResourceInfo, scope};
use crate::dbstats::{ActivityKey, DbStats, PgssDelta, PgssKey, TableDelta, TableKey};
use crate::health::AgentHealth;
use crate::names;
use crate::observations::{InputStats, LockKey, Observations};
use crate::stats::{EpochMillis, StatementStats};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as NumberValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use std::collections::hash_map::Entry;
use std::time::Duration;

/// An input counter of the agent: metric name, unit, description, and the
/// field of [`InputStats`] it carries.
struct InputCounter {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    get: fn(&InputStats) -> u64,
    get_mut: fn(&mut InputStats) -> &mut u64,
}

const INPUT_COUNTERS: &[InputCounter] = &[
    InputCounter {
        name: names::METRIC_AGENT_FILES_READ,
        unit: "{file}",
        description: "Log files opened.",
        get: |i| i.files,
        get_mut: |i| &mut i.files,
    },
    InputCounter {
        name: names::METRIC_AGENT_BYTES_READ,
        unit: "By",
        description: "Log bytes read.",
        get: |i| i.bytes,
        get_mut: |i| &mut i.bytes,
    },
    InputCounter {
        name: names::METRIC_AGENT_LINES_READ,
        unit: "{line}",
        description: "Log lines read.",
        get: |i| i.lines,
        get_mut: |i| &mut i.lines,
    },
    InputCounter {
        name: names::METRIC_AGENT_ENTRIES_READ,
        unit: "{entry}",
        description: "Log entries (a message with its detail lines) read.",
        get: |i| i.entries,
        get_mut: |i| &mut i.entries,
    },
    InputCounter {
        name: names::METRIC_AGENT_PARSE_FAILURES,
        unit: "{line}",
        description: "Lines or records not in the expected log format.",
        get: |i| i.unparsed,
        get_mut: |i| &mut i.unparsed,
    },
    InputCounter {
        name: names::METRIC_AGENT_TRUNCATED,
        unit: "{entry}",
        description: "Entries cut at the entry size cap.",
        get: |i| i.truncated,
        get_mut: |i| &mut i.truncated,
    },
    InputCounter {
        name: names::METRIC_AGENT_INVALID_UTF8,
        unit: "{entry}",
        description: "Entries with bytes that are not UTF-8 (replaced).",
        get: |i| i.invalid_utf8,
        get_mut: |i| &mut i.invalid_utf8,
    },
    InputCounter {
        name: names::METRIC_AGENT_UNATTRIBUTED_DURATIONS,
        unit: "{entry}",
        description: "Durations that could not be tied to a statement.",
        get: |i| i.unattributed_durations,
        get_mut: |i| &mut i.unattributed_durations,
    },
    InputCounter {
        name: names::METRIC_AGENT_UNREADABLE_FILES,
        unit: "{file}",
        description: "Log files that could not be read.",
        get: |i| i.unreadable_files,
        get_mut: |i| &mut i.unreadable_files,
    },
    InputCounter {
        name: names::METRIC_AGENT_SESSIONS_FORGOTTEN,
        unit: "{session}",
        description: "Idle sessions forgotten at the session cap (their pending statements cannot pair).",
        get: |i| i.forgotten_sessions,
        get_mut: |i| &mut i.forgotten_sessions,
    },
    InputCounter {
        name: names::METRIC_AGENT_SESSION_TEXTS_DROPPED,
        unit: "{statement}",
        description: "Sessions' last statements let go at the session text budget (lock blockers unnamed).",
        get: |i| i.dropped_session_texts,
        get_mut: |i| &mut i.dropped_session_texts,
    },
];

/// A `u64` counter of `T` carried as one metric: name, unit, description,
/// and the field.
struct Field<T> {
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    get: fn(&T) -> u64,
    get_mut: fn(&mut T) -> &mut u64,
}

/// pg_stat_statements block counters (`calls`, the times and `rows` are
/// handled on their own: calls always travel, times are seconds, rows share
/// a metric with the log source).
const PGSS_BLOCKS: &[Field<PgssDelta>] = &[
    Field {
        name: names::METRIC_STATEMENT_SHARED_BLKS_HIT,
        unit: "{block}",
        description: "Shared buffer hits of a statement (pg_stat_statements).",
        get: |d| d.shared_blks_hit,
        get_mut: |d| &mut d.shared_blks_hit,
    },
    Field {
        name: names::METRIC_STATEMENT_SHARED_BLKS_READ,
        unit: "{block}",
        description: "Shared blocks read by a statement (pg_stat_statements).",
        get: |d| d.shared_blks_read,
        get_mut: |d| &mut d.shared_blks_read,
    },
    Field {
        name: names::METRIC_STATEMENT_TEMP_BLKS_WRITTEN,
        unit: "{block}",
        description: "Temporary blocks written by a statement (pg_stat_statements).",
        get: |d| d.temp_blks_written,
        get_mut: |d| &mut d.temp_blks_written,
    },
];

/// Table counters; the first (`seq_scan`) always travels, so that every
/// relation arrives.
const TABLE_COUNTERS: &[Field<TableDelta>] = &[
    Field {
        name: names::METRIC_TABLE_SEQ_SCAN,
        unit: "{scan}",
        description: "Sequential scans of a relation.",
        get: |d| d.seq_scan,
        get_mut: |d| &mut d.seq_scan,
    },
    Field {
        name: names::METRIC_TABLE_SEQ_TUP_READ,
        unit: "{tuple}",
        description: "Tuples read by sequential scans of a relation.",
        get: |d| d.seq_tup_read,
        get_mut: |d| &mut d.seq_tup_read,
    },
    Field {
        name: names::METRIC_TABLE_IDX_SCAN,
        unit: "{scan}",
        description: "Index scans of a relation.",
        get: |d| d.idx_scan,
        get_mut: |d| &mut d.idx_scan,
    },
    Field {
        name: names::METRIC_TABLE_N_TUP_INS,
        unit: "{tuple}",
        description: "Tuples inserted into a relation.",
        get: |d| d.n_tup_ins,
        get_mut: |d| &mut d.n_tup_ins,
    },
    Field {
        name: names::METRIC_TABLE_N_TUP_UPD,
        unit: "{tuple}",
        description: "Tuples updated in a relation.",
        get: |d| d.n_tup_upd,
        get_mut: |d| &mut d.n_tup_upd,
    },
    Field {
        name: names::METRIC_TABLE_N_TUP_DEL,
        unit: "{tuple}",
        description: "Tuples deleted from a relation.",
        get: |d| d.n_tup_del,
        get_mut: |d| &mut d.n_tup_del,
    },
    Field {
        name: names::METRIC_TABLE_HEAP_BLKS_READ,
        unit: "{block}",
        description: "Heap blocks of a relation read from outside shared buffers.",
        get: |d| d.heap_blks_read,
        get_mut: |d| &mut d.heap_blks_read,
    },
    Field {
        name: names::METRIC_TABLE_HEAP_BLKS_HIT,
        unit: "{block}",
        description: "Heap blocks of a relation found in shared buffers.",
        get: |d| d.heap_blks_hit,
        get_mut: |d| &mut d.heap_blks_hit,
    },
];

/// The agent's health counters without attributes (always sent, zero
/// included: "nothing failed" is news too). Export failures (by class),
/// per-file reads and the gauges are handled on their own.
const AGENT_COUNTERS: &[Field<AgentHealth>] = &[
    Field {
        name: names::METRIC_AGENT_EXPORT_RETRIES,
        unit: "{retry}",
        description: "Export attempts scheduled again after a retryable or throttled failure.",
        get: |h| h.export_retries,
        get_mut: |h| &mut h.export_retries,
    },
    Field {
        name: names::METRIC_AGENT_SPOOL_DROPPED_BATCHES,
        unit: "{batch}",
        description: "Batches dropped unsent: past the spool's bound (oldest first), or larger than it.",
        get: |h| h.spool_dropped_batches,
        get_mut: |h| &mut h.spool_dropped_batches,
    },
    Field {
        name: names::METRIC_AGENT_SPOOL_DROPPED_BYTES,
        unit: "By",
        description: "Bytes of the batches dropped unsent.",
        get: |h| h.spool_dropped_bytes,
        get_mut: |h| &mut h.spool_dropped_bytes,
    },
    Field {
        name: names::METRIC_AGENT_POLLER_RECONNECTS,
        unit: "{connection}",
        description: "Statistics poller connections established again after a lost one.",
        get: |h| h.poller_reconnects,
        get_mut: |h| &mut h.poller_reconnects,
    },
    Field {
        name: names::METRIC_AGENT_POLLER_CONNECT_FAILURES,
        unit: "{attempt}",
        description: "Statistics poller connection attempts that failed.",
        get: |h| h.poller_connect_failures,
        get_mut: |h| &mut h.poller_connect_failures,
    },
    Field {
        name: names::METRIC_AGENT_POLLER_CONNECTIONS_LOST,
        unit: "{connection}",
        description: "Statistics poller connections that broke.",
        get: |h| h.poller_connections_lost,
        get_mut: |h| &mut h.poller_connections_lost,
    },
    Field {
        name: names::METRIC_AGENT_POLLER_POLL_FAILURES,
        unit: "{poll}",
        description: "Statistics poller polls that failed (query errors, timeouts).",
        get: |h| h.poller_poll_failures,
        get_mut: |h| &mut h.poller_poll_failures,
    },
];

/// An export failure class: the `querywatch.failure.class` value and the
/// field that counts it.
struct FailureClass {
    class: &'static str,
    get: fn(&AgentHealth) -> u64,
    get_mut: fn(&mut AgentHealth) -> &mut u64,
}

const FAILURE_CLASSES: &[FailureClass] = &[
    FailureClass {
        class: names::QW_FAILURE_RETRYABLE,
        get: |h| h.export_retryable_failures,
        get_mut: |h| &mut h.export_retryable_failures,
    },
    FailureClass {
        class: names::QW_FAILURE_THROTTLED,
        get: |h| h.export_throttled,
        get_mut: |h| &mut h.export_throttled,
    },
    FailureClass {
        class: names::QW_FAILURE_PERMANENT,
        get: |h| h.export_permanent_failures,
        get_mut: |h| &mut h.export_permanent_failures,
    },
];

/// Data point factory for one interval.
struct Points {
    start: u64,
    end: u64,
}

impl Points {
    fn number(&self, attributes: Vec<KeyValue>, value: NumberValue) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.end,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(value),
        }
    }

    fn count(&self, attributes: Vec<KeyValue>, n: u64) -> NumberDataPoint {
        // OTLP counts are i64; 2^63 events in one interval do not happen, but
        // saturate rather than wrap if they ever did.
        self.number(attributes, NumberValue::AsInt(i64::try_from(n).unwrap_or(i64::MAX)))
    }

    fn seconds(&self, attributes: Vec<KeyValue>, d: Duration) -> NumberDataPoint {
        self.number(attributes, NumberValue::AsDouble(attrs::secs(d)))
    }

    fn duration(&self, attributes: Vec<KeyValue>, s: &StatementStats) -> ExponentialHistogramDataPoint {
        let b = expo::from_hdr(&s.hist);
        ExponentialHistogramDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.end,
            count: s.calls,
            sum: Some(attrs::secs(s.total)),
            scale: expo::SCALE,
            zero_count: b.zero_count,
            positive: Some(Buckets { offset: b.offset, bucket_counts: b.counts }),
            negative: None,
            flags: 0,
            exemplars: Vec::new(),
            min: Some(attrs::secs(s.min.unwrap_or_default())),
            max: Some(attrs::secs(s.max)),
            zero_threshold: 0.0,
        }
    }
}

fn metric(name: &str, unit: &str, description: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

fn delta_sum(data_points: Vec<NumberDataPoint>) -> Data {
    Data::Sum(Sum { data_points, aggregation_temporality: AggregationTemporality::Delta as i32, is_monotonic: true })
}

fn push_sum(metrics: &mut Vec<Metric>, name: &str, unit: &str, description: &str, points: Vec<NumberDataPoint>) {
    if !points.is_empty() {
        metrics.push(metric(name, unit, description, delta_sum(points)));
    }
}

fn lock_attributes(k: &LockKey) -> Vec<KeyValue> {
    vec![
        kv_str(names::DB_NAMESPACE, &k.database),
        kv_str(names::QW_LOCK_WAITER, &k.waiter),
        kv_str(names::QW_LOCK_BLOCKER, &k.blocker),
        kv_str(names::QW_LOCK_MODE, &k.mode),
        kv_str(names::QW_LOCK_OBJECT, &k.object),
    ]
}

fn with(mut a: Vec<KeyValue>, key: &str, value: &str) -> Vec<KeyValue> {
    a.push(kv_str(key, value));
    a
}

fn pgss_attributes(k: &PgssKey) -> Vec<KeyValue> {
    vec![
        kv_str(names::DB_NAMESPACE, &k.database),
        kv_str(names::QW_DB_USER, &k.user),
        kv_str(names::DB_QUERY_TEXT, &k.text),
        kv_str(names::QW_SOURCE, names::QW_SOURCE_STATEMENTS),
        kv_str(names::QW_QUERYID, &k.queryid.to_string()),
        kv_bool(names::QW_TOPLEVEL, k.toplevel),
    ]
}

fn table_attributes(k: &TableKey) -> Vec<KeyValue> {
    vec![
        kv_str(names::DB_NAMESPACE, &k.database),
        kv_str(names::DB_COLLECTION_NAME, &k.relation),
        kv_str(names::QW_PARTITION_PARENT, &k.parent),
    ]
}

fn activity_attributes(k: &ActivityKey) -> Vec<KeyValue> {
    vec![
        kv_str(names::DB_NAMESPACE, &k.database),
        kv_str(names::QW_WAIT_EVENT_TYPE, &k.wait_event_type),
        kv_str(names::QW_WAIT_EVENT, &k.wait_event),
        kv_str(names::QW_STATE, &k.state),
        kv_str(names::DB_QUERY_TEXT, &k.text),
    ]
}

/// The statistics poller's part (rows aside, see [`encode_metrics`]).
/// Every statement sends `calls` and every relation `seq_scan` (even zero),
/// so that each key arrives; other zero counters are left out.
fn encode_db(db: &DbStats, p: &Points, metrics: &mut Vec<Metric>) {
    let (mut calls, mut exec, mut plan) = (Vec::new(), Vec::new(), Vec::new());
    let mut blocks: Vec<Vec<NumberDataPoint>> = PGSS_BLOCKS.iter().map(|_| Vec::new()).collect();
    for (k, d) in &db.statements {
        let a = pgss_attributes(k);
        calls.push(p.count(a.clone(), d.calls));
        if !d.exec_time.is_zero() {
            exec.push(p.seconds(a.clone(), d.exec_time));
        }
        if !d.plan_time.is_zero() {
            plan.push(p.seconds(a.clone(), d.plan_time));
        }
        for (f, out) in PGSS_BLOCKS.iter().zip(&mut blocks) {
            let v = (f.get)(d);
            if v > 0 {
                out.push(p.count(a.clone(), v));
            }
        }
    }
    push_sum(metrics, names::METRIC_STATEMENT_CALLS, "{call}", "Calls of a statement (pg_stat_statements).", calls);
    push_sum(
        metrics,
        names::METRIC_STATEMENT_EXEC_TIME,
        "s",
        "Execution time of a statement (pg_stat_statements).",
        exec,
    );
    push_sum(
        metrics,
        names::METRIC_STATEMENT_PLAN_TIME,
        "s",
        "Planning time of a statement (pg_stat_statements).",
        plan,
    );
    for (f, points) in PGSS_BLOCKS.iter().zip(blocks) {
        push_sum(metrics, f.name, f.unit, f.description, points);
    }

    let mut tables: Vec<Vec<NumberDataPoint>> = TABLE_COUNTERS.iter().map(|_| Vec::new()).collect();
    let mut sizes = Vec::new();
    for (k, d) in &db.tables {
        let a = table_attributes(k);
        for (i, (f, out)) in TABLE_COUNTERS.iter().zip(&mut tables).enumerate() {
            let v = (f.get)(d);
            if i == 0 || v > 0 {
                out.push(p.count(a.clone(), v));
            }
        }
        if let Some(size) = d.size_bytes {
            sizes.push(p.count(a, size));
        }
    }
    for (f, points) in TABLE_COUNTERS.iter().zip(tables) {
        push_sum(metrics, f.name, f.unit, f.description, points);
    }
    if !sizes.is_empty() {
        let data = Data::Gauge(Gauge { data_points: sizes });
        metrics.push(metric(names::METRIC_TABLE_SIZE, "By", "Size of a relation's main fork.", data));
    }

    let activity: Vec<_> = db.activity.iter().map(|(k, n)| p.count(activity_attributes(k), *n)).collect();
    push_sum(
        metrics,
        names::METRIC_ACTIVITY_SAMPLES,
        "{sample}",
        "Sampled non-idle backends, by wait event, state and statement.",
        activity,
    );
}

/// The agent's own health ([`AgentHealth`]).
fn encode_agent(h: &AgentHealth, p: &Points, metrics: &mut Vec<Metric>) {
    let (mut bytes, mut lines) = (Vec::new(), Vec::new());
    for (name, r) in &h.files {
        let a = vec![kv_str(names::QW_LOG_FILE, name)];
        bytes.push(p.count(a.clone(), r.bytes));
        lines.push(p.count(a, r.lines));
    }
    push_sum(metrics, names::METRIC_AGENT_FILE_BYTES_READ, "By", "Log bytes read, per file name.", bytes);
    push_sum(metrics, names::METRIC_AGENT_FILE_LINES_READ, "{line}", "Log lines read, per file name.", lines);
    let failures = FAILURE_CLASSES.iter().map(|f| p.count(vec![kv_str(names::QW_FAILURE_CLASS, f.class)], (f.get)(h)));
    push_sum(
        metrics,
        names::METRIC_AGENT_EXPORT_FAILURES,
        "{failure}",
        "Failed exports by class: retryable attempts, throttled attempts, batches refused for good.",
        failures.collect(),
    );
    for f in AGENT_COUNTERS {
        push_sum(metrics, f.name, f.unit, f.description, vec![p.count(Vec::new(), (f.get)(h))]);
    }
    let gauges = [
        (names::METRIC_AGENT_SPOOL_BATCHES, "{batch}", "Batches waiting in the on-disk spool.", h.spool_batches),
        (names::METRIC_AGENT_SPOOL_SIZE, "By", "Bytes of the on-disk spool.", h.spool_bytes),
        (
            names::METRIC_AGENT_EXPORT_LAST_SUCCESS,
            "s",
            "When the collector last accepted a request, in Unix seconds.",
            h.last_export_unix_s,
        ),
    ];
    for (name, unit, description, v) in gauges {
        if let Some(v) = v {
            let data = Data::Gauge(Gauge { data_points: vec![p.count(Vec::new(), v)] });
            metrics.push(metric(name, unit, description, data));
        }
    }
}

/// Everything in `obs` as OTLP metrics from `resource`, for the interval
/// `(start, end)` in Unix nanoseconds (the data points' start and time).
pub fn encode_metrics(
    obs: &Observations,
    resource: &ResourceInfo,
    interval: (u64, u64),
) -> ExportMetricsServiceRequest {
    let p = Points { start: interval.0, end: interval.1 };
    let mut metrics = Vec::new();

    let mut statements: Vec<_> = obs.statements.iter().collect();
    statements.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (mut durations, mut errors, mut temp_files, mut temp_bytes, mut rows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, s) in statements {
        let a = attrs::statement_attributes(key);
        if s.calls > 0 {
            durations.push(p.duration(a.clone(), s));
        }
        for (state, e) in s.errors.iter().filter(|(_, e)| e.count > 0) {
            errors.push(p.count(with(a.clone(), names::DB_RESPONSE_STATUS_CODE, state), e.count));
        }
        if s.temp_files > 0 {
            temp_files.push(p.count(a.clone(), s.temp_files));
        }
        if s.temp_bytes > 0 {
            temp_bytes.push(p.count(a.clone(), s.temp_bytes));
        }
        if let Some(r) = s.rows {
            rows.push(p.count(a, r));
        }
    }
    // pg_stat_statements rows share the metric, told apart by the source.
    for (k, d) in &obs.db.statements {
        if d.rows > 0 {
            rows.push(p.count(pgss_attributes(k), d.rows));
        }
    }
    if !durations.is_empty() {
        let data = Data::ExponentialHistogram(ExponentialHistogram {
            data_points: durations,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        });
        metrics.push(metric(names::METRIC_QUERY_DURATION, "s", "Statement execution time.", data));
    }
    push_sum(
        &mut metrics,
        names::METRIC_STATEMENT_ERRORS,
        "{error}",
        "Errors raised by a statement, by SQLSTATE.",
        errors,
    );
    push_sum(
        &mut metrics,
        names::METRIC_STATEMENT_TEMP_FILES,
        "{file}",
        "Temporary files written by a statement.",
        temp_files,
    );
    push_sum(
        &mut metrics,
        names::METRIC_STATEMENT_TEMP_BYTES,
        "By",
        "Bytes of temporary files written by a statement.",
        temp_bytes,
    );
    push_sum(&mut metrics, names::METRIC_STATEMENT_ROWS, "{row}", "Rows returned or affected by a statement.", rows);
    encode_db(&obs.db, &p, &mut metrics);

    let unattributed: Vec<_> = obs
        .unattributed_errors
        .iter()
        .map(|(s, n)| p.count(vec![kv_str(names::DB_RESPONSE_STATUS_CODE, s)], *n))
        .collect();
    push_sum(
        &mut metrics,
        names::METRIC_UNATTRIBUTED_ERRORS,
        "{error}",
        "Errors with no statement to attribute them to.",
        unattributed,
    );
    let nonzero = |n: u64| if n > 0 { vec![p.count(Vec::new(), n)] } else { Vec::new() };
    push_sum(
        &mut metrics,
        names::METRIC_UNATTRIBUTED_TEMP_FILES,
        "{file}",
        "Temporary files with no statement to attribute them to.",
        nonzero(obs.unattributed_temp_files),
    );
    push_sum(
        &mut metrics,
        names::METRIC_UNATTRIBUTED_TEMP_BYTES,
        "By",
        "Bytes of temporary files with no statement to attribute them to.",
        nonzero(obs.unattributed_temp_bytes),
    );

    let mut locks: Vec<_> = obs.locks.iter().collect();
    locks.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (mut waits, mut deadlocks, mut acquired, mut acquired_wait, mut max_wait) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, l) in locks {
        let a = lock_attributes(k);
        // Zero counters are left out (zero is what a missing point decodes
        // to); the gauge is always sent, so the lock group always arrives.
        if l.waits > 0 {
            waits.push(p.count(a.clone(), l.waits));
        }
        if l.deadlocks > 0 {
            deadlocks.push(p.count(a.clone(), l.deadlocks));
        }
        if l.acquired > 0 {
            acquired.push(p.count(a.clone(), l.acquired));
        }
        if !l.acquired_wait.is_zero() {
            acquired_wait.push(p.seconds(a.clone(), l.acquired_wait));
        }
        max_wait.push(p.seconds(a, l.max_wait));
    }
    push_sum(&mut metrics, names::METRIC_LOCK_WAITS, "{wait}", "Lock waits reported past deadlock_timeout.", waits);
    push_sum(&mut metrics, names::METRIC_LOCK_DEADLOCKS, "{deadlock}", "Deadlocks detected.", deadlocks);
    push_sum(&mut metrics, names::METRIC_LOCK_ACQUIRED, "{lock}", "Waited-for locks that were granted.", acquired);
    push_sum(&mut metrics, names::METRIC_LOCK_ACQUIRED_WAIT, "s", "Total wait of the granted locks.", acquired_wait);
    if !max_wait.is_empty() {
        let data = Data::Gauge(Gauge { data_points: max_wait });
        metrics.push(metric(names::METRIC_LOCK_MAX_WAIT, "s", "Longest lock wait reported.", data));
    }

    let classes: Vec<_> =
        obs.classes.iter().map(|(class, n)| p.count(vec![kv_str(names::QW_LOG_CLASS, class)], *n)).collect();
    push_sum(&mut metrics, names::METRIC_LOG_ENTRIES, "{entry}", "Log entries by message class.", classes);

    // Health counters go out even when zero: "read nothing" is news.
    for c in INPUT_COUNTERS {
        push_sum(&mut metrics, c.name, c.unit, c.description, vec![p.count(Vec::new(), (c.get)(&obs.input))]);
    }
    let overflow = vec![
        p.count(vec![kv_str(names::QW_OVERFLOW_KIND, names::QW_OVERFLOW_STATEMENTS)], obs.overflow_calls),
        p.count(vec![kv_str(names::QW_OVERFLOW_KIND, names::QW_OVERFLOW_LOCKS)], obs.overflow_locks),
    ];
    push_sum(
        &mut metrics,
        names::METRIC_AGENT_OVERFLOW,
        "{event}",
        "Calls and lock events folded into an overflow bucket.",
        overflow,
    );
    encode_agent(&obs.agent, &p, &mut metrics);

    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.to_otlp()),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// The querywatch data in `req`, one [`Observations`] per resource that sent
/// any (see [`super`] for what is strict and what is skipped). Statement and
/// batch `first_seen`/`last_seen` become the data points' interval.
pub fn decode_metrics(req: &ExportMetricsServiceRequest) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    for rm in &req.resource_metrics {
        let mut obs = Observations::default();
        let mut tally = Tally::default();
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            decode_metric(m, &mut obs, &mut tally)?;
        }
        out.ignored += tally.ignored;
        // The resource is read only when it sent something of ours: a
        // foreign resource without `querywatch.node` is not an error.
        if tally.ours > 0 {
            out.batches.push((ResourceInfo::from_otlp(rm.resource.as_ref())?, obs));
        }
    }
    Ok(out)
}

/// Data points used and skipped.
#[derive(Default)]
pub(super) struct Tally {
    pub ours: u64,
    pub ignored: u64,
}

pub(super) fn decode_metric(m: &Metric, obs: &mut Observations, n: &mut Tally) -> Result<(), DecodeError> {
    let item = m.name.as_str();
    match item {
        names::METRIC_QUERY_DURATION => {
            for p in exp_histogram(m)? {
                duration_point(&p.attributes, &ExpView::from(p), p.start_time_unix_nano, p.time_unix_nano, obs, n)?;
            }
        }
        names::METRIC_STATEMENT_ERRORS
        | names::METRIC_STATEMENT_TEMP_FILES
        | names::METRIC_STATEMENT_TEMP_BYTES
        | names::METRIC_STATEMENT_ROWS => {
            for p in delta_sum_points(m)? {
                if item == names::METRIC_STATEMENT_ROWS
                    && attrs::req_str(&p.attributes, names::QW_SOURCE, item)? == names::QW_SOURCE_STATEMENTS
                {
                    let key = pgss_key(&p.attributes, item)?;
                    pgss_point(obs, key, item, p)?;
                    n.ours += 1;
                    continue;
                }
                let Some(key) = attrs::statement_key(&p.attributes, item)? else {
                    n.ignored += 1;
                    continue;
                };
                let v = count(item, p)?;
                let state = match item {
                    names::METRIC_STATEMENT_ERRORS => {
                        attrs::req_str(&p.attributes, names::DB_RESPONSE_STATUS_CODE, item)?
                    }
                    _ => "",
                };
                let s = statement(obs, key, p.start_time_unix_nano, p.time_unix_nano);
                match item {
                    names::METRIC_STATEMENT_ERRORS => s.errors.entry(state.to_owned()).or_default().count += v,
                    names::METRIC_STATEMENT_TEMP_FILES => s.temp_files += v,
                    names::METRIC_STATEMENT_TEMP_BYTES => s.temp_bytes += v,
                    _ => s.rows = Some(s.rows.unwrap_or(0) + v),
                }
                n.ours += 1;
            }
        }
        names::METRIC_UNATTRIBUTED_ERRORS => {
            for p in delta_sum_points(m)? {
                let state = attrs::req_str(&p.attributes, names::DB_RESPONSE_STATUS_CODE, item)?;
                *obs.unattributed_errors.entry(state.to_owned()).or_default() += count(item, p)?;
                see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
                n.ours += 1;
            }
        }
        names::METRIC_UNATTRIBUTED_TEMP_FILES | names::METRIC_UNATTRIBUTED_TEMP_BYTES => {
            for p in delta_sum_points(m)? {
                let v = count(item, p)?;
                match item {
                    names::METRIC_UNATTRIBUTED_TEMP_FILES => obs.unattributed_temp_files += v,
                    _ => obs.unattributed_temp_bytes += v,
                }
                see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
                n.ours += 1;
            }
        }
        names::METRIC_LOCK_WAITS
        | names::METRIC_LOCK_DEADLOCKS
        | names::METRIC_LOCK_ACQUIRED
        | names::METRIC_LOCK_ACQUIRED_WAIT
        | names::METRIC_LOCK_MAX_WAIT => {
            let points = match item {
                names::METRIC_LOCK_MAX_WAIT => gauge_points(m)?,
                _ => delta_sum_points(m)?,
            };
            for p in points {
                let key = LockKey {
                    database: attrs::req_str(&p.attributes, names::DB_NAMESPACE, item)?.to_owned(),
                    waiter: attrs::req_str(&p.attributes, names::QW_LOCK_WAITER, item)?.to_owned(),
                    blocker: attrs::req_str(&p.attributes, names::QW_LOCK_BLOCKER, item)?.to_owned(),
                    mode: attrs::req_str(&p.attributes, names::QW_LOCK_MODE, item)?.to_owned(),
                    object: attrs::req_str(&p.attributes, names::QW_LOCK_OBJECT, item)?.to_owned(),
                };
                let l = obs.locks.entry(key).or_default();
                match item {
                    names::METRIC_LOCK_WAITS => l.waits += count(item, p)?,
                    names::METRIC_LOCK_DEADLOCKS => l.deadlocks += count(item, p)?,
                    names::METRIC_LOCK_ACQUIRED => l.acquired += count(item, p)?,
                    names::METRIC_LOCK_ACQUIRED_WAIT => l.acquired_wait += seconds(item, p)?,
                    _ => l.max_wait = l.max_wait.max(seconds(item, p)?),
                }
                see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
                n.ours += 1;
            }
        }
        names::METRIC_LOG_ENTRIES => {
            for p in delta_sum_points(m)? {
                let class = attrs::req_str(&p.attributes, names::QW_LOG_CLASS, item)?;
                // `classes` is keyed by the agent's static vocabulary.
                let class = names::LOG_CLASSES.iter().copied().find(|c| *c == class).unwrap_or("other");
                *obs.classes.entry(class).or_default() += count(item, p)?;
                see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
                n.ours += 1;
            }
        }
        names::METRIC_AGENT_OVERFLOW => {
            for p in delta_sum_points(m)? {
                let v = count(item, p)?;
                match attrs::req_str(&p.attributes, names::QW_OVERFLOW_KIND, item)? {
                    names::QW_OVERFLOW_STATEMENTS => obs.overflow_calls += v,
                    names::QW_OVERFLOW_LOCKS => obs.overflow_locks += v,
                    _ => {
                        n.ignored += 1;
                        continue;
                    }
                }
                n.ours += 1;
            }
        }
        names::METRIC_STATEMENT_CALLS
        | names::METRIC_STATEMENT_EXEC_TIME
        | names::METRIC_STATEMENT_PLAN_TIME
        | names::METRIC_STATEMENT_SHARED_BLKS_HIT
        | names::METRIC_STATEMENT_SHARED_BLKS_READ
        | names::METRIC_STATEMENT_TEMP_BLKS_WRITTEN => {
            for p in delta_sum_points(m)? {
                // Only pg_stat_statements sends these; another source's
                // points are not ours to merge.
                if attrs::req_str(&p.attributes, names::QW_SOURCE, item)? != names::QW_SOURCE_STATEMENTS {
                    n.ignored += 1;
                    continue;
                }
                let key = pgss_key(&p.attributes, item)?;
                pgss_point(obs, key, item, p)?;
                n.ours += 1;
            }
        }
        names::METRIC_TABLE_SIZE => {
            for p in gauge_points(m)? {
                let size = count(item, p)?;
                let d = table(obs, table_key(&p.attributes, item)?, p);
                d.size_bytes = Some(d.size_bytes.map_or(size, |s| s.max(size)));
                n.ours += 1;
            }
        }
        names::METRIC_ACTIVITY_SAMPLES => {
            for p in delta_sum_points(m)? {
                let key = ActivityKey {
                    database: attrs::req_str(&p.attributes, names::DB_NAMESPACE, item)?.to_owned(),
                    wait_event_type: attrs::req_str(&p.attributes, names::QW_WAIT_EVENT_TYPE, item)?.to_owned(),
                    wait_event: attrs::req_str(&p.attributes, names::QW_WAIT_EVENT, item)?.to_owned(),
                    state: attrs::req_str(&p.attributes, names::QW_STATE, item)?.to_owned(),
                    text: attrs::req_str(&p.attributes, names::DB_QUERY_TEXT, item)?.to_owned(),
                };
                let v = count(item, p)?;
                see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
                let c = obs.db.activity.entry(key).or_default();
                *c = c.saturating_add(v);
                n.ours += 1;
            }
        }
        names::METRIC_AGENT_FILE_BYTES_READ | names::METRIC_AGENT_FILE_LINES_READ => {
            for p in delta_sum_points(m)? {
                let file = attrs::req_str(&p.attributes, names::QW_LOG_FILE, item)?;
                let v = count(item, p)?;
                let r = obs.agent.files.entry(file.to_owned()).or_default();
                let c = match item {
                    names::METRIC_AGENT_FILE_BYTES_READ => &mut r.bytes,
                    _ => &mut r.lines,
                };
                *c = c.saturating_add(v);
                n.ours += 1;
            }
        }
        names::METRIC_AGENT_EXPORT_FAILURES => {
            for p in delta_sum_points(m)? {
                let class = attrs::req_str(&p.attributes, names::QW_FAILURE_CLASS, item)?;
                let v = count(item, p)?;
                // A class this decoder does not know (a newer agent's) is
                // not ours to fold into another.
                let Some(f) = FAILURE_CLASSES.iter().find(|f| f.class == class) else {
                    n.ignored += 1;
                    continue;
                };
                let c = (f.get_mut)(&mut obs.agent);
                *c = c.saturating_add(v);
                n.ours += 1;
            }
        }
        names::METRIC_AGENT_SPOOL_BATCHES
        | names::METRIC_AGENT_SPOOL_SIZE
        | names::METRIC_AGENT_EXPORT_LAST_SUCCESS => {
            for p in gauge_points(m)? {
                let v = count(item, p)?;
                let h = &mut obs.agent;
                match item {
                    names::METRIC_AGENT_SPOOL_BATCHES => h.spool_batches = Some(v),
                    names::METRIC_AGENT_SPOOL_SIZE => h.spool_bytes = Some(v),
                    _ => h.last_export_unix_s = h.last_export_unix_s.max(Some(v)),
                }
                n.ours += 1;
            }
        }
        _ => {
            if let Some(f) = AGENT_COUNTERS.iter().find(|f| f.name == item) {
                for p in delta_sum_points(m)? {
                    let v = count(item, p)?;
                    let c = (f.get_mut)(&mut obs.agent);
                    *c = c.saturating_add(v);
                    n.ours += 1;
                }
            } else if let Some(c) = INPUT_COUNTERS.iter().find(|c| c.name == item) {
                for p in delta_sum_points(m)? {
                    *(c.get_mut)(&mut obs.input) += count(item, p)?;
                    n.ours += 1;
                }
            } else if let Some(f) = TABLE_COUNTERS.iter().find(|f| f.name == item) {
                for p in delta_sum_points(m)? {
                    let v = count(item, p)?;
                    let d = table(obs, table_key(&p.attributes, item)?, p);
                    let c = (f.get_mut)(d);
                    *c = c.saturating_add(v);
                    n.ours += 1;
                }
            } else {
                n.ignored += points(m);
            }
        }
    }
    Ok(())
}

/// The pg_stat_statements key of a `querywatch.source=statements` point.
fn pgss_key(a: &[KeyValue], item: &str) -> Result<PgssKey, DecodeError> {
    let queryid = attrs::req_str(a, names::QW_QUERYID, item)?;
    let queryid = queryid.parse().map_err(|_| DecodeError::Invalid {
        item: item.into(),
        reason: format!("{} {queryid:?} is not a 64-bit integer", names::QW_QUERYID),
    })?;
    Ok(PgssKey {
        database: attrs::req_str(a, names::DB_NAMESPACE, item)?.to_owned(),
        user: attrs::req_str(a, names::QW_DB_USER, item)?.to_owned(),
        queryid,
        toplevel: attrs::req_bool(a, names::QW_TOPLEVEL, item)?,
        text: attrs::req_str(a, names::DB_QUERY_TEXT, item)?.to_owned(),
    })
}

/// Adds one pg_stat_statements point (`item` names the counter).
fn pgss_point(obs: &mut Observations, key: PgssKey, item: &str, p: &NumberDataPoint) -> Result<(), DecodeError> {
    let mut add = PgssDelta::default();
    match item {
        names::METRIC_STATEMENT_CALLS => add.calls = count(item, p)?,
        names::METRIC_STATEMENT_EXEC_TIME => add.exec_time = seconds(item, p)?,
        names::METRIC_STATEMENT_PLAN_TIME => add.plan_time = seconds(item, p)?,
        names::METRIC_STATEMENT_ROWS => add.rows = count(item, p)?,
        _ => match PGSS_BLOCKS.iter().find(|f| f.name == item) {
            Some(f) => *(f.get_mut)(&mut add) = count(item, p)?,
            None => return Ok(()),
        },
    }
    see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
    obs.db.statements.entry(key).or_default().merge(&add);
    Ok(())
}

fn table_key(a: &[KeyValue], item: &str) -> Result<TableKey, DecodeError> {
    Ok(TableKey {
        database: attrs::req_str(a, names::DB_NAMESPACE, item)?.to_owned(),
        relation: attrs::req_str(a, names::DB_COLLECTION_NAME, item)?.to_owned(),
        parent: attrs::req_str(a, names::QW_PARTITION_PARENT, item)?.to_owned(),
    })
}

/// The entry of relation `key`, marked as seen in the point's interval.
fn table<'a>(obs: &'a mut Observations, key: TableKey, p: &NumberDataPoint) -> &'a mut TableDelta {
    see(&mut obs.first_seen, &mut obs.last_seen, p.start_time_unix_nano, p.time_unix_nano);
    obs.db.tables.entry(key).or_default()
}

/// One `querywatch.query.duration` point into `obs` (or counted as not
/// ours): shared by this decoder and the in-place one.
pub(super) fn duration_point<A: attrs::Attrs + ?Sized>(
    attributes: &A,
    p: &ExpView<'_>,
    start: u64,
    end: u64,
    obs: &mut Observations,
    n: &mut Tally,
) -> Result<(), DecodeError> {
    let item = names::METRIC_QUERY_DURATION;
    let Some(key) = attrs::statement_key(attributes, item)? else {
        n.ignored += 1;
        return Ok(());
    };
    if let Some(part) = duration_stats(item, p)? {
        add_statement(obs, key, start, end, part);
    }
    n.ours += 1;
    Ok(())
}

/// The entry of statement `key`, marked as seen in the interval.
fn statement(obs: &mut Observations, key: crate::StatementKey, start: u64, end: u64) -> &mut StatementStats {
    see(&mut obs.first_seen, &mut obs.last_seen, start, end);
    let s = obs.statements.entry(key).or_default();
    see(&mut s.first_seen, &mut s.last_seen, start, end);
    s
}

/// [`statement`] followed by a merge of `part`, except that a statement
/// new to the batch (the rule: one point per statement per request)
/// becomes `part` itself, without a default to merge it into.
fn add_statement(obs: &mut Observations, key: crate::StatementKey, start: u64, end: u64, part: StatementStats) {
    see(&mut obs.first_seen, &mut obs.last_seen, start, end);
    let s = match obs.statements.entry(key) {
        Entry::Occupied(e) => {
            let s = e.into_mut();
            s.merge(&part);
            s
        }
        Entry::Vacant(e) => e.insert(part),
    };
    see(&mut s.first_seen, &mut s.last_seen, start, end);
}

fn see(first: &mut Option<EpochMillis>, last: &mut Option<EpochMillis>, start: u64, end: u64) {
    for t in [start, end].into_iter().filter_map(attrs::epoch_millis) {
        *first = Some(first.map_or(t, |f| f.min(t)));
        *last = Some(last.map_or(t, |l| l.max(t)));
    }
}

/// What [`duration_stats`] reads of an exponential-histogram data point:
/// a prost message's fields, or the in-place decoder's ([`super::raw`]).
pub(super) struct ExpView<'a> {
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub scale: i32,
    pub zero_count: u64,
    pub offset: i32,
    pub positive: Counts<'a>,
    pub negative: Counts<'a>,
}

impl<'a> From<&'a ExponentialHistogramDataPoint> for ExpView<'a> {
    fn from(p: &'a ExponentialHistogramDataPoint) -> Self {
        let counts = |b: &'a Option<Buckets>| Counts::Slice(b.as_ref().map_or(&[][..], |b| &b.bucket_counts[..]));

        ExpView {
            count: p.count,
            sum: p.sum,
            min: p.min,
            max: p.max,
            scale: p.scale,
            zero_count: p.zero_count,
            offset: p.positive.as_ref().map_or(0, |b| b.offset),
            positive: counts(&p.positive),
            negative: counts(&p.negative),
        }
    }
}

/// A `querywatch.query.duration` point as statistics; `None` when empty.
pub(super) fn duration_stats(item: &str, p: &ExpView<'_>) -> Result<Option<StatementStats>, DecodeError> {
    let invalid = |reason: String| DecodeError::Invalid { item: item.into(), reason };
    if !expo::SCALES.contains(&p.scale) {
        return Err(invalid(format!("scale {} is outside OTLP's {:?}", p.scale, expo::SCALES)));
    }
    if p.negative.nonzero().next().is_some() {
        return Err(invalid("negative durations".into()));
    }
    // `calls` comes from `count` and the percentiles from the buckets: they
    // must agree, or the two would tell different stories.
    let held = p.positive.nonzero().try_fold(p.zero_count, |a, (_, n)| a.checked_add(n));
    if held != Some(p.count) {
        return Err(invalid(format!("the buckets hold {held:?} values, count is {}", p.count)));
    }
    if p.count == 0 {
        return Ok(None);
    }
    let field = |name: &'static str, v: Option<f64>| {
        let v = v.ok_or_else(|| DecodeError::MissingField { item: item.into(), field: name })?;
        attrs::duration_from_secs(v).ok_or_else(|| invalid(format!("{name} {v} is not a duration")))
    };
    let (total, min, max) = (field("sum", p.sum)?, field("min", p.min)?, field("max", p.max)?);
    if min > max {
        return Err(invalid(format!("min {min:?} > max {max:?}")));
    }
    Ok(Some(StatementStats {
        calls: p.count,
        total,
        min: Some(min),
        max,
        hist: expo::to_hdr(p.zero_count, p.offset, p.positive.nonzero(), p.scale),
        ..StatementStats::default()
    }))
}

fn data_kind(m: &Metric) -> &'static str {
    match &m.data {
        None => "no",
        Some(Data::Gauge(_)) => "gauge",
        Some(Data::Sum(_)) => "sum",
        Some(Data::Histogram(_)) => "histogram",
        Some(Data::ExponentialHistogram(_)) => "exponential histogram",
        Some(Data::Summary(_)) => "summary",
    }
}

/// Number of data points of any metric (what skipping it skips).
pub fn points(m: &Metric) -> u64 {
    let n = match &m.data {
        None => 0,
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
    };
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn wrong_type(m: &Metric, expected: &'static str) -> DecodeError {
    DecodeError::DataType { item: m.name.clone(), expected, found: data_kind(m) }
}

fn check_delta(m: &Metric, temporality: i32) -> Result<(), DecodeError> {
    if temporality == AggregationTemporality::Delta as i32 {
        return Ok(());
    }
    let found = AggregationTemporality::try_from(temporality)
        .map_or_else(|_| temporality.to_string(), |t| t.as_str_name().into());
    Err(DecodeError::Temporality { item: m.name.clone(), found })
}

fn exp_histogram(m: &Metric) -> Result<&[ExponentialHistogramDataPoint], DecodeError> {
    match &m.data {
        Some(Data::ExponentialHistogram(h)) => check_delta(m, h.aggregation_temporality).map(|()| &h.data_points[..]),
        _ => Err(wrong_type(m, "exponential histogram")),
    }
}

fn delta_sum_points(m: &Metric) -> Result<&[NumberDataPoint], DecodeError> {
    match &m.data {
        Some(Data::Sum(s)) => check_delta(m, s.aggregation_temporality).map(|()| &s.data_points[..]),
        _ => Err(wrong_type(m, "sum")),
    }
}

fn gauge_points(m: &Metric) -> Result<&[NumberDataPoint], DecodeError> {
    match &m.data {
        Some(Data::Gauge(g)) => Ok(&g.data_points),
        _ => Err(wrong_type(m, "gauge")),
    }
}

/// A counter value: a non-negative `as_int`.
fn count(item: &str, p: &NumberDataPoint) -> Result<u64, DecodeError> {
    match p.value {
        Some(NumberValue::AsInt(i)) => u64::try_from(i)
            .map_err(|_| DecodeError::Invalid { item: item.into(), reason: format!("negative count {i}") }),
        Some(NumberValue::AsDouble(d)) => {
            Err(DecodeError::Invalid { item: item.into(), reason: format!("count {d} is a double, not an int") })
        }
        None => Err(DecodeError::MissingField { item: item.into(), field: "value" }),
    }
}

/// A time in seconds: `as_double` (or a whole `as_int`), non-negative.
fn seconds(item: &str, p: &NumberDataPoint) -> Result<Duration, DecodeError> {
    let invalid = |v: String| DecodeError::Invalid { item: item.into(), reason: format!("{v} s is not a duration") };
    match p.value {
        Some(NumberValue::AsDouble(d)) => attrs::duration_from_secs(d).ok_or_else(|| invalid(d.to_string())),
        Some(NumberValue::AsInt(i)) => u64::try_from(i).map(Duration::from_secs).map_err(|_| invalid(i.to_string())),
        None => Err(DecodeError::MissingField { item: item.into(), field: "value" }),
    }
}
