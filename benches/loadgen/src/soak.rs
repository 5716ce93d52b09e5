//! `loadgen soak`: long churn over several nodes that share one Redis, with an exact count
//! of the deliveries a member missed (`benches/soak.sh` runs it and watches the nodes).
//!
//! Sockets (Socket.IO, user `s{i % users}`) are spread over the nodes (`--url`, repeated)
//! and each is in at most one conversation `c0…c{rooms-1}` at a time. Once all are
//! connected and joined, for `--duration` seconds:
//!
//! * **Churn**: `--churn` times a second a random member socket is told to *switch*
//!   (leave its room, then join another), *pause* (leave, join another 0.5–5 s later) or
//!   *drop* (close the connection, half of the time with a WebSocket close and half by just
//!   closing the TCP connection, then reconnect 0.2–2 s later to the next node and join a
//!   random room).
//! * **Publishing**: `--publishers` keep-alive HTTP connections, connection *h* on node
//!   *h mod nodes*, send `message:received` through `POST /api/v1/emit` at
//!   `--publish-rate` in all, round robin over the rooms it owns (room *r* belongs to
//!   connection *r mod publishers*). A connection sends its next request only after the
//!   answer to the previous one, so a room's publishes are ordered: its *k*-th publish
//!   carries `messageId` *k* (and its send time in `content`).
//!
//! **What counts as lost.** A membership runs from the join's ack to the leave's ack (or
//! the drop). A publish to the room is *required* when it was sent after the join's ack
//! (the server acks a join once the node's Redis subscription is in place) and, for a
//! membership that ended with a leave, when some socket of the same node had already
//! received it (or a later publish of the room) before this one sent its leave: that node
//! had delivered it to the room's members before it could see the leave, and what it
//! queued for the socket before the leave arrives before the leave's ack, when the check
//! is made. For a membership that ended with a drop (or a failed connection), up to the
//! last publish of the room the socket itself received (a room's events arrive in order, so
//! a gap before it is a loss; what was still on its way when the socket went is not). For
//! the memberships still open at the end, every publish the server accepted is required,
//! after a drain.
//! A required publish the member did not get is *lost*; the same one twice is a
//! *duplicate*; one older than one already received is *reordered*; an event of a room
//! the socket is not in (or is no longer in, after the leave's ack) is a *stray*. The
//! rule needs no timing: events published while a member is leaving, or that another node
//! had not delivered yet, are neither required nor counted against anybody.
//!
//! With `--state-dir`, the run writes `status.json` there every second (connections,
//! members and counters), and at the end, with every socket back in a room and nothing
//! left to deliver, `quiet.json` (connections per node, rooms with members per node, ...);
//! then it waits until a file `release` appears there (at most `--release-timeout`) before
//! closing every socket, so that the script can compare the nodes and Redis with it.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, hash_map::DefaultHasher};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::Message;

use crate::probe::{self, OwnCpu};
use crate::sio::{self, Protocol, Target, Ws};
use crate::stats::{Clock, percentiles};
use crate::{loopback_addr, mint_for, round};

/// How long a join or a leave may wait for its ack before the socket gives the
/// connection up (and counts an error).
const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Connection attempts in a row after which a socket gives up (an error).
const MAX_CONNECT_FAILURES: u32 = 10;
/// How many samples of each kind of problem are kept.
const MAX_SAMPLES: usize = 8;

/// `loadgen soak` options.
#[derive(Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// A node's base URL; repeat for every node (loopback only).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Socket.IO namespace.
    #[arg(long, default_value = "/messages")]
    namespace: String,
    /// HS256 secret the tokens are signed with.
    #[arg(
        long,
        env = "BENCH_SECRET",
        default_value = "switchboard-bench-secret-0123456789abcdef"
    )]
    secret: String,
    /// API key for the HTTP API.
    #[arg(long, env = "BENCH_API_KEY", default_value = "bench-api-key")]
    api_key: String,
    /// Sockets, spread evenly over the nodes.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Conversations the sockets move between (default: sockets / 10).
    #[arg(long)]
    rooms: Option<usize>,
    /// Distinct users (socket i is user `s{i % users}`; default: sockets / 5).
    #[arg(long)]
    users: Option<usize>,
    /// Seconds of churn and publishing, after every socket has connected.
    #[arg(long, default_value_t = 3600.0)]
    duration: f64,
    /// Churn actions per second (default: sockets / 100).
    #[arg(long)]
    churn: Option<f64>,
    /// Publishes per second, all rooms together.
    #[arg(long, default_value_t = 50.0)]
    publish_rate: f64,
    /// HTTP publisher connections (connection h publishes on node h mod nodes).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Handshakes in flight at once while the sockets first connect.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Limit on each handshake, seconds.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Limit on connecting every socket at the start, seconds.
    #[arg(long, default_value_t = 600.0)]
    setup_deadline: f64,
    /// Limit on the end's settling (every socket back in a room) and on its drain, seconds each.
    #[arg(long, default_value_t = 60.0)]
    drain: f64,
    /// Where status.json and quiet.json are written, and `release` is waited for.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// How long to wait for `release` after quiet.json, seconds.
    #[arg(long, default_value_t = 300.0)]
    release_timeout: f64,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 if anything was lost, duplicated, reordered, stray, or errored.
    #[arg(long)]
    check: bool,
}

/// A small deterministic generator (splitmix64): no dependency for a few random choices.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut h = DefaultHasher::new();
        (seed, stream).hash(&mut h);
        Rng(h.finish())
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + hi.saturating_sub(lo).mul_f64(self.unit())
    }
}

/// The run's phase, as the sockets see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Churn and publishing.
    Run,
    /// No more churn: every socket gets back into a room and stays.
    Settle,
    /// Close every socket.
    Close,
}

/// What the churn driver tells a member socket to do.
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Switch,
    Pause,
    Drop { abrupt: bool },
}

/// One membership of one socket.
#[derive(Debug)]
struct Membership {
    room: u32,
    node: usize,
    /// When the join's ack arrived (None while joining).
    ack_us: Option<u64>,
    /// Ordinals received, sorted.
    got: Vec<u32>,
    /// Checked at the end of the run (still open).
    checked: bool,
}

/// What the run knows of one socket.
#[derive(Debug, Default)]
struct View {
    node: Option<usize>,
    user: usize,
    member: Option<Membership>,
}

/// Every counter of the run.
#[derive(Debug, Default)]
struct Counters {
    connects: u64,
    connect_errors: u64,
    gave_up: u64,
    joins: u64,
    leaves: u64,
    switches: u64,
    pauses: u64,
    drops: u64,
    drops_abrupt: u64,
    skipped: u64,
    publishes: u64,
    publish_failures: u64,
    local_only: u64,
    deliveries: u64,
    required: u64,
    lost: u64,
    duplicates: u64,
    strays: u64,
    reordered: u64,
    unknown: u64,
    memberships_checked: u64,
    errors: u64,
    error_samples: Vec<String>,
    loss_samples: Vec<String>,
}

impl Counters {
    fn error(&mut self, message: impl Into<String>) {
        self.errors += 1;
        let message = message.into();
        if self.error_samples.len() < MAX_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }
    fn loss(&mut self, message: String) {
        if self.loss_samples.len() < MAX_SAMPLES {
            self.loss_samples.push(message);
        }
    }
}

/// What every task shares.
struct World {
    clock: Clock,
    nodes: usize,
    rooms: usize,
    /// `42/messages,`
    event_prefix: String,
    /// `43/messages,`
    ack_prefix: String,
    /// Send time (µs) of each publish of each room, by ordinal.
    sent: RefCell<Vec<Vec<u64>>>,
    /// How many publishes of each room have been answered (they are sequential per room).
    answered: RefCell<Vec<u32>>,
    /// Publishes that failed or reached only the publishing node: never required.
    not_required: RefCell<HashSet<(u32, u32)>>,
    /// Per node and room (`node * rooms + room`): each ordinal newer than every earlier
    /// one, when a socket of that node first received it.
    seen: RefCell<Vec<Vec<(u32, u64)>>>,
    sockets: RefCell<Vec<View>>,
    c: RefCell<Counters>,
    latencies: RefCell<Vec<u32>>,
    phase: Cell<Phase>,
    /// Whether the churn has started (status.json says `setup` before).
    running: Cell<bool>,
}

impl World {
    /// The newest ordinal of `room` a socket of `node` has received so far.
    fn seen_last(&self, node: usize, room: u32) -> Option<u32> {
        self.seen.borrow()[node * self.rooms + room as usize]
            .last()
            .map(|(n, _)| *n)
    }

    /// Checks a membership against the publishes `first..=bound` (first: the first sent after
    /// its ack); counts what is required and what was lost.
    fn check(&self, i: usize, m: &Membership, bound: Option<u32>, why: &str) {
        let (Some(ack), Some(bound)) = (m.ack_us, bound) else {
            return;
        };
        let first = {
            let sent = self.sent.borrow();
            sent[m.room as usize].partition_point(|&t| t <= ack) as u32
        };
        let mut c = self.c.borrow_mut();
        c.memberships_checked += 1;
        if first > bound {
            return;
        }
        let nr = self.not_required.borrow();
        let mut lost = Vec::new();
        let mut required = 0u64;
        for n in first..=bound {
            if nr.contains(&(m.room, n)) {
                continue;
            }
            required += 1;
            if m.got.binary_search(&n).is_err() {
                lost.push(n);
            }
        }
        c.required += required;
        if !lost.is_empty() {
            c.lost += lost.len() as u64;
            c.loss(format!(
                "socket {i} on node {} in c{}, {why}: missed {} of #{first}..#{bound} (first missed {:?})",
                m.node,
                m.room,
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
    }

    /// Ends socket `i`'s membership, checked up to `bound`.
    fn end_membership(&self, i: usize, bound: Option<u32>, why: &str) {
        let m = self.sockets.borrow_mut()[i].member.take();
        if let Some(m) = m
            && !m.checked
        {
            self.check(i, &m, bound, why);
        }
    }

    /// Ends socket `i`'s membership because its connection ends now: checked up to the
    /// last publish it received (what its node had sent it but it had not read yet is
    /// not held against anybody).
    fn end_on_drop(&self, i: usize) {
        let bound = {
            let socks = self.sockets.borrow();
            socks[i].member.as_ref().and_then(|m| m.got.last().copied())
        };
        self.end_membership(i, bound, "dropped");
    }

    /// A `message:received` for socket `i` on `node`; `rest` follows the event's name.
    fn delivery(&self, i: usize, node: usize, rest: &str) {
        let room = field(rest, "conversationId")
            .and_then(|c| c.strip_prefix('c'))
            .and_then(|r| r.parse::<u32>().ok())
            .filter(|r| (*r as usize) < self.rooms);
        let n = field(rest, "messageId").and_then(|s| s.parse::<u32>().ok());
        let sent = field(rest, "content").and_then(|s| s.parse::<u64>().ok());
        let (Some(room), Some(n), Some(sent)) = (room, n, sent) else {
            self.c.borrow_mut().unknown += 1;
            return;
        };
        let now = self.clock.now_us();
        let mut socks = self.sockets.borrow_mut();
        match socks[i].member.as_mut() {
            Some(m) if m.room == room => match m.got.binary_search(&n) {
                Ok(_) => self.c.borrow_mut().duplicates += 1,
                Err(pos) => {
                    let mut c = self.c.borrow_mut();
                    if pos < m.got.len() {
                        c.reordered += 1;
                        c.loss(format!(
                            "socket {i} on node {node} in c{room}: #{n} after #{}",
                            m.got[m.got.len() - 1]
                        ));
                    }
                    m.got.insert(pos, n);
                    c.deliveries += 1;
                    drop(c);
                    let lat = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
                    self.latencies.borrow_mut().push(lat);
                    let mut seen = self.seen.borrow_mut();
                    let log = &mut seen[node * self.rooms + room as usize];
                    if log.last().is_none_or(|(last, _)| n > *last) {
                        log.push((n, now));
                    }
                }
            },
            _ => {
                let mut c = self.c.borrow_mut();
                c.strays += 1;
                let inside = socks[i].member.as_ref().map(|m| m.room);
                c.loss(format!(
                    "socket {i} on node {node}: c{room} #{n} while in {inside:?}"
                ));
            }
        }
    }

    /// Counts of now, for status.json and quiet.json.
    fn view(&self, start: Instant) -> Value {
        let socks = self.sockets.borrow();
        let mut per_node = vec![0u64; self.nodes];
        let mut members = 0u64;
        let mut rooms_per_node: Vec<HashSet<u32>> = vec![HashSet::new(); self.nodes];
        let mut rooms_all = HashSet::new();
        let mut users = HashSet::new();
        for s in socks.iter() {
            if let Some(n) = s.node {
                per_node[n] += 1;
                users.insert(s.user);
                if let Some(m) = &s.member
                    && m.ack_us.is_some()
                {
                    members += 1;
                    rooms_per_node[n].insert(m.room);
                    rooms_all.insert(m.room);
                }
            }
        }
        let c = self.c.borrow();
        json!({
            "elapsed_s": round(start.elapsed().as_secs_f64(), 1),
            "phase": if self.running.get() {
                format!("{:?}", self.phase.get()).to_lowercase()
            } else {
                "setup".to_owned()
            },
            "connected": per_node.iter().sum::<u64>(),
            "connected_per_node": per_node,
            "users_connected": users.len(),
            "members": members,
            "rooms_with_members": rooms_all.len(),
            "rooms_with_members_per_node": rooms_per_node.iter().map(HashSet::len).collect::<Vec<_>>(),
            "connects": c.connects,
            "actions": c.switches + c.pauses + c.drops,
            "publishes": c.publishes,
            "deliveries": c.deliveries,
            "required": c.required,
            "lost": c.lost,
            "duplicates": c.duplicates,
            "reordered": c.reordered,
            "strays": c.strays,
            "errors": c.errors,
        })
    }
}

/// The text of the string field `key` of a flat JSON object, without unescaping.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

/// Writes `v` to `dir/name` (through a temporary file, so a reader never sees half of it).
fn write_state(dir: &Path, name: &str, v: &Value) {
    let tmp = dir.join(format!(".{name}.tmp"));
    if std::fs::write(&tmp, format!("{v}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(name));
    }
}

/// How a connection ended.
enum Outcome {
    /// Told to drop: reconnect after a pause.
    Dropped,
    /// Failed (server closed, timeout): reconnect after a pause.
    Failed,
    /// The run is over.
    Closed,
}

/// A socket's state on one connection.
#[derive(Debug, Clone, Copy)]
enum St {
    /// In no room; joins at `at` (if any).
    Idle {
        at: Option<Instant>,
    },
    Joining {
        id: u64,
        since: Instant,
    },
    Member {
        room: u32,
    },
    Leaving {
        id: u64,
        room: u32,
        pause: bool,
        bound: Option<u32>,
        since: Instant,
    },
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One socket's whole life: connect, join, obey churn commands, reconnect, until Close.
#[allow(clippy::too_many_arguments)]
async fn socket_task(
    i: usize,
    world: Rc<World>,
    targets: Rc<Vec<Target>>,
    token: String,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut phase: watch::Receiver<Phase>,
    first: Rc<Semaphore>,
    seed: u64,
) {
    let mut rng = Rng::new(seed, i as u64);
    let mut node = i % world.nodes;
    let mut initial = true;
    let mut failures = 0u32;
    loop {
        if *phase.borrow() == Phase::Close {
            return;
        }
        let permit = if initial {
            first.acquire().await.ok()
        } else {
            None
        };
        let opened = sio::open(&targets[node], &token, None).await;
        drop(permit);
        let ws = match opened {
            Ok(ws) => ws,
            Err(e) => {
                failures += 1;
                {
                    let mut c = world.c.borrow_mut();
                    c.connect_errors += 1;
                    c.error(format!("connect to node {node}: {e}"));
                    if failures >= MAX_CONNECT_FAILURES {
                        c.gave_up += 1;
                        c.error(format!("socket gave up after {failures} failed connects"));
                        return;
                    }
                }
                node = (node + 1) % world.nodes;
                let pause = rng.between(Duration::from_millis(200), Duration::from_secs(2));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = phase.changed() => {}
                }
                continue;
            }
        };
        failures = 0;
        initial = false;
        world.c.borrow_mut().connects += 1;
        world.sockets.borrow_mut()[i].node = Some(node);
        let outcome = connected(i, node, ws, &world, &mut cmds, &mut phase, &mut rng).await;
        world.sockets.borrow_mut()[i].node = None;
        match outcome {
            Outcome::Closed => return,
            Outcome::Dropped | Outcome::Failed => {
                let pause = rng.between(Duration::from_millis(200), Duration::from_secs(2));
                if *phase.borrow() == Phase::Run {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = phase.changed() => {}
                    }
                }
            }
        }
        node = (node + 1) % world.nodes;
    }
}

/// Sends `42/ns,id["event",{"conversationId":"cR"}]`.
async fn send_room_event(
    ws: &mut Ws,
    world: &World,
    id: u64,
    event: &str,
    room: u32,
) -> Result<(), String> {
    let frame = format!(
        "{}{id}[\"{event}\",{{\"conversationId\":\"c{room}\"}}]",
        world.event_prefix
    );
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("send {event}: {e}"))
}

/// Runs one connection until it drops, fails or the run closes.
async fn connected(
    i: usize,
    node: usize,
    mut ws: Ws,
    world: &World,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    phase: &mut watch::Receiver<Phase>,
    rng: &mut Rng,
) -> Outcome {
    let mut next_id = 0u64;
    let mut st = St::Idle {
        at: Some(Instant::now()),
    };
    let fail = |world: &World, msg: String| {
        world.c.borrow_mut().error(msg);
        world.end_on_drop(i);
        Outcome::Failed
    };
    loop {
        let wake = match st {
            St::Idle { at } => at,
            St::Joining { since, .. } | St::Leaving { since, .. } => Some(since + ACK_TIMEOUT),
            St::Member { .. } => None,
        };
        tokio::select! {
            biased;
            changed = phase.changed() => {
                let now_phase = if changed.is_err() { Phase::Close } else { *phase.borrow() };
                match now_phase {
                    Phase::Close => {
                        world.end_on_drop(i);
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                        return Outcome::Closed;
                    }
                    Phase::Settle => {
                        if let St::Idle { .. } = st {
                            st = St::Idle { at: Some(Instant::now()) };
                        }
                    }
                    Phase::Run => {}
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => {
                        return fail(world, format!("node {node} closed the connection"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return fail(world, format!("node {node}: websocket: {e}")),
                };
                let t = text.as_str();
                if t == "2" {
                    if let Err(e) = ws.send(Message::text("3")).await {
                        return fail(world, format!("node {node}: send pong: {e}"));
                    }
                } else if let Some(rest) = t.strip_prefix(world.event_prefix.as_str()) {
                    if let Some(rest) = rest.strip_prefix("[\"message:received\"") {
                        world.delivery(i, node, rest);
                    }
                } else if let Some(rest) = t.strip_prefix(world.ack_prefix.as_str()) {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let id = rest[..digits].parse::<u64>().ok();
                    let ok = rest[digits..].contains("\"success\":true");
                    match st {
                        St::Joining { id: want, .. } if id == Some(want) => {
                            let room = {
                                let mut socks = world.sockets.borrow_mut();
                                let m = socks[i].member.as_mut();
                                if ok {
                                    m.map(|m| {
                                        m.ack_us = Some(world.clock.now_us());
                                        m.room
                                    })
                                } else {
                                    socks[i].member = None;
                                    None
                                }
                            };
                            match room {
                                Some(room) => {
                                    world.c.borrow_mut().joins += 1;
                                    st = St::Member { room };
                                }
                                None => {
                                    world.c.borrow_mut().error(format!("node {node}: join refused: {:.80}", &rest[digits..]));
                                    st = St::Idle { at: Some(Instant::now() + Duration::from_secs(1)) };
                                }
                            }
                        }
                        St::Leaving { id: want, room, pause, bound, .. } if id == Some(want) => {
                            if !ok {
                                world.c.borrow_mut().error(format!("node {node}: leave refused: {:.80}", &rest[digits..]));
                            }
                            world.end_membership(i, bound, "left");
                            world.c.borrow_mut().leaves += 1;
                            let settle = *phase.borrow() != Phase::Run;
                            if pause && !settle {
                                st = St::Idle { at: Some(Instant::now() + rng.between(Duration::from_millis(500), Duration::from_secs(5))) };
                            } else {
                                // Another room than the one just left.
                                let mut next = rng.below(world.rooms.saturating_sub(1).max(1)) as u32;
                                if world.rooms > 1 && next >= room {
                                    next += 1;
                                }
                                st = match join(&mut ws, world, i, node, &mut next_id, next).await {
                                    Ok(s) => s,
                                    Err(e) => return fail(world, e),
                                };
                            }
                        }
                        _ => {}
                    }
                } else if t.starts_with("41") {
                    return fail(world, format!("node {node} disconnected the socket"));
                }
            }
            Some(cmd) = cmds.recv() => {
                let St::Member { room } = st else {
                    world.c.borrow_mut().skipped += 1;
                    continue;
                };
                if *phase.borrow() != Phase::Run {
                    world.c.borrow_mut().skipped += 1;
                    continue;
                }
                match cmd {
                    Cmd::Switch | Cmd::Pause => {
                        let pause = matches!(cmd, Cmd::Pause);
                        {
                            let mut c = world.c.borrow_mut();
                            if pause { c.pauses += 1 } else { c.switches += 1 }
                        }
                        // Bound of what this membership must have got: what this node had
                        // delivered before the leave leaves here.
                        let bound = world.seen_last(node, room);
                        let id = next_id;
                        next_id += 1;
                        if let Err(e) = send_room_event(&mut ws, world, id, "conversation:leave", room).await {
                            return fail(world, e);
                        }
                        st = St::Leaving { id, room, pause, bound, since: Instant::now() };
                    }
                    Cmd::Drop { abrupt } => {
                        {
                            let mut c = world.c.borrow_mut();
                            c.drops += 1;
                            if abrupt { c.drops_abrupt += 1 }
                        }
                        world.end_on_drop(i);
                        if !abrupt {
                            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                        }
                        return Outcome::Dropped;
                    }
                }
            }
            () = sleep_until_opt(wake) => {
                match st {
                    St::Idle { .. } => {
                        let room = rng.below(world.rooms) as u32;
                        st = match join(&mut ws, world, i, node, &mut next_id, room).await {
                            Ok(s) => s,
                            Err(e) => return fail(world, e),
                        };
                    }
                    St::Joining { id, .. } => {
                        let at = world.clock.now_us() as f64 / 1e6;
                        return fail(world, format!("node {node}: no ack to a join in {ACK_TIMEOUT:?} (socket {i}, ack id {id}, {at:.1} s into the run)"));
                    }
                    St::Leaving { id, bound, .. } => {
                        world.end_membership(i, bound, "leave unanswered");
                        let at = world.clock.now_us() as f64 / 1e6;
                        world.c.borrow_mut().error(format!("node {node}: no ack to a leave in {ACK_TIMEOUT:?} (socket {i}, ack id {id}, {at:.1} s into the run)"));
                        return Outcome::Failed;
                    }
                    St::Member { .. } => {}
                }
            }
        }
    }
}

/// Sends a join of `room` and opens the membership (acked later).
async fn join(
    ws: &mut Ws,
    world: &World,
    i: usize,
    node: usize,
    next_id: &mut u64,
    room: u32,
) -> Result<St, String> {
    world.sockets.borrow_mut()[i].member = Some(Membership {
        room,
        node,
        ack_us: None,
        got: Vec::new(),
        checked: false,
    });
    let id = *next_id;
    *next_id += 1;
    send_room_event(ws, world, id, "conversation:join", room).await?;
    Ok(St::Joining {
        id,
        since: Instant::now(),
    })
}

/// One publisher connection: rooms `h, h + publishers, ...`, round robin, on node `h % nodes`.
#[allow(clippy::too_many_arguments)]
async fn publisher(
    h: usize,
    publishers: usize,
    addr: SocketAddr,
    api_key: String,
    interval: Duration,
    start: Instant,
    end: Instant,
    world: Rc<World>,
) {
    let owned: Vec<u32> = (h..world.rooms)
        .step_by(publishers)
        .map(|r| r as u32)
        .collect();
    if owned.is_empty() {
        return;
    }
    let host = addr.to_string();
    let mut stream = None;
    let mut buf = Vec::with_capacity(4096);
    for k in 0u64.. {
        let at = start + interval.mul_f64(k as f64);
        if at >= end || world.phase.get() != Phase::Run {
            return;
        }
        tokio::time::sleep_until(at.into()).await;
        if world.phase.get() != Phase::Run {
            return;
        }
        let room = owned[(k % owned.len() as u64) as usize];
        let sent_us = world.clock.now_us();
        let n = {
            let mut sent = world.sent.borrow_mut();
            let log = &mut sent[room as usize];
            log.push(sent_us);
            (log.len() - 1) as u32
        };
        let body = format!(
            concat!(
                r#"{{"event":"message:received","data":{{"conversationId":"c{room}","#,
                r#""messageId":"{n}","senderId":"soak","type":"text","content":"{sent}","#,
                r#""status":"sent","timestamp":"2026-12-02T00:00:00.000Z"}}}}"#
            ),
            room = room,
            n = n,
            sent = sent_us
        );
        let req = format!(
            "POST /api/v1/emit HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = async {
            if stream.is_none() {
                stream = Some(
                    crate::http::connect(addr)
                        .await
                        .map_err(|e| format!("http connect: {e}"))?,
                );
            }
            let s = stream
                .as_mut()
                .ok_or_else(|| "http: no connection".to_owned())?;
            crate::http::request(s, req.as_bytes(), &mut buf).await
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .unwrap_or_else(|_| Err("http: no answer in 10 s".to_owned()));
        let mut c = world.c.borrow_mut();
        match answer {
            Ok(a) if a.status == 200 => {
                c.publishes += 1;
                if buf.windows(11).any(|w| w == b"\"localOnly\"") {
                    c.local_only += 1;
                    c.error(format!(
                        "publish on node {} answered localOnly",
                        h % world.nodes
                    ));
                    world.not_required.borrow_mut().insert((room, n));
                }
                if a.close {
                    stream = None;
                }
            }
            Ok(a) => {
                c.publish_failures += 1;
                let text = String::from_utf8_lossy(&buf).into_owned();
                c.error(format!(
                    "http status {}: {:.120}",
                    a.status,
                    text.rsplit("\r\n\r\n").next().unwrap_or("")
                ));
                world.not_required.borrow_mut().insert((room, n));
                if a.close {
                    stream = None;
                }
            }
            Err(e) => {
                c.publish_failures += 1;
                c.error(e);
                world.not_required.borrow_mut().insert((room, n));
                stream = None;
            }
        }
        world.answered.borrow_mut()[room as usize] = n + 1;
    }
}

/// Entry point of `loadgen soak`.
pub(crate) fn main(a: SoakArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match LocalSet::new().block_on(&rt, run(a.clone())) {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            println!("{text}");
            if let Some(path) = &a.out
                && let Err(e) = std::fs::write(path, format!("{text}\n"))
            {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            let bad = [
                "errors",
                "lost",
                "duplicates",
                "reordered",
                "strays",
                "unknown",
                "local_only",
                "publish_failures",
            ]
            .iter()
            .any(|k| v[k].as_u64().unwrap_or(0) > 0);
            if a.check && bad {
                eprintln!("loadgen: soak had errors or lost deliveries");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: SoakArgs) -> Result<Value, String> {
    let addrs: Vec<SocketAddr> = a
        .urls
        .iter()
        .map(|u| loopback_addr(u))
        .collect::<Result<_, _>>()?;
    let nodes = addrs.len();
    if a.sockets == 0 {
        return Err("--sockets must be at least 1".to_owned());
    }
    let nofile = probe::raise_nofile();
    if (a.sockets as u64) + 64 > nofile {
        return Err(format!(
            "--sockets {} needs more open files than this process may have ({nofile})",
            a.sockets
        ));
    }
    let rooms = a
        .rooms
        .unwrap_or(a.sockets / 10)
        .clamp(1, u32::MAX as usize);
    let users = a.users.unwrap_or(a.sockets / 5).clamp(1, a.sockets);
    let churn = a.churn.unwrap_or(a.sockets as f64 / 100.0).max(0.0);
    let publishers = a.publishers.clamp(1, rooms);
    let ttl = (a.duration + a.setup_deadline + 3600.0) as u64;
    let tokens: Vec<String> = (0..users)
        .map(|u| mint_for(&a.secret, &format!("s{u}"), ttl))
        .collect::<Result<_, _>>()?;
    let targets: Rc<Vec<Target>> = Rc::new(
        addrs
            .iter()
            .map(|addr| Target {
                protocol: Protocol::Socketio,
                addr: *addr,
                url: format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
                namespace: a.namespace.clone(),
                timeout: Duration::from_secs_f64(a.setup_timeout),
            })
            .collect(),
    );
    let world = Rc::new(World {
        clock: Clock::new(),
        nodes,
        rooms,
        event_prefix: format!("42{},", a.namespace),
        ack_prefix: format!("43{},", a.namespace),
        sent: RefCell::new(vec![Vec::new(); rooms]),
        answered: RefCell::new(vec![0; rooms]),
        not_required: RefCell::default(),
        seen: RefCell::new(vec![Vec::new(); rooms * nodes]),
        sockets: RefCell::new(
            (0..a.sockets)
                .map(|i| View {
                    user: i % users,
                    ..View::default()
                })
                .collect(),
        ),
        c: RefCell::default(),
        latencies: RefCell::default(),
        phase: Cell::new(Phase::Run),
        running: Cell::new(false),
    });
    let began = Instant::now();
    let own0 = OwnCpu::now();
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let set_phase = |p: Phase| {
        world.phase.set(p);
        let _ = phase_tx.send(p);
    };
    let first = Rc::new(Semaphore::new(a.concurrency.max(1)));
    let mut senders = Vec::with_capacity(a.sockets);
    let mut tasks = Vec::with_capacity(a.sockets);
    for i in 0..a.sockets {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        tasks.push(tokio::task::spawn_local(socket_task(
            i,
            world.clone(),
            targets.clone(),
            tokens[i % users].clone(),
            rx,
            phase_rx.clone(),
            first.clone(),
            a.seed,
        )));
    }

    // Status every second, from now until the end.
    let status_stop = Rc::new(Cell::new(false));
    let status_task = a.state_dir.clone().map(|dir| {
        let (world, stop) = (world.clone(), status_stop.clone());
        tokio::task::spawn_local(async move {
            while !stop.get() {
                write_state(&dir, "status.json", &world.view(began));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });

    let members_acked = |world: &World| {
        world
            .sockets
            .borrow()
            .iter()
            .filter(|s| s.node.is_some() && s.member.as_ref().is_some_and(|m| m.ack_us.is_some()))
            .count()
    };

    // Every socket connected and in a room.
    let setup_deadline = Instant::now() + Duration::from_secs_f64(a.setup_deadline);
    while members_acked(&world) < a.sockets && Instant::now() < setup_deadline {
        if world.c.borrow().gave_up > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup_s = began.elapsed().as_secs_f64();
    let ready = members_acked(&world);
    if ready < a.sockets {
        world.c.borrow_mut().error(format!(
            "only {ready} of {} sockets connected and joined within the setup deadline",
            a.sockets
        ));
    }

    // Churn and publishing.
    world.running.set(true);
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(a.duration);
    let interval = Duration::from_secs_f64(publishers as f64 / a.publish_rate.max(0.001));
    let mut pubs = Vec::new();
    for h in 0..publishers {
        pubs.push(tokio::task::spawn_local(publisher(
            h,
            publishers,
            addrs[h % nodes],
            a.api_key.clone(),
            interval,
            start + interval.mul_f64(h as f64 / publishers as f64),
            end,
            world.clone(),
        )));
    }
    let mut rng = Rng::new(a.seed, u64::MAX);
    if churn > 0.0 {
        let every = Duration::from_secs_f64(1.0 / churn);
        for k in 0u64.. {
            let at = start + every.mul_f64(k as f64);
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let i = rng.below(a.sockets);
            let x = rng.unit();
            let cmd = if x < 0.4 {
                Cmd::Switch
            } else if x < 0.7 {
                Cmd::Pause
            } else {
                Cmd::Drop {
                    abrupt: rng.unit() < 0.5,
                }
            };
            let _ = senders[i].send(cmd);
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let run_s = start.elapsed().as_secs_f64();

    // Settle: no more churn or publishing; every socket back in a room.
    set_phase(Phase::Settle);
    for p in pubs {
        let _ = tokio::time::timeout(Duration::from_secs(15), p).await;
    }
    let settle_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    let alive = |world: &World| a.sockets - world.c.borrow().gave_up as usize;
    while members_acked(&world) < alive(&world) && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if members_acked(&world) < alive(&world) {
        world.c.borrow_mut().error(format!(
            "only {} of {} sockets were back in a room at the end",
            members_acked(&world),
            alive(&world)
        ));
    }
    // Drain: every member holds its room's last answered publish, when it was sent after
    // the member's join.
    let owes = |world: &World| {
        let socks = world.sockets.borrow();
        let sent = world.sent.borrow();
        let answered = world.answered.borrow();
        let nr = world.not_required.borrow();
        socks
            .iter()
            .filter_map(|s| s.member.as_ref())
            .filter(|m| {
                let (Some(ack), Some(last)) = (m.ack_us, answered[m.room as usize].checked_sub(1))
                else {
                    return false;
                };
                sent[m.room as usize][last as usize] > ack
                    && !nr.contains(&(m.room, last))
                    && m.got.binary_search(&last).is_err()
            })
            .count()
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(a.drain);
    while owes(&world) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The memberships still open: every answered publish after the join is required.
    {
        let n = world.sockets.borrow().len();
        for i in 0..n {
            let bound = {
                let socks = world.sockets.borrow();
                socks[i]
                    .member
                    .as_ref()
                    .and_then(|m| world.answered.borrow()[m.room as usize].checked_sub(1))
            };
            let mut socks = world.sockets.borrow_mut();
            if let Some(m) = socks[i].member.as_mut()
                && m.ack_us.is_some()
            {
                m.checked = true;
                world.check(i, m, bound, "at the end");
            }
        }
    }
    let quiet = world.view(began);
    if let Some(dir) = &a.state_dir {
        write_state(dir, "quiet.json", &quiet);
        let release = dir.join("release");
        let until = Instant::now() + Duration::from_secs_f64(a.release_timeout);
        while !release.exists() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Close.
    set_phase(Phase::Close);
    drop(senders);
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(tasks),
    )
    .await;
    status_stop.set(true);
    if let Some(t) = status_task {
        let _ = t.await;
    }
    if let Some(dir) = &a.state_dir {
        write_state(dir, "status.json", &world.view(began));
    }
    let own = OwnCpu::now().since(own0);
    let c = world.c.borrow();
    Ok(json!({
        "scenario": "soak",
        "nodes": nodes,
        "urls": a.urls,
        "sockets": a.sockets,
        "rooms": rooms,
        "users": users,
        "duration_s": a.duration,
        "ran_s": round(run_s, 1),
        "setup_s": round(setup_s, 1),
        "churn_per_s": churn,
        "publish_rate": a.publish_rate,
        "publishers": publishers,
        "at_end": quiet,
        "connects": c.connects,
        "connect_errors": c.connect_errors,
        "gave_up": c.gave_up,
        "joins": c.joins,
        "leaves": c.leaves,
        "switches": c.switches,
        "pauses": c.pauses,
        "drops": c.drops,
        "drops_abrupt": c.drops_abrupt,
        "skipped_actions": c.skipped,
        "publishes": c.publishes,
        "publish_failures": c.publish_failures,
        "local_only": c.local_only,
        "deliveries": c.deliveries,
        "memberships_checked": c.memberships_checked,
        "required": c.required,
        "lost": c.lost,
        "duplicates": c.duplicates,
        "reordered": c.reordered,
        "strays": c.strays,
        "unknown": c.unknown,
        "errors": c.errors,
        "error_samples": c.error_samples,
        "loss_samples": c.loss_samples,
        "latency": percentiles(&world.latencies),
        "loadgen_cpu_s": round(own.total(), 2),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(rooms: usize, nodes: usize, sockets: usize) -> World {
        World {
            clock: Clock::new(),
            nodes,
            rooms,
            event_prefix: "42/messages,".into(),
            ack_prefix: "43/messages,".into(),
            sent: RefCell::new(vec![Vec::new(); rooms]),
            answered: RefCell::new(vec![0; rooms]),
            not_required: RefCell::default(),
            seen: RefCell::new(vec![Vec::new(); rooms * nodes]),
            sockets: RefCell::new((0..sockets).map(|_| View::default()).collect()),
            c: RefCell::default(),
            latencies: RefCell::default(),
            phase: Cell::new(Phase::Run),
            running: Cell::new(false),
        }
    }

    fn msg(room: u32, n: u32) -> String {
        format!(r#","{{"conversationId":"c{room}","messageId":"{n}","content":"0"}}]"#)
    }

    fn member(w: &World, i: usize, room: u32, node: usize, ack_us: u64) {
        w.sockets.borrow_mut()[i].member = Some(Membership {
            room,
            node,
            ack_us: Some(ack_us),
            got: Vec::new(),
            checked: false,
        });
    }

    #[test]
    fn what_a_member_must_get() {
        let w = world(1, 2, 2);
        // Publishes #0..#4 of c0 sent at 10, 20, ... 50 µs.
        *w.sent.borrow_mut() = vec![vec![10, 20, 30, 40, 50]];
        // Socket 0 joined on node 0 at 15: #1.. are required up to what node 0 delivered.
        member(&w, 0, 0, 0, 15);
        // Socket 1, same node, got #1..#3: node 0 had delivered #3.
        member(&w, 1, 0, 0, 5);
        for n in 1..=3 {
            w.delivery(1, 0, &msg(0, n));
        }
        // Socket 0 got #1 and #3 (#2 missing), #3 twice, then left (bound: what node 0
        // had delivered before the leave was sent).
        w.delivery(0, 0, &msg(0, 1));
        w.delivery(0, 0, &msg(0, 3));
        w.delivery(0, 0, &msg(0, 3));
        w.end_membership(0, w.seen_last(0, 0), "left");
        let c = w.c.borrow();
        assert_eq!(c.required, 3, "#1, #2, #3");
        assert_eq!(c.lost, 1, "#2");
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.reordered, 0);
        assert_eq!(c.deliveries, 5);
    }

    #[test]
    fn a_drop_owes_up_to_what_it_received() {
        let w = world(1, 1, 2);
        *w.sent.borrow_mut() = vec![vec![10, 20, 30, 40]];
        member(&w, 0, 0, 0, 5);
        member(&w, 1, 0, 0, 5);
        // Node 0 delivered #0..#3 (socket 1 got them all); socket 0 read #0 and #2 before
        // it dropped: #1 is lost, #3 may still have been on its way.
        for n in 0..=3 {
            w.delivery(1, 0, &msg(0, n));
        }
        w.delivery(0, 0, &msg(0, 0));
        w.delivery(0, 0, &msg(0, 2));
        w.end_on_drop(0);
        let c = w.c.borrow();
        assert_eq!((c.required, c.lost), (3, 1));
    }

    #[test]
    fn another_node_and_strays() {
        let w = world(2, 2, 2);
        *w.sent.borrow_mut() = vec![vec![10, 20], vec![]];
        // Node 1 delivered nothing yet: a member there that leaves now owes nothing.
        member(&w, 0, 0, 1, 5);
        w.end_on_drop(0);
        assert_eq!(w.c.borrow().required, 0);
        // An event of a room the socket is not in is a stray; reordering is counted.
        member(&w, 1, 0, 0, 5);
        w.delivery(1, 0, &msg(1, 0));
        w.delivery(1, 0, &msg(0, 1));
        w.delivery(1, 0, &msg(0, 0));
        let c = w.c.borrow();
        assert_eq!((c.strays, c.reordered, c.deliveries), (1, 1, 2));
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7, 1);
        let mut b = Rng::new(7, 1);
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
