//! Event sets: what a plugin declares (each inbound event with its payload type and handler,
//! each outbound event with its payload type and room rule, its room kinds), the context a
//! handler gets, its errors and the payload validation helpers.
//!
//! An [`EventSet`] is data: the core dispatches from it, answers events nobody declared,
//! refuses at start-up an event two sets declare, and `switchboard schema` reads it (each
//! payload type's [`JsonSchema`] is what it prints).
//!
//! ```
//! use serde::Deserialize;
//! use switchboard_core::config::LimitsConfig;
//! use switchboard_core::event::{EventSet, Outcome, Validate, check_id};
//! use switchboard_core::schema::{Id, JsonSchema};
//! use switchboard_core::{EventError, Room};
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(rename_all = "camelCase")]
//! struct Closed {
//!     #[schemars(with = "Id")]
//!     poll_id: String,
//! }
//!
//! impl Validate for Closed {
//!     fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
//!         check_id(event, "pollId", &self.poll_id, limits)
//!     }
//! }
//!
//! let set = EventSet::new("polls")
//!     .rooms("poll", "pollId")                       // poll:join / poll:leave
//!     .emits("poll:closed", "poll:{pollId}", |c: &Closed| Room::from(format!("poll:{}", c.poll_id)));
//! assert_eq!(set.inbound().map(|e| e.name()).collect::<Vec<_>>(), ["poll:join", "poll:leave"]);
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::broker::Room;
use crate::config::{ConfigError, ConfigIssue, LimitsConfig};
use crate::session::{Session, Ticket};

/// What kind of failure an event met; each kind is counted in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The payload is not of the event's shape.
    InvalidPayload,
    /// No handler owns the event.
    UnknownEvent,
    /// Over `limits.max_event_bytes`.
    TooLarge,
    /// Nested deeper than `limits.max_depth`.
    TooDeep,
    /// Over the socket's event rate.
    RateLimited,
    /// A join the policy or a hook refused.
    Unauthorized,
    /// Over `limits.max_rooms_per_socket`.
    RoomLimit,
    /// A backend (Redis) did not answer.
    Backend,
    /// A hook failed.
    Hook,
}

impl ErrorKind {
    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidPayload => "invalid_payload",
            ErrorKind::UnknownEvent => "unknown_event",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::RoomLimit => "room_limit",
            ErrorKind::Backend => "backend",
            ErrorKind::Hook => "hook",
        }
    }
}

/// An event that cannot be carried out; the message is what the client's `error` event says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    /// The kind, for metrics and HTTP status codes.
    pub kind: ErrorKind,
    /// A message for the client that names the offending field.
    pub message: String,
    /// The payload field it is about (`conversationId`, `content.text`), when it is about one.
    pub field: Option<String>,
}

impl EventError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EventError {
            kind,
            message: message.into(),
            field: None,
        }
    }
    /// A payload error: `"{event}: {field}: {reason}"`.
    pub fn invalid(event: &str, field: &str, reason: impl AsRef<str>) -> Self {
        let message = if field.is_empty() {
            format!("Invalid payload for {event}: {}", reason.as_ref())
        } else {
            format!("Invalid payload for {event}: {field}: {}", reason.as_ref())
        };
        let mut e = EventError::new(ErrorKind::InvalidPayload, message);
        e.field = (!field.is_empty()).then(|| field.to_owned());
        e
    }
    /// The answer to an event nobody declared.
    pub fn unknown(event: &str) -> Self {
        EventError::new(ErrorKind::UnknownEvent, format!("Unknown event: {event}"))
    }
}

/// What an inbound event produced for the socket that sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send `event` with `data` to the sender, and ack with the same `data`.
    Reply {
        /// The reply event's name (`conversation:joined`).
        event: Cow<'static, str>,
        /// Its payload.
        data: Value,
    },
    /// No reply event; an ack, if asked for, is `{success: true}`.
    Done,
}

impl Outcome {
    /// A reply `event` with `data`.
    pub fn reply(event: impl Into<Cow<'static, str>>, data: Value) -> Self {
        Outcome::Reply {
            event: event.into(),
            data,
        }
    }
}

/// A handler's result, boxed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Outcome, EventError>> + Send>>;
type InboundFn = Arc<dyn Fn(InboundCtx, Value) -> HandlerFuture + Send + Sync>;
type RouteFn = Arc<dyn Fn(&Value, &LimitsConfig) -> Result<Room, EventError> + Send + Sync>;
/// Reads JSON text straight into the payload's type and derives the room; `None` when the
/// text is not a well-formed payload (the [`RouteFn`] then says why).
type RawRouteFn = Arc<dyn Fn(&str, &LimitsConfig) -> Option<Room> + Send + Sync>;

/// An event's payload, as declared: its name in schemas, its JSON Schema and its check.
#[derive(Clone)]
pub struct Payload {
    /// The name its schema goes by (`MessageStatus`, `ConversationRoom`), or `any`.
    pub type_name: Cow<'static, str>,
    shape: Shape,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;
type CheckFn = fn(&str, &Value, &LimitsConfig) -> Result<(), EventError>;

/// Where a payload's schema and check come from.
#[derive(Clone, Copy)]
enum Shape {
    /// A Rust type: its derived schema, and its [`Validate::parse`].
    Typed { schema: SchemaFn, check: CheckFn },
    /// A Rust type that is only described (a reply the core does not parse).
    Described(SchemaFn),
    /// A room kind's join or leave: `{<field>: id}`.
    RoomRef(&'static str),
    /// A room kind's reply: `{<field>: id, success: true}`.
    RoomReply(&'static str),
    /// Any JSON, unchecked.
    Any,
}

fn subschema<P: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<P>()
}

fn check<P: Validate>(event: &str, v: &Value, limits: &LimitsConfig) -> Result<(), EventError> {
    P::parse(event, v, limits).map(|_| ())
}

impl Payload {
    fn of<P: Validate>() -> Self {
        Payload {
            type_name: P::schema_name(),
            shape: Shape::Typed {
                schema: subschema::<P>,
                check: check::<P>,
            },
        }
    }

    fn described<P: JsonSchema>() -> Self {
        Payload {
            type_name: P::schema_name(),
            shape: Shape::Described(subschema::<P>),
        }
    }

    fn any() -> Self {
        Payload {
            type_name: Cow::Borrowed("any"),
            shape: Shape::Any,
        }
    }

    fn room(name: String, shape: Shape) -> Self {
        Payload {
            type_name: Cow::Owned(name),
            shape,
        }
    }

    /// Its JSON Schema: a reference into `g`'s definitions (`true` for any JSON).
    pub fn schema(&self, g: &mut SchemaGenerator) -> Schema {
        let (field, reply) = match self.shape {
            Shape::Typed { schema, .. } | Shape::Described(schema) => return schema(g),
            Shape::Any => return Schema::from(true),
            Shape::RoomRef(field) => (field, false),
            Shape::RoomReply(field) => (field, true),
        };
        let id = g.subschema_for::<crate::schema::Id>();
        let mut properties = serde_json::Map::new();
        properties.insert(field.to_owned(), id.to_value());
        let mut required = vec![field];
        if reply {
            properties.insert("success".to_owned(), json!({ "const": true }));
            required.push("success");
        }
        let def = json!({
            "type": "object",
            "properties": properties,
            "required": required,
        });
        g.definitions_mut().insert(self.type_name.to_string(), def);
        Schema::from(
            json!({ "$ref": format!("#/$defs/{}", self.type_name) })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// Checks `payload` as the event's handler or route would, without running it.
    pub fn check(
        &self,
        event: &str,
        payload: &Value,
        limits: &LimitsConfig,
    ) -> Result<(), EventError> {
        match self.shape {
            Shape::Typed { check, .. } => check(event, payload, limits),
            Shape::RoomRef(field) => parse_id(event, field, payload, limits).map(|_| ()),
            Shape::Described(_) | Shape::RoomReply(_) | Shape::Any => Ok(()),
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.type_name)
    }
}

/// A client → server event a set declares.
#[derive(Clone)]
pub struct InboundEvent {
    name: Cow<'static, str>,
    payload: Payload,
    reply: Option<(Cow<'static, str>, Payload)>,
    handler: InboundFn,
}

impl InboundEvent {
    /// The event name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// The event the sender gets back, when the set declared one.
    pub fn reply(&self) -> Option<&str> {
        self.reply.as_ref().map(|(name, _)| name.as_ref())
    }
    /// The reply event's payload, when the set declared one (also the ack's).
    pub fn reply_payload(&self) -> Option<&Payload> {
        self.reply.as_ref().map(|(_, p)| p)
    }
    pub(crate) fn call(&self, ctx: InboundCtx, payload: Value) -> HandlerFuture {
        (self.handler)(ctx, payload)
    }
}

impl std::fmt::Debug for InboundEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundEvent")
            .field("name", &self.name)
            .field("payload", &self.payload)
            .finish()
    }
}

/// A server → client event a set declares: a backend publishes it, the set validates it and
/// derives its room.
#[derive(Clone)]
pub struct OutboundEvent {
    name: Cow<'static, str>,
    /// The name as every delivery of it holds it: one allocation for all of them.
    shared_name: Arc<str>,
    payload: Payload,
    room: &'static str,
    kept: bool,
    route: RouteFn,
    route_raw: RawRouteFn,
}

impl OutboundEvent {
    /// The event name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The event name, shared (a delivery's `event`).
    pub fn shared_name(&self) -> Arc<str> {
        self.shared_name.clone()
    }
    /// Its payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
    /// The room rule, as documentation (`conversation:{conversationId}`).
    pub fn room_rule(&self) -> &'static str {
        self.room
    }
    /// Whether the event belongs in a room's history (typing indicators do not).
    pub fn kept(&self) -> bool {
        self.kept
    }
    /// Validates `data` and derives the room.
    pub fn route(&self, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        (self.route)(data, limits)
    }
    /// Validates `data`, JSON text, and derives the room; `None` when it is not valid (what
    /// is wrong is for [`route`](Self::route) to say).
    pub fn route_raw(&self, data: &str, limits: &LimitsConfig) -> Option<Room> {
        (self.route_raw)(data, limits)
    }
}

impl std::fmt::Debug for OutboundEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundEvent")
            .field("name", &self.name)
            .field("room", &self.room)
            .finish()
    }
}

/// A kind of room a set owns: `conversation` rooms are `conversation:{id}`, joined with
/// `conversation:join {conversationId}` and answered with `conversation:joined`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKind {
    /// The kind (`conversation`): the rooms' prefix without the colon.
    pub kind: &'static str,
    /// The payload field holding the id (`conversationId`).
    pub id_field: &'static str,
}

impl RoomKind {
    /// The room of `id`: `{kind}:{id}`.
    pub fn room(&self, id: &str) -> Room {
        crate::broker::room_of(self.kind, id)
    }
    /// The id of `room` when it is of this kind.
    pub fn id_of<'r>(&self, room: &'r str) -> Option<&'r str> {
        room.strip_prefix(self.kind)?.strip_prefix(':')
    }
    /// The reply to a join of room `id` (`{conversationId, success: true}`), as the event
    /// name and payload.
    pub fn joined(&self, id: &str) -> (String, Value) {
        (
            format!("{}:joined", self.kind),
            json!({ self.id_field: id, "success": true }),
        )
    }
    /// The reply to a leave of room `id`.
    pub fn left(&self, id: &str) -> (String, Value) {
        (
            format!("{}:left", self.kind),
            json!({ self.id_field: id, "success": true }),
        )
    }
}

// ANCHOR: event_handler
/// A plugin that owns a set of events: it declares them, the core dispatches them.
///
/// Built-ins: `conversation`, `typing`, `session`. An [`EventSet`] is itself an
/// `EventHandler`, so a factory usually returns `Arc::new(set)`.
pub trait EventHandler: Send + Sync + 'static {
    /// The events this plugin declares: client events with their payload types and
    /// handlers, server events with their payload types and rooms, kinds of room.
    fn event_set(&self) -> EventSet;
}
// ANCHOR_END: event_handler

impl EventHandler for EventSet {
    fn event_set(&self) -> EventSet {
        self.clone()
    }
}

/// The events one plugin declares.
#[derive(Clone, Debug)]
pub struct EventSet {
    name: String,
    inbound: Vec<InboundEvent>,
    outbound: Vec<OutboundEvent>,
    rooms: Vec<RoomKind>,
}

impl EventSet {
    /// An empty set; `name` is the plugin's (`conversation`), used in start-up errors.
    pub fn new(name: impl Into<String>) -> Self {
        EventSet {
            name: name.into(),
            inbound: Vec::new(),
            outbound: Vec::new(),
            rooms: Vec::new(),
        }
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares a client → server event: its payload is parsed and validated as `P` (an
    /// `error` naming the field otherwise), then `handler` runs.
    pub fn on<P, F, Fut>(mut self, event: &'static str, handler: F) -> Self
    where
        P: Validate + Send + 'static,
        F: Fn(InboundCtx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, EventError>> + Send + 'static,
    {
        let f: InboundFn = Arc::new(move |ctx: InboundCtx, payload: Value| {
            match P::parse(event, &payload, ctx.limits()) {
                Ok(p) => Box::pin(handler(ctx, p)),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        });
        self.inbound.push(InboundEvent {
            name: Cow::Borrowed(event),
            payload: Payload::of::<P>(),
            reply: None,
            handler: f,
        });
        self
    }

    /// Declares a server → client event a backend may publish: `data` is validated as `P`
    /// and `route` derives its room; `rule` says which room, for docs (`poll:{pollId}`).
    pub fn emits<P>(self, event: &'static str, rule: &'static str, route: fn(&P) -> Room) -> Self
    where
        P: Validate + 'static,
    {
        self.outbound_event::<P>(event, rule, route, true)
    }

    /// Like [`EventSet::emits`], for an event that is never kept in a room's history
    /// (typing indicators).
    pub fn emits_transient<P>(
        self,
        event: &'static str,
        rule: &'static str,
        route: fn(&P) -> Room,
    ) -> Self
    where
        P: Validate + 'static,
    {
        self.outbound_event::<P>(event, rule, route, false)
    }

    fn outbound_event<P>(
        mut self,
        event: &'static str,
        rule: &'static str,
        route: fn(&P) -> Room,
        kept: bool,
    ) -> Self
    where
        P: Validate + 'static,
    {
        let f: RouteFn = Arc::new(move |data: &Value, limits: &LimitsConfig| {
            P::parse(event, data, limits).map(|p| route(&p))
        });
        let raw: RawRouteFn = Arc::new(move |data: &str, limits: &LimitsConfig| {
            // An object only, as `parse_payload` requires (serde reads a struct from an
            // array too).
            if !data.trim_start().starts_with('{') {
                return None;
            }
            let p: P = serde_json::from_str(data).ok()?;
            p.validate(event, limits).ok()?;
            Some(route(&p))
        });
        self.outbound.push(OutboundEvent {
            name: Cow::Borrowed(event),
            shared_name: Arc::from(event),
            payload: Payload::of::<P>(),
            room: rule,
            kept,
            route: f,
            route_raw: raw,
        });
        self
    }

    /// Declares a kind of room: `{kind}:join` and `{kind}:leave` with `{<id_field>}` join and
    /// leave `{kind}:{id}` (through the room policy and `authorize` hooks) and answer
    /// `{kind}:joined` / `{kind}:left` `{<id_field>, success: true}`.
    pub fn rooms(mut self, kind: &'static str, id_field: &'static str) -> Self {
        let rk = RoomKind { kind, id_field };
        for joining in [true, false] {
            let rk2 = rk.clone();
            let verb = if joining { "join" } else { "leave" };
            let name: Cow<'static, str> = Cow::Owned(format!("{kind}:{verb}"));
            let event = name.to_string();
            let f: InboundFn = Arc::new(move |ctx: InboundCtx, payload: Value| {
                let rk = rk2.clone();
                let id = parse_id(&event, rk.id_field, &payload, ctx.limits());
                Box::pin(async move {
                    let id = id?;
                    let room = rk.room(&id);
                    let (reply, data) = if joining {
                        ctx.join(room).await?;
                        rk.joined(&id)
                    } else {
                        ctx.leave(room).await?;
                        rk.left(&id)
                    };
                    Ok(Outcome::reply(reply, data))
                })
            });
            let pascal = pascal_case(kind);
            let reply = format!("{kind}:{}", if joining { "joined" } else { "left" });
            let reply_type = format!("{pascal}{}", if joining { "Joined" } else { "Left" });
            self.inbound.push(InboundEvent {
                name,
                payload: Payload::room(format!("{pascal}Room"), Shape::RoomRef(id_field)),
                reply: Some((
                    Cow::Owned(reply),
                    Payload::room(reply_type, Shape::RoomReply(id_field)),
                )),
                handler: f,
            });
        }
        self.rooms.push(rk);
        self
    }

    /// Declares an inbound event with a handler that takes the payload as JSON, unparsed.
    pub fn on_value<F, Fut>(mut self, event: &'static str, handler: F) -> Self
    where
        F: Fn(InboundCtx, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, EventError>> + Send + 'static,
    {
        self.inbound.push(InboundEvent {
            name: Cow::Borrowed(event),
            payload: Payload::any(),
            reply: None,
            handler: Arc::new(move |ctx, v| Box::pin(handler(ctx, v))),
        });
        self
    }

    /// Names the reply event of the inbound event declared last (for docs and schemas),
    /// whose payload is any JSON.
    pub fn replying(mut self, reply: &'static str) -> Self {
        if let Some(last) = self.inbound.last_mut() {
            last.reply = Some((Cow::Borrowed(reply), Payload::any()));
        }
        self
    }

    /// Names the reply event of the inbound event declared last, with its payload type.
    pub fn replying_with<R: JsonSchema>(mut self, reply: &'static str) -> Self {
        if let Some(last) = self.inbound.last_mut() {
            last.reply = Some((Cow::Borrowed(reply), Payload::described::<R>()));
        }
        self
    }

    /// The client → server events, in declaration order.
    pub fn inbound(&self) -> impl Iterator<Item = &InboundEvent> {
        self.inbound.iter()
    }

    /// The server → client events a backend may publish.
    pub fn outbound(&self) -> impl Iterator<Item = &OutboundEvent> {
        self.outbound.iter()
    }

    /// The room kinds.
    pub fn room_kinds(&self) -> &[RoomKind] {
        &self.rooms
    }
}

/// Every declared event of a node, by name: what the core dispatches from.
#[derive(Debug, Default)]
pub struct EventTable {
    sets: Vec<EventSet>,
    inbound: HashMap<String, (String, InboundEvent), foldhash::fast::RandomState>,
    outbound: HashMap<String, (String, OutboundEvent), foldhash::fast::RandomState>,
    rooms: Vec<(String, RoomKind)>,
}

impl EventTable {
    /// Indexes `sets`; an event or room kind two sets declare is an error naming both.
    pub fn build(sets: &[EventSet]) -> Result<Self, ConfigError> {
        let mut table = EventTable {
            sets: sets.to_vec(),
            ..EventTable::default()
        };
        let mut issues = Vec::new();
        for set in sets {
            let claims = set
                .inbound
                .iter()
                .map(InboundEvent::name)
                .filter(|n| {
                    *n != crate::refresh::AUTH_REFRESH || set.name != crate::refresh::SET_NAME
                })
                .chain(set.outbound.iter().map(OutboundEvent::name));
            for name in claims {
                if let Some(rule) = reserved(name) {
                    issues.push(ConfigIssue {
                        key: "events.plugins".to_owned(),
                        reason: format!(
                            "`{}` declares the event `{name}`, which {rule}; rename it",
                            set.name
                        ),
                        origin: None,
                    });
                }
            }
        }
        let mut clash = |what: &str, name: &str, first: &str, second: &str| {
            issues.push(ConfigIssue {
                key: "events.plugins".to_owned(),
                reason: format!(
                    "{what} `{name}` is declared by both `{first}` and `{second}`; enable one of them"
                ),
                origin: None,
            });
        };
        for set in sets {
            for e in &set.inbound {
                match table.inbound.get(e.name()) {
                    Some((owner, _)) => clash("client event", e.name(), owner, &set.name),
                    None => {
                        table
                            .inbound
                            .insert(e.name().to_owned(), (set.name.clone(), e.clone()));
                    }
                }
            }
            for e in &set.outbound {
                match table.outbound.get(e.name()) {
                    Some((owner, _)) => clash("server event", e.name(), owner, &set.name),
                    None => {
                        table
                            .outbound
                            .insert(e.name().to_owned(), (set.name.clone(), e.clone()));
                    }
                }
            }
            for rk in &set.rooms {
                match table.rooms.iter().find(|(_, k)| k.kind == rk.kind) {
                    Some((owner, _)) => {
                        let owner = owner.clone();
                        clash("room kind", rk.kind, &owner, &set.name);
                    }
                    None => table.rooms.push((set.name.clone(), rk.clone())),
                }
            }
        }
        if issues.is_empty() {
            Ok(table)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// The sets, in the order the node took them (the auth layer's first).
    pub fn sets(&self) -> &[EventSet] {
        &self.sets
    }

    /// The declaration of client event `name`.
    pub fn inbound(&self, name: &str) -> Option<&InboundEvent> {
        self.inbound.get(name).map(|(_, e)| e)
    }

    /// The declaration of server event `name`.
    pub fn outbound(&self, name: &str) -> Option<&OutboundEvent> {
        self.outbound.get(name).map(|(_, e)| e)
    }

    /// The room kind `room` belongs to, if a set declared it.
    pub fn room_kind(&self, room: &str) -> Option<&RoomKind> {
        self.rooms
            .iter()
            .map(|(_, k)| k)
            .find(|k| k.id_of(room).is_some())
    }
}

/// Socket.IO's own event names: a client library treats them specially (`connect` from a
/// server makes socket.io-client drop the connection).
pub const SOCKETIO_RESERVED: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why `name` cannot be published by a backend or claimed by a plugin, if it cannot:
/// Socket.IO's own events and the gateway's (`error`, `user:*`, `auth:*`, `*:joined`,
/// `*:left`).
pub fn reserved(name: &str) -> Option<&'static str> {
    if SOCKETIO_RESERVED.contains(&name) {
        return Some("is reserved by Socket.IO");
    }
    if name == "error"
        || name.starts_with("user:")
        || name.starts_with("auth:")
        || name.ends_with(":joined")
        || name.ends_with(":left")
    {
        return Some("is the gateway's own (error, user:*, auth:*, *:joined, *:left)");
    }
    None
}

/// `waiting-input` → `WaitingInput`: a room kind as a type name.
fn pascal_case(word: &str) -> String {
    word.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// Reads the id field of a room kind's join or leave, with the same messages as
/// [`parse_payload`] gives for a struct with that one field.
fn parse_id(
    event: &str,
    field: &str,
    payload: &Value,
    limits: &LimitsConfig,
) -> Result<String, EventError> {
    let Some(obj) = payload.as_object() else {
        return Err(EventError::invalid(
            event,
            "",
            format!("expected an object, got {}", json_type(payload)),
        ));
    };
    let Some(v) = obj.get(field) else {
        return Err(EventError::invalid(event, field, "is required"));
    };
    let id =
        String::deserialize(v).map_err(|e| EventError::invalid(event, field, e.to_string()))?;
    check_id(event, field, &id, limits)?;
    Ok(id)
}

/// What the core does for a handler: the operations behind [`InboundCtx`].
#[async_trait]
pub(crate) trait Core: Send + Sync {
    fn limits(&self) -> &LimitsConfig;
    async fn join(
        &self,
        session: &Arc<Session>,
        ticket: &Ticket,
        room: Room,
    ) -> Result<(), EventError>;
    async fn leave(
        &self,
        session: &Arc<Session>,
        ticket: &Ticket,
        room: Room,
    ) -> Result<(), EventError>;
    async fn publish(
        &self,
        session: &Arc<Session>,
        room: Room,
        event: &str,
        data: Value,
        except_sender: bool,
    ) -> Result<bool, EventError>;
    async fn refresh(&self, session: &Arc<Session>, token: &str)
    -> Result<Option<u64>, EventError>;
}

/// What a handler can do while handling one client event.
pub struct InboundCtx {
    core: Arc<dyn Core>,
    session: Arc<Session>,
    ticket: Ticket,
}

impl std::fmt::Debug for InboundCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundCtx")
            .field("session", &self.session)
            .finish()
    }
}

impl InboundCtx {
    pub(crate) fn new(core: Arc<dyn Core>, session: Arc<Session>, ticket: Ticket) -> Self {
        InboundCtx {
            core,
            session,
            ticket,
        }
    }
    /// The sender's identity.
    pub fn identity(&self) -> Arc<Identity> {
        self.session.identity()
    }
    /// The sender's socket.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
    /// The configured limits.
    pub fn limits(&self) -> &LimitsConfig {
        self.core.limits()
    }

    /// Joins `room` if the room policy and the hooks allow it; effective cluster-wide when
    /// this returns. After the socket's earlier events' joins and leaves; joining a room the
    /// socket is in does nothing.
    pub async fn join(&self, room: Room) -> Result<(), EventError> {
        self.core.join(&self.session, &self.ticket, room).await
    }

    /// Leaves `room` (nothing when not in it), after the socket's earlier joins and leaves.
    pub async fn leave(&self, room: Room) -> Result<(), EventError> {
        self.core.leave(&self.session, &self.ticket, room).await
    }

    /// Publishes to `room` through the outbound pipeline (hooks once, encode once, broker).
    ///
    /// With `except_sender`, the sending socket does not receive it. Returns `false` if a
    /// hook dropped it.
    pub async fn publish(
        &self,
        room: Room,
        event: &str,
        data: Value,
        except_sender: bool,
    ) -> Result<bool, EventError> {
        self.core
            .publish(&self.session, room, event, data, except_sender)
            .await
    }

    /// Replaces the socket's token with `token` (same `sub`); returns its new expiry.
    pub async fn refresh_token(&self, token: &str) -> Result<Option<u64>, EventError> {
        self.core.refresh(&self.session, token).await
    }
}

/// Deserializes `payload` into `T`; an error names the field (`conversationId: is required`).
pub fn parse_payload<T: DeserializeOwned>(event: &str, payload: &Value) -> Result<T, EventError> {
    if !payload.is_object() {
        return Err(EventError::invalid(
            event,
            "",
            format!("expected an object, got {}", json_type(payload)),
        ));
    }
    // Read plainly first; only a payload with a mistake is read again, tracking the path
    // to name the field (which costs about as much as the read itself).
    if let Ok(parsed) = T::deserialize(payload) {
        return Ok(parsed);
    }
    serde_path_to_error::deserialize::<_, T>(payload).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let (field, reason) = match inner.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.split('`').next().unwrap_or(rest);
                let field = if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                (field, "is required".to_owned())
            }
            None => (if path == "." { String::new() } else { path }, inner),
        };
        EventError::invalid(event, &field, reason)
    })
}

/// The JSON type name of a value, for messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks an id field: a non-empty string of at most `limits.max_id_chars` characters.
pub fn check_id(
    event: &str,
    field: &str,
    id: &str,
    limits: &LimitsConfig,
) -> Result<(), EventError> {
    if id.is_empty() {
        return Err(EventError::invalid(
            event,
            field,
            "must be a non-empty string",
        ));
    }
    if crate::limits::over_chars(id, limits.max_id_chars) {
        return Err(EventError::invalid(
            event,
            field,
            format!("must be at most {} characters", limits.max_id_chars),
        ));
    }
    Ok(())
}

/// The nesting depth of a JSON value (a scalar is 0, `{}` is 1).
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    max
}

/// Deserializes `payload` into `T` and checks it, the shared first step of every handler.
///
/// Its [`JsonSchema`] is what `switchboard schema` prints; mark id fields
/// `#[schemars(with = "Id")]` (`Option<Id>` when optional) and fields checked against a
/// list with `schema_with` and [`crate::schema::one_of`], so the schema says what
/// `validate` checks.
pub trait Validate: DeserializeOwned + JsonSchema {
    /// Checks the fields serde cannot (id lengths, enums); errors name the field.
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError>;

    /// Parses and validates in one step.
    fn parse(event: &str, payload: &Value, limits: &LimitsConfig) -> Result<Self, EventError> {
        let v: Self = parse_payload(event, payload)?;
        v.validate(event, limits)?;
        Ok(v)
    }
}

/// Checks that `value` is one of `allowed`.
pub fn check_enum(
    event: &str,
    field: &str,
    value: &str,
    allowed: &[&str],
) -> Result<(), EventError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(EventError::invalid(
            event,
            field,
            format!("must be one of {}, got {value:?}", allowed.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Join {
        conversation_id: String,
    }

    #[test]
    fn socketio_and_gateway_names_are_reserved() {
        for name in [
            "connect",
            "connect_error",
            "disconnect",
            "disconnecting",
            "newListener",
            "removeListener",
        ] {
            assert_eq!(reserved(name), Some("is reserved by Socket.IO"), "{name}");
        }
        for name in [
            "error",
            "user:online",
            "user:offline",
            "auth:refreshed",
            "conversation:joined",
            "poll:left",
        ] {
            assert!(
                reserved(name).is_some_and(|r| r.contains("gateway")),
                "{name}"
            );
        }
        for name in [
            "message:received",
            "session:completed",
            "poll:voted",
            "connected",
            "errors",
            "users:x",
        ] {
            assert_eq!(reserved(name), None, "{name}");
        }
    }

    #[test]
    fn a_set_claiming_a_reserved_name_is_refused_at_start_up() {
        let set =
            EventSet::new("bad").on_value("disconnect", |_ctx, _v| async { Ok(Outcome::Done) });
        let err = EventTable::build(&[crate::refresh::events(), set]).expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("`bad` declares the event `disconnect`, which is reserved by Socket.IO"),
            "{text}"
        );
        // The auth layer's own auth:refresh is not a claim.
        assert!(EventTable::build(&[crate::refresh::events()]).is_ok());
    }

    #[test]
    fn payload_errors_name_the_field() {
        let e = parse_payload::<Join>("conversation:join", &json!({})).expect_err("missing");
        assert_eq!(
            e.message,
            "Invalid payload for conversation:join: conversationId: is required"
        );
        let e = parse_payload::<Join>("conversation:join", &json!({"conversationId": 5}))
            .expect_err("type");
        assert!(e.message.starts_with("Invalid payload for conversation:join: conversationId: invalid type: integer `5`, expected a string"), "{}", e.message);
        let e = parse_payload::<Join>("conversation:join", &json!("x")).expect_err("shape");
        assert_eq!(
            e.message,
            "Invalid payload for conversation:join: expected an object, got a string"
        );
        assert!(parse_payload::<Join>("c", &json!({"conversationId": "1", "extra": 1})).is_ok());
    }

    #[test]
    fn room_kind_ids_read_like_a_one_field_struct() {
        let l = LimitsConfig::default();
        let ours = |p: Value| parse_id("conversation:join", "conversationId", &p, &l);
        let serde = |p: Value| parse_payload::<Join>("conversation:join", &p);
        for p in [
            json!({}),
            json!({"conversationId": 5}),
            json!({"conversationId": null}),
            json!({"conversationId": 1.5}),
            json!({"conversationId": [1]}),
            json!({"conversationId": {"a": 1}}),
            json!({"conversationId": true}),
            json!("x"),
            json!(null),
        ] {
            assert_eq!(
                ours(p.clone()).expect_err("invalid").message,
                serde(p.clone()).expect_err("invalid").message,
                "{p}"
            );
        }
        assert_eq!(ours(json!({"conversationId": "42"})).expect("valid"), "42");
        assert!(ours(json!({"conversationId": ""})).is_err());
    }

    #[test]
    fn room_kinds_name_rooms_and_replies() {
        let rk = RoomKind {
            kind: "conversation",
            id_field: "conversationId",
        };
        assert_eq!(&*rk.room("42"), "conversation:42");
        assert_eq!(rk.id_of("conversation:42"), Some("42"));
        assert_eq!(rk.id_of("conversations:42"), None);
        assert_eq!(
            rk.joined("42"),
            (
                "conversation:joined".to_owned(),
                json!({"conversationId": "42", "success": true})
            )
        );
    }

    #[test]
    fn ids_are_bounded() {
        let limits = LimitsConfig {
            max_id_chars: 3,
            ..LimitsConfig::default()
        };
        assert!(check_id("e", "id", "abc", &limits).is_ok());
        assert!(check_id("e", "id", "abcd", &limits).is_err());
        assert!(check_id("e", "id", "", &limits).is_err());
        assert!(check_id("e", "id", "ééé", &limits).is_ok());
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": {}}]})), 4);
    }
}
