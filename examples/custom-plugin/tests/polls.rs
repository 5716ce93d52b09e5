//! The `polls` plugin inside a real node: a `Node` built from TOML with the plugin enabled,
//! driven in-process by a recording transport that the test injects with
//! [`Node::builder`].
//!
//! Run: `cargo test -p switchboard-example-polls`
//!
//! Room deliveries go broker → the core's rooms → each transport's recipients; the recording
//! transport's sockets keep every event they are sent.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::registry::{self, PluginKind};
use switchboard::{
    CloseReason, ConnId, Connection, Gateway, GatewayHandle, Identity, LoadedConfig, Node, Publish,
    PublishError, Session, Transport, async_trait,
};
use switchboard_example_polls as polls;
use tower::ServiceExt;

/// A socket that records what it is sent.
struct Recorder {
    id: ConnId,
    sent: Mutex<Vec<(String, Value)>>,
}

impl Recorder {
    /// Every `event` this socket received, in order.
    fn received(&self, event: &str) -> Vec<Value> {
        self.sent
            .lock()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn last(&self) -> Option<(String, Value)> {
        self.sent.lock().last().cloned()
    }
}

impl Connection for Recorder {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        let v = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        self.sent.lock().push((event.to_owned(), v));
    }
    fn close(&self, _reason: CloseReason) {}
}

/// A transport whose sockets are [`Recorder`]s. It keeps no rooms: the core hands each
/// delivery with its recipients, and the default `deliver` sends to each of them.
struct RecordingTransport {
    gateway: GatewayHandle,
}

#[async_trait]
impl Transport for RecordingTransport {
    fn name(&self) -> &str {
        "recorder"
    }
    fn router(&self) -> axum::Router {
        axum::Router::new()
    }
    async fn shutdown(&self) {}
}

impl RecordingTransport {
    /// Connects a recording socket for `user`, as a transport does after its handshake.
    async fn connect(&self, user: &str) -> (Arc<Recorder>, Arc<Session>) {
        let rec = Arc::new(Recorder {
            id: ConnId::new(format!("sock-{user}")),
            sent: Mutex::default(),
        });
        let gw = self.gateway.get().expect("the node is up");
        let session = gw
            .connect_via(
                self.gateway.transport(),
                rec.clone(),
                Identity::anonymous_user(user),
            )
            .await;
        (rec, session)
    }
}

/// A node with the built-ins and `polls`, and its recording transport.
struct TestNode {
    node: Node,
    transport: Arc<RecordingTransport>,
}

impl TestNode {
    async fn new(extra: &str) -> TestNode {
        let toml = format!(
            r#"
[auth.jwt]
secret = "polls-test-secret-0123456789-abcdefgh"
[api]
keys = ["k"]
[events]
plugins = ["conversation", "typing", "session", "polls"]
{extra}
"#
        );
        let slot: Arc<OnceLock<Arc<RecordingTransport>>> = Arc::default();
        let built = slot.clone();
        let node = Node::builder(LoadedConfig::from_toml_str(&toml).expect("config"))
            .transport(move |gateway| {
                let t = Arc::new(RecordingTransport { gateway });
                let _ = built.set(t.clone());
                t
            })
            .build()
            .expect("node");
        node.gateway().start().await;
        let transport = slot
            .get()
            .cloned()
            .expect("the recorder transport was built");
        TestNode { node, transport }
    }

    fn gateway(&self) -> &Gateway {
        self.node.gateway()
    }

    async fn connect(&self, user: &str) -> (Arc<Recorder>, Arc<Session>) {
        self.transport.connect(user).await
    }

    /// Sends one client event as a transport would; returns the ack.
    async fn emit(&self, session: &Arc<Session>, event: &str, payload: Value) -> Value {
        let raw = serde_json::value::to_raw_value(&payload).expect("raw");
        let size = json!([event, payload]).to_string().len();
        self.gateway()
            .inbound(session, session.ticket(), event, size, Some(&raw))
            .await
    }
}

#[test]
fn the_plugin_is_registered() {
    assert!(registry::names(PluginKind::Events).contains(&polls::NAME));
}

#[tokio::test]
async fn a_vote_reaches_every_member_of_the_poll_room() {
    let n = TestNode::new("").await;
    let (alice, a) = n.connect("alice").await;
    let (bob, b) = n.connect("bob").await;
    let (carol, _c) = n.connect("carol").await;

    for s in [&a, &b] {
        let ack = n.emit(s, "poll:join", json!({"pollId": "lunch"})).await;
        assert_eq!(ack, json!({"pollId": "lunch", "success": true}));
    }
    assert_eq!(
        alice.received("poll:joined"),
        [json!({"pollId": "lunch", "success": true})]
    );

    let ack = n
        .emit(
            &a,
            "poll:vote",
            json!({"pollId": "lunch", "option": "pizza"}),
        )
        .await;
    assert_eq!(ack, json!({"success": true}));
    let voted = json!({"pollId": "lunch", "option": "pizza", "userId": "alice"});
    assert_eq!(alice.received("poll:voted"), std::slice::from_ref(&voted));
    assert_eq!(bob.received("poll:voted"), [voted]);
    assert!(carol.received("poll:voted").is_empty(), "not in the room");

    // The voter is the socket's identity, whatever the payload claims.
    let ack = n
        .emit(
            &b,
            "poll:vote",
            json!({"pollId": "lunch", "option": "sushi", "userId": "mallory"}),
        )
        .await;
    assert_eq!(ack, json!({"success": true}));
    assert_eq!(
        alice.received("poll:voted").last(),
        Some(&json!({"pollId": "lunch", "option": "sushi", "userId": "bob"}))
    );

    // After poll:leave, votes no longer reach that socket.
    let ack = n.emit(&b, "poll:leave", json!({"pollId": "lunch"})).await;
    assert_eq!(ack, json!({"pollId": "lunch", "success": true}));
    n.emit(
        &a,
        "poll:vote",
        json!({"pollId": "lunch", "option": "tacos"}),
    )
    .await;
    assert_eq!(alice.received("poll:voted").len(), 3);
    assert_eq!(bob.received("poll:voted").len(), 2);
}

#[tokio::test]
async fn a_bad_vote_gets_an_error_naming_the_field() {
    let n = TestNode::new("[events.polls]\nmax_option_chars = 8").await;
    let (alice, a) = n.connect("alice").await;
    let (bob, b) = n.connect("bob").await;
    for s in [&a, &b] {
        n.emit(s, "poll:join", json!({"pollId": "lunch"})).await;
    }

    let cases = [
        (
            json!({"pollId": "lunch", "option": 5}),
            "Invalid payload for poll:vote: option: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"pollId": "lunch"}),
            "Invalid payload for poll:vote: option: is required",
        ),
        (
            json!({"option": "pizza"}),
            "Invalid payload for poll:vote: pollId: is required",
        ),
        (
            json!({"pollId": "lunch", "option": ""}),
            "Invalid payload for poll:vote: option: must be a non-empty string",
        ),
        (
            json!({"pollId": "lunch", "option": "quattro formaggi"}),
            "Invalid payload for poll:vote: option: must be at most 8 characters",
        ),
        (
            json!({"pollId": "dinner", "option": "pizza"}),
            "Join poll:dinner before sending poll:vote",
        ),
    ];
    for (payload, message) in cases {
        let ack = n.emit(&a, "poll:vote", payload.clone()).await;
        assert_eq!(
            ack,
            json!({"success": false, "error": message}),
            "payload {payload}"
        );
        let (event, data) = alice.last().expect("an error event");
        assert_eq!(event, "error");
        assert_eq!(data["message"], message);
        assert!(data["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert!(alice.received("poll:voted").is_empty());
    assert!(bob.received("poll:voted").is_empty());
    assert!(
        bob.received("error").is_empty(),
        "errors go to the sender alone"
    );

    let ack = n.emit(&a, "poll:join", json!({"pollId": ""})).await;
    assert_eq!(
        ack["error"],
        "Invalid payload for poll:join: pollId: must be a non-empty string"
    );
}

#[tokio::test]
async fn a_backend_closes_a_poll_in_its_room() {
    let n = TestNode::new("").await;
    let (alice, a) = n.connect("alice").await;
    let (carol, _c) = n.connect("carol").await;
    n.emit(&a, "poll:join", json!({"pollId": "lunch"})).await;

    // From Rust: Gateway::publish, the path the HTTP API takes.
    let results = json!({"pollId": "lunch", "results": {"pizza": 2, "sushi": 1}});
    let published = n
        .gateway()
        .publish(Publish {
            event: "poll:closed".into(),
            data: results.clone(),
            room: None,
        })
        .await
        .expect("published");
    assert_eq!(&*published.room, "poll:lunch");
    assert!(!published.dropped);
    assert_eq!(
        alice.received("poll:closed"),
        std::slice::from_ref(&results)
    );
    assert!(carol.received("poll:closed").is_empty());

    let bad = n
        .gateway()
        .publish(Publish {
            event: "poll:closed".into(),
            data: json!({"pollId": "lunch", "results": {"pizza": "two"}}),
            room: None,
        })
        .await
        .expect_err("invalid");
    let PublishError::Invalid { field, message } = bad else {
        panic!("expected Invalid, got {bad:?}");
    };
    assert!(message.contains("results.pizza"), "{message}");
    assert_eq!(field, "data.results.pizza");

    // Over HTTP: 200 with the derived room, 422 naming the field.
    let emit = |body: Value| {
        Request::post("/api/v1/emit")
            .header("authorization", "Bearer k")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let resp = n
        .node
        .router()
        .oneshot(emit(json!({"event": "poll:closed", "data": results})))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    let offset = body["offset"].as_str().unwrap_or_default().to_owned();
    assert!(
        offset
            .split_once(':')
            .is_some_and(|(e, n)| !e.is_empty() && n.parse::<u64>().is_ok()),
        "the event's place in the room's history: {body}"
    );
    assert_eq!(
        body,
        json!({"event": "poll:closed", "room": "poll:lunch", "offset": offset})
    );
    assert_eq!(alice.received("poll:closed").len(), 2);

    let resp = n
        .node
        .router()
        .oneshot(emit(
            json!({"event": "poll:closed", "data": {"results": {}}}),
        ))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("pollId: is required"), "{body}");
}

#[test]
fn the_plugin_section_is_checked() {
    let build = |section: &str| {
        let toml = format!(
            "[auth.jwt]\nsecret = \"polls-test-secret-0123456789-abcdefgh\"\n\
             [events]\nplugins = [\"polls\"]\n[events.polls]\n{section}\n"
        );
        Node::build(LoadedConfig::from_toml_str(&toml).expect("config"))
    };
    assert!(build("max_option_chars = 16").is_ok());
    let e = build("max_votes = 3").expect_err("unknown key");
    assert!(
        e.issues.iter().any(|i| i.key.starts_with("events.polls")),
        "{e:?}"
    );
    let e = build("max_option_chars = 0").expect_err("zero");
    assert!(
        e.issues
            .iter()
            .any(|i| i.key == "events.polls.max_option_chars" && i.reason == "must be at least 1"),
        "{e:?}"
    );
}

#[test]
fn the_plugin_s_section_is_in_the_config_reference() {
    let keys = registry::all_config_keys();
    assert_eq!(
        keys.get("events.polls.max_option_chars"),
        Some(&json!(64)),
        "events.polls.* is declared with its defaults"
    );
}

#[test]
fn a_second_plugin_claiming_a_poll_event_is_refused_naming_both() {
    let loaded = LoadedConfig::from_toml_str(
        "[auth.jwt]\nsecret = \"polls-test-secret-0123456789-abcdefgh\"\n\
         [events]\nplugins = [\"polls\"]\n",
    )
    .expect("config");
    let copycat = switchboard::EventSet::new("copycat").on_value("poll:vote", |_ctx, _v| async {
        Ok(switchboard::Outcome::Done)
    });
    let e = Node::builder(loaded)
        .event_set(copycat)
        .build()
        .expect_err("poll:vote twice");
    let text = e.to_string();
    assert!(
        text.contains("`poll:vote` is declared by both `polls` and `copycat`"),
        "{text}"
    );
    assert!(text.starts_with("events.plugins:"), "{text}");
}
