//! Wall-clock helpers. HubSpot renders timestamps as ISO 8601 in UTC with millisecond
//! precision; we format them by hand to avoid pulling a date crate in for one format.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    now_us() / 1000
}

/// Displays a unix-millisecond timestamp as `2024-01-31T12:34:56.789Z`.
/// A `Display` wrapper (rather than a `String`) so serializers can write it without allocating.
#[derive(Clone, Copy)]
pub struct Iso(pub i64);

impl fmt::Display for Iso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

pub fn iso(ms: i64) -> String {
    Iso(ms).to_string()
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SS[.fff]Z` (also `+00:00`) into unix ms.
/// Used by search so date filters work whether the client sends ms or ISO strings.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if b.len() < 20 || (b[10] != b'T' && b[10] != b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut frac_ms = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &r[..digits];
        let padded: String = frac.chars().chain("000".chars()).take(3).collect();
        frac_ms = padded.parse::<i64>().ok()?;
        rest = &r[digits..];
    }
    if !(rest == "Z" || rest == "+00:00" || rest.is_empty()) {
        return None;
    }
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + frac_ms)
}

// Howard Hinnant's days <-> civil date algorithms (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = (if z >= 0 { z } else { z - 146_096 }) / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe as i64 + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = (y - era * 400) as u64;
    let mp = (if m > 2 { m - 3 } else { m + 9 }) as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_572_480_000_000), "2019-10-31T00:00:00.000Z");
        assert_eq!(iso(951_782_400_123), "2000-02-29T00:00:00.123Z");
        for ms in [0, 1_572_480_000_000, 951_782_400_123, 1_700_000_000_999] {
            assert_eq!(parse_iso_ms(&iso(ms)), Some(ms));
        }
        assert_eq!(parse_iso_ms("2019-10-31"), Some(1_572_480_000_000));
        assert_eq!(
            parse_iso_ms("2019-10-31T00:00:00Z"),
            Some(1_572_480_000_000)
        );
        assert_eq!(parse_iso_ms("not a date"), None);
        assert_eq!(parse_iso_ms("1572480000000"), None);
    }
}
