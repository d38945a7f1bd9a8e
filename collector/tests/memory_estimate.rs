//! The store's memory estimate against what it really allocates.
//!
//! `[store] memory_limit_mb` is enforced on the store's own estimate (it
//! cannot ask the allocator), so the estimate must not undercount: an
//! estimate at half the truth once let the collector reach twice its
//! budget. This binary counts every allocation (the `cap` allocator
//! wrapper, one test so nothing else allocates meanwhile) while a store
//! takes batches of distinct statements from several nodes, and compares.

use cap::Cap;
use querywatch_collector::window::{WindowConfig, Windows};
use querywatch_wire::otlp::ResourceInfo;
use querywatch_wire::{Observations, StatementKey};
use std::alloc::System;
use std::time::Duration;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// A name of letters only (pg_query's fingerprint ignores digits in names).
fn letters(mut n: usize) -> String {
    let mut out = String::new();
    loop {
        out.insert(0, char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            return out;
        }
    }
}

fn batch(first: usize, n: usize, at: i64) -> Observations {
    let mut obs = Observations::default();
    for i in first..first + n {
        let text = format!("SELECT c_{} FROM t_{} WHERE id = $1", letters(i % 7), letters(i));
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for k in 0..(1 + i % 5) {
            s.record_call(Duration::from_micros(100 + 997 * (i as u64 % 1000) + 31 * k as u64), Some(at), &text);
        }
    }
    obs.first_seen = Some(at - 10_000);
    obs.last_seen = Some(at);
    obs
}

#[test]
fn the_estimate_covers_what_the_store_allocates() {
    const T0: i64 = 1_800_000_000_000;
    let mut store = Windows::new(WindowConfig { memory_limit: usize::MAX / 2, ..WindowConfig::default() });
    let nodes: Vec<ResourceInfo> =
        (0..4).map(|n| ResourceInfo { node: format!("node-{n}"), ..ResourceInfo::default() }).collect();
    // Counted from before the batches are built: the store frees what it
    // does not keep of them, so what is left allocated at the end is the
    // store's.
    let before = ALLOC.allocated();
    let mut batches = Vec::new();
    for minute in 0..3 {
        for node in &nodes {
            for chunk in 0..5 {
                let at = T0 + minute * 60_000 + 1_000 * chunk;
                batches.push((node, batch(chunk as usize * 1_000, 1_000, at)));
            }
        }
    }
    let last = T0 + 3 * 60_000;
    for (node, obs) in batches {
        store.ingest(node, obs, last);
    }
    let allocated = ALLOC.allocated() - before;
    let h = store.health();
    assert_eq!(h.fingerprints, 5_000);
    assert_eq!(h.rows, 3 * 4 * 5_000, "one row per (fingerprint, node, minute)");
    let ratio = h.estimated_bytes as f64 / allocated as f64;
    eprintln!(
        "store: {} rows, allocated {} B ({:.0} B per row), estimate {} B: {ratio:.2} x",
        h.rows,
        allocated,
        allocated as f64 / h.rows as f64,
        h.estimated_bytes
    );
    // Never below what is allocated (the allocator's own overhead comes
    // on top, and the estimate includes a guess of it); not so far above
    // that the limit would waste half the budget.
    assert!(ratio >= 1.0, "the estimate ({} B) is below the allocated {allocated} B", h.estimated_bytes);
    assert!(ratio <= 1.6, "the estimate ({} B) is {ratio:.2} x the allocated {allocated} B", h.estimated_bytes);
}
