//! What decoding an OTLP request would allocate, reckoned from its bytes
//! before anything is built: the receiver's guard against decode memory
//! amplification.
//!
//! The request size limit bounds bytes on the wire, not what they decode
//! to. An empty data point, log record or attribute is two bytes of
//! protobuf (`{}` in JSON) and a prost struct of 50–200 bytes, in a `Vec`
//! that doubles as it grows: a 16 MiB request of empty data points, 16 KB
//! gzipped, took the collector to 1.4 GB, a request of empty log records
//! to 3 GB (BENCHMARKS.md, "Decode memory amplification"). Real senders' data decodes to
//! a few times its size, since every field they send carries a value.
//!
//! [`protobuf`] and [`json`] walk a request along the OTLP schema (the
//! part of it that allocates: repeated messages, strings and bytes,
//! repeated numbers) and add up what prost or serde would allocate for it
//! — struct sizes taken from the `opentelemetry-proto` types themselves,
//! `Vec` capacities as pushing one by one leaves them — without allocating
//! anything. Unknown fields cost nothing, as prost skips them. The caller
//! compares the sum with the request's size ([`check`]). The collector's
//! in-place metrics decoder reckons only what it hands to prost
//! ([`decode_part`] and its fallback): walking every request once more
//! cost 9% of the ingest rate.

use super::raw::ResourcePart;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, EntityRef, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, SummaryDataPoint, summary_data_point::ValueAtQuantile,
};
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::fmt;
use std::mem::size_of;

/// How many times its own size a request may cost to decode before it is
/// refused. Real data stays well under it (measured in
/// `collector/tests/decode_cost.rs`: an agent's requests and SDK-shaped
/// ones 3.6–5.7× in protobuf, 1.7–8.4× in JSON); requests of empty
/// messages cost 20–120×.
pub const MAX_FACTOR: usize = 16;

/// Below this a request is never refused for its cost, however dense: a
/// small request cannot amplify to much.
pub const FLOOR: usize = 1 << 20;

/// What the heap adds to each block (header and rounding).
const BLOCK: usize = 16;

/// What serde's buffering costs per value: inside an object whose struct
/// flattens a field ([`Schema::flattens`]: a metric's data, a point's
/// value, an `AnyValue`), every array element is a `Content` (32 bytes)
/// and every object entry a pair of them, in `Vec`s that grow as pushed.
/// A metric holds all its points, so in OTLP/JSON the points of a metric
/// are held twice while it is read (measured: an agent's request peaks at
/// about 7× its JSON size, against 1.1× once decoded).
const JSON_ELEMENT: usize = 32;
const JSON_ENTRY: usize = 2 * JSON_ELEMENT;

/// Why a request could not be walked. prost or serde would refuse it too
/// (or, for a protobuf group, skip what the walker cannot size), so the
/// caller refuses it as malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

/// What one field holds.
#[derive(Clone, Copy)]
enum Kind {
    /// A message: inline in its parent when singular, a `Vec` element of
    /// `size` bytes when repeated.
    Message(&'static Schema),
    /// A string or bytes: its length on the heap.
    Bytes,
    /// Numbers of 8 bytes in a `Vec`, packed or one per field; packed,
    /// each takes at least `wire` bytes (1 for a varint, 8 for a fixed64).
    Numbers { wire: usize },
}

impl Kind {
    /// What one element of a repeated field of this kind takes in its `Vec`.
    fn element(self) -> usize {
        match self {
            Kind::Message(child) => child.size,
            Kind::Bytes => size_of::<String>(),
            Kind::Numbers { .. } => 8,
        }
    }
}

#[derive(Clone, Copy)]
struct Field {
    tag: u32,
    /// Its JSON name (camelCase, as the OTLP/JSON encoding writes it).
    json: &'static str,
    kind: Kind,
    repeated: bool,
}

struct Schema {
    /// The prost struct's size: what a repeated field pays per element.
    size: usize,
    fields: &'static [Field],
    /// Its serde derive flattens a field, so serde buffers the object,
    /// and everything in it, before it builds the struct.
    flattens: bool,
}

const fn one(tag: u32, json: &'static str, kind: Kind) -> Field {
    Field { tag, json, kind, repeated: false }
}

const fn many(tag: u32, json: &'static str, kind: Kind) -> Field {
    Field { tag, json, kind, repeated: true }
}

use Kind::{Bytes, Message as Msg};

const VARINTS: Kind = Kind::Numbers { wire: 1 };
const FIXED64S: Kind = Kind::Numbers { wire: 8 };

static ANY_VALUE: Schema = Schema {
    size: size_of::<AnyValue>(),
    fields: &[
        one(1, "stringValue", Bytes),
        one(5, "arrayValue", Msg(&ARRAY_VALUE)),
        one(6, "kvlistValue", Msg(&KEY_VALUE_LIST)),
        one(7, "bytesValue", Bytes),
    ],
    flattens: true,
};
static ARRAY_VALUE: Schema = Schema { size: 0, fields: &[many(1, "values", Msg(&ANY_VALUE))], flattens: false };
static KEY_VALUE_LIST: Schema = Schema { size: 0, fields: &[many(1, "values", Msg(&KEY_VALUE))], flattens: false };
static KEY_VALUE: Schema = Schema {
    size: size_of::<KeyValue>(),
    fields: &[one(1, "key", Bytes), one(2, "value", Msg(&ANY_VALUE))],
    flattens: false,
};
static ENTITY_REF: Schema = Schema {
    size: size_of::<EntityRef>(),
    fields: &[
        one(1, "schemaUrl", Bytes),
        one(2, "type", Bytes),
        many(3, "idKeys", Bytes),
        many(4, "descriptionKeys", Bytes),
    ],
    flattens: false,
};
static RESOURCE: Schema = Schema {
    size: 0,
    fields: &[many(1, "attributes", Msg(&KEY_VALUE)), many(3, "entityRefs", Msg(&ENTITY_REF))],
    flattens: false,
};
static SCOPE: Schema = Schema {
    size: 0,
    fields: &[one(1, "name", Bytes), one(2, "version", Bytes), many(3, "attributes", Msg(&KEY_VALUE))],
    flattens: false,
};
static EXEMPLAR: Schema = Schema {
    size: size_of::<Exemplar>(),
    fields: &[many(7, "filteredAttributes", Msg(&KEY_VALUE)), one(4, "spanId", Bytes), one(5, "traceId", Bytes)],
    flattens: true,
};
static NUMBER_POINT: Schema = Schema {
    size: size_of::<NumberDataPoint>(),
    fields: &[many(7, "attributes", Msg(&KEY_VALUE)), many(5, "exemplars", Msg(&EXEMPLAR))],
    flattens: true,
};
static HISTOGRAM_POINT: Schema = Schema {
    size: size_of::<HistogramDataPoint>(),
    fields: &[
        many(9, "attributes", Msg(&KEY_VALUE)),
        many(6, "bucketCounts", FIXED64S),
        many(7, "explicitBounds", FIXED64S),
        many(8, "exemplars", Msg(&EXEMPLAR)),
    ],
    flattens: false,
};
static BUCKETS: Schema = Schema { size: 0, fields: &[many(2, "bucketCounts", VARINTS)], flattens: false };
static EXPO_POINT: Schema = Schema {
    size: size_of::<ExponentialHistogramDataPoint>(),
    fields: &[
        many(1, "attributes", Msg(&KEY_VALUE)),
        one(8, "positive", Msg(&BUCKETS)),
        one(9, "negative", Msg(&BUCKETS)),
        many(11, "exemplars", Msg(&EXEMPLAR)),
    ],
    flattens: false,
};
static QUANTILE: Schema = Schema { size: size_of::<ValueAtQuantile>(), fields: &[], flattens: false };
static SUMMARY_POINT: Schema = Schema {
    size: size_of::<SummaryDataPoint>(),
    fields: &[many(7, "attributes", Msg(&KEY_VALUE)), many(6, "quantileValues", Msg(&QUANTILE))],
    flattens: false,
};
static GAUGE: Schema = Schema { size: 0, fields: &[many(1, "dataPoints", Msg(&NUMBER_POINT))], flattens: false };
static HISTOGRAM: Schema = Schema { size: 0, fields: &[many(1, "dataPoints", Msg(&HISTOGRAM_POINT))], flattens: false };
static EXPO: Schema = Schema { size: 0, fields: &[many(1, "dataPoints", Msg(&EXPO_POINT))], flattens: false };
static SUMMARY: Schema = Schema { size: 0, fields: &[many(1, "dataPoints", Msg(&SUMMARY_POINT))], flattens: false };
static METRIC: Schema = Schema {
    size: size_of::<Metric>(),
    fields: &[
        one(1, "name", Bytes),
        one(2, "description", Bytes),
        one(3, "unit", Bytes),
        one(5, "gauge", Msg(&GAUGE)),
        one(7, "sum", Msg(&GAUGE)),
        one(9, "histogram", Msg(&HISTOGRAM)),
        one(10, "exponentialHistogram", Msg(&EXPO)),
        one(11, "summary", Msg(&SUMMARY)),
        many(12, "metadata", Msg(&KEY_VALUE)),
    ],
    flattens: true,
};
static SCOPE_METRICS: Schema = Schema {
    size: size_of::<ScopeMetrics>(),
    fields: &[one(1, "scope", Msg(&SCOPE)), many(2, "metrics", Msg(&METRIC)), one(3, "schemaUrl", Bytes)],
    flattens: false,
};
static RESOURCE_METRICS: Schema = Schema {
    // Ingest keeps what the decoder made of each resource beside it.
    size: size_of::<ResourceMetrics>() + size_of::<ResourcePart>(),
    fields: &[
        one(1, "resource", Msg(&RESOURCE)),
        many(2, "scopeMetrics", Msg(&SCOPE_METRICS)),
        one(3, "schemaUrl", Bytes),
    ],
    flattens: false,
};
static METRICS_REQUEST: Schema = Schema {
    size: size_of::<ExportMetricsServiceRequest>(),
    fields: &[many(1, "resourceMetrics", Msg(&RESOURCE_METRICS))],
    flattens: false,
};
static LOG_RECORD: Schema = Schema {
    size: size_of::<LogRecord>(),
    fields: &[
        one(3, "severityText", Bytes),
        one(5, "body", Msg(&ANY_VALUE)),
        many(6, "attributes", Msg(&KEY_VALUE)),
        one(9, "traceId", Bytes),
        one(10, "spanId", Bytes),
        one(12, "eventName", Bytes),
    ],
    flattens: false,
};
static SCOPE_LOGS: Schema = Schema {
    size: size_of::<ScopeLogs>(),
    fields: &[one(1, "scope", Msg(&SCOPE)), many(2, "logRecords", Msg(&LOG_RECORD)), one(3, "schemaUrl", Bytes)],
    flattens: false,
};
static RESOURCE_LOGS: Schema = Schema {
    size: size_of::<ResourceLogs>() + size_of::<ResourcePart>(),
    fields: &[one(1, "resource", Msg(&RESOURCE)), many(2, "scopeLogs", Msg(&SCOPE_LOGS)), one(3, "schemaUrl", Bytes)],
    flattens: false,
};
static LOGS_REQUEST: Schema = Schema {
    size: size_of::<ExportLogsServiceRequest>(),
    fields: &[many(1, "resourceLogs", Msg(&RESOURCE_LOGS))],
    flattens: false,
};

/// Which request a body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Metrics,
    Logs,
}

impl Request {
    fn schema(self) -> &'static Schema {
        match self {
            Request::Metrics => &METRICS_REQUEST,
            Request::Logs => &LOGS_REQUEST,
        }
    }
}

/// Whether a request of `wire` bytes that costs `cost` to decode is
/// within bounds: under [`FLOOR`], or at most [`MAX_FACTOR`] times its size.
pub fn affordable(cost: usize, wire: usize) -> bool {
    cost <= FLOOR.max(wire.saturating_mul(MAX_FACTOR))
}

/// A request that [`affordable`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the body's {wire} bytes would take about {} MiB to decode, more than {MAX_FACTOR} times their size \
     (many empty or nearly empty messages); send the data in smaller requests",
    cost.div_ceil(1 << 20)
)]
pub struct TooCostly {
    pub cost: usize,
    pub wire: usize,
}

/// [`affordable`] as a `Result`.
pub fn check(cost: usize, wire: usize) -> Result<(), TooCostly> {
    if affordable(cost, wire) { Ok(()) } else { Err(TooCostly { cost, wire }) }
}

/// The parts of a metrics request that the in-place decoder
/// ([`super::raw`]) hands to prost one at a time.
#[derive(Clone, Copy, Debug)]
pub(super) enum Part {
    Resource,
    Scope,
    Metric,
}

/// prost's decoding of one [`Part`], if its cost is affordable on its own
/// (the in-place decoder holds one at a time); `None` otherwise, and the
/// caller falls back to the whole request, whose cost is checked whole.
pub(super) fn decode_part<M: prost::Message + Default>(buf: &[u8], part: Part) -> Option<M> {
    let schema = match part {
        Part::Resource => &RESOURCE,
        Part::Scope => &SCOPE,
        Part::Metric => &METRIC,
    };
    if !affordable(whole(buf, schema).ok()?, buf.len()) {
        return None;
    }
    M::decode(buf).ok()
}

/// The capacity a `Vec` of `n` elements has after `n` pushes (Rust's
/// `RawVec`: 4 at first for elements up to 1 KiB, then doubling), in
/// bytes, with its block header.
pub(super) fn vec_bytes(n: usize, size: usize) -> usize {
    match n {
        0 => 0,
        n => n.max(4).next_power_of_two().saturating_mul(size).saturating_add(BLOCK),
    }
}

/// The capacity of a `Vec` of `n` elements that serde builds from a
/// buffered array: it starts at the length it is told, capped at 1 MiB
/// (`size_hint::cautious`), and doubles from there — so past the cap it
/// is not a power of two (measured: 381,280 slots for 200,000 points).
fn hinted_vec_bytes(n: usize, size: usize) -> usize {
    let start = ((1 << 20) / size.max(1)).max(1);
    let mut cap = n.min(start);
    while cap < n {
        cap = cap.saturating_mul(2);
    }
    if n == 0 { 0 } else { cap.saturating_mul(size).saturating_add(BLOCK) }
}

fn heap_bytes(len: usize) -> usize {
    if len == 0 { 0 } else { len + BLOCK }
}

/// Fields a schema has at most (the walker counts repeated ones in an array).
const MAX_FIELDS: usize = 12;

/// Nesting deeper than prost's limit is refused by prost; the walker
/// stops there too (and so cannot be driven into a stack overflow).
const MAX_DEPTH: usize = 100;

/// serde_json refuses nesting past 128 on its own, first; this is the
/// walker's guard should that limit ever be lifted.
const JSON_MAX_DEPTH: usize = 256;

/// The bytes decoding the protobuf `buf` as a `request` would allocate.
pub fn protobuf(buf: &[u8], request: Request) -> Result<usize, Unreadable> {
    whole(buf, request.schema())
}

/// A message of `schema`: its fields and its own struct.
fn whole(buf: &[u8], schema: &Schema) -> Result<usize, Unreadable> {
    Ok(message(buf, schema, 0)?.saturating_add(schema.size))
}

/// The fields of one message of `schema`: what its repeated fields' `Vec`s
/// and its strings hold, and everything below them. Its own struct is its
/// parent's to count.
fn message(mut buf: &[u8], schema: &Schema, depth: usize) -> Result<usize, Unreadable> {
    if depth > MAX_DEPTH {
        return Err(Unreadable(format!("recursion limit reached: messages nested deeper than {MAX_DEPTH}")));
    }
    // Elements per repeated field, in the schema's order (at most a few).
    let mut counts = [0usize; MAX_FIELDS];
    let mut cost = 0usize;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (tag, wire) = (key >> 3, (key & 7) as u8);
        let at = schema.fields.iter().position(|f| u64::from(f.tag) == tag);
        let value = match wire {
            0 => {
                // An unpacked repeated number is one element per field.
                if let Some(i) = at
                    && matches!(schema.fields[i].kind, Kind::Numbers { .. })
                {
                    counts[i] += 1;
                }
                varint(&mut buf)?;
                None
            }
            1 => Some(take(&mut buf, 8)?),
            2 => {
                let len = varint(&mut buf)?;
                Some(take(&mut buf, usize::try_from(len).unwrap_or(usize::MAX))?)
            }
            5 => Some(take(&mut buf, 4)?),
            // Groups (deprecated, never in OTLP) prost skips: refused, since
            // the walker cannot tell where they end without following them.
            _ => return Err(Unreadable(format!("field {tag} has wire type {wire}, which OTLP does not use"))),
        };
        let (Some(i), Some(value)) = (at, value) else { continue };
        let field = schema.fields[i];
        match field.kind {
            Kind::Message(child) => {
                if field.repeated {
                    counts[i] += 1;
                }
                cost = cost.saturating_add(message(value, child, depth + 1)?);
            }
            Kind::Bytes => {
                if field.repeated {
                    counts[i] += 1;
                }
                cost = cost.saturating_add(heap_bytes(value.len()));
            }
            // Packed varints: at most one element per byte. An upper bound:
            // counting them would cost a pass over every histogram's buckets.
            Kind::Numbers { wire: width } => counts[i] += if wire == 2 { value.len() / width } else { 1 },
        }
    }
    for (field, n) in schema.fields.iter().zip(counts) {
        cost = cost.saturating_add(vec_bytes(n, field.kind.element()));
    }
    Ok(cost)
}

/// A varint as prost reads it (at most ten bytes).
fn varint(buf: &mut &[u8]) -> Result<u64, Unreadable> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(Unreadable("a varint is malformed or cut off".into()))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Unreadable> {
    let (head, rest) = buf.split_at_checked(n).ok_or_else(|| Unreadable("a field runs past its message".into()))?;
    *buf = rest;
    Ok(head)
}

/// The bytes deserializing the OTLP/JSON document `de` reads as a
/// `request` would allocate at most: what the decoded request holds, and
/// the largest of serde's buffers ([`JSON_ELEMENT`]), which are freed one
/// after the other.
pub fn json<'de, D: Deserializer<'de>>(de: D, request: Request) -> Result<usize, D::Error> {
    let schema = request.schema();
    let largest = Cell::new(0);
    let top = Json { kind: Some(Kind::Message(schema)), repeated: false, buffered: false, depth: 0, largest: &largest };
    let held = top.deserialize(de)?.held;
    Ok(held.saturating_add(schema.size).saturating_add(largest.get()))
}

/// What a JSON value costs: held once decoded, and held in serde's buffer
/// while the object that buffers it is read.
#[derive(Default)]
struct Cost {
    held: usize,
    buffer: usize,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.held = self.held.saturating_add(other.held);
        self.buffer = self.buffer.saturating_add(other.buffer);
    }
}

/// One JSON value read as a value of `kind`; `None` for a field the
/// schema does not know (which costs nothing unless it is buffered).
#[derive(Clone, Copy)]
struct Json<'a> {
    kind: Option<Kind>,
    /// The value is a repeated field's (an array of `kind`).
    repeated: bool,
    /// Inside an object that serde buffers.
    buffered: bool,
    depth: usize,
    /// The largest buffer so far.
    largest: &'a Cell<usize>,
}

impl Json<'_> {
    /// What a `Vec` of `n` buffered `Content`s of `size` costs, if any.
    fn buffer(&self, n: usize, size: usize) -> usize {
        if self.buffered { vec_bytes(n, size) } else { 0 }
    }
}

impl<'de> DeserializeSeed<'de> for Json<'_> {
    type Value = Cost;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Cost, D::Error> {
        if self.kind.is_none() && !self.buffered {
            return de.deserialize_ignored_any(IgnoredAny).map(|_| Cost::default());
        }
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Json<'_> {
    type Value = Cost;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("OTLP/JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cost, A::Error> {
        if self.depth > JSON_MAX_DEPTH {
            return Err(A::Error::custom("recursion limit exceeded"));
        }
        let schema = match self.kind {
            Some(Kind::Message(schema)) => Some(schema),
            _ => None,
        };
        // The outermost object that flattens buffers everything below it.
        let root = !self.buffered && schema.is_some_and(|s| s.flattens);
        let this = Json { buffered: self.buffered || root, ..self };
        let (mut n, mut cost) = (0usize, Cost::default());
        while let Some(at) = map.next_key_seed(FieldName(schema))? {
            n += 1;
            let field = at.and_then(|i| schema.map(|s| s.fields[i]));
            let (kind, repeated) = field.map_or((None, true), |f| (Some(f.kind), f.repeated));
            cost.add(map.next_value_seed(Json { kind, repeated, depth: self.depth + 1, ..this })?);
        }
        cost.buffer = cost.buffer.saturating_add(this.buffer(n, JSON_ENTRY));
        if root {
            self.largest.set(self.largest.get().max(cost.buffer));
            cost.buffer = 0;
        }
        Ok(cost)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cost, A::Error> {
        if self.depth > JSON_MAX_DEPTH {
            return Err(A::Error::custom("recursion limit exceeded"));
        }
        // serde also reads a struct from an array of its fields in order,
        // which the walker would size as a list of structs; OTLP/JSON
        // writes messages as objects only.
        if !self.repeated && matches!(self.kind, Some(Kind::Message(_))) {
            return Err(A::Error::custom("an array where OTLP/JSON has an object"));
        }
        let element = Json { depth: self.depth + 1, repeated: false, ..self };
        let (mut n, mut cost) = (0usize, Cost::default());
        while let Some(c) = seq.next_element_seed(element)? {
            n += 1;
            cost.add(c);
        }
        // A buffered array becomes a `Vec` from serde's `Content`, which
        // knows its length: see [`hinted_vec_bytes`].
        let held = match self.kind {
            Some(k) if self.buffered => hinted_vec_bytes(n, k.element()),
            Some(k) => vec_bytes(n, k.element()),
            None => 0,
        };
        cost.held = cost.held.saturating_add(held);
        cost.buffer = cost.buffer.saturating_add(self.buffer(n, JSON_ELEMENT));
        Ok(cost)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Cost, E> {
        Ok(Cost { held: if self.kind.is_some() { heap_bytes(s.len()) } else { 0 }, buffer: 0 })
    }

    // Scalars hold nothing on the heap.
    fn visit_unit<E: serde::de::Error>(self) -> Result<Cost, E> {
        Ok(Cost::default())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Cost, E> {
        Ok(Cost::default())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Cost, E> {
        Ok(Cost::default())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Cost, E> {
        Ok(Cost::default())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Cost, E> {
        Ok(Cost::default())
    }
}

/// A key of a JSON object, as the index of the schema's field it names.
struct FieldName(Option<&'static Schema>);

impl<'de> DeserializeSeed<'de> for FieldName {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldName {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.and_then(|s| s.fields.iter().position(|f| f.json == key)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    #[test]
    fn what_serde_or_prost_accept_in_other_shapes_is_reckoned_too() {
        // A message written as an array of its fields (serde reads that):
        // refused, not walked as a list of messages that cost nothing.
        let values = vec!["{}"; 1000].join(",");
        let body = format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[[0,0,0,"",{{"arrayValue":{{"values":[{values}]}}}}]]}}]}}]}}"#
        );
        // (serde takes it: collector/tests/decode_cost.rs.)
        let e = json(&mut serde_json::Deserializer::from_str(&body), Request::Logs).unwrap_err();
        assert!(e.to_string().contains("an array where OTLP/JSON has an object"), "{e}");

        // Empty resources: the in-place decoder's list of them is checked
        // as it grows (it sent nothing to prost, so nothing else was).
        let empty = [0x0a, 0x00].repeat(1 << 22);
        assert!(matches!(super::super::decode_metrics_bytes(&empty), Err(super::super::BytesError::TooCostly(_))));

        // Unpacked bucket counts: a field each, eight bytes each decoded.
        assert!(message(&[0x10, 0x00].repeat(1000), &BUCKETS, 0).unwrap() >= 8000);

        // Nesting serde_json accepts (up to 128 levels) is not refused here.
        let mut value = r#"{"stringValue":"x"}"#.to_owned();
        for _ in 0..25 {
            value = format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{value}}}]}}}}"#);
        }
        let body = format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{value}}}]}}]}}]}}"#);
        assert!(json(&mut serde_json::Deserializer::from_str(&body), Request::Logs).is_ok());
    }

    #[test]
    fn every_schema_fits_the_walkers_count_array() {
        let all = [&ANY_VALUE, &KEY_VALUE, &ENTITY_REF, &RESOURCE, &SCOPE, &EXEMPLAR, &NUMBER_POINT, &HISTOGRAM_POINT];
        let more = [&EXPO_POINT, &SUMMARY_POINT, &METRIC, &SCOPE_METRICS, &RESOURCE_METRICS, &LOG_RECORD, &SCOPE_LOGS];
        assert!(all.iter().chain(&more).all(|s| s.fields.len() <= MAX_FIELDS));
    }

    #[test]
    fn what_the_walker_cannot_follow_is_an_error_not_a_zero() {
        let good = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue { key: "service.name".into(), ..KeyValue::default() }],
                    ..Resource::default()
                }),
                ..ResourceMetrics::default()
            }],
        }
        .encode_to_vec();
        for cut in [1, good.len() / 3, good.len() - 1] {
            assert!(protobuf(&good[..cut], Request::Metrics).is_err(), "cut at {cut}");
        }
        // A group (wire type 3), which prost would skip, and nesting past prost's limit.
        assert!(protobuf(&[0x0b, 0x0c], Request::Metrics).is_err());
        let mut deep = Vec::new();
        let mut array = AnyValue::default();
        for _ in 0..120 {
            array = AnyValue { value: Some(Value::ArrayValue(ArrayValue { values: vec![array] })) };
        }
        let record = LogRecord { body: Some(array), ..LogRecord::default() };
        let scope = ScopeLogs { log_records: vec![record], ..ScopeLogs::default() };
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs { scope_logs: vec![scope], ..ResourceLogs::default() }],
        }
        .encode(&mut deep)
        .unwrap();
        assert!(protobuf(&deep, Request::Logs).unwrap_err().to_string().contains("recursion limit"));
        assert!(json(&mut serde_json::Deserializer::from_slice(b"{\"resourceLogs\": [{"), Request::Logs).is_err());
    }
}
