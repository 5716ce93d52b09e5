//! Prometheus metrics: connections, events in/out by name, errors by kind, and plugin metrics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

/// Labels of the per-transport connection gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// The transport (`socketio`, `websocket`, `direct`).
    pub transport: String,
}

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route as declared (`/api/v1/rooms/{room}`), or `unmatched`.
    pub route: &'static str,
    /// The response status code.
    pub status: u16,
}

/// Labels of the build info gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
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
    /// Open client connections, by transport.
    pub transport_connections: Family<TransportLabels, Gauge<i64, AtomicI64>>,
    /// HTTP requests served, by route and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// How long handling one client event takes, from its arrival to its ack.
    pub inbound_seconds: Histogram,
    /// How long a publish takes, from the call to the broker taking it (with the memory
    /// broker: until every local socket's write is queued).
    pub publish_seconds: Histogram,
    /// From a room event's publish, on any node, to this node's writes to its members.
    pub publish_to_write_seconds: Histogram,
    totals: Arc<Totals>,
}

/// Buckets from 50 µs to about 1.6 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 16)
}

/// How many recent failures a node keeps to show (`GET /api/v1/nodes`).
const RECENT_ERRORS: usize = 20;

/// Totals over every label, and the recent failures.
#[derive(Default)]
struct Totals {
    events_in: AtomicU64,
    events_out: AtomicU64,
    recent: Mutex<VecDeque<RecentError>>,
    /// The counters of `events_in` and `events_out` met so far, by name: found from the
    /// name alone, without a label set built for each event.
    by_name_in: ByName,
    by_name_out: ByName,
    /// The counters of `http_requests` met so far, by route, then status.
    by_route: ByRoute,
}

/// Counters of one family by event name.
#[derive(Default)]
struct ByName(parking_lot::RwLock<FastMap<Box<str>, Counter>>);

/// A map keyed by a name the node sees again and again, hashed fast.
type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

impl ByName {
    /// Counts one `event` in `family`.
    fn inc(&self, family: &Family<EventLabels, Counter>, event: &str) {
        if let Some(c) = self.0.read().get(event) {
            c.inc();
            return;
        }
        let c = family
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .clone();
        c.inc();
        self.0.write().insert(event.into(), c);
    }
}

/// Counters of `http_requests` by route, each with the statuses it answered.
#[derive(Default)]
struct ByRoute(parking_lot::RwLock<FastMap<Box<str>, Statuses>>);

/// The counters of one route, by status.
type Statuses = Vec<(u16, Counter)>;

impl ByRoute {
    /// Counts one request of `route` answered `status` in `family`.
    fn inc(&self, family: &Family<HttpLabels, Counter>, route: &str, status: u16) {
        if let Some((_, c)) = self
            .0
            .read()
            .get(route)
            .and_then(|statuses| statuses.iter().find(|(s, _)| *s == status))
        {
            c.inc();
            return;
        }
        let c = family
            .get_or_create(&HttpLabels {
                route: route_label(route),
                status,
            })
            .clone();
        c.inc();
        let mut routes = self.0.write();
        let statuses = routes.entry(route.into()).or_default();
        if !statuses.iter().any(|(s, _)| *s == status) {
            statuses.push((status, c));
        }
    }
}

/// One recent failure on this node.
#[derive(Debug, Clone)]
pub struct RecentError {
    /// When it happened.
    pub at: SystemTime,
    /// Its kind, as counted in `switchboard_errors_total`.
    pub kind: String,
    /// What went wrong.
    pub message: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts one HTTP request to `route` (as declared) answered with `status`.
    pub fn count_http(&self, route: &str, status: u16) {
        self.totals.by_route.inc(&self.http_requests, route, status);
    }

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
        let transport_connections = Family::<TransportLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "transport_connections",
            "Open client connections, by transport",
            transport_connections.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route and status",
            http_requests.clone(),
        );
        let inbound_seconds = Histogram::new(latency_buckets());
        registry.register(
            "inbound_seconds",
            "Time to handle one client event, from its arrival to its ack",
            inbound_seconds.clone(),
        );
        let publish_seconds = Histogram::new(latency_buckets());
        registry.register(
            "publish_seconds",
            "Time a publish takes until the broker has it",
            publish_seconds.clone(),
        );
        let publish_to_write_seconds = Histogram::new(latency_buckets());
        registry.register(
            "publish_to_write_seconds",
            "Time from a publish, on any node, to this node's writes to its sockets",
            publish_to_write_seconds.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge<i64, AtomicI64>>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "The gateway's version (value 1)", build_info);
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            connections,
            connects,
            events_in,
            events_out,
            errors,
            transport_connections,
            http_requests,
            inbound_seconds,
            publish_seconds,
            publish_to_write_seconds,
            totals: Arc::new(Totals::default()),
        }
    }

    /// Counts one client event received (`label`: its name, or `unknown`).
    pub fn count_in(&self, label: &str) {
        self.totals.by_name_in.inc(&self.events_in, label);
        self.totals.events_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one published event.
    pub fn count_out(&self, event: &str) {
        self.totals.by_name_out.inc(&self.events_out, event);
        self.totals.events_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Client events received since start, every name together.
    pub fn events_in_total(&self) -> u64 {
        self.totals.events_in.load(Ordering::Relaxed)
    }

    /// Events published since start, every name together.
    pub fn events_out_total(&self) -> u64 {
        self.totals.events_out.load(Ordering::Relaxed)
    }

    /// The most recent failures, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.totals.recent.lock().iter().cloned().collect()
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
        self.error_with(kind, kind);
    }

    /// Counts one failure of `kind`, and keeps `message` among the recent ones.
    pub fn error_with(&self, kind: &str, message: &str) {
        self.errors_with(kind, 1, message);
    }

    /// Counts `n` failures of `kind` that `message` tells of together, and keeps it among the
    /// recent ones.
    pub fn errors_with(&self, kind: &str, n: u64, message: &str) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(n);
        let mut recent = self.totals.recent.lock();
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back(RecentError {
            at: SystemTime::now(),
            kind: kind.to_owned(),
            message: message.chars().take(300).collect(),
        });
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

/// `route` as a label that lives as long as the process: the routes are the ones the
/// router declares, so each is kept once.
fn route_label(route: &str) -> &'static str {
    static ROUTES: std::sync::LazyLock<
        parking_lot::RwLock<std::collections::HashSet<&'static str>>,
    > = std::sync::LazyLock::new(Default::default);
    if let Some(r) = ROUTES.read().get(route) {
        return r;
    }
    let mut routes = ROUTES.write();
    if let Some(r) = routes.get(route) {
        return r;
    }
    let r: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.insert(r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_by_name_whether_met_before_or_not() {
        let m = Metrics::new();
        m.count_out("message:status");
        m.count_out("message:status");
        m.count_out("custom:thing");
        m.count_in("conversation:join");
        m.count_in("unknown");
        m.count_in("unknown");
        let text = m.encode();
        for line in [
            "switchboard_events_out_total{event=\"message:status\"} 2",
            "switchboard_events_out_total{event=\"custom:thing\"} 1",
            "switchboard_events_in_total{event=\"conversation:join\"} 1",
            "switchboard_events_in_total{event=\"unknown\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!((m.events_out_total(), m.events_in_total()), (3, 3));
        // The family itself holds the same counters as the names.
        let direct = m
            .events_out
            .get_or_create(&EventLabels {
                event: "message:status".to_owned(),
            })
            .get();
        assert_eq!(direct, 2);
    }
}
