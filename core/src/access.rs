//! Room access: who may join which room, decided per room prefix by config.
//!
//! `rooms.policy` maps a prefix (`"conversation:"`, `"session:"`) to `allow` (any
//! authenticated user; the seed's behaviour, warned about at start-up), `claims` (the token's
//! `rooms.claims.claim` claim lists the rooms or `*` patterns the user may join) or `http`
//! (the backend answers a POST; 2xx allows; answers are cached). Rooms under no listed prefix
//! follow `rooms.default_policy`. Lua `authorize` hooks run after the policy allows.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Identity;
use crate::config::ConfigError;
use crate::event::{ErrorKind, EventError};
use crate::metrics::Metrics;
use crate::units::Dur;

/// How joins to rooms under one prefix are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Any authenticated user may join.
    Allow,
    /// A token claim lists the rooms (or `*` patterns) the user may join.
    Claims,
    /// The backend decides over HTTP.
    Http,
    /// Nobody may join.
    Deny,
}

/// `rooms.*`: room access policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Policy per room prefix.
    pub policy: BTreeMap<String, Policy>,
    /// Policy for rooms under no listed prefix.
    pub default_policy: Policy,
    /// The `claims` policy.
    pub claims: ClaimsPolicyConfig,
    /// The `http` policy.
    pub http: HttpPolicyConfig,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            policy: BTreeMap::from([
                ("conversation:".to_owned(), Policy::Allow),
                ("session:".to_owned(), Policy::Allow),
            ]),
            default_policy: Policy::Allow,
            claims: ClaimsPolicyConfig::default(),
            http: HttpPolicyConfig::default(),
        }
    }
}

/// `rooms.claims.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsPolicyConfig {
    /// The claim holding the list of rooms or patterns (`["conversation:42", "session:*"]`).
    pub claim: String,
}

impl Default for ClaimsPolicyConfig {
    fn default() -> Self {
        ClaimsPolicyConfig {
            claim: "rooms".to_owned(),
        }
    }
}

/// `rooms.http.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpPolicyConfig {
    /// The backend URL that receives `POST {userId, claims, room}` (plain `http://`).
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer <secret>` so the backend knows the caller.
    pub secret: Option<String>,
    /// How long an answer is reused for the same user and room.
    pub cache_ttl: Dur,
    /// How long to wait for the backend.
    pub timeout: Dur,
    /// Most cached answers kept.
    pub cache_size: usize,
}

impl Default for HttpPolicyConfig {
    fn default() -> Self {
        HttpPolicyConfig {
            url: None,
            secret: None,
            cache_ttl: Dur::secs(30),
            timeout: Dur::secs(2),
            cache_size: 100_000,
        }
    }
}

/// Decides room joins.
pub struct RoomAccess {
    cfg: RoomsConfig,
    http: Option<HttpPolicy>,
    metrics: Metrics,
}

impl std::fmt::Debug for RoomAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomAccess")
            .field("policy", &self.cfg.policy)
            .finish()
    }
}

struct HttpPolicy {
    client: reqwest::Client,
    url: String,
    secret: Option<String>,
    ttl: Duration,
    max: usize,
    cache: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl RoomAccess {
    /// Checks the config (an `http` policy needs `rooms.http.url`) and warns about `allow`.
    pub fn new(cfg: RoomsConfig, metrics: Metrics) -> Result<Self, ConfigError> {
        let uses = |p: Policy| cfg.policy.values().any(|v| *v == p) || cfg.default_policy == p;
        let http = if uses(Policy::Http) {
            let url = cfg
                .http
                .url
                .clone()
                .filter(|u| !u.is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        "rooms.http.url",
                        "missing (required by an `http` room policy)",
                    )
                })?;
            if !url.starts_with("http://") {
                return Err(ConfigError::new(
                    "rooms.http.url",
                    "must be an http:// URL (put a local TLS proxy in front of a remote https backend)",
                ));
            }
            let client = reqwest::Client::builder()
                .timeout(cfg.http.timeout.get())
                .build()
                .map_err(|e| {
                    ConfigError::new("rooms.http", format!("cannot build the HTTP client: {e}"))
                })?;
            Some(HttpPolicy {
                client,
                url,
                secret: cfg.http.secret.clone(),
                ttl: cfg.http.cache_ttl.get(),
                max: cfg.http.cache_size.max(1),
                cache: Mutex::new(HashMap::new()),
            })
        } else {
            None
        };
        let open: Vec<&str> = cfg
            .policy
            .iter()
            .filter(|(_, p)| **p == Policy::Allow)
            .map(|(k, _)| k.as_str())
            .collect();
        if !open.is_empty() {
            tracing::warn!(
                prefixes = ?open,
                "rooms.policy lets any authenticated user join these rooms; set `claims` or `http` for a public deployment"
            );
        }
        Ok(RoomAccess { cfg, http, metrics })
    }

    /// The policy that applies to `room` (longest matching prefix).
    pub fn policy_for(&self, room: &str) -> Policy {
        self.cfg
            .policy
            .iter()
            .filter(|(prefix, _)| room.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.cfg.default_policy, |(_, p)| *p)
    }

    /// Allows or refuses a join; a refusal is the `error` the client gets.
    pub async fn check(&self, identity: &Identity, room: &str) -> Result<(), EventError> {
        let denied = || {
            EventError::new(
                ErrorKind::Unauthorized,
                format!("Not authorized to join {room}"),
            )
        };
        match self.policy_for(room) {
            Policy::Allow => Ok(()),
            Policy::Deny => Err(denied()),
            Policy::Claims => {
                let allowed = match identity.claims.get(&self.cfg.claims.claim) {
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|pattern| glob_match(pattern, room)),
                    Some(Value::String(one)) => glob_match(one, room),
                    _ => false,
                };
                if allowed { Ok(()) } else { Err(denied()) }
            }
            Policy::Http => {
                let Some(http) = &self.http else {
                    return Err(denied());
                };
                match http.ask(identity, room).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(denied()),
                    Err(e) => {
                        self.metrics.error("policy_backend");
                        tracing::warn!(error = %e, "room authorization backend unavailable; denying the join");
                        Err(EventError::new(
                            ErrorKind::Backend,
                            format!(
                                "Could not authorize the join to {room}: authorization backend unavailable"
                            ),
                        ))
                    }
                }
            }
        }
    }
}

impl HttpPolicy {
    async fn ask(&self, identity: &Identity, room: &str) -> Result<bool, reqwest::Error> {
        let key = (identity.user_id.clone(), room.to_owned());
        let now = Instant::now();
        if let Some((answer, at)) = self.cache.lock().get(&key)
            && now.saturating_duration_since(*at) < self.ttl
        {
            return Ok(*answer);
        }
        let mut req = self
            .client
            .post(&self.url)
            .json(&json!({ "userId": identity.user_id, "claims": identity.claims, "room": room }));
        if let Some(secret) = &self.secret {
            req = req.bearer_auth(secret);
        }
        let allowed = req.send().await?.status().is_success();
        let mut cache = self.cache.lock();
        if cache.len() >= self.max {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if cache.len() >= self.max {
                cache.clear();
            }
        }
        cache.insert(key, (allowed, now));
        Ok(allowed)
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn globs() {
        assert!(glob_match("session:*", "session:abc"));
        assert!(glob_match("conversation:42", "conversation:42"));
        assert!(!glob_match("conversation:42", "conversation:421"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("conv*:4*", "conversation:42"));
    }

    fn identity(claims: Value) -> Identity {
        let mut id = Identity::anonymous_user("u1");
        if let Value::Object(m) = claims {
            id.claims = m;
        } else {
            id.claims = Map::new();
        }
        id
    }

    #[tokio::test]
    async fn claims_policy_uses_the_claim() {
        let mut cfg = RoomsConfig::default();
        cfg.policy.insert("conversation:".into(), Policy::Claims);
        cfg.policy.insert("session:".into(), Policy::Claims);
        let access = RoomAccess::new(cfg, Metrics::new()).expect("config");
        let id = identity(serde_json::json!({"rooms": ["conversation:42", "session:*"]}));
        assert!(access.check(&id, "conversation:42").await.is_ok());
        assert!(access.check(&id, "session:anything").await.is_ok());
        let e = access
            .check(&id, "conversation:43")
            .await
            .expect_err("denied");
        assert_eq!(e.message, "Not authorized to join conversation:43");
        assert!(
            access
                .check(&identity(Value::Null), "conversation:42")
                .await
                .is_err()
        );
    }

    #[test]
    fn longest_prefix_wins_and_http_needs_a_url() {
        let mut cfg = RoomsConfig::default();
        cfg.policy.insert("conversation:vip".into(), Policy::Deny);
        let access = RoomAccess::new(cfg.clone(), Metrics::new()).expect("config");
        assert_eq!(access.policy_for("conversation:vip-1"), Policy::Deny);
        assert_eq!(access.policy_for("conversation:1"), Policy::Allow);
        assert_eq!(access.policy_for("other:1"), Policy::Allow);
        cfg.policy.insert("session:".into(), Policy::Http);
        let e = RoomAccess::new(cfg, Metrics::new()).expect_err("url");
        assert!(e.to_string().starts_with("rooms.http.url: missing"), "{e}");
    }
}
