//! What Switchboard's Redis plugins share (`presence.plugin = "redis"`,
//! `broker.plugin = "redis"`): not a plugin itself.
//!
//! - [`ClientConfig`]: the connection settings each plugin's section has
//!   (`broker.redis.*`, `presence.redis.*`), checked the same way;
//! - [`builder`], [`pool`], [`client`]: fred clients for the shared `redis.*` server. Every
//!   connection reconnects forever with exponential back-off, bounds connecting and every
//!   command by one timeout, replaces a connection whose commands go unanswered longer
//!   than that (a half-open link), and never replays a command that was in flight when its
//!   connection dropped: a replayed `PUBLISH` would deliver twice, a replayed presence
//!   script would answer "not first" for a first connection;
//! - [`PoolWatch`]: whether each pooled connection is up, from fred's own events (fred still
//!   reports a dropped connection as connected for a moment);
//! - [`Health`]: logs a plugin's "Redis unreachable" / "Redis reachable" once per change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::{
    Builder, Client, ClientLike, Config, Error, ErrorKind, EventInterface, Pool, ReconnectPolicy,
};
use fred::types::config::{TlsConnector, UnresponsiveConfig};
use serde::{Deserialize, Serialize};
use switchboard_core::config::{RedisConfig, RedisTlsConfig};
use switchboard_core::{ConfigError, Dur};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// A Redis plugin's connection settings (`broker.redis.*`, `presence.redis.*`); the server
/// itself is the shared `redis.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Connections to Redis (for the broker: to publish on; each room always uses the same one).
    pub pool_size: usize,
    /// How long one Redis command may take before Redis counts as unreachable.
    pub command_timeout: Dur,
    /// Longest wait between reconnection attempts (the backoff starts at 100 ms and doubles).
    pub reconnect_max_delay: Dur,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            pool_size: 2,
            command_timeout: Dur::secs(2),
            reconnect_max_delay: Dur::secs(5),
        }
    }
}

impl ClientConfig {
    /// Checks the values; errors name `{section}.{key}`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.pool_size == 0 {
            return Err(ConfigError::new(
                format!("{section}.pool_size"),
                "must be at least 1",
            ));
        }
        if self.command_timeout.get().is_zero() {
            return Err(ConfigError::new(
                format!("{section}.command_timeout"),
                "must be more than 0s",
            ));
        }
        Ok(())
    }

    /// How the fred connections behave with these settings.
    fn settings(&self, broadcast_capacity: Option<usize>) -> Settings {
        Settings {
            reconnect_max_delay: self.reconnect_max_delay.get(),
            command_timeout: self.command_timeout.get(),
            broadcast_capacity,
        }
    }
}

/// How a plugin's Redis connections behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Longest wait between two reconnection attempts (they start at 100 ms and double).
    pub reconnect_max_delay: Duration,
    /// Limit on connecting and on every command.
    pub command_timeout: Duration,
    /// Capacity of the client's pub/sub message channel; fred's default when `None`.
    pub broadcast_capacity: Option<usize>,
}

/// A fred builder for `url` with `settings`; an error names what is wrong with the URL.
pub fn builder(url: &str, settings: &Settings) -> Result<Builder, Error> {
    builder_with_tls(url, settings, None)
}

/// A fred builder for `url` with `settings`, connecting through `tls` when given (else as
/// the URL's scheme says).
pub fn builder_with_tls(
    url: &str,
    settings: &Settings,
    tls: Option<TlsConnector>,
) -> Result<Builder, Error> {
    let mut config = Config {
        // Keep retrying while Redis is away, rather than failing commands at once.
        fail_fast: false,
        ..Config::from_url(url)?
    };
    if let Some(connector) = tls {
        config.tls = Some(connector.into());
    }
    let max_delay = u32::try_from(settings.reconnect_max_delay.as_millis())
        .unwrap_or(u32::MAX)
        .max(100);
    let timeout = settings.command_timeout;
    let capacity = settings.broadcast_capacity;
    let mut b = Builder::from_config(config);
    b.set_policy(ReconnectPolicy::new_exponential(0, 100, max_delay, 2))
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            // A command in flight when the connection drops fails instead of running twice.
            c.max_command_attempts = 1;
            // A connection that stops answering (a half-open link: a NAT or a load balancer
            // dropped it without a reset) is closed and replaced once a command waited
            // longer than the timeout, instead of hanging there for good.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(timeout),
                interval: (timeout / 4).max(Duration::from_millis(50)),
            };
        })
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            if let Some(capacity) = capacity {
                p.broadcast_channel_capacity = capacity;
            }
        });
    Ok(b)
}

/// A config error at `redis.url` for what fred or the scheme check says about it.
fn url_error(reason: impl Into<String>) -> ConfigError {
    ConfigError::new("redis.url", reason)
}

/// The TLS connector `redis.tls.*` asks for: its CA (else the system's roots, fred's own
/// default for `rediss://`) and its client certificate. `None` when nothing is set.
pub fn tls_connector(tls: &RedisTlsConfig) -> Result<Option<TlsConnector>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    if !tls.is_set() {
        return Ok(None);
    }
    let read_certs = |key: &str, path: &std::path::Path| {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                key,
                format!("{}: no PEM certificate in it", path.display()),
            ));
        }
        Ok(certs)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in read_certs("redis.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    ConfigError::new("redis.tls.ca_file", format!("{}: {e}", path.display()))
                })?;
            }
        }
        None => {
            // The system's roots, as fred's default for `rediss://` (a client certificate
            // alone was set).
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("redis.tls", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs("redis.tls.cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ConfigError::new("redis.tls.key_file", format!("{}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ConfigError::new("redis.tls.key_file", e.to_string()))?
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "redis.tls.key_file",
                "missing: redis.tls.cert_file is set, and a client certificate needs its key",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "redis.tls.cert_file",
                "missing: redis.tls.key_file is set, and a client certificate needs both files",
            ));
        }
    };
    Ok(Some(TlsConnector::from(config)))
}

fn checked_builder(
    redis: &RedisConfig,
    cfg: &ClientConfig,
    broadcast_capacity: Option<usize>,
) -> Result<Builder, ConfigError> {
    redis.check_url().map_err(url_error)?;
    let tls = tls_connector(&redis.tls)?;
    builder_with_tls(&redis.url, &cfg.settings(broadcast_capacity), tls)
        .map_err(|e| url_error(e.details()))
}

/// A pool of `cfg.pool_size` connections to the shared Redis (not connected yet).
pub fn pool(
    redis: &RedisConfig,
    cfg: &ClientConfig,
    broadcast_capacity: Option<usize>,
) -> Result<Pool, ConfigError> {
    checked_builder(redis, cfg, broadcast_capacity)?
        .build_pool(cfg.pool_size)
        .map_err(|e| url_error(e.details()))
}

/// One connection to the shared Redis (not connected yet), such as a subscriber.
pub fn client(
    redis: &RedisConfig,
    cfg: &ClientConfig,
    broadcast_capacity: Option<usize>,
) -> Result<Client, ConfigError> {
    checked_builder(redis, cfg, broadcast_capacity)?
        .build()
        .map_err(|e| url_error(e.details()))
}

/// Whether a fred error is a timeout (as opposed to the connection being down, or Redis
/// refusing the command).
pub fn is_timeout(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Timeout)
}

/// Whether a fred error says Redis answered and refused (ACL rights, wrong type, a script
/// error) rather than being unreachable.
pub fn is_refusal(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Auth | ErrorKind::InvalidCommand | ErrorKind::InvalidArgument
    ) || {
        let d = e.details();
        d.starts_with("NOPERM") || d.starts_with("WRONGTYPE") || d.starts_with("ERR")
    }
}

/// Sends a `PING` on each of `client`'s connections (one per cluster node) and waits up to
/// `timeout`; one that does not answer is replaced (see [`builder`]).
pub async fn ping(client: &Client, timeout: Duration) {
    use fred::prelude::Value;
    if !client.is_connected() {
        return;
    }
    let all = async {
        if client.is_clustered() {
            let pings = client
                .active_connections()
                .into_iter()
                .map(|server| async move {
                    let _ = client.with_cluster_node(server).ping::<Value>(None).await;
                });
            futures_util::future::join_all(pings).await;
        } else {
            let _ = client.ping::<Value>(None).await;
        }
    };
    let _ = tokio::time::timeout(timeout, all).await;
}

/// Whether each connection of a pool is up, from fred's reconnect and error events.
pub struct PoolWatch {
    pool: Pool,
    up: Box<[AtomicBool]>,
}

impl std::fmt::Debug for PoolWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolWatch")
            .field("up", &self.up.len())
            .finish()
    }
}

impl PoolWatch {
    /// Watches `pool`'s connections (all down until their first connect).
    pub fn new(pool: Pool) -> Arc<Self> {
        let n = pool.clients().len();
        Arc::new(PoolWatch {
            pool,
            up: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether connection `i` is up: connected since its last (re)connect, no error since.
    pub fn client_up(&self, i: usize) -> bool {
        self.up.get(i).is_some_and(|u| u.load(Ordering::SeqCst))
            && self
                .pool
                .clients()
                .get(i)
                .is_some_and(ClientLike::is_connected)
    }

    /// Sends a `PING` on every connection and waits up to `timeout` for the answers; a
    /// connection that does not answer is replaced (see [`builder`]), so an idle one is
    /// found out before a command needs it. Errors are the connection events' business.
    pub async fn ping_all(&self, timeout: Duration) {
        let pings = self.pool.clients().iter().map(|c| ping(c, timeout));
        futures_util::future::join_all(pings).await;
    }

    /// Whether any connection is up.
    pub fn any_up(&self) -> bool {
        (0..self.up.len()).any(|i| self.client_up(i))
    }

    /// Whether every connection is up.
    pub fn all_up(&self) -> bool {
        (0..self.up.len()).all(|i| self.client_up(i))
    }

    /// Starts one task per connection that keeps its flag; `on_up(i)` runs after each
    /// (re)connect of connection `i`, before its flag turns up.
    pub fn spawn(
        self: &Arc<Self>,
        on_up: impl Fn(usize) + Send + Sync + 'static,
    ) -> Vec<JoinHandle<()>> {
        let on_up = Arc::new(on_up);
        self.pool
            .clients()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let me = self.clone();
                let on_up = on_up.clone();
                let mut reconnects = c.reconnect_rx();
                let mut errors = c.error_rx();
                tokio::spawn(async move {
                    let Some(flag) = me.up.get(i) else { return };
                    loop {
                        tokio::select! {
                            r = reconnects.recv() => match r {
                                Ok(_) | Err(RecvError::Lagged(_)) => {
                                    on_up(i);
                                    flag.store(true, Ordering::SeqCst);
                                }
                                Err(RecvError::Closed) => break,
                            },
                            r = errors.recv() => match r {
                                Ok(_) | Err(RecvError::Lagged(_)) => flag.store(false, Ordering::SeqCst),
                                Err(RecvError::Closed) => break,
                            },
                        }
                    }
                })
            })
            .collect()
    }
}

/// Logs a plugin's Redis health once per change: "unreachable" when it goes, "reachable"
/// when it comes back. Starts as down, so the first healthy report is logged.
#[derive(Debug)]
pub struct Health {
    plugin: &'static str,
    node: String,
    reported_down: AtomicBool,
    up_note: &'static str,
    down_note: &'static str,
}

impl Health {
    /// Health for `plugin` (`room broker`) on node `node`; the notes say what the node does
    /// while Redis is up and while it is down.
    pub fn new(
        plugin: &'static str,
        node: impl Into<String>,
        up_note: &'static str,
        down_note: &'static str,
    ) -> Self {
        Health {
            plugin,
            node: node.into(),
            reported_down: AtomicBool::new(true),
            up_note,
            down_note,
        }
    }

    /// Reports the current health; logs only a change.
    pub fn report(&self, healthy: bool, why: &str) {
        if healthy {
            if self.reported_down.swap(false, Ordering::SeqCst) {
                tracing::info!(node = %self.node, "{}: Redis reachable; {}", self.plugin, self.up_note);
            }
        } else if !self.reported_down.swap(true, Ordering::SeqCst) {
            tracing::warn!(node = %self.node, reason = why, "{}: Redis unreachable; {}", self.plugin, self.down_note);
        }
    }

    /// Whether the last report was "down".
    pub fn is_down(&self) -> bool {
        self.reported_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            reconnect_max_delay: Duration::from_secs(5),
            command_timeout: Duration::from_millis(750),
            broadcast_capacity: Some(64),
        }
    }

    #[test]
    fn the_builder_carries_the_settings() {
        let b = builder("redis://127.0.0.1:6390/2", &settings()).expect("builder");
        let conn = b.get_connection_config();
        assert_eq!(conn.connection_timeout, Duration::from_millis(750));
        assert_eq!(conn.internal_command_timeout, Duration::from_millis(750));
        assert_eq!(conn.max_command_attempts, 1);
        let perf = b.get_performance_config();
        assert_eq!(perf.default_command_timeout, Duration::from_millis(750));
        assert_eq!(perf.broadcast_channel_capacity, 64);
        let config = b.get_config().expect("config");
        assert!(!config.fail_fast);
    }

    #[test]
    fn a_url_that_does_not_parse_is_an_error() {
        assert!(builder("not a url", &settings()).is_err());
        assert!(builder("redis://", &settings()).is_err());
        let bad = RedisConfig {
            url: "localhost:6379".into(),
            ..RedisConfig::default()
        };
        let e = pool(&bad, &ClientConfig::default(), None).expect_err("no scheme");
        assert!(e.to_string().starts_with("redis.url: "), "{e}");
    }

    #[test]
    fn settings_are_checked_and_name_their_key() {
        let c = ClientConfig {
            pool_size: 0,
            ..ClientConfig::default()
        };
        assert!(
            c.validate("broker.redis")
                .expect_err("no pool")
                .to_string()
                .starts_with("broker.redis.pool_size:")
        );
        let c = ClientConfig {
            command_timeout: Dur::secs(0),
            ..ClientConfig::default()
        };
        assert!(
            c.validate("presence.redis")
                .expect_err("no time")
                .to_string()
                .starts_with("presence.redis.command_timeout:")
        );
        ClientConfig::default()
            .validate("x")
            .expect("the defaults are valid");
        let err = serde_json::from_str::<ClientConfig>(r#"{"pool_sise": 3}"#).expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
