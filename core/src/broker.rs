//! Carrying events between nodes: the [`RoomBroker`] trait, the shared [`Delivery`] and the
//! [`Inbox`] through which a broker hands deliveries back to the core.
//!
//! A broker is pub/sub and nothing more. The core's rooms component
//! ([`crate::rooms`]) owns who is in which room; it calls [`RoomBroker::subscribe`] when a
//! room gains its first local member and [`RoomBroker::unsubscribe`] when it loses its last,
//! and the broker hands every delivery of a subscribed room, and every namespace-wide one, to
//! the node's [`Inbox`], which delivers to the local members. A broker never knows a socket.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Cause, Classify};

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

/// Where a broker hands deliveries: the node's own local delivery, run by the core.
///
/// Calling [`Inbox::deliver`] writes the event to this node's members of its room (or, for a
/// namespace-wide delivery, every local socket) before it returns, so a broker that calls it
/// from one task delivers in the order it calls it.
#[derive(Clone)]
pub struct Inbox {
    sink: Arc<dyn Fn(&Delivery) + Send + Sync>,
}

impl Inbox {
    /// An inbox that runs `sink` for each delivery (the core's own, or a test's recorder).
    pub fn from_fn(sink: impl Fn(&Delivery) + Send + Sync + 'static) -> Self {
        Inbox {
            sink: Arc::new(sink),
        }
    }

    /// Delivers to this node's members of the delivery's room.
    pub fn deliver(&self, delivery: &Delivery) {
        (self.sink)(delivery);
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Inbox")
    }
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The backend that links the nodes cannot be reached (connection down, refused).
    #[error("{backend} unreachable: {reason}")]
    Unavailable {
        /// The backend (`Redis`).
        backend: &'static str,
        /// What went wrong, as the client library says it.
        reason: String,
    },
    /// A command to the backend took longer than its timeout.
    #[error("{backend} did not answer {command} within {after_ms} ms")]
    Timeout {
        /// The backend (`Redis`).
        backend: &'static str,
        /// The command that timed out.
        command: &'static str,
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// The backend answered with an error that retrying will not fix (missing ACL rights,
    /// a key of the wrong type).
    #[error("{backend} refused {command}: {reason}")]
    Refused {
        /// The backend (`Redis`).
        backend: &'static str,
        /// The command it refused.
        command: &'static str,
        /// Its answer.
        reason: String,
    },
    /// A delivery could not be encoded for the wire.
    #[error("cannot encode the delivery: {0}")]
    Encode(String),
}

impl Classify for BrokerError {
    fn cause(&self) -> Cause {
        match self {
            BrokerError::Unavailable { .. }
            | BrokerError::Timeout { .. }
            | BrokerError::Refused { .. } => Cause::Backend,
            BrokerError::Encode(_) => Cause::Internal,
        }
    }
    fn retryable(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable { .. } | BrokerError::Timeout { .. }
        )
    }
}

/// How far a publish reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every node with members of the room (on a single node: all of them).
    Cluster,
    /// This node's members only: the backend that links the nodes could not be reached.
    LocalOnly,
}

// ANCHOR: room_broker
/// Carries published events to every node that has members of their room: pub/sub.
///
/// The core tells the broker which rooms this node needs ([`subscribe`](Self::subscribe) on
/// a room's first local member, [`unsubscribe`](Self::unsubscribe) after its last) and hands
/// it every publish; the broker hands each delivery of a subscribed room, and every
/// namespace-wide delivery (`room: None`), to the [`Inbox`] of every node — this node's
/// included — once. How it reaches this node's inbox is the broker's choice: back through
/// its own subscription (so every node sees a room's events in one order), or directly.
#[async_trait]
pub trait RoomBroker: Send + Sync + 'static {
    /// Starts background work (connections, the subscription reader); deliveries go to
    /// `inbox`. Called once, inside the runtime, before any other call.
    async fn start(&self, inbox: Inbox) -> Result<(), BrokerError>;

    /// This node has members of `room` now. Returns once deliveries published anywhere in the
    /// cluster after it returns reach this node's inbox. While the backend is away it may
    /// return `Ok` and subscribe once the backend is back.
    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError>;

    /// This node has no members of `room` any more.
    async fn unsubscribe(&self, room: &Room) -> Result<(), BrokerError>;

    /// Hands `delivery` to the inbox of every node subscribed to its room, this node's
    /// included, once each; says whether it reached other nodes or only this one.
    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError>;

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> bool {
        true
    }

    /// Stops background work.
    async fn shutdown(&self) {}
}
// ANCHOR_END: room_broker

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_say_who_and_whether_to_retry() {
        let down = BrokerError::Unavailable {
            backend: "Redis",
            reason: "connection refused".into(),
        };
        assert_eq!(
            (down.cause(), down.retryable()),
            (Cause::Backend, true),
            "{down}"
        );
        let noperm = BrokerError::Refused {
            backend: "Redis",
            command: "PUBLISH",
            reason: "NOPERM".into(),
        };
        assert_eq!(
            (noperm.cause(), noperm.retryable()),
            (Cause::Backend, false)
        );
        assert_eq!(
            BrokerError::Encode("x".into()).cause(),
            Cause::Internal,
            "an encoding failure is ours"
        );
        let slow = BrokerError::Timeout {
            backend: "Redis",
            command: "SUBSCRIBE",
            after_ms: 2000,
        };
        assert_eq!(
            slow.to_string(),
            "Redis did not answer SUBSCRIBE within 2000 ms"
        );
    }
}
