//! What providers tell zapgate through their webhooks, in one shape.
//!
//! Each adapter turns its provider's webhook body into [`ProviderEvent`]s
//! (`Provider::parse_webhook`) and says how a POST proves where it came from
//! (`Provider::verify_webhook`). Everything after that — dedupe, the status
//! rules, storing inbound messages, events — is provider-agnostic.

use crate::{ConnectionState, StatusReport};
use reqwest::header::HeaderMap;
use zapgate_domain::{ChatId, Timestamp};

/// One event out of a provider's webhook POST (one POST may carry several).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEvent {
    /// Which instance it is about, as the provider names it: the Cloud API's
    /// `metadata.phone_number_id`, WAHA's `session`, Evolution's `instance`,
    /// UAZAPI's instance token (or name when the payload has no token).
    pub instance: String,
    pub kind: ProviderEventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEventKind {
    /// A later status of a message the provider accepted from us
    /// (delivered, read, played, failed; `sent` where the provider reports it).
    Status(StatusReport),
    /// A message in a chat of the instance: from a contact, or `from_me`
    /// (sent by this number from the phone, or an echo of our own send).
    Message(InboundMessage),
    /// The instance's WhatsApp connection changed.
    Connection { state: ConnectionState, reason: Option<String> },
    /// A new QR code to scan (`raw`: the string it encodes, when given).
    Qr { raw: Option<String> },
}

/// A message as it arrived, before zapgate stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// WhatsApp's id of the message (`wamid.…`, or the Baileys key id): the
    /// dedupe key, whatever the provider re-sends.
    pub wa_message_id: String,
    /// The chat it belongs to: the contact's number, a group or a LID.
    pub chat: ChatId,
    /// Who wrote it, when that differs from `chat` (a group participant).
    pub sender: Option<ChatId>,
    /// The sender's WhatsApp profile name, when the provider gives it.
    pub sender_name: Option<String>,
    /// Sent by the instance's own number (from the phone, or our own send
    /// echoed back): never treated as a message from a contact.
    pub from_me: bool,
    /// The content in the Cloud API's shape: `{"type":"text","text":{"body":…}}`,
    /// `{"type":"image","image":{"mime_type":…,"caption":…}}`, `location`,
    /// `reaction`, … A kind zapgate cannot map is `{"type":"unsupported",
    /// "unsupported":{"provider_type":…}}`, never dropped.
    pub content: serde_json::Value,
    /// Where the provider serves the media of a media message, if it does.
    pub media: Option<InboundMedia>,
    /// The message this one replies to, as WhatsApp's id.
    pub context_id: Option<String>,
    pub at: Timestamp,
}

/// A media attachment the provider holds; zapgate fetches it at receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMedia {
    /// A URL to download it from, or for the Cloud API the media id
    /// (`GET /{media_id}` gives a URL that lives about five minutes).
    pub source: MediaSource,
    pub mime_type: Option<String>,
    pub sha256: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MediaSource {
    Url(String),
    /// The Cloud API's media id.
    CloudMediaId(String),
    /// The provider sent the bytes inline, base64 (Evolution with `base64: true`).
    Base64(String),
}

/// How to get the bytes of an inbound media attachment, worked out at
/// receipt (from the instance's settings) and carried out later by the
/// media fetcher through the egress client. Stored with the pending media
/// until it is fetched, so it may carry the provider's credentials.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MediaFetch {
    /// `GET url` with these headers answers the bytes.
    Get { url: String, headers: Vec<(String, String)> },
    /// `GET url` with these headers answers JSON whose `url` answers the
    /// bytes to the same headers (the Cloud API's media id lookup).
    Lookup { url: String, headers: Vec<(String, String)> },
    /// The bytes came in the webhook, base64.
    Inline { base64: String },
}

impl MediaFetch {
    /// The plain recipe for a source: its URL with no credentials, or its
    /// inline bytes; None for a source only the provider can resolve.
    pub fn plain(source: &MediaSource) -> Option<MediaFetch> {
        match source {
            MediaSource::Url(url) => Some(MediaFetch::Get { url: url.clone(), headers: Vec::new() }),
            MediaSource::Base64(b) => Some(MediaFetch::Inline { base64: b.clone() }),
            MediaSource::CloudMediaId(_) => None,
        }
    }
}

/// Why a webhook body was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    /// Not JSON, or not the provider's webhook shape: answered 400, nothing stored.
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// What proves a webhook POST came from the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`
    /// (the Cloud API; the app secret is in the instance's settings).
    HubSignature,
    /// `X-Webhook-Hmac: <hex HMAC-SHA512(key, raw body)>` (WAHA's HMAC).
    WahaHmac,
    /// Providers that do not sign (Evolution, UAZAPI): the account's secret
    /// token in the URL (`?token=`) or the `X-Webhook-Token` header.
    Token,
}

/// The headers and query a webhook arrived with, for [`WebhookAuth`] checks.
pub struct WebhookRequest<'a> {
    pub headers: &'a HeaderMap,
    /// The `token` query parameter, if any.
    pub token: Option<&'a str>,
    pub body: &'a [u8],
}

/// A timestamp in seconds (as providers send them, number or string) as ours.
pub fn unix_seconds(v: &serde_json::Value) -> Option<Timestamp> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_i64()?,
        serde_json::Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    // Some providers send milliseconds: anything past year 33658 in seconds is.
    let millis = if secs > 1_000_000_000_000 { secs } else { secs * 1000 };
    Some(Timestamp::from_millis(millis))
}

impl WebhookAuth {
    /// Whether `req` proves it came from the provider, given the secret of
    /// its account (the Cloud API app secret, WAHA's HMAC key, or the token).
    /// Comparisons take constant time.
    pub fn verify(self, secret: &str, req: &WebhookRequest<'_>) -> bool {
        use hmac::{Hmac, KeyInit, Mac};
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            WebhookAuth::HubSignature => {
                let Some(sig) = header("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")) else {
                    return false;
                };
                let Ok(sig) = hex::decode(sig) else { return false };
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
                mac.update(req.body);
                mac.verify_slice(&sig).is_ok()
            }
            WebhookAuth::WahaHmac => {
                if header("x-webhook-hmac-algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("sha512")) {
                    return false;
                }
                let Some(Ok(sig)) = header("x-webhook-hmac").map(hex::decode) else { return false };
                let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
                mac.update(req.body);
                mac.verify_slice(&sig).is_ok()
            }
            WebhookAuth::Token => {
                let given = req.token.or_else(|| header("x-webhook-token")).unwrap_or_default();
                zapgate_domain::token::constant_time_eq(given.as_bytes(), secret.as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};

    fn request<'a>(headers: &'a HeaderMap, token: Option<&'a str>, body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest { headers, token, body }
    }

    #[test]
    fn a_hub_signature_is_checked_over_the_raw_body() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        headers.insert("x-hub-signature-256", sig.parse().unwrap());
        assert!(WebhookAuth::HubSignature.verify("app-secret", &request(&headers, None, body)));
        assert!(!WebhookAuth::HubSignature.verify("other-secret", &request(&headers, None, body)));
        assert!(!WebhookAuth::HubSignature.verify("app-secret", &request(&headers, None, b"{}")));
        assert!(!WebhookAuth::HubSignature.verify("app-secret", &request(&HeaderMap::new(), None, body)));
    }

    #[test]
    fn a_waha_hmac_is_sha512_of_the_body() {
        let body = br#"{"event":"message"}"#;
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(b"key").unwrap();
        mac.update(body);
        let mut headers = HeaderMap::new();
        headers.insert("x-webhook-hmac", hex::encode(mac.finalize().into_bytes()).parse().unwrap());
        headers.insert("x-webhook-hmac-algorithm", "sha512".parse().unwrap());
        assert!(WebhookAuth::WahaHmac.verify("key", &request(&headers, None, body)));
        assert!(!WebhookAuth::WahaHmac.verify("wrong", &request(&headers, None, body)));
    }

    #[test]
    fn a_token_comes_from_the_query_or_the_header() {
        let none = HeaderMap::new();
        assert!(WebhookAuth::Token.verify("s3cret", &request(&none, Some("s3cret"), b"")));
        assert!(!WebhookAuth::Token.verify("s3cret", &request(&none, Some("s3cre"), b"")));
        assert!(!WebhookAuth::Token.verify("s3cret", &request(&none, None, b"")));
        let mut headers = HeaderMap::new();
        headers.insert("x-webhook-token", "s3cret".parse().unwrap());
        assert!(WebhookAuth::Token.verify("s3cret", &request(&headers, None, b"")));
    }

    #[test]
    fn seconds_and_milliseconds_both_read_as_times() {
        assert_eq!(unix_seconds(&serde_json::json!(1_700_000_000)), Some(Timestamp::from_millis(1_700_000_000_000)));
        assert_eq!(unix_seconds(&serde_json::json!("1700000000")), Some(Timestamp::from_millis(1_700_000_000_000)));
        assert_eq!(
            unix_seconds(&serde_json::json!(1_700_000_000_123i64)),
            Some(Timestamp::from_millis(1_700_000_000_123))
        );
        assert_eq!(unix_seconds(&serde_json::json!(null)), None);
    }
}
