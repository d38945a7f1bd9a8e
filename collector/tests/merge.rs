//! Merge correctness across nodes: latency from three nodes, each sent as
//! the agent sends it (HDR → OTLP exponential histogram → protobuf bytes),
//! decoded and merged by the collector's window store, gives the same
//! percentiles (within 1%) as all the raw durations taken together.
#![allow(clippy::unwrap_used)]

use prost::Message;
use querywatch_collector::window::{WindowConfig, Windows};
use querywatch_wire::otlp::{ExportMetricsServiceRequest, ResourceInfo, decode_metrics, encode_metrics};
use querywatch_wire::{Observations, StatementKey};
use std::time::Duration;

const T0: i64 = 1_800_000_000_000;

/// A deterministic spread of durations (µs): a log-normal-ish mix per node
/// (xorshift, no external RNG), different on each node.
fn durations(node: u64, n: usize) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (node * 0x1234_5678);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = [200u64, 1_500, 40_000][usize::try_from(node % 3).unwrap()];
            base + x % (base * 20)
        })
        .collect()
}

fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn percentiles_merged_from_three_nodes_equal_those_of_all_durations() {
    let mut store = Windows::new(WindowConfig::default());
    let mut all = Vec::new();
    for node in 0..3u64 {
        let ds = durations(node, 20_000);
        let mut obs = Observations::default();
        let key =
            StatementKey { database: "shop".into(), user: "app".into(), text: "SELECT v FROM t WHERE k = $1".into() };
        let stats = obs.statements.entry(key).or_default();
        for d in &ds {
            stats.record_call(Duration::from_micros(*d), Some(T0), "SELECT v FROM t WHERE k = $1");
        }
        all.extend(ds);
        let resource = ResourceInfo { node: format!("n{node}"), ..ResourceInfo::default() };
        let interval = ((T0 as u64 - 10_000) * 1_000_000, T0 as u64 * 1_000_000);
        let bytes = encode_metrics(&obs, &resource, interval).encode_to_vec();
        let decoded = decode_metrics(&ExportMetricsServiceRequest::decode(bytes.as_slice()).unwrap()).unwrap();
        for (res, o) in decoded.batches {
            store.ingest(&res, o, T0);
        }
    }
    all.sort_unstable();
    let snap = store.snapshot(T0 - 3_600_000, T0 + 60_000, None);
    let rows = snap.by_fingerprint();
    assert_eq!(rows.len(), 1, "one fingerprint across three nodes");
    let merged = &rows[0].stats;
    assert_eq!(merged.calls, all.len() as u64);
    assert_eq!(rows[0].nodes.len(), 3);
    for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
        let want = exact_quantile(&all, q) as f64;
        let got = merged.quantile(q).as_micros() as f64;
        let err = (got - want).abs() / want;
        assert!(err <= 0.01, "p{}: merged {got} µs vs exact {want} µs ({:.3}% off)", q * 100.0, err * 100.0);
    }
    // min and max travel exactly (as f64 seconds: within a microsecond).
    assert!((merged.max.as_micros() as i64 - *all.last().unwrap() as i64).abs() <= 1);
    assert!((merged.min.unwrap().as_micros() as i64 - all[0] as i64).abs() <= 1);
}
