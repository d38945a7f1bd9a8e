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
    let lines: Vec<&[u8]> = head.split(|b| *b == b'\n').filter(|l| !l.is_empty() && l[0] != b'\t').take(400).collect();
    if lines.is_empty() {
        return None;
    }
    // A hit counts only when the user and database it found contain no
    // space: free-text fields may contain spaces in principle, and a wrong
    // candidate would otherwise "match" by swallowing the rest of the prefix.
    let count = |p: &Prefix| {
        lines
            .iter()
            .filter(|l| {
                p.matches(l).is_some_and(|m| {
                    [&m.fields.user, &m.fields.database]
                        .into_iter()
                        .flatten()
                        .all(|r| !l[r.clone()].iter().any(u8::is_ascii_whitespace))
                })
            })
            .count()
    };
    let heuristic = Prefix::heuristic();
    let heuristic_hits = count(&heuristic);
    let mut best: Option<(usize, Prefix)> = None;
    for p in COMMON_PREFIXES {
        let Ok(prefix) = Prefix::compile(p) else { continue };
        let hits = count(&prefix);
        if hits > best.as_ref().map_or(0, |b| b.0) {
            best = Some((hits, prefix));
        }
    }
    match best {
        Some((hits, p)) if hits * 100 >= heuristic_hits * 95 && hits * 5 >= lines.len() => Some(p),
        _ if heuristic_hits * 5 >= lines.len() => Some(heuristic),
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
}
