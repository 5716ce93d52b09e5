//! The publish path, `POST /api/v1/emit` read straight off the socket on a served node,
//! answers as the router does and hands everything else to the router on the same
//! connection: real TCP connections against `Node::serve`, checked against the same node's
//! router served by axum.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::Sock;
use switchboard::{Gateway, Identity, LoadedConfig, Node};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOML: &str = r#"
[server]
cors_origins = ["http://app.example"]
[auth.jwt]
secret = "publish-path-test-secret-0123456789-abcdef"
[api]
keys = ["k"]
[limits]
max_http_body_bytes = "4KiB"
"#;

/// A node served by `Node::serve`, and its router served by axum on another port.
struct Served {
    /// Where `Node::serve` listens.
    node: SocketAddr,
    /// Where the same node's router listens, through hyper for every request.
    router: SocketAddr,
    gw: Gateway,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
}

async fn serve() -> Served {
    let node = Node::build(LoadedConfig::from_toml_str(TOML).expect("config")).expect("node");
    let gw = node.gateway().clone();
    let reference = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let router = reference.local_addr().expect("addr");
    let app = node.router();
    tokio::spawn(async move { axum::serve(reference, app).await });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(node.serve(listener, async move {
        let _ = stopped.await;
    }));
    Served {
        node: addr,
        router,
        gw,
        stop: Some(stop),
        serving,
    }
}

/// A recording socket of user `reader`, in conversation 7.
async fn reader(served: &Served, id: &str) -> Arc<Sock> {
    let sock = Sock::new(id);
    served
        .gw
        .connect(sock.clone(), Identity::anonymous_user("reader".to_owned()))
        .await;
    served
        .gw
        .join_user("reader", "conversation:7")
        .await
        .expect("joined");
    sock
}

/// The ids of the `message:status` events `sock` received, in order.
fn ids(sock: &Sock) -> Vec<Value> {
    sock.got("message:status")
        .into_iter()
        .map(|v| v["messageId"].clone())
        .collect()
}

/// A request as bytes: `head` (its first line and headers, without the blank line) and
/// `body`, with a `Content-Length` unless the head names a length or encoding itself.
fn request(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.replace('\n', "\r\n");
    let lower = head.to_ascii_lowercase();
    if !lower.contains("content-length:") && !lower.contains("transfer-encoding:") {
        out.push_str(&format!("\r\nContent-Length: {}", body.len()));
    }
    out.push_str("\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `POST /api/v1/emit` with key `k` and a JSON `body`.
fn emit(body: &Value) -> Vec<u8> {
    request(
        "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json",
        body.to_string().as_bytes(),
    )
}

/// `message:status` of message `id` in conversation 7.
fn status_of(id: &str) -> Value {
    json!({"event": "message:status", "data": {"conversationId": "7", "messageId": id, "status": "read"}})
}

/// One answer: its status, its headers (lowercase names, sorted, without `date`), whether
/// it had a `date`, and its body.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    dated: bool,
    body: Vec<u8>,
}

impl Answer {
    /// The body as JSON, without an emit's `offset` (which moves from one emit to the next).
    fn json(&self) -> Value {
        let mut v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        strip_offsets(&mut v);
        v
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn strip_offsets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("offset");
            m.values_mut().for_each(strip_offsets);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_offsets),
        _ => {}
    }
}

/// A client connection, reading answers in order.
struct Client(BufReader<TcpStream>);

impl Client {
    async fn to(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Client(BufReader::new(tcp))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).await.expect("write");
    }

    /// The next final answer (an interim `100 Continue` is skipped); `None` at the end of
    /// the connection.
    async fn answer(&mut self) -> Option<Answer> {
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).await.expect("read") == 0 {
                return None;
            }
            let status: u16 = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {line:?}"));
            let mut headers = Vec::new();
            let mut dated = false;
            loop {
                let mut line = String::new();
                self.0.read_line(&mut line).await.expect("read");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("a header line");
                let name = name.to_ascii_lowercase();
                if name == "date" {
                    dated = true;
                } else {
                    headers.push((name, value.trim().to_owned()));
                }
            }
            if status == 100 {
                continue;
            }
            headers.sort();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            self.0.read_exact(&mut body).await.expect("body");
            return Some(Answer {
                status,
                headers,
                dated,
                body,
            });
        }
    }

    /// Sends `bytes` and reads the answer.
    async fn call(&mut self, bytes: &[u8]) -> Answer {
        self.send(bytes).await;
        self.answer().await.expect("an answer")
    }
}

#[tokio::test]
async fn every_emit_is_answered_as_the_router_answers_it() {
    let served = serve().await;
    let big = "x".repeat(300);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an emit into a room", emit(&status_of("m1"))),
        (
            "an emit with a room named",
            emit(&json!({"event": "note", "room": "session:9", "data": {"a": 1}})),
        ),
        (
            "an emit to a user who is not online",
            emit(&json!({"event": "note", "user": "nobody", "data": {}})),
        ),
        (
            "a batch with a bad item",
            emit(&json!([status_of("m2"), {"event": "", "room": "r", "data": {}}])),
        ),
        ("an empty batch", emit(&json!([]))),
        (
            "a wrong type",
            emit(&json!({"event": 5, "room": "r", "data": {}})),
        ),
        (
            "a field of the payload missing",
            emit(&json!({"event": "message:status", "data": {"conversationId": "7"}})),
        ),
        (
            "a room too long",
            emit(&json!({"event": "note", "room": big, "data": {}})),
        ),
        (
            "malformed JSON",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json",
                b"{\"event\":",
            ),
        ),
        (
            "an empty body",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json",
                b"",
            ),
        ),
        (
            "no key",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nContent-Type: application/json",
                status_of("m3").to_string().as_bytes(),
            ),
        ),
        (
            "a wrong key",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer nope\nContent-Type: application/json",
                status_of("m3").to_string().as_bytes(),
            ),
        ),
        (
            "a key with a byte outside ASCII",
            [
                b"POST /api/v1/emit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\xff\r\n"
                    .as_slice(),
                b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            ]
            .concat(),
        ),
        (
            "another content type",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: text/plain",
                status_of("m3").to_string().as_bytes(),
            ),
        ),
        (
            "no content type",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k",
                status_of("m3").to_string().as_bytes(),
            ),
        ),
        (
            "headers in other cases, a JSON media type with parameters",
            request(
                "POST /api/v1/emit HTTP/1.1\nHOST: x\nauthorization: Bearer k\nCONTENT-type: application/json; charset=utf-8",
                status_of("m4").to_string().as_bytes(),
            ),
        ),
    ];
    let mut node = Client::to(served.node).await;
    let mut router = Client::to(served.router).await;
    for (what, bytes) in &cases {
        let ours = node.call(bytes).await;
        let theirs = router.call(bytes).await;
        assert!(ours.dated, "{what}: a Date header");
        assert_eq!(
            (ours.status, &ours.headers, ours.json()),
            (theirs.status, &theirs.headers, theirs.json()),
            "{what}"
        );
    }
    // The answers above are what a user depends on, not only the same as the router's.
    let first = node.call(&emit(&status_of("m5"))).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["room"], "conversation:7");
    assert_eq!(
        first.header("content-type"),
        Some("application/json"),
        "{first:?}"
    );
    let unauthorized = node
        .call(&request(
            "POST /api/v1/emit HTTP/1.1\nHost: x\nContent-Type: application/json",
            b"{}",
        ))
        .await;
    assert_eq!(unauthorized.status, 401);
    assert!(
        unauthorized.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("API key")),
        "{unauthorized:?}"
    );
    drop(served.stop);
}

#[tokio::test]
async fn one_connection_carries_emits_then_any_other_request() {
    let served = serve().await;
    let sock = reader(&served, "reader-1").await;
    let mut c = Client::to(served.node).await;
    // Pipelined: two emits, a request of another kind, then an emit the router takes.
    let mut bytes = emit(&status_of("p1"));
    bytes.extend(emit(&status_of("p2")));
    bytes.extend(request("GET /healthz HTTP/1.1\nHost: x", b""));
    bytes.extend(emit(&status_of("p3")));
    c.send(&bytes).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.answer().await.expect("an answer").status);
    }
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(ids(&sock), [json!("p1"), json!("p2"), json!("p3")]);

    // Each answered emit is counted under its route, as the router counts it.
    let metrics = c
        .call(&request(
            "GET /metrics HTTP/1.1\nHost: x\nAuthorization: Bearer k",
            b"",
        ))
        .await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("switchboard_http_requests_total")
                && l.contains("route=\"/api/v1/emit\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no emit count in {text}"));
    assert!(line.ends_with(" 3"), "{line}");
    drop(served.stop);
}

#[tokio::test]
async fn a_request_written_a_byte_at_a_time_is_answered() {
    let served = serve().await;
    let mut c = Client::to(served.node).await;
    for _ in 0..2 {
        for b in emit(&status_of("slow")) {
            c.send(&[b]).await;
        }
        let answer = c.answer().await.expect("an answer");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["room"], "conversation:7");
    }
    drop(served.stop);
}

#[tokio::test]
async fn what_is_not_a_plain_emit_is_the_router_s() {
    let served = serve().await;
    let sock = reader(&served, "reader-2").await;
    let body = status_of("c1").to_string();
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a chunked body",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json\nTransfer-Encoding: chunked",
                chunked.as_bytes(),
            ),
            200,
        ),
        (
            "Expect: 100-continue",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json\nExpect: 100-continue",
                status_of("c2").to_string().as_bytes(),
            ),
            200,
        ),
        (
            "a query string",
            request(
                "POST /api/v1/emit?x=1 HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json",
                status_of("c3").to_string().as_bytes(),
            ),
            200,
        ),
        (
            "HTTP/1.0",
            request(
                "POST /api/v1/emit HTTP/1.0\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json\nConnection: keep-alive",
                status_of("c4").to_string().as_bytes(),
            ),
            200,
        ),
        (
            "a body over the limit",
            request(
                "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json",
                &vec![b' '; 5000],
            ),
            413,
        ),
    ];
    for (what, bytes, status) in cases {
        // Each on a new connection that first carries a plain emit.
        let mut c = Client::to(served.node).await;
        assert_eq!(c.call(&emit(&status_of("plain"))).await.status, 200);
        let answer = c.call(&bytes).await;
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        // The connection still serves, through the router now.
        assert_eq!(
            c.call(&emit(&status_of("after"))).await.status,
            200,
            "{what}"
        );
    }
    let routed: Vec<Value> = ids(&sock)
        .into_iter()
        .filter(|id| id.as_str().is_some_and(|s| s.starts_with('c')))
        .collect();
    assert_eq!(routed, [json!("c1"), json!("c2"), json!("c3"), json!("c4")]);

    // A browser's emit (with an `Origin`) gets the CORS answer.
    let mut c = Client::to(served.node).await;
    let answer = c
        .call(&request(
            "POST /api/v1/emit HTTP/1.1\nHost: x\nOrigin: http://app.example\nAuthorization: Bearer k\nContent-Type: application/json",
            status_of("o1").to_string().as_bytes(),
        ))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://app.example"),
        "{answer:?}"
    );
    drop(served.stop);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let served = serve().await;
    let mut c = Client::to(served.node).await;
    let answer = c
        .call(&request(
            "POST /api/v1/emit HTTP/1.1\nHost: x\nAuthorization: Bearer k\nContent-Type: application/json\nConnection: close",
            status_of("bye").to_string().as_bytes(),
        ))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(c.answer().await.is_none(), "the connection is closed");
    drop(served.stop);
}

#[tokio::test]
async fn a_stopping_node_closes_idle_connections_and_finishes() {
    let mut served = serve().await;
    let mut idle = Client::to(served.node).await;
    assert_eq!(idle.call(&emit(&status_of("s1"))).await.status, 200);
    let mut handed = Client::to(served.node).await;
    assert_eq!(
        handed
            .call(&request("GET /healthz HTTP/1.1\nHost: x", b""))
            .await
            .status,
        200
    );
    if let Some(stop) = served.stop.take() {
        let _ = stop.send(());
    }
    // A bound on a hang, not a wait for something to happen.
    let done = tokio::time::timeout(Duration::from_secs(30), served.serving)
        .await
        .expect("the node stops");
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    assert!(
        idle.answer().await.is_none(),
        "the idle connection is closed"
    );
    assert!(
        handed.answer().await.is_none(),
        "the router's connection is closed"
    );
}
