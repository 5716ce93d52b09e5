//! Test helpers shared by the plugin crates' integration tests.
//!
//! [`RedisServer`] starts a private `redis-server` on a free loopback port, with
//! persistence off (`--save "" --appendonly no`), so a test can stop it and start it
//! again empty, the way a real Redis that keeps nothing on disk restarts. The server is
//! killed when the value is dropped. Set `REDIS_SERVER` to use another binary than the
//! `redis-server` found on `PATH` (and `REDIS_CLI` for `redis-cli`).
//!
//! [`RedisCluster`] starts a real Redis Cluster: three masters and three replicas in
//! cluster mode, joined with `redis-cli --cluster create`. [`RedisCluster::shared`] is the
//! one cluster of a test run: the one `SB_REDIS_CLUSTER` names (the test
//! scripts start it once with the `redis-cluster` binary of this crate), else one started
//! for this test process. [`FaultProxy`] sits between a client and a server and injects
//! latency, partitions, resets and half-open links. [`TestCa`] makes a CA and the
//! certificates a TLS Redis and its clients need.

mod ca;
mod cluster;
mod proxy;

pub use ca::TestCa;
pub use cluster::{CLUSTER_ENV, ClusterNode, RedisCluster};
pub use proxy::{Fault, FaultProxy};

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on its own port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Arguments beyond the defaults (TLS, ACL users).
    extra: Vec<String>,
    /// The port `accepts` checks: the TLS port when the plain one is off.
    probe: u16,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    ///
    /// Panics when `redis-server` cannot be started: this is for tests only.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with `extra` arguments after the defaults (`--user …`, `--tls-…`).
    /// With `--port 0` and `--tls-port {port}` in `extra`, the `{port}` placeholder is the
    /// server's port and it serves TLS only.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("switchboard-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch dir for redis-server");
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            extra,
            probe: port,
        };
        server.spawn();
        server
    }

    /// The `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (like a crash: nothing is saved) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.accepts() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(&bin)
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            self.child = Some(child);
            while Instant::now() < deadline {
                if self.accepts() {
                    return;
                }
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(_)) = c.try_wait()
                {
                    // Exited (the port may still be in TIME_WAIT after a restart): retry.
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.child = None;
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn accepts(&self) -> bool {
        accepts(self.probe)
    }
}

/// Whether something accepts TCP connections on loopback `port`.
pub(crate) fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `check` every 20 ms until it is true or `within` has passed; returns the last result.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
