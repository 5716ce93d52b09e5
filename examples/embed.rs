//! Embeds a gateway in your own program and publishes to a room from Rust, without HTTP.
//!
//! ```sh
//! cargo run --example embed
//! ```
//!
//! It serves on 127.0.0.1:3001 and publishes a `message:status` to `conversation:42`
//! every two seconds; connect a socket.io-client to `/messages` and join conversation 42
//! to see them (mint a token with the secret below). Sample output:
//!
//! ```text
//! published to conversation:42
//! published to conversation:42
//! ```

use std::time::Duration;

use switchboard::{LoadedConfig, Node, Publish};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:3001"
[auth.jwt]
secret = "embedded-example-secret-0123456789abc"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // ANCHOR: publish
    let node = Node::build(LoadedConfig::from_toml_str(CONFIG)?)?;
    let gateway = node.gateway().clone();
    // `serve` starts the gateway too; starting it here first lets us publish at once.
    gateway.start().await;
    let listener = tokio::net::TcpListener::bind(gateway.config().server.listen).await?;
    tokio::spawn(node.serve(listener, std::future::pending()));

    loop {
        let published = gateway
            .publish(Publish {
                event: "message:status".into(),
                data: serde_json::json!({"conversationId": "42", "messageId": "m1", "status": "read"}),
                room: None,
            })
            .await?;
        println!("published to {}", published.room);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // ANCHOR_END: publish
}
