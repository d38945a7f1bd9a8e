//! The collector's fingerprint cache: [`fingerprint_with_method`] (in the
//! wire crate, which the agent shares for its fingerprints-only export)
//! computed once per distinct masked shape, in a bounded, scan-resistant
//! cache.

pub use querywatch_wire::fingerprint::{Fingerprint, Method, fingerprint, fingerprint_with_method};
use quick_cache::unsync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use std::fmt;

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
