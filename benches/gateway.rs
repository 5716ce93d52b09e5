//! Hot paths of the gateway, in process: inbound decode + validate, encode once per publish,
//! and a publish fanned out to 1, 100 and 10k local members.
//!
//! Run by hand: `cargo bench --bench gateway` (results in `target/criterion`).
//!
//! The gateway is wired as `Node::build` wires it (JWT auth, memory presence, memory broker,
//! the conversation, typing and session event sets, no hooks) with one transport, a counting
//! one: it keeps its own room member lists, as the Socket.IO transport mirrors joins into
//! socketioxide's rooms, and "sends" by counting bytes per recipient. So the fan-out figures
//! cover the core's share (route, validate, hooks, encode once, broker, hub, one pass over
//! the members) and not socketioxide's framing or the kernel's send, which the load
//! benchmark (`benches/run.sh`) measures.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::auth_jwt::{JwtAuthenticator, JwtConfig};
use switchboard::broker_memory::MemoryBroker;
use switchboard::events_conversation::ConversationEvents;
use switchboard::events_session::SessionEvents;
use switchboard::events_typing::TypingEvents;
use switchboard::presence_memory::MemoryPresence;
use switchboard::runtime::Parts;
use switchboard::{
    CloseReason, ConnId, Connection, Delivery, Gateway, Identity, LoadedConfig, LocalHub, Metrics,
    Publish, Room, Session, Transport, async_trait,
};

const CONFIG: &str = r#"
[auth.jwt]
secret = "bench-secret-0123456789-abcdefghijklmn"
[api]
keys = ["k"]
[limits]
events_per_second = 1000000000
burst = 1000000000
max_connections = 0
max_connections_per_user = 0
"#;

/// A transport that counts what it would send, per recipient.
#[derive(Default)]
struct Counting {
    rooms: Mutex<HashMap<Room, Vec<ConnId>>>,
    deliveries: AtomicU64,
    bytes: AtomicU64,
}

#[async_trait]
impl Transport for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn router(&self, _gateway: Gateway) -> axum::Router {
        axum::Router::new()
    }
    async fn deliver(&self, d: &Delivery) {
        let rooms = self.rooms.lock();
        let Some(room) = &d.room else { return };
        let Some(members) = rooms.get(room) else {
            return;
        };
        let mut n = 0u64;
        for id in members {
            if d.except.as_ref() != Some(id) {
                n += 1;
                black_box(d.payload.get());
            }
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
    transport: Arc<Counting>,
}

impl Connection for Member {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        black_box((event, payload.get()));
    }
    fn join(&self, room: &Room) {
        self.transport
            .rooms
            .lock()
            .entry(room.clone())
            .or_default()
            .push(self.id.clone());
    }
    fn leave(&self, room: &Room) {
        if let Some(m) = self.transport.rooms.lock().get_mut(room) {
            m.retain(|id| *id != self.id);
        }
    }
    fn close(&self, _reason: CloseReason) {}
}

fn gateway() -> (Gateway, Arc<Counting>) {
    let loaded = LoadedConfig::from_toml_str(CONFIG).expect("bench config");
    let jwt = JwtConfig {
        secret: Some("bench-secret-0123456789-abcdefghijklmn".into()),
        ..JwtConfig::default()
    };
    let counting = Arc::new(Counting::default());
    let hub = LocalHub::new(vec![counting.clone() as Arc<dyn Transport>]);
    let metrics = Metrics::new();
    let gw = Gateway::new(Parts {
        config: Arc::new(loaded.config.clone()),
        auth: Arc::new(JwtAuthenticator::new(&jwt, false).expect("jwt")),
        presence: Arc::new(MemoryPresence::new()),
        broker: Arc::new(MemoryBroker::new(hub.clone())),
        handlers: vec![
            Arc::new(ConversationEvents),
            Arc::new(TypingEvents),
            Arc::new(SessionEvents),
        ],
        hooks: Vec::new(),
        hub,
        metrics: metrics.clone(),
        access: switchboard::access::RoomAccess::new(loaded.config.rooms.clone(), metrics)
            .expect("rooms"),
    });
    (gw, counting)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects `n` sockets (user `u{i}`) and joins them to `conversation:{conversation}`.
async fn members(
    gw: &Gateway,
    t: &Arc<Counting>,
    n: usize,
    conversation: &str,
) -> Vec<Arc<Session>> {
    let join =
        serde_json::value::to_raw_value(&json!({ "conversationId": conversation })).expect("json");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let conn = Arc::new(Member {
            id: ConnId::new(format!("s{i}")),
            transport: t.clone(),
        });
        let s = gw
            .connect(conn, Identity::anonymous_user(format!("u{i}")))
            .await;
        let ack = gw.inbound(&s, "conversation:join", 64, Some(&join)).await;
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
    let (gw, t) = gateway();
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
                        black_box(gw.inbound(sender, event, size, Some(&raw)).await);
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
        let (gw, t) = gateway();
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
