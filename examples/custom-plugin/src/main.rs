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
//! `switchboard-polls plugins` lists the registry, to check the plugin is linked in.

use std::path::PathBuf;
use std::process::ExitCode;

use switchboard::registry::{self, PluginKind};
use switchboard::{LoadedConfig, Overrides, run};
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
        Err(e) => return run::config_failure("switchboard-polls", &e),
    };
    if !registry::names(PluginKind::Events).contains(&polls::NAME) {
        eprintln!("switchboard-polls: the polls plugin is not linked in");
        return ExitCode::FAILURE;
    }
    // Logging, every configured plugin, the listener, and a clean stop on SIGINT/SIGTERM.
    run::serve("switchboard-polls", loaded)
    // ANCHOR_END: serve
}
