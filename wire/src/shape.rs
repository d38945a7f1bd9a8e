//! What can be told of a masked statement from its text alone, and the
//! token that stands in for the text when an agent withholds it.
//!
//! An agent with `[export] query_text = "fingerprint"` sends no statement
//! text at all (the "fingerprints only" switch of DESIGN.md's privacy
//! line). It fingerprints each masked shape itself, with the collector's
//! pg_query options, and sends a [`Withheld`] token where the text would
//! be: a SQL comment, so anything that shows `db.query.text` shows what
//! happened. The token carries the two things the collector would
//! otherwise read from the text: the fingerprint (with how it was
//! obtained) and whether the statement only reads ([`is_read_only`], for
//! cache candidates). Using the text field keeps every path that carries
//! a statement text (log and pg_stat_statements statistics, samples, lock
//! waiters and blockers, activity samples) working without a second key.

use std::fmt;

/// What an agent sends instead of a statement's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Withheld {
    /// The pg_query fingerprint of the masked shape (or the fallback hash
    /// of the masked text when pg_query could not parse it).
    pub fingerprint: u64,
    /// Whether pg_query parsed the shape (`false`: fallback hash).
    pub parsed: bool,
    /// [`is_read_only`] of the masked shape.
    pub read_only: bool,
}

const PREFIX: &str = "/* querywatch withheld fingerprint=";
const SUFFIX: &str = " */";

impl Withheld {
    /// The token for `text`, or `None` when `text` is not one. Strict: the
    /// exact form [`fmt::Display`] writes, so no masked statement is taken
    /// for a token by accident.
    pub fn parse(text: &str) -> Option<Withheld> {
        let rest = text.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        let (hex, rest) = rest.split_at_checked(16)?;
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let fingerprint = u64::from_str_radix(hex, 16).ok()?;
        let (parsed, rest) = match rest.strip_prefix(" method=parsed") {
            Some(rest) => (true, rest),
            None => (false, rest.strip_prefix(" method=fallback")?),
        };
        let read_only = match rest {
            " read_only=true" => true,
            " read_only=false" => false,
            _ => return None,
        };
        Some(Withheld { fingerprint, parsed, read_only })
    }

    /// Whether `text` is a token (cheap: the prefix only).
    pub fn is_token(text: &str) -> bool {
        text.starts_with(PREFIX)
    }
}

impl fmt::Display for Withheld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let method = if self.parsed { "parsed" } else { "fallback" };
        write!(f, "{PREFIX}{:016x} method={method} read_only={}{SUFFIX}", self.fingerprint, self.read_only)
    }
}

/// Function calls that write, lock, or give a different answer each time:
/// a statement calling one is never a cache candidate.
const NOT_CACHEABLE_CALLS: &[&str] = &[
    "NEXTVAL",
    "SETVAL",
    "CURRVAL",
    "LASTVAL",
    "SET_CONFIG",
    "PG_NOTIFY",
    "PG_SLEEP",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_XACT_LOCK",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_XACT_LOCK",
    "PG_ADVISORY_UNLOCK",
    "TXID_CURRENT",
    "PG_CURRENT_XACT_ID",
    "RANDOM",
    "GEN_RANDOM_UUID",
    "UUID_GENERATE_V4",
    "DBLINK",
    "DBLINK_EXEC",
    "LO_CREATE",
    "LO_IMPORT",
    "LO_UNLINK",
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
];

/// Whether a masked statement is a plain read, judged conservatively from
/// its words: it starts with SELECT (or WITH … and then only SELECTs),
/// takes no row locks (`FOR UPDATE/SHARE`), creates nothing (`SELECT
/// INTO`) and calls none of [`NOT_CACHEABLE_CALLS`]. A user function that
/// writes cannot be told from its name; such statements slip through, so
/// the finding is `info` and the action says to check.
///
/// A [`Withheld`] token stands for a statement the agent judged here
/// before it withheld the text, and answers what the agent found.
pub fn is_read_only(text: &str) -> bool {
    if let Some(w) = Withheld::parse(text) {
        return w.read_only;
    }
    let words = words(text);
    let first = words.first().map(|(w, _)| w.as_str());
    if !matches!(first, Some("SELECT" | "WITH")) {
        return false;
    }
    for (i, (w, called)) in words.iter().enumerate() {
        let next = words.get(i + 1).map(|(w, _)| w.as_str());
        match w.as_str() {
            "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "INTO" | "COPY" | "LOCK" | "TRUNCATE" => {
                // `FOR UPDATE` and `FOR NO KEY UPDATE` are row locks; an
                // UPDATE anywhere else is a data-modifying CTE: not a read.
                return false;
            }
            "FOR" if matches!(next, Some("SHARE" | "KEY" | "NO" | "UPDATE")) => return false,
            _ if *called && NOT_CACHEABLE_CALLS.contains(&w.as_str()) => return false,
            _ => {}
        }
    }
    true
}

/// Upper-cased words of a statement, each with whether a `(` follows it
/// (a call); quoted strings, quoted identifiers and comments skipped.
fn words(text: &str) -> Vec<(String, bool)> {
    let b = text.as_bytes();
    let mut out: Vec<(String, bool)> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += 1;
            }
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            let word = text[start..i].to_ascii_uppercase();
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            out.push((word, b.get(j) == Some(&b'(')));
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_written() {
        for w in [
            Withheld { fingerprint: 0, parsed: true, read_only: true },
            Withheld { fingerprint: u64::MAX, parsed: false, read_only: false },
            Withheld { fingerprint: 0x0123_4567_89ab_cdef, parsed: true, read_only: false },
        ] {
            let token = w.to_string();
            assert_eq!(Withheld::parse(&token), Some(w), "{token}");
            assert!(Withheld::is_token(&token));
            assert_eq!(is_read_only(&token), w.read_only);
        }
        assert_eq!(
            Withheld { fingerprint: 0xab, parsed: true, read_only: true }.to_string(),
            "/* querywatch withheld fingerprint=00000000000000ab method=parsed read_only=true */"
        );
    }

    #[test]
    fn near_misses_are_statements_not_tokens() {
        let good = "/* querywatch withheld fingerprint=00000000000000ab method=parsed read_only=true */";
        assert!(Withheld::parse(good).is_some());
        for bad in [
            "/* querywatch withheld fingerprint=00000000000000AB method=parsed read_only=true */",
            "/* querywatch withheld fingerprint=0000000000000ab method=parsed read_only=true */",
            "/* querywatch withheld fingerprint=00000000000000abc method=parsed read_only=true */",
            "/* querywatch withheld fingerprint=00000000000000ab method=guessed read_only=true */",
            "/* querywatch withheld fingerprint=00000000000000ab method=parsed read_only=yes */",
            "/* querywatch withheld fingerprint=00000000000000ab method=parsed read_only=true */ SELECT 1",
            "/* querywatch withheld fingerprint=+0000000000000ab method=parsed read_only=true */",
            "/* querywatch withheld fingerprint=",
            "SELECT 1",
            "",
        ] {
            assert_eq!(Withheld::parse(bad), None, "{bad}");
        }
        // A comment is no statement: not read-only, unless it is a token.
        assert!(!is_read_only("/* querywatch */"));
    }

    #[test]
    fn read_only_is_decided_conservatively() {
        for ro in [
            "SELECT a FROM t WHERE id = $1",
            "select count(*) from t",
            "WITH x AS (SELECT a FROM t) SELECT * FROM x",
            "SELECT lower(name) FROM users WHERE id = $1",
            "SELECT 'for update' FROM t",
        ] {
            assert!(is_read_only(ro), "{ro}");
        }
        for rw in [
            "SELECT a FROM t WHERE id = $1 FOR UPDATE",
            "SELECT a FROM t FOR NO KEY UPDATE SKIP LOCKED",
            "SELECT a FROM t FOR SHARE",
            "SELECT nextval($1)",
            "SELECT pg_advisory_lock($1)",
            "SELECT a INTO t2 FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "UPDATE t SET a = $1",
            "INSERT INTO t VALUES ($1)",
            "SELECT random()",
            "BEGIN",
        ] {
            assert!(!is_read_only(rw), "{rw}");
        }
    }
}
