//! A live connection's state in the core ([`Session`]), and the [`Ticket`]s that put one
//! socket's room changes in the order its events arrived.
//!
//! Transports may handle a socket's events concurrently (socketioxide runs each handler in a
//! task of its own). A transport takes a ticket for each event as it reads it, in the order
//! it reads them; room joins and leaves made while handling an event wait until every earlier
//! ticket of the socket is done, so a socket's joins and leaves apply in the order it sent
//! them. Tickets of different sockets never wait for each other.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::auth::Identity;
use crate::broker::{ConnId, Room};
use crate::clock::iso8601_now;
use crate::expiry::ExpiryKey;
use crate::limits::TokenBucket;
use crate::recovery::Tracker;
use crate::transport::{CloseReason, Connection, TransportId};

/// A live connection's state in the core.
pub struct Session {
    pub(crate) conn: Arc<dyn Connection>,
    pub(crate) transport: TransportId,
    identity: RwLock<Arc<Identity>>,
    /// The rooms the socket is in; changed only by the rooms component, under a ticket.
    pub(crate) rooms: Mutex<Vec<Room>>,
    pub(crate) bucket: Mutex<TokenBucket>,
    order: Arc<Turnstile>,
    /// Its place in the node's expiry timer, while it has one.
    pub(crate) expiry: Mutex<Option<ExpiryKey>>,
    /// With recovery on and a client that tracks offsets: where it is in its rooms.
    pub(crate) tracker: Option<Tracker>,
    /// Turns `true` once the core has unregistered the closed session.
    pub(crate) ended: tokio::sync::watch::Sender<bool>,
    /// When it connected (ms since the epoch, by this node's clock).
    pub(crate) connected_ms: u64,
    /// The server is closing it: it joins no room any more.
    closing: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", self.id()).finish()
    }
}

impl Session {
    pub(crate) fn new(
        conn: Arc<dyn Connection>,
        transport: TransportId,
        identity: Identity,
        bucket: TokenBucket,
        tracker: Option<Tracker>,
    ) -> Self {
        Session {
            conn,
            transport,
            identity: RwLock::new(Arc::new(identity)),
            rooms: Mutex::new(Vec::new()),
            bucket: Mutex::new(bucket),
            order: Arc::new(Turnstile::default()),
            expiry: Mutex::new(None),
            tracker,
            ended: tokio::sync::watch::Sender::new(false),
            connected_ms: crate::broker::now_us() / 1000,
            closing: AtomicBool::new(false),
        }
    }

    /// Marks it as being closed by the server: from now on it joins no room.
    pub(crate) fn mark_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether the server is closing it.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Its recovery id (`pid`), when the client tracks offsets and recovery is on.
    pub fn recovery_id(&self) -> Option<Arc<str>> {
        self.tracker.as_ref().map(|t| t.pid.lock().clone())
    }

    /// Whether deliveries are held for it (its replay is not out yet).
    pub(crate) fn is_held(&self) -> bool {
        self.tracker
            .as_ref()
            .is_some_and(|t| t.state.lock().pending)
    }

    /// Keeps a delivery for it until its replay is out.
    pub(crate) fn hold(&self, delivery: Arc<crate::broker::Delivery>, seq: Option<u64>) {
        if let Some(t) = &self.tracker {
            t.state.lock().held.push((delivery, seq));
        }
    }

    /// The socket id.
    pub fn id(&self) -> &ConnId {
        self.conn.id()
    }
    /// The current identity (replaced by `auth:refresh`).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.read().clone()
    }
    pub(crate) fn set_identity(&self, identity: Identity) {
        *self.identity.write() = Arc::new(identity);
    }
    /// The user id.
    pub fn user_id(&self) -> String {
        self.identity.read().user_id.clone()
    }
    /// The rooms this socket is in.
    pub fn rooms(&self) -> Vec<Room> {
        self.rooms.lock().clone()
    }
    /// Whether the socket is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms.lock().iter().any(|r| &**r == room)
    }
    /// The transport the socket came through.
    pub fn transport(&self) -> TransportId {
        self.transport
    }
    /// Takes the next ticket: call it for each event as the transport reads it, in order.
    pub fn ticket(&self) -> Ticket {
        self.order.issue()
    }
    /// Sends one event to this socket alone.
    pub fn send_value(&self, event: &str, data: &Value) {
        if let Ok(raw) = serde_json::value::to_raw_value(data) {
            self.conn.send(event, &raw);
        }
    }
    /// Sends the contract's `error` event `{message, timestamp}`.
    pub fn send_error(&self, message: &str) {
        self.send_value(
            "error",
            &json!({ "message": message, "timestamp": iso8601_now() }),
        );
    }
    /// Sends pre-encoded JSON to this socket alone.
    pub fn send_raw(&self, event: &str, payload: &RawValue) {
        self.conn.send(event, payload);
    }
    /// Closes the connection.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.mark_closing();
        self.conn.close(reason);
    }
}

/// One event's place in its socket's order of room changes; done when dropped.
pub struct Ticket {
    n: u64,
    owner: Arc<Turnstile>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ticket").field(&self.n).finish()
    }
}

impl Ticket {
    /// Waits until every earlier ticket of the socket is done.
    pub(crate) async fn turn(&self) {
        self.owner.wait(self.n).await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.owner.release(self.n);
    }
}

/// Issues tickets in order and lets each through once all earlier ones are done.
#[derive(Default)]
struct Turnstile {
    state: Mutex<TurnState>,
    turn: Notify,
}

#[derive(Default)]
struct TurnState {
    /// The next ticket to issue.
    issued: u64,
    /// Every ticket below it is done.
    frontier: u64,
    /// Done tickets above the frontier.
    done: BTreeSet<u64>,
}

impl Turnstile {
    fn issue(self: &Arc<Self>) -> Ticket {
        let mut s = self.state.lock();
        let n = s.issued;
        s.issued += 1;
        Ticket {
            n,
            owner: self.clone(),
        }
    }

    async fn wait(&self, n: u64) {
        loop {
            let turn = self.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            if self.state.lock().frontier >= n {
                return;
            }
            turn.await;
        }
    }

    fn release(&self, n: u64) {
        let advanced = {
            let mut s = self.state.lock();
            if n != s.frontier {
                s.done.insert(n);
                false
            } else {
                s.frontier += 1;
                loop {
                    let next = s.frontier;
                    if !s.done.remove(&next) {
                        break;
                    }
                    s.frontier += 1;
                }
                true
            }
        };
        if advanced {
            self.turn.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_ticket_waits_for_every_earlier_one() {
        let t = Arc::new(Turnstile::default());
        let first = t.issue();
        let second = t.issue();
        let third = t.issue();
        first.turn().await;
        // The third cannot go while the second is out, even once the first is done.
        let waiting = tokio::spawn(async move {
            third.turn().await;
            third
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        second.turn().await;
        drop(second);
        let third = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the third ticket's turn comes")
            .expect("task");
        drop(third);
        assert_eq!(t.state.lock().frontier, 3);
    }

    #[tokio::test]
    async fn tickets_done_out_of_order_still_advance() {
        let t = Arc::new(Turnstile::default());
        let a = t.issue();
        let b = t.issue();
        let c = t.issue();
        drop(c);
        drop(b);
        assert_eq!(t.state.lock().frontier, 0);
        drop(a);
        let s = t.state.lock();
        assert_eq!((s.frontier, s.done.len()), (3, 0));
    }
}
