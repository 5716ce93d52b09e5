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
//! * **Every kept event gets a node sequence number**, under the room's lock, and with
//!   recovery on it is recorded in the room's ring ([`crate::recovery`]) and sent with its
//!   offset to the sockets that track offsets. A recovering socket is a *held* member until
//!   its replay is out: what arrives meanwhile is kept for it, then written before anything
//!   live, without what the replay already carried.

use foldhash::fast::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::gauge::Gauge;

use crate::broker::{BrokerError, ConnId, Delivery, Position, Room, RoomBroker};
use crate::recovery::{ClientOffset, Floor, Rings};
use crate::session::Session;
use crate::transport::{MemberMap, Recipients, Transport, TransportId};

/// The position of a room whose broker keeps no history: of no stream, never recoverable.
pub(crate) fn no_history() -> Position {
    Position::new("none", 0)
}

/// How many namespace-wide deliveries (presence) the node keeps for recovering sockets.
const PRESENCE_KEPT: usize = 1024;

/// What the node keeps for recovery: the rooms' rings and the recent presence changes.
pub(crate) struct Keeper {
    pub(crate) rings: Rings,
    pub(crate) tag: String,
    window: Duration,
    presence: Mutex<PresenceKept>,
}

/// The presence changes a node delivered, for the recovery window.
struct PresenceKept {
    /// `(seq, delivery, when)`, oldest first.
    entries: VecDeque<(u64, Arc<Delivery>, Instant)>,
    /// The newest publish time (µs) of a change this node no longer holds: from when the
    /// node started (it holds nothing older), then the newest dropped entry's.
    complete_after_us: u64,
}

impl Keeper {
    /// What a node with tag `tag` keeps: rings of `cap` entries for `window`.
    pub(crate) fn new(tag: String, cap: usize, window: Duration) -> Self {
        Keeper {
            rings: Rings::new(cap, window),
            tag,
            window,
            presence: Mutex::new(PresenceKept {
                entries: VecDeque::new(),
                complete_after_us: crate::broker::now_us(),
            }),
        }
    }

    fn keep_presence(&self, seq: u64, d: &Delivery) {
        let now = Instant::now();
        let mut p = self.presence.lock();
        p.entries.push_back((seq, Arc::new(d.clone()), now));
        // Kept a little longer than the window: a session placed without its old node
        // replays from up to the window plus the margin ago.
        let keep = self.window + 2 * Duration::from_micros(crate::recovery::PRESENCE_MARGIN_US);
        while p.entries.len() > PRESENCE_KEPT
            || p.entries
                .front()
                .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > keep)
        {
            if let Some((_, gone, _)) = p.entries.pop_front() {
                p.complete_after_us = p.complete_after_us.max(gone.published_us);
            }
        }
    }

    /// The presence changes published after `us` (µs since the epoch), in the order this
    /// node delivered them; `None` when it may not hold all of them (it started later, or
    /// has dropped one as old).
    pub(crate) fn presence_since(&self, us: u64) -> Option<Vec<Delivery>> {
        let p = self.presence.lock();
        if p.complete_after_us > us {
            return None;
        }
        Some(
            p.entries
                .iter()
                .filter(|(_, d, _)| d.published_us > us)
                .map(|(_, d, _)| (**d).clone())
                .collect(),
        )
    }

    /// The newest `k` presence changes as `(seq, publish time in µs)`, oldest first.
    pub(crate) fn newest_presence(&self, k: usize) -> Vec<(u64, u64)> {
        let p = self.presence.lock();
        let skip = p.entries.len().saturating_sub(k);
        p.entries
            .iter()
            .skip(skip)
            .map(|(s, d, _)| (*s, d.published_us))
            .collect()
    }

    /// The presence changes delivered after node sequence `after`.
    pub(crate) fn presence_after(&self, after: u64) -> Vec<Delivery> {
        self.presence
            .lock()
            .entries
            .iter()
            .filter(|(s, _, _)| *s > after)
            .map(|(_, d, _)| (**d).clone())
            .collect()
    }
}

/// How many locks the room table is split into.
const SHARDS: usize = 64;

/// One lock's share of the room table.
type Shard = RwLock<HashMap<Room, Arc<Entry>, RandomState>>;

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
    /// Publish-to-write latency of room events.
    latency: prometheus_client::metrics::histogram::Histogram,
    /// The node's delivery order: the last sequence number given to a kept event.
    seq: AtomicU64,
    /// Sessions waiting for their replay: namespace-wide deliveries are held for them.
    held: RwLock<HashMap<ConnId, Arc<Session>>>,
    /// With recovery on: what the node keeps to place a returning socket.
    pub(crate) keeper: Option<Arc<Keeper>>,
}

/// One room with local members (or on its way to or from having some).
struct Entry {
    members: RwLock<Members>,
    /// Orders this room's subscribe and unsubscribe calls.
    gate: tokio::sync::Mutex<()>,
    /// The position of the room's last event this node delivered (or its stream's at the
    /// subscription): where a socket joining now starts.
    tip: Mutex<Option<Position>>,
}

struct Members {
    /// By transport.
    by_transport: Vec<MemberMap>,
    /// Recovering sessions, held until their replay is out.
    held: HashMap<ConnId, Arc<Session>>,
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
        latency: prometheus_client::metrics::histogram::Histogram,
        keeper: Option<Arc<Keeper>>,
    ) -> Self {
        let mut all_transports: Vec<Arc<dyn Transport>> = Vec::with_capacity(transports.len() + 1);
        all_transports.push(Arc::new(Direct));
        all_transports.extend(transports);
        let n = all_transports.len();
        Rooms {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            hasher: RandomState::default(),
            all: RwLock::new((0..n).map(|_| MemberMap::new()).collect()),
            transports: all_transports,
            broker,
            gauge,
            latency,
            seq: AtomicU64::new(0),
            held: RwLock::new(HashMap::new()),
            keeper,
        }
    }

    /// The last node sequence number given.
    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
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

    /// A session now receives namespace-wide deliveries (held for it while it is held).
    pub(crate) fn register(&self, session: &Arc<Session>) {
        if session.is_held() {
            self.held
                .write()
                .insert(session.id().clone(), session.clone());
            return;
        }
        let slot = self.slot(session.transport);
        self.all.write()[slot].insert(session.id().clone(), session.conn.clone());
    }

    /// A session no longer receives namespace-wide deliveries.
    pub(crate) fn unregister(&self, session: &Session) {
        self.held.write().remove(session.id());
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
                        held: HashMap::new(),
                        count: 0,
                        subscribed: false,
                        open: false,
                        removed: false,
                    }),
                    gate: tokio::sync::Mutex::new(()),
                    tip: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Adds `session` to `room`; effective cluster-wide when it returns. The caller holds the
    /// session's turn and has checked the socket is not in the room yet. `recovered` is the
    /// position a recovering session had in the room (it joins held, until its replay is
    /// out); otherwise the session starts at the room's current position.
    pub(crate) async fn join(
        &self,
        session: &Arc<Session>,
        room: &Room,
        recovered: Option<Position>,
    ) -> Result<(), BrokerError> {
        if session.is_closing() {
            // A socket the server is closing (a kick, a reset) stays out of every room.
            return Ok(());
        }
        loop {
            let entry = self.entry_or_create(room);
            {
                let mut m = entry.members.write();
                if m.removed {
                    continue;
                }
                if m.open {
                    self.add(&mut m, &entry, session, room, recovered);
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
            if !subscribed {
                if let Err(e) = self.broker.subscribe(room).await {
                    drop(gate);
                    self.remove_if_unused(room, &entry);
                    return Err(e);
                }
                // Where the room's stream is now, read after the subscription is in place:
                // an event published since is both delivered and at or before it.
                match self.broker.position(room).await {
                    Ok(Some(p)) => {
                        let mut tip = entry.tip.lock();
                        let newer = tip.as_ref().is_none_or(|t| !t.after(&p));
                        if newer {
                            *tip = Some(p);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(room = %room, error = %e, "no history position"),
                }
            }
            let mut m = entry.members.write();
            if !m.subscribed {
                m.subscribed = true;
                self.gauge.inc();
            }
            m.open = true;
            self.add(&mut m, &entry, session, room, recovered);
            return Ok(());
        }
    }

    fn add(
        &self,
        m: &mut Members,
        entry: &Entry,
        session: &Arc<Session>,
        room: &Room,
        recovered: Option<Position>,
    ) {
        let held = session.is_held();
        let added = if held {
            m.held
                .insert(session.id().clone(), session.clone())
                .is_none()
        } else {
            let slot = self.slot(session.transport);
            m.by_transport[slot]
                .insert(session.id().clone(), session.conn.clone())
                .is_none()
        };
        if added {
            m.count += 1;
        }
        if !held {
            session.conn.join(room);
        }
        if let Some(t) = &session.tracker {
            // Under the room's lock: every delivery numbered after `from` reaches it.
            let base = recovered
                .or_else(|| entry.tip.lock().clone())
                .unwrap_or_else(no_history);
            t.state.lock().rooms.insert(
                room.clone(),
                Floor {
                    floor: base.clone(),
                    base,
                    from: self.current_seq(),
                },
            );
        }
        let mut rooms = session.rooms.lock();
        if !rooms.contains(room) {
            rooms.push(room.clone());
        }
    }

    /// Takes `session` out of `room`; `false` when it was not in it. The caller holds the
    /// session's turn.
    pub(crate) async fn leave(&self, session: &Session, room: &Room) -> bool {
        self.take_out(session, room, true).await
    }

    /// [`Rooms::leave`]; `forget` also drops the room from the session's recovery state.
    async fn take_out(&self, session: &Session, room: &Room, forget: bool) -> bool {
        let Some(entry) = self.entry(room) else {
            session.rooms.lock().retain(|r| r != room);
            return false;
        };
        let last = {
            let mut m = entry.members.write();
            let slot = self.slot(session.transport);
            let was_live = m.by_transport[slot].remove(session.id()).is_some();
            let was_held = m.held.remove(session.id()).is_some();
            session.rooms.lock().retain(|r| r != room);
            if forget && let Some(t) = &session.tracker {
                t.state.lock().rooms.remove(room);
            }
            if !was_live && !was_held {
                return false;
            }
            if was_live {
                session.conn.leave(room);
            }
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

    /// Takes `session` out of every room (it closed). Its recovery state keeps where it was
    /// in each, for a node that takes it over. The caller holds its turn.
    pub(crate) async fn leave_all(&self, session: &Session) {
        let rooms = session.rooms();
        for room in &rooms {
            self.take_out(session, room, false).await;
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

    /// Writes `delivery` to this node's recipients, each transport framing it once; holds it
    /// for recovering sessions.
    pub(crate) fn deliver(&self, delivery: &Delivery) {
        let except = delivery.except.as_ref();
        match &delivery.room {
            Some(room) => {
                let Some(entry) = self.entry(room) else {
                    return;
                };
                let m = entry.members.read();
                // Numbered under the room's lock, so a join sees either all of it or none.
                let (seq, offset) = match &delivery.position {
                    Some(p) => {
                        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
                        *entry.tip.lock() = Some(p.clone());
                        match &self.keeper {
                            Some(k) => {
                                k.rings.push(room, seq, p.clone());
                                (Some(seq), Some(ClientOffset::live(p, &k.tag, seq)))
                            }
                            None => (Some(seq), None),
                        }
                    }
                    None => (None, None),
                };
                if !m.held.is_empty() {
                    let shared = Arc::new(delivery.clone());
                    for s in m.held.values() {
                        if Some(s.id()) != except {
                            s.hold(shared.clone(), seq);
                        }
                    }
                }
                for (t, members) in self.transports.iter().zip(&m.by_transport) {
                    if !members.is_empty() {
                        let to = Recipients::new(members, except, Some(room))
                            .with_offset(offset.as_deref());
                        t.deliver(delivery, to);
                    }
                }
                if delivery.published_us > 0 && m.count > 0 {
                    let us = crate::broker::now_us().saturating_sub(delivery.published_us);
                    self.latency.observe(us as f64 / 1e6);
                }
            }
            None => {
                if let Some(k) = &self.keeper {
                    let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
                    k.keep_presence(seq, delivery);
                }
                {
                    let held = self.held.read();
                    if !held.is_empty() {
                        let shared = Arc::new(delivery.clone());
                        for s in held.values() {
                            if Some(s.id()) != except {
                                s.hold(shared.clone(), None);
                            }
                        }
                    }
                }
                let all = self.all.read();
                for (t, members) in self.transports.iter().zip(all.iter()) {
                    if !members.is_empty() {
                        t.deliver(delivery, Recipients::new(members, except, None));
                    }
                }
            }
        }
    }

    /// A held session's replay is out: it becomes a live member of its rooms and of the
    /// namespace, after the deliveries held for it (those the replay did not carry) are
    /// written, in the order they arrived. Its rooms are locked together, in name order, so
    /// nothing of them is delivered meanwhile.
    pub(crate) fn go_live(&self, session: &Arc<Session>) {
        let Some(tracker) = &session.tracker else {
            return;
        };
        let mut rooms = session.rooms();
        rooms.sort();
        let entries: Vec<(Room, Arc<Entry>)> = rooms
            .iter()
            .filter_map(|r| self.entry(r).map(|e| (r.clone(), e)))
            .collect();
        let mut guards: Vec<_> = entries.iter().map(|(_, e)| e.members.write()).collect();
        let mut all = self.all.write();
        let mut held_ns = self.held.write();
        let now = self.current_seq();
        let mut st = tracker.state.lock();
        // What the replay carried, by room: held events at or before it are not sent again.
        let mut carried: BTreeMap<Room, Position> = BTreeMap::new();
        for (room, p, _) in &st.prelive {
            carried.insert(room.clone(), p.clone());
        }
        let held = std::mem::take(&mut st.held);
        for (d, seq) in held {
            if let (Some(room), Some(p)) = (&d.room, &d.position) {
                if carried.get(room).is_some_and(|c| !p.after(c)) {
                    continue;
                }
                let offset = match (&self.keeper, seq) {
                    (Some(k), Some(seq)) => Some(ClientOffset::live(p, &k.tag, seq)),
                    _ => None,
                };
                session
                    .conn
                    .send_event(&d.event, &d.payload, offset.as_deref());
                st.prelive.push((room.clone(), p.clone(), seq));
                carried.insert(room.clone(), p.clone());
            } else {
                session.conn.send_event(&d.event, &d.payload, None);
            }
        }
        let slot = self.slot(session.transport);
        for ((room, _), m) in entries.iter().zip(guards.iter_mut()) {
            if m.held.remove(session.id()).is_some() {
                m.by_transport[slot].insert(session.id().clone(), session.conn.clone());
                session.conn.join(room);
            }
            if let Some(f) = st.rooms.get_mut(room) {
                f.from = now;
                if let Some(c) = carried.get(room) {
                    f.floor = c.clone();
                }
            }
        }
        if held_ns.remove(session.id()).is_some() {
            all[slot].insert(session.id().clone(), session.conn.clone());
        }
        st.pending = false;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, published_us: u64) -> Delivery {
        let mut d = Delivery::encode("user:online", None, &serde_json::json!({ "userId": user }))
            .expect("encode");
        d.published_us = published_us;
        d
    }

    #[test]
    fn presence_since_a_time_is_all_or_nothing() {
        let k = Keeper::new("t".to_owned(), 8, Duration::from_secs(60));
        let start = k.presence.lock().complete_after_us;
        k.keep_presence(1, &change("a", start + 10));
        k.keep_presence(2, &change("b", start + 20));
        k.keep_presence(3, &change("c", start + 30));
        let users = |v: Vec<Delivery>| -> Vec<String> {
            v.iter().map(|d| d.payload.get().to_owned()).collect()
        };
        assert_eq!(
            users(k.presence_since(start + 15).expect("held")),
            [r#"{"userId":"b"}"#, r#"{"userId":"c"}"#]
        );
        // Before the node started: it cannot know what was published then.
        assert!(k.presence_since(start.saturating_sub(1)).is_none());
        // Dropping old entries moves what it can answer for.
        for i in 0..PRESENCE_KEPT as u64 {
            k.keep_presence(10 + i, &change("x", start + 100 + i));
        }
        assert!(k.presence_since(start + 15).is_none(), "a, b, c are gone");
        assert!(
            k.presence_since(start + 100 + PRESENCE_KEPT as u64)
                .is_some()
        );
    }
}
