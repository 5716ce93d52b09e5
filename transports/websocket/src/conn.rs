//! Per-socket handles ([`WsConn`]) and the transport's list of its sockets ([`Hub`]).
//!
//! A socket's outbound queue is a `VecDeque` of shared, fully framed WebSocket frames behind
//! a mutex, with the socket task's waker beside it: a push is one short lock and at most one
//! wake-up, and a burst of pushes between two polls costs the task one wake-up and one
//! vectored write. The queue starts without an allocation and is given back when a burst
//! has drained.
//!
//! **Direct writes.** When the node serves the socket's connection itself, the socket has a
//! [`PeerSocket`] handle, and while the socket is *write-idle* (nothing queued, no frame half
//! written, tungstenite holding nothing, the task not running) a push writes the frame to the
//! kernel at once, under the queue's lock, with one `write(2)`: the task is not woken at all.
//! Whatever the kernel does not take goes to the queue, and the task writes it when the
//! socket is writable. The task takes the writer role back (under the same lock) each time
//! it runs and gives it up only when everything is written, so two writers never
//! interleave inside a frame.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use switchboard_core::{CloseReason, ConnId, Connection, PeerSocket, QueueFull};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Bytes;

use crate::frame;

/// A server-side close: the WebSocket close code and its reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    /// The close code.
    pub(crate) code: u16,
    /// The reason (at most 123 bytes).
    pub(crate) reason: &'static str,
}

impl Close {
    pub(crate) const CONNECTION_LIMIT: Close = Close {
        code: 4429,
        reason: "Connection limit",
    };
    pub(crate) const AUTH: Close = Close {
        code: 4401,
        reason: "Authentication failed",
    };
    pub(crate) const TOKEN_EXPIRED: Close = Close {
        code: 4401,
        reason: "Token expired",
    };
    pub(crate) const HANDSHAKE_TIMEOUT: Close = Close {
        code: 4408,
        reason: "Handshake timeout",
    };
    pub(crate) const PING_TIMEOUT: Close = Close {
        code: 4408,
        reason: "Ping timeout",
    };
    pub(crate) const RATE_ABUSE: Close = Close {
        code: 4429,
        reason: "Over the event rate for too long",
    };
    pub(crate) const KICKED: Close = Close {
        code: 4403,
        reason: "Disconnected by the server",
    };
    pub(crate) const SHUTDOWN: Close = Close {
        code: 1001,
        reason: "Server shutting down",
    };
    pub(crate) const RESET: Close = Close {
        code: 1012,
        reason: "Connect again",
    };
    pub(crate) const BINARY: Close = Close {
        code: 1003,
        reason: "Binary frames are not supported",
    };
    pub(crate) const INVALID_UTF8: Close = Close {
        code: 1007,
        reason: "Invalid UTF-8",
    };
    pub(crate) const PROTOCOL: Close = Close {
        code: 1002,
        reason: "Protocol error",
    };
    pub(crate) const TOO_BIG: Close = Close {
        code: 1009,
        reason: "Message too big",
    };
    pub(crate) const SERVER: Close = Close {
        code: 1000,
        reason: "Closed by the server",
    };
    pub(crate) const SLOW_CONSUMER: Close = Close {
        code: 1013,
        reason: "Slow consumer",
    };
}

/// A socket's pending output.
#[derive(Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    waker: Option<Waker>,
    close: Option<Close>,
    /// Set once the socket left the hub: later frames are dropped.
    done: bool,
    /// The connection's socket, for direct writes (see the module docs).
    raw: Option<PeerSocket>,
    /// The socket is write-idle: a push may write to `raw` itself.
    direct: bool,
}

/// One native socket, as the core and the fan-out index see it.
pub(crate) struct WsConn {
    id: ConnId,
    hub: Arc<Hub>,
    /// Recovery is on: room events carry their offset.
    pub(crate) tracks: bool,
    outbox: Mutex<Outbox>,
    /// Pings sent since the last pong.
    unanswered: AtomicU8,
}

impl WsConn {
    /// A new socket handle with a fresh id.
    pub(crate) fn new(hub: Arc<Hub>, raw: Option<PeerSocket>, tracks: bool) -> Arc<WsConn> {
        Arc::new(WsConn {
            id: next_socket_id(),
            hub,
            tracks,
            outbox: Mutex::new(Outbox {
                raw,
                ..Outbox::default()
            }),
            unanswered: AtomicU8::new(0),
        })
    }

    /// The socket id.
    pub(crate) fn socket_id(&self) -> &ConnId {
        &self.id
    }

    /// Writes a frame straight to a write-idle socket, else queues it and wakes the socket
    /// task; past the queue limit the socket is closed.
    pub(crate) fn push(&self, frame: Bytes) {
        let waker = {
            let mut o = self.outbox.lock();
            if o.done || o.close.is_some() {
                return;
            }
            let mut frame = frame;
            if o.direct && o.frames.is_empty() {
                o.direct = false;
                if let Some(raw) = &o.raw {
                    match raw.try_write(&frame) {
                        Ok(n) if n == frame.len() => {
                            o.direct = true;
                            return;
                        }
                        // The rest waits for the task; an error is the task's to find.
                        Ok(n) => frame = frame.slice(n..),
                        Err(_) => {}
                    }
                }
            }
            if o.frames.len() >= self.hub.max_queued {
                // Keep only the front frame, which may be half written.
                o.frames.truncate(1);
                o.frames.shrink_to_fit();
                o.close = Some(Close::SLOW_CONSUMER);
            } else {
                o.frames.push_back(frame);
            }
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The ticker's turn: a ping, or a close when the last two pings went unanswered.
    pub(crate) fn ping(&self) {
        let sent = self.unanswered.load(Ordering::Relaxed);
        if sent >= 2 {
            tracing::debug!(socket = %self.id, "no pong to the last two pings; closing");
            self.request_close(Close::PING_TIMEOUT);
        } else {
            self.unanswered.store(sent + 1, Ordering::Relaxed);
            self.push(Bytes::from_static(crate::frame::PING));
        }
    }

    /// The client answered a ping.
    pub(crate) fn pong(&self) {
        self.unanswered.store(0, Ordering::Relaxed);
    }

    /// Asks the socket task to close the socket with `close` (the first request wins).
    pub(crate) fn request_close(&self, close: Close) {
        let waker = {
            let mut o = self.outbox.lock();
            if o.done {
                return;
            }
            o.close.get_or_insert(close);
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Registers the task's waker and takes the writer role; returns a pending close request.
    pub(crate) fn arm(&self, waker: &Waker) -> Option<Close> {
        let mut o = self.outbox.lock();
        o.direct = false;
        match &o.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => o.waker = Some(waker.clone()),
        }
        o.close
    }

    /// The task is done writing (tungstenite holds nothing, no frame is half written): pushes
    /// may write directly until the task runs again, if the queue is empty.
    pub(crate) fn release_writer(&self) {
        let mut o = self.outbox.lock();
        o.direct = o.raw.is_some() && o.frames.is_empty() && o.close.is_none() && !o.done;
    }

    /// Clones up to `into.len()` frames from the front of the queue; returns how many.
    pub(crate) fn peek(&self, into: &mut [Bytes]) -> usize {
        let o = self.outbox.lock();
        let mut n = 0;
        for (slot, f) in into.iter_mut().zip(o.frames.iter()) {
            *slot = f.clone();
            n += 1;
        }
        n
    }

    /// Drops the first `n` frames (written); gives the queue's memory back once it is empty.
    pub(crate) fn consume(&self, n: usize) {
        let mut o = self.outbox.lock();
        let n = n.min(o.frames.len());
        o.frames.drain(..n);
        if o.frames.is_empty() {
            // An idle socket holds no queue memory at all.
            o.frames = VecDeque::new();
        }
    }

    /// Stops accepting frames (the socket left the hub); what is queued can still be taken.
    pub(crate) fn finish(&self) {
        let mut o = self.outbox.lock();
        o.done = true;
        o.direct = false;
        o.raw = None;
        o.waker = None;
    }
}

impl Connection for WsConn {
    fn id(&self) -> &ConnId {
        &self.id
    }

    fn send(&self, event: &str, payload: &RawValue) {
        self.push(frame::event(event, payload));
    }

    fn send_event(&self, event: &str, payload: &RawValue, offset: Option<&str>) {
        match offset {
            Some(o) if self.tracks => self.push(frame::event_with_offset(event, payload, o)),
            _ => self.push(frame::event(event, payload)),
        }
    }

    fn try_send_event(
        &self,
        event: &str,
        payload: &RawValue,
        offset: Option<&str>,
    ) -> Result<(), QueueFull> {
        // Leave half the queue for what the socket is sent meanwhile (replies, errors).
        {
            let o = self.outbox.lock();
            if o.done || o.close.is_some() {
                return Ok(());
            }
            if o.frames.len() >= (self.hub.max_queued / 2).max(1) {
                return Err(QueueFull);
            }
        }
        self.send_event(event, payload, offset);
        Ok(())
    }

    fn close(&self, reason: CloseReason) {
        self.request_close(match reason {
            CloseReason::TokenExpired => Close::TOKEN_EXPIRED,
            CloseReason::RateAbuse => Close::RATE_ABUSE,
            CloseReason::Shutdown => Close::SHUTDOWN,
            CloseReason::Kicked => Close::KICKED,
            CloseReason::Reset => Close::RESET,
            _ => Close::SERVER,
        });
    }
}

type Members = HashMap<ConnId, Arc<WsConn>>;

/// The transport's sockets, to ping them and close them at shutdown.
pub(crate) struct Hub {
    sockets: RwLock<Members>,
    max_queued: usize,
    ping_interval: Duration,
    pinging: AtomicBool,
    closing: AtomicBool,
    emptied: Notify,
}

impl Hub {
    /// An empty hub whose sockets queue at most `max_queued` frames and are pinged every `ping_interval`.
    pub(crate) fn new(max_queued: usize, ping_interval: Duration) -> Self {
        Hub {
            sockets: RwLock::new(HashMap::new()),
            max_queued: max_queued.max(1),
            ping_interval,
            pinging: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            emptied: Notify::new(),
        }
    }

    /// Starts the one ticker that pings every socket (once; call from inside the runtime).
    ///
    /// One timer for all sockets instead of one per socket: an idle socket's task holds no
    /// timer, and a tick costs one queued frame per socket.
    pub(crate) fn start_pinging(self: &Arc<Self>) {
        if self.pinging.swap(true, Ordering::AcqRel) {
            return;
        }
        let hub = Arc::downgrade(self);
        let period = self.ping_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = hub.upgrade() else { return };
                if hub.is_closing() {
                    return;
                }
                for conn in hub.sockets.read().values() {
                    conn.ping();
                }
            }
        });
    }

    /// Adds an authenticated socket (it now receives namespace-wide events).
    pub(crate) fn insert(&self, conn: &Arc<WsConn>) {
        self.sockets.write().insert(conn.id.clone(), conn.clone());
    }

    /// Removes a socket.
    pub(crate) fn remove(&self, conn: &WsConn) {
        let mut sockets = self.sockets.write();
        sockets.remove(&conn.id);
        if sockets.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// How many sockets are connected.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.sockets.read().len()
    }

    /// Whether the transport is shutting down (new sockets are refused).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Refuses new sockets, asks every socket to close and waits until they did or `grace` passed.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        let all: Vec<Arc<WsConn>> = self.sockets.read().values().cloned().collect();
        for conn in all {
            conn.request_close(Close::SHUTDOWN);
        }
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.sockets.read().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                tracing::warn!(
                    open = self.sockets.read().len(),
                    "native sockets still open after the shutdown grace period"
                );
                return;
            }
        }
    }
}

/// A socket id: 22 URL-safe characters, unique in this process and random across processes.
pub(crate) fn next_socket_id() -> ConnId {
    static STATE: OnceLock<(RandomState, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (hasher, prefix) = STATE.get_or_init(|| {
        let s = RandomState::new();
        let prefix = s.hash_one(std::process::id());
        (s, prefix)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64's finaliser is a bijection: distinct counters give distinct ids.
    let mut z = n.wrapping_add(hasher.hash_one(0u8));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let mut id = String::with_capacity(22);
    push_b64(&mut id, *prefix);
    push_b64(&mut id, z);
    ConnId::new(id)
}

/// Appends 64 bits as 11 URL-safe base64 characters.
fn push_b64(out: &mut String, mut v: u64) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for _ in 0..11 {
        out.push(char::from(ALPHABET[(v & 63) as usize]));
        v >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn drain(c: &WsConn) -> Vec<String> {
        let mut buf = [const { Bytes::new() }; 64];
        let n = c.peek(&mut buf);
        c.consume(n);
        buf[..n]
            .iter()
            .map(|f| crate::frame::tests::payload(f).to_owned())
            .collect()
    }

    #[test]
    fn ids_are_unique_and_url_safe() {
        let ids: HashSet<String> = (0..10_000)
            .map(|_| next_socket_id().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| {
            i.len() == 22
                && i.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }));
    }

    #[test]
    fn deliveries_go_to_the_recipients_and_share_one_buffer() {
        use switchboard_core::transport::MemberMap;
        use switchboard_core::{Delivery, Recipients, Room, Transport};
        let hub = Arc::new(Hub::new(16, Duration::from_secs(25)));
        let (a, b, c) = (
            WsConn::new(hub.clone(), None, false),
            WsConn::new(hub.clone(), None, false),
            WsConn::new(hub.clone(), None, false),
        );
        for conn in [&a, &b, &c] {
            hub.insert(conn);
        }
        let t = crate::WebSocketTransport::new(
            crate::WebSocketConfig::default(),
            switchboard_core::GatewayHandle::detached(),
            switchboard_core::Dur::secs(1),
        );
        let room: Room = Arc::from("conversation:1");
        let mut members = MemberMap::new();
        for conn in [&a, &b] {
            members.insert(conn.id.clone(), conn.clone() as Arc<dyn Connection>);
        }
        let d = Delivery::encode(
            "typing:start",
            Some(room.clone()),
            &serde_json::json!({"x": 1}),
        )
        .expect("encode")
        .except(Some(a.id.clone()));
        t.deliver(
            &d,
            Recipients::new(&members, d.except.as_ref(), Some(&room)),
        );
        assert!(drain(&a).is_empty());
        assert_eq!(
            drain(&b),
            vec![r#"{"event":"typing:start","data":{"x":1}}"#]
        );
        assert!(drain(&c).is_empty());

        let all = Delivery::encode("user:online", None, &serde_json::json!({"userId": "u"}))
            .expect("encode");
        t.deliver(&all, Recipients::new(&members, None, None));
        let (mut fa, mut fb) = ([Bytes::new()], [Bytes::new()]);
        assert_eq!((a.peek(&mut fa), b.peek(&mut fb)), (1, 1));
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr(), "one buffer, shared");
        a.consume(1);
        b.consume(1);
        assert!(drain(&c).is_empty());

        hub.remove(&c);
        assert_eq!(hub.count(), 2);
    }

    #[test]
    fn a_full_queue_closes_the_slow_consumer() {
        let hub = Arc::new(Hub::new(2, Duration::from_secs(25)));
        let c = WsConn::new(hub, None, false);
        for i in 0..3u8 {
            c.push(Bytes::from(vec![i]));
        }
        assert_eq!(c.arm(Waker::noop()), Some(Close::SLOW_CONSUMER));
        let mut buf = [const { Bytes::new() }; 4];
        assert_eq!(c.peek(&mut buf), 1, "only the front frame is kept");
        assert_eq!(buf[0].as_ref(), [0]);
        c.push(Bytes::from_static(b"x"));
        assert_eq!(c.peek(&mut buf), 1, "nothing is queued once closing");
    }

    #[tokio::test]
    async fn a_write_idle_socket_takes_pushes_directly_until_the_task_runs() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let raw = PeerSocket::new(Arc::new(server));
        let c = WsConn::new(
            Arc::new(Hub::new(8, Duration::from_secs(25))),
            Some(raw),
            false,
        );

        c.push(Bytes::from_static(b"queued,"));
        assert_eq!(drain_raw(&c), 1, "the task holds the writer role at first");
        c.release_writer();
        c.push(Bytes::from_static(b"direct,"));
        c.push(Bytes::from_static(b"again,"));
        assert_eq!(drain_raw(&c), 0, "written to the socket, not queued");
        assert_eq!(c.arm(Waker::noop()), None);
        c.push(Bytes::from_static(b"task"));
        assert_eq!(drain_raw(&c), 1, "once the task runs, pushes queue again");
        c.finish();
        c.release_writer();
        c.push(Bytes::from_static(b"late"));
        assert_eq!(
            drain_raw(&c),
            0,
            "nothing is written once the socket is done"
        );

        let mut got = [0u8; 13];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"direct,again,");
    }

    fn drain_raw(c: &WsConn) -> usize {
        let mut buf = [const { Bytes::new() }; 8];
        let n = c.peek(&mut buf);
        c.consume(n);
        n
    }

    #[test]
    fn the_first_close_request_wins_and_pushes_wake_the_task() {
        let hub = Arc::new(Hub::new(8, Duration::from_secs(25)));
        let c = WsConn::new(hub, None, false);
        c.close(CloseReason::TokenExpired);
        c.close(CloseReason::Shutdown);
        assert_eq!(c.arm(Waker::noop()), Some(Close::TOKEN_EXPIRED));
        let c2 = WsConn::new(Arc::new(Hub::new(8, Duration::from_secs(25))), None, false);
        assert_eq!(c2.arm(Waker::noop()), None);
        c2.finish();
        c2.push(Bytes::from_static(b"x"));
        assert_eq!(c2.peek(&mut [Bytes::new()]), 0);
    }
}
