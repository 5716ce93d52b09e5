//! The one task that runs a native socket: handshake, then a single poll loop over the
//! socket's reads and its outbound queue, then the close handshake.
//!
//! Reading, control frames (pong replies, the close handshake) and the handshake's own
//! replies go through tungstenite. Every other server frame is already framed, WebSocket
//! header included, by [`crate::frame`] and shared between recipients; the task writes the
//! queued frames straight from those shared buffers to the socket with one vectored write
//! per batch, so a socket has no write buffer of its own. The two writers never interleave
//! inside a frame: raw frames are written only once tungstenite's buffer is flushed, and
//! tungstenite (which may answer a ping while reading) is only polled to read when no raw
//! frame is half written.
//!
//! Rarely-used phases (the handshake, handling one inbound event, closing) are boxed, so an
//! idle socket's task holds only the loop's small state. Pings come from the hub's one
//! ticker for all sockets (see [`crate::conn::Hub::start_pinging`]), not a timer per socket.

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::json;
use switchboard_core::runtime::{Leaving, RecoveryRequest};
use switchboard_core::{
    AuthError, Gateway, GatewayHandle, Handshake, Identity, PeerSocket, Session,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig as WsProtocol};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use crate::conn::{Close, Hub, WsConn};
use crate::frame::{self, FirstFrame, Recover};

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// What every socket task shares: the gateway, the transport's sockets and the settings.
pub(crate) struct Ctx {
    pub(crate) gw: GatewayHandle,
    pub(crate) hub: Arc<Hub>,
    pub(crate) protocol: WsProtocol,
    pub(crate) close_timeout: Duration,
}

/// A socket to start: the pending upgrade and what the upgrade request carried that the
/// handshake may need (copied out of the request, so the request and hyper's read buffer
/// are freed before the socket starts). Boxed, so the task does not keep room for it.
pub(crate) struct Start {
    pub(crate) upgrade: OnUpgrade,
    pub(crate) authorization: Option<http::HeaderValue>,
    pub(crate) query: Option<String>,
    /// The connection's socket, when the node serves it (for direct writes).
    pub(crate) raw: Option<PeerSocket>,
}

/// A handshake that did not produce an identity.
struct Refusal {
    /// The `{"op": "error"}` message to send first, if any.
    message: Option<String>,
    /// The close to send, if the socket is still usable.
    close: Option<Close>,
}

/// Runs one socket from the upgrade to the end.
///
/// The WebSocket lives in a box and every phase but the loop is a boxed future, so the
/// task's own future stays a few pointers wide for the socket's whole life.
pub(crate) async fn serve(ctx: Arc<Ctx>, mut start: Box<Start>) {
    let Some(gw) = ctx.gw.get() else {
        return;
    };
    let raw = start.raw.take();
    let Some((mut ws, identity, recover)) = Box::pin(open(&ctx, &gw, start)).await else {
        return;
    };
    let tracks = gw.config().recovery.enabled;
    let conn = WsConn::new(ctx.hub.clone(), raw, tracks);
    ctx.hub.insert(&conn);
    let session = if tracks {
        // Held until `connected` is queued, so nothing goes out before it.
        let asked = recover.is_some();
        let recover = recover.unwrap_or_default();
        let request = RecoveryRequest {
            tracks_offsets: true,
            pid: recover.session,
            offset: recover.offset,
            hold: true,
        };
        let user = identity.user_id.clone();
        let connected =
            Box::pin(gw.connect_with(ctx.gw.transport(), conn.clone(), identity, request)).await;
        let pid = connected.session.recovery_id();
        conn.push(frame::connected(
            &user,
            conn.socket_id().as_str(),
            pid.as_deref(),
            asked.then_some(connected.recovered),
        ));
        Box::pin(gw.replay(&connected.session)).await;
        connected.session
    } else {
        conn.push(frame::connected(
            &identity.user_id,
            conn.socket_id().as_str(),
            None,
            None,
        ));
        Box::pin(gw.connect_via(ctx.gw.transport(), conn.clone(), identity)).await
    };

    let (end, offset) = run(&gw, &mut ws, &conn, &session).await;

    ctx.hub.remove(&conn);
    conn.finish();
    if matches!(end, End::Ours(c) if c == Close::SLOW_CONSUMER) {
        gw.metrics().error_with(
            "queue_full",
            &format!(
                "socket {} closed with 1013: its outgoing queue was full (a client reading slower than it is sent to)",
                conn.socket_id()
            ),
        );
    }
    let (close, leaving) = match end {
        End::Ours(c) if c == Close::SHUTDOWN => (Some(c), Leaving::Shutdown),
        // A ping timeout or a slow consumer is a connection that failed: it may come back.
        End::Ours(c) if c == Close::PING_TIMEOUT || c == Close::SLOW_CONSUMER => {
            (Some(c), Leaving::Dropped)
        }
        // The server closed it on purpose (expiry, abuse, a kick): nothing to come back to.
        End::Ours(c) => (Some(c), Leaving::Closed),
        // The client closed it with a close frame: on purpose.
        End::PeerClosed => (None, Leaving::Closed),
        // The connection was lost (reset, no close frame, a failed write): it may come back.
        End::Lost => (None, Leaving::Dropped),
    };
    Box::pin(gw.disconnect_with(&session, leaving)).await;
    drop(session);
    Box::pin(finish(
        &mut ws,
        Some((&conn, offset)),
        None,
        close,
        ctx.close_timeout,
    ))
    .await;
}

/// Completes the upgrade and the connect handshake; a refused socket is closed here.
async fn open(
    ctx: &Ctx,
    gw: &Gateway,
    start: Box<Start>,
) -> Option<(Box<Ws>, Identity, Option<Recover>)> {
    let Start {
        upgrade,
        authorization,
        query,
        ..
    } = *start;
    let upgraded = match upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return None;
        }
    };
    let io = TokioIo::new(upgraded);
    let mut ws =
        Box::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(ctx.protocol)).await);
    let refusal = match handshake(gw, &mut ws, authorization, query).await {
        Ok((identity, recover)) if !ctx.hub.is_closing() => return Some((ws, identity, recover)),
        Ok(_) => Refusal {
            message: None,
            close: Some(Close::SHUTDOWN),
        },
        Err(r) => r,
    };
    let first = refusal.message.map(|m| frame::op_error(&m));
    finish(&mut ws, None, first, refusal.close, ctx.close_timeout).await;
    None
}

/// Waits for `{"op": "connect"}` and authenticates it.
async fn handshake(
    gw: &Gateway,
    ws: &mut Ws,
    authorization: Option<http::HeaderValue>,
    query: Option<String>,
) -> Result<(Identity, Option<Recover>), Refusal> {
    let deadline = Instant::now() + gw.config().limits.handshake_timeout.get();
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
    let auth;
    let mut recover = None;
    let handshake = match first {
        FirstFrame::Connect(token, r) => {
            recover = r;
            if let Some(value) = authorization {
                headers.insert(http::header::AUTHORIZATION, value);
            }
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
    match gw.authenticate(&handshake).await {
        Ok(identity) => Ok((identity, recover)),
        Err(e) => Err(Refusal {
            message: Some(e.to_string()),
            close: Some(match e {
                AuthError::Refused(_) => Close::CONNECTION_LIMIT,
                AuthError::NoToken | AuthError::InvalidToken => Close::AUTH,
            }),
        }),
    }
}

/// Why the loop woke up.
enum Wake {
    Read(Message),
    ReadError(WsError),
    Ended,
    Close(Close),
    WriteError(std::io::Error),
}

/// Frames written per vectored write.
const BATCH: usize = 32;

/// Writes the socket's queued frames until the queue is empty (`Ready(Ok)`) or the socket
/// is full (`Pending`). `offset` is how much of the front frame is already written.
fn poll_write_queue(
    ws: &mut Ws,
    conn: &WsConn,
    offset: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        let mut frames = [const { Bytes::new() }; BATCH];
        let n = conn.peek(&mut frames);
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        // Whatever tungstenite buffered (a pong) goes out first, whole.
        ready!(ws.poll_flush_unpin(cx)).map_err(std::io::Error::other)?;
        let mut slices = [IoSlice::new(&[]); BATCH];
        for (slice, f) in slices.iter_mut().zip(&frames[..n]) {
            *slice = IoSlice::new(f);
        }
        slices[0] = IoSlice::new(frames[0].get(*offset..).unwrap_or_default());
        let written = ready!(Pin::new(ws.get_mut()).poll_write_vectored(cx, &slices[..n]))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        let mut left = *offset + written;
        let mut done = 0;
        for f in &frames[..n] {
            if left < f.len() {
                break;
            }
            left -= f.len();
            done += 1;
        }
        *offset = left;
        conn.consume(done);
    }
}

/// How a socket's life ended.
enum End {
    /// The server closes it with this code.
    Ours(Close),
    /// The client sent a close frame.
    PeerClosed,
    /// The connection failed or was cut without a close frame.
    Lost,
}

/// The socket's life after `connected`: returns how it ended, and how much of the front
/// queued frame is already written.
async fn run(
    gw: &Gateway,
    ws: &mut Ws,
    conn: &Arc<WsConn>,
    session: &Arc<Session>,
) -> (End, usize) {
    let mut offset = 0;
    loop {
        let wake = poll_fn(|cx| {
            if let Some(close) = conn.arm(cx.waker()) {
                return Poll::Ready(Wake::Close(close));
            }
            if let Poll::Ready(Err(e)) = poll_write_queue(ws, conn, &mut offset, cx) {
                return Poll::Ready(Wake::WriteError(e));
            }
            // Reading may make tungstenite answer a ping: only between two whole frames.
            if offset == 0 {
                match ws.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(m))) => return Poll::Ready(Wake::Read(m)),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Wake::ReadError(e)),
                    Poll::Ready(None) => return Poll::Ready(Wake::Ended),
                    Poll::Pending => {}
                }
                // Everything written and tungstenite holding nothing: pushes may write directly.
                match ws.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => conn.release_writer(),
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Wake::WriteError(std::io::Error::other(e)));
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let end = match wake {
            Wake::Read(Message::Text(text)) => {
                Box::pin(on_text(gw, conn, session, text)).await;
                continue;
            }
            Wake::Read(Message::Pong(_)) => {
                conn.pong();
                continue;
            }
            Wake::Read(Message::Ping(_) | Message::Frame(_)) => continue,
            Wake::Read(Message::Binary(_)) => End::Ours(Close::BINARY),
            // The peer closes: tungstenite has queued its reply; nothing more is sent.
            Wake::Read(Message::Close(_)) => End::PeerClosed,
            Wake::Ended => End::Lost,
            Wake::ReadError(e) => close_for(&e).map_or(End::Lost, End::Ours),
            Wake::Close(close) => End::Ours(close),
            Wake::WriteError(e) => {
                tracing::debug!(socket = %conn.socket_id(), error = %e, "websocket write failed");
                End::Lost
            }
        };
        return (end, offset);
    }
}

/// Runs one client event through the core's pipeline and queues its ack.
async fn on_text(gw: &Gateway, conn: &WsConn, session: &Arc<Session>, text: Utf8Bytes) {
    let size = text.len();
    // One event at a time per socket: its ticket is its turn, in the order read.
    let ticket = session.ticket();
    match frame::decode_event(text.as_str()) {
        Ok(ev) => {
            let ack = gw.inbound(session, ticket, &ev.event, size, ev.data).await;
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
        // A connection cut without a close frame is lost, not a protocol violation.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) | WsError::AttackAttempt => Some(Close::PROTOCOL),
        _ => None,
    }
}

/// Ends a socket within `grace`. For a close of ours: the rest of the queue, `first`, the
/// close frame and the peer's reply; otherwise only what tungstenite still holds (its reply
/// to the peer's close). Then a clean TCP shutdown.
async fn finish(
    ws: &mut Ws,
    queue: Option<(&WsConn, usize)>,
    first: Option<Utf8Bytes>,
    close: Option<Close>,
    grace: Duration,
) {
    let closing = async {
        match close {
            Some(close) => {
                if let Some((conn, mut offset)) = queue
                    && poll_fn(|cx| poll_write_queue(ws, conn, &mut offset, cx))
                        .await
                        .is_err()
                {
                    return;
                }
                if let Some(f) = first {
                    let _ = ws.feed(Message::Text(f)).await;
                }
                let frame = CloseFrame {
                    code: close.code.into(),
                    reason: Utf8Bytes::from_static(close.reason),
                };
                if ws.send(Message::Close(Some(frame))).await.is_ok() {
                    // Read until the peer's close reply (tungstenite then ends the stream).
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
            None => {
                let _ = ws.flush().await;
            }
        }
    };
    let _ = tokio::time::timeout(grace, closing).await;
    let shutdown = async {
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
    let _ = tokio::time::timeout(grace, shutdown).await;
}
