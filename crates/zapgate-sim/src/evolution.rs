//! Evolution API v2, simulated: instances with their QR flow, and the send
//! routes. Shapes from Evolution API 2.3.6's source (see
//! `../shared/notes/provider-shapes.md` §2). Header `apikey` on every call.
//!
//! - `POST /instance/create` `{"instanceName","integration","qrcode"?}` → 201
//!   `{"instance":{…,"status":"connecting"},"hash","qrcode":{…}}`; a taken name → 403;
//!   an unknown `integration` → 400.
//! - `GET /instance/fetchInstances` → every instance (takes queued faults: a failing health check).
//! - `GET /instance/connect/{i}` → `{"pairingCode","code":"2@…","base64":"data:image/png;base64,…","count"}`
//!   while connecting (the QR is "scanned" [`Sim::set_qr_scan_after`] after it is first
//!   fetched); `{"instance":{"instanceName","state":"open"}}` once open.
//! - `GET /instance/connectionState/{i}` → `{"instance":{"instanceName","state":"open|connecting|close"}}`.
//! - `DELETE /instance/logout/{i}` → 200; not open → 400.
//! - `DELETE /instance/delete/{i}` → 200.
//! - `POST /message/{sendText|sendMedia}/{i}` → 201 Baileys message; the instance must
//!   exist (404, checked before the key as Evolution's guards do) and be open (400).
//! - Creating and deleting instances and sending take queued faults.
//!
//! Webhooks: an instance created with `webhook` (`url`, `events`, `headers`)
//! posts Evolution envelopes there, unsigned (the URL carries zapgate's
//! token), for the events it asked for (none listed: all): `messages.update`
//! SERVER_ACK then DELIVERY_ACK after each send (about 20 and 60 ms later,
//! `keyId` = the send answer's `key.id`), `qrcode.updated` when its QR is
//! first shown, `connection.update` when it opens or is logged out.
//! `byEvents` is not simulated. Tests post inbound messages and raw events
//! with [`Sim::evolution_inbound_text`] and [`Sim::evolution_post`].

use super::{Sim, with_retry_after};
use crate::hooks::{Hook, Signing};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The number the simulated instances are linked to.
const ME: &str = "5511900000000@s.whatsapp.net";

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    state: &'static str,
    qr_shown: Option<Instant>,
    /// The instance token (`hash`) handed out at create, sent as `apikey` in webhooks.
    token: Option<String>,
    hook: Option<InstanceHook>,
}

/// Where an instance posts its events, and which (`MESSAGES_UPDATE`, …; empty: all).
#[derive(Debug, Clone)]
struct InstanceHook {
    hook: Hook,
    events: Vec<String>,
}

impl InstanceHook {
    /// `webhook` of `POST /instance/create`.
    fn from_create(webhook: &Value) -> Option<Self> {
        let url = webhook["url"].as_str()?.to_owned();
        let headers = (webhook["headers"].as_object().into_iter().flatten())
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let events = (webhook["events"].as_array().into_iter().flatten()).filter_map(|e| e.as_str());
        Some(InstanceHook {
            hook: Hook { url, signing: Signing::None, headers },
            events: events.map(str::to_owned).collect(),
        })
    }

    /// Whether it asked for `event` (`messages.update` is listed as `MESSAGES_UPDATE`).
    fn wants(&self, event: &str) -> bool {
        let listed = event.replace(['.', '-'], "_").to_uppercase();
        self.events.is_empty() || self.events.contains(&listed)
    }
}

impl Instance {
    pub(crate) fn open() -> Self {
        Instance { state: "open", qr_shown: None, token: None, hook: None }
    }

    fn tick(&mut self, name: &str, scan_after: Duration) -> &'static str {
        if self.state == "connecting" && self.qr_shown.is_some_and(|t| t.elapsed() >= scan_after) {
            self.state = "open";
            self.emit(
                name,
                "connection.update",
                json!({"instance": name, "wuid": ME, "profileName": "zapgate-sim",
                "profilePictureUrl": null, "state": "open", "statusReason": 200}),
            );
        }
        self.state
    }

    /// Posts `event` in the background if the instance has a webhook that wants it.
    fn emit(&self, name: &str, event: &str, data: Value) {
        self.emit_after(name, event, data, Duration::ZERO);
    }

    fn emit_after(&self, name: &str, event: &str, data: Value, delay: Duration) {
        if let Some(h) = self.hook.as_ref().filter(|h| h.wants(event)) {
            let mut body = envelope(name, event, data);
            body["destination"] = json!(h.hook.url);
            body["apikey"] = json!(self.token);
            deliver(h.hook.clone(), body, delay);
        }
    }
}

/// Posts `body` to `hook` in the background after `delay`; unit tests (which
/// have no HTTP client: no TLS crypto provider) collect it instead.
fn deliver(hook: Hook, body: Value, delay: Duration) {
    #[cfg(test)]
    tests::DELIVERED.with(|d| d.borrow_mut().push((hook, body, delay)));
    #[cfg(not(test))]
    crate::hooks::post_later(hook, body, delay);
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An Evolution webhook body (webhook.controller.ts): `event`
/// (`messages.upsert`, …) about instance `instance`.
pub fn envelope(instance: &str, event: &str, data: Value) -> Value {
    json!({"event": event, "instance": instance, "data": data, "destination": null,
        "date_time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "sender": ME, "server_url": "http://zapgate-sim", "apikey": null})
}

/// A `messages.update` data about our message `id` (the send answer's
/// `key.id`) to `jid`, with `status` (`SERVER_ACK`, `DELIVERY_ACK`, `READ`, …).
pub fn update_data(id: &str, jid: &str, status: &str) -> Value {
    json!({"messageId": uuid::Uuid::new_v4().simple().to_string(), "keyId": id, "remoteJid": jid, "fromMe": true,
        "participant": jid, "status": status, "instanceId": uuid::Uuid::nil().to_string()})
}

/// `5511…`, `+5511…` or a JID as Baileys writes chats (`…@s.whatsapp.net`, `…@g.us`, `…@lid`).
fn jid(who: &str) -> String {
    if who.contains('@') { who.to_owned() } else { format!("{}@s.whatsapp.net", who.trim_start_matches('+')) }
}

impl Sim {
    /// The webhook Evolution instance `instance` posts to, if it has one.
    pub fn evolution_hook(&self, instance: &str) -> Option<Hook> {
        self.evolution_instances().get(instance)?.hook.as_ref().map(|h| h.hook.clone())
    }

    /// Gives instance `instance` (e.g. one made with [`Sim::add_evolution_instance`])
    /// a webhook for every event, or takes it away; false if there is no such instance.
    pub fn set_evolution_hook(&self, instance: &str, hook: Option<Hook>) -> bool {
        let mut instances = self.evolution_instances();
        let Some(i) = instances.get_mut(instance) else { return false };
        i.hook = hook.map(|hook| InstanceHook { hook, events: vec![] });
        true
    }

    /// Posts `body` as it is (an envelope, see [`envelope`]; or anything, to
    /// test refusals) to instance `instance`'s webhook, once, now; the status
    /// zapgate answered. Panics if the instance has no webhook or the post fails.
    pub async fn evolution_post(&self, instance: &str, body: Value) -> u16 {
        let hook =
            self.evolution_hook(instance).unwrap_or_else(|| panic!("Evolution instance {instance:?} has no webhook"));
        crate::hooks::post(&hook, &body).await.unwrap_or_else(|e| panic!("posting to {}: {e}", hook.url))
    }

    /// A text from `from` (digits, `+digits` or a JID) arriving on instance
    /// `instance`: posts the `messages.upsert` event now (pushName `Sim
    /// Contact`) and returns its WhatsApp id (`key.id`). Panics unless
    /// zapgate answers 2xx.
    pub async fn evolution_inbound_text(&self, instance: &str, from: &str, text: &str) -> String {
        let id = format!("3A{}", &uuid::Uuid::new_v4().simple().to_string()[..18].to_uppercase());
        let data = json!({"key": {"remoteJid": jid(from), "fromMe": false, "id": id}, "pushName": "Sim Contact",
            "status": "DELIVERY_ACK", "message": {"conversation": text}, "messageType": "conversation",
            "messageTimestamp": now_seconds(), "instanceId": uuid::Uuid::nil().to_string(), "source": "android"});
        let status = self.evolution_post(instance, envelope(instance, "messages.upsert", data)).await;
        assert!((200..300).contains(&status), "zapgate answered {status} to an Evolution messages.upsert");
        id
    }
}

impl Sim {
    /// For flapping: instance `name` `open` or `close` (posting
    /// `connection.update` on a change, 428 "connection lost" when it
    /// closes); false if there is no such instance.
    pub(crate) fn evolution_set_connected(&self, name: &str, connected: bool, notify: bool) -> bool {
        let mut instances = self.evolution_instances();
        let Some(i) = instances.get_mut(name) else { return false };
        let state = if connected { "open" } else { "close" };
        if i.state != state {
            i.state = state;
            i.qr_shown = None;
            let data = if connected {
                json!({"instance": name, "wuid": ME, "profileName": "zapgate-sim", "profilePictureUrl": null,
                    "state": "open", "statusReason": 200})
            } else {
                json!({"instance": name, "state": "close", "statusReason": 428})
            };
            if notify {
                i.emit(name, "connection.update", data);
            }
        }
        true
    }
}

pub(crate) fn routes() -> Router<Arc<Sim>> {
    use axum::routing::{delete, get, post};
    Router::new()
        .route("/instance/create", post(create))
        .route("/instance/fetchInstances", get(list))
        .route("/instance/connect/{instance}", get(connect))
        .route("/chat/markMessageAsRead/{instance}", post(mark_read))
        .route("/instance/connectionState/{instance}", get(state))
        .route("/instance/logout/{instance}", delete(logout))
        .route("/instance/delete/{instance}", delete(remove))
        .route("/message/{route}/{instance}", post(send))
}

pub(crate) fn error(status: u16, message: impl Into<Value>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let message: Value = message.into();
    let message = if status == 401 || message.is_array() { message } else { json!([message]) };
    let body = json!({"status": status, "error": code.canonical_reason().unwrap_or("Error"), "response": {"message": message}});
    (code, Json(body)).into_response()
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers.get("apikey").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn unauthorized() -> Response {
    error(401, "Unauthorized")
}

fn missing(name: &str) -> Response {
    error(404, format!("The \"{name}\" instance does not exist"))
}

fn fault(sim: &Sim) -> Option<Response> {
    let f = sim.next_fault()?;
    Some(with_retry_after(error(f.status, f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after))
}

async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    sim.record("evolution", "/instance/create".into(), key(&headers), &body);
    if key(&headers).is_none() {
        return unauthorized();
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let Some(name) = body["instanceName"].as_str().map(str::to_owned) else {
        return error(400, "instance requires property \"instanceName\"");
    };
    let integration = body["integration"].as_str().unwrap_or("WHATSAPP-BAILEYS");
    if !["WHATSAPP-BAILEYS", "WHATSAPP-BUSINESS", "EVOLUTION"].contains(&integration) {
        return error(400, "Invalid integration");
    }
    let mut instances = sim.evolution_instances();
    if instances.contains_key(&name) {
        return error(403, format!("This name \"{name}\" is already in use."));
    }
    let hash =
        body["token"].as_str().map_or_else(|| uuid::Uuid::new_v4().simple().to_string().to_uppercase(), str::to_owned);
    let hook = InstanceHook::from_create(&body["webhook"]);
    let webhook = json!({"webhookUrl": body["webhook"]["url"], "webhookByEvents": body["webhook"]["byEvents"],
        "webhookBase64": body["webhook"]["base64"]});
    instances.insert(name.clone(), Instance { state: "connecting", qr_shown: None, token: Some(hash.clone()), hook });
    let created = json!({
        "instance": {"instanceName": name, "instanceId": uuid::Uuid::new_v4().to_string(),
                     "integration": integration, "status": "connecting"},
        "hash": hash,
        "webhook": webhook, "settings": {},
        "qrcode": {"pairingCode": null, "code": null, "base64": null, "count": 0},
    });
    (StatusCode::CREATED, Json(created)).into_response()
}

/// The instance list (zapgate's health check of the server); takes queued faults.
async fn list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    sim.record("evolution", "/instance/fetchInstances".into(), key(&headers), &Value::Null);
    if key(&headers).is_none() {
        return unauthorized();
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let all: Vec<Value> =
        sim.evolution_instances().iter().map(|(name, i)| json!({"name": name, "connectionStatus": i.state})).collect();
    Json(all).into_response()
}

#[derive(Deserialize)]
struct ConnectQuery {
    number: Option<String>,
}

/// The QR code (and with `?number=` a pairing code); `{"instance":{"state":"open"}}` once linked.
async fn connect(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ConnectQuery>,
) -> Response {
    sim.record("evolution", format!("/instance/connect/{name}"), key(&headers), &Value::Null);
    if key(&headers).is_some() && sim.take_dropped(&name) {
        // Still linked: the socket opens again without a scan.
        sim.evolution_set_connected(&name, true, true);
        return Json(json!({"instance": {"instanceName": name, "state": "open"}})).into_response();
    }
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    // A closed (logged-out) instance reconnects: a new QR.
    if i.state == "close" {
        i.state = "connecting";
        i.qr_shown = None;
    }
    if i.tick(&name, scan_after) == "open" {
        return Json(json!({"instance": {"instanceName": name, "state": "open"}})).into_response();
    }
    let image =
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(super::waha::QR_PNG));
    let code = format!("2@sim{name},{}", uuid::Uuid::new_v4().simple());
    if i.qr_shown.is_none() {
        i.qr_shown = Some(Instant::now());
        i.emit(
            &name,
            "qrcode.updated",
            json!({"qrcode": {"instance": name, "pairingCode": null, "code": code, "base64": image}}),
        );
    }
    let pairing = q.number.filter(|n| !n.is_empty()).map(|n| format!("SIM{}", &n[n.len().saturating_sub(5)..]));
    Json(json!({"pairingCode": pairing, "code": code, "base64": image, "count": 1})).into_response()
}

/// `POST /chat/markMessageAsRead/{instance}` `{"readMessages":[{"remoteJid","fromMe","id"}]}`
/// → 201 `{"message":"Read messages","read":"success"}`.
async fn mark_read(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else { return error(400, "body is required") };
    sim.record("evolution", format!("/chat/markMessageAsRead/{name}"), key(&headers), &body);
    if !sim.evolution_instances().contains_key(&name) {
        return missing(&name);
    }
    if key(&headers).is_none() {
        return unauthorized();
    }
    let complete = body["readMessages"].as_array().is_some_and(|all| {
        !all.is_empty()
            && all.iter().all(|m| m["remoteJid"].is_string() && m["fromMe"].is_boolean() && m["id"].is_string())
    });
    if !complete {
        return error(400, "instance requires property \"readMessages\"");
    }
    (StatusCode::CREATED, Json(json!({"message": "Read messages", "read": "success"}))).into_response()
}

async fn state(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    Json(json!({"instance": {"instanceName": name, "state": i.tick(&name, scan_after)}})).into_response()
}

async fn logout(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("evolution", format!("/instance/logout/{name}"), key(&headers), &Value::Null);
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    if i.tick(&name, scan_after) != "open" {
        return error(400, format!("The \"{name}\" instance is not connected"));
    }
    i.state = "close";
    i.qr_shown = None;
    i.emit(&name, "connection.update", json!({"instance": name, "state": "close", "statusReason": 401}));
    Json(json!({"status": "SUCCESS", "error": false, "response": {"message": "Instance logged out"}})).into_response()
}

async fn remove(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("evolution", format!("/instance/delete/{name}"), key(&headers), &Value::Null);
    if let Some(res) = fault(&sim) {
        return res;
    }
    if sim.evolution_instances().remove(&name).is_none() {
        return missing(&name);
    }
    Json(json!({"status": "SUCCESS", "error": false, "response": {"message": "Instance deleted"}})).into_response()
}

/// `sendText`, `sendMedia`, `sendSticker`, `sendLocation` (`name` and
/// `address` required, as Evolution's schema has them), `sendReaction`
/// (`{"key":{"remoteJid","fromMe","id"},"reaction"}`, no receipts). Faults
/// use `status`; `code` is ignored.
async fn send(
    State(sim): State<Arc<Sim>>,
    Path((route, instance)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else { return error(400, "body is required") };
    sim.record("evolution", format!("/message/{route}/{instance}"), key(&headers), &body);
    let scan_after = sim.qr_scan_after();
    let state = match sim.evolution_instances().get_mut(&instance) {
        Some(i) => i.tick(&instance, scan_after),
        None => return missing(&instance),
    };
    if key(&headers).is_none() {
        return unauthorized();
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    // A reaction names its chat in `key.remoteJid`.
    let number = body["number"].as_str().or_else(|| body["key"]["remoteJid"].as_str()).unwrap_or_default().to_owned();
    let (required, kind) = match route.as_str() {
        "sendText" => ("text", "conversation"),
        "sendMedia" => ("mediatype", "imageMessage"),
        "sendSticker" => ("sticker", "stickerMessage"),
        "sendLocation" => ("latitude", "locationMessage"),
        "sendReaction" => ("reaction", "reactionMessage"),
        _ => return error(404, format!("Cannot POST /message/{route}/{instance}")),
    };
    let incomplete = match route.as_str() {
        "sendLocation" => ["longitude", "name", "address"].into_iter().find(|f| body.get(*f).is_none()),
        "sendReaction" => ["id", "fromMe", "remoteJid"].into_iter().find(|f| body["key"].get(*f).is_none()),
        _ => None,
    };
    if let Some(field) = incomplete {
        return error(400, format!("instance requires property \"{field}\""));
    }
    if number.is_empty() || body.get(required).is_none() {
        return error(400, format!("instance requires property \"{required}\""));
    }
    if state != "open" {
        return error(400, "Error: Connection Closed");
    }
    let jid = jid(&number);
    let id = format!("3EB0{}", uuid::Uuid::new_v4().simple().to_string()[..16].to_uppercase());
    if let Some(i) = sim.evolution_instances().get(&instance).filter(|_| route != "sendReaction") {
        // The receipts, as WhatsApp gives them: the server's, then the phone's.
        i.emit_after(&instance, "messages.update", update_data(&id, &jid, "SERVER_ACK"), Duration::from_millis(20));
        i.emit_after(&instance, "messages.update", update_data(&id, &jid, "DELIVERY_ACK"), Duration::from_millis(60));
    }
    let sent = json!({"key": {"remoteJid": jid, "fromMe": true, "id": id}, "pushName": "Você", "status": "PENDING",
        "messageType": kind, "messageTimestamp": 1717689097, "instanceId": uuid::Uuid::new_v4().to_string(), "source": "web"});
    (StatusCode::CREATED, Json(sent)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    // No HTTP client here (no TLS crypto provider is installed in these
    // tests): handlers are called directly and what they would post is
    // collected by `deliver` (one thread: `#[tokio::test]` runs on it).
    thread_local! {
        pub(super) static DELIVERED: RefCell<Vec<(Hook, Value, Duration)>> = const { RefCell::new(Vec::new()) };
    }

    fn delivered() -> Vec<(Hook, Value, Duration)> {
        DELIVERED.with(|d| d.take())
    }

    async fn json_of(res: Response) -> (u16, Value) {
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn with_key() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("apikey", "global".parse().unwrap());
        h
    }

    const URL: &str = "http://127.0.0.1:9/providers/evolution/prv_1/webhook?token=s3cret";

    async fn create_with(sim: &Arc<Sim>, name: &str, events: Value) -> Value {
        let body = json!({"instanceName": name, "integration": "WHATSAPP-BAILEYS", "qrcode": true,
            "webhook": {"url": URL, "byEvents": false, "base64": true, "events": events,
                        "headers": {"x-extra": "1"}}});
        let (code, created) = json_of(create(State(sim.clone()), with_key(), Some(Json(body))).await).await;
        assert_eq!(code, 201);
        created
    }

    #[tokio::test]
    async fn an_instance_reports_its_qr_and_connection_to_its_webhook() {
        let sim = Arc::new(Sim::default());
        sim.set_qr_scan_after(Duration::ZERO);
        let events = json!(["MESSAGES_UPSERT", "MESSAGES_UPDATE", "CONNECTION_UPDATE", "QRCODE_UPDATED"]);
        let created = create_with(&sim, "i1", events).await;
        assert_eq!(created["webhook"]["webhookUrl"], URL);
        let expected = Hook { url: URL.into(), signing: Signing::None, headers: vec![("x-extra".into(), "1".into())] };
        assert_eq!(sim.evolution_hook("i1"), Some(expected.clone()));
        assert!(delivered().is_empty());

        let (_, qr) = json_of(
            connect(
                State(sim.clone()),
                with_key(),
                Path("i1".into()),
                axum::extract::Query(ConnectQuery { number: None }),
            )
            .await,
        )
        .await;
        let got = delivered();
        assert_eq!(got.len(), 1);
        let (hook, body, _) = &got[0];
        assert_eq!(hook, &expected);
        assert_eq!((body["event"].as_str(), body["instance"].as_str()), (Some("qrcode.updated"), Some("i1")));
        assert_eq!(body["data"]["qrcode"]["code"], qr["code"]);
        assert_eq!(body["destination"], URL);
        assert_eq!(body["apikey"], created["hash"]);
        assert!(body["date_time"].as_str().unwrap().ends_with('Z'));

        let (_, state) = json_of(state(State(sim.clone()), with_key(), Path("i1".into())).await).await;
        assert_eq!(state["instance"]["state"], "open");
        let got = delivered();
        assert_eq!(got.len(), 1, "open is reported once");
        assert_eq!(got[0].1["event"], "connection.update");
        assert_eq!(
            (got[0].1["data"]["state"].as_str(), got[0].1["data"]["statusReason"].as_i64()),
            (Some("open"), Some(200))
        );

        assert_eq!(json_of(logout(State(sim.clone()), with_key(), Path("i1".into())).await).await.0, 200);
        let got = delivered();
        assert_eq!(
            (got[0].1["data"]["state"].as_str(), got[0].1["data"]["statusReason"].as_i64()),
            (Some("close"), Some(401))
        );
    }

    #[tokio::test]
    async fn a_send_is_followed_by_updates_naming_the_key_id_the_answer_gave() {
        let sim = Arc::new(Sim::default());
        sim.add_evolution_instance("i1");
        let hook = Hook { url: URL.into(), signing: Signing::None, headers: vec![] };
        assert!(sim.set_evolution_hook("i1", Some(hook.clone())));
        assert!(!sim.set_evolution_hook("nope", None));
        let body = json!({"number": "5511999998888", "text": "hi"});
        let (code, sent) = json_of(
            send(State(sim.clone()), Path(("sendText".into(), "i1".into())), with_key(), Some(Json(body))).await,
        )
        .await;
        assert_eq!(code, 201);
        let mut updates = Vec::new();
        for (h, b, delay) in delivered() {
            assert_eq!(h, hook);
            assert_eq!((b["event"].as_str(), b["instance"].as_str()), (Some("messages.update"), Some("i1")));
            assert_eq!(b["data"]["keyId"], sent["key"]["id"]);
            assert_eq!(b["data"]["remoteJid"], "5511999998888@s.whatsapp.net");
            assert_eq!(b["data"]["fromMe"], true);
            updates.push((b["data"]["status"].as_str().unwrap().to_owned(), delay));
        }
        assert_eq!(
            updates,
            [("SERVER_ACK".into(), Duration::from_millis(20)), ("DELIVERY_ACK".into(), Duration::from_millis(60))]
        );
    }

    #[tokio::test]
    async fn events_the_instance_did_not_ask_for_are_not_posted() {
        let sim = Arc::new(Sim::default());
        sim.set_qr_scan_after(Duration::ZERO);
        create_with(&sim, "i1", json!(["MESSAGES_UPSERT"])).await;
        json_of(
            connect(
                State(sim.clone()),
                with_key(),
                Path("i1".into()),
                axum::extract::Query(ConnectQuery { number: None }),
            )
            .await,
        )
        .await;
        json_of(state(State(sim.clone()), with_key(), Path("i1".into())).await).await;
        let body = json!({"number": "5511999998888", "text": "hi"});
        let res = send(State(sim.clone()), Path(("sendText".into(), "i1".into())), with_key(), Some(Json(body))).await;
        assert_eq!(res.status(), 201);
        assert!(delivered().is_empty());
        // Without a webhook nothing is posted either.
        let body = json!({"instanceName": "i2"});
        assert_eq!(json_of(create(State(sim.clone()), with_key(), Some(Json(body))).await).await.0, 201);
        assert_eq!(sim.evolution_hook("i2"), None);
    }

    #[test]
    fn envelopes_have_evolutions_shape() {
        let e = envelope("i1", "messages.update", update_data("3EB0AB", "5511999998888@s.whatsapp.net", "READ"));
        assert_eq!(e["sender"], ME);
        assert_eq!(e["data"]["keyId"], "3EB0AB");
        assert_eq!(e["data"]["status"], "READ");
        assert_eq!(jid("+5511999998888"), "5511999998888@s.whatsapp.net");
        assert_eq!(jid("123456789012345@lid"), "123456789012345@lid");
    }
}
