//! What one agent observed: in one export interval (live) or one log file
//! (offline). The agent fills it; the collector and `analyze` merge it.
//!
//! Every map here is keyed by statement text and therefore capped by the
//! producer (see the agent's aggregator); what did not fit is counted in
//! `overflow_*`, never silently dropped.

use crate::dbstats::DbStats;
use crate::health::AgentHealth;
use crate::stats::{EpochMillis, StatementStats};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::time::Duration;

/// A statement shape as the agent keys it: database, user, masked text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatementKey {
    pub database: String,
    pub user: String,
    /// Masked statement text: literals replaced by `$n`.
    pub text: String,
}

/// Lock waits grouped by who waited, who blocked and on what.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    pub database: String,
    /// Masked text of the waiting statement (empty when unknown).
    pub waiter: String,
    /// Masked text of the last statement seen from the blocking process
    /// (empty when the log did not show it).
    pub blocker: String,
    /// Lock mode, e.g. `ShareLock`.
    pub mode: String,
    /// What was locked, with numbers removed: `transaction`, `tuple (…) of relation … of database …`.
    pub object: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockStats {
    /// `still waiting` reports (one per waiting process past deadlock_timeout).
    pub waits: u64,
    /// The longest wait reported, from `still waiting` or `acquired … after`.
    pub max_wait: Duration,
    /// Sum of the final wait times of the waits that were granted.
    pub acquired_wait: Duration,
    pub acquired: u64,
    pub deadlocks: u64,
}

impl LockStats {
    pub fn merge(&mut self, o: &LockStats) {
        self.waits += o.waits;
        self.max_wait = self.max_wait.max(o.max_wait);
        self.acquired_wait += o.acquired_wait;
        self.acquired += o.acquired;
        self.deadlocks += o.deadlocks;
    }
}

/// How much input was read and what could not be used.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InputStats {
    pub files: u64,
    pub bytes: u64,
    pub lines: u64,
    /// Log entries (one message with its DETAIL/STATEMENT/… lines).
    pub entries: u64,
    /// Lines or records that are not PostgreSQL log entries in the expected format.
    pub unparsed: u64,
    /// Entries longer than the entry size cap, truncated.
    pub truncated: u64,
    /// Entries with bytes that are not valid UTF-8 (replaced, kept).
    pub invalid_utf8: u64,
    /// `duration:` lines that could not be tied to a statement (e.g. the
    /// log_duration pairing needs a session id or pid in the prefix).
    pub unattributed_durations: u64,
    /// Files that could not be read to their end (what was read is kept).
    pub unreadable_files: u64,
    /// Idle sessions the agent forgot at its session cap: a statement of
    /// theirs still waiting for its duration line can no longer pair.
    pub forgotten_sessions: u64,
    /// Sessions' last statements let go to keep the session texts within
    /// their byte budget: a lock such a session blocks names no blocker.
    pub dropped_session_texts: u64,
}

impl InputStats {
    pub fn merge(&mut self, o: &InputStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.lines += o.lines;
        self.entries += o.entries;
        self.unparsed += o.unparsed;
        self.truncated += o.truncated;
        self.invalid_utf8 += o.invalid_utf8;
        self.unattributed_durations += o.unattributed_durations;
        self.unreadable_files += o.unreadable_files;
        self.forgotten_sessions += o.forgotten_sessions;
        self.dropped_session_texts += o.dropped_session_texts;
    }

    /// `self - before`, field by field, for counters that only grow (a
    /// parser's totals at two moments: what happened in between).
    pub fn since(&self, before: &InputStats) -> InputStats {
        InputStats {
            files: self.files.saturating_sub(before.files),
            bytes: self.bytes.saturating_sub(before.bytes),
            lines: self.lines.saturating_sub(before.lines),
            entries: self.entries.saturating_sub(before.entries),
            unparsed: self.unparsed.saturating_sub(before.unparsed),
            truncated: self.truncated.saturating_sub(before.truncated),
            invalid_utf8: self.invalid_utf8.saturating_sub(before.invalid_utf8),
            unattributed_durations: self.unattributed_durations.saturating_sub(before.unattributed_durations),
            unreadable_files: self.unreadable_files.saturating_sub(before.unreadable_files),
            forgotten_sessions: self.forgotten_sessions.saturating_sub(before.forgotten_sessions),
            dropped_session_texts: self.dropped_session_texts.saturating_sub(before.dropped_session_texts),
        }
    }
}

/// Everything one agent observed in one interval or one log file.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    pub statements: FxHashMap<StatementKey, StatementStats>,
    /// Calls folded into the overflow shape because the shape cap was reached.
    pub overflow_calls: u64,
    pub locks: FxHashMap<LockKey, LockStats>,
    pub overflow_locks: u64,
    /// Errors raised with no statement text to attribute them to, by SQLSTATE.
    pub unattributed_errors: BTreeMap<String, u64>,
    /// Temporary files with no statement text to attribute them to.
    pub unattributed_temp_files: u64,
    pub unattributed_temp_bytes: u64,
    /// Log entries by message class (`duration`, `error`, `connection`, `checkpoint`, …, `other`).
    pub classes: BTreeMap<&'static str, u64>,
    pub input: InputStats,
    /// What the statistics poller saw (pg_stat_statements, table
    /// statistics, activity samples); empty for the log source.
    pub db: DbStats,
    /// The agent's own health in the interval (default for `analyze`).
    pub agent: AgentHealth,
    /// Earliest and latest timestamp seen.
    pub first_seen: Option<EpochMillis>,
    pub last_seen: Option<EpochMillis>,
}

impl Observations {
    /// Adds `other` into `self`. Caps are the producer's business: merging
    /// two capped sets may exceed a cap, which the consumer enforces again.
    pub fn merge(&mut self, other: Observations) {
        for (k, v) in other.statements {
            match self.statements.get_mut(&k) {
                Some(mine) => mine.merge(&v),
                None => {
                    self.statements.insert(k, v);
                }
            }
        }
        self.overflow_calls += other.overflow_calls;
        for (k, v) in other.locks {
            self.locks.entry(k).or_default().merge(&v);
        }
        self.overflow_locks += other.overflow_locks;
        for (k, v) in other.unattributed_errors {
            *self.unattributed_errors.entry(k).or_default() += v;
        }
        self.unattributed_temp_files += other.unattributed_temp_files;
        self.unattributed_temp_bytes += other.unattributed_temp_bytes;
        for (k, v) in other.classes {
            *self.classes.entry(k).or_default() += v;
        }
        self.input.merge(&other.input);
        self.db.merge(other.db);
        self.agent.merge(&other.agent);
        self.first_seen = min_opt(self.first_seen, other.first_seen);
        self.last_seen = max_opt(self.last_seen, other.last_seen);
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}
