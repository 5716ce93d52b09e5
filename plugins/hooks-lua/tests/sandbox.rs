//! The sandbox: what a script can reach, and what it cannot.

mod support;

use serde_json::json;
use support::{Scripts, api_ctx, config, hooks};
use switchboard_core::{Hooks, Verdict};

/// Runs `body` as an `on_outbound` whose result is put in `payload.out`.
fn probe(body: &str) -> serde_json::Value {
    let s = Scripts::new();
    let src = format!(
        "function on_outbound(event, payload)\n  payload.out = (function() {body} end)()\n  return payload\nend\n"
    );
    let (h, _) = hooks(config(vec![s.write("probe.lua", &src)]));
    match h.on_outbound("e", json!({}), &api_ctx("r")) {
        Verdict::Pass(v) => v["out"].clone(),
        Verdict::Drop => json!("<dropped>"),
    }
}

#[test]
fn only_safe_globals_exist() {
    let names = probe(
        "local t = {} for k in pairs(_G) do t[#t + 1] = k end table.sort(t) return table.concat(t, ' ')",
    );
    let names: Vec<&str> = names.as_str().expect("a string").split(' ').collect();
    for banned in [
        "io",
        "debug",
        "require",
        "dofile",
        "loadfile",
        "load",
        "loadstring",
        "getfenv",
        "setfenv",
        "package",
        "ffi",
        "jit",
    ] {
        assert!(
            !names.contains(&banned),
            "`{banned}` must not be reachable: {names:?}"
        );
    }
    for needed in [
        "string", "table", "math", "os", "pairs", "ipairs", "pcall", "null", "array",
    ] {
        assert!(
            names.contains(&needed),
            "`{needed}` is available: {names:?}"
        );
    }
}

#[test]
fn os_has_only_time_and_clock() {
    let keys = probe(
        "local t = {} for k in pairs(os) do t[#t + 1] = k end table.sort(t) return table.concat(t, ' ')",
    );
    assert_eq!(keys, "clock time");
    assert_eq!(
        probe("return type(os.time()) == 'number' and os.clock() >= 0"),
        true
    );
}

#[test]
fn libraries_and_globals_are_read_only() {
    assert_eq!(
        probe("return pcall(function() string.upper = nil end)"),
        false
    );
    assert_eq!(probe("return pcall(function() _G.x = 1 end)"), false);
    assert_eq!(
        probe("return pcall(function() rawset(_G, 'x', 1) end)"),
        false
    );
    assert_eq!(
        probe("return pcall(function() getmetatable('').__index = {} end)"),
        false,
        "the string metatable is locked"
    );
}

#[test]
fn no_way_to_load_code_or_reach_files() {
    assert_eq!(probe("return type(loadstring)"), "nil");
    assert_eq!(probe("return type(require)"), "nil");
    assert_eq!(
        probe("return pcall(function() return io.open('/etc/passwd') end)"),
        false
    );
    assert_eq!(
        probe("return pcall(function() return os.execute('true') end)"),
        false
    );
    assert_eq!(
        probe("return pcall(function() return os.getenv('HOME') end)"),
        false
    );
    assert_eq!(
        probe("return pcall(function() return debug.traceback() end)"),
        false
    );
}

#[test]
fn each_script_has_its_own_globals() {
    let s = Scripts::new();
    let a = s.write(
        "a.lua",
        "counter = 0\nsecret = 'a'\nfunction on_outbound(e, p) counter += 1 p.a = counter p.a_sees = secret return p end",
    );
    let b = s.write(
        "b.lua",
        "function on_outbound(e, p) p.b_sees_counter = counter == nil p.b_sees = secret or 'nothing' secret = 'b' return p end",
    );
    let (h, _) = hooks(config(vec![a, b]));
    for round in 1..=3 {
        let Verdict::Pass(out) = h.on_outbound("e", json!({}), &api_ctx("r")) else {
            panic!("dropped");
        };
        assert_eq!(out["a"], round, "a's state persists on its VM");
        assert_eq!(out["a_sees"], "a", "b's write does not reach a");
        assert_eq!(out["b_sees_counter"], true);
        assert_eq!(out["b_sees"], if round == 1 { "nothing" } else { "b" });
    }
}

#[test]
fn ctx_is_read_only_and_complete() {
    let s = Scripts::new();
    let p = s.write(
        "ctx.lua",
        r#"
function on_inbound(event, payload, ctx)
  payload.direction = ctx.direction
  payload.source = ctx.source
  payload.userId = ctx.userId
  payload.socketId = ctx.socketId
  payload.role = ctx.claims.role
  payload.room = ctx.room or "none"
  payload.writable = pcall(function() ctx.userId = "mallory" end)
  payload.claimsWritable = pcall(function() ctx.claims.role = "admin" end)
  return payload
end
function on_outbound(event, payload, ctx)
  payload.source = ctx.source
  payload.room = ctx.room
  payload.userId = ctx.userId or "none"
  payload.claims = ctx.claims == nil
  return payload
end
"#,
    );
    let (h, _) = hooks(config(vec![p]));
    let c = support::Ctx::socket("u1", json!({"sub": "u1", "role": "agent"}));
    let Verdict::Pass(out) = h.on_inbound(
        "typing:start",
        json!({}),
        &c.get(switchboard_core::Direction::Inbound),
    ) else {
        panic!("dropped");
    };
    assert_eq!(
        out,
        json!({"direction": "inbound", "source": "socket", "userId": "u1", "socketId": "sock-u1",
               "role": "agent", "room": "none", "writable": false, "claimsWritable": false})
    );
    let Verdict::Pass(out) = h.on_outbound("message:status", json!({}), &api_ctx("conversation:9"))
    else {
        panic!("dropped");
    };
    assert_eq!(
        out,
        json!({"source": "api", "room": "conversation:9", "userId": "none", "claims": true})
    );
}

#[test]
fn json_round_trips_arrays_objects_null_and_integers() {
    let s = Scripts::new();
    let p = s.write("id.lua", "function on_outbound(e, p) return p end");
    let (h, _) = hooks(config(vec![p]));
    let payload = json!({
        "empty_array": [], "empty_object": {}, "list": [1, "two", null, {"x": []}],
        "null": null, "int": 1700000000000_u64, "neg": -3, "float": 1.5, "bool": false,
        "nested": {"deep": {"deeper": [[], {}]}}, "unicode": "ñ 你好 🙂"
    });
    assert_eq!(
        h.on_outbound("e", payload.clone(), &api_ctx("r")),
        Verdict::Pass(payload)
    );
}

#[test]
fn scripts_build_arrays_and_objects() {
    assert_eq!(probe("return {'a', 'b'}"), json!(["a", "b"]));
    assert_eq!(probe("return {}"), json!({}));
    assert_eq!(probe("return array()"), json!([]));
    assert_eq!(probe("return array({})"), json!([]));
    assert_eq!(probe("return {a = null}"), json!({"a": null}));
    assert_eq!(probe("return 42"), json!(42));
}

#[test]
fn edits_in_place_come_back_whole() {
    let s = Scripts::new();
    let p = s.write(
        "edit.lua",
        r#"
function on_outbound(e, p)
  if e == "remove" then p.status = nil end
  if e == "nested" then p.meta.tags[2] = "b2" p.meta.n += 1 end
  if e == "add" then p.extra = { list = array(), obj = {} } p.flag = null end
  if e == "replace" then return { only = p.status } end
  return p
end
"#,
    );
    let (h, _) = hooks(config(vec![p]));
    let input = json!({"status": "sent", "meta": {"tags": ["a", "b"], "n": 1}, "keep": 7});
    let run = |event: &str| match h.on_outbound(event, input.clone(), &api_ctx("r")) {
        Verdict::Pass(v) => v,
        Verdict::Drop => json!("dropped"),
    };
    assert_eq!(run("same"), input);
    assert_eq!(
        run("remove"),
        json!({"meta": {"tags": ["a", "b"], "n": 1}, "keep": 7})
    );
    assert_eq!(
        run("nested"),
        json!({"status": "sent", "meta": {"tags": ["a", "b2"], "n": 2}, "keep": 7})
    );
    assert_eq!(
        run("add"),
        json!({"status": "sent", "meta": {"tags": ["a", "b"], "n": 1}, "keep": 7,
               "extra": {"list": [], "obj": {}}, "flag": null})
    );
    assert_eq!(run("replace"), json!({"only": "sent"}));
}

#[test]
fn a_variadic_hook_gets_ctx() {
    let s = Scripts::new();
    let p = s.write(
        "va.lua",
        "function on_outbound(...) local e, p, c = ... p.room = c.room return p end\nfunction authorize(...) local c = ... return c.room == 'conversation:1' end",
    );
    let (h, _) = hooks(config(vec![p]));
    assert_eq!(
        h.on_outbound("e", json!({}), &api_ctx("conversation:9")),
        Verdict::Pass(json!({"room": "conversation:9"}))
    );
    let c = support::Ctx::socket("u", json!({})).in_room("conversation:1");
    assert!(h.authorize(&c.get(switchboard_core::Direction::Inbound)));
}

#[test]
fn print_logs_instead_of_writing_to_stdout() {
    assert_eq!(
        probe("print('hello', 1, true, nil, {}, null) return 'printed'"),
        "printed"
    );
}
