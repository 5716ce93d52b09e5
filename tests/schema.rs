//! The schemas `switchboard schema` prints and the validators the gateway runs cannot
//! disagree. For every event the built-in plugins declare:
//! - payloads generated from the event's JSON Schema pass validation (a client event's
//!   declared payload check; a published event through the real `POST /api/v1/emit`);
//! - the shapes the contract calls invalid (a required field missing, an id empty or over
//!   `limits.max_id_chars`, a value outside an enum, a wrong type, not an object) are refused
//!   by both;
//! - any mutation of a valid payload is accepted by the schema exactly when the validator
//!   accepts it.

use axum::body::Body;
use http::{Request, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};
use switchboard::schema::Format;
use switchboard::{LoadedConfig, Node};
use tower::ServiceExt;

const MAX_ID: usize = 12;

fn config() -> String {
    format!(
        r#"
[auth.jwt]
secret = "schema-test-secret-0123456789-abcdefgh"
[api]
keys = ["k"]
[events]
plugins = ["conversation", "typing", "session"]
[limits]
max_id_chars = {MAX_ID}
"#
    )
}

/// One event's schema, with the definitions it refers to.
struct EventSchema {
    name: String,
    schema: Value,
    validator: jsonschema::Validator,
}

impl EventSchema {
    fn new(name: &str, schema: &Value) -> Self {
        let validator = jsonschema::draft202012::new(schema)
            .unwrap_or_else(|e| panic!("{name}: the printed schema does not compile: {e}"));
        EventSchema {
            name: name.to_owned(),
            schema: schema.clone(),
            validator,
        }
    }

    fn defs(&self) -> Map<String, Value> {
        self.schema
            .get("$defs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// The object schema of the payload itself (its `$ref` resolved).
    fn root(&self) -> Value {
        resolve(&self.schema, &self.defs())
    }
}

fn resolve(schema: &Value, defs: &Map<String, Value>) -> Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => resolve(defs.get(name).unwrap_or(&Value::Bool(true)), defs),
        None => schema.clone(),
    }
}

/// Any JSON value, shallow (payload fields that take any JSON).
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Values a mutation puts in a field: every JSON type, and the strings ids and enums are
/// checked on (empty, at the limit, over it, multi-byte).
fn nasty() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!("")),
        Just(json!("x".repeat(MAX_ID))),
        Just(json!("x".repeat(MAX_ID + 1))),
        Just(json!("é".repeat(MAX_ID))),
        Just(json!("é".repeat(MAX_ID + 1))),
        Just(json!("read")),
        Just(json!("completed")),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1.0e3f64..1.0e3).prop_map(Value::from),
        any_json(),
    ]
    .boxed()
}

/// Values that `schema` accepts (the subset of JSON Schema payload types use).
fn generate(schema: &Value, defs: &Map<String, Value>) -> BoxedStrategy<Value> {
    let schema = resolve(schema, defs);
    let Value::Object(m) = &schema else {
        return any_json();
    };
    if let Some(c) = m.get("const") {
        return Just(c.clone()).boxed();
    }
    if let Some(values) = m.get("enum").and_then(Value::as_array) {
        return proptest::sample::select(values.clone()).boxed();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(items) = m.get(key).and_then(Value::as_array) {
            let options: Vec<_> = items.iter().map(|i| generate(i, defs)).collect();
            return proptest::strategy::Union::new(options).boxed();
        }
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return any_json(),
    };
    let options: Vec<BoxedStrategy<Value>> = types
        .into_iter()
        .map(|t| match t {
            "string" => {
                let min = m.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                let max = m.get("maxLength").and_then(Value::as_u64).unwrap_or(24);
                proptest::string::string_regex(&format!("\\PC{{{min},{max}}}"))
                    .expect("regex")
                    .prop_map(Value::from)
                    .boxed()
            }
            "integer" => {
                let min = m.get("minimum").and_then(Value::as_i64).unwrap_or(i64::MIN);
                (min..=i64::MAX).prop_map(Value::from).boxed()
            }
            "number" => (-1.0e9f64..1.0e9).prop_map(Value::from).boxed(),
            "boolean" => any::<bool>().prop_map(Value::from).boxed(),
            "null" => Just(Value::Null).boxed(),
            "object" => object(m, defs),
            _ => any_json(),
        })
        .collect();
    proptest::strategy::Union::new(options).boxed()
}

/// An object with every required property and any of the optional ones.
fn object(m: &Map<String, Value>, defs: &Map<String, Value>) -> BoxedStrategy<Value> {
    let required: Vec<String> = m
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let props: Vec<(String, BoxedStrategy<Value>, bool)> = m
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .map(|(k, s)| (k.clone(), generate(s, defs), required.contains(k)))
                .collect()
        })
        .unwrap_or_default();
    let extra = match m.get("additionalProperties") {
        Some(Value::Object(s)) => {
            let value = generate(&Value::Object(s.clone()), defs);
            let key = m.get("propertyNames").map_or_else(
                || "[a-z]{1,8}".prop_map(Value::from).boxed(),
                |names| generate(names, defs),
            );
            prop::collection::vec((key, value), 0..3).boxed()
        }
        _ => Just(Vec::new()).boxed(),
    };
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = props
        .into_iter()
        .map(|(k, s, required)| {
            if required {
                s.prop_map(move |v| Some((k.clone(), v))).boxed()
            } else {
                proptest::option::of(s.prop_map(move |v| (k.clone(), v))).boxed()
            }
        })
        .collect();
    (fields, extra)
        .prop_map(|(fields, extra)| {
            let mut out = Map::new();
            for (k, v) in extra {
                if let Value::String(k) = k {
                    out.insert(k, v);
                }
            }
            out.extend(fields.into_iter().flatten());
            Value::Object(out)
        })
        .boxed()
}

/// A change to a valid payload.
#[derive(Debug, Clone)]
enum Mutation {
    Remove(usize),
    Set(usize, Value),
    Add(String, Value),
    Replace(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..16).prop_map(Mutation::Remove),
        (0usize..16, nasty()).prop_map(|(i, v)| Mutation::Set(i, v)),
        ("[a-z]{1,8}", nasty()).prop_map(|(k, v)| Mutation::Add(k, v)),
        nasty().prop_map(Mutation::Replace),
    ]
}

fn apply(payload: &Value, m: &Mutation) -> Value {
    let mut out = payload.clone();
    let Value::Object(map) = &mut out else {
        return out;
    };
    let key = |i: usize| map.keys().nth(i % map.len().max(1)).cloned();
    match m {
        Mutation::Remove(i) => {
            if let Some(k) = key(*i) {
                map.remove(&k);
            }
        }
        Mutation::Set(i, v) => {
            if let Some(k) = key(*i) {
                map.insert(k, v.clone());
            }
        }
        Mutation::Add(k, v) => {
            map.insert(k.clone(), v.clone());
        }
        Mutation::Replace(v) => return v.clone(),
    }
    out
}

/// How the gateway judges one event's payload: `Ok` accepted, `Err` refused with why.
trait Judge {
    fn judge(&self, name: &str, payload: &Value) -> Result<(), String>;
}

/// A client event: the check its declaration runs before the handler.
struct Inbound<'a>(&'a Node);

impl Judge for Inbound<'_> {
    fn judge(&self, name: &str, payload: &Value) -> Result<(), String> {
        let gw = self.0.gateway();
        let event = gw.events().inbound(name).expect("declared");
        event
            .payload()
            .check(name, payload, &gw.config().limits)
            .map_err(|e| e.to_string())
    }
}

/// A published event: `POST /api/v1/emit` on the node's router.
struct Published {
    app: axum::Router,
    rt: tokio::runtime::Runtime,
}

impl Judge for Published {
    fn judge(&self, name: &str, payload: &Value) -> Result<(), String> {
        let body = json!({ "event": name, "data": payload }).to_string();
        let request = Request::post("/api/v1/emit")
            .header("authorization", "Bearer k")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = self
            .rt
            .block_on(self.app.clone().oneshot(request))
            .expect("response");
        let status = response.status();
        let body = self
            .rt
            .block_on(http_body_util::BodyExt::collect(response.into_body()))
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        match status {
            StatusCode::OK => Ok(()),
            StatusCode::UNPROCESSABLE_ENTITY => Err(body),
            other => panic!("{name}: emit answered {other} ({body}) for {payload}"),
        }
    }
}

struct Fixture {
    node: Node,
    client: Vec<EventSchema>,
    published: Vec<EventSchema>,
}

fn fixture() -> Fixture {
    let node = Node::build(LoadedConfig::from_toml_str(&config()).expect("config")).expect("node");
    let doc: Value =
        serde_json::from_str(&node.catalog().render(Format::JsonSchema)).expect("json");
    let client = doc["clientToServer"]
        .as_object()
        .expect("clientToServer")
        .iter()
        .map(|(name, s)| EventSchema::new(name, s))
        .collect();
    let events = node.gateway().events();
    let published = doc["serverToClient"]
        .as_object()
        .expect("serverToClient")
        .iter()
        .filter(|(name, _)| events.outbound(name).is_some())
        .map(|(name, s)| EventSchema::new(name, s))
        .collect();
    Fixture {
        node,
        client,
        published,
    }
}

fn published_judge(node: &Node) -> Published {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(node.gateway().start());
    let app = {
        let _guard = rt.enter();
        node.router()
    };
    Published { app, rt }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

/// Generated payloads pass the schema (the generator is right) and the gateway.
fn generated_pass(events: &[EventSchema], judge: &dyn Judge) {
    for e in events {
        let mut runner = runner(128);
        let result = runner.run(&generate(&e.schema, &e.defs()), |payload| {
            prop_assert!(
                e.validator.is_valid(&payload),
                "{}: generated {payload} is not valid by its own schema",
                e.name
            );
            judge
                .judge(&e.name, &payload)
                .map_err(|why| TestCaseError::fail(format!("{}: {payload} refused: {why}", e.name)))
        });
        if let Err(err) = result {
            panic!("{err}");
        }
    }
}

/// Any mutation: the schema accepts it exactly when the gateway does.
fn mutations_agree(events: &[EventSchema], judge: &dyn Judge) {
    for e in events {
        let mut runner = runner(256);
        let strategy = (generate(&e.schema, &e.defs()), mutation());
        let result = runner.run(&strategy, |(payload, m)| {
            let mutated = apply(&payload, &m);
            let by_schema = e.validator.is_valid(&mutated);
            let by_gateway = judge.judge(&e.name, &mutated);
            prop_assert_eq!(
                by_schema,
                by_gateway.is_ok(),
                "{}: schema says {}, gateway says {:?}, for {}",
                e.name,
                by_schema,
                by_gateway,
                mutated
            );
            Ok(())
        });
        if let Err(err) = result {
            panic!("{err}");
        }
    }
}

/// The shapes the contract calls invalid, derived from each schema: both refuse them.
fn documented_invalid_refused(events: &[EventSchema], judge: &dyn Judge) {
    let mut runner = runner(1);
    for e in events {
        let root = e.root();
        let defs = e.defs();
        let valid = generate(&e.schema, &defs)
            .new_tree(&mut runner)
            .expect("value")
            .current();
        let mut shapes: Vec<(String, Value)> = vec![
            ("not an object".to_owned(), json!("text")),
            ("an array".to_owned(), json!([valid.clone()])),
            ("null".to_owned(), Value::Null),
        ];
        let required: Vec<&str> = root["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let props = root["properties"].as_object().cloned().unwrap_or_default();
        for (field, schema) in &props {
            let schema = resolve(schema, &defs);
            let with = |v: Value| {
                let mut p = valid.clone();
                p[field.as_str()] = v;
                p
            };
            if required.contains(&field.as_str()) {
                let mut p = valid.clone();
                p.as_object_mut().expect("object").remove(field);
                shapes.push((format!("{field} missing"), p));
            }
            if schema.get("maxLength").is_some() {
                shapes.push((format!("{field} empty"), with(json!(""))));
                shapes.push((
                    format!("{field} over the limit"),
                    with(json!("x".repeat(MAX_ID + 1))),
                ));
            }
            if schema.get("enum").is_some() {
                shapes.push((format!("{field} outside its enum"), with(json!("bogus"))));
            }
            if schema.get("type") == Some(&json!("string")) {
                shapes.push((format!("{field} a number"), with(json!(7))));
            }
            if schema.get("type") == Some(&json!("integer")) {
                shapes.push((format!("{field} a string"), with(json!("7"))));
                shapes.push((format!("{field} negative"), with(json!(-1))));
            }
        }
        assert!(
            shapes.len() > 3,
            "{}: a payload with no checked field",
            e.name
        );
        for (what, payload) in shapes {
            assert!(
                !e.validator.is_valid(&payload),
                "{}: the schema accepts a payload with {what}: {payload}",
                e.name
            );
            assert!(
                judge.judge(&e.name, &payload).is_err(),
                "{}: the gateway accepts a payload with {what}: {payload}",
                e.name
            );
        }
    }
}

#[test]
fn every_event_of_the_built_in_plugins_has_a_schema() {
    let f = fixture();
    let names = |v: &[EventSchema]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let client = names(&f.client);
    for e in [
        "conversation:join",
        "conversation:leave",
        "typing:start",
        "typing:stop",
        "session:join",
        "session:leave",
        "auth:refresh",
    ] {
        assert!(client.iter().any(|n| n == e), "{e} missing from {client:?}");
    }
    let published = names(&f.published);
    for e in [
        "message:received",
        "message:status",
        "session:message-sent",
        "session:node-executed",
        "session:status-changed",
        "session:completed",
    ] {
        assert!(
            published.iter().any(|n| n == e),
            "{e} missing from {published:?}"
        );
    }
}

#[test]
fn generated_client_events_pass_validation() {
    let f = fixture();
    generated_pass(&f.client, &Inbound(&f.node));
}

#[test]
fn generated_published_events_pass_the_api() {
    let f = fixture();
    generated_pass(&f.published, &published_judge(&f.node));
}

#[test]
fn client_event_schemas_and_validation_agree_on_every_mutation() {
    let f = fixture();
    mutations_agree(&f.client, &Inbound(&f.node));
}

#[test]
fn published_event_schemas_and_the_api_agree_on_every_mutation() {
    let f = fixture();
    mutations_agree(&f.published, &published_judge(&f.node));
}

#[test]
fn documented_invalid_client_payloads_are_refused_by_both() {
    let f = fixture();
    documented_invalid_refused(&f.client, &Inbound(&f.node));
}

#[test]
fn documented_invalid_published_payloads_are_refused_by_both() {
    let f = fixture();
    documented_invalid_refused(&f.published, &published_judge(&f.node));
}

#[test]
fn id_limits_follow_the_config() {
    let f = fixture();
    let doc: Value =
        serde_json::from_str(&f.node.catalog().render(Format::JsonSchema)).expect("json");
    let id = &doc["clientToServer"]["conversation:join"]["$defs"]["Id"];
    assert_eq!(id["maxLength"], json!(MAX_ID), "{id}");
    assert_eq!(id["minLength"], json!(1), "{id}");
}
