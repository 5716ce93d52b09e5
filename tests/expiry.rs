//! Token expiry through the real gateway: `auth:expiring` ahead of `exp`, the close at `exp`,
//! a refresh that moves both, and closed sockets that leave nothing to fire.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard::{CloseReason, ConnId, Connection, Identity, LoadedConfig, Node};

/// What the gateway did to a connection, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Event(String, Value),
    Closed(CloseReason),
}

struct Recorder {
    id: ConnId,
    seen: Mutex<Vec<(Instant, Seen)>>,
}

impl Recorder {
    fn new(id: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            id: ConnId::new(id),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().iter().map(|(_, s)| s.clone()).collect()
    }
    fn events(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Event(e, _) => Some(e),
                Seen::Closed(_) => None,
            })
            .collect()
    }
    fn closed(&self) -> bool {
        self.seen().iter().any(|s| matches!(s, Seen::Closed(_)))
    }
}

impl Connection for Recorder {
    fn id(&self) -> &ConnId {
        &self.id
    }
    fn send(&self, event: &str, payload: &RawValue) {
        let v = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
        self.seen
            .lock()
            .push((Instant::now(), Seen::Event(event.to_owned(), v)));
    }
    fn close(&self, reason: CloseReason) {
        self.seen
            .lock()
            .push((Instant::now(), Seen::Closed(reason)));
    }
}

const SECRET: &str = "expiry-test-secret-0123456789-abcdefgh";

fn node(leeway: &str) -> Node {
    let toml = format!(
        "[auth]\nrefresh_notice = \"1s\"\n[auth.jwt]\nsecret = \"{SECRET}\"\nleeway = \"{leeway}\"\n"
    );
    Node::build(LoadedConfig::from_toml_str(&toml).expect("config")).expect("node")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn expiring(user: &str, exp: u64) -> Identity {
    Identity {
        expires_at: Some(exp),
        ..Identity::anonymous_user(user)
    }
}

fn token(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_then_closed_at_exp_and_a_refresh_moves_both() {
    let node = node("0s");
    let gw = node.gateway().clone();
    gw.start().await;
    let exp = now() + 2;

    // Expires in about 2 s: the notice is due at once (notice 1 s ahead, rounded to seconds).
    let short = Recorder::new("short");
    let short_session = gw.connect(short.clone(), expiring("a", exp)).await;
    // Refreshed before the notice: it must outlive the first token's exp.
    let refreshed = Recorder::new("refreshed");
    let refreshed_session = gw.connect(refreshed.clone(), expiring("b", exp)).await;
    let fresh = token("b", now() + 3600);
    let req = serde_json::value::to_raw_value(&json!({ "token": fresh })).expect("raw");
    let ack = gw
        .inbound(
            &refreshed_session,
            refreshed_session.ticket(),
            "auth:refresh",
            req.get().len(),
            Some(&req),
        )
        .await;
    assert!(ack["expiresAt"].is_string(), "refresh ack: {ack}");
    // Closed before anything fires: nothing may reach it afterwards.
    let gone = Recorder::new("gone");
    let gone_session = gw.connect(gone.clone(), expiring("c", exp)).await;
    gw.disconnect(&gone_session).await;
    let gone_seen = gone.seen().len();

    wait_until("the expiry close", Duration::from_secs(6), || {
        short.closed()
    })
    .await;
    let seen = short.seen();
    let notice = seen
        .iter()
        .position(|s| matches!(s, Seen::Event(e, _) if e == "auth:expiring"))
        .expect("auth:expiring before the close");
    let close = seen
        .iter()
        .position(|s| *s == Seen::Closed(CloseReason::TokenExpired))
        .expect("closed as expired");
    assert!(notice < close, "notice first: {seen:?}");
    assert!(
        seen.iter().any(
            |s| matches!(s, Seen::Event(e, v) if e == "error" && v["message"] == "Authentication failed: Token expired")
        ),
        "the expiry error: {seen:?}"
    );
    assert!(
        now() >= exp,
        "closed at or after exp, not before ({} < {exp})",
        now()
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !refreshed.closed() && !refreshed.events().contains(&"auth:expiring".to_owned()),
        "the refreshed socket keeps going: {:?}",
        refreshed.seen()
    );
    assert_eq!(
        gone.seen().len(),
        gone_seen,
        "nothing fires for a closed socket"
    );
    gw.disconnect(&short_session).await;
    gw.disconnect(&refreshed_session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_within_the_leeway_lives_until_the_leeway_ends() {
    let node = node("60s");
    let gw = node.gateway().clone();
    gw.start().await;
    // Expired 10 s ago: accepted with a 60 s leeway, so closed 50 s from now, not at once.
    let late = Recorder::new("late");
    let session = gw.connect(late.clone(), expiring("d", now() - 10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        late.seen().is_empty(),
        "nothing yet (the notice is due 1 s before the close): {:?}",
        late.seen()
    );
    gw.disconnect(&session).await;
}
