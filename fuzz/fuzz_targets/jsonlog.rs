//! jsonlog: arbitrary bytes as a jsonlog stream, whole and in chunks
//! (`check_log`). Input: one seed byte (chunk size and small cap), then the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querywatch_agent::logparse::LogFormat;
use querywatch_fuzz::{check_log, split_first};

fuzz_target!(|data: &[u8]| {
    let (seed, log) = split_first(data);
    // Tiny chunks (1–61 bytes) for one seed in two, reads of up to 3.9 KB
    // for the others: each chunk re-parses the open entry, so tiny ones are slow.
    let chunk = (usize::from(seed % 61) + 1) << if seed & 0x80 == 0 { 0 } else { 6 };
    let small_cap = 32 + usize::from(seed / 61) * 40;
    check_log(LogFormat::Json, None, log, chunk, small_cap);
});
