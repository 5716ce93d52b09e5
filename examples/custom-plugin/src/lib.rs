//! A Switchboard plugin written outside the built-ins: the `polls` event set.
//!
//! Clients join a poll's room and vote; every member of the room sees each vote live, and
//! the backend closes the poll with its tally through the HTTP API:
//!
//! | event | direction | payload | effect |
//! | --- | --- | --- | --- |
//! | `poll:join` | client → server | `{pollId}` | joins `poll:{pollId}`; reply `poll:joined {pollId, success}` |
//! | `poll:leave` | client → server | `{pollId}` | leaves it; reply `poll:left {pollId, success}` |
//! | `poll:vote` | client → server | `{pollId, option}` | the room gets `poll:voted {pollId, option, userId}` |
//! | `poll:voted` | server → client | `{pollId, option, userId}` | to `poll:{pollId}` |
//! | `poll:closed` | server → client | `{pollId, results: {option: count}}` | to `poll:{pollId}` (published by a backend) |
//!
//! Enable it with `events.plugins = ["conversation", "typing", "session", "polls"]` in a
//! binary that links this crate, then run the example binary from the repository root:
//!
//! ```text
//! cargo run -p switchboard-example-polls -- --config examples/custom-plugin/switchboard.toml
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_id};
use switchboard_core::{
    BoxError, ErrorKind, EventError, EventHandler, Factory, InboundCtx, Outcome, Plugin,
    PluginContext, Room, async_trait, register_plugin,
};

/// The plugin's name: the word used in `events.plugins` and its section `events.polls`.
pub const NAME: &str = "polls";

/// The room of a poll: `poll:{pollId}`.
pub fn room(poll_id: &str) -> Room {
    Room::from(format!("poll:{poll_id}"))
}

// ANCHOR: config
/// `events.polls.*`: the plugin's own config section; every key has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollsConfig {
    /// The longest option a client may vote for, in characters.
    pub max_option_chars: usize,
}

impl Default for PollsConfig {
    fn default() -> Self {
        PollsConfig {
            max_option_chars: 64,
        }
    }
}
// ANCHOR_END: config

// ANCHOR: payloads
/// `{pollId}`: the payload of `poll:join` and `poll:leave`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollRef {
    /// The poll.
    pub poll_id: String,
}

impl Validate for PollRef {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "pollId", &self.poll_id, limits)
    }
}

/// `{pollId, option}`: what a client sends with `poll:vote`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    /// The poll.
    pub poll_id: String,
    /// The option voted for.
    pub option: String,
}

impl Validate for Vote {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "pollId", &self.poll_id, limits)?;
        check_id(event, "option", &self.option, limits)
    }
}

/// `{pollId, option, userId}`: what the room receives for each vote.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Voted {
    /// The poll.
    pub poll_id: String,
    /// The option voted for.
    pub option: String,
    /// Who voted (the voter's token `sub`, never taken from the payload).
    pub user_id: String,
}

impl Validate for Voted {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "pollId", &self.poll_id, limits)?;
        check_id(event, "option", &self.option, limits)?;
        check_id(event, "userId", &self.user_id, limits)
    }
}

/// `{pollId, results}`: a backend closes a poll with its tally, option → vote count.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Closed {
    /// The poll.
    pub poll_id: String,
    /// Votes per option.
    pub results: BTreeMap<String, u64>,
}

impl Validate for Closed {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "pollId", &self.poll_id, limits)?;
        for option in self.results.keys() {
            check_id(event, "results", option, limits)?;
        }
        Ok(())
    }
}
// ANCHOR_END: payloads

/// The poll event set.
#[derive(Debug, Default)]
pub struct PollEvents {
    cfg: PollsConfig,
}

impl PollEvents {
    /// An event set with `cfg`.
    pub fn new(cfg: PollsConfig) -> Self {
        PollEvents { cfg }
    }

    /// Checks what the config adds to [`Vote::validate`]: the option's length.
    fn check_option(&self, event: &str, option: &str) -> Result<(), EventError> {
        if option.chars().count() > self.cfg.max_option_chars {
            return Err(EventError::invalid(
                event,
                "option",
                format!("must be at most {} characters", self.cfg.max_option_chars),
            ));
        }
        Ok(())
    }

    // ANCHOR: vote
    /// `poll:vote`: validate, check membership, publish `poll:voted` to the room.
    async fn vote(
        &self,
        ctx: &InboundCtx<'_>,
        event: &str,
        payload: &Value,
    ) -> Result<Outcome, EventError> {
        let vote = Vote::parse(event, payload, ctx.limits())?;
        self.check_option(event, &vote.option)?;
        let room = room(&vote.poll_id);
        if !ctx.session().rooms().contains(&room) {
            return Err(EventError::new(
                ErrorKind::Unauthorized,
                format!("Join {room} before sending {event}"),
            ));
        }
        let voted = Voted {
            poll_id: vote.poll_id,
            option: vote.option,
            user_id: ctx.identity().user_id.clone(),
        };
        let data = serde_json::to_value(&voted)
            .map_err(|e| EventError::new(ErrorKind::InvalidPayload, e.to_string()))?;
        // Through the outbound pipeline: `on_outbound` hooks once, encoded once, the broker
        // delivers to every member on every node. `false`: the voter gets it too.
        if ctx.publish(room, "poll:voted", data, false).await? {
            Ok(Outcome::Done)
        } else {
            Err(EventError::new(
                ErrorKind::Hook,
                format!("{event}: the vote was dropped by a hook"),
            ))
        }
    }
    // ANCHOR_END: vote
}

// ANCHOR: handler
#[async_trait]
impl EventHandler for PollEvents {
    fn inbound_events(&self) -> &[&'static str] {
        &["poll:join", "poll:leave", "poll:vote"]
    }

    fn outbound_events(&self) -> &[&'static str] {
        &["poll:voted", "poll:closed"]
    }

    async fn handle(
        &self,
        ctx: &InboundCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Outcome, EventError> {
        let (reply, joining) = match event {
            "poll:vote" => return self.vote(ctx, event, &payload).await,
            "poll:join" => ("poll:joined", true),
            "poll:leave" => ("poll:left", false),
            other => {
                return Err(EventError::new(
                    ErrorKind::UnknownEvent,
                    format!("Unknown event: {other}"),
                ));
            }
        };
        let req = PollRef::parse(event, &payload, ctx.limits())?;
        if joining {
            // Room policy (`rooms.*`) and `authorize` hooks run inside `join`.
            ctx.join(room(&req.poll_id)).await?;
        } else {
            ctx.leave(room(&req.poll_id)).await?;
        }
        let data = json!({ "pollId": req.poll_id, "success": true });
        Ok(Outcome::Reply { event: reply, data })
    }

    fn route(&self, event: &str, data: &Value, limits: &LimitsConfig) -> Result<Room, EventError> {
        let poll_id = match event {
            "poll:voted" => Voted::parse(event, data, limits)?.poll_id,
            "poll:closed" => Closed::parse(event, data, limits)?.poll_id,
            other => {
                return Err(EventError::new(
                    ErrorKind::UnknownEvent,
                    format!("Unknown event: {other}"),
                ));
            }
        };
        Ok(room(&poll_id))
    }
}
// ANCHOR_END: handler

// ANCHOR: register
/// Builds the handler from its section, `events.polls` (absent keys take their defaults).
fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    let cfg: PollsConfig = ctx.section()?;
    if cfg.max_option_chars == 0 {
        return Err(Box::new(switchboard_core::ConfigError::new(
            format!("{}.max_option_chars", ctx.section_path()),
            "must be at least 1",
        )));
    }
    Ok(Arc::new(PollEvents::new(cfg)))
}

register_plugin!(Plugin::new(
    NAME,
    "poll:join/leave/vote; routes poll:voted and poll:closed to poll:{id}",
    Factory::Events(build)
));
// ANCHOR_END: register

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    #[test]
    fn backend_events_route_to_the_poll_room() {
        let h = PollEvents::default();
        let closed = json!({"pollId": "lunch", "results": {"pizza": 3, "sushi": 1}});
        assert_eq!(
            &*h.route("poll:closed", &closed, &limits()).expect("valid"),
            "poll:lunch"
        );
        let voted = json!({"pollId": "lunch", "option": "pizza", "userId": "alice"});
        assert_eq!(
            &*h.route("poll:voted", &voted, &limits()).expect("valid"),
            "poll:lunch"
        );
        let empty = json!({"pollId": "lunch", "results": {}});
        assert!(h.route("poll:closed", &empty, &limits()).is_ok());
    }

    #[test]
    fn invalid_backend_data_names_the_field() {
        let h = PollEvents::default();
        let negative = json!({"pollId": "lunch", "results": {"pizza": -1}});
        let e = h
            .route("poll:closed", &negative, &limits())
            .expect_err("a negative count");
        assert_eq!(e.kind, ErrorKind::InvalidPayload);
        assert!(
            e.message
                .starts_with("Invalid payload for poll:closed: results.pizza: invalid value"),
            "{}",
            e.message
        );
        let e = h
            .route("poll:closed", &json!({"pollId": "lunch"}), &limits())
            .expect_err("no results");
        assert_eq!(
            e.message,
            "Invalid payload for poll:closed: results: is required"
        );
        let e = h
            .route(
                "poll:closed",
                &json!({"pollId": "", "results": {}}),
                &limits(),
            )
            .expect_err("empty id");
        assert_eq!(
            e.message,
            "Invalid payload for poll:closed: pollId: must be a non-empty string"
        );
        let e = h
            .route(
                "poll:voted",
                &json!({"pollId": "p", "option": "x"}),
                &limits(),
            )
            .expect_err("no userId");
        assert!(e.message.ends_with("userId: is required"), "{}", e.message);
        let e = h
            .route("poll:opened", &json!({"pollId": "p"}), &limits())
            .expect_err("not ours");
        assert_eq!(e.kind, ErrorKind::UnknownEvent);
    }

    #[test]
    fn votes_are_validated_field_by_field() {
        let l = limits();
        let vote =
            Vote::parse("poll:vote", &json!({"pollId": "p", "option": "yes"}), &l).expect("valid");
        assert_eq!((vote.poll_id.as_str(), vote.option.as_str()), ("p", "yes"));
        let e = Vote::parse("poll:vote", &json!({"pollId": "p"}), &l).expect_err("no option");
        assert_eq!(
            e.message,
            "Invalid payload for poll:vote: option: is required"
        );
        let e = Vote::parse("poll:vote", &json!({"pollId": "p", "option": 2}), &l)
            .expect_err("a number");
        assert!(
            e.message
                .starts_with("Invalid payload for poll:vote: option: invalid type: integer `2`"),
            "{}",
            e.message
        );
        let e = Vote::parse("poll:vote", &json!(["p", "yes"]), &l).expect_err("an array");
        assert_eq!(
            e.message,
            "Invalid payload for poll:vote: expected an object, got an array"
        );
    }

    #[test]
    fn the_config_bounds_the_option() {
        let h = PollEvents::new(PollsConfig {
            max_option_chars: 3,
        });
        assert!(h.check_option("poll:vote", "yés").is_ok());
        let e = h.check_option("poll:vote", "nope").expect_err("too long");
        assert_eq!(
            e.message,
            "Invalid payload for poll:vote: option: must be at most 3 characters"
        );
    }

    #[test]
    fn the_handler_declares_its_events() {
        let h = PollEvents::default();
        assert_eq!(h.inbound_events(), ["poll:join", "poll:leave", "poll:vote"]);
        assert_eq!(h.outbound_events(), ["poll:voted", "poll:closed"]);
    }
}
