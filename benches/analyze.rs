//! Whole-process benchmark: `querywatch analyze` against pgbadger on the same
//! real PostgreSQL log set (`bench/generate-log.sh`, >= 64 MB, rotated).
//!
//!     cargo bench --bench analyze
//!
//! Measures wall time (median) and peak RSS (`/usr/bin/time -f %M`) of
//! querywatch with one job and with one job per core, and of pgbadger with one
//! job, in interleaved rounds so that noise from the shared machine hits all
//! three alike. Then checks that both reports agree on the top statements and
//! that querywatch left no line unparsed; exits non-zero when they do not.
//! Results are recorded by hand in BENCHMARKS.md.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only says how
//! to run it: a multi-minute run is not a test.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// pgbadger's documented stderr prefix; bench/generate-log.sh configures it.
const PREFIX: &str = "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ";
const QUERYWATCH_RUNS: usize = 5;
const PGBADGER_RUNS: usize = 3;
/// Our top statements checked against pgbadger, and how many must match.
const TOP: usize = 10;
const MIN_MATCHED: usize = 8;
/// Relative tolerance on call count and total duration.
const TOLERANCE: f64 = 0.01;

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("analyze bench: whole-process timings; run it with `cargo bench --bench analyze`");
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let querywatch = Path::new(env!("CARGO_BIN_EXE_querywatch"));
    let logs_dir = repo.join("target/bench-logs");
    let out_dir = repo.join("target/bench-analyze");

    if !logs_dir.is_dir() {
        eprintln!("analyze bench: {} missing, running bench/generate-log.sh", logs_dir.display());
        let status = Command::new("bash").arg(repo.join("bench/generate-log.sh")).status()?;
        ensure!(status.success(), "bench/generate-log.sh failed ({status})");
    }
    for tool in ["/usr/bin/time", "/usr/bin/pgbadger"] {
        ensure!(Path::new(tool).exists(), "{tool} not found: run scripts/deps.sh (as root)");
    }
    let logs = log_files(&logs_dir)?;
    let bytes: u64 = logs.iter().map(|p| p.metadata().map(|m| m.len())).sum::<std::io::Result<u64>>()?;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    std::fs::create_dir_all(&out_dir)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let qw_json = out_dir.join("querywatch.json");
    let pgb_json = out_dir.join("pgbadger.json");
    let qw = |jobs: usize| -> Command {
        let mut cmd = Command::new(querywatch);
        cmd.args(["analyze", "-j", &jobs.to_string(), "--format", "json", "--top", "0", "--no-progress"]);
        cmd.args(["--prefix", PREFIX]).args(&logs);
        cmd
    };
    let pgbadger = || -> Command {
        let mut cmd = Command::new("pgbadger");
        cmd.args(["-q", "-j", "1", "-f", "stderr", "--prefix", PREFIX, "-x", "json", "-o"]);
        cmd.arg(&pgb_json).args(&logs);
        cmd
    };

    println!("machine: {cores} cores, {}", cpu_model());
    println!("input: {} files, {mib:.1} MiB in {}", logs.len(), logs_dir.display());
    // Untimed first run: warms the page cache and gives the report to check.
    measure(qw(1), &qw_json)?;

    let mut runs: [Vec<Run>; 3] = Default::default();
    for round in 0..QUERYWATCH_RUNS {
        eprintln!("analyze bench: round {}/{QUERYWATCH_RUNS}", round + 1);
        runs[0].push(measure(qw(1), &qw_json)?);
        runs[1].push(measure(qw(cores), &qw_json)?);
        if round < PGBADGER_RUNS {
            runs[2].push(measure(pgbadger(), &out_dir.join("pgbadger.stdout"))?);
        }
    }

    let names = ["querywatch -j1".to_string(), format!("querywatch -j{cores}"), "pgbadger -j1".to_string()];
    let mut speed = [0.0; 3];
    println!();
    println!("{:<16} {:>9} {:>14} {:>13}  wall s of each run", "", "MiB/s", "wall s median", "peak RSS MiB");
    for (i, (name, rs)) in names.iter().zip(&runs).enumerate() {
        let wall = median(rs.iter().map(|r| r.wall_s).collect());
        let rss = rs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        speed[i] = mib / wall;
        let each: Vec<String> = rs.iter().map(|r| format!("{:.2}", r.wall_s)).collect();
        println!("{name:<16} {:>9.1} {wall:>14.3} {rss:>13.1}  {}", speed[i], each.join(" "));
    }
    println!();
    println!("per-core ratio querywatch/pgbadger: {:.1}x (target >= 100x)", speed[0] / speed[2]);
    println!(
        "multi-core: {} = {:.1}x pgbadger -j1, {:.2}x querywatch -j1",
        names[1],
        speed[1] / speed[2],
        speed[1] / speed[0]
    );

    let ours: Value = serde_json::from_reader(File::open(&qw_json)?).context("querywatch JSON")?;
    let theirs: Value = serde_json::from_reader(File::open(&pgb_json)?).context("pgbadger JSON")?;
    let unparsed = ours["input"]["unparsed"].as_u64().context("input.unparsed missing")?;
    println!();
    println!("querywatch input: {}", ours["input"]);
    let matched = agreement(&ours, &theirs, &parse_bind_ms(&logs)?)?;
    ensure!(unparsed == 0, "querywatch left {unparsed} lines unparsed in a clean log");
    ensure!(matched >= MIN_MATCHED, "only {matched} of our top {TOP} statements match pgbadger (need {MIN_MATCHED})");
    Ok(())
}

struct Run {
    wall_s: f64,
    rss_kib: u64,
}

/// Runs `cmd` under `/usr/bin/time -f %M`, stdout to `stdout` (the RSS figure
/// beside it, `.rss`); wall time and peak RSS. Fails when the command fails.
fn measure(cmd: Command, stdout: &Path) -> Result<Run> {
    let rss_file = stdout.with_extension("rss");
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "%M", "-o"]).arg(&rss_file).arg(cmd.get_program()).args(cmd.get_args());
    timed.stdout(File::create(stdout)?).stderr(Stdio::inherit());
    let start = Instant::now();
    let status = timed.status().with_context(|| format!("running {:?}", cmd.get_program()))?;
    let wall_s = start.elapsed().as_secs_f64();
    ensure!(status.success(), "{:?} failed ({status})", cmd.get_program());
    let rss = std::fs::read_to_string(&rss_file)?;
    // time(1) may prepend a "Command exited with non-zero status" line.
    let rss_kib = rss.lines().last().unwrap_or("").trim().parse().with_context(|| format!("RSS from {rss:?}"))?;
    Ok(Run { wall_s, rss_kib })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn log_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    ensure!(!logs.is_empty(), "no *.log in {}", dir.display());
    Ok(logs)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()));
    model.unwrap_or("unknown CPU").to_string()
}

/// pgbadger's per-statement duration is the `execute` line's only: `parse`
/// and `bind` durations of the extended protocol go to separate totals that
/// its JSON report does not break down per statement. querywatch adds them to
/// the statement's execution (as pg_stat_statements with track_planning
/// would). To compare like with like, sum the parse/bind durations from the
/// log itself, by shape key.
fn parse_bind_ms(logs: &[PathBuf]) -> Result<HashMap<String, f64>> {
    let mut sums: HashMap<String, f64> = HashMap::new();
    let mut flush = |cur: &mut Option<(f64, String)>| {
        if let Some((ms, text)) = cur.take() {
            *sums.entry(shape_key(&text)).or_default() += ms;
        }
    };
    for path in logs {
        let mut reader = BufReader::new(File::open(path)?);
        let mut raw = Vec::new();
        let mut cur: Option<(f64, String)> = None;
        while reader.read_until(b'\n', &mut raw)? > 0 {
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches('\n');
            if let Some(cont) = line.strip_prefix('\t') {
                if let Some((_, text)) = cur.as_mut() {
                    text.push('\n');
                    text.push_str(cont);
                }
            } else {
                flush(&mut cur);
                cur = parse_or_bind(line);
            }
            raw.clear();
        }
        flush(&mut cur);
    }
    Ok(sums)
}

/// `... LOG:  duration: 0.123 ms  parse <unnamed>: SELECT ...` -> (0.123, text).
fn parse_or_bind(line: &str) -> Option<(f64, String)> {
    let rest = &line[line.find("LOG:  duration: ")? + "LOG:  duration: ".len()..];
    let (ms, rest) = rest.split_once(" ms  ")?;
    if !(rest.starts_with("parse ") || rest.starts_with("bind ")) {
        return None;
    }
    let (_, text) = rest.split_once(": ")?;
    Some((ms.parse().ok()?, text.to_string()))
}

/// A crude, tool-neutral statement key: lowercase, literals and `$n` as `?`,
/// no whitespace, no trailing `;`, IN-lists as `in(...)`. It maps both a
/// statement's parse/bind text and pgbadger's normalized text to one key.
fn shape_key(sql: &str) -> String {
    let s: Vec<char> = sql.to_lowercase().chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let prev_ident = i > 0 && (s[i - 1].is_alphanumeric() || s[i - 1] == '_');
        if c == '\'' {
            i += 1;
            while i < s.len() {
                if s[i] == '\'' && s.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if s[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            out.push('?');
        } else if (c == '$' && s.get(i + 1).is_some_and(char::is_ascii_digit)) || (c.is_ascii_digit() && !prev_ident) {
            i += 1;
            while i < s.len() && (s[i].is_ascii_digit() || s[i] == '.') {
                i += 1;
            }
            out.push('?');
        } else {
            if !c.is_whitespace() {
                out.push(c);
            }
            i += 1;
        }
    }
    while out.ends_with(';') {
        out.pop();
    }
    // in(?,?,?) -> in(...), as pgbadger writes IN-lists.
    let mut key = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("in(") {
        let after = &rest[at + 3..];
        let list_len = after.find(')').filter(|&n| n > 0 && after[..n].chars().all(|c| c == '?' || c == ','));
        key.push_str(&rest[..at + 3]);
        match list_len {
            Some(n) => {
                key.push_str("...");
                rest = &after[n..];
            }
            None => rest = after,
        }
    }
    key.push_str(rest);
    key
}

struct Theirs<'a> {
    query: &'a str,
    count: f64,
    exec_ms: f64,
    parse_bind_ms: f64,
}

/// Prints our top statements next to pgbadger's matching entry; returns how
/// many match on call count and total duration within TOLERANCE.
fn agreement(ours: &Value, theirs: &Value, parse_bind: &HashMap<String, f64>) -> Result<usize> {
    let mut top: Vec<&Value> = ours["queries"].as_array().context("queries missing")?.iter().collect();
    top.sort_by(|a, b| num(&b["total_ms"]).total_cmp(&num(&a["total_ms"])));
    top.truncate(TOP);

    // pgbadger: normalyzed_info.<db>.<normalized query> = {count, duration, ...}
    let mut pgb = Vec::new();
    for per_db in theirs["normalyzed_info"].as_object().context("pgbadger normalyzed_info missing")?.values() {
        for (query, v) in per_db.as_object().context("pgbadger normalyzed_info.<db>")? {
            let extra = parse_bind.get(&shape_key(query)).copied().unwrap_or(0.0);
            pgb.push(Theirs { query, count: num(&v["count"]), exec_ms: num(&v["duration"]), parse_bind_ms: extra });
        }
    }
    if pgb.is_empty() {
        bail!("pgbadger reported no statements");
    }

    let close = |a: f64, b: f64| (a - b).abs() <= TOLERANCE * a.abs().max(b.abs());
    println!();
    println!("agreement: our top {TOP} by total time vs pgbadger (count and execute + parse/bind ms within 1%)");
    println!(
        "{:>2} {:>7} {:>10} | {:>7} {:>10} {:>10} {:>7} | {:<5} query (ours | pgbadger)",
        "#", "calls", "total ms", "count", "exec ms", "+parse/bd", "diff %", "match"
    );
    let (mut matched, mut strict) = (0, 0);
    for (rank, q) in top.iter().enumerate() {
        let (calls, total) = (num(&q["calls"]), num(&q["total_ms"]));
        // The pgbadger entry with the same call count and the closest total.
        let best = pgb.iter().filter(|p| close(p.count, calls)).min_by(|a, b| {
            let da = (a.exec_ms + a.parse_bind_ms - total).abs();
            let db = (b.exec_ms + b.parse_bind_ms - total).abs();
            da.total_cmp(&db)
        });
        let text = q["query"].as_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        match best {
            Some(p) => {
                let theirs_total = p.exec_ms + p.parse_bind_ms;
                let ok = close(theirs_total, total);
                matched += usize::from(ok);
                strict += usize::from(close(p.exec_ms, total));
                println!(
                    "{:>2} {calls:>7} {total:>10.1} | {:>7} {:>10.1} {:>10.1} {:>+7.2} | {:<5} {} | {}",
                    rank + 1,
                    p.count,
                    p.exec_ms,
                    p.parse_bind_ms,
                    100.0 * (total - theirs_total) / theirs_total,
                    if ok { "yes" } else { "NO" },
                    clip(&text, 40),
                    clip(p.query, 40)
                );
            }
            None => println!(
                "{:>2} {calls:>7} {total:>10.1} | {:>7} {:>10} {:>10} {:>7} | NO    {}",
                rank + 1,
                "-",
                "-",
                "-",
                "-",
                clip(&text, 40)
            ),
        }
    }
    println!("agreement: {matched}/{} match (need {MIN_MATCHED}); on execute time alone: {strict}", top.len());
    Ok(matched)
}

fn num(v: &Value) -> f64 {
    // pgbadger writes some numbers as strings ("max": "20.700").
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(f64::NAN)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).chain(['…']).collect() }
}
