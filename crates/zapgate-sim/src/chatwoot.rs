//! A simulated Chatwoot: fires its account webhooks (`message_created`, in
//! the shape of Chatwoot's `Message#webhook_data`, signed as newer releases
//! sign them), serves the attachment links those name (Active Storage
//! redirect URLs, which answer 302 to the stored file), and answers the
//! application API calls an integration makes (`api_access_token`): contact
//! search and creation (a taken phone number is a 422, as in Chatwoot),
//! contact inboxes, conversations, and messages (JSON or multipart with
//! `attachments[]`).

use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `api_access_token` the simulated Chatwoot takes.
pub const API_TOKEN: &str = "cw-agent-token";

#[derive(Default)]
pub struct Chatwoot {
    base: String,
    /// Stored files by key: (MIME type, bytes).
    files: Mutex<HashMap<String, (String, Vec<u8>)>>,
    state: Mutex<Accounts>,
    /// Added to every API call, to widen races in tests.
    latency: Mutex<Duration>,
}

#[derive(Default)]
struct Accounts {
    contacts: Vec<Contact>,
    conversations: Vec<Conversation>,
    next_message: u64,
}

#[derive(Debug, Clone)]
pub struct Contact {
    pub id: u64,
    pub name: String,
    pub phone_number: Option<String>,
    /// (inbox id, source id)
    pub inboxes: Vec<(u64, String)>,
}

#[derive(Debug, Clone)]
pub struct Conversation {
    /// The display id.
    pub id: u64,
    pub contact_id: u64,
    pub inbox_id: u64,
    pub messages: Vec<PostedMessage>,
}

#[derive(Debug, Clone)]
pub struct PostedMessage {
    pub id: u64,
    pub content: String,
    pub message_type: String,
    pub private: bool,
    pub source_id: Option<String>,
    /// (file name, MIME type, bytes)
    pub attachments: Vec<(String, String, Vec<u8>)>,
}

/// Serves a simulated Chatwoot on a local port; returns it and its base URL.
pub async fn start() -> std::io::Result<(Arc<Chatwoot>, String)> {
    start_on("127.0.0.1:0".parse().expect("an address")).await
}

/// Serves a simulated Chatwoot at `addr`. Besides Chatwoot's own routes:
/// `POST /_sim/chatwoot/fire {"url","secret"?,"id","conversation_id","phone","content",
/// "message_type"?,"private"?}` fires a `message_created` webhook at `url`, and
/// `GET /_sim/chatwoot/conversations` shows what integrations posted.
pub async fn start_on(addr: std::net::SocketAddr) -> std::io::Result<(Arc<Chatwoot>, String)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cw = Arc::new(Chatwoot { base: base.clone(), ..Chatwoot::default() });
    let api = "/api/v1/accounts/{account}";
    let app = axum::Router::new()
        .route("/rails/active_storage/blobs/redirect/{key}/{name}", axum::routing::get(redirect))
        .route("/storage/{key}", axum::routing::get(file))
        .route(&format!("{api}/contacts/search"), axum::routing::get(search_contacts))
        .route(&format!("{api}/contacts"), axum::routing::post(create_contact))
        .route(&format!("{api}/contacts/{{id}}/contact_inboxes"), axum::routing::post(create_contact_inbox))
        .route(&format!("{api}/contacts/{{id}}/conversations"), axum::routing::get(contact_conversations))
        .route(&format!("{api}/conversations"), axum::routing::post(create_conversation))
        .route(&format!("{api}/conversations/{{id}}/messages"), axum::routing::get(list_messages).post(create_message))
        .route("/_sim/chatwoot/fire", axum::routing::post(fire))
        .route("/_sim/chatwoot/conversations", axum::routing::get(show_conversations))
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
    /// Adds `latency` to every API call from now on.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    pub fn contacts(&self) -> Vec<Contact> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).contacts.clone()
    }

    pub fn conversations(&self) -> Vec<Conversation> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).conversations.clone()
    }

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
        let mut req = crate::hooks::client()
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

fn contact_json(c: &Contact) -> Value {
    let inboxes: Vec<Value> =
        c.inboxes.iter().map(|(inbox, source)| json!({"source_id": source, "inbox": {"id": inbox}})).collect();
    json!({"id": c.id, "name": c.name, "phone_number": c.phone_number, "contact_inboxes": inboxes, "type": "contact"})
}

/// The API token check and the configured latency, before every API call.
async fn api_call(cw: &Chatwoot, headers: &HeaderMap) -> Result<(), Response> {
    let latency = *cw.latency.lock().unwrap_or_else(|p| p.into_inner());
    tokio::time::sleep(latency).await;
    if headers.get("api_access_token").and_then(|v| v.to_str().ok()) != Some(API_TOKEN) {
        return Err((StatusCode::UNAUTHORIZED, Json(json!({"error": "Invalid Access Token"}))).into_response());
    }
    Ok(())
}

async fn search_contacts(
    State(cw): State<Arc<Chatwoot>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let q = q.get("q").cloned().unwrap_or_default();
    let st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let found: Vec<Value> = st
        .contacts
        .iter()
        .filter(|c| c.phone_number.as_deref().is_some_and(|p| p.contains(&q)) || c.name.contains(&q))
        .map(contact_json)
        .collect();
    Json(json!({"meta": {"count": found.len(), "current_page": 1}, "payload": found})).into_response()
}

async fn create_contact(State(cw): State<Arc<Chatwoot>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let mut st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let phone = body["phone_number"].as_str().map(str::to_owned);
    if phone.is_some() && st.contacts.iter().any(|c| c.phone_number == phone) {
        let error = json!({"message": "Phone number has already been taken", "attributes": ["phone_number"]});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(error)).into_response();
    }
    let id = st.contacts.len() as u64 + 1;
    let mut contact = Contact {
        id,
        name: body["name"].as_str().unwrap_or_default().to_owned(),
        phone_number: phone,
        inboxes: Vec::new(),
    };
    let mut contact_inbox = Value::Null;
    if let Some(inbox) = body["inbox_id"].as_u64() {
        let source = body["source_id"].as_str().map(str::to_owned).unwrap_or_else(|| format!("src-{id}"));
        contact.inboxes.push((inbox, source.clone()));
        contact_inbox = json!({"inbox": {"id": inbox}, "source_id": source});
    }
    let shown = contact_json(&contact);
    st.contacts.push(contact);
    Json(json!({"payload": {"contact": shown, "contact_inbox": contact_inbox}})).into_response()
}

async fn create_contact_inbox(
    State(cw): State<Arc<Chatwoot>>,
    headers: HeaderMap,
    Path((_, id)): Path<(u64, u64)>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let mut st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = st.contacts.iter_mut().find(|c| c.id == id) else { return StatusCode::NOT_FOUND.into_response() };
    let inbox = body["inbox_id"].as_u64().unwrap_or_default();
    let source = body["source_id"].as_str().unwrap_or("src").to_owned();
    c.inboxes.push((inbox, source.clone()));
    Json(json!({"source_id": source, "inbox": {"id": inbox}})).into_response()
}

async fn contact_conversations(
    State(cw): State<Arc<Chatwoot>>,
    headers: HeaderMap,
    Path((_, id)): Path<(u64, u64)>,
) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let payload: Vec<Value> = st
        .conversations
        .iter()
        .filter(|c| c.contact_id == id)
        .map(|c| json!({"id": c.id, "inbox_id": c.inbox_id, "status": "open"}))
        .collect();
    Json(json!({"payload": payload})).into_response()
}

async fn create_conversation(State(cw): State<Arc<Chatwoot>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let mut st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let contact_id = body["contact_id"].as_u64().unwrap_or_default();
    if !st.contacts.iter().any(|c| c.id == contact_id) {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"message": "Contact not found"}))).into_response();
    }
    let id = st.conversations.len() as u64 + 1;
    let inbox_id = body["inbox_id"].as_u64().unwrap_or_default();
    st.conversations.push(Conversation { id, contact_id, inbox_id, messages: Vec::new() });
    Json(json!({"id": id, "account_id": 1, "inbox_id": inbox_id, "status": "open",
                "contact_inbox": {"source_id": body["source_id"]}}))
    .into_response()
}

async fn list_messages(
    State(cw): State<Arc<Chatwoot>>,
    headers: HeaderMap,
    Path((_, id)): Path<(u64, u64)>,
) -> Response {
    if let Err(r) = api_call(&cw, &headers).await {
        return r;
    }
    let st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = st.conversations.iter().find(|c| c.id == id) else { return StatusCode::NOT_FOUND.into_response() };
    let payload: Vec<Value> = c
        .messages
        .iter()
        .map(|m| {
            json!({"id": m.id, "content": m.content, "message_type": m.message_type, "private": m.private,
                        "source_id": m.source_id})
        })
        .collect();
    Json(json!({"meta": {}, "payload": payload})).into_response()
}

async fn create_message(State(cw): State<Arc<Chatwoot>>, Path((_, id)): Path<(u64, u64)>, req: Request) -> Response {
    if let Err(r) = api_call(&cw, req.headers()).await {
        return r;
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut attachments = Vec::new();
    if multipart {
        let Ok(mut form) = Multipart::from_request(req, &()).await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or_default().to_owned();
            if name == "attachments[]" {
                let file = field.file_name().unwrap_or("file").to_owned();
                let mime = field.content_type().unwrap_or("application/octet-stream").to_owned();
                let bytes = field.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                attachments.push((file, mime, bytes));
            } else {
                fields.insert(name, field.text().await.unwrap_or_default());
            }
        }
    } else {
        let Ok(Json(body)) = Json::<Value>::from_request(req, &()).await else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        for k in ["content", "message_type", "source_id"] {
            if let Some(v) = body[k].as_str() {
                fields.insert(k.to_owned(), v.to_owned());
            }
        }
        fields.insert("private".into(), body["private"].as_bool().unwrap_or(false).to_string());
    }
    let mut st = cw.state.lock().unwrap_or_else(|p| p.into_inner());
    st.next_message += 1;
    let message = PostedMessage {
        id: st.next_message,
        content: fields.remove("content").unwrap_or_default(),
        message_type: fields.remove("message_type").unwrap_or_else(|| "outgoing".into()),
        private: fields.get("private").is_some_and(|p| p == "true"),
        source_id: fields.remove("source_id"),
        attachments,
    };
    let Some(c) = st.conversations.iter_mut().find(|c| c.id == id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let shown = json!({"id": message.id, "content": message.content, "message_type": message.message_type,
                       "private": message.private, "source_id": message.source_id, "conversation_id": id});
    c.messages.push(message);
    Json(shown).into_response()
}

async fn fire(State(cw): State<Arc<Chatwoot>>, Json(req): Json<Value>) -> Response {
    let (Some(url), Some(phone)) = (req["url"].as_str(), req["phone"].as_str()) else {
        return (StatusCode::BAD_REQUEST, "url and phone are required").into_response();
    };
    let mut m = Message::reply(
        req["id"].as_u64().unwrap_or(1),
        req["conversation_id"].as_u64().unwrap_or(1),
        phone,
        req["content"].as_str().unwrap_or_default(),
    );
    m.message_type = match req["message_type"].as_str() {
        Some("incoming") => "incoming",
        Some("activity") => "activity",
        Some("template") => "template",
        _ => "outgoing",
    };
    m.private = req["private"].as_bool().unwrap_or(false);
    let body = cw.message_created(&m);
    match Chatwoot::fire(url, &body, req["secret"].as_str()).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let answer: Value = res.json().await.unwrap_or(Value::Null);
            Json(json!({"status": status, "answer": answer})).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn show_conversations(State(cw): State<Arc<Chatwoot>>) -> Json<Value> {
    let contacts = cw.contacts();
    let all: Vec<Value> = cw
        .conversations()
        .iter()
        .map(|c| {
            let phone = contacts.iter().find(|k| k.id == c.contact_id).and_then(|k| k.phone_number.clone());
            let messages: Vec<Value> = c
                .messages
                .iter()
                .map(|m| {
                    json!({"id": m.id, "content": m.content, "message_type": m.message_type,
                                "private": m.private, "attachments": m.attachments.len()})
                })
                .collect();
            json!({"id": c.id, "inbox_id": c.inbox_id, "contact_phone": phone, "messages": messages})
        })
        .collect();
    Json(json!({"conversations": all}))
}
