//! `zapgate-sim`: providers zapgate talks to, simulated over real HTTP, with
//! fault injection. Today: the send routes of the WhatsApp Cloud API, Evolution API v2, WAHA
//! and UAZAPI.
//!
//! - `POST /{version}/{phone_number_id}/messages` — answers like Meta
//!   (`{"messaging_product","contacts":[{"input","wa_id"}],"messages":[{"id":"wamid.…"}]}`),
//!   or with the next queued fault.
//! - Evolution API v2 (`apikey` header): instances with a QR flow and the send routes,
//!   answering `201` with a Baileys message (`key.id`) — see [`evolution`].
//! - WAHA (`X-Api-Key`): sessions with a QR flow and the send routes, answering `201`
//!   like the WEBJS engine (`id._serialized`) — see [`waha`].
//! - UAZAPI (`admintoken` / `token` headers): instances with a QR flow and the send
//!   routes, answering with `messageid` — see [`uazapi`].
//! - `POST /_sim/faults` — queue answers for the next sends:
//!   `[{"status":429,"code":130429,"retry_after":1}, {"status":400,"code":131026}]`.
//! - `POST /{version}/{phone_number_id}/media` — Cloud API media upload
//!   (multipart `messaging_product`, `type`, `file`) → `{"id"}`; a send naming
//!   `{kind}.id` must use an uploaded id — see [`cloud`].
//! - `GET /_sim/received` — every send request received (path, token, body).
//! - `POST /_sim/faults/rules` — per-route fault injection rules (one or a list):
//!   `{"route":"send|session|status|*","provider":"cloud|evolution|waha|uazapi|*",
//!   "error_rate":0.2,"status":500,"code":131000,"retry_after":2,
//!   "latency_ms":{"min":5,"max":50},"timeout":true,"reset":true,"count":3}`;
//!   `GET` lists them (with `id`, `hits`, `remaining`), `DELETE` clears them —
//!   see [`rules`]. In Rust: [`Sim::add_rule`], [`Sim::rules`], [`Sim::clear_rules`].
//! - `POST /_sim/flap` `{"instance","period_ms"}` — the instance's connection
//!   flips every `period_ms` (status routes and connection webhooks follow);
//!   `DELETE /_sim/flap/{instance}` or `DELETE /_sim/flap` stops it, `GET`
//!   lists — see [`flap`]; [`Sim::flap`], [`Sim::stop_flap`].
//! - `POST /_sim/drop` `{"instance","notify":false}` — the instance's
//!   connection drops while it stays linked (silently unless `notify`); a
//!   reconnect request brings it back — [`Sim::drop_connection`].
//! - `GET /_sim/counters` — sends, unique messages, duplicates, per route,
//!   per message id and per content key; `POST /_sim/counters/reset` — see
//!   [`counters`]; [`Sim::counters`], [`Sim::reset_counters`].
//!
//! Used in-process by tests (`start`) and as a binary by hand or by the bench.

pub mod chatwoot;
pub mod cloud;
pub mod cloud_receiver;
pub mod counters;
pub mod evolution;
pub mod flap;
pub mod hooks;
pub mod receiver;
pub mod redis_server;
pub mod rules;
pub mod tcp;
pub mod uazapi;
pub mod waha;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
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
    /// `cloud_api`, `evolution`, `waha` or `uazapi`.
    pub provider: &'static str,
    pub path: String,
    /// The credential presented (Bearer token or `apikey`).
    pub token: Option<String>,
    pub body: Value,
}

pub use counters::Counters;
pub use rules::{FaultRule, Latency, Provider, RouteKind, StoredRule};

pub struct Sim {
    faults: Mutex<VecDeque<Fault>>,
    rules: Mutex<rules::Rules>,
    counters: Mutex<counters::State>,
    /// The flapping instances' tasks, by instance.
    flaps: Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Instances whose connection dropped while linked (see [`flap`]).
    dropped: Mutex<std::collections::HashSet<String>>,
    received: Mutex<Vec<Received>>,
    waha_sessions: Mutex<std::collections::HashMap<String, waha::Session>>,
    evolution_instances: Mutex<std::collections::HashMap<String, evolution::Instance>>,
    /// By instance token.
    uazapi_instances: Mutex<std::collections::HashMap<String, uazapi::Instance>>,
    /// How long after its QR is first fetched a session counts as scanned.
    qr_scan_after: Mutex<std::time::Duration>,
    /// Where Cloud API webhooks go (see [`cloud`]).
    cloud_hook: Mutex<Option<hooks::Hook>>,
    /// Media uploaded to the Cloud API (`POST /{v}/{phone_number_id}/media`), by id.
    cloud_media: Mutex<std::collections::HashMap<String, cloud::Uploaded>>,
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            faults: Mutex::default(),
            rules: Mutex::default(),
            counters: Mutex::default(),
            flaps: Mutex::default(),
            dropped: Mutex::default(),
            received: Mutex::default(),
            waha_sessions: Mutex::new(waha::default_sessions()),
            evolution_instances: Mutex::default(),
            uazapi_instances: Mutex::default(),
            qr_scan_after: Mutex::new(std::time::Duration::from_millis(300)),
            cloud_hook: Mutex::default(),
            cloud_media: Mutex::default(),
        }
    }
}

/// The sim's routes. Served by [`start`], a `reset` rule resets the TCP
/// connection; served otherwise it answers 502 instead (see [`rules`]).
pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/{version}/{phone_number_id}/messages", post(cloud_send))
        .route("/{version}/{phone_number_id}/media", post(cloud::upload))
        .route("/{version}/{waba_id}/message_templates", get(cloud::templates))
        .merge(waha::routes())
        .merge(evolution::routes())
        .merge(uazapi::routes())
        .route_layer(axum::middleware::from_fn_with_state(sim.clone(), rules::gate))
        .route("/_sim/faults", post(add_faults))
        .route("/_sim/faults/rules", post(add_rules).get(list_rules).delete(clear_rules))
        .route("/_sim/received", get(received))
        .route("/_sim/counters", get(counters))
        .route("/_sim/counters/reset", post(reset_counters))
        .route("/_sim/flap", post(start_flap).get(list_flaps).delete(stop_flaps))
        .route("/_sim/flap/{instance}", delete(stop_flap))
        .route("/_sim/drop", post(drop_connection))
        .with_state(sim)
}

/// `res` with a `Retry-After` header when `secs` is given.
fn with_retry_after(mut res: Response, secs: Option<u64>) -> Response {
    if let Some(s) = secs {
        res.headers_mut().insert("retry-after", s.into());
    }
    res
}

/// Serves the simulator on `addr` (port 0 for any) in this process.
pub async fn start(addr: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<Sim>)> {
    let sim = Arc::new(Sim::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(sim.clone()).into_make_service_with_connect_info::<rules::ResetSwitch>();
    tokio::spawn(async move {
        let _ = axum::serve(rules::SimListener(listener), app).await;
    });
    Ok((local, sim))
}

impl Sim {
    fn record(&self, provider: &'static str, path: String, token: Option<String>, body: &Value) {
        self.received.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
            provider,
            path,
            token,
            body: body.clone(),
        });
    }

    fn next_fault(&self) -> Option<Fault> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).extend(faults);
    }

    /// How long after its QR is first fetched a session is "scanned" (default 300 ms).
    pub fn set_qr_scan_after(&self, after: std::time::Duration) {
        *self.qr_scan_after.lock().unwrap_or_else(|p| p.into_inner()) = after;
    }

    fn qr_scan_after(&self) -> std::time::Duration {
        *self.qr_scan_after.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waha_sessions(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, waha::Session>> {
        self.waha_sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evolution_instances(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, evolution::Instance>> {
        self.evolution_instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An Evolution instance that exists already, connected (one a tenant
    /// made on its own server).
    pub fn add_evolution_instance(&self, name: &str) {
        self.evolution_instances().insert(name.to_owned(), evolution::Instance::open());
    }

    /// The Evolution instances that exist now.
    pub fn evolution_instance_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.evolution_instances().keys().cloned().collect();
        names.sort();
        names
    }

    fn uazapi_instances(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, uazapi::Instance>> {
        self.uazapi_instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A UAZAPI instance that exists already, connected, with this token.
    pub fn add_uazapi_instance(&self, token: &str) {
        self.uazapi_instances().insert(token.to_owned(), uazapi::Instance::connected("existing"));
    }

    /// The names of the UAZAPI instances that exist now.
    pub fn uazapi_instance_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.uazapi_instances().values().map(|i| i.name().to_owned()).collect();
        names.sort();
        names
    }

    /// The token of the UAZAPI instance named `name` (made through `/instance/init`).
    pub fn uazapi_token(&self, name: &str) -> Option<String> {
        self.uazapi_instances().iter().find(|(_, i)| i.name() == name).map(|(token, _)| token.clone())
    }

    /// The WAHA sessions that exist now.
    pub fn waha_session_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.waha_sessions().keys().cloned().collect();
        names.sort();
        names
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
    sim.record("cloud_api", format!("/{version}/{phone_number_id}/messages"), token.clone(), &body);
    if token.is_none() {
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token", None);
    }
    if let Some(f) = sim.next_fault() {
        let message = f.message.unwrap_or_else(|| format!("simulated error {}", f.code));
        return graph_error(f.status, f.code, &message, f.retry_after);
    }
    if body["messaging_product"] != "whatsapp" {
        return graph_error(400, 100, "(#100) The parameter messaging_product is required.", None);
    }
    // Marking a received message as read.
    if body["status"] == "read" {
        return match body["message_id"].as_str() {
            Some(id) if id.starts_with("wamid.") => Json(json!({"success": true})).into_response(),
            _ => graph_error(400, 100, "(#100) Invalid parameter: message_id", None),
        };
    }
    // Media by id must have been uploaded (Meta: 131053, media upload error).
    let kind = body["type"].as_str().unwrap_or_default();
    if let Some(media_id) = body[kind]["id"].as_str()
        && sim.cloud_uploaded(media_id).is_none()
    {
        return graph_error(400, 131053, "Media upload error: unknown media id", None);
    }
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let id = format!("wamid.{}", uuid::Uuid::new_v4().simple());
    cloud::sent(&sim, &phone_number_id, &to, &id);
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

/// `POST /_sim/faults/rules`: one rule or a list; 201 with the rules in force.
async fn add_rules(State(sim): State<Arc<Sim>>, Json(body): Json<Value>) -> Response {
    let rules: Result<Vec<FaultRule>, _> = match body {
        Value::Array(_) => serde_json::from_value(body),
        one => serde_json::from_value(one).map(|r| vec![r]),
    };
    let rules = match rules {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"error": e.to_string()}))).into_response(),
    };
    if let Some(e) = rules.iter().find_map(|r| r.check().err()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
    }
    for r in rules {
        sim.add_rule(r);
    }
    (StatusCode::CREATED, Json(sim.rules())).into_response()
}

async fn list_rules(State(sim): State<Arc<Sim>>) -> Json<Vec<StoredRule>> {
    Json(sim.rules())
}

async fn clear_rules(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.clear_rules();
    StatusCode::NO_CONTENT
}

async fn counters(State(sim): State<Arc<Sim>>) -> Json<Counters> {
    Json(sim.counters())
}

async fn reset_counters(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.reset_counters();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FlapRequest {
    instance: String,
    period_ms: u64,
}

/// `POST /_sim/flap`: 204, 404 for an unknown instance, 400 for a zero period.
async fn start_flap(State(sim): State<Arc<Sim>>, Json(f): Json<FlapRequest>) -> Response {
    if f.period_ms == 0 {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "period_ms must be above 0"}))).into_response();
    }
    if !sim.flap(&f.instance, std::time::Duration::from_millis(f.period_ms)) {
        let error = format!("no instance or session {:?}", f.instance);
        return (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct DropRequest {
    instance: String,
    #[serde(default)]
    notify: bool,
}

/// `POST /_sim/drop`: 204, 404 for an unknown instance.
async fn drop_connection(State(sim): State<Arc<Sim>>, Json(d): Json<DropRequest>) -> Response {
    if !sim.drop_connection(&d.instance, d.notify) {
        let error = format!("no instance or session {:?}", d.instance);
        return (StatusCode::NOT_FOUND, Json(json!({"error": error}))).into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn list_flaps(State(sim): State<Arc<Sim>>) -> Json<Vec<String>> {
    Json(sim.flapping())
}

async fn stop_flap(State(sim): State<Arc<Sim>>, Path(instance): Path<String>) -> StatusCode {
    if sim.stop_flap(&instance) { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

async fn stop_flaps(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.stop_flaps();
    StatusCode::NO_CONTENT
}
