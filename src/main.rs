//! The `switchboard` binary: `serve` (default), `check`, `plugins`, `token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::auth_jwt::{JwtConfig, mint};
use switchboard::config::Overrides;
use switchboard::registry::{self, PluginKind};
use switchboard::{ConfigError, LoadedConfig, Node, run};

/// A real-time gateway: Socket.IO with JWT auth, rooms, presence and an HTTP publish API.
#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate the config and print it with every default, secrets redacted.
    Check,
    /// List the compiled-in plugins, by kind.
    Plugins,
    /// Mint a token signed with the configured HS* secret.
    Token(TokenArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct ConfigArg {
    /// Config file (TOML); default `./switchboard.toml` when present.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command {
        None => serve(&config, cli.serve),
        Some(Command::Serve(args)) => serve(
            &config,
            ServeArgs {
                listen: args.listen.or(cli.serve.listen),
            },
        ),
        Some(Command::Check) => check(&config),
        Some(Command::Plugins) => {
            plugins();
            ExitCode::SUCCESS
        }
        Some(Command::Token(args)) => token(&config, args),
    }
}

fn load(config: &ConfigArg, listen: Option<String>) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::load(config.config.as_deref(), &Overrides { listen })
}

fn config_failure(e: &ConfigError) -> ExitCode {
    run::config_failure("switchboard", e)
}

fn serve(config: &ConfigArg, args: ServeArgs) -> ExitCode {
    match load(config, args.listen) {
        Ok(loaded) => run::serve("switchboard", loaded),
        Err(e) => config_failure(&e),
    }
}

fn check(config: &ConfigArg) -> ExitCode {
    let loaded = match load(config, None) {
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

fn token(config: &ConfigArg, args: TokenArgs) -> ExitCode {
    let loaded = match load(config, None) {
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
