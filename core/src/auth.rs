//! Authentication: the [`Authenticator`] trait, the handshake it reads and the identity it returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderMap;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value};

use crate::metrics::Metrics;

/// The exact `connect_error` message for a connection that carries no token.
pub const NO_TOKEN: &str = "Authentication failed: No token provided";
/// The exact `connect_error` message for a token that does not verify.
pub const INVALID_TOKEN: &str = "Authentication failed: Invalid token";

/// Who a connection belongs to, as established by the [`Authenticator`].
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user id (the token's `sub`).
    pub user_id: String,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// The `role` claim, when present.
    pub role: Option<String>,
    /// Every claim of the token (empty for the `?userId=` fallback).
    pub claims: Map<String, Value>,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An identity with only a user id: no claims, no expiry.
    pub fn anonymous_user(user_id: impl Into<String>) -> Self {
        Identity {
            user_id: user_id.into(),
            email: None,
            role: None,
            claims: Map::new(),
            expires_at: None,
        }
    }
}

/// Why a connection was refused; `Display` is the exact message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in any accepted place.
    #[error("Authentication failed: No token provided")]
    NoToken,
    /// A token was given and did not verify.
    #[error("Authentication failed: Invalid token")]
    InvalidToken,
    /// The identity is fine but a connection limit refuses it; the text says which.
    #[error("{0}")]
    Refused(String),
}

/// Why a token was refused: logged and counted, never sent to the client, who sees only
/// [`AuthError`]'s contract message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// No token in any accepted place.
    NoToken,
    /// Not a JWT: not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    NotYetValid,
    /// The signature does not match the key.
    BadSignature,
    /// The token names a key (`kid`) the gateway does not have, or names none where one is needed.
    UnknownKid,
    /// The key source (a JWKS URL) has not answered yet, so there is no key to check with.
    KeysUnavailable,
    /// `iss` missing or not the configured issuer.
    WrongIssuer,
    /// `aud` missing or not the configured audience.
    WrongAudience,
    /// No `sub`, or one that is not a non-empty string.
    NoSub,
    /// No `exp`, which the config requires.
    NoExp,
    /// An `alg` not in the accepted algorithms (`none` included), or not the key's.
    AlgorithmNotAccepted,
}

impl RefusalReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RefusalReason; 12] = [
        RefusalReason::NoToken,
        RefusalReason::Malformed,
        RefusalReason::Expired,
        RefusalReason::NotYetValid,
        RefusalReason::BadSignature,
        RefusalReason::UnknownKid,
        RefusalReason::KeysUnavailable,
        RefusalReason::WrongIssuer,
        RefusalReason::WrongAudience,
        RefusalReason::NoSub,
        RefusalReason::NoExp,
        RefusalReason::AlgorithmNotAccepted,
    ];

    /// The label value in logs and metrics (`expired`, `bad_signature`).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NoToken => "no_token",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::BadSignature => "bad_signature",
            RefusalReason::UnknownKid => "unknown_kid",
            RefusalReason::KeysUnavailable => "keys_unavailable",
            RefusalReason::WrongIssuer => "wrong_issuer",
            RefusalReason::WrongAudience => "wrong_audience",
            RefusalReason::NoSub => "no_sub",
            RefusalReason::NoExp => "no_exp",
            RefusalReason::AlgorithmNotAccepted => "algorithm_not_accepted",
        }
    }

    /// A sentence for an operator.
    pub fn describe(self) -> &'static str {
        match self {
            RefusalReason::NoToken => "no token in auth.token nor in Authorization: Bearer",
            RefusalReason::Malformed => "the token is not a well-formed JWT",
            RefusalReason::Expired => "the token has expired (exp is past, beyond the leeway)",
            RefusalReason::NotYetValid => {
                "the token is not valid yet (nbf is ahead, beyond the leeway)"
            }
            RefusalReason::BadSignature => "the signature does not match the key",
            RefusalReason::UnknownKid => "the token names no key (kid) the gateway has",
            RefusalReason::KeysUnavailable => "no public keys yet: the JWKS URL has not answered",
            RefusalReason::WrongIssuer => "iss is missing or not auth.jwt.issuer",
            RefusalReason::WrongAudience => "aud is missing or does not contain auth.jwt.audience",
            RefusalReason::NoSub => "sub is missing or not a non-empty string",
            RefusalReason::NoExp => "exp is missing (auth.jwt.require_exp)",
            RefusalReason::AlgorithmNotAccepted => {
                "the alg is not in auth.jwt.algorithms, or not the key's"
            }
        }
    }

    /// What the client is told: [`AuthError::NoToken`] or [`AuthError::InvalidToken`].
    pub fn to_error(self) -> AuthError {
        match self {
            RefusalReason::NoToken => AuthError::NoToken,
            _ => AuthError::InvalidToken,
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels of `switchboard_auth_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The [`RefusalReason`] label value.
    pub reason: &'static str,
}

/// How often one reason may be logged.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Records refused tokens: a line at info per reason at most once per
/// [`REFUSAL_LOG_PERIOD`] (saying how many were not logged since the last), and the
/// counter `switchboard_auth_refused_total{reason}`.
pub struct RefusalLog {
    counter: Family<ReasonLabels, Counter>,
    period: Duration,
    last: Mutex<HashMap<RefusalReason, (Instant, u64)>>,
}

impl std::fmt::Debug for RefusalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLog").finish_non_exhaustive()
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::unregistered()
    }
}

impl RefusalLog {
    /// A log whose counter is in no registry (for authenticators built outside a node).
    pub fn unregistered() -> Self {
        Self::with_period(REFUSAL_LOG_PERIOD)
    }

    /// A log whose lines are at most one per reason per `period`.
    pub fn with_period(period: Duration) -> Self {
        let counter = Family::<ReasonLabels, Counter>::default();
        for reason in RefusalReason::ALL {
            let _ = counter.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        RefusalLog {
            counter,
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// A log whose counter is registered in `metrics` as `switchboard_auth_refused_total`.
    pub fn registered(metrics: &Metrics) -> Self {
        let log = Self::unregistered();
        metrics.register(
            "auth_refused",
            "Tokens refused at connect or refresh, by reason",
            log.counter.clone(),
        );
        log
    }

    /// How many refusals of `reason` were counted.
    pub fn count(&self, reason: RefusalReason) -> u64 {
        self.counter
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    /// Records one refusal at `during` (`connect`, `refresh`); `detail` (a kid, an alg) is
    /// logged escaped. Returns whether a line was written.
    pub fn refused(
        &self,
        reason: RefusalReason,
        during: &'static str,
        detail: Option<&str>,
    ) -> bool {
        self.counter
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
        let now = Instant::now();
        let suppressed = {
            let mut last = self.last.lock();
            match last.get_mut(&reason) {
                Some((at, skipped)) if now.saturating_duration_since(*at) < self.period => {
                    *skipped += 1;
                    return false;
                }
                Some((at, skipped)) => {
                    *at = now;
                    std::mem::take(skipped)
                }
                None => {
                    last.insert(reason, (now, 0));
                    0
                }
            }
        };
        let period = self.period.as_secs();
        match (detail, suppressed) {
            (Some(d), 0) => {
                tracing::info!(reason = reason.as_str(), during, detail = ?d, "token refused: {}", reason.describe())
            }
            (None, 0) => tracing::info!(
                reason = reason.as_str(),
                during,
                "token refused: {}",
                reason.describe()
            ),
            (Some(d), n) => {
                tracing::info!(reason = reason.as_str(), during, detail = ?d, suppressed = n, "token refused: {} ({n} more for this reason since the last line, at most one line per {period}s)", reason.describe())
            }
            (None, n) => tracing::info!(
                reason = reason.as_str(),
                during,
                suppressed = n,
                "token refused: {} ({n} more for this reason since the last line, at most one line per {period}s)",
                reason.describe()
            ),
        }
        true
    }
}

/// Where a handshake's token was found, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource<'a> {
    /// No token: absent, null or empty in both places.
    Missing,
    /// A non-empty token string.
    Token(&'a str),
    /// Something that is not a string where the token belongs (`auth.token = 42`).
    NotAString,
}

/// What a client presented when connecting, whatever the transport.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The Socket.IO `auth` payload (or the native protocol's connect frame).
    pub auth: Option<&'a Value>,
    /// The HTTP headers of the upgrade or first polling request.
    pub headers: &'a HeaderMap,
    /// The raw query string of that request.
    pub query: Option<&'a str>,
}

impl<'a> Handshake<'a> {
    /// The token: `auth.token` first, then `Authorization: Bearer …`; a `?token=` query never counts.
    pub fn token(&self) -> TokenSource<'a> {
        match self.auth.and_then(|a| a.get("token")) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => return TokenSource::Token(s.as_str()),
            Some(_) => return TokenSource::NotAString,
        }
        let header = self
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        match header.and_then(|h| h.strip_prefix("Bearer ")) {
            Some(t) if !t.trim().is_empty() => TokenSource::Token(t.trim()),
            _ => TokenSource::Missing,
        }
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

/// Decodes `%XX` escapes and `+` as space; invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ANCHOR: authenticator
/// Establishes who is connecting. Built-in: `jwt`.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Checks a connection's handshake; the error's `Display` is sent as `connect_error`.
    async fn authenticate(&self, handshake: &Handshake<'_>) -> Result<Identity, AuthError>;

    /// Checks a token sent later on a live connection (`auth:refresh`).
    async fn verify_token(&self, token: &str) -> Result<Identity, AuthError>;

    /// How long past an identity's `expires_at` its token is still accepted (clock skew);
    /// a connection is closed only once that has passed too.
    fn leeway(&self) -> Duration {
        Duration::ZERO
    }
}
// ANCHOR_END: authenticator

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hs<'a>(
        auth: Option<&'a Value>,
        headers: &'a HeaderMap,
        q: Option<&'a str>,
    ) -> Handshake<'a> {
        Handshake {
            auth,
            headers,
            query: q,
        }
    }

    #[test]
    fn token_comes_from_auth_then_bearer() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            "Bearer from-header".parse().expect("header"),
        );
        let auth = json!({"token": "from-auth"});
        assert_eq!(
            hs(Some(&auth), &headers, None).token(),
            TokenSource::Token("from-auth")
        );
        let empty = json!({"token": ""});
        assert_eq!(
            hs(Some(&empty), &headers, None).token(),
            TokenSource::Token("from-header")
        );
        let null = json!({"token": null});
        assert_eq!(
            hs(Some(&null), &HeaderMap::new(), None).token(),
            TokenSource::Missing
        );
        let num = json!({"token": 5});
        assert_eq!(
            hs(Some(&num), &headers, None).token(),
            TokenSource::NotAString
        );
        assert_eq!(
            hs(None, &HeaderMap::new(), Some("token=abc")).token(),
            TokenSource::Missing
        );
    }

    #[test]
    fn query_params_are_decoded() {
        let h = HeaderMap::new();
        let q = hs(None, &h, Some("EIO=4&userId=a%20b&x"));
        assert_eq!(q.query_param("userId").as_deref(), Some("a b"));
        assert_eq!(q.query_param("x").as_deref(), Some(""));
        assert_eq!(q.query_param("nope"), None);
        let bad = hs(None, &h, Some("userId=%zz%"));
        assert_eq!(bad.query_param("userId").as_deref(), Some("%zz%"));
    }

    #[test]
    fn auth_errors_are_the_contract_strings() {
        assert_eq!(AuthError::NoToken.to_string(), NO_TOKEN);
        assert_eq!(AuthError::InvalidToken.to_string(), INVALID_TOKEN);
    }

    #[test]
    fn refusals_are_counted_and_logged_at_a_bounded_rate() {
        let metrics = Metrics::new();
        let log = RefusalLog::registered(&metrics);
        assert!(log.refused(RefusalReason::Expired, "connect", None));
        assert!(!log.refused(RefusalReason::Expired, "connect", None));
        assert!(log.refused(RefusalReason::UnknownKid, "connect", Some("k\n1")));
        assert_eq!(log.count(RefusalReason::Expired), 2);
        let text = metrics.encode();
        assert!(
            text.contains(r#"switchboard_auth_refused_total{reason="expired"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchboard_auth_refused_total{reason="bad_signature"} 0"#),
            "{text}"
        );

        let quick = RefusalLog::with_period(Duration::ZERO);
        assert!(quick.refused(RefusalReason::Expired, "connect", None));
        assert!(quick.refused(RefusalReason::Expired, "connect", None));
    }

    #[test]
    fn reasons_map_to_the_contract_errors() {
        for r in RefusalReason::ALL {
            let expected = if r == RefusalReason::NoToken {
                NO_TOKEN
            } else {
                INVALID_TOKEN
            };
            assert_eq!(r.to_error().to_string(), expected, "{r}");
        }
    }
}
