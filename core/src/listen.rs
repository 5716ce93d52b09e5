//! The node's listeners: the public one (`server.listen`, plain or TLS) and the optional
//! internal one (`server.internal_listen`), served side by side and stopped together.
//!
//! With `server.internal_listen` set, the operator routes (`/api/*`, `/metrics`, `/readyz`
//! and `/admin/`) move to the internal listener, which serves plain HTTP; the public one
//! answers them with the API's JSON 404 and keeps `/healthz`, for load balancers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::routing::{any, get};
use axum::{Router, ServiceExt};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt as _};

use crate::api::ApiError;
use crate::api::{Direct, Next};
use crate::config::{Config, ConfigIssue};
use crate::cors::Gated;
use crate::metrics::Metrics;
use crate::net::{PeerSocket, SharedListener, SharedStream};
use crate::runtime::Gateway;
use crate::tls::{AbortOnDrop, Tls, TlsListener};

/// Path prefixes that only the internal listener serves once `server.internal_listen` is set.
pub const INTERNAL_ONLY: &[&str] = &["/api", "/metrics", "/readyz", "/admin"];

/// Checks `server.tls.*` and `server.internal_listen` before anything is bound.
pub(crate) fn check(config: &Config, issues: &mut Vec<ConfigIssue>) {
    issues.extend(crate::tls::check(&config.server.tls));
    if let Some(internal) = config.server.internal_listen
        && internal == config.server.listen
        && internal.port() != 0
    {
        issues.push(ConfigIssue {
            key: "server.internal_listen".to_owned(),
            reason: format!(
                "{internal} is server.listen too; give the internal listener its own port"
            ),
            origin: None,
        });
    }
}

/// The public listener's stand-in for the operator routes: `/healthz`, and a JSON 404 for
/// every path under [`INTERNAL_ONLY`].
pub(crate) fn public_stand_in() -> Router {
    let mut router = Router::new().route("/healthz", get(crate::api::healthz));
    for prefix in INTERNAL_ONLY {
        router = router
            .route(prefix, any(elsewhere))
            .route(&format!("{prefix}/"), any(elsewhere))
            .route(&format!("{prefix}/{{*rest}}"), any(elsewhere));
    }
    router
}

async fn elsewhere() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

/// Both listeners, bound and ready, with the TLS certificate loaded.
pub(crate) struct Listeners {
    public: TcpListener,
    internal: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
}

impl Listeners {
    /// Loads the TLS certificate and binds `server.internal_listen`; an error names the key.
    pub(crate) async fn prepare(public: TcpListener, config: &Config) -> io::Result<Self> {
        let tls = Tls::load(&config.server.tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
            .map(Arc::new);
        if let (Some(tls), Ok(addr)) = (&tls, public.local_addr()) {
            tracing::info!(listen = %addr, cert_file = %tls.cert_file().display(), "serving https and wss");
        }
        let internal = match config.server.internal_listen {
            None => None,
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot bind server.internal_listen {addr}: {e}"),
                    )
                })?;
                let bound = l.local_addr().map_or(addr, |a| a);
                tracing::info!(internal_listen = %bound, "internal listener (plain http): /api, /metrics, /readyz, /admin");
                Some(l)
            }
        };
        Ok(Listeners {
            public,
            internal,
            tls,
        })
    }

    /// The internal listener's address, when there is one.
    #[cfg(test)]
    pub(crate) fn internal_addr(&self) -> Option<std::net::SocketAddr> {
        self.internal.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts serving `public` (and `internal`, when bound) until [`Serving::stop`].
    pub(crate) fn serve(
        self,
        public: Gated<Router>,
        internal: Option<Gated<Router>>,
        config: &Config,
        metrics: &Metrics,
        api: Option<&Gateway>,
    ) -> io::Result<Serving> {
        // The plain listener serving the API answers `api`'s plain emits itself.
        let direct = |app: &Gated<Router>| {
            api.map(|gw| Arc::new(Direct::new(gw.clone(), app.fixed().clone())))
        };
        let (stop, stopped) = watch::channel(false);
        let signal = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let mut servers = Vec::new();
        let mut watcher = None;
        match self.tls {
            None => {
                let has_api = config.server.internal_listen.is_none();
                let direct = if has_api { direct(&public) } else { None };
                let listener = SharedListener::new(self.public);
                servers.push(tokio::spawn(serve_plain(
                    listener,
                    public,
                    direct,
                    signal(),
                )));
            }
            Some(tls) => {
                // A `PeerSocket` without a direct socket: bytes must go through the TLS
                // stream, so the native transport queues every frame for the socket's task.
                let listener = TlsListener::new(
                    self.public,
                    tls.acceptor(),
                    config.limits.handshake_timeout.get(),
                    metrics.clone(),
                )?;
                let app = with_peer(public);
                let server = axum::serve(listener, app).with_graceful_shutdown(signal());
                servers.push(spawn(server));
                watcher = Some(tls.watch(config.server.tls.reload_interval.get(), metrics.clone()));
            }
        }
        if let (Some(listener), Some(app)) = (self.internal, internal) {
            let direct = direct(&app);
            let listener = SharedListener::new(listener);
            servers.push(tokio::spawn(serve_plain(listener, app, direct, signal())));
        }
        Ok(Serving {
            stop,
            servers,
            _watcher: watcher,
        })
    }
}

/// `app` made per connection with a [`PeerSocket`] in every request's extensions.
fn with_peer(app: Gated<Router>) -> IntoMakeServiceWithConnectInfo<Gated<Router>, PeerSocket> {
    ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info(app)
}

/// Serves `app` on every connection `listener` accepts (each request carrying a
/// [`PeerSocket`] handle to its connection's socket, see `crate::net`), with `direct`
/// answering the plain emits first, until `signal`; then waits for the connections to
/// finish their requests and close.
async fn serve_plain(
    mut listener: SharedListener,
    app: Gated<Router>,
    direct: Option<Arc<Direct>>,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let (open, mut closed) = mpsc::channel::<()>(1);
    let mut signal = std::pin::pin!(signal);
    loop {
        let (io, _) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = &mut signal => break,
        };
        let conn = serve_connection(io, app.clone(), direct.clone(), stopping.clone());
        let open = open.clone();
        tokio::spawn(async move {
            conn.await;
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    let _ = stop.send(true);
    // Every connection's task holds a sender: `None` once the last one has ended.
    let _ = closed.recv().await;
    Ok(())
}

/// Serves one connection: the plain emits it starts with off the socket, then the rest
/// through hyper and `app`, until it closes or `stop` turns true (then once it is idle).
async fn serve_connection(
    mut io: SharedStream,
    app: Gated<Router>,
    direct: Option<Arc<Direct>>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(direct) = direct
        && let Next::Close = direct.serve(&mut io, &mut stop).await
    {
        return;
    }
    let service = axum::Extension(ConnectInfo(io.peer()))
        .layer(app)
        .map_request(|req: http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn spawn<F>(server: F) -> JoinHandle<io::Result<()>>
where
    F: std::future::IntoFuture<Output = io::Result<()>>,
    F::IntoFuture: Future<Output = io::Result<()>> + Send + 'static,
{
    tokio::spawn(server.into_future())
}

/// The running listeners.
pub(crate) struct Serving {
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<io::Result<()>>>,
    _watcher: Option<AbortOnDrop>,
}

impl Serving {
    /// Stops accepting on every listener and waits up to `grace` for their connections.
    pub(crate) async fn stop(self, grace: Duration) -> io::Result<()> {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.servers);
        match tokio::time::timeout(grace, all).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(result) => result?,
                        Err(join) => tracing::warn!(error = %join, "server task failed"),
                    }
                }
            }
            Err(_) => tracing::warn!("connections still open after {grace:?}; exiting anyway"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsConfig;
    use std::net::SocketAddr;

    #[test]
    fn only_one_tls_file_names_the_missing_key() {
        let mut config = Config::default();
        config.server.tls.cert_file = Some("cert.pem".into());
        let mut issues = Vec::new();
        check(&config, &mut issues);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "server.tls.key_file");
        assert!(issues[0].reason.starts_with("missing"), "{issues:?}");

        config.server.tls = TlsConfig {
            key_file: Some("key.pem".into()),
            ..TlsConfig::default()
        };
        let mut issues = Vec::new();
        check(&config, &mut issues);
        assert_eq!(issues[0].key, "server.tls.cert_file");
    }

    #[test]
    fn unreadable_and_bad_pem_files_name_their_key() {
        let dir = std::env::temp_dir().join(format!("switchboard-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let mut config = Config::default();
        config.server.tls.cert_file = Some(cert.clone());
        config.server.tls.key_file = Some(dir.join("absent.pem"));
        let mut issues = Vec::new();
        check(&config, &mut issues);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "server.tls.key_file");
        assert!(issues[0].reason.contains("cannot read"), "{issues:?}");

        let key = dir.join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        config.server.tls.key_file = Some(key);
        let mut issues = Vec::new();
        check(&config, &mut issues);
        assert_eq!(issues[0].key, "server.tls.cert_file", "{issues:?}");
        assert!(
            issues[0].reason.contains("no PEM certificate"),
            "{issues:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_internal_listener_needs_its_own_port() {
        let mut config = Config::default();
        config.server.internal_listen = Some(config.server.listen);
        let mut issues = Vec::new();
        check(&config, &mut issues);
        assert_eq!(issues[0].key, "server.internal_listen", "{issues:?}");
    }

    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, out)
    }

    #[tokio::test]
    async fn operator_routes_answer_only_on_the_internal_listener() {
        use crate::node::with_cors;
        let mut config = Config::default();
        config.server.internal_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let public_addr = public.local_addr().expect("addr");
        let listeners = Listeners::prepare(public, &config).await.expect("prepare");
        let internal_addr = listeners.internal_addr().expect("internal");
        let internal = Router::new()
            .route("/healthz", get(crate::api::healthz))
            .route("/metrics", get(|| async { "metrics" }));
        let serving = listeners
            .serve(
                with_cors(public_stand_in(), &[]),
                Some(with_cors(internal, &[])),
                &config,
                &Metrics::new(),
                None,
            )
            .expect("serve");

        let (status, body) = http_get(public_addr, "/metrics").await;
        assert_eq!(status, 404);
        assert!(body.contains(r#""error":"Not found""#), "{body}");
        for path in ["/api", "/api/v1/emit", "/readyz", "/admin/", "/admin/x/y"] {
            assert_eq!(http_get(public_addr, path).await.0, 404, "{path}");
        }
        assert_eq!(http_get(public_addr, "/healthz").await.0, 200);
        assert_eq!(http_get(internal_addr, "/healthz").await.0, 200);
        let (status, body) = http_get(internal_addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.ends_with("metrics"), "{body}");

        serving.stop(Duration::from_secs(5)).await.expect("stop");
        assert!(
            tokio::net::TcpStream::connect(internal_addr).await.is_err(),
            "the internal listener is closed once stopped"
        );
    }
}
