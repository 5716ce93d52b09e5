//! What the load generator reads about processes: a server's CPU time and RSS from `/proc`,
//! its own CPU time from `getrusage(2)`.

use std::fs;
use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux everywhere).
const USER_HZ: f64 = 100.0;

/// CPU time a process has used so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// utime + stime from `/proc/<pid>/stat`, all threads, living or exited (10 ms ticks).
    pub(crate) stat_s: f64,
    /// Sum of the on-CPU nanoseconds of the living threads (`/proc/<pid>/task/*/schedstat`).
    pub(crate) sched_s: f64,
}

impl Cpu {
    /// The CPU time between two readings: the precise schedstat figure when it is
    /// consistent with the coarse stat one, else stat.
    pub(crate) fn since(self, before: Cpu) -> f64 {
        let stat = self.stat_s - before.stat_s;
        let sched = self.sched_s - before.sched_s;
        // A thread that exited in between takes its schedstat time with it; stat keeps it.
        if sched > 0.0 && (sched - stat).abs() <= 0.02 + 0.05 * stat {
            sched
        } else {
            stat
        }
    }
}

/// Reads a process's CPU time; `None` when the process is gone.
pub(crate) fn server_cpu(pid: u32) -> Option<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line; the rest starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let mut sched_ns: u64 = 0;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
                sched_ns += s
                    .split(' ')
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Some(Cpu {
        stat_s: (utime + stime) / USER_HZ,
        sched_s: sched_ns as f64 / 1e9,
    })
}

/// A process's resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn server_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This process's own user and system CPU time, from `getrusage(RUSAGE_SELF)`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OwnCpu {
    /// User time, seconds.
    pub(crate) user_s: f64,
    /// System time, seconds.
    pub(crate) sys_s: f64,
}

impl OwnCpu {
    /// Reads it now (zero if the call fails, which it does not on Linux).
    pub(crate) fn now() -> OwnCpu {
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => {
                let tv = |t: nix::sys::time::TimeVal| {
                    Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
                        .as_secs_f64()
                };
                OwnCpu {
                    user_s: tv(u.user_time()),
                    sys_s: tv(u.system_time()),
                }
            }
            Err(_) => OwnCpu::default(),
        }
    }

    /// The difference to an earlier reading.
    pub(crate) fn since(self, before: OwnCpu) -> OwnCpu {
        OwnCpu {
            user_s: self.user_s - before.user_s,
            sys_s: self.sys_s - before.sys_s,
        }
    }

    /// User plus system.
    pub(crate) fn total(self) -> f64 {
        self.user_s + self.sys_s
    }
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}
