//! The collector's decoding of one agent request: protobuf bytes to
//! `Observations`, in place (`decode_metrics_bytes`, what ingest runs) and
//! through prost's owned message (`decode_metrics`, the path before).
//!
//! The request is built like `benches/ingest.rs` builds its load: 500
//! statements, each with 1–6 calls within one decade of a base latency
//! spread log-uniformly over 100 µs – 1 s, encoded by the agent's own
//! encoder (scale 8), plus the health points every request carries.
//! Throughput is in histogram data points.
//!
//! `gzip/*` times what happens to the same request around the decoder:
//! the agent's gzip of it and the collector's gunzip (flate2 with
//! whichever backend the workspace selects).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use querywatch_wire::otlp::{
    ExportMetricsServiceRequest, ResourceInfo, decode_metrics_bytes, decode_metrics_per_resource, encode_metrics,
};
use querywatch_wire::{Observations, StatementKey};

const STATEMENTS: usize = 500;

/// A small deterministic generator (xorshift), so every run decodes the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn request() -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut obs = Observations::default();
    for i in 0..STATEMENTS {
        let text = format!("SELECT c{i}, d FROM table_{i} WHERE id = $1 AND k = $2");
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        let base = 100.0 * 10f64.powf(4.0 * rng.unit()); // µs, 100 µs – 1 s
        for _ in 0..=rng.next() % 6 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let us = (base * 10f64.powf(rng.unit())) as u64;
            s.record_call(Duration::from_micros(us), Some(1_700_000_001_000), &text);
        }
    }
    let resource = ResourceInfo { node: "db-1".into(), ..ResourceInfo::default() };
    let interval = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);
    encode_metrics(&obs, &resource, interval).encode_to_vec()
}

fn decode(c: &mut Criterion) {
    let bytes = request();
    let mut group = c.benchmark_group("decode_metrics");
    group.throughput(Throughput::Elements(STATEMENTS as u64));
    group.bench_function("in_place", |b| b.iter(|| decode_metrics_bytes(black_box(&bytes))));
    group.bench_function("prost", |b| {
        b.iter(|| {
            let req = ExportMetricsServiceRequest::decode(black_box(&bytes[..]));
            req.map(decode_metrics_per_resource)
        });
    });
    group.finish();
}

fn gzip(c: &mut Criterion) {
    use std::io::{Read, Write};
    let bytes = request();
    let compress = |raw: &[u8]| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(raw).and_then(|()| enc.finish())
    };
    let Ok(gz) = compress(&bytes) else { panic!("gzip into a Vec cannot fail") };
    let mut group = c.benchmark_group("gzip");
    group.throughput(Throughput::Elements(STATEMENTS as u64));
    group.bench_function("deflate", |b| b.iter(|| compress(black_box(&bytes))));
    group.bench_function("inflate", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(bytes.len());
            flate2::read::GzDecoder::new(black_box(&gz[..])).read_to_end(&mut out).map(|_| out)
        });
    });
    group.finish();
}

criterion_group!(benches, decode, gzip);
criterion_main!(benches);
