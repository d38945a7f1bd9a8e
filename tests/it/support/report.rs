//! Running `querywatch analyze --format json` and reading its report.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::Command;

use serde::Deserialize;

/// What a report row and a pg_stat_statements group are matched by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub fingerprint: String,
    pub database: String,
    pub user: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}@{})", self.fingerprint, self.user, self.database)
    }
}

/// The JSON report, as documented for `analyze --format json`.
#[derive(Debug, Deserialize)]
pub struct Report {
    pub queries: Vec<QueryRow>,
    pub findings: Vec<Finding>,
    pub input: Input,
}

#[derive(Clone, Debug, Deserialize)]
pub struct QueryRow {
    pub fingerprint: String,
    pub query: String,
    pub database: Option<String>,
    pub user: Option<String>,
    pub calls: u64,
    pub total_ms: f64,
    pub mean_ms: Option<f64>,
    pub min_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    // `rows` is not read: logs carry no row counts to hold it to.
    /// A count, or counts by SQLSTATE; see [`QueryRow::error_count`].
    pub errors: serde_json::Value,
}

impl QueryRow {
    /// Total errors, whether the report gives a number or counts per SQLSTATE
    /// (an object of numbers, or an array of objects with a count).
    pub fn error_count(&self) -> u64 {
        fn count(v: &serde_json::Value) -> u64 {
            match v {
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                serde_json::Value::Object(m) => match m.get("count") {
                    Some(c) => count(c),
                    None => m.values().map(count).sum(),
                },
                serde_json::Value::Array(a) => a.iter().map(count).sum(),
                _ => 0,
            }
        }
        count(&self.errors)
    }

    pub fn key(&self) -> Key {
        Key {
            fingerprint: self.fingerprint.clone(),
            database: self.database.clone().unwrap_or_default(),
            user: self.user.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Finding {
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub summary: String,
    pub evidence: serde_json::Value,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Input {
    pub files: u64,
    pub bytes: u64,
    pub lines: u64,
    pub entries: u64,
    pub unparsed: u64,
}

/// Runs `querywatch analyze --format json --top 0 ARGS...` and parses the
/// report; fails the test with the program's stderr if it fails.
pub fn analyze<I, S>(args: I) -> Report
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_querywatch"))
        .args(["analyze", "--format", "json", "--top", "0"])
        .args(&args)
        .output()
        .expect("running querywatch analyze");
    assert!(
        out.status.success(),
        "querywatch analyze {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "querywatch analyze {args:?} printed no valid JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Report rows by key; a key must appear once.
pub fn by_key(report: &Report) -> BTreeMap<Key, QueryRow> {
    let mut map = BTreeMap::new();
    for q in &report.queries {
        if let Some(prev) = map.insert(q.key(), q.clone()) {
            panic!("the report lists {} twice:\n{prev:?}\n{q:?}", q.key());
        }
    }
    map
}

/// Checks what must hold in any report of `files`: the input counters match
/// the files, the per-statement statistics are ordered and consistent, and
/// findings are filled in. Panics listing every violation.
pub fn assert_consistent(report: &Report, files: &[&std::path::Path]) {
    let mut problems = Vec::new();
    let bytes: u64 =
        files.iter().map(|f| std::fs::metadata(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())).len()).sum();
    let lines: u64 = files
        .iter()
        .map(|f| {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
        })
        .sum();
    if report.input.files != files.len() as u64 {
        problems.push(format!("input.files {} != {}", report.input.files, files.len()));
    }
    if report.input.bytes != bytes {
        problems.push(format!("input.bytes {} != {bytes} (file sizes)", report.input.bytes));
    }
    if report.input.lines != lines {
        problems.push(format!("input.lines {} != {lines} (newlines in the files)", report.input.lines));
    }
    // HDR percentiles are exact to within 1%; allow that much disorder.
    let le = |a: f64, b: f64| a <= b * 1.01 + 0.001;
    for q in report.queries.iter().filter(|q| q.calls > 0) {
        let stats = [q.min_ms, q.p50_ms, q.p95_ms, q.p99_ms, q.max_ms, q.mean_ms];
        let [Some(min), Some(p50), Some(p95), Some(p99), Some(max), Some(mean)] = stats else {
            problems.push(format!("{}: missing statistics with {} calls: {stats:?}", q.key(), q.calls));
            continue;
        };
        let ordered = le(min, p50) && le(p50, p95) && le(p95, p99) && le(p99, max) && le(min, mean) && le(mean, max);
        let mean_ok = (mean - q.total_ms / q.calls as f64).abs() <= 0.01 + mean * 0.001;
        // `min >= 0.0` is false for NaN too.
        let non_negative = min >= 0.0;
        if !ordered || !mean_ok || !non_negative {
            problems.push(format!(
                "{}: inconsistent statistics: calls {}, total {}, min {min}, p50 {p50}, p95 {p95}, p99 {p99}, max {max}, mean {mean}",
                q.key(),
                q.calls,
                q.total_ms
            ));
        }
    }
    for f in &report.findings {
        if f.kind.is_empty()
            || f.severity.is_empty()
            || f.subject.is_empty()
            || f.summary.is_empty()
            || f.evidence.is_null()
        {
            problems.push(format!("finding with empty parts: {f:?}"));
        }
    }
    assert!(problems.is_empty(), "inconsistent report of {files:?}:\n  {}", problems.join("\n  "));
}
