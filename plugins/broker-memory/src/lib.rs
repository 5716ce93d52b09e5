//! `broker.plugin = "memory"`: rooms within one node.
//!
//! One node is its own cluster: every publish goes straight to the node's inbox, which
//! delivers it to the room's local members. The broker keeps the set of subscribed rooms
//! (those with local members) only to answer what it holds.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use switchboard_core::{
    BoxError, BrokerError, Delivery, Factory, Inbox, Plugin, PluginContext, Reach, Room,
    RoomBroker, async_trait, register_plugin,
};

/// Rooms in one process.
#[derive(Debug, Default)]
pub struct MemoryBroker {
    inbox: OnceLock<Inbox>,
    rooms: Mutex<HashSet<Room>>,
}

impl MemoryBroker {
    /// A broker for one node.
    pub fn new() -> Self {
        MemoryBroker::default()
    }

    /// Whether `room` is subscribed (has local members).
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.rooms.lock().contains(room)
    }

    /// How many rooms are subscribed.
    pub fn subscribed_rooms(&self) -> usize {
        self.rooms.lock().len()
    }
}

#[async_trait]
impl RoomBroker for MemoryBroker {
    async fn start(&self, inbox: Inbox) -> Result<(), BrokerError> {
        let _ = self.inbox.set(inbox);
        Ok(())
    }

    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError> {
        self.rooms.lock().insert(room.clone());
        Ok(())
    }

    async fn unsubscribe(&self, room: &Room) -> Result<(), BrokerError> {
        self.rooms.lock().remove(room);
        Ok(())
    }

    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError> {
        let Some(inbox) = self.inbox.get() else {
            return Err(BrokerError::Unavailable {
                backend: "memory broker",
                reason: "not started (Gateway::start starts it)".to_owned(),
            });
        };
        inbox.deliver(&delivery);
        Ok(Reach::Cluster)
    }
}

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn RoomBroker>, BoxError> {
    Ok(Arc::new(MemoryBroker::new()))
}

register_plugin!(Plugin::new(
    "memory",
    "Rooms in one process: publishes go straight to local sockets",
    Factory::Broker(build)
));

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn publishes_reach_the_inbox_once_started() {
        let b = MemoryBroker::new();
        let d = Arc::new(
            Delivery::encode("e", Some(Room::from("r")), &serde_json::json!({})).expect("encode"),
        );
        assert!(b.publish(d.clone()).await.is_err(), "not started");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        b.start(Inbox::from_fn(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        }))
        .await
        .expect("start");
        assert_eq!(b.publish(d).await.expect("publish"), Reach::Cluster);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let room = Room::from("conversation:1");
        b.subscribe(&room).await.expect("subscribe");
        assert!(b.is_subscribed("conversation:1"));
        b.unsubscribe(&room).await.expect("unsubscribe");
        assert_eq!(b.subscribed_rooms(), 0);
    }
}
