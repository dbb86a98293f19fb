use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, `degraded` or `down`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "ops", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok", store: None })
}

/// Every backend answers (the store, through its writer too).
#[utoipa::path(get, path = "/health/ready", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), s.backends.store.ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, Json(Health { status: "ok", store: Some("ok") })),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "down", store: Some("down") })),
    }
}
