//! UAZAPI (uazapiGO v2) adapter: `POST {base_url}/send/text` and
//! `/send/media` with the instance `token` header. Shapes from the uazapiGO
//! v2 OpenAPI (as copied in euventura/uazapi-sdk) and docs.uazapi.com, see
//! `../shared/notes/provider-shapes.md` §4 and `fixtures/uazapi/`. The id
//! status events use is `messageid`, not `id`.
//!
//! Errors (`{"error":"…"}`): 401 and 5xx are retried (spending attempts),
//! 429 waits, 400 and other 4xx fail the message.

use crate::{OutboundMessage, Provider, ProviderError, SendAccepted};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use zapgate_domain::{ChatId, MessageContent};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UazapiConfig {
    /// e.g. `https://acme.uazapi.com`
    pub base_url: String,
    /// The instance token (header `token`).
    pub token: String,
}

pub struct Uazapi {
    http: reqwest::Client,
}

impl Uazapi {
    pub fn new(http: reqwest::Client) -> Self {
        Self { http }
    }
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

    fn check_config(&self, config: &Value) -> Result<Value, String> {
        let mut c: UazapiConfig = serde_json::from_value(config.clone()).map_err(|e| format!("config: {e}"))?;
        if c.token.trim().is_empty() {
            return Err("config.token is required".into());
        }
        c.base_url = c.base_url.trim_end_matches('/').to_owned();
        Ok(serde_json::to_value(c).expect("serialisable"))
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg: UazapiConfig = serde_json::from_value(msg.config.clone()).map_err(|e| ProviderError::Rejected {
            code: "bad_config".into(),
            message: format!("the instance's UAZAPI settings are invalid: {e}"),
        })?;
        let (route, body) = request(msg)?;
        let req = self.http.post(format!("{}/send/{route}", cfg.base_url)).header("token", &cfg.token).json(&body);
        let answer = crate::http::send(req).await?;
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
        let message = json["error"].as_str().map(str::to_owned).unwrap_or_else(|| format!("HTTP {}", answer.status));
        Err(crate::http::classify_status("uazapi", answer.status, message, answer.retry_after, &[401]))
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
