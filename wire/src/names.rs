//! Attribute and metric names of the wire contract.
//!
//! OpenTelemetry database semantic conventions where a name exists,
//! `querywatch.` otherwise (see DESIGN.md, "Wire contract").

pub const DB_SYSTEM_NAME: &str = "db.system.name";
pub const DB_SYSTEM_POSTGRESQL: &str = "postgresql";
pub const DB_NAMESPACE: &str = "db.namespace";
pub const DB_QUERY_TEXT: &str = "db.query.text";
pub const DB_QUERY_SUMMARY: &str = "db.query.summary";
pub const DB_OPERATION_NAME: &str = "db.operation.name";
pub const DB_COLLECTION_NAME: &str = "db.collection.name";
pub const DB_RESPONSE_STATUS_CODE: &str = "db.response.status_code";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";

pub const QW_DB_USER: &str = "querywatch.db.user";
pub const QW_SOURCE: &str = "querywatch.source";
pub const QW_NODE: &str = "querywatch.node";
pub const QW_CLUSTER: &str = "querywatch.cluster";
pub const QW_PARTITION_PARENT: &str = "querywatch.partition.parent";

pub const METRIC_QUERY_DURATION: &str = "querywatch.query.duration";

pub const EVENT_QUERY_SAMPLE: &str = "querywatch.query.sample";
pub const EVENT_LOCK_WAIT: &str = "querywatch.lock.wait";
pub const EVENT_TEMP_FILE: &str = "querywatch.temp.file";
pub const EVENT_QUERY_ERROR: &str = "querywatch.query.error";

/// The statement text under which statements past a shape cap are folded.
pub const OVERFLOW_TEXT: &str = "<other>";
