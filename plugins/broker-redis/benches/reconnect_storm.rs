//! The reconnect storm, measured: a node with `ROOMS` rooms (20,000 by default) with local
//! members loses Redis (a restart, empty) and gets it back. Reported, for plain and sharded
//! pub/sub: how long until the node is ready again with every room subscribed, how long
//! until every room delivers (one publish per room from another node, all received), and
//! how many Redis commands the resubscription took (`INFO commandstats` of the restarted
//! server, which counts only what came after the restart).
//!
//! Run by hand (it takes a minute): `cargo bench -p switchboard-broker-redis --bench
//! reconnect_storm`, `ROOMS=50000` for another size.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_broker_redis::{RedisBroker, RedisBrokerConfig};
use switchboard_core::config::RedisConfig;
use switchboard_core::{Delivery, Inbox, Room, RoomBroker};
use switchboard_testkit::RedisServer;

fn commandstats(server: &RedisServer) -> BTreeMap<String, u64> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.trim().parse().ok()?))
        })
        .collect()
}

async fn run(rooms: usize, sharded: bool) {
    let mut server = RedisServer::start();
    let redis = RedisConfig {
        url: server.url(),
        key_prefix: "storm:".to_owned(),
        sharded_pubsub: Some(sharded),
        ..RedisConfig::default()
    };
    let cfg = RedisBrokerConfig {
        reconnect_max_delay: switchboard_core::Dur::millis(200),
        ..RedisBrokerConfig::default()
    };
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let node = RedisBroker::new(&redis, &cfg, "storm-node").expect("broker");
    node.start(Inbox::from_fn(move |_: &Delivery| {
        counter.fetch_add(1, Ordering::Relaxed);
    }))
    .await
    .expect("start");
    let publisher = RedisBroker::new(&redis, &cfg, "storm-publisher").expect("broker");
    publisher
        .start(Inbox::from_fn(|_: &Delivery| {}))
        .await
        .expect("start");
    let names: Vec<String> = (0..rooms).map(|i| format!("conversation:{i}")).collect();
    for r in &names {
        node.subscribe(&Room::from(r.as_str()))
            .await
            .expect("subscribe");
    }

    server.restart();
    let lost = Instant::now();
    while !(node.ready().await && publisher.ready().await) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = lost.elapsed();
    let stats = commandstats(&server);
    let (subscribe, calls) = if sharded {
        ("ssubscribe", stats.get("ssubscribe").copied().unwrap_or(0))
    } else {
        ("subscribe", stats.get("subscribe").copied().unwrap_or(0))
    };
    let total: u64 = stats.values().sum();

    let payload = serde_json::json!({"n": 1});
    let started = Instant::now();
    let publisher = Arc::new(publisher);
    let mut tasks = Vec::new();
    for chunk in names.chunks(rooms.div_ceil(64).max(1)) {
        let (publisher, chunk, payload) = (publisher.clone(), chunk.to_vec(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for r in chunk {
                let d = Delivery::encode("message:status", Some(Room::from(r.as_str())), &payload)
                    .expect("encode");
                let _ = publisher.publish(Arc::new(d)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < rooms && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivering = lost.elapsed();
    let publishing = started.elapsed();
    println!(
        "| {} | {rooms} | {:.0} ms | {:.0} ms ({:.0} ms of it publishing one event per room) | {calls} `{}` | {total} | {} of {rooms} |",
        if sharded { "sharded" } else { "plain" },
        ready.as_secs_f64() * 1000.0,
        delivering.as_secs_f64() * 1000.0,
        publishing.as_secs_f64() * 1000.0,
        subscribe.to_uppercase(),
        received.load(Ordering::Relaxed),
    );
    node.shutdown().await;
    publisher.shutdown().await;
}

fn main() {
    let rooms: usize = std::env::var("ROOMS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| pub/sub | rooms | ready again | every room delivering | subscribe commands | all commands after the restart | events received |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for sharded in [false, true] {
        rt.block_on(run(rooms, sharded));
    }
}
