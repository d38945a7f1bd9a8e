//! Hot partitions and hot shards, from the per-relation statistics deltas.
//!
//! **Load** of a relation is its scans (sequential + index) plus its tuples
//! (read by sequential scans, inserted, updated, deleted): one unit per
//! access and per row touched, the measure `/api/v1/partitions` and the
//! `/metrics` skew ratio use too ([`crate::load`]). Index lookups count by
//! their scans (`idx_tup_fetch` is not in the deltas), sequential work and
//! writes by their rows. Shares of scans and of tuples are both reported.
//!
//! **Hot partition**: within one partition parent on one node, a partition
//! whose share of the load is ≥ k / n, n the partitions of that parent the
//! node reported (with n ≤ k, ≥ k × the others' mean: see
//! [`partition_threshold`]). Judged per node, so the same table evenly loaded on the
//! other nodes yields nothing there. n counts the partitions with load in
//! the window (the agent also sends those where only block reads moved): a
//! node where a single partition saw any load (n = 1) cannot be judged.
//!
//! **Hot shard**: one plain table (no parent) used on two nodes or more,
//! one node's load ≥ r × the mean of the others. "k / n_nodes" cannot serve
//! here: with 3 nodes and k = 3 it would need a share of 100%. A table
//! active on one node only is that node's table, not a shard (the same
//! schema deployed everywhere, used in one place), so it is not judged.
//! Partitions are never shards: they are the hot-partition detector's.

use super::{DetectorConfig, Draft, Finding, Kind, Severity, r3, share};
use crate::snapshot::{Snapshot, TableRow};
use querywatch_wire::dbstats::TableDelta;
use serde_json::{Map, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Scans of a relation: sequential + index.
pub fn scans(d: &TableDelta) -> u64 {
    d.seq_scan.saturating_add(d.idx_scan)
}

/// Tuples of a relation: read sequentially, inserted, updated, deleted.
pub fn tuples(d: &TableDelta) -> u64 {
    d.seq_tup_read.saturating_add(d.n_tup_ins).saturating_add(d.n_tup_upd).saturating_add(d.n_tup_del)
}

/// The load measure: scans + tuples.
pub fn load(d: &TableDelta) -> u64 {
    scans(d).saturating_add(tuples(d))
}

/// Partitions shown in a finding's evidence.
const TOP_PARTITIONS: usize = 5;

/// One relation's counters summed over the rows naming it.
#[derive(Default)]
struct Rel {
    scans: u64,
    tuples: u64,
}

impl Rel {
    fn load(&self) -> u64 {
        self.scans.saturating_add(self.tuples)
    }
}

type Key = (Arc<str>, Arc<str>, Arc<str>);

/// Rows grouped by `group` then relation, counters summed.
fn grouped<'a>(
    rows: impl Iterator<Item = &'a TableRow>,
    group: impl Fn(&TableRow) -> Key,
    member: impl Fn(&TableRow) -> Arc<str>,
) -> BTreeMap<Key, BTreeMap<Arc<str>, Rel>> {
    let mut out: BTreeMap<Key, BTreeMap<Arc<str>, Rel>> = BTreeMap::new();
    for t in rows {
        let r = out.entry(group(t)).or_default().entry(member(t)).or_default();
        r.scans = r.scans.saturating_add(scans(&t.delta));
        r.tuples = r.tuples.saturating_add(tuples(&t.delta));
    }
    out
}

/// The share of its parent's load that makes a partition hot among `n`:
/// `k / n` (≥ k × the mean partition). With `n ≤ k` that would take all the
/// load or more, so there the partition must carry ≥ k × the mean of the
/// *other* partitions instead: `k / (k + n − 1)` (0.75 of 2, 0.6 of 3 for
/// k = 3). Both stay above the even share 1/n for any k > 1.
pub fn partition_threshold(k: f64, n: usize) -> f64 {
    let n = n as f64;
    if k < n { k / n } else { k / (k + n - 1.0) }
}

pub(crate) fn hot_partitions(snap: &Snapshot, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let groups = grouped(
        snap.tables.iter().filter(|t| !t.parent.is_empty()),
        |t| (t.node.clone(), t.database.clone(), t.parent.clone()),
        |t| t.relation.clone(),
    );
    for ((node, database, parent), mut parts) in groups {
        // The agent also sends partitions whose other counters moved (block
        // reads of autovacuum or ANALYZE): n is the partitions with load,
        // or two busy partitions among four idle ones would both be "hot".
        parts.retain(|_, r| r.load() > 0);
        let n = parts.len();
        let (scans, tuples): (u64, u64) = parts.values().fold((0, 0), |(s, t), r| (s + r.scans, t + r.tuples));
        let total = scans.saturating_add(tuples);
        if n < 2 || total < cfg.hot_partition_min_volume {
            continue;
        }
        let threshold = partition_threshold(cfg.hot_partition_k, n);
        let mean = total as f64 / n as f64;
        let mut ranked: Vec<(&Arc<str>, &Rel)> = parts.iter().collect();
        ranked.sort_by(|a, b| b.1.load().cmp(&a.1.load()).then(a.0.cmp(b.0)));
        let skew = share(ranked[0].1.load() as f64, mean);
        let top: Vec<_> = ranked
            .iter()
            .take(TOP_PARTITIONS)
            .map(|(rel, r)| {
                json!({
                    "relation": rel.to_string(), "scans": r.scans, "tuples": r.tuples,
                    "load_share": r3(share(r.load() as f64, total as f64)),
                })
            })
            .collect();
        for (rel, r) in &ranked {
            let load_share = share(r.load() as f64, total as f64);
            if load_share < threshold {
                break; // ranked: no later partition reaches it either
            }
            let mut ev = Map::new();
            ev.insert("database".into(), json!(&*database));
            ev.insert("parent".into(), json!(&*parent));
            ev.insert("relation".into(), json!(rel.to_string()));
            ev.insert("load_share".into(), json!(r3(load_share)));
            ev.insert("scan_share".into(), json!(r3(share(r.scans as f64, scans as f64))));
            ev.insert("tuple_share".into(), json!(r3(share(r.tuples as f64, tuples as f64))));
            ev.insert("threshold_share".into(), json!(r3(threshold)));
            ev.insert("partitions".into(), json!(n));
            ev.insert("skew_ratio".into(), json!(r3(skew)));
            ev.insert("parent_scans".into(), json!(scans));
            ev.insert("parent_tuples".into(), json!(tuples));
            ev.insert("top_partitions".into(), json!(top));
            out.push(
                Draft {
                    kind: Kind::HotPartition,
                    severity: if load_share >= (2.0 * threshold).min(0.9) {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    subject: format!("partition:{node}/{database}/{rel}"),
                    node: node.to_string(),
                    key: String::new(),
                    summary: format!(
                        "{rel} takes {:.0}% of {parent}'s load on node {node} ({n} partitions, even share {:.0}%, \
                         skew {skew:.1}x)",
                        load_share * 100.0,
                        100.0 / n as f64,
                    ),
                    evidence: ev,
                    action: format!(
                        "Spread the hot key range of {parent} (a different partition key or finer partitions), or \
                         if {rel} is the current time partition this is expected; check node {node}'s callers."
                    ),
                }
                .build(snap),
            );
        }
    }
}

pub(crate) fn hot_shards(snap: &Snapshot, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let groups = grouped(
        snap.tables.iter().filter(|t| t.parent.is_empty()),
        |t| (t.database.clone(), t.relation.clone(), Arc::from("")),
        |t| t.node.clone(),
    );
    for ((database, relation, _), by_node) in groups {
        let loaded: Vec<(&Arc<str>, &Rel)> = by_node.iter().filter(|(_, r)| r.load() > 0).collect();
        let total: u64 = loaded.iter().map(|(_, r)| r.load()).sum();
        if loaded.len() < 2 || total < cfg.hot_shard_min_volume {
            continue;
        }
        let n = loaded.len();
        for (node, r) in &loaded {
            let others = (total - r.load()) as f64 / (n - 1) as f64;
            let ratio = share(r.load() as f64, others);
            if ratio < cfg.hot_shard_ratio {
                continue;
            }
            let load_share = share(r.load() as f64, total as f64);
            let mut nodes: Vec<_> = loaded
                .iter()
                .map(|(nd, x)| json!({"node": nd.to_string(), "scans": x.scans, "tuples": x.tuples, "load_share": r3(share(x.load() as f64, total as f64))}))
                .collect();
            nodes.sort_by(|a, b| {
                b["load_share"].as_f64().unwrap_or(0.0).total_cmp(&a["load_share"].as_f64().unwrap_or(0.0))
            });
            let mut ev = Map::new();
            ev.insert("database".into(), json!(&*database));
            ev.insert("relation".into(), json!(&*relation));
            ev.insert("load_share".into(), json!(r3(load_share)));
            ev.insert("vs_other_nodes_mean".into(), json!(r3(ratio)));
            ev.insert("nodes".into(), json!(nodes));
            out.push(
                Draft {
                    kind: Kind::HotShard,
                    severity: if ratio >= 2.0 * cfg.hot_shard_ratio { Severity::Critical } else { Severity::Warning },
                    subject: format!("shard:{node}/{database}/{relation}"),
                    node: node.to_string(),
                    key: String::new(),
                    summary: format!(
                        "{relation} on node {node} takes {:.0}% of its load across {n} nodes ({ratio:.1}x the others' mean)",
                        load_share * 100.0
                    ),
                    evidence: ev,
                    action: format!(
                        "Rebalance {relation}'s rows or traffic across nodes (shard key, routing), or find the hot \
                         keys on node {node}."
                    ),
                }
                .build(snap),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testkit::Snap;
    use super::*;
    use crate::findings::detect;
    use proptest::prelude::*;

    const P: &str = "public.events";

    fn parts(mut b: Snap, node: &str, loads: &[u64]) -> Snap {
        for (i, l) in loads.iter().enumerate() {
            b = b.table(node, &format!("public.events_p{i}"), P, *l, 0);
        }
        b
    }

    fn run(f: fn(&Snapshot, &DetectorConfig, &mut Vec<Finding>), s: &Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        f(s, &DetectorConfig::default(), &mut out);
        out
    }

    #[test]
    fn one_skewed_node_of_three_gives_exactly_one_finding() {
        // As in the end-to-end test: 8 partitions, 6000 lookups per node,
        // 90% of n2's on p3.
        let uniform = [750; 8];
        let mut skewed = [75; 8];
        skewed[3] = 5400 + 75;
        let mut b = Snap::new();
        b = parts(b, "n1", &uniform);
        b = parts(b, "n2", &skewed);
        b = parts(b, "n3", &uniform);
        let s = b.build();
        let out = run(hot_partitions, &s);
        assert_eq!(out.len(), 1, "{out:#?}");
        let f = &out[0];
        assert_eq!(f.kind, Kind::HotPartition);
        assert_eq!(f.subject, "partition:n2/db/public.events_p3");
        assert_eq!(f.node.as_deref(), Some("n2"));
        assert_eq!(f.evidence["load_share"], json!(0.913));
        assert_eq!(f.evidence["scan_share"], json!(0.913));
        assert_eq!(f.evidence["partitions"], json!(8));
        assert_eq!(f.evidence["skew_ratio"], json!(7.3));
        assert_eq!(f.evidence["top_partitions"][0]["relation"], json!("public.events_p3"));
        assert_eq!(f.severity, Severity::Critical);
        // And the whole detector set agrees: partitions are no shards.
        let all = detect(&s, &DetectorConfig::default());
        assert_eq!(all.iter().filter(|f| f.kind == Kind::HotPartition).count(), 1);
        assert!(all.iter().all(|f| f.kind != Kind::HotShard), "{all:#?}");
    }

    #[test]
    fn uniform_or_small_load_gives_nothing() {
        let b = parts(parts(Snap::new(), "n1", &[750; 8]), "n2", &[750; 8]);
        assert!(run(hot_partitions, &b.build()).is_empty());
        // Skewed, but 100 units in all: under the minimum volume.
        let s = parts(Snap::new(), "n1", &[93, 1, 1, 1, 1, 1, 1, 1]).build();
        assert!(run(hot_partitions, &s).is_empty());
        // Two partitions: 3:1 is the threshold (k × the other's load).
        let two = |a, b| parts(Snap::new(), "n1", &[a, b]).build();
        assert_eq!(run(hot_partitions, &two(3000, 1000)).len(), 1);
        assert!(run(hot_partitions, &two(2900, 1000)).is_empty());
        // Only one partition seen: nothing to compare with.
        let s = parts(Snap::new(), "n1", &[5000]).build();
        assert!(run(hot_partitions, &s).is_empty());
        // Two busy partitions at 50/50 beside four with no load (the agent
        // sends them when only their block reads moved): even, n = 2.
        let s = parts(Snap::new(), "n1", &[2000, 2000, 0, 0, 0, 0]).build();
        assert!(run(hot_partitions, &s).is_empty(), "{:?}", run(hot_partitions, &s));
        let s = parts(Snap::new(), "n1", &[6000, 2000, 0, 0, 0, 0]).build();
        assert_eq!(run(hot_partitions, &s).len(), 1, "3:1 of the two with load");
    }

    #[test]
    fn tuples_count_as_load_and_both_shares_are_reported() {
        // Scans even, but p0 takes the writes: 1000 + 4×10 scans, 9000 tuples.
        let mut b = Snap::new();
        for i in 0..4u64 {
            b = b.table("n1", &format!("public.events_p{i}"), P, 10, if i == 0 { 9000 } else { 0 });
        }
        let out = run(hot_partitions, &b.build());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["scan_share"], json!(0.25));
        assert_eq!(out[0].evidence["tuple_share"], json!(1.0));
    }

    #[test]
    fn hot_shard_known_answer() {
        let s = Snap::new()
            .table("n1", "public.orders", "", 9000, 0)
            .table("n2", "public.orders", "", 1000, 0)
            .table("n3", "public.orders", "", 1000, 0)
            .build();
        let out = run(hot_shards, &s);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].subject, "shard:n1/db/public.orders");
        assert_eq!(out[0].node.as_deref(), Some("n1"));
        assert_eq!(out[0].evidence["vs_other_nodes_mean"], json!(9.0));
        // Two nodes: 3:1 is the threshold.
        let two =
            |a, b| Snap::new().table("n1", "public.orders", "", a, 0).table("n2", "public.orders", "", b, 0).build();
        assert_eq!(run(hot_shards, &two(3000, 1000)).len(), 1);
        assert!(run(hot_shards, &two(2900, 1000)).is_empty());
    }

    #[test]
    fn hot_shard_nothing_for_even_load_one_node_or_partitions() {
        let even = Snap::new()
            .table("n1", "public.orders", "", 1000, 0)
            .table("n2", "public.orders", "", 1200, 0)
            .table("n3", "public.orders", "", 900, 0)
            .build();
        assert!(run(hot_shards, &even).is_empty());
        // Used on one node only: that node's table, not a shard.
        let alone = Snap::new().table("n1", "public.big", "", 60, 18_000_000).build();
        assert!(run(hot_shards, &alone).is_empty());
        // Skewed across nodes, but a partition: not a shard.
        let part =
            Snap::new().table("n1", "public.events_p0", P, 9000, 0).table("n2", "public.events_p0", P, 100, 0).build();
        assert!(run(hot_shards, &part).is_empty());
    }

    #[test]
    fn thresholds_are_k_over_n_and_reachable_for_few_partitions() {
        assert!((partition_threshold(3.0, 8) - 0.375).abs() < 1e-12);
        assert!((partition_threshold(3.0, 4) - 0.75).abs() < 1e-12);
        assert!((partition_threshold(3.0, 3) - 0.6).abs() < 1e-12);
        assert!((partition_threshold(3.0, 2) - 0.75).abs() < 1e-12);
        for n in 2..100 {
            let t = partition_threshold(3.0, n);
            assert!(t < 1.0 && t > 1.0 / n as f64, "{n}: {t}");
        }
    }

    proptest! {
        /// Uniform load never makes a hot partition, whatever the number
        /// of partitions and nodes.
        #[test]
        fn uniform_partitions_never_fire(n in 2usize..64, nodes in 1usize..5, per in 0u64..100_000, tuples in 0u64..1000) {
            let mut b = Snap::new();
            for node in 0..nodes {
                for i in 0..n {
                    b = b.table(&format!("n{node}"), &format!("public.events_p{i}"), P, per, tuples);
                }
            }
            let mut out = Vec::new();
            hot_partitions(&b.build(), &DetectorConfig::default(), &mut out);
            prop_assert!(out.is_empty());
        }

        /// Even (within 2x) load of one table across nodes is no hot shard.
        #[test]
        fn even_shards_never_fire(loads in prop::collection::vec(1000u64..2000, 2..12)) {
            let mut b = Snap::new();
            for (i, l) in loads.iter().enumerate() {
                b = b.table(&format!("n{i}"), "public.orders", "", *l, 0);
            }
            let mut out = Vec::new();
            hot_shards(&b.build(), &DetectorConfig::default(), &mut out);
            prop_assert!(out.is_empty());
        }

        /// One partition with more than k/n of the load, above the minimum
        /// volume, always fires, on that node only.
        #[test]
        fn a_partition_over_k_over_n_fires(n in 4usize..32, base in 100u64..1000, hot_factor in 4u64..50) {
            let mut b = Snap::new();
            for node in ["a", "b"] {
                for i in 0..n {
                    let l = if node == "b" && i == 1 { base * hot_factor * n as u64 } else { base };
                    b = b.table(node, &format!("public.events_p{i}"), P, l, 0);
                }
            }
            let mut out = Vec::new();
            hot_partitions(&b.build(), &DetectorConfig::default(), &mut out);
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(out[0].node.as_deref(), Some("b"));
        }
    }
}
