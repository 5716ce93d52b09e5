//! `POST /api/v1/emit` read and answered straight off a plain HTTP/1.1 connection, as the
//! router answers it, without hyper's and the router's per-request work: the publish path.
//!
//! A connection starts here. Each request in the form a backend's publish takes (an emit
//! with a `Content-Length` body within the limit, and no `Origin`, `Expect`, `Upgrade` or
//! `Transfer-Encoding`) is answered here, in order, pipelined or not. The first request of
//! any other kind, with every byte read so far, goes to hyper and the router for the rest
//! of the connection, so whatever is not a plain emit is served exactly as before.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::net::SharedStream;
use crate::runtime::Gateway;

/// The path this module answers.
const PATH: &str = "/api/v1/emit";
/// The most bytes a request's head may take here; a longer one goes to hyper.
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may carry here; one with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// What becomes of a connection once [`Direct::serve`] returns.
pub(crate) enum Next {
    /// It is closed, or to be closed.
    Close,
    /// Hand it to hyper: it holds a request this module leaves to the router.
    Router,
}

/// Answers plain emits on a connection before the router sees it.
pub(crate) struct Direct {
    gw: Gateway,
    /// The headers the CORS layer adds to an answer to a request without an `Origin`.
    cors: HeaderMap,
    /// The status line and headers of a 200 answer, up to its length.
    ok_head: Vec<u8>,
    limit: usize,
}

/// A request head this module answers: where its parts are in the bytes read.
struct EmitHead {
    /// Length of the head, up to and with its blank line.
    len: usize,
    /// The body's declared length.
    body: usize,
    content_type: Option<Range<usize>>,
    authorization: Option<Range<usize>>,
    /// The client asked to close the connection after this request.
    close: bool,
}

/// What the bytes read so far hold.
enum Head {
    /// Not a whole head yet.
    Partial,
    /// A request this module leaves to the router.
    Other,
    Emit(EmitHead),
}

impl Direct {
    /// The publish path for `gw`, adding `cors` (what the CORS layer adds to the answer to a
    /// request without an `Origin`) to each answer.
    pub(crate) fn new(gw: Gateway, cors: HeaderMap) -> Self {
        let limit = gw.config().limits.max_http_body_bytes.bytes();
        let mut json = HeaderMap::new();
        json.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut ok_head = Vec::new();
        start_head(&mut ok_head, StatusCode::OK, &json, &cors);
        Direct {
            gw,
            cors,
            ok_head,
            limit,
        }
    }

    /// Answers the emits the connection carries until it closes, `stop` turns true while
    /// it is between requests, or a request comes that is not for this module: then the
    /// bytes read of it are given back to `io` and the router takes over.
    pub(crate) async fn serve(
        &self,
        io: &mut SharedStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Next {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            let head = loop {
                match head(&buf, self.limit) {
                    Head::Emit(head) => break head,
                    Head::Other => {
                        io.unread(buf.freeze());
                        return Next::Router;
                    }
                    Head::Partial => {}
                }
                let read = if buf.is_empty() {
                    // Between requests: the only time a stop closes the connection.
                    tokio::select! {
                        read = io.read_buf(&mut buf) => read,
                        _ = stop.wait_for(|stop| *stop) => return Next::Close,
                    }
                } else {
                    io.read_buf(&mut buf).await
                };
                match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                }
            };
            let whole = head.len + head.body;
            if buf.len() < whole {
                buf.reserve(whole - buf.len());
            }
            while buf.len() < whole {
                match io.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                }
            }
            let request = buf.split_to(whole).freeze();
            let answer = self.answer(&head, request).await;
            if io.write_all(&answer).await.is_err() || head.close {
                let _ = io.shutdown().await;
                return Next::Close;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
        }
    }

    /// The whole answer to the emit `request` (its head and body), as bytes to write.
    async fn answer(&self, head: &EmitHead, request: Bytes) -> Vec<u8> {
        let part = |r: &Option<Range<usize>>| r.clone().map(|r| &request[r]);
        let body = request.slice(head.len..);
        let answer = match super::layers::check_authorization(&self.gw, part(&head.authorization)) {
            Err(e) => Err(e),
            Ok(()) => super::emit_bytes(&self.gw, part(&head.content_type), Ok(body)).await,
        };
        match answer {
            Ok(json) => {
                self.gw.metrics().count_http(PATH, 200);
                let mut out = Vec::with_capacity(self.ok_head.len() + 128 + json.0.len());
                out.extend_from_slice(&self.ok_head);
                end_head(&mut out, json.0.len(), head.close);
                out.extend_from_slice(&json.0);
                out
            }
            Err(e) => {
                let (parts, body) = e.into_response().into_parts();
                self.gw.metrics().count_http(PATH, parts.status.as_u16());
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let mut out = Vec::with_capacity(256 + body.len());
                start_head(&mut out, parts.status, &parts.headers, &self.cors);
                end_head(&mut out, body.len(), head.close);
                out.extend_from_slice(&body);
                out
            }
        }
    }
}

/// Reads the head in `buf`, when there is a whole one (a body over `limit` is the router's).
fn head(buf: &[u8], limit: usize) -> Head {
    if buf.is_empty() {
        return Head::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Head::Partial,
        // Too long, too many headers or malformed: the router's to answer.
        Ok(httparse::Status::Partial) | Err(_) => return Head::Other,
    };
    if req.method != Some("POST") || req.path != Some(PATH) || req.version != Some(1) {
        return Head::Other;
    }
    let mut head = EmitHead {
        len,
        body: 0,
        content_type: None,
        authorization: None,
        close: false,
    };
    let mut length = None;
    let at = |value: &[u8]| {
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + value.len()
    };
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("content-length") {
            if length.is_some() {
                return Head::Other;
            }
            length = decimal(h.value);
            if length.is_none() {
                return Head::Other;
            }
        } else if is("content-type") {
            head.content_type.get_or_insert_with(|| at(h.value));
        } else if is("authorization") {
            head.authorization.get_or_insert_with(|| at(h.value));
        } else if is("connection") {
            let value = h.value.trim_ascii();
            if value.eq_ignore_ascii_case(b"close") {
                head.close = true;
            } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                return Head::Other;
            }
        } else if is("transfer-encoding")
            || is("origin")
            || is("expect")
            || is("upgrade")
            || is("te")
            || is("trailer")
        {
            return Head::Other;
        }
    }
    match length {
        Some(n) if n <= limit => head.body = n,
        // No length (an empty body, or one the router should refuse) or too long.
        _ => return Head::Other,
    }
    Head::Emit(head)
}

/// Writes an answer's status line and headers: `headers` and the CORS layer's `cors`.
fn start_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, cors: &HeaderMap) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // As the CORS layer does: `Vary` joins the answer's own, the rest replace theirs.
        let replaced = *name != header::VARY && cors.contains_key(name);
        if !replaced && *name != header::CONTENT_LENGTH {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in cors {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Ends an answer's head: its length, `Connection: close` when it is the last, the date.
fn end_head(out: &mut Vec<u8>, length: usize, close: bool) {
    let mut n = itoa::Buffer::new();
    header_line(out, b"content-length", n.format(length).as_bytes());
    if close {
        header_line(out, b"connection", b"close");
    }
    DATE.with(|date| header_line(out, b"date", &date.now()));
    out.extend_from_slice(b"\r\n");
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: decimal digits only.
fn decimal(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

thread_local! {
    static DATE: CachedDate = CachedDate::default();
}

/// The `Date` header's value, formatted once a second per thread.
#[derive(Default)]
struct CachedDate(std::cell::Cell<(u64, [u8; 29])>);

impl CachedDate {
    fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let (at, text) = self.0.get();
        if at == second && text[0] != 0 {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        self.0.set((second, text));
        text
    }
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMIT: &str = "POST /api/v1/emit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

    fn emit_head(buf: &[u8]) -> Option<EmitHead> {
        match head(buf, 1024) {
            Head::Emit(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn a_plain_emit_is_read_with_its_parts() {
        let buf = EMIT.as_bytes();
        let h = emit_head(buf).expect("an emit");
        assert_eq!(h.len + h.body, buf.len());
        assert_eq!(h.authorization.map(|r| &buf[r]), Some(&b"Bearer k"[..]));
        assert_eq!(
            h.content_type.map(|r| &buf[r]),
            Some(&b"application/json"[..])
        );
        assert!(!h.close);
        for cut in 0..buf.len() - 2 {
            assert!(matches!(head(&buf[..cut], 1024), Head::Partial), "{cut}");
        }
    }

    #[test]
    fn what_the_router_must_answer_is_left_to_it() {
        for (from, to) in [
            ("POST /api/v1/emit ", "POST /api/v1/emit?x=1 "),
            ("POST ", "PUT "),
            ("HTTP/1.1", "HTTP/1.0"),
            ("Content-Length: 2", "Transfer-Encoding: chunked"),
            (
                "Content-Length: 2",
                "Content-Length: 2\r\nContent-Length: 2",
            ),
            ("Content-Length: 2", "Content-Length: +2"),
            ("Content-Length: 2", "Content-Length: 2048"),
            ("Host: x", "Origin: http://a.example"),
            ("Host: x", "Expect: 100-continue"),
            ("Host: x", "Connection: upgrade"),
            ("Host: x", "Host x"),
        ] {
            let text = EMIT.replacen(from, to, 1);
            assert!(
                matches!(head(text.as_bytes(), 1024), Head::Other),
                "{text:?}"
            );
        }
        let close = EMIT.replacen("Host: x", "connection: Close", 1);
        assert!(emit_head(close.as_bytes()).expect("an emit").close);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Head::Emit(h) = head(&bytes, 1024) {
                prop_assert!(h.len <= bytes.len());
                for r in [h.authorization, h.content_type].into_iter().flatten() {
                    prop_assert!(r.end <= h.len);
                }
            }
        }

        #[test]
        fn any_cut_of_an_emit_is_partial_or_whole(cut in 0usize..EMIT.len(), extra in "[ -~]{0,40}") {
            let text = format!("{}{extra}", &EMIT[..cut]);
            let read = head(text.as_bytes(), 1024);
            prop_assert!(!matches!(read, Head::Emit(ref h) if h.len > text.len()));
        }
    }
}
