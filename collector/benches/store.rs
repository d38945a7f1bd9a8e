//! The collector's serial step: `Windows::ingest` of one decoded agent
//! batch into a warm store.
//!
//! Every batch is merged by one thread holding the store's lock
//! (`serve.rs`), so this step caps what the collector takes in, however
//! many cores decode. `benches/ingest.rs` measures the whole collector;
//! this isolates the part that does not parallelise, on a machine too
//! noisy to see a few percent in the whole.
//!
//! The store holds 10,000 statements × 8 nodes (the ingest bench's
//! scenario a) before timing starts. Each timed batch is 500 statements
//! an agent would send, encoded by the agent's encoder and decoded by the
//! collector's in-place decoder, merged into rows the store has (the
//! steady state: agents report the same statements interval after
//! interval). Throughput is in histogram data points.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use querywatch_collector::window::{WindowConfig, Windows};
use querywatch_wire::otlp::{ResourceInfo, decode_metrics_bytes, encode_metrics};
use querywatch_wire::{Observations, StatementKey};

const PER_BATCH: usize = 500;
const BATCHES: usize = 20; // 10,000 statements
const NODES: usize = 8;
/// The batches' interval ends here (ms); ingest runs at this `now`.
const NOW_MS: i64 = 1_700_000_010_000;

/// One agent batch, `b` of [`BATCHES`], as the collector decodes it.
fn batch(b: usize, node: &str) -> (ResourceInfo, Observations) {
    // Latencies from a fixed sequence (no RNG: every run merges the same data).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (b as u64);
    let mut unit = || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        #[allow(clippy::cast_precision_loss)]
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        u
    };
    let mut obs = Observations::default();
    for i in 0..PER_BATCH {
        let text = format!("SELECT c{i}, d FROM table_{b}_{i} WHERE id = $1 AND k = $2");
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        let base = 100.0 * 10f64.powf(4.0 * unit()); // µs, 100 µs – 1 s
        for _ in 0..1 + (i % 6) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let us = (base * 10f64.powf(unit())) as u64;
            s.record_call(Duration::from_micros(us), Some(NOW_MS - 9_000), &text);
        }
    }
    let resource = ResourceInfo { node: node.into(), ..ResourceInfo::default() };
    #[allow(clippy::cast_sign_loss)] // a positive constant
    let interval = ((NOW_MS - 10_000) as u64 * 1_000_000, NOW_MS as u64 * 1_000_000);
    let bytes = encode_metrics(&obs, &resource, interval).encode_to_vec();
    let mut parts = decode_metrics_bytes(&bytes).expect("our own encoding decodes");
    let (_, decoded) = parts.pop().expect("one resource");
    decoded.expect("valid").batches.pop().expect("one batch")
}

fn ingest(c: &mut Criterion) {
    let batches: Vec<(ResourceInfo, Observations)> = (0..NODES)
        .flat_map(|n| (0..BATCHES).map(move |b| (b, format!("db-{n}"))))
        .map(|(b, node)| batch(b, &node))
        .collect();
    let mut store = Windows::new(WindowConfig::default());
    for (resource, obs) in &batches {
        store.ingest(resource, obs.clone(), NOW_MS);
    }
    let mut next = 0;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(PER_BATCH as u64));
    group.bench_function("ingest_warm", |bench| {
        bench.iter_batched(
            || {
                next = (next + 1) % batches.len();
                batches[next].clone()
            },
            |(resource, obs)| store.ingest(black_box(&resource), obs, NOW_MS),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
