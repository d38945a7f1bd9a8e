//! Statement fingerprints: pg_query's fingerprint of the masked shape,
//! computed once per distinct shape (bounded, scan-resistant cache).
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

use quick_cache::unsync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
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
///
/// quick_cache's S3-FIFO, not an LRU: a flood of shapes seen once (a
/// cardinality attack, a client whose values the agent could not mask)
/// passes through its small probation queue without evicting the shapes
/// that keep coming back, where an LRU of the same size evicted them all,
/// and each came back as a pg_query parse on the store's one thread.
/// Hits cost the same as with the `lru` crate (measured, within noise).
pub struct Fingerprinter {
    cache: Cache<Box<str>, (Fingerprint, Method), UnitWeighter, DefaultHashBuilder, TextBytes>,
    stats: FingerprintStats,
    /// Bytes of the cached texts (the table's own size is asked of it).
    text_bytes: usize,
}

/// Sums the text bytes of what one insert evicts, so the cache's size
/// estimate follows its content.
#[derive(Clone, Copy, Debug, Default)]
struct TextBytes;

impl Lifecycle<Box<str>, (Fingerprint, Method)> for TextBytes {
    type RequestState = usize;

    fn on_evict(&self, freed: &mut usize, key: Box<str>, _: (Fingerprint, Method)) {
        *freed += key.len();
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fingerprinter").field("len", &self.cache.len()).field("stats", &self.stats).finish()
    }
}

impl Fingerprinter {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let cache = Cache::with(
            capacity,
            u64::try_from(capacity).unwrap_or(u64::MAX),
            UnitWeighter,
            DefaultHashBuilder::default(),
            TextBytes,
        );
        Fingerprinter { cache, stats: FingerprintStats::default(), text_bytes: 0 }
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
        let mut freed = 0;
        self.cache.insert_with_lifecycle(masked.into(), v, &mut freed);
        self.text_bytes = (self.text_bytes + masked.len()).saturating_sub(freed);
        v
    }

    /// Estimated bytes the cache holds: its table and entries (as it
    /// reports them), the texts and one allocation header per text.
    pub fn bytes(&self) -> usize {
        self.cache.memory_used().total() + self.text_bytes + self.cache.len() * crate::window::ALLOC_OVERHEAD
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

    /// The reason for S3-FIFO: shapes that keep coming back stay cached
    /// through a flood of shapes seen once, ten times the cache's size.
    /// (An LRU of the same size misses all 100 on every round.)
    #[test]
    fn a_flood_of_one_off_shapes_does_not_evict_the_recurring_ones() {
        let mut f = Fingerprinter::new(1_000);
        let recurring: Vec<String> = (0..100).map(|i| format!("SELECT c{i} FROM t WHERE id = $1")).collect();
        for _ in 0..3 {
            for t in &recurring {
                f.get(t);
            }
        }
        for round in 0..10 {
            for i in 0..1_000 {
                // Fallback shapes: no parse cost for the flood.
                f.get(&format!("flood {round} {i} ("));
            }
            let before = f.stats().hits;
            for t in &recurring {
                f.get(t);
            }
            assert_eq!(f.stats().hits - before, 100, "round {round}: recurring shapes were evicted");
        }
        assert!(f.cache.len() <= 1_100, "the cache holds {} shapes, capacity 1,000", f.cache.len());
    }

    /// The size estimate follows the content: the text bytes it counts
    /// are exactly those of the texts cached, however they came and went.
    #[test]
    fn the_size_estimate_follows_what_is_cached() {
        let mut f = Fingerprinter::new(100);
        let cached = |f: &Fingerprinter| f.cache.iter().map(|(k, _)| k.len()).sum::<usize>();
        let empty = f.bytes();
        for round in 0..20 {
            for i in 0..50 {
                // Long and short texts, some of them again and again.
                let len = if i % 3 == 0 { 1_000 } else { 10 };
                f.get(&format!("{} {} (", "x".repeat(len), if i < 10 { 0 } else { round * 100 + i }));
            }
            assert_eq!(f.text_bytes, cached(&f), "round {round}");
            assert!(f.cache.len() <= 110, "round {round}: {} cached, capacity 100", f.cache.len());
        }
        assert!(f.bytes() >= empty + cached(&f) + f.cache.len() * crate::window::ALLOC_OVERHEAD);
    }
}
