//! UAZAPI (uazapiGO v2), simulated: instances made with the admin token,
//! their QR flow, and the send routes. Shapes from the uazapiGO v2 OpenAPI
//! (see `../shared/notes/provider-shapes.md` §4). Errors are `{"error":"…"}`.
//!
//! - `POST /instance/init` `{"name"}` (header `admintoken`) → the instance and
//!   its `token`; `GET /instance/all` (admintoken) → every instance.
//! - With the instance's `token` header: `POST /instance/connect` → the QR code
//!   (`instance.qrcode`, a PNG data URL) while not connected, "scanned"
//!   [`Sim::set_qr_scan_after`] after it is first fetched; `GET /instance/status`;
//!   `POST /instance/disconnect`; `DELETE /instance`. An unknown token → 401.
//! - `POST /send/{text|media}`: the token must be a connected instance (401 /
//!   500 "Failed to send message" otherwise, the notes' best guess).
//! - `POST /webhook` `{"url","events","excludeMessages","enabled"?}` (token):
//!   the instance's one webhook ("simple mode"), unsigned like UAZAPI's;
//!   `GET /webhook` lists it. After each send on an instance whose webhook
//!   takes `messages_update`, the receipts follow as production shows them
//!   (`event.MessageIDs`, `Type`): Delivered after ~20 ms, Read after ~60 ms
//!   (whether UAZAPI reports `Sent` is unconfirmed, so the sim does not).
//!   The Delivered one has `IsFromMe: false` and a numeric `Timestamp`, the
//!   Read one `"False"` and a string: both forms occur.
//! - Making and listing instances, setting the webhook and sending take
//!   queued faults.
//! - In tests: [`Sim::uazapi_inbound_text`] posts a contact's message (a
//!   `messages` event shaped like captured traffic), [`Sim::uazapi_post`]
//!   any body, [`Sim::uazapi_hook`] shows the webhook set.

use super::{Sim, with_retry_after};
use crate::hooks::{Hook, Signing};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The number every simulated instance is linked to (`owner`).
const OWNER: &str = "5511900000000";
/// What webhook bodies give as the server's `BaseUrl`.
const BASE_URL: &str = "http://zapgate-sim";

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    name: String,
    status: &'static str,
    qr_shown: Option<Instant>,
    webhook: Option<Webhook>,
}

/// The webhook an instance was pointed at, and the events it takes.
#[derive(Debug, Clone)]
struct Webhook {
    hook: Hook,
    events: Vec<String>,
    exclude: Vec<String>,
}

impl Webhook {
    fn takes(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    fn dto(&self) -> Value {
        json!({"id": "wh_sim", "enabled": true, "url": self.hook.url, "events": self.events,
            "excludeMessages": self.exclude, "addUrlEvents": false, "addUrlTypesMessages": false})
    }
}

impl Instance {
    pub(crate) fn connected(name: &str) -> Self {
        Instance { name: name.to_owned(), status: "connected", qr_shown: None, webhook: None }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn tick(&mut self, scan_after: std::time::Duration) -> &'static str {
        if self.status == "connecting" && self.qr_shown.is_some_and(|t| t.elapsed() >= scan_after) {
            self.status = "connected";
        }
        self.status
    }

    fn dto(&self, token: &str) -> Value {
        json!({"id": format!("r{}", &token[..8.min(token.len())]), "token": token, "status": self.status, "name": self.name})
    }
}

impl Sim {
    /// For flapping: the instance with this token or name `connected` or
    /// `disconnected` (posting a `connection` event on a change to a webhook
    /// taking it); false if there is no such instance.
    pub(crate) fn uazapi_set_connected(&self, instance: &str, connected: bool, notify: bool) -> bool {
        let mut instances = self.uazapi_instances();
        let token = match instances.iter().find(|(t, i)| t.as_str() == instance || i.name == instance) {
            Some((t, _)) => t.clone(),
            None => return false,
        };
        let Some(i) = instances.get_mut(&token) else { return false };
        let status = if connected { "connected" } else { "disconnected" };
        if i.status != status {
            (i.status, i.qr_shown) = (status, None);
            if let Some(w) = i.webhook.as_ref().filter(|w| notify && w.takes("connection")) {
                let mut dto = i.dto(&token);
                if !connected {
                    dto["lastDisconnectReason"] = json!("connection lost");
                }
                let body = json!({"BaseUrl": BASE_URL, "EventType": "connection", "instance": dto, "owner": OWNER,
                    "token": token, "instanceName": i.name});
                crate::hooks::post_later(w.hook.clone(), body, Duration::ZERO);
            }
        }
        true
    }
}

pub(crate) fn routes() -> Router<Arc<Sim>> {
    use axum::routing::{get, post};
    Router::new()
        .route("/instance/init", post(init))
        .route("/instance/all", get(all))
        .route("/instance/connect", post(connect))
        .route("/instance/status", get(status))
        .route("/instance/disconnect", post(disconnect))
        .route("/instance", axum::routing::delete(remove))
        .route("/send/{route}", post(send))
        .route("/message/react", post(react))
        .route("/message/markread", post(mark_read))
        .route("/webhook", post(set_webhook).get(get_webhook))
}

pub(crate) fn error(status: u16, message: &str) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), Json(json!({"error": message}))).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn fault(sim: &Sim) -> Option<Response> {
    let f = sim.next_fault()?;
    Some(with_retry_after(error(f.status, &f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after))
}

async fn init(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    let admin = header(&headers, "admintoken");
    sim.record("uazapi", "/instance/init".into(), admin.clone(), &body);
    if admin.is_none() {
        return error(401, "missing admintoken");
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let Some(name) = body["name"].as_str().map(str::to_owned) else { return error(400, "Missing name") };
    let token = uuid::Uuid::new_v4().to_string();
    let instance = Instance { name: name.clone(), status: "disconnected", qr_shown: None, webhook: None };
    let dto = instance.dto(&token);
    sim.uazapi_instances().insert(token.clone(), instance);
    Json(json!({"response": "Instance created successfully", "instance": dto, "connected": false, "loggedIn": false,
                "name": name, "token": token}))
    .into_response()
}

async fn all(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let admin = header(&headers, "admintoken");
    sim.record("uazapi", "/instance/all".into(), admin.clone(), &Value::Null);
    if admin.is_none() {
        return error(401, "missing admintoken");
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let list: Vec<Value> = sim.uazapi_instances().iter().map(|(token, i)| i.dto(token)).collect();
    Json(list).into_response()
}

/// Runs `f` on the instance the `token` header names, or answers 401.
fn with_instance(sim: &Sim, headers: &HeaderMap, f: impl FnOnce(&str, &mut Instance) -> Response) -> Response {
    let Some(token) = header(headers, "token") else { return error(401, "missing token") };
    let mut instances = sim.uazapi_instances();
    match instances.get_mut(&token) {
        Some(i) => f(&token, i),
        None => error(401, "Invalid token"),
    }
}

/// `{}` → the QR code; `{"phone"}` → a pairing code (`paircode`) as well.
async fn connect(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let token = header(&headers, "token").unwrap_or_default();
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    sim.record("uazapi", "/instance/connect".into(), Some(token.clone()), &body);
    let phone = body["phone"].as_str().map(str::to_owned);
    if phone.as_deref().is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return error(400, "invalid phone");
    }
    let name = sim.uazapi_instances().get(&token).map(|i| i.name().to_owned());
    if let Some(name) = name.filter(|n| sim.take_dropped(n) || sim.take_dropped(&token)) {
        // Still linked: it connects again without a scan.
        sim.uazapi_set_connected(&name, true, true);
    }
    let scan_after = sim.qr_scan_after();
    with_instance(&sim, &headers, |token, i| {
        if i.tick(scan_after) == "disconnected" {
            i.status = "connecting";
        }
        let qrcode = if i.status == "connecting" {
            i.qr_shown.get_or_insert_with(Instant::now);
            format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(super::waha::QR_PNG))
        } else {
            String::new()
        };
        let paircode = match (&phone, i.status == "connecting") {
            (Some(p), true) => format!("{}-{}", &p[p.len().saturating_sub(4)..], "SIMC"),
            _ => String::new(),
        };
        let mut dto = i.dto(token);
        dto["qrcode"] = json!(qrcode);
        dto["paircode"] = json!(paircode);
        Json(json!({"connected": i.status == "connected", "loggedIn": i.status == "connected", "jid": null, "instance": dto}))
            .into_response()
    })
}

async fn status(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let scan_after = sim.qr_scan_after();
    with_instance(&sim, &headers, |token, i| {
        let connected = i.tick(scan_after) == "connected";
        let jid = connected.then(|| json!({"user": OWNER, "server": "s.whatsapp.net"}));
        Json(json!({"instance": i.dto(token), "status": {"connected": connected, "loggedIn": connected, "jid": jid}}))
            .into_response()
    })
}

async fn disconnect(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    sim.record("uazapi", "/instance/disconnect".into(), header(&headers, "token"), &Value::Null);
    with_instance(&sim, &headers, |token, i| {
        // Logging out keeps the instance's webhook.
        (i.status, i.qr_shown) = ("disconnected", None);
        Json(json!({"instance": i.dto(token), "response": "Disconnected", "info": "the instance was logged out"}))
            .into_response()
    })
}

async fn remove(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    sim.record("uazapi", "DELETE /instance".into(), header(&headers, "token"), &Value::Null);
    if let Some(res) = fault(&sim) {
        return res;
    }
    let Some(token) = header(&headers, "token") else { return error(401, "missing token") };
    match sim.uazapi_instances().remove(&token) {
        Some(_) => Json(json!({"response": "Instance Deleted", "info": "the instance was removed"})).into_response(),
        None => error(401, "Invalid token"),
    }
}

/// `send/text`, `send/media`, `send/location` and `message/react`
/// (`{"number","text":emoji,"id"}`; no receipts) (header `token`).
async fn send(
    State(sim): State<Arc<Sim>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let token = header(&headers, "token");
    let Some(Json(body)) = body else { return error(400, "Missing number or text") };
    let prefix = if route == "react" { "message" } else { "send" };
    sim.record("uazapi", format!("/{prefix}/{route}"), token.clone(), &body);
    let Some(token) = token else { return error(401, "missing token") };
    if let Some(res) = fault(&sim) {
        return res;
    }
    let scan_after = sim.qr_scan_after();
    let (status, name, webhook) = match sim.uazapi_instances().get_mut(&token) {
        Some(i) => (i.tick(scan_after), i.name.clone(), i.webhook.clone()),
        None => return error(401, "Invalid token"),
    };
    let Some(number) = body["number"].as_str().map(str::to_owned) else { return error(400, "Missing number or text") };
    let complete = match route.as_str() {
        "text" => body["text"].is_string(),
        "media" => body["type"].is_string() && body["file"].is_string(),
        "location" => body["latitude"].is_number() && body["longitude"].is_number(),
        "react" => body["text"].is_string() && body["id"].is_string(),
        _ => return error(404, "404 page not found"),
    };
    if !complete {
        return error(400, "Missing required fields");
    }
    if status != "connected" {
        return error(500, "Failed to send message");
    }
    let id = message_id("3EB0", 16);
    let chat = jid(&number);
    if let Some(w) = webhook.filter(|w| route != "react" && w.takes("messages_update")) {
        for (state, after) in [("Delivered", 20), ("Read", 60)] {
            let body = receipt(&token, &name, &chat, &id, state);
            crate::hooks::post_later(w.hook.clone(), body, Duration::from_millis(after));
        }
    }
    let sent = json!({"id": format!("{OWNER}:{id}"), "messageid": id, "chatid": chat, "fromMe": true,
        "messageType": if route == "text" { "Conversation" } else { "ImageMessage" }, "messageTimestamp": now_millis(),
        "wasSentByApi": true, "response": {"status": "success", "message": "Message sent successfully"}});
    Json(sent).into_response()
}

/// `POST /message/markread` `{"id":[messageid, …]}` → 200.
async fn mark_read(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    sim.record("uazapi", "/message/markread".into(), header(&headers, "token"), &body);
    with_instance(&sim, &headers, |_, _| {
        if !body["id"].as_array().is_some_and(|ids| !ids.is_empty() && ids.iter().all(Value::is_string)) {
            return error(400, "Missing id");
        }
        Json(json!({"response": "Messages marked as read"})).into_response()
    })
}

async fn react(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    send(State(sim), Path("react".into()), headers, body).await
}

/// `POST /webhook` (header `token`): points the instance at `url`
/// ("simple mode": one webhook per instance, replaced on every call;
/// `"enabled": false` removes it).
async fn set_webhook(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    sim.record("uazapi", "/webhook".into(), header(&headers, "token"), &body);
    if header(&headers, "token").is_none() {
        return error(401, "missing token");
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
    };
    with_instance(&sim, &headers, |_, i| {
        let Some(url) = body["url"].as_str().filter(|u| u.starts_with("http")) else {
            return error(400, "Missing url");
        };
        i.webhook = (body["enabled"] != false).then(|| Webhook {
            hook: Hook { url: url.to_owned(), signing: Signing::None, headers: vec![] },
            events: strings(&body["events"]),
            exclude: strings(&body["excludeMessages"]),
        });
        Json(json!(i.webhook.iter().map(Webhook::dto).collect::<Vec<_>>())).into_response()
    })
}

/// `GET /webhook`: the instance's webhooks (a list, as UAZAPI answers).
async fn get_webhook(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    with_instance(&sim, &headers, |_, i| {
        Json(json!(i.webhook.iter().map(Webhook::dto).collect::<Vec<_>>())).into_response()
    })
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A WhatsApp message id: `prefix` and `hex` upper-case hex digits (API
/// sends `3EB0…`, phones `AC…`).
fn message_id(prefix: &str, hex: usize) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..hex].to_uppercase())
}

/// A number (or a JID) as a JID.
fn jid(number: &str) -> String {
    let number = number.trim_start_matches('+');
    if number.contains('@') { number.to_owned() } else { format!("{number}@s.whatsapp.net") }
}

/// The `messages_update` receipt UAZAPI posts when `chat` reaches `state`
/// for message `id` (production shape; see the module docs for the forms).
fn receipt(token: &str, name: &str, chat: &str, id: &str, state: &str) -> Value {
    let secs = now_millis() / 1000;
    let (from_me, timestamp) =
        if state == "Read" { (json!("False"), json!(secs.to_string())) } else { (json!(false), json!(secs)) };
    json!({"BaseUrl": BASE_URL, "EventType": "messages_update", "type": "ReadReceipt", "state": state,
        "event": {"Chat": chat, "IsFromMe": from_me, "IsGroup": false, "MessageIDs": [id], "Sender": chat,
            "Timestamp": timestamp, "Type": state},
        "owner": OWNER, "token": token, "instanceName": name})
}

/// A contact's plain text as UAZAPI posts it (`messages`, a `Conversation`
/// from a phone; captured shape, its `chat` cut to a few fields).
fn inbound_text(token: &str, name: &str, from: &str, text: &str, id: &str) -> Value {
    let chat = jid(from);
    let phone = chat.split('@').next().unwrap_or_default().to_owned();
    json!({"BaseUrl": BASE_URL, "EventType": "messages",
        "chat": {"id": format!("r{}", &id[2..9].to_lowercase()), "name": "Zé Sim", "phone": format!("+{phone}"),
            "wa_chatid": chat, "wa_isGroup": false, "wa_lastMessageType": "Conversation"},
        "chatSource": "updated", "instanceName": name,
        "message": {"buttonOrListid": "", "chatid": chat, "content": text, "convertOptions": "", "edited": "",
            "fromMe": false, "groupName": "Unknown", "id": format!("{OWNER}:{id}"), "isGroup": false, "mediaType": "",
            "messageTimestamp": now_millis(), "messageType": "Conversation", "messageid": id, "owner": OWNER,
            "quoted": "", "reaction": "", "sender": chat, "senderName": "Zé Sim", "sender_pn": chat,
            "source": "android", "status": "", "text": text, "track_id": "", "track_source": "", "type": "text",
            "vote": "", "wasSentByApi": false},
        "owner": OWNER, "token": token})
}

impl Sim {
    /// The webhook UAZAPI instance `token` was pointed at, if any.
    pub fn uazapi_hook(&self, token: &str) -> Option<Hook> {
        self.uazapi_instances().get(token)?.webhook.as_ref().map(|w| w.hook.clone())
    }

    /// Instance `token`'s name and webhook; panics without one taking `event`.
    fn uazapi_webhook_for(&self, token: &str, event: &str) -> (String, Hook) {
        let instances = self.uazapi_instances();
        let i = instances.get(token).unwrap_or_else(|| panic!("no UAZAPI instance with token {token}"));
        match i.webhook.as_ref().filter(|w| w.takes(event)) {
            Some(w) => (i.name.clone(), w.hook.clone()),
            None => panic!("UAZAPI instance {token} has no webhook taking {event} events"),
        }
    }

    /// Posts a text from `from` (a number) to instance `token`'s webhook now,
    /// as UAZAPI does when a contact writes; the WhatsApp id of the message.
    /// Panics when the instance has no webhook taking `messages`.
    pub async fn uazapi_inbound_text(&self, token: &str, from: &str, text: &str) -> String {
        let (name, hook) = self.uazapi_webhook_for(token, "messages");
        let id = message_id("AC", 30);
        if let Err(e) = crate::hooks::post(&hook, &inbound_text(token, &name, from, text, &id)).await {
            panic!("posting to {}: {e}", hook.url);
        }
        id
    }

    /// Posts `body` to instance `token`'s webhook as is; zapgate's HTTP
    /// status. Panics when the instance has no webhook or the POST fails.
    pub async fn uazapi_post(&self, token: &str, body: Value) -> u16 {
        let hook = self.uazapi_hook(token).unwrap_or_else(|| panic!("UAZAPI instance {token} has no webhook"));
        crate::hooks::post(&hook, &body).await.unwrap_or_else(|e| panic!("posting to {}: {e}", hook.url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // No HTTP client here (no TLS crypto provider is installed in these
    // tests): handlers are called directly, bodies checked as built.

    fn with_token(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("token", token.parse().unwrap());
        h
    }

    async fn json_of(res: Response) -> (u16, Value) {
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn the_webhook_is_set_listed_replaced_and_removed() {
        let sim = Arc::new(Sim::default());
        sim.add_uazapi_instance("tok");
        let set = |body: Value, token: &str| set_webhook(State(sim.clone()), with_token(token), Some(Json(body)));
        let body = json!({"url": "http://127.0.0.1:9/providers/uazapi/prv_1/webhook?token=s", "events": ["messages", "messages_update"],
            "excludeMessages": []});
        let (status, list) = json_of(set(body.clone(), "tok").await).await;
        assert_eq!(status, 200);
        assert_eq!(list[0]["url"], body["url"]);
        assert_eq!(list[0]["events"], body["events"]);
        let hook = sim.uazapi_hook("tok").expect("stored");
        assert_eq!((hook.url.as_str(), &hook.signing), (body["url"].as_str().unwrap(), &Signing::None));
        assert_eq!(json_of(get_webhook(State(sim.clone()), with_token("tok")).await).await.1, list);

        assert_eq!(
            json_of(set(json!({"url": "http://127.0.0.1:9/other", "events": ["connection"]}), "tok").await).await.0,
            200
        );
        assert_eq!(sim.uazapi_hook("tok").unwrap().url, "http://127.0.0.1:9/other", "one webhook, replaced");
        assert_eq!(
            json_of(set(json!({"url": "http://127.0.0.1:9/other", "enabled": false}), "tok").await).await,
            (200, json!([]))
        );
        assert_eq!(sim.uazapi_hook("tok"), None);

        assert_eq!(json_of(set(body.clone(), "nope").await).await.0, 401);
        assert_eq!(json_of(set(json!({"events": ["messages"]}), "tok").await).await.0, 400);
        sim.push_faults([crate::Fault {
            status: 500,
            code: 0,
            message: Some("Could not save webhook".into()),
            retry_after: None,
        }]);
        assert_eq!(json_of(set(body, "tok").await).await, (500, json!({"error": "Could not save webhook"})));
        assert!(sim.received().iter().any(|r| r.path == "/webhook" && r.token.as_deref() == Some("tok")));
    }

    #[test]
    fn receipts_and_inbound_messages_have_the_captured_shapes() {
        let r = receipt("tok", "loja", "5511999990000@s.whatsapp.net", "3EB0AB", "Delivered");
        assert_eq!(
            (&r["EventType"], &r["token"], &r["state"]),
            (&json!("messages_update"), &json!("tok"), &json!("Delivered"))
        );
        assert_eq!(r["event"]["MessageIDs"], json!(["3EB0AB"]));
        assert_eq!((&r["event"]["Type"], &r["event"]["IsFromMe"]), (&json!("Delivered"), &json!(false)));
        assert!(r["event"]["Timestamp"].is_u64());
        let r = receipt("tok", "loja", "5511999990000@s.whatsapp.net", "3EB0AB", "Read");
        assert_eq!(r["event"]["IsFromMe"], "False");
        assert!(r["event"]["Timestamp"].as_str().unwrap().parse::<u64>().is_ok());

        let m = inbound_text("tok", "loja", "+5511999990000", "oi", "AC0123456789");
        assert_eq!(
            (&m["EventType"], &m["token"], &m["instanceName"]),
            (&json!("messages"), &json!("tok"), &json!("loja"))
        );
        let msg = &m["message"];
        assert_eq!(msg["chatid"], "5511999990000@s.whatsapp.net");
        assert_eq!((&msg["messageid"], &msg["id"]), (&json!("AC0123456789"), &json!(format!("{OWNER}:AC0123456789"))));
        assert_eq!((&msg["text"], &msg["content"], &msg["type"]), (&json!("oi"), &json!("oi"), &json!("text")));
        assert_eq!(
            (&msg["fromMe"], &msg["wasSentByApi"], &msg["isGroup"]),
            (&json!(false), &json!(false), &json!(false))
        );
        assert!(msg["messageTimestamp"].as_u64().unwrap() > 1_000_000_000_000, "milliseconds");
    }
}
