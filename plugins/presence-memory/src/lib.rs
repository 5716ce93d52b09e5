//! `presence.plugin = "memory"`: who is online, for a single node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_core::{
    BoxError, ConnId, Factory, Plugin, PluginContext, PresenceError, PresenceStore, async_trait,
    register_plugin,
};

/// Per-user connection sets, in this process.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<String, HashSet<ConnId>>>,
}

impl MemoryPresence {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn connect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError> {
        let mut users = self.users.lock();
        let set = users.entry(user_id.to_owned()).or_default();
        let first = set.is_empty();
        set.insert(conn.clone());
        Ok(first)
    }

    async fn disconnect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError> {
        let mut users = self.users.lock();
        let Some(set) = users.get_mut(user_id) else {
            return Ok(false);
        };
        let removed = set.remove(conn);
        if set.is_empty() {
            users.remove(user_id);
            return Ok(removed);
        }
        Ok(false)
    }

    async fn online_users(&self) -> Result<Vec<String>, PresenceError> {
        Ok(self.users.lock().keys().cloned().collect())
    }

    async fn connections(&self, user_id: &str) -> Result<usize, PresenceError> {
        Ok(self.users.lock().get(user_id).map_or(0, HashSet::len))
    }
}

fn build(_ctx: &PluginContext<'_>) -> Result<Arc<dyn PresenceStore>, BoxError> {
    Ok(Arc::new(MemoryPresence::new()))
}

register_plugin!(Plugin::new(
    "memory",
    "Presence in one process: per-user connection sets in memory",
    Factory::Presence(build)
));

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_and_last_connection_are_reported() {
        let p = MemoryPresence::new();
        let (a, b) = (ConnId::new("a"), ConnId::new("b"));
        assert!(p.connect("u", &a).await.expect("connect"));
        assert!(!p.connect("u", &b).await.expect("connect"));
        assert_eq!(p.connections("u").await.expect("count"), 2);
        assert!(!p.disconnect("u", &a).await.expect("disconnect"));
        assert!(
            !p.disconnect("u", &a).await.expect("twice"),
            "a repeated disconnect is not a last one"
        );
        assert_eq!(p.online_users().await.expect("list"), vec!["u".to_owned()]);
        assert!(p.disconnect("u", &b).await.expect("disconnect"));
        assert_eq!(p.connections("u").await.expect("count"), 0);
        assert!(p.online_users().await.expect("list").is_empty());
        assert!(!p.disconnect("nobody", &a).await.expect("unknown"));
    }
}
