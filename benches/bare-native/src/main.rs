//! `bare-native`: the floor Switchboard's native WebSocket transport (CONTRACT §5) is
//! measured against. A hand-rolled server on one thread: HTTP/1.1 parsed with `httparse`,
//! WebSocket frames by hand, the native protocol's `op: connect` with an HS256 JWT,
//! `conversation:join` (reply + ack), typing relay to the room except the sender and
//! `POST /api/v1/emit` into a room. A publish frames its event once and writes it to each
//! recipient with one `write(2)`; only what the kernel does not take waits in that
//! connection's buffer. One task per connection, one ticker pinging every socket every 25 s.
//! Nothing else: no presence, no limits, no hooks, no metrics, no logging, no handshake
//! timeout, no closing of sockets that stop answering pings, no `permessage-deflate`.
//!
//! ```text
//! BENCH_SECRET=... BENCH_API_KEY=... bare-native --listen 127.0.0.1:3103
//! ```

mod frame;
mod http;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::ErrorKind;
use std::process::ExitCode;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::frame::{FrameBuf, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// Largest client message (a bigger one closes with 1009).
const MAX_MESSAGE: usize = 1024 * 1024;
/// How often every socket is pinged.
const PING_EVERY: Duration = Duration::from_secs(25);
/// A connection's read buffer to begin with; it grows only for a bigger frame.
const READ_BUF: usize = 512;
/// A read buffer larger than this is given back once it is empty.
const READ_BUF_KEEP: usize = 8 * 1024;
/// Bytes waiting for a connection that does not read before it is dropped.
const MAX_PENDING: usize = 16 * 1024 * 1024;
/// How long a closing connection waits for the client's close and for its output to drain.
const LINGER: Duration = Duration::from_secs(1);

/// Bytes the kernel did not take yet, in order.
#[derive(Default)]
struct Pending {
    /// The bytes, written ones included until all are.
    buf: Vec<u8>,
    /// How much of `buf` has been written.
    at: usize,
}

/// One connection, shared between its task and the publishers.
struct Conn {
    /// The socket; `try_write` and `try_read` need only `&self`.
    stream: TcpStream,
    /// What the kernel did not take yet.
    pending: RefCell<Pending>,
    /// The connection task's waker, to flush what a publisher left pending.
    waker: Cell<Option<Waker>>,
    /// The connection failed (write error or slow consumer); its task ends it.
    dead: Cell<bool>,
}

/// What a connection's task wakes up for.
enum Ready {
    /// Input to read.
    Readable,
    /// Room to write what is pending.
    Writable,
    /// The connection failed or was dropped by a publisher.
    Dead,
}

impl Conn {
    /// A connection with nothing pending.
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            pending: RefCell::default(),
            waker: Cell::new(None),
            dead: Cell::new(false),
        }
    }

    /// Sends a frame: one `write(2)`, and what it did not take waits behind what already waits.
    fn send(&self, bytes: &[u8]) {
        if self.dead.get() {
            return;
        }
        let mut p = self.pending.borrow_mut();
        if p.at < p.buf.len() {
            p.buf.extend_from_slice(bytes);
            if p.buf.len() - p.at > MAX_PENDING {
                self.kill();
            }
            return;
        }
        match self.stream.try_write(bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => {
                p.buf.clear();
                p.at = 0;
                p.buf.extend_from_slice(&bytes[n..]);
                self.wake();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                p.buf.clear();
                p.at = 0;
                p.buf.extend_from_slice(bytes);
                self.wake();
            }
            Err(_) => self.kill(),
        }
    }

    /// Marks the connection failed and wakes its task to end it.
    fn kill(&self) {
        self.dead.set(true);
        self.wake();
    }

    /// Wakes the connection's task.
    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether output waits for the kernel.
    fn has_pending(&self) -> bool {
        let p = self.pending.borrow();
        p.at < p.buf.len()
    }

    /// Writes what is pending until the kernel takes no more.
    fn flush(&self) {
        let mut p = self.pending.borrow_mut();
        while p.at < p.buf.len() {
            match self.stream.try_write(&p.buf[p.at..]) {
                Ok(0) => {
                    self.dead.set(true);
                    break;
                }
                Ok(n) => p.at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.dead.set(true);
                    break;
                }
            }
        }
        if p.at >= p.buf.len() {
            p.at = 0;
            if p.buf.capacity() > READ_BUF_KEEP {
                p.buf = Vec::new();
            } else {
                p.buf.clear();
            }
        }
    }

    /// Polls for input, for room to write what is pending, or for the connection's failure.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Ready> {
        match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(cx.waker().clone())),
        }
        if self.dead.get() {
            return Poll::Ready(Ready::Dead);
        }
        if self.has_pending() {
            match self.stream.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ready::Writable),
                Poll::Ready(Err(_)) => return Poll::Ready(Ready::Dead),
                Poll::Pending => {}
            }
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ready::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Ready::Dead),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits for more input and appends it to `buf` (room for `want` bytes in all), flushing
    /// pending output meanwhile; `false` once the connection is finished.
    async fn fill(&self, buf: &mut Vec<u8>, want: usize) -> bool {
        loop {
            match poll_fn(|cx| self.poll_ready(cx)).await {
                Ready::Dead => return false,
                Ready::Writable => self.flush(),
                Ready::Readable => {
                    if buf.len() == buf.capacity() || buf.capacity() < want {
                        buf.reserve(want.saturating_sub(buf.len()).max(READ_BUF));
                    }
                    match self.stream.try_read_buf(buf) {
                        Ok(0) => return false,
                        Ok(_) => return true,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
            }
        }
    }

    /// Waits (at most [`LINGER`]) until what is pending has been written.
    async fn drain(&self) {
        let _ = tokio::time::timeout(LINGER, async {
            while self.has_pending() && !self.dead.get() {
                if let Ready::Dead = poll_fn(|cx| {
                    let _ = self.waker.take();
                    match self.stream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ready::Writable),
                        Poll::Ready(Err(_)) => Poll::Ready(Ready::Dead),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await
                {
                    return;
                }
                self.flush();
            }
        })
        .await;
    }
}

/// The JWT claims read.
#[derive(Deserialize)]
struct Claims {
    /// The user id.
    sub: String,
}

/// Everything the connections share.
struct Server {
    /// The HS256 secret.
    decoding: DecodingKey,
    /// Built once: HS256, `exp` and `sub` required, 60 s leeway.
    validation: Validation,
    /// The key `POST /api/v1/emit` wants.
    api_key: String,
    /// Room name → its members.
    rooms: RefCell<HashMap<String, Vec<Rc<Conn>>>>,
    /// Every upgraded socket, for the ping ticker.
    sockets: RefCell<HashMap<u64, Rc<Conn>>>,
    /// The next socket id.
    next_id: Cell<u64>,
}

impl Server {
    /// Writes `frame` to every member of `room` but `except`.
    fn publish(&self, room: &str, frame: &[u8], except: Option<&Rc<Conn>>) {
        if let Some(members) = self.rooms.borrow().get(room) {
            for c in members {
                if !except.is_some_and(|e| Rc::ptr_eq(e, c)) {
                    c.send(frame);
                }
            }
        }
    }

    /// Adds `conn` to `room`; `false` when it was already there.
    fn join(&self, room: &str, conn: &Rc<Conn>) -> bool {
        let mut rooms = self.rooms.borrow_mut();
        let members = rooms.entry(room.to_owned()).or_default();
        if members.iter().any(|c| Rc::ptr_eq(c, conn)) {
            return false;
        }
        members.push(conn.clone());
        true
    }

    /// Removes `conn` from `room`, and the room once empty.
    fn leave(&self, room: &str, conn: &Rc<Conn>) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(members) = rooms.get_mut(room) {
            if let Some(i) = members.iter().position(|c| Rc::ptr_eq(c, conn)) {
                members.swap_remove(i);
            }
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// `POST /api/v1/emit`: status, reason and JSON body.
    fn emit(&self, authorized: bool, body: &[u8]) -> (u16, &'static str, String) {
        /// The request body.
        #[derive(Deserialize)]
        struct Emit<'a> {
            #[serde(borrow)]
            event: Cow<'a, str>,
            #[serde(borrow)]
            data: &'a RawValue,
            #[serde(default, borrow)]
            room: Option<Cow<'a, str>>,
        }
        /// What the room defaults to.
        #[derive(Deserialize, Default)]
        struct Ids {
            #[serde(rename = "conversationId")]
            conversation: Option<Value>,
            #[serde(rename = "sessionId")]
            session: Option<Value>,
        }
        let error = |code, reason, message: &str| {
            (
                code,
                reason,
                json!({"error": message, "details": null}).to_string(),
            )
        };
        if !authorized {
            return error(401, "Unauthorized", "Invalid API key");
        }
        let Ok(req) = serde_json::from_slice::<Emit<'_>>(body) else {
            return error(400, "Bad Request", "Invalid JSON");
        };
        let room = match req.room {
            Some(r) => r.into_owned(),
            None => {
                let ids: Ids = serde_json::from_str(req.data.get()).unwrap_or_default();
                let conversation = ids
                    .conversation
                    .as_ref()
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                match (conversation, ids.session.as_ref().and_then(Value::as_str)) {
                    (Some(c), _) => format!("conversation:{c}"),
                    (None, Some(s)) => format!("session:{s}"),
                    (None, None) => return error(404, "Not Found", "Unknown event without a room"),
                }
            }
        };
        let frame = frame::event(&req.event, req.data.get());
        self.publish(&room, frame.bytes(), None);
        (
            200,
            "OK",
            json!({"room": room, "event": req.event}).to_string(),
        )
    }
}

/// What the HTTP phase of a connection came to.
enum Http {
    /// Needs more input: room for this many bytes in all.
    More(usize),
    /// Upgraded to WebSocket; the buffer holds what followed the request.
    Upgraded,
    /// Answered, and the connection is to be closed.
    Close,
}

/// Answers every complete request in `buf`.
fn http_step(server: &Server, conn: &Conn, buf: &mut Vec<u8>) -> Http {
    loop {
        let head = match http::parse(buf, &server.api_key) {
            Ok(Some(head)) => head,
            Ok(None) => return Http::More(0),
            Err(e) => {
                let (code, reason) = e.status();
                let body = json!({"error": reason, "details": null}).to_string();
                conn.send(&http::response(code, reason, &body, true));
                return Http::Close;
            }
        };
        let total = head.len + head.body;
        if buf.len() < total {
            return Http::More(total);
        }
        match head.kind {
            http::Kind::Upgrade { accept } => {
                conn.send(&http::switching(&accept));
                buf.drain(..total);
                return Http::Upgraded;
            }
            http::Kind::Emit { authorized } => {
                let (code, reason, body) = server.emit(authorized, &buf[head.len..total]);
                conn.send(&http::response(code, reason, &body, head.close));
            }
            http::Kind::NotFound => {
                let body = r#"{"error":"Not found","details":null}"#;
                conn.send(&http::response(404, "Not Found", body, head.close));
            }
        }
        buf.drain(..total);
        if head.close {
            return Http::Close;
        }
    }
}

/// A WebSocket connection's own state (not shared).
struct Session {
    /// The socket's id.
    id: u64,
    /// The authenticated user, once `op: connect` succeeded.
    user: Option<String>,
    /// Rooms joined, to leave on disconnect.
    rooms: Vec<String>,
    /// A fragmented text message being put together.
    message: Option<Vec<u8>>,
}

/// What a frame leads to.
enum Flow {
    /// Go on reading.
    Continue,
    /// The server closes with this code.
    Close(u16),
    /// The client closed and was answered.
    Closed,
}

/// Handles one client frame: messages, control frames, protocol errors.
fn on_frame(
    server: &Server,
    conn: &Rc<Conn>,
    s: &mut Session,
    opcode: u8,
    fin: bool,
    payload: &[u8],
) -> Flow {
    match opcode {
        OP_TEXT if s.message.is_some() => Flow::Close(1002),
        OP_TEXT if !fin => {
            s.message = Some(payload.to_vec());
            Flow::Continue
        }
        OP_TEXT => on_text(server, conn, s, payload),
        OP_CONTINUATION => {
            let Some(mut message) = s.message.take() else {
                return Flow::Close(1002);
            };
            if message.len() + payload.len() > MAX_MESSAGE {
                return Flow::Close(1009);
            }
            message.extend_from_slice(payload);
            if !fin {
                s.message = Some(message);
                return Flow::Continue;
            }
            on_text(server, conn, s, &message)
        }
        OP_BINARY => Flow::Close(1003),
        OP_PING => {
            let mut pong = Vec::with_capacity(2 + payload.len());
            pong.extend_from_slice(&[0x80 | OP_PONG, payload.len() as u8]);
            pong.extend_from_slice(payload);
            conn.send(&pong);
            Flow::Continue
        }
        OP_CLOSE => {
            // Echo the client's code, if it sent one.
            match payload.get(..2) {
                Some(code) => conn.send(&[0x80 | OP_CLOSE, 2, code[0], code[1]]),
                None => conn.send(&[0x80 | OP_CLOSE, 0]),
            }
            Flow::Closed
        }
        _ => Flow::Continue,
    }
}

/// The `conversationId` of an event's data.
#[derive(Deserialize)]
struct Conversation<'a> {
    #[serde(rename = "conversationId", borrow)]
    id: Cow<'a, str>,
}

/// Handles a text message: the handshake, then events.
fn on_text(server: &Server, conn: &Rc<Conn>, s: &mut Session, payload: &[u8]) -> Flow {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Flow::Close(1007);
    };
    let Some(user) = s.user.as_deref() else {
        return on_connect(server, conn, s, text);
    };
    /// An event frame.
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        event: Cow<'a, str>,
        #[serde(default, borrow)]
        data: Option<&'a RawValue>,
        #[serde(default, borrow)]
        id: Option<&'a RawValue>,
    }
    let Ok(ev) = serde_json::from_str::<Event<'_>>(text) else {
        return Flow::Continue;
    };
    let conversation = ev
        .data
        .and_then(|d| serde_json::from_str::<Conversation<'_>>(d.get()).ok())
        .filter(|c| !c.id.is_empty());
    match (&*ev.event, conversation) {
        ("conversation:join", None) => {
            if let Some(id) = ev.id {
                let data = r#"{"success":false,"error":"conversationId required"}"#;
                conn.send(ack(id, data).bytes());
            }
        }
        ("conversation:join", Some(c)) => {
            let room = format!("conversation:{}", c.id);
            if server.join(&room, conn) {
                s.rooms.push(room);
            }
            let data = format!("{{\"conversationId\":{},\"success\":true}}", json!(c.id));
            conn.send(frame::event("conversation:joined", &data).bytes());
            if let Some(id) = ev.id {
                conn.send(ack(id, &data).bytes());
            }
        }
        (event @ ("typing:start" | "typing:stop"), Some(c)) => {
            let mut f = FrameBuf::with_capacity(event.len() + c.id.len() + user.len() + 80);
            f.push_str("{\"event\":\"");
            f.push_str(event);
            f.push_str("\",\"data\":{\"conversationId\":");
            f.push_json_str(&c.id);
            f.push_str(",\"userId\":");
            f.push_json_str(user);
            f.push_str(if event == "typing:start" {
                ",\"isTyping\":true}}"
            } else {
                ",\"isTyping\":false}}"
            });
            let room = format!("conversation:{}", c.id);
            server.publish(&room, f.finish().bytes(), Some(conn));
        }
        _ => {}
    }
    Flow::Continue
}

/// The ack frame `{"ack":id,"data":data}`, the id as the client wrote it.
fn ack(id: &RawValue, data: &str) -> frame::Out {
    let mut f = FrameBuf::with_capacity(id.get().len() + data.len() + 17);
    f.push_str("{\"ack\":");
    f.push_str(id.get());
    f.push_str(",\"data\":");
    f.push_str(data);
    f.push_str("}");
    f.finish()
}

/// The first frame: `{"op":"connect","token":"..."}`.
fn on_connect(server: &Server, conn: &Rc<Conn>, s: &mut Session, text: &str) -> Flow {
    /// The connect frame.
    #[derive(Deserialize)]
    struct First<'a> {
        #[serde(borrow)]
        op: Cow<'a, str>,
        #[serde(default, borrow)]
        token: Option<Cow<'a, str>>,
    }
    let token = serde_json::from_str::<First<'_>>(text)
        .ok()
        .filter(|f| f.op == "connect")
        .and_then(|f| f.token)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return refuse(conn, "Authentication failed: No token provided");
    };
    let Ok(data) =
        jsonwebtoken::decode::<Claims>(token.as_bytes(), &server.decoding, &server.validation)
    else {
        return refuse(conn, "Authentication failed: Invalid token");
    };
    let mut f = FrameBuf::with_capacity(data.claims.sub.len() + 64);
    f.push_str("{\"op\":\"connected\",\"userId\":");
    f.push_json_str(&data.claims.sub);
    f.push_str(",\"socketId\":\"");
    f.push_str(&s.id.to_string());
    f.push_str("\"}");
    conn.send(f.finish().bytes());
    s.user = Some(data.claims.sub);
    Flow::Continue
}

/// Refuses the handshake: `op: error` with `message`, then close 4401.
fn refuse(conn: &Conn, message: &str) -> Flow {
    let text = json!({"op": "error", "message": message}).to_string();
    conn.send(frame::text(&text).bytes());
    Flow::Close(4401)
}

/// Serves one connection: HTTP requests, then, once upgraded, the native protocol.
async fn serve(server: Rc<Server>, stream: TcpStream) {
    let conn = Rc::new(Conn::new(stream));
    let mut buf = Vec::with_capacity(READ_BUF);
    loop {
        match http_step(&server, &conn, &mut buf) {
            Http::Upgraded => break,
            Http::More(want) => {
                if !conn.fill(&mut buf, want).await {
                    return;
                }
            }
            Http::Close => {
                conn.drain().await;
                return;
            }
        }
    }
    let key = server.next_id.get();
    server.next_id.set(key + 1);
    server.sockets.borrow_mut().insert(key, conn.clone());
    let mut s = Session {
        id: key,
        user: None,
        rooms: Vec::new(),
        message: None,
    };
    websocket(&server, &conn, &mut s, &mut buf).await;
    conn.drain().await;
    for room in &s.rooms {
        server.leave(room, &conn);
    }
    server.sockets.borrow_mut().remove(&key);
}

/// Reads and answers frames until either side closes.
async fn websocket(server: &Server, conn: &Rc<Conn>, s: &mut Session, buf: &mut Vec<u8>) {
    // Set once the server has sent its close frame: then only the client's close is awaited.
    let mut closing: Option<Instant> = None;
    // Set when, closing, the input no longer makes sense (the rest of an oversize frame, say):
    // then it is read and dropped until the client closes or the wait is over, so that the
    // socket is not closed with unread data (which would reset it before the close frame).
    let mut discarding = false;
    loop {
        let mut at = 0;
        let mut want = 0;
        if discarding {
            at = buf.len();
        }
        while at < buf.len() {
            let mut needed = 0;
            let flow = match frame::decode(&mut buf[at..], MAX_MESSAGE, &mut needed) {
                Ok(None) => {
                    want = needed;
                    break;
                }
                Ok(Some(f)) => {
                    let payload = at + f.payload.start..at + f.payload.end;
                    at += f.len;
                    match closing {
                        Some(_) if f.opcode == OP_CLOSE => Flow::Closed,
                        Some(_) => Flow::Continue,
                        None => on_frame(server, conn, s, f.opcode, f.fin, &buf[payload]),
                    }
                }
                Err(e) if closing.is_none() => Flow::Close(e.code()),
                Err(_) => {
                    discarding = true;
                    at = buf.len();
                    break;
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Closed => return,
                Flow::Close(code) => {
                    conn.send(&frame::close(code));
                    closing = Some(Instant::now() + LINGER);
                }
            }
        }
        buf.drain(..at);
        if buf.is_empty() && buf.capacity() > READ_BUF_KEEP {
            *buf = Vec::with_capacity(READ_BUF);
        }
        let more = match closing {
            Some(deadline) => tokio::time::timeout_at(deadline, conn.fill(buf, want))
                .await
                .unwrap_or(false),
            None => conn.fill(buf, want).await,
        };
        if !more {
            return;
        }
    }
}

/// Pings every socket every [`PING_EVERY`]: one ticker, not a timer per socket.
async fn ping_all(server: Rc<Server>) {
    let mut tick = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for c in server.sockets.borrow().values() {
            c.send(frame::PING);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = stop => {},
        () = term => {},
    }
}

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            _ => {
                eprintln!("usage: bare-native [--listen ADDR]  (env BENCH_SECRET, BENCH_API_KEY)");
                return ExitCode::from(2);
            }
        }
    }
    let (Ok(secret), Ok(api_key)) = (
        std::env::var("BENCH_SECRET"),
        std::env::var("BENCH_API_KEY"),
    ) else {
        eprintln!("bare-native: set BENCH_SECRET and BENCH_API_KEY");
        return ExitCode::from(2);
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 60;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let server = Rc::new(Server {
        decoding: DecodingKey::from_secret(secret.as_bytes()),
        validation,
        api_key,
        rooms: RefCell::default(),
        sockets: RefCell::default(),
        next_id: Cell::new(0),
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare-native: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::task::LocalSet::new().block_on(&rt, async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare-native: cannot bind {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::task::spawn_local(ping_all(server.clone()));
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::task::spawn_local(serve(server.clone(), stream));
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait for some to close.
                        eprintln!("bare-native: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        };
        tokio::select! {
            _ = accept => {},
            () = shutdown() => {},
        }
        ExitCode::SUCCESS
    })
}
