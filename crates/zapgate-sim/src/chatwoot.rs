//! A simulated Chatwoot: fires its account webhooks (`message_created`, in
//! the shape of Chatwoot's `Message#webhook_data`, signed as newer releases
//! sign them) and serves the attachment links those name (Active Storage
//! redirect URLs, which answer 302 to the stored file).

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Chatwoot {
    base: String,
    /// Stored files by key: (MIME type, bytes).
    files: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

/// Serves a simulated Chatwoot on a local port; returns it and its base URL.
pub async fn start() -> std::io::Result<(Arc<Chatwoot>, String)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cw = Arc::new(Chatwoot { base: base.clone(), ..Chatwoot::default() });
    let app = axum::Router::new()
        .route("/rails/active_storage/blobs/redirect/{key}/{name}", axum::routing::get(redirect))
        .route("/storage/{key}", axum::routing::get(file))
        .with_state(cw.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((cw, base))
}

/// One message as an agent (or a note, or a contact) wrote it in Chatwoot.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub account_id: u64,
    pub inbox_id: u64,
    /// The conversation's display id.
    pub conversation_id: u64,
    /// `outgoing` (an agent's reply), `incoming`, `activity` or `template`.
    pub message_type: &'static str,
    pub private: bool,
    pub content: Option<String>,
    /// The contact's phone, E.164.
    pub contact_phone: String,
    /// The contact's `source_id` in the inbox.
    pub source_id: String,
    /// Attachments: (Chatwoot `file_type`, `data_url`).
    pub attachments: Vec<(String, String)>,
    /// The message's own `source_id` (set when an integration created it).
    pub message_source_id: Option<String>,
}

impl Message {
    /// An agent's reply in a conversation with `phone`.
    pub fn reply(id: u64, conversation_id: u64, phone: &str, text: &str) -> Self {
        Message {
            id,
            account_id: 1,
            inbox_id: 7,
            conversation_id,
            message_type: "outgoing",
            private: false,
            content: Some(text.to_owned()),
            contact_phone: phone.to_owned(),
            source_id: phone.trim_start_matches('+').to_owned(),
            attachments: Vec::new(),
            message_source_id: None,
        }
    }
}

impl Chatwoot {
    /// Stores a file; returns the `data_url` Chatwoot would give it (a redirect).
    pub fn add_file(&self, name: &str, mime: &str, bytes: &[u8]) -> String {
        let key = format!("blob{}", self.files.lock().unwrap_or_else(|p| p.into_inner()).len() + 1);
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (mime.to_owned(), bytes.to_vec()));
        format!("{}/rails/active_storage/blobs/redirect/{key}/{name}", self.base)
    }

    /// The `message_created` webhook body for `m`.
    pub fn message_created(&self, m: &Message) -> Value {
        let message_type_int =
            ["incoming", "outgoing", "activity", "template"].iter().position(|t| *t == m.message_type).unwrap_or(1);
        let attachments: Vec<Value> = m
            .attachments
            .iter()
            .enumerate()
            .map(|(n, (file_type, url))| {
                json!({"id": n + 1, "message_id": m.id, "file_type": file_type, "account_id": m.account_id,
                       "extension": null, "data_url": url, "thumb_url": url, "file_size": 1024,
                       "width": null, "height": null})
            })
            .collect();
        let contact = json!({"additional_attributes": {}, "custom_attributes": {}, "email": null, "id": 5,
            "identifier": null, "name": "Ana", "phone_number": m.contact_phone, "thumbnail": "", "type": "contact"});
        let mut body = json!({
            "event": "message_created",
            "id": m.id,
            "content": m.content,
            "created_at": "2026-12-06T12:00:00.000Z",
            "message_type": m.message_type,
            "content_type": "text",
            "private": m.private,
            "content_attributes": {},
            "source_id": m.message_source_id,
            "sender": {"id": 1, "name": "Bruno", "avatar_url": "", "type": "user", "email": "bruno@example.com"},
            "inbox": {"id": m.inbox_id, "name": "WhatsApp"},
            "account": {"id": m.account_id, "name": "Acme"},
            "conversation": {
                "additional_attributes": {}, "can_reply": true, "channel": "Channel::Api",
                "contact_inbox": {"id": 9, "contact_id": 5, "inbox_id": m.inbox_id, "source_id": m.source_id,
                    "created_at": "2026-12-01T12:00:00.000Z", "updated_at": "2026-12-01T12:00:00.000Z",
                    "hmac_verified": false, "pubsub_token": "k3Jd8"},
                "id": m.conversation_id, "inbox_id": m.inbox_id,
                "messages": [{"id": m.id, "content": m.content, "account_id": m.account_id, "inbox_id": m.inbox_id,
                    "conversation_id": m.conversation_id, "message_type": message_type_int,
                    "created_at": 1_796_558_400, "private": m.private, "source_id": m.message_source_id,
                    "content_type": "text", "sender_type": "User", "sender_id": 1}],
                "labels": [], "meta": {"sender": contact, "assignee": null, "team": null, "hmac_verified": false},
                "status": "open", "custom_attributes": {}, "snoozed_until": null, "unread_count": 0,
                "priority": null, "timestamp": 1_796_558_400, "created_at": 1_796_558_400
            }
        });
        if !attachments.is_empty() {
            body["attachments"] = Value::Array(attachments);
        }
        body
    }

    /// POSTs a webhook body as Chatwoot does, signed when `secret` is given
    /// (`X-Chatwoot-Signature: sha256=hex(HMAC(secret, "{ts}.{body}"))`).
    pub async fn fire(url: &str, body: &Value, secret: Option<&str>) -> reqwest::Result<reqwest::Response> {
        let raw = serde_json::to_vec(body).expect("JSON");
        let mut req = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .timeout(std::time::Duration::from_secs(5));
        if let Some(secret) = secret {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
                .to_string();
            req = req.header("x-chatwoot-timestamp", &ts).header("x-chatwoot-signature", signature(secret, &ts, &raw));
        }
        req.body(raw).send().await
    }
}

pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn redirect(State(cw): State<Arc<Chatwoot>>, Path((key, _name)): Path<(String, String)>) -> Response {
    if !cw.files.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&key) {
        return StatusCode::NOT_FOUND.into_response();
    }
    (StatusCode::FOUND, [(header::LOCATION, format!("/storage/{key}"))]).into_response()
}

async fn file(State(cw): State<Arc<Chatwoot>>, Path(key): Path<String>) -> Response {
    match cw.files.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        Some((mime, bytes)) => ([(header::CONTENT_TYPE, mime.clone())], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
