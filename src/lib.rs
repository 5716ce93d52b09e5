//! Switchboard: a real-time gateway framework. Socket.IO clients with JWT auth, rooms,
//! presence across nodes, typing indicators, and an HTTP API through which a backend
//! publishes into rooms.
//!
//! This facade re-exports [`switchboard_core`] and links every built-in plugin, so a
//! program that depends on `switchboard` gets the whole registry. To embed a gateway:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::{LoadedConfig, Node, Publish};
//! let node = Node::build(LoadedConfig::from_toml_str("[auth.jwt]\nsecret = \"a-long-random-secret-of-32-bytes!\"")?)?;
//! let publisher = node.gateway().clone();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! tokio::spawn(node.serve(listener, std::future::pending()));
//! publisher
//!     .publish(Publish {
//!         event: "message:status".into(),
//!         data: serde_json::json!({"conversationId": "42", "messageId": "m1", "status": "read"}),
//!         room: None,
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

pub use switchboard_core::*;

// Name every built-in plugin crate so the linker keeps its registration.
pub use switchboard_auth_jwt as auth_jwt;
pub use switchboard_broker_memory as broker_memory;
pub use switchboard_broker_redis as broker_redis;
pub use switchboard_events_conversation as events_conversation;
pub use switchboard_events_session as events_session;
pub use switchboard_events_typing as events_typing;
pub use switchboard_hooks_lua as hooks_lua;
pub use switchboard_presence_memory as presence_memory;
pub use switchboard_presence_redis as presence_redis;
pub use switchboard_transport_socketio as transport_socketio;
pub use switchboard_transport_websocket as transport_websocket;

pub mod embedded;
pub mod init;
pub mod run;
