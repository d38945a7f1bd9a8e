//! The poller's messages as the wire's plain data
//! ([`querywatch_wire::dbstats`]): what an interval's batch carries to the
//! collector. Deltas of the same key (a deferred batch merged into a later
//! one, two messages in one export interval) add up.

use super::{ActivityAggregate, StatementBatch, StatsMessage, TableBatch};
use querywatch_wire::dbstats::{ActivityKey, DbStats, PgssDelta, PgssKey, TableDelta, TableKey};

impl StatsMessage {
    /// Adds this message's deltas (or counts) into `db`.
    pub fn add_to(&self, db: &mut DbStats) {
        match self {
            StatsMessage::Statements(b) => b.add_to(db),
            StatsMessage::Tables(b) => b.add_to(db),
            StatsMessage::Activity(a) => a.add_to(db),
        }
    }
}

impl StatementBatch {
    pub fn add_to(&self, db: &mut DbStats) {
        for d in &self.deltas {
            let key = PgssKey {
                database: d.datname.to_string(),
                user: d.rolname.to_string(),
                queryid: d.key.queryid,
                toplevel: d.key.toplevel,
                text: d.query.to_string(),
            };
            let c = &d.counters;
            let delta = PgssDelta {
                calls: c.calls,
                exec_time: c.total_exec_time,
                plan_time: c.total_plan_time,
                rows: c.rows,
                shared_blks_hit: c.shared_blks_hit,
                shared_blks_read: c.shared_blks_read,
                temp_blks_written: c.temp_blks_written,
            };
            db.statements.entry(key).or_default().merge(&delta);
        }
    }
}

impl TableBatch {
    pub fn add_to(&self, db: &mut DbStats) {
        for d in &self.deltas {
            let key = TableKey {
                database: d.datname.to_string(),
                relation: d.name.to_string(),
                parent: d.partition_parent.as_ref().map(ToString::to_string).unwrap_or_default(),
            };
            let c = &d.counters;
            let delta = TableDelta {
                seq_scan: c.seq_scan,
                seq_tup_read: c.seq_tup_read,
                idx_scan: c.idx_scan,
                n_tup_ins: c.n_tup_ins,
                n_tup_upd: c.n_tup_upd,
                n_tup_del: c.n_tup_del,
                heap_blks_read: c.heap_blks_read,
                heap_blks_hit: c.heap_blks_hit,
                size_bytes: d.size_bytes,
            };
            db.tables.entry(key).or_default().merge(&delta);
        }
    }
}

impl ActivityAggregate {
    pub fn add_to(&self, db: &mut DbStats) {
        let text = |s: &Option<std::sync::Arc<str>>| s.as_deref().unwrap_or_default().to_owned();
        for (k, n) in &self.counts {
            let key = ActivityKey {
                database: text(&k.datname),
                wait_event_type: text(&k.wait_event_type),
                wait_event: text(&k.wait_event),
                state: k.state.to_string(),
                text: k.query.to_string(),
            };
            let c = db.activity.entry(key).or_default();
            *c = c.saturating_add(*n);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::activity::ActivityKey as AgentActivityKey;
    use super::super::counters::DeltaOrigin;
    use super::super::statements::{StatementCounters, StatementDelta, StatementKey};
    use super::super::tables::{RelName, TableCounters, TableDelta as AgentTableDelta};
    use super::*;
    use std::time::{Duration, SystemTime};

    fn rel(s: &str, r: &str) -> RelName {
        RelName { schemaname: s.into(), relname: r.into() }
    }

    #[test]
    fn messages_become_wire_deltas_and_add_up() {
        let t = SystemTime::UNIX_EPOCH;
        let delta = StatementDelta {
            key: StatementKey { userid: 10, dbid: 5, queryid: -9, toplevel: false },
            datname: "shop".into(),
            rolname: "app".into(),
            query: "SELECT $1".into(),
            origin: DeltaOrigin::Increment,
            counters: StatementCounters {
                calls: 37,
                total_exec_time: Duration::from_millis(5),
                rows: 37,
                ..StatementCounters::default()
            },
        };
        let stmts = StatsMessage::Statements(StatementBatch { since: t, until: t, deltas: vec![delta.clone(), delta] });
        let tables = StatsMessage::Tables(TableBatch {
            datname: "shop".into(),
            since: t,
            until: t,
            deltas: vec![AgentTableDelta {
                datname: "shop".into(),
                relid: 1,
                name: rel("public", "orders_1"),
                partition_parent: Some(rel("public", "orders")),
                partition_root: Some(rel("public", "orders")),
                size_bytes: Some(8192),
                origin: DeltaOrigin::Increment,
                counters: TableCounters { seq_scan: 3, ..TableCounters::default() },
            }],
        });
        let activity = StatsMessage::Activity(ActivityAggregate {
            since: t,
            until: t,
            samples: 10,
            counts: vec![(
                AgentActivityKey {
                    datname: None,
                    state: "active".into(),
                    wait_event_type: Some("Lock".into()),
                    wait_event: None,
                    query: "SELECT $1".into(),
                },
                4,
            )],
        });
        let mut db = DbStats::default();
        for m in [&stmts, &tables, &activity] {
            m.add_to(&mut db);
        }
        let (k, d) = db.statements.iter().next().unwrap();
        assert_eq!((k.queryid, k.toplevel, k.database.as_str(), k.user.as_str()), (-9, false, "shop", "app"));
        assert_eq!((d.calls, d.rows, d.exec_time), (74, 74, Duration::from_millis(10)));
        let (k, d) = db.tables.iter().next().unwrap();
        assert_eq!((k.relation.as_str(), k.parent.as_str()), ("public.orders_1", "public.orders"));
        assert_eq!((d.seq_scan, d.size_bytes), (3, Some(8192)));
        let (k, n) = db.activity.iter().next().unwrap();
        assert_eq!((k.database.as_str(), k.wait_event_type.as_str(), k.wait_event.as_str(), *n), ("", "Lock", "", 4));
    }
}
