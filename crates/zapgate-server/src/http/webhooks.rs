//! Webhook subscriptions, their deliveries and replays.

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, TenantAuth};
use super::{AppState, PageParams};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zapgate_backends::{AttemptRecord, DeliveryRecord, EndpointChange, EndpointRecord, NewEndpoint};
use zapgate_domain::webhook::{WebhookFormat, WebhookSecret};
use zapgate_domain::{DeliveryId, EndpointId, EventType, Timestamp, ValidationError};

const EVENT_TYPES: [EventType; EventType::ALL.len()] = EventType::ALL;
const MAX_ENDPOINTS: usize = 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where to POST events (http or https; internal addresses are refused
    /// unless `ZAPGATE_WEBHOOK_ALLOW_PRIVATE=true`).
    pub url: String,
    #[serde(default)]
    pub description: String,
    /// Event types to deliver (`message.status`, `message.ack_timeout`,
    /// `webhook.delivery_failed`); empty or absent = all but `webhook.delivery_failed`.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Also deliver internal steps (queued, sending, retry_wait, scheduled).
    #[serde(default)]
    pub include_internal: bool,
    /// Extra headers for every delivery, e.g. `{"Authorization": "Bearer …"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `standard` (default: zapgate's events, Standard Webhooks) or
    /// `cloud_api` (the WhatsApp Cloud API's payloads for `message.status`
    /// and `message.received`, signed with `X-Hub-Signature-256`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// `cloud_api`: the app secret deliveries are signed with (8–256
    /// characters; one is made when absent and shown once in the answer).
    pub app_secret: Option<String>,
    /// Only events of this instance (default: every instance of the tenant).
    pub instance_id: Option<String>,
    /// Only these statuses of `message.status` events, e.g. `["failed",
    /// "dead"]` for an alerting endpoint (default: every status).
    #[serde(default)]
    pub statuses: Vec<String>,
    /// `cloud_api`: first verify the receiver as Meta does — `GET
    /// url?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…` must
    /// answer the challenge, or the webhook is not created (422).
    pub verify_token: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub include_internal: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
    /// An instance id, or `""` for every instance.
    pub instance_id: Option<String>,
    pub statuses: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub endpoint: EndpointRecord,
    /// Verify signatures with this (`whsec_…`). Also at `GET /v1/webhooks/{id}/secret`.
    pub secret: String,
    /// `cloud_api`: the app secret `X-Hub-Signature-256` is made with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookSecretBody {
    pub secret: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub data: Vec<EndpointRecord>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryWithAttempts {
    #[serde(flatten)]
    pub delivery: DeliveryRecord,
    /// Every attempt, oldest first.
    pub attempt_history: Vec<AttemptRecord>,
}

fn check_url(s: &AppState, url: &str) -> ApiResult<String> {
    s.egress.check_url(url).map(|u| u.to_string()).map_err(|e| ValidationError::new("url", e.to_string()).into())
}

fn check_types(types: &[String]) -> ApiResult<()> {
    for t in types {
        if !EVENT_TYPES.iter().any(|e| e.as_str() == t) {
            let known: Vec<_> = EVENT_TYPES.iter().map(|e| e.as_str()).collect();
            return Err(ValidationError::new(
                "event_types",
                format!("unknown event type {t:?}; known: {}", known.join(", ")),
            )
            .into());
        }
    }
    Ok(())
}

fn check_headers(h: &BTreeMap<String, String>) -> ApiResult<()> {
    if h.len() > 20 {
        return Err(ValidationError::new("headers", "at most 20 headers").into());
    }
    for (k, v) in h {
        let name_ok = axum::http::HeaderName::from_bytes(k.as_bytes()).is_ok();
        let lower = k.to_ascii_lowercase();
        let reserved = lower.starts_with("webhook-")
            || [
                "content-type",
                "content-length",
                "host",
                "connection",
                "transfer-encoding",
                "te",
                "upgrade",
                "keep-alive",
                "proxy-authorization",
                "trailer",
            ]
            .contains(&lower.as_str());
        if !name_ok || reserved || axum::http::HeaderValue::from_str(v).is_err() {
            return Err(ValidationError::new("headers", format!("header {k:?} is not allowed or not valid")).into());
        }
    }
    Ok(())
}

/// What the Cloud API has webhooks for.
const CLOUD_TYPES: [EventType; 2] = [EventType::MessageStatus, EventType::MessageReceived];

fn check_cloud(types: &[String], include_internal: bool) -> ApiResult<()> {
    if let Some(t) = types.iter().find(|t| !CLOUD_TYPES.iter().any(|c| c.as_str() == t.as_str())) {
        return Err(ValidationError::new(
            "event_types",
            format!("a cloud_api webhook takes message.status and message.received, not {t:?}"),
        )
        .into());
    }
    if include_internal {
        return Err(ValidationError::new("include_internal", "the Cloud API has no internal statuses").into());
    }
    Ok(())
}

fn check_app_secret(a: String) -> ApiResult<String> {
    if (8..=256).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(a)
    } else {
        Err(ValidationError::new("app_secret", "must be 8 to 256 visible ASCII characters").into())
    }
}

/// Meta's subscription handshake against the receiver: it must answer the
/// challenge, proving it is the receiver the tenant means (and is up).
async fn verify_receiver(s: &AppState, url: &str, verify_token: &str) -> ApiResult<()> {
    let challenge = rand::random::<u32>().to_string();
    let mut target = url::Url::parse(url).map_err(|e| ValidationError::new("url", e.to_string()))?;
    target
        .query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", verify_token)
        .append_pair("hub.challenge", &challenge);
    let failed = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "verification_failed",
            format!("the receiver did not pass the hub.challenge handshake: {why}"),
        )
        .with_details(serde_json::json!({ "field": "verify_token" }))
    };
    let sent = s.egress.client().get(target).timeout(std::time::Duration::from_secs(10)).send().await;
    let res = sent.map_err(|e| failed(e.to_string()))?;
    let status = res.status();
    let body = crate::egress::read_capped(res, 4096).await.map_err(failed)?;
    let body = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(failed(format!("it answered HTTP {}", status.as_u16())));
    }
    if body.trim() != challenge {
        return Err(failed("it did not answer with the challenge".into()));
    }
    Ok(())
}

fn check_statuses(statuses: Vec<String>) -> ApiResult<Vec<String>> {
    for st in &statuses {
        if st.parse::<zapgate_domain::MessageStatus>().is_err() {
            return Err(ValidationError::new("statuses", format!("unknown status {st:?}")).into());
        }
    }
    Ok(statuses)
}

/// A Chatwoot integration's endpoint changes with the integration only.
async fn not_managed(s: &AppState, tenant: &zapgate_domain::TenantId, id: &EndpointId) -> ApiResult<()> {
    let found = s.backends.webhooks.get_endpoint(tenant, id).await?;
    if found.is_some_and(|e| e.format == WebhookFormat::Chatwoot) {
        let integration = crate::chatwoot::forward::integration_of(id);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_integration",
            format!("this webhook belongs to Chatwoot integration {integration}; change or delete that instead"),
        ));
    }
    Ok(())
}

fn endpoint_id(raw: &str) -> ApiResult<EndpointId> {
    EndpointId::parse(raw).ok_or_else(|| ApiError::not_found("webhook"))
}

/// Subscribes a URL to the tenant's events.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("tenant" = [])), request_body = CreateWebhook,
    responses((status = 201, body = WebhookCreated), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<WebhookCreated>)> {
    let url = check_url(&s, &body.url)?;
    check_types(&body.event_types)?;
    let mut event_types = body.event_types;
    let app_secret = match body.format {
        WebhookFormat::Chatwoot => {
            return Err(
                ValidationError::new("format", "chatwoot webhooks are made by POST /v1/chatwoot-integrations").into()
            );
        }
        WebhookFormat::Standard => {
            if body.app_secret.is_some() || body.verify_token.is_some() {
                let field = if body.app_secret.is_some() { "app_secret" } else { "verify_token" };
                return Err(ValidationError::new(field, "only goes with format cloud_api").into());
            }
            None
        }
        WebhookFormat::CloudApi => {
            if event_types.is_empty() {
                event_types = CLOUD_TYPES.iter().map(|t| t.as_str().to_owned()).collect();
            }
            check_cloud(&event_types, body.include_internal)?;
            let app_secret = match body.app_secret {
                Some(a) => check_app_secret(a)?,
                None => hex::encode(rand::random::<[u8; 16]>()),
            };
            Some(app_secret)
        }
    };
    // Every endpoint multiplies each event into a delivery: keep it bounded.
    if s.backends.webhooks.list_endpoints(&tenant).await?.len() >= MAX_ENDPOINTS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_webhooks",
            format!("a tenant has at most {MAX_ENDPOINTS} webhooks; delete one first"),
        ));
    }
    check_headers(&body.headers)?;
    let instance_id = match body.instance_id.as_deref() {
        Some(raw) => Some(super::instances::owned_instance(&s, &tenant, raw, "instance_id").await?),
        None => None,
    };
    let statuses = check_statuses(body.statuses)?;
    if let Some(token) = &body.verify_token {
        verify_receiver(&s, &url, token).await?;
    }
    let secret = WebhookSecret::generate();
    let new = NewEndpoint {
        id: EndpointId::generate(),
        tenant_id: tenant,
        url,
        description: body.description,
        event_types,
        include_internal: body.include_internal,
        instance_id,
        statuses,
        headers: body.headers,
        secret: secret.clone(),
        format: body.format,
        app_secret: app_secret.clone(),
    };
    let endpoint = s.backends.webhooks.create_endpoint(new).await?;
    Ok((StatusCode::CREATED, Json(WebhookCreated { endpoint, secret: secret.reveal().to_owned(), app_secret })))
}

/// Lists the tenant's webhooks.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("tenant" = [])),
    responses((status = 200, body = WebhookList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<WebhookList>> {
    Ok(Json(WebhookList { data: s.backends.webhooks.list_endpoints(&tenant).await? }))
}

/// Gets one webhook.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), responses((status = 200, body = EndpointRecord), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointRecord>> {
    let id = endpoint_id(&id)?;
    s.backends.webhooks.get_endpoint(&tenant, &id).await?.map(Json).ok_or_else(|| ApiError::not_found("webhook"))
}

/// Changes a webhook (URL, filters, headers, enabled).
#[utoipa::path(patch, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), request_body = UpdateWebhook,
    responses((status = 200, body = EndpointRecord), (status = 404, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> ApiResult<Json<EndpointRecord>> {
    let id = endpoint_id(&id)?;
    not_managed(&s, &tenant, &id).await?;
    let url = body.url.as_deref().map(|u| check_url(&s, u)).transpose()?;
    if let Some(t) = &body.event_types {
        check_types(t)?;
    }
    if let Some(h) = &body.headers {
        check_headers(h)?;
    }
    if body.event_types.is_some() || body.include_internal == Some(true) {
        let current =
            s.backends.webhooks.get_endpoint(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("webhook"))?;
        if current.format == WebhookFormat::CloudApi {
            let types = body.event_types.clone().unwrap_or(current.event_types);
            if types.is_empty() {
                // Empty means every type, and the Cloud API has webhooks for two.
                return Err(ValidationError::new("event_types", "a cloud_api webhook names its event types").into());
            }
            check_cloud(&types, body.include_internal.unwrap_or(current.include_internal))?;
        }
    }
    let change = EndpointChange {
        url,
        description: body.description,
        event_types: body.event_types,
        include_internal: body.include_internal,
        instance_id: match body.instance_id.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(raw) => Some(Some(super::instances::owned_instance(&s, &tenant, raw, "instance_id").await?)),
        },
        statuses: body.statuses.map(check_statuses).transpose()?,
        headers: body.headers,
        enabled: body.enabled,
    };
    s.backends
        .webhooks
        .update_endpoint(&tenant, &id, change)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Deletes a webhook; deliveries still owed to it are dropped (marked dead).
#[utoipa::path(delete, path = "/v1/webhooks/{webhook_id}", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = endpoint_id(&id)?;
    not_managed(&s, &tenant, &id).await?;
    if s.backends.webhooks.delete_endpoint(&tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// The webhook's current signing secret.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/secret", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), responses((status = 200, body = WebhookSecretBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn secret(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookSecretBody>> {
    let id = endpoint_id(&id)?;
    let secret =
        s.backends.webhooks.endpoint_secret(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(WebhookSecretBody { secret: secret.reveal().to_owned() }))
}

/// Issues a new secret; the old one keeps signing (a second signature) for
/// `ZAPGATE_WEBHOOK_SECRET_GRACE`, so receivers can switch without losing events.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/rotate-secret", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), responses((status = 200, body = WebhookSecretBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn rotate_secret(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookSecretBody>> {
    let id = endpoint_id(&id)?;
    let secret = WebhookSecret::generate();
    let grace = Timestamp::now().plus_millis(s.config.webhook_secret_grace.as_millis() as i64);
    if s.backends.webhooks.rotate_secret(&tenant, &id, secret.clone(), grace).await? {
        Ok(Json(WebhookSecretBody { secret: secret.reveal().to_owned() }))
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// Deliveries to one webhook, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path), PageParams),
    responses((status = 200, body = DeliveryList), (status = 404, body = super::error::ErrorBody)))]
pub async fn deliveries(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<DeliveryList>> {
    let id = endpoint_id(&id)?;
    if s.backends.webhooks.get_endpoint(&tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let limit = q.limit()?;
    let before = q.before(DeliveryId::parse)?;
    let data = s.backends.webhooks.list_deliveries(&tenant, &id, before, limit).await?;
    let next_cursor = super::next_cursor(&data, limit, |d| d.id.to_string());
    Ok(Json(DeliveryList { data, next_cursor }))
}

fn delivery_id(raw: &str) -> ApiResult<DeliveryId> {
    DeliveryId::parse(raw).ok_or_else(|| ApiError::not_found("delivery"))
}

/// One delivery with every attempt (time, status code, error, duration).
#[utoipa::path(get, path = "/v1/deliveries/{delivery_id}", tag = "webhooks", security(("tenant" = [])),
    params(("delivery_id" = String, Path)),
    responses((status = 200, body = DeliveryWithAttempts), (status = 404, body = super::error::ErrorBody)))]
pub async fn delivery(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryWithAttempts>> {
    let id = delivery_id(&id)?;
    let (delivery, attempts) =
        s.backends.webhooks.get_delivery(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(Json(DeliveryWithAttempts { delivery, attempt_history: attempts }))
}

/// Sends a delivery again (same `webhook-id`), e.g. after fixing a receiver.
#[utoipa::path(post, path = "/v1/deliveries/{delivery_id}/replay", tag = "webhooks", security(("tenant" = [])),
    params(("delivery_id" = String, Path)),
    responses((status = 202), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn replay(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = delivery_id(&id)?;
    if s.backends.webhooks.get_delivery(&tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("delivery"));
    }
    if s.backends.webhooks.replay_delivery(&tenant, &id, Timestamp::now()).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_replayable",
            "the delivery is still pending, or its webhook was deleted",
        ))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayFailed {
    /// Replay the dead deliveries created at or after this time (RFC 3339).
    #[schema(value_type = String, example = "2026-12-01T00:00:00Z")]
    pub since: Timestamp,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayedCount {
    /// How many dead deliveries are pending again.
    pub replayed: u64,
}

/// Sends again every dead delivery of a webhook created since a time (each
/// keeps its `webhook-id`), e.g. after the receiver's outage was fixed. A
/// disabled webhook keeps them pending until it is enabled.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/replay", tag = "webhooks", security(("tenant" = [])),
    params(("webhook_id" = String, Path)), request_body = ReplayFailed,
    responses((status = 202, body = ReplayedCount), (status = 404, body = super::error::ErrorBody)))]
pub async fn replay_failed(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReplayFailed>,
) -> ApiResult<(StatusCode, Json<ReplayedCount>)> {
    let id = endpoint_id(&id)?;
    if s.backends.webhooks.get_endpoint(&tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("webhook"));
    }
    let replayed = s.backends.webhooks.replay_dead(&tenant, &id, body.since, Timestamp::now()).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayedCount { replayed })))
}
