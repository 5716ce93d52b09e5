//! Names every `switchboard-*` plugin crate the binary depends on in the facade
//! (`pub use switchboard_auth_jwt as auth_jwt;` …), so the linker keeps each one's
//! registration: adding a built-in plugin is its crate plus one line in `Cargo.toml`.

use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=Cargo.toml");
    let manifest = std::fs::read_to_string("Cargo.toml").expect("read Cargo.toml");
    let doc: toml::Table = manifest.parse().expect("Cargo.toml is TOML");
    let deps = doc
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .expect("Cargo.toml has [dependencies]");
    let mut out = String::new();
    for name in deps.keys() {
        let Some(short) = name.strip_prefix("switchboard-") else {
            continue;
        };
        if short == "core" {
            continue;
        }
        let module = short.replace('-', "_");
        let krate = name.replace('-', "_");
        writeln!(
            out,
            "/// The `{name}` crate, named so the linker keeps its plugin registration.\n\
             pub use {krate} as {module};"
        )
        .expect("write to a String");
    }
    let dest =
        std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set")).join("plugins.rs");
    std::fs::write(dest, out).expect("write plugins.rs");
}
