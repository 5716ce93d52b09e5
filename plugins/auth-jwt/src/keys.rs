//! Public keys for RS*/PS*/ES*/EdDSA: one default PEM, PEMs by `kid`, and a JWKS file,
//! reloaded when a file changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use parking_lot::RwLock;
use switchboard_core::ConfigError;

/// Where the public keys come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySources {
    pub(crate) default_pem: Option<PathBuf>,
    pub(crate) pems_by_kid: Vec<(String, PathBuf)>,
    pub(crate) jwks: Option<PathBuf>,
    pub(crate) reload_every: Duration,
}

impl KeySources {
    pub(crate) fn is_empty(&self) -> bool {
        self.default_pem.is_none() && self.pems_by_kid.is_empty() && self.jwks.is_none()
    }

    fn files(&self) -> Vec<PathBuf> {
        self.default_pem
            .iter()
            .chain(self.pems_by_kid.iter().map(|(_, p)| p))
            .chain(self.jwks.iter())
            .cloned()
            .collect()
    }
}

#[derive(Default)]
struct Loaded {
    default: Option<DecodingKey>,
    by_kid: HashMap<String, DecodingKey>,
    stamps: Vec<Option<SystemTime>>,
}

/// The current keys, with the file stamps they were read at.
pub(crate) struct KeyRing {
    sources: KeySources,
    state: RwLock<(Loaded, Instant)>,
}

fn pem_key(path: &Path, key: &str) -> Result<DecodingKey, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            ConfigError::new(
                key,
                format!(
                    "{} is not an RSA, EC or Ed25519 public key in PEM",
                    path.display()
                ),
            )
        })
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(sources: &KeySources) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded::default();
    if let Some(p) = &sources.default_pem {
        loaded.default = Some(pem_key(p, "auth.jwt.public_key_file")?);
    }
    for (kid, p) in &sources.pems_by_kid {
        let key = pem_key(p, &format!("auth.jwt.public_keys.{kid}"))?;
        loaded.by_kid.insert(kid.clone(), key);
    }
    if let Some(p) = &sources.jwks {
        let text = std::fs::read(p).map_err(|e| {
            ConfigError::new(
                "auth.jwt.jwks_file",
                format!("cannot read {}: {e}", p.display()),
            )
        })?;
        let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
            ConfigError::new(
                "auth.jwt.jwks_file",
                format!("{} is not a JWK set: {e}", p.display()),
            )
        })?;
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                ConfigError::new(
                    "auth.jwt.jwks_file",
                    format!("key `{kid}` in {}: {e}", p.display()),
                )
            })?;
            loaded.by_kid.insert(kid, key);
        }
    }
    loaded.stamps = sources.files().iter().map(|p| stamp(p)).collect();
    Ok(loaded)
}

impl KeyRing {
    /// Loads every source; an unreadable or malformed file is a config error naming its key.
    pub(crate) fn new(sources: KeySources) -> Result<Self, ConfigError> {
        let loaded = load(&sources)?;
        Ok(KeyRing {
            sources,
            state: RwLock::new((loaded, Instant::now())),
        })
    }

    /// Reloads when a file changed since the last look (at most every `reload_every`); a
    /// file that fails to load keeps the previous keys.
    fn refresh(&self) {
        let due = self.state.read().1.elapsed() >= self.sources.reload_every;
        if !due {
            return;
        }
        let mut state = self.state.write();
        state.1 = Instant::now();
        let now: Vec<Option<SystemTime>> = self.sources.files().iter().map(|p| stamp(p)).collect();
        if now == state.0.stamps {
            return;
        }
        match load(&self.sources) {
            Ok(fresh) => {
                tracing::info!(
                    keys = fresh.by_kid.len() + usize::from(fresh.default.is_some()),
                    "JWT public keys reloaded"
                );
                state.0 = fresh;
            }
            Err(e) => {
                state.0.stamps = now;
                tracing::warn!(error = %e, "JWT public keys changed but cannot be loaded; keeping the previous keys");
            }
        }
    }

    /// The key named `kid`, from `public_keys` or `jwks_file`.
    pub(crate) fn with_kid<T>(&self, kid: &str, f: impl FnOnce(&DecodingKey) -> T) -> Option<T> {
        self.refresh();
        let state = self.state.read();
        state.0.by_kid.get(kid).map(f)
    }

    /// The default key (`public_key_file`), for tokens whose `kid` names no other.
    pub(crate) fn with_default<T>(&self, f: impl FnOnce(&DecodingKey) -> T) -> Option<T> {
        self.refresh();
        let state = self.state.read();
        state.0.default.as_ref().map(f)
    }
}
