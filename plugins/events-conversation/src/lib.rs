//! `events.plugins = ["conversation"]`: joining conversation rooms, and the message events
//! a backend publishes into them (`message:received`, `message:status`).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_enum, check_id};
use switchboard_core::{
    BoxError, ErrorKind, EventError, EventHandler, Factory, InboundCtx, Outcome, Plugin,
    PluginContext, Room, async_trait, register_plugin,
};

/// The room of a conversation: `conversation:{id}`.
pub fn room(conversation_id: &str) -> Room {
    Room::from(format!("conversation:{conversation_id}"))
}

/// `{conversationId}`: the payload of `conversation:join`/`leave` (and typing events).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    /// The conversation.
    pub conversation_id: String,
}

impl Validate for ConversationRef {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)
    }
}

/// `message:received`: a new message in a conversation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageReceived {
    /// The conversation.
    pub conversation_id: String,
    /// The message.
    pub message_id: String,
    /// Who sent it.
    pub sender_id: String,
    /// The message type (`text`, `image`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The content, any JSON.
    pub content: Value,
    /// The delivery status.
    pub status: String,
    /// When it was sent (ISO 8601).
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

/// `message:status`: a message's delivery status changed.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatus {
    /// The conversation.
    pub conversation_id: String,
    /// The message.
    pub message_id: String,
    /// `sent`, `delivered` or `read`.
    pub status: String,
}

impl Validate for MessageStatus {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)?;
        check_id(event, "messageId", &self.message_id, limits)?;
        check_enum(event, "status", &self.status, STATUSES)
    }
}

/// The conversation event set.
#[derive(Debug, Default)]
pub struct ConversationEvents;

#[async_trait]
impl EventHandler for ConversationEvents {
    fn inbound_events(&self) -> &[&'static str] {
        &["conversation:join", "conversation:leave"]
    }

    fn outbound_events(&self) -> &[&'static str] {
        &["message:received", "message:status"]
    }

    async fn handle(
        &self,
        ctx: &InboundCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Outcome, EventError> {
        let req = ConversationRef::parse(event, &payload, ctx.limits())?;
        let data = json!({ "conversationId": req.conversation_id, "success": true });
        let reply = match event {
            "conversation:join" => {
                ctx.join(room(&req.conversation_id)).await?;
                "conversation:joined"
            }
            "conversation:leave" => {
                ctx.leave(room(&req.conversation_id)).await?;
                "conversation:left"
            }
            other => {
                return Err(EventError::new(
                    ErrorKind::UnknownEvent,
                    format!("Unknown event: {other}"),
                ));
            }
        };
        Ok(Outcome::Reply { event: reply, data })
    }

    fn route(&self, event: &str, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        let id = match event {
            "message:received" => MessageReceived::parse(event, data, limits)?.conversation_id,
            "message:status" => MessageStatus::parse(event, data, limits)?.conversation_id,
            other => {
                return Err(EventError::new(
                    ErrorKind::UnknownEvent,
                    format!("Unknown event: {other}"),
                ));
            }
        };
        Ok(room(&id))
    }
}

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    Ok(Arc::new(ConversationEvents))
}

register_plugin!(Plugin::new(
    "conversation",
    "conversation:join/leave; routes message:received and message:status to conversation:{id}",
    Factory::Events(build)
));

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    #[test]
    fn message_events_route_to_the_conversation_room() {
        let h = ConversationEvents;
        let msg = json!({
            "conversationId": "42", "messageId": "m1", "senderId": "u1", "type": "text",
            "content": {"body": "hi"}, "status": "sent", "timestamp": "2026-01-01T00:00:00Z"
        });
        assert_eq!(
            &*h.route("message:received", &msg, &limits()).expect("valid"),
            "conversation:42"
        );
        let status = json!({"conversationId": "42", "messageId": "m1", "status": "read"});
        assert_eq!(
            &*h.route("message:status", &status, &limits())
                .expect("valid"),
            "conversation:42"
        );
    }

    #[test]
    fn invalid_data_names_the_field() {
        let h = ConversationEvents;
        let bad = json!({"conversationId": "42", "messageId": "m1", "status": "lost"});
        let e = h
            .route("message:status", &bad, &limits())
            .expect_err("bad status");
        assert!(
            e.message
                .contains("status: must be one of sent, delivered, read"),
            "{}",
            e.message
        );
        let missing = json!({"conversationId": "42", "messageId": "m1", "senderId": "u1", "type": "text", "status": "sent", "timestamp": "t"});
        let e = h
            .route("message:received", &missing, &limits())
            .expect_err("no content");
        assert!(e.message.contains("content: is required"), "{}", e.message);
        let e = h
            .route("message:received", &json!({"conversationId": 1}), &limits())
            .expect_err("type");
        assert!(e.message.contains("conversationId"), "{}", e.message);
    }
}
