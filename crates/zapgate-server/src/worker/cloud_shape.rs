//! zapgate's events as WhatsApp Cloud API webhook payloads, for endpoints
//! of format `cloud_api` (Cloud API clients, Chatwoot's WhatsApp Cloud
//! inbox): `{"object":"whatsapp_business_account","entry":[{"id","changes":
//! [{"field":"messages","value":{messaging_product, metadata, contacts,
//! statuses | messages}}]}]}`, with the ids the facade gives out
//! (`wamid.<zapgate id>`, numeric media ids).
//!
//! [`cloud_payload`] is pure; [`CloudShaper`] reads what it needs (the
//! instance, the message's recipient, the attachment's checksum) from the store.

use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use zapgate_backends::{InstanceRecord, MediaIndex, Store};
use zapgate_domain::event::ReceivedMessage;
use zapgate_domain::{EventType, MediaId, MessageEvent, MessageStatus};

/// What an event's Cloud payload needs besides the event.
#[derive(Debug, Clone, Default)]
pub struct CloudFacts {
    /// The instance's `phone_number_id`, `waba_id` and own number.
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: String,
    /// For a status: who the message went to (digits, or a group id).
    pub recipient: Option<String>,
    /// For a received attachment: its MIME type and SHA-256, once fetched.
    pub media: Option<(Option<String>, Option<String>)>,
}

/// The payload of `event`, or None for an event the Cloud API has no
/// webhook for (endpoints of this format take only message statuses and
/// received messages, so that is a stale row, not a normal case).
pub fn cloud_payload(event: &MessageEvent, facts: &CloudFacts) -> Option<Value> {
    let metadata = json!({"display_phone_number": facts.display_phone_number,
                          "phone_number_id": facts.phone_number_id});
    let (field, value) = match event.event_type {
        EventType::MessageStatus => {
            let status = status(event, facts)?;
            let recipient = facts.recipient.clone().unwrap_or_default();
            let value = json!({"messaging_product": "whatsapp", "metadata": metadata,
                "contacts": [contact(&recipient, None)], "statuses": [status]});
            ("messages", value)
        }
        EventType::MessageReceived => {
            let m = event.detail.message.as_ref()?;
            let mut message = message(event, m, facts)?;
            if m.from_me {
                // Sent from the number's own phone: Meta's "message echoes".
                message.insert("from".into(), facts.display_phone_number.clone().into());
                message.insert("to".into(), cloud_chat(&m.chat).into());
                let value = json!({"messaging_product": "whatsapp", "metadata": metadata,
                    "message_echoes": [message]});
                ("smb_message_echoes", value)
            } else {
                let from = cloud_chat(m.sender.as_deref().unwrap_or(&m.chat));
                let value = json!({"messaging_product": "whatsapp", "metadata": metadata,
                    "contacts": [contact(&from, m.sender_name.as_deref())], "messages": [message]});
                ("messages", value)
            }
        }
        _ => return None,
    };
    Some(json!({"object": "whatsapp_business_account",
        "entry": [{"id": facts.waba_id, "changes": [{"field": field, "value": value}]}]}))
}

/// A chat as zapgate shows it (`+5511…`, `…@g.us`) as the Cloud API does (`5511…`).
fn cloud_chat(chat: &str) -> String {
    chat.trim_start_matches('+').to_owned()
}

/// `user_id` too: a current Python client drops an update without it.
fn contact(wa_id: &str, name: Option<&str>) -> Value {
    json!({"wa_id": wa_id, "user_id": wa_id, "profile": {"name": name.unwrap_or_default()}})
}

fn status(event: &MessageEvent, facts: &CloudFacts) -> Option<Value> {
    let id = event.message_id.as_ref()?;
    let name = match event.status? {
        MessageStatus::Sent => "sent",
        MessageStatus::Delivered => "delivered",
        MessageStatus::Read | MessageStatus::Played => "read",
        MessageStatus::Failed | MessageStatus::Dead | MessageStatus::Expired | MessageStatus::Cancelled => "failed",
        _ => return None,
    };
    let mut status = json!({"id": id.to_wamid(), "status": name, "timestamp": secs(event),
        "recipient_id": facts.recipient.clone().unwrap_or_default()});
    if name == "failed" {
        let d = &event.detail;
        let zapgate_code =
            d.error_code.clone().unwrap_or_else(|| event.status.map(|s| s.to_string()).unwrap_or_default());
        // Meta's own code when the provider was Meta; else "something went wrong".
        let code = zapgate_code.parse::<u64>().unwrap_or(131000);
        let message = d.reason.clone().unwrap_or_else(|| zapgate_code.clone());
        status["errors"] = json!([{"code": code, "title": zapgate_code, "message": message,
            "error_data": {"details": message}}]);
    }
    Some(status)
}

fn secs(event: &MessageEvent) -> String {
    (event.at.as_millis() / 1000).to_string()
}

const MEDIA_KINDS: [&str; 5] = ["image", "video", "audio", "document", "sticker"];

/// A received message in the Cloud API's inbound shape. Its attachment is
/// named by the facade's numeric media id (`GET /graph/{v}/{id}` finds it).
fn message(event: &MessageEvent, m: &ReceivedMessage, facts: &CloudFacts) -> Option<Map<String, Value>> {
    let id = event.message_id.as_ref()?;
    let mut content = m.content.as_object()?.clone();
    let kind = content.get("type")?.as_str()?.to_owned();
    if MEDIA_KINDS.contains(&kind.as_str())
        && let Some(Value::Object(media)) = content.get_mut(&kind)
    {
        let ours = media.remove("media_id").and_then(|v| v.as_str().and_then(MediaId::parse));
        media.remove("link");
        media.remove("url");
        media.remove("id");
        if let Some(ours) = ours {
            media.insert("id".into(), ours.to_graph().into());
        }
        if let Some((mime, sha)) = &facts.media {
            if let Some(mime) = mime {
                media.insert("mime_type".into(), mime.clone().into());
            }
            if let Some(sha) = sha {
                media.insert("sha256".into(), sha.clone().into());
            }
        }
    }
    let from = cloud_chat(m.sender.as_deref().unwrap_or(&m.chat));
    let mut message = Map::new();
    message.insert("from".into(), from.into());
    message.insert("id".into(), id.to_wamid().into());
    message.insert("timestamp".into(), (m.sent_at.as_millis() / 1000).to_string().into());
    if let Some(ctx) = &m.context_id {
        message.insert("context".into(), json!({"id": ctx}));
    }
    message.extend(content);
    Some(message)
}

/// How long a delivery waits for its received attachment to be fetched, so
/// the receiver can download it at once (it is usually a matter of ms).
const MEDIA_WAIT: Duration = Duration::from_secs(15);

/// Reads the facts of an event's Cloud payload.
pub struct CloudShaper {
    pub store: Arc<dyn Store>,
    pub media: Arc<dyn MediaIndex>,
}

impl CloudShaper {
    pub async fn facts(&self, event: &MessageEvent) -> Result<CloudFacts, String> {
        let instance = self
            .store
            .get_instance(&event.tenant_id, &event.instance_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the instance was deleted")?;
        let mut facts = numbers(&instance);
        match event.event_type {
            EventType::MessageStatus => {
                if let Some(id) = &event.message_id {
                    let m = self.store.get_message(&event.tenant_id, id).await.map_err(|e| e.to_string())?;
                    facts.recipient = m.map(|m| m.to.wa_id());
                }
            }
            EventType::MessageReceived => facts.media = self.media_of(event).await,
            _ => {}
        }
        Ok(facts)
    }

    /// The attachment's MIME type and checksum, waiting a little for the fetch.
    async fn media_of(&self, event: &MessageEvent) -> Option<(Option<String>, Option<String>)> {
        let content = &event.detail.message.as_ref()?.content;
        let kind = content.get("type")?.as_str()?;
        let id = MediaId::parse(content.get(kind)?.get("media_id")?.as_str()?)?;
        let rec = super::media::settled_media(self.media.as_ref(), &event.tenant_id, &id, MEDIA_WAIT).await.ok()??;
        Some((rec.mime_type, rec.sha256))
    }
}

fn numbers(i: &InstanceRecord) -> CloudFacts {
    CloudFacts {
        phone_number_id: i.phone_number_id.clone(),
        waba_id: i.waba_id.clone(),
        display_phone_number: i.phone_number.clone().unwrap_or_default(),
        ..CloudFacts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zapgate_domain::event::StatusDetail;
    use zapgate_domain::{EventId, InstanceId, MessageId, TenantId, Timestamp};

    fn event(kind: EventType, status: MessageStatus, detail: StatusDetail) -> MessageEvent {
        MessageEvent {
            id: EventId::generate(),
            event_type: kind,
            tenant_id: TenantId::generate(),
            message_id: Some(MessageId::generate()),
            instance_id: InstanceId::generate(),
            status: Some(status),
            chat_seq: Some(1),
            seq: 7,
            at: Timestamp::from_millis(1_767_225_600_000),
            detail,
        }
    }

    fn facts() -> CloudFacts {
        CloudFacts {
            phone_number_id: "106540352242922".into(),
            waba_id: "102290129340398".into(),
            display_phone_number: "15550783881".into(),
            recipient: Some("5511999998888".into()),
            media: None,
        }
    }

    #[test]
    fn a_status_has_metas_shape_and_the_facades_message_id() {
        let e = event(EventType::MessageStatus, MessageStatus::Delivered, StatusDetail::default());
        let v = cloud_payload(&e, &facts()).unwrap();
        assert_eq!(v["object"], "whatsapp_business_account");
        assert_eq!(v["entry"][0]["id"], "102290129340398");
        let change = &v["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let value = &change["value"];
        assert_eq!(
            value["metadata"],
            json!({"display_phone_number": "15550783881", "phone_number_id": "106540352242922"})
        );
        assert_eq!(value["contacts"][0]["user_id"], "5511999998888");
        let s = &value["statuses"][0];
        let wamid = e.message_id.as_ref().unwrap().to_wamid();
        assert_eq!(
            *s,
            json!({"id": wamid, "status": "delivered", "timestamp": "1767225600", "recipient_id": "5511999998888"})
        );
    }

    #[test]
    fn a_failure_carries_metas_code_when_there_is_one() {
        let detail = StatusDetail {
            error_code: Some("131026".into()),
            reason: Some("undeliverable".into()),
            ..Default::default()
        };
        let v = cloud_payload(&event(EventType::MessageStatus, MessageStatus::Failed, detail), &facts()).unwrap();
        let s = &v["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!((s["status"].as_str(), s["errors"][0]["code"].as_u64()), (Some("failed"), Some(131026)));
        let detail = StatusDetail { error_code: Some("provider_rejected".into()), ..Default::default() };
        let v = cloud_payload(&event(EventType::MessageStatus, MessageStatus::Dead, detail), &facts()).unwrap();
        assert_eq!(v["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]["code"], 131000);
    }

    #[test]
    fn a_received_attachment_is_named_by_its_numeric_media_id() {
        let media = MediaId::generate();
        let message = ReceivedMessage {
            wa_message_id: "false_5511988887777@c.us_ABC".into(),
            chat: "+5511988887777".into(),
            sender: None,
            sender_name: Some("Ana".into()),
            from_me: false,
            content: json!({"type": "image", "image": {"media_id": media.to_string(), "caption": "olha",
                            "link": "https://provider.example/x.jpg"}}),
            context_id: None,
            sent_at: Timestamp::from_millis(1_767_225_599_000),
        };
        let detail = StatusDetail { message: Some(message), ..Default::default() };
        let e = event(EventType::MessageReceived, MessageStatus::Received, detail);
        let mut f = facts();
        f.media = Some((Some("image/jpeg".into()), Some("ab12".into())));
        let v = cloud_payload(&e, &f).unwrap();
        let value = &v["entry"][0]["changes"][0]["value"];
        assert_eq!(
            value["contacts"][0],
            json!({"wa_id": "5511988887777", "user_id": "5511988887777", "profile": {"name": "Ana"}})
        );
        let m = &value["messages"][0];
        assert_eq!(m["from"], "5511988887777");
        assert_eq!(m["id"], e.message_id.as_ref().unwrap().to_wamid());
        assert_eq!(m["timestamp"], "1767225599");
        assert_eq!(
            m["image"],
            json!({"id": media.to_graph(), "caption": "olha", "mime_type": "image/jpeg", "sha256": "ab12"})
        );
    }

    /// Every field of `theirs` (Meta's example) is in `ours` with the same
    /// JSON type, at the same place; `optional` ones (pricing, …) may be missing.
    fn same_shape(ours: &Value, theirs: &Value, path: &str, optional: &[&str]) {
        match (ours, theirs) {
            (Value::Object(o), Value::Object(t)) => {
                for (k, v) in t {
                    match o.get(k) {
                        Some(mine) => same_shape(mine, v, &format!("{path}.{k}"), optional),
                        None => assert!(optional.contains(&k.as_str()), "{path}.{k} missing from {ours}"),
                    }
                }
            }
            (Value::Array(o), Value::Array(t)) => {
                if let (Some(mine), Some(v)) = (o.first(), t.first()) {
                    same_shape(mine, v, &format!("{path}[0]"), optional);
                }
            }
            (o, t) => assert_eq!(
                std::mem::discriminant(o),
                std::mem::discriminant(t),
                "{path}: {o} is not of the type of Meta's {t}"
            ),
        }
    }

    /// Meta's own webhook examples (kept with the Cloud API adapter's
    /// fixtures): zapgate's payloads have every field they have.
    #[test]
    fn payloads_have_the_shape_of_metas_examples() {
        let fixtures: Value =
            serde_json::from_str(include_str!("../../../zapgate-providers/fixtures/cloud_api/webhooks.json")).unwrap();
        let example = |prefix: &str| {
            let case =
                fixtures["cases"].as_array().unwrap().iter().find(|c| c["name"].as_str().unwrap().starts_with(prefix));
            case.unwrap()["body"].clone()
        };
        let delivered = cloud_payload(
            &event(EventType::MessageStatus, MessageStatus::Delivered, StatusDetail::default()),
            &facts(),
        );
        same_shape(&delivered.unwrap(), &example("status delivered"), "", &["conversation", "pricing"]);
        let detail = StatusDetail {
            error_code: Some("131026".into()),
            reason: Some("undeliverable".into()),
            ..Default::default()
        };
        let failed = cloud_payload(&event(EventType::MessageStatus, MessageStatus::Failed, detail), &facts());
        same_shape(&failed.unwrap(), &example("status failed"), "", &["href"]);
        let message = ReceivedMessage {
            wa_message_id: "wamid.X".into(),
            chat: "+16505551234".into(),
            sender: None,
            sender_name: Some("Sheena Nelson".into()),
            from_me: false,
            content: json!({"type": "text", "text": {"body": "Does it come in another color?"}}),
            context_id: None,
            sent_at: Timestamp::from_millis(1_749_416_383_000),
        };
        let detail = StatusDetail { message: Some(message), ..Default::default() };
        let text = cloud_payload(&event(EventType::MessageReceived, MessageStatus::Received, detail), &facts());
        same_shape(&text.unwrap(), &example("text"), "", &[]);
    }

    #[test]
    fn events_without_a_cloud_webhook_have_no_payload() {
        let e = event(EventType::InstanceStatus, MessageStatus::Sent, StatusDetail::default());
        assert!(cloud_payload(&e, &facts()).is_none());
        let e = event(EventType::MessageStatus, MessageStatus::Queued, StatusDetail::default());
        assert!(cloud_payload(&e, &facts()).is_none());
    }
}
