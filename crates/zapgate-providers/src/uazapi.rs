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

use crate::{Connection, ConnectionState, OutboundMessage, Provider, ProviderError, Qr, SendAccepted};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use zapgate_domain::{ChatId, MessageContent};

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
    Ok(match &msg.content {
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
        other => {
            return Err(ProviderError::Rejected {
                code: "unsupported_message".into(),
                message: format!("the UAZAPI adapter does not send {} messages yet", other.kind()),
            });
        }
    })
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
        let answer = crate::http::send(self.request(&cfg, Method::POST, &["send", route])?.json(&body)).await?;
        let json = answer.json();
        if answer.ok() {
            let id = json["messageid"].as_str().ok_or_else(|| ProviderError::Unavailable {
                code: "bad_response".into(),
                message: "the UAZAPI answer has no messageid".into(),
                retry_after: None,
            })?;
            let wa_id = json["chatid"].as_str().and_then(|c| c.strip_suffix("@s.whatsapp.net")).map(str::to_owned);
            return Ok(SendAccepted { provider_message_id: id.to_owned(), wa_id });
        }
        Err(failure(&answer))
    }

    async fn check_server(&self, settings_: &Value) -> Result<(), ProviderError> {
        let cfg = settings(settings_)?;
        let answer = crate::http::send(self.admin(&cfg, Method::GET, &["instance", "all"])?).await?;
        if answer.ok() { Ok(()) } else { Err(failure(&answer)) }
    }

    async fn create_session(&self, config: &Value) -> Result<Option<Value>, ProviderError> {
        let cfg = settings(config)?;
        if !cfg.token.is_empty() {
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
        Ok(Some(json!({ "token": token })))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_match_the_v2_spec() {
        let fixtures: Value = serde_json::from_str(include_str!("../fixtures/uazapi/send_requests.json")).unwrap();
        for case in fixtures["cases"].as_array().unwrap() {
            let msg = crate::test_message(case["content"].clone(), case["to"].as_str().unwrap());
            let (route, body) = request(&msg).unwrap();
            assert_eq!(route, case["route"], "{}", case["name"]);
            assert_eq!(body, case["expected"], "{}", case["name"]);
        }
    }
}
