//! `events.plugins = ["typing"]`: typing indicators relayed to a conversation's other members.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_id};
use switchboard_core::{
    BoxError, ErrorKind, EventError, EventHandler, Factory, InboundCtx, Outcome, Plugin,
    PluginContext, Room, async_trait, register_plugin,
};

/// `{conversationId}`: what a client sends with `typing:start`/`typing:stop`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingRequest {
    /// The conversation the sender types in.
    pub conversation_id: String,
}

impl Validate for TypingRequest {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)
    }
}

/// `{conversationId, userId, isTyping}`: what the room receives (also publishable by a backend).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingIndicator {
    /// The conversation.
    pub conversation_id: String,
    /// Who is typing.
    pub user_id: String,
    /// Whether they are typing.
    pub is_typing: bool,
}

impl Validate for TypingIndicator {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)?;
        check_id(event, "userId", &self.user_id, limits)
    }
}

/// The typing event set.
#[derive(Debug, Default)]
pub struct TypingEvents;

fn room(conversation_id: &str) -> Room {
    Room::from(format!("conversation:{conversation_id}"))
}

fn is_typing(event: &str) -> Result<bool, EventError> {
    match event {
        "typing:start" => Ok(true),
        "typing:stop" => Ok(false),
        other => Err(EventError::new(
            ErrorKind::UnknownEvent,
            format!("Unknown event: {other}"),
        )),
    }
}

// ANCHOR: handler
#[async_trait]
impl EventHandler for TypingEvents {
    fn inbound_events(&self) -> &[&'static str] {
        &["typing:start", "typing:stop"]
    }

    fn outbound_events(&self) -> &[&'static str] {
        &["typing:start", "typing:stop"]
    }

    async fn handle(
        &self,
        ctx: &InboundCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Outcome, EventError> {
        let typing = is_typing(event)?;
        let req = TypingRequest::parse(event, &payload, ctx.limits())?;
        let room = room(&req.conversation_id);
        if !ctx.session().rooms().contains(&room) {
            return Err(EventError::new(
                ErrorKind::Unauthorized,
                format!("Join {room} before sending {event}"),
            ));
        }
        let data = json!({
            "conversationId": req.conversation_id,
            "userId": ctx.identity().user_id,
            "isTyping": typing,
        });
        ctx.publish(room, event, data, true).await?;
        Ok(Outcome::Done)
    }

    fn route(&self, event: &str, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        let typing = is_typing(event)?;
        let ind = TypingIndicator::parse(event, data, limits)?;
        if ind.is_typing != typing {
            return Err(EventError::invalid(
                event,
                "isTyping",
                format!("must be {typing} for {event}"),
            ));
        }
        Ok(room(&ind.conversation_id))
    }
}
// ANCHOR_END: handler

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    Ok(Arc::new(TypingEvents))
}

// ANCHOR: register
register_plugin!(Plugin::new(
    "typing",
    "typing:start/stop relayed to the conversation's other members",
    Factory::Events(build)
));
// ANCHOR_END: register

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_indicators_are_checked() {
        let l = LimitsConfig::default();
        let ok = json!({"conversationId": "7", "userId": "bot", "isTyping": true});
        assert_eq!(
            &*TypingEvents.route("typing:start", &ok, &l).expect("valid"),
            "conversation:7"
        );
        let e = TypingEvents
            .route("typing:stop", &ok, &l)
            .expect_err("mismatch");
        assert!(e.message.contains("isTyping"), "{}", e.message);
    }
}
