//! `loadgen`: drives a Socket.IO server (Switchboard, the Node peer or the bare socketioxide
//! server), or with `--protocol native` a server of Switchboard's native WebSocket protocol
//! (Switchboard or the bare native server), over loopback and prints one JSON result.
//!
//! ```text
//! loadgen fanout  --url http://127.0.0.1:3101 --pid 1234 --sockets 1000 --rate 60000
//! loadgen fanout  --publisher typing ...     # a socket's typing events instead of the API
//! loadgen fanout  --protocol native ...      # the native protocol at /ws instead of Socket.IO
//! loadgen rooms   --sockets 1000 --room-size 10 --rate 60000
//! loadgen connect --sockets 5000 --concurrency 100
//! loadgen idle    --sockets 19000 --hold 10
//! loadgen fanout  --url http://127.0.0.1:3101 --url2 http://127.0.0.1:3102 \
//!                 --pid A --pid2 B --redis-pid R ...   # members split over two nodes
//! loadgen soak    --url http://127.0.0.1:3101 --url http://127.0.0.1:3102 ...  # churn, hours
//! loadgen report  a.json b.json c.json       # side by side, ratios to the first
//! ```
//!
//! It runs on one thread (pin it to a core of its own) and reports its own CPU time from
//! `getrusage`, and the server's CPU time and RSS from `/proc/<pid>` when `--pid` is given.
//! With `--url2`, socket *i* connects to `--url` when *i* is even and to `--url2` when it
//! is odd, while the HTTP publisher and everything else keep to `--url`; `--pid2` and
//! `--redis-pid` add the second node's and the Redis server's CPU time to the server's
//! (each is also reported on its own).

mod http;
mod native;
mod probe;
mod report;
mod sio;
mod soak;
mod stats;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::LocalSet;

use crate::probe::{Cpu, OwnCpu};
use crate::sio::{Counted, Protocol, Shared, Target, TypingPlan};
use crate::stats::{Clock, percentiles};

/// Load generator for Socket.IO and native WebSocket servers on loopback.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N sockets in one room; publishes via the HTTP API or a socket's typing events.
    Fanout(RunArgs),
    /// N sockets over N/k rooms of k; publishes via the HTTP API, round robin over rooms.
    Rooms(RunArgs),
    /// A connection storm with JWT verification: connects per second, CPU per connect.
    Connect(RunArgs),
    /// N idle sockets: the server's RSS per connection.
    Idle(RunArgs),
    /// Hours of churn over several nodes: sockets join, leave, drop and reconnect while the
    /// HTTP API publishes into their rooms; counts every delivery a member missed.
    Soak(soak::SoakArgs),
    /// Prints result files side by side, with ratios to the first.
    Report {
        /// Result files (JSON) written by `--out`.
        files: Vec<PathBuf>,
    },
}

/// How a fan-out is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Publisher {
    /// `POST /api/v1/emit` with `message:received`.
    Http,
    /// `typing:start` from publisher sockets in the room.
    Typing,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Server base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// A second node's base URL: odd sockets connect there, even ones to `--url`; the HTTP
    /// publisher still publishes on `--url` (loopback only).
    #[arg(long)]
    url2: Option<String>,
    /// The protocol the sockets speak.
    #[arg(long, value_enum, default_value_t = Protocol::Socketio)]
    protocol: Protocol,
    /// Socket.IO namespace.
    #[arg(long, default_value = "/messages")]
    namespace: String,
    /// Path of the native WebSocket endpoint (`--protocol native`).
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// HS256 secret the tokens are signed with.
    #[arg(
        long,
        env = "BENCH_SECRET",
        default_value = "switchboard-bench-secret-0123456789abcdef"
    )]
    secret: String,
    /// API key for the HTTP API.
    #[arg(long, env = "BENCH_API_KEY", default_value = "bench-api-key")]
    api_key: String,
    /// The server's pid, for its CPU time and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// The second node's pid (`--url2`): its CPU time is added to the server's.
    #[arg(long)]
    pid2: Option<u32>,
    /// The Redis server's pid: its CPU time is added to the server's.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// A label for the server in the result.
    #[arg(long, default_value = "server")]
    label: String,
    /// Sockets (connections).
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Target deliveries per second (fanout, rooms).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds of publishing (fanout, rooms).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// How fanout publishes.
    #[arg(long, value_enum, default_value_t = Publisher::Http)]
    publisher: Publisher,
    /// Publisher sockets (typing) or HTTP connections (http).
    #[arg(long, default_value_t = 2)]
    publishers: usize,
    /// Sockets per room (rooms).
    #[arg(long, default_value_t = 10)]
    room_size: usize,
    /// Distinct users the sockets belong to (socket i is user `u{i % users}`).
    #[arg(long, default_value_t = 1)]
    users: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Seconds to hold idle sockets before reading RSS again (idle).
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Idle and connect sockets also join a room of `room-size`.
    #[arg(long)]
    join: bool,
    /// Limit on each socket's handshake, and on the whole setup (x4), seconds.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Also write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit 1 if anything errored, was lost or came twice (for smoke runs).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.cmd {
        Cmd::Report { files } => return report::print(&files),
        Cmd::Fanout(a) => (Scenario::Fanout, a),
        Cmd::Rooms(a) => (Scenario::Rooms, a),
        Cmd::Connect(a) => (Scenario::Connect, a),
        Cmd::Idle(a) => (Scenario::Idle, a),
        Cmd::Soak(a) => return soak::main(a),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (scenario, args) = args;
    let result = LocalSet::new().block_on(&rt, run(scenario, args.clone()));
    match result {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            println!("{text}");
            if let Some(path) = &args.out
                && let Err(e) = std::fs::write(path, format!("{text}\n"))
            {
                eprintln!("loadgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            let bad = ["errors", "lost", "duplicates", "unknown"]
                .iter()
                .any(|k| v[k].as_u64().unwrap_or(0) > 0);
            if args.check && bad {
                eprintln!("loadgen: {} had errors or lost deliveries", scenario.name());
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fanout,
    Rooms,
    Connect,
    Idle,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
        }
    }
}

/// Parses `http://host:port` and refuses anything but loopback.
pub(crate) fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url}: expected http://HOST:PORT"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--url {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url}: no address"))?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback {
        return Err(format!(
            "--url {url}: only loopback addresses are load-tested"
        ));
    }
    Ok(addr)
}

fn mint(secret: &str, sub: &str) -> Result<String, String> {
    mint_for(secret, sub, 3 * 3600)
}

/// An HS256 token for `sub` that expires `ttl_s` seconds from now.
pub(crate) fn mint_for(secret: &str, sub: &str, ttl_s: u64) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = json!({ "sub": sub, "iat": now, "exp": now + ttl_s });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign a token: {e}"))
}

/// The sockets of a run once connected, and how the connecting went.
struct Opened {
    /// Indices of the sockets that connected.
    indices: Vec<usize>,
    /// Their tasks, running from the moment each connected (so pings are answered).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    latencies: RefCell<Vec<u32>>,
    failed: u64,
    elapsed: Duration,
}

/// A socket's index and its running task.
type Running = (usize, tokio::task::JoinHandle<()>);

/// How each socket runs once connected.
struct Runner<'a> {
    shared: &'a Rc<Shared>,
    stop: watch::Receiver<bool>,
    go: watch::Receiver<Option<Instant>>,
    plan: &'a dyn Fn(usize) -> Option<TypingPlan>,
}

/// Opens `n` sockets, `concurrency` handshakes at a time, and runs each as soon as it is
/// open. Socket `i` uses `tokens[i]` and, when `room_of` is given, joins `c{room_of(i)}`.
async fn open_all(
    targets: &[Target],
    tokens: &[String],
    concurrency: usize,
    room_of: Option<&dyn Fn(usize) -> usize>,
    runner: Runner<'_>,
    overall: Duration,
) -> Result<Opened, String> {
    let n = tokens.len();
    let sem = Rc::new(Semaphore::new(concurrency.max(1)));
    let done: Rc<RefCell<Vec<Running>>> = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let lats = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let failed = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (i, token) in tokens.iter().enumerate() {
        let token = token.clone();
        let join = room_of.map(|f| format!("c{}", f(i)));
        let target = targets[i % targets.len()].clone();
        let plan = (runner.plan)(i);
        let (stop, go) = (runner.stop.clone(), runner.go.clone());
        let (sem, done, lats, failed, shared) = (
            sem.clone(),
            done.clone(),
            lats.clone(),
            failed.clone(),
            runner.shared.clone(),
        );
        handles.push(tokio::task::spawn_local(async move {
            let Ok(permit) = sem.acquire().await else {
                return;
            };
            let t = Instant::now();
            let opened = sio::open(&target, &token, join.as_deref()).await;
            drop(permit);
            match opened {
                Ok(ws) => {
                    let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                    lats.borrow_mut().push(us);
                    let task = tokio::task::spawn_local(sio::run(ws, shared, stop, go, plan));
                    done.borrow_mut().push((i, task));
                }
                Err(e) => {
                    failed.set(failed.get() + 1);
                    shared.stats.borrow_mut().error(e);
                }
            }
        }));
    }
    let all = futures_util::future::join_all(handles);
    if tokio::time::timeout(overall, all).await.is_err() {
        return Err(format!(
            "setup did not finish within {overall:?} ({} of {n} sockets open)",
            done.borrow().len()
        ));
    }
    let elapsed = started.elapsed();
    let mut sockets = std::mem::take(&mut *done.borrow_mut());
    sockets.sort_by_key(|(i, _)| *i);
    let (indices, tasks) = sockets.into_iter().unzip();
    Ok(Opened {
        indices,
        tasks,
        latencies: RefCell::new(std::mem::take(&mut *lats.borrow_mut())),
        failed: failed.get(),
        elapsed,
    })
}

fn server_cpu(pid: Option<u32>) -> Option<Cpu> {
    pid.and_then(probe::server_cpu)
}

/// The processes whose CPU time is the server's: the node, the second node, Redis.
#[derive(Debug, Clone, Copy)]
struct Pids {
    node: Option<u32>,
    node2: Option<u32>,
    redis: Option<u32>,
}

/// CPU readings of each of [`Pids`] at one moment.
#[derive(Debug, Clone, Copy)]
struct Cpus([Option<Cpu>; 3]);

impl Pids {
    /// Their names in results.
    const NAMES: [&'static str; 3] = ["node", "node2", "redis"];

    fn read(self) -> Cpus {
        Cpus([
            server_cpu(self.node),
            server_cpu(self.node2),
            server_cpu(self.redis),
        ])
    }

    /// Whether more than the one server is counted.
    fn several(self) -> bool {
        self.node2.is_some() || self.redis.is_some()
    }
}

impl Cpus {
    /// Each process's CPU seconds since `before` (`None` for one not given or gone).
    fn each_since(self, before: Cpus) -> [Option<f64>; 3] {
        let mut out = [None; 3];
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.0[k].zip(before.0[k]).map(|(b, a)| b.since(a));
        }
        out
    }

    /// The sum over the processes; `None` when the first (the server) is unknown.
    fn since(self, before: Cpus) -> Option<f64> {
        let each = self.each_since(before);
        each[0].map(|first| first + each[1].unwrap_or(0.0) + each[2].unwrap_or(0.0))
    }
}

/// `{"node": s, "node2": s, "redis": s}` for the processes given, each divided by `per`.
fn by_process(pids: Pids, each: [Option<f64>; 3], scale: f64, per: f64, digits: i32) -> Value {
    let mut m = serde_json::Map::new();
    let given = [pids.node, pids.node2, pids.redis];
    for k in 0..3 {
        if given[k].is_some() {
            m.insert(
                Pids::NAMES[k].to_owned(),
                json!(each[k].map(|s| round(s * scale / per.max(1.0), digits))),
            );
        }
    }
    Value::Object(m)
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn run(scenario: Scenario, a: RunArgs) -> Result<Value, String> {
    let addr = loopback_addr(&a.url)?;
    let addr2 = a.url2.as_deref().map(loopback_addr).transpose()?;
    let pids = Pids {
        node: a.pid,
        node2: a.pid2,
        redis: a.redis_pid,
    };
    if a.sockets == 0 {
        return Err("--sockets must be at least 1".to_owned());
    }
    let nofile = probe::raise_nofile();
    if (a.sockets as u64) + 64 > nofile {
        return Err(format!(
            "--sockets {} needs more open files than this process may have ({nofile})",
            a.sockets
        ));
    }
    let target_at = |addr: SocketAddr| Target {
        protocol: a.protocol,
        addr,
        url: match a.protocol {
            Protocol::Socketio => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
            Protocol::Native => format!("ws://{addr}{}", a.ws_path),
        },
        namespace: a.namespace.clone(),
        timeout: Duration::from_secs_f64(a.setup_timeout),
    };
    // Socket i connects to targets[i % targets.len()].
    let mut targets = vec![target_at(addr)];
    targets.extend(addr2.map(target_at));
    let overall = Duration::from_secs_f64(a.setup_timeout * 4.0);
    let users = a.users.clamp(1, a.sockets);
    let user_tokens: Vec<String> = (0..users)
        .map(|u| mint(&a.secret, &format!("u{u}")))
        .collect::<Result<_, _>>()?;

    // Who publishes, and what is counted.
    let typing = scenario == Scenario::Fanout && a.publisher == Publisher::Typing;
    let room_size = match scenario {
        Scenario::Fanout => a.sockets,
        _ => a.room_size.clamp(1, a.sockets),
    };
    let n_rooms = a.sockets.div_ceil(room_size);
    let publishers = if typing {
        a.publishers.clamp(1, a.sockets.saturating_sub(1).max(1))
    } else {
        a.publishers.max(1)
    };
    let per_publish = if typing {
        (room_size as f64 - 1.0).max(1.0)
    } else {
        room_size as f64
    };
    let publish_rate = (a.rate / per_publish).max(0.001);
    let total_publishes = (publish_rate * a.duration).ceil() as usize;
    let counted = match scenario {
        Scenario::Fanout if typing => Counted::Typing { publishers },
        Scenario::Fanout | Scenario::Rooms => Counted::Messages {
            publishes: total_publishes,
        },
        _ => Counted::Nothing,
    };
    let mut tokens: Vec<String> = (0..a.sockets)
        .map(|i| user_tokens[i % users].clone())
        .collect();
    if typing {
        for (j, t) in tokens.iter_mut().take(publishers).enumerate() {
            *t = mint(&a.secret, &format!("p{j}"))?;
        }
    }
    let shared = Rc::new(Shared {
        clock: Clock::new(),
        protocol: a.protocol,
        event_prefix: format!("42{},", a.namespace),
        counted,
        stats: RefCell::default(),
        latencies: RefCell::default(),
        publish_lag: RefCell::default(),
        typing_sent: RefCell::new(vec![Vec::new(); if typing { publishers } else { 0 }]),
        first_latency: RefCell::new(match counted {
            Counted::Messages { publishes } => vec![u32::MAX; publishes],
            _ => Vec::new(),
        }),
    });
    let joins = matches!(scenario, Scenario::Fanout | Scenario::Rooms) || a.join;
    let room_of = move |i: usize| i / room_size;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let interval = Duration::from_secs_f64(1.0 / publish_rate);
    let plan = |i: usize| {
        (typing && i < publishers).then(|| TypingPlan {
            index: i,
            offset: interval.mul_f64(i as f64),
            interval: interval.mul_f64(publishers as f64),
            count: total_publishes.div_ceil(publishers),
            conversation: format!("c{}", room_of(i)),
        })
    };

    let rss_before = a.pid.and_then(probe::server_rss);
    let cpu_before_connect = pids.read();
    let own_before_connect = OwnCpu::now();
    let opened = open_all(
        &targets,
        &tokens,
        a.concurrency,
        joins.then_some(&room_of as &dyn Fn(usize) -> usize),
        Runner {
            shared: &shared,
            stop: stop_rx,
            go: go_rx,
            plan: &plan,
        },
        overall,
    )
    .await?;
    let connected = opened.indices.len();
    let connect_elapsed = opened.elapsed;
    // Let the server finish what the connects started (user:online, presence).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_after_connect = pids.read();
    let own_after_connect = OwnCpu::now();
    let connect_lat = percentiles(&opened.latencies);

    let mut members = vec![0u64; n_rooms];
    for i in &opened.indices {
        if let Some(m) = members.get_mut(room_of(*i)) {
            *m += 1;
        }
    }
    let members = Rc::new(members);
    let socket_tasks = opened.tasks;
    let start = Instant::now() + Duration::from_millis(200);

    let mut out = json!({
        "scenario": scenario.name(),
        "server": a.label,
        "protocol": a.protocol.name(),
        "sockets": a.sockets,
        "connected": connected,
        "users": users,
        "errors": 0,
    });
    if addr2.is_some() {
        let mut split = vec![0u64; targets.len()];
        for i in &opened.indices {
            split[i % targets.len()] += 1;
        }
        out["url2"] = json!(a.url2);
        out["connected_per_node"] = json!(split);
    }

    match scenario {
        Scenario::Connect => {
            let server_s = cpu_after_connect.since(cpu_before_connect);
            let own = own_after_connect.since(own_before_connect);
            let ok = connected as f64;
            out["connect"] = json!({
                "concurrency": a.concurrency,
                "failed": opened.failed,
                "elapsed_s": round(connect_elapsed.as_secs_f64(), 3),
                "connects_per_s": round(ok / connect_elapsed.as_secs_f64().max(1e-9), 1),
                "latency": connect_lat,
            });
            out["server_cpu_s"] = json!(server_s.map(|s| round(s, 4)));
            out["server_cpu_ms_per_connect"] =
                json!(server_s.map(|s| round(s * 1e3 / ok.max(1.0), 4)));
            out["loadgen_cpu_s"] = json!(round(own.total(), 4));
            out["loadgen_cpu_ms_per_connect"] = json!(round(own.total() * 1e3 / ok.max(1.0), 4));
        }
        Scenario::Idle => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let rss_settled = a.pid.and_then(probe::server_rss);
            let cpu_hold0 = pids.read();
            tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
            let cpu_hold1 = pids.read();
            let rss_held = a.pid.and_then(probe::server_rss);
            let per_socket = rss_held
                .zip(rss_before)
                .map(|(after, before)| (after as f64 - before as f64) / (connected.max(1) as f64));
            out["idle"] = json!({
                "failed": opened.failed,
                "connects_per_s": round(connected as f64 / connect_elapsed.as_secs_f64().max(1e-9), 1),
                "rss_before_bytes": rss_before,
                "rss_settled_bytes": rss_settled,
                "rss_held_bytes": rss_held,
                "hold_s": a.hold,
                "server_cpu_s_during_hold": cpu_hold1.since(cpu_hold0).map(|s| round(s, 4)),
                "extrapolated_rss_100k_bytes": per_socket.zip(rss_before).map(|(p, b)| (b as f64 + p * 100_000.0).round()),
            });
            out["rss_per_socket_bytes"] = json!(per_socket.map(|p| p.round()));
        }
        Scenario::Fanout | Scenario::Rooms => {
            tokio::time::sleep_until((start - Duration::from_millis(50)).into()).await;
            let cpu0 = pids.read();
            let own0 = OwnCpu::now();
            let t0_us = shared.clock.now_us();
            let _ = go_tx.send(Some(start));
            if typing {
                // The publisher sockets send on their own schedule; wait for them to finish.
                let planned = (total_publishes.div_ceil(publishers) * publishers) as u64;
                let deadline = start
                    + Duration::from_secs_f64(a.duration)
                    + interval.mul_f64(publishers as f64)
                    + Duration::from_secs(2);
                while Instant::now() < deadline && shared.stats.borrow().publishes < planned {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let per_event = members.first().copied().unwrap_or(0).saturating_sub(1);
                let sent = shared.stats.borrow().publishes;
                shared.stats.borrow_mut().expected = sent * per_event;
            } else {
                let mut pubs = Vec::new();
                for h in 0..publishers {
                    pubs.push(tokio::task::spawn_local(http::publish(
                        http::HttpPlan {
                            addr,
                            api_key: a.api_key.clone(),
                            first: h,
                            step: publishers,
                            total: total_publishes,
                            start,
                            interval,
                            rooms: members.clone(),
                        },
                        shared.clone(),
                    )));
                }
                for p in pubs {
                    let _ = p.await;
                }
            }
            let publish_end_us = shared.clock.now_us();
            let drain_until = Instant::now() + Duration::from_secs_f64(a.drain);
            while Instant::now() < drain_until {
                let complete = {
                    let st = shared.stats.borrow();
                    st.delivered >= st.expected && st.delivered > 0
                };
                if complete {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let cpu1 = pids.read();
            let own = OwnCpu::now().since(own0);
            let st = shared.stats.borrow();
            let window_s = (st
                .last_delivery_us
                .max(publish_end_us)
                .saturating_sub(t0_us)) as f64
                / 1e6;
            let delivered = st.delivered as f64;
            let server_s = cpu1.since(cpu0);
            if pids.several() {
                let each = cpu1.each_since(cpu0);
                out["server_cpu_s_by_process"] = by_process(pids, each, 1.0, 1.0, 4);
                out["server_cpu_us_per_delivery_by_process"] =
                    by_process(pids, each, 1e6, delivered, 3);
            }
            out["publisher"] = json!(if typing { "typing" } else { "http" });
            out["rooms"] = json!(n_rooms);
            out["room_size"] = json!(room_size);
            out["target_rate"] = json!(a.rate);
            out["duration_s"] = json!(a.duration);
            out["publishes"] = json!(st.publishes);
            out["publish_rate"] = json!(round(st.publishes as f64 / a.duration, 1));
            out["expected"] = json!(st.expected);
            out["delivered"] = json!(st.delivered);
            out["lost"] = json!(st.expected.saturating_sub(st.delivered));
            out["duplicates"] = json!(st.duplicates);
            out["unknown"] = json!(st.unknown);
            out["other_events"] = json!(st.other_events);
            out["throughput_per_s"] = json!(round(delivered / window_s.max(1e-9), 1));
            out["latency"] = percentiles(&shared.latencies);
            if !typing {
                // Each publish's earliest delivery: the path to the first member without
                // the fan-out's queueing behind it (with two nodes, through Redis).
                let firsts: Vec<u32> = shared
                    .first_latency
                    .borrow()
                    .iter()
                    .copied()
                    .filter(|l| *l != u32::MAX)
                    .collect();
                out["first_delivery_latency"] = percentiles(&RefCell::new(firsts));
            }
            // Latency runs from the actual send; this is how far sends fell behind schedule
            // (a server that answers the API slowly holds the publishers back).
            out["publish_lag"] = percentiles(&shared.publish_lag);
            out["server_cpu_s"] = json!(server_s.map(|s| round(s, 4)));
            out["server_cpu_us_per_delivery"] =
                json!(server_s.map(|s| round(s * 1e6 / delivered.max(1.0), 3)));
            out["loadgen_cpu_s"] = json!(round(own.total(), 4));
            out["loadgen_cpu_user_s"] = json!(round(own.user_s, 4));
            out["loadgen_cpu_sys_s"] = json!(round(own.sys_s, 4));
            out["loadgen_cpu_us_per_delivery"] =
                json!(round(own.total() * 1e6 / delivered.max(1.0), 3));
            out["connect_latency"] = connect_lat;
        }
    }
    out["server_rss_bytes"] = json!(a.pid.and_then(probe::server_rss));
    out["server_rss_before_bytes"] = json!(rss_before);

    let _ = stop_tx.send(true);
    let close_all = futures_util::future::join_all(socket_tasks);
    let _ = tokio::time::timeout(Duration::from_secs(10), close_all).await;
    let st = shared.stats.borrow();
    out["errors"] = json!(st.errors);
    out["error_samples"] = json!(st.error_samples);
    Ok(out)
}
