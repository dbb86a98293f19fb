//! The webhooks the simulated providers post back to zapgate: status
//! receipts of what they sent and inbound messages, signed the way each
//! real provider signs (or does not).

use serde_json::Value;
use std::time::Duration;

/// Where one simulated session/instance posts its events, and how it signs them.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub url: String,
    pub signing: Signing,
    /// Extra headers the provider was told to send (Evolution's `headers`,
    /// WAHA's `customHeaders`).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Signing {
    /// Evolution, UAZAPI: no signature.
    None,
    /// The Cloud API: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`.
    HubSha256(String),
    /// WAHA: `X-Webhook-Hmac: <hex HMAC-SHA512(key, body)>`.
    WahaSha512(String),
}

/// The client every simulated webhook is posted with.
pub(crate) fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        // reqwest is built without a TLS provider of its own (see the
        // workspace manifest); a standalone sim has installed none yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client")
    })
}

/// The headers a provider would sign `body` with.
pub fn signature_headers(signing: &Signing, body: &[u8]) -> Vec<(String, String)> {
    use hmac::{Hmac, KeyInit, Mac};
    match signing {
        Signing::None => vec![],
        Signing::HubSha256(secret) => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
            mac.update(body);
            vec![("x-hub-signature-256".into(), format!("sha256={}", hex::encode(mac.finalize().into_bytes())))]
        }
        Signing::WahaSha512(key) => {
            let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key.as_bytes()).expect("any key");
            mac.update(body);
            vec![
                ("x-webhook-hmac".into(), hex::encode(mac.finalize().into_bytes())),
                ("x-webhook-hmac-algorithm".into(), "sha512".into()),
            ]
        }
    }
}

/// Posts `body` once; the HTTP status, or why there was none.
pub async fn post(hook: &Hook, body: &Value) -> Result<u16, String> {
    let bytes = serde_json::to_vec(body).expect("JSON serialises");
    let mut req = client().post(&hook.url).header("content-type", "application/json");
    for (k, v) in signature_headers(&hook.signing, &bytes).into_iter().chain(hook.headers.iter().cloned()) {
        req = req.header(k, v);
    }
    req.body(bytes).send().await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// Posts `body` in the background after `delay`, retrying non-2xx answers a
/// few times a second apart, as the real providers retry.
pub fn post_later(hook: Hook, body: Value, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        for _ in 0..5 {
            if matches!(post(&hook, &body).await, Ok(200..=299)) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
