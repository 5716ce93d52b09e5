//! Rooms: the [`RoomBroker`] trait, the shared [`Delivery`] and the node-local [`LocalHub`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::transport::Transport;

/// A connection's id, unique on its node and carried in cluster messages.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(Arc<str>);

impl ConnId {
    /// Wraps a transport's socket id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        ConnId(id.into())
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room name, such as `conversation:42`.
pub type Room = Arc<str>;

/// One published event, serialized once, shared by every node, transport and recipient.
#[derive(Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// The event name.
    pub event: Arc<str>,
    /// The target room; `None` is every socket of the namespace.
    pub room: Option<Room>,
    /// A connection that must not receive it (the sender of a typing event).
    pub except: Option<ConnId>,
    /// The payload, as JSON text.
    pub payload: Box<RawValue>,
}

impl Delivery {
    /// A delivery of `payload` (already JSON) to `room`.
    pub fn new(event: impl Into<Arc<str>>, room: Option<Room>, payload: Box<RawValue>) -> Self {
        Delivery {
            event: event.into(),
            room,
            except: None,
            payload,
        }
    }

    /// Serializes `payload` once into a delivery.
    pub fn encode<T: Serialize + ?Sized>(
        event: impl Into<Arc<str>>,
        room: Option<Room>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Delivery::new(
            event,
            room,
            serde_json::value::to_raw_value(payload)?,
        ))
    }

    /// Excludes one connection.
    pub fn except(mut self, conn: Option<ConnId>) -> Self {
        self.except = conn;
        self
    }
}

/// Hands a delivery to every transport of this node, which frames it for its local sockets.
#[derive(Clone, Default)]
pub struct LocalHub {
    transports: Arc<[Arc<dyn Transport>]>,
}

impl LocalHub {
    /// A hub over this node's transports.
    pub fn new(transports: Vec<Arc<dyn Transport>>) -> Self {
        LocalHub {
            transports: transports.into(),
        }
    }

    /// Delivers to this node's members of the delivery's room.
    pub async fn deliver(&self, delivery: &Delivery) {
        for t in self.transports.iter() {
            t.deliver(delivery).await;
        }
    }

    /// This node's transports.
    pub fn transports(&self) -> &[Arc<dyn Transport>] {
        &self.transports
    }
}

impl fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.transports.iter().map(|t| t.name()))
            .finish()
    }
}

/// A failure of the broker's backend (Redis); local delivery still happened where possible.
#[derive(Debug, thiserror::Error)]
#[error("room broker: {0}")]
pub struct BrokerError(pub String);

/// How far a publish reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every node with members of the room (on a single node: all of them).
    Cluster,
    /// This node's members only: the backend that links the nodes could not be reached.
    LocalOnly,
}

// ANCHOR: room_broker
/// Routes published events to the members of a room, on this node and (clustered) others.
///
/// The runtime calls `join`/`leave` as sockets enter and leave rooms, so a clustered broker
/// knows which rooms have local members; transports keep their own member lists for fan-out.
#[async_trait]
pub trait RoomBroker: Send + Sync + 'static {
    /// A local connection joined `room`. Returns once the join is effective cluster-wide.
    async fn join(&self, room: &Room, conn: &ConnId) -> Result<(), BrokerError>;

    /// A local connection left `room` (or disconnected).
    async fn leave(&self, room: &Room, conn: &ConnId) -> Result<(), BrokerError>;

    /// Delivers to every member of the delivery's room, on every node, once each; says
    /// whether it reached the other nodes or only this node's members.
    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError>;

    /// Starts background work (connections, subscriptions); called once, inside the runtime.
    async fn start(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> bool {
        true
    }

    /// Stops background work.
    async fn shutdown(&self) {}
}
// ANCHOR_END: room_broker
