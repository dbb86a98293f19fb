//! Instances: one WhatsApp number each, owned by the calling tenant.

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery, TenantAuth};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::Rng;
use serde::{Deserialize, Serialize};
use zapgate_backends::{InstanceChange, InstanceRecord, NewInstance, Placement};
use zapgate_domain::{InstanceId, ProviderId, TenantId, Timestamp, ValidationError};
use zapgate_providers::Provider;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    /// Display name, 1–100 characters.
    pub name: String,
    /// Provider kind: `sandbox` (default), `cloud_api`, `evolution`, `waha` or `uazapi`.
    #[serde(default = "sandbox")]
    pub provider: String,
    /// Messages per second (default: Cloud API 80; Evolution, WAHA, UAZAPI 50
    /// in bursts of 100; the sandbox `ZAPGATE_INSTANCE_RATE`); at most 1000
    /// for real providers, 100000 for the sandbox.
    pub rate_limit_per_second: Option<u32>,
    /// Burst size (default: one second's worth).
    pub burst: Option<u32>,
    /// Place it on this provider server (`GET /v1/providers`; its kind must be
    /// `provider`). Without it and without `config`, an `evolution` or `waha`
    /// instance is placed on the enabled server of its kind with the fewest
    /// instances that has room (409 `no_provider_capacity` when none has).
    pub provider_id: Option<String>,
    /// Provider settings (an instance on its own server; none when placed). `cloud_api`: `{"access_token", "phone_number_id",
    /// "waba_id"?, "base_url"?, "api_version"?}`; `evolution`: `{"base_url",
    /// "api_key", "instance"}`; `waha`: `{"base_url", "api_key"?, "session"}`; `uazapi`: `{"base_url", "token"}`.
    /// Never shown again.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: serde_json::Value,
    /// The WhatsApp number this instance is (E.164): what Cloud API-shaped
    /// webhooks report as `display_phone_number` (Chatwoot finds its inbox by it).
    pub phone_number: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateInstance {
    pub name: Option<String>,
    /// New pace in messages per second (1–100000); applies at once.
    pub rate_limit_per_second: Option<u32>,
    pub burst: Option<u32>,
    /// The WhatsApp number this instance is (E.164).
    pub phone_number: Option<String>,
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ValidationError::new("name", "must be 1 to 100 characters").into());
    }
    Ok(name.to_owned())
}

/// An instance's own number: a phone, kept as digits.
fn check_phone(raw: &str) -> ApiResult<String> {
    match zapgate_domain::ChatId::parse(raw) {
        Ok(zapgate_domain::ChatId::Phone(digits)) => Ok(digits),
        _ => Err(ValidationError::new("phone_number", "must be a phone number in E.164 (+5511999998888)").into()),
    }
}

fn check_rate(field: &str, v: u32) -> ApiResult<u32> {
    if (1..=100_000).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::new(field, "must be between 1 and 100000").into())
    }
}

/// Renames an instance or changes its pace.
#[utoipa::path(patch, path = "/v1/instances/{instance_id}", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path)), request_body = UpdateInstance,
    responses((status = 200, body = InstanceRecord), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateInstance>,
) -> ApiResult<Json<InstanceRecord>> {
    let id = instance_id(&id)?;
    let rate = body.rate_limit_per_second.map(|v| check_rate("rate_limit_per_second", v)).transpose()?;
    if let Some(rate) = rate {
        let rec = s.backends.store.get_instance(&tenant, &id).await?.ok_or_else(|| ApiError::not_found("instance"))?;
        if let Some(provider) = s.providers.get(&rec.provider) {
            check_max_rate(provider.as_ref(), rate)?;
        }
    }
    let change = InstanceChange {
        name: body.name.as_deref().map(check_name).transpose()?,
        rate_per_sec: rate,
        burst: body.burst.map(|v| check_rate("burst", v)).transpose()?,
        phone_number: body.phone_number.as_deref().map(check_phone).transpose()?,
    };
    let rec =
        s.backends.store.update_instance(&tenant, &id, change).await?.ok_or_else(|| ApiError::not_found("instance"))?;
    s.work.changed(id);
    Ok(Json(rec))
}

fn sandbox() -> String {
    "sandbox".into()
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceList {
    pub data: Vec<InstanceRecord>,
}

/// Creates an instance.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", security(("tenant" = [])),
    request_body = CreateInstance,
    responses((status = 201, body = InstanceRecord), (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateInstance>,
) -> ApiResult<(StatusCode, Json<InstanceRecord>)> {
    let name = check_name(&body.name)?;
    let Some(provider) = s.providers.get(&body.provider) else {
        return Err(ValidationError::new(
            "provider",
            format!("unknown provider {:?}; available: {}", body.provider, s.providers.kinds().join(", ")),
        )
        .into());
    };
    let id = InstanceId::generate();
    let no_config = body.config.is_null() || body.config.as_object().is_some_and(|o| o.is_empty());
    let placed = provider.placed_config(&id).filter(|_| no_config || body.provider_id.is_some());
    let (config, placement) = match placed {
        Some(own) => {
            if !no_config {
                return Err(ValidationError::new(
                    "config",
                    "an instance placed on a provider server takes its settings from it",
                )
                .into());
            }
            let provider_id = body
                .provider_id
                .map(|raw| {
                    ProviderId::parse(&raw).ok_or_else(|| ValidationError::new("provider_id", "no such provider"))
                })
                .transpose()?;
            (own, Some(Placement { kind: body.provider.clone(), provider_id }))
        }
        None => {
            if body.provider_id.is_some() {
                return Err(ValidationError::new(
                    "provider_id",
                    format!("{} instances are not placed on provider servers", body.provider),
                )
                .into());
            }
            let config = provider.check_config(&body.config).map_err(|e| ValidationError::new("config", e))?;
            if let Some(base) = config.get("base_url").and_then(|v| v.as_str()) {
                s.egress.check_url(base).map_err(|e| ValidationError::new("config.base_url", e.to_string()))?;
            }
            (config, None)
        }
    };
    // Providers that own real numbers (Cloud API) bring their own ids.
    let real_id = |k: &str| config.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (rate, burst) = pace(&s, provider.as_ref(), body.rate_limit_per_second, body.burst)?;
    let new = NewInstance {
        id,
        tenant_id: tenant,
        name,
        provider: body.provider,
        phone_number_id: real_id("phone_number_id").unwrap_or_else(numeric_id),
        waba_id: real_id("waba_id").unwrap_or_else(numeric_id),
        phone_number: body.phone_number.as_deref().map(check_phone).transpose()?,
        rate_per_sec: rate,
        burst,
        provider_config: config,
    };
    let rec = match placement {
        Some(placement) => create_on_pool(&s, provider.as_ref(), new, placement).await?,
        None => s.backends.store.create_instance(new).await?,
    };
    s.work.mark(rec.id.clone());
    Ok((StatusCode::CREATED, Json(rec)))
}

/// Places `new` on a pool server and makes its session there: zapgate owns
/// it. Settings the server hands out (UAZAPI's token) are kept; if the
/// server cannot make it, the instance is deleted again.
async fn create_on_pool(
    s: &AppState,
    provider: &dyn Provider,
    new: NewInstance,
    placement: Placement,
) -> ApiResult<InstanceRecord> {
    let mut rec = s.backends.pools.place_instance(new, placement).await?;
    let pool = rec.provider_id.as_ref().map(|p| p.to_string()).unwrap_or_default();
    let session_config = match s.ingest.target(s, provider.kind(), &pool).await? {
        Some(hook) => zapgate_domain::json::merged(
            &rec.provider_config,
            &serde_json::json!({"webhook": {"url": hook.base, "secret": hook.secret}}),
        ),
        None => rec.provider_config.clone(),
    };
    match super::sessions::call(provider.create_session(&session_config)).await {
        Ok(None) => {}
        Ok(Some(handed_out)) => {
            rec.provider_config = zapgate_domain::json::merged(&rec.provider_config, &handed_out);
            s.backends.store.set_provider_config(&rec.id, rec.provider_config.clone()).await?;
            // A lane may already run with the settings as placed (without the token).
            s.work.changed(rec.id.clone());
        }
        Err(e) => {
            s.backends.store.delete_instance(&rec.tenant_id, &rec.id, Timestamp::now()).await?;
            return Err(e.into());
        }
    }
    Ok(rec)
}

/// A new instance's pace: as asked, else its provider's default (Cloud API
/// 80/s; Baileys-based servers 50/s in bursts of 100), else
/// `ZAPGATE_INSTANCE_RATE`; never above the provider's highest.
fn pace(s: &AppState, provider: &dyn Provider, rate: Option<u32>, burst: Option<u32>) -> ApiResult<(u32, u32)> {
    let own = provider.pace();
    let default = own.map_or((s.config.instance_rate, s.config.instance_rate), |p| (p.rate_per_sec, p.burst));
    let rate_asked = rate.is_some();
    let rate = check_rate("rate_limit_per_second", rate.unwrap_or(default.0))?;
    check_max_rate(provider, rate)?;
    let burst = check_rate("burst", burst.unwrap_or(if rate_asked { rate } else { default.1 }))?;
    Ok((rate, burst))
}

fn check_max_rate(provider: &dyn Provider, rate: u32) -> ApiResult<()> {
    match provider.pace().map(|p| p.max_rate_per_sec) {
        Some(max) if rate > max => {
            let kind = provider.kind();
            Err(ValidationError::new("rate_limit_per_second", format!("{kind} instances send at most {max}/s")).into())
        }
        _ => Ok(()),
    }
}

/// A 15-digit id in the style of Meta's phone number and WABA ids.
fn numeric_id() -> String {
    rand::rng().random_range(100_000_000_000_000u64..1_000_000_000_000_000).to_string()
}

/// Lists the tenant's instances.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", security(("tenant" = [])),
    responses((status = 200, body = InstanceList)))]
pub async fn list(TenantAuth(tenant): TenantAuth, State(s): State<AppState>) -> ApiResult<Json<InstanceList>> {
    Ok(Json(InstanceList { data: s.backends.store.list_instances(&tenant).await? }))
}

/// The tenant's instance a request body names in `field` (422 naming the
/// field for any other id).
pub(super) async fn owned_instance(s: &AppState, tenant: &TenantId, raw: &str, field: &str) -> ApiResult<InstanceId> {
    let unknown = || ValidationError::new(field, "no such instance for this tenant");
    let id = InstanceId::parse(raw).ok_or_else(unknown)?;
    s.backends.store.get_instance(tenant, &id).await?.ok_or_else(unknown)?;
    Ok(id)
}

fn instance_id(raw: &str) -> ApiResult<InstanceId> {
    InstanceId::parse(raw).ok_or_else(|| ApiError::not_found("instance"))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub instance: InstanceRecord,
    /// The WhatsApp connection as the provider reports it now (absent for
    /// the Cloud API, whose numbers are managed in Meta's tools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<super::sessions::ConnectionView>,
    /// Where to point the provider's webhooks, for an instance with its own
    /// settings (zapgate registers it itself for instances on its provider servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<super::ingest::WebhookTarget>,
}

/// Gets one instance, with its connection state at the provider.
#[utoipa::path(get, path = "/v1/instances/{instance_id}", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path)),
    responses((status = 200, body = InstanceDetail), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceDetail>> {
    let (instance, provider) = super::sessions::instance_and_provider(&s, &tenant, &id).await?;
    let connection = super::sessions::connection(provider.as_ref(), &instance).await;
    let webhook = match instance.provider_id {
        None => s.ingest.target(&s, &instance.provider, instance.id.as_str()).await?,
        Some(_) => None,
    };
    Ok(Json(InstanceDetail { instance, connection, webhook }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Delete here even if the provider server cannot remove the session.
    #[serde(default)]
    pub force: bool,
}

/// Deletes an instance. Its messages not yet sent become `cancelled`.
#[utoipa::path(delete, path = "/v1/instances/{instance_id}", tag = "instances", security(("tenant" = [])),
    params(("instance_id" = String, Path), DeleteParams),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
              (status = 502, body = super::error::ErrorBody)))]
pub async fn delete(
    TenantAuth(tenant): TenantAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> ApiResult<StatusCode> {
    let id = instance_id(&id)?;
    // A session zapgate made on a pool server is removed there first, so none
    // is left behind (unless `force`: the server may be gone for good).
    if let Some(rec) = s.backends.store.get_instance(&tenant, &id).await?
        && rec.provider_id.is_some()
        && let Some(provider) = s.providers.get(&rec.provider)
        && let Err(e) = super::sessions::call(provider.delete_session(&rec.provider_config)).await
        && !params.force
    {
        return Err(e.into());
    }
    let (store, work) = (s.backends.store.clone(), s.work.clone());
    let deleted = super::detached(async move {
        let deleted = store.delete_instance(&tenant, &id, Timestamp::now()).await;
        if let Ok(true) = deleted {
            work.changed(id);
        }
        deleted
    })
    .await??;
    if deleted { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found("instance")) }
}
