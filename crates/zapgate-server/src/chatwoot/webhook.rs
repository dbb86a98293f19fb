//! Chatwoot's account webhooks: which ones are messages to send, and the
//! signature newer releases put on them.
//!
//! Facts about the payload (from Chatwoot's `Message#webhook_data` and
//! `Conversations::EventDataPresenter`): the top-level `message_type` is a
//! string (`incoming`, `outgoing`, `activity`, `template`); private notes are
//! delivered too (`"private": true`); `conversation.id` is the display id;
//! the recipient is `conversation.contact_inbox.source_id`, else the
//! contact's `conversation.meta.sender.phone_number`; media is in
//! `attachments[].data_url`.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use zapgate_domain::ChatId;

/// What a webhook asks of zapgate.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// An agent's message: send it to WhatsApp.
    Send(Outgoing),
    /// Anything else, acknowledged and dropped (the reason, for the answer).
    Ignore(&'static str),
}

/// A Chatwoot message to send: the job's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Chatwoot's message id: with the integration, the job's key.
    pub chatwoot_message_id: String,
    pub conversation_id: u64,
    /// The recipient as zapgate keys chats (`5511…`, `…@g.us`).
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// Chatwoot's URL of the file (it redirects to the storage).
    pub url: String,
    /// Chatwoot's `file_type`: `image`, `audio`, `video`, `file`, …
    pub file_type: String,
}

/// Reads a `message_created` webhook. Sent are only outgoing, public
/// messages of the integration's inbox (`inbox_id`: an account webhook fires
/// for every inbox of the account) that zapgate did not create itself (those
/// come back too); private notes, incoming messages, activities, other
/// inboxes and other events are ignored.
pub fn decide(body: &Value, inbox_id: u64) -> Result<Decision, String> {
    if body["event"].as_str() != Some("message_created") {
        return Ok(Decision::Ignore("not a message_created event"));
    }
    let inbox = body["inbox"]["id"].as_u64().or(body["conversation"]["inbox_id"].as_u64());
    if inbox != Some(inbox_id) {
        return Ok(Decision::Ignore("another inbox"));
    }
    let outgoing = matches!(&body["message_type"], Value::String(t) if t == "outgoing")
        || body["message_type"].as_u64() == Some(1);
    if !outgoing {
        return Ok(Decision::Ignore("not an outgoing message"));
    }
    if body["private"].as_bool() == Some(true) {
        return Ok(Decision::Ignore("a private note"));
    }
    if body["source_id"].as_str().is_some_and(|s| s.starts_with(super::OWN_SOURCE_PREFIX)) {
        return Ok(Decision::Ignore("created by zapgate"));
    }
    let id = match &body["id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return Err("the message has no id".into()),
    };
    let conversation = &body["conversation"];
    let conversation_id = conversation["id"].as_u64().ok_or("the message has no conversation id")?;
    let candidates =
        [conversation["contact_inbox"]["source_id"].as_str(), conversation["meta"]["sender"]["phone_number"].as_str()];
    // An API inbox's source_id is whatever made the contact: a number when
    // zapgate did, a UUID when an agent did, so fall back to the phone.
    let to = candidates
        .into_iter()
        .flatten()
        .find_map(|c| ChatId::parse(c).ok())
        .ok_or("the conversation's contact has no WhatsApp number")?
        .key();
    let text = body["content"].as_str().map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned);
    let attachments: Vec<Attachment> = body["attachments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| {
                    let url = a["data_url"].as_str()?.to_owned();
                    let file_type = a["file_type"].as_str().unwrap_or("file").to_owned();
                    Some(Attachment { url, file_type })
                })
                .collect()
        })
        .unwrap_or_default();
    if text.is_none() && attachments.is_empty() {
        return Ok(Decision::Ignore("nothing to send"));
    }
    Ok(Decision::Send(Outgoing { chatwoot_message_id: id, conversation_id, to, text, attachments }))
}

/// How far `X-Chatwoot-Timestamp` may be from now: a captured webhook
/// replayed later (once its job's key is purged) is refused.
pub const MAX_SKEW_SECS: i64 = 300;

/// Whether `X-Chatwoot-Signature` (`sha256=<hex HMAC-SHA256(secret,
/// "{X-Chatwoot-Timestamp}.{body}")>`) is right, and the timestamp within
/// [`MAX_SKEW_SECS`] of `now_secs`. Constant time.
pub fn signature_ok(secret: &str, timestamp: &str, body: &[u8], signature: &str, now_secs: i64) -> bool {
    let fresh = timestamp.trim().parse::<i64>().is_ok_and(|t| (now_secs - t).abs() <= MAX_SKEW_SECS);
    fresh && signature_matches(secret, timestamp, body, signature)
}

fn signature_matches(secret: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else { return false };
    let Ok(given) = hex::decode(hex_sig) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(overrides: Value) -> Value {
        let mut m = json!({
            "event": "message_created", "id": 4321, "content": "Olá, Ana!", "message_type": "outgoing",
            "content_type": "text", "private": false, "source_id": null, "content_attributes": {},
            "sender": {"id": 1, "name": "Bruno", "type": "user"},
            "inbox": {"id": 7, "name": "WhatsApp"}, "account": {"id": 1, "name": "Acme"},
            "conversation": {"id": 42, "inbox_id": 7, "channel": "Channel::Api",
                "contact_inbox": {"id": 9, "contact_id": 5, "inbox_id": 7, "source_id": "5511988887777"},
                "meta": {"sender": {"id": 5, "name": "Ana", "phone_number": "+5511988887777", "type": "contact"}},
                "messages": [{"id": 4321, "message_type": 1, "private": false}]}
        });
        if let (Value::Object(m), Value::Object(o)) = (&mut m, overrides) {
            m.extend(o);
        }
        m
    }

    #[test]
    fn an_agents_reply_is_sent_to_the_contacts_number() {
        let d = decide(&message(json!({})), 7).unwrap();
        let Decision::Send(o) = d else { panic!("{d:?}") };
        assert_eq!((o.chatwoot_message_id.as_str(), o.conversation_id, o.to.as_str()), ("4321", 42, "5511988887777"));
        assert_eq!(o.text.as_deref(), Some("Olá, Ana!"));
    }

    #[test]
    fn attachments_and_a_uuid_source_id_fall_back_to_the_phone() {
        let mut m = message(json!({"content": null, "attachments": [{"id": 1, "file_type": "image",
            "data_url": "https://chatwoot.example/rails/active_storage/blobs/redirect/x/photo.jpg"}]}));
        m["conversation"]["contact_inbox"]["source_id"] = json!("0f8fad5b-d9cb-469f-a165-70867728950e");
        let Decision::Send(o) = decide(&m, 7).unwrap() else { panic!() };
        assert_eq!(o.to, "5511988887777");
        assert_eq!((o.text, o.attachments.len(), o.attachments[0].file_type.as_str()), (None, 1, "image"));
    }

    #[test]
    fn notes_incoming_echoes_and_other_events_are_ignored() {
        for (m, why) in [
            (message(json!({"private": true})), "a private note"),
            (message(json!({"message_type": "incoming"})), "not an outgoing message"),
            (message(json!({"message_type": "activity"})), "not an outgoing message"),
            (message(json!({"source_id": "zapgate:msg_0193"})), "created by zapgate"),
            (message(json!({"event": "conversation_created"})), "not a message_created event"),
            (message(json!({"content": "  "})), "nothing to send"),
            (message(json!({"inbox": {"id": 8, "name": "Email"}})), "another inbox"),
        ] {
            assert_eq!(decide(&m, 7).unwrap(), Decision::Ignore(why));
        }
    }

    #[test]
    fn signatures_are_checked_over_timestamp_and_body() {
        let body = br#"{"event":"message_created"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"cw-secret").unwrap();
        mac.update(b"1767225600.");
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let now = 1_767_225_600;
        assert!(signature_ok("cw-secret", "1767225600", body, &good, now));
        assert!(signature_ok("cw-secret", "1767225600", body, &good, now + 299));
        assert!(!signature_ok("cw-secret", "1767225600", body, &good, now + 301), "a stale webhook is refused");
        assert!(!signature_ok("cw-secret", "1767225601", body, &good, now), "the timestamp is signed");
        assert!(!signature_ok("other", "1767225600", body, &good, now));
        assert!(!signature_ok("cw-secret", "1767225600", body, "sha256=zz", now));
    }
}
