//! Reading PostgreSQL logs: stderr (any `log_line_prefix`), csvlog and
//! jsonlog, into format-agnostic [`LogEntry`] values.
//!
//! All three parsers share one contract: `parse(buf, eof, sink)` consumes
//! the complete entries at the front of `buf` and returns how many bytes it
//! consumed; the caller keeps the rest and calls again with more bytes. An
//! entry larger than the cap is emitted truncated and counted, so a caller
//! whose buffer holds `cap` plus one read never needs a bigger one.

pub mod csvlog;
pub mod entry;
pub mod jsonlog;
pub mod prefix;
pub mod stderr;
pub mod time;

pub use entry::{LogEntry, Secondary, SessionKey, Severity, SqlState};
pub use prefix::{Prefix, PrefixError};

use std::fmt;
use std::str::FromStr;

/// Default cap on one log entry (message with all its lines).
pub const DEFAULT_ENTRY_CAP: usize = 1 << 20;

/// Counters every parser keeps: the wire's input counters, so what a
/// parser counted merges into `Observations` as is. Parsers fill bytes,
/// lines, entries, unparsed, truncated and invalid_utf8.
pub type ParseStats = querywatch_wire::observations::InputStats;

/// Counts one emitted entry.
fn count_entry(stats: &mut ParseStats, truncated: bool, lossy: bool) {
    stats.entries += 1;
    stats.truncated += u64::from(truncated);
    stats.invalid_utf8 += u64::from(lossy);
}

/// The log formats PostgreSQL writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogFormat {
    Stderr,
    Csv,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Stderr => "stderr",
            LogFormat::Csv => "csvlog",
            LogFormat::Json => "jsonlog",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stderr" => Ok(LogFormat::Stderr),
            "csvlog" | "csv" => Ok(LogFormat::Csv),
            "jsonlog" | "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: expected stderr, csvlog or jsonlog")),
        }
    }
}

/// `log_line_prefix` values tried when none is given, most specific first.
/// PostgreSQL's default since 10 is `%m [%p] `; the others are the common
/// recommendations (pgbadger's, Debian's, cloud providers').
pub const COMMON_PREFIXES: &[&str] = &[
    "%m [%p] %q%u@%d/%a %c:%l %e %Q ",
    "%m [%p] %q%u@%d ",
    "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: user=%u,db=%d,app=%a,client=%h ",
    "%t [%p]: [%l-1] ",
    "%m [%p]: [%l-1] ",
    "%t:%r:%u@%d:[%p]:",
    "%m:%r:%u@%d:[%p]:",
    "%m [%p] ",
    "%t [%p] ",
    "%m ",
    "%t ",
];

/// Guesses the format from the first bytes of a file (and its name).
pub fn detect_format(name: &str, head: &[u8]) -> LogFormat {
    let first = head.split(|b| *b == b'\n').map(|l| l.trim_ascii()).find(|l| !l.is_empty()).unwrap_or_default();
    if first.starts_with(b"{") {
        return LogFormat::Json;
    }
    if time::parse_timestamp(first).is_some_and(|(_, n)| first.get(n) == Some(&b',')) {
        return LogFormat::Csv;
    }
    let name = name.strip_suffix(".gz").unwrap_or(name);
    if name.ends_with(".json") {
        LogFormat::Json
    } else if name.ends_with(".csv") {
        LogFormat::Csv
    } else {
        LogFormat::Stderr
    }
}

/// Picks the `log_line_prefix` for a stderr log from its first lines: the
/// candidate of [`COMMON_PREFIXES`] that matches the most lines, as long as
/// it matches nearly all the lines the heuristic prefix recognizes (an
/// exact prefix also yields user and database). Otherwise the heuristic
/// prefix, when it recognizes at least a fifth of the lines. `None` when the
/// text does not look like a PostgreSQL stderr log at all.
pub fn detect_prefix(head: &[u8]) -> Option<Prefix> {
    detect_prefix_with_alternatives(head).map(|(p, _)| p)
}

/// [`detect_prefix`], and the candidates the head could not tell from it.
///
/// Lines of background processes (checkpointer, autovacuum launcher) stop
/// at `%q`, so they match every candidate that shares the part before it:
/// `%m [%p] %q%u@%d ` (Debian's) and `%m [%p] %q%u@%d/%a …` alike. A file
/// that starts with such lines (a rotation at a quiet hour) once got the
/// first of those, and every session line after it went unparsed: the
/// whole file lost. Lines that get past `%q` (with a user or database)
/// now rank first, and when there are none the tied candidates come back
/// as alternatives for the parser to settle on at the first session line
/// ([`Parser::with_alternatives`]).
pub fn detect_prefix_with_alternatives(head: &[u8]) -> Option<(Prefix, Vec<Prefix>)> {
    let lines: Vec<&[u8]> = head.split(|b| *b == b'\n').filter(|l| !l.is_empty() && l[0] != b'\t').take(400).collect();
    if lines.is_empty() {
        return None;
    }
    // A hit counts only when the user and database it found contain no
    // space: free-text fields may contain spaces in principle, and a wrong
    // candidate would otherwise "match" by swallowing the rest of the prefix.
    // (lines matched, of which past `%q`)
    let count = |p: &Prefix| {
        let (mut hits, mut full) = (0, 0);
        for l in &lines {
            let Some(m) = p.matches(l) else { continue };
            let named = m.read_session_names(l);
            if !named && (m.fields.user.is_some() || m.fields.database.is_some()) {
                continue;
            }
            hits += 1;
            full += usize::from(named);
        }
        (hits, full)
    };
    let heuristic = Prefix::heuristic();
    let heuristic_hits = count(&heuristic).0;
    // (full, hits) first, then the list's order.
    let mut ranked: Vec<((usize, usize), Prefix)> = Vec::new();
    for p in COMMON_PREFIXES {
        let Ok(prefix) = Prefix::compile(p) else { continue };
        let (hits, full) = count(&prefix);
        if hits > 0 {
            ranked.push(((full, hits), prefix));
        }
    }
    ranked.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    let mut ranked = ranked.into_iter();
    match ranked.next() {
        Some(((full, hits), p)) if hits * 100 >= heuristic_hits * 95 && hits * 5 >= lines.len() => {
            let alternatives = if full == 0 {
                ranked.filter(|(score, _)| *score == (full, hits)).map(|(_, p)| p).collect()
            } else {
                Vec::new()
            };
            Some((p, alternatives))
        }
        _ if heuristic_hits * 5 >= lines.len() => Some((heuristic, Vec::new())),
        _ => None,
    }
}

/// One parser of any format, behind the chunked contract.
#[derive(Debug)]
pub enum Parser {
    Stderr(stderr::StderrParser),
    Csv(csvlog::CsvParser),
    Json(jsonlog::JsonParser),
}

impl Parser {
    pub fn new(format: LogFormat, prefix: Option<Prefix>, cap: usize) -> Result<Parser, PrefixError> {
        Ok(match format {
            LogFormat::Stderr => {
                let prefix = match prefix {
                    Some(p) => p,
                    None => Prefix::compile(COMMON_PREFIXES[COMMON_PREFIXES.len() - 4])?,
                };
                Parser::Stderr(stderr::StderrParser::new(prefix, cap))
            }
            LogFormat::Csv => Parser::Csv(csvlog::CsvParser::new(cap)),
            LogFormat::Json => Parser::Json(jsonlog::JsonParser::new(cap)),
        })
    }

    /// Other prefixes the detection could not tell from the one in use:
    /// the first line none of them fails on settles it (stderr only).
    #[must_use]
    pub fn with_alternatives(mut self, alternatives: Vec<Prefix>) -> Self {
        if let Parser::Stderr(p) = &mut self {
            p.set_alternatives(alternatives);
        }
        self
    }

    pub fn parse<F: FnMut(LogEntry<'_>)>(&mut self, buf: &[u8], eof: bool, sink: &mut F) -> usize {
        match self {
            Parser::Stderr(p) => p.parse(buf, eof, sink),
            Parser::Csv(p) => p.parse(buf, eof, sink),
            Parser::Json(p) => p.parse(buf, eof, sink),
        }
    }

    pub fn stats(&self) -> &ParseStats {
        match self {
            Parser::Stderr(p) => p.stats(),
            Parser::Csv(p) => p.stats(),
            Parser::Json(p) => p.stats(),
        }
    }

    /// Whether lines of one session can be paired (always for csv/json).
    pub fn has_session(&self) -> bool {
        match self {
            Parser::Stderr(p) => p.prefix().has_session(),
            _ => true,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(detect_format("x.log", b"{\"timestamp\":\"2026\"}\n"), LogFormat::Json);
        assert_eq!(detect_format("x.log", b"2026-11-24 09:00:00.001 UTC,\"bob\",\n"), LogFormat::Csv);
        assert_eq!(detect_format("x.log", b"2026-11-24 09:00:00.001 UTC [1] LOG:  x\n"), LogFormat::Stderr);
        assert_eq!(detect_format("x.csv.gz", b""), LogFormat::Csv);
    }

    #[test]
    fn detects_the_best_prefix() {
        let head = b"2026-11-24 09:00:00 UTC [12]: [1-1] user=a,db=b,app=c,client=d LOG:  x\n\
2026-11-24 09:00:00 UTC [12]: [2-1] user=a,db=b,app=c,client=d DETAIL:  y\n\
\tcontinued\n";
        let p = detect_prefix(head).unwrap();
        assert_eq!(p.as_str(), "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ");
        assert!(detect_prefix(b"nothing here\nat all\n").is_none());
        let odd = b"2026-11-24 09:00:00 UTC <12> ~a~ LOG:  x\n2026-11-24 09:00:00 UTC <12> ~a~ DETAIL:  y\n";
        assert!(detect_prefix(odd).unwrap().is_heuristic());
    }

    /// Debian's `%m [%p] %q%u@%d `: a file that starts with background
    /// lines cannot tell it from the longer `%q%u@%d/%a …`; the first
    /// session line settles it, and no line is lost.
    #[test]
    fn a_head_of_background_lines_is_settled_by_the_first_session_line() {
        let head = b"2026-11-24 09:00:00.001 UTC [57] LOG:  checkpoint starting: time\n\
2026-11-24 09:00:01.002 UTC [57] LOG:  checkpoint complete: wrote 3 buffers (0.0%)\n";
        let (p, alternatives) = detect_prefix_with_alternatives(head).unwrap();
        let mut all: Vec<&str> = alternatives.iter().map(Prefix::as_str).collect();
        all.push(p.as_str());
        assert!(all.contains(&"%m [%p] %q%u@%d "), "{all:?}");
        assert!(all.len() >= 2, "ambiguous: {all:?}");

        let session = b"2026-11-24 09:00:02.003 UTC [1234] app@shop LOG:  duration: 1.500 ms  statement: SELECT 1\n";
        let text = [&head[..], &session[..], &session[..]].concat();
        let mut parser = Parser::new(LogFormat::Stderr, Some(p), 1 << 20).unwrap().with_alternatives(alternatives);
        let mut users = Vec::new();
        parser.parse(&text, true, &mut |e: LogEntry<'_>| {
            users.push((e.user.map(|u| u.into_owned()), e.database.map(|d| d.into_owned())))
        });
        assert_eq!(users.len(), 4, "{users:?}");
        assert_eq!(users[2], (Some("app".to_owned()), Some("shop".to_owned())));
        assert_eq!(users[3], users[2]);
        assert_eq!(parser.stats().unparsed, 0);

        // Session lines in the head: no alternatives.
        let (p, alternatives) = detect_prefix_with_alternatives(&text).unwrap();
        assert_eq!((p.as_str(), alternatives.len()), ("%m [%p] %q%u@%d ", 0));
    }
}
