//! Start-up errors, the plugin's config section, and hot reload.

mod support;

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::json;
use support::{Scripts, api_ctx, config, hooks, sample};
use switchboard_core::registry::{self, PluginKind};
use switchboard_core::{Factory, Hooks, LoadedConfig, Metrics, PluginContext, Verdict};
use switchboard_hooks_lua::{LuaConfig, LuaHooks};

fn tag(h: &LuaHooks) -> serde_json::Value {
    match h.on_outbound("e", json!({}), &api_ctx("r")) {
        Verdict::Pass(v) => v["v"].clone(),
        Verdict::Drop => json!("dropped"),
    }
}

#[test]
fn a_syntax_error_at_start_names_the_key_file_and_line() {
    let s = Scripts::new();
    let good = s.write("good.lua", "function on_outbound(e, p) return p end");
    let bad = s.write(
        "bad.lua",
        "-- fine\nfunction on_outbound(e, p)\n  return p +\nend\n",
    );
    let err = LuaHooks::new(
        config(vec![good, bad.clone()]),
        &Metrics::new(),
        "hooks.lua",
    )
    .expect_err("must not load");
    let text = err.to_string();
    assert!(text.starts_with("hooks.lua.scripts[1]: "), "{text}");
    assert!(
        text.contains(&format!("{}:4:", bad.display())),
        "names file and line: {text}"
    );
}

#[test]
fn a_failing_top_level_or_missing_file_is_a_config_error() {
    let s = Scripts::new();
    let bad = s.write("top.lua", "local x = nil\nx.y = 1\n");
    let text = LuaHooks::new(config(vec![bad.clone()]), &Metrics::new(), "hooks.lua")
        .expect_err("must not load")
        .to_string();
    assert!(text.starts_with("hooks.lua.scripts[0]: "), "{text}");
    assert!(text.contains(&format!("{}:2:", bad.display())), "{text}");
    let missing = s.dir.path().join("nope.lua");
    let text = LuaHooks::new(config(vec![missing]), &Metrics::new(), "hooks.lua")
        .expect_err("must not load")
        .to_string();
    assert!(
        text.starts_with("hooks.lua.scripts[0]: ") && text.contains("cannot read"),
        "{text}"
    );
    let text = LuaHooks::new(
        LuaConfig {
            timeout: "0s".parse().expect("dur"),
            ..LuaConfig::default()
        },
        &Metrics::new(),
        "hooks.lua",
    )
    .expect_err("zero timeout")
    .to_string();
    assert_eq!(text, "hooks.lua.timeout: must be more than 0");
}

fn factory(toml: &str) -> Result<Option<Arc<dyn Hooks>>, String> {
    let loaded = LoadedConfig::from_toml_str(toml).map_err(|e| e.to_string())?;
    let effective = Mutex::new(Default::default());
    let metrics = Metrics::new();
    let plugin = registry::find(PluginKind::Hooks, "lua", "hooks").map_err(|e| e.to_string())?;
    let Factory::Hooks(build) = plugin.factory else {
        return Err("not a hooks plugin".into());
    };
    let ctx = PluginContext::new(&loaded, plugin.section(), &effective, &metrics, "node");
    // The core reports a plugin's `ConfigError` with its own key; anything else under the
    // section name. Insist on the former.
    build(&ctx).map_err(
        |e| match e.downcast_ref::<switchboard_core::ConfigError>() {
            Some(c) => c.to_string(),
            None => format!("not a ConfigError: {e}"),
        },
    )
}

#[test]
fn the_plugin_reads_its_section() {
    assert!(
        factory("").expect("no section").is_none(),
        "no scripts, no hooks"
    );
    assert!(
        factory("[hooks.lua]\nscripts = []")
            .expect("empty")
            .is_none()
    );
    let err = factory("[hooks.lua]\nscritps = [\"a.lua\"]")
        .err()
        .expect("typo");
    assert!(
        err.contains("hooks.lua.scritps") && err.contains("unknown"),
        "{err}"
    );
    let err = factory("[hooks.lua]\non_error = \"ignore\"\nscripts = [\"a.lua\"]")
        .err()
        .expect("bad enum");
    assert!(err.contains("hooks.lua.on_error"), "{err}");
    let s = Scripts::new();
    let bad = s.write("bad.lua", "function (");
    let err = factory(&format!(
        "[hooks.lua]\nscripts = [{:?}]",
        bad.display().to_string()
    ))
    .err()
    .expect("syntax error");
    assert!(
        err.starts_with("hooks.lua.scripts[0]: ") && err.contains("bad.lua:1:"),
        "{err}"
    );
    let good = s.write(
        "good.lua",
        "function on_outbound(e, p) p.hooked = true return p end",
    );
    let h = factory(&format!(
        "[hooks.lua]\nscripts = [{:?}]\ntimeout = \"20ms\"\nmemory_limit = \"8MiB\"\non_error = \"pass\"\nworkers = 2",
        good.display().to_string()
    ))
    .expect("loads")
    .expect("hooks");
    assert_eq!(
        h.on_outbound("e", json!({}), &api_ctx("r")),
        Verdict::Pass(json!({"hooked": true}))
    );
}

#[test]
fn reload_picks_up_a_changed_script() {
    let s = Scripts::new();
    let p = s.write("v.lua", "function on_outbound(e, p) p.v = 1 return p end");
    let (h, m) = hooks(config(vec![p.clone()]));
    assert_eq!(tag(&h), 1);
    assert!(h.reload_changed().reloaded.is_empty(), "nothing changed");
    std::fs::write(&p, "function on_outbound(e, p) p.v = 2 return p end").expect("write");
    let r = h.reload_changed();
    assert_eq!(r.reloaded, vec![p.display().to_string()]);
    assert!(r.failed.is_empty());
    assert_eq!(tag(&h), 2);
    assert_eq!(
        sample(&m, "switchboard_lua_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
}

#[test]
fn a_broken_script_keeps_its_previous_version() {
    let s = Scripts::new();
    let a = s.write(
        "a.lua",
        "function on_outbound(e, p) p.v = 'a1' return p end",
    );
    let b = s.write(
        "b.lua",
        "function on_outbound(e, p) p.w = 'b1' return p end",
    );
    let (h, m) = hooks(config(vec![a.clone(), b.clone()]));
    std::fs::write(&a, "function on_outbound(e, p) p.v = 'a2' return p end").expect("write");
    std::fs::write(&b, "function on_outbound(e, p) p.w = = 'b2' end").expect("write");
    let r = h.reload();
    assert_eq!(r.reloaded, vec![a.display().to_string()]);
    assert_eq!(r.failed.len(), 1);
    assert!(
        r.failed[0].1.contains(&format!("{}:1:", b.display())),
        "{:?}",
        r.failed
    );
    assert_eq!(
        h.on_outbound("e", json!({}), &api_ctx("r")),
        Verdict::Pass(json!({"v": "a2", "w": "b1"})),
        "a's new version runs, b's previous one keeps running"
    );
    std::fs::write(&b, "error('top level fails')").expect("write");
    let r = h.reload();
    assert!(r.failed[0].1.contains("top level fails"), "{:?}", r.failed);
    assert_eq!(tag_w(&h), "b1");
    std::fs::remove_file(&b).expect("rm");
    let r = h.reload();
    assert!(r.failed[0].1.contains("cannot read"), "{:?}", r.failed);
    assert_eq!(tag_w(&h), "b1", "a deleted file keeps its previous version");
    assert_eq!(
        sample(&m, "switchboard_lua_reloads_total{result=\"error\"}"),
        Some(3.0)
    );
}

fn tag_w(h: &LuaHooks) -> serde_json::Value {
    match h.on_outbound("e", json!({}), &api_ctx("r")) {
        Verdict::Pass(v) => v["w"].clone(),
        Verdict::Drop => json!("dropped"),
    }
}

#[test]
fn a_forced_reload_resets_script_state() {
    let s = Scripts::new();
    let p = s.write(
        "n.lua",
        "n = 0\nfunction on_outbound(e, p) n += 1 p.v = n return p end",
    );
    let (h, _) = hooks(config(vec![p]));
    assert_eq!(tag(&h), 1);
    assert_eq!(tag(&h), 2);
    let _ = h.reload();
    assert_eq!(tag(&h), 1);
}

#[test]
fn the_watcher_reloads_a_changed_file() {
    let s = Scripts::new();
    let p = s.write("w.lua", "function on_outbound(e, p) p.v = 1 return p end");
    let (h, _) = hooks(LuaConfig {
        watch: true,
        watch_interval: "20ms".parse().expect("dur"),
        ..config(vec![p.clone()])
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        h.start();
        assert_eq!(tag(&h), 1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        std::fs::write(&p, "function on_outbound(e, p) p.v = 'two' return p end").expect("write");
        let mut seen = json!(null);
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            seen = tag(&h);
            if seen == "two" {
                break;
            }
        }
        assert_eq!(seen, "two", "the watcher reloaded the file");
    });
}

#[test]
fn sighup_reloads() {
    let s = Scripts::new();
    let p = s.write("h.lua", "function on_outbound(e, p) p.v = 1 return p end");
    let (h, _) = hooks(config(vec![p.clone()]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        h.start();
        tokio::task::yield_now().await;
        std::fs::write(&p, "function on_outbound(e, p) p.v = 'hup' return p end").expect("write");
        // Deliver SIGHUP to this process (the handler installed by `start` catches it).
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let mut seen = json!(null);
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            seen = tag(&h);
            if seen == "hup" {
                break;
            }
        }
        assert_eq!(seen, "hup", "SIGHUP reloaded the script");
    });
}
