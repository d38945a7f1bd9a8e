//! The statement store: statistics per (fingerprint, database, user),
//! merged from the [`Observations`] of any number of agents or files.
//!
//! Masked shapes are fingerprinted here (once per shape, cached), so shapes
//! that differ only in ways pg_query ignores — spacing, keyword case,
//! IN-list length — land in one row. The number of rows is capped; past the
//! cap new fingerprints fold into one overflow row, and that is counted.

use crate::fingerprint::{Fingerprint, Fingerprinter, Method};
use querywatch_wire::stats::StatementStats;
use querywatch_wire::{Observations, names::OVERFLOW_TEXT};
use rustc_hash::FxHashMap;

/// Limits of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Distinct (fingerprint, database, user) rows kept.
    pub max_queries: usize,
    /// Masked shapes whose fingerprint is cached.
    pub fingerprint_cache: usize,
    /// Distinct lock-wait groups kept.
    pub max_locks: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { max_queries: 50_000, fingerprint_cache: 100_000, max_locks: 10_000 }
    }
}

/// One row of the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey {
    pub fingerprint: Fingerprint,
    pub database: String,
    pub user: String,
}

/// Statistics of one row, with the text shown for it.
#[derive(Clone, Debug)]
pub struct QueryEntry {
    /// The first masked shape seen for this fingerprint (literal-free).
    pub text: String,
    pub method: Method,
    pub stats: StatementStats,
}

/// Fingerprint used for the overflow row.
pub const OVERFLOW_FINGERPRINT: Fingerprint = Fingerprint(0);

/// Everything merged so far.
#[derive(Debug)]
pub struct Store {
    cfg: StoreConfig,
    fingerprinter: Fingerprinter,
    pub queries: FxHashMap<QueryKey, QueryEntry>,
    /// Calls folded into the overflow row here (the agents' own overflow is
    /// in `rest.overflow_calls`).
    pub overflow_calls: u64,
    /// Lock waits and deadlocks of groups past the cap.
    pub overflow_locks: u64,
    /// Everything that is not per statement, merged as the agents sent it
    /// (its `statements` map stays empty: they live in `queries`).
    pub rest: Observations,
}

impl Store {
    pub fn new(cfg: StoreConfig) -> Self {
        Store {
            fingerprinter: Fingerprinter::new(cfg.fingerprint_cache),
            cfg,
            queries: FxHashMap::default(),
            overflow_calls: 0,
            overflow_locks: 0,
            rest: Observations::default(),
        }
    }

    /// Merges one agent's (or one file's) observations.
    pub fn ingest(&mut self, mut obs: Observations) {
        for (key, stats) in std::mem::take(&mut obs.statements) {
            let (fingerprint, method) = if key.text == OVERFLOW_TEXT {
                (OVERFLOW_FINGERPRINT, Method::Fallback)
            } else {
                self.fingerprinter.get(&key.text)
            };
            let mut qk = QueryKey { fingerprint, database: key.database, user: key.user };
            if !self.queries.contains_key(&qk) && self.queries.len() >= self.cfg.max_queries {
                self.overflow_calls += stats.calls;
                qk.fingerprint = OVERFLOW_FINGERPRINT;
            }
            match self.queries.get_mut(&qk) {
                Some(e) => e.stats.merge(&stats),
                None => {
                    let text = if qk.fingerprint == OVERFLOW_FINGERPRINT { OVERFLOW_TEXT.to_owned() } else { key.text };
                    self.queries.insert(qk, QueryEntry { text, method, stats });
                }
            }
        }
        let cap = self.cfg.max_locks;
        let known = &self.rest.locks;
        let mut kept = 0;
        obs.locks.retain(|k, v| {
            let keep = known.contains_key(k) || known.len() + kept < cap;
            if keep {
                kept += usize::from(!known.contains_key(k));
            } else {
                self.overflow_locks += v.waits + v.deadlocks;
            }
            keep
        });
        self.rest.merge(obs);
    }

    /// Calls folded into `<other>`, here and at the agents.
    pub fn total_overflow_calls(&self) -> u64 {
        self.overflow_calls + self.rest.overflow_calls
    }

    pub fn fingerprint_stats(&self) -> crate::fingerprint::FingerprintStats {
        self.fingerprinter.stats()
    }

    /// Rows merged across databases and users: one per fingerprint, with
    /// the (database, user) pairs that ran it. The cluster-wide view.
    pub fn by_fingerprint(&self) -> Vec<(Fingerprint, &QueryEntry, StatementStats)> {
        let mut map: FxHashMap<Fingerprint, (&QueryEntry, StatementStats)> = FxHashMap::default();
        for (k, e) in &self.queries {
            map.entry(k.fingerprint).or_insert_with(|| (e, StatementStats::default())).1.merge(&e.stats);
        }
        map.into_iter().map(|(f, (e, s))| (f, e, s)).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use querywatch_wire::StatementKey;
    use std::time::Duration;

    fn obs(texts: &[(&str, u64)]) -> Observations {
        let mut o = Observations::default();
        for (text, ms) in texts {
            let key = StatementKey { database: "db".into(), user: "u".into(), text: (*text).into() };
            o.statements.entry(key).or_default().record_call(Duration::from_millis(*ms), None, text);
        }
        o
    }

    #[test]
    fn shapes_pg_query_considers_equal_merge_into_one_row() {
        let mut s = Store::new(StoreConfig::default());
        s.ingest(obs(&[("SELECT a FROM t WHERE id = $1", 1), ("select a from t where id=$1", 3)]));
        s.ingest(obs(&[("SELECT a FROM t WHERE id = $1", 5)]));
        assert_eq!(s.queries.len(), 1);
        let e = s.queries.values().next().unwrap();
        assert_eq!(e.stats.calls, 3);
        assert_eq!(e.stats.total, Duration::from_millis(9));
    }

    #[test]
    fn the_cap_folds_new_fingerprints_into_overflow_and_counts_them() {
        let mut s = Store::new(StoreConfig { max_queries: 2, ..StoreConfig::default() });
        s.ingest(obs(&[
            ("SELECT a FROM t", 1),
            ("SELECT b FROM t", 1),
            ("SELECT c FROM t", 1),
            ("SELECT d FROM t", 1),
        ]));
        assert_eq!(s.queries.len(), 3);
        assert_eq!(s.overflow_calls, 2);
        let overflow = s.queries.iter().find(|(k, _)| k.fingerprint == OVERFLOW_FINGERPRINT).unwrap().1;
        assert_eq!(overflow.stats.calls, 2);
        assert_eq!(overflow.text, OVERFLOW_TEXT);
    }

    #[test]
    fn the_lock_cap_counts_what_it_drops() {
        use querywatch_wire::observations::{LockKey, LockStats};
        let mut s = Store::new(StoreConfig { max_locks: 1, ..StoreConfig::default() });
        let mut o = Observations::default();
        for mode in ["ShareLock", "ExclusiveLock"] {
            let key = LockKey {
                database: "db".into(),
                waiter: String::new(),
                blocker: String::new(),
                mode: mode.into(),
                object: "transaction".into(),
            };
            o.locks.insert(key, LockStats { waits: 2, ..LockStats::default() });
        }
        s.ingest(o.clone());
        s.ingest(o);
        assert_eq!(s.rest.locks.len(), 1);
        assert_eq!(s.rest.locks.values().next().unwrap().waits, 4);
        assert_eq!(s.overflow_locks, 4);
    }
}
