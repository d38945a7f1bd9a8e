//! The parsers against real PostgreSQL output (tests/fixtures/pg15, made by
//! tests/fixtures/generate.sh) and against arbitrary bytes: any chunking of
//! the input gives the same entries, and nothing panics or goes uncounted.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use querywatch_agent::logparse::{LogEntry, LogFormat, ParseStats, Parser, Prefix, detect_format, detect_prefix};

const STDERR: &[u8] = include_bytes!("../../tests/fixtures/pg15/postgresql.log");
const CSV: &[u8] = include_bytes!("../../tests/fixtures/pg15/postgresql.csv");
const JSON: &[u8] = include_bytes!("../../tests/fixtures/pg15/postgresql.json");
const CONF: &str = include_str!("../../tests/fixtures/workload/postgresql.conf");

/// The fixture run's `log_line_prefix`, from the config the generator used.
fn prefix() -> String {
    CONF.lines()
        .find_map(|l| {
            l.strip_prefix("log_line_prefix")?.split_once('\'').map(|(_, r)| r.rsplit_once('\'').unwrap().0.to_owned())
        })
        .expect("log_line_prefix in tests/fixtures/workload/postgresql.conf")
}

/// What we compare between runs: enough of every entry to catch a mix-up.
#[derive(Debug, PartialEq, Clone)]
struct Seen {
    line: u64,
    pid: Option<u32>,
    timestamp: Option<i64>,
    severity: Option<String>,
    message: String,
    detail: Option<String>,
    statement: Option<String>,
    user: Option<String>,
    database: Option<String>,
}

fn seen(e: &LogEntry<'_>) -> Seen {
    Seen {
        line: e.line,
        pid: e.pid,
        timestamp: e.timestamp,
        severity: e.severity.map(|s| format!("{s:?}")),
        message: e.message.to_string(),
        detail: e.detail.as_deref().map(str::to_owned),
        statement: e.statement.as_deref().map(str::to_owned),
        user: e.user.as_deref().map(str::to_owned),
        database: e.database.as_deref().map(str::to_owned),
    }
}

fn parser(format: LogFormat, cap: usize) -> Parser {
    Parser::new(format, Some(Prefix::compile(&prefix()).unwrap()), cap).unwrap()
}

/// Feeds `input` in pieces of the given sizes (cycled), the way a reader does.
fn run(format: LogFormat, input: &[u8], sizes: &[usize], cap: usize) -> (Vec<Seen>, ParseStats) {
    let mut p = parser(format, cap);
    let mut out = Vec::new();
    let (mut start, mut end, mut i) = (0usize, 0usize, 0usize);
    loop {
        end = (end + sizes[i % sizes.len()].max(1)).min(input.len());
        i += 1;
        let eof = end == input.len();
        start += p.parse(&input[start..end], eof, &mut |e| out.push(seen(&e)));
        if eof {
            break;
        }
    }
    assert_eq!(start, input.len(), "everything is consumed at eof");
    (out, p.stats().clone())
}

#[test]
fn fixtures_are_detected_and_fully_parsed() {
    assert_eq!(detect_format("postgresql.log", STDERR), LogFormat::Stderr);
    assert_eq!(detect_format("postgresql.csv", CSV), LogFormat::Csv);
    assert_eq!(detect_format("postgresql.json", JSON), LogFormat::Json);
    // Not one of the common prefixes (it has %P): the heuristic reads it.
    assert!(detect_prefix(STDERR).unwrap().is_heuristic());
    for (format, input) in [(LogFormat::Stderr, STDERR), (LogFormat::Csv, CSV), (LogFormat::Json, JSON)] {
        let (_, stats) = run(format, input, &[usize::MAX], 1 << 20);
        assert_eq!(stats.unparsed, 0, "{format}");
        assert_eq!(stats.truncated, 0, "{format}");
        assert_eq!(stats.bytes, input.len() as u64);
        assert_eq!(stats.lines, memchr::memchr_iter(b'\n', input).count() as u64, "{format}");
    }
}

#[test]
fn the_three_formats_carry_the_same_entries() {
    // Backends write each destination separately, so entries of different
    // processes may interleave differently: compare as sorted lists.
    fn key(mut e: Seen) -> Seen {
        e.line = 0;
        // stderr appends " at character N" to messages, csv/json keep it apart.
        if let Some((head, pos)) = e.message.rsplit_once(" at character ")
            && pos.bytes().all(|b| b.is_ascii_digit())
        {
            e.message = head.to_owned();
        }
        e
    }
    let sorted = |format, input| {
        let (mut v, _) = run(format, input, &[usize::MAX], 1 << 20);
        v = v.into_iter().map(key).collect();
        v.sort_by(|a, b| (a.timestamp, a.pid, &a.message).cmp(&(b.timestamp, b.pid, &b.message)));
        v
    };
    let s = sorted(LogFormat::Stderr, STDERR);
    let c = sorted(LogFormat::Csv, CSV);
    let j = sorted(LogFormat::Json, JSON);
    assert!(s.len() > 1000);
    assert_eq!(s.len(), c.len());
    assert_eq!(s.len(), j.len());
    for ((a, b), c) in s.iter().zip(&c).zip(&j) {
        assert_eq!(a, b);
        assert_eq!(b, c);
    }
}

#[test]
fn rotation_at_any_byte_is_recovered_by_the_next_file() {
    // A file cut at an arbitrary byte (rotation by size mid-entry cannot
    // happen in PostgreSQL, but truncated copies do): the cut entry is
    // still emitted, nothing panics, lines add up.
    let (whole, sw) = run(LogFormat::Stderr, STDERR, &[usize::MAX], 1 << 20);
    for cut in [1, 100, STDERR.len() / 3, STDERR.len() / 2 + 7] {
        let (a, sa) = run(LogFormat::Stderr, &STDERR[..cut], &[4096], 1 << 20);
        let (b, sb) = run(LogFormat::Stderr, &STDERR[cut..], &[4096], 1 << 20);
        // Every byte is accounted for; a line cut in two counts in both files.
        assert_eq!(sa.bytes + sb.bytes, sw.bytes);
        let mid_line = cut > 0 && STDERR[cut - 1] != b'\n';
        assert_eq!(sa.lines + sb.lines, sw.lines + u64::from(mid_line), "cut {cut}");
        // At most the entry at the cut is damaged: its head ends the first
        // file, its tail is not an entry in the second (counted unparsed, or
        // a continuation line without an entry).
        assert!(a.len() + b.len() + 1 >= whole.len() && a.len() + b.len() <= whole.len() + 1, "cut {cut}");
        assert_eq!(a[..a.len().saturating_sub(1)], whole[..a.len().saturating_sub(1)], "cut {cut}");
        assert_eq!(b.last().map(|e| &e.message), whole.last().map(|e| &e.message), "cut {cut}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn chunking_never_changes_what_is_parsed(sizes in prop::collection::vec(1usize..20_000, 1..8)) {
        for (format, input) in [(LogFormat::Stderr, STDERR), (LogFormat::Csv, CSV), (LogFormat::Json, JSON)] {
            let whole = run(format, input, &[usize::MAX], 1 << 20);
            let pieces = run(format, input, &sizes, 1 << 20);
            prop_assert_eq!(&pieces.0, &whole.0, "{}", format);
            prop_assert_eq!(&pieces.1, &whole.1, "{}", format);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_lines_add_up(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        sizes in prop::collection::vec(1usize..500, 1..4),
    ) {
        for format in [LogFormat::Stderr, LogFormat::Csv, LogFormat::Json] {
            let (entries, stats) = run(format, &bytes, &sizes, 256);
            prop_assert_eq!(stats.bytes, bytes.len() as u64);
            prop_assert!(entries.len() as u64 == stats.entries);
            prop_assert!(entries.iter().all(|e| e.message.len() <= 256 * 4));
        }
    }

    #[test]
    fn fixture_lines_with_garbage_spliced_in_still_parse(at in 0usize..700_000, junk in prop::collection::vec(any::<u8>(), 1..300)) {
        let at = at.min(STDERR.len());
        let mut input = STDERR[..at].to_vec();
        input.extend_from_slice(&junk);
        input.push(b'\n');
        input.extend_from_slice(&STDERR[at..]);
        let (entries, stats) = run(LogFormat::Stderr, &input, &[65_536], 1 << 20);
        let (clean, _) = run(LogFormat::Stderr, STDERR, &[usize::MAX], 1 << 20);
        // The junk can at worst damage the entry it lands in (and add one).
        prop_assert!(entries.len() + 1 >= clean.len() && entries.len() <= clean.len() + 1);
        prop_assert!(stats.lines >= memchr::memchr_iter(b'\n', STDERR).count() as u64);
    }
}
