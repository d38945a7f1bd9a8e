//! [`Observations`] as OTLP messages, and back: the agent → collector wire
//! format (DESIGN.md, "Wire contract"). Builds and reads
//! `opentelemetry-proto` messages; sending them is the caller's business.
//!
//! - [`encode_metrics`] / [`decode_metrics`]: per-statement latency as an
//!   exponential histogram (`querywatch.query.duration`, seconds, DELTA) and
//!   every counter of [`Observations`] as a monotonic DELTA sum (gauge for
//!   the longest lock wait). Names are in [`crate::names`]. The statistics
//!   poller's deltas ([`crate::dbstats`]) travel as monotonic DELTA sums too:
//!   `querywatch.statement.*` with `querywatch.source=statements`, the
//!   `querywatch.queryid` (string) and `querywatch.toplevel` (bool);
//!   `querywatch.table.*` per relation (plus the `querywatch.table.size`
//!   gauge); `querywatch.activity.samples`. The agent's own health
//!   ([`crate::health`]) travels as `querywatch.agent.*` DELTA sums (reads
//!   per file, export failures by class, retries, spool drops, the poller's
//!   connection) and gauges (spool size and batches, last successful export).
//! - [`encode_logs`] / [`decode_logs`]: the slowest execution (and plan) of
//!   each statement as a `querywatch.query.sample` log record, and the first
//!   message of each error kind as `querywatch.query.error`.
//! - [`decode_metrics_bytes`]: the collector's ingest path, the same
//!   decoding straight from protobuf bytes (the hot metric read in place).
//! - [`expo`]: the HDR ↔ exponential-bucket conversion and why scale 8.
//!
//! Decoding is the collector's ingest check: it is strict about data that
//! claims to be ours (a missing statement attribute, a cumulative
//! temporality, buckets that do not add up to the count are a
//! [`DecodeError`] naming the metric), and it skips and counts what is not
//! ours (other metric names, other events, `querywatch.source` values this
//! decoder does not know), so an OpenTelemetry Collector in between or a
//! newer agent does not break ingest.
//!
//! What a round trip keeps: every counter, `calls`, `total`, `min`, `max`
//! exactly (sums travel as seconds in an `f64`, exact up to 2^51 ns ≈ 26 days
//! per statement and interval), the histogram bucket for bucket (see
//! [`expo`]), samples, plans and error messages. What it does not keep:
//! statement- and batch-level `first_seen`/`last_seen` become the interval
//! bounds of the data points, and a statement or lock group with nothing to
//! count (no calls, errors, temp files, rows, waits) is not sent.

pub mod expo;

mod attrs;
pub mod cost;
mod logs;
mod metrics;
mod raw;

pub use attrs::kv_str;
pub use logs::{decode_logs, encode_logs};
pub use metrics::{decode_metrics, encode_metrics, points};
pub use raw::{BytesError, ResourcePart, ResourceParts, decode_metrics_bytes, decode_metrics_per_resource};

use crate::names;
use crate::observations::Observations;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

/// Who sent a batch: the OTLP resource of one agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceInfo {
    /// `service.version` (the agent's version).
    pub service_version: String,
    /// `service.instance.id`: one agent process.
    pub service_instance_id: String,
    /// `host.name`.
    pub host_name: String,
    /// `server.address` of the PostgreSQL server the agent watches.
    pub server_address: String,
    /// `server.port` of that server.
    pub server_port: Option<u16>,
    /// `querywatch.node`: the node's name in the fleet. Required on decode:
    /// the collector keys everything by node.
    pub node: String,
    /// `querywatch.cluster`.
    pub cluster: String,
    /// Any other resource attribute (e.g. from `OTEL_RESOURCE_ATTRIBUTES`),
    /// in order, kept as received. On encode, a key that names one of the
    /// fields above is dropped: the field wins.
    pub extra: Vec<KeyValue>,
}

/// Resource keys [`ResourceInfo`] owns (and so never puts in `extra`).
const RESOURCE_KEYS: &[&str] = &[
    names::SERVICE_NAME,
    names::SERVICE_VERSION,
    names::SERVICE_INSTANCE_ID,
    names::HOST_NAME,
    names::DB_SYSTEM_NAME,
    names::SERVER_ADDRESS,
    names::SERVER_PORT,
    names::QW_NODE,
    names::QW_CLUSTER,
];

impl ResourceInfo {
    fn to_otlp(&self) -> Resource {
        let mut a = vec![
            attrs::kv_str(names::SERVICE_NAME, names::SERVICE_NAME_AGENT),
            attrs::kv_str(names::DB_SYSTEM_NAME, names::DB_SYSTEM_POSTGRESQL),
            attrs::kv_str(names::QW_NODE, &self.node),
        ];
        // Optional strings travel only when known: an empty `host.name` says
        // nothing and would read as "known to be empty".
        for (key, value) in [
            (names::SERVICE_VERSION, &self.service_version),
            (names::SERVICE_INSTANCE_ID, &self.service_instance_id),
            (names::HOST_NAME, &self.host_name),
            (names::SERVER_ADDRESS, &self.server_address),
            (names::QW_CLUSTER, &self.cluster),
        ] {
            if !value.is_empty() {
                a.push(attrs::kv_str(key, value));
            }
        }
        if let Some(port) = self.server_port {
            a.push(attrs::kv_int(names::SERVER_PORT, i64::from(port)));
        }
        a.extend(self.extra.iter().filter(|kv| !RESOURCE_KEYS.contains(&kv.key.as_str())).cloned());
        Resource { attributes: a, dropped_attributes_count: 0, entity_refs: Vec::new() }
    }

    fn from_otlp(resource: Option<&Resource>) -> Result<Self, DecodeError> {
        const ITEM: &str = "resource";
        let a = resource.map_or(&[][..], |r| &r.attributes[..]);
        let text = |key| attrs::opt_str(a, key, ITEM).map(|v| v.unwrap_or_default().to_owned());
        let node = attrs::opt_str(a, names::QW_NODE, ITEM)?
            .ok_or_else(|| DecodeError::MissingAttribute { item: ITEM.into(), attribute: names::QW_NODE })?
            .to_owned();
        let server_port = match attrs::opt_int(a, names::SERVER_PORT, ITEM)? {
            None => None,
            Some(p) => Some(u16::try_from(p).map_err(|_| DecodeError::Invalid {
                item: ITEM.into(),
                reason: format!("{} {p} is not a port number", names::SERVER_PORT),
            })?),
        };
        Ok(Self {
            service_version: text(names::SERVICE_VERSION)?,
            service_instance_id: text(names::SERVICE_INSTANCE_ID)?,
            host_name: text(names::HOST_NAME)?,
            server_address: text(names::SERVER_ADDRESS)?,
            server_port,
            node,
            cluster: text(names::QW_CLUSTER)?,
            extra: a.iter().filter(|kv| !RESOURCE_KEYS.contains(&kv.key.as_str())).cloned().collect(),
        })
    }
}

/// The instrumentation scope of everything the agent exports.
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: names::SCOPE_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// What a decoder made of one request.
#[derive(Debug, Default)]
pub struct Decoded {
    /// One entry per resource (agent) that sent any of our data, in request
    /// order. Two entries can name the same node (an OpenTelemetry Collector
    /// in between may split a batch); merging them is the caller's choice.
    pub batches: Vec<(ResourceInfo, Observations)>,
    /// Data points (metrics) or log records (logs) that were not ours and
    /// were skipped: foreign metric names and events, and
    /// `querywatch.source` values this decoder does not know.
    pub ignored: u64,
}

/// Why a request that claims to carry querywatch data cannot be read.
/// `item` names the metric or event (or `resource`) where it went wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("{item}: required attribute `{attribute}` is missing")]
    MissingAttribute { item: String, attribute: &'static str },
    #[error("{item}: attribute `{attribute}` should be {expected}")]
    AttributeType { item: String, attribute: &'static str, expected: &'static str },
    #[error("{item}: expected {expected} data, found {found}")]
    DataType { item: String, expected: &'static str, found: &'static str },
    #[error("{item}: aggregation temporality must be DELTA, found {found}")]
    Temporality { item: String, found: String },
    #[error("{item}: `{field}` is missing")]
    MissingField { item: String, field: &'static str },
    #[error("{item}: {reason}")]
    Invalid { item: String, reason: String },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
