//! auto_explain plans: the agent's split and masking (`agent/src/plan.rs`)
//! and the collector's analysis (`collector/src/plan.rs`).
//!
//! Seed byte % 4:
//! - 0: the rest as an auto_explain body: split, mask the query text and the
//!   plan; masking a masked plan changes nothing; the collector analyzes
//!   the masked plan (and the raw body) without panicking, with a finite,
//!   non-negative total time.
//! - 1 / 2: the rest as a text / JSON plan, the same checks.
//! - 3: a real fixture plan (tests/fixtures/plans) with its constants
//!   (`4711`, `47.11`, `'zqzq'`, the ones the unit tests name) replaced by
//!   values from the input: none of them may survive masking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querywatch_agent::mask::mask;
use querywatch_agent::plan::{PlanFormat, mask_plan, split_auto_explain};
use querywatch_collector::plan::analyze_plan;
use querywatch_fuzz::{assert_no_literal, split_first};

macro_rules! fixtures {
    ($($name:literal),*) => { &[$(include_str!(concat!("../../tests/fixtures/plans/", $name))),*] };
}

const FIXTURES: &[&str] = fixtures!(
    "auto_explain_text.log",
    "auto_explain_json.log",
    "expressions.txt",
    "expressions.json",
    "hash_batches.txt",
    "hash_batches.json",
    "hashagg_spill.txt",
    "hashagg_spill.json",
    "index_scan.txt",
    "index_scan.json",
    "nested_loop.txt",
    "nested_loop.json",
    "parallel_seqscan.txt",
    "parallel_seqscan.json",
    "partitioned.txt",
    "partitioned.json",
    "seqscan_filter.txt",
    "seqscan_filter.json",
    "sort_spill.txt",
    "sort_spill.json",
    "tid_scan.txt",
    "tid_scan.json"
);

fn format_of(plan: &str) -> PlanFormat {
    if plan.trim_start().starts_with(['{', '[']) { PlanFormat::Json } else { PlanFormat::Text }
}

/// Masks `plan` and checks the collector's reading of the result. With
/// `idempotent` (real plans), masking the masked plan must change nothing.
/// Not for arbitrary text: a line that only looks like a node header (a
/// broken `(cost=` group) is masked whole, deny-by-default, and may then no
/// longer read as a plan at all, which is the intended outcome.
fn mask_and_analyze(plan: &str, format: PlanFormat, idempotent: bool) -> Option<String> {
    let mut out = String::new();
    mask_plan(plan, format, &mut out).ok()?;
    if idempotent {
        let mut again = String::new();
        mask_plan(&out, format, &mut again).expect("a masked real plan must mask again");
        assert_eq!(again, out, "plan masking is not idempotent\ninput: {plan:?}");
    }
    if let Ok(insights) = analyze_plan(&out)
        && let Some(t) = insights.total_time_ms
    {
        assert!(t.is_finite() && t >= 0.0, "total time {t}");
    }
    Some(out)
}

/// `needle` as a token of its own (as agent/src/plan.rs's tests define a
/// surviving constant: part of a longer number is a statistic).
fn contains_token(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        let joins = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
        !joins(before) && !joins(after)
    })
}

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = split_first(data);
    match seed % 4 {
        0 => {
            let body = String::from_utf8_lossy(rest);
            let _ = analyze_plan(&body);
            if let Ok(split) = split_auto_explain(&body) {
                let q = mask(&split.query_text);
                assert_no_literal(&split.query_text, &q);
                mask_and_analyze(&split.plan, split.format, false);
            }
        }
        1 | 2 => {
            let plan = String::from_utf8_lossy(rest);
            let _ = analyze_plan(&plan);
            mask_and_analyze(&plan, if seed % 4 == 1 { PlanFormat::Text } else { PlanFormat::Json }, false);
        }
        _ => {
            let Some((&pick, value)) = rest.split_first() else { return };
            let fixture = FIXTURES[usize::from(pick) % FIXTURES.len()];
            let json = format_of(fixture) == PlanFormat::Json
                || fixture.lines().nth(1).is_some_and(|l| l.trim_start().starts_with('"'));
            // The string constant: `zq` + input bytes mapped into characters
            // that cannot end the literal (no quote, backslash; no newline
            // in JSON, where it would need escaping) + `qz`.
            let alphabet: &[u8] = if json {
                b"abcdefghijklmnop 0123456789-_;:()*/.,$"
            } else {
                b"abcdefghijklmnop 0123456789-_;:()*/.,$\n\""
            };
            let mut body = String::from("zq");
            body.extend(value.iter().take(40).map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()])));
            body.push_str("qz");
            // The numeric constant: eight digits starting with 98, which no
            // statistic of the fixtures has.
            let n =
                98_000_000 + value.iter().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b))) % 1_000_000;
            let number = n.to_string();
            let plan = fixture.replace("zqzq", &body).replace("47.11", &format!("{number}.5")).replace("4711", &number);
            let (query, plan_text, format) = match split_auto_explain(&plan) {
                Ok(s) => (Some(mask(&s.query_text)), s.plan.into_owned(), s.format),
                Err(_) => (None, plan.clone(), format_of(&plan)),
            };
            let out = mask_and_analyze(&plan_text, format, true).expect("a real plan masks");
            for text in [Some(&out), query.as_ref()].into_iter().flatten() {
                assert!(!text.contains("zq") && !text.contains("qz"), "string constant survived\n{plan}\n->\n{text}");
                assert!(!contains_token(text, &number), "numeric constant survived\n{plan}\n->\n{text}");
            }
        }
    }
});
