//! The metrics reference stays true: every metric a node exports (with the built-in
//! plugins: memory, Redis, Lua hooks) is in `book/src/reference/metrics.md` with its type,
//! and every metric there is exported; the Grafana dashboard in `examples/grafana/` queries
//! only metrics the gateway exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard::{CloseReason, ConnId, Connection, Identity, LoadedConfig, Node};
use tower::ServiceExt;

const BASE: &str = r#"
[auth.jwt]
secret = "metrics-test-secret-0123456789-abcdefgh"
[api]
keys = ["k"]
"#;

struct Sink(ConnId);

impl Connection for Sink {
    fn id(&self) -> &ConnId {
        &self.0
    }
    fn send(&self, _event: &str, _payload: &RawValue) {}
    fn close(&self, _reason: CloseReason) {}
}

/// `name → type` of every family in a Prometheus text exposition, with a counter's
/// samples' `_total` suffix.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            (name, kind.to_owned())
        })
        .collect()
}

/// What a node built from `toml` exports after a little of everything happened.
async fn exported(toml: &str) -> BTreeMap<String, String> {
    let node = Node::build(LoadedConfig::from_toml_str(toml).expect("config")).expect("node");
    let gw = node.gateway().clone();
    let app = node.router();
    // A connection, an event in, an event out, an API error, an HTTP request.
    let session = gw
        .connect(
            Arc::new(Sink(ConnId::new("s1"))),
            Identity::anonymous_user("u1".to_owned()),
        )
        .await;
    let join = serde_json::value::to_raw_value(&json!({"conversationId": "1"})).expect("json");
    gw.inbound(
        &session,
        session.ticket(),
        "conversation:join",
        20,
        Some(&join),
    )
    .await;
    gw.inbound(&session, session.ticket(), "no:such", 2, None)
        .await;
    let emit = Request::post("/api/v1/emit")
        .header("authorization", "Bearer k")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"event": "message:status", "data": {"conversationId": "1", "messageId": "m", "status": "read"}})
                .to_string(),
        ))
        .expect("request");
    let _ = app.clone().oneshot(emit).await.expect("emit");
    let bad = Request::get("/api/v1/presence")
        .header("authorization", "Bearer wrong")
        .body(Body::empty())
        .expect("request");
    let _ = app.oneshot(bad).await.expect("presence");
    families(&gw.metrics().encode())
}

/// `metric → type` of the reference's table rows (`| \`switchboard_x\` | type | ...`).
fn documented() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/reference/metrics.md"),
    )
    .expect("metrics reference");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `switchboard_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.trim_start_matches(" |").split('|').next()?.trim();
            Some((format!("switchboard_{name}"), kind.to_owned()))
        })
        .collect()
}

fn all_exported() -> BTreeMap<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Each caller its own folder: the tests of this file run in parallel, and one removing
    // the folder must not take the other's script away.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("switchboard-metrics-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("hook.lua");
    // A hook that fails, so the Lua failure counter has a sample.
    std::fs::write(
        &script,
        "function on_inbound(event, payload, ctx)\n  error(\"boom\")\nend\n",
    )
    .expect("script");
    let redis = format!(
        "{BASE}\n[presence]\nplugin = \"redis\"\n[broker]\nplugin = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n"
    );
    let lua = format!(
        "{BASE}\n[hooks.lua]\nscripts = [{:?}]\n",
        script.display().to_string()
    );
    let mut all = BTreeMap::new();
    for toml in [BASE.to_owned(), redis, lua] {
        all.extend(rt.block_on(exported(&toml)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    all
}

#[test]
fn the_metrics_reference_lists_exactly_what_is_exported() {
    let exported = all_exported();
    let documented = documented();
    let missing: Vec<_> = exported
        .iter()
        .filter(|(k, v)| documented.get(*k) != Some(v))
        .collect();
    let extra: Vec<_> = documented
        .iter()
        .filter(|(k, _)| !exported.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "book/src/reference/metrics.md is out of date.\n  exported but not documented (or another type): {missing:?}\n  documented but not exported: {extra:?}"
    );
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let exported: BTreeSet<String> = all_exported().into_keys().collect();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana/switchboard.json"),
    )
    .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(serde_json::Value::as_str) {
                    out.push(e.to_owned());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels: {exprs:?}");
    for expr in &exprs {
        let mut names = Vec::new();
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("switchboard_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
        assert!(!names.is_empty(), "a query on no gateway metric: {expr}");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| exported.contains(*base))
                .map_or(name.clone(), str::to_owned);
            assert!(
                exported.contains(&family),
                "the dashboard queries {name}, which the gateway does not export ({expr})"
            );
        }
    }
}

/// The samples of `switchboard_http_requests_total`: `(route, status) → count`.
fn http_requests(text: &str) -> BTreeMap<(String, String), u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("switchboard_http_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let mut route = String::new();
            let mut status = String::new();
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=')?;
                let v = v.trim_matches('"').to_owned();
                match k {
                    "route" => route = v,
                    "status" => status = v,
                    _ => {}
                }
            }
            Some(((route, status), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn http_requests_are_counted_by_declared_route_and_status() {
    let node = Node::build(LoadedConfig::from_toml_str(BASE).expect("config")).expect("node");
    let gw = node.gateway().clone();
    gw.start().await;
    let app = node.router();
    let call = |method: &str, uri: &str, key: Option<&str>, body: Option<serde_json::Value>| {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let app = app.clone();
        async move { app.oneshot(req).await.expect("response").status().as_u16() }
    };
    let status = json!({"event": "message:status", "data": {"conversationId": "1", "messageId": "m", "status": "read"}});
    assert_eq!(
        call("POST", "/api/v1/emit", Some("k"), Some(status.clone())).await,
        200
    );
    assert_eq!(
        call("POST", "/api/v1/emit", Some("k"), Some(status)).await,
        200
    );
    assert_eq!(call("POST", "/api/v1/emit", None, None).await, 401);
    assert_eq!(
        call("GET", "/api/v1/rooms/conversation:1", Some("k"), None).await,
        200
    );
    assert_eq!(
        call("GET", "/api/v1/rooms/conversation:2", Some("k"), None).await,
        200
    );
    assert_eq!(call("GET", "/api/v1/nope", Some("k"), None).await, 404);
    assert_eq!(call("GET", "/healthz", None, None).await, 200);
    let counted = http_requests(&gw.metrics().encode());
    let expect = |route: &str, status: &str| (route.to_owned(), status.to_owned());
    assert_eq!(
        counted.get(&expect("/api/v1/emit", "200")),
        Some(&2),
        "{counted:?}"
    );
    assert_eq!(
        counted.get(&expect("/api/v1/emit", "401")),
        Some(&1),
        "{counted:?}"
    );
    assert_eq!(
        counted.get(&expect("/api/v1/rooms/{room}", "200")),
        Some(&2),
        "one label for the declared route: {counted:?}"
    );
    assert_eq!(
        counted.get(&expect("/api/{*rest}", "404")),
        Some(&1),
        "{counted:?}"
    );
    assert_eq!(
        counted.get(&expect("/healthz", "200")),
        Some(&1),
        "{counted:?}"
    );
}
