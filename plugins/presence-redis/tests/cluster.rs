//! The Redis presence store on a real Redis Cluster: every key and script in one slot (the
//! `{presence}` hash tag), first and last connection across nodes, a dead node swept; and,
//! on a cluster of its own, the master serving presence killed with SIGKILL: once its
//! replica is promoted, every node's connections are counted again and no user is reported
//! online or offline by mistake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_core::config::RedisConfig;
use switchboard_core::{ConnId, Dur, PresenceChange, PresenceStore};
use switchboard_presence_redis::{RedisPresence, RedisPresenceConfig};
use switchboard_testkit::{RedisCluster, eventually};
use tokio::sync::mpsc;

struct Node {
    store: Arc<RedisPresence>,
    events: mpsc::UnboundedReceiver<PresenceChange>,
}

impl Node {
    fn drain(&mut self) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        while let Ok(c) = self.events.try_recv() {
            out.push(c);
        }
        out
    }
}

fn redis_config(cluster: &RedisCluster, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: cluster.url(),
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

async fn node(redis: &RedisConfig, ttl: Duration) -> Node {
    let cfg = RedisPresenceConfig {
        reconnect_max_delay: Dur::millis(500),
        ..RedisPresenceConfig::default()
    };
    let store = Arc::new(
        RedisPresence::new(redis, &cfg, ttl, switchboard_core::registry::random_id())
            .expect("store"),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    store.start(tx).await.expect("starts with the cluster up");
    assert!(store.ready().await);
    Node { store, events: rx }
}

fn prefix() -> String {
    format!("p{}:", switchboard_core::registry::random_id())
}

fn c(id: &str) -> ConnId {
    ConnId::new(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_on_a_cluster_from_one_slot() {
    let cluster = RedisCluster::shared();
    let prefix = prefix();
    let cfg = redis_config(cluster, &prefix);
    let (a, b) = (
        node(&cfg, Duration::from_secs(10)).await,
        node(&cfg, Duration::from_secs(10)).await,
    );
    assert!(a.store.connect("u1", &c("a1")).await.expect("connect"));
    assert!(!b.store.connect("u1", &c("b1")).await.expect("connect"));
    assert!(b.store.connect("u2", &c("b2")).await.expect("connect"));
    assert_eq!(a.store.connections("u1").await.expect("count"), 2);
    let mut users = a.store.online_users().await.expect("users");
    users.sort();
    assert_eq!(users, vec!["u1".to_owned(), "u2".to_owned()]);
    // Every presence key of this test lives on one master (scripts touch several at once).
    let holders: Vec<u16> = cluster
        .masters()
        .into_iter()
        .filter(|&port| {
            cluster
                .cli(port, &["keys", &format!("{prefix}*")])
                .is_some_and(|out| out.lines().any(|l| !l.trim().is_empty()))
        })
        .collect();
    assert_eq!(holders.len(), 1, "presence keys on masters {holders:?}");
    assert!(
        !a.store
            .disconnect("u1", &c("a1"))
            .await
            .expect("disconnect")
    );
    assert!(
        b.store
            .disconnect("u1", &c("b1"))
            .await
            .expect("disconnect"),
        "the last one"
    );
    a.store.shutdown().await;
    b.store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_swept_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let cfg = redis_config(cluster, &prefix());
    let ttl = Duration::from_millis(1500);
    let (mut a, b) = (node(&cfg, ttl).await, node(&cfg, ttl).await);
    assert!(b.store.connect("gone", &c("b1")).await.expect("connect"));
    // b dies without a word: its heartbeat stops, its keys stay until swept.
    b.store.halt();
    let swept = eventually(Duration::from_secs(10), || {
        let store = a.store.clone();
        async move { store.connections("gone").await.ok() == Some(0) }
    })
    .await;
    assert!(swept, "the dead node's connection is swept");
    let mut changes = Vec::new();
    let reported = eventually(Duration::from_secs(3), || {
        changes.extend(a.drain());
        let done = changes.contains(&PresenceChange::Offline("gone".to_owned()));
        async move { done }
    })
    .await;
    assert!(reported, "and its user reported offline: {changes:?}");
    a.store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_a_failover_of_its_master() {
    let mut cluster = RedisCluster::start();
    let prefix = prefix();
    let cfg = redis_config(&cluster, &prefix);
    let (mut a, mut b) = (
        node(&cfg, Duration::from_secs(5)).await,
        node(&cfg, Duration::from_secs(5)).await,
    );
    for i in 0..20 {
        assert!(
            a.store
                .connect(&format!("ua{i}"), &c(&format!("a{i}")))
                .await
                .expect("connect")
        );
        assert!(
            b.store
                .connect(&format!("ub{i}"), &c(&format!("b{i}")))
                .await
                .expect("connect")
        );
    }
    assert!(
        !b.store
            .connect("ua0", &c("b-shared"))
            .await
            .expect("connect")
    );
    let _ = (a.drain(), b.drain());

    let victim = cluster
        .master_of(&format!("{prefix}{{presence}}:online"))
        .expect("presence's master");
    let killed = Instant::now();
    cluster.kill(victim);
    // A user connects during the failover: if Redis could not take it, the store owes
    // its `user:online` and reports it once Redis answers again; either way exactly once.
    let first_now = a.store.connect("late", &c("a-late")).await;
    // Calls fail while the slot has no master, then work again on the promoted replica.
    let answering = eventually(Duration::from_secs(30), || {
        let store = a.store.clone();
        async move { store.connections("ua0").await.is_ok() }
    })
    .await;
    assert!(answering, "presence answers again after the failover");
    println!(
        "presence failover: answering again {:?} after the master was killed",
        killed.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.store.ready().await && b.store.ready().await
        })
        .await
    );
    let late_online = PresenceChange::Online {
        user: "late".to_owned(),
        conn: c("a-late"),
    };
    let mut changes = Vec::new();
    if !matches!(first_now, Ok(true)) {
        let owed = eventually(Duration::from_secs(10), || {
            changes.extend(a.drain());
            let got = changes.contains(&late_online);
            async move { got }
        })
        .await;
        assert!(
            owed,
            "the owed user:online is reported: {first_now:?}, {changes:?}"
        );
    }
    changes.retain(|ch| *ch != late_online);
    // Every connection counts again, whatever the replica had not received yet.
    let whole = eventually(Duration::from_secs(10), || {
        let store = a.store.clone();
        async move {
            store.online_users().await.map(|u| u.len()).ok() == Some(41)
                && store.connections("ua0").await.ok() == Some(2)
        }
    })
    .await;
    assert!(whole, "presence intact: {:?}", a.store.online_users().await);
    // Nobody went offline or came online: the same connections are live.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spurious: Vec<_> = changes
        .into_iter()
        .chain(a.drain())
        .chain(b.drain())
        .collect();
    assert!(spurious.is_empty(), "no presence change: {spurious:?}");
    // And it keeps working.
    assert!(
        a.store
            .disconnect("ua1", &c("a1"))
            .await
            .expect("disconnect")
    );
    cluster.restart(victim);
    assert!(cluster.wait_ok(Duration::from_secs(30)));
}
