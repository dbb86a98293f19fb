//! Webhook signing per Standard Webhooks (<https://www.standardwebhooks.com>):
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64
//! HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, with secrets written
//! `whsec_<base64 key>`. Several signatures (during a secret rotation) are
//! space-separated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

pub const SECRET_PREFIX: &str = "whsec_";

/// The shape an endpoint takes events in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// zapgate's events, signed per Standard Webhooks.
    #[default]
    Standard,
    /// The WhatsApp Cloud API's webhook payloads (`whatsapp_business_account`),
    /// signed with `X-Hub-Signature-256` under the endpoint's app secret.
    CloudApi,
    /// A Chatwoot integration's inbox: events become Chatwoot API calls
    /// (contacts, conversations, messages). Made and managed by the integration.
    Chatwoot,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::CloudApi => "cloud_api",
            Self::Chatwoot => "chatwoot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Standard, Self::CloudApi, Self::Chatwoot].into_iter().find(|f| f.as_str() == s)
    }
}

/// The key a receiver verifies with. Shown to the tenant, stored as given.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut key = [0u8; 24];
        rand::rng().fill_bytes(&mut key);
        Self(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// Accepts a `whsec_…` string whose key decodes to 24–64 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        let key = STANDARD.decode(s.strip_prefix(SECRET_PREFIX)?).ok()?;
        (24..=64).contains(&key.len()).then(|| Self(s.to_owned()))
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        STANDARD.decode(&self.0[SECRET_PREFIX.len()..]).expect("validated at construction")
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key()).expect("HMAC takes any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// JSON with every non-ASCII character escaped (`á` → `\u00e1`, emoji as a
/// UTF-16 surrogate pair), as Meta sends it: some Cloud API clients re-escape
/// the body before checking its signature, so raw UTF-8 would fail there.
pub fn ascii_json(v: &serde_json::Value) -> Vec<u8> {
    let text = serde_json::to_string(v).expect("JSON values serialise");
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Outside ASCII only string contents remain in serialised JSON.
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// `X-Hub-Signature-256`: `sha256=` and the lower-case hex HMAC-SHA256 of
/// the body under the app secret.
pub fn hub_signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification.
    #[test]
    fn signs_the_standard_webhooks_reference_example() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn cloud_bodies_are_ascii_and_signed_like_meta() {
        let body = ascii_json(&serde_json::json!({"a": "á😀"}));
        assert_eq!(body, br#"{"a":"\u00e1\ud83d\ude00"}"#);
        // Python: hmac.new(b"meta-app-secret", body, hashlib.sha256).hexdigest()
        assert_eq!(
            hub_signature("meta-app-secret", &body),
            "sha256=bd4ffd016a470477686d4bff050db477674bb3f2131283a6d8e396b074be1a69"
        );
    }

    #[test]
    fn generated_secrets_parse_and_bad_ones_do_not() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(s.reveal()), Some(s.clone()));
        assert!(WebhookSecret::parse("whsec_short").is_none());
        assert!(WebhookSecret::parse("nope").is_none());
        assert!(!format!("{s:?}").contains(s.reveal()));
    }
}
