//! What statement and table deltas share: the server's identity over time
//! ([`ServerEpoch`]), the per-entry rule that keeps a delta from going
//! negative ([`entry_delta`]), and the conversion of PostgreSQL's numbers
//! (bigint counters, float milliseconds) into ours.

use std::time::{Duration, SystemTime};

/// One run of one PostgreSQL server: cumulative statistics only compare
/// within the same epoch.
///
/// `pg_postmaster_start_time()` changes on a restart; it does *not* change
/// on crash recovery (a backend killed, the postmaster reinitializing shared
/// memory), which throws away the table statistics and pg_stat_statements'
/// entries all the same. The checkpointer is restarted on exactly that
/// occasion, so its `backend_start` tells a crash restart apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerEpoch {
    /// `pg_postmaster_start_time()`.
    pub postmaster_start: SystemTime,
    /// `backend_start` of the checkpointer in `pg_stat_activity`; `None`
    /// where it cannot be seen (no `pg_monitor`).
    pub checkpointer_start: Option<SystemTime>,
}

impl ServerEpoch {
    /// True when both were taken from the same server run. An unknown
    /// checkpointer start on either side compares only the postmaster's.
    pub fn same_run(&self, other: &ServerEpoch) -> bool {
        self.postmaster_start == other.postmaster_start
            && match (self.checkpointer_start, other.checkpointer_start) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// How a delta was computed, for whoever wants to tell an increment from a
/// guess (and for the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeltaOrigin {
    /// The same entry in both snapshots, every counter grew or stayed:
    /// current − previous.
    Increment,
    /// An entry known to be created since the previous snapshot: all of its
    /// counters.
    New,
    /// The entry was reset or re-created since the previous snapshot (a
    /// reset time changed, a counter went down, or its `stats_since` moved):
    /// all of its current counters, which is what happened since the reset.
    /// What happened between the previous snapshot and the reset is lost.
    Reset,
}

/// A set of cumulative counters of one entry.
pub trait Counters: Copy + Default + PartialEq {
    /// `self − earlier`, or `None` when any counter went down (the entry was
    /// reset or re-created in between).
    fn checked_sub(&self, earlier: &Self) -> Option<Self>;

    /// Field-wise sum, saturating (merging deltas of consecutive intervals).
    fn saturating_add(&self, other: &Self) -> Self;

    /// What happened since `earlier` when a counter went down (a reset):
    /// the current counters, all of them post-reset activity, unless some
    /// are kept elsewhere and were not reset with the others.
    fn since_reset(&self, _earlier: &Self) -> Self {
        *self
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// What the previous snapshot knows about one entry of the current one.
#[derive(Clone, Copy, Debug)]
pub enum Previous<'a, C> {
    /// The entry was in the previous snapshot with these counters.
    Seen(&'a C),
    /// Not in a previous snapshot that would have shown it: it was created
    /// since.
    Absent,
    /// Not in the previous snapshot, but that snapshot could have missed it
    /// (rows it could not attribute): nothing known, this one is a baseline.
    Unknown,
}

/// The delta of one entry, never negative, or `None` when there is nothing
/// to report (no change, or a baseline).
///
/// `reset_since_previous` is true when the source says every entry was reset
/// between the two snapshots (a changed `stats_reset`), or this entry was
/// re-created (a changed `stats_since`): then the current counters are all
/// post-reset activity.
pub fn entry_delta<C: Counters>(
    previous: Previous<'_, C>,
    current: &C,
    reset_since_previous: bool,
) -> Option<(DeltaOrigin, C)> {
    let (origin, delta) = match previous {
        _ if reset_since_previous => (DeltaOrigin::Reset, *current),
        Previous::Unknown => return None,
        Previous::Absent => (DeltaOrigin::New, *current),
        Previous::Seen(prev) => match current.checked_sub(prev) {
            Some(d) => (DeltaOrigin::Increment, d),
            // Reset or evicted and re-created in between: the current value
            // is what happened since, a lower bound of the truth that never
            // counts anything twice.
            None => (DeltaOrigin::Reset, current.since_reset(prev)),
        },
    };
    (!delta.is_zero()).then_some((origin, delta))
}

/// A PostgreSQL bigint counter as a count: negative is impossible for these
/// counters, and is clamped rather than trusted.
pub fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Milliseconds as PostgreSQL reports times (float8) into a `Duration`,
/// rounded to whole nanoseconds once, when read. Deltas are then integer
/// subtractions, so the deltas of a run add up exactly to last − first.
/// NaN and negative values become zero, absurdly large ones saturate: a
/// malformed number must not panic the agent.
pub fn millis(ms: f64) -> Duration {
    let nanos = ms * 1_000_000.0;
    if nanos.is_nan() || nanos <= 0.0 {
        return Duration::ZERO;
    }
    // `as` saturates at u64::MAX for out-of-range floats (~584 years).
    Duration::from_nanos(nanos.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    struct One(u64);
    impl Counters for One {
        fn checked_sub(&self, earlier: &Self) -> Option<Self> {
            self.0.checked_sub(earlier.0).map(One)
        }
        fn saturating_add(&self, other: &Self) -> Self {
            One(self.0.saturating_add(other.0))
        }
    }

    #[test]
    fn entry_rules() {
        assert_eq!(entry_delta(Previous::Seen(&One(5)), &One(8), false), Some((DeltaOrigin::Increment, One(3))));
        assert_eq!(entry_delta(Previous::Seen(&One(5)), &One(5), false), None, "no change, no delta");
        assert_eq!(entry_delta(Previous::Seen(&One(5)), &One(2), false), Some((DeltaOrigin::Reset, One(2))));
        assert_eq!(entry_delta(Previous::Seen(&One(5)), &One(9), true), Some((DeltaOrigin::Reset, One(9))));
        assert_eq!(entry_delta(Previous::Absent, &One(4), false), Some((DeltaOrigin::New, One(4))));
        assert_eq!(entry_delta(Previous::Unknown, &One(4), false), None);
        assert_eq!(entry_delta(Previous::Unknown, &One(4), true), Some((DeltaOrigin::Reset, One(4))));
    }

    #[test]
    fn millis_never_panics() {
        assert_eq!(millis(1.5), Duration::from_micros(1500));
        assert_eq!(millis(0.0000004), Duration::ZERO);
        assert_eq!(millis(-3.0), Duration::ZERO);
        assert_eq!(millis(f64::NAN), Duration::ZERO);
        assert_eq!(millis(f64::INFINITY), Duration::from_nanos(u64::MAX));
        assert_eq!(count(-1), 0);
    }

    #[test]
    fn epochs() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let later = t + Duration::from_secs(1);
        let a = ServerEpoch { postmaster_start: t, checkpointer_start: Some(t) };
        assert!(a.same_run(&a));
        assert!(!a.same_run(&ServerEpoch { postmaster_start: later, ..a }), "restart");
        assert!(!a.same_run(&ServerEpoch { checkpointer_start: Some(later), ..a }), "crash restart");
        assert!(a.same_run(&ServerEpoch { checkpointer_start: None, ..a }), "unknown compares the postmaster only");
    }
}
