//! Pacing: when a request may go, and what the CRM said about its limits.
//!
//! The client asks a [`Pacer`] before every request and tells it every answer's limit
//! headers. The extension's pacer draws on one [`Budget`](super::Budget) per CRM in shared
//! memory; this module has the trait and the headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Pacer {
    /// Called before every request; blocks until the request may go. Err(reason) = stop (the caller was interrupted): the adapter then returns Retry outcomes for the unsent items.
    fn acquire(&mut self) -> Result<(), String>;
    /// Called after every response with its status and parsed rate-limit headers.
    fn observe(&mut self, status: u16, limits: &RateLimitHeaders);
    /// Asked every few milliseconds while a request runs: true abandons it (the
    /// process is stopping, the user cancelled).
    fn interrupted(&mut self) -> bool {
        false
    }
}

/// What a response said about the CRM's rate limit. Every field is optional: vendors
/// send some of these on some responses only.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RateLimitHeaders {
    pub interval_ms: Option<u64>,
    pub max: Option<u64>,
    pub remaining: Option<u64>,
    /// The daily quota and what is left of it (HubSpot: `-Daily`, `-Daily-Remaining`).
    pub daily: Option<u64>,
    pub daily_remaining: Option<u64>,
    pub retry_after: Option<Duration>,
}

/// The vendor-specific names of the rate-limit headers (`Retry-After` is standard).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitHeaderNames {
    pub interval_ms: &'static str,
    pub max: &'static str,
    pub remaining: &'static str,
    pub daily: &'static str,
    pub daily_remaining: &'static str,
}

impl RateLimitHeaders {
    /// Parses the headers found by `get` (a case-insensitive lookup). `now` is only used
    /// to turn a `Retry-After` date into a wait.
    pub(crate) fn from_lookup<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        names: &LimitHeaderNames,
        now: SystemTime,
    ) -> Self {
        let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u64>().ok());
        RateLimitHeaders {
            interval_ms: number(names.interval_ms),
            max: number(names.max),
            remaining: number(names.remaining),
            daily: number(names.daily),
            daily_remaining: number(names.daily_remaining),
            retry_after: get("retry-after").and_then(|v| parse_retry_after(v, now)),
        }
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <IMF-fixdate>` (RFC 9110 §10.2.3). A date in
/// the past means "now". Anything else is ignored rather than guessed at.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Not in the RFC, but seen in the wild ("0.5"): cheap to honour.
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = parse_imf_fixdate(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the only date format senders may use (RFC 9110 §5.6.7).
fn parse_imf_fixdate(s: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_weekday, rest) = s.split_once(", ")?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = fields.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || !(0..24).contains(h) || !(0..60).contains(m) {
        return None;
    }
    if !(0..=60).contains(sec) {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A pacer that never waits: for the null adapter, tests, and one-off runs.
pub struct Unpaced;

impl Pacer for Unpaced {
    fn acquire(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn observe(&mut self, _status: u16, _limits: &RateLimitHeaders) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUBSPOT: LimitHeaderNames = LimitHeaderNames {
        interval_ms: "x-hubspot-ratelimit-interval-milliseconds",
        max: "x-hubspot-ratelimit-max",
        remaining: "x-hubspot-ratelimit-remaining",
        daily: "x-hubspot-ratelimit-daily",
        daily_remaining: "x-hubspot-ratelimit-daily-remaining",
    };

    fn lookup<'a>(headers: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        |name| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn unpaced_never_waits() {
        let mut p = Unpaced;
        assert_eq!(p.acquire(), Ok(()));
        p.observe(429, &RateLimitHeaders::default());
        assert_eq!(p.acquire(), Ok(()));
    }

    #[test]
    fn hubspot_headers_parse() {
        let headers = [
            ("X-HubSpot-RateLimit-Interval-Milliseconds", "10000"),
            ("X-HubSpot-RateLimit-Max", "190"),
            ("X-HubSpot-RateLimit-Remaining", " 0 "),
            ("X-HubSpot-RateLimit-Daily", "650000"),
            ("Retry-After", "3"),
        ];
        let limits = RateLimitHeaders::from_lookup(lookup(&headers), &HUBSPOT, SystemTime::now());
        assert_eq!(
            limits,
            RateLimitHeaders {
                interval_ms: Some(10_000),
                max: Some(190),
                remaining: Some(0),
                daily: Some(650_000),
                daily_remaining: None,
                retry_after: Some(Duration::from_secs(3)),
            }
        );
    }

    #[test]
    fn missing_or_garbled_headers_are_none() {
        let headers = [
            ("X-HubSpot-RateLimit-Max", "lots"),
            ("X-HubSpot-RateLimit-Remaining", "-1"),
            ("Retry-After", "soon"),
        ];
        let limits = RateLimitHeaders::from_lookup(lookup(&headers), &HUBSPOT, SystemTime::now());
        assert_eq!(limits, RateLimitHeaders::default());
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 25:49:37 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(
            parse_imf_fixdate("Thu, 01 Jan 2026 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        );
    }
}
