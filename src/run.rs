//! Running a node as a program: logging, signals and the serve loop, shared by the
//! `switchboard` binary and by binaries that link their own plugins.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use switchboard_core::config::{ConfigIssue, LogFormat};
use switchboard_core::{Config, ConfigError, LoadedConfig, Node};

/// Whether log lines get ANSI colours: only when stderr is a terminal and `NO_COLOR` is
/// unset or empty (<https://no-color.org>).
pub fn colour_logs() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Sets up logging to stderr from `log.format` and `log.level`; `RUST_LOG` wins when set.
pub fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
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

/// Builds every configured plugin; the problems `issues` already holds (from loading) and
/// the plugins' own are reported together, each with its origin where one is known.
pub fn build_node(loaded: LoadedConfig, mut issues: Vec<ConfigIssue>) -> Result<Node, ConfigError> {
    let layers = loaded.clone();
    match Node::build(loaded) {
        Ok(node) if issues.is_empty() => Ok(node),
        Ok(_) => Err(ConfigError { issues }),
        Err(e) => {
            issues.extend(e.issues.into_iter().map(|mut issue| {
                if issue.origin.is_none() && !issue.key.is_empty() {
                    issue.origin = layers.origin_of(&issue.key);
                }
                issue
            }));
            Err(ConfigError { issues })
        }
    }
}

/// Prints the events `node` declares as a `format` document on stdout (`schema`).
pub fn print_schema(node: &Node, format: switchboard_core::schema::Format) -> ExitCode {
    print!("{}", node.catalog().render(format));
    ExitCode::SUCCESS
}

/// Logs, builds every configured plugin, binds `server.listen` and serves until SIGINT or
/// SIGTERM, then closes every socket cleanly. Returns the process exit status.
pub fn serve(program: &str, loaded: LoadedConfig) -> ExitCode {
    serve_with(program, loaded, Vec::new(), |_, _| {})
}

/// Like [`serve`], reporting `issues` (found while loading) with the plugins' problems,
/// and calling `on_bound` with the node and the address it bound before serving.
pub fn serve_with(
    program: &str,
    loaded: LoadedConfig,
    issues: Vec<ConfigIssue>,
    on_bound: impl FnOnce(&Node, SocketAddr) + Send,
) -> ExitCode {
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
        let node = match build_node(loaded, issues) {
            Ok(n) => n,
            Err(e) => return config_failure(program, &e),
        };
        for warning in node.loaded().warnings() {
            tracing::warn!("{warning}");
        }
        let addr = node.gateway().config().server.listen;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind server.listen");
                return ExitCode::FAILURE;
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        on_bound(&node, bound);
        {
            let gw = node.gateway();
            let c = gw.config();
            tracing::info!(
                listen = %bound,
                node = %gw.node_id(),
                transports = %gw.transport_names().join(","),
                auth = %c.auth.plugin,
                presence = %c.presence.plugin,
                broker = %c.broker.plugin,
                events = %c.events.plugins.join(","),
                lua_scripts = %lua_scripts(c),
                recovery = c.recovery.enabled,
                admin = c.admin.enabled,
                version = %env!("CARGO_PKG_VERSION"),
                "{program} serving"
            );
        }
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

/// The Lua scripts the config names (`hooks.lua.scripts`), for the start-up line.
fn lua_scripts(c: &switchboard_core::Config) -> String {
    c.hooks
        .get("lua")
        .and_then(|lua| lua.as_dict())
        .and_then(|lua| lua.get("scripts"))
        .and_then(|s| s.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
