//! `pg_stat_statements` snapshots and the pure [`diff`] that turns two of
//! them into [`StatementDelta`]s.
//!
//! # Delta rules (after pganalyze's `state/postgres_statement.go`)
//! - The first snapshot of a server run is a baseline: no deltas (its
//!   counters hold an unknown past).
//! - A server restart or crash restart between the snapshots
//!   ([`ServerEpoch`]) makes the current snapshot a new baseline.
//! - `pg_stat_statements_info.stats_reset` changed (PostgreSQL 14+): every
//!   entry was removed by `pg_stat_statements_reset()`, so each current
//!   entry's counters are all post-reset activity: they are the delta.
//! - An entry in both snapshots: current − previous; if any counter went
//!   down (a reset of that entry, or it was evicted and re-created) or its
//!   `stats_since` moved (PostgreSQL 17+), the current counters are the
//!   delta instead.
//! - An entry only in the current snapshot is new since the previous one,
//!   and all its counters are the delta — *provided the previous snapshot
//!   would have shown it*. pg_stat_statements takes its shared lock for a
//!   whole scan, so a scan sees every entry that exists; the exceptions are
//!   rows the role may not attribute (no `pg_read_all_stats`: `queryid` is
//!   NULL). An entry of a (userid, dbid) that had such rows in the previous
//!   snapshot is a baseline, not new: it may be old.
//! - An entry only in the previous snapshot was evicted (`dealloc` grew) or
//!   reset individually: nothing is reported for it, the disappearance is
//!   counted.
//!
//! Every delta is therefore at most what really happened to that entry
//! between the two snapshots; what is lost is what happened between the
//! previous snapshot and a reset or eviction.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustc_hash::{FxHashMap, FxHashSet};

use super::counters::{Counters, DeltaOrigin, Previous, ServerEpoch, entry_delta};

/// A PostgreSQL object id.
pub type Oid = u32;

/// pg_stat_statements' own key (`pgssHashKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatementKey {
    pub userid: Oid,
    pub dbid: Oid,
    pub queryid: i64,
    /// Always true before PostgreSQL 14 (no `toplevel` column).
    pub toplevel: bool,
}

/// The cumulative counters we ship; times as `Duration` (rounded to whole
/// nanoseconds when read, see [`super::counters::millis`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatementCounters {
    pub calls: u64,
    pub total_exec_time: Duration,
    /// Zero unless `pg_stat_statements.track_planning` (and before 13).
    pub total_plan_time: Duration,
    pub rows: u64,
    pub shared_blks_hit: u64,
    pub shared_blks_read: u64,
    pub temp_blks_written: u64,
}

impl Counters for StatementCounters {
    fn checked_sub(&self, e: &Self) -> Option<Self> {
        Some(StatementCounters {
            calls: self.calls.checked_sub(e.calls)?,
            total_exec_time: self.total_exec_time.checked_sub(e.total_exec_time)?,
            total_plan_time: self.total_plan_time.checked_sub(e.total_plan_time)?,
            rows: self.rows.checked_sub(e.rows)?,
            shared_blks_hit: self.shared_blks_hit.checked_sub(e.shared_blks_hit)?,
            shared_blks_read: self.shared_blks_read.checked_sub(e.shared_blks_read)?,
            temp_blks_written: self.temp_blks_written.checked_sub(e.temp_blks_written)?,
        })
    }

    fn saturating_add(&self, o: &Self) -> Self {
        StatementCounters {
            calls: self.calls.saturating_add(o.calls),
            total_exec_time: self.total_exec_time.saturating_add(o.total_exec_time),
            total_plan_time: self.total_plan_time.saturating_add(o.total_plan_time),
            rows: self.rows.saturating_add(o.rows),
            shared_blks_hit: self.shared_blks_hit.saturating_add(o.shared_blks_hit),
            shared_blks_read: self.shared_blks_read.saturating_add(o.shared_blks_read),
            temp_blks_written: self.temp_blks_written.saturating_add(o.temp_blks_written),
        }
    }
}

/// One row of pg_stat_statements, as the agent keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatementEntry {
    /// Database name (the oid as text if it was dropped).
    pub datname: Arc<str>,
    /// Role name (the oid as text if it was dropped).
    pub rolname: Arc<str>,
    /// The statement text **after** [`crate::mask::mask`].
    pub query: Arc<str>,
    /// `stats_since` (PostgreSQL 17+): when this entry was created.
    pub stats_since: Option<SystemTime>,
    pub counters: StatementCounters,
}

/// Everything one poll of pg_stat_statements saw.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The server's clock (`now()`) when the poll began.
    pub taken_at: SystemTime,
    pub server: ServerEpoch,
    /// `pg_stat_statements_info.stats_reset` (PostgreSQL 14+).
    pub stats_reset: Option<SystemTime>,
    /// `pg_stat_statements_info.dealloc` (PostgreSQL 14+): evictions.
    pub dealloc: Option<u64>,
    /// The agent's own statements are not in here.
    pub entries: FxHashMap<StatementKey, StatementEntry>,
    /// (userid, dbid) of rows the role could not attribute (NULL queryid:
    /// no `pg_read_all_stats`).
    pub unattributed: FxHashSet<(Oid, Oid)>,
}

/// What one interval added to one statement.
#[derive(Clone, Debug, PartialEq)]
pub struct StatementDelta {
    pub key: StatementKey,
    pub datname: Arc<str>,
    pub rolname: Arc<str>,
    /// Masked statement text.
    pub query: Arc<str>,
    pub origin: DeltaOrigin,
    pub counters: StatementCounters,
}

/// What a [`diff`] noticed besides the deltas (for the agent's health
/// counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// A server (or crash) restart: the current snapshot is a new baseline.
    pub restart: bool,
    /// `pg_stat_statements_reset()` of everything (stats_reset changed).
    pub reset: bool,
    /// Entries whose counters went down or that were re-created.
    pub entries_reset: u64,
    /// Growth of `dealloc`: entries evicted since the previous snapshot.
    pub evicted: u64,
    /// Entries of the previous snapshot missing from the current one.
    pub disappeared: u64,
    /// Entries that may predate the previous snapshot without it showing
    /// them: baselines, no delta.
    pub unknown: u64,
}

/// The deltas from `prev` to `cur`, sorted by key, never negative (see the
/// module doc for the rules). Entries without any change yield nothing.
pub fn diff(prev: &Snapshot, cur: &Snapshot, report: &mut DiffReport) -> Vec<StatementDelta> {
    if !prev.server.same_run(&cur.server) {
        report.restart = true;
        return Vec::new();
    }
    // A value where there was none is a reset too (cannot happen with one
    // extension version; harmless to treat so).
    let reset_all = cur.stats_reset.is_some() && cur.stats_reset != prev.stats_reset;
    report.reset |= reset_all;
    if let (Some(p), Some(c)) = (prev.dealloc, cur.dealloc)
        && !reset_all
    {
        report.evicted += c.saturating_sub(p);
    }
    report.disappeared += prev.entries.keys().filter(|k| !cur.entries.contains_key(k)).count() as u64;

    let mut deltas = Vec::new();
    for (key, entry) in &cur.entries {
        let previous = match prev.entries.get(key) {
            Some(p) => Previous::Seen(&p.counters),
            None if prev.unattributed.contains(&(key.userid, key.dbid)) => Previous::Unknown,
            None => Previous::Absent,
        };
        let recreated = match (prev.entries.get(key).and_then(|p| p.stats_since), entry.stats_since) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        if matches!(previous, Previous::Unknown) && !reset_all {
            report.unknown += 1;
        }
        if let Some((origin, counters)) = entry_delta(previous, &entry.counters, reset_all || recreated) {
            if origin == DeltaOrigin::Reset && !reset_all {
                report.entries_reset += 1;
            }
            deltas.push(StatementDelta {
                key: *key,
                datname: entry.datname.clone(),
                rolname: entry.rolname.clone(),
                query: entry.query.clone(),
                origin,
                counters,
            });
        }
    }
    deltas.sort_unstable_by_key(|d| d.key);
    deltas
}

/// The statement deltas of one poll interval (`since`..`until`, server
/// clock). Consecutive batches can be merged ([`StatementBatch::absorb`])
/// when the channel had no room for the earlier one.
#[derive(Clone, Debug, PartialEq)]
pub struct StatementBatch {
    pub since: SystemTime,
    pub until: SystemTime,
    pub deltas: Vec<StatementDelta>,
}

impl StatementBatch {
    /// Adds a later batch into this one: counters summed per key, names
    /// and text from the later one, `since` of the earlier.
    pub fn absorb(&mut self, later: StatementBatch) {
        let mut index: FxHashMap<StatementKey, usize> =
            self.deltas.iter().enumerate().map(|(i, d)| (d.key, i)).collect();
        for d in later.deltas {
            match index.entry(d.key) {
                Entry::Occupied(slot) => {
                    let mine = &mut self.deltas[*slot.get()];
                    mine.counters = mine.counters.saturating_add(&d.counters);
                    mine.origin = merge_origin(mine.origin, d.origin);
                    mine.datname = d.datname;
                    mine.rolname = d.rolname;
                    mine.query = d.query;
                }
                Entry::Vacant(slot) => {
                    slot.insert(self.deltas.len());
                    self.deltas.push(d);
                }
            }
        }
        self.deltas.sort_unstable_by_key(|d| d.key);
        self.until = later.until;
    }
}

/// The origin of two consecutive deltas summed: a reset anywhere is a
/// reset; a new entry stays new.
pub(crate) fn merge_origin(earlier: DeltaOrigin, later: DeltaOrigin) -> DeltaOrigin {
    match (earlier, later) {
        (DeltaOrigin::Reset, _) | (_, DeltaOrigin::Reset) => DeltaOrigin::Reset,
        (DeltaOrigin::New, _) => DeltaOrigin::New,
        _ => DeltaOrigin::Increment,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn key(i: u8) -> StatementKey {
        // Two users (0–2 and 3–5), so that unattributed rows of one do not
        // hide the other; sorted like `i`.
        StatementKey { userid: 10 + u32::from(i / 3), dbid: 5, queryid: i64::from(i) * 7919, toplevel: i % 2 == 0 }
    }

    fn calls(n: u64) -> StatementCounters {
        StatementCounters { calls: n, total_exec_time: Duration::from_millis(n), ..StatementCounters::default() }
    }

    fn entry(c: StatementCounters) -> StatementEntry {
        StatementEntry {
            datname: "app".into(),
            rolname: "web".into(),
            query: "SELECT $1".into(),
            stats_since: None,
            counters: c,
        }
    }

    fn snap(t: u64, entries: &[(u8, u64)]) -> Snapshot {
        Snapshot {
            taken_at: at(t),
            server: ServerEpoch { postmaster_start: at(0), checkpointer_start: Some(at(0)) },
            stats_reset: Some(at(0)),
            dealloc: Some(0),
            entries: entries.iter().map(|&(k, n)| (key(k), entry(calls(n)))).collect(),
            unattributed: FxHashSet::default(),
        }
    }

    fn calls_of(deltas: &[StatementDelta]) -> Vec<(u8, u64, DeltaOrigin)> {
        deltas.iter().map(|d| ((d.key.queryid / 7919) as u8, d.counters.calls, d.origin)).collect()
    }

    #[test]
    fn increments_new_entries_and_unchanged() {
        let mut r = DiffReport::default();
        let d = diff(&snap(0, &[(1, 10), (2, 5)]), &snap(10, &[(1, 13), (2, 5), (3, 4)]), &mut r);
        assert_eq!(calls_of(&d), [(1, 3, DeltaOrigin::Increment), (3, 4, DeltaOrigin::New)]);
        assert_eq!(d[0].counters.total_exec_time, Duration::from_millis(3));
        assert_eq!(r, DiffReport::default());
    }

    #[test]
    fn reset_of_everything_takes_current_values() {
        let prev = snap(0, &[(1, 10), (2, 5)]);
        let mut cur = snap(10, &[(1, 2), (2, 9)]);
        cur.stats_reset = Some(at(5));
        let mut r = DiffReport::default();
        // Entry 2 grew past its old value after the reset: only the reset
        // time tells that its 9 calls are all new.
        let d = diff(&prev, &cur, &mut r);
        assert_eq!(calls_of(&d), [(1, 2, DeltaOrigin::Reset), (2, 9, DeltaOrigin::Reset)]);
        assert!(r.reset);
    }

    #[test]
    fn a_counter_going_down_is_a_reset_of_that_entry() {
        let mut r = DiffReport::default();
        let d = diff(&snap(0, &[(1, 10)]), &snap(10, &[(1, 4)]), &mut r);
        assert_eq!(calls_of(&d), [(1, 4, DeltaOrigin::Reset)]);
        assert_eq!(r.entries_reset, 1);
    }

    #[test]
    fn a_moved_stats_since_is_a_recreated_entry() {
        let mut prev = snap(0, &[(1, 10)]);
        let mut cur = snap(10, &[(1, 12)]);
        prev.entries.get_mut(&key(1)).unwrap().stats_since = Some(at(0));
        cur.entries.get_mut(&key(1)).unwrap().stats_since = Some(at(7));
        let d = diff(&prev, &cur, &mut DiffReport::default());
        assert_eq!(calls_of(&d), [(1, 12, DeltaOrigin::Reset)]);
    }

    #[test]
    fn restart_is_a_new_baseline() {
        let prev = snap(0, &[(1, 10)]);
        let mut cur = snap(10, &[(1, 30), (2, 1)]);
        cur.server.postmaster_start = at(5);
        let mut r = DiffReport::default();
        assert!(diff(&prev, &cur, &mut r).is_empty());
        assert!(r.restart);
        let mut crashed = snap(10, &[(1, 30)]);
        crashed.server.checkpointer_start = Some(at(5));
        assert!(diff(&prev, &crashed, &mut DiffReport::default()).is_empty());
    }

    #[test]
    fn eviction_is_counted_not_negative() {
        let prev = snap(0, &[(1, 10), (2, 5)]);
        let mut cur = snap(10, &[(1, 11)]);
        cur.dealloc = Some(3);
        let mut r = DiffReport::default();
        let d = diff(&prev, &cur, &mut r);
        assert_eq!(calls_of(&d), [(1, 1, DeltaOrigin::Increment)]);
        assert_eq!((r.evicted, r.disappeared), (3, 1));
    }

    #[test]
    fn an_entry_the_previous_snapshot_could_not_attribute_is_a_baseline() {
        let mut prev = snap(0, &[]);
        prev.unattributed.insert((key(1).userid, key(1).dbid));
        let cur = snap(10, &[(1, 500), (2, 3), (4, 3)]);
        let mut r = DiffReport::default();
        let d = diff(&prev, &cur, &mut r);
        assert_eq!(calls_of(&d), [(4, 3, DeltaOrigin::New)], "key 4 is another user's");
        assert_eq!(r.unknown, 2, "keys 1 and 2");
    }

    #[test]
    fn absorbing_sums_per_key() {
        let d = |k: u8, n: u64, origin| StatementDelta {
            key: key(k),
            datname: "app".into(),
            rolname: "web".into(),
            query: "SELECT $1".into(),
            origin,
            counters: calls(n),
        };
        let mut a = StatementBatch {
            since: at(0),
            until: at(10),
            deltas: vec![d(1, 2, DeltaOrigin::New), d(2, 1, DeltaOrigin::Increment)],
        };
        a.absorb(StatementBatch {
            since: at(10),
            until: at(20),
            deltas: vec![d(2, 5, DeltaOrigin::Reset), d(3, 1, DeltaOrigin::Increment)],
        });
        assert_eq!((a.since, a.until), (at(0), at(20)));
        assert_eq!(
            calls_of(&a.deltas),
            [(1, 2, DeltaOrigin::New), (2, 6, DeltaOrigin::Reset), (3, 1, DeltaOrigin::Increment)]
        );
    }

    // ---- property tests against a model of pg_stat_statements ----

    /// What can happen between two polls.
    #[derive(Clone, Debug)]
    enum Op {
        /// Executions of statement `key` (created if absent).
        Exec { key: u8, calls: u64, micros: u64, rows: u64, blks: u64 },
        /// `pg_stat_statements_reset()`: everything.
        ResetAll,
        /// `pg_stat_statements_reset(userid, dbid, queryid)`: one entry.
        ResetOne { key: u8 },
        /// Evicted to make room (dealloc grows).
        Evict { key: u8 },
        /// Clean restart; `keep`: the counters were saved and reloaded.
        Restart { keep: bool },
        /// A backend crashed: shared memory reinitialized.
        Crash,
        /// The role loses / regains `pg_read_all_stats` for user 10's rows.
        Hide(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..6, 1u64..5, 0u64..5_000, 0u64..50, 0u64..20)
                .prop_map(|(key, calls, micros, rows, blks)| Op::Exec { key, calls, micros, rows, blks }),
            1 => Just(Op::ResetAll),
            1 => (0u8..6).prop_map(|key| Op::ResetOne { key }),
            1 => (0u8..6).prop_map(|key| Op::Evict { key }),
            1 => any::<bool>().prop_map(|keep| Op::Restart { keep }),
            1 => Just(Op::Crash),
            1 => any::<bool>().prop_map(Op::Hide),
        ]
    }

    /// The server side: true counters per entry, plus what each entry
    /// really gained since the last poll.
    struct Model {
        info: bool,
        clock: u64,
        postmaster: u64,
        checkpointer: u64,
        stats_reset: u64,
        dealloc: u64,
        hide: bool,
        entries: BTreeMap<u8, StatementCounters>,
        gained: BTreeMap<u8, StatementCounters>,
    }

    impl Model {
        fn new(info: bool) -> Model {
            Model {
                info,
                clock: 1,
                postmaster: 0,
                checkpointer: 0,
                stats_reset: 0,
                dealloc: 0,
                hide: false,
                entries: BTreeMap::new(),
                gained: BTreeMap::new(),
            }
        }

        fn tick(&mut self) -> u64 {
            self.clock += 1;
            self.clock
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Exec { key, calls, micros, rows, blks } => {
                    let inc = StatementCounters {
                        calls,
                        total_exec_time: Duration::from_micros(micros),
                        total_plan_time: Duration::from_nanos(micros % 7),
                        rows,
                        shared_blks_hit: blks,
                        shared_blks_read: blks / 2,
                        temp_blks_written: blks / 3,
                    };
                    let e = self.entries.entry(key).or_default();
                    *e = e.saturating_add(&inc);
                    let g = self.gained.entry(key).or_default();
                    *g = g.saturating_add(&inc);
                }
                Op::ResetAll => {
                    self.entries.clear();
                    self.stats_reset = self.tick();
                    self.dealloc = 0;
                }
                Op::ResetOne { key } => {
                    self.entries.remove(&key);
                }
                Op::Evict { key } => {
                    if self.entries.remove(&key).is_some() {
                        self.dealloc += 1;
                    }
                }
                Op::Restart { keep } => {
                    self.postmaster = self.tick();
                    if !keep {
                        self.entries.clear();
                        self.stats_reset = self.tick();
                        self.dealloc = 0;
                    }
                }
                Op::Crash => {
                    self.checkpointer = self.tick();
                    self.entries.clear();
                    self.stats_reset = self.tick();
                    self.dealloc = 0;
                }
                Op::Hide(h) => self.hide = h,
            }
        }

        fn snapshot(&mut self) -> Snapshot {
            let t = self.tick();
            let mut s = Snapshot {
                taken_at: at(t),
                server: ServerEpoch {
                    postmaster_start: at(self.postmaster),
                    checkpointer_start: Some(at(self.checkpointer)),
                },
                stats_reset: self.info.then(|| at(self.stats_reset)),
                dealloc: self.info.then_some(self.dealloc),
                entries: FxHashMap::default(),
                unattributed: FxHashSet::default(),
            };
            for (&k, &c) in &self.entries {
                if self.hide && key(k).userid == 10 {
                    s.unattributed.insert((key(k).userid, key(k).dbid));
                } else {
                    s.entries.insert(key(k), entry(c));
                }
            }
            s
        }
    }

    fn le(a: &StatementCounters, b: &StatementCounters) -> bool {
        b.checked_sub(a).is_some()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever happens, no delta claims more than what really happened
        /// to that entry in that interval (and none is negative: unsigned
        /// counters, computed without panicking).
        #[test]
        fn a_delta_never_exceeds_the_truth(
            info in any::<bool>(),
            intervals in prop::collection::vec(prop::collection::vec(op(), 0..12), 1..10),
        ) {
            let mut m = Model::new(info);
            let mut prev = m.snapshot();
            for ops in &intervals {
                m.gained.clear();
                for op in ops {
                    m.apply(op);
                }
                let cur = m.snapshot();
                let deltas = diff(&prev, &cur, &mut DiffReport::default());
                for d in &deltas {
                    let k = (d.key.queryid / 7919) as u8;
                    let truth = m.gained.get(&k).copied().unwrap_or_default();
                    prop_assert!(le(&d.counters, &truth), "{:?}: delta {:?} > truth {:?}", ops, d.counters, truth);
                    prop_assert!(!d.counters.is_zero());
                }
                prev = cur;
            }
        }

        /// Without resets, evictions, restarts or hidden rows, the deltas
        /// of a run add up to last − first, exactly (times included).
        #[test]
        fn deltas_of_a_quiet_run_sum_to_last_minus_first(
            info in any::<bool>(),
            intervals in prop::collection::vec(
                prop::collection::vec(op().prop_filter("growth only", |o| matches!(o, Op::Exec { .. })), 0..12),
                1..10,
            ),
        ) {
            let mut m = Model::new(info);
            let first = m.snapshot();
            let mut prev = first.clone();
            let mut sums: BTreeMap<StatementKey, StatementCounters> = BTreeMap::new();
            for ops in &intervals {
                for op in ops {
                    m.apply(op);
                }
                let cur = m.snapshot();
                let mut report = DiffReport::default();
                for d in diff(&prev, &cur, &mut report) {
                    prop_assert_ne!(d.origin, DeltaOrigin::Reset);
                    let s = sums.entry(d.key).or_default();
                    *s = s.saturating_add(&d.counters);
                }
                prop_assert_eq!(report, DiffReport::default());
                prev = cur;
            }
            for (k, e) in &prev.entries {
                let before = first.entries.get(k).map(|e| e.counters).unwrap_or_default();
                let expected = e.counters.checked_sub(&before).unwrap();
                prop_assert_eq!(sums.get(k).copied().unwrap_or_default(), expected);
            }
        }

        /// With `pg_stat_statements_info` (14+), a reset mid-run loses
        /// exactly what happened between the last poll and the reset: each
        /// delta is what the entry gained after the interval's last reset.
        #[test]
        fn a_reset_loses_only_what_preceded_it_in_its_interval(
            intervals in prop::collection::vec(
                prop::collection::vec(
                    op().prop_filter("growth and resets", |o| matches!(o, Op::Exec { .. } | Op::ResetAll)),
                    0..12,
                ),
                1..10,
            ),
        ) {
            let mut m = Model::new(true);
            let mut prev = m.snapshot();
            for ops in &intervals {
                // What each entry gained after the interval's last reset.
                let last_reset = ops.iter().rposition(|o| matches!(o, Op::ResetAll));
                let mut expected: BTreeMap<u8, StatementCounters> = BTreeMap::new();
                for (i, op) in ops.iter().enumerate() {
                    m.apply(op);
                    if let Op::Exec { key, .. } = *op
                        && last_reset.is_none_or(|r| i > r)
                    {
                        // Recompute from the model: the gain of this op.
                        let mut probe = Model::new(true);
                        probe.apply(op);
                        let inc = probe.entries[&key];
                        let e = expected.entry(key).or_default();
                        *e = e.saturating_add(&inc);
                    }
                }
                let cur = m.snapshot();
                let got: BTreeMap<u8, StatementCounters> = diff(&prev, &cur, &mut DiffReport::default())
                    .into_iter()
                    .map(|d| ((d.key.queryid / 7919) as u8, d.counters))
                    .collect();
                expected.retain(|_, c| !c.is_zero());
                prop_assert_eq!(got, expected);
                prev = cur;
            }
        }
    }
}
