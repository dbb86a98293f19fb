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
//! - Making and listing instances and sending take queued faults.

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
    name: String,
    status: &'static str,
    qr_shown: Option<Instant>,
}

impl Instance {
    pub(crate) fn connected(name: &str) -> Self {
        Instance { name: name.to_owned(), status: "connected", qr_shown: None }
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
}

fn error(status: u16, message: &str) -> Response {
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
    let instance = Instance { name: name.clone(), status: "disconnected", qr_shown: None };
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

async fn connect(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
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
        let mut dto = i.dto(token);
        dto["qrcode"] = json!(qrcode);
        dto["paircode"] = json!("");
        Json(json!({"connected": i.status == "connected", "loggedIn": i.status == "connected", "jid": null, "instance": dto}))
            .into_response()
    })
}

async fn status(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let scan_after = sim.qr_scan_after();
    with_instance(&sim, &headers, |token, i| {
        let connected = i.tick(scan_after) == "connected";
        let jid = connected.then(|| json!({"user": "5511900000000", "server": "s.whatsapp.net"}));
        Json(json!({"instance": i.dto(token), "status": {"connected": connected, "loggedIn": connected, "jid": jid}}))
            .into_response()
    })
}

async fn disconnect(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    sim.record("uazapi", "/instance/disconnect".into(), header(&headers, "token"), &Value::Null);
    with_instance(&sim, &headers, |token, i| {
        *i = Instance { name: i.name.clone(), status: "disconnected", qr_shown: None };
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

/// `send/text` / `send/media` (header `token`).
async fn send(
    State(sim): State<Arc<Sim>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let token = header(&headers, "token");
    let Some(Json(body)) = body else { return error(400, "Missing number or text") };
    sim.record("uazapi", format!("/send/{route}"), token.clone(), &body);
    let Some(token) = token else { return error(401, "missing token") };
    if let Some(res) = fault(&sim) {
        return res;
    }
    let scan_after = sim.qr_scan_after();
    let status = match sim.uazapi_instances().get_mut(&token) {
        Some(i) => i.tick(scan_after),
        None => return error(401, "Invalid token"),
    };
    let Some(number) = body["number"].as_str().map(str::to_owned) else { return error(400, "Missing number or text") };
    if status != "connected" {
        return error(500, "Failed to send message");
    }
    let id = format!("3EB0{}", uuid::Uuid::new_v4().simple().to_string()[..16].to_uppercase());
    let chat = if number.contains('@') { number } else { format!("{number}@s.whatsapp.net") };
    let sent = json!({"id": format!("5581900000000:{id}"), "messageid": id, "chatid": chat, "fromMe": true,
        "messageType": if route == "text" { "Conversation" } else { "ImageMessage" }, "messageTimestamp": 1769798428000u64,
        "wasSentByApi": true, "response": {"status": "success", "message": "Message sent successfully"}});
    Json(sent).into_response()
}
