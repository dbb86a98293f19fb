//! A tenant's webhook receiver: takes zapgate's webhook requests on a local
//! port, checks each Standard Webhooks signature with its own code (written
//! from the specification, independent of zapgate's signing), and keeps
//! what arrived for tests to inspect. It can be told to fail.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`: the event id, the same on every retry.
    pub id: String,
    pub timestamp: String,
    pub signatures: Vec<String>,
    pub body: Value,
    /// Whether a `v1` signature matched the secret set with `set_secret`
    /// (false while none is set).
    pub verified: bool,
}

impl Delivery {
    /// The event's `type`.
    pub fn event_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
pub struct Receiver {
    got: Mutex<Vec<Delivery>>,
    secret: Mutex<Option<String>>,
    /// Answer 500 to this many more requests.
    fail: AtomicU32,
}

/// Serves a receiver on a local port; returns it and its URL.
pub async fn start() -> std::io::Result<(Arc<Receiver>, String)> {
    let r = Arc::new(Receiver::default());
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((r, url))
}

impl Receiver {
    /// The endpoint's `whsec_…` secret, to verify what arrives from now on.
    pub fn set_secret(&self, secret: &str) {
        *self.secret.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret.to_owned());
    }

    /// Answers 500 to the next `n` requests.
    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, Ordering::SeqCst);
    }

    pub fn got(&self) -> Vec<Delivery> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `n` requests (counting retries) for which `keep` holds
    /// arrived; panics after `timeout` with what did.
    pub async fn wait_for(&self, n: usize, keep: impl Fn(&Delivery) -> bool, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<Delivery> = self.got().into_iter().filter(|d| keep(d)).collect();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only {} of {n} webhook requests arrived: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The Standard Webhooks check: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`
/// where the key is the base64 after `whsec_`.
pub fn verifies(secret: &str, id: &str, timestamp: &str, body: &[u8], signatures: &[String]) -> bool {
    let Some(Ok(key)) = secret.strip_prefix("whsec_").map(|k| STANDARD.decode(k)) else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.contains(&expected)
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (id, timestamp) = (h("webhook-id"), h("webhook-timestamp"));
    let signatures: Vec<String> = h("webhook-signature").split(' ').map(str::to_owned).collect();
    let secret = r.secret.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let verified = secret.is_some_and(|s| verifies(&s, &id, &timestamp, &body, &signatures));
    r.got.lock().unwrap_or_else(|p| p.into_inner()).push(Delivery {
        id,
        timestamp,
        signatures,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
    });
    let fail = r.fail.load(Ordering::SeqCst);
    if fail > 0 && r.fail.compare_exchange(fail, fail - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}
