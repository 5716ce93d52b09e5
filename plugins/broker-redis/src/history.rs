//! Room history in Redis Streams, the core's records, and requests between nodes.
//!
//! # History
//!
//! One stream per room, `{<channel>}:h`, beside a small hash `{<channel>}:m` holding the
//! stream's epoch and its last event number; the braces make both one Redis Cluster slot,
//! the room channel's own, so the publish script may `SPUBLISH` on it. A kept event is
//! numbered, appended (`XADD … MAXLEN history.size`, older than `history.ttl` trimmed) and
//! published by one script, so the stream's order is the channel's order and every node
//! delivers a room's events in the order of their numbers. The message carries the event's
//! position (`"p":"epoch:n"`). The epoch is a random word set when the hash is created: a
//! stream that was lost (Redis restarted empty, the hash expired) starts again under a new
//! epoch, and a position of the old one reads back as incomplete, never as a partial
//! replay. Numbers are dense, so a history read knows when its oldest event is not the one
//! right after the position asked for (the gap was trimmed).
//!
//! # Records
//!
//! `{prefix}rec:{key}` hashes, with a TTL: the core's recovery sessions and delivery
//! checkpoints.
//!
//! # Requests between nodes
//!
//! Every node subscribes to its own channel, `{prefix}node:{id}`. A request is published on
//! the target's channel with an id and the asking node; the answer comes back on the asking
//! node's channel. A node that does not answer in time is reported as a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::{Client, ClientLike, HashesInterface, KeysInterface, Value as RedisValue};
use fred::types::scripts::Script;
use parking_lot::Mutex;
use serde_json::{Value, json};
use switchboard_core::broker::new_epoch;
use switchboard_core::config::HistoryConfig;
use switchboard_core::{BrokerError, Delivery, History, Position, Reach, Room};
use tokio::sync::oneshot;

use super::{Inner, broker_error, timed_out};

/// The history scripts, hashed once.
pub(crate) struct Scripts {
    publish_kept: Script,
    position: Script,
    history: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish_kept: Script::from_lua(include_str!("scripts/publish_kept.lua")),
            position: Script::from_lua(include_str!("scripts/position.lua")),
            history: Script::from_lua(include_str!("scripts/history.lua")),
        }
    }
}

/// Requests this node made that wait for their answer.
#[derive(Default)]
pub(crate) struct Asks {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
}

/// What the history needs besides the connections.
pub(crate) struct HistorySettings {
    pub(crate) config: HistoryConfig,
    /// How long a room's epoch outlives its last event (the recovery window).
    pub(crate) meta_ttl: Duration,
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// A room channel's stream key.
fn stream_key(channel: &str) -> String {
    format!("{{{channel}}}:h")
}

/// A room channel's epoch and counter key.
fn meta_key(channel: &str) -> String {
    format!("{{{channel}}}:m")
}

fn unreadable(what: &str) -> BrokerError {
    BrokerError::Refused {
        backend: "Redis",
        command: "EVALSHA",
        reason: format!("unexpected answer to the {what} script"),
    }
}

/// An epoch and number answered as `[epoch, n]`.
fn read_position(v: &RedisValue) -> Option<Position> {
    let RedisValue::Array(items) = v else {
        return None;
    };
    let epoch = items.first()?.as_string()?;
    let n = items.get(1)?.as_u64()?;
    Some(Position::new(epoch, n))
}

impl Inner {
    pub(crate) fn record_key(&self, key: &str) -> String {
        format!("{}rec:{key}", self.key_prefix)
    }

    /// The channel other nodes reach this one on.
    pub(crate) fn node_channel(&self, node: &str) -> String {
        format!("{}node:{node}", self.key_prefix)
    }

    /// Runs a history script on the room's pooled connection.
    pub(crate) async fn run_script(
        &self,
        client: &Client,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
        what: &'static str,
    ) -> Result<RedisValue, BrokerError> {
        match tokio::time::timeout(
            self.timeout,
            script.evalsha_with_reload::<RedisValue, _, _>(client, keys, args),
        )
        .await
        {
            Ok(r) => r.map_err(|e| broker_error(what, self.timeout, &e)),
            Err(_) => Err(timed_out(what, self.timeout)),
        }
    }

    /// Publishes a delivery to keep: numbered, appended to the room's stream and published
    /// by one script; delivered here directly (with its position) when Redis does not take it.
    pub(crate) async fn publish_kept(
        &self,
        delivery: Arc<Delivery>,
    ) -> Result<(Reach, Option<Position>), BrokerError> {
        let Some(room) = delivery.room.clone() else {
            return self.publish_plain(delivery).await.map(|r| (r, None));
        };
        let channel = self.room_channel(&room);
        let (client, client_up) = self.publisher(&channel);
        let through_redis = self.subscribed.load(Ordering::SeqCst) && client_up;
        let body =
            serde_json::to_string(&*delivery).map_err(|e| BrokerError::Encode(e.to_string()))?;
        let i = self.next_publish.fetch_add(1, Ordering::Relaxed);
        let extra = if through_redis {
            format!("\"i\":{i}")
        } else {
            format!("\"skip\":{},\"i\":{i}", Value::from(self.node.as_str()))
        };
        let h = &self.history;
        let args = vec![
            channel.clone(),
            body,
            extra,
            h.config.size.max(1).to_string(),
            millis(h.config.ttl.get()),
            millis(h.config.ttl.get() + h.meta_ttl),
            new_epoch(),
            if self.sharded { "1" } else { "0" }.to_owned(),
        ];
        let keys = vec![stream_key(&channel), meta_key(&channel)];
        let tracked = client_up && through_redis;
        if tracked {
            self.outcomes.start(i);
        }
        let kept = if client_up {
            self.run_script(client, &self.scripts.publish_kept, keys, args, "publish")
                .await
                .and_then(|v| read_position(&v).ok_or_else(|| unreadable("publish")))
        } else {
            Err(BrokerError::Unavailable {
                backend: "Redis",
                reason: "no connection".to_owned(),
            })
        };
        if tracked && kept.is_ok() {
            self.outcomes.succeeded(i);
        }
        match kept {
            Ok(position) if through_redis => Ok((Reach::Cluster, Some(position))),
            Ok(position) => {
                // Other nodes heard it; this node, not subscribed, delivers its own copy
                // (if it still may: the event is kept either way).
                let _ = self.deliver_on_its_own(&delivery.at(position.clone()));
                Ok((Reach::Cluster, Some(position)))
            }
            Err(e) => {
                self.health.report(false, &e.to_string());
                // Redis may have run the script after all: delivered here once, whichever
                // comes first (its position unknown here).
                if tracked && !self.outcomes.failed(i) {
                    return Ok((Reach::Cluster, None));
                }
                self.deliver_on_its_own(&delivery)?;
                Ok((Reach::LocalOnly, None))
            }
        }
    }

    /// A room's newest position, creating its epoch when it has none.
    pub(crate) async fn position(&self, room: &Room) -> Result<Option<Position>, BrokerError> {
        let channel = self.room_channel(room);
        let (client, _) = self.publisher(&channel);
        let h = &self.history;
        let v = self
            .run_script(
                client,
                &self.scripts.position,
                vec![meta_key(&channel)],
                vec![new_epoch(), millis(h.config.ttl.get() + h.meta_ttl)],
                "position",
            )
            .await?;
        read_position(&v)
            .map(Some)
            .ok_or_else(|| unreadable("position"))
    }

    /// A room's kept events after `after`.
    pub(crate) async fn history(
        &self,
        room: &Room,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        let channel = self.room_channel(room);
        let (client, _) = self.publisher(&channel);
        let (epoch, n) = after.map_or((String::new(), 0), |p| (p.epoch.to_string(), p.n));
        let v = self
            .run_script(
                client,
                &self.scripts.history,
                vec![stream_key(&channel), meta_key(&channel)],
                vec![epoch, n.to_string(), limit.max(1).to_string()],
                "history",
            )
            .await?;
        let RedisValue::Array(items) = v else {
            return Err(unreadable("history"));
        };
        let mut it = items.into_iter();
        let epoch = it.next().and_then(|e| e.as_string());
        let last = it.next().and_then(|n| n.as_u64()).unwrap_or(0);
        let complete = it.next().and_then(|c| c.as_u64()) == Some(1);
        let mut events = Vec::new();
        let mut kept_at = Vec::new();
        if let Some(epoch) = &epoch {
            let epoch: Arc<str> = Arc::from(epoch.as_str());
            while let (Some(n), Some(t), Some(d)) = (it.next(), it.next(), it.next()) {
                let (Some(n), Some(d)) = (n.as_u64(), d.as_bytes().map(<[u8]>::to_vec)) else {
                    continue;
                };
                match serde_json::from_slice::<Delivery>(&d) {
                    Ok(mut delivery) => {
                        delivery.position = Some(Position::new(epoch.clone(), n));
                        events.push(delivery);
                        kept_at.push(t.as_u64().unwrap_or(0));
                    }
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e, "room history: an unreadable entry")
                    }
                }
            }
        }
        Ok(History {
            events,
            kept_at,
            complete,
            last: epoch.map(|e| Position::new(e, last)),
        })
    }

    /// Stores a record's fields, with a TTL.
    pub(crate) async fn put_record(
        &self,
        key: &str,
        fields: Vec<(String, String)>,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        if fields.is_empty() {
            return Ok(());
        }
        let key = self.record_key(key);
        let (client, _) = self.publisher(&key);
        let call = async {
            let pipe = client.pipeline();
            let _: () = pipe.hset(&key, fields).await?;
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
            let _: () = pipe.pexpire(&key, ms, None).await?;
            pipe.all::<RedisValue>().await.map(|_| ())
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|e| broker_error("HSET", self.timeout, &e)),
            Err(_) => Err(timed_out("HSET", self.timeout)),
        }
    }

    /// A record's fields.
    pub(crate) async fn get_record(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<Vec<Option<String>>, BrokerError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.record_key(key);
        let (client, _) = self.publisher(&key);
        match tokio::time::timeout(
            self.timeout,
            client.hmget::<Vec<Option<String>>, _, _>(&key, fields.to_vec()),
        )
        .await
        {
            Ok(r) => r.map_err(|e| broker_error("HMGET", self.timeout, &e)),
            Err(_) => Err(timed_out("HMGET", self.timeout)),
        }
    }

    /// Removes a record, or some of its fields.
    pub(crate) async fn delete_record(
        &self,
        key: &str,
        fields: &[String],
    ) -> Result<(), BrokerError> {
        let key = self.record_key(key);
        let (client, _) = self.publisher(&key);
        let call = async {
            if fields.is_empty() {
                client.del::<i64, _>(&key).await.map(|_| ())
            } else {
                client
                    .hdel::<i64, _, _>(&key, fields.to_vec())
                    .await
                    .map(|_| ())
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(|e| broker_error("DEL", self.timeout, &e)),
            Err(_) => Err(timed_out("DEL", self.timeout)),
        }
    }

    /// Asks node `node` and waits for its answer.
    pub(crate) async fn ask(
        &self,
        node: &str,
        request: Value,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let id = self.asks.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.asks.pending.lock().insert(id, tx);
        let message = json!({ "id": id, "from": self.node, "ask": request }).to_string();
        let channel = self.node_channel(node);
        let (client, _) = self.publisher(&channel);
        // The receiver count is exact on one server and for sharded channels (not for a
        // plain PUBLISH in a cluster, which counts one node's subscribers).
        let exact = self.sharded || !client.is_clustered();
        let sent = self.send(client, channel, message).await;
        let answer = match sent {
            Ok(0) if exact => {
                self.asks.pending.lock().remove(&id);
                return Err(BrokerError::Unavailable {
                    backend: "Redis",
                    reason: format!("node {node} does not listen on its channel"),
                });
            }
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                self.asks.pending.lock().remove(&id);
                return Err(e);
            }
        };
        self.asks.pending.lock().remove(&id);
        answer.ok_or(BrokerError::Timeout {
            backend: "Redis",
            command: "ask",
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Handles a message on this node's own channel: an answer to one of its requests, or a
    /// request to answer.
    pub(crate) fn on_control(self: &Arc<Self>, bytes: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        if let Some(re) = msg.get("re").and_then(Value::as_u64) {
            if let Some(tx) = self.asks.pending.lock().remove(&re) {
                let _ = tx.send(msg.get("answer").cloned().unwrap_or(Value::Null));
            }
            return;
        }
        let (Some(id), Some(from)) = (
            msg.get("id").and_then(Value::as_u64),
            msg.get("from").and_then(Value::as_str).map(str::to_owned),
        ) else {
            return;
        };
        let request = msg.get("ask").cloned().unwrap_or(Value::Null);
        let me = self.clone();
        tokio::spawn(async move {
            let Some(inbox) = me.inbox.get().cloned() else {
                return;
            };
            let answer = inbox.answer(request).await;
            let reply = json!({ "re": id, "answer": answer }).to_string();
            let channel = me.node_channel(&from);
            let (client, _) = me.publisher(&channel);
            if let Err(e) = me.send(client, channel, reply).await.map(|_| ()) {
                tracing::debug!(error = %e, "room broker: could not answer a request");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_s_keys_share_its_channel_s_slot() {
        let channel = "sb:room:conversation:42";
        assert_eq!(stream_key(channel), "{sb:room:conversation:42}:h");
        assert_eq!(meta_key(channel), "{sb:room:conversation:42}:m");
    }
}
