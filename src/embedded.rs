//! The embedded development default: what `switchboard` serves with no config file.
//!
//! With no `--config` and no `./switchboard.toml`, a node has no JWT secret and no API
//! key, so it could neither accept a client nor a publish. Instead it fills in what a file
//! would have given: a random `auth.jwt.secret` (unless `SWITCHBOARD_AUTH__JWT__SECRET` is
//! set, or no HS algorithm is accepted) and a random API key (unless
//! `SWITCHBOARD_API__KEYS` is set), both for this run only. When it generated either, it
//! serves on loopback addresses only and prints, once bound, where the secret came from,
//! the API key, a token for a demo user and a `curl` line that publishes. When the
//! environment gives both, nothing is generated: that is an ordinary configuration, from
//! the environment, and may listen anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use switchboard_auth_jwt::{JwtConfig, mint};
use switchboard_core::config::{ConfigIssue, Loader};
use switchboard_core::{ConfigError, LoadedConfig, Node};

/// How errors and `check` name the layer of generated values.
pub const LAYER_NAME: &str = "the embedded default (no config file)";
/// The demo user whose token the banner prints.
pub const DEMO_USER: &str = "demo";
/// How long the demo token lives.
pub const DEMO_TTL: Duration = Duration::from_secs(3600);

/// What was generated for this run because no config file gave it.
#[derive(Clone)]
pub struct Embedded {
    secret: Option<String>,
    api_key: Option<String>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("generated_secret", &self.secret.is_some())
            .field("generated_api_key", &self.api_key.is_some())
            .finish()
    }
}

/// 32 random bytes from the operating system, as unpadded URL-safe base64 (43 characters).
pub fn random_secret() -> Result<String, String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("the operating system gave no random bytes: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether the `auth.jwt` section as the layers give it needs a secret that none sets.
fn needs_secret(loader: &Loader) -> bool {
    if loader.env_sets("auth.jwt.secret") {
        return false;
    }
    let Ok(figment) = loader.figment().map(|l| l.figment) else {
        return false;
    };
    let plugin = figment
        .extract_inner::<String>("auth.plugin")
        .unwrap_or_else(|_| "jwt".to_owned());
    let algorithms = figment
        .extract_inner::<Vec<String>>("auth.jwt.algorithms")
        .unwrap_or_else(|_| JwtConfig::default().algorithms);
    plugin == "jwt" && algorithms.iter().any(|a| a.starts_with("HS"))
}

impl Embedded {
    /// What to generate for `loader`: `None` when it reads a config file, or when the
    /// environment gives everything a file would.
    pub fn plan(loader: &Loader) -> Result<Option<Embedded>, ConfigError> {
        if loader.chosen_file()?.is_some() {
            return Ok(None);
        }
        let generate = |wanted: bool| -> Result<Option<String>, ConfigError> {
            if !wanted {
                return Ok(None);
            }
            random_secret()
                .map(Some)
                .map_err(|e| ConfigError::new("", e))
        };
        let secret = generate(needs_secret(loader))?;
        let api_key = generate(!loader.env_sets("api.keys"))?;
        if secret.is_none() && api_key.is_none() {
            return Ok(None);
        }
        Ok(Some(Embedded { secret, api_key }))
    }

    /// Whether a JWT secret was generated for this run.
    pub fn generated_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// The loader with the generated values as its base layer.
    pub fn apply(&self, loader: Loader) -> Loader {
        let mut values = BTreeMap::new();
        if let Some(secret) = &self.secret {
            values.insert("auth.jwt.secret".to_owned(), Value::from(secret.clone()));
        }
        if let Some(key) = &self.api_key {
            values.insert("api.keys".to_owned(), json!([key]));
        }
        loader.base_layer(LAYER_NAME, values)
    }

    /// The embedded default serves on loopback addresses only: a random secret and key
    /// printed to a terminal are for trying things on this machine.
    pub fn check_listen(&self, loaded: &LoadedConfig) -> Option<ConfigIssue> {
        let listen = loaded.config.server.listen;
        if listen.ip().is_loopback() {
            return None;
        }
        let generated = match (&self.secret, &self.api_key) {
            (Some(_), Some(_)) => "a JWT secret and an API key",
            (Some(_), None) => "a JWT secret",
            _ => "an API key",
        };
        Some(ConfigIssue {
            key: "server.listen".to_owned(),
            reason: format!(
                "`{listen}` is not a loopback address, and with no config file this run uses {generated} generated for it (the embedded development default), which serves on loopback only. Write a config with `switchboard init` and pass it with --config (or set SWITCHBOARD_AUTH__JWT__SECRET and SWITCHBOARD_API__KEYS)"
            ),
            origin: loaded.origin_of("server.listen"),
        })
    }

    /// What `check` says about the configuration it validated.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.secret.is_some() {
            parts.push("a JWT secret");
        }
        if self.api_key.is_some() {
            parts.push("an API key");
        }
        format!(
            "no config file: the embedded development default, with {} generated for each run",
            parts.join(" and ")
        )
    }

    /// The framed start-up notice: the secret's origin, the API key, a demo token and a
    /// `curl` line that publishes, for a node bound at `bound`.
    pub fn banner(&self, node: &Node, bound: SocketAddr) -> String {
        let loaded = node.loaded();
        let base = format!("http://{bound}");
        let namespace = loaded
            .figment
            .extract_inner::<String>("transports.socketio.namespace")
            .unwrap_or_else(|_| "/messages".to_owned());
        let secret_origin = match &self.secret {
            Some(secret) => format!(
                "{secret}\n               (random, generated for this run: a token signed with it verifies here until the node stops)"
            ),
            None => loaded
                .origin_of("auth.jwt.secret")
                .map_or_else(|| "none".to_owned(), |o| format!("from {o}")),
        };
        let token = loaded
            .figment
            .focus("auth.jwt")
            .extract::<JwtConfig>()
            .ok()
            .and_then(|cfg| mint(&cfg, DEMO_USER, DEMO_TTL, serde_json::Map::new()).ok());
        let (key_line, key) = match &self.api_key {
            Some(k) => (k.clone(), k.clone()),
            None => (
                loaded
                    .origin_of("api.keys")
                    .map_or_else(|| "none".to_owned(), |o| format!("from {o}")),
                "<your API key>".to_owned(),
            ),
        };
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now());
        let body = format!(
            r#"{{"event":"message:received","data":{{"conversationId":"42","messageId":"m1","senderId":"{DEMO_USER}","type":"text","content":{{"body":"hello from curl"}},"status":"sent","timestamp":"{timestamp}"}}}}"#
        );
        let rule = "-".repeat(78);
        let mut out = String::new();
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(
            out,
            "switchboard: no config file, serving the embedded development default"
        );
        let _ = writeln!(out, "  listening    {base} (loopback only)");
        let _ = writeln!(out, "  socket.io    {base}{namespace}");
        let _ = writeln!(out, "  JWT secret   {secret_origin}");
        let _ = writeln!(out, "  API key      {key_line}");
        match token {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "  demo token   {t}\n               (sub={DEMO_USER}, expires in 1h)"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  demo token   none: no HS algorithm is accepted, so none can be minted here"
                );
            }
        }
        let _ = writeln!(
            out,
            "  publish to conversation 42 (join it first):\n    curl -sS -X POST {base}/api/v1/emit -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{body}'"
        );
        let _ = writeln!(
            out,
            "  Keep secrets across restarts: `switchboard init` writes ./switchboard.toml."
        );
        let _ = write!(out, "{rule}");
        out
    }
}

/// Why `switchboard token` cannot mint with no config file: the server's secret is random.
pub const TOKEN_WITHOUT_CONFIG: &str = "there is no config file, so there is no secret to sign with: `switchboard` without a config uses a random secret for each run, and a token minted here would not verify there. Use the demo token it prints at start-up, or write a config with `switchboard init` (or set SWITCHBOARD_AUTH__JWT__SECRET for both)";

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn loader(env: &[(&str, &str)]) -> Loader {
        // A folder with no switchboard.toml is not needed: `--config` is absent and the
        // working directory of unit tests is the crate root, which has no such file.
        Loader::new(None).env(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
        )
    }

    #[test]
    fn secrets_are_long_url_safe_and_fresh() {
        let a = random_secret().expect("random");
        let b = random_secret().expect("random");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn what_is_generated_depends_on_the_environment() {
        let both = Embedded::plan(&loader(&[]))
            .expect("plan")
            .expect("embedded");
        assert!(both.secret.is_some() && both.api_key.is_some());

        let key_only = Embedded::plan(&loader(&[("SWITCHBOARD_AUTH__JWT__SECRET", "s")]))
            .expect("plan")
            .expect("embedded");
        assert!(key_only.secret.is_none() && key_only.api_key.is_some());

        let rs = Embedded::plan(&loader(&[
            ("SWITCHBOARD_AUTH__JWT__ALGORITHMS", "RS256"),
            ("SWITCHBOARD_API__KEYS", "k"),
        ]))
        .expect("plan");
        assert!(rs.is_none(), "nothing to generate: {rs:?}");

        let none = Embedded::plan(&loader(&[
            ("SWITCHBOARD_AUTH__JWT__SECRET", "s"),
            ("SWITCHBOARD_API__KEYS", ""),
        ]))
        .expect("plan");
        assert!(none.is_none(), "the environment gives everything: {none:?}");
    }

    #[test]
    fn the_embedded_default_builds_and_stays_on_loopback() {
        let plan = Embedded::plan(&loader(&[]))
            .expect("plan")
            .expect("embedded");
        let loaded = plan.apply(loader(&[])).load().expect("valid");
        assert!(plan.check_listen(&loaded).is_none());
        let node = Node::build(loaded).expect("builds");
        let banner = plan.banner(&node, "127.0.0.1:3000".parse().expect("addr"));
        assert!(banner.contains("curl -sS -X POST http://127.0.0.1:3000/api/v1/emit"));
        assert!(banner.contains("demo token   ey"), "{banner}");

        let public = plan
            .apply(loader(&[("SWITCHBOARD_SERVER__LISTEN", "0.0.0.0:3000")]))
            .load()
            .expect("valid");
        let issue = plan.check_listen(&public).expect("refused");
        assert_eq!(issue.key, "server.listen");
        assert_eq!(
            issue.origin.as_deref(),
            Some("env SWITCHBOARD_SERVER__LISTEN")
        );
        assert!(issue.reason.contains("switchboard init"), "{issue}");
    }
}
