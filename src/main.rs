//! The `switchboard` binary: `serve` (default), `check`, `plugins`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::auth_jwt::{JwtConfig, mint};
use switchboard::config::{LogFormat, Overrides};
use switchboard::registry::{self, PluginKind};
use switchboard::{ConfigError, LoadedConfig, Node};

/// A real-time gateway: Socket.IO with JWT auth, rooms, presence and an HTTP publish API.
#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate the config and print it with every default, secrets redacted.
    Check(ConfigArg),
    /// List the compiled-in plugins, by kind.
    Plugins,
    /// Mint a token signed with the configured HS* secret.
    Token(TokenArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct ConfigArg {
    /// Config file (TOML); default `./switchboard.toml` when present.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Address to bind, overriding `server.listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// The `email` claim.
    #[arg(long)]
    email: Option<String>,
    /// The `role` claim.
    #[arg(long)]
    role: Option<String>,
    /// Lifetime, such as `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// An extra claim `key=value`; a JSON value (`rooms=["session:*"]`) is kept as JSON.
    #[arg(long = "claim", value_name = "KEY=VALUE")]
    claims: Vec<String>,
    #[command(flatten)]
    config: ConfigArg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Plugins) => {
            plugins();
            ExitCode::SUCCESS
        }
        Some(Command::Token(args)) => token(args),
    }
}

fn load(config: &ConfigArg, listen: Option<String>) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::load(config.config.as_deref(), &Overrides { listen })
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("switchboard: invalid configuration:");
    for issue in &e.issues {
        eprintln!("  {issue}");
    }
    ExitCode::from(2)
}

fn init_logging(loaded: &LoadedConfig) {
    use tracing_subscriber::EnvFilter;
    let log = &loaded.config.log;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let loaded = match load(&args.config, args.listen) {
        Ok(l) => l,
        Err(e) => return config_failure(&e),
    };
    init_logging(&loaded);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match Node::build(loaded) {
            Ok(n) => n,
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
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        tracing::info!(listen = %bound, "switchboard serving");
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

async fn shutdown_signal() {
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

fn check(args: ConfigArg) -> ExitCode {
    let loaded = match load(&args, None) {
        Ok(l) => l,
        Err(e) => return config_failure(&e),
    };
    let source = loaded
        .file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults and environment".to_owned());
    let node = match Node::build(loaded) {
        Ok(n) => n,
        Err(e) => return config_failure(&e),
    };
    let mut value = node.effective_config().clone();
    strip_nulls(&mut value);
    match toml::to_string_pretty(&value) {
        Ok(text) => print!("{text}"),
        Err(_) => println!("{value:#}"),
    }
    eprintln!("switchboard: configuration OK ({source})");
    ExitCode::SUCCESS
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn plugins() {
    let all = registry::plugins();
    for kind in PluginKind::ALL {
        println!("{} ({}.*):", kind.describe(), kind.section());
        for p in all.iter().filter(|p| p.kind() == kind) {
            println!("  {:<14} {}", p.name, p.description);
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let loaded = match load(&args.config, None) {
        Ok(l) => l,
        Err(e) => return config_failure(&e),
    };
    let jwt: JwtConfig = match loaded.figment.focus("auth.jwt").extract() {
        Ok(c) => c,
        Err(e) => return config_failure(&ConfigError::from_figment(e, "auth.jwt")),
    };
    let mut claims = serde_json::Map::new();
    if let Some(email) = args.email {
        claims.insert("email".into(), email.into());
    }
    if let Some(role) = args.role {
        claims.insert("role".into(), role.into());
    }
    for claim in &args.claims {
        let Some((k, v)) = claim.split_once('=') else {
            eprintln!("switchboard: --claim {claim}: expected KEY=VALUE");
            return ExitCode::from(2);
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
        claims.insert(k.to_owned(), value);
    }
    match mint(&jwt, &args.sub, args.ttl, claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}
