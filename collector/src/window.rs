//! The live store: what every agent sent, in time buckets.
//!
//! Batches land in 1-minute buckets (by the end of the agent's interval,
//! the collector's clock when the batch carries no time) keyed per
//! (fingerprint, database, node). Buckets older than the retention (default
//! 1 h) are rolled up into 1-hour buckets, kept for the rollup retention
//! (default 24 h), so long ranges stay answerable at a coarser grain.
//! A [`Snapshot`] of any range merges the buckets in it.
//!
//! Everything is bounded:
//! - fingerprints (`max_fingerprints`): past the cap a new fingerprint is
//!   folded into the `<other>` row and its calls are counted;
//! - nodes (`max_nodes`): batches of further nodes fold into node `<other>`;
//! - relations, lock groups and activity keys per bucket, likewise;
//! - memory (`memory_limit`): the store estimates what its buckets hold;
//!   over the limit it first drops the oldest rollup bucket, then rolls the
//!   oldest minute bucket up early (minute detail lost, data kept), and only
//!   when a few minutes remain does it fold new rows into `<other>` (and,
//!   past the limit, what would merge into rows already held) — each step
//!   counted in [`StoreHealth`]. The room a statement table needs to grow
//!   is made before it grows, since its slots double at once.
//!
//! Strings that repeat in every bucket (databases, nodes, relations) are
//! interned as `Arc<str>`, so a row key costs three pointers.

use crate::fingerprint::{Fingerprint, Fingerprinter, Method};
use crate::snapshot::{
    ActivityRow, FingerprintRow, LockRow, NodeRow, OverflowCounts, QueryRow, RowStats, Snapshot, TableRow,
};
use crate::store::OVERFLOW_FINGERPRINT;
use crate::totals::{Counted, TableSeries, Totals};
use querywatch_wire::Observations;
use querywatch_wire::dbstats::{ActivityKey, TableDelta};
use querywatch_wire::names::OVERFLOW_TEXT;
use querywatch_wire::observations::{LockKey, LockStats};
use querywatch_wire::otlp::ResourceInfo;
use querywatch_wire::shape::Withheld;
use querywatch_wire::stats::EpochMillis;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Limits and retention of the [`Windows`] store.
#[derive(Clone, Debug)]
pub struct WindowConfig {
    /// How long 1-minute buckets are kept.
    pub retention: Duration,
    /// How long the 1-hour rollups of older minutes are kept.
    pub rollup_retention: Duration,
    /// Distinct fingerprints tracked.
    pub max_fingerprints: usize,
    /// Distinct nodes tracked.
    pub max_nodes: usize,
    /// Relations per bucket.
    pub max_relations: usize,
    /// Lock-wait groups per bucket.
    pub max_locks: usize,
    /// Activity keys per bucket.
    pub max_activity: usize,
    /// Masked shapes whose fingerprint is cached.
    pub fingerprint_cache: usize,
    /// Estimated bytes the buckets may hold.
    pub memory_limit: usize,
    /// Fingerprints with their own cumulative series in `/metrics` (per
    /// node); the rest add to `fingerprint="other"`.
    pub series_fingerprints: usize,
    /// Relations with their own cumulative series in `/metrics`.
    pub series_tables: usize,
    /// When memory is full, the fingerprints among the top this many (by
    /// database time, and by calls) still get new rows; the rest fold.
    pub protect_top: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            retention: Duration::from_secs(3600),
            rollup_retention: Duration::from_secs(24 * 3600),
            max_fingerprints: 50_000,
            max_nodes: 1_000,
            max_relations: 100_000,
            max_locks: 10_000,
            max_activity: 10_000,
            fingerprint_cache: 100_000,
            memory_limit: crate::config::store_share(crate::config::MEMORY_LIMIT_MB),
            series_fingerprints: 100,
            protect_top: 1_000,
            series_tables: 2_000,
        }
    }
}

/// The store's own numbers (for `/metrics` and the API).
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreHealth {
    pub batches: u64,
    pub fingerprints: usize,
    pub nodes: usize,
    pub minute_buckets: usize,
    pub rollup_buckets: usize,
    /// Rows (per fingerprint, database, node and bucket) held.
    pub rows: usize,
    pub estimated_bytes: usize,
    /// Batches whose time was older than the rollup retention: counted, not stored.
    pub too_old_batches: u64,
    /// Rollup buckets dropped early to stay under the memory limit.
    pub evicted_rollups: u64,
    /// Minute buckets rolled up early to stay under the memory limit.
    pub early_rollups: u64,
    /// New rows folded into `<other>` because memory stayed over the limit.
    pub memory_folded_rows: u64,
    pub fingerprint_cache_hits: u64,
    pub fingerprint_cache_misses: u64,
    /// Shapes pg_query could not parse (fallback fingerprint).
    pub fingerprint_fallbacks: u64,
    /// Overflow over the whole retained range.
    pub overflow: OverflowCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RowKey {
    fingerprint: Fingerprint,
    database: Arc<str>,
    node: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TableKey {
    node: Arc<str>,
    database: Arc<str>,
    relation: Arc<str>,
    parent: Arc<str>,
}

/// One time bucket.
#[derive(Debug, Default)]
struct Bucket {
    start: EpochMillis,
    len: i64,
    /// The time its data covers, `[span.0, span.1)`: the whole minute for a
    /// minute bucket; for a rollup, the minutes it absorbed so far. Ranges
    /// are matched against this, not the rollup's hour: the hour before
    /// this one holds only the minutes past the retention, and counting it
    /// whole put data of an hour ago into the first minutes of every
    /// hour's detection window (old findings reopened).
    span: (EpochMillis, EpochMillis),
    queries: FxHashMap<RowKey, RowStats>,
    tables: FxHashMap<TableKey, TableDelta>,
    locks: FxHashMap<(Arc<str>, LockKey), LockStats>,
    activity: FxHashMap<(Arc<str>, ActivityKey), u64>,
    nodes: FxHashMap<Arc<str>, Observations>,
    overflow: OverflowCounts,
    bytes: usize,
}

/// Per-entry costs for the memory estimate. Statement rows are the bulk:
/// their hash-table slots are counted from the table's capacity (see
/// [`table_bytes`]), so a row's own cost is only what it holds on
/// the heap; the rarer tables, locks and activity keys keep a flat cost
/// with slot slack included.
const ROW_SLOT: usize = std::mem::size_of::<(RowKey, RowStats)>() + 1;
const TABLE_COST: usize = std::mem::size_of::<TableKey>() + std::mem::size_of::<TableDelta>() + 16;
const LOCK_COST: usize = std::mem::size_of::<LockKey>() + std::mem::size_of::<LockStats>() + 64;
/// A fingerprint's entry besides its text: key, info, table slot with
/// slack, and the text's allocation header.
const FP_COST: usize = 2 * (std::mem::size_of::<Fingerprint>() + std::mem::size_of::<FpInfo>() + 1) + ALLOC_OVERHEAD;
const ACTIVITY_COST: usize = std::mem::size_of::<ActivityKey>() + 64;
/// Statement-table slots kept free for `<other>` rows (one per database
/// and node) when memory is full, so that folding does not grow the table
/// (an eighth of a small table, whose growth costs little).
const OTHER_ROOM: usize = 64;
/// What the allocator adds to each heap block (header and rounding; glibc
/// malloc: 8–16 bytes per chunk plus 16-byte alignment).
pub(crate) const ALLOC_OVERHEAD: usize = 16;

/// Bytes a hash table with this capacity occupies: hashbrown allocates a
/// power of two of slots, of which 7/8 are usable (`capacity`), each with a
/// control byte.
fn table_bytes(capacity: usize, slot: usize) -> usize {
    if capacity == 0 { 0 } else { capacity.div_ceil(7) * 8 * slot }
}

impl Bucket {
    fn new(start: EpochMillis, len: i64) -> Self {
        let span = if len == MINUTE_MS { (start, start + len) } else { (EpochMillis::MAX, EpochMillis::MIN) };
        Bucket { start, len, span, ..Bucket::default() }
    }

    fn end(&self) -> EpochMillis {
        self.start + self.len
    }

    /// Its data covers `[from, to)` too.
    fn cover(&mut self, (from, to): (EpochMillis, EpochMillis)) {
        self.span = (self.span.0.min(from), self.span.1.max(to));
    }

    /// Whether its data overlaps `[from, to)`.
    fn overlaps(&self, from: EpochMillis, to: EpochMillis) -> bool {
        self.span.1 > from && self.span.0 < to
    }

    /// The estimate of what the bucket holds: the rows' heap (kept as they
    /// come in) and the statement table's slots by its capacity, which is
    /// up to twice its length right after it grew.
    fn bytes(&self) -> usize {
        self.bytes + table_bytes(self.queries.capacity(), ROW_SLOT)
    }

    /// The bytes the statement table needs on top of what it holds if
    /// `incoming` new rows came in: its new slots, all of them, since the
    /// old and the new table are both allocated while hashbrown moves the
    /// rows. A hash table doubles its slots when it grows; with 200,000
    /// rows of a few hundred bytes a slot that is 100 MiB at once, which
    /// took the store 30% past its share before it could fold anything, so
    /// room for the growth is made before a batch (or its new rows fold).
    fn growth_for(&self, incoming: usize) -> usize {
        let (len, cap) = (self.queries.len(), self.queries.capacity());
        if len + incoming <= cap {
            return 0;
        }
        // hashbrown: a power of two of slots, 7/8 of them usable.
        let slots = ((len + incoming) * 8).div_ceil(7).next_power_of_two();
        table_bytes(slots / 8 * 7, ROW_SLOT)
    }

    /// Merges `stats` into the row of `key` (a new row if there is none),
    /// keeping the heap estimate; says how much the row's counts grew.
    fn add_row(&mut self, key: RowKey, stats: RowStats) -> Counted {
        match self.queries.get_mut(&key) {
            Some(mine) => {
                let before = mine.heap_bytes();
                let counted = Counted::of(mine);
                mine.merge(&stats);
                // Signed: a merge may also shrink a row (a histogram's
                // capacity follows the sizes merged). Counting only the
                // growth ratcheted the estimate up by hundreds of MiB
                // over a 10-minute run while the real size stayed flat.
                self.bytes = (self.bytes + mine.heap_bytes()).saturating_sub(before);
                Counted::of(mine).since(counted)
            }
            None => {
                let counted = Counted::of(&stats);
                self.bytes += stats.heap_bytes();
                self.queries.insert(key, stats);
                counted
            }
        }
    }

    /// Rows the statement table takes before it grows.
    fn free_slots(&self) -> usize {
        self.queries.capacity() - self.queries.len()
    }

    /// Adds another bucket's content (rollup). Caps were enforced when the
    /// data came in; a rollup only merges keys that already passed them.
    fn absorb(&mut self, other: Bucket) {
        self.cover(other.span);
        for (k, v) in other.queries {
            // The totals counted these rows when they came in.
            let _ = self.add_row(k, v);
        }
        for (k, v) in other.tables {
            self.bytes += usize::from(!self.tables.contains_key(&k)) * TABLE_COST;
            self.tables.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.locks {
            self.bytes += usize::from(!self.locks.contains_key(&k)) * LOCK_COST;
            self.locks.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.activity {
            self.bytes += usize::from(!self.activity.contains_key(&k)) * ACTIVITY_COST;
            *self.activity.entry(k).or_default() += v;
        }
        for (k, v) in other.nodes {
            self.nodes.entry(k).or_default().merge(v);
        }
        add_overflow(&mut self.overflow, &other.overflow);
    }
}

/// The bucket for time `t` (ms) among `minutes` and `hours`, created if
/// needed; `None` when `t` is older than the rollups' floor. `floors` are
/// the oldest times the minutes and the rollups keep. Over the two deques
/// rather than the store, so that the totals can be borrowed beside it.
fn bucket_in<'a>(
    minutes: &'a mut VecDeque<Bucket>,
    hours: &'a mut VecDeque<Bucket>,
    (minute_floor, hour_floor): (EpochMillis, EpochMillis),
    t: EpochMillis,
) -> Option<&'a mut Bucket> {
    let (deque, len) = if t >= minute_floor {
        (minutes, MINUTE_MS)
    } else if t >= hour_floor {
        (hours, HOUR_MS)
    } else {
        return None;
    };
    let start = t.div_euclid(len) * len;
    let pos = deque.partition_point(|b| b.start < start);
    if deque.get(pos).is_none_or(|b| b.start != start) {
        deque.insert(pos, Bucket::new(start, len));
    }
    let b = deque.get_mut(pos)?;
    // A late batch straight into a rollup covers its own minute.
    let minute = t.div_euclid(MINUTE_MS) * MINUTE_MS;
    b.cover((minute, minute + MINUTE_MS));
    Some(b)
}

fn add_overflow(a: &mut OverflowCounts, b: &OverflowCounts) {
    a.query_calls += b.query_calls;
    a.tables += b.tables;
    a.locks += b.locks;
    a.node_batches += b.node_batches;
    a.agent_calls += b.agent_calls;
}

/// What [`Windows::by_fingerprint`] returns.
#[derive(Debug)]
pub struct FingerprintRows {
    pub rows: Vec<FingerprintRow>,
    /// Database time of every row in the range (the base of the shares).
    pub total: Duration,
    pub from: EpochMillis,
    pub to: EpochMillis,
}

/// Which statement rows a snapshot keeps.
#[derive(Clone, Copy)]
enum Keep<'a> {
    All,
    /// Only these fingerprints' rows, and no tables, locks, activity.
    Only(&'a FxHashSet<Fingerprint>),
    /// These fingerprints' rows; the others folded into `<other>`.
    Top(&'a FxHashSet<Fingerprint>),
}

#[derive(Clone, Debug)]
struct FpInfo {
    text: Arc<str>,
    /// `text` is a withheld-text token: kept as a flag because reading the
    /// text on every hit costs a cache miss per data point.
    withheld: bool,
    method: Method,
    last_seen: EpochMillis,
}

#[derive(Clone, Debug)]
struct NodeInfo {
    resource: ResourceInfo,
    last_seen: EpochMillis,
}

/// The live store. Not thread-safe by itself: the collector keeps it
/// behind one mutex, fed by one ingest task.
#[derive(Debug)]
pub struct Windows {
    cfg: WindowConfig,
    fingerprinter: Fingerprinter,
    fingerprints: FxHashMap<Fingerprint, FpInfo>,
    /// Bytes the fingerprint texts hold (see [`Windows::bytes`]).
    fingerprint_bytes: usize,
    strings: FxHashSet<Arc<str>>,
    nodes: BTreeMap<Arc<str>, NodeInfo>,
    minutes: VecDeque<Bucket>,
    hours: VecDeque<Bucket>,
    health: StoreHealth,
    /// Cumulative counters since start (what `/metrics` exposes).
    pub totals: Totals,
    /// The top fingerprints whose new rows are kept while memory is full,
    /// and the minute they were chosen in (see [`Windows::protect`]).
    protected: FxHashSet<Fingerprint>,
    protected_at: Option<EpochMillis>,
}

/// Interned strings kept at most (databases, nodes, relations, parents);
/// past it strings are still correct, just not shared.
const MAX_INTERNED: usize = 500_000;

impl Windows {
    pub fn new(cfg: WindowConfig) -> Self {
        Windows {
            fingerprinter: Fingerprinter::new(cfg.fingerprint_cache),
            cfg: cfg.clone(),
            fingerprints: FxHashMap::default(),
            fingerprint_bytes: 0,
            strings: FxHashSet::default(),
            nodes: BTreeMap::new(),
            minutes: VecDeque::new(),
            hours: VecDeque::new(),
            health: StoreHealth::default(),
            totals: Totals::new(cfg.series_fingerprints, cfg.series_tables),
            protected: FxHashSet::default(),
            protected_at: None,
        }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        if self.strings.len() < MAX_INTERNED {
            self.strings.insert(a.clone());
        }
        a
    }

    /// The oldest times the minutes and the rollups keep at `now` (see
    /// [`bucket_in`]).
    fn floors(&self, now: EpochMillis) -> (EpochMillis, EpochMillis) {
        (now - self.retention_ms(), now - self.rollup_retention_ms())
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.cfg.retention.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn rollup_retention_ms(&self) -> i64 {
        i64::try_from(self.cfg.rollup_retention.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn fingerprint(&mut self, text: &str, now: EpochMillis) -> (Fingerprint, bool) {
        if text == OVERFLOW_TEXT {
            return (OVERFLOW_FINGERPRINT, true);
        }
        let (fp, method) = self.fingerprinter.get(text);
        if let Some(info) = self.fingerprints.get_mut(&fp) {
            info.last_seen = info.last_seen.max(now);
            // A node that withholds query text sent this fingerprint first:
            // show the masked text as soon as another node sends it.
            if info.withheld && !Withheld::is_token(text) {
                self.fingerprint_bytes = (self.fingerprint_bytes + text.len()).saturating_sub(info.text.len());
                info.text = text.into();
                info.withheld = false;
            }
            return (fp, false);
        }
        if self.fingerprints.len() >= self.cfg.max_fingerprints {
            return (OVERFLOW_FINGERPRINT, true);
        }
        self.fingerprint_bytes += FP_COST + text.len();
        let withheld = Withheld::is_token(text);
        self.fingerprints.insert(fp, FpInfo { text: text.into(), withheld, method, last_seen: now });
        (fp, false)
    }

    /// Merges one agent's batch. `now` is the collector's clock (ms).
    pub fn ingest(&mut self, resource: &ResourceInfo, mut obs: Observations, now: EpochMillis) {
        self.health.batches += 1;
        self.roll(now);
        let (node, node_overflow) = match self.nodes.get_key_value(resource.node.as_str()) {
            Some((k, _)) => (k.clone(), false),
            None if self.nodes.len() >= self.cfg.max_nodes => (self.intern(OVERFLOW_TEXT), true),
            None => (self.intern(&resource.node), false),
        };
        if !node_overflow {
            self.nodes.insert(node.clone(), NodeInfo { resource: resource.clone(), last_seen: now });
        }
        self.totals.saw_node(&node, now);
        // The end of the agent's interval places the batch; a batch from
        // the future (clock skew) or without times counts as now.
        let t = obs.last_seen.filter(|t| *t <= now + MINUTE_MS).unwrap_or(now);
        let incoming = obs.statements.len() + obs.db.statements.len();
        let floors = self.floors(now);
        let Some(growth) = bucket_in(&mut self.minutes, &mut self.hours, floors, t).map(|b| b.growth_for(incoming))
        else {
            self.health.too_old_batches += 1;
            return;
        };
        // Full for new rows when the room a batch may need is not there;
        // full for every row when even the rows held are past the limit.
        let memory_full = self.make_room(growth);
        let held_full = memory_full && self.bytes() > self.cfg.memory_limit;
        let protected = memory_full.then(|| self.protect(now));

        // Fingerprint and intern outside the bucket borrow.
        let statements = std::mem::take(&mut obs.statements);
        let mut rows = Vec::with_capacity(statements.len());
        // A batch's rows are nearly all of one database: the last one
        // interned is compared before the intern table is hashed.
        let mut db: Option<Arc<str>> = None;
        let mut database = |w: &mut Self, name: &str| match &db {
            Some(d) if **d == *name => d.clone(),
            _ => db.insert(w.intern(name)).clone(),
        };
        for (key, stats) in statements {
            let (fp, _) = self.fingerprint(&key.text, now);
            rows.push((fp, database(self, &key.database), RowStats::from_statement(stats)));
        }
        let pgss = std::mem::take(&mut obs.db.statements);
        for (key, delta) in pgss {
            let (fp, _) = self.fingerprint(&key.text, now);
            let stats = RowStats { pgss: delta, queryid: Some(key.queryid), ..RowStats::default() };
            rows.push((fp, database(self, &key.database), stats));
        }
        let tables: Vec<_> = std::mem::take(&mut obs.db.tables)
            .into_iter()
            .map(|(k, d)| {
                let key = TableKey {
                    node: node.clone(),
                    database: self.intern(&k.database),
                    relation: self.intern(&k.relation),
                    parent: self.intern(&k.parent),
                };
                (key, d)
            })
            .collect();
        let other = self.intern(OVERFLOW_TEXT);
        let (max_rel, max_locks, max_act) = (self.cfg.max_relations, self.cfg.max_locks, self.cfg.max_activity);
        let mut folded_rows = 0;

        for (k, d) in &tables {
            let series = TableSeries {
                node: k.node.clone(),
                database: k.database.clone(),
                relation: k.relation.clone(),
                parent: k.parent.clone(),
            };
            self.totals.add_table(series, d, now);
        }

        let locks = std::mem::take(&mut obs.locks);
        let activity = std::mem::take(&mut obs.db.activity);
        self.totals.add_rest(&node, &obs);

        // Looked up again: making room may have rolled buckets up.
        let Some(bucket) = bucket_in(&mut self.minutes, &mut self.hours, floors, t) else {
            // Checked above; should it ever change, the set is not lost.
            if let Some(p) = protected {
                self.protected = p;
            }
            return;
        };
        let mut totals = self.totals.node_queries(&node, now);
        if node_overflow {
            bucket.overflow.node_batches += 1;
        }
        for (fingerprint, database, stats) in rows {
            let series = totals.add(fingerprint, &stats);
            let mut key = RowKey { fingerprint, database, node: node.clone() };
            if fingerprint == OVERFLOW_FINGERPRINT {
                bucket.overflow.query_calls += stats.exec_calls();
            } else if memory_full
                && (held_full || !bucket.queries.contains_key(&key))
                && (!protected.as_ref().is_some_and(|p| p.contains(&fingerprint))
                    || bucket.free_slots() <= OTHER_ROOM.min(bucket.queries.capacity() / 8))
            {
                // Past the limit, rows already held fold too: merging grows
                // a row (its histogram gains buckets), and a store that kept
                // merging into 230,000 rows went 30% past its share. The
                // top statements keep their rows, but not when one more
                // row would make the table grow: their new rows, minute
                // after minute, once doubled a 115,000-row table (110 MiB
                // at once).
                folded_rows += 1;
                bucket.overflow.query_calls += stats.exec_calls();
                key.fingerprint = OVERFLOW_FINGERPRINT;
                if bucket.free_slots() <= 1 && !bucket.queries.contains_key(&key) {
                    // No slot left for this node's `<other>` row (the last
                    // one is kept for this): the bucket's one `<other>` row
                    // of every node takes it (the node's cumulative totals
                    // still have it).
                    key.database = other.clone();
                    key.node = other.clone();
                }
            }
            // A row of its own counts what it grew by (its log and
            // statistics rows merge into one); `<other>` rows mix many
            // statements, so a statement there counts its own numbers.
            let counted = if key.fingerprint == OVERFLOW_FINGERPRINT {
                let own = Counted::of(&stats);
                let _ = bucket.add_row(key, stats);
                own
            } else {
                bucket.add_row(key, stats)
            };
            totals.count(series, counted);
        }
        for (mut key, d) in tables {
            if !bucket.tables.contains_key(&key) && bucket.tables.len() >= max_rel {
                bucket.overflow.tables += 1;
                key.relation = other.clone();
                key.parent = other.clone();
            }
            if !bucket.tables.contains_key(&key) {
                bucket.bytes += TABLE_COST;
            }
            bucket.tables.entry(key).or_default().merge(&d);
        }
        for (k, v) in locks {
            let key = (node.clone(), k);
            if !bucket.locks.contains_key(&key) {
                if bucket.locks.len() >= max_locks {
                    bucket.overflow.locks += v.waits + v.deadlocks;
                    continue;
                }
                bucket.bytes += LOCK_COST;
            }
            bucket.locks.entry(key).or_default().merge(&v);
        }
        for (k, v) in activity {
            let key = (node.clone(), k);
            if !bucket.activity.contains_key(&key) {
                if bucket.activity.len() >= max_act {
                    continue;
                }
                bucket.bytes += ACTIVITY_COST;
            }
            *bucket.activity.entry(key).or_default() += v;
        }
        bucket.overflow.agent_calls += obs.overflow_calls;
        bucket.nodes.entry(node).or_default().merge(obs);
        self.health.memory_folded_rows += folded_rows;
        if let Some(p) = protected {
            self.protected = p;
        }
    }

    /// The fingerprints whose new rows are kept although memory is full:
    /// the top `protect_top` by database time and by calls over everything
    /// held, chosen again once a minute. Without it, a flood of new
    /// statement shapes (a cardinality attack, a deploy that changes every
    /// query) would fill the store and then fold the statements that
    /// matter most into `<other>` from the next minute on. What this keeps
    /// past the limit is bounded: at most `2 × protect_top` rows per node
    /// and bucket. Taken out of `self` (the caller puts it back) so that
    /// the bucket can be borrowed while it is consulted.
    fn protect(&mut self, now: EpochMillis) -> FxHashSet<Fingerprint> {
        let minute = now.div_euclid(MINUTE_MS);
        if self.protected_at != Some(minute) {
            self.protected = self.top_fingerprints(EpochMillis::MIN, EpochMillis::MAX, self.cfg.protect_top);
            self.protected_at = Some(minute);
        }
        std::mem::take(&mut self.protected)
    }

    /// The memory estimate: per bucket (kept as rows come in, plus table
    /// slots), the fingerprint texts (kept as they come and go) and the
    /// fingerprint cache; never a walk over every row — this runs for
    /// every batch.
    fn bytes(&self) -> usize {
        self.minutes.iter().chain(&self.hours).map(Bucket::bytes).sum::<usize>()
            + self.fingerprint_bytes
            + self.fingerprinter.bytes()
    }

    /// Frees memory when over the limit, leaving room for `growth` more
    /// bytes; true when it could not (new rows must then be folded).
    fn make_room(&mut self, growth: usize) -> bool {
        while self.bytes() + growth > self.cfg.memory_limit {
            if self.hours.len() > 1 {
                self.hours.pop_front();
                self.health.evicted_rollups += 1;
            } else if self.minutes.len() > 5 {
                if let Some(b) = self.minutes.pop_front() {
                    self.roll_up(b);
                }
                self.health.early_rollups += 1;
            } else {
                return true;
            }
        }
        false
    }

    fn roll_up(&mut self, b: Bucket) {
        let start = b.start.div_euclid(HOUR_MS) * HOUR_MS;
        let pos = self.hours.partition_point(|h| h.start < start);
        if self.hours.get(pos).is_none_or(|h| h.start != start) {
            self.hours.insert(pos, Bucket::new(start, HOUR_MS));
        }
        if let Some(h) = self.hours.get_mut(pos) {
            h.absorb(b);
        }
    }

    /// Ages buckets: minutes past the retention are rolled up, rollups
    /// past theirs dropped, and fingerprints no bucket mentions forgotten.
    pub fn roll(&mut self, now: EpochMillis) {
        let (minute_floor, hour_floor) = self.floors(now);
        let mut rolled = false;
        while self.minutes.front().is_some_and(|b| b.end() <= minute_floor) {
            if let Some(b) = self.minutes.pop_front() {
                self.roll_up(b);
                rolled = true;
            }
        }
        while self.hours.front().is_some_and(|b| b.end() <= hour_floor) {
            self.hours.pop_front();
            rolled = true;
        }
        if rolled {
            let oldest = self.hours.front().or(self.minutes.front()).map_or(now, |b| b.start);
            let mut freed = 0;
            self.fingerprints.retain(|_, f| {
                let keep = f.last_seen >= oldest;
                if !keep {
                    freed += FP_COST + f.text.len();
                }
                keep
            });
            self.fingerprint_bytes -= freed;
            // Nodes with nothing left in any bucket are forgotten, with
            // their series: else nodes that stopped (a pod renamed at each
            // restart) would fill `max_nodes` for good and every new node
            // would fold into `<other>`.
            let gone: Vec<Arc<str>> =
                self.nodes.iter().filter(|(_, n)| n.last_seen < oldest).map(|(k, _)| k.clone()).collect();
            for n in gone {
                self.nodes.remove(&n);
                self.totals.forget_node(&n);
            }
            self.strings.retain(|s| Arc::strong_count(s) > 1);
        }
    }

    /// Everything between `from` and `to` (ms, `[from, to)`), optionally
    /// only one node. Buckets that overlap the range count whole.
    pub fn snapshot(&self, from: EpochMillis, to: EpochMillis, node: Option<&str>) -> Snapshot {
        self.snapshot_with(from, to, node, Keep::All)
    }

    /// Like [`Self::snapshot`] of all nodes, but with the statement rows of
    /// at most `2 k` fingerprints: the `k` with the most database time and
    /// the `k` with the most calls in the range. The other rows are folded
    /// into `<other>` per database and node (counts and times only), so
    /// totals and shares stay exact. What detection looks at: its memory
    /// and time are then bounded by `k`, not by the store's size.
    pub fn snapshot_top(&self, from: EpochMillis, to: EpochMillis, k: usize) -> Snapshot {
        let top = self.top_fingerprints(from, to, k);
        self.snapshot_with(from, to, None, Keep::Top(&top))
    }

    /// The `k` fingerprints with the most database time in `[from, to)`
    /// and the `k` with the most calls (a fast statement called very often
    /// matters to the cache-candidate detector, a slow rare one to the
    /// others).
    fn top_fingerprints(&self, from: EpochMillis, to: EpochMillis, k: usize) -> FxHashSet<Fingerprint> {
        let mut per: FxHashMap<Fingerprint, (Duration, u64)> = FxHashMap::default();
        for b in self.hours.iter().chain(&self.minutes).filter(|b| b.overlaps(from, to)) {
            for (key, v) in &b.queries {
                let e = per.entry(key.fingerprint).or_default();
                e.0 += v.db_time();
                e.1 += v.exec_calls();
            }
        }
        if per.len() <= k {
            return per.into_keys().collect();
        }
        let mut all: Vec<_> = per.into_iter().collect();
        let mut top = FxHashSet::default();
        if k > 0 {
            all.select_nth_unstable_by_key(k - 1, |(_, (time, _))| std::cmp::Reverse(*time));
            top.extend(all[..k].iter().map(|(fp, _)| *fp));
            all.select_nth_unstable_by_key(k - 1, |(_, (_, calls))| std::cmp::Reverse(*calls));
            top.extend(all[..k].iter().map(|(fp, _)| *fp));
        }
        top
    }

    /// Only the statement rows of `fingerprints` between `from` and `to`:
    /// what a latency baseline needs, at a fraction of a full snapshot's
    /// cost (no tables, locks, activity or node data; other fingerprints
    /// skipped before anything is copied).
    pub fn snapshot_of(&self, from: EpochMillis, to: EpochMillis, fingerprints: &FxHashSet<Fingerprint>) -> Snapshot {
        self.snapshot_with(from, to, None, Keep::Only(fingerprints))
    }

    /// Statement rows merged per fingerprint over `[from, to)`, optionally
    /// of one node and one database, with the total database time of the
    /// same rows: what `/api/v1/queries` lists, so without the slowest
    /// sample and plan ([`RowStats::merge_without_samples`]). Unlike a
    /// [`Snapshot`] it does not copy every (fingerprint, database, node)
    /// row first, so an API call costs memory by the number of
    /// fingerprints, not by the store's size (a full snapshot of a full
    /// store once took as much memory again as the store).
    ///
    /// With `only`, the rows of that fingerprint alone (the total stays
    /// that of every row).
    pub fn by_fingerprint(
        &self,
        from: EpochMillis,
        to: EpochMillis,
        node: Option<&str>,
        database: Option<&str>,
        only: Option<Fingerprint>,
    ) -> FingerprintRows {
        let mut rows: FxHashMap<Fingerprint, FingerprintRow> = FxHashMap::default();
        let (mut first, mut last): (Option<EpochMillis>, Option<EpochMillis>) = (None, None);
        // A row's database time is pg_stat_statements' when it has calls,
        // else the log's, so the total needs per-row sums: three numbers
        // a row, kept here.
        let mut per_row: FxHashMap<&RowKey, (Duration, u64, Duration)> = FxHashMap::default();
        let other: Arc<str> = OVERFLOW_TEXT.into();
        for b in self.hours.iter().chain(&self.minutes).filter(|b| b.overlaps(from, to)) {
            first = Some(first.map_or(b.span.0, |f| f.min(b.span.0)));
            last = Some(last.map_or(b.span.1, |l| l.max(b.span.1)));
            for (k, v) in &b.queries {
                if node.is_some_and(|n| *k.node != *n) || database.is_some_and(|d| *k.database != *d) {
                    continue;
                }
                let e = per_row.entry(k).or_default();
                e.0 += v.pgss.exec_time + v.pgss.plan_time;
                e.1 += v.pgss.calls;
                e.2 += v.total;
                if only.is_some_and(|fp| fp != k.fingerprint) {
                    continue;
                }
                let row = rows.entry(k.fingerprint).or_insert_with(|| {
                    let (text, method) = match self.fingerprints.get(&k.fingerprint) {
                        Some(f) => (f.text.clone(), f.method),
                        None => (other.clone(), Method::Fallback),
                    };
                    FingerprintRow {
                        fingerprint: k.fingerprint,
                        text,
                        method,
                        stats: RowStats::default(),
                        nodes: Vec::new(),
                        databases: Vec::new(),
                    }
                });
                row.stats.merge_without_samples(v);
                if !row.nodes.contains(&k.node) {
                    row.nodes.push(k.node.clone());
                }
                if !row.databases.contains(&k.database) {
                    row.databases.push(k.database.clone());
                }
            }
        }
        FingerprintRows {
            total: per_row.values().map(|(pgss, calls, log)| if *calls > 0 { *pgss } else { *log }).sum(),
            rows: rows.into_values().collect(),
            // As a snapshot says it: the buckets' span within the range.
            from: first.map_or(from, |f| f.max(from)),
            to: last.map_or(to, |l| l.min(to)),
        }
    }

    fn snapshot_with(&self, from: EpochMillis, to: EpochMillis, node: Option<&str>, keep: Keep<'_>) -> Snapshot {
        let mut acc = Bucket::new(from, to - from);
        let mut first = None;
        let mut last = None;
        for b in self.hours.iter().chain(&self.minutes).filter(|b| b.overlaps(from, to)) {
            first = Some(first.map_or(b.span.0, |f: i64| f.min(b.span.0)));
            last = Some(last.map_or(b.span.1, |l: i64| l.max(b.span.1)));
            for (k, v) in &b.queries {
                if node.is_some_and(|n| *k.node != *n) {
                    continue;
                }
                match keep {
                    Keep::All => acc.queries.entry(k.clone()).or_default().merge(v),
                    Keep::Only(fps) | Keep::Top(fps) if fps.contains(&k.fingerprint) => {
                        acc.queries.entry(k.clone()).or_default().merge(v);
                    }
                    Keep::Only(_) => {}
                    Keep::Top(_) => {
                        let other = RowKey { fingerprint: OVERFLOW_FINGERPRINT, ..k.clone() };
                        acc.queries.entry(other).or_default().merge_totals(v);
                    }
                }
            }
            // Before `Only` skips the rest: which nodes reported in the
            // range is what lists them below.
            for (k, v) in &b.nodes {
                if node.is_none_or(|n| **k == *n) {
                    acc.nodes.entry(k.clone()).or_default().merge(v.clone());
                }
            }
            if matches!(keep, Keep::Only(_)) {
                continue;
            }
            for (k, v) in &b.tables {
                if node.is_none_or(|n| *k.node == *n) {
                    acc.tables.entry(k.clone()).or_default().merge(v);
                }
            }
            for (k, v) in &b.locks {
                if node.is_none_or(|n| *k.0 == *n) {
                    acc.locks.entry(k.clone()).or_default().merge(v);
                }
            }
            for (k, v) in &b.activity {
                if node.is_none_or(|n| *k.0 == *n) {
                    *acc.activity.entry(k.clone()).or_default() += v;
                }
            }
            add_overflow(&mut acc.overflow, &b.overflow);
        }
        let other: Arc<str> = OVERFLOW_TEXT.into();
        let queries = acc
            .queries
            .into_iter()
            .map(|(k, stats)| {
                let (text, method) = match self.fingerprints.get(&k.fingerprint) {
                    Some(f) => (f.text.clone(), f.method),
                    None => (other.clone(), Method::Fallback),
                };
                QueryRow { fingerprint: k.fingerprint, database: k.database, node: k.node, text, method, stats }
            })
            .collect();
        let tables = acc
            .tables
            .into_iter()
            .map(|(k, delta)| TableRow {
                node: k.node,
                database: k.database,
                relation: k.relation,
                parent: k.parent,
                delta,
            })
            .collect();
        let locks = acc.locks.into_iter().map(|((node, key), stats)| LockRow { node, key, stats }).collect();
        let activity =
            acc.activity.into_iter().map(|((node, key), samples)| ActivityRow { node, key, samples }).collect();
        // The nodes that sent a batch in the range: one that stopped (an
        // agent retired, a pod renamed) is not an idle node, and counting
        // it as one made the last node standing "hot" for good.
        let mut nodes: Vec<NodeRow> = self
            .nodes
            .iter()
            .filter_map(|(n, info)| {
                Some(NodeRow {
                    node: n.clone(),
                    resource: info.resource.clone(),
                    last_seen: info.last_seen,
                    rest: acc.nodes.remove(n)?,
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Snapshot {
            from: first.map_or(from, |f| f.max(from)),
            to: last.map_or(to, |l| l.min(to)),
            queries,
            tables,
            locks,
            activity,
            nodes,
            overflow: acc.overflow,
        }
    }

    /// One fingerprint over time: per bucket in `[from, to)`, its rows
    /// (of one node, of one database, when given) merged per node. Buckets
    /// in order.
    pub fn series(
        &self,
        fingerprint: Fingerprint,
        (from, to): (EpochMillis, EpochMillis),
        node: Option<&str>,
        database: Option<&str>,
    ) -> Vec<(EpochMillis, i64, BTreeMap<Arc<str>, RowStats>)> {
        let mut out = Vec::new();
        for b in self.hours.iter().chain(&self.minutes).filter(|b| b.overlaps(from, to)) {
            let mut per_node: BTreeMap<Arc<str>, RowStats> = BTreeMap::new();
            for (k, v) in &b.queries {
                if k.fingerprint == fingerprint
                    && node.is_none_or(|n| *k.node == *n)
                    && database.is_none_or(|d| *k.database == *d)
                {
                    per_node.entry(k.node.clone()).or_default().merge(v);
                }
            }
            if !per_node.is_empty() {
                out.push((b.start, b.len, per_node));
            }
        }
        out
    }

    /// The text and method of a known fingerprint.
    pub fn fingerprint_text(&self, fp: Fingerprint) -> Option<(Arc<str>, Method)> {
        self.fingerprints.get(&fp).map(|f| (f.text.clone(), f.method))
    }

    /// The latest time data arrived for (ms), if any.
    pub fn latest(&self) -> Option<EpochMillis> {
        self.nodes.values().map(|n| n.last_seen).max()
    }

    pub fn health(&self) -> StoreHealth {
        let fp = self.fingerprinter.stats();
        let mut overflow = OverflowCounts::default();
        for b in self.hours.iter().chain(&self.minutes) {
            add_overflow(&mut overflow, &b.overflow);
        }
        StoreHealth {
            fingerprints: self.fingerprints.len(),
            nodes: self.nodes.len(),
            minute_buckets: self.minutes.len(),
            rollup_buckets: self.hours.len(),
            rows: self.minutes.iter().chain(&self.hours).map(|b| b.queries.len()).sum(),
            estimated_bytes: self.bytes(),
            fingerprint_cache_hits: fp.hits,
            fingerprint_cache_misses: fp.misses,
            fingerprint_fallbacks: fp.fallbacks,
            overflow,
            ..self.health.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fingerprint::fingerprint_with_method;
    use crate::totals::SeriesFingerprint;
    use querywatch_wire::StatementKey;
    use querywatch_wire::dbstats::{PgssDelta, PgssKey, TableKey as WireTableKey};

    const T0: EpochMillis = 1_800_000_000_000;

    fn res(node: &str) -> ResourceInfo {
        ResourceInfo { node: node.into(), ..ResourceInfo::default() }
    }

    fn obs(at: EpochMillis, calls: &[(&str, u64)]) -> Observations {
        let mut o = Observations::default();
        for (text, us) in calls {
            let key = StatementKey { database: "shop".into(), user: "app".into(), text: (*text).into() };
            o.statements.entry(key).or_default().record_call(Duration::from_micros(*us), Some(at), text);
        }
        o.first_seen = Some(at - 10_000);
        o.last_seen = Some(at);
        o
    }

    #[test]
    fn nodes_stay_apart_and_merge_per_fingerprint() {
        let mut w = Windows::new(WindowConfig::default());
        w.ingest(&res("a"), obs(T0, &[("SELECT x FROM t WHERE id = $1", 100)]), T0);
        w.ingest(&res("b"), obs(T0, &[("select x from t where id=$1", 300)]), T0);
        w.ingest(&res("a"), obs(T0 + 1_000, &[("SELECT x FROM t WHERE id = $1", 200)]), T0 + 1_000);
        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        assert_eq!(s.queries.len(), 2);
        let fp = s.by_fingerprint();
        assert_eq!(fp.len(), 1);
        assert_eq!(fp[0].stats.calls, 3);
        assert_eq!(fp[0].nodes.len(), 2);
        let only_b = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, Some("b"));
        assert_eq!(only_b.queries.len(), 1);
        assert_eq!(only_b.queries[0].stats.calls, 1);
        assert_eq!(only_b.nodes.len(), 1);
    }

    /// One batch with statements of several databases, in the map's order:
    /// each row keeps its own database (ingest remembers the last database
    /// it interned; a stale one would put rows under the wrong name).
    #[test]
    fn a_batch_of_several_databases_keeps_each_rows_database() {
        let mut w = Windows::new(WindowConfig::default());
        let mut o = Observations::default();
        let dbs = ["shop", "crm", "shop", "audit", "crm", "shop"];
        for (i, db) in dbs.iter().enumerate() {
            let text = format!("SELECT c{i} FROM t WHERE id = $1");
            let key = StatementKey { database: (*db).into(), user: "app".into(), text: text.clone() };
            o.statements.entry(key).or_default().record_call(Duration::from_micros(100), Some(T0), &text);
        }
        o.last_seen = Some(T0);
        w.ingest(&res("a"), o, T0);
        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        let mut got: Vec<(String, String)> =
            s.queries.iter().map(|q| (q.text.to_string(), q.database.to_string())).collect();
        got.sort();
        let mut want: Vec<(String, String)> = dbs
            .iter()
            .enumerate()
            .map(|(i, db)| (format!("SELECT c{i} FROM t WHERE id = $1"), (*db).to_owned()))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    /// A node that withholds query text and one that sends it merge per
    /// fingerprint, and the masked text is shown once any node sent it.
    #[test]
    fn withheld_text_merges_with_sent_text_and_gives_way_to_it() {
        let text = "SELECT x FROM t WHERE id = $1";
        let (fp, method) = fingerprint_with_method(text);
        let token = Withheld { fingerprint: fp.0, parsed: method == Method::Parsed, read_only: true }.to_string();
        let mut w = Windows::new(WindowConfig::default());
        w.ingest(&res("private"), obs(T0, &[(&token, 100)]), T0);
        assert_eq!(w.fingerprint_text(fp).unwrap().0.as_ref(), token);
        let bytes = w.fingerprint_bytes;
        w.ingest(&res("open"), obs(T0, &[(text, 300)]), T0);
        w.ingest(&res("private"), obs(T0 + 1_000, &[(&token, 200)]), T0 + 1_000);
        assert_eq!(w.fingerprint_text(fp).unwrap(), (Arc::from(text), Method::Parsed));
        assert_eq!(w.fingerprint_bytes, bytes + text.len() - token.len());
        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        let by_fp = s.by_fingerprint();
        assert_eq!(by_fp.len(), 1);
        assert_eq!((by_fp[0].stats.calls, by_fp[0].nodes.len()), (3, 2));
    }

    #[test]
    fn buckets_roll_up_and_expire_but_totals_survive_the_rollup() {
        let cfg = WindowConfig {
            retention: Duration::from_secs(600),
            rollup_retention: Duration::from_secs(3 * 3600),
            ..WindowConfig::default()
        };
        let mut w = Windows::new(cfg);
        for m in 0..30 {
            let t = T0 + m * MINUTE_MS;
            w.ingest(&res("a"), obs(t, &[("SELECT 1", 1_000)]), t);
        }
        let now = T0 + 29 * MINUTE_MS;
        let h = w.health();
        assert!(h.minute_buckets <= 11, "{h:?}");
        assert!(h.rollup_buckets >= 1);
        let all = w.snapshot(T0 - HOUR_MS, now + MINUTE_MS, None);
        assert_eq!(all.by_fingerprint()[0].stats.calls, 30);
        // Three hours later everything has expired, and the fingerprint with it.
        let later = now + 4 * HOUR_MS;
        w.ingest(&res("a"), obs(later, &[("SELECT 2", 1_000)]), later);
        let s = w.snapshot(T0 - HOUR_MS, later + MINUTE_MS, None);
        assert_eq!(s.queries.len(), 1);
        assert_eq!(w.health().fingerprints, 1);
    }

    /// A node lists in the ranges it sent batches in, not in later ones.
    #[test]
    fn a_node_that_stopped_reporting_is_not_in_later_ranges() {
        let mut w = Windows::new(WindowConfig::default());
        w.ingest(&res("a"), obs(T0, &[("SELECT a FROM t", 1_000)]), T0);
        w.ingest(&res("gone"), obs(T0, &[("SELECT a FROM t", 1_000)]), T0);
        let later = T0 + 10 * MINUTE_MS;
        w.ingest(&res("a"), obs(later, &[]), later);
        let names = |s: &Snapshot| s.nodes.iter().map(|n| n.node.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&w.snapshot(later - 5 * MINUTE_MS, later + 1, None)), ["a"]);
        assert_eq!(names(&w.snapshot(T0 - MINUTE_MS, later + 1, None)), ["a", "gone"]);
        assert_eq!(names(&w.snapshot(T0 - MINUTE_MS, later + 1, Some("gone"))), ["gone"]);
        let fps = [w.snapshot(T0, later, None).queries[0].fingerprint].into_iter().collect();
        assert_eq!(names(&w.snapshot_of(T0 - MINUTE_MS, later + 1, &fps)), ["a", "gone"]);
    }

    /// A node whose data has all expired is forgotten, with its series, so
    /// nodes that come and go do not fill `max_nodes` for good.
    #[test]
    fn a_node_with_nothing_left_is_forgotten_and_frees_its_place() {
        let cfg = WindowConfig {
            max_nodes: 1,
            retention: Duration::from_secs(600),
            rollup_retention: Duration::from_secs(3600),
            ..WindowConfig::default()
        };
        let mut w = Windows::new(cfg);
        w.ingest(&res("gone"), obs(T0, &[("SELECT a FROM t", 1_000)]), T0);
        let later = T0 + 2 * HOUR_MS;
        w.ingest(&res("new"), obs(later, &[("SELECT a FROM t", 1_000)]), later);
        let s = w.snapshot(later - MINUTE_MS, later + 1, None);
        assert_eq!(s.nodes.iter().map(|n| &*n.node).collect::<Vec<_>>(), ["new"], "under its own name");
        assert_eq!(s.queries[0].node.as_ref(), "new");
        assert_eq!(w.totals.nodes.keys().map(|k| &**k).collect::<Vec<_>>(), ["new"]);
        assert!(w.totals.query(SeriesFingerprint::Other, "gone").is_none());
        assert_eq!(w.health().overflow.node_batches, 0);
    }

    /// A rollup holds the minutes past the retention only: a short range
    /// that overlaps its hour but none of those minutes does not see them.
    #[test]
    fn a_short_range_does_not_count_an_hours_rollup_it_only_touches() {
        let cfg = WindowConfig { retention: Duration::from_secs(600), ..WindowConfig::default() };
        let mut w = Windows::new(cfg);
        let early = T0 + MINUTE_MS; // T0 starts an hour
        w.ingest(&res("a"), obs(early, &[("SELECT a FROM t", 1_000)]), early);
        let now = T0 + 62 * MINUTE_MS;
        w.ingest(&res("a"), obs(now, &[("SELECT b FROM u", 1_000)]), now);
        assert_eq!(w.health().rollup_buckets, 1, "the early minute is in the rollup of hour T0");

        // A detection window at 1:02 overlaps hour 0's rollup, not its data.
        let recent = w.snapshot(now - 5 * MINUTE_MS, now + 1, None);
        let texts: Vec<&str> = recent.queries.iter().map(|q| &*q.text).collect();
        assert_eq!(texts, ["SELECT b FROM u"]);
        assert_eq!(w.by_fingerprint(now - 5 * MINUTE_MS, now + 1, None, None, None).rows.len(), 1);
        assert_eq!(w.snapshot_top(now - 5 * MINUTE_MS, now + 1, 10).queries.len(), 1);
        let fp1 = w.snapshot(T0, now, None).queries.iter().find(|q| &*q.text == "SELECT a FROM t").unwrap().fingerprint;
        assert!(w.series(fp1, (now - 5 * MINUTE_MS, now + 1), None, None).is_empty());
        // A range over the minute it holds still has it, from that minute on.
        let long = w.snapshot(T0 - HOUR_MS, now + 1, None);
        assert_eq!(long.queries.len(), 2);
        assert_eq!(long.from, early);
    }

    #[test]
    fn too_old_batches_are_counted_not_stored() {
        let mut w = Windows::new(WindowConfig::default());
        w.ingest(&res("a"), obs(T0 - 48 * HOUR_MS, &[("SELECT 1", 5)]), T0);
        assert_eq!(w.health().too_old_batches, 1);
        assert!(w.snapshot(0, T0 + HOUR_MS, None).queries.is_empty());
    }

    #[test]
    fn caps_fold_into_other_and_count() {
        let cfg = WindowConfig { max_fingerprints: 2, max_nodes: 1, ..WindowConfig::default() };
        let mut w = Windows::new(cfg);
        // One shape per batch: a batch's statements come in hash order.
        for text in ["SELECT a FROM t", "SELECT b FROM t", "SELECT c FROM t"] {
            w.ingest(&res("a"), obs(T0, &[(text, 5)]), T0);
        }
        w.ingest(&res("b"), obs(T0, &[("SELECT a FROM t", 5)]), T0);
        let h = w.health();
        assert_eq!(h.fingerprints, 2);
        assert_eq!(h.overflow.query_calls, 1);
        assert_eq!(h.overflow.node_batches, 1);
        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        let total: u64 = s.queries.iter().map(|q| q.stats.calls).sum();
        assert_eq!(total, 4, "nothing is lost, only folded");
        assert!(s.queries.iter().any(|q| q.fingerprint == OVERFLOW_FINGERPRINT && &*q.text == OVERFLOW_TEXT));
        assert!(s.queries.iter().any(|q| &*q.node == OVERFLOW_TEXT));
    }

    #[test]
    fn statistics_deltas_join_the_log_rows_by_fingerprint() {
        let mut w = Windows::new(WindowConfig::default());
        let mut o = obs(T0, &[("SELECT x FROM t WHERE id = $1", 100)]);
        let key = PgssKey {
            database: "shop".into(),
            user: "app".into(),
            queryid: 42,
            toplevel: true,
            text: "SELECT x FROM t WHERE id = $1".into(),
        };
        o.db.statements
            .insert(key, PgssDelta { calls: 9, exec_time: Duration::from_millis(2), ..PgssDelta::default() });
        let tk = WireTableKey { database: "shop".into(), relation: "public.t_p1".into(), parent: "public.t".into() };
        o.db.tables.insert(tk, TableDelta { seq_scan: 4, ..TableDelta::default() });
        w.ingest(&res("a"), o, T0);
        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        assert_eq!(s.queries.len(), 1);
        let q = &s.queries[0].stats;
        assert_eq!((q.calls, q.pgss.calls, q.queryid, q.exec_calls()), (1, 9, Some(42), 9));
        assert_eq!(s.tables.len(), 1);
        assert_eq!((&*s.tables[0].parent, s.tables[0].delta.seq_scan), ("public.t", 4));
        let series = w.series(s.queries[0].fingerprint, (T0 - HOUR_MS, T0 + HOUR_MS), None, None);
        assert_eq!(series.len(), 1);
        let range = (T0 - HOUR_MS, T0 + HOUR_MS);
        assert_eq!(w.series(s.queries[0].fingerprint, range, Some("a"), Some("shop")).len(), 1);
        assert!(w.series(s.queries[0].fingerprint, range, Some("b"), None).is_empty(), "another node's");
        assert!(w.series(s.queries[0].fingerprint, range, None, Some("other")).is_empty(), "another database's");
    }

    /// An agent sends a statement's log row and its pg_stat_statements row
    /// apart; `/metrics`' counters count its executions once, as the store's
    /// merged row does, whichever batch each comes in.
    #[test]
    fn the_totals_count_a_statement_once_when_log_and_statistics_both_saw_it() {
        let mut w = Windows::new(WindowConfig::default());
        let (text, logged_only) = ("SELECT x FROM t WHERE id = $1", "SELECT y FROM u WHERE id = $1");
        let pgss = |o: &mut Observations, calls: u64| {
            let key =
                PgssKey { database: "shop".into(), user: "app".into(), queryid: 42, toplevel: true, text: text.into() };
            let delta = PgssDelta { calls, exec_time: Duration::from_millis(calls), ..PgssDelta::default() };
            o.db.statements.insert(key, delta);
        };
        // Both sources in one batch: 1 logged call, 9 counted by the statistics.
        let mut o = obs(T0, &[(text, 100), (logged_only, 100), (logged_only, 300)]);
        pgss(&mut o, 9);
        w.ingest(&res("a"), o, T0);
        // The statistics' next delta alone, then a logged call alone.
        let mut o = obs(T0 + 1_000, &[]);
        pgss(&mut o, 4);
        w.ingest(&res("a"), o, T0 + 1_000);
        w.ingest(&res("a"), obs(T0 + 2_000, &[(text, 100)]), T0 + 2_000);

        let s = w.snapshot(T0 - MINUTE_MS, T0 + MINUTE_MS, None);
        let fp_of = |t: &str| s.queries.iter().find(|q| &*q.text == t).unwrap().fingerprint;
        let calls = |t: &str| w.totals.query(SeriesFingerprint::One(fp_of(t)), "a").unwrap().calls;
        let shown: u64 = s.queries.iter().map(|q| q.stats.exec_calls()).sum();
        assert_eq!(calls(text), 13, "9 + 4 from the statistics; the logged calls are among them");
        assert_eq!(calls(logged_only), 2, "the log's count where the statistics have none");
        assert_eq!(w.totals.nodes["a"].calls, 15);
        assert_eq!(shown, 15, "the store's rows say the same");
        let time = w.totals.query(SeriesFingerprint::One(fp_of(text)), "a").unwrap().time;
        assert!((time - 0.013).abs() < 1e-9, "the statistics' 13 ms: {time}");
    }

    /// The API's per-fingerprint walk says what a full snapshot merged by
    /// fingerprint says: rows, totals, nodes, databases, with and without
    /// filters, over rows of the log only, of pg_stat_statements only and
    /// of both.
    #[test]
    fn by_fingerprint_agrees_with_the_snapshot() {
        let mut w = Windows::new(WindowConfig::default());
        for (i, node) in ["a", "b", "c"].into_iter().enumerate() {
            for m in 0..3 {
                let t = T0 + m * MINUTE_MS;
                let mut o = obs(t, &[("SELECT x FROM t WHERE id = $1", 100 + 50 * i as u64), ("SELECT y FROM u", 900)]);
                if node != "c" {
                    let key = PgssKey {
                        database: if node == "a" { "shop" } else { "crm" }.into(),
                        user: "app".into(),
                        queryid: 7,
                        toplevel: true,
                        text: "SELECT x FROM t WHERE id = $1".into(),
                    };
                    let d =
                        PgssDelta { calls: 5, exec_time: Duration::from_millis(3 + m as u64), ..PgssDelta::default() };
                    o.db.statements.insert(key, d);
                }
                w.ingest(&res(node), o, t);
            }
        }
        for (node, db) in
            [(None, None), (Some("a"), None), (Some("b"), None), (None, Some("crm")), (Some("c"), Some("shop"))]
        {
            let mut snap = w.snapshot(0, T0 + HOUR_MS, node);
            if let Some(db) = db {
                snap.queries.retain(|q| &*q.database == db);
            }
            let mut want = snap.by_fingerprint();
            let got = w.by_fingerprint(0, T0 + HOUR_MS, node, db, None);
            assert_eq!(got.total, snap.total_db_time(), "{node:?} {db:?}");
            assert_eq!((got.from, got.to), (snap.from, snap.to));
            let mut got = got.rows;
            assert!(!got.is_empty());
            want.sort_by_key(|r| r.fingerprint);
            got.sort_by_key(|r| r.fingerprint);
            let view = |r: &FingerprintRow| {
                let mut nodes = r.nodes.clone();
                nodes.sort();
                let mut dbs = r.databases.clone();
                dbs.sort();
                (
                    r.fingerprint,
                    r.text.clone(),
                    r.stats.calls,
                    r.stats.exec_calls(),
                    r.stats.db_time(),
                    r.stats.quantile(0.95),
                    r.stats.max,
                    nodes,
                    dbs,
                )
            };
            assert_eq!(got.iter().map(view).collect::<Vec<_>>(), want.iter().map(view).collect::<Vec<_>>());
            // One fingerprint's rows, the total still of all (what the
            // per-statement API answers with).
            let fp = want[0].fingerprint;
            let one = w.by_fingerprint(0, T0 + HOUR_MS, node, db, Some(fp));
            assert_eq!(one.total, snap.total_db_time());
            let want_one: Vec<_> = want.iter().filter(|r| r.fingerprint == fp).map(view).collect();
            assert_eq!(one.rows.iter().map(view).collect::<Vec<_>>(), want_one);
            if node.is_none() && db.is_none() {
                let only = w.snapshot_of(0, T0 + HOUR_MS, &std::iter::once(fp).collect());
                assert_eq!((only.from, only.to), (snap.from, snap.to));
            }
        }
    }

    /// Merging into the same rows over and over keeps the estimate where
    /// the rows are: a histogram's capacity goes up and down with the sizes
    /// merged, and only counting the ups let the estimate climb forever.
    #[test]
    fn the_estimate_does_not_ratchet_on_merges() {
        let mut w = Windows::new(WindowConfig::default());
        let texts: Vec<String> = (0..50).map(|i| format!("SELECT c{i} FROM t")).collect();
        let mut sizes = Vec::new();
        for round in 0..200u64 {
            // Alternately wide and narrow histograms into the same rows.
            let calls: Vec<(&str, u64)> = texts
                .iter()
                .flat_map(|t| (0..1 + (round % 2) * 5).map(move |k| (t.as_str(), 100 + 1_000 * k)))
                .collect();
            w.ingest(&res("a"), obs(T0, &calls), T0);
            sizes.push(w.health().estimated_bytes);
        }
        let (after_warmup, end) = (sizes[20], sizes[199]);
        assert!(end <= after_warmup + after_warmup / 10, "the estimate grew from {after_warmup} to {end} B");
    }

    /// A flood of new shapes fills memory; the statement that carries the
    /// load keeps its rows minute after minute (it is in the protected
    /// top), while without protection it would fold into `<other>`.
    #[test]
    fn when_memory_is_full_the_top_statements_keep_their_rows() {
        let heavy = "SELECT total FROM orders WHERE id = $1";
        let run = |protect_top: usize| {
            let cfg = WindowConfig { memory_limit: 48 * 1024, protect_top, ..WindowConfig::default() };
            let mut w = Windows::new(cfg);
            for m in 0..5 {
                let t = T0 + m * MINUTE_MS;
                let texts: Vec<String> = (0..40).map(|i| format!("SELECT c{i} FROM flood{m}")).collect();
                let mut calls: Vec<(&str, u64)> = texts.iter().map(|s| (s.as_str(), 50)).collect();
                calls.extend([(heavy, 900_000); 3]);
                w.ingest(&res("a"), obs(t, &calls), t);
            }
            let s = w.snapshot(0, T0 + HOUR_MS, None);
            let heavy_calls: u64 = s.queries.iter().filter(|q| &*q.text == heavy).map(|q| q.stats.calls).sum();
            let all: u64 = s.queries.iter().map(|q| q.stats.calls).sum();
            (w.health().memory_folded_rows, heavy_calls, all)
        };
        // Every minute: 40 new shapes of one call, the heavy one 3 calls.
        let (folded, heavy_calls, all) = run(1);
        assert!(folded > 0, "the flood must hit the memory limit");
        assert_eq!(heavy_calls, 5 * 3, "the heavy statement kept every minute's row");
        assert_eq!(all, 5 * 43, "nothing lost");
        let (folded, heavy_calls, all) = run(0);
        assert!(folded > 0);
        assert!(heavy_calls < 5 * 3, "unprotected, it folds too (else this test shows nothing)");
        assert_eq!(all, 5 * 43);
    }

    /// New shapes within one minute fill one statement table; it must not
    /// double its slots past the limit before folding starts (it did: the
    /// store reached 130% of its share in the cardinality attack).
    #[test]
    fn a_statement_table_does_not_double_past_the_limit() {
        // protect_top 1,000: all 100 shapes are top statements, whose new
        // rows are kept while memory is full, but not at the cost of a
        // table that doubles.
        for protect_top in [0, 1_000] {
            table_stays_within(protect_top);
        }
    }

    fn table_stays_within(protect_top: usize) {
        let limit = 1536 * 1024;
        let mut w = Windows::new(WindowConfig { memory_limit: limit, protect_top, ..WindowConfig::default() });
        let mut peak = 0;
        let mut sent = 0;
        for b in 0..100 {
            // The same 100 shapes from one more node each time: new rows,
            // few fingerprints.
            let texts: Vec<String> = (0..100).map(|i| format!("SELECT c{i} FROM t")).collect();
            let calls: Vec<(&str, u64)> = texts.iter().map(|s| (s.as_str(), 2)).collect();
            sent += calls.len() as u64;
            w.ingest(&res(&format!("node{b}")), obs(T0, &calls), T0);
            peak = peak.max(w.bytes());
        }
        assert!(w.health().memory_folded_rows > 0, "the shapes must fill the store");
        let held = w.fingerprint_bytes + w.fingerprinter.bytes();
        assert!(
            peak <= limit + limit / 20,
            "estimate peaked at {peak} bytes, limit {limit}, fingerprints {held}, protect_top {protect_top}"
        );
        let s = w.snapshot(0, T0 + HOUR_MS, None);
        assert_eq!(s.queries.iter().map(|q| q.stats.calls).sum::<u64>(), sent, "folding loses no call");
    }

    #[test]
    fn over_the_memory_limit_old_detail_goes_first_then_rows_fold() {
        let cfg = WindowConfig { memory_limit: 64 * 1024, ..WindowConfig::default() };
        let mut w = Windows::new(cfg);
        let mut sent = 0;
        for m in 0..20 {
            let t = T0 + m * MINUTE_MS;
            let texts: Vec<String> = (0..40).map(|i| format!("SELECT c{i} FROM t{m}")).collect();
            let calls: Vec<(&str, u64)> = texts.iter().map(|s| (s.as_str(), 50)).collect();
            sent += calls.len() as u64;
            w.ingest(&res("a"), obs(t, &calls), t);
        }
        let h = w.health();
        assert!(h.early_rollups > 0 || h.memory_folded_rows > 0, "{h:?}");
        let s = w.snapshot(0, T0 + HOUR_MS, None);
        let seen: u64 = s.queries.iter().map(|q| q.stats.calls).sum();
        assert_eq!(seen, sent, "folding and rolling up lose no call");
    }
}
