//! The Redis broker against a real `redis-server`: two brokers with their own recording
//! inboxes stand for two nodes sharing one Redis.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{ClientLike, PubsubInterface};
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchboard_broker_redis::{RedisBroker, RedisBrokerConfig};
use switchboard_core::config::RedisConfig;
use switchboard_core::{Delivery, Inbox, Reach, Room, RoomBroker};
use switchboard_testkit::{RedisServer, eventually};

/// What a node's inbox was handed, in order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Option<String>, Value)>>,
}

impl Recorder {
    fn events(&self) -> Vec<(String, Option<String>, Value)> {
        self.seen.lock().clone()
    }
    fn payloads(&self, room: &str) -> Vec<Value> {
        self.seen
            .lock()
            .iter()
            .filter(|(_, r, _)| r.as_deref() == Some(room))
            .map(|(_, _, p)| p.clone())
            .collect()
    }
    fn len(&self) -> usize {
        self.seen.lock().len()
    }
    fn inbox(self: &Arc<Self>) -> Inbox {
        let me = self.clone();
        Inbox::from_fn(move |d: &Delivery| {
            let payload: Value = serde_json::from_str(d.payload.get()).expect("payload is JSON");
            me.seen.lock().push((
                d.event.to_string(),
                d.room.as_deref().map(str::to_owned),
                payload,
            ));
        })
    }
}

struct TestNode {
    broker: RedisBroker,
    rec: Arc<Recorder>,
}

fn redis_config(server: &RedisServer, sharded: bool) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        key_prefix: "t:".to_owned(),
        sharded_pubsub: Some(sharded),
        ..RedisConfig::default()
    }
}

fn fast() -> RedisBrokerConfig {
    RedisBrokerConfig {
        reconnect_max_delay: switchboard_core::Dur::millis(300),
        ..RedisBrokerConfig::default()
    }
}

fn broker(redis: &RedisConfig) -> RedisBroker {
    RedisBroker::new(redis, &fast(), switchboard_core::registry::random_id()).expect("broker")
}

async fn node(redis: &RedisConfig) -> TestNode {
    let rec = Arc::new(Recorder::default());
    let broker = broker(redis);
    broker
        .start(rec.inbox())
        .await
        .expect("broker starts with Redis up");
    assert!(broker.ready().await);
    TestNode { broker, rec }
}

fn room(name: &str) -> Room {
    Room::from(name)
}

async fn publish(n: &TestNode, room: Option<&str>, payload: Value) {
    let d = Delivery::encode("message:received", room.map(Room::from), &payload).expect("encode");
    let reach = n.broker.publish(Arc::new(d)).await.expect("publish");
    assert_eq!(reach, Reach::Cluster, "published through Redis");
}

/// Waits a little for stray deliveries, then returns.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn numsub(server: &RedisServer, channel: &str) -> i64 {
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&server.url()).expect("url"),
    )
    .build()
    .expect("client");
    client.init().await.expect("connect");
    let v: Vec<fred::prelude::Value> = client
        .pubsub_numsub(channel.to_owned())
        .await
        .expect("numsub");
    let _ = client.quit().await;
    v.get(1)
        .and_then(fred::prelude::Value::as_i64)
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_exactly_once() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    b.broker
        .subscribe(&room("conversation:1"))
        .await
        .expect("subscribe");

    publish(&a, Some("conversation:1"), json!({"n": 1})).await;
    assert!(eventually(Duration::from_secs(5), || async { b.rec.len() == 1 }).await);
    publish(&b, Some("conversation:1"), json!({"n": 2})).await;
    publish(&a, None, json!({"n": 3})).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.rec.len() == 3 && a.rec.len() == 1
        })
        .await
    );
    settle().await;

    assert_eq!(
        b.rec.payloads("conversation:1"),
        vec![json!({"n": 1}), json!({"n": 2})]
    );
    let broadcast: Vec<_> = b
        .rec
        .events()
        .into_iter()
        .filter(|(_, r, _)| r.is_none())
        .collect();
    assert_eq!(broadcast.len(), 1, "the namespace-wide event arrives once");
    // A has no member in the room: it is not subscribed and receives only the broadcast.
    assert_eq!(
        a.rec.events(),
        vec![("message:received".to_owned(), None, json!({"n": 3}))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_crosses_nodes() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, true);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    b.broker
        .subscribe(&room("session:9"))
        .await
        .expect("subscribe");
    publish(&a, Some("session:9"), json!({"s": 1})).await;
    publish(&a, None, json!({"s": 2})).await;
    assert!(eventually(Duration::from_secs(5), || async { b.rec.len() == 2 }).await);
    settle().await;
    assert_eq!(b.rec.payloads("session:9"), vec![json!({"s": 1})]);
    assert_eq!(a.rec.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_effective_when_it_returns() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    for i in 0..30 {
        let r = format!("conversation:j{i}");
        a.broker.subscribe(&room(&r)).await.expect("subscribe");
        publish(&b, Some(&r), json!({"i": i})).await;
    }
    let ok = eventually(Duration::from_secs(5), || async { a.rec.len() == 30 }).await;
    assert!(ok, "{:?}", a.rec.events());
    for i in 0..30 {
        assert_eq!(
            a.rec.payloads(&format!("conversation:j{i}")),
            vec![json!({"i": i})]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_see_one_order() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (Arc::new(node(&cfg).await), Arc::new(node(&cfg).await));
    let r = room("conversation:order");
    a.broker.subscribe(&r).await.expect("subscribe");
    b.broker.subscribe(&r).await.expect("subscribe");
    const N: usize = 300;
    let mut tasks = Vec::new();
    for (name, n) in [("a", a.clone()), ("b", b.clone())] {
        tasks.push(tokio::spawn(async move {
            for seq in 0..N {
                publish(
                    &n,
                    Some("conversation:order"),
                    json!({"src": name, "seq": seq}),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.rec.len() == 2 * N && b.rec.len() == 2 * N
        })
        .await,
        "a got {}, b got {}",
        a.rec.len(),
        b.rec.len()
    );
    settle().await;
    let (seen_a, seen_b) = (
        a.rec.payloads("conversation:order"),
        b.rec.payloads("conversation:order"),
    );
    assert_eq!(seen_a.len(), 2 * N, "exactly once on a");
    assert_eq!(
        seen_a, seen_b,
        "both nodes deliver the room's events in the same order"
    );
    for src in ["a", "b"] {
        let seqs: Vec<u64> = seen_a
            .iter()
            .filter(|p| p["src"] == src)
            .map(|p| p["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            seqs,
            (0..N as u64).collect::<Vec<_>>(),
            "publisher {src}'s order is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_ends_the_subscription() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    let r = room("conversation:2");
    let channel = b.broker.room_channel("conversation:2");
    b.broker.subscribe(&r).await.expect("subscribe");
    b.broker
        .subscribe(&r)
        .await
        .expect("subscribing again does nothing");
    assert_eq!(
        numsub(&server, &channel).await,
        1,
        "one subscription per node"
    );
    assert!(b.broker.is_subscribed("conversation:2").await);
    b.broker.unsubscribe(&r).await.expect("unsubscribe");
    assert!(
        eventually(Duration::from_secs(5), || async {
            numsub(&server, &channel).await == 0
        })
        .await,
        "unsubscribed"
    );
    assert_eq!(b.broker.subscribed_rooms().await, 0);
    publish(&a, Some("conversation:2"), json!({"late": true})).await;
    settle().await;
    assert!(
        b.rec.payloads("conversation:2").is_empty(),
        "a node that unsubscribed gets nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_delivers_locally_then_resubscribes() {
    let mut server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    let r = room("conversation:3");
    a.broker.subscribe(&r).await.expect("subscribe");
    b.broker.subscribe(&r).await.expect("subscribe");

    server.stop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !a.broker.ready().await && !b.broker.ready().await
        })
        .await
    );
    let d = Delivery::encode(
        "message:received",
        Some(room("conversation:3")),
        &json!({"during": 1}),
    )
    .expect("encode");
    assert_eq!(
        a.broker.publish(Arc::new(d)).await.expect("publish"),
        Reach::LocalOnly,
        "the publisher is told that only local members got it"
    );
    assert_eq!(
        a.rec.payloads("conversation:3"),
        vec![json!({"during": 1})],
        "local delivery keeps working"
    );
    // A room subscribed during the outage is recorded and subscribed once Redis is back.
    b.broker
        .subscribe(&room("conversation:4"))
        .await
        .expect("subscribe while down");

    server.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.broker.ready().await && b.broker.ready().await
        })
        .await,
        "both nodes are ready again"
    );
    publish(&a, Some("conversation:3"), json!({"after": 1})).await;
    publish(&b, Some("conversation:3"), json!({"after": 2})).await;
    publish(&a, Some("conversation:4"), json!({"after": 3})).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.rec.payloads("conversation:3").len() == 3
                && b.rec.payloads("conversation:3").len() == 2
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.rec.payloads("conversation:4").len() == 1
        })
        .await
    );
    settle().await;
    assert_eq!(
        a.rec.payloads("conversation:3"),
        vec![
            json!({"during": 1}),
            json!({"after": 1}),
            json!({"after": 2})
        ]
    );
    assert_eq!(
        b.rec.payloads("conversation:3"),
        vec![json!({"after": 1}), json!({"after": 2})]
    );
    assert_eq!(b.rec.payloads("conversation:4"), vec![json!({"after": 3})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_catches_up() {
    let mut server = RedisServer::start();
    let cfg = redis_config(&server, false);
    server.stop();
    let rec = Arc::new(Recorder::default());
    let broker = broker(&cfg);
    assert!(
        broker.start(rec.inbox()).await.is_err(),
        "start reports that Redis did not answer"
    );
    assert!(!broker.ready().await);
    broker
        .subscribe(&room("conversation:5"))
        .await
        .expect("subscribe");
    let d = Delivery::encode("e", Some(room("conversation:5")), &json!(1)).expect("encode");
    assert_eq!(
        broker.publish(Arc::new(d)).await.expect("local publish"),
        Reach::LocalOnly,
        "delivered here, and said so"
    );
    assert_eq!(rec.len(), 1);
    server.restart();
    assert!(eventually(Duration::from_secs(10), || async { broker.ready().await }).await);
    let other = node(&cfg).await;
    publish(&other, Some("conversation:5"), json!(2)).await;
    assert!(eventually(Duration::from_secs(5), || async { rec.len() == 2 }).await);
    broker.shutdown().await;
}

async fn channel_count(server: &RedisServer, pattern: &str) -> usize {
    let client = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&server.url()).expect("url"),
    )
    .build()
    .expect("client");
    client.init().await.expect("connect");
    let v: Vec<String> = client
        .pubsub_channels(pattern.to_owned())
        .await
        .expect("channels");
    let _ = client.quit().await;
    v.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_rooms_are_resubscribed_in_batches_after_a_restart() {
    let mut server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    const ROOMS: usize = 3000;
    for i in 0..ROOMS {
        b.broker
            .subscribe(&room(&format!("conversation:m{i}")))
            .await
            .expect("subscribe");
    }
    assert_eq!(b.broker.subscribed_rooms().await, ROOMS);
    assert_eq!(channel_count(&server, "t:room:*").await, ROOMS);

    server.restart();
    assert!(
        eventually(Duration::from_secs(15), || async {
            a.broker.ready().await && b.broker.ready().await
        })
        .await
    );
    assert_eq!(
        channel_count(&server, "t:room:*").await,
        ROOMS,
        "every room with a member is subscribed again"
    );
    for i in (0..ROOMS).step_by(250) {
        publish(&a, Some(&format!("conversation:m{i}")), json!({"i": i})).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.rec.len() == ROOMS.div_ceil(250)
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_unsubscribed_still_publishes_to_the_others() {
    for sharded in [false, true] {
        let server = RedisServer::start();
        let cfg = redis_config(&server, sharded);
        let (a, b) = (node(&cfg).await, node(&cfg).await);
        let r = room("conversation:u");
        b.broker.subscribe(&r).await.expect("subscribe");
        a.broker.subscribe(&r).await.expect("subscribe");
        a.broker.unsubscribe(&r).await.expect("unsubscribe");
        publish(&a, Some("conversation:u"), json!({"n": 1})).await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                b.rec.payloads("conversation:u").len() == 1
            })
            .await,
            "sharded {sharded}: b gets what a published after a unsubscribed"
        );
        assert!(a.rec.payloads("conversation:u").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_redis_list_each_other_until_one_stops() {
    let server = RedisServer::start();
    let cfg = redis_config(&server, false);
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    let (ida, idb) = (a.broker.node_id().to_owned(), b.broker.node_id().to_owned());
    let mut both = vec![ida.clone(), idb.clone()];
    both.sort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.broker.nodes().await.ok() == Some(both.clone())
                && b.broker.nodes().await.ok() == Some(both.clone())
        })
        .await,
        "each node lists both"
    );
    // A node that stops cleanly leaves the list at once.
    b.broker.shutdown().await;
    assert_eq!(a.broker.nodes().await.expect("nodes"), vec![ida.clone()]);
    // A node whose Redis is gone says so rather than answering a list that may be wrong.
    drop(server);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.broker.nodes().await.is_err()
        })
        .await,
        "an error once Redis is gone"
    );
}

/// Runs the control log's script with `args` on `key`.
fn control_log_script(server: &RedisServer, key: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/scripts/control_log.lua");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "--eval", script, key, ","])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An entry id's time (ms).
fn id_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("not an entry id: {id}"))
}

#[tokio::test]
async fn the_control_log_says_up_to_when_it_may_have_dropped_entries() {
    let server = RedisServer::start();
    let add = |key: &str, n: usize, keep_ms: &str| {
        control_log_script(
            &server,
            key,
            &["add", &format!("{{\"n\":{n}}}"), "3", keep_ms, "604800000"],
        )
    };
    let deleted = |key: &str| control_log_script(&server, key, &["deleted"]);
    assert_eq!(deleted("log"), "missing");

    // A new log may only have lost what a log that expired a week before held.
    let first = add("log", 1, "3600000");
    let week = 7 * 24 * 3600 * 1000;
    assert_eq!(id_ms(&deleted("log")), id_ms(&first) - week);

    // Over its length, it drops the oldest entries, and says so.
    let second = add("log", 2, "3600000");
    add("log", 3, "3600000");
    assert_eq!(id_ms(&deleted("log")), id_ms(&first) - week);
    add("log", 4, "3600000");
    assert_eq!(deleted("log"), format!("{}-0", id_ms(&first)));
    add("log", 5, "3600000");
    assert_eq!(deleted("log"), format!("{}-0", id_ms(&second)));
    let kept = control_log_script(&server, "log", &["read", "-", "10"]);
    assert!(
        !kept.contains("\"n\":2") && kept.contains("\"n\":3") && kept.contains("\"n\":5"),
        "{kept}"
    );

    // Past their age, entries go too: the bound moves up to just below the age limit.
    let old = add("aged", 1, "50");
    let passed = eventually(Duration::from_secs(5), || async {
        let t = std::process::Command::new("redis-cli")
            .args(["-p", &server.port().to_string(), "TIME"])
            .output()
            .expect("redis-cli");
        let parts: Vec<u64> = String::from_utf8_lossy(&t.stdout)
            .lines()
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let now_ms =
            parts.first().copied().unwrap_or(0) * 1000 + parts.get(1).copied().unwrap_or(0) / 1000;
        now_ms > id_ms(&old) + 50
    })
    .await;
    assert!(passed, "the server's clock did not move");
    let new = add("aged", 2, "50");
    let bound = id_ms(&deleted("aged"));
    assert!(
        bound >= id_ms(&old) && bound < id_ms(&new) - 50,
        "deleted up to {bound}: old {old}, new {new}"
    );
    let kept = control_log_script(&server, "aged", &["read", "-", "10"]);
    assert!(
        !kept.contains("\"n\":1") && kept.contains("\"n\":2"),
        "{kept}"
    );
}
