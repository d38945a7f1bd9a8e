//! What `[export] query_text = "fingerprint"` costs an export interval:
//! `Withholder::apply` on one interval of 1,000 distinct statement shapes,
//!
//! - `withhold/first`: a fresh withholder, so pg_query fingerprints every
//!   shape (an agent's first interval, or shapes it has not seen);
//! - `withhold/cached`: the tokens cached (every later interval);
//!
//! beside `withhold/encode`: `encode_metrics` of the same interval, which
//! every interval does with or without withholding. Throughput is in shapes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use querywatch_agent::withhold::Withholder;
use querywatch_wire::otlp::{ResourceInfo, encode_metrics};
use querywatch_wire::{Observations, StatementKey};

const SHAPES: usize = 1_000;

/// Masked shapes of six kinds, as the agent's masker writes them.
fn interval() -> Observations {
    let mut obs = Observations::default();
    for i in 0..SHAPES {
        let t = format!("t{}", i % 50);
        let text = match i % 6 {
            0 => format!("SELECT c{i}, d FROM {t} WHERE id = $1"),
            1 => format!("SELECT c{i} FROM {t} WHERE k = $1 ORDER BY created_at DESC LIMIT $2"),
            2 => format!("UPDATE {t} SET c{i} = $1, updated_at = now() WHERE id = $2"),
            3 => format!("INSERT INTO {t} (id, c{i}, note) VALUES ($1, $2, $3)"),
            4 => format!("SELECT a.c{i}, count(*) FROM {t} a JOIN u ON u.id = a.u_id WHERE u.k = $1 GROUP BY a.c{i}"),
            _ => format!("DELETE FROM {t} WHERE c{i} = ANY($1)"),
        };
        let key = StatementKey { database: "shop".into(), user: "app".into(), text: text.clone() };
        let s = obs.statements.entry(key).or_default();
        for n in 1..=(i % 5 + 1) {
            s.record_call(Duration::from_micros(200 * n as u64), Some(1_700_000_001_000), &text);
        }
    }
    obs
}

fn bench_withhold(c: &mut Criterion) {
    let obs = interval();
    let mut group = c.benchmark_group("withhold");
    group.throughput(Throughput::Elements(SHAPES as u64));
    group.bench_function("first", |b| {
        b.iter_batched(
            || obs.clone(),
            |mut o| {
                Withholder::new(20_000).apply(&mut o);
                o
            },
            BatchSize::LargeInput,
        );
    });
    let mut warm = Withholder::new(20_000);
    warm.apply(&mut obs.clone());
    group.bench_function("cached", |b| {
        b.iter_batched(
            || obs.clone(),
            |mut o| {
                warm.apply(&mut o);
                o
            },
            BatchSize::LargeInput,
        );
    });
    assert_eq!(warm.parses(), SHAPES as u64, "the cached runs parsed again");
    let resource = ResourceInfo { node: "db-1".into(), ..ResourceInfo::default() };
    group.bench_function("encode", |b| b.iter(|| encode_metrics(black_box(&obs), &resource, (0, 10))));
    group.finish();
}

criterion_group!(benches, bench_withhold);
criterion_main!(benches);
