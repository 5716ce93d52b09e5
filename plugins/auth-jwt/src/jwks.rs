//! Public keys from a JWKS URL (`auth.jwt.jwks_url`), as identity providers publish them.
//!
//! The set is fetched when the node starts, kept as long as the answer's
//! `Cache-Control: max-age` says (bounded by `auth.jwt.jwks_cache_min` and
//! `jwks_cache_max`; 5 minutes without one), and fetched again in the background when that
//! runs out, and at once when a token names a `kid` the set does not have (at most once per
//! `jwks_cache_min`). A fetch that fails, or answers something that is not a JWK set with a
//! usable key, keeps the last good keys; a failing provider is retried after 1 s, doubling
//! up to `jwks_cache_min`. Until a first fetch succeeds there are no keys: tokens that need
//! one are refused (`keys_unavailable`) and start-up does not wait or fail.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use switchboard_core::ConfigError;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWK set read.
const MAX_BODY: usize = 1 << 20;
/// How long an answer without `max-age` is kept (within the bounds).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// The first retry after a failed fetch.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// One key of the set.
pub(crate) struct RemoteKey {
    /// The key.
    pub(crate) key: DecodingKey,
    /// The JWK's `alg`, when it names one: a token of another algorithm is refused.
    pub(crate) alg: Option<Algorithm>,
}

/// A fetched set: its keys by kid.
type KeySet = HashMap<String, Arc<RemoteKey>>;

/// What a lookup found.
pub(crate) enum Lookup {
    /// The key named by the kid.
    Found(Arc<RemoteKey>),
    /// The set is loaded but has no such kid.
    Unknown,
    /// No fetch has succeeded yet.
    NoKeys,
}

/// When and why the fetch loop runs next.
#[derive(Default)]
struct Schedule {
    /// When the last attempt started.
    last_attempt: Option<Instant>,
    /// When the background loop fetches next.
    next: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
}

/// The keys from one JWKS URL, refreshed as described in the module docs.
pub(crate) struct RemoteKeys {
    url: String,
    client: reqwest::Client,
    min: Duration,
    max: Duration,
    keys: RwLock<Option<Arc<KeySet>>>,
    schedule: tokio::sync::Mutex<Schedule>,
    /// Bumped after every attempt, so a caller that waited for another's fetch sees it.
    attempts: AtomicU64,
    started: AtomicBool,
}

impl RemoteKeys {
    /// Checks the URL and the bounds; nothing is fetched until [`RemoteKeys::start`].
    pub(crate) fn new(url: &str, min: Duration, max: Duration) -> Result<Arc<Self>, ConfigError> {
        let key = "auth.jwt.jwks_url";
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ConfigError::new(key, format!("`{url}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ConfigError::new(
                key,
                format!("`{url}` must be an http:// or https:// URL with a host"),
            ));
        }
        if min < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "auth.jwt.jwks_cache_min",
                "must be at least 1s (it also bounds how often an unknown kid fetches the set)",
            ));
        }
        if max < min {
            return Err(ConfigError::new(
                "auth.jwt.jwks_cache_max",
                "must be at least auth.jwt.jwks_cache_min",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::new(key, format!("cannot set up an HTTP client: {e}")))?;
        Ok(Arc::new(RemoteKeys {
            url: url.to_owned(),
            client,
            min,
            max,
            keys: RwLock::new(None),
            schedule: tokio::sync::Mutex::new(Schedule::default()),
            attempts: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }))
    }

    /// Starts the background fetch loop, once, when called within a Tokio runtime; outside
    /// one (`switchboard check`) nothing is fetched. Whether the loop runs.
    pub(crate) fn start(self: &Arc<Self>) -> bool {
        if self.started.load(Ordering::Acquire) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return true;
        }
        runtime.spawn(refresh_loop(Arc::downgrade(self)));
        true
    }

    /// The key for `kid` in the current set.
    pub(crate) fn lookup(&self, kid: &str) -> Lookup {
        match self.keys.read().as_ref() {
            None => Lookup::NoKeys,
            Some(keys) => keys
                .get(kid)
                .map_or(Lookup::Unknown, |k| Lookup::Found(k.clone())),
        }
    }

    /// Fetches again because a token named a kid the set lacks, or because there are no
    /// keys yet: at once, unless an attempt started less than `jwks_cache_min` ago; when
    /// another caller's fetch is under way, waits for it instead. Whether the set may have
    /// changed since the caller looked.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut schedule = self.schedule.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return true;
        }
        let recent = schedule
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min);
        if recent {
            return false;
        }
        self.attempt(&mut schedule).await
    }

    /// One fetch under the schedule's lock; whether it brought a set.
    async fn attempt(&self, schedule: &mut Schedule) -> bool {
        let now = Instant::now();
        schedule.last_attempt = Some(now);
        let outcome = self.fetch().await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((keys, max_age)) => {
                let ttl = max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(self.min, self.max);
                schedule.failures = 0;
                schedule.next = Some(Instant::now() + ttl);
                self.install(keys, ttl);
                true
            }
            Err(e) => {
                schedule.failures = schedule.failures.saturating_add(1);
                let shift = schedule.failures.saturating_sub(1).min(16);
                let wait = FIRST_RETRY
                    .saturating_mul(1 << shift)
                    .min(self.min.max(FIRST_RETRY));
                schedule.next = Some(Instant::now() + wait);
                match self.keys.read().as_ref() {
                    Some(kept) => tracing::warn!(
                        url = %self.url,
                        error = %e,
                        kept = kept.len(),
                        retry_in = ?wait,
                        "cannot refresh the JWKS; keeping the keys of the last good fetch"
                    ),
                    None => tracing::error!(
                        url = %self.url,
                        error = %e,
                        retry_in = ?wait,
                        "cannot fetch the JWKS: tokens that need its keys are refused until a fetch succeeds"
                    ),
                }
                false
            }
        }
    }

    /// Replaces the set, logging what changed.
    fn install(&self, fresh: KeySet, ttl: Duration) {
        let new_kids: BTreeSet<&String> = fresh.keys().collect();
        let mut slot = self.keys.write();
        match slot.as_ref() {
            None => tracing::info!(
                url = %self.url,
                kids = ?new_kids,
                next_refresh_in = ?ttl,
                "JWKS fetched"
            ),
            Some(old) => {
                let old_kids: BTreeSet<&String> = old.keys().collect();
                if old_kids != new_kids {
                    let added: Vec<&&String> = new_kids.difference(&old_kids).collect();
                    let removed: Vec<&&String> = old_kids.difference(&new_kids).collect();
                    tracing::info!(url = %self.url, ?added, ?removed, next_refresh_in = ?ttl, "JWKS keys changed");
                } else {
                    tracing::debug!(url = %self.url, next_refresh_in = ?ttl, "JWKS refreshed, unchanged");
                }
            }
        }
        *slot = Some(Arc::new(fresh));
    }

    /// GETs the set: its usable keys by kid and the answer's `max-age`.
    async fn fetch(&self) -> Result<(KeySet, Option<Duration>), String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(
                http::header::ACCEPT,
                "application/json, application/jwk-set+json",
            )
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        let max_age = response
            .headers()
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(cache_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("the answer is larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|e| format!("the answer is not a JWK set: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
                || matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    let alg = jwk.common.key_algorithm.and_then(crate::signing_algorithm);
                    keys.insert(kid, Arc::new(RemoteKey { key, alg }));
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, kid = ?kid, error = %e, "JWKS key skipped")
                }
            }
        }
        if keys.is_empty() {
            return Err("the JWK set has no usable signing key with a kid".to_owned());
        }
        Ok((keys, max_age))
    }
}

/// The `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as zero.
fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        let secs = lower.strip_prefix("max-age=")?.trim_matches('"');
        secs.parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// Fetches at once, then whenever the schedule says; ends when the keys are dropped.
async fn refresh_loop(weak: Weak<RemoteKeys>) {
    loop {
        let wait = {
            let Some(keys) = weak.upgrade() else { return };
            let schedule = keys.schedule.lock().await;
            schedule.next.map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
        };
        tokio::time::sleep(wait).await;
        let Some(keys) = weak.upgrade() else { return };
        let mut schedule = keys.schedule.lock().await;
        // An unknown kid may have fetched meanwhile and moved the schedule.
        let due = schedule.next.is_none_or(|at| at <= Instant::now());
        if due {
            keys.attempt(&mut schedule).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read() {
        assert_eq!(
            cache_max_age("public, max-age=600, must-revalidate"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(cache_max_age("Max-Age=\"5\""), Some(Duration::from_secs(5)));
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(cache_max_age("public"), None);
        assert_eq!(cache_max_age("max-age=soon"), None);
    }

    #[test]
    fn urls_and_bounds_are_checked() {
        let s = Duration::from_secs;
        assert!(RemoteKeys::new("https://idp.example/jwks.json", s(30), s(3600)).is_ok());
        for bad in [
            "ftp://idp.example/jwks",
            "not a url",
            "file:///etc/jwks.json",
        ] {
            let e = RemoteKeys::new(bad, s(30), s(3600)).err().expect("refused");
            assert!(e.to_string().starts_with("auth.jwt.jwks_url:"), "{e}");
        }
        let e = RemoteKeys::new("http://h/j", Duration::ZERO, s(1))
            .err()
            .expect("min");
        assert!(e.to_string().starts_with("auth.jwt.jwks_cache_min:"), "{e}");
        let e = RemoteKeys::new("http://h/j", s(10), s(5))
            .err()
            .expect("max");
        assert!(e.to_string().starts_with("auth.jwt.jwks_cache_max:"), "{e}");
    }
}
