//! The native protocol end to end, in process: a real node on a free port and a real
//! WebSocket client (tokio-tungstenite) speaking CONTRACT §5.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use switchboard_auth_jwt::{JwtConfig, mint};
use switchboard_core::{LoadedConfig, Node, Publish};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

// Name every plugin the node needs, so the linker keeps their registrations.
use switchboard_auth_jwt as _;
use switchboard_broker_memory as _;
use switchboard_events_conversation as _;
use switchboard_events_session as _;
use switchboard_events_typing as _;
use switchboard_presence_memory as _;
use switchboard_transport_websocket as _;

const SECRET: &str = "a-test-secret-that-is-long-enough-32";
const WAIT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<TcpStream>;

struct Server {
    addr: SocketAddr,
    gateway: switchboard_core::Gateway,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(extra: &str) -> Server {
        // Dotted keys, so `extra` may add `auth.jwt.*` keys before its own tables.
        let toml = format!("auth.jwt.secret = \"{SECRET}\"\n{extra}");
        let loaded = LoadedConfig::from_toml_str(&toml).expect("config");
        let node = Node::build(loaded).expect("node");
        let gateway = node.gateway().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(node.serve(listener, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            gateway,
            stop: Some(tx),
            done,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.done).await;
    }

    /// A WebSocket to the native endpoint, before any frame.
    async fn raw(&self, bearer: Option<&str>, query: &str) -> Client {
        let mut req = format!("ws://{}/ws{query}", self.addr)
            .into_client_request()
            .expect("request");
        if let Some(b) = bearer {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {b}").parse().expect("header"),
            );
        }
        let tcp = TcpStream::connect(self.addr).await.expect("tcp");
        let (ws, res) = client_async(req, tcp).await.expect("upgrade");
        assert_eq!(res.status(), 101);
        ws
    }

    /// A connected native socket for `user`; returns it and its `connected` frame.
    async fn connect(&self, user: &str) -> (Client, Value) {
        let mut ws = self.raw(None, "").await;
        send(
            &mut ws,
            json!({"op": "connect", "token": token(user, 3600)}),
        )
        .await;
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["op"], "connected", "{hello}");
        (ws, hello)
    }
}

fn token(user: &str, ttl_secs: u64) -> String {
    let cfg = JwtConfig {
        secret: Some(SECRET.to_owned()),
        ..JwtConfig::default()
    };
    mint(&cfg, user, Duration::from_secs(ttl_secs), Map::new()).expect("mint")
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame as JSON (pings are answered by the client library and skipped).
async fn next_json(ws: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).expect("JSON frame");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and the text frames before it.
async fn closed(ws: &mut Client) -> (u16, Vec<Value>) {
    let mut texts = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                texts.push(serde_json::from_str(t.as_str()).expect("JSON"))
            }
            Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return (code.into(), texts),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Asserts nothing but pings arrives for a short while.
async fn quiet(ws: &mut Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn connect_join_ack_and_typing_between_native_sockets() {
    let s = Server::start("").await;
    let (mut a, hello) = s.connect("alice").await;
    assert_eq!(hello["userId"], "alice");
    let sid = hello["socketId"].as_str().expect("socket id");
    assert_eq!(sid.len(), 22);
    assert_eq!(
        hello.as_object().expect("object").len(),
        3,
        "exactly op, userId, socketId"
    );

    let (mut b, _) = s.connect("bob").await;
    let online = next_json(&mut a).await;
    assert_eq!(
        online,
        json!({"event": "user:online", "data": {"userId": "bob"}})
    );

    for ws in [&mut a, &mut b] {
        send(
            ws,
            json!({"event": "conversation:join", "data": {"conversationId": "c1"}, "id": 7}),
        )
        .await;
        let (x, y) = (next_json(ws).await, next_json(ws).await);
        let joined = json!({"conversationId": "c1", "success": true});
        let (ev, ack) = if x.get("ack").is_some() {
            (y, x)
        } else {
            (x, y)
        };
        assert_eq!(ev, json!({"event": "conversation:joined", "data": joined}));
        assert_eq!(ack, json!({"ack": 7, "data": joined}));
    }

    send(
        &mut a,
        json!({"event": "typing:start", "data": {"conversationId": "c1"}}),
    )
    .await;
    assert_eq!(
        next_json(&mut b).await,
        json!({"event": "typing:start", "data": {"conversationId": "c1", "userId": "alice", "isTyping": true}})
    );
    quiet(&mut a).await;

    // A string id is echoed as a string.
    send(
        &mut b,
        json!({"event": "conversation:leave", "data": {"conversationId": "c1"}, "id": "x-1"}),
    )
    .await;
    let (x, y) = (next_json(&mut b).await, next_json(&mut b).await);
    let ack = if x.get("ack").is_some() { x } else { y };
    assert_eq!(
        ack,
        json!({"ack": "x-1", "data": {"conversationId": "c1", "success": true}})
    );
    send(
        &mut a,
        json!({"event": "typing:stop", "data": {"conversationId": "c1"}}),
    )
    .await;
    quiet(&mut b).await;

    b.close(None).await.expect("close");
    assert_eq!(
        next_json(&mut a).await,
        json!({"event": "user:offline", "data": {"userId": "bob"}})
    );
    s.stop().await;
}

#[tokio::test]
async fn published_events_reach_the_room_once() {
    let s = Server::start("").await;
    let (mut a, _) = s.connect("alice").await;
    let (mut b, _) = s.connect("bob").await;
    let _ = next_json(&mut a).await; // bob online
    send(
        &mut a,
        json!({"event": "session:join", "data": {"sessionId": "s1"}}),
    )
    .await;
    assert_eq!(next_json(&mut a).await["event"], "session:joined");
    let data = json!({"sessionId": "s1", "nodeId": "n1", "nodeLabel": "Start"});
    s.gateway
        .publish(Publish {
            event: "session:node-executed".into(),
            data: data.clone(),
            room: None,
        })
        .await
        .expect("publish");
    assert_eq!(
        next_json(&mut a).await,
        json!({"event": "session:node-executed", "data": data})
    );
    quiet(&mut a).await;
    quiet(&mut b).await;
    s.stop().await;
}

#[tokio::test]
async fn each_auth_failure_has_its_message_and_4401() {
    let s = Server::start("").await;
    let cases = [
        (
            json!({"op": "connect"}),
            "Authentication failed: No token provided",
        ),
        (
            json!({"op": "connect", "token": ""}),
            "Authentication failed: No token provided",
        ),
        (
            json!({"op": "connect", "token": "not.a.jwt"}),
            "Authentication failed: Invalid token",
        ),
        (
            json!({"op": "connect", "token": 42}),
            "Authentication failed: Invalid token",
        ),
        (
            json!({"event": "conversation:join", "data": {}}),
            "Authentication failed: No token provided",
        ),
    ];
    for (first, message) in cases {
        let mut ws = s.raw(None, "").await;
        send(&mut ws, first.clone()).await;
        let (code, texts) = closed(&mut ws).await;
        assert_eq!(
            texts,
            vec![json!({"op": "error", "message": message})],
            "for {first}"
        );
        assert_eq!(code, 4401, "for {first}");
    }
    // A non-connect first frame is refused even with a good bearer header.
    let mut ws = s.raw(Some(&token("carol", 60)), "").await;
    send(&mut ws, json!({"hello": 1})).await;
    assert_eq!(closed(&mut ws).await.0, 4401);
    // ?userId= is not a token source unless allowed.
    let mut ws = s.raw(None, "?userId=dave").await;
    send(&mut ws, json!({"op": "connect"})).await;
    assert_eq!(closed(&mut ws).await.0, 4401);
    s.stop().await;
}

#[tokio::test]
async fn the_token_may_come_from_the_bearer_header_and_userid_when_allowed() {
    let s = Server::start("auth.allow_query_user_id = true\n").await;
    let mut ws = s.raw(Some(&token("erin", 60)), "").await;
    send(&mut ws, json!({"op": "connect"})).await;
    assert_eq!(next_json(&mut ws).await["userId"], "erin");
    let mut ws = s.raw(None, "?userId=frank").await;
    send(&mut ws, json!({"op": "connect"})).await;
    assert_eq!(next_json(&mut ws).await["userId"], "frank");
    // A bad token never falls back to ?userId=.
    let mut ws = s.raw(None, "?userId=frank").await;
    send(&mut ws, json!({"op": "connect", "token": "bad"})).await;
    let (code, texts) = closed(&mut ws).await;
    assert_eq!(
        (code, texts[0]["message"].clone()),
        (4401, json!("Authentication failed: Invalid token"))
    );
    s.stop().await;
}

#[tokio::test]
async fn no_first_frame_in_time_is_4408() {
    let s = Server::start("[limits]\nhandshake_timeout = \"300ms\"\n").await;
    let mut ws = s.raw(None, "").await;
    let (code, texts) = closed(&mut ws).await;
    assert_eq!(
        texts,
        vec![json!({"op": "error", "message": "Handshake timeout"})]
    );
    assert_eq!(code, 4408);
    s.stop().await;
}

#[tokio::test]
async fn bad_frames_get_error_and_the_socket_stays_open() {
    let s = Server::start("").await;
    let (mut ws, _) = s.connect("alice").await;
    let bad = [
        Message::Text("not json".into()),
        Message::Text("[1,2]".into()),
        Message::Text(r#"{"event":"conversation:join","payload":{},"id":3}"#.into()),
        Message::Text(r#"{"op":"connect","token":"x","id":"c"}"#.into()),
        Message::Text(r#"{"event":"nope:unknown","data":{},"id":9}"#.into()),
        Message::Text(
            r#"{"event":"conversation:join","data":{"conversationId":""},"id":10}"#.into(),
        ),
    ];
    let acked = [
        None,
        None,
        Some(json!(3)),
        Some(json!("c")),
        Some(json!(9)),
        Some(json!(10)),
    ];
    for (msg, id) in bad.into_iter().zip(acked) {
        ws.send(msg).await.expect("send");
        let err = next_json(&mut ws).await;
        assert_eq!(err["event"], "error", "{err}");
        let data = err["data"].as_object().expect("data");
        assert!(
            data["message"].is_string()
                && data["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))
        );
        if let Some(id) = id {
            let ack = next_json(&mut ws).await;
            assert_eq!(ack["ack"], id);
            assert_eq!(ack["data"]["success"], false);
            assert_eq!(ack["data"]["error"], data["message"]);
        }
    }
    // Still connected and working.
    send(
        &mut ws,
        json!({"event": "conversation:join", "data": {"conversationId": "ok"}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["event"], "conversation:joined");
    s.stop().await;
}

#[tokio::test]
async fn binary_closes_1003_and_oversize_closes_1009() {
    let s = Server::start("[transports.websocket]\nmax_frame_bytes = \"4KiB\"\n").await;
    let (mut ws, _) = s.connect("alice").await;
    ws.send(Message::Binary(Bytes::from_static(b"\x01\x02")))
        .await
        .expect("send");
    assert_eq!(closed(&mut ws).await.0, 1003);

    let (mut ws, _) = s.connect("alice").await;
    // Under the frame maximum but over limits.max_event_bytes would be an `error`; over it closes.
    let big = format!(
        r#"{{"event":"typing:start","data":{{"pad":"{}"}}}}"#,
        "x".repeat(8 * 1024)
    );
    ws.send(Message::Text(big.into())).await.expect("send");
    assert_eq!(closed(&mut ws).await.0, 1009);
    s.stop().await;
}

#[tokio::test]
async fn an_event_over_max_event_bytes_is_an_error_not_a_close() {
    let s = Server::start("[limits]\nmax_event_bytes = 256\n").await;
    let (mut ws, _) = s.connect("alice").await;
    let big = format!(
        r#"{{"event":"typing:start","data":{{"conversationId":"{}"}},"id":1}}"#,
        "x".repeat(400)
    );
    ws.send(Message::Text(big.into())).await.expect("send");
    let err = next_json(&mut ws).await;
    assert!(
        err["data"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Event too large")),
        "{err}"
    );
    assert_eq!(next_json(&mut ws).await["ack"], 1);
    s.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_two_unanswered_pings() {
    let s = Server::start("[transports.websocket]\nping_interval = \"150ms\"\n").await;
    let (mut silent, _) = s.connect("alice").await;
    let (mut live, _) = s.connect("bob").await;
    // Reading answers pings (the client library replies); not reading leaves them unanswered.
    let reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, live.next()).await {}
        live
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut pings = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, silent.next())
            .await
            .expect("frame")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(Message::Text(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((code, pings), (4408, 2));
    let mut live = reader.await.expect("reader");
    send(
        &mut live,
        json!({"event": "session:join", "data": {"sessionId": "s"}}),
    )
    .await;
    assert_eq!(
        next_json(&mut live).await["event"],
        "session:joined",
        "the answering socket lives on"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_expired_token_closes_4401_after_auth_expiring() {
    let s = Server::start("auth.jwt.leeway = \"0s\"\n").await;
    let mut ws = s.raw(None, "").await;
    send(
        &mut ws,
        json!({"op": "connect", "token": token("alice", 2)}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["op"], "connected");
    let (code, texts) = closed(&mut ws).await;
    assert_eq!(texts[0]["event"], "auth:expiring");
    assert_eq!(
        texts.last().expect("error")["data"]["message"],
        "Authentication failed: Token expired"
    );
    assert_eq!(code, 4401);
    s.stop().await;
}

#[tokio::test]
async fn sustained_rate_abuse_closes_4429() {
    // One token a second: the bucket stays empty between tokens for longer than 300 ms.
    let s = Server::start(
        "[limits]\nevents_per_second = 1\nburst = 1\nrate_disconnect_after = \"300ms\"\n",
    )
    .await;
    let (ws, _) = s.connect("alice").await;
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        for _ in 0..400 {
            let f = json!({"event": "typing:start", "data": {"conversationId": "c"}}).to_string();
            if tx.send(Message::Text(f.into())).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let code = loop {
        match tokio::time::timeout(WAIT, rx.next()).await.expect("frame") {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4429);
    flood.abort();
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let s = Server::start("").await;
    let (mut ws, _) = s.connect("alice").await;
    let stopping = tokio::spawn(s.stop());
    assert_eq!(closed(&mut ws).await.0, 1001);
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn plain_get_is_refused_with_426() {
    let s = Server::start("").await;
    let mut tcp = TcpStream::connect(s.addr).await.expect("tcp");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 426"), "{out}");
    s.stop().await;
}
