//! What the agent's statistics poller saw in one interval: per-statement
//! deltas of `pg_stat_statements`, per-relation deltas of
//! `pg_stat_user_tables` (+ `pg_statio_user_tables`) and counted
//! `pg_stat_activity` samples. Plain data shared by agent and collector;
//! carried in [`crate::Observations::db`].
//!
//! Every counter here is a delta (what happened in the interval), so
//! merging adds; the table size is a gauge and merging keeps the larger
//! (the later of two consecutive intervals when the relation grows, and
//! never an unknown over a known one).

use std::collections::BTreeMap;
use std::time::Duration;

/// One `pg_stat_statements` entry as it travels: PostgreSQL's own key
/// (`queryid`, `toplevel`, by database and role name) and the masked text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgssKey {
    /// `db.namespace`.
    pub database: String,
    /// `querywatch.db.user`.
    pub user: String,
    /// `querywatch.queryid` (a string on the wire: OTLP has no u64 and
    /// readers of attributes compare strings).
    pub queryid: i64,
    /// `querywatch.toplevel`: false for statements run inside functions.
    pub toplevel: bool,
    /// `db.query.text`, masked.
    pub text: String,
}

/// What one interval added to one `pg_stat_statements` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PgssDelta {
    pub calls: u64,
    pub exec_time: Duration,
    /// Zero unless `pg_stat_statements.track_planning`.
    pub plan_time: Duration,
    pub rows: u64,
    pub shared_blks_hit: u64,
    pub shared_blks_read: u64,
    pub temp_blks_written: u64,
}

impl PgssDelta {
    pub fn merge(&mut self, o: &PgssDelta) {
        self.calls = self.calls.saturating_add(o.calls);
        self.exec_time = self.exec_time.saturating_add(o.exec_time);
        self.plan_time = self.plan_time.saturating_add(o.plan_time);
        self.rows = self.rows.saturating_add(o.rows);
        self.shared_blks_hit = self.shared_blks_hit.saturating_add(o.shared_blks_hit);
        self.shared_blks_read = self.shared_blks_read.saturating_add(o.shared_blks_read);
        self.temp_blks_written = self.temp_blks_written.saturating_add(o.temp_blks_written);
    }
}

/// One relation: database, schema-qualified name, partition parent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableKey {
    /// `db.namespace`.
    pub database: String,
    /// `db.collection.name`: `schema.relation`.
    pub relation: String,
    /// `querywatch.partition.parent`: `schema.parent`, empty for a plain table.
    pub parent: String,
}

/// What one interval added to one relation, and its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableDelta {
    pub seq_scan: u64,
    pub seq_tup_read: u64,
    pub idx_scan: u64,
    pub n_tup_ins: u64,
    pub n_tup_upd: u64,
    pub n_tup_del: u64,
    pub heap_blks_read: u64,
    pub heap_blks_hit: u64,
    /// `pg_relation_size` (bytes) when it could be read: a gauge.
    pub size_bytes: Option<u64>,
}

impl TableDelta {
    pub fn merge(&mut self, o: &TableDelta) {
        self.seq_scan = self.seq_scan.saturating_add(o.seq_scan);
        self.seq_tup_read = self.seq_tup_read.saturating_add(o.seq_tup_read);
        self.idx_scan = self.idx_scan.saturating_add(o.idx_scan);
        self.n_tup_ins = self.n_tup_ins.saturating_add(o.n_tup_ins);
        self.n_tup_upd = self.n_tup_upd.saturating_add(o.n_tup_upd);
        self.n_tup_del = self.n_tup_del.saturating_add(o.n_tup_del);
        self.heap_blks_read = self.heap_blks_read.saturating_add(o.heap_blks_read);
        self.heap_blks_hit = self.heap_blks_hit.saturating_add(o.heap_blks_hit);
        self.size_bytes = match (self.size_bytes, o.size_bytes) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// What `pg_stat_activity` samples are counted by. Empty strings for what
/// the view left NULL (no wait event, a background process's database).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityKey {
    /// `db.namespace`.
    pub database: String,
    /// `querywatch.wait_event_type`.
    pub wait_event_type: String,
    /// `querywatch.wait_event`.
    pub wait_event: String,
    /// `querywatch.state`: `active`, `idle in transaction`, …
    pub state: String,
    /// `db.query.text`, masked.
    pub text: String,
}

/// Everything the statistics poller contributed to one interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbStats {
    pub statements: BTreeMap<PgssKey, PgssDelta>,
    pub tables: BTreeMap<TableKey, TableDelta>,
    /// Backends seen per key, summed over the interval's samples.
    pub activity: BTreeMap<ActivityKey, u64>,
}

impl DbStats {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.tables.is_empty() && self.activity.is_empty()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: DbStats) {
        for (k, v) in other.statements {
            self.statements.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.tables {
            self.tables.entry(k).or_default().merge(&v);
        }
        for (k, v) in other.activity {
            let n = self.activity.entry(k).or_default();
            *n = n.saturating_add(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_deltas_and_keeps_the_larger_size() {
        let key = TableKey { database: "shop".into(), relation: "public.orders".into(), parent: String::new() };
        let mut a = DbStats::default();
        a.tables.insert(key.clone(), TableDelta { seq_scan: 2, size_bytes: Some(8192), ..TableDelta::default() });
        let mut b = DbStats::default();
        b.tables.insert(key.clone(), TableDelta { seq_scan: 3, size_bytes: Some(16384), ..TableDelta::default() });
        b.tables.insert(
            TableKey { relation: "public.items".into(), ..key.clone() },
            TableDelta { idx_scan: 1, ..TableDelta::default() },
        );
        a.merge(b);
        assert_eq!(a.tables[&key].seq_scan, 5);
        assert_eq!(a.tables[&key].size_bytes, Some(16384));
        assert_eq!(a.tables.len(), 2);
        assert!(!a.is_empty());
        assert!(DbStats::default().is_empty());
    }
}
