//! The Redis broker on a real Redis Cluster (three masters, three replicas): rooms on
//! sharded pub/sub spread over the shards by slot, history streams on each room's shard,
//! nothing left subscribed once rooms empty; and, on a cluster of its own, a master killed
//! with SIGKILL (its replica promoted) and a slot moved to another master while rooms are
//! subscribed: delivery resumes, nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use switchboard_broker_redis::{RedisBroker, RedisBrokerConfig};
use switchboard_core::config::RedisConfig;
use switchboard_core::{Delivery, Inbox, Reach, Room, RoomBroker};
use switchboard_testkit::{RedisCluster, eventually};

/// What a node's inbox was handed, in order: (room, payload).
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Option<String>, Value)>>,
}

impl Recorder {
    fn payloads(&self, room: &str) -> Vec<Value> {
        self.seen
            .lock()
            .iter()
            .filter(|(r, _)| r.as_deref() == Some(room))
            .map(|(_, p)| p.clone())
            .collect()
    }
    fn broadcasts(&self) -> usize {
        self.seen.lock().iter().filter(|(r, _)| r.is_none()).count()
    }
    fn inbox(self: &Arc<Self>) -> Inbox {
        let me = self.clone();
        Inbox::from_fn(move |d: &Delivery| {
            let payload: Value = serde_json::from_str(d.payload.get()).expect("payload is JSON");
            me.seen
                .lock()
                .push((d.room.as_deref().map(str::to_owned), payload));
        })
    }
}

struct TestNode {
    broker: RedisBroker,
    rec: Arc<Recorder>,
}

/// A key prefix of this test's own, so tests sharing the cluster never meet.
fn prefix() -> String {
    format!("c{}:", switchboard_core::registry::random_id())
}

fn redis_config(cluster: &RedisCluster, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: cluster.url(),
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

async fn node(redis: &RedisConfig) -> TestNode {
    let rec = Arc::new(Recorder::default());
    let cfg = RedisBrokerConfig {
        reconnect_max_delay: switchboard_core::Dur::millis(500),
        ..RedisBrokerConfig::default()
    };
    let broker =
        RedisBroker::new(redis, &cfg, switchboard_core::registry::random_id()).expect("broker");
    broker
        .start(rec.inbox())
        .await
        .expect("broker starts with the cluster up");
    assert!(broker.ready().await);
    TestNode { broker, rec }
}

fn delivery(room: Option<&str>, payload: &Value) -> Arc<Delivery> {
    Arc::new(Delivery::encode("message:received", room.map(Room::from), payload).expect("encode"))
}

/// The shard channels under `prefix` each master has subscribers for, by master port.
fn shard_channels(cluster: &RedisCluster, prefix: &str) -> BTreeMap<u16, BTreeSet<String>> {
    cluster
        .masters()
        .into_iter()
        .map(|port| {
            let out = cluster
                .cli(port, &["pubsub", "shardchannels", &format!("{prefix}*")])
                .unwrap_or_default();
            let channels = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            (port, channels)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_cross_nodes_sharded_by_slot_and_leave_nothing_subscribed() {
    let cluster = RedisCluster::shared();
    let prefix = prefix();
    let cfg = redis_config(cluster, &prefix);
    assert!(cfg.sharded(), "a Redis Cluster URL means sharded pub/sub");
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    const ROOMS: usize = 40;
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("conversation:{i}")).collect();
    for r in &rooms {
        b.broker
            .subscribe(&Room::from(r.as_str()))
            .await
            .expect("subscribe");
    }
    // Every room's channel is subscribed on the master that serves its slot, and the
    // rooms spread over the masters.
    let by_master = shard_channels(cluster, &prefix);
    let holding: Vec<_> = by_master.values().filter(|c| !c.is_empty()).collect();
    assert!(holding.len() >= 2, "rooms on one shard only: {by_master:?}");
    for r in &rooms {
        let channel = b.broker.room_channel(r);
        let master = cluster.master_of(&channel).expect("a master for the slot");
        assert!(
            by_master.get(&master).is_some_and(|c| c.contains(&channel)),
            "{channel} not subscribed on its master {master}: {by_master:?}"
        );
    }

    // Kept (history) and plain publishes, and a namespace-wide one.
    for seq in 0..5 {
        for r in &rooms {
            let d = delivery(Some(r), &json!({"seq": seq}));
            let (reach, position) = if seq % 2 == 0 {
                a.broker.publish_kept(d).await.expect("publish kept")
            } else {
                (a.broker.publish(d).await.expect("publish"), None)
            };
            assert_eq!(reach, Reach::Cluster);
            assert_eq!(
                position.is_some(),
                seq % 2 == 0,
                "kept events get a position"
            );
        }
    }
    let _ = a.broker.publish(delivery(None, &json!({"all": 1}))).await;
    let done = eventually(Duration::from_secs(10), || async {
        rooms.iter().all(|r| b.rec.payloads(r).len() == 5) && b.rec.broadcasts() == 1
    })
    .await;
    assert!(done, "not every event arrived");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in &rooms {
        let seqs: Vec<u64> = b
            .rec
            .payloads(r)
            .iter()
            .map(|p| p["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4], "{r}: once each, in order");
    }
    assert_eq!(b.rec.broadcasts(), 1);

    // Every room emptied: no shard channel of this test is left on any master.
    for r in &rooms {
        b.broker
            .unsubscribe(&Room::from(r.as_str()))
            .await
            .expect("unsubscribe");
    }
    let rooms_left = || {
        shard_channels(cluster, &format!("{prefix}room:"))
            .values()
            .map(BTreeSet::len)
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(5), || async { rooms_left() == 0 }).await,
        "subscriptions left: {:?}",
        shard_channels(cluster, &format!("{prefix}room:"))
    );
    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lives_on_the_room_s_shard_whatever_the_room_is_called() {
    let cluster = RedisCluster::shared();
    let prefix = prefix();
    let cfg = redis_config(cluster, &prefix);
    let a = node(&cfg).await;
    // Braces in a room name would give its channel a hash tag of its own; the broker's
    // channel names never carry one, so the room's keys stay in the channel's slot.
    for name in [
        "conversation:{7}",
        "session:a}b{c",
        "conversation:100%",
        "conversation:plain",
    ] {
        let room = Room::from(name);
        let mut last = None;
        for n in 0..10 {
            let (reach, position) = a
                .broker
                .publish_kept(delivery(Some(name), &json!({"n": n})))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(reach, Reach::Cluster, "{name}");
            last = position;
        }
        let last = last.expect("a position");
        assert_eq!(last.n, 10, "{name}");
        let history = a.broker.history(&room, None, 100).await.expect("history");
        let ns: Vec<u64> = history
            .events
            .iter()
            .filter_map(|d| d.position.as_ref().map(|p| p.n))
            .collect();
        assert_eq!(ns, (1..=10).collect::<Vec<_>>(), "{name}");
        assert!(history.complete, "{name}");
        let channel = a.broker.room_channel(name);
        assert!(!channel[prefix.len()..].contains(['{', '}']), "{channel}");
        let master = cluster.master_of(&channel).expect("master");
        let stream = format!("{{{channel}}}:h");
        assert_eq!(
            cluster
                .cli(master, &["exists", &stream])
                .as_deref()
                .map(str::trim),
            Some("1"),
            "{name}: the stream lives on the channel's master"
        );
    }
    a.broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_and_ask_each_other_across_the_cluster() {
    let cluster = RedisCluster::shared();
    let cfg = redis_config(cluster, &prefix());
    let (a, b) = (node(&cfg).await, node(&cfg).await);
    let mut both = vec![a.broker.node_id().to_owned(), b.broker.node_id().to_owned()];
    both.sort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.broker.nodes().await.ok() == Some(both.clone())
        })
        .await
    );
    // A recording inbox answers requests with null; the answer still has to come back.
    let answer = a
        .broker
        .ask(
            b.broker.node_id(),
            json!({"ping": 1}),
            Duration::from_secs(3),
        )
        .await
        .expect("an answer across the cluster");
    assert_eq!(answer, Value::Null);
    let gone = a
        .broker
        .ask("no-such-node", json!({}), Duration::from_secs(1))
        .await;
    assert!(gone.is_err(), "a node nobody runs is an error: {gone:?}");
    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

/// Publishes `{seq}` to `room` from `from` every 20 ms until stopped; returns the task and
/// the stop switch.
fn steady_publisher(
    from: Arc<TestNode>,
    room: &str,
) -> (
    tokio::task::JoinHandle<u64>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let room = room.to_owned();
    let task = tokio::spawn(async move {
        let mut seq = 0u64;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = from
                .broker
                .publish(delivery(Some(&room), &json!({"seq": seq})))
                .await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seq
    });
    (task, stop)
}

/// The sequence numbers `rec` got for `room`, and whether any came twice.
fn seqs(rec: &Recorder, room: &str) -> (Vec<u64>, bool) {
    let seqs: Vec<u64> = rec
        .payloads(room)
        .iter()
        .filter_map(|p| p["seq"].as_u64())
        .collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    let repeated = unique.len() != seqs.len();
    (seqs, repeated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_fails_over_and_delivery_resumes_without_repeats() {
    let mut cluster = RedisCluster::start();
    let cfg = redis_config(&cluster, &prefix());
    let (a, b) = (Arc::new(node(&cfg).await), node(&cfg).await);
    let room = "conversation:failover";
    b.broker
        .subscribe(&Room::from(room))
        .await
        .expect("subscribe");
    let channel = b.broker.room_channel(room);
    let victim = cluster.master_of(&channel).expect("the room's master");
    let (publisher, stop) = steady_publisher(a.clone(), room);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !b.rec.payloads(room).is_empty()
        })
        .await
    );

    let killed = Instant::now();
    let before = seqs(&b.rec, room).0.last().copied().unwrap_or(0);
    cluster.kill(victim);
    // Delivery resumes once the replica is promoted and the nodes resubscribed.
    let resumed = eventually(Duration::from_secs(30), || async {
        seqs(&b.rec, room).0.last().copied().unwrap_or(0) > before + 5
    })
    .await;
    let took = killed.elapsed();
    assert!(resumed, "delivery did not resume after the failover");
    assert_ne!(
        cluster.master_of(&channel),
        Some(victim),
        "a replica took over"
    );
    println!("failover: delivery resumed {took:?} after the master was killed");
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.broker.ready().await && b.broker.ready().await
        })
        .await,
        "both nodes ready again"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, repeated) = seqs(&b.rec, room);
    assert!(!repeated, "an event arrived twice: {got:?}");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "publisher order kept: {got:?}"
    );
    println!(
        "failover: {} of {published} events published during the run arrived",
        got.len()
    );

    // The killed master comes back as a replica; the cluster is whole again.
    cluster.restart(victim);
    assert!(cluster.wait_ok(Duration::from_secs(30)));
}

/// The id of the node on `port`.
fn node_id(cluster: &RedisCluster, port: u16) -> String {
    cluster
        .cli(port, &["cluster", "myid"])
        .expect("cluster myid")
        .trim()
        .to_owned()
}

/// Moves `slot` (and its keys) from master `from` to master `to`, as resharding does.
fn move_slot(cluster: &RedisCluster, slot: u16, from: u16, to: u16) {
    let (from_id, to_id) = (node_id(cluster, from), node_id(cluster, to));
    let slot = slot.to_string();
    cluster
        .cli(to, &["cluster", "setslot", &slot, "importing", &from_id])
        .expect("importing");
    cluster
        .cli(from, &["cluster", "setslot", &slot, "migrating", &to_id])
        .expect("migrating");
    loop {
        let keys = cluster
            .cli(from, &["cluster", "getkeysinslot", &slot, "100"])
            .unwrap_or_default();
        let keys: Vec<&str> = keys
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            break;
        }
        let to_port = to.to_string();
        let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "keys"];
        args.extend(keys.iter().copied());
        cluster.cli(from, &args).expect("migrate");
    }
    for port in cluster.masters() {
        cluster
            .cli(port, &["cluster", "setslot", &slot, "node", &to_id])
            .expect("setslot node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_master_is_subscribed_where_it_lives_now() {
    let cluster = RedisCluster::start();
    let cfg = redis_config(&cluster, &prefix());
    let (a, b) = (Arc::new(node(&cfg).await), node(&cfg).await);
    let room = "conversation:resharded";
    b.broker
        .subscribe(&Room::from(room))
        .await
        .expect("subscribe");
    let channel = b.broker.room_channel(room);
    let from = cluster.master_of(&channel).expect("master");
    let to = cluster
        .masters()
        .into_iter()
        .find(|&p| p != from)
        .expect("another master");
    let slot: u16 = cluster
        .cli(from, &["cluster", "keyslot", &channel])
        .expect("keyslot")
        .trim()
        .parse()
        .expect("a slot");
    let (publisher, stop) = steady_publisher(a.clone(), room);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !b.rec.payloads(room).is_empty()
        })
        .await
    );

    let moved = Instant::now();
    move_slot(&cluster, slot, from, to);
    assert_eq!(cluster.master_of(&channel), Some(to));
    let before = seqs(&b.rec, room).0.last().copied().unwrap_or(0);
    let resumed = eventually(Duration::from_secs(20), || async {
        seqs(&b.rec, room).0.last().copied().unwrap_or(0) > before + 5
    })
    .await;
    assert!(resumed, "delivery did not resume after the slot moved");
    println!(
        "reshard: delivery resumed {:?} after the slot moved",
        moved.elapsed()
    );
    let on_new = cluster
        .cli(to, &["pubsub", "shardchannels", &channel])
        .unwrap_or_default();
    assert!(on_new.contains(&channel), "subscribed on the new master");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = publisher.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (got, repeated) = seqs(&b.rec, room);
    assert!(!repeated, "an event arrived twice: {got:?}");
}
