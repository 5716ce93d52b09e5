//! A backend's `users/{id}/disconnect` and `rooms/leave`, and a node's reset, against a
//! transport that is closing at the same moment: once the call has answered, the session
//! whose transport dropped is not kept for recovery (or recovers without the room), wherever
//! its close had got to.
//!
//! The close is held at one point, the write of its recovery record (the moment it has left
//! the node's live sessions and is not yet among those waiting for their client), by a broker
//! that is the memory broker with a gate in front of that write.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::Sock;
use switchboard::broker::{
    BrokerError, History, Inbox, LoggedControl, Position, Reach, Room, RoomBroker,
};
use switchboard::runtime::{Leaving, RecoveryRequest};
use switchboard::{
    Delivery, Gateway, Identity, LoadedConfig, Node, Session, TransportId, async_trait,
};
use switchboard_broker_memory::MemoryBroker;
use tokio::sync::{Notify, Semaphore};

/// The memory broker, except that while armed a session record written as `dropped` waits
/// at the gate until it is opened.
struct Gated {
    inner: MemoryBroker,
    /// The node's inbox, once started (for a request as another node would send it).
    inbox: parking_lot::Mutex<Option<Inbox>>,
    armed: std::sync::atomic::AtomicBool,
    reached: Notify,
    open: Semaphore,
}

impl Gated {
    fn new() -> Arc<Self> {
        Arc::new(Gated {
            inner: MemoryBroker::new(),
            inbox: parking_lot::Mutex::new(None),
            armed: std::sync::atomic::AtomicBool::new(false),
            reached: Notify::new(),
            open: Semaphore::new(0),
        })
    }
}

#[async_trait]
impl RoomBroker for Gated {
    async fn start(&self, inbox: Inbox) -> Result<(), BrokerError> {
        *self.inbox.lock() = Some(inbox.clone());
        self.inner.start(inbox).await
    }
    async fn subscribe(&self, room: &Room) -> Result<(), BrokerError> {
        self.inner.subscribe(room).await
    }
    async fn unsubscribe(&self, room: &Room) -> Result<(), BrokerError> {
        self.inner.unsubscribe(room).await
    }
    async fn publish(&self, delivery: Arc<Delivery>) -> Result<Reach, BrokerError> {
        self.inner.publish(delivery).await
    }
    async fn publish_kept(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<(Reach, Option<Position>), BrokerError> {
        self.inner.publish_kept(delivery).await
    }
    async fn position(&self, room: &Room) -> Result<Option<Position>, BrokerError> {
        self.inner.position(room).await
    }
    async fn history(
        &self,
        room: &Room,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        self.inner.history(room, after, limit).await
    }
    async fn put_record(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let dropped = fields
            .iter()
            .any(|(_, v)| v.contains("\"state\":\"dropped\""));
        if dropped && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            let _pass = self.open.acquire().await;
        }
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
        request: Value,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        self.inner.ask(node, request, timeout).await
    }
    async fn log_control(&self, request: &Value) -> Result<Option<String>, BrokerError> {
        self.inner.log_control(request).await
    }
    async fn control_log(&self, since_ms: u64) -> Result<Vec<LoggedControl>, BrokerError> {
        self.inner.control_log(since_ms).await
    }
    async fn nodes(&self) -> Result<Vec<String>, BrokerError> {
        self.inner.nodes().await
    }
    async fn ready(&self) -> bool {
        self.inner.ready().await
    }
    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// A started node with recovery on, over `broker`.
async fn gateway(broker: Arc<Gated>) -> Gateway {
    let toml = "[recovery]\nenabled = true\n[auth.jwt]\nsecret = \"disconnect-races-secret-0123456789abcdef\"\n";
    let node = Node::builder(LoadedConfig::from_toml_str(toml).expect("config"))
        .broker(broker)
        .build()
        .expect("node");
    let gw = node.gateway().clone();
    gw.start().await;
    gw
}

/// Connects a client of `user` that tracks offsets, naming `pid` to recover when given.
async fn connect(gw: &Gateway, user: &str, pid: Option<String>) -> (Arc<Session>, bool) {
    let conn = Sock::new(format!("{user}-{}", switchboard::registry::random_id()));
    let connected = gw
        .connect_with(
            TransportId::DIRECT,
            conn,
            Identity::anonymous_user(user.to_owned()),
            RecoveryRequest {
                tracks_offsets: true,
                pid,
                ..RecoveryRequest::default()
            },
        )
        .await;
    (connected.session, connected.recovered)
}

/// The room each test's user is in when its transport drops.
const ROOM: &str = "conversation:1";

/// Connects `user` and puts it in [`ROOM`], then drops its transport and holds the drop at
/// the write of its record; `during` runs there. Answers the session of a client that comes
/// back, and whether it recovered the one that dropped.
async fn drop_with(user: &str, during: impl AsyncFnOnce(&Gateway, &Gated)) -> (Arc<Session>, bool) {
    let broker = Gated::new();
    let gw = gateway(broker.clone()).await;
    let (session, _) = connect(&gw, user, None).await;
    assert_eq!(gw.join_user(user, ROOM).await.expect("joined"), 1);
    let pid = session
        .recovery_id()
        .expect("a tracked session")
        .to_string();
    broker
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let closing = tokio::spawn({
        let (gw, session) = (gw.clone(), session.clone());
        async move { gw.disconnect_with(&session, Leaving::Dropped).await }
    });
    broker.reached.notified().await;
    during(&gw, &broker).await;
    broker.open.add_permits(1);
    closing.await.expect("the close ends");
    connect(&gw, user, Some(pid)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_is_recovered_when_nothing_happens_while_it_closes() {
    let (session, recovered) = drop_with("ana", async |_, _| {}).await;
    assert!(
        recovered,
        "a client that comes back recovers its dropped session"
    );
    assert!(session.in_room(ROOM), "back in its room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_backend_took_a_user_out_of_while_its_transport_closed_is_not_recovered() {
    let (session, recovered) = drop_with("dee", async |gw, _| {
        // Not live any more, so the call counts no socket; it still takes effect.
        let _ = gw.leave_user("dee", ROOM).await;
    })
    .await;
    assert!(recovered, "the session itself is recovered");
    assert!(
        !session.in_room(ROOM),
        "rooms/leave held: the recovered session is not back in {ROOM}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_disconnected_while_its_transport_closes_is_not_recovered() {
    let (_, recovered) = drop_with("bob", async |gw, _| {
        // Not live any more, so the call counts no socket; it still takes effect.
        let _ = gw.disconnect_user("bob", "banned").await;
    })
    .await;
    assert!(
        !recovered,
        "the backend disconnected the user: its session is not kept for recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reset_while_a_transport_closes_recovers_nothing() {
    let (_, recovered) = drop_with("cy", async |_, broker| {
        // What a broker asks of a node that cannot tell which control calls it missed.
        let inbox = broker.inbox.lock().clone().expect("started");
        inbox.answer(serde_json::json!({ "kind": "reset" })).await;
    })
    .await;
    assert!(
        !recovered,
        "after a reset no session of the node is recovered"
    );
}
