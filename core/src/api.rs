//! The HTTP API (CONTRACT §3): emit (to rooms, to users, in batches), the control calls
//! (rooms, users, nodes), presence, history, health, readiness and metrics; and the
//! admin page (§6).

use std::borrow::Cow;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::runtime::{Gateway, Publish, PublishError};

mod admin;
mod direct;
mod layers;

pub(crate) use direct::{Direct, Next};

/// A JSON error response `{"error": ..., "details": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    details: Value,
}

impl ApiError {
    /// An error with `status` and a message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            details: Value::Null,
        }
    }
    fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
    /// A 422 about one field: `"{field}: {reason}"`, with `details.field` naming it.
    fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {reason}"),
        )
        .details(json!({ "field": field }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "error": self.error, "details": self.details })),
        )
            .into_response()
    }
}

/// The HTTP API routes, sharing the gateway.
pub fn router(gw: Gateway) -> Router {
    let body_limit = gw.config().limits.max_http_body_bytes.bytes();
    let api = Router::new()
        .route("/api/v1/emit", post(emit))
        .route("/api/v1/presence", get(presence))
        .route("/api/v1/presence/{user_id}", get(presence_user))
        .route("/api/v1/history/{room}", get(history))
        .route("/api/v1/rooms", get(rooms_list))
        .route("/api/v1/rooms/join", post(rooms_join))
        .route("/api/v1/rooms/leave", post(rooms_leave))
        .route("/api/v1/rooms/{room}", get(room_detail))
        .route("/api/v1/users/{user_id}/disconnect", post(user_disconnect))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/{*rest}", axum::routing::any(api_not_found))
        .method_not_allowed_fallback(method_not_allowed)
        // Counted, limited and key-checked by one layer on each route: every layer of a
        // router wraps each route on its own, and each request clones every wrapper.
        .route_layer((
            layers::CountLayer(gw.clone()),
            DefaultBodyLimit::max(body_limit),
            layers::KeyLayer(gw.clone()),
        ));
    let mut operator = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if gw.config().admin.enabled {
        operator = operator.merge(admin::router());
    }
    operator
        .route_layer(layers::CountLayer(gw.clone()))
        .merge(api)
        .with_state(gw)
}

/// `GET /healthz`: the process is up (served on every listener).
pub(crate) async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// A known `/api` path with another method: 405, once the key is checked (as for a route).
async fn method_not_allowed(State(gw): State<Gateway>, req: axum::extract::Request) -> ApiError {
    match layers::check_key(&gw, &req) {
        Ok(()) => ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
        Err(e) => e,
    }
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

/// Most emits one batch may carry.
const MAX_BATCH: usize = 1000;

/// One emit: into a room (`room`, or the one the event's plugin derives) or to a user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitBody {
    event: String,
    data: Value,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// One emit as sent (the fast path of a single emit): its strings borrowed from the body
/// where they need no unescaping, its data kept as JSON text.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmitRaw<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user: Option<Cow<'a, str>>,
}

/// Checks the body is JSON of at most the body limit, and parses it.
fn json_body(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    let body = json_bytes(gw, content_type, body)?;
    parse_json(&body)
}

/// Parses a body that is JSON.
fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "Body is not valid JSON")
            .details(json!(e.to_string()))
    })
}

/// A header's value as text, when it is all visible ASCII (as `HeaderValue::to_str`).
fn header_str(value: &[u8]) -> Option<&str> {
    visible_ascii(value)
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Whether a header's value is all visible ASCII, tabs and spaces (what
/// `HeaderValue::to_str` takes).
fn visible_ascii(value: &[u8]) -> bool {
    // Without stopping early, so it runs many bytes at a time.
    value
        .iter()
        .fold(true, |ok, &b| ok & ((b == b'\t') | (32..127).contains(&b)))
}

/// Whether a media type (without parameters) is JSON: `application/json` or
/// `application/*+json`, in any case.
fn is_json_media_type(media: &str) -> bool {
    let m = media.trim();
    let starts = |p: &str| m.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    let ends = |p: &str| {
        m.len()
            .checked_sub(p.len())
            .and_then(|i| m.get(i..))
            .is_some_and(|t| t.eq_ignore_ascii_case(p))
    };
    m.eq_ignore_ascii_case("application/json")
        || (m.len() >= "application/+json".len() && starts("application/") && ends("+json"))
}

/// The body, once its content type (`content_type`) says JSON and it is within the body
/// limit.
fn json_bytes(
    gw: &Gateway,
    content_type: Option<&[u8]>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let is_json = content_type.is_some_and(|v| {
        v == b"application/json"
            || header_str(v)
                .and_then(|v| v.split(';').next())
                .is_some_and(is_json_media_type)
    });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                format!(
                    "Body too large (limit {} bytes)",
                    gw.config().limits.max_http_body_bytes.bytes()
                ),
            )
        } else {
            ApiError::new(status, "Could not read the body")
        }
    })
}

/// Reads a JSON object body of type `T`; a wrong shape is a 400 naming the field.
fn typed<T: serde::de::DeserializeOwned>(value: &Value, shape: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Body must be {shape}: {}", e.into_inner()),
        )
        .details(json!({ "field": path }))
    })
}

/// Checks an id the API takes (a user id, a room): non-empty, not too long.
fn check_id(gw: &Gateway, field: &str, value: &str, extra: usize) -> Result<(), ApiError> {
    let max = gw.config().limits.max_id_chars + extra;
    if value.trim().is_empty() || crate::limits::over_chars(value, max) {
        return Err(ApiError::invalid(
            field,
            format_args!("must be a non-empty string of at most {max} characters"),
        ));
    }
    Ok(())
}

fn control_error(e: &crate::runtime::ControlError) -> ApiError {
    match e {
        crate::runtime::ControlError::NoSuchUser(_) => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

const EMIT_SHAPE: &str = "{\"event\": string, \"data\": object, \"room\"?: string} or {\"event\", \"data\", \"user\": string}";

/// The request's `Content-Type`, and nothing else of its headers.
struct ContentType(Option<header::HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ContentType {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ContentType(
            parts.headers.get(header::CONTENT_TYPE).cloned(),
        ))
    }
}

async fn emit(
    State(gw): State<Gateway>,
    ContentType(content_type): ContentType,
    body: Result<Bytes, BytesRejection>,
) -> Result<JsonOk, ApiError> {
    emit_bytes(&gw, content_type.as_ref().map(|v| v.as_bytes()), body).await
}

/// A 200 answer's JSON text.
struct JsonOk(Vec<u8>);

impl JsonOk {
    /// `value` as JSON text.
    fn of(value: &impl serde::Serialize) -> Self {
        let mut text = Vec::with_capacity(128);
        // Serializing our own answers (strings, numbers, maps with string keys) cannot fail.
        let _ = serde_json::to_writer(&mut text, value);
        JsonOk(text)
    }
}

impl IntoResponse for JsonOk {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// `POST /api/v1/emit` once its key is checked: the body's emit or batch, answered.
async fn emit_bytes(
    gw: &Gateway,
    content_type: Option<&[u8]>,
    body: Result<Bytes, BytesRejection>,
) -> Result<JsonOk, ApiError> {
    let body = json_bytes(gw, content_type, body)?;
    // One emit, well formed: read straight into its shape. Anything else (a batch, or a
    // body with a mistake) goes through a JSON value, whose errors name the field.
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !batch && let Ok(one) = serde_json::from_slice::<EmitRaw>(&body) {
        return emit_raw(gw, one).await;
    }
    let value = parse_json(&body)?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "An empty batch: send at least one emit",
                ));
            }
            if items.len() > MAX_BATCH {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "A batch carries at most {MAX_BATCH} emits; this one has {}",
                        items.len()
                    ),
                ));
            }
            let mut results = Vec::with_capacity(items.len());
            for item in &items {
                let (status, mut body) = match emit_one(gw, item).await {
                    Ok(v) => (StatusCode::OK, v),
                    Err(e) => (e.status, json!({ "error": e.error, "details": e.details })),
                };
                body["status"] = Value::from(status.as_u16());
                results.push(body);
            }
            Ok(JsonOk::of(&results))
        }
        other => emit_one(gw, &other).await.map(|v| JsonOk::of(&v)),
    }
}

/// One emit of a body or of a batch item: its answer, or its error.
async fn emit_one(gw: &Gateway, value: &Value) -> Result<Value, ApiError> {
    let body: EmitBody = typed(value, EMIT_SHAPE)?;
    emit_body(gw, body).await
}

/// Refuses an event name that is empty or too long.
fn check_event_name(event: &str) -> Result<(), ApiError> {
    if event.is_empty() || crate::limits::over_chars(event, 128) {
        return Err(ApiError::invalid(
            "event",
            "must be a non-empty string of at most 128 characters",
        ));
    }
    Ok(())
}

/// One emit read with its data as JSON text: into a room, delivered as sent; to a user,
/// as [`emit_body`].
async fn emit_raw(gw: &Gateway, body: EmitRaw<'_>) -> Result<JsonOk, ApiError> {
    if body.user.is_some() {
        let data = parse_json(body.data.get().as_bytes())?;
        let body = EmitBody {
            event: body.event.into_owned(),
            data,
            room: body.room.map(Cow::into_owned),
            user: body.user.map(Cow::into_owned),
        };
        return emit_body(gw, body).await.map(|v| JsonOk::of(&v));
    }
    check_event_name(&body.event)?;
    match gw
        .publish_raw(&body.event, body.room.as_deref(), body.data)
        .await
    {
        Ok(p) => Ok(Answer::of(&body.event, &p).json()),
        Err(e) => Err(publish_error(gw, e)),
    }
}

/// The answer to an emit into a room, written straight from its parts.
#[derive(serde::Serialize)]
struct Answer<'a> {
    room: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dropped: bool,
    #[serde(rename = "localOnly", skip_serializing_if = "std::ops::Not::not")]
    local_only: bool,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "offset_text"
    )]
    offset: Option<&'a crate::broker::Position>,
}

/// An answer's offset as its text (`epoch:n`).
fn offset_text<S: serde::Serializer>(
    offset: &Option<&crate::broker::Position>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match offset {
        Some(p) => s.collect_str(p),
        None => s.serialize_none(),
    }
}

impl<'a> Answer<'a> {
    fn of(event: &'a str, p: &'a crate::runtime::Published) -> Self {
        Answer {
            room: &p.room,
            event,
            dropped: p.dropped,
            local_only: p.local_only,
            offset: p.offset.as_ref(),
        }
    }

    /// The answer as JSON text, the same as its `Serialize` writes, written directly.
    fn json(&self) -> JsonOk {
        let offset = self.offset.map_or(0, |p| p.epoch.len() + 21);
        let mut out = Vec::with_capacity(48 + self.room.len() + self.event.len() + offset);
        out.extend_from_slice(b"{\"room\":");
        crate::json::push_str(&mut out, self.room);
        out.extend_from_slice(b",\"event\":");
        crate::json::push_str(&mut out, self.event);
        if self.dropped {
            out.extend_from_slice(b",\"dropped\":true");
        }
        if self.local_only {
            out.extend_from_slice(b",\"localOnly\":true");
        }
        if let Some(p) = self.offset {
            out.extend_from_slice(b",\"offset\":");
            if crate::json::needs_escape(&p.epoch) {
                crate::json::push_str(&mut out, &p.text());
            } else {
                out.push(b'"');
                out.extend_from_slice(p.epoch.as_bytes());
                out.push(b':');
                out.extend_from_slice(itoa::Buffer::new().format(p.n).as_bytes());
                out.push(b'"');
            }
        }
        out.push(b'}');
        JsonOk(out)
    }
}

/// The answer to an emit into a room, as a value (a batch item's).
fn published(event: &str, p: &crate::runtime::Published) -> Value {
    serde_json::to_value(Answer::of(event, p)).unwrap_or(Value::Null)
}

/// One emit, read: its answer, or its error.
async fn emit_body(gw: &Gateway, body: EmitBody) -> Result<Value, ApiError> {
    check_event_name(&body.event)?;
    if let Some(user) = body.user {
        if body.room.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Give \"room\" or \"user\", not both",
            )
            .details(json!({ "field": "user" })));
        }
        check_id(gw, "user", &user, 0)?;
        let event = body.event.clone();
        return match gw.send_to_user(&user, &body.event, body.data).await {
            Ok(sent) => {
                let mut out = json!({ "user": user, "event": event, "sockets": sent.sockets });
                if sent.dropped {
                    out["dropped"] = Value::Bool(true);
                }
                Ok(out)
            }
            Err(e) => Err(publish_error(gw, e)),
        };
    }
    let req = Publish {
        event: body.event,
        data: body.data,
        room: body.room,
    };
    let event = req.event.clone();
    match gw.publish(req).await {
        Ok(p) => Ok(published(&event, &p)),
        Err(e) => Err(publish_error(gw, e)),
    }
}

fn publish_error(gw: &Gateway, e: PublishError) -> ApiError {
    match e {
        e @ (PublishError::UnknownEvent(_) | PublishError::NoSuchUser(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        }
        PublishError::Invalid { field, message } => {
            gw.metrics().error_with("api_invalid", &message);
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
                .details(json!({ "field": field }))
        }
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// `{"room", "userId"}` of `POST /api/v1/rooms/join` and `/leave`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomUser {
    room: String,
    #[serde(rename = "userId")]
    user_id: String,
}

const ROOM_USER_SHAPE: &str = "{\"room\": string, \"userId\": string}";

async fn rooms_join(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    room_user(&gw, &headers, body, true).await
}

async fn rooms_leave(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    room_user(&gw, &headers, body, false).await
}

/// `rooms/join` (`join`) or `rooms/leave`: every socket of the user, on every node.
async fn room_user(
    gw: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    join: bool,
) -> Result<Response, ApiError> {
    let value = json_body(gw, headers, body)?;
    let b: RoomUser = typed(&value, ROOM_USER_SHAPE)?;
    check_id(gw, "room", &b.room, 64)?;
    check_id(gw, "userId", &b.user_id, 0)?;
    let n = if join {
        gw.join_user(&b.user_id, &b.room).await
    } else {
        gw.leave_user(&b.user_id, &b.room).await
    }
    .map_err(|e| control_error(&e))?;
    Ok(axum::Json(json!({ "room": b.room, "userId": b.user_id, "sockets": n })).into_response())
}

/// `{"reason"?}` of `POST /api/v1/users/{userId}/disconnect`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn user_disconnect(
    State(gw): State<Gateway>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_id(&gw, "userId", &user_id, 0)?;
    // The body is optional: none, or `{"reason": "..."}`.
    let empty = body
        .as_ref()
        .is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace));
    let b: DisconnectBody = if empty {
        DisconnectBody::default()
    } else {
        let value = json_body(&gw, &headers, body)?;
        typed(&value, "{\"reason\"?: string}")?
    };
    let reason = b.reason.unwrap_or_default();
    if reason.chars().count() > 200 {
        return Err(ApiError::invalid("reason", "at most 200 characters"));
    }
    let n = gw
        .disconnect_user(&user_id, &reason)
        .await
        .map_err(|e| control_error(&e))?;
    Ok(axum::Json(json!({ "userId": user_id, "sockets": n })).into_response())
}

/// `?prefix=&limit=&cursor=` of `GET /api/v1/rooms`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsQuery {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn rooms_list(
    State(gw): State<Gateway>,
    query: Result<axum::extract::Query<RoomsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Bad query: {}", e.body_text()),
        )
    })?;
    let limit = match q.limit.as_deref() {
        None | Some("") => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    "must be a whole number from 1 to 1000",
                ));
            }
        },
    };
    let prefix = q.prefix.unwrap_or_default();
    let cursor = q.cursor.filter(|c| !c.is_empty());
    // One more than the page: whether there is a next page.
    let all = gw
        .cluster_rooms(&prefix, cursor.as_deref(), Some(limit + 1))
        .await
        .map_err(|e| control_error(&e))?;
    let mut page: Vec<Value> = Vec::with_capacity(limit.min(all.len()));
    let mut next = Value::Null;
    let after = all
        .iter()
        .filter(|(room, _)| cursor.as_ref().is_none_or(|c| room.as_str() > c.as_str()));
    for (room, view) in after {
        if page.len() == limit {
            next = page
                .last()
                .and_then(|v| v.get("room"))
                .cloned()
                .unwrap_or(Value::Null);
            break;
        }
        page.push(json!({ "room": room, "users": view.users.len(), "sockets": view.sockets }));
    }
    Ok(axum::Json(json!({ "rooms": page, "next": next })).into_response())
}

async fn room_detail(
    State(gw): State<Gateway>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&gw, "room", &room, 64)?;
    // The first room by name that starts with its own name is the room itself.
    let all = gw
        .cluster_rooms(&room, None, Some(1))
        .await
        .map_err(|e| control_error(&e))?;
    let view = all.get(&room).cloned().unwrap_or_default();
    Ok(
        axum::Json(json!({ "room": room, "users": view.users, "sockets": view.sockets }))
            .into_response(),
    )
}

async fn nodes(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let nodes = gw.nodes_info().await.map_err(|e| control_error(&e))?;
    Ok(axum::Json(json!({ "nodes": nodes })).into_response())
}

async fn presence(State(gw): State<Gateway>) -> Result<Response, ApiError> {
    let mut users = gw
        .presence()
        .online_users()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    users.sort();
    Ok(axum::Json(json!({ "users": users })).into_response())
}

async fn presence_user(
    State(gw): State<Gateway>,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let n = gw
        .presence()
        .connections(&user_id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(axum::Json(json!({ "userId": user_id, "online": n > 0, "connections": n })).into_response())
}

async fn readyz(State(gw): State<Gateway>) -> Response {
    if gw.ready().await {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

/// `GET /metrics`: the OpenMetrics 1.0 text Prometheus scrapes (the `# EOF`-terminated
/// exposition prometheus-client writes), with its own content type.
async fn metrics(State(gw): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics().encode(),
    )
        .into_response()
}

/// `?since=&limit=` of `GET /api/v1/history/{room}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

async fn history(
    State(gw): State<Gateway>,
    Path(room): Path<String>,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Bad query: {}", e.body_text()),
        )
    })?;
    if let Some(reason) = crate::runtime::bad_room_name(&room, &gw.config().limits) {
        return Err(ApiError::invalid("room", reason));
    }
    let max = gw.config().history.size.max(1);
    let limit = match q.limit.as_deref() {
        None | Some("") => max.min(100),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(max),
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format_args!("must be a whole number from 1 to {max}"),
                ));
            }
        },
    };
    // `since` takes a history offset, or the offset a socket received with an event.
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            let position = s.split('~').next().unwrap_or(s);
            Some(
                position
                    .parse::<crate::broker::Position>()
                    .map_err(|e| ApiError::invalid("since", e))?,
            )
        }
    };
    let h = gw
        .history(&room, since.as_ref(), limit)
        .await
        .map_err(|e| match e {
            crate::BrokerError::Unsupported(m) => ApiError::new(StatusCode::NOT_IMPLEMENTED, m),
            other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        })?;
    let events: Vec<Value> = h
        .events
        .iter()
        .map(|d| {
            let data: Value = serde_json::from_str(d.payload.get()).unwrap_or(Value::Null);
            json!({
                "event": &*d.event,
                "data": data,
                "offset": d.position.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    Ok(
        axum::Json(json!({ "room": room, "events": events, "complete": h.complete }))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Answer, is_json_media_type};
    use crate::broker::Position;

    proptest! {
        /// The answer written directly is byte for byte what its `Serialize` writes.
        #[test]
        fn an_answer_written_directly_is_its_serialization(
            room in any::<String>(),
            event in any::<String>(),
            dropped in any::<bool>(),
            local_only in any::<bool>(),
            offset in proptest::option::of((any::<String>(), any::<u64>())),
        ) {
            let offset = offset.map(|(epoch, n)| Position::new(epoch, n));
            let answer = Answer {
                room: &room,
                event: &event,
                dropped,
                local_only,
                offset: offset.as_ref(),
            };
            let expected = serde_json::to_vec(&answer).expect("an answer serializes");
            let written = answer.json().0;
            prop_assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn an_answer_with_characters_to_escape_is_written_as_json_escapes_them() {
        let offset = Position::new("e\"1", 7);
        let answer = Answer {
            room: "a\"b\\c\u{1}\u{8}\n",
            event: "é\t",
            dropped: false,
            local_only: true,
            offset: Some(&offset),
        };
        assert_eq!(
            String::from_utf8_lossy(&answer.json().0),
            r#"{"room":"a\"b\\c\u0001\b\n","event":"é\t","localOnly":true,"offset":"e\"1:7"}"#
        );
    }

    #[test]
    fn json_media_types_are_application_json_and_application_plus_json_in_any_case() {
        for yes in [
            "application/json",
            " Application/JSON ",
            "application/merge-patch+json",
            "application/+json",
        ] {
            assert!(is_json_media_type(yes), "{yes}");
        }
        for no in [
            "text/json",
            "application/jsonx",
            "application/xml",
            "application+json",
            "json",
            "",
            "application/é+json\u{0}",
        ] {
            assert!(!is_json_media_type(no), "{no}");
        }
    }
}
