//! The REST API (axum): one file per resource, shared extractors in
//! [`extract`], the error shape in [`error`], OpenAPI and the docs page in
//! [`docs`].

pub mod audiences;
pub mod campaigns;
pub mod chatwoot;
pub mod chatwoot_ingest;
pub mod circuits;
pub mod dead_letters;
pub mod docs;
pub mod error;
pub mod extract;
pub mod graph;
pub mod health;
pub mod inbound;
pub mod ingest;
pub mod instances;
pub mod media;
pub mod messages;
pub mod providers;
pub mod schedules;
pub mod sessions;
pub mod templates;
pub mod tenants;
pub mod webhooks;

use crate::config::Config;
use crate::worker::WorkSignal;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use error::ApiError;
use extract::TokenCache;
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use zapgate_backends::Backends;
use zapgate_domain::TokenHash;
use zapgate_providers::Providers;

#[derive(Clone)]
pub struct AppState {
    pub backends: Backends,
    pub providers: Providers,
    pub config: Arc<Config>,
    pub admin_hash: TokenHash,
    pub tokens: Arc<TokenCache>,
    pub work: Arc<WorkSignal>,
    pub egress: crate::egress::Egress,
    /// Messages waiting in the queue, as last measured (about every second).
    pub queue_depth: Arc<crate::worker::janitor::Backlog>,
    /// Provider webhook accounts, briefly cached.
    pub ingest: Arc<ingest::IngestAccounts>,
}

/// The REST API; with `ingest`, the provider webhook routes too (`serve`
/// without a listener of their own).
pub fn router(state: AppState, ingest: bool) -> Router {
    let max_body = state.config.max_body_bytes;
    let api = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(docs::openapi_json))
        .route("/docs", get(docs::page))
        .route("/v1/tenants", post(tenants::create).get(tenants::list))
        .route("/v1/tenants/{tenant_id}/tokens", post(tenants::create_token).get(tenants::list_tokens))
        .route("/v1/tenants/{tenant_id}/tokens/{token_id}", axum::routing::delete(tenants::revoke_token))
        .route("/v1/providers", post(providers::create).get(providers::list))
        .route("/v1/circuits", get(circuits::list))
        .route("/v1/providers/{provider_id}", get(providers::get).patch(providers::update).delete(providers::delete))
        .route("/v1/instances", post(instances::create).get(instances::list))
        .route("/v1/instances/{instance_id}", get(instances::get).patch(instances::update).delete(instances::delete))
        .route("/v1/instances/{instance_id}/qr", get(sessions::qr))
        .route("/v1/instances/{instance_id}/logout", post(sessions::logout))
        .route("/v1/instances/{instance_id}/pairing-code", post(sessions::pairing_code))
        .route("/v1/messages", post(messages::send).get(messages::list))
        .route("/v1/messages/{message_id}", get(messages::get).delete(messages::cancel))
        .route("/v1/chatwoot-integrations", post(chatwoot::create).get(chatwoot::list))
        .route(
            "/v1/chatwoot-integrations/{integration_id}",
            get(chatwoot::get).patch(chatwoot::update).delete(chatwoot::delete),
        )
        .route("/v1/templates", post(templates::create).get(templates::list))
        .route("/v1/templates/{template_id}", get(templates::get).delete(templates::delete))
        .route("/v1/audiences", post(audiences::create).get(audiences::list))
        .route("/v1/audiences/{audience_id}", get(audiences::get).delete(audiences::delete))
        .route("/v1/audiences/{audience_id}/members", post(audiences::add_members).get(audiences::list_members))
        .route("/v1/audiences/{audience_id}/members/{to}", axum::routing::delete(audiences::delete_member))
        .route("/v1/campaigns", post(campaigns::create).get(campaigns::list))
        .route("/v1/campaigns/{campaign_id}", get(campaigns::get))
        // CSV uploads stream with their own limit (1 GiB).
        .route(
            "/v1/campaigns/{campaign_id}/recipients",
            post(campaigns::add_recipients).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/campaigns/{campaign_id}/rejects", get(campaigns::rejects))
        .route("/v1/campaigns/{campaign_id}/start", post(campaigns::start))
        .route("/v1/campaigns/{campaign_id}/pause", post(campaigns::pause))
        .route("/v1/campaigns/{campaign_id}/resume", post(campaigns::resume))
        .route("/v1/campaigns/{campaign_id}/cancel", post(campaigns::cancel))
        .route("/v1/schedules", post(schedules::create).get(schedules::list))
        .route("/v1/schedules/{schedule_id}", get(schedules::get).patch(schedules::update).delete(schedules::delete))
        .route("/v1/schedules/{schedule_id}/runs", get(schedules::runs))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{webhook_id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/v1/webhooks/{webhook_id}/secret", get(webhooks::secret))
        .route("/v1/webhooks/{webhook_id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/v1/webhooks/{webhook_id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{webhook_id}/replay", post(webhooks::replay_failed))
        .route("/v1/deliveries/{delivery_id}", get(webhooks::delivery))
        .route("/v1/deliveries/{delivery_id}/replay", post(webhooks::replay))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/{message_id}/replay", post(dead_letters::replay))
        .route("/v1/inbound-messages", get(inbound::list))
        .route("/v1/inbound-messages/{message_id}", get(inbound::get))
        .route("/v1/inbound-messages/{message_id}/read", post(inbound::mark_read))
        // Uploads read their body with their own limit (ZAPGATE_MEDIA_MAX_BYTES).
        .route("/v1/media", post(media::upload).layer(DefaultBodyLimit::disable()))
        .route("/v1/media/{media_id}", get(media::download).delete(media::delete))
        .route("/v1/media/{media_id}/info", get(media::info))
        .merge(graph::routes());
    let api = if ingest { api.merge(ingest_routes()) } else { api };
    api.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        // The path only: a query may carry a token (`?access_token=` of the Graph facade).
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}

/// The routes providers call: their webhooks and media links. Served by
/// `serve` with the API (or on `ZAPGATE_INGEST_LISTEN`) and by `zapgate ingest`.
fn ingest_routes() -> Router<AppState> {
    Router::new()
        .route("/providers/{kind}/{account}/webhook", post(ingest::receive).get(ingest::handshake))
        .route("/webhooks/chatwoot/{integration_id}", post(chatwoot_ingest::receive))
        // Where providers fetch uploaded media sent by id (see `media::public_link`).
        .route("/media/{tenant_id}/{media_id}/{token}", get(media::public_download))
}

/// What `zapgate ingest` (or `serve`'s own ingest listener) serves: provider
/// webhooks, health and metrics, with only the layers they need.
pub fn ingest_router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(crate::metrics::render))
        .merge(ingest_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

/// What a worker-only process serves: health and metrics.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(crate::metrics::render))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

/// Runs `work` to the end even if the client disconnects: what follows a
/// commit (waking the dispatcher, retiring a lane) must not be skipped
/// because axum dropped the handler.
pub async fn detached<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route; see /docs")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}

/// A display name (`field`): trimmed, 1–100 characters, no control characters.
pub fn display_name(field: &str, raw: &str) -> Result<String, zapgate_domain::ValidationError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(zapgate_domain::ValidationError::new(
            field,
            "must be 1 to 100 characters, none of them control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Paging of long lists (audience members, rejected campaign rows): the
/// previous page's `next_cursor` and 1–1000 rows a page.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct LongPage {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<u32>,
}

impl LongPage {
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000")),
        }
    }
}

/// Query-string pagination shared by list routes (newest first).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct PageParams {
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    pub limit: Option<u32>,
}

impl PageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n @ 1..=500) => Ok(n),
            Some(_) => Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 500")),
        }
    }

    /// The cursor as the id it stands for (rows older than it come next).
    pub fn before<T>(&self, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| parse(c).ok_or_else(|| ApiError::bad_request("invalid_query", "cursor is not valid")))
            .transpose()
    }
}

/// The cursor of the next page: the last row's id when the page is full.
pub fn next_cursor<T>(rows: &[T], limit: u32, id: impl Fn(&T) -> String) -> Option<String> {
    (rows.len() as u32 == limit).then(|| rows.last().map(id)).flatten()
}
