//! Reaching a managed Redis: an ACL user with exactly the rights the book's cluster guide
//! lists, and TLS (`rediss://`) with a CA and a client certificate the test makes. Two
//! nodes with the Redis broker and presence share the server; a socket on one gets what a
//! backend publishes on the other, presence and history span both, and Redis itself
//! denied nothing (`ACL LOG`), on one server and on a Redis Cluster. The refusals say what
//! is wrong.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use switchboard::{LoadedConfig, Node};
use switchboard_testkit::{RedisCluster, RedisServer, TestCa, eventually};

mod support;
use support::TestNode;

const SECRET: &str = "access-test-secret-0123456789-abcdefghij";
const PASSWORD: &str = "s3cret";
const ADMIN: [&str; 4] = ["--user", "admin", "--pass", "admin-pw"];

/// The ACL line of the book's cluster guide (the `text` block after its `acl-line` marker).
fn documented_acl_line() -> String {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/guide/cluster.md"),
    )
    .expect("the cluster guide");
    let after = guide
        .split("<!-- acl-line:")
        .nth(1)
        .expect("an acl-line marker in the cluster guide");
    after
        .lines()
        .find(|l| l.starts_with("user switchboard "))
        .expect("the ACL line after the marker")
        .to_owned()
}

/// `redis-server` arguments for that user (and an admin user for the test's own checks),
/// with the default user off.
fn acl_args(line: &str) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        "default".to_owned(),
        "off".to_owned(),
        "--user".to_owned(),
        "admin".to_owned(),
        "on".to_owned(),
        ">admin-pw".to_owned(),
        "~*".to_owned(),
        "&*".to_owned(),
        "+@all".to_owned(),
        "--user".to_owned(),
    ];
    args.extend(
        line.trim_start_matches("user ")
            .split_whitespace()
            .map(str::to_owned),
    );
    args
}

fn node_toml(redis: &str) -> String {
    format!(
        "[auth.jwt]\nsecret = \"{SECRET}\"\n[api]\nkeys = [\"k\"]\n\
         [presence]\nplugin = \"redis\"\n[broker]\nplugin = \"redis\"\n\
         [redis]\n{redis}\n"
    )
}

async fn start_node(toml: &str) -> TestNode {
    TestNode::start(toml).await
}

async fn call(n: &TestNode, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    n.call(method, path, body).await
}

/// Two nodes on the Redis `redis` names: a socket on `b` in a conversation gets what is
/// published on `a`; presence, history and a control call answer for both; once
/// `kill_subscribers` dropped their subscriber connections, each node reads the control log
/// and subscribes again.
async fn works_across_two_nodes(redis: &str, kill_subscribers: impl Fn()) {
    let (a, b) = (
        start_node(&node_toml(redis)).await,
        start_node(&node_toml(redis)).await,
    );
    for n in [&a, &b] {
        let ready = eventually(Duration::from_secs(10), || async {
            call(n, "GET", "/readyz", None).await.0 == StatusCode::OK
        })
        .await;
        assert!(ready, "a node is not ready on {redis}");
    }
    let (sock, session) = b.connect("alice").await;
    b.join(&session, "42").await;
    assert_eq!(sock.got("conversation:joined").len(), 1);
    let (status, body) = call(
        &a,
        "POST",
        "/api/v1/emit",
        Some(json!({"event": "message:status", "data": {"conversationId": "42", "messageId": "m1", "status": "read"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("localOnly").is_none(), "through Redis: {body}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            sock.got("message:status").len() == 1
        })
        .await,
        "the event crossed the nodes"
    );
    let (_, presence) = call(&a, "GET", "/api/v1/presence/alice", None).await;
    assert_eq!(presence["online"], json!(true), "{presence}");
    let (status, history) = call(&b, "GET", "/api/v1/history/conversation:42", None).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(history["events"][0]["data"]["messageId"], json!("m1"));
    // Each node lists both once their heartbeats (every second) are in.
    let both = eventually(Duration::from_secs(5), || async {
        let (_, nodes) = call(&a, "GET", "/api/v1/nodes", None).await;
        nodes["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert!(both, "GET /api/v1/nodes lists both nodes");
    // A control call is written to the control log first.
    let (status, body) = call(
        &a,
        "POST",
        "/api/v1/rooms/join",
        Some(json!({"room": "conversation:43", "userId": "alice"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // After a reconnect a node reads the log before it subscribes its rooms again.
    kill_subscribers();
    let mut n = 1;
    let again = eventually(Duration::from_secs(15), || {
        n += 1;
        let id = format!("m{n}");
        let a = &a;
        let sock = &sock;
        async move {
            let _ = call(
                a,
                "POST",
                "/api/v1/emit",
                Some(json!({"event": "message:status", "data": {"conversationId": "42", "messageId": id, "status": "read"}})),
            )
            .await;
            sock.got("message:status").len() >= 2
        }
    })
    .await;
    assert!(
        again,
        "nothing crossed the nodes after their subscribers reconnected"
    );
    b.gw.disconnect(&session).await;
    a.gw.shutdown().await;
    b.gw.shutdown().await;
}

/// `redis-cli` as the admin user against `server`.
fn admin(server: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args(ADMIN)
        .arg("--no-auth-warning")
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli` as the switchboard user.
fn as_switchboard(server: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string()])
        .args([
            "--user",
            "switchboard",
            "--pass",
            PASSWORD,
            "--no-auth-warning",
        ])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_all_the_plugins_need() {
    let line = documented_acl_line();
    let args = acl_args(&line.replace(">s3cret", &format!(">{PASSWORD}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(&args);
    let url = format!(
        "url = \"redis://switchboard:{PASSWORD}@127.0.0.1:{}\"",
        server.port()
    );
    works_across_two_nodes(&url, || {
        admin(&server, &["client", "kill", "type", "pubsub"]);
    })
    .await;
    // Nothing the plugins ran was denied, the heartbeats and sweeps included.
    let log = admin(&server, &["acl", "log"]);
    assert!(log.trim().is_empty(), "Redis denied something: {log}");
    // And the user can do nothing else.
    for denied in [
        vec!["keys", "*"],
        vec!["flushall"],
        vec!["config", "get", "*"],
        vec!["get", "other:key"],
        vec!["publish", "other:channel", "x"],
    ] {
        let out = as_switchboard(&server, &denied);
        assert!(out.contains("NOPERM"), "{denied:?} allowed: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_all_the_plugins_need_on_a_cluster() {
    let line = documented_acl_line().replace(">s3cret", &format!(">{PASSWORD}"));
    // The default user stays on for the cluster's own bus and replication.
    let mut args = vec!["--user"];
    args.extend(line.trim_start_matches("user ").split_whitespace());
    let cluster = RedisCluster::start_with(&args);
    let url = format!(
        "url = \"{}\"",
        cluster.url_with(&format!("switchboard:{PASSWORD}@"))
    );
    works_across_two_nodes(&url, || {
        for node in cluster.nodes() {
            let _ = cluster.cli(node.port(), &["client", "kill", "type", "pubsub"]);
        }
    })
    .await;
    for node in cluster.nodes() {
        let log = cluster
            .cli(node.port(), &["acl", "log"])
            .unwrap_or_default();
        assert!(
            log.trim().is_empty(),
            "node {} denied something: {log}",
            node.port()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_and_the_node_is_not_ready() {
    let line = documented_acl_line();
    let args = acl_args(&line);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with(&args);
    let toml = node_toml(&format!(
        "url = \"redis://switchboard:wrong@127.0.0.1:{}\"",
        server.port()
    ));
    let n = start_node(&toml).await;
    let (status, _) = call(&n, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // It serves its own sockets (a publish says it reached only them) until other nodes
    // could count it out, then refuses to publish, saying why.
    let refused = eventually(Duration::from_secs(10), || async {
        let (status, body) = call(
            &n,
            "POST",
            "/api/v1/emit",
            Some(json!({"event": "message:status", "data": {"conversationId": "1", "messageId": "m", "status": "read"}})),
        )
        .await;
        if status == StatusCode::OK {
            assert_eq!(body["localOnly"], json!(true), "{body}");
            return false;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let why = body["error"].as_str().unwrap_or_default();
        assert!(why.contains("count it out"), "{body}");
        true
    })
    .await;
    assert!(
        refused,
        "a node that never reached Redis still delivers on its own"
    );
    n.gw.shutdown().await;
}

/// A Redis serving TLS only, on the test CA's server certificate; `clients` is its
/// `tls-auth-clients` setting.
/// Drops the subscriber connections of a TLS-only Redis started by [`tls_redis`].
fn kill_tls_subscribers(server: &RedisServer, ca: &TestCa) {
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "--tls", "--cacert"])
        .arg(ca.file("ca.pem"))
        .arg("--cert")
        .arg(ca.file("client.pem"))
        .arg("--key")
        .arg(ca.file("client.key"))
        .args(["client", "kill", "type", "pubsub"])
        .output();
}

fn tls_redis(ca: &TestCa, clients: &str) -> RedisServer {
    let (cert, key, root) = (
        ca.file("server.pem"),
        ca.file("server.key"),
        ca.file("ca.pem"),
    );
    RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &root,
        "--tls-auth-clients",
        clients,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_and_a_client_certificate() {
    let ca = TestCa::new();
    let server = tls_redis(&ca, "yes");
    let redis = format!(
        "url = \"rediss://127.0.0.1:{}\"\n[redis.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
        server.port(),
        ca.file("ca.pem"),
        ca.file("client.pem"),
        ca.file("client.key"),
    );
    works_across_two_nodes(&redis, || kill_tls_subscribers(&server, &ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_only_a_ca_when_clients_are_not_checked() {
    let ca = TestCa::new();
    let server = tls_redis(&ca, "no");
    let redis = format!(
        "url = \"rediss://127.0.0.1:{}\"\n[redis.tls]\nca_file = {:?}",
        server.port(),
        ca.file("ca.pem"),
    );
    works_across_two_nodes(&redis, || kill_tls_subscribers(&server, &ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_leave_the_node_unready() {
    let ca = TestCa::new();
    let server = tls_redis(&ca, "yes");
    let other = TestCa::new();
    for (what, tls) in [
        (
            "no client certificate",
            format!("ca_file = {:?}", ca.file("ca.pem")),
        ),
        (
            "a CA that did not sign the server",
            format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
                other.file("ca.pem"),
                ca.file("client.pem"),
                ca.file("client.key")
            ),
        ),
    ] {
        let toml = node_toml(&format!(
            "url = \"rediss://127.0.0.1:{}\"\n[redis.tls]\n{tls}",
            server.port()
        ));
        let n = start_node(&toml).await;
        let (status, _) = call(&n, "GET", "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        n.gw.shutdown().await;
    }
}

#[test]
fn tls_settings_are_checked_at_start_naming_their_key() {
    let ca = TestCa::new();
    for (redis, key) in [
        (
            format!(
                "url = \"redis://127.0.0.1:1\"\n[redis.tls]\nca_file = {:?}",
                ca.file("ca.pem")
            ),
            "redis.url",
        ),
        (
            "url = \"rediss://127.0.0.1:1\"\n[redis.tls]\nca_file = \"/no/such/ca.pem\"".to_owned(),
            "redis.tls.ca_file",
        ),
        (
            format!(
                "url = \"rediss://127.0.0.1:1\"\n[redis.tls]\nca_file = {:?}",
                ca.file("server.key")
            ),
            "redis.tls.ca_file",
        ),
        (
            format!(
                "url = \"rediss://127.0.0.1:1\"\n[redis.tls]\ncert_file = {:?}",
                ca.file("client.pem")
            ),
            "redis.tls.key_file",
        ),
    ] {
        let toml = node_toml(&redis);
        let err =
            Node::build(LoadedConfig::from_toml_str(&toml).expect("config")).expect_err("refused");
        assert!(
            err.issues.iter().any(|i| i.key == key),
            "{redis}: expected an issue at {key}, got {err:?}"
        );
    }
}
