//! The environment layer: `SWITCHBOARD_<SECTION>__<KEY>` variables.
//!
//! Only names whose first part is a top-level section of [`Config`](super::Config) are
//! config; any other `SWITCHBOARD_*` name (Kubernetes puts `SWITCHBOARD_PORT`,
//! `SWITCHBOARD_SERVICE_HOST`, `SWITCHBOARD_PORT_3000_TCP_*` into every pod beside a Service
//! named `switchboard`) is set aside, and the node warns once that it ignored them.
//!
//! A value is read by the type of its key's default: a list key (`api.keys`,
//! `server.cors_origins`, `auth.jwt.algorithms`...) takes `a,b`, a single `a`, or a JSON
//! list `["a","b"]`; a string key takes the text as it is; any other key is parsed as a
//! TOML-like value (`true`, `42`, `{a = 1}`), as figment's own environment provider does.

use std::collections::BTreeMap;
use std::ffi::OsString;

use figment::value::{Dict, Map, Value as FigValue};
use figment::{Metadata, Profile, Source};

use super::{ConfigIssue, ENV_PREFIX};

/// The top-level sections of [`Config`](super::Config), read from its serde fields (so a
/// section added to the struct is config at once): a `SWITCHBOARD_*` name is config only
/// when its first part is one of these.
pub fn sections() -> Vec<String> {
    match serde_json::to_value(super::Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// One environment variable that names a config key.
#[derive(Debug, Clone)]
pub(crate) struct EnvVar {
    /// The variable's name as set (`SWITCHBOARD_API__KEYS`).
    pub(crate) name: String,
    /// The dotted key it sets (`api.keys`).
    pub(crate) key: String,
    /// The value, typed by the key's default.
    pub(crate) value: FigValue,
}

/// What the environment holds for the config.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvLayer {
    /// Variables that set config keys, sorted by name.
    pub(crate) vars: Vec<EnvVar>,
    /// `SWITCHBOARD_*` names that name no config section, sorted.
    pub(crate) ignored: Vec<String>,
    /// Variables that name a key but whose value cannot be read.
    pub(crate) issues: Vec<ConfigIssue>,
}

impl EnvLayer {
    /// Reads `vars` (the process environment, or a test's list) against the keys' defaults
    /// (dotted key → default value, as [`crate::registry::all_config_keys`] gives them).
    pub(crate) fn read(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
        defaults: &BTreeMap<String, serde_json::Value>,
    ) -> Self {
        let mut layer = EnvLayer::default();
        let sections = sections();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = strip_prefix(name) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let names_a_section = parts.first().is_some_and(|p| sections.contains(p));
            if !names_a_section || parts.iter().any(String::is_empty) {
                layer.ignored.push(name.to_owned());
                continue;
            }
            let key = parts.join(".");
            let Some(text) = value.to_str() else {
                layer.issues.push(ConfigIssue {
                    key,
                    reason: "the value is not valid UTF-8".to_owned(),
                    origin: Some(format!("env {name}")),
                });
                continue;
            };
            match typed_value(text, defaults.get(&key)) {
                Ok(value) => layer.vars.push(EnvVar {
                    name: name.to_owned(),
                    key,
                    value,
                }),
                Err(reason) => layer.issues.push(ConfigIssue {
                    key,
                    reason,
                    origin: Some(format!("env {name}")),
                }),
            }
        }
        layer.vars.sort_by(|a, b| a.name.cmp(&b.name));
        layer.ignored.sort();
        layer
    }

    /// Whether some variable sets `key` or a key below it.
    pub(crate) fn sets(&self, key: &str) -> bool {
        self.vars.iter().any(|v| {
            v.key == key
                || v.key
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// The name without `SWITCHBOARD_` (matched without regard to case, as figment does).
fn strip_prefix(name: &str) -> Option<&str> {
    let head = name.get(..ENV_PREFIX.len())?;
    head.eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &name[ENV_PREFIX.len()..])
}

/// Reads `text` as the type of `default`.
fn typed_value(text: &str, default: Option<&serde_json::Value>) -> Result<FigValue, String> {
    match default {
        Some(serde_json::Value::Array(_)) => list_value(text),
        Some(serde_json::Value::String(_)) => Ok(FigValue::from(text.to_owned())),
        _ => Ok(text.parse::<FigValue>().unwrap_or_else(|e| match e {})),
    }
}

/// A list: JSON (`["a","b"]`), else items separated by commas (`a,b`; `a` is one item; an
/// empty value is the empty list).
fn list_value(text: &str) -> Result<FigValue, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let json: serde_json::Value = serde_json::from_str(trimmed).map_err(|e| {
            format!(
                "`{trimmed}` is not a JSON list ({e}); write items separated by commas (`a,b`) or a JSON list (`[\"a\",\"b\"]`)"
            )
        })?;
        return FigValue::serialize(json).map_err(|e| e.to_string());
    }
    let items: Vec<FigValue> = trimmed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| FigValue::from(s.to_owned()))
        .collect();
    Ok(FigValue::from(items))
}

/// One variable as a figment layer, so an error names the variable itself.
pub(crate) struct VarProvider<'a>(pub(crate) &'a EnvVar);

impl figment::Provider for VarProvider<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            "environment variable",
            Source::Custom(format!("env {}", self.0.name)),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let nested = self
            .0
            .key
            .rsplit('.')
            .fold(self.0.value.clone(), |acc, part| {
                let mut d = Dict::new();
                d.insert(part.to_owned(), acc);
                FigValue::from(d)
            });
        let dict = match nested {
            FigValue::Dict(_, d) => d,
            _ => Dict::new(),
        };
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `vars` against the core's defaults plus two plugin keys, as a plugin's
    /// registered defaults add them in a binary that links it.
    fn read(vars: &[(&str, &str)]) -> EnvLayer {
        let mut defaults = crate::registry::all_config_keys();
        defaults.insert("auth.jwt.algorithms".into(), serde_json::json!(["HS256"]));
        defaults.insert("hooks.lua.scripts".into(), serde_json::json!([]));
        EnvLayer::read(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            &defaults,
        )
    }

    #[test]
    fn sections_are_the_config_fields() {
        let mut found = sections();
        found.sort_unstable();
        let mut expected = [
            "server",
            "transports",
            "auth",
            "api",
            "presence",
            "broker",
            "events",
            "redis",
            "hooks",
            "rooms",
            "limits",
            "log",
            "history",
            "recovery",
            "admin",
        ];
        expected.sort_unstable();
        assert_eq!(found, expected);
    }

    #[test]
    fn kubernetes_service_links_are_ignored() {
        let layer = read(&[
            ("SWITCHBOARD_PORT", "tcp://10.0.0.1:3000"),
            ("SWITCHBOARD_SERVICE_HOST", "10.0.0.1"),
            ("SWITCHBOARD_SERVICE_PORT", "3000"),
            ("SWITCHBOARD_PORT_3000_TCP", "tcp://10.0.0.1:3000"),
            ("SWITCHBOARD_PORT_3000_TCP_PROTO", "tcp"),
            ("SWITCHBOARD_PORT_3000_TCP_PORT", "3000"),
            ("SWITCHBOARD_PORT_3000_TCP_ADDR", "10.0.0.1"),
            ("SWITCHBOARD_REDIS_SERVICE_HOST", "10.0.0.2"),
            ("SWITCHBOARD_SERVER__LISTEN", "0.0.0.0:3000"),
            ("OTHER", "x"),
        ]);
        assert_eq!(layer.vars.len(), 1);
        assert_eq!(layer.vars[0].key, "server.listen");
        assert_eq!(
            layer.ignored,
            [
                "SWITCHBOARD_PORT",
                "SWITCHBOARD_PORT_3000_TCP",
                "SWITCHBOARD_PORT_3000_TCP_ADDR",
                "SWITCHBOARD_PORT_3000_TCP_PORT",
                "SWITCHBOARD_PORT_3000_TCP_PROTO",
                "SWITCHBOARD_REDIS_SERVICE_HOST",
                "SWITCHBOARD_SERVICE_HOST",
                "SWITCHBOARD_SERVICE_PORT",
            ]
        );
        assert!(layer.issues.is_empty());
    }

    fn strings(v: &FigValue) -> Vec<String> {
        v.deserialize().expect("a list of strings")
    }

    #[test]
    fn lists_take_commas_one_item_or_json() {
        let layer = read(&[
            ("SWITCHBOARD_API__KEYS", "k1, k2"),
            ("SWITCHBOARD_SERVER__CORS_ORIGINS", "http://a.test"),
            (
                "SWITCHBOARD_EVENTS__PLUGINS",
                r#"["conversation","typing"]"#,
            ),
            ("SWITCHBOARD_AUTH__JWT__ALGORITHMS", "RS256,ES256"),
            ("SWITCHBOARD_HOOKS__LUA__SCRIPTS", ""),
        ]);
        let by_key: BTreeMap<&str, &FigValue> = layer
            .vars
            .iter()
            .map(|v| (v.key.as_str(), &v.value))
            .collect();
        assert_eq!(strings(by_key["api.keys"]), ["k1", "k2"]);
        assert_eq!(strings(by_key["server.cors_origins"]), ["http://a.test"]);
        assert_eq!(
            strings(by_key["events.plugins"]),
            ["conversation", "typing"]
        );
        assert_eq!(strings(by_key["auth.jwt.algorithms"]), ["RS256", "ES256"]);
        assert!(strings(by_key["hooks.lua.scripts"]).is_empty());
    }

    #[test]
    fn a_broken_json_list_names_the_variable() {
        let layer = read(&[("SWITCHBOARD_API__KEYS", r#"["k1", "#)]);
        assert_eq!(layer.issues.len(), 1);
        let issue = &layer.issues[0];
        assert_eq!(issue.key, "api.keys");
        assert_eq!(issue.origin.as_deref(), Some("env SWITCHBOARD_API__KEYS"));
        assert!(issue.reason.contains("JSON list"), "{}", issue.reason);
    }

    #[test]
    fn strings_stay_text_and_numbers_are_parsed() {
        let layer = read(&[
            ("SWITCHBOARD_REDIS__KEY_PREFIX", "123"),
            ("SWITCHBOARD_LIMITS__BURST", "7"),
            ("SWITCHBOARD_AUTH__ALLOW_QUERY_USER_ID", "true"),
        ]);
        let by_key: BTreeMap<&str, &FigValue> = layer
            .vars
            .iter()
            .map(|v| (v.key.as_str(), &v.value))
            .collect();
        assert_eq!(by_key["redis.key_prefix"].as_str(), Some("123"));
        assert_eq!(by_key["limits.burst"].to_u128(), Some(7));
        assert_eq!(by_key["auth.allow_query_user_id"].to_bool(), Some(true));
    }

    #[test]
    fn sets_sees_keys_and_sections() {
        let layer = read(&[("SWITCHBOARD_AUTH__JWT__SECRET", "s")]);
        assert!(layer.sets("auth.jwt.secret"));
        assert!(layer.sets("auth.jwt"));
        assert!(!layer.sets("auth.jwt.secre"));
        assert!(!layer.sets("api.keys"));
    }
}
