//! `switchboard-polls`: a gateway binary that links a custom plugin next to the built-ins.
//!
//! It is the `switchboard` binary's `serve` in a few lines, plus the `polls` event set from
//! this crate. Run it from the repository root:
//!
//! ```text
//! $ cargo run -p switchboard-example-polls -- --config examples/custom-plugin/switchboard.toml
//! INFO switchboard_polls: event plugins compiled in: conversation, polls, session, typing
//! INFO switchboard_polls: switchboard-polls serving listen=127.0.0.1:3000
//! ```
//!
//! `switchboard-polls plugins` lists the registry, to check the plugin is linked in.

use std::path::PathBuf;
use std::process::ExitCode;

use switchboard::registry::{self, PluginKind};
use switchboard::{ConfigError, LoadedConfig, Node, Overrides};
// ANCHOR: link
// Naming the plugin crate keeps it in the binary: a crate nothing refers to may be left
// out by the linker, and its `register_plugin!` registration with it.
use switchboard_example_polls as polls;
// ANCHOR_END: link

const USAGE: &str = "usage: switchboard-polls [--config PATH] [--listen ADDR] | plugins";

fn main() -> ExitCode {
    let mut file: Option<PathBuf> = None;
    let mut overrides = Overrides::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--config" | "-c", Some(path)) => file = Some(PathBuf::from(path)),
            ("--listen", Some(addr)) => overrides.listen = Some(addr),
            ("plugins", None) => {
                for p in registry::plugins() {
                    println!(
                        "{:<14} {:<10} {}",
                        p.kind().describe(),
                        p.name,
                        p.description
                    );
                }
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // ANCHOR: serve
    let loaded = match LoadedConfig::load(file.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => return config_failure(&e),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&loaded.config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!(
        "event plugins compiled in: {}",
        registry::names(PluginKind::Events).join(", ")
    );
    if !registry::names(PluginKind::Events).contains(&polls::NAME) {
        tracing::error!("the polls plugin is not linked in");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-polls: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match Node::build(loaded) {
            Ok(node) => node,
            Err(e) => return config_failure(&e),
        };
        let addr = node.gateway().config().server.listen;
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind server.listen");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(listen = %addr, "switchboard-polls serving");
        match node.serve(listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
    // ANCHOR_END: serve
}

/// Resolves on SIGINT or SIGTERM; the node then closes every socket cleanly.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("switchboard-polls: invalid configuration:");
    for issue in &e.issues {
        eprintln!("  {issue}");
    }
    ExitCode::from(2)
}
