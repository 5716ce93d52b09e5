//! Helpers shared by the integration tests: scripts in a temporary folder, contexts, metrics.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use switchboard_core::{Direction, HookCtx, Metrics, Source};
use switchboard_hooks_lua::{LuaConfig, LuaHooks};

/// The repository's `scripts/` folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// A temporary folder holding scripts.
pub struct Scripts {
    pub dir: tempfile::TempDir,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes `name` with `source` and returns its path.
    pub fn write(&self, name: &str, source: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, source).expect("write script");
        p
    }
}

/// A config running `scripts` with a 50 ms timeout (generous for a shared CI machine).
pub fn config(scripts: Vec<PathBuf>) -> LuaConfig {
    LuaConfig {
        scripts,
        timeout: "50ms".parse().expect("dur"),
        workers: 1,
        watch: false,
        ..LuaConfig::default()
    }
}

/// Hooks for `config`, with fresh metrics.
pub fn hooks(config: LuaConfig) -> (LuaHooks, Metrics) {
    let metrics = Metrics::new();
    let h = LuaHooks::new(config, &metrics, "hooks.lua").expect("scripts load");
    (h, metrics)
}

/// Owned pieces of a socket context.
pub struct Ctx {
    pub room: Option<String>,
    pub user: String,
    pub socket: String,
    pub claims: Map<String, Value>,
}

impl Ctx {
    pub fn socket(user: &str, claims: Value) -> Self {
        Ctx {
            room: None,
            user: user.to_owned(),
            socket: format!("sock-{user}"),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    pub fn in_room(mut self, room: &str) -> Self {
        self.room = Some(room.to_owned());
        self
    }

    pub fn get(&self, direction: Direction) -> HookCtx<'_> {
        HookCtx {
            direction,
            room: self.room.as_deref(),
            source: Source::Socket,
            user_id: Some(&self.user),
            socket_id: Some(&self.socket),
            claims: Some(&self.claims),
        }
    }
}

/// An API publish's context to `room`.
pub fn api_ctx(room: &str) -> HookCtx<'_> {
    HookCtx {
        direction: Direction::Outbound,
        room: Some(room),
        source: Source::Api,
        user_id: None,
        socket_id: None,
        claims: None,
    }
}

/// A `session:message-sent` payload.
pub fn message_sent(content: &str, phone: &str) -> Value {
    json!({
        "sessionId": "s1",
        "messageId": "m1",
        "senderId": "u1",
        "senderName": "Ana",
        "senderPhone": phone,
        "type": "text",
        "content": content,
        "status": "sent",
        "timestamp": "2026-01-01T00:00:00.000Z"
    })
}

/// The value of one sample line of `metrics`, if present.
pub fn sample(metrics: &Metrics, prefix: &str) -> Option<f64> {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
