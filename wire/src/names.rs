//! Attribute, metric and event names of the wire contract.
//!
//! OpenTelemetry semantic conventions where a name exists (resource,
//! database), `querywatch.` otherwise (see DESIGN.md, "Wire contract"). Both
//! binaries and the OTLP codec ([`crate::otlp`]) use these constants, so a
//! rename is one edit and a typo is a compile error.

// --- Resource -------------------------------------------------------------

pub const SERVICE_NAME: &str = "service.name";
/// `service.name` of every agent.
pub const SERVICE_NAME_AGENT: &str = "querywatch-agent";
pub const SERVICE_VERSION: &str = "service.version";
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
pub const HOST_NAME: &str = "host.name";
pub const DB_SYSTEM_NAME: &str = "db.system.name";
pub const DB_SYSTEM_POSTGRESQL: &str = "postgresql";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const QW_NODE: &str = "querywatch.node";
pub const QW_CLUSTER: &str = "querywatch.cluster";

/// Instrumentation scope of everything the agent exports.
pub const SCOPE_NAME: &str = "querywatch";

// --- Data point and log record attributes ---------------------------------

pub const DB_NAMESPACE: &str = "db.namespace";
pub const DB_QUERY_TEXT: &str = "db.query.text";
pub const DB_QUERY_SUMMARY: &str = "db.query.summary";
pub const DB_OPERATION_NAME: &str = "db.operation.name";
pub const DB_COLLECTION_NAME: &str = "db.collection.name";
pub const DB_RESPONSE_STATUS_CODE: &str = "db.response.status_code";

pub const QW_DB_USER: &str = "querywatch.db.user";
pub const QW_SOURCE: &str = "querywatch.source";
/// `querywatch.source` of statistics built from the server log.
pub const QW_SOURCE_LOG: &str = "log";
/// `querywatch.source` of statistics built from `pg_stat_statements`.
pub const QW_SOURCE_STATEMENTS: &str = "statements";
pub const QW_PARTITION_PARENT: &str = "querywatch.partition.parent";
/// pg_stat_statements' `queryid` (as a string) and `toplevel` (a bool).
pub const QW_QUERYID: &str = "querywatch.queryid";
pub const QW_TOPLEVEL: &str = "querywatch.toplevel";
/// pg_stat_activity sample attributes (empty string for NULL).
pub const QW_WAIT_EVENT_TYPE: &str = "querywatch.wait_event_type";
pub const QW_WAIT_EVENT: &str = "querywatch.wait_event";
pub const QW_STATE: &str = "querywatch.state";
/// Message class of a log entry (one of [`LOG_CLASSES`]).
pub const QW_LOG_CLASS: &str = "querywatch.log.class";
/// Lock-group attributes (see `observations::LockKey`); `db.namespace` too.
pub const QW_LOCK_WAITER: &str = "querywatch.lock.waiter";
pub const QW_LOCK_BLOCKER: &str = "querywatch.lock.blocker";
pub const QW_LOCK_MODE: &str = "querywatch.lock.mode";
pub const QW_LOCK_OBJECT: &str = "querywatch.lock.object";
/// What overflowed a cap: [`QW_OVERFLOW_STATEMENTS`] or [`QW_OVERFLOW_LOCKS`].
pub const QW_OVERFLOW_KIND: &str = "querywatch.overflow.kind";
pub const QW_OVERFLOW_STATEMENTS: &str = "statements";
pub const QW_OVERFLOW_LOCKS: &str = "locks";
/// Name (not path) of a log file the agent read, or [`OVERFLOW_TEXT`] for
/// the files past the per-interval cap (`health::MAX_FILES`).
pub const QW_LOG_FILE: &str = "querywatch.log.file";
/// Class of a failed export (one of the `QW_FAILURE_*` values).
pub const QW_FAILURE_CLASS: &str = "querywatch.failure.class";
pub const QW_FAILURE_RETRYABLE: &str = "retryable";
pub const QW_FAILURE_THROTTLED: &str = "throttled";
pub const QW_FAILURE_PERMANENT: &str = "permanent";
/// Duration of the sampled execution, in milliseconds (double).
pub const QW_DURATION_MS: &str = "querywatch.duration_ms";
/// Masked plan of the slowest planned execution, its format (`json` | `text`),
/// its duration (ms, double) and time (Unix ms, int): the plan's execution is
/// not necessarily the sample's.
pub const QW_PLAN_TEXT: &str = "querywatch.plan.text";
pub const QW_PLAN_FORMAT: &str = "querywatch.plan.format";
pub const QW_PLAN_DURATION_MS: &str = "querywatch.plan.duration_ms";
pub const QW_PLAN_TIMESTAMP_MS: &str = "querywatch.plan.timestamp_ms";
/// The pre-1.5 OTLP way to name an event (an attribute); read as a fallback
/// for `LogRecord.event_name`.
pub const EVENT_NAME_ATTRIBUTE: &str = "event.name";

// --- Metrics --------------------------------------------------------------

/// Exponential histogram, seconds, one data point per statement shape.
pub const METRIC_QUERY_DURATION: &str = "querywatch.query.duration";
/// Sums per statement shape (statement attributes; errors also by SQLSTATE).
pub const METRIC_STATEMENT_ERRORS: &str = "querywatch.statement.errors";
pub const METRIC_STATEMENT_TEMP_FILES: &str = "querywatch.statement.temp_files";
pub const METRIC_STATEMENT_TEMP_BYTES: &str = "querywatch.statement.temp_bytes";
pub const METRIC_STATEMENT_ROWS: &str = "querywatch.statement.rows";
/// Sums from pg_stat_statements deltas (`querywatch.source=statements`;
/// `querywatch.statement.rows` is shared with the log source and told apart
/// by `querywatch.source`).
pub const METRIC_STATEMENT_CALLS: &str = "querywatch.statement.calls";
pub const METRIC_STATEMENT_EXEC_TIME: &str = "querywatch.statement.exec_time";
pub const METRIC_STATEMENT_PLAN_TIME: &str = "querywatch.statement.plan_time";
pub const METRIC_STATEMENT_SHARED_BLKS_HIT: &str = "querywatch.statement.shared_blks_hit";
pub const METRIC_STATEMENT_SHARED_BLKS_READ: &str = "querywatch.statement.shared_blks_read";
pub const METRIC_STATEMENT_TEMP_BLKS_WRITTEN: &str = "querywatch.statement.temp_blks_written";
/// Sums from pg_stat_user_tables / pg_statio_user_tables deltas per relation.
pub const METRIC_TABLE_SEQ_SCAN: &str = "querywatch.table.seq_scan";
pub const METRIC_TABLE_SEQ_TUP_READ: &str = "querywatch.table.seq_tup_read";
pub const METRIC_TABLE_IDX_SCAN: &str = "querywatch.table.idx_scan";
pub const METRIC_TABLE_N_TUP_INS: &str = "querywatch.table.n_tup_ins";
pub const METRIC_TABLE_N_TUP_UPD: &str = "querywatch.table.n_tup_upd";
pub const METRIC_TABLE_N_TUP_DEL: &str = "querywatch.table.n_tup_del";
pub const METRIC_TABLE_HEAP_BLKS_READ: &str = "querywatch.table.heap_blks_read";
pub const METRIC_TABLE_HEAP_BLKS_HIT: &str = "querywatch.table.heap_blks_hit";
/// Gauge: `pg_relation_size` in bytes.
pub const METRIC_TABLE_SIZE: &str = "querywatch.table.size";
/// Sampled non-idle backends, by wait event, state and statement.
pub const METRIC_ACTIVITY_SAMPLES: &str = "querywatch.activity.samples";
/// Sums of what the log could not tie to a statement.
pub const METRIC_UNATTRIBUTED_ERRORS: &str = "querywatch.unattributed.errors";
pub const METRIC_UNATTRIBUTED_TEMP_FILES: &str = "querywatch.unattributed.temp_files";
pub const METRIC_UNATTRIBUTED_TEMP_BYTES: &str = "querywatch.unattributed.temp_bytes";
/// Per lock group: sums, and the longest wait as a gauge (seconds).
pub const METRIC_LOCK_WAITS: &str = "querywatch.lock.waits";
pub const METRIC_LOCK_DEADLOCKS: &str = "querywatch.lock.deadlocks";
pub const METRIC_LOCK_ACQUIRED: &str = "querywatch.lock.acquired";
pub const METRIC_LOCK_ACQUIRED_WAIT: &str = "querywatch.lock.acquired_wait";
pub const METRIC_LOCK_MAX_WAIT: &str = "querywatch.lock.max_wait";
/// Log entries by message class.
pub const METRIC_LOG_ENTRIES: &str = "querywatch.log.entries";
/// The agent's own health: what it read and what it could not use.
pub const METRIC_AGENT_FILES_READ: &str = "querywatch.agent.files_read";
pub const METRIC_AGENT_BYTES_READ: &str = "querywatch.agent.bytes_read";
pub const METRIC_AGENT_LINES_READ: &str = "querywatch.agent.lines_read";
pub const METRIC_AGENT_ENTRIES_READ: &str = "querywatch.agent.entries_read";
pub const METRIC_AGENT_PARSE_FAILURES: &str = "querywatch.agent.parse_failures";
pub const METRIC_AGENT_TRUNCATED: &str = "querywatch.agent.truncated";
pub const METRIC_AGENT_INVALID_UTF8: &str = "querywatch.agent.invalid_utf8";
pub const METRIC_AGENT_UNATTRIBUTED_DURATIONS: &str = "querywatch.agent.unattributed_durations";
pub const METRIC_AGENT_UNREADABLE_FILES: &str = "querywatch.agent.unreadable_files";
pub const METRIC_AGENT_SESSIONS_FORGOTTEN: &str = "querywatch.agent.sessions_forgotten";
pub const METRIC_AGENT_SESSION_TEXTS_DROPPED: &str = "querywatch.agent.session_texts_dropped";
/// Calls / lock events folded into an overflow bucket, by [`QW_OVERFLOW_KIND`].
pub const METRIC_AGENT_OVERFLOW: &str = "querywatch.agent.overflow";
/// The agent's health beyond its input (`health::AgentHealth`): reads per
/// log file (by [`QW_LOG_FILE`]), export failures (by [`QW_FAILURE_CLASS`]),
/// retries, the spool, the last successful export, the statistics poller's
/// connection. Sums (DELTA) unless said otherwise.
pub const METRIC_AGENT_FILE_BYTES_READ: &str = "querywatch.agent.file.bytes_read";
pub const METRIC_AGENT_FILE_LINES_READ: &str = "querywatch.agent.file.lines_read";
pub const METRIC_AGENT_EXPORT_FAILURES: &str = "querywatch.agent.export.failures";
pub const METRIC_AGENT_EXPORT_RETRIES: &str = "querywatch.agent.export.retries";
/// Gauge, Unix seconds.
pub const METRIC_AGENT_EXPORT_LAST_SUCCESS: &str = "querywatch.agent.export.last_success";
pub const METRIC_AGENT_SPOOL_DROPPED_BATCHES: &str = "querywatch.agent.spool.dropped_batches";
pub const METRIC_AGENT_SPOOL_DROPPED_BYTES: &str = "querywatch.agent.spool.dropped_bytes";
/// Gauges: the spool at the interval's end.
pub const METRIC_AGENT_SPOOL_BATCHES: &str = "querywatch.agent.spool.batches";
pub const METRIC_AGENT_SPOOL_SIZE: &str = "querywatch.agent.spool.size";
pub const METRIC_AGENT_POLLER_RECONNECTS: &str = "querywatch.agent.poller.reconnects";
pub const METRIC_AGENT_POLLER_CONNECT_FAILURES: &str = "querywatch.agent.poller.connect_failures";
pub const METRIC_AGENT_POLLER_CONNECTIONS_LOST: &str = "querywatch.agent.poller.connections_lost";
pub const METRIC_AGENT_POLLER_POLL_FAILURES: &str = "querywatch.agent.poller.poll_failures";

// --- Log events -----------------------------------------------------------

pub const EVENT_QUERY_SAMPLE: &str = "querywatch.query.sample";
pub const EVENT_LOCK_WAIT: &str = "querywatch.lock.wait";
pub const EVENT_TEMP_FILE: &str = "querywatch.temp.file";
pub const EVENT_QUERY_ERROR: &str = "querywatch.query.error";

/// The statement text under which statements past a shape cap are folded.
pub const OVERFLOW_TEXT: &str = "<other>";

/// Every message class the agent counts (`Observations::classes` keys).
///
/// `Observations` keys classes by `&'static str`, so a decoder maps the wire
/// string back onto this list; a class missing here arrives as `other`.
/// Keep in step with the agent's `events::class` (plus `plan_unparsed`).
pub const LOG_CLASSES: &[&str] = &[
    "duration",
    "statement",
    "plan",
    "plan_unparsed",
    "error",
    "lock_wait",
    "deadlock",
    "temp_file",
    "connection",
    "disconnection",
    "checkpoint",
    "autovacuum",
    "warning",
    "other",
];
