//! HTTP/1.1 requests by hand with `httparse`: the WebSocket upgrade at `GET /ws` and
//! `POST /api/v1/emit` with a `Content-Length` body; anything else is a 404.

/// Largest request head accepted.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// What a complete request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A WebSocket upgrade at `/ws`; the `Sec-WebSocket-Accept` value to answer with.
    Upgrade {
        /// The derived accept key.
        accept: String,
    },
    /// `POST /api/v1/emit`; whether the API key was right.
    Emit {
        /// `Authorization: Bearer <api key>` matched.
        authorized: bool,
    },
    /// Anything else.
    NotFound,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// What it asks for.
    pub(crate) kind: Kind,
    /// Bytes the head takes.
    pub(crate) len: usize,
    /// Bytes of body that follow it (`Content-Length`).
    pub(crate) body: usize,
    /// The connection is to be closed after the answer.
    pub(crate) close: bool,
}

/// A request that gets an error status and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpError {
    /// Malformed, or a body framing this server does not read (400).
    Bad,
    /// The head is over [`MAX_HEAD`] (431).
    HeadTooLarge,
    /// The body is over [`MAX_BODY`] (413).
    BodyTooLarge,
}

impl HttpError {
    /// The status line's code and reason.
    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            HttpError::Bad => (400, "Bad Request"),
            HttpError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            HttpError::BodyTooLarge => (413, "Payload Too Large"),
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete.
pub(crate) fn parse(buf: &[u8], api_key: &str) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Bad),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if header("transfer-encoding").is_some() {
        return Err(HttpError::Bad);
    }
    let body = match header("content-length") {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or(HttpError::Bad)?,
    };
    if body > MAX_BODY {
        return Err(HttpError::BodyTooLarge);
    }
    let close = req.version != Some(1) || has_token("connection", "close");
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let kind = match (req.method, path) {
        (Some("GET"), "/ws") if has_token("upgrade", "websocket") => {
            let key = header("sec-websocket-key").ok_or(HttpError::Bad)?;
            if header("sec-websocket-version") != Some(&b"13"[..]) {
                return Err(HttpError::Bad);
            }
            Kind::Upgrade {
                accept: tungstenite::handshake::derive_accept_key(key),
            }
        }
        (Some("POST"), "/api/v1/emit") => {
            let given = header("authorization").and_then(|v| v.strip_prefix(b"Bearer "));
            Kind::Emit {
                authorized: given == Some(api_key.as_bytes()),
            }
        }
        _ => Kind::NotFound,
    };
    Ok(Some(Head {
        kind,
        len,
        body,
        close,
    }))
}

/// A response with a JSON body.
pub(crate) fn response(code: u16, reason: &str, body: &str, close: bool) -> Vec<u8> {
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `101 Switching Protocols` answer to an upgrade.
pub(crate) fn switching(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "k3y";

    #[test]
    fn websocket_upgrade() {
        let req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81";
        let head = parse(req, KEY).expect("valid").expect("complete");
        assert_eq!(
            head.kind,
            Kind::Upgrade {
                // RFC 6455's example.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()
            }
        );
        assert_eq!(head.len, req.len() - 1);
        assert!(!head.close);
        let no_key = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse(no_key, KEY), Err(HttpError::Bad));
    }

    #[test]
    fn emit_with_and_without_the_key() {
        let req = b"POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer k3y\r\n\
            Content-Length: 12\r\n\r\n{\"event\":1}";
        let head = parse(req, KEY).expect("valid").expect("complete");
        assert_eq!(head.kind, Kind::Emit { authorized: true });
        assert_eq!(head.body, 12);
        let bad = b"POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n";
        let head = parse(bad, KEY).expect("valid").expect("complete");
        assert_eq!(head.kind, Kind::Emit { authorized: false });
        assert_eq!(head.body, 0);
        let none = b"POST /api/v1/emit HTTP/1.1\r\nConnection: close\r\n\r\n";
        let head = parse(none, KEY).expect("valid").expect("complete");
        assert_eq!(
            (head.kind, head.close),
            (Kind::Emit { authorized: false }, true)
        );
    }

    #[test]
    fn other_requests_are_not_found() {
        for req in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\n\r\n",
            b"GET /api/v1/emit HTTP/1.1\r\n\r\n",
            b"POST /ws HTTP/1.1\r\n\r\n",
        ] {
            let head = parse(req, KEY).expect("valid").expect("complete");
            assert_eq!(head.kind, Kind::NotFound);
        }
    }

    #[test]
    fn partial_oversize_and_malformed() {
        assert_eq!(parse(b"POST /api/v1/emit HTTP/1.1\r\nHost", KEY), Ok(None));
        assert_eq!(parse(b"", KEY), Ok(None));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse(&long, KEY), Err(HttpError::HeadTooLarge));
        assert_eq!(
            parse(
                b"POST /api/v1/emit HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
                KEY
            ),
            Err(HttpError::BodyTooLarge)
        );
        assert_eq!(
            parse(
                b"POST /api/v1/emit HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                KEY
            ),
            Err(HttpError::Bad)
        );
        assert_eq!(
            parse(
                b"POST /api/v1/emit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                KEY
            ),
            Err(HttpError::Bad)
        );
        assert_eq!(
            parse(b"\x01\x02 / HTTP/1.1\r\n\r\n", KEY),
            Err(HttpError::Bad)
        );
    }

    #[test]
    fn responses_carry_their_length() {
        let r = response(200, "OK", r#"{"room":"r","event":"e"}"#, false);
        let text = String::from_utf8(r).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 24\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"room\":\"r\",\"event\":\"e\"}"));
        let s = String::from_utf8(switching("abc")).expect("utf-8");
        assert!(s.contains("sec-websocket-accept: abc\r\n"));
    }
}
