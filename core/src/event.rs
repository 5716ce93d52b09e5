//! Event handlers: the [`EventHandler`] trait, its errors and the payload validation helpers.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::broker::Room;
use crate::config::LimitsConfig;
use crate::runtime::InboundCtx;

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
}

impl EventError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EventError {
            kind,
            message: message.into(),
        }
    }
    /// A payload error: `"{event}: {field}: {reason}"`.
    pub fn invalid(event: &str, field: &str, reason: impl AsRef<str>) -> Self {
        let message = if field.is_empty() {
            format!("Invalid payload for {event}: {}", reason.as_ref())
        } else {
            format!("Invalid payload for {event}: {field}: {}", reason.as_ref())
        };
        EventError::new(ErrorKind::InvalidPayload, message)
    }
}

/// What an inbound event produced for the socket that sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send `event` with `data` to the sender, and ack with the same `data`.
    Reply {
        /// The reply event's name (`conversation:joined`).
        event: &'static str,
        /// Its payload.
        data: Value,
    },
    /// No reply event; an ack, if asked for, is `{success: true}`.
    Done,
}

// ANCHOR: event_handler
/// Owns a set of events: handles the client's ones, validates and routes the server's ones.
///
/// Built-ins: `conversation`, `typing`, `session`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Client → server events this handler takes.
    fn inbound_events(&self) -> &[&'static str] {
        &[]
    }

    /// Server → client events this handler validates and routes when published.
    fn outbound_events(&self) -> &[&'static str] {
        &[]
    }

    /// Handles one client event, already size-, rate- and depth-checked.
    async fn handle(
        &self,
        ctx: &InboundCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Outcome, EventError> {
        let _ = (ctx, payload);
        Err(EventError::new(
            ErrorKind::UnknownEvent,
            format!("Unknown event: {event}"),
        ))
    }

    /// Validates a published event's data and derives its room.
    fn route(&self, event: &str, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        let _ = (data, limits);
        Err(EventError::new(
            ErrorKind::UnknownEvent,
            format!("Unknown event: {event}"),
        ))
    }
}
// ANCHOR_END: event_handler

/// Deserializes `payload` into `T`; an error names the field (`conversationId: is required`).
pub fn parse_payload<T: DeserializeOwned>(event: &str, payload: &Value) -> Result<T, EventError> {
    if !payload.is_object() {
        return Err(EventError::invalid(
            event,
            "",
            format!("expected an object, got {}", json_type(payload)),
        ));
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
    if id.chars().count() > limits.max_id_chars {
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
pub trait Validate: DeserializeOwned {
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
    use serde_json::json;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Join {
        conversation_id: String,
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
