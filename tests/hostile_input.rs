//! Hostile input, generated: arbitrary events and payloads through the real inbound pipeline,
//! arbitrary bodies through the real HTTP API. Nothing panics; every bad shape is answered
//! with `error` (socket) or a 4xx with a JSON error (HTTP).

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard::{CloseReason, ConnId, Connection, Identity, LoadedConfig, Node, Session};
use tower::ServiceExt;

/// A connection that records what the gateway sends to it.
struct Recorder {
    id: ConnId,
    sent: Mutex<Vec<(String, Value)>>,
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

const CONFIG: &str = r#"
[auth.jwt]
secret = "proptest-secret-0123456789-abcdefghijkl"
[api]
keys = ["k"]
[limits]
max_event_bytes = "4KiB"
max_depth = 6
max_id_chars = 32
events_per_second = 1000000
burst = 1000000
"#;

fn node() -> Node {
    Node::build(LoadedConfig::from_toml_str(CONFIG).expect("config")).expect("node")
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(10, 80, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("conversationId".to_owned()),
                    Just("sessionId".to_owned()),
                    Just("token".to_owned()),
                    "[a-zA-Z]{0,10}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("conversation:join".to_owned()),
        Just("conversation:leave".to_owned()),
        Just("session:join".to_owned()),
        Just("session:leave".to_owned()),
        Just("typing:start".to_owned()),
        Just("typing:stop".to_owned()),
        Just("auth:refresh".to_owned()),
        ".{0,30}",
    ]
}

fn check_ack(ack: &Value, sent: &[(String, Value)]) -> Result<(), TestCaseError> {
    let obj = ack
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("ack not an object: {ack}")))?;
    if obj.get("success") == Some(&Value::Bool(false)) {
        let message = obj.get("error").and_then(Value::as_str).unwrap_or_default();
        prop_assert!(!message.is_empty(), "a refusal says why");
        if message != "Event dropped" {
            let (event, data) = sent
                .last()
                .ok_or_else(|| TestCaseError::fail("no error event"))?;
            prop_assert_eq!(event.as_str(), "error");
            prop_assert_eq!(data.get("message").and_then(Value::as_str), Some(message));
            prop_assert!(data.get("timestamp").and_then(Value::as_str).is_some());
        }
    } else {
        prop_assert!(
            obj.get("success") == Some(&Value::Bool(true)),
            "ack: {}",
            ack
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn inbound_events_never_panic_and_always_answer(event in event_name(), payload in json_value()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let node = node();
            let gw = node.gateway().clone();
            gw.start().await;
            let rec = Arc::new(Recorder { id: ConnId::new("s1"), sent: Mutex::default() });
            let session: Arc<Session> = gw.connect(rec.clone(), Identity::anonymous_user("u1")).await;
            let packet = serde_json::to_string(&json!([event, payload])).expect("json");
            let raw = serde_json::value::to_raw_value(&payload).expect("raw");
            let ack = gw.inbound(&session, session.ticket(), &event, packet.len(), Some(&raw)).await;
            check_ack(&ack, &rec.sent.lock())?;
            gw.disconnect(&session).await;
            Ok::<(), TestCaseError>(())
        })?;
    }

    #[test]
    fn malformed_frames_get_an_error(text in ".{0,200}") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let node = node();
            let gw = node.gateway().clone();
            gw.start().await;
            let rec = Arc::new(Recorder { id: ConnId::new("s2"), sent: Mutex::default() });
            let session = gw.connect(rec.clone(), Identity::anonymous_user("u2")).await;
            let ack = match RawValue::from_string(text.clone()) {
                Ok(raw) => gw.inbound(&session, session.ticket(), "conversation:join", text.len(), Some(&raw)).await,
                Err(e) => gw.inbound_malformed(&session, &e.to_string()),
            };
            check_ack(&ack, &rec.sent.lock())?;
            Ok::<(), TestCaseError>(())
        })?;
    }

    #[test]
    fn http_api_bodies_get_json_answers(
        body in prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            (event_name(), json_value(), proptest::option::of(".{0,20}")).prop_map(|(e, d, r)| {
                let mut o = json!({"event": e, "data": d});
                if let Some(r) = r { o["room"] = Value::from(r); }
                o.to_string()
            }),
            (prop_oneof![Just("message:received"), Just("message:status"), Just("session:completed"),
                         Just("session:status-changed"), Just("session:message-sent")], json_value())
                .prop_map(|(e, d)| json!({"event": e, "data": d}).to_string()),
            ".{0,100}",
        ],
        content_type in prop_oneof![Just("application/json"), Just("text/plain"), Just("")],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let node = node();
            node.gateway().start().await;
            let app = node.router();
            let mut req = Request::post("/api/v1/emit").header("authorization", "Bearer k");
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            let resp = app.oneshot(req.body(Body::from(body.clone())).expect("request")).await.expect("infallible");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {bytes:?}")))?;
            prop_assert!(
                [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::UNSUPPORTED_MEDIA_TYPE, StatusCode::UNPROCESSABLE_ENTITY].contains(&status),
                "status {} for {}", status, body
            );
            if status == StatusCode::OK {
                match &v {
                    // A batch: one result per item, each with its status and its answer or error.
                    Value::Array(items) => {
                        for item in items {
                            let code = item.get("status").and_then(Value::as_u64);
                            prop_assert!(code.is_some(), "a batch item without a status: {}", item);
                            if code == Some(200) {
                                prop_assert!(item.get("room").or_else(|| item.get("user")).and_then(Value::as_str).is_some(), "{}", item);
                            } else {
                                prop_assert!(item.get("error").and_then(Value::as_str).is_some(), "{}", item);
                            }
                        }
                    }
                    _ => prop_assert!(v.get("room").or_else(|| v.get("user")).and_then(Value::as_str).is_some()),
                }
            } else {
                prop_assert!(v.get("error").and_then(Value::as_str).is_some(), "{}", v);
            }
            if content_type != "application/json" {
                prop_assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
            Ok::<(), TestCaseError>(())
        })?;
    }

    /// A single emit into a room takes a fast path (its data delivered as the JSON text it
    /// came as); it answers as `Gateway::publish` does, and keeps what was sent.
    #[test]
    fn an_emit_answers_and_keeps_what_gateway_publish_would(
        event in prop_oneof![
            Just("message:received".to_owned()), Just("message:status".to_owned()),
            Just("session:completed".to_owned()), Just("session:status-changed".to_owned()),
            Just("typing:start".to_owned()), Just("auth:refresh".to_owned()), "[a-z:]{1,20}",
        ],
        data in prop_oneof![
            json_value(),
            any::<f64>().prop_map(Value::from),
            ("[a-z0-9]{0,40}", "[a-z0-9]{0,40}", prop_oneof![Just("sent"), Just("read"), Just("lost")])
                .prop_map(|(c, m, s)| json!({"conversationId": c, "messageId": m, "status": s})),
        ],
        room in proptest::option::of("[a-z:0-9]{0,20}"),
        pretty in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let node = node();
            let gw = node.gateway();
            gw.start().await;
            let mut body = json!({"event": event, "data": data});
            if let Some(r) = &room { body["room"] = Value::from(r.clone()); }
            let text = if pretty { serde_json::to_string_pretty(&body) } else { serde_json::to_string(&body) }
                .expect("json");
            let req = Request::post("/api/v1/emit")
                .header("authorization", "Bearer k")
                .header("content-type", "application/json")
                .body(Body::from(text.clone()))
                .expect("request");
            let resp = node.router().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            let answer: Value = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(format!("not JSON ({e})")))?;

            let reference = gw.publish(switchboard::Publish { event: event.clone(), data: data.clone(), room: room.clone() }).await;
            match &reference {
                Ok(p) => {
                    prop_assert_eq!(status, StatusCode::OK, "{} answered {}", text, answer);
                    prop_assert_eq!(answer["room"].as_str(), Some(&*p.room));
                    // Both were kept (unless the event is transient): the HTTP one first.
                    if p.offset.is_some() {
                        let h = gw.history(&p.room, None, 10).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(h.events.len(), 2);
                        let kept: Value = serde_json::from_str(h.events[0].payload.get()).expect("kept JSON");
                        prop_assert_eq!(&kept, &data, "kept from {}", text);
                    }
                }
                Err(switchboard::PublishError::UnknownEvent(_)) => prop_assert_eq!(status, StatusCode::NOT_FOUND, "{}", text),
                Err(switchboard::PublishError::Invalid { field, message }) => {
                    prop_assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", text);
                    prop_assert_eq!(answer["error"].as_str(), Some(message.as_str()));
                    prop_assert_eq!(answer["details"]["field"].as_str(), Some(field.as_str()));
                }
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
