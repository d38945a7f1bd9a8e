//! Lock contention and deadlocks, per node: lock waits grouped by waiting
//! statement, blocking statement (the blocker's last statement the log
//! showed) and locked object, as the agent groups them ([`LockKey`]).
//!
//! The subject is the lock (`lock:<mode> on <object>`), readable in
//! `/metrics`; the waiting and blocking statements are part of the
//! finding's identity, so two pairs waiting on one lock are two findings.
//!
//! [`LockKey`]: querywatch_wire::observations::LockKey

use super::{Draft, Finding, Kind, Severity, ms, short};
use crate::snapshot::Snapshot;
use querywatch_wire::observations::{LockKey, LockStats};
use serde_json::{Map, json};
use std::collections::BTreeMap;

pub(crate) fn lock_contention(snap: &Snapshot, out: &mut Vec<Finding>) {
    // Rows of one (node, key) merged: a snapshot may hold several.
    let mut groups: BTreeMap<(&str, &LockKey), LockStats> = BTreeMap::new();
    for l in &snap.locks {
        groups.entry((&l.node, &l.key)).or_default().merge(&l.stats);
    }
    for ((node, k), v) in groups {
        let identity = format!("{}\u{1f}{}\u{1f}{}", k.database, k.waiter, k.blocker);
        let blocker = if k.blocker.is_empty() { "an unknown statement".to_owned() } else { short(&k.blocker) };
        let mut ev = Map::new();
        ev.insert("database".into(), json!(k.database));
        ev.insert("waiting_statement".into(), json!(k.waiter));
        ev.insert("blocking_statement".into(), json!(k.blocker));
        if !node.is_empty() {
            ev.insert("node".into(), json!(node));
        }
        if v.deadlocks > 0 {
            ev.insert("deadlocks".into(), json!(v.deadlocks));
            out.push(
                Draft {
                    kind: Kind::Deadlock,
                    severity: Severity::Critical,
                    subject: format!("deadlock:{}", short(&k.waiter)),
                    node: node.to_owned(),
                    key: identity,
                    summary: format!("{} deadlock(s) between: {} AND {blocker}", v.deadlocks, short(&k.waiter)),
                    evidence: ev,
                    action:
                        "Make the transactions take their row locks in the same order (e.g. ORDER BY id … FOR UPDATE)."
                            .into(),
                }
                .build(snap),
            );
            continue;
        }
        if v.waits == 0 && v.acquired == 0 {
            continue;
        }
        ev.insert("mode".into(), json!(k.mode));
        ev.insert("object".into(), json!(k.object));
        ev.insert("waits".into(), json!(v.waits));
        ev.insert("max_wait_ms".into(), json!(ms(v.max_wait)));
        ev.insert("acquired".into(), json!(v.acquired));
        ev.insert("acquired_wait_ms".into(), json!(ms(v.acquired_wait)));
        let on = if node.is_empty() { String::new() } else { format!(" on node {node}") };
        out.push(
            Draft {
                kind: Kind::LockContention,
                severity: if v.max_wait.as_secs() >= 5 { Severity::Critical } else { Severity::Warning },
                subject: format!("lock:{} on {}", k.mode, k.object),
                node: node.to_owned(),
                key: identity,
                summary: format!(
                    "{} wait(s) up to {:.0} ms for {} on {}{on}: {} blocked by {blocker}",
                    v.waits.max(v.acquired),
                    ms(v.max_wait),
                    k.mode,
                    k.object,
                    short(&k.waiter),
                ),
                evidence: ev,
                action:
                    "Shorten the blocking transaction (commit sooner, no user think-time inside it) or set lock_timeout."
                        .into(),
            }
            .build(snap),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testkit::Snap;
    use super::*;
    use std::time::Duration;

    fn key(waiter: &str, blocker: &str, mode: &str) -> LockKey {
        LockKey {
            database: "db".into(),
            waiter: waiter.into(),
            blocker: blocker.into(),
            mode: mode.into(),
            object: "transaction".into(),
        }
    }

    fn run(s: &Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        lock_contention(s, &mut out);
        out
    }

    const W: &str = "UPDATE accounts SET v = v + $1 WHERE id = $2";
    const B: &str = "UPDATE accounts SET v = v + $1 WHERE id = $2 -- holder";

    #[test]
    fn contention_names_waiter_blocker_and_node() {
        let wait = LockStats { waits: 2, max_wait: Duration::from_millis(1200), ..LockStats::default() };
        let s = Snap::new()
            .lock("n3", key(W, B, "ShareLock"), wait.clone())
            .lock("n3", key(W, B, "ShareLock"), wait.clone())
            .lock("n1", key("SELECT 1", "", "ShareLock"), wait)
            .build();
        let out = run(&s);
        assert_eq!(out.len(), 2, "{out:#?}");
        let n3 = out.iter().find(|f| f.node.as_deref() == Some("n3")).unwrap();
        assert_eq!(n3.kind, Kind::LockContention);
        assert_eq!(n3.subject, "lock:ShareLock on transaction");
        assert_eq!(n3.evidence["waits"], json!(4), "rows of one group are merged");
        assert_eq!(n3.evidence["max_wait_ms"], json!(1200.0));
        assert_eq!(n3.evidence["waiting_statement"], json!(W));
        assert_eq!(n3.evidence["blocking_statement"], json!(B));
        assert!(n3.summary.contains("blocked by UPDATE accounts"), "{}", n3.summary);
        let n1 = out.iter().find(|f| f.node.as_deref() == Some("n1")).unwrap();
        assert!(n1.summary.contains("an unknown statement"));
        // Same lock, other statements: another finding, another id.
        assert_ne!(n1.id, n3.id);
    }

    #[test]
    fn deadlock_known_answer_and_nothing_without_waits() {
        let s = Snap::new()
            .lock("", key(W, B, "deadlock"), LockStats { deadlocks: 1, ..LockStats::default() })
            .lock("", key(W, B, "ShareLock"), LockStats::default())
            .build();
        let out = run(&s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::Deadlock);
        assert_eq!(out[0].severity, Severity::Critical);
        assert_eq!(out[0].node, None);
        assert!(run(&Snap::new().lock("n1", key(W, B, "ShareLock"), LockStats::default()).build()).is_empty());
    }
}
