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
//! publisher.start().await; // `serve` starts it too; started here, it can publish at once
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

// Every built-in plugin crate, named so the linker keeps its registration (`build.rs`
// writes one `pub use switchboard_x as x;` per `switchboard-*` dependency).
include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

pub mod embedded;
pub mod init;
pub mod run;
