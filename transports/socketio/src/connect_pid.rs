//! `pid` in the namespace `CONNECT` reply, for Socket.IO's connection state recovery.
//!
//! socket.io-client 4.x tracks offsets and sends `{pid, offset}` on reconnect only when the
//! server's `CONNECT` packet carried `pid` beside `sid`. socketioxide 0.18 writes that packet
//! itself (`ConnectPacket { sid }`) with no way to add a field (socketioxide issue #729),
//! so this module adds it where the gateway owns the bytes:
//!
//! - over WebSocket, the connection's write tap ([`switchboard_core::tap`]) sees the frames
//!   written after the upgrade, and [`Pids::rewriter`] adds `pid` to the `CONNECT` frame of
//!   a socket the connect middleware registered;
//! - over long-polling, [`Pids::rewrite_body`] adds it in the poll response that carries the
//!   packet.
//!
//! The connect middleware registers `sid → pid` before socketioxide sends `CONNECT`; the
//! entry goes when the packet is rewritten, or after a minute. When socketioxide grows a
//! hook for the `CONNECT` payload, this module goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_core::tap::Rewriter;

/// How long a registration waits for its `CONNECT` packet.
const KEEP: Duration = Duration::from_secs(60);

/// The `pid` each socket's `CONNECT` must carry, until it is sent.
#[derive(Default)]
pub(crate) struct Pids {
    by_sid: Mutex<HashMap<String, (String, Instant)>>,
    count: AtomicUsize,
}

impl Pids {
    /// Socket `sid`'s `CONNECT` gets `pid`.
    pub(crate) fn register(&self, sid: &str, pid: &str) {
        let mut m = self.by_sid.lock();
        let now = Instant::now();
        m.retain(|_, (_, at)| now.saturating_duration_since(*at) < KEEP);
        m.insert(sid.to_owned(), (pid.to_owned(), now));
        self.count.store(m.len(), Ordering::Release);
    }

    /// Whether any `CONNECT` waits for its `pid`.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    fn take(&self, sid: &str) -> Option<String> {
        let mut m = self.by_sid.lock();
        let pid = m.remove(sid).map(|(p, _)| p);
        self.count.store(m.len(), Ordering::Release);
        pid
    }

    /// A socket.io packet (`0/ns,{"sid":…}`, inside engine.io's message `4`) with `pid`
    /// added, when it is a `CONNECT` of a registered socket; `None` when it is not a
    /// `CONNECT`, `Some(None)` when it is one that needs nothing.
    pub(crate) fn rewrite_packet(&self, packet: &str) -> Option<Option<String>> {
        let rest = packet.strip_prefix('0')?;
        // `40/messages,{...}` or, for the main namespace, `40{...}`.
        let (prefix, json) = match rest.find('{') {
            Some(i) => rest.split_at(i),
            None => return Some(None),
        };
        let Ok(serde_json::Value::Object(mut data)) = serde_json::from_str(json) else {
            return Some(None);
        };
        let Some(sid) = data.get("sid").and_then(serde_json::Value::as_str) else {
            return Some(None);
        };
        let Some(pid) = self.take(sid) else {
            return Some(None);
        };
        data.insert("pid".to_owned(), serde_json::Value::from(pid));
        let json = serde_json::Value::Object(data).to_string();
        Some(Some(format!("0{prefix}{json}")))
    }

    /// The WebSocket tap's rewriter: the text frame of a `CONNECT` (engine.io message `4`).
    pub(crate) fn rewriter(self: &Arc<Self>) -> Rewriter {
        let me = self.clone();
        Arc::new(move |frame: &str| {
            let packet = frame.strip_prefix('4')?;
            me.rewrite_packet(packet)
                .map(|r| r.map(|new| format!("4{new}")))
        })
    }

    /// A long-polling response body (engine.io packets separated by `\x1e`) with `pid`
    /// added to the `CONNECT` it carries; `None` when it needs nothing.
    pub(crate) fn rewrite_body(&self, body: &str) -> Option<String> {
        let mut changed = false;
        let parts: Vec<String> = body
            .split('\u{1e}')
            .map(|p| {
                match p
                    .strip_prefix('4')
                    .and_then(|s| self.rewrite_packet(s))
                    .flatten()
                {
                    Some(new) => {
                        changed = true;
                        format!("4{new}")
                    }
                    None => p.to_owned(),
                }
            })
            .collect();
        changed.then(|| parts.join("\u{1e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_of_a_registered_socket_gets_its_pid_once() {
        let pids = Arc::new(Pids::default());
        pids.register("S1", "P1");
        assert!(pids.any());
        let rw = pids.rewriter();
        assert_eq!(rw(r#"0{"sid":"e","upgrades":[]}"#), None, "engine.io open");
        assert_eq!(rw(r#"42/messages,["x"]"#), None, "an event");
        assert_eq!(
            rw(r#"40/messages,{"sid":"S1"}"#),
            Some(Some(r#"40/messages,{"pid":"P1","sid":"S1"}"#.to_owned()))
        );
        assert!(!pids.any());
        assert_eq!(rw(r#"40/messages,{"sid":"S1"}"#), Some(None), "once only");
        pids.register("S2", "P2");
        assert_eq!(
            rw(r#"40{"sid":"S2"}"#),
            Some(Some(r#"40{"pid":"P2","sid":"S2"}"#.to_owned())),
            "the main namespace"
        );
    }

    #[test]
    fn a_poll_response_gets_the_pid_in_its_connect_packet() {
        let pids = Pids::default();
        pids.register("S1", "P1");
        let body = "40/messages,{\"sid\":\"S1\"}\u{1e}42/messages,[\"a\"]";
        assert_eq!(
            pids.rewrite_body(body).as_deref(),
            Some("40/messages,{\"pid\":\"P1\",\"sid\":\"S1\"}\u{1e}42/messages,[\"a\"]")
        );
        assert_eq!(pids.rewrite_body(body), None, "nothing left to add");
        assert_eq!(pids.rewrite_body("6"), None);
    }
}
