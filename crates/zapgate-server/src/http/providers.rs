//! Provider servers shared by many instances (super-admin only): the pools
//! `POST /v1/instances` places new instances on (see `zapgate_backends::pools`).

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AdminAuth, ApiJson};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zapgate_backends::{NewProvider, ProviderChange, ProviderRecord};
use zapgate_domain::{InstanceId, ProviderId, Timestamp, ValidationError};

/// Instances a pool takes when its capacity is not given.
const DEFAULT_CAPACITY: u32 = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    /// `evolution`, `uazapi` or `waha`.
    pub kind: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// The server, e.g. `https://waha.example.com`.
    pub base_url: String,
    /// Its key (Evolution: the global `apikey`; WAHA: `X-Api-Key`, if set;
    /// UAZAPI: the `admintoken`, required). Never shown again.
    pub api_key: Option<String>,
    /// Most instances placed on it (default 100).
    pub capacity: Option<u32>,
    /// Default true; a disabled pool keeps its instances but gets no new ones.
    pub enabled: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    pub name: Option<String>,
    /// Applies at once to every instance placed on it.
    pub base_url: Option<String>,
    /// Applies at once to every instance placed on it.
    pub api_key: Option<String>,
    pub capacity: Option<u32>,
    pub enabled: Option<bool>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderList {
    pub data: Vec<ProviderView>,
}

/// A provider server as stored, with its circuit breaker as the workers see it now.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderView {
    #[serde(flatten)]
    pub provider: ProviderRecord,
    /// `closed`, `open` or `half_open` (open in any worker: sends to it wait
    /// without spending attempts). See `GET /v1/circuits`.
    pub circuit: &'static str,
}

/// Each pool with the state of the circuit guarding its server.
async fn with_circuits(s: &AppState, pools: Vec<ProviderRecord>) -> ApiResult<Vec<ProviderView>> {
    let open = super::circuits::current(s).await?;
    Ok(pools
        .into_iter()
        .map(|provider| {
            let endpoint = s.providers.get(&provider.kind).and_then(|p| p.endpoint(&provider.settings));
            let circuit = open.iter().find(|c| Some(&c.endpoint) == endpoint.as_ref()).map_or("closed", |c| c.state);
            ProviderView { provider, circuit }
        })
        .collect())
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ValidationError::new("name", "must be 1 to 100 characters").into());
    }
    Ok(name.to_owned())
}

fn check_capacity(v: u32) -> ApiResult<u32> {
    if (1..=100_000).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::new("capacity", "must be between 1 and 100000").into())
    }
}

/// The pool settings, checked the way an instance placed on it would be:
/// by its provider's `check_config`, and the URL by the egress rules.
fn check_settings(s: &AppState, kind: &str, settings: &Value) -> ApiResult<Value> {
    let pooled = s.providers.get(kind).and_then(|p| Some((p.placed_config(&InstanceId::generate())?, p)));
    let Some((instance_settings, provider)) = pooled else {
        return Err(ValidationError::new(
            "kind",
            format!("{kind:?} cannot be pooled; pooled kinds: evolution, uazapi, waha"),
        )
        .into());
    };
    let sample = zapgate_backends::pools::merged(&instance_settings, settings);
    let checked = provider.check_config(&sample).map_err(|e| ValidationError::new("settings", e))?;
    let base = checked.get("base_url").and_then(Value::as_str).unwrap_or_default();
    s.egress.check_url(base).map_err(|e| ValidationError::new("base_url", e.to_string()))?;
    // Only the pool's own keys, normalised (e.g. the base URL's trailing slash).
    let own: Map<String, Value> = checked
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| settings.get(k.as_str()).is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Value::Object(own))
}

fn provider_id(raw: &str) -> ApiResult<ProviderId> {
    ProviderId::parse(raw).ok_or_else(|| ApiError::not_found("provider"))
}

/// Adds a provider server that new instances of its kind are placed on.
#[utoipa::path(post, path = "/v1/providers", tag = "providers", security(("admin" = [])),
    request_body = CreateProvider,
    responses((status = 201, body = ProviderRecord), (status = 401, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn create(
    _: AdminAuth,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateProvider>,
) -> ApiResult<(StatusCode, Json<ProviderRecord>)> {
    let name = check_name(&body.name)?;
    let mut settings = json!({ "base_url": body.base_url });
    if let Some(key) = body.api_key {
        settings["api_key"] = json!(key);
    }
    let settings = check_settings(&s, &body.kind, &settings)?;
    let new = NewProvider {
        id: ProviderId::generate(),
        kind: body.kind,
        name,
        settings,
        capacity: check_capacity(body.capacity.unwrap_or(DEFAULT_CAPACITY))?,
        enabled: body.enabled.unwrap_or(true),
    };
    Ok((StatusCode::CREATED, Json(s.backends.pools.create_provider(new).await?)))
}

/// Lists the provider servers with how many instances each holds.
#[utoipa::path(get, path = "/v1/providers", tag = "providers", security(("admin" = [])),
    responses((status = 200, body = ProviderList), (status = 401, body = super::error::ErrorBody)))]
pub async fn list(_: AdminAuth, State(s): State<AppState>) -> ApiResult<Json<ProviderList>> {
    let pools = s.backends.pools.list_providers().await?;
    Ok(Json(ProviderList { data: with_circuits(&s, pools).await? }))
}

#[utoipa::path(get, path = "/v1/providers/{provider_id}", tag = "providers", security(("admin" = [])),
    params(("provider_id" = String, Path)),
    responses((status = 200, body = ProviderView), (status = 404, body = super::error::ErrorBody)))]
pub async fn get(_: AdminAuth, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ProviderView>> {
    let id = provider_id(&id)?;
    let pool = s.backends.pools.get_provider(&id).await?.ok_or_else(|| ApiError::not_found("provider"))?;
    let mut views = with_circuits(&s, vec![pool]).await?;
    Ok(Json(views.remove(0)))
}

/// Changes a provider server; new settings reach its instances at once.
#[utoipa::path(patch, path = "/v1/providers/{provider_id}", tag = "providers", security(("admin" = [])),
    params(("provider_id" = String, Path)), request_body = UpdateProvider,
    responses((status = 200, body = ProviderRecord), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
pub async fn update(
    _: AdminAuth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateProvider>,
) -> ApiResult<Json<ProviderRecord>> {
    let id = provider_id(&id)?;
    let current = s.backends.pools.get_provider(&id).await?.ok_or_else(|| ApiError::not_found("provider"))?;
    let mut changed = Map::new();
    if let Some(url) = body.base_url {
        changed.insert("base_url".into(), json!(url));
    }
    if let Some(key) = body.api_key {
        changed.insert("api_key".into(), json!(key));
    }
    let settings = if changed.is_empty() {
        None
    } else {
        let all = zapgate_backends::pools::merged(&current.settings, &Value::Object(changed.clone()));
        let checked = check_settings(&s, &current.kind, &all)?;
        Some(Value::Object(changed.keys().filter_map(|k| Some((k.clone(), checked.get(k)?.clone()))).collect()))
    };
    let change = ProviderChange {
        name: body.name.as_deref().map(check_name).transpose()?,
        settings,
        capacity: body.capacity.map(check_capacity).transpose()?,
        enabled: body.enabled,
    };
    let rec = s.backends.pools.update_provider(&id, change).await?.ok_or_else(|| ApiError::not_found("provider"))?;
    Ok(Json(rec))
}

/// Removes a provider server; refused (409) while instances are placed on it.
#[utoipa::path(delete, path = "/v1/providers/{provider_id}", tag = "providers", security(("admin" = [])),
    params(("provider_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn delete(_: AdminAuth, State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = provider_id(&id)?;
    if s.backends.pools.delete_provider(&id, Timestamp::now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("provider"))
    }
}
