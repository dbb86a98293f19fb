//! WAHA, simulated: sessions with their QR flow, and the send routes.
//! Shapes from WAHA 2026.7.1's OpenAPI (see `../shared/notes/provider-shapes.md` §3).
//!
//! - `POST /api/sessions` `{"name","start"?}` → 201 SessionDTO; an existing name → 422.
//! - `GET /api/sessions` → every session (takes queued faults: a health check that fails).
//! - `GET /api/sessions/{s}` → `{"name","status","config","me"}`; unknown → 404.
//!   A started session waits in `SCAN_QR_CODE`; once its QR has been fetched it
//!   is "scanned" after [`Sim::set_qr_scan_after`] and becomes `WORKING`.
//! - `GET /api/{s}/auth/qr?format=raw` → `{"value":"2@…"}`; `format=image` →
//!   PNG, or `{"mimetype","data"}` with `Accept: application/json`; a session
//!   not in `SCAN_QR_CODE` → 422.
//! - `POST /api/sessions/{s}/logout` → 201 SessionDTO, `STOPPED` (a new scan is needed).
//! - `POST /api/sessions/{s}/restart` → 201 SessionDTO: `WORKING` again after a
//!   dropped connection ([`Sim::drop_connection`]), `SCAN_QR_CODE` after a logout.
//! - `DELETE /api/sessions/{s}` → 200; unknown → 404.
//! - Creating and deleting sessions and sending take queued faults (`POST /_sim/faults`).
//! - `PUT /api/reaction` `{"session","messageId","reaction"}` → 200 `{}`.
//! - `POST /api/sendSeen` `{"session","chatId","messageIds"?}` → 201 `{}`.
//! - `POST /api/{sendText|sendImage|sendVideo|sendFile|sendLocation}`: the session must be
//!   `WORKING` (else 422 as WAHA answers), and exist (else 404). The session
//!   `default` exists from the start, `WORKING`, as on a WAHA Core server.
//!
//! Webhooks: a session created with `config.webhooks[0]` (`url`, `events`,
//! `hmac.key`, `customHeaders`) posts WAHA envelopes there (engine WEBJS),
//! signed `X-Webhook-Hmac` when it has a key, for the events it asked for:
//! `message.ack` SERVER then DEVICE after each send (about 20 and 60 ms later,
//! the id `true_{chat}_{id}` as the send answer's `id._serialized`), and
//! `session.status` when its status changes. Tests post inbound messages and
//! raw events with [`Sim::waha_inbound_text`] and [`Sim::waha_post`].

use super::{Sim, with_retry_after};
use crate::hooks::{Hook, Signing};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A 1×1 PNG: the QR image's bytes are not what tests check, only that a PNG comes back.
pub const QR_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0xe5, 0x27, 0xde, 0xfc, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// The number the simulated sessions are linked to.
const ME: &str = "5511900000000@c.us";

#[derive(Debug, Clone)]
pub(crate) struct Session {
    status: &'static str,
    /// When the QR was first fetched: the "scan" completes a delay later.
    qr_shown: Option<Instant>,
    hook: Option<SessionHook>,
}

/// Where a session posts its events, and which (empty: all).
#[derive(Debug, Clone)]
struct SessionHook {
    hook: Hook,
    events: Vec<String>,
}

impl SessionHook {
    /// `config.webhooks[0]` of `POST /api/sessions`.
    fn from_config(config: &Value) -> Option<Self> {
        let w = &config["webhooks"][0];
        let url = w["url"].as_str()?.to_owned();
        let signing = w["hmac"]["key"].as_str().map_or(Signing::None, |k| Signing::WahaSha512(k.to_owned()));
        let headers = (w["customHeaders"].as_array().into_iter().flatten())
            .filter_map(|h| Some((h["name"].as_str()?.to_owned(), h["value"].as_str()?.to_owned())))
            .collect();
        let events = (w["events"].as_array().into_iter().flatten()).filter_map(|e| e.as_str().map(str::to_owned));
        Some(SessionHook { hook: Hook { url, signing, headers }, events: events.collect() })
    }

    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event || e == "*")
    }
}

impl Session {
    fn working() -> Self {
        Session { status: "WORKING", qr_shown: None, hook: None }
    }

    /// The status now, moving `SCAN_QR_CODE` to `WORKING` once scanned.
    fn tick(&mut self, name: &str, scan_after: Duration) -> &'static str {
        if self.status == "SCAN_QR_CODE" && self.qr_shown.is_some_and(|t| t.elapsed() >= scan_after) {
            self.set_status(name, "WORKING");
        }
        self.status
    }

    /// Moves to `status`, posting `session.status` when it changes.
    fn set_status(&mut self, name: &str, status: &'static str) {
        let changed = self.status != status;
        self.status = status;
        if changed {
            self.emit(name, "session.status", json!({"name": name, "status": status, "statuses": [], "data": null}));
        }
    }

    /// Posts `event` in the background if the session has a webhook that wants it.
    fn emit(&self, name: &str, event: &str, payload: Value) {
        self.emit_after(name, event, payload, Duration::ZERO);
    }

    fn emit_after(&self, name: &str, event: &str, payload: Value, delay: Duration) {
        if let Some(h) = self.hook.as_ref().filter(|h| h.wants(event)) {
            deliver(h.hook.clone(), envelope(name, event, payload), delay);
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

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A WAHA webhook body: `event` about `session`, as the WEBJS engine sends it.
pub fn envelope(session: &str, event: &str, payload: Value) -> Value {
    json!({"id": format!("evt_{}", uuid::Uuid::new_v4().simple()), "timestamp": now_millis(), "event": event,
        "session": session, "metadata": {}, "me": {"id": ME, "pushName": "zapgate-sim"}, "payload": payload,
        "engine": "WEBJS", "environment": {"version": "2026.7.1", "engine": "WEBJS", "tier": "CORE", "browser": null}})
}

/// A `message.ack` payload about our message `serialized_id`
/// (`true_{chat}_{id}`, as the send answer's `id._serialized`).
pub fn ack_payload(serialized_id: &str, ack: i64) -> Value {
    let chat = serialized_id.split('_').nth(1).unwrap_or_default();
    let name = match ack {
        -1 => "ERROR",
        0 => "PENDING",
        1 => "SERVER",
        2 => "DEVICE",
        3 => "READ",
        4 => "PLAYED",
        _ => "UNKNOWN",
    };
    json!({"id": serialized_id, "from": chat, "to": chat, "participant": null, "fromMe": true,
        "ack": ack, "ackName": name, "timestamp": now_millis() / 1000})
}

/// `5511…`, `+5511…` or a JID as WAHA writes chats (`…@c.us`, `…@g.us`, `…@lid`).
fn chat_id(who: &str) -> String {
    if who.contains('@') { who.to_owned() } else { format!("{}@c.us", who.trim_start_matches('+')) }
}

impl Sim {
    /// The webhook WAHA session `session` posts to, if it has one.
    pub fn waha_hook(&self, session: &str) -> Option<Hook> {
        self.waha_sessions().get(session)?.hook.as_ref().map(|h| h.hook.clone())
    }

    /// Gives session `session` (e.g. `default`, which zapgate does not
    /// create) a webhook for every event, or takes it away; false if there
    /// is no such session.
    pub fn set_waha_hook(&self, session: &str, hook: Option<Hook>) -> bool {
        let mut sessions = self.waha_sessions();
        let Some(s) = sessions.get_mut(session) else { return false };
        s.hook = hook.map(|hook| SessionHook { hook, events: vec![] });
        true
    }

    /// Posts `body` as it is (an envelope, see [`envelope`]; or anything, to
    /// test refusals) to session `session`'s webhook, once, now; the status
    /// zapgate answered. Panics if the session has no webhook or the post fails.
    pub async fn waha_post(&self, session: &str, body: Value) -> u16 {
        let hook = self.waha_hook(session).unwrap_or_else(|| panic!("WAHA session {session:?} has no webhook"));
        crate::hooks::post(&hook, &body).await.unwrap_or_else(|e| panic!("posting to {}: {e}", hook.url))
    }

    /// A text from `from` (digits, `+digits` or a JID) arriving on session
    /// `session`: posts the `message` event now (sender name `Sim Contact`)
    /// and returns its WhatsApp id. Panics unless zapgate answers 2xx.
    pub async fn waha_inbound_text(&self, session: &str, from: &str, text: &str) -> String {
        let chat = chat_id(from);
        let id = format!("3A{}", &uuid::Uuid::new_v4().simple().to_string()[..18].to_uppercase());
        let payload = json!({"id": format!("false_{chat}_{id}"), "timestamp": now_millis() / 1000, "from": chat,
            "fromMe": false, "source": "app", "to": ME, "body": text, "hasMedia": false, "media": null,
            "ack": 2, "ackName": "DEVICE", "vCards": [],
            "_data": {"id": {"fromMe": false, "remote": chat, "id": id, "_serialized": format!("false_{chat}_{id}")},
                      "type": "chat", "body": text, "notifyName": "Sim Contact"}});
        let status = self.waha_post(session, envelope(session, "message", payload)).await;
        assert!((200..300).contains(&status), "zapgate answered {status} to a WAHA message event");
        id
    }
}

impl Sim {
    /// For flapping: session `name` `WORKING` or `STOPPED` (posting
    /// `session.status` on a change when `notify`); false if there is no such session.
    pub(crate) fn waha_set_connected(&self, name: &str, connected: bool, notify: bool) -> bool {
        let mut sessions = self.waha_sessions();
        let Some(s) = sessions.get_mut(name) else { return false };
        s.qr_shown = None;
        let status = if connected { "WORKING" } else { "STOPPED" };
        if notify {
            s.set_status(name, status);
        } else {
            s.status = status;
        }
        true
    }
}

pub(crate) fn default_sessions() -> HashMap<String, Session> {
    HashMap::from([("default".to_owned(), Session::working())])
}

pub(crate) fn routes() -> Router<Arc<Sim>> {
    use axum::routing::{get, post};
    Router::new()
        .route("/api/sessions", post(create).get(list))
        .route("/api/sessions/{session}", get(status).delete(delete))
        .route("/api/sessions/{session}/logout", post(logout))
        .route("/api/sessions/{session}/restart", post(restart))
        .route("/api/{session}/auth/qr", get(qr))
        .route("/api/{session}/auth/request-code", post(request_code))
        .route("/api/reaction", axum::routing::put(react))
        .route("/api/sendSeen", post(send_seen))
        .route("/api/{route}", post(send))
}

pub(crate) fn nest(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"statusCode": status, "message": message, "error": code.canonical_reason().unwrap_or("Error")});
    (code, Json(body)).into_response()
}

fn dto(name: &str, status: &str) -> Value {
    let me = (status == "WORKING").then(|| json!({"id": "5511900000000@c.us", "pushName": "zapgate-sim"}));
    json!({"name": name, "status": status, "config": {}, "me": me})
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn create(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_else(|| json!({}));
    sim.record("waha", "/api/sessions".into(), key(&headers), &body);
    if let Some(f) = sim.next_fault() {
        return with_retry_after(nest(f.status, &f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after);
    }
    let name = body["name"].as_str().unwrap_or("default").to_owned();
    let start = body["start"].as_bool().unwrap_or(true);
    let mut sessions = sim.waha_sessions();
    if sessions.contains_key(&name) {
        return nest(422, &format!("Session '{name}' already exists"));
    }
    let status = if start { "SCAN_QR_CODE" } else { "STOPPED" };
    let session = Session { status, qr_shown: None, hook: SessionHook::from_config(&body["config"]) };
    session.emit(&name, "session.status", json!({"name": name, "status": status, "statuses": [], "data": null}));
    sessions.insert(name.clone(), session);
    (StatusCode::CREATED, Json(dto(&name, status))).into_response()
}

/// The session list (zapgate's health check of the server); takes queued faults.
async fn list(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    sim.record("waha", "GET /api/sessions".into(), key(&headers), &Value::Null);
    if let Some(f) = sim.next_fault() {
        return with_retry_after(nest(f.status, &f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after);
    }
    let scan_after = sim.qr_scan_after();
    let mut sessions = sim.waha_sessions();
    let all: Vec<Value> = sessions.iter_mut().map(|(name, s)| dto(name, s.tick(name, scan_after))).collect();
    Json(all).into_response()
}

async fn status(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> Response {
    let scan_after = sim.qr_scan_after();
    match sim.waha_sessions().get_mut(&name) {
        Some(s) => Json(dto(&name, s.tick(&name, scan_after))).into_response(),
        None => nest(404, "Session not found"),
    }
}

async fn delete(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("waha", format!("/api/sessions/{name}"), key(&headers), &Value::Null);
    if let Some(f) = sim.next_fault() {
        return with_retry_after(nest(f.status, &f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after);
    }
    match sim.waha_sessions().remove(&name) {
        Some(_) => StatusCode::OK.into_response(),
        None => nest(404, "Session not found"),
    }
}

async fn logout(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("waha", format!("/api/sessions/{name}/logout"), key(&headers), &Value::Null);
    match sim.waha_sessions().get_mut(&name) {
        Some(s) => {
            s.qr_shown = None;
            s.set_status(&name, "STOPPED");
            (StatusCode::CREATED, Json(dto(&name, s.status))).into_response()
        }
        None => nest(404, "Session not found"),
    }
}

/// `PUT /api/reaction` `{"session","messageId","reaction"}` → 200 `{}`
/// (a reaction gets no receipts).
async fn react(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else { return nest(400, "body is required") };
    sim.record("waha", "/api/reaction".into(), key(&headers), &body);
    let session = body["session"].as_str().unwrap_or("default").to_owned();
    if !sim.waha_sessions().contains_key(&session) {
        return nest(404, "Session not found");
    }
    if !(body["messageId"].is_string() && body["reaction"].is_string()) {
        return nest(400, "messageId and reaction must be strings");
    }
    Json(json!({})).into_response()
}

/// `POST /api/sendSeen` `{"session","chatId","messageIds"?}` → 201 `{}`.
async fn send_seen(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else { return nest(400, "body is required") };
    sim.record("waha", "/api/sendSeen".into(), key(&headers), &body);
    let session = body["session"].as_str().unwrap_or("default").to_owned();
    if !sim.waha_sessions().contains_key(&session) {
        return nest(404, "Session not found");
    }
    if !body["chatId"].is_string() {
        return nest(400, "chatId must be a string");
    }
    (StatusCode::CREATED, Json(json!({}))).into_response()
}

/// A session whose connection dropped (see [`Sim::drop_connection`]) comes
/// back `WORKING`; a logged-out one starts again waiting for its QR.
async fn restart(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("waha", format!("/api/sessions/{name}/restart"), key(&headers), &Value::Null);
    let relink = sim.take_dropped(&name);
    match sim.waha_sessions().get_mut(&name) {
        Some(s) => {
            s.qr_shown = None;
            let status = match (relink, s.status) {
                (true, _) | (false, "WORKING") => "WORKING",
                _ => "SCAN_QR_CODE",
            };
            s.set_status(&name, status);
            (StatusCode::CREATED, Json(dto(&name, s.status))).into_response()
        }
        None => nest(404, "Session not found"),
    }
}

/// `POST /api/{s}/auth/request-code {"phoneNumber"}` → 201 `{"code"}` while
/// the session waits for a scan (it then links like a scanned QR); 422 otherwise.
async fn request_code(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or(Value::Null);
    sim.record("waha", format!("/api/{name}/auth/request-code"), key(&headers), &body);
    let Some(phone) = body["phoneNumber"].as_str().filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    else {
        return nest(400, "phoneNumber must be digits");
    };
    let scan_after = sim.qr_scan_after();
    let mut sessions = sim.waha_sessions();
    let Some(s) = sessions.get_mut(&name) else { return nest(404, "Session not found") };
    if s.tick(&name, scan_after) != "SCAN_QR_CODE" {
        return nest(422, "Session status is not as expected");
    }
    s.qr_shown.get_or_insert_with(Instant::now);
    let code = format!("SIM{}-CODE", &phone[phone.len().saturating_sub(4)..]);
    (StatusCode::CREATED, Json(json!({"code": code}))).into_response()
}

#[derive(Deserialize)]
struct QrQuery {
    format: Option<String>,
}

async fn qr(
    State(sim): State<Arc<Sim>>,
    Path(name): Path<String>,
    Query(q): Query<QrQuery>,
    headers: HeaderMap,
) -> Response {
    let scan_after = sim.qr_scan_after();
    let value = {
        let mut sessions = sim.waha_sessions();
        let Some(s) = sessions.get_mut(&name) else { return nest(404, "Session not found") };
        let status = s.tick(&name, scan_after);
        if status != "SCAN_QR_CODE" {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": "Session status is not as expected. Try again later or restart the session",
                            "session": name, "status": status, "expected": ["SCAN_QR_CODE"]})),
            )
                .into_response();
        }
        s.qr_shown.get_or_insert_with(Instant::now);
        format!("2@sim{name},{}", uuid::Uuid::new_v4().simple())
    };
    let wants_json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"));
    match q.format.as_deref() {
        Some("raw") => Json(json!({"value": value})).into_response(),
        _ if wants_json => Json(json!({"mimetype": "image/png",
            "data": base64::engine::general_purpose::STANDARD.encode(QR_PNG)}))
        .into_response(),
        _ => ([(header::CONTENT_TYPE, "image/png")], QR_PNG).into_response(),
    }
}

/// `sendText` / `sendImage` / `sendVideo` / `sendFile`, answering like the WEBJS engine.
async fn send(
    State(sim): State<Arc<Sim>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else { return nest(400, "body is required") };
    sim.record("waha", format!("/api/{route}"), key(&headers), &body);
    if let Some(f) = sim.next_fault() {
        return with_retry_after(nest(f.status, &f.message.unwrap_or_else(|| "simulated error".into())), f.retry_after);
    }
    if !["sendText", "sendImage", "sendVideo", "sendFile", "sendLocation"].contains(&route.as_str()) {
        return nest(404, &format!("Cannot POST /api/{route}"));
    }
    if route == "sendLocation" && !(body["latitude"].is_number() && body["longitude"].is_number()) {
        return nest(400, "latitude and longitude must be numbers");
    }
    let session = body["session"].as_str().unwrap_or("default").to_owned();
    let scan_after = sim.qr_scan_after();
    let status = match sim.waha_sessions().get_mut(&session) {
        Some(s) => s.tick(&session, scan_after),
        None => return nest(404, "Session not found"),
    };
    if status != "WORKING" {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "Session status is not as expected. Try again later or restart the session",
                        "session": session, "status": status, "expected": ["WORKING"]})),
        )
            .into_response();
    }
    let Some(chat) = body["chatId"].as_str().map(str::to_owned) else { return nest(400, "chatId must be a string") };
    let id = format!("3EB0{}", uuid::Uuid::new_v4().simple().to_string()[..16].to_uppercase());
    let serialized = format!("true_{chat}_{id}");
    if let Some(s) = sim.waha_sessions().get(&session) {
        // The receipts, as WhatsApp gives them: the server's, then the phone's.
        s.emit_after(&session, "message.ack", ack_payload(&serialized, 1), Duration::from_millis(20));
        s.emit_after(&session, "message.ack", ack_payload(&serialized, 2), Duration::from_millis(60));
    }
    let sent = json!({"id": {"fromMe": true, "remote": chat, "id": id, "_serialized": serialized},
        "ack": 0, "hasMedia": route != "sendText", "body": body["text"]});
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

    const URL: &str = "http://127.0.0.1:9/providers/waha/prv_1/webhook";

    fn hook_config(events: Value) -> Value {
        json!({"webhooks": [{"url": URL, "events": events, "hmac": {"key": "k3y"},
            "customHeaders": [{"name": "X-Extra", "value": "1"}]}]})
    }

    #[tokio::test]
    async fn a_session_keeps_its_webhook_and_reports_its_status_changes() {
        let sim = Arc::new(Sim::default());
        sim.set_qr_scan_after(Duration::ZERO);
        let body = json!({"name": "s1", "config": hook_config(json!(["message", "message.ack", "session.status"]))});
        assert_eq!(json_of(create(State(sim.clone()), HeaderMap::new(), Some(Json(body))).await).await.0, 201);
        let hook = sim.waha_hook("s1").expect("kept");
        let expected = Hook {
            url: URL.into(),
            signing: Signing::WahaSha512("k3y".into()),
            headers: vec![("X-Extra".into(), "1".into())],
        };
        assert_eq!(hook, expected);
        let statuses = |d: Vec<(Hook, Value, Duration)>| -> Vec<Value> {
            d.into_iter()
                .map(|(h, b, _)| {
                    assert_eq!(h, expected);
                    assert_eq!(
                        (b["event"].as_str(), b["session"].as_str(), b["engine"].as_str()),
                        (Some("session.status"), Some("s1"), Some("WEBJS"))
                    );
                    b["payload"]["status"].clone()
                })
                .collect()
        };
        assert_eq!(statuses(delivered()), [json!("SCAN_QR_CODE")]);

        // The QR is shown, scanned at once: WORKING, reported once.
        let raw = Query(QrQuery { format: Some("raw".into()) });
        assert_eq!(json_of(qr(State(sim.clone()), Path("s1".into()), raw, HeaderMap::new()).await).await.0, 200);
        assert_eq!(json_of(status(State(sim.clone()), Path("s1".into())).await).await.1["status"], "WORKING");
        assert_eq!(json_of(status(State(sim.clone()), Path("s1".into())).await).await.1["status"], "WORKING");
        assert_eq!(statuses(delivered()), [json!("WORKING")]);

        assert_eq!(json_of(logout(State(sim.clone()), HeaderMap::new(), Path("s1".into())).await).await.0, 201);
        assert_eq!(statuses(delivered()), [json!("STOPPED")]);
        assert!(sim.waha_hook("s1").is_some(), "a logout keeps the webhook");

        // Without webhooks a session posts nothing.
        let body = json!({"name": "s2"});
        assert_eq!(json_of(create(State(sim.clone()), HeaderMap::new(), Some(Json(body))).await).await.0, 201);
        assert_eq!(sim.waha_hook("s2"), None);
        assert!(delivered().is_empty());
    }

    #[tokio::test]
    async fn a_send_is_followed_by_acks_naming_the_id_the_answer_gave() {
        let sim = Arc::new(Sim::default());
        let hook = Hook { url: URL.into(), signing: Signing::WahaSha512("k".into()), headers: vec![] };
        assert!(sim.set_waha_hook("default", Some(hook.clone())));
        assert!(!sim.set_waha_hook("nope", None));
        let body = json!({"session": "default", "chatId": "5511999998888@c.us", "text": "hi"});
        let (code, sent) =
            json_of(send(State(sim.clone()), Path("sendText".into()), HeaderMap::new(), Some(Json(body))).await).await;
        assert_eq!(code, 201);
        let serialized = sent["id"]["_serialized"].as_str().unwrap();
        let got = delivered();
        let mut acks: Vec<(i64, &str, Duration)> = Vec::new();
        for (h, b, delay) in &got {
            assert_eq!(h, &hook);
            assert_eq!((b["event"].as_str(), b["session"].as_str()), (Some("message.ack"), Some("default")));
            assert_eq!(b["payload"]["id"], serialized);
            assert_eq!(b["payload"]["fromMe"], true);
            assert_eq!(b["payload"]["from"], "5511999998888@c.us");
            acks.push((b["payload"]["ack"].as_i64().unwrap(), b["payload"]["ackName"].as_str().unwrap(), *delay));
        }
        assert_eq!(acks, [(1, "SERVER", Duration::from_millis(20)), (2, "DEVICE", Duration::from_millis(60))]);

        // A failed send posts nothing.
        sim.push_faults([crate::Fault { status: 500, code: 0, message: None, retry_after: None }]);
        let body = json!({"session": "default", "chatId": "5511999998888@c.us", "text": "hi"});
        let res = send(State(sim.clone()), Path("sendText".into()), HeaderMap::new(), Some(Json(body))).await;
        assert_eq!(res.status(), 500);
        assert!(delivered().is_empty());
    }

    #[tokio::test]
    async fn events_the_session_did_not_ask_for_are_not_posted() {
        let sim = Arc::new(Sim::default());
        let body = json!({"name": "s1", "config": hook_config(json!(["message"]))});
        assert_eq!(json_of(create(State(sim.clone()), HeaderMap::new(), Some(Json(body))).await).await.0, 201);
        assert!(delivered().is_empty(), "no session.status");
        let hook = sim.waha_hook("s1").unwrap();
        sim.waha_sessions().get_mut("s1").unwrap().status = "WORKING";
        let body = json!({"session": "s1", "chatId": "5511999998888@c.us", "text": "hi"});
        let res = send(State(sim.clone()), Path("sendText".into()), HeaderMap::new(), Some(Json(body))).await;
        assert_eq!(res.status(), 201);
        assert!(delivered().is_empty(), "no message.ack");
        assert_eq!(hook.signing, Signing::WahaSha512("k3y".into()));
    }

    #[test]
    fn envelopes_and_acks_have_wahas_shape() {
        let e = envelope("default", "message.ack", ack_payload("true_5511999998888@c.us_3EB0AB", 3));
        assert!(e["id"].as_str().unwrap().starts_with("evt_"));
        assert!(e["timestamp"].as_i64().unwrap() > 1_700_000_000_000, "milliseconds");
        assert_eq!(e["me"]["id"], ME);
        assert_eq!(e["payload"]["ackName"], "READ");
        assert_eq!(e["payload"]["from"], "5511999998888@c.us");
        assert_eq!(chat_id("+5511999998888"), "5511999998888@c.us");
        assert_eq!(chat_id("120363012345678901@g.us"), "120363012345678901@g.us");
    }
}
