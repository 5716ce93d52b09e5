//! `switchboard init`: a commented config file with fresh random secrets.

use std::io::Write as _;
use std::path::Path;

use crate::embedded::random_secret;

const TEMPLATE: &str = include_str!("init.toml");

/// The commented config `init` writes, with this JWT secret and API key.
pub fn template(secret: &str, api_key: &str) -> String {
    TEMPLATE
        .replace("{{secret}}", secret)
        .replace("{{api_key}}", api_key)
}

/// Writes a fresh config to `path`; an existing file is kept unless `force`. The file is
/// readable by its owner only, as it holds secrets.
pub fn write(path: &Path, force: bool) -> Result<(), String> {
    let text = template(&random_secret()?, &random_secret()?);
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} already exists; pass --force to replace it (its secrets would be lost)",
            path.display()
        ),
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{LoadedConfig, Node};

    #[test]
    fn the_template_is_a_valid_config_with_its_secrets() {
        let text = template("s".repeat(43).as_str(), "k-123");
        let loaded = LoadedConfig::from_toml_str(&text).expect("a valid config");
        assert_eq!(loaded.config.api.keys, ["k-123"]);
        assert!(loaded.warnings().is_empty(), "{:?}", loaded.warnings());
        Node::build(loaded).expect("every plugin accepts it");
        assert!(!text.contains("{{"), "a placeholder is left:\n{text}");
    }

    #[test]
    fn an_existing_file_is_kept_without_force() {
        let dir = std::env::temp_dir().join(format!(
            "sb-init-{}-{}",
            std::process::id(),
            switchboard_core::registry::random_id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("switchboard.toml");
        write(&path, false).expect("written");
        let first = std::fs::read_to_string(&path).expect("read");
        let err = write(&path, false).expect_err("kept");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), first);
        write(&path, true).expect("replaced");
        assert_ne!(std::fs::read_to_string(&path).expect("read"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
