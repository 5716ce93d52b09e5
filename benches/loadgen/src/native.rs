//! A client of Switchboard's native WebSocket protocol (CONTRACT §5): first frame
//! `{"op":"connect","token":…}` answered by `{"op":"connected",…}` (or `{"op":"error",…}`),
//! then events `{"event":name,"data":…,"id":n}` with acks `{"ack":n,"data":…}`, and server
//! events `{"event":name,"data":…}`. The server's pings are WebSocket control frames, which
//! tungstenite answers whenever the stream is polled.

use std::time::Instant;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::sio::{Incoming, Target, Ws, connect, next_text};

/// Connects, authenticates with `token` and, with `join`, joins `conversation:{join}` (acked).
pub(crate) async fn open(target: &Target, token: &str, join: Option<&str>) -> Result<Ws, String> {
    let deadline = Instant::now() + target.timeout;
    let mut ws = connect(target, deadline).await?;
    let hello = json!({ "op": "connect", "token": token });
    request(&mut ws, deadline, "connect", &hello, handshake_reply).await?;
    if let Some(conversation) = join {
        let frame = json!({
            "event": "conversation:join",
            "data": { "conversationId": conversation },
            "id": 0,
        });
        request(&mut ws, deadline, "join", &frame, join_ack).await?;
    }
    Ok(ws)
}

/// Sends `frame`, then reads until `reply` recognises the answer to it.
async fn request(
    ws: &mut Ws,
    deadline: Instant,
    what: &str,
    frame: &Value,
    reply: fn(&str) -> Option<Result<(), String>>,
) -> Result<(), String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send {what}: {e}"))?;
    loop {
        let t = next_text(ws, deadline).await?;
        if let Some(answer) = reply(&t) {
            return answer;
        }
    }
}

/// The handshake's answer: `op: connected` is success, `op: error` a refusal with its
/// message; anything else is not the answer (`None`).
fn handshake_reply(text: &str) -> Option<Result<(), String>> {
    let v: Value = serde_json::from_str(text).ok()?;
    match v.get("op").and_then(Value::as_str)? {
        "connected" => Some(Ok(())),
        "error" => {
            let message = v.get("message").and_then(Value::as_str).unwrap_or("");
            Some(Err(format!("connect error {message:.80}")))
        }
        _ => None,
    }
}

/// The ack of the join (id 0): success only with `"success":true`; other frames are not it.
fn join_ack(text: &str) -> Option<Result<(), String>> {
    let body = text.strip_prefix("{\"ack\":0,")?;
    if body.contains("\"success\":true") {
        Some(Ok(()))
    } else {
        Some(Err(format!("join refused: {body:.80}")))
    }
}

/// Reads a server frame of a connected socket: `{"event":"name","data":…}` is an event,
/// anything else (acks, `op` frames) is not counted.
pub(crate) fn incoming(text: &str) -> Incoming<'_> {
    text.strip_prefix("{\"event\":\"")
        .and_then(|rest| rest.find('"').map(|end| (&rest[..end], &rest[end + 1..])))
        .map_or(Incoming::Other, |(name, rest)| Incoming::Event(name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sio::tests::shared;
    use crate::sio::{Counted, Protocol, Receiver, handle_text};

    #[test]
    fn handshake_replies() {
        assert_eq!(
            handshake_reply(r#"{"op":"connected","userId":"u0","socketId":"7"}"#),
            Some(Ok(()))
        );
        assert_eq!(
            handshake_reply(r#"{"op":"error","message":"Authentication failed: Invalid token"}"#),
            Some(Err(
                "connect error Authentication failed: Invalid token".to_owned()
            ))
        );
        assert_eq!(
            handshake_reply(r#"{"event":"user:online","data":{}}"#),
            None
        );
        assert_eq!(handshake_reply("not json"), None);
    }

    #[test]
    fn join_acks() {
        let ok = r#"{"ack":0,"data":{"conversationId":"c0","success":true}}"#;
        assert_eq!(join_ack(ok), Some(Ok(())));
        let refused = r#"{"ack":0,"data":{"success":false,"error":"nope"}}"#;
        assert!(matches!(join_ack(refused), Some(Err(_))));
        let joined =
            r#"{"event":"conversation:joined","data":{"conversationId":"c0","success":true}}"#;
        assert_eq!(join_ack(joined), None);
    }

    #[test]
    fn events_are_read() {
        assert_eq!(
            incoming(r#"{"event":"message:received","data":{"messageId":"1"}}"#),
            Incoming::Event("message:received", r#","data":{"messageId":"1"}}"#)
        );
        assert_eq!(incoming(r#"{"ack":3,"data":{}}"#), Incoming::Other);
        assert_eq!(incoming(r#"{"op":"connected"}"#), Incoming::Other);
    }

    #[test]
    fn native_deliveries_are_counted_like_socketio_ones() {
        let shared = shared(Protocol::Native, Counted::Messages { publishes: 10 });
        let mut rx = Receiver::new(shared.counted);
        let frame = r#"{"event":"message:received","data":{"conversationId":"c0","messageId":"3","content":"0"}}"#;
        assert!(!handle_text(&shared, &mut rx, frame));
        handle_text(&shared, &mut rx, frame);
        handle_text(
            &shared,
            &mut rx,
            r#"{"event":"message:received","data":{"messageId":"99","content":"0"}}"#,
        );
        handle_text(
            &shared,
            &mut rx,
            r#"{"event":"conversation:joined","data":{"success":true}}"#,
        );
        // An Engine.IO ping means nothing here, and acks are not events.
        assert!(!handle_text(&shared, &mut rx, "2"));
        handle_text(&shared, &mut rx, r#"{"ack":0,"data":{"success":true}}"#);
        let st = shared.stats.borrow();
        assert_eq!(
            (st.delivered, st.duplicates, st.unknown, st.other_events),
            (1, 1, 1, 1)
        );
    }

    #[test]
    fn native_typing_is_matched_per_publisher_in_order() {
        let shared = shared(Protocol::Native, Counted::Typing { publishers: 2 });
        shared
            .typing_sent
            .borrow_mut()
            .extend([vec![10, 20], vec![15]]);
        let mut rx = Receiver::new(shared.counted);
        let from = |p: &str| {
            format!(
                r#"{{"event":"typing:start","data":{{"conversationId":"c0","userId":"{p}","isTyping":true}}}}"#
            )
        };
        for p in ["p0", "p1", "p0", "p1", "u7"] {
            handle_text(&shared, &mut rx, &from(p));
        }
        let st = shared.stats.borrow();
        assert_eq!((st.delivered, st.duplicates, st.unknown), (3, 1, 1));
    }
}
