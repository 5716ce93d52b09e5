//! Running a node as a program: logging, signals and the serve loop, shared by the
//! `switchboard` binary and by binaries that link their own plugins.

use std::process::ExitCode;

use switchboard_core::config::LogFormat;
use switchboard_core::{Config, ConfigError, LoadedConfig, Node};

/// Sets up logging to stderr from `log.format` and `log.level`; `RUST_LOG` wins when set.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Prints every config problem to stderr, naming `program`; returns exit status 2.
pub fn config_failure(program: &str, e: &ConfigError) -> ExitCode {
    eprintln!("{program}: invalid configuration:");
    for issue in &e.issues {
        eprintln!("  {issue}");
    }
    ExitCode::from(2)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Logs, builds every configured plugin, binds `server.listen` and serves until SIGINT or
/// SIGTERM, then closes every socket cleanly. Returns the process exit status.
pub fn serve(program: &str, loaded: LoadedConfig) -> ExitCode {
    init_logging(&loaded.config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match Node::build(loaded) {
            Ok(n) => n,
            Err(e) => return config_failure(program, &e),
        };
        let addr = node.gateway().config().server.listen;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind server.listen");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener
            .local_addr()
            .map_or_else(|_| addr.to_string(), |a| a.to_string());
        tracing::info!(listen = %bound, "{program} serving");
        match node.serve(listener, shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
