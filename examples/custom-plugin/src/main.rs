//! `switchboard-polls`: a gateway binary that links a custom plugin next to the built-ins.
//!
//! It is the `switchboard` binary's `serve` in a few lines, plus the `polls` event set from
//! this crate. Run it from the repository root:
//!
//! ```text
//! $ cargo run -p switchboard-example-polls -- --config examples/custom-plugin/switchboard.toml
//! INFO switchboard::run: switchboard-polls serving listen=127.0.0.1:3000
//! ```
//!
//! `switchboard-polls plugins` lists the registry, to check the plugin is linked in;
//! `switchboard-polls schema --format typescript` prints the types of every event the
//! config enables, `poll:*` included.

use std::path::PathBuf;
use std::process::ExitCode;

use switchboard::registry::{self, PluginKind};
use switchboard::schema::Format;
use switchboard::{LoadedConfig, Overrides, run};
// ANCHOR: link
// Naming the plugin crate keeps it in the binary: a crate nothing refers to may be left
// out by the linker, and its `register_plugin!` registration with it.
use switchboard_example_polls as polls;
// ANCHOR_END: link

const USAGE: &str = "usage: switchboard-polls [--config PATH] [--listen ADDR] \
                     [plugins | schema [--format asyncapi|json-schema|typescript]]";

/// What the command line asks for.
enum Command {
    Serve,
    Plugins,
    Schema(Format),
}

fn main() -> ExitCode {
    let mut file: Option<PathBuf> = None;
    let mut overrides = Overrides::default();
    let mut command = Command::Serve;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => file = args.next().map(PathBuf::from),
            "--listen" => overrides.listen = args.next(),
            "plugins" => command = Command::Plugins,
            "schema" => command = Command::Schema(Format::AsyncApi),
            "--format" if matches!(command, Command::Schema(_)) => {
                match args.next().map(|f| f.parse()) {
                    Some(Ok(format)) => command = Command::Schema(format),
                    Some(Err(e)) => {
                        eprintln!("switchboard-polls schema: {e}");
                        return ExitCode::from(2);
                    }
                    None => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Command::Plugins = command {
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
    // ANCHOR: serve
    let loaded = match LoadedConfig::load(file.as_deref(), &overrides) {
        Ok(loaded) => loaded,
        Err(e) => return run::config_failure("switchboard-polls", &e),
    };
    if !registry::names(PluginKind::Events).contains(&polls::NAME) {
        eprintln!("switchboard-polls: the polls plugin is not linked in");
        return ExitCode::FAILURE;
    }
    if let Command::Schema(format) = command {
        // The events of every configured plugin, this crate's `poll:*` among them.
        return match run::build_node(loaded, Vec::new()) {
            Ok(node) => run::print_schema(&node, format),
            Err(e) => run::config_failure("switchboard-polls", &e),
        };
    }
    // Logging, every configured plugin, the listener, and a clean stop on SIGINT/SIGTERM.
    run::serve("switchboard-polls", loaded)
    // ANCHOR_END: serve
}
