//! A connection's write tap: rewrites one WebSocket text frame the server writes after an
//! upgrade, then gets out of the way.
//!
//! It exists for one job. Socket.IO's connection state recovery needs the namespace
//! `CONNECT` reply to carry `pid` beside `sid`; socketioxide writes that reply itself and
//! offers no hook to add a field (socketioxide issue #729). The gateway owns the bytes of
//! every connection it serves (`Node::serve`'s accept loop), so the Socket.IO transport
//! arms the tap of a connection that upgrades to WebSocket, and the tap hands each text
//! frame written after the `101` response to the transport's rewriter until it says it has
//! seen the frame it looks for. The tap is off on every other connection (two atomic loads
//! per write), and off again on that connection after the frame. When upstream grows the
//! hook, this module goes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Looks at one text frame's payload: `None` when it is not the frame looked for (the
/// tap keeps looking); `Some(replacement)` when it is (`Some(None)` keeps it unchanged),
/// after which the tap is off.
pub type Rewriter = Arc<dyn Fn(&str) -> Option<Option<String>> + Send + Sync>;

/// How many frames an armed tap looks at before it gives up.
const MAX_FRAMES: u32 = 8;
/// The most an armed tap buffers before it gives up (a frame this large is not ours).
const MAX_BUFFERED: usize = 64 * 1024;

/// A connection's tap, shared between its stream and the requests it carries.
#[derive(Clone, Default)]
pub struct WsTap(Arc<Inner>);

impl std::fmt::Debug for WsTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTap")
            .field("armed", &self.0.armed.load(Ordering::Relaxed))
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    armed: AtomicBool,
    /// `state.output` holds bytes not written yet.
    pending: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    rewriter: Option<Rewriter>,
    /// The upgrade response is written: bytes are WebSocket frames.
    framing: bool,
    /// Bytes taken from the writer, not parsed yet.
    input: Vec<u8>,
    /// Bytes parsed (and maybe rewritten), not written yet.
    output: Vec<u8>,
    written: usize,
    frames: u32,
}

impl WsTap {
    /// Arms the tap: the next request's upgrade response and up to a few frames after it
    /// pass through `rewriter`.
    pub fn arm(&self, rewriter: Rewriter) {
        let mut s = self.0.state.lock();
        s.rewriter = Some(rewriter);
        s.framing = false;
        s.frames = 0;
        self.0.armed.store(true, Ordering::Release);
    }

    /// Whether the tap is looking at what is written.
    pub fn is_armed(&self) -> bool {
        self.0.armed.load(Ordering::Acquire)
    }

    /// Whether a write must go through the tap's state: armed, or bytes still held.
    fn busy(&self) -> bool {
        self.is_armed() || self.0.pending.load(Ordering::Acquire)
    }

    /// Records whether `s` still holds bytes to write (`s` is this tap's locked state).
    fn settle(&self, s: &State) {
        self.0
            .pending
            .store(s.written < s.output.len(), Ordering::Release);
    }

    /// Writes `buf` through the tap to `write`.
    pub(crate) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        mut write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if !self.busy() {
            return write(cx, buf);
        }
        let mut s = self.0.state.lock();
        let flushed = flush_output(&mut s, cx, &mut write);
        self.settle(&s);
        ready!(flushed)?;
        if !self.is_armed() {
            drop(s);
            return write(cx, buf);
        }
        s.input.extend_from_slice(buf);
        let done = parse(&mut s);
        if done || s.input.len() > MAX_BUFFERED {
            self.0.armed.store(false, Ordering::Release);
            let rest = std::mem::take(&mut s.input);
            s.output.extend_from_slice(&rest);
            s.rewriter = None;
        }
        // What is parsed goes out now if the socket takes it; the rest on the next flush.
        let flushed = flush_output(&mut s, cx, &mut write);
        self.settle(&s);
        let _ = flushed?;
        Poll::Ready(Ok(buf.len()))
    }

    /// Writes out what the tap holds, then flushes `flush`.
    pub(crate) fn poll_flush(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        if !self.busy() {
            return Poll::Ready(Ok(()));
        }
        let mut s = self.0.state.lock();
        let flushed = flush_output(&mut s, cx, &mut write);
        self.settle(&s);
        flushed
    }
}

fn flush_output(
    s: &mut State,
    cx: &mut Context<'_>,
    write: &mut impl FnMut(&mut Context<'_>, &[u8]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<()>> {
    while s.written < s.output.len() {
        let n = ready!(write(cx, &s.output[s.written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        s.written += n;
    }
    s.output.clear();
    s.written = 0;
    Poll::Ready(Ok(()))
}

/// Moves what can be parsed from `input` to `output`; `true` when the tap is done.
fn parse(s: &mut State) -> bool {
    loop {
        if !s.framing {
            let Some(end) = find(&s.input, b"\r\n\r\n") else {
                return false;
            };
            let head: Vec<u8> = s.input.drain(..end + 4).collect();
            let upgraded = head.starts_with(b"HTTP/1.1 101");
            s.output.extend_from_slice(&head);
            if !upgraded {
                // Not an upgrade after all: nothing of ours follows.
                return true;
            }
            s.framing = true;
            continue;
        }
        let Some((header_len, payload_len)) = frame_len(&s.input) else {
            return false;
        };
        let total = header_len + payload_len;
        if s.input.len() < total {
            return false;
        }
        let frame: Vec<u8> = s.input.drain(..total).collect();
        s.frames += 1;
        let opcode = frame[0] & 0x0f;
        let fin = frame[0] & 0x80 != 0;
        let masked = frame[1] & 0x80 != 0;
        let verdict = if opcode == 1 && fin && !masked {
            match (std::str::from_utf8(&frame[header_len..]), &s.rewriter) {
                (Ok(text), Some(r)) => r(text),
                _ => None,
            }
        } else {
            None
        };
        match verdict {
            Some(Some(new)) => {
                s.output.extend_from_slice(&text_frame(new.as_bytes()));
                return true;
            }
            Some(None) => {
                s.output.extend_from_slice(&frame);
                return true;
            }
            None => s.output.extend_from_slice(&frame),
        }
        if s.frames >= MAX_FRAMES {
            return true;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A server frame's header length and payload length, once the header is complete.
fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let len7 = usize::from(b[1] & 0x7f);
    let mask = if b[1] & 0x80 != 0 { 4 } else { 0 };
    match len7 {
        126 => {
            let ext = b.get(2..4)?;
            Some((4 + mask, usize::from(u16::from_be_bytes([ext[0], ext[1]]))))
        }
        127 => {
            let ext: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            let n = usize::try_from(u64::from_be_bytes(ext)).unwrap_or(usize::MAX / 2);
            Some((10 + mask, n))
        }
        n => Some((2 + mask, n)),
    }
}

/// A final, unmasked text frame carrying `payload`.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// A stream whose writes go through a [`WsTap`].
#[derive(Debug)]
pub struct Tapped<S> {
    inner: S,
    tap: WsTap,
}

impl<S> Tapped<S> {
    /// `inner`, with a fresh tap.
    pub fn new(inner: S) -> Self {
        Tapped {
            inner,
            tap: WsTap::default(),
        }
    }

    /// The stream's tap.
    pub fn tap(&self) -> &WsTap {
        &self.tap
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let inner = &mut me.inner;
        me.tap
            .poll_write(cx, buf, |cx, b| Pin::new(&mut *inner).poll_write(cx, b))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let inner = &mut me.inner;
        ready!(
            me.tap
                .poll_flush(cx, |cx, b| Pin::new(&mut *inner).poll_write(cx, b))
        )?;
        Pin::new(inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let inner = &mut me.inner;
        ready!(
            me.tap
                .poll_flush(cx, |cx, b| Pin::new(&mut *inner).poll_write(cx, b))
        )?;
        Pin::new(inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = text_frame(payload);
        f[0] = 0x80 | opcode;
        f
    }

    fn rewriter() -> Rewriter {
        Arc::new(|text: &str| {
            text.strip_prefix("40")
                .map(|rest| Some(format!("40{}", rest.replace("}", ",\"pid\":\"P\"}"))))
        })
    }

    async fn through_tap(chunks: &[Vec<u8>], arm: bool) -> Vec<u8> {
        let mut t = Tapped::new(Vec::new());
        if arm {
            t.tap().arm(rewriter());
        }
        for c in chunks {
            // Byte by byte, as a writer that splits its writes anywhere.
            for b in c {
                t.write_all(std::slice::from_ref(b)).await.expect("write");
            }
        }
        t.flush().await.expect("flush");
        t.inner
    }

    #[tokio::test]
    async fn the_connect_frame_gets_its_field_and_the_rest_passes_unchanged() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec();
        let open = server_frame(1, br#"0{"sid":"e1","upgrades":[]}"#);
        let connect = server_frame(1, br#"40/messages,{"sid":"s1"}"#);
        let later = server_frame(1, br#"42/messages,["x",{}]"#);
        let big = server_frame(1, &vec![b'a'; 300]);
        let out = through_tap(
            &[
                head.clone(),
                open.clone(),
                connect,
                later.clone(),
                big.clone(),
            ],
            true,
        )
        .await;
        let mut expected = head.clone();
        expected.extend(&open);
        expected.extend(server_frame(1, br#"40/messages,{"sid":"s1","pid":"P"}"#));
        expected.extend(&later);
        expected.extend(&big);
        assert_eq!(out, expected);
    }

    #[tokio::test]
    async fn an_unarmed_tap_or_a_refused_upgrade_changes_nothing() {
        let frames = [
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
            server_frame(1, br#"40/messages,{"sid":"s1"}"#),
        ];
        assert_eq!(through_tap(&frames, false).await, frames.concat());
        let refused = [
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\nno".to_vec(),
            server_frame(1, br#"40/messages,{"sid":"s1"}"#),
        ];
        assert_eq!(through_tap(&refused, true).await, refused.concat());
    }

    #[test]
    fn frame_lengths_of_every_size_are_read() {
        for n in [0usize, 125, 126, 65535, 65536] {
            let f = text_frame(&vec![b'x'; n]);
            let (h, len) = frame_len(&f).expect("a header");
            assert_eq!((h + len, len), (f.len(), n));
        }
        assert_eq!(frame_len(&[0x81]), None);
    }
}
