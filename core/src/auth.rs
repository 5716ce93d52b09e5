//! Authentication: the [`Authenticator`] trait, the handshake it reads and the identity it returns.

use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use serde_json::{Map, Value};

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
}
