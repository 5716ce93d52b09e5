//! The plugin registry: compile-time registrations collected with `inventory`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::Authenticator;
use crate::broker::RoomBroker;
use crate::config::{Config, ConfigError, LoadedConfig};
use crate::event::EventHandler;
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::presence::PresenceStore;
use crate::runtime::GatewayHandle;
use crate::transport::Transport;

/// A boxed error from a plugin factory.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginKind {
    /// Transports (`transports.<name>`).
    Transport,
    /// Authenticators (`auth.plugin`).
    Auth,
    /// Presence stores (`presence.plugin`).
    Presence,
    /// Room brokers (`broker.plugin`).
    Broker,
    /// Event sets (`events.plugins`).
    Events,
    /// Hooks (`hooks.<name>`).
    Hooks,
}

impl PluginKind {
    /// Every kind, in listing order.
    pub const ALL: [PluginKind; 6] = [
        PluginKind::Transport,
        PluginKind::Auth,
        PluginKind::Presence,
        PluginKind::Broker,
        PluginKind::Events,
        PluginKind::Hooks,
    ];

    /// The config section the kind's plugins live under.
    pub fn section(self) -> &'static str {
        match self {
            PluginKind::Transport => "transports",
            PluginKind::Auth => "auth",
            PluginKind::Presence => "presence",
            PluginKind::Broker => "broker",
            PluginKind::Events => "events",
            PluginKind::Hooks => "hooks",
        }
    }

    /// A human name for listings and errors.
    pub fn describe(self) -> &'static str {
        match self {
            PluginKind::Transport => "transport",
            PluginKind::Auth => "authenticator",
            PluginKind::Presence => "presence store",
            PluginKind::Broker => "room broker",
            PluginKind::Events => "event set",
            PluginKind::Hooks => "hooks",
        }
    }
}

/// A plugin factory building a `T` from its context.
pub type FactoryFn<T> = fn(&PluginContext<'_>) -> Result<T, BoxError>;

/// Builds a plugin from its context; each variant is one kind.
#[derive(Clone, Copy)]
pub enum Factory {
    /// A transport, built with its [`PluginContext::gateway`] handle; `None` when its
    /// section disables it.
    Transport(FactoryFn<Option<Arc<dyn Transport>>>),
    /// An authenticator.
    Auth(FactoryFn<Arc<dyn Authenticator>>),
    /// A presence store.
    Presence(FactoryFn<Arc<dyn PresenceStore>>),
    /// A room broker.
    Broker(FactoryFn<Arc<dyn RoomBroker>>),
    /// An event set's plugin.
    Events(FactoryFn<Arc<dyn EventHandler>>),
    /// Hooks; `None` when its section configures nothing to run.
    Hooks(FactoryFn<Option<Arc<dyn Hooks>>>),
}

/// One plugin's registration: submit it with [`register_plugin!`](crate::register_plugin).
pub struct Plugin {
    /// The name used in config (`jwt`, `memory`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// Its factory, which also fixes its kind.
    pub factory: Factory,
    /// Its config section's defaults, for `switchboard check` and the reference docs.
    pub defaults: Option<fn() -> serde_json::Value>,
}

inventory::collect!(Plugin);

impl Plugin {
    /// A registration.
    pub const fn new(name: &'static str, description: &'static str, factory: Factory) -> Self {
        Plugin {
            name,
            description,
            factory,
            defaults: None,
        }
    }

    /// Declares the plugin's config type: `.with_config(config_defaults::<MyConfig>)`.
    pub const fn with_config(mut self, defaults: fn() -> serde_json::Value) -> Self {
        self.defaults = Some(defaults);
        self
    }

    /// The plugin's kind.
    pub fn kind(&self) -> PluginKind {
        match self.factory {
            Factory::Transport(_) => PluginKind::Transport,
            Factory::Auth(_) => PluginKind::Auth,
            Factory::Presence(_) => PluginKind::Presence,
            Factory::Broker(_) => PluginKind::Broker,
            Factory::Events(_) => PluginKind::Events,
            Factory::Hooks(_) => PluginKind::Hooks,
        }
    }

    /// Its config section (`auth.jwt`).
    pub fn section(&self) -> String {
        format!("{}.{}", self.kind().section(), self.name)
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} plugin `{}`", self.kind().describe(), self.name)
    }
}

/// Registers a plugin with the registry at compile time.
///
/// ```ignore
/// switchboard_core::register_plugin!(Plugin::new("memory", "Presence in one process", Factory::Presence(build)));
/// ```
#[macro_export]
macro_rules! register_plugin {
    ($plugin:expr) => {
        $crate::inventory::submit! { $plugin }
    };
}

/// The defaults of a plugin's config type, as JSON (for [`Plugin::with_config`]).
pub fn config_defaults<T: Default + Serialize>() -> serde_json::Value {
    serde_json::to_value(T::default()).unwrap_or_default()
}

/// Every config key with its default: the core model plus each plugin's section.
///
/// Keys are dotted paths (`auth.jwt.secret`); tables of plugin sections are expanded, and a
/// key whose default is a table of user entries (`rooms.policy`) is one key.
pub fn all_config_keys() -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let core = serde_json::to_value(Config::default()).unwrap_or_default();
    flatten("", &core, &mut out);
    for p in plugins() {
        if let Some(defaults) = p.defaults {
            flatten(&p.section(), &defaults(), &mut out);
        }
    }
    out
}

/// Keys whose value is a map of user-chosen names, listed as one key.
const LEAF_MAPS: &[&str] = &["rooms.policy", "auth.jwt.public_keys"];
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) if !LEAF_MAPS.contains(&prefix) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

/// Every registered plugin, sorted by kind then name.
pub fn plugins() -> Vec<&'static Plugin> {
    let mut all: Vec<&'static Plugin> = inventory::iter::<Plugin>.into_iter().collect();
    all.sort_by(|a, b| (a.kind(), a.name).cmp(&(b.kind(), b.name)));
    all
}

/// The names registered for `kind`.
pub fn names(kind: PluginKind) -> Vec<&'static str> {
    plugins()
        .into_iter()
        .filter(|p| p.kind() == kind)
        .map(|p| p.name)
        .collect()
}

/// Finds a plugin; an unknown name is an error at `key` that lists the known ones.
pub fn find(kind: PluginKind, name: &str, key: &str) -> Result<&'static Plugin, ConfigError> {
    plugins()
        .into_iter()
        .find(|p| p.kind() == kind && p.name == name)
        .ok_or_else(|| {
            let known = names(kind);
            ConfigError::new(
                key,
                format!(
                    "unknown {} plugin `{name}` (known: {})",
                    kind.describe(),
                    if known.is_empty() {
                        "none compiled in".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
}

/// A random 128-bit id in hex, for node ids and one-off tokens.
pub fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    let a = h.finish();
    let b = std::collections::hash_map::RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}

/// What a factory gets: its config section, the whole config, metrics, the node's id and,
/// for transports, the gateway handle.
pub struct PluginContext<'a> {
    loaded: &'a LoadedConfig,
    section: String,
    effective: &'a Mutex<BTreeMap<String, serde_json::Value>>,
    metrics: &'a Metrics,
    node_id: &'a str,
    gateway: GatewayHandle,
    read_section: Cell<bool>,
}

impl<'a> PluginContext<'a> {
    /// A context for the plugin whose section is `section` (the node builds these; a
    /// plugin's own tests may too).
    pub fn new(
        loaded: &'a LoadedConfig,
        section: String,
        effective: &'a Mutex<BTreeMap<String, serde_json::Value>>,
        metrics: &'a Metrics,
        node_id: &'a str,
    ) -> Self {
        PluginContext {
            loaded,
            section,
            effective,
            metrics,
            node_id,
            gateway: GatewayHandle::detached(),
            read_section: Cell::new(false),
        }
    }

    /// The same context, with the gateway handle a transport is built with.
    pub(crate) fn with_gateway(mut self, gateway: GatewayHandle) -> Self {
        self.gateway = gateway;
        self
    }

    /// The core config.
    pub fn config(&self) -> &Config {
        &self.loaded.config
    }

    /// The plugin's own section path (`auth.jwt`).
    pub fn section_path(&self) -> &str {
        &self.section
    }

    /// Deserializes the plugin's own section; absent keys take `T`'s defaults.
    ///
    /// Give `T` `#[serde(deny_unknown_fields, default)]`; errors name the full key path. A
    /// plugin that reads its section must declare the type with [`Plugin::with_config`], so
    /// `switchboard check` and the config reference list its keys: the node refuses to start
    /// otherwise.
    pub fn section<T: DeserializeOwned + Serialize>(&self) -> Result<T, ConfigError> {
        self.read_section.set(true);
        let path = self.section.clone();
        self.extract(&path)
    }

    /// Whether the factory read its own section.
    pub(crate) fn read_own_section(&self) -> bool {
        self.read_section.get()
    }

    /// Deserializes any section (`redis`), recording it for `switchboard check`.
    pub fn extract<T: DeserializeOwned + Serialize>(&self, path: &str) -> Result<T, ConfigError> {
        let value: T = crate::config::extract_section(&self.loaded.figment, path)?;
        if let Ok(json) = serde_json::to_value(&value) {
            self.effective.lock().insert(path.to_owned(), json);
        }
        Ok(value)
    }

    /// The node's metrics, to register the plugin's own.
    pub fn metrics(&self) -> &Metrics {
        self.metrics
    }

    /// This node's id: the one the broker, presence and logs use.
    pub fn node_id(&self) -> &str {
        self.node_id
    }

    /// The gateway, for a transport to call into (auth, events, presence). Other plugins get
    /// a handle that never reaches a gateway.
    pub fn gateway(&self) -> GatewayHandle {
        self.gateway.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_ids_differ() {
        let (a, b) = (super::random_id(), super::random_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
