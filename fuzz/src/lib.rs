//! Helpers shared by the fuzz targets in `fuzz_targets/`: the invariants
//! each target checks, written once.
//!
//! - [`check_log`]: a log parser fed the same bytes whole and in chunks
//!   gives the same entries (the chunked contract of `agent::logparse`),
//!   keeps its unconsumed rest bounded, and what the aggregator makes of
//!   the entries is consistent (durations, counts, masked keys).
//! - [`assert_no_literal`]: masked SQL holds no string or number literal,
//!   an oracle that needs no knowledge of the input.
//! - [`Skeleton`]: SQL built from parts whose literals carry marker
//!   characters (`z`, `q`, six-digit numbers) that appear nowhere else, the
//!   approach of the property tests in `agent/src/mask.rs`, so "no literal of
//!   the input survives" is a substring check.
//!
//! Targets panic (via `assert!`) on a violated invariant: libFuzzer reports
//! a panic as a crash and saves the input.

use arbitrary::{Arbitrary, Unstructured};
use querywatch_agent::aggregate::{Aggregator, AggregatorConfig};
use querywatch_agent::logparse::{LogFormat, Parser, Prefix};
use querywatch_agent::mask::mask;
use querywatch_wire::names::OVERFLOW_TEXT;
use querywatch_wire::observations::Observations;

/// Entry cap for the chunk-invariance comparison: larger than any input
/// libFuzzer hands us, so truncation never depends on where chunks end.
const BIG_CAP: usize = 1 << 20;

/// Parses `log` whole, then again fed in chunks of `chunk` bytes the way the
/// agent's tailer feeds a growing file, and checks that both readings agree;
/// a third run with the small cap `small_cap` checks that the unconsumed
/// rest stays bounded (memory is bounded by the cap whatever the input).
/// Then aggregates the entries and checks the result.
pub fn check_log(format: LogFormat, prefix: Option<Prefix>, log: &[u8], chunk: usize, small_cap: usize) {
    let Ok(mut whole) = Parser::new(format, prefix.clone(), BIG_CAP) else { return };
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let mut entries = Vec::new();
    let consumed = whole.parse(log, true, &mut |e| {
        entries.push(format!("{e:?}"));
        agg.entry(&e);
    });
    assert_eq!(consumed, log.len(), "with eof the parser must consume everything");
    let obs = agg.finish(whole.stats());
    check_observations(&obs);

    // The tailer: append a chunk, parse without eof, keep the rest.
    let Ok(mut chunked) = Parser::new(format, prefix.clone(), BIG_CAP) else { return };
    let mut got = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in log.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let n = chunked.parse(&buf, false, &mut |e| got.push(format!("{e:?}")));
        assert!(n <= buf.len());
        buf.drain(..n);
    }
    let n = chunked.parse(&buf, true, &mut |e| got.push(format!("{e:?}")));
    assert_eq!(n, buf.len(), "with eof the parser must consume everything");
    assert_eq!(entries, got, "chunked parsing (chunk {chunk}) differs from whole-buffer parsing");
    assert_eq!(whole.stats(), chunked.stats(), "chunked parsing (chunk {chunk}) counts differently");

    // Small cap: the rest a caller must keep is bounded by the cap (plus the
    // read that has not been looked at yet), whatever the input.
    let Ok(mut small) = Parser::new(format, prefix, small_cap) else { return };
    let mut buf: Vec<u8> = Vec::new();
    for piece in log.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let n = small.parse(&buf, false, &mut |e| assert_small_entry(&e, small_cap));
        buf.drain(..n);
        assert!(
            buf.len() <= 2 * small_cap + chunk,
            "unconsumed rest {} exceeds cap {small_cap} + chunk {chunk}",
            buf.len()
        );
    }
    let n = small.parse(&buf, true, &mut |e| assert_small_entry(&e, small_cap));
    assert_eq!(n, buf.len());
}

/// No text field of an entry of a parser with cap `cap` is longer than the
/// cap. Per field: csvlog and jsonlog cut each field to the cap, so a whole
/// entry can hold several times the cap (stderr caps the entry as a whole).
fn assert_small_entry(e: &querywatch_agent::logparse::LogEntry<'_>, cap: usize) {
    let fields = [Some(&e.message), e.detail.as_ref(), e.hint.as_ref(), e.context.as_ref(), e.statement.as_ref()];
    for size in fields.into_iter().flatten().map(|s| s.len()) {
        // Invalid UTF-8 is replaced by U+FFFD (3 bytes for 1): allow for it.
        assert!(size <= 3 * cap, "entry field of {size} bytes with cap {cap}");
    }
}

/// What the aggregator produced is self-consistent: durations are finite and
/// non-negative (as seconds, the way they travel), min ≤ max ≤ total, the
/// histogram counts every call, and statement keys are masked text.
pub fn check_observations(obs: &Observations) {
    for (key, s) in &obs.statements {
        let secs = s.total.as_secs_f64();
        assert!(secs.is_finite() && secs >= 0.0, "total {secs}");
        if s.calls > 0 {
            let min = s.min.expect("a statement with calls has a min");
            assert!(min <= s.max && s.max <= s.total, "min {min:?} max {:?} total {:?}", s.max, s.total);
            assert!(s.max.as_secs_f64().is_finite());
            assert_eq!(s.hist.count(), s.calls, "histogram count");
            let slowest = s.slowest.as_ref().expect("a statement with calls has a slowest sample");
            assert_eq!(slowest.duration, s.max);
        }
        if key.text != OVERFLOW_TEXT {
            assert_eq!(mask(&key.text), key.text, "statement key is not masked text");
        }
    }
    for l in obs.locks.values() {
        assert!(l.max_wait.as_secs_f64().is_finite());
        assert!(l.acquired_wait.as_secs_f64().is_finite());
    }
}

/// Splits fuzz input into (seed byte, rest).
pub fn split_first(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, data),
    }
}

// ---- the masking oracle ------------------------------------------------------

/// Panics when masked SQL `out` still holds a literal: a `'` outside a quoted
/// identifier (a string or bit/hex/escape string survived), a dollar quote
/// (`$$` or `$tag$`), or a digit that starts a token (a number survived;
/// digits inside identifiers such as `t1` and in placeholders `$1` are not
/// literals). Comments never survive masking, so `--` and `/*` cannot hide
/// anything either.
pub fn assert_no_literal(input: &str, out: &str) {
    let b = out.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                // Quoted identifier: skip to its closing quote (`""` doubled).
                i += 1;
                loop {
                    match b.get(i) {
                        None => panic!("unterminated quoted identifier in output\ninput: {input:?}\noutput: {out:?}"),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'\'' => panic!("string literal survived masking\ninput: {input:?}\noutput: {out:?}"),
            b'$' => {
                // `$` followed by digits is a placeholder; a tag then `$` is a
                // dollar quote.
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j > i + 1 {
                    i = j;
                    continue;
                }
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
                    j += 1;
                }
                assert!(b.get(j) != Some(&b'$'), "dollar quote survived masking\ninput: {input:?}\noutput: {out:?}");
                i += 1;
            }
            b'0'..=b'9' => panic!("number survived masking at byte {i}\ninput: {input:?}\noutput: {out:?}"),
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                // An identifier or keyword, digits and `$` included.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
}

// ---- SQL skeletons with marked literals ------------------------------------

/// Fixed SQL text (keywords, operators, placeholders, comments without
/// marker characters).
const FIXED: &[&str] = &[
    "SELECT",
    "select",
    "FROM",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "VALUES",
    "ARRAY",
    "ANY",
    "AS",
    "date",
    "interval",
    "NULL",
    "DEFAULT",
    "TRUE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "LIMIT",
    "INSERT",
    "INTO",
    "UPDATE",
    "SET",
    "=",
    "<>",
    "<",
    ">=",
    "-",
    "+",
    "*",
    "/",
    "||",
    "->>",
    "::",
    ".",
    ",",
    "(",
    ")",
    "[",
    "]",
    ";",
    ":",
    "$1",
    "$7",
    "{",
    "-- c 'x' \n",
    "/* c /* 'x' */ */",
    "::text",
    "::int4",
    "E",
    "U&",
    "B",
    "X",
    "N",
];

/// Separators between parts: each starts with whitespace so neighbouring
/// parts never fuse into one token.
const SEPS: &[&str] = &[" ", "\n", "\t", "  \r\n ", " /* c */ ", "\n-- c 'x'\n", " /**/\n"];

/// Pieces of a string literal's body (no `z`/`q` here: those mark bodies).
const BODY: &[&str] = &[" ", "--", "/*", "*/", ";", "\n", "\"", "é", "$", "''", "()", "\\", "a", "1", "$$", "E'"];

/// One part of a generated statement.
#[derive(Arbitrary, Debug)]
enum Part {
    Fixed(u8),
    /// Identifier from `[a-p_][a-p0-9_]*`, at most five digits in a row.
    Ident(Vec<u8>),
    /// Quoted identifier from `[a-p ]`.
    QIdent(Vec<u8>),
    Lit(Lit),
    InList(Vec<Lit>),
    Values(u8, Vec<Lit>),
}

/// A literal kind with its value seed.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Lit {
    kind: u8,
    value: u32,
    body: u16,
}

/// A statement made of [`Part`]s and separators; every literal value in it
/// is marked (`z`/`q` in strings, ≥ six digits in numbers, `FEDC` in hex).
#[derive(Debug)]
pub struct Skeleton {
    parts: Vec<(Part, u8)>,
}

impl<'a> Arbitrary<'a> for Skeleton {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut parts = Vec::new();
        while parts.len() < 60 && !u.is_empty() {
            parts.push((Part::arbitrary(u)?, u8::arbitrary(u)?));
        }
        Ok(Skeleton { parts })
    }
}

impl Skeleton {
    /// Renders the statement; `salt` changes every literal value, nothing else.
    pub fn render(&self, salt: u32) -> String {
        let mut out = String::new();
        for (part, sep) in &self.parts {
            match part {
                Part::Fixed(i) => out.push_str(FIXED[usize::from(*i) % FIXED.len()]),
                Part::Ident(cs) => {
                    out.push(char::from(b'a' + cs.first().copied().unwrap_or(0) % 16));
                    let mut digits = 0;
                    for c in cs.iter().skip(1).take(8) {
                        let c = match c % 27 {
                            n @ 0..=15 => b'a' + n,
                            n @ 16..=25 => b'0' + (n - 16),
                            _ => b'_',
                        };
                        digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
                        if digits <= 5 {
                            out.push(char::from(c));
                        }
                    }
                }
                Part::QIdent(cs) => {
                    out.push('"');
                    out.extend(cs.iter().take(8).map(|c| if c % 17 == 16 { ' ' } else { char::from(b'a' + c % 17) }));
                    out.push('"');
                }
                Part::Lit(l) => render_lit(*l, salt, &mut out),
                Part::InList(ls) => {
                    out.push_str("IN (");
                    for (j, l) in ls.iter().take(6).enumerate() {
                        if j > 0 {
                            out.push_str(", ");
                        }
                        render_lit(*l, salt, &mut out);
                    }
                    out.push(')');
                }
                Part::Values(rows, ls) => {
                    out.push_str("VALUES");
                    for r in 0..=(rows % 3) {
                        out.push_str(if r == 0 { " (" } else { ", (" });
                        for (j, l) in ls.iter().take(4).enumerate() {
                            if j > 0 {
                                out.push_str(", ");
                            }
                            render_lit(*l, salt.wrapping_add(u32::from(r)), &mut out);
                        }
                        out.push(')');
                    }
                }
            }
            out.push_str(SEPS[usize::from(*sep) % SEPS.len()]);
        }
        out
    }
}

/// Renders literal `l`: numbers are ≥ 100000 (identifiers carry at most five
/// digits in a row), string bodies are bracketed by `zq` … `qz`.
fn render_lit(l: Lit, salt: u32, out: &mut String) {
    let v = u64::from(l.value ^ salt);
    let n = 100_000 + v % 900_000;
    let body = |out: &mut String, allow: &dyn Fn(&str) -> bool| {
        out.push_str("zq");
        let mut x = l.body;
        for _ in 0..(l.body % 5) {
            let p = BODY[usize::from(x) % BODY.len()];
            if allow(p) {
                out.push_str(p);
            }
            x /= 7;
        }
        out.push_str("qz");
    };
    match l.kind % 13 {
        0 => out.push_str(&n.to_string()),
        1 => out.push_str(&format!("{n}.{n}")),
        2 => out.push_str(&format!("{n}e-{}", v % 9)),
        3 => out.push_str(&format!(".{n}")),
        4 => out.push_str(&format!("{}_{n}", 100 + v % 900)),
        5 => {
            // A plain string: backslash is ordinary, and `''` is a quote.
            out.push('\'');
            body(out, &|p| p != "\\" && p != "E'");
            out.push('\'');
        }
        6 => {
            out.push_str("E'");
            body(out, &|p| p != "\\" && p != "E'");
            out.push_str(if v % 2 == 0 { "\\'\\\\zq'" } else { "'" });
        }
        7 => {
            let tag = ["", "fn", "a1"][(v % 3) as usize];
            out.push_str(&format!("${tag}$"));
            body(out, &|p| !p.contains('$'));
            out.push_str(&format!("${tag}$"));
        }
        8 => out.push_str("U&'zq\\0041'"),
        9 => out.push_str(&format!("B'{n:b}'")),
        10 => out.push_str(&format!("X'{n:X}FEDCBA'")),
        11 => out.push_str("U&'zq!0041' UESCAPE '!'"),
        _ => {
            out.push_str("N'");
            body(out, &|p| p != "\\" && p != "E'");
            out.push('\'');
        }
    }
}

/// Whether masked text `out` still shows a marked literal value: `z`/`q`
/// (string bodies), a run of six digits (numbers), `FEDC` (hex strings).
pub fn leaks_marked_literal(out: &str) -> bool {
    let mut run = 0;
    for b in out.bytes() {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 6 {
            return true;
        }
    }
    out.contains(['z', 'q']) || out.contains("FEDC")
}

/// Checks on what the collector's decoders accepted.
pub mod otlp {
    use querywatch_wire::observations::Observations;
    use querywatch_wire::otlp::{Decoded, ResourceInfo};

    const INTERVAL: (u64, u64) = (1_700_000_000_000_000_000, 1_700_000_010_000_000_000);

    /// Every accepted batch is coherent (durations finite as seconds, the
    /// histogram holds every call it claims) and survives being encoded and
    /// decoded again by `reencode` with the same number of calls per
    /// statement: what the collector accepts, an agent could have sent.
    pub fn check_decoded(
        decoded: &Decoded,
        reencode: impl Fn(&Observations, &ResourceInfo, (u64, u64)) -> Vec<Observations>,
    ) {
        for (res, obs) in &decoded.batches {
            for (k, s) in &obs.statements {
                assert!(s.total.as_secs_f64().is_finite(), "{k:?}");
                if s.calls > 0 {
                    assert_eq!(s.hist.count(), s.calls, "{k:?}: histogram count");
                }
            }
            let again = reencode(obs, res, INTERVAL);
            let calls = |o: &Observations| o.statements.values().map(|s| s.calls).sum::<u64>();
            assert_eq!(again.iter().map(calls).sum::<u64>(), calls(obs), "calls changed on re-encoding");
        }
    }
}
