//! A CRM's request budget: the rolling window its limits are counted in, what the CRM
//! said about them, and the pause it asked for.
//!
//! Plain data (`Copy`, no pointers), so that the extension keeps one per CRM in shared
//! memory and every worker and backend that calls the CRM draws on the same one. Times
//! are microseconds on a clock every process shares (the caller reads CLOCK_MONOTONIC).
//!
//! Why a log of send times and not a token bucket: HubSpot counts requests in a *rolling*
//! window. A bucket whose burst equals the limit lets a full burst go at the end of one
//! window and another at the start of the next, twice the limit within one window. The
//! log lets a request go only when the `max`-th most recent one has left the window, so
//! no window ever holds more than `max`, and a backlog still uses all of it.

use super::RateLimitHeaders;
use std::time::Duration;

/// Send times kept: limits above this are checked in sub-windows (see `Limit::checked`).
pub const LOG_CAPACITY: usize = 256;
/// Bytes of a pause's reason kept (cut at a character boundary).
const REASON_BYTES: usize = 240;

/// The least pause after a 429 or an outage, doubled with each one in a row up to
/// `MAX_BACKOFF` (a `Retry-After: 0` once earned 1,028 requests in 3 s).
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A misconfigured CRM (bad token, wrong URL) is asked again this often.
const MISCONFIGURED_PROBE: Duration = Duration::from_secs(60);
/// A spent daily quota resets at midnight in the account's time zone, which no answer
/// says: one request every five minutes finds out when, and costs nothing.
const QUOTA_PROBE: Duration = Duration::from_secs(300);

/// At most `max` requests in any window of `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub period_us: i64,
}

impl Limit {
    /// The limit as we count it: the CRM counts arrivals and we count departures, so
    /// the window is widened by 2% (20 ms to 500 ms) to absorb the latencies' spread.
    pub fn guarded(max: u32, period: Duration) -> Limit {
        let period_us = i64::try_from(period.as_micros()).unwrap_or(i64::MAX / 4);
        Limit {
            max: max.max(1),
            period_us: period_us.saturating_add((period_us / 50).clamp(20_000, 500_000)),
        }
    }

    /// What the log checks exactly. Above LOG_CAPACITY the window is cut into n
    /// sub-windows of ⌈period/n⌉, each holding ⌊max/n⌋: any window of `period` is covered
    /// by n of them, so it holds at most n·⌊max/n⌋ ≤ max.
    fn checked(self) -> Limit {
        let max = self.max.max(1);
        let n = max.div_ceil(LOG_CAPACITY as u32);
        Limit {
            max: max / n,
            period_us: (self.period_us.max(0) as u64).div_ceil(u64::from(n)) as i64,
        }
    }
}

/// The newest LOG_CAPACITY send times, oldest first.
#[derive(Clone, Copy)]
struct SendLog {
    times: [i64; LOG_CAPACITY],
    len: usize,
}

impl SendLog {
    const EMPTY: SendLog = SendLog {
        times: [0; LOG_CAPACITY],
        len: 0,
    };

    fn sent(&self) -> &[i64] {
        &self.times[..self.len]
    }

    /// When a request may go under `limit`: at or before `now` means now.
    fn next(&self, now: i64, limit: Limit) -> i64 {
        let l = limit.checked();
        let max = l.max as usize;
        if self.len < max {
            return now;
        }
        self.times[self.len - max].saturating_add(l.period_us)
    }

    fn push(&mut self, t: i64) {
        if self.len == LOG_CAPACITY {
            self.times.copy_within(1.., 0);
            self.len -= 1;
        }
        // almost always the newest: insert from the end
        let at = self.sent().partition_point(|&x| x <= t);
        self.times.copy_within(at..self.len, at + 1);
        self.times[at] = t;
        self.len += 1;
    }

    fn remove(&mut self, t: i64) -> bool {
        let Some(at) = self.sent().iter().rposition(|&x| x == t) else {
            return false;
        };
        self.times.copy_within(at + 1..self.len, at);
        self.len -= 1;
        true
    }

    fn count_since(&self, t: i64) -> usize {
        self.len - self.sent().partition_point(|&x| x <= t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    /// Backing off after 429s, outages, timeouts.
    Backoff,
    /// The CRM cannot be used as registered (bad token, missing scopes, wrong URL).
    Misconfigured,
    /// A daily limit is used up.
    Quota,
}

/// Why a request may not go now, and when it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Paused {
        until: i64,
        kind: PauseKind,
    },
    /// The rolling window is full.
    Window {
        until: i64,
    },
}

impl Wait {
    pub fn until(self) -> i64 {
        match self {
            Wait::Paused { until, .. } | Wait::Window { until } => until,
        }
    }
}

/// What a batch's answers said, for [`Budget::answered`].
#[derive(Debug, Default, Clone)]
pub struct Answer<'a> {
    /// A 2xx came back.
    pub ok: bool,
    /// 429s received.
    pub throttled: u32,
    /// An outage: 5xx, 423, 477, timeout, a reset connection, an unreadable answer.
    pub faulted: bool,
    /// The pause the CRM asked for (Retry-After, the interval headers).
    pub asked: Option<Duration>,
    /// The CRM cannot be used as registered: why.
    pub misconfigured: Option<&'a str>,
    /// A 429 on the daily limit.
    pub daily_reached: bool,
    /// What the CRM said, shown as the pause's reason.
    pub said: Option<&'a str>,
}

/// A CRM's state as `etlify.crm_status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// None: not paused.
    pub paused: Option<(PauseKind, i64)>,
    pub reason: String,
    /// The limit in force (configured, or learned from the CRM), if any.
    pub limit: Option<Limit>,
    /// The CRM's own limit as its headers said it: (max, interval in ms).
    pub learned: Option<(u32, u64)>,
    pub requests_last_period: u64,
    pub throttled_total: u64,
    pub daily_used: Option<u64>,
    pub daily_limit: Option<u64>,
}

#[derive(Clone, Copy)]
pub struct Budget {
    log: SendLog,
    /// rate_limit per rate_period, from the registration.
    configured: Option<Limit>,
    /// What the CRM's headers say its limit is (guarded, and as said).
    learned: Option<Limit>,
    learned_said: Option<(u32, u64)>,
    pause_until: i64,
    pause_kind: PauseKind,
    reason: [u8; REASON_BYTES],
    reason_len: usize,
    /// 429s and outages in a row: each doubles the next backoff.
    faults_in_row: u32,
    throttled_total: u64,
    daily_used: Option<u64>,
    daily_limit: Option<u64>,
    /// xorshift state for the backoff's jitter.
    seed: u64,
}

impl Budget {
    pub fn new(configured: Option<Limit>, seed: u64) -> Budget {
        Budget {
            log: SendLog::EMPTY,
            configured,
            learned: None,
            learned_said: None,
            pause_until: 0,
            pause_kind: PauseKind::Backoff,
            reason: [0; REASON_BYTES],
            reason_len: 0,
            faults_in_row: 0,
            throttled_total: 0,
            daily_used: None,
            daily_limit: None,
            seed: seed | 1,
        }
    }

    /// A new registration: its limit, and no pause (registering again, or
    /// etlify.resume, lifts it). What was sent still counts against the window.
    pub fn reconfigure(&mut self, configured: Option<Limit>) {
        self.configured = configured;
        self.lift();
    }

    pub fn lift(&mut self) {
        self.pause_until = 0;
        self.faults_in_row = 0;
        self.reason_len = 0;
    }

    /// Whether a request may go at `now`, and if not, until when it must wait.
    pub fn check(&self, now: i64) -> Result<(), Wait> {
        if self.pause_until > now {
            return Err(Wait::Paused {
                until: self.pause_until,
                kind: self.pause_kind,
            });
        }
        let until = [self.configured, self.learned]
            .into_iter()
            .flatten()
            .map(|l| self.log.next(now, l))
            .max()
            .unwrap_or(now);
        if until > now {
            return Err(Wait::Window { until });
        }
        Ok(())
    }

    /// Takes one request's place in the window at `now`, if it may go.
    pub fn take(&mut self, now: i64) -> Result<(), Wait> {
        self.check(now)?;
        self.log.push(now);
        Ok(())
    }

    /// A place taken at `at` that no request used.
    pub fn give_back(&mut self, at: i64) {
        self.log.remove(at);
    }

    /// A place taken at `at` whose request goes at `now`: counted from when it goes.
    pub fn retime(&mut self, at: i64, now: i64) {
        if self.log.remove(at) {
            self.log.push(now.max(at));
        }
    }

    /// Learns from one answer's headers: the CRM's own limit and how much of it is used
    /// (requests this budget did not see: another app on the same account, a restart),
    /// and the daily quota.
    pub fn observe(&mut self, now: i64, h: &RateLimitHeaders) {
        if let (Some(max), Some(ms)) = (h.max, h.interval_ms) {
            if max > 0 && ms > 0 {
                let max = u32::try_from(max).unwrap_or(u32::MAX);
                self.learned = Some(Limit::guarded(max, Duration::from_millis(ms)));
                self.learned_said = Some((max, ms));
            }
        }
        if let (Some(max), Some(remaining), Some(l)) = (h.max, h.remaining, self.learned) {
            let used = max.saturating_sub(remaining) as usize;
            let seen = self.log.count_since(now - l.period_us);
            // the CRM counted more than we sent: take the difference as sent now
            for _ in seen..used.min(LOG_CAPACITY) {
                self.log.push(now);
            }
        }
        if let Some(daily) = h.daily.filter(|&d| d > 0) {
            self.daily_limit = Some(daily);
            if let Some(left) = h.daily_remaining {
                self.daily_used = Some(daily.saturating_sub(left));
                if left == 0 {
                    let why = format!("the daily limit of {daily} requests is used up");
                    self.pause(now, QUOTA_PROBE, PauseKind::Quota, &why);
                }
            }
        }
    }

    /// Takes what a batch's answers said: pauses after 429s, outages, a
    /// misconfiguration or a spent quota; a success ends a run of faults.
    pub fn answered(&mut self, now: i64, a: &Answer) {
        self.throttled_total += u64::from(a.throttled);
        let said = a.said.unwrap_or("the CRM asked to pause");
        if let Some(why) = a.misconfigured {
            let wait = a.asked.unwrap_or_default().max(MISCONFIGURED_PROBE);
            self.pause(now, wait, PauseKind::Misconfigured, why);
        } else if a.daily_reached {
            let wait = a.asked.unwrap_or_default().max(QUOTA_PROBE);
            self.pause(now, wait, PauseKind::Quota, said);
        } else if a.throttled > 0 || a.faulted {
            self.faults_in_row = self.faults_in_row.saturating_add(1);
            let floor = backoff(self.faults_in_row);
            // jitter (0–25%) keeps workers and CRMs that failed together from
            // coming back together
            let jitter = floor.mul_f64(f64::from((self.next_random() % 256) as u32) / 1024.0);
            let wait = a.asked.unwrap_or_default().max(floor + jitter);
            self.pause(now, wait, PauseKind::Backoff, said);
        } else if a.ok {
            self.faults_in_row = 0;
        }
    }

    /// Pauses until `now + wait`, unless a longer pause runs already.
    fn pause(&mut self, now: i64, wait: Duration, kind: PauseKind, why: &str) {
        let until = now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 4));
        if until <= self.pause_until {
            return;
        }
        self.pause_until = until;
        self.pause_kind = kind;
        let mut end = why.len().min(REASON_BYTES);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        self.reason[..end].copy_from_slice(&why.as_bytes()[..end]);
        self.reason_len = end;
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }

    /// Why the last pause was taken (empty when none was, or it was lifted).
    pub fn reason(&self) -> &str {
        // cut at a character boundary when stored
        std::str::from_utf8(&self.reason[..self.reason_len]).unwrap_or_default()
    }

    /// The limit in force: the configured one, else the CRM's own.
    fn limit(&self) -> Option<Limit> {
        self.configured.or(self.learned)
    }

    pub fn status(&self, now: i64) -> Status {
        let limit = self.limit();
        let period = limit.map_or(10_000_000, |l| l.period_us);
        Status {
            paused: (self.pause_until > now).then_some((self.pause_kind, self.pause_until)),
            reason: self.reason().to_owned(),
            limit,
            learned: self.learned_said,
            requests_last_period: self.log.count_since(now - period) as u64,
            throttled_total: self.throttled_total,
            daily_used: self.daily_used,
            daily_limit: self.daily_limit,
        }
    }
}

/// The least pause after the `n`th fault in a row (n ≥ 1).
fn backoff(n: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn limit(max: u32, period_us: i64) -> Limit {
        Limit { max, period_us }
    }

    /// Sends as soon as allowed from `start` for `span`; the send times.
    fn saturate(b: &mut Budget, start: i64, span: i64) -> Vec<i64> {
        let mut t = start;
        let mut sent = Vec::new();
        while t < start + span {
            match b.take(t) {
                Ok(()) => sent.push(t),
                Err(w) => t = w.until(),
            }
        }
        sent
    }

    /// The most requests any window of `period` holds.
    fn densest(sent: &[i64], period: i64) -> usize {
        (0..sent.len())
            .map(|i| sent[i..].partition_point(|&t| t < sent[i] + period))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_ever_holds_more_than_the_limit_and_a_backlog_uses_all_of_it() {
        for (max, period) in [(100, 10 * S), (190, 10 * S), (5, S), (1, 30 * S)] {
            let mut b = Budget::new(Some(limit(max, period)), 7);
            let sent = saturate(&mut b, 0, 60 * S);
            assert!(densest(&sent, period) <= max as usize, "{max}/{period}");
            // 60 s of backlog: every window full
            let expected = (60 * S as u64).div_ceil(period as u64) as usize * max as usize;
            assert_eq!(sent.len(), expected, "{max}/{period}");
        }
    }

    #[test]
    fn limits_above_the_log_are_checked_in_sub_windows() {
        for max in [257, 1000, 5000] {
            let mut b = Budget::new(Some(limit(max, 10 * S)), 7);
            let sent = saturate(&mut b, 0, 100 * S);
            assert!(densest(&sent, 10 * S) <= max as usize, "{max}");
            // ≥ 95% of the allowance
            assert!(
                sent.len() * 100 >= 95 * 10 * max as usize,
                "{max}: {}",
                sent.len()
            );
        }
    }

    #[test]
    fn a_guarded_limit_widens_the_window_a_little() {
        let l = Limit::guarded(100, Duration::from_secs(10));
        assert_eq!(l, limit(100, 10_200_000));
        assert_eq!(
            Limit::guarded(5, Duration::from_secs(1)).period_us,
            1_020_000
        );
        assert_eq!(Limit::guarded(0, Duration::from_millis(1)).max, 1);
    }

    #[test]
    fn both_the_configured_and_the_learned_limit_apply() {
        let mut b = Budget::new(Some(limit(10, S)), 7);
        let h = RateLimitHeaders {
            max: Some(2),
            interval_ms: Some(1000),
            remaining: Some(0),
            ..RateLimitHeaders::default()
        };
        b.take(0).unwrap();
        b.take(0).unwrap();
        b.observe(1, &h);
        assert!(matches!(b.take(2), Err(Wait::Window { .. })));
        assert_eq!(b.status(2).limit, Some(limit(10, S)));
    }

    #[test]
    fn requests_the_crm_counted_but_we_did_not_send_count() {
        let mut b = Budget::new(None, 7);
        let h = RateLimitHeaders {
            max: Some(10),
            interval_ms: Some(10_000),
            remaining: Some(2),
            ..RateLimitHeaders::default()
        };
        b.take(0).unwrap();
        b.observe(S, &h);
        assert_eq!(b.status(S).requests_last_period, 8);
        assert!(b.take(S).is_ok() && b.take(S).is_ok());
        assert!(b.take(S).is_err());
    }

    #[test]
    fn reservations_are_given_back_or_retimed() {
        let mut b = Budget::new(Some(limit(1, 10 * S)), 7);
        b.take(0).unwrap();
        b.give_back(0);
        b.take(S).unwrap();
        b.retime(S, 3 * S);
        assert_eq!(b.check(12 * S), Err(Wait::Window { until: 13 * S }));
    }

    #[test]
    fn faults_in_a_row_double_the_pause_and_a_success_ends_the_run() {
        let mut b = Budget::new(None, 7);
        let throttled = Answer {
            throttled: 1,
            asked: Some(Duration::ZERO),
            ..Answer::default()
        };
        let mut pauses = Vec::new();
        let mut now = 0;
        for _ in 0..8 {
            b.answered(now, &throttled);
            let Err(Wait::Paused { until, kind }) = b.check(now) else {
                panic!("not paused");
            };
            assert_eq!(kind, PauseKind::Backoff);
            pauses.push(until - now);
            now = until;
        }
        for (i, p) in pauses.iter().enumerate() {
            let floor = backoff(i as u32 + 1).as_micros() as i64;
            assert!(*p >= floor && *p <= floor + floor / 4, "{i}: {p}");
        }
        assert_eq!(b.status(now).throttled_total, 8);
        b.answered(
            now,
            &Answer {
                ok: true,
                ..Answer::default()
            },
        );
        b.answered(
            now,
            &Answer {
                faulted: true,
                ..Answer::default()
            },
        );
        let Err(w) = b.check(now) else { panic!() };
        assert!(w.until() - now < 2 * S);
        // a longer Retry-After wins
        b.lift();
        b.answered(
            now,
            &Answer {
                throttled: 1,
                asked: Some(Duration::from_secs(9)),
                ..Answer::default()
            },
        );
        assert_eq!(b.check(now).unwrap_err().until(), now + 9 * S);
    }

    #[test]
    fn a_misconfiguration_pauses_with_its_reason_until_lifted() {
        let mut b = Budget::new(None, 7);
        b.answered(
            0,
            &Answer {
                misconfigured: Some("HTTP 401: check the secret"),
                ..Answer::default()
            },
        );
        let s = b.status(1);
        assert_eq!(s.paused, Some((PauseKind::Misconfigured, 60 * S)));
        assert_eq!(s.reason, "HTTP 401: check the secret");
        // a shorter backoff does not cut it short
        b.answered(
            1,
            &Answer {
                faulted: true,
                ..Answer::default()
            },
        );
        assert_eq!(b.status(1).paused, Some((PauseKind::Misconfigured, 60 * S)));
        b.reconfigure(None);
        assert_eq!(b.check(1), Ok(()));
    }

    #[test]
    fn a_spent_daily_quota_pauses_as_quota() {
        let mut b = Budget::new(None, 7);
        let h = RateLimitHeaders {
            daily: Some(250_000),
            daily_remaining: Some(10),
            ..RateLimitHeaders::default()
        };
        b.observe(0, &h);
        let s = b.status(0);
        assert_eq!(
            (s.daily_used, s.daily_limit, s.paused),
            (Some(249_990), Some(250_000), None)
        );
        b.observe(
            0,
            &RateLimitHeaders {
                daily_remaining: Some(0),
                ..h
            },
        );
        assert_eq!(b.status(0).paused, Some((PauseKind::Quota, 300 * S)));
        let mut b = Budget::new(None, 7);
        b.answered(
            0,
            &Answer {
                daily_reached: true,
                throttled: 1,
                ..Answer::default()
            },
        );
        assert_eq!(b.status(0).paused.map(|p| p.0), Some(PauseKind::Quota));
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character() {
        let mut b = Budget::new(None, 7);
        let why = "é".repeat(200);
        b.answered(
            0,
            &Answer {
                misconfigured: Some(&why),
                ..Answer::default()
            },
        );
        let r = b.status(0).reason;
        assert!(
            r.len() <= REASON_BYTES && r.chars().all(|c| c == 'é'),
            "{r}"
        );
    }
}
