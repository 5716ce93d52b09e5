//! A pool of VMs, one per worker, each with every script loaded; a call checks one out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::vm::{BuildError, Compiled, Defined, Limits, Vm};

/// The scripts of one generation and what they define.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    /// Increases with every reload; a VM of an older generation is dropped when returned.
    pub(crate) number: u64,
    /// The compiled scripts, in order.
    pub(crate) scripts: Arc<[Compiled]>,
    /// Which hooks any script defines (a hook nobody defines costs nothing).
    pub(crate) defined: Defined,
}

struct State {
    idle: Vec<Vm>,
    current: Generation,
}

/// VMs waiting for a call, and the generation new VMs are built from.
pub(crate) struct Pool {
    state: Mutex<State>,
    freed: Condvar,
    limits: Limits,
}

impl Pool {
    /// A pool of `vms` (already built from `current`).
    pub(crate) fn new(vms: Vec<Vm>, current: Generation, limits: Limits) -> Self {
        Pool {
            state: Mutex::new(State { idle: vms, current }),
            freed: Condvar::new(),
            limits,
        }
    }

    /// The generation calls run against now.
    pub(crate) fn current(&self) -> Generation {
        self.state.lock().current.clone()
    }

    /// Which hooks the current scripts define.
    pub(crate) fn defined(&self) -> Defined {
        self.state.lock().current.defined
    }

    /// Takes a VM, waiting up to `wait` for one to be returned; `None` when none came.
    pub(crate) fn checkout(&self, wait: Duration) -> Option<Lease<'_>> {
        let mut state = self.state.lock();
        if let Some(vm) = state.idle.pop() {
            return Some(Lease {
                pool: self,
                vm: Some(vm),
            });
        }
        let until = Instant::now() + wait;
        loop {
            if self.freed.wait_until(&mut state, until).timed_out() {
                return state.idle.pop().map(|vm| Lease {
                    pool: self,
                    vm: Some(vm),
                });
            }
            if let Some(vm) = state.idle.pop() {
                return Some(Lease {
                    pool: self,
                    vm: Some(vm),
                });
            }
        }
    }

    /// Replaces every idle VM with `vms` built from `next`; VMs out on calls retire on return.
    pub(crate) fn install(&self, vms: Vec<Vm>, next: Generation) {
        let old = {
            let mut state = self.state.lock();
            state.current = next;
            std::mem::replace(&mut state.idle, vms)
        };
        self.freed.notify_all();
        drop(old);
    }

    fn checkin(&self, vm: Vm) {
        let current = {
            let mut state = self.state.lock();
            if vm.generation != state.current.number {
                return;
            }
            if !vm.spoiled {
                state.idle.push(vm);
                drop(state);
                self.freed.notify_one();
                return;
            }
            state.current.clone()
        };
        // A VM stuck near its memory limit (a script hoarding state) is replaced by a fresh one.
        tracing::warn!(
            used = vm.used_memory(),
            "a Lua VM stayed near hooks.lua.memory_limit after a collection; rebuilding it"
        );
        drop(vm);
        match build(&current, self.limits) {
            Ok(fresh) => {
                let mut state = self.state.lock();
                if fresh.generation == state.current.number {
                    state.idle.push(fresh);
                    drop(state);
                    self.freed.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e.message, "could not rebuild a Lua VM; the pool has one VM less")
            }
        }
    }
}

/// Builds one VM of generation `g`.
pub(crate) fn build(g: &Generation, limits: Limits) -> Result<Vm, BuildError> {
    Vm::build(&g.scripts, limits, g.number)
}

/// A VM checked out of the pool; returned when dropped.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    vm: Option<Vm>,
}

impl Lease<'_> {
    /// The VM.
    pub(crate) fn vm(&mut self) -> Option<&mut Vm> {
        self.vm.as_mut()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            self.pool.checkin(vm);
        }
    }
}
