//! The configuration model: built-in defaults < TOML file < `SWITCHBOARD_*` env < flags.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value as FigValue;
use serde::{Deserialize, Serialize};

use crate::units::{Dur, Size};

mod checks;
mod collect;
mod env;
pub mod listen;

pub use env::sections;

/// Extracts the section at `path` (`auth.jwt`) as `T`, an absent section as `T`'s
/// defaults; every bad key of the section is in the error, each with its origin.
pub fn extract_section<T: serde::de::DeserializeOwned>(
    figment: &Figment,
    path: &str,
) -> Result<T, ConfigError> {
    match collect::extract_all::<T>(figment, path) {
        (Some(v), issues) if issues.is_empty() => Ok(v),
        (_, issues) => Err(ConfigError { issues }),
    }
}

/// Environment variable prefix for config overrides (`SWITCHBOARD_SERVER__LISTEN`).
pub const ENV_PREFIX: &str = "SWITCHBOARD_";
/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "switchboard.toml";

/// Plugin sub-sections below a section (`auth.jwt`, `transports.socketio`), keyed by plugin name.
pub type Sections = BTreeMap<String, FigValue>;

/// The whole configuration of a node.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening socket, CORS and static files.
    pub server: ServerConfig,
    /// Transport plugin sections (`transports.socketio`, ...).
    pub transports: Sections,
    /// Authentication: which plugin, and its section.
    pub auth: AuthConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Presence: which plugin, and the node TTL.
    pub presence: PresenceConfig,
    /// Room broker: which plugin.
    pub broker: BrokerConfig,
    /// Event handler plugins.
    pub events: EventsConfig,
    /// The Redis server shared by the Redis plugins.
    pub redis: RedisConfig,
    /// Hook plugin sections (`hooks.lua`).
    pub hooks: Sections,
    /// Room access policies.
    pub rooms: crate::access::RoomsConfig,
    /// Limits on clients and requests.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Room history: what is kept of each room's events.
    pub history: HistoryConfig,
    /// Connection state recovery.
    pub recovery: RecoveryConfig,
    /// The admin page.
    pub admin: AdminConfig,
}

/// `admin.*`: the admin page at `/admin/` (CONTRACT §6).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin page.
    pub enabled: bool,
    /// Keys that open it (and, with it on, the HTTP API it is built on).
    pub keys: Vec<String>,
}

/// `history.*`: each room's recent events, kept by the broker (for recovery and
/// `GET /api/v1/history/{room}`); typing indicators and presence are never kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Events kept per room, at most; `0` keeps none.
    pub size: usize,
    /// How long an event is kept.
    pub ttl: Dur,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 1000,
            ttl: Dur::secs(120),
        }
    }
}

impl HistoryConfig {
    /// Whether any history is kept.
    pub fn enabled(&self) -> bool {
        self.size > 0 && !self.ttl.get().is_zero()
    }
}

/// `recovery.*`: connection state recovery (CONTRACT §2 *Recovery*, §5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// Whether a dropped socket that comes back gets its rooms and what it missed.
    pub enabled: bool,
    /// How long a dropped socket can come back and recover.
    pub max_disconnection: Dur,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            enabled: false,
            max_disconnection: Dur::secs(120),
        }
    }
}

/// `server.*`: the listening socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind; a host name (`localhost:3000`) is resolved when the config loads.
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// Allowed browser origins; `"*"` allows any.
    pub cors_origins: Vec<String>,
    /// A folder served as static files at `/` (the example chat page).
    pub static_dir: Option<PathBuf>,
    /// How long shutdown waits for connections to close.
    pub shutdown_timeout: Dur,
    /// TLS on `server.listen`: the certificate chain and key files.
    pub tls: crate::tls::TlsConfig,
    /// A second address that alone serves the API, metrics, readiness and the admin page.
    pub internal_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            cors_origins: vec!["http://localhost:3000".to_owned()],
            static_dir: None,
            shutdown_timeout: Dur::secs(10),
            tls: crate::tls::TlsConfig::default(),
            internal_listen: None,
        }
    }
}

/// `auth.*`: the authenticator plugin and connection-wide auth settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// The authenticator plugin's name.
    pub plugin: String,
    /// Accept the seed's development-only `?userId=` query when no token is given.
    pub allow_query_user_id: bool,
    /// How long before a token's `exp` the socket gets `auth:expiring`.
    pub refresh_notice: Dur,
    /// Plugin sections (`auth.jwt`).
    #[serde(flatten)]
    pub sections: Sections,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            plugin: "jwt".to_owned(),
            allow_query_user_id: false,
            refresh_notice: Dur::secs(60),
            sections: Sections::new(),
        }
    }
}

/// `api.*`: the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer keys accepted by `/api/*`; empty refuses every call.
    pub keys: Vec<String>,
}

/// `presence.*`: the presence plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// The presence plugin's name (`memory`, `redis`).
    pub plugin: String,
    /// How long a silent node's connections still count (cluster presence).
    pub node_ttl: Dur,
    /// Plugin sections (`presence.redis`).
    #[serde(flatten)]
    pub sections: Sections,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            plugin: "memory".to_owned(),
            node_ttl: Dur::secs(10),
            sections: Sections::new(),
        }
    }
}

/// `broker.*`: the room broker plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerConfig {
    /// The broker plugin's name (`memory`, `redis`).
    pub plugin: String,
    /// Plugin sections (`broker.redis`).
    #[serde(flatten)]
    pub sections: Sections,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            plugin: "memory".to_owned(),
            sections: Sections::new(),
        }
    }
}

/// `events.*`: which event-handler plugins are active.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EventsConfig {
    /// Event plugins, by name.
    pub plugins: Vec<String>,
    /// Plugin sections (`events.conversation`).
    #[serde(flatten)]
    pub sections: Sections,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            plugins: ["conversation", "typing", "session"]
                .map(str::to_owned)
                .to_vec(),
            sections: Sections::new(),
        }
    }
}

/// `redis.*`: the Redis server (or Redis Cluster) the Redis plugins share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL: `redis://`, `rediss://` (TLS), `redis-cluster://h:p?node=h2:p2`,
    /// `rediss-cluster://…`; user and password in it for an ACL user.
    pub url: String,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// Use sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`); unset: on for a Redis Cluster URL,
    /// off otherwise.
    pub sharded_pubsub: Option<bool>,
    /// TLS to Redis: the CA to trust and an optional client certificate.
    pub tls: RedisTlsConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "switchboard:".to_owned(),
            sharded_pubsub: None,
            tls: RedisTlsConfig::default(),
        }
    }
}

/// `redis.tls.*`: what a `rediss://` connection trusts and presents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// The CA certificates (PEM) Redis's certificate must chain to; the system's roots when
    /// unset.
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM), for a Redis started with `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl RedisTlsConfig {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl RedisConfig {
    /// The URL's scheme, lower case.
    fn scheme(&self) -> Option<String> {
        self.url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
    }

    /// Whether the URL names a Redis Cluster (`redis-cluster://`, `rediss-cluster://`).
    pub fn is_cluster(&self) -> bool {
        self.scheme().is_some_and(|s| s.ends_with("-cluster"))
    }

    /// Whether the URL asks for TLS (`rediss://`, `rediss-cluster://`, …).
    pub fn uses_tls(&self) -> bool {
        self.scheme()
            .is_some_and(|s| s.starts_with("rediss") || s.starts_with("valkeys"))
    }

    /// Whether the broker uses sharded pub/sub: `redis.sharded_pubsub`, else on for a Redis
    /// Cluster.
    pub fn sharded(&self) -> bool {
        self.sharded_pubsub.unwrap_or_else(|| self.is_cluster())
    }

    /// Checks `redis.url`'s scheme and that `redis.tls.*` goes with a TLS scheme; the error
    /// is the reason alone.
    pub fn check_url(&self) -> Result<(), String> {
        match self.scheme().as_deref() {
            Some(
                "redis" | "rediss" | "valkey" | "valkeys" | "redis-cluster" | "rediss-cluster"
                | "valkey-cluster" | "valkeys-cluster" | "redis-sentinel" | "rediss-sentinel"
                | "valkey-sentinel" | "valkeys-sentinel" | "redis+unix" | "valkey+unix",
            ) => {}
            _ => {
                return Err(
                    "must start with redis://, rediss:// (TLS), redis-cluster://, \
                     rediss-cluster://, redis-sentinel:// or redis+unix://"
                        .to_owned(),
                );
            }
        }
        if self.tls.is_set() && !self.uses_tls() {
            return Err(
                "redis.tls.* is set, but the URL does not ask for TLS: use rediss:// or \
                 rediss-cluster://"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// `limits.*`: bounds on what clients and API callers may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest inbound event.
    pub max_event_bytes: Size,
    /// Longest conversationId/sessionId.
    pub max_id_chars: usize,
    /// Deepest nesting of an inbound payload.
    pub max_depth: usize,
    /// Largest HTTP API body.
    pub max_http_body_bytes: Size,
    /// Sustained inbound events per second per socket.
    pub events_per_second: u32,
    /// Inbound burst per socket (token bucket size).
    pub burst: u32,
    /// A socket over its rate this long on end is disconnected; `"0s"` never.
    pub rate_disconnect_after: Dur,
    /// How long a client has to complete its handshake (connect and authenticate).
    pub handshake_timeout: Dur,
    /// Rooms one socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// Connections one user may hold on one node; `0`: no limit.
    pub max_connections_per_user: usize,
    /// Connections one node accepts; `0`: no limit.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: Size::kib(64),
            max_id_chars: 256,
            max_depth: 32,
            max_http_body_bytes: Size::mib(1),
            events_per_second: 50,
            burst: 200,
            rate_disconnect_after: Dur::secs(10),
            handshake_timeout: Dur::secs(10),
            max_rooms_per_socket: 100,
            max_connections_per_user: 32,
            max_connections: 50_000,
        }
    }
}

/// `log.*`: log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, such as `info` or `switchboard=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One configuration problem: the key path, what is wrong, and where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, such as `auth.jwt.secret`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
    /// Where the offending value came from (file, env var, flag), when known.
    pub origin: Option<String>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)?;
        } else {
            write!(f, "{}: {}", self.key, self.reason)?;
        }
        if let Some(origin) = &self.origin {
            write!(f, " (from {origin})")?;
        }
        Ok(())
    }
}

/// A configuration that cannot be used; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, each naming its key.
    pub issues: Vec<ConfigIssue>,
}

/// An operator's config: their mistake to fix; the same config fails again.
impl crate::error::Classify for ConfigError {
    fn cause(&self) -> crate::error::Cause {
        crate::error::Cause::Client
    }
    fn retryable(&self) -> bool {
        false
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// One problem at `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            issues: vec![ConfigIssue {
                key: key.into(),
                reason: reason.into(),
                origin: None,
            }],
        }
    }

    /// Converts figment's errors, prefixing each key path with `prefix` (a focused section).
    pub fn from_figment(err: figment::Error, prefix: &str) -> Self {
        let issues = err
            .into_iter()
            .map(|e| {
                let mut path: Vec<String> = prefix
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                path.extend(e.path.iter().cloned());
                let reason = match &e.kind {
                    figment::error::Kind::MissingField(name) => {
                        if path.last().map(String::as_str) != Some(name.as_ref()) {
                            path.push(name.to_string());
                        }
                        "missing".to_owned()
                    }
                    figment::error::Kind::UnknownField(name, expected) => {
                        if path.last() != Some(name) {
                            path.push(name.clone());
                        }
                        if expected.is_empty() {
                            "unknown key".to_owned()
                        } else {
                            format!("unknown key (known keys: {})", expected.join(", "))
                        }
                    }
                    other => other.to_string(),
                };
                let origin = e.metadata.as_ref().map(|md| {
                    let name = md.name.to_string();
                    match &md.source {
                        Some(figment::Source::File(p)) => format!("file {}", p.display()),
                        Some(figment::Source::Custom(s)) => s.clone(),
                        _ if name.contains("environment") => {
                            let var: Vec<String> = path.iter().map(|p| p.to_uppercase()).collect();
                            format!("env {ENV_PREFIX}{}", var.join("__"))
                        }
                        _ => name,
                    }
                });
                ConfigIssue {
                    key: path.join("."),
                    reason,
                    origin,
                }
            })
            .collect();
        ConfigError { issues }
    }
}

/// A loaded configuration: the typed core model and the merged figment (for plugin sections).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The core model.
    pub config: Config,
    /// Every layer merged; plugins read their own sections from it.
    pub figment: Figment,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// `SWITCHBOARD_*` environment variables that name no config section, ignored.
    pub ignored_env: Vec<String>,
}

/// Command-line overrides, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
}

impl LoadedConfig {
    /// Loads defaults < TOML (`file`, else `./switchboard.toml` if present) < env < `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Loader::new(file).overrides(overrides).load()
    }

    /// Like [`LoadedConfig::load`], optionally without the environment layer (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        with_env: bool,
    ) -> Result<Self, ConfigError> {
        let loader = Loader::new(file).overrides(overrides);
        if with_env {
            loader.load()
        } else {
            loader.env(Vec::new()).load()
        }
    }

    /// Loads a config from TOML text alone (defaults < text), for tests and embedding.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Self::from_figment(figment, None)
    }

    /// Extracts the core model from an already merged figment, reporting every problem.
    pub fn from_figment(figment: Figment, file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let (loaded, issues) = Self::from_figment_lenient(figment, file)?;
        if issues.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Extracts the core model, returning it with every problem found: each bad key is at
    /// its default in the model, so the plugins' sections can still be checked. Fails
    /// outright only when no model can be built (a file that does not parse).
    pub fn from_figment_lenient(
        figment: Figment,
        file: Option<PathBuf>,
    ) -> Result<(Self, Vec<ConfigIssue>), ConfigError> {
        let (config, mut issues) = collect::extract_all::<Config>(&figment, "");
        let Some(mut config) = config else {
            return Err(ConfigError { issues });
        };
        issues.extend(checks::run(&figment, &mut config));
        let loaded = LoadedConfig {
            config,
            figment,
            file,
            ignored_env: Vec::new(),
        };
        Ok((loaded, issues))
    }

    /// Where the value at `key` (`auth.jwt.secret`) came from: `file x.toml`, `env NAME`,
    /// `command-line flags`, a base layer's name; `None` for a built-in default.
    pub fn origin_of(&self, key: &str) -> Option<String> {
        collect::origin_of(&self.figment, key)
    }

    /// What the node should warn about at start-up: ignored environment variables, an
    /// HTTP API that refuses every call.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ignored_env.is_empty() {
            out.push(format!(
                "ignoring environment variables that name no config section: {} (config variables are {ENV_PREFIX}<SECTION>__<KEY>, where SECTION is one of {})",
                self.ignored_env.join(", "),
                env::sections().join(", ")
            ));
        }
        if self.config.api.keys.is_empty() {
            out.push(
                "api.keys is empty: the HTTP API (/api/*) refuses every call; set api.keys to publish from a backend"
                    .to_owned(),
            );
        }
        out
    }
}

/// Builds a [`LoadedConfig`] layer by layer: built-in defaults < an optional base layer
/// < the TOML file < `SWITCHBOARD_*` environment < command-line flags.
#[derive(Debug, Clone)]
pub struct Loader {
    file: Option<PathBuf>,
    overrides: Overrides,
    env: Option<Vec<(OsString, OsString)>>,
    base: Option<(String, BTreeMap<String, serde_json::Value>)>,
}

impl Loader {
    /// A loader for `file` (`None`: `./switchboard.toml` when it exists).
    pub fn new(file: Option<&Path>) -> Self {
        Loader {
            file: file.map(Path::to_path_buf),
            overrides: Overrides::default(),
            env: None,
            base: None,
        }
    }

    /// Sets the command-line layer.
    pub fn overrides(mut self, overrides: &Overrides) -> Self {
        self.overrides = overrides.clone();
        self
    }

    /// Reads these variables instead of the process environment.
    pub fn env(mut self, vars: Vec<(OsString, OsString)>) -> Self {
        self.env = Some(vars);
        self
    }

    /// Adds a layer right above the built-in defaults, named `name` in errors: dotted keys
    /// (`auth.jwt.secret`) and their values.
    pub fn base_layer(mut self, name: &str, values: BTreeMap<String, serde_json::Value>) -> Self {
        self.base = Some((name.to_owned(), values));
        self
    }

    /// The file that will be read: `--config`'s, else `./switchboard.toml` when it exists;
    /// a `--config` that names no file is an error.
    pub fn chosen_file(&self) -> Result<Option<PathBuf>, ConfigError> {
        match &self.file {
            Some(p) if !p.is_file() => Err(ConfigError::new(
                "",
                format!(
                    "config file {} does not exist or is not a file",
                    p.display()
                ),
            )),
            Some(p) => Ok(Some(p.clone())),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                Ok(p.is_file().then_some(p))
            }
        }
    }

    /// Whether the environment sets `key` or a key below it (`auth.jwt.secret`, `api`).
    pub fn env_sets(&self, key: &str) -> bool {
        self.env_layer().sets(key)
    }

    fn env_layer(&self) -> env::EnvLayer {
        let defaults = crate::registry::all_config_keys();
        match &self.env {
            Some(vars) => env::EnvLayer::read(vars.iter().cloned(), &defaults),
            None => env::EnvLayer::read(std::env::vars_os(), &defaults),
        }
    }

    /// Every layer merged, without extracting anything.
    pub fn figment(&self) -> Result<Layers, ConfigError> {
        let chosen = self.chosen_file()?;
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some((name, values)) = &self.base {
            let values = values
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), FigValue::serialize(v).ok()?)))
                .collect();
            figment = figment.merge(NamedLayer {
                name: name.clone(),
                values,
            });
        }
        if let Some(p) = &chosen {
            figment = figment.merge(Toml::file_exact(p));
        }
        let env = self.env_layer();
        for var in &env.vars {
            figment = figment.merge(env::VarProvider(var));
        }
        let mut flags = BTreeMap::new();
        if let Some(listen) = &self.overrides.listen {
            flags.insert("server.listen".to_owned(), FigValue::from(listen.clone()));
        }
        if !flags.is_empty() {
            figment = figment.merge(NamedLayer {
                name: "command-line flags".to_owned(),
                values: flags,
            });
        }
        Ok(Layers {
            figment,
            file: chosen,
            ignored_env: env.ignored,
            issues: env.issues,
        })
    }

    /// Loads the config; every problem of the core model is in one error.
    pub fn load(self) -> Result<LoadedConfig, ConfigError> {
        let (loaded, issues) = self.load_lenient()?;
        if issues.is_empty() {
            Ok(loaded)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Loads the config with every problem of the core model listed beside it (each bad key
    /// at its default), so that plugin sections can be checked too before reporting.
    pub fn load_lenient(self) -> Result<(LoadedConfig, Vec<ConfigIssue>), ConfigError> {
        let Layers {
            figment,
            file,
            ignored_env,
            mut issues,
        } = self.figment()?;
        let (mut loaded, more) = match LoadedConfig::from_figment_lenient(figment, file) {
            Ok(pair) => pair,
            Err(mut e) => {
                issues.append(&mut e.issues);
                return Err(ConfigError { issues });
            }
        };
        loaded.ignored_env = ignored_env;
        issues.extend(more);
        Ok((loaded, issues))
    }
}

/// Every layer of a [`Loader`] merged, before anything is extracted.
#[derive(Debug, Clone)]
pub struct Layers {
    /// The merged layers.
    pub figment: Figment,
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// `SWITCHBOARD_*` names that name no config section.
    pub ignored_env: Vec<String>,
    /// Environment variables that name a key but whose value cannot be read.
    pub issues: Vec<ConfigIssue>,
}

/// A layer of dotted keys, named so errors say where a value came from.
struct NamedLayer {
    name: String,
    values: BTreeMap<String, FigValue>,
}

impl figment::Provider for NamedLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::from(
            self.name.clone(),
            figment::Source::Custom(self.name.clone()),
        )
    }
    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (path, value) in &self.values {
            let nested = path.rsplit('.').fold(value.clone(), |acc, key| {
                let mut d = figment::value::Dict::new();
                d.insert(key.to_owned(), acc);
                FigValue::from(d)
            });
            if let FigValue::Dict(_, d) = nested {
                for (k, v) in d {
                    merge_dict(&mut dict, k, v);
                }
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dict(into: &mut figment::value::Dict, key: String, value: FigValue) {
    match (into.get_mut(&key), value) {
        (Some(FigValue::Dict(_, existing)), FigValue::Dict(_, new)) => {
            for (k, v) in new {
                merge_dict(existing, k, v);
            }
        }
        (_, value) => {
            into.insert(key, value);
        }
    }
}

/// What `switchboard check` prints in place of a secret; refused as a secret's value.
pub const REDACTED: &str = "<redacted>";

/// Key names whose values are secrets, redacted by `switchboard check`.
const SECRET_KEYS: &[&str] = &["secret", "keys", "password", "token", "shared_secret"];

/// Replaces secrets in a JSON rendering of the config with `"<redacted>"`.
pub fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.contains(&k.as_str()) {
                    match v {
                        serde_json::Value::Array(items) => {
                            for item in items.iter_mut() {
                                *item = serde_json::Value::from(REDACTED);
                            }
                        }
                        serde_json::Value::Null => {}
                        other => *other = serde_json::Value::from(REDACTED),
                    }
                } else if k == "url" {
                    if let serde_json::Value::String(s) = v {
                        *s = redact_url(s);
                    }
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Hides the password of a `scheme://user:password@host` URL.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_are_the_operator_s_and_not_retryable() {
        use crate::error::{Cause, Classify};
        let e = ConfigError::new("redis.url", "bad");
        assert_eq!(e.cause(), Cause::Client);
        assert!(!e.retryable());
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.server.cors_origins, vec!["http://localhost:3000"]);
        assert_eq!(c.presence.plugin, "memory");
        assert_eq!(c.broker.plugin, "memory");
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(c.limits.max_event_bytes, Size::kib(64));
        assert_eq!(c.limits.max_id_chars, 256);
        assert_eq!(c.limits.max_depth, 32);
        assert_eq!(c.limits.max_http_body_bytes, Size::mib(1));
        assert_eq!((c.limits.events_per_second, c.limits.burst), (50, 200));
        assert_eq!(c.presence.node_ttl, Dur::secs(10));
        assert!(!c.auth.allow_query_user_id);
        assert!(c.api.keys.is_empty());
    }

    #[test]
    fn toml_values_with_units_are_read() {
        let l = LoadedConfig::from_toml_str(
            "[limits]\nmax_event_bytes = \"1KiB\"\nburst = 3\n[presence]\nnode_ttl = \"2s\"",
        )
        .expect("valid config");
        assert_eq!(l.config.limits.max_event_bytes, Size(1024));
        assert_eq!(l.config.limits.burst, 3);
        assert_eq!(l.config.presence.node_ttl, Dur::secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let err = LoadedConfig::from_toml_str("[limits]\nmax_event_bytes = \"huge\"")
            .expect_err("bad size");
        let text = err.to_string();
        assert!(text.starts_with("limits.max_event_bytes:"), "{text}");

        let err = LoadedConfig::from_toml_str("[server]\nlisten = \"nowhere\"").expect_err("bad");
        assert!(err.to_string().starts_with("server.listen:"), "{err}");

        let err = LoadedConfig::from_toml_str("[limits]\nmax_evnt_bytes = 3").expect_err("typo");
        assert!(
            err.to_string()
                .starts_with("limits.max_evnt_bytes: unknown key"),
            "{err}"
        );

        let err = LoadedConfig::from_toml_str("[presence]\nnode_ttl = \"10\"").expect_err("unit");
        assert!(err.to_string().starts_with("presence.node_ttl:"), "{err}");
    }

    #[test]
    fn redis_urls_are_checked() {
        let with = |url: &str| RedisConfig {
            url: url.to_owned(),
            ..RedisConfig::default()
        };
        assert!(with("redis://127.0.0.1:6379").check_url().is_ok());
        assert!(with("redis-cluster://10.0.0.1:7000").check_url().is_ok());
        assert!(with("rediss://h:6380").check_url().is_ok());
        assert!(
            with("rediss-cluster://h:6380?node=h2:6380")
                .check_url()
                .is_ok()
        );
        assert!(with("http://x").check_url().is_err());
        // TLS files with a URL that does not ask for TLS: a mistake worth stopping for.
        let mut plain = with("redis://h:6379");
        plain.tls.ca_file = Some("ca.pem".into());
        let e = plain.check_url().expect_err("tls files without rediss");
        assert!(e.contains("rediss://"), "{e}");
    }

    #[test]
    fn sharded_pubsub_follows_the_url_unless_set() {
        let with = |url: &str, sharded: Option<bool>| RedisConfig {
            url: url.to_owned(),
            sharded_pubsub: sharded,
            ..RedisConfig::default()
        };
        assert!(!with("redis://h:6379", None).sharded());
        assert!(with("redis-cluster://h:7000", None).sharded());
        assert!(with("rediss-cluster://h:7000", None).sharded());
        assert!(!with("redis-cluster://h:7000", Some(false)).sharded());
        assert!(with("redis://h:6379", Some(true)).sharded());
        assert!(with("rediss-cluster://h:7000", None).uses_tls());
        assert!(!with("redis-cluster://h:7000", None).uses_tls());
    }

    #[test]
    fn secrets_are_redacted() {
        let mut v = serde_json::json!({
            "auth": {"jwt": {"secret": "s3cr3t", "algorithms": ["HS256"]}},
            "api": {"keys": ["k1", "k2"]},
            "redis": {"url": "redis://user:pw@127.0.0.1:6379"}
        });
        redact(&mut v);
        let text = v.to_string();
        assert!(!text.contains("s3cr3t") && !text.contains("k1") && !text.contains(":pw@"));
        assert!(text.contains("HS256"));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sb-config-{name}-{}-{}",
            std::process::id(),
            crate::registry::random_id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn every_error_is_in_one_report_with_its_origin() {
        let dir = temp_dir("all");
        let file = dir.join("bad.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_event_bytes = \"huge\"\nburst = \"many\"\n[server]\nlisen = 1\n[log]\nlevel = \"verbose!!\"\n",
        )
        .expect("write");
        let err = Loader::new(Some(&file))
            .env(env(&[("SWITCHBOARD_PRESENCE__NODE_TTL", "10")]))
            .overrides(&Overrides {
                listen: Some("nowhere".into()),
            })
            .load()
            .expect_err("bad config");
        let by_key: BTreeMap<&str, &ConfigIssue> =
            err.issues.iter().map(|i| (i.key.as_str(), i)).collect();
        let file_origin = format!("file {}", file.display());
        for key in [
            "limits.max_event_bytes",
            "limits.burst",
            "server.lisen",
            "log.level",
        ] {
            let issue = by_key
                .get(key)
                .unwrap_or_else(|| panic!("{key} missing: {err}"));
            assert_eq!(
                issue.origin.as_deref(),
                Some(file_origin.as_str()),
                "{issue}"
            );
        }
        assert_eq!(
            by_key["presence.node_ttl"].origin.as_deref(),
            Some("env SWITCHBOARD_PRESENCE__NODE_TTL")
        );
        assert_eq!(
            by_key["server.listen"].origin.as_deref(),
            Some("command-line flags")
        );
        assert_eq!(err.issues.len(), 6, "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ignored_env_names_are_kept_for_the_warning() {
        let loaded = Loader::new(None)
            .env(env(&[
                ("SWITCHBOARD_PORT", "tcp://10.0.0.1:3000"),
                ("SWITCHBOARD_SERVICE_HOST", "10.0.0.1"),
                ("SWITCHBOARD_API__KEYS", "k1,k2"),
            ]))
            .load()
            .expect("valid");
        assert_eq!(loaded.config.api.keys, ["k1", "k2"]);
        assert_eq!(
            loaded.ignored_env,
            ["SWITCHBOARD_PORT", "SWITCHBOARD_SERVICE_HOST"]
        );
        let warnings = loaded.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("SWITCHBOARD_PORT, SWITCHBOARD_SERVICE_HOST"));
    }

    #[test]
    fn empty_api_keys_warn() {
        let loaded = LoadedConfig::from_toml_str("").expect("valid");
        assert!(
            loaded
                .warnings()
                .iter()
                .any(|w| w.starts_with("api.keys is empty"))
        );
    }

    #[test]
    fn static_dir_is_relative_to_the_config_file() {
        let dir = temp_dir("static");
        std::fs::create_dir_all(dir.join("public")).expect("public");
        let file = dir.join("switchboard.toml");
        std::fs::write(&file, "[server]\nstatic_dir = \"public\"\n").expect("write");
        let loaded = Loader::new(Some(&file))
            .env(Vec::new())
            .load()
            .expect("valid");
        assert_eq!(loaded.config.server.static_dir, Some(dir.join("public")));

        std::fs::write(&file, "[server]\nstatic_dir = \"nope\"\n").expect("write");
        let err = Loader::new(Some(&file))
            .env(Vec::new())
            .load()
            .expect_err("missing folder");
        assert!(
            err.to_string().starts_with("server.static_dir: folder"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redacted_placeholders_are_refused() {
        let err = LoadedConfig::from_toml_str(
            "[api]\nkeys = [\"k1\", \"<redacted>\"]\n[auth.jwt]\nsecret = \"<redacted>\"\n[redis]\nurl = \"redis://u:<redacted>@h:6379\"\n[rooms.http]\nsecret = \"<redacted>\"\n",
        )
        .expect_err("placeholders");
        let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        for key in [
            "api.keys",
            "auth.jwt.secret",
            "redis.url",
            "rooms.http.secret",
        ] {
            assert!(keys.contains(&key), "{key} not refused: {err}");
        }
        assert!(err.to_string().contains("placeholder"), "{err}");
    }

    #[test]
    fn listen_takes_a_host_name() {
        let loaded = Loader::new(None)
            .env(Vec::new())
            .overrides(&Overrides {
                listen: Some("localhost:4000".into()),
            })
            .load()
            .expect("localhost resolves");
        assert!(loaded.config.server.listen.ip().is_loopback());
        assert_eq!(loaded.config.server.listen.port(), 4000);
    }
}
