//! An `ExportMetricsServiceRequest` decoded straight from its protobuf
//! bytes: the collector's ingest hot path.
//!
//! Building the prost message first costs more than everything else the
//! collector does with a request (BENCHMARKS.md, "collector ingest"): every
//! exponential-histogram point carries a few hundred packed bucket counts,
//! pushed one by one into a `Vec<u64>`, and five attributes of two heap
//! strings each, all dropped again once the point is merged. Here the
//! `querywatch.query.duration` points are read in place — attributes as
//! borrowed strings, bucket counts straight from their packed varints —
//! through the same checks as the prost path ([`super::metrics`]), so both
//! give the same [`Decoded`].
//!
//! The fast path takes the encoding our agent (and any prost or protobuf
//! encoder) writes: known fields, a message field at most once, packed
//! bucket counts, scalar attribute values. Anything else — an unknown field,
//! a repeated message field that prost would merge, an array or map
//! attribute, invalid UTF-8, a malformed varint — and any request the checks
//! refuse, goes to prost and [`super::decode_metrics`] whole, so errors and
//! corner cases are decided in one place. Every other metric (the handful of
//! counters and gauges of a batch) is decoded with prost one `Metric` at a
//! time. The one difference that remains: prost's nesting limit (100) then
//! counts from the `Metric`, not from the request, so an attribute nested 97
//! to 100 levels deep inside a counter is accepted here and refused by prost.

use super::attrs::Val;
use super::cost::{self, Part, Request};
use super::metrics::{self, ExpView, Tally};
use super::{DecodeError, Decoded, ResourceInfo};
use crate::names;
use crate::observations::Observations;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

/// What a request holds, per resource in order: its data points (all of
/// them, ours or not) and what the decoder made of it.
pub type ResourceParts = Vec<ResourcePart>;

/// One resource of [`ResourceParts`]: its data point count and what the
/// decoder made of it.
pub type ResourcePart = (u64, Result<Decoded, DecodeError>);

/// Decodes a protobuf `ExportMetricsServiceRequest`: `Err` when the bytes
/// are not one, else per resource what [`super::decode_metrics`] gives for
/// that resource alone.
pub fn decode_metrics_bytes(buf: &[u8]) -> Result<ResourceParts, BytesError> {
    if let Some(parts) = fast(buf) {
        return Ok(parts);
    }
    cost::check(cost::protobuf(buf, Request::Metrics)?, buf.len())?;
    Ok(decode_metrics_per_resource(ExportMetricsServiceRequest::decode(buf)?))
}

/// Why [`decode_metrics_bytes`] refused a request.
#[derive(Debug, thiserror::Error)]
pub enum BytesError {
    #[error("the body is not a valid OTLP protobuf message: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("the body is not a valid OTLP protobuf message: {0}")]
    Unreadable(#[from] cost::Unreadable),
    /// Would take far more memory to decode than its size warrants.
    #[error(transparent)]
    TooCostly(#[from] cost::TooCostly),
}

/// [`super::decode_metrics`] one resource at a time, with each resource's
/// data point count (what ingest accounts for).
pub fn decode_metrics_per_resource(req: ExportMetricsServiceRequest) -> ResourceParts {
    req.resource_metrics
        .into_iter()
        .map(|rm| {
            let total = rm.scope_metrics.iter().flat_map(|s| &s.metrics).map(metrics::points).sum();
            let one = ExportMetricsServiceRequest { resource_metrics: vec![rm] };
            (total, super::decode_metrics(&one))
        })
        .collect()
}

/// Bucket counts: a prost message's, or the non-empty buckets the
/// in-place decoder found in the packed varints (index, count).
#[derive(Clone, Copy, Debug)]
pub(super) enum Counts<'a> {
    Slice(&'a [u64]),
    NonZero(&'a [(usize, u64)]),
}

impl<'a> Counts<'a> {
    /// The non-empty buckets, by index from the offset, in order.
    pub(super) fn nonzero(self) -> NonZeroIter<'a> {
        match self {
            Counts::Slice(s) => NonZeroIter::Slice(s.iter().enumerate()),
            Counts::NonZero(pairs) => NonZeroIter::Pairs(pairs.iter()),
        }
    }
}

pub(super) enum NonZeroIter<'a> {
    Slice(std::iter::Enumerate<std::slice::Iter<'a, u64>>),
    Pairs(std::slice::Iter<'a, (usize, u64)>),
}

impl Iterator for NonZeroIter<'_> {
    type Item = (usize, u64);

    fn next(&mut self) -> Option<(usize, u64)> {
        match self {
            NonZeroIter::Slice(it) => it.find(|(_, n)| **n > 0).map(|(i, n)| (i, *n)),
            NonZeroIter::Pairs(it) => it.next().copied(),
        }
    }

    /// Exact for the in-place decoder's pairs, so that the histogram they
    /// become is allocated once (without it, growing it by reallocation
    /// was 2.5% of the collector's CPU).
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            NonZeroIter::Slice(it) => (0, it.size_hint().1),
            NonZeroIter::Pairs(it) => it.size_hint(),
        }
    }
}

// Wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;

/// A cursor over protobuf bytes. Every method returns `None` where prost
/// might decide otherwise than "this value", and the caller falls back.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A varint as prost reads it: at most ten bytes, the tenth < 2.
    ///
    /// Inlined for the one-byte case, which nearly every key, length and
    /// bucket count is; as a call it was a tenth of the decoder's time.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        if let Some((&b, rest)) = self.buf.split_first()
            && b < 0x80
        {
            self.buf = rest;
            return Some(u64::from(b));
        }
        self.long_varint()
    }

    /// [`Self::varint`] past its first byte; kept out of line.
    #[inline(never)]
    fn long_varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b >= 2 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Some(value);
            }
        }
        None
    }

    /// A field key: tag and wire type (groups and tag 0 are left to prost).
    fn key(&mut self) -> Option<(u32, u8)> {
        let key = u32::try_from(self.varint()?).ok()?;
        let (tag, wire) = (key >> 3, (key & 7) as u8);
        (tag > 0 && matches!(wire, VARINT | I64 | LEN | 5)).then_some((tag, wire))
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let (head, rest) = self.buf.split_at_checked(len)?;
        self.buf = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.len_delimited()?).ok()
    }

    /// Packed varints as their non-zero values with their index, appended
    /// to `out`. Empty buckets are one zero byte each and most of a
    /// histogram's span, so runs of them are skipped a slice at a time.
    fn packed_nonzero(&mut self, out: &mut Vec<(usize, u64)>) -> Option<()> {
        let mut r = Reader::new(self.len_delimited()?);
        let mut index = 0usize;
        loop {
            let zeros = leading_zeros(r.buf);
            index += zeros;
            r.buf = &r.buf[zeros..];
            if r.is_empty() {
                return Some(());
            }
            // An overlong zero (0x80 0x00) is still zero.
            let n = r.varint()?;
            if n > 0 {
                out.push((index, n));
            }
            index += 1;
        }
    }

    /// The value of a field of `wire` type that we do not read, skipped.
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.fixed64().map(drop),
            LEN => self.len_delimited().map(drop),
            _ => {
                let rest = self.buf.get(4..)?;
                self.buf = rest;
                Some(())
            }
        }
    }

    /// Fields until the end: `f(reader, tag, wire)` reads each value.
    fn fields(&mut self, mut f: impl FnMut(&mut Self, u32, u8) -> Option<()>) -> Option<()> {
        while !self.is_empty() {
            let (tag, wire) = self.key()?;
            f(self, tag, wire)?;
        }
        Some(())
    }
}

/// How many bytes at the start of `buf` are zero. Eight at a time: at
/// scale 8 most of a point's packed counts are zero bytes (empty buckets
/// between the few a statement's calls fall in), and this scan was the
/// decoder's largest cost.
fn leading_zeros(buf: &[u8]) -> usize {
    let (mut rest, mut zeros) = (buf, 0);
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        let word = u64::from_le_bytes(*word);
        if word != 0 {
            // Little-endian: the first non-zero byte is the lowest one set.
            return zeros + (word.trailing_zeros() / 8) as usize;
        }
        zeros += 8;
        rest = tail;
    }
    zeros + rest.iter().position(|&b| b != 0).unwrap_or(rest.len())
}

/// A message field seen at most once (prost merges repeats; we fall back).
fn once<'a>(slot: &mut Option<&'a [u8]>, r: &mut Reader<'a>, wire: u8) -> Option<()> {
    if wire != LEN || slot.is_some() {
        return None;
    }
    *slot = Some(r.len_delimited()?);
    Some(())
}

/// Scratch space reused across the points of a request.
#[derive(Default)]
struct Scratch<'a> {
    points: Vec<&'a [u8]>,
    point: PointScratch<'a>,
}

/// What one data point is read into.
#[derive(Default)]
struct PointScratch<'a> {
    attributes: Vec<(&'a str, Option<Val<'a>>)>,
    positive: Vec<(usize, u64)>,
    negative: Vec<(usize, u64)>,
}

/// The whole request on the fast path, or `None` to let prost decide.
pub(super) fn fast(buf: &[u8]) -> Option<ResourceParts> {
    let mut parts = Vec::new();
    let mut scratch = Scratch::default();
    Reader::new(buf).fields(|r, tag, wire| {
        if tag != 1 || wire != LEN {
            return None;
        }
        // Two bytes make an empty resource, and its entry here dozens: before
        // the list grows, its cost is checked like the rest (prost's path
        // then refuses the request whole).
        let entry = std::mem::size_of::<ResourcePart>();
        if parts.len() == parts.capacity() && !cost::affordable(cost::vec_bytes(parts.len() + 1, entry), buf.len()) {
            return None;
        }
        parts.push(resource_metrics(r.len_delimited()?, &mut scratch)?);
        Some(())
    })?;
    Some(parts)
}

fn resource_metrics<'a>(buf: &'a [u8], scratch: &mut Scratch<'a>) -> Option<(u64, Result<Decoded, DecodeError>)> {
    let mut resource = None;
    let mut obs = Observations::default();
    let mut tally = Tally::default();
    let mut total = 0u64;
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        (1, _) => once(&mut resource, r, wire),
        (2, LEN) => scope_metrics(r.len_delimited()?, &mut obs, &mut tally, &mut total, scratch),
        (3, LEN) => r.string().map(drop),
        _ => None,
    })?;
    let resource = match resource {
        Some(b) => Some(cost::decode_part::<Resource>(b, Part::Resource)?),
        None => None,
    };
    let mut out = Decoded { ignored: tally.ignored, ..Decoded::default() };
    if tally.ours > 0 {
        out.batches.push((ResourceInfo::from_otlp(resource.as_ref()).ok()?, obs));
    }
    Some((total, Ok(out)))
}

fn scope_metrics<'a>(
    buf: &'a [u8],
    obs: &mut Observations,
    tally: &mut Tally,
    total: &mut u64,
    scratch: &mut Scratch<'a>,
) -> Option<()> {
    let mut scope = None;
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        // The scope is not read, but prost would check it.
        (1, _) => once(&mut scope, r, wire),
        (2, LEN) => metric(r.len_delimited()?, obs, tally, total, scratch),
        (3, LEN) => r.string().map(drop),
        _ => None,
    })?;
    if let Some(b) = scope {
        cost::decode_part::<InstrumentationScope>(b, Part::Scope)?;
    }
    Some(())
}

fn metric<'a>(
    buf: &'a [u8],
    obs: &mut Observations,
    tally: &mut Tally,
    total: &mut u64,
    scratch: &mut Scratch<'a>,
) -> Option<()> {
    let mut name = "";
    let mut exp = None;
    let mut plain = false;
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        (1, LEN) => r.string().map(|s| name = s),
        (2 | 3, LEN) => r.string().map(drop),
        (10, LEN) if exp.is_none() && !plain => r.len_delimited().map(|b| exp = Some(b)),
        // Other data kinds, metadata, unknown fields: prost's business.
        _ => {
            plain = true;
            r.skip(wire)
        }
    })?;
    match exp {
        Some(exp) if name == names::METRIC_QUERY_DURATION && !plain => durations(exp, obs, tally, total, scratch),
        _ => {
            let m: Metric = cost::decode_part(buf, Part::Metric)?;
            *total += metrics::points(&m);
            metrics::decode_metric(&m, obs, tally).ok()
        }
    }
}

/// The data points of a `querywatch.query.duration` exponential histogram.
fn durations<'a>(
    buf: &'a [u8],
    obs: &mut Observations,
    tally: &mut Tally,
    total: &mut u64,
    scratch: &mut Scratch<'a>,
) -> Option<()> {
    let mut temporality = 0i32;
    scratch.points.clear();
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        (1, LEN) => r.len_delimited().map(|p| scratch.points.push(p)),
        #[allow(clippy::cast_possible_truncation)] // an enum is an int32 on the wire; prost truncates too
        (2, VARINT) => r.varint().map(|v| temporality = v as i32),
        _ => None,
    })?;
    *total += u64::try_from(scratch.points.len()).unwrap_or(u64::MAX);
    if temporality != AggregationTemporality::Delta as i32 {
        return None;
    }
    // Most points are statements new to the batch: one reservation instead
    // of the map doubling its way up (3% of the collector's CPU). Bounded
    // by the bytes a real point takes (its five attributes alone are over
    // 64), not by the count: eight million empty points fit in 16 MiB, and
    // reserving a statement slot for each took gigabytes before any point
    // was looked at.
    obs.statements.reserve(scratch.points.len().min(buf.len() / 64));
    // Taken out so that the points can borrow the rest of the scratch.
    let points = std::mem::take(&mut scratch.points);
    for &p in &points {
        point(p, obs, tally, &mut scratch.point)?;
    }
    scratch.points = points;
    Some(())
}

/// One exponential-histogram data point.
fn point<'a>(buf: &'a [u8], obs: &mut Observations, tally: &mut Tally, scratch: &mut PointScratch<'a>) -> Option<()> {
    let PointScratch { attributes, positive, negative } = scratch;
    attributes.clear();
    positive.clear();
    negative.clear();
    let (mut start, mut end) = (0, 0);
    let (mut count, mut sum, mut min, mut max) = (0, None, None, None);
    let (mut scale, mut zero_count, mut offset) = (0, 0, 0);
    let (mut seen_positive, mut seen_negative) = (false, false);
    Reader::new(buf).fields(|r, tag, wire| {
        match (tag, wire) {
            (1, LEN) => attributes.push(key_value(r.len_delimited()?)?),
            (2, I64) => start = r.fixed64()?,
            (3, I64) => end = r.fixed64()?,
            (4, I64) => count = r.fixed64()?,
            (5, I64) => sum = Some(f64::from_bits(r.fixed64()?)),
            (6, VARINT) => scale = sint32(r.varint()?),
            (7, I64) => zero_count = r.fixed64()?,
            // A message field twice is merged by prost: left to it.
            (8, LEN) if !seen_positive => {
                seen_positive = true;
                offset = buckets(r.len_delimited()?, positive)?;
            }
            (9, LEN) if !seen_negative => {
                seen_negative = true;
                buckets(r.len_delimited()?, negative)?;
            }
            (10, VARINT) => r.skip(wire)?,
            (12, I64) => min = Some(f64::from_bits(r.fixed64()?)),
            (13, I64) => max = Some(f64::from_bits(r.fixed64()?)),
            (14, I64) => r.skip(wire)?,
            // Exemplars and unknown fields.
            _ => return None,
        }
        Some(())
    })?;
    let v = ExpView {
        count,
        sum,
        min,
        max,
        scale,
        zero_count,
        offset,
        positive: Counts::NonZero(positive),
        negative: Counts::NonZero(negative),
    };
    metrics::duration_point(&attributes[..], &v, start, end, obs, tally).ok()
}

/// `Buckets`: its offset, and its non-empty counts appended to `out`.
fn buckets(buf: &[u8], out: &mut Vec<(usize, u64)>) -> Option<i32> {
    let mut offset = 0;
    let mut seen_counts = false;
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        (1, VARINT) => r.varint().map(|v| offset = sint32(v)),
        // Packed once; unpacked or twice (prost appends) is prost's.
        (2, LEN) if !seen_counts => {
            seen_counts = true;
            r.packed_nonzero(out)
        }
        _ => None,
    })?;
    Some(offset)
}

/// The attribute keys of a statement's data point, as the agent writes
/// them: a key that is one of these needs no UTF-8 check (validating the
/// five keys of every point was half of the decoder's `from_utf8`, itself
/// 15% of its time).
const KNOWN_KEYS: [&str; 5] =
    [names::DB_NAMESPACE, names::QW_DB_USER, names::DB_QUERY_TEXT, names::DB_OPERATION_NAME, names::QW_SOURCE];

/// An attribute key: one of [`KNOWN_KEYS`] by its bytes, else checked.
fn key(bytes: &[u8]) -> Option<&str> {
    match KNOWN_KEYS.iter().find(|k| k.as_bytes() == bytes) {
        Some(k) => Some(k),
        None => std::str::from_utf8(bytes).ok(),
    }
}

/// `KeyValue` with a scalar value (or none).
fn key_value(buf: &[u8]) -> Option<(&str, Option<Val<'_>>)> {
    let mut key_name = "";
    let mut value = None;
    let mut seen_value = false;
    Reader::new(buf).fields(|r, tag, wire| match (tag, wire) {
        (1, LEN) => key(r.len_delimited()?).map(|s| key_name = s),
        (2, LEN) if !seen_value => {
            seen_value = true;
            value = any_value(r.len_delimited()?)?;
            Some(())
        }
        // key_strindex (profiles' string table): not read.
        (3, VARINT) => r.skip(wire),
        _ => None,
    })?;
    Some((key_name, value))
}

/// `AnyValue`: the value of its oneof, the last one set winning as in prost;
/// `Some(None)` when unset. Arrays, maps and bytes are left to prost.
#[allow(clippy::option_option)] // outer: fall back; inner: unset
fn any_value(buf: &[u8]) -> Option<Option<Val<'_>>> {
    let mut value = None;
    Reader::new(buf).fields(|r, tag, wire| {
        value = Some(match (tag, wire) {
            (1, LEN) => Val::Str(r.string()?),
            (2, VARINT) => Val::Bool(r.varint()? != 0),
            #[allow(clippy::cast_possible_wrap)] // int64 is two's complement on the wire
            (3, VARINT) => Val::Int(r.varint()? as i64),
            (4, I64) => Val::Double(f64::from_bits(r.fixed64()?)),
            // string_value_strindex: an int where a string is expected.
            (8, VARINT) => r.varint().map(|_| Val::Other)?,
            _ => return None,
        });
        Some(())
    })?;
    Some(value)
}

/// A zigzag `sint32`, truncated to 32 bits first as prost does.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn sint32(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn varints_as_prost_reads_them() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            prost::encoding::encode_varint(v, &mut b);
            let mut r = Reader::new(&b);
            assert_eq!(r.varint(), Some(v));
            assert!(r.is_empty());
        }
        // Overlong but valid, as prost accepts it.
        assert_eq!(Reader::new(&[0x80, 0x00]).varint(), Some(0));
        // Eleven bytes, a tenth byte over 1, or cut short: not a varint.
        assert_eq!(Reader::new(&[0xff; 11]).varint(), None);
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).varint(), None);
        assert_eq!(Reader::new(&[0x80]).varint(), None);
    }

    #[test]
    fn the_decoders_non_empty_buckets_know_how_many_they_are() {
        let pairs = [(0, 3), (7, 1), (9, 2)];
        let mut it = Counts::NonZero(&pairs).nonzero();
        assert_eq!(it.size_hint(), (3, Some(3)));
        it.next();
        assert_eq!(it.size_hint(), (2, Some(2)));
        // A prost message's slice: at most its length, maybe none non-empty.
        assert_eq!(Counts::Slice(&[0, 4, 0]).nonzero().size_hint(), (0, Some(3)));
    }

    #[test]
    fn leading_zeros_finds_the_first_non_zero_byte_at_any_place() {
        for len in 0..20 {
            assert_eq!(leading_zeros(&vec![0u8; len]), len);
            for at in 0..len {
                let mut b = vec![0u8; len];
                b[at] = 0x80;
                b[len - 1] |= 1; // a later non-zero byte must not win
                assert_eq!(leading_zeros(&b), at, "len {len}, first non-zero at {at}");
            }
        }
    }

    #[test]
    fn known_keys_are_taken_by_their_bytes_others_are_checked() {
        for k in KNOWN_KEYS {
            assert_eq!(key(k.as_bytes()), Some(k));
        }
        assert_eq!(key(b"db.namespace2"), Some("db.namespace2"));
        assert_eq!(key(b"db.name\xffspace"), None, "not UTF-8");
        assert_eq!(key(b""), Some(""));
    }

    #[test]
    fn zigzag() {
        for v in [0i32, 1, -1, 63, -64, i32::MAX, i32::MIN] {
            let mut b = Vec::new();
            prost::encoding::sint32::encode(1, &v, &mut b);
            let mut r = Reader::new(&b);
            assert_eq!(r.key(), Some((1, VARINT)));
            assert_eq!(sint32(r.varint().unwrap()), v);
        }
    }
}
