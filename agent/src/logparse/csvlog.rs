//! The csvlog format: one CSV record per entry, 26 columns in PostgreSQL 15
//! (22 before 13; `backend_type`, `leader_pid`, `query_id` came later, so
//! they are optional). Quoted fields carry newlines and doubled quotes; the
//! `csv` crate does the unquoting.
//!
//! Chunked like the stderr parser: a record still open at the end of a chunk
//! is parsed again with more data, unless it outgrew the size cap, in which
//! case what was read is emitted truncated and the rest of the record is
//! skipped by tracking quote parity up to its terminating newline.

use crate::logparse::entry::{LogEntry, Severity, SqlState, text};
use crate::logparse::time::parse_timestamp;
use crate::logparse::{ParseStats, count_entry};
use csv::{ByteRecord, ReaderBuilder};
use std::borrow::Cow;

const LOG_TIME: usize = 0;
const USER: usize = 1;
const DATABASE: usize = 2;
const PID: usize = 3;
const SESSION_ID: usize = 5;
const SEVERITY: usize = 11;
const SQLSTATE: usize = 12;
const MESSAGE: usize = 13;
const DETAIL: usize = 14;
const HINT: usize = 15;
const CONTEXT: usize = 18;
const QUERY: usize = 19;
const APPLICATION: usize = 22;
const LEADER_PID: usize = 24;
const QUERY_ID: usize = 25;

/// Parser state for one csvlog stream.
#[derive(Debug)]
pub struct CsvParser {
    cap: usize,
    /// Skipping the rest of a truncated record; the value is "inside quotes".
    skipping: Option<bool>,
    /// The bytes skipped so far ended with a newline: the next chunk starts
    /// a line (where a record may begin, see [`skip_record`]).
    skip_at_line_start: bool,
    base_line: u64,
    stats: ParseStats,
}

impl CsvParser {
    pub fn new(cap: usize) -> Self {
        CsvParser { cap, skipping: None, skip_at_line_start: false, base_line: 0, stats: ParseStats::default() }
    }

    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Parses the complete records in `buf`; returns the bytes consumed.
    pub fn parse<F: FnMut(LogEntry<'_>)>(&mut self, buf: &[u8], eof: bool, sink: &mut F) -> usize {
        let mut start = 0;
        if let Some(in_quotes) = self.skipping {
            match skip_record(buf, in_quotes, self.skip_at_line_start) {
                Ok(end) => {
                    self.skipping = None;
                    start = end;
                }
                Err(in_quotes) => {
                    self.skipping = Some(in_quotes);
                    self.skip_at_line_start = buf.last() == Some(&b'\n');
                    self.account(&buf[..buf.len()], eof);
                    return buf.len();
                }
            }
        }
        let data = &buf[start..];
        let mut reader = new_reader(data);
        // Where `reader` started in `data` (it starts again after a resync).
        let mut base = 0;
        let mut rec = ByteRecord::new();
        let mut consumed = 0; // relative to data
        let mut line = self.base_line + count_lines(&buf[..start]);
        loop {
            let mut rec_start = consumed;
            match reader.read_byte_record(&mut rec) {
                Ok(true) => {}
                Ok(false) => {
                    // No record left: what remains are empty lines (the
                    // reader skips them). Consumed, or a caller would keep
                    // them forever (a fuzz finding).
                    consumed = data.len();
                    break;
                }
                Err(_) => {
                    // Only I/O errors are possible from a slice reader; treat
                    // as garbage and skip to the next newline.
                    self.stats.unparsed += 1;
                    consumed = data.len();
                    break;
                }
            }
            let end = (base + usize::try_from(reader.position().byte()).unwrap_or(data.len())).min(data.len());
            // The reader skips empty lines before a record; they belong to
            // no record. Left in, they made the record look multi-line to
            // `resync_point`, which then dropped a whole record as broken
            // when the blank line came in one read, but not when a chunk
            // boundary fell just after it (a fuzz finding).
            let blank = data[rec_start..end].iter().take_while(|b| matches!(b, b'\n' | b'\r')).count();
            line += count_lines(&data[rec_start..rec_start + blank]);
            rec_start += blank;
            if let Some(restart) = resync_point(&data[rec_start..end]) {
                // A record cut inside a quoted field (a crash mid-write, then
                // whole records appended) inverts the quote parity of all
                // that follows: without this, every later record of the file
                // would be swallowed into one "field" and lost. The broken
                // record is dropped and counted; parsing starts again at the
                // line where the next record begins.
                self.stats.unparsed += 1;
                line += count_lines(&data[rec_start..rec_start + restart]);
                consumed = rec_start + restart;
                base = consumed;
                reader = new_reader(&data[consumed..]);
                continue;
            }
            // A record that ends the data is complete when the reader
            // ended it at a newline of its own (it ends a record only
            // there, or at the end of the data); only otherwise may it
            // still grow. Holding a complete record back until the next one
            // arrived delayed a quiet server's last statement indefinitely.
            let open_at_end = end == data.len() && !eof && !ends_at_terminator(&data[rec_start..end]);
            if open_at_end && data.len() - rec_start <= self.cap {
                break; // maybe incomplete: parse again with more data
            }
            let truncated = open_at_end || end - rec_start > self.cap;
            self.record(&rec, line + 1, truncated, sink);
            line += count_lines(&data[rec_start..end]);
            consumed = end;
            if open_at_end {
                // Over the cap and still open: skip the rest of it later.
                self.skipping = Some(quote_parity(&data[rec_start..end]));
                self.skip_at_line_start = data[..end].last() == Some(&b'\n');
                break;
            }
        }
        let total = start + consumed;
        self.account(&buf[..total], eof && total == buf.len());
        total
    }

    fn account(&mut self, consumed: &[u8], eof: bool) {
        let mut lines = count_lines(consumed);
        if eof && consumed.last().is_some_and(|b| *b != b'\n') {
            lines += 1;
        }
        self.stats.lines += lines;
        self.base_line += lines;
        self.stats.bytes += consumed.len() as u64;
    }

    fn record<F: FnMut(LogEntry<'_>)>(&mut self, rec: &ByteRecord, line: u64, truncated: bool, sink: &mut F) {
        let timestamp = rec.get(LOG_TIME).and_then(parse_timestamp).map(|(t, _)| t);
        if rec.len() <= MESSAGE || timestamp.is_none() {
            if rec.iter().any(|f| !f.is_empty()) {
                self.stats.unparsed += 1;
            }
            return;
        }
        let mut lossy = false;
        let mut field = |i: usize| -> Option<Cow<'_, str>> {
            let raw = rec.get(i)?;
            if raw.is_empty() {
                return None;
            }
            let raw = if raw.len() > self.cap { &raw[..self.cap] } else { raw };
            let (t, bad) = text(raw);
            lossy |= bad;
            Some(t)
        };
        let entry = LogEntry {
            line,
            timestamp,
            pid: field(PID).and_then(|p| p.parse().ok()),
            leader_pid: field(LEADER_PID).and_then(|p| p.parse().ok()),
            session_id: field(SESSION_ID),
            user: field(USER),
            database: field(DATABASE),
            application: field(APPLICATION),
            severity: rec.get(SEVERITY).and_then(Severity::parse),
            sqlstate: rec.get(SQLSTATE).and_then(SqlState::parse),
            query_id: field(QUERY_ID).and_then(|q| q.parse().ok()).filter(|q| *q != 0),
            message: field(MESSAGE).unwrap_or_default(),
            detail: field(DETAIL),
            hint: field(HINT),
            context: field(CONTEXT),
            statement: field(QUERY),
            truncated,
        };
        count_entry(&mut self.stats, truncated, lossy);
        sink(entry);
    }
}

fn new_reader(from: &[u8]) -> csv::Reader<&[u8]> {
    ReaderBuilder::new().has_headers(false).flexible(true).from_reader(from)
}

fn count_lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// Whether the csv reader, reading `rec` from its start, ends the record at
/// its final newline rather than because the data ran out (then more data
/// may extend it). Told by reading it again with one more byte after it:
/// a terminated record ends before that byte. Counting quotes cannot tell:
/// after broken quoting (a quote that closes a field in mid-text, as a
/// record cut by a crash leaves) the reader takes later quotes as plain
/// text, so a count and the reader disagree, and where a chunk happened to
/// end decided where a record ended (found by the `csvlog` fuzz target).
/// Copies the record: once per `parse` call, for the last record only,
/// which the cap bounds.
fn ends_at_terminator(rec: &[u8]) -> bool {
    if rec.last() != Some(&b'\n') {
        return false;
    }
    let mut probe = Vec::with_capacity(rec.len() + 1);
    probe.extend_from_slice(rec);
    probe.push(b'x');
    let mut reader = new_reader(&probe);
    let mut record = ByteRecord::new();
    matches!(reader.read_byte_record(&mut record), Ok(true))
        && usize::try_from(reader.position().byte()).is_ok_and(|end| end < probe.len())
}

/// Whether a record that started at `b[0]` is inside quotes at the end of `b`.
fn quote_parity(b: &[u8]) -> bool {
    memchr::memchr_iter(b'"', b).count() % 2 == 1
}

/// Skips to just past the newline that ends the current record, or to the
/// start of a line where a record begins after a quote that cannot close a
/// field (see [`resync_point`]). `Err(in_quotes)` when the record continues
/// past `b`.
fn skip_record(b: &[u8], mut in_quotes: bool, at_line_start: bool) -> Result<usize, bool> {
    // Where the current line starts, when it starts within `b`.
    let mut line_start = at_line_start.then_some(0);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' if in_quotes => match b.get(i + 1) {
                Some(b'"') => i += 1,
                Some(b',' | b'\n' | b'\r') | None => in_quotes = false,
                Some(_) if line_start.is_some_and(|l| starts_record(&b[l..])) => return Ok(line_start.unwrap_or(0)),
                Some(_) => {}
            },
            b'"' => in_quotes = true,
            b'\n' if !in_quotes => return Ok(i + 1),
            b'\n' => line_start = Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err(in_quotes)
}

/// Whether `line` begins like a csvlog record: its `log_time`, unquoted,
/// then the comma before `user_name`.
fn starts_record(line: &[u8]) -> bool {
    parse_timestamp(line).is_some_and(|(_, n)| line.get(n) == Some(&b','))
}

/// For a record that spans lines: where the next record really starts, if
/// its quoting is broken. PostgreSQL doubles every quote inside a quoted
/// field, so a quote that would close a field but is followed by anything
/// other than a comma or a line end cannot be its writing; when that
/// happens on a line that begins like a csvlog record, the record before
/// it was cut inside a quoted field and the new one starts at that line.
/// (A line that begins like a record inside a legitimate multi-line field
/// has its quotes doubled, so it never triggers this.)
fn resync_point(rec: &[u8]) -> Option<usize> {
    // Single-line records cannot hide another record.
    let first_newline = memchr::memchr(b'\n', rec)?;
    if first_newline + 1 >= rec.len() {
        return None;
    }
    let mut in_quotes = false;
    let mut line_start = 0;
    let mut i = 0;
    while i < rec.len() {
        match rec[i] {
            b'"' if in_quotes => match rec.get(i + 1) {
                Some(b'"') => i += 1,
                Some(b',' | b'\n' | b'\r') | None => in_quotes = false,
                Some(_) => return (line_start > 0 && starts_record(&rec[line_start..])).then_some(line_start),
            },
            b'"' => in_quotes = true,
            b'\n' => line_start = i + 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// (line, message, statement, truncated) of each entry.
    type Seen = Vec<(u64, String, Option<String>, bool)>;

    fn run(input: &[u8], chunk: usize, cap: usize) -> (Seen, ParseStats) {
        let mut p = CsvParser::new(cap);
        let mut out = Vec::new();
        let mut sink =
            |e: LogEntry<'_>| out.push((e.line, e.message.into_owned(), e.statement.map(Cow::into_owned), e.truncated));
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

    const CSV: &str = concat!(
        "2026-11-24 09:00:00.001 UTC,\"bob\",\"shop\",10,\"[local]\",6743a0c6.a,1,\"SELECT\",2026-11-24 08:59:00 UTC,3/4,0,LOG,00000,\"duration: 1.500 ms  statement: SELECT 'a\n\"\"quoted\"\"'\",,,,,,,,,\"psql\",\"client backend\",,0\n",
        "2026-11-24 09:00:00.002 UTC,\"bob\",\"shop\",11,\"[local]\",6743a0c6.b,1,\"INSERT\",2026-11-24 08:59:00 UTC,3/5,0,ERROR,23505,\"duplicate key value\",\"Key (id)=(42) already exists.\",,,,,\"INSERT INTO t VALUES (42)\",,,\"psql\",\"client backend\",,-77\n",
    );

    #[test]
    fn parses_quoted_multiline_records() {
        let (entries, stats) = run(CSV.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1, "duration: 1.500 ms  statement: SELECT 'a\n\"quoted\"'");
        assert_eq!(entries[1].0, 3);
        assert_eq!(entries[1].2.as_deref(), Some("INSERT INTO t VALUES (42)"));
        assert_eq!(stats.lines, 3);
        assert_eq!(stats.entries, 2);
    }

    #[test]
    fn any_chunking_gives_the_same_records() {
        let whole = run(CSV.as_bytes(), usize::MAX, 1 << 20);
        for chunk in [1, 5, 17, 64, 200] {
            assert_eq!(run(CSV.as_bytes(), chunk, 1 << 20), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn oversized_record_is_truncated_and_the_next_survives() {
        let big = format!(
            "2026-11-24 09:00:00.001 UTC,\"bob\",\"shop\",10,,,1,,,,0,LOG,00000,\"duration: 1.000 ms  statement: SELECT '{}\n\"\"'\",,,,,,,,,,,,\n",
            "z".repeat(50_000)
        );
        let input = format!("{big}{CSV}");
        for chunk in [500, 4000] {
            let (entries, stats) = run(input.as_bytes(), chunk, 4096);
            assert_eq!(entries.len(), 3, "chunk {chunk}");
            assert!(entries[0].3);
            assert_eq!(stats.truncated, 1);
            assert_eq!(entries[2].2.as_deref(), Some("INSERT INTO t VALUES (42)"));
        }
    }

    /// A record cut inside its quoted message, newline-terminated, then
    /// whole records: `CSV` must come through intact after it.
    const CUT: &str = "2026-11-24 09:00:00.001 UTC,\"bob\",\"shop\",10,,,1,,,,0,LOG,00000,\"duration: 1.000 ms  statement: SELECT 'cut\n";

    #[test]
    fn a_record_cut_inside_quotes_does_not_swallow_the_records_after_it() {
        let input = format!("{CSV}{CUT}{CSV}");
        for chunk in [1, 7, 64, 500, usize::MAX] {
            let (entries, stats) = run(input.as_bytes(), chunk, 1 << 20);
            assert_eq!(entries.len(), 4, "chunk {chunk}");
            assert_eq!(entries[2].1, "duration: 1.500 ms  statement: SELECT 'a\n\"quoted\"'", "chunk {chunk}");
            assert_eq!(entries[2].0, 5, "line numbers go on after the broken record");
            assert_eq!(entries[3].2.as_deref(), Some("INSERT INTO t VALUES (42)"), "chunk {chunk}");
            assert_eq!((stats.unparsed, stats.lines, stats.entries), (1, 7, 4), "chunk {chunk}");
        }
    }

    #[test]
    fn an_over_cap_record_cut_inside_quotes_is_skipped_up_to_the_next_record() {
        let big = format!("{}{}\n", CUT.trim_end(), "z".repeat(10_000));
        let input = format!("{big}{CSV}");
        for chunk in [500, 4000] {
            let (entries, stats) = run(input.as_bytes(), chunk, 4096);
            assert_eq!(entries.len(), 3, "chunk {chunk}");
            assert!(entries[0].3, "the cut record is emitted truncated");
            assert_eq!(entries[2].2.as_deref(), Some("INSERT INTO t VALUES (42)"), "chunk {chunk}");
            assert_eq!(stats.truncated, 1);
        }
    }

    #[test]
    fn a_line_that_looks_like_a_record_inside_a_quoted_field_stays_in_it() {
        // Legitimate: a statement with a newline and a timestamp-like line.
        // Its quotes are doubled, so it is one record, not two.
        let tricky = "2026-11-24 09:00:00.001 UTC,\"bob\",\"shop\",10,,,1,,,,0,LOG,00000,\"duration: 1.000 ms  statement: SELECT '\n2026-11-24 09:00:00.001 UTC,\"\"x\"\",y'\",,,,,,,,,,,,\n";
        let (entries, stats) = run(format!("{tricky}{CSV}").as_bytes(), 16, 1 << 20);
        assert_eq!(entries.len(), 3);
        assert!(entries[0].1.ends_with("UTC,\"x\",y'"), "{:?}", entries[0].1);
        assert_eq!(stats.unparsed, 0);
    }

    #[test]
    fn a_complete_last_record_is_not_held_back() {
        let mut p = CsvParser::new(1 << 20);
        let mut n = 0;
        let consumed = p.parse(CSV.as_bytes(), false, &mut |_| n += 1);
        assert_eq!((consumed, n), (CSV.len(), 2));
        // Open inside quotes at a newline: kept for more data.
        let open = &CSV[..CSV.find("SELECT 'a\n").unwrap() + 10];
        let mut p = CsvParser::new(1 << 20);
        assert_eq!(p.parse(open.as_bytes(), false, &mut |_| n += 1), 0);
    }

    /// Found by the `csvlog` fuzz target: the same bytes fed in chunks of
    /// 224 counted differently (unparsed 5 vs 2, invalid UTF-8 0 vs 1) from
    /// the whole buffer.
    #[test]
    fn fuzz_csvlog_chunked_counts_differ() {
        let crash = include_bytes!("../../../tests/fixtures/fuzz/csvlog-chunked-counts-differ.bin");
        // The first byte is the fuzz target's seed (chunk 224 came from it).
        chunking_agrees(&crash[1..], &[224, 1, 16, 100, 1000]);
    }

    /// `log` fed in each of `chunks` gives the entries and counters of
    /// `log` fed whole.
    fn chunking_agrees(log: &[u8], chunks: &[usize]) {
        let whole = run(log, usize::MAX, 1 << 20);
        for &chunk in chunks {
            let got = run(log, chunk, 1 << 20);
            assert_eq!(got.0, whole.0, "entries, chunk {chunk}");
            assert_eq!(got.1, whole.1, "counters, chunk {chunk}");
        }
    }

    /// Found by the `csvlog` fuzz target (after the fix above): at the end
    /// of the file the parser left a trailing empty line unconsumed, so the
    /// caller would hold it forever (and count its line nowhere).
    #[test]
    fn fuzz_csvlog_eof_not_consumed() {
        let crash = include_bytes!("../../../tests/fixtures/fuzz/csvlog-eof-not-consumed.bin");
        let log = &crash[1..];
        // `run` asserts that everything is consumed.
        let whole = run(log, usize::MAX, 1 << 20);
        assert_eq!(whole.1.lines, log.iter().filter(|b| **b == b'\n').count() as u64);
        chunking_agrees(log, &[1, 16, 100, 1000]);
        // The smallest form: a record, then blank lines.
        let input = format!("{CSV}\n\n");
        let (entries, stats) = run(input.as_bytes(), usize::MAX, 1 << 20);
        assert_eq!((entries.len(), stats.lines), (2, 5));
    }

    #[test]
    fn garbage_rows_are_counted_not_fatal() {
        let input = format!("not,a,log,line\n{CSV}\"unterminated");
        let (entries, stats) = run(input.as_bytes(), 64, 1 << 20);
        assert_eq!(entries.len(), 2);
        assert_eq!(stats.unparsed, 2);
    }

    /// Found by the `csvlog` fuzz target (run 3, after the two fixes
    /// above): fed in 64-byte chunks, the parser counted one unparsed
    /// record fewer than fed the whole file.
    #[test]
    fn fuzz_csvlog_unparsed_counts_differ() {
        let crash = include_bytes!("../../../tests/fixtures/fuzz/csvlog-unparsed-counts-differ.bin");
        // Seed byte 3: chunks of 64.
        chunking_agrees(&crash[1..], &[64, 1, 16, 100, 1000]);
    }
}
