//! Carrying events between nodes: the [`RoomBroker`] trait, the shared [`Delivery`] and the
//! [`Inbox`] through which a broker hands deliveries back to the core.
//!
//! A broker is pub/sub and nothing more. The core's rooms component
//! ([`crate::rooms`]) owns who is in which room; it calls [`RoomBroker::subscribe`] when a
//! room gains its first local member and [`RoomBroker::unsubscribe`] when it loses its last,
//! and the broker hands every delivery of a subscribed room, and every namespace-wide one, to
//! the node's [`Inbox`], which delivers to the local members. A broker never knows a socket.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
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

/// The room `{kind}:{id}` (`conversation:42`).
pub fn room_of(kind: &str, id: &str) -> Room {
    let mut name = String::with_capacity(kind.len() + 1 + id.len());
    name.push_str(kind);
    name.push(':');
    name.push_str(id);
    Room::from(name)
}

/// A place in a room's history: the stream (its epoch) and the event's number in it.
///
/// Numbers are dense (1, 2, 3 … per stream), so a gap is visible. A stream that was lost
/// (Redis restarted empty, the history expired) starts again under a new epoch, so a
/// position of the old one is never mistaken for one of the new. `n = 0` is "before the
/// stream's first event".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's epoch: a random word fixed when the stream was created.
    pub epoch: Arc<str>,
    /// The event's number in the stream.
    pub n: u64,
}

impl Position {
    /// A position in the stream `epoch`.
    pub fn new(epoch: impl Into<Arc<str>>, n: u64) -> Self {
        Position {
            epoch: epoch.into(),
            n,
        }
    }

    /// Whether `self` and `other` are of one stream and `self` comes after `other`.
    pub fn after(&self, other: &Position) -> bool {
        self.epoch == other.epoch && self.n > other.n
    }

    /// The offset text (`epoch:n`), as [`Display`](fmt::Display) writes it.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.epoch.len() + 21);
        self.push_to(&mut out);
        out
    }

    /// Appends the offset text (`epoch:n`) to `out`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(&self.epoch);
        out.push(':');
        out.push_str(itoa::Buffer::new().format(self.n));
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.epoch)?;
        f.write_str(":")?;
        f.write_str(itoa::Buffer::new().format(self.n))
    }
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, n) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not an offset (epoch:number)"))?;
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= 32
            && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid_epoch {
            return Err(format!("`{s}` is not an offset (bad epoch)"));
        }
        let n = n
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not an offset (bad number)"))?;
        Ok(Position::new(epoch, n))
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A fresh epoch: 10 random alphanumeric characters.
pub fn new_epoch() -> String {
    use std::hash::{BuildHasher, RandomState};
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = RandomState::new().hash_one(std::time::SystemTime::now());
    (0..10)
        .map(|_| {
            let c = ALPHABET[(v % 36) as usize];
            v /= 36;
            char::from(c)
        })
        .collect()
}

/// One published event, serialized once, shared by every node, transport and recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    /// The event name.
    pub event: Arc<str>,
    /// The target room; `None` is every socket of the namespace.
    pub room: Option<Room>,
    /// A connection that must not receive it (the sender of a typing event).
    pub except: Option<ConnId>,
    /// The payload, as JSON text.
    pub payload: Box<RawValue>,
    /// Its place in the room's history, when the broker kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    /// Whether the broker keeps it in the room's history (room events but typing
    /// indicators); only the publishing node reads it.
    #[serde(skip)]
    pub keep: bool,
    /// When it was published, in µs since the Unix epoch (0: unknown), for the
    /// publish-to-write latency each node measures.
    #[serde(default, rename = "t", skip_serializing_if = "is_zero")]
    pub published_us: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Delivery {
    /// A delivery of `payload` (already JSON) to `room`.
    pub fn new(event: impl Into<Arc<str>>, room: Option<Room>, payload: Box<RawValue>) -> Self {
        Delivery {
            event: event.into(),
            room,
            except: None,
            payload,
            position: None,
            keep: false,
            published_us: now_us(),
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

    /// Marks it for the room's history.
    pub fn kept(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// A copy of it at `position` (the broker's copy for the stream).
    pub fn at(&self, position: Position) -> Delivery {
        Delivery {
            event: self.event.clone(),
            room: self.room.clone(),
            except: self.except.clone(),
            payload: self.payload.clone(),
            position: Some(position),
            keep: self.keep,
            published_us: self.published_us,
        }
    }
}

/// A slice of a room's history.
#[derive(Debug, Default)]
pub struct History {
    /// The events, oldest first, each with its position.
    pub events: Vec<Delivery>,
    /// When each event of `events` was kept, on the broker's clock (microseconds, or any
    /// number that grows with publish order across the broker's rooms): it orders the
    /// events of several rooms. Empty when the broker cannot tell.
    pub kept_at: Vec<u64>,
    /// Whether the history reaches back to the position asked for: nothing after it was
    /// trimmed, expired or lost.
    pub complete: bool,
    /// The room's newest position, if the room has a stream.
    pub last: Option<Position>,
}

/// Answers a request from another node (or this one): the core's control handler.
pub type ControlHandler =
    Arc<dyn Fn(Value) -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync>;

/// A control request as the control log keeps it ([`RoomBroker::log_control`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedControl {
    /// The entry's id in the log.
    pub id: String,
    /// When it was written (ms since the epoch, by the log's clock).
    pub at_ms: u64,
    /// The request.
    pub request: Value,
}

/// Where a broker hands deliveries: the node's own local delivery, run by the core.
///
/// Calling [`Inbox::deliver`] writes the event to this node's members of its room (or, for a
/// namespace-wide delivery, every local socket) before it returns, so a broker that calls it
/// from one task delivers in the order it calls it.
#[derive(Clone)]
pub struct Inbox {
    sink: Arc<dyn Fn(&Delivery) + Send + Sync>,
    control: Option<ControlHandler>,
}

impl Inbox {
    /// An inbox that runs `sink` for each delivery (the core's own, or a test's recorder).
    pub fn from_fn(sink: impl Fn(&Delivery) + Send + Sync + 'static) -> Self {
        Inbox {
            sink: Arc::new(sink),
            control: None,
        }
    }

    /// The same inbox, answering requests of other nodes with `control`.
    pub fn with_control(mut self, control: ControlHandler) -> Self {
        self.control = Some(control);
        self
    }

    /// Delivers to this node's members of the delivery's room.
    pub fn deliver(&self, delivery: &Delivery) {
        (self.sink)(delivery);
    }

    /// Answers a request addressed to this node (`null` when the node answers none).
    pub async fn answer(&self, request: Value) -> Value {
        match &self.control {
            Some(c) => c(request).await,
            None => Value::Null,
        }
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
    /// The broker does not do what was asked (no history, no such node).
    #[error("{0}")]
    Unsupported(String),
}

impl Classify for BrokerError {
    fn cause(&self) -> Cause {
        match self {
            BrokerError::Unavailable { .. }
            | BrokerError::Timeout { .. }
            | BrokerError::Refused { .. } => Cause::Backend,
            BrokerError::Encode(_) | BrokerError::Unsupported(_) => Cause::Internal,
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

    /// Like [`publish`](Self::publish) for a delivery to keep in its room's history
    /// (`delivery.keep`): also answers the position the broker gave it. The default keeps
    /// nothing.
    async fn publish_kept(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<(Reach, Option<Position>), BrokerError> {
        self.publish(delivery).await.map(|r| (r, None))
    }

    /// `room`'s newest history position (what a socket that joins now has seen), creating
    /// the room's stream when it has none, so the position pins an epoch. `None` when the
    /// broker keeps no history.
    async fn position(&self, room: &Room) -> Result<Option<Position>, BrokerError> {
        let _ = room;
        Ok(None)
    }

    /// `room`'s kept events after `after` (from the oldest kept when `None`), oldest first,
    /// at most `limit`.
    async fn history(
        &self,
        room: &Room,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let _ = (room, after, limit);
        Err(BrokerError::Unsupported(
            "this broker keeps no history".to_owned(),
        ))
    }

    /// Stores `fields` under `key` (merged with what is there), kept for `ttl`: the small
    /// records the core keeps beside rooms (recovery sessions, delivery checkpoints).
    async fn put_record(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let _ = (key, fields, ttl);
        Err(BrokerError::Unsupported(
            "this broker keeps no records".to_owned(),
        ))
    }

    /// The values of `fields` under `key`.
    async fn get_record(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<Option<String>>, BrokerError> {
        let _ = key;
        Ok(vec![None; fields.len()])
    }

    /// Removes the record `key`, or only `fields` of it when some are given.
    async fn delete_record(&self, key: &str, fields: &[String]) -> Result<(), BrokerError> {
        let _ = (key, fields);
        Ok(())
    }

    /// Sends `request` to node `node` and waits up to `timeout` for its answer.
    async fn ask(
        &self,
        node: &str,
        request: Value,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let _ = (request, timeout);
        Err(BrokerError::Unsupported(format!("no node `{node}` to ask")))
    }

    /// Appends a control request about a user's sockets (join, leave, disconnect) to the
    /// cluster's control log, before the nodes alive are asked; answers the entry's id.
    ///
    /// A node that was cut off from the other nodes (so not asked) reads the entries it
    /// missed ([`control_log`](Self::control_log)) and carries them out, through its
    /// [`Inbox::answer`], before it receives any room's events again. When the log no
    /// longer holds all it may have missed, it hands [`Inbox::answer`] a
    /// `{"kind": "reset"}` first: the core closes every socket of the node so that each
    /// client connects again, afresh. `None`: a broker that links no nodes keeps no log.
    async fn log_control(&self, request: &Value) -> Result<Option<String>, BrokerError> {
        let _ = request;
        Ok(None)
    }

    /// The control log's entries written at or after `since_ms` (ms since the epoch, by the
    /// log's clock), oldest first: each entry's id, when it was written, and its request.
    async fn control_log(&self, since_ms: u64) -> Result<Vec<LoggedControl>, BrokerError> {
        let _ = since_ms;
        Ok(Vec::new())
    }

    /// The ids of the nodes that share this broker and are alive now, this one included;
    /// empty for a broker that links no nodes (this node alone).
    async fn nodes(&self) -> Result<Vec<String>, BrokerError> {
        Ok(Vec::new())
    }

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
    fn positions_read_back_and_order_within_a_stream() {
        let p: Position = "k3j9xq:42".parse().expect("position");
        assert_eq!(p, Position::new("k3j9xq", 42));
        assert_eq!(p.to_string(), "k3j9xq:42");
        assert_eq!(p.text(), "k3j9xq:42");
        assert!(Position::new("k3j9xq", 43).after(&p));
        assert!(!Position::new("other", 43).after(&p), "another stream");
        for bad in ["", "42", ":42", "a:b", "a b:1", "a:-1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
        let e = new_epoch();
        assert_eq!(e.len(), 10);
        assert!(e.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

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
