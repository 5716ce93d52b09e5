//! The package's files stay usable: the config it installs as
//! `/etc/switchboard/switchboard.toml` is valid, and the systemd unit runs the binary with it,
//! as its own user, hardened.

use std::path::Path;

use switchboard::config::Overrides;
use switchboard::{LoadedConfig, Node};

fn packaging(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(file)
}

#[test]
fn the_packaged_config_is_valid_and_keeps_the_api_off_the_public_port() {
    let loaded = LoadedConfig::load_with_env(
        Some(&packaging("switchboard.toml")),
        &Overrides::default(),
        false,
    )
    .expect("packaging/switchboard.toml loads");
    let c = &loaded.config;
    assert!(
        c.server
            .internal_listen
            .is_some_and(|a| a.ip().is_loopback())
    );
    assert!(c.server.listen.ip().is_loopback());
    assert!(c.api.keys.is_empty(), "API keys belong in switchboard.env");
    // Alone it holds no secret, so it cannot serve with one anybody could know.
    let err = Node::build(loaded).expect_err("no JWT secret in the packaged config");
    assert!(
        err.issues.iter().any(|i| i.key == "auth.jwt.secret"),
        "{err}"
    );
    // With the secret the environment file gives, every plugin builds.
    let text = std::fs::read_to_string(packaging("switchboard.toml")).expect("config");
    let with_secret = text.replace(
        "# secret = \"...\"",
        "secret = \"sb_0123456789abcdef0123456789abcdef0123\"",
    );
    assert_ne!(
        text, with_secret,
        "the commented secret line is where it was"
    );
    Node::build(LoadedConfig::from_toml_str(&with_secret).expect("config"))
        .expect("every plugin builds from the packaged config and a secret");
}

#[test]
fn the_unit_runs_the_installed_config_as_its_own_user_hardened() {
    let unit = std::fs::read_to_string(packaging("switchboard.service")).expect("unit");
    for line in [
        "User=switchboard",
        "ExecStart=/usr/bin/switchboard serve --config /etc/switchboard/switchboard.toml",
        "EnvironmentFile=/etc/switchboard/switchboard.env",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "switchboard.service lacks `{line}`"
        );
    }
}
