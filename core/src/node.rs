//! A node: builds every configured plugin into a [`Gateway`] and serves it on one port.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use http::{HeaderValue, Method, header};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::broker::LocalHub;
use crate::config::{ConfigError, ConfigIssue, LoadedConfig, Sections, redact};
use crate::metrics::Metrics;
use crate::registry::{self, Factory, PluginContext, PluginKind};
use crate::runtime::{Gateway, Parts};
use crate::transport::Transport;

/// A fully wired node, ready to serve.
pub struct Node {
    gateway: Gateway,
    transports: Vec<Arc<dyn Transport>>,
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

impl Node {
    /// Builds every configured plugin; reports every config problem at once.
    pub fn build(loaded: LoadedConfig) -> Result<Node, ConfigError> {
        let mut issues: Vec<ConfigIssue> = Vec::new();
        check_sections(&loaded, &mut issues);
        crate::listen::check(&loaded.config, &mut issues);
        let effective = Mutex::new(BTreeMap::new());
        let metrics = Metrics::new();
        let mut collect = |e: ConfigError| issues.extend(e.issues);

        // Transports first: the broker delivers through them.
        let empty_hub = LocalHub::default();
        let mut transports = Vec::new();
        for p in registry::plugins() {
            if let Factory::Transport(f) = p.factory {
                let ctx =
                    PluginContext::new(&loaded, p.section(), &effective, &metrics, &empty_hub);
                match f(&ctx) {
                    Ok(Some(t)) => transports.push(t),
                    Ok(None) => {}
                    Err(e) => collect(plugin_error(&p.section(), e)),
                }
            }
        }
        let hub = LocalHub::new(transports.clone());
        let ctx_for =
            |section: String| PluginContext::new(&loaded, section, &effective, &metrics, &hub);
        let c = &loaded.config;

        let auth =
            pick(PluginKind::Auth, &c.auth.plugin, "auth.plugin").and_then(|p| match p.factory {
                Factory::Auth(f) => {
                    f(&ctx_for(p.section())).map_err(|e| plugin_error(&p.section(), e))
                }
                _ => unreachable_kind(),
            });
        let presence =
            pick(PluginKind::Presence, &c.presence.plugin, "presence.plugin").and_then(|p| match p
                .factory
            {
                Factory::Presence(f) => {
                    f(&ctx_for(p.section())).map_err(|e| plugin_error(&p.section(), e))
                }
                _ => unreachable_kind(),
            });
        let broker = pick(PluginKind::Broker, &c.broker.plugin, "broker.plugin").and_then(|p| {
            match p.factory {
                Factory::Broker(f) => {
                    f(&ctx_for(p.section())).map_err(|e| plugin_error(&p.section(), e))
                }
                _ => unreachable_kind(),
            }
        });
        let mut handlers = Vec::new();
        for (i, name) in c.events.plugins.iter().enumerate() {
            let built = pick(PluginKind::Events, name, &format!("events.plugins[{i}]")).and_then(
                |p| match p.factory {
                    Factory::Events(f) => {
                        f(&ctx_for(p.section())).map_err(|e| plugin_error(&p.section(), e))
                    }
                    _ => unreachable_kind(),
                },
            );
            match built {
                Ok(h) => handlers.push(h),
                Err(e) => collect(e),
            }
        }
        let mut hooks = Vec::new();
        for p in registry::plugins() {
            if let Factory::Hooks(f) = p.factory {
                match f(&ctx_for(p.section())) {
                    Ok(Some(h)) => hooks.push(h),
                    Ok(None) => {}
                    Err(e) => collect(plugin_error(&p.section(), e)),
                }
            }
        }
        let (auth, presence, broker) = match (auth, presence, broker) {
            (Ok(a), Ok(p), Ok(b)) if issues.is_empty() => (a, p, b),
            (a, p, b) => {
                for r in [a.err(), p.err(), b.err()].into_iter().flatten() {
                    issues.extend(r.issues);
                }
                return Err(ConfigError { issues });
            }
        };
        let access = crate::access::RoomAccess::new(c.rooms.clone(), metrics.clone())?;
        let mut eff = serde_json::to_value(&loaded.config).unwrap_or_default();
        for (path, value) in effective.into_inner() {
            set_path(&mut eff, &path, value);
        }
        redact(&mut eff);
        let gateway = Gateway::new(Parts {
            config: Arc::new(loaded.config.clone()),
            auth,
            presence,
            broker,
            handlers,
            hooks,
            hub,
            metrics,
            access,
        });
        Ok(Node {
            gateway,
            transports,
            effective: eff,
            loaded,
        })
    }

    /// The gateway, through which Rust code publishes.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The effective config with every plugin's defaults, secrets redacted.
    pub fn effective_config(&self) -> &serde_json::Value {
        &self.effective
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
    /// frame for the socket's task.
    pub fn router(&self) -> Router {
        let cfg = self.gateway.config();
        let mut app = if cfg.server.internal_listen.is_some() {
            crate::listen::public_stand_in()
        } else {
            self.operator_routes()
        };
        for t in &self.transports {
            app = app.merge(t.router(self.gateway.clone()));
        }
        if let Some(dir) = &cfg.server.static_dir {
            app = app.fallback_service(tower_http::services::ServeDir::new(dir));
        }
        app.layer(cors_layer(&cfg.server.cors_origins))
    }

    /// The internal listener's app when `server.internal_listen` is set: the operator
    /// routes and `/healthz`.
    pub fn internal_router(&self) -> Option<Router> {
        let cfg = self.gateway.config();
        cfg.server.internal_listen?;
        Some(
            self.operator_routes()
                .layer(cors_layer(&cfg.server.cors_origins)),
        )
    }

    /// The routes for operators and backends (`/api/*`, `/metrics`, `/readyz`, `/admin/`;
    /// see [`crate::listen::INTERNAL_ONLY`]) and `/healthz`.
    fn operator_routes(&self) -> Router {
        crate::api::router(self.gateway.clone())
    }

    /// Serves on `listener` (https and wss with `server.tls.*`) and on
    /// `server.internal_listen` when set, until `shutdown` resolves; then closes every
    /// socket cleanly and stops both listeners.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let cfg = self.gateway.config();
        let listeners = crate::listen::Listeners::prepare(listener, cfg).await?;
        self.gateway.start().await;
        let serving = listeners.serve(
            self.router(),
            self.internal_router(),
            cfg,
            self.gateway.metrics(),
        )?;
        shutdown.await;
        tracing::info!("shutting down: closing sockets");
        for t in &self.transports {
            t.shutdown().await;
        }
        serving.stop(cfg.server.shutdown_timeout.get()).await?;
        self.gateway.shutdown().await;
        Ok(())
    }
}

fn unreachable_kind<T>() -> Result<T, ConfigError> {
    Err(ConfigError::new(
        "",
        "internal error: plugin registered under the wrong kind",
    ))
}

fn pick(kind: PluginKind, name: &str, key: &str) -> Result<&'static registry::Plugin, ConfigError> {
    registry::find(kind, name, key)
}

fn plugin_error(section: &str, e: registry::BoxError) -> ConfigError {
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

fn cors_layer(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    if origins.iter().any(|o| o == "*") {
        return layer
            .allow_origin(AllowOrigin::mirror_request())
            .allow_credentials(true);
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer.allow_origin(list).allow_credentials(true)
}
