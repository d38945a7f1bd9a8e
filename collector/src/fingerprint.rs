//! Statement fingerprints: pg_query's fingerprint of the masked shape,
//! computed once per distinct shape (bounded LRU cache).
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

use lru::LruCache;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::num::NonZeroUsize;

/// A statement fingerprint; displayed as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u64);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
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
pub fn fingerprint_with_method(masked: &str) -> (Fingerprint, Method) {
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

/// Counters of a [`Fingerprinter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FingerprintStats {
    pub hits: u64,
    pub misses: u64,
    pub fallbacks: u64,
}

/// A bounded cache in front of [`fingerprint_with_method`]: parsing costs
/// ~10–100 µs, a lookup well under one, and shapes repeat.
pub struct Fingerprinter {
    cache: LruCache<String, (Fingerprint, Method)>,
    stats: FingerprintStats,
    bytes: usize,
}

/// One cache entry besides its text: the LRU node (key, value, two links)
/// with its allocation header, the map slot (two pointers and a control
/// byte) counted twice for the table's slack, and the text's header.
const CACHE_ENTRY_COST: usize = std::mem::size_of::<(String, (Fingerprint, Method))>()
    + 2 * std::mem::size_of::<usize>()
    + crate::window::ALLOC_OVERHEAD
    + 2 * (2 * std::mem::size_of::<usize>() + 1)
    + crate::window::ALLOC_OVERHEAD;

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fingerprinter").field("len", &self.cache.len()).field("stats", &self.stats).finish()
    }
}

impl Fingerprinter {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Fingerprinter { cache: LruCache::new(cap), stats: FingerprintStats::default(), bytes: 0 }
    }

    pub fn get(&mut self, masked: &str) -> (Fingerprint, Method) {
        if let Some(v) = self.cache.get(masked) {
            self.stats.hits += 1;
            return *v;
        }
        self.stats.misses += 1;
        let v = fingerprint_with_method(masked);
        if v.1 == Method::Fallback {
            self.stats.fallbacks += 1;
        }
        self.bytes += masked.len() + CACHE_ENTRY_COST;
        if let Some((old, _)) = self.cache.push(masked.to_owned(), v) {
            self.bytes -= old.len() + CACHE_ENTRY_COST;
        }
        v
    }

    /// Estimated bytes the cache holds (keys, entries, allocator overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn stats(&self) -> FingerprintStats {
        self.stats
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
    fn cache_counts_hits_and_misses() {
        let mut f = Fingerprinter::new(2);
        f.get("SELECT 1");
        f.get("SELECT 1");
        f.get("SELECT (");
        assert_eq!(f.stats(), FingerprintStats { hits: 1, misses: 2, fallbacks: 1 });
    }
}
