//! Throughput of the masking lexer on realistic statements.
//!
//! `mask_into` reuses one output buffer, as the agent does, so the figures
//! measure the lexer and not the allocator.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use querywatch_agent::mask::mask_into;

fn statements() -> Vec<(&'static str, String)> {
    let pgbench_update = "UPDATE pgbench_accounts SET abalance = abalance + -4242 WHERE aid = 8675309;".to_owned();

    let mut insert =
        String::from("INSERT INTO order_lines (order_id, line_no, sku, qty, unit_price, note, created_at) VALUES ");
    let mut row = 0;
    while insert.len() < 2048 {
        if row > 0 {
            insert.push_str(",\n  ");
        }
        insert.push_str(&format!(
            "({}, {row}, 'SKU-{:05}', {}, {}.{:02}, 'gift wrap, it''s fragile', '2024-06-{:02} 12:34:56+00')",
            9_000_000 + row,
            row * 37 % 100_000,
            row % 7 + 1,
            row * 13 % 500,
            row % 100,
            row % 28 + 1,
        ));
        row += 1;
    }
    insert.push(';');

    let ids: Vec<String> = (0..400).map(|i| (1_000_003 + i * 7919).to_string()).collect();
    let in_list = format!(
        "SELECT c.id, c.email, c.created_at FROM customers c WHERE c.tenant_id = 42 AND c.id IN ({}) ORDER BY c.id",
        ids.join(", ")
    );

    let oltp_select = "SELECT o.id, o.status, sum(l.qty * l.unit_price) AS total\n  FROM orders o\n  JOIN order_lines l ON l.order_id = o.id\n WHERE o.customer_id = 4711\n   AND o.created_at >= now() - interval '30 days'\n   AND o.status <> 'cancelled' -- skip voided\n GROUP BY o.id, o.status\n ORDER BY o.created_at DESC\n LIMIT 20".to_owned();

    vec![
        ("pgbench_update", pgbench_update),
        ("oltp_select", oltp_select),
        ("insert_values_2k", insert),
        ("in_list_400", in_list),
    ]
}

fn bench_mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    let mut out = String::with_capacity(4096);
    for (name, sql) in statements() {
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                mask_into(black_box(&sql), &mut out);
                black_box(out.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_mask);
criterion_main!(benches);
