//! `auth.plugin = "jwt"`: connections authenticated by a JSON Web Token.
//!
//! HS256/384/512 verify with `auth.jwt.secret`; RS*/PS*/ES*/EdDSA with public keys: a PEM
//! in `auth.jwt.public_key_file`, PEMs by `kid` in `auth.jwt.public_keys`, a JWK set file
//! in `auth.jwt.jwks_file`, or a JWK set fetched from `auth.jwt.jwks_url`. The key is
//! chosen by the token's `alg` among the accepted `auth.jwt.algorithms` only, so an HS
//! token cannot be checked against an RSA key (or the reverse), and `alg: none` is never
//! accepted. `exp` and `nbf` are checked with `auth.jwt.leeway`; `iss` and `aud` when
//! configured; `sub` must be a non-empty string.
//!
//! Every refused token is logged at info with its [`RefusalReason`] (at most one line per
//! reason per 10 s) and counted in `switchboard_auth_refused_total{reason}`; the client
//! sees only the contract's message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::KeyAlgorithm};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
mod jwks;
mod keys;

use jwks::{Lookup, RemoteKeys};
use keys::{KeyRing, KeySources};
use switchboard_core::{
    AuthError, Authenticator, BoxError, ConfigError, Dur, Factory, Handshake, Identity, Plugin,
    PluginContext, RefusalLog, RefusalReason, TokenSource, async_trait, register_plugin,
};

/// `auth.jwt.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Secret for HS256/384/512; required when an HS algorithm is accepted.
    pub secret: Option<String>,
    /// PEM public key for RS*/PS*/ES*/EdDSA, used for tokens without a known `kid`.
    pub public_key_file: Option<PathBuf>,
    /// PEM public keys by `kid` (`{ "2026-11" = "keys/2026-11.pem" }`).
    pub public_keys: BTreeMap<String, PathBuf>,
    /// A JWK set (JSON) whose keys are chosen by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// How often key files are checked for changes.
    pub reload_interval: Dur,
    /// An `http://` or `https://` URL serving a JWK set whose keys are chosen by `kid`.
    pub jwks_url: Option<String>,
    /// The shortest time a fetched JWK set is kept, and the least time between two fetches
    /// caused by unknown `kid`s.
    pub jwks_cache_min: Dur,
    /// The longest time a fetched JWK set is kept before it is fetched again.
    pub jwks_cache_max: Dur,
    /// Accepted algorithms.
    pub algorithms: Vec<String>,
    /// When set, a token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`; an unrefreshed connection is closed at `exp` plus this.
    pub leeway: Dur,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            public_key_file: None,
            public_keys: BTreeMap::new(),
            jwks_file: None,
            reload_interval: Dur::secs(5),
            jwks_url: None,
            jwks_cache_min: Dur::secs(30),
            jwks_cache_max: Dur::secs(3600),
            algorithms: vec!["HS256".to_owned()],
            issuer: None,
            audience: None,
            leeway: Dur::secs(60),
            require_exp: true,
        }
    }
}

const KNOWN_ALGORITHMS: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// The signing algorithm a JOSE name stands for (`RS256`), if it is one this plugin knows.
pub(crate) fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    let alg = match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    // `KeyAlgorithm` parses the JOSE names; only signing algorithms are kept.
    signing_algorithm(name.parse::<KeyAlgorithm>().ok()?)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A refused token: why, and what names the cause (a kid, an alg), for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The kid or alg concerned, when there is one.
    pub detail: Option<String>,
}

impl Refusal {
    fn new(reason: RefusalReason) -> Self {
        Refusal {
            reason,
            detail: None,
        }
    }

    fn with(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: Some(detail.into()),
        }
    }
}

/// Why jsonwebtoken refused a token whose header parsed.
fn classify(e: &jsonwebtoken::errors::Error) -> RefusalReason {
    match e.kind() {
        ErrorKind::ExpiredSignature => RefusalReason::Expired,
        ErrorKind::ImmatureSignature => RefusalReason::NotYetValid,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Provider(_) => RefusalReason::BadSignature,
        ErrorKind::InvalidIssuer => RefusalReason::WrongIssuer,
        ErrorKind::InvalidAudience => RefusalReason::WrongAudience,
        ErrorKind::InvalidSubject => RefusalReason::NoSub,
        ErrorKind::InvalidClaimFormat(claim) if claim == "sub" => RefusalReason::NoSub,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "sub" => RefusalReason::NoSub,
            "exp" => RefusalReason::NoExp,
            "iss" => RefusalReason::WrongIssuer,
            "aud" => RefusalReason::WrongAudience,
            _ => RefusalReason::Malformed,
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => RefusalReason::AlgorithmNotAccepted,
        _ => RefusalReason::Malformed,
    }
}

/// A header jsonwebtoken cannot read: an `alg` it does not know (`none`) is an algorithm
/// refused; anything else is a malformed token.
fn header_refusal(token: &str) -> Refusal {
    use base64::Engine as _;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|header| header.get("alg").and_then(Value::as_str).map(str::to_owned));
    match alg {
        Some(alg) => Refusal::with(RefusalReason::AlgorithmNotAccepted, alg),
        None => Refusal::new(RefusalReason::Malformed),
    }
}

/// Verifies tokens; built from [`JwtConfig`].
pub struct JwtAuthenticator {
    /// Each accepted algorithm with the checks its tokens must pass, built once.
    accepted: Vec<(Algorithm, Validation)>,
    secret: Option<DecodingKey>,
    public: Option<KeyRing>,
    remote: Option<Arc<RemoteKeys>>,
    leeway: Duration,
    allow_query_user_id: bool,
    refusals: RefusalLog,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field(
                "algorithms",
                &self.accepted.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Checks the config and loads the keys; errors name the key (`auth.jwt.secret: missing`).
    ///
    /// With `auth.jwt.jwks_url`, called within a Tokio runtime, the JWK set is fetched in
    /// the background from now on; outside one, at the first [`Authenticator`] call made
    /// within one.
    pub fn new(cfg: &JwtConfig, allow_query_user_id: bool) -> Result<Self, ConfigError> {
        let mut algorithms = Vec::new();
        if cfg.algorithms.is_empty() {
            return Err(ConfigError::new(
                "auth.jwt.algorithms",
                "must list at least one algorithm",
            ));
        }
        for name in &cfg.algorithms {
            let alg = parse_algorithm(name).ok_or_else(|| {
                ConfigError::new(
                    "auth.jwt.algorithms",
                    format!("unknown algorithm `{name}` (known: {KNOWN_ALGORITHMS})"),
                )
            })?;
            algorithms.push(alg);
        }
        let secret = if algorithms.iter().any(|a| is_hmac(*a)) {
            let s = cfg
                .secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ConfigError::new(
                        "auth.jwt.secret",
                        "missing (required when an HS algorithm is accepted)",
                    )
                })?;
            if s.len() < 32 {
                tracing::warn!(
                    "auth.jwt.secret is shorter than 32 bytes; use a longer random secret"
                );
            }
            Some(DecodingKey::from_secret(s.as_bytes()))
        } else {
            None
        };
        let sources = KeySources {
            default_pem: cfg.public_key_file.clone(),
            pems_by_kid: cfg.public_keys.clone().into_iter().collect(),
            jwks: cfg.jwks_file.clone(),
            reload_every: cfg.reload_interval.get(),
        };
        let asymmetric = algorithms.iter().any(|a| !is_hmac(*a));
        let remote = match &cfg.jwks_url {
            Some(_) if !asymmetric => {
                return Err(ConfigError::new(
                    "auth.jwt.jwks_url",
                    "no RS*/PS*/ES*/EdDSA algorithm is in auth.jwt.algorithms, so no key from it would be used; add the provider's (such as RS256)",
                ));
            }
            Some(url) => Some(RemoteKeys::new(
                url,
                cfg.jwks_cache_min.get(),
                cfg.jwks_cache_max.get(),
            )?),
            None => None,
        };
        let public = if asymmetric {
            if sources.is_empty() && remote.is_none() {
                return Err(ConfigError::new(
                    "auth.jwt.public_key_file",
                    "missing (an RS*/PS*/ES*/EdDSA algorithm needs public_key_file, public_keys, jwks_file or jwks_url)",
                ));
            }
            (!sources.is_empty())
                .then(|| KeyRing::new(sources))
                .transpose()?
        } else {
            None
        };
        if let Some(remote) = &remote {
            remote.start();
        }
        if allow_query_user_id {
            tracing::warn!(
                "auth.allow_query_user_id is on: clients without a token may claim any user id with ?userId=. Development only."
            );
        }
        let accepted = algorithms
            .into_iter()
            .map(|alg| (alg, validation(alg, cfg)))
            .collect();
        Ok(JwtAuthenticator {
            accepted,
            secret,
            public,
            remote,
            leeway: cfg.leeway.get(),
            allow_query_user_id,
            refusals: RefusalLog::unregistered(),
        })
    }

    /// Counts refusals in `metrics` (`switchboard_auth_refused_total{reason}`).
    pub fn with_metrics(mut self, metrics: &switchboard_core::Metrics) -> Self {
        self.refusals = RefusalLog::registered(metrics);
        self
    }

    /// How many tokens were refused for `reason` (at connect and refresh).
    pub fn refused_count(&self, reason: RefusalReason) -> u64 {
        self.refusals.count(reason)
    }

    /// Verifies a token and returns the identity in it, with the keys at hand now (no
    /// JWKS fetch, nothing logged).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.check(token).map_err(|r| r.reason.to_error())
    }

    /// Like [`JwtAuthenticator::verify`], saying why a token is refused.
    pub fn check(&self, token: &str) -> Result<Identity, Refusal> {
        // One accepted algorithm, an HMAC one: `decode` refuses any other `alg` itself, so
        // the header is not parsed once more here just to choose the validation and key.
        if let ([(alg, v)], Some(secret)) = (self.accepted.as_slice(), self.secret.as_ref())
            && is_hmac(*alg)
        {
            let data = jsonwebtoken::decode::<Map<String, Value>>(token, secret, v).map_err(
                |e| match e.kind() {
                    ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_)
                        if jsonwebtoken::decode_header(token).is_err() =>
                    {
                        header_refusal(token)
                    }
                    _ => Refusal::new(classify(&e)),
                },
            )?;
            return identity_from_claims(data.claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_refusal(token))?;
        let (_, v) = self
            .accepted
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .ok_or_else(|| {
                Refusal::with(
                    RefusalReason::AlgorithmNotAccepted,
                    format!("{:?}", header.alg),
                )
            })?;
        let decode = |key: &DecodingKey| jsonwebtoken::decode::<Map<String, Value>>(token, key, v);
        // The family is fixed by the accepted algorithm: HS tokens only ever meet the secret,
        // asymmetric ones only the public keys, so neither can pose as the other.
        let result = if is_hmac(header.alg) {
            self.secret
                .as_ref()
                .map(decode)
                .ok_or_else(|| Refusal::new(RefusalReason::AlgorithmNotAccepted))?
        } else {
            self.public_decode(header.alg, header.kid.as_deref(), decode)?
        };
        let data = result.map_err(|e| Refusal::new(classify(&e)))?;
        identity_from_claims(data.claims)
    }

    /// Decodes with the public key for `kid`: `public_keys` and `jwks_file`, then the
    /// JWKS URL's set, then `public_key_file`.
    fn public_decode<T>(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        decode: impl Fn(&DecodingKey) -> T,
    ) -> Result<T, Refusal> {
        let ring = self.public.as_ref();
        let mut no_keys_yet = false;
        if let Some(kid) = kid {
            if let Some(out) = ring.and_then(|r| r.with_kid(kid, &decode)) {
                return Ok(out);
            }
            match self.remote.as_ref().map(|r| r.lookup(kid)) {
                Some(Lookup::Found(key)) => {
                    if key.alg.is_some_and(|a| a != alg) {
                        return Err(Refusal::with(
                            RefusalReason::AlgorithmNotAccepted,
                            format!("{alg:?} with key {kid:?} (for {:?})", key.alg),
                        ));
                    }
                    return Ok(decode(&key.key));
                }
                Some(Lookup::NoKeys) => no_keys_yet = true,
                Some(Lookup::Unknown) | None => {}
            }
        }
        if let Some(out) = ring.and_then(|r| r.with_default(&decode)) {
            return Ok(out);
        }
        if no_keys_yet {
            return Err(Refusal::new(RefusalReason::KeysUnavailable));
        }
        Err(match kid {
            Some(kid) => Refusal::with(RefusalReason::UnknownKid, kid),
            None => Refusal::with(RefusalReason::UnknownKid, "(no kid in the token)"),
        })
    }

    /// Verifies, fetching the JWK set again when the token names a kid it lacks (rate
    /// limited), and records a refusal.
    async fn verify_logged(
        &self,
        token: &str,
        during: &'static str,
    ) -> Result<Identity, AuthError> {
        if let Some(remote) = &self.remote {
            remote.start();
        }
        let mut result = self.check(token);
        if let (Err(r), Some(remote)) = (&result, &self.remote)
            && matches!(
                r.reason,
                RefusalReason::UnknownKid | RefusalReason::KeysUnavailable
            )
            && remote.refresh_for_unknown_kid().await
        {
            result = self.check(token);
        }
        result.map_err(|r| self.refused(r, during))
    }

    fn refused(&self, r: Refusal, during: &'static str) -> AuthError {
        self.refusals.refused(r.reason, during, r.detail.as_deref());
        r.reason.to_error()
    }
}

/// What a token signed with `alg` must satisfy under `cfg`.
fn validation(alg: Algorithm, cfg: &JwtConfig) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.leeway.get().as_secs();
    v.validate_nbf = true;
    v.validate_exp = true;
    let mut required = vec!["sub"];
    if cfg.require_exp {
        required.push("exp");
    }
    if cfg.issuer.is_some() {
        required.push("iss");
    }
    if cfg.audience.is_some() {
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    match &cfg.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &cfg.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    v
}

fn identity_from_claims(claims: Map<String, Value>) -> Result<Identity, Refusal> {
    let user_id = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(Refusal::new(RefusalReason::NoSub)),
    };
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Identity {
        email: text("email"),
        role: text("role"),
        expires_at: claims.get("exp").and_then(Value::as_u64),
        user_id,
        claims,
    })
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, handshake: &Handshake<'_>) -> Result<Identity, AuthError> {
        match handshake.token() {
            TokenSource::Token(t) => self.verify_logged(t, "connect").await,
            TokenSource::NotAString => Err(self.refused(
                Refusal::with(RefusalReason::Malformed, "auth.token is not a string"),
                "connect",
            )),
            TokenSource::Missing => {
                if self.allow_query_user_id
                    && let Some(user) = handshake.query_param("userId").filter(|u| !u.is_empty())
                {
                    return Ok(Identity::anonymous_user(user));
                }
                Err(self.refused(Refusal::new(RefusalReason::NoToken), "connect"))
            }
        }
    }

    async fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_logged(token, "refresh").await
    }

    fn leeway(&self) -> Duration {
        self.leeway
    }
}

/// Signs a token with the configured secret and the first accepted HS algorithm.
///
/// `claims` are added to `sub`, `iat` and `exp` (now + `ttl`); `iss`/`aud` come from config.
pub fn mint(
    cfg: &JwtConfig,
    sub: &str,
    ttl: std::time::Duration,
    extra: Map<String, Value>,
) -> Result<String, ConfigError> {
    let alg = cfg
        .algorithms
        .iter()
        .filter_map(|a| parse_algorithm(a))
        .find(|a| is_hmac(*a))
        .ok_or_else(|| {
            ConfigError::new(
                "auth.jwt.algorithms",
                "minting needs an accepted HS algorithm (HS256, HS384 or HS512)",
            )
        })?;
    let secret = cfg
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::new("auth.jwt.secret", "missing (needed to mint a token)"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = extra;
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
    if let Some(iss) = &cfg.issuer {
        claims
            .entry("iss")
            .or_insert_with(|| Value::from(iss.clone()));
    }
    if let Some(aud) = &cfg.audience {
        claims
            .entry("aud")
            .or_insert_with(|| Value::from(aud.clone()));
    }
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| ConfigError::new("auth.jwt.secret", format!("cannot sign: {e}")))
}

fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn Authenticator>, BoxError> {
    let cfg: JwtConfig = ctx.section()?;
    Ok(Arc::new(
        JwtAuthenticator::new(&cfg, ctx.config().auth.allow_query_user_id)?
            .with_metrics(ctx.metrics()),
    ))
}

register_plugin!(
    Plugin::new(
        "jwt",
        "JWT bearer tokens: HS* with a secret, RS*/PS*/ES*/EdDSA with PEM keys or a JWKS file or URL; exp/nbf/iss/aud",
        Factory::Auth(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<JwtConfig>)
);

#[cfg(test)]
mod tests {
    use super::*;
    use base64_free::b64;
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789-abcdefghij";

    fn cfg() -> JwtConfig {
        JwtConfig {
            secret: Some(SECRET.into()),
            leeway: Dur::secs(0),
            ..JwtConfig::default()
        }
    }

    fn sign(alg: Algorithm, claims: Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    mod base64_free {
        /// Unpadded URL-safe base64, enough to forge an `alg: none` token in a test.
        pub(crate) fn b64(bytes: &[u8]) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn valid_token_gives_identity() {
        let a = JwtAuthenticator::new(&cfg(), false).expect("config");
        let t = sign(
            Algorithm::HS256,
            json!({"sub": "u1", "email": "a@b.c", "role": "agent", "exp": now() + 60}),
            SECRET,
        );
        let id = a.verify(&t).expect("valid");
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.email.as_deref(), Some("a@b.c"));
        assert_eq!(id.role.as_deref(), Some("agent"));
        assert_eq!(id.claims.get("role"), Some(&json!("agent")));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let a = JwtAuthenticator::new(&cfg(), false).expect("config");
        let exp = now() + 60;
        let cases = [
            sign(
                Algorithm::HS256,
                json!({"sub": "u1", "exp": exp}),
                "another-secret-0123456789-abcdefghij",
            ),
            sign(
                Algorithm::HS256,
                json!({"sub": "u1", "exp": now() - 5}),
                SECRET,
            ),
            sign(Algorithm::HS512, json!({"sub": "u1", "exp": exp}), SECRET),
            sign(Algorithm::HS256, json!({"exp": exp}), SECRET),
            sign(Algorithm::HS256, json!({"sub": 5, "exp": exp}), SECRET),
            sign(Algorithm::HS256, json!({"sub": "", "exp": exp}), SECRET),
            sign(Algorithm::HS256, json!({"sub": "u1"}), SECRET),
            sign(
                Algorithm::HS256,
                json!({"sub": "u1", "exp": exp, "nbf": now() + 30}),
                SECRET,
            ),
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(format!(r#"{{"sub":"u1","exp":{exp}}}"#).as_bytes())
            ),
            "not.a.token".to_owned(),
        ];
        use RefusalReason as R;
        let reasons = [
            R::BadSignature,
            R::Expired,
            R::AlgorithmNotAccepted,
            R::NoSub,
            R::NoSub,
            R::NoSub,
            R::NoExp,
            R::NotYetValid,
            R::AlgorithmNotAccepted,
            R::Malformed,
        ];
        for (i, (t, reason)) in cases.iter().zip(reasons).enumerate() {
            assert_eq!(a.verify(t), Err(AuthError::InvalidToken), "case {i}");
            assert_eq!(a.check(t).map_err(|r| r.reason), Err(reason), "case {i}");
        }
        // With two accepted algorithms the header is read first: the same reasons.
        let two = JwtAuthenticator::new(
            &JwtConfig {
                algorithms: vec!["HS256".into(), "HS384".into()],
                ..cfg()
            },
            false,
        )
        .expect("config");
        for (i, (t, reason)) in cases.iter().zip(reasons).enumerate() {
            assert_eq!(two.check(t).map_err(|r| r.reason), Err(reason), "case {i}");
        }
    }

    #[tokio::test]
    async fn refusals_are_counted_by_reason_and_the_client_sees_the_contract_message() {
        let metrics = switchboard_core::Metrics::new();
        let a = JwtAuthenticator::new(&cfg(), false)
            .expect("config")
            .with_metrics(&metrics);
        let headers = http::HeaderMap::new();
        let expired =
            json!({"token": sign(Algorithm::HS256, json!({"sub": "u", "exp": now() - 5}), SECRET)});
        let hs = Handshake {
            auth: Some(&expired),
            headers: &headers,
            query: None,
        };
        for _ in 0..3 {
            let e = a.authenticate(&hs).await.expect_err("expired");
            assert_eq!(e.to_string(), switchboard_core::auth::INVALID_TOKEN);
        }
        let none = Handshake {
            auth: None,
            headers: &headers,
            query: None,
        };
        assert_eq!(a.authenticate(&none).await, Err(AuthError::NoToken));
        assert_eq!(a.refused_count(RefusalReason::Expired), 3);
        assert_eq!(a.refused_count(RefusalReason::NoToken), 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"switchboard_auth_refused_total{reason="expired"} 3"#),
            "{text}"
        );
        let bad = sign(
            Algorithm::HS256,
            json!({"sub": "u", "exp": now() + 60}),
            "another-secret-0123456789-abcdefghij",
        );
        assert_eq!(a.verify_token(&bad).await, Err(AuthError::InvalidToken));
        assert_eq!(a.refused_count(RefusalReason::BadSignature), 1);
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_set() {
        let c = JwtConfig {
            issuer: Some("backend".into()),
            audience: Some("gateway".into()),
            ..cfg()
        };
        let a = JwtAuthenticator::new(&c, false).expect("config");
        let exp = now() + 60;
        let good = sign(
            Algorithm::HS256,
            json!({"sub": "u", "exp": exp, "iss": "backend", "aud": "gateway"}),
            SECRET,
        );
        assert!(a.verify(&good).is_ok());
        for (claims, reason) in [
            (
                json!({"sub": "u", "exp": exp, "aud": "gateway"}),
                RefusalReason::WrongIssuer,
            ),
            (
                json!({"sub": "u", "exp": exp, "iss": "other", "aud": "gateway"}),
                RefusalReason::WrongIssuer,
            ),
            (
                json!({"sub": "u", "exp": exp, "iss": "backend"}),
                RefusalReason::WrongAudience,
            ),
            (
                json!({"sub": "u", "exp": exp, "iss": "backend", "aud": "other"}),
                RefusalReason::WrongAudience,
            ),
        ] {
            let t = sign(Algorithm::HS256, claims, SECRET);
            assert_eq!(a.verify(&t), Err(AuthError::InvalidToken));
            assert_eq!(a.check(&t).map_err(|r| r.reason), Err(reason));
        }
        let minted = mint(&c, "u9", std::time::Duration::from_secs(60), Map::new()).expect("mint");
        assert_eq!(
            a.verify(&minted).expect("minted token verifies").user_id,
            "u9"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let no_secret = JwtConfig::default();
        let e = JwtAuthenticator::new(&no_secret, false).expect_err("secret");
        assert!(e.to_string().starts_with("auth.jwt.secret: missing"), "{e}");
        let rs = JwtConfig {
            algorithms: vec!["RS256".into()],
            ..JwtConfig::default()
        };
        let e = JwtAuthenticator::new(&rs, false).expect_err("key");
        assert!(
            e.to_string()
                .starts_with("auth.jwt.public_key_file: missing"),
            "{e}"
        );
        let bad = JwtConfig {
            algorithms: vec!["XX1".into()],
            ..cfg()
        };
        let e = JwtAuthenticator::new(&bad, false).expect_err("alg");
        assert!(
            e.to_string()
                .starts_with("auth.jwt.algorithms: unknown algorithm `XX1`"),
            "{e}"
        );
        let none = JwtConfig {
            algorithms: vec!["none".into()],
            ..cfg()
        };
        assert!(JwtAuthenticator::new(&none, false).is_err());
    }

    #[tokio::test]
    async fn query_user_id_only_when_allowed_and_tokenless() {
        let headers = http::HeaderMap::new();
        let hs = |q| Handshake {
            auth: None,
            headers: &headers,
            query: Some(q),
        };
        let off = JwtAuthenticator::new(&cfg(), false).expect("config");
        assert_eq!(
            off.authenticate(&hs("userId=alice")).await,
            Err(AuthError::NoToken)
        );
        let on = JwtAuthenticator::new(&cfg(), true).expect("config");
        assert_eq!(
            on.authenticate(&hs("userId=alice"))
                .await
                .expect("fallback")
                .user_id,
            "alice"
        );
        let bad = json!({"token": "garbage"});
        let with_bad_token = Handshake {
            auth: Some(&bad),
            headers: &headers,
            query: Some("userId=alice"),
        };
        assert_eq!(
            on.authenticate(&with_bad_token).await,
            Err(AuthError::InvalidToken)
        );
    }
}
