//! WAHA adapter (WhatsApp HTTP API; seed 002's pools): `POST
//! {base_url}/api/sendText` (and `sendImage`, `sendVideo`, `sendFile`) with
//! the `X-Api-Key` header and the session in the body. Shapes from
//! devlikeapro/waha-docs' OpenAPI (WAHA 2026.7.1), see
//! `../shared/notes/provider-shapes.md` §3 and `fixtures/waha/`.
//!
//! The send answer depends on the engine (maintainer, waha#760): a WAMessage
//! with a string `id`, a whatsapp-web.js message (`id._serialized`), or a
//! Baileys message (`key.id`); all three are read. An empty 201 (seen in one
//! WEBJS release) still means sent: the id is then `waha:<zapgate id>`.
//!
//! Errors: 422 (session not WORKING), 401 and 5xx are retried (spending
//! attempts); 429 waits; 400 and 404 (no such session) fail the message.
//!
//! Webhooks (`parse_webhook`): the envelope `{"event","session","payload",
//! "engine",…}`, signed with `X-Webhook-Hmac` (HMAC-SHA512 of the body) when
//! the session was created with `hmac.key`; `create_session` registers
//! zapgate's URL for `message`, `message.ack` and `session.status`.
//! WAHA names messages `{fromMe}_{chat}_{id}[_{participant}]`:
//! - an inbound `message`'s `wa_message_id` is the bare WhatsApp id (`{id}`),
//!   the same whatever the engine or the chat's spelling (`@c.us`, `@lid`);
//! - a `message.ack` names the message in the form [`message_id`] kept from
//!   the same engine's send answer, so the status finds the sent message:
//!   the serialized id as given (WEBJS `id._serialized`, the OpenAPI
//!   WAMessage `id`), but the bare id for NOWEB (its answer is Baileys'
//!   `key.id`). The envelope's `engine` says which.

use crate::inbound::{
    InboundMedia, InboundMessage, MediaSource, ProviderEvent, ProviderEventKind, WebhookAuth, WebhookError,
    unix_seconds,
};
use crate::{Connection, ConnectionState, OutboundMessage, Provider, ProviderError, Qr, SendAccepted, StatusReport};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_domain::{ChatId, MessageContent, MessageStatus, Timestamp};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WahaConfig {
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    /// The WAHA session name (e.g. `default`).
    pub session: String,
}

pub struct Waha {
    http: reqwest::Client,
}

impl Waha {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// A request to `{base_url}/{segments…}?{query}` with the key.
    fn request(
        &self,
        cfg: &WahaConfig,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let req = self.http.request(method, crate::http::url(&cfg.base_url, segments, query)?);
        Ok(match &cfg.api_key {
            Some(k) => req.header("X-Api-Key", k),
            None => req,
        })
    }
}

/// A pool's settings (no session) read as an instance's.
fn settings_with_session(pool: &Value) -> Result<WahaConfig, ProviderError> {
    settings(&zapgate_domain::json::merged(&json!({"session": ""}), pool))
}

fn settings(config: &Value) -> Result<WahaConfig, ProviderError> {
    serde_json::from_value(config.clone()).map_err(|e| ProviderError::Rejected {
        code: "bad_config".into(),
        message: format!("the instance's WAHA settings are invalid: {e}"),
    })
}

/// The error an unsuccessful answer means.
fn failure(answer: &crate::http::Answer) -> ProviderError {
    let json = answer.json();
    let detail = json
        .get("message")
        .or_else(|| json.get("error"))
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    classify_status(answer.status, detail, answer.retry_after)
}

/// The instance's settings, normalised. `webhook` (zapgate's own, added
/// when it creates the session) is not a setting: accepted and dropped.
pub fn check_config(config: &Value) -> Result<Value, String> {
    let (config, _) = without_webhook(config);
    let mut c: WahaConfig = serde_json::from_value(config).map_err(|e| format!("config: {e}"))?;
    if c.session.trim().is_empty() {
        return Err("config.session is required".into());
    }
    c.base_url = c.base_url.trim_end_matches('/').to_owned();
    Ok(serde_json::to_value(c).expect("serialisable"))
}

/// WAHA's session status as a connection state.
pub fn connection_state(status: &str) -> ConnectionState {
    match status {
        "WORKING" => ConnectionState::Connected,
        "SCAN_QR_CODE" => ConnectionState::WaitingForQr,
        "STARTING" => ConnectionState::Connecting,
        "FAILED" => ConnectionState::Failed,
        _ => ConnectionState::Disconnected,
    }
}

fn mimetype(link: &str, fallback: &str) -> String {
    let ext = link.rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
    let known = match ext.split(['?', '#']).next().unwrap_or_default() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "pdf" => "application/pdf",
        "ogg" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        _ => fallback,
    };
    known.to_owned()
}

/// How WAHA names a chat: `{digits}@c.us` for a phone, the JID otherwise.
fn chat_id(chat: &ChatId) -> String {
    match chat {
        ChatId::Phone(d) => format!("{d}@c.us"),
        other => other.key(),
    }
}

/// The route and body WAHA expects for one message.
pub fn request(session: &str, msg: &OutboundMessage) -> Result<(&'static str, Value), ProviderError> {
    let chat_id = chat_id(&msg.to);
    let file = |link: &str, filename: &Option<String>, fallback: &str| {
        let mut f = json!({"url": link, "mimetype": mimetype(link, fallback)});
        if let Some(n) = filename {
            f["filename"] = json!(n);
        }
        f
    };
    let with_caption = |mut body: Value, caption: &Option<String>| {
        if let Some(c) = caption {
            body["caption"] = json!(c);
        }
        body
    };
    let (route, mut body) = match &msg.content {
        MessageContent::Text { text } => (
            "sendText",
            json!({"session": session, "chatId": chat_id, "text": text.body, "linkPreview": text.preview_url}),
        ),
        MessageContent::Image { image: m } => (
            "sendImage",
            with_caption(
                json!({"session": session, "chatId": chat_id, "file": file(&m.link, &m.filename, "image/jpeg")}),
                &m.caption,
            ),
        ),
        MessageContent::Video { video: m } => (
            "sendVideo",
            with_caption(
                json!({"session": session, "chatId": chat_id, "file": file(&m.link, &m.filename, "video/mp4")}),
                &m.caption,
            ),
        ),
        MessageContent::Document { document: m } | MessageContent::Audio { audio: m } => (
            "sendFile",
            with_caption(
                json!({"session": session, "chatId": chat_id, "file": file(&m.link, &m.filename, "application/octet-stream")}),
                &m.caption,
            ),
        ),
        MessageContent::Location { location: l } => {
            let mut body =
                json!({"session": session, "chatId": chat_id, "latitude": l.latitude, "longitude": l.longitude});
            if let Some(title) = l.name.as_ref().or(l.address.as_ref()) {
                body["title"] = json!(title);
            }
            ("sendLocation", body)
        }
        // `PUT /api/reaction` (see `send`), on a received message.
        MessageContent::Reaction { reaction: r } => {
            let message_id = full_message_id(&r.message_id, r.from_me, &chat_id);
            ("reaction", json!({"session": session, "messageId": message_id, "reaction": r.emoji}))
        }
        other => {
            return Err(ProviderError::Rejected {
                code: "unsupported_message".into(),
                message: format!("WAHA instances cannot send {} messages", other.kind()),
            });
        }
    };
    if let Some(q) = msg.reply_to.as_ref().filter(|_| route != "reaction") {
        body["reply_to"] = json!(full_message_id(&q.id, q.from_me, &chat_id));
    }
    Ok((route, body))
}

/// WAHA names a message `{fromMe}_{chat}_{id}`; a full id passes as given.
fn full_message_id(id: &str, from_me: bool, chat_id: &str) -> String {
    if id.contains('_') { id.to_owned() } else { format!("{from_me}_{chat_id}_{id}") }
}

/// The message id in any of the engines' answers.
pub fn message_id(answer: &Value) -> Option<String> {
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| answer["id"]["_serialized"].as_str().map(str::to_owned))
        .or_else(|| answer["key"]["id"].as_str().map(str::to_owned))
}

/// The events zapgate subscribes its webhook to.
pub const WEBHOOK_EVENTS: [&str; 3] = ["message", "message.ack", "session.status"];

/// The instance's settings without the `webhook` zapgate adds when it creates
/// the session, and that webhook's URL and secret.
fn without_webhook(config: &Value) -> (Value, Option<(String, String)>) {
    let mut config = config.clone();
    let hook = config.as_object_mut().and_then(|o| o.remove("webhook"));
    let hook = hook.and_then(|h| Some((h["url"].as_str()?.to_owned(), h["secret"].as_str()?.to_owned())));
    (config, hook)
}

/// `POST /api/sessions`'s body: the session, started, with zapgate's webhook
/// (`url`, HMAC `secret`) when given.
pub fn create_body(session: &str, webhook: Option<(&str, &str)>) -> Value {
    let mut body = json!({"name": session, "start": true});
    if let Some((url, secret)) = webhook {
        body["config"] = json!({"webhooks": [{"url": url, "events": WEBHOOK_EVENTS, "hmac": {"key": secret}}]});
    }
    body
}

/// WhatsApp's own id of a message out of WAHA's serialized form
/// `{fromMe}_{chat}_{id}[_{participant}]`; any other id as it is.
pub fn whatsapp_id(serialized: &str) -> &str {
    let mut parts = serialized.splitn(4, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("true" | "false"), Some(_), Some(id)) if !id.is_empty() => id,
        _ => serialized,
    }
}

/// How WAHA names the instance in its webhooks: its `session` (instances
/// on a pool carry only that setting).
pub fn webhook_instance(config: &Value) -> Option<String> {
    config["session"].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// A message id as WAHA writes it in a payload: a string, or (whatsapp-web.js
/// objects) `{"_serialized": …}`.
fn serialized_id(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["_serialized"].as_str()).filter(|s| !s.is_empty())
}

/// The id a `message.ack` names its message by: the form [`message_id`]
/// keeps from the same engine's send answer (see the module's notes).
fn status_message_id(engine: Option<&str>, id: &str) -> String {
    match engine {
        Some(e) if e.eq_ignore_ascii_case("NOWEB") => whatsapp_id(id).to_owned(),
        _ => id.to_owned(),
    }
}

fn malformed(why: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(why.into())
}

/// A time in seconds or milliseconds, also fractional (`1710481111.853`).
fn time_of(v: &Value) -> Option<Timestamp> {
    unix_seconds(v).or_else(|| v.as_f64().and_then(|f| unix_seconds(&json!(f as i64))))
}

/// The Cloud API's media kind for a MIME type.
fn media_kind(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or_default() {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ => "document",
    }
}

/// Media content in the Cloud API's shape (`caption` except on audio, `filename` on documents).
fn media_content(kind: &str, mime: Option<&str>, caption: Option<&str>, filename: Option<&str>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(mime) = mime {
        m.insert("mime_type".into(), json!(mime));
    }
    if let Some(c) = caption.filter(|c| !c.is_empty() && kind != "audio") {
        m.insert("caption".into(), json!(c));
    }
    if let Some(f) = filename.filter(|f| !f.is_empty() && kind == "document") {
        m.insert("filename".into(), json!(f));
    }
    json!({"type": kind, kind: m})
}

fn unsupported(provider_type: &str) -> Value {
    json!({"type": "unsupported", "unsupported": {"provider_type": provider_type}})
}

/// What a non-media message is when it is not text: WEBJS's `_data.type`
/// (`chat` is text), NOWEB's Baileys message kind, or WAHA's own fields.
fn other_kind(p: &Value) -> Option<String> {
    if let Some(t) = p["_data"]["type"].as_str() {
        return (t != "chat").then(|| t.to_owned());
    }
    if let Some(m) = p["_data"]["message"].as_object() {
        let text = ["conversation", "extendedTextMessage", "messageContextInfo"];
        if let Some(k) = m.keys().find(|k| !text.contains(&k.as_str())) {
            return Some(k.clone());
        }
    }
    if p["location"].is_object() {
        return Some("location".into());
    }
    p["vCards"].as_array().is_some_and(|v| !v.is_empty()).then(|| "vcard".into())
}

/// A `message` / `message.any` payload; None for chats zapgate cannot
/// address (`status@broadcast`, newsletters).
fn inbound_message(p: &Value, fallback_at: Timestamp) -> Result<Option<InboundMessage>, WebhookError> {
    let id = serialized_id(&p["id"]).ok_or_else(|| malformed("a WAHA message without payload.id"))?;
    let from_me = p["fromMe"].as_bool().unwrap_or(false);
    let chat = if from_me { &p["to"] } else { &p["from"] };
    let Some(chat) = chat.as_str().and_then(|c| ChatId::parse(c).ok()) else { return Ok(None) };
    let sender = match chat {
        ChatId::Group(_) => p["participant"].as_str().or(p["author"].as_str()).and_then(|s| ChatId::parse(s).ok()),
        _ => None,
    };
    let sender_name = [&p["_data"]["notifyName"], &p["_data"]["pushName"], &p["_data"]["Info"]["PushName"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|n| !n.is_empty()))
        .map(str::to_owned);
    let body = p["body"].as_str().filter(|b| !b.is_empty());
    let (content, media) = if p["hasMedia"].as_bool() == Some(true) {
        let m = &p["media"];
        let mime = m["mimetype"].as_str().filter(|s| !s.is_empty());
        let filename = m["filename"].as_str().filter(|s| !s.is_empty());
        let content = media_content(mime.map_or("document", media_kind), mime, body, filename);
        let media = m["url"].as_str().filter(|u| !u.is_empty()).map(|url| InboundMedia {
            source: MediaSource::Url(url.to_owned()),
            mime_type: mime.map(str::to_owned),
            sha256: None,
            filename: filename.map(str::to_owned),
        });
        (content, media)
    } else {
        match (other_kind(p), body) {
            (None, Some(text)) => (json!({"type": "text", "text": {"body": text}}), None),
            (kind, _) => (unsupported(kind.as_deref().unwrap_or("unknown")), None),
        }
    };
    let reply = &p["replyTo"];
    let context_id = serialized_id(reply)
        .or_else(|| serialized_id(&reply["id"]))
        .or_else(|| p["_data"]["quotedStanzaID"].as_str())
        .map(|id| whatsapp_id(id).to_owned());
    Ok(Some(InboundMessage {
        wa_message_id: whatsapp_id(id).to_owned(),
        chat,
        sender,
        sender_name,
        from_me,
        content,
        media,
        context_id,
        at: time_of(&p["timestamp"]).unwrap_or(fallback_at),
    }))
}

/// A `message.ack` payload; None for acks zapgate has no status for
/// (PENDING) and receipts of messages it did not send.
fn ack(p: &Value, engine: Option<&str>, at: Timestamp) -> Result<Option<StatusReport>, WebhookError> {
    let id = serialized_id(&p["id"]).ok_or_else(|| malformed("a WAHA ack without payload.id"))?;
    if p["fromMe"].as_bool() == Some(false) {
        return Ok(None);
    }
    let code = p["ack"].as_i64().or_else(|| match p["ackName"].as_str()? {
        "ERROR" => Some(-1),
        "PENDING" => Some(0),
        "SERVER" => Some(1),
        "DEVICE" => Some(2),
        "READ" => Some(3),
        "PLAYED" => Some(4),
        _ => None,
    });
    let Some(code) = code else { return Err(malformed("a WAHA ack without ack or ackName")) };
    let status = match code {
        -1 => MessageStatus::Failed,
        1 => MessageStatus::Sent,
        2 => MessageStatus::Delivered,
        3 => MessageStatus::Read,
        4 => MessageStatus::Played,
        _ => return Ok(None),
    };
    let failed = status == MessageStatus::Failed;
    Ok(Some(StatusReport {
        provider_message_id: status_message_id(engine, id),
        status,
        at,
        error_code: failed.then(|| "waha_ack_error".to_owned()),
        error_message: failed.then(|| "WAHA reported the message as ERROR (ack -1)".to_owned()),
    }))
}

/// The events in one WAHA webhook body (one event per POST).
pub fn parse_webhook(body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let event = v["event"].as_str().ok_or_else(|| malformed("a WAHA webhook without event"))?;
    let session = v["session"].as_str().ok_or_else(|| malformed("a WAHA webhook without session"))?;
    let payload = &v["payload"];
    let known = ["message", "message.any", "message.ack", "session.status"];
    if known.contains(&event) && !payload.is_object() {
        return Err(malformed(format!("a WAHA {event} event without a payload object")));
    }
    // The event's time: the envelope's (milliseconds), else now.
    let at = time_of(&v["timestamp"]).unwrap_or_else(Timestamp::now);
    let kind = match event {
        "message" | "message.any" => inbound_message(payload, at)?.map(ProviderEventKind::Message),
        "message.ack" => ack(payload, v["engine"].as_str(), at)?.map(ProviderEventKind::Status),
        "session.status" => {
            let status = payload["status"].as_str().ok_or_else(|| malformed("a WAHA session.status without status"))?;
            Some(ProviderEventKind::Connection { state: connection_state(status), reason: None })
        }
        _ => None,
    };
    Ok(kind.map(|kind| ProviderEvent { instance: session.to_owned(), kind }).into_iter().collect())
}

/// Test helper: an event as JSON, for fixtures to state what they expect.
#[cfg(test)]
pub(crate) fn event_json(e: &ProviderEvent) -> Value {
    let kind = match &e.kind {
        ProviderEventKind::Status(r) => json!({"status": {
            "id": r.provider_message_id, "status": r.status, "at": r.at.as_millis(),
            "error_code": r.error_code, "error_message": r.error_message}}),
        ProviderEventKind::Message(m) => json!({"message": {
            "id": m.wa_message_id, "chat": m.chat.key(), "sender": m.sender.as_ref().map(ChatId::key),
            "sender_name": m.sender_name, "from_me": m.from_me, "content": m.content,
            "media": m.media.as_ref().map(|media| json!({
                "source": match &media.source {
                    MediaSource::Url(u) => json!({"url": u}),
                    MediaSource::CloudMediaId(id) => json!({"cloud_media_id": id}),
                    MediaSource::Base64(b) => json!({"base64": b}),
                },
                "mime_type": media.mime_type, "sha256": media.sha256, "filename": media.filename})),
            "context_id": m.context_id, "at": m.at.as_millis()}}),
        ProviderEventKind::Connection { state, reason } => json!({"connection": {"state": state, "reason": reason}}),
        ProviderEventKind::Qr { raw } => json!({"qr": {"raw": raw}}),
    };
    json!({"instance": e.instance, "event": kind})
}

pub fn classify_status(status: u16, message: String, retry_after: Option<Duration>) -> ProviderError {
    crate::http::classify_status("waha", status, message, retry_after, &[401, 422])
}

#[async_trait]
impl Provider for Waha {
    fn media_fetch(&self, config: &Value, source: &crate::MediaSource) -> Option<crate::MediaFetch> {
        media_fetch(config, source)
    }

    fn kind(&self) -> &'static str {
        "waha"
    }

    fn pace(&self) -> Option<crate::Pace> {
        Some(crate::BAILEYS_PACE)
    }

    /// On a pool server the instance is named by its zapgate id.
    fn placed_config(&self, id: &zapgate_domain::InstanceId) -> Option<Value> {
        Some(serde_json::json!({ "session": id.as_str() }))
    }

    fn check_config(&self, config: &Value) -> Result<Value, String> {
        check_config(config)
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg = settings(&msg.config)?;
        let (route, body) = request(&cfg.session, msg)?;
        let method = if route == "reaction" { Method::PUT } else { Method::POST };
        let answer = crate::http::send(self.request(&cfg, method, &["api", route], &[])?.json(&body)).await?;
        if answer.ok() {
            let id = message_id(&answer.json()).unwrap_or_else(|| format!("waha:{}", msg.message_id));
            let wa_id = msg.to.e164().map(|e| e[1..].to_owned());
            return Ok(SendAccepted { provider_message_id: id, wa_id });
        }
        Err(failure(&answer))
    }

    /// The session list answers for any server and key (`GET /api/sessions`).
    async fn check_server(&self, settings: &Value) -> Result<(), ProviderError> {
        let cfg = settings_with_session(settings)?;
        let answer = crate::http::send(self.request(&cfg, Method::GET, &["api", "sessions"], &[])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// With `config.webhook` (`{"url","secret"}`), the session posts its
    /// events there, signed with the secret. A session that exists already
    /// keeps the webhooks it has.
    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let (config, webhook) = without_webhook(config);
        let cfg = settings(&config)?;
        let body = create_body(&cfg.session, webhook.as_ref().map(|(u, s)| (u.as_str(), s.as_str())));
        let answer =
            crate::http::send(self.request(&cfg, Method::POST, &["api", "sessions"], &[])?.json(&body)).await?;
        let exists = answer.status == 422 && failure(&answer).to_string().contains("already exists");
        if answer.ok() || exists { Ok(None) } else { Err(failure(&answer)) }
    }

    fn webhook_auth(&self) -> Option<WebhookAuth> {
        Some(WebhookAuth::WahaHmac)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
        parse_webhook(body)
    }

    /// The `session` setting (instances on a pool carry only that).
    fn webhook_instance(&self, config: &Value) -> Option<String> {
        webhook_instance(config)
    }

    fn watch_connection(&self) -> bool {
        true
    }

    async fn connection(&self, config: &Value) -> Result<Option<Connection>, ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::GET, &["api", "sessions", &cfg.session], &[])?).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        let phone = json["me"]["id"].as_str().and_then(|id| id.split('@').next()).map(str::to_owned);
        Ok(Some(Connection { state: connection_state(json["status"].as_str().unwrap_or_default()), phone }))
    }

    async fn qr(&self, config: &Value) -> Result<Qr, ProviderError> {
        let cfg = settings(config)?;
        let path = ["api", cfg.session.as_str(), "auth", "qr"];
        let raw = crate::http::send(self.request(&cfg, Method::GET, &path, &[("format", "raw")])?).await?;
        if raw.status == 422 {
            return Err(ProviderError::Rejected {
                code: "not_waiting_for_qr".into(),
                message: failure(&raw).to_string(),
            });
        }
        if !raw.ok() {
            return Err(failure(&raw));
        }
        let raw = raw.json()["value"].as_str().map(str::to_owned).ok_or_else(|| ProviderError::Unavailable {
            code: "waha_bad_answer".into(),
            message: "the QR answer has no value".into(),
            retry_after: None,
        })?;
        let image = self.request(&cfg, Method::GET, &path, &[("format", "image")])?.header("Accept", "image/png");
        let png = crate::http::send(image).await?;
        if !png.ok() {
            return Err(failure(&png));
        }
        Ok(Qr { raw: Some(raw), png: png.body })
    }

    /// `POST /api/sendSeen {"session","chatId","messageIds"}` (the received
    /// message as WAHA names it, `false_{chat}_{id}`).
    async fn mark_read(&self, config: &Value, chat: &ChatId, wa_message_id: &str) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let chat_id = chat_id(chat);
        let id = if wa_message_id.contains('_') {
            wa_message_id.to_owned()
        } else {
            format!("false_{chat_id}_{wa_message_id}")
        };
        let body = json!({"session": cfg.session, "chatId": chat_id, "messageIds": [id]});
        let answer =
            crate::http::send(self.request(&cfg, Method::POST, &["api", "sendSeen"], &[])?.json(&body)).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// `POST /api/{s}/auth/request-code {"phoneNumber"}` → `{"code"}`; 422
    /// when the session is not waiting for a scan.
    async fn pairing_code(&self, config: &Value, phone: &str) -> Result<String, ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::POST, &["api", &cfg.session, "auth", "request-code"], &[])?;
        let answer = crate::http::send(req.json(&json!({"phoneNumber": phone}))).await?;
        if answer.status == 422 {
            return Err(ProviderError::Rejected {
                code: "not_waiting_for_qr".into(),
                message: failure(&answer).to_string(),
            });
        }
        if !answer.ok() {
            return Err(failure(&answer));
        }
        answer.json()["code"].as_str().map(str::to_owned).ok_or_else(|| ProviderError::Unavailable {
            code: "waha_bad_answer".into(),
            message: "the pairing code answer has no code".into(),
            retry_after: None,
        })
    }

    /// `POST /api/sessions/{s}/restart`: the session starts again with its
    /// stored credentials (a logged-out one comes back waiting for a QR).
    async fn reconnect(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::POST, &["api", "sessions", &cfg.session, "restart"], &[])?;
        let answer = crate::http::send(req).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn logout(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::POST, &["api", "sessions", &cfg.session, "logout"], &[])?;
        let answer = crate::http::send(req).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn delete_session(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::DELETE, &["api", "sessions", &cfg.session], &[])?).await?;
        if answer.ok() || answer.status == 404 { Ok(()) } else { Err(failure(&answer)) }
    }
}

/// WAHA serves received files from its own API (`/api/files/…`), behind its key.
fn media_fetch(config: &Value, source: &crate::MediaSource) -> Option<crate::MediaFetch> {
    match (crate::MediaFetch::plain(source)?, settings(config).ok().and_then(|c| c.api_key)) {
        (crate::MediaFetch::Get { url, .. }, Some(key)) => {
            Some(crate::MediaFetch::Get { url, headers: vec![("X-Api-Key".into(), key)] })
        }
        (plain, _) => Some(plain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_files_are_fetched_with_the_api_key() {
        let config = json!({"base_url": "http://w:3000", "api_key": "k", "session": "s"});
        let url = "http://w:3000/api/files/s/3EB0.jpeg";
        assert_eq!(
            media_fetch(&config, &crate::MediaSource::Url(url.into())),
            Some(crate::MediaFetch::Get { url: url.into(), headers: vec![("X-Api-Key".into(), "k".into())] })
        );
        let keyless = json!({"base_url": "http://w:3000", "session": "s"});
        assert_eq!(
            media_fetch(&keyless, &crate::MediaSource::Url(url.into())),
            Some(crate::MediaFetch::Get { url: url.into(), headers: vec![] })
        );
    }

    #[test]
    fn requests_match_the_openapi_examples() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let (route, body) = request("default", &crate::fixture_message(case)).unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
    }

    #[test]
    fn webhooks_parse_to_the_events_each_fixture_expects() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/webhooks.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let body = serde_json::to_vec(&case["body"]).unwrap();
            let got = parse_webhook(&body);
            if case["malformed"] == true {
                assert!(matches!(got, Err(WebhookError::Malformed(_))), "{name}: {got:?}");
                continue;
            }
            let got: Vec<Value> = got.unwrap_or_else(|e| panic!("{name}: {e}")).iter().map(event_json).collect();
            assert_eq!(Value::Array(got), case["expected"], "{name}");
        }
    }

    #[test]
    fn bodies_that_are_not_waha_envelopes_are_malformed() {
        for body in [&b"not json"[..], b"", b"[]", b"{}", br#"{"event":1,"session":"default"}"#] {
            assert!(
                matches!(parse_webhook(body), Err(WebhookError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_webhook(br#"{"event":"presence.update","session":"s","payload":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn a_status_names_the_message_as_the_same_engines_send_answer_did() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/send_answers.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let engine = match case["engine"].as_str().unwrap() {
                "NOWEB" => "NOWEB",
                _ => "WEBJS",
            };
            let sent = message_id(&case["answer"]).unwrap();
            let ack = json!({"event": "message.ack", "session": "default", "engine": engine, "timestamp": 1,
                "payload": {"id": "true_5511999990000@c.us_3EB0B430A1B2C3D4", "fromMe": true, "ack": 2}});
            let events = parse_webhook(&serde_json::to_vec(&ack).unwrap()).unwrap();
            let ProviderEventKind::Status(r) = &events[0].kind else { panic!("not a status: {events:?}") };
            assert_eq!(r.provider_message_id, sent, "{}", case["engine"]);
        }
    }

    #[test]
    fn whatsapp_ids_come_out_of_serialized_ids() {
        assert_eq!(whatsapp_id("false_5511999990000@c.us_3EB0ABC"), "3EB0ABC");
        assert_eq!(whatsapp_id("true_120363012345678901@g.us_3EB0ABC_5511988887777@c.us"), "3EB0ABC");
        assert_eq!(whatsapp_id("3EB0ABC"), "3EB0ABC");
        assert_eq!(whatsapp_id("waha:msg_1"), "waha:msg_1");
    }

    #[test]
    fn the_session_is_created_with_zapgates_webhook_when_given() {
        assert_eq!(create_body("s1", None), json!({"name": "s1", "start": true}));
        let config = json!({"base_url": "http://w", "session": "s1",
            "webhook": {"url": "https://z.example/providers/waha/prv_1/webhook", "secret": "k"}});
        let (rest, hook) = without_webhook(&config);
        assert_eq!(rest, json!({"base_url": "http://w", "session": "s1"}));
        let (url, secret) = hook.unwrap();
        assert_eq!(
            create_body("s1", Some((&url, &secret))),
            json!({"name": "s1", "start": true, "config": {"webhooks": [{
                "url": "https://z.example/providers/waha/prv_1/webhook",
                "events": ["message", "message.ack", "session.status"],
                "hmac": {"key": "k"}}]}})
        );
        // `webhook` is zapgate's, not a setting: accepted and not kept.
        assert_eq!(check_config(&config).unwrap(), json!({"base_url": "http://w", "api_key": null, "session": "s1"}));
        assert!(check_config(&json!({"base_url": "http://w", "session": "s1", "other": 1})).is_err());
        assert_eq!(webhook_instance(&json!({"session": "ins_1"})).as_deref(), Some("ins_1"));
        assert_eq!(webhook_instance(&json!({})), None);
    }

    #[test]
    fn ids_are_read_from_every_engines_answer() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/send_answers.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            assert_eq!(message_id(&case["answer"]).as_deref(), case["id"].as_str(), "{}", case["engine"]);
        }
    }
}
