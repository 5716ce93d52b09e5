//! `bare-socketioxide`: the floor Switchboard is measured against. A socketioxide 0.18.9
//! server with a JWT connect middleware, `conversation:join`, typing relay to the room
//! except the sender and `POST /api/v1/emit` into a room; nothing else (no presence, no
//! limits, no hooks, no metrics, no logging).
//!
//! ```text
//! BENCH_SECRET=... BENCH_API_KEY=... bare-socketioxide --listen 127.0.0.1:3102
//! ```

use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

/// The namespace, as Switchboard's default.
const NS: &str = "/messages";

/// The authenticated user of a socket.
#[derive(Clone)]
struct UserId(String);

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Why a connection was refused (the contract's messages).
#[derive(Debug)]
struct AuthFailed(&'static str);

impl std::fmt::Display for AuthFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Clone)]
struct Keys {
    decoding: DecodingKey,
    validation: Validation,
}

fn authenticate(keys: &Keys, socket: &SocketRef, auth: Option<Value>) -> Result<(), AuthFailed> {
    let token = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or(AuthFailed("Authentication failed: No token provided"))?;
    let data = jsonwebtoken::decode::<Claims>(token, &keys.decoding, &keys.validation)
        .map_err(|_| AuthFailed("Authentication failed: Invalid token"))?;
    socket.extensions.insert(UserId(data.claims.sub));
    Ok(())
}

fn conversation_id(data: &Value) -> Option<&str> {
    data.get("conversationId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

async fn on_connect(socket: SocketRef) {
    socket.on(
        "conversation:join",
        |s: SocketRef, ack: AckSender, Data(data): Data<Value>| async move {
            let Some(id) = conversation_id(&data) else {
                let _ = ack.send(&json!({"success": false, "error": "conversationId required"}));
                return;
            };
            s.join(format!("conversation:{id}"));
            let reply = json!({"conversationId": id, "success": true});
            let _ = s.emit("conversation:joined", &reply);
            let _ = ack.send(&reply);
        },
    );
    for (event, typing) in [("typing:start", true), ("typing:stop", false)] {
        socket.on(
            event,
            move |s: SocketRef, Data(data): Data<Value>| async move {
                let Some(id) = conversation_id(&data) else {
                    return;
                };
                let user = s
                    .extensions
                    .get::<UserId>()
                    .map(|u| u.0)
                    .unwrap_or_default();
                let out = json!({"conversationId": id, "userId": user, "isTyping": typing});
                let _ = s.to(format!("conversation:{id}")).emit(event, &out).await;
            },
        );
    }
}

#[derive(Clone)]
struct Api {
    io: SocketIo,
    key: String,
}

#[derive(Deserialize)]
struct Emit {
    event: String,
    data: Value,
    #[serde(default)]
    room: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "details": null})),
    )
        .into_response()
}

async fn emit(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key != Some(api.key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let Ok(req) = serde_json::from_slice::<Emit>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let room = match req.room {
        Some(r) => r,
        None => match (
            conversation_id(&req.data),
            req.data.get("sessionId").and_then(Value::as_str),
        ) {
            (Some(c), _) => format!("conversation:{c}"),
            (None, Some(s)) => format!("session:{s}"),
            (None, None) => return error(StatusCode::NOT_FOUND, "Unknown event without a room"),
        },
    };
    let Some(ns) = api.io.of(NS) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "namespace missing");
    };
    let _ = ns.to(room.clone()).emit(&req.event, &req.data).await;
    axum::Json(json!({"room": room, "event": req.event})).into_response()
}

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:3000".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            _ => {
                eprintln!(
                    "usage: bare-socketioxide [--listen ADDR]  (env BENCH_SECRET, BENCH_API_KEY)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let (Ok(secret), Ok(key)) = (
        std::env::var("BENCH_SECRET"),
        std::env::var("BENCH_API_KEY"),
    ) else {
        eprintln!("bare-socketioxide: set BENCH_SECRET and BENCH_API_KEY");
        return ExitCode::from(2);
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 60;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let keys = Keys {
        decoding: DecodingKey::from_secret(secret.as_bytes()),
        validation,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bare-socketioxide: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let (layer, io) = SocketIo::builder().build_layer();
        let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
            let keys = keys.clone();
            async move { authenticate(&keys, &s, auth.ok()) }
        };
        io.ns(NS, on_connect.with(middleware));
        let app = Router::new()
            .route("/api/v1/emit", post(emit))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .with_state(Api { io, key })
            .layer(layer);
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare-socketioxide: cannot bind {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        let shutdown = async {
            tokio::select! {
                () = stop => {},
                () = term => {},
            }
        };
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare-socketioxide: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
