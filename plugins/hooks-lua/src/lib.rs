//! `hooks.lua`: sandboxed Luau scripts that adjust, drop and authorize events.
//!
//! # Hooks
//!
//! A script may define any of three global functions:
//!
//! - `on_inbound(event, payload, ctx)` runs before a client's event is handled;
//! - `on_outbound(event, payload, ctx)` runs once per publish (not per recipient), before an
//!   event goes out to a room or the namespace;
//! - `authorize(ctx)` runs on every room join: `true` allows, anything else denies.
//!
//! `on_inbound`/`on_outbound` return the payload table to send (changed or not) or `nil` to
//! drop the event; anything else is an error. Scripts run in the configured order, the payload
//! returned by one is the input of the next; every script's `authorize` must allow a join.
//!
//! `ctx` is a read-only table: `direction` (`"inbound"`/`"outbound"`), `room` (when there is
//! one), `source` (`"socket"`/`"api"`), and for socket-originated events `userId`, `socketId`
//! and `claims` (the token's claims).
//!
//! # JSON in Lua
//!
//! Objects become tables, arrays become tables marked with an array metatable, so `[]` stays
//! `[]` and `{}` stays `{}` on the way back. A table the script builds is an array when it has
//! a sequence part (`{"a", "b"}`) and an object otherwise; an empty table is `{}`, and
//! `array()` (or `array(t)`) marks a table as an array. JSON `null` is the global `null` (a
//! truthy sentinel: test `x == null`), so `{"a": null}` round-trips. Luau numbers are doubles:
//! integers beyond 2^53 lose precision.
//!
//! # Sandbox
//!
//! Luau's own sandbox (`Lua::sandbox`): libraries and the global table are read-only. Loaded:
//! `coroutine`, `table`, `string`, `utf8`, `bit32`, `buffer`, `math`, and `os` with only
//! `os.time` and `os.clock`. Removed: `require`, `loadstring`, `getfenv`/`setfenv`, `debug`;
//! Luau has no `io`, `load`, `dofile`, `loadfile` or `string.dump`, and scripts are compiled
//! here from text, so no script loads bytecode. Nothing reaches files, processes or the
//! network. Each script runs in its own global environment (reads fall through to the
//! read-only globals, writes stay in the script's table); `print` logs through `tracing` at
//! info level, naming the script.
//!
//! # Limits
//!
//! Every call runs under a deadline (`timeout`, default 5 ms) checked by Luau's interrupt,
//! which fires at every function call, loop back-edge and string-pattern step, so
//! `while true do end` and a pathological `string.find` are both cut. Each VM has a memory
//! limit (`memory_limit`, default 16 MiB); after a memory error the VM is collected, and a VM
//! that stays above three quarters of its limit (a script hoarding state) is rebuilt. A failed
//! call costs only its event, which follows `on_error` (`drop`, or `pass`: the failing script
//! is skipped, its input goes on; for `authorize`, `drop` denies and `pass` allows). Failures
//! are counted in `switchboard_lua_errors_total{script, hook, kind}` and logged at most once
//! per `log_interval` per script, hook and kind. Library functions written in C run between
//! interrupt checks; the longest (sorting a table that fills the VM) takes tens of
//! milliseconds, bounded by the memory limit.
//!
//! # Workers
//!
//! One `Lua` state is not shared: the plugin keeps a pool of VMs (`workers`, default one per
//! CPU core), each with every script loaded, and a call checks one out. Script globals persist
//! between calls on the same VM but are not shared across VMs.
//!
//! # Cost
//!
//! A hook no script defines is skipped without touching a VM. Otherwise a call converts the
//! payload into a table (outside the memory limit and the interrupt: it is the gateway's own
//! data, bounded by its event and body limits), runs the script under both, and, when the
//! script returns the table it got, converts back only the top-level fields it changed
//! (nested tables always count as changed). About 42 000 instructions for a pass-through of a
//! 1 KiB payload; see `benches/hooks.rs`.
//!
//! # Reload
//!
//! SIGHUP re-reads every script and rebuilds the VMs; with `watch` (default on) the files'
//! modification times and sizes are polled every `watch_interval` (default 1 s) and a changed
//! script is reloaded. Polling, not inotify: it needs no extra dependency, sees editors that
//! replace a file by renaming, and costs a `stat` per script per second. A script that fails
//! to compile (or whose top level fails) keeps its previous version running and the failure
//! is logged and counted (`switchboard_lua_reloads_total{result="error"}`). Reload swaps the
//! pool; connections are not touched.
//!
//! # Why Luau
//!
//! Safety: Luau was built to run untrusted code. It has a real sandbox (read-only libraries
//! and globals, per-script environments), no `io`/`os.execute`/`load` of bytecode to remove,
//! and an interrupt that also reaches the string pattern matcher; Lua 5.4's instruction-count
//! hook does not fire inside `string.find`, so a catastrophic pattern could hang a worker.
//! Speed: Luau's interpreter is faster than PUC Lua 5.4 on table-heavy code like payload
//! edits. Both are compiled from source by `mlua` (Luau needs a C++ compiler). The cost is
//! numbers: Luau has doubles only.

mod convert;
mod pool;
mod report;
mod vm;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use switchboard_core::{
    BoxError, ConfigError, Dur, Factory, HookCtx, Hooks, Metrics, Plugin, PluginContext, Size,
    Verdict, register_plugin,
};

pub use report::{ErrorLabels, ReloadLabels};

use pool::{Generation, Pool};
use report::{Counters, LogLimiter};
use vm::{Compiled, Failure, Hook, Limits, Vm};

/// What happens to an event whose script failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Drop the event (deny a join).
    #[default]
    Drop,
    /// Skip the failing script: its input goes on (a join is allowed by that script).
    Pass,
}

/// `hooks.lua.*`: the scripts and their limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LuaConfig {
    /// Script files, run in order; relative paths are relative to the working directory.
    pub scripts: Vec<PathBuf>,
    /// Longest one call into a script may run.
    pub timeout: Dur,
    /// Most memory one VM may use.
    pub memory_limit: Size,
    /// What a failed call does to its event: `drop` or `pass`.
    pub on_error: OnError,
    /// How many VMs run calls side by side; 0 is one per CPU core.
    pub workers: usize,
    /// Reload a script when its file changes.
    pub watch: bool,
    /// How often script files are checked for changes.
    pub watch_interval: Dur,
    /// At most one log line per script, hook and failure kind per this period.
    pub log_interval: Dur,
}

impl Default for LuaConfig {
    fn default() -> Self {
        LuaConfig {
            scripts: Vec::new(),
            timeout: Dur::millis(5),
            memory_limit: Size::mib(16),
            on_error: OnError::Drop,
            workers: 0,
            watch: true,
            watch_interval: Dur::secs(1),
            log_interval: Dur::secs(10),
        }
    }
}

/// The smallest memory limit accepted: the libraries alone take about 100 KiB.
const MIN_MEMORY: u64 = 1024 * 1024;
/// How long a script's top level may run when a VM is built.
const LOAD_TIMEOUT: Duration = Duration::from_secs(1);

impl LuaConfig {
    /// Checks the values; errors name the key under `section` (`hooks.lua`).
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.timeout.get().is_zero() {
            return Err(ConfigError::new(
                format!("{section}.timeout"),
                "must be more than 0",
            ));
        }
        if self.memory_limit.0 < MIN_MEMORY {
            return Err(ConfigError::new(
                format!("{section}.memory_limit"),
                "must be at least \"1MiB\"",
            ));
        }
        if self.workers > 256 {
            return Err(ConfigError::new(
                format!("{section}.workers"),
                "must be at most 256",
            ));
        }
        if self.watch && self.watch_interval.get() < Duration::from_millis(10) {
            return Err(ConfigError::new(
                format!("{section}.watch_interval"),
                "must be at least \"10ms\"",
            ));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout.get(),
            load_timeout: LOAD_TIMEOUT.max(self.timeout.get()),
            memory: self.memory_limit.bytes(),
        }
    }

    fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, usize::from)
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    /// Scripts whose new version now runs.
    pub reloaded: Vec<String>,
    /// Scripts that kept their previous version, and why.
    pub failed: Vec<(String, String)>,
}

/// Runs the configured Luau scripts as the gateway's hooks.
pub struct LuaHooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LuaHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaHooks")
            .field("scripts", &self.shared.config.scripts)
            .finish()
    }
}

struct Shared {
    config: LuaConfig,
    limits: Limits,
    workers: usize,
    pool: Pool,
    counters: Counters,
    log: LogLimiter,
    /// Serializes reloads (SIGHUP and the watcher may fire together).
    reload_lock: Mutex<()>,
    /// What the watcher last saw of each file: modification time and size.
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
    started: AtomicBool,
}

/// Why the scripts could not be loaded at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub ConfigError);

impl LuaHooks {
    /// Compiles and loads every script into `workers` VMs; `section` prefixes config errors.
    ///
    /// A script that does not compile, or whose top level fails, is an error at
    /// `<section>.scripts[i]` naming the file and line.
    pub fn new(config: LuaConfig, metrics: &Metrics, section: &str) -> Result<Self, LoadError> {
        config.validate(section).map_err(LoadError)?;
        let limits = config.limits();
        let script_key = |i: usize| format!("{section}.scripts[{i}]");
        let mut compiled = Vec::with_capacity(config.scripts.len());
        for (i, path) in config.scripts.iter().enumerate() {
            let label = path.display().to_string();
            let c = Compiled::from_file(&label, path)
                .map_err(|e| LoadError(ConfigError::new(script_key(i), e)))?;
            compiled.push(c);
        }
        let scripts: Arc<[Compiled]> = Arc::from(compiled);
        let workers = config.worker_count();
        let mut vms = Vec::with_capacity(workers);
        for _ in 0..workers {
            let vm = Vm::build(&scripts, limits, 0).map_err(|e| {
                LoadError(ConfigError::new(
                    e.script
                        .map_or_else(|| format!("{section}.scripts"), script_key),
                    e.message,
                ))
            })?;
            vms.push(vm);
        }
        let defined = vms.first().map(Vm::defined).unwrap_or_default();
        let generation = Generation {
            number: 0,
            scripts,
            defined,
        };
        let seen = config.scripts.iter().map(|p| stat(p)).collect();
        Ok(LuaHooks {
            shared: Arc::new(Shared {
                limits,
                workers,
                pool: Pool::new(vms, generation, limits),
                counters: Counters::register(metrics),
                log: LogLimiter::new(config.log_interval.get()),
                reload_lock: Mutex::new(()),
                seen: Mutex::new(seen),
                started: AtomicBool::new(false),
                config,
            }),
        })
    }

    /// Re-reads every script and rebuilds the VMs; a script that fails keeps its previous version.
    pub fn reload(&self) -> ReloadReport {
        self.shared.reload(true)
    }

    /// Reloads only if a script file's content changed since the last load.
    pub fn reload_changed(&self) -> ReloadReport {
        self.shared.reload(false)
    }

    /// The configuration in force.
    pub fn config(&self) -> &LuaConfig {
        &self.shared.config
    }
}

impl Shared {
    fn reload(&self, forced: bool) -> ReloadReport {
        let _guard = self.reload_lock.lock();
        let current = self.pool.current();
        let mut report = ReloadReport::default();
        let mut next: Vec<Compiled> = current.scripts.to_vec();
        let mut changed = Vec::new();
        for (i, path) in self.config.scripts.iter().enumerate() {
            let label = path.display().to_string();
            let source = match std::fs::read(path) {
                Ok(s) => s,
                Err(e) => {
                    report
                        .failed
                        .push((label.clone(), format!("{label}: cannot read: {e}")));
                    continue;
                }
            };
            if *current.scripts[i].source == *source {
                continue;
            }
            match Compiled::from_source(&label, source) {
                Ok(c) => {
                    next[i] = c;
                    changed.push(i);
                }
                Err(e) => report.failed.push((label, e)),
            }
        }
        if changed.is_empty() && !forced {
            self.log_reload(&report, false);
            return report;
        }
        // Build the first VM; a script whose top level fails falls back to its previous version.
        let first = loop {
            match Vm::build(&next, self.limits, current.number + 1) {
                Ok(vm) => break Some(vm),
                Err(e) => match e.script {
                    Some(i) if changed.contains(&i) => {
                        report.failed.push((next[i].label.to_string(), e.message));
                        next[i] = current.scripts[i].clone();
                        changed.retain(|&c| c != i);
                    }
                    _ => {
                        report.failed.push(("*".to_owned(), e.message));
                        break None;
                    }
                },
            }
        };
        let Some(first) = first else {
            self.log_reload(&report, false);
            return report;
        };
        let scripts: Arc<[Compiled]> = Arc::from(next);
        let mut vms = Vec::with_capacity(self.workers);
        let defined = first.defined();
        vms.push(first);
        for _ in 1..self.workers {
            match Vm::build(&scripts, self.limits, current.number + 1) {
                Ok(vm) => vms.push(vm),
                Err(e) => {
                    report.failed.push(("*".to_owned(), e.message));
                    break;
                }
            }
        }
        report.reloaded = changed
            .iter()
            .map(|&i| scripts[i].label.to_string())
            .collect();
        self.pool.install(
            vms,
            Generation {
                number: current.number + 1,
                scripts,
                defined,
            },
        );
        self.log_reload(&report, true);
        report
    }

    fn log_reload(&self, report: &ReloadReport, installed: bool) {
        for (script, why) in &report.failed {
            tracing::error!(script = %script, error = %why, "Lua script not reloaded; its previous version keeps running");
        }
        if installed {
            tracing::info!(changed = ?report.reloaded, "Lua scripts reloaded");
        }
        if !report.failed.is_empty() {
            self.counters.reload(false);
        } else if installed {
            self.counters.reload(true);
        }
    }

    /// Whether any script file's modification time or size changed since the last check.
    fn files_changed(&self) -> bool {
        let mut seen = self.seen.lock();
        let mut changed = false;
        for (i, path) in self.config.scripts.iter().enumerate() {
            let now = stat(path);
            if let Some(slot) = seen.get_mut(i)
                && *slot != now
            {
                *slot = now;
                changed = true;
            }
        }
        changed
    }

    /// Counts and (at a bounded rate) logs one failed call.
    fn failed(&self, script: &Arc<str>, hook: Hook, event: &str, failure: &Failure) {
        let kind = failure.kind();
        self.counters
            .errors
            .get_or_create(&ErrorLabels {
                script: script.to_string(),
                hook: hook.name().to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
        if let Some(suppressed) = self.log.allow(script, hook.name(), kind) {
            tracing::warn!(
                script = %script,
                hook = hook.name(),
                event,
                kind,
                suppressed,
                on_error = ?self.config.on_error,
                error = %failure.describe(self.limits.timeout, self.limits.memory),
                "Lua hook failed",
            );
        }
    }

    /// Runs `on_inbound`/`on_outbound` of every script that defines it, in order.
    fn run(&self, hook: Hook, event: &str, payload: Json, ctx: &HookCtx<'_>) -> Verdict {
        if !self.pool.defined().any(hook) {
            return Verdict::Pass(payload);
        }
        let pass = self.config.on_error == OnError::Pass;
        let Some(mut lease) = self.pool.checkout(self.limits.timeout) else {
            self.failed(&Arc::from("*"), hook, event, &Failure::Busy);
            return if pass {
                Verdict::Pass(payload)
            } else {
                Verdict::Drop
            };
        };
        let Some(vm) = lease.vm() else {
            return Verdict::Pass(payload);
        };
        let mut current = payload;
        for i in 0..vm.len() {
            if !vm.has(i, hook) {
                continue;
            }
            match vm.call_payload(i, hook, event, &mut current, ctx) {
                Ok(true) => {}
                Ok(false) => return Verdict::Drop,
                Err(f) => {
                    let label = vm.label(i).clone();
                    self.failed(&label, hook, event, &f);
                    if !pass {
                        return Verdict::Drop;
                    }
                }
            }
        }
        Verdict::Pass(current)
    }

    fn authorize(&self, ctx: &HookCtx<'_>) -> bool {
        let hook = Hook::Authorize;
        if !self.pool.defined().any(hook) {
            return true;
        }
        let pass = self.config.on_error == OnError::Pass;
        let Some(mut lease) = self.pool.checkout(self.limits.timeout) else {
            self.failed(&Arc::from("*"), hook, "join", &Failure::Busy);
            return pass;
        };
        let Some(vm) = lease.vm() else {
            return true;
        };
        for i in 0..vm.len() {
            if !vm.has(i, hook) {
                continue;
            }
            match vm.call_authorize(i, ctx) {
                Ok(true) => {}
                Ok(false) => return false,
                Err(f) => {
                    let label = vm.label(i).clone();
                    self.failed(&label, hook, "join", &f);
                    if !pass {
                        return false;
                    }
                }
            }
        }
        true
    }
}

fn stat(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

impl Hooks for LuaHooks {
    fn start(&self) {
        if self.shared.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "Lua hooks started outside a Tokio runtime: no reload on SIGHUP or file change"
            );
            return;
        };
        let weak = Arc::downgrade(&self.shared);
        let watch = self.shared.config.watch;
        let every = self.shared.config.watch_interval.get();
        runtime.spawn(reload_loop(weak, watch, every));
    }

    fn on_inbound(&self, event: &str, payload: Json, ctx: &HookCtx<'_>) -> Verdict {
        self.shared.run(Hook::Inbound, event, payload, ctx)
    }

    fn on_outbound(&self, event: &str, payload: Json, ctx: &HookCtx<'_>) -> Verdict {
        self.shared.run(Hook::Outbound, event, payload, ctx)
    }

    fn authorize(&self, ctx: &HookCtx<'_>) -> bool {
        self.shared.authorize(ctx)
    }
}

/// Reloads on SIGHUP and, with `watch`, when a script file changes; ends with the hooks.
async fn reload_loop(weak: Weak<Shared>, watch: bool, every: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; Lua scripts reload only on file change");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            _ = tick.tick(), if watch => false,
            else => break,
        };
        let Some(shared) = weak.upgrade() else { break };
        if forced {
            tracing::info!("SIGHUP: reloading Lua scripts");
        } else if !shared.files_changed() {
            continue;
        }
        let job = tokio::task::spawn_blocking(move || {
            shared.reload(forced);
        });
        if let Err(e) = job.await {
            tracing::error!(error = %e, "Lua reload task failed");
        }
    }
}

fn build(ctx: &PluginContext<'_>) -> Result<Option<Arc<dyn Hooks>>, BoxError> {
    let config: LuaConfig = ctx.section()?;
    if config.scripts.is_empty() {
        return Ok(None);
    }
    // Box the `ConfigError` itself, so the core reports its key (`hooks.lua.scripts[0]`).
    let hooks = LuaHooks::new(config, ctx.metrics(), ctx.section_path())
        .map_err(|e| -> BoxError { Box::new(e.0) })?;
    Ok(Some(Arc::new(hooks)))
}

register_plugin!(
    Plugin::new(
        "lua",
        "Sandboxed Luau scripts that adjust, drop and authorize events",
        Factory::Hooks(build)
    )
    .with_config(switchboard_core::registry::config_defaults::<LuaConfig>)
);
