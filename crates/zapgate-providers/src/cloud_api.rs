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

use crate::{OutboundMessage, Provider, ProviderError, SendAccepted};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use zapgate_domain::ChatId;

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

    async fn send(&self, msg: &OutboundMessage) -> Result<SendAccepted, ProviderError> {
        let cfg: CloudApiConfig = serde_json::from_value(msg.config.clone()).map_err(|e| ProviderError::Rejected {
            code: "bad_config".into(),
            message: format!("the instance's Cloud API settings are invalid: {e}"),
        })?;
        let url = format!("{}/{}/{}/messages", cfg.base_url, cfg.api_version, cfg.phone_number_id);
        let req = self.http.post(url).bearer_auth(&cfg.access_token).json(&request_body(msg)?);
        let answer = crate::http::send(req).await?;
        let (status, retry_after) = (answer.status, answer.retry_after);
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
        match serde_json::from_slice::<ErrorEnvelope>(&answer.body) {
            Ok(e) => {
                let message = match e.error.error_subcode {
                    Some(sub) => format!("{} (subcode {sub})", e.error.message),
                    None => e.error.message,
                };
                Err(classify_error(status, e.error.code, &message, retry_after))
            }
            Err(_) => Err(classify_error(status, 0, &format!("HTTP {status} without a Graph error body"), retry_after)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let body = request_body(&crate::test_message(content, &to)).unwrap();
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
