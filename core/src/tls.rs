//! TLS on the public listener (`server.tls.*`): the certificate chain and key, read from PEM
//! files and swapped in place when the files change.
//!
//! One rustls server config lives for the whole run; its certificate resolver hands every
//! new handshake the pair loaded last. A watcher re-reads both files every
//! `server.tls.reload_interval` (and on SIGHUP): when their content changed and the new
//! pair loads, the next handshake gets it; connections already open keep theirs. A pair
//! that does not load (a bad PEM, a key that does not match, a file half written) keeps the
//! previous certificate and logs a warning, and is tried again once either file changes.
//!
//! [`TlsListener`] does the handshakes: each in its own task, bounded by
//! `limits.handshake_timeout`, so one slow client never holds up the accepts of others.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, ConfigIssue};
use crate::metrics::Metrics;
use crate::units::Dur;

const CERT_KEY: &str = "server.tls.cert_file";
const KEY_KEY: &str = "server.tls.key_file";

/// `server.tls.*`: the PEM files that turn the public listener into https and wss.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: Option<PathBuf>,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How often both files are checked for a new certificate.
    pub reload_interval: Dur,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            reload_interval: Dur::secs(1),
        }
    }
}

impl TlsConfig {
    /// The two files, when TLS is configured; an error when only one of them is set.
    fn files(&self) -> Result<Option<(&Path, &Path)>, ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (Some(_), None) => Err(ConfigError::new(
                KEY_KEY,
                format!("missing: {CERT_KEY} is set, and TLS needs both files"),
            )),
            (None, Some(_)) => Err(ConfigError::new(
                CERT_KEY,
                format!("missing: {KEY_KEY} is set, and TLS needs both files"),
            )),
        }
    }
}

/// Checks `server.tls.*` the way serving would load it: every problem, naming its key.
pub(crate) fn check(cfg: &TlsConfig) -> Vec<ConfigIssue> {
    match Tls::load(cfg) {
        Ok(_) => Vec::new(),
        Err(e) => e.issues,
    }
}

/// The loaded certificate and the files it came from.
#[derive(Debug)]
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    resolver: Arc<Resolver>,
    server_config: Arc<rustls::ServerConfig>,
    /// The files' content at the last load attempt, to notice a change.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

/// What [`Tls::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Neither file changed since the last attempt.
    Unchanged,
    /// New handshakes now get the new certificate.
    Reloaded,
    /// A file changed but the pair does not load; the previous certificate stays.
    Failed(String),
}

impl Tls {
    /// Reads and checks both files; `None` when `server.tls` is not configured.
    pub fn load(cfg: &TlsConfig) -> Result<Option<Tls>, ConfigError> {
        let Some((cert_file, key_file)) = cfg.files()? else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
        let key = certified_key(&cert_pem, &key_pem, cert_file, key_file, &provider)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(CERT_KEY, format!("TLS setup failed: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // axum serves HTTP/1.1 only; WebSocket upgrades need it too.
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            resolver,
            server_config: Arc::new(server_config),
            seen: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// The certificate chain's file.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// An acceptor whose handshakes always get the certificate loaded last.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config.clone())
    }

    /// Re-reads both files and, when their content changed and loads, swaps the certificate.
    pub fn reload(&self) -> Reload {
        let (cert_pem, key_pem) = match read_pair(&self.cert_file, &self.key_file) {
            Ok(pair) => pair,
            Err(e) => return Reload::Failed(e.to_string()),
        };
        {
            let mut seen = self.seen.lock();
            if seen.0 == cert_pem && seen.1 == key_pem {
                return Reload::Unchanged;
            }
            *seen = (cert_pem.clone(), key_pem.clone());
        }
        let provider = self.server_config.crypto_provider();
        match certified_key(
            &cert_pem,
            &key_pem,
            &self.cert_file,
            &self.key_file,
            provider,
        ) {
            Ok(key) => {
                *self.resolver.0.write() = Arc::new(key);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e.to_string()),
        }
    }

    /// Reloads every `interval` and on SIGHUP, counting and logging what happened, until
    /// the returned guard is dropped.
    pub fn watch(self: Arc<Self>, interval: Duration, metrics: Metrics) -> AbortOnDrop {
        // Listen for SIGHUP before returning, so that one sent once serving starts is ours.
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the TLS certificate reloads only on file change");
            })
            .ok();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_failure: Option<String> = None;
            loop {
                #[cfg(unix)]
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup_recv = std::future::pending::<Option<()>>();
                let by = tokio::select! {
                    _ = tick.tick() => "file check",
                    _ = hup_recv => "SIGHUP",
                };
                match self.reload() {
                    Reload::Unchanged => {}
                    Reload::Reloaded => {
                        last_failure = None;
                        tracing::info!(
                            cert_file = %self.cert_file.display(),
                            by,
                            "TLS certificate reloaded: new connections get it"
                        );
                    }
                    // A file that stays unreadable fails every check: say so once.
                    Reload::Failed(reason) if last_failure.as_ref() == Some(&reason) => {}
                    Reload::Failed(reason) => {
                        metrics.error("tls_reload");
                        tracing::warn!(%reason, by, "TLS certificate not reloaded; still serving the previous one");
                        last_failure = Some(reason);
                    }
                }
            }
        });
        AbortOnDrop(task)
    }
}

/// Reads both files, naming the key of the one that cannot be read.
fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), ConfigError> {
    let read = |key: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
    };
    let cert = read(CERT_KEY, cert_file);
    let key = read(KEY_KEY, key_file);
    match (cert, key) {
        (Ok(c), Ok(k)) => Ok((c, k)),
        (c, k) => Err(ConfigError {
            issues: [c.err(), k.err()]
                .into_iter()
                .flatten()
                .flat_map(|e| e.issues)
                .collect(),
        }),
    }
}

/// Parses a PEM chain and key into a pair rustls can serve, checking that they match.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConfigError> {
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(cert_pem).collect();
    let chain = match chain {
        Ok(c) if c.is_empty() => {
            return Err(ConfigError::new(
                CERT_KEY,
                format!("no PEM certificate in {}", cert_file.display()),
            ));
        }
        Ok(c) => c,
        Err(e) => {
            return Err(ConfigError::new(
                CERT_KEY,
                format!(
                    "{} is not a PEM certificate chain: {e}",
                    cert_file.display()
                ),
            ));
        }
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
            }
            other => format!("not a PEM private key: {other}"),
        };
        ConfigError::new(KEY_KEY, format!("{why} in {}", key_file.display()))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::new(
            KEY_KEY,
            format!(
                "{} is not the key of the certificate in {}",
                key_file.display(),
                cert_file.display()
            ),
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            ConfigError::new(
                CERT_KEY,
                format!("{}: not a usable certificate: {e}", cert_file.display()),
            )
        }
        other => ConfigError::new(
            KEY_KEY,
            format!("{}: not a usable key: {other}", key_file.display()),
        ),
    })
}

/// Hands every handshake the certificate loaded last.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener whose connections come out with their TLS handshake done.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    /// Accepts on `listener` and shakes hands with `acceptor`, each handshake in its own task
    /// and given at most `handshake_timeout`.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
        metrics: Metrics,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(256);
        let accepting = tokio::spawn(accept_loop(
            listener,
            acceptor,
            handshake_timeout,
            metrics,
            tx,
        ));
        Ok(TlsListener {
            ready,
            local,
            _accepting: AbortOnDrop(accepting),
        })
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    metrics: Metrics,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        // axum's own accept loop: retries, and backs off when out of file descriptors.
        let (tcp, peer) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let shake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
            let outcome = tokio::select! {
                r = shake => r,
                () = tx.closed() => return,
            };
            match outcome {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics.error("tls_handshake");
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.error("tls_handshake");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = crate::tap::Tapped<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some((tls, addr)) => (crate::tap::Tapped::new(tls), addr),
            // The accept loop only ends once this listener is gone; never reached.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
