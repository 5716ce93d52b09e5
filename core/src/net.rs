//! The node's TCP connections, shared between the HTTP server and a transport's writers.
//!
//! [`Node::serve`](crate::Node::serve) accepts connections whose socket sits behind an
//! `Arc`, and puts a [`PeerSocket`] handle to it in every request's extensions. The HTTP
//! server reads and writes through it as through a plain `TcpStream`; once a request is
//! upgraded to a WebSocket, a transport may keep the handle and write a ready frame to the
//! socket straight from the publishing thread ([`PeerSocket::try_write`]) instead of waking
//! the socket's task, provided it never lets two writers interleave inside a frame.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::tap::{Tapped, WsTap};

/// A handle to the connection a request came in on: its TCP socket, when a transport may
/// write to it directly, and its write tap.
///
/// Found in the extensions of every request [`Node::serve`](crate::Node::serve) serves
/// (as `axum::extract::ConnectInfo<PeerSocket>`); absent when the router is served otherwise.
/// Over TLS there is no direct socket: bytes must go through the TLS stream.
#[derive(Debug, Clone)]
pub struct PeerSocket {
    tcp: Option<Arc<TcpStream>>,
    tap: WsTap,
}

impl PeerSocket {
    /// A handle to `socket`, for a transport served some other way (and for tests).
    pub fn new(socket: Arc<TcpStream>) -> Self {
        PeerSocket {
            tcp: Some(socket),
            tap: WsTap::default(),
        }
    }

    /// Whether a transport may write to the socket itself ([`PeerSocket::try_write`]).
    pub fn is_direct(&self) -> bool {
        self.tcp.is_some()
    }

    /// Writes what the socket takes now without waiting: the number of bytes written, or
    /// `WouldBlock` when its send buffer is full. One `write(2)` at most.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.tcp {
            Some(tcp) => tcp.try_write(buf),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no direct socket (TLS)",
            )),
        }
    }

    /// The peer's address, when known.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.tcp {
            Some(tcp) => tcp.peer_addr(),
            None => Err(io::Error::new(io::ErrorKind::Unsupported, "not known")),
        }
    }

    /// The connection's write tap (see [`crate::tap`]).
    pub fn tap(&self) -> &WsTap {
        &self.tap
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SharedListener>>
    for PeerSocket
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, SharedListener>) -> Self {
        stream.io().peer()
    }
}

impl<S>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for PeerSocket
where
    crate::tls::TlsListener: axum::serve::Listener<Io = Tapped<S>>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        PeerSocket {
            tcp: None,
            tap: stream.io().tap().clone(),
        }
    }
}

/// A TCP listener whose connections are [`SharedStream`]s.
#[derive(Debug)]
pub struct SharedListener(TcpListener);

impl SharedListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        SharedListener(listener)
    }
}

impl axum::serve::Listener for SharedListener {
    type Io = SharedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop: retries, and backs off when out of file descriptors.
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (
            SharedStream {
                tcp: Arc::new(tcp),
                tap: WsTap::default(),
                unread: Bytes::new(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// An accepted connection, readable and writable like a `TcpStream`, whose socket a
/// [`PeerSocket`] may also write to.
///
/// Dropping it ends the connection (both directions are shut down) even while
/// [`PeerSocket`] handles to it live on; their writes then fail.
#[derive(Debug)]
pub struct SharedStream {
    tcp: Arc<TcpStream>,
    tap: WsTap,
    /// Bytes read from the socket and given back, read again before the socket's next.
    unread: Bytes,
}

impl SharedStream {
    /// A handle to this connection for the requests it carries.
    pub fn peer(&self) -> PeerSocket {
        PeerSocket {
            tcp: Some(self.tcp.clone()),
            tap: self.tap.clone(),
        }
    }

    /// Gives back bytes already read from the socket: the next reads return them first.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty());
        self.unread = bytes;
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tcp) > 1 {
            // The last handle closes the socket itself; otherwise end the connection now.
            let _ = socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Runs `write` once `tcp` is writable, until it does not find it full.
fn poll_write_with(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match write(tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            let given = self.unread.split_to(n);
            buf.put_slice(&given);
            return Poll::Ready(Ok(()));
        }
        let tcp = &self.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let room = buf.remaining();
            let mut read = false;
            let done = tcp.try_io(tokio::io::Interest::READABLE, || {
                let n = tcp.try_read_buf(buf)?;
                read = true;
                if n > 0 && n < room && !cfg!(windows) {
                    // A read that did not fill the buffer drained the socket: as tokio's
                    // own `TcpStream` does, forget its readiness (unless an event came
                    // since), so the next read waits for data instead of asking for it.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match done {
                _ if read => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
                Ok(()) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.tcp;
        self.tap.poll_write(cx, buf, |cx, b| {
            poll_write_with(tcp, cx, |tcp| tcp.try_write(b))
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.tap.is_armed() {
            // Rare (an upgrade being looked at): one buffer through the tap.
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            return self.poll_write(cx, &joined);
        }
        let tcp = &self.tcp;
        poll_write_with(tcp, cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp = &self.tcp;
        self.tap
            .poll_flush(cx, |cx, b| poll_write_with(tcp, cx, |tcp| tcp.try_write(b)))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let r = socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_shared_stream_and_its_peer_socket_write_the_same_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut listener = SharedListener::new(listener);
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"ping").await.expect("write");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("read");
            got
        });
        let (mut stream, _) = axum::serve::Listener::accept(&mut listener).await;
        let peer = PeerSocket::new(stream.tcp.clone());
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        stream.write_all(b"one,").await.expect("write");
        assert_eq!(peer.try_write(b"two,").expect("try_write"), 4);
        stream.write_all(b"three").await.expect("write");
        drop(stream);
        assert_eq!(
            client.await.expect("client"),
            b"one,two,three",
            "dropping the stream ends the connection while a handle lives on"
        );
        assert!(peer.try_write(b"late").is_err());
    }
}
