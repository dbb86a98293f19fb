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

use crate::{Connection, ConnectionState, OutboundMessage, Provider, ProviderError, Qr, SendAccepted};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_domain::{ChatId, MessageContent};

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

/// The route and body Evolution expects for one message.
pub fn request(msg: &OutboundMessage) -> Result<(&'static str, Value), ProviderError> {
    // Evolution takes digits or a JID (groups, LIDs) in `number`.
    let number = match &msg.to {
        ChatId::Phone(d) => d.clone(),
        other => other.key(),
    };
    let unsupported = |kind: &str| ProviderError::Rejected {
        code: "unsupported_message".into(),
        message: format!("the Evolution adapter does not send {kind} messages yet"),
    };
    Ok(match &msg.content {
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
        other => return Err(unsupported(other.kind())),
    })
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
        let mut c: EvolutionConfig = serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
        if c.api_key.trim().is_empty() || c.instance.trim().is_empty() {
            return Err("config.api_key and config.instance are required".into());
        }
        c.base_url = c.base_url.trim_end_matches('/').to_owned();
        Ok(serde_json::to_value(c).expect("serialisable"))
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

    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let cfg = settings(config)?;
        let body = json!({"instanceName": cfg.instance, "integration": "WHATSAPP-BAILEYS", "qrcode": true});
        let answer = crate::http::send(self.request(&cfg, Method::POST, &["instance", "create"])?.json(&body)).await?;
        // 403: the name is taken — by this instance, made before.
        if answer.ok() || answer.status == 403 { Ok(None) } else { Err(failure(&answer)) }
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
        Ok(self.http.request(method, crate::http::url(&cfg.base_url, segments, &[])?).header("apikey", &cfg.api_key))
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
            let (route, body) =
                request(&crate::test_message(case["content"].clone(), case["to"].as_str().unwrap())).unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
        let loc = crate::test_message(
            json!({"type":"location","location":{"latitude":1.0,"longitude":2.0}}),
            "+5511999998888",
        );
        assert!(matches!(request(&loc), Err(ProviderError::Rejected { .. })));
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
