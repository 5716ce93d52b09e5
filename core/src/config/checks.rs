//! Checks that serde cannot make: a log filter that parses, a static folder that exists
//! (resolved against the config file's folder), and no `<redacted>` placeholder where a
//! secret belongs.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::value::Value as FigValue;

use super::collect::origin_of;
use super::{Config, ConfigIssue, REDACTED, SECRET_KEYS};

/// Runs every check; may rewrite `config` (a relative `server.static_dir` becomes the path
/// it names).
pub(crate) fn run(figment: &Figment, config: &mut Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let issue = |key: &str, reason: String| ConfigIssue {
        key: key.to_owned(),
        reason,
        origin: origin_of(figment, key),
    };
    if let Err(reason) = check_log_level(&config.log.level) {
        issues.push(issue("log.level", reason));
    }
    if let Some(dir) = config.server.static_dir.take() {
        let resolved = resolve_against_file(figment, "server.static_dir", &dir);
        if !resolved.is_dir() {
            issues.push(issue(
                "server.static_dir",
                format!("folder `{}` does not exist", resolved.display()),
            ));
        }
        config.server.static_dir = Some(resolved);
    }
    if config.recovery.enabled && !config.history.enabled() {
        issues.push(issue(
            "recovery.enabled",
            "needs room history: set history.size and history.ttl above 0".to_owned(),
        ));
    }
    if config.admin.enabled && config.admin.keys.iter().all(|k| k.trim().is_empty()) {
        issues.push(issue(
            "admin.keys",
            "set at least one key to open the admin page (admin.enabled is true)".to_owned(),
        ));
    }
    if config.recovery.enabled && config.recovery.max_disconnection.get().is_zero() {
        issues.push(issue(
            "recovery.max_disconnection",
            "must be more than 0s when recovery is enabled".to_owned(),
        ));
    }
    if let Ok(all) = figment.extract::<FigValue>() {
        let mut found = Vec::new();
        placeholders(&all, &mut Vec::new(), &mut found);
        for (key, what) in found {
            let reason = format!(
                "{what}: the placeholder `switchboard check` prints in place of a secret, not a value; put the real secret here"
            );
            issues.push(issue(&key, reason));
        }
    }
    issues
}

/// A relative path from a config file is relative to that file's folder; from anywhere
/// else (environment, flags), to the working directory.
pub(crate) fn resolve_against_file(figment: &Figment, key: &str, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let file = figment
        .find_metadata(key)
        .and_then(|md| md.source.as_ref())
        .and_then(|s| s.file_path())
        .and_then(Path::parent);
    match file {
        Some(folder) if !folder.as_os_str().is_empty() => folder.join(path),
        _ => path.to_path_buf(),
    }
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// A tracing filter whose every directive is a level (`info`) or `target=level`
/// (`switchboard=debug`). A bare word that is not a level would be read by tracing as a
/// target and silence everything else, so it is refused here.
pub(crate) fn check_log_level(filter: &str) -> Result<(), String> {
    let expected = "expected a level (off, error, warn, info, debug, trace) or target=level directives separated by commas, such as `info` or `switchboard=debug,info`";
    if filter.trim().is_empty() {
        return Err(format!("is empty; {expected}"));
    }
    for directive in filter.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a valid directive; {expected}"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|e| format!("`{filter}` is not a tracing filter ({e}); {expected}"))
}

/// Collects the dotted keys of secrets whose value, list item or URL password is the
/// `<redacted>` placeholder, each with what holds it.
fn placeholders(value: &FigValue, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
    let FigValue::Dict(_, dict) = value else {
        return;
    };
    for (k, v) in dict {
        path.push(k.clone());
        if SECRET_KEYS.contains(&k.as_str()) {
            match v {
                FigValue::String(_, s) if s.trim() == REDACTED => {
                    out.push((path.join("."), format!("`{REDACTED}`")))
                }
                FigValue::Array(_, items) => {
                    for (i, item) in items.iter().enumerate() {
                        if item.as_str().is_some_and(|s| s.trim() == REDACTED) {
                            out.push((path.join("."), format!("item {i} is `{REDACTED}`")));
                        }
                    }
                }
                _ => {}
            }
        } else if k == "url" {
            if let FigValue::String(_, s) = v
                && url_password(s) == Some(REDACTED)
            {
                out.push((
                    path.join("."),
                    format!("the password in the URL is `{REDACTED}`"),
                ));
            }
        } else {
            placeholders(v, path, out);
        }
        path.pop();
    }
}

/// The password of a `scheme://user:password@host` URL.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, pw)| pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels() {
        for ok in [
            "info",
            "debug",
            "switchboard=debug,info",
            "warn,tower_http=trace",
            "OFF",
        ] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose!!", "verbose", "", "switchboard=loud", "info,,=x"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_passwords() {
        assert_eq!(url_password("redis://u:<redacted>@h:1"), Some(REDACTED));
        assert_eq!(url_password("redis://h:1"), None);
        assert_eq!(url_password("redis://u@h:1"), None);
    }
}
