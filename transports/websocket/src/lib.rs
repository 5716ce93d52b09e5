//! `transports.websocket`: the native WebSocket protocol — plain WebSocket, JSON text frames.
//!
//! For clients that do not want Socket.IO (mobile apps, backend services, devices). Same
//! authenticator, event handlers, rooms, presence, limits, hooks and errors as the Socket.IO
//! transport: every event goes through the core's [`Gateway`], nothing of the pipeline is
//! written here, and a native socket is in the same rooms as Socket.IO sockets.
//!
//! # Protocol
//!
//! - `GET /ws` (`transports.websocket.path`) upgraded to WebSocket.
//! - The first frame, within `limits.handshake_timeout`, is `{"op": "connect", "token": "..."}`.
//!   The token comes from that frame, else from the upgrade request's
//!   `Authorization: Bearer …` (and `?userId=` only when `auth.allow_query_user_id` is on and
//!   there is no token at all). The reply is `{"op": "connected", "userId", "socketId"}`, or
//!   `{"op": "error", "message": "Authentication failed: ..."}` and close code 4401. A first
//!   frame that is not `op: connect` is refused as carrying no token. No first frame in time:
//!   `{"op": "error", "message": "Handshake timeout"}` and close code 4408.
//! - Then client frames are events `{"event": "conversation:join", "data": {...}, "id": 7}`;
//!   with an `id` (number or string) the client gets the ack `{"ack": 7, "data": {...}}`.
//!   Server frames are `{"event": name, "data": payload}`, with exactly these keys.
//! - A text frame that is not of this shape, or a second `op: connect`, gets the `error`
//!   event and the socket stays open. A binary frame closes with 1003, a message over
//!   `max_frame_bytes` with 1009, token expiry with 4401, sustained rate abuse with 4429.
//! - The server pings every `ping_interval` and closes (4408, "Ping timeout") a socket that
//!   answered neither of its last two pings. A socket whose outbound queue passes
//!   `max_queued_frames` (it does not read) is closed with 1013; shutdown closes with 1001;
//!   a node that lost track of the backend's calls about its sockets closes them with 1012
//!   (connect again, afresh).
//!
//! # Design for leanness
//!
//! - **One task per socket.** The upgrade handler copies the two things the handshake may
//!   need (the `Authorization` header and the query) out of the request, so hyper's request
//!   buffer is freed, and spawns a single task. That task runs the handshake, then one
//!   `poll_fn` loop over the socket's reads and its outbound queue, then the close
//!   handshake. The WebSocket, the handshake, the handling of one event and the close are
//!   boxed, so an idle socket's task future is a few hundred bytes. One ticker pings every
//!   socket (there is no timer per socket).
//! - **Small buffers that grow under load.** The read buffer is `read_buffer_size` (512 B by
//!   default) and grows only for a larger message; the outbound queue is a `VecDeque` that
//!   holds no allocation while it is empty (it is given back as soon as it drains).
//! - **Encoded once.** A delivery's whole WebSocket frame — header and
//!   `{"event":…,"data":…}` — is built once per [`Transport::deliver`] from the core's
//!   already-serialized payload, and every recipient gets a reference-counted clone of the
//!   same buffer; the core calls `deliver` only when a native socket is among the recipients.
//! - **Written where it is published.** When the node serves the connection
//!   ([`switchboard_core::Node::serve`] puts a [`PeerSocket`] in the request), a frame for a
//!   socket with nothing pending is written to the kernel by the publishing thread, one
//!   `write(2)`, without waking the socket's task (see `conn`).
//! - **One write per batch, no write buffer.** Frames that had to queue go to the kernel in
//!   one vectored write straight from the shared buffers (up to 32 frames a call); a burst
//!   of pushes costs the socket's task one wake-up. Tungstenite reads and writes only
//!   control frames (pong replies, close), unbuffered.
//!
//! Rooms belong to the core: a delivery comes with its [`Recipients`], this transport's
//! sockets among the room's members, and the transport only frames and writes. It keeps the
//! list of its own sockets, to ping them and to close them at shutdown.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{
    AUTHORIZATION, CONNECTION, HeaderName, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, StatusCode};
use hyper::upgrade::OnUpgrade;
use serde::{Deserialize, Serialize};
use switchboard_core::{
    BoxError, ConfigError, Delivery, Dur, Factory, GatewayHandle, PeerSocket, Plugin,
    PluginContext, Recipients, Size, Transport, async_trait, register_plugin,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as WsProtocol;

mod conn;
mod frame;
mod socket;

use conn::{Hub, WsConn};
use socket::{Ctx, Start};

/// `transports.websocket.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Serve the native protocol at all.
    pub enabled: bool,
    /// The path upgraded to WebSocket.
    pub path: String,
    /// How often the server pings each socket; one that answered neither of the last two pings is closed.
    pub ping_interval: Dur,
    /// Largest message a client may send; a bigger one closes the socket with 1009.
    pub max_frame_bytes: Size,
    /// Frames queued for a socket that does not read before it is closed as a slow consumer (1013).
    pub max_queued_frames: usize,
    /// Bytes read from a socket per read; the buffer grows only for a larger message.
    pub read_buffer_size: Size,
    /// How long the server waits for the client's reply to its close frame.
    pub close_timeout: Dur,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enabled: true,
            path: "/ws".to_owned(),
            ping_interval: Dur::secs(25),
            max_frame_bytes: Size::mib(1),
            max_queued_frames: 1024,
            read_buffer_size: Size(512),
            close_timeout: Dur::secs(1),
        }
    }
}

/// Paths other parts of the gateway serve; the native endpoint may not take them.
const RESERVED: [&str; 6] = ["/socket.io", "/api", "/healthz", "/readyz", "/metrics", "/"];

impl WebSocketConfig {
    /// Checks the values; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("transports.websocket.{k}");
        let p = self.path.as_str();
        let path_ok = p.starts_with('/')
            && p.len() > 1
            && !p.contains("//")
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
        if !path_ok {
            return Err(ConfigError::new(
                key("path"),
                "must start with `/` and contain only letters, digits, `-`, `.`, `_`, `~` and single `/`",
            ));
        }
        let trimmed = p.trim_end_matches('/');
        if RESERVED
            .iter()
            .any(|r| trimmed == *r || (*r != "/" && trimmed.starts_with(&format!("{r}/"))))
        {
            return Err(ConfigError::new(
                key("path"),
                format!("`{p}` is served by another part of the gateway; pick another path"),
            ));
        }
        if self.ping_interval.get().is_zero() {
            return Err(ConfigError::new(
                key("ping_interval"),
                "must be more than zero",
            ));
        }
        if self.max_frame_bytes.bytes() == 0 {
            return Err(ConfigError::new(
                key("max_frame_bytes"),
                "must be more than zero",
            ));
        }
        if self.max_queued_frames == 0 {
            return Err(ConfigError::new(
                key("max_queued_frames"),
                "must be at least 1",
            ));
        }
        if !(64..=1 << 20).contains(&self.read_buffer_size.bytes()) {
            return Err(ConfigError::new(
                key("read_buffer_size"),
                "must be between 64 B and 1 MiB",
            ));
        }
        Ok(())
    }

    /// Tungstenite's settings: it reads, and writes only control frames (unbuffered).
    fn protocol(&self) -> WsProtocol {
        let max = self.max_frame_bytes.bytes();
        WsProtocol::default()
            .read_buffer_size(self.read_buffer_size.bytes())
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// The native WebSocket transport.
pub struct WebSocketTransport {
    cfg: WebSocketConfig,
    hub: Arc<Hub>,
    shutdown_grace: std::time::Duration,
    router: Router,
}

impl std::fmt::Debug for WebSocketTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketTransport")
            .field("path", &self.cfg.path)
            .finish()
    }
}

impl WebSocketTransport {
    /// A transport with `cfg` (already validated) serving the gateway behind `gateway`;
    /// `shutdown_grace` bounds how long shutdown waits for sockets to close.
    pub fn new(cfg: WebSocketConfig, gateway: GatewayHandle, shutdown_grace: Dur) -> Self {
        let hub = Arc::new(Hub::new(cfg.max_queued_frames, cfg.ping_interval.get()));
        let ctx = Arc::new(Ctx {
            gw: gateway,
            hub: hub.clone(),
            protocol: cfg.protocol(),
            close_timeout: cfg.close_timeout.get(),
        });
        let router = Router::new().route(&cfg.path, get(upgrade)).with_state(ctx);
        WebSocketTransport {
            cfg,
            hub,
            shutdown_grace: shutdown_grace.get(),
            router,
        }
    }
}

#[async_trait]
impl Transport for WebSocketTransport {
    fn name(&self) -> &str {
        "websocket"
    }

    fn router(&self) -> Router {
        self.router.clone()
    }

    fn deliver(&self, delivery: &Delivery, to: Recipients<'_>) {
        // Each frame built once, when a recipient needs it: plain, and with the offset.
        let (mut plain, mut with_offset) = (None, None);
        for conn in to.of::<WsConn>() {
            let frame = match to.offset() {
                Some(o) if conn.tracks => with_offset
                    .get_or_insert_with(|| {
                        frame::event_with_offset(&delivery.event, &delivery.payload, o)
                    })
                    .clone(),
                _ => plain
                    .get_or_insert_with(|| frame::event(&delivery.event, &delivery.payload))
                    .clone(),
            };
            conn.push(frame);
        }
    }

    async fn shutdown(&self) {
        self.hub.shutdown(self.shutdown_grace).await;
    }
}

/// Whether a comma-separated header (`Connection: keep-alive, Upgrade`) holds `token`.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut res = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        let h = res.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    res
}

/// Accepts the WebSocket upgrade (RFC 6455 §4.2) and spawns the socket's task.
async fn upgrade(State(ctx): State<Arc<Ctx>>, mut req: Request) -> Response {
    if ctx.hub.is_closing() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is shutting down",
        );
    }
    let headers = req.headers();
    if !has_token(headers, UPGRADE, "websocket") || !has_token(headers, CONNECTION, "upgrade") {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "This endpoint takes a WebSocket upgrade",
        );
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "Unsupported WebSocket version (only 13)",
        );
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key");
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return refuse(StatusCode::BAD_REQUEST, "Bad Sec-WebSocket-Key");
    };
    // Copies, so nothing keeps hyper's request buffer alive once the socket runs.
    let authorization = headers
        .get(AUTHORIZATION)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let query = req.uri().query().map(str::to_owned);
    let raw = req
        .extensions()
        .get::<ConnectInfo<PeerSocket>>()
        .map(|c| c.0.clone())
        .filter(PeerSocket::is_direct);
    let Some(upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "This connection cannot be upgraded (HTTP/1.1 only)",
        );
    };
    drop(req);
    ctx.hub.start_pinging();
    let start = Box::new(Start {
        upgrade,
        authorization,
        query,
        raw,
    });
    tokio::spawn(socket::serve(ctx, start));
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    res
}

fn build(ctx: &PluginContext<'_>) -> Result<Option<Arc<dyn Transport>>, BoxError> {
    let cfg: WebSocketConfig = ctx.section()?;
    cfg.validate()?;
    if !cfg.enabled {
        return Ok(None);
    }
    let grace = ctx.config().server.shutdown_timeout;
    Ok(Some(Arc::new(WebSocketTransport::new(
        cfg,
        ctx.gateway(),
        grace,
    ))))
}

register_plugin!(
    Plugin::new(
        "websocket",
        "The native WebSocket protocol: JSON text frames, the same events and rooms as Socket.IO",
        Factory::Transport(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<WebSocketConfig>)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contract_s() {
        let c = WebSocketConfig::default();
        assert!(c.enabled);
        assert_eq!(c.path, "/ws");
        assert_eq!(c.ping_interval.get(), std::time::Duration::from_secs(25));
        assert_eq!(c.max_frame_bytes.bytes(), 1 << 20);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |f: fn(&mut WebSocketConfig)| {
            let mut c = WebSocketConfig::default();
            f(&mut c);
            c.validate().expect_err("invalid").to_string()
        };
        assert!(bad(|c| c.path = "ws".into()).contains("transports.websocket.path"));
        assert!(bad(|c| c.path = "/{id}".into()).contains("transports.websocket.path"));
        assert!(bad(|c| c.path = "/socket.io".into()).contains("another part"));
        assert!(bad(|c| c.path = "/api/ws".into()).contains("another part"));
        assert!(bad(|c| c.path = "/".into()).contains("transports.websocket.path"));
        assert!(bad(|c| c.ping_interval = Dur::secs(0)).contains("ping_interval"));
        assert!(bad(|c| c.max_queued_frames = 0).contains("max_queued_frames"));
        assert!(bad(|c| c.read_buffer_size = Size(8)).contains("read_buffer_size"));
        let ok = WebSocketConfig {
            path: "/native/v1".into(),
            ..WebSocketConfig::default()
        };
        ok.validate().expect("a plain path is fine");
    }

    #[test]
    fn connection_header_tokens_are_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(has_token(&h, CONNECTION, "upgrade"));
        assert!(!has_token(&h, UPGRADE, "websocket"));
    }
}
