//! Fingerprints-only export (`[export] query_text = "fingerprint"`):
//! every statement text of an interval's observations is replaced by a
//! [`Withheld`] token before the interval is encoded, spooled or sent, so
//! not even the masked text leaves the node.
//!
//! The token carries the pg_query fingerprint the collector would have
//! computed from the masked text (same function, same options), so nodes
//! that withhold and nodes that do not still merge per fingerprint.
//! Texts are keys, and two masked shapes with one fingerprint (spacing,
//! keyword case, a column alias) become one key after the swap: their
//! numbers merge here, exactly as the collector would have merged them.
//!
//! Parsing a shape costs 10–100 µs and the same shapes come back every
//! interval, hence the cache. It is bounded by bytes of text, not only by
//! entries (statements can be kilobytes long); an eviction costs one parse
//! later, never data.

use querywatch_wire::dbstats::{ActivityKey, PgssKey};
use querywatch_wire::fingerprint::{Method, fingerprint_with_method};
use querywatch_wire::names::OVERFLOW_TEXT;
use querywatch_wire::observations::LockKey;
use querywatch_wire::shape::{Withheld, is_read_only};
use querywatch_wire::{Observations, StatementKey};
use quick_cache::Weighter;
use quick_cache::unsync::Cache;
use std::collections::BTreeMap;
use std::hash::Hash;

/// Bytes of text the token cache may hold (masked texts and their tokens).
pub const CACHE_BYTES: u64 = 8 << 20;

/// Replaces statement texts by tokens, with a bounded cache of the tokens.
pub struct Withholder {
    cache: Cache<Box<str>, Box<str>, TextBytes>,
    /// Shapes fingerprinted (cache misses), for the tests and the curious.
    parses: u64,
}

impl std::fmt::Debug for Withholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Withholder").field("cached", &self.cache.len()).field("parses", &self.parses).finish()
    }
}

impl Withholder {
    /// A withholder caching the tokens of about `shapes` shapes, and of
    /// at most [`CACHE_BYTES`] of text.
    pub fn new(shapes: usize) -> Withholder {
        Withholder { cache: Cache::with_weighter(shapes.max(1), CACHE_BYTES, TextBytes), parses: 0 }
    }

    /// Shapes fingerprinted so far (the cache's misses).
    pub fn parses(&self) -> u64 {
        self.parses
    }

    /// The token for one masked text. The overflow shape and "unknown"
    /// (empty) stay as they are: they are markers, not statements.
    pub fn token(&mut self, text: &str) -> String {
        if text.is_empty() || text == OVERFLOW_TEXT {
            return text.to_owned();
        }
        if let Some(t) = self.cache.get(text) {
            return t.to_string();
        }
        self.parses += 1;
        let (fp, method) = fingerprint_with_method(text);
        let token =
            Withheld { fingerprint: fp.0, parsed: method == Method::Parsed, read_only: is_read_only(text) }.to_string();
        self.cache.insert(text.into(), token.as_str().into());
        token
    }

    /// Replaces every statement text in `obs`: the statements' keys and
    /// slowest samples, lock waiters and blockers, pg_stat_statements and
    /// pg_stat_activity keys. Plans have no statement text (the agent drops
    /// auto_explain's "Query Text") and error messages are masked; both stay.
    pub fn apply(&mut self, obs: &mut Observations) {
        let statements = std::mem::take(&mut obs.statements);
        for (key, mut stats) in statements {
            if let Some(sample) = &mut stats.slowest {
                sample.text = self.token(&sample.text);
            }
            let key = StatementKey { text: self.token(&key.text), ..key };
            match obs.statements.get_mut(&key) {
                Some(mine) => mine.merge(&stats),
                None => {
                    obs.statements.insert(key, stats);
                }
            }
        }
        let locks = std::mem::take(&mut obs.locks);
        for (key, stats) in locks {
            let key = LockKey { waiter: self.token(&key.waiter), blocker: self.token(&key.blocker), ..key };
            obs.locks.entry(key).or_default().merge(&stats);
        }
        let db = &mut obs.db;
        rekey(&mut db.statements, |k| PgssKey { text: self.token(&k.text), ..k }, |a, b| a.merge(&b));
        rekey(&mut db.activity, |k| ActivityKey { text: self.token(&k.text), ..k }, |a, b| *a = a.saturating_add(b));
    }
}

/// Weighs a cache entry by its text bytes (plus a little for the entry).
#[derive(Clone, Copy, Debug)]
struct TextBytes;

impl Weighter<Box<str>, Box<str>> for TextBytes {
    fn weight(&self, text: &Box<str>, token: &Box<str>) -> u64 {
        (text.len() + token.len() + 32) as u64
    }
}

/// Rebuilds `map` under new keys, merging values whose keys now coincide.
fn rekey<K: Ord + Hash, V>(map: &mut BTreeMap<K, V>, mut key: impl FnMut(K) -> K, merge: impl Fn(&mut V, V)) {
    for (k, v) in std::mem::take(map) {
        let k = key(k);
        match map.get_mut(&k) {
            Some(mine) => merge(mine, v),
            None => {
                map.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use querywatch_wire::StatementStats;
    use querywatch_wire::dbstats::PgssDelta;
    use querywatch_wire::observations::LockStats;
    use std::time::Duration;

    fn stats(text: &str, calls: u64, ms: u64) -> StatementStats {
        let mut s = StatementStats::default();
        for _ in 0..calls {
            s.record_call(Duration::from_millis(ms), Some(1_000), text);
        }
        s
    }

    fn key(text: &str) -> StatementKey {
        StatementKey { database: "shop".into(), user: "app".into(), text: text.into() }
    }

    #[test]
    fn no_text_is_left_and_shapes_with_one_fingerprint_merge() {
        let mut obs = Observations::default();
        // One fingerprint (spacing and case differ), one other shape.
        for (text, calls, ms) in [
            ("SELECT a FROM t WHERE id = $1", 2, 10),
            ("select a\n  from t where id=$1", 3, 20),
            ("UPDATE t SET a = $1", 1, 5),
            (OVERFLOW_TEXT, 7, 1),
        ] {
            obs.statements.insert(key(text), stats(text, calls, ms));
        }
        obs.locks.insert(
            LockKey {
                database: "shop".into(),
                waiter: "UPDATE t SET a = $1".into(),
                blocker: String::new(),
                mode: "ShareLock".into(),
                object: "transaction".into(),
            },
            LockStats { waits: 1, ..LockStats::default() },
        );
        let pgss = |text: &str| PgssKey {
            database: "shop".into(),
            user: "app".into(),
            queryid: 42,
            toplevel: true,
            text: text.into(),
        };
        let delta = |calls| PgssDelta { calls, ..PgssDelta::default() };
        obs.db.statements.insert(pgss("SELECT a FROM t WHERE id = $1"), delta(4));
        obs.db.statements.insert(pgss("SELECT a FROM t WHERE id=$1"), delta(6));
        let activity = ActivityKey {
            database: "shop".into(),
            wait_event_type: String::new(),
            wait_event: String::new(),
            state: "active".into(),
            text: "SELECT pg_sleep($1)".into(),
        };
        obs.db.activity.insert(activity, 3);

        let mut w = Withholder::new(100);
        w.apply(&mut obs);

        let select = Withheld::parse(&w.token("SELECT a FROM t WHERE id = $1")).unwrap();
        assert!(select.parsed && select.read_only);
        let update = Withheld::parse(&w.token("UPDATE t SET a = $1")).unwrap();
        assert!(update.parsed && !update.read_only);
        assert_ne!(select.fingerprint, update.fingerprint);

        assert_eq!(obs.statements.len(), 3, "{:?}", obs.statements.keys().collect::<Vec<_>>());
        let merged = &obs.statements[&key(&select.to_string())];
        assert_eq!(merged.calls, 5);
        assert_eq!(merged.hist.count(), 5);
        assert_eq!(merged.slowest.as_ref().unwrap().text, select.to_string());
        assert_eq!(obs.statements[&key(&update.to_string())].calls, 1);
        assert_eq!(obs.statements[&key(OVERFLOW_TEXT)].calls, 7);
        let lock = obs.locks.keys().next().unwrap();
        assert_eq!((lock.waiter.as_str(), lock.blocker.as_str()), (update.to_string().as_str(), ""));
        assert_eq!(obs.db.statements.len(), 1);
        assert_eq!(obs.db.statements.values().next().unwrap().calls, 10);
        assert!(Withheld::parse(&obs.db.activity.keys().next().unwrap().text).is_some_and(|t| !t.read_only));

        // Every text is now a token or a marker.
        let texts = obs
            .statements
            .keys()
            .map(|k| &k.text)
            .chain(obs.db.statements.keys().map(|k| &k.text))
            .chain(obs.db.activity.keys().map(|k| &k.text));
        for t in texts {
            assert!(Withheld::parse(t).is_some() || t == OVERFLOW_TEXT, "{t}");
        }
    }

    #[test]
    fn tokens_are_cached_within_the_bound() {
        let mut w = Withholder::new(10);
        for _ in 0..3 {
            w.token("SELECT a FROM t WHERE id = $1");
        }
        assert_eq!(w.parses(), 1);
        // Long statements: the byte bound holds whatever the entry count.
        let long = "x".repeat(100_000);
        for i in 0..100 {
            w.token(&format!("SELECT c{i}, {long} FROM t"));
        }
        assert_eq!(w.parses(), 101);
        assert!(w.cache.weight() <= CACHE_BYTES, "{} bytes cached", w.cache.weight());
        assert!(w.cache.len() < 100, "{} cached", w.cache.len());
        // An unparsable shape gets the collector's fallback, marked.
        let t = Withheld::parse(&w.token("SELECT * FROM t WHERE (")).unwrap();
        assert!(!t.parsed);
    }
}
