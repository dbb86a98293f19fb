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

use super::{Sim, with_retry_after};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    state: &'static str,
    qr_shown: Option<Instant>,
}

impl Instance {
    pub(crate) fn open() -> Self {
        Instance { state: "open", qr_shown: None }
    }

    fn tick(&mut self, scan_after: std::time::Duration) -> &'static str {
        if self.state == "connecting" && self.qr_shown.is_some_and(|t| t.elapsed() >= scan_after) {
            self.state = "open";
        }
        self.state
    }
}

pub(crate) fn routes() -> Router<Arc<Sim>> {
    use axum::routing::{delete, get, post};
    Router::new()
        .route("/instance/create", post(create))
        .route("/instance/fetchInstances", get(list))
        .route("/instance/connect/{instance}", get(connect))
        .route("/instance/connectionState/{instance}", get(state))
        .route("/instance/logout/{instance}", delete(logout))
        .route("/instance/delete/{instance}", delete(remove))
        .route("/message/{route}/{instance}", post(send))
}

fn error(status: u16, message: impl Into<Value>) -> Response {
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
    instances.insert(name.clone(), Instance { state: "connecting", qr_shown: None });
    let created = json!({
        "instance": {"instanceName": name, "instanceId": uuid::Uuid::new_v4().to_string(),
                     "integration": integration, "status": "connecting"},
        "hash": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "webhook": {}, "settings": {},
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

async fn connect(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    // A closed (logged-out) instance reconnects: a new QR.
    if i.state == "close" {
        *i = Instance { state: "connecting", qr_shown: None };
    }
    if i.tick(scan_after) == "open" {
        return Json(json!({"instance": {"instanceName": name, "state": "open"}})).into_response();
    }
    i.qr_shown.get_or_insert_with(Instant::now);
    let image = base64::engine::general_purpose::STANDARD.encode(super::waha::QR_PNG);
    Json(json!({"pairingCode": null, "code": format!("2@sim{name},{}", uuid::Uuid::new_v4().simple()),
                "base64": format!("data:image/png;base64,{image}"), "count": 1}))
    .into_response()
}

async fn state(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    Json(json!({"instance": {"instanceName": name, "state": i.tick(scan_after)}})).into_response()
}

async fn logout(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    sim.record("evolution", format!("/instance/logout/{name}"), key(&headers), &Value::Null);
    let scan_after = sim.qr_scan_after();
    let mut instances = sim.evolution_instances();
    let Some(i) = instances.get_mut(&name) else { return missing(&name) };
    if key(&headers).is_none() {
        return unauthorized();
    }
    if i.tick(scan_after) != "open" {
        return error(400, format!("The \"{name}\" instance is not connected"));
    }
    *i = Instance { state: "close", qr_shown: None };
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

/// `sendText` / `sendMedia` (faults use `status`; `code` is ignored).
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
        Some(i) => i.tick(scan_after),
        None => return missing(&instance),
    };
    if key(&headers).is_none() {
        return unauthorized();
    }
    if let Some(res) = fault(&sim) {
        return res;
    }
    let number = body["number"].as_str().unwrap_or_default().to_owned();
    let (required, kind) = match route.as_str() {
        "sendText" => ("text", "conversation"),
        "sendMedia" => ("mediatype", "imageMessage"),
        _ => return error(404, format!("Cannot POST /message/{route}/{instance}")),
    };
    if number.is_empty() || body.get(required).is_none() {
        return error(400, format!("instance requires property \"{required}\""));
    }
    if state != "open" {
        return error(400, "Error: Connection Closed");
    }
    let jid = if number.contains('@') { number } else { format!("{number}@s.whatsapp.net") };
    let id = format!("3EB0{}", uuid::Uuid::new_v4().simple().to_string()[..16].to_uppercase());
    let sent = json!({"key": {"remoteJid": jid, "fromMe": true, "id": id}, "pushName": "Você", "status": "PENDING",
        "messageType": kind, "messageTimestamp": 1717689097, "instanceId": uuid::Uuid::new_v4().to_string(), "source": "web"});
    (StatusCode::CREATED, Json(sent)).into_response()
}
