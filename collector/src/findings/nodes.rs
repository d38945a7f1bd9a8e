//! Hot nodes and statements slow on one node: the node dimension.
//!
//! **Hot node**: a node's database time ≥ r × the median node's. With three
//! nodes or more the median is robust to the hot node itself; with two,
//! the median would be the mean of both (r = 3 could never be reached), so
//! the other node stands in for it. One node alone is never hot. Nodes
//! that reported but ran nothing count, with zero time.
//!
//! **Slow on one node**: a fingerprint whose mean time per execution on one
//! node is ≥ r × its median over the other nodes, each with enough
//! executions: the same statement, slower in one place — a missing index
//! or stale statistics there, a different plan, a busier host.

use super::statements::mean_time;
use super::{DetectorConfig, Draft, Finding, Kind, Severity, fp_subject, median, ms, r3, short};
use crate::snapshot::{QueryRow, Snapshot};
use crate::store::OVERFLOW_FINGERPRINT;
use serde_json::{Map, json};
use std::collections::BTreeMap;

pub(crate) fn hot_nodes(snap: &Snapshot, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let times: Vec<(String, f64)> = snap
        .db_time_by_node()
        .into_iter()
        .filter(|(n, _)| !n.is_empty())
        .map(|(n, t)| (n.to_string(), t.as_secs_f64()))
        .collect();
    if times.len() < 2 {
        return;
    }
    let total: f64 = times.iter().map(|t| t.1).sum();
    for (node, secs) in &times {
        if *secs < cfg.hot_node_min_time.as_secs_f64() {
            continue;
        }
        let mut reference: Vec<f64> = if times.len() == 2 {
            times.iter().filter(|(n, _)| n != node).map(|t| t.1).collect()
        } else {
            times.iter().map(|t| t.1).collect()
        };
        let med = median(&mut reference);
        // A zero median (most nodes idle) makes any busy node "infinitely"
        // hot: reported, with the ratio left out of the numbers.
        let ratio = if med > 0.0 { secs / med } else { f64::INFINITY };
        if ratio < cfg.hot_node_ratio {
            continue;
        }
        let mut ev = Map::new();
        ev.insert("db_time_ms".into(), json!(ms(std::time::Duration::from_secs_f64(*secs))));
        ev.insert("median_node_ms".into(), json!(ms(std::time::Duration::from_secs_f64(med))));
        ev.insert("vs_median".into(), if ratio.is_finite() { json!(r3(ratio)) } else { json!(null) });
        ev.insert("share".into(), json!(r3(secs / total)));
        ev.insert("nodes".into(), json!(times.len()));
        let vs = if ratio.is_finite() { format!("{ratio:.1}x the median node") } else { "the others idle".into() };
        out.push(
            Draft {
                kind: Kind::HotNode,
                severity: if ratio >= 2.0 * cfg.hot_node_ratio { Severity::Critical } else { Severity::Warning },
                subject: format!("node:{node}"),
                node: node.clone(),
                key: String::new(),
                summary: format!(
                    "node {node} spent {:.1} s of database time, {:.0}% of the cluster's ({vs})",
                    secs,
                    secs / total * 100.0
                ),
                evidence: ev,
                action: format!(
                    "See node {node}'s top statements (/api/v1/queries?node={node}): route load away, or fix what \
                     is slow there."
                ),
            }
            .build(snap),
        );
    }
}

pub(crate) fn slow_on_one_node(snap: &Snapshot, cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    let mut by_fp: BTreeMap<_, Vec<QueryRow>> = BTreeMap::new();
    for row in snap.by_fingerprint_and_node() {
        if row.fingerprint != OVERFLOW_FINGERPRINT
            && !row.node.is_empty()
            && row.stats.exec_calls() >= cfg.slow_node_min_calls
        {
            by_fp.entry(row.fingerprint).or_default().push(row);
        }
    }
    for (fp, mut rows) in by_fp {
        if rows.len() < 2 {
            continue;
        }
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        for row in &rows {
            let mean = mean_time(&row.stats);
            let mut others: Vec<f64> =
                rows.iter().filter(|r| r.node != row.node).map(|r| mean_time(&r.stats).as_secs_f64()).collect();
            let med = median(&mut others);
            if med <= 0.0 || mean.as_secs_f64() < med + cfg.slow_node_min_increase.as_secs_f64() {
                continue;
            }
            let ratio = mean.as_secs_f64() / med;
            if ratio < cfg.slow_node_ratio {
                continue;
            }
            let per_node: Map<String, serde_json::Value> = rows
                .iter()
                .map(|r| {
                    (r.node.to_string(), json!({"calls": r.stats.exec_calls(), "mean_ms": ms(mean_time(&r.stats))}))
                })
                .collect();
            let mut ev = Map::new();
            ev.insert("mean_ms".into(), json!(ms(mean)));
            ev.insert("others_median_ms".into(), json!(ms(std::time::Duration::from_secs_f64(med))));
            ev.insert("ratio".into(), json!(r3(ratio)));
            ev.insert("per_node".into(), serde_json::Value::Object(per_node));
            ev.insert("query".into(), json!(&*row.text));
            out.push(
                Draft {
                    kind: Kind::SlowNode,
                    severity: if ratio >= 2.0 * cfg.slow_node_ratio { Severity::Critical } else { Severity::Warning },
                    subject: fp_subject(fp),
                    node: row.node.to_string(),
                    key: String::new(),
                    summary: format!(
                        "{ratio:.1}x slower on node {} ({:.2} ms vs {:.2} ms elsewhere): {}",
                        row.node,
                        ms(mean),
                        med * 1000.0,
                        short(&row.text)
                    ),
                    evidence: ev,
                    action: format!(
                        "Compare its plan on node {} with the others' (indexes, ANALYZE, settings), and that node's \
                         load.",
                        row.node
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
    use super::super::testkit::{Snap, fp_of};
    use super::*;

    fn run(f: fn(&Snapshot, &DetectorConfig, &mut Vec<Finding>), s: &Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        f(s, &DetectorConfig::default(), &mut out);
        out
    }

    #[test]
    fn hot_node_known_answer() {
        // 40 s on n1, 10 s on n2 and n3, 12 s on n4: median 11 s.
        let s = Snap::new()
            .query("n1", "SELECT a FROM t", 400, 100)
            .query("n2", "SELECT a FROM t", 100, 100)
            .query("n3", "SELECT a FROM t", 100, 100)
            .query("n4", "SELECT a FROM t", 120, 100)
            .build();
        let out = run(hot_nodes, &s);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].subject, "node:n1");
        assert_eq!(out[0].node.as_deref(), Some("n1"));
        assert_eq!(out[0].evidence["vs_median"], json!(3.636));
    }

    #[test]
    fn hot_node_with_two_nodes_compares_with_the_other() {
        let two =
            |a, b| Snap::new().query("n1", "SELECT a FROM t", a, 100).query("n2", "SELECT a FROM t", b, 100).build();
        let out = run(hot_nodes, &two(300, 100));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["vs_median"], json!(3.0));
        assert!(run(hot_nodes, &two(290, 100)).is_empty());
    }

    #[test]
    fn hot_node_nothing_for_even_small_or_single_nodes() {
        let even = Snap::new()
            .query("n1", "SELECT a FROM t", 100, 100)
            .query("n2", "SELECT a FROM t", 120, 100)
            .query("n3", "SELECT a FROM t", 90, 100)
            .build();
        assert!(run(hot_nodes, &even).is_empty());
        // All on n1, but 1 s: under the minimum.
        let small = Snap::new().query("n1", "SELECT a FROM t", 10, 100).idle_node("n2").idle_node("n3").build();
        assert!(run(hot_nodes, &small).is_empty());
        let one = Snap::new().query("n1", "SELECT a FROM t", 1000, 100).build();
        assert!(run(hot_nodes, &one).is_empty());
        // Above the minimum with the others idle: hot, without a ratio.
        let idle = Snap::new().query("n1", "SELECT a FROM t", 100, 100).idle_node("n2").idle_node("n3").build();
        let out = run(hot_nodes, &idle);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["vs_median"], json!(null));
    }

    #[test]
    fn slow_on_one_node_known_answer_and_nothing() {
        let q = "SELECT a FROM t WHERE b = $1";
        let s = Snap::new()
            .query("n1", q, 50, 2)
            .query("n2", q, 50, 40)
            .query("n3", q, 50, 3)
            .query("n3", "SELECT 1", 500, 1)
            .build();
        let out = run(slow_on_one_node, &s);
        assert_eq!(out.len(), 1, "{out:#?}");
        assert_eq!(out[0].subject, format!("fingerprint:{}", fp_of(q)));
        assert_eq!(out[0].node.as_deref(), Some("n2"));
        assert_eq!(out[0].evidence["ratio"], json!(16.0));
        // Even across nodes, too few calls on the slow node, or one node: nothing.
        let even = Snap::new().query("n1", q, 50, 2).query("n2", q, 50, 3).query("n3", q, 50, 2).build();
        assert!(run(slow_on_one_node, &even).is_empty());
        let few = Snap::new().query("n1", q, 50, 2).query("n2", q, 5, 40).build();
        assert!(run(slow_on_one_node, &few).is_empty());
        let one = Snap::new().query("n1", q, 50, 2).build();
        assert!(run(slow_on_one_node, &one).is_empty());
        // Fast statements: 10x, but 0.05 ms vs 0.5 ms is under the minimum increase.
        let fast = Snap::new().query_us("n1", q, 50, 50).query_us("n2", q, 50, 500).build();
        assert!(run(slow_on_one_node, &fast).is_empty());
    }
}
