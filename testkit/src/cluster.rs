//! A real Redis Cluster for tests: cluster-mode `redis-server`s on free loopback ports,
//! joined with `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::accepts;

/// The variable naming the shared cluster of a test run: its nodes as `host:port`, comma
/// separated (what the `redis-cluster` binary prints).
pub const CLUSTER_ENV: &str = "SB_REDIS_CLUSTER";

/// The highest port a cluster node may take: its bus listens on port + 10000.
const MAX_PORT: u16 = 55_000;

/// One server of a cluster.
#[derive(Debug)]
pub struct ClusterNode {
    port: u16,
    child: Option<Child>,
}

impl ClusterNode {
    /// The node's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this test started the node's process and it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A Redis Cluster of three masters and three replicas (or one named by
/// [`CLUSTER_ENV`], which this value then neither owns nor stops).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: Option<PathBuf>,
    extra: Vec<String>,
}

fn redis_cli() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".to_owned())
}

fn redis_server() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// Ports for `n` nodes, each with its bus port (+10000) free too, all at most [`MAX_PORT`].
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()) << 16;
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = 20_000 + (seed >> 33) as u16 % (MAX_PORT - 20_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if !ports.contains(&port) && free(port) && free(port + 10_000) {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no free ports for a Redis Cluster");
    ports
}

/// Runs `redis-cli -p port args…`; its stdout, or `None` when it could not run or failed.
pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new(redis_cli())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RedisCluster {
    /// Starts three masters and three replicas and waits until every slot is served.
    ///
    /// Panics when the servers cannot be started: this is for tests only.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), each server with `extra` arguments (`--user …`).
    pub fn start_with(extra: &[&str]) -> Self {
        let ports = cluster_ports(6);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        std::fs::create_dir_all(&dir).expect("a scratch dir for the cluster");
        let mut cluster = RedisCluster {
            nodes: ports
                .iter()
                .map(|&port| ClusterNode { port, child: None })
                .collect(),
            dir: Some(dir),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(addrs);
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let auth = cluster.auth_args();
        let status = Command::new(redis_cli())
            .args(&auth)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        assert!(
            cluster.wait_ok(Duration::from_secs(30)),
            "the cluster did not come up"
        );
        cluster
    }

    /// The cluster of this test run: the one [`CLUSTER_ENV`] names, else one started for
    /// this process (and stopped when it exits).
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(CLUSTER_ENV) {
            Ok(list) if !list.trim().is_empty() => RedisCluster::named(&list),
            _ => {
                let cluster = RedisCluster::start();
                cluster.stop_with_process();
                cluster
            }
        })
    }

    /// A cluster started elsewhere, from its `host:port` list.
    fn named(list: &str) -> Self {
        let nodes = list
            .split(',')
            .filter_map(|a| a.trim().rsplit_once(':'))
            .filter_map(|(_, p)| p.parse().ok())
            .map(|port| ClusterNode { port, child: None })
            .collect::<Vec<_>>();
        assert!(!nodes.is_empty(), "{CLUSTER_ENV}={list:?} names no node");
        RedisCluster {
            nodes,
            dir: None,
            extra: Vec::new(),
        }
    }

    /// Kills this cluster's servers when the current process exits, however it exits (a
    /// value in a `static` is never dropped).
    pub fn stop_with_process(&self) {
        let pids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| c.id().to_string()))
            .collect();
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pids.join(" "),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn auth_args(&self) -> Vec<String> {
        // An ACL `--user` line for the default user means redis-cli must log in as it.
        match self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1))
        {
            Some(pass) => vec![
                "-a".to_owned(),
                pass.clone(),
                "--no-auth-warning".to_owned(),
            ],
            None => Vec::new(),
        }
    }

    fn spawn(&mut self, i: usize) {
        let Some(dir) = self.dir.clone() else { return };
        let port = self.nodes[i].port;
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir).expect("a node dir");
        let child = Command::new(redis_server())
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            // Failover within about a second of a master's death.
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&node_dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        self.nodes[i].child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !accepts(port) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    /// The `host:port` of every node, comma separated (the [`CLUSTER_ENV`] form).
    pub fn addresses(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A `redis-cluster://` URL naming every node (fred's form), with `credentials`
    /// (`user:password@`, or empty) in it.
    pub fn url_with(&self, credentials: &str) -> String {
        let mut nodes = self.nodes.iter().map(|n| n.port);
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!(
            "redis-cluster://{credentials}127.0.0.1:{first}?{}",
            rest.join("&")
        )
    }

    /// A `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        self.url_with("")
    }

    /// Runs `redis-cli args…` against the node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let auth = self.auth_args();
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let all: Vec<&str> = auth.iter().chain(args.iter()).copied().collect();
        cli(port, &all)
    }

    /// The ports of the nodes that are masters now (by `CLUSTER NODES` of any live node).
    pub fn masters(&self) -> Vec<u16> {
        self.roles()
            .into_iter()
            .filter(|(_, master)| *master)
            .map(|(p, _)| p)
            .collect()
    }

    /// `(port, is master)` of every connected node, as a live node sees them.
    fn roles(&self) -> Vec<(u16, bool)> {
        for n in self.nodes.iter().filter(|n| accepts(n.port)) {
            if let Some(out) = self.cli(n.port, &["cluster", "nodes"]) {
                return out
                    .lines()
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        let port = f
                            .get(1)?
                            .split('@')
                            .next()?
                            .rsplit(':')
                            .next()?
                            .parse()
                            .ok()?;
                        let flags = f.get(2)?;
                        let live = !flags.contains("fail") && f.get(7) == Some(&"connected");
                        live.then(|| (port, flags.contains("master")))
                    })
                    .collect();
            }
        }
        Vec::new()
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let port = self.nodes.iter().map(|n| n.port).find(|&p| accepts(p))?;
        let slot: u16 = self
            .cli(port, &["cluster", "keyslot", key])?
            .trim()
            .parse()
            .ok()?;
        let out = self.cli(port, &["cluster", "slots"])?;
        // `redis-cli` prints CLUSTER SLOTS flattened: start, end, then per server ip, port, id.
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && lines[i + 2] == "127.0.0.1"
                && let Ok(master) = lines[i + 3].parse::<u16>()
                && (start..=end).contains(&slot)
            {
                return Some(master);
            }
            i += 1;
        }
        None
    }

    /// Whether every live node says `cluster_state:ok` and every master's slots are served,
    /// within `within`.
    pub fn wait_ok(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| accepts(n.port)).all(|n| {
                self.cli(n.port, &["cluster", "info"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            });
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the node on `port` with SIGKILL (a crash: nothing saved). Panics for a node
    /// this test did not start.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        let mut child = node.child.take().expect("a node this test started");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the node on `port` again (it rejoins from its `nodes.conf`, as a replica when
    /// its slots were taken over meanwhile) and waits until it accepts connections.
    pub fn restart(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster");
        self.spawn(i);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
