//! Room membership, owned once by the core: concurrent joins and leaves of one socket, of
//! many sockets and across two nodes leave exact counts, and once every member has left or
//! disconnected no node holds the room's subscription, as Redis itself reports it
//! (`PUBSUB CHANNELS`, `PUBSUB SHARDCHANNELS`).
//!
//! The sessions here are registered by Rust code (no transport) and their events go through
//! the real inbound pipeline with tickets taken in send order, then handled concurrently, as
//! the Socket.IO transport does (socketioxide runs each event's handler in a task of its own).

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, Value as RedisValue};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::{
    CloseReason, ConnId, Connection, Gateway, Identity, LoadedConfig, Node, Session,
};
use switchboard_testkit::{RedisServer, eventually};

struct Sock {
    id: ConnId,
    sent: Mutex<Vec<(String, Value)>>,
}

impl Sock {
    fn received(&self, event: &str) -> usize {
        self.sent.lock().iter().filter(|(e, _)| e == event).count()
    }
}

impl Connection for Sock {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        let v = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        self.sent.lock().push((event.to_owned(), v));
    }
    fn close(&self, _reason: CloseReason) {}
}

const SECRET: &str = "rooms-test-secret-0123456789-abcdefghij";

fn config(redis: Option<(&RedisServer, bool)>) -> String {
    let mut toml = format!(
        "[auth.jwt]\nsecret = \"{SECRET}\"\n[limits]\nevents_per_second = 100000\nburst = 100000\n\
         max_connections_per_user = 0\n"
    );
    if let Some((server, sharded)) = redis {
        toml.push_str(&format!(
            "[broker]\nplugin = \"redis\"\n[redis]\nurl = \"{}\"\nkey_prefix = \"t:\"\nsharded_pubsub = {sharded}\n",
            server.url()
        ));
    }
    toml
}

async fn gateway(toml: &str) -> Gateway {
    let node = Node::build(LoadedConfig::from_toml_str(toml).expect("config")).expect("node");
    let gw = node.gateway().clone();
    gw.start().await;
    gw
}

async fn connect(gw: &Gateway, id: &str) -> (Arc<Sock>, Arc<Session>) {
    let sock = Arc::new(Sock {
        id: ConnId::new(id),
        sent: Mutex::default(),
    });
    let session = gw
        .connect(sock.clone(), Identity::anonymous_user(format!("user-{id}")))
        .await;
    (sock, session)
}

/// Sends `events` from one socket without waiting between them: tickets in send order,
/// handlers concurrently. Returns once every one was handled.
async fn burst(gw: &Gateway, session: &Arc<Session>, events: &[(&str, Value)]) -> Vec<Value> {
    let mut tasks = Vec::new();
    for (event, payload) in events {
        let ticket = session.ticket();
        let (gw, session, event) = (gw.clone(), session.clone(), (*event).to_owned());
        let raw = serde_json::value::to_raw_value(payload).expect("raw");
        tasks.push(tokio::spawn(async move {
            gw.inbound(&session, ticket, &event, raw.get().len(), Some(&raw))
                .await
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.expect("handler"));
    }
    acks
}

fn join(id: &str) -> (&'static str, Value) {
    ("conversation:join", json!({ "conversationId": id }))
}

fn leave(id: &str) -> (&'static str, Value) {
    ("conversation:leave", json!({ "conversationId": id }))
}

/// What Redis lists for `command` (`CHANNELS` or `SHARDCHANNELS`) under the room prefix.
async fn redis_channels(server: &RedisServer, command: &str) -> Vec<String> {
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&server.url()).expect("url"),
    )
    .build()
    .expect("client");
    client.init().await.expect("connect");
    let v: RedisValue = client
        .custom(
            fred::types::CustomCommand::new_static("PUBSUB", None, false),
            vec![command.to_owned(), "t:room:*".to_owned()],
        )
        .await
        .expect("PUBSUB");
    let _ = client.quit().await;
    match v {
        RedisValue::Array(items) => items.into_iter().filter_map(|i| i.into_string()).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_s_burst_of_joins_counts_once_and_a_leave_after_it_wins() {
    let gw = gateway(&config(None)).await;
    let (sock, s) = connect(&gw, "a").await;
    let mut events: Vec<(&str, Value)> = (0..20).map(|_| join("42")).collect();
    events.push(leave("42"));
    let acks = burst(&gw, &s, &events).await;
    assert!(acks.iter().all(|a| a["success"] == json!(true)), "{acks:?}");
    assert_eq!(
        sock.received("conversation:joined"),
        20,
        "every join answers"
    );
    assert!(
        !s.in_room("conversation:42"),
        "the leave came last, so it applies last"
    );
    assert_eq!(gw.local_members("conversation:42"), 0);
    assert_eq!(gw.subscribed_rooms(), 0);

    // The same burst ending in a join: the socket is in the room, once.
    let mut events: Vec<(&str, Value)> = vec![join("7"), leave("7"), join("7"), join("7")];
    events.extend((0..10).map(|_| join("7")));
    burst(&gw, &s, &events).await;
    assert!(s.in_room("conversation:7"));
    assert_eq!(gw.local_members("conversation:7"), 1);
    gw.disconnect(&s).await;
    assert_eq!(gw.local_members("conversation:7"), 0);
    assert_eq!(gw.subscribed_rooms(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_then_a_disconnect_leaves_no_subscription_in_redis() {
    for sharded in [false, true] {
        let server = RedisServer::start();
        let gw = gateway(&config(Some((&server, sharded)))).await;
        let command = if sharded { "SHARDCHANNELS" } else { "CHANNELS" };
        for round in 0..5 {
            let (_sock, s) = connect(&gw, &format!("s{round}")).await;
            let mut events: Vec<(&str, Value)> = (0..20).map(|_| join("42")).collect();
            events.push(leave("42"));
            // The disconnect comes right behind the burst, before its handlers finish.
            let handled = {
                let gw = gw.clone();
                let s = s.clone();
                tokio::spawn(async move { burst(&gw, &s, &events).await })
            };
            gw.disconnect(&s).await;
            handled.await.expect("burst");
            assert_eq!(gw.local_members("conversation:42"), 0, "round {round}");
        }
        assert_eq!(gw.subscribed_rooms(), 0);
        let left = redis_channels(&server, command).await;
        assert!(left.is_empty(), "{command} still lists {left:?}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sockets_on_two_nodes_join_and_leave_concurrently_with_exact_counts() {
    let server = RedisServer::start();
    let toml = config(Some((&server, false)));
    let (a, b) = (gateway(&toml).await, gateway(&toml).await);
    const PER_NODE: usize = 40;
    let mut sessions = Vec::new();
    for (name, gw) in [("a", &a), ("b", &b)] {
        for i in 0..PER_NODE {
            let (_sock, s) = connect(gw, &format!("{name}{i}")).await;
            sessions.push((gw.clone(), s));
        }
    }
    // Everyone joins the shared room (three times over) and a room of their own, at once.
    let mut tasks = Vec::new();
    for (gw, s) in &sessions {
        let (gw, s) = (gw.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let own = s.id().to_string();
            burst(
                &gw,
                &s,
                &[join("shared"), join(&own), join("shared"), join("shared")],
            )
            .await
        }));
    }
    for t in tasks {
        t.await.expect("joins");
    }
    for gw in [&a, &b] {
        assert_eq!(gw.local_members("conversation:shared"), PER_NODE);
        assert_eq!(gw.subscribed_rooms(), PER_NODE + 1);
    }
    let channels = redis_channels(&server, "CHANNELS").await;
    assert!(channels.contains(&"t:room:conversation:shared".to_owned()));
    assert_eq!(channels.len(), 2 * PER_NODE + 1, "{channels:?}");

    // Half leave, the other half disconnect, all at once.
    let mut tasks = Vec::new();
    for (i, (gw, s)) in sessions.iter().enumerate() {
        let (gw, s) = (gw.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let own = s.id().to_string();
                burst(&gw, &s, &[leave("shared"), leave(&own)]).await;
            }
            gw.disconnect(&s).await;
        }));
    }
    for t in tasks {
        t.await.expect("leaves");
    }
    for gw in [&a, &b] {
        assert_eq!(gw.local_members("conversation:shared"), 0);
        assert_eq!(gw.subscribed_rooms(), 0);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis_channels(&server, "CHANNELS").await.is_empty()
        })
        .await,
        "Redis still lists {:?}",
        redis_channels(&server, "CHANNELS").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_racing_the_last_leave_of_another_socket_stays_subscribed() {
    let server = RedisServer::start();
    let toml = config(Some((&server, false)));
    let (gw, other) = (gateway(&toml).await, gateway(&toml).await);
    let (_p, publisher) = connect(&other, "pub").await;
    burst(&other, &publisher, &[join("race")]).await;
    for round in 0..30 {
        let (_x, x) = connect(&gw, &format!("x{round}")).await;
        let (y_sock, y) = connect(&gw, &format!("y{round}")).await;
        burst(&gw, &x, &[join("race")]).await;
        // x's last leave (an unsubscribe) and y's join (a subscribe) at once.
        let (g1, g2, x2, y2) = (gw.clone(), gw.clone(), x.clone(), y.clone());
        let l = tokio::spawn(async move { burst(&g1, &x2, &[leave("race")]).await });
        let j = tokio::spawn(async move { burst(&g2, &y2, &[join("race")]).await });
        l.await.expect("leave");
        j.await.expect("join");
        assert_eq!(gw.local_members("conversation:race"), 1, "round {round}");
        // y is subscribed cluster-wide: a publish from the other node reaches it.
        let before = y_sock.received("typing:start");
        burst(
            &other,
            &publisher,
            &[("typing:start", json!({"conversationId": "race"}))],
        )
        .await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                y_sock.received("typing:start") == before + 1
            })
            .await,
            "round {round}: the joined socket gets the room's events"
        );
        gw.disconnect(&x).await;
        gw.disconnect(&y).await;
    }
    assert_eq!(gw.subscribed_rooms(), 0);
    let channels = redis_channels(&server, "CHANNELS").await;
    assert_eq!(
        channels,
        ["t:room:conversation:race"],
        "only the other node's subscription is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_the_backend_disconnected_joins_no_room_while_its_transport_closes() {
    let gw = gateway(&config(None)).await;
    let (_sock, session) = connect(&gw, "kicked").await;
    burst(&gw, &session, &[join("1")]).await;
    assert!(session.in_room("conversation:1"));
    let n = gw
        .disconnect_user("user-kicked", "banned")
        .await
        .expect("disconnected");
    assert_eq!(n, 1);
    assert!(!session.in_room("conversation:1"));
    // Its transport has not closed yet (this connection never does by itself): an event it
    // sent meanwhile does not put it back in a room.
    burst(&gw, &session, &[join("2")]).await;
    assert!(
        session.rooms().is_empty(),
        "a closing socket joined {:?}",
        session.rooms()
    );
    gw.disconnect(&session).await;
}
