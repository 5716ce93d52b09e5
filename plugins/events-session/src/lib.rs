//! `events.plugins = ["session"]`: chatbot-session rooms and the four `session:*` events.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_enum, check_id};
use switchboard_core::schema::{Id, JsonSchema, Schema, SchemaGenerator, one_of};
use switchboard_core::{
    BoxError, EventError, EventHandler, EventSet, Factory, Plugin, PluginContext, Room,
    register_plugin,
};

/// The room of a session: `session:{id}`.
pub fn room(session_id: &str) -> Room {
    switchboard_core::broker::room_of("session", session_id)
}

/// `{sessionId}`: the payload of `session:join`/`leave`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionRef {
    /// The session.
    #[schemars(with = "Id")]
    pub session_id: String,
}

impl Validate for SessionRef {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "sessionId", &self.session_id, limits)
    }
}

/// `session:message-sent`: a message in a session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionMessageSent {
    /// The session.
    #[schemars(with = "Id")]
    pub session_id: String,
    /// The message.
    #[schemars(with = "Id")]
    pub message_id: String,
    /// Who sent it.
    #[schemars(with = "Id")]
    pub sender_id: String,
    /// The sender's display name.
    #[serde(default)]
    pub sender_name: Option<String>,
    /// The sender's phone number.
    #[serde(default)]
    pub sender_phone: Option<String>,
    /// Whether the bot sent it.
    #[serde(default)]
    pub is_from_bot: Option<bool>,
    /// The message type.
    #[serde(rename = "type")]
    #[schemars(with = "Id")]
    pub kind: String,
    /// The content, any JSON.
    pub content: Value,
    /// The delivery status.
    #[schemars(with = "Id")]
    pub status: String,
    /// When it was sent (ISO 8601).
    #[schemars(with = "Id")]
    pub timestamp: String,
}

impl Validate for SessionMessageSent {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "sessionId", &self.session_id, limits)?;
        check_id(event, "messageId", &self.message_id, limits)?;
        check_id(event, "senderId", &self.sender_id, limits)?;
        check_id(event, "type", &self.kind, limits)?;
        check_id(event, "status", &self.status, limits)?;
        check_id(event, "timestamp", &self.timestamp, limits)
    }
}

/// `session:node-executed`: the chatbot ran a node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeExecuted {
    /// The session.
    #[schemars(with = "Id")]
    pub session_id: String,
    /// The node.
    #[schemars(with = "Id")]
    pub node_id: String,
    /// The node's label.
    pub node_label: String,
}

impl Validate for NodeExecuted {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "sessionId", &self.session_id, limits)?;
        check_id(event, "nodeId", &self.node_id, limits)
    }
}

/// Statuses `session:status-changed` accepts.
pub const SESSION_STATUSES: &[&str] = &[
    "running",
    "waiting_input",
    "completed",
    "expired",
    "stopped",
];

fn session_statuses_schema(_: &mut SchemaGenerator) -> Schema {
    one_of(SESSION_STATUSES)
}

/// `session:status-changed`: the session's status changed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusChanged {
    /// The session.
    #[schemars(with = "Id")]
    pub session_id: String,
    /// One of [`SESSION_STATUSES`].
    #[schemars(schema_with = "session_statuses_schema")]
    pub new_status: String,
    /// The current node.
    #[serde(default)]
    pub current_node_id: Option<String>,
    /// The current node's label.
    #[serde(default)]
    pub current_node_label: Option<String>,
    /// When it changed (ISO 8601).
    #[schemars(with = "Id")]
    pub updated_at: String,
}

impl Validate for StatusChanged {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "sessionId", &self.session_id, limits)?;
        check_enum(event, "newStatus", &self.new_status, SESSION_STATUSES)?;
        check_id(event, "updatedAt", &self.updated_at, limits)
    }
}

/// `session:completed`: the session ended.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    /// The session.
    #[schemars(with = "Id")]
    pub session_id: String,
    /// When it completed (ISO 8601).
    #[schemars(with = "Id")]
    pub completed_at: String,
    /// Why.
    #[serde(default)]
    pub completion_reason: Option<String>,
    /// Nodes executed.
    pub total_nodes: u64,
    /// Messages exchanged.
    pub total_messages: u64,
}

impl Validate for Completed {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "sessionId", &self.session_id, limits)?;
        check_id(event, "completedAt", &self.completed_at, limits)
    }
}

// ANCHOR: set
/// The session event set: `session:join`/`leave` (the `session` room kind) and the four
/// `session:*` events a backend publishes into `session:{sessionId}`.
pub fn events() -> EventSet {
    const RULE: &str = "session:{sessionId}";
    EventSet::new("session")
        .rooms("session", "sessionId")
        .emits("session:message-sent", RULE, |e: &SessionMessageSent| {
            room(&e.session_id)
        })
        .emits("session:node-executed", RULE, |e: &NodeExecuted| {
            room(&e.session_id)
        })
        .emits("session:status-changed", RULE, |e: &StatusChanged| {
            room(&e.session_id)
        })
        .emits("session:completed", RULE, |e: &Completed| {
            room(&e.session_id)
        })
}
// ANCHOR_END: set

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    Ok(Arc::new(events()))
}

register_plugin!(Plugin::new(
    "session",
    "session:join/leave; routes the four session:* events to session:{id}",
    Factory::Events(build)
));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Set(EventSet);
    impl Set {
        fn route(&self, event: &str, data: &Value, l: &LimitsConfig) -> Result<Room, EventError> {
            let decl = self
                .0
                .outbound()
                .find(|e| e.name() == event)
                .expect("a declared event");
            decl.route(data, l)
        }
    }

    #[test]
    fn session_events_route_and_validate() {
        let l = LimitsConfig::default();
        let h = Set(events());
        let ok =
            json!({"sessionId": "s1", "newStatus": "running", "updatedAt": "2026-01-01T00:00:00Z"});
        assert_eq!(
            &*h.route("session:status-changed", &ok, &l).expect("valid"),
            "session:s1"
        );
        let bad = json!({"sessionId": "s1", "newStatus": "paused", "updatedAt": "t"});
        let e = h
            .route("session:status-changed", &bad, &l)
            .expect_err("enum");
        assert!(e.message.contains("newStatus"), "{}", e.message);
        let counts =
            json!({"sessionId": "s1", "completedAt": "t", "totalNodes": "3", "totalMessages": 1});
        let e = h.route("session:completed", &counts, &l).expect_err("type");
        assert!(e.message.contains("totalNodes"), "{}", e.message);
        let sent = json!({"sessionId": "s1", "messageId": "m", "senderId": "u", "type": "text",
            "content": "hi", "status": "sent", "timestamp": "t", "isFromBot": true});
        assert_eq!(
            &*h.route("session:message-sent", &sent, &l).expect("valid"),
            "session:s1"
        );
        let node = json!({"sessionId": "s1", "nodeId": "n1", "nodeLabel": "Start"});
        assert_eq!(
            &*h.route("session:node-executed", &node, &l).expect("valid"),
            "session:s1"
        );
    }
}
