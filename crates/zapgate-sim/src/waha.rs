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
//! - `DELETE /api/sessions/{s}` → 200; unknown → 404.
//! - Creating and deleting sessions and sending take queued faults (`POST /_sim/faults`).
//! - `POST /api/{sendText|sendImage|sendVideo|sendFile}`: the session must be
//!   `WORKING` (else 422 as WAHA answers), and exist (else 404). The session
//!   `default` exists from the start, `WORKING`, as on a WAHA Core server.

use super::{Sim, with_retry_after};
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

#[derive(Debug, Clone)]
pub(crate) struct Session {
    status: &'static str,
    /// When the QR was first fetched: the "scan" completes a delay later.
    qr_shown: Option<Instant>,
}

impl Session {
    fn working() -> Self {
        Session { status: "WORKING", qr_shown: None }
    }

    /// The status now, moving `SCAN_QR_CODE` to `WORKING` once scanned.
    fn tick(&mut self, scan_after: Duration) -> &'static str {
        if self.status == "SCAN_QR_CODE" && self.qr_shown.is_some_and(|t| t.elapsed() >= scan_after) {
            self.status = "WORKING";
        }
        self.status
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
        .route("/api/{session}/auth/qr", get(qr))
        .route("/api/{route}", post(send))
}

fn nest(status: u16, message: &str) -> Response {
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
    sessions.insert(name.clone(), Session { status, qr_shown: None });
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
    let all: Vec<Value> = sessions.iter_mut().map(|(name, s)| dto(name, s.tick(scan_after))).collect();
    Json(all).into_response()
}

async fn status(State(sim): State<Arc<Sim>>, Path(name): Path<String>) -> Response {
    let scan_after = sim.qr_scan_after();
    match sim.waha_sessions().get_mut(&name) {
        Some(s) => Json(dto(&name, s.tick(scan_after))).into_response(),
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
            *s = Session { status: "STOPPED", qr_shown: None };
            (StatusCode::CREATED, Json(dto(&name, s.status))).into_response()
        }
        None => nest(404, "Session not found"),
    }
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
        let status = s.tick(scan_after);
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
    if !["sendText", "sendImage", "sendVideo", "sendFile"].contains(&route.as_str()) {
        return nest(404, &format!("Cannot POST /api/{route}"));
    }
    let session = body["session"].as_str().unwrap_or("default").to_owned();
    let scan_after = sim.qr_scan_after();
    let status = match sim.waha_sessions().get_mut(&session) {
        Some(s) => s.tick(scan_after),
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
    let sent = json!({"id": {"fromMe": true, "remote": chat, "id": id, "_serialized": format!("true_{chat}_{id}")},
        "ack": 0, "hasMedia": route != "sendText", "body": body["text"]});
    (StatusCode::CREATED, Json(sent)).into_response()
}
