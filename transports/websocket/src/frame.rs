//! The wire format of the native protocol: decoding client frames, encoding server frames.
//!
//! Server frames are built by hand, WebSocket header included, into one buffer (no
//! intermediate `Value`): a delivery's frame costs one allocation and one copy of the
//! already-encoded payload, and the same bytes go to every recipient as they are.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, error::Category};
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

/// A client event frame: `{"event": "...", "data": ..., "id": 7}`.
#[derive(Debug)]
pub(crate) struct EventFrame<'a> {
    /// The event name.
    pub(crate) event: Cow<'a, str>,
    /// The payload's JSON text; `None` when absent or `null`.
    pub(crate) data: Option<&'a RawValue>,
    /// The ack id (a JSON number or string), when the client asked for an ack.
    pub(crate) id: Option<&'a RawValue>,
}

/// A text frame that is not an event; `id` is set when an ack can still be sent.
#[derive(Debug)]
pub(crate) struct BadFrame<'a> {
    /// Why it was refused (the core prefixes `Malformed event: `).
    pub(crate) reason: String,
    /// The ack id, when it could be read.
    pub(crate) id: Option<&'a RawValue>,
}

/// Every key a client event frame may carry; `op` and `token` only to recognise a second connect.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
}

/// Reads only the `id` of a frame that failed the strict parse, to ack the refusal.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// What the handshake's first frame says.
#[derive(Debug, PartialEq)]
pub(crate) enum FirstFrame {
    /// `{"op": "connect", "token": ..., "recover"?: {...}}`; the token as given (`Null`
    /// when absent).
    Connect(Value, Option<Recover>),
    /// Anything else: refused as carrying no token.
    Other,
}

/// Whether an ack id is a JSON number or string.
fn is_valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// Decodes a text frame received after `connected`.
pub(crate) fn decode_event(text: &str) -> Result<EventFrame<'_>, BadFrame<'_>> {
    let frame: Strict<'_> = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|f| f.id)
                .filter(|id| is_valid_id(id));
            let reason = match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => format!("not JSON ({e})"),
                Category::Data => format!(
                    "expected {{\"event\": string, \"data\"?: any, \"id\"?: number | string}} ({e})"
                ),
            };
            return Err(BadFrame { reason, id });
        }
    };
    let id = match frame.id {
        Some(id) if !is_valid_id(id) => {
            return Err(BadFrame {
                reason: "\"id\" must be a number or a string".to_owned(),
                id: None,
            });
        }
        id => id,
    };
    if let Some(op) = frame.op {
        let reason = if op == "connect" {
            "already connected".to_owned()
        } else {
            format!("unexpected \"op\": {op:?} (only \"connect\", once, as the first frame)")
        };
        return Err(BadFrame { reason, id });
    }
    if frame.token.is_some() {
        return Err(BadFrame {
            reason: "unexpected \"token\" (send a new token with the auth:refresh event)"
                .to_owned(),
            id,
        });
    }
    let Some(event) = frame.event else {
        return Err(BadFrame {
            reason: "missing \"event\"".to_owned(),
            id,
        });
    };
    Ok(EventFrame {
        event,
        data: frame.data,
        id,
    })
}

/// `"recover": {"session", "offset"}` of a reconnecting client's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Recover {
    /// The session it had (the `session` of its last `connected`).
    pub(crate) session: Option<String>,
    /// The last offset it received.
    pub(crate) offset: Option<String>,
}

/// Decodes the handshake's first text frame; other keys than `op`, `token` and `recover`
/// are ignored.
pub(crate) fn decode_first(text: &str) -> FirstFrame {
    #[derive(Deserialize)]
    struct Connect<'a> {
        #[serde(borrow)]
        op: Cow<'a, str>,
        #[serde(default)]
        token: Value,
        #[serde(default)]
        recover: Value,
    }
    match serde_json::from_str::<Connect<'_>>(text) {
        Ok(c) if c.op == "connect" => {
            let text = |k: &str| c.recover.get(k).and_then(Value::as_str).map(str::to_owned);
            let recover = c.recover.is_object().then(|| Recover {
                session: text("session"),
                offset: text("offset"),
            });
            FirstFrame::Connect(c.token, recover)
        }
        _ => FirstFrame::Other,
    }
}

/// Room for the longest server frame header: one byte of opcode, nine of length.
const HEADER_MAX: usize = 10;

/// The ping frame the server sends (no payload).
pub(crate) const PING: &[u8] = &[0x89, 0x00];

/// A server text frame under construction: the payload is written after room for the header,
/// and [`FrameBuf::finish`] fills the header in front of it, so a frame is one allocation.
struct FrameBuf(Vec<u8>);

impl FrameBuf {
    fn with_capacity(payload: usize) -> Self {
        let mut v = Vec::with_capacity(HEADER_MAX + payload);
        v.resize(HEADER_MAX, 0);
        FrameBuf(v)
    }

    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Appends `s` as a JSON string literal.
    fn push_json_str(&mut self, s: &str) {
        switchboard_core::json::push_str(&mut self.0, s);
    }

    /// The finished frame: FIN, opcode text, unmasked length, then the payload.
    fn finish(self) -> Bytes {
        let mut v = self.0;
        let len = v.len() - HEADER_MAX;
        let start = match len {
            0..=125 => {
                v[HEADER_MAX - 1] = len as u8;
                HEADER_MAX - 2
            }
            126..=0xffff => {
                v[HEADER_MAX - 3] = 126;
                v[HEADER_MAX - 2..HEADER_MAX].copy_from_slice(&(len as u16).to_be_bytes());
                HEADER_MAX - 4
            }
            _ => {
                v[HEADER_MAX - 9] = 127;
                v[HEADER_MAX - 8..HEADER_MAX].copy_from_slice(&(len as u64).to_be_bytes());
                HEADER_MAX - 10
            }
        };
        v[start] = 0x81;
        Bytes::from(v).slice(start..)
    }
}

/// The server event frame `{"event": name, "data": payload}`, framed once and shared.
pub(crate) fn event(name: &str, payload: &RawValue) -> Bytes {
    let data = payload.get();
    let mut f = FrameBuf::with_capacity(name.len() + data.len() + 22);
    f.push_str("{\"event\":");
    f.push_json_str(name);
    f.push_str(",\"data\":");
    f.push_str(data);
    f.push_str("}");
    f.finish()
}

/// The server event frame with its offset: `{"event": name, "data": payload, "offset": ...}`.
pub(crate) fn event_with_offset(name: &str, payload: &RawValue, offset: &str) -> Bytes {
    let data = payload.get();
    let mut f = FrameBuf::with_capacity(name.len() + data.len() + offset.len() + 34);
    f.push_str("{\"event\":");
    f.push_json_str(name);
    f.push_str(",\"data\":");
    f.push_str(data);
    f.push_str(",\"offset\":");
    f.push_json_str(offset);
    f.push_str("}");
    f.finish()
}

/// The ack frame `{"ack": id, "data": ...}`; `id` is echoed exactly as the client wrote it.
pub(crate) fn ack(id: &RawValue, data: &Value) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned());
    let id = id.get();
    let mut f = FrameBuf::with_capacity(id.len() + data.len() + 17);
    f.push_str("{\"ack\":");
    f.push_str(id);
    f.push_str(",\"data\":");
    f.push_str(&data);
    f.push_str("}");
    f.finish()
}

/// The handshake reply `{"op": "connected", "userId": ..., "socketId": ...}`, with
/// recovery on `"session"` too, and `"recovered"` when the client asked to recover.
pub(crate) fn connected(
    user_id: &str,
    socket_id: &str,
    session: Option<&str>,
    recovered: Option<bool>,
) -> Bytes {
    let mut f = FrameBuf::with_capacity(user_id.len() + socket_id.len() + 96);
    f.push_str("{\"op\":\"connected\",\"userId\":");
    f.push_json_str(user_id);
    f.push_str(",\"socketId\":");
    f.push_json_str(socket_id);
    if let Some(s) = session {
        f.push_str(",\"session\":");
        f.push_json_str(s);
    }
    if let Some(r) = recovered {
        f.push_str(if r {
            ",\"recovered\":true"
        } else {
            ",\"recovered\":false"
        });
    }
    f.push_str("}");
    f.finish()
}

/// The handshake refusal `{"op": "error", "message": ...}`, as a message for tungstenite.
pub(crate) fn op_error(message: &str) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::json!({ "op": "error", "message": message }).to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Checks a server frame's header (FIN, text, unmasked, exact length) and returns its payload.
    pub(crate) fn payload(frame: &[u8]) -> &str {
        assert_eq!(frame[0], 0x81, "FIN + text");
        let (len, at) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (usize::try_from(u64::from_be_bytes(b)).expect("len"), 10)
            }
            n => (usize::from(n), 2),
        };
        assert!(frame[1] & 0x80 == 0, "server frames are not masked");
        assert_eq!(frame.len() - at, len, "length field matches");
        std::str::from_utf8(&frame[at..]).expect("UTF-8")
    }

    fn parse(frame: &Bytes) -> Value {
        serde_json::from_str(payload(frame)).expect("valid JSON")
    }

    #[test]
    fn decodes_events_with_and_without_ack() {
        let f =
            decode_event(r#"{"event":"conversation:join","data":{"conversationId":"1"},"id":7}"#)
                .expect("event");
        assert_eq!(f.event, "conversation:join");
        assert_eq!(f.data.map(RawValue::get), Some(r#"{"conversationId":"1"}"#));
        assert_eq!(f.id.map(RawValue::get), Some("7"));
        let f = decode_event(r#"{"event":"typing:start"}"#).expect("event");
        assert!(f.data.is_none() && f.id.is_none());
        let f = decode_event(r#"{"id":"a-1","event":"x","data":null}"#).expect("event");
        assert_eq!(f.id.map(RawValue::get), Some(r#""a-1""#));
        assert!(f.data.is_none());
    }

    #[test]
    fn refuses_bad_frames_and_keeps_a_readable_id() {
        let e = decode_event("nope").expect_err("not json");
        assert!(e.reason.starts_with("not JSON"), "{}", e.reason);
        assert!(e.id.is_none());
        let e = decode_event(r#"{"event":"x","payload":{},"id":3}"#).expect_err("unknown key");
        assert!(e.reason.contains("payload"), "{}", e.reason);
        assert_eq!(e.id.map(RawValue::get), Some("3"));
        let e = decode_event(r#"{"event":5,"id":"k"}"#).expect_err("event not a string");
        assert_eq!(e.id.map(RawValue::get), Some(r#""k""#));
        let e = decode_event(r#"{"data":{},"id":4}"#).expect_err("no event");
        assert_eq!(e.reason, "missing \"event\"");
        assert_eq!(e.id.map(RawValue::get), Some("4"));
        let e = decode_event(r#"{"event":"x","id":{"a":1}}"#).expect_err("bad id");
        assert!(e.id.is_none());
        let e = decode_event(r#"{"op":"connect","token":"t","id":1}"#).expect_err("second connect");
        assert_eq!(e.reason, "already connected");
        assert_eq!(e.id.map(RawValue::get), Some("1"));
        assert!(decode_event("[1,2]").is_err());
        assert!(decode_event(r#"{"event":"x","event":"y"}"#).is_err());
    }

    #[test]
    fn first_frame_is_connect_or_not() {
        assert_eq!(
            decode_first(r#"{"op":"connect","token":"abc"}"#),
            FirstFrame::Connect(json!("abc"), None)
        );
        assert_eq!(
            decode_first(r#"{"op":"connect"}"#),
            FirstFrame::Connect(Value::Null, None)
        );
        assert_eq!(
            decode_first(r#"{"op":"connect","token":5,"client":"x"}"#),
            FirstFrame::Connect(json!(5), None)
        );
        assert_eq!(
            decode_first(r#"{"op":"connect","token":"t","recover":{"session":"s","offset":"o"}}"#),
            FirstFrame::Connect(
                json!("t"),
                Some(Recover {
                    session: Some("s".into()),
                    offset: Some("o".into())
                })
            )
        );
        let offset = event_with_offset(
            "e",
            &RawValue::from_string("{}".into()).expect("raw"),
            "p~t.1",
        );
        assert_eq!(
            tests::payload(&offset),
            r#"{"event":"e","data":{},"offset":"p~t.1"}"#
        );
        assert_eq!(
            tests::payload(&connected("u", "s", Some("pid"), Some(true))),
            r#"{"op":"connected","userId":"u","socketId":"s","session":"pid","recovered":true}"#
        );
        assert_eq!(
            decode_first(r#"{"event":"conversation:join"}"#),
            FirstFrame::Other
        );
        assert_eq!(decode_first(r#"{"op":"hello"}"#), FirstFrame::Other);
        assert_eq!(decode_first("garbage"), FirstFrame::Other);
    }

    #[test]
    fn server_frames_carry_exactly_their_keys() {
        let payload = RawValue::from_string(r#"{"conversationId":"1","userId":"u"}"#.to_owned())
            .expect("raw");
        let f = event("typing:start", &payload);
        assert_eq!(
            parse(&f),
            json!({"event": "typing:start", "data": {"conversationId": "1", "userId": "u"}})
        );
        let odd = event("we\"ird\\\n\u{1}é", &payload);
        assert_eq!(parse(&odd)["event"], json!("we\"ird\\\n\u{1}é"));
        let id = RawValue::from_string("7".to_owned()).expect("raw");
        assert_eq!(
            parse(&ack(&id, &json!({"success": true}))),
            json!({"ack": 7, "data": {"success": true}})
        );
        assert_eq!(
            parse(&connected("u\"1", "abc", None, None)),
            json!({"op": "connected", "userId": "u\"1", "socketId": "abc"})
        );
        let refusal = op_error("Authentication failed: Invalid token");
        assert_eq!(
            serde_json::from_str::<Value>(refusal.as_str()).expect("json"),
            json!({"op": "error", "message": "Authentication failed: Invalid token"})
        );
    }

    #[test]
    fn every_length_encoding_is_right() {
        for n in [
            0usize,
            100,
            125 - 23,
            126 - 23,
            300,
            65_535 - 23,
            65_536 - 23,
            200_000,
        ] {
            let raw = RawValue::from_string(format!("\"{}\"", "x".repeat(n))).expect("raw");
            let f = event("e", &raw);
            assert_eq!(parse(&f)["data"].as_str().map(str::len), Some(n));
        }
        assert_eq!(PING, [0x89, 0x00]);
    }
}
