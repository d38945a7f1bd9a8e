//! Timestamps as PostgreSQL writes them: `2026-11-24 09:01:10.123 UTC`
//! (`%m`, csvlog, jsonlog), `2026-11-24 09:01:10 CET` (`%t`, `%s`) and
//! `1732440070.123` (`%n`).
//!
//! Hand-written rather than chrono's format parser: it runs once per log
//! entry on the hot path, and the layout is fixed by PostgreSQL.
//! A zone given as `UTC`/`GMT`/`Z` or a numeric offset (`+01`, `-0530`) is
//! applied; any other abbreviation (`CET`, `EST`) is ambiguous and the local
//! time is kept as written — the same clock as `--since/--until` given in
//! the log's own time.

use querywatch_wire::stats::EpochMillis;

/// Parses `YYYY-MM-DD HH:MM:SS[.fff][ ZONE]` at the start of `s`.
/// Returns the time and the number of bytes used (zone included).
pub fn parse_timestamp(s: &[u8]) -> Option<(EpochMillis, usize)> {
    if s.len() < 19 {
        return None;
    }
    let year = digits(&s[0..4])?;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = digits(&s[11..13])?;
    let min = digits(&s[14..16])?;
    let sec = digits(&s[17..19])?;
    if s[4] != b'-' || s[7] != b'-' || (s[10] != b' ' && s[10] != b'T') || s[13] != b':' || s[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut pos = 19;
    let mut millis = 0i64;
    if s.get(pos) == Some(&b'.') {
        pos += 1;
        let start = pos;
        while pos < s.len() && s[pos].is_ascii_digit() {
            pos += 1;
        }
        let frac = &s[start..pos];
        if frac.is_empty() {
            return None;
        }
        // Keep milliseconds; finer digits (microseconds) are truncated.
        let take = frac.len().min(3);
        millis = digits(&frac[..take])? * 10i64.pow(3 - take as u32);
    }
    let days = days_from_civil(year, month, day);
    let mut t = ((days * 24 + hour) * 60 + min) * 60 + sec;
    t = t * 1000 + millis;
    // Optional zone after one space.
    if s.get(pos) == Some(&b' ') {
        let zstart = pos + 1;
        let zend = zstart + zone_len(&s[zstart..]);
        let zone = &s[zstart..zend];
        if let Some(offset_secs) = zone_offset(zone) {
            t -= offset_secs * 1000;
            pos = zend;
        } else if !zone.is_empty() && zone.iter().all(|b| b.is_ascii_alphabetic()) {
            // Named zone: consumed, kept as local time (see module doc).
            pos = zend;
        }
    }
    Some((t, pos))
}

/// The length of the zone at the start of `s`, by its shape: letters
/// (`CET`), or a sign and two digits with two more, or `:` and two more
/// (`+01`, `-0530`, `+05:30`). The prefix's next literal may follow with
/// no space: RDS's `%t:%r:…` writes `UTC:10.0.0.1(5432):…` and Azure's
/// `%t-%c-` writes `UTC-6743a0c6.51-`, so the zone must end where its
/// shape does, not at the first byte that no zone has.
fn zone_len(s: &[u8]) -> usize {
    let digit = |i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    match s.first() {
        Some(b'+' | b'-') if digit(1) && digit(2) => {
            if digit(3) && digit(4) {
                5
            } else if s.get(3) == Some(&b':') && digit(4) && digit(5) && !(digit(6) || s.get(6) == Some(&b'.')) {
                // `-03:10.0.0.1` is zone `-03` and an address after `:`.
                6
            } else {
                3
            }
        }
        _ => s.iter().take_while(|b| b.is_ascii_alphabetic()).count(),
    }
}

/// Parses `%n`: seconds since the epoch with milliseconds, `1732440070.123`.
pub fn parse_epoch(s: &[u8]) -> Option<(EpochMillis, usize)> {
    let mut pos = 0;
    while pos < s.len() && s[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos == 0 || pos > 12 {
        return None;
    }
    let secs = digits(&s[..pos])?;
    let mut millis = 0;
    if s.get(pos) == Some(&b'.') {
        let start = pos + 1;
        let mut end = start;
        while end < s.len() && s[end].is_ascii_digit() {
            end += 1;
        }
        let take = (end - start).min(3);
        if take > 0 {
            millis = digits(&s[start..start + take])? * 10i64.pow(3 - take as u32);
        }
        pos = end;
    }
    Some((secs * 1000 + millis, pos))
}

fn zone_offset(zone: &[u8]) -> Option<i64> {
    match zone {
        b"UTC" | b"GMT" | b"Z" | b"UCT" => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                2 => (digits(rest)?, 0),
                4 => (digits(&rest[..2])?, digits(&rest[2..])?),
                5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
                _ => return None,
            };
            let secs = h * 3600 + m * 60;
            Some(if *sign == b'-' { -secs } else { secs })
        }
        _ => None,
    }
}

fn digits(s: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats epoch milliseconds as `YYYY-MM-DD HH:MM:SS.mmm` (for reports).
pub fn format_timestamp(t: EpochMillis) -> String {
    let ms = t.rem_euclid(1000);
    let secs = t.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}", sod / 3600, sod % 3600 / 60, sod % 60)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_millisecond_utc() {
        let (t, n) = parse_timestamp(b"2026-11-24 09:01:10.123 UTC [42]").unwrap();
        assert_eq!(n, 27);
        assert_eq!(t, 1_795_510_870_123);
        assert_eq!(format_timestamp(t), "2026-11-24 09:01:10.123");
    }

    #[test]
    fn applies_numeric_offsets() {
        let (utc, _) = parse_timestamp(b"2026-11-24 09:01:10 UTC").unwrap();
        let (plus, n) = parse_timestamp(b"2026-11-24 10:01:10 +01 x").unwrap();
        assert_eq!(n, 23);
        assert_eq!(utc, plus);
        let (minus, _) = parse_timestamp(b"2026-11-24 03:31:10 -0530").unwrap();
        assert_eq!(utc, minus);
    }

    #[test]
    fn a_zone_ends_where_its_shape_does() {
        let (utc, _) = parse_timestamp(b"2026-11-24 09:01:10 UTC").unwrap();
        for (line, used) in [
            (&b"2026-11-24 09:01:10 UTC:10.0.0.1(5432):bob@shop:[123]:LOG:"[..], 23),
            (b"2026-11-24 09:01:10 UTC:[local]:bob@shop:[123]:LOG:", 23),
            (b"2026-11-24 09:01:10 UTC::@:[123]:LOG:", 23),
            (b"2026-11-24 09:01:10 UTC-6743a0c6.51-LOG:", 23),
            (b"2026-11-24 06:01:10 -03:10.0.0.1(5432):", 23),
            (b"2026-11-24 06:01:10 -03:00 x", 26),
            (b"2026-11-24 14:31:10 +0530:[local]", 25),
        ] {
            let (t, n) = parse_timestamp(line).unwrap();
            assert_eq!((t, n), (utc, used), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn named_zones_are_consumed_and_kept_local() {
        let (cet, n) = parse_timestamp(b"2026-11-24 09:01:10 CET rest").unwrap();
        assert_eq!(n, 23);
        assert_eq!(format_timestamp(cet), "2026-11-24 09:01:10.000");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b"2026-13-24 09:01:10"[..], b"2026/11/24 09:01:10", b"short", b"2026-11-24 09:01:1x"] {
            assert!(parse_timestamp(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parses_epoch() {
        assert_eq!(parse_epoch(b"1795510870.123 x"), Some((1_795_510_870_123, 14)));
        assert_eq!(parse_epoch(b"x"), None);
    }

    #[test]
    fn civil_roundtrip_over_leap_years() {
        for t in [0i64, 951_782_400_000, 4_107_542_399_999, -86_400_000] {
            let s = format_timestamp(t);
            let (back, _) = parse_timestamp(s.as_bytes()).unwrap();
            assert_eq!(back, t, "{s}");
        }
    }
}
