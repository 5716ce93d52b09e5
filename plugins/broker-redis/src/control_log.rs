//! The control log: the backend's calls about a user's sockets (join, leave, disconnect), in
//! one stream, `{prefix}control-log` (an entry per call, `r`: the request; trimmed to
//! [`KEEP_ENTRIES`] entries and to the last [`KEEP`] as calls come, the whole stream
//! expiring [`LIFETIME`] after its last entry).
//!
//! A call asks the nodes alive; a node cut off from Redis long enough to drop out of the
//! set of nodes alive is not asked. When it is back, every subscription pass first puts
//! the node in the set again, subscribes its control channel, and then carries out what
//! the log holds from a little before it was last known to be reachable ([`MARGIN`]), each
//! entry once (the core skips those it carried out when asked), before any room's channel
//! is subscribed: no event of a room reaches a socket the backend took out of it.
//!
//! When the log no longer holds all of that (the node was cut off for longer than the log
//! keeps calls), the node cannot tell what it missed: it hands its core a `reset` first,
//! which closes every socket of the node so that its client connects again afresh.

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fred::prelude::Value as RedisValue;
use fred::types::scripts::Script;
use serde_json::Value;
use switchboard_core::BrokerError;
use switchboard_core::broker::LoggedControl;

use super::Inner;

/// How long the log keeps an entry (older ones go as new calls come).
pub(crate) const KEEP: Duration = Duration::from_secs(3600);
/// How long the log stays after its last entry.
pub(crate) const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How many entries the log keeps.
pub(crate) const KEEP_ENTRIES: u64 = 100_000;
/// How far before the node was last known reachable its replay starts (asks in flight when
/// it was cut off).
pub(crate) const MARGIN: Duration = Duration::from_secs(5);
/// How many entries one read takes.
const PAGE: usize = 1000;

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("scripts/control_log.lua")));

/// An entry id's time (ms) and sequence parts.
fn id_parts(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// An entry id's time part (ms); 0 for what is not an id.
fn id_ms(id: &str) -> u64 {
    id_parts(id).map_or(0, |(ms, _)| ms)
}

/// What the log says of the entries it dropped: the newest time (ms) one may carry, or why
/// it cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// Entries up to this time may be gone.
    UpTo(u64),
    /// There is no log: it expired (nothing was written for [`LIFETIME`]), or none was.
    NoLog,
    /// A Redis before 7.0 does not keep it: anything older than [`KEEP`] may be gone.
    Unknown,
}

impl Dropped {
    /// Reads the script's answer.
    fn parse(answer: &str) -> Self {
        match answer {
            "missing" => Dropped::NoLog,
            "unknown" => Dropped::Unknown,
            // Unreadable: assume the worst.
            id => Dropped::UpTo(id_parts(id).map_or(u64::MAX, |(ms, _)| ms)),
        }
    }

    /// Whether entries written at or after `since_ms` may be gone, by the server's clock
    /// `now_ms`, beyond what a pass that read the log before had seen dropped
    /// (`handled_ms`).
    fn gap(self, since_ms: u64, now_ms: u64, handled_ms: u64) -> bool {
        let older_than = |d: Duration| {
            since_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)) < now_ms
        };
        match self {
            Dropped::NoLog => older_than(LIFETIME),
            Dropped::Unknown => older_than(KEEP),
            Dropped::UpTo(ms) => ms >= since_ms && ms > handled_ms,
        }
    }
}

/// The entries of an `XRANGE` answer that read as requests.
fn entries(v: RedisValue) -> Vec<LoggedControl> {
    let RedisValue::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let RedisValue::Array(mut parts) = item else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let fields = parts.pop()?;
            let id = parts.pop()?.as_string()?;
            let RedisValue::Array(fields) = fields else {
                return None;
            };
            let text = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(RedisValue::as_str).as_deref() == Some("r"))
                .and_then(|kv| kv.get(1))
                .and_then(RedisValue::as_string)?;
            let request = serde_json::from_str(&text).ok()?;
            Some(LoggedControl {
                at_ms: id_ms(&id),
                id,
                request,
            })
        })
        .collect()
}

impl Inner {
    fn control_log_key(&self) -> String {
        format!("{}control-log", self.key_prefix)
    }

    /// Appends `request` to the log; its id.
    pub(crate) async fn log_control(&self, request: &Value) -> Result<String, BrokerError> {
        let key = self.control_log_key();
        let (client, _) = self.publisher(&key);
        let args = vec![
            "add".to_owned(),
            request.to_string(),
            KEEP_ENTRIES.to_string(),
            KEEP.as_millis().to_string(),
            LIFETIME.as_millis().to_string(),
        ];
        let v = self
            .run_script(client, &SCRIPT, vec![key], args, "XADD")
            .await?;
        v.as_string().ok_or_else(|| BrokerError::Refused {
            backend: "Redis",
            command: "XADD",
            reason: "no entry id".to_owned(),
        })
    }

    /// The log's entries from `since_ms` on, oldest first.
    pub(crate) async fn control_log(
        &self,
        since_ms: u64,
    ) -> Result<Vec<LoggedControl>, BrokerError> {
        let key = self.control_log_key();
        let (client, _) = self.publisher(&key);
        let mut out = Vec::new();
        let mut from = format!("{since_ms}-0");
        loop {
            let args = vec!["read".to_owned(), from, PAGE.to_string()];
            let v = self
                .run_script(client, &SCRIPT, vec![key.clone()], args, "XRANGE")
                .await?;
            let n = match &v {
                RedisValue::Array(items) => items.len(),
                _ => 0,
            };
            let page = entries(v);
            let last = page.last().map(|e| e.id.clone());
            out.extend(page);
            match last {
                Some(id) if n == PAGE => from = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }

    /// What the log says of the entries it dropped.
    async fn control_log_dropped(&self) -> Result<Dropped, BrokerError> {
        let key = self.control_log_key();
        let (client, _) = self.publisher(&key);
        let args = vec!["deleted".to_owned()];
        let v = self
            .run_script(client, &SCRIPT, vec![key], args, "XINFO")
            .await?;
        Ok(Dropped::parse(&v.as_string().unwrap_or_default()))
    }

    /// Carries out what the log holds from a little before this node was last reachable
    /// (`now_ms`: the server's clock as this pass found it); how many entries it read.
    pub(crate) async fn replay_control(&self, now_ms: u64) -> Result<usize, BrokerError> {
        let covered = self.control_covered_ms.load(Ordering::SeqCst);
        if covered == 0 {
            // Started just now: nothing was asked of it before.
            self.control_covered_ms.store(now_ms, Ordering::SeqCst);
            return Ok(0);
        }
        let since = covered.saturating_sub(u64::try_from(MARGIN.as_millis()).unwrap_or(0));
        let log = self.control_log(since).await?;
        // Asked after the read: an entry trimmed while it read counts as missed.
        let dropped = self.control_log_dropped().await?;
        let handled = self.control_dropped_ms.load(Ordering::SeqCst);
        let gap = dropped.gap(since, now_ms, handled);
        let Some(inbox) = self.inbox.get() else {
            return Ok(0);
        };
        if gap {
            tracing::warn!(
                cut_off_ms = now_ms.saturating_sub(covered),
                "room broker: this node was cut off for longer than the control log keeps calls; closing every socket so that its client connects again"
            );
            let answer = inbox.answer(serde_json::json!({ "kind": "reset" })).await;
            if let Some(e) = answer.get("error").and_then(Value::as_str) {
                tracing::warn!(error = %e, "room broker: the reset failed here");
            }
        }
        for entry in &log {
            let mut request = entry.request.clone();
            if let Some(map) = request.as_object_mut() {
                map.insert("replay".to_owned(), Value::Bool(true));
                map.insert("at".to_owned(), Value::from(entry.at_ms));
                map.insert("log".to_owned(), Value::from(entry.id.clone()));
            }
            let answer = inbox.answer(request).await;
            if let Some(e) = answer.get("error").and_then(Value::as_str) {
                tracing::warn!(entry = %entry.id, error = %e, "room broker: a control call from the log failed here");
            }
        }
        if !log.is_empty() {
            tracing::info!(
                entries = log.len(),
                "room broker: carried out the control calls made while this node was cut off"
            );
        }
        // Everything up to this pass is carried out (or reset): a later pass, before the next
        // beat moves this up, starts here and does not reset again the sockets that
        // connected since.
        self.control_covered_ms.fetch_max(now_ms, Ordering::SeqCst);
        if let Dropped::UpTo(ms) = dropped {
            self.control_dropped_ms.fetch_max(ms, Ordering::SeqCst);
        }
        Ok(log.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_give_their_time() {
        assert_eq!(id_ms("1712345678901-3"), 1_712_345_678_901);
        assert_eq!(id_ms("nonsense"), 0);
    }

    #[test]
    fn a_gap_is_an_entry_dropped_at_or_after_the_start_and_not_handled_before() {
        let hour = 3_600_000;
        let now = 1000 * hour;
        let since = now - hour;
        let gap = |answer: &str, since: u64, now: u64, handled: u64| {
            Dropped::parse(answer).gap(since, now, handled)
        };
        // Nothing dropped, or only entries before the start.
        assert!(!gap("0-0", since, now, 0));
        assert!(!gap(&format!("{}-7", since - 1), since, now, 0));
        // An entry at or after the start is gone.
        assert!(gap(&format!("{since}-0"), since, now, 0));
        assert!(gap(&format!("{}-3", now - 10), since, now, 0));
        assert!(gap("garbage", since, now, 0));
        // ...unless a pass that read the log already saw it gone (and reset).
        assert!(!gap(&format!("{}-3", now - 10), since, now, now - 10));
        assert!(gap(&format!("{}-3", now - 5), since, now, now - 10));
        // No log: only a node cut off for longer than the log lives can have missed one.
        assert!(!gap("missing", now - 2 * hour, now, 0));
        assert!(gap("missing", now - 200 * hour, now + 1, 0));
        // A Redis that does not say: anything older than an hour may be gone.
        assert!(!gap("unknown", now - hour / 2, now, 0));
        assert!(gap("unknown", now - 2 * hour, now, 0));
    }

    #[test]
    fn xrange_answers_read_as_entries_and_the_rest_is_skipped() {
        let entry = |id: &str, field: &str, value: &str| {
            RedisValue::Array(vec![
                RedisValue::from(id),
                RedisValue::Array(vec![RedisValue::from(field), RedisValue::from(value)]),
            ])
        };
        let v = RedisValue::Array(vec![
            entry(
                "10-0",
                "r",
                r#"{"kind":"leave","user":"u1","room":"conversation:1"}"#,
            ),
            entry("11-0", "x", "{}"),
            entry("12-0", "r", "not json"),
            entry("13-1", "r", r#"{"kind":"disconnect","user":"u2"}"#),
        ]);
        let got = entries(v);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "10-0");
        assert_eq!(got[0].at_ms, 10);
        assert_eq!(got[0].request["kind"], "leave");
        assert_eq!(got[1].at_ms, 13);
        assert_eq!(got[1].request["user"], "u2");
    }
}
