//! UAZAPI (uazapiGO v2) adapter: `POST {base_url}/send/text` and
//! `/send/media` with the instance `token` header. Shapes from the uazapiGO
//! v2 OpenAPI (as copied in euventura/uazapi-sdk) and docs.uazapi.com, see
//! `../shared/notes/provider-shapes.md` §4 and `fixtures/uazapi/`. The id
//! status events use is `messageid`, not `id`.
//!
//! Errors (`{"error":"…"}`): 401 and 5xx are retried (spending attempts),
//! 429 waits, 400 and other 4xx fail the message.
//!
//! On a pool server zapgate makes the instance with the server's admin token
//! (`POST /instance/init`, header `admintoken`) and keeps the instance token
//! it hands out; connect (QR), status, disconnect and `DELETE /instance` use
//! that token, the health check lists the instances (`GET /instance/all`).
//! When zapgate's server hands `create_session` a `webhook` (`{"url",
//! "secret"}`), the instance is pointed at it (`POST /webhook`, the secret
//! as the URL's `token`).
//!
//! Webhooks (`parse_webhook`; UAZAPI does not sign them, the body names
//! the instance by its `token`), from captured traffic — see
//! `fixtures/uazapi/webhooks.json`:
//! - `messages`: one message (`message.messageid`, the id the send answer
//!   gives too); `fromMe` or `wasSentByApi` make it our own; in groups the
//!   participant is `sender_pn` (else `sender`, often a `@lid`);
//!   `messageTimestamp` is in milliseconds; `content` is the text (plain
//!   text) or WhatsApp's message object. Media comes as an encrypted
//!   WhatsApp CDN URL (`content.URL`, `.enc`, useless without the media
//!   key): only a `fileURL` counts as a download URL.
//! - `messages_update`: a receipt for `event.MessageIDs` (bare message ids),
//!   status `event.Type` / `state` (Delivered, Read, Played; Sent
//!   unconfirmed); `IsFromMe` (bool or `"False"`) true means our own other
//!   device read a contact's message: skipped. `Timestamp` is in seconds.
//! - `connection`: `instance.status` (connected, connecting, disconnected),
//!   the reason in `instance.lastDisconnectReason`.

use crate::inbound::{InboundMedia, MediaSource, unix_seconds};
use crate::{
    Connection, ConnectionState, InboundMessage, OutboundMessage, Provider, ProviderError, ProviderEvent,
    ProviderEventKind, Qr, SendAccepted, StatusReport, WebhookAuth, WebhookError,
};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use zapgate_domain::{ChatId, MessageContent, MessageStatus, Timestamp};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UazapiConfig {
    /// e.g. `https://acme.uazapi.com`
    pub base_url: String,
    /// The instance token (header `token`); on a pool server, handed out
    /// when zapgate makes the instance there.
    #[serde(default)]
    pub token: String,
    /// The server's admin token (header `admintoken`): pools only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The instance's name on a pool server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub struct Uazapi {
    http: reqwest::Client,
}

/// The events zapgate subscribes an instance to.
pub const WEBHOOK_EVENTS: [&str; 3] = ["messages", "messages_update", "connection"];

/// The `POST /webhook` body that points an instance at zapgate, from the
/// `webhook` zapgate's server adds to the config (`{"url", "secret"}`):
/// the secret goes into the URL as `token` (UAZAPI does not sign).
/// `enabled` is sent because the spec's Webhook schema defaults it to false.
pub fn webhook_request(webhook: &Value) -> Result<Value, ProviderError> {
    let bad = |why: &str| ProviderError::Rejected { code: "bad_config".into(), message: format!("webhook: {why}") };
    let url = webhook["url"].as_str().ok_or_else(|| bad("no url"))?;
    let secret = webhook["secret"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| bad("no secret"))?;
    let mut url = reqwest::Url::parse(url).map_err(|e| bad(&format!("bad url {url:?}: {e}")))?;
    url.query_pairs_mut().append_pair("token", secret);
    Ok(json!({"enabled": true, "url": url.as_str(), "events": WEBHOOK_EVENTS, "excludeMessages": []}))
}

impl Uazapi {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }

    /// A call with the instance token.
    fn request(
        &self,
        cfg: &UazapiConfig,
        method: Method,
        segments: &[&str],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        Ok(self.http.request(method, crate::http::url(&cfg.base_url, segments, &[])?).header("token", &cfg.token))
    }

    /// `POST /webhook` (the instance token's instance) with `body`.
    async fn set_webhook(&self, cfg: &UazapiConfig, body: &Value) -> Result<(), ProviderError> {
        let answer = crate::http::send(self.request(cfg, Method::POST, &["webhook"])?.json(body)).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// A call with the server's admin token.
    fn admin(
        &self,
        cfg: &UazapiConfig,
        method: Method,
        segments: &[&str],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let key = cfg.api_key.as_deref().ok_or_else(|| ProviderError::Rejected {
            code: "bad_config".into(),
            message: "this UAZAPI server has no admin token".into(),
        })?;
        Ok(self.http.request(method, crate::http::url(&cfg.base_url, segments, &[])?).header("admintoken", key))
    }
}

fn settings(config: &Value) -> Result<UazapiConfig, ProviderError> {
    serde_json::from_value(config.clone()).map_err(|e| ProviderError::Rejected {
        code: "bad_config".into(),
        message: format!("the instance's UAZAPI settings are invalid: {e}"),
    })
}

/// The error an unsuccessful answer means (`{"error":"…"}`).
fn failure(answer: &crate::http::Answer) -> ProviderError {
    let json = answer.json();
    let detail = json["error"].as_str().map(str::to_owned).unwrap_or_else(|| format!("HTTP {}", answer.status));
    crate::http::classify_status("uazapi", answer.status, detail, answer.retry_after, &[401])
}

/// The route and body UAZAPI expects for one message.
pub fn request(msg: &OutboundMessage) -> Result<(&'static str, Value), ProviderError> {
    let number = match &msg.to {
        ChatId::Phone(d) => d.clone(),
        other => other.key(),
    };
    let (route, mut body) = match &msg.content {
        MessageContent::Text { text } => {
            ("text", json!({"number": number, "text": text.body, "linkPreview": text.preview_url}))
        }
        MessageContent::Image { image: m }
        | MessageContent::Video { video: m }
        | MessageContent::Audio { audio: m }
        | MessageContent::Document { document: m }
        | MessageContent::Sticker { sticker: m } => {
            let mut body = json!({"number": number, "type": msg.content.kind(), "file": m.link});
            if let Some(c) = &m.caption {
                body["text"] = json!(c);
            }
            if let Some(f) = &m.filename {
                body["docName"] = json!(f);
            }
            ("media", body)
        }
        MessageContent::Location { location: l } => {
            let mut body = json!({"number": number, "latitude": l.latitude, "longitude": l.longitude});
            if let Some(n) = &l.name {
                body["name"] = json!(n);
            }
            if let Some(a) = &l.address {
                body["address"] = json!(a);
            }
            ("location", body)
        }
        // `POST /message/react` (see `send`), on a received message.
        MessageContent::Reaction { reaction: r } => {
            ("react", json!({"number": number, "text": r.emoji, "id": r.message_id}))
        }
        other => {
            return Err(ProviderError::Rejected {
                code: "unsupported_message".into(),
                message: format!("UAZAPI instances cannot send {} messages", other.kind()),
            });
        }
    };
    if let Some(q) = msg.reply_to.as_ref().filter(|_| route != "react") {
        body["replyid"] = json!(q.id);
    }
    Ok((route, body))
}

#[async_trait]
impl Provider for Uazapi {
    fn kind(&self) -> &'static str {
        "uazapi"
    }

    fn pace(&self) -> Option<crate::Pace> {
        Some(crate::BAILEYS_PACE)
    }

    /// On a pool server the instance is named by its zapgate id.
    fn placed_config(&self, id: &zapgate_domain::InstanceId) -> Option<Value> {
        Some(json!({ "name": id.as_str() }))
    }

    fn webhook_auth(&self) -> Option<WebhookAuth> {
        Some(WebhookAuth::Token)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
        parse_webhook(body)
    }

    /// Webhook bodies name the instance by its token.
    fn webhook_instance(&self, config: &Value) -> Option<String> {
        config.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned)
    }

    fn check_config(&self, config: &Value) -> Result<Value, String> {
        let mut c: UazapiConfig = serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
        let pooled = c.api_key.as_deref().is_some_and(|k| !k.trim().is_empty());
        if c.token.trim().is_empty() && !pooled {
            return Err("config.token is required".into());
        }
        c.base_url = c.base_url.trim_end_matches('/').to_owned();
        Ok(serde_json::to_value(c).expect("serialisable"))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg = settings(&msg.config)?;
        let (route, body) = request(msg)?;
        let path = if route == "react" { ["message", route] } else { ["send", route] };
        let answer = crate::http::send(self.request(&cfg, Method::POST, &path)?.json(&body)).await?;
        let json = answer.json();
        if answer.ok() {
            // A reaction's answer need not name a message of its own.
            let reacted = (route == "react").then(|| format!("uazapi:{}", msg.message_id));
            let id = json["messageid"].as_str().map(str::to_owned).or(reacted).ok_or_else(|| {
                ProviderError::Unavailable {
                    code: "bad_response".into(),
                    message: "the UAZAPI answer has no messageid".into(),
                    retry_after: None,
                }
            })?;
            let wa_id = json["chatid"].as_str().and_then(|c| c.strip_suffix("@s.whatsapp.net")).map(str::to_owned);
            return Ok(SendAccepted { provider_message_id: id, wa_id });
        }
        Err(failure(&answer))
    }

    async fn check_server(&self, settings_: &Value) -> Result<(), ProviderError> {
        let cfg = settings(settings_)?;
        let answer = crate::http::send(self.admin(&cfg, Method::GET, &["instance", "all"])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// Makes the instance (unless it has a token already) and, when
    /// `config` carries zapgate's `webhook`, points the instance at it. If
    /// that fails for an instance made here, it is removed again.
    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let mut config = config.clone();
        let webhook = config.as_object_mut().and_then(|o| o.remove("webhook")).filter(|w| !w.is_null());
        let hook = webhook.as_ref().map(webhook_request).transpose()?;
        let mut cfg = settings(&config)?;
        if !cfg.token.is_empty() {
            if let Some(hook) = &hook {
                self.set_webhook(&cfg, hook).await?;
            }
            return Ok(None);
        }
        let body = json!({"name": cfg.name});
        let answer = crate::http::send(self.admin(&cfg, Method::POST, &["instance", "init"])?.json(&body)).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        let token = json["token"].as_str().or_else(|| json["instance"]["token"].as_str());
        let token = token.ok_or_else(|| ProviderError::Unavailable {
            code: "bad_response".into(),
            message: "the UAZAPI answer has no instance token".into(),
            retry_after: None,
        })?;
        cfg.token = token.to_owned();
        if let Some(hook) = &hook
            && let Err(e) = self.set_webhook(&cfg, hook).await
        {
            // Best effort: zapgate forgets the instance, so should the server.
            if let Ok(req) = self.request(&cfg, Method::DELETE, &["instance"]) {
                let _ = crate::http::send(req).await;
            }
            return Err(e);
        }
        Ok(Some(json!({ "token": token })))
    }

    fn watch_connection(&self) -> bool {
        true
    }

    async fn connection(&self, config: &Value) -> Result<Option<Connection>, ProviderError> {
        let cfg = settings(config)?;
        let answer = crate::http::send(self.request(&cfg, Method::GET, &["instance", "status"])?).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        let state = match json["instance"]["status"].as_str() {
            Some("connected") => ConnectionState::Connected,
            Some("connecting") => ConnectionState::WaitingForQr,
            _ => ConnectionState::Disconnected,
        };
        let phone = json["status"]["jid"]["user"].as_str().map(str::to_owned);
        Ok(Some(Connection { state, phone }))
    }

    /// UAZAPI gives the QR code as an image only (no raw string).
    async fn qr(&self, config: &Value) -> Result<Qr, ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::POST, &["instance", "connect"])?.json(&json!({}))).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        let Some(image) = json["instance"]["qrcode"].as_str().filter(|q| !q.is_empty()) else {
            return Err(Qr::not_waiting(json["instance"]["status"].as_str()));
        };
        Qr::from_data_url(None, image)
    }

    /// `POST /message/markread {"id":[messageid]}`.
    async fn mark_read(&self, config: &Value, _chat: &ChatId, wa_message_id: &str) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::POST, &["message", "markread"])?.json(&json!({"id": [wa_message_id]}));
        let answer = crate::http::send(req).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// `POST /instance/connect {"phone"}`: its `instance.paircode`.
    async fn pairing_code(&self, config: &Value, phone: &str) -> Result<String, ProviderError> {
        let cfg = settings(config)?;
        let req = self.request(&cfg, Method::POST, &["instance", "connect"])?.json(&json!({"phone": phone}));
        let answer = crate::http::send(req).await?;
        if !answer.ok() {
            return Err(failure(&answer));
        }
        let json = answer.json();
        match json["instance"]["paircode"].as_str().filter(|c| !c.is_empty()) {
            Some(code) => Ok(code.to_owned()),
            None => Err(Qr::not_waiting(json["instance"]["status"].as_str())),
        }
    }

    /// `POST /instance/connect {}`: the instance connects again with its
    /// stored credentials.
    async fn reconnect(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer =
            crate::http::send(self.request(&cfg, Method::POST, &["instance", "connect"])?.json(&json!({}))).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn logout(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let answer = crate::http::send(self.request(&cfg, Method::POST, &["instance", "disconnect"])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    /// A token the server no longer knows (401) means the instance is gone already.
    async fn delete_session(&self, config: &Value) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        if cfg.token.is_empty() {
            return Ok(());
        }
        let answer = crate::http::send(self.request(&cfg, Method::DELETE, &["instance"])?).await?;
        if answer.ok() || [401, 404].contains(&answer.status) { Ok(()) } else { Err(failure(&answer)) }
    }
}

/// The events in one UAZAPI webhook body (see the module docs).
pub fn parse_webhook(body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
    let malformed = |why: &str| WebhookError::Malformed(format!("UAZAPI webhook: {why}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| malformed(&format!("not JSON ({e})")))?;
    let kind = v["EventType"].as_str().ok_or_else(|| malformed("no EventType"))?;
    let instance =
        text(&v["token"]).or_else(|| text(&v["instanceName"])).ok_or_else(|| malformed("no token or instanceName"))?;
    let event = |kind| ProviderEvent { instance: instance.to_owned(), kind };
    Ok(match kind {
        "messages" => {
            let m = &v["message"];
            if !m.is_object() {
                return Err(malformed("a messages event without its message"));
            }
            match inbound_message(m) {
                Some(msg) => vec![event(ProviderEventKind::Message(msg))],
                None => {
                    tracing::debug!(chat = %m["chatid"], "skipped a UAZAPI message without an id or a chat zapgate can address");
                    vec![]
                }
            }
        }
        "messages_update" => receipts(&v).into_iter().map(|r| event(ProviderEventKind::Status(r))).collect(),
        "connection" => connection_change(&v)
            .map(|(state, reason)| event(ProviderEventKind::Connection { state, reason }))
            .into_iter()
            .collect(),
        _ => vec![],
    })
}

/// A non-empty string.
fn text(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// A flag sent as `true` or as `"True"` (both occur).
fn flag(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// A time as UAZAPI sends it: seconds or milliseconds, number or string,
/// or RFC 3339.
fn time_of(v: &Value) -> Option<Timestamp> {
    unix_seconds(v).or_else(|| v.as_str().and_then(Timestamp::parse_rfc3339))
}

fn inbound_message(m: &Value) -> Option<InboundMessage> {
    let id = text(&m["messageid"]).or_else(|| text(&m["id"]).map(|i| i.rsplit(':').next().unwrap_or(i)))?;
    let chat = ChatId::parse(text(&m["chatid"])?).ok()?;
    let is_group = flag(&m["isGroup"]) || matches!(chat, ChatId::Group(_));
    let sender = is_group
        .then(|| [&m["sender_pn"], &m["sender"]].into_iter().find_map(|s| ChatId::parse(text(s)?).ok()))
        .flatten();
    let (content, media) = message_content(m);
    Some(InboundMessage {
        wa_message_id: id.to_owned(),
        chat,
        sender,
        sender_name: text(&m["senderName"]).map(str::to_owned),
        from_me: flag(&m["fromMe"]) || flag(&m["wasSentByApi"]),
        content,
        media,
        context_id: text(&m["quoted"]).or_else(|| text(&m["content"]["contextInfo"]["stanzaID"])).map(str::to_owned),
        at: time_of(&m["messageTimestamp"]).unwrap_or_else(Timestamp::now),
    })
}

/// The Cloud API shape of a UAZAPI message, and its media if it can be
/// downloaded. `type` is text / media / reaction / …; for media
/// `mediaType` (image, video, gif, ptt, audio, document, sticker, location,
/// vcard) says which, else WhatsApp's `messageType`.
fn message_content(m: &Value) -> (Value, Option<InboundMedia>) {
    let c = &m["content"];
    let body = text(&m["text"]).or_else(|| text(c)).or_else(|| text(&c["text"])).or_else(|| text(&c["caption"]));
    let provider_type = text(&m["messageType"]).or_else(|| text(&m["type"])).unwrap_or("unknown");
    let unsupported = |extra: Value| {
        let mut u = json!({"provider_type": provider_type});
        if let (Some(u), Some(extra)) = (u.as_object_mut(), extra.as_object()) {
            u.extend(extra.clone());
        }
        (json!({"type": "unsupported", "unsupported": u}), None)
    };
    if let Some(original) = text(&m["edited"]) {
        // An edit of an earlier message: the Cloud API reports these as unsupported too.
        return unsupported(json!({"provider_type": "edit", "original_message_id": original, "text": body}));
    }
    match text(&m["type"]).unwrap_or_default() {
        "text" => return (json!({"type": "text", "text": {"body": body.unwrap_or_default()}}), None),
        "reaction" => {
            return (
                json!({"type": "reaction", "reaction": {"message_id": text(&m["reaction"]), "emoji": body.unwrap_or_default()}}),
                None,
            );
        }
        _ => {}
    }
    let media_type = text(&m["mediaType"]).unwrap_or_default().to_ascii_lowercase();
    let raw_type = provider_type.to_ascii_lowercase();
    let kind = match (media_type.as_str(), raw_type.as_str()) {
        ("image", _) | (_, "imagemessage") => "image",
        ("video" | "gif", _) | (_, "videomessage") => "video",
        ("ptt" | "audio" | "myaudio", _) | (_, "audiomessage") => "audio",
        ("document", _) | (_, "documentmessage" | "documentwithcaptionmessage") => "document",
        (t, _) if t.contains("sticker") => "sticker",
        (_, "stickermessage") => "sticker",
        ("location", _) | (_, "locationmessage") => {
            let loc = json!({"latitude": c["degreesLatitude"], "longitude": c["degreesLongitude"],
                "name": text(&c["name"]), "address": text(&c["address"])});
            return (json!({"type": "location", "location": strip_nulls(loc)}), None);
        }
        ("vcard", _) | (_, "contactmessage") => {
            let name = text(&c["displayName"]).or(body).unwrap_or_default();
            let contact = json!({"name": {"formatted_name": name}, "phones": vcard_phones(text(&c["vcard"]).unwrap_or_default())});
            return (json!({"type": "contacts", "contacts": [contact]}), None);
        }
        _ => return unsupported(json!({})),
    };
    let mut object = json!({
        "mime_type": text(&c["mimetype"]),
        "sha256": text(&c["fileSHA256"]),
        "caption": body.filter(|_| kind != "audio" && kind != "sticker"),
        "filename": text(&c["fileName"]).filter(|_| kind == "document"),
    });
    match kind {
        "audio" => object["voice"] = json!(media_type == "ptt" || flag(&c["PTT"])),
        "sticker" => object["animated"] = json!(flag(&c["isAnimated"])),
        _ => {}
    }
    let object = strip_nulls(object);
    let media = text(&m["fileURL"]).map(|url| InboundMedia {
        source: MediaSource::Url(url.to_owned()),
        mime_type: text(&c["mimetype"]).map(str::to_owned),
        sha256: text(&c["fileSHA256"]).map(str::to_owned),
        filename: text(&c["fileName"]).map(str::to_owned),
    });
    (json!({"type": kind, kind: object}), media)
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    v
}

/// The phones of a vCard (`item1.TEL;waid=5511…:+55 11 …`).
fn vcard_phones(vcard: &str) -> Vec<Value> {
    vcard
        .lines()
        .filter_map(|line| {
            let (key, phone) = line.split_once(':')?;
            let key = key.to_ascii_uppercase();
            if !key.split(['.', ';']).any(|p| p == "TEL") {
                return None;
            }
            let wa_id = key.split(';').find_map(|p| p.strip_prefix("WAID=")).map(str::to_owned);
            Some(strip_nulls(json!({"phone": phone.trim(), "wa_id": wa_id})))
        })
        .collect()
}

/// A `messages_update` receipt: one report per id. The flat shape some
/// docs show (`messageid` + `status` at the top) is read too (unconfirmed).
fn receipts(v: &Value) -> Vec<StatusReport> {
    let e = &v["event"];
    if flag(&e["IsFromMe"]) {
        return vec![];
    }
    let state = [&e["Type"], &v["state"], &v["status"]].into_iter().find_map(text).unwrap_or_default();
    let status = match state.to_ascii_lowercase().as_str() {
        "sent" => MessageStatus::Sent,
        "delivered" => MessageStatus::Delivered,
        "read" => MessageStatus::Read,
        "played" => MessageStatus::Played,
        _ => return vec![],
    };
    let at = time_of(&e["Timestamp"]).or_else(|| time_of(&v["messageTimestamp"])).unwrap_or_else(Timestamp::now);
    let ids: Vec<&str> = match e["MessageIDs"].as_array() {
        Some(ids) => ids.iter().filter_map(text).collect(),
        None => text(&v["messageid"]).into_iter().collect(),
    };
    ids.into_iter()
        .map(|id| StatusReport {
            provider_message_id: id.to_owned(),
            status,
            at,
            error_code: None,
            error_message: None,
        })
        .collect()
}

/// A `connection` event's state (best guess beyond the captured
/// connected / connecting / disconnected in `instance.status`).
fn connection_change(v: &Value) -> Option<(ConnectionState, Option<String>)> {
    let status = [&v["instance"]["status"], &v["status"], &v["state"]].into_iter().find_map(text)?;
    let state = match status.to_ascii_lowercase().as_str() {
        "connected" | "open" => ConnectionState::Connected,
        "connecting" => ConnectionState::Connecting,
        "disconnected" | "close" | "closed" => ConnectionState::Disconnected,
        _ => return None,
    };
    let reason = (state == ConnectionState::Disconnected)
        .then(|| text(&v["instance"]["lastDisconnectReason"]).or_else(|| text(&v["type"])))
        .flatten()
        .map(str::to_owned);
    Some((state, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured UAZAPI webhooks (fixtures/uazapi/webhooks.json).
    #[test]
    fn webhooks_parse_to_the_events_they_carry() {
        crate::cloud_api::check_webhook_fixtures(include_str!("../fixtures/uazapi/webhooks.json"), parse_webhook);
    }

    /// The id a send answer gives (`messageid`) is the one receipts name.
    #[test]
    fn receipts_name_messages_by_the_id_the_send_answer_gives() {
        let sent =
            json!({"id": "5511900000000:3EB0AB12", "messageid": "3EB0AB12", "chatid": "5511999990000@s.whatsapp.net"});
        let body = json!({"EventType": "messages_update", "token": "t", "state": "Delivered",
            "event": {"MessageIDs": [sent["messageid"]], "IsFromMe": false, "Timestamp": 1778289276, "Type": "Delivered"}});
        let events = parse_webhook(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert!(
            matches!(&events[..], [ProviderEvent { kind: ProviderEventKind::Status(r), .. }] if r.provider_message_id == "3EB0AB12")
        );
    }

    #[test]
    fn the_webhook_request_carries_the_secret_in_the_url() {
        let body =
            webhook_request(&json!({"url": "https://zg.example/providers/uazapi/prv_1/webhook", "secret": "s3 cr&t"}))
                .unwrap();
        assert_eq!(
            body,
            json!({"enabled": true, "url": "https://zg.example/providers/uazapi/prv_1/webhook?token=s3+cr%26t",
                "events": ["messages", "messages_update", "connection"], "excludeMessages": []})
        );
        let body = webhook_request(&json!({"url": "https://zg.example/hook?a=1", "secret": "s"})).unwrap();
        assert_eq!(body["url"], "https://zg.example/hook?a=1&token=s");
        for bad in [json!({"url": "not a url", "secret": "s"}), json!({"url": "https://x.example"}), json!("x")] {
            assert!(matches!(webhook_request(&bad), Err(ProviderError::Rejected { .. })), "{bad}");
        }
    }

    #[test]
    fn requests_match_the_v2_spec() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/uazapi/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let msg = crate::fixture_message(case);
            let (route, body) = request(&msg).unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
    }
}
