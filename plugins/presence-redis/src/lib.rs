//! `presence.plugin = "redis"`: who is online across every node that shares one Redis.
//!
//! # Design
//!
//! Every key lives under `{redis.key_prefix}{presence}:` (the `{presence}` hash tag puts
//! them in one Redis Cluster slot, so the scripts below may touch several of them):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `user:{userId}` | set | the user's connections anywhere, as `{nodeId}/{connId}` |
//! | `node:{nodeId}` | hash | a node's connections: `connId` → `userId` |
//! | `online` | set | users with at least one connection |
//! | `nodes` | set | node ids that registered connections |
//! | `alive:{nodeId}` | string | the node's heartbeat, expiring after `presence.node_ttl` |
//!
//! * **First and last, atomically.** `connect` and `disconnect` are Lua scripts (run
//!   with `EVALSHA`, loaded again after a `NOSCRIPT`): adding a connection reports "first"
//!   only when the user's set went from empty to one member, removing reports "last" only
//!   when it went from one to empty. Two nodes racing on the same user cannot both win.
//! * **Heartbeats and sweeps.** Each node has a random id and refreshes its `alive` key
//!   with a TTL of `presence.node_ttl` every third of it. Every sixth of it, a node asks
//!   (one script) which registered nodes have no `alive` key any more, and sweeps each
//!   one with a script that first checks the key again, then removes the dead node's
//!   connections, collects the users left with none and deletes the node's hash. The
//!   script runs atomically and deletes what it swept, so exactly one sweeper reports
//!   each user; it reports them through the [`PresenceEvents`] sender and the runtime
//!   emits `user:offline`. A node killed with `kill -9` is swept between 2/3 and 7/6 of
//!   the TTL after it died.
//! * **Redis restarts and outages.** The store keeps its own list of this node's live
//!   connections. After every reconnect, and whenever a heartbeat finds its own `alive`
//!   key gone (Redis restarted empty, or this node was partitioned long enough to be
//!   swept), the node re-registers: one script makes Redis's view of this node equal to
//!   its list. Connections Redis did not have because they were registered before and
//!   lost are added silently (their users never went offline). Connections whose own
//!   `connect` never reached Redis (made while it was unreachable) are added after those,
//!   and each one that is its user's first anywhere is reported through the
//!   [`PresenceEvents`] sender, so the runtime emits the `user:online` it owed.
//!   Connections Redis had but this node no longer has (they closed while Redis was
//!   unreachable, so their `disconnect` failed) are removed, reporting users left with
//!   none as offline. Scripts refuse to run while the
//!   node's `alive` key is missing, so no call lands in an empty Redis before the node
//!   has re-registered. When Redis restarted empty, users whose last connection closed
//!   during the outage are checked once more a TTL later, once every live node has
//!   re-registered, and reported offline if still without connections (a short-lived
//!   claim key makes sure only one node reports each).
//! * **While Redis is unreachable** every call fails at once with [`PresenceError`] (the
//!   runtime logs it at a bounded rate and carries on), `ready()` is false, and the
//!   outage is logged once. The client reconnects with exponential backoff.
//!
//! Known limit: in the moment between a Redis restart and the nodes re-registering, a
//! user's first connection (made then, or during the outage) may be reported first
//! although another node has not re-registered the user's older connection yet: that user
//! gets a second `user:online`, never a missing one.
//!
//! # Config
//!
//! ```toml
//! [presence]
//! plugin = "redis"
//! node_ttl = "10s"            # how long a silent node's connections still count
//!
//! [presence.redis]
//! pool_size = 2
//! command_timeout = "2s"
//! reconnect_max_delay = "5s"
//!
//! [redis]
//! url = "redis://127.0.0.1:6379"
//! key_prefix = "switchboard:"
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, Error as RedisError, SetsInterface, Value};
use fred::types::scripts::Script;
use parking_lot::Mutex;
use switchboard_core::config::RedisConfig;
use switchboard_core::{
    BoxError, ConfigError, ConnId, Factory, Plugin, PluginContext, PresenceChange, PresenceError,
    PresenceEvents, PresenceStore, async_trait, register_plugin,
};
use switchboard_redis_client::{ClientConfig, Health, PoolWatch};
use tokio::sync::{Notify, RwLock};
use tokio::task::JoinHandle;

/// `presence.redis.*`: the Redis presence store's connection settings (the server is the
/// shared `redis.*`).
pub type RedisPresenceConfig = ClientConfig;

/// The store's Lua scripts (`src/scripts/*.lua`, each saying its keys, arguments and
/// answer), hashed once.
struct Scripts {
    connect: Script,
    disconnect: Script,
    heartbeat: Script,
    find_dead: Script,
    sweep: Script,
    resync: Script,
    claim_offline: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            connect: Script::from_lua(include_str!("scripts/connect.lua")),
            disconnect: Script::from_lua(include_str!("scripts/disconnect.lua")),
            heartbeat: Script::from_lua(include_str!("scripts/heartbeat.lua")),
            find_dead: Script::from_lua(include_str!("scripts/find_dead.lua")),
            sweep: Script::from_lua(include_str!("scripts/sweep.lua")),
            resync: Script::from_lua(include_str!("scripts/resync.lua")),
            claim_offline: Script::from_lua(include_str!("scripts/claim_offline.lua")),
        }
    }
}

/// Key names under the prefix.
struct Keys {
    base: String,
}

impl Keys {
    fn user_prefix(&self) -> String {
        format!("{}user:", self.base)
    }
    fn user(&self, user: &str) -> String {
        format!("{}user:{user}", self.base)
    }
    fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.base)
    }
    fn alive_prefix(&self) -> String {
        format!("{}alive:", self.base)
    }
    fn alive(&self, node: &str) -> String {
        format!("{}alive:{node}", self.base)
    }
    fn online(&self) -> String {
        format!("{}online", self.base)
    }
    fn nodes(&self) -> String {
        format!("{}nodes", self.base)
    }
    fn epoch(&self) -> String {
        format!("{}epoch", self.base)
    }
    fn claim(&self, user: &str) -> String {
        format!("{}offline-claim:{user}", self.base)
    }
}

/// Presence across nodes in Redis.
pub struct RedisPresence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.inner.node)
            .finish()
    }
}

struct Inner {
    node: String,
    keys: Keys,
    pool: Arc<PoolWatch>,
    ttl: Duration,
    timeout: Duration,
    scripts: Scripts,
    /// This node's live connections. The truth Redis is resynced to.
    local: Mutex<HashMap<ConnId, Local>>,
    /// Users whose disconnect failed while Redis was unreachable.
    pending_offline: Mutex<HashSet<String>>,
    /// `connect`/`disconnect` hold it shared; a resync holds it alone.
    gate: RwLock<()>,
    /// Redis's view of this node may be stale (a reconnect happened, or a call failed).
    need_resync: AtomicBool,
    wake: Notify,
    next: AtomicUsize,
    events: Mutex<Option<PresenceEvents>>,
    last_beat: Mutex<Option<Instant>>,
    /// The Redis epoch this node last registered in; a new one means Redis restarted empty.
    epoch: Mutex<Option<String>>,
    health: Health,
    started: AtomicBool,
    stopped: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// One of this node's live connections.
struct Local {
    user: String,
    /// Its connect never reached Redis: whether it is the user's first, and so its
    /// `user:online`, is still owed.
    owed: bool,
}

fn backend(timeout: Duration, e: &RedisError) -> PresenceError {
    if switchboard_redis_client::is_timeout(e) {
        timed_out(timeout)
    } else if switchboard_redis_client::is_refusal(e) {
        PresenceError::Refused {
            backend: "Redis",
            reason: e.details().to_owned(),
        }
    } else {
        PresenceError::Unavailable {
            backend: "Redis",
            reason: e.to_string(),
        }
    }
}

fn timed_out(timeout: Duration) -> PresenceError {
    PresenceError::Timeout {
        backend: "Redis",
        after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

fn unreachable() -> PresenceError {
    PresenceError::Unavailable {
        backend: "Redis",
        reason: "no connection".to_owned(),
    }
}

/// A Redis array of strings (an empty array may arrive as nil).
fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.into_iter().filter_map(|i| i.into_string()).collect(),
        _ => Vec::new(),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RedisPresence {
    /// A store for the Redis in `redis`, on node `node`, counting a silent node's connections
    /// for `node_ttl`; connects on [`PresenceStore::start`].
    pub fn new(
        redis: &RedisConfig,
        cfg: &RedisPresenceConfig,
        node_ttl: Duration,
        node: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        cfg.validate("presence.redis")?;
        let pool = switchboard_redis_client::pool(redis, cfg, None)?;
        let node = node.into();
        Ok(RedisPresence {
            inner: Arc::new(Inner {
                health: Health::new(
                    "presence",
                    node.clone(),
                    "this node's connections are registered",
                    "presence calls fail until it is back",
                ),
                node,
                keys: Keys {
                    base: format!("{}{{presence}}:", redis.key_prefix),
                },
                pool: PoolWatch::new(pool),
                ttl: node_ttl,
                timeout: cfg.command_timeout.get(),
                scripts: Scripts::new(),
                local: Mutex::new(HashMap::new()),
                pending_offline: Mutex::new(HashSet::new()),
                gate: RwLock::new(()),
                need_resync: AtomicBool::new(true),
                wake: Notify::new(),
                next: AtomicUsize::new(0),
                events: Mutex::new(None),
                last_beat: Mutex::new(None),
                epoch: Mutex::new(None),
                started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// This node's random id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// Stops heartbeating without withdrawing anything, as a crashed node would (for tests).
    pub fn halt(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Inner {
    /// A connected client (round robin), or `None` while Redis is unreachable.
    fn client(&self) -> Option<&Client> {
        let clients = self.pool.pool().clients();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..clients.len())
            .map(|k| (start + k) % clients.len())
            .find(|&i| self.pool.client_up(i))
            .and_then(|i| clients.get(i))
    }

    fn connected(&self) -> bool {
        self.pool.any_up()
    }

    fn ready(&self) -> bool {
        let fresh = self
            .last_beat
            .lock()
            .is_some_and(|t| t.elapsed() < self.ttl);
        self.connected() && fresh && !self.need_resync.load(Ordering::SeqCst)
    }

    fn report(&self, healthy: bool, why: &str) {
        self.health.report(healthy, why);
    }

    fn announce_offline(&self, users: Vec<String>) {
        self.report_changes(users.into_iter().map(PresenceChange::Offline).collect());
    }

    fn report_changes(&self, changes: Vec<PresenceChange>) {
        if changes.is_empty() {
            return;
        }
        if let Some(tx) = self.events.lock().as_ref() {
            for c in changes {
                let _ = tx.send(c);
            }
        }
    }

    /// Runs a script with the command timeout.
    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, PresenceError> {
        let client = self.client().ok_or_else(unreachable)?;
        match tokio::time::timeout(
            self.timeout,
            script.evalsha_with_reload::<Value, _, _>(client, keys, args),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(backend(self.timeout, &e)),
            Err(_) => Err(timed_out(self.timeout)),
        }
    }

    /// Makes Redis's view of this node equal to the local list; reports users it found
    /// gone, and the users of connections made while Redis was unreachable that are online
    /// only now.
    async fn resync(self: &Arc<Self>) -> Result<usize, PresenceError> {
        let _alone = self.gate.write().await;
        let pairs: Vec<(String, String, bool)> = self
            .local
            .lock()
            .iter()
            .map(|(c, l)| (c.as_str().to_owned(), l.user.clone(), l.owed))
            .collect();
        let mut args = Vec::with_capacity(5 + 3 * pairs.len());
        args.push(self.keys.user_prefix());
        args.push(self.node.clone());
        args.push(millis(self.ttl).to_string());
        args.push(switchboard_core::registry::random_id());
        args.push(self.epoch.lock().clone().unwrap_or_default());
        for (c, u, owed) in &pairs {
            args.push(c.clone());
            args.push(u.clone());
            args.push(if *owed { "1" } else { "0" }.to_owned());
        }
        let keys = vec![
            self.keys.node(&self.node),
            self.keys.online(),
            self.keys.alive(&self.node),
            self.keys.nodes(),
            self.keys.epoch(),
        ];
        let mut result = strings(self.run(&self.scripts.resync, keys, args).await?).into_iter();
        let epoch = result.next().unwrap_or_default();
        let n_gone = result
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        let gone: Vec<String> = result.by_ref().take(n_gone).collect();
        let mut online = Vec::new();
        while let (Some(user), Some(conn)) = (result.next(), result.next()) {
            online.push(PresenceChange::Online {
                user,
                conn: ConnId::new(conn),
            });
        }
        // Every owed connection is decided: announced below or not first. (The gate keeps
        // connections from coming and going while this runs, so the list is the snapshot.)
        for l in self.local.lock().values_mut() {
            l.owed = false;
        }
        self.need_resync.store(false, Ordering::SeqCst);
        *self.last_beat.lock() = Some(Instant::now());
        let previous = self.epoch.lock().replace(epoch.clone());
        match previous {
            Some(p) if p != epoch => {
                // Redis restarted empty: the users of disconnects that failed meanwhile are
                // checked once every live node had the time to register again.
                tracing::info!(node = %self.node, connections = pairs.len(), "presence: Redis restarted empty; registered this node's connections again");
                self.schedule_pending_check();
            }
            // Redis kept its data: the stale connections removed above covered those users.
            _ => self.pending_offline.lock().clear(),
        }
        self.announce_offline(gone);
        self.report_changes(online);
        Ok(pairs.len())
    }

    /// Refreshes the heartbeat; re-registers when the key was gone.
    async fn heartbeat(self: &Arc<Self>) -> Result<(), PresenceError> {
        if self.need_resync.load(Ordering::SeqCst) {
            self.resync().await?;
            return Ok(());
        }
        let keys = vec![self.keys.alive(&self.node), self.keys.nodes()];
        let args = vec![millis(self.ttl).to_string(), self.node.clone()];
        let existed = self.run(&self.scripts.heartbeat, keys, args).await?;
        if existed.as_i64() == Some(0) {
            tracing::info!(node = %self.node, "presence: this node's registration was gone; registering again");
            self.need_resync.store(true, Ordering::SeqCst);
            self.resync().await?;
        } else {
            *self.last_beat.lock() = Some(Instant::now());
        }
        Ok(())
    }

    /// Takes the users of failed disconnects and checks them once every live node had a
    /// TTL to register again.
    fn schedule_pending_check(self: &Arc<Self>) {
        let users: Vec<String> = self.pending_offline.lock().drain().collect();
        if users.is_empty() {
            return;
        }
        let me = Arc::clone(self);
        let task = tokio::spawn(async move {
            tokio::time::sleep(me.ttl).await;
            me.check_pending(users).await;
        });
        self.tasks.lock().push(task);
    }

    /// Reports the users of failed disconnects that still have no connection anywhere.
    async fn check_pending(&self, users: Vec<String>) {
        let claim_ttl = millis(self.ttl * 3).to_string();
        let mut gone = Vec::new();
        for u in users {
            let keys = vec![self.keys.user(&u), self.keys.claim(&u), self.keys.online()];
            match self
                .run(
                    &self.scripts.claim_offline,
                    keys,
                    vec![claim_ttl.clone(), u.clone()],
                )
                .await
            {
                Ok(v) if v.as_i64() == Some(1) => gone.push(u),
                Ok(_) => {}
                Err(_) => {
                    self.pending_offline.lock().insert(u);
                }
            }
        }
        self.announce_offline(gone);
    }

    /// Sweeps every registered node whose heartbeat expired.
    async fn sweep(&self) -> Result<(), PresenceError> {
        let dead = strings(
            self.run(
                &self.scripts.find_dead,
                vec![self.keys.nodes()],
                vec![self.keys.alive_prefix()],
            )
            .await?,
        );
        for node in dead.into_iter().filter(|n| *n != self.node) {
            let keys = vec![
                self.keys.node(&node),
                self.keys.online(),
                self.keys.nodes(),
                self.keys.alive(&node),
            ];
            let args = vec![self.keys.user_prefix(), node.clone(), String::new()];
            let gone = strings(self.run(&self.scripts.sweep, keys, args).await?);
            if !gone.is_empty() {
                tracing::info!(dead_node = %node, users = gone.len(), "presence: swept a node whose heartbeat expired");
            }
            self.announce_offline(gone);
        }
        Ok(())
    }
}

/// Heartbeats every third of the TTL, sweeps every sixth, re-registers when asked.
async fn maintain(inner: Arc<Inner>) {
    let beat_every = (inner.ttl / 3).max(Duration::from_millis(50));
    let sweep_every = (inner.ttl / 6).max(Duration::from_millis(50));
    let mut beat = tokio::time::interval(beat_every);
    let mut sweep = tokio::time::interval(sweep_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let beating = tokio::select! {
            _ = beat.tick() => true,
            () = inner.wake.notified() => true,
            _ = sweep.tick() => false,
        };
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        if !inner.connected() {
            inner.need_resync.store(true, Ordering::SeqCst);
            inner.report(false, "not connected");
            continue;
        }
        let result = if beating {
            inner.heartbeat().await
        } else {
            inner.sweep().await
        };
        match result {
            Ok(()) => inner.report(inner.ready(), ""),
            Err(e) => inner.report(false, &e.to_string()),
        }
    }
}

impl Inner {
    async fn connect(
        self: &Arc<Self>,
        user_id: &str,
        conn: &ConnId,
    ) -> Result<bool, PresenceError> {
        // Under the gate: a resync's snapshot and this call's script never interleave.
        let shared = self.gate.read().await;
        // Owed until Redis has answered whether it is the user's first connection.
        self.local.lock().insert(
            conn.clone(),
            Local {
                user: user_id.to_owned(),
                owed: true,
            },
        );
        if !self.connected() {
            self.need_resync.store(true, Ordering::SeqCst);
            return Err(unreachable());
        }
        let (keys, args) = self.script_input(user_id, conn);
        let answer = self.run(&self.scripts.connect, keys, args).await;
        if matches!(answer.as_ref().map(Value::as_i64), Ok(Some(0 | 1)))
            && let Some(l) = self.local.lock().get_mut(conn)
        {
            l.owed = false;
        }
        drop(shared);
        match answer {
            Ok(v) => match v.as_i64() {
                Some(1) => Ok(true),
                Some(-1) => {
                    // The registry lost this node (Redis restarted): register every live
                    // connection; this one is announced from there if it is the first.
                    self.need_resync.store(true, Ordering::SeqCst);
                    self.resync().await?;
                    Ok(false)
                }
                _ => Ok(false),
            },
            Err(e) => {
                self.need_resync.store(true, Ordering::SeqCst);
                self.wake.notify_one();
                Err(e)
            }
        }
    }

    /// The keys and arguments of the connect and disconnect scripts.
    fn script_input(&self, user_id: &str, conn: &ConnId) -> (Vec<String>, Vec<String>) {
        let keys = vec![
            self.keys.user(user_id),
            self.keys.node(&self.node),
            self.keys.online(),
            self.keys.alive(&self.node),
        ];
        let args = vec![
            format!("{}/{conn}", self.node),
            conn.to_string(),
            user_id.to_owned(),
        ];
        (keys, args)
    }

    async fn disconnect(
        self: &Arc<Self>,
        user_id: &str,
        conn: &ConnId,
    ) -> Result<bool, PresenceError> {
        let shared = self.gate.read().await;
        self.local.lock().remove(conn);
        if !self.connected() {
            self.need_resync.store(true, Ordering::SeqCst);
            self.pending_offline.lock().insert(user_id.to_owned());
            return Err(unreachable());
        }
        let (keys, args) = self.script_input(user_id, conn);
        let answer = self.run(&self.scripts.disconnect, keys, args).await;
        drop(shared);
        match answer {
            Ok(v) => match v.as_i64() {
                Some(1) => Ok(true),
                Some(-1) => {
                    self.pending_offline.lock().insert(user_id.to_owned());
                    self.need_resync.store(true, Ordering::SeqCst);
                    self.resync().await?;
                    Ok(false)
                }
                _ => Ok(false),
            },
            Err(e) => {
                self.pending_offline.lock().insert(user_id.to_owned());
                self.need_resync.store(true, Ordering::SeqCst);
                self.wake.notify_one();
                Err(e)
            }
        }
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn connect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError> {
        self.inner.connect(user_id, conn).await
    }

    async fn disconnect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError> {
        self.inner.disconnect(user_id, conn).await
    }

    async fn online_users(&self) -> Result<Vec<String>, PresenceError> {
        let inner = &self.inner;
        let client = inner.client().ok_or_else(unreachable)?;
        match tokio::time::timeout(
            inner.timeout,
            client.smembers::<Vec<String>, _>(inner.keys.online()),
        )
        .await
        {
            Ok(r) => r.map_err(|e| backend(inner.timeout, &e)),
            Err(_) => Err(timed_out(inner.timeout)),
        }
    }

    async fn connections(&self, user_id: &str) -> Result<usize, PresenceError> {
        let inner = &self.inner;
        let client = inner.client().ok_or_else(unreachable)?;
        match tokio::time::timeout(
            inner.timeout,
            client.scard::<u64, _>(inner.keys.user(user_id)),
        )
        .await
        {
            Ok(r) => r
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .map_err(|e| backend(inner.timeout, &e)),
            Err(_) => Err(timed_out(inner.timeout)),
        }
    }

    async fn start(&self, events: PresenceEvents) -> Result<(), PresenceError> {
        let inner = &self.inner;
        if inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        *inner.events.lock() = Some(events);
        {
            let mut tasks = inner.tasks.lock();
            let me = Arc::downgrade(inner);
            tasks.extend(inner.pool.spawn(move |_| {
                // Ask for the resync before the connection shows as up.
                if let Some(inner) = me.upgrade() {
                    inner.need_resync.store(true, Ordering::SeqCst);
                    inner.wake.notify_one();
                }
            }));
            let connecting = inner.pool.pool().connect();
            tasks.push(tokio::spawn(async move {
                let _ = connecting.await;
            }));
        }
        // Wait for every connection's first (re)connect event to be handled (each asks for a
        // resync), so the registration below is the one that makes the store ready.
        let deadline = Instant::now() + inner.timeout;
        while Instant::now() < deadline && !inner.pool.all_up() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = if inner.connected() {
            inner.resync().await.map(|_| ())
        } else {
            Err(unreachable())
        };
        inner
            .tasks
            .lock()
            .push(tokio::spawn(maintain(inner.clone())));
        match first {
            Ok(()) => {
                inner.report(true, "");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn ready(&self) -> bool {
        self.inner.ready()
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.stopped.store(true, Ordering::SeqCst);
        let tasks: Vec<_> = inner.tasks.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        // Withdraw what is left of this node's connections (normally none: the transports
        // closed their sockets first) and its heartbeat, so nobody has to wait for a sweep.
        let keys = vec![
            inner.keys.node(&inner.node),
            inner.keys.online(),
            inner.keys.nodes(),
            inner.keys.alive(&inner.node),
        ];
        let args = vec![
            inner.keys.user_prefix(),
            inner.node.clone(),
            "force".to_owned(),
        ];
        if let Ok(gone) = inner.run(&inner.scripts.sweep, keys, args).await {
            inner.announce_offline(strings(gone));
        }
        inner.local.lock().clear();
        let _ = tokio::time::timeout(inner.timeout, inner.pool.pool().quit()).await;
    }
}

fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn PresenceStore>, BoxError> {
    let cfg: RedisPresenceConfig = ctx.section()?;
    let redis: RedisConfig = ctx.extract("redis")?;
    let ttl = ctx.config().presence.node_ttl.get();
    if ttl < Duration::from_millis(300) {
        return Err(Box::new(ConfigError::new(
            "presence.node_ttl",
            "must be at least 300ms for the redis presence store",
        )));
    }
    Ok(Arc::new(RedisPresence::new(
        &redis,
        &cfg,
        ttl,
        ctx.node_id(),
    )?))
}

register_plugin!(
    Plugin::new(
        "redis",
        "Presence across nodes: Redis sets, node heartbeats and sweeps of dead nodes",
        Factory::Presence(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<RedisPresenceConfig>)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c = RedisPresenceConfig::default();
        assert_eq!(c.pool_size, 2);
        let err =
            serde_json::from_str::<RedisPresenceConfig>(r#"{"ttl": "1s"}"#).expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn keys_share_one_cluster_slot() {
        let k = Keys {
            base: "sb:{presence}:".to_owned(),
        };
        for key in [
            k.user("u"),
            k.node("n"),
            k.online(),
            k.nodes(),
            k.alive("n"),
            k.claim("u"),
        ] {
            assert!(key.starts_with("sb:{presence}:"), "{key}");
        }
    }

    #[test]
    fn script_results_are_read_as_strings() {
        assert!(strings(Value::Null).is_empty());
        let v = Value::Array(vec![Value::from("a"), Value::from("b")]);
        assert_eq!(strings(v), vec!["a".to_owned(), "b".to_owned()]);
    }
}
