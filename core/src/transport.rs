//! Transports: the [`Transport`] trait (a protocol on the shared port), per-socket
//! [`Connection`]s, and the [`Recipients`] of one delivery.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::broker::{ConnId, Delivery, Room};

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The token expired without a refresh.
    TokenExpired,
    /// The socket stayed over its event rate.
    RateAbuse,
    /// The node is shutting down.
    Shutdown,
    /// The client came back on a newer connection (recovery took this session over).
    Replaced,
    /// The backend disconnected the user (`POST /api/v1/users/{userId}/disconnect`): the
    /// client must not reconnect by itself.
    Kicked,
    /// The node lost track of what the backend asked about its sockets (it was cut off from
    /// the other nodes for longer than they keep the calls): the client should connect
    /// again, afresh; nothing of the session is kept for recovery.
    Reset,
}

/// A socket's outgoing queue is full: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

// ANCHOR: connection
/// One live socket, as the core sees it, whatever its transport.
pub trait Connection: Any + Send + Sync {
    /// The socket's id.
    fn id(&self) -> &ConnId;
    /// Sends one event to this socket alone; `payload` is JSON text.
    fn send(&self, event: &str, payload: &RawValue);
    /// Sends one room event with its offset (a recovering socket's replay); a connection
    /// that does not track offsets sends it without.
    fn send_event(&self, event: &str, payload: &RawValue, offset: Option<&str>) {
        let _ = offset;
        self.send(event, payload);
    }
    /// Like [`send_event`](Self::send_event), but sends nothing and says so when the
    /// socket's outgoing queue is full, so that a replay can wait for room instead of
    /// losing an event. The default sends and never says it is full.
    fn try_send_event(
        &self,
        event: &str,
        payload: &RawValue,
        offset: Option<&str>,
    ) -> Result<(), QueueFull> {
        self.send_event(event, payload, offset);
        Ok(())
    }
    /// The core put the socket in `room`: mirror it where the transport frames room
    /// deliveries itself (Socket.IO's rooms). Called while the core holds the room.
    fn join(&self, room: &Room) {
        let _ = room;
    }
    /// The core took the socket out of `room`.
    fn leave(&self, room: &Room) {
        let _ = room;
    }
    /// Closes the socket from the server side.
    fn close(&self, reason: CloseReason);
}
// ANCHOR_END: connection

/// Which transport a session came through: its place in the node's list of transports.
///
/// [`TransportId::DIRECT`] is for connections registered with
/// [`Gateway::connect`](crate::Gateway::connect) by Rust code rather than by a transport;
/// they get every delivery through [`Connection::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportId(pub(crate) usize);

impl TransportId {
    /// Connections of no transport.
    pub const DIRECT: TransportId = TransportId(0);
}

/// A set of local sockets, by id.
pub type MemberMap = HashMap<ConnId, Arc<dyn Connection>>;

/// This node's sockets of one transport that receive one delivery: the room's local members
/// (or, for a namespace-wide delivery, every socket), minus the excluded sender.
///
/// The core holds the room while a transport writes to its recipients: a socket that leaves
/// the room meanwhile is taken out only once the delivery is written.
pub struct Recipients<'a> {
    members: &'a MemberMap,
    except: Option<&'a ConnId>,
    room: Option<&'a Room>,
    offset: Option<&'a str>,
}

impl<'a> Recipients<'a> {
    /// The sockets of `members` but `except`, receiving a delivery to `room` (`None`: to
    /// the whole namespace). The core builds these; transports' own tests may too.
    pub fn new(members: &'a MemberMap, except: Option<&'a ConnId>, room: Option<&'a Room>) -> Self {
        Recipients {
            members,
            except,
            room,
            offset: None,
        }
    }

    /// The same recipients, for an event with `offset` (its place in this node's order,
    /// for sockets that track offsets).
    pub fn with_offset(mut self, offset: Option<&'a str>) -> Self {
        self.offset = offset;
        self
    }

    /// The offset sockets that track offsets get with this event.
    pub fn offset(&self) -> Option<&'a str> {
        self.offset
    }

    /// The room delivered to; `None` for a namespace-wide delivery.
    pub fn room(&self) -> Option<&'a Room> {
        self.room
    }

    /// The socket that must not receive it, if any.
    pub fn except(&self) -> Option<&'a ConnId> {
        self.except
    }

    /// Whether nobody receives it.
    pub fn is_empty(&self) -> bool {
        match self.except {
            Some(e) => self.members.len() == usize::from(self.members.contains_key(e)),
            None => self.members.is_empty(),
        }
    }

    /// Every recipient.
    pub fn iter(&self) -> impl Iterator<Item = &'a Arc<dyn Connection>> + 'a {
        let except = self.except;
        self.members
            .iter()
            .filter(move |(id, _)| Some(*id) != except)
            .map(|(_, c)| c)
    }

    /// Every recipient that is a `T`: a transport's own connection type.
    pub fn of<T: Connection>(&self) -> impl Iterator<Item = &'a T> + 'a {
        self.iter()
            .filter_map(|c| (c.as_ref() as &dyn Any).downcast_ref::<T>())
    }
}

impl std::fmt::Debug for Recipients<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipients")
            .field("room", &self.room)
            .field("members", &self.members.len())
            .finish()
    }
}

// ANCHOR: transport
/// A client protocol served on the gateway's port. Built-in: `socketio`, `websocket`.
///
/// A transport is built with a [`GatewayHandle`](crate::GatewayHandle) and calls into the
/// gateway for auth, events and presence; the core owns rooms and hands the transport each
/// delivery with its recipients.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The transport's config name.
    fn name(&self) -> &str;

    /// The routes it serves (built once, when the transport is built).
    fn router(&self) -> axum::Router;

    /// Frames `delivery` once and writes it to `to`, this transport's recipients on this
    /// node. The default sends it to each recipient with [`Connection::send`].
    fn deliver(&self, delivery: &Delivery, to: Recipients<'_>) {
        for conn in to.iter() {
            conn.send(&delivery.event, &delivery.payload);
        }
    }

    /// Closes `sockets` (this transport's, every one it has on this node) so that each
    /// client connects again by itself ([`CloseReason::Reset`]); the core has already taken
    /// them out of their rooms and forgotten their sessions. The default closes each with
    /// [`Connection::close`].
    async fn reset(&self, sockets: Vec<Arc<dyn Connection>>) {
        for conn in sockets {
            conn.close(CloseReason::Reset);
        }
    }

    /// Closes every socket cleanly (shutdown).
    async fn shutdown(&self);
}
// ANCHOR_END: transport

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain(ConnId);
    impl Connection for Plain {
        fn id(&self) -> &ConnId {
            &self.0
        }
        fn send(&self, _: &str, _: &RawValue) {}
        fn close(&self, _: CloseReason) {}
    }
    struct Other(ConnId);
    impl Connection for Other {
        fn id(&self) -> &ConnId {
            &self.0
        }
        fn send(&self, _: &str, _: &RawValue) {}
        fn close(&self, _: CloseReason) {}
    }

    #[test]
    fn recipients_skip_the_sender_and_downcast_to_the_transport_s_type() {
        let mut m: MemberMap = HashMap::new();
        for id in ["a", "b"] {
            m.insert(ConnId::new(id), Arc::new(Plain(ConnId::new(id))));
        }
        m.insert(ConnId::new("c"), Arc::new(Other(ConnId::new("c"))));
        let a = ConnId::new("a");
        let r = Recipients::new(&m, Some(&a), None);
        let mut ids: Vec<&str> = r.iter().map(|c| c.id().as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["b", "c"]);
        let plain: Vec<&str> = r.of::<Plain>().map(|p| p.0.as_str()).collect();
        assert_eq!(plain, ["b"]);
        assert!(!r.is_empty());
        let mut only_a: MemberMap = HashMap::new();
        only_a.insert(a.clone(), Arc::new(Plain(a.clone())));
        assert!(Recipients::new(&only_a, Some(&a), None).is_empty());
        assert!(!Recipients::new(&only_a, None, None).is_empty());
    }
}
