//! The one task that runs a native socket: handshake, then a single poll loop over the
//! socket's reads, its outbound queue and its ping timer, then the close handshake.
//!
//! Rarely-used phases (the handshake, handling one inbound event, closing) are boxed, so an
//! idle socket's task holds only the loop's small state.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::json;
use switchboard_core::{AuthError, Gateway, Handshake, Identity, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig as WsProtocol};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use crate::conn::{Close, Hub, Next, WsConn};
use crate::frame::{self, FirstFrame};

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// What every socket task shares: the gateway, the fan-out index and the settings.
pub(crate) struct Ctx {
    pub(crate) gw: Gateway,
    pub(crate) hub: Arc<Hub>,
    pub(crate) protocol: WsProtocol,
    pub(crate) ping_interval: Duration,
    pub(crate) close_timeout: Duration,
}

/// What the upgrade request carried that the handshake may need (copied out of the request,
/// so the request and its read buffer are freed before the socket starts).
pub(crate) struct UpgradeInfo {
    pub(crate) authorization: Option<http::HeaderValue>,
    pub(crate) query: Option<String>,
}

/// A handshake that did not produce an identity.
struct Refusal {
    /// The `{"op": "error"}` message to send first, if any.
    message: Option<String>,
    /// The close to send, if the socket is still usable.
    close: Option<Close>,
}

/// Runs one socket from the upgrade to the end.
pub(crate) async fn serve(ctx: Arc<Ctx>, upgrade: OnUpgrade, info: UpgradeInfo) {
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ctx.protocol))
            .await;
    let identity = match Box::pin(handshake(&ctx, &mut ws, info)).await {
        Ok(identity) if !ctx.hub.is_closing() => identity,
        Ok(_) => {
            Box::pin(finish(
                &mut ws,
                None,
                None,
                Some(Close::SHUTDOWN),
                ctx.close_timeout,
            ))
            .await;
            return;
        }
        Err(r) => {
            Box::pin(finish(
                &mut ws,
                None,
                r.message.map(|m| frame::op_error(&m)),
                r.close,
                ctx.close_timeout,
            ))
            .await;
            return;
        }
    };
    let conn = WsConn::new(ctx.hub.clone());
    conn.push(frame::connected(
        &identity.user_id,
        conn.socket_id().as_str(),
    ));
    ctx.hub.insert(&conn);
    let session = Box::pin(ctx.gw.connect(conn.clone(), identity)).await;

    let close = run(&ctx, &mut ws, &conn, &session).await;

    ctx.hub.remove(&conn, &session.rooms());
    conn.finish();
    Box::pin(ctx.gw.disconnect(&session)).await;
    drop(session);
    Box::pin(finish(&mut ws, Some(&conn), None, close, ctx.close_timeout)).await;
}

/// Waits for `{"op": "connect"}` and authenticates it.
async fn handshake(ctx: &Ctx, ws: &mut Ws, info: UpgradeInfo) -> Result<Identity, Refusal> {
    let deadline = Instant::now() + ctx.gw.config().limits.handshake_timeout.get();
    let first = loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err(Refusal {
                    message: Some("Handshake timeout".to_owned()),
                    close: Some(Close::HANDSHAKE_TIMEOUT),
                });
            }
            Ok(None) => {
                return Err(Refusal {
                    message: None,
                    close: None,
                });
            }
            Ok(Some(Err(e))) => {
                return Err(Refusal {
                    message: None,
                    close: close_for(&e),
                });
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => break frame::decode_first(t.as_str()),
            Message::Binary(_) => break FirstFrame::Other,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Close(_) => {}
        }
    };
    let mut headers = HeaderMap::new();
    let query;
    let auth;
    let handshake = match first {
        FirstFrame::Connect(token) => {
            if let Some(value) = info.authorization {
                headers.insert(http::header::AUTHORIZATION, value);
            }
            query = info.query;
            auth = json!({ "token": token });
            Handshake {
                auth: Some(&auth),
                headers: &headers,
                query: query.as_deref(),
            }
        }
        // Refused as carrying no token: nothing else of the request counts.
        FirstFrame::Other => Handshake {
            auth: None,
            headers: &headers,
            query: None,
        },
    };
    match ctx.gw.authenticate(&handshake).await {
        Ok(identity) => Ok(identity),
        Err(e) => Err(Refusal {
            message: Some(auth_message(&e)),
            close: Some(Close::AUTH),
        }),
    }
}

fn auth_message(e: &AuthError) -> String {
    e.to_string()
}

/// Why the loop woke up.
enum Wake {
    Read(Message),
    ReadError(WsError),
    Ended,
    Tick,
    Close(Close),
    WriteError(WsError),
}

/// The socket's life after `connected`: returns the close to send, if any.
async fn run(ctx: &Ctx, ws: &mut Ws, conn: &Arc<WsConn>, session: &Arc<Session>) -> Option<Close> {
    let mut next_ping = Instant::now() + ctx.ping_interval;
    let mut timer = pin!(sleep_until(next_ping));
    let mut unanswered: u8 = 0;
    let mut ping_due = false;
    let mut dirty = false;
    loop {
        let wake = poll_fn(|cx| {
            if let Some(close) = conn.arm(cx.waker()) {
                return Poll::Ready(Wake::Close(close));
            }
            // Write what the socket takes: queued frames go into tungstenite's buffer and
            // reach the kernel in one write per batch (at the flush below).
            loop {
                match ws.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Wake::WriteError(e)),
                    Poll::Pending => break,
                }
                let msg = if ping_due {
                    ping_due = false;
                    Message::Ping(Bytes::new())
                } else {
                    match conn.pop() {
                        Next::Frame(f) => Message::Text(f),
                        Next::Empty => break,
                    }
                };
                if let Err(e) = ws.start_send_unpin(msg) {
                    return Poll::Ready(Wake::WriteError(e));
                }
                dirty = true;
            }
            if dirty {
                match ws.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => dirty = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Wake::WriteError(e)),
                    Poll::Pending => {}
                }
            }
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => return Poll::Ready(Wake::Read(m)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Wake::ReadError(e)),
                Poll::Ready(None) => return Poll::Ready(Wake::Ended),
                Poll::Pending => {}
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Tick);
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Read(Message::Text(text)) => {
                Box::pin(on_text(&ctx.gw, conn, session, text)).await;
            }
            Wake::Read(Message::Binary(_)) => return Some(Close::BINARY),
            Wake::Read(Message::Pong(_)) => unanswered = 0,
            Wake::Read(Message::Ping(_) | Message::Frame(_) | Message::Close(_)) => {}
            Wake::ReadError(e) => return close_for(&e),
            Wake::Ended => return None,
            Wake::Tick => {
                if unanswered >= 2 {
                    tracing::debug!(socket = %conn.socket_id(), "no pong to the last two pings; closing");
                    return Some(Close::PING_TIMEOUT);
                }
                unanswered += 1;
                ping_due = true;
                next_ping += ctx.ping_interval;
                timer.as_mut().reset(next_ping);
            }
            Wake::Close(close) => return Some(close),
            Wake::WriteError(e) => {
                tracing::debug!(socket = %conn.socket_id(), error = %e, "websocket write failed");
                return None;
            }
        }
    }
}

/// Runs one client event through the core's pipeline and queues its ack.
async fn on_text(gw: &Gateway, conn: &WsConn, session: &Arc<Session>, text: Utf8Bytes) {
    let size = text.len();
    match frame::decode_event(text.as_str()) {
        Ok(ev) => {
            let ack = gw.inbound(session, &ev.event, size, ev.data).await;
            if let Some(id) = ev.id {
                conn.push(frame::ack(id, &ack));
            }
        }
        Err(bad) => {
            let ack = gw.inbound_malformed(session, &bad.reason);
            if let Some(id) = bad.id {
                conn.push(frame::ack(id, &ack));
            }
        }
    }
}

/// The close a read error calls for; `None` when the connection is already gone.
fn close_for(e: &WsError) -> Option<Close> {
    match e {
        WsError::Capacity(_) => Some(Close::TOO_BIG),
        WsError::Utf8(_) => Some(Close::INVALID_UTF8),
        WsError::Protocol(_) | WsError::AttackAttempt => Some(Close::PROTOCOL),
        _ => None,
    }
}

/// Ends a socket within `grace`: the queued frames and `first`, the close frame, the peer's
/// close reply, then a clean TCP shutdown.
async fn finish(
    ws: &mut Ws,
    conn: Option<&WsConn>,
    first: Option<Utf8Bytes>,
    close: Option<Close>,
    grace: Duration,
) {
    let closing = async {
        if let Some(close) = close {
            if let Some(f) = first {
                let _ = ws.feed(Message::Text(f)).await;
            }
            if let Some(conn) = conn {
                while let Next::Frame(f) = conn.pop() {
                    if ws.feed(Message::Text(f)).await.is_err() {
                        break;
                    }
                }
            }
            let frame = CloseFrame {
                code: close.code.into(),
                reason: Utf8Bytes::from_static(close.reason),
            };
            if ws.send(Message::Close(Some(frame))).await.is_ok() {
                // Read until the peer's close reply (tungstenite answers it and then ends).
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
        let io = ws.get_mut();
        let _ = io.shutdown().await;
        // Drain what the peer still sends, so closing does not reset the connection.
        let mut buf = [0u8; 256];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(grace, closing).await;
}
