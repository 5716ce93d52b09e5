//! The runtime: a [`Gateway`] wires the configured plugins and runs the event pipeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::access::RoomAccess;
use crate::auth::{AuthError, Authenticator, Handshake, Identity};
use crate::broker::{ConnId, Delivery, LocalHub, Reach, Room, RoomBroker};
use crate::config::{Config, LimitsConfig};
use crate::event::{self, ErrorKind, EventError, EventHandler, Outcome};
use crate::expiry::{Expiry, ExpiryKey};
use crate::hooks::{Direction, HookCtx, Hooks, Source, Verdict};
use crate::metrics::{EventLabels, Metrics};
use crate::presence::{PresenceChange, PresenceStore};
use crate::transport::{CloseReason, Connection};

/// How long an announcement of a change the presence store found waits for the broker.
const STORE_CHANGE_BROKER_WAIT: Duration = Duration::from_secs(10);

/// The event a client sends to replace its token on a live connection.
pub const AUTH_REFRESH: &str = "auth:refresh";

/// The plugins a gateway runs with.
pub struct Parts {
    /// The core config.
    pub config: Arc<Config>,
    /// Authenticator.
    pub auth: Arc<dyn Authenticator>,
    /// Presence store.
    pub presence: Arc<dyn PresenceStore>,
    /// Room broker.
    pub broker: Arc<dyn RoomBroker>,
    /// Event handlers, in config order.
    pub handlers: Vec<Arc<dyn EventHandler>>,
    /// Hooks, in order.
    pub hooks: Vec<Arc<dyn Hooks>>,
    /// This node's transports.
    pub hub: LocalHub,
    /// Metrics.
    pub metrics: Metrics,
    /// Room access policies.
    pub access: RoomAccess,
}

struct Inner {
    config: Arc<Config>,
    auth: Arc<dyn Authenticator>,
    presence: Arc<dyn PresenceStore>,
    broker: Arc<dyn RoomBroker>,
    inbound: HashMap<String, Arc<dyn EventHandler>>,
    outbound: HashMap<String, Arc<dyn EventHandler>>,
    hooks: Vec<Arc<dyn Hooks>>,
    hub: LocalHub,
    metrics: Metrics,
    access: RoomAccess,
    per_user: Mutex<HashMap<String, usize>>,
    log_limit: LogLimiter,
    expiry: Expiry,
}

/// The running core of a node: transports call it, the HTTP API and Rust code publish through it.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("hub", &self.0.hub).finish()
    }
}

/// A request to publish one event.
#[derive(Debug, Clone, Deserialize)]
pub struct Publish {
    /// The event name.
    pub event: String,
    /// Its payload.
    pub data: Value,
    /// An explicit room; required for events no plugin owns.
    #[serde(default)]
    pub room: Option<String>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The room it went to.
    pub room: Room,
    /// Whether a hook dropped it.
    pub dropped: bool,
    /// Whether it reached only this node's members (the broker's backend was unreachable).
    pub local_only: bool,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No plugin owns the event and no room was given.
    #[error("Unknown event: {0}; give a \"room\" to publish an event no plugin owns")]
    UnknownEvent(String),
    /// The data is not of the event's shape (names the field).
    #[error("{0}")]
    Invalid(String),
    /// The broker's backend did not take it.
    #[error("{0}")]
    Backend(String),
}

impl Gateway {
    /// Wires the plugins into a gateway and starts the presence store's background work.
    pub fn new(parts: Parts) -> Self {
        let mut inbound = HashMap::new();
        let mut outbound = HashMap::new();
        for h in &parts.handlers {
            for ev in h.inbound_events() {
                inbound.entry((*ev).to_owned()).or_insert_with(|| h.clone());
            }
            for ev in h.outbound_events() {
                outbound
                    .entry((*ev).to_owned())
                    .or_insert_with(|| h.clone());
            }
        }
        let expiry = Expiry::new(parts.config.auth.refresh_notice.get(), parts.auth.leeway());
        Gateway(Arc::new(Inner {
            config: parts.config,
            auth: parts.auth,
            presence: parts.presence,
            broker: parts.broker,
            inbound,
            outbound,
            hooks: parts.hooks,
            hub: parts.hub,
            metrics: parts.metrics,
            access: parts.access,
            per_user: Mutex::new(HashMap::new()),
            log_limit: LogLimiter::new(Duration::from_secs(10)),
            expiry,
        }))
    }

    /// Starts background work: hooks, the broker, the presence store, and announcing the
    /// changes presence finds by itself. Backend failures are logged; the node serves anyway.
    pub async fn start(&self) {
        for h in &self.0.hooks {
            h.start();
        }
        if let Err(e) = self.0.broker.start().await {
            tracing::warn!(error = %e, "room broker did not start; it keeps retrying");
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            // Whether to wait for the broker: not again after a wait that ran out, until
            // the broker is seen ready (a backlog must not wait once per change).
            let mut patient = true;
            while let Some(change) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let gw = Gateway(inner);
                // Changes found after an outage come as the backends return: give the
                // broker a moment to be back too, so the announcement reaches other nodes.
                let limit = if patient {
                    STORE_CHANGE_BROKER_WAIT
                } else {
                    Duration::ZERO
                };
                patient = gw.wait_for_broker(limit).await;
                match change {
                    PresenceChange::Offline(user) => {
                        gw.announce("user:offline", &user, None).await;
                    }
                    PresenceChange::Online { user, conn } => {
                        // Not when every connection of the user closed meanwhile.
                        let live = gw.0.per_user.lock().get(&user).is_some_and(|n| *n > 0);
                        if live {
                            gw.announce("user:online", &user, Some(conn)).await;
                        }
                    }
                }
            }
        });
        if let Err(e) = self.0.presence.start(tx).await {
            tracing::warn!(error = %e, "presence store did not start; it keeps retrying");
        }
    }

    /// Waits until the broker is ready, for at most `limit`; whether it is.
    async fn wait_for_broker(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.0.broker.ready().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The core config.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The presence store.
    pub fn presence(&self) -> &Arc<dyn PresenceStore> {
        &self.0.presence
    }

    /// Whether every backend answers.
    pub async fn ready(&self) -> bool {
        self.0.broker.ready().await && self.0.presence.ready().await
    }

    /// Stops the plugins' background work (after transports closed their sockets).
    pub async fn shutdown(&self) {
        self.0.broker.shutdown().await;
        self.0.presence.shutdown().await;
    }

    /// Authenticates a handshake, counting failures.
    ///
    /// A verified identity may still be refused by `limits.max_connections` or
    /// `limits.max_connections_per_user` ([`AuthError::Refused`]).
    pub async fn authenticate(&self, handshake: &Handshake<'_>) -> Result<Identity, AuthError> {
        let result = self.0.auth.authenticate(handshake).await.and_then(|id| {
            self.admit(&id.user_id)?;
            Ok(id)
        });
        if let Err(e) = &result {
            self.0.metrics.error(match e {
                AuthError::NoToken => "auth_no_token",
                AuthError::InvalidToken => "auth_invalid_token",
                AuthError::Refused(_) => "connection_limit",
            });
        }
        result
    }

    fn admit(&self, user: &str) -> Result<(), AuthError> {
        let limits = &self.0.config.limits;
        let open = usize::try_from(self.0.metrics.connections.get()).unwrap_or(0);
        if limits.max_connections > 0 && open >= limits.max_connections {
            return Err(AuthError::Refused(
                "Connection refused: this node is at its connection limit".to_owned(),
            ));
        }
        let mine = self.0.per_user.lock().get(user).copied().unwrap_or(0);
        if limits.max_connections_per_user > 0 && mine >= limits.max_connections_per_user {
            return Err(AuthError::Refused(format!(
                "Connection refused: at most {} connections per user",
                limits.max_connections_per_user
            )));
        }
        Ok(())
    }

    /// Registers an authenticated connection: presence, `user:online`, the token's expiry timer.
    pub async fn connect(&self, conn: Arc<dyn Connection>, identity: Identity) -> Arc<Session> {
        let limits = &self.0.config.limits;
        let session = Arc::new(Session {
            conn,
            identity: RwLock::new(Arc::new(identity)),
            rooms: Mutex::new(Vec::new()),
            bucket: Mutex::new(TokenBucket::new(limits.events_per_second, limits.burst)),
            expiry: Mutex::new(None),
        });
        self.0.metrics.connections.inc();
        self.0.metrics.connects.inc();
        let user = session.user_id();
        *self.0.per_user.lock().entry(user.clone()).or_insert(0) += 1;
        match self.0.presence.connect(&user, session.id()).await {
            Ok(true) => {
                self.announce("user:online", &user, Some(session.id().clone()))
                    .await
            }
            Ok(false) => {}
            Err(e) => self.backend_error("presence", &e.to_string()),
        }
        self.0.expiry.schedule(&session);
        tracing::debug!(socket = %session.id(), user = %user, "connected");
        session
    }

    /// Unregisters a closed connection: its rooms, presence, `user:offline`.
    pub async fn disconnect(&self, session: &Arc<Session>) {
        self.0.expiry.cancel(session);
        let rooms = std::mem::take(&mut *session.rooms.lock());
        for room in &rooms {
            if let Err(e) = self.0.broker.leave(room, session.id()).await {
                self.backend_error("broker", &e.to_string());
            }
        }
        self.0.metrics.connections.dec();
        let user = session.user_id();
        {
            let mut per_user = self.0.per_user.lock();
            if let Some(n) = per_user.get_mut(&user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_user.remove(&user);
                }
            }
        }
        match self.0.presence.disconnect(&user, session.id()).await {
            Ok(true) => self.announce("user:offline", &user, None).await,
            Ok(false) => {}
            Err(e) => self.backend_error("presence", &e.to_string()),
        }
        tracing::debug!(socket = %session.id(), user = %user, "disconnected");
    }

    /// Handles one client event: `size` is its length on the wire, `payload` its JSON text.
    ///
    /// Sends the reply event or `error` to the socket, and returns what an ack carries.
    pub async fn inbound(
        &self,
        session: &Arc<Session>,
        event: &str,
        size: usize,
        payload: Option<&RawValue>,
    ) -> Value {
        let known = self.0.inbound.contains_key(event) || event == AUTH_REFRESH;
        self.0
            .metrics
            .events_in
            .get_or_create(&EventLabels {
                event: if known { event } else { "unknown" }.to_owned(),
            })
            .inc();
        let result = self.inbound_inner(session, event, size, payload).await;
        self.reply(session, result)
    }

    /// Answers a frame the transport could not decode with `error`; returns the ack.
    pub fn inbound_malformed(&self, session: &Arc<Session>, reason: &str) -> Value {
        let err = match self.check_rate(session) {
            Err(limited) => limited,
            Ok(()) => EventError::new(
                ErrorKind::InvalidPayload,
                format!("Malformed event: {reason}"),
            ),
        };
        self.reply(session, Err(err))
    }

    fn reply(&self, session: &Arc<Session>, result: Result<Option<Outcome>, EventError>) -> Value {
        match result {
            Ok(Some(Outcome::Reply { event, data })) => {
                session.send_value(event, &data);
                data
            }
            Ok(Some(Outcome::Done)) => json!({ "success": true }),
            Ok(None) => json!({ "success": false, "error": "Event dropped" }),
            Err(e) => {
                self.0.metrics.error(e.kind.label());
                session.send_error(&e.message);
                json!({ "success": false, "error": e.message })
            }
        }
    }

    async fn inbound_inner(
        &self,
        session: &Arc<Session>,
        event: &str,
        size: usize,
        payload: Option<&RawValue>,
    ) -> Result<Option<Outcome>, EventError> {
        let limits = &self.0.config.limits;
        self.check_rate(session)?;
        if size > limits.max_event_bytes.bytes() {
            return Err(EventError::new(
                ErrorKind::TooLarge,
                format!(
                    "Event too large: {size} bytes (limit {} bytes)",
                    limits.max_event_bytes.bytes()
                ),
            ));
        }
        let payload = decode_payload(payload, limits)?;
        if event == AUTH_REFRESH {
            return self.refresh(session, &payload).await.map(Some);
        }
        let Some(handler) = self.0.inbound.get(event).cloned() else {
            return Err(EventError::new(
                ErrorKind::UnknownEvent,
                format!("Unknown event: {event}"),
            ));
        };
        let payload = if self.0.hooks.is_empty() {
            payload
        } else {
            let identity = session.identity();
            let ctx = HookCtx {
                direction: Direction::Inbound,
                room: None,
                source: Source::Socket,
                user_id: Some(&identity.user_id),
                socket_id: Some(session.id().as_str()),
                claims: Some(&identity.claims),
            };
            match self.run_hooks(event, payload, &ctx, Direction::Inbound) {
                Some(p) => p,
                None => return Ok(None),
            }
        };
        let ctx = InboundCtx { gw: self, session };
        handler.handle(&ctx, event, payload).await.map(Some)
    }

    fn check_rate(&self, session: &Session) -> Result<(), EventError> {
        let limits = &self.0.config.limits;
        let verdict = session.bucket.lock().take(Instant::now());
        match verdict {
            Rate::Allowed => Ok(()),
            Rate::Limited { over_for } => {
                let after = limits.rate_disconnect_after.get();
                if !after.is_zero() && over_for >= after {
                    self.0.metrics.error("rate_disconnect");
                    tracing::info!(socket = %session.id(), "disconnecting a socket that stayed over its event rate");
                    session.send_error("Disconnected: over the event rate for too long");
                    session.conn.close(CloseReason::RateAbuse);
                }
                Err(EventError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "Rate limit exceeded: at most {} events per second (burst {})",
                        limits.events_per_second, limits.burst
                    ),
                ))
            }
        }
    }

    async fn refresh(
        &self,
        session: &Arc<Session>,
        payload: &Value,
    ) -> Result<Outcome, EventError> {
        #[derive(Deserialize)]
        struct Refresh {
            token: String,
        }
        let req: Refresh = event::parse_payload(AUTH_REFRESH, payload)?;
        let fail = |why: &str| {
            EventError::new(
                ErrorKind::Unauthorized,
                format!("Token refresh failed: {why}"),
            )
        };
        let identity = self
            .0
            .auth
            .verify_token(&req.token)
            .await
            .map_err(|_| fail("invalid token"))?;
        if identity.user_id != session.user_id() {
            return Err(fail("the token is for another user"));
        }
        let expires_at = identity.expires_at;
        *session.identity.write() = Arc::new(identity);
        self.0.expiry.schedule(session);
        Ok(Outcome::Reply {
            event: "auth:refreshed",
            data: json!({ "expiresAt": expires_at.map(iso8601_secs) }),
        })
    }

    /// Publishes an event from a backend (HTTP API or Rust code): validate, route, hook, deliver.
    pub async fn publish(&self, req: Publish) -> Result<Published, PublishError> {
        let limits = &self.0.config.limits;
        let owner = self.0.outbound.get(&req.event);
        let routed = match owner {
            Some(h) => Some(
                h.route(&req.event, &req.data, limits)
                    .map_err(|e| PublishError::Invalid(e.message))?,
            ),
            None => None,
        };
        let room: Room = match (req.room, routed) {
            (Some(room), _) => {
                if room.is_empty() || room.chars().count() > limits.max_id_chars + 64 {
                    return Err(PublishError::Invalid(format!(
                        "room: must be a non-empty string of at most {} characters",
                        limits.max_id_chars + 64
                    )));
                }
                Room::from(room)
            }
            (None, Some(room)) => room,
            (None, None) => return Err(PublishError::UnknownEvent(req.event)),
        };
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: Some(&room),
            source: Source::Api,
            user_id: None,
            socket_id: None,
            claims: None,
        };
        let reach = self
            .publish_routed(&req.event, Some(room.clone()), req.data, None, &ctx)
            .await
            .map_err(|e| PublishError::Backend(e.message))?;
        Ok(Published {
            room,
            dropped: reach.is_none(),
            local_only: reach == Some(Reach::LocalOnly),
        })
    }

    /// Runs `on_outbound` once, serializes once and hands the delivery to the broker.
    ///
    /// Returns how far it reached, or `None` when a hook dropped the event.
    async fn publish_routed(
        &self,
        event: &str,
        room: Option<Room>,
        data: Value,
        except: Option<ConnId>,
        ctx: &HookCtx<'_>,
    ) -> Result<Option<Reach>, EventError> {
        let Some(data) = self.run_hooks(event, data, ctx, Direction::Outbound) else {
            return Ok(None);
        };
        let delivery = Delivery::encode(event, room, &data)
            .map_err(|e| EventError::new(ErrorKind::InvalidPayload, e.to_string()))?
            .except(except);
        self.0
            .metrics
            .events_out
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
        match self.0.broker.publish(Arc::new(delivery)).await {
            Ok(reach) => Ok(Some(reach)),
            Err(e) => {
                self.backend_error("broker", &e.to_string());
                Err(EventError::new(ErrorKind::Backend, e.to_string()))
            }
        }
    }

    /// Sends `user:online`/`user:offline` to the whole namespace (except the new socket).
    async fn announce(&self, event: &str, user: &str, except: Option<ConnId>) {
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: None,
            source: Source::Api,
            user_id: Some(user),
            socket_id: except.as_ref().map(ConnId::as_str),
            claims: None,
        };
        let _ = self
            .publish_routed(event, None, json!({ "userId": user }), except.clone(), &ctx)
            .await;
    }

    /// Runs the hooks in order; `None` when one dropped the event.
    fn run_hooks(
        &self,
        event: &str,
        mut payload: Value,
        ctx: &HookCtx<'_>,
        dir: Direction,
    ) -> Option<Value> {
        for hook in &self.0.hooks {
            let verdict = match dir {
                Direction::Inbound => hook.on_inbound(event, payload, ctx),
                Direction::Outbound => hook.on_outbound(event, payload, ctx),
            };
            match verdict {
                Verdict::Pass(p) => payload = p,
                Verdict::Drop => return None,
            }
        }
        Some(payload)
    }

    fn backend_error(&self, what: &'static str, message: &str) {
        self.0.metrics.error("backend");
        if self.0.log_limit.allow(what) {
            tracing::warn!(backend = what, error = %message, "backend call failed; local delivery continues");
        }
    }
}

/// Parses a payload's JSON text and checks its depth; an absent payload is `null`.
fn decode_payload(raw: Option<&RawValue>, limits: &LimitsConfig) -> Result<Value, EventError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let payload: Value = serde_json::from_str(raw.get()).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            too_deep(limits)
        } else {
            EventError::new(ErrorKind::InvalidPayload, format!("Malformed event: {e}"))
        }
    })?;
    if event::depth(&payload) > limits.max_depth {
        return Err(too_deep(limits));
    }
    Ok(payload)
}

fn too_deep(limits: &LimitsConfig) -> EventError {
    EventError::new(
        ErrorKind::TooDeep,
        format!(
            "Payload nested too deep (limit {} levels)",
            limits.max_depth
        ),
    )
}

/// A live connection's state in the core.
pub struct Session {
    conn: Arc<dyn Connection>,
    identity: RwLock<Arc<Identity>>,
    rooms: Mutex<Vec<Room>>,
    bucket: Mutex<TokenBucket>,
    /// Its place in the node's expiry timer, while it has one.
    pub(crate) expiry: Mutex<Option<ExpiryKey>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", self.id()).finish()
    }
}

impl Session {
    /// The socket id.
    pub fn id(&self) -> &ConnId {
        self.conn.id()
    }
    /// The current identity (replaced by `auth:refresh`).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.read().clone()
    }
    /// The user id.
    pub fn user_id(&self) -> String {
        self.identity.read().user_id.clone()
    }
    /// The rooms this socket is in.
    pub fn rooms(&self) -> Vec<Room> {
        self.rooms.lock().clone()
    }
    /// Sends one event to this socket alone.
    pub fn send_value(&self, event: &str, data: &Value) {
        if let Ok(raw) = serde_json::value::to_raw_value(data) {
            self.conn.send(event, &raw);
        }
    }
    /// Sends the contract's `error` event `{message, timestamp}`.
    pub fn send_error(&self, message: &str) {
        self.send_value(
            "error",
            &json!({ "message": message, "timestamp": iso8601_now() }),
        );
    }
    /// Closes the connection.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.conn.close(reason);
    }
    /// Sends pre-encoded JSON to this socket alone.
    pub fn send_raw(&self, event: &str, payload: &RawValue) {
        self.conn.send(event, payload);
    }
}

/// What an [`EventHandler`] can do while handling a client's event.
pub struct InboundCtx<'a> {
    gw: &'a Gateway,
    session: &'a Arc<Session>,
}

impl InboundCtx<'_> {
    /// The sender's identity.
    pub fn identity(&self) -> Arc<Identity> {
        self.session.identity()
    }
    /// The sender's socket.
    pub fn session(&self) -> &Arc<Session> {
        self.session
    }
    /// The configured limits.
    pub fn limits(&self) -> &LimitsConfig {
        &self.gw.0.config.limits
    }

    /// Joins `room` if the room policy and the hooks allow it; effective cluster-wide when
    /// this returns.
    pub async fn join(&self, room: Room) -> Result<(), EventError> {
        let identity = self.session.identity();
        if self.session.rooms.lock().contains(&room) {
            return Ok(());
        }
        let max = self.gw.0.config.limits.max_rooms_per_socket;
        if self.session.rooms.lock().len() >= max {
            return Err(EventError::new(
                ErrorKind::RoomLimit,
                format!("Too many rooms: at most {max} per socket"),
            ));
        }
        self.gw.0.access.check(&identity, &room).await?;
        let ctx = HookCtx {
            direction: Direction::Inbound,
            room: Some(&room),
            source: Source::Socket,
            user_id: Some(&identity.user_id),
            socket_id: Some(self.session.id().as_str()),
            claims: Some(&identity.claims),
        };
        if !self.gw.0.hooks.iter().all(|h| h.authorize(&ctx)) {
            return Err(EventError::new(
                ErrorKind::Unauthorized,
                format!("Not authorized to join {room}"),
            ));
        }
        self.gw
            .0
            .broker
            .join(&room, self.session.id())
            .await
            .map_err(|e| {
                self.gw.backend_error("broker", &e.to_string());
                EventError::new(
                    ErrorKind::Backend,
                    format!("Could not join {room}: backend unavailable"),
                )
            })?;
        self.session.conn.join(&room);
        let mut rooms = self.session.rooms.lock();
        if !rooms.contains(&room) {
            rooms.push(room);
        }
        Ok(())
    }

    /// Leaves `room` (a no-op when not in it).
    pub async fn leave(&self, room: Room) -> Result<(), EventError> {
        let was_in = {
            let mut rooms = self.session.rooms.lock();
            let before = rooms.len();
            rooms.retain(|r| *r != room);
            rooms.len() != before
        };
        self.session.conn.leave(&room);
        if was_in && let Err(e) = self.gw.0.broker.leave(&room, self.session.id()).await {
            self.gw.backend_error("broker", &e.to_string());
        }
        Ok(())
    }

    /// Publishes to `room` through the outbound pipeline (hooks once, encode once, broker).
    ///
    /// With `except_sender`, the sending socket does not receive it. Returns `false` if dropped.
    pub async fn publish(
        &self,
        room: Room,
        event: &str,
        data: Value,
        except_sender: bool,
    ) -> Result<bool, EventError> {
        let identity = self.session.identity();
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: Some(&room),
            source: Source::Socket,
            user_id: Some(&identity.user_id),
            socket_id: Some(self.session.id().as_str()),
            claims: Some(&identity.claims),
        };
        let except = except_sender.then(|| self.session.id().clone());
        self.gw
            .publish_routed(event, Some(room.clone()), data, except, &ctx)
            .await
            .map(|reach| reach.is_some())
    }
}

/// The result of taking a token from a socket's bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    Allowed,
    Limited { over_for: Duration },
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    over_since: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            over_since: None,
        }
    }

    fn take(&mut self, now: Instant) -> Rate {
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
struct LogLimiter {
    period: Duration,
    last: Mutex<HashMap<&'static str, Instant>>,
}

impl LogLimiter {
    fn new(period: Duration) -> Self {
        LogLimiter {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }
    fn allow(&self, key: &'static str) -> bool {
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

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The current time in ISO 8601 (UTC, milliseconds), as the contract's `timestamp`.
pub fn iso8601_now() -> String {
    format_iso(time::OffsetDateTime::now_utc())
}

/// A Unix time in seconds, in ISO 8601.
pub fn iso8601_secs(secs: u64) -> String {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format_iso(t)
}

fn format_iso(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
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
    fn payload_decoding_checks_depth() {
        let limits = LimitsConfig {
            max_depth: 2,
            ..LimitsConfig::default()
        };
        let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("json");
        assert_eq!(
            decode_payload(Some(&raw(r#"{"a":1}"#)), &limits).expect("ok"),
            json!({"a": 1})
        );
        assert_eq!(decode_payload(None, &limits).expect("ok"), Value::Null);
        let deep = decode_payload(Some(&raw(r#"{"a":{"b":{}}}"#)), &limits).expect_err("deep");
        assert_eq!(deep.kind, ErrorKind::TooDeep);
    }

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601_secs(0), "1970-01-01T00:00:00.000Z");
        assert!(iso8601_now().ends_with('Z'));
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_period() {
        let l = LogLimiter::new(Duration::from_secs(60));
        assert!(l.allow("redis"));
        assert!(!l.allow("redis"));
        assert!(l.allow("other"));
    }
}
