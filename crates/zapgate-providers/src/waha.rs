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

use crate::{Connection, ConnectionState, OutboundMessage, Provider, ProviderError, Qr, SendAccepted};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_domain::{ChatId, MessageContent};

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

/// The route and body WAHA expects for one message.
pub fn request(session: &str, msg: &OutboundMessage) -> Result<(&'static str, Value), ProviderError> {
    let chat_id = match &msg.to {
        ChatId::Phone(d) => format!("{d}@c.us"),
        other => other.key(),
    };
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
    Ok(match &msg.content {
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
        other => {
            return Err(ProviderError::Rejected {
                code: "unsupported_message".into(),
                message: format!("the WAHA adapter does not send {} messages yet", other.kind()),
            });
        }
    })
}

/// The message id in any of the engines' answers.
pub fn message_id(answer: &Value) -> Option<String> {
    answer["id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| answer["id"]["_serialized"].as_str().map(str::to_owned))
        .or_else(|| answer["key"]["id"].as_str().map(str::to_owned))
}

pub fn classify_status(status: u16, message: String, retry_after: Option<Duration>) -> ProviderError {
    crate::http::classify_status("waha", status, message, retry_after, &[401, 422])
}

#[async_trait]
impl Provider for Waha {
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
        let mut c: WahaConfig = serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
        if c.session.trim().is_empty() {
            return Err("config.session is required".into());
        }
        c.base_url = c.base_url.trim_end_matches('/').to_owned();
        Ok(serde_json::to_value(c).expect("serialisable"))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg = settings(&msg.config)?;
        let (route, body) = request(&cfg.session, msg)?;
        let answer = crate::http::send(self.request(&cfg, Method::POST, &["api", route], &[])?.json(&body)).await?;
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

    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let cfg = settings(config)?;
        let body = json!({"name": cfg.session, "start": true});
        let answer =
            crate::http::send(self.request(&cfg, Method::POST, &["api", "sessions"], &[])?.json(&body)).await?;
        let exists = answer.status == 422 && failure(&answer).to_string().contains("already exists");
        if answer.ok() || exists { Ok(None) } else { Err(failure(&answer)) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_openapi_examples() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let (route, body) =
                request("default", &crate::test_message(case["content"].clone(), case["to"].as_str().unwrap()))
                    .unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
    }

    #[test]
    fn ids_are_read_from_every_engines_answer() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/waha/send_answers.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            assert_eq!(message_id(&case["answer"]).as_deref(), case["id"].as_str(), "{}", case["engine"]);
        }
    }
}
