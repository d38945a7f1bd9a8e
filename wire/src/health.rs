//! The agent's own health in one interval: what it read per log file, how
//! its export to the collector went (failures by class, retries, the spool)
//! and how its statistics poller's connection fared. Carried in
//! [`crate::Observations::agent`] and sent as `querywatch.agent.*` metrics
//! in the same export as the data (DESIGN.md, "Wire contract"), so a
//! collector can show each node's agent next to what it reported.
//!
//! Counters are what happened in the interval (merging adds); gauges are
//! the state at the interval's end (merging keeps the later one, `None`
//! meaning "not reported" and never overriding a value).
//!
//! Per-file numbers are keyed by the file's *name* (no directory: the node
//! is in the resource, and a path says more about the host than anyone
//! needs). The producer names at most [`MAX_FILES`] files per interval, the
//! ones with most bytes, and folds the rest into [`crate::names::OVERFLOW_TEXT`]
//! (`<other>`): a backlog of thousands of rotated files must not become
//! thousands of series. Rotated files change names over time, so a series
//! per name is short-lived by nature; the totals without attributes
//! (`querywatch.agent.bytes_read`, `querywatch.agent.lines_read` in
//! [`crate::observations::InputStats`]) are the long-lived ones.

use crate::names::OVERFLOW_TEXT;
use std::collections::BTreeMap;

/// Files named per interval; the rest are folded into `<other>`.
pub const MAX_FILES: usize = 8;

/// What was read from one log file in the interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileRead {
    pub bytes: u64,
    pub lines: u64,
}

impl FileRead {
    pub fn merge(&mut self, o: &FileRead) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.lines = self.lines.saturating_add(o.lines);
    }
}

/// The agent's health in one interval. See the module documentation for
/// the merge rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentHealth {
    /// Bytes and lines read per log file name (at most [`MAX_FILES`] names
    /// plus `<other>`; see [`AgentHealth::cap_files`]).
    pub files: BTreeMap<String, FileRead>,
    /// Export attempts that failed and may succeed later (unreachable,
    /// timed out, UNAVAILABLE, HTTP 5xx).
    pub export_retryable_failures: u64,
    /// Export attempts the collector asked to slow down (RESOURCE_EXHAUSTED
    /// with RetryInfo, HTTP 429/503 with Retry-After).
    pub export_throttled: u64,
    /// Batches the collector refused for good (dropped, not retried).
    pub export_permanent_failures: u64,
    /// Attempts scheduled again after a retryable or throttled failure.
    pub export_retries: u64,
    /// Batches and their bytes dropped from the spool to keep it within
    /// its bound (oldest first), or too large for it.
    pub spool_dropped_batches: u64,
    pub spool_dropped_bytes: u64,
    /// Gauge: batches waiting in the on-disk spool.
    pub spool_batches: Option<u64>,
    /// Gauge: bytes of the on-disk spool.
    pub spool_bytes: Option<u64>,
    /// Gauge: when the collector last accepted a request, Unix seconds;
    /// `None` before the first success.
    pub last_export_unix_s: Option<u64>,
    /// Statistics poller: connections established again by a connection
    /// that had one before (it keeps one per database and one for activity
    /// sampling, so a server restart is one reconnect per connection).
    pub poller_reconnects: u64,
    /// Statistics poller: connection attempts that failed.
    pub poller_connect_failures: u64,
    /// Statistics poller: established connections that broke.
    pub poller_connections_lost: u64,
    /// Statistics poller: polls that failed (query errors, timeouts) of
    /// the statistics views and of pg_stat_activity.
    pub poller_poll_failures: u64,
}

impl AgentHealth {
    /// Adds `other`, the later of the two, into `self`: counters add,
    /// gauges take `other`'s value when it has one (the last export time
    /// keeps the later of the two).
    pub fn merge(&mut self, other: &AgentHealth) {
        for (name, r) in &other.files {
            self.files.entry(name.clone()).or_default().merge(r);
        }
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.export_retryable_failures, other.export_retryable_failures);
        add(&mut self.export_throttled, other.export_throttled);
        add(&mut self.export_permanent_failures, other.export_permanent_failures);
        add(&mut self.export_retries, other.export_retries);
        add(&mut self.spool_dropped_batches, other.spool_dropped_batches);
        add(&mut self.spool_dropped_bytes, other.spool_dropped_bytes);
        add(&mut self.poller_reconnects, other.poller_reconnects);
        add(&mut self.poller_connect_failures, other.poller_connect_failures);
        add(&mut self.poller_connections_lost, other.poller_connections_lost);
        add(&mut self.poller_poll_failures, other.poller_poll_failures);
        self.spool_batches = other.spool_batches.or(self.spool_batches);
        self.spool_bytes = other.spool_bytes.or(self.spool_bytes);
        self.last_export_unix_s = self.last_export_unix_s.max(other.last_export_unix_s);
    }

    /// Keeps the [`MAX_FILES`] files with most bytes (ties by name) and
    /// folds the others into `<other>`. Call before sending.
    pub fn cap_files(&mut self) {
        if self.files.len() <= MAX_FILES {
            return;
        }
        let mut all: Vec<(String, FileRead)> = std::mem::take(&mut self.files).into_iter().collect();
        all.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(&b.0)));
        let mut other = FileRead::default();
        for (i, (name, r)) in all.into_iter().enumerate() {
            if i < MAX_FILES && name != OVERFLOW_TEXT {
                self.files.insert(name, r);
            } else {
                other.merge(&r);
            }
        }
        self.files.entry(OVERFLOW_TEXT.to_owned()).or_default().merge(&other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_gauges_keep_the_later_value() {
        let mut a = AgentHealth {
            export_retries: 2,
            spool_batches: Some(3),
            spool_bytes: Some(300),
            last_export_unix_s: Some(100),
            ..AgentHealth::default()
        };
        a.files.insert("postgresql.csv".into(), FileRead { bytes: 10, lines: 1 });
        let mut b =
            AgentHealth { export_retries: 1, spool_batches: Some(0), poller_reconnects: 1, ..AgentHealth::default() };
        b.files.insert("postgresql.csv".into(), FileRead { bytes: 5, lines: 2 });
        a.merge(&b);
        assert_eq!(a.export_retries, 3);
        assert_eq!(a.poller_reconnects, 1);
        assert_eq!(a.spool_batches, Some(0), "the later gauge wins");
        assert_eq!(a.spool_bytes, Some(300), "an unreported gauge does not erase one");
        assert_eq!(a.last_export_unix_s, Some(100));
        assert_eq!(a.files["postgresql.csv"], FileRead { bytes: 15, lines: 3 });
    }

    #[test]
    fn files_past_the_cap_are_folded_into_other() {
        let mut h = AgentHealth::default();
        for i in 0..20u64 {
            h.files.insert(format!("postgresql-{i:02}.csv"), FileRead { bytes: i, lines: 1 });
        }
        h.cap_files();
        assert_eq!(h.files.len(), MAX_FILES + 1);
        assert!(h.files.contains_key("postgresql-19.csv") && !h.files.contains_key("postgresql-00.csv"));
        let folded = h.files[OVERFLOW_TEXT];
        assert_eq!(folded, FileRead { bytes: (0..12u64).sum(), lines: 12 });
        let total: u64 = h.files.values().map(|r| r.bytes).sum();
        assert_eq!(total, (0..20u64).sum::<u64>());
    }
}
