//! A small builder of [`Snapshot`]s for detector tests: rows by node and
//! text, durations of a fixed size, tables by load.

use crate::fingerprint::{Fingerprint, Method};
use crate::snapshot::{NodeRow, QueryRow, RowStats, Snapshot, TableRow};
use querywatch_wire::dbstats::{PgssDelta, TableDelta};
use querywatch_wire::observations::{LockKey, LockStats};
use querywatch_wire::stats::{PlanSample, StatementStats};
use std::time::Duration;

/// A test fingerprint of `text`: FNV-1a (pg_query is not needed to tell
/// test statements apart), never the overflow fingerprint 0 but for the
/// overflow text `<other>`, as the store does.
pub fn fp_of(text: &str) -> Fingerprint {
    if text == querywatch_wire::names::OVERFLOW_TEXT {
        return crate::store::OVERFLOW_FINGERPRINT;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Fingerprint(h.max(1))
}

/// Builds a snapshot of 5 minutes, `[0, 300 000)` ms, database `db`.
pub struct Snap {
    s: Snapshot,
}

impl Snap {
    pub fn new() -> Snap {
        Snap { s: Snapshot { from: 0, to: 300_000, ..Snapshot::default() } }
    }

    pub fn range(mut self, from: i64, to: i64) -> Snap {
        self.s.from = from;
        self.s.to = to;
        self
    }

    fn node(&mut self, node: &str) {
        if !self.s.nodes.iter().any(|n| &*n.node == node) {
            self.s.nodes.push(NodeRow {
                node: node.into(),
                resource: Default::default(),
                last_seen: self.s.to,
                rest: Default::default(),
            });
        }
    }

    /// The row of (text, node), created empty.
    fn row(&mut self, node: &str, text: &str) -> &mut RowStats {
        self.node(node);
        let fp = fp_of(text);
        let i = match self.s.queries.iter().position(|q| q.fingerprint == fp && &*q.node == node) {
            Some(i) => i,
            None => {
                self.s.queries.push(QueryRow {
                    fingerprint: fp,
                    database: "db".into(),
                    node: node.into(),
                    text: text.into(),
                    method: Method::Parsed,
                    stats: RowStats::default(),
                });
                self.s.queries.len() - 1
            }
        };
        &mut self.s.queries[i].stats
    }

    fn add(mut self, node: &str, text: &str, f: impl FnOnce(&mut StatementStats)) -> Snap {
        let mut st = StatementStats::default();
        f(&mut st);
        self.row(node, text).merge(&RowStats::from_statement(st));
        self
    }

    /// `calls` logged executions of `ms` each.
    pub fn query(self, node: &str, text: &str, calls: u64, ms: u64) -> Snap {
        self.query_us(node, text, calls, ms * 1000)
    }

    /// `calls` logged executions of `us` microseconds each.
    pub fn query_us(self, node: &str, text: &str, calls: u64, us: u64) -> Snap {
        self.add(node, text, |st| {
            for _ in 0..calls {
                st.record_call(Duration::from_micros(us), None, text);
            }
        })
    }

    /// pg_stat_statements' view of the statement: `calls` taking `ms` in all.
    pub fn pgss(mut self, node: &str, text: &str, calls: u64, ms: u64) -> Snap {
        let d = PgssDelta { calls, exec_time: Duration::from_millis(ms), ..PgssDelta::default() };
        self.row(node, text).pgss.merge(&d);
        self
    }

    pub fn errors(self, node: &str, text: &str, sqlstate: &str, n: u64) -> Snap {
        self.add(node, text, |st| {
            for _ in 0..n {
                st.record_error(sqlstate, "duplicate key value violates unique constraint \"t_pkey\"", None);
            }
        })
    }

    pub fn temp(self, node: &str, text: &str, bytes: u64) -> Snap {
        self.add(node, text, |st| st.record_temp_file(bytes, None))
    }

    pub fn plan(self, node: &str, text: &str, ms: u64, plan: &str) -> Snap {
        self.add(node, text, |st| {
            st.record_plan(PlanSample {
                duration: Duration::from_millis(ms),
                timestamp: None,
                format: "text",
                plan: plan.into(),
            })
        })
    }

    /// A relation's load on a node: `scans` index scans and `tuples`
    /// inserted tuples.
    pub fn table(mut self, node: &str, relation: &str, parent: &str, scans: u64, tuples: u64) -> Snap {
        self.node(node);
        self.s.tables.push(TableRow {
            node: node.into(),
            database: "db".into(),
            relation: relation.into(),
            parent: parent.into(),
            delta: TableDelta { idx_scan: scans, n_tup_ins: tuples, ..TableDelta::default() },
        });
        self
    }

    pub fn lock(mut self, node: &str, key: LockKey, stats: LockStats) -> Snap {
        self.node(node);
        self.s.locks.push(crate::snapshot::LockRow { node: node.into(), key, stats });
        self
    }

    /// A node that sent data but ran no statement.
    pub fn idle_node(mut self, node: &str) -> Snap {
        self.node(node);
        self
    }

    pub fn build(self) -> Snapshot {
        self.s
    }
}
