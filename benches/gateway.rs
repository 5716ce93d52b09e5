//! Hot paths of the gateway, in process: inbound decode + validate, encode once per publish,
//! and a publish fanned out to 1, 100 and 10k local members.
//!
//! Run by hand: `cargo bench --bench gateway` (results in `target/criterion`).
//!
//! The node is built as `Node::build` builds it (JWT auth, memory presence, memory broker,
//! the conversation, typing and session event sets, no hooks), with the Socket.IO and native
//! transports turned off and one transport injected with `Node::builder`: a counting one,
//! whose `deliver` walks the recipients the core's rooms hand it and "sends" by counting
//! bytes per recipient. So the fan-out figures cover the core's share (route, validate,
//! hooks, encode once, broker, rooms, one pass over the members) and not socketioxide's
//! framing or the kernel's send, which the load benchmark (`benches/run.sh`) measures.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::{
    CloseReason, ConnId, Connection, Delivery, Gateway, GatewayHandle, Identity, LoadedConfig,
    Node, Publish, Recipients, Room, Session, Transport, async_trait,
};

const CONFIG: &str = r#"
[auth.jwt]
secret = "bench-secret-0123456789-abcdefghijklmn"
[api]
keys = ["k"]
[transports.socketio]
enabled = false
[transports.websocket]
enabled = false
[limits]
events_per_second = 1000000000
burst = 1000000000
max_connections = 0
max_connections_per_user = 0
"#;

/// A transport that counts what it would send, per recipient.
struct Counting {
    gateway: GatewayHandle,
    deliveries: AtomicU64,
    bytes: AtomicU64,
}

#[async_trait]
impl Transport for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn router(&self) -> axum::Router {
        axum::Router::new()
    }
    fn deliver(&self, d: &Delivery, to: Recipients<'_>) {
        let mut n = 0u64;
        for conn in to.iter() {
            n += 1;
            black_box((conn.id(), d.payload.get()));
        }
        self.deliveries.fetch_add(n, Ordering::Relaxed);
        self.bytes
            .fetch_add(n * d.payload.get().len() as u64, Ordering::Relaxed);
    }
    async fn shutdown(&self) {}
}

/// A socket of the counting transport.
struct Member {
    id: ConnId,
}

impl Connection for Member {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        black_box((event, payload.get()));
    }
    fn close(&self, _reason: CloseReason) {}
}

fn gateway(rt: &tokio::runtime::Runtime) -> (Gateway, Arc<Counting>) {
    let loaded = LoadedConfig::from_toml_str(CONFIG).expect("bench config");
    let slot: Arc<OnceLock<Arc<Counting>>> = Arc::default();
    let built = slot.clone();
    let node = Node::builder(loaded)
        .transport(move |gateway| {
            let t = Arc::new(Counting {
                gateway,
                deliveries: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            });
            let _ = built.set(t.clone());
            t
        })
        .build()
        .expect("bench node");
    let gw = node.gateway().clone();
    rt.block_on(gw.start());
    (gw, slot.get().cloned().expect("the counting transport"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects `n` sockets (user `u{i}`) and joins them to `conversation:{conversation}`.
async fn members(gw: &Gateway, t: &Counting, n: usize, conversation: &str) -> Vec<Arc<Session>> {
    let join =
        serde_json::value::to_raw_value(&json!({ "conversationId": conversation })).expect("json");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let conn = Arc::new(Member {
            id: ConnId::new(format!("s{i}")),
        });
        let s = gw
            .connect_via(
                t.gateway.transport(),
                conn,
                Identity::anonymous_user(format!("u{i}")),
            )
            .await;
        let ack = gw
            .inbound(&s, s.ticket(), "conversation:join", 64, Some(&join))
            .await;
        assert_eq!(ack["success"], json!(true), "join: {ack}");
        out.push(s);
    }
    out
}

fn message(i: u64) -> Value {
    json!({
        "conversationId": "42",
        "messageId": format!("m{i}"),
        "senderId": "backend",
        "type": "text",
        "content": "Hello from the benchmark, a message of an ordinary length.",
        "status": "sent",
        "timestamp": "2026-11-26T10:00:00.000Z",
    })
}

fn inbound(c: &mut Criterion) {
    let rt = runtime();
    let (gw, t) = gateway(&rt);
    let sessions = rt.block_on(members(&gw, &t, 2, "42"));
    let sender = &sessions[0];
    let cases: [(&str, &str, &str); 4] = [
        ("typing_start", "typing:start", r#"{"conversationId":"42"}"#),
        (
            "conversation_join_again",
            "conversation:join",
            r#"{"conversationId":"42"}"#,
        ),
        (
            "invalid_payload",
            "conversation:join",
            r#"{"conversationId":5}"#,
        ),
        ("unknown_event", "nope:nope", r#"{"a":[1,2,{"b":"c"}]}"#),
    ];
    let mut g = c.benchmark_group("gateway/inbound");
    for (name, event, payload) in cases {
        let raw = RawValue::from_string(payload.to_owned()).expect("json");
        let size = event.len() + payload.len() + 6;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(
                            gw.inbound(sender, sender.ticket(), event, size, Some(&raw))
                                .await,
                        );
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let data = message(1);
    let len = serde_json::to_string(&data).expect("json").len();
    let room: Room = Room::from("conversation:42");
    let mut g = c.benchmark_group("delivery/encode");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("message_received", |b| {
        b.iter(|| {
            Delivery::encode("message:received", Some(room.clone()), black_box(&data))
                .expect("encode")
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("gateway/publish_fanout");
    g.measurement_time(Duration::from_secs(4));
    for n in [1usize, 100, 10_000] {
        let (gw, t) = gateway(&rt);
        let _sessions = rt.block_on(members(&gw, &t, n, "42"));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let before = t.deliveries.load(Ordering::Relaxed);
                    let mut elapsed = Duration::ZERO;
                    for i in 0..iters {
                        let req = Publish {
                            event: "message:received".into(),
                            data: message(i),
                            room: None,
                        };
                        let start = Instant::now();
                        black_box(gw.publish(req).await.expect("publish"));
                        elapsed += start.elapsed();
                    }
                    let delivered = t.deliveries.load(Ordering::Relaxed) - before;
                    assert_eq!(delivered, iters * n as u64);
                    elapsed
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, inbound, encode, fanout);
criterion_main!(benches);
