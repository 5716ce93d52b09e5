//! Extraction that reports every problem of a section, not only the first.
//!
//! serde stops at the first bad field. To list them all, the merged values are extracted,
//! the key of the error is taken out (so its default applies), and extraction runs again,
//! until it succeeds or an error cannot be taken out (a missing field, a file that does not
//! parse). Each problem's origin is looked up in the original figment.

use figment::Figment;
use figment::providers::Serialized;
use figment::value::Value as FigValue;
use serde::de::DeserializeOwned;

use super::{ConfigError, ConfigIssue};

/// More rounds than any real config has wrong keys; a bound, not a limit users meet.
const MAX_ROUNDS: usize = 100;

/// Extracts `path` (`""` for the whole config) as `T`, reporting every bad key at once.
///
/// On failure the value returned is `T` with each bad key at its default, when one can be
/// built, so later checks can still look at the rest.
pub(crate) fn extract_all<T: DeserializeOwned>(
    figment: &Figment,
    path: &str,
) -> (Option<T>, Vec<ConfigIssue>) {
    // A section absent altogether extracts as its defaults, as `focus` gives it.
    let focused = if path.is_empty() {
        figment.clone()
    } else {
        figment.focus(path)
    };
    let err = match focused.extract::<T>() {
        Ok(v) => return (Some(v), Vec::new()),
        Err(e) => e,
    };
    let mut value = match focused.extract::<FigValue>() {
        Ok(v) => v,
        Err(_) => return (None, issues_of(figment, err, path)),
    };
    let mut issues = Vec::new();
    let mut err = err;
    for _ in 0..MAX_ROUNDS {
        let mut progressed = false;
        for e in err {
            let key = error_key(&e);
            if remove(&mut value, &key) {
                progressed = true;
            }
            issues.extend(issues_of(figment, e, path));
        }
        if !progressed {
            return (None, dedup(issues));
        }
        match Figment::from(Serialized::defaults(&value)).extract::<T>() {
            Ok(v) => return (Some(v), dedup(issues)),
            Err(e) => err = e,
        }
    }
    (None, dedup(issues))
}

/// The full key path of one error (the unknown field's own name included).
fn error_key(e: &figment::Error) -> Vec<String> {
    let mut key = e.path.clone();
    if let figment::error::Kind::UnknownField(name, _) = &e.kind
        && key.last() != Some(name)
    {
        key.push(name.clone());
    }
    key
}

/// Converts one error; the origin is looked up by key in the figment that holds every layer.
fn issues_of(figment: &Figment, e: figment::Error, prefix: &str) -> Vec<ConfigIssue> {
    let mut issues = ConfigError::from_figment(e, prefix).issues;
    for issue in issues.iter_mut().filter(|i| !i.key.is_empty()) {
        issue.origin = origin_of(figment, &issue.key);
    }
    issues
}

/// Where the value at `key` came from, said for a reader: `file x.toml`, `env NAME`,
/// `command-line flags`; `None` for built-in defaults or a key no layer has.
pub(crate) fn origin_of(figment: &Figment, key: &str) -> Option<String> {
    // `events.plugins[1]` is an item of `events.plugins`.
    let key = match key.rsplit_once('[') {
        Some((list, index)) if index.ends_with(']') => list,
        _ => key,
    };
    let mut path: Vec<&str> = key.split('.').collect();
    // A list item's origin is its list's (figment finds values by dict keys only). A key
    // that is absent has none: its section's layer did not set it.
    loop {
        if let Some(md) = figment.find_metadata(&path.join(".")) {
            return describe(md);
        }
        match path.last() {
            Some(last) if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) => {
                path.pop();
            }
            _ => return None,
        }
    }
}

fn describe(md: &figment::Metadata) -> Option<String> {
    match &md.source {
        Some(figment::Source::File(p)) => Some(format!("file {}", p.display())),
        Some(figment::Source::Custom(s)) => Some(s.clone()),
        _ if md.name.contains("Serialized") || md.name.contains("default") => None,
        _ => Some(md.name.to_string()),
    }
}

/// Removes the deepest existing key along `path`; whether anything was removed.
fn remove(value: &mut FigValue, path: &[String]) -> bool {
    let FigValue::Dict(_, dict) = value else {
        return false;
    };
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return dict.remove(head).is_some();
    }
    match dict.get_mut(head) {
        Some(child @ FigValue::Dict(..)) => remove(child, rest) || dict.remove(head).is_some(),
        Some(_) => dict.remove(head).is_some(),
        None => false,
    }
}

fn dedup(mut issues: Vec<ConfigIssue>) -> Vec<ConfigIssue> {
    let mut seen = std::collections::HashSet::new();
    issues.retain(|i| seen.insert((i.key.clone(), i.reason.clone())));
    issues
}
