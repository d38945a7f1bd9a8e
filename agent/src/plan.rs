//! auto_explain plans on the agent side: split a logged auto_explain body into
//! the statement text and the plan, and mask every constant in the plan before
//! it leaves the node.
//!
//! Plans carry the workload's literals in many places (`Filter: (customer_id =
//! 4711)`, `Index Cond`, `Output`, `Sort Key`, `Function Call`, JSON string
//! values …). Rather than list every field that *can* carry one, masking here is
//! deny-by-default: a line or JSON string is kept verbatim only when it is known
//! to hold nothing but structure (node headers, statistics, relation / index /
//! alias names); everything else goes through [`crate::mask::mask_into`], the
//! one masker of the agent. Masking text that has no literal is harmless (the
//! masker leaves identifiers alone), so an unknown or future PostgreSQL field
//! costs at worst a placeholder where a number was, never a leaked value.
//!
//! Errors never quote the plan: a plan is exactly the kind of text that holds
//! the values we must not log.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::mask::mask_into;

/// The two `auto_explain.log_format`s we read. (`xml` and `yaml` exist too; the
/// agent's documentation asks for `text` or `json`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// Indented `->` tree, as `EXPLAIN (FORMAT TEXT)` prints it.
    Text,
    /// One JSON object, as auto_explain logs `EXPLAIN (FORMAT JSON)`.
    Json,
}

/// An auto_explain body split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoExplain<'a> {
    /// The statement as the client sent it: **unmasked**, it must go through
    /// the masker before it leaves the node, like any statement text.
    pub query_text: Cow<'a, str>,
    /// The format the body was logged in.
    pub format: PlanFormat,
    /// The plan without "Query Text" and "Query Parameters", still **unmasked**
    /// (feed it to [`mask_plan`]). Text plans borrow from the body; JSON plans
    /// are re-serialized (compact) without the two dropped keys.
    pub plan: Cow<'a, str>,
}

/// Why a body or plan could not be read. Carries positions and shapes, never
/// plan text (which holds literals).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Nothing but whitespace.
    #[error("auto_explain plan is empty")]
    Empty,
    /// A text body has to start with auto_explain's `Query Text:` line.
    #[error("text auto_explain body does not start with \"Query Text:\"")]
    NoQueryText,
    /// A text body whose plan tree root could not be found (truncated body, or
    /// not an auto_explain plan at all).
    #[error("no plan root line (an unindented node line with \"(cost=\") after the query text in {lines} lines")]
    NoPlanRoot {
        /// Lines in the body.
        lines: usize,
    },
    /// A text plan whose first line is not a plan node header.
    #[error("text plan line {line} is not a plan node line (expected e.g. \"Seq Scan on t  (cost=...)\")")]
    NotAPlanNode {
        /// 1-based line number.
        line: usize,
    },
    /// The JSON does not parse.
    #[error("JSON plan does not parse ({context})")]
    Json {
        /// What was being parsed.
        context: &'static str,
        /// serde_json's error (a position, not content).
        #[source]
        source: serde_json::Error,
    },
    /// The JSON parses but is not shaped like an auto_explain / EXPLAIN plan.
    #[error("JSON plan has an unexpected shape: {0}")]
    JsonShape(&'static str),
}

/// Splits an auto_explain body (the message after `plan:`) into the statement
/// text and the plan, dropping "Query Text" and "Query Parameters" from the plan.
///
/// The format is detected: JSON bodies are one object (`{`), text bodies start
/// with `Query Text: `.
pub fn split_auto_explain(body: &str) -> Result<AutoExplain<'_>, PlanError> {
    // The log parser hands over what follows "plan:", which may begin with the
    // line break; the trailing newline was removed by auto_explain itself.
    let body = body.trim_start().trim_end_matches(['\n', '\r']);
    if body.trim_end().is_empty() {
        return Err(PlanError::Empty);
    }
    if body.starts_with('{') {
        split_json(body)
    } else if body.starts_with("Query Text:") {
        split_text(body)
    } else {
        Err(PlanError::NoQueryText)
    }
}

fn split_json(body: &str) -> Result<AutoExplain<'_>, PlanError> {
    let value: Value =
        serde_json::from_str(body).map_err(|source| PlanError::Json { context: "auto_explain body", source })?;
    let Value::Object(mut object) = value else {
        return Err(PlanError::JsonShape("auto_explain body is not a JSON object"));
    };
    let query_text = match object.remove("Query Text") {
        Some(Value::String(text)) => text,
        Some(_) => return Err(PlanError::JsonShape("\"Query Text\" is not a string")),
        None => return Err(PlanError::JsonShape("no \"Query Text\" key")),
    };
    // PostgreSQL 16+ logs bind values here; they are the workload's data.
    object.remove("Query Parameters");
    if !matches!(object.get("Plan"), Some(Value::Object(_))) {
        return Err(PlanError::JsonShape("no \"Plan\" object"));
    }
    let plan = serde_json::to_string(&Value::Object(object))
        .map_err(|source| PlanError::Json { context: "re-serializing the plan", source })?;
    Ok(AutoExplain { query_text: Cow::Owned(query_text), format: PlanFormat::Json, plan: Cow::Owned(plan) })
}

fn split_text(body: &str) -> Result<AutoExplain<'_>, PlanError> {
    // The statement can span lines and contain anything, so where does it end?
    // The plan root is an unindented line that is a node header with a cost
    // group (auto_explain always prints costs); every later plan line is
    // indented or a trailer without costs (Trigger, JIT, Settings) — or a
    // line of a multi-line literal in a Filter, unindented too. So the root
    // is the *first* root-looking line before which the statement is closed
    // (not inside a string or comment): a statement's literal line that looks
    // like a root is inside its string, and taking the last such line took a
    // Filter literal's line for the root, sending the literal out as plan
    // structure.
    let mut root_start = None;
    let mut params_start = None;
    let mut lines = 0;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        lines += 1;
        let text = line.trim_end_matches(['\n', '\r']);
        if offset > 0 {
            // Closed in either reading of backslashes: a statement written
            // for `standard_conforming_strings = off` must not lose its plan.
            let before = &body[..offset];
            if is_root_header(text) && !(crate::mask::ends_open(before, false) && crate::mask::ends_open(before, true))
            {
                root_start = Some(offset);
                break;
            } else if root_start.is_none() && params_start.is_none() && text.starts_with("Query Parameters:") {
                // PostgreSQL 16+ prints bind values right after the statement.
                // Take the first occurrence: a statement line that happens to
                // start like this only shortens the statement text; taking a
                // later one could leave parameter values inside it.
                params_start = Some(offset);
            }
        }
        offset += line.len();
    }
    let root_start = root_start.ok_or(PlanError::NoPlanRoot { lines })?;
    let params_start = params_start.filter(|&p| p < root_start);
    let text_end = params_start.unwrap_or(root_start);
    let after_label = &body["Query Text:".len()..text_end];
    let query_text = after_label.strip_prefix(' ').unwrap_or(after_label).trim_end_matches(['\n', '\r']);
    Ok(AutoExplain {
        query_text: Cow::Borrowed(query_text),
        format: PlanFormat::Text,
        plan: Cow::Borrowed(&body[root_start..]),
    })
}

/// Appends the plan with every constant masked to `out`: every
/// expression-bearing field or line (Filter, Index Cond, Recheck Cond, Join
/// Filter, Hash Cond, Merge Cond, One-Time Filter, TID Cond, Cache Key, Output,
/// Sort Key, Group Key, Presorted Key, Function Call, Remote SQL, Settings, and
/// anything not known to be pure structure) goes through
/// [`crate::mask::mask_into`]; "Query Parameters" is dropped (and "Query Text"
/// too, for JSON). Relation, alias, index and column names stay.
///
/// On error `out` is left as it was.
pub fn mask_plan(plan: &str, format: PlanFormat, out: &mut String) -> Result<(), PlanError> {
    let start = out.len();
    let result = match format {
        PlanFormat::Text => mask_text(plan, out),
        PlanFormat::Json => mask_json(plan, out),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

// ---------------------------------------------------------------------------
// JSON

fn mask_json(plan: &str, out: &mut String) -> Result<(), PlanError> {
    let mut value: Value = serde_json::from_str(plan).map_err(|source| PlanError::Json { context: "plan", source })?;
    let has_plan = match &value {
        Value::Object(object) => object.contains_key("Plan") || object.contains_key("Node Type"),
        // EXPLAIN (FORMAT JSON) prints a one-element array.
        Value::Array(items) => items.iter().any(|item| matches!(item, Value::Object(o) if o.contains_key("Plan"))),
        _ => false,
    };
    if !has_plan {
        return Err(PlanError::JsonShape("no \"Plan\" object"));
    }
    mask_json_value(None, &mut value);
    let masked = serde_json::to_string(&value)
        .map_err(|source| PlanError::Json { context: "serializing the masked plan", source })?;
    out.push_str(&masked);
    Ok(())
}

/// Masks `value` in place. `key` is the object key the value (or the array
/// holding it) sits under: it decides whether a string is structure or an
/// expression. serde_json limits nesting to 128 levels while parsing, which
/// bounds this recursion.
fn mask_json_value(key: Option<&str>, value: &mut Value) {
    match value {
        Value::Object(object) => {
            // Both hold the statement's data; the statement text travels
            // separately (masked) and bind values never travel.
            object.remove("Query Text");
            object.remove("Query Parameters");
            let needs_key_masking = object.keys().any(|k| !is_plain_json_key(k));
            if needs_key_masking {
                // Keys are labels in core PostgreSQL, but extensions have used
                // expressions as keys; mask any key that is not plainly a label.
                let old = std::mem::take(object);
                let mut rebuilt = Map::with_capacity(old.len());
                for (k, v) in old {
                    let k = if is_plain_json_key(&k) { k } else { masked(&k) };
                    rebuilt.insert(k, v);
                }
                *object = rebuilt;
            }
            for (k, child) in object.iter_mut() {
                mask_json_value(Some(k), child);
            }
        }
        Value::Array(items) => {
            // "Output", "Sort Key", "Group Key" … are arrays of expressions:
            // their elements are judged by the array's key.
            for item in items {
                mask_json_value(key, item);
            }
        }
        Value::String(text) => {
            if !key.is_some_and(is_verbatim_json_key) {
                *text = masked(text);
            }
        }
        // Numbers are measurements (costs, rows, times, kB, counts) and
        // booleans are flags: neither is ever a constant of the statement.
        Value::Number(_) | Value::Bool(_) | Value::Null => {}
    }
}

/// JSON keys whose string values are names or enumerations, never expressions.
fn is_verbatim_json_key(key: &str) -> bool {
    matches!(
        key,
        "Node Type"
            | "Strategy"
            | "Partial Mode"
            | "Parent Relationship"
            | "Subplan Name"
            | "Relation Name"
            | "Schema"
            | "Alias"
            | "Index Name"
            | "Scan Direction"
            | "Join Type"
            | "Command"
            | "Operation"
            | "Function Name"
            | "CTE Name"
            | "Tuplestore Name"
            | "Table Function Name"
            | "Custom Plan Provider"
            | "Sort Method"
            | "Sort Methods Used"
            | "Sort Space Type"
            | "Cache Mode"
            | "Conflict Resolution"
            | "Conflict Arbiter Indexes"
            | "Trigger Name"
            | "Constraint Name"
            | "Relation"
            | "Relations"
            | "Storage"
            | "Sampling Method"
            | "Format"
    )
}

/// A key made only of letters, spaces and `_ . / -` cannot hold a literal
/// (no digits, quotes or operators).
fn is_plain_json_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphabetic() || matches!(c, ' ' | '_' | '.' | '/' | '-'))
}

fn masked(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    mask_into(text, &mut out);
    out
}

// ---------------------------------------------------------------------------
// Text

/// Whether `s` leaves a `'…'` constant open. EXPLAIN prints constants in
/// standard form (quotes doubled, never backslash-escaped), so parity is exact.
fn string_open(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'\'').count() % 2 == 1
}

fn mask_text(plan: &str, out: &mut String) -> Result<(), PlanError> {
    let mut seen_root = false;
    // Lines already consumed as the continuation of a multi-line constant.
    let mut swallowed = 0usize;
    for (index, piece) in plan.split('\n').enumerate() {
        if swallowed > 0 {
            swallowed -= 1;
            continue;
        }
        if index > 0 {
            out.push('\n');
        }
        let (line, cr) = match piece.strip_suffix('\r') {
            Some(line) => (line, "\r"),
            None => (piece, ""),
        };
        let rest = line.trim_start_matches([' ', '\t']);
        let indent = &line[..line.len() - rest.len()];
        if rest.is_empty() {
            out.push_str(piece);
            continue;
        }
        if !seen_root {
            if !is_root_header(rest) {
                return Err(PlanError::NotAPlanNode { line: index + 1 });
            }
            seen_root = true;
            out.push_str(indent);
            push_header(rest, out);
        } else if let Some(header) = rest.strip_prefix("->  ") {
            out.push_str(indent);
            out.push_str("->  ");
            push_header(header, out);
        } else if is_subplan_label(rest) {
            out.push_str(line);
        } else if let Some((key, value)) = split_key(rest) {
            if key == "Query Parameters" {
                // Bind values: dropped, not masked. Undo the line break pushed
                // for this line so no empty line marks the spot.
                if index > 0 {
                    out.pop();
                }
                continue;
            }
            out.push_str(indent);
            out.push_str(key);
            out.push(':');
            if !value.is_empty() {
                out.push(' ');
                if is_structural_text_key(key) {
                    out.push_str(value);
                } else if string_open(value) {
                    // A constant with a newline in it continues on the next
                    // lines: mask them together, or its second line would
                    // be read as words outside any string.
                    let mut joined = value.to_owned();
                    for next in plan.split('\n').skip(index + 1) {
                        if !string_open(&joined) {
                            break;
                        }
                        joined.push('\n');
                        joined.push_str(next);
                        swallowed += 1;
                    }
                    mask_into(&joined, out);
                } else {
                    mask_into(value, out);
                }
            }
        } else {
            // Not a line shape we know: mask all of it.
            out.push_str(indent);
            mask_into(rest, out);
        }
        out.push_str(cr);
    }
    if seen_root {
        Ok(())
    } else if plan.trim().is_empty() {
        Err(PlanError::Empty)
    } else {
        Err(PlanError::NotAPlanNode { line: 1 })
    }
}

/// Pushes a node header (`Seq Scan on public.orders o  (cost=…) (actual …)`).
/// Headers name nodes, relations, indexes and aliases only; but whatever does
/// not look like that (a quote outside a quoted identifier, a bare number, an
/// unexpected character in the statistics) is masked rather than trusted.
fn push_header(header: &str, out: &mut String) {
    let (name, stats) = split_header(header);
    if header_name_is_clean(name) && stats_are_clean(stats) {
        out.push_str(header);
    } else {
        mask_into(header, out);
    }
}

/// Splits a header into the node description and the statistics groups
/// (`  (cost=…)`, ` (actual …)`, ` (never executed)`), the latter possibly empty.
fn split_header(header: &str) -> (&str, &str) {
    let end = ["  (cost=", " (actual ", " (never executed)"]
        .iter()
        .filter_map(|marker| header.find(marker))
        .min()
        .unwrap_or(header.len());
    header.split_at(end)
}

fn header_name_is_clean(name: &str) -> bool {
    if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
        return false;
    }
    // Walk the words outside double-quoted identifiers: a single quote, or a
    // word starting like a number or parameter, is not something a node
    // header contains.
    let mut in_quotes = false;
    let mut word_start = true;
    for c in name.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            word_start = false;
            continue;
        }
        if in_quotes {
            continue;
        }
        if c == '\'' {
            return false;
        }
        if word_start && (c.is_ascii_digit() || c == '$' || c == '-' || c == '+') {
            return false;
        }
        word_start = c == ' ' || c == '(';
    }
    !in_quotes
}

fn stats_are_clean(stats: &str) -> bool {
    // The groups consist of these words, numbers and `= . ( )` only.
    stats.split([' ', '(', ')', '=', '.']).all(|word| {
        word.is_empty()
            || word.bytes().all(|b| b.is_ascii_digit())
            || matches!(word, "cost" | "rows" | "width" | "actual" | "time" | "loops" | "never" | "executed")
    })
}

/// A node header as a plan root: a node name, then a statistics group
/// (auto_explain always prints the cost group; EXPLAIN with `COSTS OFF` still
/// prints the `actual` one under ANALYZE).
fn is_root_header(line: &str) -> bool {
    line.starts_with(|c: char| c.is_ascii_uppercase())
        && (line.contains("  (cost=") || line.contains(" (actual ") || line.contains(" (never executed)"))
}

/// `InitPlan 1 (returns $0)`, `SubPlan 2`, `CTE name`: labels of the subtrees
/// below them, no expressions.
fn is_subplan_label(line: &str) -> bool {
    let numbered = |rest: &str| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &rest[digits..];
        digits > 0
            && (tail.is_empty()
                || tail
                    .strip_prefix(" (returns ")
                    .and_then(|t| t.strip_suffix(')'))
                    .is_some_and(|params| params.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'$' | b','))))
    };
    if let Some(rest) = line.strip_prefix("InitPlan ") {
        numbered(rest)
    } else if let Some(rest) = line.strip_prefix("SubPlan ") {
        numbered(rest)
    } else if let Some(name) = line.strip_prefix("CTE ") {
        // A CTE name is an identifier, quoted or not.
        !name.is_empty() && header_name_is_clean(&format!("C {name}"))
    } else {
        false
    }
}

/// Splits `Key: value` (or a bare `Key:`), accepting only keys shaped like
/// EXPLAIN's labels, so that a line like `foo 'a: b'` is not mistaken for one.
fn split_key(line: &str) -> Option<(&str, &str)> {
    let (key, value) = match line.find(": ") {
        Some(p) => (&line[..p], &line[p + 2..]),
        None => (line.strip_suffix(':')?, ""),
    };
    let label_like = key.starts_with(|c: char| c.is_ascii_uppercase())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '/'));
    label_like.then_some((key, value))
}

/// Text keys whose values are statistics or names only, kept verbatim. Every
/// other key's value is masked.
fn is_structural_text_key(key: &str) -> bool {
    if let Some(number) = key.strip_prefix("Worker ") {
        return number.bytes().all(|b| b.is_ascii_digit());
    }
    // "Trigger orders_audit: time=0.1 calls=1", "Trigger for constraint fk: …".
    if key.starts_with("Trigger ") {
        return true;
    }
    matches!(
        key,
        "Sort Method"
            | "Sort Methods"
            | "Full-sort Groups"
            | "Pre-sorted Groups"
            | "Buckets"
            | "Batches"
            | "Planned Partitions"
            | "Memory Usage"
            | "Disk Usage"
            | "Peak Memory Usage"
            | "Hits"
            | "Rows Removed by Filter"
            | "Rows Removed by Join Filter"
            | "Rows Removed by Index Recheck"
            | "Rows Removed by Conflict Filter"
            | "Heap Fetches"
            | "Heap Blocks"
            | "Index Searches"
            | "Buffers"
            | "I/O Timings"
            | "WAL"
            | "Planning"
            | "Planning Time"
            | "Execution Time"
            | "Memory"
            | "Serialization"
            | "Workers Planned"
            | "Workers Launched"
            | "Inner Unique"
            | "Single Copy"
            | "Subplans Removed"
            | "Cache Mode"
            | "Storage"
            | "Disabled"
            | "Tuples Inserted"
            | "Conflicting Tuples"
            | "Conflict Resolution"
            | "Conflict Arbiter Indexes"
            | "Relations"
            | "JIT"
            | "Functions"
            | "Options"
            | "Timing"
            | "Query Identifier"
    )
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

    /// Every EXPLAIN fixture the generator writes, text and JSON.
    const TEXT_PLANS: &[(&str, &str)] = &[
        ("seqscan_filter", fixture!("seqscan_filter.txt")),
        ("sort_spill", fixture!("sort_spill.txt")),
        ("hash_batches", fixture!("hash_batches.txt")),
        ("hashagg_spill", fixture!("hashagg_spill.txt")),
        ("nested_loop", fixture!("nested_loop.txt")),
        ("partitioned", fixture!("partitioned.txt")),
        ("parallel_seqscan", fixture!("parallel_seqscan.txt")),
        ("index_scan", fixture!("index_scan.txt")),
        ("expressions", fixture!("expressions.txt")),
        ("tid_scan", fixture!("tid_scan.txt")),
    ];
    const JSON_PLANS: &[(&str, &str)] = &[
        ("seqscan_filter", fixture!("seqscan_filter.json")),
        ("sort_spill", fixture!("sort_spill.json")),
        ("hash_batches", fixture!("hash_batches.json")),
        ("hashagg_spill", fixture!("hashagg_spill.json")),
        ("nested_loop", fixture!("nested_loop.json")),
        ("partitioned", fixture!("partitioned.json")),
        ("parallel_seqscan", fixture!("parallel_seqscan.json")),
        ("index_scan", fixture!("index_scan.json")),
        ("expressions", fixture!("expressions.json")),
        ("tid_scan", fixture!("tid_scan.json")),
    ];
    const AUTO_TEXT: &str = fixture!("auto_explain_text.log");
    const AUTO_JSON: &str = fixture!("auto_explain_json.log");
    const AUTO_QUERY: &str = "SELECT o.id, o.note\nFROM orders o\nWHERE o.customer_id = 4711\n  AND o.note <> 'zqzq';";

    /// The literals generate.sh put into the statements.
    const LITERALS: &[&str] = &["zqzq", "4711", "47.11", "(0,4711)"];

    fn mask(plan: &str, format: PlanFormat) -> String {
        let mut out = String::new();
        mask_plan(plan, format, &mut out).unwrap();
        out
    }

    /// `needle` as a token of its own: a number inside a longer number
    /// (`147.113`, `4711.00` as a cost) is a statistic, not the literal.
    fn contains_token(haystack: &str, needle: &str) -> bool {
        haystack.match_indices(needle).any(|(at, _)| {
            let before = haystack[..at].chars().next_back();
            let after = haystack[at + needle.len()..].chars().next();
            let joins = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
            !joins(before) && !joins(after)
        })
    }

    #[test]
    fn split_text_body_separates_query_text_and_plan() {
        let split = split_auto_explain(AUTO_TEXT).unwrap();
        assert_eq!(split.format, PlanFormat::Text);
        assert_eq!(split.query_text, AUTO_QUERY);
        assert!(split.plan.starts_with("Seq Scan on public.orders o  (cost="));
        assert!(split.plan.contains("Rows Removed by Filter: 99990"));
        assert!(!split.plan.contains("Query Text"));
        assert!(matches!(split.plan, Cow::Borrowed(_)));
    }

    #[test]
    fn split_json_body_separates_query_text_and_plan() {
        let split = split_auto_explain(AUTO_JSON).unwrap();
        assert_eq!(split.format, PlanFormat::Json);
        assert_eq!(split.query_text, AUTO_QUERY);
        let plan: Value = serde_json::from_str(&split.plan).unwrap();
        assert!(plan.get("Query Text").is_none());
        assert_eq!(plan["Plan"]["Node Type"], "Seq Scan");
        assert_eq!(plan["Plan"]["Rows Removed by Filter"], 99990);
    }

    #[test]
    fn split_tolerates_leading_line_break_and_crlf() {
        // "plan:" is followed by a line break in every log destination.
        let with_break = format!("\n{AUTO_TEXT}");
        assert_eq!(split_auto_explain(&with_break).unwrap().query_text, AUTO_QUERY);
        let crlf = AUTO_TEXT.replace('\n', "\r\n");
        let split = split_auto_explain(&crlf).unwrap();
        assert_eq!(split.query_text, AUTO_QUERY.replace('\n', "\r\n"));
        assert!(split.plan.starts_with("Seq Scan on public.orders o"));
    }

    /// PostgreSQL 15 (our fixtures) has no "Query Parameters"; 16+ prints it
    /// after the statement. The line is spliced into the real body here.
    #[test]
    fn split_drops_query_parameters() {
        let params = "Query Parameters: $1 = '4711', $2 = 'zq\nzq'";
        let text = AUTO_TEXT.replacen("\nSeq Scan", &format!("\n{params}\nSeq Scan"), 1);
        let split = split_auto_explain(&text).unwrap();
        assert_eq!(split.query_text, AUTO_QUERY);
        assert!(split.plan.starts_with("Seq Scan on public.orders o"));

        let json =
            AUTO_JSON.replacen("\"Plan\":", "\"Query Parameters\": \"$1 = '4711', $2 = 'zqzq'\",\n  \"Plan\":", 1);
        let split = split_auto_explain(&json).unwrap();
        assert_eq!(split.query_text, AUTO_QUERY);
        assert!(!split.plan.contains("Query Parameters"));
        assert!(!split.plan.contains("$2"));
    }

    #[test]
    fn a_literal_line_that_looks_like_a_node_is_not_the_plan_root() {
        // The literal's second line is unindented in the statement and in
        // the Filter: neither is the root, and its words do not leave.
        let body = "Query Text: SELECT * FROM notes WHERE body = 'a\nRefund (actual hunter2)'\n\
                    Seq Scan on notes  (cost=0.00..1.01 rows=1 width=4)\n\
                    \x20 Filter: (body = 'a\nRefund (actual hunter2)'::text)\n";
        let split = split_auto_explain(body).unwrap();
        assert_eq!(split.query_text, "SELECT * FROM notes WHERE body = 'a\nRefund (actual hunter2)'");
        assert!(split.plan.starts_with("Seq Scan on notes"), "{}", split.plan);
        let mut out = String::new();
        mask_plan(&split.plan, split.format, &mut out).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("Filter"), "{out}");

        // Inside a comment, a dollar quote or an E'' string alike; and a
        // statement for standard_conforming_strings = off keeps its plan.
        for statement in [
            "SELECT 1 /* note:\nSort  (cost=1.00..2.00 rows=1 width=4) */",
            "SELECT $q$\nHash Join  (cost=1.00..2.00 rows=1 width=4)$q$",
            "SELECT E'it\\'s\nLimit  (cost=1.00..2.00 rows=1 width=4)'",
            "SELECT 'it\\'s'",
        ] {
            let body = format!("Query Text: {statement}\nResult  (cost=0.00..0.01 rows=1 width=4)\n");
            let split = split_auto_explain(&body).unwrap();
            assert_eq!(split.query_text, statement);
            assert!(split.plan.starts_with("Result"), "{statement}: {}", split.plan);
        }
    }

    #[test]
    fn split_rejects_what_is_not_an_auto_explain_body() {
        let cases: &[(&str, &str)] = &[
            ("empty", ""),
            ("blank", " \n\t\n"),
            ("prose", "hello world"),
            ("statement only", "Query Text: SELECT 1"),
            ("multi-line statement only", "Query Text: SELECT 1\nFROM t\nWHERE a = 4711"),
            ("json without query text", "{\"Plan\": {\"Node Type\": \"Result\"}}"),
            ("json without plan", "{\"Query Text\": \"SELECT 1\"}"),
            ("json query text not a string", "{\"Query Text\": 1, \"Plan\": {}}"),
            ("json array", "[1]"),
            ("truncated json", &AUTO_JSON[..AUTO_JSON.len() / 2]),
        ];
        for (name, body) in cases {
            assert!(split_auto_explain(body).is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn split_and_mask_never_panic_on_truncated_input() {
        for body in [AUTO_TEXT, AUTO_JSON] {
            for (cut, _) in body.char_indices() {
                let _ = split_auto_explain(&body[..cut]);
            }
        }
        for (plans, format) in [(TEXT_PLANS, PlanFormat::Text), (JSON_PLANS, PlanFormat::Json)] {
            for (_, plan) in plans {
                for (cut, _) in plan.char_indices() {
                    let mut out = String::new();
                    let _ = mask_plan(&plan[..cut], format, &mut out);
                }
            }
        }
    }

    #[test]
    fn mask_keeps_relations_columns_and_statistics() {
        // Structure the collector's analysis needs, per fixture; holds with any
        // masker, since names and statistics must never be touched.
        let expectations: &[(&str, &[&str])] = &[
            (
                "seqscan_filter",
                &["Seq Scan on public.orders o", "o.customer_id", "o.note", "Rows Removed by Filter: 99990"],
            ),
            ("sort_spill", &["Sort Method: external merge  Disk: ", "orders.note", "Sort Key: "]),
            ("hash_batches", &["Batches: 8", "Hash Cond: (o.customer_id = c.id)", "public.customers c"]),
            ("hashagg_spill", &["HashAggregate", "Batches: 341", "Disk Usage: 7240kB", "Group Key: orders.note"]),
            (
                "nested_loop",
                &[
                    "Nested Loop",
                    "Index Scan using customers_pkey on public.customers c",
                    "Rows Removed by Filter: 47200",
                    "loops=52800",
                ],
            ),
            ("partitioned", &["Seq Scan on public.events_q2 e_1", "e_3.kind", "Rows Removed by Filter: 10356"]),
            (
                "parallel_seqscan",
                &["Parallel Seq Scan on public.orders", "Worker 1:  actual time=", "Workers Launched: 2"],
            ),
            ("index_scan", &["Index Scan using customers_pkey on public.customers c", "Index Cond: (c.id = "]),
            (
                "expressions",
                &[
                    "InitPlan 1 (returns $0)",
                    "Function Scan on pg_catalog.generate_series g",
                    "Function Call: generate_series(",
                ],
            ),
            ("tid_scan", &["Tid Scan on public.customers", "TID Cond: (customers.ctid = "]),
        ];
        for ((name, plan), (expected_name, needles)) in TEXT_PLANS.iter().zip(expectations) {
            assert_eq!(name, expected_name);
            let out = mask(plan, PlanFormat::Text);
            assert_eq!(out.lines().count(), plan.lines().count(), "{name}: line count");
            for needle in *needles {
                assert!(out.contains(needle), "{name}: {needle:?} missing from\n{out}");
            }
            // Node headers come through byte for byte.
            for line in plan.lines().filter(|l| l.contains("  (cost=")) {
                assert!(out.contains(line), "{name}: header changed: {line}");
            }
        }
    }

    #[test]
    fn mask_json_output_parses_and_keeps_the_tree() {
        fn node_types(v: &Value, acc: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(t)) = o.get("Node Type") {
                        acc.push(t.clone());
                    }
                    o.values().for_each(|c| node_types(c, acc));
                }
                Value::Array(a) => a.iter().for_each(|c| node_types(c, acc)),
                _ => {}
            }
        }
        for (name, plan) in JSON_PLANS {
            let out = mask(plan, PlanFormat::Json);
            let masked: Value = serde_json::from_str(&out).unwrap();
            let original: Value = serde_json::from_str(plan).unwrap();
            let (mut before, mut after) = (Vec::new(), Vec::new());
            node_types(&original, &mut before);
            node_types(&masked, &mut after);
            before.sort();
            after.sort();
            assert_eq!(before, after, "{name}: node types");
            assert!(!out.contains('\n'), "{name}: not compact");
            let plan = &masked[0]["Plan"];
            assert_eq!(plan["Actual Loops"], original[0]["Plan"]["Actual Loops"], "{name}");
            assert_eq!(plan["Relation Name"], original[0]["Plan"]["Relation Name"], "{name}");
        }
    }

    #[test]
    fn mask_json_drops_query_text_and_parameters() {
        let body = AUTO_JSON.replacen("\"Plan\":", "\"Query Parameters\": \"$1 = '4711'\",\n  \"Plan\":", 1);
        let out = mask(&body, PlanFormat::Json);
        let masked: Value = serde_json::from_str(&out).unwrap();
        assert!(masked.get("Query Text").is_none());
        assert!(masked.get("Query Parameters").is_none());
        assert_eq!(masked["Plan"]["Alias"], "o");
    }

    #[test]
    fn constants_with_newlines_are_masked_whole() {
        // As PostgreSQL prints `WHERE body = 'first line\nSecret …'` in a text plan.
        let plan = "Seq Scan on notes  (cost=0.00..1.01 rows=1 width=4)\n  Filter: (body = 'first line\nSecret Second Line hunter2'::text)\n  Rows Removed by Filter: 3";
        let mut out = String::new();
        mask_plan(plan, PlanFormat::Text, &mut out).unwrap();
        assert!(!out.contains("Secret") && !out.contains("hunter2") && !out.contains("first line"), "{out}");
        assert!(out.contains("Rows Removed by Filter: 3"), "{out}");
        assert!(out.contains("Filter: (body = $1::text)"), "{out}");
    }

    #[test]
    fn mask_text_drops_query_parameters_line() {
        let plan =
            fixture!("seqscan_filter.txt").replacen("\n  Output:", "\nQuery Parameters: $1 = '4711'\n  Output:", 1);
        let out = mask(&plan, PlanFormat::Text);
        assert!(!out.contains("Query Parameters"));
        assert_eq!(out.lines().count(), fixture!("seqscan_filter.txt").lines().count());
    }

    #[test]
    fn mask_rejects_garbage_and_leaves_out_untouched() {
        let text_cases: &[(&str, &str)] = &[
            ("empty", ""),
            ("prose", "hello world\nthis is not a plan"),
            ("statement", "SELECT * FROM orders WHERE customer_id = 4711"),
            ("detail line first", "  Filter: (customer_id = 4711)"),
        ];
        for (name, plan) in text_cases {
            let mut out = String::from("kept");
            assert!(mask_plan(plan, PlanFormat::Text, &mut out).is_err(), "{name}: accepted");
            assert_eq!(out, "kept", "{name}");
        }
        let json = fixture!("seqscan_filter.json");
        let json_cases: &[(&str, &str)] = &[
            ("empty", ""),
            ("truncated", &json[..json.len() / 2]),
            ("no plan", "{\"Query Text\": \"SELECT 1\"}"),
            ("scalar", "4711"),
            ("text plan", fixture!("seqscan_filter.txt")),
        ];
        for (name, plan) in json_cases {
            let mut out = String::from("kept");
            assert!(mask_plan(plan, PlanFormat::Json, &mut out).is_err(), "{name}: accepted");
            assert_eq!(out, "kept", "{name}");
        }
    }

    #[test]
    fn mask_text_masks_suspicious_headers_and_unknown_lines() {
        // Not real PostgreSQL output: shapes the masker must not trust. Each
        // line below must reach the masker (which removes the quoted literal)
        // rather than be copied; with the real masker no 'zqzq' survives.
        let plan = "Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n  ->  Result 'zqzq'  (cost=0.00..1.00 rows=1 width=4)\n  Some Future Field: (a = 'zqzq')\n  (a = 'zqzq') loose line";
        let out = mask(plan, PlanFormat::Text);
        assert_eq!(out.lines().count(), 4);
        assert!(out.starts_with("Seq Scan on t  (cost=0.00..1.00 rows=1 width=4)\n"));
        assert!(!out.contains("zqzq"), "{out}");
    }

    #[test]
    fn mask_removes_every_literal_of_the_workload() {
        for (plans, format) in [(TEXT_PLANS, PlanFormat::Text), (JSON_PLANS, PlanFormat::Json)] {
            for (name, plan) in plans {
                let out = mask(plan, format);
                for literal in LITERALS {
                    assert!(!contains_token(&out, literal), "{name} ({format:?}): {literal} survived:\n{out}");
                }
            }
        }
        for body in [AUTO_TEXT, AUTO_JSON] {
            let split = split_auto_explain(body).unwrap();
            let out = mask(&split.plan, split.format);
            for literal in LITERALS {
                assert!(!contains_token(&out, literal), "auto_explain: {literal} survived:\n{out}");
            }
        }
    }

    #[test]
    fn fixtures_do_contain_the_literals() {
        // Guards the test above against passing vacuously after a regeneration.
        for (name, plan) in TEXT_PLANS.iter().chain(JSON_PLANS) {
            if *name == "hash_batches" || *name == "partitioned" {
                assert!(contains_token(plan, "zqzq"), "{name}");
            } else if *name == "nested_loop" {
                assert!(contains_token(plan, "47.11"), "{name}");
            } else {
                assert!(contains_token(plan, "4711"), "{name}");
            }
        }
    }
}
