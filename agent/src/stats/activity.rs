//! `pg_stat_activity` samples and their per-interval aggregate: how many
//! times a backend was seen in which state, waiting on what, running which
//! (masked) statement. Sampling every second turns counts into an estimate
//! of seconds spent (a count of 7 is ≈ 7 backend-seconds).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// One backend seen by one sample (only backends that are not idle).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivitySample {
    pub pid: i32,
    pub datname: Option<Arc<str>>,
    pub usename: Option<Arc<str>>,
    /// `client backend`, `autovacuum worker`, `parallel worker`, …
    pub backend_type: Arc<str>,
    /// `active`, `idle in transaction`, …
    pub state: Arc<str>,
    pub wait_event_type: Option<Arc<str>>,
    pub wait_event: Option<Arc<str>>,
    /// `query_id` (PostgreSQL 14+ with `compute_query_id`).
    pub query_id: Option<i64>,
    /// The backend's current (or last) statement after
    /// [`crate::mask::mask`].
    pub query: Arc<str>,
}

/// What samples are counted by. `datname` is not in the brief's list but
/// the wire groups everything by database (`db.namespace`), so it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityKey {
    pub datname: Option<Arc<str>>,
    pub state: Arc<str>,
    pub wait_event_type: Option<Arc<str>>,
    pub wait_event: Option<Arc<str>>,
    pub query: Arc<str>,
}

/// The samples of one interval, counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityAggregate {
    pub since: SystemTime,
    pub until: SystemTime,
    /// Samples taken (successful polls of pg_stat_activity): the divisor
    /// that turns a count into an average number of backends.
    pub samples: u64,
    /// Backends seen per key, summed over the samples; sorted by key.
    pub counts: Vec<(ActivityKey, u64)>,
}

/// Bound on distinct keys per interval: backends × distinct statements is
/// normally small; past the bound, samples are counted in `overflow` (so a
/// pathological workload costs a counter, not memory).
pub const MAX_ACTIVITY_KEYS: usize = 10_000;

/// Collects samples until [`ActivityAccumulator::take`] closes the interval.
#[derive(Debug)]
pub struct ActivityAccumulator {
    since: SystemTime,
    samples: u64,
    counts: BTreeMap<ActivityKey, u64>,
    /// Backends not counted because the key bound was reached.
    pub overflow: u64,
}

impl ActivityAccumulator {
    pub fn new(since: SystemTime) -> Self {
        ActivityAccumulator { since, samples: 0, counts: BTreeMap::new(), overflow: 0 }
    }

    /// Adds one sample: every backend it saw.
    pub fn record(&mut self, backends: &[ActivitySample]) {
        self.samples += 1;
        for b in backends {
            let key = ActivityKey {
                datname: b.datname.clone(),
                state: b.state.clone(),
                wait_event_type: b.wait_event_type.clone(),
                wait_event: b.wait_event.clone(),
                query: b.query.clone(),
            };
            if let Some(n) = self.counts.get_mut(&key) {
                *n += 1;
            } else if self.counts.len() < MAX_ACTIVITY_KEYS {
                self.counts.insert(key, 1);
            } else {
                self.overflow += 1;
            }
        }
    }

    /// The samples taken so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Closes the interval at `until` and starts the next one.
    pub fn take(&mut self, until: SystemTime) -> ActivityAggregate {
        let counts = std::mem::take(&mut self.counts).into_iter().collect();
        let aggregate = ActivityAggregate { since: self.since, until, samples: self.samples, counts };
        self.since = until;
        self.samples = 0;
        aggregate
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(pid: i32, wait: Option<(&str, &str)>, query: &str) -> ActivitySample {
        ActivitySample {
            pid,
            datname: Some("app".into()),
            usename: Some("web".into()),
            backend_type: "client backend".into(),
            state: "active".into(),
            wait_event_type: wait.map(|w| w.0.into()),
            wait_event: wait.map(|w| w.1.into()),
            query_id: Some(42),
            query: query.into(),
        }
    }

    #[test]
    fn counts_per_key_and_interval() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut acc = ActivityAccumulator::new(t0);
        let lock = Some(("Lock", "relation"));
        acc.record(&[
            sample(1, lock, "SELECT $1"),
            sample(2, lock, "SELECT $1"),
            sample(3, None, "UPDATE t SET a = $1"),
        ]);
        acc.record(&[sample(1, lock, "SELECT $1")]);
        acc.record(&[]);
        let t1 = t0 + Duration::from_secs(10);
        let a = acc.take(t1);
        assert_eq!((a.since, a.until, a.samples), (t0, t1, 3));
        let counts: Vec<(Option<&str>, &str, u64)> =
            a.counts.iter().map(|(k, n)| (k.wait_event.as_deref(), &*k.query, *n)).collect();
        assert_eq!(counts, [(None, "UPDATE t SET a = $1", 1), (Some("relation"), "SELECT $1", 3)]);
        let next = acc.take(t1 + Duration::from_secs(10));
        assert_eq!((next.since, next.samples, next.counts.len()), (t1, 0, 0));
    }
}
