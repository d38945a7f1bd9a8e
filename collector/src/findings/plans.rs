//! Plan problems, from the slowest auto_explain plan kept per fingerprint
//! (cluster-wide): seq scans that filter most rows away (an index
//! candidate, named by relation and filter columns), sorts and hashes that
//! spilled to disk, nested loops over a large outer side.
//!
//! One finding per (kind, fingerprint): the subject is the statement, so
//! the index candidate sits next to the top-consumer finding of the same
//! statement. When a plan has several problems of one kind, the worst is
//! named and the others are listed in the evidence.

use super::{DetectorConfig, Draft, Finding, Kind, Severity, fp_subject, ms, short};
use crate::plan::{NestedLoop, SeqScan, Spill, analyze_plan};
use crate::snapshot::{FingerprintRow, Snapshot};
use crate::store::OVERFLOW_FINGERPRINT;
use serde_json::{Map, json};

/// The node whose row holds the plan (the merged row keeps the slowest).
fn plan_node(snap: &Snapshot, row: &FingerprintRow) -> Option<String> {
    let want = row.stats.slowest_plan.as_ref()?;
    snap.queries
        .iter()
        .filter(|q| q.fingerprint == row.fingerprint && !q.node.is_empty())
        .find(|q| q.stats.slowest_plan.as_ref().is_some_and(|p| p.duration == want.duration && p.plan == want.plan))
        .map(|q| q.node.to_string())
}

pub(crate) fn plan_problems(snap: &Snapshot, fps: &[FingerprintRow], cfg: &DetectorConfig, out: &mut Vec<Finding>) {
    // `<other>` merges the plans of statements past the caps: a plan there
    // belongs to no statement anyone can look up.
    for row in fps.iter().filter(|r| r.fingerprint != OVERFLOW_FINGERPRINT) {
        let Some(plan) = &row.stats.slowest_plan else { continue };
        // A plan that cannot be read is no finding (the API shows it raw).
        let Ok(p) = analyze_plan(&plan.plan) else { continue };
        let ctx = Ctx { snap, row, node: plan_node(snap, row), duration_ms: ms(plan.duration) };
        let scans: Vec<&SeqScan> = p.seq_scans.iter().filter(|s| filters_most_rows(s, cfg)).collect();
        seq_scan_finding(&ctx, &scans, out);
        spill_finding(&ctx, &p.spills, out);
        let loops: Vec<&NestedLoop> =
            p.nested_loops.iter().filter(|n| n.outer_rows.unwrap_or(0) >= cfg.nested_loop_min_outer_rows).collect();
        nested_loop_finding(&ctx, &loops, out);
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    row: &'a FingerprintRow,
    /// Where the plan was logged.
    node: Option<String>,
    duration_ms: f64,
}

impl Ctx<'_> {
    fn evidence(&self) -> Map<String, serde_json::Value> {
        let mut ev = Map::new();
        ev.insert("plan_duration_ms".into(), json!(self.duration_ms));
        if let Some(n) = &self.node {
            ev.insert("plan_node".into(), json!(n));
        }
        ev.insert("fingerprint".into(), json!(self.row.fingerprint.to_string()));
        ev.insert("query".into(), json!(&*self.row.text));
        ev
    }

    fn push(
        &self,
        kind: Kind,
        summary: String,
        ev: Map<String, serde_json::Value>,
        action: String,
        out: &mut Vec<Finding>,
    ) {
        out.push(
            Draft {
                kind,
                severity: Severity::Warning,
                subject: fp_subject(self.row.fingerprint),
                node: String::new(),
                key: String::new(),
                summary,
                evidence: ev,
                action,
            }
            .build(self.snap),
        );
    }
}

fn removed(s: &SeqScan) -> u64 {
    s.rows_removed_by_filter.unwrap_or(0)
}

fn filters_most_rows(s: &SeqScan, cfg: &DetectorConfig) -> bool {
    let (removed, kept) = (removed(s), s.actual_rows.unwrap_or(0));
    let scanned = removed.saturating_add(kept);
    removed >= cfg.seq_scan_min_rows_removed
        && scanned > 0
        && removed as f64 / scanned as f64 >= cfg.seq_scan_min_removed_fraction
}

/// The index to try: on the columns a plain index serves the filter with,
/// equality ones first (`crate::plan::index_columns`), as SQL that runs.
fn index_candidate(s: &SeqScan) -> String {
    if s.index_columns.is_empty() {
        format!("Add an index matching the filter on {}.", s.relation)
    } else {
        let columns: Vec<String> = s.index_columns.iter().map(|c| quote_ident(c)).collect();
        let relation: Vec<String> = s.relation.split('.').map(quote_ident).collect();
        format!("CREATE INDEX ON {} ({});", relation.join("."), columns.join(", "))
    }
}

/// `name` as PostgreSQL reads it back: as it is when lower case and no
/// keyword, else double-quoted (`"CustomerId"`, `"order"`).
fn quote_ident(name: &str) -> String {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    let plain = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !RESERVED.contains(&name);
    if plain { name.to_owned() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

fn seq_scan_finding(ctx: &Ctx<'_>, scans: &[&SeqScan], out: &mut Vec<Finding>) {
    let Some(worst) = scans.iter().copied().max_by_key(|s| (removed(s), std::cmp::Reverse(s.relation.clone()))) else {
        return;
    };
    let (removed, kept) = (removed(worst), worst.actual_rows.unwrap_or(0));
    let scanned = removed.saturating_add(kept);
    let cols = worst.filter_columns.join(", ");
    let mut ev = ctx.evidence();
    ev.insert("relation".into(), json!(worst.relation));
    ev.insert("filter".into(), json!(worst.filter));
    ev.insert("filter_columns".into(), json!(worst.filter_columns));
    ev.insert("rows_removed_by_filter".into(), json!(removed));
    ev.insert("rows_returned".into(), json!(kept));
    let mut candidates: Vec<String> = vec![index_candidate(worst)];
    if scans.len() > 1 {
        let others: Vec<_> = scans
            .iter()
            .filter(|s| !std::ptr::eq(**s, worst))
            .map(|s| {
                candidates.push(index_candidate(s));
                json!({"relation": s.relation, "filter_columns": s.filter_columns, "rows_removed_by_filter": self::removed(s)})
            })
            .collect();
        ev.insert("other_scans".into(), json!(others));
    }
    let action = if worst.index_columns.is_empty() && candidates.len() == 1 {
        candidates.remove(0)
    } else {
        format!("Index candidate: {}", candidates.join(" "))
    };
    ctx.push(
        Kind::SeqScanFilter,
        format!(
            "Seq scan on {} discards {removed} of {scanned} rows ({:.1}%) by filter on {}",
            worst.relation,
            removed as f64 * 100.0 / scanned as f64,
            if cols.is_empty() { "?" } else { &cols }
        ),
        ev,
        action,
        out,
    );
}

fn spill_finding(ctx: &Ctx<'_>, spills: &[Spill], out: &mut Vec<Finding>) {
    let Some(worst) = spills.iter().max_by_key(|s| s.disk_kb.unwrap_or(0)) else { return };
    let mut ev = ctx.evidence();
    ev.insert("node".into(), json!(worst.node));
    ev.insert("what".into(), json!(worst.what));
    ev.insert("disk_kb".into(), json!(worst.disk_kb));
    if spills.len() > 1 {
        ev.insert("spills".into(), json!(spills));
    }
    ctx.push(
        Kind::PlanSpill,
        format!("{} spilled to disk ({}): {}", worst.node, worst.what, short(&ctx.row.text)),
        ev,
        "Raise work_mem for this statement (SET LOCAL work_mem) or reduce the rows it sorts/hashes.".into(),
        out,
    );
}

fn nested_loop_finding(ctx: &Ctx<'_>, loops: &[&NestedLoop], out: &mut Vec<Finding>) {
    let Some(worst) = loops.iter().max_by_key(|n| n.outer_rows.unwrap_or(0)) else { return };
    let outer = worst.outer_rows.unwrap_or(0);
    let mut ev = ctx.evidence();
    ev.insert("outer_rows".into(), json!(outer));
    ev.insert("inner_loops".into(), json!(worst.inner_loops));
    ev.insert("outer".into(), json!(worst.outer));
    ev.insert("inner".into(), json!(worst.inner));
    ctx.push(
        Kind::NestedLoop,
        format!("Nested loop over {outer} outer rows: {}", short(&ctx.row.text)),
        ev,
        "Check the join's row estimates (ANALYZE the tables) and index the inner join key.".into(),
        out,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testkit::{Snap, fp_of};
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../../tests/fixtures/plans/", $name))
        };
    }

    fn run(s: &Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        plan_problems(s, &s.by_fingerprint(), &DetectorConfig::default(), &mut out);
        out
    }

    const Q: &str = "SELECT * FROM orders o WHERE note = $1 AND customer_id = $2";

    #[test]
    fn seq_scan_names_the_index_candidate_under_the_statement() {
        for plan in [fixture!("seqscan_filter.txt"), fixture!("seqscan_filter.json")] {
            let s = Snap::new().query("n1", Q, 3, 40).plan("n1", Q, 40, plan).build();
            let out = run(&s);
            assert_eq!(out.len(), 1, "{out:#?}");
            let f = &out[0];
            assert_eq!(f.kind, Kind::SeqScanFilter);
            assert_eq!(f.subject, format!("fingerprint:{}", fp_of(Q)));
            assert_eq!(f.evidence["relation"], json!("public.orders"));
            assert_eq!(f.evidence["filter_columns"], json!(["note", "customer_id"]));
            assert_eq!(f.evidence["rows_removed_by_filter"], json!(99990));
            assert_eq!(f.evidence["plan_node"], json!("n1"));
            // `note <> $1` is no index condition: the candidate is customer_id.
            assert_eq!(f.action, "Index candidate: CREATE INDEX ON public.orders (customer_id);");
        }
    }

    #[test]
    fn the_candidate_is_sql_that_runs() {
        assert_eq!(quote_ident("customer_id"), "customer_id");
        assert_eq!(quote_ident("CustomerId"), "\"CustomerId\"");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("my \"odd\" col"), "\"my \"\"odd\"\" col\"");
        assert_eq!(quote_ident("1st"), "\"1st\"");
    }

    #[test]
    fn no_plan_finding_for_the_overflow_row() {
        let other = querywatch_wire::names::OVERFLOW_TEXT;
        let s = Snap::new().plan("n1", other, 40, fixture!("seqscan_filter.txt")).build();
        assert!(run(&s).is_empty(), "{:#?}", run(&s));
    }

    #[test]
    fn spill_and_nested_loop_known_answers() {
        let s = Snap::new().plan("n1", "SELECT a FROM t ORDER BY b", 40, fixture!("sort_spill.txt")).build();
        let out = run(&s);
        assert_eq!(out.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![Kind::PlanSpill]);
        assert_eq!(out[0].evidence["disk_kb"], json!(8288));
        let s = Snap::new().plan("n1", "SELECT a FROM o JOIN c USING (id)", 40, fixture!("nested_loop.txt")).build();
        let out = run(&s);
        let nl: Vec<_> = out.iter().filter(|f| f.kind == Kind::NestedLoop).collect();
        assert_eq!(nl.len(), 1, "{out:#?}");
        assert_eq!(nl[0].evidence["outer_rows"], json!(52800));
    }

    #[test]
    fn nothing_in_good_plans_or_without_plans() {
        let s = Snap::new().plan("n1", "SELECT a FROM t WHERE id = $1", 1, fixture!("index_scan.txt")).build();
        assert!(run(&s).is_empty());
        let s = Snap::new().query("n1", "SELECT 1", 10, 1).plan("n1", "SELECT 2", 1, "not a plan").build();
        assert!(run(&s).is_empty());
        // The partitioned scans remove under 10,000 rows each but q4's.
        let s = Snap::new().plan("n1", "SELECT * FROM events", 1, fixture!("partitioned.txt")).build();
        let seq: Vec<_> = run(&s).into_iter().filter(|f| f.kind == Kind::SeqScanFilter).collect();
        assert_eq!(seq.len(), 1);
        assert_eq!(seq[0].evidence["relation"], json!("public.events_q4"));
        assert!(seq[0].evidence.get("other_scans").is_none());
    }
}
