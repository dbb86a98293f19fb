//! A tenant's Chatwoot integrations: one Chatwoot inbox (API channel) ↔ one
//! instance. Chatwoot's account webhook points at the integration's
//! `webhook_url` (`/webhooks/chatwoot/{id}`, served by `zapgate ingest`).

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, TenantAuth};
use crate::chatwoot::forward::endpoint_of;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use zapgate_backends::{EndpointChange, IntegrationChange, IntegrationRecord, NewEndpoint, NewIntegration};
use zapgate_domain::webhook::{WebhookFormat, WebhookSecret};
use zapgate_domain::{EventType, IntegrationId, MessageStatus, Timestamp, ValidationError};

const MAX_INTEGRATIONS: usize = 20;

/// The statuses an integration is told about: they become private notes.
const FAILURES: [MessageStatus; 3] = [MessageStatus::Failed, MessageStatus::Dead, MessageStatus::Expired];

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// The instance the inbox sends and receives through.
    pub instance_id: String,
    /// Chatwoot's address, e.g. `https://chatwoot.example.com`.
    pub base_url: String,
    pub account_id: u64,
    /// The API-channel inbox's id.
    pub inbox_id: u64,
    /// An agent's or agent bot's `api_access_token` (never shown again).
    pub api_access_token: String,
    /// The account webhook's secret: `X-Chatwoot-Signature` is then required.
    pub webhook_secret: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    pub instance_id: Option<String>,
    pub base_url: Option<String>,
    pub account_id: Option<u64>,
    pub inbox_id: Option<u64>,
    pub api_access_token: Option<String>,
    /// A new secret; `""` removes it (webhooks are then not checked).
    pub webhook_secret: Option<String>,
    pub enabled: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Integration {
    #[serde(flatten)]
    pub integration: IntegrationRecord,
    /// Where Chatwoot's account webhook must point (`message_created`).
    pub webhook_url: String,
    /// Whether webhooks must carry a valid `X-Chatwoot-Signature`.
    pub signed: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IntegrationList {
    pub data: Vec<Integration>,
}

fn shown(s: &AppState, rec: IntegrationRecord) -> Integration {
    let webhook_url = format!("{}/webhooks/chatwoot/{}", s.ingest.base_url(), rec.id);
    Integration { signed: rec.webhook_secret.is_some(), webhook_url, integration: rec }
}

fn integration_id(raw: &str) -> ApiResult<IntegrationId> {
    IntegrationId::parse(raw).ok_or_else(|| ApiError::not_found("chatwoot integration"))
}

fn check_base_url(s: &AppState, raw: &str) -> ApiResult<String> {
    let url = s.egress.check_url(raw).map_err(|e| ValidationError::new("base_url", e.to_string()))?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn check_secret(field: &str, v: &str) -> ApiResult<String> {
    if (1..=256).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(v.to_owned())
    } else {
        Err(ValidationError::new(field, "must be 1 to 256 visible ASCII characters").into())
    }
}

fn check_positive(field: &str, v: u64) -> ApiResult<u64> {
    if v == 0 || v > i64::MAX as u64 {
        return Err(ValidationError::new(field, "must be a Chatwoot id (a positive number)").into());
    }
    Ok(v)
}

/// Connects a Chatwoot inbox to an instance.
#[utoipa::path(post, path = "/v1/chatwoot-integrations", tag = "chatwoot", security(("tenant" = [])),
    request_body = CreateIntegration,
    responses((status = 201, body = Integration), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateIntegration>,
) -> ApiResult<(StatusCode, Json<Integration>)> {
    // Each is also a webhook endpoint: bounded like those.
    if s.backends.chatwoot.list_integrations(&tenant).await?.len() >= MAX_INTEGRATIONS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_integrations",
            format!("a tenant has at most {MAX_INTEGRATIONS} Chatwoot integrations; delete one first"),
        ));
    }
    let new = NewIntegration {
        id: IntegrationId::generate(),
        instance_id: super::instances::owned_instance(&s, &tenant, &body.instance_id, "instance_id").await?,
        tenant_id: tenant,
        base_url: check_base_url(&s, &body.base_url)?,
        account_id: check_positive("account_id", body.account_id)?,
        inbox_id: check_positive("inbox_id", body.inbox_id)?,
        api_token: check_secret("api_access_token", &body.api_access_token)?,
        webhook_secret: body.webhook_secret.as_deref().map(|w| check_secret("webhook_secret", w)).transpose()?,
    };
    let rec = s.backends.chatwoot.create_integration(new, Timestamp::now()).await?;
    // Its inbound side: an endpoint of its own that events fan out to.
    let endpoint = NewEndpoint {
        id: endpoint_of(&rec.id),
        tenant_id: rec.tenant_id.clone(),
        url: rec.base_url.clone(),
        description: format!("Chatwoot integration {}", rec.id),
        event_types: vec![EventType::MessageReceived.as_str().into(), EventType::MessageStatus.as_str().into()],
        include_internal: false,
        headers: Default::default(),
        secret: WebhookSecret::generate(),
        format: WebhookFormat::Chatwoot,
        app_secret: None,
        instance_id: Some(rec.instance_id.clone()),
        statuses: FAILURES.iter().map(|s| s.to_string()).collect(),
    };
    if let Err(e) = s.backends.webhooks.create_endpoint(endpoint).await {
        let _ = s.backends.chatwoot.delete_integration(&rec.tenant_id, &rec.id, Timestamp::now()).await;
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(shown(&s, rec))))
}

/// Lists the tenant's Chatwoot integrations.
#[utoipa::path(get, path = "/v1/chatwoot-integrations", tag = "chatwoot", security(("tenant" = [])),
    responses((status = 200, body = IntegrationList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<IntegrationList>> {
    let all = s.backends.chatwoot.list_integrations(&tenant).await?;
    Ok(Json(IntegrationList { data: all.into_iter().map(|r| shown(&s, r)).collect() }))
}

/// Gets one Chatwoot integration.
#[utoipa::path(get, path = "/v1/chatwoot-integrations/{integration_id}", tag = "chatwoot",
    security(("tenant" = [])), params(("integration_id" = String, Path)),
    responses((status = 200, body = Integration), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Integration>> {
    let id = integration_id(&id)?;
    let rec = s.backends.chatwoot.get_integration(&tenant, &id).await?;
    Ok(Json(shown(&s, rec.ok_or_else(|| ApiError::not_found("chatwoot integration"))?)))
}

/// Changes a Chatwoot integration.
#[utoipa::path(patch, path = "/v1/chatwoot-integrations/{integration_id}", tag = "chatwoot",
    security(("tenant" = [])), params(("integration_id" = String, Path)), request_body = UpdateIntegration,
    responses((status = 200, body = Integration), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateIntegration>,
) -> ApiResult<Json<Integration>> {
    let id = integration_id(&id)?;
    let instance_id = match &body.instance_id {
        Some(raw) => Some(super::instances::owned_instance(&s, &tenant, raw, "instance_id").await?),
        None => None,
    };
    let change = IntegrationChange {
        instance_id,
        base_url: body.base_url.as_deref().map(|u| check_base_url(&s, u)).transpose()?,
        account_id: body.account_id.map(|v| check_positive("account_id", v)).transpose()?,
        inbox_id: body.inbox_id.map(|v| check_positive("inbox_id", v)).transpose()?,
        api_token: body.api_access_token.as_deref().map(|t| check_secret("api_access_token", t)).transpose()?,
        webhook_secret: match body.webhook_secret.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(w) => Some(Some(check_secret("webhook_secret", w)?)),
        },
        enabled: body.enabled,
    };
    let (moved, enabled) = (change.instance_id.clone(), change.enabled);
    let elsewhere = change.base_url.is_some() || change.account_id.is_some() || change.inbox_id.is_some();
    let rec = s.backends.chatwoot.update_integration(&tenant, &id, change, Timestamp::now()).await?;
    let rec = rec.ok_or_else(|| ApiError::not_found("chatwoot integration"))?;
    if elsewhere {
        // The kept contact and conversation ids name other people there.
        s.backends.chatwoot.forget_chatwoot_contacts(&id).await?;
    }
    if moved.is_some() || enabled.is_some() {
        let change = EndpointChange { instance_id: moved.map(Some), enabled, ..Default::default() };
        s.backends.webhooks.update_endpoint(&tenant, &endpoint_of(&id), change).await?;
    }
    Ok(Json(shown(&s, rec)))
}

/// Disconnects a Chatwoot inbox: its webhooks are refused from now on.
#[utoipa::path(delete, path = "/v1/chatwoot-integrations/{integration_id}", tag = "chatwoot",
    security(("tenant" = [])), params(("integration_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = integration_id(&id)?;
    if s.backends.chatwoot.delete_integration(&tenant, &id, Timestamp::now()).await? {
        s.backends.webhooks.delete_endpoint(&tenant, &endpoint_of(&id)).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("chatwoot integration"))
    }
}
