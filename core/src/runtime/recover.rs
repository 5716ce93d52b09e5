//! Connection state recovery in the gateway: connecting with a recovery request, the
//! replay, what a closing session leaves behind, answering another node that takes a
//! session over, and the delivery checkpoints (see [`crate::recovery`] for the design).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Gateway, Inner};
use crate::auth::Identity;
use crate::broker::{Delivery, History, Position, Room};
use crate::hooks::{Direction, HookCtx, Source};
use crate::limits::TokenBucket;
use crate::recovery::{
    CHECKPOINT_DEPTH, ClientOffset, MARKS_KEPT, Mark, PresenceMarks, SHUTDOWN_DEPTH, SessionRecord,
    Tracker, checkpoint_key, decode_entries, encode_entries, lookup_in, marks_key, merge_entries,
    new_pid, plausible_pid, presence_replay_from, resolve, session_key,
};
use crate::session::Session;
use crate::transport::{CloseReason, Connection, TransportId};

/// How long a node waits for the node that held a session to hand it over.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a replay tries again after a socket's queue was full.
const REPLAY_RETRY: Duration = Duration::from_millis(2);
/// How often the node writes its delivery checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How long a live session's record is kept without being written again.
const LIVE_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a connecting client says about recovery.
#[derive(Debug, Clone, Default)]
pub struct RecoveryRequest {
    /// The client tracks offsets (socket.io-client 4.x; not python-socketio with
    /// `auth.recovery = false`).
    pub tracks_offsets: bool,
    /// The recovery id of the session it had, if it had one.
    pub pid: Option<String>,
    /// The last offset it received.
    pub offset: Option<String>,
    /// Hold deliveries until [`Gateway::replay`] (for a transport that must greet the
    /// client first).
    pub hold: bool,
}

/// A connected session, and whether it recovered a dropped one.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The session.
    pub session: Arc<Session>,
    /// It is back in its rooms and gets what it missed ([`Gateway::replay`]).
    pub recovered: bool,
}

impl Leaving {
    /// `dropped`, `shutdown` or `closed`, as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Leaving::Dropped => "dropped",
            Leaving::Shutdown => "shutdown",
            Leaving::Closed => "closed",
        }
    }
}

/// Why a session ended, which decides what recovery keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// The transport dropped (closed, a ping timeout): it may come back and recover.
    Dropped,
    /// Its node is shutting down (a rolling deploy): it may recover elsewhere.
    Shutdown,
    /// Closed on purpose, by the client or by the server: nothing is kept.
    Closed,
}

/// The positions a session recovers at, and the presence changes it missed.
struct Plan {
    rooms: BTreeMap<Room, Position>,
    presence: Vec<Delivery>,
}

/// Another node's answer to a handover.
#[derive(Debug, Serialize, Deserialize)]
struct Handover {
    ok: bool,
    #[serde(default)]
    rooms: BTreeMap<String, String>,
    #[serde(default)]
    presence: Vec<Delivery>,
    #[serde(default)]
    reason: String,
}

impl Gateway {
    /// Registers an authenticated connection of `transport`, recovering the session the
    /// client names when it can (with recovery on and a client that tracks offsets).
    ///
    /// A recovered session is back in its rooms, held: call [`Gateway::replay`] once the
    /// client knows it is connected, which sends what it missed and makes it live.
    pub async fn connect_with(
        &self,
        transport: TransportId,
        conn: Arc<dyn Connection>,
        identity: Identity,
        request: RecoveryRequest,
    ) -> Connected {
        let cfg = &self.0.config;
        if !(cfg.recovery.enabled && request.tracks_offsets) {
            let session = self.connect_via(transport, conn, identity).await;
            return Connected {
                session,
                recovered: false,
            };
        }
        let attach = self.0.rooms.current_seq();
        let pid = request.pid.clone().filter(|p| plausible_pid(p));
        let plan = match &pid {
            Some(pid) => match self.plan(pid, request.offset.as_deref(), &identity).await {
                Ok(plan) => Some(plan),
                Err(why) => {
                    tracing::debug!(pid = %pid, reason = %why, "not recovered");
                    None
                }
            },
            None => None,
        };
        let tracker = match (&plan, pid) {
            (Some(_), Some(pid)) => Tracker::new(Arc::from(pid), attach),
            _ => Tracker::new(Arc::from(new_pid()), attach),
        };
        if plan.is_some() || request.hold {
            tracker.state.lock().pending = true;
        }
        let limits = &cfg.limits;
        let session = Arc::new(Session::new(
            conn,
            transport,
            identity,
            TokenBucket::new(limits.events_per_second, limits.burst),
            Some(tracker),
        ));
        if plan.is_some()
            && let Some(t) = &session.tracker
        {
            // The client's own joins and leaves wait until its rooms are restored and live.
            t.state.lock().first_turn = Some(session.ticket());
        }
        self.register_session(&session).await;
        let attempted = plan.is_some();
        let recovered = match plan {
            Some(plan) => self.restore(&session, plan).await,
            None => false,
        };
        if !recovered
            && attempted
            && let Some(t) = &session.tracker
        {
            // Nothing partial: a new session, with a new id, in no room.
            {
                let mut st = t.state.lock();
                st.held.retain(|(d, _)| d.room.is_none());
                st.to_replay.clear();
                st.presence.clear();
                st.first_turn = None;
            }
            *t.pid.lock() = Arc::from(new_pid());
            self.0.rooms.leave_all(&session).await;
            t.state.lock().rooms.clear();
            if !request.hold {
                self.0.rooms.go_live(&session);
            }
        }
        if let Some(pid) = session.recovery_id() {
            self.0.by_pid.lock().insert(pid, Arc::downgrade(&session));
        }
        self.0.save_record(&session, "live").await;
        Connected { session, recovered }
    }

    /// Sends a recovered session what it missed (each event with its offset), then the
    /// presence changes it missed, then makes it live: what arrived meanwhile follows, once.
    /// For a session held only until the transport greeted the client, makes it live.
    pub async fn replay(&self, session: &Arc<Session>) {
        let Some(t) = &session.tracker else {
            return;
        };
        let tag = self.0.tag();
        let (events, presence, attach) = {
            let mut st = t.state.lock();
            if !st.pending {
                return;
            }
            (
                std::mem::take(&mut st.to_replay),
                std::mem::take(&mut st.presence),
                st.attach,
            )
        };
        for (i, d) in events.iter().enumerate() {
            let (Some(room), Some(p)) = (&d.room, &d.position) else {
                continue;
            };
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let offset = ClientOffset::replay(p, &tag, attach, i);
            // A replay can be longer than the socket's outgoing queue: wait for the client
            // to read rather than lose an event. A client that stops reading is closed by
            // its transport's keep-alive (then the session ends, and it may recover again).
            while session
                .conn
                .try_send_event(&d.event, &d.payload, Some(&offset))
                .is_err()
            {
                if *session.ended.borrow() {
                    return;
                }
                tokio::time::sleep(REPLAY_RETRY).await;
            }
            let mut st = t.state.lock();
            st.prelive.push((room.clone(), p.clone(), None));
            st.replayed += 1;
        }
        for d in &presence {
            session.conn.send_event(&d.event, &d.payload, None);
        }
        self.0.rooms.go_live(session);
        let first = t.state.lock().first_turn.take();
        drop(first);
        self.0.save_record(session, "live").await;
        tracing::debug!(socket = %session.id(), replayed = events.len(), "live");
    }

    /// Ends a session, keeping what recovery needs as `leaving` says.
    pub async fn disconnect_with(&self, session: &Arc<Session>, leaving: Leaving) {
        tracing::info!(
            socket = %session.id(),
            user = %session.user_id(),
            transport = %self.transport_name(session.transport()),
            reason = %leaving.as_str(),
            "disconnected"
        );
        let Some(t) = &session.tracker else {
            self.disconnect(session).await;
            return;
        };
        let pid = t.pid.lock().clone();
        // Closing from before it leaves `per_user` until after it is kept (or not): a
        // control call about its user finds it in one of the three all along.
        let _closing = Closing::enter(&self.0, session);
        // Its recovery state keeps its rooms through this: a node that takes the session
        // over meanwhile (it finds it still live) places it in all of them.
        self.disconnect(session).await;
        let forget = |by_pid: &mut HashMap<Arc<str>, Weak<Session>>| {
            // Not a newer session of the same id (a recovery on this node).
            if by_pid
                .get(&pid)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(session)))
            {
                by_pid.remove(&pid);
            }
        };
        let handed_over = || t.state.lock().handed_over;
        // A session the node forgot (a reset) keeps nothing, however its transport ended.
        let forgotten = t.state.lock().forgotten;
        if leaving == Leaving::Closed || forgotten {
            forget(&mut self.0.by_pid.lock());
            if !handed_over() {
                self.0.delete_record(&pid).await;
            }
            tracing::debug!(socket = %session.id(), handed_over = handed_over(), "closed");
            return;
        }
        if !handed_over() {
            // Written before another node can take it over, so its own write comes later.
            let state = if leaving == Leaving::Shutdown {
                "closing"
            } else {
                "dropped"
            };
            self.0.save_record(session, state).await;
        }
        // One step for a handover to see: live (by id), or dropped, never neither.
        let (handed_over, forgotten) = {
            let mut dropped = self.0.dropped.lock();
            forget(&mut self.0.by_pid.lock());
            let handed_over = handed_over();
            // Forgotten meanwhile (the backend disconnected the user while the record was
            // written): not kept, and the record goes.
            let forgotten = t.state.lock().forgotten;
            if !handed_over && !forgotten {
                dropped.insert(pid.clone(), (session.clone(), Instant::now()));
            }
            (handed_over, forgotten)
        };
        if forgotten && !handed_over {
            self.0.delete_record(&pid).await;
            tracing::debug!(socket = %session.id(), "forgotten while it closed");
            return;
        }
        tracing::debug!(socket = %session.id(), ?leaving, handed_over, "kept for recovery");
    }

    /// Registers a session with presence and the namespace (the common part of connecting).
    pub(crate) async fn register_session(&self, session: &Arc<Session>) {
        self.0.metrics.connections.inc();
        self.0.metrics.connects.inc();
        self.0
            .metrics
            .transport_connections
            .get_or_create(&crate::metrics::TransportLabels {
                transport: self.transport_name(session.transport()).to_owned(),
            })
            .inc();
        let user = session.user_id();
        self.0
            .per_user
            .lock()
            .entry(user.clone())
            .or_default()
            .push(session.clone());
        self.0.rooms.register(session);
        match self.0.presence.connect(&user, session.id()).await {
            Ok(true) => {
                self.announce("user:online", &user, Some(session.id().clone()))
                    .await
            }
            Ok(false) => {}
            Err(e) => self.backend_error("presence", &e.to_string()),
        }
        self.0.expiry.schedule(session);
        tracing::info!(
            socket = %session.id(),
            user = %user,
            transport = %self.transport_name(session.transport()),
            "connected"
        );
    }

    /// Works out where a session that dropped is in each of its rooms.
    async fn plan(
        &self,
        pid: &str,
        offset: Option<&str>,
        identity: &Identity,
    ) -> Result<Plan, String> {
        let record = self.load_record(pid).await?;
        if record.sub != identity.user_id {
            return Err("the session belongs to another user".to_owned());
        }
        let parsed = offset.and_then(ClientOffset::parse);
        if offset.is_some_and(|o| !o.is_empty()) && parsed.is_none() {
            return Err("the offset is not one of ours".to_owned());
        }
        if record.node == *self.0.node_id {
            return self.hand_over_local(pid, parsed.as_ref());
        }
        let request = json!({ "kind": "handover", "pid": pid, "offset": offset });
        match self
            .0
            .broker
            .ask(&record.node, request, HANDOVER_TIMEOUT)
            .await
        {
            Ok(answer) => {
                let h: Handover = serde_json::from_value(answer)
                    .map_err(|e| format!("the other node's answer is unreadable: {e}"))?;
                if !h.ok {
                    return Err(format!(
                        "the other node could not hand it over: {}",
                        h.reason
                    ));
                }
                let mut rooms = BTreeMap::new();
                for (room, p) in h.rooms {
                    let p: Position = p.parse()?;
                    rooms.insert(Room::from(room), p);
                }
                Ok(Plan {
                    rooms,
                    presence: h.presence,
                })
            }
            Err(e) => {
                // The node that held it is gone: place it from what it wrote down.
                tracing::info!(pid = %pid, node = %record.node, error = %e, "the node that held a session did not answer; recovering from its checkpoints");
                self.plan_from_records(&record, parsed.as_ref()).await
            }
        }
    }

    /// Places a session from its record and its old node's checkpoints (that node is gone).
    async fn plan_from_records(
        &self,
        record: &SessionRecord,
        offset: Option<&ClientOffset>,
    ) -> Result<Plan, String> {
        let record = &self.apply_control_log(record).await?;
        let fields: Vec<String> = record.rooms.keys().map(|r| r.to_string()).collect();
        let values = self
            .0
            .broker
            .get_record(&checkpoint_key(&record.node), &fields)
            .await
            .map_err(|e| e.to_string())?;
        let mut entries: HashMap<Room, Vec<(u64, Position)>> = HashMap::new();
        for (room, value) in record.rooms.keys().zip(values) {
            entries.insert(
                room.clone(),
                value.as_deref().map(decode_entries).unwrap_or_default(),
            );
        }
        let state = crate::recovery::TrackState {
            attach: record.attach,
            rooms: record.rooms.clone(),
            ..Default::default()
        };
        let rooms = resolve(&state, &record.tag, offset, |room, after, upto| {
            entries
                .get(room)
                .map_or(crate::recovery::Lookup::Nothing, |e| {
                    lookup_in(e, after, upto)
                })
        })
        .map_err(|e| e.0)?;
        let presence = self.presence_from_records(record, offset).await?;
        Ok(Plan { rooms, presence })
    }

    /// The record as the backend's control calls made since it was written leave it (its
    /// node, gone, may not have carried them out): out of the rooms the user was taken out
    /// of; an error when the user was disconnected.
    async fn apply_control_log(&self, record: &SessionRecord) -> Result<SessionRecord, String> {
        let mut record = record.clone();
        let since = record
            .saved_ms
            .saturating_sub(super::control::CLOCK_ALLOWANCE_MS);
        let log = self
            .0
            .broker
            .control_log(since)
            .await
            .map_err(|e| format!("the control log cannot be read: {e}"))?;
        for entry in log {
            let r = &entry.request;
            if r.get("user").and_then(Value::as_str) != Some(record.sub.as_str()) {
                continue;
            }
            match r.get("kind").and_then(Value::as_str) {
                Some("disconnect") => {
                    return Err("the backend disconnected the user since".to_owned());
                }
                Some("leave") => {
                    if let Some(room) = r.get("room").and_then(Value::as_str) {
                        record.rooms.remove(&Room::from(room));
                    }
                }
                _ => {}
            }
        }
        Ok(record)
    }

    /// The presence changes a session whose node is gone may have missed: this node's own,
    /// from when the old node's marks (or the recovery window) say the client missed them
    /// (less a margin, so some may come twice); an error when this node does not hold all
    /// of them.
    async fn presence_from_records(
        &self,
        record: &SessionRecord,
        offset: Option<&ClientOffset>,
    ) -> Result<Vec<Delivery>, String> {
        let Some(keeper) = &self.0.rooms.keeper else {
            return Ok(Vec::new());
        };
        let seen = offset
            .filter(|o| o.tag == record.tag)
            .and_then(|o| match o.mark {
                Mark::Live(seq) => Some(seq),
                // During a replay the missed presence changes were still to come.
                Mark::Replay { .. } => None,
            })
            .unwrap_or(record.attach);
        let marks = self
            .0
            .broker
            .get_record(&marks_key(&record.node), &["p".to_owned()])
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .flatten()
            .and_then(|t| PresenceMarks::decode(&t));
        let window = self.0.config.recovery.max_disconnection.get();
        let from = presence_replay_from(
            record.attached_us,
            seen,
            marks.as_ref(),
            crate::broker::now_us(),
            u64::try_from(window.as_micros()).unwrap_or(u64::MAX),
        );
        keeper.presence_since(from).ok_or_else(|| {
            "this node does not hold every presence change the session may have missed".to_owned()
        })
    }

    /// Hands a session this node holds (dropped, or still live) to a new connection.
    fn hand_over_local(&self, pid: &str, offset: Option<&ClientOffset>) -> Result<Plan, String> {
        self.0.hand_over(pid, offset)
    }

    /// Restores a recovering session's rooms and reads what it missed; `false` (and
    /// nothing restored) when that cannot be done in full.
    async fn restore(&self, session: &Arc<Session>, plan: Plan) -> bool {
        let identity = session.identity();
        for (room, position) in &plan.rooms {
            let ctx = HookCtx {
                direction: Direction::Inbound,
                room: Some(room),
                source: Source::Socket,
                user_id: Some(&identity.user_id),
                socket_id: Some(session.id().as_str()),
                claims: Some(&identity.claims),
            };
            if self.0.access.check(&identity, room).await.is_err()
                || !self.0.hooks.iter().all(|h| h.authorize(&ctx))
            {
                tracing::debug!(room = %room, "not recovered: the room's policy refuses it now");
                return false;
            }
            if let Err(e) = self
                .0
                .rooms
                .join(session, room, Some(position.clone()))
                .await
            {
                self.backend_error("broker", &e.to_string());
                return false;
            }
        }
        // Read after the rooms are subscribed: anything newer arrives live, and is held.
        let limit = self.0.config.history.size.max(1);
        let mut missed = Vec::new();
        for (room, position) in &plan.rooms {
            match self.0.broker.history(room, Some(position), limit).await {
                Ok(h) if h.complete => missed.push(h),
                Ok(_) => {
                    tracing::debug!(room = %room, "not recovered: history no longer reaches back");
                    return false;
                }
                Err(e) => {
                    tracing::debug!(room = %room, error = %e, "not recovered: no history");
                    return false;
                }
            }
        }
        if let Some(t) = &session.tracker {
            let mut st = t.state.lock();
            st.to_replay = in_kept_order(missed);
            st.presence = plan.presence;
        }
        true
    }

    async fn load_record(&self, pid: &str) -> Result<SessionRecord, String> {
        let values = self
            .0
            .broker
            .get_record(&session_key(pid), &["s".to_owned()])
            .await
            .map_err(|e| e.to_string())?;
        let text = values
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| "no such session (unknown, or its window is over)".to_owned())?;
        serde_json::from_str(&text).map_err(|e| format!("unreadable session record: {e}"))
    }

    /// Writes the rooms' newest deliveries for a node that would have to place this node's
    /// sessions without it; every room's deepest at a shutdown.
    pub(crate) async fn checkpoint(&self, shutdown: bool) {
        let Some(k) = &self.0.rooms.keeper else {
            return;
        };
        let depth = if shutdown {
            SHUTDOWN_DEPTH
        } else {
            CHECKPOINT_DEPTH
        };
        let cfg = &self.0.config;
        let ttl = cfg.recovery.max_disconnection.get() + cfg.history.ttl.get();
        // This node's newest presence changes and where they sit in its order, for
        // replays without it.
        let marks = PresenceMarks {
            as_of_us: crate::broker::now_us(),
            changes: k.newest_presence(MARKS_KEPT),
        }
        .encode();
        if let Err(e) = self
            .0
            .broker
            .put_record(
                &marks_key(&self.0.node_id),
                vec![("p".to_owned(), marks)],
                ttl,
            )
            .await
        {
            self.backend_error("broker", &e.to_string());
        }
        let rooms = if shutdown {
            k.rings.rooms()
        } else {
            k.rings.take_changed()
        };
        if rooms.is_empty() {
            return;
        }
        let mut fields = Vec::with_capacity(rooms.len());
        {
            let mut kept = self.0.checkpointed.lock();
            for room in rooms {
                let newest = k.rings.newest(&room, depth);
                let old = kept.get(&room).cloned().unwrap_or_default();
                let merged = merge_entries(&old, &newest, depth);
                fields.push((room.to_string(), encode_entries(&merged)));
                kept.insert(room, merged);
            }
        }
        if let Err(e) = self
            .0
            .broker
            .put_record(&checkpoint_key(&self.0.node_id), fields, ttl)
            .await
        {
            self.backend_error("broker", &e.to_string());
        }
    }

    /// Starts the checkpoint and expiry loop (recovery on).
    pub(crate) fn start_recovery(&self) {
        if self.0.rooms.keeper.is_none() {
            return;
        }
        let weak = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let gw = Gateway(inner);
                gw.checkpoint(false).await;
                gw.0.expire_dropped();
            }
        });
    }
}

impl Inner {
    /// This node's tag in offsets.
    pub(crate) fn tag(&self) -> String {
        self.rooms
            .keeper
            .as_ref()
            .map_or_else(String::new, |k| k.tag.clone())
    }

    /// Writes a tracked session's record for other nodes.
    pub(crate) async fn save_record(&self, session: &Arc<Session>, state: &str) {
        let Some(t) = &session.tracker else { return };
        let record = {
            let st = t.state.lock();
            SessionRecord {
                sub: session.user_id(),
                node: self.node_id.to_string(),
                tag: self.tag(),
                attach: st.attach,
                attached_us: st.attached_us,
                rooms: st.rooms.clone(),
                state: state.to_owned(),
                saved_ms: crate::broker::now_us() / 1000,
            }
        };
        let Ok(text) = serde_json::to_string(&record) else {
            return;
        };
        let ttl = if state == "live" {
            LIVE_RECORD_TTL
        } else {
            self.config.recovery.max_disconnection.get()
        };
        let pid = t.pid.lock().clone();
        if let Err(e) = self
            .broker
            .put_record(&session_key(&pid), vec![("s".to_owned(), text)], ttl)
            .await
        {
            self.backend_error("broker", &e.to_string());
        }
    }

    /// Deletes the record of session `pid`: no node recovers it.
    pub(crate) async fn delete_record(&self, pid: &str) {
        if let Err(e) = self.broker.delete_record(&session_key(pid), &[]).await {
            self.backend_error("broker", &e.to_string());
        }
    }

    /// Writes a joined or left room into a tracked session's record.
    pub(crate) async fn rooms_changed(&self, session: &Arc<Session>) {
        if session.tracker.is_some() && !session.is_held() {
            self.save_record(session, "live").await;
        }
    }

    /// Answers a handover request (from another node, or this one).
    fn hand_over(&self, pid: &str, offset: Option<&ClientOffset>) -> Result<Plan, String> {
        let Some(keeper) = &self.rooms.keeper else {
            return Err("recovery is off on this node".to_owned());
        };
        let session = {
            // Under the lock a closing session takes to become dropped (see
            // `Gateway::disconnect_with`): it is found in one place or the other.
            let mut dropped = self.dropped.lock();
            match dropped.remove(pid).map(|(s, _)| s) {
                Some(s) => s,
                None => {
                    // Still live here (or closing): the client came back before this node
                    // saw it go.
                    let live = self
                        .by_pid
                        .lock()
                        .get(pid)
                        .and_then(Weak::upgrade)
                        .ok_or_else(|| "this node holds no such session".to_owned())?;
                    let Some(t) = &live.tracker else {
                        return Err("the session tracks no offsets".to_owned());
                    };
                    {
                        let mut st = t.state.lock();
                        if st.pending {
                            return Err("the session was still being recovered".to_owned());
                        }
                        if st.forgotten {
                            return Err("this node forgot the session".to_owned());
                        }
                        st.handed_over = true;
                    }
                    live.close(CloseReason::Replaced);
                    live
                }
            }
        };
        let Some(t) = &session.tracker else {
            return Err("the session tracks no offsets".to_owned());
        };
        if t.state.lock().pending {
            return Err("the session was still being recovered".to_owned());
        }
        let rooms = t
            .resolve(&keeper.tag, offset, &keeper.rings)
            .map_err(|e| e.0)?;
        let after = match offset.map(|o| o.mark) {
            Some(Mark::Live(seq)) if offset.is_some_and(|o| o.tag == keeper.tag) => seq,
            _ => t.state.lock().attach,
        };
        Ok(Plan {
            rooms,
            presence: keeper.presence_after(after),
        })
    }

    /// Answers another node's request.
    pub(crate) fn control(&self, request: &Value) -> Value {
        match request.get("kind").and_then(Value::as_str) {
            Some("handover") => {
                let pid = request.get("pid").and_then(Value::as_str).unwrap_or("");
                let offset = request
                    .get("offset")
                    .and_then(Value::as_str)
                    .and_then(ClientOffset::parse);
                match self.hand_over(pid, offset.as_ref()) {
                    Ok(plan) => serde_json::to_value(Handover {
                        ok: true,
                        rooms: plan
                            .rooms
                            .into_iter()
                            .map(|(r, p)| (r.to_string(), p.to_string()))
                            .collect(),
                        presence: plan.presence,
                        reason: String::new(),
                    })
                    .unwrap_or(Value::Null),
                    Err(reason) => json!({ "ok": false, "reason": reason }),
                }
            }
            _ => json!({ "ok": false, "reason": "unknown request" }),
        }
    }

    /// Forgets dropped sessions whose window is over.
    fn expire_dropped(&self) {
        let window = self.config.recovery.max_disconnection.get();
        self.dropped
            .lock()
            .retain(|_, (_, at)| at.elapsed() <= window);
        self.by_pid.lock().retain(|_, w| w.strong_count() > 0);
        if let Some(k) = &self.rooms.keeper {
            k.rings.prune();
        }
    }
}

/// The events of several rooms' histories in one list: each room's in its order, the rooms
/// interleaved as the broker kept them (by `kept_at`; a history without it comes after).
fn in_kept_order(histories: Vec<History>) -> Vec<Delivery> {
    let mut heads: Vec<_> = histories
        .into_iter()
        .map(|h| {
            let at = if h.kept_at.len() == h.events.len() {
                h.kept_at
            } else {
                vec![u64::MAX; h.events.len()]
            };
            at.into_iter().zip(h.events).peekable()
        })
        .collect();
    let mut out = Vec::new();
    loop {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, h)| h.peek().map(|(at, _)| (*at, i)))
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        if let Some((_, d)) = heads[i].next() {
            out.push(d);
        }
    }
}

/// A tracked session in [`Inner::closing`] while it lives: entered before the session leaves
/// `per_user`, left (on drop) after it is kept for recovery or forgotten.
struct Closing<'a> {
    inner: &'a Inner,
    user: String,
    session: Arc<Session>,
}

impl<'a> Closing<'a> {
    fn enter(inner: &'a Inner, session: &Arc<Session>) -> Self {
        let user = session.user_id();
        inner
            .closing
            .lock()
            .entry(user.clone())
            .or_default()
            .push(session.clone());
        Closing {
            inner,
            user,
            session: session.clone(),
        }
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut closing = self.inner.closing.lock();
        if let Some(mine) = closing.get_mut(&self.user) {
            mine.retain(|s| !Arc::ptr_eq(s, &self.session));
            if mine.is_empty() {
                closing.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(room: &str, kept: &[(u64, u64)]) -> History {
        let events = kept
            .iter()
            .map(|(n, _)| {
                let payload =
                    serde_json::value::to_raw_value(&json!({ "n": n })).expect("a JSON value");
                Delivery::new("e", Some(Room::from(room)), payload)
                    .at(Position::new(Arc::from("ep"), *n))
            })
            .collect();
        History {
            events,
            kept_at: kept.iter().map(|(_, at)| *at).collect(),
            complete: true,
            last: None,
        }
    }

    fn order(list: &[Delivery]) -> Vec<(String, u64)> {
        list.iter()
            .map(|d| {
                let room = d.room.as_ref().map(|r| r.to_string()).unwrap_or_default();
                (room, d.position.as_ref().map_or(0, |p| p.n))
            })
            .collect()
    }

    #[test]
    fn rooms_are_interleaved_as_kept_and_each_keeps_its_order() {
        let a = history("a", &[(1, 10), (2, 30), (3, 50)]);
        let b = history("b", &[(7, 20), (8, 40)]);
        let got = in_kept_order(vec![a, b]);
        let want = [("a", 1), ("b", 7), ("a", 2), ("b", 8), ("a", 3)];
        let want: Vec<_> = want.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(order(&got), want);
    }

    #[test]
    fn a_history_without_times_keeps_its_order_after_the_others() {
        let a = history("a", &[(1, 10), (2, 30)]);
        let mut b = history("b", &[(5, 0), (6, 0)]);
        b.kept_at.clear();
        let got = in_kept_order(vec![b, a]);
        let want = [("a", 1), ("a", 2), ("b", 5), ("b", 6)];
        let want: Vec<_> = want.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        assert_eq!(order(&got), want);
    }
}
