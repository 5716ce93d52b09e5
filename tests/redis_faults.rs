//! Faults between the nodes and Redis, put there by a TCP proxy per node
//! (`switchboard_testkit::FaultProxy`): added latency, a partition longer than
//! `presence.node_ttl`, connection resets under load, and half-open links. Under each, the
//! invariants a chat depends on:
//! - every member gets each event at most once, and each publisher's events in the order
//!   they were published; once the fault is over, every event reaches every member;
//! - presence tells the truth once the link heals: nobody online who left, nobody offline
//!   who stayed;
//! - `/readyz` answers 503 on the node that lost Redis while the fault lasts, 200 elsewhere;
//! - once every socket has gone, no room subscription and no presence key is left;
//! - a control call answered while a node was cut off (so not asked) holds there too once
//!   it is back, before that node delivers any room's events again; when the control log
//!   lost such a call, the node closes every socket it holds, to start afresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use switchboard::Session;
use switchboard_testkit::{Fault, FaultProxy, RedisServer, eventually};

mod support;
use support::{Sock, TestNode};

const SECRET: &str = "faults-test-secret-0123456789-abcdefghij";
const NODE_TTL: Duration = Duration::from_secs(2);

/// The message ids of the `message:status` events `sock` received, in order.
fn ids(sock: &Sock) -> Vec<String> {
    sock.got("message:status")
        .iter()
        .filter_map(|v| v["messageId"].as_str().map(str::to_owned))
        .collect()
}

/// The last presence event `sock` got about `user`: `Some(true)` online, `Some(false)`
/// offline.
fn last_presence(sock: &Sock, user: &str) -> Option<bool> {
    sock.sent
        .lock()
        .iter()
        .rev()
        .find(|(e, v)| (e == "user:online" || e == "user:offline") && v["userId"] == user)
        .map(|(e, _)| e == "user:online")
}

fn node_toml(port: u16, prefix: &str) -> String {
    format!(
        "[auth.jwt]\nsecret = \"{SECRET}\"\n[api]\nkeys = [\"k\"]\n\
         [limits]\nevents_per_second = 100000\nburst = 100000\nmax_connections_per_user = 0\n\
         [presence]\nplugin = \"redis\"\nnode_ttl = \"{}ms\"\n\
         [presence.redis]\ncommand_timeout = \"500ms\"\nreconnect_max_delay = \"300ms\"\n\
         [broker]\nplugin = \"redis\"\n\
         [broker.redis]\ncommand_timeout = \"500ms\"\nreconnect_max_delay = \"300ms\"\n\
         [redis]\nurl = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"{prefix}\"\n",
        NODE_TTL.as_millis()
    )
}

async fn start_node(port: u16, prefix: &str) -> TestNode {
    TestNode::start(&node_toml(port, prefix)).await
}

async fn is_online(n: &TestNode, user: &str) -> Option<bool> {
    let (_, v) = n
        .call("GET", &format!("/api/v1/presence/{user}"), None)
        .await;
    v["online"].as_bool()
}

/// A Redis, two nodes each reaching it through a proxy of its own.
struct Net {
    redis: RedisServer,
    pa: FaultProxy,
    pb: FaultProxy,
    a: TestNode,
    b: TestNode,
    prefix: String,
}

async fn net() -> Net {
    let redis = RedisServer::start();
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], redis.port()));
    let (pa, pb) = (
        FaultProxy::start(upstream).await,
        FaultProxy::start(upstream).await,
    );
    let prefix = format!("f{}:", switchboard::registry::random_id());
    let a = start_node(pa.port(), &prefix).await;
    let b = start_node(pb.port(), &prefix).await;
    for n in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || n.ready()).await,
            "ready"
        );
    }
    Net {
        redis,
        pa,
        pb,
        a,
        b,
        prefix,
    }
}

/// No id twice, and each publisher's ids (`{publisher}-{seq}`) in increasing order.
fn assert_once_in_order(who: &str, ids: &[String]) {
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{who} got an event twice: {ids:?}");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for id in ids {
        let (publisher, seq) = id.rsplit_once('-').expect("publisher-seq");
        let seq: u64 = seq.parse().expect("seq");
        if let Some(prev) = last.insert(publisher, seq) {
            assert!(
                prev < seq,
                "{who}: {publisher}'s {seq} after {prev}: {ids:?}"
            );
        }
    }
}

/// `redis-cli` against the test's Redis.
fn cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// After every socket is gone and both nodes stopped: no room channel subscribed, no
/// presence key left.
async fn assert_nothing_left(net: Net, sessions: Vec<(char, Arc<Session>)>) {
    for (on, s) in sessions {
        let n = if on == 'a' { &net.a } else { &net.b };
        n.gw.disconnect(&s).await;
    }
    let prefix = net.prefix.clone();
    let channels = || {
        cli(
            &net.redis,
            &["pubsub", "channels", &format!("{prefix}room:*")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            channels().trim().is_empty()
        })
        .await,
        "room subscriptions left: {}",
        channels()
    );
    net.a.gw.shutdown().await;
    net.b.gw.shutdown().await;
    let keys = cli(&net.redis, &["keys", &format!("{prefix}{{presence}}:*")]);
    let left: Vec<&str> = keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.ends_with(":epoch"))
        .collect();
    assert!(left.is_empty(), "presence keys left: {left:?}");
}

/// Publishes `n` events from each node into `conv`, `every` apart, while `during` runs.
async fn publish_while<F: std::future::Future<Output = ()>>(
    net: &Net,
    conv: &str,
    n: usize,
    every: Duration,
    during: F,
) {
    let from = |node: &'static str| {
        let target = if node == "a" { &net.a } else { &net.b };
        async move {
            for seq in 0..n {
                let _ = target.publish(conv, &format!("{node}-{seq}")).await;
                tokio::time::sleep(every).await;
            }
        }
    };
    tokio::join!(from("a"), from("b"), during);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_keeps_every_event_once_and_in_order() {
    let net = net().await;
    net.pa.set(Fault::Latency(Duration::from_millis(20)));
    net.pb.set(Fault::Latency(Duration::from_millis(40)));
    let conv = "lat";
    let (sa, ssa) = net.a.connect("ua").await;
    let (sb, ssb) = net.b.connect("ub").await;
    net.a.join(&ssa, conv).await;
    net.b.join(&ssb, conv).await;
    let watch_ready = async {
        for _ in 0..10 {
            assert!(
                net.a.ready().await && net.b.ready().await,
                "ready under latency"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    publish_while(&net, conv, 100, Duration::from_millis(2), watch_ready).await;
    for (who, s) in [("a", &sa), ("b", &sb)] {
        let all = eventually(Duration::from_secs(10), || async { ids(s).len() == 200 }).await;
        assert!(all, "{who} got {} of 200", ids(s).len());
        assert_once_in_order(who, &ids(s));
    }
    net.pa.set(Fault::None);
    net.pb.set(Fault::None);
    assert_nothing_left(net, vec![('a', ssa), ('b', ssb)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_node_ttl_is_honest_and_heals_without_ghosts() {
    let net = net().await;
    let conv = "part";
    let (watch, swatch) = net.a.connect("watcher").await;
    let (sa, ssa) = net.a.connect("ua").await;
    let (sb, ssb) = net.b.connect("stays").await;
    let (_leaver, sleaver) = net.b.connect("leaver").await;
    net.a.join(&ssa, conv).await;
    net.b.join(&ssb, conv).await;
    for u in ["ua", "stays", "leaver"] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                is_online(&net.a, u).await == Some(true)
            })
            .await
        );
    }

    let cut = Instant::now();
    net.pb.set(Fault::Partition);
    // B says it lost Redis; A, which still has it, stays ready.
    let honest = eventually(Duration::from_secs(5), || async { !net.b.ready().await }).await;
    assert!(
        honest,
        "B's /readyz still 200 {:?} into the partition",
        cut.elapsed()
    );
    assert!(
        net.a.ready().await,
        "A's /readyz turned 503 with its own link fine"
    );
    // During it: one user leaves B, another arrives on B; A publishes.
    net.b.gw.disconnect(&sleaver).await;
    let (_newcomer, snew) = net.b.connect("newcomer").await;
    for seq in 0..5 {
        assert_eq!(
            net.a.publish(conv, &format!("a-{seq}")).await,
            StatusCode::OK
        );
    }
    // Longer than the TTL: A's presence sweeps B's connections meanwhile.
    tokio::time::sleep((NODE_TTL * 3 / 2).saturating_sub(cut.elapsed())).await;
    assert!(net.a.ready().await, "A stays ready through B's partition");
    net.pb.set(Fault::None);

    assert!(
        eventually(Duration::from_secs(10), || net.b.ready()).await,
        "B ready again after the partition"
    );
    // Presence tells the truth everywhere: no ghost, nobody missing.
    for (user, online) in [
        ("ua", true),
        ("stays", true),
        ("newcomer", true),
        ("leaver", false),
    ] {
        let truth = eventually(Duration::from_secs(5), || async {
            is_online(&net.a, user).await == Some(online)
                && is_online(&net.b, user).await == Some(online)
        })
        .await;
        assert!(
            truth,
            "{user} should be {}",
            if online { "online" } else { "offline" }
        );
        let told = eventually(Duration::from_secs(5), || async {
            last_presence(&watch, user).unwrap_or(true) == online
        })
        .await;
        assert!(
            told,
            "the watcher's last word on {user} is wrong: {:?}",
            watch.sent.lock()
        );
    }
    // After the heal, both nodes deliver again; nothing arrived twice or out of order.
    for seq in 5..10 {
        assert_eq!(
            net.a.publish(conv, &format!("a-{seq}")).await,
            StatusCode::OK
        );
        assert_eq!(
            net.b.publish(conv, &format!("b-{seq}")).await,
            StatusCode::OK
        );
    }
    let after: Vec<String> = (5..10)
        .flat_map(|s| [format!("a-{s}"), format!("b-{s}")])
        .collect();
    for (who, s) in [("a", &sa), ("b", &sb)] {
        let all = eventually(Duration::from_secs(5), || async {
            let ids = ids(s);
            after.iter().all(|id| ids.contains(id))
        })
        .await;
        assert!(
            all,
            "{who} misses events published after the heal: {:?}",
            ids(s)
        );
        assert_once_in_order(who, &ids(s));
    }
    assert_nothing_left(
        net,
        vec![('a', swatch), ('a', ssa), ('b', ssb), ('b', snew)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_under_load_lose_order_and_once_never() {
    let net = net().await;
    let conv = "resets";
    let (sa, ssa) = net.a.connect("ua").await;
    let (sb, ssb) = net.b.connect("ub").await;
    net.a.join(&ssa, conv).await;
    net.b.join(&ssb, conv).await;
    let storm = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            net.pb.reset_all();
            net.pa.reset_all();
        }
    };
    publish_while(&net, conv, 150, Duration::from_millis(8), storm).await;
    for n in [&net.a, &net.b] {
        assert!(
            eventually(Duration::from_secs(10), || n.ready()).await,
            "ready after the resets"
        );
    }
    // What is published once the links are back reaches everyone.
    assert_eq!(net.a.publish(conv, "a-1000").await, StatusCode::OK);
    assert_eq!(net.b.publish(conv, "b-1000").await, StatusCode::OK);
    for (who, s) in [("a", &sa), ("b", &sb)] {
        let tail = eventually(Duration::from_secs(5), || async {
            let ids = ids(s);
            ids.contains(&"a-1000".to_owned()) && ids.contains(&"b-1000".to_owned())
        })
        .await;
        assert!(tail, "{who} misses the events after the resets");
        assert_once_in_order(who, &ids(s));
    }
    assert_nothing_left(net, vec![('a', ssa), ('b', ssb)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_found_out_and_replaced() {
    let net = net().await;
    let conv = "half";
    let (sa, ssa) = net.a.connect("ua").await;
    let (sb, ssb) = net.b.connect("ub").await;
    net.a.join(&ssa, conv).await;
    net.b.join(&ssb, conv).await;
    assert_eq!(net.a.publish(conv, "a-0").await, StatusCode::OK);
    assert!(eventually(Duration::from_secs(5), || async { ids(&sb).len() == 1 }).await);

    // B's links go half-open: Redis sees B leave (and drops its subscriptions); B hears
    // nothing at all.
    let cut = Instant::now();
    net.pb.half_open_all();
    // B finds out (its pings go unanswered), connects again and subscribes again: events
    // published on A reach B's member again.
    let mut seq = 1;
    let back = eventually(Duration::from_secs(15), || {
        seq += 1;
        let id = format!("a-{seq}");
        let (a, sb) = (&net.a, sb.clone());
        async move {
            let _ = a.publish(conv, &id).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            ids(&sb).contains(&id)
        }
    })
    .await;
    assert!(back, "B never noticed its dead links");
    println!(
        "half-open: B delivers again {:?} after its links went half-open",
        cut.elapsed()
    );
    assert!(eventually(Duration::from_secs(5), || net.b.ready()).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            is_online(&net.a, "ub").await == Some(true)
        })
        .await,
        "B's user is online again"
    );
    for (who, s) in [("a", &sa), ("b", &sb)] {
        assert_once_in_order(who, &ids(s));
    }
    assert_nothing_left(net, vec![('a', ssa), ('b', ssb)]).await;
}

/// A `message:status` emit body for `conv`.
fn status_event(conv: &str, id: &str) -> serde_json::Value {
    serde_json::json!({
        "event": "message:status",
        "data": {"conversationId": conv, "messageId": id, "status": "read"}
    })
}

/// The node ids `n` lists as alive (`GET /api/v1/nodes`).
async fn alive(n: &TestNode) -> Vec<String> {
    let (_, v) = n.call("GET", "/api/v1/nodes", None).await;
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A socket of `user` on `n`, in conversation `conv`.
async fn member(n: &TestNode, user: &str, conv: &str) -> (Arc<support::Sock>, Arc<Session>) {
    let (sock, session) = n.connect(user).await;
    n.join(&session, conv).await;
    (sock, session)
}

/// Once A sees both nodes, cuts B off from Redis and waits until A counts it out.
async fn cut_off_b(net: &Net) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            alive(&net.a).await.len() == 2
        })
        .await,
        "A sees both nodes"
    );
    net.pb.set(Fault::Partition);
    let cut_off = eventually(Duration::from_secs(15), || async {
        alive(&net.a).await.len() == 1
    })
    .await;
    assert!(cut_off, "B still alive for A: {:?}", alive(&net.a).await);
}

/// Makes the backend's call `path` with `body` on `n`, which answers 200.
async fn call_ok(n: &TestNode, path: &str, body: serde_json::Value) {
    let (st, answer) = n.call("POST", path, Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{path}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_calls_made_while_a_node_was_cut_off_hold_there_before_it_delivers_again() {
    let net = net().await;
    let conv = "revoke";
    let room = format!("conversation:{conv}");
    let (u1a, s1a) = member(&net.a, "u1", conv).await;
    let (u1b, s1b) = member(&net.b, "u1", conv).await;
    let (u2b, s2b) = member(&net.b, "u2", conv).await;
    let (_u3a, s3a) = member(&net.a, "u3", conv).await;
    let (u3b, s3b) = member(&net.b, "u3", conv).await;
    // Until A no longer counts B as alive, a call fails naming B; after, it is not asked.
    cut_off_b(&net).await;
    call_ok(
        &net.a,
        "/api/v1/rooms/leave",
        serde_json::json!({"room": room, "userId": "u1"}),
    )
    .await;
    call_ok(
        &net.a,
        "/api/v1/users/u3/disconnect",
        serde_json::json!({"reason": "banned"}),
    )
    .await;
    // B, counted out, delivers nothing on its own meanwhile, and its publisher is told.
    let (st, body) = net
        .b
        .call("POST", "/api/v1/emit", Some(status_event(conv, "b-cut")))
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("count it out")),
        "the refusal says why: {body}"
    );
    net.pb.set(Fault::None);
    assert!(
        eventually(Duration::from_secs(15), || net.b.ready()).await,
        "B ready again after the partition"
    );

    // B took u1 out of the room and closed u3's socket before it delivered again.
    assert_eq!(
        u1b.got("conversation:left"),
        vec![serde_json::json!({"conversationId": conv, "success": true})],
        "u1 on B was told it left: {:?}",
        u1b.sent.lock()
    );
    assert!(!s1b.in_room(&room), "u1 on B still in the room");
    assert_eq!(*u3b.closed.lock(), Some(switchboard::CloseReason::Kicked));
    assert!(
        u3b.got("error")
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("banned"))),
        "u3 on B was not told why: {:?}",
        u3b.sent.lock()
    );
    for seq in 0..5 {
        assert_eq!(
            net.a.publish(conv, &format!("a-{seq}")).await,
            StatusCode::OK
        );
    }
    let all = eventually(Duration::from_secs(5), || async { ids(&u2b).len() == 5 }).await;
    assert!(all, "u2 on B got {:?}", ids(&u2b));
    assert!(
        !ids(&u2b).contains(&"b-cut".to_owned()),
        "the refused publish reached u2"
    );
    // B delivers its own publishes again.
    assert_eq!(net.b.publish(conv, "b-back").await, StatusCode::OK);
    let back = eventually(Duration::from_secs(5), || async {
        ids(&u2b).contains(&"b-back".to_owned())
    })
    .await;
    assert!(back, "u2 on B misses B's publish after the heal");
    assert!(
        ids(&u1b).is_empty(),
        "u1 on B got {:?} after its leave",
        ids(&u1b)
    );
    assert!(
        ids(&u1a).is_empty(),
        "u1 on A got {:?} after its leave",
        ids(&u1a)
    );
    assert!(
        ids(&u3b).is_empty(),
        "u3 on B got {:?} after its disconnect",
        ids(&u3b)
    );
    net.b.gw.disconnect(&s3b).await;
    net.a.gw.disconnect(&s3a).await;
    assert_nothing_left(net, vec![('a', s1a), ('b', s1b), ('b', s2b)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_for_longer_than_the_control_log_keeps_closes_every_socket_to_start_afresh()
{
    let net = net().await;
    let conv = "forgotten";
    let room = format!("conversation:{conv}");
    let (u1b, s1b) = member(&net.b, "u1", conv).await;
    let (u2b, s2b) = member(&net.b, "u2", conv).await;
    let (u1a, s1a) = member(&net.a, "u1", conv).await;
    let (u2a, s2a) = member(&net.a, "u2", conv).await;
    cut_off_b(&net).await;
    call_ok(
        &net.a,
        "/api/v1/rooms/leave",
        serde_json::json!({"room": room, "userId": "u1"}),
    )
    .await;
    // The log loses that call before B is back, as it does when B stays away for longer
    // than the log keeps calls (its own trimming is tested with the broker).
    let log = format!("{}control-log", net.prefix);
    let entries = cli(&net.redis, &["XRANGE", &log, "-", "+"]);
    let logged: Vec<&str> = entries
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.split_once('-')
                .is_some_and(|(ms, _)| ms.parse::<u64>().is_ok())
        })
        .collect();
    assert!(!logged.is_empty(), "the call is not in the log: {entries}");
    let mut xdel = vec!["XDEL", log.as_str()];
    xdel.extend(logged);
    cli(&net.redis, &xdel);
    net.pb.set(Fault::None);

    // B cannot tell what it missed: it closes every socket it holds, to connect afresh.
    let reset = eventually(Duration::from_secs(15), || async {
        *u1b.closed.lock() == Some(switchboard::CloseReason::Reset)
            && *u2b.closed.lock() == Some(switchboard::CloseReason::Reset)
    })
    .await;
    assert!(
        reset,
        "B's sockets were not reset: u1 {:?}, u2 {:?}",
        u1b.closed.lock(),
        u2b.closed.lock()
    );
    assert!(
        eventually(Duration::from_secs(15), || net.b.ready()).await,
        "B ready again after the partition"
    );
    assert!(!s1b.in_room(&room), "u1 on B still in the room");
    assert!(!s2b.in_room(&room), "u2 on B still in the room");
    assert!(u2a.closed.lock().is_none(), "A closed a socket");
    assert!(!s1a.in_room(&room), "u1 on A still in the room");

    // A socket that connects to B afresh gets the room's events again; the reset ones
    // get nothing more.
    let (u4b, s4b) = net.b.connect("u4").await;
    net.b.join(&s4b, conv).await;
    for seq in 0..3 {
        assert_eq!(
            net.a.publish(conv, &format!("a-{seq}")).await,
            StatusCode::OK
        );
    }
    let all = eventually(Duration::from_secs(5), || async {
        ids(&u4b).len() == 3 && ids(&u2a).len() == 3
    })
    .await;
    assert!(
        all,
        "u4 on B got {:?} (closed: {:?}, in the room: {}), u2 on A {:?}",
        ids(&u4b),
        u4b.closed.lock(),
        s4b.in_room(&room),
        ids(&u2a)
    );
    assert!(ids(&u1b).is_empty(), "u1 on B got {:?}", ids(&u1b));
    assert!(ids(&u1a).is_empty(), "u1 on A got {:?}", ids(&u1a));
    assert!(ids(&u2b).is_empty(), "u2 on B got {:?}", ids(&u2b));
    assert_nothing_left(
        net,
        vec![('b', s1b), ('b', s2b), ('a', s1a), ('a', s2a), ('b', s4b)],
    )
    .await;
}
