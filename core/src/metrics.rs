//! Prometheus metrics: connections, events in/out by name, errors by kind, and plugin metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a per-event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event name (`unknown` for names no handler owns).
    pub event: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The error kind.
    pub kind: String,
}

/// The node's metrics; plugins register their own through [`Metrics::register`].
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Open client connections.
    pub connections: Gauge<i64, AtomicI64>,
    /// Accepted connections since start.
    pub connects: Counter,
    /// Client events received, by name.
    pub events_in: Family<EventLabels, Counter>,
    /// Events published to rooms or the namespace, by name (once per publish).
    pub events_out: Family<EventLabels, Counter>,
    /// Failures, by kind.
    pub errors: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the core metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Gauge::<i64, AtomicI64>::default();
        let connects = Counter::default();
        let events_in = Family::<EventLabels, Counter>::default();
        let events_out = Family::<EventLabels, Counter>::default();
        let errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register("connects", "Accepted client connections", connects.clone());
        registry.register(
            "events_in",
            "Client events received, by name",
            events_in.clone(),
        );
        registry.register(
            "events_out",
            "Events published to rooms or the namespace, by name",
            events_out.clone(),
        );
        registry.register("errors", "Failures, by kind", errors.clone());
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            connections,
            connects,
            events_in,
            events_out,
            errors,
        }
    }

    /// Registers a plugin's metric under the `switchboard_` prefix.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Counts one failure of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
