//! Presence: the [`PresenceStore`] trait, which knows who is online across the cluster.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::broker::ConnId;
use crate::error::{Cause, Classify};

/// Why a presence call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The backend that holds presence cannot be reached (or this node has not
    /// re-registered its connections there yet).
    #[error("presence store: {backend} unreachable: {reason}")]
    Unavailable {
        /// The backend (`Redis`).
        backend: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A command to the backend took longer than its timeout.
    #[error("presence store: {backend} did not answer within {after_ms} ms")]
    Timeout {
        /// The backend (`Redis`).
        backend: &'static str,
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
    /// The backend answered with an error that retrying will not fix, or with an answer the
    /// store cannot read.
    #[error("presence store: {backend} refused the call: {reason}")]
    Refused {
        /// The backend (`Redis`).
        backend: &'static str,
        /// Its answer.
        reason: String,
    },
}

impl Classify for PresenceError {
    fn cause(&self) -> Cause {
        Cause::Backend
    }
    fn retryable(&self) -> bool {
        !matches!(self, PresenceError::Refused { .. })
    }
}

/// A change the store found by itself (a dead node swept, a connection registered late),
/// which the runtime announces.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceChange {
    /// The user has no connection left anywhere.
    Offline(String),
    /// `conn`, a connection of this node whose `connect` failed (the backend was
    /// unreachable), turned out to be the user's first anywhere once it was registered.
    Online {
        /// The user now online.
        user: String,
        /// The connection that made them so (it does not get the announcement).
        conn: ConnId,
    },
}

/// Where a store reports changes it finds by itself.
pub type PresenceEvents = mpsc::UnboundedSender<PresenceChange>;

// ANCHOR: presence_store
/// Tracks each user's live connections, on this node and (clustered) others.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Records a connection; `true` when it is the user's first anywhere.
    async fn connect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError>;

    /// Forgets a connection; `true` when it was the user's last anywhere.
    async fn disconnect(&self, user_id: &str, conn: &ConnId) -> Result<bool, PresenceError>;

    /// Every user with at least one connection.
    async fn online_users(&self) -> Result<Vec<String>, PresenceError>;

    /// How many connections a user has.
    async fn connections(&self, user_id: &str) -> Result<usize, PresenceError>;

    /// Starts background work; changes it finds by itself go to `events`.
    async fn start(&self, events: PresenceEvents) -> Result<(), PresenceError> {
        let _ = events;
        Ok(())
    }

    /// Whether the backend answers (for `/readyz`).
    async fn ready(&self) -> bool {
        true
    }

    /// Stops background work and withdraws this node's connections.
    async fn shutdown(&self) {}
}
// ANCHOR_END: presence_store
