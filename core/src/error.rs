//! What every error of the core says besides its message: who caused it and whether
//! retrying can help.
//!
//! A plugin boundary returns typed errors ([`BrokerError`](crate::BrokerError),
//! [`PresenceError`](crate::PresenceError), [`PublishError`](crate::PublishError),
//! [`ConfigError`](crate::ConfigError)); each implements [`Classify`], so the HTTP API picks
//! its status code, metrics count failures by cause, and logs say whether a retry is worth it.

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Whoever made the call: a socket's payload, an API caller's body, an operator's config.
    Client,
    /// A backend the gateway depends on (Redis, an HTTP room policy) failed or is away.
    Backend,
    /// The gateway itself (a bug, or a state it cannot handle).
    Internal,
}

impl Cause {
    /// `"client"`, `"backend"` or `"internal"`, as used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Client => "client",
            Cause::Backend => "backend",
            Cause::Internal => "internal",
        }
    }
}

/// An error that says who caused it and whether the same call may succeed later.
pub trait Classify {
    /// Who caused it.
    fn cause(&self) -> Cause;
    /// Whether retrying the same call, unchanged, can succeed (a backend that comes back).
    fn retryable(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_have_stable_labels() {
        assert_eq!(Cause::Client.as_str(), "client");
        assert_eq!(Cause::Backend.as_str(), "backend");
        assert_eq!(Cause::Internal.as_str(), "internal");
    }
}
