//! Limits and failures: timeouts, memory, errors, bad results, and what the event does then.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Ctx, Scripts, api_ctx, config, hooks, sample};
use switchboard_core::{Direction, Hooks, Verdict};
use switchboard_hooks_lua::{LuaConfig, OnError};

const GOOD: &str = "function on_outbound(e, p) p.ok = true return p end";

fn with_bad(
    bad: &str,
    on_error: OnError,
    timeout: &str,
) -> (
    switchboard_hooks_lua::LuaHooks,
    switchboard_core::Metrics,
    Scripts,
) {
    let s = Scripts::new();
    let b = s.write("bad.lua", bad);
    let g = s.write("good.lua", GOOD);
    let (h, m) = hooks(LuaConfig {
        on_error,
        timeout: timeout.parse().expect("dur"),
        ..config(vec![b, g])
    });
    (h, m, s)
}

fn errors(m: &switchboard_core::Metrics, hook: &str, kinds: &[&str]) -> f64 {
    kinds.iter().map(|k| errors_of(m, hook, k)).sum()
}

fn errors_of(m: &switchboard_core::Metrics, hook: &str, kind: &str) -> f64 {
    let path = "bad.lua";
    m.encode()
        .lines()
        .find(|l| {
            l.starts_with("switchboard_lua_errors_total{")
                && l.contains(path)
                && l.contains(&format!("hook=\"{hook}\""))
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The failing event follows `on_error`, the next call on the same VM works, the failure is counted.
fn check_failure(bad: &str, kind: &str) {
    check_failure_any(bad, &[kind]);
}

/// Like `check_failure`, for a failure whose kind depends on which limit it reaches first.
fn check_failure_any(bad: &str, kinds: &[&str]) {
    let kind = kinds[0];
    // Memory failures get time to reach the limit; everything else runs under 50 ms.
    let timeout = if kind == "memory" { "10s" } else { "50ms" };
    let (h, m, _s) = with_bad(bad, OnError::Drop, timeout);
    let t0 = Instant::now();
    assert_eq!(
        h.on_outbound("e", json!({"n": 1}), &api_ctx("r")),
        Verdict::Drop,
        "{kind}: dropped"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "{kind}: cut quickly, took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        errors(&m, "on_outbound", kinds),
        1.0,
        "{kind}: counted\n{}",
        m.encode()
    );
    // The same (single) VM keeps serving: a hook that does not fail runs normally.
    let v = h.on_inbound(
        "e",
        json!({"n": 2}),
        &Ctx::socket("u", json!({})).get(Direction::Inbound),
    );
    assert_eq!(
        v,
        Verdict::Pass(json!({"n": 2, "in": true})),
        "{kind}: VM still serves"
    );
    assert_eq!(
        h.on_outbound("e", json!({"n": 3}), &api_ctx("r")),
        Verdict::Drop
    );
    assert_eq!(
        errors(&m, "on_outbound", kinds),
        2.0,
        "{kind}: counted per event"
    );

    let (h, m, _s) = with_bad(bad, OnError::Pass, timeout);
    assert_eq!(
        h.on_outbound("e", json!({"n": 1}), &api_ctx("r")),
        Verdict::Pass(json!({"n": 1, "ok": true})),
        "{kind}: with pass, the failing script is skipped and the next one runs on its input"
    );
    assert_eq!(errors(&m, "on_outbound", kinds), 1.0);
}

const INBOUND_OK: &str = "\nfunction on_inbound(e, p) p['in'] = true return p end\n";

#[test]
fn endless_loop_is_cut_at_the_timeout() {
    check_failure(
        &format!("function on_outbound(e, p) while true do end end{INBOUND_OK}"),
        "timeout",
    );
}

#[test]
fn a_loop_that_catches_the_timeout_is_still_cut() {
    check_failure(
        &format!(
            "function on_outbound(e, p)\n  while true do pcall(function() while true do end end) end\nend{INBOUND_OK}"
        ),
        "timeout",
    );
}

#[test]
fn a_catastrophic_pattern_is_cut_at_the_timeout() {
    check_failure(
        &format!(
            "function on_outbound(e, p)\n  local s = string.rep('a', 5000)\n  return {{ m = string.find(s, 'a*a*a*a*a*a*a*a*b') }}\nend{INBOUND_OK}"
        ),
        "timeout",
    );
}

#[test]
fn recursion_without_end_fails_cleanly() {
    check_failure(
        &format!(
            "local function f(n) return f(n + 1) + 1 end\nfunction on_outbound(e, p) return f(1) end{INBOUND_OK}"
        ),
        "runtime",
    );
}

#[test]
fn allocation_storm_is_cut_at_the_memory_limit() {
    check_failure(
        &format!(
            "function on_outbound(e, p)\n  local t = {{}}\n  for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end\nend{INBOUND_OK}"
        ),
        "memory",
    );
}

#[test]
fn one_huge_string_is_cut_at_the_memory_limit() {
    check_failure(
        &format!("function on_outbound(e, p) p.x = string.rep('x', 1e9) return p end{INBOUND_OK}"),
        "memory",
    );
}

#[test]
fn a_script_hoarding_state_gets_a_fresh_vm() {
    let s = Scripts::new();
    let p = s.write(
        "hoard.lua",
        "keep = {}\nfunction on_outbound(e, p)\n  keep[#keep + 1] = string.rep('x', 64 * 1024) .. #keep\n  p.n = #keep\n  return p\nend",
    );
    let (h, m) = hooks(LuaConfig {
        memory_limit: "4MiB".parse().expect("size"),
        timeout: "10s".parse().expect("dur"),
        ..config(vec![p])
    });
    let mut dropped = 0;
    let mut restarted = false;
    for _ in 0..200 {
        match h.on_outbound("e", json!({}), &api_ctx("r")) {
            Verdict::Drop => dropped += 1,
            Verdict::Pass(v) if dropped > 0 && v["n"] == 1 => {
                restarted = true;
                break;
            }
            Verdict::Pass(_) => {}
        }
    }
    assert!(dropped >= 1, "the hoard hit the limit");
    assert!(
        restarted,
        "the VM was rebuilt: the script's state started over"
    );
    assert!(sample(&m, "switchboard_lua_errors_total{").is_some());
}

#[test]
fn runtime_errors_and_bad_results_follow_on_error() {
    check_failure(
        &format!("function on_outbound(e, p) error('boom') end{INBOUND_OK}"),
        "runtime",
    );
    check_failure(
        &format!("function on_outbound(e, p) return 'yes' end{INBOUND_OK}"),
        "result",
    );
    check_failure(
        &format!("function on_outbound(e, p) return true end{INBOUND_OK}"),
        "result",
    );
    check_failure(
        &format!("function on_outbound(e, p) p.f = function() end return p end{INBOUND_OK}"),
        "payload",
    );
    check_failure(
        &format!("function on_outbound(e, p) p.me = p return p end{INBOUND_OK}"),
        "payload",
    );
}

#[test]
fn nil_drops_without_counting_an_error() {
    let s = Scripts::new();
    let p = s.write(
        "drop.lua",
        "function on_outbound(e, p) if p.drop then return nil end return p end",
    );
    let (h, m) = hooks(config(vec![p]));
    assert_eq!(
        h.on_outbound("e", json!({"drop": true}), &api_ctx("r")),
        Verdict::Drop
    );
    assert_eq!(
        h.on_outbound("e", json!({"drop": false}), &api_ctx("r")),
        Verdict::Pass(json!({"drop": false}))
    );
    assert!(
        sample(&m, "switchboard_lua_errors_total{").is_none(),
        "{}",
        m.encode()
    );
}

#[test]
fn authorize_allows_only_true_and_failures_follow_on_error() {
    let s = Scripts::new();
    let yes = s.write("yes.lua", "function authorize(ctx) return true end");
    let truthy = s.write("truthy.lua", "function authorize(ctx) return 1 end");
    let boom = s.write("boom.lua", "function authorize(ctx) error('no') end");
    let spin = s.write("spin.lua", "function authorize(ctx) while true do end end");
    let c = Ctx::socket("u", json!({})).in_room("conversation:1");
    let ctx = c.get(Direction::Inbound);

    let (h, _) = hooks(config(vec![yes.clone()]));
    assert!(h.authorize(&ctx));
    let (h, m) = hooks(config(vec![yes.clone(), truthy]));
    assert!(!h.authorize(&ctx), "anything but true denies");
    assert!(
        sample(&m, "switchboard_lua_errors_total{").is_none(),
        "a denial is not an error"
    );
    for bad in [boom, spin] {
        let (h, m) = hooks(config(vec![yes.clone(), bad.clone()]));
        assert!(!h.authorize(&ctx), "with drop, a failing authorize denies");
        assert!(sample(&m, "switchboard_lua_errors_total{").is_some());
        let (h, _) = hooks(LuaConfig {
            on_error: OnError::Pass,
            ..config(vec![yes.clone(), bad])
        });
        assert!(
            h.authorize(&ctx),
            "with pass, a failing authorize is skipped"
        );
    }
}

#[test]
fn hooks_nobody_defines_cost_nothing() {
    let s = Scripts::new();
    let p = s.write("only-auth.lua", "function authorize(ctx) return false end");
    let (h, _) = hooks(config(vec![p]));
    let payload = json!({"a": [1, {}]});
    assert_eq!(
        h.on_outbound("e", payload.clone(), &api_ctx("r")),
        Verdict::Pass(payload.clone())
    );
    let c = Ctx::socket("u", json!({}));
    assert_eq!(
        h.on_inbound("e", payload.clone(), &c.get(Direction::Inbound)),
        Verdict::Pass(payload)
    );
}

#[test]
fn failures_are_labelled_per_script_hook_and_kind() {
    let s = Scripts::new();
    let p = s.write(
        "mixed.lua",
        "function on_inbound(e, p) error('in') end\nfunction on_outbound(e, p) while true do end end",
    );
    let (h, m) = hooks(config(vec![p.clone()]));
    let c = Ctx::socket("u", json!({}));
    let _ = h.on_inbound("e", json!({}), &c.get(Direction::Inbound));
    let _ = h.on_outbound("e", json!({}), &api_ctx("r"));
    let _ = h.on_outbound("e", json!({}), &api_ctx("r"));
    let text = m.encode();
    let label = p.display().to_string();
    assert!(
        text.contains(&format!(
            "switchboard_lua_errors_total{{script=\"{label}\",hook=\"on_inbound\",kind=\"runtime\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "switchboard_lua_errors_total{{script=\"{label}\",hook=\"on_outbound\",kind=\"timeout\"}} 2"
        )),
        "{text}"
    );
}

#[test]
fn workers_serve_calls_side_by_side() {
    let s = Scripts::new();
    let p = s.write(
        "work.lua",
        "calls = 0\nfunction on_outbound(e, p)\n  calls += 1\n  local x = 0 for i = 1, 2000 do x += i end\n  p.x = x\n  return p\nend",
    );
    let (h, m) = hooks(LuaConfig {
        workers: 2,
        timeout: "1s".parse().expect("dur"),
        ..config(vec![p])
    });
    let h = std::sync::Arc::new(h);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                (0..200)
                    .filter(|_| {
                        h.on_outbound("e", json!({}), &api_ctx("r"))
                            == Verdict::Pass(json!({"x": 2001000}))
                    })
                    .count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(ok, 800, "every call from four threads went through two VMs");
    assert!(
        sample(&m, "switchboard_lua_errors_total{").is_none(),
        "{}",
        m.encode()
    );
}

#[test]
fn an_error_value_that_loops_in_tostring_is_still_cut() {
    check_failure_any(
        &format!(
            "function on_outbound(e, p)\n  error(setmetatable({{}}, {{ __tostring = function() while true do end end }}))\nend{INBOUND_OK}"
        ),
        &["runtime", "timeout"],
    );
}

#[test]
fn yielding_fails_cleanly() {
    check_failure(
        &format!("function on_outbound(e, p) coroutine.yield(p) return p end{INBOUND_OK}"),
        "runtime",
    );
}

#[test]
fn returned_tables_are_read_raw_so_metamethods_never_run() {
    let (h, m, _s) = with_bad(
        "function on_outbound(e, p)\n  return setmetatable({}, { __index = function() while true do end end,\n    __len = function() while true do end end, __iter = function() while true do end end })\nend",
        OnError::Drop,
        "50ms",
    );
    let t0 = Instant::now();
    assert_eq!(
        h.on_outbound("e", json!({"n": 1}), &api_ctx("r")),
        Verdict::Pass(json!({"ok": true})),
        "an empty object, read without its metamethods"
    );
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert!(sample(&m, "switchboard_lua_errors_total{").is_none());
}
