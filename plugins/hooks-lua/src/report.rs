//! Counting script failures in `/metrics` and logging them at a bounded rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use switchboard_core::Metrics;

/// Labels of `switchboard_lua_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The script's path as configured (`*` when no script was reached).
    pub script: String,
    /// `on_inbound`, `on_outbound` or `authorize`.
    pub hook: String,
    /// `runtime`, `timeout`, `memory`, `result`, `payload` or `busy`.
    pub kind: String,
}

/// Labels of `switchboard_lua_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok`, or `error` when a script kept its previous version.
    pub result: String,
}

/// The plugin's counters, registered with the node's metrics.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) reloads: Family<ReloadLabels, Counter>,
}

impl Counters {
    /// Fresh counters registered with `metrics`.
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let c = Counters::default();
        metrics.register(
            "lua_errors",
            "Lua hook failures, by script, hook and kind",
            c.errors.clone(),
        );
        metrics.register(
            "lua_reloads",
            "Lua script reloads, by result",
            c.reloads.clone(),
        );
        // Both results from start-up, at 0, so a dashboard's rate() has a series to read.
        for result in ["ok", "error"] {
            c.reloads
                .get_or_create(&ReloadLabels {
                    result: result.to_owned(),
                })
                .inc_by(0);
        }
        c
    }

    /// Counts one reload.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }
}

type Key = (Arc<str>, &'static str, &'static str);

/// Lets one log line per (script, hook, kind) through per period, counting the rest.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    period: Duration,
    last: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl LogLimiter {
    /// A limiter letting one line per key through every `period`.
    pub(crate) fn new(period: Duration) -> Self {
        LogLimiter {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed since the last line)` when this failure may be logged.
    pub(crate) fn allow(
        &self,
        script: &Arc<str>,
        hook: &'static str,
        kind: &'static str,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        let key = (script.clone(), hook, kind);
        match last.get_mut(&key) {
            Some((t, suppressed)) if now.saturating_duration_since(*t) < self.period => {
                *suppressed += 1;
                None
            }
            Some((t, suppressed)) => {
                *t = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_period() {
        let l = LogLimiter::new(Duration::from_secs(60));
        let a: Arc<str> = Arc::from("a.lua");
        assert_eq!(l.allow(&a, "on_inbound", "timeout"), Some(0));
        assert_eq!(l.allow(&a, "on_inbound", "timeout"), None);
        assert_eq!(l.allow(&a, "on_inbound", "timeout"), None);
        assert_eq!(l.allow(&a, "on_outbound", "timeout"), Some(0));
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.allow(&a, "authorize", "runtime"), Some(0));
        assert_eq!(l.allow(&a, "authorize", "runtime"), Some(0));
    }
}
