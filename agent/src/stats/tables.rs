//! `pg_stat_user_tables` + `pg_statio_user_tables` snapshots of one
//! database and the pure [`diff_tables`] into [`TableDelta`]s.
//!
//! The rules are the statement rules (see [`super::statements`]) but for
//! one: the database's `pg_stat_database.stats_reset` is reported, not
//! trusted. PostgreSQL moves it for `pg_stat_reset()` of the whole
//! database and also for a single relation's or function's reset
//! (`pg_stat_reset_single_table_counters()`; `pgstat_reset()` updates the
//! database's timestamp too), so taking it as "every counter restarted"
//! sent every other table's lifetime counters as one interval's activity.
//! Instead, per relation: a table-level counter going down makes that
//! relation's current counters the delta (after a database reset, every
//! busy relation's counters go down); a restart or crash restart is a new
//! baseline; a relation absent from the previous snapshot was created since
//! (every user table of the database is in every snapshot).
//!
//! `idx_scan` and `idx_tup_fetch` are sums over the relation's current
//! indexes: they go down when an index is dropped, which is no reset, so
//! they alone going down gives them a zero delta.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::SystemTime;

use rustc_hash::FxHashMap;

use super::counters::{Counters, DeltaOrigin, Previous, ServerEpoch, entry_delta};
use super::statements::{Oid, merge_origin};

/// The cumulative per-relation counters we ship.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub seq_scan: u64,
    pub seq_tup_read: u64,
    /// Zero for a relation without indexes (NULL in PostgreSQL).
    pub idx_scan: u64,
    pub idx_tup_fetch: u64,
    pub n_tup_ins: u64,
    pub n_tup_upd: u64,
    pub n_tup_del: u64,
    pub heap_blks_read: u64,
    pub heap_blks_hit: u64,
}

impl Counters for TableCounters {
    fn checked_sub(&self, e: &Self) -> Option<Self> {
        Some(TableCounters {
            seq_scan: self.seq_scan.checked_sub(e.seq_scan)?,
            seq_tup_read: self.seq_tup_read.checked_sub(e.seq_tup_read)?,
            // Sums over the current indexes: a dropped index lowers them.
            idx_scan: self.idx_scan.saturating_sub(e.idx_scan),
            idx_tup_fetch: self.idx_tup_fetch.saturating_sub(e.idx_tup_fetch),
            n_tup_ins: self.n_tup_ins.checked_sub(e.n_tup_ins)?,
            n_tup_upd: self.n_tup_upd.checked_sub(e.n_tup_upd)?,
            n_tup_del: self.n_tup_del.checked_sub(e.n_tup_del)?,
            heap_blks_read: self.heap_blks_read.checked_sub(e.heap_blks_read)?,
            heap_blks_hit: self.heap_blks_hit.checked_sub(e.heap_blks_hit)?,
        })
    }

    /// `idx_scan` and `idx_tup_fetch` are sums over the table's indexes,
    /// whose counters are their own: `pg_stat_reset_single_table_counters`
    /// on the table resets the table's and leaves them, so where they did
    /// not go down they go on by difference. Taken whole, a partition's
    /// lifetime of index scans went out as one interval's load.
    fn since_reset(&self, earlier: &Self) -> Self {
        let since = |now: u64, before: u64| now.checked_sub(before).unwrap_or(now);
        TableCounters {
            idx_scan: since(self.idx_scan, earlier.idx_scan),
            idx_tup_fetch: since(self.idx_tup_fetch, earlier.idx_tup_fetch),
            ..*self
        }
    }

    fn saturating_add(&self, o: &Self) -> Self {
        TableCounters {
            seq_scan: self.seq_scan.saturating_add(o.seq_scan),
            seq_tup_read: self.seq_tup_read.saturating_add(o.seq_tup_read),
            idx_scan: self.idx_scan.saturating_add(o.idx_scan),
            idx_tup_fetch: self.idx_tup_fetch.saturating_add(o.idx_tup_fetch),
            n_tup_ins: self.n_tup_ins.saturating_add(o.n_tup_ins),
            n_tup_upd: self.n_tup_upd.saturating_add(o.n_tup_upd),
            n_tup_del: self.n_tup_del.saturating_add(o.n_tup_del),
            heap_blks_read: self.heap_blks_read.saturating_add(o.heap_blks_read),
            heap_blks_hit: self.heap_blks_hit.saturating_add(o.heap_blks_hit),
        }
    }
}

/// A relation's schema and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schemaname: Arc<str>,
    pub relname: Arc<str>,
}

impl std::fmt::Display for RelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schemaname, self.relname)
    }
}

/// One relation as the agent keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TableEntry {
    pub name: RelName,
    /// The partitioned table this relation is a partition of (`pg_inherits`);
    /// `None` for a plain table.
    pub partition_parent: Option<RelName>,
    /// The top of its partition tree (`pg_partition_root`, PostgreSQL 12+);
    /// the parent itself for one level of partitioning.
    pub partition_root: Option<RelName>,
    /// `pg_relation_size` (main fork), when it could be read this time.
    pub size_bytes: Option<u64>,
    pub counters: TableCounters,
}

/// Everything one poll of one database's table statistics saw.
#[derive(Clone, Debug)]
pub struct TableSnapshot {
    pub taken_at: SystemTime,
    pub server: ServerEpoch,
    pub datname: Arc<str>,
    /// `pg_stat_database.stats_reset` of this database (NULL until the
    /// first `pg_stat_reset()`).
    pub stats_reset: Option<SystemTime>,
    /// By `relid`.
    pub entries: FxHashMap<Oid, TableEntry>,
}

/// What one interval added to one relation.
#[derive(Clone, Debug, PartialEq)]
pub struct TableDelta {
    pub datname: Arc<str>,
    pub relid: Oid,
    pub name: RelName,
    pub partition_parent: Option<RelName>,
    pub partition_root: Option<RelName>,
    pub size_bytes: Option<u64>,
    pub origin: DeltaOrigin,
    pub counters: TableCounters,
}

/// What [`diff_tables`] noticed besides the deltas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDiffReport {
    pub restart: bool,
    /// `pg_stat_reset()` of the database (stats_reset changed).
    pub reset: bool,
    /// Relations whose counters went down.
    pub entries_reset: u64,
    /// Relations dropped since the previous snapshot.
    pub disappeared: u64,
}

/// The deltas of one database from `prev` to `cur`, sorted by relid, never
/// negative. Relations without any change yield nothing.
pub fn diff_tables(prev: &TableSnapshot, cur: &TableSnapshot, report: &mut TableDiffReport) -> Vec<TableDelta> {
    if !prev.server.same_run(&cur.server) {
        report.restart = true;
        return Vec::new();
    }
    // Reported, not acted on: see the module doc.
    report.reset |= cur.stats_reset.is_some() && cur.stats_reset != prev.stats_reset;
    report.disappeared += prev.entries.keys().filter(|k| !cur.entries.contains_key(k)).count() as u64;
    let mut deltas = Vec::new();
    for (&relid, entry) in &cur.entries {
        let previous = prev.entries.get(&relid).map_or(Previous::Absent, |p| Previous::Seen(&p.counters));
        if let Some((origin, counters)) = entry_delta(previous, &entry.counters, false) {
            if origin == DeltaOrigin::Reset {
                report.entries_reset += 1;
            }
            deltas.push(TableDelta {
                datname: cur.datname.clone(),
                relid,
                name: entry.name.clone(),
                partition_parent: entry.partition_parent.clone(),
                partition_root: entry.partition_root.clone(),
                size_bytes: entry.size_bytes,
                origin,
                counters,
            });
        }
    }
    deltas.sort_unstable_by_key(|d| d.relid);
    deltas
}

/// The table deltas of one database for one poll interval.
#[derive(Clone, Debug, PartialEq)]
pub struct TableBatch {
    pub datname: Arc<str>,
    pub since: SystemTime,
    pub until: SystemTime,
    pub deltas: Vec<TableDelta>,
}

impl TableBatch {
    /// Adds a later batch of the same database into this one (see
    /// [`super::statements::StatementBatch::absorb`]); size and names from
    /// the later one.
    pub fn absorb(&mut self, later: TableBatch) {
        let mut index: FxHashMap<Oid, usize> = self.deltas.iter().enumerate().map(|(i, d)| (d.relid, i)).collect();
        for d in later.deltas {
            match index.entry(d.relid) {
                Entry::Occupied(slot) => {
                    let mine = &mut self.deltas[*slot.get()];
                    let counters = mine.counters.saturating_add(&d.counters);
                    let origin = merge_origin(mine.origin, d.origin);
                    *mine = TableDelta { counters, origin, ..d };
                }
                Entry::Vacant(slot) => {
                    slot.insert(self.deltas.len());
                    self.deltas.push(d);
                }
            }
        }
        self.deltas.sort_unstable_by_key(|d| d.relid);
        self.until = later.until;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn rel(name: &str) -> RelName {
        RelName { schemaname: "public".into(), relname: name.into() }
    }

    fn snap(t: u64, stats_reset: Option<u64>, entries: &[(Oid, u64)]) -> TableSnapshot {
        TableSnapshot {
            taken_at: at(t),
            server: ServerEpoch { postmaster_start: at(0), checkpointer_start: None },
            datname: "app".into(),
            stats_reset: stats_reset.map(at),
            entries: entries
                .iter()
                .map(|&(relid, n)| {
                    let e = TableEntry {
                        name: rel(&format!("t{relid}")),
                        partition_parent: (relid > 100).then(|| rel("parent")),
                        partition_root: (relid > 100).then(|| rel("parent")),
                        size_bytes: Some(8192),
                        counters: TableCounters { seq_scan: n, n_tup_ins: 2 * n, ..TableCounters::default() },
                    };
                    (relid, e)
                })
                .collect(),
        }
    }

    fn scans(d: &[TableDelta]) -> Vec<(Oid, u64, DeltaOrigin)> {
        d.iter().map(|d| (d.relid, d.counters.seq_scan, d.origin)).collect()
    }

    #[test]
    fn rules() {
        let mut r = TableDiffReport::default();
        let prev = snap(0, None, &[(1, 5), (101, 3), (102, 3), (7, 3)]);
        let cur = snap(10, None, &[(1, 8), (101, 1), (102, 0), (2, 1)]);
        let d = diff_tables(&prev, &cur, &mut r);
        // 102 was reset with nothing since: a zero delta, not reported.
        assert_eq!(scans(&d), [(1, 3, DeltaOrigin::Increment), (2, 1, DeltaOrigin::New), (101, 1, DeltaOrigin::Reset)]);
        assert_eq!(d[2].partition_parent, Some(rel("parent")));
        assert_eq!((r.entries_reset, r.disappeared), (1, 1));

        // pg_stat_reset() of the database (NULL → a time): every busy
        // relation's counters went down, so each gives what it has now.
        let mut r = TableDiffReport::default();
        let d = diff_tables(&snap(0, None, &[(1, 5), (2, 9)]), &snap(10, Some(5), &[(1, 2), (2, 1)]), &mut r);
        assert_eq!(scans(&d), [(1, 2, DeltaOrigin::Reset), (2, 1, DeltaOrigin::Reset)]);
        assert!(r.reset);
        // pg_stat_reset_single_table_counters() of relation 2 moves the
        // database's reset time too: relation 1 still gives its increment,
        // not its lifetime counters.
        let mut r = TableDiffReport::default();
        let d = diff_tables(&snap(0, Some(1), &[(1, 500), (2, 9)]), &snap(10, Some(5), &[(1, 507), (2, 1)]), &mut r);
        assert_eq!(scans(&d), [(1, 7, DeltaOrigin::Increment), (2, 1, DeltaOrigin::Reset)]);
        assert!(r.reset);

        // DROP INDEX: the index sums go down, the table's counters do not.
        let with = |seq_scan, idx_scan| TableCounters {
            seq_scan,
            idx_scan,
            idx_tup_fetch: idx_scan * 2,
            ..TableCounters::default()
        };
        assert_eq!(
            entry_delta(Previous::Seen(&with(100, 5_000)), &with(103, 20), false),
            Some((DeltaOrigin::Increment, with(3, 0)))
        );

        // pg_stat_reset_single_table_counters() resets the table's own
        // counters, not its indexes': the index sums go on by difference.
        assert_eq!(
            entry_delta(Previous::Seen(&with(100, 50_000_000)), &with(2, 50_000_007), false),
            Some((DeltaOrigin::Reset, with(2, 7)))
        );
        // pg_stat_reset() resets the indexes too: what they have now.
        assert_eq!(
            entry_delta(Previous::Seen(&with(100, 5_000)), &with(2, 3), false),
            Some((DeltaOrigin::Reset, with(2, 3)))
        );

        let mut restarted = snap(10, None, &[(1, 50)]);
        restarted.server.postmaster_start = at(5);
        let mut r = TableDiffReport::default();
        assert!(diff_tables(&snap(0, None, &[(1, 5)]), &restarted, &mut r).is_empty());
        assert!(r.restart);
    }

    proptest! {
        /// Random growth with per-table and database resets: every delta is
        /// at most the truth, and without resets they sum to last − first.
        #[test]
        fn never_more_than_the_truth(
            steps in prop::collection::vec(prop::collection::vec((0u32..4, 0u64..10, 0u8..12), 0..8), 1..8),
        ) {
            let mut truth: BTreeMap<Oid, u64> = BTreeMap::new();
            let mut reset_at = None;
            let mut clock = 0;
            let mk = |clock, reset_at, truth: &BTreeMap<Oid, u64>| {
                snap(clock, reset_at, &truth.iter().map(|(&k, &v)| (k, v)).collect::<Vec<_>>())
            };
            let first = mk(clock, reset_at, &truth);
            let mut prev = first.clone();
            let mut sums: BTreeMap<Oid, u64> = BTreeMap::new();
            let mut any_reset = false;
            for ops in &steps {
                let mut gained: BTreeMap<Oid, u64> = BTreeMap::new();
                for &(relid, n, what) in ops {
                    clock += 1;
                    match what {
                        // A single relation's reset moves the database's
                        // reset time too (PostgreSQL's pgstat_reset()).
                        0 => { truth.insert(relid, 0); reset_at = Some(clock); any_reset = true; }
                        1 => { truth.values_mut().for_each(|v| *v = 0); reset_at = Some(clock); any_reset = true; }
                        _ => { *truth.entry(relid).or_default() += n; *gained.entry(relid).or_default() += n; }
                    }
                }
                clock += 1;
                let cur = mk(clock, reset_at, &truth);
                for d in diff_tables(&prev, &cur, &mut TableDiffReport::default()) {
                    prop_assert!(d.counters.seq_scan <= gained.get(&d.relid).copied().unwrap_or(0));
                    *sums.entry(d.relid).or_default() += d.counters.seq_scan;
                }
                prev = cur;
            }
            if !any_reset {
                for (relid, v) in &truth {
                    let before = first.entries.get(relid).map_or(0, |e| e.counters.seq_scan);
                    prop_assert_eq!(sums.get(relid).copied().unwrap_or(0), v - before);
                }
            }
        }
    }
}
