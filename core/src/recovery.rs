//! Connection state recovery: what a socket has seen, how a dropped one finds its place in
//! each of its rooms again, and what the node keeps to answer that.
//!
//! # The problem
//!
//! A client echoes only the offset of the *last* room event it received, while it may be in
//! several rooms and may have missed events of each. The offset must therefore say where
//! the socket was in every one of its rooms, not only in the room of that event.
//!
//! # The design
//!
//! * **One delivery order per node.** Every kept room event this node delivers gets a node
//!   sequence number (`seq`), under the room's lock, so all of the room's local members get
//!   it between the same two joins and leaves. The node keeps, per room, a ring of
//!   `(seq, position)` for the recovery window ([`Rings`]).
//! * **Offsets name the node's order.** The offset sent with an event is
//!   `{position}~{node tag}.{seq}` (hex): its room position, and where it sits in the
//!   node's order. A socket's connection is ordered, so a client that received the event
//!   with `seq` received every earlier delivery of every room it was in, and none later.
//! * **A session knows where it started in each room** ([`Tracker`]): for each room, the
//!   position it had when it started receiving that room live on this node (`floor`) and the
//!   node `seq` at that moment (`from`). Its position in room R at the client's `seq` is
//!   then the last ring entry of R with `from < s <= seq`, or `floor` when there is none:
//!   exact, whatever the interleaving of the rooms' events.
//! * **Replays are numbered too.** Events replayed to a recovering socket carry
//!   `{position}~{tag}.{attach}r{i}`: the `i`-th replayed event of the attach made at node
//!   `seq = attach`. A client that drops in the middle of a replay is placed by the replay
//!   list.
//! * **Across nodes** the node that held the socket is asked (the broker's
//!   [`ask`](crate::RoomBroker::ask)): it answers the positions and forgets the session. When it
//!   cannot answer (it died), the session record in the broker (each room's `floor` and
//!   `from`) and the node's delivery checkpoints (the ring's newest entries, flushed every
//!   second, and all of them at a graceful shutdown) give a lower bound: nothing is lost,
//!   and what that node delivered after its last checkpoint may come twice.
//! * **Presence without the old node.** Every node delivers (and keeps, for the window)
//!   every presence change. The old node's *marks*, written with each checkpoint (its
//!   newest presence changes with their sequence numbers, and the time), say from when the
//!   client missed them; the new node replays its own from a margin before that
//!   ([`presence_replay_from`]), or says it cannot when it started later.

use foldhash::fast::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::broker::{Delivery, Position, Room};

/// How many checkpointed ring entries a room keeps in its record.
pub(crate) const CHECKPOINT_DEPTH: usize = 4;
/// How many ring entries a room writes at a graceful shutdown.
pub(crate) const SHUTDOWN_DEPTH: usize = 128;

/// Where a client's last offset says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// A live delivery, with its node sequence number.
    Live(u64),
    /// The `i`-th event replayed at the attach made at node sequence `attach`.
    Replay {
        /// The node sequence number of the attach.
        attach: u64,
        /// The event's index in the replay.
        i: u32,
    },
}

/// A parsed client offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientOffset {
    /// The event's position in its room.
    pub(crate) position: Position,
    /// The tag of the node that sent it.
    pub(crate) tag: String,
    /// Where it sits in that node's order.
    pub(crate) mark: Mark,
}

impl ClientOffset {
    /// The offset a live delivery at `seq` carries.
    pub(crate) fn live(position: &Position, tag: &str, seq: u64) -> String {
        let mut out = Self::start(position, tag, 16);
        push_hex(&mut out, seq);
        out
    }

    /// The offset the `i`-th replayed event carries.
    pub(crate) fn replay(position: &Position, tag: &str, attach: u64, i: u32) -> String {
        let mut out = Self::start(position, tag, 25);
        push_hex(&mut out, attach);
        out.push('r');
        push_hex(&mut out, u64::from(i));
        out
    }

    /// `{position}~{tag}.`, with room for `rest` more bytes.
    fn start(position: &Position, tag: &str, rest: usize) -> String {
        let mut out = String::with_capacity(position.epoch.len() + 22 + tag.len() + rest);
        position.push_to(&mut out);
        out.push('~');
        out.push_str(tag);
        out.push('.');
        out
    }

    /// Reads an offset a client echoed; `None` when it is not one of ours.
    pub(crate) fn parse(s: &str) -> Option<ClientOffset> {
        let (position, rest) = s.split_once('~')?;
        let position: Position = position.parse().ok()?;
        let (tag, mark) = rest.split_once('.')?;
        if tag.is_empty() || tag.len() > 16 || !tag.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let mark = match mark.split_once('r') {
            Some((attach, i)) => Mark::Replay {
                attach: u64::from_str_radix(attach, 16).ok()?,
                i: u32::from_str_radix(i, 16).ok()?,
            },
            None => Mark::Live(u64::from_str_radix(mark, 16).ok()?),
        };
        Some(ClientOffset {
            position,
            tag: tag.to_owned(),
            mark,
        })
    }
}

/// A node's short tag, as offsets carry it: the first 8 characters of its id.
pub(crate) fn node_tag(node_id: &str) -> String {
    let t: String = node_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    if t.is_empty() { "node".to_owned() } else { t }
}

/// What a ring says of a room between two sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The last entry in the range.
    Found(Position),
    /// No entry in the range.
    Nothing,
    /// The range reaches back past what the ring still holds.
    Unknown,
}

/// One room's ring: `(seq, position, when)`, oldest first.
#[derive(Default)]
struct Ring {
    entries: VecDeque<(u64, Position, Instant)>,
    /// The sequence number of the newest entry dropped from the front.
    evicted: Option<u64>,
}

impl Ring {
    fn evict(&mut self) {
        if let Some((s, _, _)) = self.entries.pop_front() {
            self.evicted = Some(s);
        }
    }

    fn lookup(&self, after: u64, upto: u64) -> Lookup {
        if let Some((_, p, _)) = self
            .entries
            .iter()
            .rev()
            .find(|(s, _, _)| *s > after && *s <= upto)
        {
            return Lookup::Found(p.clone());
        }
        match self.evicted {
            // An entry in (after, upto] may have been dropped.
            Some(e) if e > after => Lookup::Unknown,
            _ => Lookup::Nothing,
        }
    }
}

/// This node's deliveries of kept room events, per room, for the recovery window.
pub(crate) struct Rings {
    shards: Box<[Mutex<HashMap<Room, Ring, RandomState>>]>,
    hasher: RandomState,
    cap: usize,
    window: Duration,
    /// Rooms with entries since the last checkpoint.
    changed: Mutex<HashSet<Room>>,
}

impl Rings {
    /// Rings of at most `cap` entries, each kept for `window`.
    pub(crate) fn new(cap: usize, window: Duration) -> Self {
        Rings {
            shards: (0..64).map(|_| Mutex::new(HashMap::default())).collect(),
            hasher: RandomState::default(),
            cap: cap.max(1),
            window,
            changed: Mutex::new(HashSet::new()),
        }
    }

    fn shard(&self, room: &str) -> &Mutex<HashMap<Room, Ring, RandomState>> {
        &self.shards[self.hasher.hash_one(room) as usize % self.shards.len()]
    }

    /// Records that `room`'s event at `position` was delivered as node sequence `seq`.
    pub(crate) fn push(&self, room: &Room, seq: u64, position: Position) {
        let now = Instant::now();
        {
            let mut shard = self.shard(room).lock();
            let ring = shard.entry(room.clone()).or_default();
            ring.entries.push_back((seq, position, now));
            while ring.entries.len() > self.cap
                || ring
                    .entries
                    .front()
                    .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > self.window)
            {
                ring.evict();
            }
        }
        self.changed.lock().insert(room.clone());
    }

    /// The last entry of `room` with `after < seq <= upto`.
    pub(crate) fn lookup(&self, room: &Room, after: u64, upto: u64) -> Lookup {
        match self.shard(room).lock().get(room) {
            Some(ring) => ring.lookup(after, upto),
            None => Lookup::Nothing,
        }
    }

    /// The newest `k` entries of `room`, oldest first.
    pub(crate) fn newest(&self, room: &Room, k: usize) -> Vec<(u64, Position)> {
        let shard = self.shard(room).lock();
        let Some(ring) = shard.get(room) else {
            return Vec::new();
        };
        let skip = ring.entries.len().saturating_sub(k);
        ring.entries
            .iter()
            .skip(skip)
            .map(|(s, p, _)| (*s, p.clone()))
            .collect()
    }

    /// The rooms with entries since the last call.
    pub(crate) fn take_changed(&self) -> Vec<Room> {
        std::mem::take(&mut *self.changed.lock())
            .into_iter()
            .collect()
    }

    /// Every room that has entries.
    pub(crate) fn rooms(&self) -> Vec<Room> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Drops entries past the window and rings left empty.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(|_, ring| {
                while ring
                    .entries
                    .front()
                    .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > self.window)
                {
                    ring.evict();
                }
                !ring.entries.is_empty()
            });
        }
    }
}

/// Where a session started receiving one room on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Floor {
    /// The position it had in the room before anything of this attach was sent to it.
    pub(crate) base: Position,
    /// The position it had when it started receiving the room live.
    pub(crate) floor: Position,
    /// The node sequence number at that moment: live deliveries after it reached it.
    pub(crate) from: u64,
}

/// A session's recovery state on this node.
pub(crate) struct Tracker {
    /// The session's recovery id (socket.io's `pid`; the native protocol's `session`).
    pub(crate) pid: Mutex<Arc<str>>,
    pub(crate) state: Mutex<TrackState>,
}

/// What a tracker holds.
#[derive(Default)]
pub(crate) struct TrackState {
    /// The node sequence number of this attach (the connect, or the recovery).
    pub(crate) attach: u64,
    /// When it attached (µs since the epoch).
    pub(crate) attached_us: u64,
    /// By room.
    pub(crate) rooms: BTreeMap<Room, Floor>,
    /// What was sent before the rooms went live, in the order sent: the replayed events
    /// (no sequence number), then the deliveries held during the replay (with theirs).
    pub(crate) prelive: Vec<(Room, Position, Option<u64>)>,
    /// How many of `prelive` are replayed events.
    pub(crate) replayed: usize,
    /// Deliveries held while the replay goes out: `(delivery, node seq)`.
    pub(crate) held: Vec<(Arc<Delivery>, Option<u64>)>,
    /// Events to replay once the transport has told the client it is connected.
    pub(crate) to_replay: Vec<Delivery>,
    /// Missed presence changes to send after the replay.
    pub(crate) presence: Vec<Delivery>,
    /// Rooms are held (a recovery's replay is not out yet).
    pub(crate) pending: bool,
    /// The session went to another node (or a newer connection): its close keeps nothing.
    pub(crate) handed_over: bool,
    /// The node forgot the session (a reset): its close keeps nothing either.
    pub(crate) forgotten: bool,
    /// Holds the socket's own joins and leaves back until the recovered rooms are live.
    pub(crate) first_turn: Option<crate::session::Ticket>,
}

/// Why positions cannot be worked out exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unresolved(pub(crate) String);

impl Tracker {
    /// Keeps nothing of the session for recovery, however its transport ends (a reset, or
    /// the backend disconnected its user).
    pub(crate) fn forget(&self) {
        let mut st = self.state.lock();
        st.forgotten = true;
        st.rooms.clear();
    }

    /// A tracker for `pid`, attached at node sequence `attach`.
    pub(crate) fn new(pid: Arc<str>, attach: u64) -> Self {
        Tracker {
            pid: Mutex::new(pid),
            state: Mutex::new(TrackState {
                attach,
                attached_us: crate::broker::now_us(),
                ..TrackState::default()
            }),
        }
    }

    /// The session's position in each of its rooms, given the client's last offset.
    pub(crate) fn resolve(
        &self,
        tag: &str,
        offset: Option<&ClientOffset>,
        rings: &Rings,
    ) -> Result<BTreeMap<Room, Position>, Unresolved> {
        let s = self.state.lock();
        resolve(&s, tag, offset, |room, after, upto| {
            rings.lookup(room, after, upto)
        })
    }
}

/// [`Tracker::resolve`] over any ring lookup (the live rings, or checkpointed ones).
pub(crate) fn resolve(
    s: &TrackState,
    tag: &str,
    offset: Option<&ClientOffset>,
    lookup: impl Fn(&Room, u64, u64) -> Lookup,
) -> Result<BTreeMap<Room, Position>, Unresolved> {
    let of_this_attach = offset.filter(|o| {
        o.tag == tag
            && match o.mark {
                Mark::Live(seq) => seq > s.attach,
                Mark::Replay { attach, .. } => attach == s.attach,
            }
    });
    // How much of `prelive` the client received, for a mark sent before going live.
    let prelive_upto = |mark: Mark| -> usize {
        match mark {
            Mark::Replay { i, .. } => (i as usize + 1).min(s.replayed),
            Mark::Live(seq) => {
                s.replayed
                    + s.prelive[s.replayed.min(s.prelive.len())..]
                        .iter()
                        .take_while(|(_, _, q)| q.is_some_and(|q| q <= seq))
                        .count()
            }
        }
    };
    let from_prelive = |room: &Room, upto: usize, base: &Position| -> Position {
        s.prelive[..upto.min(s.prelive.len())]
            .iter()
            .rev()
            .find(|(r, _, _)| r == room)
            .map_or_else(|| base.clone(), |(_, p, _)| p.clone())
    };
    let mut out = BTreeMap::new();
    for (room, f) in &s.rooms {
        let p = match of_this_attach.map(|o| o.mark) {
            // Nothing of this attach reached the client.
            None => f.base.clone(),
            Some(Mark::Live(seq)) if seq > f.from => match lookup(room, f.from, seq) {
                Lookup::Found(p) => p,
                Lookup::Nothing => f.floor.clone(),
                Lookup::Unknown => {
                    return Err(Unresolved(format!(
                        "the delivery index of {room} no longer reaches back to the offset"
                    )));
                }
            },
            // Sent before this room went live: a replayed or held event, or an event of
            // another room before this one was joined.
            Some(mark) => from_prelive(room, prelive_upto(mark), &f.base),
        };
        out.insert(room.clone(), p);
    }
    Ok(out)
}

/// A session's record in the broker, for recovery on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The token's `sub`: a pid never recovers for another user.
    pub(crate) sub: String,
    /// The node that holds (or held) it.
    pub(crate) node: String,
    /// That node's tag.
    pub(crate) tag: String,
    /// The node sequence number of its attach there.
    pub(crate) attach: u64,
    /// When it attached there (µs since the epoch; 0 in records of older nodes).
    #[serde(default)]
    pub(crate) attached_us: u64,
    /// Its rooms.
    pub(crate) rooms: BTreeMap<Room, Floor>,
    /// `live`, `dropped` or `closing` (the node shut down).
    pub(crate) state: String,
    /// When it was written (ms since the epoch, by its node's clock; 0 in records of older
    /// nodes).
    #[serde(default)]
    pub(crate) saved_ms: u64,
}

/// The record key of session `pid`.
pub(crate) fn session_key(pid: &str) -> String {
    format!("session:{pid}")
}

/// The record key of node `node`'s delivery checkpoints.
pub(crate) fn checkpoint_key(node: &str) -> String {
    format!("deliveries:{node}")
}

/// The record key of node `node`'s presence checkpoint (field `p`): when it was written,
/// and the node's newest presence changes with their place in its delivery order.
pub(crate) fn marks_key(node: &str) -> String {
    format!("marks:{node}")
}

/// How many presence changes a node's presence checkpoint lists.
pub(crate) const MARKS_KEPT: usize = 64;

/// What a node wrote of its presence deliveries: as of when (µs), and its newest changes
/// as `(seq, publish time in µs)`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceMarks {
    pub(crate) as_of_us: u64,
    pub(crate) changes: Vec<(u64, u64)>,
}

impl PresenceMarks {
    /// `as_of|seq:us,seq:us` (hex).
    pub(crate) fn encode(&self) -> String {
        let changes = self
            .changes
            .iter()
            .map(|(s, us)| format!("{s:x}:{us:x}"))
            .collect::<Vec<_>>()
            .join(",");
        format!("{:x}|{changes}", self.as_of_us)
    }

    /// Reads [`encode`](Self::encode)'s text; `None` when it is not one.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let (as_of, changes) = text.split_once('|')?;
        let changes = changes
            .split(',')
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (s, us) = e.split_once(':')?;
                Some((
                    u64::from_str_radix(s, 16).ok()?,
                    u64::from_str_radix(us, 16).ok()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PresenceMarks {
            as_of_us: u64::from_str_radix(as_of, 16).ok()?,
            changes,
        })
    }
}

/// How long a broadcast may take to reach a node: a presence change published this much
/// before a node wrote its marks had reached it by then.
pub(crate) const PRESENCE_MARGIN_US: u64 = 2_000_000;

/// From when (µs) a session placed without its old node replays presence changes; the
/// client had, on the old node, every change delivered up to its sequence `seen` (its last
/// event's, or its attach's):
/// - changes the old node delivered after `seen` are in its marks: from the earliest's
///   publish time (if the marks reach back to `seen`);
/// - none after `seen`: the client had every change published a margin before the marks
///   were written;
/// - no marks, or not reaching back: the client dropped at most `window` before `now_us`,
///   so it had every change published a margin before that.
///
/// Always a margin earlier (a change may reach nodes in another order), but never before
/// the client attached.
pub(crate) fn presence_replay_from(
    attached_us: u64,
    seen: u64,
    marks: Option<&PresenceMarks>,
    now_us: u64,
    window_us: u64,
) -> u64 {
    let fallback = now_us.saturating_sub(window_us);
    let known = match marks {
        None => fallback,
        Some(m) => {
            let after: Vec<u64> = m
                .changes
                .iter()
                .filter(|(s, _)| *s > seen)
                .map(|(_, us)| *us)
                .collect();
            let reaches_back =
                m.changes.len() < MARKS_KEPT || m.changes.first().is_some_and(|(s, _)| *s <= seen);
            match after.iter().min() {
                None => m.as_of_us,
                Some(_) if !reaches_back => fallback,
                Some(earliest) => *earliest,
            }
        }
    };
    known.saturating_sub(PRESENCE_MARGIN_US).max(attached_us)
}

/// Encodes a room's checkpointed entries: `epoch|seq:n,seq:n` (hex seq).
pub(crate) fn encode_entries(entries: &[(u64, Position)]) -> String {
    let mut out = String::new();
    for (i, (s, p)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{s:x}:{p}"));
    }
    out
}

/// Reads [`encode_entries`]' output (bad parts are skipped).
pub(crate) fn decode_entries(text: &str) -> Vec<(u64, Position)> {
    text.split(',')
        .filter_map(|e| {
            let (s, p) = e.split_once(':')?;
            Some((u64::from_str_radix(s, 16).ok()?, p.parse().ok()?))
        })
        .collect()
}

/// A lookup over checkpointed entries, for a node that cannot be asked.
pub(crate) fn lookup_in(entries: &[(u64, Position)], after: u64, upto: u64) -> Lookup {
    entries
        .iter()
        .rev()
        .find(|(s, _)| *s > after && *s <= upto)
        .map_or(Lookup::Nothing, |(_, p)| Lookup::Found(p.clone()))
}

/// Merges newly checkpointed entries into a room's kept ones, newest `depth` kept.
pub(crate) fn merge_entries(
    old: &[(u64, Position)],
    new: &[(u64, Position)],
    depth: usize,
) -> Vec<(u64, Position)> {
    let mut all: Vec<(u64, Position)> = old.to_vec();
    for e in new {
        if all.last().is_none_or(|(s, _)| e.0 > *s) {
            all.push(e.clone());
        }
    }
    let skip = all.len().saturating_sub(depth);
    all.split_off(skip)
}

/// Appends `v` in lowercase hexadecimal, without leading zeros (`0` for zero).
fn push_hex(out: &mut String, v: u64) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        let d = ((v >> (i * 4)) & 0xf) as u32;
        out.push(char::from_digit(d, 16).unwrap_or('0'));
    }
}

/// A fresh recovery id: 22 URL-safe characters.
pub(crate) fn new_pid() -> String {
    let a = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
    let b = std::hash::RandomState::new().hash_one(a);
    let mut out = String::with_capacity(22);
    for mut v in [a, b] {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for _ in 0..11 {
            out.push(char::from(ALPHABET[(v & 63) as usize]));
            v >>= 6;
        }
    }
    out
}

/// Whether `s` looks like a recovery id the gateway made.
pub(crate) fn plausible_pid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(n: u64) -> Position {
        Position::new("ep", n)
    }

    #[test]
    fn offsets_read_back() {
        let live = ClientOffset::live(&pos(7), "abc123", 0x2f);
        assert_eq!(live, "ep:7~abc123.2f");
        assert_eq!(
            ClientOffset::parse(&live),
            Some(ClientOffset {
                position: pos(7),
                tag: "abc123".into(),
                mark: Mark::Live(0x2f)
            })
        );
        let replay = ClientOffset::replay(&pos(3), "abc123", 16, 2);
        assert_eq!(replay, "ep:3~abc123.10r2");
        assert_eq!(ClientOffset::live(&pos(0), "t", 0), "ep:0~t.0");
        assert_eq!(
            ClientOffset::replay(&pos(u64::MAX), "t", u64::MAX, u32::MAX),
            format!("ep:{}~t.{:x}r{:x}", u64::MAX, u64::MAX, u32::MAX)
        );
        assert_eq!(
            ClientOffset::parse(&replay).map(|o| o.mark),
            Some(Mark::Replay { attach: 16, i: 2 })
        );
        for bad in [
            "",
            "x",
            "ep:7",
            "ep:7~",
            "ep:7~t",
            "ep:7~t.zz",
            "ep:x~t.1",
            "ep:7~t!.1",
        ] {
            assert_eq!(ClientOffset::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rings_find_the_last_entry_in_a_range_and_know_what_they_dropped() {
        let rings = Rings::new(3, Duration::from_secs(60));
        let r = Room::from("r");
        for s in [10, 20, 30, 40] {
            rings.push(&r, s, pos(s));
        }
        assert_eq!(rings.lookup(&r, 15, 35), Lookup::Found(pos(30)));
        assert_eq!(rings.lookup(&r, 30, 35), Lookup::Nothing);
        assert_eq!(rings.lookup(&r, 5, 15), Lookup::Unknown, "10 was dropped");
        assert_eq!(rings.lookup(&r, 10, 15), Lookup::Nothing);
        assert_eq!(rings.newest(&r, 2), [(30, pos(30)), (40, pos(40))]);
        assert_eq!(rings.take_changed(), std::slice::from_ref(&r));
        assert!(rings.take_changed().is_empty());
    }

    #[test]
    fn presence_replays_from_what_the_old_node_delivered_after_the_client_s_last_event() {
        let s = 1_000_000u64;
        let window = 120 * s;
        let now = 300 * s;
        let marks = PresenceMarks {
            as_of_us: 299 * s,
            changes: vec![(10, 200 * s), (12, 250 * s), (20, 290 * s)],
        };
        assert_eq!(PresenceMarks::decode(&marks.encode()), Some(marks.clone()));
        assert_eq!(PresenceMarks::decode("nonsense"), None);
        // It had seq 15: the change at 20 (290 s) is the first it missed.
        assert_eq!(
            presence_replay_from(0, 15, Some(&marks), now, window),
            288 * s
        );
        // It had everything the node delivered: from the marks' time.
        assert_eq!(
            presence_replay_from(0, 25, Some(&marks), now, window),
            297 * s
        );
        // No marks: from the window's start.
        assert_eq!(presence_replay_from(0, 25, None, now, window), 178 * s);
        // Never before it attached.
        assert_eq!(
            presence_replay_from(295 * s, 25, None, now, window),
            295 * s
        );
        // Marks that do not reach back to what it had: from the window's start.
        let full = PresenceMarks {
            as_of_us: 299 * s,
            changes: (100..100 + MARKS_KEPT as u64).map(|i| (i, i * s)).collect(),
        };
        assert_eq!(
            presence_replay_from(0, 50, Some(&full), now, window),
            178 * s
        );
    }

    #[test]
    fn checkpointed_entries_round_trip_and_merge() {
        let e = vec![(0x10, pos(1)), (0x20, pos(2))];
        assert_eq!(decode_entries(&encode_entries(&e)), e);
        let merged = merge_entries(&e, &[(0x20, pos(2)), (0x30, pos(3))], 2);
        assert_eq!(merged, [(0x20, pos(2)), (0x30, pos(3))]);
        assert_eq!(lookup_in(&merged, 0x20, 0x25), Lookup::Nothing);
        assert_eq!(lookup_in(&merged, 0x10, 0x25), Lookup::Found(pos(2)));
    }

    /// A model of one node: rooms get events in some interleaving, the socket is in some
    /// of them (joined at some point), receives a prefix of what was sent and drops. Whatever
    /// the interleaving and the cut, the positions worked out from the last offset it
    /// received are exactly the last event of each room it received.
    fn check_interleaving(
        events: &[(u8, bool)],
        joins: &[(u8, usize)],
        cut: usize,
    ) -> Result<(), TestCaseError> {
        let rings = Rings::new(10_000, Duration::from_secs(600));
        let tag = "node1";
        let mut seq = 100u64;
        let mut n_of: BTreeMap<u8, u64> = BTreeMap::new();
        let tracker = Tracker::new(Arc::from("pid"), seq);
        // Events delivered to the socket, in order, with their offsets.
        let mut sent: Vec<(Room, Position, String)> = Vec::new();
        for (i, (room_id, _)) in events.iter().enumerate() {
            // Joins scheduled before event i.
            for (jr, at) in joins {
                let room = Room::from(format!("r{jr}"));
                if *at == i && !tracker.state.lock().rooms.contains_key(&room) {
                    let p = Position::new("ep", *n_of.get(jr).unwrap_or(&0));
                    tracker.state.lock().rooms.insert(
                        room,
                        Floor {
                            base: p.clone(),
                            floor: p,
                            from: seq,
                        },
                    );
                }
            }
            let room = Room::from(format!("r{room_id}"));
            let n = n_of.entry(*room_id).or_insert(0);
            *n += 1;
            let p = Position::new("ep", *n);
            seq += 1;
            rings.push(&room, seq, p.clone());
            if tracker.state.lock().rooms.contains_key(&room) {
                sent.push((room, p.clone(), ClientOffset::live(&p, tag, seq)));
            }
        }
        let cut = cut.min(sent.len());
        let received = &sent[..cut];
        let last = received.last().and_then(|(_, _, o)| ClientOffset::parse(o));
        let got = tracker
            .resolve(tag, last.as_ref(), &rings)
            .map_err(|e| TestCaseError::fail(e.0))?;
        let state = tracker.state.lock();
        for (room, f) in &state.rooms {
            let expected = received
                .iter()
                .rev()
                .find(|(r, _, _)| r == room)
                .map_or_else(|| f.base.clone(), |(_, p, _)| p.clone());
            prop_assert_eq!(got.get(room), Some(&expected), "room {}", room);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn no_room_loses_an_event_whatever_the_interleaving(
            events in proptest::collection::vec((0u8..4, any::<bool>()), 0..60),
            joins in proptest::collection::vec((0u8..4, 0usize..60), 0..6),
            cut in 0usize..80,
        ) {
            check_interleaving(&events, &joins, cut)?;
        }
    }

    #[test]
    fn a_replay_cut_short_is_placed_by_what_was_sent_before_going_live() {
        let rings = Rings::new(100, Duration::from_secs(60));
        let t = Tracker::new(Arc::from("p"), 50);
        {
            let mut s = t.state.lock();
            for r in ["a", "b"] {
                s.rooms.insert(
                    Room::from(r),
                    Floor {
                        base: pos(1),
                        floor: pos(5),
                        from: 60,
                    },
                );
            }
            s.prelive = vec![
                (Room::from("a"), pos(2), None),
                (Room::from("b"), pos(2), None),
                (Room::from("a"), pos(3), None),
                (Room::from("b"), pos(3), None),
                (Room::from("a"), pos(4), Some(55)),
                (Room::from("b"), pos(5), Some(58)),
            ];
            s.replayed = 4;
        }
        let at = |i| ClientOffset::parse(&ClientOffset::replay(&pos(0), "t", 50, i));
        let got = t.resolve("t", at(2).as_ref(), &rings).expect("resolved");
        assert_eq!(got[&Room::from("a")], pos(3));
        assert_eq!(got[&Room::from("b")], pos(2));
        let held = ClientOffset::parse(&ClientOffset::live(&pos(4), "t", 55));
        let got = t.resolve("t", held.as_ref(), &rings).expect("resolved");
        assert_eq!(got[&Room::from("a")], pos(4));
        assert_eq!(
            got[&Room::from("b")],
            pos(3),
            "b's held event was not sent yet"
        );
        // An offset of an earlier attach: nothing of this one reached the client.
        let old = ClientOffset::parse(&ClientOffset::live(&pos(9), "t", 40));
        let got = t.resolve("t", old.as_ref(), &rings).expect("resolved");
        assert_eq!(got[&Room::from("a")], pos(1));
        // Another node's offset: the same.
        let other = ClientOffset::parse(&ClientOffset::live(&pos(9), "u", 99));
        let got = t.resolve("t", other.as_ref(), &rings).expect("resolved");
        assert_eq!(got[&Room::from("b")], pos(1));
        // Live after going live, with nothing of b since: b's floor.
        rings.push(&Room::from("a"), 61, pos(6));
        let live = ClientOffset::parse(&ClientOffset::live(&pos(6), "t", 61));
        let got = t.resolve("t", live.as_ref(), &rings).expect("resolved");
        assert_eq!(got[&Room::from("a")], pos(6));
        assert_eq!(got[&Room::from("b")], pos(5));
    }
}
