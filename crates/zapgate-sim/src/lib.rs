//! `zapgate-sim`: providers zapgate talks to, simulated over real HTTP, with
//! fault injection. Today: the WhatsApp Cloud API send route.
//!
//! - `POST /{version}/{phone_number_id}/messages` — answers like Meta
//!   (`{"messaging_product","contacts":[{"input","wa_id"}],"messages":[{"id":"wamid.…"}]}`),
//!   or with the next queued fault.
//! - `POST /_sim/faults` — queue answers for the next sends:
//!   `[{"status":429,"code":130429,"retry_after":1}, {"status":400,"code":131026}]`.
//! - `GET /_sim/received` — every send request received (path, token, body).
//!
//! Used in-process by tests (`start`) and as a binary by hand or by the bench.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One scripted answer instead of success.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Fault {
    pub status: u16,
    /// Graph API error code in the body.
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds, sent as `Retry-After`.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub phone_number_id: String,
    pub version: String,
    pub token: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct Sim {
    faults: Mutex<VecDeque<Fault>>,
    received: Mutex<Vec<Received>>,
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/{version}/{phone_number_id}/messages", post(cloud_send))
        .route("/_sim/faults", post(add_faults))
        .route("/_sim/received", get(received))
        .with_state(sim)
}

/// Serves the simulator on `addr` (port 0 for any) in this process.
pub async fn start(addr: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<Sim>)> {
    let sim = Arc::new(Sim::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(sim.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, sim))
}

impl Sim {
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).extend(faults);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn graph_error(status: u16, code: i64, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "error_subcode": null, "fbtrace_id": format!("Sim{}", uuid::Uuid::new_v4().simple())}});
    let mut res = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), Json(body)).into_response();
    if let Some(s) = retry_after {
        res.headers_mut().insert("retry-after", s.into());
    }
    res
}

async fn cloud_send(
    State(sim): State<Arc<Sim>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(Json(body)) = body else {
        return graph_error(400, 100, "(#100) The parameter messaging_product is required.", None);
    };
    sim.received.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
        phone_number_id,
        version,
        token: token.clone(),
        body: body.clone(),
    });
    if token.is_none() {
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token", None);
    }
    if let Some(f) = sim.faults.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
        let message = f.message.unwrap_or_else(|| format!("simulated error {}", f.code));
        return graph_error(f.status, f.code, &message, f.retry_after);
    }
    if body["messaging_product"] != "whatsapp" {
        return graph_error(400, 100, "(#100) The parameter messaging_product is required.", None);
    }
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let id = format!("wamid.{}", uuid::Uuid::new_v4().simple());
    Json(json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": id}]}))
        .into_response()
}

async fn add_faults(State(sim): State<Arc<Sim>>, Json(faults): Json<Vec<Fault>>) -> StatusCode {
    sim.push_faults(faults);
    StatusCode::NO_CONTENT
}

async fn received(State(sim): State<Arc<Sim>>) -> Json<Vec<Received>> {
    Json(sim.received())
}
