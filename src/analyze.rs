//! `querywatch analyze`: the agent's parser feeding the collector's store
//! and report in one process — the live pipeline, offline.
//!
//! Files are processed in parallel (one per core); each becomes an
//! `Observations` value bounded by the shape caps, and the store merges
//! them. Memory therefore depends on the number of distinct statements,
//! not on the size of the logs. Rotated sets are taken in name order.
//!
//! Pairing lines of one session (extended protocol, `log_duration`) works
//! within a file; a session cut by rotation loses at most the pairing of
//! the lines at the cut, which is counted as unattributed.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use querywatch_agent::aggregate::{Aggregator, AggregatorConfig};
use querywatch_agent::logparse::{self, LogFormat, Parser, Prefix, time};
use querywatch_collector::findings::{DetectorConfig, detect};
use querywatch_collector::report::{Report, SortKey};
use querywatch_collector::snapshot::Snapshot;
use querywatch_collector::store::{Store, StoreConfig};
use querywatch_wire::Observations;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum InputFormat {
    /// Detect per file from its first lines (and name).
    Auto,
    Stderr,
    Csvlog,
    Jsonlog,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Sort {
    Total,
    Mean,
    P99,
    Calls,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  querywatch analyze /var/log/postgresql/postgresql-15-main.log\n  querywatch analyze --format json --top 0 'pg_log/postgresql-*.csv'\n  querywatch analyze --prefix '%t [%p]: user=%u,db=%d ' --since '2026-11-24 09:00' postgresql.log.1.gz"
)]
pub struct AnalyzeArgs {
    /// Log files, directories (their files, in name order), glob patterns, or `-` for standard input; gzip is detected.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
    /// Log format of the input.
    #[arg(long = "log-format", value_enum, default_value = "auto")]
    log_format: InputFormat,
    /// The server's log_line_prefix, for stderr logs (default: recognize common prefixes).
    #[arg(long)]
    prefix: Option<String>,
    /// Statements to list (0 = all).
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Order of the statements.
    #[arg(long, value_enum, default_value = "total")]
    sort: Sort,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
    /// Only entries at or after this time ("YYYY-MM-DD[ HH:MM[:SS[.mmm]]][ UTC|+hh]").
    #[arg(long)]
    since: Option<String>,
    /// Only entries before this time (same format as --since).
    #[arg(long)]
    until: Option<String>,
    /// Files processed at once (default: one per core).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Longest log entry kept; longer entries are truncated and counted.
    #[arg(long, default_value_t = logparse::DEFAULT_ENTRY_CAP)]
    max_entry_bytes: usize,
    /// Distinct statement shapes tracked per file; the rest fold into "<other>" (counted).
    #[arg(long, default_value_t = 20_000)]
    max_shapes: usize,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
}

/// Validated settings for one run.
struct Settings {
    files: Vec<PathBuf>,
    format: Option<LogFormat>,
    prefix: Option<Prefix>,
    agg: AggregatorConfig,
    cap: usize,
}

const CHUNK: usize = 4 << 20;
/// The path that means standard input.
const STDIN: &str = "-";

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let settings = settings(&args)?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build().context("starting worker threads")?;

    let total_bytes: u64 = settings.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let progress = if !args.no_progress && std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(total_bytes);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };

    let results: Vec<(PathBuf, Result<Observations, FileError>)> = pool
        .install(|| settings.files.par_iter().map(|f| (f.clone(), analyze_file(f, &settings, &progress))).collect());
    progress.finish_and_clear();

    let mut store = Store::new(StoreConfig::default());
    let mut readable = 0;
    for (path, result) in results {
        match result {
            Ok(obs) => {
                readable += 1;
                store.ingest(obs);
            }
            Err(e) => {
                eprintln!("querywatch: warning: {}: {e}", path.display());
                let mut obs = Observations::default();
                obs.input.unreadable_files = 1;
                store.ingest(obs);
            }
        }
    }
    if readable == 0 {
        bail!("none of the {} input file(s) could be read", settings.files.len());
    }
    // The live collector's detectors, over the whole input as one snapshot.
    let findings = detect(&Snapshot::from_store(&store, ""), &DetectorConfig::default());
    let sort = match args.sort {
        Sort::Total => SortKey::Total,
        Sort::Mean => SortKey::Mean,
        Sort::P99 => SortKey::P99,
        Sort::Calls => SortKey::Calls,
    };
    let report = Report::build(&store, findings, sort, args.top, time::format_timestamp);
    match args.format {
        OutputFormat::Json => println!("{}", report.to_json()),
        OutputFormat::Text => {
            let width = terminal_size::terminal_size().map_or(120, |(w, _)| usize::from(w.0));
            print!("{}", report.to_text(width));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn settings(args: &AnalyzeArgs) -> anyhow::Result<Settings> {
    let prefix = match &args.prefix {
        Some(p) => Some(Prefix::compile(p).context("--prefix")?),
        None => None,
    };
    let format = match args.log_format {
        InputFormat::Auto => None,
        InputFormat::Stderr => Some(LogFormat::Stderr),
        InputFormat::Csvlog => Some(LogFormat::Csv),
        InputFormat::Jsonlog => Some(LogFormat::Json),
    };
    if args.max_entry_bytes < 1024 {
        bail!("--max-entry-bytes {} is too small: use at least 1024", args.max_entry_bytes);
    }
    let agg = AggregatorConfig {
        max_shapes: args.max_shapes.max(1),
        max_text: args.max_entry_bytes,
        since: args.since.as_deref().map(|s| parse_time(s, "--since")).transpose()?,
        until: args.until.as_deref().map(|s| parse_time(s, "--until")).transpose()?,
        ..AggregatorConfig::default()
    };
    Ok(Settings { files: expand_paths(&args.paths)?, format, prefix, agg, cap: args.max_entry_bytes })
}

/// Accepts `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS[.mmm]`, each
/// optionally followed by a zone as PostgreSQL writes it.
fn parse_time(s: &str, flag: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let mut full = s.to_owned();
    let date_only = s.len() == 10;
    let no_seconds = s.len() >= 16 && s.as_bytes().get(16).is_none_or(|b| *b == b' ') && s.as_bytes()[13] == b':';
    if date_only {
        full.push_str(" 00:00:00");
    } else if no_seconds {
        full.insert_str(16, ":00");
    }
    match time::parse_timestamp(full.as_bytes()) {
        Some((t, n)) if n == full.len() => Ok(t),
        _ => bail!("{flag} {s:?}: expected a time like \"2026-11-24 09:00\" or \"2026-11-24 09:00:00.000 UTC\""),
    }
}

/// Files, directories (their regular files, sorted) and globs, in order,
/// without duplicates. In a directory that holds the same log in several
/// formats (`x.log`, `x.csv`, `x.json`: log_destination with more than one
/// target), only one format is taken so nothing is counted twice.
fn expand_paths(paths: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if p == STDIN {
            out.push(path.to_path_buf());
        } else if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {p}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .collect();
            files.sort();
            out.extend(one_format_per_log(files));
        } else if path.exists() {
            out.push(path.to_path_buf());
        } else if p.contains(['*', '?', '[']) {
            let mut files: Vec<PathBuf> = glob::glob(p)
                .with_context(|| format!("bad glob pattern {p}"))?
                .filter_map(Result::ok)
                .filter(|f| f.is_file())
                .collect();
            if files.is_empty() {
                bail!("no file matches {p}");
            }
            files.sort();
            // As for a directory: `postgresql-*` with log_destination =
            // 'stderr,csvlog' matches each log twice, once per format.
            out.extend(one_format_per_log(files));
        } else {
            bail!("{p}: no such file or directory");
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.clone()));
    Ok(out)
}

fn one_format_per_log(files: Vec<PathBuf>) -> Vec<PathBuf> {
    // stem → (rank, path); csvlog carries the most fields, then jsonlog.
    let rank = |f: &Path| {
        let name = f.to_string_lossy();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".csv") {
            0
        } else if name.ends_with(".json") {
            1
        } else if name.ends_with(".log") {
            2
        } else {
            3
        }
    };
    let stem = |f: &Path| {
        let name = f.to_string_lossy().into_owned();
        let name = name.strip_suffix(".gz").unwrap_or(&name).to_owned();
        for ext in [".csv", ".json", ".log"] {
            if let Some(s) = name.strip_suffix(ext) {
                return s.to_owned();
            }
        }
        name
    };
    let mut best: BTreeMap<String, (u8, PathBuf)> = BTreeMap::new();
    let mut dropped = Vec::new();
    for f in files {
        let (s, r) = (stem(&f), rank(&f));
        match best.get(&s) {
            Some((br, _)) if *br <= r => dropped.push(f),
            Some(_) => {
                if let Some((_, old)) = best.insert(s, (r, f)) {
                    dropped.push(old);
                }
            }
            None => {
                best.insert(s, (r, f));
            }
        }
    }
    for d in &dropped {
        eprintln!("querywatch: note: skipping {} (the same log in another format is read instead)", d.display());
    }
    best.into_values().map(|(_, p)| p).collect()
}

/// Why one file could not be analyzed.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("nothing could be read (the read failed at its first byte)")]
    Unread,
}

/// Opens a file (or standard input for `-`), decompressing gzip by its
/// magic bytes. The magic is peeked through a buffer rather than by
/// reopening, so pipes (`<(zcat …)`, `-`) work too.
fn open(path: &Path) -> Result<Box<dyn Read + Send>, FileError> {
    let inner: Box<dyn Read + Send> = if path == Path::new(STDIN) {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(FileError::Open)?)
    };
    let mut buffered = BufReader::with_capacity(64 << 10, inner);
    let gz = buffered.fill_buf().map_err(FileError::Open)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(MultiGzDecoder::new(buffered)) } else { Box::new(buffered) })
}

fn analyze_file(path: &Path, s: &Settings, progress: &ProgressBar) -> Result<Observations, FileError> {
    let mut reader = open(path)?;
    let mut buf = vec![0u8; CHUNK + s.cap];
    let (mut start, mut end) = (0usize, 0usize);
    let mut eof = false;
    let mut read_total = 0u64;
    let name = path.to_string_lossy();
    // A read error (a truncated .gz, an I/O error) ends the file where it
    // happened: what was read is still analyzed, and the file is counted.
    let partial = std::cell::Cell::new(false);
    let read = |reader: &mut Box<dyn Read + Send>, dst: &mut [u8], total: &mut u64| loop {
        match reader.read(dst) {
            Ok(n) => {
                *total += n as u64;
                progress.inc(n as u64);
                return n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!(
                    "querywatch: warning: {name}: read failed after {total} bytes ({e}); analyzing what was read"
                );
                partial.set(true);
                return 0;
            }
        }
    };
    // Fill the first chunk to detect the format and prefix.
    while end < CHUNK && !eof {
        let n = read(&mut reader, &mut buf[end..CHUNK], &mut read_total);
        eof = n == 0;
        end += n;
    }
    if partial.get() && read_total == 0 {
        // A corrupt .gz header, say: a file with nothing read is not read.
        return Err(FileError::Unread);
    }
    let format = s.format.unwrap_or_else(|| logparse::detect_format(&name, &buf[..end]));
    // Candidates the head cannot tell apart (it holds only background
    // lines): the first session line settles them, as in the agent.
    let mut alternatives = Vec::new();
    let prefix = match (&s.prefix, format) {
        (Some(p), _) => Some(p.clone()),
        (None, LogFormat::Stderr) => {
            let detected = logparse::detect_prefix_with_alternatives(&buf[..end]).map(|(p, others)| {
                alternatives = others;
                p
            });
            match &detected {
                None if end > 0 => eprintln!(
                    "querywatch: warning: {name}: does not look like a PostgreSQL stderr log (no `LOG:  `-style \
                     lines recognized); pass --log-format and --prefix (SHOW log_line_prefix)"
                ),
                Some(p) if p.is_heuristic() => eprintln!(
                    "querywatch: note: {name}: log_line_prefix not recognized; reading it without user and database \
                     names. Pass --prefix with the server's log_line_prefix (SHOW log_line_prefix) for those"
                ),
                _ => {}
            }
            detected
        }
        _ => None,
    };
    // Only a bad --prefix could fail here, and that was checked up front.
    let mut parser = Parser::new(format, prefix, s.cap)
        .map_err(|e| FileError::Open(std::io::Error::other(e)))?
        .with_alternatives(alternatives);
    let mut agg = Aggregator::new(s.agg.clone());
    let mut sink = |e: logparse::LogEntry<'_>| agg.entry(&e);
    loop {
        let consumed = parser.parse(&buf[start..end], eof, &mut sink);
        start += consumed;
        if eof {
            break;
        }
        // Keep the unconsumed tail, then read more behind it.
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if end == buf.len() {
            // The parsers consume anything over the cap, so this is a
            // cap-sized entry plus a partial line: make room for one chunk.
            buf.resize(buf.len() + CHUNK, 0);
        }
        let n = read(&mut reader, &mut buf[end..], &mut read_total);
        end += n;
        eof = n == 0;
    }
    let mut obs = agg.finish(parser.stats());
    obs.input.files = 1;
    obs.input.unreadable_files = u64::from(partial.get());
    if obs.input.entries == 0 && obs.input.lines > 0 {
        eprintln!(
            "querywatch: warning: {name}: no PostgreSQL log entry recognized in {} lines; check --log-format and \
             --prefix (SHOW log_line_prefix)",
            obs.input.lines
        );
    }
    if (s.agg.since.is_some() || s.agg.until.is_some()) && obs.first_seen.is_none() && obs.input.entries > 0 {
        eprintln!(
            "querywatch: warning: {name}: entries carry no time, so --since/--until cannot filter them: all are kept"
        );
    }
    Ok(obs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    const LOG: &[u8] = b"2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 1.500 ms  statement: SELECT 1\n\
2026-11-24 09:00:01.001 UTC [10] LOG:  duration: 2.500 ms  statement: SELECT 2\n";

    fn settings(files: Vec<PathBuf>) -> Settings {
        Settings { files, format: None, prefix: None, agg: AggregatorConfig::default(), cap: 1 << 20 }
    }

    #[test]
    fn times_accept_dates_minutes_and_zones() {
        let day = parse_time("2026-11-24", "--since").unwrap();
        assert_eq!(parse_time("2026-11-24 00:00", "--since").unwrap(), day);
        assert_eq!(parse_time("2026-11-24 01:00:00 +01", "--since").unwrap(), day);
        assert_eq!(parse_time("2026-11-24 00:00:00.000 UTC", "--since").unwrap(), day);
        let err = parse_time("yesterday", "--since").unwrap_err().to_string();
        assert!(err.contains("--since") && err.contains("2026-11-24 09:00"), "{err}");
    }

    #[test]
    fn gzip_input_reads_like_plain_input() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.log");
        std::fs::write(&plain, LOG).unwrap();
        let gz = dir.path().join("b.log.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(LOG).unwrap();
        enc.finish().unwrap();
        let s = settings(vec![]);
        let a = analyze_file(&plain, &s, &ProgressBar::hidden()).unwrap();
        let b = analyze_file(&gz, &s, &ProgressBar::hidden()).unwrap();
        assert_eq!(a.input.entries, 2);
        assert_eq!(a.input, b.input);
        assert_eq!(a.statements.len(), 1, "SELECT 1 and SELECT 2 are one shape");
        let stats = a.statements.values().next().unwrap();
        assert_eq!((stats.calls, stats.total), (2, std::time::Duration::from_millis(4)));
    }

    #[test]
    fn directories_take_one_format_per_log_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["pg-2.log", "pg-1.log", "pg-1.csv", "pg-1.json", "pg-3.json"] {
            std::fs::write(dir.path().join(name), LOG).unwrap();
        }
        let files = expand_paths(&[dir.path().to_string_lossy().into_owned()]).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["pg-1.csv", "pg-2.log", "pg-3.json"]);
        let pattern = format!("{}/pg-*.log", dir.path().display());
        assert_eq!(expand_paths(&[pattern]).unwrap().len(), 2);
        // A glob over every format takes one per log too.
        let pattern = format!("{}/pg-*", dir.path().display());
        let names: Vec<String> = expand_paths(&[pattern])
            .unwrap()
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pg-1.csv", "pg-2.log", "pg-3.json"]);
        let err = expand_paths(&[format!("{}/nope-*.log", dir.path().display())]).unwrap_err().to_string();
        assert!(err.contains("no file matches"), "{err}");
        let err = expand_paths(&["/no/such/file.log".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn pipes_are_read_without_reopening() {
        // A FIFO cannot be reopened to re-read its first bytes: the gzip
        // sniffing must work through the buffer.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.log");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        let writer_path = fifo.clone();
        let writer = std::thread::spawn(move || std::fs::write(writer_path, LOG).unwrap());
        let obs = analyze_file(&fifo, &settings(vec![]), &ProgressBar::hidden()).unwrap();
        writer.join().unwrap();
        assert_eq!(obs.input.entries, 2);
        assert_eq!(obs.input.bytes, LOG.len() as u64);
    }

    #[test]
    fn a_truncated_gzip_keeps_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("cut.log.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for _ in 0..2000 {
            enc.write_all(LOG).unwrap();
        }
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let obs = analyze_file(&gz, &settings(vec![]), &ProgressBar::hidden()).unwrap();
        assert_eq!(obs.input.unreadable_files, 1);
        assert!(obs.input.entries > 100, "{} entries kept", obs.input.entries);
        // A gzip whose header is already corrupt: nothing read, not read.
        let bad = dir.path().join("bad.log.gz");
        std::fs::write(&bad, [0x1f, 0x8b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        let err = analyze_file(&bad, &settings(vec![]), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, FileError::Unread), "{err}");
    }

    /// The privacy line (DESIGN.md): no string literal of the fixture
    /// workload may appear anywhere in the report of its logs — statement
    /// texts, plans, error messages, lock groups, findings' evidence.
    #[test]
    fn reports_of_the_fixture_logs_contain_no_workload_literal() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut literals = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(root.join("tests/fixtures/workload")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sql") {
                literals.extend(string_literals(&std::fs::read_to_string(path).unwrap()));
            }
        }
        // Short or letter-free literals ('a', '1F', '64kB', 'note ' — also a
        // column name) could match any text by accident; the rest are
        // distinctive.
        let literals: Vec<String> = literals
            .into_iter()
            .map(|l| l.trim().to_owned())
            .filter(|l| l.chars().count() >= 5 && l.chars().any(char::is_alphabetic))
            .collect();
        assert!(literals.len() >= 10, "too few literals to mean anything: {literals:?}");

        let conf = std::fs::read_to_string(root.join("tests/fixtures/workload/postgresql.conf")).unwrap();
        let prefix = conf
            .lines()
            .find_map(|l| l.strip_prefix("log_line_prefix = '")?.split_once('\'').map(|(p, _)| p.to_owned()))
            .unwrap();
        let mut s = settings(vec![]);
        s.prefix = Some(Prefix::compile(&prefix).unwrap());
        for file in ["postgresql.log", "postgresql.csv", "postgresql.json"] {
            let obs = analyze_file(&root.join("tests/fixtures/pg15").join(file), &s, &ProgressBar::hidden()).unwrap();
            let mut store = Store::new(StoreConfig::default());
            store.ingest(obs);
            let findings = detect(&Snapshot::from_store(&store, ""), &DetectorConfig::default());
            let json = Report::build(&store, findings, SortKey::Total, 0, time::format_timestamp).to_json();
            // Compare against the decoded strings, not the escaped JSON.
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let mut texts = Vec::new();
            collect_strings(&value, &mut texts);
            for lit in &literals {
                let hit = texts.iter().find(|t| t.contains(lit.as_str()));
                assert!(hit.is_none(), "{file}: literal {lit:?} leaked into {hit:?}");
            }
        }
    }

    fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push(k.clone());
                collect_strings(x, out)
            }),
            _ => {}
        }
    }

    /// Contents of the `'…'` literals of a SQL text (with `''` undoubled),
    /// skipping comments and `$$` bodies (function code, not data).
    fn string_literals(sql: &str) -> Vec<String> {
        let b = sql.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'$' => {
                    let tag_end = sql[i + 1..].find('$').map(|j| i + 1 + j);
                    match tag_end {
                        Some(e) if sql[i + 1..e].chars().all(|c| c.is_alphanumeric() || c == '_') => {
                            let tag = &sql[i..=e];
                            i = sql[e + 1..].find(tag).map_or(b.len(), |j| e + 1 + j + tag.len());
                        }
                        _ => i += 1,
                    }
                }
                b'\'' => {
                    let mut lit = String::new();
                    i += 1;
                    while i < b.len() {
                        if b[i] == b'\'' && b.get(i + 1) == Some(&b'\'') {
                            lit.push('\'');
                            i += 2;
                        } else if b[i] == b'\'' {
                            break;
                        } else {
                            let c = sql[i..].chars().next().unwrap();
                            lit.push(c);
                            i += c.len_utf8();
                        }
                    }
                    i += 1;
                    out.push(lit);
                }
                _ => i += 1,
            }
        }
        out
    }

    #[test]
    fn time_window_filters_entries() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.log");
        std::fs::write(&plain, LOG).unwrap();
        let mut s = settings(vec![]);
        s.agg.since = Some(parse_time("2026-11-24 09:00:01", "--since").unwrap());
        let obs = analyze_file(&plain, &s, &ProgressBar::hidden()).unwrap();
        assert_eq!(obs.statements.values().map(|v| v.calls).sum::<u64>(), 1);
    }
}
