//! The HTTP API (CONTRACT §3): emit, presence, health, readiness and metrics.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::runtime::{Gateway, Publish, PublishError};

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
        .route("/api/{*rest}", axum::routing::any(api_not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            require_key,
        ))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(gw)
}

/// `GET /healthz`: the process is up (served on every listener).
pub(crate) async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

async fn require_key(
    State(gw): State<Gateway>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Missing API key: send Authorization: Bearer <key>",
        )
        .into_response();
    };
    // Compare against every key in constant time, without stopping at the first match.
    let mut ok = 0u8;
    for k in &gw.config().api.keys {
        ok |= k.as_bytes().ct_eq(key.as_bytes()).unwrap_u8();
    }
    if ok == 1 {
        next.run(req).await
    } else {
        gw.metrics().error("api_unauthorized");
        ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key").into_response()
    }
}

async fn emit(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let body = body.map_err(|e| {
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
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "Body is not valid JSON")
            .details(json!(e.to_string()))
    })?;
    let req: Publish = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Body must be {{\"event\": string, \"data\": object, \"room\"?: string}}: {}",
                e.into_inner()
            ),
        )
        .details(json!({ "field": path }))
    })?;
    let event = req.event.clone();
    match gw.publish(req).await {
        Ok(p) => {
            let mut out = json!({ "room": &*p.room, "event": event });
            if p.dropped {
                out["dropped"] = Value::Bool(true);
            }
            if p.local_only {
                out["localOnly"] = Value::Bool(true);
            }
            if let Some(offset) = &p.offset {
                out["offset"] = Value::from(offset.to_string());
            }
            Ok((StatusCode::OK, axum::Json(out)).into_response())
        }
        Err(e @ PublishError::UnknownEvent(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(PublishError::Invalid(msg)) => {
            gw.metrics().error("api_invalid");
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg))
        }
        Err(e @ PublishError::Broker(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
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

async fn metrics(State(gw): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
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
    let limits = &gw.config().limits;
    if room.is_empty() || room.chars().count() > limits.max_id_chars + 64 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "room: must be a non-empty string of at most {} characters",
                limits.max_id_chars + 64
            ),
        ));
    }
    let max = gw.config().history.size.max(1);
    let limit = match q.limit.as_deref() {
        None | Some("") => max.min(100),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(max),
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("limit: must be a whole number from 1 to {max}"),
                ));
            }
        },
    };
    // `since` takes a history offset, or the offset a socket received with an event.
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            let position = s.split('~').next().unwrap_or(s);
            Some(position.parse::<crate::broker::Position>().map_err(|e| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("since: {e}"))
            })?)
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
