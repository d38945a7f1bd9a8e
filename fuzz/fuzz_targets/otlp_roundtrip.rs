//! decode ∘ encode is the identity on our own messages: arbitrary
//! [`Observations`] → `encode_metrics` / `encode_logs` → protobuf bytes →
//! prost decoding → `decode_metrics` / `decode_logs` → merged per node →
//! equal to the original in everything `wire/src/otlp/mod.rs` says a round
//! trip keeps (counters, calls, total/min/max, histogram buckets, errors,
//! temp files, rows, samples, plans, locks, classes, input and health
//! counters). Not compared, as documented: `first_seen`/`last_seen` (they
//! become the interval bounds) and groups with nothing to count.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use querywatch_wire::health::{AgentHealth, FileRead};
use querywatch_wire::names::LOG_CLASSES;
use querywatch_wire::observations::{InputStats, LockKey, LockStats, Observations, StatementKey};
use querywatch_wire::otlp::{ResourceInfo, decode_logs, decode_metrics, encode_logs, encode_metrics};
use querywatch_wire::stats::PlanSample;
use std::time::Duration;

const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
const T0: i64 = 1_700_000_001_000;
const SQLSTATES: &[&str] = &["23505", "57014", "40P01", "XX000", "22P02"];

#[derive(Arbitrary, Debug)]
struct Input {
    resource: (String, String, String, String, Option<u16>, String, String),
    statements: Vec<Stmt>,
    locks: Vec<Lock>,
    unattributed_errors: Vec<(u8, u16)>,
    unattributed_temp: (u16, u32),
    classes: Vec<(u8, u16)>,
    input: [u32; 11],
    overflow: (u16, u16),
    health: [u32; 13],
    files: Vec<(String, u32, u32)>,
}

#[derive(Arbitrary, Debug)]
struct Stmt {
    key: (u8, u8, String),
    /// Durations in µs, with an offset of the call's time from T0 (ms).
    calls: Vec<(u32, Option<u16>)>,
    errors: Vec<(u8, String)>,
    temp_files: Vec<u32>,
    rows: Option<u32>,
    plan: Option<(u32, bool, String)>,
}

#[derive(Arbitrary, Debug)]
struct Lock {
    key: (u8, String, String, u8, String),
    waits: u16,
    max_wait_ms: u32,
    acquired_wait_ms: u32,
    acquired: u16,
    deadlocks: u8,
}

fn build(i: &Input) -> (ResourceInfo, Observations) {
    let r = &i.resource;
    let resource = ResourceInfo {
        service_version: r.0.clone(),
        service_instance_id: r.1.clone(),
        host_name: r.2.clone(),
        server_address: r.3.clone(),
        server_port: r.4,
        node: r.5.clone(),
        cluster: r.6.clone(),
        extra: Vec::new(),
    };
    let mut obs = Observations::default();
    let names = ["shop", "app", "postgres", ""];
    for s in i.statements.iter().take(16) {
        let key = StatementKey {
            database: names[usize::from(s.key.0) % names.len()].into(),
            user: names[usize::from(s.key.1) % names.len()].into(),
            text: s.key.2.clone(),
        };
        let st = obs.statements.entry(key).or_default();
        for (us, at) in s.calls.iter().take(16) {
            st.record_call(Duration::from_micros(u64::from(*us)), at.map(|a| T0 + i64::from(a)), &s.key.2);
        }
        for (state, msg) in s.errors.iter().take(4) {
            st.record_error(SQLSTATES[usize::from(*state) % SQLSTATES.len()], msg, Some(T0));
        }
        for bytes in s.temp_files.iter().take(4) {
            st.record_temp_file(u64::from(*bytes), Some(T0));
        }
        if let Some(rows) = s.rows {
            st.rows = Some(u64::from(rows));
        }
        if let Some((us, json, plan)) = &s.plan {
            st.record_plan(PlanSample {
                duration: Duration::from_micros(u64::from(*us)),
                timestamp: Some(T0 + 5),
                format: if *json { "json" } else { "text" },
                plan: plan.clone(),
            });
        }
    }
    for l in i.locks.iter().take(8) {
        let key = LockKey {
            database: names[usize::from(l.key.0) % names.len()].into(),
            waiter: l.key.1.clone(),
            blocker: l.key.2.clone(),
            mode: ["ShareLock", "ExclusiveLock", "deadlock"][usize::from(l.key.3) % 3].into(),
            object: l.key.4.clone(),
        };
        obs.locks.entry(key).or_default().merge(&LockStats {
            waits: u64::from(l.waits),
            // Below 2^28 ms, so that eight merged groups stay below 2^51 ns ≈ 26
            // days: sums travel as f64 seconds, exact only that far
            // (wire/src/otlp/mod.rs).
            max_wait: Duration::from_millis(u64::from(l.max_wait_ms >> 4)),
            acquired_wait: Duration::from_millis(u64::from(l.acquired_wait_ms >> 4)),
            acquired: u64::from(l.acquired),
            deadlocks: u64::from(l.deadlocks),
        });
    }
    for (state, n) in &i.unattributed_errors {
        if *n > 0 {
            *obs.unattributed_errors.entry(SQLSTATES[usize::from(*state) % SQLSTATES.len()].into()).or_default() +=
                u64::from(*n);
        }
    }
    obs.unattributed_temp_files = u64::from(i.unattributed_temp.0);
    obs.unattributed_temp_bytes = u64::from(i.unattributed_temp.1);
    for (c, n) in &i.classes {
        if *n > 0 {
            *obs.classes.entry(LOG_CLASSES[usize::from(*c) % LOG_CLASSES.len()]).or_default() += u64::from(*n);
        }
    }
    let v = i.input.map(u64::from);
    obs.input = InputStats {
        files: v[0],
        bytes: v[1],
        lines: v[2],
        entries: v[3],
        unparsed: v[4],
        truncated: v[5],
        invalid_utf8: v[6],
        unattributed_durations: v[7],
        unreadable_files: v[8],
        forgotten_sessions: v[9],
        dropped_session_texts: v[10],
    };
    obs.overflow_calls = u64::from(i.overflow.0);
    obs.overflow_locks = u64::from(i.overflow.1);
    let h = i.health.map(u64::from);
    let mut agent = AgentHealth {
        export_retryable_failures: h[0],
        export_throttled: h[1],
        export_permanent_failures: h[2],
        export_retries: h[3],
        spool_dropped_batches: h[4],
        spool_dropped_bytes: h[5],
        spool_batches: (h[6] % 2 == 0).then_some(h[6]),
        spool_bytes: (h[7] % 2 == 0).then_some(h[7]),
        last_export_unix_s: (h[8] % 2 == 0).then_some(h[8]),
        poller_reconnects: h[9],
        poller_connect_failures: h[10],
        poller_connections_lost: h[11],
        poller_poll_failures: h[12],
        ..AgentHealth::default()
    };
    for (name, bytes, lines) in i.files.iter().take(4) {
        agent
            .files
            .entry(name.clone())
            .or_default()
            .merge(&FileRead { bytes: u64::from(*bytes), lines: u64::from(*lines) });
    }
    // What the agent does before sending (bounded per-file series).
    agent.cap_files();
    obs.agent = agent;
    (resource, obs)
}

fuzz_target!(|input: Input| {
    let (resource, obs) = build(&input);
    // Through bytes, as on the network.
    let m = encode_metrics(&obs, &resource, INTERVAL).encode_to_vec();
    let l = encode_logs(&obs, &resource, INTERVAL).encode_to_vec();
    let m = ExportMetricsServiceRequest::decode(&m[..]).expect("our metrics bytes decode");
    let l = ExportLogsServiceRequest::decode(&l[..]).expect("our logs bytes decode");
    let m = decode_metrics(&m).expect("our metrics decode");
    let l = decode_logs(&l).expect("our logs decode");
    assert_eq!((m.ignored, l.ignored), (0, 0), "nothing of ours is ignored");
    let mut batches = m.batches;
    assert_eq!(batches.len(), 1, "one resource in, one batch out");
    let (res, mut back) = batches.remove(0);
    assert_eq!(res, resource, "resource");
    for (r, o) in l.batches {
        assert_eq!(r, resource, "logs resource");
        back.merge(o);
    }

    // Statements: those with something to count travel.
    let mut want: Vec<_> = obs
        .statements
        .iter()
        .filter(|(_, s)| {
            s.calls > 0
                || !s.errors.is_empty()
                || s.temp_files > 0
                || s.rows.is_some()
                || s.slowest.is_some()
                || s.slowest_plan.is_some()
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(b.0));
    let mut got: Vec<_> = back.statements.iter().collect();
    got.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(want.iter().map(|s| s.0).collect::<Vec<_>>(), got.iter().map(|s| s.0).collect::<Vec<_>>(), "keys");
    for ((k, x), (_, y)) in want.iter().zip(&got) {
        assert_eq!((x.calls, x.total, x.min, x.max), (y.calls, y.total, y.min, y.max), "{k:?}");
        assert_eq!(x.hist.buckets().collect::<Vec<_>>(), y.hist.buckets().collect::<Vec<_>>(), "{k:?}");
        assert_eq!(
            (x.rows, &x.errors, x.temp_files, x.temp_bytes),
            (y.rows, &y.errors, y.temp_files, y.temp_bytes),
            "{k:?}"
        );
        assert_eq!((&x.slowest, &x.slowest_plan), (&y.slowest, &y.slowest_plan), "{k:?}");
    }
    let locks = |o: &Observations| {
        let mut v: Vec<_> = o
            .locks
            .iter()
            .filter(|(_, s)| s.waits > 0 || s.acquired > 0 || s.deadlocks > 0)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(locks(&back), locks(&obs), "locks");
    assert_eq!((back.overflow_calls, back.overflow_locks), (obs.overflow_calls, obs.overflow_locks));
    assert_eq!(back.unattributed_errors, obs.unattributed_errors);
    assert_eq!(
        (back.unattributed_temp_files, back.unattributed_temp_bytes),
        (obs.unattributed_temp_files, obs.unattributed_temp_bytes)
    );
    assert_eq!(back.classes, obs.classes, "classes");
    assert_eq!(back.input, obs.input, "input counters");
    assert_eq!(back.agent, obs.agent, "agent health");
});
