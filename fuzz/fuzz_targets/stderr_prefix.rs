//! stderr logs with an arbitrary `log_line_prefix`.
//!
//! Input: one seed byte (chunk size and small cap), the prefix up to the
//! first newline, then the log bytes. Invalid prefixes must be a clean
//! `Err`; valid ones go through `check_log` (chunk invariance, bounded
//! rest, aggregated durations and counts consistent, keys masked). The
//! heuristic prefix and prefix detection run on the same log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querywatch_agent::logparse::{LogFormat, Prefix, detect_prefix};
use querywatch_fuzz::{check_log, split_first};

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = split_first(data);
    let (prefix, log) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(prefix) = std::str::from_utf8(prefix) else { return };
    // Tiny chunks (1–61 bytes) for one seed in two, reads of up to 3.9 KB
    // for the others: each chunk re-parses the open entry, so tiny ones are slow.
    let chunk = (usize::from(seed % 61) + 1) << if seed & 0x80 == 0 { 0 } else { 6 };
    let small_cap = 32 + usize::from(seed / 61) * 40;
    match Prefix::compile(prefix) {
        Ok(p) => {
            // Matching a line against the prefix must not panic on any line.
            for line in log.split(|b| *b == b'\n') {
                let _ = p.matches(line);
            }
            check_log(LogFormat::Stderr, Some(p), log, chunk, small_cap);
        }
        Err(e) => {
            // A clear error, not a panic; its message must render.
            let _ = e.to_string();
        }
    }
    if seed % 4 == 0 {
        check_log(LogFormat::Stderr, Some(Prefix::heuristic()), log, chunk, small_cap);
        if let Some(p) = detect_prefix(log) {
            check_log(LogFormat::Stderr, Some(p), log, chunk, small_cap);
        }
    }
});
