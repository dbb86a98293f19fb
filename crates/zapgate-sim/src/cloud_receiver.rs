//! A receiver of WhatsApp Cloud API webhooks, as Meta's subscribers (Cloud
//! API clients, Chatwoot's `/webhooks/whatsapp/{+phone}`) are: answers the
//! `hub.challenge` handshake only with its verify token, and checks
//! `X-Hub-Signature-256` over the raw bytes with its own code. It keeps the
//! raw body too, so tests can check it is ASCII-only and sent with a length.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CloudDelivery {
    /// The `{phone}` of `/webhooks/whatsapp/{phone}` it was posted to.
    pub phone: String,
    pub raw: Vec<u8>,
    pub body: Value,
    /// Whether `X-Hub-Signature-256` matched the app secret.
    pub verified: bool,
    /// The `Content-Length` header, if one was sent (chunked bodies have none).
    pub content_length: Option<usize>,
}

pub struct CloudReceiver {
    app_secret: String,
    verify_token: String,
    got: Mutex<Vec<CloudDelivery>>,
}

/// Serves a receiver on a local port; returns it and its base URL (post to
/// `{base}/webhooks/whatsapp/{phone}`).
pub async fn start(app_secret: &str, verify_token: &str) -> std::io::Result<(Arc<CloudReceiver>, String)> {
    let r = Arc::new(CloudReceiver {
        app_secret: app_secret.to_owned(),
        verify_token: verify_token.to_owned(),
        got: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/webhooks/whatsapp/{phone}", axum::routing::get(verify).post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((r, base))
}

impl CloudReceiver {
    pub fn got(&self) -> Vec<CloudDelivery> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `n` deliveries for which `keep` holds arrived; panics
    /// after `timeout` with what did.
    pub async fn wait_for(
        &self,
        n: usize,
        keep: impl Fn(&CloudDelivery) -> bool,
        timeout: Duration,
    ) -> Vec<CloudDelivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<CloudDelivery> = self.got().into_iter().filter(|d| keep(d)).collect();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "only {} of {n} Cloud webhooks arrived: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn verify(State(r): State<Arc<CloudReceiver>>, Query(q): Query<HashMap<String, String>>) -> (StatusCode, String) {
    let ok = q.get("hub.mode").map(String::as_str) == Some("subscribe")
        && q.get("hub.verify_token") == Some(&r.verify_token);
    match q.get("hub.challenge") {
        Some(challenge) if ok => (StatusCode::OK, challenge.clone()),
        _ => (StatusCode::FORBIDDEN, String::new()),
    }
}

async fn receive(
    State(r): State<Arc<CloudReceiver>>,
    Path(phone): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let signing = crate::hooks::Signing::HubSha256(r.app_secret.clone());
    let expected = crate::hooks::signature_headers(&signing, &body).pop().map(|(_, v)| v);
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    r.got.lock().unwrap_or_else(|p| p.into_inner()).push(CloudDelivery {
        phone,
        raw: body.to_vec(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified: expected.is_some() && header("x-hub-signature-256") == expected.as_deref(),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
    });
    StatusCode::OK
}
