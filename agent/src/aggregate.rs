//! Aggregation: events into [`Observations`], the unit the agent ships and
//! `analyze` merges.
//!
//! The hot path is one statement execution: hash the raw text, find its
//! masked shape in a bounded cache (masking runs once per distinct raw
//! text, not once per line), then record into the per-(shape, database,
//! user) statistics. Every map here has a cap; past it, statements fold into
//! the `<other>` shape and the overflow is counted.

use crate::events::{Event, SessionStats, Sessionizer};
use crate::logparse::{LogEntry, ParseStats};
use crate::mask::mask_into;
use crate::plan;
use crate::stats::sql;
use querywatch_wire::names::OVERFLOW_TEXT;
use querywatch_wire::observations::{LockKey, LockStats};
use querywatch_wire::stats::{EpochMillis, PlanSample, StatementStats};
use querywatch_wire::{Observations, StatementKey};
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};

/// Limits and filters of an [`Aggregator`].
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    /// Distinct statement shapes tracked (per database and user).
    pub max_shapes: usize,
    /// Raw statement texts remembered with their shape (masking cache).
    pub max_raw_texts: usize,
    /// Distinct lock-wait groups tracked.
    pub max_locks: usize,
    /// Sessions tracked for line pairing.
    pub max_sessions: usize,
    /// Longest statement text kept per session for pairing.
    pub max_text: usize,
    /// Only entries at or after this time (entries without time are kept).
    pub since: Option<EpochMillis>,
    /// Only entries before this time.
    pub until: Option<EpochMillis>,
}

/// Default bound on statement rows (shape, database, user) per interval.
pub const DEFAULT_MAX_SHAPES: usize = 20_000;

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            max_shapes: DEFAULT_MAX_SHAPES,
            max_raw_texts: 100_000,
            max_locks: 10_000,
            max_sessions: crate::events::DEFAULT_MAX_SESSIONS,
            max_text: crate::logparse::DEFAULT_ENTRY_CAP,
            since: None,
            until: None,
        }
    }
}

type ShapeId = u32;

/// The shape of the agent's own statistics queries (they carry
/// [`sql::MARKER`]): the log shows them when `log_min_duration_statement`
/// is low, and the agent never reports its own work. Never a table index.
const OWN: ShapeId = ShapeId::MAX;
type NameId = u32;

/// Interns strings up to a cap; past it everything maps to the overflow id.
#[derive(Debug, Default)]
struct Interner {
    ids: FxHashMap<String, u32>,
    list: Vec<String>,
}

impl Interner {
    /// An interner whose id 0 is the empty string.
    fn with_empty() -> Self {
        let mut i = Interner::default();
        i.get_or_insert("", 1);
        i
    }

    fn get_or_insert(&mut self, s: &str, cap: usize) -> Option<u32> {
        if let Some(id) = self.ids.get(s) {
            return Some(*id);
        }
        if self.list.len() >= cap {
            return None;
        }
        let id = u32::try_from(self.list.len()).ok()?;
        self.ids.insert(s.to_owned(), id);
        self.list.push(s.to_owned());
        Some(id)
    }
}

/// Events of one log stream (or one interval) into [`Observations`].
#[derive(Debug)]
pub struct Aggregator {
    cfg: AggregatorConfig,
    sessionizer: Sessionizer,
    /// Hash of raw statement text → shape.
    /// Keyed by (hash, length): a 64-bit hash alone would, at 100k entries,
    /// collide about once in 10^9 runs; the length makes a silent
    /// misattribution rarer still at no cost.
    raw: FxHashMap<(u64, usize), ShapeId>,
    shapes: Interner,
    overflow_shape: Option<ShapeId>,
    names: Interner,
    stats: FxHashMap<(ShapeId, NameId, NameId), StatementStats>,
    /// A waiting pid's lock group, so its `acquired` report lands in it too.
    waiting: FxHashMap<u32, LockKey>,
    obs: Observations,
    /// The sessionizer's counters already handed out by `cut`.
    reported_sessions: SessionStats,
    mask_buf: String,
    plan_buf: String,
}

impl Aggregator {
    pub fn new(cfg: AggregatorConfig) -> Self {
        Aggregator {
            sessionizer: Sessionizer::new(cfg.max_sessions, cfg.max_text),
            cfg,
            raw: FxHashMap::default(),
            shapes: Interner::default(),
            overflow_shape: None,
            names: Interner::with_empty(),
            stats: FxHashMap::default(),
            waiting: FxHashMap::default(),
            obs: Observations::default(),
            reported_sessions: SessionStats::default(),
            mask_buf: String::new(),
            plan_buf: String::new(),
        }
    }

    /// Folds one log entry in.
    pub fn entry(&mut self, entry: &LogEntry<'_>) {
        if let Some(t) = entry.timestamp {
            if self.cfg.since.is_some_and(|s| t < s) || self.cfg.until.is_some_and(|u| t >= u) {
                return;
            }
            self.obs.first_seen = Some(self.obs.first_seen.map_or(t, |f| f.min(t)));
            self.obs.last_seen = Some(self.obs.last_seen.map_or(t, |l| l.max(t)));
        }
        // The sessionizer borrows itself mutably while events flow out, so
        // the event handler works on the rest of the aggregator.
        let mut sessionizer = std::mem::replace(&mut self.sessionizer, Sessionizer::new(0, 0));
        let class = sessionizer.process(entry, &mut |event| self.event(event));
        self.sessionizer = sessionizer;
        *self.obs.classes.entry(class).or_default() += 1;
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Statement { ctx, duration, text } => {
                self.wait_ended(ctx.pid);
                let Some(key) = self.row(&text, ctx.database, ctx.user) else { return };
                let masked = &self.shapes.list[key.0 as usize];
                self.stats.entry(key).or_default().record_call(duration, ctx.timestamp, masked);
                if Some(key.0) == self.overflow_shape {
                    self.obs.overflow_calls += 1;
                }
            }
            Event::Plan { ctx, duration, body } => {
                let Ok(split) = plan::split_auto_explain(body) else {
                    *self.obs.classes.entry("plan_unparsed").or_default() += 1;
                    return;
                };
                let Some(key) = self.row(&split.query_text, ctx.database, ctx.user) else { return };
                let mut masked_plan = std::mem::take(&mut self.plan_buf);
                masked_plan.clear();
                if plan::mask_plan(&split.plan, split.format, &mut masked_plan).is_ok() {
                    self.stats.entry(key).or_default().record_plan(PlanSample {
                        duration,
                        timestamp: ctx.timestamp,
                        format: match split.format {
                            plan::PlanFormat::Json => "json",
                            plan::PlanFormat::Text => "text",
                        },
                        plan: masked_plan.clone(),
                    });
                } else {
                    *self.obs.classes.entry("plan_unparsed").or_default() += 1;
                }
                self.plan_buf = masked_plan;
            }
            Event::Error { ctx, sqlstate, message, context, statement } => {
                self.wait_ended(ctx.pid);
                let state = sqlstate.as_ref().map_or("?????", |s| s.as_str());
                match statement {
                    Some(text) => {
                        let Some(key) = self.row(text, ctx.database, ctx.user) else { return };
                        let msg = mask_message(state, message, context);
                        self.stats.entry(key).or_default().record_error(state, &msg, ctx.timestamp);
                    }
                    None => *self.obs.unattributed_errors.entry(state.to_owned()).or_default() += 1,
                }
            }
            Event::LockWait { ctx, acquired, waiter_pid, mode, object, wait, statement, blocker, .. } => {
                let key = if acquired { self.waiting.remove(&waiter_pid) } else { None };
                let key = key.unwrap_or_else(|| LockKey {
                    database: ctx.database.to_owned(),
                    waiter: statement.map(|s| self.masked_text(s)).unwrap_or_default(),
                    blocker: blocker.map(|s| self.masked_text(s)).unwrap_or_default(),
                    mode: mode.to_owned(),
                    object: lock_object(object),
                });
                if !acquired {
                    // Waits leave with their `acquired` line, or when their
                    // session finishes a statement or fails (lock_timeout,
                    // a deadlock, a cancel): only as many as wait at once
                    // are here, and the cap is a last resort.
                    if self.waiting.len() >= self.cfg.max_sessions {
                        self.waiting.clear();
                    }
                    self.waiting.insert(waiter_pid, key.clone());
                }
                if let Some(stats) = self.lock_stats(key) {
                    stats.max_wait = stats.max_wait.max(wait);
                    if acquired {
                        stats.acquired += 1;
                        stats.acquired_wait += wait;
                    } else {
                        stats.waits += 1;
                    }
                }
            }
            Event::Deadlock { ctx, statements } => {
                let text =
                    |i: usize, this: &mut Self| statements.get(i).map(|(_, s)| this.masked_text(s)).unwrap_or_default();
                let key = LockKey {
                    database: ctx.database.to_owned(),
                    waiter: text(0, self),
                    blocker: text(1, self),
                    mode: "deadlock".to_owned(),
                    object: String::new(),
                };
                if let Some(stats) = self.lock_stats(key) {
                    stats.deadlocks += 1;
                }
            }
            Event::TempFile { ctx, bytes, statement } => match statement {
                Some(text) => {
                    let Some(key) = self.row(text, ctx.database, ctx.user) else { return };
                    self.stats.entry(key).or_default().record_temp_file(bytes, ctx.timestamp);
                }
                None => {
                    self.obs.unattributed_temp_files += 1;
                    self.obs.unattributed_temp_bytes += bytes;
                }
            },
        }
    }

    /// The session of `pid` is past any lock wait: a wait that ended
    /// without `acquired` (timed out, cancelled) is forgotten, and the
    /// pid's next wait starts a group of its own.
    fn wait_ended(&mut self, pid: Option<u32>) {
        if let Some(pid) = pid
            && !self.waiting.is_empty()
        {
            self.waiting.remove(&pid);
        }
    }

    fn lock_stats(&mut self, key: LockKey) -> Option<&mut LockStats> {
        if !self.obs.locks.contains_key(&key) && self.obs.locks.len() >= self.cfg.max_locks {
            self.obs.overflow_locks += 1;
            return None;
        }
        Some(self.obs.locks.entry(key).or_default())
    }

    /// The masked text of a statement in a lock report. The agent's own
    /// statements are named too: a poll stuck behind a lock is worth seeing.
    fn masked_text(&mut self, raw: &str) -> String {
        match self.shape(raw) {
            OWN => {
                let mut out = String::new();
                mask_into(raw, &mut out);
                out
            }
            id => self.shapes.list[id as usize].clone(),
        }
    }

    /// The shape id of a raw statement text, masking it only when unseen.
    fn shape(&mut self, raw: &str) -> ShapeId {
        let mut h = FxHasher::default();
        raw.hash(&mut h);
        let hash = (h.finish(), raw.len());
        if let Some(id) = self.raw.get(&hash) {
            return *id;
        }
        // Checked once per distinct raw text, here, not per execution.
        let id = if sql::is_own(raw) {
            OWN
        } else {
            self.mask_buf.clear();
            mask_into(raw, &mut self.mask_buf);
            match self.shapes.get_or_insert(&self.mask_buf, self.cfg.max_shapes) {
                Some(id) => id,
                None => self.overflow(),
            }
        };
        if self.raw.len() >= self.cfg.max_raw_texts {
            // A cache, not state: dropping it only costs re-masking.
            self.raw.clear();
        }
        self.raw.insert(hash, id);
        id
    }

    fn overflow(&mut self) -> ShapeId {
        if let Some(id) = self.overflow_shape {
            return id;
        }
        // One slot past the cap is reserved for the overflow shape.
        let id = self.shapes.get_or_insert(OVERFLOW_TEXT, usize::MAX).unwrap_or(0);
        self.overflow_shape = Some(id);
        id
    }

    /// The statistics row of a raw statement text for a database and user;
    /// `None` for the agent's own statements ([`OWN`]), never reported.
    fn row(&mut self, raw: &str, database: &str, user: &str) -> Option<(ShapeId, NameId, NameId)> {
        match self.shape(raw) {
            OWN => None,
            shape => Some(self.key(shape, database, user)),
        }
    }

    /// The statistics row of a shape for a database and user. Rows are
    /// capped as a whole (`max_shapes`), not only shapes: many users running
    /// the same few statements must not grow memory either. Past the cap,
    /// new rows fold into the overflow shape with empty database and user.
    fn key(&mut self, shape: ShapeId, database: &str, user: &str) -> (ShapeId, NameId, NameId) {
        // Id 0 is the empty name (interned first), where names past the cap go.
        let db = self.names.get_or_insert(database, self.cfg.max_shapes).unwrap_or(0);
        let user = self.names.get_or_insert(user, self.cfg.max_shapes).unwrap_or(0);
        let key = (shape, db, user);
        if self.stats.len() >= self.cfg.max_shapes && !self.stats.contains_key(&key) {
            return (self.overflow(), 0, 0);
        }
        key
    }

    /// Everything aggregated so far, with the parser's counters.
    pub fn finish(mut self, parse: &ParseStats) -> Observations {
        self.cut(parse)
    }

    /// Everything aggregated since the last cut (the live agent's interval),
    /// with the parsers' counters of that interval. The aggregator stays
    /// ready for the next interval and keeps its session state, so lines
    /// that pair across the boundary (parse/bind and their execute, a
    /// `log_statement` line and its `duration`) still pair; the masking cache
    /// stays warm. The shape and name tables are per interval in effect:
    /// they are emptied here when past half their cap, so a long run with
    /// ever new statements does not end up folding everything into `<other>`.
    pub fn cut(&mut self, parse: &ParseStats) -> Observations {
        let mut obs = std::mem::take(&mut self.obs);
        for ((shape, db, user), stats) in self.stats.drain() {
            let key = StatementKey {
                database: self.names.list[db as usize].clone(),
                user: self.names.list[user as usize].clone(),
                text: self.shapes.list[shape as usize].clone(),
            };
            obs.statements.insert(key, stats);
        }
        obs.input.merge(parse);
        let now = self.sessionizer.stats();
        let before = std::mem::replace(&mut self.reported_sessions, now.clone());
        obs.input.unattributed_durations += now.unattributed_durations - before.unattributed_durations;
        obs.input.forgotten_sessions += now.evicted_sessions - before.evicted_sessions;
        obs.input.dropped_session_texts += now.dropped_texts - before.dropped_texts;
        if self.shapes.list.len() > self.cfg.max_shapes / 2 {
            self.shapes = Interner::default();
            self.raw.clear();
            self.overflow_shape = None;
        }
        if self.names.list.len() > self.cfg.max_shapes / 2 {
            self.names = Interner::with_empty();
        }
        obs
    }
}

/// Whether an error's message was written by the application rather than
/// by the server. SQLSTATE class P0 is PL/pgSQL's `RAISE` default, but
/// `RAISE … USING ERRCODE` picks any code, and a log without `%e` in its
/// prefix has no SQLSTATE at all; the error's context tells instead:
/// PL/pgSQL names the statement (`… at RAISE`), and the other languages
/// (`PL/Python function "f"`, PL/Perl, PL/Tcl) raise their own errors with
/// their own text, so any error with one of them in its context is taken
/// for the application's, and so is class 38 (external routine
/// exception), the SQL standard's class for errors of external routines.
/// Server errors inside a PL/pgSQL function
/// (`division by zero`, context `… at assignment`) are kept. With
/// `log_error_verbosity = terse` no context is logged, and only the
/// SQLSTATE can tell.
fn written_by_application(sqlstate: &str, context: Option<&str>) -> bool {
    if sqlstate.starts_with("P0") || sqlstate.starts_with("38") {
        return true;
    }
    let Some(context) = context else { return false };
    // The innermost frame is the first line: the statement that raised.
    // PL/Python puts a traceback first and its function's name after.
    context.lines().next().is_some_and(|first| first.contains(" at RAISE"))
        || context.lines().any(|l| l.contains("PL/") && !l.contains("PL/pgSQL"))
}

/// Words after which PostgreSQL quotes an object name, not a value.
const NAME_WORDS: &[&str] = &[
    "relation",
    "constraint",
    "column",
    "table",
    "index",
    "schema",
    "function",
    "type",
    "sequence",
    "view",
    "database",
    "role",
    "extension",
    "trigger",
    "operator",
    "cursor",
    "statement",
    "portal",
    "tablespace",
    "collation",
    "domain",
    "publication",
    "subscription",
    "server",
    "policy",
    "rule",
];

/// Masks an error message: literals as in SQL, and double-quoted text
/// unless PostgreSQL put an object name there (`relation "t"`). Messages
/// like `invalid input syntax for type integer: "abc"` quote the value, and
/// do not escape quotes inside it, so a quoted value is taken to run to the
/// last quote of the message. Messages written by the application are free
/// text, which masking cannot make safe (`customer alice@example.com has an
/// unpaid invoice`), and are not kept at all (see [`written_by_application`]).
pub fn mask_message(sqlstate: &str, message: &str, context: Option<&str>) -> String {
    if written_by_application(sqlstate, context) {
        return "(message written by the application, not kept)".to_owned();
    }
    // stderr appends the error position to the message (csvlog/jsonlog keep
    // it in a field of its own): drop it so every format says the same.
    let message = match message.rsplit_once(" at character ") {
        Some((head, pos)) if pos.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => message,
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        let before = &rest[..open];
        let after = &rest[open + 1..];
        let prev_word = before.trim_end().rsplit(' ').next().unwrap_or("");
        let name = NAME_WORDS.contains(&prev_word);
        // A name ends at the next quote; a value at the last one.
        let close = if name { after.find('"') } else { after.rfind('"') };
        mask_into(before, &mut out);
        if before.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
        match close {
            Some(len) if name => {
                out.push('"');
                out.push_str(&after[..len]);
                out.push('"');
                rest = &after[len + 1..];
            }
            Some(len) => {
                out.push_str("\"?\"");
                rest = &after[len + 1..];
            }
            // Unbalanced: nothing after the quote is kept.
            None => {
                out.push_str("\"?\"");
                rest = "";
            }
        }
    }
    let mut tail = String::new();
    mask_into(rest, &mut tail);
    if !tail.is_empty() && rest.starts_with(' ') && !out.is_empty() {
        out.push(' ');
    }
    out.push_str(&tail);
    out
}

/// Lock objects without the numbers that differ on every wait: transaction
/// ids and tuple positions go, relation and database OIDs stay (they say
/// which table).
fn lock_object(object: &str) -> String {
    if object.starts_with("transaction ") {
        return "transaction".to_owned();
    }
    if object.starts_with("virtual transaction ") {
        return "virtual transaction".to_owned();
    }
    if object.starts_with("advisory lock") {
        return "advisory lock".to_owned();
    }
    if let Some(rest) = object.strip_prefix("tuple ")
        && let Some(i) = rest.find(" of ")
    {
        return format!("tuple{}", &rest[i..]);
    }
    object.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A LOG line of pid 1 in database `db`.
    fn log_line<'a>(user: &'a str, message: &'a str) -> LogEntry<'a> {
        LogEntry {
            pid: Some(1),
            severity: Some(crate::logparse::Severity::Log),
            user: Some(user.into()),
            database: Some("db".into()),
            message: message.into(),
            ..LogEntry::default()
        }
    }

    #[test]
    fn rows_are_capped_across_users_not_only_shapes() {
        let cfg = AggregatorConfig { max_shapes: 5, ..AggregatorConfig::default() };
        let mut agg = Aggregator::new(cfg);
        for user in 0..300 {
            for shape in 0..10 {
                let user = format!("u{user}");
                let message = format!("duration: 1.000 ms  statement: SELECT c{shape} FROM t");
                agg.entry(&log_line(&user, &message));
            }
        }
        let obs = agg.finish(&ParseStats::default());
        assert!(obs.statements.len() <= 6, "{} rows", obs.statements.len());
        let calls: u64 = obs.statements.values().map(|s| s.calls).sum();
        assert_eq!(calls, 3000, "nothing lost: overflow rows count their calls");
        assert_eq!(obs.overflow_calls, 3000 - 5);
    }

    /// The agent's statistics queries reach the log too (at
    /// `log_min_duration_statement = 0`); they are not reported, however
    /// often they run, and they do not take a shape from the cap.
    #[test]
    fn the_agents_own_statements_in_the_log_are_not_reported() {
        let mut agg = Aggregator::new(AggregatorConfig { max_shapes: 1, ..AggregatorConfig::default() });
        let own = format!("duration: 2.000 ms  statement: {}", sql::EXTENSION);
        for message in [own.as_str(), "duration: 1.000 ms  statement: SELECT a FROM t WHERE id = 7", own.as_str()] {
            agg.entry(&log_line("u", message));
        }
        let obs = agg.finish(&ParseStats::default());
        let texts: Vec<&str> = obs.statements.keys().map(|k| k.text.as_str()).collect();
        assert_eq!(texts, ["SELECT a FROM t WHERE id = $1"]);
        assert_eq!(obs.overflow_calls, 0);
    }

    #[test]
    fn cut_keeps_sessions_across_intervals() {
        let entry = |msg: &'static str| log_line("u", msg);
        let mut agg = Aggregator::new(AggregatorConfig::default());
        agg.entry(&entry("duration: 4.000 ms  parse <unnamed>: SELECT $1"));
        agg.entry(&entry("duration: 1.000 ms  bind <unnamed>: SELECT $1"));
        let first = agg.cut(&ParseStats { entries: 2, ..ParseStats::default() });
        assert!(first.statements.is_empty());
        assert_eq!(first.input.entries, 2);
        agg.entry(&entry("duration: 0.500 ms  execute <unnamed>: SELECT $1"));
        agg.entry(&entry("duration: 9.000 ms"));
        let second = agg.cut(&ParseStats { entries: 2, ..ParseStats::default() });
        let s = second.statements.values().next().unwrap();
        assert_eq!((s.calls, s.total), (1, std::time::Duration::from_micros(5500)));
        assert_eq!(second.input.entries, 2);
        assert_eq!(second.input.unattributed_durations, 1, "the bare duration, counted once");
        assert_eq!(agg.cut(&ParseStats::default()).input.unattributed_durations, 0);
    }

    #[test]
    fn cut_reports_the_sessions_forgotten_at_the_cap_once() {
        let mut agg = Aggregator::new(AggregatorConfig { max_sessions: 4, ..AggregatorConfig::default() });
        for pid in 1..=10 {
            agg.entry(&LogEntry { pid: Some(pid), ..log_line("u", "statement: SELECT 1") });
        }
        let first = agg.cut(&ParseStats::default());
        let forgotten = agg.sessionizer.stats().evicted_sessions;
        assert!(forgotten >= 6, "ten sessions through a table of four: {forgotten}");
        assert_eq!(first.input.forgotten_sessions, forgotten);
        let second = agg.cut(&ParseStats::default());
        assert_eq!(second.input.forgotten_sessions, 0, "counted in the interval it happened in");
    }

    #[test]
    fn waits_that_timed_out_do_not_crowd_out_the_waits_in_progress() {
        let mut agg = Aggregator::new(AggregatorConfig { max_sessions: 4, ..AggregatorConfig::default() });
        let mut line = |pid: u32, message: &str, severity, statement: Option<&str>| {
            agg.entry(&LogEntry {
                pid: Some(pid),
                severity: Some(severity),
                statement: statement.map(Into::into),
                ..log_line("u", message)
            });
        };
        use crate::logparse::Severity::{Error, Log};
        let waits = |pid| format!("process {pid} still waiting for ShareLock on transaction 740 after 1000.072 ms");
        let update = "UPDATE t SET v = 2 WHERE id = 1";
        // Three sessions give up waiting (lock_timeout): no `acquired` line.
        for pid in 1..=3 {
            line(pid, &waits(pid), Log, Some(update));
            line(pid, "canceling statement due to lock timeout", Error, Some(update));
        }
        // Two wait at once and both get the lock.
        line(10, &waits(10), Log, Some(update));
        line(11, &waits(11), Log, Some(update));
        line(10, "process 10 acquired ShareLock on transaction 740 after 1500.100 ms", Log, None);
        line(11, "process 11 acquired ShareLock on transaction 740 after 1500.100 ms", Log, None);
        let obs = agg.finish(&ParseStats::default());
        let groups: Vec<(&str, u64, u64)> =
            obs.locks.iter().map(|(k, l)| (k.waiter.as_str(), l.waits, l.acquired)).collect();
        assert_eq!(groups, [("UPDATE t SET v = $1 WHERE id = $2", 5, 2)], "one group, its acquires in it");
    }

    #[test]
    fn lock_objects_lose_per_wait_numbers() {
        assert_eq!(lock_object("transaction 740"), "transaction");
        assert_eq!(lock_object("tuple (0,1) of relation 16384 of database 5"), "tuple of relation 16384 of database 5");
        assert_eq!(lock_object("relation 16384 of database 5"), "relation 16384 of database 5");
    }

    /// A server's message, as masked for export.
    fn server_message(sqlstate: &str, message: &str) -> String {
        mask_message(sqlstate, message, None)
    }

    #[test]
    fn messages_the_application_wrote_are_not_kept() {
        let text = "customer alice@example.com has an unpaid invoice";
        for (sqlstate, context) in [
            ("P0001", None),
            // RAISE … USING ERRCODE, and a log without %e.
            ("22023", Some("PL/pgSQL function bill(integer) line 4 at RAISE")),
            ("?????", Some("PL/pgSQL function inline_code_block line 3 at RAISE")),
            ("?????", Some("Traceback (most recent call last):\n  PL/Python function \"bill\", line 2, in <module>")),
            ("XX000", Some("PL/Perl function \"bill\"")),
            ("38000", None),
        ] {
            let m = mask_message(sqlstate, text, context);
            assert!(!m.contains("alice") && !m.contains("customer"), "{sqlstate} {context:?}: {m}");
        }
        // The server's own message inside a function is kept.
        let m = mask_message("22012", "division by zero", Some("PL/pgSQL function f() line 3 at assignment"));
        assert_eq!(m, "division by zero");
    }

    #[test]
    fn error_messages_keep_names_and_lose_values() {
        let m = server_message("23505", "duplicate key value violates unique constraint \"t_pkey\"");
        assert!(m.contains("\"t_pkey\""), "{m}");
        let m = server_message("22P02", "invalid input syntax for type integer: \"zqzq\"");
        assert!(!m.contains("zqzq"), "{m}");
        let m = server_message("22P02", "invalid input syntax for type integer: \"ab\"hunter2 secret\"");
        assert!(!m.contains("hunter2") && !m.contains("secret"), "{m}");
        let m = server_message("42703", "column \"a\" of relation \"t\" does not exist: \"zq\"zq\"");
        assert!(m.contains("\"a\"") && m.contains("\"t\"") && !m.contains("zq"), "{m}");
        let m = server_message("22P02", "unbalanced \"zqzq and more");
        assert!(!m.contains("zqzq") && !m.contains("more"), "{m}");
        let m = server_message("P0001", "customer alice@example.com has an unpaid invoice");
        assert!(!m.contains("alice"), "{m}");
        let m = server_message("42601", "syntax error at or near \"SELEC\" at character 15");
        assert_eq!(m, server_message("42601", "syntax error at or near \"SELEC\""));
        let m = server_message("22003", "value 123456 out of range for type integer");
        assert!(!m.contains("123456"), "{m}");
    }
}
