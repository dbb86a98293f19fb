//! WhatsApp Cloud API (Meta Graph API) adapter: `POST
//! {base_url}/{api_version}/{phone_number_id}/messages` with the instance's
//! access token. zapgate's message content already has the Cloud API wire
//! shape, so a send is that object plus `messaging_product`, `recipient_type`
//! and `to`.
//!
//! Shapes follow Meta's reference (developers.facebook.com/docs/whatsapp/
//! cloud-api/reference/messages); fixtures in `fixtures/cloud_api/`.
//!
//! Error codes → classification (see also `classify.rs`):
//!
//! | code | meaning | class |
//! |---|---|---|
//! | 4, 80007, 130429, 131048, 131056, HTTP 429 | rate limits (app, WABA, throughput, spam, pair) | throttled: wait, no attempt spent |
//! | 1, 2, 131000, 131016, HTTP 5xx, network | transient / service unavailable | retry, spends an attempt |
//! | 0, 10, 190, 200, 131005 | auth or permission (a credential problem) | retry, spends an attempt (fix the token, then replay the dead letters) |
//! | everything else 4xx (100, 131008, 131009, 131021, 131026, 131030, 131047, 131051–131053, 132000–132069, …) | the message cannot be sent as is | permanent |
//!
//! Webhooks (`parse_webhook`): Meta's `messages` field — one event per
//! entry of `value.messages` (inbound) and `value.statuses` (sent,
//! delivered, read, played, failed), named by the change's
//! `metadata.phone_number_id`. POSTs are signed with the app's secret
//! (`X-Hub-Signature-256`), kept as `app_secret` in the instance's settings
//! next to the `verify_token` of Meta's subscription check. Shapes from
//! Meta's webhook reference, see `fixtures/cloud_api/webhooks.json`.

use crate::inbound::{InboundMedia, MediaSource, unix_seconds};
use crate::{
    InboundMessage, OutboundMessage, Provider, ProviderError, ProviderEvent, ProviderEventKind, SendAccepted,
    StatusReport, WebhookAuth, WebhookError,
};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_domain::{ChatId, MessageStatus, Timestamp};

pub const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
pub const DEFAULT_API_VERSION: &str = "v21.0";

/// An instance's Cloud API settings (`config` of `POST /v1/instances`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudApiConfig {
    /// A system-user access token with `whatsapp_business_messaging`.
    pub access_token: String,
    /// The number's id at Meta (digits).
    pub phone_number_id: String,
    #[serde(default)]
    pub waba_id: Option<String>,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_version")]
    pub api_version: String,
    /// The Meta app's secret: webhook POSTs are signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// What Meta's subscription check (`GET …?hub.verify_token=`) must present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_token: Option<String>,
}

/// A non-empty string setting of `config`.
fn setting(config: &Value, key: &str) -> Option<String> {
    config.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// The app secret webhook signatures of the instance with these settings
/// are checked against, if it has one.
pub fn app_secret(config: &Value) -> Option<String> {
    setting(config, "app_secret")
}

/// The token Meta's webhook subscription check must present for the
/// instance with these settings, if it has one.
pub fn verify_token(config: &Value) -> Option<String> {
    setting(config, "verify_token")
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_version() -> String {
    DEFAULT_API_VERSION.into()
}

pub struct CloudApi {
    http: reqwest::Client,
}

impl CloudApi {
    /// `http` should be the egress client (internal addresses refused, no redirects).
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
}

/// The request body Meta expects for one message.
pub fn request_body(msg: &OutboundMessage) -> Result<Value, ProviderError> {
    let ChatId::Phone(digits) = &msg.to else {
        return Err(ProviderError::Rejected {
            code: "unsupported_recipient".into(),
            message: "the Cloud API sends to phone numbers only (not groups or LIDs)".into(),
        });
    };
    let mut body = serde_json::to_value(&msg.content).expect("content serialises");
    let obj = body.as_object_mut().expect("content is an object");
    obj.insert("messaging_product".into(), json!("whatsapp"));
    obj.insert("recipient_type".into(), json!("individual"));
    obj.insert("to".into(), json!(digits));
    if let Some(q) = &msg.reply_to {
        obj.insert("context".into(), json!({"message_id": q.id}));
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Accepted {
    #[serde(default)]
    contacts: Vec<Contact>,
    messages: Vec<MessageRef>,
}

#[derive(Deserialize)]
struct Contact {
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageRef {
    id: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
}

/// Turns a Graph API error into what the worker does about it (the table above).
pub fn classify_error(http_status: u16, code: i64, message: &str, retry_after: Option<Duration>) -> ProviderError {
    let code_s = code.to_string();
    match code {
        4 | 80007 | 130429 | 131048 | 131056 => ProviderError::Throttled { code: code_s, retry_after },
        1 | 2 | 131000 | 131016 | 0 | 10 | 190 | 200 | 131005 => {
            ProviderError::Unavailable { code: code_s, message: message.to_owned(), retry_after }
        }
        _ if http_status == 429 => ProviderError::Throttled { code: code_s, retry_after },
        _ if http_status >= 500 => {
            ProviderError::Unavailable { code: code_s, message: message.to_owned(), retry_after }
        }
        _ => ProviderError::Rejected { code: code_s, message: message.to_owned() },
    }
}

#[async_trait]
impl Provider for CloudApi {
    fn media_fetch(&self, config: &Value, source: &crate::MediaSource) -> Option<crate::MediaFetch> {
        media_fetch(config, source)
    }

    fn kind(&self) -> &'static str {
        "cloud_api"
    }

    /// Meta's default throughput (up to 1000 msg/s once Meta raises it).
    fn pace(&self) -> Option<crate::Pace> {
        Some(crate::Pace { rate_per_sec: 80, burst: 80, max_rate_per_sec: 1000 })
    }

    /// One message per 6 s to one user, with bursts (Meta's pair rate limit).
    fn pair_limited(&self) -> bool {
        true
    }

    fn check_config(&self, config: &Value) -> Result<Value, String> {
        let c: CloudApiConfig = serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
        if c.access_token.trim().is_empty() {
            return Err("config.access_token is required".into());
        }
        if c.phone_number_id.is_empty() || !c.phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err("config.phone_number_id must be Meta's numeric phone number id".into());
        }
        let version_ok =
            c.api_version.starts_with('v') && c.api_version[1..].split('.').all(|p| p.parse::<u32>().is_ok());
        if !version_ok {
            return Err("config.api_version looks like v21.0".into());
        }
        let mut c = c;
        c.base_url = c.base_url.trim_end_matches('/').to_owned();
        Ok(serde_json::to_value(c).expect("serialisable"))
    }

    fn webhook_auth(&self) -> Option<WebhookAuth> {
        Some(WebhookAuth::HubSignature)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
        parse_webhook(body)
    }

    fn webhook_instance(&self, config: &Value) -> Option<String> {
        setting(config, "phone_number_id")
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg = settings(&msg.config)?;
        let uploaded;
        let msg = match &msg.upload {
            // Media sent by zapgate id: uploaded to Meta first, sent by Meta's id.
            Some(upload) => {
                let media_id = self.upload(&cfg, upload).await?;
                let mut with_id = msg.clone();
                if let Some(m) = with_id.content.media_mut() {
                    m.id = Some(media_id);
                    m.link.clear();
                }
                uploaded = with_id;
                &uploaded
            }
            None => msg,
        };
        let req = self.http.post(number_url(&cfg, "messages")).bearer_auth(&cfg.access_token).json(&request_body(msg)?);
        let answer = crate::http::send(req).await?;
        if answer.ok() {
            let ok: Accepted = serde_json::from_slice(&answer.body).map_err(|e| ProviderError::Unavailable {
                code: "bad_response".into(),
                message: format!("unexpected Cloud API answer: {e}"),
                retry_after: None,
            })?;
            let id = ok.messages.into_iter().next().map(|m| m.id).ok_or_else(|| ProviderError::Unavailable {
                code: "bad_response".into(),
                message: "the Cloud API answer has no message id".into(),
                retry_after: None,
            })?;
            return Ok(SendAccepted {
                provider_message_id: id,
                wa_id: ok.contacts.into_iter().next().and_then(|c| c.wa_id),
            });
        }
        Err(graph_failure(&answer))
    }

    fn uploads_media(&self) -> bool {
        true
    }

    /// `GET /{version}/{waba_id}/message_templates`, every page (up to 20).
    async fn templates(&self, config: &Value) -> Result<Option<Vec<Value>>, ProviderError> {
        let cfg = settings(config)?;
        let Some(waba) = cfg.waba_id.as_deref().filter(|w| !w.is_empty()) else { return Ok(None) };
        let mut url = format!("{}/{}/{waba}/message_templates?limit=100", cfg.base_url, cfg.api_version);
        let mut all = Vec::new();
        for _ in 0..20 {
            let answer = crate::http::send(self.http.get(&url).bearer_auth(&cfg.access_token)).await?;
            if !answer.ok() {
                return Err(graph_failure(&answer));
            }
            let page: Value = serde_json::from_slice(&answer.body).map_err(|_| ProviderError::Unavailable {
                code: "malformed_answer".into(),
                message: "Meta's template list is not JSON".into(),
                retry_after: None,
            })?;
            all.extend(page["data"].as_array().cloned().unwrap_or_default());
            match page["paging"]["next"].as_str() {
                // Only a next page at the configured server: the token goes with it.
                Some(next) if same_origin(next, &cfg.base_url) => url = next.to_owned(),
                _ => break,
            }
        }
        Ok(Some(all))
    }

    /// `{"messaging_product":"whatsapp","status":"read","message_id"}` to
    /// the number's messages endpoint (Meta answers `{"success":true}`).
    async fn mark_read(&self, config: &Value, _chat: &ChatId, wa_message_id: &str) -> Result<(), ProviderError> {
        let cfg = settings(config)?;
        let body = json!({"messaging_product": "whatsapp", "status": "read", "message_id": wa_message_id});
        let req = self.http.post(number_url(&cfg, "messages")).bearer_auth(&cfg.access_token).json(&body);
        let answer = crate::http::send(req).await?;
        if answer.ok() { Ok(()) } else { Err(graph_failure(&answer)) }
    }
}

impl CloudApi {
    /// `POST /{version}/{phone_number_id}/media` (multipart: `messaging_product`,
    /// `type`, `file`) → Meta's media id.
    async fn upload(&self, cfg: &CloudApiConfig, upload: &crate::MediaUpload) -> Result<String, ProviderError> {
        let part = reqwest::multipart::Part::bytes(upload.bytes.clone())
            .file_name(upload.filename.clone().unwrap_or_else(|| "file".into()))
            .mime_str(&upload.mime_type)
            .map_err(|e| ProviderError::Rejected { code: "bad_media_type".into(), message: e.to_string() })?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", upload.mime_type.clone())
            .part("file", part);
        let req = self.http.post(number_url(cfg, "media")).bearer_auth(&cfg.access_token).multipart(form);
        let answer = crate::http::send(req).await?;
        if !answer.ok() {
            return Err(graph_failure(&answer));
        }
        answer.json()["id"].as_str().map(str::to_owned).ok_or_else(|| ProviderError::Unavailable {
            code: "bad_response".into(),
            message: "the media upload answer has no id".into(),
            retry_after: None,
        })
    }
}

/// The instance's Cloud API settings, as `check_config` kept them.
fn settings(config: &Value) -> Result<CloudApiConfig, ProviderError> {
    serde_json::from_value(config.clone()).map_err(|e| ProviderError::Rejected {
        code: "bad_config".into(),
        message: format!("the instance's Cloud API settings are invalid: {e}"),
    })
}

/// `{base_url}/{api_version}/{phone_number_id}/{edge}` (`messages`, `media`).
/// Whether `url` is at the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

fn number_url(cfg: &CloudApiConfig, edge: &str) -> String {
    format!("{}/{}/{}/{edge}", cfg.base_url, cfg.api_version, cfg.phone_number_id)
}

/// The error a Graph API answer that is not 2xx means.
fn graph_failure(answer: &crate::http::Answer) -> ProviderError {
    let (status, retry_after) = (answer.status, answer.retry_after);
    match serde_json::from_slice::<ErrorEnvelope>(&answer.body) {
        Ok(e) => {
            let message = match e.error.error_subcode {
                Some(sub) => format!("{} (subcode {sub})", e.error.message),
                None => e.error.message,
            };
            classify_error(status, e.error.code, &message, retry_after)
        }
        Err(_) => classify_error(status, 0, &format!("HTTP {status} without a Graph error body"), retry_after),
    }
}

/// The events in one webhook POST of Meta's (see the module docs).
pub fn parse_webhook(body: &[u8]) -> Result<Vec<ProviderEvent>, WebhookError> {
    let malformed = |why: String| WebhookError::Malformed(format!("Cloud API webhook: {why}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON ({e})")))?;
    if v["object"] != "whatsapp_business_account" {
        return Err(malformed(format!("object is {}, not \"whatsapp_business_account\"", v["object"])));
    }
    let entries = v["entry"].as_array().ok_or_else(|| malformed("no entry list".into()))?;
    let mut out = Vec::new();
    for change in entries.iter().flat_map(|e| e["changes"].as_array().into_iter().flatten()) {
        // Template, quality, account … updates and message echoes: not ours.
        if change["field"] != "messages" {
            continue;
        }
        let value = &change["value"];
        let instance = value["metadata"]["phone_number_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed("a messages change without metadata.phone_number_id".into()))?;
        let event = |kind| ProviderEvent { instance: instance.to_owned(), kind };
        for m in value["messages"].as_array().into_iter().flatten() {
            match inbound_message(m, &value["contacts"]) {
                Some(msg) => out.push(event(ProviderEventKind::Message(msg))),
                None => tracing::warn!(id = %m["id"], "skipped a Cloud API message without an id or phone sender"),
            }
        }
        out.extend(
            value["statuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(status_report)
                .map(|r| event(ProviderEventKind::Status(r))),
        );
    }
    Ok(out)
}

/// Media kinds whose object carries a media id to download.
const MEDIA_KINDS: [&str; 5] = ["image", "video", "audio", "document", "sticker"];

fn str_of(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// One entry of `value.messages`. None: no id, or no sender zapgate can
/// address (`from` missing: a user known only by a business-scoped id).
fn inbound_message(m: &Value, contacts: &Value) -> Option<InboundMessage> {
    let id = str_of(&m["id"])?;
    let from = m["from"].as_str()?;
    let chat = ChatId::parse(from).ok()?;
    let sender_name = contacts
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["wa_id"].as_str() == Some(from))
        .and_then(|c| str_of(&c["profile"]["name"]));
    let kind = m["type"].as_str().unwrap_or_default();
    let content = if matches!(kind, "unsupported" | "unknown" | "") {
        // Meta's "unsupported" (or the older "unknown") carries only errors.
        let provider_type = m["unsupported"]["type"].as_str().filter(|t| !t.is_empty()).unwrap_or(match kind {
            "" => "unknown",
            k => k,
        });
        let mut c = json!({"type": "unsupported", "unsupported": {"provider_type": provider_type}});
        if m["errors"].is_array() {
            c["errors"] = m["errors"].clone();
        }
        c
    } else {
        let mut c = m.clone();
        if let Some(o) = c.as_object_mut() {
            for k in ["from", "id", "timestamp", "context"] {
                o.remove(k);
            }
        }
        c
    };
    let media = MEDIA_KINDS.contains(&kind).then(|| &m[kind]).and_then(|o| {
        Some(InboundMedia {
            source: MediaSource::CloudMediaId(str_of(&o["id"])?),
            mime_type: str_of(&o["mime_type"]),
            sha256: str_of(&o["sha256"]),
            filename: str_of(&o["filename"]),
        })
    });
    Some(InboundMessage {
        wa_message_id: id,
        chat,
        sender: None,
        sender_name,
        from_me: false,
        content,
        media,
        context_id: str_of(&m["context"]["id"]),
        at: unix_seconds(&m["timestamp"]).unwrap_or_else(Timestamp::now),
    })
}

/// One entry of `value.statuses`; None for statuses zapgate does not track
/// (`deleted`, `warning`, …).
fn status_report(s: &Value) -> Option<StatusReport> {
    let status = match s["status"].as_str()? {
        "sent" => MessageStatus::Sent,
        "delivered" => MessageStatus::Delivered,
        "read" => MessageStatus::Read,
        "played" => MessageStatus::Played,
        "failed" => MessageStatus::Failed,
        _ => return None,
    };
    let error = &s["errors"][0];
    let error_code = match &error["code"] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(c) if !c.is_empty() => Some(c.clone()),
        _ => None,
    };
    let error_message = str_of(&error["title"]).or_else(|| str_of(&error["message"])).map(|t| {
        match str_of(&error["error_data"]["details"]).filter(|d| *d != t) {
            Some(details) => format!("{t}: {details}"),
            None => t,
        }
    });
    Some(StatusReport {
        provider_message_id: str_of(&s["id"])?,
        status,
        at: unix_seconds(&s["timestamp"]).unwrap_or_else(Timestamp::now),
        error_code,
        error_message,
    })
}

/// An event as fixtures spell it (`fixtures/*/webhooks.json`), for the
/// webhook parser tests of every adapter.
#[cfg(test)]
pub(crate) fn event_json(e: &ProviderEvent) -> Value {
    let key = |c: &ChatId| c.key();
    match &e.kind {
        ProviderEventKind::Message(m) => json!({"instance": e.instance, "message": {
            "id": m.wa_message_id, "chat": key(&m.chat), "sender": m.sender.as_ref().map(key),
            "sender_name": m.sender_name, "from_me": m.from_me, "content": m.content,
            "media": m.media.as_ref().map(|md| {
                let (k, v) = match &md.source {
                    MediaSource::Url(u) => ("url", u),
                    MediaSource::CloudMediaId(i) => ("cloud_media_id", i),
                    MediaSource::Base64(b) => ("base64", b),
                };
                json!({k: v, "mime_type": md.mime_type, "sha256": md.sha256, "filename": md.filename})
            }),
            "context_id": m.context_id, "at": m.at.as_millis()}}),
        ProviderEventKind::Status(r) => json!({"instance": e.instance, "status": {
            "id": r.provider_message_id, "status": r.status.as_str(), "at": r.at.as_millis(),
            "error_code": r.error_code, "error_message": r.error_message}}),
        ProviderEventKind::Connection { state, reason } => {
            json!({"instance": e.instance, "connection": {"state": state, "reason": reason}})
        }
        ProviderEventKind::Qr { raw } => json!({"instance": e.instance, "qr": {"raw": raw}}),
    }
}

/// Checks `parse` against every case of a webhook fixture file: the exact
/// events, and `Malformed` for its malformed bodies.
#[cfg(test)]
pub(crate) fn check_webhook_fixtures(
    fixtures: &str,
    parse: impl Fn(&[u8]) -> Result<Vec<ProviderEvent>, WebhookError>,
) {
    let fixtures: Value = serde_json::from_str(fixtures).expect("fixtures are JSON");
    assert!(fixtures["_source"].is_string(), "fixtures say where their shapes come from");
    for case in fixtures["cases"].as_array().unwrap() {
        let body = serde_json::to_vec(&case["body"]).unwrap();
        let events = parse(&body).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        let got: Vec<Value> = events.iter().map(event_json).collect();
        assert_eq!(Value::Array(got), case["events"], "{}", case["name"]);
    }
    for case in fixtures["malformed"].as_array().unwrap() {
        let body = match &case["raw"] {
            Value::String(raw) => raw.clone().into_bytes(),
            _ => serde_json::to_vec(&case["body"]).unwrap(),
        };
        assert!(matches!(parse(&body), Err(WebhookError::Malformed(_))), "{}", case["name"]);
    }
}

/// `GET /{version}/{media_id}` answers a download URL that lives about five
/// minutes; both requests carry the access token.
fn media_fetch(config: &Value, source: &crate::MediaSource) -> Option<crate::MediaFetch> {
    let crate::MediaSource::CloudMediaId(id) = source else { return crate::MediaFetch::plain(source) };
    let cfg: CloudApiConfig = serde_json::from_value(config.clone()).ok()?;
    let url = crate::http::url(&cfg.base_url, &[&cfg.api_version, id], &[]).ok()?.to_string();
    let headers = vec![("Authorization".into(), format!("Bearer {}", cfg.access_token))];
    Some(crate::MediaFetch::Lookup { url, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_looked_up_at_the_graph_api_with_the_token() {
        let config =
            json!({"access_token": "t", "phone_number_id": "1", "base_url": "http://g", "api_version": "v21.0"});
        assert_eq!(
            media_fetch(&config, &crate::MediaSource::CloudMediaId("1013859600285441".into())),
            Some(crate::MediaFetch::Lookup {
                url: "http://g/v21.0/1013859600285441".into(),
                headers: vec![("Authorization".into(), "Bearer t".into())]
            })
        );
    }

    // Unit tests build no `reqwest::Client` (no TLS crypto provider is
    // installed here), so they call the functions the trait methods wrap.

    /// Meta's webhook examples (fixtures/cloud_api/webhooks.json).
    #[test]
    fn webhooks_parse_to_the_events_they_carry() {
        check_webhook_fixtures(include_str!("../fixtures/cloud_api/webhooks.json"), parse_webhook);
    }

    #[test]
    fn webhook_settings_are_kept_and_read_back() {
        let kept = |v: Value| serde_json::to_value(serde_json::from_value::<CloudApiConfig>(v).unwrap()).unwrap();
        let config = kept(json!({"access_token": "t", "phone_number_id": "106540352242922",
            "app_secret": "s3cret", "verify_token": "v"}));
        assert_eq!(setting(&config, "phone_number_id").as_deref(), Some("106540352242922"));
        assert_eq!(app_secret(&config).as_deref(), Some("s3cret"));
        assert_eq!(verify_token(&config).as_deref(), Some("v"));
        let plain = kept(json!({"access_token": "t", "phone_number_id": "1"}));
        assert_eq!(plain.get("app_secret"), None, "no null settings stored");
        assert_eq!((app_secret(&plain), verify_token(&plain)), (None, None));
        assert_eq!(app_secret(&json!({"app_secret": ""})), None);
    }

    /// A sender WhatsApp names only by a business-scoped user id (no
    /// `from`) cannot be addressed: that message is skipped, the rest kept.
    #[test]
    fn messages_without_a_phone_sender_are_skipped() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"metadata": {"phone_number_id": "106540352242922"}, "messages": [
            {"from_user_id": "US.13491208655302741918", "id": "wamid.A", "timestamp": "1750000000", "type": "text", "text": {"body": "x"}},
            {"from": "16505551234", "id": "wamid.B", "timestamp": "1750000000", "type": "text", "text": {"body": "y"}}
        ]}}]}]});
        let events = parse_webhook(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(events.len(), 1);
        assert!(matches!(&events[0].kind, ProviderEventKind::Message(m) if m.wa_message_id == "wamid.B"));
    }

    /// Request examples from Meta's messages reference (fixtures/cloud_api/).
    #[test]
    fn request_bodies_match_metas_examples() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/cloud_api/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let mut content = case["expected"].clone();
            let to = content["to"].as_str().unwrap().to_owned();
            for k in ["messaging_product", "recipient_type", "to"] {
                content.as_object_mut().unwrap().remove(k);
            }
            let quoted = content.as_object_mut().unwrap().remove("context");
            let mut msg = crate::test_message(content, &to);
            msg.reply_to =
                quoted.map(|c| crate::Quoted { id: c["message_id"].as_str().unwrap().into(), from_me: false });
            let body = request_body(&msg).unwrap();
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
    }

    #[test]
    fn groups_are_refused_and_errors_classified() {
        let e =
            request_body(&crate::test_message(json!({"type":"text","text":{"body":"x"}}), "120363012345678901@g.us"));
        assert!(matches!(e, Err(ProviderError::Rejected { .. })));
        assert!(matches!(classify_error(400, 130429, "", None), ProviderError::Throttled { .. }));
        assert!(matches!(classify_error(400, 131056, "", None), ProviderError::Throttled { .. }));
        assert!(matches!(classify_error(500, 131000, "", None), ProviderError::Unavailable { .. }));
        assert!(matches!(classify_error(401, 190, "", None), ProviderError::Unavailable { .. }));
        assert!(matches!(classify_error(400, 131026, "", None), ProviderError::Rejected { .. }));
        assert!(matches!(classify_error(400, 132001, "", None), ProviderError::Rejected { .. }));
        assert!(matches!(classify_error(503, 99999, "", None), ProviderError::Unavailable { .. }));
    }
}
