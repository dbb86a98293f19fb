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
    /// `ok` or `down` (limits and locks then fall back to this process), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<&'static str>,
    /// `ok` or `down` (RabbitMQ is reconnecting; accepted messages wait in the
    /// outbox meanwhile), when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "ops", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok", store: None, redis: None, rabbitmq: None })
}

/// Every backend answers (the store, through its writer too).
#[utoipa::path(get, path = "/health/ready", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(s): State<AppState>) -> (StatusCode, Json<Health>) {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), s.backends.store.ping()).await;
    let redis = match &s.backends.redis {
        Some(r) => Some(if r.ping().await { "ok" } else { "down" }),
        None => None,
    };
    let rabbitmq = s.backends.broker.as_ref().map(|b| if b.healthy() { "ok" } else { "down" });
    match ping {
        // Redis holds only soft state, and while RabbitMQ is away accepts still
        // land in the outbox: without either this process still works, degraded.
        Ok(Ok(())) => {
            let status = if redis == Some("down") || rabbitmq == Some("down") { "degraded" } else { "ok" };
            (StatusCode::OK, Json(Health { status, store: Some("ok"), redis, rabbitmq }))
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "down", store: Some("down"), redis, rabbitmq })),
    }
}
