//! Writes the seed corpora of the fuzz targets, `fuzz/corpus/<target>/seed-*`,
//! from the repository's real fixtures (PostgreSQL 15 logs and plans made by
//! `tests/fixtures/generate.sh`, the deploy configs) and from OTLP messages
//! the real pipeline encodes from those logs. Not a fuzz target: run it with
//! `scripts/fuzz.sh --seeds` (or `cargo run --bin seeds` in `fuzz/`).
//!
//! Seeds are small windows of the fixtures (a few KB, cut at entry starts),
//! spread over each file so that every kind of message is in some window.
//! The output is deterministic, so regenerating changes nothing.
//!
//! Built by `cargo fuzz build` with the targets, so it is linked like one
//! (the coverage instrumentation needs libFuzzer's runtime): the work is done
//! in libFuzzer's init hook, which exits before any fuzzing starts.
#![no_main]

use prost::Message;
use querywatch_agent::aggregate::{Aggregator, AggregatorConfig};
use querywatch_agent::logparse::{LogFormat, Parser, Prefix};
use querywatch_wire::observations::Observations;
use querywatch_wire::otlp::{ResourceInfo, encode_logs, encode_metrics};
use std::fs;
use std::path::{Path, PathBuf};

const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
/// Size of one log window.
const WINDOW: usize = 3000;
/// Windows per log file.
const WINDOWS: usize = 16;

libfuzzer_sys::fuzz_target!(init: generate_and_exit(), |_data: &[u8]| {});

fn generate_and_exit() {
    let code = match generate() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("seeds: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn generate() -> Result<(), Box<dyn std::error::Error>> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz.parent().ok_or("no repository root")?.to_path_buf();
    let pg15 = root.join("tests/fixtures/pg15");
    let plans = root.join("tests/fixtures/plans");
    let corpus = fuzz.join("corpus");
    let w = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), bytes)
    };

    // Logs: a seed byte (chunk size), then a window; stderr adds the prefix line.
    let stderr_prefix = "%m [%p] %P %q%u@%d/%a %c:%l %e %Q ";
    for (file, prefix) in [("postgresql.log", stderr_prefix), ("minimal-prefix.log", "%u@%d ")] {
        let log = fs::read(pg15.join(file))?;
        for (i, win) in windows(&log, |l| !l.starts_with(b"\t")).into_iter().enumerate() {
            let mut seed = vec![(i * 37) as u8];
            seed.extend_from_slice(prefix.as_bytes());
            seed.push(b'\n');
            seed.extend_from_slice(win);
            w("stderr_prefix", &format!("{file}-{i}"), &seed)?;
        }
    }
    // A line of each common prefix, to start the prefix grammar off.
    for (i, p) in querywatch_agent::logparse::COMMON_PREFIXES.iter().enumerate() {
        w(
            "stderr_prefix",
            &format!("prefix-{i}"),
            format!("\u{5}{p}\n2026-11-24 09:00:00.001 UTC [12] LOG:  duration: 1.5 ms  statement: SELECT 1\n")
                .as_bytes(),
        )?;
    }
    for (target, file) in
        [("csvlog", "postgresql.csv"), ("csvlog", "minimal-prefix.csv"), ("jsonlog", "postgresql.json")]
    {
        let log = fs::read(pg15.join(file))?;
        let starts = |l: &[u8]| if target == "jsonlog" { l.starts_with(b"{") } else { l.starts_with(b"20") };
        for (i, win) in windows(&log, starts).into_iter().enumerate() {
            let mut seed = vec![(i * 37) as u8];
            seed.extend_from_slice(win);
            w(target, &format!("{file}-{i}"), &seed)?;
        }
    }

    // Masking: the workload's statements (raw mode), and skeleton seeds.
    for entry in sorted_dir(&root.join("tests/fixtures/workload"))? {
        if entry.extension().is_some_and(|e| e == "sql") {
            let text = fs::read_to_string(&entry)?;
            let name = entry.file_stem().and_then(|s| s.to_str()).unwrap_or("sql");
            for (i, stmt) in text.split(";\n").filter(|s| !s.trim().is_empty()).take(12).enumerate() {
                let mut seed = vec![0u8];
                seed.extend_from_slice(stmt.as_bytes());
                w("mask", &format!("{name}-{i}"), &seed)?;
            }
        }
    }
    for i in 0..8u8 {
        // Odd seed byte: the bytes drive a skeleton; any bytes make one.
        let bytes: Vec<u8> = (0..64u32).map(|j| (j * 97 + u32::from(i) * 31) as u8).collect();
        w("mask", &format!("skeleton-{i}"), &[&[2 * i + 1][..], &bytes].concat())?;
    }

    // Plans: bodies, text and JSON plans, and fixture picks for injection.
    for entry in sorted_dir(&plans)? {
        let name = entry.file_name().and_then(|s| s.to_str()).unwrap_or("plan").to_owned();
        let mode = match entry.extension().and_then(|e| e.to_str()) {
            Some("log") => 0u8,
            Some("txt") => 1,
            Some("json") => 2,
            _ => continue,
        };
        w("plan", &name, &[&[mode][..], &fs::read(&entry)?].concat())?;
    }
    for i in 0..22u8 {
        w("plan", &format!("inject-{i}"), &[3, i, b'a' + i, b'0' + i % 10, b' ', b'x'])?;
    }

    // OTLP: what the real pipeline encodes from the csvlog fixture.
    let csv = fs::read(pg15.join("postgresql.csv"))?;
    let resource = ResourceInfo {
        service_version: "0.1.0".into(),
        service_instance_id: "agent-1".into(),
        host_name: "db-1.example".into(),
        server_address: "10.0.0.5".into(),
        server_port: Some(5432),
        node: "db-1".into(),
        cluster: "shop".into(),
        extra: Vec::new(),
    };
    for (i, win) in windows(&csv, |l| l.starts_with(b"20")).into_iter().enumerate().step_by(2) {
        let obs = observe(LogFormat::Csv, None, win);
        let metrics = encode_metrics(&obs, &resource, INTERVAL);
        let logs = encode_logs(&obs, &resource, INTERVAL);
        w("otlp_metrics_decode", &format!("csv-{i}"), &metrics.encode_to_vec())?;
        w("otlp_logs_decode", &format!("csv-{i}"), &logs.encode_to_vec())?;
        w("otlp_json", &format!("metrics-{i}"), &[&[0u8][..], &serde_json::to_vec(&metrics)?].concat())?;
        w("otlp_json", &format!("logs-{i}"), &[&[1u8][..], &serde_json::to_vec(&logs)?].concat())?;
    }
    for i in 0..4u8 {
        let bytes: Vec<u8> = (0..256u32).map(|j| (j * 131 + u32::from(i) * 17) as u8).collect();
        w("otlp_roundtrip", &format!("bytes-{i}"), &bytes)?;
    }

    // Configs: the deploy examples.
    for (seed, file) in [(0u8, "deploy/agent.toml"), (1, "deploy/collector.toml")] {
        w("config", file.trim_start_matches("deploy/"), &[&[seed][..], &fs::read(root.join(file))?].concat())?;
    }
    Ok(())
}

/// Up to [`WINDOWS`] windows of about [`WINDOW`] bytes spread over `log`,
/// each starting and ending at a line for which `starts` holds.
fn windows(log: &[u8], starts: impl Fn(&[u8]) -> bool) -> Vec<&[u8]> {
    let mut line_starts = vec![0];
    line_starts.extend(memchr_lines(log).filter(|&i| i < log.len() && starts(&log[i..])));
    let mut out = Vec::new();
    for k in 0..WINDOWS {
        let from = log.len() * k / WINDOWS;
        let Some(&a) = line_starts.iter().find(|&&s| s >= from) else { break };
        let b = line_starts.iter().copied().rfind(|&s| s > a && s <= a + WINDOW).unwrap_or(log.len().min(a + WINDOW));
        if b > a && out.last() != Some(&&log[a..b]) {
            out.push(&log[a..b]);
        }
    }
    out
}

/// Byte offsets just past each newline.
fn memchr_lines(log: &[u8]) -> impl Iterator<Item = usize> + '_ {
    log.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1)
}

/// The agent's parse and aggregate pipeline over one window.
fn observe(format: LogFormat, prefix: Option<Prefix>, log: &[u8]) -> Observations {
    let Ok(mut parser) = Parser::new(format, prefix, 1 << 20) else { return Observations::default() };
    let mut agg = Aggregator::new(AggregatorConfig::default());
    parser.parse(log, true, &mut |e| agg.entry(&e));
    agg.finish(parser.stats())
}

fn sorted_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<_> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}
