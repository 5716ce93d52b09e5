//! A minimal HTTP/1.1 keep-alive client for `POST /api/v1/emit`, paced to a schedule.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sio::Shared;

/// One HTTP publisher connection's share of the publishes.
#[derive(Debug, Clone)]
pub(crate) struct HttpPlan {
    /// Server address (loopback).
    pub(crate) addr: SocketAddr,
    /// `Authorization: Bearer` key.
    pub(crate) api_key: String,
    /// This connection sends publishes `first`, `first + step`, ... below `total`.
    pub(crate) first: usize,
    /// Number of publisher connections.
    pub(crate) step: usize,
    /// Publishes in the whole run.
    pub(crate) total: usize,
    /// When publish 0 goes.
    pub(crate) start: Instant,
    /// Time between consecutive publishes (all connections together).
    pub(crate) interval: Duration,
    /// Members of each room; publish `i` goes to room `i % rooms.len()`.
    pub(crate) rooms: Rc<Vec<u64>>,
}

/// The answer to one request (its whole text is left in the caller's buffer).
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: u16,
    /// Whether the server closes the connection after it.
    pub(crate) close: bool,
}

/// Opens a keep-alive connection (no Nagle).
pub(crate) async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends one request and reads its answer into `buf`.
pub(crate) async fn request(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> Result<Answer, String> {
    stream
        .write_all(req)
        .await
        .map_err(|e| format!("http write: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("http read: {e}"))?;
        if n == 0 {
            return Err("http: connection closed".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head)) => {
                let status = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let Some(len) =
                    header("content-length").and_then(|v| v.trim().parse::<usize>().ok())
                else {
                    return Err(format!("http {status}: no content-length"));
                };
                while buf.len() < head + len {
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| format!("http read: {e}"))?;
                    if n == 0 {
                        return Err("http: connection closed in the body".to_owned());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(Answer { status, close });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > 64 * 1024 {
                    return Err("http: response head too large".to_owned());
                }
            }
            Err(e) => return Err(format!("http: bad response: {e}")),
        }
    }
}

/// Sends this connection's publishes on schedule; counts what they should deliver.
pub(crate) async fn publish(plan: HttpPlan, shared: Rc<Shared>) {
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let host = plan.addr.to_string();
    for i in (plan.first..plan.total).step_by(plan.step.max(1)) {
        let at = plan.start + plan.interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        let lag = Instant::now().saturating_duration_since(at).as_micros();
        shared
            .publish_lag
            .borrow_mut()
            .push(u32::try_from(lag).unwrap_or(u32::MAX));
        let room = i % plan.rooms.len().max(1);
        let sent = shared.clock.now_us();
        let body = format!(
            concat!(
                r#"{{"event":"message:received","data":{{"conversationId":"c{room}","#,
                r#""messageId":"{i}","senderId":"bench","type":"text","content":"{sent}","#,
                r#""status":"sent","timestamp":"2026-11-26T00:00:00.000Z"}}}}"#
            ),
            room = room,
            i = i,
            sent = sent
        );
        let req = format!(
            "POST /api/v1/emit HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            plan.api_key,
            body.len()
        );
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match connect(plan.addr).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    shared
                        .stats
                        .borrow_mut()
                        .error(format!("http connect: {e}"));
                    continue;
                }
            },
        };
        match request(s, req.as_bytes(), &mut buf).await {
            Ok(a) => {
                let mut st = shared.stats.borrow_mut();
                if a.status == 200 {
                    st.publishes += 1;
                    st.expected += plan.rooms.get(room).copied().unwrap_or(0);
                } else {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    st.error(format!(
                        "http status {}: {:.120}",
                        a.status,
                        text.rsplit("\r\n\r\n").next().unwrap_or("")
                    ));
                }
                if a.close {
                    stream = None;
                }
            }
            Err(e) => {
                shared.stats.borrow_mut().error(e);
                stream = None;
            }
        }
    }
}
