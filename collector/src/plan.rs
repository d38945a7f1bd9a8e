//! Reads a (masked) PostgreSQL plan, text or JSON, and extracts what the plan
//! detectors need: sequential scans with their filters, sorts and hashes that
//! spilled to disk, nested loops with a large outer side, and the total time.
//!
//! Both formats are read into one small node tree (a flat arena, so neither
//! building, walking nor dropping it recurses over input-controlled depth), and
//! one walk over that tree extracts the insights. The text reader follows the
//! layout of PostgreSQL's `explain.c`: a node header per line (`->  ` for
//! children), its detail lines right below it and before its children,
//! `InitPlan` / `SubPlan` / `CTE` labels above sub-plans.
//!
//! # Units
//! In EXPLAIN ANALYZE, `explain.c` prints a node's `rows` as `ntuples / nloops`
//! and "Rows Removed by Filter" (`show_instrumentation_count`) as
//! `nfiltered / nloops`: both are **per-loop averages**, rounded to an integer
//! up to PostgreSQL 17. `loops` is the number of executions (for a parallel
//! node: leader plus workers). The totals reported here are therefore
//! `average × loops`, exact up to that rounding. Sort disk space, hash batches
//! and HashAggregate disk usage are not divided by loops. In text format a
//! zero "Rows Removed by Filter" is not printed at all (JSON prints 0), so a
//! filtered, executed node without the line counts as 0 removed.
//!
//! Errors never quote the plan.

use serde::Serialize;
use serde_json::{Map, Value};

/// What the plan detectors need from one plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PlanInsights {
    /// Every sequential scan (parallel or not), in plan order.
    pub seq_scans: Vec<SeqScan>,
    /// Every node that went to disk (or needed more than one hash batch).
    pub spills: Vec<Spill>,
    /// Every nested loop join, in plan order.
    pub nested_loops: Vec<NestedLoop>,
    /// The top node's actual total time, when the plan was analyzed.
    pub total_time_ms: Option<f64>,
}

/// A sequential scan of one relation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeqScan {
    /// `schema.relation` when the plan shows the schema (VERBOSE), else the
    /// relation name. Identifiers are unquoted.
    pub relation: String,
    /// The alias the statement used; the relation name when there is none.
    pub alias: String,
    /// Whether this is a `Parallel Seq Scan`.
    pub parallel: bool,
    /// The filter expression as the plan shows it (masked upstream).
    pub filter: Option<String>,
    /// Columns of this relation the filter references, alias prefix
    /// removed, in order of first appearance (another table's, in a
    /// correlated or LATERAL filter, are left out).
    pub filter_columns: Vec<String>,
    /// The columns a plain index could serve the filter with, in the order
    /// it needs them: those compared for equality first, then ranges. See
    /// [`index_columns`].
    pub index_columns: Vec<String>,
    /// Rows the scan returned, **summed over all loops** (EXPLAIN prints a
    /// per-loop average; see the module doc). None: not analyzed.
    pub actual_rows: Option<u64>,
    /// Rows the filter discarded, **summed over all loops**. None: not
    /// analyzed, or no filter.
    pub rows_removed_by_filter: Option<u64>,
    /// How many times the scan ran (0: never executed; None: not analyzed).
    pub loops: Option<u64>,
}

/// A node that spilled to disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spill {
    /// The node type as the text format names it: `Sort`, `Hash`,
    /// `HashAggregate`, `Incremental Sort`, `Materialize` …
    pub node: String,
    /// What spilled, e.g. `external merge`, `batches 8`, `disk storage`.
    pub what: String,
    /// Disk space in kB, when the plan shows it (workers included).
    pub disk_kb: Option<u64>,
}

/// A nested loop join.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NestedLoop {
    /// `Nested Loop`, `Nested Loop Left Join`, …
    pub node: String,
    /// The outer (first) child, e.g. `Seq Scan on public.orders`.
    pub outer: String,
    /// The inner (second) child.
    pub inner: String,
    /// Rows the outer side produced: its per-loop rows × its loops (None: not
    /// analyzed).
    pub outer_rows: Option<u64>,
    /// How many times the inner side ran (None: not analyzed).
    pub inner_loops: Option<u64>,
}

/// Why a plan could not be read. Positions and shapes only, never plan text.
#[derive(Debug, thiserror::Error)]
pub enum PlanAnalysisError {
    /// Nothing but whitespace.
    #[error("plan is empty")]
    Empty,
    /// Looked like JSON but does not parse.
    #[error("JSON plan does not parse")]
    Json(#[source] serde_json::Error),
    /// Parses as JSON but is not an EXPLAIN / auto_explain plan.
    #[error("JSON plan has an unexpected shape: {0}")]
    JsonShape(&'static str),
    /// A text plan line that does not fit the EXPLAIN layout.
    #[error("text plan line {line}: {problem}")]
    Text {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Reads a plan in either format (detected: JSON starts with `{` or `[`) and
/// extracts the insights.
///
/// Accepts `EXPLAIN (FORMAT JSON)` output (an array), an auto_explain JSON
/// object (`"Plan"` key, with or without "Query Text"), a bare plan node, and
/// text plans starting at the root node line. Text plans need a statistics
/// group on every node line (`(cost=…)` or `(actual …)`), which auto_explain
/// always prints; this is also what lets a truncated line be told apart from
/// a short plan.
pub fn analyze_plan(plan: &str) -> Result<PlanInsights, PlanAnalysisError> {
    let trimmed = plan.trim_start();
    if trimmed.trim_end().is_empty() {
        return Err(PlanAnalysisError::Empty);
    }
    let tree = if trimmed.starts_with(['{', '[']) { read_json(trimmed)? } else { read_text(plan)? };
    Ok(tree.insights())
}

// ---------------------------------------------------------------------------
// The common tree

#[derive(Debug, Default)]
struct Node {
    /// Display name as the text format prints it (`Parallel Seq Scan`,
    /// `HashAggregate`, `Nested Loop Left Join`).
    name: String,
    schema: Option<String>,
    relation: Option<String>,
    alias: Option<String>,
    /// Per-loop average rows, loops, total time (ms) when analyzed.
    actual: Option<Actual>,
    filter: Option<String>,
    /// Per-loop average, as printed.
    rows_removed_by_filter: Option<f64>,
    spill: SpillSigns,
    children: Vec<usize>,
    /// Below an InitPlan / SubPlan / CTE label: not an outer/inner input.
    subplan: bool,
}

#[derive(Debug, Clone, Copy)]
struct Actual {
    rows: f64,
    loops: f64,
    total_ms: Option<f64>,
}

/// Evidence of a spill gathered from a node's details (and its workers').
#[derive(Debug, Default)]
struct SpillSigns {
    /// Sort methods that went to disk (`external merge`, `external sort`).
    external_sort: Option<String>,
    batches: Option<u64>,
    disk_storage: bool,
    disk_kb: Option<u64>,
}

impl SpillSigns {
    fn add_disk_kb(&mut self, kb: u64) {
        self.disk_kb = Some(self.disk_kb.unwrap_or(0).saturating_add(kb));
    }

    fn add_sort_method(&mut self, method: &str) {
        if method.starts_with("external") && self.external_sort.is_none() {
            self.external_sort = Some(method.to_owned());
        }
    }

    fn add_batches(&mut self, batches: u64) {
        self.batches = Some(self.batches.map_or(batches, |b| b.max(batches)));
    }

    fn to_spill(&self, node_type: &str) -> Option<Spill> {
        let mut what = Vec::new();
        if let Some(method) = &self.external_sort {
            what.push(method.clone());
        }
        if let Some(batches) = self.batches.filter(|&b| b > 1) {
            what.push(format!("batches {batches}"));
        }
        if self.disk_storage {
            what.push("disk storage".to_owned());
        }
        let disk_kb = self.disk_kb.filter(|&kb| kb > 0);
        if what.is_empty() && disk_kb.is_none() {
            return None;
        }
        if what.is_empty() {
            what.push("disk".to_owned());
        }
        Some(Spill { node: node_type.to_owned(), what: what.join(", "), disk_kb })
    }
}

struct Tree {
    /// Index 0 is the root.
    nodes: Vec<Node>,
}

impl Tree {
    fn insights(&self) -> PlanInsights {
        let mut insights = PlanInsights {
            total_time_ms: self.nodes.first().and_then(|n| n.actual?.total_ms),
            ..PlanInsights::default()
        };
        // Plan order (pre-order, children in printed order), iteratively.
        let mut stack = vec![0];
        while let Some(index) = stack.pop() {
            let Some(node) = self.nodes.get(index) else {
                continue;
            };
            stack.extend(node.children.iter().rev());
            if node.name == "Seq Scan" || node.name == "Parallel Seq Scan" {
                insights.seq_scans.push(self.seq_scan(node));
            }
            if let Some(spill) = node.spill.to_spill(&node.name) {
                insights.spills.push(spill);
            }
            if node.name.starts_with("Nested Loop") {
                let mut inputs = node.children.iter().filter_map(|&c| self.nodes.get(c)).filter(|c| !c.subplan);
                if let (Some(outer), Some(inner)) = (inputs.next(), inputs.next()) {
                    insights.nested_loops.push(NestedLoop {
                        node: node.name.clone(),
                        outer: outer.describe(),
                        inner: inner.describe(),
                        outer_rows: outer.actual.map(|a| count(a.rows * a.loops)),
                        inner_loops: inner.actual.map(|a| count(a.loops)),
                    });
                }
            }
        }
        insights
    }

    fn seq_scan(&self, node: &Node) -> SeqScan {
        let name = node.relation.clone().unwrap_or_default();
        let relation = match &node.schema {
            Some(schema) => format!("{schema}.{name}"),
            None => name.clone(),
        };
        let removed = match (node.actual, &node.filter) {
            (Some(actual), Some(_)) => Some(count(node.rows_removed_by_filter.unwrap_or(0.0) * actual.loops)),
            _ => None,
        };
        let alias = node.alias.clone().unwrap_or_else(|| name.clone());
        let own = [alias.as_str(), name.as_str()];
        SeqScan {
            parallel: node.name.starts_with("Parallel "),
            filter: node.filter.clone(),
            filter_columns: node.filter.as_deref().map(|f| columns_of(f, &own)).unwrap_or_default(),
            index_columns: node.filter.as_deref().map(|f| index_columns(f, &own)).unwrap_or_default(),
            relation,
            alias,
            actual_rows: node.actual.map(|a| count(a.rows * a.loops)),
            rows_removed_by_filter: removed,
            loops: node.actual.map(|a| count(a.loops)),
        }
    }
}

/// A total from EXPLAIN's per-loop averages: rounded, since the averages were
/// (and PostgreSQL 18 prints them with two decimals); `as` saturates, so a
/// bogus negative or huge value cannot wrap.
fn count(value: f64) -> u64 {
    value.round() as u64
}

impl Node {
    fn describe(&self) -> String {
        match (&self.schema, &self.relation) {
            (Some(schema), Some(rel)) => format!("{} on {schema}.{rel}", self.name),
            (None, Some(rel)) => format!("{} on {rel}", self.name),
            _ => self.name.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// JSON

fn read_json(plan: &str) -> Result<Tree, PlanAnalysisError> {
    let value: Value = serde_json::from_str(plan).map_err(PlanAnalysisError::Json)?;
    // EXPLAIN prints `[ { "Plan": … } ]`; auto_explain prints `{ "Plan": … }`.
    let top = match &value {
        Value::Array(items) => items.first().ok_or(PlanAnalysisError::JsonShape("empty array instead of a plan"))?,
        other => other,
    };
    let Value::Object(top) = top else {
        return Err(PlanAnalysisError::JsonShape("not a JSON object"));
    };
    let root = match top.get("Plan") {
        Some(Value::Object(plan)) => plan,
        Some(_) => return Err(PlanAnalysisError::JsonShape("\"Plan\" is not an object")),
        None if top.contains_key("Node Type") => top,
        None => return Err(PlanAnalysisError::JsonShape("no \"Plan\" object")),
    };

    let mut nodes = Vec::new();
    // (JSON node, parent index); serde_json bounds the nesting depth (128).
    let mut pending: Vec<(&Map<String, Value>, Option<usize>)> = vec![(root, None)];
    while let Some((object, parent)) = pending.pop() {
        let node = json_node(object)?;
        let index = nodes.len();
        nodes.push(node);
        if let Some(parent) = parent {
            if let Some(p) = nodes.get_mut(parent) {
                p.children.push(index);
            }
        }
        match object.get("Plans") {
            None => {}
            Some(Value::Array(children)) => {
                // Reverse so that children are numbered (and listed) in order.
                for child in children.iter().rev() {
                    let Value::Object(child) = child else {
                        return Err(PlanAnalysisError::JsonShape("a \"Plans\" entry is not an object"));
                    };
                    pending.push((child, Some(index)));
                }
            }
            Some(_) => return Err(PlanAnalysisError::JsonShape("\"Plans\" is not an array")),
        }
    }
    Ok(Tree { nodes })
}

fn json_node(object: &Map<String, Value>) -> Result<Node, PlanAnalysisError> {
    let Some(Value::String(node_type)) = object.get("Node Type") else {
        return Err(PlanAnalysisError::JsonShape("a plan node without a \"Node Type\" string"));
    };
    let text = |key: &str| match object.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let number = |key: &str| object.get(key).and_then(Value::as_f64);

    let actual = match (number("Actual Rows"), number("Actual Loops")) {
        (Some(rows), Some(loops)) => Some(Actual {
            rows,
            loops,
            // A node that never ran reports 0 ms in JSON; text shows
            // "(never executed)" without times. Treat both as no time.
            total_ms: number("Actual Total Time").filter(|_| loops > 0.0),
        }),
        _ => None,
    };

    let mut spill = SpillSigns::default();
    json_spill_signs(object, &mut spill);
    if let Some(Value::Array(workers)) = object.get("Workers") {
        for worker in workers {
            if let Value::Object(worker) = worker {
                json_spill_signs(worker, &mut spill);
            }
        }
    }

    Ok(Node {
        name: json_display_name(node_type, object),
        schema: text("Schema"),
        relation: text("Relation Name"),
        alias: text("Alias"),
        actual,
        filter: text("Filter"),
        rows_removed_by_filter: number("Rows Removed by Filter"),
        spill,
        children: Vec::new(),
        subplan: matches!(object.get("Parent Relationship").and_then(Value::as_str), Some("InitPlan" | "SubPlan")),
    })
}

fn json_spill_signs(object: &Map<String, Value>, spill: &mut SpillSigns) {
    let number = |key: &str| object.get(key).and_then(Value::as_f64);
    let is = |key: &str, want: &str| object.get(key).and_then(Value::as_str) == Some(want);
    // Sort: "Sort Method", "Sort Space Used" (kB), "Sort Space Type".
    if let Some(method) = object.get("Sort Method").and_then(Value::as_str) {
        spill.add_sort_method(method);
    }
    if is("Sort Space Type", "Disk") {
        if let Some(kb) = number("Sort Space Used") {
            spill.add_disk_kb(kb as u64);
        }
    }
    // Hash: "Hash Batches"; HashAggregate: "HashAgg Batches", "Disk Usage".
    for key in ["Hash Batches", "HashAgg Batches"] {
        if let Some(batches) = number(key) {
            spill.add_batches(batches as u64);
        }
    }
    if let Some(kb) = number("Disk Usage") {
        spill.add_disk_kb(kb as u64);
    }
    // Incremental Sort groups: {"Sort Methods Used": [...], "Sort Space Disk": {...}}.
    for group in ["Full-sort Groups", "Pre-sorted Groups"] {
        let Some(Value::Object(group)) = object.get(group) else {
            continue;
        };
        if let Some(Value::Array(methods)) = group.get("Sort Methods Used") {
            methods.iter().filter_map(Value::as_str).for_each(|m| spill.add_sort_method(m));
        }
        if let Some(kb) =
            group.get("Sort Space Disk").and_then(|d| d.get("Peak Sort Space Used")).and_then(Value::as_f64)
        {
            spill.add_disk_kb(kb as u64);
        }
    }
    // PostgreSQL 18: Materialize, CTE Scan, WindowAgg … "Storage": "Disk".
    if is("Storage", "Disk") {
        spill.disk_storage = true;
        if let Some(kb) = number("Maximum Storage") {
            spill.add_disk_kb(kb as u64);
        }
    }
}

/// The text format's node name, rebuilt from JSON's separate fields the way
/// `explain.c` builds it, so both formats give the same insights.
fn json_display_name(node_type: &str, object: &Map<String, Value>) -> String {
    let field = |key: &str| object.get(key).and_then(Value::as_str);
    let mut name = match (node_type, field("Strategy")) {
        ("Aggregate", Some("Hashed")) => "HashAggregate".to_owned(),
        ("Aggregate", Some("Sorted")) => "GroupAggregate".to_owned(),
        ("Aggregate", Some("Mixed")) => "MixedAggregate".to_owned(),
        ("SetOp", Some("Hashed")) => "HashSetOp".to_owned(),
        _ => node_type.to_owned(),
    };
    if let Some(join_type) = field("Join Type") {
        let base = name.strip_suffix(" Join").unwrap_or(&name).to_owned();
        name = match (base.as_str(), join_type) {
            ("Nested Loop", "Inner") => base,
            (_, "Inner") => format!("{base} Join"),
            (_, other) => format!("{base} {other} Join"),
        };
    }
    if object.get("Parallel Aware").and_then(Value::as_bool) == Some(true) {
        name.insert_str(0, "Parallel ");
    }
    if object.get("Async Capable").and_then(Value::as_bool) == Some(true) {
        name.insert_str(0, "Async ");
    }
    name
}

// ---------------------------------------------------------------------------
// Text

/// A frame on the indentation stack: a node, or an InitPlan/SubPlan/CTE label.
struct Frame {
    column: usize,
    node: Option<usize>,
}

fn read_text(plan: &str) -> Result<Tree, PlanAnalysisError> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // The node whose detail lines we are reading.
    let mut current: Option<usize> = None;

    for (index, raw) in plan.lines().enumerate() {
        let line_no = index + 1;
        let text_err = |problem| PlanAnalysisError::Text { line: line_no, problem };
        let rest = raw.trim_start_matches(' ');
        let rest = rest.trim_end();
        if rest.is_empty() {
            continue;
        }
        let column = raw.len() - raw.trim_start_matches(' ').len();

        if nodes.is_empty() {
            let node = parse_header(rest)
                .ok_or(text_err("the first line is not a plan node line (e.g. \"Seq Scan on t  (cost=…)\")"))?;
            nodes.push(node);
            stack.push(Frame { column, node: Some(0) });
            current = Some(0);
            continue;
        }

        if let Some(header) = rest.strip_prefix("->  ") {
            let mut node = parse_header(header).ok_or(text_err("malformed plan node line"))?;
            while stack.last().is_some_and(|f| f.column >= column) {
                stack.pop();
            }
            // The parent is the nearest node below us on the stack; a label
            // in between makes this a sub-plan rather than an input.
            let mut parent = None;
            for frame in stack.iter().rev() {
                match frame.node {
                    Some(p) => {
                        parent = Some(p);
                        break;
                    }
                    None => node.subplan = true,
                }
            }
            let parent = parent.ok_or(text_err("a child node line without a parent"))?;
            let child = nodes.len();
            nodes.push(node);
            if let Some(p) = nodes.get_mut(parent) {
                p.children.push(child);
            }
            stack.push(Frame { column, node: Some(child) });
            current = Some(child);
        } else if column == 0 {
            // Trailers: Planning Time, Execution Time, Trigger …, JIT:, Settings.
            current = None;
        } else if is_subplan_label(rest) {
            while stack.last().is_some_and(|f| f.column >= column) {
                stack.pop();
            }
            stack.push(Frame { column, node: None });
            current = None;
        } else if let Some(node) = current.and_then(|c| nodes.get_mut(c)) {
            apply_detail(node, rest).map_err(text_err)?;
        }
    }
    if nodes.is_empty() {
        return Err(PlanAnalysisError::Empty);
    }
    Ok(Tree { nodes })
}

fn is_subplan_label(line: &str) -> bool {
    line.starts_with("InitPlan ") || line.starts_with("SubPlan ") || line.starts_with("CTE ")
}

/// Parses `Seq Scan on public.orders o  (cost=…) (actual time=… rows=… loops=…)`.
/// None when the line is not a node header or its statistics are cut short.
fn parse_header(header: &str) -> Option<Node> {
    if !header.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    let name_end =
        ["  (cost=", " (actual ", " (never executed)"].iter().filter_map(|marker| header.find(marker)).min()?;
    let (description, mut stats) = header.split_at(name_end);

    let mut actual = None;
    let mut saw_group = false;
    loop {
        stats = stats.trim_start();
        if stats.is_empty() {
            break;
        }
        let group = stats.strip_prefix('(')?;
        let close = group.find(')')?;
        let (inside, after) = (&group[..close], &group[close + 1..]);
        stats = after;
        saw_group = true;
        if let Some(fields) = inside.strip_prefix("cost=") {
            // Validated, not kept: estimates are not what the detectors use.
            let mut parts = fields.split(' ');
            let range = parts.next()?;
            let (a, b) = range.split_once("..")?;
            a.parse::<f64>().ok()?;
            b.parse::<f64>().ok()?;
            keyed_number(parts.next()?, "rows")?;
            keyed_number(parts.next()?, "width")?;
        } else if let Some(fields) = inside.strip_prefix("actual ") {
            let mut total_ms = None;
            let mut rows = None;
            let mut loops = None;
            for part in fields.split(' ') {
                let (key, value) = part.split_once('=')?;
                match key {
                    "time" => {
                        let (_, total) = value.split_once("..")?;
                        total_ms = Some(total.parse::<f64>().ok()?);
                    }
                    "rows" => rows = Some(value.parse::<f64>().ok()?),
                    "loops" => loops = Some(value.parse::<f64>().ok()?),
                    _ => {}
                }
            }
            actual = Some(Actual { rows: rows?, loops: loops?, total_ms });
        } else if inside == "never executed" {
            actual = Some(Actual { rows: 0.0, loops: 0.0, total_ms: None });
        } else {
            return None;
        }
    }
    if !saw_group {
        return None;
    }

    let mut node = Node { actual, ..Node::default() };
    // `<Type> [Backward] using <index> on <relation> [alias]` or
    // `<Type> on <relation> [alias]` or just `<Type>`.
    let (kind, target) = match description.find(" using ") {
        Some(at) => {
            let after_index = &description[at + " using ".len()..];
            let target = split_outside_quotes(after_index, " on ").map(|(_, t)| t);
            (&description[..at], target)
        }
        None => match split_outside_quotes(description, " on ") {
            Some((kind, target)) => (kind, Some(target)),
            None => (description, None),
        },
    };
    node.name = kind.strip_suffix(" Backward").unwrap_or(kind).to_owned();
    if let Some(target) = target {
        let mut words = split_words(target).into_iter();
        if let Some(qualified) = words.next() {
            let mut parts = split_qualified(&qualified);
            let relation = parts.pop().unwrap_or_default();
            node.schema = parts.pop();
            node.relation = Some(relation);
        }
        node.alias = words.next().map(|a| unquote(&a));
    }
    Some(node)
}

fn keyed_number(part: &str, key: &str) -> Option<f64> {
    part.strip_prefix(key)?.strip_prefix('=')?.parse().ok()
}

/// Applies one detail line (`Key: value`) to the node it belongs to.
fn apply_detail(node: &mut Node, line: &str) -> Result<(), &'static str> {
    let Some((key, value)) = line.split_once(": ").or_else(|| Some((line.strip_suffix(':')?, ""))) else {
        return Ok(());
    };
    match key {
        "Filter" => node.filter = Some(value.to_owned()),
        "Rows Removed by Filter" => {
            let removed = value.parse::<f64>().map_err(|_| "\"Rows Removed by Filter\" is not a number")?;
            node.rows_removed_by_filter = Some(removed);
        }
        // Expressions: may contain two spaces, never spill statistics.
        "Output" | "Join Filter" | "Index Cond" | "Recheck Cond" | "Hash Cond" | "Merge Cond" | "One-Time Filter"
        | "TID Cond" | "Sort Key" | "Group Key" | "Presorted Key" | "Cache Key" | "Function Call" | "Hash Key"
        | "Run Condition" | "Order By" => {}
        _ => apply_statistics(&mut node.spill, line)?,
    }
    Ok(())
}

/// Reads the spill statistics of a line made of `Key: value` segments separated
/// by two spaces, e.g. `Buckets: 4096 (originally 1024)  Batches: 8 (originally
/// 1)  Memory Usage: 75kB` or `Worker 0:  Sort Method: external merge  Disk: 1234kB`.
fn apply_statistics(spill: &mut SpillSigns, line: &str) -> Result<(), &'static str> {
    for segment in line.split("  ") {
        let Some((key, value)) = segment.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "Sort Method" | "Sort Methods" => {
                value.split(", ").for_each(|m| spill.add_sort_method(m));
            }
            // "Maximum Storage" is disk only after "Storage: Disk" on the same
            // line (PostgreSQL 18), which sets disk_storage first.
            "Disk" | "Peak Disk" | "Disk Usage" | "Maximum Storage"
                if key != "Maximum Storage" || spill.disk_storage =>
            {
                spill.add_disk_kb(kilobytes(value).ok_or("malformed kB value")?);
            }
            "Batches" => {
                let batches =
                    value.split(' ').next().and_then(|b| b.parse::<u64>().ok()).ok_or("\"Batches\" is not a number")?;
                spill.add_batches(batches);
            }
            "Storage" if value == "Disk" => spill.disk_storage = true,
            _ => {}
        }
    }
    Ok(())
}

fn kilobytes(value: &str) -> Option<u64> {
    value.strip_suffix("kB")?.parse().ok()
}

/// Splits at the first `separator` outside double quotes.
fn split_outside_quotes<'a>(text: &'a str, separator: &str) -> Option<(&'a str, &'a str)> {
    let mut in_quotes = false;
    for (at, c) in text.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && text[at..].starts_with(separator) {
            return Some((&text[..at], &text[at + separator.len()..]));
        }
    }
    None
}

/// Whitespace-separated words, keeping double-quoted spans together.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    for c in text.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if c == ' ' && !in_quotes {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `public."My Table"` → `["public", "My Table"]`.
fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = name.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => parts.push(std::mem::take(&mut part)),
            _ => part.push(c),
        }
    }
    parts.push(part);
    parts
}

fn unquote(name: &str) -> String {
    split_qualified(name).join(".")
}

// ---------------------------------------------------------------------------
// Filter columns

/// Column references in a deparsed filter expression, alias prefix removed,
/// deduplicated in order of first appearance.
///
/// PostgreSQL's deparser (ruleutils.c) prints a column either unquoted in
/// lower case or double-quoted (`quote_identifier` quotes anything with upper
/// case or that is a keyword), and prints keywords in upper case (`AND`,
/// `IS NOT NULL`, `ANY`, `ARRAY`, `SubPlan`). So an unquoted word with an upper
/// case letter is never a column. Skipped besides: function names (a name
/// followed by `(`), type names after `::` (including `timestamp without time
/// zone` and friends), the collation after `COLLATE`, string literals, numbers,
/// placeholders `$n`, `true`/`false`, `hashed`, and field selections `(x).f`.
pub fn filter_columns(expr: &str) -> Vec<String> {
    columns_of(expr, &[])
}

/// [`filter_columns`] of the relation known by the names in `own` (its
/// alias and its name): a qualified column of another relation (`c.id` in
/// a scan of `orders o`) is not one. Empty `own`: every column.
fn columns_of(expr: &str, own: &[&str]) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut columns: Vec<String> = Vec::new();
    let mut i = 0;
    // Skip the next name: set after `::` and `COLLATE`.
    let mut skip_type = false;
    let mut skip_name = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' => i = skip_string(bytes, i),
            b'$' => {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            b':' if bytes.get(i + 1) == Some(&b':') => {
                skip_type = true;
                i += 2;
            }
            b'0'..=b'9' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
            }
            _ if is_ident_start(b) || b == b'"' => {
                let preceded_by_dot = i > 0 && bytes[i - 1] == b'.';
                let (parts, end, has_upper_unquoted, dangling_dot) = read_name(expr, i);
                i = end;
                let next = bytes.get(i).copied();
                let last = parts.last().cloned().unwrap_or_default();
                if skip_type {
                    skip_type = false;
                    i = skip_type_words(expr, i, &last);
                    continue;
                }
                if skip_name {
                    skip_name = false;
                    continue;
                }
                if has_upper_unquoted {
                    // Keywords. COLLATE is followed by a collation name,
                    // `EXTRACT(` by a field name (`year FROM created_at`).
                    if last == "COLLATE" || (last == "EXTRACT" && next == Some(b'(')) {
                        skip_name = true;
                    }
                    continue;
                }
                let qualifier = parts.len().checked_sub(2).map(|q| parts[q].as_str());
                if qualifier.is_some_and(|q| !own.is_empty() && !own.contains(&q)) {
                    continue;
                }
                // E'…', B'…', X'…' prefixes are upper case and skipped above.
                let is_call = next == Some(b'(');
                let is_word = parts.len() == 1 && matches!(last.as_str(), "true" | "false" | "hashed");
                if is_call || is_word || dangling_dot || preceded_by_dot || last.is_empty() {
                    continue;
                }
                if !columns.contains(&last) {
                    columns.push(last);
                }
            }
            _ => i += 1,
        }
    }
    columns
}

/// The columns of the relation named by `own` that a plain index could
/// serve the filter `expr` with, equality first, then ranges: an index
/// is used from its first column, and a range ends what it can use.
///
/// The filter is read as PostgreSQL prints it: conditions joined by `AND`,
/// each `(left OP right)`. A condition counts when one side is a bare
/// column (a cast or a function around it, `lower(name)`, needs an
/// expression index, which is not guessed) and the operator is one a
/// B-tree serves: `=`, `= ANY`, `IS NULL` (equality); `<`, `<=`, `>`,
/// `>=` (range). `<>`, `NOT`, `IS NOT NULL`, `LIKE` (`~~`) and `OR` do
/// not count.
pub fn index_columns(expr: &str, own: &[&str]) -> Vec<String> {
    let (mut equal, mut range): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut conjuncts = vec![unwrap_parens(expr)];
    while let Some(c) = conjuncts.pop() {
        let parts = split_top(c, " AND ");
        if parts.len() > 1 {
            // Reversed onto the stack, so they come off in the plan's order.
            conjuncts.extend(parts.into_iter().rev().map(unwrap_parens));
            continue;
        }
        let Some((column, equality)) = indexable(c, own) else { continue };
        let list = if equality { &mut equal } else { &mut range };
        if !list.contains(&column) {
            list.push(column);
        }
    }
    range.retain(|c| !equal.contains(c));
    equal.extend(range);
    equal
}

/// The column and whether it is compared for equality, when the condition
/// `c` is one a plain index on that column serves (see [`index_columns`]).
fn indexable(c: &str, own: &[&str]) -> Option<(String, bool)> {
    if split_top(c, " OR ").len() > 1 || c.starts_with("NOT ") {
        return None;
    }
    if let Some(left) = c.strip_suffix(" IS NULL") {
        return bare_column(left, own).map(|col| (col, true));
    }
    const OPERATORS: [(&str, bool); 6] =
        [(" = ANY ", true), (" = ", true), (" <= ", false), (" >= ", false), (" < ", false), (" > ", false)];
    for (op, equality) in OPERATORS {
        let sides = split_top(c, op);
        if sides.len() != 2 {
            continue;
        }
        let column =
            bare_column(sides[0], own).or_else(|| if op == " = ANY " { None } else { bare_column(sides[1], own) });
        return column.map(|col| (col, equality));
    }
    None
}

/// The column `s` names when it is nothing else: a name, qualified by one
/// of `own` or not, maybe in parentheses.
fn bare_column(s: &str, own: &[&str]) -> Option<String> {
    let s = unwrap_parens(s.trim());
    if !s.as_bytes().first().is_some_and(|&b| is_ident_start(b) || b == b'"') {
        return None;
    }
    let (parts, end, has_upper, dangling) = read_name(s, 0);
    if end != s.len() || has_upper || dangling || parts.len() > 2 {
        return None;
    }
    let column = parts.last()?.clone();
    if (parts.len() == 2 && !own.contains(&parts[0].as_str())) || matches!(column.as_str(), "true" | "false") {
        return None;
    }
    Some(column)
}

/// `s` without the parentheses around all of it.
fn unwrap_parens(mut s: &str) -> &str {
    loop {
        s = s.trim();
        if !(s.len() >= 2 && s.starts_with('(') && s.ends_with(')') && encloses(s)) {
            return s;
        }
        s = &s[1..s.len() - 1];
    }
}

/// Whether the parenthesis opening `s` is the one closing it (`(a) = (b)`
/// starts and ends with one, but they are no pair).
fn encloses(s: &str) -> bool {
    let mut depth = 0i32;
    for (i, (b, quoted)) in scan(s).enumerate() {
        if quoted {
            continue;
        }
        depth += i32::from(b == b'(') - i32::from(b == b')');
        if depth == 0 && i + 1 < s.len() {
            return false;
        }
    }
    true
}

/// `s` split at each `sep` outside parentheses and quotes.
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let (mut depth, mut from) = (0i32, 0);
    for (i, (b, quoted)) in scan(s).enumerate() {
        if quoted || i < from {
            continue;
        }
        if depth == 0 && s.as_bytes()[i..].starts_with(sep.as_bytes()) {
            out.push(&s[from..i]);
            from = i + sep.len();
        }
        depth += i32::from(b == b'(') - i32::from(b == b')');
    }
    out.push(&s[from..]);
    out
}

/// Each byte of `s` and whether it is inside quotes (`'…'` or `"…"`).
fn scan(s: &str) -> impl Iterator<Item = (u8, bool)> + '_ {
    let mut quote: Option<u8> = None;
    s.bytes().map(move |b| match quote {
        Some(q) => {
            if b == q {
                quote = None;
            }
            (b, true)
        }
        None if b == b'\'' || b == b'"' => {
            quote = Some(b);
            (b, true)
        }
        None => (b, false),
    })
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_continue(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Skips a `'…'` literal (`''` escapes), returning the index after it.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// Reads a possibly qualified, possibly quoted name at `start`. Returns its
/// parts (unquoted), the index after it, whether an unquoted part had upper
/// case, and whether it ended in a dot not followed by a name (`t.*`,
/// `OPERATOR(pg_catalog.=)`).
fn read_name(expr: &str, start: usize) -> (Vec<String>, usize, bool, bool) {
    let bytes = expr.as_bytes();
    let mut parts = Vec::new();
    let mut i = start;
    let mut has_upper = false;
    loop {
        if bytes.get(i) == Some(&b'"') {
            let mut part = String::new();
            let mut j = i + 1;
            let mut from = j;
            loop {
                match bytes.get(j) {
                    None => {
                        part.push_str(&expr[from..]);
                        j = bytes.len();
                        break;
                    }
                    Some(b'"') if bytes.get(j + 1) == Some(&b'"') => {
                        part.push_str(&expr[from..=j]);
                        j += 2;
                        from = j;
                    }
                    Some(b'"') => {
                        part.push_str(&expr[from..j]);
                        j += 1;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            parts.push(part);
            i = j;
        } else {
            let from = i;
            while i < bytes.len() && is_ident_continue(bytes[i]) {
                i += 1;
            }
            let part = &expr[from..i];
            has_upper |= part.bytes().any(|b| b.is_ascii_uppercase());
            parts.push(part.to_owned());
        }
        if bytes.get(i) == Some(&b'.') {
            match bytes.get(i + 1) {
                Some(&n) if is_ident_start(n) || n == b'"' => i += 1,
                _ => return (parts, i, has_upper, true),
            }
        } else {
            return (parts, i, has_upper, false);
        }
    }
}

/// After a type name that can continue with more words (`character varying`,
/// `double precision`, `timestamp without time zone`, `time with time zone`,
/// `bit varying`), skips those words.
fn skip_type_words(expr: &str, mut i: usize, first: &str) -> usize {
    let bytes = expr.as_bytes();
    let mut previous = first.to_owned();
    loop {
        // A type modifier: `timestamp(0) without time zone`, `numeric(10,2)`.
        if bytes.get(i) == Some(&b'(') {
            let close = bytes[i..].iter().position(|&b| b == b')').map(|n| i + n);
            if let Some(close) = close
                && bytes[i + 1..close].iter().all(|b| b.is_ascii_digit() || *b == b',' || *b == b' ')
            {
                i = close + 1;
            }
        }
        let mut j = i;
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        let from = j;
        while j < bytes.len() && bytes[j].is_ascii_lowercase() {
            j += 1;
        }
        let word = &expr[from..j];
        let continues = matches!(
            (previous.as_str(), word),
            ("character" | "bit", "varying")
                | ("double", "precision")
                | ("timestamp" | "time", "with" | "without")
                | ("with" | "without", "time")
                | ("time", "zone")
        );
        if !continues {
            return i;
        }
        previous = word.to_owned();
        i = j;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/plans/", $name))
        };
    }

    /// (scenario, text plan, JSON plan), all real PostgreSQL 15 output from
    /// tests/fixtures/plans/generate.sh.
    const PLANS: &[(&str, &str, &str)] = &[
        ("seqscan_filter", fixture!("seqscan_filter.txt"), fixture!("seqscan_filter.json")),
        ("sort_spill", fixture!("sort_spill.txt"), fixture!("sort_spill.json")),
        ("hash_batches", fixture!("hash_batches.txt"), fixture!("hash_batches.json")),
        ("hashagg_spill", fixture!("hashagg_spill.txt"), fixture!("hashagg_spill.json")),
        ("nested_loop", fixture!("nested_loop.txt"), fixture!("nested_loop.json")),
        ("partitioned", fixture!("partitioned.txt"), fixture!("partitioned.json")),
        ("parallel_seqscan", fixture!("parallel_seqscan.txt"), fixture!("parallel_seqscan.json")),
        ("index_scan", fixture!("index_scan.txt"), fixture!("index_scan.json")),
        ("expressions", fixture!("expressions.txt"), fixture!("expressions.json")),
        ("tid_scan", fixture!("tid_scan.txt"), fixture!("tid_scan.json")),
    ];

    fn both(name: &str) -> [(String, PlanInsights); 2] {
        let (_, text, json) = PLANS.iter().find(|(n, _, _)| *n == name).unwrap();
        [(format!("{name}.txt"), analyze_plan(text).unwrap()), (format!("{name}.json"), analyze_plan(json).unwrap())]
    }

    /// (relation, alias, filter columns, total rows, total removed, loops)
    type ScanRow = (&'static str, &'static str, &'static [&'static str], u64, u64, u64);

    #[test]
    fn seq_scans_report_relation_filter_columns_and_totals() {
        let cases: &[(&str, &[ScanRow])] = &[
            ("seqscan_filter", &[("public.orders", "o", &["note", "customer_id"], 10, 99990, 1)]),
            (
                "partitioned",
                &[
                    ("public.events_q2", "e_1", &["day", "kind"], 33, 9794, 1),
                    ("public.events_q3", "e_2", &["day", "kind"], 101, 9709, 1),
                    ("public.events_q4", "e_3", &["day", "kind"], 108, 10356, 1),
                ],
            ),
            // Per-loop averages × 3 loops (leader + 2 workers): 10 rows were
            // returned, printed as rows=3 (10/3 rounded), so 9 comes back.
            ("parallel_seqscan", &[("public.orders", "orders", &["customer_id"], 9, 99990, 3)]),
            ("nested_loop", &[("public.orders", "o", &["amount"], 52800, 47200, 1)]),
            // Text prints no zero "Rows Removed by Filter"; it still counts as 0.
            ("hashagg_spill", &[("public.orders", "orders", &["amount"], 100000, 0, 1)]),
            ("expressions", &[("public.customers", "customers", &["name"], 0, 10000, 1)]),
        ];
        for (name, expected) in cases {
            let expected: Vec<_> = expected
                .iter()
                .map(|&(r, a, c, rows, removed, loops)| {
                    let c: Vec<String> = c.iter().map(|c| c.to_string()).collect();
                    (r.to_owned(), a.to_owned(), c, rows, removed, loops)
                })
                .collect();
            for (label, insights) in both(name) {
                let got: Vec<_> = insights
                    .seq_scans
                    .iter()
                    .map(|s| {
                        (
                            s.relation.clone(),
                            s.alias.clone(),
                            s.filter_columns.clone(),
                            s.actual_rows.unwrap(),
                            s.rows_removed_by_filter.unwrap(),
                            s.loops.unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(got, expected, "{label}");
            }
        }
    }

    #[test]
    fn seq_scan_without_filter_has_no_removed_rows() {
        for (label, insights) in both("hash_batches") {
            let orders = &insights.seq_scans[0];
            assert_eq!(orders.relation, "public.orders", "{label}");
            assert_eq!(orders.filter, None, "{label}");
            assert!(orders.filter_columns.is_empty(), "{label}");
            assert_eq!(orders.rows_removed_by_filter, None, "{label}");
            assert_eq!(orders.actual_rows, Some(100000), "{label}");
            assert!(!orders.parallel, "{label}");
        }
        for (label, insights) in both("parallel_seqscan") {
            assert!(insights.seq_scans[0].parallel, "{label}");
        }
    }

    #[test]
    fn spills_are_detected_with_their_kind_and_disk_size() {
        type SpillRow = (&'static str, &'static str, Option<u64>);
        let cases: &[(&str, &[SpillRow])] = &[
            ("sort_spill", &[("Sort", "external merge", Some(8288))]),
            ("hash_batches", &[("Hash", "batches 8", None)]),
            ("hashagg_spill", &[("HashAggregate", "batches 341", Some(7240))]),
            ("seqscan_filter", &[]),
            ("nested_loop", &[]),
            ("parallel_seqscan", &[]),
            ("expressions", &[]),
        ];
        for (name, expected) in cases {
            for (label, insights) in both(name) {
                let got: Vec<(&str, &str, Option<u64>)> =
                    insights.spills.iter().map(|s| (s.node.as_str(), s.what.as_str(), s.disk_kb)).collect();
                assert_eq!(&got, expected, "{label}");
            }
        }
    }

    #[test]
    fn nested_loop_reports_outer_rows_and_inner_loops() {
        for (label, insights) in both("nested_loop") {
            assert_eq!(
                insights.nested_loops,
                vec![NestedLoop {
                    node: "Nested Loop".to_owned(),
                    outer: "Seq Scan on public.orders".to_owned(),
                    inner: "Index Scan on public.customers".to_owned(),
                    outer_rows: Some(52800),
                    inner_loops: Some(52800),
                }],
                "{label}"
            );
        }
        for (name, _, _) in PLANS.iter().filter(|(n, _, _)| *n != "nested_loop") {
            for (label, insights) in both(name) {
                assert!(insights.nested_loops.is_empty(), "{label}");
            }
        }
    }

    #[test]
    fn good_index_scan_plan_has_nothing_to_find() {
        for name in ["index_scan", "tid_scan"] {
            for (label, insights) in both(name) {
                assert!(insights.total_time_ms.is_some(), "{label}");
                assert_eq!(
                    insights,
                    PlanInsights { total_time_ms: insights.total_time_ms, ..PlanInsights::default() },
                    "{label}"
                );
            }
        }
    }

    #[test]
    fn text_and_json_give_the_same_insights() {
        // Separate EXPLAIN ANALYZE runs: only the timings may differ.
        for (name, _, _) in PLANS {
            let [(_, mut text), (_, mut json)] = both(name);
            assert!(text.total_time_ms.unwrap() > 0.0, "{name}");
            assert!(json.total_time_ms.unwrap() > 0.0, "{name}");
            text.total_time_ms = None;
            json.total_time_ms = None;
            assert_eq!(text, json, "{name}");
        }
    }

    #[test]
    fn total_time_is_the_top_node_actual_total_time() {
        let text = fixture!("seqscan_filter.txt");
        let first = text.lines().next().unwrap();
        let total = first.split("actual time=").nth(1).unwrap().split("..").nth(1).unwrap();
        let total: f64 = total.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(analyze_plan(text).unwrap().total_time_ms, Some(total));
    }

    #[test]
    fn auto_explain_bodies_are_accepted() {
        // The JSON body (with "Query Text") is an object with "Plan"; the text
        // body minus its "Query Text" lines is a plain text plan.
        let json = analyze_plan(fixture!("auto_explain_json.log")).unwrap();
        assert_eq!(json.seq_scans[0].rows_removed_by_filter, Some(99990));
        let text = fixture!("auto_explain_text.log");
        let plan = &text[text.find("Seq Scan").unwrap()..];
        let text = analyze_plan(plan).unwrap();
        assert_eq!(text.seq_scans[0].filter_columns, ["note", "customer_id"]);
    }

    #[test]
    fn masked_plans_are_read_the_same() {
        // What the agent sends: literals replaced by placeholders.
        let plan = fixture!("partitioned.txt").replace("150", "$1").replace("'zqzq'::text", "$2::text");
        let insights = analyze_plan(&plan).unwrap();
        assert_eq!(insights.seq_scans.len(), 3);
        assert_eq!(insights.seq_scans[0].filter.as_deref(), Some("((e_1.day >= $1) AND (e_1.kind = $2::text))"));
        assert_eq!(insights.seq_scans[0].filter_columns, ["day", "kind"]);
    }

    #[test]
    fn filter_columns_skip_functions_types_keywords_and_placeholders() {
        let cases: &[(&str, &[&str])] = &[
            ("(customer_id = $1)", &["customer_id"]),
            ("((o.note <> $1::text) AND (o.customer_id = $2))", &["note", "customer_id"]),
            ("(lower(c.name) = $1)", &["name"]),
            ("(pg_catalog.lower(name) ~~ $1::text)", &["name"]),
            ("(created_at > (now() - $1::interval))", &["created_at"]),
            ("(t.ts < $1::timestamp without time zone)", &["ts"]),
            ("((t.v)::character varying(10) = $1::character varying)", &["v"]),
            ("(x::double precision > y)", &["x", "y"]),
            ("((deleted_at IS NULL) OR (NOT flag))", &["deleted_at", "flag"]),
            ("(status = ANY ($1::text[]))", &["status"]),
            ("(id = ANY (ARRAY[$1, $2]))", &["id"]),
            ("(\"Weird Col\" = $1)", &["Weird Col"]),
            ("(o.\"CamelCase\" = $1)", &["CamelCase"]),
            ("(name = $1 COLLATE \"C\")", &["name"]),
            ("(active = true)", &["active"]),
            ("(NOT (hashed SubPlan 1))", &[]),
            ("(customer_id = $0)", &["customer_id"]),
            ("((SubPlan 1) > amount)", &["amount"]),
            // PostgreSQL 17 names InitPlan outputs like this.
            ("(amount > (InitPlan 1).col1)", &["amount"]),
            ("((e.kind = 'zqzq'::text) AND (e.day >= 4711))", &["kind", "day"]),
            ("(note = 'it''s a col = x'::text)", &["note"]),
            ("((t.*)::text = $1)", &[]),
            ("((t.rec).field = $1)", &["rec"]),
            ("(a.x = b.x)", &["x"]),
            // PostgreSQL 14+ prints extract() so; the field is no column.
            ("(EXTRACT(year FROM created_at) = $1::numeric)", &["created_at"]),
            ("(ts > (now())::timestamp(0) without time zone)", &["ts"]),
            ("(t.v = $1::numeric(10,2))", &["v"]),
            ("", &[]),
        ];
        for (expr, expected) in cases {
            assert_eq!(filter_columns(expr), *expected, "{expr}");
        }
        // In a scan of orders o, c.id (a LATERAL or correlated reference) is
        // another table's column.
        assert_eq!(columns_of("(o.customer_id = c.id)", &["o", "orders"]), ["customer_id"]);
    }

    #[test]
    fn index_columns_put_equality_first_and_leave_out_what_no_index_serves() {
        let own = ["o", "orders"];
        let cases: &[(&str, &[&str])] = &[
            ("((o.note <> $1::text) AND (o.customer_id = $2))", &["customer_id"]),
            ("((o.day >= $1) AND (o.kind = $2::text))", &["kind", "day"]),
            ("((o.a = $1) AND (o.b > $2) AND (o.c = ANY ($3::integer[])))", &["a", "c", "b"]),
            ("(lower(o.name) = $1)", &[]),
            ("((o.a)::text = $1)", &[]),
            ("((o.a = $1) OR (o.b = $2))", &[]),
            ("((o.deleted_at IS NULL) AND (o.region = $1))", &["deleted_at", "region"]),
            ("(o.deleted_at IS NOT NULL)", &[]),
            ("(NOT o.flag)", &[]),
            ("(o.note ~~ $1::text)", &[]),
            ("(o.customer_id = c.id)", &["customer_id"]),
            ("($1 = o.customer_id)", &["customer_id"]),
            ("(c.id = $1)", &[]),
            ("((o.note = 'a = b AND c'::text) AND (o.\"Kind\" = $1))", &["note", "Kind"]),
            ("(o.a < o.b)", &["a"]),
            ("", &[]),
        ];
        for (expr, expected) in cases {
            assert_eq!(index_columns(expr, &own), *expected, "{expr}");
        }
    }

    #[test]
    fn garbage_and_truncated_plans_are_errors() {
        let seq = fixture!("seqscan_filter.txt");
        let header_cut = &seq[..seq.find("rows=10 loops").unwrap()];
        let json = fixture!("nested_loop.json");
        let cases: &[(&str, &str)] = &[
            ("empty", ""),
            ("blank", "  \n \n"),
            ("prose", "hello world\nnot a plan"),
            ("statement", "SELECT * FROM orders WHERE customer_id = 4711"),
            ("detail first", "  Filter: (customer_id = 4711)"),
            ("header cut mid-statistics", header_cut),
            ("bad number", "Seq Scan on t  (cost=0.00..x rows=1 width=4)"),
            ("orphan child", "  ->  Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)"),
            (
                "bad rows removed",
                "Seq Scan on t  (cost=0.00..1.00 rows=1 width=4) (actual time=0.1..0.2 rows=1 loops=1)\n  Filter: (a = $1)\n  Rows Removed by Filter: many",
            ),
            ("json truncated", &json[..json.len() / 2]),
            ("json scalar", "4711"),
            ("json empty array", "[]"),
            ("json no plan", "{\"Query Text\": \"SELECT 1\"}"),
            ("json node without type", "{\"Plan\": {\"Plans\": []}}"),
            ("json child not object", "{\"Plan\": {\"Node Type\": \"Result\", \"Plans\": [1]}}"),
        ];
        for (name, plan) in cases {
            assert!(analyze_plan(plan).is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn truncation_anywhere_never_panics() {
        for (_, text, json) in PLANS {
            for plan in [text, json] {
                for (cut, _) in plan.char_indices() {
                    let _ = analyze_plan(&plan[..cut]);
                }
            }
        }
        // Every proper prefix of a JSON plan is an error, not a smaller plan.
        let json = fixture!("sort_spill.json").trim_end();
        for (cut, _) in json.char_indices().skip(1) {
            assert!(analyze_plan(&json[..cut]).is_err(), "prefix {cut} accepted");
        }
    }

    #[test]
    fn deep_text_plans_do_not_overflow_the_stack() {
        let mut plan = String::from("Limit  (cost=0.00..1.00 rows=1 width=4)\n");
        for depth in 1..5_000 {
            plan.push_str(&" ".repeat(depth * 2));
            plan.push_str("->  Materialize  (cost=0.00..1.00 rows=1 width=4)\n");
        }
        let insights = analyze_plan(&plan).unwrap();
        assert!(insights.seq_scans.is_empty());
    }
}
