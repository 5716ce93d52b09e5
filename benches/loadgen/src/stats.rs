//! Counters shared by every socket task of the (single-threaded) load generator.

use std::cell::RefCell;
use std::time::Instant;

use serde_json::{Value, json};

/// How many distinct error messages are kept as samples.
const MAX_SAMPLES: usize = 8;

/// Everything counted during a run.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Deliveries the publishers' accepted publishes should produce.
    pub(crate) expected: u64,
    /// First-time deliveries received.
    pub(crate) delivered: u64,
    /// Deliveries received more than once.
    pub(crate) duplicates: u64,
    /// Deliveries that match no publish.
    pub(crate) unknown: u64,
    /// Other events received (`user:online`, `conversation:joined`, ...).
    pub(crate) other_events: u64,
    /// Errors of any kind (connect, HTTP status, socket closed, ...).
    pub(crate) errors: u64,
    /// A few error messages, each once.
    pub(crate) error_samples: Vec<String>,
    /// When the last delivery arrived, microseconds since the run's base.
    pub(crate) last_delivery_us: u64,
    /// Publishes sent and accepted.
    pub(crate) publishes: u64,
}

impl Stats {
    /// Counts an error and keeps its message as a sample if it is new.
    pub(crate) fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let message = message.into();
        if self.error_samples.len() < MAX_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }
}

/// A microsecond clock shared by every task, so a timestamp written by one is read by another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Clock {
        Clock(Instant::now())
    }
    /// Microseconds since the clock started.
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// p50/p90/p99/max of latencies in microseconds, as milliseconds.
pub(crate) fn percentiles(latencies: &RefCell<Vec<u32>>) -> Value {
    let mut v = latencies.borrow_mut();
    if v.is_empty() {
        return json!({"count": 0});
    }
    v.sort_unstable();
    let pick = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        f64::from(v[i.min(v.len() - 1)]) / 1000.0
    };
    json!({
        "count": v.len(),
        "p50_ms": pick(0.50),
        "p90_ms": pick(0.90),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v = RefCell::new((1..=100).map(|i| i * 1000).collect::<Vec<u32>>());
        let p = percentiles(&v);
        assert_eq!(p["p50_ms"], json!(51.0));
        assert_eq!(p["p99_ms"], json!(99.0));
        assert_eq!(p["max_ms"], json!(100.0));
    }

    #[test]
    fn error_samples_are_distinct_and_bounded() {
        let mut s = Stats::default();
        for i in 0..20 {
            s.error(format!("e{}", i % 10));
        }
        assert_eq!(s.errors, 20);
        assert_eq!(s.error_samples.len(), MAX_SAMPLES);
    }
}
