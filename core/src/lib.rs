//! Switchboard's core: the plugin traits, the registry, the config model, the runtime that
//! runs the event pipeline, and the HTTP API.
//!
//! Plugins depend on this crate alone and register with [`register_plugin!`].

pub mod access;
pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod event;
mod expiry;
pub mod hooks;
pub mod metrics;
pub mod net;
pub mod node;
pub mod presence;
pub mod registry;
pub mod runtime;
pub mod transport;
pub mod units;

pub use async_trait::async_trait;
pub use auth::{
    AuthError, Authenticator, Handshake, Identity, RefusalLog, RefusalReason, TokenSource,
};
pub use broker::{BrokerError, ConnId, Delivery, LocalHub, Reach, Room, RoomBroker};
pub use config::{Config, ConfigError, LoadedConfig, Overrides};
pub use event::{ErrorKind, EventError, EventHandler, Outcome};
pub use hooks::{Direction, HookCtx, Hooks, Source, Verdict};
pub use metrics::Metrics;
pub use net::PeerSocket;
pub use node::Node;
pub use presence::{PresenceChange, PresenceError, PresenceEvents, PresenceStore};
pub use registry::{BoxError, Factory, Plugin, PluginContext, PluginKind};
pub use runtime::{Gateway, InboundCtx, Publish, PublishError, Published, Session};
pub use transport::{CloseReason, Connection, Transport};
pub use units::{Dur, Size};

#[doc(hidden)]
pub use inventory;
