//! Hooks: the [`Hooks`] trait that adjusts, drops or authorizes events (Lua scripts, built-in).

use serde_json::{Map, Value};

/// Which way an event travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client.
    Inbound,
    /// To clients.
    Outbound,
}

impl Direction {
    /// `"inbound"` or `"outbound"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Who started an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client socket.
    Socket,
    /// The HTTP API or the Rust publish handle.
    Api,
}

impl Source {
    /// `"socket"` or `"api"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Socket => "socket",
            Source::Api => "api",
        }
    }
}

/// What a hook sees besides the event and payload.
#[derive(Debug, Clone, Copy)]
pub struct HookCtx<'a> {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The room, when there is one.
    pub room: Option<&'a str>,
    /// Socket or API.
    pub source: Source,
    /// The sender's user id (socket-originated events).
    pub user_id: Option<&'a str>,
    /// The sender's socket id (socket-originated events).
    pub socket_id: Option<&'a str>,
    /// The sender's token claims (socket-originated events).
    pub claims: Option<&'a Map<String, Value>>,
}

/// A hook's decision about one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send this payload (changed or not).
    Pass(Value),
    /// Drop the event.
    Drop,
}

// ANCHOR: hooks
/// Adjusts, drops or authorizes events. Built-in: `lua`.
///
/// Hooks run on the runtime's worker threads and must return quickly (the Lua plugin cuts a
/// call at its timeout). A hook that fails decides itself what happens to the event.
pub trait Hooks: Send + Sync + 'static {
    /// Starts background work (file watching, reload on SIGHUP); called once, inside the runtime.
    fn start(&self) {}

    /// Runs before a client's event is handled.
    fn on_inbound(&self, event: &str, payload: Value, ctx: &HookCtx<'_>) -> Verdict {
        let _ = (event, ctx);
        Verdict::Pass(payload)
    }

    /// Runs once per publish, before an event goes out to a room or the namespace.
    fn on_outbound(&self, event: &str, payload: Value, ctx: &HookCtx<'_>) -> Verdict {
        let _ = (event, ctx);
        Verdict::Pass(payload)
    }

    /// Decides a room join; `false` denies it.
    fn authorize(&self, ctx: &HookCtx<'_>) -> bool {
        let _ = ctx;
        true
    }
}
// ANCHOR_END: hooks
