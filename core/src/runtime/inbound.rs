//! A client's event: limits, `on_inbound` hooks, the declared handler, the reply; and what
//! a handler can ask of the core ([`InboundCtx`](crate::event::InboundCtx)'s operations).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{Gateway, Inner};
use crate::broker::Room;
use crate::clock::iso8601_secs;
use crate::config::LimitsConfig;
use crate::event::{self, Core, ErrorKind, EventError, InboundCtx, Outcome};
use crate::hooks::{Direction, HookCtx, Source};
use crate::limits::Rate;
use crate::session::{Session, Ticket};
use crate::transport::CloseReason;

impl Gateway {
    /// Handles one client event: `size` is its length on the wire, `payload` its JSON text,
    /// `ticket` the one the transport took for it as it read it ([`Session::ticket`]).
    ///
    /// Sends the reply event or `error` to the socket, and returns what an ack carries.
    pub async fn inbound(
        &self,
        session: &Arc<Session>,
        ticket: Ticket,
        event: &str,
        size: usize,
        payload: Option<&RawValue>,
    ) -> Value {
        let known = self.0.events.inbound(event).is_some();
        self.0
            .metrics
            .count_in(if known { event } else { "unknown" });
        let started = Instant::now();
        let result = self
            .inbound_inner(session, ticket, event, size, payload)
            .await;
        let ack = self.reply(session, result);
        self.0
            .metrics
            .inbound_seconds
            .observe(started.elapsed().as_secs_f64());
        ack
    }

    /// Answers a frame the transport could not decode with `error`; returns the ack.
    pub fn inbound_malformed(&self, session: &Arc<Session>, reason: &str) -> Value {
        let err = match self.check_rate(session) {
            Err(limited) => limited,
            Ok(()) => EventError::new(
                ErrorKind::InvalidPayload,
                format!("Malformed event: {reason}"),
            ),
        };
        self.reply(session, Err(err))
    }

    fn reply(&self, session: &Arc<Session>, result: Result<Option<Outcome>, EventError>) -> Value {
        match result {
            Ok(Some(Outcome::Reply { event, data })) => {
                session.send_value(&event, &data);
                data
            }
            Ok(Some(Outcome::Done)) => json!({ "success": true }),
            Ok(None) => json!({ "success": false, "error": "Event dropped" }),
            Err(e) => {
                self.0.metrics.error(e.kind.label());
                session.send_error(&e.message);
                json!({ "success": false, "error": e.message })
            }
        }
    }

    async fn inbound_inner(
        &self,
        session: &Arc<Session>,
        ticket: Ticket,
        event: &str,
        size: usize,
        payload: Option<&RawValue>,
    ) -> Result<Option<Outcome>, EventError> {
        let limits = &self.0.config.limits;
        self.check_rate(session)?;
        if size > limits.max_event_bytes.bytes() {
            return Err(EventError::new(
                ErrorKind::TooLarge,
                format!(
                    "Event too large: {size} bytes (limit {} bytes)",
                    limits.max_event_bytes.bytes()
                ),
            ));
        }
        let payload = decode_payload(payload, limits)?;
        let Some(decl) = self.0.events.inbound(event) else {
            return Err(EventError::unknown(event));
        };
        let payload = if self.0.hooks.is_empty() {
            payload
        } else {
            let identity = session.identity();
            let ctx = HookCtx {
                direction: Direction::Inbound,
                room: None,
                source: Source::Socket,
                user_id: Some(&identity.user_id),
                socket_id: Some(session.id().as_str()),
                claims: Some(&identity.claims),
            };
            match self.run_hooks(event, payload, &ctx, Direction::Inbound) {
                Some(p) => p,
                None => return Ok(None),
            }
        };
        let core: Arc<dyn Core> = self.0.clone();
        let ctx = InboundCtx::new(core, session.clone(), ticket);
        decl.call(ctx, payload).await.map(Some)
    }

    fn check_rate(&self, session: &Session) -> Result<(), EventError> {
        let limits = &self.0.config.limits;
        let verdict = session.bucket.lock().take(Instant::now());
        match verdict {
            Rate::Allowed => Ok(()),
            Rate::Limited { over_for } => {
                let after = limits.rate_disconnect_after.get();
                if !after.is_zero() && over_for >= after {
                    self.0.metrics.error("rate_disconnect");
                    tracing::info!(socket = %session.id(), "disconnecting a socket that stayed over its event rate");
                    session.send_error("Disconnected: over the event rate for too long");
                    session.close(CloseReason::RateAbuse);
                }
                Err(EventError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "Rate limit exceeded: at most {} events per second (burst {})",
                        limits.events_per_second, limits.burst
                    ),
                ))
            }
        }
    }
}

#[async_trait]
impl Core for Inner {
    fn limits(&self) -> &LimitsConfig {
        &self.config.limits
    }

    async fn join(
        &self,
        session: &Arc<Session>,
        ticket: &Ticket,
        room: Room,
    ) -> Result<(), EventError> {
        ticket.turn().await;
        if session.in_room(&room) {
            return Ok(());
        }
        let max = self.config.limits.max_rooms_per_socket;
        if session.rooms.lock().len() >= max {
            return Err(EventError::new(
                ErrorKind::RoomLimit,
                format!("Too many rooms: at most {max} per socket"),
            ));
        }
        let identity = session.identity();
        self.access.check(&identity, &room).await?;
        let ctx = HookCtx {
            direction: Direction::Inbound,
            room: Some(&room),
            source: Source::Socket,
            user_id: Some(&identity.user_id),
            socket_id: Some(session.id().as_str()),
            claims: Some(&identity.claims),
        };
        if !self.hooks.iter().all(|h| h.authorize(&ctx)) {
            return Err(EventError::new(
                ErrorKind::Unauthorized,
                format!("Not authorized to join {room}"),
            ));
        }
        self.rooms.join(session, &room, None).await.map_err(|e| {
            self.backend_error("broker", &e.to_string());
            EventError::new(
                ErrorKind::Backend,
                format!("Could not join {room}: backend unavailable"),
            )
        })?;
        self.rooms_changed(session).await;
        Ok(())
    }

    async fn leave(
        &self,
        session: &Arc<Session>,
        ticket: &Ticket,
        room: Room,
    ) -> Result<(), EventError> {
        ticket.turn().await;
        if self.rooms.leave(session, &room).await {
            self.rooms_changed(session).await;
        }
        Ok(())
    }

    async fn publish(
        &self,
        session: &Arc<Session>,
        room: Room,
        event: &str,
        data: Value,
        except_sender: bool,
    ) -> Result<bool, EventError> {
        let identity = session.identity();
        let ctx = HookCtx {
            direction: Direction::Outbound,
            room: Some(&room),
            source: Source::Socket,
            user_id: Some(&identity.user_id),
            socket_id: Some(session.id().as_str()),
            claims: Some(&identity.claims),
        };
        let except = except_sender.then(|| session.id().clone());
        self.publish_routed(event, Some(room.clone()), data, except, &ctx)
            .await
            .map(|reach| reach.is_some())
            .map_err(|e| {
                EventError::new(
                    ErrorKind::Backend,
                    format!("Could not publish {event}: {e}"),
                )
            })
    }

    async fn refresh(
        &self,
        session: &Arc<Session>,
        token: &str,
    ) -> Result<Option<u64>, EventError> {
        let fail = |why: &str| {
            EventError::new(
                ErrorKind::Unauthorized,
                format!("Token refresh failed: {why}"),
            )
        };
        let identity = self
            .auth
            .verify_token(token)
            .await
            .map_err(|_| fail("invalid token"))?;
        if identity.user_id != session.user_id() {
            return Err(fail("the token is for another user"));
        }
        let expires_at = identity.expires_at;
        session.set_identity(identity);
        self.expiry.schedule(session);
        Ok(expires_at)
    }
}

/// The payload of `auth:refreshed`: `{expiresAt}`.
pub(crate) fn expires_at_payload(exp: Option<u64>) -> Value {
    json!({ "expiresAt": exp.map(iso8601_secs) })
}

/// Parses a payload's JSON text and checks its depth; an absent payload is `null`.
fn decode_payload(raw: Option<&RawValue>, limits: &LimitsConfig) -> Result<Value, EventError> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let payload: Value = serde_json::from_str(raw.get()).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            too_deep(limits)
        } else {
            EventError::new(ErrorKind::InvalidPayload, format!("Malformed event: {e}"))
        }
    })?;
    if event::depth(&payload) > limits.max_depth {
        return Err(too_deep(limits));
    }
    Ok(payload)
}

fn too_deep(limits: &LimitsConfig) -> EventError {
    EventError::new(
        ErrorKind::TooDeep,
        format!(
            "Payload nested too deep (limit {} levels)",
            limits.max_depth
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_decoding_checks_depth() {
        let limits = LimitsConfig {
            max_depth: 2,
            ..LimitsConfig::default()
        };
        let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("json");
        assert_eq!(
            decode_payload(Some(&raw(r#"{"a":1}"#)), &limits).expect("ok"),
            json!({"a": 1})
        );
        assert_eq!(decode_payload(None, &limits).expect("ok"), Value::Null);
        let deep = decode_payload(Some(&raw(r#"{"a":{"b":{}}}"#)), &limits).expect_err("deep");
        assert_eq!(deep.kind, ErrorKind::TooDeep);
    }
}
