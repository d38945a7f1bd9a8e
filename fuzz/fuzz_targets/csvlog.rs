//! csvlog: arbitrary bytes as a csvlog stream, whole and in chunks
//! (`check_log`). Input: one seed byte (chunk size and small cap), then the log.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querywatch_agent::logparse::LogFormat;
use querywatch_fuzz::{check_log, split_first};

fuzz_target!(|data: &[u8]| {
    let (seed, log) = split_first(data);
    // Chunks of 16–976 bytes: the csv parser builds a new csv_core reader
    // (a DFA) on every call, which instrumented code makes slow enough that
    // 1-byte chunks ran at ~10 inputs/s. Tiny chunks are covered by the
    // stderr and jsonlog targets and by csvlog.rs's own chunking test.
    let chunk = (usize::from(seed % 61) + 1) * 16;
    let small_cap = 32 + usize::from(seed / 61) * 40;
    check_log(LogFormat::Csv, None, log, chunk, small_cap);
});
