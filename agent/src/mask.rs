//! The masking lexer: the privacy boundary of querywatch.
//!
//! [`mask`] turns raw SQL text, as PostgreSQL logged it, into its literal-free
//! *shape*. The shape is both what may leave the node (see "Privacy line" in
//! `DESIGN.md`) and the cache key in front of the collector's pg_query
//! fingerprinting, so it is deterministic, canonical and idempotent:
//! `mask(mask(x)) == mask(x)`, and two statements that differ only in
//! whitespace, comments or literal values mask to the same bytes.
//!
//! # Why a hand-written lexer
//! This runs on every logged statement, on the agent's hot path, and must cope
//! with text no parser accepts (truncated log lines, garbage, dialects). So it
//! is a single forward scan over bytes with bounded look-ahead: no regex, no
//! parser, no allocation except the growth of `out`. Token boundaries always
//! fall on ASCII bytes (non-ASCII bytes only occur inside identifiers, strings
//! and comments, which are consumed whole), so slicing the `&str` is sound.
//!
//! # What is a literal
//! Replaced by a placeholder:
//! - numbers: `42`, `4.2`, `.5`, `5.`, `1.5e-3`, `1_000`, `0x1F`, `0o17`,
//!   `0b101`; a unary minus belongs to the number when the previous token is
//!   an operator, `(`, `[`, `,`, `;`, `:`, an expression-introducing keyword
//!   (`SELECT`, `WHERE`, `AND`, `THEN`, …) or the start of the text;
//! - strings: `'…'` (`''` doubled), `E'…'` (backslash escapes), `U&'…'` with
//!   an optional `UESCAPE '…'`, `N'…'`, `B'…'`, `X'…'`, dollar quotes
//!   `$$…$$` / `$tag$…$tag$`, and adjacent string continuation (`'a'` followed
//!   by whitespace/comments and `'b'` is one literal);
//! - bind parameters already in the text (`$5`): renumbered like literals,
//!   which is what makes masking idempotent.
//!
//! Not literals, kept verbatim: identifiers (also with digits, `orders_2024`,
//! `t1.c2`), quoted identifiers (`"Weird ""name"" 42"`), keywords in their
//! original case, `NULL`/`TRUE`/`FALSE`/`DEFAULT` (keywords), operators and
//! `::` casts. Typed literals keep their type: `date '2024-01-01'` →
//! `date $1`, `'x'::text` → `$1::text`, `interval '1 day'` → `interval $1` —
//! the same way pg_stat_statements shows them. Type modifiers are numbers too
//! (`varchar(20)` → `varchar($1)`), which loses nothing private.
//!
//! # Output conventions
//! - Placeholders are `$1`, `$2`, … in order of appearance in the *output*.
//! - Lists of only literals/placeholders collapse to their first element:
//!   `IN (1, 2, 3)` → `IN ($1)`, `ARRAY[1, 2]` → `ARRAY[$1]`, and `VALUES`
//!   rows made of literals/`NULL`/`TRUE`/`FALSE`/`DEFAULT` collapse to the
//!   first row. Any other element (column, call, subquery) keeps the list.
//! - Comments are dropped. Spacing is recomputed from the tokens alone: one
//!   space between tokens, except none after `(` `[` `.` `::` `:`, none before
//!   `)` `]` `,` `;` `.` `::` `:` `[`, and none between a function name and
//!   its `(` (a word followed by `(` is a call unless it is one of a few
//!   keywords such as `IN`, `VALUES`, `AND`, `EXISTS`, `OVER`).
//! - Trailing `;` are dropped.
//! - Anything unterminated (string, dollar quote, quoted identifier) swallows
//!   the rest of the text: a truncated string becomes one placeholder, a
//!   truncated quoted identifier and a truncated comment are dropped.
//!
//! # Backslashes
//! Strings are read with `standard_conforming_strings = on` (the default since
//! PostgreSQL 9.1): in a plain `'…'` a backslash is an ordinary character.
//! A text with a backslash is also read with backslash escapes (the setting
//! off, or text written for it, logged when it fails); where the two
//! readings disagree, everything from the first plain string holding a
//! backslash on is one placeholder, so neither reading's words come out.

use memchr::{memchr, memchr2, memmem};

/// Masks every literal of `sql`, appending the literal-free shape to `out`.
pub fn mask_into(sql: &str, out: &mut String) {
    let start = out.len();
    mask_pass(sql, out, false);
    if !sql.contains('\\') {
        return;
    }
    // A backslash in a plain `'…'` string ends it or escapes its quote
    // depending on standard_conforming_strings, which the log does not
    // say: the server may have run the text (`= off`), or refused it and
    // logged it as an error (`= on`, `'O\'Brien'`). Read both ways; where
    // the readings agree, either is safe.
    let standard = out[start..].to_owned();
    out.truncate(start);
    mask_pass(sql, out, true);
    if out[start..] == standard {
        return;
    }
    // They disagree about where a string ends, so what one reads as words
    // the other reads as a value (`'It\'s me', 'Dublin\'s'` leaks `me`
    // one way; `replace(p, '\', '/') = 'C:/Users/…` leaks the path the
    // other way). Even a reading that leaves a string open proves nothing:
    // the text may be cut (`max_entry_bytes`, `track_activity_query_size`).
    // Nothing from the first plain string with a backslash (up to which
    // both read alike) may come out as words: it becomes one placeholder,
    // as an unterminated string does. A standard string that merely ends in
    // a backslash (`'C:\dir\', 1`) pays with a coarser shape.
    out.truncate(start);
    let cut = first_backslash_string(sql.as_bytes());
    let mut head = String::with_capacity(cut + 1);
    head.push_str(&sql[..cut]);
    head.push('\'');
    mask_pass(&head, out, false);
}

/// Where the first plain `'…'` string holding a backslash starts, read
/// with standard strings: up to there both readings lex alike (0 if there
/// is none, which cannot be when they disagree: then everything is folded).
fn first_backslash_string(bytes: &[u8]) -> usize {
    let mut lx = Lexer::new(bytes, false);
    loop {
        let tok = lx.next();
        match tok.kind {
            Kind::Eof => return 0,
            Kind::Str if bytes[tok.start] == b'\'' && bytes[tok.start..tok.end].contains(&b'\\') => return tok.start,
            _ => {}
        }
    }
}

/// One masking pass; `plain_backslash` reads `'…'` with backslash escapes.
fn mask_pass(sql: &str, out: &mut String, plain_backslash: bool) {
    let bytes = sql.as_bytes();
    let mut lx = Lexer::new(bytes, plain_backslash);
    let mut em = Emitter { sql, out, placeholders: 0, prev: Tok::START, semicolons: 0, run_start: 0, run_end: NO_RUN };
    loop {
        let prev = lx.prev();
        let tok = lx.next();
        if tok.kind == Kind::Eof {
            break;
        }
        // Cheap guard first: only `IN (`, `VALUES (` and `ARRAY[` can collapse.
        let opens = matches!(tok.kind, Kind::LParen | Kind::LBrack) && prev.kind == Kind::Word;
        if let Some(collapse) = opens.then(|| try_collapse(bytes, prev, tok, &lx)).flatten() {
            em.emit(tok);
            // The probe ran the very same lexer from the same state, so
            // re-lexing `first` tokens renders exactly the first element/row.
            for _ in 0..collapse.first {
                em.emit(lx.next());
            }
            if let Some(close) = collapse.close {
                em.emit(close);
            }
            lx = collapse.after;
            continue;
        }
        em.emit(tok);
    }
    // Semicolons still pending now are trailing ones: dropped on purpose.
    em.flush_run();
}

/// Convenience wrapper over [`mask_into`].
pub fn mask(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    mask_into(sql, &mut out);
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Before the first token.
    Start,
    /// End of text (or the rest of it was dropped).
    Eof,
    /// Numeric literal (possibly with its unary minus).
    Num,
    /// Any kind of string literal, including dollar quotes.
    Str,
    /// Bind parameter `$n`; also the output kind of every placeholder.
    Param,
    /// Identifier or keyword.
    Word,
    /// Quoted identifier, `"…"` or `U&"…"`.
    QIdent,
    Op,
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Semi,
    Dot,
    /// `::`
    Cast,
    Colon,
    /// Any other single ASCII byte (`{`, `\`, a lone `$`, control bytes…).
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Tok {
    const START: Tok = Tok { kind: Kind::Start, start: 0, end: 0 };
}

/// Byte classes, one table lookup per byte on the hot paths.
const IDENT_CONT: u8 = 1;
/// Starts an identifier that cannot be a prefixed literal (`E'`, `U&'`, …).
const PLAIN_IDENT_START: u8 = 2;
/// Whitespace, or `-` / `/` which may open a comment.
const MAYBE_TRIVIA: u8 = 4;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let start = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
        let mut c = 0;
        if start || b.is_ascii_digit() || b == b'$' {
            c |= IDENT_CONT;
        }
        if start && !matches!(b, b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' | b'u' | b'U') {
            c |= PLAIN_IDENT_START;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'-' | b'/') {
            c |= MAYBE_TRIVIA;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    CLASS[usize::from(b)] & IDENT_CONT != 0
}

/// End of the identifier characters from `j`.
///
/// Eight bytes at a time, branch-free inside a block: identifiers are short
/// and of random length, so a byte loop mispredicts its exit on nearly every
/// identifier.
#[inline]
fn ident_end(s: &[u8], mut j: usize) -> usize {
    while j < s.len() && is_ident_cont(s[j]) {
        j += 1;
    }
    j
}

/// Dollar-quote tag characters: identifier characters without `$`.
fn is_tag_cont(b: u8) -> bool {
    b != b'$' && is_ident_cont(b)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_digit(b: Option<&u8>) -> bool {
    b.is_some_and(u8::is_ascii_digit)
}

/// PostgreSQL's operator characters.
fn is_op(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

/// Keywords after which a `-` is unary and before which `(` is not a call.
/// Kept short on purpose: a column that happens to share a name with one of
/// these would lose a binary minus, so only words that are (nearly) never
/// column names are listed.
fn is_keyword(w: &[u8]) -> bool {
    const MAX: usize = 12;
    if w.len() < 2 || w.len() > MAX {
        return false;
    }
    let mut buf = [0u8; MAX];
    for (d, s) in buf.iter_mut().zip(w) {
        *d = s.to_ascii_uppercase();
    }
    matches!(
        &buf[..w.len()],
        b"AND"
            | b"AS"
            | b"BETWEEN"
            | b"BY"
            | b"CASE"
            | b"CHECK"
            | b"CONFLICT"
            | b"DEFAULT"
            | b"DISTINCT"
            | b"ELSE"
            | b"ESCAPE"
            | b"EXCEPT"
            | b"EXISTS"
            | b"FILTER"
            | b"FROM"
            | b"GROUP"
            | b"HAVING"
            | b"IN"
            | b"INTERSECT"
            | b"INTO"
            | b"JOIN"
            | b"LATERAL"
            | b"LIMIT"
            | b"MATERIALIZED"
            | b"NOT"
            | b"OFFSET"
            | b"ON"
            | b"OR"
            | b"OVER"
            | b"RETURN"
            | b"RETURNING"
            | b"SELECT"
            | b"SET"
            | b"THEN"
            | b"UNION"
            | b"UNIQUE"
            | b"USING"
            | b"VALUES"
            | b"WHEN"
            | b"WHERE"
            | b"WITH"
    )
}

/// Whether `sql` ends inside a string, quoted identifier or comment: a
/// statement cut inside a literal. auto_explain prints the statement and
/// then the plan with no marker in between, so a line of a multi-line
/// literal that looks like a plan node (`Refund (actual …`) can only be
/// told from the plan's root by whether the text before it is closed.
/// With `plain_backslash`, a backslash escapes in every string, as with
/// `standard_conforming_strings = off` (see [`mask_into`]).
pub(crate) fn ends_open(sql: &str, plain_backslash: bool) -> bool {
    let s = sql.as_bytes();
    let mut i = 0;
    while i < s.len() {
        let after_ident = i > 0 && is_ident_cont(s[i - 1]);
        i = match (s[i], s.get(i + 1)) {
            (b'\'', _) => {
                // E'…' escapes with backslashes; a standard string does not.
                let e = after_ident && matches!(s[i - 1], b'e' | b'E') && (i < 2 || !is_ident_cont(s[i - 2]));
                match closed_quote(s, i + 1, e || plain_backslash) {
                    Some(end) => end,
                    None => return true,
                }
            }
            (b'"', _) => match qident_end(s, i + 1) {
                Some(end) => end,
                None => return true,
            },
            (b'-', Some(b'-')) => match memchr2(b'\n', b'\r', &s[i + 2..]) {
                Some(r) => i + 3 + r,
                None => return true,
            },
            (b'/', Some(b'*')) => {
                let end = block_comment_end(s, i + 2);
                if end == s.len() && !s.ends_with(b"*/") {
                    return true;
                }
                end
            }
            (b'$', _) if !after_ident => match dollar(s, i) {
                (Kind::Str, end) if end == s.len() && !closes_dollar(s, i) => return true,
                (_, end) => end,
            },
            _ => i + 1,
        };
    }
    false
}

/// The end of a quoted body starting at `i`, if it is closed.
fn closed_quote(s: &[u8], mut i: usize, backslash: bool) -> Option<usize> {
    loop {
        match *s.get(i)? {
            b'\\' if backslash => i += 2,
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Whether the dollar quote opening at `start` has its closing tag.
fn closes_dollar(s: &[u8], start: usize) -> bool {
    let Some(len) = s[start + 1..].iter().position(|&b| b == b'$') else { return false };
    let tag = &s[start..start + len + 2];
    memmem::find(&s[start + tag.len()..], tag).is_some()
}

/// Skips whitespace and comments from `i`; returns the next significant
/// offset, or `s.len()` (an unterminated comment runs to the end).
fn skip_trivia(s: &[u8], mut i: usize) -> usize {
    loop {
        while i < s.len() && is_ws(s[i]) {
            i += 1;
        }
        match (s.get(i), s.get(i + 1)) {
            (Some(b'-'), Some(b'-')) => match memchr2(b'\n', b'\r', &s[i + 2..]) {
                Some(r) => i += 2 + r + 1,
                None => return s.len(),
            },
            (Some(b'/'), Some(b'*')) => i = block_comment_end(s, i + 2),
            _ => return i,
        }
    }
}

/// End of a `/* … */` comment whose opener ends at `i`; nests like PostgreSQL.
fn block_comment_end(s: &[u8], mut i: usize) -> usize {
    let mut depth = 1usize;
    loop {
        let Some(r) = memchr2(b'/', b'*', &s[i..]) else {
            return s.len();
        };
        let p = i + r;
        match (s[p], s.get(p + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i = p + 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i = p + 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i = p + 1,
        }
    }
}

/// End of a quoted body starting at `i` (just after the opening `'`):
/// `''` continues, with `backslash` a `\` escapes the next byte.
fn quoted_end(s: &[u8], mut i: usize, backslash: bool) -> usize {
    loop {
        let Some(rest) = s.get(i..) else {
            return s.len();
        };
        let found = if backslash { memchr2(b'\'', b'\\', rest) } else { memchr(b'\'', rest) };
        let Some(r) = found else {
            return s.len();
        };
        let p = i + r;
        if s[p] == b'\\' || s.get(p + 1) == Some(&b'\'') {
            i = p + 2;
        } else {
            return p + 1;
        }
    }
}

/// A string literal whose body starts at `body`, plus its continuations
/// (`'a'` whitespace `'b'`), plus a `UESCAPE '…'` clause for `U&` strings.
fn string_lit(s: &[u8], body: usize, backslash: bool, unicode: bool) -> usize {
    let mut end = quoted_end(s, body, backslash);
    loop {
        // PostgreSQL wants a newline in between; we merge on any whitespace
        // so that the output does not depend on the layout.
        let j = skip_trivia(s, end);
        if s.get(j) == Some(&b'\'') {
            // A continuation is lexed in the mode of the string it continues.
            end = quoted_end(s, j + 1, backslash);
        } else {
            break;
        }
    }
    if unicode {
        let j = skip_trivia(s, end);
        let kw = s.get(j..j + 7);
        if kw.is_some_and(|k| k.eq_ignore_ascii_case(b"UESCAPE")) && !s.get(j + 7).is_some_and(|&b| is_ident_cont(b)) {
            let k = skip_trivia(s, j + 7);
            if s.get(k) == Some(&b'\'') {
                end = quoted_end(s, k + 1, false);
            }
        }
    }
    end
}

/// End of a quoted identifier whose body starts at `i`; `None` when it is
/// unterminated.
fn qident_end(s: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let p = i + memchr(b'"', s.get(i..)?)?;
        if s.get(p + 1) == Some(&b'"') {
            i = p + 2;
        } else {
            return Some(p + 1);
        }
    }
}

/// Digits with PostgreSQL 16 underscores (`1_000`): a `_` must sit between
/// two digits.
#[inline(always)]
fn digits_end(s: &[u8], mut j: usize, digit: fn(&u8) -> bool) -> usize {
    let start = j;
    loop {
        while s.get(j).is_some_and(digit) {
            j += 1;
        }
        let underscore = j > start && s.get(j) == Some(&b'_') && s.get(j + 1).is_some_and(digit);
        if !underscore {
            return j;
        }
        j += 2;
    }
}

/// End of a number starting at `i` (a digit, or `.` followed by a digit).
/// Trailing junk (`123abc`) is left for the next token.
fn number_end(s: &[u8], i: usize) -> usize {
    if s[i] == b'0' {
        let digit: Option<fn(&u8) -> bool> = match s.get(i + 1).map(|b| b | 0x20) {
            Some(b'x') => Some(u8::is_ascii_hexdigit),
            Some(b'o') => Some(|b| matches!(b, b'0'..=b'7')),
            Some(b'b') => Some(|b| matches!(b, b'0' | b'1')),
            _ => None,
        };
        if let Some(digit) = digit {
            // `0x_1F` is valid too.
            let first = match s.get(i + 2) {
                Some(b'_') => i + 3,
                _ => i + 2,
            };
            if s.get(first).is_some_and(digit) {
                return digits_end(s, first, digit);
            }
        }
    }
    let dec: fn(&u8) -> bool = u8::is_ascii_digit;
    let mut j = digits_end(s, i, dec);
    // `1..2` is integer, `..`, integer (as in PostgreSQL).
    if s.get(j) == Some(&b'.') && s.get(j + 1) != Some(&b'.') {
        j = digits_end(s, j + 1, dec);
    }
    if matches!(s.get(j), Some(b'e' | b'E')) {
        let k = if matches!(s.get(j + 1), Some(b'+' | b'-')) { j + 2 } else { j + 1 };
        if is_digit(s.get(k)) {
            j = digits_end(s, k, dec);
        }
    }
    j
}

/// The token stream, with whitespace and comments skipped. `Copy` so that
/// list collapsing can look ahead with a clone that behaves identically.
///
/// The previous token is kept as loose fields rather than an `Option<Tok>`:
/// copying the enum-tagged struct on every token cost half the run time in
/// store-forwarding stalls.
#[derive(Clone, Copy)]
struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
    prev_kind: Kind,
    prev_start: usize,
    prev_end: usize,
    /// Read plain `'…'` strings with backslash escapes (see [`mask_into`]).
    plain_backslash: bool,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8], plain_backslash: bool) -> Self {
        Lexer { s, pos: 0, prev_kind: Kind::Start, prev_start: 0, prev_end: 0, plain_backslash }
    }

    fn prev(&self) -> Tok {
        Tok { kind: self.prev_kind, start: self.prev_start, end: self.prev_end }
    }

    /// The next token; `Eof` at the end, and forever after.
    ///
    /// Forced inline (with `lex` and `Emitter::emit`): in one loop body LLVM
    /// threads the emitter's tests on the token kind into the lexer's arms
    /// instead of re-branching on it per token, which measured ~1.5x faster.
    #[inline(always)]
    fn next(&mut self) -> Tok {
        let s = self.s;
        let mut start = self.pos;
        // Most gaps are one space; only call out for anything longer.
        if s.get(start) == Some(&b' ') {
            start += 1;
        }
        if s.get(start).is_some_and(|&b| CLASS[usize::from(b)] & MAYBE_TRIVIA != 0) {
            start = skip_trivia(s, start);
        }
        let (kind, start, end) = match self.lex(start) {
            Some((kind, end)) => (kind, start, end),
            // End of text, or something unterminated that we drop.
            None => (Kind::Eof, self.s.len(), self.s.len()),
        };
        self.pos = end;
        self.prev_kind = kind;
        self.prev_start = start;
        self.prev_end = end;
        Tok { kind, start, end }
    }

    /// [`Lexer::next`] for the look-ahead, where `?` reads best.
    fn next_some(&mut self) -> Option<Tok> {
        let t = self.next();
        (t.kind != Kind::Eof).then_some(t)
    }

    #[inline(always)]
    fn lex(&self, start: usize) -> Option<(Kind, usize)> {
        let s = self.s;
        let b = *s.get(start)?;
        // Identifiers are most tokens: test them before the jump table.
        if CLASS[usize::from(b)] & PLAIN_IDENT_START != 0 {
            return Some((Kind::Word, ident_end(s, start + 1)));
        }
        let one = start + 1;
        Some(match b {
            b'\'' => (Kind::Str, string_lit(s, one, self.plain_backslash, false)),
            b'"' => (Kind::QIdent, qident_end(s, one)?),
            b'0'..=b'9' => (Kind::Num, number_end(s, start)),
            b'.' if is_digit(s.get(one)) => (Kind::Num, number_end(s, start)),
            b'.' => (Kind::Dot, one),
            b'$' => dollar(s, start),
            b'(' => (Kind::LParen, one),
            b')' => (Kind::RParen, one),
            b'[' => (Kind::LBrack, one),
            b']' => (Kind::RBrack, one),
            b',' => (Kind::Comma, one),
            b';' => (Kind::Semi, one),
            b':' if s.get(one) == Some(&b':') => (Kind::Cast, start + 2),
            b':' => (Kind::Colon, one),
            _ if is_op(b) => self.op(start),
            _ if is_ident_start(b) => word(s, start)?,
            _ => (Kind::Other, one),
        })
    }

    /// An operator run, cut the way PostgreSQL cuts it; a lone `-` in unary
    /// position followed by a number becomes part of that number.
    fn op(&self, start: usize) -> (Kind, usize) {
        let s = self.s;
        // The first byte cannot open a comment: skip_trivia ran before.
        let mut j = start + 1;
        while j < s.len() && is_op(s[j]) {
            let next = s.get(j + 1);
            if (s[j] == b'-' && next == Some(&b'-')) || (s[j] == b'/' && next == Some(&b'*')) {
                break;
            }
            j += 1;
        }
        // `=-5` is `=` then `-5`: PostgreSQL strips trailing `+`/`-` from a
        // multi-byte operator unless it contains one of these characters.
        let special = |c: &u8| matches!(c, b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?');
        if j - start > 1 && !s[start..j].iter().any(special) {
            while j - start > 1 && matches!(s[j - 1], b'+' | b'-') {
                j -= 1;
            }
        }
        if j - start == 1 && s[start] == b'-' && self.unary_position() {
            let k = skip_trivia(s, j);
            let number = match s.get(k) {
                Some(b) if b.is_ascii_digit() => true,
                Some(b'.') => is_digit(s.get(k + 1)),
                _ => false,
            };
            if number {
                return (Kind::Num, number_end(s, k));
            }
        }
        (Kind::Op, j)
    }

    fn unary_position(&self) -> bool {
        match self.prev_kind {
            Kind::Start | Kind::Op | Kind::LParen | Kind::LBrack | Kind::Comma | Kind::Semi | Kind::Colon => true,
            Kind::Word => is_keyword(&self.s[self.prev_start..self.prev_end]),
            _ => false,
        }
    }
}

/// `$n` parameter, dollar-quoted string, or a lone `$`.
fn dollar(s: &[u8], start: usize) -> (Kind, usize) {
    let mut j = start + 1;
    if is_digit(s.get(j)) {
        while is_digit(s.get(j)) {
            j += 1;
        }
        return (Kind::Param, j);
    }
    // A tag does not start with a digit (checked above).
    while s.get(j).is_some_and(|&b| is_tag_cont(b)) {
        j += 1;
    }
    if s.get(j) != Some(&b'$') {
        return (Kind::Other, start + 1);
    }
    let tag = &s[start..=j];
    let body = j + 1;
    let end = match memmem::find(&s[body..], tag) {
        Some(r) => body + r + tag.len(),
        None => s.len(),
    };
    (Kind::Str, end)
}

/// A word: identifier/keyword, or one of the prefixed literals `E'…'`,
/// `B'…'`, `X'…'`, `N'…'`, `U&'…'`, or the quoted identifier `U&"…"`.
fn word(s: &[u8], start: usize) -> Option<(Kind, usize)> {
    // `| 0x20` lower-cases ASCII letters; only letters can match below.
    let lower = s[start] | 0x20;
    match (lower, s.get(start + 1)) {
        (b'e', Some(b'\'')) => return Some((Kind::Str, string_lit(s, start + 2, true, false))),
        (b'b' | b'x' | b'n', Some(b'\'')) => {
            return Some((Kind::Str, string_lit(s, start + 2, false, false)));
        }
        (b'u', Some(b'&')) => match s.get(start + 2) {
            Some(b'\'') => return Some((Kind::Str, string_lit(s, start + 3, false, true))),
            Some(b'"') => return Some((Kind::QIdent, qident_end(s, start + 3)?)),
            _ => {}
        },
        _ => {}
    }
    Some((Kind::Word, ident_end(s, start + 1)))
}

/// A list that collapses to its first element.
struct Collapse<'a> {
    /// Tokens after the opener that render the first element/row.
    first: usize,
    /// The list's own closer, emitted after the first element (IN/ARRAY).
    close: Option<Tok>,
    /// Lexer positioned after the whole list.
    after: Lexer<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ListMode {
    /// `IN (…)` or `ARRAY[…]`: elements up to the closer.
    Elems(Kind),
    /// `VALUES (…), (…)`: rows.
    Values,
}

/// Whether `open` (just returned by `lx`) starts a collapsible list.
fn try_collapse<'a>(s: &[u8], prev: Tok, open: Tok, lx: &Lexer<'a>) -> Option<Collapse<'a>> {
    if prev.kind != Kind::Word {
        return None;
    }
    let w = &s[prev.start..prev.end];
    let mode = match open.kind {
        Kind::LParen if w.eq_ignore_ascii_case(b"IN") => ListMode::Elems(Kind::RParen),
        Kind::LParen if w.eq_ignore_ascii_case(b"VALUES") => ListMode::Values,
        Kind::LBrack if w.eq_ignore_ascii_case(b"ARRAY") => ListMode::Elems(Kind::RBrack),
        _ => return None,
    };
    let mut l = *lx;
    match mode {
        ListMode::Elems(closer) => {
            let (first, mut t) = scan_elem(&mut l, false)?;
            loop {
                if t.kind == closer {
                    return Some(Collapse { first, close: Some(t), after: l });
                }
                if t.kind != Kind::Comma {
                    return None;
                }
                t = scan_elem(&mut l, false)?.1;
            }
        }
        ListMode::Values => {
            let first = scan_row(&mut l)?;
            loop {
                let save = l;
                if !l.next_some().is_some_and(|t| t.kind == Kind::Comma) {
                    return Some(Collapse { first, close: None, after: save });
                }
                if !l.next_some().is_some_and(|t| t.kind == Kind::LParen) {
                    return None;
                }
                scan_row(&mut l)?;
            }
        }
    }
}

/// One VALUES row after its `(`: literal elements and the `)`. Returns the
/// token count.
fn scan_row(l: &mut Lexer<'_>) -> Option<usize> {
    let (mut n, mut t) = scan_elem(l, true)?;
    loop {
        n += 1;
        match t.kind {
            Kind::RParen => return Some(n),
            Kind::Comma => {
                let (m, next) = scan_elem(l, true)?;
                n += m;
                t = next;
            }
            _ => return None,
        }
    }
}

/// One literal-like list element: a literal or parameter, or a typed literal
/// (`date '…'`), or with `keywords` one of NULL/TRUE/FALSE/DEFAULT; then any
/// `::type` / `::type[]` casts. Returns its token count and the token after
/// it, which the caller needs anyway (peeking and rewinding would lex every
/// separator twice).
fn scan_elem(l: &mut Lexer<'_>, keywords: bool) -> Option<(usize, Tok)> {
    let t = l.next_some()?;
    let mut n = 1;
    match t.kind {
        Kind::Num | Kind::Str | Kind::Param => {}
        Kind::Word => {
            let w = &l.s[t.start..t.end];
            let kw = [&b"NULL"[..], b"TRUE", b"FALSE", b"DEFAULT"].iter().any(|k| w.eq_ignore_ascii_case(k));
            if !(keywords && kw) {
                let lit = l.next();
                // A number counts here too, although `date 5` is no typed
                // literal: masking turns it into `$n`, and `word $n` must be
                // judged the same before and after, or `IN (x 1, 2)` masks to
                // `IN (x $1, $2)` and that again to `IN (x $1)`: masking would
                // not be idempotent (found by the `mask` fuzz target).
                if !matches!(lit.kind, Kind::Num | Kind::Str | Kind::Param) {
                    return None;
                }
                n = 2;
            }
        }
        _ => return None,
    }
    let mut after = l.next();
    while after.kind == Kind::Cast {
        if !matches!(l.next().kind, Kind::Word | Kind::QIdent) {
            return None;
        }
        n += 2;
        after = l.next();
        while after.kind == Kind::LBrack {
            if l.next().kind != Kind::RBrack {
                return None;
            }
            n += 2;
            after = l.next();
        }
    }
    Some((n, after))
}

/// `run_end` value when no verbatim run is open.
const NO_RUN: usize = usize::MAX;

/// Writes tokens with canonical spacing and numbered placeholders.
///
/// Verbatim tokens are not copied one by one: while the source between two
/// tokens is already exactly the canonical gap (nothing, or one space), the
/// tokens extend a run `run_start..run_end` of the source that is copied in
/// one go. Per-token copies were the largest cost of the first version.
struct Emitter<'s, 'o> {
    sql: &'s str,
    out: &'o mut String,
    placeholders: usize,
    /// Previous emitted token, with literals already turned into `Param`.
    prev: Tok,
    /// `;` are held back so that trailing ones can be dropped.
    semicolons: usize,
    run_start: usize,
    /// End of the open run, which is always `prev.end`; or [`NO_RUN`].
    run_end: usize,
}

impl Emitter<'_, '_> {
    #[inline(always)]
    fn emit(&mut self, t: Tok) {
        match t.kind {
            Kind::Semi => {
                self.semicolons += 1;
                return;
            }
            Kind::Eof => return,
            _ => {}
        }
        if self.semicolons > 0 {
            self.flush_run();
            for _ in 0..self.semicolons {
                self.out.push(';');
            }
            self.semicolons = 0;
            self.prev.kind = Kind::Semi;
        }
        let kind = match t.kind {
            Kind::Num | Kind::Str | Kind::Param => Kind::Param,
            k => k,
        };
        let space = self.spaced(kind);
        // Non-short-circuit `&`/`|`: this is decided per token and is hard
        // to predict, so it is computed rather than branched on.
        let contiguous = self.run_end != NO_RUN
            && if space {
                t.start == self.run_end + 1 && self.sql.as_bytes()[self.run_end] == b' '
            } else {
                t.start == self.run_end
            };
        if kind == Kind::Param {
            self.flush_run();
            if space {
                self.out.push(' ');
            }
            self.placeholders += 1;
            push_placeholder(self.out, self.placeholders);
        } else {
            if contiguous {
                self.run_end = t.end;
            } else {
                self.flush_run();
                if space {
                    self.out.push(' ');
                }
                self.run_start = t.start;
                self.run_end = t.end;
            }
        }
        self.prev.kind = kind;
        self.prev.start = t.start;
        self.prev.end = t.end;
    }

    fn flush_run(&mut self) {
        if self.run_end != NO_RUN {
            let (a, b) = (self.run_start, self.run_end);
            // Boundaries are on ASCII bytes by construction; `get` keeps a
            // bug here from ever becoming a panic.
            debug_assert!(self.sql.is_char_boundary(a) && self.sql.is_char_boundary(b));
            self.out.push_str(self.sql.get(a..b).unwrap_or_default());
            self.run_end = NO_RUN;
        }
    }

    /// The spacing rule. It only looks at token kinds (and keyword-ness), so
    /// the output cannot depend on the input's layout; it never glues two
    /// tokens that would lex differently once glued.
    #[inline]
    fn spaced(&self, next: Kind) -> bool {
        let rule = SPACING[self.prev.kind as usize][next as usize];
        if rule == Space::IfKeyword {
            is_keyword(&self.sql.as_bytes()[self.prev.start..self.prev.end])
        } else {
            rule == Space::Yes
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Space {
    No,
    Yes,
    /// `word (`: a call unless the word is a keyword.
    IfKeyword,
}

const KINDS: usize = Kind::Other as usize + 1;

const fn space_rule(prev: Kind, next: Kind) -> Space {
    use Kind::*;
    match (prev, next) {
        (Start, _) => Space::No,
        // `:` `:` glued would read back as one `::` cast, and `:` `::` as
        // `::` `:`: re-masking would see other tokens (and collapse a list
        // it kept the first time). Found by the `mask` fuzz target.
        (Colon, Colon | Cast) => Space::Yes,
        (LParen | LBrack | Dot | Cast | Colon, _) => Space::No,
        (_, RParen | RBrack | Comma | Semi | Dot | Cast | Colon) => Space::No,
        (QIdent, LParen) => Space::No,
        (Word, LParen) => Space::IfKeyword,
        (Word | QIdent | RParen | RBrack | Param, LBrack) => Space::No,
        _ => Space::Yes,
    }
}

static SPACING: [[Space; KINDS]; KINDS] = {
    use Kind::*;
    let all = [
        Start, Eof, Num, Str, Param, Word, QIdent, Op, LParen, RParen, LBrack, RBrack, Comma, Semi, Dot, Cast, Colon,
        Other,
    ];
    let mut t = [[Space::Yes; KINDS]; KINDS];
    let mut i = 0;
    while i < KINDS {
        let mut j = 0;
        while j < KINDS {
            t[all[i] as usize][all[j] as usize] = space_rule(all[i], all[j]);
            j += 1;
        }
        i += 1;
    }
    t
};

fn push_placeholder(out: &mut String, n: usize) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push('$');
    for &d in &buf[i..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(cases: &[(&str, &str)]) {
        for &(input, want) in cases {
            let got = mask(input);
            assert_eq!(got, want, "mask({input:?})");
            assert_eq!(mask(&got), got, "not idempotent on {input:?}");
        }
    }

    #[test]
    fn backslash_escaped_quotes_do_not_let_words_out() {
        // Real PostgreSQL 15 log text of a statement written for
        // standard_conforming_strings = off (it fails, and is logged).
        check(&[
            ("SELECT * FROM acc WHERE note = 'O\\'Brien hunter2';", "SELECT * FROM acc WHERE note = $1"),
            // Either reading may be the server's: from the first string
            // they disagree on, one placeholder.
            ("UPDATE t SET a = 'x\\'y', b = 'it''s' WHERE c = 'z\\\\'", "UPDATE t SET a = $1"),
            // Balanced both ways, but words one way: `me`, `Dublin`.
            ("UPDATE users SET bio = 'It\\'s me', city = 'Dublin\\'s fair'", "UPDATE users SET bio = $1"),
            // Balanced only with escapes, the path words that way.
            (
                "SELECT * FROM docs WHERE replace(path, '\\', '/') = 'C:/Users/alice/salary.xlsx",
                "SELECT * FROM docs WHERE replace(path, $1",
            ),
            // Balanced read the standard way, open read with escapes, and
            // maybe cut (max_entry_bytes): no word of either comes out.
            ("INSERT INTO t VALUES ('O\\'Brien', 'hunter2'), ('x", "INSERT INTO t VALUES ($1"),
            // Where both readings agree, nothing is folded.
            (
                "SELECT a FROM t WHERE x ~ '\\d+' AND c = 'z\\\\' AND d = 1",
                "SELECT a FROM t WHERE x ~ $1 AND c = $2 AND d = $3",
            ),
        ]);
        // Balanced only when read with escapes.
        let got = mask("SELECT 'a\\' zqzq 'b");
        assert!(!got.contains("zqzq"), "{got}");
        assert_eq!(mask(&got), got);
        // A plain backslash in a standard string stays standard.
        check(&[("SELECT 'C:\\dir' AS p", "SELECT $1 AS p")]);
    }

    #[test]
    fn numbers() {
        check(&[
            ("SELECT 1", "SELECT $1"),
            ("SELECT 1.5, .5, 5., 1.5e-3, 1E10, 2e+7", "SELECT $1, $2, $3, $4, $5, $6"),
            ("SELECT 1_000_000, 0x1F, 0X_ff, 0o17, 0b101", "SELECT $1, $2, $3, $4, $5"),
            ("SELECT 123abc", "SELECT $1 abc"),
            ("SELECT 1e", "SELECT $1 e"),
            ("SELECT a[1..2]", "SELECT a[$1.$2]"),
            ("SELECT a[1:2], a[:-1]", "SELECT a[$1:$2], a[:$3]"),
            ("LIMIT 10 OFFSET 20", "LIMIT $1 OFFSET $2"),
        ]);
    }

    #[test]
    fn unary_minus() {
        check(&[
            ("SELECT -1", "SELECT $1"),
            ("-1", "$1"),
            ("x = -5", "x = $1"),
            ("x=-5", "x = $1"),
            ("x = - 5", "x = $1"),
            ("x = -/* c */5", "x = $1"),
            ("a-1", "a - $1"),
            ("a - 1", "a - $1"),
            ("a - -1", "a - $1"),
            ("x = - -1", "x = - $1"),
            ("f(-1, -2.5)", "f($1, $2)"),
            ("WHERE -1 < x AND -2 > y", "WHERE $1 < x AND $2 > y"),
            ("CASE WHEN a THEN -1 ELSE -2 END - 3", "CASE WHEN a THEN $1 ELSE $2 END - $3"),
            ("(a) - 1", "(a) - $1"),
            ("'a' - 1", "$1 - $2"),
            ("x = -$1", "x = - $1"),
            ("x = -a", "x = - a"),
            ("x @- 5", "x @- $1"),
        ]);
    }

    #[test]
    fn strings() {
        check(&[
            ("SELECT 'it''s'", "SELECT $1"),
            (r"SELECT E'it\'s'", "SELECT $1"),
            (r"SELECT e'a\\', 1", "SELECT $1, $2"),
            // `E'a\\'` ends the string; `b'` opens an (unterminated) bit string.
            (r"SELECT E'a\\'b'", "SELECT $1 $2"),
            // A standard string ending in a backslash: read with escapes it
            // runs on, so from it on all is one placeholder.
            (r"SELECT 'a\', 1", "SELECT $1"),
            ("SELECT N'abc', B'0101', b'1', X'1F', x'1f'", "SELECT $1, $2, $3, $4, $5"),
            (r"SELECT U&'d\0061t\+000061'", "SELECT $1"),
            (r"SELECT U&'d!0061t!+000061' UESCAPE '!' || x", "SELECT $1 || x"),
            (r"SELECT u&'x' uescape '!'", "SELECT $1"),
            ("SELECT '--', '/*', 'a\nb', ';', '\"'", "SELECT $1, $2, $3, $4, $5"),
            ("SELECT 'a'\n'b'", "SELECT $1"),
            ("SELECT 'a' 'b', 'c'", "SELECT $1, $2"),
            ("SELECT 'a' -- c\n  'b' /* d */ 'c' AS x", "SELECT $1 AS x"),
            ("SELECT E'a'\n'\\'b'", "SELECT $1"),
            ("SELECT 'a' E'b'", "SELECT $1 $2"),
            ("SELECT ''", "SELECT $1"),
            ("SELECT 'żółw', 'x'", "SELECT $1, $2"),
            ("SELECT e", "SELECT e"),
            ("SELECT U & 'x'", "SELECT U & $1"),
        ]);
    }

    #[test]
    fn dollar_quotes_and_params() {
        check(&[
            ("SELECT $$abc$$", "SELECT $1"),
            ("SELECT $fn$ select 'x' $fn$", "SELECT $1"),
            ("SELECT $a$ $b$ $a$, 1", "SELECT $1, $2"),
            ("SELECT $a$x$a$$b$y$b$", "SELECT $1 $2"),
            ("SELECT $é$ x $é$", "SELECT $1"),
            ("WHERE a = $5 AND b = $2 AND c = 7", "WHERE a = $1 AND b = $2 AND c = $3"),
            ("SELECT ($1).field, $2.x", "SELECT ($1).field, $2.x"),
            ("SELECT $1abc", "SELECT $1 abc"),
            ("SELECT a$b$c, $ x", "SELECT a$b$c, $ x"),
            ("SELECT $abc", "SELECT $ abc"),
            ("SELECT $1::int[]", "SELECT $1::int[]"),
        ]);
    }

    #[test]
    fn identifiers_and_keywords() {
        check(&[
            ("select * from orders_2024_01 o where o.c2 = t1.c2", "select * from orders_2024_01 o where o.c2 = t1.c2"),
            ("SELECT \"Weird \"\"name\"\" 42\" FROM \"café\"", "SELECT \"Weird \"\"name\"\" 42\" FROM \"café\""),
            ("SELECT żółw FROM żółwie WHERE x = 'żółw'", "SELECT żółw FROM żółwie WHERE x = $1"),
            (r#"SELECT U&"d\0061t" FROM t"#, r#"SELECT U&"d\0061t" FROM t"#),
            (
                "SELECT a, NULL, TRUE, false, DEFAULT FROM t WHERE b IS NULL",
                "SELECT a, NULL, TRUE, false, DEFAULT FROM t WHERE b IS NULL",
            ),
            ("SELECT a->>'k', b #> '{a,b}', c @> '[1]'", "SELECT a ->> $1, b #> $2, c @> $3"),
        ]);
    }

    #[test]
    fn typed_literals_and_casts() {
        check(&[
            ("SELECT date '2024-01-01'", "SELECT date $1"),
            ("SELECT interval '1 day'", "SELECT interval $1"),
            ("SELECT 'x'::text, 1 :: int", "SELECT $1::text, $2::int"),
            ("SELECT CAST('1' AS numeric(10, 2))", "SELECT CAST($1 AS numeric($2, $3))"),
            ("SELECT timestamp with time zone '2024-01-01'", "SELECT timestamp with time zone $1"),
        ]);
    }

    #[test]
    fn comments_and_whitespace() {
        check(&[
            ("SELECT /* a /* b */ c */ 1", "SELECT $1"),
            ("SELECT 1 -- trailing 'x'", "SELECT $1"),
            ("/* lead */ SELECT\t1\r\n", "SELECT $1"),
            ("SELECT 1 /* unterminated 'secret'", "SELECT $1"),
            ("SELECT 1 /* a /* b */ still open", "SELECT $1"),
            ("SELECT a/*x*/b", "SELECT a b"),
            ("SELECT a+--x\n1", "SELECT a + $1"),
            ("SELECT  a ,b FROM t WHERE ( a=1 )", "SELECT a, b FROM t WHERE (a = $1)"),
            ("SELECT count ( * ) FROM t", "SELECT count(*) FROM t"),
            ("SELECT x :: int, t . c, a [ 1 ]", "SELECT x::int, t.c, a[$1]"),
            ("SELECT 1;", "SELECT $1"),
            ("SELECT 1 ; ;\n -- done\n", "SELECT $1"),
            ("SELECT 1; SELECT 2;", "SELECT $1; SELECT $2"),
            ("SELECT 1;;SELECT 2", "SELECT $1;; SELECT $2"),
            ("WHERE EXISTS(SELECT 1) AND(a OR b)", "WHERE EXISTS (SELECT $1) AND (a OR b)"),
            ("   ", ""),
            ("", ""),
        ]);
    }

    #[test]
    fn lists() {
        check(&[
            ("WHERE id IN (1, 2, 3)", "WHERE id IN ($1)"),
            ("WHERE id IN ($1,$2)", "WHERE id IN ($1)"),
            ("WHERE id in(1)", "WHERE id in ($1)"),
            ("WHERE id NOT IN ('a', 'b') AND x = 5", "WHERE id NOT IN ($1) AND x = $2"),
            ("WHERE id IN (-1, 2.5, 'x' 'y', $3)", "WHERE id IN ($1)"),
            ("WHERE id IN ('a'::text, 'b'::text)", "WHERE id IN ($1::text)"),
            ("WHERE d IN (date '2024-01-01', date '2024-01-02')", "WHERE d IN (date $1)"),
            ("WHERE id IN (a, 1)", "WHERE id IN (a, $1)"),
            ("WHERE id IN (1, NULL)", "WHERE id IN ($1, NULL)"),
            ("WHERE id IN (SELECT id FROM t WHERE x = 1)", "WHERE id IN (SELECT id FROM t WHERE x = $1)"),
            ("WHERE id IN (1, 2", "WHERE id IN ($1, $2"),
            ("WHERE id IN ()", "WHERE id IN ()"),
            ("WHERE id = ANY(ARRAY[1,2,3])", "WHERE id = ANY(ARRAY[$1])"),
            ("WHERE id = ANY (array[1, x])", "WHERE id = ANY(array[$1, x])"),
            ("SELECT ARRAY[[1,2],[3,4]]", "SELECT ARRAY[[$1, $2], [$3, $4]]"),
            ("WHERE (a, b) IN ((1, 2), (3, 4))", "WHERE (a, b) IN (($1, $2), ($3, $4))"),
        ]);
        let long = format!(
            "SELECT * FROM t WHERE id IN ({})",
            (0..1000).map(|i| (i * 7919).to_string()).collect::<Vec<_>>().join(", ")
        );
        assert_eq!(mask(&long), "SELECT * FROM t WHERE id IN ($1)");
    }

    #[test]
    fn values() {
        check(&[
            ("INSERT INTO t (a, b) VALUES (1,'a'), (2,'b')", "INSERT INTO t(a, b) VALUES ($1, $2)"),
            (
                "INSERT INTO t VALUES (1, DEFAULT, NULL), (2, 'x', true) ON CONFLICT (a) DO NOTHING",
                "INSERT INTO t VALUES ($1, DEFAULT, NULL) ON CONFLICT (a) DO NOTHING",
            ),
            ("INSERT INTO t VALUES ($1, $2), ($3, $4) RETURNING id", "INSERT INTO t VALUES ($1, $2) RETURNING id"),
            ("INSERT INTO t VALUES (1, now()), (2, now())", "INSERT INTO t VALUES ($1, now()), ($2, now())"),
            ("INSERT INTO t VALUES (1), (2), (a)", "INSERT INTO t VALUES ($1), ($2), (a)"),
            ("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS v(n, s)", "SELECT * FROM (VALUES ($1, $2)) AS v(n, s)"),
            ("INSERT INTO t VALUES (1), (2", "INSERT INTO t VALUES ($1), ($2"),
            ("INSERT INTO t VALUES (1),", "INSERT INTO t VALUES ($1),"),
            ("INSERT INTO t DEFAULT VALUES", "INSERT INTO t DEFAULT VALUES"),
        ]);
        let rows = (0..200).map(|i| format!("({i}, 'name {i}', {i}.5, NULL)")).collect::<Vec<_>>().join(",\n");
        assert_eq!(
            mask(&format!("INSERT INTO t (a, b, c, d) VALUES {rows};")),
            "INSERT INTO t(a, b, c, d) VALUES ($1, $2, $3, NULL)"
        );
    }

    #[test]
    fn unterminated() {
        check(&[
            ("WHERE x = 'abc", "WHERE x = $1"),
            ("WHERE x = 'it''s", "WHERE x = $1"),
            (r"WHERE x = E'abc\", "WHERE x = $1"),
            ("WHERE x = 'a' 'b", "WHERE x = $1"),
            ("WHERE x = $$abc", "WHERE x = $1"),
            ("WHERE x = $tag$abc $tag", "WHERE x = $1"),
            ("SELECT \"abc", "SELECT"),
            ("SELECT U&'x' UESCAPE '", "SELECT $1"),
            ("SELECT 1 /* abc", "SELECT $1"),
            ("SELECT 1 --", "SELECT $1"),
            ("SELECT $", "SELECT $"),
            ("SELECT '", "SELECT $1"),
        ]);
    }

    #[test]
    fn realistic() {
        check(&[
            (
                "UPDATE pgbench_accounts SET abalance = abalance + -4242 WHERE aid = 8675309;",
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            ),
            (
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 42, -17, CURRENT_TIMESTAMP);",
                "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
            ),
            (
                "SELECT o.id, sum(l.qty * l.price) FILTER (WHERE l.qty > 0)\n  FROM orders o\n  JOIN lines l ON l.order_id = o.id\n WHERE o.created_at >= now() - interval '7 days'\n   AND o.status = ANY('{paid,shipped}')\n GROUP BY 1 ORDER BY 2 DESC LIMIT 50",
                "SELECT o.id, sum(l.qty * l.price) FILTER (WHERE l.qty > $1) FROM orders o JOIN lines l ON l.order_id = o.id WHERE o.created_at >= now() - interval $2 AND o.status = ANY($3) GROUP BY $4 ORDER BY $5 DESC LIMIT $6",
            ),
        ]);
    }

    #[test]
    fn appends_to_out() {
        let mut out = String::from("prefix:");
        mask_into("SELECT 1", &mut out);
        assert_eq!(out, "prefix:SELECT $1");
    }

    /// Literal contents use only `Q`, `Z` and `7`, which appear nowhere else.
    const TRICKY: &str = "SELECT \"Wei\"\"rd\", E'QZ\\'Q', $t$ QZ 'Q' $t$, U&'Q\\0051' UESCAPE '!', x'7F', \
        -777.7e7, 'Q''Z'\n  'ZQ' /* c /* n */ 'Q' */ -- 'Q'\nFROM t WHERE a IN (777, 7777) \
        AND b = 'żQ' AND c = B'0111' AND d = $$Q$$ AND e = 'Q';";

    /// `got` minus its `$n` placeholders, whose digits are not leaks.
    fn without_placeholders(got: &str) -> String {
        let mut out = String::new();
        let mut digits_are_placeholder = false;
        for c in got.chars() {
            if c == '$' {
                digits_are_placeholder = true;
            } else if !(digits_are_placeholder && c.is_ascii_digit()) {
                digits_are_placeholder = false;
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn truncated_at_every_offset() {
        for end in 0..=TRICKY.len() {
            if !TRICKY.is_char_boundary(end) {
                continue;
            }
            let input = &TRICKY[..end];
            let got = mask(input);
            assert!(
                !without_placeholders(&got).contains(['Q', 'Z', '7', 'ż']),
                "literal leaked for {input:?}: {got:?}"
            );
            assert_eq!(mask(&got), got, "not idempotent for {input:?}");
        }
    }

    /// Found by the `mask` fuzz target: a word followed by a number in a
    /// VALUES row or IN list kept the list on the first pass and collapsed it
    /// on the second (where the number had become `$n`).
    #[test]
    fn fuzz_mask_word_then_number_in_list() {
        for input in [
            "INSERT INTO accounts \u{1}\0(id, balance) VALUES (0,\u{fffd} 100), (2, 100), (3, 100)",
            "SELECT 1 FROM t WHERE a IN (x 1, 2, 3)",
            "SELECT 1 FROM t WHERE a IN (NOT -1, 2)",
        ] {
            let once = mask(input);
            assert_eq!(mask(&once), once, "not idempotent for {input:?}");
        }
        assert_eq!(mask("VALUES (0, x 100), (2, 100)"), "VALUES ($1, x $2)");
    }

    /// Found by the `mask` fuzz target: `2: :k06` was written as
    /// `$1::k06`, which re-masks as a cast, so a VALUES list kept on the
    /// first pass collapsed on the second.
    #[test]
    fn fuzz_mask_colon_colon_glued_into_cast() {
        let crash = include_bytes!("../../tests/fixtures/fuzz/mask-colon-colon-glued-into-cast.bin");
        // The first byte is the fuzz target's mode byte.
        let crash = String::from_utf8_lossy(&crash[1..]);
        for input in [&*crash, "INSERT INTO t VALUES (2: :k06, 'c'), (14, 'd')", "SELECT a: ::int, b"] {
            let once = mask(input);
            assert_eq!(mask(&once), once, "not idempotent for {input:?}");
        }
        assert_eq!(
            mask("INSERT INTO t VALUES (2: :k06, 'c'), (14, 'd')"),
            "INSERT INTO t VALUES ($1: :k06, $2), ($3, $4)"
        );
    }

    #[test]
    fn garbage_does_not_panic() {
        for input in [
            "\0\u{1}\u{7f}{}\\",
            "''''",
            "\"\"\"",
            "$$$$$",
            "/*/",
            "*/",
            "U&",
            "U&'",
            "E'\\",
            "0x",
            "0x_",
            "1_",
            "._",
            "..",
            ":::",
            "?-|-",
            "-",
            "- -",
            "€",
            "$€$x$€$",
        ] {
            let got = mask(input);
            assert_eq!(mask(&got), got, "not idempotent for {input:?}");
        }
    }

    // ---- property tests -------------------------------------------------

    /// A slot in a generated statement: fixed text, or a literal whose value
    /// is chosen at render time (so one skeleton renders with many values).
    #[derive(Clone, Debug)]
    enum Skel {
        Fixed(&'static str),
        Ident(String),
        QIdent(String),
        Lit(u8),
        InList(Vec<u8>),
        Values(usize, Vec<u8>),
    }

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
        "-- zq 'q' \n",
        "/* zq /* 'q' */ */",
        "{",
    ];

    /// Fragments glued without separators, to provoke token fusion.
    const SOUP: &[&str] = &[
        " ", "\n", "'", "''", "\"", "$", "$$", "$a$", "$1", "E'", "e", "U&", "U&'", "UESCAPE", "b'", "X", "N", "--",
        "/*", "*/", "-", "+", "=", "<", "@", "!", "|", "/", "*", ".", ":", "::", ";", "(", ")", "[", "]", ",", "\\",
        "0", "1", "5.", ".5", "1e", "0x", "_", "x", "IN", "in", "VALUES", "ARRAY", "NULL", "DEFAULT", "SELECT", "AND",
        "date", "é", "{", "\t", "#",
    ];

    /// Whitespace/comment separators; every one starts with whitespace so
    /// that neighbouring slots never fuse into one token.
    const SEPS: &[&str] = &[" ", "\n", "\t", "  \r\n ", " /* zq */ ", "\n-- zq 'q'\n", " /**/\n"];

    const LIT_KINDS: u8 = 13;

    /// Renders literal kind `kind` with value `v`. Numbers are ≥ 100000
    /// (six or more digits: identifiers carry at most five), strings are
    /// bracketed by `z`/`q`, which no fixed text or identifier contains
    /// outside comments.
    fn render_lit(kind: u8, v: u64, out: &mut String) {
        let n = 100_000 + v % 900_000;
        let pieces = ["z", "q", "zq", " ", "--", "/*", ";", "\n", "\"", "é", "$", "''", "()"];
        let body = |out: &mut String, allow: &dyn Fn(&str) -> bool| {
            out.push_str("zq");
            let mut x = v;
            for _ in 0..(v % 5) {
                let p = pieces[(x % pieces.len() as u64) as usize];
                if allow(p) {
                    out.push_str(p);
                }
                x /= 7;
            }
            out.push_str("qz");
        };
        match kind % LIT_KINDS {
            0 => out.push_str(&n.to_string()),
            1 => out.push_str(&format!("{n}.{n}")),
            2 => out.push_str(&format!("{n}e-{}", v % 9)),
            3 => out.push_str(&format!(".{n}")),
            4 => out.push_str(&format!("{}_{n}", 100 + v % 900)),
            5 => {
                out.push('\'');
                body(out, &|_| true);
                out.push('\'');
            }
            6 => {
                out.push_str("E'");
                body(out, &|_| true);
                out.push_str(if v % 2 == 0 { "\\'\\\\zq'" } else { "'" });
            }
            7 => {
                let tag = ["", "fn", "a1"][(v % 3) as usize];
                out.push_str(&format!("${tag}$"));
                body(out, &|p| p != "$");
                out.push_str(&format!("${tag}$"));
            }
            8 => out.push_str("U&'zq\\0041'"),
            12 => out.push_str("U&'zq!0041' UESCAPE '!'"),
            9 => out.push_str(&format!("B'{:b}'", n)),
            10 => out.push_str(&format!("X'{:X}FEDCBA'", n)),
            _ => {
                out.push_str("N'");
                body(out, &|_| true);
                out.push('\'');
            }
        }
    }

    fn render(skel: &[(Skel, u64)], salt: u64) -> String {
        let mut out = String::new();
        let sep = |out: &mut String, i: u64| {
            out.push_str(SEPS[((i ^ salt).wrapping_mul(0x9E37_79B9) % SEPS.len() as u64) as usize]);
        };
        for (i, (s, seed)) in skel.iter().enumerate() {
            let v = seed.wrapping_mul(salt.wrapping_add(1)).wrapping_add(salt);
            match s {
                Skel::Fixed(t) => out.push_str(t),
                Skel::Ident(t) => out.push_str(t),
                Skel::QIdent(t) => out.push_str(&format!("\"{t}\"")),
                Skel::Lit(k) => render_lit(*k, v, &mut out),
                Skel::InList(kinds) => {
                    out.push_str("IN (");
                    for (j, k) in kinds.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                            sep(&mut out, j as u64);
                        }
                        render_lit(*k, v.wrapping_add(j as u64), &mut out);
                    }
                    out.push(')');
                }
                Skel::Values(rows, kinds) => {
                    out.push_str("VALUES");
                    for r in 0..*rows {
                        out.push_str(if r == 0 { " (" } else { ", (" });
                        for (j, k) in kinds.iter().enumerate() {
                            if j > 0 {
                                out.push_str(", ");
                            }
                            render_lit(*k, v.wrapping_add((r * 31 + j) as u64), &mut out);
                        }
                        out.push(')');
                    }
                }
            }
            sep(&mut out, i as u64);
        }
        out
    }

    fn skel_strategy() -> impl Strategy<Value = Vec<(Skel, u64)>> {
        let lit = 0..LIT_KINDS;
        let tok = prop_oneof![
            4 => proptest::sample::select(FIXED).prop_map(Skel::Fixed),
            2 => "[a-p_][a-p0-9_]{0,4}".prop_map(Skel::Ident),
            1 => "[a-p ]{0,4}".prop_map(Skel::QIdent),
            3 => lit.clone().prop_map(Skel::Lit),
            1 => proptest::collection::vec(lit.clone(), 1..6).prop_map(Skel::InList),
            1 => (1..4usize, proptest::collection::vec(lit, 1..4)).prop_map(|(r, k)| Skel::Values(r, k)),
        ];
        proptest::collection::vec((tok, any::<u64>()), 0..40)
    }

    /// No literal value may survive: no `z`/`q` (string bodies), no run of
    /// six digits (numbers), no `FEDC` (hex strings).
    fn leaks(out: &str) -> bool {
        let mut run = 0;
        for b in out.bytes() {
            run = if b.is_ascii_digit() { run + 1 } else { 0 };
            if run >= 6 {
                return true;
            }
        }
        out.contains(['z', 'q']) || out.contains("FEDC")
    }

    proptest! {
        #[test]
        fn idempotent_on_sqlish(skel in skel_strategy(), salt in any::<u64>()) {
            let once = mask(&render(&skel, salt));
            prop_assert_eq!(mask(&once), once);
        }

        #[test]
        fn idempotent_on_arbitrary(s in any::<String>()) {
            let once = mask(&s);
            prop_assert_eq!(mask(&once), once);
        }

        #[test]
        fn idempotent_on_sql_chars(s in "[a-eEuUxXbBnN0-9 '\"$&\\\\/*;:(),.\\[\\]\n=<>+!_-]{0,60}") {
            let once = mask(&s);
            prop_assert_eq!(mask(&once), once);
        }

        #[test]
        fn idempotent_on_fragment_soup(parts in proptest::collection::vec(proptest::sample::select(SOUP), 0..40)) {
            let once = mask(&parts.concat());
            prop_assert_eq!(mask(&once), once);
        }

        #[test]
        fn literal_values_do_not_matter(skel in skel_strategy(), a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(mask(&render(&skel, a)), mask(&render(&skel, b)));
        }

        #[test]
        fn no_literal_leaks(skel in skel_strategy(), salt in any::<u64>()) {
            let input = render(&skel, salt);
            let out = mask(&input);
            prop_assert!(!leaks(&out), "leak: {:?} -> {:?}", input, out);
        }
    }
}
