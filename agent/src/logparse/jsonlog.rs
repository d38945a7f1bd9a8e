//! The jsonlog format (PostgreSQL 15+): one JSON object per line, keys
//! omitted when empty. PostgreSQL escapes newlines inside strings, so an
//! entry is exactly one line.
//!
//! A line longer than the size cap cannot be parsed without holding all of
//! it; it is skipped and counted as truncated (the design bounds memory by
//! the cap, not by the longest line).

use crate::logparse::entry::{LogEntry, Severity, SqlState};
use crate::logparse::time::parse_timestamp;
use crate::logparse::{ParseStats, count_entry};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dbname: Option<Cow<'a, str>>,
    pid: Option<u32>,
    leader_pid: Option<u32>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error_severity: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow)]
    hint: Option<Cow<'a, str>>,
    #[serde(borrow)]
    context: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statement: Option<Cow<'a, str>>,
    #[serde(borrow)]
    application_name: Option<Cow<'a, str>>,
    query_id: Option<i64>,
}

/// How PostgreSQL begins every jsonlog record.
const RECORD_START: &[u8] = b"{\"timestamp\":";

/// Parser state for one jsonlog stream.
#[derive(Debug)]
pub struct JsonParser {
    cap: usize,
    skip_line: bool,
    base_line: u64,
    stats: ParseStats,
}

impl JsonParser {
    pub fn new(cap: usize) -> Self {
        JsonParser { cap, skip_line: false, base_line: 0, stats: ParseStats::default() }
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Parses the complete lines in `buf`; returns the bytes consumed.
    pub fn parse<F: FnMut(LogEntry<'_>)>(&mut self, buf: &[u8], eof: bool, sink: &mut F) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            let (end, next, complete) = match memchr::memchr(b'\n', &buf[pos..]) {
                Some(i) => (pos + i, pos + i + 1, true),
                None => (buf.len(), buf.len(), false),
            };
            let len = end - pos;
            if !complete && !eof && len <= self.cap {
                break;
            }
            if self.skip_line {
                self.skip_line = !complete;
            } else if len > self.cap {
                self.salvage(&buf[pos..pos + self.cap], self.base_line + 1, sink);
                self.skip_line = !complete;
            } else {
                self.line(&buf[pos..end], self.base_line + 1, sink);
            }
            if complete || eof {
                self.base_line += 1;
                self.stats.lines += 1;
            }
            pos = next;
        }
        self.stats.bytes += pos as u64;
        pos
    }

    fn line<F: FnMut(LogEntry<'_>)>(&mut self, line: &[u8], line_no: u64, sink: &mut F) {
        let mut line = line.strip_suffix(b"\r").unwrap_or(line);
        // A loop, not recursion: a line of nothing but record starts once
        // went one call deeper per 13 bytes and overflowed the stack.
        while !line.iter().all(u8::is_ascii_whitespace) {
            if self.record(line, line_no, sink) {
                return;
            }
            line = match broken(line) {
                Some(rest) => rest,
                None => return,
            };
        }
    }

    /// Emits `line` if it is a record; false (and counted) if not.
    fn record<F: FnMut(LogEntry<'_>)>(&mut self, line: &[u8], line_no: u64, sink: &mut F) -> bool {
        if let Ok(rec) = serde_json::from_slice::<Record<'_>>(line) {
            self.emit(rec, line_no, false, false, sink);
            return true;
        }
        // serde_json rejects invalid UTF-8; PostgreSQL writes the database
        // encoding as is, so retry on a repaired copy.
        let repaired = String::from_utf8_lossy(line);
        if matches!(repaired, Cow::Owned(_))
            && let Ok(rec) = serde_json::from_str::<Record<'_>>(&repaired)
        {
            self.emit(rec, line_no, true, false, sink);
            return true;
        }
        self.stats.unparsed += 1;
        false
    }

    /// A line longer than the cap, cut at the cap: close the JSON where it
    /// was cut, so that the fields before the cut survive (PostgreSQL writes
    /// `message` before `statement`, `detail` and the rest), and emit the
    /// entry marked truncated. A cut that cannot be closed is counted.
    fn salvage<F: FnMut(LogEntry<'_>)>(&mut self, head: &[u8], line_no: u64, sink: &mut F) {
        let (text, lossy) = match std::str::from_utf8(head) {
            Ok(t) => (t.to_owned(), false),
            // The cut may split a character: that alone is not bad input.
            Err(e) if e.error_len().is_none() => {
                (String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned(), false)
            }
            Err(_) => (String::from_utf8_lossy(head).into_owned(), true),
        };
        let mut text = text;
        // Do not end inside an escape: `\` or `\u12`.
        if let Some(i) = text.rfind('\\')
            && text.len() - i <= 5
        {
            let odd = text[..=i].chars().rev().take_while(|c| *c == '\\').count() % 2 == 1;
            if odd {
                text.truncate(i);
            }
        }
        for closer in ["\"}", "}", "\"\"}", ":\"\"}", "\":\"\"}"] {
            let candidate = format!("{text}{closer}");
            if let Ok(rec) = serde_json::from_str::<Record<'_>>(&candidate) {
                self.emit(rec, line_no, lossy, true, sink);
                return;
            }
        }
        self.stats.truncated += 1;
        self.stats.unparsed += 1;
    }

    fn emit<F: FnMut(LogEntry<'_>)>(&mut self, rec: Record<'_>, line: u64, lossy: bool, truncated: bool, sink: &mut F) {
        let Some((timestamp, _)) = rec.timestamp.as_deref().and_then(|t| parse_timestamp(t.as_bytes())) else {
            self.stats.unparsed += 1;
            self.stats.truncated += u64::from(truncated);
            return;
        };
        let entry = LogEntry {
            line,
            timestamp: Some(timestamp),
            pid: rec.pid,
            leader_pid: rec.leader_pid,
            session_id: rec.session_id,
            user: rec.user,
            database: rec.dbname,
            application: rec.application_name,
            severity: rec.error_severity.as_deref().and_then(|s| Severity::parse(s.as_bytes())),
            sqlstate: rec.state_code.as_deref().and_then(|s| SqlState::parse(s.as_bytes())),
            query_id: rec.query_id.filter(|q| *q != 0),
            message: rec.message.unwrap_or_default(),
            detail: rec.detail,
            hint: rec.hint,
            context: rec.context,
            statement: rec.statement,
            truncated,
        };
        count_entry(&mut self.stats, truncated, lossy);
        sink(entry);
    }
}

/// Where parsing goes on in a line that is not a record. An object cut short (a crash
/// mid-write) may have the next record glued to it, when the server
/// starts again and appends to the same file; without looking for it,
/// that whole record would be lost with the broken one. PostgreSQL
/// writes `timestamp` first, and inside a JSON string every quote is
/// escaped, so an unescaped `{"timestamp":` past the start of the line
/// is where a record begins: it is parsed on its own. `None` if there is
/// none.
fn broken(line: &[u8]) -> Option<&[u8]> {
    let i = memchr::memmem::find(line.get(1..).unwrap_or_default(), RECORD_START)?;
    Some(&line[1 + i..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(input: &[u8], chunk: usize, cap: usize) -> (Vec<(u64, String, Option<String>)>, ParseStats) {
        let mut p = JsonParser::new(cap);
        let mut out = Vec::new();
        let mut sink = |e: LogEntry<'_>| out.push((e.line, e.message.into_owned(), e.statement.map(Cow::into_owned)));
        let (mut start, mut end) = (0, 0);
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

    #[test]
    fn a_line_of_nothing_but_record_starts_is_counted_not_a_stack_overflow() {
        // Each start was one recursion deep: 50,000 of them overflowed a
        // thread's stack and aborted the agent (on every restart, since
        // the line was never committed). A small stack shows it in a test.
        let line = format!("{}\n{}", "{\"timestamp\":".repeat(50_000), JSON);
        let (out, stats) = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || run(line.as_bytes(), 4096, 1 << 20))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(stats.unparsed, 50_000);
        assert_eq!(out.len(), 2, "the records after it are read");
    }

    const JSON: &str = concat!(
        r#"{"timestamp":"2026-11-24 09:00:00.001 UTC","user":"bob","dbname":"shop","pid":10,"session_id":"6743a0c6.a","error_severity":"LOG","message":"duration: 1.500 ms  statement: SELECT 'a\n\"q\"'","backend_type":"client backend","query_id":-5}"#,
        "\n",
        r#"{"timestamp":"2026-11-24 09:00:00.002 UTC","pid":11,"error_severity":"ERROR","state_code":"23505","message":"duplicate","statement":"INSERT INTO t VALUES (42)"}"#,
        "\n"
    );

    #[test]
    fn parses_records_and_unescapes() {
        let (entries, stats) = run(JSON.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1, "duration: 1.500 ms  statement: SELECT 'a\n\"q\"'");
        assert_eq!(entries[1], (2, "duplicate".to_owned(), Some("INSERT INTO t VALUES (42)".to_owned())));
        assert_eq!(stats.lines, 2);
    }

    #[test]
    fn chunking_truncation_and_garbage() {
        let whole = run(JSON.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!(run(JSON.as_bytes(), 7, 1 << 20), whole);
        let input = format!("{{\"timestamp\":\"{}\n{JSON}{{\"truncated", "x".repeat(10_000));
        let (entries, stats) = run(input.as_bytes(), 100, 4096);
        assert_eq!(entries.len(), 2);
        assert_eq!(stats.truncated, 1);
        // The over-cap line closes as JSON but has no valid time; and the
        // unterminated last line.
        assert_eq!(stats.unparsed, 2);
        assert_eq!(stats.lines, 4);
    }

    #[test]
    fn over_cap_lines_keep_the_fields_before_the_cut() {
        let long = format!(
            "{{\"timestamp\":\"2026-11-24 09:00:00.001 UTC\",\"pid\":7,\"error_severity\":\"LOG\",\"message\":\"duration: 900.000 ms  statement: SELECT * FROM t WHERE id IN ({})\"}}\n",
            "1, ".repeat(3000)
        );
        let (entries, stats) = run(long.as_bytes(), 700, 4096);
        assert_eq!(entries.len(), 1);
        assert!(entries[0].1.starts_with("duration: 900.000 ms  statement: SELECT * FROM t WHERE id IN (1, 1,"));
        assert_eq!(stats.truncated, 1);
        assert_eq!(stats.unparsed, 0);
    }

    #[test]
    fn a_truncated_object_loses_only_itself() {
        let whole = JSON.lines().next().unwrap();
        let cut = &whole[..whole.len() / 2];
        // On a line of its own, and glued to the next record.
        let input = format!("{cut}\n{JSON}{cut}{JSON}");
        for chunk in [5, 64, usize::MAX] {
            let (entries, stats) = run(input.as_bytes(), chunk, 1 << 20);
            assert_eq!(entries.len(), 4, "chunk {chunk}");
            assert_eq!(entries[2].1, entries[0].1);
            assert_eq!((stats.unparsed, stats.lines), (2, 5), "chunk {chunk}");
        }
    }

    #[test]
    fn invalid_utf8_is_repaired() {
        let mut input = br#"{"timestamp":"2026-11-24 09:00:00.001 UTC","error_severity":"LOG","message":"x "#.to_vec();
        input.extend_from_slice(&[0xff, b'"', b'}', b'\n']);
        let (entries, stats) = run(&input, usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 1);
        assert_eq!(stats.invalid_utf8, 1);
    }
}
