//! From log entries to events: statement executions with their duration,
//! auto_explain plans, errors, lock waits, deadlocks, temp files, and the
//! message classes that are only counted.
//!
//! This is where lines of one backend session are paired, which needs a
//! session key (`%c` or `%p` in the prefix; csvlog/jsonlog always have it):
//! - extended protocol: `parse` and `bind` durations are added to the next
//!   `execute` of the session; one `execute` is one call, as in
//!   pg_stat_statements;
//! - `log_duration = on` with `log_statement`: a bare `duration: X ms` is
//!   tied to the statement text the session logged just before.
//!
//! Without a session key neither pairing is possible: such durations are
//! counted as unattributed instead of being guessed. Session state is
//! bounded (`max_sessions`); what is evicted is counted.

use crate::logparse::{LogEntry, SessionKey, Severity, SqlState};
use querywatch_wire::stats::EpochMillis;
use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::time::Duration;

/// Who and when, common to every event.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'e> {
    pub timestamp: Option<EpochMillis>,
    pub database: &'e str,
    pub user: &'e str,
    pub pid: Option<u32>,
}

/// Something that happened, in the vocabulary of the report.
#[derive(Debug)]
pub enum Event<'e> {
    /// One execution of a statement (raw text: mask before it leaves).
    Statement {
        ctx: Ctx<'e>,
        duration: Duration,
        text: Cow<'e, str>,
    },
    /// An auto_explain entry: the body after `plan:` (raw).
    Plan {
        ctx: Ctx<'e>,
        duration: Duration,
        body: &'e str,
    },
    /// ERROR, FATAL or PANIC.
    Error {
        ctx: Ctx<'e>,
        sqlstate: Option<SqlState>,
        message: &'e str,
        /// The `CONTEXT:` of the error: it says when the application wrote
        /// the message (`… at RAISE`, a PL/Python function).
        context: Option<&'e str>,
        statement: Option<&'e str>,
    },
    /// `still waiting for …` (acquired = false) or `acquired … after` (true).
    LockWait {
        ctx: Ctx<'e>,
        acquired: bool,
        waiter_pid: u32,
        mode: &'e str,
        object: &'e str,
        wait: Duration,
        holders: Vec<u32>,
        statement: Option<&'e str>,
        /// Last statement seen from the first holder, when known.
        blocker: Option<&'e str>,
    },
    /// `deadlock detected`, with each involved process's statement.
    Deadlock {
        ctx: Ctx<'e>,
        statements: Vec<(u32, &'e str)>,
    },
    TempFile {
        ctx: Ctx<'e>,
        bytes: u64,
        statement: Option<&'e str>,
    },
}

/// Message classes counted per entry (a stable, small vocabulary).
pub mod class {
    pub const DURATION: &str = "duration";
    pub const STATEMENT: &str = "statement";
    pub const PLAN: &str = "plan";
    pub const ERROR: &str = "error";
    pub const LOCK_WAIT: &str = "lock_wait";
    pub const DEADLOCK: &str = "deadlock";
    pub const TEMP_FILE: &str = "temp_file";
    pub const CONNECTION: &str = "connection";
    pub const DISCONNECTION: &str = "disconnection";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const AUTOVACUUM: &str = "autovacuum";
    pub const WARNING: &str = "warning";
    pub const OTHER: &str = "other";
}

#[derive(Debug, Default)]
struct Session {
    /// Statement text logged by `log_statement`, waiting for its duration.
    pending_text: Option<String>,
    /// parse/bind time waiting for its `execute`.
    /// parse/bind time waiting for the `execute` of the same statement text
    /// (hash of the text, time).
    pre_exec: Option<(u64, Duration)>,
    /// The last statement this session ran (for naming lock blockers).
    /// Empty when none; reused, so recording it costs a copy, not an allocation.
    last_statement: String,
    /// When it was last used (the sessionizer's entry count), so that a full
    /// table forgets the sessions idle longest.
    used: u64,
}

impl Session {
    /// The heap its texts hold (what [`TEXT_BUDGET`] bounds).
    fn text_bytes(&self) -> usize {
        self.last_statement.capacity() + self.pending_text.as_ref().map_or(0, String::capacity)
    }
}

/// Bytes of statement text all sessions may hold together (at least eight
/// of the longest statement kept). The session count alone did not bound
/// it: 20,000 sessions that each once ran a 20 KB statement held 400 MB.
const TEXT_BUDGET: usize = 64 << 20;

/// Counters of what the sessionizer could not pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub unattributed_durations: u64,
    pub evicted_sessions: u64,
    /// Sessions' last statements let go to stay within [`TEXT_BUDGET`]
    /// (a lock they block then names no blocking statement).
    pub dropped_texts: u64,
}

/// Turns entries into events, keeping the per-session state pairing needs.
#[derive(Debug)]
pub struct Sessionizer {
    sessions: FxHashMap<SessionKey, Session>,
    /// pid → session key, to find a lock holder's session.
    pids: FxHashMap<u32, SessionKey>,
    /// pid → (database, user) of client backends, for their parallel workers.
    idents: FxHashMap<u32, (String, String)>,
    max_sessions: usize,
    max_text: usize,
    /// Sum of [`Session::text_bytes`], and its bound.
    text_bytes: usize,
    max_text_bytes: usize,
    stats: SessionStats,
    /// Entries seen: the clock of [`Session::used`].
    clock: u64,
}

/// What PostgreSQL logs for an Execute that continues a portal already
/// run (`execute_is_fetch` in postgres.c), instead of `execute `.
const FETCH: &str = "execute fetch from ";

/// Default bound on sessions tracked at once.
pub const DEFAULT_MAX_SESSIONS: usize = 20_000;

impl Sessionizer {
    pub fn new(max_sessions: usize, max_text: usize) -> Self {
        Sessionizer {
            sessions: FxHashMap::default(),
            pids: FxHashMap::default(),
            idents: FxHashMap::default(),
            max_sessions,
            max_text,
            text_bytes: 0,
            max_text_bytes: TEXT_BUDGET.max(max_text.saturating_mul(8)),
            stats: SessionStats::default(),
            clock: 0,
        }
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Classifies one entry, calls `sink` with its event if it has one, and
    /// returns its message class.
    pub fn process<'e, F: FnMut(Event<'_>)>(&mut self, entry: &'e LogEntry<'e>, sink: &mut F) -> &'static str {
        self.clock += 1;
        // Parallel workers log without user and database; their lines
        // (temp files, errors) belong to the leader's session.
        let leader_ident;
        let (database, user) = match (entry.database.as_deref(), entry.leader_pid) {
            (None | Some(""), Some(leader)) => {
                leader_ident = self.idents.get(&leader).cloned().unwrap_or_default();
                (leader_ident.0.as_str(), leader_ident.1.as_str())
            }
            (db, _) => {
                // Kept up to date: a pid is reused by a later session (no
                // `disconnection` line in between without
                // log_disconnections), whose workers must not be put under
                // the earlier session's database.
                let user = entry.user.as_deref().unwrap_or("");
                if let (Some(pid), Some(db)) = (entry.pid, db)
                    && self.idents.get(&pid).is_none_or(|(d, u)| d != db || u != user)
                {
                    if self.idents.len() >= self.max_sessions && !self.idents.contains_key(&pid) {
                        self.idents.clear();
                    }
                    self.idents.insert(pid, (db.to_owned(), user.to_owned()));
                }
                (db.unwrap_or(""), entry.user.as_deref().unwrap_or(""))
            }
        };
        let ctx = Ctx { timestamp: entry.timestamp, database, user, pid: entry.pid };
        let msg: &str = &entry.message;
        let severity = entry.severity.unwrap_or(Severity::Log);
        if severity.is_error() {
            // The session's statement failed: it will log no duration, and
            // the next bare `duration:` (say of a ROLLBACK that is not
            // logged) must not pair with it. Failed statements count as
            // errors, not calls.
            if let Some(k) = entry.session_key()
                && self.sessions.contains_key(&k)
                && self.with_session(k, entry.pid, |s| {
                    s.pending_text = None;
                    s.pre_exec.take().is_some()
                })
            {
                self.stats.unattributed_durations += 1;
            }
            let statement = entry.statement.as_deref();
            let context = entry.context.as_deref();
            sink(Event::Error { ctx, sqlstate: entry.sqlstate, message: msg, context, statement });
            if msg.starts_with("deadlock detected") {
                let statements = deadlock_statements(entry.detail.as_deref().unwrap_or(""));
                sink(Event::Deadlock { ctx, statements });
                return class::DEADLOCK;
            }
            return class::ERROR;
        }
        if severity != Severity::Log {
            return if severity == Severity::Warning { class::WARNING } else { class::OTHER };
        }
        if let Some(rest) = msg.strip_prefix("duration: ") {
            return self.duration(entry, ctx, rest, sink);
        }
        if let Some(text) = msg.strip_prefix("statement: ") {
            self.remember_statement(entry, text);
            return class::STATEMENT;
        }
        if msg.starts_with(FETCH) {
            // More rows of a portal already executed: no new call (see
            // `duration`), so nothing for a duration to pair with.
            return class::STATEMENT;
        }
        if let Some(rest) = msg.strip_prefix("execute ")
            && let Some((_, text)) = rest.split_once(": ")
        {
            self.remember_statement(entry, text);
            return class::STATEMENT;
        }
        if let Some(rest) = msg.strip_prefix("process ") {
            return self.lock_message(entry, ctx, rest, sink);
        }
        if let Some(rest) = msg.strip_prefix("temporary file: path \"") {
            let bytes = rest.rsplit_once(", size ").and_then(|(_, n)| n.trim().parse().ok()).unwrap_or(0);
            sink(Event::TempFile { ctx, bytes, statement: entry.statement.as_deref() });
            return class::TEMP_FILE;
        }
        if msg.starts_with("connection ") {
            class::CONNECTION
        } else if msg.starts_with("disconnection: ") {
            if let Some(key) = entry.session_key()
                && let Some(gone) = self.sessions.remove(&key)
            {
                self.text_bytes -= gone.text_bytes();
            }
            if let Some(pid) = entry.pid {
                self.idents.remove(&pid);
                self.pids.remove(&pid);
            }
            class::DISCONNECTION
        } else if msg.starts_with("checkpoint") || msg.starts_with("restartpoint") {
            class::CHECKPOINT
        } else if msg.starts_with("automatic vacuum") || msg.starts_with("automatic analyze") {
            class::AUTOVACUUM
        } else {
            class::OTHER
        }
    }

    fn session(&mut self, key: SessionKey, pid: Option<u32>) -> &mut Session {
        if !self.sessions.contains_key(&key) && self.sessions.len() >= self.max_sessions {
            self.forget_idle_sessions();
        }
        if let Some(pid) = pid {
            self.pids.insert(pid, key);
        }
        let s = self.sessions.entry(key).or_default();
        s.used = self.clock;
        s
    }

    /// `f` on the session's state, keeping [`Self::text_bytes`]: every
    /// change to a session's texts goes through here. Past the budget,
    /// texts of other sessions are let go ([`Self::shed_texts`]).
    fn with_session<R>(&mut self, key: SessionKey, pid: Option<u32>, f: impl FnOnce(&mut Session) -> R) -> R {
        let s = self.session(key, pid);
        let before = s.text_bytes();
        let r = f(s);
        let after = s.text_bytes();
        self.text_bytes = (self.text_bytes + after).saturating_sub(before);
        if self.text_bytes > self.max_text_bytes {
            self.shed_texts(key);
        }
        r
    }

    /// Back within the text budget. The other sessions' last statements go
    /// first: they only name lock blockers, while a text waiting for its
    /// duration pairs a call. Forgetting the idle half of the sessions
    /// instead emptied the table of small sessions while a few recent
    /// large ones held the bytes.
    fn shed_texts(&mut self, keep: SessionKey) {
        let mut freed = 0;
        for (k, s) in &mut self.sessions {
            if *k != keep && s.last_statement.capacity() > 0 {
                freed += s.last_statement.capacity();
                s.last_statement = String::new();
                self.stats.dropped_texts += 1;
            }
        }
        self.text_bytes -= freed;
        if self.text_bytes > self.max_text_bytes {
            self.forget_idle_sessions();
        }
    }

    /// Bounded state: the half of the sessions idle longest is forgotten,
    /// counted. Sessions leave only with a `disconnection:` line, which
    /// `log_disconnections` (off by default) writes, so without it the
    /// table fills with every session ever seen; clearing it whole then
    /// dropped the pairing state of the sessions still running, every few
    /// minutes on a server with short connections.
    fn forget_idle_sessions(&mut self) {
        let mut used: Vec<u64> = self.sessions.values().map(|s| s.used).collect();
        let mid = used.len() / 2;
        let (_, &mut cut, _) = used.select_nth_unstable(mid);
        let before = self.sessions.len();
        let mut freed = 0;
        self.sessions.retain(|_, s| {
            let keep = s.used > cut;
            freed += if keep { 0 } else { s.text_bytes() };
            keep
        });
        self.text_bytes -= freed;
        self.stats.evicted_sessions += (before - self.sessions.len()) as u64;
        let sessions = &self.sessions;
        self.pids.retain(|_, k| sessions.contains_key(k));
    }

    fn remember_statement(&mut self, entry: &LogEntry<'_>, text: &str) {
        let Some(key) = entry.session_key() else { return };
        let max = self.max_text;
        self.with_session(key, entry.pid, |s| s.pending_text = Some(bounded(text, max).to_owned()));
    }

    fn duration<F: FnMut(Event<'_>)>(
        &mut self,
        entry: &LogEntry<'_>,
        ctx: Ctx<'_>,
        rest: &str,
        sink: &mut F,
    ) -> &'static str {
        let Some((duration, after)) = parse_ms(rest) else { return class::OTHER };
        let key = entry.session_key();
        let max = self.max_text;
        // `duration: X ms` then two spaces and what it measured, or nothing.
        let what = after.strip_prefix("  ").unwrap_or(after);
        if what.is_empty() {
            // log_duration: pair with the session's pending statement text.
            let pending = key.and_then(|k| self.with_session(k, entry.pid, |s| s.pending_text.take()));
            match pending {
                Some(text) => {
                    let mut total = duration;
                    if let Some(k) = key {
                        let pre_exec = self.with_session(k, entry.pid, |s| {
                            set(&mut s.last_statement, &text);
                            s.pre_exec.take()
                        });
                        // log_min_duration_statement logged a slow parse or
                        // bind with its text; the execute, already logged by
                        // log_statement, then gets a bare duration.
                        match pre_exec {
                            Some((h, d)) if h == text_hash(&text) => total += d,
                            Some(_) => self.stats.unattributed_durations += 1,
                            None => {}
                        }
                    }
                    sink(Event::Statement { ctx, duration: total, text: Cow::Owned(text) });
                }
                None => self.stats.unattributed_durations += 1,
            }
            return class::DURATION;
        }
        if let Some(text) = what.strip_prefix("statement: ") {
            if let Some(k) = key {
                // Anything left from parse/bind belonged to a statement that
                // never executed (or whose execute was not logged).
                let leftover = self.with_session(k, entry.pid, |s| {
                    set(&mut s.last_statement, bounded(text, max));
                    s.pre_exec.take().is_some()
                });
                if leftover {
                    self.stats.unattributed_durations += 1;
                }
            }
            sink(Event::Statement { ctx, duration, text: Cow::Borrowed(text) });
            return class::DURATION;
        }
        if let Some(body) = what.strip_prefix("plan:") {
            let body = body.strip_prefix('\n').unwrap_or(body);
            sink(Event::Plan { ctx, duration, body });
            return class::PLAN;
        }
        for phase in ["parse ", "bind "] {
            if let Some(rest) = what.strip_prefix(phase) {
                let text = rest.split_once(": ").map_or("", |(_, t)| t);
                let Some(k) = key else {
                    self.stats.unattributed_durations += 1;
                    return class::DURATION;
                };
                let h = text_hash(text);
                let s = self.session(k, entry.pid);
                // parse and bind of one statement add up; a different text
                // means the earlier one never executed.
                let earlier = match s.pre_exec.take() {
                    Some((eh, d)) if eh == h => d,
                    Some(_) => {
                        self.stats.unattributed_durations += 1;
                        Duration::ZERO
                    }
                    None => Duration::ZERO,
                };
                self.session(k, entry.pid).pre_exec = Some((h, earlier + duration));
                return class::DURATION;
            }
        }
        if what.starts_with(FETCH) {
            // A client fetching a portal's rows in batches (JDBC's
            // setFetchSize) logs `execute fetch from S_1/C_2: …` for each
            // batch after the first: the call was counted by its first
            // `execute` (pg_stat_statements counts one too), and that call
            // has left already, so this time is counted as unattributed.
            self.stats.unattributed_durations += 1;
            return class::DURATION;
        }
        if let Some(rest) = what.strip_prefix("execute ")
            && let Some((_, text)) = rest.split_once(": ")
        {
            let mut total = duration;
            if let Some(k) = key {
                let pre_exec = self.with_session(k, entry.pid, |s| {
                    set(&mut s.last_statement, bounded(text, max));
                    s.pre_exec.take()
                });
                match pre_exec {
                    Some((h, d)) if h == text_hash(text) => total += d,
                    Some(_) => self.stats.unattributed_durations += 1,
                    None => {}
                }
            }
            sink(Event::Statement { ctx, duration: total, text: Cow::Borrowed(text) });
            return class::DURATION;
        }
        // e.g. `fastpath function call`: timed, but not a statement.
        self.stats.unattributed_durations += 1;
        class::DURATION
    }

    fn lock_message<F: FnMut(Event<'_>)>(
        &mut self,
        entry: &LogEntry<'_>,
        ctx: Ctx<'_>,
        rest: &str,
        sink: &mut F,
    ) -> &'static str {
        // "N still waiting for MODE on OBJECT after X ms"
        // "N acquired MODE on OBJECT after X ms"
        let Some((pid, rest)) = rest.split_once(' ') else { return class::OTHER };
        let Ok(waiter_pid) = pid.parse::<u32>() else { return class::OTHER };
        let (acquired, rest) = if let Some(r) = rest.strip_prefix("still waiting for ") {
            (false, r)
        } else if let Some(r) = rest.strip_prefix("acquired ") {
            (true, r)
        } else {
            return class::OTHER;
        };
        let Some((mode, rest)) = rest.split_once(" on ") else { return class::OTHER };
        let Some((object, after)) = rest.rsplit_once(" after ") else { return class::OTHER };
        let Some((wait, _)) = parse_ms(after) else { return class::OTHER };
        let holders = entry.detail.as_deref().map(lock_holders).unwrap_or_default();
        let blocker = holders
            .first()
            .and_then(|h| self.pids.get(h))
            .and_then(|k| self.sessions.get(k))
            .map(|s| s.last_statement.as_str())
            .filter(|s| !s.is_empty());
        sink(Event::LockWait {
            ctx,
            acquired,
            waiter_pid,
            mode,
            object,
            wait,
            holders,
            statement: entry.statement.as_deref(),
            blocker,
        });
        class::LOCK_WAIT
    }
}

fn text_hash(text: &str) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(text)
}

/// Puts `text` in `slot`, reusing its buffer unless that is far larger
/// (kept, one long statement would hold its size for the session's life).
fn set(slot: &mut String, text: &str) {
    if slot.capacity() > 4 * text.len().max(1024) {
        *slot = text.to_owned();
    } else {
        slot.clear();
        slot.push_str(text);
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses `123.456 ms` at the start of `s`; returns the duration and the rest.
/// Integer arithmetic on the digits keeps sub-millisecond precision exact.
pub fn parse_ms(s: &str) -> Option<(Duration, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut whole: u64 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        whole = whole.checked_mul(10)?.checked_add(u64::from(b[i] - b'0'))?;
        i += 1;
    }
    if i == 0 {
        return None;
    }
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut scale = 100_000; // first fractional digit of a millisecond, in ns
        while i < b.len() && b[i].is_ascii_digit() {
            nanos += u64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let rest = s[i..].strip_prefix(" ms")?;
    Some((Duration::from_millis(whole) + Duration::from_nanos(nanos), rest))
}

/// Pids from `Process holding the lock: 1. Wait queue: …` or
/// `Processes holding the lock: 1, 2. Wait queue: …`.
fn lock_holders(detail: &str) -> Vec<u32> {
    let Some(start) = detail.find("holding the lock: ") else { return Vec::new() };
    let list = &detail[start + "holding the lock: ".len()..];
    let list = list.split_once('.').map_or(list, |(l, _)| l);
    list.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

/// `Process 123: UPDATE …` parts of a deadlock DETAIL; a statement runs
/// until the next `Process N: ` line, so multi-line statements stay whole.
fn deadlock_statements(detail: &str) -> Vec<(u32, &str)> {
    let mut out: Vec<(u32, usize, usize)> = Vec::new();
    let mut offset = 0;
    for line in detail.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let parsed = line.strip_prefix("Process ").and_then(|rest| {
            let (pid, _) = rest.split_once(": ")?;
            Some((pid.parse::<u32>().ok()?, start + "Process ".len() + pid.len() + 2))
        });
        match parsed {
            Some((pid, text_start)) => out.push((pid, text_start, offset)),
            // Continuation of the statement above (or the "waits for" part).
            None => {
                if let Some(last) = out.last_mut() {
                    last.2 = offset;
                }
            }
        }
    }
    out.into_iter().map(|(pid, a, b)| (pid, detail[a..b].trim_end())).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(pid: u32, msg: &str) -> LogEntry<'_> {
        LogEntry {
            pid: Some(pid),
            severity: Some(Severity::Log),
            database: Some("db".into()),
            user: Some("u".into()),
            message: msg.into(),
            ..LogEntry::default()
        }
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Stmt(Duration, String),
        Plan(Duration),
        Error(Option<String>),
        Lock(bool, u32, Vec<u32>, Option<String>, Option<String>),
        Deadlock(usize),
        Temp(u64),
    }

    fn run(entries: &[LogEntry<'_>]) -> (Vec<Seen>, Vec<&'static str>, SessionStats) {
        let mut s = Sessionizer::new(100, 1 << 20);
        let mut seen = Vec::new();
        let mut classes = Vec::new();
        for e in entries {
            let c = s.process(e, &mut |ev| {
                seen.push(match ev {
                    Event::Statement { duration, text, .. } => Seen::Stmt(duration, text.into_owned()),
                    Event::Plan { duration, .. } => Seen::Plan(duration),
                    Event::Error { statement, .. } => Seen::Error(statement.map(str::to_owned)),
                    Event::LockWait { acquired, waiter_pid, holders, statement, blocker, .. } => Seen::Lock(
                        acquired,
                        waiter_pid,
                        holders,
                        statement.map(str::to_owned),
                        blocker.map(str::to_owned),
                    ),
                    Event::Deadlock { statements, .. } => Seen::Deadlock(statements.len()),
                    Event::TempFile { bytes, .. } => Seen::Temp(bytes),
                })
            });
            classes.push(c);
        }
        (seen, classes, s.stats().clone())
    }

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1000.0)
    }

    #[test]
    fn parses_durations_exactly() {
        assert_eq!(parse_ms("0.123 ms  statement: x"), Some((Duration::from_micros(123), "  statement: x")));
        assert_eq!(parse_ms("1500.000 ms"), Some((Duration::from_millis(1500), "")));
        assert_eq!(parse_ms("12 ms"), Some((Duration::from_millis(12), "")));
        assert_eq!(parse_ms("x ms"), None);
        assert_eq!(parse_ms("1.5 s"), None);
    }

    #[test]
    fn extended_protocol_is_one_call_with_all_phases() {
        let (seen, _, stats) = run(&[
            entry(1, "duration: 0.100 ms  parse <unnamed>: SELECT $1"),
            entry(1, "duration: 0.200 ms  bind <unnamed>: SELECT $1"),
            entry(2, "duration: 5.000 ms  statement: SELECT 2"),
            entry(1, "duration: 0.300 ms  execute <unnamed>: SELECT $1"),
            entry(1, "duration: 0.050 ms  bind P_1: SELECT $1"),
            entry(1, "duration: 0.050 ms  execute P_1: SELECT $1"),
        ]);
        assert_eq!(
            seen,
            vec![
                Seen::Stmt(ms(5.0), "SELECT 2".into()),
                Seen::Stmt(ms(0.6), "SELECT $1".into()),
                Seen::Stmt(ms(0.1), "SELECT $1".into()),
            ]
        );
        assert_eq!(stats.unattributed_durations, 0);
    }

    #[test]
    fn a_portal_fetched_in_batches_is_one_call() {
        let (seen, _, stats) = run(&[
            entry(1, "duration: 3.100 ms  execute S_1/C_2: SELECT * FROM big"),
            entry(1, "duration: 2.900 ms  execute fetch from S_1/C_2: SELECT * FROM big"),
            entry(1, "duration: 2.800 ms  execute fetch from S_1/C_2: SELECT * FROM big"),
            // log_statement + log_duration: the fetch is no statement either.
            entry(2, "execute S_1/C_3: SELECT * FROM big"),
            entry(2, "duration: 1.000 ms"),
            entry(2, "execute fetch from S_1/C_3: SELECT * FROM big"),
            entry(2, "duration: 1.000 ms"),
        ]);
        assert_eq!(
            seen,
            vec![Seen::Stmt(ms(3.1), "SELECT * FROM big".into()), Seen::Stmt(ms(1.0), "SELECT * FROM big".into())]
        );
        assert_eq!(stats.unattributed_durations, 3);
    }

    #[test]
    fn parse_and_bind_time_joins_an_execute_logged_by_log_statement() {
        // log_statement = 'all' with log_min_duration_statement: the slow
        // parse and bind come with their text, the execute's text comes
        // from log_statement and its duration bare.
        let (seen, _, stats) = run(&[
            entry(1, "duration: 0.100 ms  parse <unnamed>: SELECT $1"),
            entry(1, "duration: 0.200 ms  bind <unnamed>: SELECT $1"),
            entry(1, "execute <unnamed>: SELECT $1"),
            entry(1, "duration: 0.300 ms"),
            entry(1, "duration: 0.100 ms  parse <unnamed>: SELECT 2"),
            entry(1, "execute <unnamed>: SELECT 2"),
            entry(1, "duration: 0.400 ms"),
        ]);
        assert_eq!(seen, vec![Seen::Stmt(ms(0.6), "SELECT $1".into()), Seen::Stmt(ms(0.5), "SELECT 2".into())]);
        assert_eq!(stats.unattributed_durations, 0);
    }

    #[test]
    fn a_failed_statement_is_not_paired_with_the_next_duration() {
        let mut failed = entry(1, "relation \"nope\" does not exist");
        failed.severity = Some(Severity::Error);
        let (seen, _, stats) = run(&[
            entry(1, "statement: UPDATE nope SET a = 1"),
            failed,
            // The client's ROLLBACK, not logged by log_statement = 'mod'.
            entry(1, "duration: 0.050 ms"),
            entry(1, "statement: UPDATE t SET a = 1"),
            entry(1, "duration: 2.000 ms"),
        ]);
        assert_eq!(seen.iter().filter(|s| matches!(s, Seen::Stmt(..))).count(), 1, "{seen:?}");
        assert!(seen.contains(&Seen::Stmt(ms(2.0), "UPDATE t SET a = 1".into())));
        assert_eq!(stats.unattributed_durations, 1);
    }

    #[test]
    fn the_texts_sessions_keep_stay_within_their_budget() {
        let mut s = Sessionizer::new(20_000, 1 << 20);
        let mut sink = |_: Event<'_>| {};
        let big = format!("INSERT INTO t VALUES ('{}')", "x".repeat(100_000));
        // 2,000 sessions that each ran one 100 KB statement, with
        // log_statement (a text waiting for its duration) and without.
        for pid in 0..2_000 {
            s.process(&entry(pid, &format!("duration: 1.000 ms  statement: {big}")), &mut sink);
            s.process(&entry(pid, &format!("statement: {big}")), &mut sink);
            let held: usize = s.sessions.values().map(Session::text_bytes).sum();
            assert_eq!(s.text_bytes, held, "the books match the sessions");
            assert!(held <= s.max_text_bytes, "{held} bytes held after session {pid}");
        }
        assert!(s.stats().evicted_sessions > 0 && s.stats().dropped_texts > 0);
        // A session that ran one long statement does not keep its size.
        s.process(&entry(1, "duration: 1.000 ms  statement: SELECT 1"), &mut sink);
        let one = &s.sessions[&entry(1, "").session_key().unwrap()];
        assert!(one.last_statement.capacity() <= 4096, "{}", one.last_statement.capacity());
    }

    #[test]
    fn large_texts_do_not_push_out_the_statements_waiting_for_their_duration() {
        let mut s = Sessionizer::new(20_000, 1 << 20);
        let mut sink = |_: Event<'_>| {};
        for pid in 0..1_000 {
            s.process(&entry(pid, "statement: SELECT pg_sleep(60)"), &mut sink);
        }
        let big = format!("INSERT INTO t VALUES ('{}')", "x".repeat(1 << 19));
        for pid in 1_000..1_200 {
            s.process(&entry(pid, &format!("statement: {big}")), &mut sink);
            s.process(&entry(pid, "duration: 1.000 ms"), &mut sink);
        }
        let mut calls = 0;
        for pid in 0..1_000 {
            s.process(&entry(pid, "duration: 60000.000 ms"), &mut |e| {
                calls += usize::from(matches!(e, Event::Statement { .. }))
            });
        }
        assert_eq!(calls, 1_000);
        assert_eq!(s.stats().unattributed_durations, 0);
        assert!(s.text_bytes <= s.max_text_bytes);
    }

    #[test]
    fn a_full_session_table_forgets_the_sessions_idle_longest() {
        let mut s = Sessionizer::new(4, 1 << 20);
        let mut sink = |_: Event<'_>| {};
        // Session 1 has a statement waiting for its duration, and stays busy.
        s.process(&entry(1, "statement: SELECT 1"), &mut sink);
        for pid in 2..=6 {
            s.process(&entry(pid, "statement: SELECT 2"), &mut sink);
            // Its client prepares something: the session is in use.
            s.process(&entry(1, "duration: 0.010 ms  parse S_9: SELECT 9"), &mut sink);
        }
        let mut got = Vec::new();
        s.process(&entry(1, "duration: 1.000 ms"), &mut |e| {
            if let Event::Statement { text, .. } = e {
                got.push(text.into_owned());
            }
        });
        assert_eq!(got, ["SELECT 1"], "the busy session kept its pending statement");
        assert!(s.stats().evicted_sessions >= 1 && s.sessions.len() <= 4);
    }

    #[test]
    fn parse_and_bind_time_goes_only_to_the_execute_of_the_same_text() {
        let (seen, _, stats) = run(&[
            entry(1, "duration: 40.000 ms  parse <unnamed>: INSERT INTO t VALUES ($1)"),
            entry(1, "duration: 10.000 ms  bind <unnamed>: INSERT INTO t VALUES ($1)"),
            entry(1, "duration: 0.100 ms  parse <unnamed>: SELECT v FROM t WHERE id = $1"),
            entry(1, "duration: 0.020 ms  bind <unnamed>: SELECT v FROM t WHERE id = $1"),
            entry(1, "duration: 0.100 ms  execute <unnamed>: SELECT v FROM t WHERE id = $1"),
            entry(1, "duration: 300.000 ms  bind S_1: SELECT slow_plan($1)"),
            entry(1, "duration: 400.000 ms  execute S_2: SELECT other($1)"),
        ]);
        assert_eq!(
            seen,
            vec![
                Seen::Stmt(ms(0.22), "SELECT v FROM t WHERE id = $1".into()),
                Seen::Stmt(ms(400.0), "SELECT other($1)".into()),
            ]
        );
        // The INSERT's parse+bind, and slow_plan's bind, never executed (here).
        assert_eq!(stats.unattributed_durations, 2);
    }

    #[test]
    fn deadlock_statements_keep_their_lines() {
        let detail = "Process 3 waits for ShareLock on transaction 9; blocked by process 4.\nProcess 4 waits for ShareLock on transaction 8; blocked by process 3.\nProcess 3: UPDATE acc\n\tSET v = 1\n\tWHERE id = 2\nProcess 4: UPDATE acc SET v = 2";
        assert_eq!(
            deadlock_statements(detail),
            vec![(3, "UPDATE acc\n\tSET v = 1\n\tWHERE id = 2"), (4, "UPDATE acc SET v = 2")]
        );
    }

    #[test]
    fn log_duration_pairs_with_the_session_statement() {
        let (seen, _, stats) = run(&[
            entry(1, "statement: SELECT 1"),
            entry(2, "statement: SELECT 2"),
            entry(2, "duration: 2.000 ms"),
            entry(1, "duration: 1.000 ms"),
            entry(1, "duration: 9.000 ms"),
        ]);
        assert_eq!(seen, vec![Seen::Stmt(ms(2.0), "SELECT 2".into()), Seen::Stmt(ms(1.0), "SELECT 1".into())]);
        assert_eq!(stats.unattributed_durations, 1);
    }

    #[test]
    fn no_session_key_means_no_guessing() {
        let mut a = entry(1, "statement: SELECT 1");
        a.pid = None;
        let mut b = entry(1, "duration: 1.000 ms");
        b.pid = None;
        let (seen, _, stats) = run(&[a, b]);
        assert!(seen.is_empty());
        assert_eq!(stats.unattributed_durations, 1);
    }

    #[test]
    fn lock_waits_name_holders_and_the_blocker_statement() {
        let mut wait = entry(2, "process 2 still waiting for ShareLock on transaction 740 after 1000.072 ms");
        wait.detail = Some("Process holding the lock: 1. Wait queue: 2.".into());
        wait.statement = Some("UPDATE t SET v = 2 WHERE id = 1".into());
        let (seen, classes, _) = run(&[
            entry(1, "duration: 0.500 ms  statement: UPDATE t SET v = 1 WHERE id = 1"),
            wait,
            entry(2, "process 2 acquired ShareLock on transaction 740 after 2500.100 ms"),
        ]);
        assert_eq!(
            seen[1],
            Seen::Lock(
                false,
                2,
                vec![1],
                Some("UPDATE t SET v = 2 WHERE id = 1".into()),
                Some("UPDATE t SET v = 1 WHERE id = 1".into())
            )
        );
        assert!(matches!(seen[2], Seen::Lock(true, 2, _, None, _)));
        assert_eq!(classes[1], class::LOCK_WAIT);
    }

    #[test]
    fn parallel_worker_lines_belong_to_the_leaders_database_and_user() {
        let leader = entry(7, "duration: 1.000 ms  statement: SET work_mem = '64kB'");
        let mut worker = entry(8, "temporary file: path \"base/pgsql_tmp/pgsql_tmp8.0\", size 100");
        worker.database = None;
        worker.user = None;
        worker.leader_pid = Some(7);
        worker.statement = Some("SELECT 1".into());
        let mut s = Sessionizer::new(100, 1 << 20);
        let mut seen = Vec::new();
        for e in [&leader, &worker] {
            s.process(e, &mut |ev| {
                if let Event::TempFile { ctx, .. } = ev {
                    seen.push((ctx.database.to_owned(), ctx.user.to_owned()));
                }
            });
        }
        assert_eq!(seen, vec![("db".to_owned(), "u".to_owned())]);

        // The leader's pid reused by a session of another database (no
        // disconnection logged): its workers follow the new session.
        let mut reused = entry(7, "duration: 1.000 ms  statement: SELECT 2");
        reused.database = Some("crm".into());
        reused.session_id = Some("other-session".into());
        seen.clear();
        for e in [&reused, &worker] {
            s.process(e, &mut |ev| {
                if let Event::TempFile { ctx, .. } = ev {
                    seen.push((ctx.database.to_owned(), ctx.user.to_owned()));
                }
            });
        }
        assert_eq!(seen, vec![("crm".to_owned(), "u".to_owned())]);
    }

    #[test]
    fn errors_deadlocks_temp_files_plans_and_classes() {
        let mut err = entry(3, "deadlock detected");
        err.severity = Some(Severity::Error);
        err.detail = Some(
            "Process 3 waits for ShareLock on transaction 9; blocked by process 4.\nProcess 4 waits for ShareLock on transaction 8; blocked by process 3.\nProcess 3: UPDATE a SET x = 1\nProcess 4: UPDATE b SET x = 2".into(),
        );
        err.statement = Some("UPDATE a SET x = 1".into());
        let mut temp = entry(3, "temporary file: path \"base/pgsql_tmp/pgsql_tmp3.0\", size 1400000");
        temp.statement = Some("SELECT * FROM t ORDER BY 1".into());
        let (seen, classes, _) = run(&[
            err,
            temp,
            entry(3, "duration: 12.000 ms  plan:\nQuery Text: SELECT 1\nResult  (cost=0.00..0.01 rows=1 width=4)"),
            entry(3, "connection authorized: user=u database=db"),
            entry(3, "checkpoint starting: time"),
            entry(3, "something else"),
        ]);
        assert_eq!(
            seen,
            vec![
                Seen::Error(Some("UPDATE a SET x = 1".into())),
                Seen::Deadlock(2),
                Seen::Temp(1_400_000),
                Seen::Plan(ms(12.0))
            ]
        );
        assert_eq!(
            classes,
            vec![class::DEADLOCK, class::TEMP_FILE, class::PLAN, class::CONNECTION, class::CHECKPOINT, class::OTHER]
        );
    }
}
