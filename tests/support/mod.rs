//! What the node-level integration tests share: a connection that records what it is sent,
//! and a started node with its HTTP API at hand.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::{
    CloseReason, ConnId, Connection, Gateway, Identity, LoadedConfig, Node, Session,
};
use tower::ServiceExt;

/// A connection that records every event it is sent.
pub(crate) struct Sock {
    id: ConnId,
    /// `(event, payload)`, in the order sent.
    pub(crate) sent: Mutex<Vec<(String, Value)>>,
    /// Why the server closed it, once it did.
    pub(crate) closed: Mutex<Option<CloseReason>>,
}

impl Sock {
    /// A recording connection with id `id`.
    pub(crate) fn new(id: impl Into<String>) -> Arc<Self> {
        Arc::new(Sock {
            id: ConnId::new(id.into()),
            sent: Mutex::default(),
            closed: Mutex::default(),
        })
    }

    /// The payloads of the `event`s received.
    pub(crate) fn got(&self, event: &str) -> Vec<Value> {
        self.sent
            .lock()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Connection for Sock {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        let v = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        self.sent.lock().push((event.to_owned(), v));
    }
    fn close(&self, reason: CloseReason) {
        *self.closed.lock() = Some(reason);
    }
}

/// A node built from TOML and started, its API key `k`.
pub(crate) struct TestNode {
    /// The node (its router serves the HTTP API).
    pub(crate) node: Node,
    /// Its gateway.
    pub(crate) gw: Gateway,
}

impl TestNode {
    /// Builds and starts a node from `toml`.
    pub(crate) async fn start(toml: &str) -> Self {
        let node = Node::build(LoadedConfig::from_toml_str(toml).expect("config")).expect("node");
        let gw = node.gateway().clone();
        gw.start().await;
        TestNode { node, gw }
    }

    /// Calls the HTTP API with key `k`: the status and the JSON body (null when not JSON).
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer k");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let res = self.node.router().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Whether `/readyz` answers 200.
    pub(crate) async fn ready(&self) -> bool {
        self.call("GET", "/readyz", None).await.0 == StatusCode::OK
    }

    /// A recording socket of `user`, connected.
    pub(crate) async fn connect(&self, user: &str) -> (Arc<Sock>, Arc<Session>) {
        let sock = Sock::new(format!("{user}-{}", switchboard::registry::random_id()));
        let session = self
            .gw
            .connect(sock.clone(), Identity::anonymous_user(user.to_owned()))
            .await;
        (sock, session)
    }

    /// Sends `conversation:join` for `conv` from `session`.
    pub(crate) async fn join(&self, session: &Arc<Session>, conv: &str) {
        let raw = serde_json::value::to_raw_value(&json!({"conversationId": conv})).expect("raw");
        self.gw
            .inbound(
                session,
                session.ticket(),
                "conversation:join",
                raw.get().len(),
                Some(&raw),
            )
            .await;
    }

    /// Publishes `message:status` `id` into conversation `conv`; the status.
    pub(crate) async fn publish(&self, conv: &str, id: &str) -> StatusCode {
        self.call(
            "POST",
            "/api/v1/emit",
            Some(json!({"event": "message:status", "data": {"conversationId": conv, "messageId": id, "status": "read"}})),
        )
        .await
        .0
    }
}
