//! One PostgreSQL log entry, the same shape whichever format it came from.
//!
//! In stderr a message and its `DETAIL:`/`HINT:`/`CONTEXT:`/`STATEMENT:`
//! lines arrive as separate prefixed lines; csvlog and jsonlog carry them as
//! fields of one record. Parsers fold both into a [`LogEntry`], so
//! everything downstream is format-agnostic. Text borrows from the read
//! buffer where it can (`Cow`), since most entries need no rewriting.

use querywatch_wire::stats::EpochMillis;
use std::borrow::Cow;

/// `error_severity`, as PostgreSQL prints it with `lc_messages = 'C'`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Debug,
    Info,
    Notice,
    Warning,
    Log,
    Error,
    Fatal,
    Panic,
}

impl Severity {
    pub fn parse(s: &[u8]) -> Option<Severity> {
        Some(match s {
            b"LOG" => Severity::Log,
            b"ERROR" => Severity::Error,
            b"FATAL" => Severity::Fatal,
            b"PANIC" => Severity::Panic,
            b"WARNING" => Severity::Warning,
            b"NOTICE" => Severity::Notice,
            b"INFO" => Severity::Info,
            b"DEBUG" | b"DEBUG1" | b"DEBUG2" | b"DEBUG3" | b"DEBUG4" | b"DEBUG5" => Severity::Debug,
            _ => return None,
        })
    }

    pub fn is_error(self) -> bool {
        matches!(self, Severity::Error | Severity::Fatal | Severity::Panic)
    }
}

/// The secondary lines of a stderr message, which csvlog/jsonlog carry as fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secondary {
    Detail,
    Hint,
    Query,
    Context,
    Location,
    Statement,
}

impl Secondary {
    pub fn parse(s: &[u8]) -> Option<Secondary> {
        Some(match s {
            b"DETAIL" => Secondary::Detail,
            b"HINT" => Secondary::Hint,
            b"QUERY" => Secondary::Query,
            b"CONTEXT" => Secondary::Context,
            b"LOCATION" => Secondary::Location,
            b"STATEMENT" => Secondary::Statement,
            _ => return None,
        })
    }
}

/// A five-character SQLSTATE such as `23505`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SqlState(pub [u8; 5]);

impl SqlState {
    pub fn parse(s: &[u8]) -> Option<SqlState> {
        let arr: [u8; 5] = s.try_into().ok()?;
        arr.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()).then_some(SqlState(arr))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics get in (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }
}

/// One log entry: a message with everything PostgreSQL attached to it.
#[derive(Clone, Debug, Default)]
pub struct LogEntry<'a> {
    /// 1-based line of the file where the entry starts.
    pub line: u64,
    pub timestamp: Option<EpochMillis>,
    pub pid: Option<u32>,
    /// Set on lines of parallel workers: the pid of the backend that leads them.
    pub leader_pid: Option<u32>,
    /// `%c` / `session_id`: unique per backend session even across pid reuse.
    pub session_id: Option<Cow<'a, str>>,
    pub user: Option<Cow<'a, str>>,
    pub database: Option<Cow<'a, str>>,
    pub application: Option<Cow<'a, str>>,
    pub severity: Option<Severity>,
    pub sqlstate: Option<SqlState>,
    pub query_id: Option<i64>,
    pub message: Cow<'a, str>,
    pub detail: Option<Cow<'a, str>>,
    pub hint: Option<Cow<'a, str>>,
    pub context: Option<Cow<'a, str>>,
    /// The statement the message is about (`STATEMENT:` line, csv `query`).
    pub statement: Option<Cow<'a, str>>,
    /// The entry was longer than the size cap and was cut.
    pub truncated: bool,
}

impl LogEntry<'_> {
    /// A session key for pairing lines of one backend: the session id when
    /// the format has it, else the pid.
    pub fn session_key(&self) -> Option<SessionKey> {
        if let Some(s) = &self.session_id
            && !s.is_empty()
        {
            return Some(SessionKey::Id(hash_str(s)));
        }
        self.pid.map(SessionKey::Pid)
    }
}

/// Identifies a backend session for pairing lines that belong together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionKey {
    Id(u64),
    Pid(u32),
}

fn hash_str(s: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(s)
}

/// Converts bytes to text, replacing invalid UTF-8; reports whether it had to.
pub fn text(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(_) => (Cow::Owned(String::from_utf8_lossy(bytes).into_owned()), true),
    }
}
