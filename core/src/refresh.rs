//! The auth layer's own event set: `auth:refresh` replaces a live connection's token.
//!
//! Every node has it, whatever `events.plugins` says; a plugin that declares `auth:refresh`
//! is refused at start-up.

use serde::Deserialize;

use crate::config::LimitsConfig;
use crate::event::{EventError, EventSet, InboundCtx, Outcome, Validate};

/// The event a client sends to replace its token on a live connection.
pub const AUTH_REFRESH: &str = "auth:refresh";

/// The name the auth layer's set goes by in start-up errors.
pub(crate) const SET_NAME: &str = "the auth layer";

/// `{token}`: the payload of `auth:refresh`.
#[derive(Debug, Deserialize)]
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
        .replying("auth:refreshed")
}
