//! The example scripts in `scripts/`, loaded from the real files.

mod support;

use serde_json::json;
use support::{Ctx, api_ctx, config, examples_dir, hooks, message_sent};
use switchboard_core::{Direction, Hooks, Verdict};

fn example(name: &str) -> std::path::PathBuf {
    examples_dir().join(name)
}

#[test]
fn redact_phones_masks_content_and_sender_phone() {
    let (h, _) = hooks(config(vec![example("redact-phones.lua")]));
    let payload = message_sent(
        "call me at +1 (555) 123-4567 or 555.987.6543, room 12, year 2026",
        "+15551234567",
    );
    let Verdict::Pass(out) = h.on_outbound("session:message-sent", payload, &api_ctx("session:s1"))
    else {
        panic!("redaction must not drop the message");
    };
    assert_eq!(
        out["content"],
        "call me at +* (***) ***-**67 or ***.***.**43, room 12, year 2026"
    );
    assert_eq!(out["senderPhone"], "+*********67");
    assert_eq!(out["senderName"], "Ana", "other fields are untouched");
    assert_eq!(out["messageId"], "m1");
}

#[test]
fn redact_phones_leaves_other_events_alone() {
    let (h, _) = hooks(config(vec![example("redact-phones.lua")]));
    let payload = json!({"conversationId": "c1", "messageId": "m1", "senderId": "u1",
        "type": "text", "content": "+1 555 123 4567", "status": "sent", "timestamp": "t"});
    let out = h.on_outbound(
        "message:received",
        payload.clone(),
        &api_ctx("conversation:c1"),
    );
    assert_eq!(out, Verdict::Pass(payload));
}

#[test]
fn redact_phones_survives_a_message_without_phone() {
    let (h, _) = hooks(config(vec![example("redact-phones.lua")]));
    let mut payload = message_sent("hello", "x");
    payload
        .as_object_mut()
        .expect("object")
        .remove("senderPhone");
    payload["content"] = serde_json::Value::Null;
    let out = h.on_outbound(
        "session:message-sent",
        payload.clone(),
        &api_ctx("session:s1"),
    );
    assert_eq!(
        out,
        Verdict::Pass(payload),
        "null content and no phone pass unchanged"
    );
}

#[test]
fn mute_typing_drops_typing_of_muted_users_only() {
    let (h, _) = hooks(config(vec![example("mute-typing.lua")]));
    let payload = json!({"conversationId": "42"});
    let muted = Ctx::socket("u-muted", json!({"sub": "u-muted", "muted": true}));
    let talker = Ctx::socket("u-ok", json!({"sub": "u-ok"}));
    for event in ["typing:start", "typing:stop"] {
        assert_eq!(
            h.on_inbound(event, payload.clone(), &muted.get(Direction::Inbound)),
            Verdict::Drop,
            "{event} of a muted user is dropped"
        );
        assert_eq!(
            h.on_inbound(event, payload.clone(), &talker.get(Direction::Inbound)),
            Verdict::Pass(payload.clone())
        );
    }
    assert_eq!(
        h.on_inbound(
            "conversation:join",
            payload.clone(),
            &muted.get(Direction::Inbound)
        ),
        Verdict::Pass(payload),
        "a muted user still joins"
    );
}

#[test]
fn server_time_stamps_every_outbound_payload() {
    let (h, _) = hooks(config(vec![example("server-time.lua")]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for (event, payload) in [
        (
            "message:status",
            json!({"conversationId": "1", "messageId": "m", "status": "read"}),
        ),
        ("user:online", json!({"userId": "u1"})),
    ] {
        let Verdict::Pass(out) = h.on_outbound(event, payload.clone(), &api_ctx("conversation:1"))
        else {
            panic!("not dropped");
        };
        let t = out["serverTime"]
            .as_u64()
            .expect("serverTime is an integer");
        assert!(
            t >= before && t <= before + 5,
            "serverTime {t} is now ({before})"
        );
        let mut rest = out.clone();
        rest.as_object_mut().expect("object").remove("serverTime");
        assert_eq!(rest, payload);
    }
    let inbound = json!({"conversationId": "1"});
    let ctx = Ctx::socket("u1", json!({}));
    assert_eq!(
        h.on_inbound(
            "typing:start",
            inbound.clone(),
            &ctx.get(Direction::Inbound)
        ),
        Verdict::Pass(inbound),
        "inbound events are not stamped"
    );
}

#[test]
fn conversation_acl_allows_listed_conversations_only() {
    let (h, _) = hooks(config(vec![example("conversation-acl.lua")]));
    let claims = json!({"sub": "u1", "conversations": ["42", 7]});
    let allowed = |room: &str, claims: &serde_json::Value| {
        let c = Ctx::socket("u1", claims.clone()).in_room(room);
        h.authorize(&c.get(Direction::Inbound))
    };
    assert!(allowed("conversation:42", &claims));
    assert!(
        allowed("conversation:7", &claims),
        "numbers in the claim count"
    );
    assert!(!allowed("conversation:43", &claims));
    assert!(!allowed("conversation:4", &claims));
    assert!(
        !allowed("conversation:42", &json!({"sub": "u1"})),
        "no claim, no conversations"
    );
    assert!(!allowed(
        "conversation:42",
        &json!({"sub": "u1", "conversations": "42"})
    ));
    assert!(
        allowed("session:s1", &json!({"sub": "u1"})),
        "session rooms are not its business"
    );
}

#[test]
fn examples_chain_in_order() {
    let (h, _) = hooks(config(vec![
        example("redact-phones.lua"),
        example("server-time.lua"),
        example("mute-typing.lua"),
        example("conversation-acl.lua"),
    ]));
    let Verdict::Pass(out) = h.on_outbound(
        "session:message-sent",
        message_sent("ring 0044 20 7946 0958", "07700900123"),
        &api_ctx("session:s1"),
    ) else {
        panic!("not dropped");
    };
    assert_eq!(out["content"], "ring **** ** **** **58");
    assert_eq!(out["senderPhone"], "*********23");
    assert!(
        out["serverTime"].is_u64(),
        "the second script saw the first one's output"
    );
}

/// The script shown in the book's Lua hooks chapter runs as the page says.
#[test]
fn the_documented_script_works() {
    let page = std::fs::read_to_string(examples_dir().join("../book/src/guide/lua-hooks.md"))
        .expect("docs page");
    let start = page
        .find("```lua\n-- scripts/tag-bots.lua")
        .expect("the snippet")
        + "```lua\n".len();
    let len = page[start..].find("```").expect("end of the snippet");
    let s = support::Scripts::new();
    let (h, _) = hooks(config(vec![
        s.write("tag-bots.lua", &page[start..start + len]),
    ]));
    let mut bot = message_sent("hello", "+1");
    bot["senderId"] = json!("bot-7");
    let Verdict::Pass(out) = h.on_outbound("session:message-sent", bot, &api_ctx("session:s1"))
    else {
        panic!("not dropped");
    };
    assert_eq!(out["isFromBot"], true);
    let Verdict::Pass(out) = h.on_outbound(
        "session:message-sent",
        message_sent("hi", "+1"),
        &api_ctx("session:s1"),
    ) else {
        panic!("not dropped");
    };
    assert_eq!(out["isFromBot"], false);
    assert_eq!(
        h.on_outbound(
            "session:message-sent",
            message_sent("", "+1"),
            &api_ctx("session:s1")
        ),
        Verdict::Drop,
        "empty messages are dropped"
    );
}
