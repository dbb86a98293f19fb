//! WhatsApp → Chatwoot: what a Chatwoot integration's webhook endpoint
//! (format `chatwoot`, made with the integration) does with each event it is
//! owed, in place of an HTTP POST. Deliveries bring their retries, dead
//! letters and replays with them.
//!
//! - A received message is posted to the contact's conversation in the
//!   integration's inbox (`incoming`; `outgoing` when it was sent from the
//!   number's own phone), with its attachment. The contact and conversation
//!   are found or made once per chat under a lock on (integration, chat), so
//!   two first messages of a new contact arriving together make one
//!   conversation; the pair is then kept (`chatwoot_contacts`).
//! - A failed message becomes a private note in its conversation.
//!
//! Everything zapgate posts carries `source_id: "zapgate:…"`: Chatwoot's
//! webhook for it comes back and is recognised, so nothing loops.

use super::OWN_SOURCE_PREFIX;
use super::api::{ApiError, Client, File};
use crate::egress::Egress;
use crate::worker::media::settled_media;
use std::sync::Arc;
use std::time::Duration;
use zapgate_backends::locks::acquire_waiting;
use zapgate_backends::{
    ChatwootContact, ChatwootStore, DeliveryJob, Locks, MediaIndex, MediaStatus, MediaStore, Store,
};
use zapgate_domain::event::ReceivedMessage;
use zapgate_domain::{ChatId, EventType, IntegrationId, MediaId, MessageEvent};

/// How long the lock on one chat's contact is held at most: longer than the
/// four API calls making a contact can take (15 s each), so it never runs
/// out under a live holder.
const CONTACT_LOCK_TTL: Duration = Duration::from_secs(90);
/// How long a delivery waits for its attachment to be fetched before retrying.
const MEDIA_WAIT: Duration = Duration::from_secs(15);

pub struct Forwarder {
    pub integrations: Arc<dyn ChatwootStore>,
    /// Reads a failed message's recipient.
    pub messages: Arc<dyn Store>,
    pub media_index: Arc<dyn MediaIndex>,
    pub media: Arc<dyn MediaStore>,
    pub locks: Arc<dyn Locks>,
    pub egress: Egress,
}

/// A failed delivery: why, and whether a retry may help.
pub type Failure = (String, bool);

fn from_api(e: ApiError) -> Failure {
    (e.message, e.retryable)
}

/// The integration an endpoint belongs to: they share their UUID.
pub fn integration_of(endpoint: &zapgate_domain::EndpointId) -> IntegrationId {
    let uuid = &endpoint.as_str()[zapgate_domain::EndpointId::PREFIX.len()..];
    IntegrationId::from_trusted(format!("{}{uuid}", IntegrationId::PREFIX))
}

/// The endpoint an integration's events are delivered through.
pub fn endpoint_of(integration: &IntegrationId) -> zapgate_domain::EndpointId {
    let uuid = &integration.as_str()[IntegrationId::PREFIX.len()..];
    zapgate_domain::EndpointId::from_trusted(format!("{}{uuid}", zapgate_domain::EndpointId::PREFIX))
}

impl Forwarder {
    /// Carries out one delivery; the HTTP status of Chatwoot's last answer
    /// (204 when there was nothing to post).
    pub async fn deliver(&self, job: &DeliveryJob) -> Result<u16, Failure> {
        let id = integration_of(&job.endpoint_id);
        let integration = self
            .integrations
            .integration(&id)
            .await
            .map_err(|e| (e.to_string(), true))?
            .ok_or_else(|| ("the Chatwoot integration was deleted".to_owned(), false))?;
        let client = Client { egress: &self.egress, integration: &integration };
        match job.event.event_type {
            EventType::MessageReceived => self.received(&client, &job.event).await,
            EventType::MessageStatus => self.failure_note(&client, &job.event).await,
            other => Err((format!("Chatwoot integrations take no {} events", other.as_str()), false)),
        }
    }

    async fn received(&self, client: &Client<'_>, event: &MessageEvent) -> Result<u16, Failure> {
        let m = event.detail.message.as_ref().ok_or(("the event has no message".to_owned(), false))?;
        let chat = ChatId::parse(&m.chat).map_err(|e| (e.to_string(), false))?;
        if !matches!(chat, ChatId::Phone(_)) {
            // Chatwoot contacts are people with a number: groups are not mirrored.
            return Ok(204);
        }
        let contact = self.contact(client, &chat, m.sender_name.as_deref()).await?;
        let source_id = format!("{OWN_SOURCE_PREFIX}{}", event.message_id.as_ref().map(|i| i.as_str()).unwrap_or(""));
        // Posted already by an attempt whose answer was lost (or whose lease
        // ran out while it worked): one GET, never a second message.
        if client.has_message(contact.conversation_id, &source_id).await.map_err(from_api)? {
            return Ok(200);
        }
        let files = self.files(event, m).await?;
        let kind = if m.from_me { "outgoing" } else { "incoming" };
        let text = text_of(m);
        let posted = client.post_message(contact.conversation_id, kind, false, &text, &source_id, files).await;
        match posted {
            // The conversation was deleted in Chatwoot: open a new one next time.
            Err(e) if e.status == Some(404) => {
                self.open_conversation(client, contact).await?;
                Err((e.message, true))
            }
            other => other.map_err(from_api),
        }
    }

    /// The chat's contact and conversation, found or made under the chat's lock.
    async fn contact(
        &self,
        client: &Client<'_>,
        chat: &ChatId,
        name: Option<&str>,
    ) -> Result<ChatwootContact, Failure> {
        let integration = &client.integration.id;
        let key = chat.key();
        if let Some(c) =
            self.integrations.chatwoot_contact(integration, &key).await.map_err(|e| (e.to_string(), true))?
        {
            return Ok(c);
        }
        let lock = format!("chatwoot-contact:{integration}:{key}");
        let waited = acquire_waiting(self.locks.as_ref(), &lock, CONTACT_LOCK_TTL, Some(CONTACT_LOCK_TTL)).await;
        let Some(token) = waited else {
            return Err(("another worker is still making this chat's contact".into(), true));
        };
        let made = self.make_contact(client, chat, name).await;
        self.locks.release(&lock, token).await;
        made
    }

    async fn make_contact(
        &self,
        client: &Client<'_>,
        chat: &ChatId,
        name: Option<&str>,
    ) -> Result<ChatwootContact, Failure> {
        let integration = &client.integration.id;
        let key = chat.key();
        // Made by whoever held the lock before us?
        if let Some(c) =
            self.integrations.chatwoot_contact(integration, &key).await.map_err(|e| (e.to_string(), true))?
        {
            return Ok(c);
        }
        let phone = format!("+{}", chat.wa_id());
        let source = key.clone();
        let (contact_id, source_id) = match client.find_contact(&phone).await.map_err(from_api)? {
            Some((id, Some(source))) => (id, source),
            Some((id, None)) => (id, client.add_to_inbox(id, &source).await.map_err(from_api)?),
            None => client.create_contact(&phone, name.unwrap_or(&phone), &source).await.map_err(from_api)?,
        };
        // An open one first: a crash after creating it must not open another.
        let conversation_id = match client.open_conversation(contact_id).await.map_err(from_api)? {
            Some(id) => id,
            None => client.create_conversation(contact_id, &source_id).await.map_err(from_api)?,
        };
        let c = ChatwootContact { chat: key, contact_id, source_id, conversation_id };
        self.integrations.save_chatwoot_contact(integration, c.clone()).await.map_err(|e| (e.to_string(), true))?;
        Ok(c)
    }

    async fn open_conversation(&self, client: &Client<'_>, mut c: ChatwootContact) -> Result<(), Failure> {
        c.conversation_id = client.create_conversation(c.contact_id, &c.source_id).await.map_err(from_api)?;
        self.integrations.save_chatwoot_contact(&client.integration.id, c).await.map_err(|e| (e.to_string(), true))
    }

    /// The message's attachment, once fetched (a retry while it is pending).
    async fn files(&self, event: &MessageEvent, m: &ReceivedMessage) -> Result<Vec<File>, Failure> {
        let kind = m.content["type"].as_str().unwrap_or_default();
        let Some(id) = m.content[kind]["media_id"].as_str().and_then(MediaId::parse) else { return Ok(Vec::new()) };
        let settled = settled_media(self.media_index.as_ref(), &event.tenant_id, &id, MEDIA_WAIT).await;
        let rec = match settled.map_err(|e| (e.to_string(), true))? {
            Some(r) if r.status == MediaStatus::Pending => {
                return Err(("the attachment is still being fetched".into(), true));
            }
            Some(r) if r.status == MediaStatus::Stored => r,
            // Could not be fetched (or was purged): the text goes alone.
            _ => return Ok(Vec::new()),
        };
        let bytes = self.media.get(id.as_str()).await.map_err(|e| (format!("reading the attachment: {e}"), true))?;
        let Some(bytes) = bytes else { return Ok(Vec::new()) };
        let mime = rec.mime_type.unwrap_or_else(|| "application/octet-stream".into());
        let name = rec.filename.unwrap_or_else(|| format!("{kind}.{}", extension(&mime)));
        Ok(vec![File { name, mime, bytes }])
    }

    /// A message zapgate could not deliver, as a private note in the
    /// conversation it came from, else the recipient's conversation in the
    /// inbox (a message sent another way, or an attachment after the first).
    async fn failure_note(&self, client: &Client<'_>, event: &MessageEvent) -> Result<u16, Failure> {
        let Some(message) = &event.message_id else { return Ok(204) };
        let hiccup = |e: zapgate_backends::StoreError| (e.to_string(), true);
        let from_job = self.integrations.chatwoot_job_of_message(message).await.map_err(hiccup)?;
        let mut conversation = from_job
            .filter(|j| j.integration_id == client.integration.id)
            .and_then(|j| j.payload["conversation_id"].as_u64());
        if conversation.is_none()
            && let Some(sent) = self.messages.get_message(&event.tenant_id, message).await.map_err(hiccup)?
        {
            let mapped = self.integrations.chatwoot_contact(&client.integration.id, &sent.to.key()).await;
            conversation = mapped.map_err(hiccup)?.map(|c| c.conversation_id);
        }
        // Nobody in this inbox to tell.
        let Some(conversation) = conversation else { return Ok(204) };
        let why =
            event.detail.reason.clone().or(event.detail.error_code.clone()).unwrap_or_else(|| "unknown error".into());
        let status = event.status.map(|s| s.to_string()).unwrap_or_default();
        let note = format!("⚠️ zapgate could not deliver this message to WhatsApp ({status}): {why}");
        let source_id = format!("{OWN_SOURCE_PREFIX}note:{}", event.id);
        client.post_message(conversation, "outgoing", true, &note, &source_id, Vec::new()).await.map_err(from_api)
    }
}

/// What Chatwoot shows as the message's text.
fn text_of(m: &ReceivedMessage) -> String {
    let c = &m.content;
    let kind = c["type"].as_str().unwrap_or_default();
    match kind {
        "text" => c["text"]["body"].as_str().unwrap_or_default().to_owned(),
        "location" => {
            let l = &c["location"];
            let name = l["name"].as_str().map(|n| format!("{n} ")).unwrap_or_default();
            format!("📍 {name}({}, {})", l["latitude"], l["longitude"])
        }
        "reaction" => format!("{} (reaction)", c["reaction"]["emoji"].as_str().unwrap_or_default()),
        _ => c[kind]["caption"].as_str().unwrap_or_default().to_owned(),
    }
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "audio/ogg" | "audio/ogg; codecs=opus" => "ogg",
        "audio/mpeg" => "mp3",
        "video/mp4" => "mp4",
        "application/pdf" => "pdf",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integration_and_its_endpoint_share_their_uuid() {
        let i = IntegrationId::generate();
        let e = endpoint_of(&i);
        assert!(e.as_str().starts_with("whk_"));
        assert_eq!(zapgate_domain::EndpointId::parse(e.as_str()), Some(e.clone()));
        assert_eq!(integration_of(&e), i);
    }

    #[test]
    fn every_kind_has_a_text_for_chatwoot() {
        let m = |content: serde_json::Value| ReceivedMessage {
            wa_message_id: "x".into(),
            chat: "+5511988887777".into(),
            sender: None,
            sender_name: None,
            from_me: false,
            content,
            context_id: None,
            sent_at: zapgate_domain::Timestamp::from_millis(0),
        };
        assert_eq!(text_of(&m(serde_json::json!({"type": "text", "text": {"body": "oi"}}))), "oi");
        let photo = serde_json::json!({"type": "image", "image": {"caption": "olha", "media_id": "med_x"}});
        assert_eq!(text_of(&m(photo)), "olha");
        let place =
            serde_json::json!({"type": "location", "location": {"latitude": -23.5, "longitude": -46.6, "name": "Sé"}});
        assert_eq!(text_of(&m(place)), "📍 Sé (-23.5, -46.6)");
    }
}
