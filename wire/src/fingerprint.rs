//! Statement fingerprints: pg_query's fingerprint of a masked shape. The
//! collector computes them (behind its cache), and so does an agent that
//! withholds query text ([`crate::shape::Withheld`]), which is why they
//! live here, behind the `fingerprint` feature (pg_query is a C library).
//!
//! Options: `FULL_RELNAME | RANGEVAR_INCLUDE_SCHEMA`. pg_query's default
//! ignores digit runs in relation names and schema names, so a query on
//! `orders_2024_01` and the same query on `orders_2024_02` (or on `a.t` and
//! `b.t`) would share a fingerprint. pg_stat_statements keeps them apart
//! (its queryid hashes relation OIDs), and per-partition load is exactly
//! what operators ask us about, so we keep them apart too.
//!
//! Masked text carries `$n` where literals were. A few of PostgreSQL's
//! typed-literal forms (`interval $1`, `date $1`) do not parse with a
//! parameter there, so a shape that fails to parse is retried with every
//! placeholder written as a string literal (pg_query ignores constant
//! values in fingerprints). Text that still does not parse (truncated
//! statements, syntax pg_query rejects) gets a stable fallback fingerprint:
//! a hash of the masked text, marked as such.

use crate::shape::Withheld;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault};

/// A statement fingerprint; displayed as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Fingerprint {
    /// Reads what [`Display`](fmt::Display) writes: 1 to 16 hex digits, in
    /// either case, and nothing else (`u64::from_str_radix` alone would
    /// also take a leading `+`).
    pub fn from_hex(s: &str) -> Option<Fingerprint> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Fingerprint)
    }
}

/// How a fingerprint was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// pg_query parsed the shape.
    Parsed,
    /// pg_query could not parse it; hash of the masked text.
    Fallback,
}

fn options() -> pg_query::FingerprintOptions {
    pg_query::FingerprintOptions::FULL_RELNAME | pg_query::FingerprintOptions::RANGEVAR_INCLUDE_SCHEMA
}

/// Fingerprints one masked shape (uncached).
pub fn fingerprint(masked: &str) -> Fingerprint {
    fingerprint_with_method(masked).0
}

/// Fingerprints one masked shape and says how.
///
/// A [`Withheld`] token (an agent that sends no text) is not parsed: it
/// carries what the agent computed here from the masked shape.
pub fn fingerprint_with_method(masked: &str) -> (Fingerprint, Method) {
    if let Some(w) = Withheld::parse(masked) {
        return (Fingerprint(w.fingerprint), if w.parsed { Method::Parsed } else { Method::Fallback });
    }
    if let Ok(fp) = pg_query::fingerprint(masked, 0, options()) {
        return (Fingerprint(fp.value), Method::Parsed);
    }
    let quoted = placeholders_as_strings(masked);
    if quoted != masked
        && let Ok(fp) = pg_query::fingerprint(&quoted, 0, options())
    {
        return (Fingerprint(fp.value), Method::Parsed);
    }
    // Fallback: stable across runs and machines (FxHash has a fixed seed).
    // It lives in the same 64-bit space as pg_query's fingerprints, so the
    // value alone does not say which it is: `Method` does, and the report
    // shows it (`parsed: false`).
    let h = BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(masked);
    (Fingerprint(h), Method::Fallback)
}

/// Rewrites `$12` placeholders as `'?'` (outside quotes and identifiers).
fn placeholders_as_strings(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    let mut in_single = false;
    let mut in_double = false;
    while i < b.len() {
        match b[i] {
            b'\'' if !in_double => in_single = !in_single,
            b'"' if !in_single => in_double = !in_double,
            b'$' if !in_single && !in_double && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                if !prev_ident {
                    let mut j = i + 1;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    out.push_str(&s[last..i]);
                    out.push_str("'?'");
                    last = j;
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_shape_same_fingerprint_regardless_of_spacing_and_case() {
        let a = fingerprint("SELECT a FROM t WHERE id = $1");
        let b = fingerprint("select a\n from t where id=$1");
        assert_eq!(a, b);
        assert_eq!(fingerprint_with_method("SELECT a FROM t WHERE id = $1").1, Method::Parsed);
    }

    #[test]
    fn a_fingerprint_reads_back_what_it_displays_and_nothing_else() {
        let fp = Fingerprint(0x00ab_cdef_0123_4567);
        assert_eq!(Fingerprint::from_hex(&fp.to_string()), Some(fp));
        assert_eq!(Fingerprint::from_hex("ABCDEF0123456789"), Some(Fingerprint(0xabcd_ef01_2345_6789)));
        assert_eq!(Fingerprint::from_hex("ff"), Some(Fingerprint(0xff)));
        for bad in ["", "+ff", "-1", "0x1f", "12345678901234567", "g1", " 1"] {
            assert_eq!(Fingerprint::from_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn partitions_and_schemas_stay_apart() {
        assert_ne!(fingerprint("SELECT * FROM orders_2024_01"), fingerprint("SELECT * FROM orders_2024_02"));
        assert_ne!(fingerprint("SELECT * FROM a.t"), fingerprint("SELECT * FROM b.t"));
        assert_ne!(fingerprint("SELECT a FROM t"), fingerprint("SELECT b FROM t"));
    }

    #[test]
    fn typed_literal_placeholders_still_parse() {
        let (fp, m) = fingerprint_with_method("SELECT now() - interval $1");
        assert_eq!(m, Method::Parsed);
        assert_eq!(fp, fingerprint("SELECT now() - interval $2"));
        assert_eq!(placeholders_as_strings("SELECT $1, '$2', \"$3\", a$4"), "SELECT '?', '$2', \"$3\", a$4");
    }

    #[test]
    fn unparsable_text_gets_a_stable_marked_fallback() {
        let (a, m) = fingerprint_with_method("SELECT * FROM t WHERE (");
        assert_eq!(m, Method::Fallback);
        assert_eq!(a, fingerprint("SELECT * FROM t WHERE ("));
        assert_ne!(a, fingerprint("SELECT * FROM u WHERE ("));
        assert_eq!(a.to_string().len(), 16);
    }

    #[test]
    fn a_withheld_token_gives_the_fingerprint_it_carries() {
        for text in ["SELECT a FROM t WHERE id = $1", "SELECT * FROM t WHERE ("] {
            let (fp, method) = fingerprint_with_method(text);
            let token = Withheld {
                fingerprint: fp.0,
                parsed: method == Method::Parsed,
                read_only: crate::shape::is_read_only(text),
            }
            .to_string();
            assert_eq!(fingerprint_with_method(&token), (fp, method), "{text}");
        }
    }
}
