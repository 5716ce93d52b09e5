//! A Redis Cluster's slot map, watched: when slots move (a failover promoted a replica, or
//! the cluster was resharded), the rooms are subscribed again where their slots live now.
//!
//! A shard that hands a slot over tells its sharded subscribers with a `sunsubscribe` push,
//! which fred (10.1) drops as a subscription reply, so the broker cannot hear it. Instead it
//! reads `CLUSTER SLOTS` on the subscriber's client every [`CHECK`] and, when the map
//! changed, resubscribes every room (`SSUBSCRIBE` of a channel already subscribed on its
//! shard changes nothing there). A room whose slot moved misses what is published to it
//! between the move and that pass: at most [`CHECK`] plus one resubscription.

use std::sync::Weak;
use std::time::Duration;

use fred::prelude::{ClientLike, ClusterInterface};

use super::Inner;

/// How often the slot map is read.
pub(crate) const CHECK: Duration = Duration::from_secs(1);

/// Each slot range with the primary serving it, as the subscriber's client routes now.
pub(crate) fn slot_map(inner: &Inner) -> SlotMap {
    inner
        .sub
        .cached_cluster_state()
        .map(|routing| {
            routing
                .slots()
                .iter()
                .map(|r| (r.start, r.end, r.primary.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Slot ranges and the primary serving each.
pub(crate) type SlotMap = Vec<(u16, u16, String)>;

/// Brings the subscriber's routing up to date, so a subscription pass goes where the slots
/// live now.
pub(crate) async fn refresh(inner: &Inner) {
    let _ = tokio::time::timeout(inner.timeout, inner.sub.sync_cluster()).await;
}

/// Reads the slot map every [`CHECK`] until the broker is gone; asks for a resubscription
/// when it differs from the one the last subscription pass was made under.
pub(crate) async fn watch(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if !inner.sub.is_connected() {
            continue;
        }
        match tokio::time::timeout(inner.timeout, inner.sub.sync_cluster()).await {
            Ok(Ok(())) => {}
            // The connection's own events report a failing Redis.
            _ => continue,
        }
        let now = slot_map(&inner);
        let moved = {
            let passed = inner.slot_map.lock();
            !now.is_empty() && !passed.is_empty() && *passed != now
        };
        if moved {
            tracing::info!(
                node = %inner.node,
                "room broker: the Redis Cluster's slots moved; subscribing every room where its slot lives now"
            );
            inner.metrics.slot_moves.inc();
            // The pass records the map it subscribed under.
            inner.slot_map.lock().clear();
            inner.resync.notify_one();
        }
    }
}
