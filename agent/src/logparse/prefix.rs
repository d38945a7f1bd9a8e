//! `log_line_prefix`: compile the setting, then match it against each line.
//!
//! Every escape PostgreSQL documents is understood (`%a %u %d %r %h %b %p %P
//! %t %m %n %Q %i %e %c %l %s %v %x %q %%`, with padding such as `%-10u`).
//! Fields with a fixed shape (pids, timestamps, SQLSTATE, session ids) are
//! parsed by shape; free-text fields (user, database, application, host,
//! backend type, command tag) extend to the next literal of the prefix, with
//! bounded backtracking when a value happens to contain that literal. A
//! match is only accepted when a severity label (`LOG:  `, `DETAIL:  `, …)
//! follows, so `%q` (where non-session processes stop the prefix) is tried
//! both ways.

use crate::logparse::entry::{Secondary, Severity, SqlState};
use crate::logparse::time::{parse_epoch, parse_timestamp};
use querywatch_wire::stats::EpochMillis;
use std::ops::Range;

/// An error in the `log_line_prefix` setting given to us.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("log_line_prefix {prefix:?} ends with a lone '%'")]
    TrailingPercent { prefix: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Application,
    User,
    Database,
    RemoteHostPort,
    RemoteHost,
    BackendType,
    Pid,
    LeaderPid,
    Timestamp,
    TimestampMs,
    Epoch,
    QueryId,
    CommandTag,
    SqlState,
    SessionId,
    SessionLine,
    SessionStart,
    Vxid,
    Xid,
    /// An escape this agent does not know (PostgreSQL ignores unknown
    /// ones, and a newer release may add one): text of any shape, or none.
    Unknown,
}

impl Field {
    fn is_free_text(self) -> bool {
        matches!(
            self,
            Field::Application
                | Field::User
                | Field::Database
                | Field::RemoteHostPort
                | Field::RemoteHost
                | Field::BackendType
                | Field::CommandTag
                | Field::Vxid
                | Field::Unknown
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Literal(Vec<u8>),
    Field {
        field: Field,
        pad: i32,
    },
    /// `%q`: non-session processes end the prefix here.
    StopUnlessSession,
}

/// What a matched prefix told us, as ranges into the line and parsed values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixFields {
    pub timestamp: Option<EpochMillis>,
    pub pid: Option<u32>,
    /// `%P`: the leader's pid when the line comes from a parallel worker.
    pub leader_pid: Option<u32>,
    pub user: Option<Range<usize>>,
    pub database: Option<Range<usize>>,
    pub application: Option<Range<usize>>,
    pub session_id: Option<Range<usize>>,
    pub sqlstate: Option<SqlState>,
    pub query_id: Option<i64>,
}

/// The label that starts a message after the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    Primary(Severity),
    Secondary(Secondary),
}

/// A matched line: prefix fields, the label and where the message text starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    pub fields: PrefixFields,
    pub label: Label,
    pub message_start: usize,
}

impl PrefixMatch {
    /// It read a user or a database name (the line got past any `%q`: a
    /// session's line), and neither holds a space. A wrong prefix whose
    /// free-text field swallowed the rest of the real prefix would hold one.
    pub fn read_session_names(&self, line: &[u8]) -> bool {
        let names = [&self.fields.user, &self.fields.database];
        names.iter().any(|r| r.is_some())
            && names.into_iter().flatten().all(|r| !line[r.clone()].iter().any(u8::is_ascii_whitespace))
    }
}

/// A compiled `log_line_prefix`.
#[derive(Clone, Debug)]
pub struct Prefix {
    source: String,
    items: Vec<Item>,
    /// No known prefix: find the label, take what can be recognized before it.
    heuristic: bool,
    /// Escapes read as text of any shape (see [`Prefix::unknown_escapes`]).
    unknown: Vec<char>,
}

/// The source string of the heuristic prefix (see [`Prefix::heuristic`]).
pub const HEURISTIC: &str = "<unknown prefix>";

/// Free-text values longer than this are not considered when backtracking:
/// it bounds the work per line on lines that do not match at all.
const MAX_FREE_TEXT: usize = 512;
/// Bounds backtracking per line (alternative split points tried).
const MAX_STEPS: u32 = 256;

impl Prefix {
    /// Compiles a `log_line_prefix` value (as in postgresql.conf, unquoted).
    pub fn compile(prefix: &str) -> Result<Prefix, PrefixError> {
        let bytes = prefix.as_bytes();
        let mut items: Vec<Item> = Vec::new();
        let mut lit = Vec::new();
        let mut unknown = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                lit.push(b);
                i += 1;
                continue;
            }
            i += 1;
            // Optional padding: -?digits
            let mut pad: i32 = 0;
            let neg = bytes.get(i) == Some(&b'-');
            if neg {
                i += 1;
            }
            while let Some(d) = bytes.get(i).filter(|d| d.is_ascii_digit()) {
                pad = pad.saturating_mul(10).saturating_add(i32::from(d - b'0'));
                i += 1;
            }
            if neg {
                pad = -pad;
            }
            let Some(&esc) = bytes.get(i) else {
                return Err(PrefixError::TrailingPercent { prefix: prefix.to_owned() });
            };
            i += 1;
            let field = match esc {
                b'%' => {
                    lit.push(b'%');
                    continue;
                }
                b'q' => None,
                b'a' => Some(Field::Application),
                b'u' => Some(Field::User),
                b'd' => Some(Field::Database),
                b'r' => Some(Field::RemoteHostPort),
                b'h' => Some(Field::RemoteHost),
                b'b' => Some(Field::BackendType),
                b'p' => Some(Field::Pid),
                b'P' => Some(Field::LeaderPid),
                b't' => Some(Field::Timestamp),
                b'm' => Some(Field::TimestampMs),
                b'n' => Some(Field::Epoch),
                b'Q' => Some(Field::QueryId),
                b'i' => Some(Field::CommandTag),
                b'e' => Some(Field::SqlState),
                b'c' => Some(Field::SessionId),
                b'l' => Some(Field::SessionLine),
                b's' => Some(Field::SessionStart),
                b'v' => Some(Field::Vxid),
                b'x' => Some(Field::Xid),
                other => {
                    // PostgreSQL writes nothing for an escape it does not
                    // know, and a later release may write something for
                    // one this agent does not know: either way the server
                    // runs with it, so the agent must too.
                    unknown.push(char::from(other));
                    Some(Field::Unknown)
                }
            };
            if !lit.is_empty() {
                items.push(Item::Literal(std::mem::take(&mut lit)));
            }
            items.push(match field {
                Some(field) => Item::Field { field, pad },
                None => Item::StopUnlessSession,
            });
        }
        if !lit.is_empty() {
            items.push(Item::Literal(lit));
        }
        Ok(Prefix { source: prefix.to_owned(), items, heuristic: false, unknown })
    }

    /// The escapes of the setting this agent does not know, as written
    /// (`%z %y`), read as text of any shape (PostgreSQL writes nothing for
    /// them, or a later release something); `None` when it knows them all.
    pub fn unknown_escapes(&self) -> Option<String> {
        let shown: Vec<String> = self.unknown.iter().map(|c| format!("%{c}")).collect();
        (!shown.is_empty()).then(|| shown.join(" "))
    }

    /// A prefix for logs whose `log_line_prefix` is unknown: a line is an
    /// entry when a severity label (`LOG:  `, `DETAIL:  `, …) follows a
    /// space within its first bytes; a leading timestamp and the first
    /// `[pid]` are taken, user and database are not known. Degraded, but it
    /// reads any prefix that ends with a space, which pgbadger cannot.
    pub fn heuristic() -> Prefix {
        Prefix { source: HEURISTIC.to_owned(), items: Vec::new(), heuristic: true, unknown: Vec::new() }
    }

    pub fn is_heuristic(&self) -> bool {
        self.heuristic
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the prefix lets lines of one session be paired (`%c` or `%p`).
    pub fn has_session(&self) -> bool {
        self.heuristic
            || self.items.iter().any(|i| matches!(i, Item::Field { field: Field::SessionId | Field::Pid, .. }))
    }

    /// Whether the prefix carries a timestamp (`%t`, `%m` or `%n`).
    pub fn has_time(&self) -> bool {
        self.heuristic
            || self
                .items
                .iter()
                .any(|i| matches!(i, Item::Field { field: Field::Timestamp | Field::TimestampMs | Field::Epoch, .. }))
    }

    /// Matches the prefix at the start of `line`, followed by a message label.
    pub fn matches(&self, line: &[u8]) -> Option<PrefixMatch> {
        if self.heuristic {
            return heuristic_match(line);
        }
        if let Some(m) = self.first_try(line) {
            return Some(m);
        }
        let mut fields = PrefixFields::default();
        let mut steps = 0;
        let (label, message_start) = self.match_from(0, line, 0, &mut fields, &mut steps)?;
        Some(PrefixMatch { fields, label, message_start })
    }

    /// The common case without backtracking: every free-text value ends at
    /// the first occurrence of the literal after it, and `%q` stops where a
    /// label follows. About half the cost of the general matcher, which
    /// runs when this gives up (a value containing its delimiter, a
    /// free-text field not followed by a literal, a line that is no entry).
    fn first_try(&self, line: &[u8]) -> Option<PrefixMatch> {
        let mut fields = PrefixFields::default();
        let mut pos = 0;
        for (i, item) in self.items.iter().enumerate() {
            match item {
                Item::Literal(l) => {
                    if !line[pos..].starts_with(l) {
                        return None;
                    }
                    pos += l.len();
                }
                Item::StopUnlessSession => {
                    if let Some((label, message_start)) = label_at(line, pos) {
                        return Some(PrefixMatch { fields, label, message_start });
                    }
                }
                Item::Field { field, pad } if field.is_free_text() => {
                    let Some(Item::Literal(next)) = self.items.get(i + 1) else { return None };
                    let limit = line.len().min(pos + MAX_FREE_TEXT);
                    let end = pos + find(&line[pos..limit], next)?;
                    let range = if *pad != 0 { trim_spaces(line, pos..end) } else { pos..end };
                    store_text(*field, range, &mut fields);
                    pos = end;
                }
                Item::Field { field, pad } => {
                    let (value, end) = shaped_padded(*field, *pad, line, pos)?;
                    value.store(&mut fields);
                    pos = end;
                }
            }
        }
        let (label, message_start) = label_at(line, pos)?;
        Some(PrefixMatch { fields, label, message_start })
    }

    fn match_from(
        &self,
        idx: usize,
        line: &[u8],
        pos: usize,
        out: &mut PrefixFields,
        steps: &mut u32,
    ) -> Option<(Label, usize)> {
        *steps += 1;
        if *steps > MAX_STEPS {
            return None;
        }
        let Some(item) = self.items.get(idx) else {
            return label_at(line, pos);
        };
        match item {
            Item::Literal(l) => {
                if line[pos..].starts_with(l) {
                    self.match_from(idx + 1, line, pos + l.len(), out, steps)
                } else {
                    None
                }
            }
            Item::StopUnlessSession => self.match_from(idx + 1, line, pos, out, steps).or_else(|| label_at(line, pos)),
            Item::Field { field, pad } if field.is_free_text() => {
                self.match_free_text(idx, *field, *pad, line, pos, out, steps)
            }
            Item::Field { field, pad } => {
                let (value, end) = shaped_padded(*field, *pad, line, pos)?;
                let r = self.match_from(idx + 1, line, end, out, steps)?;
                value.store(out);
                Some(r)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn match_free_text(
        &self,
        idx: usize,
        field: Field,
        pad: i32,
        line: &[u8],
        pos: usize,
        out: &mut PrefixFields,
        steps: &mut u32,
    ) -> Option<(Label, usize)> {
        let limit = line.len().min(pos + MAX_FREE_TEXT);
        let try_end = |end: usize, out: &mut PrefixFields, steps: &mut u32| {
            let r = self.match_from(idx + 1, line, end, out, steps)?;
            let mut range = pos..end;
            if pad != 0 {
                range = trim_spaces(line, range);
            }
            store_text(field, range, out);
            Some(r)
        };
        match self.items.get(idx + 1) {
            // Followed by a literal: candidate ends are its occurrences.
            Some(Item::Literal(lit)) => {
                let mut from = pos;
                while from <= limit {
                    let hay = &line[from..limit];
                    let off = find(hay, lit)?;
                    if let Some(r) = try_end(from + off, out, steps) {
                        return Some(r);
                    }
                    from += off + 1;
                }
                None
            }
            // Last item, or followed by a field or %q: every end is a candidate,
            // shortest first (values are usually short).
            _ => {
                for end in pos..=limit {
                    if let Some(r) = try_end(end, out, steps) {
                        return Some(r);
                    }
                    if *steps > MAX_STEPS {
                        return None;
                    }
                }
                None
            }
        }
    }
}

enum Value {
    Time(EpochMillis),
    Pid(u32),
    LeaderPid(Option<u32>),
    QueryId(i64),
    SqlState(SqlState),
    Session(Range<usize>),
    Ignored,
}

impl Value {
    fn store(self, out: &mut PrefixFields) {
        match self {
            Value::Time(t) => out.timestamp = Some(t),
            Value::Pid(p) => out.pid = Some(p),
            Value::QueryId(q) => out.query_id = Some(q),
            Value::SqlState(s) => out.sqlstate = Some(s),
            Value::Session(r) => out.session_id = Some(r),
            Value::LeaderPid(p) => out.leader_pid = p,
            Value::Ignored => {}
        }
    }
}

/// First occurrence of `needle` in `hay`. Prefix literals are a few bytes
/// and values short, where memchr on the first byte beats a general
/// substring searcher's set-up cost.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = memchr::memchr(first, &hay[from..]) {
        let at = from + i;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn store_text(field: Field, range: Range<usize>, out: &mut PrefixFields) {
    match field {
        Field::User => out.user = Some(range),
        Field::Database => out.database = Some(range),
        Field::Application => out.application = Some(range),
        _ => {}
    }
}

fn trim_spaces(line: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && line[r.start] == b' ' {
        r.start += 1;
    }
    while r.end > r.start && line[r.end - 1] == b' ' {
        r.end -= 1;
    }
    r
}

fn digit_run(line: &[u8], pos: usize) -> usize {
    line[pos..].iter().take_while(|b| b.is_ascii_digit()).count()
}

/// A fixed-shape field with its padding: `%5p` pads on the left, `%-5p` on the right.
fn shaped_padded(field: Field, pad: i32, line: &[u8], pos: usize) -> Option<(Value, usize)> {
    let mut p = pos;
    if pad > 0 {
        while p < line.len() && line[p] == b' ' && p - pos < pad as usize {
            p += 1;
        }
    }
    let (value, mut end) = shaped(field, line, p)?;
    if pad < 0 {
        while end < line.len() && line[end] == b' ' && end - pos < pad.unsigned_abs() as usize {
            end += 1;
        }
    }
    Some((value, end))
}

/// Parses a fixed-shape field at `pos`; returns its value and end.
fn shaped(field: Field, line: &[u8], pos: usize) -> Option<(Value, usize)> {
    match field {
        Field::Timestamp | Field::TimestampMs => {
            let (t, n) = parse_timestamp(&line[pos..])?;
            Some((Value::Time(t), pos + n))
        }
        Field::SessionStart => {
            let (_, n) = parse_timestamp(&line[pos..])?;
            Some((Value::Ignored, pos + n))
        }
        Field::Epoch => {
            let (t, n) = parse_epoch(&line[pos..])?;
            Some((Value::Time(t), pos + n))
        }
        Field::Pid => {
            let n = digit_run(line, pos);
            if n == 0 || n > 10 {
                return None;
            }
            let pid = line[pos..pos + n]
                .iter()
                .try_fold(0u32, |acc, d| acc.checked_mul(10)?.checked_add(u32::from(d - b'0')))?;
            Some((Value::Pid(pid), pos + n))
        }
        // Empty unless the process is a parallel worker.
        Field::LeaderPid => {
            let n = digit_run(line, pos);
            let pid = std::str::from_utf8(&line[pos..pos + n]).ok().and_then(|p| p.parse().ok());
            Some((Value::LeaderPid(pid), pos + n))
        }
        Field::SessionLine | Field::Xid => {
            let n = digit_run(line, pos);
            (n > 0).then_some((Value::Ignored, pos + n))
        }
        Field::QueryId => {
            let neg = usize::from(line.get(pos) == Some(&b'-'));
            let n = digit_run(line, pos + neg);
            if n == 0 {
                return None;
            }
            let q = std::str::from_utf8(&line[pos..pos + neg + n]).ok()?.parse().ok()?;
            Some((Value::QueryId(q), pos + neg + n))
        }
        Field::SqlState => {
            let s = SqlState::parse(line.get(pos..pos + 5)?)?;
            Some((Value::SqlState(s), pos + 5))
        }
        Field::SessionId => {
            // hex(start time) "." hex(pid)
            let hex = |p: usize| line[p..].iter().take_while(|b| b.is_ascii_hexdigit()).count();
            let a = hex(pos);
            if a == 0 || line.get(pos + a) != Some(&b'.') {
                return None;
            }
            let b = hex(pos + a + 1);
            if b == 0 {
                return None;
            }
            let end = pos + a + 1 + b;
            Some((Value::Session(pos..end), end))
        }
        _ => None,
    }
}

fn heuristic_match(line: &[u8]) -> Option<PrefixMatch> {
    let window = &line[..line.len().min(MAX_FREE_TEXT)];
    // The label follows the prefix: at the start or after a space.
    let mut from = 0;
    let (label, message_start, at) = loop {
        let i = memchr::memchr(b':', &window[from..])? + from;
        // Walk back over the label word.
        let start =
            window[..i].iter().rposition(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit())).map_or(0, |p| p + 1);
        if (start == 0 || window[start - 1] == b' ')
            && window.get(i + 1..i + 3) == Some(b"  ")
            && let Some((label, msg)) = label_at(line, start)
        {
            break (label, msg, start);
        }
        from = i + 1;
    };
    let head = &line[..at];
    let mut fields = PrefixFields::default();
    let ts_at = usize::from(head.first() == Some(&b'['));
    if let Some((t, _)) = head.get(ts_at..).and_then(parse_timestamp) {
        fields.timestamp = Some(t);
    }
    let mut rest = head;
    while let Some(open) = memchr::memchr(b'[', rest) {
        let n = digit_run(rest, open + 1);
        if n > 0 && rest.get(open + 1 + n) == Some(&b']') {
            fields.pid = std::str::from_utf8(&rest[open + 1..open + 1 + n]).ok().and_then(|p| p.parse().ok());
            break;
        }
        rest = &rest[open + 1..];
    }
    Some(PrefixMatch { fields, label, message_start })
}

/// Recognizes `LABEL:  ` at `pos` (PostgreSQL writes two spaces after the colon).
pub fn label_at(line: &[u8], pos: usize) -> Option<(Label, usize)> {
    let rest = &line[pos..];
    let n = rest.iter().take(10).take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit()).count();
    if n < 3 || rest.get(n) != Some(&b':') {
        return None;
    }
    let word = &rest[..n];
    let label =
        if let Some(s) = Severity::parse(word) { Label::Primary(s) } else { Label::Secondary(Secondary::parse(word)?) };
    // Two spaces normally; be lenient about one (or none at end of line).
    let mut start = pos + n + 1;
    for _ in 0..2 {
        if line.get(start) == Some(&b' ') {
            start += 1;
        }
    }
    Some((label, start))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(prefix: &str, line: &str) -> Option<PrefixMatch> {
        Prefix::compile(prefix).unwrap().matches(line.as_bytes())
    }

    fn slice<'a>(line: &'a str, r: &Option<Range<usize>>) -> &'a str {
        &line[r.clone().unwrap()]
    }

    #[test]
    fn default_prefix() {
        let line = "2026-11-24 09:01:10.123 UTC [4242] LOG:  duration: 0.050 ms  statement: SELECT 1";
        let got = m("%m [%p] ", line).unwrap();
        assert_eq!(got.fields.pid, Some(4242));
        assert_eq!(got.label, Label::Primary(Severity::Log));
        assert!(line[got.message_start..].starts_with("duration:"));
    }

    #[test]
    fn pgbadger_style_prefix_with_user_db_app_client() {
        let p = "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ";
        let line = "2026-11-24 09:01:10 UTC [77]: [3-1] user=alice,db=shop,app=psql, v2,client=[local] ERROR:  boom";
        let got = m(p, line).unwrap();
        assert_eq!(slice(line, &got.fields.user), "alice");
        assert_eq!(slice(line, &got.fields.database), "shop");
        assert_eq!(slice(line, &got.fields.application), "psql, v2");
        assert_eq!(got.label, Label::Primary(Severity::Error));
    }

    #[test]
    fn q_stops_for_background_processes() {
        let p = "%m [%p] %q%u@%d/%a ";
        let bg = "2026-11-24 09:01:10.123 UTC [99] LOG:  checkpoint starting: time";
        let got = m(p, bg).unwrap();
        assert_eq!(got.fields.user, None);
        let fg = "2026-11-24 09:01:10.123 UTC [99] bob@db1/pgbench LOG:  duration: 1.000 ms  statement: x";
        let got = m(p, fg).unwrap();
        assert_eq!(slice(fg, &got.fields.user), "bob");
        assert_eq!(slice(fg, &got.fields.database), "db1");
        assert_eq!(slice(fg, &got.fields.application), "pgbench");
    }

    #[test]
    fn session_sqlstate_queryid_and_padding() {
        let p = "%m [%-6p] %c %e %Q %-8u|";
        let line =
            "2026-11-24 09:01:10.123 UTC [81    ] 6743a0c6.51 23505 -4503404040451 bob     |ERROR:  duplicate key";
        let got = m(p, line).unwrap();
        assert_eq!(got.fields.pid, Some(81));
        assert_eq!(slice(line, &got.fields.session_id), "6743a0c6.51");
        assert_eq!(got.fields.sqlstate.unwrap().as_str(), "23505");
        assert_eq!(got.fields.query_id, Some(-4503404040451));
        assert_eq!(slice(line, &got.fields.user), "bob");
    }

    #[test]
    fn prefix_without_time_or_pid() {
        let p = "%u@%d ";
        let line = "app@shop STATEMENT:  SELECT 1";
        let got = m(p, line).unwrap();
        assert_eq!(got.label, Label::Secondary(Secondary::Statement));
        assert_eq!(slice(line, &got.fields.user), "app");
        let pre = Prefix::compile(p).unwrap();
        assert!(!pre.has_session() && !pre.has_time());
    }

    #[test]
    fn adjacent_free_text_fields_backtrack() {
        let got = m("%u%d:", "alicedb:LOG:  x").unwrap();
        assert_eq!(got.label, Label::Primary(Severity::Log));
    }

    #[test]
    fn continuation_and_foreign_lines_do_not_match() {
        assert!(m("%m [%p] ", "\tAND x = 1").is_none());
        assert!(m("%m [%p] ", "random text LOG:  no").is_none());
        assert!(m("%m [%p] ", "").is_none());
    }

    #[test]
    fn bad_prefixes_are_reported() {
        // An escape PostgreSQL does not know writes nothing; one a later
        // release adds writes something: both lines match.
        let p = Prefix::compile("%m [%p] %z%u@%d ").unwrap();
        assert_eq!(p.unknown_escapes().as_deref(), Some("%z"));
        assert_eq!(Prefix::compile("%m [%p] ").unwrap().unknown_escapes(), None);
        for line in [
            &b"2026-11-24 09:01:10.123 UTC [42] bob@shop LOG:  x"[..],
            b"2026-11-24 09:01:10.123 UTC [42] 10.1.2.3bob@shop LOG:  x",
        ] {
            let m = p.matches(line).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(line)));
            assert_eq!(m.fields.pid, Some(42));
        }
        assert!(matches!(Prefix::compile("%m %"), Err(PrefixError::TrailingPercent { .. })));
        assert_eq!(m("100%% %p ", "100% 12 LOG:  x").unwrap().fields.pid, Some(12));
    }

    #[test]
    fn heuristic_reads_unknown_prefixes() {
        let h = Prefix::heuristic();
        let line = "2026-11-24 09:22:24.917 UTC [6373] 6370 custom/thing: x LOG:  temporary file: path";
        let got = h.matches(line.as_bytes()).unwrap();
        assert_eq!(got.fields.pid, Some(6373));
        assert!(got.fields.timestamp.is_some());
        assert_eq!(got.label, Label::Primary(Severity::Log));
        assert_eq!(&line[got.message_start..], "temporary file: path");
        let got = h.matches(b"[2026-11-24 09:00:00 UTC] app STATEMENT:  SELECT 1").unwrap();
        assert_eq!(got.label, Label::Secondary(Secondary::Statement));
        assert!(got.fields.timestamp.is_some());
        assert!(h.matches(b"plain text").is_none());
        assert!(h.matches(b"no label here: at all").is_none());
    }

    #[test]
    fn every_escape_compiles() {
        let all = "%a %u %d %r %h %b %p %P %t %m %n %Q %i %e %c %l %s %v %x %q %%";
        assert!(Prefix::compile(all).is_ok());
    }
}
