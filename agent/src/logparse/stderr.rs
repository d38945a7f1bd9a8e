//! The stderr log format: `log_line_prefix` + `SEVERITY:  message`, with
//! continuation lines starting with a tab and the `DETAIL:`/`HINT:`/
//! `CONTEXT:`/`STATEMENT:`/`QUERY:`/`LOCATION:` lines of one message
//! following it, each with its own prefix.
//!
//! Works on byte chunks so that the same code serves a whole file (analyze)
//! and a growing file (the agent's tailer). Entries borrow from the chunk;
//! an entry still open at the end of a chunk is left unconsumed and parsed
//! again with more data, except when it has outgrown the size cap: then it
//! is emitted truncated and the rest of it is skipped, so memory stays
//! bounded by the cap whatever the input.

use crate::logparse::entry::{LogEntry, Secondary, SqlState, text};
use crate::logparse::prefix::{Label, Prefix, PrefixMatch};
use crate::logparse::{ParseStats, count_entry};
use std::borrow::Cow;
use std::ops::Range;

/// Parser state for one stderr log stream.
#[derive(Debug)]
pub struct StderrParser {
    prefix: Prefix,
    /// Prefixes the detection could not tell from `prefix` yet.
    alternatives: Vec<Prefix>,
    cap: usize,
    /// Inside the rest of an over-long line already handled.
    skip_line: bool,
    /// Inside the rest of an entry already emitted truncated.
    skip_entry: bool,
    /// Line number (0-based count of lines before) of the first unconsumed byte.
    base_line: u64,
    stats: ParseStats,
}

/// Text of one field, borrowed while it is a single line.
#[derive(Debug)]
enum Piece {
    Range(Range<usize>),
    Owned(String),
}

#[derive(Debug)]
struct Pending {
    start: usize,
    line: u64,
    head: PrefixMatch,
    message: Piece,
    secondary: Vec<(Secondary, Piece)>,
    /// Which field continuation lines extend: None = message.
    current: Option<usize>,
    size: usize,
    truncated: bool,
    /// Some continuation line had bytes that are not UTF-8.
    lossy: bool,
    unparsed: u64,
}

impl StderrParser {
    pub fn new(prefix: Prefix, cap: usize) -> Self {
        StderrParser {
            prefix,
            alternatives: Vec::new(),
            cap,
            skip_line: false,
            skip_entry: false,
            base_line: 0,
            stats: ParseStats::default(),
        }
    }

    /// Prefixes the detection could not tell from `prefix` (see
    /// [`super::detect_prefix_with_alternatives`]).
    pub fn set_alternatives(&mut self, alternatives: Vec<Prefix>) {
        self.alternatives = alternatives;
    }

    /// A line the prefix in use does not match: one of the alternatives
    /// that matches it past `%q` takes over for good.
    fn settle(&mut self, line: &[u8]) -> Option<PrefixMatch> {
        let i = self.alternatives.iter().position(|p| p.matches(line).is_some_and(|m| m.read_session_names(line)))?;
        self.prefix = self.alternatives.swap_remove(i);
        self.alternatives.clear();
        self.prefix.matches(line)
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// Parses the complete entries in `buf`, returns how many bytes were consumed.
    /// With `eof`, everything is consumed (a last line without newline included).
    pub fn parse<F: FnMut(LogEntry<'_>)>(&mut self, buf: &[u8], eof: bool, sink: &mut F) -> usize {
        let mut pos = 0;
        let mut line_no = self.base_line;
        let mut pending: Option<Pending> = None;
        let mut consumed_line = self.base_line;

        while pos < buf.len() {
            let (end, next, complete) = match memchr::memchr(b'\n', &buf[pos..]) {
                Some(i) => (pos + i, pos + i + 1, true),
                None => (buf.len(), buf.len(), false),
            };
            if !complete && !eof && end - pos <= self.cap {
                break; // need more data for this line
            }
            let mut line = &buf[pos..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let huge = line.len() > self.cap;
            if huge {
                line = &line[..self.cap];
            }

            if self.skip_line {
                if complete {
                    self.skip_line = false;
                }
            } else {
                self.line(buf, pos, line, line_no, &mut pending, sink);
                if huge {
                    match pending.as_mut() {
                        Some(p) => p.truncated = true,
                        None => self.stats.truncated += 1,
                    }
                    self.skip_line = !complete;
                }
            }
            pos = next;
            if complete || eof {
                line_no += 1;
            }
            if pending.is_none() {
                consumed_line = line_no;
            }
        }

        // pos is now at a line start (or buf end). Decide what is final.
        let consumed = match pending.take() {
            None => pos,
            Some(p) if eof => {
                self.emit(buf, p, sink);
                consumed_line = line_no;
                pos
            }
            Some(p) if buf.len() - p.start > self.cap => {
                // Outgrew the cap while still open: emit what fits, skip the rest.
                let mut p = p;
                p.truncated = true;
                self.emit(buf, p, sink);
                self.skip_entry = true;
                consumed_line = line_no;
                pos
            }
            Some(p) => {
                consumed_line = p.line;
                p.start
            }
        };
        self.stats.lines += consumed_line - self.base_line;
        self.base_line = consumed_line;
        self.stats.bytes += consumed as u64;
        consumed
    }

    fn line<F: FnMut(LogEntry<'_>)>(
        &mut self,
        buf: &[u8],
        start: usize,
        line: &[u8],
        line_no: u64,
        pending: &mut Option<Pending>,
        sink: &mut F,
    ) {
        let range = start..start + line.len();
        if line.first() == Some(&b'\t') {
            if self.skip_entry {
                return;
            }
            match pending.as_mut() {
                Some(p) => self.append(buf, p, start + 1..range.end),
                None => self.stats.unparsed += 1,
            }
            return;
        }
        let mut m = self.prefix.matches(line);
        if !self.alternatives.is_empty() {
            if m.as_ref().is_some_and(|m| m.read_session_names(line)) {
                // A session's line the prefix in use reads: settled.
                self.alternatives.clear();
            } else if let Some(other) = self.settle(line) {
                m = Some(other);
            }
        }
        let Some(m) = m else {
            match pending.as_mut() {
                Some(p) => p.unparsed += 1,
                None if self.skip_entry => {}
                None => self.stats.unparsed += 1,
            }
            return;
        };
        match m.label {
            Label::Secondary(kind) => {
                if self.skip_entry {
                    return;
                }
                let same_process = |p: &Pending| match (p.head.fields.pid, m.fields.pid) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                match pending.as_mut() {
                    Some(p) if same_process(p) => {
                        let piece = Piece::Range(start + m.message_start..range.end);
                        p.size += line.len();
                        p.secondary.push((kind, piece));
                        p.current = Some(p.secondary.len() - 1);
                        if p.size > self.cap {
                            p.truncated = true;
                        }
                    }
                    Some(p) => p.unparsed += 1,
                    None => self.stats.unparsed += 1,
                }
            }
            Label::Primary(_) => {
                self.skip_entry = false;
                if let Some(p) = pending.take() {
                    self.emit(buf, p, sink);
                }
                let message = Piece::Range(start + m.message_start..range.end);
                *pending = Some(Pending {
                    start,
                    line: line_no,
                    head: m,
                    message,
                    secondary: Vec::new(),
                    current: None,
                    size: line.len(),
                    truncated: false,
                    lossy: false,
                    unparsed: 0,
                });
            }
        }
    }

    fn append(&mut self, buf: &[u8], p: &mut Pending, r: Range<usize>) {
        if p.truncated || p.size + r.len() + 1 > self.cap {
            p.truncated = true;
            return;
        }
        p.size += r.len() + 1;
        let piece = match p.current {
            None => &mut p.message,
            Some(i) => &mut p.secondary[i].1,
        };
        let mut s = match std::mem::replace(piece, Piece::Owned(String::new())) {
            Piece::Range(r0) => {
                let (t, bad) = text(&buf[r0]);
                p.lossy |= bad;
                t.into_owned()
            }
            Piece::Owned(s) => s,
        };
        s.push('\n');
        let (t, bad) = text(&buf[r]);
        p.lossy |= bad;
        s.push_str(&t);
        *piece = Piece::Owned(s);
    }

    fn emit<F: FnMut(LogEntry<'_>)>(&mut self, buf: &[u8], p: Pending, sink: &mut F) {
        let mut lossy = p.lossy;
        let mut conv = |piece: Piece| -> Cow<'_, str> {
            match piece {
                Piece::Range(r) => {
                    let (t, bad) = text(&buf[r]);
                    lossy |= bad;
                    t
                }
                Piece::Owned(s) => Cow::Owned(s),
            }
        };
        let f = &p.head.fields;
        let line_start = p.start;
        // PostgreSQL prints `[unknown]` where csvlog/jsonlog leave the field
        // out (e.g. before authentication): make them agree.
        let field = |r: &Option<Range<usize>>| {
            let bytes = &buf[line_start + r.as_ref()?.start..line_start + r.as_ref()?.end];
            (!bytes.is_empty() && bytes != b"[unknown]").then(|| text(bytes).0)
        };
        let mut entry = LogEntry {
            line: p.line + 1,
            timestamp: f.timestamp,
            pid: f.pid,
            leader_pid: f.leader_pid,
            session_id: field(&f.session_id),
            user: field(&f.user),
            database: field(&f.database),
            application: field(&f.application),
            severity: match p.head.label {
                Label::Primary(s) => Some(s),
                Label::Secondary(_) => None,
            },
            sqlstate: f.sqlstate,
            query_id: f.query_id,
            message: conv(p.message),
            truncated: p.truncated,
            ..LogEntry::default()
        };
        if entry.severity.is_some() {
            take_verbose_sqlstate(&mut entry);
        }
        for (kind, piece) in p.secondary {
            let value = Some(conv(piece));
            match kind {
                Secondary::Detail => entry.detail = value,
                Secondary::Hint => entry.hint = value,
                Secondary::Context => entry.context = value,
                Secondary::Statement => entry.statement = value,
                // QUERY (internal query) and LOCATION carry nothing we use.
                Secondary::Query | Secondary::Location => {}
            }
        }
        self.stats.unparsed += p.unparsed;
        count_entry(&mut self.stats, p.truncated, lossy);
        sink(entry);
    }
}

/// `log_error_verbosity = verbose` writes the SQLSTATE before the message
/// (`LOG:  00000: duration: 0.5 ms  statement: …`), which csvlog and jsonlog
/// keep in a field of their own: take it off, so the message reads the same
/// in every format, and keep it when the prefix had no `%e`. A prefix's
/// `%e` that disagrees says the five characters are the message's own.
fn take_verbose_sqlstate(entry: &mut LogEntry<'_>) {
    let bytes = entry.message.as_bytes();
    if bytes.len() < 7 || &bytes[5..7] != b": " {
        return;
    }
    let Some(state) = SqlState::parse(&bytes[..5]) else { return };
    if entry.sqlstate.is_some_and(|s| s != state) {
        return;
    }
    entry.sqlstate = Some(state);
    match &mut entry.message {
        Cow::Borrowed(m) => *m = &m[7..],
        Cow::Owned(m) => {
            m.drain(..7);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Owned {
        line: u64,
        pid: Option<u32>,
        message: String,
        detail: Option<String>,
        statement: Option<String>,
        truncated: bool,
    }

    fn run(prefix: &str, input: &[u8], chunk: usize, cap: usize) -> (Vec<Owned>, ParseStats) {
        let mut p = StderrParser::new(Prefix::compile(prefix).unwrap(), cap);
        let mut out = Vec::new();
        let mut sink = |e: LogEntry<'_>| {
            out.push(Owned {
                line: e.line,
                pid: e.pid,
                message: e.message.into_owned(),
                detail: e.detail.map(Cow::into_owned),
                statement: e.statement.map(Cow::into_owned),
                truncated: e.truncated,
            })
        };
        // Feed like a reader would: growing window, `chunk` new bytes at a time.
        let mut start = 0;
        let mut end = 0;
        loop {
            end = (end + chunk).min(input.len());
            let eof = end == input.len();
            start += p.parse(&input[start..end], eof, &mut sink);
            if eof {
                break;
            }
        }
        assert_eq!(start, input.len());
        (out, p.stats().clone())
    }

    const LOG: &str = "2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 1.500 ms  statement: SELECT a,\n\
\tb FROM t\n\
\tWHERE x = 'multi\n\
\tline'\n\
2026-11-24 09:00:00.002 UTC [11] ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n\
2026-11-24 09:00:00.002 UTC [11] DETAIL:  Key (id)=(42) already exists.\n\
2026-11-24 09:00:00.002 UTC [11] STATEMENT:  INSERT INTO t VALUES (42)\n\
not a log line\n\
2026-11-24 09:00:00.003 UTC [12] LOG:  checkpoint starting: time\n";

    #[test]
    fn groups_multiline_and_secondary_lines() {
        let (entries, stats) = run("%m [%p] ", LOG.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].message, "duration: 1.500 ms  statement: SELECT a,\nb FROM t\nWHERE x = 'multi\nline'");
        assert_eq!(entries[0].line, 1);
        assert_eq!(entries[1].detail.as_deref(), Some("Key (id)=(42) already exists."));
        assert_eq!(entries[1].statement.as_deref(), Some("INSERT INTO t VALUES (42)"));
        assert_eq!(entries[1].line, 5);
        assert_eq!(entries[2].line, 9);
        assert_eq!(stats.unparsed, 1);
        assert_eq!(stats.lines, 9);
        assert_eq!(stats.entries, 3);
    }

    #[test]
    fn any_chunking_gives_the_same_entries() {
        let (whole, whole_stats) = run("%m [%p] ", LOG.as_bytes(), usize::MAX, 1 << 20);
        for chunk in [1, 2, 3, 7, 16, 64, 100] {
            let (parts, stats) = run("%m [%p] ", LOG.as_bytes(), chunk, 1 << 20);
            assert_eq!(parts, whole, "chunk {chunk}");
            assert_eq!(stats, whole_stats, "chunk {chunk}");
        }
    }

    #[test]
    fn truncated_last_line_is_kept() {
        let input = "2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 2.000 ms  statement: SELECT 1";
        let (entries, stats) = run("%m [%p] ", input.as_bytes(), 10, 1 << 20);
        assert_eq!(entries.len(), 1);
        assert_eq!(stats.lines, 1);
    }

    #[test]
    fn over_cap_entries_are_truncated_and_counted() {
        let mut input = String::from("2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 2.000 ms  statement: SELECT\n");
        for _ in 0..1000 {
            input.push_str("\t'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx',\n");
        }
        input.push_str("2026-11-24 09:00:00.002 UTC [10] LOG:  duration: 1.000 ms  statement: SELECT 2\n");
        for chunk in [64, 1000, usize::MAX] {
            let (entries, stats) = run("%m [%p] ", input.as_bytes(), chunk, 4096);
            assert_eq!(entries.len(), 2, "chunk {chunk}");
            assert!(entries[0].truncated);
            assert!(entries[0].message.len() <= 4096);
            assert_eq!(entries[1].message, "duration: 1.000 ms  statement: SELECT 2");
            assert_eq!(stats.truncated, 1, "chunk {chunk}");
        }
    }

    #[test]
    fn a_huge_single_line_does_not_need_a_huge_buffer() {
        let mut input = String::from("2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 2.000 ms  statement: SELECT '");
        input.push_str(&"y".repeat(100_000));
        input.push_str("'\n2026-11-24 09:00:00.002 UTC [10] LOG:  duration: 1.000 ms  statement: SELECT 2\n");
        let (entries, stats) = run("%m [%p] ", input.as_bytes(), 1000, 4096);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].truncated);
        assert_eq!(entries[1].message, "duration: 1.000 ms  statement: SELECT 2");
        assert_eq!(stats.truncated, 1);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted() {
        let mut input = b"2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 2.000 ms  statement: SELECT '".to_vec();
        input.extend_from_slice(&[0xff, 0xfe, 0x00]);
        input.extend_from_slice(b"'\n");
        let (entries, stats) = run("%m [%p] ", &input, usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 1);
        assert!(entries[0].message.contains('\u{fffd}'));
        assert_eq!(stats.invalid_utf8, 1);
    }

    #[test]
    fn invalid_utf8_on_continuation_lines_is_counted_per_entry() {
        let mut input = Vec::new();
        for _ in 0..2 {
            input.extend_from_slice(
                b"2026-11-24 09:00:00.001 UTC [10] LOG:  duration: 2.000 ms  statement: SELECT\n\t'",
            );
            input.extend_from_slice(&[0xff, 0xfe]);
            input.extend_from_slice(b"'\n");
        }
        let (entries, stats) = run("%m [%p] ", &input, usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 2);
        assert_eq!(stats.invalid_utf8, 2);
    }

    #[test]
    fn secondary_line_of_another_process_is_not_attached() {
        let input =
            "2026-11-24 09:00:00.001 UTC [10] ERROR:  boom\n2026-11-24 09:00:00.001 UTC [99] STATEMENT:  SELECT 1\n";
        let (entries, stats) = run("%m [%p] ", input.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!(entries[0].statement, None);
        assert_eq!(stats.unparsed, 1);
    }

    #[test]
    fn verbose_messages_lose_their_sqlstate_to_the_field() {
        let input = b"2026-11-24 09:01:10 UTC:10.0.0.1(5432):bob@shop:[7]:LOG:  00000: duration: 0.500 ms  statement: SELECT 1\n\
2026-11-24 09:01:10 UTC:10.0.0.1(5432):bob@shop:[7]:LOCATION:  exec_simple_query, postgres.c:1297\n\
2026-11-24 09:01:11 UTC:[local]:bob@shop:[7]:ERROR:  22012: division by zero\n\
2026-11-24 09:01:11 UTC:[local]:bob@shop:[7]:LOCATION:  int4div, int.c:846\n\
2026-11-24 09:01:11 UTC:[local]:bob@shop:[7]:STATEMENT:  SELECT 1/0\n";
        let mut p = StderrParser::new(Prefix::compile("%t:%r:%u@%d:[%p]:").unwrap(), 1 << 20);
        let mut got = Vec::new();
        p.parse(input, true, &mut |e: LogEntry<'_>| {
            got.push((e.sqlstate.map(|s| s.as_str().to_owned()), e.message.into_owned(), e.user.map(Cow::into_owned)))
        });
        assert_eq!(
            got,
            [
                (Some("00000".into()), "duration: 0.500 ms  statement: SELECT 1".into(), Some("bob".into())),
                (Some("22012".into()), "division by zero".into(), Some("bob".into())),
            ]
        );
        assert_eq!(p.stats().unparsed, 0);
        // A prefix's %e that disagrees: the five characters are the message's.
        let mut p = StderrParser::new(Prefix::compile("%m [%p] %e ").unwrap(), 1 << 20);
        let mut got = Vec::new();
        p.parse(b"2026-11-24 09:01:10.000 UTC [7] 00000 LOG:  ABCDE: raised\n", true, &mut |e: LogEntry<'_>| {
            got.push(e.message.into_owned())
        });
        assert_eq!(got, ["ABCDE: raised"]);
    }
}
