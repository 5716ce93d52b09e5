//! Token expiry for every session of a node, served by one timer task.
//!
//! A socket whose token carries `exp` is closed at `exp` — plus the authenticator's leeway
//! ([`Authenticator::leeway`](crate::Authenticator::leeway)), so that a token accepted
//! within the clock-skew allowance is not cut off the moment it connects — and gets
//! `auth:expiring` `auth.refresh_notice` before that. Rather than a sleeping task per
//! socket (a task cell and a timer entry each), the node keeps the sessions' next deadlines
//! in one ordered map and one task sleeps until the earliest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Notify;

use crate::clock::{iso8601_secs, unix_now};
use crate::session::Session;
use crate::transport::CloseReason;

/// Where a session's deadline sits in the map: when (unix seconds), then a unique number.
pub(crate) type ExpiryKey = (u64, u64);

/// What happens at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Send `auth:expiring`, then wait for the close.
    Notice,
    /// Send the expiry `error` and close.
    Close,
}

struct Entry {
    session: Weak<Session>,
    /// The token's `exp` this deadline belongs to.
    exp: u64,
    stage: Stage,
}

struct Shared {
    /// Seconds past `exp` a connection still lives: the authenticator's leeway.
    grace: u64,
    deadlines: Mutex<BTreeMap<ExpiryKey, Entry>>,
    wake: Notify,
    closed: AtomicBool,
    started: AtomicBool,
    seq: AtomicU64,
}

impl Shared {
    /// When a session whose token expires at `exp` is closed: `exp` plus the leeway.
    fn close_at(&self, exp: u64) -> u64 {
        exp.saturating_add(self.grace)
    }
}

/// The node's expiry timer: schedules, reschedules and cancels sessions' deadlines.
pub(crate) struct Expiry {
    shared: Arc<Shared>,
    notice: Duration,
}

impl Expiry {
    /// A timer that closes sockets `grace` after their token's `exp` and warns `notice`
    /// before that.
    pub(crate) fn new(notice: Duration, grace: Duration) -> Expiry {
        Expiry {
            shared: Arc::new(Shared {
                grace: grace.as_secs(),
                deadlines: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
                started: AtomicBool::new(false),
                seq: AtomicU64::new(0),
            }),
            notice,
        }
    }

    /// (Re)schedules `session` for its identity's `exp`, replacing an earlier deadline.
    pub(crate) fn schedule(&self, session: &Arc<Session>) {
        let exp = session.identity().expires_at;
        let earliest = {
            // The slot, then the map: the order every path takes both locks in. Holding the
            // slot keeps the timer from firing the new deadline before the slot names it.
            let mut slot = session.expiry.lock();
            let mut map = self.shared.deadlines.lock();
            if let Some(old) = slot.take() {
                map.remove(&old);
            }
            let Some(exp) = exp else {
                return;
            };
            // A notice whose time has passed goes out at once; the close waits for `exp`
            // (plus the leeway the token was accepted with).
            let notice_at = self
                .shared
                .close_at(exp)
                .saturating_sub(self.notice.as_secs());
            let key = (notice_at, self.shared.seq.fetch_add(1, Ordering::Relaxed));
            map.insert(
                key,
                Entry {
                    session: Arc::downgrade(session),
                    exp,
                    stage: Stage::Notice,
                },
            );
            *slot = Some(key);
            map.first_key_value().is_some_and(|(k, _)| *k == key)
        };
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(self.shared.clone()));
        }
        if earliest {
            self.shared.wake.notify_one();
        }
    }

    /// Forgets `session`'s deadline (it closed).
    pub(crate) fn cancel(&self, session: &Session) {
        let mut slot = session.expiry.lock();
        if let Some(key) = slot.take() {
            self.shared.deadlines.lock().remove(&key);
        }
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// The timer task: sleeps until the earliest deadline, fires what is due, until the node's
/// gateway is dropped.
async fn run(shared: Arc<Shared>) {
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let next = shared.deadlines.lock().first_key_value().map(|(k, _)| k.0);
        let wait = next.map(until);
        match wait {
            None => shared.wake.notified().await,
            Some(d) if !d.is_zero() => {
                tokio::select! {
                    () = tokio::time::sleep(d) => {}
                    () = shared.wake.notified() => {}
                }
            }
            Some(_) => fire_due(&shared),
        }
    }
}

/// Fires every deadline that is due.
fn fire_due(shared: &Shared) {
    let now = unix_now();
    let due: Vec<(ExpiryKey, Entry)> = {
        let mut map = shared.deadlines.lock();
        let later = map.split_off(&(now + 1, 0));
        std::mem::replace(&mut *map, later).into_iter().collect()
    };
    for (key, entry) in due {
        let Some(s) = entry.session.upgrade() else {
            continue;
        };
        {
            // Decided under the session's slot, as `schedule` and `cancel` change it: a
            // refresh or a close since then made this deadline no longer the session's.
            let mut slot = s.expiry.lock();
            if *slot != Some(key) {
                continue;
            }
            *slot = match entry.stage {
                Stage::Notice => {
                    let close = (
                        shared.close_at(entry.exp),
                        shared.seq.fetch_add(1, Ordering::Relaxed),
                    );
                    shared.deadlines.lock().insert(
                        close,
                        Entry {
                            session: entry.session.clone(),
                            exp: entry.exp,
                            stage: Stage::Close,
                        },
                    );
                    Some(close)
                }
                Stage::Close => None,
            };
        }
        match entry.stage {
            Stage::Notice => {
                s.send_value(
                    "auth:expiring",
                    &json!({ "expiresAt": iso8601_secs(entry.exp) }),
                );
            }
            Stage::Close => {
                tracing::debug!(socket = %s.id(), "token expired; closing");
                s.send_error("Authentication failed: Token expired");
                s.close(CloseReason::TokenExpired);
            }
        }
    }
}

/// Time from now until the unix second `at` begins (zero when it has).
fn until(at: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(at))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}
