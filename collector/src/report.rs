//! The report: top statements with latency percentiles, findings, and what
//! was read. One structure, rendered as JSON (stable, documented in the
//! README) or as a table for people.

use crate::findings::Finding;
use crate::store::Store;
use querywatch_wire::observations::InputStats;
use querywatch_wire::stats::StatementStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

/// Order of the statements table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Total,
    Mean,
    P99,
    Calls,
}

impl FromStr for SortKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "total" => Ok(SortKey::Total),
            "mean" => Ok(SortKey::Mean),
            "p99" => Ok(SortKey::P99),
            "calls" => Ok(SortKey::Calls),
            other => Err(format!("unknown sort key {other:?}: expected total, mean, p99 or calls")),
        }
    }
}

/// One statement row (per fingerprint, database and user).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QueryRow {
    pub fingerprint: String,
    /// Masked statement text (`$n` where literals were).
    pub query: String,
    pub database: String,
    pub user: String,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Rows, when the source knows them (the log does not: null).
    pub rows: Option<u64>,
    pub errors: u64,
    /// Share of all statement time in the report.
    pub share: f64,
    /// Errors by SQLSTATE.
    pub sqlstates: BTreeMap<String, u64>,
    pub temp_files: u64,
    pub temp_bytes: u64,
    /// `false` when pg_query could not parse the text (fallback fingerprint).
    pub parsed: bool,
    /// When the slowest execution happened.
    pub slowest_at: Option<String>,
    /// The slowest auto_explain plan, masked, when one was logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// What was read.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct InputSummary {
    /// files, bytes, lines, entries, unparsed, truncated, invalid_utf8,
    /// unattributed_durations, unreadable_files.
    #[serde(flatten)]
    pub counts: InputStats,
    /// Statements folded into `<other>` because a cap was reached.
    pub overflow_calls: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// Entries by message class.
    pub classes: BTreeMap<String, u64>,
    /// Errors with no statement to attribute them to, by SQLSTATE.
    pub unattributed_errors: BTreeMap<String, u64>,
}

/// How fingerprinting went: pg_query runs once per distinct shape.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct FingerprintSummary {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Shapes pg_query could not parse (fallback fingerprint).
    pub fallbacks: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub queries: Vec<QueryRow>,
    /// Statements in total, before `--top` cut the list.
    pub total_queries: usize,
    pub total_ms: f64,
    pub total_calls: u64,
    pub findings: Vec<Finding>,
    pub input: InputSummary,
    pub fingerprints: FingerprintSummary,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A percentile from the histogram, kept within the exact min and max: HDR
/// reports the top of a bucket, which can lie a fraction above the largest
/// value actually seen.
fn quantile(s: &StatementStats, q: f64) -> Duration {
    s.hist.quantile(q).clamp(s.min.unwrap_or_default(), s.max.max(s.min.unwrap_or_default()))
}

impl Report {
    /// Builds the report: rows sorted by `sort` (ties by fingerprint, so the
    /// output is deterministic), cut to `top` (0 = all).
    pub fn build(
        store: &Store,
        findings: Vec<Finding>,
        sort: SortKey,
        top: usize,
        format_time: impl Fn(i64) -> String,
    ) -> Report {
        let total: Duration = store.queries.values().map(|e| e.stats.total).sum();
        let total_calls = store.queries.values().map(|e| e.stats.calls).sum();
        let mut rows: Vec<QueryRow> = store
            .queries
            .iter()
            .filter(|(_, e)| e.stats.calls > 0 || e.stats.error_count() > 0 || e.stats.temp_files > 0)
            .map(|(k, e)| {
                let s = &e.stats;
                QueryRow {
                    fingerprint: k.fingerprint.to_string(),
                    query: e.text.clone(),
                    database: k.database.clone(),
                    user: k.user.clone(),
                    calls: s.calls,
                    total_ms: ms(s.total),
                    mean_ms: ms(s.mean()),
                    min_ms: ms(s.min.unwrap_or_default()),
                    max_ms: ms(s.max),
                    p50_ms: ms(quantile(s, 0.50)),
                    p95_ms: ms(quantile(s, 0.95)),
                    p99_ms: ms(quantile(s, 0.99)),
                    rows: s.rows,
                    errors: s.error_count(),
                    share: if total.is_zero() {
                        0.0
                    } else {
                        (s.total.as_secs_f64() / total.as_secs_f64() * 1e4).round() / 1e4
                    },
                    sqlstates: s.errors.iter().map(|(k, v)| (k.clone(), v.count)).collect(),
                    temp_files: s.temp_files,
                    temp_bytes: s.temp_bytes,
                    parsed: e.method == crate::fingerprint::Method::Parsed,
                    slowest_at: s.slowest.as_ref().and_then(|x| x.timestamp).map(&format_time),
                    plan: s.slowest_plan.as_ref().map(|p| p.plan.clone()),
                }
            })
            .collect();
        let metric = |r: &QueryRow| match sort {
            SortKey::Total => r.total_ms,
            SortKey::Mean => r.mean_ms,
            SortKey::P99 => r.p99_ms,
            SortKey::Calls => r.calls as f64,
        };
        rows.sort_by(|a, b| {
            metric(b)
                .total_cmp(&metric(a))
                .then_with(|| a.fingerprint.cmp(&b.fingerprint))
                .then_with(|| a.database.cmp(&b.database))
                .then_with(|| a.user.cmp(&b.user))
        });
        let total_queries = rows.len();
        if top > 0 {
            rows.truncate(top);
        }
        let i: &InputStats = &store.rest.input;
        let fp = store.fingerprint_stats();
        Report {
            fingerprints: FingerprintSummary { cache_hits: fp.hits, cache_misses: fp.misses, fallbacks: fp.fallbacks },
            queries: rows,
            total_queries,
            total_ms: ms(total),
            total_calls,
            findings,
            input: InputSummary {
                counts: i.clone(),
                overflow_calls: store.total_overflow_calls(),
                first_seen: store.rest.first_seen.map(&format_time),
                last_seen: store.rest.last_seen.map(&format_time),
                classes: store.rest.classes.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                unattributed_errors: store.rest.unattributed_errors.clone(),
            },
        }
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A table for a terminal `width` columns wide.
    pub fn to_text(&self, width: usize) -> String {
        let width = width.clamp(80, 400);
        let mut o = String::new();
        let i = &self.input;
        let _ = writeln!(
            o,
            "querywatch report: {} statements, {} calls, {:.1} ms total; {} files, {:.1} MiB, {} entries ({} unparsed lines)",
            self.total_queries,
            self.total_calls,
            self.total_ms,
            i.counts.files,
            i.counts.bytes as f64 / 1_048_576.0,
            i.counts.entries,
            i.counts.unparsed
        );
        if let (Some(a), Some(b)) = (&i.first_seen, &i.last_seen) {
            let _ = writeln!(o, "time range: {a} .. {b}");
        }
        let _ = writeln!(o);
        let head = format!(
            "{:>3} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5}  ",
            "#", "total ms", "share", "calls", "mean ms", "p95 ms", "p99 ms", "errs"
        );
        let room = width.saturating_sub(head.chars().count()).max(12);
        let _ = writeln!(o, "{head}query");
        for (n, r) in self.queries.iter().enumerate() {
            let flat: String = r.query.split_whitespace().collect::<Vec<_>>().join(" ");
            let q: String = if flat.chars().count() > room {
                flat.chars().take(room.saturating_sub(3)).collect::<String>() + "..."
            } else {
                flat
            };
            let _ = writeln!(
                o,
                "{:>3} {:>10.1} {:>5.1}% {:>8} {:>8.3} {:>8.3} {:>8.3} {:>5}  {q}",
                n + 1,
                r.total_ms,
                r.share * 100.0,
                r.calls,
                r.mean_ms,
                r.p95_ms,
                r.p99_ms,
                r.errors
            );
        }
        if self.queries.len() < self.total_queries {
            let _ = writeln!(o, "    ... {} more (use --top 0 for all)", self.total_queries - self.queries.len());
        }
        let _ = writeln!(o);
        if self.findings.is_empty() {
            let _ = writeln!(o, "findings: none");
        } else {
            let _ = writeln!(o, "findings:");
            for f in &self.findings {
                let sev = serde_json::to_value(f.severity).ok().and_then(|v| v.as_str().map(str::to_owned));
                let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
                let _ = writeln!(
                    o,
                    "  [{}] {}: {}\n      -> {}",
                    sev.unwrap_or_default(),
                    kind.unwrap_or_default(),
                    f.summary,
                    f.action
                );
            }
        }
        o
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use querywatch_wire::{Observations, StatementKey};

    fn store() -> Store {
        let mut o = Observations::default();
        for (text, calls, ms_each) in
            [("SELECT a FROM t", 3u64, 10u64), ("SELECT b FROM t", 10, 1), ("SELECT c FROM t", 1, 100)]
        {
            let key = StatementKey { database: "db".into(), user: "u".into(), text: text.into() };
            let s = o.statements.entry(key).or_default();
            for _ in 0..calls {
                s.record_call(Duration::from_millis(ms_each), Some(1000), text);
            }
        }
        let mut st = Store::new(StoreConfig::default());
        st.ingest(o);
        st
    }

    #[test]
    fn sorts_cuts_and_totals() {
        let r = Report::build(&store(), vec![], SortKey::Total, 2, |t| t.to_string());
        assert_eq!(r.total_queries, 3);
        assert_eq!(r.queries.len(), 2);
        assert_eq!(r.queries[0].query, "SELECT c FROM t");
        assert_eq!(r.queries[1].query, "SELECT a FROM t");
        assert_eq!(r.total_ms, 140.0);
        assert_eq!(r.total_calls, 14);
        let r = Report::build(&store(), vec![], SortKey::Calls, 0, |t| t.to_string());
        assert_eq!(r.queries[0].calls, 10);
        assert_eq!(r.queries[0].p99_ms, 1.0);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = Report::build(&store(), vec![], SortKey::Total, 0, |t| t.to_string());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for f in [
            "fingerprint",
            "query",
            "database",
            "user",
            "calls",
            "total_ms",
            "mean_ms",
            "min_ms",
            "max_ms",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "rows",
            "errors",
        ] {
            assert!(v["queries"][0].get(f).is_some(), "missing {f}");
        }
        for f in ["files", "bytes", "lines", "entries", "unparsed"] {
            assert!(v["input"].get(f).is_some(), "missing {f}");
        }
        assert!(v["findings"].is_array());
    }

    #[test]
    fn text_fits_the_width() {
        let r = Report::build(&store(), vec![], SortKey::Total, 0, |t| t.to_string());
        let t = r.to_text(80);
        let rows: Vec<&str> = t.lines().skip_while(|l| !l.trim_start().starts_with('#')).take(4).collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(rows.iter().all(|l| l.chars().count() <= 80), "{t}");
        assert!(t.contains("SELECT c FROM t"));
        let wide = Report::build(&store(), vec![], SortKey::Total, 0, |t| t.to_string()).to_text(200);
        assert!(wide.lines().filter(|l| l.contains("FROM t")).all(|l| l.chars().count() <= 200));
    }
}
