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
use switchboard_core::config::LimitsConfig;
use switchboard_core::event::{Validate, check_id};
use switchboard_core::schema::{Id, JsonSchema, Schema, SchemaGenerator};
use switchboard_core::{
    BoxError, ErrorKind, EventError, EventHandler, EventSet, Factory, InboundCtx, Outcome, Plugin,
    PluginContext, Room, register_plugin,
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
/// `{pollId, option}`: what a client sends with `poll:vote`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    /// The poll.
    #[schemars(with = "Id")]
    pub poll_id: String,
    /// The option voted for.
    #[schemars(with = "Id")]
    pub option: String,
}

impl Validate for Vote {
    fn validate(&self, event: &str, limits: &LimitsConfig) -> Result<(), EventError> {
        check_id(event, "pollId", &self.poll_id, limits)?;
        check_id(event, "option", &self.option, limits)
    }
}

/// `{pollId, option, userId}`: what the room receives for each vote.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Voted {
    /// The poll.
    #[schemars(with = "Id")]
    pub poll_id: String,
    /// The option voted for.
    #[schemars(with = "Id")]
    pub option: String,
    /// Who voted (the voter's token `sub`, never taken from the payload).
    #[schemars(with = "Id")]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Closed {
    /// The poll.
    #[schemars(with = "Id")]
    pub poll_id: String,
    /// Votes per option.
    #[schemars(schema_with = "results_schema")]
    pub results: BTreeMap<String, u64>,
}

/// Option → count, each option checked as an id.
fn results_schema(g: &mut SchemaGenerator) -> Schema {
    let option = g.subschema_for::<Id>();
    schemars::json_schema!({
        "type": "object",
        "propertyNames": option,
        "additionalProperties": { "type": "integer", "minimum": 0 },
    })
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

/// Checks what the config adds to [`Vote::validate`]: the option's length.
fn check_option(cfg: &PollsConfig, event: &str, option: &str) -> Result<(), EventError> {
    if option.chars().count() > cfg.max_option_chars {
        return Err(EventError::invalid(
            event,
            "option",
            format!("must be at most {} characters", cfg.max_option_chars),
        ));
    }
    Ok(())
}

// ANCHOR: vote
/// `poll:vote`: check the option against the config, check membership, publish
/// `poll:voted` to the room.
async fn vote(cfg: Arc<PollsConfig>, ctx: InboundCtx, vote: Vote) -> Result<Outcome, EventError> {
    check_option(&cfg, "poll:vote", &vote.option)?;
    let room = room(&vote.poll_id);
    if !ctx.session().in_room(&room) {
        return Err(EventError::new(
            ErrorKind::Unauthorized,
            format!("Join {room} before sending poll:vote"),
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
            "poll:vote: the vote was dropped by a hook",
        ))
    }
}
// ANCHOR_END: vote

// ANCHOR: set
/// The poll event set, as `cfg` configures it: the `poll` room kind (`poll:join`,
/// `poll:leave`, answered with `poll:joined`/`poll:left`), `poll:vote`, and the two events
/// published into `poll:{pollId}`.
pub fn events(cfg: PollsConfig) -> EventSet {
    let cfg = Arc::new(cfg);
    EventSet::new(NAME)
        // Room policy (`rooms.*`) and `authorize` hooks run on every join.
        .rooms("poll", "pollId")
        .on("poll:vote", move |ctx, v: Vote| vote(cfg.clone(), ctx, v))
        .emits("poll:voted", "poll:{pollId}", |v: &Voted| room(&v.poll_id))
        .emits("poll:closed", "poll:{pollId}", |c: &Closed| {
            room(&c.poll_id)
        })
}
// ANCHOR_END: set

// ANCHOR: register
/// Builds the set from its section, `events.polls` (absent keys take their defaults).
fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn EventHandler>, BoxError> {
    let cfg: PollsConfig = ctx.section()?;
    if cfg.max_option_chars == 0 {
        return Err(Box::new(switchboard_core::ConfigError::new(
            format!("{}.max_option_chars", ctx.section_path()),
            "must be at least 1",
        )));
    }
    Ok(Arc::new(events(cfg)))
}

register_plugin!(
    Plugin::new(
        NAME,
        "poll:join/leave/vote; routes poll:voted and poll:closed to poll:{id}",
        Factory::Events(build)
    )
    // Declares the section's type, so `switchboard check` and the config reference list
    // `events.polls.*` (a plugin that reads its section without it is refused at start-up).
    .with_config(switchboard_core::registry::config_defaults::<PollsConfig>)
);
// ANCHOR_END: register

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn route(event: &str, data: &Value) -> Result<Room, EventError> {
        let set = events(PollsConfig::default());
        match set.outbound().find(|e| e.name() == event) {
            Some(decl) => decl.route(data, &limits()),
            None => Err(EventError::unknown(event)),
        }
    }

    #[test]
    fn backend_events_route_to_the_poll_room() {
        let closed = json!({"pollId": "lunch", "results": {"pizza": 3, "sushi": 1}});
        assert_eq!(
            &*route("poll:closed", &closed).expect("valid"),
            "poll:lunch"
        );
        let voted = json!({"pollId": "lunch", "option": "pizza", "userId": "alice"});
        assert_eq!(&*route("poll:voted", &voted).expect("valid"), "poll:lunch");
        let empty = json!({"pollId": "lunch", "results": {}});
        assert!(route("poll:closed", &empty).is_ok());
    }

    #[test]
    fn invalid_backend_data_names_the_field() {
        let negative = json!({"pollId": "lunch", "results": {"pizza": -1}});
        let e = route("poll:closed", &negative).expect_err("a negative count");
        assert_eq!(e.kind, ErrorKind::InvalidPayload);
        assert!(
            e.message
                .starts_with("Invalid payload for poll:closed: results.pizza: invalid value"),
            "{}",
            e.message
        );
        let e = route("poll:closed", &json!({"pollId": "lunch"})).expect_err("no results");
        assert_eq!(
            e.message,
            "Invalid payload for poll:closed: results: is required"
        );
        let e = route("poll:closed", &json!({"pollId": "", "results": {}})).expect_err("empty id");
        assert_eq!(
            e.message,
            "Invalid payload for poll:closed: pollId: must be a non-empty string"
        );
        let e = route("poll:voted", &json!({"pollId": "p", "option": "x"})).expect_err("no userId");
        assert!(e.message.ends_with("userId: is required"), "{}", e.message);
        let e = route("poll:opened", &json!({"pollId": "p"})).expect_err("not ours");
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
        let cfg = PollsConfig {
            max_option_chars: 3,
        };
        assert!(check_option(&cfg, "poll:vote", "yés").is_ok());
        let e = check_option(&cfg, "poll:vote", "nope").expect_err("too long");
        assert_eq!(
            e.message,
            "Invalid payload for poll:vote: option: must be at most 3 characters"
        );
    }

    #[test]
    fn the_set_declares_its_events() {
        let set = events(PollsConfig::default());
        let inbound: Vec<&str> = set.inbound().map(|e| e.name()).collect();
        assert_eq!(inbound, ["poll:join", "poll:leave", "poll:vote"]);
        let outbound: Vec<&str> = set.outbound().map(|e| e.name()).collect();
        assert_eq!(outbound, ["poll:voted", "poll:closed"]);
        assert_eq!(set.room_kinds()[0].kind, "poll");
    }
}
