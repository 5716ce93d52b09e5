//! `events.plugins = ["conversation"]`: joining conversation rooms, and the message events
//! a backend publishes into them (`message:received`, `message:status`).

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

/// The room of a conversation: `conversation:{id}`.
pub fn room(conversation_id: &str) -> Room {
    switchboard_core::broker::room_of("conversation", conversation_id)
}

/// `{conversationId}`: the payload of `conversation:join`/`leave` (and typing events).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    /// The conversation.
    #[schemars(with = "Id")]
    pub conversation_id: String,
}

impl Validate for ConversationRef {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)
    }
}

/// `message:received`: a new message in a conversation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceived {
    /// The conversation.
    #[schemars(with = "Id")]
    pub conversation_id: String,
    /// The message.
    #[schemars(with = "Id")]
    pub message_id: String,
    /// Who sent it.
    #[schemars(with = "Id")]
    pub sender_id: String,
    /// The message type (`text`, `image`, ...).
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

impl Validate for MessageReceived {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)?;
        check_id(event, "messageId", &self.message_id, limits)?;
        check_id(event, "senderId", &self.sender_id, limits)?;
        check_id(event, "type", &self.kind, limits)?;
        check_id(event, "status", &self.status, limits)?;
        check_id(event, "timestamp", &self.timestamp, limits)
    }
}

/// Message statuses `message:status` accepts.
pub const STATUSES: &[&str] = &["sent", "delivered", "read"];

fn statuses_schema(_: &mut SchemaGenerator) -> Schema {
    one_of(STATUSES)
}

/// `message:status`: a message's delivery status changed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    /// The conversation.
    #[schemars(with = "Id")]
    pub conversation_id: String,
    /// The message.
    #[schemars(with = "Id")]
    pub message_id: String,
    /// `sent`, `delivered` or `read`.
    #[schemars(schema_with = "statuses_schema")]
    pub status: String,
}

impl Validate for MessageStatus {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)?;
        check_id(event, "messageId", &self.message_id, limits)?;
        check_enum(event, "status", &self.status, STATUSES)
    }
}

// ANCHOR: set
/// The conversation event set: `conversation:join`/`leave` (the `conversation` room kind)
/// and the two message events a backend publishes into `conversation:{conversationId}`.
pub fn events() -> EventSet {
    EventSet::new("conversation")
        .rooms("conversation", "conversationId")
        .emits(
            "message:received",
            "conversation:{conversationId}",
            |m: &MessageReceived| room(&m.conversation_id),
        )
        .emits(
            "message:status",
            "conversation:{conversationId}",
            |m: &MessageStatus| room(&m.conversation_id),
        )
}
// ANCHOR_END: set

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    Ok(Arc::new(events()))
}

register_plugin!(Plugin::new(
    "conversation",
    "conversation:join/leave; routes message:received and message:status to conversation:{id}",
    Factory::Events(build)
));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn route(event: &str, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        let set = events();
        let decl = set
            .outbound()
            .find(|e| e.name() == event)
            .expect("a declared event");
        decl.route(data, limits)
    }

    #[test]
    fn the_set_declares_its_events() {
        let set = events();
        let inbound: Vec<&str> = set.inbound().map(|e| e.name()).collect();
        assert_eq!(inbound, ["conversation:join", "conversation:leave"]);
        let outbound: Vec<&str> = set.outbound().map(|e| e.name()).collect();
        assert_eq!(outbound, ["message:received", "message:status"]);
        assert!(set.outbound().all(|e| e.kept()));
    }

    #[test]
    fn message_events_route_to_the_conversation_room() {
        let msg = json!({
            "conversationId": "42", "messageId": "m1", "senderId": "u1", "type": "text",
            "content": {"body": "hi"}, "status": "sent", "timestamp": "2026-01-01T00:00:00Z"
        });
        assert_eq!(
            &*route("message:received", &msg, &limits()).expect("valid"),
            "conversation:42"
        );
        let status = json!({"conversationId": "42", "messageId": "m1", "status": "read"});
        assert_eq!(
            &*route("message:status", &status, &limits()).expect("valid"),
            "conversation:42"
        );
    }

    #[test]
    fn invalid_data_names_the_field() {
        let bad = json!({"conversationId": "42", "messageId": "m1", "status": "lost"});
        let e = route("message:status", &bad, &limits()).expect_err("bad status");
        assert!(
            e.message
                .contains("status: must be one of sent, delivered, read"),
            "{}",
            e.message
        );
        let missing = json!({"conversationId": "42", "messageId": "m1", "senderId": "u1", "type": "text", "status": "sent", "timestamp": "t"});
        let e = route("message:received", &missing, &limits()).expect_err("no content");
        assert!(e.message.contains("content: is required"), "{}", e.message);
        let e =
            route("message:received", &json!({"conversationId": 1}), &limits()).expect_err("type");
        assert!(e.message.contains("conversationId"), "{}", e.message);
    }
}
