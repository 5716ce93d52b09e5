//! A TCP proxy that puts faults between a client and its server: added latency, a partition
//! (nothing flows, nothing is refused), connection resets and half-open links.
//!
//! The last two happen to the connections open at the moment ([`FaultProxy::reset_all`],
//! [`FaultProxy::half_open_all`]); new connections are carried as the current [`Fault`]
//! says.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Bytes pass as they come.
    #[default]
    None,
    /// Every chunk, in both directions, arrives this much later (order kept).
    Latency(Duration),
    /// A partition: connections stay open and new ones are accepted, but nothing reaches
    /// the other side until the fault is lifted; then what was held flows (as TCP's
    /// retransmissions would deliver it), unless a side gave up and closed meanwhile.
    Partition,
}

/// A TCP proxy on a free loopback port in front of `upstream`; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    port: u16,
    fault: watch::Sender<Fault>,
    resets: watch::Sender<u64>,
    half_opens: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let port = listener.local_addr().expect("its address").port();
        let (fault, fault_rx) = watch::channel(Fault::None);
        let (resets, resets_rx) = watch::channel(0u64);
        let (half_opens, half_opens_rx) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                let fault = fault_rx.clone();
                let signals = Signals {
                    resets: resets_rx.clone(),
                    half_opens: half_opens_rx.clone(),
                };
                let open = counter.clone();
                tokio::spawn(carry(client, upstream, fault, signals, open));
            }
        });
        FaultProxy {
            port,
            fault,
            resets,
            half_opens,
            open,
            task,
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Applies `fault` from now on (to open connections and new ones).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Resets every open connection (an RST to both sides, as a middlebox that drops its
    /// state does); new connections are carried as before.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Turns every open connection half-open: its server side is closed (the server sees
    /// the client go and forgets it, subscriptions and all), while its client side stays
    /// open and silent, never getting a FIN or a reset, as when a NAT or a load balancer
    /// drops a connection's state: the client must notice by itself. New connections are
    /// carried as before.
    pub fn half_open_all(&self) {
        self.half_opens.send_modify(|n| *n += 1);
    }

    /// How many client connections the proxy holds open.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end with the next reset signal's close.
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Counts a connection as open while alive.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Open(n)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes `s` with an RST instead of a FIN.
fn abort(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Waits while `fault` is a partition; returns false when the proxy went away.
async fn until_flowing(fault: &mut watch::Receiver<Fault>) -> bool {
    fault.wait_for(|f| *f != Fault::Partition).await.is_ok()
}

/// Chunks on their way to one side, each with when it may be written.
type Queue = VecDeque<(Instant, Vec<u8>)>;

/// Writes every chunk of `q` that is due by `now`.
async fn flush_due(to: &mut TcpStream, q: &mut Queue, now: Instant) -> std::io::Result<()> {
    while q.front().is_some_and(|(due, _)| *due <= now) {
        if let Some((_, bytes)) = q.pop_front() {
            to.write_all(&bytes).await?;
        }
    }
    Ok(())
}

/// The one-shot signals: each is a counter that goes up once per call.
struct Signals {
    resets: watch::Receiver<u64>,
    half_opens: watch::Receiver<u64>,
}

impl Signals {
    /// The counters now, to wait for the next change from.
    fn mark(&mut self) -> (u64, u64) {
        (
            *self.resets.borrow_and_update(),
            *self.half_opens.borrow_and_update(),
        )
    }
}

/// How one connection ends.
enum End {
    /// Either side closed (or failed): close the other.
    Closed,
    /// [`FaultProxy::reset_all`].
    Reset,
    /// [`FaultProxy::half_open_all`].
    HalfOpen,
}

/// Resolves at the first change of `rx` after `start` (or when the proxy went away).
async fn changed_since(rx: &mut watch::Receiver<u64>, start: u64) {
    let _ = rx.wait_for(|n| *n != start).await;
}

/// Carries one connection until either side closes, a reset or a half-open signal.
async fn carry(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut fault: watch::Receiver<Fault>,
    mut signals: Signals,
    open: Arc<AtomicUsize>,
) {
    let _open = Open::new(open);
    let (reset_mark, half_mark) = signals.mark();
    // A partition holds new connections too: the client's SYN was answered, nothing more.
    let flowing = tokio::select! {
        ok = until_flowing(&mut fault) => ok,
        () = changed_since(&mut signals.resets, reset_mark) => return abort(client),
        () = changed_since(&mut signals.half_opens, half_mark) => {
            return silent(client, signals.resets, reset_mark).await;
        }
    };
    if !flowing {
        return abort(client);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return abort(client);
    };
    let _ = server.set_nodelay(true);
    let mut up: Queue = VecDeque::new();
    let mut down: Queue = VecDeque::new();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let end = loop {
        let current = *fault.borrow_and_update();
        let delay = match current {
            Fault::Latency(d) => d,
            _ => Duration::ZERO,
        };
        let moving = current != Fault::Partition;
        let next = [up.front(), down.front()]
            .into_iter()
            .flatten()
            .map(|(due, _)| *due)
            .min();
        tokio::select! {
            r = client.read(&mut cbuf) => match r {
                Ok(n) if n > 0 => up.push_back((Instant::now() + delay, cbuf[..n].to_vec())),
                _ => break End::Closed,
            },
            r = server.read(&mut sbuf) => match r {
                Ok(n) if n > 0 => down.push_back((Instant::now() + delay, sbuf[..n].to_vec())),
                _ => break End::Closed,
            },
            () = sleep_until_opt(next), if moving && next.is_some() => {
                let now = Instant::now();
                if flush_due(&mut server, &mut up, now).await.is_err()
                    || flush_due(&mut client, &mut down, now).await.is_err()
                {
                    break End::Closed;
                }
            }
            r = fault.changed() => if r.is_err() { break End::Reset },
            () = changed_since(&mut signals.resets, reset_mark) => break End::Reset,
            () = changed_since(&mut signals.half_opens, half_mark) => break End::HalfOpen,
        }
    };
    match end {
        End::Closed => {
            // What is already on its way still arrives, then both sides see a close.
            let partitioned = *fault.borrow() == Fault::Partition;
            if !partitioned {
                let far = Instant::now() + Duration::from_secs(3600);
                let _ = flush_due(&mut server, &mut up, far).await;
                let _ = flush_due(&mut client, &mut down, far).await;
            }
        }
        End::Reset => {
            abort(client);
            abort(server);
        }
        End::HalfOpen => {
            // The server sees the client leave; the client sees nothing at all.
            drop(server);
            silent(client, signals.resets, reset_mark).await;
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Holds a connection open without a byte in either direction until a reset.
async fn silent(mut client: TcpStream, mut resets: watch::Receiver<u64>, start: u64) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            () = changed_since(&mut resets, start) => break,
            // Swallow what the client sends, so its writes do not block.
            r = client.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
        }
    }
    abort(client);
}
