//! One sandboxed Luau state with every script loaded, and the calls into it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mlua::chunk::{ChunkMode, Compiler};
use mlua::{Function, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value, VmState};
use serde_json::Value as Json;
use switchboard_core::HookCtx;

use crate::convert;

/// The three hook functions a script may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Hook {
    /// `on_inbound(event, payload, ctx)`.
    Inbound,
    /// `on_outbound(event, payload, ctx)`.
    Outbound,
    /// `authorize(ctx)`.
    Authorize,
}

impl Hook {
    /// Every hook, in a fixed order (the index into per-script tables).
    pub(crate) const ALL: [Hook; 3] = [Hook::Inbound, Hook::Outbound, Hook::Authorize];

    /// The global function's name, also the `hook` metric label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::Inbound => "on_inbound",
            Hook::Outbound => "on_outbound",
            Hook::Authorize => "authorize",
        }
    }

    fn index(self) -> usize {
        match self {
            Hook::Inbound => 0,
            Hook::Outbound => 1,
            Hook::Authorize => 2,
        }
    }
}

/// Why one call into a script failed; the `kind` metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It ran past `hooks.lua.timeout`.
    Timeout,
    /// Its VM hit `hooks.lua.memory_limit`.
    Memory,
    /// It raised an error.
    Runtime(String),
    /// It returned something other than a table or nil.
    Result(String),
    /// Its payload could not be converted to or from JSON.
    Payload(String),
    /// No VM was free within the timeout.
    Busy,
}

impl Failure {
    /// The `kind` label.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
            Failure::Runtime(_) => "runtime",
            Failure::Result(_) => "result",
            Failure::Payload(_) => "payload",
            Failure::Busy => "busy",
        }
    }

    /// A human description for the log.
    pub(crate) fn describe(&self, timeout: Duration, memory_limit: usize) -> String {
        match self {
            Failure::Timeout => format!("ran past hooks.lua.timeout ({timeout:?})"),
            Failure::Memory => {
                format!("ran out of memory (hooks.lua.memory_limit = {memory_limit} bytes)")
            }
            Failure::Runtime(m) => m.clone(),
            Failure::Result(m) => m.clone(),
            Failure::Payload(m) => format!("payload conversion failed: {m}"),
            Failure::Busy => "no Lua VM was free within hooks.lua.timeout".to_owned(),
        }
    }
}

/// One script's source compiled to Luau bytecode; shared by every VM of a generation.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// The path as configured (also the `script` metric label).
    pub(crate) label: Arc<str>,
    /// The source it was compiled from (to tell a changed file from a touched one).
    pub(crate) source: Arc<[u8]>,
    /// The bytecode.
    pub(crate) bytecode: Arc<[u8]>,
}

impl Compiled {
    /// Reads and compiles `path`; the error names the file and line.
    pub(crate) fn from_file(label: &str, path: &Path) -> Result<Self, String> {
        let source = std::fs::read(path).map_err(|e| format!("{label}: cannot read: {e}"))?;
        Self::from_source(label, source)
    }

    /// Compiles `source`; the error names the file and line.
    pub(crate) fn from_source(label: &str, source: Vec<u8>) -> Result<Self, String> {
        let bytecode = compiler().compile(&source).map_err(|e| match e {
            mlua::Error::SyntaxError { message, .. } => format!("{label}:{message}"),
            other => format!("{label}: {other}"),
        })?;
        Ok(Compiled {
            label: Arc::from(label),
            source: Arc::from(source),
            bytecode: Arc::from(bytecode),
        })
    }
}

fn compiler() -> Compiler {
    Compiler::new().set_optimization_level(2).set_debug_level(1)
}

/// The limits every VM runs under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Per call.
    pub(crate) timeout: Duration,
    /// For running a script's top level when a VM is built.
    pub(crate) load_timeout: Duration,
    /// Per VM, in bytes.
    pub(crate) memory: usize,
}

/// A script loaded into one VM: its own environment and the hooks it defined.
struct Loaded {
    label: Arc<str>,
    hooks: [Option<Function>; 3],
    /// Whether each hook declares a `ctx` parameter (skip building it when it does not).
    wants_ctx: [bool; 3],
}

/// Which hooks a set of scripts defines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Defined([bool; 3]);

impl Defined {
    /// Whether any script defines `hook`.
    pub(crate) fn any(self, hook: Hook) -> bool {
        self.0[hook.index()]
    }
}

/// A monotonic clock in nanoseconds since the first call, for deadlines shared with the interrupt.
fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

const NO_DEADLINE: u64 = u64::MAX;

/// What a payload hook decided.
enum Outcome {
    /// Send a new payload.
    Send(Json),
    /// Send the input with these top-level fields changed (none: unchanged).
    Patch(Patch),
    /// Drop the event.
    Drop,
}

/// Compares a payload table after the script with its snapshot from before.
///
/// Returns `false` when the table cannot be patched (it got a metatable or a non-string
/// key); else `true, changed, removed`: `changed` maps the top-level fields whose value
/// differs (nested tables always count as changed), `removed` lists the fields that are gone.
/// Runs without the interrupt (it runs no script code: raw access only, `next` rather than
/// `__iter`), and is kept out of every script's reach.
const DIFF: &str = r#"
local type, rawequal, rawget, getmetatable, next = type, rawequal, rawget, getmetatable, next
return function(p, snap)
  if getmetatable(p) ~= nil then
    return false
  end
  local changed, removed = nil, nil
  for k, v in next, p do
    if type(k) ~= "string" then
      return false
    end
    if type(v) == "table" or not rawequal(rawget(snap, k), v) then
      if changed == nil then changed = {} end
      changed[k] = v
    end
  end
  for k in next, snap do
    if rawget(p, k) == nil then
      if removed == nil then removed = {} end
      removed[#removed + 1] = k
    end
  end
  return true, changed, removed
end
"#;

/// Top-level fields to set and to remove, already converted.
#[derive(Default)]
struct Patch {
    sets: Vec<(String, Json)>,
    removed: Vec<String>,
}

/// A sandboxed Luau state with every script of one generation loaded.
pub(crate) struct Vm {
    diff: Function,
    clone: Function,
    lua: Lua,
    array_mt: Table,
    deadline: Arc<AtomicU64>,
    timed_out: Arc<AtomicBool>,
    scripts: Vec<Loaded>,
    limits: Limits,
    /// The script generation it was built from.
    pub(crate) generation: u64,
    /// Set when the VM should be rebuilt rather than reused (stuck near its memory limit).
    pub(crate) spoiled: bool,
}

/// Why a VM could not be built: the index of the script that failed, and why.
#[derive(Debug, Clone)]
pub(crate) struct BuildError {
    /// Index into the script list; `None` when the VM itself failed.
    pub(crate) script: Option<usize>,
    /// What went wrong, naming the file and line where there is one.
    pub(crate) message: String,
}

impl Vm {
    /// Builds a sandboxed state and loads `scripts` into it, each with its own environment.
    pub(crate) fn build(
        scripts: &[Compiled],
        limits: Limits,
        generation: u64,
    ) -> Result<Self, BuildError> {
        let vm_err = |e: mlua::Error| BuildError {
            script: None,
            message: format!("cannot set up the Lua VM: {e}"),
        };
        let lua = Lua::new_with(
            StdLib::COROUTINE
                | StdLib::TABLE
                | StdLib::OS
                | StdLib::STRING
                | StdLib::UTF8
                | StdLib::BIT
                | StdLib::BUFFER
                | StdLib::MATH,
            LuaOptions::new(),
        )
        .map_err(vm_err)?;
        let globals = sandbox(&lua).map_err(vm_err)?;

        let deadline = Arc::new(AtomicU64::new(NO_DEADLINE));
        let timed_out = Arc::new(AtomicBool::new(false));
        // The limit covers the whole state: libraries, scripts, their globals and payloads.
        lua.set_memory_limit(limits.memory).map_err(vm_err)?;

        let array_mt = lua.array_metatable();
        let diff: Function = lua
            .load(DIFF)
            .set_name("=diff")
            .set_environment(globals.clone())
            .eval()
            .map_err(vm_err)?;
        let clone: Function = globals
            .raw_get::<Table>("table")
            .and_then(|t| t.raw_get("clone"))
            .map_err(vm_err)?;
        let mut vm = Vm {
            diff,
            clone,
            lua,
            array_mt,
            deadline,
            timed_out,
            scripts: Vec::with_capacity(scripts.len()),
            limits,
            generation,
            spoiled: false,
        };
        for (i, script) in scripts.iter().enumerate() {
            let loaded = vm.load(script, &globals).map_err(|message| BuildError {
                script: Some(i),
                message,
            })?;
            vm.scripts.push(loaded);
        }
        Ok(vm)
    }

    /// Runs one script's top level in a fresh environment and collects its hooks.
    fn load(&self, script: &Compiled, globals: &Table) -> Result<Loaded, String> {
        let label = &script.label;
        let fail = |e: mlua::Error| format!("{label}: {}", error_text(&e));
        let lua = &self.lua;
        let env = lua.create_table().map_err(fail)?;
        let meta = lua.create_table().map_err(fail)?;
        meta.raw_set("__index", globals.clone()).map_err(fail)?;
        meta.set_readonly(true);
        env.set_metatable(Some(meta)).map_err(fail)?;
        let name = label.to_string();
        let print = lua
            .create_function(move |_, args: MultiValue| {
                let text: Vec<String> = args.iter().map(display_value).collect();
                tracing::info!(script = %name, "{}", text.join("\t"));
                Ok(())
            })
            .map_err(fail)?;
        env.raw_set("print", print).map_err(fail)?;
        env.set_safeenv(true);
        let chunk = lua
            .load(&script.bytecode[..])
            .set_name(format!("@{label}"))
            .set_mode(ChunkMode::Binary)
            .set_environment(env.clone())
            .into_function()
            .map_err(fail)?;
        self.with_deadline(self.limits.load_timeout, || chunk.call::<()>(()))
            .map_err(|f| match f {
                Failure::Timeout => format!(
                    "{label}: its top level ran past {:?}",
                    self.limits.load_timeout
                ),
                Failure::Memory => format!("{label}: its top level ran out of memory"),
                other => other.describe(self.limits.timeout, self.limits.memory),
            })?;
        let mut hooks: [Option<Function>; 3] = [None, None, None];
        let mut wants_ctx = [false; 3];
        for hook in Hook::ALL {
            match env.raw_get::<Value>(hook.name()).map_err(fail)? {
                Value::Function(f) => {
                    let info = f.info();
                    let params = usize::from(info.num_params);
                    wants_ctx[hook.index()] = info.is_vararg
                        || match hook {
                            Hook::Authorize => params >= 1,
                            _ => params >= 3,
                        };
                    hooks[hook.index()] = Some(f);
                }
                Value::Nil => {}
                other => {
                    return Err(format!(
                        "{label}: `{}` must be a function, not a {}",
                        hook.name(),
                        other.type_name()
                    ));
                }
            }
        }
        Ok(Loaded {
            label: label.clone(),
            hooks,
            wants_ctx,
        })
    }

    /// Which hooks the loaded scripts define.
    pub(crate) fn defined(&self) -> Defined {
        let mut d = Defined::default();
        for s in &self.scripts {
            for hook in Hook::ALL {
                if s.hooks[hook.index()].is_some() {
                    d.0[hook.index()] = true;
                }
            }
        }
        d
    }

    /// The number of scripts loaded.
    pub(crate) fn len(&self) -> usize {
        self.scripts.len()
    }

    /// The label of script `i`.
    pub(crate) fn label(&self, i: usize) -> &Arc<str> {
        &self.scripts[i].label
    }

    /// Whether script `i` defines `hook`.
    pub(crate) fn has(&self, i: usize, hook: Hook) -> bool {
        self.scripts[i].hooks[hook.index()].is_some()
    }

    /// Bytes the VM uses now.
    pub(crate) fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Calls script `i`'s `on_inbound`/`on_outbound`: `Ok(true)` sends `payload` (updated in
    /// place), `Ok(false)` drops the event. On failure `payload` is left as it was.
    pub(crate) fn call_payload(
        &mut self,
        i: usize,
        hook: Hook,
        event: &str,
        payload: &mut Json,
        ctx: &HookCtx<'_>,
    ) -> Result<bool, Failure> {
        let Some(f) = &self.scripts[i].hooks[hook.index()] else {
            return Ok(true);
        };
        let wants_ctx = self.scripts[i].wants_ctx[hook.index()];
        let input: &Json = payload;
        let lua = &self.lua;
        // The gateway's data goes in unmetered and without the interrupt; only the script's
        // own call runs under the deadline.
        let (p, c, snap) = self
            .unmetered(|| {
                let p = convert::to_lua(lua, input, &self.array_mt)?;
                let c = if wants_ctx {
                    Value::Table(ctx_table(lua, ctx, &self.array_mt)?)
                } else {
                    Value::Nil
                };
                let snap = match &p {
                    Value::Table(t) if input.is_object() => Some(self.clone.call::<Table>(t)?),
                    _ => None,
                };
                Ok((p, c, snap))
            })
            .map_err(|e| classify(&e))?;
        let p_ptr = p.to_pointer();
        let result = self.with_deadline(self.limits.timeout, || f.call::<Value>((event, p, c)));
        let out = self.settle(result)?;
        let outcome = match (out, snap) {
            // The common case: the script edited the table it got and returned it; only the
            // fields that changed come back.
            (Value::Table(t), Some(snap)) if t.to_pointer() == p_ptr => {
                let diffed = self
                    .diff
                    .call::<(bool, Option<Table>, Option<Table>)>((&t, snap))
                    .map_err(|e| classify(&e));
                match self.settle(diffed)? {
                    (true, changed, removed) => self.patch(changed, removed).map(Outcome::Patch)?,
                    (false, _, _) => self.result(hook, Value::Table(t))?,
                }
            }
            (out, _) => self.result(hook, out)?,
        };
        match outcome {
            Outcome::Send(next) => {
                *payload = next;
                Ok(true)
            }
            Outcome::Patch(patch) => {
                if let Some(map) = payload.as_object_mut() {
                    for (k, v) in patch.sets {
                        map.insert(k, v);
                    }
                    for k in &patch.removed {
                        map.remove(k);
                    }
                }
                Ok(true)
            }
            Outcome::Drop => Ok(false),
        }
    }

    /// Converts a whole returned value: a table is the new payload, nil drops, else an error.
    fn result(&self, hook: Hook, out: Value) -> Result<Outcome, Failure> {
        match out {
            Value::Nil => Ok(Outcome::Drop),
            t @ Value::Table(_) => convert::from_lua(&t, self.array_mt.to_pointer())
                .map(Outcome::Send)
                .map_err(Failure::Payload),
            other => Err(Failure::Result(format!(
                "{} returned a {}; return the payload table, or nil to drop the event",
                hook.name(),
                other.type_name()
            ))),
        }
    }

    /// Reads the diff's report of changed and removed top-level fields, converted.
    fn patch(&self, changed: Option<Table>, removed: Option<Table>) -> Result<Patch, Failure> {
        let mt = self.array_mt.to_pointer();
        let mut patch = Patch::default();
        if let Some(changed) = changed {
            let mut failed = None;
            changed
                .for_each(|k: String, v: Value| {
                    match convert::from_lua(&v, mt) {
                        Ok(j) => patch.sets.push((k, j)),
                        Err(e) => failed = Some(e),
                    }
                    Ok(())
                })
                .map_err(|e| Failure::Payload(error_text(&e)))?;
            if let Some(e) = failed {
                return Err(Failure::Payload(e));
            }
        }
        if let Some(removed) = removed {
            removed
                .for_each_value(|k: String| {
                    patch.removed.push(k);
                    Ok(())
                })
                .map_err(|e| Failure::Payload(error_text(&e)))?;
        }
        Ok(patch)
    }

    /// Calls script `i`'s `authorize(ctx)`: `true` allows, anything else denies.
    pub(crate) fn call_authorize(&mut self, i: usize, ctx: &HookCtx<'_>) -> Result<bool, Failure> {
        let hook = Hook::Authorize;
        let Some(f) = &self.scripts[i].hooks[hook.index()] else {
            return Ok(true);
        };
        let wants_ctx = self.scripts[i].wants_ctx[hook.index()];
        let result = self.with_deadline(self.limits.timeout, || {
            let c = if wants_ctx {
                self.unmetered(|| ctx_table(&self.lua, ctx, &self.array_mt))
                    .map(Value::Table)?
            } else {
                Value::Nil
            };
            let out: Value = f.call(c)?;
            Ok(matches!(out, Value::Boolean(true)))
        });
        self.settle(result)
    }

    /// Runs `f` with the memory limit lifted: for converting the gateway's own data in.
    ///
    /// With a limit set, mlua wraps every allocating call in a protected call, which makes
    /// converting a payload several times slower. What is converted here is bounded by the
    /// gateway's own limits on events and bodies, not by the script; the limit is back on
    /// before the script runs.
    fn unmetered<T>(&self, f: impl FnOnce() -> mlua::Result<T>) -> mlua::Result<T> {
        self.lua.set_memory_limit(0)?;
        let result = f();
        self.lua.set_memory_limit(self.limits.memory)?;
        result
    }

    /// After a failed call: collect garbage after a memory error, and spoil a VM that stays full.
    fn settle<T>(&mut self, result: Result<T, Failure>) -> Result<T, Failure> {
        if let Err(Failure::Memory) = &result {
            let _ = self.lua.gc_collect();
            if self.lua.used_memory() > self.limits.memory / 4 * 3 {
                self.spoiled = true;
            }
        }
        result
    }

    /// Installs the interrupt that cuts script code at the deadline.
    ///
    /// It is installed only while script code runs: every check costs a call into Rust at
    /// each function call and loop iteration, which the gateway's own conversions need not pay.
    fn arm(&self) {
        let deadline = self.deadline.clone();
        let timed_out = self.timed_out.clone();
        self.lua.set_interrupt(move |_| {
            let d = deadline.load(Ordering::Relaxed);
            if d != NO_DEADLINE && now_nanos() >= d {
                timed_out.store(true, Ordering::Relaxed);
                return Err(mlua::Error::runtime("script timed out"));
            }
            Ok(VmState::Continue)
        });
    }

    /// Runs `f` with the interrupt armed for `budget`, classifying its failure.
    fn with_deadline<T>(
        &self,
        budget: Duration,
        f: impl FnOnce() -> mlua::Result<T>,
    ) -> Result<T, Failure> {
        let nanos = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX / 2);
        self.timed_out.store(false, Ordering::Relaxed);
        self.deadline
            .store(now_nanos().saturating_add(nanos), Ordering::Relaxed);
        self.arm();
        let result = f();
        self.lua.remove_interrupt();
        self.deadline.store(NO_DEADLINE, Ordering::Relaxed);
        let timed_out = self.timed_out.swap(false, Ordering::Relaxed);
        match result {
            // A script that caught the timeout error and returned anyway still timed out.
            _ if timed_out => Err(Failure::Timeout),
            Ok(v) => Ok(v),
            Err(e) if is_memory(&e) => Err(Failure::Memory),
            Err(e) => Err(Failure::Runtime(error_text(&e))),
        }
    }
}

/// Removes everything that reaches outside the VM, adds `null` and `array`, then sandboxes.
///
/// Returns the (now read-only) global table that every script environment reads through.
fn sandbox(lua: &Lua) -> mlua::Result<Table> {
    let globals = lua.globals();
    for name in [
        "require",
        "loadstring",
        "getfenv",
        "setfenv",
        "debug",
        "print",
    ] {
        globals.raw_set(name, Value::Nil)?;
    }
    // `os` keeps only the clock: no date formatting, no environment, no processes.
    let os: Table = globals.raw_get("os")?;
    let safe_os = lua.create_table()?;
    safe_os.raw_set("time", os.raw_get::<Function>("time")?)?;
    safe_os.raw_set("clock", os.raw_get::<Function>("clock")?)?;
    globals.raw_set("os", safe_os)?;
    globals.raw_set("null", lua.null())?;
    let array_mt = lua.array_metatable();
    let mark = array_mt.clone();
    globals.raw_set(
        "array",
        lua.create_function(move |lua, t: Option<Table>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            t.set_metatable(Some(mark.clone()))?;
            Ok(t)
        })?,
    )?;
    array_mt.set_readonly(true);
    lua.sandbox(true)?;
    Ok(globals)
}

/// The `ctx` table: direction, room, source, userId, socketId, claims; read-only.
fn ctx_table(lua: &Lua, ctx: &HookCtx<'_>, array_mt: &Table) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 6)?;
    t.raw_set("direction", ctx.direction.as_str())?;
    if let Some(room) = ctx.room {
        t.raw_set("room", room)?;
    }
    t.raw_set("source", ctx.source.as_str())?;
    if let Some(user) = ctx.user_id {
        t.raw_set("userId", user)?;
    }
    if let Some(socket) = ctx.socket_id {
        t.raw_set("socketId", socket)?;
    }
    if let Some(claims) = ctx.claims {
        let c = convert::map_to_lua(lua, claims, array_mt)?;
        c.set_readonly(true);
        t.raw_set("claims", c)?;
    }
    t.set_readonly(true);
    Ok(t)
}

/// Classifies a failure of the gateway's own work in the VM (converting, diffing).
fn classify(e: &mlua::Error) -> Failure {
    if is_memory(e) {
        Failure::Memory
    } else {
        Failure::Payload(error_text(e))
    }
}

/// Whether an error (or its cause) is a memory error.
fn is_memory(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory(cause),
        mlua::Error::WithContext { cause, .. } => is_memory(cause),
        _ => false,
    }
}

/// An error's message without mlua's Rust-side traceback.
fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::WithContext { cause, .. } => error_text(cause),
        other => other.to_string(),
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string_lossy(),
        Value::Nil => "nil".to_owned(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => n.to_string(),
        other if other.is_null() => "null".to_owned(),
        other => other.type_name().to_owned(),
    }
}
