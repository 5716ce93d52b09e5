//! The runtime: a [`Gateway`] runs a node's plugins and the event pipeline.
//!
//! One event's path, whichever transport it came through:
//!
//! ```text
//!  transport ──▶ limits ──▶ on_inbound hooks ──▶ handler (declared by an event set)
//!     ▲                                              │ join / leave        │ publish
//!     │                                              ▼                     ▼
//!     │                                     rooms (membership) ◀── on_outbound hooks, encode once
//!     │                                       │  first/last member        │
//!     │                                       ▼                           ▼
//!     └──── transports frame once ◀── rooms deliver ◀── inbox ◀── broker (pub/sub, all nodes)
//! ```
//!
//! - [`lifecycle`]: start and stop, connect and disconnect, presence announcements;
//! - [`inbound`]: a client's event, from limits to its handler and the reply;
//! - [`publish`]: the outbound path, from the HTTP API or a handler to the broker.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::access::RoomAccess;
use crate::auth::Authenticator;
use crate::broker::RoomBroker;
use crate::config::Config;
use crate::event::EventTable;
use crate::expiry::Expiry;
use crate::hooks::Hooks;
use crate::limits::LogLimiter;
use crate::metrics::Metrics;
use crate::presence::PresenceStore;
use crate::rooms::Rooms;
use crate::transport::{Transport, TransportId};

mod control;
mod inbound;
mod lifecycle;
mod publish;
mod recover;

pub use control::{ControlError, RoomView, SentToUser};
pub(crate) use inbound::expires_at_payload;
pub(crate) use publish::bad_room_name;
pub use publish::{Publish, PublishError, Published};
pub use recover::{Connected, Leaving, RecoveryRequest};

/// The parts a gateway runs with, already built.
pub(crate) struct Parts {
    pub(crate) config: Arc<Config>,
    pub(crate) node_id: Arc<str>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) broker: Arc<dyn RoomBroker>,
    pub(crate) events: EventTable,
    pub(crate) hooks: Vec<Arc<dyn Hooks>>,
    pub(crate) metrics: Metrics,
    pub(crate) access: RoomAccess,
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) node_id: Arc<str>,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    pub(crate) broker: Arc<dyn RoomBroker>,
    pub(crate) rooms: Arc<Rooms>,
    pub(crate) events: EventTable,
    pub(crate) hooks: Vec<Arc<dyn Hooks>>,
    pub(crate) metrics: Metrics,
    pub(crate) access: RoomAccess,
    /// Open sessions per user on this node.
    pub(crate) per_user: Mutex<HashMap<String, Vec<Arc<crate::session::Session>>>>,
    /// When the node started (`GET /api/v1/nodes`).
    pub(crate) started_at: std::time::Instant,
    pub(crate) log_limit: LogLimiter,
    pub(crate) expiry: Expiry,
    pub(crate) started: std::sync::atomic::AtomicBool,
    /// Dropped sessions this node may still hand over, by recovery id.
    pub(crate) dropped: Mutex<HashMap<Arc<str>, Dropped>>,
    /// Tracked sessions whose transport ended and that are not yet kept for recovery (or
    /// not), per user: between `per_user` and `dropped`, where a control call finds them.
    pub(crate) closing: Mutex<HashMap<String, Vec<Arc<crate::session::Session>>>>,
    /// Live tracked sessions, by recovery id.
    pub(crate) by_pid: Mutex<HashMap<Arc<str>, Weak<crate::session::Session>>>,
    /// The delivery checkpoints last written, by room.
    pub(crate) checkpointed:
        Mutex<HashMap<crate::broker::Room, Vec<(u64, crate::broker::Position)>>>,
    /// The control log entries this node carried out lately.
    pub(crate) control_applied: Mutex<control::Applied>,
}

/// A dropped session this node keeps for recovery, and when it dropped.
pub(crate) type Dropped = (Arc<crate::session::Session>, std::time::Instant);

/// The running core of a node: transports call it, the HTTP API and Rust code publish through it.
#[derive(Clone)]
pub struct Gateway(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.0.node_id)
            .field(
                "transports",
                &self
                    .0
                    .rooms
                    .transports()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a transport holds of its gateway: it does not keep the gateway alive.
#[derive(Clone)]
pub struct GatewayHandle {
    inner: Weak<Inner>,
    transport: TransportId,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHandle")
            .field("transport", &self.transport)
            .finish()
    }
}

impl GatewayHandle {
    /// A handle that never reaches a gateway (what plugins other than transports get; also
    /// for a transport's own tests).
    pub fn detached() -> Self {
        GatewayHandle {
            inner: Weak::new(),
            transport: TransportId::DIRECT,
        }
    }

    /// The gateway, while the node runs.
    pub fn get(&self) -> Option<Gateway> {
        self.inner.upgrade().map(Gateway)
    }

    /// The id the gateway knows this transport's sessions by.
    pub fn transport(&self) -> TransportId {
        self.transport
    }
}

/// Builds one transport with its handle; `None` when its config disables it.
pub(crate) type TransportBuild<'a> =
    Box<dyn FnOnce(GatewayHandle) -> Option<Arc<dyn Transport>> + 'a>;

impl Gateway {
    /// Wires `parts` and the transports that `transports` build into a gateway.
    pub(crate) fn assemble(parts: Parts, transports: Vec<TransportBuild<'_>>) -> Gateway {
        let rooms_gauge = prometheus_client::metrics::gauge::Gauge::default();
        parts
            .metrics
            .register("rooms", "Rooms with local members", rooms_gauge.clone());
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let mut built: Vec<Arc<dyn Transport>> = Vec::new();
            for build in transports {
                let handle = GatewayHandle {
                    inner: weak.clone(),
                    transport: TransportId(built.len() + 1),
                };
                if let Some(t) = build(handle) {
                    built.push(t);
                }
            }
            let expiry = Expiry::new(parts.config.auth.refresh_notice.get(), parts.auth.leeway());
            let cfg = &parts.config;
            let keeper = cfg.recovery.enabled.then(|| {
                Arc::new(crate::rooms::Keeper::new(
                    crate::recovery::node_tag(&parts.node_id),
                    cfg.history.size.max(1),
                    cfg.recovery.max_disconnection.get() + Duration::from_secs(30),
                ))
            });
            Inner {
                rooms: Arc::new(Rooms::new(
                    built,
                    parts.broker.clone(),
                    rooms_gauge,
                    parts.metrics.publish_to_write_seconds.clone(),
                    keeper,
                )),
                config: parts.config,
                node_id: parts.node_id,
                auth: parts.auth,
                presence: parts.presence,
                broker: parts.broker,
                events: parts.events,
                hooks: parts.hooks,
                metrics: parts.metrics,
                access: parts.access,
                per_user: Mutex::new(HashMap::new()),
                started_at: std::time::Instant::now(),
                log_limit: LogLimiter::new(Duration::from_secs(10)),
                expiry,
                started: std::sync::atomic::AtomicBool::new(false),
                dropped: Mutex::new(HashMap::new()),
                closing: Mutex::new(HashMap::new()),
                by_pid: Mutex::new(HashMap::new()),
                checkpointed: Mutex::new(HashMap::new()),
                control_applied: Mutex::new(control::Applied::default()),
            }
        });
        Gateway(inner)
    }

    /// The core config.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// This node's id, the one its broker and presence store use too.
    pub fn node_id(&self) -> &str {
        &self.0.node_id
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The presence store.
    pub fn presence(&self) -> &Arc<dyn PresenceStore> {
        &self.0.presence
    }

    /// The declared events.
    pub fn events(&self) -> &EventTable {
        &self.0.events
    }

    /// The node's transports.
    pub fn transports(&self) -> &[Arc<dyn Transport>] {
        self.0.rooms.transports()
    }

    /// How many sockets of this node are in `room`.
    pub fn local_members(&self, room: &str) -> usize {
        self.0.rooms.members(room)
    }

    /// The ids of this node's sockets in `room`.
    pub fn local_member_ids(&self, room: &str) -> Vec<crate::ConnId> {
        self.0.rooms.member_ids(room)
    }

    /// How many rooms this node is subscribed to (rooms with local members).
    pub fn subscribed_rooms(&self) -> usize {
        self.0.rooms.subscribed()
    }

    /// The name of the transport a session came through (`direct` for Rust code's own).
    pub fn transport_name(&self, t: crate::transport::TransportId) -> &str {
        match t.0.checked_sub(1) {
            Some(i) => self
                .0
                .rooms
                .transports()
                .get(i)
                .map_or("unknown", |t| t.name()),
            None => "direct",
        }
    }

    /// The names of the node's transports, in order.
    pub fn transport_names(&self) -> Vec<String> {
        self.0
            .rooms
            .transports()
            .iter()
            .map(|t| t.name().to_owned())
            .collect()
    }

    /// Logs a backend failure at a bounded rate and counts it.
    pub(crate) fn backend_error(&self, what: &'static str, message: &str) {
        self.0.backend_error(what, message);
    }
}

impl Inner {
    pub(crate) fn backend_error(&self, what: &'static str, message: &str) {
        self.metrics
            .error_with("backend", &format!("{what}: {message}"));
        if self.log_limit.allow(what) {
            tracing::warn!(backend = what, error = %message, "backend call failed; local delivery continues");
        }
    }
}
