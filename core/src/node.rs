//! A node: every configured plugin, built into a [`Gateway`] and served on one port.
//!
//! [`Node::build`] builds a node from its config alone, picking plugins from the registry.
//! [`Node::builder`] does the same but lets code put its own parts in: an authenticator,
//! presence store or broker replaces the configured one, event sets, hooks and transports
//! are added to the configured ones. Tests and embedders inject fakes this way.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::broker::RoomBroker;
use crate::config::{ConfigError, ConfigIssue, LoadedConfig, Sections, redact};
use crate::event::{EventHandler, EventSet, EventTable};
use crate::hooks::Hooks;
use crate::metrics::Metrics;
use crate::presence::PresenceStore;
use crate::registry::{self, BoxError, Factory, PluginContext, PluginKind};
use crate::runtime::{Gateway, GatewayHandle, Parts, TransportBuild};
use crate::transport::Transport;

/// A fully wired node, ready to serve.
pub struct Node {
    gateway: Gateway,
    effective: serde_json::Value,
    loaded: LoadedConfig,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// Builds a transport from the gateway handle it is given.
type TransportFn = Box<dyn FnOnce(GatewayHandle) -> Arc<dyn Transport>>;

/// Puts a node together from its config and, optionally, parts made in code.
pub struct NodeBuilder {
    loaded: LoadedConfig,
    auth: Option<Arc<dyn Authenticator>>,
    presence: Option<Arc<dyn PresenceStore>>,
    broker: Option<Arc<dyn RoomBroker>>,
    event_sets: Vec<EventSet>,
    hooks: Vec<Arc<dyn Hooks>>,
    transports: Vec<TransportFn>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("event_sets", &self.event_sets.len())
            .field("transports", &self.transports.len())
            .finish()
    }
}

impl NodeBuilder {
    /// Uses `auth` instead of the configured authenticator (`auth.plugin`).
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Uses `presence` instead of the configured store (`presence.plugin`).
    pub fn presence(mut self, presence: Arc<dyn PresenceStore>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Uses `broker` instead of the configured broker (`broker.plugin`).
    pub fn broker(mut self, broker: Arc<dyn RoomBroker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Adds an event set after the configured ones (`events.plugins`).
    pub fn event_set(mut self, set: impl EventHandler) -> Self {
        self.event_sets.push(set.event_set());
        self
    }

    /// Adds hooks after the configured ones.
    pub fn hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks.push(hooks);
        self
    }

    /// Adds a transport after the configured ones; `build` gets its gateway handle.
    pub fn transport(
        mut self,
        build: impl FnOnce(GatewayHandle) -> Arc<dyn Transport> + 'static,
    ) -> Self {
        self.transports.push(Box::new(build));
        self
    }

    /// Builds every part; reports every config problem at once.
    pub fn build(self) -> Result<Node, ConfigError> {
        let NodeBuilder {
            loaded,
            auth,
            presence,
            broker,
            event_sets,
            hooks: extra_hooks,
            transports: extra_transports,
        } = self;
        let mut issues: Vec<ConfigIssue> = Vec::new();
        check_sections(&loaded, &mut issues);
        crate::listen::check(&loaded.config, &mut issues);
        let effective = Mutex::new(BTreeMap::new());
        let metrics = Metrics::new();
        let node_id = registry::random_id();
        let c = &loaded.config;
        let ctx_for =
            |section: String| PluginContext::new(&loaded, section, &effective, &metrics, &node_id);
        // Builds the registry plugin named at `key` with `make`, which gets its context.
        let built = |kind: PluginKind, name: &str, key: &str, issues: &mut Vec<ConfigIssue>| {
            match registry::find(kind, name, key) {
                Ok(p) => Some(p),
                Err(e) => {
                    issues.extend(e.issues);
                    None
                }
            }
        };

        let auth =
            match auth {
                Some(a) => Some(a),
                None => built(PluginKind::Auth, &c.auth.plugin, "auth.plugin", &mut issues)
                    .and_then(|p| match p.factory {
                        Factory::Auth(f) => run(p, ctx_for(p.section()), f, &mut issues),
                        _ => wrong_kind(&mut issues),
                    }),
            };
        let presence = match presence {
            Some(s) => Some(s),
            None => built(
                PluginKind::Presence,
                &c.presence.plugin,
                "presence.plugin",
                &mut issues,
            )
            .and_then(|p| match p.factory {
                Factory::Presence(f) => run(p, ctx_for(p.section()), f, &mut issues),
                _ => wrong_kind(&mut issues),
            }),
        };
        let broker = match broker {
            Some(b) => Some(b),
            None => built(
                PluginKind::Broker,
                &c.broker.plugin,
                "broker.plugin",
                &mut issues,
            )
            .and_then(|p| match p.factory {
                Factory::Broker(f) => run(p, ctx_for(p.section()), f, &mut issues),
                _ => wrong_kind(&mut issues),
            }),
        };
        let mut sets = vec![crate::refresh::events()];
        for (i, name) in c.events.plugins.iter().enumerate() {
            let key = format!("events.plugins[{i}]");
            let set =
                built(PluginKind::Events, name, &key, &mut issues).and_then(|p| match p.factory {
                    Factory::Events(f) => run(p, ctx_for(p.section()), f, &mut issues),
                    _ => wrong_kind(&mut issues),
                });
            sets.extend(set.map(|h| h.event_set()));
        }
        sets.extend(event_sets);
        let events = match EventTable::build(&sets) {
            Ok(t) => Some(t),
            Err(e) => {
                issues.extend(e.issues);
                None
            }
        };
        let mut hooks = Vec::new();
        for p in registry::plugins() {
            if let Factory::Hooks(f) = p.factory {
                hooks.extend(run(p, ctx_for(p.section()), f, &mut issues).flatten());
            }
        }
        hooks.extend(extra_hooks);
        let access = match crate::access::RoomAccess::new(c.rooms.clone(), metrics.clone()) {
            Ok(a) => Some(a),
            Err(e) => {
                issues.extend(e.issues);
                None
            }
        };
        let (Some(auth), Some(presence), Some(broker), Some(events), Some(access)) =
            (auth, presence, broker, events, access)
        else {
            return Err(ConfigError { issues });
        };
        if !issues.is_empty() {
            return Err(ConfigError { issues });
        }

        // Transports last: each is built with the handle of the gateway it serves.
        let transport_issues = RefCell::new(Vec::new());
        let mut builds: Vec<TransportBuild<'_>> = Vec::new();
        for p in registry::plugins() {
            if let Factory::Transport(f) = p.factory {
                let ctx = ctx_for(p.section());
                let issues = &transport_issues;
                builds.push(Box::new(move |handle: GatewayHandle| {
                    let ctx = ctx.with_gateway(handle);
                    run(p, ctx, f, &mut issues.borrow_mut()).flatten()
                }));
            }
        }
        for t in extra_transports {
            builds.push(Box::new(move |handle: GatewayHandle| Some(t(handle))));
        }
        let gateway = Gateway::assemble(
            Parts {
                config: Arc::new(loaded.config.clone()),
                node_id: Arc::from(node_id.as_str()),
                auth,
                presence,
                broker,
                events,
                hooks,
                metrics: metrics.clone(),
                access,
            },
            builds,
        );
        let transport_issues = transport_issues.into_inner();
        if !transport_issues.is_empty() {
            return Err(ConfigError {
                issues: transport_issues,
            });
        }
        let mut eff = serde_json::to_value(&loaded.config).unwrap_or_default();
        for (path, value) in effective.into_inner() {
            set_path(&mut eff, &path, value);
        }
        redact(&mut eff);
        Ok(Node {
            gateway,
            effective: eff,
            loaded,
        })
    }
}

/// Runs a registry plugin's factory; a failure, or a plugin that reads its section without
/// declaring its config type, is a config issue.
fn run<T>(
    p: &'static registry::Plugin,
    ctx: PluginContext<'_>,
    f: registry::FactoryFn<T>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    let result = f(&ctx);
    if ctx.read_own_section() && p.defaults.is_none() {
        issues.push(ConfigIssue {
            key: p.section(),
            reason: format!(
                "the {} plugin `{}` reads this section but does not declare its config type \
                 (its registration needs `.with_config(config_defaults::<ItsConfig>)`)",
                p.kind().describe(),
                p.name
            ),
            origin: None,
        });
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            issues.extend(plugin_error(&p.section(), e).issues);
            None
        }
    }
}

fn wrong_kind<T>(issues: &mut Vec<ConfigIssue>) -> Option<T> {
    issues.push(ConfigIssue {
        key: String::new(),
        reason: "internal error: plugin registered under the wrong kind".to_owned(),
        origin: None,
    });
    None
}

impl Node {
    /// Builds every configured plugin; reports every config problem at once.
    pub fn build(loaded: LoadedConfig) -> Result<Node, ConfigError> {
        Node::builder(loaded).build()
    }

    /// A builder that starts from `loaded` and takes parts made in code.
    pub fn builder(loaded: LoadedConfig) -> NodeBuilder {
        NodeBuilder {
            loaded,
            auth: None,
            presence: None,
            broker: None,
            event_sets: Vec::new(),
            hooks: Vec::new(),
            transports: Vec::new(),
        }
    }

    /// The gateway, through which Rust code publishes.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The effective config with every plugin's defaults, secrets redacted.
    pub fn effective_config(&self) -> &serde_json::Value {
        &self.effective
    }

    /// The node's events with their schemas, for `switchboard schema`.
    pub fn catalog(&self) -> crate::schema::Catalog {
        crate::schema::Catalog::new(
            self.gateway.events(),
            self.gateway.config(),
            &self.effective,
        )
    }

    /// The loaded config.
    pub fn loaded(&self) -> &LoadedConfig {
        &self.loaded
    }

    /// The axum app: every transport, the HTTP API, static files and CORS.
    ///
    /// With `server.internal_listen` set, the operator routes are not in it (see
    /// [`Node::internal_router`]); the public app answers them with a JSON 404.
    ///
    /// [`Node::serve`] is the way to serve it. Served some other way, call
    /// `.with_state(())` once first (axum otherwise rebuilds the route table per
    /// connection), and serve a [`crate::net::SharedListener`] with
    /// `into_make_service_with_connect_info::<PeerSocket>()` to keep the native transport's
    /// direct writes; without a [`PeerSocket`](crate::net::PeerSocket) it queues every
    /// frame for the socket's task. Every call serves the same transports.
    ///
    /// The app sits behind CORS as the router's fallback: routes merged into the returned
    /// router are answered before it (without CORS); a router with a fallback of its own
    /// cannot be merged into it.
    pub fn router(&self) -> Router {
        Router::new().fallback_service(self.app())
    }

    /// What [`Node::router`] serves, without the router around it: [`Node::serve`] serves
    /// this directly, sparing each request a second route lookup and boxed future.
    fn app(&self) -> crate::cors::Gated<Router> {
        let cfg = self.gateway.config();
        let mut app = if cfg.server.internal_listen.is_some() {
            crate::listen::public_stand_in()
        } else {
            self.operator_routes()
        };
        for t in self.gateway.transports() {
            app = app.merge(t.router());
        }
        if let Some(dir) = &cfg.server.static_dir {
            app = app.fallback_service(tower_http::services::ServeDir::new(dir));
        }
        with_cors(app, &cfg.server.cors_origins)
    }

    /// The internal listener's app when `server.internal_listen` is set: the operator
    /// routes and `/healthz`.
    pub fn internal_router(&self) -> Option<Router> {
        self.internal_app()
            .map(|app| Router::new().fallback_service(app))
    }

    /// What [`Node::internal_router`] serves, without the router around it.
    fn internal_app(&self) -> Option<crate::cors::Gated<Router>> {
        let cfg = self.gateway.config();
        cfg.server.internal_listen?;
        Some(with_cors(self.operator_routes(), &cfg.server.cors_origins))
    }

    /// The routes for operators and backends (`/api/*`, `/metrics`, `/readyz`, `/admin/`;
    /// see [`crate::listen::INTERNAL_ONLY`]) and `/healthz`.
    fn operator_routes(&self) -> Router {
        crate::api::router(self.gateway.clone())
    }

    /// Serves on `listener` (https and wss with `server.tls.*`) and on
    /// `server.internal_listen` when set, until `shutdown` resolves; then closes every
    /// socket cleanly and stops both listeners.
    ///
    /// On a plain (not TLS) listener that serves the API, a plain `POST /api/v1/emit` is
    /// read and answered off the connection, without hyper, as the router would answer it;
    /// [`Node::router`] served some other way answers it through the router.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let cfg = self.gateway.config();
        let listeners = crate::listen::Listeners::prepare(listener, cfg).await?;
        self.gateway.start().await;
        let serving = listeners.serve(
            self.app(),
            self.internal_app(),
            cfg,
            self.gateway.metrics(),
            Some(&self.gateway),
        )?;
        shutdown.await;
        tracing::info!("shutting down: closing sockets");
        self.gateway.close_transports().await;
        serving.stop(cfg.server.shutdown_timeout.get()).await?;
        self.gateway.shutdown().await;
        Ok(())
    }
}

fn plugin_error(section: &str, e: BoxError) -> ConfigError {
    match e.downcast::<ConfigError>() {
        Ok(c) => *c,
        Err(other) => ConfigError::new(section, other.to_string()),
    }
}

/// Every key below a plugin section must name a plugin of that kind.
fn check_sections(loaded: &LoadedConfig, issues: &mut Vec<ConfigIssue>) {
    let c = &loaded.config;
    let groups: [(PluginKind, &Sections, &[&str]); 6] = [
        (PluginKind::Transport, &c.transports, &[]),
        (
            PluginKind::Auth,
            &c.auth.sections,
            &["plugin", "allow_query_user_id", "refresh_notice"],
        ),
        (
            PluginKind::Presence,
            &c.presence.sections,
            &["plugin", "node_ttl"],
        ),
        (PluginKind::Broker, &c.broker.sections, &["plugin"]),
        (PluginKind::Events, &c.events.sections, &["plugins"]),
        (PluginKind::Hooks, &c.hooks, &[]),
    ];
    for (kind, sections, own) in groups {
        let names = registry::names(kind);
        for key in sections.keys() {
            if !names.contains(&key.as_str()) {
                let mut known: Vec<&str> = own.to_vec();
                known.extend(names.iter().copied());
                issues.push(ConfigIssue {
                    key: format!("{}.{key}", kind.section()),
                    reason: format!("unknown key (known keys: {})", known.join(", ")),
                    origin: None,
                });
            }
        }
    }
}

fn set_path(root: &mut serde_json::Value, path: &str, value: serde_json::Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = serde_json::Value::Object(Default::default());
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return;
        }
        cur = map
            .entry((*part).to_owned())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
}

/// `app` behind CORS, applied once around the whole app: a layer on a router wraps each
/// route on its own, and each request would clone every wrapper of its route.
pub(crate) fn with_cors(app: Router, origins: &[String]) -> crate::cors::Gated<Router> {
    use tower::Layer;
    crate::cors::layer(origins).layer(app.with_state(()))
}
