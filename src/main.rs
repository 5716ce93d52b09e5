//! The `switchboard` binary: `serve` (default), `check`, `plugins`, `token`, `schema`,
//! `init`.

/// The binary's allocator: jemalloc, unless built without the `jemalloc` feature.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use switchboard::auth_jwt::{JwtConfig, mint};
use switchboard::config::{ConfigIssue, DEFAULT_CONFIG_FILE, Loader, Overrides};
use switchboard::embedded::{self, Embedded};
use switchboard::registry::{self, PluginKind};
use switchboard::schema::Format;
use switchboard::{ConfigError, LoadedConfig, init, run};

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
    /// Run the gateway (the default). With no config file, serves the embedded
    /// development default on loopback with a secret and API key generated for the run.
    Serve(ServeArgs),
    /// Validate the config and print it with every default, secrets redacted.
    Check,
    /// List the compiled-in plugins, by kind.
    Plugins,
    /// Mint a token signed with the configured HS* secret.
    Token(TokenArgs),
    /// Print the events the configured plugins declare, as a document.
    Schema(SchemaArgs),
    /// Write a commented config file with fresh random secrets.
    Init(InitArgs),
}

#[derive(Args, Debug)]
struct SchemaArgs {
    /// `asyncapi` (AsyncAPI 3.0), `json-schema` (one schema per event) or `typescript`
    /// (types for socket.io-client and for emit bodies).
    #[arg(long, value_name = "FORMAT", default_value = "asyncapi")]
    format: Format,
}

#[derive(Args, Debug, Clone, Default)]
struct ConfigArg {
    /// Config file (TOML); default `./switchboard.toml` when present.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    /// Address to bind (`127.0.0.1:3000`, `localhost:3000`), overriding `server.listen`.
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

#[derive(Args, Debug)]
struct InitArgs {
    /// Where to write the config.
    #[arg(value_name = "PATH", default_value = DEFAULT_CONFIG_FILE)]
    path: PathBuf,
    /// Replace an existing file (its secrets are lost).
    #[arg(long)]
    force: bool,
}

const PROGRAM: &str = "switchboard";

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
        Some(Command::Schema(args)) => schema(&config, args.format),
        Some(Command::Init(args)) => init_config(&args),
    }
}

/// What every command that reads the config starts from.
struct Prepared {
    loaded: LoadedConfig,
    issues: Vec<ConfigIssue>,
    embedded: Option<Embedded>,
}

/// Loads the layers, with the embedded default's generated values when no file is read.
fn prepare(config: &ConfigArg, listen: Option<String>) -> Result<Prepared, ConfigError> {
    let loader = Loader::new(config.config.as_deref()).overrides(&Overrides { listen });
    let embedded = Embedded::plan(&loader)?;
    let loader = match &embedded {
        Some(e) => e.apply(loader),
        None => loader,
    };
    let (loaded, mut issues) = loader.load_lenient()?;
    if let Some(issue) = embedded.as_ref().and_then(|e| e.check_listen(&loaded)) {
        issues.push(issue);
    }
    Ok(Prepared {
        loaded,
        issues,
        embedded,
    })
}

fn config_failure(e: &ConfigError) -> ExitCode {
    run::config_failure(PROGRAM, e)
}

fn serve(config: &ConfigArg, args: ServeArgs) -> ExitCode {
    let p = match prepare(config, args.listen) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let embedded = p.embedded;
    run::serve_with(PROGRAM, p.loaded, p.issues, move |node, bound| {
        if let Some(e) = &embedded {
            eprintln!("{}", e.banner(node, bound));
        }
    })
}

fn check(config: &ConfigArg) -> ExitCode {
    let p = match prepare(config, None) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    let source = match (&p.loaded.file, &p.embedded) {
        (Some(file), _) => file.display().to_string(),
        (None, Some(e)) => e.describe(),
        (None, None) => "no config file: built-in defaults and environment".to_owned(),
    };
    let warnings = p.loaded.warnings();
    let node = match run::build_node(p.loaded, p.issues) {
        Ok(n) => n,
        Err(e) => return config_failure(&e),
    };
    let mut value = node.effective_config().clone();
    strip_nulls(&mut value);
    match toml::to_string_pretty(&value) {
        Ok(text) => print!("{text}"),
        Err(_) => println!("{value:#}"),
    }
    for warning in warnings {
        eprintln!("{PROGRAM}: warning: {warning}");
    }
    eprintln!("{PROGRAM}: configuration OK ({source})");
    ExitCode::SUCCESS
}

fn schema(config: &ConfigArg, format: Format) -> ExitCode {
    let p = match prepare(config, None) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    match run::build_node(p.loaded, p.issues) {
        Ok(node) => run::print_schema(&node, format),
        Err(e) => config_failure(&e),
    }
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

/// Refuses a token command line the gateway would refuse or that says nothing it means.
fn token_usage_error(message: &str) -> ExitCode {
    eprintln!("{PROGRAM} token: {message}");
    ExitCode::from(2)
}

/// The claims `token` sets itself, and the flag that sets each.
fn owned_claim(name: &str) -> Option<&'static str> {
    match name {
        "sub" => Some("the user id is set with --sub"),
        "exp" => Some("the expiry is set with --ttl"),
        "iat" => Some("`iat` is the time of minting, set by the command"),
        "nbf" => Some("`nbf` is not settable: a minted token is valid from the time of minting"),
        _ => None,
    }
}

fn token(config: &ConfigArg, args: TokenArgs) -> ExitCode {
    if args.sub.is_empty() {
        return token_usage_error(
            "--sub must not be empty: the gateway refuses a token without a user id",
        );
    }
    let mut claims = serde_json::Map::new();
    if let Some(email) = args.email {
        claims.insert("email".into(), email.into());
    }
    if let Some(role) = args.role {
        claims.insert("role".into(), role.into());
    }
    for claim in &args.claims {
        let Some((k, v)) = claim.split_once('=') else {
            return token_usage_error(&format!("--claim {claim}: expected KEY=VALUE"));
        };
        if k.is_empty() {
            return token_usage_error(&format!("--claim {claim}: the claim name is empty"));
        }
        if let Some(why) = owned_claim(k) {
            return token_usage_error(&format!("--claim {k}=…: {why}"));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
        claims.insert(k.to_owned(), value);
    }
    let p = match prepare(config, None) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    if p.embedded.as_ref().is_some_and(Embedded::generated_secret) {
        eprintln!("{PROGRAM} token: {}", embedded::TOKEN_WITHOUT_CONFIG);
        return ExitCode::from(2);
    }
    if !p.issues.is_empty() {
        return config_failure(&ConfigError { issues: p.issues });
    }
    let jwt: JwtConfig = match switchboard::config::extract_section(&p.loaded.figment, "auth.jwt") {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    match mint(&jwt, &args.sub, args.ttl, claims) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

fn init_config(args: &InitArgs) -> ExitCode {
    match init::write(&args.path, args.force) {
        Ok(()) => {
            let path = args.path.display();
            let flag = if args.path == std::path::Path::new(DEFAULT_CONFIG_FILE) {
                String::new()
            } else {
                format!(" --config {path}")
            };
            let next = [
                (format!("{PROGRAM} check{flag}"), "validates it"),
                (
                    format!("{PROGRAM} token --sub alice{flag}"),
                    "mints a token signed with its secret",
                ),
                (format!("{PROGRAM}{flag}"), "serves with it"),
            ];
            let width = next.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            eprintln!("{PROGRAM}: wrote {path} with a fresh JWT secret and API key. Next:");
            for (command, what) in next {
                eprintln!("  {command:<width$}   # {what}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{PROGRAM} init: {e}");
            ExitCode::from(2)
        }
    }
}
