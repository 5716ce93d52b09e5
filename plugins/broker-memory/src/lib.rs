//! `broker.plugin = "memory"`: rooms within one node.
//!
//! One node is its own cluster: every publish goes straight to the node's inbox, which
//! delivers it to the room's local members. The broker keeps the set of subscribed rooms
//! (those with local members), each room's history (`history.size` events at most, each for
//! `history.ttl`, numbered in one stream per room whose epoch is fixed for the life of the
//! process), and the core's small records. A room's kept events are numbered and delivered
//! under the room's lock, so every member sees them in the order of their numbers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use switchboard_core::config::HistoryConfig;
use switchboard_core::{
    BoxError, BrokerError, Delivery, Factory, History, Inbox, Plugin, PluginContext, Position,
    Reach, Room, RoomBroker, async_trait, register_plugin,
};

/// One room's stream: the last number given and the kept events (when, and in which
/// place of the broker's publish order).
#[derive(Default)]
struct Stream {
    n: u64,
    kept: VecDeque<(Instant, u64, Arc<Delivery>)>,
}

/// A record and when it expires.
struct Record {
    fields: HashMap<String, String>,
    until: Instant,
}

/// Rooms in one process.
pub struct MemoryBroker {
    inbox: OnceLock<Inbox>,
    node: String,
    rooms: Mutex<HashSet<Room>>,
    epoch: Arc<str>,
    history: HistoryConfig,
    streams: RwLock<HashMap<Room, Arc<Mutex<Stream>>, foldhash::fast::RandomState>>,
    kept_seq: AtomicU64,
    records: Mutex<HashMap<String, Record>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &self.node)
            .finish()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    /// A broker for one node, with the default history settings.
    pub fn new() -> Self {
        MemoryBroker::with_history(HistoryConfig::default(), "memory")
    }

    /// A broker for node `node` keeping history as `history` says.
    pub fn with_history(history: HistoryConfig, node: impl Into<String>) -> Self {
        MemoryBroker {
            inbox: OnceLock::new(),
            node: node.into(),
            rooms: Mutex::new(HashSet::new()),
            epoch: Arc::from(switchboard_core::broker::new_epoch()),
            history,
            streams: RwLock::new(HashMap::default()),
            kept_seq: AtomicU64::new(0),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `room` is subscribed (has local members).
    pub fn is_subscribed(&self, room: &str) -> bool {
        self.rooms.lock().contains(room)
    }

    /// How many rooms are subscribed.
    pub fn subscribed_rooms(&self) -> usize {
        self.rooms.lock().len()
    }

    fn stream(&self, room: &Room) -> Arc<Mutex<Stream>> {
        self.stream_named(room).1
    }

    /// The room's stream and the room's name as the broker holds it (one allocation for
    /// every event the stream keeps).
    fn stream_named(&self, room: &Room) -> (Room, Arc<Mutex<Stream>>) {
        if let Some((name, s)) = self.streams.read().get_key_value(room) {
            return (name.clone(), s.clone());
        }
        let mut streams = self.streams.write();
        let s = streams.entry(room.clone()).or_default().clone();
        let name = streams
            .get_key_value(room)
            .map_or_else(|| room.clone(), |(name, _)| name.clone());
        (name, s)
    }

    /// Drops what is past `history.ttl`.
    fn expire(&self, s: &mut Stream, now: Instant) {
        let ttl = self.history.ttl.get();
        while s
            .kept
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > ttl)
        {
            s.kept.pop_front();
        }
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
        self.publish_kept(delivery).await.map(|(r, _)| r)
    }

    async fn publish_kept(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<(Reach, Option<Position>), BrokerError> {
        let Some(inbox) = self.inbox.get() else {
            return Err(BrokerError::Unavailable {
                backend: "memory broker",
                reason: "not started (Gateway::start starts it)".to_owned(),
            });
        };
        match (
            delivery.room.clone(),
            delivery.keep && self.history.enabled(),
        ) {
            (Some(room), true) => {
                let (name, stream) = self.stream_named(&room);
                // Numbered and delivered under the room's lock: one order for everyone.
                let mut s = stream.lock();
                s.n += 1;
                let position = Position::new(self.epoch.clone(), s.n);
                // The publisher's delivery itself, placed (a copy only if it is shared),
                // naming its room with the stream's own name: what history keeps per event
                // is the delivery and its payload.
                let mut kept = delivery;
                let placed = Arc::make_mut(&mut kept);
                placed.position = Some(position.clone());
                placed.room = Some(name);
                inbox.deliver(&kept);
                let now = Instant::now();
                let seq = self.kept_seq.fetch_add(1, Ordering::Relaxed);
                s.kept.push_back((now, seq, kept));
                while s.kept.len() > self.history.size {
                    s.kept.pop_front();
                }
                self.expire(&mut s, now);
                Ok((Reach::Cluster, Some(position)))
            }
            _ => {
                inbox.deliver(&delivery);
                Ok((Reach::Cluster, None))
            }
        }
    }

    async fn position(&self, room: &Room) -> Result<Option<Position>, BrokerError> {
        if !self.history.enabled() {
            return Ok(None);
        }
        let stream = self.stream(room);
        let n = stream.lock().n;
        Ok(Some(Position::new(self.epoch.clone(), n)))
    }

    async fn history(
        &self,
        room: &Room,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        if !self.history.enabled() {
            return Err(BrokerError::Unsupported(
                "history is off (history.size = 0)".to_owned(),
            ));
        }
        let Some(stream) = self.streams.read().get(room).cloned() else {
            // Never published to: nothing was kept, and nothing was lost unless the
            // position is of another stream.
            return Ok(History {
                events: Vec::new(),
                kept_at: Vec::new(),
                complete: after.is_none_or(|p| *p.epoch == *self.epoch && p.n == 0),
                last: None,
            });
        };
        let mut s = stream.lock();
        self.expire(&mut s, Instant::now());
        let last = Some(Position::new(self.epoch.clone(), s.n));
        let (from, complete) = match after {
            None => (0, s.kept.front().is_none_or(|(_, _, d)| position_n(d) == 1)),
            Some(p) if *p.epoch != *self.epoch || p.n > s.n => (0, false),
            Some(p) => {
                let first = s.kept.front().map_or(s.n + 1, |(_, _, d)| position_n(d));
                (p.n, first <= p.n + 1)
            }
        };
        let (kept_at, events) = s
            .kept
            .iter()
            .filter(|(_, _, d)| position_n(d) > from)
            .take(limit)
            .map(|(_, seq, d)| (*seq, (**d).clone()))
            .unzip();
        Ok(History {
            events,
            kept_at,
            complete,
            last,
        })
    }

    async fn put_record(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let now = Instant::now();
        let mut records = self.records.lock();
        records.retain(|_, r| r.until > now);
        let r = records.entry(key.to_owned()).or_insert_with(|| Record {
            fields: HashMap::new(),
            until: now,
        });
        r.fields.extend(fields);
        r.until = now + ttl;
        Ok(())
    }

    async fn get_record(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<Option<String>>, BrokerError> {
        let now = Instant::now();
        let records = self.records.lock();
        let r = records.get(key).filter(|r| r.until > now);
        Ok(fields
            .iter()
            .map(|f| r.and_then(|r| r.fields.get(f).cloned()))
            .collect())
    }

    async fn delete_record(&self, key: &str, fields: &[String]) -> Result<(), BrokerError> {
        let mut records = self.records.lock();
        if fields.is_empty() {
            records.remove(key);
        } else if let Some(r) = records.get_mut(key) {
            for f in fields {
                r.fields.remove(f);
            }
        }
        Ok(())
    }

    async fn ask(
        &self,
        node: &str,
        request: Value,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        if node != self.node {
            return Err(BrokerError::Unsupported(format!(
                "no node `{node}`: the memory broker is a cluster of one"
            )));
        }
        let Some(inbox) = self.inbox.get() else {
            return Err(BrokerError::Unsupported("not started".to_owned()));
        };
        tokio::time::timeout(timeout, inbox.answer(request))
            .await
            .map_err(|_| BrokerError::Timeout {
                backend: "memory broker",
                command: "ask",
                after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            })
    }
}

fn position_n(d: &Delivery) -> u64 {
    d.position.as_ref().map_or(0, |p| p.n)
}

fn build(ctx: &PluginContext<'_>) -> Result<Arc<dyn RoomBroker>, BoxError> {
    Ok(Arc::new(MemoryBroker::with_history(
        ctx.config().history.clone(),
        ctx.node_id(),
    )))
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

    fn delivery(room: &str, n: u64, keep: bool) -> Arc<Delivery> {
        Arc::new(
            Delivery::encode("e", Some(Room::from(room)), &serde_json::json!({ "n": n }))
                .expect("encode")
                .kept(keep),
        )
    }

    #[tokio::test]
    async fn publishes_reach_the_inbox_once_started() {
        let b = MemoryBroker::new();
        let d = delivery("r", 0, false);
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

    #[tokio::test]
    async fn kept_events_are_numbered_bounded_and_read_back_after_a_position() {
        let b = MemoryBroker::with_history(
            HistoryConfig {
                size: 3,
                ttl: switchboard_core::Dur::secs(60),
            },
            "n",
        );
        let positions = Arc::new(Mutex::new(Vec::new()));
        let seen = positions.clone();
        b.start(Inbox::from_fn(move |d| {
            seen.lock().push(d.position.clone());
        }))
        .await
        .expect("start");
        let room = Room::from("r");
        let start = b.position(&room).await.expect("position").expect("kept");
        assert_eq!(start.n, 0);
        for i in 1..=5 {
            b.publish(delivery("r", i, true)).await.expect("publish");
        }
        b.publish(delivery("r", 99, false)).await.expect("typing");
        let got: Vec<u64> = positions.lock().iter().flatten().map(|p| p.n).collect();
        assert_eq!(got, [1, 2, 3, 4, 5], "an unkept event has no position");
        // Three kept: 3, 4, 5. After 3: complete; after 1: 2 was trimmed.
        let h = b
            .history(&room, Some(&Position::new(start.epoch.clone(), 3)), 10)
            .await
            .expect("history");
        assert!(h.complete);
        assert_eq!(h.events.iter().map(position_n).collect::<Vec<_>>(), [4, 5]);
        let h = b
            .history(&room, Some(&Position::new(start.epoch.clone(), 1)), 10)
            .await
            .expect("history");
        assert!(!h.complete, "2 is gone");
        let h = b
            .history(&room, Some(&Position::new("otherepoch", 3)), 10)
            .await
            .expect("history");
        assert!(!h.complete, "another stream's position is never trusted");
        let h = b.history(&room, None, 2).await.expect("history");
        assert_eq!(h.events.iter().map(position_n).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(h.last.map(|p| p.n), Some(5));
    }

    #[tokio::test]
    async fn records_merge_expire_and_delete() {
        let b = MemoryBroker::new();
        let f = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        b.put_record("k", vec![f("a", "1")], Duration::from_secs(60))
            .await
            .expect("put");
        b.put_record("k", vec![f("b", "2")], Duration::from_secs(60))
            .await
            .expect("put");
        let names = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(
            b.get_record("k", &names).await.expect("get"),
            [Some("1".to_owned()), Some("2".to_owned()), None]
        );
        b.delete_record("k", &names[..1]).await.expect("delete");
        assert_eq!(b.get_record("k", &names[..1]).await.expect("get"), [None]);
        b.put_record("gone", vec![f("a", "1")], Duration::ZERO)
            .await
            .expect("put");
        assert_eq!(
            b.get_record("gone", &names[..1]).await.expect("get"),
            [None]
        );
    }
}
