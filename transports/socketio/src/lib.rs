//! `transports.socketio`: Socket.IO v5 (socket.io-client 4.x) over WebSocket and long-polling.
//!
//! Connections are authenticated in a connect middleware, so a refused client gets
//! `connect_error` with the authenticator's exact message. Every event goes through the core's
//! pipeline; the transport takes each event's [`Ticket`] as socketioxide hands it the event,
//! before its handler task runs, so a socket's joins and leaves apply in the order it sent
//! them. The core owns room membership and mirrors it into socketioxide's rooms
//! ([`Connection::join`]), so a delivery is framed once by socketioxide's local adapter and
//! the same bytes go to every member.

use std::sync::Arc;

mod connect_pid;

use connect_pid::Pids;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessage, FromMessageParts};
use socketioxide::socket::DisconnectReason;
use socketioxide::socket::Socket;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};
use switchboard_core::runtime::{Leaving, RecoveryRequest};
use switchboard_core::{
    BoxError, CloseReason, ConnId, Connection, Delivery, Dur, Factory, GatewayHandle, Handshake,
    Metrics, Plugin, PluginContext, QueueFull, Recipients, Room, Session, Size, Ticket, Transport,
    async_trait, register_plugin,
};

/// `transports.socketio.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Serve Socket.IO at all.
    pub enabled: bool,
    /// The namespace clients connect to.
    pub namespace: String,
    /// Engine.IO ping interval.
    pub ping_interval: Dur,
    /// How long a client may take to answer a ping.
    pub ping_timeout: Dur,
    /// Largest frame (WebSocket message or polling payload); a bigger one closes the connection.
    pub max_frame_bytes: Size,
    /// Packets queued for one slow client; an event that does not fit is dropped, an ack waits.
    pub max_buffer_size: usize,
    /// How much a WebSocket reads at a time; the buffer grows for larger messages. Every
    /// idle socket holds one, so a small one saves memory per connection.
    pub ws_read_buffer_size: Size,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            namespace: "/messages".to_owned(),
            ping_interval: Dur::secs(25),
            ping_timeout: Dur::secs(20),
            max_frame_bytes: Size::mib(1),
            max_buffer_size: 1024,
            ws_read_buffer_size: Size(1024),
        }
    }
}

/// The Socket.IO transport.
pub struct SocketIoTransport {
    cfg: SocketIoConfig,
    io: SocketIo,
    router: Router,
    /// Whether a socket may track offsets (recovery is on).
    tracking: bool,
    /// Registers the namespace with its handlers.
    register: Register,
    /// Counts what full outgoing queues dropped.
    overflow: Overflow,
    /// The sockets of this node that do not track offsets.
    plain: Plain,
}

/// How many sockets of this node do not track offsets (recovery on, a client that said
/// `recovery: false`): while there are none, a room event goes to the rooms' tracked
/// variants without looking at the room's members.
#[derive(Clone, Default)]
struct Plain(Arc<std::sync::atomic::AtomicUsize>);

impl Plain {
    /// Counts one more plain socket until the guard is dropped.
    fn enter(&self) -> PlainGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PlainGuard(self.clone())
    }

    /// Whether a socket of this node may be plain.
    fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// A plain socket, counted in [`Plain`] while its connection lives.
struct PlainGuard(Plain);

impl Drop for PlainGuard {
    fn drop(&mut self) {
        (self.0)
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts the events a socket's full outgoing queue made it miss, in
/// `switchboard_errors_total{kind="queue_full"}`, once the node's metrics are known.
#[derive(Clone, Default)]
struct Overflow(Arc<std::sync::OnceLock<Metrics>>);

impl Overflow {
    /// Counts `n` events of `event` that full queues dropped (`to`: whose).
    fn dropped(&self, n: usize, event: &str, to: &dyn std::fmt::Display) {
        if n == 0 {
            return;
        }
        tracing::debug!(event = %event, sockets = n, "outgoing queue full; event dropped");
        if let Some(m) = self.0.get() {
            m.errors_with(
                "queue_full",
                n as u64,
                &format!("{event} not sent to {to}: the outgoing queue was full (a client reading slower than it is sent to)"),
            );
        }
    }

    /// Counts a send that failed; other failures than a full queue (a closed socket) are
    /// only logged.
    fn check(&self, sent: Result<(), SendError>, event: &str, socket: &ConnId) {
        match sent {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                self.dropped(1, event, &format_args!("socket {socket}"));
            }
            Err(e) => tracing::debug!(socket = %socket, error = %e, "could not send to socket"),
        }
    }
}

/// Registers the transport's namespace with its handlers on a [`SocketIo`].
type Register = Arc<dyn Fn(&SocketIo) + Send + Sync>;

/// The socketioxide room that mirrors a core room for the sockets that track offsets (they
/// get each room event with its offset as the last argument).
fn tracked(room: &str) -> String {
    format!("{room}\u{1}o")
}

impl std::fmt::Debug for SocketIoTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIoTransport")
            .field("namespace", &self.cfg.namespace)
            .finish()
    }
}

impl SocketIoTransport {
    /// A transport with `cfg` serving the gateway behind `gateway`.
    pub fn new(cfg: SocketIoConfig, gateway: GatewayHandle, handshake_timeout: Dur) -> Self {
        let frame = cfg.max_frame_bytes.bytes();
        let (svc, io) = SocketIo::builder()
            .ping_interval(cfg.ping_interval.get())
            .ping_timeout(cfg.ping_timeout.get())
            .connect_timeout(handshake_timeout.get())
            .max_buffer_size(cfg.max_buffer_size)
            .max_payload(frame as u64)
            .ws_max_message_size(frame)
            .ws_max_frame_size(frame)
            .ws_read_buffer_size(cfg.ws_read_buffer_size.bytes().max(64))
            .build_svc();
        let pids = Arc::new(Pids::default());
        let overflow = Overflow::default();
        let plain = Plain::default();
        let (admitting, registry, counting, plains) = (
            gateway.clone(),
            pids.clone(),
            overflow.clone(),
            plain.clone(),
        );
        let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
            admit(
                admitting.clone(),
                registry.clone(),
                counting.clone(),
                plains.clone(),
                s,
                auth.ok(),
            )
        };
        // Runs once the client has the CONNECT packet: a recovered socket's replay, and the
        // deliveries held for a socket that tracks offsets.
        let connected = move |s: SocketRef| {
            let gateway = gateway.clone();
            async move {
                if let (Some(session), Some(gw)) =
                    (s.extensions.get::<Arc<Session>>(), gateway.get())
                    && session.recovery_id().is_some()
                {
                    gw.replay(&session).await;
                }
            }
        };
        let namespace = cfg.namespace.clone();
        let register: Register = Arc::new(move |io: &SocketIo| {
            io.ns(
                namespace.clone(),
                connected.clone().with(middleware.clone()),
            );
        });
        register(&io);
        let router = Router::new()
            .route_service("/socket.io/", svc.clone())
            .route_service("/socket.io", svc)
            .layer(axum::middleware::from_fn(detach_request))
            .layer(axum::middleware::from_fn_with_state(pids, add_pid));
        SocketIoTransport {
            cfg,
            io,
            router,
            tracking: true,
            register,
            overflow,
            plain,
        }
    }

    /// Says whether sockets may track offsets (`recovery.enabled`; on unless told): with
    /// recovery off, a delivery does not look for sockets that track them.
    pub fn with_offset_tracking(mut self, on: bool) -> Self {
        self.tracking = on;
        self
    }

    /// Counts the events full outgoing queues drop in `metrics`
    /// (`switchboard_errors_total{kind="queue_full"}`).
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        let _ = self.overflow.0.set(metrics);
        self
    }
}

/// One Socket.IO socket as a core [`Connection`].
struct SioConnection {
    id: ConnId,
    socket: SocketRef,
    /// Counts what a full outgoing queue dropped.
    overflow: Overflow,
    /// For a client that does not track offsets: counts it among the plain sockets while
    /// it lives. `None`: it tracks them, and room events carry theirs as the last argument.
    plain: Option<PlainGuard>,
}

impl SioConnection {
    /// Whether the client tracks offsets.
    fn tracks(&self) -> bool {
        self.plain.is_none()
    }
}

impl Connection for SioConnection {
    fn id(&self) -> &ConnId {
        &self.id
    }

    fn send(&self, event: &str, payload: &RawValue) {
        self.overflow
            .check(self.socket.emit(event, payload), event, &self.id);
    }

    fn send_event(&self, event: &str, payload: &RawValue, offset: Option<&str>) {
        let sent = match offset {
            Some(offset) if self.tracks() => self.socket.emit(event, &(payload, offset)),
            _ => self.socket.emit(event, payload),
        };
        self.overflow.check(sent, event, &self.id);
    }

    fn try_send_event(
        &self,
        event: &str,
        payload: &RawValue,
        offset: Option<&str>,
    ) -> Result<(), QueueFull> {
        let sent = match offset {
            Some(offset) if self.tracks() => self.socket.emit(event, &(payload, offset)),
            _ => self.socket.emit(event, payload),
        };
        match sent {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(QueueFull),
            Err(e) => {
                tracing::debug!(socket = %self.id, error = %e, "could not send to socket");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    fn join(&self, room: &Room) {
        if self.tracks() {
            self.socket.join(tracked(room));
        } else {
            self.socket.join(room.to_string());
        }
    }

    fn leave(&self, room: &Room) {
        if self.tracks() {
            self.socket.leave(tracked(room));
        } else {
            self.socket.leave(room.to_string());
        }
    }

    fn close(&self, reason: CloseReason) {
        tracing::debug!(socket = %self.id, ?reason, "closing socket");
        // socketioxide closes one socket only with the namespace's disconnect packet (the
        // client does not reconnect); a reset closes them all through `Transport::reset`.
        let _ = self.socket.clone().disconnect();
    }
}

/// The whole event packet, `["event", payload, …]`, as JSON text.
struct RawPacket(String);

/// The packet carried binary attachments, which no Switchboard event takes.
#[derive(Debug)]
struct BinaryPacket;

impl std::fmt::Display for BinaryPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("binary packets are not supported")
    }
}
impl std::error::Error for BinaryPacket {}

impl<A: Adapter> FromMessage<A> for RawPacket {
    type Error = BinaryPacket;
    fn from_message(
        _: Arc<Socket<A>>,
        v: socketioxide::handler::Value,
        _: Option<i64>,
    ) -> Result<Self, BinaryPacket> {
        match v {
            socketioxide::handler::Value::Str(s, _) => Ok(RawPacket(s.as_str().to_owned())),
            socketioxide::handler::Value::Bytes(_) => Err(BinaryPacket),
        }
    }
}

/// How long an ack first waits before it tries again to get into a full outgoing queue;
/// the wait doubles up to [`ACK_RETRY_MAX`].
const ACK_RETRY: std::time::Duration = std::time::Duration::from_millis(2);
/// The longest wait between two tries of an ack.
const ACK_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(100);
/// Acks one socket may have waiting for room; more are dropped (a client that keeps
/// sending without reading).
const MAX_WAITING_ACKS: usize = 64;

/// A socket's acks waiting for room in its outgoing queue: one tries at a time, the
/// others wait their turn without waking.
#[derive(Default)]
struct WaitingAcks {
    turn: tokio::sync::Mutex<()>,
    count: std::sync::atomic::AtomicUsize,
}

/// Where an event's ack goes: its socket and the ack id the client sent (none: no ack).
struct Ack<A: Adapter> {
    socket: Arc<Socket<A>>,
    id: Option<i64>,
}

impl<A: Adapter> FromMessageParts<A> for Ack<A> {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(Ack {
            socket: s.clone(),
            id: *ack_id,
        })
    }
}

impl<A: Adapter> Ack<A> {
    /// Sends the ack. A full outgoing queue (a client reading slower than it is sent to,
    /// as in a burst of presence events) does not lose it: the ack waits for room, as a
    /// replay does, until the socket closes (a client that stops reading is closed by the
    /// engine.io heartbeat). Past [`MAX_WAITING_ACKS`] waiting, an ack is dropped.
    async fn send(self, reply: &Value) -> Result<(), SendError> {
        use std::sync::atomic::Ordering;
        match self.try_send(reply) {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {}
            sent => return sent,
        }
        // Made by the first ack that has to wait: an idle socket holds none. Two made at
        // once only let two acks try at a time.
        let waiting = match self.socket.extensions.get::<Arc<WaitingAcks>>() {
            Some(w) => w,
            None => {
                let w = Arc::new(WaitingAcks::default());
                self.socket.extensions.insert(w.clone());
                w
            }
        };
        if waiting.count.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_ACKS {
            waiting.count.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Socket(SocketError::InternalChannelFull));
        }
        let sent = {
            let _turn = waiting.turn.lock().await;
            let mut wait = ACK_RETRY;
            loop {
                match self.try_send(reply) {
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(ACK_RETRY_MAX);
                    }
                    sent => break sent,
                }
            }
        };
        waiting.count.fetch_sub(1, Ordering::AcqRel);
        sent
    }

    /// One try to queue the ack.
    fn try_send(&self, reply: &Value) -> Result<(), SendError> {
        let mut none = socketioxide::handler::Value::Str(Default::default(), None);
        let Ok(sender) = AckSender::from_message_parts(&self.socket, &mut none, &self.id);
        sender.send(reply)
    }
}

/// Splits `["event", payload, …]` into its payload's JSON text (`None` when absent).
fn payload_of(raw: &str) -> Result<Option<&RawValue>, serde_json::Error> {
    let parts: Vec<&RawValue> = serde_json::from_str(raw)?;
    Ok(parts.get(1).copied())
}

/// Authenticates, registers the session and installs the event handlers, all before the
/// client is told it is connected: an event sent right after `connect` always finds its
/// handler, and the presence API counts the socket as soon as the client sees `connect`.
async fn admit(
    handle: GatewayHandle,
    pids: Arc<Pids>,
    overflow: Overflow,
    plain: Plain,
    socket: SocketRef,
    auth: Option<Value>,
) -> Result<(), switchboard_core::AuthError> {
    let Some(gw) = handle.get() else {
        return Err(switchboard_core::AuthError::Refused(
            "The server is shutting down".to_owned(),
        ));
    };
    let identity = {
        let parts = socket.req_parts();
        let handshake = Handshake {
            auth: auth.as_ref(),
            headers: &parts.headers,
            query: parts.uri.query(),
        };
        gw.authenticate(&handshake).await?
    };
    // socket.io-client tracks offsets; a client that does not sends `recovery: false`.
    let field = |k: &str| auth.as_ref().and_then(|a| a.get(k));
    let tracks =
        gw.config().recovery.enabled && field("recovery").and_then(Value::as_bool) != Some(false);
    let request = RecoveryRequest {
        tracks_offsets: tracks,
        pid: field("pid").and_then(Value::as_str).map(str::to_owned),
        offset: field("offset").and_then(Value::as_str).map(str::to_owned),
        // socketioxide sends nothing before CONNECT: hold deliveries until the client has it.
        hold: tracks,
    };
    let conn = Arc::new(SioConnection {
        id: ConnId::new(socket.id.as_str()),
        socket: socket.clone(),
        overflow: overflow.clone(),
        plain: (!request.tracks_offsets).then(|| plain.enter()),
    });
    let connected = gw
        .connect_with(handle.transport(), conn, identity, request)
        .await;
    if let Some(pid) = connected.session.recovery_id() {
        pids.register(socket.id.as_str(), &pid);
    }
    socket.extensions.insert(connected.session);

    let events = handle.clone();
    socket.on_fallback(
        move |s: SocketRef, ack: Ack<_>, Event(event): Event, RawPacket(raw): RawPacket| {
            // Taken here, as socketioxide hands over the event in the order it arrived;
            // the handler itself runs in a task of its own.
            let session = s.extensions.get::<Arc<Session>>();
            let ticket: Option<Ticket> = session.as_ref().map(|s| s.ticket());
            let events = events.clone();
            let overflow = overflow.clone();
            async move {
                let (Some(session), Some(ticket), Some(gw)) = (session, ticket, events.get())
                else {
                    return;
                };
                let reply = match payload_of(&raw) {
                    Ok(payload) => {
                        gw.inbound(&session, ticket, &event, raw.len(), payload)
                            .await
                    }
                    Err(e) => gw.inbound_malformed(&session, &e.to_string()),
                };
                match ack.send(&reply).await {
                    Ok(()) => {}
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        overflow.dropped(
                            1,
                            &format!("the ack of {event}"),
                            &format_args!("socket {}", session.id()),
                        );
                    }
                    // The socket closed meanwhile.
                    Err(e) => {
                        tracing::debug!(socket = %session.id(), event = %event, error = %e, "ack not sent");
                    }
                }
            }
        },
    );
    let closed = handle.clone();
    socket.on_disconnect(move |s: SocketRef, reason: DisconnectReason| {
        let closed = closed.clone();
        async move { release(&closed, &s, leaving(reason)).await }
    });

    // If the connect packet cannot be sent (the client vanished mid-handshake), socketioxide
    // drops the socket without a disconnect callback; release the session here instead.
    let grace = gw.config().limits.handshake_timeout.get();
    let watched = socket.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !watched.connected() {
            release(&handle, &watched, Leaving::Dropped).await;
        }
    });
    Ok(())
}

/// What recovery keeps of a socket that ended for `reason`: as socket.io does, a session
/// that dropped (transport closed or failed, ping timeout) or whose server is closing may
/// come back; one closed on purpose may not.
fn leaving(reason: DisconnectReason) -> Leaving {
    match reason {
        DisconnectReason::TransportClose
        | DisconnectReason::TransportError
        | DisconnectReason::HeartbeatTimeout
        | DisconnectReason::MultipleHttpPollingError => Leaving::Dropped,
        DisconnectReason::ClosingServer => Leaving::Shutdown,
        DisconnectReason::PacketParsingError
        | DisconnectReason::ClientNSDisconnect
        | DisconnectReason::ServerNSDisconnect => Leaving::Closed,
    }
}

/// Arms a WebSocket upgrade's tap and rewrites long-polling responses, so a socket's
/// `CONNECT` packet carries its `pid` (see `connect_pid`).
async fn add_pid(
    axum::extract::State(pids): axum::extract::State<Arc<Pids>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let query = req.uri().query().unwrap_or("");
    let websocket = query.split('&').any(|kv| kv == "transport=websocket");
    let polling_get = req.method() == http::Method::GET && !websocket;
    if websocket
        && let Some(peer) = req
            .extensions()
            .get::<axum::extract::ConnectInfo<switchboard_core::PeerSocket>>()
    {
        peer.0.tap().arm(pids.rewriter());
    }
    let res = next.run(req).await;
    if !(polling_get && pids.any()) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    };
    let body = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|b| pids.rewrite_body(b))
    {
        Some(new) => {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            axum::body::Body::from(new)
        }
        None => axum::body::Body::from(bytes),
    };
    axum::response::Response::from_parts(parts, body)
}

/// Ends a socket's session once, whoever gets here first.
async fn release(handle: &GatewayHandle, socket: &SocketRef, leaving: Leaving) {
    if let Some(session) = socket.extensions.remove::<Arc<Session>>()
        && let Some(gw) = handle.get()
    {
        gw.disconnect_with(&session, leaving).await;
    }
}

/// Copies a request's header values and URI into memory of their own before socketioxide
/// keeps them.
///
/// Hyper parses them as slices of the connection's read buffer (8 KiB and up), and
/// engineioxide keeps the request's `Parts` for the socket's whole life
/// (`engineioxide::Socket::req_parts`), which would keep that whole buffer alive per socket.
async fn detach_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (mut parts, body) = req.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(mut v) => {
                v.set_sensitive(value.is_sensitive());
                headers.append(name, v);
            }
            Err(_) => {
                headers.append(name, value.clone());
            }
        }
    }
    parts.headers = headers;
    // Socket.IO never writes to the connection's socket itself: keep no handle to it.
    parts
        .extensions
        .remove::<axum::extract::ConnectInfo<switchboard_core::PeerSocket>>();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

#[async_trait]
impl Transport for SocketIoTransport {
    fn name(&self) -> &str {
        "socketio"
    }

    fn router(&self) -> Router {
        self.router.clone()
    }

    fn deliver(&self, d: &Delivery, to: Recipients<'_>) {
        if to.is_empty() {
            return;
        }
        let Some(ns) = self.io.of(&self.cfg.namespace) else {
            return;
        };
        let sender = to
            .except()
            .and_then(|id| id.as_str().parse().ok())
            .and_then(|sid| ns.get_socket(sid));
        let to_room = |room: String| match &sender {
            Some(s) => s.to(room),
            None => ns.clone().to(room),
        };
        // The local adapter broadcasts at once: its future is ready when first polled. A
        // socket is in the room's plain or its tracked variant, never both; each variant
        // that has members gets one single-room broadcast (a broadcast to several rooms
        // would track every socket it reached, to send each one once).
        let sent = match to.room() {
            Some(room) => {
                // With recovery off every socket is plain; with no plain socket on the node,
                // every member tracks; else see which kinds the room has.
                let (mut plain, mut tracking) = (!self.tracking, false);
                if self.tracking && !self.plain.any() {
                    tracking = true;
                } else if self.tracking {
                    for c in to.of::<SioConnection>() {
                        if c.tracks() {
                            tracking = true;
                        } else {
                            plain = true;
                        }
                        if plain && tracking {
                            break;
                        }
                    }
                }
                let plain = plain.then(|| {
                    to_room(room.to_string())
                        .emit(&*d.event, &*d.payload)
                        .now_or_never()
                });
                let tracking = tracking.then(|| {
                    let rooms = to_room(tracked(room));
                    match to.offset() {
                        Some(offset) => {
                            rooms.emit(&*d.event, &(&*d.payload, offset)).now_or_never()
                        }
                        None => rooms.emit(&*d.event, &*d.payload).now_or_never(),
                    }
                });
                match (plain, tracking) {
                    (Some(a), Some(b)) => a.and(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => Some(Ok(())),
                }
            }
            None => match &sender {
                Some(s) => s.broadcast().emit(&*d.event, &*d.payload).now_or_never(),
                None => ns.emit(&*d.event, &*d.payload).now_or_never(),
            },
        };
        match sent {
            Some(Ok(())) => {}
            Some(Err(BroadcastError::Socket(errors))) => {
                let full = errors
                    .iter()
                    .filter(|e| matches!(e, SocketError::InternalChannelFull))
                    .count();
                let sockets = if full == 1 { "socket" } else { "sockets" };
                let to = match to.room() {
                    Some(room) => format!("{full} {sockets} of {room}"),
                    None => format!("{full} {sockets}"),
                };
                self.overflow.dropped(full, &d.event, &to);
            }
            Some(Err(e)) => tracing::debug!(event = %d.event, error = %e, "broadcast incomplete"),
            None => tracing::warn!(event = %d.event, "broadcast did not complete at once; dropped"),
        }
    }

    /// Closes every socket of the namespace so that socket.io-client reconnects by itself:
    /// each gets engine.io's close packet (the client's `disconnect` reason is `transport
    /// close`), not the namespace's disconnect packet, which would stop it reconnecting.
    /// socketioxide closes a transport that way only for all its sockets at once, as it
    /// closes the server; the namespace is registered again straight after, for the
    /// clients that connect from then on.
    async fn reset(&self, sockets: Vec<Arc<dyn Connection>>) {
        let io = self.io.clone();
        let mut close = Box::pin(async move { io.close().await });
        // The first step takes the namespaces away and sends each socket its close packet.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(close.as_mut().poll(cx))).await;
        (self.register)(&self.io);
        tracing::info!(
            sockets = sockets.len(),
            "closed every Socket.IO socket so that its client connects again"
        );
        if first.is_pending() {
            // The rest waits for each transport to be gone (a polling client's next request).
            tokio::spawn(close);
        }
    }

    async fn shutdown(&self) {
        self.io.close().await;
    }
}

fn build(ctx: &PluginContext<'_>) -> Result<Option<Arc<dyn Transport>>, BoxError> {
    let cfg: SocketIoConfig = ctx.section()?;
    if !cfg.namespace.starts_with('/') {
        return Err(Box::new(switchboard_core::ConfigError::new(
            "transports.socketio.namespace",
            "must start with `/`",
        )));
    }
    if !cfg.enabled {
        return Ok(None);
    }
    let handshake = ctx.config().limits.handshake_timeout;
    let recovery = ctx.config().recovery.enabled;
    Ok(Some(Arc::new(
        SocketIoTransport::new(cfg, ctx.gateway(), handshake)
            .with_offset_tracking(recovery)
            .with_metrics(ctx.metrics().clone()),
    )))
}

register_plugin!(
    Plugin::new(
        "socketio",
        "Socket.IO v5 over WebSocket and long-polling (socket.io-client 4.x)",
        Factory::Transport(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<SocketIoConfig>)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detached_requests_keep_their_headers_and_uri() {
        use tower::ServiceExt;
        let app = Router::new()
            .route(
                "/socket.io/",
                axum::routing::get(|req: axum::extract::Request| async move {
                    let auth = req.headers().get("authorization").cloned();
                    let custom = req.headers().get_all("x-custom").iter().count();
                    format!("{} {:?} {custom}", req.uri(), auth)
                }),
            )
            .layer(axum::middleware::from_fn(detach_request));
        let req = axum::extract::Request::get("/socket.io/?EIO=4&transport=websocket")
            .header("authorization", "Bearer t")
            .header("x-custom", "a")
            .header("x-custom", "b")
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = app.oneshot(req).await.expect("infallible");
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(
            &body[..],
            br#"/socket.io/?EIO=4&transport=websocket Some("Bearer t") 2"#
        );
    }

    #[test]
    fn payload_is_the_second_element() {
        let p = payload_of(r#"["conversation:join",{"conversationId":"1"}]"#).expect("json");
        assert_eq!(p.map(RawValue::get), Some(r#"{"conversationId":"1"}"#));
        assert!(payload_of(r#"["typing:start"]"#).expect("json").is_none());
        assert!(payload_of("{").is_err());
    }
}
