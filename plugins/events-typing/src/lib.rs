//! `events.plugins = ["typing"]`: typing indicators relayed to a conversation's other members.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_id};
use switchboard_core::schema::{Id, JsonSchema, Schema, SchemaGenerator};
use switchboard_core::{
    BoxError, ErrorKind, EventError, EventHandler, EventSet, Factory, InboundCtx, Outcome, Plugin,
    PluginContext, Room, register_plugin,
};

/// `{conversationId}`: what a client sends with `typing:start`/`typing:stop`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypingRequest {
    /// The conversation the sender types in.
    #[schemars(with = "Id")]
    pub conversation_id: String,
}

impl Validate for TypingRequest {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "conversationId", &self.conversation_id, limits)
    }
}

/// `{conversationId, userId, isTyping: true}`: what the room receives with `typing:start`
/// (also publishable by a backend).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypingStarted {
    /// The conversation.
    #[schemars(with = "Id")]
    pub conversation_id: String,
    /// Who is typing.
    #[schemars(with = "Id")]
    pub user_id: String,
    /// Always `true`.
    #[schemars(schema_with = "always_true")]
    pub is_typing: bool,
}

/// `{conversationId, userId, isTyping: false}`: what the room receives with `typing:stop`
/// (also publishable by a backend).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypingStopped {
    /// The conversation.
    #[schemars(with = "Id")]
    pub conversation_id: String,
    /// Who stopped typing.
    #[schemars(with = "Id")]
    pub user_id: String,
    /// Always `false`.
    #[schemars(schema_with = "always_false")]
    pub is_typing: bool,
}

fn always_true(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "const": true })
}

fn always_false(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "const": false })
}

/// The checks both indicators share: ids, and `isTyping` saying which event it is.
fn check_indicator(
    event: &str,
    conversation_id: &str,
    user_id: &str,
    is_typing: bool,
    limits: &LimitsConfig,
) -> Result<(), EventError> {
    check_id(event, "conversationId", conversation_id, limits)?;
    check_id(event, "userId", user_id, limits)?;
    let typing = event == START;
    if is_typing != typing {
        return Err(EventError::invalid(
            event,
            "isTyping",
            format!("must be {typing} for {event}"),
        ));
    }
    Ok(())
}

impl Validate for TypingStarted {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_indicator(
            event,
            &self.conversation_id,
            &self.user_id,
            self.is_typing,
            limits,
        )
    }
}

impl Validate for TypingStopped {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_indicator(
            event,
            &self.conversation_id,
            &self.user_id,
            self.is_typing,
            limits,
        )
    }
}

fn room(conversation_id: &str) -> Room {
    switchboard_core::broker::room_of("conversation", conversation_id)
}

// ANCHOR: handler
/// `typing:start`/`typing:stop` from a socket: the conversation's other members get
/// `{conversationId, userId, isTyping}`; the sender must be in the conversation.
async fn relay(
    ctx: InboundCtx,
    req: TypingRequest,
    event: &'static str,
) -> Result<Outcome, EventError> {
    let room = room(&req.conversation_id);
    if !ctx.session().in_room(&room) {
        return Err(EventError::new(
            ErrorKind::Unauthorized,
            format!("Join {room} before sending {event}"),
        ));
    }
    let data = json!({
        "conversationId": req.conversation_id,
        "userId": ctx.identity().user_id,
        "isTyping": event == START,
    });
    // Through the outbound pipeline, to every member but the sender.
    ctx.publish(room, event, data, true).await?;
    Ok(Outcome::Done)
}
// ANCHOR_END: handler

const START: &str = "typing:start";
const STOP: &str = "typing:stop";

// ANCHOR: set
/// The typing event set: a socket's `typing:start`/`typing:stop`, relayed; a backend may
/// publish the same events (a bot typing). Typing indicators are never kept in history.
pub fn events() -> EventSet {
    EventSet::new("typing")
        .on(START, |ctx, req: TypingRequest| relay(ctx, req, START))
        .on(STOP, |ctx, req: TypingRequest| relay(ctx, req, STOP))
        .emits_transient(
            START,
            "conversation:{conversationId}",
            |t: &TypingStarted| room(&t.conversation_id),
        )
        .emits_transient(
            STOP,
            "conversation:{conversationId}",
            |t: &TypingStopped| room(&t.conversation_id),
        )
}
// ANCHOR_END: set

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    Ok(Arc::new(events()))
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

    fn route(event: &str, data: &serde_json::Value) -> Result<Room, EventError> {
        let set = events();
        let decl = set
            .outbound()
            .find(|e| e.name() == event)
            .expect("a declared event");
        decl.route(data, &LimitsConfig::default())
    }

    #[test]
    fn published_indicators_are_checked() {
        let ok = json!({"conversationId": "7", "userId": "bot", "isTyping": true});
        assert_eq!(
            &*route("typing:start", &ok).expect("valid"),
            "conversation:7"
        );
        let e = route("typing:stop", &ok).expect_err("mismatch");
        assert!(e.message.contains("isTyping"), "{}", e.message);
    }

    #[test]
    fn typing_is_never_kept() {
        let set = events();
        assert!(set.outbound().all(|e| !e.kept()));
        let inbound: Vec<&str> = set.inbound().map(|e| e.name()).collect();
        assert_eq!(inbound, ["typing:start", "typing:stop"]);
    }
}
