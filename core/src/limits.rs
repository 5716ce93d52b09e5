//! Per-socket and per-node limits: the inbound token bucket and a rate limit for log lines.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The result of taking a token from a socket's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rate {
    Allowed,
    Limited { over_for: Duration },
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    over_since: Option<Instant>,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            over_since: None,
        }
    }

    pub(crate) fn take(&mut self, now: Instant) -> Rate {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            // A socket that keeps hitting the limit is "over" until its bucket has really
            // recovered, not merely refilled one token.
            if self.tokens >= self.burst / 2.0 {
                self.over_since = None;
            }
            Rate::Allowed
        } else {
            let since = *self.over_since.get_or_insert(now);
            Rate::Limited {
                over_for: now.saturating_duration_since(since),
            }
        }
    }
}

/// Lets one log line per key through per period, so a failing backend logs once, not per event.
pub(crate) struct LogLimiter {
    period: Duration,
    last: Mutex<HashMap<&'static str, Instant>>,
}

impl LogLimiter {
    pub(crate) fn new(period: Duration) -> Self {
        LogLimiter {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn allow(&self, key: &'static str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        match last.get(key) {
            Some(t) if now.saturating_duration_since(*t) < self.period => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

/// Whether `text` has more than `max` characters (counted only when its bytes are more).
pub(crate) fn over_chars(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Rate::Allowed);
        }
        assert!(matches!(b.take(t0), Rate::Limited { .. }));
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Rate::Allowed);
        // One refilled token does not end the abuse: over since t0.
        let Rate::Limited { over_for } = b.take(t0 + Duration::from_millis(150)) else {
            panic!("expected limited");
        };
        assert_eq!(over_for, Duration::from_millis(150));
        // A bucket back above half its burst does.
        assert_eq!(b.take(t0 + Duration::from_secs(5)), Rate::Allowed);
        b.take(t0 + Duration::from_secs(5));
        b.take(t0 + Duration::from_secs(5));
        let Rate::Limited { over_for } = b.take(t0 + Duration::from_secs(5)) else {
            panic!("expected limited");
        };
        assert_eq!(over_for, Duration::ZERO);
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_period() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert!(l.allow("redis"));
        assert!(!l.allow("redis"));
        assert!(l.allow("other"));
    }

    #[test]
    fn over_chars_counts_characters_not_bytes() {
        assert!(!over_chars("héllo", 5), "6 bytes, 5 characters");
        assert!(over_chars("héllo!", 5));
        assert!(!over_chars("hello", 5));
        assert!(over_chars("hello!", 5));
    }
}
