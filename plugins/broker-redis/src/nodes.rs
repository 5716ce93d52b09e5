//! Which nodes share this Redis: each node's heartbeat in one sorted set,
//! `{prefix}nodes` (member: node id, score: when it last beat, by the Redis server's clock,
//! in ms), kept by one script (`scripts/nodes.lua`).
//!
//! A node beats every [`BEAT`]; it counts as alive for [`ALIVE`] after its last beat, so a
//! node that died still counts for at most that long (a control call then waits for its
//! answer, and fails naming it). A node that stops cleanly leaves the set at once.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fred::prelude::Value as RedisValue;
use fred::types::scripts::Script;
use switchboard_core::BrokerError;

use super::Inner;

/// How often a node beats.
pub(crate) const BEAT: Duration = Duration::from_secs(1);
/// How long after its last beat a node counts as alive.
pub(crate) const ALIVE: Duration = Duration::from_secs(5);
/// How long after its last beat a node's entry is removed for good.
const FORGET: Duration = Duration::from_secs(60);

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/nodes.lua")));

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

impl Inner {
    fn nodes_key(&self) -> String {
        format!("{}nodes", self.key_prefix)
    }

    async fn nodes_script(&self, op: &str) -> Result<RedisValue, BrokerError> {
        let key = self.nodes_key();
        let (client, _) = self.publisher(&key);
        let args = vec![self.node.clone(), op.to_owned(), ms(ALIVE), ms(FORGET)];
        self.run_script(client, &SCRIPT, vec![key.clone()], args, "nodes")
            .await
    }

    /// Writes this node's heartbeat, and forgets nodes silent for long; the server's clock
    /// (ms).
    pub(crate) async fn beat(&self) -> Result<u64, BrokerError> {
        let v = self.nodes_script("beat").await?;
        Ok(v.as_u64().unwrap_or(0))
    }

    /// The ids of the nodes alive now, this one included.
    pub(crate) async fn nodes(&self) -> Result<Vec<String>, BrokerError> {
        let v = self.nodes_script("list").await?;
        let mut nodes: Vec<String> = match v {
            RedisValue::Array(items) => items.into_iter().filter_map(|i| i.as_string()).collect(),
            _ => Vec::new(),
        };
        if !nodes.contains(&self.node) {
            nodes.push(self.node.clone());
        }
        nodes.sort();
        Ok(nodes)
    }

    /// Leaves the set (a clean stop).
    pub(crate) async fn leave_nodes(&self) {
        let _ = self.nodes_script("leave").await;
    }
}

/// Beats every [`BEAT`] until the broker is gone.
///
/// A beat while every channel is subscribed moves the point up to which control calls
/// reached this node; a beat that succeeds after the node may have dropped out of the set
/// (its beats failing for longer than [`ALIVE`] less a beat) asks for a subscription pass,
/// which carries out the control calls it missed.
pub(crate) async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // A failed beat is the connection's business (reported by its health); try again.
        if let Ok(ms) = inner.beat().await {
            if last_ok.elapsed() > ALIVE.saturating_sub(BEAT) {
                inner.resync.notify_one();
            } else if inner.subscribed.load(Ordering::SeqCst) && ms > 0 {
                inner.control_covered_ms.fetch_max(ms, Ordering::SeqCst);
            }
            last_ok = Instant::now();
        }
        // Every connection answers a PING now and then, the idle ones and the subscriber
        // included, so one that went half-open is replaced within the command timeout
        // instead of being found out when a publish needs it (or never, for a subscriber).
        tokio::join!(
            inner.pool.ping_all(inner.timeout),
            switchboard_redis_client::ping(&inner.sub, inner.timeout)
        );
    }
}
