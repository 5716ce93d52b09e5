//! `broker.plugin = "redis"`: rooms that span nodes, over Redis pub/sub.
//!
//! # Design
//!
//! * **One channel per room, subscribed while the room has local members.** A room's
//!   events travel on `{redis.key_prefix}room:{room}`; namespace-wide deliveries
//!   (`user:online`/`user:offline`, `Delivery.room == None`) on
//!   `{redis.key_prefix}broadcast`, which every node subscribes to. The core's rooms
//!   component calls [`RoomBroker::subscribe`] when a room gains its first local member
//!   and [`RoomBroker::unsubscribe`] when it loses its last, so a node only receives what
//!   it delivers; the broker keeps the set of subscribed rooms to resubscribe them after a
//!   reconnect, and nothing else of membership. `subscribe` returns once Redis has
//!   processed the `SUBSCRIBE`, which makes a join effective across the cluster when the
//!   client gets its `conversation:joined`. (fred completes a
//!   `SUBSCRIBE` as soon as it is written and drops the confirmation, so the broker
//!   sends a `PING` on the subscriber connection right after it: Redis answers commands
//!   of one connection in order, so the `PONG` proves the subscription is in place.
//!   `SSUBSCRIBE` is answered by fred itself.)
//! * **Why not a fixed set of shard channels?** Hashing rooms onto N channels and
//!   filtering locally bounds the number of subscriptions, but every node then receives
//!   every event of every room that shares a shard with one of its rooms: with many
//!   nodes and 100k rooms, most of the traffic a node reads would be thrown away. Redis
//!   keeps subscriptions in a hash table (a `PUBLISH` costs O(subscribers of that
//!   channel)) and holds 100k channels on one connection in a few MB, so per-room
//!   channels scale to that size while sending each node only what it needs. After a
//!   reconnect, the rooms are resubscribed in batches of [`SUBSCRIBE_BATCH`] channels per
//!   command, one lock shard at a time.
//! * **Every node, the publisher included, delivers from its subscription.** While Redis
//!   is healthy, `publish` only sends `PUBLISH`; this node's members get the event back
//!   through its own subscription, like every other node's members. Redis orders the
//!   messages of a channel once, so all nodes deliver a room's events in the same order,
//!   whichever node published them; each node hands them to its inbox in arrival order
//!   from one task. A room always publishes on the same pooled connection, so one node's publishes
//!   to a room also leave in the order they were made. The message is the [`Delivery`]
//!   serialized once per publish, wrapped in a small envelope (below).
//! * **Exactly once.** Each node subscribes once per channel and delivers each message
//!   once; the publisher does not deliver directly, so nobody gets a copy twice.
//! * **When Redis is unreachable**, `ready()` is false (`/readyz` answers 503), a publish
//!   is handed to this node's own inbox at once (local delivery keeps working) and is
//!   reported as reaching this node only, and the outage is logged once, not per event. If the
//!   publishing connection still works (only the subscriber dropped), the message is also
//!   published, tagged with this node's id, so other nodes get it and this node skips its
//!   own copy. The client reconnects with exponential backoff; once it is back, the
//!   broker resubscribes the broadcast channel and every room with local members, and
//!   only then turns ready again and goes back to delivering through Redis. Rooms
//!   subscribed during an outage are recorded and subscribed with the rest.
//! * **Sharded pub/sub.** `redis.sharded_pubsub = true` uses `SSUBSCRIBE`/`SPUBLISH`,
//!   Redis Cluster's sharded pub/sub (Redis 7+), where a channel lives on the shard that
//!   owns its slot instead of being broadcast over the cluster bus. Use a
//!   `redis-cluster://host:port` URL for a cluster. Sharded subscriptions are sent one
//!   channel per command, since channels of different slots cannot share one.
//!
//! * **A publish whose outcome is unknown** (the connection dropped mid-command, no reply)
//!   is delivered to this node's own members at once, unless its copy already came back on
//!   this node's subscription; a copy that comes later is dropped, so nobody gets it twice
//!   whichever comes first. (Every message carries its publish's number on its node, from a
//!   counter that starts at random.)
//! * **Half-open links** (a NAT or load balancer dropped the connection's state, nothing
//!   tells the client) are found out: every connection, the subscriber's and the idle
//!   pooled ones included, answers a `PING` every second, and one whose command waits
//!   longer than `broker.redis.command_timeout` is closed and replaced, which resubscribes.
//! * **On a Redis Cluster** (a `redis-cluster://` URL) the broker uses sharded pub/sub and
//!   watches the slot map (see the `slots` module): rooms are subscribed again where their
//!   slots live after a failover or a resharding.
//!
//! What this does not promise: Redis pub/sub is at-most-once. A message published while
//! a subscriber's connection is down is not replayed to that node after it reconnects
//! (its room's history has it, and a recovering client gets it from there).
//!
//! # Client library
//!
//! [`fred`] 10: a maintained async client with a dedicated subscriber connection, a
//! connection pool, reconnection with backoff, and events for every reconnect and
//! connection error, which is what resubscribing and readiness need.
//!
//! # Config
//!
//! ```toml
//! [broker]
//! plugin = "redis"
//!
//! [broker.redis]
//! pool_size = 2                # publishing connections
//! command_timeout = "2s"       # a slower command counts as Redis being unreachable
//! reconnect_max_delay = "5s"   # backoff between reconnection attempts: 100 ms doubling up to this
//!
//! [redis]
//! url = "redis://127.0.0.1:6379"
//! key_prefix = "switchboard:"
//! sharded_pubsub = false
//! ```

mod control_log;
mod history;
mod nodes;
mod slots;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, Error as RedisError, EventInterface, PubsubInterface};
use fred::types::Message;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use switchboard_core::config::HistoryConfig;
use switchboard_core::config::RedisConfig;
use switchboard_core::{
    BoxError, BrokerError, ConfigError, Delivery, Factory, History, Inbox, Plugin, PluginContext,
    Position, Reach, Room, RoomBroker, async_trait, register_plugin,
};
use switchboard_redis_client::{ClientConfig, Health, PoolWatch};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc};
use tokio::task::JoinHandle;

/// How many channels one `SUBSCRIBE` carries when resubscribing after a reconnect.
pub const SUBSCRIBE_BATCH: usize = 512;

/// How many locks the set of subscribed rooms is split into (rooms on different locks
/// never wait on each other).
const LOCK_SHARDS: usize = 256;

/// How often the supervisor checks the connections.
const TICK: Duration = Duration::from_millis(250);

/// `broker.redis.*`: the Redis broker's connection settings (the server is the shared `redis.*`).
pub type RedisBrokerConfig = ClientConfig;

/// What travels on a channel: the delivery, the node that already delivered it locally,
/// and the publish's number on its node (see [`Outcomes`]).
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    skip: Option<&'a str>,
    i: u64,
    d: &'a Delivery,
}

/// The receiving side of [`EnvelopeOut`] (and of the history script's messages, which
/// carry the event's position).
#[derive(Deserialize)]
struct EnvelopeIn {
    #[serde(default)]
    skip: Option<String>,
    #[serde(default)]
    i: Option<u64>,
    #[serde(default)]
    p: Option<Position>,
    d: Delivery,
}

/// Keeps a member from getting a publish twice when Redis does not answer it.
///
/// A publish whose reply is lost (the connection dropped mid-command) may or may not have
/// been taken by Redis; the node delivers it to its own members at once, unless its copy
/// already came back on the node's subscription. Each publish carries a number drawn from
/// a counter that starts at random (so another node's is not mistaken for one of ours);
/// while it is in flight its copy is marked as arrived, and once it failed its copy, if it
/// comes later, is dropped. One lock decides both, so whichever comes first, the members
/// get it once.
#[derive(Default)]
struct Outcomes {
    /// How many numbers the sets hold: the receiving path looks no further when none.
    tracked: AtomicUsize,
    sets: Mutex<OutcomeSets>,
}

#[derive(Default)]
struct OutcomeSets {
    /// Publishes awaiting Redis's reply, and whether their copy already came back.
    in_flight: HashMap<u64, bool>,
    /// Failed publishes delivered here directly, whose copy (if any) is to be dropped.
    failed: VecDeque<(u64, Instant)>,
}

/// How long a failed publish is remembered (its copy, if any, comes back well within it).
const UNSURE_FOR: Duration = Duration::from_secs(30);

impl Outcomes {
    /// Publish `i` is being sent.
    fn start(&self, i: u64) {
        let mut sets = self.sets.lock();
        sets.in_flight.insert(i, false);
        self.tracked.fetch_add(1, Ordering::SeqCst);
    }

    /// Redis answered publish `i`: its copy comes (or came) back as any other.
    fn succeeded(&self, i: u64) {
        if self.sets.lock().in_flight.remove(&i).is_some() {
            self.tracked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Redis did not answer publish `i`: whether to deliver it here directly (its copy did
    /// not come back; one that comes later is dropped).
    fn failed(&self, i: u64) -> bool {
        let mut sets = self.sets.lock();
        let arrived = sets.in_flight.remove(&i).unwrap_or(false);
        self.tracked.fetch_sub(1, Ordering::SeqCst);
        if arrived {
            return false;
        }
        let now = Instant::now();
        while sets
            .failed
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > UNSURE_FOR)
        {
            sets.failed.pop_front();
            self.tracked.fetch_sub(1, Ordering::SeqCst);
        }
        sets.failed.push_back((i, now));
        self.tracked.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// A message numbered `i` came on the subscription: whether to drop it (a copy of a
    /// failed publish this node already delivered).
    fn on_receive(&self, i: u64) -> bool {
        if self.tracked.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let mut sets = self.sets.lock();
        if let Some(arrived) = sets.in_flight.get_mut(&i) {
            *arrived = true;
            return false;
        }
        match sets.failed.iter().position(|(n, _)| *n == i) {
            Some(at) => {
                sets.failed.remove(at);
                self.tracked.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

/// The broker's metrics.
#[derive(Debug, Default, Clone)]
struct BrokerMetrics {
    rooms: Gauge<i64, AtomicI64>,
    local_only: Counter<u64, AtomicU64>,
    refused_cut_off: Counter<u64, AtomicU64>,
    received: Counter<u64, AtomicU64>,
    lost: Counter<u64, AtomicU64>,
    slot_moves: Counter<u64, AtomicU64>,
}

/// Rooms across nodes over Redis pub/sub.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.inner.node)
            .field("sharded", &self.inner.sharded)
            .finish()
    }
}

struct Inner {
    inbox: OnceLock<Inbox>,
    node: String,
    sharded: bool,
    /// The URL names a Redis Cluster: its slot map is watched.
    cluster: bool,
    /// The slot map the last subscription pass was made under (cluster only).
    slot_map: Mutex<slots::SlotMap>,
    key_prefix: String,
    /// The channel other nodes reach this one on.
    control: String,
    history: history::HistorySettings,
    scripts: history::Scripts,
    asks: history::Asks,
    room_prefix: String,
    broadcast: String,
    sub: Client,
    pool: Arc<PoolWatch>,
    timeout: Duration,
    /// The rooms this node has subscribed, split by lock.
    rooms: Box<[AsyncMutex<HashSet<Room>>]>,
    /// The subscriber connection is up: subscriptions go to Redis right away.
    sub_up: AtomicBool,
    /// Every subscribed room's channel is subscribed on the current connection.
    subscribed: AtomicBool,
    /// Asks the supervisor for a resubscription pass.
    resync: Notify,
    health: Health,
    started: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    metrics: BrokerMetrics,
    last_decode_warning: Mutex<Option<Instant>>,
    /// The next publish's number.
    next_publish: AtomicU64,
    outcomes: Outcomes,
    /// The Redis server's clock (ms) at this node's last beat while every channel was
    /// subscribed: control calls made before it reached this node (see [`control_log`]).
    control_covered_ms: AtomicU64,
    /// The newest time (ms) the control log said it may have dropped an entry of, as this
    /// node last read it: a loss at or below it is already carried out (or reset).
    control_dropped_ms: AtomicU64,
    /// Whether this node may deliver on its own (see [`nodes::Lease`]).
    lease: nodes::Lease,
}

/// A broker error for a failed Redis command.
fn broker_error(command: &'static str, timeout: Duration, e: &RedisError) -> BrokerError {
    if switchboard_redis_client::is_timeout(e) {
        BrokerError::Timeout {
            backend: "Redis",
            command,
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
    } else if switchboard_redis_client::is_refusal(e) {
        BrokerError::Refused {
            backend: "Redis",
            command,
            reason: e.details().to_owned(),
        }
    } else {
        BrokerError::Unavailable {
            backend: "Redis",
            reason: e.to_string(),
        }
    }
}

/// Why a node cut off from Redis long enough to be counted out refuses to deliver.
fn cut_off() -> BrokerError {
    BrokerError::Unavailable {
        backend: "Redis",
        reason: format!(
            "this node has not reached Redis for {} s or more (or not since it started), so other nodes may count it out; it delivers again once it is back and has carried out the control calls made without it",
            nodes::LAPSE.as_secs()
        ),
    }
}

fn timed_out(command: &'static str, timeout: Duration) -> BrokerError {
    BrokerError::Timeout {
        backend: "Redis",
        command,
        after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

impl RedisBroker {
    /// A broker for the Redis in `redis`, on node `node`, keeping the default history;
    /// connects on [`RoomBroker::start`].
    pub fn new(
        redis: &RedisConfig,
        cfg: &RedisBrokerConfig,
        node: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        Self::with_history(
            redis,
            cfg,
            node,
            HistoryConfig::default(),
            Duration::from_secs(120),
        )
    }

    /// A broker keeping room history as `history` says, each room's epoch kept `window`
    /// past its last event (the recovery window).
    pub fn with_history(
        redis: &RedisConfig,
        cfg: &RedisBrokerConfig,
        node: impl Into<String>,
        history: HistoryConfig,
        window: Duration,
    ) -> Result<Self, ConfigError> {
        cfg.validate("broker.redis")?;
        if redis.is_cluster() && redis.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::new(
                "redis.key_prefix",
                "must not contain `{` or `}` with a Redis Cluster: the broker puts each room's \
                 keys in its channel's slot with a hash tag of its own",
            ));
        }
        let sub = switchboard_redis_client::client(redis, cfg, Some(16 * 1024))?;
        let pool = switchboard_redis_client::pool(redis, cfg, Some(64))?;
        let node = node.into();
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                inbox: OnceLock::new(),
                health: Health::new(
                    "room broker",
                    node.clone(),
                    "rooms subscribed, delivering through Redis",
                    "delivering to this node's sockets only and reconnecting",
                ),
                control: format!("{}node:{node}", redis.key_prefix),
                key_prefix: redis.key_prefix.clone(),
                history: history::HistorySettings {
                    config: history,
                    meta_ttl: window,
                },
                scripts: history::Scripts::new(),
                asks: history::Asks::default(),
                node,
                sharded: redis.sharded(),
                cluster: redis.is_cluster(),
                slot_map: Mutex::new(Vec::new()),
                room_prefix: format!("{}room:", redis.key_prefix),
                broadcast: format!("{}broadcast", redis.key_prefix),
                sub,
                pool: PoolWatch::new(pool),
                timeout: cfg.command_timeout.get(),
                rooms: (0..LOCK_SHARDS)
                    .map(|_| AsyncMutex::new(HashSet::new()))
                    .collect(),
                sub_up: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                resync: Notify::new(),
                started: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                metrics: BrokerMetrics::default(),
                last_decode_warning: Mutex::new(None),
                next_publish: AtomicU64::new(random_u64()),
                outcomes: Outcomes::default(),
                control_covered_ms: AtomicU64::new(0),
                control_dropped_ms: AtomicU64::new(0),
                lease: nodes::Lease::default(),
            }),
        })
    }

    /// The node id this broker tags the messages it already delivered itself with.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// How many rooms this node has subscribed.
    pub async fn subscribed_rooms(&self) -> usize {
        let mut n = 0;
        for shard in self.inner.rooms.iter() {
            n += shard.lock().await.len();
        }
        n
    }

    /// Whether this node has `room` subscribed.
    pub async fn is_subscribed(&self, room: &str) -> bool {
        self.inner.shard(room).lock().await.contains(room)
    }

    /// The channel a room's events travel on.
    pub fn room_channel(&self, room: &str) -> String {
        self.inner.room_channel(room)
    }

    /// The channel namespace-wide deliveries travel on.
    pub fn broadcast_channel(&self) -> &str {
        &self.inner.broadcast
    }

    fn register_metrics(&self, ctx: &PluginContext<'_>) {
        let m = &self.inner.metrics;
        let reg = ctx.metrics();
        reg.register(
            "redis_broker_rooms",
            "Rooms this node has subscribed (channels)",
            m.rooms.clone(),
        );
        reg.register(
            "redis_broker_local_only",
            "Publishes delivered on this node only because Redis was unreachable",
            m.local_only.clone(),
        );
        reg.register(
            "redis_broker_cut_off",
            "Publishes refused because this node was cut off from Redis long enough to be counted out",
            m.refused_cut_off.clone(),
        );
        reg.register(
            "redis_broker_received",
            "Messages received from Redis and delivered locally",
            m.received.clone(),
        );
        reg.register(
            "redis_broker_lost",
            "Messages dropped because this node fell behind reading its subscription",
            m.lost.clone(),
        );
        reg.register(
            "redis_broker_slot_moves",
            "Times the Redis Cluster's slot map changed and every room was subscribed again",
            m.slot_moves.clone(),
        );
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Inner {
    fn room_channel(&self, room: &str) -> String {
        format!("{}{}", self.room_prefix, channel_safe(room))
    }

    fn channel(&self, room: Option<&str>) -> String {
        match room {
            Some(r) => self.room_channel(r),
            None => self.broadcast.clone(),
        }
    }

    fn shard(&self, room: &str) -> &AsyncMutex<HashSet<Room>> {
        &self.rooms[stable_hash(room) as usize % self.rooms.len()]
    }

    fn deliver_locally(&self, d: &Delivery) {
        if let Some(inbox) = self.inbox.get() {
            inbox.deliver(d);
        }
    }

    /// Delivers a publish Redis did not carry to this node's members, unless other nodes may
    /// have counted this one out (control calls made without it may forbid the delivery).
    fn deliver_on_its_own(&self, d: &Delivery) -> Result<(), BrokerError> {
        if self.lease.cut_off() {
            self.metrics.refused_cut_off.inc();
            return Err(cut_off());
        }
        self.metrics.local_only.inc();
        self.deliver_locally(d);
        Ok(())
    }

    /// The pooled connection a channel always publishes on, and whether it is up.
    fn publisher(&self, channel: &str) -> (&Client, bool) {
        let clients = self.pool.pool().clients();
        let i = stable_hash(channel) as usize % clients.len();
        (&clients[i], self.pool.client_up(i))
    }

    fn ready(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst) && self.sub.is_connected() && self.pool.all_up()
    }

    fn down(&self) {
        self.sub_up.store(false, Ordering::SeqCst);
        self.subscribed.store(false, Ordering::SeqCst);
    }

    async fn subscribe_channels(&self, channels: Vec<String>) -> Result<(), BrokerError> {
        if self.sharded {
            // One SSUBSCRIBE per slot: the channels of one command must share a slot.
            let mut by_slot: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
            for c in channels {
                by_slot
                    .entry(fred::util::redis_keyslot(c.as_bytes()))
                    .or_default()
                    .push(c);
            }
            let calls = by_slot.into_values().map(|c| self.sub.ssubscribe(c));
            match tokio::time::timeout(self.timeout, futures_util::future::try_join_all(calls))
                .await
            {
                Ok(r) => r
                    .map(|_| ())
                    .map_err(|e| broker_error("SSUBSCRIBE", self.timeout, &e)),
                Err(_) => Err(timed_out("SSUBSCRIBE", self.timeout)),
            }
        } else {
            // fred resolves SUBSCRIBE once it is written (its confirmation arrives out of
            // band); the PING that follows on the same connection is answered only after
            // Redis has processed the SUBSCRIBE.
            let confirmed = async {
                self.sub.subscribe(channels).await?;
                self.sub
                    .ping::<fred::prelude::Value>(None)
                    .await
                    .map(|_| ())
            };
            match tokio::time::timeout(self.timeout, confirmed).await {
                Ok(r) => r.map_err(|e| broker_error("SUBSCRIBE", self.timeout, &e)),
                Err(_) => Err(timed_out("SUBSCRIBE", self.timeout)),
            }
        }
    }

    async fn unsubscribe_channel(&self, channel: String) -> Result<(), BrokerError> {
        let call = async {
            if self.sharded {
                self.sub.sunsubscribe(channel).await
            } else {
                self.sub.unsubscribe(channel).await
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|e| broker_error("UNSUBSCRIBE", self.timeout, &e)),
            Err(_) => Err(timed_out("UNSUBSCRIBE", self.timeout)),
        }
    }

    async fn send(
        &self,
        client: &Client,
        channel: String,
        message: String,
    ) -> Result<i64, BrokerError> {
        let call = async {
            if self.sharded {
                client.spublish::<i64, _, _>(channel, message).await
            } else {
                client.publish::<i64, _, _>(channel, message).await
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|e| broker_error("PUBLISH", self.timeout, &e)),
            Err(_) => Err(timed_out("PUBLISH", self.timeout)),
        }
    }

    /// Subscribes the broadcast channel and every subscribed room, lock shard by lock shard.
    ///
    /// First the node is put in the set of nodes alive and its control channel subscribed
    /// (so control calls from now on ask it), then it carries out the control calls it may
    /// have missed ([`control_log`]), and only then are rooms subscribed.
    async fn resubscribe(&self) -> Result<usize, BrokerError> {
        let beat = self.beat().await?;
        self.subscribe_channels(vec![self.broadcast.clone(), self.control.clone()])
            .await?;
        self.replay_control(beat.ms).await?;
        self.lease.restored();
        let mut total = 0;
        for shard in self.rooms.iter() {
            let rooms = shard.lock().await;
            if rooms.is_empty() {
                continue;
            }
            let channels: Vec<String> = rooms.iter().map(|r| self.room_channel(r)).collect();
            for chunk in channels.chunks(SUBSCRIBE_BATCH) {
                self.subscribe_channels(chunk.to_vec()).await?;
            }
            total += channels.len();
        }
        Ok(total)
    }

    /// Publishes a delivery that is not kept: through Redis, or to this node alone when
    /// Redis does not take it.
    pub(crate) async fn publish_plain(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<Reach, BrokerError> {
        let inner = self;
        let channel = inner.channel(delivery.room.as_deref());
        let (client, client_up) = inner.publisher(&channel);
        let through_redis = inner.subscribed.load(Ordering::SeqCst) && client_up;
        let skip = (!through_redis).then_some(inner.node.as_str());
        let i = inner.next_publish.fetch_add(1, Ordering::Relaxed);
        let message = serde_json::to_string(&EnvelopeOut {
            skip,
            i,
            d: &delivery,
        })
        .map_err(|e| BrokerError::Encode(e.to_string()))?;
        if through_redis {
            inner.outcomes.start(i);
            match inner.send(client, channel, message).await {
                Ok(_) => {
                    inner.outcomes.succeeded(i);
                    return Ok(Reach::Cluster);
                }
                Err(e) => inner.health.report(false, &e.to_string()),
            }
            // Redis may have taken it after all: delivered here once, whichever comes first.
            if !inner.outcomes.failed(i) {
                return Ok(Reach::Cluster);
            }
            inner.deliver_on_its_own(&delivery)?;
            return Ok(Reach::LocalOnly);
        }
        inner.health.report(false, "not subscribed");
        let here = inner.deliver_on_its_own(&delivery);
        // Other nodes may still hear Redis; this node skips its own tagged copy.
        if client_up && inner.send(client, channel, message).await.is_ok() {
            return Ok(Reach::Cluster);
        }
        here.map(|()| Reach::LocalOnly)
    }

    /// Delivers one message read from the subscription.
    fn on_message(self: &Arc<Self>, msg: Message) {
        if *msg.channel == *self.control {
            if let Some(bytes) = msg.value.as_bytes() {
                self.on_control(bytes);
            }
            return;
        }
        let decoded = match msg.value.as_bytes() {
            Some(bytes) => serde_json::from_slice::<EnvelopeIn>(bytes).map_err(|e| e.to_string()),
            None => Err("not a string".to_owned()),
        };
        match decoded {
            Ok(mut env) => {
                if env.skip.as_deref() == Some(self.node.as_str())
                    || env.i.is_some_and(|i| self.outcomes.on_receive(i))
                {
                    return;
                }
                if env.p.is_some() {
                    env.d.position = env.p;
                }
                self.metrics.received.inc();
                self.deliver_locally(&env.d);
            }
            Err(e) => {
                let mut last = self.last_decode_warning.lock();
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last = Some(Instant::now());
                    tracing::warn!(channel = %msg.channel, error = %e, "room broker: ignoring a message that is not a delivery");
                }
            }
        }
    }
}

/// A room name as it goes into a channel name: `%`, `{` and `}` percent-encoded, so a
/// channel never carries a Redis Cluster hash tag of its own and the room's history keys,
/// `{<channel>}:h` and `{<channel>}:m`, always share the channel's slot (the publish script
/// touches both and `SPUBLISH`es on the channel). Other rooms are unchanged.
fn channel_safe(room: &str) -> std::borrow::Cow<'_, str> {
    if !room.contains(['%', '{', '}']) {
        return std::borrow::Cow::Borrowed(room);
    }
    let mut out = String::with_capacity(room.len() + 8);
    for c in room.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A random number, where publish numbers start.
fn random_u64() -> u64 {
    let id = switchboard_core::registry::random_id();
    u64::from_str_radix(id.get(..16).unwrap_or("0"), 16).unwrap_or_else(|_| stable_hash(&id))
}

/// A hash that is the same on every run (room → lock shard, channel → connection).
fn stable_hash(s: &str) -> u64 {
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Reads the subscription into an ordered queue, so a slow transport never makes fred drop messages.
async fn forward(
    inner: Arc<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<Message>,
    tx: mpsc::UnboundedSender<Message>,
) {
    loop {
        match rx.recv().await {
            Ok(m) => {
                if tx.send(m).is_err() {
                    break;
                }
            }
            Err(RecvError::Lagged(n)) => {
                inner.metrics.lost.inc_by(n);
                tracing::warn!(
                    dropped = n,
                    "room broker: fell behind reading Redis; messages were lost"
                );
            }
            Err(RecvError::Closed) => break,
        }
    }
}

async fn deliver(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(msg) = rx.recv().await {
        inner.on_message(msg);
    }
}

/// Watches the subscriber connection: after every (re)connect, resubscribes, then turns ready.
async fn supervise(
    inner: Arc<Inner>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    mut errors: tokio::sync::broadcast::Receiver<(RedisError, Option<fred::types::config::Server>)>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut need_resubscribe = true;
    // After a connection error, resubscribing waits for the reconnect (fred still reports
    // the old connection as connected for a moment); a fallback lifts the wait.
    let mut awaiting_reconnect: Option<Instant> = None;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // A new connection has no subscriptions.
                    inner.subscribed.store(false, Ordering::SeqCst);
                    need_resubscribe = true;
                    awaiting_reconnect = None;
                }
                Err(RecvError::Closed) => break,
            },
            r = errors.recv() => match r {
                Ok((e, _)) => {
                    last_error = e.to_string();
                    inner.down();
                    need_resubscribe = true;
                    awaiting_reconnect = Some(Instant::now());
                }
                Err(RecvError::Lagged(_)) => {
                    inner.down();
                    need_resubscribe = true;
                    awaiting_reconnect = Some(Instant::now());
                }
                Err(RecvError::Closed) => break,
            },
            () = inner.resync.notified() => need_resubscribe = true,
            _ = tick.tick() => {}
        }
        if awaiting_reconnect.is_some_and(|t| t.elapsed() > inner.timeout * 2) {
            awaiting_reconnect = None;
        }
        if !inner.sub.is_connected() {
            inner.down();
            need_resubscribe = true;
        } else if need_resubscribe && awaiting_reconnect.is_none() {
            // Set before the pass: a subscribe that still sees `false` holds its room's
            // lock, so the pass (which takes every lock in turn) subscribes that room after it.
            inner.sub_up.store(true, Ordering::SeqCst);
            let map = if inner.cluster {
                slots::refresh(&inner).await;
                slots::slot_map(&inner)
            } else {
                Vec::new()
            };
            match inner.resubscribe().await {
                Ok(n) => {
                    *inner.slot_map.lock() = map;
                    need_resubscribe = false;
                    inner.subscribed.store(true, Ordering::SeqCst);
                    tracing::debug!(rooms = n, "room broker: subscribed");
                }
                Err(e) => {
                    last_error = e.to_string();
                    inner.subscribed.store(false, Ordering::SeqCst);
                }
            }
        }
        let why = if last_error.is_empty() {
            "connection closed"
        } else {
            last_error.as_str()
        };
        inner.health.report(inner.ready(), why);
    }
}

#[async_trait]
impl RoomBroker for RedisBroker {
    async fn start(&self, inbox: Inbox) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let _ = inner.inbox.set(inbox);
        // Listen before connecting, so the first connection's event is not missed.
        let reconnects = inner.sub.reconnect_rx();
        let errors = inner.sub.error_rx();
        let messages = inner.sub.message_rx();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut tasks = inner.tasks.lock();
            tasks.push(tokio::spawn(forward(inner.clone(), messages, tx)));
            tasks.push(tokio::spawn(deliver(inner.clone(), rx)));
            tasks.push(tokio::spawn(supervise(inner.clone(), reconnects, errors)));
            tasks.extend(inner.pool.spawn(|_| {}));
            tasks.push(flatten(inner.sub.connect()));
            tasks.push(flatten(inner.pool.pool().connect()));
            tasks.push(tokio::spawn(nodes::heartbeat(Arc::downgrade(inner))));
            if inner.cluster {
                tasks.push(tokio::spawn(slots::watch(Arc::downgrade(inner))));
            }
        }
        // Give a healthy Redis the time to answer, so the node is ready when it starts serving.
        let deadline = Instant::now() + inner.timeout;
        while Instant::now() < deadline {
            if inner.ready() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(BrokerError::Unavailable {
            backend: "Redis",
            reason: "no answer at start-up; delivering to this node's sockets only until it does"
                .to_owned(),
        })
    }

    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut rooms = inner.shard(room).lock().await;
        if !rooms.insert(room.clone()) {
            return Ok(());
        }
        inner.metrics.rooms.inc();
        if inner.sub_up.load(Ordering::SeqCst)
            && let Err(e) = inner
                .subscribe_channels(vec![inner.room_channel(room)])
                .await
        {
            // The subscription is failing: mark it and let the supervisor resubscribe
            // every subscribed room (this one included) once Redis answers.
            tracing::debug!(room = %room, error = %e, "room broker: SUBSCRIBE failed; will resubscribe");
            inner.subscribed.store(false, Ordering::SeqCst);
            inner.resync.notify_one();
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &Room) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut rooms = inner.shard(room).lock().await;
        if !rooms.remove(room) {
            return Ok(());
        }
        inner.metrics.rooms.dec();
        if inner.sub_up.load(Ordering::SeqCst)
            && let Err(e) = inner.unsubscribe_channel(inner.room_channel(room)).await
        {
            // A failing connection is replaced, and the new one only subscribes the rooms
            // in the set.
            tracing::debug!(room = %room, error = %e, "room broker: UNSUBSCRIBE failed");
        }
        Ok(())
    }

    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError> {
        self.inner.publish_plain(delivery).await
    }

    async fn publish_kept(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<(Reach, Option<Position>), BrokerError> {
        if !self.inner.history.config.enabled() {
            return self.inner.publish_plain(delivery).await.map(|r| (r, None));
        }
        self.inner.publish_kept(delivery).await
    }

    async fn position(&self, room: &Room) -> Result<Option<Position>, BrokerError> {
        if !self.inner.history.config.enabled() {
            return Ok(None);
        }
        self.inner.position(room).await
    }

    async fn history(
        &self,
        room: &Room,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        if !self.inner.history.config.enabled() {
            return Err(BrokerError::Unsupported(
                "history is off (history.size = 0)".to_owned(),
            ));
        }
        self.inner.history(room, after, limit).await
    }

    async fn put_record(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.inner.put_record(key, fields, ttl).await
    }

    async fn get_record(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<Option<String>>, BrokerError> {
        self.inner.get_record(key, fields).await
    }

    async fn delete_record(&self, key: &str, fields: &[String]) -> Result<(), BrokerError> {
        self.inner.delete_record(key, fields).await
    }

    async fn ask(
        &self,
        node: &str,
        request: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, BrokerError> {
        self.inner.ask(node, request, timeout).await
    }

    async fn log_control(
        &self,
        request: &serde_json::Value,
    ) -> Result<Option<String>, BrokerError> {
        self.inner.log_control(request).await.map(Some)
    }

    async fn control_log(
        &self,
        since_ms: u64,
    ) -> Result<Vec<switchboard_core::broker::LoggedControl>, BrokerError> {
        self.inner.control_log(since_ms).await
    }

    async fn nodes(&self) -> Result<Vec<String>, BrokerError> {
        self.inner.nodes().await
    }

    async fn ready(&self) -> bool {
        self.inner.ready()
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.leave_nodes().await;
        let tasks: Vec<_> = inner.tasks.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(inner.timeout, inner.sub.quit()).await;
        let _ = tokio::time::timeout(inner.timeout, inner.pool.pool().quit()).await;
    }
}

/// Keeps a fred connection task as a plain task handle (its result is reported through events).
fn flatten<T: Send + 'static>(handle: JoinHandle<T>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = handle.await;
    })
}

fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn RoomBroker>, BoxError> {
    let cfg: RedisBrokerConfig = ctx.section()?;
    let redis: RedisConfig = ctx.extract("redis")?;
    let broker = RedisBroker::with_history(
        &redis,
        &cfg,
        ctx.node_id(),
        ctx.config().history.clone(),
        ctx.config().recovery.max_disconnection.get(),
    )?;
    broker.register_metrics(ctx);
    Ok(Arc::new(broker))
}

register_plugin!(
    Plugin::new(
        "redis",
        "Rooms across nodes: Redis pub/sub, a channel per room with local members",
        Factory::Broker(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<RedisBrokerConfig>)
);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::{ConnId, Dur};

    #[test]
    fn config_defaults() {
        let c = RedisBrokerConfig::default();
        assert_eq!(c.pool_size, 2);
        assert_eq!(c.command_timeout, Dur::secs(2));
    }

    #[test]
    fn envelopes_round_trip_and_carry_the_skip_tag() {
        let d = Delivery::encode(
            "message:status",
            Some(Room::from("conversation:1")),
            &serde_json::json!({"a": 1}),
        )
        .expect("encode")
        .except(Some(ConnId::new("s1")));
        let text = serde_json::to_string(&EnvelopeOut {
            skip: Some("n1"),
            i: 7,
            d: &d,
        })
        .expect("encode");
        let back: EnvelopeIn = serde_json::from_str(&text).expect("decode");
        assert_eq!(back.skip.as_deref(), Some("n1"));
        assert_eq!(&*back.d.event, "message:status");
        assert_eq!(back.d.room.as_deref(), Some("conversation:1"));
        assert_eq!(back.d.except, Some(ConnId::new("s1")));
        assert_eq!(back.d.payload.get(), r#"{"a":1}"#);
        assert_eq!(back.i, Some(7));
        let plain = serde_json::to_string(&EnvelopeOut {
            skip: None,
            i: 8,
            d: &d,
        })
        .expect("encode");
        assert!(!plain.contains("skip"));
    }

    #[test]
    fn urls_need_a_redis_scheme() {
        let redis = RedisConfig {
            url: "localhost:6379".into(),
            ..RedisConfig::default()
        };
        let err =
            RedisBroker::new(&redis, &RedisBrokerConfig::default(), "n").expect_err("bad url");
        assert!(err.to_string().starts_with("redis.url:"), "{err}");
    }

    #[test]
    fn a_publish_redis_did_not_answer_reaches_members_once() {
        let o = Outcomes::default();
        assert!(!o.on_receive(1), "nothing tracked");
        // The copy comes back before the error: delivered from the subscription only.
        o.start(5);
        assert!(!o.on_receive(5));
        assert!(!o.failed(5), "not delivered a second time");
        // The error comes first: delivered here, and the late copy dropped, once.
        o.start(9);
        assert!(o.failed(9));
        assert!(o.on_receive(9));
        assert!(!o.on_receive(9));
        // A publish Redis answered: its copy passes.
        o.start(12);
        o.succeeded(12);
        assert!(!o.on_receive(12));
        assert_eq!(o.tracked.load(Ordering::SeqCst), 0, "the fast path is back");
    }

    #[test]
    fn stable_hash_is_stable() {
        assert_eq!(stable_hash("conversation:1"), stable_hash("conversation:1"));
        assert_ne!(stable_hash("conversation:1"), stable_hash("conversation:2"));
    }
}
