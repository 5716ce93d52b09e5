//! The backend's control of the cluster (CONTRACT §3): requests every node carries out for
//! its own sockets (join or leave a user's sockets, disconnect a user, send to a user,
//! describe its rooms and itself), and asking every node at once.
//!
//! A call is answered only once every node alive has answered (through the broker's
//! [`ask`](crate::RoomBroker::ask); this node directly). A node that does not answer in
//! time fails the call, naming it: never an answer that does not hold.
//!
//! A call about a user's sockets (join, leave, disconnect) is first written to the broker's
//! control log ([`log_control`](crate::RoomBroker::log_control)): a node cut off from the
//! others long enough not to count as alive is not asked, and carries the call out from
//! the log before it receives any room's events again (a *replay*: only the sockets that
//! connected before the call, and each entry once). A session that dropped and waits for
//! its client to come back is part of it too: a leave takes the room out of what it will
//! recover, a disconnect forgets it; a session recovered from the records of a node that
//! is gone is checked against the log as well.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Gateway, Inner};
use crate::broker::Room;
use crate::session::Session;
use crate::transport::CloseReason;

/// How long a call waits for every node's answer.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many recovery records a reset deletes, and sockets it takes out of their rooms, at a
/// time.
const RESET_CONCURRENCY: usize = 64;
/// How long a disconnect waits for a closed socket to be gone from its node.
const CLOSE_WAIT: Duration = Duration::from_millis(1500);

/// How much later than a logged call a socket may have connected (by this node's clock)
/// and still be one the call was about: clocks of nodes and Redis disagree a little, and
/// doing a leave or a disconnect to a socket that came just after it is the safe side.
pub(crate) const CLOCK_ALLOWANCE_MS: u64 = 1000;
/// How long this node remembers the log entries it carried out.
const APPLIED_FOR: Duration = Duration::from_secs(15 * 60);
/// At most this many remembered entries.
const APPLIED_MAX: usize = 100_000;

/// The control log entries this node carried out lately (a replay skips them).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    ids: HashSet<String>,
    order: VecDeque<(String, Instant)>,
}

impl Applied {
    /// Remembers entry `id`; whether it was new.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        let now = Instant::now();
        while self
            .order
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > APPLIED_FOR)
            || self.order.len() >= APPLIED_MAX
        {
            if let Some((old, _)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back((id.to_owned(), now));
        true
    }
}

/// A control call that did not hold on every node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Nodes did not answer in time, or could not be asked (each with why).
    #[error("{}", unreachable_message(.0))]
    Unreachable(Vec<(String, String)>),
    /// The list of nodes could not be read.
    #[error("could not list the nodes: {0}")]
    Nodes(String),
    /// The call could not be written to the control log.
    #[error("could not write the call to the control log: {0}")]
    Log(String),
    /// The user has no socket on any node.
    #[error("user {0} has no socket on any node")]
    NoSuchUser(String),
    /// A node answered that it could not do it.
    #[error("node {node}: {reason}")]
    Failed {
        /// The node.
        node: String,
        /// What it said.
        reason: String,
    },
}

fn unreachable_message(nodes: &[(String, String)]) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|(n, why)| format!("{n} ({why})"))
        .collect();
    format!(
        "not every node answered within {} ms: {}",
        CONTROL_TIMEOUT.as_millis(),
        list.join(", ")
    )
}

/// A room as one node or the cluster sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomView {
    /// The users with sockets in it.
    pub users: BTreeSet<String>,
    /// Its sockets.
    pub sockets: usize,
}

impl Gateway {
    /// Carries out `request` on every node alive, this one included; each node's answer.
    pub(crate) async fn ask_all(
        &self,
        request: Value,
    ) -> Result<Vec<(String, Value)>, ControlError> {
        let me = self.0.node_id.to_string();
        let mut nodes = self
            .0
            .broker
            .nodes()
            .await
            .map_err(|e| ControlError::Nodes(e.to_string()))?;
        nodes.retain(|n| *n != me);
        let others = nodes.iter().map(|node| {
            let request = request.clone();
            async move {
                let answer = self.0.broker.ask(node, request, CONTROL_TIMEOUT).await;
                (node.clone(), answer)
            }
        });
        let (local, answers) = tokio::join!(
            self.0.control_local(request.clone()),
            futures_util::future::join_all(others)
        );
        let mut out = vec![(me, local)];
        let mut unreachable = Vec::new();
        for (node, answer) in answers {
            match answer {
                Ok(v) if v.is_null() => {
                    unreachable.push((node, "it answers no control requests".to_owned()))
                }
                Ok(v) => out.push((node, v)),
                Err(e) => unreachable.push((node, e.to_string())),
            }
        }
        if !unreachable.is_empty() {
            return Err(ControlError::Unreachable(unreachable));
        }
        for (node, answer) in &out {
            if let Some(reason) = answer.get("error").and_then(Value::as_str) {
                return Err(ControlError::Failed {
                    node: node.clone(),
                    reason: reason.to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Sums a count of every node's answer (`sockets`: done; `of`: the user's sockets).
    pub(crate) fn sum_of(answers: &[(String, Value)], field: &str) -> u64 {
        answers
            .iter()
            .filter_map(|(_, a)| a.get(field).and_then(Value::as_u64))
            .sum()
    }

    /// The user's sockets that it was done to, or [`ControlError::NoSuchUser`] when the user
    /// has none on any node.
    fn done_to(user: &str, answers: &[(String, Value)]) -> Result<u64, ControlError> {
        if Self::sum_of(answers, "of") == 0 {
            return Err(ControlError::NoSuchUser(user.to_owned()));
        }
        Ok(Self::sum_of(answers, "sockets"))
    }

    /// The rooms with members on any node whose name starts with `prefix` and comes after
    /// `after`, by name: at least the first `limit` of them (all when `None`), each with its
    /// members on every node.
    ///
    /// Each node answers only its own first `limit`: a room among the cluster's first
    /// `limit` is among the first `limit` of every node that has members of it.
    pub(crate) async fn cluster_rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<BTreeMap<String, RoomView>, ControlError> {
        let answers = self
            .ask_all(json!({ "kind": "rooms", "prefix": prefix, "after": after, "limit": limit }))
            .await?;
        let mut all: BTreeMap<String, RoomView> = BTreeMap::new();
        for (_, answer) in answers {
            let Some(rooms) = answer.get("rooms").and_then(Value::as_object) else {
                continue;
            };
            for (room, v) in rooms {
                let view = all.entry(room.clone()).or_default();
                view.sockets += v
                    .get("sockets")
                    .and_then(Value::as_u64)
                    .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
                if let Some(users) = v.get("users").and_then(Value::as_array) {
                    view.users
                        .extend(users.iter().filter_map(Value::as_str).map(str::to_owned));
                }
            }
        }
        Ok(all)
    }
}

impl Inner {
    /// Answers a request of another node, or of this one's own [`Gateway::ask_all`].
    ///
    /// A request from the control log (`replay`) is carried out once, for the sockets that
    /// connected before it was made (`at`).
    pub(crate) async fn control_local(self: &Arc<Self>, request: Value) -> Value {
        let kind = request.get("kind").and_then(Value::as_str).unwrap_or("");
        let replay = request.get("replay").and_then(Value::as_bool) == Some(true);
        if let Some(id) = request.get("log").and_then(Value::as_str) {
            let fresh = self.control_applied.lock().insert(id);
            if replay && !fresh {
                return json!({ "sockets": 0, "of": 0, "skipped": true });
            }
        }
        let before = replay.then(|| {
            request
                .get("at")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .saturating_add(CLOCK_ALLOWANCE_MS)
        });
        if replay {
            let user = request.get("user").and_then(Value::as_str).unwrap_or("");
            tracing::info!(kind = %kind, user = %user, "carrying out a control call this node missed");
        }
        let text = |k: &str| {
            request
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match kind {
            "handover" => self.control(&request),
            "info" => self.info(),
            "rooms" => self.local_rooms(
                &text("prefix"),
                request.get("after").and_then(Value::as_str),
                request
                    .get("limit")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok()),
            ),
            "join" => {
                self.join_user(&text("user"), Room::from(text("room")), before)
                    .await
            }
            "leave" => {
                self.leave_user(&text("user"), Room::from(text("room")), before)
                    .await
            }
            "disconnect" => {
                self.disconnect_user(&text("user"), &text("reason"), before)
                    .await
            }
            "reset" => self.reset().await,
            "send" => {
                let event = text("event");
                let data = request.get("data").cloned().unwrap_or(Value::Null);
                self.send_user(&text("user"), &event, &data)
            }
            _ => json!({ "error": format!("unknown request `{kind}`") }),
        }
    }

    /// This node's sessions of `user`.
    fn sessions_of(&self, user: &str) -> Vec<Arc<Session>> {
        self.per_user.lock().get(user).cloned().unwrap_or_default()
    }

    /// This node's sessions of `user` that connected before `before` (ms; all when `None`).
    fn sessions_before(&self, user: &str, before: Option<u64>) -> Vec<Arc<Session>> {
        let mut sessions = self.sessions_of(user);
        if let Some(before) = before {
            sessions.retain(|s| s.connected_ms <= before);
        }
        sessions
    }

    /// The sessions of `user` whose transport ended and that this node has not yet kept for
    /// recovery, or not (those that connected before `before`, when given).
    fn closing_of(&self, user: &str, before: Option<u64>) -> Vec<Arc<Session>> {
        let mut sessions = self.closing.lock().get(user).cloned().unwrap_or_default();
        if let Some(before) = before {
            sessions.retain(|s| s.connected_ms <= before);
        }
        sessions
    }

    /// The dropped sessions of `user` this node keeps for recovery (those that connected
    /// before `before`, when given), with their recovery ids.
    fn dropped_of(&self, user: &str, before: Option<u64>) -> Vec<(Arc<str>, Arc<Session>)> {
        self.dropped
            .lock()
            .iter()
            .filter(|(_, (s, _))| {
                *s.user_id() == *user && before.is_none_or(|b| s.connected_ms <= b)
            })
            .map(|(pid, (s, _))| (pid.clone(), s.clone()))
            .collect()
    }

    fn info(&self) -> Value {
        let (users, connections) = {
            let per_user = self.per_user.lock();
            (
                per_user.len(),
                per_user.values().map(Vec::len).sum::<usize>(),
            )
        };
        let errors: Vec<Value> = self
            .metrics
            .recent_errors()
            .into_iter()
            .map(|e| {
                json!({ "at": crate::clock::iso8601_at(e.at), "kind": e.kind, "message": e.message })
            })
            .collect();
        json!({
            "id": &*self.node_id,
            "connections": connections,
            "users": users,
            "uptimeSecs": self.started_at.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "eventsIn": self.metrics.events_in_total(),
            "eventsOut": self.metrics.events_out_total(),
            "errors": errors,
        })
    }

    fn local_rooms(&self, prefix: &str, after: Option<&str>, limit: Option<usize>) -> Value {
        let sessions: Vec<Arc<Session>> =
            self.per_user.lock().values().flatten().cloned().collect();
        // Each room's members as places in `sessions`: users are read for the rooms answered.
        let mut members: HashMap<Room, Vec<usize>> = HashMap::new();
        for (i, s) in sessions.iter().enumerate() {
            for room in s.rooms() {
                if room.starts_with(prefix) && after.is_none_or(|a| &*room > a) {
                    members.entry(room).or_default().push(i);
                }
            }
        }
        let mut names: Vec<Room> = members.keys().cloned().collect();
        if let Some(limit) = limit
            && names.len() > limit
        {
            if limit == 0 {
                names.clear();
            } else {
                names.select_nth_unstable(limit - 1);
                names.truncate(limit);
            }
        }
        let rooms: serde_json::Map<String, Value> = names
            .into_iter()
            .map(|room| {
                let of = members.get(&room).map(Vec::as_slice).unwrap_or_default();
                let users: BTreeSet<String> = of.iter().map(|&i| sessions[i].user_id()).collect();
                (
                    room.to_string(),
                    json!({ "users": users, "sockets": of.len() }),
                )
            })
            .collect();
        json!({ "rooms": rooms })
    }

    /// The reply a socket's own join (`joined`) or leave of `room` produces.
    fn room_reply(&self, room: &Room, joined: bool) -> (String, Value) {
        match self
            .events
            .room_kind(room)
            .and_then(|k| k.id_of(room).map(|id| (k, id)))
        {
            Some((k, id)) if joined => k.joined(id),
            Some((k, id)) => k.left(id),
            None if joined => ("room:joined".to_owned(), json!({ "room": &**room })),
            None => ("room:left".to_owned(), json!({ "room": &**room })),
        }
    }

    async fn join_user(&self, user: &str, room: Room, before: Option<u64>) -> Value {
        let mut n = 0usize;
        let sessions = self.sessions_before(user, before);
        let of = sessions.len();
        for session in sessions {
            let ticket = session.ticket();
            ticket.turn().await;
            if session.in_room(&room) {
                n += 1;
                continue;
            }
            if let Err(e) = self.rooms.join(&session, &room, None).await {
                self.backend_error("broker", &e.to_string());
                return json!({ "error": format!("could not join {room}: {e}") });
            }
            drop(ticket);
            self.rooms_changed(&session).await;
            let (event, data) = self.room_reply(&room, true);
            session.send_value(&event, &data);
            n += 1;
        }
        json!({ "sockets": n, "of": of })
    }

    async fn leave_user(&self, user: &str, room: Room, before: Option<u64>) -> Value {
        let mut n = 0usize;
        let sessions = self.sessions_before(user, before);
        let of = sessions.len();
        for session in sessions {
            let ticket = session.ticket();
            ticket.turn().await;
            let left = self.rooms.leave(&session, &room).await;
            drop(ticket);
            if left {
                self.rooms_changed(&session).await;
                let (event, data) = self.room_reply(&room, false);
                session.send_value(&event, &data);
                n += 1;
            }
        }
        // A session whose transport ended does not get the room back when it recovers:
        // closing, then waiting for its client (read after the live ones, the order a
        // session goes through them, so one that dropped meanwhile is among these).
        for session in self.closing_of(user, before) {
            if let Some(t) = &session.tracker {
                t.state.lock().rooms.remove(&room);
            }
        }
        for (_, session) in self.dropped_of(user, before) {
            let Some(t) = &session.tracker else { continue };
            let had = t.state.lock().rooms.remove(&room).is_some();
            if had {
                self.save_record(&session, "dropped").await;
            }
        }
        json!({ "sockets": n, "of": of })
    }

    async fn disconnect_user(&self, user: &str, reason: &str, before: Option<u64>) -> Value {
        let sessions = self.sessions_before(user, before);
        // A transport that dropped before the node closed it would otherwise keep it for
        // recovery; so would one that is closing (read after the live ones: a session
        // enters `closing` before it leaves them).
        for session in sessions.iter().chain(&self.closing_of(user, before)) {
            if let Some(t) = &session.tracker {
                t.forget();
            }
        }
        // A session waiting for its client to come back is not recovered (one that was kept
        // before it was marked above is among them by now: it leaves `closing` after).
        for (pid, session) in self.dropped_of(user, before) {
            self.dropped.lock().remove(&pid);
            if let Some(t) = &session.tracker {
                t.forget();
            }
            self.delete_record(&pid).await;
        }
        let message = if reason.is_empty() {
            "Disconnected by the server".to_owned()
        } else {
            format!("Disconnected by the server: {reason}")
        };
        for session in &sessions {
            session.send_error(&message);
            session.close(CloseReason::Kicked);
            // Out of every room now: nothing more reaches it while its transport closes.
            let ticket = session.ticket();
            ticket.turn().await;
            self.rooms.leave_all(session).await;
        }
        for session in &sessions {
            let mut ended = session.ended.subscribe();
            if tokio::time::timeout(CLOSE_WAIT, ended.wait_for(|e| *e))
                .await
                .is_err()
            {
                tracing::debug!(socket = %session.id(), "a disconnected socket is still closing");
            }
        }
        tracing::info!(user = %user, sockets = sessions.len(), reason = %reason, "disconnected a user's sockets");
        json!({ "sockets": sessions.len(), "of": sessions.len() })
    }

    /// Forgets every session of this node and closes every socket so that its client
    /// connects again, afresh: the broker's own request when it cannot tell which control
    /// calls this node missed.
    async fn reset(&self) -> Value {
        // Live, then closing, then dropped: the order a session goes through them, so none
        // slips between two reads.
        let sessions: Vec<Arc<Session>> =
            self.per_user.lock().values().flatten().cloned().collect();
        let mut records: Vec<Arc<str>> = Vec::new();
        for session in &sessions {
            session.mark_closing();
            if let Some(t) = &session.tracker {
                t.forget();
                let pid = t.pid.lock().clone();
                self.by_pid.lock().remove(&pid);
                records.push(pid);
            }
        }
        // One whose transport already ended is not kept for recovery either: marked before
        // the dropped ones are read, so one that is kept meanwhile is among them.
        let closing: Vec<Arc<Session>> = self.closing.lock().values().flatten().cloned().collect();
        for session in &closing {
            if let Some(t) = &session.tracker {
                t.forget();
            }
        }
        // A session waiting for its client to come back is not recovered.
        let dropped: Vec<(Arc<str>, Arc<Session>)> = self
            .dropped
            .lock()
            .drain()
            .map(|(pid, (s, _))| (pid, s))
            .collect();
        for (pid, session) in &dropped {
            if let Some(t) = &session.tracker {
                t.forget();
            }
            records.push(pid.clone());
        }
        // No node recovers any of them: their records go, many at a time.
        futures_util::stream::iter(records)
            .for_each_concurrent(RESET_CONCURRENCY, |pid| async move {
                self.delete_record(&pid).await;
            })
            .await;
        // Out of every room now: nothing more reaches them while their transports close.
        // Many sockets at a time: each waits for its own events in flight first.
        futures_util::stream::iter(&sessions)
            .for_each_concurrent(RESET_CONCURRENCY, |session| async move {
                let ticket = session.ticket();
                ticket.turn().await;
                self.rooms.leave_all(session).await;
            })
            .await;
        let transports = self.rooms.transports();
        let mut by_transport: Vec<Vec<Arc<dyn crate::transport::Connection>>> =
            vec![Vec::new(); transports.len()];
        for session in &sessions {
            match session.transport().0.checked_sub(1) {
                Some(i) if i < transports.len() => by_transport[i].push(session.conn.clone()),
                _ => session.close(CloseReason::Reset),
            }
        }
        self.metrics.error_with(
            "control_reset",
            &format!(
                "closing {} sockets so that their clients connect again: this node was cut off for longer than the control log keeps calls",
                sessions.len()
            ),
        );
        tracing::warn!(
            sockets = sessions.len(),
            waiting = dropped.len(),
            "closing every socket of this node so that each client connects again: the node cannot tell which control calls it missed"
        );
        for (transport, conns) in transports.iter().zip(by_transport) {
            if !conns.is_empty() {
                transport.reset(conns).await;
            }
        }
        // Every socket at once, within one wait.
        let closing = sessions.iter().map(|session| {
            let mut ended = session.ended.subscribe();
            async move {
                let _ = ended.wait_for(|e| *e).await;
            }
        });
        if tokio::time::timeout(CLOSE_WAIT, futures_util::future::join_all(closing))
            .await
            .is_err()
        {
            tracing::debug!("some reset sockets are still closing");
        }
        json!({ "sockets": sessions.len(), "of": sessions.len() })
    }

    fn send_user(&self, user: &str, event: &str, data: &Value) -> Value {
        let sessions = self.sessions_of(user);
        for s in &sessions {
            s.send_value(event, data);
        }
        json!({ "sockets": sessions.len(), "of": sessions.len() })
    }
}

/// What a user-targeted send did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentToUser {
    /// The user's sockets it reached, on every node.
    pub sockets: u64,
    /// Whether a hook dropped it.
    pub dropped: bool,
}

impl Gateway {
    /// Sends `event` to every socket of `user`, on every node (not kept in any history).
    pub async fn send_to_user(
        &self,
        user: &str,
        event: &str,
        data: Value,
    ) -> Result<SentToUser, super::PublishError> {
        super::publish::refuse_reserved(event)?;
        if let Some(decl) = self.0.events.outbound(event) {
            decl.route(&data, &self.0.config.limits)
                .map_err(super::PublishError::payload)?;
        }
        let ctx = crate::hooks::HookCtx {
            direction: crate::hooks::Direction::Outbound,
            room: None,
            source: crate::hooks::Source::Api,
            user_id: Some(user),
            socket_id: None,
            claims: None,
        };
        let Some(data) = self.run_hooks(event, data, &ctx, crate::hooks::Direction::Outbound)
        else {
            return Ok(SentToUser {
                sockets: 0,
                dropped: true,
            });
        };
        self.0.metrics.count_out(event);
        let answers = self
            .ask_all(json!({ "kind": "send", "user": user, "event": event, "data": data }))
            .await
            .map_err(|e| super::PublishError::Control(e.to_string()))?;
        let sockets = Self::done_to(user, &answers)
            .map_err(|_| super::PublishError::NoSuchUser(user.to_owned()))?;
        Ok(SentToUser {
            sockets,
            dropped: false,
        })
    }

    /// Puts every socket of `user`, on every node, in `room`; how many are in it now
    /// ([`ControlError::NoSuchUser`] when the user has no socket).
    pub async fn join_user(&self, user: &str, room: &str) -> Result<u64, ControlError> {
        self.ask_user(user, json!({ "kind": "join", "user": user, "room": room }))
            .await
    }

    /// Takes every socket of `user`, on every node, out of `room`; how many were in it.
    pub async fn leave_user(&self, user: &str, room: &str) -> Result<u64, ControlError> {
        self.ask_user(user, json!({ "kind": "leave", "user": user, "room": room }))
            .await
    }

    /// Closes every socket of `user`, on every node; how many there were.
    pub async fn disconnect_user(&self, user: &str, reason: &str) -> Result<u64, ControlError> {
        self.ask_user(
            user,
            json!({ "kind": "disconnect", "user": user, "reason": reason }),
        )
        .await
    }

    /// Carries out a request about `user` on every node; how many of the user's sockets it
    /// was done to.
    ///
    /// Written to the control log first: a node that is not asked (cut off long enough not
    /// to count as alive) carries it out from there before it delivers any room's events.
    async fn ask_user(&self, user: &str, mut request: Value) -> Result<u64, ControlError> {
        let id = self
            .0
            .broker
            .log_control(&request)
            .await
            .map_err(|e| ControlError::Log(e.to_string()))?;
        if let (Some(id), Some(map)) = (id, request.as_object_mut()) {
            map.insert("log".to_owned(), Value::from(id));
        }
        let answers = self.ask_all(request).await?;
        Self::done_to(user, &answers)
    }

    /// Every node's description (`GET /api/v1/nodes`), by node id.
    pub async fn nodes_info(&self) -> Result<Vec<Value>, ControlError> {
        let answers = self.ask_all(json!({ "kind": "info" })).await?;
        let mut nodes: Vec<Value> = answers.into_iter().map(|(_, a)| a).collect();
        nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_entry_is_new_once() {
        let mut applied = Applied::default();
        assert!(applied.insert("1-0"));
        assert!(applied.insert("2-0"));
        assert!(!applied.insert("1-0"), "carried out already");
        assert!(!applied.insert("2-0"));
        assert!(applied.insert("3-0"));
    }

    #[test]
    fn the_oldest_entries_are_forgotten_past_the_bound() {
        let mut applied = Applied::default();
        for i in 0..=APPLIED_MAX {
            applied.insert(&format!("{i}-0"));
        }
        assert_eq!(applied.order.len(), APPLIED_MAX);
        assert!(applied.insert("0-0"), "the oldest was forgotten");
        assert!(
            !applied.insert(&format!("{APPLIED_MAX}-0")),
            "the newest is kept"
        );
    }
}
