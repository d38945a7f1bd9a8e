//! The life of a finding across evaluations, with hysteresis.
//!
//! Each detection pass hands its findings to [`FindingTracker::update`]
//! with the pass's time. A finding (by `id`) opens when first detected and
//! stays open while detected; it resolves only after `resolve_after`
//! consecutive passes without it, so a condition hovering at a threshold
//! does not flap open/resolved every pass. While open, `first_seen` is
//! kept and `last_seen`, severity, summary and evidence follow the latest
//! detection. A resolved finding detected again opens anew, with a new
//! `first_seen`.
//!
//! Memory is bounded: at most `max_open` open findings (the most severe
//! new ones win; the rest are counted, not kept) and at most
//! `max_resolved` resolved ones, each kept `keep_resolved` after it
//! resolved so the API can show what went away.
//!
//! Pure and deterministic: time is passed in, nothing reads a clock.

use super::{Finding, State};
use querywatch_wire::stats::EpochMillis;
use std::collections::BTreeMap;
use std::time::Duration;

/// Limits and hysteresis of a [`FindingTracker`].
/// Read from the collector's `[detect]` table (every field optional).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Consecutive evaluations without a finding before it resolves
    /// (default 3; at least 1).
    pub resolve_after: u32,
    /// How long a resolved finding stays visible (default 1 h).
    #[serde(with = "humantime_serde")]
    pub keep_resolved: Duration,
    /// Resolved findings kept at most; the oldest go first (default 1,000).
    pub max_resolved: usize,
    /// Open findings kept at most (default 1,000).
    pub max_open: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { resolve_after: 3, keep_resolved: Duration::from_secs(3600), max_resolved: 1000, max_open: 1000 }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    finding: Finding,
    /// Consecutive evaluations without it (open findings).
    misses: u32,
}

/// Open and recently resolved findings, by id.
#[derive(Clone, Debug, Default)]
pub struct FindingTracker {
    cfg: TrackerConfig,
    open: BTreeMap<String, Entry>,
    resolved: BTreeMap<String, Finding>,
    /// Findings kept out because `max_open` was reached (a new one not
    /// opened, or an open one dropped for a more severe one), in the
    /// latest evaluation.
    overflow: u64,
    /// ... and since the tracker was created.
    overflow_total: u64,
    evaluations: u64,
}

impl FindingTracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        FindingTracker { cfg, ..FindingTracker::default() }
    }

    /// Feeds one evaluation's findings, detected at `now` (ms).
    pub fn update(&mut self, found: Vec<Finding>, now: EpochMillis) {
        self.evaluations += 1;
        self.overflow = 0;
        // One finding per id: a detector may repeat an id; keep the most
        // severe (then the first).
        let mut seen: BTreeMap<String, Finding> = BTreeMap::new();
        for f in found {
            match seen.get(&f.id) {
                Some(old) if old.severity >= f.severity => {}
                _ => {
                    seen.insert(f.id.clone(), f);
                }
            }
        }
        // Findings absent this time move towards resolution.
        let resolve_after = self.cfg.resolve_after.max(1);
        let mut gone = Vec::new();
        for (id, e) in &mut self.open {
            if !seen.contains_key(id) {
                e.misses += 1;
                if e.misses >= resolve_after {
                    gone.push(id.clone());
                }
            }
        }
        for id in gone {
            if let Some(e) = self.open.remove(&id) {
                let mut f = e.finding;
                f.state = State::Resolved;
                f.resolved_at = Some(now);
                self.resolved.insert(id, f);
            }
        }
        // Present ones: refresh the open, open the new (most severe first
        // when the cap bites).
        let mut new = Vec::new();
        for (id, mut f) in seen {
            if let Some(e) = self.open.get_mut(&id) {
                f.first_seen = e.finding.first_seen;
                f.last_seen = now;
                f.state = State::Open;
                f.resolved_at = None;
                e.finding = f;
                e.misses = 0;
            } else {
                new.push(f);
            }
        }
        new.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)).then(a.id.cmp(&b.id)));
        for mut f in new {
            if self.open.len() >= self.cfg.max_open {
                // The most severe win: a new finding takes the place of the
                // least severe open one when it is more severe (a deadlock
                // must not wait behind a thousand open infos); else it
                // stays out. Either way one is counted as kept out.
                self.overflow += 1;
                let least = self.open.iter().min_by_key(|(id, e)| (e.finding.severity, std::cmp::Reverse(*id)));
                match least {
                    Some((id, e)) if e.finding.severity < f.severity => {
                        let id = id.clone();
                        self.open.remove(&id);
                    }
                    _ => continue,
                }
            }
            self.resolved.remove(&f.id);
            f.first_seen = now;
            f.last_seen = now;
            f.state = State::Open;
            f.resolved_at = None;
            self.open.insert(f.id.clone(), Entry { finding: f, misses: 0 });
        }
        self.overflow_total += self.overflow;
        self.prune(now);
    }

    /// Drops resolved findings older than `keep_resolved`, then the oldest
    /// past `max_resolved`.
    fn prune(&mut self, now: EpochMillis) {
        let keep = i64::try_from(self.cfg.keep_resolved.as_millis()).unwrap_or(i64::MAX);
        self.resolved.retain(|_, f| f.resolved_at.is_none_or(|t| now.saturating_sub(t) <= keep));
        if self.resolved.len() > self.cfg.max_resolved {
            let mut by_age: Vec<(EpochMillis, String)> =
                self.resolved.iter().map(|(id, f)| (f.resolved_at.unwrap_or(0), id.clone())).collect();
            by_age.sort();
            let excess = self.resolved.len() - self.cfg.max_resolved;
            for (_, id) in by_age.into_iter().take(excess) {
                self.resolved.remove(&id);
            }
        }
    }

    /// Every finding kept: open ones first (most severe first, then kind,
    /// subject, node), then resolved ones (most recently resolved first).
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        let mut open: Vec<&Finding> = self.open.values().map(|e| &e.finding).collect();
        open.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.kind.cmp(&b.kind))
                .then(a.subject.cmp(&b.subject))
                .then(a.node.cmp(&b.node))
        });
        let mut resolved: Vec<&Finding> = self.resolved.values().collect();
        resolved.sort_by(|a, b| b.resolved_at.cmp(&a.resolved_at).then(a.id.cmp(&b.id)));
        open.into_iter().chain(resolved)
    }

    /// The finding with this id, open or resolved.
    pub fn get(&self, id: &str) -> Option<&Finding> {
        self.open.get(id).map(|e| &e.finding).or_else(|| self.resolved.get(id))
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn resolved_count(&self) -> usize {
        self.resolved.len()
    }

    /// New findings the `max_open` cap kept out in the latest evaluation.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// ... and in all evaluations so far.
    pub fn overflow_total(&self) -> u64 {
        self.overflow_total
    }

    /// Evaluations fed so far.
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::findings::{Draft, Kind, Severity};
    use crate::snapshot::Snapshot;
    use serde_json::{Map, json};

    fn f(subject: &str, severity: Severity, n: u64) -> Finding {
        let mut ev = Map::new();
        ev.insert("n".into(), json!(n));
        Draft {
            kind: Kind::HotNode,
            severity,
            subject: subject.into(),
            node: String::new(),
            key: String::new(),
            summary: format!("{subject} {n}"),
            evidence: ev,
            action: String::new(),
        }
        .build(&Snapshot::default())
    }

    fn states(t: &FindingTracker) -> Vec<(String, State)> {
        t.findings().map(|f| (f.subject.clone(), f.state)).collect()
    }

    #[test]
    fn opens_stays_open_and_resolves_after_n_misses() {
        let mut t = FindingTracker::default();
        t.update(vec![f("a", Severity::Warning, 1)], 1000);
        assert_eq!(states(&t), vec![("a".into(), State::Open)]);
        t.update(vec![f("a", Severity::Critical, 2)], 2000);
        let a = t.findings().next().unwrap();
        assert_eq!((a.first_seen, a.last_seen), (1000, 2000));
        assert_eq!(a.severity, Severity::Critical, "the latest detection's numbers");
        assert_eq!(a.evidence["n"], json!(2));
        // Missed once, twice: still open (no flapping) ...
        t.update(vec![], 3000);
        t.update(vec![], 4000);
        assert_eq!(states(&t), vec![("a".into(), State::Open)]);
        assert_eq!(t.findings().next().unwrap().last_seen, 2000);
        // ... back: the misses start over.
        t.update(vec![f("a", Severity::Warning, 3)], 5000);
        t.update(vec![], 6000);
        t.update(vec![], 7000);
        assert_eq!(states(&t), vec![("a".into(), State::Open)]);
        assert_eq!(t.findings().next().unwrap().first_seen, 1000);
        // Third miss in a row: resolved.
        t.update(vec![], 8000);
        let a = t.findings().next().unwrap();
        assert_eq!((a.state, a.resolved_at, a.last_seen), (State::Resolved, Some(8000), 5000));
        assert!(!a.is_open());
        assert_eq!((t.open_count(), t.resolved_count()), (0, 1));
    }

    #[test]
    fn reopening_gets_a_new_first_seen() {
        let mut t = FindingTracker::new(TrackerConfig { resolve_after: 1, ..TrackerConfig::default() });
        t.update(vec![f("a", Severity::Warning, 1)], 1000);
        t.update(vec![], 2000);
        assert_eq!(states(&t), vec![("a".into(), State::Resolved)]);
        t.update(vec![f("a", Severity::Warning, 1)], 3000);
        let a: Vec<_> = t.findings().collect();
        assert_eq!(a.len(), 1, "the resolved copy is replaced, not duplicated");
        assert_eq!((a[0].state, a[0].first_seen, a[0].resolved_at), (State::Open, 3000, None));
        assert_eq!(t.get(&a[0].id).unwrap().first_seen, 3000);
    }

    #[test]
    fn resolved_findings_expire_and_are_capped() {
        let cfg = TrackerConfig {
            resolve_after: 1,
            keep_resolved: Duration::from_secs(10),
            max_resolved: 2,
            ..TrackerConfig::default()
        };
        let mut t = FindingTracker::new(cfg);
        t.update(vec![f("a", Severity::Warning, 1), f("b", Severity::Warning, 1), f("c", Severity::Warning, 1)], 0);
        t.update(vec![f("b", Severity::Warning, 1), f("c", Severity::Warning, 1)], 1000);
        t.update(vec![f("c", Severity::Warning, 1)], 2000);
        t.update(vec![], 3000);
        // a, b, c resolved at 1000, 2000, 3000; only two kept: a goes.
        let kept: Vec<_> = t.findings().map(|f| f.subject.clone()).collect();
        assert_eq!(kept, vec!["c", "b"]);
        // 10 s after b resolved it expires; c (resolved later) stays.
        t.update(vec![], 12_500);
        assert_eq!(t.findings().map(|f| f.subject.clone()).collect::<Vec<_>>(), vec!["c"]);
        t.update(vec![], 13_001);
        assert_eq!(t.findings().count(), 0);
    }

    #[test]
    fn open_findings_are_capped_most_severe_first_and_counted() {
        let mut t = FindingTracker::new(TrackerConfig { max_open: 2, ..TrackerConfig::default() });
        t.update(vec![f("a", Severity::Info, 1), f("b", Severity::Critical, 1), f("c", Severity::Warning, 1)], 1000);
        let open: Vec<_> = t.findings().map(|f| f.subject.clone()).collect();
        assert_eq!(open, vec!["b", "c"]);
        assert_eq!((t.overflow(), t.overflow_total()), (1, 1));
        // A newcomer no more severe than every open one stays out, counted.
        t.update(vec![f("a", Severity::Warning, 1), f("b", Severity::Critical, 1), f("c", Severity::Warning, 1)], 2000);
        assert_eq!(t.findings().map(|f| f.subject.clone()).collect::<Vec<_>>(), vec!["b", "c"]);
        assert_eq!((t.overflow(), t.overflow_total()), (1, 2));
        // A more severe newcomer takes the least severe open one's place.
        t.update(vec![f("a", Severity::Critical, 1), f("b", Severity::Critical, 1), f("c", Severity::Info, 1)], 3000);
        let mut open: Vec<_> = t.findings().filter(|f| f.is_open()).map(|f| f.subject.clone()).collect();
        open.sort();
        assert_eq!(open, vec!["a", "b"]);
        assert_eq!((t.overflow(), t.overflow_total()), (1, 3));
    }

    #[test]
    fn duplicate_ids_in_one_evaluation_keep_the_most_severe() {
        let mut t = FindingTracker::default();
        t.update(vec![f("a", Severity::Warning, 1), f("a", Severity::Critical, 2), f("a", Severity::Info, 3)], 1000);
        let all: Vec<_> = t.findings().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].evidence["n"], json!(2));
    }

    #[test]
    fn the_same_inputs_give_the_same_state() {
        let run = || {
            let mut t = FindingTracker::default();
            for (i, subjects) in [vec!["a", "b"], vec!["b"], vec![], vec!["c"], vec![], vec![]].into_iter().enumerate()
            {
                t.update(subjects.into_iter().map(|s| f(s, Severity::Warning, 1)).collect(), i as i64 * 1000);
            }
            t.findings().cloned().collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let summary: Vec<_> = a.iter().map(|f| (f.subject.as_str(), f.state)).collect();
        assert_eq!(summary, vec![("c", State::Open), ("b", State::Resolved), ("a", State::Resolved)]);
    }
}
