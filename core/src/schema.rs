//! The events a node declares, as documents (`switchboard schema`): one JSON Schema per
//! event, an AsyncAPI 3.0 document, and TypeScript types for socket.io-client and for a
//! backend's emit bodies.
//!
//! Every payload schema comes from the declaring event set: a plugin's payload types derive
//! [`JsonSchema`], room kinds' joins and replies are built here, and the gateway's own events
//! (`error`, `user:*`, `auth:*`, `room:*`) are described here. Ids take their length from
//! the running config (`limits.max_id_chars`).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Write as _;

pub use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::event::{EventTable, Payload};

/// The JSON Schema dialect of every schema printed.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The schema of an id field: a non-empty string of at most `limits.max_id_chars`
/// characters. Mark a `String` field `#[schemars(with = "Id")]`.
#[derive(Debug)]
pub struct Id;

impl JsonSchema for Id {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Id")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": crate::config::LimitsConfig::default().max_id_chars,
            "description": "A non-empty string of at most `limits.max_id_chars` characters (ids, and the fields checked like them).",
        })
    }
}

/// The schema of a string field that must be one of `values` (what
/// [`crate::event::check_enum`] checks); for `#[schemars(schema_with = ...)]`.
pub fn one_of(values: &[&str]) -> Schema {
    schemars::json_schema!({ "type": "string", "enum": values })
}

/// A document `switchboard schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An AsyncAPI 3.0 document (JSON).
    AsyncApi,
    /// One JSON Schema per event (JSON).
    JsonSchema,
    /// TypeScript declarations.
    TypeScript,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "asyncapi" => Ok(Format::AsyncApi),
            "json-schema" => Ok(Format::JsonSchema),
            "typescript" => Ok(Format::TypeScript),
            other => Err(format!(
                "unknown format {other:?}: one of asyncapi, json-schema, typescript"
            )),
        }
    }
}

/// Who sends a server → client event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A backend, through `POST /api/v1/emit` (or a handler publishing).
    Published,
    /// The gateway itself (presence, errors, token expiry, replies).
    Gateway,
}

/// A client → server event.
#[derive(Debug)]
struct ClientEvent {
    name: String,
    set: String,
    payload: Value,
    reply: Option<String>,
    ack: Value,
}

/// A server → client event.
#[derive(Debug)]
struct ServerEvent {
    name: String,
    payload: Value,
    room: Option<String>,
    kept: bool,
    origin: Origin,
    about: String,
}

/// A room kind, as a channel.
#[derive(Debug)]
struct Channel {
    kind: String,
    field: String,
    set: String,
}

/// Every event of a node with its payload schema: what the three formats are made from.
#[derive(Debug)]
pub struct Catalog {
    defs: Map<String, Value>,
    client: Vec<ClientEvent>,
    server: Vec<ServerEvent>,
    channels: Vec<Channel>,
    namespace: String,
    native_path: Option<String>,
    listen: String,
    tls: bool,
    recovery: bool,
    version: String,
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/$defs/{name}") })
}

impl Catalog {
    /// The catalog of `events` as `config` runs them; `effective` is the effective config
    /// (for the transports' sections).
    pub fn new(events: &EventTable, config: &Config, effective: &Value) -> Self {
        let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut defs = Map::new();
        let mut insert = |name: &str, schema: Value| {
            defs.insert(name.to_owned(), schema);
        };
        insert(
            "AckSuccess",
            json!({
                "type": "object",
                "description": "The ack of an event that has no reply event.",
                "properties": { "success": { "const": true } },
                "required": ["success"],
            }),
        );
        insert(
            "AckFailure",
            json!({
                "type": "object",
                "description": "The ack of an event that failed (the socket also gets `error`).",
                "properties": { "success": { "const": false }, "error": { "type": "string" } },
                "required": ["success", "error"],
            }),
        );
        insert(
            "ErrorEvent",
            json!({
                "type": "object",
                "description": "What went wrong with an event this socket sent.",
                "properties": {
                    "message": { "type": "string" },
                    "timestamp": { "type": "string", "format": "date-time" },
                },
                "required": ["message", "timestamp"],
            }),
        );
        insert(
            "UserPresence",
            json!({
                "type": "object",
                "properties": { "userId": { "type": "string" } },
                "required": ["userId"],
            }),
        );
        insert(
            "RoomChange",
            json!({
                "type": "object",
                "description": "A room no plugin owns, joined or left through the control API.",
                "properties": { "room": { "type": "string" } },
                "required": ["room"],
            }),
        );

        let mut client = Vec::new();
        let mut server = Vec::new();
        let mut channels = Vec::new();
        let mut schema = |p: &Payload| p.schema(&mut g).to_value();
        for set in events.sets() {
            for e in set.inbound() {
                let payload = schema(e.payload());
                let (reply, ack) = match (e.reply(), e.reply_payload()) {
                    (Some(name), Some(p)) => {
                        let s = schema(p);
                        server.push(ServerEvent {
                            name: name.to_owned(),
                            payload: s.clone(),
                            room: None,
                            kept: false,
                            origin: Origin::Gateway,
                            about: format!("The reply to `{}`, to its sender.", e.name()),
                        });
                        (Some(name.to_owned()), s)
                    }
                    _ => (None, reference("AckSuccess")),
                };
                client.push(ClientEvent {
                    name: e.name().to_owned(),
                    set: set.name().to_owned(),
                    payload,
                    reply,
                    ack,
                });
            }
            for e in set.outbound() {
                server.push(ServerEvent {
                    name: e.name().to_owned(),
                    payload: schema(e.payload()),
                    room: Some(e.room_rule().to_owned()),
                    kept: e.kept(),
                    origin: Origin::Published,
                    about: format!("To `{}`; declared by `{}`.", e.room_rule(), set.name()),
                });
            }
            for rk in set.room_kinds() {
                channels.push(Channel {
                    kind: rk.kind.to_owned(),
                    field: rk.id_field.to_owned(),
                    set: set.name().to_owned(),
                });
            }
        }
        let gateway = |name: &str, def: &str, about: &str| ServerEvent {
            name: name.to_owned(),
            payload: reference(def),
            room: None,
            kept: false,
            origin: Origin::Gateway,
            about: about.to_owned(),
        };
        server.extend([
            gateway(
                "error",
                "ErrorEvent",
                "An event this socket sent was refused; it stays connected.",
            ),
            gateway(
                "user:online",
                "UserPresence",
                "A user's first connection, on any node; to every other socket.",
            ),
            gateway(
                "user:offline",
                "UserPresence",
                "A user's last connection closed, on every node; to every other socket.",
            ),
            gateway(
                "auth:expiring",
                "ExpiresAt",
                "The token expires soon: send `auth:refresh` with a new one.",
            ),
            gateway(
                "room:joined",
                "RoomChange",
                "The backend put this socket in a room no plugin owns.",
            ),
            gateway(
                "room:left",
                "RoomChange",
                "The backend took this socket out of a room no plugin owns.",
            ),
        ]);
        for (name, def) in g.take_definitions(true) {
            defs.insert(name, def);
        }
        if let Some(id) = defs.get_mut("Id").and_then(Value::as_object_mut) {
            id.insert("maxLength".to_owned(), json!(config.limits.max_id_chars));
        }
        let section = |name: &str| effective.get("transports").and_then(|t| t.get(name));
        let namespace = section("socketio")
            .and_then(|s| s.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_owned();
        let native_path = section("websocket")
            .filter(|s| s.get("enabled").and_then(Value::as_bool) != Some(false))
            .and_then(|s| s.get("path"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Catalog {
            defs,
            client,
            server,
            channels,
            namespace,
            native_path,
            listen: config.server.listen.to_string(),
            tls: config.server.tls.cert_file.is_some(),
            recovery: config.recovery.enabled,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The document in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::JsonSchema => pretty(&self.json_schema()),
            Format::AsyncApi => pretty(&self.asyncapi()),
            Format::TypeScript => self.typescript(),
        }
    }

    /// The definitions `schema` refers to, directly or through others.
    fn reachable(&self, schema: &Value) -> Map<String, Value> {
        let mut seen = BTreeSet::new();
        let mut todo = Vec::new();
        refs(schema, &mut todo);
        while let Some(name) = todo.pop() {
            if seen.insert(name.clone())
                && let Some(def) = self.defs.get(&name)
            {
                refs(def, &mut todo);
            }
        }
        seen.into_iter()
            .filter_map(|n| self.defs.get(&n).map(|d| (n, d.clone())))
            .collect()
    }

    /// A standalone schema for `schema` (a reference, usually), with its definitions.
    fn standalone(&self, title: &str, schema: &Value) -> Value {
        let mut out = Map::new();
        out.insert("$schema".to_owned(), json!(DIALECT));
        out.insert("title".to_owned(), json!(title));
        match schema {
            Value::Object(m) => out.extend(m.clone()),
            Value::Bool(false) => {
                out.insert("not".to_owned(), json!({}));
            }
            _ => {}
        }
        let defs = self.reachable(schema);
        if !defs.is_empty() {
            out.insert("$defs".to_owned(), Value::Object(defs));
        }
        Value::Object(out)
    }

    /// The emit body for each published event, as one schema (`oneOf`, by `event`).
    fn emit_body(&self) -> Value {
        let mut items: Vec<Value> = self
            .server
            .iter()
            .filter(|e| e.origin == Origin::Published)
            .map(|e| {
                json!({
                    "type": "object",
                    "properties": {
                        "event": { "const": e.name },
                        "data": e.payload,
                        "room": { "type": "string", "description": "Overrides the room the event's plugin derives." },
                        "user": { "type": "string", "description": "Every socket of this user instead of a room." },
                    },
                    "required": ["event", "data"],
                    "additionalProperties": false,
                })
            })
            .collect();
        items.push(json!({
            "type": "object",
            "description": "An event no plugin owns: any data, to the room or user named.",
            "properties": {
                "event": { "type": "string" },
                "data": true,
                "room": { "type": "string" },
                "user": { "type": "string" },
            },
            "required": ["event"],
            "anyOf": [{ "required": ["room"] }, { "required": ["user"] }],
            "additionalProperties": false,
        }));
        json!({ "anyOf": items })
    }

    fn json_schema(&self) -> Value {
        let client: Map<String, Value> = self
            .client
            .iter()
            .map(|e| (e.name.clone(), self.standalone(&e.name, &e.payload)))
            .collect();
        let server: Map<String, Value> = self
            .server
            .iter()
            .map(|e| (e.name.clone(), self.standalone(&e.name, &e.payload)))
            .collect();
        let acks: Map<String, Value> = self
            .client
            .iter()
            .map(|e| {
                let ack = json!({ "anyOf": [e.ack, reference("AckFailure")] });
                (
                    e.name.clone(),
                    self.standalone(&format!("{} ack", e.name), &ack),
                )
            })
            .collect();
        let body = self.emit_body();
        let batch = json!({ "type": "array", "items": body });
        json!({
            "clientToServer": client,
            "serverToClient": server,
            "acks": acks,
            "api": {
                "POST /api/v1/emit": self.standalone("POST /api/v1/emit", &json!({ "anyOf": [body, batch] })),
            },
        })
    }

    fn asyncapi(&self) -> Value {
        let mut messages = Map::new();
        let mut schemas = Map::new();
        for (name, def) in &self.defs {
            schemas.insert(name.clone(), retarget(def));
        }
        let key = |event: &str| message_key(event);
        // A server event named like a client event (`typing:start` relayed) is another
        // message, with another payload.
        let server_key = |event: &str| {
            if self.client.iter().any(|c| c.name == event) {
                format!("{}Relayed", message_key(event))
            } else {
                message_key(event)
            }
        };
        for e in &self.client {
            messages.insert(
                key(&e.name),
                json!({
                    "name": e.name,
                    "title": e.name,
                    "summary": format!("Client → server, declared by `{}`.", e.set),
                    "payload": retarget(&e.payload),
                }),
            );
            messages.insert(
                format!("{}Ack", key(&e.name)),
                json!({
                    "name": format!("{} ack", e.name),
                    "summary": format!("The ack of `{}`.", e.name),
                    "payload": { "anyOf": [retarget(&e.ack), retarget(&reference("AckFailure"))] },
                }),
            );
        }
        for e in &self.server {
            let mut m = json!({
                "name": e.name,
                "title": e.name,
                "summary": e.about,
                "payload": retarget(&e.payload),
            });
            if e.kept && self.recovery {
                m["description"] = json!(
                    "Carries its offset, an opaque string, as the last argument (connection state recovery)."
                );
            }
            messages.insert(server_key(&e.name), m);
        }
        messages.insert(
            "emitBody".to_owned(),
            json!({
                "name": "POST /api/v1/emit",
                "summary": "A backend publishes an event (or a JSON array of them).",
                "contentType": "application/json",
                "payload": retarget(&json!({ "anyOf": [self.emit_body(), { "type": "array", "items": self.emit_body() }] })),
            }),
        );

        let msg_ref = |k: &str| json!({ "$ref": format!("#/components/messages/{k}") });
        let socket_servers = {
            let mut v = vec![json!({ "$ref": "#/servers/socketio" })];
            if self.native_path.is_some() {
                v.push(json!({ "$ref": "#/servers/native" }));
            }
            v
        };
        let mut channels = Map::new();
        // The connection itself: client events, replies, acks and the gateway's events.
        let mut conn_msgs = Map::new();
        for e in &self.client {
            conn_msgs.insert(key(&e.name), msg_ref(&key(&e.name)));
            let ack = format!("{}Ack", key(&e.name));
            conn_msgs.insert(ack.clone(), msg_ref(&ack));
        }
        for e in self.server.iter().filter(|e| e.room.is_none()) {
            conn_msgs.insert(server_key(&e.name), msg_ref(&server_key(&e.name)));
        }
        channels.insert(
            "connection".to_owned(),
            json!({
                "address": self.namespace,
                "title": "A client's connection",
                "description": "Events a socket sends, the replies and acks it gets, and the gateway's own events.",
                "servers": socket_servers,
                "messages": conn_msgs,
            }),
        );
        // One channel per room rule.
        let mut rules: Vec<&str> = self
            .server
            .iter()
            .filter_map(|e| e.room.as_deref())
            .collect();
        rules.sort_unstable();
        rules.dedup();
        for rule in &rules {
            let mut msgs = Map::new();
            for e in self
                .server
                .iter()
                .filter(|e| e.room.as_deref() == Some(rule))
            {
                msgs.insert(server_key(&e.name), msg_ref(&server_key(&e.name)));
            }
            let mut parameters = Map::new();
            for p in placeholders(rule) {
                let about =
                    self.channels
                        .iter()
                        .find(|c| c.field == p)
                        .map_or_else(String::new, |c| {
                            format!(
                                "The id of a `{}` room (joined with `{}:join`, declared by `{}`).",
                                c.kind, c.kind, c.set
                            )
                        });
                parameters.insert(p, json!({ "description": about }));
            }
            channels.insert(
                channel_key(rule),
                json!({
                    "address": rule,
                    "title": format!("Room {rule}"),
                    "servers": socket_servers,
                    "parameters": parameters,
                    "messages": msgs,
                }),
            );
        }
        channels.insert(
            "emit".to_owned(),
            json!({
                "address": "/api/v1/emit",
                "title": "The HTTP publish API",
                "servers": [{ "$ref": "#/servers/http" }],
                "messages": { "emitBody": msg_ref("emitBody") },
            }),
        );

        let mut operations = Map::new();
        for e in &self.client {
            let k = key(&e.name);
            operations.insert(
                format!("receive{}", upper_first(&k)),
                json!({
                    "action": "receive",
                    "channel": { "$ref": "#/channels/connection" },
                    "summary": format!("A client sends `{}`.", e.name),
                    "messages": [{ "$ref": format!("#/channels/connection/messages/{k}") }],
                    "reply": {
                        "channel": { "$ref": "#/channels/connection" },
                        "messages": [{ "$ref": format!("#/channels/connection/messages/{k}Ack") }],
                    },
                }),
            );
        }
        for e in &self.server {
            let k = server_key(&e.name);
            let channel = e
                .room
                .as_deref()
                .map_or_else(|| "connection".to_owned(), channel_key);
            operations.insert(
                format!("send{}", upper_first(&k)),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{channel}") },
                    "summary": e.about,
                    "messages": [{ "$ref": format!("#/channels/{channel}/messages/{k}") }],
                }),
            );
        }
        operations.insert(
            "receiveEmit".to_owned(),
            json!({
                "action": "receive",
                "channel": { "$ref": "#/channels/emit" },
                "summary": "A backend publishes with `Authorization: Bearer <api key>`.",
                "messages": [{ "$ref": "#/channels/emit/messages/emitBody" }],
            }),
        );

        let (ws, http) = if self.tls {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        let mut servers = Map::new();
        servers.insert(
            "socketio".to_owned(),
            json!({
                "host": self.listen,
                "protocol": ws,
                "pathname": "/socket.io",
                "title": "Socket.IO",
                "description": format!("Socket.IO v5 (WebSocket and long-polling), namespace `{}`; the token in `auth.token`.", self.namespace),
            }),
        );
        if let Some(path) = &self.native_path {
            servers.insert(
                "native".to_owned(),
                json!({
                    "host": self.listen,
                    "protocol": ws,
                    "pathname": path,
                    "title": "Native WebSocket",
                    "description": "JSON text frames `{\"event\", \"data\", \"id\"?}`; the token in `?token=` or the first frame.",
                }),
            );
        }
        servers.insert(
            "http".to_owned(),
            json!({
                "host": self.listen,
                "protocol": http,
                "title": "HTTP API",
                "description": "The backend's API; calls need `Authorization: Bearer <one of api.keys>`.",
            }),
        );
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": "Switchboard",
                "version": self.version,
                "description": "The events this gateway's configured plugins declare.",
            },
            "defaultContentType": "application/json",
            "servers": servers,
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages, "schemas": schemas },
        })
    }

    fn typescript(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "// The events of a Switchboard gateway, as its configured plugins declare them.\n\
             // Generated by `switchboard schema --format typescript`; do not edit.\n\
             //\n\
             //   import { io, Socket } from \"socket.io-client\";\n\
             //   const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(url, { auth: { token } });\n\n",
        );
        for (name, def) in &self.defs {
            if let Some(about) = def.get("description").and_then(Value::as_str) {
                let _ = writeln!(out, "/** {} */", about.replace("*/", "*\\/"));
            }
            if is_plain_object(def) {
                let _ = writeln!(out, "export interface {name} {}\n", ts_object(def, 0));
            } else {
                let _ = writeln!(out, "export type {name} = {};\n", ts_type(def, 0));
            }
        }
        out.push_str("/** What a socket receives: `socket.on(event, listener)`. */\n");
        out.push_str("export interface ServerToClientEvents {\n");
        for e in &self.server {
            let offset = if e.kept && self.recovery {
                ", offset?: string"
            } else {
                ""
            };
            let _ = writeln!(out, "  /** {} */", e.about);
            let _ = writeln!(
                out,
                "  {:?}: (data: {}{offset}) => void;",
                e.name,
                ts_type(&e.payload, 1)
            );
        }
        out.push_str("}\n\n");
        out.push_str(
            "/** What a socket sends: `socket.emit(event, data)`, with or without an ack callback\n\
             *  (whose reply is typed); `emitWithAck` answers `ClientAcks[event]`. */\n",
        );
        out.push_str("export interface ClientToServerEvents {\n");
        for e in &self.client {
            let data = ts_type(&e.payload, 1);
            let ack = ts_type(&e.ack, 1);
            if let Some(reply) = &e.reply {
                let _ = writeln!(
                    out,
                    "  /** Answered with `{reply}` (and the same as ack). */"
                );
            }
            let _ = writeln!(
                out,
                "  {:?}: (data: {data}, ack?: (reply: {ack} | AckFailure) => void) => void;",
                e.name
            );
        }
        out.push_str("}\n\n");
        out.push_str(
            "/** The ack of each client event, for `emitWithAck` (whose result socket.io-client's\n\
             *  types leave `any` when the ack is optional):\n\
             *  `const r: ClientAcks[\"conversation:join\"] = await socket.emitWithAck(...)`. */\n",
        );
        out.push_str("export interface ClientAcks {\n");
        for e in &self.client {
            let _ = writeln!(out, "  {:?}: {} | AckFailure;", e.name, ts_type(&e.ack, 1));
        }
        out.push_str("}\n\n");
        out.push_str("/** A body of `POST /api/v1/emit` (a JSON array of them is a batch). */\n");
        out.push_str("export type EmitBody =\n");
        for e in self.server.iter().filter(|e| e.origin == Origin::Published) {
            let _ = writeln!(
                out,
                "  | {{ event: {:?}; data: {}; room?: string; user?: string }}",
                e.name,
                ts_type(&e.payload, 1)
            );
        }
        out.push_str("  | { event: string; data?: unknown; room: string; user?: string }\n");
        out.push_str("  | { event: string; data?: unknown; room?: string; user: string };\n");
        out
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// The names of the definitions `v` refers to.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `v` with its references pointing into AsyncAPI's `components/schemas`.
fn retarget(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v.as_str()) {
                        ("$ref", Some(r)) => match r.strip_prefix("#/$defs/") {
                            Some(name) => json!(format!("#/components/schemas/{name}")),
                            None => v.clone(),
                        },
                        _ => retarget(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(retarget).collect()),
        other => other.clone(),
    }
}

/// `message:status` → `messageStatus`: an event as a component key.
fn message_key(event: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in event.chars() {
        if c.is_ascii_alphanumeric() {
            if upper && !out.is_empty() {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
            upper = false;
        } else {
            upper = true;
        }
    }
    if out.is_empty() {
        "event".to_owned()
    } else {
        out
    }
}

/// `conversation:{conversationId}` → `conversationRoom`.
fn channel_key(rule: &str) -> String {
    let head: String = rule.split([':', '{']).next().unwrap_or(rule).to_owned();
    format!("{}Room", message_key(&head))
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

/// The `{name}` placeholders of a room rule.
fn placeholders(rule: &str) -> Vec<String> {
    rule.split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

fn is_plain_object(s: &Value) -> bool {
    s.get("type").and_then(Value::as_str) == Some("object")
        && s.get("properties").is_some()
        && s.get("additionalProperties")
            .is_none_or(|a| a == &json!(false))
}

fn indent(level: usize) -> String {
    "  ".repeat(level)
}

/// An object schema's properties as a TypeScript object type.
fn ts_object(s: &Value, level: usize) -> String {
    let required: BTreeSet<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = String::from("{\n");
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            if let Some(about) = p.get("description").and_then(Value::as_str) {
                let _ = writeln!(
                    out,
                    "{}/** {} */",
                    indent(level + 1),
                    about.replace("*/", "*\\/")
                );
            }
            let optional = if required.contains(name.as_str()) {
                ""
            } else {
                "?"
            };
            let _ = writeln!(
                out,
                "{}{}{optional}: {};",
                indent(level + 1),
                ts_key(name),
                ts_type(p, level + 1)
            );
        }
    }
    if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
        let _ = writeln!(
            out,
            "{}[key: string]: {};",
            indent(level + 1),
            ts_type(extra, level + 1)
        );
    }
    out.push_str(&indent(level));
    out.push('}');
    out
}

fn ts_key(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// A JSON Schema as a TypeScript type (the subset payload types use).
fn ts_type(s: &Value, level: usize) -> String {
    let Value::Object(m) = s else {
        return if s == &json!(false) {
            "never"
        } else {
            "unknown"
        }
        .to_owned();
    };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or("unknown").to_owned();
    }
    if let Some(c) = m.get("const") {
        return c.to_string();
    }
    if let Some(values) = m.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(items) = m.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = items.iter().map(|i| ts_type(i, level)).collect();
            return union(parts);
        }
    }
    let one = |t: &str| -> String {
        match t {
            "string" => "string".to_owned(),
            "integer" | "number" => "number".to_owned(),
            "boolean" => "boolean".to_owned(),
            "null" => "null".to_owned(),
            "array" => match m.get("items") {
                Some(items) => format!("Array<{}>", ts_type(items, level)),
                None => "unknown[]".to_owned(),
            },
            "object" => {
                if m.get("properties").is_some() {
                    ts_object(s, level)
                } else {
                    match m.get("additionalProperties") {
                        Some(a) if a.is_object() => {
                            format!("Record<string, {}>", ts_type(a, level))
                        }
                        _ => "Record<string, unknown>".to_owned(),
                    }
                }
            }
            _ => "unknown".to_owned(),
        }
    };
    match m.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => union(ts.iter().filter_map(Value::as_str).map(one).collect()),
        _ => "unknown".to_owned(),
    }
}

fn union(parts: Vec<String>) -> String {
    let mut seen = Vec::new();
    for p in parts {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    if seen.iter().any(|p| p == "unknown") {
        return "unknown".to_owned();
    }
    seen.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_become_keys() {
        assert_eq!(message_key("message:status"), "messageStatus");
        assert_eq!(message_key("session:node-executed"), "sessionNodeExecuted");
        assert_eq!(
            channel_key("conversation:{conversationId}"),
            "conversationRoom"
        );
        assert_eq!(placeholders("a:{x}:{y}"), ["x", "y"]);
    }

    #[test]
    fn schemas_become_typescript() {
        let s = json!({
            "type": "object",
            "properties": {
                "a": { "type": "string", "enum": ["x", "y"] },
                "b": { "type": ["string", "null"] },
                "c": { "type": "object", "additionalProperties": { "type": "integer" } },
                "d": true,
                "e": { "$ref": "#/$defs/Id" },
            },
            "required": ["a", "e"],
        });
        let ts = ts_object(&s, 0);
        assert!(ts.contains("a: \"x\" | \"y\";"), "{ts}");
        assert!(ts.contains("b?: string | null;"), "{ts}");
        assert!(ts.contains("c?: Record<string, number>;"), "{ts}");
        assert!(ts.contains("d?: unknown;"), "{ts}");
        assert!(ts.contains("e: Id;"), "{ts}");
    }
}
