//! OTLP attribute and unit helpers shared by the metric and log codecs.

use super::DecodeError;
use crate::names;
use crate::observations::StatementKey;
use crate::stats::EpochMillis;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use std::time::Duration;

pub(super) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), key_strindex: 0 }
}

/// A string attribute.
pub fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.to_owned()))
}

pub(super) fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

pub(super) fn kv_bool(key: &str, value: bool) -> KeyValue {
    kv(key, Value::BoolValue(value))
}

pub(super) fn kv_double(key: &str, value: f64) -> KeyValue {
    kv(key, Value::DoubleValue(value))
}

/// An attribute value as the decoders read it, borrowed: a string, a
/// number, a bool, or something else (array, map, bytes, an interned-string
/// index), which no querywatch attribute is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

/// A list of attributes: the `KeyValue`s of a prost message, or the
/// borrowed pairs of the in-place decoder ([`super::raw`]), so both read
/// attributes through the same checks below.
pub(super) trait Attrs {
    /// The value of the first attribute named `key`. A key whose value is
    /// unset counts as absent: OTLP allows it, and it carries nothing.
    fn find(&self, key: &str) -> Option<Val<'_>>;
}

impl Attrs for [KeyValue] {
    fn find(&self, key: &str) -> Option<Val<'_>> {
        let v = self.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
        Some(match v {
            Value::StringValue(s) => Val::Str(s),
            Value::IntValue(i) => Val::Int(*i),
            Value::BoolValue(b) => Val::Bool(*b),
            Value::DoubleValue(d) => Val::Double(*d),
            _ => Val::Other,
        })
    }
}

impl Attrs for Vec<KeyValue> {
    fn find(&self, key: &str) -> Option<Val<'_>> {
        self.as_slice().find(key)
    }
}

/// The in-place decoder's attributes: key and value (`None`: unset).
impl Attrs for [(&str, Option<Val<'_>>)] {
    fn find(&self, key: &str) -> Option<Val<'_>> {
        self.iter().find(|(k, _)| *k == key)?.1
    }
}

pub(super) fn opt_str<'a, A: Attrs + ?Sized>(
    a: &'a A,
    key: &'static str,
    item: &str,
) -> Result<Option<&'a str>, DecodeError> {
    match a.find(key) {
        None => Ok(None),
        Some(Val::Str(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::AttributeType { item: item.into(), attribute: key, expected: "a string" }),
    }
}

pub(super) fn req_str<'a, A: Attrs + ?Sized>(a: &'a A, key: &'static str, item: &str) -> Result<&'a str, DecodeError> {
    // Lazily: the error's owned item name was an allocation per successful
    // lookup (four per data point at ingest; with `duration_stats`' three,
    // a sixth of the decoder's time).
    opt_str(a, key, item)?.ok_or_else(|| DecodeError::MissingAttribute { item: item.into(), attribute: key })
}

pub(super) fn opt_int<A: Attrs + ?Sized>(a: &A, key: &'static str, item: &str) -> Result<Option<i64>, DecodeError> {
    match a.find(key) {
        None => Ok(None),
        Some(Val::Int(i)) => Ok(Some(i)),
        Some(_) => Err(DecodeError::AttributeType { item: item.into(), attribute: key, expected: "an int" }),
    }
}

pub(super) fn req_bool<A: Attrs + ?Sized>(a: &A, key: &'static str, item: &str) -> Result<bool, DecodeError> {
    match a.find(key) {
        None => Err(DecodeError::MissingAttribute { item: item.into(), attribute: key }),
        Some(Val::Bool(b)) => Ok(b),
        Some(_) => Err(DecodeError::AttributeType { item: item.into(), attribute: key, expected: "a bool" }),
    }
}

/// A double attribute; an int is accepted too (a producer may send whole
/// milliseconds as an int).
pub(super) fn opt_double<A: Attrs + ?Sized>(a: &A, key: &'static str, item: &str) -> Result<Option<f64>, DecodeError> {
    match a.find(key) {
        None => Ok(None),
        Some(Val::Double(d)) => Ok(Some(d)),
        #[allow(clippy::cast_precision_loss)] // a duration in ms, far below 2^53
        Some(Val::Int(i)) => Ok(Some(i as f64)),
        Some(_) => Err(DecodeError::AttributeType { item: item.into(), attribute: key, expected: "a double" }),
    }
}

/// The attributes that name a statement shape on every metric and event.
pub(super) fn statement_attributes(key: &StatementKey) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(6);
    a.push(kv_str(names::DB_NAMESPACE, &key.database));
    a.push(kv_str(names::QW_DB_USER, &key.user));
    a.push(kv_str(names::DB_QUERY_TEXT, &key.text));
    if let Some(op) = operation_name(&key.text) {
        a.push(kv_str(names::DB_OPERATION_NAME, &op));
    }
    a.push(kv_str(names::QW_SOURCE, names::QW_SOURCE_LOG));
    a
}

/// The statement key of a data point or record; `None` when its
/// `querywatch.source` is not the log (statistics this decoder does not
/// merge into [`crate::Observations`]). `db.operation.name` is derived from
/// the text, so it is not read back.
pub(super) fn statement_key<A: Attrs + ?Sized>(a: &A, item: &str) -> Result<Option<StatementKey>, DecodeError> {
    if req_str(a, names::QW_SOURCE, item)? != names::QW_SOURCE_LOG {
        return Ok(None);
    }
    Ok(Some(StatementKey {
        database: req_str(a, names::DB_NAMESPACE, item)?.to_owned(),
        user: req_str(a, names::QW_DB_USER, item)?.to_owned(),
        text: req_str(a, names::DB_QUERY_TEXT, item)?.to_owned(),
    }))
}

/// `db.operation.name`: the statement's first keyword, upper-cased
/// (`SELECT`, `INSERT`, `WITH`, …), after leading blanks, comments (the
/// agent's own marker comment, ORMs' tags) and opening parentheses. `None`
/// when the text does not start with a word (e.g. the overflow shape).
pub(super) fn operation_name(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    loop {
        match b.get(i..) {
            Some([c, ..]) if c.is_ascii_whitespace() || *c == b'(' => i += 1,
            Some([b'-', b'-', ..]) => {
                i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p + 1);
            }
            Some([b'/', b'*', ..]) => {
                // PostgreSQL block comments nest.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => break,
        }
    }
    let word: String = b[i.min(b.len())..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase() as char)
        .collect();
    (!word.is_empty()).then_some(word)
}

// --- Units ------------------------------------------------------------------
//
// Durations travel as f64 seconds (OTLP's unit for time) or milliseconds.
// n ns → f64 → back rounds twice, each within n·2^-53, so rounding to the
// nearest nanosecond restores n exactly while n < 2^51 ns (≈ 26 days).

#[allow(clippy::cast_precision_loss)] // exact below 2^53 ns, see above
pub(super) fn secs(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e9
}

#[allow(clippy::cast_precision_loss)]
pub(super) fn millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// `None` for a negative, NaN or infinite value; saturates at ~584 years.
pub(super) fn duration_from_secs(s: f64) -> Option<Duration> {
    nanos(s * 1e9)
}

pub(super) fn duration_from_millis(ms: f64) -> Option<Duration> {
    nanos(ms * 1e6)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked finite and >= 0; `as` saturates
fn nanos(ns: f64) -> Option<Duration> {
    (ns.is_finite() && ns >= 0.0).then(|| Duration::from_nanos(ns.round() as u64))
}

/// A log timestamp as OTLP time; 0 ("unknown" in OTLP) before 1970.
pub(super) fn unix_nanos(ms: EpochMillis) -> u64 {
    u64::try_from(ms).map_or(0, |ms| ms.saturating_mul(1_000_000))
}

/// OTLP time as a log timestamp; `None` for 0 ("unknown").
pub(super) fn epoch_millis(unix_nanos: u64) -> Option<EpochMillis> {
    (unix_nanos != 0).then(|| EpochMillis::try_from(unix_nanos / 1_000_000).unwrap_or(EpochMillis::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_name_is_the_first_keyword() {
        for (text, want) in [
            ("SELECT * FROM t WHERE id = $1", Some("SELECT")),
            ("  insert into t values ($1)", Some("INSERT")),
            ("/* querywatch */ update t set a = $1", Some("UPDATE")),
            ("/* outer /* nested */ still */ DELETE FROM t", Some("DELETE")),
            ("-- tag\n  with x as (select 1) select * from x", Some("WITH")),
            ("((select 1))", Some("SELECT")),
            ("<other>", None),
            ("", None),
            ("/* unterminated", None),
            ("$1", None),
        ] {
            assert_eq!(operation_name(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn durations_round_trip_exactly_through_f64() {
        for ns in [0u64, 1, 999, 1_000_000_007, 86_400_000_000_123, (1u64 << 51) - 1] {
            let d = Duration::from_nanos(ns);
            assert_eq!(duration_from_secs(secs(d)), Some(d), "{ns} ns as seconds");
            assert_eq!(duration_from_millis(millis(d)), Some(d), "{ns} ns as ms");
        }
        assert_eq!(duration_from_secs(-1.0), None);
        assert_eq!(duration_from_secs(f64::NAN), None);
        assert_eq!(epoch_millis(unix_nanos(1_700_000_000_123)), Some(1_700_000_000_123));
        assert_eq!(unix_nanos(-5), 0);
        assert_eq!(epoch_millis(0), None);
    }
}
