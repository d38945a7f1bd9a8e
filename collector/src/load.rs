//! Where the load is: shares per partition within its parent (per node)
//! and per node within the cluster, computed from a snapshot. The API's
//! `/api/v1/partitions` and `/api/v1/nodes` and the `/metrics` gauges show
//! these numbers; the hot-partition and hot-node detectors judge them.

use crate::snapshot::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One partition's load within its parent on one node.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionLoad {
    pub relation: Arc<str>,
    /// Scans (sequential + index).
    pub scans: u64,
    /// Tuples read by sequential scans plus inserted, updated and deleted.
    pub tuples: u64,
    /// Share of the parent's scans on this node (0..1).
    pub scan_share: f64,
    /// Share of the parent's tuples on this node (0..1).
    pub tuple_share: f64,
    pub size_bytes: Option<u64>,
}

/// One partitioned table on one node.
#[derive(Clone, Debug, Serialize)]
pub struct ParentLoad {
    pub node: Arc<str>,
    pub database: Arc<str>,
    pub parent: Arc<str>,
    pub scans: u64,
    pub tuples: u64,
    /// Busiest partition's load over the mean partition's (scans + tuples); 1 = even.
    pub skew_ratio: f64,
    /// Partitions, busiest first.
    pub partitions: Vec<PartitionLoad>,
}

fn share(part: u64, whole: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // ratios of counters: precision loss is irrelevant
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// (node, database, parent).
type ParentKey = (Arc<str>, Arc<str>, Arc<str>);

/// Load of every partitioned table, per node, busiest skew first.
pub fn partitions(s: &Snapshot) -> Vec<ParentLoad> {
    let mut groups: BTreeMap<ParentKey, Vec<PartitionLoad>> = BTreeMap::new();
    for t in s.tables.iter().filter(|t| !t.parent.is_empty()) {
        let d = &t.delta;
        groups.entry((t.node.clone(), t.database.clone(), t.parent.clone())).or_default().push(PartitionLoad {
            relation: t.relation.clone(),
            scans: d.seq_scan.saturating_add(d.idx_scan),
            tuples: d.seq_tup_read.saturating_add(d.n_tup_ins).saturating_add(d.n_tup_upd).saturating_add(d.n_tup_del),
            scan_share: 0.0,
            tuple_share: 0.0,
            size_bytes: d.size_bytes,
        });
    }
    let mut out: Vec<ParentLoad> = groups
        .into_iter()
        .map(|((node, database, parent), mut parts)| {
            let scans: u64 = parts.iter().map(|p| p.scans).sum();
            let tuples: u64 = parts.iter().map(|p| p.tuples).sum();
            for p in &mut parts {
                p.scan_share = share(p.scans, scans);
                p.tuple_share = share(p.tuples, tuples);
            }
            parts.sort_by(|a, b| {
                b.scans
                    .saturating_add(b.tuples)
                    .cmp(&a.scans.saturating_add(a.tuples))
                    .then(a.relation.cmp(&b.relation))
            });
            let max = parts.first().map_or(0, |p| p.scans + p.tuples);
            // Over the partitions with load, as the hot-partition detector
            // counts them (the others only had their block reads move).
            let loaded = parts.iter().filter(|p| p.scans + p.tuples > 0).count();
            #[allow(clippy::cast_precision_loss)]
            let mean = (scans + tuples) as f64 / loaded.max(1) as f64;
            #[allow(clippy::cast_precision_loss)]
            let skew_ratio = if mean > 0.0 { max as f64 / mean } else { 0.0 };
            ParentLoad { node, database, parent, scans, tuples, skew_ratio, partitions: parts }
        })
        .collect();
    out.sort_by(|a, b| b.skew_ratio.total_cmp(&a.skew_ratio).then(a.node.cmp(&b.node)));
    out
}

/// One node's share of the cluster's database time.
#[derive(Clone, Debug, Serialize)]
pub struct NodeLoad {
    pub node: Arc<str>,
    pub db_time_seconds: f64,
    pub calls: u64,
    /// Share of the cluster's database time (0..1).
    pub share: f64,
    /// Database time over the median node's (1 = typical).
    pub vs_median: f64,
}

/// Database time per node, busiest first.
pub fn nodes(s: &Snapshot) -> Vec<NodeLoad> {
    let mut calls: BTreeMap<Arc<str>, u64> = BTreeMap::new();
    for q in &s.queries {
        *calls.entry(q.node.clone()).or_default() += q.stats.exec_calls();
    }
    let times = s.db_time_by_node();
    let total: f64 = times.values().map(|d| d.as_secs_f64()).sum();
    let mut sorted: Vec<f64> = times.values().map(|d| d.as_secs_f64()).collect();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    let mut out: Vec<NodeLoad> = times
        .into_iter()
        .map(|(node, t)| {
            let secs = t.as_secs_f64();
            NodeLoad {
                calls: calls.get(&node).copied().unwrap_or(0),
                node,
                db_time_seconds: secs,
                share: if total > 0.0 { secs / total } else { 0.0 },
                vs_median: if median > 0.0 { secs / median } else { 0.0 },
            }
        })
        .collect();
    out.sort_by(|a, b| b.db_time_seconds.total_cmp(&a.db_time_seconds).then(a.node.cmp(&b.node)));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::snapshot::TableRow;
    use querywatch_wire::dbstats::TableDelta;

    fn table(node: &str, rel: &str, scans: u64) -> TableRow {
        TableRow {
            node: node.into(),
            database: "db".into(),
            relation: rel.into(),
            parent: "public.events".into(),
            delta: TableDelta { idx_scan: scans, ..TableDelta::default() },
        }
    }

    #[test]
    fn shares_and_skew_per_node() {
        let mut s = Snapshot::default();
        for (node, loads) in [("a", [10, 10, 10, 10]), ("b", [70, 10, 10, 10])] {
            for (i, l) in loads.iter().enumerate() {
                s.tables.push(table(node, &format!("public.events_p{i}"), *l));
            }
        }
        let p = partitions(&s);
        assert_eq!(p.len(), 2);
        assert_eq!(&*p[0].node, "b");
        assert!((p[0].skew_ratio - 2.8).abs() < 1e-9);
        assert_eq!(&*p[0].partitions[0].relation, "public.events_p0");
        assert!((p[0].partitions[0].scan_share - 0.7).abs() < 1e-9);
        assert!((p[1].skew_ratio - 1.0).abs() < 1e-9);
        assert!(nodes(&s).is_empty());
    }
}
