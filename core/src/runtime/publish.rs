//! The outbound path: validate and route (the declaring event set), `on_outbound` hooks once,
//! encode once, hand to the broker, which brings it to every node's rooms.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Gateway, Inner};
use crate::broker::{BrokerError, ConnId, Delivery, Reach, Room};
use crate::error::{Cause, Classify};
use crate::hooks::{Direction, HookCtx, Source, Verdict};

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
    /// Its place in the room's history, when it was kept.
    pub offset: Option<crate::broker::Position>,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// No plugin owns the event and no room was given.
    #[error("Unknown event: {0}; give a \"room\" to publish an event no plugin owns")]
    UnknownEvent(String),
    /// The data or the room is not of the event's shape.
    #[error("{message}")]
    Invalid {
        /// The field of the emit it is about: `event`, `room`, `data`, or `data.<field>`
        /// for a field of the payload.
        field: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The broker did not take it.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// Not every node could be reached (a user-targeted send).
    #[error("{0}")]
    Control(String),
    /// The user has no socket on any node (a user-targeted send).
    #[error("user {0} has no socket on any node")]
    NoSuchUser(String),
}

impl PublishError {
    /// The emit's `field` is wrong: `"{field}: {reason}"`.
    pub(crate) fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        PublishError::Invalid {
            field: field.to_owned(),
            message: format!("{field}: {reason}"),
        }
    }

    /// The payload is not of the event's shape, as `e` says: about `data.<field>`, or
    /// `data` as a whole.
    pub(crate) fn payload(e: crate::event::EventError) -> Self {
        PublishError::Invalid {
            field: e
                .field
                .map_or_else(|| "data".to_owned(), |f| format!("data.{f}")),
            message: e.message,
        }
    }
}

impl Classify for PublishError {
    fn cause(&self) -> Cause {
        match self {
            PublishError::UnknownEvent(_) | PublishError::Invalid { .. } => Cause::Client,
            PublishError::Broker(e) => e.cause(),
            PublishError::Control(_) => Cause::Backend,
            PublishError::NoSuchUser(_) => Cause::Client,
        }
    }
    fn retryable(&self) -> bool {
        match self {
            PublishError::UnknownEvent(_) | PublishError::Invalid { .. } => false,
            PublishError::Broker(e) => e.retryable(),
            PublishError::Control(_) => true,
            PublishError::NoSuchUser(_) => false,
        }
    }
}

/// Why a room a backend names (to publish into, or to read the history of) is refused:
/// empty, or longer than ids may be plus room for a prefix.
pub(crate) fn bad_room_name(room: &str, limits: &crate::config::LimitsConfig) -> Option<String> {
    let max = limits.max_id_chars + 64;
    (room.is_empty() || crate::limits::over_chars(room, max))
        .then(|| format!("must be a non-empty string of at most {max} characters"))
}

/// A backend may not publish Socket.IO's own events or the gateway's ([`crate::event::reserved`]).
pub(crate) fn refuse_reserved(event: &str) -> Result<(), PublishError> {
    match crate::event::reserved(event) {
        Some(rule) => Err(PublishError::invalid(
            "event",
            format!("`{event}` {rule}, and cannot be published"),
        )),
        None => Ok(()),
    }
}

impl Gateway {
    /// Publishes an event from a backend (HTTP API or Rust code): validate, route, hook, deliver.
    pub async fn publish(&self, req: Publish) -> Result<Published, PublishError> {
        refuse_reserved(&req.event)?;
        let limits = &self.0.config.limits;
        let routed = match self.0.events.outbound(&req.event) {
            Some(decl) => Some(
                decl.route(&req.data, limits)
                    .map_err(PublishError::payload)?,
            ),
            None => None,
        };
        let room = self.pick_room(&req.event, req.room.as_deref(), routed)?;
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: Some(&room),
            source: Source::Api,
            user_id: None,
            socket_id: None,
            claims: None,
        };
        let started = std::time::Instant::now();
        let sent = self
            .0
            .publish_routed(&req.event, Some(room.clone()), req.data, None, &ctx)
            .await?;
        Ok(self.published(started, room, sent))
    }

    /// What a publish started at `started` did (and its time, observed); `sent` is `None`
    /// when a hook dropped it.
    fn published(
        &self,
        started: std::time::Instant,
        room: Room,
        sent: Option<(Reach, Option<crate::broker::Position>)>,
    ) -> Published {
        self.0
            .metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        Published {
            room,
            dropped: sent.is_none(),
            local_only: sent.as_ref().is_some_and(|(r, _)| *r == Reach::LocalOnly),
            offset: sent.and_then(|(_, p)| p),
        }
    }

    /// Publishes `data`, JSON text as the backend sent it, as [`publish`](Self::publish)
    /// does. With no hook configured and a valid payload the text is delivered as it is,
    /// without a round trip through a JSON value; otherwise it takes `publish`'s path
    /// (whose errors name the field).
    pub(crate) async fn publish_raw(
        &self,
        event: &str,
        room: Option<&str>,
        data: &serde_json::value::RawValue,
    ) -> Result<Published, PublishError> {
        let slow = |event: &str, room: Option<&str>, data: &serde_json::value::RawValue| {
            serde_json::from_str::<Value>(data.get())
                .map(|data| Publish {
                    event: event.to_owned(),
                    data,
                    room: room.map(str::to_owned),
                })
                .map_err(|e| PublishError::invalid("data", e))
        };
        if !self.0.hooks.is_empty() {
            return self.publish(slow(event, room, data)?).await;
        }
        refuse_reserved(event)?;
        let (name, routed, kept) = match self.0.events.outbound(event) {
            Some(decl) => match decl.route_raw(data.get(), &self.0.config.limits) {
                Some(room) => (decl.shared_name(), Some(room), decl.kept()),
                None => return self.publish(slow(event, room, data)?).await,
            },
            None => (Arc::from(event), None, true),
        };
        let room = self.pick_room(event, room, routed)?;
        let started = std::time::Instant::now();
        let delivery = Delivery::new(name, Some(room.clone()), data.to_owned());
        let sent = self.0.send_as(event, delivery, kept).await?;
        Ok(self.published(started, room, Some(sent)))
    }

    /// The room a publish goes to: the one it names (checked), else the one its event
    /// derives.
    fn pick_room(
        &self,
        event: &str,
        named: Option<&str>,
        routed: Option<Room>,
    ) -> Result<Room, PublishError> {
        let limits = &self.0.config.limits;
        match (named, routed) {
            (Some(room), _) => {
                if let Some(reason) = bad_room_name(room, limits) {
                    return Err(PublishError::invalid("room", reason));
                }
                Ok(Room::from(room))
            }
            (None, Some(room)) => Ok(room),
            (None, None) => Err(PublishError::UnknownEvent(event.to_owned())),
        }
    }

    /// `room`'s kept events after `since` (from the oldest kept when `None`), at most `limit`.
    pub async fn history(
        &self,
        room: &str,
        since: Option<&crate::broker::Position>,
        limit: usize,
    ) -> Result<crate::broker::History, BrokerError> {
        self.0.broker.history(&Room::from(room), since, limit).await
    }

    /// Sends `user:online`/`user:offline` to the whole namespace (except the new socket).
    pub(crate) async fn announce(&self, event: &str, user: &str, except: Option<ConnId>) {
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: None,
            source: Source::Api,
            user_id: Some(user),
            socket_id: except.as_ref().map(ConnId::as_str),
            claims: None,
        };
        let _ = self
            .0
            .publish_routed(event, None, json!({ "userId": user }), except.clone(), &ctx)
            .await;
    }

    /// Runs the hooks in order; `None` when one dropped the event.
    pub(crate) fn run_hooks(
        &self,
        event: &str,
        payload: Value,
        ctx: &HookCtx<'_>,
        dir: Direction,
    ) -> Option<Value> {
        self.0.run_hooks(event, payload, ctx, dir)
    }
}

impl Inner {
    /// Runs `on_outbound` once, serializes once and hands the delivery to the broker.
    ///
    /// Returns how far it reached and, when kept, its place in the room's history; `None`
    /// when a hook dropped the event.
    pub(crate) async fn publish_routed(
        &self,
        event: &str,
        room: Option<Room>,
        data: Value,
        except: Option<ConnId>,
        ctx: &HookCtx<'_>,
    ) -> Result<Option<(Reach, Option<crate::broker::Position>)>, BrokerError> {
        let Some(data) = self.run_hooks(event, data, ctx, Direction::Outbound) else {
            return Ok(None);
        };
        let delivery = Delivery::encode(event, room, &data)
            .map_err(|e| BrokerError::Encode(e.to_string()))?
            .except(except);
        self.send(event, delivery).await.map(Some)
    }

    /// Hands an encoded delivery to the broker, kept in its room's history unless the
    /// event is transient (typing) or history is off.
    pub(crate) async fn send(
        &self,
        event: &str,
        delivery: Delivery,
    ) -> Result<(Reach, Option<crate::broker::Position>), BrokerError> {
        let kept = self.events.outbound(event).is_none_or(|d| d.kept());
        self.send_as(event, delivery, kept).await
    }

    /// [`send`](Self::send) for an event whose declaration (`kept`: whether a room keeps
    /// it, true for an undeclared one) is already looked up.
    pub(crate) async fn send_as(
        &self,
        event: &str,
        delivery: Delivery,
        kept: bool,
    ) -> Result<(Reach, Option<crate::broker::Position>), BrokerError> {
        let keep = kept && delivery.room.is_some() && self.config.history.enabled();
        let delivery = delivery.kept(keep);
        self.metrics.count_out(event);
        let sent = if keep {
            self.broker.publish_kept(Arc::new(delivery)).await
        } else {
            self.broker
                .publish(Arc::new(delivery))
                .await
                .map(|r| (r, None))
        };
        match sent {
            Ok(sent) => Ok(sent),
            Err(e) => {
                self.backend_error("broker", &e.to_string());
                Err(e)
            }
        }
    }

    pub(crate) fn run_hooks(
        &self,
        event: &str,
        mut payload: Value,
        ctx: &HookCtx<'_>,
        dir: Direction,
    ) -> Option<Value> {
        for hook in &self.hooks {
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
}
