//! The Redis presence store against a real `redis-server`: several stores stand for
//! several nodes sharing one Redis.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::config::RedisConfig;
use switchboard_core::{ConnId, Dur, PresenceChange, PresenceStore};
use switchboard_presence_redis::{RedisPresence, RedisPresenceConfig};
use switchboard_testkit::{RedisServer, eventually};
use tokio::sync::mpsc;

struct Node {
    store: Arc<RedisPresence>,
    events: mpsc::UnboundedReceiver<PresenceChange>,
}

impl Node {
    /// Every change reported so far.
    fn drain(&mut self) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        while let Ok(c) = self.events.try_recv() {
            out.push(c);
        }
        out
    }
}

fn redis_config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        key_prefix: "t:".to_owned(),
        sharded_pubsub: None,
        ..RedisConfig::default()
    }
}

fn cfg() -> RedisPresenceConfig {
    RedisPresenceConfig {
        reconnect_max_delay: Dur::millis(300),
        ..RedisPresenceConfig::default()
    }
}

async fn node(server: &RedisServer, ttl: Duration) -> Node {
    let store = Arc::new(
        RedisPresence::new(&redis_config(server), &cfg(), ttl, random_id()).expect("store"),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    store.start(tx).await.expect("starts with Redis up");
    assert!(store.ready().await);
    Node { store, events: rx }
}

fn random_id() -> String {
    switchboard_core::registry::random_id()
}

fn c(id: &str) -> ConnId {
    ConnId::new(id)
}

fn offline(user: &str) -> PresenceChange {
    PresenceChange::Offline(user.to_owned())
}

fn online(user: &str, conn: &str) -> PresenceChange {
    PresenceChange::Online {
        user: user.to_owned(),
        conn: c(conn),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_and_last_connection_anywhere() {
    let server = RedisServer::start();
    let (a, b) = (
        node(&server, Duration::from_secs(10)).await,
        node(&server, Duration::from_secs(10)).await,
    );
    let (a, b) = (&a.store, &b.store);
    assert!(
        a.connect("u", &c("a1")).await.expect("connect"),
        "first anywhere"
    );
    assert!(
        !b.connect("u", &c("b1")).await.expect("connect"),
        "second, on another node"
    );
    assert!(!a.connect("u", &c("a2")).await.expect("connect"));
    assert_eq!(b.connections("u").await.expect("count"), 3);
    assert_eq!(b.online_users().await.expect("users"), vec!["u".to_owned()]);
    assert!(!a.disconnect("u", &c("a1")).await.expect("disconnect"));
    assert!(
        !a.disconnect("u", &c("a1")).await.expect("twice"),
        "a repeated disconnect is not a last one"
    );
    assert!(!a.disconnect("u", &c("a2")).await.expect("disconnect"));
    assert!(
        b.disconnect("u", &c("b1")).await.expect("disconnect"),
        "the last one anywhere"
    );
    assert_eq!(a.connections("u").await.expect("count"), 0);
    assert!(a.online_users().await.expect("users").is_empty());
    assert!(!a.disconnect("nobody", &c("zz")).await.expect("unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_report_one_first_and_one_last() {
    let server = RedisServer::start();
    let (a, b) = (
        node(&server, Duration::from_secs(10)).await,
        node(&server, Duration::from_secs(10)).await,
    );
    let stores = [a.store.clone(), b.store.clone()];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            s.connect("racer", &c(&format!("c{i}")))
                .await
                .expect("connect")
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        firsts += usize::from(t.await.expect("task"));
    }
    assert_eq!(firsts, 1, "exactly one connection is the first");
    assert_eq!(a.store.connections("racer").await.expect("count"), 40);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            s.disconnect("racer", &c(&format!("c{i}")))
                .await
                .expect("disconnect")
        }));
    }
    let mut lasts = 0;
    for t in tasks {
        lasts += usize::from(t.await.expect("task"));
    }
    assert_eq!(lasts, 1, "exactly one disconnect is the last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_swept_once_within_the_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let dead = node(&server, ttl).await;
    let (mut b, mut c3) = (node(&server, ttl).await, node(&server, ttl).await);
    assert!(
        dead.store
            .connect("only-on-dead", &c("d1"))
            .await
            .expect("connect")
    );
    assert!(
        dead.store
            .connect("also-on-b", &c("d2"))
            .await
            .expect("connect")
    );
    assert!(
        !b.store
            .connect("also-on-b", &c("b1"))
            .await
            .expect("connect")
    );
    let started = std::time::Instant::now();
    dead.store.halt();

    let swept = eventually(Duration::from_secs(5), || async {
        b.store.connections("only-on-dead").await.expect("count") == 0
    })
    .await;
    assert!(swept, "the dead node's connections are swept");
    let took = started.elapsed();
    assert!(took < ttl * 3, "swept after {took:?} (ttl {ttl:?})");
    tokio::time::sleep(ttl).await;
    let mut changes = b.drain();
    changes.extend(c3.drain());
    assert_eq!(
        changes,
        vec![offline("only-on-dead")],
        "one sweeper reports the user, once"
    );
    assert_eq!(b.store.connections("also-on-b").await.expect("count"), 1);
    assert_eq!(
        b.store.online_users().await.expect("users"),
        vec!["also-on-b".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_followed_by_re_registration_announcing_only_new_users() {
    let mut server = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let (mut a, mut b) = (node(&server, ttl).await, node(&server, ttl).await);
    assert!(a.store.connect("u1", &c("a1")).await.expect("connect"));
    assert!(!b.store.connect("u1", &c("b1")).await.expect("connect"));
    assert!(b.store.connect("u2", &c("b2")).await.expect("connect"));

    server.stop();
    assert!(eventually(Duration::from_secs(5), || async { !a.store.ready().await }).await);
    assert!(
        a.store.connect("u3", &c("a3")).await.is_err(),
        "calls fail while Redis is down"
    );
    assert!(a.store.connect("u3", &c("a5")).await.is_err());
    assert!(a.store.connect("u1", &c("a6")).await.is_err());
    server.restart();

    let back = eventually(Duration::from_secs(10), || async {
        a.store.ready().await
            && b.store.ready().await
            && a.store.connections("u1").await.unwrap_or(0) == 3
            && a.store.connections("u2").await.unwrap_or(0) == 1
    })
    .await;
    assert!(back, "both nodes registered their live connections again");
    let mut users = a.store.online_users().await.expect("users");
    users.sort();
    assert_eq!(
        users,
        vec!["u1".to_owned(), "u2".to_owned(), "u3".to_owned()],
        "u3's connection made during the outage is registered"
    );
    assert!(
        !a.store.connect("u1", &c("a4")).await.expect("connect"),
        "u1 never went offline"
    );
    assert_eq!(a.store.connections("u3").await.expect("count"), 2);
    tokio::time::sleep(ttl).await;
    let changes = a.drain();
    assert!(
        changes == vec![online("u3", "a3")] || changes == vec![online("u3", "a5")],
        "u3, first seen during the outage, is reported online once; u1 (online before, \
         on this node) is not; nobody is reported offline: {changes:?}"
    );
    assert_eq!(b.drain(), vec![], "node b owed no announcement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_during_an_outage_is_reported_once_redis_is_back() {
    let mut server = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let (mut a, mut b) = (node(&server, ttl).await, node(&server, ttl).await);
    assert!(a.store.connect("leaver", &c("a1")).await.expect("connect"));
    assert!(a.store.connect("stayer", &c("a2")).await.expect("connect"));
    assert!(!b.store.connect("stayer", &c("b2")).await.expect("connect"));

    server.stop();
    assert!(eventually(Duration::from_secs(5), || async { !a.store.ready().await }).await);
    assert!(a.store.disconnect("leaver", &c("a1")).await.is_err());
    assert!(b.store.disconnect("stayer", &c("b2")).await.is_err());
    server.restart();

    let reported = eventually(Duration::from_secs(10), || async {
        // Drained into the vector below once it arrives.
        !a.events.is_empty() || !b.events.is_empty()
    })
    .await;
    assert!(
        reported,
        "the user who left during the outage is reported offline"
    );
    tokio::time::sleep(ttl * 2).await;
    let mut changes = a.drain();
    changes.extend(b.drain());
    assert_eq!(
        changes,
        vec![offline("leaver")],
        "only the user without connections, once"
    );
    assert_eq!(a.store.connections("stayer").await.expect("count"), 1);
    assert_eq!(
        a.store.online_users().await.expect("users"),
        vec!["stayer".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_withdraws_the_node() {
    let server = RedisServer::start();
    let (a, b) = (
        node(&server, Duration::from_secs(10)).await,
        node(&server, Duration::from_secs(10)).await,
    );
    assert!(a.store.connect("u", &c("a1")).await.expect("connect"));
    assert!(!b.store.connect("u", &c("b1")).await.expect("connect"));
    a.store.shutdown().await;
    assert_eq!(
        b.store.connections("u").await.expect("count"),
        1,
        "no sweep needed: withdrawn at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_and_registers_later() {
    let mut server = RedisServer::start();
    server.stop();
    let store = RedisPresence::new(
        &redis_config(&server),
        &cfg(),
        Duration::from_secs(1),
        random_id(),
    )
    .expect("store");
    let (tx, mut rx) = mpsc::unbounded_channel();
    assert!(
        store.start(tx).await.is_err(),
        "start reports that Redis did not answer"
    );
    assert!(!store.ready().await);
    assert!(store.connect("early", &c("e1")).await.is_err());
    assert!(store.connect("gone", &c("g1")).await.is_err());
    assert!(store.disconnect("gone", &c("g1")).await.is_err());
    server.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.ready().await && store.connections("early").await.unwrap_or(0) == 1
        })
        .await
    );
    let mut changes = Vec::new();
    while let Ok(change) = rx.try_recv() {
        changes.push(change);
    }
    assert_eq!(
        changes,
        vec![online("early", "e1")],
        "the connection made before Redis answered is announced once registered; the one \
         that closed meanwhile is not"
    );
}
