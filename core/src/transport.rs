//! Transports: the [`Transport`] trait (a protocol on the shared port) and per-socket [`Connection`]s.

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::broker::{ConnId, Delivery, Room};
use crate::runtime::Gateway;

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The token expired without a refresh.
    TokenExpired,
    /// The socket stayed over its event rate.
    RateAbuse,
    /// The node is shutting down.
    Shutdown,
}

// ANCHOR: connection
/// One live socket, as the runtime sees it, whatever its transport.
pub trait Connection: Send + Sync + 'static {
    /// The socket's id.
    fn id(&self) -> &ConnId;
    /// Sends one event to this socket alone; `payload` is JSON text.
    fn send(&self, event: &str, payload: &RawValue);
    /// Mirrors a room join into the transport's fan-out lists.
    fn join(&self, room: &Room);
    /// Mirrors a room leave.
    fn leave(&self, room: &Room);
    /// Closes the socket from the server side.
    fn close(&self, reason: CloseReason);
}
// ANCHOR_END: connection

// ANCHOR: transport
/// A client protocol served on the gateway's port. Built-in: `socketio`.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The transport's config name.
    fn name(&self) -> &str;

    /// The routes it serves; they call into `gateway` for auth, events and presence.
    fn router(&self, gateway: Gateway) -> axum::Router;

    /// Frames a delivery once and sends it to this transport's local members of its room.
    async fn deliver(&self, delivery: &Delivery);

    /// Closes every socket cleanly (shutdown).
    async fn shutdown(&self);
}
// ANCHOR_END: transport
