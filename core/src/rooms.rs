//! Room membership, owned once: socket → rooms and room → local members, and local delivery.
//!
//! Every join and leave of every transport goes through [`Rooms`]; nothing else keeps who is
//! in which room. A session's own list of rooms ([`Session::rooms`]) and the transports'
//! mirrors ([`Connection::join`], for Socket.IO's encode-once rooms) are written here, under
//! the room's lock, and nowhere else.
//!
//! * **One socket's changes apply in order.** Callers hold the socket's
//!   [`Ticket`](crate::session::Ticket) turn, so one socket's joins and leaves run one at a
//!   time in the order it sent them; a second join of a room it is in counts nothing.
//!   Different sockets never wait for each other, except that a join of a room this node
//!   is not yet subscribed to waits for that subscription.
//! * **The broker hears first and last only.** A room's first local member makes the room
//!   [`subscribe`](RoomBroker::subscribe) (the join answers once that returns, so the join
//!   is effective cluster-wide); its last leaving makes it
//!   [`unsubscribe`](RoomBroker::unsubscribe). Per room, those calls strictly alternate: a
//!   gate (an async lock per room) orders them, and a join that comes while the last
//!   member's unsubscribe is under way waits for it, then subscribes again.
//! * **Local delivery happens here.** The broker hands each delivery to the node's
//!   [`Inbox`](crate::Inbox); [`Rooms::deliver`] gives each transport its recipients among
//!   the room's members, holding the room while the transport writes, so a socket taken
//!   out of a room receives nothing of it once the leave has returned.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use parking_lot::RwLock;
use prometheus_client::metrics::gauge::Gauge;

use crate::broker::{BrokerError, ConnId, Delivery, Room, RoomBroker};
use crate::session::Session;
use crate::transport::{MemberMap, Recipients, Transport, TransportId};

/// How many locks the room table is split into.
const SHARDS: usize = 64;

/// One lock's share of the room table.
type Shard = RwLock<HashMap<Room, Arc<Entry>>>;

/// The node's rooms and sessions.
pub(crate) struct Rooms {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Every local session's connection, by transport: the recipients of namespace-wide events.
    all: RwLock<Vec<MemberMap>>,
    /// By [`TransportId`]: index 0 delivers to connections registered by Rust code.
    transports: Vec<Arc<dyn Transport>>,
    broker: Arc<dyn RoomBroker>,
    /// Rooms with local members.
    gauge: Gauge<i64, AtomicI64>,
}

/// One room with local members (or on its way to or from having some).
struct Entry {
    members: RwLock<Members>,
    /// Orders this room's subscribe and unsubscribe calls.
    gate: tokio::sync::Mutex<()>,
}

struct Members {
    /// By transport.
    by_transport: Vec<MemberMap>,
    count: usize,
    /// The broker has the room subscribed (changed only under the gate).
    subscribed: bool,
    /// Joins may add members without the gate: the room is subscribed and no last member's
    /// unsubscribe is pending.
    open: bool,
    /// The entry left the table; a join that still holds it starts over.
    removed: bool,
}

/// The transport of connections that Rust code registers itself: one send per recipient.
struct Direct;

#[async_trait::async_trait]
impl Transport for Direct {
    fn name(&self) -> &str {
        "direct"
    }
    fn router(&self) -> axum::Router {
        axum::Router::new()
    }
    async fn shutdown(&self) {}
}

impl Rooms {
    /// Rooms delivering through `transports` (in [`TransportId`] order, from 1) and
    /// subscribing through `broker`.
    pub(crate) fn new(
        transports: Vec<Arc<dyn Transport>>,
        broker: Arc<dyn RoomBroker>,
        gauge: Gauge<i64, AtomicI64>,
    ) -> Self {
        let mut all_transports: Vec<Arc<dyn Transport>> = Vec::with_capacity(transports.len() + 1);
        all_transports.push(Arc::new(Direct));
        all_transports.extend(transports);
        let n = all_transports.len();
        Rooms {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            all: RwLock::new((0..n).map(|_| MemberMap::new()).collect()),
            transports: all_transports,
            broker,
            gauge,
        }
    }

    /// The node's transports (not the direct one).
    pub(crate) fn transports(&self) -> &[Arc<dyn Transport>] {
        &self.transports[1..]
    }

    fn shard(&self, room: &str) -> &Shard {
        let i = self.hasher.hash_one(room) as usize % self.shards.len();
        &self.shards[i]
    }

    fn slot(&self, t: TransportId) -> usize {
        if t.0 < self.transports.len() { t.0 } else { 0 }
    }

    /// A session now receives namespace-wide deliveries.
    pub(crate) fn register(&self, session: &Arc<Session>) {
        let slot = self.slot(session.transport);
        self.all.write()[slot].insert(session.id().clone(), session.conn.clone());
    }

    /// A session no longer receives namespace-wide deliveries.
    pub(crate) fn unregister(&self, session: &Session) {
        let slot = self.slot(session.transport);
        self.all.write()[slot].remove(session.id());
    }

    fn entry(&self, room: &Room) -> Option<Arc<Entry>> {
        self.shard(room).read().get(room).cloned()
    }

    fn entry_or_create(&self, room: &Room) -> Arc<Entry> {
        if let Some(e) = self.entry(room) {
            return e;
        }
        let n = self.transports.len();
        self.shard(room)
            .write()
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    members: RwLock::new(Members {
                        by_transport: (0..n).map(|_| MemberMap::new()).collect(),
                        count: 0,
                        subscribed: false,
                        open: false,
                        removed: false,
                    }),
                    gate: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// Adds `session` to `room`; effective cluster-wide when it returns. The caller holds the
    /// session's turn and has checked the socket is not in the room yet.
    pub(crate) async fn join(
        &self,
        session: &Arc<Session>,
        room: &Room,
    ) -> Result<(), BrokerError> {
        loop {
            let entry = self.entry_or_create(room);
            {
                let mut m = entry.members.write();
                if m.removed {
                    continue;
                }
                if m.open {
                    self.add(&mut m, session, room);
                    return Ok(());
                }
            }
            let gate = entry.gate.lock().await;
            let subscribed = {
                let m = entry.members.read();
                if m.removed {
                    continue;
                }
                m.subscribed
            };
            if !subscribed && let Err(e) = self.broker.subscribe(room).await {
                drop(gate);
                self.remove_if_unused(room, &entry);
                return Err(e);
            }
            let mut m = entry.members.write();
            if !m.subscribed {
                m.subscribed = true;
                self.gauge.inc();
            }
            m.open = true;
            self.add(&mut m, session, room);
            return Ok(());
        }
    }

    fn add(&self, m: &mut Members, session: &Arc<Session>, room: &Room) {
        let slot = self.slot(session.transport);
        if m.by_transport[slot]
            .insert(session.id().clone(), session.conn.clone())
            .is_none()
        {
            m.count += 1;
        }
        session.conn.join(room);
        let mut rooms = session.rooms.lock();
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }

    /// Takes `session` out of `room`; `false` when it was not in it. The caller holds the
    /// session's turn.
    pub(crate) async fn leave(&self, session: &Session, room: &Room) -> bool {
        let Some(entry) = self.entry(room) else {
            session.rooms.lock().retain(|r| r != room);
            return false;
        };
        let last = {
            let mut m = entry.members.write();
            let slot = self.slot(session.transport);
            let was_in = m.by_transport[slot].remove(session.id()).is_some();
            session.rooms.lock().retain(|r| r != room);
            if !was_in {
                return false;
            }
            session.conn.leave(room);
            m.count -= 1;
            if m.count == 0 {
                // Joins from now on wait for the unsubscribe below, then subscribe again.
                m.open = false;
                true
            } else {
                false
            }
        };
        if last {
            let gate = entry.gate.lock().await;
            let unsubscribe = {
                let m = entry.members.read();
                m.count == 0 && m.subscribed
            };
            if unsubscribe {
                if let Err(e) = self.broker.unsubscribe(room).await {
                    tracing::debug!(room = %room, error = %e, "unsubscribe failed");
                }
                entry.members.write().subscribed = false;
                self.gauge.dec();
            }
            drop(gate);
            self.remove_if_unused(room, &entry);
        }
        true
    }

    /// Takes `session` out of every room (it closed). The caller holds its turn.
    pub(crate) async fn leave_all(&self, session: &Session) {
        let rooms = session.rooms();
        for room in &rooms {
            self.leave(session, room).await;
        }
    }

    /// Drops a room's entry that has no members, no subscription and nobody at its gate.
    fn remove_if_unused(&self, room: &Room, entry: &Arc<Entry>) {
        let mut shard = self.shard(room).write();
        let Some(current) = shard.get(room) else {
            return;
        };
        if !Arc::ptr_eq(current, entry) {
            return;
        }
        let Ok(_gate) = entry.gate.try_lock() else {
            return;
        };
        let mut m = entry.members.write();
        if m.count == 0 && !m.subscribed {
            m.removed = true;
            shard.remove(room);
        }
    }

    /// Writes `delivery` to this node's recipients, each transport framing it once.
    pub(crate) fn deliver(&self, delivery: &Delivery) {
        let except = delivery.except.as_ref();
        match &delivery.room {
            Some(room) => {
                let Some(entry) = self.entry(room) else {
                    return;
                };
                let m = entry.members.read();
                for (t, members) in self.transports.iter().zip(&m.by_transport) {
                    if !members.is_empty() {
                        t.deliver(delivery, Recipients::new(members, except, Some(room)));
                    }
                }
            }
            None => {
                let all = self.all.read();
                for (t, members) in self.transports.iter().zip(all.iter()) {
                    if !members.is_empty() {
                        t.deliver(delivery, Recipients::new(members, except, None));
                    }
                }
            }
        }
    }

    /// How many local members `room` has.
    pub(crate) fn members(&self, room: &str) -> usize {
        self.shard(room)
            .read()
            .get(room)
            .map_or(0, |e| e.members.read().count)
    }

    /// The local members of `room`, by id.
    pub(crate) fn member_ids(&self, room: &str) -> Vec<ConnId> {
        let Some(entry) = self.shard(room).read().get(room).cloned() else {
            return Vec::new();
        };
        let m = entry.members.read();
        m.by_transport
            .iter()
            .flat_map(|map| map.keys().cloned())
            .collect()
    }

    /// How many rooms this node has subscribed (rooms with local members).
    pub(crate) fn subscribed(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .values()
                    .filter(|e| e.members.read().subscribed)
                    .count()
            })
            .sum()
    }
}
