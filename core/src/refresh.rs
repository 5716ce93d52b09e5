//! The auth layer's own event set: `auth:refresh` replaces a live connection's token.
//!
//! Every node has it, whatever `events.plugins` says; a plugin that declares `auth:refresh`
//! is refused at start-up.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::config::LimitsConfig;
use crate::event::{EventError, EventSet, InboundCtx, Outcome, Validate};

/// When the connection's token expires: the payload of `auth:expiring` and
/// `auth:refreshed` (described for schemas; the runtime builds it).
#[derive(JsonSchema)]
#[schemars(rename = "ExpiresAt")]
#[allow(dead_code)]
pub(crate) struct ExpiresAt {
    /// The token's `exp` (ISO 8601), null when it has none.
    #[serde(rename = "expiresAt")]
    #[schemars(required)]
    expires_at: Option<String>,
}

/// The event a client sends to replace its token on a live connection.
pub const AUTH_REFRESH: &str = "auth:refresh";

/// The name the auth layer's set goes by in start-up errors.
pub(crate) const SET_NAME: &str = "the auth layer";

/// `{token}`: the payload of `auth:refresh`.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct Refresh {
    /// A token for the same `sub`.
    token: String,
}

impl Validate for Refresh {
    fn validate(&self, _event: &str, _limits: &LimitsConfig) -> Result<(), EventError> {
        Ok(())
    }
}

/// `auth:refresh {token}` → `auth:refreshed {expiresAt}` (and the same as ack), or `error`.
pub(crate) fn events() -> EventSet {
    EventSet::new(SET_NAME)
        .on(AUTH_REFRESH, |ctx: InboundCtx, req: Refresh| async move {
            let exp = ctx.refresh_token(&req.token).await?;
            Ok(Outcome::reply(
                "auth:refreshed",
                crate::runtime::expires_at_payload(exp),
            ))
        })
        .replying_with::<ExpiresAt>("auth:refreshed")
}
