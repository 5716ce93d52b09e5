//! A Socket.IO v5 client over Engine.IO v4 WebSocket, framed by hand: `0{open}`,
//! `40/ns,{auth}`, `42/ns,[event, data]`, `43/ns,id[ack]`, ping `2` / pong `3`; and what
//! every socket runs once open, whatever its protocol (the native one is in
//! [`crate::native`]): the delivery accounting and the typing publisher.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::stats::{Clock, Stats};

/// One WebSocket connection.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// The wire protocol the sockets speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// Socket.IO v5 over Engine.IO v4 WebSocket (`/socket.io/`).
    Socketio,
    /// Switchboard's native WebSocket protocol (CONTRACT §5, `/ws`).
    Native,
}

impl Protocol {
    /// Its name in results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Socketio => "socketio",
            Protocol::Native => "native",
        }
    }
}

/// What every socket task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The run's clock.
    pub(crate) clock: Clock,
    /// The protocol the sockets speak.
    pub(crate) protocol: Protocol,
    /// `42/messages,` — the prefix of an event in the namespace.
    pub(crate) event_prefix: String,
    /// The event whose deliveries are counted.
    pub(crate) counted: Counted,
    /// Every counter.
    pub(crate) stats: RefCell<Stats>,
    /// Latencies, microseconds (kept apart so that sorting does not hold `stats`).
    pub(crate) latencies: RefCell<Vec<u32>>,
    /// How late each publish left against its schedule, microseconds.
    pub(crate) publish_lag: RefCell<Vec<u32>>,
    /// Send times of each typing publisher's events, in order, microseconds.
    pub(crate) typing_sent: RefCell<Vec<Vec<u64>>>,
    /// Per HTTP publish (by sequence number), the latency of its first delivery to any
    /// member, microseconds (`u32::MAX` until one arrives; empty unless counting messages).
    pub(crate) first_latency: RefCell<Vec<u32>>,
}

/// Which deliveries a run counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// None (connect and idle runs).
    Nothing,
    /// `message:received` with the publish's sequence number in `messageId` and its send
    /// time in `content`; `publishes` bounds the sequence numbers.
    Messages {
        /// How many publishes the run makes at most.
        publishes: usize,
    },
    /// `typing:start` from publisher sockets whose user id is `p{index}`; the k-th event a
    /// socket gets from a publisher is that publisher's k-th (both protocols keep order).
    Typing {
        /// How many publisher sockets.
        publishers: usize,
    },
}

/// How a socket connects.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The protocol.
    pub(crate) protocol: Protocol,
    /// Server address (loopback).
    pub(crate) addr: SocketAddr,
    /// The `ws://` URL of the endpoint (Engine.IO's, or the native one).
    pub(crate) url: String,
    /// The Socket.IO namespace, such as `/messages`.
    pub(crate) namespace: String,
    /// Limit on every step of the handshake.
    pub(crate) timeout: Duration,
}

/// A typing publisher's plan: `count` events at `interval`, the first `offset` after the
/// run's start.
#[derive(Debug, Clone)]
pub(crate) struct TypingPlan {
    /// Publisher index (its user id is `p{index}`).
    pub(crate) index: usize,
    /// When the first event goes, after the start.
    pub(crate) offset: Duration,
    /// Time between events.
    pub(crate) interval: Duration,
    /// How many events.
    pub(crate) count: usize,
    /// The room's conversation id.
    pub(crate) conversation: String,
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of sockets live in this one process.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// The next text message during a handshake; Engine.IO pings (`2`) are answered on the way
/// (a native server's pings are control frames, answered by tungstenite).
pub(crate) async fn next_text(ws: &mut Ws, deadline: Instant) -> Result<String, String> {
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .map_err(|_| "handshake timed out".to_owned())?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                // A native server never sends a text frame `2`.
                if t.as_str() == "2" {
                    ws.send(Message::text("3"))
                        .await
                        .map_err(|e| format!("send pong: {e}"))?;
                    continue;
                }
                return Ok(t.as_str().to_owned());
            }
            Some(Ok(Message::Close(_))) | None => return Err("closed during handshake".to_owned()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("websocket: {e}")),
        }
    }
}

/// Opens the TCP connection and the WebSocket to `target.url`.
pub(crate) async fn connect(target: &Target, deadline: Instant) -> Result<Ws, String> {
    let tcp = tokio::time::timeout_at(deadline.into(), TcpStream::connect(target.addr))
        .await
        .map_err(|_| "tcp connect timed out".to_owned())?
        .map_err(|e| format!("tcp connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio::time::timeout_at(
        deadline.into(),
        client_async_with_config(target.url.as_str(), tcp, Some(ws_config())),
    )
    .await
    .map_err(|_| "websocket upgrade timed out".to_owned())?
    .map_err(|e| format!("websocket upgrade: {e}"))?;
    Ok(ws)
}

/// Connects, authenticates with `token` and, with `join`, joins `conversation:{join}` (acked),
/// in the target's protocol.
pub(crate) async fn open(target: &Target, token: &str, join: Option<&str>) -> Result<Ws, String> {
    match target.protocol {
        Protocol::Socketio => open_socketio(target, token, join).await,
        Protocol::Native => crate::native::open(target, token, join).await,
    }
}

async fn open_socketio(target: &Target, token: &str, join: Option<&str>) -> Result<Ws, String> {
    let deadline = Instant::now() + target.timeout;
    let mut ws = connect(target, deadline).await?;
    let open = next_text(&mut ws, deadline).await?;
    if !open.starts_with('0') {
        return Err(format!("expected an Engine.IO open packet, got {open:.40}"));
    }
    let ns = &target.namespace;
    let auth = serde_json::json!({ "token": token });
    ws.send(Message::text(format!("40{ns},{auth}")))
        .await
        .map_err(|e| format!("send connect: {e}"))?;
    let ok = format!("40{ns},");
    let refused = format!("44{ns},");
    loop {
        let t = next_text(&mut ws, deadline).await?;
        if t.starts_with(&ok) {
            break;
        }
        if let Some(why) = t.strip_prefix(&refused) {
            return Err(format!("connect_error {why:.80}"));
        }
    }
    if let Some(conversation) = join {
        let data = serde_json::json!({ "conversationId": conversation });
        ws.send(Message::text(format!(
            "42{ns},0[\"conversation:join\",{data}]"
        )))
        .await
        .map_err(|e| format!("send join: {e}"))?;
        let ack = format!("43{ns},0");
        loop {
            let t = next_text(&mut ws, deadline).await?;
            if let Some(body) = t.strip_prefix(&ack) {
                if body.contains("\"success\":true") {
                    break;
                }
                return Err(format!("join refused: {body:.80}"));
            }
        }
    }
    Ok(ws)
}

/// Per-socket receive state.
pub(crate) struct Receiver {
    publishes: usize,
    seen: Vec<u64>,
    typing: Vec<u32>,
}

impl Receiver {
    /// The state for counting `counted`.
    pub(crate) fn new(counted: Counted) -> Receiver {
        match counted {
            Counted::Nothing => Receiver {
                publishes: 0,
                seen: Vec::new(),
                typing: Vec::new(),
            },
            Counted::Messages { publishes } => Receiver {
                publishes,
                seen: vec![0; publishes.div_ceil(64)],
                typing: Vec::new(),
            },
            Counted::Typing { publishers } => Receiver {
                publishes: 0,
                seen: Vec::new(),
                typing: vec![0; publishers],
            },
        }
    }
}

/// The text of the string field `key` of a flat JSON object, without unescaping.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// A text message a connected socket received, whatever the protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// An event: its name and the rest of the message after the name (holding its data).
    Event(&'a str, &'a str),
    /// An Engine.IO ping, to answer with a pong.
    Ping,
    /// The server disconnected the socket (Socket.IO `41`).
    Disconnected,
    /// Anything else (acks, ...).
    Other,
}

/// Reads a Socket.IO text message: `42/ns,["name",data]`, `2`, `41/ns,`.
fn socketio_incoming<'a>(shared: &Shared, text: &'a str) -> Incoming<'a> {
    if text == "2" {
        return Incoming::Ping;
    }
    let Some(packet) = text.strip_prefix(shared.event_prefix.as_str()) else {
        if text.starts_with("41") {
            return Incoming::Disconnected;
        }
        return Incoming::Other;
    };
    // An event packet whose name cannot be read still counts as an event (another one).
    packet
        .strip_prefix("[\"")
        .and_then(|rest| rest.find('"').map(|end| (&rest[..end], &rest[end + 1..])))
        .map_or(Incoming::Event("", packet), |(name, rest)| {
            Incoming::Event(name, rest)
        })
}

/// Reads and counts a text message; `true` when it is an Engine.IO ping to answer.
pub(crate) fn handle_text(shared: &Shared, rx: &mut Receiver, text: &str) -> bool {
    let incoming = match shared.protocol {
        Protocol::Socketio => socketio_incoming(shared, text),
        Protocol::Native => crate::native::incoming(text),
    };
    match incoming {
        Incoming::Event(name, rest) => count(shared, rx, name, rest),
        Incoming::Disconnected => shared
            .stats
            .borrow_mut()
            .error("disconnected by the server"),
        Incoming::Ping => return true,
        Incoming::Other => {}
    }
    false
}

/// Counts an event received: a delivery, a duplicate, an unknown one or another event.
fn count(shared: &Shared, rx: &mut Receiver, name: &str, packet: &str) {
    let now = shared.clock.now_us();
    match shared.counted {
        Counted::Messages { .. } if name == "message:received" => {
            let seq = field(packet, "messageId").and_then(|s| s.parse::<usize>().ok());
            let sent = field(packet, "content").and_then(|s| s.parse::<u64>().ok());
            let mut st = shared.stats.borrow_mut();
            match (seq, sent) {
                (Some(seq), Some(sent)) if seq < rx.publishes => {
                    let bit = 1u64 << (seq % 64);
                    if rx.seen[seq / 64] & bit != 0 {
                        st.duplicates += 1;
                    } else {
                        rx.seen[seq / 64] |= bit;
                        st.delivered += 1;
                        st.last_delivery_us = now;
                        drop(st);
                        let lat = push_latency(shared, now, sent);
                        if let Some(first) = shared.first_latency.borrow_mut().get_mut(seq) {
                            *first = (*first).min(lat);
                        }
                    }
                }
                _ => st.unknown += 1,
            }
        }
        Counted::Typing { .. } if name == "typing:start" => {
            let publisher = field(packet, "userId")
                .and_then(|u| u.strip_prefix('p'))
                .and_then(|i| i.parse::<usize>().ok());
            let sent = shared.typing_sent.borrow();
            let mut st = shared.stats.borrow_mut();
            match publisher.filter(|p| *p < rx.typing.len()) {
                Some(p) => {
                    let k = rx.typing[p] as usize;
                    match sent.get(p).and_then(|s| s.get(k)) {
                        Some(&at) => {
                            rx.typing[p] += 1;
                            st.delivered += 1;
                            st.last_delivery_us = now;
                            drop(st);
                            drop(sent);
                            push_latency(shared, now, at);
                        }
                        None => st.duplicates += 1,
                    }
                }
                None => st.unknown += 1,
            }
        }
        _ => shared.stats.borrow_mut().other_events += 1,
    }
}

/// Records a delivery's latency; returns it, in microseconds.
fn push_latency(shared: &Shared, now: u64, sent: u64) -> u32 {
    let lat = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
    shared.latencies.borrow_mut().push(lat);
    lat
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Runs a connected socket until `stop`: answers pings, counts deliveries and, with a
/// plan, publishes typing events once `go` gives the start.
pub(crate) async fn run(
    mut ws: Ws,
    shared: Rc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut go: watch::Receiver<Option<Instant>>,
    mut plan: Option<TypingPlan>,
) {
    let mut rx = Receiver::new(shared.counted);
    let mut sent = 0usize;
    let typing_frame = plan.as_ref().map(|p| {
        let data = serde_json::json!({ "conversationId": p.conversation });
        match shared.protocol {
            Protocol::Socketio => format!("{}[\"typing:start\",{data}]", shared.event_prefix),
            Protocol::Native => format!("{{\"event\":\"typing:start\",\"data\":{data}}}"),
        }
    });
    loop {
        let start = *go.borrow();
        let next = plan
            .as_ref()
            .filter(|p| sent < p.count)
            .zip(start)
            .map(|(p, start)| start + p.offset + p.interval.mul_f64(sent as f64));
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Ok(()) = go.changed() => {}
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if handle_text(&shared, &mut rx, t.as_str())
                        && let Err(e) = ws.send(Message::text("3")).await
                    {
                        shared.stats.borrow_mut().error(format!("send pong: {e}"));
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    shared.stats.borrow_mut().error("connection closed by the server");
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    shared.stats.borrow_mut().error(format!("websocket: {e}"));
                    return;
                }
            },
            () = sleep_until_opt(next) => {
                let (Some(p), Some(frame)) = (plan.as_mut(), typing_frame.as_ref()) else { continue };
                let now = shared.clock.now_us();
                if let Some(at) = next {
                    let lag = Instant::now().saturating_duration_since(at).as_micros();
                    shared.publish_lag.borrow_mut().push(u32::try_from(lag).unwrap_or(u32::MAX));
                }
                if let Some(times) = shared.typing_sent.borrow_mut().get_mut(p.index) {
                    times.push(now);
                }
                sent += 1;
                if let Err(e) = ws.send(Message::text(frame.clone())).await {
                    shared.stats.borrow_mut().error(format!("send typing: {e}"));
                    return;
                }
                shared.stats.borrow_mut().publishes += 1;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_any_order() {
        let j = r#"{"content":"123","conversationId":"c0","messageId":"42"}"#;
        assert_eq!(field(j, "messageId"), Some("42"));
        assert_eq!(field(j, "content"), Some("123"));
        assert_eq!(field(j, "status"), None);
    }

    /// A run's shared state for tests.
    pub(crate) fn shared(protocol: Protocol, counted: Counted) -> Shared {
        Shared {
            clock: Clock::new(),
            protocol,
            event_prefix: "42/messages,".into(),
            counted,
            stats: RefCell::default(),
            latencies: RefCell::default(),
            publish_lag: RefCell::default(),
            typing_sent: RefCell::default(),
            first_latency: RefCell::default(),
        }
    }

    #[test]
    fn message_deliveries_are_counted_once() {
        let shared = shared(Protocol::Socketio, Counted::Messages { publishes: 10 });
        let mut rx = Receiver::new(shared.counted);
        let frame = r#"42/messages,["message:received",{"conversationId":"c0","messageId":"3","content":"0"}]"#;
        assert!(!handle_text(&shared, &mut rx, frame));
        handle_text(&shared, &mut rx, frame);
        handle_text(
            &shared,
            &mut rx,
            r#"42/messages,["message:received",{"messageId":"99","content":"0"}]"#,
        );
        handle_text(
            &shared,
            &mut rx,
            r#"42/messages,["user:online",{"userId":"u"}]"#,
        );
        handle_text(&shared, &mut rx, r#"43/messages,0[{"success":true}]"#);
        let st = shared.stats.borrow();
        assert_eq!(
            (st.delivered, st.duplicates, st.unknown, st.other_events),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn socketio_pings_and_disconnects() {
        let shared = shared(Protocol::Socketio, Counted::Nothing);
        let mut rx = Receiver::new(shared.counted);
        assert!(handle_text(&shared, &mut rx, "2"));
        assert!(!handle_text(&shared, &mut rx, "41/messages,"));
        assert_eq!(shared.stats.borrow().errors, 1);
        assert_eq!(
            socketio_incoming(&shared, r#"42/messages,["typing:start",{"userId":"p0"}]"#),
            Incoming::Event("typing:start", r#",{"userId":"p0"}]"#)
        );
        assert_eq!(
            socketio_incoming(&shared, r#"42/messages,5["x",1]"#),
            Incoming::Event("", r#"5["x",1]"#)
        );
    }
}
