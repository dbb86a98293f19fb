//! Evolution API v2 adapter (Baileys-based; seed 004's provider):
//! `POST {base_url}/message/sendText/{instance}` and `/message/sendMedia/{instance}`
//! with the `apikey` header. Shapes from EvolutionAPI/evolution-api 2.3.6
//! (`src/validate/message.schema.ts`, `message.router.ts`), see
//! `../shared/notes/provider-shapes.md` §2 and `fixtures/evolution/`.
//!
//! Errors → classification: 401/403 (bad key) and 5xx/network are retried
//! (spending attempts); 429 waits; 400 (e.g. the number is not on WhatsApp:
//! `[{"exists":false,…}]`) and 404 (no such instance) fail the message; a 400
//! `Error: Connection Closed` (the phone is not linked) is retried.
//!
//! Instances on a pool server are zapgate's: `POST /instance/create`,
//! `GET /instance/connectionState/{i}`, `GET /instance/connect/{i}` (QR),
//! `DELETE /instance/logout/{i}`, `DELETE /instance/delete/{i}`.
//!
//! Webhooks (`parse_webhook`): the envelope `{"event","instance","data",…}`
//! (webhook.controller.ts), unsigned: zapgate's URL carries `?token=`.
//! `create_session` registers it for `MESSAGES_UPSERT`, `MESSAGES_UPDATE`,
//! `CONNECTION_UPDATE` and `QRCODE_UPDATED`, media inline (`base64`).
//! Messages are named by Baileys' `key.id` everywhere: the send answer's
//! `key.id` (what zapgate keeps), an upsert's `key.id`, an update's `keyId`.

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

/// An instance's Evolution API settings (`config` of `POST /v1/instances`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvolutionConfig {
    /// The Evolution server, e.g. `https://evo.example.com`.
    pub base_url: String,
    /// The instance token (the `hash` returned at create) or the global key.
    pub api_key: String,
    /// The instance's name on that server.
    pub instance: String,
}

pub struct Evolution {
    http: reqwest::Client,
}

impl Evolution {
    /// `http` should be the egress client (internal addresses refused, no redirects).
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

/// The instance's settings, normalised. `webhook` (zapgate's own, added
/// when it creates the instance) is not a setting: accepted and dropped.
pub fn check_config(config: &Value) -> Result<Value, String> {
    let (config, _) = without_webhook(config);
    let mut c: EvolutionConfig = serde_json::from_value(config).map_err(|e| format!("config: {e}"))?;
    if c.api_key.trim().is_empty() || c.instance.trim().is_empty() {
        return Err("config.api_key and config.instance are required".into());
    }
    c.base_url = c.base_url.trim_end_matches('/').to_owned();
    Ok(serde_json::to_value(c).expect("serialisable"))
}

/// How Evolution names a chat in a message key: `{digits}@s.whatsapp.net`
/// for a phone, the JID otherwise.
fn remote_jid(chat: &ChatId) -> String {
    match chat {
        ChatId::Phone(d) => format!("{d}@s.whatsapp.net"),
        other => other.key(),
    }
}

/// The route and body Evolution expects for one message.
pub fn request(msg: &OutboundMessage) -> Result<(&'static str, Value), ProviderError> {
    // Evolution takes digits or a JID (groups, LIDs) in `number`.
    let number = match &msg.to {
        ChatId::Phone(d) => d.clone(),
        other => other.key(),
    };
    let unsupported = |kind: &str| ProviderError::Rejected {
        code: "unsupported_message".into(),
        message: format!("Evolution instances cannot send {kind} messages"),
    };
    let (route, mut body) = match &msg.content {
        MessageContent::Text { text } => {
            ("sendText", json!({"number": number, "text": text.body, "linkPreview": text.preview_url}))
        }
        MessageContent::Image { image: m }
        | MessageContent::Video { video: m }
        | MessageContent::Audio { audio: m }
        | MessageContent::Document { document: m } => {
            let mut body = json!({"number": number, "mediatype": msg.content.kind(), "media": m.link});
            if let Some(c) = &m.caption {
                body["caption"] = json!(c);
            }
            if let Some(f) = &m.filename {
                body["fileName"] = json!(f);
            }
            ("sendMedia", body)
        }
        MessageContent::Sticker { sticker: m } => ("sendSticker", json!({"number": number, "sticker": m.link})),
        MessageContent::Location { location: l } => {
            let mut body = json!({"number": number, "latitude": l.latitude, "longitude": l.longitude});
            // Evolution's schema requires both; WhatsApp shows them as given.
            body["name"] = json!(l.name.clone().unwrap_or_default());
            body["address"] = json!(l.address.clone().unwrap_or_default());
            ("sendLocation", body)
        }
        // `fromMe`: whether the message reacted to was sent from this instance.
        MessageContent::Reaction { reaction: r } => {
            let key = json!({"remoteJid": remote_jid(&msg.to), "fromMe": r.from_me, "id": r.message_id});
            ("sendReaction", json!({"key": key, "reaction": r.emoji}))
        }
        other => return Err(unsupported(other.kind())),
    };
    // Evolution finds the quoted message by its key.
    if let Some(q) = msg.reply_to.as_ref().filter(|_| route != "sendReaction") {
        body["quoted"] = json!({"key": {"remoteJid": remote_jid(&msg.to), "fromMe": q.from_me, "id": q.id}});
    }
    Ok((route, body))
}

#[derive(Deserialize)]
struct Sent {
    key: Key,
}

#[derive(Deserialize)]
struct Key {
    id: String,
    #[serde(rename = "remoteJid")]
    remote_jid: Option<String>,
}

/// The events zapgate subscribes its webhook to.
pub const WEBHOOK_EVENTS: [&str; 4] = ["MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE", "QRCODE_UPDATED"];

/// The instance's settings without the `webhook` zapgate adds when it creates
/// the instance, and that webhook's URL and secret.
fn without_webhook(config: &Value) -> (Value, Option<(String, String)>) {
    let mut config = config.clone();
    let hook = config.as_object_mut().and_then(|o| o.remove("webhook"));
    let hook = hook.and_then(|h| Some((h["url"].as_str()?.to_owned(), h["secret"].as_str()?.to_owned())));
    (config, hook)
}

/// `url` with `token=<secret>` added to its query (Evolution does not sign
/// its webhooks: the token in the URL is what proves them).
pub fn url_with_token(url: &str, secret: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut().append_pair("token", secret);
            u.to_string()
        }
        Err(_) => format!("{url}{}token={secret}", if url.contains('?') { '&' } else { '?' }),
    }
}

/// `POST /instance/create`'s body, with zapgate's webhook (`url`, token
/// `secret`) when given: every event in one URL, media inline as base64.
pub fn create_body(instance: &str, webhook: Option<(&str, &str)>) -> Value {
    let mut body = json!({"instanceName": instance, "integration": "WHATSAPP-BAILEYS", "qrcode": true});
    if let Some((url, secret)) = webhook {
        body["webhook"] = json!({"url": url_with_token(url, secret), "byEvents": false, "base64": true,
            "events": WEBHOOK_EVENTS});
    }
    body
}

/// How Evolution names the instance in its webhooks: the `instance` setting.
pub fn webhook_instance(config: &Value) -> Option<String> {
    config["instance"].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn malformed(why: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(why.into())
}

/// A Baileys timestamp: seconds as a number or string, or a protobuf Long `{"low","high"}`.
fn time_of(v: &Value) -> Option<Timestamp> {
    unix_seconds(v).or_else(|| {
        let (low, high) = (v["low"].as_i64()?, v["high"].as_i64().unwrap_or(0));
        unix_seconds(&json!((high << 32) | (low & 0xffff_ffff)))
    })
}

/// An event name as zapgate compares them: `messages.upsert` for
/// `MESSAGES_UPSERT` and `messages-upsert` too.
fn event_name(event: &str) -> String {
    event.to_ascii_lowercase().replace(['_', '-'], ".")
}

/// One item or a list of them (some builds send `data` as an array).
fn items(data: &Value) -> Vec<&Value> {
    match data {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

fn unsupported(provider_type: &str) -> Value {
    json!({"type": "unsupported", "unsupported": {"provider_type": provider_type}})
}

/// The Baileys message kinds zapgate maps to the Cloud API's media kinds.
const MEDIA: [(&str, &str); 4] =
    [("imageMessage", "image"), ("videoMessage", "video"), ("audioMessage", "audio"), ("documentMessage", "document")];

/// Keys Evolution and Baileys put beside the message kind in `message`.
const NOT_KINDS: [&str; 4] = ["messageContextInfo", "base64", "mediaUrl", "contextInfo"];

/// The content in the Cloud API's shape, the media, and the message kind's
/// object (where `contextInfo` lives).
fn content(data: &Value) -> (Value, Option<InboundMedia>, &Value) {
    let mut message = &data["message"];
    // A document with a caption nests the document one level down.
    if message["documentWithCaptionMessage"]["message"]["documentMessage"].is_object() {
        message = &message["documentWithCaptionMessage"]["message"];
    }
    if let Some(text) = message["conversation"].as_str() {
        return (json!({"type": "text", "text": {"body": text}}), None, &Value::Null);
    }
    if let Some(text) = message["extendedTextMessage"]["text"].as_str() {
        return (json!({"type": "text", "text": {"body": text}}), None, &message["extendedTextMessage"]);
    }
    if let Some((key, kind)) = MEDIA.iter().find(|(key, _)| message[*key].is_object()) {
        let m = &message[*key];
        let mime = m["mimetype"].as_str().filter(|s| !s.is_empty());
        let filename = m["fileName"].as_str().filter(|s| !s.is_empty() && *kind == "document");
        let mut c = serde_json::Map::new();
        if let Some(mime) = mime {
            c.insert("mime_type".into(), json!(mime));
        }
        if let Some(caption) = m["caption"].as_str().filter(|s| !s.is_empty() && *kind != "audio") {
            c.insert("caption".into(), json!(caption));
        }
        if let Some(f) = filename {
            c.insert("filename".into(), json!(f));
        }
        // Inline bytes (`webhook.base64`), else Evolution's copy in its S3
        // (`mediaUrl`), else WhatsApp's CDN URL (the file there is encrypted).
        let source = (data["message"]["base64"].as_str().map(|b| MediaSource::Base64(b.to_owned())))
            .or_else(|| data["message"]["mediaUrl"].as_str().map(|u| MediaSource::Url(u.to_owned())))
            .or_else(|| m["url"].as_str().map(|u| MediaSource::Url(u.to_owned())));
        let media = source.map(|source| InboundMedia {
            source,
            mime_type: mime.map(str::to_owned),
            sha256: None,
            filename: filename.map(str::to_owned),
        });
        return (json!({"type": kind, *kind: c}), media, m);
    }
    let kind = data["messageType"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| message.as_object()?.keys().find(|k| !NOT_KINDS.contains(&k.as_str())).cloned());
    let kind_object = kind.as_deref().map_or(&Value::Null, |k| &message[k]);
    (unsupported(kind.as_deref().unwrap_or("unknown")), None, kind_object)
}

/// A `messages.upsert` item; None for chats zapgate cannot address
/// (`status@broadcast`, newsletters).
fn inbound_message(data: &Value, fallback_at: Timestamp) -> Result<Option<InboundMessage>, WebhookError> {
    let key = &data["key"];
    let id = key["id"].as_str().filter(|s| !s.is_empty());
    let (Some(id), Some(jid)) = (id, key["remoteJid"].as_str()) else {
        return Err(malformed("an Evolution message without key.id and key.remoteJid"));
    };
    let Ok(chat) = ChatId::parse(jid) else { return Ok(None) };
    let sender = match chat {
        ChatId::Group(_) => key["participant"].as_str().and_then(|p| ChatId::parse(p).ok()),
        _ => None,
    };
    let (content, media, kind) = content(data);
    let context_id = [&data["contextInfo"]["stanzaId"], &kind["contextInfo"]["stanzaId"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
        .map(str::to_owned);
    Ok(Some(InboundMessage {
        wa_message_id: id.to_owned(),
        chat,
        sender,
        sender_name: data["pushName"].as_str().filter(|s| !s.is_empty()).map(str::to_owned),
        from_me: key["fromMe"].as_bool().unwrap_or(false),
        content,
        media,
        context_id,
        at: time_of(&data["messageTimestamp"]).unwrap_or(fallback_at),
    }))
}

/// A `messages.update` item; None for statuses zapgate has none for
/// (PENDING, DELETED) and receipts of messages it did not send.
fn status_update(data: &Value, at: Timestamp) -> Result<Option<StatusReport>, WebhookError> {
    // 2.x: `keyId`; older builds: the key itself (`key.id`, or spread: `id`).
    let id = [&data["keyId"], &data["key"]["id"], &data["id"]].into_iter().find_map(|v| v.as_str());
    let Some(id) = id.filter(|s| !s.is_empty()) else {
        return Err(malformed("an Evolution message update without keyId"));
    };
    let from_me = data["fromMe"].as_bool().or(data["key"]["fromMe"].as_bool());
    if from_me == Some(false) {
        return Ok(None);
    }
    // The names of renderStatus.ts; Baileys' numbers in some builds.
    let status = match (&data["status"], data["status"].as_str()) {
        (_, Some("ERROR")) => MessageStatus::Failed,
        (_, Some("SERVER_ACK")) => MessageStatus::Sent,
        (_, Some("DELIVERY_ACK")) => MessageStatus::Delivered,
        (_, Some("READ")) => MessageStatus::Read,
        (_, Some("PLAYED")) => MessageStatus::Played,
        (v, None) => match v.as_i64() {
            Some(0) => MessageStatus::Failed,
            Some(2) => MessageStatus::Sent,
            Some(3) => MessageStatus::Delivered,
            Some(4) => MessageStatus::Read,
            Some(5) => MessageStatus::Played,
            Some(_) => return Ok(None),
            None => return Err(malformed("an Evolution message update without status")),
        },
        _ => return Ok(None),
    };
    let failed = status == MessageStatus::Failed;
    Ok(Some(StatusReport {
        provider_message_id: id.to_owned(),
        status,
        at: time_of(&data["timestamp"]).or_else(|| time_of(&data["datetime"])).unwrap_or(at),
        error_code: failed.then(|| "evolution_status_error".to_owned()),
        error_message: failed.then(|| "Evolution reported the message as ERROR".to_owned()),
    }))
}

/// The events in one Evolution webhook body.
pub fn parse_webhook(body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let event = v["event"].as_str().ok_or_else(|| malformed("an Evolution webhook without event"))?;
    let instance = v["instance"].as_str().ok_or_else(|| malformed("an Evolution webhook without instance"))?;
    let data = &v["data"];
    let event = event_name(event);
    let used = ["messages.upsert", "messages.update", "connection.update", "qrcode.updated"];
    if used.contains(&event.as_str()) && !(data.is_object() || data.is_array()) {
        return Err(malformed(format!("an Evolution {event} event without data")));
    }
    // The event's time: `date_time` (ISO 8601, the server's offset), else now.
    let at = v["date_time"].as_str().and_then(Timestamp::parse_rfc3339).unwrap_or_else(Timestamp::now);
    let mut kinds = Vec::new();
    match event.as_str() {
        "messages.upsert" => {
            for item in items(data) {
                kinds.extend(inbound_message(item, at)?.map(ProviderEventKind::Message));
            }
        }
        "messages.update" => {
            for item in items(data) {
                kinds.extend(status_update(item, at)?.map(ProviderEventKind::Status));
            }
        }
        "connection.update" => {
            let state = match data["state"].as_str() {
                Some("open") => Some(ConnectionState::Connected),
                Some("connecting") => Some(ConnectionState::Connecting),
                Some("close") => Some(ConnectionState::Disconnected),
                // Too many QR codes shown without a scan: the session ended.
                Some("refused") => Some(ConnectionState::Failed),
                _ => None,
            };
            let reason = match &data["statusReason"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            kinds.extend(state.map(|state| ProviderEventKind::Connection { state, reason }));
        }
        // Without `qrcode` it is the "QR code limit reached" notice, not a code.
        "qrcode.updated" if data["qrcode"].is_object() => {
            kinds.push(ProviderEventKind::Qr { raw: data["qrcode"]["code"].as_str().map(str::to_owned) });
        }
        _ => {}
    }
    Ok(kinds.into_iter().map(|kind| ProviderEvent { instance: instance.to_owned(), kind }).collect())
}

pub fn classify_status(status: u16, message: String, retry_after: Option<Duration>) -> ProviderError {
    crate::http::classify_status("evolution", status, message, retry_after, &[401, 403])
}

#[async_trait]
impl Provider for Evolution {
    fn kind(&self) -> &'static str {
        "evolution"
    }

    fn pace(&self) -> Option<crate::Pace> {
        Some(crate::BAILEYS_PACE)
    }

    /// On a pool server the instance is named by its zapgate id.
    fn placed_config(&self, id: &zapgate_domain::InstanceId) -> Option<Value> {
        Some(serde_json::json!({ "instance": id.as_str() }))
    }

    fn check_config(&self, config: &Value) -> Result<Value, String> {
        check_config(config)
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg = settings(&msg.config)?;
        let (route, body) = request(msg)?;
        let req = self.request(&cfg, Method::POST, &["message", route, &cfg.instance])?;
        let answer = crate::http::send(req.json(&body)).await?;
        if answer.ok() {
            let sent: Sent = serde_json::from_slice(&answer.body).map_err(|e| ProviderError::Unavailable {
                code: "bad_response".into(),
                message: format!("unexpected Evolution answer: {e}"),
                retry_after: None,
            })?;
            let wa_id = sent.key.remote_jid.and_then(|j| j.strip_suffix("@s.whatsapp.net").map(str::to_owned));
            return Ok(SendAccepted { provider_message_id: sent.key.id, wa_id });
        }
        Err(failure(&answer))
    }

    /// The instance list answers for any server and global key (`GET /instance/fetchInstances`).
    async fn check_server(&self, settings: &Value) -> Result<(), ProviderError> {
        let cfg = self::settings(&zapgate_domain::json::merged(&json!({"instance": ""}), settings))?;
        let answer = crate::http::send(self.request(&cfg, Method::GET, &["instance", "fetchInstances"])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// With `config.webhook` (`{"url","secret"}`), the instance posts its
    /// events there (the secret as `?token=`). An instance that exists
    /// already keeps the webhook it has.
    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let (config, webhook) = without_webhook(config);
        let cfg = settings(&config)?;
        let body = create_body(&cfg.instance, webhook.as_ref().map(|(u, s)| (u.as_str(), s.as_str())));
        let answer = crate::http::send(self.request(&cfg, Method::POST, &["instance", "create"])?.json(&body)).await?;
        // 403: the name is taken — by this instance, made before.
        if answer.ok() || answer.status == 403 { Ok(None) } else { Err(failure(&answer)) }
    }

    fn webhook_auth(&self) -> Option<WebhookAuth> {
        Some(WebhookAuth::Token)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
        parse_webhook(body)
    }

    fn webhook_instance(&self, config: &Value) -> Option<String> {
        webhook_instance(config)
    }

    fn watch_connection(&self) -> bool {
        true
    }

    async fn connection(&self, config: &Value) -> Result<Option<Connection>, ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::GET, &["instance", "connectionState", &cfg.instance])?;
        let answer = crate::http::send(req).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let state = match answer.json()["instance"]["state"].as_str() {
            Some("open") => ConnectionState::Connected,
            Some("connecting") => ConnectionState::WaitingForQr,
            _ => ConnectionState::Disconnected,
        };
        Ok(Some(Connection { state, phone: None }))
    }

    async fn qr(&self, config: &Value) -> Result<Qr, ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::GET, &["instance", "connect", &cfg.instance])?).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        let (Some(raw), Some(image)) = (json["code"].as_str(), json["base64"].as_str()) else {
            return Err(Qr::not_waiting(json["instance"]["state"].as_str()));
        };
        Qr::from_data_url(Some(raw.to_owned()), image)
    }

    /// `POST /chat/markMessageAsRead/{instance} {"readMessages":[{"remoteJid","fromMe":false,"id"}]}`.
    async fn mark_read(&self, config: &Value, chat: &ChatId, wa_message_id: &str) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let body = json!({"readMessages": [{"remoteJid": remote_jid(chat), "fromMe": false, "id": wa_message_id}]});
        let req = self.request(&cfg, Method::POST, &["chat", "markMessageAsRead", &cfg.instance])?.json(&body);
        let answer = crate::http::send(req).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// `GET /instance/connect/{instance}?number=`: its `pairingCode`, or
    /// `{"instance":{"state":"open"}}` once linked.
    async fn pairing_code(&self, config: &Value, phone: &str) -> Result<String, ProviderError> {
        let cfg = settings(config)?;
        let path = ["instance", "connect", cfg.instance.as_str()];
        let answer = crate::http::send(self.request_with(&cfg, Method::GET, &path, &[("number", phone)])?).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        match json["pairingCode"].as_str().filter(|c| !c.is_empty()) {
            Some(code) => Ok(code.to_owned()),
            None => Err(Qr::not_waiting(json["instance"]["state"].as_str())),
        }
    }

    /// `GET /instance/connect/{instance}`: Evolution opens the socket again
    /// (answering the QR it would need if the number was unlinked).
    async fn reconnect(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::GET, &["instance", "connect", &cfg.instance])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn logout(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::DELETE, &["instance", "logout", &cfg.instance])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn delete_session(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::DELETE, &["instance", "delete", &cfg.instance])?).await?;
        if answer.ok() || answer.status == 404 { Ok(()) } else { Err(failure(&answer)) }
    }
}

impl Evolution {
    /// A request to `{base_url}/{segments…}` with the `apikey` header.
    fn request(
        &self,
        cfg: &EvolutionConfig,
        method: Method,
        segments: &[&str],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        self.request_with(cfg, method, segments, &[])
    }

    /// [`Evolution::request`] with a query string.
    fn request_with(
        &self,
        cfg: &EvolutionConfig,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        Ok(self.http.request(method, crate::http::url(&cfg.base_url, segments, query)?).header("apikey", &cfg.api_key))
    }
}

fn settings(config: &Value) -> Result<EvolutionConfig, ProviderError> {
    serde_json::from_value(config.clone()).map_err(|e| ProviderError::Rejected {
        code: "bad_config".into(),
        message: format!("the instance's Evolution settings are invalid: {e}"),
    })
}

/// The error an unsuccessful answer means; Evolution's errors read
/// `{"status":400,"error":"Bad Request","response":{"message":[…]}}`.
/// A send on an instance whose phone is not linked (`Error: Connection
/// Closed`) waits for it to be linked again: retried, not failed.
fn failure(answer: &crate::http::Answer) -> ProviderError {
    let detail = match answer.json() {
        Value::Null => format!("HTTP {}", answer.status),
        v => v["response"]["message"].to_string(),
    };
    if answer.status == 400 && detail.contains("Connection Closed") {
        let code = "evolution_connection_closed".into();
        return ProviderError::Unavailable { code, message: detail, retry_after: answer.retry_after };
    }
    classify_status(answer.status, detail, answer.retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_v2_schemas() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/evolution/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let (route, body) = request(&crate::fixture_message(case)).unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
        // Meta's templates exist only on the Cloud API.
        let template = crate::test_message(
            json!({"type":"template","template":{"name":"fatura","language":{"code":"pt_BR"}}}),
            "+5511999998888",
        );
        assert!(
            matches!(request(&template), Err(ProviderError::Rejected { code, .. }) if code == "unsupported_message")
        );
    }

    #[test]
    fn webhooks_parse_to_the_events_each_fixture_expects() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/evolution/webhooks.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let body = serde_json::to_vec(&case["body"]).unwrap();
            let got = parse_webhook(&body);
            if case["malformed"] == true {
                assert!(matches!(got, Err(WebhookError::Malformed(_))), "{name}: {got:?}");
                continue;
            }
            let got: Vec<Value> =
                got.unwrap_or_else(|e| panic!("{name}: {e}")).iter().map(crate::waha::event_json).collect();
            assert_eq!(Value::Array(got), case["expected"], "{name}");
        }
    }

    #[test]
    fn bodies_that_are_not_evolution_envelopes_are_malformed() {
        for body in [&b"not json"[..], b"", b"[]", b"{}", br#"{"event":"messages.upsert","instance":7,"data":{}}"#] {
            assert!(
                matches!(parse_webhook(body), Err(WebhookError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_webhook(br#"{"event":"presence.update","instance":"i","data":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn a_status_names_the_message_as_the_send_answer_did() {
        let answer = json!({"key": {"remoteJid": "5511999990000@s.whatsapp.net", "fromMe": true, "id": "3EB0B430A1B2C3D4"},
            "status": "PENDING", "message": {"conversation": "hi"}, "messageTimestamp": 1717689097});
        let sent: Sent = serde_json::from_value(answer).unwrap();
        let update = json!({"event": "messages.update", "instance": "i", "data": {"keyId": "3EB0B430A1B2C3D4",
            "remoteJid": "5511999990000@s.whatsapp.net", "fromMe": true, "status": "DELIVERY_ACK"}});
        let events = parse_webhook(&serde_json::to_vec(&update).unwrap()).unwrap();
        let crate::ProviderEventKind::Status(r) = &events[0].kind else { panic!("not a status: {events:?}") };
        assert_eq!(r.provider_message_id, sent.key.id);
    }

    #[test]
    fn the_instance_is_created_with_zapgates_webhook_when_given() {
        assert_eq!(
            create_body("i1", None),
            json!({"instanceName": "i1", "integration": "WHATSAPP-BAILEYS", "qrcode": true})
        );
        let config = json!({"base_url": "http://e", "api_key": "k", "instance": "i1",
            "webhook": {"url": "https://z.example/providers/evolution/prv_1/webhook", "secret": "s3cret"}});
        let (rest, hook) = without_webhook(&config);
        assert_eq!(rest, json!({"base_url": "http://e", "api_key": "k", "instance": "i1"}));
        let (url, secret) = hook.unwrap();
        assert_eq!(
            create_body("i1", Some((&url, &secret))),
            json!({"instanceName": "i1", "integration": "WHATSAPP-BAILEYS", "qrcode": true, "webhook": {
                "url": "https://z.example/providers/evolution/prv_1/webhook?token=s3cret",
                "byEvents": false, "base64": true,
                "events": ["MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE", "QRCODE_UPDATED"]}})
        );
        // An existing query is kept, the token added to it (and encoded).
        assert_eq!(url_with_token("https://z.example/hook?a=1", "s"), "https://z.example/hook?a=1&token=s");
        assert_eq!(url_with_token("https://z.example/hook", "a b&c"), "https://z.example/hook?token=a+b%26c");
        // `webhook` is zapgate's, not a setting: accepted and not kept.
        assert_eq!(check_config(&config).unwrap(), json!({"base_url": "http://e", "api_key": "k", "instance": "i1"}));
        assert!(check_config(&json!({"base_url": "http://e", "api_key": "k", "instance": "i1", "x": 1})).is_err());
        assert_eq!(webhook_instance(&json!({"instance": "ins_1"})).as_deref(), Some("ins_1"));
        assert_eq!(webhook_instance(&json!({})), None);
    }

    #[test]
    fn a_closed_connection_is_retried_not_failed() {
        let body = br#"{"status":400,"error":"Bad Request","response":{"message":["Error: Connection Closed"]}}"#;
        let answer = crate::http::Answer { status: 400, retry_after: None, body: body.to_vec() };
        assert!(
            matches!(failure(&answer), ProviderError::Unavailable { code, .. } if code == "evolution_connection_closed")
        );
        let body = br#"{"status":400,"error":"Bad Request","response":{"message":[{"exists":false}]}}"#;
        let answer = crate::http::Answer { status: 400, retry_after: None, body: body.to_vec() };
        assert!(matches!(failure(&answer), ProviderError::Rejected { .. }));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(classify_status(400, "x".into(), None), ProviderError::Rejected { .. }));
        assert!(matches!(classify_status(404, "x".into(), None), ProviderError::Rejected { .. }));
        assert!(matches!(classify_status(401, "x".into(), None), ProviderError::Unavailable { .. }));
        assert!(matches!(classify_status(502, "x".into(), None), ProviderError::Unavailable { .. }));
        assert!(matches!(classify_status(429, "x".into(), None), ProviderError::Throttled { .. }));
    }
}
