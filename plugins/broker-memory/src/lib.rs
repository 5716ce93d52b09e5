//! `broker.plugin = "memory"`: rooms within one node.
//!
//! Every publish goes straight to this node's transports, which fan it out to their local
//! members with the bytes encoded once. The broker counts local members per room, which
//! is what a clustered broker needs to know to subscribe and unsubscribe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use switchboard_core::{
    BoxError, BrokerError, ConnId, Delivery, Factory, LocalHub, Plugin, PluginContext, Reach, Room,
    RoomBroker, async_trait, register_plugin,
};

/// Rooms in one process.
#[derive(Debug)]
pub struct MemoryBroker {
    hub: LocalHub,
    rooms: Mutex<HashMap<Room, usize>>,
    gauge: Gauge<i64, AtomicI64>,
}

impl MemoryBroker {
    /// A broker delivering through `hub`.
    pub fn new(hub: LocalHub) -> Self {
        MemoryBroker {
            hub,
            rooms: Mutex::new(HashMap::new()),
            gauge: Gauge::default(),
        }
    }

    /// How many local members `room` has.
    pub fn members(&self, room: &str) -> usize {
        self.rooms.lock().get(room).copied().unwrap_or(0)
    }
}

#[async_trait]
impl RoomBroker for MemoryBroker {
    async fn join(&self, room: &Room, _conn: &ConnId) -> Result<(), BrokerError> {
        let mut rooms = self.rooms.lock();
        let n = rooms.entry(room.clone()).or_insert(0);
        if *n == 0 {
            self.gauge.inc();
        }
        *n += 1;
        Ok(())
    }

    async fn leave(&self, room: &Room, _conn: &ConnId) -> Result<(), BrokerError> {
        let mut rooms = self.rooms.lock();
        if let Some(n) = rooms.get_mut(room) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rooms.remove(room);
                self.gauge.dec();
            }
        }
        Ok(())
    }

    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError> {
        self.hub.deliver(&delivery).await;
        Ok(Reach::Cluster)
    }
}

fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn RoomBroker>, BoxError> {
    let broker = MemoryBroker::new(ctx.hub().clone());
    ctx.metrics()
        .register("rooms", "Rooms with local members", broker.gauge.clone());
    Ok(Arc::new(broker))
}

register_plugin!(Plugin::new(
    "memory",
    "Rooms in one process: publishes go straight to local sockets",
    Factory::Broker(build)
));

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_local_members() {
        let b = MemoryBroker::new(LocalHub::default());
        let room: Room = Room::from("conversation:1");
        let (x, y) = (ConnId::new("x"), ConnId::new("y"));
        b.join(&room, &x).await.expect("join");
        b.join(&room, &y).await.expect("join");
        assert_eq!(b.members("conversation:1"), 2);
        b.leave(&room, &x).await.expect("leave");
        b.leave(&room, &y).await.expect("leave");
        b.leave(&room, &y).await.expect("leave twice");
        assert_eq!(b.members("conversation:1"), 0);
    }
}
