//! Which nodes share this Redis: each node's heartbeat in one sorted set,
//! `{prefix}nodes` (member: node id, score: when it last beat, by the Redis server's clock,
//! in ms), kept by one script (`scripts/nodes.lua`).
//!
//! A node beats every [`BEAT`]; it counts as alive for [`ALIVE`] after its last beat, so a
//! node that died still counts for at most that long (a control call then waits for its
//! answer, and fails naming it). A node that stops cleanly leaves the set at once.
//!
//! A node whose beats fail may drop out of the set while it still holds connections, and
//! control calls then go on without it. Its [`Lease`] tells it so: from [`LAPSE`] after
//! the last beat that got through (a second before anyone can count it out), it delivers
//! nothing on its own until a beat gets through again and it has carried out the control
//! log. It cannot know whether another node reached Redis meanwhile (one may even have
//! started since), so it holds to this whether or not it saw peers.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// How long after sending its last beat that got through (or after it started) a node
/// stops delivering on its own: a beat before [`ALIVE`].
pub(crate) const LAPSE: Duration = ALIVE.saturating_sub(BEAT);

/// This node's standing in the set of nodes alive, as it can tell by itself.
#[derive(Debug)]
pub(crate) struct Lease {
    origin: Instant,
    /// When (ms after `origin`) the last beat that got through was sent (0: none yet).
    renewed: AtomicU64,
    /// It may have dropped out of the set and has not carried out the control log since.
    lapsed: AtomicBool,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            renewed: AtomicU64::new(0),
            lapsed: AtomicBool::new(false),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    fn now(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    /// Records a beat sent at `sent` that got through; whether the lease had lapsed first.
    fn renew(&self, sent: u64) -> bool {
        let before = self.renewed.fetch_max(sent, Ordering::SeqCst);
        let gap = sent.saturating_sub(before) > millis(LAPSE);
        if gap {
            self.lapsed.store(true, Ordering::SeqCst);
        }
        gap
    }

    /// Whether other nodes may count this one out now: it must not deliver on its own.
    pub(crate) fn cut_off(&self) -> bool {
        self.lapsed.load(Ordering::SeqCst)
            || self
                .now()
                .saturating_sub(self.renewed.load(Ordering::SeqCst))
                > millis(LAPSE)
    }

    /// The control log is carried out: the node knows every call made without it.
    pub(crate) fn restored(&self) {
        self.lapsed.store(false, Ordering::SeqCst);
    }
}

/// What a beat that got through found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// The Redis server's clock, in ms.
    pub(crate) ms: u64,
    /// The node's lease had lapsed before it: it may have dropped out of the set.
    pub(crate) after_lapse: bool,
}

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

    /// Writes this node's heartbeat, forgets nodes silent for long, and renews the lease.
    pub(crate) async fn beat(&self) -> Result<Beat, BrokerError> {
        let sent = self.lease.now();
        let v = self.nodes_script("beat").await?;
        let after_lapse = self.lease.renew(sent);
        Ok(Beat {
            ms: v.as_u64().unwrap_or(0),
            after_lapse,
        })
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
/// reached this node; a beat that succeeds after the node's [`Lease`] lapsed asks for a
/// subscription pass, which carries out the control calls it missed and restores it.
pub(crate) async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // A failed beat is the connection's business (reported by its health); try again.
        if let Ok(beat) = inner.beat().await {
            if beat.after_lapse || inner.lease.lapsed.load(Ordering::SeqCst) {
                inner.resync.notify_one();
            } else if inner.subscribed.load(Ordering::SeqCst) && beat.ms > 0 {
                inner
                    .control_covered_ms
                    .fetch_max(beat.ms, Ordering::SeqCst);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lapses_after_a_silence_and_stays_lapsed_until_restored() {
        let lease = Lease::default();
        let lapse = millis(LAPSE);
        assert!(!lease.cut_off(), "a node just started may deliver");
        assert!(!lease.renew(10));
        assert!(!lease.cut_off());
        // A beat that got through after a silence longer than the lapse.
        assert!(lease.renew(10 + lapse + 1));
        assert!(
            lease.cut_off(),
            "lapsed until the control log is carried out"
        );
        lease.restored();
        assert!(!lease.cut_off());
        // A late answer to an earlier beat does not move the lease back.
        assert!(!lease.renew(5));
        assert_eq!(lease.renewed.load(Ordering::SeqCst), 10 + lapse + 1);
    }
}
