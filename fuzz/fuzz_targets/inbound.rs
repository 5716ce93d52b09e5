//! Fuzzes the inbound path: a Socket.IO event frame's text → payload decode → size, depth and
//! shape checks → the owning handler. Run with `cargo fuzz run inbound` (see README).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use switchboard::{CloseReason, ConnId, Connection, Gateway, Identity, LoadedConfig, Node};

struct Sink(ConnId);

impl Connection for Sink {
    fn id(&self) -> &ConnId {
        &self.0
    }
    fn send(&self, _event: &str, _payload: &RawValue) {}
    fn close(&self, _reason: CloseReason) {}
}

fn gateway() -> &'static (tokio::runtime::Runtime, Gateway) {
    static G: OnceLock<(tokio::runtime::Runtime, Gateway)> = OnceLock::new();
    G.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config = "[auth.jwt]\nsecret = \"fuzz-secret-0123456789-abcdefghijklmnop\"\n[limits]\nevents_per_second = 1000000000\nburst = 1000000000\n";
        let node = rt.block_on(async { Node::build(LoadedConfig::from_toml_str(config).expect("config")).expect("node") });
        let gw = node.gateway().clone();
        rt.block_on(gw.start());
        (rt, gw)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (rt, gw) = gateway();
    rt.block_on(async {
        let session = gw.connect(Arc::new(Sink(ConnId::new("fuzz"))), Identity::anonymous_user("u")).await;
        // The frame as the Socket.IO transport sees it: `["event", payload, …]`.
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(parts) => {
                let event = parts.first().and_then(|e| serde_json::from_str::<String>(e.get()).ok()).unwrap_or_default();
                let _ = gw.inbound(&session, session.ticket(), &event, text.len(), parts.get(1).copied()).await;
            }
            Err(e) => {
                let _ = gw.inbound_malformed(&session, &e.to_string());
            }
        }
        gw.disconnect(&session).await;
    });
});
