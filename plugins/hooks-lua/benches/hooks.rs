//! Hook overhead on a 1 KiB payload: pass-through and a one-field edit, on one thread; then
//! the same edit from 1 and 2 threads, with one VM and with a VM per thread.
//!
//! ```sh
//! cargo bench -p switchboard-hooks-lua --bench hooks
//! ```

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use switchboard_core::{Direction, HookCtx, Hooks, Metrics, Source, Verdict};
use switchboard_hooks_lua::{LuaConfig, LuaHooks};

/// A `session:message-sent` payload of 1 KiB as JSON.
fn payload() -> Value {
    let mut p = json!({
        "sessionId": "6f1c2a9e-3b7d-4e8a-9c1f-2d4b6a8e0c13",
        "messageId": "msg-000000000001",
        "senderId": "user-4242",
        "senderName": "Ana Example",
        "senderPhone": "+15551234567",
        "isFromBot": false,
        "type": "text",
        "content": "",
        "status": "sent",
        "timestamp": "2026-01-01T00:00:00.000Z"
    });
    let base = serde_json::to_vec(&p).map_or(0, |v| v.len());
    p["content"] = Value::String("x".repeat(1024 - base));
    p
}

fn ctx() -> HookCtx<'static> {
    HookCtx {
        direction: Direction::Outbound,
        room: Some("session:6f1c2a9e-3b7d-4e8a-9c1f-2d4b6a8e0c13"),
        source: Source::Api,
        user_id: None,
        socket_id: None,
        claims: None,
    }
}

struct Script {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn script(source: &str) -> Script {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.lua");
    std::fs::write(&path, source).expect("write");
    Script { _dir: dir, path }
}

fn hooks(s: &Script, workers: usize) -> LuaHooks {
    let config = LuaConfig {
        scripts: vec![s.path.clone()],
        workers,
        watch: false,
        timeout: "100ms".parse().expect("dur"),
        ..LuaConfig::default()
    };
    LuaHooks::new(config, &Metrics::new(), "hooks.lua").expect("load")
}

const PASS: &str = "function on_outbound(event, payload, ctx) return payload end";
const EDIT: &str =
    "function on_outbound(event, payload, ctx) payload.status = 'delivered' return payload end";
const AUTH_ONLY: &str = "function authorize(ctx) return true end";

fn single_thread(c: &mut Criterion) {
    let p = payload();
    let size = serde_json::to_vec(&p).map_or(0, |v| v.len());
    assert_eq!(size, 1024, "the payload is 1 KiB");
    let mut g = c.benchmark_group("hooks/lua/1KiB");
    g.throughput(Throughput::Bytes(1024));
    for (name, src) in [
        ("no_hook", AUTH_ONLY),
        ("pass_through", PASS),
        ("one_field_edit", EDIT),
    ] {
        let s = script(src);
        let h = hooks(&s, 1);
        let ctx = ctx();
        g.bench_function(name, |b| {
            b.iter_batched(
                || p.clone(),
                |p| match h.on_outbound("session:message-sent", p, &ctx) {
                    Verdict::Pass(v) => black_box(v),
                    Verdict::Drop => panic!("dropped"),
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

/// Runs `per_thread` edits on each of `threads` threads; the time per call, all threads together.
fn spread(h: &Arc<LuaHooks>, threads: usize, per_thread: u64) -> Duration {
    let p = payload();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let h = h.clone();
            let p = p.clone();
            s.spawn(move || {
                let ctx = ctx();
                for _ in 0..per_thread {
                    black_box(h.on_outbound("session:message-sent", p.clone(), &ctx));
                }
            });
        }
    });
    start.elapsed()
}

fn threads(c: &mut Criterion) {
    let s = script(EDIT);
    let mut g = c.benchmark_group("hooks/lua/threads");
    for (threads, workers) in [(1, 1), (2, 1), (2, 2)] {
        let h = Arc::new(hooks(&s, workers));
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(
            BenchmarkId::new(format!("{threads}_threads"), format!("{workers}_vms")),
            |b| {
                // One iteration is one call on every thread: the wall time per round of calls.
                b.iter_custom(|iters| spread(&h, threads, iters));
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = single_thread, threads
}
criterion_main!(benches);
