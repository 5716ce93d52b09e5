//! Switchboard's core: the plugin traits, the registry, the config model, the rooms
//! component, the runtime that runs the event pipeline, and the HTTP API.
//!
//! Plugins depend on this crate alone and register with [`register_plugin!`].

pub mod access;
pub mod api;
pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
mod cors;
pub mod error;
pub mod event;
mod expiry;
pub mod hooks;
pub mod json;
mod limits;
pub mod listen;
pub mod metrics;
pub mod net;
pub mod node;
pub mod presence;
mod recovery;
mod refresh;
pub mod registry;
mod rooms;
pub mod runtime;
pub mod schema;
pub mod session;
pub mod tap;
pub mod tls;
pub mod transport;
pub mod units;

pub use async_trait::async_trait;
pub use auth::{
    AuthError, Authenticator, Handshake, Identity, RefusalLog, RefusalReason, TokenSource,
};
pub use broker::{
    BrokerError, ConnId, ControlHandler, Delivery, History, Inbox, Position, Reach, Room,
    RoomBroker,
};
pub use config::{Config, ConfigError, LoadedConfig, Overrides};
pub use error::{Cause, Classify};
pub use event::{ErrorKind, EventError, EventHandler, EventSet, InboundCtx, Outcome, Validate};
pub use hooks::{Direction, HookCtx, Hooks, Source, Verdict};
pub use metrics::Metrics;
pub use net::PeerSocket;
pub use node::{Node, NodeBuilder};
pub use presence::{PresenceChange, PresenceError, PresenceEvents, PresenceStore};
pub use refresh::AUTH_REFRESH;
pub use registry::{BoxError, Factory, Plugin, PluginContext, PluginKind};
pub use runtime::{Gateway, GatewayHandle, Publish, PublishError, Published};
pub use session::{Session, Ticket};
pub use transport::{CloseReason, Connection, QueueFull, Recipients, Transport, TransportId};
pub use units::{Dur, Size};

#[doc(hidden)]
pub use inventory;
